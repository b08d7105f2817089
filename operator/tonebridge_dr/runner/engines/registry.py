"""The engines the runner backs up and restores: one table, modules loaded on demand.

An engine is a package under `runner/engines/` whose `commands` module provides
the `Engine` functions; adding one is that package plus one line in `ENGINES`.
A Job runs one engine, and an engine's imports can take 100 ms, so nothing here
imports an engine's module until `command` asks for it, and only that one.

The names are those of `api.runner_contract.ENGINES` (a test checks both say the
same names and the same implemented verbs).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType, ModuleType
from typing import Any, Final, Literal, Protocol, runtime_checkable

Verb = Literal["backup", "restore", "restore-test"]
VERBS: Final[tuple[Verb, ...]] = ("backup", "restore", "restore-test")


@runtime_checkable
class Engine(Protocol):
    """What an engine's `commands` module provides (module-level functions).

    The runner CLI builds a sub-parser (with the shared `--repo` and `--json` on
    it), calls `add_<verb>_arguments(parser)`, later `run_<verb>(args)`, and prints
    the returned dict: the stable `--json` result and the termination message.
    Failures are raised as `errors.DRError`. An engine that implements only one
    verb leaves the other pair out (`command` then answers None for it).

    `restore-test` is optional (the functions `add_restore_test_arguments` and
    `run_restore_test`): an engine whose backups can be restore-tested provides them
    (api.runner_contract.EngineSpec.restore_test says which do).
    """

    def add_backup_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run_backup(self, args: argparse.Namespace) -> dict[str, Any]: ...

    def add_restore_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run_restore(self, args: argparse.Namespace) -> dict[str, Any]: ...


#: Engine name -> its commands module; a module that is not installed means no such engine.
ENGINES: Final[Mapping[str, str]] = MappingProxyType({
    "postgres": "tonebridge_dr.runner.engines.postgres.commands",
    "redis": "tonebridge_dr.runner.engines.redis.commands",
    "kubernetes": "tonebridge_dr.runner.engines.kubernetes.commands",
    "bucket": "tonebridge_dr.runner.engines.bucket.commands",
})
NAMES: Final[tuple[str, ...]] = tuple(ENGINES)


@dataclasses.dataclass(frozen=True)
class Command:
    """One verb of one engine."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]


def commands_module(name: str) -> ModuleType | None:
    """The commands module of engine `name`, imported now; None when it is not installed."""
    module = ENGINES[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name):
            raise  # the engine is there but one of its own imports is missing: say so
        return None


def command(name: str, verb: Verb) -> Command | None:
    """Engine `name`'s `verb` (imports its module); None when the engine is not
    installed or does not implement `verb`."""
    module = commands_module(name)
    function = verb.replace("-", "_")
    add = getattr(module, f"add_{function}_arguments", None)
    run = getattr(module, f"run_{function}", None)
    if add is None or run is None:
        return None
    return Command(add, run)
