"""The FailoverPlan controller: health watching with rise/fall hysteresis, runs of the
plan's stages in priority order (automatic on a down target, on demand with
dr.tonebridge.io/failover-now, rehearsals in mode drill), reset, and escalation. See
engine.py for the tick and docs/failover.md for the user's view."""
