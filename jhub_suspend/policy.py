"""The idle policy: a pure function from observations to a plan of suspensions.

:func:`decide` reads data (one :class:`ServerObservation` per server, the Pending pods, the
health of the metrics pipeline, the number of suspensions in flight) and returns a
:class:`Plan` with one :class:`Decision` per server. It does no IO and reads no clock: ``now``
is a parameter. The service around it queries Prometheus (see :mod:`jhub_suspend.promql`), the
hub and Kubernetes, calls :func:`decide` once per cycle and acts on :attr:`Plan.to_suspend`
unless :attr:`Plan.dry_run`.

The rules, in the order they are applied to each server:

1. **Fail-safe.** If :attr:`MetricsHealth.ok` is false every server is kept; nothing is
   suspended that cycle and every decision carries the metrics reason. The service computes
   the health with :func:`freshness_health` over the signals :func:`required_signals` names.
2. **Only running servers** are candidates (not suspending, suspended, restoring or failed).
3. **Exemptions** by user, by group and by server name.
   **GPU capability**: a server holding GPUs is a candidate only on a node known to checkpoint
   CUDA (:attr:`ServerObservation.gpu_capable`, from :func:`jhub_suspend.gpu.node_capability`);
   otherwise it is kept, and the reason says why its node is not capable. Unknown never counts
   as capable.
4. **Utilisation.** The CPU signal (max over the idle window of usage / request) must be under
   :attr:`PolicyConfig.cpu_threshold`, and its samples must cover at least
   :attr:`PolicyConfig.min_coverage` of the window. Servers requesting GPUs use the GPU window
   and timeout and must *also* have a GPU signal (percent) under
   :attr:`PolicyConfig.gpu_threshold`. Missing, sparse, negative, NaN or infinite data never
   counts as idle, and the reason names the signal.
5. **Activity.** No hub activity for the activity timeout (GPU servers: the GPU timeout). When
   the hub has no ``last_activity`` the server's start time stands in for it: a server nobody
   ever used becomes eligible once it has run for the timeout (utilisation must still be idle).
   When capacity-pressure mode is on and nobody is Pending, the activity timeouts are multiplied
   by :attr:`PolicyConfig.relaxed_factor` (the utilisation windows are not: they are fixed by the
   queries).
6. **Keep-running opt-out** (:class:`KeepRunning`) postpones eligibility until it ends, capped at
   :attr:`PolicyConfig.max_keep_running` after it was set; ignored when not allowed.
7. **Warning.** A server whose utilisation is already idle and that becomes eligible within
   :attr:`PolicyConfig.warn_before` gets ``"warn"`` with ``suspend_at``. And no server is
   suspended before it has been warned for ``warn_before``: an eligible server that was not
   (:attr:`ServerObservation.warned_since`, which the service keeps across cycles) is warned
   first, and suspended ``warn_before`` later if it stays eligible. This matters when the
   utilisation window is what binds: it turns idle at a moment the activity timeout cannot
   predict.
8. **Order and limits.** Eligible servers are ordered: with Pending pods (capacity-pressure mode)
   those whose suspension frees a resource a Pending pod lacks come first; then the most wasteful
   (:func:`waste`) first; then the longest idle. The first
   ``min(max_suspensions_per_cycle, max_concurrent_suspensions - in_flight)`` are suspended; the
   rest stay warned, with a "limit reached; next cycle" reason: they are still eligible, so
   their users' warnings go on (a "keep" would end them, and rule 7 would then make them wait
   another ``warn_before`` after the next warning).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

State = Literal["running", "suspending", "suspended", "restoring", "failed"]
Action = Literal["suspend", "warn", "keep"]

STATES: frozenset[str] = frozenset({"running", "suspending", "suspended", "restoring", "failed"})
ACTIONS: tuple[Action, ...] = ("suspend", "warn", "keep")
GIB = 2**30
DEFAULT_WASTE_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"cpu": 1.0, "memory": 0.25, "gpu": 10.0}
)
_INSUFFICIENT = re.compile(r"Insufficient ([A-Za-z0-9./_-]+)")


def _require_aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value!r}")


def _after(start: datetime, seconds: float) -> datetime:
    """``start + seconds``, saturating at the largest datetime instead of overflowing."""
    try:
        return start + timedelta(seconds=seconds)
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


def _finite_nonneg(value: float, what: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Resources:
    """Requested amounts: CPU in cores, memory in bytes, GPUs as a count."""

    cpu: float = 0.0
    memory: float = 0.0
    gpu: float = 0.0

    def __post_init__(self) -> None:
        for name in ("cpu", "memory", "gpu"):
            _finite_nonneg(getattr(self, name), f"Resources.{name}")


@dataclass(frozen=True)
class Signal:
    """One utilisation signal of one server over a window.

    ``max_value`` is the maximum over the window: a fraction of the request for CPU (``0.012`` is
    1.2 %), percent (0-100) for GPU. ``samples`` is how many points the window held and
    ``expected_samples`` how many complete data would have (see
    :func:`jhub_suspend.promql.expected_samples`). ``window`` is the window length in seconds;
    when given, a window shorter than the policy's is never idle (None: trust the caller).
    """

    max_value: float
    samples: int
    expected_samples: int
    window: float | None = None

    @property
    def coverage(self) -> float:
        """Fraction of expected samples present, at most 1 (0 when nothing was expected)."""
        if self.expected_samples <= 0:
            return 0.0
        return min(1.0, max(0, self.samples) / self.expected_samples)

    @property
    def usable_value(self) -> float | None:
        """``max_value`` when it is a finite number >= 0, else None."""
        v = self.max_value
        return v if math.isfinite(v) and v >= 0 else None


@dataclass(frozen=True)
class KeepRunning:
    """A user's keep-running opt-out for one server.

    ``since`` is when the user set it; ``until`` is the end the user asked for, or None for "no
    end". The policy caps it at ``since + PolicyConfig.max_keep_running``
    (:meth:`effective_until`). Clearing the opt-out is ``ServerObservation.keep_running=None``.
    """

    since: datetime
    until: datetime | None = None

    def __post_init__(self) -> None:
        _require_aware(self.since, "KeepRunning.since")
        if self.until is not None:
            _require_aware(self.until, "KeepRunning.until")

    def effective_until(self, max_keep_running: float | None) -> datetime | None:
        """When the opt-out ends under the cap; None means never."""
        cap = None if max_keep_running is None else _after(self.since, max_keep_running)
        if self.until is None:
            return cap
        return self.until if cap is None else min(self.until, cap)


@dataclass(frozen=True)
class ServerObservation:
    """Everything the policy knows about one server this cycle.

    ``server_name`` is ``""`` for the default server. ``requests`` are the pod's (all
    containers). ``cpu`` and ``gpu`` are None when Prometheus had no series for the pod.
    ``memory_ratio`` is the current working set / memory request (only used for waste).
    ``last_activity`` is the hub's, None when the hub has none. ``warned_since`` is when the
    service first warned this server of a suspension in its current run of warnings (None:
    not warned). ``gpu_capable`` is whether its node can checkpoint CUDA (None: unknown, which
    a server holding GPUs is kept for, as for not capable) and ``gpu_capability`` the sentence
    saying why. Datetimes must be aware.
    """

    user: str
    server_name: str
    state: State
    started: datetime
    requests: Resources = field(default_factory=Resources)
    groups: frozenset[str] = frozenset()
    namespace: str = ""
    pod: str = ""
    node: str | None = None
    cpu: Signal | None = None
    gpu: Signal | None = None
    memory_ratio: float | None = None
    last_activity: datetime | None = None
    keep_running: KeepRunning | None = None
    warned_since: datetime | None = None
    gpu_capable: bool | None = None
    gpu_capability: str = ""

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state {self.state!r} is not one of {sorted(STATES)}")
        _require_aware(self.started, "started")
        if self.last_activity is not None:
            _require_aware(self.last_activity, "last_activity")
        if self.warned_since is not None:
            _require_aware(self.warned_since, "warned_since")
        if not isinstance(self.groups, frozenset):
            object.__setattr__(self, "groups", frozenset(self.groups))

    @property
    def is_gpu(self) -> bool:
        """Whether the server requests GPUs (and so falls under the GPU rules)."""
        return self.requests.gpu > 0


@dataclass(frozen=True)
class PendingPod:
    """A pod that cannot be scheduled for lack of resources.

    ``reasons`` are Kubernetes resource names from the scheduler's "Insufficient X" messages
    (``cpu``, ``memory``, ``nvidia.com/gpu``; see :func:`insufficient_resources`).
    ``node_selector`` is the pod's; it limits which servers' nodes count as freeing room for it.
    """

    namespace: str
    name: str
    requests: Resources = field(default_factory=Resources)
    reasons: frozenset[str] = frozenset()
    node_selector: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.reasons, frozenset):
            object.__setattr__(self, "reasons", frozenset(self.reasons))

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"


def insufficient_resources(message: str) -> frozenset[str]:
    """Resource names from a scheduler message.

    ``"0/3 nodes are available: 1 Insufficient cpu, 2 Insufficient nvidia.com/gpu."`` ->
    ``{"cpu", "nvidia.com/gpu"}``.
    """
    return frozenset(m.rstrip(".,") for m in _INSUFFICIENT.findall(message))


@dataclass(frozen=True)
class MetricsHealth:
    """Whether this cycle's metrics can be trusted; ``reason`` says why not."""

    ok: bool
    reason: str = ""


