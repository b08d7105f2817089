"""What a database holds: user tables, their keys and foreign keys (read-only queries).

Shared by backup (which records the table list in the manifest) and restore
(which checks that a target is empty, or that a table to repair has a primary key).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import psycopg

from tonebridge_dr.runner import errors

# Relations of extensions (pg_depend deptype 'e') are the extension's business, not the
# user's: an installed extension must not make a database look "not empty".
_USER_REL = """
    c.relnamespace = n.oid
    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg\\_toast%'
    AND n.nspname NOT LIKE 'pg\\_temp\\_%'
    AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_depend d
        WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
    )
"""


@dataclasses.dataclass(frozen=True, order=True)
class TableName:
    schema: str
    name: str

    @property
    def qualified(self) -> str:
        """`schema.name` for messages and manifests (not SQL: use `sql()` there)."""
        return f"{self.schema}.{self.name}"

    def sql(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    def pattern(self) -> str:
        """A pg_dump `--table` pattern that matches exactly this table."""
        return self.sql()  # double quotes make every character literal in patterns

    def as_dict(self) -> dict[str, str]:
        return {"schema": self.schema, "name": self.name}


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def split_table_arg(value: str) -> tuple[str | None, str]:
    """`schema.table`, `"My Schema"."T.1"` or `table` -> (schema or None, table)."""
    value = value.strip()
    parts: list[str] = []
    token = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^".]+))\s*(\.|$)')
    pos = 0
    while pos < len(value):
        match = token.match(value, pos)
        if match is None or match.end() == pos:
            raise errors.UsageError(f"invalid table name {value!r}: use table or schema.table")
        parts.append(
            match.group(1).replace('""', '"') if match.group(1) is not None else match.group(2)
        )
        pos = match.end()
        if match.group(3) == "." and pos >= len(value):
            raise errors.UsageError(f"invalid table name {value!r}: use table or schema.table")
    if len(parts) == 1:
        return None, parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise errors.UsageError(f"invalid table name {value!r}: use table or schema.table")


def user_tables(conn: psycopg.Connection[Any]) -> list[tuple[TableName, int]]:
    """Ordinary and partitioned tables the user created with their OIDs, by schema and name."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname, c.oid FROM pg_catalog.pg_class c, pg_catalog.pg_namespace n "
        f"WHERE c.relkind IN ('r', 'p') AND {_USER_REL} ORDER BY 1, 2"
    ).fetchall()
    return [(TableName(str(schema), str(name)), int(oid)) for schema, name, oid in rows]


def describe_tables(
    conn: psycopg.Connection[Any], tables: list[tuple[TableName, int]]
) -> list[dict[str, Any]]:
    """Manifest entries for `tables`: name, OID, partitions and foreign keys.

    OIDs are what a pg_dump archive's TOC lists, so a restore finds a table's
    entries without parsing names; foreign keys carry their constraint OID and the
    table they reference, so a restore knows which ones it can recreate.
    """
    oids = [oid for _, oid in tables]
    fk_rows = conn.execute(
        "SELECT con.conrelid, con.oid, con.conname, rn.nspname, rc.relname, rc.oid "
        "FROM pg_catalog.pg_constraint con "
        "JOIN pg_catalog.pg_class rc ON rc.oid = con.confrelid "
        "JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace "
        "WHERE con.contype = 'f' AND con.conrelid = ANY(%s) ORDER BY 1, 3",
        (oids,),
    ).fetchall()
    fks: dict[int, list[dict[str, Any]]] = {}
    for conrelid, con_oid, conname, ref_schema, ref_name, ref_oid in fk_rows:
        fks.setdefault(int(conrelid), []).append(
            {
                "constraint": str(conname),
                "oid": int(con_oid),
                "references": {
                    "schema": str(ref_schema),
                    "name": str(ref_name),
                    "oid": int(ref_oid),
                },
            }
        )
    part_rows = conn.execute(
        "SELECT p.oid, n.nspname, c.relname, c.oid FROM pg_catalog.pg_class p "
        "CROSS JOIN LATERAL pg_catalog.pg_partition_tree(p.oid) t "
        "JOIN pg_catalog.pg_class c ON c.oid = t.relid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE p.oid = ANY(%s) AND p.relkind = 'p' AND t.level > 0 ORDER BY 1, t.level, 2, 3",
        (oids,),
    ).fetchall()
    parts: dict[int, list[dict[str, Any]]] = {}
    for parent, schema, name, oid in part_rows:
        parts.setdefault(int(parent), []).append(
            {"schema": str(schema), "name": str(name), "oid": int(oid)}
        )
    entries: list[dict[str, Any]] = []
    for table, oid in tables:
        entry: dict[str, Any] = {**table.as_dict(), "oid": oid}
        if oid in parts:
            entry["partitions"] = parts[oid]
        entry["foreign_keys"] = fks.get(oid, [])
        entries.append(entry)
    return entries


def user_relation_count(conn: psycopg.Connection[Any]) -> int:
    """Tables, views, sequences, materialized views and foreign tables the user created."""
    row = conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_class c, pg_catalog.pg_namespace n "
        f"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_USER_REL}"
    ).fetchone()
    large_objects = conn.execute("SELECT count(*) FROM pg_catalog.pg_largeobject_metadata")
    lo_row = large_objects.fetchone()
    return int(row[0] if row else 0) + int(lo_row[0] if lo_row else 0)


def resolve_table(conn: psycopg.Connection[Any], value: str) -> tuple[TableName, int]:
    """The table a `--table` argument names (search_path rules) and its OID.

    UsageError when it does not exist or is not a table.
    """
    schema, name = split_table_arg(value)
    regclass = f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)
    row = conn.execute(
        "SELECT n.nspname, c.relname, c.relkind, c.oid FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = pg_catalog.to_regclass(%s)",
        (regclass,),
    ).fetchone()
    if row is None:
        raise errors.UsageError(f"table {value!r} does not exist in the source database")
    if row[2] not in ("r", "p"):
        raise errors.UsageError(f"{value!r} is not a table (relkind {row[2]!r})")
    return TableName(str(row[0]), str(row[1])), int(row[3])


def schemas(conn: psycopg.Connection[Any]) -> set[str]:
    """Names of every schema in the database."""
    return {str(row[0]) for row in conn.execute("SELECT nspname FROM pg_catalog.pg_namespace")}


def table_exists(conn: psycopg.Connection[Any], table: TableName) -> bool:
    row = conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (table.sql(),)).fetchone()
    return bool(row and row[0])


def primary_key(conn: psycopg.Connection[Any], table: TableName) -> list[str]:
    """Primary key columns in key order; empty when the table has none."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_catalog.pg_constraint con "
        "CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord) "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum "
        "WHERE con.contype = 'p' AND con.conrelid = %s::regclass ORDER BY k.ord",
        (table.sql(),),
    ).fetchall()
    return [str(row[0]) for row in rows]


def columns(conn: psycopg.Connection[Any], table: TableName) -> dict[str, str]:
    """Live (not dropped) columns -> their type, in column order."""
    rows = conn.execute(
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attgenerated "
        "FROM pg_catalog.pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum",
        (table.sql(),),
    ).fetchall()
    return {str(name): str(typ) for name, typ, _ in rows}
