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
        # pushed ahead / prefetched) before importing anything heavy; wal-fetch entirely.
        code = _light_main(args)
        if code is not None:
            return code
    if verb == "sandbox":
        from tonebridge_dr.sandbox import cli as sandbox_cli

        return sandbox_cli.main(args[1:])
    if verb == "operator":
        from tonebridge_dr.controller import main as controller_main

        return controller_main.main(args[1:])
    from tonebridge_dr.runner import cli as runner_cli

    return runner_cli.main(args)


def _light_main(args: list[str]) -> int | None:
    """`spool.light_main`; restore_command: even an import that fails must exit 255
    (runner_contract.WAL_FETCH_ABORT), never 1 ("not found")."""
    try:
        from tonebridge_dr.runner.engines.postgres.wal import spool
    except BaseException as exc:  # see spool.fetch_main
        if args[0] != "wal-fetch":
            raise
        sys.stderr.write(f"wal-fetch: cannot load the runner: {exc} (recovery stops here)\n")
        return 255
    return spool.light_main(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
