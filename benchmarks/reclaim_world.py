"""The simulated world of the reclaim replay: a week of notebook servers shaped like the seed.

The seed talk (an academic Kubernetes cluster, LPC 2024) measured that notebooks reserved 52 % of
the CPU cores while 3.1 % were used, and that single Jupyter pods held their reservation for
14.5 hours to 2.29 weeks while using 45 minutes to 7 hours of CPU in that time. This module
generates a world with that shape, deterministic given a seed, and writes it out as the metrics a
cluster exports (cAdvisor, kube-state-metrics, DCGM) in OpenMetrics text for
``promtool tsdb create-blocks-from openmetrics``. It knows nothing of jhub-suspend: it is the
ground truth of what users did, in a cluster where nothing suspends or culls anything.

**The generator.** Time is in whole minutes from the start of the week (:data:`WEEK_START`, a
Monday 00:00 UTC); users live in Central Europe (UTC+1). Each of ``Shape.users`` users gets:

* **one server** (pod ``jupyter-<name>`` in namespace ``jhub``) with requests drawn from a
  small menu: CPU users 0.5-8 cores and 2-4 GiB per core; a share ``gpu_share`` are GPU users
  with 1 GPU (a fifth of them 2), 4 or 8 cores and 16-64 GiB; 1 + Poisson(1) kernels;
* **a reservation** (the pod's lifetime) of 1-16 days, log-uniform, placed so that it overlaps
  the week; it starts with a login at the user's usual hour and ends when the server is stopped
  (by the user or an admin), whatever its state;
* **sessions** (a browser on the server): the first at the reservation's start; then, on each
  later day, one with probability ``p_day`` (0.3-0.9 per user; times ``weekend_factor`` on
  Saturdays and Sundays) at the user's peak hour (9-15 h local) +- 1.5 h, and a second four
  hours later with 0.3 times that probability, each lasting 10 min to 5 h (log-normal, median
  50 min). A share ``never_return_share`` of users never come back after the first session;
* **CPU use in bursts**: a total of 45 min to 7 h of CPU time over the whole reservation
  (log-uniform) spread over bursts that start inside sessions (1 + Poisson(1.5) per session,
  0.6-1.6 cores, at most the request; GPU users ~1 core with the GPU at 40-95 %). In a share
  ``background_share`` of sessions the last cell keeps running after the user leaves (median
  1 h, GPU users 2 h); half of those runs print progress, which the single-user server reports
  to the hub as activity every 5 minutes, the others are silent until they finish (the kernel's
  idle message is one last activity). Burst lengths are scaled so the total matches the draw;
  outside bursts the server idles at 0.3-1 % of a core (plus 2-3 % while a session is open),
  under the policy's 5 % of even the smallest request once no session is open;
* **hub activity** for every minute of a session, for the progress of runs that print it, and
  for the end of every computation (the kernel's idle message); a share ``tab_left_open_share`` of sessions leave their
  browser tab open for another 1-8 hours (the tab's polling is activity, with no CPU);
* **memory**: a working set of 150-400 MiB that grows at each session (median 300 MiB), up to
  90 % of the request.

Nothing starts a computation while no session is open, so a server that is stopped (suspended
or culled) between sessions loses no work unless it was stopped while a burst ran.

The world begins ``lead_in_hours`` (24) before the week, so that a replay reaches a steady
state before it starts counting, plus two hours of metrics so its first cycle sees full windows.

**The exposition** (:func:`write_openmetrics`): one scrape a minute while the pod exists, from
the world's first minute; the sample at minute ``k`` carries minute ``k - 1``'s use.
``container_cpu_usage_seconds_total`` for the ``notebook`` container and for the pod's cgroup
(``container=""``, which the queries must exclude), ``container_memory_working_set_bytes``,
``kube_pod_container_resource_requests`` (cpu, memory, ``nvidia_com_gpu``) and
``DCGM_FI_DEV_GPU_UTIL`` and ``DCGM_FI_DEV_FB_USED`` (constant, :data:`FB_USED_MIB`) per GPU,
with the labels those exporters put on them.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import numpy as np

WEEK_START = datetime(2026, 10, 5, tzinfo=UTC)  # a Monday
DAY = 1440  # minutes
WARMUP = 120  # minutes of metrics before the lead-in: its first cycle sees full windows
LOCAL_OFFSET_H = 1  # the users' time zone (UTC+1)
NAMESPACE = "jhub"
GIB = 2**30
MIB = 2**20
CPU_MENU = ((0.5, 0.15), (1.0, 0.30), (2.0, 0.30), (4.0, 0.15), (8.0, 0.10))
IDLE_CORES = (0.003, 0.01)  # an idle Jupyter server and its kernels
SESSION_CORES = (0.02, 0.03)  # typing, saving, small cells, on top of idle


@dataclass(frozen=True)
class Shape:
    """The generator's parameters (see the module docstring)."""

    users: int = 200
    days: int = 7
    gpu_share: float = 0.15
    never_return_share: float = 0.2
    reservation_days: tuple[float, float] = (1.0, 16.0)
    cpu_hours: tuple[float, float] = (0.75, 7.0)
    weekend_factor: float = 0.3
    background_share: float = 0.3
    progress_share: float = 0.5
    tab_left_open_share: float = 0.15
    lead_in_hours: int = 24


