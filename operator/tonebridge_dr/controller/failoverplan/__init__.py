"""The FailoverPlan controller. This version accepts and validates plans but does not
run them yet: `reconcile` says so in the Ready condition (reason NotImplemented)."""
