"""The suspend service end to end: a real hub running the hub-managed service `suspend`, real
pods on the local cluster, and the cluster's real Prometheus scraping their CPU and GPU.

Windows are short (20 s, sampled every 2 s) so the policy can be watched deciding. Two kinds of
service instance are used:

* the hub-managed one (``hub.service_url``), whose loop really suspends idle servers; it
  exempts the group ``pinned`` so it leaves the other tests' servers alone;
* in-process ``SuspendService`` instances in dry-run mode, reading the same hub, cluster and
  Prometheus, whose ``loop.observe()`` shows the plan at a chosen moment (GPU thresholds,
  exemptions, keep-running, capacity pressure, fail-safe).

The REST API is also fuzzed with schemathesis, from the OpenAPI description the hub-managed
service publishes (``test_fuzzing_...``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
import time
from typing import Any

import pytest
import schemathesis
from conftest import module_hub
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets.config import Config

from jhub_suspend import images
from jhub_suspend.kubevalues import rfc3339
from jhub_suspend.localcluster.services import PrometheusProcess, free_port
from jhub_suspend.service import SuspendService
from jhub_suspend.suspension import server_model
from jhub_suspend.testing.hubapi import HubAPI
from jhub_suspend.testing.kernel import KernelClient
from jhub_suspend.testing.waiting import wait_for

pytestmark = pytest.mark.slow

PINNED = ["gus", "kim", "eve", "cy", "fay", "rex", "lou", "zed", "ola", "dot", "mo"]
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
WINDOWS = {
    "idle_window": 20,
    "gpu_idle_window": 20,
    "query_step": 2,
    "rate_window": 6,
    "activity_timeout": 8,
    "gpu_activity_timeout": 8,
    "min_coverage": 0.7,
    "max_metrics_age": 20,
    "warn_before": 0,
}
HUB_CONFIG = f"""
c.JupyterHub.load_groups = {{"pinned": {{"users": {PINNED!r}}}}}
c.KubeSpawner.profile_list = [
    {{
        "display_name": "CPU", "slug": "cpu", "default": True,
        "kubespawner_override": {{"node_selector": {{"kubernetes.io/hostname": "node-1"}}}},
    }},
    {{
        "display_name": "CPU, keeping used checkpoints", "slug": "keep",
        "kubespawner_override": {{
            "node_selector": {{"kubernetes.io/hostname": "node-1"}},
            "keep_used_checkpoints": True,
        }},
    }},
    {{
        "display_name": "CPU on the GPU node", "slug": "gpunode",
        "kubespawner_override": {{
            "tolerations": [{TOLERATION!r}],
            "node_selector": {{"kubernetes.io/hostname": "gpu-node-1"}},
        }},
    }},
    {{
        "display_name": "One GPU", "slug": "gpu",
        "kubespawner_override": {{
            "tolerations": [{TOLERATION!r}],
            "extra_resource_limits": {{"nvidia.com/gpu": "1"}},
        }},
    }},
]
"""
SERVICE_CONFIG = "\n".join(
    [f"c.SuspendService.{k} = {v!r}" for k, v in WINDOWS.items()]
    + ["c.SuspendService.cycle_interval = 3", 'c.SuspendService.exempt_groups = {"pinned"}']
)


# ---- fixtures and helpers --------------------------------------------------------------------


hub = module_hub(extra_config=HUB_CONFIG, service_config=SERVICE_CONFIG, wait_healthy=True)


async def call(
    hub,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
    base: str | None = None,
) -> tuple[int, Any]:
    """A request to the suspend service (through the hub's proxy, or at ``base``): (status,
    JSON or text)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"token {token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is None and method in ("POST", "PUT"):
        data = b""
    resp = await AsyncHTTPClient().fetch(
        HTTPRequest(
            (base or hub.service_url) + path,
            method=method,
            headers=headers,
            body=data,
            allow_nonstandard_methods=True,
            follow_redirects=False,
            request_timeout=60,
        ),
        raise_error=False,
    )
    text = resp.body.decode() if resp.body else ""
    try:
        return resp.code, json.loads(text) if text else None
    except ValueError:
        return resp.code, text


async def operation_finished(
    hub, accepted: Any, token: str, what: str, timeout: float = 150, base: str | None = None
) -> dict:
    """Wait until the operation a 202 answer (``accepted``) started is over; return it."""
    path = accepted["status_url"].split("/services/suspend/", 1)[1]

    async def finished():
        status, op = await call(hub, "GET", path, token, base=base)
        assert status == 200, op
        return op if op["status"] != "running" else False

    return await wait_for(finished, f"the {what} never finished", timeout)


async def user_token(api: HubAPI, user: str) -> str:
    await api.ensure_user(user)
    return (await api.request("POST", f"users/{user}/tokens", {"note": "test"}))["token"]


async def start(api: HubAPI, user: str, name: str = "", profile: str | None = None) -> dict:
    await api.ensure_user(user)
    path = f"users/{user}/servers/{name}" if name else f"users/{user}/server"
    await api.request("POST", path, {"profile": profile} if profile else None)

    async def ready():
        s = await api.server(user, name)
        return s if s and s.get("ready") else False

    return await wait_for(ready, f"{user}/{name} never became ready", 120)


