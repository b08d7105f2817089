"""The backup repository (the source of truth): ids, manifests, catalog, retention.

See `catalog` for the storage layout and the contracts of writing, reading,
verifying, deleting and pruning; `retention` for the keep rules (pure).
"""

from tonebridge_dr.runner.repository.catalog import PruneReport, Repository
from tonebridge_dr.runner.repository.ids import is_backup_id, new_backup_id
from tonebridge_dr.runner.repository.integrity import VerifyProblem, VerifyReport
from tonebridge_dr.runner.repository.manifest import Encryption, Manifest, ObjectEntry, WalRange
from tonebridge_dr.runner.repository.retention import RetentionPolicy, select_keep
from tonebridge_dr.runner.repository.writer import BackupWriter

__all__ = [
    "BackupWriter",
    "Encryption",
    "Manifest",
    "ObjectEntry",
    "PruneReport",
    "Repository",
    "RetentionPolicy",
    "VerifyProblem",
    "VerifyReport",
    "WalRange",
    "is_backup_id",
    "new_backup_id",
    "select_keep",
]
