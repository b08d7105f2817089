"""`bench/peers.py --quick`: every command of the peers (pgBackRest, barman-cloud) and of
ours still works, end to end, on a small data set (one round). Never skipped: .ci/run
installs pgbackrest and barman-cli-cloud (hack/install-deps.sh). Numbers are not judged
here (a smoke test on a shared machine); that every phase produced a result for every
tool is, and that our incremental after a clustered change stored less than our full.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.timeout(1200)


def test_peers_quick_runs_every_tool_through_every_phase(
    tmp_path: Path, postgres_runs_cli: None
) -> None:
    out = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "peers", "--quick", "--json-out", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=1100,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    for phase in ("full", "restore"):
        assert set(report[phase]) == {"ours", "pgbackrest", "barman"}
        for tool, samples in report[phase].items():
            assert len(samples) == 1 and samples[0]["wall"] > 0, (phase, tool)
    for tool in ("ours", "pgbackrest"):
        for change in ("scattered", "clustered"):
            assert report["incr"][f"{tool} ({change})"][0]["stored_mib"] > 0
    assert report["incr"]["ours (clustered)"][0]["stored_mib"] < report["full"]["ours"][0][
        "stored_mib"]
    methods = {"ours", "ours-light", "ours-walfast", "pgbackrest-sync", "pgbackrest-async",
               "barman"}
    assert set(report["wal"]["drain"]) == methods
    assert set(report["wal"]["load"]) == methods
    assert set(report["wal"]["fetch"]) == methods - {"pgbackrest-sync"}
    backlog = report["wal"]["backlog"]["ready"]
    assert all(d["segments"] == backlog for d in report["wal"]["drain"].values())
    assert all(f["segments"] == 4 for f in report["wal"]["fetch"].values())
    assert all(f["call_ms"]["median"] > 0 for f in report["wal"]["fetch"].values())
    assert report["versions"]["pgbackrest"].startswith("pgBackRest 2.")
    assert report["versions"]["barman-cloud"].startswith("barman-cloud-backup 3.")
