"""A scheduler for the local cluster: binds pending pods to nodes where they fit.

The decisions are plain functions of pods and nodes (``schedule``); ``Scheduler`` only watches
the store and applies them. A pod that fits nowhere stays Pending with a ``FailedScheduling``
event, and is tried again whenever a pod or a node changes, so freeing a node is observable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from ..kubevalues import parse_quantity
from .podstatus import set_condition
from .store import ApiError, Store

log = logging.getLogger(__name__)

SCHEDULER_NAME = "default-scheduler"
# The resources the scheduler accounts for; anything else requested is ignored, as extended
# resources without a node advertising them would be unschedulable anyway.
RESOURCES = ("cpu", "memory", "nvidia.com/gpu")


def pod_requests(pod: dict) -> dict[str, float]:
    """What a pod asks for: the sum over its containers, or the largest init container."""
    spec = pod.get("spec", {})

    def requests_of(container: dict) -> dict[str, float]:
        res = container.get("resources") or {}
        # As in Kubernetes, a limit without a request is the request.
        asked = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        return {r: float(parse_quantity(asked[r])) for r in RESOURCES if r in asked}

    total: dict[str, float] = {}
    for c in spec.get("containers", []):
        for r, v in requests_of(c).items():
            total[r] = total.get(r, 0.0) + v
    for c in spec.get("initContainers", []) or []:
        for r, v in requests_of(c).items():
            total[r] = max(total.get(r, 0.0), v)
    return total


def node_allocatable(node: dict) -> dict[str, float]:
    alloc = node.get("status", {}).get("allocatable") or node.get("status", {}).get("capacity", {})
    return {r: float(parse_quantity(alloc[r])) for r in RESOURCES if r in alloc}


def holds_resources(pod: dict) -> bool:
    """A pod holds its node's resources until it has finished or is gone (terminating included)."""
    return bool(pod.get("spec", {}).get("nodeName")) and pod.get("status", {}).get("phase") not in (
        "Succeeded",
        "Failed",
    )


def _match_expression(labels: dict[str, str], expr: dict) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels:
        try:
            have, want = int(labels[key]), int(values[0])
        except (ValueError, IndexError):
            return False
        return have > want if op == "Gt" else have < want
    return False


