"""Command-line options every engine's `restore-test` shares (light: imported when the
engine's commands module is, so nothing heavy here)."""

from __future__ import annotations

from tonebridge_dr.runner import errors

DEFAULT_TEST_NAME = "restore-test"


def parse_seconds(text: str, option: str) -> float:
    """`15m`, `1h30m` (the CRDs' durations), `500ms`, or seconds (`90`, `2.5`) -> seconds > 0;
    UsageError otherwise."""
    from tonebridge_dr.api import formats

    value = text.strip().lower()
    try:
        if value.endswith("ms") and value[:-2].isdigit():
            seconds = int(value[:-2]) / 1000
        elif value.replace(".", "", 1).isdigit():
            seconds = float(value)
        else:
            seconds = formats.parse_duration(value).total_seconds()
    except ValueError as exc:
        raise errors.UsageError(f"{option}: {exc}") from None
    if seconds <= 0:
        raise errors.UsageError(f"{option} {text!r}: must be longer than zero")
    return seconds