def required_signals(running: Iterable[Resources | None]) -> frozenset[str]:
    """The signals the fail-safe requires fresh, given the requests of the running servers.

    Any running server needs CPU, memory and the requests they are measured against; a server
    holding a GPU needs the GPU signal too. With nothing running, nothing is required: an
    empty hub is not a broken metrics pipeline. A server whose requests are unknown is held
    to the CPU signals (it cannot be shown to hold a GPU).
    """
    required: set[str] = set()
    for requests in running:
        required |= {"cpu", "memory", "requests"}
        if requests is not None and requests.gpu > 0:
            required.add("gpu")
    return frozenset(required)


def freshness_health(
    ages: Mapping[str, float], required: Iterable[str], max_age: float
) -> MetricsHealth:
    """Whether every required source has a sample no older than ``max_age`` seconds (the ages
    are Prometheus's, per source); a missing, infinite or NaN age is stale."""
    for source in sorted(required):
        age = ages.get(source)
        if age is None:
            return MetricsHealth(False, f"stale: no recent {source} samples in Prometheus")
        if not math.isfinite(age) or age > max_age:
            return MetricsHealth(
                False, f"stale: newest {source} sample is {age:.0f} s old (limit {max_age:.0f} s)"
            )
    return MetricsHealth(True)


def cpu_signal_source(holds_gpu: bool, gpu_window_measured: bool) -> Literal["cpu", "cpu_gpu"]:
    """Which CPU reading judges a server: a GPU server's CPU is read over the GPU idle window
    (``"cpu_gpu"``), as its GPU is, when that window was queried; every other server's over
    the CPU idle window (``"cpu"``)."""
    return "cpu_gpu" if holds_gpu and gpu_window_measured else "cpu"


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class PolicyConfig:
    """The policy's settings. Durations are in seconds; the defaults are the fields' (and the
    suspend service's, whose settings take them from here).

    Attributes:
        cpu_threshold: idle when CPU usage stays under this fraction of the CPU request.
        idle_window: the window over which CPU must stay under the threshold.
        activity_timeout: idle when the hub saw no activity for this long.
        gpu_threshold: GPU servers are idle only when GPU utilisation stays under this many
            percent.
        gpu_idle_window: window for GPU servers, both CPU and GPU signals (shorter: an idle GPU
            is the scarcest thing held).
        gpu_activity_timeout: activity timeout for GPU servers.
        min_coverage: fraction of expected samples a window must hold to count.
        exempt_users, exempt_groups, exempt_server_names: never suspended. A server name of
            ``""`` exempts default servers.
        allow_keep_running: honour users' keep-running opt-outs.
        max_keep_running: cap on an opt-out's duration, from when it was set; None for
            unlimited.
        max_suspensions_per_cycle: at most this many suspensions per cycle.
        max_concurrent_suspensions: at most this many in flight at once, counting those the
            service reports as ``in_flight``.
        dry_run: report decisions, act on none.
        capacity_pressure: order by capacity freed while pods are Pending, and relax timeouts
            while none are.
        relaxed_factor: activity timeouts are multiplied by this when capacity pressure is on
            and nothing is Pending (1 = off).
        waste_weights: weight per unused CPU core, GiB of memory and GPU; a missing key weighs
            0.
        warn_before: warn users this long before their server becomes eligible (0 = never).
        gpu_resources: Kubernetes resource names counted as GPUs in Pending reasons.
    """

    cpu_threshold: float = 0.05
    idle_window: float = 3600
    activity_timeout: float = 3600
    gpu_threshold: float = 5.0
    gpu_idle_window: float = 1800
    gpu_activity_timeout: float = 1800
    min_coverage: float = 0.8
    exempt_users: frozenset[str] = frozenset()
    exempt_groups: frozenset[str] = frozenset()
    exempt_server_names: frozenset[str] = frozenset()
    allow_keep_running: bool = True
    max_keep_running: float | None = 7 * 86400
    max_suspensions_per_cycle: int = 10
    max_concurrent_suspensions: int = 2
    dry_run: bool = False
    capacity_pressure: bool = True
    relaxed_factor: float = 1.0
    waste_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WASTE_WEIGHTS))
    warn_before: float = 600
    gpu_resources: frozenset[str] = frozenset({"nvidia.com/gpu"})

    def __post_init__(self) -> None:
        for name in ("exempt_users", "exempt_groups", "exempt_server_names", "gpu_resources"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"PolicyConfig.{name} must be a set of names, not a string")
            object.__setattr__(self, name, frozenset(value))
        weights = dict(self.waste_weights)
        unknown = set(weights) - {"cpu", "memory", "gpu"}
        if unknown:
            raise ValueError(f"waste_weights has unknown resources {sorted(unknown)}")
        for key, w in weights.items():
            _finite_nonneg(w, f"waste_weights[{key!r}]")
        object.__setattr__(self, "waste_weights", MappingProxyType(weights))
        self._validate_numbers()

    def _validate_numbers(self) -> None:
        if not 0 < self.cpu_threshold <= 1:
            raise ValueError(f"cpu_threshold must be in (0, 1], got {self.cpu_threshold}")
        if not 0 < self.gpu_threshold <= 100:
            raise ValueError(f"gpu_threshold must be in (0, 100], got {self.gpu_threshold}")
        if not 0 < self.min_coverage <= 1:
            raise ValueError(f"min_coverage must be in (0, 1], got {self.min_coverage}")
        for name in ("idle_window", "activity_timeout", "gpu_idle_window", "gpu_activity_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.max_keep_running is not None and not self.max_keep_running > 0:
            raise ValueError(f"max_keep_running must be > 0 or None, got {self.max_keep_running}")
        for name in ("max_suspensions_per_cycle", "max_concurrent_suspensions"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.relaxed_factor) and self.relaxed_factor >= 1):
            raise ValueError(f"relaxed_factor must be >= 1, got {self.relaxed_factor}")
        _finite_nonneg(self.warn_before, "warn_before")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (for ``GET policy``)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, frozenset):
                value = sorted(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[name] = value
        return out


# ---------------------------------------------------------------------------------------------
# Outputs


@dataclass(frozen=True)
class Decision:
    """What the policy decided for one server, and why.

    ``idle_for`` is seconds since the last hub activity (since start when unknown).
    ``suspend_at`` is when the server becomes (or became) eligible for suspension, when its
    utilisation is idle; None when it is busy, exempt or opted out without end. ``waste`` is
    :func:`waste`. ``frees`` names the Pending pods (``namespace/name``) whose missing resource
    this server holds and whose node selector its node fits; it is computed only for servers
    eligible for suspension (empty otherwise).
    """

    user: str
    server_name: str
    action: Action
    reasons: tuple[str, ...]
    idle_for: float
    suspend_at: datetime | None = None
    waste: float = 0.0
    frees: tuple[str, ...] = ()
    namespace: str = ""
    pod: str = ""

    @property
    def suspension_reason(self) -> Literal["capacity", "idle"]:
        """Why a suspension of this server is asked for: it frees what a Pending pod waits
        for (``"capacity"``), or it is idle (``"idle"``). Labels the suspension metrics."""
        return "capacity" if self.frees else "idle"

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "server_name": self.server_name,
            "namespace": self.namespace,
            "pod": self.pod,
            "action": self.action,
            "reasons": list(self.reasons),
            "idle_for": self.idle_for,
            "suspend_at": self.suspend_at.isoformat() if self.suspend_at else None,
            "waste": self.waste,
            "frees": list(self.frees),
        }


