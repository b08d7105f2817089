"""The checks of a restore test, engine-independent: their input and their expectations.

Input is the RestoreTest spec's list as JSON, camelCase as in the custom resource:
`[{"name": "users-present", "query": "...", "expect": {"min": 1}}]` (from
`--checks FILE`, `--checks-json TEXT` or $TONEBRIDGE_DR_CHECKS), validated by the API's
own model (`api.restoretest.Check`), so the runner accepts exactly what the API server
accepts. What a `query` is belongs to the engine (SQL for PostgreSQL, a few read-only
commands for Redis); each engine runs it and hands `evaluate` one value.

The expectations (`evaluate`, pure), on the one value a query gives (text, or None):
- `equals`: the value is exactly that text;
- `min` / `max`: the value, read as a decimal number, is at least / at most that;
- `nonEmpty: true`: the query gave something (PostgreSQL: a row; Redis: not nil);
- every expectation given must hold; a failure's message names the value it got.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import os
from pathlib import Path
from typing import Any

import pydantic

from tonebridge_dr.api.restoretest import Check, Expectation
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.contract import runner_contract

__all__ = [
    "CHECKS_ENV",
    "MAX_CHECKS",
    "SQL",
    "VALUE_LIMIT",
    "Check",
    "CheckResult",
    "Expectation",
    "Wording",
    "evaluate",
    "load_checks",
    "parse_checks",
]

CHECKS_ENV = runner_contract.ENV_CHECKS
#: The RestoreTest spec allows this many checks.
MAX_CHECKS = 32
#: Characters of a value kept in a result (the spec's `equals` is at most 1024 long).
VALUE_LIMIT = 1024
#: Characters of a value quoted in a message.
_QUOTED = 200

_CHECK_LIST: pydantic.TypeAdapter[list[Check]] = pydantic.TypeAdapter(list[Check])


@dataclasses.dataclass(frozen=True)
class Wording:
    """How an engine's messages name its results: no result at all, and a null value."""

    nothing: str = "no row"
    null: str = "NULL"
    non_empty: str = "expected at least one row, got none"
    example: str = (
        '[{"name": "users", "query": "SELECT count(*) FROM users", "expect": {"min": 1}}]'
    )


SQL = Wording()


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One check's outcome: `value` as the query gave it, `message` why it failed."""

    name: str
    passed: bool
    value: str | None
    message: str | None = None

    def result(self) -> dict[str, Any]:
        """The stable `checks[]` entry of a restore test's result."""
        value = self.value
        if value is not None and len(value) > VALUE_LIMIT:
            value = value[:VALUE_LIMIT] + "..."
        return {"name": self.name, "passed": self.passed, "value": value, "message": self.message}


# --- input ----------------------------------------------------------------------------------
def parse_checks(text: str, source: str = "checks", wording: Wording = SQL) -> list[Check]:
    """The checks in `text` (a JSON list, as in the RestoreTest spec); UsageError naming
    `source` and the first problem otherwise."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise errors.UsageError(f"{source}: not JSON ({exc})") from None
    if not isinstance(data, list):
        raise errors.UsageError(
            f"{source}: expected a JSON list of checks, e.g. {wording.example}"
        )
    try:
        checks = _CHECK_LIST.validate_python(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise errors.UsageError(f"{source}: {where}: {first['msg']}") from None
    names = [check.name for check in checks]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise errors.UsageError(f"{source}: check name {duplicate!r} is used twice")
    if len(checks) > MAX_CHECKS:
        raise errors.UsageError(f"{source}: {len(checks)} checks, at most {MAX_CHECKS} allowed")
    return checks


def load_checks(
    file: Path | None = None, text: str | None = None, wording: Wording = SQL
) -> list[Check]:
    """The checks of `--checks FILE` or `--checks-json TEXT`, else of $TONEBRIDGE_DR_CHECKS;
    none when neither is given."""
    if file is not None and text is not None:
        raise errors.UsageError("give --checks FILE or --checks-json TEXT, not both")
    if file is not None:
        try:
            return parse_checks(file.read_text(), f"--checks {file}", wording)
        except (OSError, UnicodeDecodeError) as exc:
            raise errors.UsageError(f"--checks {file}: cannot read it ({exc})") from None
    if text is not None:
        return parse_checks(text, "--checks-json", wording)
    from_env = os.environ.get(CHECKS_ENV, "")
    return parse_checks(from_env, f"${CHECKS_ENV}", wording) if from_env.strip() else []


# --- the expectations (pure) ----------------------------------------------------------------
def _quote(value: str) -> str:
    return repr(value if len(value) <= _QUOTED else value[:_QUOTED] + "...")


def _got(rows: int, value: str | None, wording: Wording) -> str:
    if rows == 0:
        return wording.nothing
    return wording.null if value is None else _quote(value)


def _number(value: str | None) -> decimal.Decimal | None:
    if value is None:
        return None
    try:
        number = decimal.Decimal(value.strip())
    except decimal.InvalidOperation:
        return None
    return number if number.is_finite() else None


def evaluate(
    expect: Expectation, rows: int, value: str | None, wording: Wording = SQL
) -> tuple[bool, str | None]:
    """Whether a result of `rows` rows (0: nothing) whose first value is `value` (None: null,
    or nothing) meets `expect`; (True, None), or (False, why) naming what was got."""
    failures: list[str] = []
    if expect.non_empty and rows == 0:
        failures.append(wording.non_empty)
    if expect.equals is not None and (rows == 0 or value != expect.equals):
        failures.append(f"expected {_quote(expect.equals)}, got {_got(rows, value, wording)}")
    for bound, word, sign in ((expect.min, "at least", 1), (expect.max, "at most", -1)):
        if bound is None:
            continue
        number = _number(value) if rows else None
        if number is None:
            shown = _got(rows, value, wording)
            failures.append(f"expected a number {word} {bound}, got {shown}")
        elif (number - bound) * sign < 0:
            failures.append(f"expected {word} {bound}, got {value}")
    if failures:
        return False, "; ".join(failures)
    return True, None
