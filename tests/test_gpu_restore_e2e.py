"""GPU-safe restore targets on the local cluster (issue 13): a module-scoped cluster of
simulated GPU nodes, CDI and legacy, where the kubelet applies the SIMULATED CUDA restore rules
(:mod:`jhub_suspend.localcluster.gpurestore`). Real checkpoints (containerd, runc, CRIU) and
the real agent; the GPUs and the CUDA plugin are simulated, and no CUDA state is restored.

The restoring pods are made with the restore driver's own pure functions
(:func:`jhub_suspend.restore.gpu_restore_placement`, :func:`compatibility_affinity`); the
spawner's use of them, and its clean refusal, are tested in tests/test_gpu_restore.py.
"""

from __future__ import annotations

import contextlib
import copy
import os
import secrets

import pytest
import pytest_asyncio
from conftest import CONTAINERD, CRIU, INSTALL_HINT, free_pod_cidr, require_command, require_root
from test_agent import holder_pod

from jhub_suspend.agent import AgentClient
from jhub_suspend.checkpoints import GPU_UUIDS_ANNOTATION, node_facts
from jhub_suspend.localcluster.selectors import ApiError
from jhub_suspend.restore import compatibility_affinity, gpu_restore_placement
from jhub_suspend.testing.waiting import wait_for, wait_gone, wait_running

pytestmark = pytest.mark.slow

H100 = "NVIDIA-H100-80GB-HBM3"


def gpu_node(name: str, gpus: int, mode: str, product: str) -> dict:
    return {
        "name": name,
        "cpu": "1",
        "memory": "2Gi",
        "gpus": gpus,
        "gpu_device_mode": mode,
        "gpu_product": product,
    }


@pytest_asyncio.fixture(scope="module")
async def gpu_cluster(tmp_path_factory):
    """Two CDI nodes of one product; two 1-GPU and one 2-GPU legacy nodes of another."""
    require_root()
    require_command(CRIU, INSTALL_HINT)
    require_command(CONTAINERD, INSTALL_HINT)
    from jhub_suspend.localcluster.cluster import LocalCluster

    lc = LocalCluster(
        state_dir=str(tmp_path_factory.mktemp("gpu-cluster")),
        bridge=f"jhgr{os.getpid() % 10000}",
        pod_cidr=free_pod_cidr(),
        start_prometheus=False,
        nodes=[
            gpu_node("cdi-a", 1, "cdi", "NVIDIA-A100-SXM4-40GB"),
            gpu_node("cdi-b", 1, "cdi", "NVIDIA-A100-SXM4-40GB"),
            gpu_node("leg-a", 1, "legacy", H100),
            gpu_node("leg-b", 1, "legacy", H100),
            gpu_node("leg-2", 2, "legacy", H100),
        ],
    )
    lc.initialize([])
    await lc.up()
    try:
        yield lc
    finally:
        await lc.down()


def gpu_pod(name: str, image: str, node: str | None = None, gpus: int = 1) -> dict:
    pod = holder_pod(name, image)
    pod["spec"]["containers"][0]["resources"]["limits"] = {"nvidia.com/gpu": str(gpus)}
    if node:
        pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return pod


async def suspend(lc, node: str) -> tuple[str, object]:
    """Run a GPU pod on ``node``, checkpoint it through the node's agent, delete it; return the
    checkpoint image and the facts the spawner would record."""
    name = f"gpu-{secrets.token_hex(3)}"
    lc.store.create("pods", "default", gpu_pod(name, lc.images["notebook"], node))
    await wait_running(lc.store, name, timeout=60)
    agent = AgentClient(lc.agent_urls[node], lc.agent_token, timeout=300)
    result = await agent.checkpoint(
        "default", name, "notebook", f"{lc.registry_host}/jhub-suspend/{name}:1", gpus=1
    )
    lc.store.delete("pods", "default", name, grace_period_seconds=0)
    await wait_gone(lc.store, name)
    facts = node_facts(
        lc.store.get("nodes", None, node),
        1,
        device_mode=result.gpu_device_mode,
        devices=result.gpu_devices,
    )
    return result.image, facts


