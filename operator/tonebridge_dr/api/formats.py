"""String formats shared by the CRD schemas (CEL rules) and the Python models.

Every format is one regular expression written in the common subset of Python
`re` and RE2 (the engine behind CEL's `matches`), so the API server and the
operator accept exactly the same strings. The messages are what a user sees
from `kubectl apply` when a value is rejected.

Durations have one format everywhere: whole numbers with the units `d`, `h`,
`m`, `s`, largest unit first, each unit at most once, no spaces; e.g. `30m`,
`1h`, `7d`, `1h30m`, `90s`. `parse_duration` and `format_duration` are the
only functions that read or write it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

__all__ = [
    "CRON_MESSAGE",
    "CRON_RE",
    "DNS_LABEL_MESSAGE",
    "DNS_LABEL_RE",
    "DURATION_MESSAGE",
    "DURATION_RE",
    "LSN_MESSAGE",
    "LSN_RE",
    "RFC3339_MESSAGE",
    "RFC3339_RE",
    "format_duration",
    "parse_duration",
    "parse_lsn",
    "parse_rfc3339",
]

# --- durations -------------------------------------------------------------

DURATION_RE = r"^([0-9]{1,6}d)?([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$"
DURATION_MESSAGE = (
    "must be a duration like 30m, 1h, 7d or 1h30m "
    "(whole numbers with units d, h, m, s, largest unit first)"
)
POSITIVE_DURATION_MESSAGE = "must be longer than zero"
_DURATION = re.compile(DURATION_RE)
_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_duration(text: str) -> timedelta:
    """Parse `1h30m`-style durations; raise ValueError with a human message otherwise."""
    match = _DURATION.fullmatch(text) if text else None
    if match is None:
        raise ValueError(f"{text!r} {DURATION_MESSAGE}")
    seconds = 0
    for group, (_unit, factor) in zip(match.groups(), _UNITS, strict=True):
        if group is not None:
            seconds += int(group[:-1]) * factor
    return timedelta(seconds=seconds)


def format_duration(value: timedelta | float) -> str:
    """Canonical text of a duration (`5400s` -> `1h30m`); fractions of a second are dropped.

    `parse_duration(format_duration(d)) == d` for every whole-second, non-negative `d`.
    """
    total = int(value.total_seconds() if isinstance(value, timedelta) else value)
    if total < 0:
        raise ValueError(f"durations cannot be negative: {value!r}")
    if total == 0:
        return "0s"
    parts = []
    for unit, factor in _UNITS:
        amount, total = divmod(total, factor)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


# --- cron --------------------------------------------------------------------


def _cron_field(atom: str, blank: str = r"\*") -> str:
    value = f"(?:{atom})"
    item = f"(?:{blank}|{value}(?:-{value})?)(?:/[0-9]{{1,2}})?"
    return f"{item}(?:,{item})*"


_MONTH_NAMES = "(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_DAY_NAMES = "(?i:sun|mon|tue|wed|thu|fri|sat)"
_CRON_FIELDS = (
    _cron_field("[0-5]?[0-9]"),  # minute
    _cron_field("[01]?[0-9]|2[0-3]"),  # hour
    _cron_field("0?[1-9]|[12][0-9]|3[01]", r"\*|\?"),  # day of month
    _cron_field(f"0?[1-9]|1[0-2]|{_MONTH_NAMES}"),  # month
    _cron_field(f"[0-7]|{_DAY_NAMES}", r"\*|\?"),  # day of week
)
CRON_RE = (
    "^(?:@(?:yearly|annually|monthly|weekly|daily|midnight|hourly)|"
    + "[ \t]+".join(_CRON_FIELDS)
    + ")$"
)
CRON_MESSAGE = (
    "must be a cron schedule with 5 fields (minute hour day-of-month month day-of-week, "
    "e.g. '0 2 * * *') or one of @hourly, @daily, @weekly, @monthly, @yearly"
)

# --- PostgreSQL LSN ----------------------------------------------------------

LSN_RE = r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"
LSN_MESSAGE = "must be a PostgreSQL LSN: two hexadecimal numbers separated by '/', e.g. 0/3000060"


def parse_lsn(text: str) -> int:
    """`'16/B374D848'` -> the 64-bit position it names."""
    if re.fullmatch(LSN_RE, text) is None:
        raise ValueError(f"{text!r} {LSN_MESSAGE}")
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


# --- timestamps ----------------------------------------------------------------

RFC3339_RE = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
RFC3339_MESSAGE = (
    "must be an RFC 3339 date-time with a time zone, "
    "e.g. 2024-01-15T10:30:00+09:00 or 2024-01-15T01:30:00Z"
)


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 date-time that carries a time zone (the CRDs' only timestamp format)."""
    if re.fullmatch(RFC3339_RE, text) is None:
        raise ValueError(f"{text!r} {RFC3339_MESSAGE}")
    head, dot, tail = text.partition(".")
    if dot:  # Python keeps microseconds: trim nanoseconds, keep the zone
        digits = re.match(r"[0-9]+", tail)
        assert digits is not None
        text = f"{head}.{digits.group()[:6]:0<6}{tail[digits.end() :]}"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:  # e.g. February 30th
        raise ValueError(f"{text!r} is not a real date-time: {error}") from None


