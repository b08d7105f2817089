"""Restore tests of PostgreSQL backups: scheduled proof that a backup restores, with checks,
a measured RTO and a report kept in the repository (what RestoreTest Jobs run).

Modules (each documents what it owns):
- `checks`: the check language of the RestoreTest spec, and running checks read-only;
- `scratch`: the scratch targets (a database on a server, or a private instance) and
  their removal, whatever happens;
- `run`: one test from choosing the backup to the verdict, what the RTO measures, the
  result and the report.

`tonebridge-dr restore-test postgres ...` (postgres/commands.py) is the command line.
"""
