"""Emptying a node of notebooks by suspending them (``POST api/nodes/{node}/drain``,
``jhub-suspend drain NODE``), for clusters that do not want an admission webhook.

What to do with each server whose pod is on the node is :func:`drain_steps`, pure: suspend it,
wait for the suspension this service already runs for it, leave it running (and say why), or
skip it (its pod is going away). :class:`Drains` reads the servers as ``GET api/servers`` does
(:meth:`PolicyLoop.current_views`), suspends through :meth:`Actions.suspend` a few at a time
(``drain_concurrency``), and keeps every server's outcome in the drain's operation, which
clients poll at ``api/operations/{id}``. Cordoning the node is left to the admin.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from ..errors import JhubSuspendError
from ..policy import PolicyConfig, keep_running_in_force
from .actions import ActionError, Actions, gpu_refusal_of
from .kube import Kube
from .loop import PolicyLoop
from .observe import ServerView
from .operations import Operation, Operations

Action = Literal["suspend", "wait", "leave", "skip"]
#: every outcome a server of a drain can have; ``pending`` and ``suspending`` are not final
OUTCOMES = (
    "pending",
    "suspending",
    "suspended",
    "failed",
    "left_running",
    "not_running",
    "would_suspend",
)
#: outcomes that leave a notebook running on the node
LEFT = frozenset({"failed", "left_running"})
# Kubernetes names nodes as DNS subdomains (RFC 1123)
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
NODE_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


class DrainContext(Protocol):
    """What a drain uses of the service that runs it."""

    log: logging.Logger
    kube: Kube
    loop: PolicyLoop
    actions: Actions
    operations: Operations
    drain_concurrency: int

    @property
    def policy_config(self) -> PolicyConfig: ...

    def now(self) -> datetime: ...


@dataclass(frozen=True)
class DrainStep:
    """What a drain does with one server on the node, and why."""

    user: str
    server_name: str
    namespace: str
    pod: str
    state: str
    action: Action
    reason: str
    #: ``wait``: the id of the suspension under way
    operation: str | None = None

    @property
    def name(self) -> str:
        return f"{self.user}/{self.server_name}" if self.server_name else self.user


def _step(
    view: ServerView,
    now: datetime,
    config: PolicyConfig,
    suspension: str | None,
    gpu_refusal: str | None,
) -> tuple[Action, str, str | None]:
    if not view.pod_alive:
        return "skip", f"its pod is already going away (the hub has it {view.state})", None
    if suspension is not None:
        why = f"already being suspended by this service (operation {suspension})"
        return "wait", why, suspension
    if view.state == "restoring":
        return "leave", "being restored; drain again once it runs", None
    if view.pending == "spawn":
        return "leave", "starting; drain again once it runs", None
    if view.pending == "stop":
        what = "suspended" if view.state == "suspending" else "stopped"
        return "leave", f"being {what} by the hub at someone else's request", None
    if view.locked_out:
        return "leave", (
            "its last suspension failed and the hub counts it stopped; the service hands it "
            "back to the hub, then it can be drained"
        ), None  # fmt: skip
    if view.state not in ("running", "suspending"):  # "suspending" here: a mark, no stop yet
        return "leave", f"the hub has it {view.state} but its pod runs", None
    kept, _, why = keep_running_in_force(view.keep_running, config, now)
    if kept:
        return "leave", why, None
    if gpu_refusal is not None:
        return "leave", f"it holds GPUs and cannot be suspended safely: {gpu_refusal}", None
    return "suspend", "running", None


def drain_steps(
    views: Iterable[ServerView],
    node: str,
    *,
    now: datetime,
    config: PolicyConfig,
    suspensions: Mapping[tuple[str, str], str],
    gpu_refusals: Mapping[tuple[str, str], str] | None = None,
) -> list[DrainStep]:
    """What a drain of ``node`` does with each server whose pod is on it, by user and server
    name. ``suspensions``: the id of this service's suspension under way, per server.
    ``gpu_refusals``: why a server holding GPUs may not be suspended, per server (see
    :meth:`jhub_suspend.service.actions.Actions.gpu_refusal`).

    * ``suspend``: it runs, and no keep-running opt-out in force holds it;
    * ``wait``: this service is suspending it already; the drain reports how that ends;
    * ``leave``: it stays on the node, for the reason given (a keep-running opt-out, GPUs it
      cannot be suspended with, or a start, restore, stop or hand-back under way that a
      suspension cannot interrupt);
    * ``skip``: its pod is already being deleted or has ended; nothing is left on the node.
    """
    steps = []
    for v in views:
        if v.node != node:
            continue
        action, reason, op = _step(
            v, now, config, suspensions.get(v.key), (gpu_refusals or {}).get(v.key)
        )
        steps.append(
            DrainStep(v.user, v.server_name, v.namespace, v.pod_name, v.state, action, reason, op)
        )
    return sorted(steps, key=lambda s: (s.user, s.server_name))


def entry(step: DrainStep, dry_run: bool) -> dict[str, Any]:
    """The API's form of one server of a drain, before it acts."""
    acts = step.action in ("suspend", "wait")
    if acts:
        outcome = "would_suspend" if dry_run else "pending"
    else:
        outcome = "left_running" if step.action == "leave" else "not_running"
    return {
        "user": step.user,
        "server_name": step.server_name,
        "namespace": step.namespace,
        "pod": step.pod,
        "state": step.state,
        "action": step.action,
        "reason": step.reason,
        "outcome": outcome,
        "message": step.reason if not acts else "",
        "operation": step.operation,
        "checkpoint": None,
    }


