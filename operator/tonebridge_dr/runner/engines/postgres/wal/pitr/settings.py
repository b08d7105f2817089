"""The settings of a restored cluster: those written to postgresql.auto.conf for recovery,
those of the temporary run (its command line only), and their removal after promotion.

The temporary run: what only fits the server we start here goes on its command
line (`pg_ctl -o`), never into postgresql.auto.conf, so none of it sticks to the
next server started on the volume (`postmaster.opts`, which records that command
line, is removed after `stop_after`). The backed-up cluster's own
`unix_socket_directories`, `listen_addresses` and `port` name folders and
addresses of the source machine (in a restore pod the socket folder does not
exist and PostgreSQL fails with "could not create lock file"), so the run gets:
- `unix_socket_directories`: a private temporary folder (0700, owned by the
  server's account; removed after `stop_after`), or the folder a DSN's `host=/path`
  names;
- `listen_addresses`: the DSN's host (so the check can connect), else '' (Unix
  socket only: nothing outside can reach a server that is being recovered);
- `port`: the DSN's port, else 5432;
- `logging_collector = off`, `log_destination = stderr`, `lc_messages = C`: the
  whole server log goes to `log_file`, in words this package can read.
A name given with `settings` is left to postgresql.auto.conf (the caller asked
for it to stay).

What the promoted data directory keeps: recovery.signal is gone (PostgreSQL
removes it when it promotes), so restore_command and the recovery_target_*
settings could only matter again if someone created recovery.signal or
standby.signal by hand (or copied the volume with pg_basebackup, which copies
postgresql.auto.conf to the copy). They are removed from postgresql.auto.conf
once the server is promoted (`RECOVERY_SETTINGS`, including any the backed-up
cluster had there), with a comment saying so; `archive_mode = 'off'` and the
`settings` given stay. postgresql.conf is never edited.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys
from pathlib import Path

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres.wal import naming
from tonebridge_dr.runner.engines.postgres.wal.pitr.plan import Plan, RestoreOptions

#: The command restore_command / archive_command start (before the verb).
WAL_COMMAND_ENV = "TONEBRIDGE_DR_WAL_COMMAND"
_SETTING_RE = re.compile(r"[a-z_][a-z0-9_.]*", re.ASCII)
#: Settings that only act while recovery.signal / standby.signal exist; removed from
#: postgresql.auto.conf once the restored server is promoted.
RECOVERY_SETTINGS = frozenset(
    {
        "restore_command",
        "recovery_end_command",
        "recovery_target",
        "recovery_target_action",
        "recovery_target_inclusive",
        "recovery_target_lsn",
        "recovery_target_name",
        "recovery_target_time",
        "recovery_target_timeline",
        "recovery_target_xid",
    }
)
#: The temporary run's server log goes to our log file, in words we can read.
_RUN_LOGGING = {"logging_collector": "off", "log_destination": "stderr", "lc_messages": "C"}
DEFAULT_PORT = "5432"
_CONF_LINE_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(?:=|\s)")


def conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def walfast_path() -> str | None:
    """The compiled front door (wal/walfast.c) installed next to this Python (`make venv`,
    the image), if any."""
    from tonebridge_dr.runner.engines.postgres.wal import spool

    path = os.path.join(os.path.dirname(sys.executable), spool.WALFAST_NAME)
    return path if os.access(path, os.X_OK) else None


def wal_command_prefix(explicit: str | None = None) -> str:
    """How PostgreSQL calls us: `explicit`, else $TONEBRIDGE_DR_WAL_COMMAND, else the light
    entry point (`<this python> .../wal/spool.py`: a prefetched segment is answered by
    an interpreter start and a rename; anything else execs the full command), behind
    the compiled front door when it is installed (a prefetched segment then costs a
    fork/exec and a rename; anything else execs the light entry point)."""
    from tonebridge_dr.runner.engines.postgres.wal import spool

    if explicit or os.environ.get(WAL_COMMAND_ENV):
        return explicit or os.environ[WAL_COMMAND_ENV]
    light = f"{shlex.quote(sys.executable)} {shlex.quote(spool.__file__)}"
    walfast = walfast_path()
    return f"{shlex.quote(walfast)} {light}" if walfast else light


def restore_command(repo_url: str, options: RestoreOptions) -> str:
    parts = [wal_command_prefix(options.wal_command), "wal-fetch", "--repo", shlex.quote(repo_url)]
    if options.decrypt_key is not None:
        parts += ["--decrypt-key", shlex.quote(str(options.decrypt_key))]
    parts += ["--allow-partial", "%f", "%p"]
    return " ".join(parts)


def recovery_settings(repo_url: str, options: RestoreOptions, plan: Plan) -> dict[str, str]:
    settings = {"restore_command": restore_command(repo_url, options)}
    target = options.target
    if target.kind == "xid" and target.xid is not None:
        # Stop right before the transaction's commit: it and everything after stay out.
        settings["recovery_target_xid"] = str(target.xid)
        settings["recovery_target_inclusive"] = "false"
    elif target.time is not None:
        settings["recovery_target_time"] = target.time.isoformat(sep=" ")
    elif target.lsn is not None:
        settings["recovery_target_lsn"] = naming.format_lsn(target.lsn)
    settings["recovery_target_action"] = "promote"
    settings["recovery_target_timeline"] = (
        "latest" if options.target_timeline is None else str(options.target_timeline)
    )
    if not options.keep_archiving:
        settings["archive_mode"] = "off"
    for key, value in options.settings.items():
        settings[key] = value
    return settings


def check_settings(settings: dict[str, str]) -> None:
    for key in settings:
        if not _SETTING_RE.fullmatch(key):
            raise errors.UsageError(f"invalid PostgreSQL setting name {key!r}")


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    """Where the verification DSN expects the server."""

    socket_dir: str | None = None
    listen: str | None = None
    port: str | None = None


def dsn_endpoint(dsn: str | None) -> _Endpoint:
    """UsageError for a malformed DSN (checked before anything is written)."""
    if not dsn:
        return _Endpoint()
    from tonebridge_dr.runner.engines.postgres import connection

    params = connection.ConnInfo.parse(dsn).params
    host = params.get("host") or ""
    folder = host if host.startswith("/") else None
    tcp = params.get("hostaddr") or (host if host and folder is None else None)
    return _Endpoint(folder, tcp, params.get("port"))


def needs_private_socket_dir(options: RestoreOptions) -> bool:
    """True when neither `settings` nor the DSN say where the run's sockets go."""
    return (
        "unix_socket_directories" not in options.settings
        and dsn_endpoint(options.dsn).socket_dir is None
    )


