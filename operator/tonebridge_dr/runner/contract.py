"""`tonebridge_dr.api.runner_contract`, the one module of `api` the runner reads.

`tonebridge_dr.api` loads its models lazily, so this import costs only the contract
module (standard library), not pydantic: every Job and every slow-path wal-push pays it.
"""

from __future__ import annotations

from tonebridge_dr.api import runner_contract

__all__ = ["runner_contract"]
