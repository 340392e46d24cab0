"""``GET api/servers`` without servers: the listing is every server the hub knows now, joined to
what the policy's last cycle measured and decided only where that still applies (issue 10,
defect 3: a server that started after the last cycle was missing from the listing)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from traitlets.config import Config

from jhub_suspend.policy import Decision, MetricsHealth, Plan, Resources, Signal
from jhub_suspend.service import SuspendService
from jhub_suspend.service.hubclient import HubClient
from jhub_suspend.service.listing import server_entries
from jhub_suspend.service.loop import PolicyLoop
from jhub_suspend.service.observe import ServerView
from jhub_suspend.service.operations import Operation
from jhub_suspend.service.prom import PrometheusReader
from jhub_suspend.service.snapshot import Snapshot
from jhub_suspend.testing import fakes

CYCLE = datetime(2026, 1, 1, 12, tzinfo=UTC)
NOW = CYCLE + timedelta(seconds=50)
STARTED = CYCLE - timedelta(hours=2)


def view(user: str, state: str = "running", **kw) -> ServerView:
    return ServerView(
        user=user,
        server_name="",
        state=state,
        started=kw.pop("started", STARTED),
        namespace="default",
        pod_name=f"jupyter-{user}",
        **kw,
    )


def snapshot(views: list[ServerView], decisions: list[Decision]) -> Snapshot:
    plan = Plan(CYCLE, False, MetricsHealth(True), tuple(decisions), ())
    return Snapshot(CYCLE, views, plan, None, [], {}, 6, 1)


def decision(user: str, action: str, reason: str, suspend_at=None) -> Decision:
    return Decision(user, "", action, (reason,), idle_for=600.0, suspend_at=suspend_at)  # type: ignore[arg-type]


def entries(views, snap, operations=None):
    return {
        e["user"]: e
        for e in server_entries(
            views,
            snap,
            now=NOW,
            operations=operations or {},
            prefix="/services/suspend/",
            max_keep_running=None,
        )
    }


def test_a_server_newer_than_the_last_cycle_is_listed_as_not_yet_assessed():
    snap = snapshot([view("ann")], [decision("ann", "keep", "CPU reached 80%")])
    late = view("bo", started=CYCLE + timedelta(seconds=20), last_activity=NOW)
    got = entries([view("ann"), late], snap)
    assert set(got) == {"ann", "bo"}
    bo = got["bo"]
    assert bo["state"] == "running" and bo["pod"] == "jupyter-bo"
    assert bo["decision"] is None and bo["warning"] is None
    assert bo["decision_note"].startswith("not yet assessed")
    assert "2026-01-01T12:00:00Z" in bo["decision_note"]
    assert bo["idle_seconds"] == 0.0  # from the hub's activity, read now
    assert bo["utilisation"]["cpu_percent_of_request"] is None
    assert got["ann"]["decision"]["action"] == "keep" and got["ann"]["decision_note"] is None


def test_before_the_first_cycle_every_server_is_listed():
    got = entries([view("ann"), view("bo", "suspended", started=None)], None)
    assert {e["state"] for e in got.values()} == {"running", "suspended"}
    assert all(e["decision"] is None for e in got.values())
    assert all("has not completed a cycle" in e["decision_note"] for e in got.values())


def test_what_the_cycle_measured_and_decided_about_the_same_run_is_kept():
    cpu = Signal(0.02, 10, 10)
    seen = view("ann", cpu=cpu, memory_ratio=0.4, requests=Resources(0.5, 1e9, 0))
    warn = decision("ann", "warn", "idle: suspended at 12:10", CYCLE + timedelta(minutes=10))
    snap = snapshot([seen], [warn])
    # the fresh read has no pod requests (the pod list said nothing new) nor signals
    now = view("ann", last_activity=CYCLE - timedelta(minutes=30))
    (ann,) = entries([now], snap).values()
    assert ann["decision"] == {
        "action": "warn",
        "reasons": ["idle: suspended at 12:10"],
        "suspend_at": "2026-01-01T12:10:00Z",
    }
    assert ann["warning"] == {"suspend_at": "2026-01-01T12:10:00Z", "message": warn.reasons[0]}
    assert ann["utilisation"]["cpu_percent_of_request"]["max"] == 2.0
    assert ann["utilisation"]["memory_ratio_of_request"] == 0.4
    assert ann["requests"] == {"cpu": 0.5, "memory": 1e9, "gpu": 0}
    assert ann["idle_seconds"] == 30 * 60 + 50


def test_a_suspension_since_the_cycle_shows_and_the_old_decision_does_not():
    snap = snapshot([view("ann", cpu=Signal(0.0, 10, 10))], [decision("ann", "suspend", "idle")])
    checkpoint = fakes.checkpoint("suspended", size=5, image="fernet:sealed")
    got = entries([view("ann", "suspended", checkpoint=checkpoint)], snap)
    ann = got["ann"]
    assert ann["state"] == "suspended"
    assert ann["checkpoint"]["digest"] == "sha256:ab" and "image" not in ann["checkpoint"]
    assert ann["decision"] is None and ann["utilisation"]["cpu_percent_of_request"] is None
    assert ann["decision_note"] == (
        "not yet assessed as suspended: the policy's last cycle (2026-01-01T12:00:00Z) saw it "
        "running"
    )
    # a restart after it is a new run: nothing of the old one applies
    restarted = view("ann", started=CYCLE + timedelta(seconds=40))
    assert entries([restarted], snap)["ann"]["decision"] is None


def test_a_suspension_under_way_keeps_the_decision_that_led_to_it_and_shows_the_operation():
    snap = snapshot([view("ann")], [decision("ann", "suspend", "idle")])
    op = Operation("ff00", "suspend", "ann", "", "policy", "idle", CYCLE)
    got = entries([view("ann", "suspending")], snap, {("ann", ""): op})
    assert got["ann"]["state"] == "suspending"
    assert got["ann"]["decision"]["action"] == "suspend"
    assert got["ann"]["operation"]["url"] == "/services/suspend/api/operations/ff00"


def test_servers_the_policy_never_assesses_say_so():
    snap = snapshot([], [])
    got = entries([view("ann", "stopped", started=None)], snap)
    assert got["ann"]["decision_note"] == "not assessed: the policy assesses no stopped server"


# ---- the fresh read --------------------------------------------------------------------------


def _service(hub_url: str, kube) -> SuspendService:
    cfg = Config()
    cfg.SuspendService.prometheus_url = "http://127.0.0.1:9"
    svc = SuspendService(config=cfg)
    svc.prepare()
    svc.hub = HubClient(hub_url, "t")
    svc.kube = kube
    svc.loop = PolicyLoop(svc)
    return svc


async def test_the_listing_reads_the_hub_and_the_pods_now():
    users = fakes.synthetic_users(3, NOW)
    pods = fakes.synthetic_pods(3)
    # user00002's default server is stopped with a checkpoint that was discarded
    stopped = users[2]["servers"][""]
    stopped.update(ready=False, started=None)
    stopped["state"]["jhub_suspend"]["checkpoint"] = fakes.checkpoint_record(digest="sha256:cd")
    pods[1]["metadata"]["annotations"] = {
        "jhub-suspend.jupyter.org/keep-running-since": "2026-01-01T11:00:00Z"
    }
    marker = {"data": {"digest": "c2hhMjU2OmNk"}}  # base64 of sha256:cd
    hub = fakes.FakeHub(users)
    kube = fakes.FakeKube(pods[:2], markers=[marker])
    svc = _service(hub.start(), kube)
    try:
        everyone = await svc.loop.current_views()
        assert [(v.user, v.state) for v in everyone] == [
            ("user00000", "running"),
            ("user00001", "running"),
            ("user00002", "stopped"),
        ]
        assert kube.calls == 2  # one pod list, one marker list
        (one,) = await svc.loop.current_views("user00001")
        assert one.keep_running is not None and one.node == "node-1"
        assert one.requests == Resources(0.5, 512e6, 0)
        assert kube.calls == 3  # its pod by name; no markers needed for a running server
        assert await svc.loop.current_views("nobody") == []
    finally:
        hub.stop()


async def test_an_operation_under_way_shows_in_the_state():
    users = fakes.synthetic_users(1, NOW)
    hub = fakes.FakeHub(users)
    svc = _service(hub.start(), fakes.FakeKube(fakes.synthetic_pods(1)))
    try:

        async def forever(op):
            await asyncio.Event().wait()

        op = svc.operations.start("suspend", "user00000", "", "admin", "manual", NOW, forever)
        (v,) = await svc.loop.current_views("user00000")
        assert v.state == "suspending"
        await svc.operations.cancel_all()
        assert op.task is not None and op.task.cancelled()
    finally:
        hub.stop()


async def test_a_malformed_spawner_state_breaks_neither_the_cycle_nor_the_listing():
    """The hub hands over each server's spawner state as stored: one that this version cannot
    read (damaged, or another version's) is left out for that server alone."""
    users = fakes.synthetic_users(5, NOW)
    states = {
        1: ["not", "an", "object"],
        2: {"pod_name": "jupyter-user00002", "jhub_suspend": {"checkpoint": {"status": ["x"]}}},
        3: {"pod_name": "jupyter-user00003", "jhub_suspend": {"last_error": ["x"]}},
        4: {"pod_name": 4, "jhub_suspend": "x"},
    }
    for i, state in states.items():
        users[i]["servers"][""]["state"] = state
    pods = fakes.synthetic_pods(5)
    keys = [("default", p["metadata"]["name"]) for p in pods]
    hub = fakes.FakeHub(users)
    prom = fakes.FakePrometheus(keys)
    svc = _service(hub.start(), fakes.FakeKube(pods))
    svc.prometheus = PrometheusReader(prom.start(), timeout=5)
    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append  # type: ignore[method-assign]
    svc.log.addHandler(handler)
    try:
        snap = await svc.loop.observe()
        assert len(snap.plan.decisions) == 5 and snap.plan.metrics.ok
        by_user = {v.user: v for v in snap.views}
        assert by_user["user00000"].state == "running" and by_user["user00000"].pod_name
        assert by_user["user00001"].pod_name == "" and by_user["user00001"].state_problems
        assert by_user["user00002"].checkpoint is None and by_user["user00002"].state == "running"
        assert by_user["user00003"].last_error is None
        said = [r.getMessage() for r in logged if "partly unreadable" in r.getMessage()]
        assert len(said) == 4 and "user00004/" in said[-1]
        await svc.loop.observe()
        assert len([r for r in logged if "partly unreadable" in r.getMessage()]) == 4  # once
        listed = entries(await svc.loop.current_views(), snap)
        assert set(listed) == {f"user0000{i}" for i in range(5)}
        assert listed["user00000"]["decision"] is not None
    finally:
        svc.log.removeHandler(handler)
        svc.prometheus.close()
        prom.stop()
        hub.stop()


async def test_a_repair_that_fails_for_one_pod_still_repairs_the_others():
    """Clearing a stale suspension mark is a repair each cycle makes; a pod that cannot be
    patched (gone, forbidden) is logged, and the cycle goes on to the next one."""

    patched: list[str] = []

    class Kube(fakes.FakeKube):
        async def patch_pod_annotations(self, namespace, pod, annotations):
            if pod == "jupyter-ann":
                raise RuntimeError("pods 'jupyter-ann' not found")
            patched.append(pod)

    marked = CYCLE - timedelta(hours=1)  # older than any requester waits
    views = [view(u, "suspending", suspend_marked=marked) for u in ("ann", "bob")]
    svc = _service("http://127.0.0.1:9/hub/api", Kube([]))
    await svc.loop._repair(snapshot(views, []))
    assert patched == ["jupyter-bob"]
