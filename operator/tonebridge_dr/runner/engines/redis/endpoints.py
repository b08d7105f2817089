"""Redis endpoints: `redis://[user[:password]@]host[:port][/db]` plus credentials from env.

Jobs get the password from a Secret through the environment (`REDIS_PASSWORD`,
optionally `REDIS_USERNAME`), or the whole URL (`TONEBRIDGE_DR_REDIS_URL`,
`TONEBRIDGE_DR_REDIS_TARGET_URL`), so it never shows up in a pod's command
line. A password in the URL wins over the environment. `str(endpoint)` and
every message built from it leave the password out.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.contract import runner_contract

DEFAULT_PORT = 6379
PASSWORD_ENV = "REDIS_PASSWORD"
USERNAME_ENV = "REDIS_USERNAME"
SOURCE_URL_ENV = runner_contract.ENV_REDIS_URL
TARGET_URL_ENV = runner_contract.ENV_REDIS_TARGET_URL
_FORM = "redis://[user[:password]@]host[:port][/db]"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    host: str
    port: int = DEFAULT_PORT
    db: int | None = None  # None: not named in the URL
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def user_label(self) -> str:
        """The ACL user we log in as, for messages."""
        return self.username or "default"


def redact(url: str) -> str:
    """`url` without its password, for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def parse(url: str, env: Mapping[str, str] | None = None) -> Endpoint:
    """Parse a Redis URL; fill missing credentials from `env` (default: os.environ)."""
    env = os.environ if env is None else env
    shown = redact(url)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise errors.UsageError(f"invalid Redis URL {shown}: expected {_FORM}") from None
    if parts.scheme == "rediss":
        raise errors.UsageError(f"{shown}: TLS (rediss://) is not supported yet; use redis://")
    if parts.scheme != "redis" or not parts.hostname:
        raise errors.UsageError(f"invalid Redis URL {shown}: expected {_FORM}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise errors.UsageError(f"invalid Redis URL {shown}: the path must be a database number")
    username = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    if password is None:
        password = env.get(PASSWORD_ENV) or None
        if username is None:
            username = env.get(USERNAME_ENV) or None
    return Endpoint(
        host=parts.hostname,
        port=port,
        db=int(path) if path else None,
        username=username,
        password=password,
    )


def from_args(url: str | None, url_env: str, option: str) -> Endpoint:
    """The endpoint from a command-line URL, else from the env variable `url_env`."""
    value = url or os.environ.get(url_env)
    if not value:
        raise errors.UsageError(f"{option} is required (or set {url_env})")
    return parse(value)
