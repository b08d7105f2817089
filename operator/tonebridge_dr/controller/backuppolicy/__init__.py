"""The BackupPolicy controller: `handlers` (the kind's declaration and its own kopf
triggers), `reconcile` (owned CronJobs / WAL streamer and Ready), `runnow` (the run-now
annotation), `freshness` (the catalog monitor: RPOMet, BackupStale, metrics) and
`record` (finished backup Jobs -> status, Events, notifications)."""
