"""The idle policy as a pure function: every rule, checked on plain data with a fixed clock."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from jhub_suspend.policy import (
    GIB,
    Decision,
    KeepRunning,
    MetricsHealth,
    PendingPod,
    Plan,
    PolicyConfig,
    Resources,
    ServerObservation,
    Signal,
    cpu_signal_source,
    decide,
    freshness_health,
    human_duration,
    insufficient_resources,
    required_signals,
    signals_from_vectors,
    waste,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
OK = MetricsHealth(True)
CPU_IDLE = Signal(0.01, 60, 60)
GPU_IDLE = Signal(1.0, 30, 30)


def ago(**kw: float) -> datetime:
    return NOW - timedelta(**kw)


def obs(user: str = "alice", **kw) -> ServerObservation:
    """A running CPU server, idle by every rule unless told otherwise, whose user the service
    warned an hour ago (rule 7: no suspension before a warning)."""
    defaults = {
        "server_name": "",
        "state": "running",
        "started": ago(days=1),
        "requests": Resources(cpu=1, memory=2 * GIB),
        "namespace": "jhub",
        "pod": f"jupyter-{user}",
        "node": "node-a",
        "cpu": CPU_IDLE,
        "last_activity": ago(hours=2),
        "warned_since": ago(hours=1),
    }
    defaults.update(kw)
    return ServerObservation(user=user, **defaults)


def gpu_obs(user: str = "gus", **kw) -> ServerObservation:
    """A running GPU server, idle by the GPU rules unless told otherwise."""
    kw.setdefault("requests", Resources(cpu=2, memory=8 * GIB, gpu=1))
    kw.setdefault("gpu", GPU_IDLE)
    kw.setdefault("cpu", Signal(0.01, 30, 30))
    kw.setdefault("last_activity", ago(minutes=40))
    kw.setdefault("node", "gpu-node")
    kw.setdefault("gpu_capable", True)
    kw.setdefault("gpu_capability", "node gpu-node can checkpoint GPUs")
    return obs(user, **kw)


def run(*observations: ServerObservation, pending=(), config=None, metrics=OK, **kw) -> Plan:
    return decide(list(observations), list(pending), config or PolicyConfig(), NOW, metrics, **kw)


def one(o: ServerObservation, **kw) -> Decision:
    plan = run(o, **kw)
    assert len(plan.decisions) == 1
    return plan.decisions[0]


# --- CPU idle rule -------------------------------------------------------------------------------


def test_idle_cpu_server_is_suspended_with_readable_reasons() -> None:
    d = one(obs(cpu=Signal(0.012, 60, 60), last_activity=ago(hours=2, minutes=3)))
    assert d.action == "suspend"
    assert "CPU at most 1.2% of its request over 60 min (threshold 5%)" in d.reasons
    assert "no activity for 2 h 3 min (timeout 60 min)" in d.reasons
    assert d.idle_for == 2 * 3600 + 180
    assert d.suspend_at == ago(hours=1, minutes=3)
    assert (d.namespace, d.pod) == ("jhub", "jupyter-alice")


def test_busy_cpu_server_is_kept() -> None:
    d = one(obs(cpu=Signal(0.4, 60, 60)))
    assert d.action == "keep"
    assert d.reasons[0] == "CPU reached 40% of its request within 60 min (threshold 5%)"
    assert d.suspend_at is None


@pytest.mark.parametrize(
    ("max_value", "action"),
    [(0.0, "suspend"), (0.0499, "suspend"), (0.05, "keep"), (0.0501, "keep"), (2.0, "keep")],
)
def test_cpu_threshold_is_strict(max_value, action) -> None:
    assert one(obs(cpu=Signal(max_value, 60, 60))).action == action


@pytest.mark.parametrize(
    ("samples", "expected", "action"),
    [
        (60, 60, "suspend"),
        (61, 60, "suspend"),
        (48, 60, "suspend"),
        (47, 60, "keep"),
        (0, 60, "keep"),
        (5, 0, "keep"),
    ],
)
def test_coverage(samples, expected, action) -> None:
    d = one(obs(cpu=Signal(0.0, samples, expected)))
    assert d.action == action
    if action == "keep":
        assert any(
            "CPU samples cover" in r and "missing data is never idle" in r for r in d.reasons
        )


def test_missing_cpu_signal_is_never_idle() -> None:
    d = one(obs(cpu=None))
    assert d.action == "keep"
    assert d.reasons[0] == "no CPU samples (missing data is never idle)"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.01])
def test_non_finite_or_negative_cpu_is_never_idle(value) -> None:
    d = one(obs(cpu=Signal(value, 60, 60)))
    assert d.action == "keep"
    assert "bad data is never idle" in d.reasons[0]


def test_signal_over_a_shorter_window_than_the_policy_is_not_idle() -> None:
    d = one(obs(cpu=Signal(0.0, 30, 30, window=1800)))
    assert d.action == "keep"
    assert d.reasons[0] == "CPU measured over 30 min, the policy needs 60 min"
    assert one(obs(cpu=Signal(0.0, 60, 60, window=3600))).action == "suspend"
    assert one(obs(cpu=Signal(0.0, 120, 120, window=7200))).action == "suspend"


def test_custom_threshold_and_window_appear_in_reasons() -> None:
    cfg = PolicyConfig(cpu_threshold=0.2, idle_window=7200)
    d = one(obs(cpu=Signal(0.15, 120, 120)), config=cfg)
    assert d.action == "suspend"
    assert "CPU at most 15% of its request over 2 h (threshold 20%)" in d.reasons


# --- activity ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minutes", "action"),
    [(60, "suspend"), (61, "suspend"), (59, "warn"), (50, "warn"), (49, "keep"), (0, "keep")],
)
def test_activity_timeout_and_warning_window(minutes, action) -> None:
    d = one(obs(last_activity=ago(minutes=minutes)))
    assert d.action == action
    assert d.suspend_at == ago(minutes=minutes) + timedelta(hours=1)


def test_recent_activity_reason() -> None:
    d = one(obs(last_activity=ago(minutes=10)))
    assert d.action == "keep"
    assert "last activity 10 min ago (timeout 60 min)" in d.reasons


def test_unknown_activity_counts_from_start() -> None:
    d = one(obs(last_activity=None, started=ago(hours=3)))
    assert d.action == "suspend"
    assert "no activity recorded; running for 3 h (timeout 60 min)" in d.reasons
    young = one(obs(last_activity=None, started=ago(minutes=20)))
    assert young.action == "keep"
    assert young.suspend_at == ago(minutes=20) + timedelta(hours=1)


def test_activity_in_the_future_is_not_idle() -> None:
    d = one(obs(last_activity=NOW + timedelta(minutes=5)))
    assert d.action == "keep"
    assert d.idle_for == 0


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        obs(last_activity=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        obs(started=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="now"):
        decide([], [], PolicyConfig(), datetime(2025, 1, 1), OK)


# --- GPU -----------------------------------------------------------------------------------------


def test_gpu_server_uses_gpu_timeout() -> None:
    # 40 minutes without activity: past the GPU timeout (30 min), not the CPU one (60 min).
    plan = run(gpu_obs(), obs("carol", last_activity=ago(minutes=40)))
    gpu, cpu = plan.decisions
    assert gpu.action == "suspend"
    assert "GPU at most 1% utilised over 30 min (threshold 5%)" in gpu.reasons
    assert "CPU at most 1% of its request over 30 min (threshold 5%)" in gpu.reasons
    assert "no activity for 40 min (timeout 30 min)" in gpu.reasons
    assert cpu.action == "keep"


@pytest.mark.parametrize(
    ("gpu", "reason"),
    [
        (Signal(50.0, 30, 30), "GPU reached 50% utilisation within 30 min (threshold 5%)"),
        (Signal(5.0, 30, 30), "GPU reached 5% utilisation within 30 min (threshold 5%)"),
        (None, "no GPU samples (missing data is never idle)"),
        (
            Signal(0.0, 10, 30),
            "GPU samples cover 33.3% of 30 min (need 80%; missing data is never idle)",
        ),
        (Signal(math.nan, 30, 30), "GPU value is nan (bad data is never idle)"),
    ],
)
def test_gpu_server_needs_idle_gpu(gpu, reason) -> None:
    d = one(gpu_obs(gpu=gpu))
    assert d.action == "keep"
    assert reason in d.reasons


def test_gpu_server_needs_idle_cpu_too() -> None:
    d = one(gpu_obs(cpu=Signal(0.9, 30, 30)))
    assert d.action == "keep"
    assert "CPU reached 90% of its request within 30 min (threshold 5%)" in d.reasons


def test_gpu_thresholds_do_not_apply_to_cpu_servers() -> None:
    # A CPU server is judged on CPU alone, whatever GPU series happen to match its pod.
    d = one(obs(gpu=Signal(99.0, 30, 30)))
    assert d.action == "suspend"
    assert not any("GPU" in r for r in d.reasons)
    # ... and a CPU server does not get the GPU's shorter timeout.
    assert one(obs(gpu=GPU_IDLE, last_activity=ago(minutes=40))).action == "keep"


def test_custom_gpu_threshold() -> None:
    cfg = PolicyConfig(gpu_threshold=60)
    assert one(gpu_obs(gpu=Signal(50.0, 30, 30)), config=cfg).action == "suspend"


def test_gpu_servers_on_incapable_nodes_are_left_running_and_say_why() -> None:
    why = "node g cannot checkpoint GPUs: MIG is in use (nvidia.com/mig.strategy=single)"
    d = one(gpu_obs(gpu_capable=False, gpu_capability=why))
    assert d.action == "keep"
    assert d.reasons[0] == f"GPU server left running: {why}"
    assert d.reasons[1].startswith("no activity for")
    # unknown never counts as capable, and the reason says it is unknown
    d = one(gpu_obs(gpu_capable=None, gpu_capability=""))
    assert d.action == "keep"
    assert "whether its node can checkpoint GPUs is unknown" in d.reasons[0]
    # not warned either: the warning would promise a suspension that cannot come
    cfg = PolicyConfig(warn_before=3600)
    assert one(gpu_obs(gpu_capable=False, warned_since=None), config=cfg).action == "keep"
    assert one(gpu_obs(warned_since=None), config=cfg).action == "warn"
    # an exemption is still the reason given for an exempt user
    d = one(gpu_obs(gpu_capable=False), config=PolicyConfig(exempt_users=frozenset({"gus"})))
    assert d.reasons == ("user gus is exempt",)


def test_gpu_capability_does_not_concern_cpu_servers() -> None:
    assert one(obs(gpu_capable=False, gpu_capability="no GPU here")).action == "suspend"


def test_an_incapable_gpu_server_does_not_take_a_slot() -> None:
    cfg = PolicyConfig(max_suspensions_per_cycle=1)
    plan = run(gpu_obs("gus", gpu_capable=False), obs("alice"), config=cfg)
    assert [d.user for d in plan.to_suspend] == ["alice"]


# --- exemptions and states -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "server", "reason"),
    [
        (PolicyConfig(exempt_users={"alice"}), obs(), "user alice is exempt"),
        (
            PolicyConfig(exempt_groups={"staff"}),
            obs(groups={"students", "staff"}),
            "group staff is exempt",
        ),
        (
            PolicyConfig(exempt_server_names={"long"}),
            obs(server_name="long"),
            "server name 'long' is exempt",
        ),
        (PolicyConfig(exempt_server_names={""}), obs(), "server name '' is exempt"),
    ],
)
def test_exemptions(config, server, reason) -> None:
    d = one(server, config=config)
    assert d.action == "keep"
    assert d.reasons == (reason,)


def test_exemptions_do_not_leak() -> None:
    cfg = PolicyConfig(exempt_users={"bob"}, exempt_groups={"staff"}, exempt_server_names={"long"})
    assert one(obs(groups={"students"}, server_name="short"), config=cfg).action == "suspend"


@pytest.mark.parametrize("state", ["suspending", "suspended", "restoring", "failed"])
def test_only_running_servers_are_candidates(state) -> None:
    d = one(obs(state=state))
    assert d.action == "keep"
    assert d.reasons == (f"state is {state}; only running servers are candidates",)


def test_unknown_state_is_rejected() -> None:
    with pytest.raises(ValueError, match="state"):
        obs(state="paused")


# --- keep-running --------------------------------------------------------------------------------


def test_keep_running_until_a_future_time() -> None:
    until = NOW + timedelta(hours=5)
    d = one(obs(keep_running=KeepRunning(since=ago(hours=1), until=until)))
    assert d.action == "keep"
    assert "keep-running opt-out until 2025-03-01 17:00 UTC" in d.reasons
    assert d.suspend_at == until


def test_expired_keep_running_is_ignored() -> None:
    d = one(obs(keep_running=KeepRunning(since=ago(hours=3), until=ago(minutes=1))))
    assert d.action == "suspend"
    assert not any("keep-running" in r for r in d.reasons)


def test_keep_running_without_end_holds_when_unlimited() -> None:
    cfg = PolicyConfig(max_keep_running=None)
    d = one(obs(keep_running=KeepRunning(since=ago(days=300))), config=cfg)
    assert d.action == "keep"
    assert "keep-running opt-out with no end" in d.reasons
    assert d.suspend_at is None


def test_keep_running_is_capped_by_max_keep_running() -> None:
    cfg = PolicyConfig(max_keep_running=24 * 3600)
    # Set 25 hours ago with no end: the cap ended it an hour ago.
    assert one(obs(keep_running=KeepRunning(since=ago(hours=25))), config=cfg).action == "suspend"
    # Set 20 hours ago asking for a week: the cap ends it in 4 hours.
    d = one(obs(keep_running=KeepRunning(ago(hours=20), NOW + timedelta(days=7))), config=cfg)
    assert d.action == "keep"
    assert d.suspend_at == NOW + timedelta(hours=4)
    assert (
        "keep-running opt-out until 2025-03-01 16:00 UTC (capped by max_keep_running)" in d.reasons
    )


def test_keep_running_effective_until() -> None:
    kr = KeepRunning(since=NOW, until=NOW + timedelta(hours=2))
    assert kr.effective_until(None) == NOW + timedelta(hours=2)
    assert kr.effective_until(3600) == NOW + timedelta(hours=1)
    assert KeepRunning(since=NOW).effective_until(None) is None
    assert KeepRunning(since=NOW).effective_until(1e30) == datetime.max.replace(tzinfo=UTC)


def test_keep_running_ignored_when_not_allowed() -> None:
    cfg = PolicyConfig(allow_keep_running=False)
    d = one(obs(keep_running=KeepRunning(since=ago(hours=1))), config=cfg)
    assert d.action == "suspend"
    assert "keep-running opt-out ignored (not allowed by policy)" in d.reasons


def test_keep_running_ending_soon_warns() -> None:
    until = NOW + timedelta(minutes=5)
    d = one(obs(keep_running=KeepRunning(since=ago(hours=1), until=until)))
    assert d.action == "warn"
    assert d.suspend_at == until
    assert d.reasons[0] == "will be suspended at 2025-03-01 12:05 UTC unless used"


def test_keep_running_does_not_matter_for_busy_servers() -> None:
    d = one(obs(cpu=Signal(0.5, 60, 60), keep_running=KeepRunning(since=ago(hours=1))))
    assert d.action == "keep"
    assert d.reasons[0].startswith("CPU reached 50%")


# --- fail-safe -----------------------------------------------------------------------------------


def test_fail_safe_keeps_everything() -> None:
    bad = MetricsHealth(False, "Prometheus unreachable: connection refused")
    plan = run(obs(), gpu_obs(), obs("dave", state="suspended"), metrics=bad)
    assert plan.to_suspend == ()
    assert plan.counts == {"suspend": 0, "warn": 0, "keep": 3}
    for d in plan.decisions:
        assert d.reasons == (
            "fail-safe: metrics unavailable (Prometheus unreachable: connection refused); "
            "nothing is suspended this cycle",
        )
    assert plan.metrics == bad
    assert plan.slots == 0


def test_fail_safe_with_empty_reason() -> None:
    d = run(obs(), metrics=MetricsHealth(False)).decisions[0]
    assert d.action == "keep"
    assert "no reason given" in d.reasons[0]


# --- limits --------------------------------------------------------------------------------------


def _idle_fleet(n: int) -> list[ServerObservation]:
    # Distinct waste: user-k requests k+1 cores, so priority is by descending k.
    return [obs(f"user-{k}", requests=Resources(cpu=k + 1)) for k in range(n)]


@pytest.mark.parametrize(
    ("per_cycle", "concurrent", "in_flight", "expected"),
    [
        (10, 10, 0, 5),
        (3, 10, 0, 3),
        (10, 2, 0, 2),
        (10, 2, 1, 1),
        (10, 2, 2, 0),
        (10, 2, 5, 0),
        (0, 10, 0, 0),
    ],
)
def test_limits(per_cycle, concurrent, in_flight, expected) -> None:
    cfg = PolicyConfig(max_suspensions_per_cycle=per_cycle, max_concurrent_suspensions=concurrent)
    plan = run(*_idle_fleet(5), config=cfg, in_flight=in_flight)
    assert plan.slots == max(0, min(per_cycle, concurrent - in_flight))
    assert len(plan.to_suspend) == expected
    assert plan.counts["suspend"] == expected
    # The most wasteful go first.
    assert [d.user for d in plan.to_suspend] == [f"user-{k}" for k in range(4, 4 - expected, -1)]
    # The others stay warned (their warnings go on), not kept.
    deferred = [d for d in plan.decisions if d.action == "warn"]
    assert len(deferred) == 5 - expected
    assert plan.counts["keep"] == 0
    for d in deferred:
        assert d.reasons[0].startswith("suspension limit reached")
        assert d.reasons[0].endswith(f"{in_flight} in flight); next cycle")
        assert d.suspend_at is not None and d.suspend_at <= NOW


def test_a_server_the_limit_holds_back_is_suspended_next_cycle_without_a_new_warning() -> None:
    """Found by the reclaim replay: held back as "keep", a server lost its warning, was warned
    afresh, and waited another warn_before."""
    from jhub_suspend.service.loop import warnings_in_force

    cfg = PolicyConfig(max_concurrent_suspensions=1, warn_before=600)
    warned = NOW - timedelta(seconds=900)
    fleet = [replace(o, warned_since=warned) for o in _idle_fleet(2)]
    first = run(*fleet, config=cfg)
    assert [d.user for d in first.to_suspend] == ["user-1"]
    since = warnings_in_force({(o.user, o.server_name): warned for o in fleet}, first, NOW)
    assert since[("user-0", "")] == warned  # still warned since then
    later = NOW + timedelta(seconds=60)
    held = replace(fleet[0], warned_since=since[("user-0", "")])
    second = decide([held], [], cfg, later, OK)
    assert [d.user for d in second.to_suspend] == ["user-0"]


def test_negative_in_flight_is_rejected() -> None:
    with pytest.raises(ValueError, match="in_flight"):
        run(obs(), in_flight=-1)


def test_equal_waste_longest_idle_first() -> None:
    cfg = PolicyConfig(max_concurrent_suspensions=1)
    plan = run(
        obs("a", last_activity=ago(hours=2)), obs("b", last_activity=ago(hours=5)), config=cfg
    )
    assert [d.user for d in plan.to_suspend] == ["b"]


def test_decisions_keep_input_order() -> None:
    plan = run(*_idle_fleet(5))
    assert [d.user for d in plan.decisions] == [f"user-{k}" for k in range(5)]
    assert [d.user for d in plan.to_suspend] == ["user-4", "user-3"]


# --- capacity pressure ---------------------------------------------------------------------------

BIG_CPU = obs("cpu-hog", requests=Resources(cpu=32, memory=64 * GIB))
WANTS_GPU = PendingPod("jhub", "jupyter-newbie", Resources(cpu=1, gpu=1), {"nvidia.com/gpu"})


def test_pending_gpu_pod_picks_idle_gpu_server_over_more_wasteful_cpu_server() -> None:
    gpu = gpu_obs()
    assert waste(BIG_CPU, PolicyConfig().waste_weights) > waste(gpu, PolicyConfig().waste_weights)
    cfg = PolicyConfig(max_concurrent_suspensions=1)
    plan = run(BIG_CPU, gpu, pending=[WANTS_GPU], config=cfg)
    assert [d.user for d in plan.to_suspend] == ["gus"]
    assert plan.to_suspend[0].frees == ("jhub/jupyter-newbie",)
    assert "frees room for Pending jhub/jupyter-newbie" in plan.to_suspend[0].reasons
    assert plan.pending == 1
    hog = plan.decisions[0]  # eligible, held back by the limit: still warned
    assert hog.action == "warn" and hog.frees == ()


def test_without_pending_the_most_wasteful_goes_first() -> None:
    cfg = PolicyConfig(max_concurrent_suspensions=1)
    assert [d.user for d in run(BIG_CPU, gpu_obs(), config=cfg).to_suspend] == ["cpu-hog"]


def test_capacity_pressure_off_ignores_pending() -> None:
    cfg = PolicyConfig(max_concurrent_suspensions=1, capacity_pressure=False)
    plan = run(BIG_CPU, gpu_obs(), pending=[WANTS_GPU], config=cfg)
    assert [d.user for d in plan.to_suspend] == ["cpu-hog"]
    assert plan.pending == 0
    assert all(d.frees == () for d in plan.decisions)


def test_pending_cpu_pod_is_helped_by_any_cpu_holder_most_wasteful_first() -> None:
    wants_cpu = PendingPod("jhub", "jupyter-x", Resources(cpu=4), {"cpu"})
    cfg = PolicyConfig(max_concurrent_suspensions=1)
    plan = run(gpu_obs(), BIG_CPU, pending=[wants_cpu], config=cfg)
    assert [d.user for d in plan.to_suspend] == ["cpu-hog"]
    assert all(d.frees == ("jhub/jupyter-x",) for d in plan.decisions)


def test_node_selector_limits_who_helps() -> None:
    pinned = dataclasses.replace(WANTS_GPU, node_selector={"kubernetes.io/hostname": "other"})
    gpu = gpu_obs()
    assert run(gpu, pending=[pinned]).decisions[0].frees == ()
    assert (
        run(
            gpu,
            pending=[
                dataclasses.replace(pinned, node_selector={"kubernetes.io/hostname": "gpu-node"})
            ],
        )
        .decisions[0]
        .frees
    )
    by_label = dataclasses.replace(WANTS_GPU, node_selector={"gpu-type": "h100"})
    labels = {"gpu-node": {"gpu-type": "a100"}}
    assert run(gpu, pending=[by_label], node_labels=labels).decisions[0].frees == ()
    labels = {"gpu-node": {"gpu-type": "h100"}}
    assert run(gpu, pending=[by_label], node_labels=labels).decisions[0].frees == (
        "jhub/jupyter-newbie",
    )
    # Unknown labels: assume it fits rather than guess.
    assert run(gpu, pending=[by_label]).decisions[0].frees == ("jhub/jupyter-newbie",)


def test_pending_for_other_reasons_is_not_pressure() -> None:
    other = PendingPod("jhub", "jupyter-y", reasons={"ephemeral-storage"})
    cfg = PolicyConfig(relaxed_factor=3)
    plan = run(obs(), pending=[other], config=cfg)
    assert plan.pending == 0
    assert plan.relaxed  # nobody waits for cpu/memory/gpu
    # Idle for 2 h against a relaxed timeout of 3 h.
    assert plan.decisions[0].action == "keep"
    assert "no activity" not in " ".join(plan.decisions[0].reasons)
    assert (
        "last activity 2 h ago (timeout 3 h, relaxed x3: nobody is waiting)"
        in plan.decisions[0].reasons
    )


def test_relaxed_timeouts() -> None:
    cfg = PolicyConfig(relaxed_factor=2)
    server = obs(last_activity=ago(minutes=90))
    relaxed = run(server, config=cfg)
    assert relaxed.relaxed
    assert relaxed.decisions[0].action == "keep"
    assert (
        "last activity 90 min ago (timeout 2 h, relaxed x2: nobody is waiting)"
        in relaxed.decisions[0].reasons
    )
    assert relaxed.decisions[0].suspend_at == ago(minutes=90) + timedelta(hours=2)
    # Someone waiting: normal timeout.
    pressed = run(server, pending=[WANTS_GPU], config=cfg)
    assert not pressed.relaxed
    assert pressed.decisions[0].action == "suspend"
    # Capacity-pressure mode off: never relaxed.
    off = run(server, config=dataclasses.replace(cfg, capacity_pressure=False))
    assert not off.relaxed
    assert off.decisions[0].action == "suspend"
    # GPU timeouts are relaxed too: 40 min idle against 30 min x 2.
    assert run(gpu_obs(), config=cfg).decisions[0].action == "keep"


def test_insufficient_resources() -> None:
    msg = "0/3 nodes are available: 1 Insufficient cpu, 2 Insufficient nvidia.com/gpu. preemption: 0/3"
    assert insufficient_resources(msg) == {"cpu", "nvidia.com/gpu"}
    assert insufficient_resources("0/1 nodes are available: 1 Insufficient memory.") == {"memory"}
    assert (
        insufficient_resources("0/1 nodes are available: 1 node(s) had untolerated taint") == set()
    )


# --- warnings ------------------------------------------------------------------------------------


def test_warning_carries_suspend_at() -> None:
    d = one(obs(last_activity=ago(minutes=55)))
    assert d.action == "warn"
    assert d.suspend_at == NOW + timedelta(minutes=5)
    assert d.reasons[0] == "will be suspended at 2025-03-01 12:05 UTC unless used"


def test_no_warning_for_busy_servers_or_when_disabled() -> None:
    busy = one(obs(cpu=Signal(0.5, 60, 60), last_activity=ago(minutes=55)))
    assert busy.action == "keep" and busy.suspend_at is None
    off = one(obs(last_activity=ago(minutes=55)), config=PolicyConfig(warn_before=0))
    assert off.action == "keep" and off.suspend_at == NOW + timedelta(minutes=5)


def test_warning_uses_gpu_timeout() -> None:
    d = one(gpu_obs(last_activity=ago(minutes=25)))
    assert d.action == "warn"
    assert d.suspend_at == NOW + timedelta(minutes=5)


def test_no_suspension_without_a_warning_when_the_utilisation_window_binds() -> None:
    """The defaults' shape: a 3600 s window and a 3600 s activity timeout. The user left two
    hours ago, but the kernel computed until just now, so the window has only now turned idle.
    Before, the server went from "keep" (busy) straight to "suspend"; now it is warned first."""
    cfg = PolicyConfig()  # the defaults
    busy_until_now = obs(cpu=Signal(0.5, 60, 60), warned_since=None)
    assert one(busy_until_now, config=cfg).action == "keep"
    turned_idle = obs(warned_since=None)  # the next cycle: the window is idle
    warned = one(turned_idle, config=cfg)
    assert warned.action == "warn"
    assert warned.suspend_at == NOW + timedelta(seconds=cfg.warn_before)
    assert warned.reasons[0] == "will be suspended at 2025-03-01 12:10 UTC unless used"
    # still warned (and not yet suspended) until warn_before has passed since the warning
    almost = one(obs(warned_since=ago(seconds=cfg.warn_before - 1)), config=cfg)
    assert almost.action == "warn" and almost.suspend_at == NOW + timedelta(seconds=1)
    assert one(obs(warned_since=ago(seconds=cfg.warn_before)), config=cfg).action == "suspend"


def test_a_warning_given_before_eligibility_counts() -> None:
    """When activity binds, the warning comes warn_before ahead and the suspension on time."""
    warned_early = obs(last_activity=ago(minutes=60), warned_since=ago(minutes=10))
    assert one(warned_early).action == "suspend"
    # with warnings turned off, nothing is waited for
    off = one(obs(warned_since=None), config=PolicyConfig(warn_before=0))
    assert off.action == "suspend"


# --- dry run, plan output ------------------------------------------------------------------------


def test_dry_run_still_computes_actions() -> None:
    plan = run(obs(), obs("bob", cpu=Signal(0.9, 60, 60)), config=PolicyConfig(dry_run=True))
    assert plan.dry_run
    assert [d.user for d in plan.to_suspend] == ["alice"]
    assert plan.counts == {"suspend": 1, "warn": 0, "keep": 1}


def test_plan_to_dict_is_json() -> None:
    plan = run(obs(), gpu_obs(), obs("w", last_activity=ago(minutes=55)), pending=[WANTS_GPU])
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["counts"] == {"suspend": 2, "warn": 1, "keep": 0}
    assert data["to_suspend"] == [["gus", ""], ["alice", ""]]
    assert data["decisions"][2]["suspend_at"] == "2025-03-01T12:05:00+00:00"
    assert data["decisions"][1]["frees"] == ["jhub/jupyter-newbie"]
    assert data["metrics"] == {"ok": True, "reason": ""}


# --- waste, signals, helpers ---------------------------------------------------------------------


def test_waste() -> None:
    weights = PolicyConfig().waste_weights
    o = obs(
        requests=Resources(cpu=2, memory=4 * GIB, gpu=1),
        cpu=Signal(0.05, 60, 60),  # 0.1 core used
        gpu=Signal(10.0, 30, 30),  # 0.1 GPU used
        memory_ratio=0.5,  # 2 GiB used
    )
    assert waste(o, weights) == pytest.approx(1.9 * 1.0 + 2 * 0.25 + 0.9 * 10.0)
    # Unknown usage counts as nothing used; usage above the request wastes nothing.
    unknown = obs(requests=Resources(cpu=2, memory=4 * GIB), cpu=None, memory_ratio=math.nan)
    assert waste(unknown, weights) == pytest.approx(2 + 1)
    over = obs(requests=Resources(cpu=2), cpu=Signal(3.0, 60, 60))
    assert waste(over, weights) == 0
    assert waste(o, {"gpu": 1.0}) == pytest.approx(0.9)


def test_signals_from_vectors() -> None:
    maxima = {("jhub", "a"): 0.01, ("jhub", "b"): 0.5, ("jhub", "c"): 0.0}
    counts = {("jhub", "a"): 61.0, ("jhub", "c"): math.nan, ("jhub", "d"): 60.0}
    got = signals_from_vectors(maxima, counts, 60, window=3600)
    assert got == {
        ("jhub", "a"): Signal(0.01, 61, 60, 3600),
        ("jhub", "b"): Signal(0.5, 0, 60, 3600),
        ("jhub", "c"): Signal(0.0, 0, 60, 3600),
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (45, "45 s"),
        (60, "1 min"),
        (3600, "60 min"),
        (7199, "119 min"),
        (7380, "2 h 3 min"),
        (7200, "2 h"),
        (3 * 86400 + 4 * 3600, "3 d 4 h"),
        (-5, "0 s"),
    ],
)
def test_human_duration(seconds, text) -> None:
    assert human_duration(seconds) == text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpu_threshold": 0}, "cpu_threshold"),
        ({"cpu_threshold": 1.5}, "cpu_threshold"),
        ({"gpu_threshold": 150}, "gpu_threshold"),
        ({"min_coverage": 0}, "min_coverage"),
        ({"idle_window": 0}, "idle_window"),
        ({"gpu_activity_timeout": -1}, "gpu_activity_timeout"),
        ({"max_keep_running": 0}, "max_keep_running"),
        ({"max_suspensions_per_cycle": -1}, "max_suspensions_per_cycle"),
        ({"relaxed_factor": 0.5}, "relaxed_factor"),
        ({"relaxed_factor": math.inf}, "relaxed_factor"),
        ({"warn_before": -1}, "warn_before"),
        ({"waste_weights": {"cpu": 1, "disk": 2}}, "unknown resources"),
        ({"waste_weights": {"gpu": -1}}, "waste_weights"),
        ({"exempt_users": "alice"}, "set of names"),
    ],
)
def test_policy_config_validation(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        PolicyConfig(**kwargs)


def test_policy_config_defaults_and_dict() -> None:
    cfg = PolicyConfig(exempt_users=["b", "a"])
    assert cfg.exempt_users == frozenset({"a", "b"})
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["exempt_users"] == ["a", "b"]
    assert data["waste_weights"] == {"cpu": 1.0, "memory": 0.25, "gpu": 10.0}
    assert data["cpu_threshold"] == 0.05 and data["min_coverage"] == 0.8
    assert data["max_suspensions_per_cycle"] == 10 and data["max_concurrent_suspensions"] == 2
    with pytest.raises(TypeError):
        cfg.waste_weights["cpu"] = 5  # type: ignore[index]


def test_resources_validation() -> None:
    with pytest.raises(ValueError, match=r"Resources\.cpu"):
        Resources(cpu=-1)
    with pytest.raises(ValueError, match=r"Resources\.gpu"):
        Resources(gpu=math.nan)


# --- one pass, scale ------------------------------------------------------------------------------


class CountingIterable:
    """An iterable that counts how often it is iterated."""

    def __init__(self, items: list) -> None:
        self.items = items
        self.passes = 0

    def __iter__(self) -> Iterator:
        self.passes += 1
        return iter(self.items)


@pytest.mark.parametrize("n", [10, 10_000])
def test_decide_reads_inputs_once_and_scales(n) -> None:
    servers = []
    for k in range(n):
        kind = k % 4
        if kind == 0:
            servers.append(obs(f"u{k}", requests=Resources(cpu=1 + k % 7)))  # idle
        elif kind == 1:
            servers.append(obs(f"u{k}", cpu=Signal(0.5, 60, 60)))  # busy
        elif kind == 2:
            servers.append(gpu_obs(f"u{k}"))  # idle GPU
        else:
            servers.append(obs(f"u{k}", last_activity=ago(minutes=55)))  # warn
    observations = CountingIterable(servers)
    pending = CountingIterable([WANTS_GPU, PendingPod("jhub", "p2", reasons={"cpu"})])
    cfg = PolicyConfig(max_suspensions_per_cycle=10, max_concurrent_suspensions=100)
    start = time.perf_counter()
    plan = decide(observations, pending, cfg, NOW, OK)
    elapsed = time.perf_counter() - start
    print(f"decide() over {n} servers: {elapsed * 1000:.1f} ms")
    assert observations.passes == 1
    assert pending.passes == 1
    assert len(plan.decisions) == n
    eligible = n // 2  # idle CPU + idle GPU servers
    expected_suspend = min(10, eligible)  # capped at 10; the rest stay warned
    assert plan.counts == {
        "suspend": expected_suspend,
        "warn": n // 4 + eligible - expected_suspend,
        "keep": n - n // 4 - eligible,
    }
    # GPU servers help both pending pods and waste the most: they go first.
    gpu_users = {s.user for s in servers if s.is_gpu}
    head = plan.to_suspend[: len(gpu_users)]
    assert head and all(d.user in gpu_users for d in head)


# ---- the fail-safe's inputs, and which reading judges a server ----------------------------------


def test_freshness():
    assert freshness_health({"cpu": 3, "memory": 3}, {"cpu", "memory"}, 60).ok
    stale = freshness_health({"cpu": 300, "memory": 3}, {"cpu", "memory"}, 60)
    assert not stale.ok and "cpu" in stale.reason and "300 s" in stale.reason
    missing = freshness_health({"cpu": 3}, {"cpu", "gpu"}, 60)
    assert not missing.ok and "no recent gpu" in missing.reason
    assert not freshness_health({"cpu": math.nan}, {"cpu"}, 60).ok
    assert freshness_health({}, set(), 60).ok  # nothing running, nothing required


def test_required_signals_follow_what_is_running():
    assert required_signals([]) == frozenset()  # an empty hub is not a broken pipeline
    cpu_only = required_signals([Resources(cpu=1), None])
    assert cpu_only == {"cpu", "memory", "requests"}
    assert required_signals([Resources(cpu=1), Resources(cpu=1, gpu=1)]) == {
        "cpu",
        "memory",
        "requests",
        "gpu",
    }


def test_a_gpu_server_is_judged_on_the_gpu_window_when_it_was_measured():
    assert cpu_signal_source(holds_gpu=True, gpu_window_measured=True) == "cpu_gpu"
    assert cpu_signal_source(holds_gpu=True, gpu_window_measured=False) == "cpu"
    assert cpu_signal_source(holds_gpu=False, gpu_window_measured=True) == "cpu"


def test_a_suspension_that_frees_a_pending_pod_is_asked_for_capacity():
    idle = Decision("u", "", "suspend", ("idle",), idle_for=7200)
    assert idle.suspension_reason == "idle"
    assert replace(idle, frees=("jhub/jupyter-v",)).suspension_reason == "capacity"