async def stop(api: HubAPI, user: str, name: str = "") -> None:
    if await api.server(user, name):
        await api.stop_server(user, name)


def ours(server: dict) -> dict:
    return (server.get("state") or {}).get("jhub_suspend") or {}


def server_url(hub, user, name=""):
    return f"{hub.url}/user/{user}/{name + '/' if name else ''}"


async def metrics(hub) -> dict[str, float]:
    """The service's metrics, keyed ``name{label="value",...}`` with labels sorted by name."""
    status, text = await call(hub, "GET", "metrics")
    assert status == 200
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            name, _, labels = key.partition("{")
            if labels:
                pairs = sorted(re.findall(r'(\w+)="([^"]*)"', labels))
                name += "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}"
            out[name] = float(value)
    return out


async def local_service(cluster, hub, **settings) -> SuspendService:
    """An in-process service on the same hub, cluster and Prometheus (dry run by default)."""
    cfg = Config()
    values = {
        "prometheus_url": cluster.prometheus_url,
        "hub_api_url": hub.api_url,
        "hub_api_token": hub.service_token,
        "kubeconfig": cluster.kubeconfig_path,
        "namespace": "default",
        "checkpoint_repository": cluster.checkpoint_repository,
        "agent_urls": dict(cluster.agent_urls),
        "agent_token": cluster.agent_token,
        "dry_run": True,
        **WINDOWS,
        **settings,
    }
    for k, v in values.items():
        setattr(cfg.SuspendService, k, v)
    svc = SuspendService(config=cfg)
    await svc.setup()
    return svc


async def plan_when(svc: SuspendService, predicate, message: str, timeout: float = 90):
    """Observe (no acting) until ``predicate(snapshot)`` holds; return that snapshot."""

    last = []

    async def check():
        snap = await svc.loop.observe(record=False)
        last[:] = [snap]
        return snap if predicate(snap) else False

    try:
        return await wait_for(check, message, timeout)
    except TimeoutError:
        plan = last[0].plan.to_dict() if last else None
        raise AssertionError(f"{message}; last plan: {json.dumps(plan, indent=1)}") from None


def decision(snap, user, name=""):
    return snap.decisions.get((user, name))


def eligible(d) -> bool:
    """Suspended this cycle, or eligible but held back by the per-cycle limit."""
    return d is not None and (d.action == "suspend" or says(d, "suspension limit reached"))


def says(d, text: str) -> bool:
    return d is not None and any(text in r for r in d.reasons)


async def set_gpu(cluster, utilization: float) -> None:
    k = cluster.kubelet("gpu-node-1")
    await AsyncHTTPClient().fetch(
        f"http://{k.address}:{k.port}/debug/gpus/0",
        method="PUT",
        headers={"Authorization": f"Bearer {cluster.admin_token}"},
        body=json.dumps({"utilization": utilization}),
    )


# ---- the stories -----------------------------------------------------------------------------


async def test_the_loop_suspends_an_idle_server_and_keeps_a_busy_one(hub, api):
    # The busy server starts first, so its kernel burns CPU before any window could be idle.
    await start(api, "bea")
    busy = KernelClient(server_url(hub, "bea"), hub.service_token)
    await busy.start()
    await busy.execute(
        "import threading\n"
        "def _spin():\n    while True:\n        pass\n"
        "threading.Thread(target=_spin, daemon=True).start()"
    )
    await start(api, "ida")

    async def suspended():
        s = await server_model(api.request, "ida")
        ck = ours(s or {}).get("checkpoint") or {}
        return s if s and not s.get("ready") and ck.get("status") == "suspended" else False

    after = await wait_for(suspended, "the idle server was never suspended", 150)
    assert ours(after)["checkpoint"]["reason"] == "idle"
    bea = await api.server("bea")
    assert bea and bea.get("ready"), "the busy server was suspended"

    admin = hub.service_token
    status, plan = await call(hub, "GET", "api/plan?fresh=1", admin)
    assert status == 200, plan
    d = next(d for d in plan["decisions"] if d["user"] == "bea")
    assert d["action"] == "keep"
    assert any("CPU reached" in r for r in d["reasons"]), d
    # constant: CPU, GPU (max+count), memory, freshness, GPU memory
    assert plan["prometheus_queries"] == 7

    async def listed():  # the last cycle's listing, with finished operations overlaid
        status, listing = await call(hub, "GET", "api/servers?state=suspended", admin)
        assert status == 200, listing
        return [s for s in listing["servers"] if s["user"] == "ida"]

    (ida,) = await wait_for(listed, "the suspended server was never listed", 30)
    assert ida["checkpoint"]["size"] > 1_000_000 and ida["checkpoint"]["created"]
    assert ida["requests"]["cpu"] == 0.5

    async def gauges_updated():  # the gauges are set by the next cycle
        m = await metrics(hub)
        return m if m["jhub_suspend_servers_suspended"] >= 1 else False

    m = await wait_for(gauges_updated, "the suspended-servers gauge was never updated", 30)
    assert m['jhub_suspend_suspensions_total{outcome="success",reason="idle"}'] >= 1
    assert m["jhub_suspend_reclaimed_cpu_cores"] >= 0.5
    assert m["jhub_suspend_failsafe"] == 0
    assert m["jhub_suspend_prometheus_queries_per_cycle"] == 7

    async def core_hours_accrued():  # from the first cycle after one that saw it suspended
        m = await metrics(hub)
        return m if m["jhub_suspend_reclaimed_cpu_core_seconds_total"] > 0 else False

    m = await wait_for(core_hours_accrued, "no core-seconds reclaimed were ever counted", 30)
    assert m["jhub_suspend_reclaimed_gpu_seconds_total"] == 0  # nobody holds a GPU here
    await stop(api, "bea")


