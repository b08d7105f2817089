"""Table of contents of a pg_dump custom archive, and choosing the entries of some tables.

`pg_restore -l -v` lists one line per entry, `<dumpId>; <catalog oid> <object oid>
<DESC> <schema> <tag> <owner>`, followed (with -v) by `;\tdepends on: <ids>`.
Entries are matched by object OID (recorded in the manifest at backup time), never
by parsing names, which may contain spaces.

A table restore takes the table's TABLE entry and, transitively, whatever belongs
to it (data, owned sequences and their values, defaults, constraints, indexes,
triggers, policies, comments, grants, partitions attached to it). It never takes
views or other tables that merely depend on it. A foreign key is taken when the
table it references is restored too or already exists in the target; otherwise it
is skipped and reported, so restoring one table never fails for a missing neighbour.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

PG_CLASS_OID = 1259
PG_CONSTRAINT_OID = 2606

_ENTRY_RE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_DEPS_RE = re.compile(r"^;\s*depends on:\s*([\d ]+)\s*$")

#: Entry kinds written by pg_dump 10-17, longest first so multi-word kinds win.
_KINDS = sorted(
    (
        "ACCESS METHOD",
        "ACL",
        "AGGREGATE",
        "BLOB",
        "BLOB METADATA",
        "BLOBS",
        "CAST",
        "CHECK CONSTRAINT",
        "COLLATION",
        "COMMENT",
        "CONSTRAINT",
        "CONVERSION",
        "DATABASE",
        "DATABASE PROPERTIES",
        "DEFAULT",
        "DEFAULT ACL",
        "DOMAIN",
        "ENCODING",
        "EVENT TRIGGER",
        "EXTENSION",
        "FK CONSTRAINT",
        "FOREIGN DATA WRAPPER",
        "FOREIGN SERVER",
        "FOREIGN TABLE",
        "FUNCTION",
        "INDEX",
        "INDEX ATTACH",
        "LARGE OBJECT",
        "MATERIALIZED VIEW",
        "MATERIALIZED VIEW DATA",
        "OPERATOR",
        "OPERATOR CLASS",
        "OPERATOR FAMILY",
        "POLICY",
        "PROCEDURAL LANGUAGE",
        "PROCEDURE",
        "PUBLICATION",
        "PUBLICATION TABLE",
        "PUBLICATION TABLES IN SCHEMA",
        "ROW SECURITY",
        "RULE",
        "SCHEMA",
        "SEARCHPATH",
        "SECURITY LABEL",
        "SEQUENCE",
        "SEQUENCE OWNED BY",
        "SEQUENCE SET",
        "SERVER",
        "SHELL TYPE",
        "STATISTICS",
        "STATISTICS DATA",
        "STDSTRINGS",
        "SUBSCRIPTION",
        "SUBSCRIPTION TABLE",
        "TABLE",
        "TABLE ATTACH",
        "TABLE DATA",
        "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY",
        "TEXT SEARCH PARSER",
        "TEXT SEARCH TEMPLATE",
        "TRANSFORM",
        "TRIGGER",
        "TYPE",
        "USER MAPPING",
        "VIEW",
    ),
    key=len,
    reverse=True,
)

#: Kinds that belong to a table when they depend on it.
_BELONGS = frozenset(
    {
        "TABLE DATA",
        "CONSTRAINT",
        "CHECK CONSTRAINT",
        "FK CONSTRAINT",
        "INDEX",
        "INDEX ATTACH",
        "TRIGGER",
        "DEFAULT",
        "SEQUENCE",
        "SEQUENCE OWNED BY",
        "SEQUENCE SET",
        "COMMENT",
        "ACL",
        "POLICY",
        "ROW SECURITY",
        "RULE",
        "SECURITY LABEL",
        "STATISTICS",
        "STATISTICS DATA",
        "TABLE ATTACH",
    }
)
#: Kinds of other relations: an entry that also needs one of them (not restored) is left out.
_RELATIONS = frozenset({"TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE"})


@dataclasses.dataclass
class Entry:
    dump_id: int
    catalog_oid: int
    oid: int
    kind: str
    line: str
    deps: list[int] = dataclasses.field(default_factory=list)


def parse(listing: str) -> dict[int, Entry]:
    """Entries of a `pg_restore -l -v` listing, by dump id, in archive order."""
    entries: dict[int, Entry] = {}
    last: Entry | None = None
    for line in listing.splitlines():
        match = _ENTRY_RE.match(line)
        if match is not None:
            rest = match.group(4)
            kind = next((k for k in _KINDS if rest == k or rest.startswith(k + " ")), None)
            last = Entry(
                dump_id=int(match.group(1)),
                catalog_oid=int(match.group(2)),
                oid=int(match.group(3)),
                kind=kind or rest.split(" ", 1)[0],
                line=line,
            )
            entries[last.dump_id] = last
            continue
        deps = _DEPS_RE.match(line)
        if deps is not None and last is not None:
            last.deps.extend(int(x) for x in deps.group(1).split())
    return entries


@dataclasses.dataclass
class Selection:
    """What to restore from one archive."""

    entries: list[Entry]
    skipped_foreign_keys: list[int]  # constraint OIDs

    def list_file(self) -> str:
        """Text for `pg_restore -L` (archive order kept: stdin archives must be read in order)."""
        return "".join(entry.line + "\n" for entry in self.entries)

    def data_entries(self) -> list[Entry]:
        return [entry for entry in self.entries if entry.kind == "TABLE DATA"]


def select(
    entries: dict[int, Entry],
    table_oids: set[int],
    foreign_key_verdict: Callable[[int], str | None],
) -> Selection:
    """The entries of the tables `table_oids` (and of what belongs to them).

    `foreign_key_verdict(constraint_oid)` decides a foreign key: "keep" (recreate it),
    "skip" (one of ours whose referenced table will not exist: reported), "foreign"
    (another table's key that merely references a restored table: left out silently),
    or None when it does not know the constraint; then the key is kept only if
    every table it depends on in this archive is restored.
    """
    chosen = {
        e.dump_id
        for e in entries.values()
        if e.kind == "TABLE" and e.catalog_oid == PG_CLASS_OID and e.oid in table_oids
    }
    skipped: list[int] = []
    decided: set[int] = set()
    changed = True
    while changed:
        changed = False
        for entry in entries.values():
            if entry.dump_id in chosen or entry.dump_id in decided:
                continue
            if entry.kind not in _BELONGS or not any(dep in chosen for dep in entry.deps):
                continue
            others = [
                dep
                for dep in entry.deps
                if dep not in chosen and dep in entries and entries[dep].kind in _RELATIONS
            ]
            if entry.kind == "FK CONSTRAINT":
                decided.add(entry.dump_id)
                verdict = foreign_key_verdict(entry.oid)
                if verdict is None:
                    verdict = "skip" if others else "keep"
                if verdict == "skip":
                    skipped.append(entry.oid)
                if verdict != "keep":
                    continue
            elif others:
                continue
            chosen.add(entry.dump_id)
            changed = True
    return Selection(
        entries=[e for e in entries.values() if e.dump_id in chosen],
        skipped_foreign_keys=skipped,
    )
