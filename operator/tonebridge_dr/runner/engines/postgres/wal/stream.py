"""`wal-stream`: continuous archiving without touching the database pod.

Runs `pg_receivewal` against the server over the replication protocol, with a
physical replication slot (created with `--create-slot --if-not-exists` on
start, reused after restarts) so the server keeps every WAL byte until it was
received. Completed segments (and timeline history files pg_receivewal writes
when it follows a promotion) are uploaded with the same naming and duplicate
rules as wal-push (archive.py); a segment is removed from the work folder only
after its upload was acknowledged, and the newest completed segment is always
kept so a restarted pg_receivewal resumes right after it.

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
from pathlib import Path

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import connection, process, tools
from tonebridge_dr.runner.engines.postgres.wal import archive, catalog, naming
from tonebridge_dr.runner.storage import open_storage

log = logging.getLogger(__name__)

DEFAULT_SLOT = "tonebridge_dr"
SCAN_INTERVAL = 0.5
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
            if path.name != newest and naming.parse(path.name).is_segment:
                path.unlink(missing_ok=True)
                self._uploaded.discard(path.name)
        return count

    def upload_partial(self) -> str | None:
        """Upload the newest `.partial` file of the work folder, if any."""
        partials = sorted(
            entry for entry in os.listdir(self.settings.work_dir) if entry.endswith(".partial")
        )
        valid = [name for name in partials if naming.is_valid(name)]
        if not valid:
            return None
        path = self.settings.work_dir / valid[-1]
        outcome = self.pusher.push_file(path)
        self.stats.partial = outcome.name
        log.info("uploaded the partial segment %s as %s", path.name, outcome.key)
        return outcome.name

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
