"""The runner's console: how every verb reads its command line and writes its log.

The front door (cli.py) uses these for every verb. They live below the engines
because wal-fetch's slow path (wal/commands.py `fetch_slow`) is reached from
`spool.fetch_main`, which every entry point of restore_command calls without the
front door, and must parse and log the same way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from typing import NoReturn

from tonebridge_dr.runner import errors, result
from tonebridge_dr.runner.contract import runner_contract

#: The package logger every runner module logs under.
ROOT_LOGGER = "tonebridge_dr"
#: Libraries whose INFO lines are noise in a Job's log: WARNING and up only.
QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "psycopg")


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise errors.UsageError(f"{self.prog}: {message}")


class UTCFormatter(logging.Formatter):
    """ISO 8601 UTC timestamps with milliseconds; secrets scrubbed from every line."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = dt.datetime.fromtimestamp(record.created, dt.UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def format(self, record: logging.LogRecord) -> str:
        return result.scrub(super().format(record))


def start_logging(*, verbose: bool = False, quiet: bool = False) -> logging.Handler:
    """Log to stderr at $TONEBRIDGE_DR_LOG_LEVEL (default INFO), or DEBUG / WARNING for
    `verbose` / `quiet`; returns the handler for `stop_logging`."""
    level_name = os.environ.get(runner_contract.ENV_LOG_LEVEL, "INFO").upper()
    level = logging.getLevelName(level_name) if level_name else logging.INFO
    if not isinstance(level, int):
        level = logging.INFO
    if verbose:
        level = logging.DEBUG
    elif quiet:
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(UTCFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger(ROOT_LOGGER)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    return handler


def stop_logging(handler: logging.Handler) -> None:
    """Remove what `start_logging` added (in-process callers run many commands)."""
    logging.getLogger(ROOT_LOGGER).removeHandler(handler)
