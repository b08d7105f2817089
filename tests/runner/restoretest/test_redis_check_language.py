"""The Redis check language of restore tests (pure: parsing and the expectations' wording)."""

from __future__ import annotations

import pytest

from tonebridge_dr.api.restoretest import Check
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.redis.restoretest import WORDING, Query, parse_checks, parse_query
from tonebridge_dr.runner.engines.restoretest import checks


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("DBSIZE", Query(0, "DBSIZE")),
        ("dbsize", Query(0, "DBSIZE")),
        ("db 3 DBSIZE", Query(3, "DBSIZE")),
        ("DB 15 exists user:1", Query(15, "EXISTS", "user:1")),
        ("TYPE k", Query(0, "TYPE", "k")),
        ('GET "user:1 name"', Query(0, "GET", "user:1 name")),
        ("STRLEN 'it''s'", Query(0, "STRLEN", "its")),
        ("  SCARD  s ", Query(0, "SCARD", "s")),
        ("LLEN l", Query(0, "LLEN", "l")),
        ("HLEN h", Query(0, "HLEN", "h")),
        ("ZCARD z", Query(0, "ZCARD", "z")),
        ("COUNT user:*", Query(0, "COUNT", "user:*")),
        ("db 0 COUNT *", Query(0, "COUNT", "*")),
    ],
)
def test_the_language_parses(text: str, query: Query) -> None:
    assert parse_query(text) == query


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("FLUSHALL", "'FLUSHALL' is not allowed"),
        ("SET k v", "'SET' is not allowed"),
        ("SELECT 1", "'SELECT' is not allowed"),
        ("KEYS *", "'KEYS' is not allowed"),
        ("EVAL x 0", "'EVAL' is not allowed"),
        ("GET", "GET takes one argument"),
        ("GET a b", "GET takes one argument (quote a key with spaces), got 2"),
        ("DBSIZE now", "DBSIZE takes no argument, got 1"),
        ("db 2", "no command"),
        ("db -1 DBSIZE", "db '-1'"),
        ("db 5000 DBSIZE", "db '5000'"),
        ('GET "open', "No closing quotation"),
        ("", "no command"),
    ],
)
def test_anything_else_is_a_usage_error(text: str, problem: str) -> None:
    with pytest.raises(errors.UsageError) as raised:
        parse_query(text)
    assert problem in str(raised.value) and "DBSIZE, EXISTS key" in str(raised.value)


def test_parse_checks_names_the_check() -> None:
    good = Check.model_validate({"name": "a", "query": "DBSIZE", "expect": {"min": 1}})
    bad = Check.model_validate({"name": "b", "query": "DEL x", "expect": {"min": 1}})
    assert parse_checks([good]) == [(good, Query(0, "DBSIZE"))]
    with pytest.raises(errors.UsageError, match=r"^check b: 'DEL' is not allowed"):
        parse_checks([good, bad])


@pytest.mark.parametrize(
    ("expect", "value", "verdict"),
    [
        ({"nonEmpty": True}, None, (False, "expected a value, got nil")),
        ({"nonEmpty": True}, "0", (True, None)),
        ({"equals": "x"}, None, (False, "expected 'x', got nil")),
        ({"min": 1}, None, (False, "expected a number at least 1, got nil")),
        ({"min": 1}, "string", (False, "expected a number at least 1, got 'string'")),
        ({"max": 10}, "11", (False, "expected at most 10, got 11")),
    ],
)
def test_expectations_on_one_reply(
    expect: dict[str, object], value: str | None, verdict: tuple[bool, str | None]
) -> None:
    parsed = checks.Expectation.model_validate(expect)
    assert checks.evaluate(parsed, 0 if value is None else 1, value, WORDING) == verdict


def test_the_usage_example_is_redis() -> None:
    with pytest.raises(errors.UsageError, match=r"COUNT user:"):
        checks.parse_checks("{}", "--checks-json", WORDING)
