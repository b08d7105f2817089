"""Continuous WAL archiving and point-in-time recovery for PostgreSQL.

Modules (each states its own contracts):
- `naming`: WAL file names (segment, history, backup label, partial), their order,
  LSN arithmetic, and the repository object keys of archived WAL.
- `spool`: the local spool folders under `pg_wal/` (push markers, prefetch queue);
  tiny and import-light, it is all a fast-path `wal-push`/`wal-fetch` loads.
- `catalog`: the archive index over storage: find a file, the newest folder, the
  archive position (`archive_status`), timeline histories.
- `archive`: `wal-push` (archive_command) and its background pusher of `.ready` files.
- `fetch`: `wal-fetch` (restore_command), with a background prefetcher.
- `stream`: `wal-stream`, pg_receivewal with a replication slot, uploading segments.
- `pitr`: physical restore of a base backup plus WAL to a target time/LSN/latest.
- `retention`: pruning WAL that no retained base backup needs.
- `waldump`: destructive events in pg_waldump output (pure); `inspection`: `wal-inspect`,
  archived WAL read in batches through pg_waldump.
- `commands`: each verb's `add_*_arguments` / `run_*` for the runner's front door
  (runner/cli.py); `__main__`: `python -m` into it, behind the spool's fast paths.

This `__init__` imports nothing: `python -m ...wal wal-push` must start fast.
No module here may share a name with a standard library module (`inspect`, `signal`,
...): `wal/spool.py` runs as a script, with this folder first on `sys.path`.
"""
