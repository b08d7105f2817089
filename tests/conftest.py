"""Shared test fixtures; each real component has its own plugin module."""

pytest_plugins = [
    "tests.fixtures.sandbox",
    "tests.fixtures.s3",
    "tests.fixtures.gpg",
    "tests.fixtures.postgres",
    "tests.fixtures.redis",
    "tests.fixtures.operator",
    "tests.fixtures.pg_wal",
]
