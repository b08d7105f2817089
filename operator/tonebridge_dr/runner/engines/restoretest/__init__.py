"""What every engine's restore test shares: the run, the RTO, the verdict and the report
(`run`), the check input and expectations (`checks`), and the scratch clean-up protocol
(`scratch`). An engine provides how it chooses and restores a backup and how it runs one
check (postgres/restoretest/, redis/restoretest.py); `tonebridge-dr restore-test <engine>`
is its command line. docs/restore-tests.md describes the whole.
"""