@dataclass(frozen=True)
class Plan:
    """One cycle's decisions.

    ``decisions`` follow the input order; ``to_suspend`` holds the ``"suspend"`` decisions in
    the order they should be carried out. With ``dry_run`` the caller acts on none of them.
    ``pending`` counts the Pending pods that lack cpu, memory or a GPU resource (0 when
    capacity-pressure mode is off); ``relaxed`` says whether
    relaxed timeouts applied; ``slots`` is how many suspensions the limits allowed.
    """

    now: datetime
    dry_run: bool
    metrics: MetricsHealth
    decisions: tuple[Decision, ...]
    to_suspend: tuple[Decision, ...]
    pending: int = 0
    relaxed: bool = False
    slots: int = 0

    @property
    def counts(self) -> dict[str, int]:
        """Number of decisions per action (every action present)."""
        out: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        for d in self.decisions:
            out[d.action] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plan (for ``GET plan``)."""
        return {
            "now": self.now.isoformat(),
            "dry_run": self.dry_run,
            "metrics": {"ok": self.metrics.ok, "reason": self.metrics.reason},
            "pending": self.pending,
            "relaxed": self.relaxed,
            "slots": self.slots,
            "counts": self.counts,
            "decisions": [d.to_dict() for d in self.decisions],
            "to_suspend": [[d.user, d.server_name] for d in self.to_suspend],
        }


# ---------------------------------------------------------------------------------------------
# Helpers


def human_duration(seconds: float) -> str:
    """Short human text: ``45 s``, ``60 min``, ``2 h 3 min``, ``3 d 4 h``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    minutes = s // 60
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _num(value: float) -> str:
    return f"{value:.3g}"


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def signals_from_vectors(
    maxima: Mapping[tuple[str, ...], float],
    counts: Mapping[tuple[str, ...], float],
    expected_samples: int,
    window: float | None = None,
) -> dict[tuple[str, ...], Signal]:
    """Join parsed ``max`` and ``count`` vectors into Signals by key.

    A key with a maximum but no count gets 0 samples (so it is never idle); a key with a count
    but no maximum is left out (missing). Non-finite counts become 0.
    """
    out: dict[tuple[str, ...], Signal] = {}
    for key, value in maxima.items():
        c = counts.get(key, 0.0)
        samples = int(c) if math.isfinite(c) and c > 0 else 0
        out[key] = Signal(value, samples, expected_samples, window)
    return out