def restoring_pod(name: str, image: str, facts, not_on: str) -> dict:
    """The restoring pod as the checkpoint-image driver makes it, kept off the node it was
    taken on (a site's extra node selector term)."""
    pod = gpu_pod(name, image)
    placement = gpu_restore_placement(facts)
    pod["metadata"]["annotations"] = dict(placement.annotations)
    off = {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": [not_on]}
    pod["spec"]["affinity"] = compatibility_affinity(facts, [off])
    return pod


def events_of(lc, pod: str) -> list[dict]:
    events, _ = lc.store.list("events", "default")
    return [e for e in events if e.get("involvedObject", {}).get("name") == pod]


async def test_cdi_restores_onto_another_node_remapped_by_uuid(gpu_cluster):
    lc = gpu_cluster
    image, facts = await suspend(lc, "cdi-a")
    # the agent read the node's mode and the pod's GPU from the checkpoint's spec.dump
    assert (facts.gpu_device_mode, facts.gpu_devices) == ("cdi", ("GPU-cdi-a-0000",))
    assert facts.node_gpu_count == 1
    name = f"restore-{secrets.token_hex(3)}"
    pod = restoring_pod(name, image, facts, not_on="cdi-a")
    assert pod["metadata"]["annotations"] == {GPU_UUIDS_ANNOTATION: "GPU-cdi-a-0000"}
    lc.store.create("pods", "default", pod)
    try:
        restored = await wait_running(lc.store, name, timeout=120)
        assert restored["spec"]["nodeName"] == "cdi-b"
        remaps = [e["message"] for e in events_of(lc, name) if e["reason"] == "SimulatedGpuRemap"]
        assert remaps == [
            "SIMULATED CUDA restore: GPUs remapped by UUID (cuda.device-map "
            "GPU-cdi-a-0000=GPU-cdi-b-0000)"
        ]
    finally:
        lc.store.delete("pods", "default", name, grace_period_seconds=0)
        await wait_gone(lc.store, name)


async def test_legacy_restores_only_onto_a_node_with_as_many_gpus(gpu_cluster):
    lc = gpu_cluster
    image, facts = await suspend(lc, "leg-a")
    assert (facts.gpu_device_mode, facts.node_gpu_count) == ("legacy", 1)
    # The 2-GPU node's first GPU is taken, so a restore there would get index 1, not 0.
    lc.store.create("pods", "default", gpu_pod("squatter", lc.images["notebook"], "leg-2"))
    name = f"restore-{secrets.token_hex(3)}"
    lc.store.create("pods", "default", restoring_pod(name, image, facts, not_on="leg-a"))
    forced = f"forced-{secrets.token_hex(3)}"
    try:
        restored = await wait_running(lc.store, name, timeout=120)
        assert restored["spec"]["nodeName"] == "leg-b"
        assert not [e for e in events_of(lc, name) if e["reason"] == "SimulatedGpuRemap"]

        # What the placement prevents: the same checkpoint forced onto the 2-GPU node gets
        # another GPU index, and the (simulated) runtime fails it as CUDA would.
        await wait_running(lc.store, "squatter", timeout=60)
        pod = gpu_pod(forced, image, "leg-2")
        lc.store.create("pods", "default", copy.deepcopy(pod))

        def create_error():
            status = lc.store.get("pods", "default", forced).get("status") or {}
            for cs in status.get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") == "CreateContainerError":
                    return waiting.get("message", "")
            return False

        message = await wait_for(create_error, "the forced restore never failed", 120)
        assert "SIMULATED" in message and "CUDA_ERROR_NOT_SUPPORTED" in message
        assert "[0]" in message and "[1]" in message
    finally:
        for pod_name in (name, forced, "squatter"):
            with contextlib.suppress(ApiError):  # never created
                lc.store.delete("pods", "default", pod_name, grace_period_seconds=0)
        for pod_name in (name, forced, "squatter"):
            await wait_gone(lc.store, pod_name)
