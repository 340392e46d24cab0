"""Draining a node without servers: what :func:`drain_steps` does with each server on the node
(pure), :class:`Drains` running those steps against an in-process service whose hub,
Kubernetes and suspensions are stand-ins (bounded concurrency, dry run, refusals, progress),
and the node check through the real Kubernetes client. The drain against the real cluster, hub
and service is in tests/test_service_e2e.py."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from jhub_suspend.gpu import Capability
from jhub_suspend.policy import KeepRunning, PolicyConfig, Resources
from jhub_suspend.service import cli
from jhub_suspend.service.actions import ActionError, GpuReadings
from jhub_suspend.service.drain import Drains, drain_steps, summary
from jhub_suspend.service.gpucaps import GpuNode
from jhub_suspend.service.kube import Kube
from jhub_suspend.service.observe import ServerView
from jhub_suspend.service.operations import Operation, Operations
from jhub_suspend.testing import fakes
from jhub_suspend.testing.waiting import wait_for

GIB = 1 << 30
NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
CONFIG = PolicyConfig()
LAST_SUSPEND_FAILED = SimpleNamespace(operation="suspend", message="criu failed")


def view(user: str, state: str = "running", node: str | None = "n1", **kw: Any) -> ServerView:
    values: dict[str, Any] = {
        "server_name": "",
        "namespace": "default",
        "pod_name": f"jupyter-{user}",
        "node": node,
        "pod_alive": True,
        **kw,
    }
    return ServerView(user=user, state=state, **values)


def steps_of(views, config=CONFIG, suspensions=None, gpu_refusals=None):
    steps = drain_steps(
        views,
        "n1",
        now=NOW,
        config=config,
        suspensions=suspensions or {},
        gpu_refusals=gpu_refusals,
    )
    return {s.name: (s.action, s.reason) for s in steps}


# ---- what to do with each server -------------------------------------------------------------


def test_a_running_server_is_suspended_and_servers_elsewhere_are_not_touched():
    steps = steps_of([view("ann"), view("bob", node="n2"), view("cy", node=None)])
    assert steps == {"ann": ("suspend", "running")}


def test_a_keep_running_opt_out_in_force_leaves_the_server_running_and_says_until_when():
    kept = KeepRunning(since=NOW - timedelta(hours=1), until=NOW + timedelta(hours=1))
    ended = KeepRunning(since=NOW - timedelta(hours=2), until=NOW - timedelta(hours=1))
    forever = KeepRunning(since=NOW - timedelta(hours=1))
    views = [view("ann", keep_running=kept), view("bob", keep_running=ended)]
    steps = steps_of([*views, view("cy", keep_running=forever)])
    assert steps["ann"][0] == "leave"
    assert steps["ann"][1] == "keep-running opt-out until 2026-01-01 13:00 UTC"
    assert steps["bob"] == ("suspend", "running")
    # the policy's cap applies: a week by default
    assert steps["cy"][0] == "leave" and "capped by max_keep_running" in steps["cy"][1]
    uncapped = PolicyConfig(max_keep_running=None)
    assert steps_of([view("cy", keep_running=forever)], uncapped)["cy"] == (
        "leave",
        "keep-running opt-out with no end",
    )
    # a policy that allows no opt-outs ignores them here too
    no_opt_outs = PolicyConfig(allow_keep_running=False)
    assert steps_of([view("ann", keep_running=kept)], no_opt_outs)["ann"][0] == "suspend"


def test_servers_that_cannot_be_suspended_now_are_left_with_the_reason():
    steps = steps_of(
        [
            view("ann", "starting", pending="spawn"),
            view("bob", "restoring", pending="spawn"),
            view("cy", "suspending", pending="stop"),
            view("dan", "stopping", pending="stop"),
            view("eve", "failed", last_error=LAST_SUSPEND_FAILED),
            view("fay", "stopped"),
        ]
    )
    assert {name: action for name, (action, _) in steps.items()} == dict.fromkeys(
        ("ann", "bob", "cy", "dan", "eve", "fay"), "leave"
    )
    assert "starting" in steps["ann"][1]
    assert "being restored" in steps["bob"][1]
    assert steps["cy"][1] == "being suspended by the hub at someone else's request"
    assert steps["dan"][1] == "being stopped by the hub at someone else's request"
    assert "last suspension failed" in steps["eve"][1]
    assert steps["fay"][1] == "the hub has it stopped but its pod runs"


def test_a_suspension_under_way_is_waited_for_and_a_pod_going_away_is_skipped():
    steps = drain_steps(
        [view("ann", "suspending"), view("bob", "suspended", pod_alive=False)],
        "n1",
        now=NOW,
        config=CONFIG,
        suspensions={("ann", ""): "op1"},
    )
    ann, bob = steps
    assert (ann.action, ann.operation) == ("wait", "op1")
    assert (bob.action, bob.operation) == ("skip", None)
    assert bob.reason == "its pod is already going away (the hub has it suspended)"


def test_a_stale_suspension_mark_on_a_ready_server_does_not_stop_a_drain():
    # "suspending" without a stop or an operation: the requester died after marking the pod
    marked = view("ann", "suspending", suspend_marked=NOW - timedelta(hours=1))
    assert steps_of([marked]) == {"ann": ("suspend", "running")}


def test_steps_are_ordered_by_user_and_server_name():
    views = [view("bob"), view("ann", server_name="lab"), view("ann")]
    steps = drain_steps(views, "n1", now=NOW, config=CONFIG, suspensions={})
    assert [s.name for s in steps] == ["ann", "ann/lab", "bob"]


def test_the_summary_says_whether_the_node_is_empty():
    assert summary("n1", [], dry_run=False) == (True, "no notebook server on node n1")
    done = [{"outcome": "suspended"}, {"outcome": "not_running"}]
    assert summary("n1", done, dry_run=False) == (
        True,
        "suspended 1, skipped 1 not running; n1 is empty",
    )
    left = [{"outcome": "suspended"}, {"outcome": "failed"}, {"outcome": "left_running"}]
    assert summary("n1", left, dry_run=False) == (
        False,
        "suspended 1, 1 failed and kept running, left 1 running; 2 still on n1",
    )
    planned = [{"outcome": "would_suspend"}, {"outcome": "left_running"}]
    assert summary("n1", planned, dry_run=True) == (
        True,
        "dry run: would suspend 1, leave 1 running, skip 0",
    )


# ---- running a drain against stand-ins -------------------------------------------------------


class Service:
    """What a drain uses of the service: the views it reads, a node check, and suspensions
    that take ``delay`` seconds and fail for the users in ``failing``."""

    def __init__(self, views, *, nodes=("n1",), concurrency=2, failing=(), delay=0.05):
        self.log = logging.getLogger("test-drain")
        self.operations = Operations()
        self.drain_concurrency = concurrency
        self.policy_config = CONFIG
        self.suspended: list[tuple[str, str, str]] = []
        self.running = self.most = 0
        service = self

        class Kube:
            async def node_exists(self, name):
                return None if nodes is None else name in nodes

        class Loop:
            async def current_views(self, user=None):
                return views

        class Actions:
            async def suspend(self, user, server_name, requested_by, reason="manual"):
                if user == "gone":
                    raise ActionError(409, f"{user} is not running")

                async def work(op: Operation) -> None:
                    service.running += 1
                    service.most = max(service.most, service.running)
                    await asyncio.sleep(delay)
                    service.running -= 1
                    service.suspended.append((user, requested_by, reason))
                    if user in failing:
                        op.status, op.message = "failed", "checkpoint failed: criu said no"
                    else:
                        op.status, op.message = "succeeded", "suspended"
                        op.result = {"checkpoint": {"digest": f"sha256:{user}", "size": 1}}

                return service.operations.start(
                    "suspend", user, server_name, requested_by, reason, NOW, work
                )

        self.kube, self.loop, self.actions = Kube(), Loop(), Actions()

    def now(self) -> datetime:
        return NOW


async def finished(op: Operation) -> Operation:
    assert op.task is not None
    await op.task
    return op


async def test_a_suspension_started_while_the_drain_waited_is_joined_not_failed():
    svc = Service([view("ann"), view("bob")], concurrency=1)
    op = await Drains(svc).start("n1", dry_run=False, requested_by="user:admin")
    # ann takes the one slot; meanwhile the policy starts suspending bob
    release = asyncio.Event()

    async def policy_work(sub: Operation) -> None:
        await release.wait()
        sub.status, sub.message = "succeeded", "suspended"
        sub.result = {"checkpoint": {"digest": "sha256:bob", "size": 1}}

    policy = svc.operations.start("suspend", "bob", "", "policy", "idle", NOW, policy_work)
    bob = next(s for s in op.result["servers"] if s["user"] == "bob")
    await wait_for(lambda: bob["operation"] == policy.id, "the drain never joined bob's", 10)
    release.set()
    await finished(op)
    assert (bob["outcome"], bob["checkpoint"]) == ("suspended", {"digest": "sha256:bob", "size": 1})
    assert [u for u, _, _ in svc.suspended] == ["ann"]  # bob's is the policy's, not a second
    assert op.status == "succeeded"


async def test_a_drain_suspends_a_few_at_a_time_and_reports_each_server():
    kept = KeepRunning(since=NOW, until=NOW + timedelta(hours=1))
    views = [
        *(view(u) for u in ("ann", "bob", "cy", "dan", "eve")),
        view("kim", keep_running=kept),
        view("zed", node="n2"),
    ]
    svc = Service(views, concurrency=2, failing={"dan"})
    op = await Drains(svc).start("n1", dry_run=False, requested_by="user:admin")
    assert op.kind == "drain" and op.node == "n1" and not op.done
    assert op.result["counts"]["pending"] == 5 and op.result["counts"]["left_running"] == 1
    assert svc.operations.by_server() == {}  # a drain is on no one server
    await finished(op)
    assert svc.most == 2  # bounded, and used
    assert sorted(u for u, _, _ in svc.suspended) == ["ann", "bob", "cy", "dan", "eve"]
    assert {(by, reason) for _, by, reason in svc.suspended} == {("user:admin", "drain")}
    outcomes = {s["user"]: (s["outcome"], s["message"]) for s in op.result["servers"]}
    assert outcomes == {
        "ann": ("suspended", "suspended"),
        "bob": ("suspended", "suspended"),
        "cy": ("suspended", "suspended"),
        "dan": ("failed", "checkpoint failed: criu said no"),
        "eve": ("suspended", "suspended"),
        "kim": ("left_running", "keep-running opt-out until 2026-01-01 13:00 UTC"),
    }
    ann = next(s for s in op.result["servers"] if s["user"] == "ann")
    assert ann["checkpoint"] == {"digest": "sha256:ann", "size": 1}
    assert svc.operations.get(ann["operation"]).kind == "suspend"
    assert op.status == "failed"
    assert op.message == "suspended 4, 1 failed and kept running, left 1 running; 2 still on n1"
    assert op.result["counts"]["suspended"] == 4 and op.finished == NOW


def test_a_gpu_server_that_cannot_be_suspended_safely_is_left_with_the_reason():
    why = "node n1 cannot checkpoint GPUs: CRIU's CUDA plugin is not installed there"
    kept = KeepRunning(since=NOW)
    steps = steps_of(
        [view("ann"), view("bob"), view("kim", keep_running=kept)],
        gpu_refusals={("bob", ""): why, ("kim", ""): why},
    )
    assert steps["ann"] == ("suspend", "running")
    assert steps["bob"] == ("leave", f"it holds GPUs and cannot be suspended safely: {why}")
    assert steps["kim"][0] == "leave" and "keep" in steps["kim"][1]  # the opt-out says first


async def test_a_drain_reads_its_nodes_gpu_facts_once_and_leaves_the_unsafe_servers():
    gpus = Resources(cpu=1, memory=GIB, gpu=1)
    svc = Service(
        [
            view("ann", requests=gpus),
            view("bob", requests=gpus),
            view("cy"),  # no GPUs: not judged by the GPU rules
            view("dan", requests=gpus, node="n2"),  # elsewhere
        ]
    )
    reads: list[tuple[list[str], bool]] = []
    capable = Capability(True, "node n1 can checkpoint GPUs", "cdi")

    async def gpu_readings(nodes, *, fresh):
        reads.append((nodes, fresh))
        return GpuReadings(
            {"n1": GpuNode(capable, 8, 8 * GIB)},
            # bob's GPU memory is more than the node has free to stage it in
            {("default", "jupyter-ann"): 1 * GIB, ("default", "jupyter-bob"): 9 * GIB},
            {("default", "jupyter-ann"): 0.5, ("default", "jupyter-bob"): 0.5},
        )

    svc.actions.gpu_readings = gpu_readings
    op = await Drains(svc).start("n1", dry_run=True, requested_by="user:admin")
    assert reads == [(["n1"], True)]  # one read, with the agent asked now
    outcomes = {s["user"]: (s["outcome"], s["message"]) for s in op.result["servers"]}
    assert outcomes["ann"] == ("would_suspend", "")
    assert outcomes["cy"] == ("would_suspend", "")
    assert outcomes["bob"][0] == "left_running"
    assert "node n1 has 8.0 GiB of memory available" in outcomes["bob"][1]


async def test_a_dry_run_suspends_nothing_and_is_finished_when_answered():
    kept = KeepRunning(since=NOW)
    svc = Service([view("ann"), view("kim", keep_running=kept)])
    op = await Drains(svc).start("n1", dry_run=True, requested_by="user:admin")
    assert op.done and op.status == "succeeded"
    assert [(s["user"], s["outcome"]) for s in op.result["servers"]] == [
        ("ann", "would_suspend"),
        ("kim", "left_running"),
    ]
    assert op.result["dry_run"] is True
    assert svc.suspended == [] and svc.operations.running() == []


async def test_an_empty_node_is_an_empty_report_and_an_unknown_node_is_404():
    svc = Service([view("zed", node="n2")], nodes=("n1", "n2"))
    op = await Drains(svc).start("n1", dry_run=False, requested_by="user:admin")
    assert op.done and op.status == "succeeded"
    assert op.result["servers"] == [] and op.message == "no notebook server on node n1"
    assert op.result["node_checked"] is True
    with pytest.raises(ActionError) as e:
        await Drains(svc).start("n3", dry_run=False, requested_by="user:admin")
    assert e.value.status == 404 and "no node 'n3'" in e.value.message
    with pytest.raises(ActionError) as e:
        await Drains(svc).start("Not_A_Node", dry_run=False, requested_by="user:admin")
    assert e.value.status == 400
    # a service that may not read nodes drains an unknown node of nothing, and says it could
    # not check
    blind = Service([], nodes=None)
    op = await Drains(blind).start("n3", dry_run=False, requested_by="user:admin")
    assert op.done and op.result["servers"] == [] and op.result["node_checked"] is False


async def test_a_second_drain_of_the_node_is_refused_and_a_refused_suspension_is_reported():
    svc = Service([view("ann"), view("gone")], delay=0.2)
    drains = Drains(svc)
    op = await drains.start("n1", dry_run=False, requested_by="user:admin")
    with pytest.raises(ActionError) as e:
        await drains.start("n1", dry_run=True, requested_by="user:admin")
    assert e.value.status == 409 and op.id in e.value.message
    await finished(op)
    gone = next(s for s in op.result["servers"] if s["user"] == "gone")
    assert (gone["outcome"], gone["message"]) == ("failed", "gone is not running")
    assert op.status == "failed"
    # finished: the node can be drained again
    again = await drains.start("n1", dry_run=True, requested_by="user:admin")
    assert again.done


async def test_a_drain_waits_for_a_suspension_already_under_way():
    svc = Service([view("ann", "suspending")], delay=0.1)
    under_way = await svc.actions.suspend("ann", "", "policy", reason="idle")
    op = await Drains(svc).start("n1", dry_run=False, requested_by="user:admin")
    (ann,) = op.result["servers"]
    assert (ann["action"], ann["operation"]) == ("wait", under_way.id)
    await finished(op)
    assert ann["outcome"] == "suspended" and op.status == "succeeded"
    assert svc.suspended == [("ann", "policy", "idle")]  # not suspended a second time


# ---- the node check, through the real Kubernetes client --------------------------------------


async def test_the_node_check_and_reads_tell_missing_and_forbidden_from_found():
    """Kube's raw reads (``_preload_content=False``) return any status's body unless checked:
    a 404's Status object was taken for the pod asked for."""

    class Api(web.RequestHandler):
        def get(self, kind, name):
            status = {"n1": 200, "p1": 200, "denied": 403}.get(name, 404)
            self.set_status(status)
            self.finish({"kind": "Status" if status != 200 else kind, "code": status})

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(
        web.Application([(r"/api/v1/(?:namespaces/default/)?(nodes|pods)/([^/]+)", Api)])
    )
    server.add_sockets(sockets)
    cfg = client.Configuration(host=f"http://127.0.0.1:{sockets[0].getsockname()[1]}")
    api = client.ApiClient(cfg)
    kube = Kube(api, timeout=5, total_timeout=5)
    try:
        assert await kube.node_exists("n1") is True
        assert await kube.node_exists("n2") is False
        assert await kube.node_exists("denied") is None
        assert (await kube.read_pod("default", "p1"))["kind"] == "pods"
        assert await kube.read_pod("default", "p2") is None
        with pytest.raises(ApiException) as e:
            await kube.read_pod("default", "denied")
        assert e.value.status == 403
    finally:
        await api.close()
        server.stop()