def waste(obs: ServerObservation, weights: Mapping[str, float]) -> float:
    """Weighted requested-minus-used resources: sum of weight * max(0, requested - used).

    Used CPU is the CPU signal's maximum (a fraction) times the CPU request; used GPUs are the GPU
    signal's maximum (percent) / 100 times the GPU count; used memory is ``memory_ratio`` times the
    memory request, in GiB. A missing or non-finite signal counts as nothing used.
    """
    req = obs.requests

    def used(signal_value: float | None, scale: float) -> float:
        return 0.0 if signal_value is None else signal_value * scale

    cpu_v = obs.cpu.usable_value if obs.cpu else None
    gpu_v = obs.gpu.usable_value if obs.gpu else None
    mem_v = obs.memory_ratio
    if mem_v is not None and not (math.isfinite(mem_v) and mem_v >= 0):
        mem_v = None
    cpu_w = max(0.0, req.cpu - used(cpu_v, req.cpu))
    gpu_w = max(0.0, req.gpu - used(gpu_v, req.gpu / 100))
    mem_w = max(0.0, req.memory - used(mem_v, req.memory)) / GIB
    return (
        weights.get("cpu", 0.0) * cpu_w
        + weights.get("memory", 0.0) * mem_w
        + weights.get("gpu", 0.0) * gpu_w
    )