async def test_an_admin_discards_a_checkpoint_and_the_next_start_is_fresh(hub, api, cluster):
    server = await server_model(api.request, "ida")
    ck = ours(server)["checkpoint"]
    assert ck and ck["status"] == "suspended", "needs the server suspended by the loop"
    ref = f"{cluster.checkpoint_repository}/default/jupyter-ida@{ck['digest']}"
    await images.inspect(ref)

    status, body = await call(hub, "DELETE", "api/servers/ida/checkpoint", hub.service_token)
    assert status == 200, body
    assert body["image_deleted"] is True
    with pytest.raises(images.ImageNotFound):
        await images.inspect(ref)
    status, body = await call(hub, "DELETE", "api/servers/ida/checkpoint", hub.service_token)
    assert status == 409 and "already discarded" in body["message"]

    await start(api, "ida")
    server = await server_model(api.request, "ida")
    assert ours(server)["checkpoint"] is None  # started fresh; the spawner consumed the marker
    await stop(api, "ida")


async def test_gpu_thresholds_exemptions_keep_running_and_capacity_pressure(
    hub, api, cluster, core
):
    await set_gpu(cluster, 80)
    for user, profile in (("gus", "gpu"), ("kim", "gpunode"), ("eve", "gpunode"), ("cy", None)):
        await start(api, user, profile=profile)
    gus = await core.read_namespaced_pod("jupyter-gus", "default")
    assert gus.spec.node_name == "gpu-node-1"
    assert (await core.read_namespaced_pod("jupyter-cy", "default")).spec.node_name == "node-1"

    kim = await user_token(api, "kim")
    status, body = await call(
        hub, "PUT", "api/servers/kim/keep-running", kim, {"enabled": True, "hours": 2}
    )
    assert status == 200, body
    assert body["keep_running"]["until"]

    svc = await local_service(cluster, hub, exempt_users={"eve"}, max_suspensions_per_cycle=1)
    try:
        # A GPU server whose CPU is idle is kept while its GPU works (real DCGM samples).
        def cpu_idle(snap, user):
            cpu = snap.view(user, "").cpu
            return cpu is not None and cpu.coverage >= 0.7 and cpu.max_value < 0.05

        snap = await plan_when(
            svc,
            lambda s: says(decision(s, "gus"), "GPU reached 80%") and cpu_idle(s, "gus"),
            "the busy GPU never showed in the plan",
        )
        assert decision(snap, "gus").action == "keep"
        assert not says(decision(snap, "gus"), "CPU")  # the GPU alone holds it
        await set_gpu(cluster, 0)
        snap = await plan_when(
            svc,
            lambda s: (
                decision(s, "gus").action == "suspend"
                and eligible(decision(s, "cy"))
                and says(decision(s, "kim"), "CPU at most")
            ),
            "the idle GPU server never became eligible",
        )
        assert says(decision(snap, "gus"), "GPU at most 0%")
        # Exempt and opted-out servers are kept although idle.
        assert decision(snap, "eve").action == "keep"
        assert says(decision(snap, "eve"), "user eve is exempt")
        assert decision(snap, "kim").action == "keep"
        assert says(decision(snap, "kim"), "keep-running opt-out until")
        # Without anyone waiting, the most wasteful idle server goes first: the idle GPU.
        assert [d.user for d in snap.plan.to_suspend] == ["gus"]

        # A pod waits for CPU on node-1: the idle server there is the right victim.
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="waiting-big"),
            spec=client.V1PodSpec(
                termination_grace_period_seconds=0,
                node_selector={"kubernetes.io/hostname": "node-1"},
                containers=[
                    client.V1Container(
                        name="main",
                        image=cluster.images["busybox"],
                        command=["sleep", "600"],
                        resources=client.V1ResourceRequirements(requests={"cpu": "1500m"}),
                    )
                ],
            ),
        )
        await core.create_namespaced_pod("default", pod)
        try:
            snap = await plan_when(
                svc,
                lambda s: s.plan.pending >= 1 and bool(s.plan.to_suspend),
                "the Pending pod never showed in the plan",
            )
            (victim,) = snap.plan.to_suspend
            assert victim.user == "cy", snap.plan.to_dict()
            assert "default/waiting-big" in victim.frees
            assert says(decision(snap, "gus"), "limit reached")
        finally:
            await core.delete_namespaced_pod("waiting-big", "default", grace_period_seconds=0)

        # Clearing the opt-out makes the idle server eligible again.
        status, body = await call(
            hub, "PUT", "api/servers/kim/keep-running", kim, {"enabled": False}
        )
        assert status == 200 and body["keep_running"] is None
        await plan_when(
            svc,
            lambda s: eligible(decision(s, "kim")),
            "kim never became eligible after clearing keep-running",
        )
    finally:
        await svc.close()
        await set_gpu(cluster, 0)
        for user in ("gus", "eve", "cy"):
            await stop(api, user)


