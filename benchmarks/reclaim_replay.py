"""Benchmark: what jhub-suspend gives back on a week of notebooks, next to jupyterhub-idle-culler.

    .venv/bin/python benchmarks/reclaim_replay.py            # 200 users, one week: a few minutes
    .venv/bin/python benchmarks/reclaim_replay.py --users 10 --days 1 --out /tmp/replay

1. **The world.** :mod:`reclaim_world` generates a week of notebook servers shaped like the
   seed's measurements (see its docstring): what users did, with nothing suspending anything.
2. **Prometheus.** The world's metrics (cAdvisor, kube-state-metrics, DCGM, with their own names
   and labels) are written in OpenMetrics text, turned into TSDB blocks by
   ``promtool tsdb create-blocks-from openmetrics`` and served by a real Prometheus started on
   that TSDB (``--storage.tsdb.path``, and a retention of ten years so that no part of the
   week, which lies in the past, is ever dropped). Prometheus (2.42 here) loads backfilled
   blocks older than its empty head without any other flag; its head stays empty (it scrapes
   nothing), so every answer comes from the backfilled week.
3. **jhub-suspend.** The suspend service's own :meth:`PolicyLoop.observe` runs every ``--step``
   seconds of simulated time, from the lead-in (a day before the week, not counted) to the end
   of the week, with the default settings and an injected clock: it reads the
   simulated hub's users and the simulated pods (the hub's and Kubernetes' JSON models, in
   process), runs its real PromQL through its real Prometheus client with ``time=`` the simulated
   time, builds the observations, tracks warnings and calls :func:`jhub_suspend.policy.decide`.
   Each suspension in its plan is applied to the simulated cluster: the server keeps its
   requests while it is checkpointed (the measured suspend time for its memory), then frees them
   until the user's next login, which resumes it (the measured resume time is the user's wait).
   Prometheus holds the metrics of the world without jhub-suspend; the policy only ever reads
   them for running servers, and a resumed server's activity timeout (the login) outlasts its
   idle window, so it never judges a window that reaches back into a suspension.
4. **The culler.** jupyterhub-idle-culler's rule, as Zero to JupyterHub runs it
   (``--timeout=3600 --cull-every=600``), over the same lead-in and week: every 10 minutes, stop
   each running server whose hub activity (or start) is an hour old; its kernels are gone, and
   the next login starts a fresh server.
5. **The report.** :mod:`reclaim_report` writes ``results/reclaim_replay.{json,md,png}``.

Ground truth check: every suspension is compared with the world's own record of the window
before it; a server that used CPU or GPU above the policy's thresholds, or had hub activity, in
that window was active and must never be suspended.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from traitlets.config import Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reclaim_report
import reclaim_world as rw

from jhub_suspend.checkpoints import Checkpoint, Status
from jhub_suspend.localcluster import services
from jhub_suspend.policy import Decision, PolicyConfig
from jhub_suspend.service import SuspendService
from jhub_suspend.service.actions import Actions
from jhub_suspend.service.loop import PolicyLoop
from jhub_suspend.service.prom import PrometheusReader
from jhub_suspend.service.retention import Retention
from jhub_suspend.service.snapshot import Snapshot
from jhub_suspend.testing import fakes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SPEED_RESULTS = RESULTS / "suspend_resume.json"
CULL_TIMEOUT = 3600
CULL_EVERY = 600


# ---------------------------------------------------------------------------------------------
# Costs measured by the speed benchmark


@dataclass(frozen=True)
class CostModel:
    """Suspend and resume seconds by checkpoint size, interpolated between the speed benchmark's
    measurements (archive bytes -> seconds); linear beyond the largest, the smallest's below."""

    sizes: tuple[float, ...]
    suspend: tuple[float, ...]
    resume: tuple[float, ...]

    @classmethod
    def load(cls, path: Path = SPEED_RESULTS) -> CostModel:
        runs = sorted(json.loads(path.read_text())["runs"], key=lambda r: r["archive_bytes"])
        return cls(
            tuple(float(r["archive_bytes"]) for r in runs),
            tuple(float(r["suspend_seconds"]) for r in runs),
            tuple(float(r["resume_seconds"]) for r in runs),
        )

    def _at(self, size: float, ys: tuple[float, ...]) -> float:
        xs = self.sizes
        if size > xs[-1]:
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
            return ys[-1] + slope * (size - xs[-1])
        return float(np.interp(size, xs, ys))

    def suspend_seconds(self, size: float) -> float:
        return self._at(size, self.suspend)

    def resume_seconds(self, size: float) -> float:
        return self._at(size, self.resume)


