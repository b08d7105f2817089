"""The checks of a restore test: the RestoreTest spec's `checks`, run read-only on the restore.

Input is the spec's list as JSON, camelCase as in the custom resource:
`[{"name": "users-present", "query": "SELECT count(*) FROM users", "expect": {"min": 1}}]`
(from `--checks FILE`, `--checks-json TEXT` or $TONEBRIDGE_DR_CHECKS), validated by
the API's own model (`api.restoretest.Check`), so the runner accepts exactly what
the API server accepts.

The language (`evaluate`, pure):
- the value is the text PostgreSQL gives for the first column of the first row (the
  same text psql prints: `t` for true, `42`, `2024-01-01 00:00:00+00`); NULL is None;
- `equals`: the value is exactly that text;
- `min` / `max`: the value, read as a decimal number, is at least / at most that;
- `nonEmpty: true`: the query returned at least one row;
- every expectation given must hold; a failure's message names the value it got.

Running (`run_checks`): each check on its own connection, in a `READ ONLY` transaction
with `statement_timeout` (default 60 s) that is rolled back, through the extended
query protocol (one statement: `...; DELETE ...` is refused, not run). A check that
errs fails with the server's error; every check runs whatever the others did.
"""

from __future__ import annotations

import contextlib
import dataclasses
import decimal
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pydantic

from tonebridge_dr.api.restoretest import Check, Expectation
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.engines.postgres import connection

__all__ = [
    "CHECKS_ENV",
    "DEFAULT_TIMEOUT",
    "MAX_CHECKS",
    "Check",
    "CheckResult",
    "Expectation",
    "evaluate",
    "load_checks",
    "parse_checks",
    "run_checks",
]

CHECKS_ENV = runner_contract.ENV_CHECKS
DEFAULT_TIMEOUT = 60.0
#: The RestoreTest spec allows this many checks.
MAX_CHECKS = 32
#: Characters of a value kept in a result (the spec's `equals` is at most 1024 long).
VALUE_LIMIT = 1024
#: Characters of a value quoted in a message.
_QUOTED = 200

_CHECK_LIST: pydantic.TypeAdapter[list[Check]] = pydantic.TypeAdapter(list[Check])


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
def parse_checks(text: str, source: str = "checks") -> list[Check]:
    """The checks in `text` (a JSON list, as in the RestoreTest spec); UsageError naming
    `source` and the first problem otherwise."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise errors.UsageError(f"{source}: not JSON ({exc})") from None
    if not isinstance(data, list):
        raise errors.UsageError(
            f"{source}: expected a JSON list of checks, e.g. "
            '[{"name": "users", "query": "SELECT count(*) FROM users", "expect": {"min": 1}}]'
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


def load_checks(file: Path | None = None, text: str | None = None) -> list[Check]:
    """The checks of `--checks FILE` or `--checks-json TEXT`, else of $TONEBRIDGE_DR_CHECKS;
    none when neither is given."""
    if file is not None and text is not None:
        raise errors.UsageError("give --checks FILE or --checks-json TEXT, not both")
    if file is not None:
        try:
            return parse_checks(file.read_text(), f"--checks {file}")
        except (OSError, UnicodeDecodeError) as exc:
            raise errors.UsageError(f"--checks {file}: cannot read it ({exc})") from None
    if text is not None:
        return parse_checks(text, "--checks-json")
    from_env = os.environ.get(CHECKS_ENV, "")
    return parse_checks(from_env, f"${CHECKS_ENV}") if from_env.strip() else []


# --- the language (pure) --------------------------------------------------------------------
def _quote(value: str) -> str:
    return repr(value if len(value) <= _QUOTED else value[:_QUOTED] + "...")


def _got(rows: int, value: str | None) -> str:
    if rows == 0:
        return "no row"
    return "NULL" if value is None else _quote(value)


def _number(value: str | None) -> decimal.Decimal | None:
    if value is None:
        return None
    try:
        number = decimal.Decimal(value.strip())
    except decimal.InvalidOperation:
        return None
    return number if number.is_finite() else None


def evaluate(expect: Expectation, rows: int, value: str | None) -> tuple[bool, str | None]:
    """Whether a query result of `rows` rows whose first value is `value` (None: NULL, or no
    row) meets `expect`; (True, None), or (False, why) naming what was got."""
    failures: list[str] = []
    if expect.non_empty and rows == 0:
        failures.append("expected at least one row, got none")
    if expect.equals is not None and (rows == 0 or value != expect.equals):
        failures.append(f"expected {_quote(expect.equals)}, got {_got(rows, value)}")
    for bound, word, sign in ((expect.min, "at least", 1), (expect.max, "at most", -1)):
        if bound is None:
            continue
        number = _number(value) if rows else None
        if number is None:
            shown = _got(rows, value)
            failures.append(f"expected a number {word} {bound}, got {shown}")
        elif (number - bound) * sign < 0:
            failures.append(f"expected {word} {bound}, got {value}")
    if failures:
        return False, "; ".join(failures)
    return True, None


# --- running -----------------------------------------------------------------------------------
def _error_text(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{text} (SQLSTATE {sqlstate})" if sqlstate else text


def run_check(info: connection.ConnInfo, check: Check, timeout: float) -> CheckResult:
    """Run one check read-only on its own connection (see the module docstring)."""
    try:
        conn = connection.connect(info, autocommit=True, purpose="restored database")
    except errors.DRError as exc:
        return CheckResult(check.name, False, None, f"cannot connect: {exc}")
    with conn:
        try:
            conn.execute("BEGIN READ ONLY")
            conn.execute(
                "SELECT pg_catalog.set_config('statement_timeout', %s, true)",
                (f"{max(1, round(timeout * 1000))}ms",),
            )
            cursor = conn.cursor()
            # prepare=True: the extended protocol, which runs exactly one statement.
            cursor.execute(check.query.encode(), prepare=True)
            result = cursor.pgresult
            rows = result.ntuples if result is not None else 0
            raw = result.get_value(0, 0) if rows and result is not None and result.nfields else None
        except psycopg.Error as exc:
            why = info.scrub(_error_text(exc))
            return CheckResult(check.name, False, None, f"query failed: {why}")
        finally:
            if not conn.closed and not conn.broken:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
    value = None if raw is None else bytes(raw).decode("utf-8", "replace")
    passed, message = evaluate(check.expect, rows, value)
    return CheckResult(check.name, passed, value, message)


def run_checks(
    info: connection.ConnInfo, checks: Sequence[Check], timeout: float = DEFAULT_TIMEOUT
) -> list[CheckResult]:
    """Every check, in order, whatever the others did."""
    return [run_check(info, check, timeout) for check in checks]
