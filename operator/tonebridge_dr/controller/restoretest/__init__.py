"""The RestoreTest controller. This version accepts and validates restore tests but does
not run them yet: `reconcile` says so in the Ready condition (reason NotImplemented)."""
