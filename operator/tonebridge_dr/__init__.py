"""tonebridge-dr: backup and disaster recovery for the ToneBridge platform."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # Lazy: importlib.metadata costs ~50 ms, paid by every wal-push / wal-fetch call.
    if name == "__version__":
        from importlib import metadata

        try:
            return metadata.version("tonebridge-dr")
        except metadata.PackageNotFoundError:  # a source tree without install
            return "0.0.0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