# ---------------------------------------------------------------------------------------------
# The decision


@dataclass(frozen=True)
class _Context:
    config: PolicyConfig
    now: datetime
    relaxed: bool
    pending: tuple[PendingPod, ...]
    node_labels: Mapping[str, Mapping[str, str]] | None


@dataclass(frozen=True)
class _Check:
    """Result of one idle condition: whether it holds, and the sentence saying so."""

    idle: bool
    reason: str


def _check_signal(
    signal: Signal | None,
    *,
    label: str,
    threshold: float,
    window: float,
    min_coverage: float,
    fmt_idle: str,
    fmt_busy: str,
    scale: float,
) -> _Check:
    """Whether one utilisation signal is idle; the reason names the signal either way."""
    if signal is None:
        return _Check(False, f"no {label} samples (missing data is never idle)")
    if signal.usable_value is None:
        return _Check(False, f"{label} value is {signal.max_value!r} (bad data is never idle)")
    if signal.window is not None and signal.window < window:
        return _Check(
            False,
            f"{label} measured over {human_duration(signal.window)}, "
            f"the policy needs {human_duration(window)}",
        )
    if signal.coverage < min_coverage:
        return _Check(
            False,
            f"{label} samples cover {_num(signal.coverage * 100)}% of {human_duration(window)} "
            f"(need {_num(min_coverage * 100)}%; missing data is never idle)",
        )
    args = {
        "value": _num(signal.max_value * scale),
        "threshold": _num(threshold * scale),
        "window": human_duration(window),
    }
    if signal.max_value < threshold:
        return _Check(True, fmt_idle.format(**args))
    return _Check(False, fmt_busy.format(**args))


