"""The local cluster's nodes: GPUs and their DCGM metrics, node registration, and cleanup."""

import json
import os
import signal

import pytest
from prometheus_api_client import PrometheusConnect
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from jhub_suspend.localcluster.cluster import LocalCluster
from jhub_suspend.localcluster.containerd import _shim_pids
from jhub_suspend.testing.waiting import wait_for, wait_gone, wait_running

pytestmark = pytest.mark.slow

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def sleeper(name, image, **resources):
    return {
        "metadata": {"name": name, "labels": {"app": "test"}},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "command": ["sleep", "600"],
                    "resources": {"requests": resources, "limits": resources},
                }
            ],
            "tolerations": [GPU_TOLERATION],
            "terminationGracePeriodSeconds": 0,
        },
    }


async def test_nodes_register_with_capacity_and_labels(cluster):
    node = cluster.store.get("nodes", None, "gpu-node-1")
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB"
    assert labels["kubernetes.io/arch"] in ("amd64", "arm64")
    kubelet = cluster.kubelet("gpu-node-1")
    assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == kubelet.port


async def test_gpu_pod_gets_a_gpu_and_its_utilisation_is_exported(cluster):
    store = cluster.store
    store.create(
        "pods", "default", sleeper("gpu-user", cluster.images["busybox"], **{"nvidia.com/gpu": "1"})
    )
    pod = await wait_running(store, "gpu-user")
    assert pod["spec"]["nodeName"] == "gpu-node-1"
    kubelet = cluster.kubelet("gpu-node-1")
    http = AsyncHTTPClient()
    try:
        url = f"http://{kubelet.address}:{kubelet.port}"
        auth = {"Authorization": f"Bearer {cluster.admin_token}"}
        with pytest.raises(HTTPClientError) as err:
            await http.fetch(f"{url}/debug/gpus/0", method="PUT", body='{"utilization": 73}')
        assert err.value.code == 401
        await http.fetch(
            f"{url}/debug/gpus/0", method="PUT", headers=auth, body=json.dumps({"utilization": 73})
        )
        with pytest.raises(HTTPClientError) as err:
            await http.fetch(
                f"{url}/debug/gpus/0", method="PUT", headers=auth, body='{"utilization": 300}'
            )
        assert err.value.code == 400
        page = (await http.fetch(f"{url}/metrics/dcgm")).body.decode()
        line = next(ln for ln in page.splitlines() if ln.startswith("DCGM_FI_DEV_GPU_UTIL{"))
        assert 'pod="gpu-user"' in line and 'namespace="default"' in line
        assert line.endswith(" 73")

        prom = PrometheusConnect(cluster.prometheus_url, disable_ssl=True)

        def scraped():
            # An earlier scrape may have seen the GPU at 0, before the test set it.
            result = prom.custom_query('DCGM_FI_DEV_GPU_UTIL{pod="gpu-user"}')
            return result if result and float(result[0]["value"][1]) != 0 else False

        (sample,) = await wait_for(scraped, "Prometheus never scraped the GPU", 60)
        assert float(sample["value"][1]) == 73
        assert sample["metric"]["container"] == "main"
    finally:
        store.delete("pods", "default", "gpu-user", grace_period_seconds=0)
        await wait_gone(store, "gpu-user")


async def test_a_second_gpu_pod_waits_for_the_first(cluster):
    store = cluster.store
    store.create(
        "pods", "default", sleeper("gpu-a", cluster.images["busybox"], **{"nvidia.com/gpu": "1"})
    )
    await wait_running(store, "gpu-a")
    store.create(
        "pods", "default", sleeper("gpu-b", cluster.images["busybox"], **{"nvidia.com/gpu": "1"})
    )
    try:

        def unschedulable():
            conds = store.get("pods", "default", "gpu-b")["status"].get("conditions", [])
            return next((c for c in conds if c.get("reason") == "Unschedulable"), False)

        cond = await wait_for(unschedulable, "gpu-b was never reported unschedulable", 30)
        assert "Insufficient nvidia.com/gpu" in cond["message"]
        store.delete("pods", "default", "gpu-a", grace_period_seconds=0)
        pod = await wait_running(store, "gpu-b")
        assert pod["spec"]["nodeName"] == "gpu-node-1"
    finally:
        for name in ("gpu-a", "gpu-b"):
            if store.exists("pods", "default", name):
                store.delete("pods", "default", name, grace_period_seconds=0)
            await wait_gone(store, name)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has finished; only its parent's wait is missing.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


async def container_pid(lc, pod, container="main"):
    kubelet = next(k for k in lc.kubelets if k.find("default", pod))
    return await kubelet.runtime.container_pid(kubelet.find("default", pod).containers[container])


async def test_stopping_a_cluster_leaves_nothing_behind(tmp_path):
    """A cluster that dies leaves its pods running (their shims outlive containerd, as on a
    node); the next start on the same state removes them, and a clean stop leaves no process,
    container or network behind."""
    bridge, cidr = "jhsc0", "10.98.2.0/24"

    def make():
        lc = LocalCluster(
            state_dir=str(tmp_path / "state"),
            bridge=bridge,
            pod_cidr=cidr,
            nodes=[{"name": "solo", "cpu": "1", "memory": "1Gi"}],
        )
        lc.initialize([])
        return lc

    dead = make()
    await dead.up()
    dead.store.create("pods", "default", sleeper("left", dead.images["busybox"], cpu="100m"))
    await wait_running(dead.store, "left")
    orphan = await container_pid(dead, "left")
    # The cluster is killed: its servers die at once, nothing is cleaned up.
    dead.processes.kill_all_now()
    dead.containerd = None
    await dead.down()
    assert alive(orphan), "the pod should outlive its killed cluster, as on a real node"

    lc = make()
    await lc.up()
    try:
        assert not alive(orphan), "the leftover pod survived a new cluster's start"
        lc.store.create("pods", "default", sleeper("s1", lc.images["busybox"], cpu="100m"))
        await wait_running(lc.store, "s1")
        pod_pid = await container_pid(lc, "s1")
        assert alive(pod_pid)
        servers = [p.pid for p in lc.processes]
        names = sorted(p.name for p in lc.processes)
        assert names == ["agent-solo", "containerd", "docker-registry", "prometheus"]
        address = lc.containerd.address
    finally:
        await lc.down()
    assert not alive(pod_pid)
    assert not any(alive(pid) for pid in servers)
    assert _shim_pids(address) == []
    assert not os.path.exists(f"/sys/class/net/{bridge}")


async def test_a_killed_agent_is_started_again(cluster):
    """As a kubelet restarts a DaemonSet's pod: the agent comes back on the same address."""
    node = "node-1"
    old = cluster.agents[node]
    restarts = cluster.agent_restarts[node]
    os.kill(old.pid, signal.SIGKILL)
    http = AsyncHTTPClient()

    async def back():
        new = cluster.agents[node]
        if new is old or not new.running:
            return False
        try:
            response = await http.fetch(f"{cluster.agent_urls[node]}/healthz")
        except (HTTPClientError, OSError):
            return False
        return json.loads(response.body)["node"] == node

    await wait_for(back, "the killed agent never came back", 60)
    assert cluster.agent_restarts[node] == restarts + 1
    assert cluster.agents[node].pid != old.pid
