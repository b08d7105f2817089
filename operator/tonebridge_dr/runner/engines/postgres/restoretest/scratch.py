"""Scratch targets of a restore test: where the backup is restored, and how it is removed.

Two kinds, each a `restoretest.scratch.Scratch`: a context manager whose exit removes
everything the test created, whatever happened (success, failed checks, a corrupt backup,
SIGTERM):

`ScratchDatabase` (`--scratch-dsn`): a database on an existing server. `inspect`
(before anything is read from the repository) connects: a database holding user
relations or large objects is refused with TargetNotEmpty and never touched; a
missing one is created (`prepare`, like the source: encoding and locale) and
dropped afterwards (`DROP DATABASE ... WITH (FORCE)`); an existing empty one is
restored into and afterwards emptied again: every object whose OID was not there
before (objects created after initdb have OIDs >= 16384) is dropped, event
triggers first, then extensions and schemas, then the rest, large objects last,
and the test checks nothing new is left.

`ScratchInstance` (`--scratch-instance DIR`): a private PostgreSQL with its data
directory in `DIR/data`. It listens on no TCP address at all, only on a Unix
socket in a fresh 0700 folder owned by its account (like pitr's temporary run),
and trusts connections there only, so nothing else on the host or in the pod can
reach the restored data and no password is needed. When the runner is root, the
cluster belongs to and runs as `run_as` (default postgres), as pitr does. For a
logical backup `start_empty` runs initdb (the backup's major version when
installed, `--auth-local=trust --auth-host=reject`) and starts it; for a physical
one `physical_options` are pitr's options (extract, recovery to the end of the
archive, promotion) with `hba_file` pointing at the same trust-the-socket-only
rules. `inspect` refuses a DIR that is not empty (TargetNotEmpty); the exit stops
the server (immediate shutdown) and removes DIR's contents (DIR too when it did
not exist) and the socket folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import catalog, connection, restore, tools
from tonebridge_dr.runner.engines.postgres.wal import pitr
from tonebridge_dr.runner.engines.postgres.wal.pitr import server as pitr_server
from tonebridge_dr.runner.engines.restoretest.scratch import (
    Scratch,
    ScratchFolder,
    signals_deferred,
)
from tonebridge_dr.runner.repository.manifest import Manifest

log = logging.getLogger(__name__)

#: PostgreSQL's FirstNormalObjectId: what initdb made has smaller OIDs.
FIRST_USER_OID = 16384
#: The superuser of a logical scratch instance.
INSTANCE_USER = "postgres"
#: The scratch instance's sockets are named after this port; it listens on no TCP port.
INSTANCE_PORT = pitr.DEFAULT_PORT
_TRUST_SOCKET_ONLY = (
    "# tonebridge-dr restore test: only the private Unix socket, trusted\n"
    "local all all trust\n"
)


# --- a database on an existing server ---------------------------------------------------------
#: Catalogs whose rows are objects of one database that a restore can create, in the order
#: they are dropped (what could interfere with dropping goes first; what CASCADE removes with
#: something earlier is simply gone when its turn comes). (catalog, extra condition)
_OBJECT_CATALOGS: tuple[tuple[str, str], ...] = (
    ("pg_event_trigger", ""),
    ("pg_subscription", "AND subdbid = (SELECT oid FROM pg_catalog.pg_database "
     "WHERE datname = pg_catalog.current_database())"),
    ("pg_publication", ""),
    ("pg_extension", ""),
    ("pg_namespace", ""),
    ("pg_class", "AND relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')"),
    ("pg_proc", ""),
    ("pg_type", "AND typrelid = 0 AND typcategory <> 'A'"),
    ("pg_collation", ""),
    ("pg_conversion", ""),
    ("pg_operator", ""),
    ("pg_opclass", ""),
    ("pg_opfamily", ""),
    ("pg_ts_config", ""),
    ("pg_ts_dict", ""),
    ("pg_ts_parser", ""),
    ("pg_ts_template", ""),
    ("pg_statistic_ext", ""),
    ("pg_cast", ""),
    ("pg_foreign_server", ""),
    ("pg_foreign_data_wrapper", ""),
    ("pg_language", ""),
    ("pg_am", ""),
    ("pg_largeobject_metadata", ""),
)
#: The catalog that names an object's class where it is not the one listing it.
_CLASS_OF = {"pg_largeobject_metadata": "pg_largeobject"}
_OBJECTS_SQL = " UNION ALL ".join(
    f"SELECT {n} AS rank, 'pg_catalog.{_CLASS_OF.get(name, name)}'::regclass::oid AS classid, "
    f"oid AS objid FROM pg_catalog.{name} WHERE oid >= {FIRST_USER_OID} {extra}"
    for n, (name, extra) in enumerate(_OBJECT_CATALOGS)
)
#: pg_identify_object's type -> the words of its DROP statement, where they differ.
_DROP_WORDS = {
    "composite type": "TYPE",
    "foreign-data wrapper": "FOREIGN DATA WRAPPER",
    "statistics object": "STATISTICS",
}


def _objects(conn: psycopg.Connection[Any]) -> dict[tuple[int, int], int]:
    """(classid, objid) -> drop rank of every object created after initdb."""
    rows = conn.execute(_OBJECTS_SQL).fetchall()
    return {(int(classid), int(objid)): int(rank) for rank, classid, objid in rows}


class ScratchDatabase(Scratch):
    """A scratch database on an existing server (see the module docstring)."""

    kind = "database"

    def __init__(self, info: connection.ConnInfo) -> None:
        self.info = info
        self.exists = False
        self.created = False
        self.major: int | None = None
        self._before: set[tuple[int, int]] = set()

    def describe(self) -> str:
        return self.info.masked()

    def inspect(self) -> None:
        """Refuse a database with data; remember what an existing empty one holds."""
        try:
            conn = connection.connect(self.info, autocommit=True, purpose="scratch database")
        except connection.MissingDatabase:
            self.exists = False
            log.info("scratch database %s does not exist: the test creates it", self.describe())
            return
        with conn:
            count = catalog.user_relation_count(conn)
            if count:
                raise errors.TargetNotEmpty(
                    f"scratch database {self.info.dbname!r} is not empty ({count} user relations "
                    "or large objects); a restore test restores only into an empty database or "
                    "one it creates itself, and never touches one with data"
                )
            self.exists = True
            self.major = conn.info.server_version // 10000
            self._before = set(_objects(conn))

    def prepare(self, manifest: Manifest) -> restore.Target:
        """Create the database when it does not exist; the restore target."""
        if not self.exists:
            with signals_deferred():  # SIGTERM must not fall between CREATE and knowing it
                restore.create_database(self.info, manifest)
                self.created = True
        if self.major is None:
            with connection.connect(self.info, purpose="scratch database") as conn:
                self.major = conn.info.server_version // 10000
        return restore.Target(info=self.info, major=self.major, created=self.created)

    def check_info(self) -> connection.ConnInfo:
        return self.info

    def cleanup(self) -> None:
        if self.created:
            self._drop()
        elif self.exists:
            self._empty()

    def _drop(self) -> None:
        name = sql.Identifier(self.info.dbname)
        with restore.maintenance(self.info) as conn:
            force = conn.info.server_version >= 130000
            statement = sql.SQL("DROP DATABASE IF EXISTS {}{}").format(
                name, sql.SQL(" WITH (FORCE)") if force else sql.SQL("")
            )
            conn.execute(statement)
        self.created = False
        log.info("dropped the scratch database %s", self.describe())

    def _empty(self) -> None:
        """Drop every object the restore added to the existing database."""
        with connection.connect(self.info, autocommit=True, purpose="scratch database") as conn:
            added = sorted(
                ((rank, key) for key, rank in _objects(conn).items() if key not in self._before),
                key=lambda item: (item[0], -item[1][1]),
            )
            for _rank, (classid, objid) in added:
                self._drop_object(conn, classid, objid)
            left = [key for key in _objects(conn) if key not in self._before]
            if left:
                names = ", ".join(_describe(conn, c, o) for c, o in left[:5])
                raise errors.ToolError(
                    f"{len(left)} restored objects are still in scratch database "
                    f"{self.info.dbname!r} (e.g. {names})"
                )
        if added:
            log.info(
                "emptied the scratch database %s again (%d objects dropped)",
                self.describe(),
                len(added),
            )

    def _drop_object(self, conn: psycopg.Connection[Any], classid: int, objid: int) -> None:
        row = conn.execute(
            "SELECT type, identity FROM pg_catalog.pg_identify_object(%s, %s, 0)",
            (classid, objid),
        ).fetchone()
        if row is None or row[0] is None:
            return  # gone with something dropped before it
        kind, identity = str(row[0]), str(row[1])
        try:
            if kind == "large object":
                conn.execute("SELECT pg_catalog.lo_unlink(%s)", (objid,))
            elif kind == "subscription":
                for text in (
                    "ALTER SUBSCRIPTION {} DISABLE",
                    "ALTER SUBSCRIPTION {} SET (slot_name = NONE)",
                    "DROP SUBSCRIPTION IF EXISTS {}",
                ):
                    conn.execute(sql.SQL(text).format(sql.SQL(identity)))
            else:
                words = _DROP_WORDS.get(kind, kind.upper())
                conn.execute(
                    sql.SQL("DROP {} IF EXISTS {} CASCADE").format(
                        sql.SQL(words), sql.SQL(identity)
                    )
                )
        except psycopg.Error as exc:
            # Dropping its owner may have taken it already; what is left is reported after.
            log.debug("dropping %s %s: %s", kind, identity, exc)


def _describe(conn: psycopg.Connection[Any], classid: int, objid: int) -> str:
    row = conn.execute(
        "SELECT pg_catalog.pg_describe_object(%s, %s, 0)", (classid, objid)
    ).fetchone()
    return str(row[0]) if row and row[0] else f"{classid}/{objid}"


# --- a private server -------------------------------------------------------------------------
class ScratchInstance(Scratch):
    """A private PostgreSQL in `folder` (see the module docstring)."""

    kind = "instance"

    def __init__(self, folder: Path, *, run_as: str = "postgres", timeout: float = 3600.0) -> None:
        self.scratch_folder = ScratchFolder(folder)
        self.folder = self.scratch_folder.path
        self.data_dir = self.folder / "data"
        self.run_as = run_as
        self.timeout = timeout
        #: The role the runner connects as (a logical instance's superuser; for a physical
        #: backup a role of the backed-up cluster).
        self.user = INSTANCE_USER
        self.account: pwd.struct_passwd | None = None
        self.socket_dir: Path | None = None
        self.major: int | None = None
        self._hba_file = self.folder / "pg_hba.restore-test.conf"

    def describe(self) -> str:
        return str(self.folder)

    def inspect(self) -> None:
        """Refuse a DIR with anything in it; know the account that runs the server."""
        self.account = pitr_server.user(self.run_as)
        self.scratch_folder.inspect()

    def _setup(self) -> None:
        """DIR (created when missing) and the private socket folder."""
        self.scratch_folder.create()
        self.socket_dir = pitr_server.private_socket_dir(self.account)

    def _give(self, path: Path) -> None:
        if self.account is not None:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def _write_hba(self) -> Path:
        self._hba_file.write_text(_TRUST_SOCKET_ONLY)
        os.chmod(self._hba_file, 0o600)
        self._give(self._hba_file)
        return self._hba_file

    def info(self, dbname: str, user: str = INSTANCE_USER) -> connection.ConnInfo:
        """How the runner reaches the instance: its private socket, as `user`."""
        assert self.socket_dir is not None
        return connection.ConnInfo(
            {"host": str(self.socket_dir), "port": INSTANCE_PORT, "user": user, "dbname": dbname}
        )

    # logical backups: a fresh cluster ---------------------------------------------------
    def start_empty(self, major: int | None) -> int:
        """initdb and start an empty cluster; returns its major version."""
        self._setup()
        initdb = tools.tool("initdb", major)
        installed = tools.major_of(tools.version(initdb)) or major
        if installed is None:
            raise errors.ToolError(f"cannot tell the PostgreSQL version of {initdb}")
        self.major = installed
        self.data_dir.mkdir(mode=0o700)
        self._give(self.data_dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        try:
            proc = subprocess.run(
                [initdb, "-D", str(self.data_dir), "-U", INSTANCE_USER, "--auth-local=trust",
                 "--auth-host=reject", "-E", "UTF8", "--locale=C"],
                capture_output=True,
                text=True,
                env=env,
                check=False,
                **_as_user(self.account),
            )
        except OSError as exc:
            raise errors.ToolError(f"cannot run {initdb} as {self.run_as}: {exc}") from None
        if proc.returncode != 0:
            raise errors.ToolError(
                f"initdb of the scratch instance failed: {_last_line(proc.stderr)}"
            )
        log.info("initialised a scratch PostgreSQL %s cluster in %s", self.major, self.data_dir)
        assert self.socket_dir is not None
        run = {
            "unix_socket_directories": str(self.socket_dir),
            "listen_addresses": "",
            "port": INSTANCE_PORT,
            "logging_collector": "off",
            "log_destination": "stderr",
            "lc_messages": "C",
        }
        log_file = self.data_dir / "log" / "tonebridge-dr-restore-test.log"
        server = pitr_server.Server(self.data_dir, self.major, self.account, "", log_file, run)
        server.start(self.timeout)
        return installed

    # physical backups: pitr ------------------------------------------------------------
    def physical_options(
        self,
        backup_id: str,
        dbname: str,
        user: str,
        decrypt_key: Path | None,
        passphrase: str | None,
    ) -> pitr.RestoreOptions:
        """pitr's options: the backup, all archived WAL, start and wait for promotion, checked
        over the private socket; the server keeps running for the checks."""
        self._setup()
        hba = self._write_hba()
        return pitr.RestoreOptions(
            data_dir=self.data_dir,
            target=pitr.Target("latest"),
            backup_id=backup_id,
            start=True,
            stop_after=False,
            run_as=self.run_as,
            decrypt_key=decrypt_key,
            passphrase=passphrase,
            # The backed-up cluster's own pg_hba.conf and TLS files are of another host.
            settings={"hba_file": str(hba), "ssl": "off"},
            dsn=self.info(dbname, user).conninfo(),
            timeout=self.timeout,
        )

    def cleanup(self) -> None:
        if self.data_dir.exists():
            pitr_server.shut_down(self.data_dir, self.major or _major(self.data_dir), self.account)
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None
        self.scratch_folder.empty()
        log.info("removed the scratch instance in %s", self.folder)


def _as_user(account: pwd.struct_passwd | None) -> dict[str, Any]:
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _major(data_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((data_dir / "PG_VERSION").read_text().strip().split(".")[0])
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
