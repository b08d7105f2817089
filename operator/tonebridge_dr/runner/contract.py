"""`tonebridge_dr.api.runner_contract` for the runner, without the rest of `tonebridge_dr.api`.

Use `from tonebridge_dr.runner.contract import runner_contract`: it is the very module
object `from tonebridge_dr.api import runner_contract` gives (tests check that).

Why not that import: `tonebridge_dr/api/__init__.py` imports every pydantic model of
the API, ~200 ms before the first line of work, paid by every Job and by every
slow-path wal-push (whose own imports take ~80 ms); the contract module itself needs
only the standard library. So while `api` is not yet loaded, the contract is loaded
from its file under its own name and `api/__init__` is left alone. Once `api` imports
its models lazily, this module becomes that one-line import.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["runner_contract"]

_NAME = "tonebridge_dr.api.runner_contract"


def _load() -> ModuleType:
    """The contract module, from sys.modules, by a normal import (when `tonebridge_dr.api`
    is loaded anyway), or from its file (registered in sys.modules, so it is loaded once)."""
    module = sys.modules.get(_NAME)
    if module is not None:
        return module
    if "tonebridge_dr.api" in sys.modules:
        return importlib.import_module(_NAME)
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        _NAME, os.path.join(package, "api", "runner_contract.py")
    )
    if spec is None or spec.loader is None:  # pragma: no cover - a broken installation
        return importlib.import_module(_NAME)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_NAME]
        raise
    return module


if TYPE_CHECKING:
    from tonebridge_dr.api import runner_contract
else:
    runner_contract = _load()