async def test_users_act_on_their_own_servers_only(hub, api):
    kim = await user_token(api, "kim")
    if not await api.server("kim"):
        await start(api, "kim", profile="gpunode")
    kernel = KernelClient(server_url(hub, "kim"), hub.service_token)
    await kernel.start()
    await kernel.execute("answer = 42")

    status, body = await call(hub, "GET", "api/servers", kim)
    assert status == 200
    assert {s["user"] for s in body["servers"]} == {"kim"}
    assert (await call(hub, "GET", "api/servers?user=gus", kim))[0] == 403
    assert (await call(hub, "POST", "api/servers/gus/suspend", kim))[0] == 403
    assert (await call(hub, "DELETE", "api/servers/gus/checkpoint", kim))[0] == 403
    assert (await call(hub, "PUT", "api/servers/gus/keep-running", kim, {"enabled": True}))[
        0
    ] == 403
    status, body = await call(hub, "GET", "api/plan", kim)
    assert status == 403 and "custom:jhub-suspend:admin" in body["message"]
    status, body = await call(hub, "GET", "api/policy", kim)
    assert status == 200
    assert body["policy"]["exempt_groups"] == 1  # who is exempt is not shown to users

    status, accepted = await call(hub, "POST", "api/servers/kim/suspend", kim)
    assert status == 202, accepted
    status, again = await call(hub, "POST", "api/servers/kim/suspend", kim)
    assert status == 409, again
    op = await operation_finished(hub, accepted, kim, "suspension", 120)
    assert op["status"] == "succeeded", json.dumps(op)
    assert op["result"]["checkpoint"]["size"] > 1_000_000

    status, body = await call(hub, "POST", "api/servers/kim/resume", kim)
    assert status == 202, body
    op = await operation_finished(hub, body, kim, "resume", 120)
    assert op["status"] == "succeeded", op
    assert await kernel.execute("print(answer)") == "42\n"
    status, body = await call(hub, "POST", "api/servers/kim/resume", kim)
    assert status == 409 and "already running" in body["message"]
    m = await metrics(hub)
    assert m['jhub_suspend_suspensions_total{outcome="success",reason="manual"}'] >= 1
    assert m['jhub_suspend_restores_total{outcome="success",reason="manual"}'] >= 1
    await stop(api, "kim")


async def test_authentication_and_bad_input(hub, api):
    admin = hub.service_token
    for path in ("api/servers", "api/plan", "api/policy"):
        status, body = await call(hub, "GET", path)
        assert status == 401, (path, body)
        assert "token" in body["message"]
    status, body = await call(hub, "GET", "api/servers", "not-a-token")
    assert status == 401
    status, body = await call(hub, "POST", "api/servers/kim/suspend")
    assert status == 401

    status, body = await call(hub, "GET", "api/servers?state=sleeping", admin)
    assert status == 400 and "unknown state" in body["message"]
    await api.ensure_user("kim")
    for raw, text in (
        (b"{not json", "not valid JSON"),
        (b'{"enabled": "yes"}', "enabled"),
        (b'{"enabled": true, "hours": "two"}', "hours must be a number"),
        (b'{"enabled": true, "hours": -1}', "hours must be > 0"),
        # an integer no float holds (it answered 500: math.isfinite overflowed)
        (b'{"enabled": true, "hours": 1' + b"0" * 400 + b"}", "hours must be > 0"),
        (b'{"enabled": true, "hours": NaN}', "hours must be > 0"),
        (b'{"enabled": true, "colour": "red"}', "unknown fields"),
    ):
        status, body = await call(hub, "PUT", "api/servers/kim/keep-running", admin, raw=raw)
        assert status == 400, (raw, body)
        assert text in body["message"]
        assert "Traceback" not in json.dumps(body)

    status, body = await call(hub, "POST", "api/servers/nobody-here/suspend", admin)
    assert status == 404 and "nobody-here" in body["message"]
    status, body = await call(hub, "POST", "api/servers/kim/nosuch/suspend", admin)
    assert status == 404
    status, body = await call(hub, "GET", "api/operations/ffff", admin)
    assert status == 404
    status, body = await call(hub, "GET", "api/nothing", admin)
    assert status == 404
    # kim's server is stopped and has no checkpoint
    status, body = await call(hub, "POST", "api/servers/kim/suspend", admin)
    assert status == 409 and "not running" in body["message"]
    status, body = await call(hub, "DELETE", "api/servers/kim/checkpoint", admin)
    assert status == 409 and "no checkpoint" in body["message"]
    status, body = await call(hub, "POST", "api/servers/kim/resume", admin)
    assert status == 409 and "no checkpoint" in body["message"]
    status, body = await call(hub, "GET", "api/policy", admin)
    assert status == 200 and body["policy"]["exempt_groups"] == ["pinned"]
    # the charts' range (it answered 500 for NaN: round() of a NaN step)
    for minutes in ("nan", "inf", "sixty"):
        status, body = await call(
            hub, "GET", f"api/metrics/range?series=cpu_used&minutes={minutes}", admin
        )
        assert status == 400 and "minutes must be a number" in body["message"], (minutes, body)