def _list_item(folder: str) -> str:
    """One element of a PostgreSQL list setting (double-quoted when it has to be)."""
    if re.search(r'[\s,"]', folder):
        return '"' + folder.replace('"', '""') + '"'
    return folder


def run_settings(options: RestoreOptions, private_dir: Path | None) -> dict[str, str]:
    """The settings of the temporary run, for its command line only (module docstring).

    Names given in `options.settings` are left out: postgresql.auto.conf has them.
    `private_dir` is the sockets' folder unless the DSN names one.
    """
    endpoint = dsn_endpoint(options.dsn)
    given = options.settings
    run: dict[str, str] = {}
    if "unix_socket_directories" not in given:
        folder = endpoint.socket_dir or (str(private_dir) if private_dir is not None else None)
        if folder is None:
            raise errors.UsageError("the restored server needs a folder for its sockets")
        run["unix_socket_directories"] = _list_item(folder)
    if "listen_addresses" not in given:
        run["listen_addresses"] = endpoint.listen or ""
    if "port" not in given:
        run["port"] = endpoint.port or DEFAULT_PORT
    for key, value in _RUN_LOGGING.items():
        if key not in given:
            run[key] = value
    return run


def postmaster_options(settings: dict[str, str]) -> str:
    """`pg_ctl -o` text (pg_ctl hands it to /bin/sh): `-c name=value` per setting."""
    return " ".join(f"-c {shlex.quote(f'{key}={value}')}" for key, value in settings.items())


def neutralise_recovery_settings(data_dir: Path) -> list[str]:
    """Remove `RECOVERY_SETTINGS` from postgresql.auto.conf of a promoted cluster.

    Returns the names removed (sorted). Idempotent; the file is replaced atomically and
    keeps its mode and owner; a comment records what was removed. Other lines
    (archive_mode, the settings given with --set, the source's own) are kept as written.
    """
    conf = data_dir / "postgresql.auto.conf"
    try:
        lines = conf.read_text().splitlines(keepends=True)
        before = conf.stat()
    except FileNotFoundError:
        return []
    kept: list[str] = []
    removed: set[str] = set()
    for line in lines:
        match = _CONF_LINE_RE.match(line)
        if match is not None and match.group(1).lower() in RECOVERY_SETTINGS:
            removed.add(match.group(1).lower())
            continue
        kept.append(line)
    if not removed:
        return []
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    names = sorted(removed)
    kept.append(
        f"# tonebridge-dr: recovery finished and the server was promoted; removed "
        f"{', '.join(names)} (they would only act again under recovery.signal or "
        "standby.signal)\n"
    )
    scratch = conf.with_name(f"{conf.name}.tonebridge-dr")
    scratch.write_text("".join(kept))
    os.chmod(scratch, before.st_mode & 0o777)
    if os.geteuid() == 0:
        os.chown(scratch, before.st_uid, before.st_gid)
    os.replace(scratch, conf)
    return names

