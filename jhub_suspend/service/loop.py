"""The policy loop: every cycle, observe every server at once, decide, and act.

One cycle reads, concurrently and independently of the number of users (beyond paging):

* the hub's users with all their servers and spawner state (paginated),
* the pods of the notebooks' namespace (one list; Pending pods come from it, or from one
  cluster-wide list of Pending pods),
* the discard markers (one list),
* the Prometheus signals (a constant number of queries, :mod:`jhub_suspend.promql`),

then calls :func:`jhub_suspend.policy.decide` (or the ``decide_hook`` that replaces it) and
asks for the suspensions of :attr:`Plan.to_suspend` unless the policy is in dry-run mode. Prometheus being unreachable,
stale or malformed makes the cycle fail safe (nothing is suspended, the reason is logged and
exported). Any other error fails the cycle, which is logged, exported and retried next cycle;
the task itself is supervised and restarted if it ever dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from .. import checkpoints as ck
from .. import promql
from ..kubevalues import rfc3339_or_none
from ..policy import (
    MetricsHealth,
    Plan,
    PolicyConfig,
    Resources,
    cpu_signal_source,
    freshness_health,
    required_signals,
)
from ..state import read_state
from ..suspension import user_model
from . import observe
from .actions import Actions
from .gpucaps import GpuCapabilities, server_readiness
from .hubclient import HubClient, HubError
from .kube import Kube, marker_digest
from .metrics import ServiceMetrics
from .observe import ServerView
from .operations import Operations
from .prom import MetricsUnavailable, PrometheusReader, Readings
from .retention import Retention
from .snapshot import Snapshot


class LoopContext(Protocol):
    """What the loop uses of the service that runs it."""

    log: logging.Logger
    hub: HubClient
    kube: Kube
    prometheus: PrometheusReader
    operations: Operations
    metrics: ServiceMetrics
    actions: Actions
    retention: Retention
    gpu_capabilities: GpuCapabilities
    queries: promql.Queries
    names: promql.MetricNames
    #: jhub_suspend.policy.decide, or what replaces it (of the same signature)
    decide_hook: Callable[..., Plan]
    namespace: str
    gpu_resources: set[str]
    pending_pods_all_namespaces: bool
    max_metrics_age: float
    suspend_timeout: float
    cycle_interval: float
    cycle_timeout: float

    @property
    def policy_config(self) -> PolicyConfig: ...

    def now(self) -> datetime: ...


def warnings_in_force(
    warned_since: dict[tuple[str, str], datetime], plan: Plan, now: datetime
) -> dict[tuple[str, str], datetime]:
    """Since when each server has been warned, after ``plan`` (pure): a warning keeps its first
    time while the server stays warned or eligible, and ends when the server is kept."""
    out = {}
    for d in plan.decisions:
        key = (d.user, d.server_name)
        if d.action in ("warn", "suspend"):
            out[key] = warned_since.get(key, now)
    return out


@dataclass
class LoopHealth:
    started: datetime | None = None
    last_cycle: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    last_error_time: datetime | None = None
    failsafe: str | None = None
    cycles: int = 0
    restarts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": rfc3339_or_none(self.started),
            "last_cycle": rfc3339_or_none(self.last_cycle),
            "last_success": rfc3339_or_none(self.last_success),
            "last_error": self.last_error,
            "last_error_time": rfc3339_or_none(self.last_error_time),
            "failsafe": self.failsafe,
            "cycles": self.cycles,
            "restarts": self.restarts,
        }


class PolicyLoop:
    """Observes, decides and acts every ``cycle_interval`` seconds."""

    def __init__(self, service: LoopContext) -> None:
        self.service = service
        self.log = service.log
        self.snapshot: Snapshot | None = None
        #: the last cycle's time and the CPU cores and GPUs suspended then
        self._reclaimed_as_of: tuple[datetime, float, float] | None = None
        self.health = LoopHealth()
        self.known_requests: dict[tuple[str, str], Resources] = {}
        # When each server was first warned in its current run of warnings: no automatic
        # suspension comes before a warning of warn_before (policy rule 7). In memory: a
        # restarted service warns again, which only ever delays a suspension.
        self.warned_since: dict[tuple[str, str], datetime] = {}
        # what was unreadable in each server's spawner state, so each is logged once
        self._state_problems: dict[tuple[str, str], tuple[str, ...]] = {}
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    # ---- one cycle -------------------------------------------------------------------------

    async def _readings(self, at: datetime) -> tuple[Readings | None, str | None, str]:
        """The signals as of ``at``, the cycle's time (the service's clock, so a replay that
        injects a clock gets Prometheus's answer for that moment)."""
        svc = self.service
        try:
            readings = await svc.prometheus.read(svc.queries, svc.names, at.timestamp())
        except MetricsUnavailable as e:
            return None, e.category, e.message
        return readings, None, ""

    async def observe(self, *, record: bool = True) -> Snapshot:
        """Read everything and decide; act on nothing. ``record`` updates metrics and state."""
        svc = self.service
        t0 = time.monotonic()
        now = svc.now()
        pages_before = svc.hub.requests_made
        queries_before = svc.prometheus.queries_total
        users_task = svc.hub.users()
        pods_task = svc.kube.list_pods(svc.namespace)
        markers_task = svc.kube.list_markers(svc.namespace)
        pending_task = (
            svc.kube.list_pods(None) if svc.pending_pods_all_namespaces else asyncio.sleep(0)
        )
        (
            (users, _pages),
            pods,
            markers,
            all_pending,
            (readings, category, reason),
        ) = await asyncio.gather(
            users_task, pods_task, markers_task, pending_task, self._readings(now)
        )
        pods_by_key = self._by_key(pods)
        for key, pod in pods_by_key.items():
            if pod.get("status", {}).get("phase") in ("Running", "Pending"):
                self.known_requests[key] = observe.pod_requests(pod, svc.gpu_resources)
        marker_map = {marker_digest(m): m for m in markers}
        marker_map.pop("", None)
        views = observe.build_views(
            users,
            pods_by_key,
            default_namespace=svc.namespace,
            gpu_resources=svc.gpu_resources,
            discarded_digests=frozenset(marker_map),
            operations=svc.operations.by_server(),
            known_requests=self.known_requests,
        )
        pending = observe.pending_pods(
            all_pending if isinstance(all_pending, list) else pods, svc.gpu_resources
        )
        health = self._health(views, readings, category, reason)
        if readings is not None:
            self._attach(views, readings)
        if not health.ok and category is None:
            category = "stale"
        gpu_nodes = observe.gpu_nodes(views)
        if gpu_nodes:
            nodes = await svc.gpu_capabilities.nodes(gpu_nodes)
            for v in views:
                if v.node in gpu_nodes and v.requests is not None and v.requests.gpu > 0:
                    v.gpu_capability = server_readiness(
                        v.node,
                        nodes.get(v.node),
                        gpus=v.requests.gpu,
                        memory_limit=v.memory_limit,
                        memory_used=v.memory_used,
                        gpu_memory_used=v.gpu_memory_used,
                    )
        node_labels = None
        if pending and any(p.node_selector for p in pending):
            node_labels = await svc.kube.node_labels()
        observations = [
            replace(o, warned_since=self.warned_since.get((o.user, o.server_name)))
            for o in (v.observation() for v in views)
            if o is not None
        ]
        plan = svc.decide_hook(
            observations,
            pending,
            svc.policy_config,
            now,
            health,
            in_flight=len(svc.operations.running("suspend")),
            node_labels=node_labels,
        )
        snap = Snapshot(
            time=now,
            views=views,
            plan=plan,
            failsafe=category,
            pending=pending,
            markers=marker_map,
            queries=svc.prometheus.queries_total - queries_before,
            hub_pages=svc.hub.requests_made - pages_before,
            duration=time.monotonic() - t0,
        )
        if record:
            self._record(snap)
        return snap

    def _by_key(self, pods: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Pods by (namespace, name)."""
        ns = self.service.namespace
        return {(p["metadata"].get("namespace", ns), p["metadata"]["name"]): p for p in pods}

    async def current_views(self, user: str | None = None) -> list[ServerView]:
        """Every server the hub knows now (``user``'s, or everyone's), in its current state.

        Reads what a cycle reads, less Prometheus: the hub's users with their servers (one
        request for one user), their pods (one list for everyone; for one user, each of their
        pods by name) and, when a stopped server has a checkpoint, the discard markers. A user
        the hub does not know has no servers.
        """
        svc = self.service
        if user is None:
            (users, _), listed = await asyncio.gather(
                svc.hub.users(), svc.kube.list_pods(svc.namespace)
            )
        else:
            try:
                model = await user_model(svc.hub.request, user)
            except HubError as e:
                if e.status in (400, 404):  # no such user (or no name the hub could have)
                    return []
                raise
            users = [model] if isinstance(model, dict) else []

        def pod_of(server: dict[str, Any]) -> tuple[str, str] | None:
            state = read_state(server.get("state"))
            if not state.pod_name or not (server.get("ready") or server.get("pending")):
                return None
            return (state.namespace or svc.namespace, state.pod_name)

        servers = [s for u in users for s in (u.get("servers") or {}).values()]
        if user is None:
            pods = self._by_key(listed)
        else:
            keys = {k for k in map(pod_of, servers) if k is not None}
            found = await asyncio.gather(*(svc.kube.read_pod(ns, name) for ns, name in keys))
            pods = {k: p for k, p in zip(keys, found, strict=True) if p is not None}
        discarded: frozenset[str] = frozenset()
        if any(
            not s.get("ready") and not s.get("pending") and read_state(s.get("state")).checkpoint
            for s in servers
        ):
            digests = {marker_digest(m) for m in await svc.kube.list_markers(svc.namespace)}
            discarded = frozenset(digests - {""})
        return observe.build_views(
            users,
            pods,
            default_namespace=svc.namespace,
            gpu_resources=svc.gpu_resources,
            discarded_digests=discarded,
            operations=svc.operations.by_server(),
            known_requests=self.known_requests,
        )

    def _health(
        self,
        views: list[ServerView],
        readings: Readings | None,
        category: str | None,
        reason: str,
    ) -> MetricsHealth:
        if readings is None:
            return MetricsHealth(False, reason)
        required = required_signals(
            v.requests for v in views if v.state == "running" and v.pod_name
        )
        return freshness_health(readings.ages, required, self.service.max_metrics_age)

    def _attach(self, views: list[ServerView], readings: Readings) -> None:
        for v in views:
            if not v.pod_name:
                continue
            key = (v.namespace, v.pod_name)
            is_gpu = bool(v.requests and v.requests.gpu > 0)
            gpu_window = readings.cpu_gpu_window or {}
            source = cpu_signal_source(is_gpu, bool(gpu_window))
            v.cpu = (gpu_window if source == "cpu_gpu" else readings.cpu).get(key)
            v.gpu = readings.gpu.get(key) if is_gpu else None
            v.memory_ratio = readings.memory_ratio.get(key)
            v.memory_used = observe.working_set(v.memory_ratio, v.requests)
            v.gpu_memory_used = readings.gpu_memory.get(key) if is_gpu else None

    def _accrue_reclaimed(self, now: datetime, cpu: float, gpu: float) -> None:
        """Add the capacity held free since the last cycle to the core- and GPU-seconds
        counters: what was suspended then counts for the whole interval (the servers suspended
        or resumed in between are counted from the next cycle)."""
        m = self.service.metrics
        last = self._reclaimed_as_of
        if last is not None:
            since, last_cpu, last_gpu = last
            elapsed = (now - since).total_seconds()
            if elapsed > 0:
                m.reclaimed_cpu_core_seconds.inc(last_cpu * elapsed)
                m.reclaimed_gpu_seconds.inc(last_gpu * elapsed)
        if last is None or now > last[0]:
            self._reclaimed_as_of = (now, cpu, gpu)

    def _record(self, snap: Snapshot) -> None:
        """Update metrics, health, warnings and restore accounting from a cycle."""
        self.warned_since = warnings_in_force(self.warned_since, snap.plan, snap.time)
        m = self.service.metrics
        old = {v.key: v.state for v in self.snapshot.views} if self.snapshot else {}
        ours = self.service.operations.by_server()
        for v in snap.views:
            before = old.get(v.key)
            restored = before in ("suspended", "restoring") and v.state in ("running", "failed")
            if restored and ours.get(v.key) != "resume":
                fresh = v.checkpoint is not None and v.checkpoint.status == ck.Status.RESTORE_FAILED
                m.restores.labels("login", "fresh" if fresh else "success").inc()
        self.snapshot = snap
        self._log_state_problems(snap.views)
        counts: dict[str, int] = dict.fromkeys(observe.API_STATES, 0)
        cpu = mem = gpu = stored = 0.0
        unknown = 0
        for v in snap.views:
            counts[v.state] = counts.get(v.state, 0) + 1
            if v.state == "suspended":
                stored += float(v.checkpoint.size if v.checkpoint else 0)
                if v.requests is None:
                    unknown += 1
                else:
                    cpu += v.requests.cpu
                    mem += v.requests.memory
                    gpu += v.requests.gpu
        for state, n in counts.items():
            m.servers.labels(state).set(n)
        m.suspended.set(counts.get("suspended", 0))
        m.reclaimed_cpu.set(cpu)
        m.reclaimed_memory.set(mem)
        m.reclaimed_gpus.set(gpu)
        m.reclaimed_unknown.set(unknown)
        self._accrue_reclaimed(snap.time, cpu, gpu)
        m.stored_checkpoint_bytes.set(stored)
        for action, n in snap.plan.counts.items():
            m.decisions.labels(action).set(n)
        m.prometheus_queries.set(snap.queries)
        m.prometheus_queries_total.inc(snap.queries)
        m.hub_pages.set(snap.hub_pages)
        m.set_failsafe(snap.failsafe if not snap.plan.metrics.ok else None)
        self.health.last_cycle = snap.time
        self.health.cycles += 1
        if snap.plan.metrics.ok:
            self.health.failsafe = None
            self.health.last_success = snap.time
            m.last_success.set(time.time())
        else:
            self.health.failsafe = snap.plan.metrics.reason
            self.log.warning(
                "Fail-safe: metrics unusable (%s); nothing is suspended this cycle",
                snap.plan.metrics.reason,
            )

    def _log_state_problems(self, views: list[ServerView]) -> None:
        problems = {v.key: v.state_problems for v in views if v.state_problems}
        for (user, server_name), what in problems.items():
            if self._state_problems.get((user, server_name)) != what:
                self.log.warning(
                    "The spawner state of %s/%s is partly unreadable; left out: %s",
                    user, server_name, "; ".join(what),
                )  # fmt: skip
        self._state_problems = problems

    async def cycle(self) -> Snapshot:
        """One full cycle: observe, decide, act (unless dry-run), sweep retention when due."""
        t0 = time.monotonic()
        svc = self.service
        m = svc.metrics
        try:
            snap = await self.observe()
            plan = snap.plan
            # Whoever decided (a decide_hook too): nothing is suspended in dry-run mode, nor
            # while the metrics are unusable.
            acting = not (plan.dry_run or svc.policy_config.dry_run) and snap.failsafe is None
            if plan.to_suspend:
                self.log.info(
                    "Policy%s: suspending %s",
                    "" if acting else " (dry run or fail-safe, acting on none)",
                    ", ".join(f"{d.user}/{d.server_name}" for d in plan.to_suspend),
                )
            if acting:
                for d in plan.to_suspend:
                    self.service.actions.start_suspension(
                        d.user, d.server_name, "policy", d.suspension_reason
                    )
            # A repair, not a policy action: done in dry-run mode too.
            await self._repair(snap)
            await self.service.retention.maybe_sweep(snap)
        except Exception as e:
            m.cycles.labels("error").inc()
            self.health.last_error = f"{type(e).__name__}: {e}"
            self.health.last_error_time = self.service.now()
            self.log.exception("Policy cycle failed; retrying next cycle")
            raise
        finally:
            m.cycle_duration.observe(time.monotonic() - t0)
        m.cycles.labels("ok" if plan.metrics.ok else "failsafe").inc()
        return snap

    async def _repair(self, snap: Snapshot) -> None:
        """Undo what a requester that died mid-suspension left: hand back a server the hub
        stopped while its pod kept running, and clear a mark no stop followed. Repairs, not
        policy: done in dry-run mode too."""
        svc = self.service
        busy = svc.operations.by_server()
        for view in snap.views:
            if view.key in busy:
                continue
            if view.locked_out:
                svc.actions.hand_back(view.user, view.server_name)
            elif view.stale_mark(snap.time, svc.suspend_timeout):
                self.log.warning(
                    "Clearing the suspension mark on pod %s/%s: set %s, no stop followed",
                    view.namespace, view.pod_name, view.suspend_marked,
                )  # fmt: skip
                try:
                    await svc.kube.patch_pod_annotations(
                        view.namespace, view.pod_name, dict(ck.CLEAR_SUSPEND_MARK)
                    )
                except Exception as e:  # one pod's repair must not stop the cycle's others
                    self.log.warning(
                        "Could not clear the mark on pod %s/%s: %s",
                        view.namespace,
                        view.pod_name,
                        e,
                    )

    # ---- the supervised task ---------------------------------------------------------------

    def start(self) -> None:
        self.health.started = self.service.now()
        self._stopping.clear()
        self._spawn()

    def _spawn(self) -> None:
        self._task = asyncio.create_task(self._run(), name="jhub-suspend policy loop")
        self._task.add_done_callback(self._supervise)

    def _supervise(self, task: asyncio.Task) -> None:
        if task.cancelled() or self._stopping.is_set():
            return
        exc = task.exception()
        self.health.restarts += 1
        self.service.metrics.loop_restarts.inc()
        self.log.error("The policy loop died (%r); restarting it", exc)
        asyncio.get_running_loop().call_later(1.0, self._spawn)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """Run the next cycle now."""
        self._wake.set()

    async def _run(self) -> None:
        interval = self.service.cycle_interval
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self.cycle(), self.service.cycle_timeout)
            except TimeoutError:
                self.health.last_error = f"cycle took longer than {self.service.cycle_timeout} s"
                self.health.last_error_time = self.service.now()
                self.service.metrics.cycles.labels("error").inc()
                self.log.error("Policy cycle timed out after %s s", self.service.cycle_timeout)
            except Exception:
                pass  # logged and exported by cycle()
            self._wake.clear()
            # a little jitter so that replicas or restarts do not synchronise
            delay = interval * random.uniform(0.95, 1.05)
            wake = asyncio.create_task(self._wake.wait())
            stop = asyncio.create_task(self._stopping.wait())
            try:
                await asyncio.wait({wake, stop}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                wake.cancel()
                stop.cancel()

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