# ---- the command line, against a stand-in service ----------------------------------------------


def _server(user, action, outcome, message="", **extra):
    return {
        "user": user, "server_name": "", "namespace": "default", "pod": f"jupyter-{user}",
        "state": "running", "action": action, "reason": message or "running",
        "outcome": outcome, "message": message, "operation": None, "checkpoint": None, **extra,
    }  # fmt: skip


async def test_the_cli_prints_each_server_as_it_is_done_and_exits_5_when_some_are_left(capsys):
    kept = "keep-running opt-out until 2026-01-01 13:00 UTC"
    checkpoint = {"digest": "sha256:ab", "size": 3 * 2**20, "seconds": 7.94}
    readings = [  # what each GET of the operation answers, in turn
        [
            _server("ann", "suspend", "suspended", "suspended", checkpoint=checkpoint),
            _server("bob", "suspend", "suspending"),
            _server("kim", "leave", "left_running", kept),
        ],
        [
            _server("ann", "suspend", "suspended", "suspended", checkpoint=checkpoint),
            _server("bob", "suspend", "failed", "checkpoint failed: criu said no"),
            _server("kim", "leave", "left_running", kept),
        ],
    ]
    first = [_server("ann", "suspend", "pending"), _server("bob", "suspend", "pending")]
    first.append(_server("kim", "leave", "left_running", kept))
    seen = []

    def operation(servers, status="running", message=""):
        return {
            "id": "op1", "kind": "drain", "status": status, "message": message,
            "url": "/services/suspend/api/operations/op1", "node": "n1",
            "result": {"node": "n1", "node_checked": True, "servers": servers},
        }  # fmt: skip

    class Api(web.RequestHandler):
        def post(self, path):
            seen.append(self.request.uri)
            if "nope" in path:
                self.set_status(404)
                self.finish({"message": "the cluster has no node 'nope'"})
            elif self.get_argument("dry_run", "") == "true":
                plan = [_server("ann", "suspend", "would_suspend")]
                plan.append(_server("kim", "leave", "left_running", kept))
                self.finish({"operation": operation(plan, "succeeded", "dry run: ...")})
            else:
                self.set_status(202)
                self.finish({"operation": operation(copy.deepcopy(first))})

        def get(self, path):
            servers = readings.pop(0)
            done = not readings
            message = "suspended 1, 1 failed and kept running, left 1 running; 2 still on n1"
            self.finish(operation(servers, "failed" if done else "running", message))

    server, base = fakes.serve(web.Application([(r"/services/suspend/(.*)", Api)]))
    url = f"{base}/services/suspend/"
    loop = asyncio.get_running_loop()

    def run(*args):
        return loop.run_in_executor(None, cli.main, ["--url", url, "--token", "t", *args])

    try:
        assert await run("drain", "n1") == cli.EXIT_LEFT
        assert seen[-1] == "/services/suspend/api/nodes/n1/drain"
        assert capsys.readouterr().out.splitlines() == [
            "drain of n1: 3 notebook server(s) on it, suspending 2 (operation op1)",
            f"left running   kim: {kept}",
            "suspended      ann: checkpoint 3 MiB in 7.9 s",
            "FAILED         bob: checkpoint failed: criu said no (not suspended)",
            "n1: suspended 1, 1 failed and kept running, left 1 running; 2 still on n1",
        ]
        assert await run("drain", "n1", "--dry-run") == 0
        assert seen[-1] == "/services/suspend/api/nodes/n1/drain?dry_run=true"
        assert capsys.readouterr().out.splitlines() == [
            "drain of n1 (dry run): 2 notebook server(s) on it",
            "would suspend  ann",
            f"left running   kim: {kept}",
            "n1: dry run: ...",
        ]
        assert await run("drain", "nope") == cli.EXIT_REFUSED
        assert "404: the cluster has no node 'nope'" in capsys.readouterr().err
        readings[:] = [[_server("ann", "suspend", "suspended", "suspended")]]
        assert await run("drain", "n1", "--json") == 0
        printed = json.loads(capsys.readouterr().out)
        assert [s["outcome"] for s in printed["result"]["servers"]] == ["suspended"]
    finally:
        server.stop()
