"""Operator settings: command-line flags, with environment variables as defaults.

Every flag has an environment variable (the Helm chart sets those); a flag given on
the command line wins. `parse(argv, environ)` never exits: a bad value raises
SettingsError with one sentence.

| flag | environment | default |
|---|---|---|
| `--namespace NS` (repeatable) / `-A` | `TONEBRIDGE_DR_WATCH_NAMESPACES` (`a,b`; `*`: all) | all |
| `--runner-image` | `TONEBRIDGE_DR_RUNNER_IMAGE` | `tonebridge-dr:dev` |
| `--runner-image-pull-policy` | `TONEBRIDGE_DR_RUNNER_IMAGE_PULL_POLICY` | `IfNotPresent` |
| `--backup-service-account` | `TONEBRIDGE_DR_BACKUP_SERVICE_ACCOUNT` | `tonebridge-dr-backup` |
| `--restore-service-account` | `TONEBRIDGE_DR_RESTORE_SERVICE_ACCOUNT` | `tonebridge-dr-restore` |
| `--metrics-port` (0: off) | `TONEBRIDGE_DR_METRICS_PORT` | 8080 |
| `--metrics-address` | `TONEBRIDGE_DR_METRICS_ADDRESS` | `127.0.0.1` (the chart: `0.0.0.0`) |
| `--liveness URL` | `TONEBRIDGE_DR_LIVENESS` | off |
| `--standalone` | `TONEBRIDGE_DR_STANDALONE` (`1`/`true`) | peering on |
| `--peering NAME` | `TONEBRIDGE_DR_PEERING` | `tonebridge-dr` |
| `--priority N` | `TONEBRIDGE_DR_PRIORITY` | 0 |
| `--freshness-interval S` (>= 1) | `TONEBRIDGE_DR_FRESHNESS_INTERVAL` | 60 |
| `--retention-interval S` (>= 60) | `TONEBRIDGE_DR_RETENTION_INTERVAL` | 86400 |
| `--rehydration-interval S` (>= 1) | `TONEBRIDGE_DR_REHYDRATION_INTERVAL` | 300 |
| `--watch-timeout S` | `TONEBRIDGE_DR_WATCH_TIMEOUT` | 60 |
| `--workers N` | `TONEBRIDGE_DR_WORKERS` | 16 |
| `--notify-timeout S` | `TONEBRIDGE_DR_NOTIFY_TIMEOUT` | 5 |
| `--log-level` | `TONEBRIDGE_DR_LOG_LEVEL` | `INFO` |
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import NoReturn

from tonebridge_dr.builders.settings import RunnerSettings

ENV_PREFIX = "TONEBRIDGE_DR_"
DEFAULT_PEERING = "tonebridge-dr"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """A flag or environment variable has an unusable value."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the operator process is configured with."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty: every namespace (cluster-wide)."""
    runner: RunnerSettings = dataclasses.field(default_factory=RunnerSettings)
    """What backup Jobs run (image, service accounts, ...)."""
    metrics_port: int = 8080
    """Port of the Prometheus /metrics endpoint; 0 turns it off."""
    metrics_address: str = "127.0.0.1"
    """Address the metrics server binds to: loopback unless told otherwise, so an operator
    run on a laptop does not publish its metrics to the network; the chart sets 0.0.0.0
    (Prometheus scrapes the pod IP)."""
    liveness_endpoint: str | None = None
    """kopf's liveness probe URL, e.g. http://0.0.0.0:8081/healthz."""
    standalone: bool = False
    """No peering: this process never pauses for another operator (tests, one replica)."""
    peering_name: str = DEFAULT_PEERING
    priority: int = 0
    freshness_interval: float = 60.0
    """Seconds between two reads of a policy's repository catalog."""
    retention_interval: float = 86400.0
    """Seconds between two retention runs of a policy besides the run after each backup
    (so a policy whose backups stopped still prunes, never below what its rules keep)."""
    rehydration_interval: float = 300.0
    """Seconds between two checks of a Rehydrating RestoreRequest's archived objects."""
    watch_timeout: float = 60.0
    """Server-side timeout of one watch request (kopf reconnects after it)."""
    workers: int = 16
    """Threads for the synchronous handlers (API calls, catalog reads, webhooks)."""
    notify_timeout: float = 5.0
    log_level: str = "INFO"

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SettingsError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tonebridge-dr operator",
        description="Run the tonebridge-dr Kubernetes operator (kopf). Every flag also has a "
        f"{ENV_PREFIX}* environment variable; flags win.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", dest="namespaces", metavar="NS",
                       help="watch this namespace (repeatable); default: all namespaces")
    scope.add_argument("--all-namespaces", "-A", action="store_true",
                       help="watch every namespace (the default)")
    parser.add_argument("--runner-image", help="image of backup Jobs")
    parser.add_argument("--runner-image-pull-policy",
                        choices=("Always", "IfNotPresent", "Never"), default=None)
    parser.add_argument("--backup-service-account", help="ServiceAccount of backup Jobs")
    parser.add_argument("--restore-service-account", help="ServiceAccount of restore Jobs")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (0: off)")
    parser.add_argument("--metrics-address",
                        help="address the metrics server binds to (default 127.0.0.1; "
                        "in a pod: 0.0.0.0)")
    parser.add_argument("--liveness", dest="liveness_endpoint",
                        help="liveness endpoint URL, e.g. http://0.0.0.0:8081/healthz")
    parser.add_argument("--standalone", action="store_true", default=None,
                        help="no peering (a single replica, or tests)")
    parser.add_argument("--peering", dest="peering_name", help="kopf peering object name")
    parser.add_argument("--priority", type=int, help="peering priority")
    parser.add_argument("--freshness-interval", type=float,
                        help="seconds between repository catalog reads per policy (>= 1)")
    parser.add_argument("--retention-interval", type=float,
                        help="seconds between the daily retention runs of a policy (>= 60)")
    parser.add_argument("--rehydration-interval", type=float,
                        help="seconds between checks of an archived backup being rehydrated "
                        "for a RestoreRequest (>= 1)")
    parser.add_argument("--watch-timeout", type=float, help="watch request timeout, seconds")
    parser.add_argument("--workers", type=int, help="threads for synchronous handlers")
    parser.add_argument("--notify-timeout", type=float, help="webhook timeout, seconds")
    parser.add_argument("--log-level", choices=_LOG_LEVELS, type=str.upper)
    parser.add_argument("--verbose", "-v", action="store_true", help="same as --log-level DEBUG")
    return parser


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(ENV_PREFIX + name)
    return value.strip() if value is not None else None


