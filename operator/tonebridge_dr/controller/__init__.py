"""The operator (kopf): `main` runs it with every kind; `core` is what all kinds stand on
(Kubernetes client, status compare-and-set, Events, notifications, metrics, the catalog
reader, settings and the kind skeleton); one package per kind (`backuppolicy`,
`restorerequest`, `failoverplan`, `restoretest`), each a declaration in `handlers.py`
and its logic in `reconcile.py`. Kinds never import each other (import-linter)."""
