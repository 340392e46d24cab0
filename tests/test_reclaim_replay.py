"""The reclaim replay (benchmarks/reclaim_replay.py): the generated world's shape, its metrics,
the ground truth and the culler as pure code, and a short replay through the real policy and a
real Prometheus."""

from __future__ import annotations

import io
import os
import re
import sys
from collections import defaultdict

import numpy as np
import pytest

from jhub_suspend import promql

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
try:
    import reclaim_replay as rr
    import reclaim_report
    import reclaim_world as rw
finally:
    sys.path.pop(0)


@pytest.fixture(scope="module")
def world() -> rw.World:
    return rw.generate(rw.Shape(users=200, days=7), seed=14)


def _cpu_hours(u: rw.User) -> float:
    return sum(b.cores * (b.end - b.start) for b in u.bursts) / 60


def _local_hour(minute: int) -> float:
    return ((minute % rw.DAY) / 60 + rw.LOCAL_OFFSET_H) % 24


# ---- the generator ----------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_world() -> None:
    a, b = (rw.generate(rw.Shape(users=12, days=2), seed=5) for _ in range(2))
    c = rw.generate(rw.Shape(users=12, days=2), seed=6)
    for ua, ub in zip(a.users, b.users, strict=True):
        assert (ua.reservation, ua.sessions, ua.bursts) == (ub.reservation, ub.sessions, ub.bursts)
        assert np.array_equal(ua.cpu, ub.cpu) and np.array_equal(ua.activity, ub.activity)
    assert [u.reservation for u in a.users] != [u.reservation for u in c.users]


def test_reservations_last_1_to_16_days_and_overlap_the_week(world: rw.World) -> None:
    days = [(u.reservation[1] - u.reservation[0]) / rw.DAY for u in world.users]
    assert min(days) >= 1 and max(days) <= 16
    assert sum(d > 7 for d in days) > 10  # some outlast the week, as in the seed
    for u in world.users:
        assert u.reservation[0] < world.minutes - 60 and u.reservation[1] > 60


def test_cpu_use_is_45_minutes_to_7_hours_in_bursts(world: rw.World) -> None:
    hours = [_cpu_hours(u) for u in world.users]
    assert max(hours) <= 7.0
    # a reservation's end can cut its last burst short; nearly all stay in the seed's range
    assert sum(0.75 <= h <= 7.0 for h in hours) >= 0.9 * len(hours)
    for u in world.users:
        starts = u.session_starts
        for b in u.bursts:  # every computation starts in a session
            assert any(s <= b.start < e for s, e in u.sessions), (u.name, b)
        assert len(u.bursts) >= len(starts)


def test_busy_and_idle_are_unambiguous_against_the_threshold(world: rw.World) -> None:
    """Computations use at least 5 % of the request; outside sessions and computations a server
    idles under it, so "active" in the ground truth means what the policy's threshold means."""
    for u in world.users:
        in_session = np.zeros_like(u.busy)
        for s, e in u.sessions:
            in_session[max(0, world.index(s)) : max(0, world.index(e))] = True
        held = u.cpu > 0
        assert np.all(u.cpu[u.busy] >= 0.05 * u.cpu_request)
        quiet = held & ~u.busy & ~in_session
        assert np.all(u.cpu[quiet] < 0.05 * u.cpu_request)


