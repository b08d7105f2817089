"""`python -m tonebridge_dr.runner.engines.postgres.wal VERB ...`: the runner's front door
(runner/cli.py), behind the import-light fast paths of wal-push / wal-fetch.

spool.py starts the background pusher and the prefetcher this way, and the light
entry point (`python .../wal/spool.py`) execs it for what the spool cannot answer.
"""

import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    """Run one verb as `tonebridge-dr` would; returns the exit code."""
    from tonebridge_dr.runner.engines.postgres.wal import spool

    args = list(argv)
    code = spool.light_main(args)
    if code is not None:
        return code
    from tonebridge_dr.runner import cli

    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
