"""`check --archive-command CMD`: can this `archive_command` work, as the user running it?

Run it as the database server's OS user (`runuser -u postgres -- tonebridge-dr check
--archive-command "$(psql -Atc 'show archive_command')"`, or in the database pod), with
the environment the server has. It checks the whole chain PostgreSQL will use and names
what to fix, one sentence per problem:

1. the command runs `wal-push %p` (the WAL file's path is what the server passes);
2. its program resolves like the server's shell would: on the user's PATH, or as given
   by an absolute path; and the user may execute it (the first folder on the way that
   the user cannot enter is named: a venv under /root is the usual one); behind the
   compiled front door `tonebridge-dr-walfast`, the command after it too;
3. the repository URL reaches it: `TONEBRIDGE_DR_REPO` in the environment, or set in the
   command itself (`env TONEBRIDGE_DR_REPO=... tonebridge-dr wal-push %p`);
4. the repository can be written with the credentials that environment gives: a small
   probe object is written and deleted (`.check-archive-<random>`).

Nothing else is touched; no WAL is pushed.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import secrets
import shlex
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.engines.postgres.wal import spool
from tonebridge_dr.runner.storage import open_storage

REPO_ENV = runner_contract.ENV_REPO
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
EXAMPLE = "/opt/tonebridge-dr/bin/tonebridge-dr wal-push %p"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _blocking_folder(path: Path) -> Path | None:
    """The first folder on the way to `path` this user cannot enter, if any."""
    for folder in [*reversed(path.parents)]:
        if not os.access(folder, os.X_OK):
            return folder
    return None


def split(command: str) -> tuple[dict[str, str], list[str]]:
    """(`VAR=value` assignments before the program, the program and its arguments); a
    leading `env` is skipped like the shell's `env` would run the rest."""
    words = shlex.split(command)
    if words and os.path.basename(words[0]) == "env":
        words = words[1:]
    assignments: dict[str, str] = {}
    while words and _ASSIGNMENT.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        assignments[name] = value
    return assignments, words


@contextlib.contextmanager
def _environment(extra: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _resolve(program: str, search_path: str, user: str) -> tuple[str | None, str | None]:
    """(the path `program` resolves to like the server's shell would, the problem if any)."""
    found = program if "/" in program else shutil.which(program, path=search_path)
    if found is None:
        return None, (
            f"{program!r} is not on the PATH of user {user} ({search_path}): give its "
            f"absolute path in archive_command, e.g. '{EXAMPLE}' (install it where that "
            "user can execute it: pip install tonebridge-dr into /opt/tonebridge-dr)")
    if (blocked := _blocking_folder(Path(found))) is not None:
        return None, (
            f"user {user} cannot execute {found}: it cannot enter {blocked} (chmod o+x "
            f"{blocked}, or install the CLI elsewhere, e.g. /opt/tonebridge-dr)")
    if not os.path.exists(found):
        return None, f"{found} does not exist"
    if not os.access(found, os.X_OK):
        return None, f"user {user} cannot execute {found} (chmod o+x {found})"
    return found, None


def check_archive_command(command: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What `check --archive-command` reports: `ok`, `problems` (sentences), the program it
    resolved and the repository it would write to."""
    env = os.environ if env is None else env
    user = _user()
    problems: list[str] = []
    try:
        assignments, words = split(command)
    except ValueError as exc:
        return {"ok": False, "problems": [f"archive_command cannot be parsed: {exc}"],
                "program": None, "repository": None, "user": user}
    program_path: str | None = None
    if not words:
        problems.append(f"archive_command runs nothing: use e.g. '{EXAMPLE}'")
    else:
        if "wal-push" not in words[1:] or "%p" not in words[1:]:
            problems.append(f"archive_command must run `wal-push %p` (got {command!r}), "
                            f"e.g. '{EXAMPLE}'")
        search_path = assignments.get("PATH", env.get("PATH", os.defpath))
        # The compiled front door runs the command after it when the spool cannot answer:
        # both must resolve and be executable.
        front_door = os.path.basename(words[0]) == spool.WALFAST_NAME
        programs = words[:2] if front_door else words[:1]
        for program in programs:
            found, problem = _resolve(program, search_path, user)
            if problem is not None:
                problems.append(problem)
            elif program_path is None:
                program_path = found
    repo = assignments.get(REPO_ENV) or env.get(REPO_ENV)
    if not repo:
        problems.append(
            f"{REPO_ENV} is set neither in the environment of user {user} nor in "
            f"archive_command: e.g. 'env {REPO_ENV}=s3://bucket/prefix/POLICY {EXAMPLE}' "
            "(the repository is <spec.repository.url>/<policy name>)")
    else:
        try:
            with _environment(assignments):
                storage = open_storage(repo, create=False)
                probe = f".check-archive-{secrets.token_hex(6)}"
                storage.put_bytes(probe, b"tonebridge-dr check --archive-command\n")
                storage.delete(probe)
        except Exception as exc:  # every failure is the answer, in one sentence
            problems.append(f"user {user} cannot write to the repository {repo}: {exc}")
    return {"ok": not problems, "problems": problems, "program": program_path,
            "repository": repo, "user": user}
