"""The operator/runner contract (api/runner_contract.py) is what both sides really do."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import tonebridge_dr
from tonebridge_dr.api import runner_contract as contract
from tonebridge_dr.api.backuppolicy import _METHODS, TargetKind
from tonebridge_dr.api.common import BackupMethod
from tonebridge_dr.builders import backup as backup_builders
from tonebridge_dr.builders import pods
from tonebridge_dr.builders import restore as restore_builders
from tonebridge_dr.builders import settings as builder_settings
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.engines import registry
from tonebridge_dr.runner.engines.postgres.wal import spool
from tonebridge_dr.status import backuppolicy as policy_status

OPERATOR = Path(tonebridge_dr.__file__).parent.parent


def _runner_errors() -> list[type[errors.DRError]]:
    return [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, errors.DRError) and cls is not errors.DRError]


def test_every_runner_error_is_in_the_contract_with_its_reason() -> None:
    for cls in _runner_errors():
        entry = contract.exit_code(cls.exit_code)
        assert entry is not None, f"{cls.__name__}: exit code {cls.exit_code} not in contract"
        assert entry.reason == cls.reason, (cls.__name__, entry.reason, cls.reason)


def test_exit_codes_and_reasons_are_unique_and_wal_fetch_codes_are_postgresql_safe() -> None:
    codes = [entry.code for entry in contract.EXIT_CODES]
    assert len(codes) == len(set(codes))
    assert contract.WAL_FETCH_ABORT > 125  # PostgreSQL aborts recovery above 125
    assert contract.WAL_FETCH_NOT_FOUND == 1 and contract.WAL_FETCH_DELIVERED == 0


def test_job_failure_policies_come_from_the_contract() -> None:
    assert set(builder_settings.DEFAULT_NON_RETRIABLE_EXIT_CODES) == set(
        contract.non_retriable_backup_codes())
    assert set(builder_settings.DEFAULT_NON_RETRIABLE_EXIT_CODES) | set(
        restore_builders.NON_RETRIABLE_RESTORE_EXIT_CODES) == set(
        contract.non_retriable_restore_codes())


def test_the_default_failure_policies_are_the_contract_sets() -> None:
    settings = builder_settings.RunnerSettings()
    backup = pods.pod_failure_policy("backup", settings.non_retriable_exit_codes)
    restore = pods.pod_failure_policy("restore", set(settings.non_retriable_exit_codes) | set(
        restore_builders.NON_RETRIABLE_RESTORE_EXIT_CODES))
    assert backup is not None and restore is not None
    assert backup["rules"][0]["onExitCodes"]["values"] == sorted(
        contract.non_retriable_backup_codes())
    assert restore["rules"][0]["onExitCodes"]["values"] == sorted(
        contract.non_retriable_restore_codes())


def test_builders_spell_no_runner_environment_of_their_own() -> None:
    for name in ("ENV_REPO", "ENV_DSN", "ENV_REDIS_URL", "ENV_S3_SSE", "ENV_S3_SSE_KMS_KEY_ID"):
        assert getattr(backup_builders, name) is getattr(contract, name), name
    for name in ("ENV_REPO", "ENV_TARGET_DSN", "ENV_REDIS_TARGET_URL"):
        assert getattr(restore_builders, name) is getattr(contract, name), name


def test_builders_serve_the_engines_the_runner_implements() -> None:
    backed_up = {TargetKind(spec.name) for spec in contract.ENGINES if spec.backup}
    restorable = {TargetKind(spec.name): spec.title for spec in contract.ENGINES if spec.restore}
    assert backed_up == backup_builders.SUPPORTED_TARGETS
    assert restorable == restore_builders._ENGINE_NAMES


def test_status_reads_result_methods_and_defaults_from_the_contract() -> None:
    for spec in contract.ENGINES:
        assert policy_status.backup_method(None, spec.name) == BackupMethod(spec.default_method)
        for written, method in spec.result_methods:
            assert policy_status.backup_method(written, spec.name) == BackupMethod(method)


def test_api_targets_and_methods_are_the_contract_engines() -> None:
    assert tuple(kind.value for kind in TargetKind) == contract.ENGINE_NAMES
    for spec in contract.ENGINES:
        assert tuple(m.value for m in _METHODS[TargetKind(spec.name)]) == spec.methods


def test_the_engine_registry_is_the_contract_engines() -> None:
    assert registry.NAMES == contract.ENGINE_NAMES
    for spec in contract.ENGINES:
        for verb in registry.VERBS:
            implemented = registry.command(spec.name, verb) is not None
            assert implemented == getattr(spec, verb.replace("-", "_")), (spec.name, verb)
        module = registry.commands_module(spec.name)
        if spec.backup and spec.restore:
            assert isinstance(module, registry.Engine), spec.name


def test_the_runner_gets_the_contract_module_without_loading_the_api_models() -> None:
    assert runner_contract is contract
    code = (
        "import sys\n"
        "from tonebridge_dr.runner.contract import runner_contract\n"
        "print(runner_contract.ENV_REPO, 'tonebridge_dr.api' in sys.modules,"
        " 'pydantic' in sys.modules)\n"
        "from tonebridge_dr.api import runner_contract as api_contract\n"
        "print(api_contract is runner_contract)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(OPERATOR)})
    # The api package itself is loaded (its models are not: they load on first use).
    assert out.stdout.split() == [contract.ENV_REPO, "True", "False", "True"]


def test_the_import_light_spool_spells_the_contract_values() -> None:
    """wal/spool.py imports nothing of ours on the fast path, so it spells these."""
    assert spool.REPO_ENV == contract.ENV_REPO
    assert (spool.FETCH_DELIVERED, spool.FETCH_NOT_FOUND, spool.FETCH_ABORT) == (
        contract.WAL_FETCH_DELIVERED, contract.WAL_FETCH_NOT_FOUND, contract.WAL_FETCH_ABORT)


def test_restore_test_results_are_the_contract_shape() -> None:
    from tonebridge_dr.runner.engines.postgres.restoretest import checks, run
    from tonebridge_dr.runner.repository import reports

    assert tuple(contract.RestoreTestResult.__annotations__) == run.RESULT_KEYS
    entry = checks.CheckResult("c", False, "0", "expected at least 1, got 0").result()
    assert tuple(entry) == tuple(contract.RestoreTestCheck.__annotations__)
    assert reports.PREFIX == contract.RESTORE_TEST_REPORTS
    assert checks.CHECKS_ENV == contract.ENV_CHECKS
    assert [e.reason for e in map(contract.exit_code, (15, 16)) if e] == [
        errors.ChecksFailed.reason, errors.RTOMissed.reason]
    assert {15, 16} <= set(contract.non_retriable_backup_codes())
    assert {15, 16} <= set(contract.non_retriable_restore_codes())


def test_an_archived_backup_fails_a_restore_job_at_once() -> None:
    entry = contract.exit_code(errors.BackupArchived.exit_code)
    assert entry is not None and entry.code == 17 and entry.reason == errors.BackupArchived.reason
    assert 17 in contract.non_retriable_restore_codes()
    assert 17 not in contract.non_retriable_backup_codes()  # backups never exit 17