@dataclass(frozen=True)
class Burst:
    """A computation: minutes ``[start, end)`` at ``cores`` (and ``gpu_util`` percent)."""

    start: int
    end: int
    cores: float
    gpu_util: float = 0.0
    background: bool = False  # keeps running after the session ends
    progress: bool = False  # prints progress (hub activity while it runs)


@dataclass
class User:
    """One user's server and what they did with it; minutes from :data:`WEEK_START`."""

    name: str
    index: int
    cpu_request: float
    memory_request: float  # bytes
    gpus: int
    kernels: int
    never_returns: bool
    reservation: tuple[int, int]  # [start, end)
    sessions: list[tuple[int, int]]
    bursts: list[Burst]
    activity: np.ndarray  # sorted minutes with hub activity
    memory_steps: list[tuple[int, float]]  # (from minute, working set bytes)
    idle_cores: float
    # per-minute arrays over the world's span (index: World.index(minute)), filled by rasterise()
    cpu: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gpu_util: np.ndarray = field(default_factory=lambda: np.zeros(0))
    memory: np.ndarray = field(default_factory=lambda: np.zeros(0))
    busy: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @property
    def pod(self) -> str:
        return f"jupyter-{self.name}"

    @property
    def node(self) -> str:
        return f"gpu-node-{self.index % 6:02d}" if self.gpus else f"cpu-node-{self.index % 24:02d}"

    @property
    def uid(self) -> str:
        return f"5e1f{self.index:04x}-0000-4000-8000-{self.index:012x}"

    @property
    def session_starts(self) -> list[int]:
        return [s for s, _ in self.sessions]

    def last_activity(self, minute: int) -> int | None:
        """The latest minute <= ``minute`` with hub activity (None: none yet)."""
        i = int(np.searchsorted(self.activity, minute, side="right"))
        return int(self.activity[i - 1]) if i else None

    def next_login(self, minute: int) -> int | None:
        """The first session start after ``minute`` within the reservation, or None."""
        starts = self.session_starts
        i = bisect.bisect_right(starts, minute)
        return starts[i] if i < len(starts) and starts[i] < self.reservation[1] else None

    def holds(self, minute: int) -> bool:
        """Whether the server exists (in a world where nothing suspends or culls it)."""
        return self.reservation[0] <= minute < self.reservation[1]

    def working_set(self, minute: int) -> float:
        value = self.memory_steps[0][1]
        for start, ws in self.memory_steps:
            if start > minute:
                break
            value = ws
        return value


@dataclass
class World:
    shape: Shape
    seed: int
    users: list[User]

    @property
    def minutes(self) -> int:
        """Minutes in the replayed period (the week)."""
        return self.shape.days * DAY

    @property
    def lead_in(self) -> int:
        """Minutes the replay runs before the week (not counted), to reach a steady state."""
        return self.shape.lead_in_hours * 60

    @property
    def first_minute(self) -> int:
        """The world's first minute: metrics start here, before the lead-in."""
        return -(self.lead_in + WARMUP)

    @property
    def span(self) -> int:
        """Minutes in the per-minute arrays."""
        return self.minutes - self.first_minute

    def index(self, minute: int) -> int:
        """Index of ``minute`` in the users' per-minute arrays."""
        return minute - self.first_minute

    def time(self, minute: float) -> datetime:
        return WEEK_START + timedelta(minutes=minute)