def _utilisation(obs: ServerObservation, ctx: _Context) -> list[_Check]:
    cfg = ctx.config
    window = cfg.gpu_idle_window if obs.is_gpu else cfg.idle_window
    checks = [
        _check_signal(
            obs.cpu,
            label="CPU",
            threshold=cfg.cpu_threshold,
            window=window,
            min_coverage=cfg.min_coverage,
            fmt_idle="CPU at most {value}% of its request over {window} (threshold {threshold}%)",
            fmt_busy="CPU reached {value}% of its request within {window} (threshold {threshold}%)",
            scale=100,
        )
    ]
    if obs.is_gpu:
        checks.append(
            _check_signal(
                obs.gpu,
                label="GPU",
                threshold=cfg.gpu_threshold,
                window=cfg.gpu_idle_window,
                min_coverage=cfg.min_coverage,
                fmt_idle="GPU at most {value}% utilised over {window} (threshold {threshold}%)",
                fmt_busy="GPU reached {value}% utilisation within {window} (threshold {threshold}%)",
                scale=1,
            )
        )
    return checks


def _activity(obs: ServerObservation, ctx: _Context) -> tuple[float, datetime, str]:
    """(idle_for seconds, when the activity timeout is reached, sentence)."""
    cfg = ctx.config
    timeout = cfg.gpu_activity_timeout if obs.is_gpu else cfg.activity_timeout
    note = ""
    if ctx.relaxed:
        timeout *= cfg.relaxed_factor
        note = f", relaxed x{_num(cfg.relaxed_factor)}: nobody is waiting"
    ref = obs.last_activity if obs.last_activity is not None else obs.started
    idle_for = max(0.0, (ctx.now - ref).total_seconds())
    eligible = _after(ref, timeout)
    limit = f"(timeout {human_duration(timeout)}{note})"
    if obs.last_activity is None:
        text = f"no activity recorded; running for {human_duration(idle_for)} {limit}"
    elif eligible <= ctx.now:
        text = f"no activity for {human_duration(idle_for)} {limit}"
    else:
        text = f"last activity {human_duration(idle_for)} ago {limit}"
    return idle_for, eligible, text


def _exemption(obs: ServerObservation, cfg: PolicyConfig) -> str | None:
    if obs.user in cfg.exempt_users:
        return f"user {obs.user} is exempt"
    groups = sorted(obs.groups & cfg.exempt_groups)
    if groups:
        return f"group {groups[0]} is exempt"
    if obs.server_name in cfg.exempt_server_names:
        return f"server name {obs.server_name!r} is exempt"
    return None


