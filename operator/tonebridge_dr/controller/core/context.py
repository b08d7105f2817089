"""What every handler needs, built once by `main` and passed in explicitly (no globals)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

from tonebridge_dr.controller.core.catalog import CatalogReader
from tonebridge_dr.controller.core.kube import Kube
from tonebridge_dr.controller.core.metrics import Metrics
from tonebridge_dr.controller.core.settings import Settings


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass
class Context:
    settings: Settings
    kube: Kube
    metrics: Metrics
    catalog: CatalogReader = dataclasses.field(default_factory=CatalogReader)
    clock: Callable[[], dt.datetime] = utcnow
