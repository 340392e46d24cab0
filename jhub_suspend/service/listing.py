"""``GET api/servers``: every server the hub knows, as it is now, with what the policy's last
cycle measured and decided about it (pure; the handler does the reading).

The servers and their states come from a fresh read of the hub (and of their pods and the
discard markers), never from the last cycle alone: a server that started after the cycle, or was
suspended, resumed or discarded since, is listed as it is. What only a cycle knows (utilisation
from Prometheus, the policy's decision and warning) is joined to it when the cycle saw the same
run of the same server in the same state. Otherwise ``decision`` is null and ``decision_note``
says why (``not yet assessed: ...``), so a client never mistakes an old decision for a current
one.

The API's form of a checkpoint record and of a keep-running opt-out, which the actions answer
too, are here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..checkpoints import Checkpoint
from ..kubevalues import rfc3339, rfc3339_or_none
from ..policy import Decision, KeepRunning, Signal
from .observe import POLICY_STATES, ServerView
from .snapshot import Snapshot

if TYPE_CHECKING:
    from .operations import Operation


def _signal(sig: Signal | None, scale: float) -> dict[str, Any] | None:
    if sig is None:
        return None
    value = sig.usable_value
    return {
        "max": None if value is None else value * scale,
        "samples": sig.samples,
        "expected_samples": sig.expected_samples,
        "coverage": sig.coverage,
    }


def same_run(now: ServerView, seen: ServerView) -> bool:
    """Whether the cycle's view ``seen`` is of the same run of the server as ``now``: the same
    start and the same pod."""
    return (
        seen.started == now.started
        and seen.pod_name == now.pod_name
        and seen.namespace == now.namespace
    )


def assessment(
    view: ServerView, snap: Snapshot | None, seen: ServerView | None
) -> tuple[ServerView | None, Decision | None, str | None]:
    """What the last cycle measured and decided about ``view``, if it still applies: (the
    cycle's view, its decision, None); else (None, None, why not)."""
    if snap is None:
        return None, None, "not yet assessed: the policy has not completed a cycle yet"
    as_of = rfc3339_or_none(snap.time)
    if view.state not in POLICY_STATES:
        return None, None, f"not assessed: the policy assesses no {view.state} server"
    if seen is None or not same_run(view, seen):
        return None, None, f"not yet assessed: the policy's last cycle ({as_of}) predates it"
    # A suspension under way is the outcome of what the cycle decided on the running server.
    if seen.state != view.state and not (view.state == "suspending" and seen.state == "running"):
        return (
            None,
            None,
            (
                f"not yet assessed as {view.state}: the policy's last cycle ({as_of}) saw it "
                f"{seen.state}"
            ),
        )
    d = snap.decisions.get(view.key)
    if d is None:
        return seen, None, "not assessed: the hub gives no start time for this server"
    return seen, d, None


def server_entries(
    views: list[ServerView],
    snap: Snapshot | None,
    *,
    now: datetime,
    operations: Mapping[tuple[str, str], Operation],
    prefix: str,
    max_keep_running: float | None,
) -> list[dict[str, Any]]:
    """The listing's entries, one per server of ``views`` (read from the hub just now), in
    ``views``' order. ``operations``: this service's running operation per server."""
    seen_by_key = {v.key: v for v in snap.views} if snap is not None else {}
    out = []
    for v in views:
        measured, d, note = assessment(v, snap, seen_by_key.get(v.key))
        op = operations.get(v.key)
        idle = None
        if v.state == "running":
            ref = v.last_activity or v.started
            idle = max(0.0, (now - ref).total_seconds()) if ref else None
        elif d is not None:
            idle = d.idle_for
        warning = None
        if d is not None and d.action == "warn" and d.suspend_at:
            warning = {"suspend_at": rfc3339_or_none(d.suspend_at), "message": d.reasons[0]}
        req = v.requests or (measured.requests if measured else None)
        memory_ratio = measured.memory_ratio if measured else None
        out.append(
            {
                "user": v.user,
                "server_name": v.server_name,
                "state": v.state,
                "namespace": v.namespace,
                "pod": v.pod_name,
                "node": v.node,
                "started": rfc3339_or_none(v.started),
                "last_activity": rfc3339_or_none(v.last_activity),
                "idle_seconds": idle,
                "requests": None
                if req is None
                else {"cpu": req.cpu, "memory": req.memory, "gpu": req.gpu},
                "utilisation": {
                    # CPU: percent of the CPU request (max over the idle window)
                    "cpu_percent_of_request": _signal(measured.cpu if measured else None, 100),
                    # GPU: percent utilisation (max over the GPU idle window)
                    "gpu_percent": _signal(measured.gpu if measured else None, 1),
                    "memory_ratio_of_request": memory_ratio
                    if memory_ratio is not None and math.isfinite(memory_ratio)
                    else None,
                },
                # whether its GPUs let it be suspended (servers holding GPUs, as the cycle saw)
                "gpu_capability": measured.gpu_capability.to_json()
                if measured is not None and measured.gpu_capability is not None
                else None,
                "estimated_checkpoint_bytes": measured.estimated_checkpoint_bytes
                if measured is not None and v.state == "running"
                else None,
                "checkpoint": public_checkpoint(v.checkpoint) if v.checkpoint else None,
                "last_error": v.last_error.to_state() if v.last_error else None,
                "keep_running": keep_running_dict(v.keep_running, max_keep_running)
                if v.keep_running
                else None,
                "decision": None
                if d is None
                else {
                    "action": d.action,
                    "reasons": list(d.reasons),
                    "suspend_at": rfc3339_or_none(d.suspend_at),
                },
                "decision_note": note,
                "warning": warning,
                "operation": None if op is None else op.to_dict(prefix),
            }
        )
    return out


def keep_running_dict(kr: KeepRunning, max_keep_running: float | None) -> dict[str, Any]:
    end = kr.effective_until(max_keep_running)
    return {
        "since": rfc3339(kr.since),
        "until": rfc3339_or_none(kr.until),
        "effective_until": rfc3339_or_none(end),
    }


def public_checkpoint(checkpoint: Checkpoint) -> dict[str, Any]:
    """A checkpoint record without its (sealed) image reference."""
    return {
        "digest": checkpoint.digest,
        "size": checkpoint.size,
        "created": checkpoint.created,
        "reason": checkpoint.reason,
        "status": checkpoint.status,
        "archive_bytes": checkpoint.archive_bytes,
        "seconds": checkpoint.seconds,
    }
