"""Fault injection: the runner killed, its disk full, its S3 endpoint hung or gone, and the
invariants that must hold afterwards (harness.py). Seeded ($TONEBRIDGE_DR_FAULT_SEED) and
sized ($TONEBRIDGE_DR_FAULT_SCALE) from the environment; part of the normal test run."""