# ---------------------------------------------------------------------------------------------
# The simulated cluster under jhub-suspend


@dataclass
class Suspension:
    user: str
    minute: int  # when the policy decided it
    freed_at: float  # minute the pod was gone (after the checkpoint)
    resumed_at: int | None  # the user's next login; None: the reservation ended first
    working_set: float
    suspend_seconds: float
    resume_seconds: float | None
    warned_minutes_before: float | None
    active: str | None  # ground truth: why the server was active in its window
    gpu: bool
    kernels: int
    reason: str


@dataclass
class SimulatedCluster:
    """The cluster's servers as jhub-suspend changes them, and the hub's and Kubernetes' view."""

    world: rw.World
    costs: CostModel
    suspensions: dict[str, list[Suspension]] = field(default_factory=dict)

    def _current(self, u: rw.User, minute: int) -> Suspension | None:
        for s in reversed(self.suspensions.get(u.name, [])):
            if s.minute <= minute and (s.resumed_at is None or minute < s.resumed_at):
                return s
        return None

    def _started(self, u: rw.User, minute: int) -> int:
        resumes = [
            s.resumed_at
            for s in self.suspensions.get(u.name, [])
            if s.resumed_at is not None and s.resumed_at <= minute
        ]
        return max([u.reservation[0], *resumes])

    def hub_users(self, minute: int) -> list[dict[str, Any]]:
        """``GET /hub/api/users?include_stopped_servers=1`` as the hub would answer it."""
        return [self._hub_user(u, minute) for u in self.world.users]

    def _hub_user(self, u: rw.User, minute: int) -> dict[str, Any]:
        model: dict[str, Any] = {"kind": "user", "name": u.name, "admin": False, "groups": []}
        if not u.holds(minute):
            model["servers"] = {}
            return model
        suspended = self._current(u, minute)
        last = u.last_activity(minute)
        checkpoint = None
        if suspended is not None:
            digest = f"sha256:{u.index:064x}"
            checkpoint = Checkpoint(
                image=f"registry.example.org/jhub-suspend/{u.pod}@{digest}",
                digest=digest,
                size=int(suspended.working_set),
                created=self._iso(suspended.freed_at),
                reason=suspended.reason,
                container="notebook",
                original_image="quay.io/jupyter/base-notebook",
                status=Status.SUSPENDED,
            ).to_state(seal=False)
        model["servers"] = {
            "": {
                "name": "",
                "ready": suspended is None,
                "pending": None,
                "url": f"/user/{u.name}/",
                "started": None if suspended else self._iso(self._started(u, minute)),
                "last_activity": self._iso(last) if last is not None else None,
                "state": {
                    "pod_name": u.pod,
                    "namespace": rw.NAMESPACE,
                    "jhub_suspend": {"checkpoint": checkpoint, "last_error": None},
                },
            }
        }
        return model

    def state_at(self, u: rw.User, minute: int) -> str:
        """``running``, ``suspended``, or ``gone`` (outside its reservation)."""
        if not u.holds(minute):
            return "gone"
        return "running" if self._current(u, minute) is None else "suspended"

    def pods(self, minute: int) -> list[dict[str, Any]]:
        """The notebook pods that exist: held servers that are not suspended."""
        return [
            self._pod(u)
            for u in self.world.users
            if u.holds(minute) and self._current(u, minute) is None
        ]

    @staticmethod
    def _pod(u: rw.User) -> dict[str, Any]:
        limits = {"nvidia.com/gpu": str(u.gpus)} if u.gpus else {}
        requests = {"cpu": f"{u.cpu_request:g}", "memory": f"{int(u.memory_request)}", **limits}
        return {
            "metadata": {
                "name": u.pod,
                "namespace": rw.NAMESPACE,
                "labels": {"component": "singleuser-server", "hub.jupyter.org/username": u.name},
                "annotations": {},
            },
            "spec": {
                "nodeName": u.node,
                "containers": [
                    {"name": "notebook", "resources": {"requests": requests, "limits": limits}}
                ],
            },
            "status": {"phase": "Running"},
        }

    def _iso(self, minute: float) -> str:
        return self.world.time(minute).isoformat()

    def suspend(
        self, u: rw.User, minute: int, warned: datetime | None, reason: str, cfg: PolicyConfig
    ) -> Suspension:
        """Apply a suspension the policy decided at ``minute``."""
        ws = u.working_set(minute)
        seconds = self.costs.suspend_seconds(ws)
        resumed = u.next_login(minute)
        window = cfg.gpu_idle_window if u.gpus else cfg.idle_window
        timeout = cfg.gpu_activity_timeout if u.gpus else cfg.activity_timeout
        s = Suspension(
            user=u.name,
            minute=minute,
            freed_at=minute + seconds / 60,
            resumed_at=resumed,
            working_set=ws,
            suspend_seconds=seconds,
            resume_seconds=self.costs.resume_seconds(ws) if resumed is not None else None,
            warned_minutes_before=(
                (self.world.time(minute) - warned).total_seconds() / 60 if warned else None
            ),
            active=rw.active_before(
                u,
                self.world,
                minute,
                window=int(window // 60),
                activity_timeout=int(timeout // 60),
                cpu_threshold=cfg.cpu_threshold,
                gpu_threshold=cfg.gpu_threshold,
            ),
            gpu=bool(u.gpus),
            kernels=u.kernels,
            reason=reason,
        )
        self.suspensions.setdefault(u.name, []).append(s)
        return s

    def off_intervals(self) -> dict[str, list[tuple[float, float]]]:
        """Per user, the minutes its requests were free: [pod gone, next login)."""
        out: dict[str, list[tuple[float, float]]] = {}
        for u in self.world.users:
            for s in self.suspensions.get(u.name, []):
                end = s.resumed_at if s.resumed_at is not None else u.reservation[1]
                if end > s.freed_at:
                    out.setdefault(u.name, []).append((s.freed_at, end))
        return out


# ---------------------------------------------------------------------------------------------
# The service, with the hub and Kubernetes replaced by the simulated cluster


class SimulatedHub:
    """Stands in for :class:`~jhub_suspend.service.hubclient.HubClient` (``users()`` only)."""

    def __init__(self) -> None:
        self.models: list[dict[str, Any]] = []
        self.requests_made = 0

    async def users(self) -> tuple[list[dict[str, Any]], int]:
        self.requests_made += 1
        return self.models, 1


class SimulatedKube:
    """Stands in for :class:`~jhub_suspend.service.kube.Kube` (what one cycle reads)."""

    def __init__(self) -> None:
        self.pods: list[dict[str, Any]] = []

    async def list_pods(self, namespace: str | None) -> list[dict[str, Any]]:
        return self.pods if namespace is not None else []

    async def list_markers(self, namespace: str) -> list[dict[str, Any]]:
        return []

    async def node_labels(self) -> dict[str, dict[str, str]] | None:
        return None


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_service(prometheus_url: str, clock: Callable[[], datetime]) -> SuspendService:
    """The suspend service with its default settings, on the simulated hub and cluster."""
    cfg = Config()
    cfg.SuspendService.prometheus_url = prometheus_url
    cfg.SuspendService.namespace = rw.NAMESPACE
    svc = SuspendService(config=cfg)
    svc.clock = clock  # assigned, not configured: a Config would hold a copy of it
    svc.log.setLevel("ERROR")
    svc.prepare()
    svc.hub = SimulatedHub()  # type: ignore[assignment]
    svc.kube = SimulatedKube()  # type: ignore[assignment]
    svc.gpu_capabilities = fakes.AssumedGpuCapabilities()  # type: ignore[assignment]
    svc.prometheus = PrometheusReader(prometheus_url, timeout=60)
    svc.actions = Actions(svc)
    svc.retention = Retention(svc)
    svc.loop = PolicyLoop(svc)
    return svc


# ---------------------------------------------------------------------------------------------
# Stepping the policy through the week


LIMIT_REASON = "suspension limit reached"


@dataclass
class Warnings:
    """Runs of warnings in the week: issued; ended by a suspension; withdrawn because the user
    came back or the server got busy; or ended because the suspension limit held an eligible
    server back (counted to show that it does not happen: a held-back server stays warned)."""

    open: dict[tuple[str, str], datetime] = field(default_factory=dict)
    issued: int = 0
    withdrawn: int = 0
    reset_by_limit: int = 0

    def update(
        self,
        in_force: dict[tuple[str, str], datetime],
        decisions: dict[tuple[str, str], Decision],
        suspended: set[tuple[str, str]],
        count: bool,
    ) -> None:
        ended = self.open.keys() - in_force.keys() - suspended
        if count:
            self.issued += len(in_force.keys() - self.open.keys())
            limited = {k for k in ended if k in decisions and _limited(decisions[k])}
            self.reset_by_limit += len(limited)
            self.withdrawn += len(ended) - len(limited)
        self.open = {k: v for k, v in in_force.items() if k not in suspended}


def _limited(d: Decision) -> bool:
    return bool(d.reasons) and d.reasons[0].startswith(LIMIT_REASON)


@dataclass
class PolicyRun:
    cycles: int = 0  # in the week; the lead-in's are not counted
    lead_in_cycles: int = 0
    failsafe: dict[str, int] = field(default_factory=dict)
    limited_cycles: int = 0  # cycles where eligible servers waited for the suspension limit
    prometheus_queries: int = 0
    seconds: float = 0.0
    warnings: Warnings = field(default_factory=Warnings)

    def record(self, minute: int, snap: Snapshot) -> None:
        if minute < 0:
            self.lead_in_cycles += 1
            return
        self.cycles += 1
        self.prometheus_queries += snap.queries
        if not snap.plan.metrics.ok:
            reason = snap.plan.metrics.reason.split(":")[0]
            self.failsafe[reason] = self.failsafe.get(reason, 0) + 1
        if any(_limited(d) for d in snap.plan.decisions):
            self.limited_cycles += 1


async def step_policy(
    world: rw.World, cluster: SimulatedCluster, svc: SuspendService, clock: Clock, step: int
) -> PolicyRun:
    """Run the service's observe-and-decide every ``step`` seconds from the lead-in to the end
    of the week and apply its suspensions to ``cluster``."""
    run = PolicyRun()
    users = {u.name: u for u in world.users}
    t0 = time.monotonic()
    for second in range(-world.lead_in * 60, world.minutes * 60, step):
        minute = second // 60
        clock.now = world.time(minute)
        svc.hub.models = cluster.hub_users(minute)  # type: ignore[attr-defined]
        svc.kube.pods = cluster.pods(minute)  # type: ignore[attr-defined]
        snap = await svc.loop.observe()
        run.record(minute, snap)
        suspended = set()
        for d in snap.plan.to_suspend:
            key = (d.user, d.server_name)
            reason = "capacity" if d.frees else "idle"
            warned = svc.loop.warned_since.get(key)
            cluster.suspend(users[d.user], minute, warned, reason, svc.policy_config)
            suspended.add(key)
        run.warnings.update(svc.loop.warned_since, snap.decisions, suspended, minute >= 0)
    run.seconds = time.monotonic() - t0
    return run


# ---------------------------------------------------------------------------------------------
# jupyterhub-idle-culler's rule


@dataclass
class Cull:
    user: str
    minute: int
    respawned_at: int | None
    kernels: int
    killed_computation: bool  # a burst was running when it was culled
    lost_core_minutes: float  # CPU work of computations that were running at the cull


def cull_week(world: rw.World, timeout: int = CULL_TIMEOUT, every: int = CULL_EVERY) -> list[Cull]:
    """Every ``every`` seconds, stop each running server whose last hub activity (or start) is
    ``timeout`` seconds old; the user's next login starts a fresh server."""
    culls = []
    for u in world.users:
        back_at = u.reservation[0]  # when the server was (re)started
        for second in range(-world.lead_in * 60, world.minutes * 60, every):
            minute = second // 60
            if not u.holds(minute) or minute < back_at:
                continue
            last = max(u.last_activity(minute) or back_at, back_at)
            if (minute - last) * 60 < timeout:
                continue
            respawn = u.next_login(minute)
            end = respawn if respawn is not None else u.reservation[1]
            culls.append(_cull(u, world, minute, respawn, end))
            back_at = end
    return culls


def _cull(u: rw.User, world: rw.World, minute: int, respawn: int | None, end: int) -> Cull:
    i = world.index(minute)
    j = world.index(min(end, world.minutes))
    busy = u.busy[i:j]
    lost = float(np.sum(u.cpu[i:j][busy]))
    return Cull(u.name, minute, respawn, u.kernels, bool(u.busy[i]), lost)


def cull_off_intervals(culls: list[Cull], world: rw.World) -> dict[str, list[tuple[float, float]]]:
    users = {u.name: u for u in world.users}
    out: dict[str, list[tuple[float, float]]] = {}
    for c in culls:
        end = c.respawned_at if c.respawned_at is not None else users[c.user].reservation[1]
        out.setdefault(c.user, []).append((c.minute, end))
    return out


# ---------------------------------------------------------------------------------------------
# Prometheus on the backfilled week


def backfill(world: rw.World, data_dir: Path, scratch: Path) -> dict[str, Any]:
    """Write the world's metrics and turn them into TSDB blocks in ``data_dir`` with promtool."""
    t0 = time.monotonic()
    text = scratch / "world.om"
    with open(text, "w") as f:
        samples = rw.write_openmetrics(world, f)
    size = text.stat().st_size
    t1 = time.monotonic()
    promtool = services.find_binary("promtool")
    # One block per ~week (promtool rounds down to 2h * 3^n = 162 h): two passes over the text.
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=200h",
         str(text), str(data_dir)],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    text.unlink()
    return {
        "samples": samples,
        "openmetrics_bytes": size,
        "write_seconds": round(t1 - t0, 1),
        "promtool_seconds": round(time.monotonic() - t1, 1),
    }


async def prometheus_on(world: rw.World, state_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Backfill the world into ``state_dir/data`` and start Prometheus on it."""
    data = state_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    info = backfill(world, data, state_dir)
    t0 = time.monotonic()
    prom = await services.start_prometheus(
        state_dir, targets=[], scrape_interval="60s", retention="3650d", group=None
    )
    info["prometheus_start_seconds"] = round(time.monotonic() - t0, 1)
    return prom, info


# ---------------------------------------------------------------------------------------------
# The whole replay


@dataclass
class Replay:
    world: rw.World
    cluster: SimulatedCluster
    policy: PolicyRun
    culls: list[Cull]
    policy_config: PolicyConfig
    step: int
    timings: dict[str, Any]

    @property
    def suspensions(self) -> list[Suspension]:
        """Every suspension, the lead-in's included, in time order."""
        return sorted(
            (s for ss in self.cluster.suspensions.values() for s in ss), key=lambda s: s.minute
        )

    def suspended_off(self) -> dict[str, list[tuple[float, float]]]:
        return self.cluster.off_intervals()

    def culled_off(self) -> dict[str, list[tuple[float, float]]]:
        return cull_off_intervals(self.culls, self.world)


async def replay(
    users: int = 200,
    days: int = 7,
    seed: int = 14,
    step: int = 300,
    lead_in_hours: int = 24,
    workdir: Path | None = None,
) -> Replay:
    """Generate, backfill, start Prometheus, step the policy, run the culler."""
    t0 = time.monotonic()
    world = rw.generate(rw.Shape(users=users, days=days, lead_in_hours=lead_in_hours), seed)
    timings: dict[str, Any] = {"generate_seconds": round(time.monotonic() - t0, 1)}
    with tempfile.TemporaryDirectory(prefix="reclaim-", dir=workdir) as tmp:
        prom, info = await prometheus_on(world, Path(tmp))
        timings.update(info)
        try:
            clock = Clock(world.time(0))
            svc = make_service(prom.url, clock)
            cluster = SimulatedCluster(world, CostModel.load())
            try:
                policy = await step_policy(world, cluster, svc, clock, step)
            finally:
                svc.prometheus.close()
        finally:
            await prom.stop()
    timings["policy_seconds"] = round(policy.seconds, 1)
    t1 = time.monotonic()
    culls = cull_week(world)
    timings["culler_seconds"] = round(time.monotonic() - t1, 2)
    timings["total_seconds"] = round(time.monotonic() - t0, 1)
    return Replay(world, cluster, policy, culls, svc.policy_config, step, timings)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--step", type=int, default=300, help="seconds of simulated time per cycle")
    ap.add_argument("--lead-in", type=int, default=24, help="hours replayed before the week")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    args = ap.parse_args(argv)
    result = asyncio.run(replay(args.users, args.days, args.seed, args.step, args.lead_in))
    report = reclaim_report.build(result)
    paths = reclaim_report.write(report, result, args.out)
    print(reclaim_report.headline(report))
    print("wrote", ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