# ---------------------------------------------------------------------------------------------
# Generation


def generate(shape: Shape | None = None, seed: int = 14) -> World:
    """The world for ``shape`` (default :class:`Shape`); the same seed gives the same world."""
    shape = shape or Shape()
    users = [_user(np.random.default_rng([seed, i]), i, shape) for i in range(shape.users)]
    world = World(shape, seed, users)
    for u in users:
        rasterise(u, world)
    return world


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _at_peak(rng: np.random.Generator, day: int, peak_h: float) -> int:
    """A minute on ``day`` around the user's local peak hour."""
    hour = float(np.clip(rng.normal(peak_h, 1.5), 6.0, 23.0)) - LOCAL_OFFSET_H
    return day * DAY + int(hour * 60)


def _user(rng: np.random.Generator, i: int, shape: Shape) -> User:
    gpus = 0
    if rng.random() < shape.gpu_share:
        gpus = 2 if rng.random() < 0.2 else 1
        cpu = float(rng.choice([4.0, 8.0]))
        memory = float(rng.choice([16, 32, 64])) * GIB
    else:
        cpu = float(rng.choice([c for c, _ in CPU_MENU], p=[p for _, p in CPU_MENU]))
        memory = max(1.0, cpu * float(rng.choice([2, 4]))) * GIB
    peak = float(rng.uniform(9, 15))
    never = bool(rng.random() < shape.never_return_share)
    reservation = _reservation(rng, shape, peak)
    sessions = _sessions(rng, shape, reservation, peak, never)
    bursts = _bursts(rng, shape, reservation, sessions, cpu, gpus)
    tabs = [
        (e, e + int(rng.uniform(60, 480)))
        for _, e in sessions
        if rng.random() < shape.tab_left_open_share
    ]
    return User(
        name=f"u{i:03d}",
        index=i,
        cpu_request=cpu,
        memory_request=memory,
        gpus=gpus,
        kernels=1 + min(5, int(rng.poisson(1.0))),
        never_returns=never,
        reservation=reservation,
        sessions=sessions,
        bursts=bursts,
        activity=_activity(reservation, sessions, bursts, tabs),
        memory_steps=_memory(rng, sessions, memory),
        idle_cores=float(rng.uniform(*IDLE_CORES)),
    )


