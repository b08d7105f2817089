"""Restore tests of Redis backups: the RDB loaded into a private scratch `redis-server`, checked
with a few read-only commands (what `tonebridge-dr restore-test redis` runs).

The run, the RTO, the verdict and the report are every engine's (restoretest/run.py);
what is Redis's:

- choosing: the given id, else the newest complete Redis backup (one with dump.rdb);
- the scratch target (`ScratchRedis`, `--scratch-instance DIR`): DIR must be empty or
  missing; the RDB is fetched and verified completely (`restore.fetch_verified`: the
  repository's SHA-256, the RDB's magic, EOF marker and CRC-64) into `DIR/redis` (0700),
  and a private `redis-server` loads it there (scratch.py: no TCP port, a Unix socket in
  that folder with mode 700, persistence off, so it never writes the data back). The
  exit of `with scratch:` stops the server and removes DIR's contents (DIR too when the
  test created it), on success, failed checks, a corrupt backup and SIGTERM;
- the check language (`parse_query`, pure; docs/restore-tests.md): a check's `query` is
  one read-only command, optionally prefixed by `db N` (the logical database, default 0):

      DBSIZE                                  keys in the database
      EXISTS key                              1 or 0
      TYPE key                                string, list, set, zset, hash, stream or none
      SCARD | LLEN | HLEN | ZCARD | STRLEN key  the size of that value (0 when missing)
      GET key                                 the string value, nil when missing
      COUNT pattern                           keys matching the glob (SCAN MATCH, each once)

  Words are separated by spaces; a key with spaces or quotes is quoted as in a shell
  (`GET "user:1 name"`). Anything else is a usage error (exit 2) before anything is
  read. The value is the reply as text (`42`, `string`); nil counts as nothing: `nonEmpty`
  fails and `equals` / `min` / `max` say "got nil". `expect` is as for PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.redis import restore, scratch
from tonebridge_dr.runner.engines.restoretest import checks as checks_
from tonebridge_dr.runner.engines.restoretest import run as shared
from tonebridge_dr.runner.engines.restoretest.scratch import Scratch, ScratchFolder
from tonebridge_dr.runner.repository import ids
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import Manifest

log = logging.getLogger(__name__)

#: Command -> how many arguments it takes (the whole language).
COMMANDS: dict[str, int] = {
    "DBSIZE": 0,
    "EXISTS": 1,
    "TYPE": 1,
    "SCARD": 1,
    "LLEN": 1,
    "HLEN": 1,
    "ZCARD": 1,
    "STRLEN": 1,
    "GET": 1,
    "COUNT": 1,
}
#: Logical databases a `db N` prefix may name (Redis' `databases` is at most this in practice).
MAX_DB = 1023
USAGE = (
    "a Redis check is one of DBSIZE, EXISTS key, TYPE key, SCARD|LLEN|HLEN|ZCARD|STRLEN key, "
    "GET key or COUNT pattern, optionally after `db N`"
)
WORDING = checks_.Wording(
    nothing="nil",
    null="nil",
    non_empty="expected a value, got nil",
    example='[{"name": "users", "query": "COUNT user:*", "expect": {"min": 1}}]',
)
_SCAN_COUNT = 1000


@dataclasses.dataclass(frozen=True)
class Query:
    """One parsed check: `command` (upper case) with its `argument`, in database `db`."""

    db: int
    command: str
    argument: str | None = None


def parse_query(text: str) -> Query:
    """The check `text` in the Redis check language (module docstring); UsageError otherwise."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise errors.UsageError(f"{exc} in {text!r}; {USAGE}") from None
    db = 0
    if len(words) >= 2 and words[0].lower() == "db":
        if not words[1].isdigit() or int(words[1]) > MAX_DB:
            raise errors.UsageError(
                f"db {words[1]!r}: a database number from 0 to {MAX_DB}; {USAGE}"
            )
        db, words = int(words[1]), words[2:]
    if not words:
        raise errors.UsageError(f"no command in {text!r}; {USAGE}")
    command = words[0].upper()
    if command not in COMMANDS:
        raise errors.UsageError(f"{words[0]!r} is not allowed: {USAGE}")
    wanted = COMMANDS[command]
    if len(words) - 1 != wanted:
        takes = "no argument" if wanted == 0 else "one argument (quote a key with spaces)"
        raise errors.UsageError(f"{command} takes {takes}, got {len(words) - 1}; {USAGE}")
    return Query(db, command, words[1] if wanted else None)


def parse_checks(checks: Sequence[checks_.Check]) -> list[tuple[checks_.Check, Query]]:
    """Every check with its parsed query; UsageError naming the first check that is not in
    the language."""
    parsed = []
    for check in checks:
        try:
            parsed.append((check, parse_query(check.query)))
        except errors.UsageError as exc:
            raise errors.UsageError(f"check {check.name}: {exc}") from None
    return parsed


def _text(reply: Any) -> str | None:
    if reply is None:
        return None
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    return str(int(reply)) if isinstance(reply, bool | int) else str(reply)


