"""What an update or a delete does to an object: identity, generation, preconditions, grace."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ...kubevalues import rfc3339
from .resources import Obj, ResourceInfo, conflict
from .validation import apply_defaults

# --- updates ---------------------------------------------------------------------------------

_IDENTITY_FIELDS = (
    "uid",
    "name",
    "namespace",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "resourceVersion",
)


def keep_identity(old: Mapping[str, Any], new: Obj) -> None:
    """Metadata that no update can change."""
    metadata = new.setdefault("metadata", {})
    for key in _IDENTITY_FIELDS:
        if key in old["metadata"]:
            metadata[key] = old["metadata"][key]
        else:
            metadata.pop(key, None)
    new["kind"] = old.get("kind")
    new["apiVersion"] = old.get("apiVersion")


def prepare_update(
    info: ResourceInfo,
    old: Mapping[str, Any],
    new: Obj,
    subresource: str | None,
    *,
    keep_status: bool = True,
) -> Obj:
    """The object an update leaves behind: the status subresource changes only the status,
    the main resource everything but the status (unless ``keep_status`` is false, which
    in-process controllers use to change both at once)."""
    if subresource == "status":
        result = copy.deepcopy(dict(old))
        if "status" in new:
            result["status"] = copy.deepcopy(new["status"])
        else:
            result.pop("status", None)
        return result
    result = copy.deepcopy(new)
    keep_identity(old, result)
    if info.has_status and keep_status:
        if "status" in old:
            result["status"] = copy.deepcopy(old["status"])
        else:
            result.pop("status", None)
    apply_defaults(info.plural, result)
    if info.plural == "services":
        spec = result.setdefault("spec", {})
        old_spec = old.get("spec") or {}
        for key in ("clusterIP", "clusterIPs"):
            if key in old_spec and not spec.get(key):
                spec[key] = copy.deepcopy(old_spec[key])
    return result


def bump_generation(old: Mapping[str, Any], new: Obj) -> None:
    """metadata.generation counts changes of the spec (objects without one have none)."""
    if "generation" not in new["metadata"]:
        return
    if old.get("spec") != new.get("spec"):
        new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1


def should_delete_during_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """An object marked for deletion with grace 0 goes away once its finalizers are gone."""
    metadata = new["metadata"]
    return (
        "deletionTimestamp" in metadata
        and not metadata.get("finalizers")
        and old["metadata"].get("deletionGracePeriodSeconds") == 0
    )


def without_resource_version(obj: Mapping[str, Any]) -> Obj:
    result = dict(obj)
    result["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return result


# --- deletion --------------------------------------------------------------------------------


def check_preconditions(
    resource: str, obj: Mapping[str, Any], preconditions: Mapping[str, Any] | None
) -> None:
    if not preconditions:
        return
    metadata = obj["metadata"]
    name = metadata["name"]
    uid = preconditions.get("uid")
    if uid is not None and uid != metadata.get("uid"):
        raise conflict(
            resource,
            name,
            f"Precondition failed: UID in precondition: {uid}, UID in object meta: {metadata.get('uid')}",
        )
    rv = preconditions.get("resourceVersion")
    if rv is not None and rv != metadata.get("resourceVersion"):
        raise conflict(
            resource,
            name,
            f"Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in"
            f" object meta: {metadata.get('resourceVersion')}",
        )


def deletion_grace(resource: str, obj: Mapping[str, Any], requested: int | None) -> int:
    """The grace period a delete gets: pods that a kubelet runs get theirs, all else none."""
    if resource != "pods":
        return 0
    spec = obj.get("spec") or {}
    phase = (obj.get("status") or {}).get("phase")
    if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
        return 0
    grace = requested if requested is not None else spec.get("terminationGracePeriodSeconds")
    grace = 30 if grace is None else int(grace)
    return 1 if grace < 0 else grace


def mark_for_deletion(obj: Obj, grace: int, now: float) -> None:
    metadata = obj["metadata"]
    metadata["deletionTimestamp"] = rfc3339(now + grace)
    metadata["deletionGracePeriodSeconds"] = grace
    if "generation" in metadata:
        metadata["generation"] += 1


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)