def _reservation(rng: np.random.Generator, shape: Shape, peak: float) -> tuple[int, int]:
    """A 1-16 day lifetime starting at the user's hour and overlapping the week by >= 1 h."""
    week = shape.days * DAY
    while True:
        length = int(_log_uniform(rng, *shape.reservation_days) * DAY)
        day = int(rng.integers(-(length // DAY) - 1, shape.days))
        start = _at_peak(rng, day, peak)
        if start + length > 60 and start < week - 60:
            return start, start + length


def _sessions(
    rng: np.random.Generator, shape: Shape, res: tuple[int, int], peak: float, never: bool
) -> list[tuple[int, int]]:
    """Browser sessions inside the reservation, the first at its start; sorted, disjoint."""

    def length() -> int:
        return int(np.clip(rng.lognormal(math.log(50), 0.8), 10, 300))

    out = [(res[0], res[0] + length())]
    p_day = float(rng.uniform(0.3, 0.9))
    for day in range(res[0] // DAY + 1, res[1] // DAY + 1):
        if never:
            break
        weekend = (day % 7) in (5, 6)  # day 0 is a Monday
        p = p_day * (shape.weekend_factor if weekend else 1.0)
        for extra_h in (0.0, 4.0):
            if rng.random() < (p if extra_h == 0 else 0.3 * p):
                start = _at_peak(rng, day, peak + extra_h)
                out.append((start, start + length()))
    merged: list[tuple[int, int]] = []
    for s, e in sorted(out):
        if s >= res[1]:
            break
        e = min(e, res[1])
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _bursts(
    rng: np.random.Generator,
    shape: Shape,
    res: tuple[int, int],
    sessions: list[tuple[int, int]],
    cpu_request: float,
    gpus: int,
) -> list[Burst]:
    """Computations starting in sessions, scaled to a total of 45 min - 7 h of CPU time."""
    raw: list[
        tuple[int, float, float, float, bool, bool]
    ] = []  # start, minutes, cores, gpu, bg, progress
    for s, e in sessions:
        for _ in range(1 + int(rng.poisson(1.5))):
            cores = min(cpu_request, float(rng.uniform(0.6, 1.6)))
            gpu = float(rng.uniform(40, 95)) if gpus else 0.0
            if gpus:
                cores = min(cpu_request, float(rng.uniform(0.8, 1.2)))
            minutes = float(rng.lognormal(math.log(8), 0.8))
            raw.append((int(rng.integers(s, max(s + 1, e))), minutes, cores, gpu, False, False))
        if rng.random() < shape.background_share:
            median = 120 if gpus else 60
            minutes = float(rng.lognormal(math.log(median), 0.7))
            start = max(s, e - int(rng.integers(1, 11)))
            cores = min(cpu_request, float(rng.uniform(0.8, 1.6)))
            gpu = float(rng.uniform(50, 95)) if gpus else 0.0
            raw.append(
                (start, minutes, cores, gpu, True, bool(rng.random() < shape.progress_share))
            )
    target = _log_uniform(rng, *shape.cpu_hours) * 60  # core-minutes
    scale = target / sum(m * c for _, m, c, _, _, _ in raw)
    out = []
    for start, minutes, cores, gpu, bg, progress in raw:
        length = int(np.clip(round(minutes * scale), 1, 12 * 60))
        end = min(start + length, res[1])
        if bg:  # a background run outlives its session by definition
            session_end = next(e for s, e in sessions if s <= start < e)
            end = min(max(end, session_end + 5), res[1])
        if end > start:
            out.append(Burst(start, end, cores, gpu, bg, progress))
    return sorted(out, key=lambda b: b.start)


def _activity(
    res: tuple[int, int],
    sessions: list[tuple[int, int]],
    bursts: list[Burst],
    tabs: list[tuple[int, int]],
) -> np.ndarray:
    """Minutes at which the hub records activity for the server."""
    minutes: set[int] = set()
    for s, e in sessions:
        minutes.update(range(s, e))
    for b in bursts:
        if b.progress:
            minutes.update(range(b.start, b.end, 5))
        minutes.add(b.end - 1)  # the kernel's idle message when the computation finishes
    for e, tab_end in tabs:  # a tab left open polls the server
        minutes.update(range(e, tab_end, 5))
    return np.array(sorted(m for m in minutes if res[0] <= m < res[1]), dtype=np.int64)


def _memory(
    rng: np.random.Generator, sessions: list[tuple[int, int]], request: float
) -> list[tuple[int, float]]:
    ws = float(rng.uniform(150, 400)) * MIB
    steps = []
    for s, _ in sessions:
        ws = min(0.9 * request, ws + float(rng.lognormal(math.log(300), 1.0)) * MIB)
        steps.append((s, ws))
    return steps


def rasterise(u: User, world: World) -> None:
    """Fill the user's per-minute arrays over the world's span."""
    n, at = world.span, world.index
    lo, hi = u.reservation
    u.cpu = np.zeros(n)
    u.gpu_util = np.zeros(n)
    u.memory = np.zeros(n)
    u.busy = np.zeros(n, bool)
    a, b = max(at(lo), 0), min(at(hi), n)
    if a >= b:
        return
    rng = np.random.default_rng([world.seed, u.index, 1])
    u.cpu[a:b] = u.idle_cores * rng.uniform(0.7, 1.3, b - a)
    for s, e in u.sessions:
        sa, sb = max(at(s), a), min(at(e), b)
        if sa < sb:
            u.cpu[sa:sb] += rng.uniform(*SESSION_CORES, sb - sa)
    for burst in u.bursts:
        sa, sb = max(at(burst.start), a), min(at(burst.end), b)
        if sa >= sb:
            continue
        u.cpu[sa:sb] = np.maximum(u.cpu[sa:sb], burst.cores * rng.uniform(0.9, 1.0, sb - sa))
        u.busy[sa:sb] = True
        if u.gpus:
            util = np.clip(burst.gpu_util + rng.normal(0, 4, sb - sa), 20, 100)
            u.gpu_util[sa:sb] = np.maximum(u.gpu_util[sa:sb], util)
    for start, ws in u.memory_steps:
        u.memory[max(at(start), a) : b] = ws
    first = u.memory_steps[0][1]
    u.memory[a:b] = np.where(u.memory[a:b] > 0, u.memory[a:b], first)


# ---------------------------------------------------------------------------------------------
# Ground truth


def active_before(
    u: User,
    world: World,
    minute: int,
    *,
    window: int,
    activity_timeout: int,
    cpu_threshold: float,
    gpu_threshold: float,
) -> str | None:
    """Why the server was active in the ``window`` minutes before ``minute`` (None: it was not).

    Active: a minute whose CPU use reached ``cpu_threshold`` of the request, a GPU server's
    minute at ``gpu_threshold`` percent or more, or hub activity less than
    ``activity_timeout`` minutes before.
    """
    last = u.last_activity(minute)
    if last is not None and minute - last < activity_timeout:
        return f"hub activity {minute - last} min before"
    i = world.index(minute)
    lo = max(0, i - window)
    if np.any(u.cpu[lo:i] >= cpu_threshold * u.cpu_request):
        return f"CPU at {u.cpu[lo:i].max() / u.cpu_request:.0%} of its request within the window"
    if u.gpus and np.any(u.gpu_util[lo:i] >= gpu_threshold):
        return f"GPU at {u.gpu_util[lo:i].max():.0f} % within the window"
    return None


def describe(world: World) -> dict[str, Any]:
    """The generated shape, for the report."""
    us = world.users
    res_days = [(u.reservation[1] - u.reservation[0]) / DAY for u in us]
    cpu_hours = [sum(b.cores * (b.end - b.start) for b in u.bursts) / 60 for u in us]
    runs = [b for u in us for b in u.bursts if b.background]
    return {
        "users": len(us),
        "gpu_users": sum(1 for u in us if u.gpus),
        "gpus": sum(u.gpus for u in us),
        "never_return_users": sum(1 for u in us if u.never_returns),
        "reservation_days": _spread(res_days),
        "reservations_longer_than_the_week": sum(1 for d in res_days if d > world.shape.days),
        "cpu_hours_per_reservation": _spread(cpu_hours),
        "sessions_per_user": _spread([len(u.sessions) for u in us]),
        "bursts": sum(len(u.bursts) for u in us),
        "background_runs": len(runs),
        "background_runs_printing_progress": sum(1 for b in runs if b.progress),
        "cpu_request_cores": _spread([u.cpu_request for u in us]),
        "kernels": sum(u.kernels for u in us),
    }


def _spread(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {
        "min": round(float(arr.min()), 2),
        "median": round(float(np.median(arr)), 2),
        "max": round(float(arr.max()), 2),
    }


# ---------------------------------------------------------------------------------------------
# Exposition


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


def _scrapes(u: User, world: World) -> np.ndarray:
    """Minutes with a scrape of the pod: from its start (or the world's) to its end."""
    lo = max(u.reservation[0], world.first_minute)
    hi = min(u.reservation[1], world.minutes)
    return np.arange(lo, hi + 1) if hi >= lo else np.zeros(0, np.int64)


def _per_scrape(values: np.ndarray, world: World, scrapes: np.ndarray) -> np.ndarray:
    """The value each scrape reports: the previous minute's (the first scrape: its own)."""
    idx = np.clip(scrapes - 1 - world.first_minute, 0, world.span - 1)
    idx[0] = world.index(int(scrapes[0]))
    return values[idx]


def _lines(out: IO[str], series: str, values: Any, times: np.ndarray, fmt: str) -> int:
    base = int(WEEK_START.timestamp())
    stamps = (base + times * 60).tolist()
    if isinstance(values, int | float):
        text = "\n".join(f"{series} {values:{fmt}} {t}" for t in stamps)
    else:
        text = "\n".join(
            f"{series} {v:{fmt}} {t}" for v, t in zip(values.tolist(), stamps, strict=True)
        )
    if text:
        out.write(text + "\n")
    return len(stamps)


def _cadvisor(u: User, container: str) -> str:
    """cAdvisor's labels through the kubelet (the pod's cgroup has ``container=""``)."""
    extra = {"image": "quay.io/jupyter/scipy-notebook:2024-10-07"} if container else {}
    return _labels(
        container=container,
        cpu="total",
        **extra,
        instance=f"{u.node}:10250",
        job="kubelet",
        metrics_path="/metrics/cadvisor",
        namespace=NAMESPACE,
        node=u.node,
        pod=u.pod,
    )


def _family_cpu(out: IO[str], world: World) -> int:
    out.write("# TYPE container_cpu_usage_seconds counter\n")
    n = 0
    for container in ("notebook", ""):
        for u in world.users:
            t = _scrapes(u, world)
            if not len(t):
                continue
            per_min = _per_scrape(u.cpu, world, t) * 60
            per_min[0] = 0.0
            counter = np.cumsum(per_min)
            series = "container_cpu_usage_seconds_total{" + _cadvisor(u, container) + "}"
            n += _lines(out, series, counter, t, ".3f")
    return n


def _family_memory(out: IO[str], world: World) -> int:
    out.write("# TYPE container_memory_working_set_bytes gauge\n")
    n = 0
    for u in world.users:
        t = _scrapes(u, world)
        if len(t):
            labels = _cadvisor(u, "notebook").replace(',cpu="total"', "")
            values = _per_scrape(u.memory, world, t)
            n += _lines(out, "container_memory_working_set_bytes{" + labels + "}", values, t, ".0f")
    return n


def _family_requests(out: IO[str], world: World) -> int:
    out.write("# TYPE kube_pod_container_resource_requests gauge\n")
    n = 0
    for u in world.users:
        t = _scrapes(u, world)
        if not len(t):
            continue
        requests = [("cpu", "core", u.cpu_request), ("memory", "byte", u.memory_request)]
        if u.gpus:
            requests.append(("nvidia_com_gpu", "integer", float(u.gpus)))
        for resource, unit, value in requests:
            labels = _labels(
                container="notebook",
                instance="10.96.0.20:8080",
                job="kube-state-metrics",
                namespace=NAMESPACE,
                node=u.node,
                pod=u.pod,
                resource=resource,
                uid=u.uid,
                unit=unit,
            )
            n += _lines(out, "kube_pod_container_resource_requests{" + labels + "}", value, t, "g")
    return n


#: GPU memory a notebook holds, MiB per GPU (DCGM_FI_DEV_FB_USED): what a suspension stages in
#: host memory; constant, as the replay's nodes are assumed to have room for it
FB_USED_MIB = 4096


def _family_gpu(out: IO[str], world: World) -> int:
    n = _family_gpu_metric(out, world, "DCGM_FI_DEV_GPU_UTIL", None)
    return n + _family_gpu_metric(out, world, "DCGM_FI_DEV_FB_USED", FB_USED_MIB)


def _family_gpu_metric(out: IO[str], world: World, name: str, constant: float | None) -> int:
    out.write(f"# TYPE {name} gauge\n")
    n = 0
    for u in world.users:
        t = _scrapes(u, world)
        if not u.gpus or not len(t):
            continue
        values = _per_scrape(u.gpu_util, world, t) if constant is None else constant
        for g in range(u.gpus):
            labels = _labels(
                gpu=str(g),
                UUID=f"GPU-{u.index:08x}-{g:04x}-4000-8000-000000000000",
                device=f"nvidia{g}",
                modelName="NVIDIA A40",
                Hostname=u.node,
                container="notebook",
                namespace=NAMESPACE,
                pod=u.pod,
                instance=f"{u.node}:9400",
                job="dcgm-exporter",
            )
            n += _lines(out, name + "{" + labels + "}", values, t, ".0f")
    return n


def write_openmetrics(world: World, out: IO[str]) -> int:
    """Write every series of the world in OpenMetrics text (ending ``# EOF``); the sample count."""
    n = 0
    for family in (_family_cpu, _family_memory, _family_requests, _family_gpu):
        n += family(out, world)
    out.write("# EOF\n")
    return n
