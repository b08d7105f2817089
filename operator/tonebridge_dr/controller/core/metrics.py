"""Prometheus metrics of the operator, per policy (labels `namespace`, `policy`) and per
RestoreTest (labels `namespace`, `restore_test`).

Values come from two places: the repository catalog (read by the freshness
monitor: the newest backup's time, duration and size, the RPO age) and finished
Jobs (failures, restore tests). Counters restart at zero with the operator, as Prometheus
expects; gauges are refilled by the first catalog read after a restart (a RestoreTest's
from its status, when it is reconciled).

Each `Metrics` has its own registry (plus process metrics such as RSS), so
several can live in one process (tests) without clashing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)

LABELS = ("namespace", "policy")
RESTORE_TEST_LABELS = ("namespace", "restore_test")
REPLICA_LABELS = ("namespace", "policy", "replica")
PREFIX = "tonebridge_dr"


#: Every series: attribute, type, name after the prefix, help text, labels.
_SERIES: tuple[tuple[str, type[Gauge] | type[Counter], str, str, tuple[str, ...]], ...] = (
    ("last_success", Gauge, "backup_last_success_timestamp_seconds",
     "Unix time of the newest complete backup in the repository", LABELS),
    ("last_duration", Gauge, "backup_last_duration_seconds",
     "How long the newest complete backup took", LABELS),
    ("last_size", Gauge, "backup_last_size_bytes",
     "Stored size of the newest complete backup", LABELS),
    ("failures", Counter, "backup_failures",
     "Backup Jobs that failed (since the operator started)", LABELS),
    ("rpo_age", Gauge, "rpo_age_seconds",
     "Age of the newest recovery point (full backup, or gap-free WAL after a physical "
     "backup)", LABELS),
    ("backups", Gauge, "backups", "Complete backups in the repository", LABELS),
    ("repository_up", Gauge, "repository_up",
     "1 when the last catalog read succeeded, else 0", LABELS),
    ("catalog_reads", Counter, "catalog_reads",
     "Reads of the repository catalog by the freshness monitor", LABELS),
    ("replica_synced", Gauge, "replica_last_sync_timestamp_seconds",
     "Unix time a replication run last left the replica holding everything the primary "
     "held", REPLICA_LABELS),
    ("replica_lag", Gauge, "replica_lag_seconds",
     "How far the replica was behind the primary when the newest replication ended",
     REPLICA_LABELS),
    ("replica_up", Gauge, "replica_in_sync",
     "1 when the newest replication run copied everything to the replica, else 0",
     REPLICA_LABELS),
    ("replica_bytes", Counter, "replica_copied_bytes",
     "Bytes copied to the replica (since the operator started)", REPLICA_LABELS),
    ("restore_test_duration", Gauge, "restore_test_duration_seconds",
     "Measured restore time of the newest restore test run", RESTORE_TEST_LABELS),
    ("restore_test_last_success", Gauge, "restore_test_last_success_timestamp_seconds",
     "Unix time the newest passed restore test run completed", RESTORE_TEST_LABELS),
    ("restore_test_passed", Gauge, "restore_test_passed",
     "1 when the newest restore test run restored the backup and every check passed, else 0",
     RESTORE_TEST_LABELS),
)


class Metrics:
    """The operator's metrics; every method is thread-safe."""

    last_success: Gauge
    last_duration: Gauge
    last_size: Gauge
    failures: Counter
    rpo_age: Gauge
    backups: Gauge
    repository_up: Gauge
    catalog_reads: Counter
    replica_synced: Gauge
    replica_lag: Gauge
    replica_up: Gauge
    replica_bytes: Counter
    restore_test_duration: Gauge
    restore_test_last_success: Gauge
    restore_test_passed: Gauge

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        for attribute, kind, name, documentation, labels in _SERIES:
            metric = kind(f"{PREFIX}_{name}", documentation, labels, registry=self.registry)
            setattr(self, attribute, metric)
        self._known: set[tuple[str, str]] = set()
        self._replicas: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()
        self._server: Any = None

    def _series(self, labels: tuple[str, ...]) -> tuple[Any, ...]:
        return tuple(getattr(self, entry[0]) for entry in _SERIES if entry[4] == labels)

    def track(self, namespace: str, policy: str) -> None:
        """Make the policy's counters visible (at 0) before anything happened."""
        with self._lock:
            if (namespace, policy) in self._known:
                return
            self._known.add((namespace, policy))
        self.failures.labels(namespace, policy)

    def forget(self, namespace: str, policy: str) -> None:
        """Drop every series of a deleted policy."""
        with self._lock:
            self._known.discard((namespace, policy))
            replicas = self._replicas.pop((namespace, policy), set())
        for metric in self._series(LABELS):
            with contextlib.suppress(KeyError):
                metric.remove(namespace, policy)
        for metric in self._series(REPLICA_LABELS):
            for replica in replicas:
                with contextlib.suppress(KeyError):
                    metric.remove(namespace, policy, replica)

    def replication_run(
        self,
        namespace: str,
        policy: str,
        replica: str,
        *,
        in_sync: bool,
        synced_at: float | None,
        lag_seconds: float | None,
        copied_bytes: int | None,
    ) -> None:
        """The newest replication run for one replica (`replica`: its url)."""
        with self._lock:
            self._replicas.setdefault((namespace, policy), set()).add(replica)
        labels = (namespace, policy, replica)
        self.replica_up.labels(*labels).set(1 if in_sync else 0)
        if synced_at is not None:
            self.replica_synced.labels(*labels).set(synced_at)
        if lag_seconds is not None:
            self.replica_lag.labels(*labels).set(lag_seconds)
        if copied_bytes:
            self.replica_bytes.labels(*labels).inc(copied_bytes)

    def backup_succeeded(
        self,
        namespace: str,
        policy: str,
        *,
        finished_at: float | None,
        duration_seconds: float | None,
        size_bytes: int | None,
    ) -> None:
        self.track(namespace, policy)
        if finished_at is not None:
            self.last_success.labels(namespace, policy).set(finished_at)
        if duration_seconds is not None:
            self.last_duration.labels(namespace, policy).set(duration_seconds)
        if size_bytes is not None:
            self.last_size.labels(namespace, policy).set(size_bytes)

    def backup_failed(self, namespace: str, policy: str) -> None:
        self.track(namespace, policy)
        self.failures.labels(namespace, policy).inc()

    def catalog_read(
        self,
        namespace: str,
        policy: str,
        *,
        ok: bool,
        rpo_age_seconds: float | None,
        backups: int | None,
    ) -> None:
        self.track(namespace, policy)
        self.catalog_reads.labels(namespace, policy).inc()
        self.repository_up.labels(namespace, policy).set(1 if ok else 0)
        if rpo_age_seconds is not None:
            self.rpo_age.labels(namespace, policy).set(rpo_age_seconds)
        if backups is not None:
            self.backups.labels(namespace, policy).set(backups)

    def restore_test_run(
        self,
        namespace: str,
        name: str,
        *,
        passed: bool,
        duration_seconds: float | None,
        last_success: float | None,
    ) -> None:
        """The newest run of RestoreTest `name`: passed or not, its restore time, and the
        completion time of the newest passed run (None: keep what is there)."""
        self.restore_test_passed.labels(namespace, name).set(1 if passed else 0)
        if duration_seconds is not None:
            self.restore_test_duration.labels(namespace, name).set(duration_seconds)
        if last_success is not None:
            self.restore_test_last_success.labels(namespace, name).set(last_success)

    def forget_restore_test(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted RestoreTest."""
        for metric in self._series(RESTORE_TEST_LABELS):
            with contextlib.suppress(KeyError):
                metric.remove(namespace, name)

    def render(self) -> bytes:
        """The exposition text (what /metrics serves)."""
        return prometheus_client.generate_latest(self.registry)

    def serve(self, address: str, port: int) -> None:
        """Serve /metrics on address:port in a daemon thread (port 0: not at all)."""
        if port == 0:
            return
        server, _thread = prometheus_client.start_http_server(
            port, addr=address, registry=self.registry
        )
        self._server = server
        log.info("serving metrics on %s:%d/metrics", address, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
