"""Restore drivers: how a pod is made to start from a checkpoint instead of fresh.

The spawner, the policy, the UI and the state know only this interface. Today's driver is the
checkpoint image: the container's image becomes the checkpoint image and the runtime restores
it (CRI-O with ``[crio.checkpoint_restore] container_level_enabled = "checkpoint_restore"``,
containerd >= 2.1). Kubernetes' pod-level checkpoint/restore (KEP-5823, ``spec.restoreFrom``)
fits as a second driver.
"""

from __future__ import annotations

import copy
from typing import Any

from traitlets import Dict, List
from traitlets.config import LoggingConfigurable

from .checkpoints import ORIGINAL_IMAGE_ANNOTATION, Checkpoint, NodeFacts
from .errors import OwnError

# Waiting reasons after which a restore will not succeed by waiting longer.
FAILED_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerError",
        "CreateContainerConfigError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)


def compatibility_affinity(facts: NodeFacts, extra_terms: list[dict]) -> dict[str, Any]:
    """Required node affinity for a restore: the same CPU architecture, and for GPU pods the
    same GPU product (the count is the pod's own request, which the restore keeps)."""
    expressions = []
    if facts.arch:
        expressions.append({"key": "kubernetes.io/arch", "operator": "In", "values": [facts.arch]})
    if facts.gpu_count and facts.gpu_product:
        expressions.append(
            {"key": "nvidia.com/gpu.product", "operator": "In", "values": [facts.gpu_product]}
        )
    expressions.extend(extra_terms)
    if not expressions:
        return {}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }


def merge_affinity(existing: dict[str, Any] | None, required: dict[str, Any]) -> dict[str, Any]:
    """Add the restore's required expressions to every existing node selector term (terms are
    ORed, so each must also carry the restore's constraints)."""
    merged = copy.deepcopy(existing or {})
    if not required:
        return merged
    needed = required["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"]
    node_affinity = merged.setdefault("nodeAffinity", {})
    req = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = req.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({"matchExpressions": []})
    for term in terms:
        term.setdefault("matchExpressions", []).extend(copy.deepcopy(needed))
    return merged


class RestoreFailed(OwnError):
    """A restore cannot succeed. ``str()`` is a sentence for the user; ``detail`` is what
    Kubernetes and the runtime said, for the admin."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message


def may_get_room(unschedulable_message: str) -> bool:
    """Whether an Unschedulable pod may still be scheduled: some node is compatible (it passed
    the taint, affinity and selector filters, which the scheduler runs before the resource fit
    and reports first) and lacks only free CPU, memory or GPUs, e.g. ``0/3 nodes are available:
    1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector.``"""
    return "Insufficient " in unschedulable_message


def restore_failure(pod: dict[str, Any] | None, container: str) -> RestoreFailed | None:
    """Why a restoring pod will never run, read from its status; None while it may still."""
    if not pod:
        return None
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        why = status.get("reason") or status.get("message") or "Failed"
        return RestoreFailed("the restored server stopped at once", why)
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
            message = cond.get("message", "")
            if may_get_room(message):
                continue  # Pending until room frees (the suspend service's capacity-pressure mode)
            return RestoreFailed("no node has the same kind of CPU and GPU", message)
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != container:
            continue
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in FAILED_WAITING_REASONS:
            detail = f"{reason}: {waiting.get('message', '')}"
            return RestoreFailed(_explain(reason, waiting.get("message", "")), detail)
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            code = terminated.get("exitCode")
            return RestoreFailed("the restored server stopped at once", f"exit code {code}")
    return None


def _explain(reason: str, message: str) -> str:
    """A waiting reason in words a notebook user can act on."""
    low = message.lower()
    if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
        if "manifest unknown" in low or "not found" in low:
            return "the saved checkpoint no longer exists in the registry"
        return "the saved checkpoint could not be downloaded"
    if "has bad size" in low or "no such file" in low:
        return "a file it had open is gone or has changed since it was saved"
    return "the container runtime could not restore it"


class RestoreDriver(LoggingConfigurable):
    """How a pod starts from a checkpoint. Subclasses change the pod manifest; the spawner
    creates the pod, waits for it, and falls back to a fresh start when a restore fails."""

    def apply(self, pod: Any, checkpoint: Checkpoint, container: str) -> Any:
        """Return the pod manifest (a kubernetes_asyncio V1Pod) that restores ``checkpoint``."""
        raise NotImplementedError

    def failure(self, pod: dict[str, Any] | None, container: str) -> RestoreFailed | None:
        """Why the restoring pod will not come up, or None while it may."""
        return restore_failure(pod, container)


class CheckpointImageDriver(RestoreDriver):
    """Restore by running the checkpoint image in place of the container's image."""

    node_selector_terms = List(
        Dict(),
        help="""Extra `matchExpressions` a restore node must satisfy, for sites with mixed
        hardware beyond CPU architecture and GPU product (which are always required), e.g.
        `[{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["a2-highgpu-1g"]}]`.
        """,
    ).tag(config=True)

    def apply(self, pod: Any, checkpoint: Checkpoint, container: str) -> Any:
        for c in pod.spec.containers:
            if c.name == container:
                c.image = checkpoint.image
                # The checkpoint is pulled by digest; never reuse a stale local copy of a tag.
                c.image_pull_policy = "IfNotPresent"
                break
        else:
            raise RestoreFailed(f"the pod has no container {container!r} to restore into")
        pod.metadata.annotations = {
            **(pod.metadata.annotations or {}),
            ORIGINAL_IMAGE_ANNOTATION: checkpoint.original_image,
        }
        required = compatibility_affinity(checkpoint.node, list(self.node_selector_terms))
        affinity = pod.spec.affinity.to_dict() if pod.spec.affinity else None
        pod.spec.affinity = merge_affinity(_camel(affinity), required) or None
        return pod


def _camel(obj: Any) -> Any:
    """kubernetes_asyncio's to_dict() gives snake_case keys; the API (and merge) uses camelCase."""
    if isinstance(obj, dict):
        return {_camel_key(k): _camel(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_camel(v) for v in obj]
    return obj


def _camel_key(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p.title() for p in rest)
