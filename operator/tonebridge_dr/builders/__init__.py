"""Pure builders: (validated policy, operator settings) -> Kubernetes manifests as plain dicts.

`names` spells every name, label and annotation; `settings` holds the operator-wide
runner settings; `pods` is the runner pod skeleton (security, /tmp, termination message,
failure policy, environment) every Job and Deployment is built on; `metadata` gives objects
their owner; `backup` builds what a BackupPolicy owns and `restore` what a RestoreRequest
runs. Imports only `tonebridge_dr.api` and the standard library (checked by import-linter).
"""