def keep_running_in_force(
    kr: KeepRunning | None, config: PolicyConfig, now: datetime
) -> tuple[bool, datetime | None, str]:
    """Whether a server's keep-running opt-out holds at ``now`` under ``config``: (in force,
    its end or None for no end, a sentence saying so or "")."""
    if kr is None:
        return False, None, ""
    if not config.allow_keep_running:
        return False, None, "keep-running opt-out ignored (not allowed by policy)"
    until = kr.effective_until(config.max_keep_running)
    if until is None:
        return True, None, "keep-running opt-out with no end"
    if until <= now:
        return False, None, ""
    capped = kr.until is None or until < kr.until
    cap = " (capped by max_keep_running)" if capped else ""
    return True, until, f"keep-running opt-out until {_when(until)}{cap}"


def _node_fits(pod: PendingPod, node: str | None, ctx: _Context) -> bool:
    """Whether ``node`` satisfies the pod's node selector; unknown nodes or labels fit."""
    if not pod.node_selector or node is None:
        return True
    if ctx.node_labels is None or node not in ctx.node_labels:
        host = pod.node_selector.get("kubernetes.io/hostname")
        return host is None or host == node
    labels = ctx.node_labels[node]
    return all(labels.get(k) == v for k, v in pod.node_selector.items())


def _held(requests: Resources, pod: PendingPod, cfg: PolicyConfig) -> bool:
    for reason in pod.reasons:
        if (
            (reason == "cpu" and requests.cpu > 0)
            or (reason == "memory" and requests.memory > 0)
            or (reason in cfg.gpu_resources and requests.gpu > 0)
        ):
            return True
    return False


def _frees(obs: ServerObservation, ctx: _Context) -> tuple[str, ...]:
    return tuple(
        p.full_name
        for p in ctx.pending
        if _held(obs.requests, p, ctx.config) and _node_fits(p, obs.node, ctx)
    )


def _keep(obs: ServerObservation, reasons: list[str], idle_for: float, **kw: Any) -> Decision:
    return Decision(
        obs.user,
        obs.server_name,
        "keep",
        tuple(reasons),
        idle_for,
        namespace=obs.namespace,
        pod=obs.pod,
        **kw,
    )


def _assess(obs: ServerObservation, ctx: _Context) -> Decision:
    """One server's decision before limits: ``suspend`` here means eligible."""
    cfg = ctx.config
    idle_for, activity_at, activity_text = _activity(obs, ctx)
    w = waste(obs, cfg.waste_weights)
    if obs.state != "running":
        reason = f"state is {obs.state}; only running servers are candidates"
        return _keep(obs, [reason], idle_for, waste=w)
    exempt = _exemption(obs, cfg)
    if exempt:
        return _keep(obs, [exempt], idle_for, waste=w)
    if obs.is_gpu and obs.gpu_capable is not True:
        why = obs.gpu_capability or "whether its node can checkpoint GPUs is unknown"
        return _keep(obs, [f"GPU server left running: {why}", activity_text], idle_for, waste=w)
    checks = _utilisation(obs, ctx)
    kr_active, kr_until, kr_text = keep_running_in_force(obs.keep_running, cfg, ctx.now)
    notes = [kr_text] if kr_text else []
    if not all(c.idle for c in checks):
        busy = [c.reason for c in checks if not c.idle]
        return _keep(obs, [*busy, activity_text, *notes], idle_for, waste=w)
    reasons = [c.reason for c in checks] + [activity_text, *notes]
    if kr_active and kr_until is None:
        return _keep(obs, reasons, idle_for, waste=w)
    eligible = max(activity_at, kr_until) if kr_active and kr_until else activity_at
    if eligible > ctx.now:
        action: Action = (
            "warn" if eligible - ctx.now <= timedelta(seconds=cfg.warn_before) else "keep"
        )
        if action == "warn":
            reasons.insert(0, f"will be suspended at {_when(eligible)} unless used")
        return Decision(
            obs.user, obs.server_name, action, tuple(reasons), idle_for, eligible, w,
            namespace=obs.namespace, pod=obs.pod,
        )  # fmt: skip
    warned_until = _after(obs.warned_since or ctx.now, cfg.warn_before)
    if cfg.warn_before > 0 and warned_until > ctx.now:
        # Eligible, but its user has not had the warning for warn_before yet.
        reasons.insert(0, f"will be suspended at {_when(warned_until)} unless used")
        return Decision(
            obs.user, obs.server_name, "warn", tuple(reasons), idle_for, warned_until, w,
            namespace=obs.namespace, pod=obs.pod,
        )  # fmt: skip
    frees = _frees(obs, ctx) if ctx.pending else ()
    if frees:
        reasons.append(f"frees room for Pending {', '.join(frees)}")
    return Decision(
        obs.user, obs.server_name, "suspend", tuple(reasons), idle_for, eligible, w, frees,
        namespace=obs.namespace, pod=obs.pod,
    )  # fmt: skip