def _prometheus(cluster) -> PrometheusProcess:
    return next(p for p in cluster.processes if isinstance(p, PrometheusProcess))


async def test_with_prometheus_stopped_nothing_is_suspended(hub, api, cluster):
    await start(api, "fay")
    svc = await local_service(cluster, hub, dry_run=False)
    try:
        dry = await local_service(cluster, hub)
        try:
            await plan_when(
                dry,
                lambda s: decision(s, "fay") is not None and decision(s, "fay").action == "suspend",
                "the idle server never became eligible",
            )
        finally:
            await dry.close()

        old = _prometheus(cluster)
        await old.stop()
        try:
            snap = await svc.loop.cycle()  # would suspend fay if it could read the metrics
            assert not snap.plan.metrics.ok
            assert "unreachable" in snap.plan.metrics.reason
            assert snap.failsafe == "unreachable"
            assert snap.plan.to_suspend == ()
            assert svc.operations.running() == []
            assert says(decision(snap, "fay"), "fail-safe")

            async def failsafe_exported():
                m = await metrics(hub)
                return m if m["jhub_suspend_failsafe"] == 1 else False

            m = await wait_for(failsafe_exported, "the fail-safe metric was never set", 30)
            assert m['jhub_suspend_failsafe_reason{reason="unreachable"}'] == 1
            status, body = await call(hub, "GET", "api/plan", hub.service_token)
            assert status == 503 and "Prometheus" in body["message"]
            assert (await api.server("fay")).get("ready")
        finally:
            new = old.respawn()
            await new.start()
            await new.wait_ready(timeout=60)

        async def recovered():
            m = await metrics(hub)
            return m["jhub_suspend_failsafe"] == 0

        await wait_for(recovered, "the fail-safe never cleared after Prometheus came back", 60)
        text = (await call(hub, "GET", "metrics"))[1]
        assert re.search(r'jhub_suspend_policy_cycles_total\{outcome="failsafe"\} [1-9]', text)
    finally:
        await svc.close()
        await stop(api, "fay")


async def test_retention_deletes_used_images_and_discards_old_suspensions(hub, api, cluster):
    """The retention sweep against the real registry: a restored checkpoint's image (kept by
    the spawner's keep_used_checkpoints) goes once older than used_checkpoint_retention; a suspension older
    than max_suspended_age is discarded, and the next start is fresh."""
    user, admin = "rex", hub.service_token  # pinned: the module's policy loop leaves it alone
    await start(api, user, profile="keep")
    kernel = KernelClient(server_url(hub, user), admin)
    await kernel.start()
    await kernel.execute("kept = 1")

    async def act(action: str) -> dict:
        status, body = await call(hub, "POST", f"api/servers/{user}/{action}", admin)
        assert status == 202, body
        op = await operation_finished(hub, body, admin, action)
        assert op["status"] == "succeeded", op
        return ours(await server_model(api.request, user))["checkpoint"]

    def image(ck: dict) -> str:
        return f"{cluster.checkpoint_repository}/default/jupyter-{user}@{ck['digest']}"

    first = await act("suspend")
    restored = await act("resume")
    assert restored["status"] == "restored" and restored["digest"] == first["digest"]
    await images.inspect(image(first))  # kept by the spawner for the service's sweep

    svc = await local_service(
        cluster, hub, dry_run=False, used_checkpoint_retention=0, max_suspended_age=0
    )

    async def sweep() -> dict[str, int]:
        # only this user's server: the sweep must not touch the other stories' checkpoints
        snap = await svc.loop.observe(record=False)
        views = [v for v in snap.views if v.user == user]
        digests = {v.checkpoint.digest for v in views if v.checkpoint}
        markers = {d: m for d, m in snap.markers.items() if d in digests}
        return await svc.retention.sweep(dataclasses.replace(snap, views=views, markers=markers))

    try:
        assert (await sweep())["images"] == 1
        with pytest.raises(images.ImageNotFound):
            await images.inspect(image(first))
        assert (await sweep())["images"] == 0  # once

        second = await act("suspend")
        assert second["status"] == "suspended" and second["digest"] != first["digest"]
        await images.inspect(image(second))
        assert (await sweep())["discarded"] == 1
        with pytest.raises(images.ImageNotFound):
            await images.inspect(image(second))
    finally:
        await svc.close()

    await start(api, user, profile="keep")
    after = ours(await server_model(api.request, user))["checkpoint"]
    assert after is None or after["status"] == "discarded", after
    fresh = KernelClient(server_url(hub, user), admin)
    await fresh.start()
    assert await fresh.execute("print('kept' in globals())") == "False\n"
    await stop(api, user)


