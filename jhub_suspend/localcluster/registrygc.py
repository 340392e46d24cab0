"""Garbage collection for the local cluster's registry, and a metric of what it really stores.

Deleting a manifest (as retention does for checkpoint images) frees no storage in
`distribution`: its blobs stay until ``registry garbage-collect`` runs, which must not run
while anything is pushed (it could sweep the blobs of an upload whose manifest is not yet
written). So the local cluster collects garbage the way an operator does in a maintenance
window: with no checkpoint in flight, it stops the registry, runs the collector, and starts the
registry again on the same port. Only unreferenced blobs go: the collector runs without
``--delete-untagged``, so no manifest, tagged or not, is ever removed by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from tornado import web

from ..commands import CommandError, run_command
from .services import ServiceError

log = logging.getLogger(__name__)

#: where distribution's filesystem driver keeps blobs, under its root directory
BLOBS_DIR = ("docker", "registry", "v2", "blobs")


def storage_bytes(storage_dir: str | os.PathLike[str]) -> int:
    """The bytes of blob data the registry stores on disk (what garbage collection frees)."""
    total = 0
    for root, _dirs, files in os.walk(Path(storage_dir, *BLOBS_DIR)):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # removed while we walked
                total += os.lstat(os.path.join(root, name)).st_size
    return total


async def collect_garbage(binary: str, config_path: str | os.PathLike[str]) -> str:
    """Run ``registry garbage-collect`` on a registry's configuration (the registry must not be
    serving writes); return its report. Raises ServiceError with the collector's output."""
    try:
        result = await run_command([binary, "garbage-collect", os.fspath(config_path)], timeout=600)
    except CommandError as e:
        raise ServiceError(f"registry garbage collection failed: {e}") from e
    return result.stdout


@dataclass
class GcResult:
    """One collection: the bytes before and after, or why it did not run."""

    before: int = 0
    after: int = 0
    seconds: float = 0.0
    skipped: str = ""

    @property
    def freed(self) -> int:
        return max(self.before - self.after, 0)


@dataclass
class RegistryMetrics:
    """The registry's stored bytes (measured at each scrape) and the collections so far."""

    storage_dir: Path
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.stored = Gauge(
            "registry_storage_bytes",
            "Bytes of blob data the registry stores on disk, referenced or not.",
            registry=r,
        )
        self.runs = Counter(
            "registry_gc_runs", "Registry garbage collections, by outcome.", ["outcome"], registry=r
        )
        for outcome in ("done", "skipped", "failed"):
            self.runs.labels(outcome)
        self.freed = Counter(
            "registry_gc_freed_bytes", "Bytes freed by registry garbage collection.", registry=r
        )
        self.last_run = Gauge(
            "registry_gc_last_run_timestamp_seconds",
            "When registry garbage collection last completed.",
            registry=r,
        )

    def record(self, result: GcResult) -> None:
        if result.skipped:
            self.runs.labels("skipped").inc()
            return
        self.runs.labels("done").inc()
        self.freed.inc(result.freed)
        self.last_run.set(time.time())

    async def exposition(self) -> bytes:
        """The metrics, with the stored bytes measured now (off the event loop: it walks the
        registry's storage, which the cluster's API server and kubelets must not wait for)."""
        self.stored.set(await asyncio.to_thread(storage_bytes, self.storage_dir))
        return generate_latest(self.registry)


class RegistryMetricsHandler(web.RequestHandler):
    """``/metrics/registry`` on the cluster's metrics server, scraped by its Prometheus."""

    def initialize(self, metrics: RegistryMetrics) -> None:
        self.metrics = metrics

    async def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.write(await self.metrics.exposition())


__all__ = [
    "GcResult",
    "RegistryMetrics",
    "RegistryMetricsHandler",
    "collect_garbage",
    "storage_bytes",
]
