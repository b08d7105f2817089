"""Pure builders: (validated policy, operator settings) -> Kubernetes manifests as plain dicts.

`names` spells every name, label and annotation; `settings` holds the operator-wide
runner settings; `backup` builds what a BackupPolicy owns. Imports only
`tonebridge_dr.api` and the standard library (checked by import-linter).
"""
