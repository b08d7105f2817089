"""What every kind's controller stands on: the Kubernetes client, status compare-and-set,
Events, notifications, metrics, the repository catalog reader, settings, and the kind
skeleton that registers a kind with kopf (`kind`, `registration`).

Nothing in here knows a kind's logic; the kind packages (`controller.<kind>`) import
this package, never the other way round."""
