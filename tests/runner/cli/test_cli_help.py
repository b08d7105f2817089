"""`--help` works for every command, in a fresh process as a user would run it, and lists
only engines this version implements."""

from __future__ import annotations

import argparse
import subprocess

import pytest

from tests.fixtures.pg_wal import WAL_COMMAND
from tonebridge_dr.api import runner_contract

COMMANDS = [
    [], ["backup"], ["restore"], ["backups"], ["backups", "list"], ["backups", "show"],
    ["backups", "verify"], ["backups", "prune"], ["backups", "archive"],
    ["backups", "rehydrate"], ["backups", "gc"], ["check"], ["wal-push"], ["wal-fetch"],
    ["wal-stream"], ["wal-status"], ["wal-prune"], ["wal-inspect"], ["restore-test"],
    ["restore-tests"], ["restore-tests", "list"], ["audit"], ["audit", "list"],
    ["audit", "prune"], ["drills"], ["drills", "list"], ["replicate"], ["wal-prefetch"],
    ["wal-pusher"],
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


def _verbs(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.add((*prefix, name))
                found |= _verbs(sub, (*prefix, name))
    return found


def test_every_verb_of_the_parser_is_in_the_help_test() -> None:
    """A new verb cannot be forgotten here: the list above covers what the parser has
    (engine sub-commands are generated from the contract)."""
    from tonebridge_dr.runner import cli

    engines = {spec.name for spec in runner_contract.ENGINES}
    wanted = {v for v in _verbs(cli.build_parser([])) if not (len(v) == 2 and v[1] in engines)}
    assert wanted <= {tuple(c) for c in COMMANDS}, wanted - {tuple(c) for c in COMMANDS}
