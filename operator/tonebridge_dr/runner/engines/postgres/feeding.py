"""Feeding verified repository streams into tools, and finishing the verification.

`Repository.read_object` verifies while it streams and withholds the final bytes
of a bad object, so a consumer never sees the end of a corrupt object. Tools that
stop reading early (`pg_restore -l`, or `pg_restore -L` that found its last entry)
leave the rest unread; `drain` reads it so the object's checksum is still checked
before anything is committed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Iterator

from tonebridge_dr.runner.engines.postgres import process


def drain(chunks: Iterator[bytes]) -> None:
    """Consume the rest of a verified stream (raises IntegrityError when it is bad)."""
    for _ in chunks:
        pass


class BackgroundFeeder:
    """Writes a stream into a tool's stdin from a thread, while the caller reads stdout.

    `drain_rest`: when the tool stops reading, keep consuming the stream so that it
    is verified to the end (False for tools that only need the head, e.g. `-l`).
    After `join()`, `error` holds what the stream raised, if anything.
    """

    def __init__(
        self, tool: process.ToolProcess, chunks: Iterable[bytes], *, drain_rest: bool
    ) -> None:
        self.tool = tool
        self.chunks = iter(chunks)
        self.drain_rest = drain_rest
        self.error: BaseException | None = None
        self.complete = False  # the tool read every byte
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feed-{tool.name}", daemon=True)

    def start(self) -> BackgroundFeeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.complete = self.tool.feed(_StopAware(self.chunks, self._stop))
            if not self.complete and self.drain_rest and not self._stop.is_set():
                drain(self.chunks)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the caller by raise_error()
            self.error = exc
            # The tool must not wait for input that will never come (nor see a clean end
            # of it): stop it, so the caller's read of its output ends.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.tool.proc.pid, signal.SIGKILL)
        finally:
            close = getattr(self.chunks, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def stop(self) -> None:
        """Ask the thread to stop at the next chunk (the caller terminates the tool)."""
        self._stop.set()

    def join(self) -> None:
        self._thread.join()

    def raise_error(self, cause: BaseException | None = None) -> None:
        """Raise what the stream raised (if anything), as the cause of `cause`'s trouble."""
        if self.error is not None:
            raise self.error from cause


class _Stopped(Exception):
    pass


class _StopAware:
    """Iterates `chunks` until `stop` is set (then ends the feed as if the input ended)."""

    def __init__(self, chunks: Iterator[bytes], stop: threading.Event) -> None:
        self._chunks = chunks
        self._stop = stop

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            if self._stop.is_set():
                raise _Stopped()
            yield chunk