def execute(client: redis.Redis, query: Query) -> str | None:
    """Run `query` on `client` (already in its database); the reply as text, None for nil."""
    if query.command == "DBSIZE":
        return _text(client.dbsize())
    key = query.argument
    assert key is not None
    if query.command == "COUNT":
        seen = {name for name in client.scan_iter(match=key, count=_SCAN_COUNT)}  # SCAN may repeat
        return str(len(seen))
    return _text(client.execute_command(query.command, key))  # type: ignore[no-untyped-call]


# --- the scratch server -------------------------------------------------------------------------
class ScratchRedis(Scratch):
    """A private redis-server in `folder` (module docstring)."""

    kind = "instance"

    def __init__(
        self,
        folder: Path,
        *,
        binary: str = scratch.DEFAULT_BINARY,
        load_timeout: float = scratch.DEFAULT_LOAD_TIMEOUT,
    ) -> None:
        self.folder = ScratchFolder(folder)
        self.server_dir = self.folder.path / "redis"
        self.binary = binary
        self.load_timeout = load_timeout
        self.server: scratch.ScratchServer | None = None

    def describe(self) -> str:
        return str(self.folder.path)

    def inspect(self) -> None:
        """Refuse a DIR with anything in it, and a missing redis-server."""
        self.folder.inspect()
        if shutil.which(self.binary) is None:
            raise errors.ToolError(
                f"{self.binary} not found: a Redis restore test loads the backup into a "
                "private redis-server (--redis-server PATH)"
            )

    def prepare(self) -> Path:
        """DIR (created when missing) and its private server folder; the RDB's path."""
        self.folder.create()
        self.server_dir.mkdir(mode=0o700)
        os.chmod(self.server_dir, 0o700)
        return self.server_dir / scratch.RDB_NAME

    def start(self, databases: int) -> scratch.ScratchServer:
        """Start the server on the RDB in the private folder; returns once it is loaded."""
        self.server = scratch.ScratchServer(
            self.server_dir, binary=self.binary, databases=databases,
            load_timeout=self.load_timeout,
        )
        self.server.start()
        return self.server

    def cleanup(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()
        self.folder.empty()
        log.info("removed the scratch redis-server in %s", self.folder.path)


# --- the run ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TestOptions:
    """What to test and how (the scratch target is passed on its own)."""

    __test__ = False  # not a pytest test class

    name: str
    backup_id: str | None = None  # None: the newest complete Redis backup
    checks: tuple[checks_.Check, ...] = ()
    rto: float | None = None  # seconds
    decrypt_key: Path | None = None


def _newest(repo: Repository) -> Manifest:
    found = [m for m in repo.list_backups(engine="redis") if m.object(restore.OBJECT_NAME)]
    if not found:
        raise errors.BackupNotFound(
            f"no complete Redis backup in {repo.url}; `tonebridge-dr backups list` shows what "
            "exists"
        )
    return max(found, key=lambda m: ids.sort_key(m.id))


class _Plan:
    """The Redis part of a run (restoretest.run.Plan)."""

    engine = "redis"

    def __init__(self, target: ScratchRedis, options: TestOptions) -> None:
        self.target = target
        self.options = options
        self.checks = options.checks
        self.parsed = parse_checks(options.checks)

    def choose_backup(self, repo: Repository) -> tuple[Manifest, bytes]:
        wanted = self.options.backup_id
        if wanted in (None, "latest"):
            wanted = _newest(repo).id
        return repo.get_with_bytes(wanted)

    def check_backup(self, manifest: Manifest) -> None:
        if manifest.engine != "redis" or manifest.object(restore.OBJECT_NAME) is None:
            raise errors.UsageError(
                f"backup {manifest.id} is a {manifest.engine}/{manifest.method} backup, not a "
                "Redis RDB"
            )

    def details(self, manifest: Manifest) -> dict[str, Any]:
        return {"server_version": manifest.server_version, "rdb": None}

    def restore(self, repo: Repository, manifest: Manifest, details: dict[str, Any]) -> None:
        rdb_path = self.target.prepare()
        info = restore.fetch_verified(
            repo, manifest, rdb_path, decrypt_key=self.options.decrypt_key
        )
        details["rdb"] = info.as_dict()
        self.target.start(restore.rdb_databases(manifest))

    def run_checks(self) -> list[checks_.CheckResult]:
        server = self.target.server
        assert server is not None
        return [_run_check(server, check, query) for check, query in self.parsed]


def _run_check(
    server: scratch.ScratchServer, check: checks_.Check, query: Query
) -> checks_.CheckResult:
    client = server.client(query.db)
    try:
        value = execute(client, query)
    except redis.RedisError as exc:
        return checks_.CheckResult(check.name, False, None, f"command failed: {exc}")
    finally:
        client.close()
    passed, message = checks_.evaluate(check.expect, 0 if value is None else 1, value, WORDING)
    return checks_.CheckResult(check.name, passed, value, message)


def run_restore_test(
    repo: Repository, target: ScratchRedis, options: TestOptions
) -> dict[str, Any]:
    """Test one Redis backup (restoretest/run.py); the result, or a DRError carrying it."""
    plan = _Plan(target, options)
    return shared.run_restore_test(repo, target, plan, options.name, options.rto)