async def test_a_server_started_after_the_last_cycle_is_listed_and_then_listed_suspended(
    hub, api, cluster
):
    """Issue 10, defect 3: ``GET servers?user=U`` said ``[]`` right after U's server was
    suspended through the API, because the server had started after the service's last cycle
    and the listing showed only that cycle's servers. A service whose cycle never comes again
    within the test lists it all the same, in its current state."""
    user = "lou"  # pinned: the module's policy loop leaves it alone
    port = free_port()
    base = f"http://127.0.0.1:{port}/services/suspend/"
    svc = await local_service(cluster, hub, cycle_interval=3600, service_url=base)
    await svc.serve()
    try:
        await wait_for(lambda: svc.loop.snapshot is not None, "no first cycle", 60)
        assert svc.loop.snapshot is not None
        cycle = svc.loop.snapshot.time
        seen = svc.loop.snapshot.view(user, "")
        assert seen is None or seen.state != "running"  # it starts after the cycle
        await start(api, user)
        token = await user_token(api, user)

        status, body = await call(hub, "GET", f"api/servers?user={user}", token, base=base)
        assert status == 200, body
        (entry,) = body["servers"]
        assert (entry["user"], entry["server_name"], entry["state"]) == (user, "", "running")
        assert entry["pod"] == f"jupyter-{user}" and entry["node"] == "node-1"
        assert entry["decision"] is None
        assert entry["decision_note"].startswith("not yet assessed"), entry
        assert body["policy_as_of"] == rfc3339(cycle)

        status, accepted = await call(hub, "POST", f"api/servers/{user}/suspend", token, base=base)
        assert status == 202, accepted
        status, body = await call(hub, "GET", f"api/servers?user={user}", token, base=base)
        assert [s["state"] for s in body["servers"]] == ["suspending"], body
        assert body["servers"][0]["operation"]["id"] in accepted["status_url"]
        op = await operation_finished(hub, accepted, token, "suspension", base=base)
        assert op["status"] == "succeeded", op
        status, body = await call(hub, "GET", f"api/servers?user={user}", token, base=base)
        assert status == 200, body
        (entry,) = body["servers"]
        assert entry["state"] == "suspended", entry
        assert entry["checkpoint"]["digest"] == op["result"]["checkpoint"]["digest"]
        assert entry["operation"] is None and entry["decision"] is None
        status, body = await call(hub, "GET", "api/servers?state=suspended", token, base=base)
        assert [s["user"] for s in body["servers"]] == [user]
        assert svc.loop.snapshot.time == cycle  # all of it without a cycle in between
    finally:
        await svc.close()


