"""The suspend service's pieces without a cluster: translation of hub and pod data, settings,
the Prometheus reader's fail-safe on bad answers, hub pagination, loop supervision, the CLI and
the benchmark's smoke run."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets import TraitError
from traitlets.config import Config

from jhub_suspend import promql
from jhub_suspend.policy import Decision, MetricsHealth, Plan, PolicyConfig, Resources, decide
from jhub_suspend.service import SuspendService, cli, observe
from jhub_suspend.service.hubclient import HubClient
from jhub_suspend.service.loop import PolicyLoop
from jhub_suspend.service.prom import MetricsUnavailable, PrometheusReader
from jhub_suspend.service.snapshot import Snapshot
from jhub_suspend.testing import fakes
from jhub_suspend.testing.waiting import wait_for

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def service(**settings) -> SuspendService:
    return fakes.configured_service(**settings)


# ---- observe ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [("500m", 0.5), ("2", 2.0), ("1.5", 1.5), ("bad", 0.0), ("-1", 0.0), ("1e999999999", 0.0)],
)
def test_unreadable_requests_count_as_none(text, value):
    pod = {"spec": {"containers": [{"resources": {"requests": {"cpu": text}}}]}}
    assert observe.pod_requests(pod, ()).cpu == pytest.approx(value)


def test_pod_requests_count_gpu_limits():
    pod = fakes.synthetic_pods(1)[0]
    assert observe.pod_requests(pod, {"nvidia.com/gpu"}) == Resources(0.5, 512e6, 1.0)


def _server(ready=False, pending=None, status=None, last_error=None):
    ck = fakes.checkpoint_record(status) if status else None
    return {
        "ready": ready,
        "pending": pending,
        "state": {"jhub_suspend": {"checkpoint": ck, "last_error": last_error}},
    }


RESTORE_FAILED = {"operation": "restore", "message": "m", "time": "2026-01-01T12:00:00Z"}
MARKED = {"metadata": {"annotations": {"jhub-suspend.jupyter.org/suspend-requested": "idle"}}}


@pytest.mark.parametrize(
    "server, pod, kwargs, state",
    [
        (_server(ready=True), {}, {}, "running"),
        (_server(ready=True), MARKED, {}, "suspending"),
        (_server(pending="stop"), MARKED, {}, "suspending"),
        (_server(pending="stop"), {}, {}, "stopping"),
        (_server(status="suspended"), None, {}, "suspended"),
        (_server(status="suspended"), None, {"discarded": True}, "stopped"),
        (_server(pending="spawn", status="suspended"), None, {}, "restoring"),
        (_server(pending="spawn"), None, {}, "starting"),
        (_server(status="restore_failed"), None, {}, "failed"),
        (_server(last_error=RESTORE_FAILED), None, {}, "failed"),
        (_server(), None, {}, "stopped"),
        (_server(ready=True), {}, {"operation": "suspend"}, "suspending"),
        (_server(status="suspended"), None, {"operation": "resume"}, "restoring"),
        # A restore the hub's restart interrupted: stopped, and the next start tries again.
        (_server(status="restoring"), None, {}, "suspended"),
        (_server(pending="spawn", status="restoring"), None, {}, "restoring"),
        (_server(status="restoring"), None, {"discarded": True}, "stopped"),
    ],
)
def test_server_states(server, pod, kwargs, state):
    assert observe.server_state(server, pod, **kwargs) == state


def _view(server, pod):
    (view,) = observe.build_views(
        [{"name": "u", "servers": {"": {**server, "state": {**server["state"], "pod_name": "p"}}}}],
        {("default", "p"): pod} if pod is not None else {},
        default_namespace="default",
        gpu_resources=set(),
    )
    return view


RUNNING_POD = {"metadata": {"name": "p"}, "status": {"phase": "Running"}}
FAILED_SUSPENSION = {
    "operation": "suspend",
    "message": "Suspending failed, keeps running",
    "time": "2026-01-01T12:00:00Z",
}


def test_a_stopped_server_whose_pod_kept_running_is_locked_out():
    """Its suspension failed and whoever asked died before starting it again (issue 10's
    fault matrix): the service hands it back."""
    assert _view(_server(last_error=FAILED_SUSPENSION), RUNNING_POD).locked_out
    # Not when the pod is gone or going, the hub runs it, or another operation failed.
    assert not _view(_server(last_error=FAILED_SUSPENSION), None).locked_out
    deleting = {**RUNNING_POD, "metadata": {"name": "p", "deletionTimestamp": "x"}}
    assert not _view(_server(last_error=FAILED_SUSPENSION), deleting).locked_out
    done = {**RUNNING_POD, "status": {"phase": "Succeeded"}}
    assert not _view(_server(last_error=FAILED_SUSPENSION), done).locked_out
    assert not _view(_server(ready=True, last_error=FAILED_SUSPENSION), RUNNING_POD).locked_out
    assert not _view(_server(last_error=RESTORE_FAILED), RUNNING_POD).locked_out


def test_a_suspension_mark_no_stop_followed_is_stale_after_the_requesters_patience():
    def marked(at):
        annotations = {"jhub-suspend.jupyter.org/suspend-requested": "idle"}
        if at is not None:
            annotations["jhub-suspend.jupyter.org/suspend-requested-at"] = at
        return {**RUNNING_POD, "metadata": {"name": "p", "annotations": annotations}}

    view = _view(_server(ready=True), marked("2026-01-01T12:00:00Z"))
    assert view.state == "suspending"
    assert not view.stale_mark(NOW.replace(hour=12, minute=10), patience=900)
    assert view.stale_mark(NOW.replace(hour=12, minute=16), patience=900)
    # An undated mark (set by hand) is never taken for stale; a stop in progress is not one.
    undated = _view(_server(ready=True), marked(None))
    assert not undated.stale_mark(NOW.replace(hour=23), patience=900)
    stopping = _view(_server(pending="stop"), marked("2026-01-01T12:00:00Z"))
    assert not stopping.stale_mark(NOW.replace(hour=23), patience=900)


def test_keep_running_round_trip():
    patch = observe.keep_running_annotations(True, NOW, 2)
    kr = observe.keep_running_of({"metadata": {"annotations": patch}})
    assert kr is not None and kr.since == NOW and kr.until == NOW + timedelta(hours=2)
    forever = observe.keep_running_annotations(True, NOW, None)
    assert observe.keep_running_of({"metadata": {"annotations": forever}}).until is None
    cleared = observe.keep_running_annotations(False, NOW, None)
    assert set(cleared.values()) == {None}


def test_pending_pods_come_from_the_scheduler_message():
    pod = {
        "metadata": {"name": "w", "namespace": "ns"},
        "spec": {
            "nodeSelector": {"a": "b"},
            "containers": [{"resources": {"requests": {"cpu": "2"}}}],
        },
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/2 nodes are available: 1 Insufficient cpu, 1 Insufficient nvidia.com/gpu.",
                }
            ],
        },
    }
    waiting = {**pod, "status": {"phase": "Pending"}}  # not yet tried: not unschedulable
    (p,) = observe.pending_pods([pod, waiting], {"nvidia.com/gpu"})
    assert p.full_name == "ns/w" and p.reasons == {"cpu", "nvidia.com/gpu"}
    assert p.requests.cpu == 2 and p.node_selector == {"a": "b"}


def test_views_join_hub_servers_to_pods():
    users = fakes.synthetic_users(3, NOW)
    users[1]["servers"][""].update(ready=False, state={"pod_name": "jupyter-user00001"})
    pods = {("default", p["metadata"]["name"]): p for p in fakes.synthetic_pods(3)}
    del pods[("default", "jupyter-user00001")]
    known = {("default", "jupyter-user00001"): Resources(cpu=0.5)}
    views = observe.build_views(
        users, pods, default_namespace="default", gpu_resources={"nvidia.com/gpu"},
        known_requests=known,
    )  # fmt: skip
    assert [v.state for v in views] == ["running", "stopped", "running"]
    assert views[0].requests.gpu == 1 and views[0].node == "node-0"
    assert views[1].requests == Resources(cpu=0.5)  # remembered from an earlier cycle
    assert views[0].observation().last_activity == NOW


# ---- settings --------------------------------------------------------------------------------


def test_policy_settings_become_one_policy_config():
    svc = service(cpu_threshold=0.1, exempt_users={"ann"}, dry_run=True, max_keep_running=None)
    cfg = svc.policy_config
    assert isinstance(cfg, PolicyConfig)
    assert cfg.cpu_threshold == 0.1 and cfg.exempt_users == {"ann"} and cfg.dry_run
    assert cfg.max_keep_running is None
    assert set(cfg.to_dict()) == {
        name for name in PolicyConfig.__dataclass_fields__
    }  # every field has a trait
    for name in PolicyConfig.__dataclass_fields__:
        trait = SuspendService.class_traits()[name]
        assert trait.metadata.get("config") and trait.help


def _doc_default(text: str) -> object:
    """A default as docs/service.md writes it: ``3600 s``, ``7 days; None: no cap``, ..."""
    text = " ".join(text.split()).split(";")[0]
    if text == "empty":
        return frozenset()
    if text in ("True", "False"):
        return text == "True"
    if m := re.fullmatch(r"([\d.]+) days", text):
        return float(m[1]) * 86400
    if m := re.fullmatch(r"([\d.]+)(?: s| %)?", text):
        return float(m[1])
    if text.startswith("{"):
        return frozenset(ast.literal_eval(text))
    return {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)", text)}


def test_the_policys_defaults_are_policy_configs_in_the_service_and_its_docs():
    """One source: the service's settings take their defaults from PolicyConfig, and
    docs/service.md (which lists them in brackets) agrees."""
    defaults = PolicyConfig()
    svc = SuspendService()
    for name in PolicyConfig.__dataclass_fields__:
        value = getattr(defaults, name)
        assert getattr(svc, name) == (dict(value) if name == "waste_weights" else value), name
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "service.md")) as f:
        doc = f.read()
    policy = doc[doc.index("Policy (each maps") : doc.index("**No automatic suspension")]
    documented = {}
    for names, text in re.findall(r"((?:`\w+`,? )+)\[([^\]]*)\]", policy):
        for name in re.findall(r"`(\w+)`", names):
            documented[name] = _doc_default(text)
    assert set(documented) == set(PolicyConfig.__dataclass_fields__)
    for name, text_value in documented.items():
        value = getattr(defaults, name)
        assert text_value == (dict(value) if name == "waste_weights" else value), name


@pytest.mark.parametrize(
    "settings, text",
    [
        ({"cpu_threshold": 2.0}, "cpu_threshold"),
        ({"min_coverage": 0}, "min_coverage"),
        ({"waste_weights": {"disk": 1}}, "waste_weights"),
        ({"metric_names": {"nonsense": "x"}}, "unknown keys"),
        ({"metric_names": {"pod": "not a label"}}, "label name"),
    ],
)
def test_bad_settings_are_refused(settings, text):
    with pytest.raises(TraitError, match=text):
        service(**settings)


def test_prometheus_url_is_required():
    with pytest.raises(TraitError, match="prometheus_url"):
        SuspendService(config=Config()).prepare()


def test_queries_are_constant_and_use_the_configured_names():
    svc = service(metric_names={"gpu_pod": "exported_pod"}, pod_regex="nb-.*")
    texts = svc.queries.all()
    assert len(texts) == 10  # the GPU window differs from the CPU window by default
    assert 'pod=~"nb-.*"' in texts["cpu_max"] and "exported_pod" in texts["gpu_max"]


# ---- Prometheus ------------------------------------------------------------------------------


async def test_the_reader_parses_signals_and_counts_queries():
    keys = [("default", "jupyter-a"), ("default", "jupyter-b")]
    prom = fakes.FakePrometheus(keys, gpu_pods=keys[:1])
    prom.start()
    reader = PrometheusReader(prom.url, timeout=5)
    try:
        svc = service()
        r = await reader.read(svc.queries, svc.names, NOW.timestamp())
        assert r.queries == 9 == prom.queries
        assert r.cpu[keys[0]].max_value == 0.01 and r.cpu[keys[0]].samples == 60
        assert set(r.gpu) == {keys[0]} and r.ages["cpu"] == 3
        assert r.gpu_memory == {keys[0]: 0.0}  # the GPU pods' framebuffer memory in use
        prom.malformed = True
        with pytest.raises(MetricsUnavailable) as err:
            await reader.read(svc.queries, svc.names, NOW.timestamp())
        assert err.value.category == "malformed"
    finally:
        reader.close()
        prom.stop()


async def test_a_range_query_gives_json_safe_points():
    """The admin charts' series: Prometheus writes NaN and Inf as strings, which JSON cannot
    carry as numbers; they become None."""

    class Range(web.RequestHandler):
        def get(self) -> None:
            assert self.get_argument("query") == "up" and self.get_argument("step") == "15"
            values = [[100, "1.5"], [115, "NaN"], [130, "+Inf"]]
            self.finish({"status": "success", "data": {"resultType": "matrix",
                         "result": [{"metric": {}, "values": values}]}})  # fmt: skip

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(web.Application([(r"/api/v1/query_range", Range)]))
    server.add_sockets(sockets)
    reader = PrometheusReader(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", timeout=5)
    try:
        points = await reader.query_range("up", 100, 130, 15)
        assert points == [[100.0, 1.5], [115.0, None], [130.0, None]]
        assert json.loads(json.dumps(points, allow_nan=False)) == points
        assert reader.queries_total == 0
    finally:
        reader.close()
        server.stop()


async def test_an_unreachable_prometheus_is_reported_as_such():
    reader = PrometheusReader("http://127.0.0.1:9", timeout=2)
    try:
        with pytest.raises(MetricsUnavailable) as err:
            await reader.query("cpu_max", "up")
        assert err.value.category == "unreachable"
    finally:
        reader.close()


# ---- hub -------------------------------------------------------------------------------------


async def test_hub_users_are_read_page_by_page():
    hub = fakes.FakeHub(fakes.synthetic_users(450, NOW), max_limit=100)
    hub.start()
    try:
        client = HubClient(hub.url, "token", page_size=200)
        users, pages = await client.users()
        assert len(users) == 450 and pages == 5 == hub.requests
        assert len({u["name"] for u in users}) == 450
    finally:
        hub.stop()


async def test_hub_reads_are_retried_on_a_proxy_error():
    calls = []

    class Flaky(web.RequestHandler):
        def get(self):
            calls.append(1)
            if len(calls) < 3:
                raise web.HTTPError(503)
            self.finish(json.dumps({"name": "ann"}))

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(web.Application([(r"/hub/api/users/ann", Flaky)]))
    server.add_sockets(sockets)
    try:
        client = HubClient(f"http://127.0.0.1:{sockets[0].getsockname()[1]}/hub/api", "t")
        assert (await client.request("GET", "users/ann"))["name"] == "ann"
        assert len(calls) == 3
    finally:
        server.stop()


# ---- the loop --------------------------------------------------------------------------------


async def test_a_failing_cycle_is_logged_and_the_loop_goes_on():
    svc = service(cycle_interval=0.05)
    svc.loop = PolicyLoop(svc)
    attempts = []

    async def broken():
        attempts.append(1)
        raise RuntimeError("hub exploded")

    svc.loop.observe = broken  # type: ignore[method-assign]
    svc.loop.start()
    try:
        await _until(lambda: len(attempts) >= 3)
    finally:
        await svc.loop.stop()
    assert "hub exploded" in svc.loop.health.last_error
    assert svc.metrics.cycles.labels("error")._value.get() >= 3


async def test_a_dead_loop_task_is_restarted():
    svc = service(cycle_interval=0.05)
    svc.loop = PolicyLoop(svc)
    runs = []
    real_run = svc.loop._run

    async def dies_once():
        runs.append(1)
        if len(runs) == 1:
            raise SystemError("bug outside the cycle")
        await real_run()

    svc.loop._run = dies_once  # type: ignore[method-assign]
    svc.loop.observe = _never  # type: ignore[method-assign]
    svc.loop.start()
    try:
        await _until(lambda: len(runs) >= 2)
    finally:
        await svc.loop.stop()
    assert svc.loop.health.restarts == 1


async def _never():
    raise RuntimeError("not in this test")


async def _until(predicate):
    await wait_for(predicate, "the loop never got there", 10, max_wait=0.1)


# ---- CLI -------------------------------------------------------------------------------------


def test_cli_exit_codes_and_messages(capsys):
    assert cli.main(["--url", "http://127.0.0.1:9/services/suspend/", "--token", "t", "list"]) == 3
    assert "cannot reach" in capsys.readouterr().err
    assert cli.main(["--url", "", "--token", "t", "list"]) == 2
    assert cli.main(["--url", "http://x/", "--token", "t", "suspend", "a/b/c"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])


async def test_cli_against_a_service(capsys):
    seen = []

    class Api(web.RequestHandler):
        def prepare(self):
            seen.append((self.request.method, self.request.path, self.request.body))
            if self.request.headers.get("Authorization") != "token good":
                raise web.HTTPError(401)

        def write_error(self, status_code, **kwargs):
            self.finish(json.dumps({"message": "bad token"}))

        def get(self, path):
            self.finish(
                json.dumps(
                    {
                        "metrics": {"ok": True, "reason": ""},
                        "servers": [
                            {
                                "user": "ann", "server_name": "", "state": "running",
                                "utilisation": {"cpu_percent_of_request": {"max": 1.5}},
                                "idle_seconds": 600, "checkpoint": None, "decision": None,
                            }
                        ],
                    }
                )
            )  # fmt: skip

        def delete(self, path):
            self.finish(json.dumps({"message": "discarded; the next start is a fresh server"}))

    server, base = fakes.serve(web.Application([(r"/services/suspend/(.*)", Api)]))
    url = f"{base}/services/suspend/"
    loop = asyncio.get_running_loop()

    def run(*args):
        return loop.run_in_executor(None, cli.main, ["--url", url, *args])

    try:
        assert await run("--token", "good", "list") == 0
        out = capsys.readouterr().out
        assert "ann" in out and "running" in out and "1.5" in out
        assert await run("--token", "good", "discard", "ann/lab") == 0
        assert seen[-1][:2] == ("DELETE", "/services/suspend/api/servers/ann/lab/checkpoint")
        assert await run("--token", "bad", "list") == 1
        assert "401: bad token" in capsys.readouterr().err
    finally:
        server.stop()


# ---- benchmark smoke -------------------------------------------------------------------------


async def test_the_benchmark_runs(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    try:
        import policy_cycle
    finally:
        sys.path.pop(0)
    out = tmp_path / "r.json"
    report = await policy_cycle.run([20], 1, str(out))
    (r,) = report["results"]
    assert r["servers"] == 20 and r["prometheus_queries_per_cycle"] == 9
    assert r["hub_pages_per_cycle"] == 1
    assert json.loads(out.read_text())["benchmark"] == "policy_cycle"


def test_promql_names_default():
    assert promql.MetricNames().pod == "pod"


def test_agent_client_uses_the_tls_settings():
    svc = service(
        agent_url="https://agents.jhub-suspend-system:9771",
        agent_urls={"node-a": "http://10.0.0.9:1"},
        agent_token="t0k3n",
        agent_ca_file="/ca.pem",
        agent_client_cert="/c.pem",
        agent_client_key="/k.pem",
    )
    client = svc.agent()
    assert client is not None
    assert client.base_url == "https://agents.jhub-suspend-system:9771"  # before agent_urls
    assert (client.ca_file, client.client_cert, client.client_key) == (
        "/ca.pem",
        "/c.pem",
        "/k.pem",
    )
    assert "t0k3n" not in repr(client)
    assert service(agent_urls={}).agent() is None


def test_the_services_renamed_settings_still_work(capsys):
    svc = service(checkpoint_retention=3600, restore_timeout=30)
    assert svc.used_checkpoint_retention == 3600
    assert svc.resume_timeout == 30
    # the Application's own log handler writes to stderr
    assert "SuspendService.restore_timeout is deprecated" in capsys.readouterr().err
    defaults = service()
    assert (defaults.used_checkpoint_retention, defaults.resume_timeout) == (86400, 600)
    # 0, the old traits' default, is a value like any other ("sweep at once")
    assert service(checkpoint_retention=0).used_checkpoint_retention == 0


def test_warnings_keep_their_first_time_until_the_server_is_kept():
    from jhub_suspend.service.loop import warnings_in_force

    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

    def plan(**actions):
        decisions = tuple(Decision(u, "", a, (), 0.0) for u, a in actions.items())
        return Plan(t0, False, MetricsHealth(True), decisions, ())

    first = warnings_in_force({}, plan(alice="warn", bob="keep"), t0)
    assert first == {("alice", ""): t0}
    later = t0 + timedelta(minutes=5)
    # still warned, or now eligible: the warning's first time stays
    assert warnings_in_force(first, plan(alice="warn"), later) == {("alice", ""): t0}
    assert warnings_in_force(first, plan(alice="suspend"), later) == {("alice", ""): t0}
    # used again (kept), or gone: the next warning starts anew
    assert warnings_in_force(first, plan(alice="keep"), later) == {}
    assert warnings_in_force(first, plan(), later) == {}


# ---- the decide hook -------------------------------------------------------------------------


def suspend_everyone(observations, pending, config, now, metrics, in_flight=0, node_labels=None):
    """A decide_hook that suspends every server it sees, and claims not to be a dry run."""
    decisions = tuple(
        Decision(o.user, o.server_name, "suspend", ("hook",), 0.0) for o in observations
    )
    return Plan(now, False, metrics, decisions, decisions)


async def test_a_decide_hook_replaces_the_decision_but_not_the_safety_rules():
    users = fakes.synthetic_users(3, NOW)
    pods = fakes.synthetic_pods(3)
    keys = [("default", p["metadata"]["name"]) for p in pods]
    hub, prom = fakes.FakeHub(users), fakes.FakePrometheus(keys)
    hub.start()
    prom.start()
    started: list[str] = []

    async def run_cycle(**settings) -> None:
        svc = service(**settings)
        svc.hub = HubClient(hub.url, "t")
        svc.kube = fakes.FakeKube(pods)  # type: ignore[assignment]
        svc.prometheus = PrometheusReader(prom.url, timeout=5)
        svc.actions = SimpleNamespace(  # type: ignore[assignment]
            start_suspension=lambda user, *_: started.append(user)
        )
        svc.retention = SimpleNamespace(maybe_sweep=_nothing)  # type: ignore[assignment]
        svc.loop = PolicyLoop(svc)
        try:
            snap = await svc.loop.cycle()
        finally:
            svc.prometheus.close()
        assert [d.reasons for d in snap.plan.decisions] == [("hook",)] * 3

    try:
        await run_cycle(decide_hook=suspend_everyone)
        assert started == ["user00000", "user00001", "user00002"]
        started.clear()
        await run_cycle(decide_hook="tests.test_service_unit.suspend_everyone", dry_run=True)
        prom.malformed = True  # the metrics are unusable: the fail-safe
        await run_cycle(decide_hook=suspend_everyone)
        assert started == []
    finally:
        prom.stop()
        hub.stop()
    with pytest.raises(TraitError, match="cannot import"):
        service(decide_hook="tests.test_service_unit.no_such_hook")
    assert service().decide_hook is decide


async def _nothing(*_):
    return None


# ---- capacity reclaimed over time ------------------------------------------------------------


def test_reclaimed_gpu_and_core_hours_accrue_from_cycle_to_cycle():
    """What was suspended at one cycle counts for the whole time until the next; a cycle
    whose clock did not move (or went back) adds nothing."""
    svc = service()
    loop = PolicyLoop(svc)
    m = svc.metrics

    def cycle_at(minutes: float, *suspended: Resources) -> None:
        views = [
            observe.ServerView(f"u{i}", "", "suspended", requests=r)
            for i, r in enumerate(suspended)
        ]
        at = NOW + timedelta(minutes=minutes)
        plan = Plan(at, False, MetricsHealth(True), (), ())
        loop._record(Snapshot(at, views, plan, None, [], {}, 6, 1))

    def totals() -> tuple[float, float]:
        return m.reclaimed_gpu_seconds._value.get(), m.reclaimed_cpu_core_seconds._value.get()

    two_gpus = Resources(cpu=4, memory=0, gpu=2)
    cycle_at(0, two_gpus)
    assert totals() == (0, 0)  # nothing known before the first cycle
    cycle_at(10, two_gpus, Resources(cpu=1))
    assert totals() == (2 * 600, 4 * 600)
    cycle_at(10)  # the clock did not move
    cycle_at(5)  # nor forward
    assert totals() == (2 * 600, 4 * 600)
    cycle_at(40)  # both were suspended at minute 10, nothing since
    assert totals() == (2 * 600 + 2 * 1800, 4 * 600 + 5 * 1800)
    cycle_at(70)
    assert totals() == (2 * 600 + 2 * 1800, 4 * 600 + 5 * 1800)
