"""`wal-stream`: continuous archiving without touching the database pod.

Runs `pg_receivewal` against the server over the replication protocol, with a
physical replication slot (created with `--create-slot --if-not-exists` on
start, reused after restarts) so the server keeps every WAL byte until it was
received. Completed segments (and timeline history files pg_receivewal writes
when it follows a promotion) are uploaded with the same naming and duplicate
rules as wal-push (archive.py); a segment is removed from the work folder only
after its upload was acknowledged, and the newest completed segment is always
kept so a restarted pg_receivewal resumes right after it.

The archive timeout (`--archive-timeout`, the policy's `walArchive.archiveTimeout`;
default 5 minutes, 0 turns it off): while streaming, the current segment is
uploaded as `<segment>.partial` whenever pg_receivewal wrote to it since the last
partial upload and that upload is at least the archive timeout ago (checked
every SCAN_INTERVAL). So on a quiet server the newest received WAL is in the
repository within the archive timeout plus one upload, and a killed pod loses
at most that window. The upload reads a private copy of the file (`.snapshot/`
in the work folder), so what is hashed, compared and stored is one consistent
read; since pg_receivewal only appends, every copy is a prefix of the next one
and the usual rule applies: a newer partial replaces an older, shorter one of
the same segment (archive.py). A record cut in the middle by the copy ends a
recovery just before it, like the end of any partial. Once a segment is
complete and its upload acknowledged, the partial of that segment this process
uploaded is deleted (the segment holds all of it). A failed partial upload is
logged and retried at the next tick; it never stops the streamer.

On SIGTERM/SIGINT: pg_receivewal is stopped (it flushes what it received),
remaining completed segments are uploaded, and the current segment is
uploaded as `<segment>.partial` (replacing an older, shorter partial of the
same segment), so a restore to `--latest` sees WAL up to the moment of the
stop. If pg_receivewal exits on its own (server restart, network), it is
restarted after a back-off; the slot makes the restart lossless.

This is the process the operator runs as a Deployment (one replica).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import connection, process, tools
from tonebridge_dr.runner.engines.postgres.wal import archive, catalog, naming
from tonebridge_dr.runner.storage import open_storage

log = logging.getLogger(__name__)

DEFAULT_SLOT = "tonebridge_dr"
SCAN_INTERVAL = 0.5
#: The archive timeout when neither `--archive-timeout` nor the variable says (the
#: BackupPolicy API's default for `walArchive.archiveTimeout`).
DEFAULT_ARCHIVE_TIMEOUT = 300.0
ARCHIVE_TIMEOUT_ENV = "TONEBRIDGE_DR_WAL_ARCHIVE_TIMEOUT"
#: Seconds before a failed partial upload is tried again (or the timeout, if shorter).
PARTIAL_RETRY = 10.0
SNAPSHOT_DIR = ".snapshot"
_COPY_CHUNK = 1024 * 1024
MAX_BACKOFF = 30.0
#: Seconds pg_receivewal gets to flush and exit after SIGINT.
STOP_GRACE = 30.0


@dataclasses.dataclass(frozen=True)
class StreamSettings:
    dsn: str
    slot: str
    work_dir: Path
    push: archive.PushSettings
    status_interval: int = 10
    #: Seconds: upload the current partial segment when it changed and the last partial
    #: upload is at least this long ago; 0: only when the streamer stops.
    archive_timeout: float = DEFAULT_ARCHIVE_TIMEOUT


def archive_timeout_seconds(text: str | None, env: Mapping[str, str] | None = None) -> float:
    """`--archive-timeout` (or $TONEBRIDGE_DR_WAL_ARCHIVE_TIMEOUT, else 5m) in seconds: a
    duration like `5m` / `1h30m` or a number of seconds; 0 turns it off."""
    env = os.environ if env is None else env
    raw = (text if text is not None else env.get(ARCHIVE_TIMEOUT_ENV, "")).strip().lower()
    if not raw:
        return DEFAULT_ARCHIVE_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        from tonebridge_dr.api import formats

        try:
            seconds = formats.parse_duration(raw).total_seconds()
        except ValueError as exc:
            raise errors.UsageError(f"invalid archive timeout: {exc}") from None
    if seconds < 0 or seconds != seconds:
        raise errors.UsageError(f"invalid archive timeout {raw!r}: it cannot be negative")
    return seconds


def check_slot_name(slot: str) -> str:
    if not slot or len(slot) > 63 or not all(c.islower() or c.isdigit() or c == "_" for c in slot):
        raise errors.UsageError(
            f"invalid replication slot name {slot!r}: use lower-case letters, digits and _ "
            "(at most 63)"
        )
    return slot


@dataclasses.dataclass
class StreamStats:
    uploaded: list[str] = dataclasses.field(default_factory=list)
    partial: str | None = None
    restarts: int = 0
    #: Partial uploads made because of the archive timeout (not counting the one at stop).
    partial_uploads: int = 0


class WalStreamer:
    """Supervises pg_receivewal and uploads what it writes. `run()` until `stop` is set."""

    def __init__(self, settings: StreamSettings, stop: threading.Event) -> None:
        self.settings = settings
        self.stop = stop
        self.info = connection.ConnInfo.parse(settings.dsn)
        self.stats = StreamStats()
        self.pusher = archive.Pusher(
            catalog.WalArchive(open_storage(settings.push.repo_url)), settings.push
        )
        self._uploaded: set[str] = set()
        #: (name, mtime_ns, size) of the work-folder partial at its last upload.
        self._partial_stamp: tuple[str, int, int] | None = None
        self._partial_at = time.monotonic()
        #: Segment name -> key of the partial of it this process stored (deleted once the
        #: complete segment is stored).
        self._partial_keys: dict[str, str] = {}

    # -- pg_receivewal -----------------------------------------------------------------------
    def _base_argv(self) -> list[str]:
        return [
            tools.tool("pg_receivewal"),
            "--dbname",
            self.info.without_secrets(),
            "--no-password",
            "--slot",
            self.settings.slot,
        ]

    def create_slot(self) -> None:
        argv = [*self._base_argv(), "--create-slot", "--if-not-exists"]
        process.run(argv, env=self.info.child_env(), scrub=self.info.scrub, name="pg_receivewal")
        log.info("replication slot %s is ready on %s", self.settings.slot, self.info.masked())

    def _receiver_argv(self) -> list[str]:
        return [
            *self._base_argv(),
            "--directory",
            str(self.settings.work_dir),
            "--no-loop",
            "--verbose",
            f"--status-interval={self.settings.status_interval}",
        ]

    # -- uploads -------------------------------------------------------------------------------
    def _completed(self) -> list[Path]:
        """Completed segments and history files in the work folder, in WAL order."""
        found: list[naming.WalName] = []
        for entry in os.listdir(self.settings.work_dir):
            if naming.is_valid(entry):
                wal = naming.parse(entry)
                if wal.kind in (naming.SEGMENT, naming.HISTORY):
                    found.append(wal)
        found.sort(key=naming.WalName.archive_order)
        return [self.settings.work_dir / wal.name for wal in found]

    def upload_completed(self) -> int:
        """Upload new completed files; drop uploaded segments but the newest. Returns count."""
        count = 0
        files = self._completed()
        segments = [path for path in files if naming.parse(path.name).is_segment]
        newest = segments[-1].name if segments else None
        for path in files:
            if path.name not in self._uploaded:
                self.pusher.push_file(path)
                self._uploaded.add(path.name)
                self.stats.uploaded.append(path.name)
                count += 1
                self._drop_own_partial(path.name)
            if path.name != newest and naming.parse(path.name).is_segment:
                path.unlink(missing_ok=True)
                self._uploaded.discard(path.name)
        return count

    def _newest_partial(self) -> Path | None:
        partials = sorted(
            entry for entry in os.listdir(self.settings.work_dir) if entry.endswith(".partial")
        )
        valid = [name for name in partials if naming.is_valid(name)]
        return self.settings.work_dir / valid[-1] if valid else None

    def upload_partial(self) -> str | None:
        """Upload the newest `.partial` file of the work folder, if any (at the stop:
        pg_receivewal has exited, the file no longer changes)."""
        path = self._newest_partial()
        if path is None:
            return None
        outcome = self.pusher.push_file(path)
        self.stats.partial = outcome.name
        self._note_partial(outcome)
        log.info("uploaded the partial segment %s as %s", path.name, outcome.key)
        return outcome.name

    def upload_partial_if_due(self, now: float) -> str | None:
        """The archive timeout: upload a copy of the current partial segment when
        pg_receivewal wrote to it since the last partial upload and that upload is at
        least `archive_timeout` seconds before `now` (monotonic). Returns its name, or
        None when nothing was due or changed."""
        timeout = self.settings.archive_timeout
        if timeout <= 0 or now - self._partial_at < timeout:
            return None
        path = self._newest_partial()
        if path is None:
            return None
        try:
            info = path.stat()
        except FileNotFoundError:  # completed and renamed meanwhile: uploaded as a segment
            return None
        stamp = (path.name, info.st_mtime_ns, info.st_size)
        if stamp == self._partial_stamp:
            return None
        try:
            snapshot = self._snapshot(path)
        except FileNotFoundError:  # completed and renamed meanwhile
            return None
        try:
            outcome = self.pusher.push_file(snapshot)
        finally:
            snapshot.unlink(missing_ok=True)
        # The stamp was taken before the copy: a write during it makes the next tick
        # upload again.
        self._partial_stamp = stamp
        self._partial_at = now
        self.stats.partial = outcome.name
        self.stats.partial_uploads += 1
        self._note_partial(outcome)
        if outcome.uploaded:
            log.info("archive timeout: stored the partial segment %s as %s", path.name,
                     outcome.key)
        return outcome.name

    def _snapshot(self, path: Path) -> Path:
        """A private copy of the partial `path` (one read while pg_receivewal may write)."""
        folder = self.settings.work_dir / SNAPSHOT_DIR
        folder.mkdir(exist_ok=True)
        copy = folder / path.name
        with path.open("rb") as src, copy.open("wb") as dst:
            while chunk := src.read(_COPY_CHUNK):
                dst.write(chunk)
        return copy

    def _note_partial(self, outcome: archive.PushOutcome) -> None:
        if outcome.uploaded:
            self._partial_keys[outcome.name.removesuffix(".partial")] = outcome.key

    def _drop_own_partial(self, segment: str) -> None:
        """The complete `segment` is stored: delete the partial of it this process stored."""
        key = self._partial_keys.pop(segment, None)
        if key is None:
            return
        try:
            self.pusher.storage.delete(key)
        except errors.DRError as exc:  # only clutter: WAL prune removes it later
            log.warning("could not delete the superseded partial %s: %s", key, exc)
            return
        log.info("deleted %s: the complete segment %s is stored", key, segment)

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> StreamStats:
        self.settings.work_dir.mkdir(parents=True, exist_ok=True)
        self.create_slot()
        self.upload_completed()  # leftovers of an earlier run
        backoff = 1.0
        while not self.stop.is_set():
            started = time.monotonic()
            with process.ToolProcess(
                self._receiver_argv(),
                env=self.info.child_env(),
                scrub=self.info.scrub,
                name="pg_receivewal",
            ) as receiver:
                while not self.stop.is_set() and receiver.proc.poll() is None:
                    self._upload_safely()
                    self._upload_partial_safely()
                    self.stop.wait(SCAN_INTERVAL)
                if receiver.proc.poll() is None:
                    self._interrupt(receiver)
                rc = receiver.wait()
                reason = receiver.error_line() if rc != 0 else "exited"
            self._upload_safely()
            if self.stop.is_set():
                break
            self.stats.restarts += 1
            if time.monotonic() - started > 60:
                backoff = 1.0
            log.warning(
                "pg_receivewal stopped (exit status %s: %s); restarting in %.0f s",
                rc,
                reason,
                backoff,
            )
            self.stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
        self.upload_completed()
        self.upload_partial()
        return self.stats

    @staticmethod
    def _interrupt(receiver: process.ToolProcess) -> None:
        """SIGINT (what every pg_receivewal version handles): it flushes and exits cleanly."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(receiver.proc.pid, signal.SIGINT)
        try:
            receiver.proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            receiver.terminate()

    def _upload_safely(self) -> None:
        try:
            self.upload_completed()
        except errors.ConflictError:
            raise
        except errors.DRError as exc:
            log.warning("upload failed, will retry: %s", exc)

    def _upload_partial_safely(self) -> None:
        """A partial upload that fails (even a conflict) is retried at the next tick: the
        segment is uploaded whole once complete, so the streamer goes on."""
        now = time.monotonic()
        try:
            self.upload_partial_if_due(now)
        except (errors.DRError, OSError) as exc:
            timeout = self.settings.archive_timeout
            retry = min(PARTIAL_RETRY, timeout)
            log.warning("upload of the partial segment failed, retrying in %.0f s: %s", retry, exc)
            self._partial_at = now - timeout + retry
