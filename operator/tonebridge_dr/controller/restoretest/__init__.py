"""The RestoreTest controller: `handlers` (the kind's declaration and its run-now trigger),
`plan` (pure: the CronJob, the Secrets it needs, the Ready decision), `reconcile`
(observe -> decide -> act: the CronJob and Ready), `record` (test Jobs -> lastRun, Passed,
RTOMet, Events, notifications, metrics) and `runnow` (the run-now annotation)."""
