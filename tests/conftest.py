"""Shared test helpers.

Tests that need root, CRIU or a server never skip themselves: if something is missing they fail
with a message that says what, so CI cannot pass by skipping.
"""

import os
import re
import secrets
import shutil
import subprocess

import pytest
import pytest_asyncio

_session_cluster: dict = {}
ADMIN_TOKEN = secrets.token_hex(16)
AGENT_TOKEN = secrets.token_hex(16)
CRIU = os.environ.get("JHUB_SUSPEND_CRIU", "/opt/jhub-suspend/bin/criu")
CONTAINERD = "/opt/jhub-suspend/bin/containerd"
INSTALL_HINT = "run scripts/install.sh, which installs containerd, runc and CRIU >= 4.2"
SPARE_TAINT = {"key": "jhub-suspend.test/spare", "value": "true", "effect": "NoSchedule"}
LEGACY_GPU_TAINT = {"key": "jhub-suspend.test/legacy-gpu", "value": "true", "effect": "NoSchedule"}


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, CRIU); run it as root, as CI does")


def require_command(path_or_name: str, hint: str) -> str:
    found = path_or_name if os.access(path_or_name, os.X_OK) else shutil.which(path_or_name)
    if not found:
        pytest.fail(f"{path_or_name} is missing: {hint}")
    return found


def free_pod_cidr() -> str:
    """A /24 of 10.98.0.0/16 that no interface here holds, so that test runs side by side
    never route into each other's pods (two runs once shared one: their pids agreed mod 200).
    The search starts at a place the pid picks, so runs starting together spread out."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    used = {int(n) for n in re.findall(r"inet 10\.98\.(\d+)\.", out)}
    start = os.getpid() % 200
    for i in range(200):
        third = 20 + (start + i) % 200
        if third not in used:
            return f"10.98.{third}.0/24"
    pytest.fail("every 10.98.20-219.0/24 pod network is in use on this machine")


# One event loop for the whole run, so the local cluster (an in-process API server, scheduler
# and kubelets) is started once and shared by every test that needs it.
@pytest_asyncio.fixture(scope="session")
async def cluster(tmp_path_factory):
    """The local cluster, with a small CPU node, a tainted GPU node, and a spare CPU node
    tainted so that only a test that removes its taint uses it (tests/test_drain_e2e.py,
    where the notebooks of a drained node-1 resume)."""
    require_root()
    require_command(CRIU, INSTALL_HINT)
    require_command(CONTAINERD, INSTALL_HINT)
    from jhub_suspend.localcluster.cluster import LocalCluster

    state = str(tmp_path_factory.mktemp("cluster"))
    lc = LocalCluster(
        state_dir=str(state),
        # Per run, so that test runs side by side on one machine do not share pods.
        bridge=f"jhst{os.getpid() % 10000}",
        pod_cidr=free_pod_cidr(),
        tokens={
            ADMIN_TOKEN: {"user": "admin", "permissions": ["*"]},
            # What the node agent's ClusterRole grants: the kubelet checkpoint call, nothing more.
            AGENT_TOKEN: {
                "user": "system:serviceaccount:jhub-suspend:agent",
                "permissions": ["nodes/checkpoint"],
            },
        },
        # Archives a killed agent's kubelet call leaves are swept within a test's patience.
        agent_args=["--NodeAgent.orphan_archive_age=5", "--NodeAgent.orphan_sweep_interval=2"],
        nodes=[
            {"name": "node-1", "cpu": "1", "memory": "4Gi"},
            {
                "name": "gpu-node-1",
                "cpu": "2",
                "memory": "8Gi",
                "gpus": 1,
                "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
            },
            {"name": "node-2", "cpu": "1", "memory": "4Gi", "taints": [SPARE_TAINT]},
            # A legacy-device-mode node with two GPUs, tainted apart so that only the tests
            # that tolerate LEGACY_GPU_TAINT use it (tests/test_gpu_staging_e2e.py).
            {
                "name": "gpu-node-2",
                "cpu": "1",
                "memory": "4Gi",
                "gpus": 2,
                "gpu_device_mode": "legacy",
                "taints": [LEGACY_GPU_TAINT],
            },
        ],
    )
    lc.initialize([])
    await lc.up()
    _session_cluster["cluster"] = lc
    try:
        yield lc
    finally:
        _session_cluster.pop("cluster", None)
        await lc.down()


@pytest_asyncio.fixture(scope="module")
async def core(cluster):
    """The real kubernetes_asyncio client, talking to the local cluster through its kubeconfig."""
    from kubernetes_asyncio import client, config

    api = await config.new_client_from_config(config_file=cluster.kubeconfig_path)
    try:
        yield client.CoreV1Api(api)
    finally:
        await api.close()


@pytest_asyncio.fixture(scope="module", autouse=True)
async def clean_pods():
    """Each module leaves the shared cluster's default namespace without pods."""
    yield
    lc = _session_cluster.get("cluster")
    if lc is None:
        return
    from jhub_suspend.testing.waiting import wait_for

    pods, _ = lc.store.list("pods", "default")
    for pod in pods:
        lc.store.delete("pods", "default", pod["metadata"]["name"], grace_period_seconds=0)
    await wait_for(
        lambda: not lc.store.list("pods", "default")[0], "pods of this module were never removed"
    )