def counts(entries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    out = dict.fromkeys(OUTCOMES, 0)
    for e in entries:
        out[e["outcome"]] += 1
    return out


def summary(node: str, entries: list[dict[str, Any]], dry_run: bool) -> tuple[bool, str]:
    """(whether the drain left no notebook running that it was asked to suspend, one line)."""
    if not entries:
        return True, f"no notebook server on node {node}"
    n = counts(entries)
    if dry_run:
        return True, (
            f"dry run: would suspend {n['would_suspend']}, leave {n['left_running']} running, "
            f"skip {n['not_running']}"
        )
    left = sum(1 for e in entries if e["outcome"] in LEFT)
    parts = [f"suspended {n['suspended']}"]
    if n["failed"]:
        parts.append(f"{n['failed']} failed and kept running")
    if n["left_running"]:
        parts.append(f"left {n['left_running']} running")
    if n["not_running"]:
        parts.append(f"skipped {n['not_running']} not running")
    text = ", ".join(parts)
    return left == 0, text + (f"; {left} still on {node}" if left else f"; {node} is empty")


class Drains:
    """Starts drains and runs their suspensions."""

    def __init__(self, service: DrainContext) -> None:
        self.service = service
        self.log = service.log

    def _refuse_second(self, node: str) -> None:
        running = self.service.operations.draining(node)
        if running is not None:
            raise ActionError(409, f"node {node} is already being drained (operation {running.id})")

    async def _gpu_refusals(self, views: list[ServerView], node: str) -> dict[tuple[str, str], str]:
        """Why each running server on ``node`` that holds GPUs may not be suspended: one read
        of the node's agent (now) and of Prometheus for them all."""
        holders = [
            v
            for v in views
            if v.node == node and v.pod_alive and v.requests is not None and v.requests.gpu > 0
        ]
        if not holders:
            return {}
        readings = await self.service.actions.gpu_readings([node], fresh=True)
        out = {}
        for v in holders:
            assert v.requests is not None  # as filtered above
            why = gpu_refusal_of(
                readings, node, (v.namespace, v.pod_name), v.requests, v.memory_limit
            )
            if why is not None:
                out[v.key] = why
        return out

    async def start(self, node: str, *, dry_run: bool, requested_by: str) -> Operation:
        """Plan the drain of ``node`` and start it. The operation it returns is finished
        already when there is nothing to suspend (a dry run, or nothing running there)."""
        svc = self.service
        if len(node) > 253 or not NODE_NAME.fullmatch(node):
            raise ActionError(400, f"{node[:80]!r} is not a Kubernetes node name")
        self._refuse_second(node)
        known = await svc.kube.node_exists(node)
        if known is False:
            raise ActionError(404, f"the cluster has no node {node!r}")
        views = await svc.loop.current_views()
        suspensions = {(o.user, o.server_name): o.id for o in svc.operations.running("suspend")}
        steps = drain_steps(
            views,
            node,
            now=svc.now(),
            config=svc.policy_config,
            suspensions=suspensions,
            gpu_refusals=await self._gpu_refusals(views, node),
        )
        self._refuse_second(node)  # another drain of it may have started while this read
        entries = [entry(s, dry_run) for s in steps]
        acting = [(s, e) for s, e in zip(steps, entries, strict=True) if e["outcome"] == "pending"]
        result: dict[str, Any] = {
            "node": node,
            "dry_run": dry_run,
            "node_checked": known is not None,
            "servers": entries,
            "counts": counts(entries),
        }

        async def work(op: Operation) -> None:
            limit = asyncio.Semaphore(svc.drain_concurrency)
            try:
                await asyncio.gather(*(self._one(op, s, e, limit, requested_by) for s, e in acting))
            finally:
                for e in entries:
                    if e["outcome"] in ("pending", "suspending"):  # cancelled
                        e["outcome"], e["message"] = "failed", "the drain was cancelled"
                result["counts"] = counts(entries)
                ok, op.message = summary(node, entries, dry_run)
                op.status = "succeeded" if ok else "failed"
                op.finished = svc.now()
                self.log.info("Drain of node %s (by %s): %s", node, requested_by, op.message)

        self.log.info(
            "Draining node %s%s (by %s): %d server(s) on it, suspending %d, %d at a time",
            node, " (dry run)" if dry_run else "", requested_by, len(steps), len(acting),
            svc.drain_concurrency,
        )  # fmt: skip
        op = svc.operations.start(
            "drain", "", "", requested_by, "drain", svc.now(), work, node=node
        )
        op.result = result
        op.message = f"suspending {len(acting)} of {len(entries)} server(s)"
        if not acting:
            assert op.task is not None
            await op.task  # finishes at once
        return op

    async def _one(
        self,
        op: Operation,
        step: DrainStep,
        e: dict[str, Any],
        limit: asyncio.Semaphore,
        requested_by: str,
    ) -> None:
        svc = self.service
        async with limit:
            # While this waited for its slot, the policy or an admin may have started one.
            started = svc.operations.running_for(step.user, step.server_name)
            try:
                if step.action == "wait" and step.operation:
                    sub = svc.operations.get(step.operation)
                    if sub is None:
                        raise ActionError(409, f"its suspension {step.operation} is forgotten")
                elif started is not None and started.kind == "suspend":
                    sub = started
                else:
                    sub = await svc.actions.suspend(
                        step.user, step.server_name, requested_by, reason="drain"
                    )
            except JhubSuspendError as ex:  # refused (state changed), or the hub failed
                e["outcome"], e["message"] = "failed", ex.message
            except Exception as ex:
                self.log.exception("Drain of %s: suspending %s failed", op.node, step.name)
                e["outcome"], e["message"] = "failed", f"{type(ex).__name__}: {ex}"
            else:
                e["operation"], e["outcome"], e["message"] = sub.id, "suspending", "suspending"
                assert sub.task is not None
                # wait() never cancels what it waits for: a cancelled drain leaves it running
                await asyncio.wait({sub.task})
                e["message"] = sub.message
                if sub.status == "succeeded":
                    e["outcome"] = "suspended"
                    e["checkpoint"] = sub.result.get("checkpoint")
                else:
                    e["outcome"] = "failed"
        done = sum(1 for x in op.result["servers"] if x["outcome"] not in ("pending", "suspending"))
        op.result["counts"] = counts(op.result["servers"])
        op.message = f"{done} of {len(op.result['servers'])} server(s) done"
        self.log.info("Drain of node %s: %s %s: %s", op.node, step.name, e["outcome"], e["message"])
