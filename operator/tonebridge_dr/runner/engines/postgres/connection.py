"""PostgreSQL connection strings: parsing, masking, libpq environment, connecting.

A DSN is anything libpq accepts (`postgresql://user@host:5432/db` or
`host=... dbname=...`). Passwords are never put on a command line and never
printed: a password found in the DSN is moved to `PGPASSWORD` in the child
environment, and `masked()` is what error messages and logs show. Without a
password in the DSN libpq reads `PGPASSWORD` / `PGPASSFILE` as usual.

Failures to connect map to `SourceError` (unreachable, missing database) or
`AuthenticationError` (rejected credentials).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.contract import runner_contract

DSN_ENV = runner_contract.ENV_DSN
TARGET_DSN_ENV = runner_contract.ENV_TARGET_DSN

#: libpq keywords that never go on a command line.
_SECRET_KEYS = frozenset({"password", "sslpassword"})
#: SQLSTATEs of rejected credentials.
_AUTH_SQLSTATES = frozenset({"28P01", "28000"})
_AUTH_PATTERNS = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
)
_REFUSED_PATTERNS = ("pg_hba.conf", 'role "')  # no hba entry / role does not exist


def dsn_from(value: str | None, env_name: str = DSN_ENV, *, option: str = "--dsn") -> str:
    """The DSN given on the command line, else from `$env_name`; UsageError when neither."""
    dsn = value or os.environ.get(env_name, "")
    if not dsn:
        raise errors.UsageError(f"no database given: pass {option} DSN or set {env_name}")
    return dsn


class MissingDatabase(errors.SourceError):
    """The server is reachable and accepted us, but the named database does not exist."""


@dataclasses.dataclass(frozen=True)
class ConnInfo:
    """A parsed DSN. `params` holds every keyword; the password is kept out of `repr`."""

    params: Mapping[str, str] = dataclasses.field(repr=False)

    @classmethod
    def parse(cls, dsn: str) -> ConnInfo:
        try:
            params = pg_conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise errors.UsageError(f"invalid database DSN: {_first_line(str(exc))}") from None
        return cls({k: str(v) for k, v in params.items() if v is not None})

    # --- views ---------------------------------------------------------------------------
    @property
    def password(self) -> str | None:
        return self.params.get("password")

    @property
    def dbname(self) -> str:
        """The database libpq will connect to (explicit, else $PGDATABASE, else the user)."""
        return self.params.get("dbname") or os.environ.get("PGDATABASE") or self.user

    @property
    def user(self) -> str:
        return self.params.get("user") or os.environ.get("PGUSER") or _os_user()

    @property
    def host(self) -> str:
        return (
            self.params.get("host")
            or self.params.get("hostaddr")
            or os.environ.get("PGHOST", "localhost")
        )

    @property
    def port(self) -> str:
        return self.params.get("port") or os.environ.get("PGPORT", "5432")

    def without_secrets(self) -> str:
        """The DSN with password keywords removed: safe for a command line (not for logs
        when it carries other sensitive options, so logs use `masked()`)."""
        safe = {k: v for k, v in self.params.items() if k not in _SECRET_KEYS}
        return pg_conninfo.make_conninfo("", **safe)

    def masked(self) -> str:
        """Short, secret-free description for logs and messages: user@host:port/dbname."""
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"

    def with_dbname(self, dbname: str) -> ConnInfo:
        params = dict(self.params)
        params["dbname"] = dbname
        return ConnInfo(params)

    def with_params(self, **params: str) -> ConnInfo:
        merged = dict(self.params)
        merged.update(params)
        return ConnInfo(merged)

    def conninfo(self) -> str:
        """The full conninfo (with the password) for in-process psycopg connections only."""
        return pg_conninfo.make_conninfo("", **dict(self.params))

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a libpq client tool: the DSN's password travels as PGPASSWORD."""
        env = dict(os.environ if base is None else base)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def scrub(self, text: str) -> str:
        """Remove any secret of this DSN from `text` (defence in depth for messages)."""
        for key in _SECRET_KEYS:
            secret = self.params.get(key)
            if secret:
                text = text.replace(secret, "***")
        env_secret = os.environ.get("PGPASSWORD")
        if env_secret:
            text = text.replace(env_secret, "***")
        return text


def _os_user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return "postgres"


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        line = line.strip()
        if line:
            return line
    return text.strip()


def describe_error(info: ConnInfo, exc: BaseException) -> str:
    """One secret-free line from a psycopg/libpq error."""
    text = str(exc).strip()
    # libpq prefixes 'connection to server at "h" (addr), port p failed: '; keep the reason.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    reason = re.sub(r"^connection failed:\s*", "", reason)
    reason = re.sub(r"^connection to server .*? failed:\s*", "", reason)
    reason = re.sub(r"^(FATAL|ERROR):\s+", "", reason)
    return info.scrub(reason)


def is_missing_database(exc: psycopg.Error) -> bool:
    return getattr(exc, "sqlstate", None) == "3D000" or (
        'database "' in str(exc) and "does not exist" in str(exc)
    )


def connect(
    info: ConnInfo, *, autocommit: bool = False, purpose: str = "database", **kwargs: Any
) -> psycopg.Connection[Any]:
    """Connect with psycopg, mapping failures to SourceError/AuthenticationError."""
    try:
        return psycopg.connect(
            info.conninfo(), autocommit=autocommit, application_name="tonebridge-dr", **kwargs
        )
    except psycopg.OperationalError as exc:
        reason = describe_error(info, exc)
        where = info.masked()
        if is_missing_database(exc):
            raise MissingDatabase(
                f"{purpose} {where}: database {info.dbname!r} does not exist"
            ) from None
        if getattr(exc, "sqlstate", None) in _AUTH_SQLSTATES or any(
            pattern in str(exc) for pattern in _AUTH_PATTERNS
        ):
            raise errors.AuthenticationError(
                f"{purpose} {where} rejected the credentials: {reason}"
            ) from None
        if any(pattern in str(exc) for pattern in _REFUSED_PATTERNS):
            raise errors.AuthenticationError(f"{purpose} {where} refused us: {reason}") from None
        raise errors.SourceError(f"cannot connect to {purpose} {where}: {reason}") from None


def quote_ident(name: str) -> str:
    """SQL identifier quoting (always quoted, embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def server_version(conn: psycopg.Connection[Any]) -> str:
    """Human server version, e.g. "15.18" (from server_version_num, exact)."""
    num = conn.info.server_version
    major = num // 10000
    return f"{major}.{num % 10000}" if major >= 10 else f"{major}.{num // 100 % 100}.{num % 100}"