def _priority(d: Decision, pressure: bool) -> tuple[int, float, float, str, str]:
    helps = 0 if (pressure and d.frees) else 1
    return (helps, -d.waste, -d.idle_for, d.user, d.server_name)


def _fail_safe(obs: ServerObservation, ctx: _Context, metrics: MetricsHealth) -> Decision:
    idle_for, _, _ = _activity(obs, ctx)
    reason = metrics.reason or "no reason given"
    return _keep(
        obs,
        [f"fail-safe: metrics unavailable ({reason}); nothing is suspended this cycle"],
        idle_for,
        waste=waste(obs, ctx.config.waste_weights),
    )


def _relevant_pending(pending: Iterable[PendingPod], cfg: PolicyConfig) -> tuple[PendingPod, ...]:
    known = {"cpu", "memory"} | cfg.gpu_resources
    return tuple(p for p in pending if p.reasons & known)


def decide(
    observations: Iterable[ServerObservation],
    pending: Iterable[PendingPod],
    config: PolicyConfig,
    now: datetime,
    metrics: MetricsHealth,
    in_flight: int = 0,
    node_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> Plan:
    """Decide, for every observed server, whether to suspend, warn or keep it.

    Each iterable is read exactly once and nothing is queried: the work is one pass over the
    servers plus a sort of the eligible ones. ``in_flight`` is the number of suspensions the
    service has under way (counted against ``max_concurrent_suspensions``). ``node_labels`` maps
    node names to labels for matching Pending pods' node selectors; without it only a
    ``kubernetes.io/hostname`` selector is checked. See the module docstring for the rules.
    """
    _require_aware(now, "now")
    if in_flight < 0:
        raise ValueError(f"in_flight must be >= 0, got {in_flight}")
    relevant = _relevant_pending(pending, config) if config.capacity_pressure else ()
    relaxed = config.capacity_pressure and not relevant and config.relaxed_factor != 1
    ctx = _Context(config, now, relaxed, relevant, node_labels)
    if not metrics.ok:
        kept = tuple(_fail_safe(o, ctx, metrics) for o in observations)
        return Plan(now, config.dry_run, metrics, kept, (), len(relevant), relaxed, 0)
    decisions = [_assess(o, ctx) for o in observations]
    order = sorted(
        (i for i, d in enumerate(decisions) if d.action == "suspend"),
        key=lambda i: _priority(decisions[i], bool(relevant)),
    )
    slots = max(
        0, min(config.max_suspensions_per_cycle, config.max_concurrent_suspensions - in_flight)
    )
    limit = (
        f"suspension limit reached ({config.max_suspensions_per_cycle} per cycle, "
        f"{config.max_concurrent_suspensions} concurrent, {in_flight} in flight); next cycle"
    )
    for i in order[slots:]:
        d = decisions[i]
        decisions[i] = Decision(
            d.user, d.server_name, "warn", (limit, *d.reasons), d.idle_for, d.suspend_at,
            d.waste, d.frees, d.namespace, d.pod,
        )  # fmt: skip
    chosen = tuple(decisions[i] for i in order[:slots])
    return Plan(
        now, config.dry_run, metrics, tuple(decisions), chosen, len(relevant), relaxed, slots
    )
