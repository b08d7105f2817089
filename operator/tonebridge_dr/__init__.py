"""tonebridge-dr: backup and disaster recovery for the ToneBridge platform."""

from importlib import metadata

try:
    __version__ = metadata.version("tonebridge-dr")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
