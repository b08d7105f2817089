"""`--help` works for every command, in a fresh process as a user would run it, and lists
only engines this version implements."""

from __future__ import annotations

import subprocess

import pytest

from tests.fixtures.pg_wal import WAL_COMMAND
from tonebridge_dr.api import runner_contract

COMMANDS = [
    [], ["backup"], ["restore"], ["backups"], ["backups", "list"], ["backups", "show"],
    ["backups", "verify"], ["backups", "prune"], ["check"], ["wal-push"], ["wal-fetch"],
    ["wal-stream"], ["wal-status"], ["wal-prune"], ["restore-test"], ["restore-tests"],
    ["restore-tests", "list"],
    *([verb, spec.name] for spec in runner_contract.ENGINES
      for verb in ("backup", "restore", "restore-test") if getattr(spec, verb.replace("-", "_"))),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "tonebridge-dr")
def test_help_works(command: list[str]) -> None:
    proc = subprocess.run([WAL_COMMAND, *command, "--help"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and proc.stderr == ""


@pytest.mark.parametrize("verb", ["backup", "restore", "restore-test"])
def test_help_lists_only_implemented_engines(verb: str) -> None:
    out = subprocess.run([WAL_COMMAND, verb, "--help"], capture_output=True, text=True,
                         check=True).stdout
    for spec in runner_contract.ENGINES:
        implemented = getattr(spec, verb.replace("-", "_"))
        assert (f"{verb} {spec.name}" in out) == implemented, spec.name
