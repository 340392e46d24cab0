"""The per-server GPU rules end to end, on the local cluster's simulated GPU nodes: a real hub
with the hub-managed service `suspend` (its policy in dry-run mode, so only the API suspends),
real pods, the simulated DCGM exporter scraped by the cluster's real Prometheus, and the nodes'
real agents (reading this host's /proc/meminfo).

* gpu-node-2 is in legacy device mode with two GPUs: a server holding one of them is left
  running (a CUDA restore could not be guaranteed its GPU index);
* on gpu-node-1 (CDI), a server whose GPU memory in use (simulated DCGM_FI_DEV_FB_USED) is more
  than its memory limit leaves free is left running, and a Suspend answers 409; once its GPU
  memory fits, it is suspended.

The GPUs, their memory and the CUDA plugin are simulated (no CUDA checkpoint is made).
"""

from __future__ import annotations

import json

import pytest
from conftest import LEGACY_GPU_TAINT, module_hub
from test_service_e2e import (
    TOLERATION,
    call,
    metrics,
    operation_finished,
    start,
    stop,
    user_token,
)
from tornado.httpclient import AsyncHTTPClient

from jhub_suspend.suspension import server_model
from jhub_suspend.testing.waiting import wait_for

pytestmark = pytest.mark.slow

LEGACY_TOLERATION = {**LEGACY_GPU_TAINT, "operator": "Equal"}
HUB_CONFIG = f"""
c.KubeSpawner.profile_list = [
    {{
        "display_name": "One GPU, 1 GB", "slug": "gpu", "default": True,
        "kubespawner_override": {{
            "tolerations": [{TOLERATION!r}],
            "node_selector": {{"kubernetes.io/hostname": "gpu-node-1"}},
            "extra_resource_limits": {{"nvidia.com/gpu": "1"}},
            "mem_guarantee": "512M",
            "mem_limit": "1G",
        }},
    }},
    {{
        "display_name": "One of two GPUs, legacy device mode", "slug": "legacy",
        "kubespawner_override": {{
            "tolerations": [{TOLERATION!r}, {LEGACY_TOLERATION!r}],
            "node_selector": {{"kubernetes.io/hostname": "gpu-node-2"}},
            "extra_resource_limits": {{"nvidia.com/gpu": "1"}},
            "mem_guarantee": "256M",
        }},
    }},
]
"""
SERVICE_CONFIG = "\n".join(
    f"c.SuspendService.{k} = {v!r}"
    for k, v in {
        "dry_run": True,
        "cycle_interval": 3,
        "query_step": 2,
        "rate_window": 6,
        "max_metrics_age": 20,
        "gpu_capability_ttl": 3,
    }.items()
)
GIB = 1 << 30


hub = module_hub(extra_config=HUB_CONFIG, service_config=SERVICE_CONFIG, wait_healthy=True)


async def set_fb_used(cluster, node: str, gpu: int, mib: float) -> None:
    """Set a simulated GPU's framebuffer memory in use (DCGM_FI_DEV_FB_USED, MiB)."""
    k = cluster.kubelet(node)
    await AsyncHTTPClient().fetch(
        f"http://{k.address}:{k.port}/debug/gpus/{gpu}",
        method="PUT",
        headers={"Authorization": f"Bearer {cluster.admin_token}"},
        body=json.dumps({"fb_used_mib": mib}),
    )


async def listed(hub) -> dict[str, dict]:
    status, listing = await call(hub, "GET", "api/servers", hub.service_token)
    assert status == 200, listing
    return {s["user"]: s for s in listing["servers"]}


async def test_gpu_servers_are_left_running_unless_restore_and_staging_are_safe(hub, api, cluster):
    admin = hub.service_token
    await start(api, "leg", profile="legacy")
    await start(api, "fit", profile="gpu")
    await set_fb_used(cluster, "gpu-node-1", 0, 2048)  # 2 GiB: more than the 1 GB limit holds
    try:

        async def both_refused():
            servers = await listed(hub)
            leg, fit = (servers.get(u, {}).get("gpu_capability") for u in ("leg", "fit"))
            if leg and fit and "memory limit" in fit["reason"]:
                return servers
            return False

        servers = await wait_for(both_refused, "the GPU verdicts never showed", 90)
        leg, fit = servers["leg"], servers["fit"]
        assert leg["node"] == "gpu-node-2" and fit["node"] == "gpu-node-1"
        cap = leg["gpu_capability"]
        assert (cap["capable"], cap["device_mode"], cap["simulated"]) == (False, "legacy", True)
        assert cap["reason"].startswith("it holds 1 of node gpu-node-2's 2 GPUs in legacy")
        assert "CDI device mode removes this limit" in cap["reason"]
        cap = fit["gpu_capability"]
        assert (cap["capable"], cap["device_mode"]) == (False, "cdi")
        assert "staging its 2.0 GiB of GPU memory" in cap["reason"], cap
        assert "OOM-killed" in cap["reason"]
        # the estimate: its working set plus the GPU memory the checkpoint would stage
        assert 2 * GIB < fit["estimated_checkpoint_bytes"] < 3 * GIB
        assert 0 < leg["estimated_checkpoint_bytes"] < GIB  # its GPU memory: 0 MiB

        status, plan = await call(hub, "GET", "api/plan?fresh=1", admin)
        assert status == 200, plan
        reasons = {d["user"]: d["reasons"][0] for d in plan["decisions"]}
        assert reasons["leg"].startswith("GPU server left running: it holds 1 of node gpu-node-2")
        assert reasons["fit"].startswith("GPU server left running: staging its 2.0 GiB")

        # the user's Suspend, and an admin's, answer 409 with the reason; nothing is touched
        token = await user_token(api, "fit")
        status, body = await call(hub, "POST", "api/servers/fit/suspend", token)
        assert status == 409, body
        assert body["message"].startswith("fit is left running: staging its 2.0 GiB")
        status, body = await call(hub, "POST", "api/servers/leg/suspend", admin)
        assert status == 409, body
        assert "legacy device mode" in body["message"]
        assert (await api.server("fit") or {}).get("ready")

        # once its GPU memory fits in what the limit leaves, it is suspended
        await set_fb_used(cluster, "gpu-node-1", 0, 64)

        async def fits():
            cap = (await listed(hub))["fit"]["gpu_capability"]
            return cap if cap and cap["capable"] else False

        cap = await wait_for(fits, "the server's GPU memory never fitted", 60)
        assert "its 64 MiB of GPU memory fits in host memory to stage" in cap["reason"]
        status, body = await call(hub, "POST", "api/servers/fit/suspend", token)
        assert status == 202, body
        op = await operation_finished(hub, body, token, "suspension", 180)
        assert op["status"] == "succeeded", json.dumps(op)
        model = await server_model(api.request, "fit")
        ck = (model["state"] or {})["jhub_suspend"]["checkpoint"]
        assert not model.get("ready") and ck["status"] == "suspended"
        assert (await api.server("leg") or {}).get("ready")

        async def gpu_hours_accrued():  # from the first cycle after one that saw it suspended
            m = await metrics(hub)
            return m if m["jhub_suspend_reclaimed_gpu_seconds_total"] > 0 else False

        m = await wait_for(gpu_hours_accrued, "no GPU-seconds reclaimed were ever counted", 30)
        assert m["jhub_suspend_reclaimed_gpus"] == 1
    finally:
        await set_fb_used(cluster, "gpu-node-1", 0, 0)
        await stop(api, "leg")
        await stop(api, "fit")