@pytest_asyncio.fixture(scope="session")
async def browser():
    """Debian's headless Chromium through Playwright (jhub_suspend.testing.browser)."""
    from jhub_suspend.testing.browser import CHROMIUM, CHROMIUM_ARGS, async_playwright

    async with async_playwright()() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def service_healthy(hub) -> bool:
    """Whether the hub's suspend service answers its health check."""
    from tornado.httpclient import AsyncHTTPClient

    resp = await AsyncHTTPClient().fetch(hub.service_url + "health", raise_error=False)
    return resp.code == 200


def module_hub(*, wait_healthy: bool = False, **options):
    """A module's ``hub`` fixture: a hub on the session's cluster, started once for the module
    with :func:`jhub_suspend.demo.hub.running_hub`'s ``options``; ``wait_healthy``: until its
    suspend service answers its health check."""
    from jhub_suspend.demo.hub import running_hub
    from jhub_suspend.testing.waiting import wait_for

    @pytest_asyncio.fixture(scope="module")
    async def hub(cluster, tmp_path_factory):
        state = str(tmp_path_factory.mktemp("hub"))
        async with running_hub(cluster.describe(), state, **options) as h:
            if wait_healthy:
                await wait_for(
                    lambda: service_healthy(h), "the suspend service never became healthy", 60
                )
            yield h

    return hub


@pytest.fixture
def api(hub):
    """The hub's REST API as the suspend service's admin token (a module's ``hub``)."""
    from jhub_suspend.testing.hubapi import HubAPI

    return HubAPI(hub.api_url, hub.service_token)


@pytest.fixture
def mock_kubeconfig(tmp_path, monkeypatch):
    """KubeSpawner makes its API client when it is created; give it a cluster it never calls
    (for spawners made with ``_mock=True``)."""
    from kubernetes_asyncio.config import kube_config

    from jhub_suspend.localcluster.apiserver import write_kubeconfig

    path = tmp_path / "kubeconfig"
    write_kubeconfig(str(path), "http://127.0.0.1:9", token="unused")
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    yield
    # KubeSpawner keeps one client per event loop; later tests must not inherit this one.
    from kubespawner import clients

    clients._client_cache.clear()


def checkpoint_record(status: str = "suspended", **changes):
    """A checkpoint record for the spawner's unit tests (jhub_suspend.testing.fakes'), taken
    on a known node."""
    from jhub_suspend.checkpoints import NodeFacts
    from jhub_suspend.testing import fakes

    return fakes.checkpoint(status, **{"node": NodeFacts("n", "amd64"), **changes})
