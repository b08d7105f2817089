"""Pure status transitions: `(status, event) -> status`.

`conditions` (standard condition lists), `jobs` (Job + pods -> outcome), `backuppolicy`
(Job outcomes, reconcile results) and `freshness` (catalog -> recovery point, RPOMet,
BackupStale). Imports only `tonebridge_dr.api` and the standard library.
"""
