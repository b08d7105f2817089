"""The clean-up protocol of scratch targets: `with scratch:` removes what the test created,
whatever happened (success, failed checks, a corrupt backup, SIGTERM: the front door turns
SIGTERM into an exception, so the exit runs; SIGTERM and SIGINT are held back while it runs
and delivered afterwards). `ScratchFolder` is the `--scratch-instance DIR` rule every engine
follows: DIR must be empty or missing, and afterwards its contents (DIR too when the test
created it) are removed.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from tonebridge_dr.runner import errors

log = logging.getLogger(__name__)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGTERM and SIGINT back while the block runs (clean-up must finish); they are
    delivered, and act, right after it. Outside the main thread: nothing to hold."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Scratch:
    """A scratch target: `inspect` (before anything is read from the repository) refuses one
    that is in use; `with scratch:` removes what the test created (`cleanup`).

    `cleaned`: nothing the test created is left (true before the `with`, false inside it,
    true again once the clean-up succeeded).
    """

    kind = "scratch"
    cleaned = True

    def describe(self) -> str:
        """The target, without secrets (for logs and the report)."""
        raise NotImplementedError

    def inspect(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Scratch:
        self.cleaned = False
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with signals_deferred():
            try:
                self.cleanup()
                self.cleaned = True
            except Exception as failure:
                log.error("could not remove the scratch %s: %s", self.kind, failure)
                if exc is None:
                    raise errors.ToolError(
                        f"the restore test could not remove its scratch {self.kind}: {failure}"
                    ) from failure
                # the error in flight explains the run; this one is logged


class ScratchFolder:
    """`--scratch-instance DIR`: `inspect` refuses a DIR with anything in it (TargetNotEmpty),
    `create` makes a missing one, `empty` removes what is in it (DIR too when `create` made it)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder.absolute()
        self._created = False

    def inspect(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise errors.TargetNotEmpty(f"scratch instance folder {self.path} is not a folder")
        if self.path.is_dir() and any(self.path.iterdir()):
            raise errors.TargetNotEmpty(
                f"scratch instance folder {self.path} is not empty; a restore test uses an "
                "empty folder and removes what it put there afterwards"
            )

    def create(self) -> None:
        if not self.path.exists():
            self.path.mkdir(parents=True)
            self._created = True

    def empty(self) -> None:
        if self._created:
            shutil.rmtree(self.path)
            self._created = False
        elif self.path.is_dir():
            for entry in self.path.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
