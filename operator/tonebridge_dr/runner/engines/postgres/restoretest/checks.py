"""The checks of a PostgreSQL restore test: SQL run read-only on the restored database.

The input and the expectations are every engine's (restoretest/checks.py, re-exported
here); what is PostgreSQL's:
- a check's `query` is one SQL statement; its value is the text PostgreSQL gives for the
  first column of the first row (the same text psql prints: `t` for true, `42`,
  `2024-01-01 00:00:00+00`); NULL is None; `nonEmpty` means at least one row;
- running (`run_checks`): each check on its own connection, in a `READ ONLY` transaction
  with `statement_timeout` (default 60 s) that is rolled back, through the extended query
  protocol (one statement: `...; DELETE ...` is refused, not run). A check that errs fails
  with the server's error; every check runs whatever the others did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import psycopg

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import connection
from tonebridge_dr.runner.engines.restoretest.checks import (
    CHECKS_ENV,
    MAX_CHECKS,
    VALUE_LIMIT,
    Check,
    CheckResult,
    Expectation,
    evaluate,
    load_checks,
    parse_checks,
)

__all__ = [
    "CHECKS_ENV",
    "DEFAULT_TIMEOUT",
    "MAX_CHECKS",
    "VALUE_LIMIT",
    "Check",
    "CheckResult",
    "Expectation",
    "evaluate",
    "load_checks",
    "parse_checks",
    "run_checks",
]

DEFAULT_TIMEOUT = 60.0


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
