"""Physical restore: a base backup plus archived WAL, to a target time, LSN or the latest.

`restore_physical` works in two phases:

1. Plan (reads only; nothing is written when it fails): `plan` chooses the base
   backup and the recovery timeline and checks that the archive holds every WAL
   segment up to the target.
2. Restore: `restore` streams `base.tar` into the data directory, configures
   recovery and, when asked, runs the server until it is promoted.

Modules (each documents the behaviour it owns):
- `plan`: the target, the restore options, the planner (`plan_restore`) and
  RecoveryTargetUnreachable.
- `base`: `base.tar` streamed into an empty data directory.
- `settings`: restore_command and the recovery settings written to
  postgresql.auto.conf, the temporary run's command-line settings, and what is
  removed from postgresql.auto.conf after promotion.
- `server`: the temporary run (start, await promotion, clean stop), pg_controldata,
  and what the data directory and server log say once recovery ended.
- `verification`: whether recovery reached its plan (ENDED_EARLY_MARKER), and the
  SQL check of the promoted server.
- `restore`: `restore_physical`, the orchestration, and what its result reports.
"""

from tonebridge_dr.runner.engines.postgres.wal.pitr.base import extract_base
from tonebridge_dr.runner.engines.postgres.wal.pitr.plan import (
    BASE_OBJECT,
    DEFAULT_TIMEOUT,
    Plan,
    RecoveryTargetUnreachable,
    RestoreOptions,
    Target,
    parse_target,
    parse_time,
    plan_restore,
)
from tonebridge_dr.runner.engines.postgres.wal.pitr.restore import restore_physical
from tonebridge_dr.runner.engines.postgres.wal.pitr.server import controldata
from tonebridge_dr.runner.engines.postgres.wal.pitr.settings import (
    DEFAULT_PORT,
    RECOVERY_SETTINGS,
    WAL_COMMAND_ENV,
    needs_private_socket_dir,
    neutralise_recovery_settings,
    postmaster_options,
    recovery_settings,
    restore_command,
    run_settings,
    wal_command_prefix,
)
from tonebridge_dr.runner.engines.postgres.wal.pitr.verification import (
    ENDED_EARLY_MARKER,
    recovery_shortfall,
)

__all__ = [
    "BASE_OBJECT",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "ENDED_EARLY_MARKER",
    "RECOVERY_SETTINGS",
    "WAL_COMMAND_ENV",
    "Plan",
    "RecoveryTargetUnreachable",
    "RestoreOptions",
    "Target",
    "controldata",
    "extract_base",
    "needs_private_socket_dir",
    "neutralise_recovery_settings",
    "parse_target",
    "parse_time",
    "plan_restore",
    "postmaster_options",
    "recovery_settings",
    "recovery_shortfall",
    "restore_command",
    "restore_physical",
    "run_settings",
    "wal_command_prefix",
]
