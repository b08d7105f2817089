"""Physical restore: a base backup plus archived WAL, to a target time, LSN or the latest.

`restore_physical` works in two phases:

1. Plan (reads only; nothing is written when it fails). Choose the base backup
   (the given one, or the newest that ends before the target: `finished_at <=
   target time`, `stop_lsn <= target LSN`), the recovery timeline (like
   PostgreSQL's `recovery_target_timeline = latest`: the newest timeline whose
   history files follow on from the backup's), and check that the archive holds
   every segment PostgreSQL will ask for, named as it will ask (the newest
   timeline of the history path that exists at that segment), from the end of
   the backup's own WAL up to the target:
   - time: up to the first segment archived at or after the target time (WAL
     written at that time can only be in a segment archived later);
   - LSN: up to the segment holding the target LSN;
   - latest: up to the end of the archive on that path (a `.partial` left by a
     stopped wal-stream counts as the end).
   Unreachable targets raise RecoveryTargetUnreachable: before the oldest
   usable backup, after the archive position, or with a segment missing in
   between (a restore would silently stop there).
2. Restore. The data directory must be empty (or `overwrite`). `base.tar` is
   streamed from the repository (SHA-256 verified; a bad object removes what
   was extracted), then `recovery.signal` is written and `postgresql.auto.conf`
   gets restore_command (`wal-fetch --repo URL --allow-partial %f %p`), the
   target, `recovery_target_action = 'promote'`, `recovery_target_timeline`,
   `archive_mode = 'off'` unless `keep_archiving` (a restored copy must not
   archive a new timeline into the source's archive unless asked to), and the
   `settings` given (`--set`: meant to stay, for every later server too).

   With `start`, the server is started as `run_as` (the data directory is
   chowned to it when we are root), recovery is awaited until the server is
   promoted (`pg_controldata` says "in production"; plus `pg_is_in_recovery()`
   when a DSN is given); `stop_after` then shuts it down cleanly and checks that
   pg_control says "shut down".

The temporary run: what only fits the server we start here goes on its command
line (`pg_ctl -o`), never into postgresql.auto.conf, so none of it sticks to the
next server started on the volume (`postmaster.opts`, which records that command
line, is removed after `stop_after`). The backed-up cluster's own
`unix_socket_directories`, `listen_addresses` and `port` name folders and
addresses of the source machine (in a restore pod the socket folder does not
exist and PostgreSQL fails with "could not create lock file"), so the run gets:
- `unix_socket_directories`: a private temporary folder (0700, owned by the
  server's account; removed after `stop_after`), or the folder a DSN's `host=/path`
  names;
- `listen_addresses`: the DSN's host (so the check can connect), else '' (Unix
  socket only: nothing outside can reach a server that is being recovered);
- `port`: the DSN's port, else 5432;
- `logging_collector = off`, `log_destination = stderr`, `lc_messages = C`: the
  whole server log goes to `log_file`, in words this module can read.
A name given with `settings` is left to postgresql.auto.conf (the caller asked
for it to stay).

What the promoted data directory keeps: recovery.signal is gone (PostgreSQL
removes it when it promotes), so restore_command and the recovery_target_*
settings could only matter again if someone created recovery.signal or
standby.signal by hand (or copied the volume with pg_basebackup, which copies
postgresql.auto.conf to the copy). They are removed from postgresql.auto.conf
once the server is promoted (`RECOVERY_SETTINGS`, including any the backed-up
cluster had there), with a comment saying so; `archive_mode = 'off'` and the
`settings` given stay. postgresql.conf is never edited.

What the result reports (the RestoreRequest status shows the first two):
- `recovered_to_lsn`: the switch point of the new timeline in its history file
  (`pg_wal/<tli>.history`, written by PostgreSQL when it promotes): the end of
  the last WAL record replayed, i.e. the same as `pg_last_wal_replay_lsn()`.
  Not `pg_current_wal_lsn()` of the promoted server, nor the checkpoint in
  pg_control: both include what the server wrote itself after recovery (the
  end-of-recovery and shutdown checkpoints on the new timeline).
- `recovered_to_time`: the commit (or abort) time of the last transaction
  replayed, `pg_last_xact_replay_timestamp()`: read with the DSN when one is
  given, else from the server log line PostgreSQL writes with the same value at
  the end of recovery ("last completed transaction was at log time ..."). None
  when recovery replayed no transaction (the data is as of the backup's end).
- `server_version_major`: from the restored data directory's PG_VERSION;
  `server_version`: the full version the backup was taken from.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import tools
from tonebridge_dr.runner.engines.postgres.wal import catalog, fetch, naming
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import Manifest, format_time

log = logging.getLogger(__name__)

BASE_OBJECT = "base.tar"
#: The command restore_command / archive_command start (before the verb).
WAL_COMMAND_ENV = "TONEBRIDGE_DR_WAL_COMMAND"
DEFAULT_TIMEOUT = 3600.0
_POLL = 0.2
_SETTING_RE = re.compile(r"[a-z_][a-z0-9_.]*", re.ASCII)
#: Settings that only act while recovery.signal / standby.signal exist; removed from
#: postgresql.auto.conf once the restored server is promoted.
RECOVERY_SETTINGS = frozenset(
    {
        "restore_command",
        "recovery_end_command",
        "recovery_target",
        "recovery_target_action",
        "recovery_target_inclusive",
        "recovery_target_lsn",
        "recovery_target_name",
        "recovery_target_time",
        "recovery_target_timeline",
        "recovery_target_xid",
    }
)
#: The temporary run's server log goes to our log file, in words we can read.
_RUN_LOGGING = {"logging_collector": "off", "log_destination": "stderr", "lc_messages": "C"}
DEFAULT_PORT = "5432"
#: A Unix socket path holds at most 107 bytes; PostgreSQL adds `/.s.PGSQL.<port>.lock`.
_SOCKET_DIR_LIMIT = 80
_CONF_LINE_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(?:=|\s)")
_LAST_XACT_RE = re.compile(r"last completed transaction was at log time (\S+ \S+)")


class RecoveryTargetUnreachable(errors.BackupNotFound):
    """No base backup plus archived WAL can reach the requested recovery target."""

    reason = "RecoveryTargetUnreachable"


@dataclasses.dataclass(frozen=True)
class Target:
    kind: Literal["time", "lsn", "latest"]
    time: dt.datetime | None = None
    lsn: int | None = None

    def describe(self) -> str:
        if self.kind == "time" and self.time is not None:
            return f"time {format_time(self.time)}"
        if self.kind == "lsn" and self.lsn is not None:
            return f"LSN {naming.format_lsn(self.lsn)}"
        return "the end of the archive"

    def result(self) -> dict[str, Any]:
        value: str | None = None
        if self.time is not None:
            value = format_time(self.time)
        elif self.lsn is not None:
            value = naming.format_lsn(self.lsn)
        return {"type": self.kind, "value": value}


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 (`2026-11-29T02:41:00Z`, `2026-11-29 02:41:00.123+09:00`); naive means UTC."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    if re.search(r"[+-]\d\d$", value):
        value += ":00"
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise errors.UsageError(
            f"invalid target time {text!r}: use ISO 8601, e.g. 2026-11-29T02:41:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def parse_target(time_text: str | None, lsn_text: str | None, latest: bool) -> Target:
    given = sum(1 for value in (time_text, lsn_text) if value) + (1 if latest else 0)
    if given != 1:
        raise errors.UsageError("give exactly one of --target-time, --target-lsn, --latest")
    if time_text:
        return Target("time", time=parse_time(time_text))
    if lsn_text:
        return Target("lsn", lsn=naming.parse_lsn(lsn_text))
    return Target("latest")


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
    data_dir: Path
    target: Target
    backup_id: str | None = None
    target_timeline: int | None = None  # None: latest
    overwrite: bool = False
    start: bool = False
    stop_after: bool = False
    run_as: str = "postgres"
    decrypt_key: Path | None = None
    passphrase: str | None = None
    keep_archiving: bool = False
    settings: dict[str, str] = dataclasses.field(default_factory=dict)
    wal_command: str | None = None
    dsn: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    log_file: Path | None = None


@dataclasses.dataclass
class Plan:
    """What a restore will use; built without writing anything."""

    backup: Manifest
    segment_size: int
    timeline: int
    path: list[naming.TimelineSpan]
    first_segment: str | None = None
    last_segment: str | None = None
    segments: int = 0
    ends_with_partial: bool = False
    last_archived_at: dt.datetime | None = None

    def result(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup.id,
            "backup_finished_at": format_time(self.backup.finished_at, timespec="seconds"),
            "recovery_timeline": self.timeline,
            "wal_from": self.first_segment,
            "wal_to": self.last_segment,
            "wal_segments": self.segments,
            "ends_with_partial": self.ends_with_partial,
        }


# -- planning ------------------------------------------------------------------------------


class _Planner:
    def __init__(self, repo: Repository, options: RestoreOptions) -> None:
        self.repo = repo
        self.options = options
        self.archive = catalog.WalArchive(repo.storage)
        self.histories = self.archive.histories()
        self._paths: dict[int, list[naming.TimelineSpan]] = {}
        self._folders: dict[str, dict[str, catalog.ArchivedObject]] = {}

    def path_of(self, timeline: int) -> list[naming.TimelineSpan]:
        if timeline not in self._paths:
            if timeline == 1:
                self._paths[1] = [naming.TimelineSpan(1, 0, None)]
            else:
                obj = self.histories.get(timeline)
                if obj is None:
                    raise RecoveryTargetUnreachable(
                        f"timeline {timeline} has no history file in {self.repo.url}"
                    )
                text = self.archive.read_bytes(
                    obj, decrypt_key=self.options.decrypt_key, passphrase=self.options.passphrase
                ).decode("utf-8", "replace")
                self._paths[timeline] = naming.parse_history(timeline, text)
        return self._paths[timeline]

    def recovery_timeline(self, backup_timeline: int) -> int:
        if self.options.target_timeline is not None:
            return self.options.target_timeline
        newest = backup_timeline
        while newest + 1 in self.histories:  # PostgreSQL's findNewestTimeLine
            newest += 1
        return newest

    def on_path(self, backup: Manifest, path: list[naming.TimelineSpan]) -> bool:
        assert backup.wal is not None
        start = naming.parse_lsn(backup.wal.start_lsn)
        return any(
            span.timeline == backup.wal.timeline
            and span.begin <= start
            and (span.end is None or start < span.end)
            for span in path
        )

    def candidates(self) -> list[Manifest]:
        found = [
            m
            for m in self.repo.list_backups(engine="postgres", method="physical")
            if m.wal is not None and m.object(BASE_OBJECT) is not None
        ]
        if not found:
            raise RecoveryTargetUnreachable(
                f"no physical PostgreSQL base backup in {self.repo.url}: take one with "
                "`tonebridge-dr backup postgres --method physical`"
            )
        return found

    def choose(self) -> tuple[Manifest, int, list[naming.TimelineSpan]]:
        target = self.options.target
        if self.options.backup_id is not None:
            backup = self.repo.get(self.options.backup_id)
            if backup.wal is None or backup.object(BASE_OBJECT) is None:
                raise errors.UsageError(f"backup {backup.id} is not a physical base backup")
            timeline = self.recovery_timeline(backup.wal.timeline)
            path = self.path_of(timeline)
            if not self.on_path(backup, path):
                raise RecoveryTargetUnreachable(
                    f"backup {backup.id} (timeline {backup.wal.timeline}) is not on the history "
                    f"of timeline {timeline}"
                )
            if not self._before_target(backup):
                raise RecoveryTargetUnreachable(
                    f"backup {backup.id} ends after the target {target.describe()}"
                )
            return backup, timeline, path
        backups = self.candidates()
        off_path = 0
        for backup in reversed(backups):
            assert backup.wal is not None
            timeline = self.recovery_timeline(backup.wal.timeline)
            path = self.path_of(timeline)
            if not self.on_path(backup, path):
                off_path += 1
                continue
            if self._before_target(backup):
                return backup, timeline, path
        if off_path == len(backups):
            raise RecoveryTargetUnreachable(
                "no base backup lies on the history of the recovery timeline (like PostgreSQL, "
                "`latest` follows the newest timeline whose history files are archived); pass "
                "--target-timeline to follow an older one"
            )
        oldest = backups[0]
        assert oldest.wal is not None
        end = (
            format_time(oldest.finished_at, timespec="seconds")
            if target.kind == "time"
            else oldest.wal.stop_lsn
        )
        raise RecoveryTargetUnreachable(
            f"the target {target.describe()} is before the end of the oldest base backup "
            f"({oldest.id}, consistent from {end})"
        )

    def _before_target(self, backup: Manifest) -> bool:
        assert backup.wal is not None
        target = self.options.target
        if target.kind == "time":
            assert target.time is not None
            return backup.finished_at <= target.time
        if target.kind == "lsn":
            assert target.lsn is not None
            return naming.parse_lsn(backup.wal.stop_lsn) <= target.lsn
        return True

    # -- WAL coverage ---------------------------------------------------------------------
    def _lookup(self, name: str) -> catalog.ArchivedObject | None:
        folder = name[:16]
        if folder not in self._folders:
            tli, log_no = int(folder[:8], 16), int(folder[8:], 16)
            self._folders[folder] = {obj.name: obj for obj in self.archive.folder(tli, log_no)}
        return self._folders[folder].get(name)

    def plan(self) -> Plan:
        backup, timeline, path = self.choose()
        assert backup.wal is not None
        size = int(backup.extra.get("wal_segment_size") or naming.DEFAULT_SEGMENT_SIZE)
        naming.check_segment_size(size)
        plan = Plan(backup=backup, segment_size=size, timeline=timeline, path=path)
        start = naming.segno_of_lsn(naming.parse_lsn(backup.wal.start_lsn), size)
        stop = naming.segno_of_lsn(max(naming.parse_lsn(backup.wal.stop_lsn) - 1, 0), size)
        # pg_basebackup -X fetch/stream puts the backup's own WAL into the data directory.
        included = backup.extra.get("wal_method") in ("fetch", "stream")
        segno = stop + 1 if included else start

        def name_for(number: int) -> str:
            for span in reversed(path):
                if naming.segno_of_lsn(span.begin, size) <= number:
                    return naming.segment_name(span.timeline, number, size)
            return naming.segment_name(path[0].timeline, number, size)

        target = self.options.target
        target_segno = naming.segno_of_lsn(target.lsn, size) if target.lsn is not None else None
        reached = target.kind == "latest" or (target_segno is not None and target_segno < segno)
        while not reached:
            name = name_for(segno)
            obj = self._lookup(name)
            if obj is None:
                partial = self._lookup(f"{name}.partial")
                if partial is not None and not self._later_on_path(path, segno, size):
                    self._take(plan, partial, partial=True)
                    reached = self._reaches(partial, target, target_segno, segno)
                    break
                self._missing(path, segno, size, name, plan)
                break
            self._take(plan, obj, partial=False)
            reached = self._reaches(obj, target, target_segno, segno)
            segno += 1
        if not reached:  # the archive ended with a .partial short of the target
            self._missing(path, segno + 1, size, name_for(segno + 1), plan)
        if target.kind == "latest":
            self._walk_to_end(plan, path, segno, size, name_for)
        return plan

    def _take(self, plan: Plan, obj: catalog.ArchivedObject, *, partial: bool) -> None:
        plan.first_segment = plan.first_segment or obj.wal.segment
        plan.last_segment = obj.wal.segment
        plan.segments += 1
        plan.ends_with_partial = partial
        plan.last_archived_at = obj.archived_at

    def _reaches(
        self,
        obj: catalog.ArchivedObject,
        target: Target,
        target_segno: int | None,
        segno: int,
    ) -> bool:
        if target.kind == "time":
            assert target.time is not None
            # Storage times have whole seconds (S3 Last-Modified): an object stored in the
            # target's second may have been stored after it.
            return obj.archived_at >= target.time.replace(microsecond=0)
        return target_segno is not None and segno >= target_segno

    def _walk_to_end(
        self, plan: Plan, path: list[naming.TimelineSpan], segno: int, size: int, name_for: Any
    ) -> None:
        while True:
            name = name_for(segno)
            obj = self._lookup(name)
            if obj is None:
                partial = self._lookup(f"{name}.partial")
                later = self._later_on_path(path, segno, size)
                if partial is not None and not later:
                    self._take(plan, partial, partial=True)
                    return
                if later:
                    raise RecoveryTargetUnreachable(
                        f"WAL segment {name} is missing from the archive but later WAL exists: "
                        "a restore to the latest point would stop there"
                    )
                return
            self._take(plan, obj, partial=False)
            segno += 1

    def _later_on_path(self, path: list[naming.TimelineSpan], segno: int, size: int) -> bool:
        """True when the archive holds a complete segment after `segno` on the path."""
        for span in reversed(path):
            upto = None
            if span.end is not None:
                upto = naming.segment_name(
                    span.timeline, naming.segno_of_lsn(max(span.end - 1, 0), size), size
                )
            newest, _ = self.archive.newest_on_timeline(span.timeline, upto=upto)
            if newest is not None:
                return newest.wal.segno(size) > segno
        return False

    def _missing(
        self, path: list[naming.TimelineSpan], segno: int, size: int, name: str, plan: Plan
    ) -> None:
        target = self.options.target
        if self._later_on_path(path, segno, size):
            raise RecoveryTargetUnreachable(
                f"WAL segment {name} is missing from the archive {self.repo.url}: "
                f"the target {target.describe()} cannot be reached from backup {plan.backup.id}"
            )
        last = plan.last_segment or "none after the backup"
        when = (
            f" archived at {format_time(plan.last_archived_at, timespec='seconds')}"
            if plan.last_archived_at
            else ""
        )
        raise RecoveryTargetUnreachable(
            f"the target {target.describe()} is after the newest archived WAL "
            f"(last segment {last}{when}); use --latest or an earlier target"
        )


def plan_restore(repo: Repository, options: RestoreOptions) -> Plan:
    """Choose backup, timeline and WAL for `options.target`; reads only."""
    return _Planner(repo, options).plan()


# -- restoring ------------------------------------------------------------------------------


class _ChunkReader(io.RawIOBase):
    """A read-only file object over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._buf))
        buffer[:size] = self._buf[:size]
        self._buf = self._buf[size:]
        return size

    def drain(self) -> None:
        self._buf = b""
        for _ in self._chunks:
            pass


