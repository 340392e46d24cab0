"""What the service does to one server: suspend, resume, discard its checkpoint, keep it running.

The REST API and the policy loop both act through :class:`Actions`. Each method checks the
server's current state with the hub (one request) and raises :class:`ActionError` with the HTTP
status the API answers: 404 unknown user or server, 409 wrong state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from jupyterhub.utils import exponential_backoff
from kubernetes_asyncio.client.rest import ApiException

from .. import promql
from ..agent.client import AgentClient, AgentError
from ..checkpoints import RESTORABLE_WHEN_STOPPED, Checkpoint, Status, pinned_image
from ..errors import JhubSuspendError
from ..kubevalues import parse_time
from ..policy import KeepRunning, PolicyConfig, Resources
from ..state import ServerState, read_state
from ..suspension import (
    SuspensionError,
    request_suspension,
    restart_kept_server,
    server_model,
    server_path,
)
from . import observe
from .gpucaps import GpuCapabilities, GpuNode, server_readiness
from .hubclient import HubClient, HubError
from .kube import Kube, marker_digest
from .listing import keep_running_dict, public_checkpoint
from .metrics import ServiceMetrics
from .operations import Operation, Operations
from .prom import MetricsUnavailable, PrometheusReader


@dataclass(frozen=True)
class GpuReadings:
    """One read of what the GPU rules judge servers by (:meth:`Actions.gpu_readings`)."""

    nodes: Mapping[str, GpuNode]
    #: per pod: GPU memory in use (bytes), and memory working set / request
    gpu_memory: Mapping[tuple[str, ...], float]
    memory_ratios: Mapping[tuple[str, ...], float]
    #: why Prometheus could not be read ("" when it could)
    metrics_error: str = ""


def gpu_refusal_of(
    readings: GpuReadings,
    node: str,
    pod: tuple[str, str],
    requests: Resources,
    memory_limit: float | None,
) -> str | None:
    """Why the server whose pod (namespace, name) on ``node`` holds GPUs may not be suspended
    (pure): its node is not known to checkpoint them, or a per-server rule fails (legacy
    device mode, host memory to stage its GPU memory; see
    :func:`jhub_suspend.gpu.server_gpu_readiness`). None when it may."""
    if not node:
        return "its pod is not on a node yet"
    facts = readings.nodes.get(node)
    if facts is None or not facts.capability.capable:
        return facts.capability.reason if facts else f"node {node} was not assessed"
    if readings.metrics_error:
        # as in the policy, metrics that cannot be read never let a GPU server be suspended
        return f"the GPU memory it uses cannot be read: {readings.metrics_error}"
    verdict = server_readiness(
        node,
        facts,
        gpus=requests.gpu,
        memory_limit=memory_limit,
        memory_used=observe.working_set(readings.memory_ratios.get(pod), requests),
        gpu_memory_used=readings.gpu_memory.get(pod),
    )
    return None if verdict.capable else verdict.reason


class ActionsContext(Protocol):
    """What the actions use of the service that runs them."""

    log: logging.Logger
    hub: HubClient
    kube: Kube
    operations: Operations
    metrics: ServiceMetrics
    namespace: str
    checkpoint_repository: str
    suspend_timeout: float
    resume_timeout: float
    gpu_resources: set[str]
    gpu_capabilities: GpuCapabilities
    prometheus: PrometheusReader
    queries: promql.Queries
    names: promql.MetricNames

    @property
    def policy_config(self) -> PolicyConfig: ...

    def now(self) -> datetime: ...

    def agent(self) -> AgentClient | None: ...


class ActionError(JhubSuspendError):
    """An action cannot be done; ``status`` is what the API answers (404, 409)."""


def _name(user: str, server_name: str) -> str:
    """``alice`` for a default server, ``alice/lab`` for a named one."""
    return f"{user}/{server_name}" if server_name else user


class Actions:
    def __init__(self, service: ActionsContext) -> None:
        self.service = service
        self.log = service.log
        # image references whose deletion failed; the retention sweep tries again
        self.orphans: set[str] = set()

    # ---- lookups ---------------------------------------------------------------------------

    async def server(self, user: str, server_name: str) -> dict[str, Any]:
        """The hub's model of one server (state included); 404 when there is none."""
        try:
            model = await server_model(self.service.hub.request, user, server_name)
        except HubError as e:
            if e.status == 404:
                raise ActionError(404, f"no user {user!r}") from None
            raise
        if model is None:
            what = f"server {server_name!r}" if server_name else "default server"
            raise ActionError(404, f"user {user!r} has no {what}")
        return model

    def _busy(self, user: str, server_name: str) -> None:
        op = self.service.operations.running_for(user, server_name)
        if op is not None:
            verb = "suspending" if op.kind == "suspend" else "resuming"
            raise ActionError(
                409, f"{_name(user, server_name)} is already {verb} (operation {op.id})"
            )

    # ---- suspend ---------------------------------------------------------------------------

    async def suspend(
        self, user: str, server_name: str, requested_by: str, reason: str = "manual"
    ) -> Operation:
        """Suspend a running server in the background (``reason``: manual, or drain)."""
        self._busy(user, server_name)
        model = await self.server(user, server_name)
        if model.get("pending"):
            raise ActionError(
                409, f"{_name(user, server_name)} is busy ({model['pending']} pending)"
            )
        if not model.get("ready"):
            raise ActionError(409, f"{_name(user, server_name)} is not running")
        state = read_state(model.get("state"))
        if not state.pod_name:
            raise ActionError(
                409, f"{_name(user, server_name)} is not a SuspendingKubeSpawner server"
            )
        await self._gpu_capable(user, server_name, state)
        return self.start_suspension(user, server_name, requested_by, reason)

    async def _gpu_capable(self, user: str, server_name: str, state: ServerState) -> None:
        """409 when the server holds GPUs and may not be suspended (:meth:`gpu_refusal`)."""
        svc = self.service
        pod = await svc.kube.read_pod(state.namespace or svc.namespace, state.pod_name)
        why = await self.gpu_refusal(pod, fresh=True)
        if why is not None:
            raise ActionError(409, f"{_name(user, server_name)} is left running: {why}")

    async def gpu_refusal(self, pod: dict[str, Any] | None, *, fresh: bool) -> str | None:
        """Why a server's pod that holds GPUs may not be suspended (:func:`gpu_refusal_of`);
        None when it may, or when it holds no GPUs. ``fresh``: ask the node's agent now rather
        than reuse its report. Prometheus is asked every time."""
        svc = self.service
        if pod is None:
            return None
        requests = observe.pod_requests(pod, svc.gpu_resources)
        if requests.gpu <= 0:
            return None
        node = (pod.get("spec") or {}).get("nodeName") or ""
        meta = pod.get("metadata") or {}
        key = (meta.get("namespace") or svc.namespace, meta.get("name") or "")
        readings = await self.gpu_readings([node] if node else [], fresh=fresh)
        limit = observe.pod_memory_limit(pod, svc.gpu_resources)
        return gpu_refusal_of(readings, node, key, requests, limit)

    async def gpu_readings(self, nodes: list[str], *, fresh: bool) -> GpuReadings:
        """What the GPU rules need to judge servers on ``nodes``: each node's facts (its agent
        asked now when ``fresh``) and, from Prometheus, each pod's GPU memory and memory use."""
        svc = self.service
        facts = await svc.gpu_capabilities.nodes(nodes, fresh=fresh) if nodes else {}
        try:
            gpu_memory, ratios = await svc.prometheus.gpu_staging(
                svc.queries, svc.names, svc.now().timestamp()
            )
        except MetricsUnavailable as e:
            return GpuReadings(facts, {}, {}, str(e))
        return GpuReadings(facts, gpu_memory, ratios)

    def start_suspension(
        self, user: str, server_name: str, requested_by: str, reason: str
    ) -> Operation:
        """Ask for a suspension in the background; the operation records the outcome."""
        svc = self.service

        async def work(op: Operation) -> None:
            t0 = time.monotonic()
            outcome = "error"
            try:
                after = await request_suspension(
                    svc.hub.request,
                    svc.kube.core,
                    user,
                    server_name,
                    reason,
                    timeout=svc.suspend_timeout,
                )
                state = read_state(after.get("state"))
                checkpoint = state.checkpoint
                if checkpoint is not None and checkpoint.restorable:
                    outcome, op.status = "success", "succeeded"
                    op.message = "suspended"
                    op.result = {"checkpoint": public_checkpoint(checkpoint)}
                    svc.metrics.checkpoint_bytes.observe(float(checkpoint.size))
                else:
                    outcome, op.status = "failed", "failed"
                    op.message = (
                        state.last_error.message
                        if state.last_error and state.last_error.message
                        else "the server stopped without a checkpoint"
                    )
            except SuspensionError as e:
                op.status, op.message = "failed", str(e)
            except Exception as e:
                op.status, op.message = "failed", f"{type(e).__name__}: {e}"
                self.log.exception("Suspending %s/%s failed", user, server_name)
            finally:
                op.finished = svc.now()
                if op.status == "running":  # cancelled
                    op.status, op.message = "failed", "cancelled"
                svc.metrics.suspensions.labels(reason, outcome).inc()
                svc.metrics.suspension_duration.labels(outcome).observe(time.monotonic() - t0)
            self.log.info(
                "Suspension of %s/%s (%s, by %s): %s %s",
                user, server_name, reason, requested_by, op.status, op.message,
            )  # fmt: skip

        self.log.info("Suspending %s/%s (%s, by %s)", user, server_name, reason, requested_by)
        return svc.operations.start(
            "suspend", user, server_name, requested_by, reason, svc.now(), work
        )

    # ---- resume ----------------------------------------------------------------------------

    async def resume(self, user: str, server_name: str, requested_by: str) -> Operation:
        svc = self.service
        state, checkpoint = await self._stopped_with_checkpoint(
            user, server_name, "is already running or starting", "restore"
        )
        if await self._discarded(state, checkpoint):
            raise ActionError(409, f"the checkpoint of {_name(user, server_name)} was discarded")
        try:
            await svc.hub.request("POST", server_path(user, server_name), {})
        except HubError as e:
            if e.status == 400:
                raise ActionError(409, e.message) from None
            raise

        async def work(op: Operation) -> None:
            t0 = time.monotonic()
            outcome = "error"

            async def ready() -> dict | bool:
                s = await server_model(svc.hub.request, user, server_name)
                if s is None:
                    raise ActionError(409, "the server was removed while it was restoring")
                if s.get("ready"):
                    return s
                return False if s.get("pending") else {"stopped": True, **s}

            try:
                after = await exponential_backoff(
                    ready, f"{_name(user, server_name)} was not ready within {svc.resume_timeout} s",
                    timeout=svc.resume_timeout, max_wait=2,
                )  # fmt: skip
                state = read_state(after.get("state"))
                checkpoint = state.checkpoint
                if after.get("stopped"):
                    op.status, op.message = "failed", "the server did not start"
                elif checkpoint is not None and checkpoint.status == Status.RESTORE_FAILED:
                    outcome, op.status = "fresh", "failed"
                    op.message = state.last_error.message if state.last_error else "restore failed"
                else:
                    outcome, op.status, op.message = "success", "succeeded", "restored"
            except Exception as e:
                op.status, op.message = "failed", str(e) or type(e).__name__
            finally:
                op.finished = svc.now()
                if op.status == "running":
                    op.status, op.message = "failed", "cancelled"
                svc.metrics.restores.labels("manual", outcome).inc()
                svc.metrics.restore_duration.labels(outcome).observe(time.monotonic() - t0)

        self.log.info("Resuming %s/%s (by %s)", user, server_name, requested_by)
        return svc.operations.start(
            "resume", user, server_name, requested_by, "manual", svc.now(), work
        )

    def hand_back(self, user: str, server_name: str) -> Operation:
        """Start a locked-out server again (see ServerView.locked_out): the spawner adopts the
        live pod, nothing restarts, and the hub routes to it again."""
        svc = self.service

        async def work(op: Operation) -> None:
            try:
                after = await restart_kept_server(
                    svc.hub.request, user, server_name, timeout=svc.resume_timeout
                )
            except Exception as e:
                op.status, op.message = "failed", str(e) or type(e).__name__
            else:
                running = bool(after.get("ready"))
                op.status = "succeeded" if running else "failed"
                op.message = "handed back" if running else "the server did not start"
            finally:
                op.finished = svc.now()
                if op.status == "running":
                    op.status, op.message = "failed", "cancelled"
            self.log.info("Handing back %s: %s %s", _name(user, server_name), op.status, op.message)

        self.log.warning(
            "%s kept running after a failed suspension but the hub has it stopped; "
            "starting it again (its live pod is adopted)",
            _name(user, server_name),
        )
        return svc.operations.start(
            "resume", user, server_name, "service", "hand-back", svc.now(), work
        )

    # ---- discard ---------------------------------------------------------------------------

    async def _discarded(self, state: ServerState, checkpoint: Checkpoint) -> bool:
        markers = await self.service.kube.list_markers(state.namespace or self.service.namespace)
        return any(marker_digest(m) == checkpoint.digest for m in markers)

    async def _stopped_with_checkpoint(
        self, user: str, server_name: str, when_running: str, verb: str
    ) -> tuple[ServerState, Checkpoint]:
        """The spawner state and restorable checkpoint of a stopped server, or the 409 that
        says why there is none to ``verb``."""
        self._busy(user, server_name)
        model = await self.server(user, server_name)
        if model.get("ready") or model.get("pending"):
            raise ActionError(409, f"{_name(user, server_name)} {when_running}")
        state = read_state(model.get("state"))
        checkpoint = state.checkpoint
        if checkpoint is None or checkpoint.status not in RESTORABLE_WHEN_STOPPED:
            raise ActionError(409, f"{_name(user, server_name)} has no checkpoint to {verb}")
        return state, checkpoint

    async def discard(self, user: str, server_name: str, requested_by: str) -> dict[str, Any]:
        """Discard a stopped server's checkpoint: mark it (the spawner then starts fresh) and
        delete its image."""
        svc = self.service
        state, checkpoint = await self._stopped_with_checkpoint(
            user, server_name, "is running; it has no checkpoint", "discard"
        )
        namespace = state.namespace or svc.namespace
        digest = checkpoint.digest
        created = await svc.kube.create_marker(namespace, digest, f"{_name(user, server_name)}")
        if not created:
            raise ActionError(
                409, f"the checkpoint of {_name(user, server_name)} is already discarded"
            )
        ref = pinned_image(svc.checkpoint_repository, namespace, state.pod_name, digest)
        deleted, message = await self.delete_image(ref)
        self.log.info(
            "Discarded the checkpoint %s of %s/%s (by %s)", digest, user, server_name, requested_by
        )
        return {
            "user": user,
            "server_name": server_name,
            "digest": digest,
            "image_deleted": deleted,
            "message": message,
        }

    async def delete_image(self, ref: str) -> tuple[bool, str]:
        """Delete a checkpoint image through a node agent; (deleted, message). A failure is
        remembered and retried by the retention sweep."""
        agent = self.service.agent()
        if agent is None:
            self.orphans.add(ref)
            return False, "no node agent configured; the image is left in the registry"
        try:
            await agent.delete_image(ref)
        except AgentError as e:
            self.orphans.add(ref)
            self.log.warning("Could not delete checkpoint image %s: %s", ref, e)
            return False, f"the image could not be deleted yet ({e}); it will be retried"
        self.orphans.discard(ref)
        return True, "discarded; the next start is a fresh server"

    # ---- keep running ----------------------------------------------------------------------

    async def keep_running(
        self, user: str, server_name: str, enabled: bool, hours: float | None, requested_by: str
    ) -> dict[str, Any]:
        svc = self.service
        cfg = svc.policy_config
        if enabled and not cfg.allow_keep_running:
            raise ActionError(409, "the policy does not allow keep-running opt-outs")
        model = await self.server(user, server_name)
        state = read_state(model.get("state"))
        if not model.get("ready") or not state.pod_name:
            raise ActionError(409, f"{_name(user, server_name)} is not running")
        namespace = state.namespace or svc.namespace
        now = svc.now()
        patch = observe.keep_running_annotations(enabled, now, hours)
        try:
            await svc.kube.patch_pod_annotations(namespace, state.pod_name, patch)
        except ApiException as e:
            if e.status == 404:
                raise ActionError(409, f"the pod of {_name(user, server_name)} is gone") from None
            raise
        self.log.info(
            "Keep-running for %s/%s %s by %s",
            user, server_name, f"set ({hours or 'no end'} h)" if enabled else "cleared",
            requested_by,
        )  # fmt: skip
        if not enabled:
            return {"user": user, "server_name": server_name, "keep_running": None}
        kr = KeepRunning(since=now, until=parse_time(patch[observe.KEEP_RUNNING_UNTIL]))
        return {
            "user": user,
            "server_name": server_name,
            "keep_running": keep_running_dict(kr, cfg.max_keep_running),
        }
