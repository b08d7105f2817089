"""The RestoreRequest controller: `handlers` (the kind's declaration), `plan` (pure:
request -> what to check and create), `reconcile` (from a new request to a running
Job) and `record` (restore Job -> status, Events, the optional instance)."""
