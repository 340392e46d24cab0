"""Restore drivers: how a pod is made to start from a checkpoint instead of fresh.

The spawner, the policy, the UI and the state know only this interface. Today's driver is the
checkpoint image: the container's image becomes the checkpoint image and the runtime restores
it (CRI-O with ``[crio.checkpoint_restore] container_level_enabled = "checkpoint_restore"``,
containerd >= 2.1). Kubernetes' pod-level checkpoint/restore (KEP-5823, ``spec.restoreFrom``)
fits as a second driver.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from traitlets import Dict, List
from traitlets.config import LoggingConfigurable

from .checkpoints import (
    GPU_UUIDS_ANNOTATION,
    ORIGINAL_IMAGE_ANNOTATION,
    Checkpoint,
    NodeFacts,
)
from .errors import OwnError
from .gpu import COUNT_LABEL, PRODUCT_LABEL

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


#: how a GPU UUID starts (``nvidia-smi -L``); a device named otherwise is an index
_UUID_PREFIXES = ("GPU-", "MIG-")


@dataclass(frozen=True)
class GpuPlacement:
    """Where a GPU checkpoint may be restored: the node selector expressions the restore node
    must satisfy, and the annotations the restoring pod carries for the node's runtime."""

    expressions: list[dict[str, Any]] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    #: why, in words for the log
    reason: str = ""


def gpu_restore_placement(facts: NodeFacts) -> GpuPlacement:
    """Where a checkpoint of a pod holding GPUs can be restored safely, or :class:`RestoreFailed`
    (a sentence for the user, the facts for the admin) where nowhere can.

    A CUDA restore needs the same GPU product and count; the count is the pod's own request,
    which the restore keeps. Beyond that it depends on how the checkpoint's node handed GPUs to
    containers (``facts.gpu_device_mode``):

    * **CDI**: GPUs are remapped by UUID, so any node with the same product will do. The
      restoring pod carries the old UUIDs in :data:`GPU_UUIDS_ANNOTATION`, from which the
      node's runtime builds CRIU's ``cuda.device-map`` (:func:`device_map`). Without the old
      UUIDs nothing can be remapped, and the legacy rule applies.
    * **legacy** (and **unknown**, read as legacy, the safe reading): the restore works only
      onto the same GPU indices. Kubernetes' device plugin, not the pod spec, chooses the
      indices, so that is certain only where the pod held all of its node's GPUs: then any
      node with the same product and the same number of GPUs (``nvidia.com/gpu.count``) hands
      it indices 0 to n-1 again. Otherwise no node is safe.
    """
    if not facts.gpu_count:
        return GpuPlacement()
    held = f"{facts.gpu_count} GPU(s)"
    where = f" on node {facts.node}" if facts.node else ""
    if not facts.gpu_product:
        raise RestoreFailed(
            "no node can safely restore it: the checkpoint does not say which GPU model it "
            "was taken on",
            f"the checkpoint{where} held {held} but recorded no {PRODUCT_LABEL} (was GPU "
            "feature discovery running on that node?); a CUDA restore needs the same product",
        )
    product = {"key": PRODUCT_LABEL, "operator": "In", "values": [facts.gpu_product]}
    uuids = [d for d in facts.gpu_devices if d.startswith(_UUID_PREFIXES)]
    if facts.gpu_device_mode == "cdi" and uuids and len(uuids) == len(facts.gpu_devices):
        return GpuPlacement(
            [product],
            {GPU_UUIDS_ANNOTATION: ",".join(uuids)},
            f"CDI device mode: any {facts.gpu_product} node; GPUs {','.join(uuids)} are "
            "remapped by UUID",
        )
    if facts.gpu_device_mode == "cdi":
        mode = "CDI device mode without the GPUs' UUIDs, so no remapping: as legacy"
    elif facts.gpu_device_mode == "legacy":
        mode = "legacy device mode"
    else:
        mode = "unknown device mode, read as legacy"
    if facts.node_gpu_count and facts.gpu_count == facts.node_gpu_count:
        return GpuPlacement(
            [product, {"key": COUNT_LABEL, "operator": "In", "values": [str(facts.gpu_count)]}],
            {},
            f"{mode}: the pod held all {facts.gpu_count} GPU(s) of its node, so any "
            f"{facts.gpu_product} node with {facts.gpu_count} GPU(s) gives it the same indices",
        )
    of_node = f"{facts.node_gpu_count}" if facts.node_gpu_count else "an unknown number of"
    raise RestoreFailed(
        "no node can safely restore its GPU state: it was saved on a node that cannot remap "
        "GPUs (legacy device mode), and no node is sure to give it the same GPUs back",
        f"no safe restore target: the checkpoint{where} held {held} of {of_node} "
        f"{facts.gpu_product} GPU(s) in {mode}; a legacy CUDA restore works only onto the "
        "same GPU indices, which Kubernetes' device plugin guarantees only to a pod holding "
        "all of a node's GPUs. The checkpoint is kept for the administrator",
    )


def device_map(old_uuids: Sequence[str], new_uuids: Sequence[str]) -> str:
    """The device map that remaps a checkpoint's GPUs onto a node's: ``old=new,old=new``, in
    order, the format of ``cuda-checkpoint --action restore --device-map`` (driver 580's help:
    "a comma delimited list in the format oldUuid1=newUuid1,...", which "must contain all
    checkpointed devices"), and of CRIU's proposed ``--gpu-device-map`` (checkpoint-restore/criu
    pull request 2836). CRIU 4.3's ``cuda.device-map`` plugin option (pull request 3107)
    passes the map on to the plugin; that it takes the same text is read from those sources,
    not confirmed against a CRIU 4.3 build. ValueError when the lists cannot make a map."""
    old, new = list(old_uuids), list(new_uuids)
    if not old or len(old) != len(new):
        raise ValueError(f"a device map needs as many new GPUs as old ones, got {old} → {new}")
    for uuid in old + new:
        if not uuid.startswith(_UUID_PREFIXES) or any(c in uuid for c in ",= \t\n"):
            raise ValueError(f"{uuid!r} is not a GPU UUID")
    if len(set(old)) != len(old) or len(set(new)) != len(new):
        raise ValueError(f"a GPU appears twice in {old} → {new}")
    return ",".join(f"{o}={n}" for o, n in zip(old, new, strict=True))


def compatibility_affinity(
    facts: NodeFacts, extra_terms: list[dict], placement: GpuPlacement | None = None
) -> dict[str, Any]:
    """Required node affinity for a restore: the same CPU architecture, and for GPU pods
    :func:`gpu_restore_placement`'s expressions (:class:`RestoreFailed` where none is safe;
    ``placement``: already worked out for ``facts``)."""
    expressions = []
    if facts.arch:
        expressions.append({"key": "kubernetes.io/arch", "operator": "In", "values": [facts.arch]})
    expressions.extend((placement or gpu_restore_placement(facts)).expressions)
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
        hardware beyond CPU architecture and the GPU rules (the same GPU product, and in legacy
        device mode the same node GPU count; always required, see docs/gpu.md), e.g.
        `[{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["a2-highgpu-1g"]}]`.
        """,
    ).tag(config=True)

    def apply(self, pod: Any, checkpoint: Checkpoint, container: str) -> Any:
        placement = gpu_restore_placement(checkpoint.node)  # RestoreFailed: nowhere is safe
        if placement.reason:
            self.log.info("Restore placement of %s: %s", checkpoint.digest, placement.reason)
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
            **placement.annotations,
        }
        required = compatibility_affinity(
            checkpoint.node, list(self.node_selector_terms), placement
        )
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
