"""The one `tonebridge-dr` command.

`operator` and `sandbox` live outside the runner (they need kopf / the control
plane); every other verb is the runner's, which is what backup and restore Jobs
run. Imports are lazy so a Job never loads kopf.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verb = args[0] if args else ""
    if verb in ("wal-push", "wal-fetch"):
        # PostgreSQL runs these once per WAL file: answer from the spool (files already
        # pushed ahead / prefetched) before importing anything heavy.
        from tonebridge_dr.runner.engines.postgres.wal import spool

        fast = spool.fast_main(args)
        if fast is not None:
            return fast
    if verb == "sandbox":
        from tonebridge_dr.sandbox import cli as sandbox_cli

        return sandbox_cli.main(args[1:])
    if verb == "operator":
        from tonebridge_dr.controller import main as controller_main

        return controller_main.main(args[1:])
    from tonebridge_dr.runner import cli as runner_cli

    return runner_cli.main(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
