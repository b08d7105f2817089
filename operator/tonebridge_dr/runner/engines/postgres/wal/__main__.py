"""`python -m tonebridge_dr.runner.engines.postgres.wal VERB ...` (see commands.py)."""

import sys


def _main() -> int:
    from tonebridge_dr.runner.engines.postgres.wal import spool

    if sys.argv[1:2] == ["wal-fetch"]:
        return spool.fetch_main(sys.argv[1:])
    fast = spool.fast_main(sys.argv[1:])
    if fast is not None:
        return fast
    from tonebridge_dr.runner.engines.postgres.wal import commands

    return commands.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_main())