def _member_path(root: Path, name: str) -> Path:
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts:
        raise errors.IntegrityError(f"base.tar holds an unsafe path {name!r}")
    return root.joinpath(*parts)


def extract_base(stream: Iterator[bytes], data_dir: Path) -> int:
    """Unpack the base backup tar stream into `data_dir`; returns the bytes written.

    The stream is read to its end, so its checksum is verified before this returns.
    """
    reader = _ChunkReader(stream)
    written = 0
    with tarfile.open(fileobj=io.BufferedReader(reader, 1024 * 1024), mode="r|") as tar:
        for member in tar:
            target = _member_path(data_dir, member.name)
            if member.isdir():
                target.mkdir(mode=0o700, parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while chunk := source.read(1024 * 1024):
                        out.write(chunk)
                        written += len(chunk)
            else:
                raise errors.IntegrityError(
                    f"base.tar holds {member.name!r}, which is not a file or folder "
                    "(tablespaces and links are not supported)"
                )
    reader.drain()
    return written


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def wal_command_prefix(explicit: str | None = None) -> str:
    """How PostgreSQL calls us: `explicit`, else $TONEBRIDGE_DR_WAL_COMMAND, else the light
    entry point (`<this python> .../wal/spool.py`: a prefetched segment is answered by
    an interpreter start and a rename; anything else execs the full command)."""
    from tonebridge_dr.runner.engines.postgres.wal import spool

    return (
        explicit
        or os.environ.get(WAL_COMMAND_ENV)
        or f"{shlex.quote(sys.executable)} {shlex.quote(spool.__file__)}"
    )


def restore_command(repo_url: str, options: RestoreOptions) -> str:
    parts = [wal_command_prefix(options.wal_command), "wal-fetch", "--repo", shlex.quote(repo_url)]
    if options.decrypt_key is not None:
        parts += ["--decrypt-key", shlex.quote(str(options.decrypt_key))]
    parts += ["--allow-partial", "%f", "%p"]
    return " ".join(parts)


def recovery_settings(repo_url: str, options: RestoreOptions, plan: Plan) -> dict[str, str]:
    settings = {"restore_command": restore_command(repo_url, options)}
    target = options.target
    if target.time is not None:
        settings["recovery_target_time"] = target.time.isoformat(sep=" ")
    elif target.lsn is not None:
        settings["recovery_target_lsn"] = naming.format_lsn(target.lsn)
    settings["recovery_target_action"] = "promote"
    settings["recovery_target_timeline"] = (
        "latest" if options.target_timeline is None else str(options.target_timeline)
    )
    if not options.keep_archiving:
        settings["archive_mode"] = "off"
    for key, value in options.settings.items():
        settings[key] = value
    return settings


def _check_settings(settings: dict[str, str]) -> None:
    for key in settings:
        if not _SETTING_RE.fullmatch(key):
            raise errors.UsageError(f"invalid PostgreSQL setting name {key!r}")


def _prepare_dir(data_dir: Path, overwrite: bool) -> bool:
    """Make sure `data_dir` exists and is empty; True when we created it."""
    if data_dir.exists() and not data_dir.is_dir():
        raise errors.TargetNotEmpty(f"{data_dir} exists and is not a folder")
    if data_dir.is_dir() and any(data_dir.iterdir()):
        if not overwrite:
            raise errors.TargetNotEmpty(
                f"data directory {data_dir} is not empty; pass --overwrite to replace it"
            )
        pid = _postmaster_pid(data_dir)
        if pid is not None and _alive(pid):
            raise errors.TargetNotEmpty(
                f"a PostgreSQL server (pid {pid}) is running in {data_dir}; stop it first"
            )
        for entry in data_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return False
    created = not data_dir.exists()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    return created


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().splitlines()[0]
        return int(first)
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _user(run_as: str) -> pwd.struct_passwd | None:
    """The account to own and run the cluster, when we are root; None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(run_as)
    except KeyError:
        raise errors.UsageError(f"--run-as user {run_as!r} does not exist") from None


def _chown_tree(root: Path, account: pwd.struct_passwd) -> None:
    for folder, dirs, files in os.walk(root):
        os.chown(folder, account.pw_uid, account.pw_gid)
        for name in (*dirs, *files):
            os.lchown(os.path.join(folder, name), account.pw_uid, account.pw_gid)


def _as_user(account: pwd.struct_passwd | None) -> dict[str, Any]:
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _server_env(repo_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PGDATA", "PGPORT", "PGHOST")}
    env["TONEBRIDGE_DR_REPO"] = repo_url
    return env


def _log_tail(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return "no server log"
    for line in reversed(lines):
        if "FATAL:" in line or "PANIC:" in line:
            return line.strip()
    return lines[-1].strip() if lines else "empty server log"


def _major(backup: Manifest) -> int | None:
    version = backup.server_version or ""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _data_dir_major(data_dir: Path) -> int | None:
    """The major version of the cluster in `data_dir` (its PG_VERSION file)."""
    try:
        head = (data_dir / "PG_VERSION").read_text().strip().split(".", 1)[0]
    except OSError:
        return None
    return int(head) if head.isdigit() else None


def _controldata(data_dir: Path, major: int | None) -> dict[str, str]:
    binary = tools.tool("pg_controldata", major)
    proc = subprocess.run(
        [binary, "-D", str(data_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )
    if proc.returncode != 0:
        raise errors.ToolError(f"pg_controldata failed: {proc.stderr.strip()[-300:]}")
    fields: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _newest_history(wal_dir: Path) -> int | None:
    found = [
        int(entry.name[:8], 16)
        for entry in wal_dir.iterdir()
        if naming.is_valid(entry.name) and entry.name.endswith(".history")
    ]
    return max(found) if found else None


def _switch_point(wal_dir: Path, timeline: int | None) -> str | None:
    """Where `timeline` branched off its parent (its history file's last switch LSN): the
    end of the last record recovery replayed before the server promoted onto it."""
    if timeline is None or timeline < 2:
        return None
    try:
        text = (wal_dir / f"{timeline:08X}.history").read_text(errors="replace")
        spans = naming.parse_history(timeline, text)
    except (OSError, errors.IntegrityError):
        return None
    return naming.format_lsn(spans[-1].begin)


def _last_transaction_time(log_file: Path, offset: int) -> dt.datetime | None:
    """pg_last_xact_replay_timestamp() as PostgreSQL logs it when recovery ends (written
    after `offset`, i.e. by this run); None when no transaction was replayed."""
    try:
        with log_file.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = _LAST_XACT_RE.findall(text)
    if not found:
        return None
    try:
        return parse_time(found[-1])
    except errors.UsageError:
        return None


# -- the temporary run ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    """Where the verification DSN expects the server."""

    socket_dir: str | None = None
    listen: str | None = None
    port: str | None = None


def _dsn_endpoint(dsn: str | None) -> _Endpoint:
    """UsageError for a malformed DSN (checked before anything is written)."""
    if not dsn:
        return _Endpoint()
    from tonebridge_dr.runner.engines.postgres import connection

    params = connection.ConnInfo.parse(dsn).params
    host = params.get("host") or ""
    folder = host if host.startswith("/") else None
    tcp = params.get("hostaddr") or (host if host and folder is None else None)
    return _Endpoint(folder, tcp, params.get("port"))


def needs_private_socket_dir(options: RestoreOptions) -> bool:
    """True when neither `settings` nor the DSN say where the run's sockets go."""
    return (
        "unix_socket_directories" not in options.settings
        and _dsn_endpoint(options.dsn).socket_dir is None
    )


def _list_item(folder: str) -> str:
    """One element of a PostgreSQL list setting (double-quoted when it has to be)."""
    if re.search(r'[\s,"]', folder):
        return '"' + folder.replace('"', '""') + '"'
    return folder


def run_settings(options: RestoreOptions, private_dir: Path | None) -> dict[str, str]:
    """The settings of the temporary run, for its command line only (module docstring).

    Names given in `options.settings` are left out: postgresql.auto.conf has them.
    `private_dir` is the sockets' folder unless the DSN names one.
    """
    endpoint = _dsn_endpoint(options.dsn)
    given = options.settings
    run: dict[str, str] = {}
    if "unix_socket_directories" not in given:
        folder = endpoint.socket_dir or (str(private_dir) if private_dir is not None else None)
        if folder is None:
            raise errors.UsageError("the restored server needs a folder for its sockets")
        run["unix_socket_directories"] = _list_item(folder)
    if "listen_addresses" not in given:
        run["listen_addresses"] = endpoint.listen or ""
    if "port" not in given:
        run["port"] = endpoint.port or DEFAULT_PORT
    for key, value in _RUN_LOGGING.items():
        if key not in given:
            run[key] = value
    return run


def postmaster_options(settings: dict[str, str]) -> str:
    """`pg_ctl -o` text (pg_ctl hands it to /bin/sh): `-c name=value` per setting."""
    return " ".join(f"-c {shlex.quote(f'{key}={value}')}" for key, value in settings.items())


def _private_socket_dir(account: pwd.struct_passwd | None) -> Path:
    """A fresh 0700 folder for the run's Unix sockets, owned by the server's account."""
    base = tempfile.gettempdir()
    if len(base) > _SOCKET_DIR_LIMIT - 16:
        base = "/tmp"
    folder = Path(tempfile.mkdtemp(prefix="tbdr-pg-", dir=base))
    if account is not None:
        os.chown(folder, account.pw_uid, account.pw_gid)
    return folder


def _remove_socket_dir(folder: Path | None, data_dir: Path) -> None:
    """Remove our socket folder unless a server still runs with its lock file there."""
    if folder is None:
        return
    pid = _postmaster_pid(data_dir)
    if pid is not None and _alive(pid):
        return
    shutil.rmtree(folder, ignore_errors=True)


def neutralise_recovery_settings(data_dir: Path) -> list[str]:
    """Remove `RECOVERY_SETTINGS` from postgresql.auto.conf of a promoted cluster.

    Returns the names removed (sorted). Idempotent; the file is replaced atomically and
    keeps its mode and owner; a comment records what was removed. Other lines
    (archive_mode, the settings given with --set, the source's own) are kept as written.
    """
    conf = data_dir / "postgresql.auto.conf"
    try:
        lines = conf.read_text().splitlines(keepends=True)
        before = conf.stat()
    except FileNotFoundError:
        return []
    kept: list[str] = []
    removed: set[str] = set()
    for line in lines:
        match = _CONF_LINE_RE.match(line)
        if match is not None and match.group(1).lower() in RECOVERY_SETTINGS:
            removed.add(match.group(1).lower())
            continue
        kept.append(line)
    if not removed:
        return []
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    names = sorted(removed)
    kept.append(
        f"# tonebridge-dr: recovery finished and the server was promoted; removed "
        f"{', '.join(names)} (they would only act again under recovery.signal or "
        "standby.signal)\n"
    )
    scratch = conf.with_name(f"{conf.name}.tonebridge-dr")
    scratch.write_text("".join(kept))
    os.chmod(scratch, before.st_mode & 0o777)
    if os.geteuid() == 0:
        os.chown(scratch, before.st_uid, before.st_gid)
    os.replace(scratch, conf)
    return names


class _Server:
    """Starting, awaiting and stopping the restored cluster."""

    def __init__(
        self,
        data_dir: Path,
        major: int | None,
        account: pwd.struct_passwd | None,
        repo_url: str,
        log_file: Path,
        run: dict[str, str],
    ) -> None:
        self.data_dir = data_dir
        self.major = major
        self.account = account
        self.repo_url = repo_url
        self.log_file = log_file
        self.run = run
        self.log_offset = 0

    def _pg_ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        argv = [tools.tool("pg_ctl", self.major), "-D", str(self.data_dir), *args]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=_server_env(self.repo_url),
            timeout=timeout + 30,
            check=False,
            **_as_user(self.account),
        )

    def start(self, timeout: float) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.account is not None:
            os.chown(self.log_file.parent, self.account.pw_uid, self.account.pw_gid)
        try:
            self.log_offset = self.log_file.stat().st_size
        except FileNotFoundError:
            self.log_offset = 0
        proc = self._pg_ctl(
            "-l",
            str(self.log_file),
            "-o",
            postmaster_options(self.run),
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout,
        )
        if proc.returncode != 0:
            pid = _postmaster_pid(self.data_dir)
            if pid is None or not _alive(pid):
                raise errors.ToolError(
                    f"the restored server did not start: {_log_tail(self.log_file)} "
                    f"(log: {self.log_file})"
                )

    def await_promotion(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pid = _postmaster_pid(self.data_dir)
            if pid is None or not _alive(pid):
                raise errors.ToolError(
                    f"the restored server stopped during recovery: {_log_tail(self.log_file)} "
                    f"(log: {self.log_file})"
                )
            # recovery.signal goes first, then pg_control says "in production" (the
            # postmaster status line says "ready" as soon as hot standby accepts connections).
            if not (self.data_dir / "recovery.signal").exists():
                state = _controldata(self.data_dir, self.major).get("Database cluster state")
                if state == "in production":
                    return
            if time.monotonic() > deadline:
                raise errors.ToolError(
                    f"recovery did not finish within {timeout:.0f} s; the server keeps "
                    f"running (log: {self.log_file})"
                )
            time.sleep(_POLL)

    def stop(self, timeout: float = 120.0) -> None:
        """Shut down cleanly (fast mode: a shutdown checkpoint) and check pg_control."""
        proc = self._pg_ctl("-m", "fast", "-w", "-t", str(int(timeout)), "stop", timeout=timeout)
        if proc.returncode != 0:
            raise errors.ToolError(f"pg_ctl stop failed: {proc.stderr.strip()[-300:]}")
        state = _controldata(self.data_dir, self.major).get("Database cluster state", "")
        if state != "shut down":
            raise errors.ToolError(
                f"the restored server did not shut down cleanly: pg_control says {state!r} "
                f"(log: {self.log_file})"
            )
        # pg_ctl restart would replay the temporary run's command line from it.
        (self.data_dir / "postmaster.opts").unlink(missing_ok=True)


ENDED_EARLY_MARKER = "TONEBRIDGE_DR_RECOVERY_ENDED_EARLY"


def recovery_shortfall(plan: Plan, target: Target, recovered_to_lsn: str | None) -> str | None:
    """Why recovery stopped short of its plan, or None when it reached it.

    PostgreSQL itself refuses to promote before a time or LSN target ("recovery ended
    before configured recovery target was reached"), but for the latest point the end of
    the archive is simply the first file restore_command did not deliver: a fetch error
    taken for "not found" promotes early without a word. So: the last replayed record
    must lie in (or end at) the plan's last segment, and at or past an LSN target. The
    one blind spot is a record that fills the whole last segment and continues into WAL
    nobody archived yet; its data is unrecoverable either way.
    """
    if recovered_to_lsn is None:
        return "the restored server reports no end of recovery (no new timeline history)"
    reached = naming.parse_lsn(recovered_to_lsn)
    if target.kind == "lsn" and target.lsn is not None and reached < target.lsn:
        return (
            f"recovery ended at LSN {recovered_to_lsn}, before the target LSN "
            f"{naming.format_lsn(target.lsn)}"
        )
    if target.kind != "latest" or plan.last_segment is None:
        return None
    size = plan.segment_size
    planned = naming.parse(plan.last_segment).segno(size)
    # An end exactly at a segment boundary belongs to the segment before it.
    if naming.segno_of_lsn(max(reached - 1, 0), size) >= planned:
        return None
    return (
        f"recovery ended at LSN {recovered_to_lsn}, in segment "
        f"{naming.segment_name(plan.timeline, naming.segno_of_lsn(reached, size), size)}, "
        f"but the archive holds WAL up to {plan.last_segment}: PostgreSQL promoted after "
        "a WAL file was not delivered"
    )


def _mark_ended_early(server: _Server, data_dir: Path, why: str) -> None:
    """Stop the server (nobody may write to a database that misses data), mark, raise."""
    try:
        server.stop()
    except errors.DRError as exc:
        log.warning("could not stop the restored server: %s", exc)
    text = (
        f"{why}.\nThis data directory misses committed transactions that are in the "
        "archive. Do not use it; restore again (overwrite) once the cause is fixed.\n"
    )
    (data_dir / ENDED_EARLY_MARKER).write_text(text)
    raise errors.RecoveryEndedEarly(
        f"{why}; the data directory was shut down and marked with {ENDED_EARLY_MARKER}"
    )


def _verify_sql(dsn: str) -> dict[str, Any]:
    from tonebridge_dr.runner.engines.postgres import connection

    info = connection.ConnInfo.parse(dsn)
    with connection.connect(info, autocommit=True, purpose="restored server") as conn:
        row = conn.execute(
            "SELECT pg_is_in_recovery(), pg_current_wal_lsn()::text, "
            "pg_walfile_name(pg_current_wal_lsn()), pg_last_xact_replay_timestamp()"
        ).fetchone()
    assert row is not None
    replayed = row[3] if isinstance(row[3], dt.datetime) else None
    return {
        "in_recovery": bool(row[0]),
        "wal_lsn": row[1],
        "timeline": int(row[2][:8], 16),
        "last_replayed_at": replayed,
    }


def restore_physical(repo: Repository, options: RestoreOptions) -> dict[str, Any]:
    """Plan, then restore into `options.data_dir` (and start/await/stop when asked)."""
    _check_settings(options.settings)
    if options.stop_after and not options.start:
        raise errors.UsageError("--stop-after needs --start")
    _dsn_endpoint(options.dsn)  # a malformed DSN fails before anything is written
    account = _user(options.run_as) if options.start or os.geteuid() == 0 else None
    data_dir = options.data_dir.absolute()
    plan = plan_restore(repo, options)
    log.info(
        "restoring backup %s to %s (timeline %d, WAL %s .. %s)",
        plan.backup.id,
        options.target.describe(),
        plan.timeline,
        plan.first_segment or "-",
        plan.last_segment or "-",
    )
    created = _prepare_dir(data_dir, options.overwrite)
    began = time.monotonic()
    try:
        stream = repo.read_object(
            plan.backup,
            BASE_OBJECT,
            decrypt_key=options.decrypt_key,
            passphrase=options.passphrase,
        )
        raw_bytes = extract_base(stream, data_dir)
    except BaseException:
        for entry in list(data_dir.iterdir()) if data_dir.is_dir() else []:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    extracted_seconds = time.monotonic() - began
    for stale in ("postmaster.pid", "postmaster.opts", "standby.signal"):
        (data_dir / stale).unlink(missing_ok=True)
    (data_dir / "pg_wal" / "archive_status").mkdir(mode=0o700, parents=True, exist_ok=True)
    settings = recovery_settings(repo.url, options, plan)
    with (data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write(
            f"\n# tonebridge-dr: point-in-time restore of backup {plan.backup.id} to "
            f"{options.target.describe()}\n"
        )
        for key, value in settings.items():
            conf.write(f"{key} = {_conf_quote(value)}\n")
    (data_dir / "recovery.signal").write_bytes(b"")
    if account is not None:
        _chown_tree(data_dir, account)
    os.chmod(data_dir, 0o700)
    major = _data_dir_major(data_dir) or _major(plan.backup)
    result: dict[str, Any] = {
        **plan.result(),
        "engine": "postgres",
        "method": "physical",
        "data_dir": str(data_dir),
        "target": options.target.result(),
        "server_version": plan.backup.server_version,
        "server_version_major": major,
        "restored_bytes": raw_bytes,
        "extract_seconds": round(extracted_seconds, 3),
        "started": False,
        "stopped": False,
        "recovered_to_time": None,
        "recovered_to_lsn": None,
    }
    if not options.start:
        return result
    log_file = options.log_file or data_dir / "log" / "tonebridge-dr-restore.log"
    private_dir = _private_socket_dir(account) if needs_private_socket_dir(options) else None
    run = run_settings(options, private_dir)
    server = _Server(data_dir, major, account, repo.url, log_file, run)
    recovery_began = time.monotonic()
    try:
        server.start(options.timeout)
        result["started"] = True
        server.await_promotion(options.timeout)
    except BaseException:
        _remove_socket_dir(private_dir, data_dir)
        raise
    finally:  # every way out: a failed start leaves recovery.signal, which keeps it alive
        fetch.stop_prefetcher(data_dir / "pg_wal")
    result["recovery_seconds"] = round(time.monotonic() - recovery_began, 3)
    control = _controldata(data_dir, major)
    state = control.get("Database cluster state", "")
    if state != "in production":
        raise errors.ToolError(f"the restored server is not in production after recovery: {state}")
    result["in_recovery"] = False
    result["new_timeline"] = _newest_history(data_dir / "pg_wal")
    result["recovered_to_lsn"] = _switch_point(data_dir / "pg_wal", result["new_timeline"])
    short = recovery_shortfall(plan, options.target, result["recovered_to_lsn"])
    if short is not None:
        _mark_ended_early(server, data_dir, short)
    replayed_at = _last_transaction_time(log_file, server.log_offset)
    if options.dsn:
        checked = _verify_sql(options.dsn)
        if checked["in_recovery"]:
            raise errors.ToolError("the restored server still reports pg_is_in_recovery() = true")
        replayed_at = checked.pop("last_replayed_at") or replayed_at
        result.update(checked)
    result["recovered_to_time"] = format_time(replayed_at) if replayed_at else None
    result["removed_settings"] = neutralise_recovery_settings(data_dir)
    if options.stop_after:
        server.stop()
        _remove_socket_dir(private_dir, data_dir)
        result["stopped"] = True
    elif private_dir is not None:
        result["socket_dir"] = str(private_dir)  # the running server's; remove it after
    return result
