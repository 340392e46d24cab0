"""Retention: delete what checkpoints leave behind once it is no longer needed.

Every ``retention_interval`` seconds, from the last cycle's snapshot:

1. images of checkpoints that were **restored** or **discarded** (the spawner keeps their record
   with its ``keep_used_checkpoints``) and were created more than ``used_checkpoint_retention``
   seconds ago are deleted through a node agent (idempotent: an image already gone counts as
   deleted);
2. images whose deletion failed earlier (a discard while the registry was down) are tried again;
3. **discard markers** older than ``used_checkpoint_retention`` that no server's restorable
   checkpoint refers to any more (the server was deleted, or restored some other way) are
   deleted; a marker that still names a server's checkpoint stays until the spawner consumes it;
4. with ``max_suspended_age`` set, checkpoints of servers suspended for longer are discarded
   (marker + image): the next start is fresh.

In dry-run mode (``dry_run``) the sweep only logs and counts what it would delete.

What is left: images of servers deleted from the hub while suspended (no record remains to name
them), and checkpoints whose restore failed (kept for the admin, as the spawner does). Run the
registry's garbage collection for the first, and discard the second through the API.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Protocol

from ..checkpoints import Status, pinned_image
from ..kubevalues import parse_time
from . import observe
from .actions import Actions
from .kube import Kube
from .snapshot import Snapshot


class RetentionContext(Protocol):
    """What the sweep uses of the service that runs it."""

    log: logging.Logger
    kube: Kube
    actions: Actions
    namespace: str
    checkpoint_repository: str
    used_checkpoint_retention: float
    retention_interval: float
    dry_run: bool

    @property  # read-only: traitlets types an optional Float as int | None
    def max_suspended_age(self) -> float | None: ...


class Retention:
    def __init__(self, service: RetentionContext) -> None:
        self.service = service
        self.log = service.log
        self._last = 0.0
        self._deleted: set[str] = set()  # digests whose images are gone

    async def maybe_sweep(self, snap: Snapshot) -> None:
        if time.monotonic() - self._last < self.service.retention_interval:
            return
        self._last = time.monotonic()
        try:
            await self.sweep(snap)
        except Exception:
            self.log.exception("Retention sweep failed; trying again later")

    def _old(self, created: str | None, now: datetime, age: float) -> bool:
        t = parse_time(created)
        return t is not None and (now - t).total_seconds() > age

    async def sweep(self, snap: Snapshot) -> dict[str, int]:
        svc = self.service
        actions = svc.actions
        now = snap.time
        keep = svc.used_checkpoint_retention
        stats = {"images": 0, "markers": 0, "discarded": 0, "orphans": 0}
        live: set[str] = set()
        for v in snap.views:
            ck = v.checkpoint
            if ck is None or not ck.digest:
                continue
            digest, status = ck.digest, ck.status
            if status in observe.RESTORABLE:
                live.add(digest)
                age = svc.max_suspended_age
                if (
                    age is not None
                    and v.state == "suspended"
                    and digest not in snap.markers
                    and self._old(ck.created, now, age)
                ):
                    try:
                        if not self._dry_run("discard the checkpoint of", v.user, v.server_name):
                            await actions.discard(v.user, v.server_name, "retention")
                        stats["discarded"] += 1
                    except Exception as e:
                        self.log.warning(
                            "Retention could not discard %s/%s: %s", v.user, v.server_name, e
                        )
                continue
            done = status in (Status.RESTORED, Status.DISCARDED) and digest not in self._deleted
            if done and v.pod_name and self._old(ck.created, now, keep):
                ref = pinned_image(svc.checkpoint_repository, v.namespace, v.pod_name, digest)
                if self._dry_run("delete the image", ref):
                    stats["images"] += 1
                    continue
                deleted, _ = await actions.delete_image(ref)
                if deleted:
                    self._deleted.add(digest)
                    stats["images"] += 1
        for ref in list(actions.orphans):
            deleted = self._dry_run("delete the image", ref) or (await actions.delete_image(ref))[0]
            stats["orphans"] += int(deleted)
        for digest, marker in snap.markers.items():
            meta = marker.get("metadata") or {}
            if digest in live or not self._old(meta.get("creationTimestamp"), now, keep):
                continue
            if not self._dry_run("delete the discard marker", meta["name"]):
                await svc.kube.delete_secret(meta.get("namespace") or svc.namespace, meta["name"])
            stats["markers"] += 1
        if any(stats.values()):
            self.log.info("Retention sweep%s: %s", " (dry run)" if svc.dry_run else "", stats)
        return stats

    def _dry_run(self, what: str, *names: str) -> bool:
        """In dry-run mode, log what would be done and return True (do nothing)."""
        if self.service.dry_run:
            self.log.info("Retention (dry run) would %s %s", what, "/".join(n for n in names if n))
        return self.service.dry_run
