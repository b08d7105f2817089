"""TONEBRIDGE_DR_WAL_* numbers: parsed, checked, and a typo is a usage error naming the
variable (never a silent default)."""

from __future__ import annotations

import pytest

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres.wal import archive, fetch

REPO = "file:///nowhere"


def test_unset_or_blank_means_the_default() -> None:
    push = archive.PushSettings.from_env(REPO, env={archive.PARALLEL_ENV: " "})
    assert (push.parallel, push.push_ahead) == (archive.DEFAULT_PARALLEL,
                                                archive.DEFAULT_PUSH_AHEAD)
    got = fetch.FetchSettings.from_env(REPO, env={})
    assert (got.window, got.parallel) == (fetch.DEFAULT_WINDOW, fetch.DEFAULT_PARALLEL)
    assert archive.linger_from_env({}) == archive.DEFAULT_LINGER


def test_values_are_parsed() -> None:
    push = archive.PushSettings.from_env(
        REPO, env={archive.PARALLEL_ENV: "3", archive.PUSH_AHEAD_ENV: " 12 "}
    )
    assert (push.parallel, push.push_ahead) == (3, 12)
    got = fetch.FetchSettings.from_env(
        REPO, env={fetch.PREFETCH_ENV: "0", fetch.PARALLEL_ENV: "0"}
    )
    assert (got.window, got.parallel) == (0, 1)  # 0 disables prefetch; one thread at least
    assert archive.linger_from_env({archive.LINGER_ENV: "2.5"}) == 2.5


@pytest.mark.parametrize(
    ("build", "variable", "value", "message"),
    [
        (lambda env: archive.PushSettings.from_env(REPO, env=env), archive.PARALLEL_ENV, "four",
         "must be an integer, got 'four'"),
        (lambda env: archive.PushSettings.from_env(REPO, env=env), archive.PUSH_AHEAD_ENV, "0",
         "must be at least 1, got '0'"),
        (lambda env: fetch.FetchSettings.from_env(REPO, env=env), fetch.PREFETCH_ENV, "-1",
         "must be at least 0, got '-1'"),
        (lambda env: fetch.FetchSettings.from_env(REPO, env=env), fetch.PARALLEL_ENV, "2.5",
         "must be an integer, got '2.5'"),
        (archive.linger_from_env, archive.LINGER_ENV, "soon",
         "must be a number of seconds, got 'soon'"),
        (archive.linger_from_env, archive.LINGER_ENV, "-3", "must be at least 0.0, got '-3'"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_the_variable(
    build: object, variable: str, value: str, message: str
) -> None:
    with pytest.raises(errors.UsageError) as caught:
        build({variable: value})  # type: ignore[operator]
    assert str(caught.value) == f"{variable} {message}"
