"""One restore test, engine-independent: choose a backup, restore it into scratch space, run
the checks, measure the RTO, remove the scratch target, keep a report.

Order (each step only once the one before succeeded):
1. inspect the scratch target (`Scratch.inspect`), before anything is read from the
   repository: a target in use is refused (TargetNotEmpty) untouched;
2. the clock starts; the engine chooses the backup (`Plan.choose_backup`) and the run
   hashes its manifest.json; the engine says whether it can be tested (`check_backup`);
3. the engine restores it into the scratch target (`Plan.restore`);
4. the engine runs the checks (`Plan.run_checks`); the clock stops when the last one
   returned;
5. the scratch target is removed (always: the `with scratch:`);
6. the report goes into the repository (repository/reports.py), for every run that got
   as far as step 2, failed or not; then the verdict.

What the RTO measures (`restore_duration_seconds`): wall time on a monotonic clock from
the first request to the repository (step 2) until the last check returned (step 4):
choosing the backup, preparing the scratch target, reading and restoring every byte, and
the checks. Input validation and the inspection before, the clean-up and the report
after, are not in it. Only a run whose checks ran has one; `rto_met` says whether they
passed within `--rto` (null without it; false when the checks did not pass: such a
restore recovered nothing usable).

Verdict: 0 when every check passed and the RTO (if given) was met; ChecksFailed (15)
when a check failed; RTOMissed (16) when the checks passed too late. Those two, and
any other failure after step 2, carry the result (DRError.result), so the front door
prints it and puts it into the termination message.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import tonebridge_dr
from tonebridge_dr.runner import errors
from tonebridge_dr.runner import result as results
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.engines.restoretest.checks import CheckResult
from tonebridge_dr.runner.engines.restoretest.scratch import Scratch
from tonebridge_dr.runner.repository import reports, tiering
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import Manifest, format_time

log = logging.getLogger(__name__)

#: Keys of the result, in this order (the contract's RestoreTestResult).
RESULT_KEYS: tuple[str, ...] = tuple(runner_contract.RestoreTestResult.__annotations__)
class Plan(Protocol):
    """What one engine does in a restore test (the run does the rest)."""

    @property
    def engine(self) -> str:
        """The engine's name (the result's `engine`)."""
        ...

    @property
    def checks(self) -> Sequence[Any]:
        """The checks `run_checks` runs."""
        ...

    def choose_backup(self, repo: Repository) -> tuple[Manifest, bytes]:
        """The backup to test and the exact bytes of its manifest.json."""
        ...

    def check_backup(self, manifest: Manifest) -> None:
        """UsageError (or another DRError) when `manifest` cannot be tested this way."""
        ...

    def details(self, manifest: Manifest) -> dict[str, Any]:
        """The engine's first fields of the report's `details`."""
        ...

    def restore(self, repo: Repository, manifest: Manifest, details: dict[str, Any]) -> None:
        """Restore `manifest` into the scratch target (inside its `with`)."""
        ...

    def run_checks(self) -> list[CheckResult]:
        """Every check on the restored data, in order, whatever the others did."""
        ...


class Clock:
    """The RTO clock: wall time of its start, monotonic seconds since, named marks."""

    def __init__(self) -> None:
        self.started = dt.datetime.now(dt.UTC)
        self._began = time.monotonic()
        self.marks: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self._began

    def mark(self, name: str) -> float:
        self.marks[name] = round(self.elapsed(), 3)
        return self.marks[name]


def run_restore_test(
    repo: Repository, scratch: Scratch, plan: Plan, name: str, rto: float | None
) -> dict[str, Any]:
    """Test one backup (module docstring); the result, or a DRError carrying it."""
    scratch.inspect()
    clock = Clock()
    manifest, raw = plan.choose_backup(repo)
    out: dict[str, Any] = {
        "name": name,
        "engine": plan.engine,
        "method": manifest.method,
        "backup_id": manifest.id,
        "backup_finished_at": format_time(manifest.finished_at, timespec="seconds"),
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "started_at": format_time(clock.started, timespec="milliseconds"),
        "completed_at": None,
        "restore_duration_seconds": None,
        "rto_seconds": rto,
        "rto_met": None,
        "passed": False,
        "checks": [],
        "report_key": None,
    }
    details: dict[str, Any] = {
        "scratch": scratch.kind,
        "target": scratch.describe(),
        **plan.details(manifest),
        "marks_seconds": clock.marks,
        "cleaned_up": False,
    }
    clock.mark("backup_chosen")
    try:
        plan.check_backup(manifest)
        tiering.require_readable(repo, manifest)  # archived: exit 17, scratch untouched
        log.info(
            "restore test %s: restoring %s backup %s into scratch %s %s",
            name,
            manifest.method,
            manifest.id,
            scratch.kind,
            scratch.describe(),
        )
        with scratch:
            plan.restore(repo, manifest, details)
            restored = clock.mark("restored")
            log.info(
                "restore test %s: restored in %.3f s; running %d checks",
                name,
                restored,
                len(plan.checks),
            )
            outcomes = plan.run_checks()
            duration = clock.mark("checked")
            out["completed_at"] = format_time(dt.datetime.now(dt.UTC), timespec="milliseconds")
            out["checks"] = [outcome.result() for outcome in outcomes]
            out["passed"] = all(outcome.passed for outcome in outcomes)
            out["restore_duration_seconds"] = round(duration, 3)
            if rto is not None:
                out["rto_met"] = bool(out["passed"]) and duration <= rto
            for outcome in outcomes:
                verdict = "passed" if outcome.passed else f"FAILED: {outcome.message}"
                log.info("check %s %s", outcome.name, verdict)
    except BaseException as exc:
        details["cleaned_up"] = scratch.cleaned
        _failed(out, details, clock, rto)
        _keep_report(repo, clock, out, details, _failure_fields(exc))
        if isinstance(exc, errors.DRError) and exc.result is None:
            exc.result = out
        raise
    details["cleaned_up"] = scratch.cleaned
    failure = _verdict(out, rto)
    stored = _keep_report(repo, clock, out, details, _failure_fields(failure) if failure else None)
    if failure is not None:
        failure.result = out  # with the report's key
        raise failure
    if stored is not None:
        raise errors.StorageError(
            f"restore test {name} passed, but its report could not be stored: {stored}",
            result=out,
        )
    log.info("restore test %s passed in %.3f s", name, out["restore_duration_seconds"])
    return out


def _failed(
    out: dict[str, Any], details: dict[str, Any], clock: Clock, rto: float | None
) -> None:
    """A run that failed: when it did not get through its checks, it measured no RTO and
    did not pass (a clean-up failure after them keeps what they found)."""
    details["failed_after_seconds"] = round(clock.elapsed(), 3)
    if out["restore_duration_seconds"] is not None:
        return
    out["completed_at"] = format_time(dt.datetime.now(dt.UTC), timespec="milliseconds")
    out["passed"] = False
    if rto is not None:
        out["rto_met"] = False


def _failure_fields(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, errors.DRError):
        code, reason = exc.exit_code, exc.reason
    elif isinstance(exc, KeyboardInterrupt):  # the front door's Terminated (SIGTERM) is one
        code = int(getattr(exc, "exit_code", runner_contract.EXIT_INTERRUPTED))
        reason = "Cancelled"
    else:
        code, reason = 1, "InternalError"
    message = str(exc) or type(exc).__name__
    return {"error": reason, "message": results.scrub(" ".join(message.split())),
            "exit_code": code}


def _keep_report(
    repo: Repository,
    clock: Clock,
    out: dict[str, Any],
    details: Mapping[str, Any],
    failure: Mapping[str, Any] | None,
) -> Exception | None:
    """Store the report (sets `out["report_key"]`); the error when that failed (logged)."""
    try:
        key = reports.free_key(repo.storage, clock.started, str(out["name"]))
        out["report_key"] = key
        payload = {
            **out,
            **(failure or {}),
            "tonebridge_dr_version": tonebridge_dr.__version__,
            "details": dict(details),
        }
        reports.write_report(repo.storage, key, payload)
    except Exception as exc:
        out["report_key"] = None
        log.error("could not store the restore test report: %s", exc)
        return exc
    return None


#: A ChecksFailed message names this many failed checks, each message cut to _SHORT.
_NAMED = 5
_SHORT = 160


def _short(text: str | None) -> str:
    text = text or "failed"
    return text if len(text) <= _SHORT else text[:_SHORT] + "..."


def _verdict(out: dict[str, Any], rto: float | None) -> errors.DRError | None:
    """ChecksFailed or RTOMissed, or None when the test passed."""
    failed = [c for c in out["checks"] if not c["passed"]]
    if failed:
        named = "; ".join(f"{c['name']} ({_short(c['message'])})" for c in failed[:_NAMED])
        if len(failed) > _NAMED:
            named += f"; and {len(failed) - _NAMED} more"
        return errors.ChecksFailed(
            f"restore test {out['name']}: {len(failed)} of {len(out['checks'])} checks failed: "
            f"{named}"
        )
    if out["rto_met"] is False:
        return errors.RTOMissed(
            f"restore test {out['name']}: the checks passed after "
            f"{out['restore_duration_seconds']:.3f} s, longer than the RTO of "
            f"{rto:g} s"
        )
    return None