def matches_node_selection(pod: dict, node: dict) -> bool:
    """nodeSelector and required node affinity, as the real scheduler reads them."""
    spec = pod.get("spec", {})
    labels = node.get("metadata", {}).get("labels") or {}
    for k, v in (spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    # Terms are ORed; the expressions inside one term are ANDed.
    return any(
        all(_match_expression(labels, e) for e in term.get("matchExpressions") or [])
        for term in terms
    )


def tolerates_taints(pod: dict, node: dict) -> bool:
    tolerations = pod.get("spec", {}).get("tolerations") or []
    for taint in node.get("spec", {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            return False
    return True


def _tolerates(toleration: dict, taint: dict) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get(
        "value", ""
    )


@dataclass(frozen=True)
class Decision:
    node: str | None
    message: str


def schedule(pod: dict, nodes: Iterable[dict], pods: Iterable[dict]) -> Decision:
    """Choose a node for ``pod``: the fitting node with the most room left, or why none fits.

    The message for an unschedulable pod has the shape of the real scheduler's, for example
    ``0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node
    affinity/selector.``
    """
    want = pod_requests(pod)
    used: dict[str, dict[str, float]] = {}
    for p in pods:
        if holds_resources(p) and p["metadata"].get("uid") != pod["metadata"].get("uid"):
            node_used = used.setdefault(p["spec"]["nodeName"], {})
            for r, v in pod_requests(p).items():
                node_used[r] = node_used.get(r, 0.0) + v

    reasons: dict[str, int] = {}
    best: tuple[float, str] | None = None
    node_list = list(nodes)
    for node in node_list:
        name = node["metadata"]["name"]
        if node.get("spec", {}).get("unschedulable"):
            reason = "node(s) were unschedulable"
        elif not matches_node_selection(pod, node):
            reason = "node(s) didn't match Pod's node affinity/selector"
        elif not tolerates_taints(pod, node):
            reason = "node(s) had untolerated taint"
        else:
            alloc, node_used = node_allocatable(node), used.get(name, {})
            short = [r for r, v in want.items() if v > alloc.get(r, 0.0) - node_used.get(r, 0.0)]
            if short:
                for r in short:
                    reasons[f"Insufficient {r}"] = reasons.get(f"Insufficient {r}", 0) + 1
                continue
            room = sum(
                (alloc.get(r, 0.0) - node_used.get(r, 0.0) - want.get(r, 0.0))
                / max(alloc.get(r, 0.0), 1e-9)
                for r in ("cpu", "memory")
            )
            if best is None or room > best[0]:
                best = (room, name)
            continue
        reasons[reason] = reasons.get(reason, 0) + 1

    if best is not None:
        return Decision(best[1], f"Successfully assigned to {best[1]}")
    detail = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
    return Decision(None, f"0/{len(node_list)} nodes are available: {detail}.")


def is_pending_unbound(pod: dict) -> bool:
    spec, meta = pod.get("spec", {}), pod.get("metadata", {})
    return (
        not spec.get("nodeName")
        and spec.get("schedulerName", SCHEDULER_NAME) == SCHEDULER_NAME
        and not meta.get("deletionTimestamp")
        and pod.get("status", {}).get("phase", "Pending") == "Pending"
    )


class Scheduler:
    """Watches pods and nodes and binds pending pods; every change triggers one more pass."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._dirty = asyncio.Event()
        self._reported: dict[str, str] = {}  # pod uid -> last FailedScheduling message

    async def run(self) -> None:
        watchers = [
            asyncio.create_task(self._watch(resource), name=f"scheduler-watch-{resource}")
            for resource in ("pods", "nodes")
        ]
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                self.schedule_pending()
        finally:
            for w in watchers:
                w.cancel()

    async def _watch(self, resource: str) -> None:
        async for _type, _obj in self.store.watch(resource):
            self._dirty.set()

    def schedule_pending(self) -> None:
        pods, _ = self.store.list("pods")
        nodes, _ = self.store.list("nodes")
        for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", "")):
            if not is_pending_unbound(pod):
                continue
            decision = schedule(pod, nodes, pods)
            try:
                if decision.node:
                    self._bind(pod, decision.node)
                    # The bound pod now holds room: later pods in this pass must see that.
                    pod["spec"]["nodeName"] = decision.node
                else:
                    self._report_unschedulable(pod, decision.message)
            except ApiError as e:
                # The pod changed or went away under us; the watch brings us back to it.
                log.debug("scheduling %s: %s", pod["metadata"]["name"], e)

    def _bind(self, pod: dict, node: str) -> None:
        meta = pod["metadata"]

        def bind(obj: dict) -> None:
            obj["spec"]["nodeName"] = node
            set_condition(obj, "PodScheduled", "True")

        self.store.mutate("pods", meta["namespace"], meta["name"], bind)
        self._reported.pop(meta["uid"], None)
        self.store.record_event(
            pod,
            "Scheduled",
            f"Successfully assigned {meta['namespace']}/{meta['name']} to {node}",
            component=SCHEDULER_NAME,
        )
        log.info("bound %s/%s to %s", meta["namespace"], meta["name"], node)

    def _report_unschedulable(self, pod: dict, message: str) -> None:
        meta = pod["metadata"]
        if self._reported.get(meta["uid"]) == message:
            return
        self._reported[meta["uid"]] = message

        def mark(obj: dict) -> None:
            set_condition(obj, "PodScheduled", "False", "Unschedulable", message)

        self.store.mutate("pods", meta["namespace"], meta["name"], mark, subresource="status")
        self.store.record_event(
            pod, "FailedScheduling", message, type_="Warning", component=SCHEDULER_NAME
        )
        log.info("cannot schedule %s/%s: %s", meta["namespace"], meta["name"], message)