async def jhub_suspend_cli(hub, *args: str) -> tuple[int, str, str]:
    """``jhub-suspend ARGS`` as an admin, in a process of its own: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jhub_suspend.service.cli",
        "--url", hub.service_url, "--token", hub.service_token, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_an_admin_drains_a_node_and_the_opted_out_server_is_left_with_the_reason(
    hub, api, cluster, core
):
    """Issue 12, part 2: ``jhub-suspend drain NODE`` against the hub-managed service. A dry run
    changes nothing; the drain suspends the server it may (its pod is gone, its checkpoint is
    in the registry) and leaves the one whose user opted out, saying why, and so exits 5."""
    node, opted_out = "gpu-node-1", "mo"  # pinned: the module's policy loop leaves them alone
    try:
        await asyncio.gather(
            start(api, "dot", profile="gpunode"), start(api, opted_out, profile="gpunode")
        )
        token = await user_token(api, opted_out)
        status, body = await call(
            hub, "PUT", f"api/servers/{opted_out}/keep-running", token, {"enabled": True}
        )
        assert status == 200, body
        status, body = await call(hub, "POST", f"api/nodes/{node}/drain?dry_run=true", token)
        assert status == 403 and "admin" in body["message"]
        status, body = await call(hub, "POST", "api/nodes/no-such-node/drain", hub.service_token)
        assert status == 404 and "no node 'no-such-node'" in body["message"], body

        before = await world(hub, api, core)
        code, out, err = await jhub_suspend_cli(hub, "drain", node, "--dry-run")
        assert code == 0, (out, err)
        assert out.startswith(f"drain of {node} (dry run): "), out
        assert re.search(r"^would suspend +dot$", out, re.M), out
        assert re.search(rf"^left running +{opted_out}: keep-running opt-out .*UTC", out, re.M)
        assert await world(hub, api, core) == before

        code, out, err = await jhub_suspend_cli(hub, "drain", node)
        assert code == 5, (out, err)
        lines = out.splitlines()
        kept = next(i for i, line in enumerate(lines) if line.startswith("left running"))
        done = next(i for i, line in enumerate(lines) if line.startswith("suspended"))
        assert kept < done, out  # the left one at once, the suspended one once done
        assert re.fullmatch(r"suspended +dot: checkpoint \d+ MiB in [\d.]+ s", lines[done])
        assert f"{opted_out}: keep-running opt-out" in lines[kept]
        assert lines[-1].startswith(f"{node}: suspended 1, left 1 running; 1 still on {node}")

        dot = await server_model(api.request, "dot")
        assert dot is not None and not dot.get("ready")
        ck = ours(dot)["checkpoint"]
        assert (ck["status"], ck["reason"]) == ("suspended", "drain")
        ref = f"{cluster.checkpoint_repository}/default/jupyter-dot@{ck['digest']}"
        assert (await images.inspect(ref))["digest"] == ck["digest"]
        with pytest.raises(ApiException) as gone:
            await core.read_namespaced_pod("jupyter-dot", "default")
        assert gone.value.status == 404
        assert (await api.server(opted_out) or {}).get("ready")
        pod = await core.read_namespaced_pod(f"jupyter-{opted_out}", "default")
        assert pod.spec.node_name == node and pod.metadata.deletion_timestamp is None
        m = await metrics(hub)
        assert m['jhub_suspend_suspensions_total{outcome="success",reason="drain"}'] == 1
    finally:
        await stop(api, opted_out)
        if ours(await server_model(api.request, "dot") or {}).get("checkpoint"):
            await call(hub, "DELETE", "api/servers/dot/checkpoint", hub.service_token)


# ---- fuzzing the REST API against its OpenAPI description --------------------------------------

FUZZ_EXAMPLES = 25  # per operation and caller: about a minute for all of them
CHECKS = (
    schemathesis.checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
)


async def world(hub, api: HubAPI, core) -> dict[str, Any]:
    """What a request could change, read from the hub and Kubernetes (and the operations the
    service has under way): every server's state, the pods with our annotations, the discard
    markers. Activity times are left out: reading an API may touch them."""
    servers = {}
    for user in await api.request("GET", "users?include_stopped_servers=1"):
        for name, s in (user.get("servers") or {}).items():
            ck = ours(s).get("checkpoint") or {}
            servers[f"{user['name']}/{name}"] = (
                s.get("ready"), s.get("pending"), s.get("started"),
                ck.get("digest"), ck.get("status"), json.dumps(ours(s).get("last_error")),
            )  # fmt: skip
    pods = {
        p.metadata.name: (
            p.metadata.deletion_timestamp is not None,
            {k: v for k, v in (p.metadata.annotations or {}).items() if "jhub-suspend" in k},
        )
        for p in (await core.list_namespaced_pod("default")).items
    }
    markers = sorted(
        s.metadata.name
        for s in (await core.list_namespaced_secret("default")).items
        if s.metadata.name.startswith("jhub-suspend-discard-")
    )
    status, listing = await call(hub, "GET", "api/servers", hub.service_token)
    assert status == 200, listing
    operations = {
        f"{s['user']}/{s['server_name']}": s["operation"]["id"]
        for s in listing["servers"]
        if s["operation"]
    }
    return {"servers": servers, "pods": pods, "markers": markers, "operations": operations}


class Fuzz:
    """Runs schemathesis' cases for every operation of the published description, as one
    caller at a time, in a thread (its HTTP client blocks; the hub, service and cluster run on
    the test's event loop). Collects what went wrong instead of stopping at the first."""

    def __init__(self, hub, api, core, schema, loop, owner: str) -> None:
        self.hub, self.api, self.core, self.schema, self.loop = hub, api, core, schema, loop
        self.owner = owner
        self.base_url = hub.url + "/services/suspend"
        self.failures: list[str] = []
        self.statuses: dict[str, dict[int, int]] = {}
        self.accepted: list[tuple[str, str, dict]] = []  # (caller, what, operation or answer)
        self.operation_ids: list[str] = []
        self.requests = 0
        self._world: dict | None = None

    def run_async(self, coro, timeout: float = 300) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def world(self) -> dict:
        if self._world is None:
            self._world = self.run_async(world(self.hub, self.api, self.core))
        return self._world

    def strategy(self, operation) -> st.SearchStrategy:
        """Valid and invalid cases (where anything can be invalid), a third of them on the
        owner's own server, and for ``operations/{id}`` some on the last real operation."""
        params = {p.name for p in operation.iter_parameters()}
        modes = [GenerationMode.POSITIVE]
        if params or operation.body:
            modes.append(GenerationMode.NEGATIVE)
        fixed: list[dict] = [{}]
        if "user" in params:
            fixed.append({"user": self.owner})
        if "id" in params and self.operation_ids:
            fixed.append({"id": self.operation_ids[-1]})
        return st.one_of(
            *(
                operation.as_strategy(generation_mode=mode, path_parameters=p or None)
                for p in fixed
                for mode in (modes if p else modes[:1])
            )
        )

    def check(self, case, caller: str, token: str | None) -> None:
        what = f"{caller}: {case.method} {case.formatted_path}"
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        case.headers = headers
        if token is not None:
            headers = {**headers, "Authorization": f"token {token}"}
        mutating = case.method != "GET"
        before = self.world() if mutating else None
        self.requests += 1
        try:
            response = case.call(
                base_url=self.base_url, headers=headers, timeout=60, allow_redirects=False
            )
        except Exception as e:  # the client refused to send it (e.g. a bad header)
            self.failures.append(f"{what}: not sent: {type(e).__name__}: {e}")
            return
        status = response.status_code
        by_status = self.statuses.setdefault(f"{case.method} {case.path}", {})
        by_status[status] = by_status.get(status, 0) + 1
        problems = []
        if status >= 500:
            problems.append(f"answered {status}")
        if "Traceback" in response.text:
            problems.append("a traceback in the body")
        try:
            case.validate_response(response, checks=list(CHECKS))
        except (AssertionError, BaseExceptionGroup) as e:  # one failed check, or a group
            for failure in getattr(e, "exceptions", None) or [e]:
                text = str(failure).strip() or type(failure).__name__
                problems.append(" ".join(text.split("\n\n")[:2]).replace("\n", " "))
        if problems:
            self.failures.append(
                f"{what}: {'; '.join(problems)}\n    body sent: {case.body!r:.200}\n"
                f"    answer: {status} {response.text[:300]!r}"
            )
        if not mutating:
            return
        if 200 <= status < 300:
            self.accepted.append((caller, what, response.json()))
            if status == 202:  # wait until the suspension or resume has finished
                op = response.json()["operation"]
                self.operation_ids.append(op["id"])
                done = self.run_async(self.finished(op["id"]))
                if done["status"] != "succeeded":
                    self.failures.append(f"{what}: the accepted operation failed: {done}")
            self._world = None
        else:
            self._world = None
            after = self.world()
            if after != before:
                self.failures.append(f"{what}: refused with {status}, yet it {diff(before, after)}")

    async def finished(self, op_id: str) -> dict:
        async def done():
            status, op = await call(
                self.hub, "GET", f"api/operations/{op_id}", self.hub.service_token
            )
            assert status == 200, op
            return op if op["status"] != "running" else False

        return await wait_for(done, f"operation {op_id} never finished", 180)

    def examples(self, operation, caller: str, token: str | None):
        """A Hypothesis test that sends ``operation``'s cases as ``caller``."""

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=self.strategy(operation))
        def fuzz(case) -> None:
            self.check(case, caller, token)

        return fuzz

    def run(self, callers: list[tuple[str, str | None, bool]]) -> None:
        """``callers``: (who, token, whether to send only GETs)."""
        for caller, token, read_only in callers:
            for result in self.schema.get_all_operations():
                operation = result.ok()
                if read_only and operation.method.upper() != "GET":
                    continue
                start = self.world()
                accepted = len(self.accepted)
                self.examples(operation, caller, token)()
                # GETs (and whatever was refused) changed nothing over the whole operation
                self._world = None
                if len(self.accepted) == accepted and self.world() != start:
                    self.failures.append(
                        f"{caller}: {operation.method.upper()} {operation.path}: "
                        f"{diff(start, self.world())}"
                    )


