"""Small pure helpers that edit a pod's status the way the kubelet and scheduler report it."""

from __future__ import annotations


def set_condition(
    pod: dict, type_: str, status: str, reason: str | None = None, message: str | None = None
) -> None:
    conditions = pod.setdefault("status", {}).setdefault("conditions", [])
    cond = next((c for c in conditions if c.get("type") == type_), None)
    if cond is None:
        cond = {"type": type_}
        conditions.append(cond)
    cond.update({"status": status, "lastProbeTime": None})
    for key, value in (("reason", reason), ("message", message)):
        if value is None:
            cond.pop(key, None)
        else:
            cond[key] = value