def test_daily_rhythm_weekends_and_users_who_never_come_back(world: rw.World) -> None:
    starts = [s for u in world.users for s in u.session_starts]
    daytime = sum(7 <= _local_hour(s) <= 20 for s in starts)
    assert daytime >= 0.8 * len(starts)
    per_day = defaultdict(int)
    for s in starts:
        if 0 <= s < world.minutes:
            per_day[s // rw.DAY] += 1
    weekdays = np.mean([per_day[d] for d in range(5)])
    weekend = np.mean([per_day[d] for d in (5, 6)])
    assert weekend < 0.6 * weekdays
    never = [u for u in world.users if u.never_returns]
    assert 0.1 * len(world.users) <= len(never) <= 0.3 * len(world.users)
    assert all(len(u.sessions) == 1 for u in never)


def test_gpu_users_have_dcgm_style_utilisation(world: rw.World) -> None:
    gpu = [u for u in world.users if u.gpus]
    assert 0.05 * len(world.users) <= len(gpu) <= 0.3 * len(world.users)
    for u in world.users:
        if not u.gpus:
            assert not u.gpu_util.any()
            continue
        assert np.all((u.gpu_util[u.busy] >= 20) & (u.gpu_util[u.busy] <= 100))
        assert not u.gpu_util[~u.busy].any()


def test_every_login_is_hub_activity_and_activity_stays_in_the_reservation(
    world: rw.World,
) -> None:
    for u in world.users:
        activity = set(u.activity.tolist())
        assert set(u.session_starts) <= activity
        assert u.activity.min() >= u.reservation[0] and u.activity.max() < u.reservation[1]
        assert u.last_activity(u.session_starts[0]) == u.session_starts[0]


def test_ground_truth_sees_activity_and_computation() -> None:
    w = rw.generate(rw.Shape(users=30, days=2), seed=3)
    u = next(u for u in w.users if any(0 <= b.start < w.minutes for b in u.bursts))
    b = next(b for b in u.bursts if 0 <= b.start < w.minutes)
    kw = {"window": 60, "activity_timeout": 60, "cpu_threshold": 0.05, "gpu_threshold": 5.0}
    assert rw.active_before(u, w, b.start + 1, **kw)  # a session is open
    quiet = next(
        m
        for m in range(max(0, u.reservation[0]), min(w.minutes, u.reservation[1]))
        if not np.any(u.busy[w.index(m) - 60 : w.index(m)])
        and (u.last_activity(m) is None or m - u.last_activity(m) >= 60)
    )
    assert rw.active_before(u, w, quiet, **kw) is None


# ---- the exposition ---------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+) (\d+)$")


def test_metrics_have_the_names_and_labels_the_service_queries() -> None:
    w = rw.generate(rw.Shape(users=25, days=1, lead_in_hours=1), seed=2)
    out = io.StringIO()
    n = rw.write_openmetrics(w, out)
    lines = out.getvalue().splitlines()
    assert lines[-1] == "# EOF"
    names = promql.MetricNames()
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for line in lines:
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, line
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        assert labels[names.namespace] == rw.NAMESPACE
        assert re.fullmatch("jupyter-.*", labels[names.pod])
        series[(m.group(1), m.group(2))].append((int(m.group(4)), float(m.group(3))))
    assert sum(len(v) for v in series.values()) == n
    metrics = {name for name, _ in series}
    assert metrics == {
        names.cpu_usage,
        names.memory_working_set,
        names.requests,
        names.gpu_util,
        names.gpu_fb_used,
    } or metrics == {names.cpu_usage, names.memory_working_set, names.requests}
    resources = {
        dict(re.findall(r'(\w+)="([^"]*)"', k[1]))[names.resource]
        for k in series
        if k[0] == names.requests
    }
    assert {names.cpu_resource, names.memory_resource} <= resources
    for (name, _), samples in series.items():
        times = [t for t, _ in samples]
        assert times == sorted(times) and np.all(np.diff(times) == 60)
        if name == names.cpu_usage:
            values = [v for _, v in samples]
            assert values == sorted(values)  # a counter


def test_the_sample_at_a_minute_carries_the_previous_minutes_cpu() -> None:
    w = rw.generate(rw.Shape(users=5, days=1, lead_in_hours=1), seed=4)
    u = w.users[0]
    t = rw._scrapes(u, w)
    out = io.StringIO()
    rw._lines(out, "x", np.cumsum(rw._per_scrape(u.cpu, w, t) * 60), t, ".6f")
    values = [float(line.split()[1]) for line in out.getvalue().splitlines()]
    k = len(t) // 2
    rate = (values[k] - values[k - 1]) / 60
    assert rate == pytest.approx(u.cpu[w.index(int(t[k]) - 1)], abs=1e-5)


# ---- costs, the culler -----------------------------------------------------------------------


def test_cost_model_interpolates_the_speed_benchmark() -> None:
    costs = rr.CostModel.load()
    for size, s, r in zip(costs.sizes, costs.suspend, costs.resume, strict=True):
        assert costs.suspend_seconds(size) == pytest.approx(s)
        assert costs.resume_seconds(size) == pytest.approx(r)
    mid = (costs.sizes[0] + costs.sizes[1]) / 2
    assert costs.suspend[0] < costs.suspend_seconds(mid) < costs.suspend[1]
    assert costs.suspend_seconds(2 * costs.sizes[-1]) > costs.suspend[-1]
    assert costs.suspend_seconds(1) == pytest.approx(costs.suspend[0])


def test_culler_stops_servers_an_hour_after_their_last_activity(world: rw.World) -> None:
    culls = rr.cull_week(world)
    users = {u.name: u for u in world.users}
    assert culls
    for c in culls:
        u = users[c.user]
        last = u.last_activity(c.minute)
        assert last is None or c.minute - last >= 60
        assert not any(s <= c.minute < e for s, e in u.sessions)
        assert c.kernels == u.kernels
    # silent runs outlast an hour without activity: the culler kills some of them, and the
    # ground truth the replay checks jhub-suspend's suspensions against calls them active
    killed = [c for c in culls if c.killed_computation]
    assert killed
    kw = {"window": 60, "activity_timeout": 60, "cpu_threshold": 0.05, "gpu_threshold": 5.0}
    for c in killed:
        assert rw.active_before(users[c.user], world, c.minute, **kw), c


# ---- the replay, end to end -------------------------------------------------------------------


@pytest.mark.slow
async def test_short_replay_suspends_idle_servers_and_never_an_active_one(tmp_path) -> None:
    r = await rr.replay(users=10, days=1, seed=14, step=300, lead_in_hours=3, workdir=tmp_path)
    report = reclaim_report.build(r)
    s = report["jhub_suspend"]
    assert report["policy"]["failsafe_cycles"] == {}
    assert report["policy"]["cycles"] == 288
    assert report["policy"]["prometheus_queries"] == 288 * 9  # the service's real queries
    # the assertion that matters, and proof that it could fail: servers were suspended
    assert s["suspensions"] > 0
    assert s["active_servers_suspended"] == 0, s["active_suspensions"]
    assert s["computation_minutes_while_suspended"] == 0
    assert s["warnings"]["suspensions_warned_less_than_warn_before"] == 0
    assert report["capacity"]["jhub_suspend"]["reclaimed_core_share"] > 0.5
    cap = report["capacity"]
    assert cap["jhub_suspend"]["work_core_hours"] == cap["without_jhub_suspend"]["work_core_hours"]
    paths = reclaim_report.write(report, r, tmp_path / "out")
    assert all(p.stat().st_size > 0 for p in paths)
