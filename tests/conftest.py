"""Shared test fixtures (each real component has its own plugin module) and the markers,
which come from where a test file lives, never from the file itself.

| path                           | markers       | needs                                   |
|--------------------------------|---------------|-----------------------------------------|
| api/ builders/ status/         | unit          | nothing: pure functions                 |
| controller/                    | unit          | nothing (a fake of our own Kube)        |
| controller/repository/         | runner        | a real repository on moto S3            |
| runner/<area>/                 | runner        | real PostgreSQL, Redis, moto S3, gpg    |
| runner/kubernetes/             | runner sandbox| the control plane too (kubernetes engine)|
| runner/ modules in UNIT        | runner, unit  | nothing                                 |
| deploy/                        | unit          | nothing: Dockerfile and chart files     |
| api/apiserver/ sandbox/        | sandbox       | the local control plane                 |
| sandbox/ modules in UNIT       | sandbox, unit | root and unshare, no server             |
| e2e/                           | e2e, sandbox  | control plane, operator, real servers   |
| faults/                        | faults        | real servers; kills, fills, pauses them |
| kind/                          | kind          | Docker (skipped with a reason elsewhere)|

`make unit` runs `-m unit`; a unit test that asks for a fixture starting a server fails
at once (SERVER_FIXTURES), so "unit starts no server" is checked, not hoped for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.sandbox",
    "tests.fixtures.s3",
    "tests.fixtures.gpg",
    "tests.fixtures.postgres",
    "tests.fixtures.redis",
    "tests.fixtures.operator",
    "tests.fixtures.pg_wal",
]

TESTS = Path(__file__).resolve().parent

#: First match wins: (path prefix under tests/, markers).
PATH_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("api/apiserver/", ("sandbox",)),
    ("controller/repository/", ("runner",)),
    ("api/", ("unit",)),
    ("builders/", ("unit",)),
    ("status/", ("unit",)),
    ("controller/", ("unit",)),
    ("deploy/", ("unit",)),
    ("runner/kubernetes/", ("runner", "sandbox")),
    ("runner/", ("runner",)),
    ("sandbox/", ("sandbox",)),
    ("e2e/", ("e2e", "sandbox")),
    ("faults/", ("faults",)),
    ("kind/", ("kind",)),
)
#: Modules outside the pure layers that start nothing: they run with `make unit` too.
UNIT = frozenset({
    "runner/kubernetes/test_kubernetes_clean.py",
    "runner/postgres/test_incremental_units.py",
    "runner/repository/test_audit_units.py",
    "runner/repository/test_immutability.py",
    "runner/repository/test_retention.py",
    "runner/restoretest/test_restore_test_units.py",
    "runner/redis/test_redis_rdb.py",
    "runner/wal/test_archive_timeout_units.py",
    "runner/wal/test_pitr_plan.py",
    "runner/wal/test_wal_naming.py",
    "runner/wal/test_wal_settings.py",
    "runner/wal/test_waldump_units.py",
    "sandbox/test_sandbox_units.py",
})
#: Fixtures that start a server or an external tool a unit test must not need.
SERVER_FIXTURES = frozenset({
    "pg", "pg_factory", "cli", "postgres_runs_cli", "pg_repo_dir", "s3_proxy",
    "moto_server", "s3_repo_url", "start_moto", "redis_factory", "sandbox", "namespace",
    "operator_factory", "restore_operator", "gpg_keys", "other_gpg_keys",
    "passphrase_gpg_keys",
})


def markers_for(relative: str) -> tuple[str, ...]:
    """The markers of a test module at `relative` (a path under tests/, with `/`)."""
    for prefix, markers in PATH_MARKERS:
        if relative.startswith(prefix):
            return (*markers, "unit") if relative in UNIT else markers
    raise ValueError(f"tests/{relative} is in no layer folder: move it (see tests/conftest.py)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        relative = Path(str(item.fspath)).resolve().relative_to(TESTS).as_posix()
        for name in markers_for(relative):
            item.add_marker(name)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_server(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("unit") is None:
        return
    wanted = SERVER_FIXTURES.intersection(request.fixturenames)
    if wanted:
        pytest.fail(f"a unit test starts no server, but this one asks for {sorted(wanted)}: "
                    "move it out of the unit layers (tests/conftest.py)")
