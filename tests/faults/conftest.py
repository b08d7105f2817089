"""Fixtures of the fault-injection suite: one PostgreSQL server and one Redis server per
module with a few MB of data, a seeded random source per test, and the session ledger
that the terminal summary reports ("faults: N injected, M invariant checks, T s")."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults import harness
from tests.fixtures.postgres import (
    PgFactory,
    PgServer,
    large_objects,
    populate_sample,
    table_checksums,
    user_table_names,
)
from tests.fixtures.redis import RedisFactory, RedisServer, populate

#: Random bytes in each source, so that S3 stores its objects as multipart uploads (parts
#: of 8 MiB): a killed backup then leaves an unfinished upload for prune to find. PostgreSQL
#: holds them as hex text in long rows (2 MiB each, `payloads`): cut anywhere, such a row is
#: still a valid row, so a restore that commits what it got before a kill shows.
BLOB_BYTES = 9 * 1024 * 1024
BLOB_ROWS = 9
#: The tables a table restore asks for (one with a foreign key to another, one without
#: primary key, the long rows).
RESTORED_TABLES = (
    "public.transformations", "app.documents", "public.audit_log", "public.payloads",
)
TABLE_ORDER = {
    "public.transformations": "id",
    "public.analytics": "day, region",
    "public.usage_tracking": "id",
    "app.documents": "id",
    "public.audit_log": "logged_at, message",
    "public.payloads": "id",
}


@dataclasses.dataclass
class PgSource:
    """A database with the sample data plus `payloads`, and its fingerprint."""

    server: PgServer
    dbname: str

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.dbname)

    def env(self, **extra: str) -> dict[str, str]:
        return harness.runner_env(PGPASSWORD=self.server.password, **extra)

    def fingerprint(self, dbname: str, tables: tuple[str, ...] | None = None) -> dict[str, Any]:
        """What a restore must reproduce: the tables' rows (count and md5 in key order),
        and for a whole database also its sequences, large objects and table list."""
        chosen = {t: TABLE_ORDER[t] for t in (tables or TABLE_ORDER)}
        found: dict[str, Any] = {"tables": table_checksums(self.server, dbname, chosen)}
        if tables is None:
            found["names"] = user_table_names(self.server, dbname)
            found["sequences"] = self.server.query(  # what exists: a partial restore may lack some
                dbname,
                "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2",
            )
            found["large_objects"] = large_objects(self.server, dbname)
        return found

    def is_untouched(self, dbname: str) -> bool:
        """The state of a fresh target: no user table, no large object."""
        return not user_table_names(self.server, dbname) and not large_objects(
            self.server, dbname
        )


@pytest.fixture(scope="module")
def pg_source(pg_factory: PgFactory) -> Iterator[PgSource]:
    """This module's own PostgreSQL server (so its sessions are only the runner's), with
    one source database of ~27 MB (the sample data plus 18 MiB of `payloads`)."""
    server = pg_factory.start("faults")
    try:
        dbname = server.create_database("source").rsplit("dbname=", 1)[1]
        populate_sample(server, dbname, rows=3000)
        server.execute(
            dbname,
            "CREATE TABLE payloads (id int PRIMARY KEY, body text NOT NULL)",
            "ALTER TABLE payloads ALTER body SET STORAGE EXTERNAL",  # stored as they are
        )
        rnd = random.Random("payloads")
        with server.connect(dbname, autocommit=True) as conn:
            for row in range(BLOB_ROWS):
                conn.execute("INSERT INTO payloads VALUES (%s, %s)",
                             (row, rnd.randbytes(BLOB_BYTES // BLOB_ROWS).hex()))
        yield PgSource(server, dbname)
    finally:
        server.stop()


@dataclasses.dataclass
class RedisSource:
    server: RedisServer

    def env(self, **extra: str) -> dict[str, str]:
        return harness.runner_env(**extra)


@pytest.fixture(scope="module")
def redis_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSource]:
    """This module's own Redis: every data type (`populate`) plus a 9 MiB random string."""
    factory = RedisFactory(tmp_path_factory.mktemp("faults-redis"))
    try:
        server = factory.start()
        populate(server)
        client = server.client()
        try:
            client.set("blob", random.Random("redis-blob").randbytes(BLOB_BYTES))
        finally:
            client.close()
        yield RedisSource(server)
    finally:
        factory.close()


@pytest.fixture
def ledger() -> harness.Ledger:
    return harness.LEDGER


@pytest.fixture
def rnd(request: pytest.FixtureRequest) -> random.Random:
    return harness.seeded(request.node.nodeid)


@pytest.fixture
def repo_url(request: pytest.FixtureRequest, repo_kind: str) -> str:
    """A fresh file:// or S3 (moto) repository; for S3 the AWS environment points at moto."""
    return str(request.getfixturevalue(f"{repo_kind}_repo_url"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Time spent in this suite, fixture set-up and tear-down (servers) included."""
    began = time.monotonic()
    yield
    harness.LEDGER.seconds += time.monotonic() - began


def pytest_terminal_summary(terminalreporter: Any) -> None:
    ledger = harness.LEDGER
    if not ledger.checks and not ledger.injected:
        return
    terminalreporter.write_sep("-", "fault injection")
    terminalreporter.write_line(ledger.summary())
    terminalreporter.write_line(
        f"  seed {harness.seed()!r} (${harness.SEED_ENV}), "
        f"scale {harness.count(100) / 100:g} (${harness.SCALE_ENV})"
    )
    for kind, n in sorted(ledger.faults.items()):
        terminalreporter.write_line(f"  {n:4d}  {kind}")
    for what, n in sorted(ledger.found.items()):
        terminalreporter.write_line(f"  found: {n} {what}")
