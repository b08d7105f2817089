"""promotePostgres: make a streaming standby the primary with `pg_promote()`.

One tick: connect with the DSN from the step's Secret (connect timeout a few seconds),
ask `pg_is_in_recovery()`.
- false: the server is a primary - done ("already primary" when this run never
  promoted it: an earlier process did, or someone by hand).
- true and the memo says nothing was issued: `SELECT pg_promote(true, N)` with N at most
  PER_TICK seconds, memo `promoteIssued` (so no later tick or process issues it again),
  then verify `pg_is_in_recovery()`.
- true and promotion issued: wait (RUNNING) until recovery ends, at most `waitSeconds`
  after the step started (or the step's timeout), then FAILED.

The only way to promote twice would be a second pg_promote() after the first one took
effect; but a promoted server answers `pg_is_in_recovery() = false` and is never sent
pg_promote() again, and the memo stops a repeat while the first one is still in progress.

Drill: with `spec.drill.promotePostgres` the throwaway standby named there is promoted
for real (the rehearsal of the promotion itself); without it the production standby is
only checked (reachable, in recovery) and the diff says what a real run would do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import conninfo

from tonebridge_dr.api.common import SecretKeyRef
from tonebridge_dr.api.failoverplan import Step
from tonebridge_dr.controller.failoverplan.steps import StepContext, StepProgress, StepState

CONNECT_TIMEOUT = 5
PER_TICK = 5


def _scrub(text: str, dsn: str) -> str:
    """A psycopg message, with the DSN's password masked should it ever appear."""
    try:
        password = conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    if password:
        text = text.replace(str(password), "***")
    return " ".join(text.split())[:300]


def _in_recovery(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def _timeline(conn: psycopg.Connection[Any]) -> int | None:
    row = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
    return int(row[0]) if row and row[0] is not None else None


class PromotePostgresExecutor:
    def advance(self, step: Step, ctx: StepContext, memo: Mapping[str, Any]) -> StepProgress:
        spec = step.promote_postgres
        assert spec is not None
        drill_copy = ctx.drill_targets.promote_postgres if ctx.drill_targets else None
        ref: SecretKeyRef = drill_copy.dsn_secret_ref if ctx.drill and drill_copy else \
            spec.dsn_secret_ref
        which = "the drill standby" if ctx.drill and drill_copy else "the standby"
        dsn = ctx.secret_value(ref.name, ref.key)
        if not dsn:
            return StepProgress(StepState.FAILED,
                                f'Secret "{ref.name}" has no key "{ref.key}" (the DSN of '
                                f"{which})", memo)
        try:
            with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
                return self._advance(conn, spec.wait_seconds, ctx, memo, which,
                                     verify_only=ctx.drill and drill_copy is None)
        except psycopg.Error as exc:
            message = f"cannot reach {which}: {_scrub(str(exc), dsn)}"
            if memo.get("promoteIssued") and not self._expired(ctx, spec.wait_seconds):
                return StepProgress(StepState.RUNNING, message, memo)  # restarting? retry
            return StepProgress(StepState.FAILED, message, memo)

    @staticmethod
    def _expired(ctx: StepContext, wait_seconds: int) -> bool:
        limit = ctx.started_at + dt.timedelta(seconds=wait_seconds)
        if ctx.deadline is not None:
            limit = min(limit, ctx.deadline)
        return ctx.now >= limit

    def _advance(
        self, conn: psycopg.Connection[Any], wait_seconds: int, ctx: StepContext,
        memo: Mapping[str, Any], which: str, *, verify_only: bool,
    ) -> StepProgress:
        in_recovery = _in_recovery(conn)
        if verify_only:
            if not in_recovery:
                return StepProgress(
                    StepState.FAILED,
                    f"{which} is not in recovery: a real run would find it already primary",
                    memo)
            return StepProgress(
                StepState.SUCCEEDED, f"{which} is reachable and in recovery (drill: not "
                "promoted)", memo,
                diff={"promote": {"from": "standby (in recovery)", "to": "primary"}})
        if not in_recovery:
            issued = bool(memo.get("promoteIssued"))
            text = f"{which} promoted" if issued else f"{which} is already primary"
            return StepProgress(StepState.SUCCEEDED, f"{text} (timeline {_timeline(conn)})",
                                {**memo, "promoted": True},
                                diff={"promote": {"from": "standby", "to": "primary"}}
                                if ctx.drill else None)
        if memo.get("promoteIssued"):
            if self._expired(ctx, wait_seconds):
                return StepProgress(StepState.FAILED, f"{which} still in recovery "
                                    f"{wait_seconds}s after pg_promote()", memo)
            return StepProgress(StepState.RUNNING, f"waiting for {which} to finish "
                                "promotion", memo)
        new_memo = {**memo, "promoteIssued": True, "timelineBefore": _timeline(conn),
                    "issuedAt": ctx.now.isoformat()}
        row = conn.execute("SELECT pg_promote(true, %s)",
                           (max(1, min(PER_TICK, wait_seconds)),)).fetchone()
        if row and row[0] and not _in_recovery(conn):
            return StepProgress(StepState.SUCCEEDED, f"{which} promoted", {**new_memo,
                                "promoted": True})
        return StepProgress(StepState.RUNNING, f"pg_promote() issued; waiting for {which}",
                            new_memo)