# --- names ---------------------------------------------------------------------

DNS_LABEL_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_LABEL_MESSAGE = (
    "must be a lowercase DNS label: letters, digits and '-', starting and ending "
    "with a letter or digit"
)
DNS_SUBDOMAIN_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_SUBDOMAIN_MESSAGE = (
    "must be a Kubernetes object name: lowercase letters, digits, '-' and '.', "
    "starting and ending with a letter or digit"
)
SECRET_KEY_RE = r"^[-._a-zA-Z0-9]+$"
SECRET_KEY_MESSAGE = "must be a Secret key: letters, digits, '-', '_' and '.'"
SQL_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_$]*$"
SQL_NAME_MESSAGE = "must be a plain SQL identifier: letters, digits, '_' and '$'"
TABLE_RE = r"^([A-Za-z_][A-Za-z0-9_$]*\.)?[A-Za-z_][A-Za-z0-9_$]*$"
TABLE_MESSAGE = (
    "must be a table name, optionally schema-qualified, e.g. transformations or public.users"
)
REPOSITORY_URL_RE = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^ ]*)?|file:///[^ ]*)$"
REPOSITORY_URL_MESSAGE = "must be s3://bucket[/prefix] or file:///absolute/path"
S3_URL_RE = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^ ]*)?$"
S3_URL_MESSAGE = "must be s3://bucket[/prefix]"
HTTP_URL_RE = r"^https?://[^ ]+$"
HTTP_URL_MESSAGE = "must be an http:// or https:// URL"
GIT_URL_RE = r"^(https://|ssh://|git@|file:///)[^ ]+$"
GIT_URL_MESSAGE = "must be a git URL: https://..., ssh://..., git@host:path or file:///path"
HOST_PORT_RE = r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$"
TIME_ZONE_RE = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
TIME_ZONE_MESSAGE = "must be an IANA time zone name, e.g. Asia/Tokyo or UTC"
IMAGE_RE = r"^[^ \t\n]+$"
IMAGE_MESSAGE = "must be a container image reference without spaces, e.g. postgres:16"
QUANTITY_RE = (
    r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)"
    r"(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei|[eE][+-]?[0-9]+)?$"
)
QUANTITY_MESSAGE = "must be a Kubernetes quantity, e.g. 500m, 2, 1Gi"
HOSTED_ZONE_RE = r"^[A-Z0-9]{1,32}$"
HOSTED_ZONE_MESSAGE = "must be a Route 53 hosted zone id, e.g. Z1234567890ABC"
DNS_NAME_RE = (
    r"^(\*\.)?([A-Za-z0-9_]([-A-Za-z0-9_]*[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?\.?$"
)
DNS_NAME_MESSAGE = "must be a DNS name, e.g. db.tonebridge.io"
REASON_RE = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