def _number(text: str, name: str, kind: type[int] | type[float]) -> float:
    try:
        return kind(text)
    except ValueError:
        raise SettingsError(f"{ENV_PREFIX}{name} must be a number, got {text!r}") from None


def _bool(text: str, name: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingsError(f"{ENV_PREFIX}{name} must be true or false, got {text!r}")


def _namespaces(text: str | None) -> tuple[str, ...]:
    if text is None or text in ("", "*"):
        return ()
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


class _Source:
    """Flag value if given, else the environment variable, else the default."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def _raw(self, name: str) -> str | None:
        value = _env(self.environ, name)
        return value or None

    def text(self, flag: str | None, name: str, default: str) -> str:
        if flag is not None:
            return flag
        return self._raw(name) or default

    def integer(self, flag: int | None, name: str, default: int) -> int:
        if flag is not None:
            return flag
        raw = self._raw(name)
        return default if raw is None else int(_number(raw, name, int))

    def real(self, flag: float | None, name: str, default: float) -> float:
        if flag is not None:
            return flag
        raw = self._raw(name)
        return default if raw is None else float(_number(raw, name, float))

    def boolean(self, flag: bool | None, name: str, default: bool) -> bool:
        if flag is not None:
            return flag
        raw = self._raw(name)
        return default if raw is None else _bool(raw, name)


def parse(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `argv` (flags) over `environ` (defaults: os.environ)."""
    source = _Source(os.environ if environ is None else environ)
    args = _parser().parse_args(list(argv))
    defaults = Settings()
    base = defaults.runner

    if args.all_namespaces:
        namespaces: tuple[str, ...] = ()
    elif args.namespaces:
        namespaces = tuple(dict.fromkeys(args.namespaces))
    else:
        namespaces = _namespaces(_env(source.environ, "WATCH_NAMESPACES"))

    runner = dataclasses.replace(
        base,
        image=source.text(args.runner_image, "RUNNER_IMAGE", base.image),
        image_pull_policy=source.text(
            args.runner_image_pull_policy, "RUNNER_IMAGE_PULL_POLICY", base.image_pull_policy
        ),
        backup_service_account=source.text(
            args.backup_service_account, "BACKUP_SERVICE_ACCOUNT", base.backup_service_account
        ),
        restore_service_account=source.text(
            args.restore_service_account, "RESTORE_SERVICE_ACCOUNT", base.restore_service_account
        ),
    )
    log_level = "DEBUG" if args.verbose else source.text(
        args.log_level, "LOG_LEVEL", defaults.log_level
    ).upper()
    if log_level not in _LOG_LEVELS:
        raise SettingsError(f"log level must be one of {', '.join(_LOG_LEVELS)}")
    settings = Settings(
        namespaces=namespaces,
        runner=runner,
        metrics_port=source.integer(args.metrics_port, "METRICS_PORT", defaults.metrics_port),
        metrics_address=source.text(
            args.metrics_address, "METRICS_ADDRESS", defaults.metrics_address
        ),
        liveness_endpoint=source.text(args.liveness_endpoint, "LIVENESS", "") or None,
        standalone=source.boolean(args.standalone, "STANDALONE", defaults.standalone),
        peering_name=source.text(args.peering_name, "PEERING", defaults.peering_name),
        priority=source.integer(args.priority, "PRIORITY", defaults.priority),
        freshness_interval=source.real(
            args.freshness_interval, "FRESHNESS_INTERVAL", defaults.freshness_interval
        ),
        retention_interval=source.real(
            args.retention_interval, "RETENTION_INTERVAL", defaults.retention_interval
        ),
        rehydration_interval=source.real(
            args.rehydration_interval, "REHYDRATION_INTERVAL", defaults.rehydration_interval
        ),
        watch_timeout=source.real(args.watch_timeout, "WATCH_TIMEOUT", defaults.watch_timeout),
        workers=source.integer(args.workers, "WORKERS", defaults.workers),
        notify_timeout=source.real(
            args.notify_timeout, "NOTIFY_TIMEOUT", defaults.notify_timeout
        ),
        log_level=log_level,
    )
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if not 0 <= settings.metrics_port <= 65535:
        raise SettingsError(f"metrics port must be 0..65535, got {settings.metrics_port}")
    if settings.freshness_interval < 1:
        raise SettingsError(
            f"freshness interval must be at least 1 second, got {settings.freshness_interval:g}"
        )
    if settings.retention_interval < 60:
        raise SettingsError(
            f"retention interval must be at least 60 seconds, got {settings.retention_interval:g}"
        )
    if settings.rehydration_interval < 1:
        raise SettingsError(
            "rehydration interval must be at least 1 second, got "
            f"{settings.rehydration_interval:g}"
        )
    if settings.watch_timeout <= 0:
        raise SettingsError("watch timeout must be positive")
    if settings.workers < 1:
        raise SettingsError("workers must be at least 1")
    if settings.notify_timeout <= 0:
        raise SettingsError("notify timeout must be positive")
    if not settings.runner.image:
        raise SettingsError("the runner image must not be empty")