def diff(before: dict, after: dict) -> str:
    """What changed between two :func:`world` readings."""
    out = []
    for part, b in before.items():
        a = after[part]
        if isinstance(b, dict):
            for key in sorted(set(b) | set(a)):
                if b.get(key) != a.get(key):
                    out.append(f"{part} {key}: {b.get(key)!r} -> {a.get(key)!r}")
        elif b != a:
            out.append(f"{part}: {b!r} -> {a!r}")
    return "changed " + "; ".join(out) if out else "nothing changed"


async def test_fuzzing_the_api_answers_only_documented_statuses_and_refusals_change_nothing(
    hub, api, core
):
    """schemathesis against the running service, through the hub's proxy, from the description
    it publishes: as the owner of a server (who may act on it), as another user, without a
    token, and an admin's reads. Every answer is a documented 2xx or 4xx that matches its
    schema, with no traceback; a refused request changes nothing (the hub's servers, the pods'
    annotations, the discard markers, the service's operations); and the owner's notebook
    survives whatever was accepted."""
    owner, other = "zed", "ola"  # pinned: the module's policy loop leaves them alone
    await start(api, owner)
    kernel = KernelClient(server_url(hub, owner), hub.service_token)
    await kernel.start()
    await kernel.execute("fuzzed = 42")
    owner_token = await user_token(api, owner)
    callers = [
        ("owner", owner_token, False),
        ("another user", await user_token(api, other), False),
        ("no token", None, False),
        # the admins' reads too (the plan, the charts' series), which the others never reach
        ("admin", hub.service_token, True),
    ]
    status, doc = await call(hub, "GET", "api/openapi.json")  # published without a token
    assert status == 200 and doc["servers"] == [{"url": "/services/suspend"}]
    schema = schemathesis.openapi.from_dict(doc)
    fuzz = Fuzz(hub, api, core, schema, asyncio.get_running_loop(), owner)
    t0 = time.monotonic()
    await asyncio.to_thread(fuzz.run, callers)
    took = time.monotonic() - t0
    print(f"fuzzed: {fuzz.requests} requests in {took:.0f} s, {len(fuzz.accepted)} accepted")
    print(json.dumps(fuzz.statuses, indent=1))
    assert not fuzz.failures, f"{len(fuzz.failures)} problems:\n" + "\n".join(fuzz.failures)
    # the run reached the accepting paths as well as every kind of refusal
    seen = {s for by_status in fuzz.statuses.values() for s in by_status}
    assert {200, 202, 400, 401, 403, 404, 409} <= seen, seen

    # The owner's server: running, or suspended and resumed now; the kernel's state is intact
    # unless an accepted request discarded the checkpoint.
    server = await api.server(owner)
    if (
        server
        and not server.get("ready")
        and ours(await server_model(api.request, owner)).get("checkpoint")
    ):
        status, body = await call(hub, "POST", f"api/servers/{owner}/resume", owner_token)
        assert status == 202, body
        await fuzz.finished(body["operation"]["id"])
    discarded = any("checkpoint" in what for _, what, _ in fuzz.accepted)
    if not discarded:
        assert (await api.server(owner) or {}).get("ready")
        assert await kernel.execute("print(fuzzed)") == "42\n"
    await stop(api, owner)
