"""archiveTimeout without a server: the streamer's option parsing and the warning
`tonebridge-dr check` gives for a server archiving with archive_command."""

from __future__ import annotations

import pytest

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import commands
from tonebridge_dr.runner.engines.postgres.wal import stream


@pytest.mark.parametrize(
    ("text", "env", "seconds"),
    [
        (None, {}, stream.DEFAULT_ARCHIVE_TIMEOUT),
        ("5m", {}, 300.0),
        ("1h30m", {}, 5400.0),
        ("2", {}, 2.0),
        ("0.5", {}, 0.5),
        ("0", {}, 0.0),
        (None, {stream.ARCHIVE_TIMEOUT_ENV: "90s"}, 90.0),
        ("10s", {stream.ARCHIVE_TIMEOUT_ENV: "90s"}, 10.0),  # the option wins
    ],
)
def test_archive_timeout_option(text: str | None, env: dict[str, str], seconds: float) -> None:
    assert stream.archive_timeout_seconds(text, env) == seconds


@pytest.mark.parametrize("text", ["five minutes", "-1", "5x", "nan"])
def test_a_bad_archive_timeout_is_a_usage_error(text: str) -> None:
    with pytest.raises(errors.UsageError, match="archive timeout"):
        stream.archive_timeout_seconds(text, {})


def test_check_warns_when_archive_timeout_is_off() -> None:
    (warning,) = commands.archive_timeout_warnings("on", 0, 300.0)
    assert "archive_timeout is 0" in warning and "at most 5m" in warning
    (warning,) = commands.archive_timeout_warnings("always", 0, None)
    assert "archive_timeout is 0" in warning


def test_check_warns_when_archive_timeout_is_larger_than_the_policy() -> None:
    (warning,) = commands.archive_timeout_warnings("on", 3600, 300.0)
    assert "archive_timeout is 1h" in warning and "archiveTimeout 5m" in warning
    assert "archive_timeout = 300" in warning


@pytest.mark.parametrize(
    ("mode", "server", "wanted"),
    [
        ("on", 300, 300.0),  # equal is fine
        ("on", 60, 300.0),  # shorter is fine
        ("on", 3600, None),  # nothing wanted: only 0 is worth a warning
        ("off", 0, 300.0),  # no archive_command: archive_timeout does nothing
        (None, None, 300.0),  # not reported
    ],
)
def test_check_is_quiet_otherwise(
    mode: str | None, server: int | None, wanted: float | None
) -> None:
    assert commands.archive_timeout_warnings(mode, server, wanted) == []
