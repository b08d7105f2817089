"""`tonebridge-dr operator`: run the kopf operator until SIGINT / SIGTERM.

Exit codes: 0 after a clean stop, 2 for bad settings, 1 when it cannot start (no
API server credentials, metrics port taken).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

import kopf
import prometheus_client

from tonebridge_dr.controller.backuppolicy import handlers as backuppolicy
from tonebridge_dr.controller.core import registration
from tonebridge_dr.controller.core import settings as settings_mod
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.controller.core.kind import KindDeclaration
from tonebridge_dr.controller.core.kube import Kube
from tonebridge_dr.controller.core.metrics import Metrics
from tonebridge_dr.controller.failoverplan import handlers as failoverplan
from tonebridge_dr.controller.restorerequest import handlers as restorerequest
from tonebridge_dr.controller.restoretest import handlers as restoretest

log = logging.getLogger("tonebridge_dr.controller")

#: Every kind this operator runs, each declared once in its package.
KINDS: tuple[KindDeclaration[Any, Any], ...] = (
    backuppolicy.KIND,
    restorerequest.KIND,
    failoverplan.KIND,
    restoretest.KIND,
)

# Libraries whose DEBUG output is noise (and may echo request bodies).
_QUIET = ("urllib3", "botocore", "boto3", "s3transfer", "kubernetes", "aiohttp.access")


class _RoutineFilter(logging.Filter):
    """Drops kopf's INFO line for every timer tick and watch event: with hundreds of
    policies they would drown everything else (failures are still logged)."""

    _ROUTINE = re.compile(r"^(Timer|Handler) '(monitor|run-now|job-event|engine)' succeeded\.$")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not self._ROUTINE.match(record.getMessage())


def _logging(level: str) -> None:
    kopf.configure(
        debug=level == "DEBUG",
        verbose=level == "DEBUG",
        quiet=level in ("WARNING", "ERROR"),
        log_format=kopf.LogFormat.PLAIN,
    )
    logging.getLogger().setLevel(level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RoutineFilter())
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_mod.parse(list(sys.argv[1:] if argv is None else argv))
    except settings_mod.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    _logging(settings.log_level)
    try:
        kube = Kube.connect(pool_size=max(4, settings.workers))
    except Exception as exc:  # kubernetes.config raises several unrelated types
        print(f"error: cannot load Kubernetes credentials: {exc}", file=sys.stderr)
        return 1
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    metrics = Metrics()
    try:
        metrics.serve(settings.metrics_address, settings.metrics_port)
    except OSError as exc:
        print(f"error: cannot serve metrics on port {settings.metrics_port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    ctx = Context(settings=settings, kube=kube, metrics=metrics)
    registry = kopf.OperatorRegistry()
    registration.register(registry, ctx, KINDS)
    kopf_settings = kopf.OperatorSettings()
    registration.configure(kopf_settings, ctx, KINDS)
    # Watching named namespaces needs no cluster-scoped reads: kopf would otherwise list
    # and watch every namespace and CRD, which the chart's per-namespace Roles do not
    # allow (it retries each 403 for a minute). CRDs are found once, at start.
    kopf_settings.scanning.disabled = not settings.clusterwide
    scope = "all namespaces" if settings.clusterwide else ", ".join(settings.namespaces)
    log.info(
        "starting: watching %s, runner image %s, %s, freshness every %gs",
        scope, settings.runner.image,
        "standalone" if settings.standalone else f"peering {settings.peering_name!r}",
        settings.freshness_interval,
    )
    try:
        kopf.run(
            registry=registry,
            settings=kopf_settings,
            standalone=settings.standalone,
            priority=settings.priority,
            peering_name=None if settings.standalone else settings.peering_name,
            clusterwide=settings.clusterwide,
            namespaces=list(settings.namespaces),
            liveness_endpoint=settings.liveness_endpoint,
        )
    finally:
        metrics.close()
        kube.close()
    return 0
