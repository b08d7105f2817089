"""The chart's alerts and dashboard use the metric names the operator really exports
(operator/tonebridge_dr/controller/core/metrics.py, as served: counters end in _total),
and the dashboard is valid JSON whose panels all query something."""

from __future__ import annotations

import json
import re

from tests.fixtures import ROOT
from tonebridge_dr.controller.core.metrics import Metrics

CHART = ROOT / "charts" / "tonebridge-dr"
_NAME = re.compile(r"\btonebridge_dr_[a-z_]+\b")


def exported_names() -> set[str]:
    """Every sample name /metrics serves once each series has a value (the operator
    turns the *_created samples off)."""
    metrics = Metrics()
    metrics.backup_succeeded("ns", "p", finished_at=1.0, duration_seconds=2.0, size_bytes=3)
    metrics.backup_failed("ns", "p")
    metrics.catalog_read("ns", "p", ok=True, rpo_age_seconds=4.0, backups=1)
    metrics.restore_test_run("ns", "t", passed=True, duration_seconds=5.0, last_success=6.0)
    text = metrics.render().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line.startswith("tonebridge_dr_") and "_created" not in line.split("{")[0]}


def test_alerts_and_dashboard_use_exported_metrics() -> None:
    exported = exported_names()
    assert "tonebridge_dr_backup_failures_total" in exported  # how counters are served
    rules = (CHART / "templates" / "prometheusrule.yaml").read_text()
    dashboard = (CHART / "files" / "grafana-dashboard.json").read_text()
    for where, text in (("prometheusrule.yaml", rules), ("grafana-dashboard.json", dashboard)):
        used = set(_NAME.findall(text))
        assert used, f"{where} uses no tonebridge_dr_ metric"
        assert used <= exported, f"{where} uses metrics nobody exports: {sorted(used - exported)}"
    for alert in ("TonebridgeDRRPOMissed", "TonebridgeDRBackupFailing",
                  "TonebridgeDRRestoreTestFailing"):
        assert f"alert: {alert}" in rules


def test_dashboard_panels_query_series() -> None:
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] == "tonebridge-dr"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["targets"] and all(_NAME.search(t["expr"]) for t in panel["targets"]), panel
