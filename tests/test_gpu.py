"""GPU capability per node and the device state of a checkpoint, as pure functions."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import tarfile
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from test_agent import (
    DIGEST,
    REPO,
    TOKEN,
    Clock,
    FakeImages,
    archives_of,
    assert_still_running,
    body,
    e2e_traits,
    fetch,
    holder_pod,
    request,
    running_agent,
    url,
)
from tornado.httpclient import AsyncHTTPClient
from traitlets import TraitError

from jhub_suspend.agent import AgentClient, AgentError
from jhub_suspend.agent.app import ApiError, NodeAgent, parse_checkpoint_request
from jhub_suspend.agent.checkpointer import Checkpointer, GpuStateMissing
from jhub_suspend.archive import (
    INVENTORY_FILE,
    SIMULATED_CUDA_MARKER,
    InventoryError,
    inventory_image,
    inventory_plugins,
)
from jhub_suspend.gpu import (
    AgentGpuReport,
    CapabilityConfig,
    device_state_problem,
    driver_version,
    is_nvidia_cdi_spec,
    node_capability,
    sharing_problem,
)
from jhub_suspend.service.actions import ActionError, Actions
from jhub_suspend.service.gpucaps import GpuCapabilities
from jhub_suspend.service.kube import Kube, make_api_client
from jhub_suspend.state import read_state
from jhub_suspend.testing.waiting import wait_gone, wait_running

# GPU feature discovery's labels on an H100 node with driver 580 (names as upstream documents)
LABELS = {
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    "nvidia.com/gpu.count": "8",
    "nvidia.com/cuda.driver-version.major": "580",
    "nvidia.com/cuda.driver-version.minor": "65",
    "nvidia.com/cuda.driver-version.revision": "06",
    "nvidia.com/cuda.driver-version.full": "580.65.06",
    "nvidia.com/mig.capable": "true",  # the hardware could; MIG is not in use
    "nvidia.com/mps.capable": "false",
    "nvidia.com/gpu.sharing-strategy": "none",
}
REPORT = AgentGpuReport(
    cuda_plugin=True, cuda_checkpoint=False, device_mode="cdi", memory_available=64 << 30
)

#: inventory.img as CRIU 4.2.1 wrote it on this project's machine (a dumped `sleep`): no
#: plugin recorded state, so plugins_entry is present and empty
REAL_INVENTORY = bytes.fromhex(
    "163131584e000000080210011a18080110011801200128013002380340044806500758086005200128013000"
    "580062006a2462383264363265382d636635622d343031332d613439392d353362323030666632353731"
)


def test_capable_node_names_driver_and_mode():
    cap = node_capability("gpu-1", LABELS, REPORT)
    assert cap.capable
    assert cap.device_mode == "cdi"
    assert "580.65.06" in cap.reason and "driver's checkpoint API" in cap.reason
    assert "CDI" in cap.reason and "simulated" not in cap.reason


def test_legacy_mode_and_simulated_are_carried():
    cap = node_capability("n", LABELS, AgentGpuReport(True, False, "legacy", simulated=True))
    assert cap.capable and cap.device_mode == "legacy" and cap.simulated
    assert "(simulated)" in cap.reason and "legacy" in cap.reason


def test_deprecated_driver_labels_are_read():
    labels = {k: v for k, v in LABELS.items() if not k.startswith("nvidia.com/cuda.driver-version")}
    labels |= {"nvidia.com/cuda.driver.major": "570", "nvidia.com/cuda.driver.minor": "124"}
    assert driver_version(labels) == (570, "570.124")
    cap = node_capability("n", labels, AgentGpuReport(True, True, "legacy"))
    assert cap.capable and "cuda-checkpoint" in cap.reason


@pytest.mark.parametrize(
    ("major", "tool", "capable", "words"),
    [
        ("535", True, False, "older than 550"),
        ("550", True, True, "cuda-checkpoint"),
        ("570", False, False, "needs NVIDIA's cuda-checkpoint tool"),
        ("579", True, True, "cuda-checkpoint"),
        ("580", False, True, "driver's checkpoint API"),
        ("595", False, True, "driver's checkpoint API"),
    ],
)
def test_driver_rules(major, tool, capable, words):
    labels = {**LABELS, "nvidia.com/cuda.driver-version.major": major}
    labels.pop("nvidia.com/cuda.driver-version.full")
    cap = node_capability("n", labels, AgentGpuReport(True, tool, "cdi"))
    assert cap.capable is capable
    assert words in cap.reason


def test_driver_thresholds_are_settings():
    labels = {**LABELS, "nvidia.com/cuda.driver-version.major": "575"}
    report = AgentGpuReport(True, False, "cdi")
    assert not node_capability("n", labels, report).capable
    assert node_capability("n", labels, report, CapabilityConfig(native_driver=575)).capable
    with pytest.raises(ValueError):
        CapabilityConfig(native_driver=500, tool_driver=550)


@pytest.mark.parametrize("value", [None, "", "abc", "-1", "nan", "inf"])
def test_unknown_driver_is_not_capable(value):
    labels = {k: v for k, v in LABELS.items() if "driver" not in k}
    if value is not None:
        labels["nvidia.com/cuda.driver-version.major"] = value
    cap = node_capability("n", labels, REPORT)
    assert not cap.capable
    assert "no driver version label" in cap.reason


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"nvidia.com/mig.strategy": "single"}, "MIG is in use"),
        ({"nvidia.com/mig.strategy": "mixed"}, "MIG is in use"),
        ({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"}, "MIG is in use"),
        ({"nvidia.com/gpu.sharing-strategy": "mps"}, "MPS"),
        ({"nvidia.com/mps.capable": "true"}, "MPS"),
    ],
)
def test_mig_and_mps_are_not_capable(changes, words):
    cap = node_capability("n", {**LABELS, **changes}, REPORT)
    assert not cap.capable
    assert words in cap.reason


def test_sharing_that_checkpoints_support_is_allowed():
    assert sharing_problem({**LABELS, "nvidia.com/mig.strategy": "none"}) is None
    assert sharing_problem({**LABELS, "nvidia.com/gpu.sharing-strategy": "time-slicing"}) is None
    assert sharing_problem(LABELS) is None  # mig.capable=true is the hardware, not the use


def test_what_the_agent_reports_decides_the_rest():
    assert "labels are unreadable" in node_capability("n", None, REPORT).reason
    no_report = node_capability("n", LABELS, None, report_error="connection refused")
    assert not no_report.capable and "connection refused" in no_report.reason
    no_plugin = node_capability("n", LABELS, AgentGpuReport(False, True, "cdi"))
    assert not no_plugin.capable and "cuda_plugin.so" in no_plugin.reason
    no_mode = node_capability("n", LABELS, AgentGpuReport(True, True, None))
    assert not no_mode.capable and "device mode" in no_mode.reason


def test_agent_report_round_trip_and_validation():
    report = AgentGpuReport(True, False, "legacy", simulated=True)
    assert AgentGpuReport.from_json(report.to_json()) == report
    assert AgentGpuReport.from_json({}) == AgentGpuReport(False, False, None)
    for bad in ([], {"cuda_plugin": "yes"}, {"device_mode": "mig"}, {"simulated": 1}):
        with pytest.raises(ValueError):
            AgentGpuReport.from_json(bad)


def test_real_inventory_lists_no_plugin():
    assert inventory_plugins(REAL_INVENTORY) == []


def test_inventory_with_the_cuda_plugin():
    data = inventory_image(["cuda_plugin"])
    assert inventory_plugins(data) == ["cuda_plugin"]
    assert inventory_plugins(inventory_image([])) == []
    assert inventory_plugins(inventory_image(["amdgpu_plugin", "cuda_plugin"])) == [
        "amdgpu_plugin",
        "cuda_plugin",
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x16\x31\x31",
        b"\x00\x00\x00\x00\x02\x00\x00\x00\x08\x02",  # another image's magic
        REAL_INVENTORY[:8] + REAL_INVENTORY[8:20],  # truncated entry
        bytes.fromhex("16313158") + (3).to_bytes(4, "little") + b"\x0b\x00\x00",  # wire type 3
        bytes.fromhex("16313158") + (2).to_bytes(4, "little") + b"\x62\x05",  # field past end
    ],
)
def test_unreadable_inventories_raise(data):
    with pytest.raises(InventoryError):
        inventory_plugins(data)


def test_device_state():
    assert device_state_problem(["cuda_plugin"]) is None
    missing = device_state_problem([])
    assert missing is not None and "no GPU state" in missing and "plugins: none" in missing
    assert "amdgpu_plugin" in (device_state_problem(["amdgpu_plugin"]) or "")
    assert "no readable CRIU inventory" in (device_state_problem(None) or "")
    # the local cluster's simulated plugin counts only where the agent is told to accept it
    assert device_state_problem([], simulated_marker=True) is not None
    assert device_state_problem([], simulated_marker=True, accept_simulated=True) is None
    assert device_state_problem(None, simulated_marker=True, accept_simulated=True) is None


def test_cdi_specs_for_nvidia_gpus_are_recognised():
    assert is_nvidia_cdi_spec('{"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": []}')
    assert is_nvidia_cdi_spec("---\ncdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n")
    assert is_nvidia_cdi_spec("kind: 'nvidia.com/gpu'")
    assert not is_nvidia_cdi_spec("cdiVersion: 0.5.0\nkind: vendor.example/fpga\n")
    assert not is_nvidia_cdi_spec("kind: nvidia.com/gpu-other\n")


# ---- the node agent: the device state of a GPU pod's checkpoint ------------------------------


@pytest.fixture
def ckpt_dir(tmp_path):
    return str(tmp_path)


class GpuKubelet:
    """Writes a checkpoint archive as the kubelet does: CRIU's inventory listing ``plugins``,
    and, when ``marker``, the local cluster's simulated-plugin marker."""

    def __init__(self, directory: str, plugins: list[str] | None, marker: bool = False):
        self.directory, self.plugins, self.marker = directory, plugins, marker
        self.calls = 0

    async def checkpoint(self, namespace: str, pod: str, container: str, timeout: float) -> str:
        self.calls += 1
        path = os.path.join(self.directory, f"checkpoint-{pod}_{namespace}-{container}.tar")
        files = {"checkpoint/pages-1.img": b"\0" * 4096}
        if self.plugins is not None:
            files[INVENTORY_FILE] = inventory_image(self.plugins)
        if self.marker:
            files[SIMULATED_CUDA_MARKER] = json.dumps({"simulated": True}).encode()
        with tarfile.open(path, "w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path


def gpu_checkpointer(ckpt_dir, kubelet, *, plugin=True, accept_simulated=False, seen=None):
    return Checkpointer(
        kubelet,
        FakeImages([]),
        ckpt_dir,
        node_name="gpu-1",
        clock=Clock(),
        gpu_report=lambda: AgentGpuReport(plugin, True, "cdi", simulated=accept_simulated),
        accept_simulated_gpu_state=accept_simulated,
        on_gpu_checkpoint=(seen.append if seen is not None else None),
    )


async def test_a_gpu_checkpoint_with_device_state_is_pushed(ckpt_dir):
    seen: list[str] = []
    kubelet = GpuKubelet(ckpt_dir, ["cuda_plugin"])
    result = await gpu_checkpointer(ckpt_dir, kubelet, seen=seen).checkpoint(request(gpus=1))
    assert result.digest == DIGEST
    assert seen == ["real"]
    assert os.listdir(ckpt_dir) == []


@pytest.mark.parametrize(("plugins", "words"), [([], "plugins: none"), (None, "no readable")])
async def test_a_gpu_checkpoint_without_device_state_fails_and_is_deleted(ckpt_dir, plugins, words):
    seen: list[str] = []
    kubelet = GpuKubelet(ckpt_dir, plugins)
    checkpointer = gpu_checkpointer(ckpt_dir, kubelet, seen=seen)
    with pytest.raises(GpuStateMissing) as err:
        await checkpointer.checkpoint(request(gpus=1))
    assert words in err.value.message and "keeps running" in err.value.message
    assert err.value.reason == "gpu_state"
    assert checkpointer.images.calls == []  # nothing was pushed  # type: ignore[attr-defined]
    assert os.listdir(ckpt_dir) == []  # the archive holds the notebook's memory: deleted
    assert seen == []


async def test_a_cpu_pod_needs_no_device_state(ckpt_dir):
    kubelet = GpuKubelet(ckpt_dir, [])
    result = await gpu_checkpointer(ckpt_dir, kubelet, plugin=False).checkpoint(request())
    assert result.digest == DIGEST


async def test_no_cuda_plugin_refuses_before_dumping(ckpt_dir):
    kubelet = GpuKubelet(ckpt_dir, ["cuda_plugin"])
    with pytest.raises(GpuStateMissing) as err:
        await gpu_checkpointer(ckpt_dir, kubelet, plugin=False).checkpoint(request(gpus=2))
    assert "(cuda_plugin.so) is not installed" in err.value.message
    assert kubelet.calls == 0


async def test_the_simulated_marker_counts_only_where_accepted(ckpt_dir):
    kubelet = GpuKubelet(ckpt_dir, [], marker=True)
    with pytest.raises(GpuStateMissing):
        await gpu_checkpointer(ckpt_dir, kubelet).checkpoint(request(gpus=1))
    seen: list[str] = []
    checkpointer = gpu_checkpointer(ckpt_dir, kubelet, accept_simulated=True, seen=seen)
    await checkpointer.checkpoint(request(gpus=1))
    assert seen == ["simulated"]


def test_the_request_carries_the_gpu_count():
    assert parse_checkpoint_request({**body(), "gpus": 2}, REPO).gpus == 2
    assert parse_checkpoint_request(body(), REPO).gpus == 0
    for bad in (-1, 1.5, "1", True, 4096):
        with pytest.raises(ApiError) as err:
            parse_checkpoint_request({**body(), "gpus": bad}, REPO)
        assert err.value.status == 400


async def test_the_agent_reports_its_nodes_gpu_capabilities(tmp_path, ckpt_dir):
    plugins, tool, cdi = tmp_path / "criu", tmp_path / "cuda-checkpoint", tmp_path / "cdi"
    plugins.mkdir()
    cdi.mkdir()
    settings = {
        "repository": REPO,
        "checkpoint_dir": ckpt_dir,
        "kubelet_url": "http://127.0.0.1:1",
        "criu_plugin_dir": str(plugins),
        "cuda_checkpoint_paths": [str(tool)],
        "cdi_spec_dirs": [str(cdi), str(tmp_path / "absent")],
    }
    async with running_agent(**settings) as agent:
        answer = await fetch(agent, "/capabilities", token=None)
        assert answer.code == 200
        assert json.loads(answer.body) == {
            "node": agent.node_name,
            "gpu": {
                "cuda_plugin": False,
                "cuda_checkpoint": False,
                "device_mode": "legacy",
                "simulated": False,
                "memory_available": agent.memory_available(),
            },
        }
        assert json.loads(answer.body)["gpu"]["memory_available"] > 0  # this machine's
        (plugins / "cuda_plugin.so").write_bytes(b"\x7fELF")
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
        (cdi / "nvidia.yaml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n")
        client = AgentClient(url(agent), TOKEN)
        got = await client.gpu_report()
        assert (got.cuda_plugin, got.cuda_checkpoint, got.device_mode) == (True, True, "cdi")
        agent.gpu_device_mode = "legacy"
        assert (await client.gpu_report()).device_mode == "legacy"
    with pytest.raises(TraitError):
        NodeAgent(gpu_device_mode="mig")


# ---- the service: capability per node, and the suspend action's 409 -------------------------


class NodesKube:
    """Lists nodes as the API server does (None: not allowed), and reads pods."""

    def __init__(self, nodes: list[dict] | None, pods: list[dict] = ()):
        self.nodes, self.pods, self.lists = nodes, list(pods), 0

    async def list_nodes(self):
        self.lists += 1
        return self.nodes

    async def read_pod(self, namespace, name):
        return next((p for p in self.pods if p["metadata"]["name"] == name), None)


def node(name: str, **labels: str) -> dict:
    return {
        "metadata": {"name": name, "labels": {**LABELS, **labels}},
        "status": {"addresses": [{"type": "InternalIP", "address": f"10.0.0.{len(name)}"}]},
    }


class ReportingAgent:
    def __init__(self, report: AgentGpuReport | None, asked: list[str], name: str):
        self.report, self.asked, self.name = report, asked, name

    async def gpu_report(self) -> AgentGpuReport:
        self.asked.append(self.name)
        if self.report is None:
            raise AgentError(0, "connection refused")
        return self.report


async def test_the_service_joins_labels_and_agent_reports_and_caches_reports():
    now = [0.0]
    asked: list[str] = []
    reports = {"a": REPORT, "b": AgentGpuReport(False, True, "legacy"), "c": None, "m": REPORT}
    where: list[tuple[str, str]] = []

    def agent_for(name: str, ip: str):
        where.append((name, ip))
        return ReportingAgent(reports[name], asked, name)

    kube = NodesKube(
        [node("a"), node("b"), node("c"), node("m", **{"nvidia.com/mig.strategy": "single"})]
    )
    caps = GpuCapabilities(
        kube, agent_for, CapabilityConfig(), ttl=300, retry=30, clock=lambda: now[0]
    )
    got = capabilities(await caps.nodes(["a", "b", "c", "m", "gone"]))
    assert got["a"].capable and got["a"].device_mode == "cdi"
    assert not got["b"].capable and "cuda_plugin.so" in got["b"].reason
    assert not got["c"].capable and "connection refused" in got["c"].reason
    assert not got["m"].capable and "MIG" in got["m"].reason
    assert not got["gone"].capable and "labels are unreadable" in got["gone"].reason
    assert ("a", "10.0.0.1") in where  # the agent on the node's InternalIP
    # reports are reused for ttl; a failed one is asked again after retry
    asked.clear()
    now[0] = 31
    await caps.nodes(["a", "c"])
    assert asked == ["c"]
    now[0] = 301
    asked.clear()
    await caps.nodes(["a"])
    assert asked == ["a"]
    assert kube.lists == 3  # labels are read fresh each time
    assert await caps.nodes([]) == {}


async def test_a_service_that_may_not_list_nodes_counts_no_node_capable():
    caps = GpuCapabilities(NodesKube(None), lambda n, ip: None, CapabilityConfig())
    (cap,) = capabilities(await caps.nodes(["a"])).values()
    assert not cap.capable and "get/list on nodes" in cap.reason


class StagingPrometheus:
    """Answers the suspend action's two queries: GPU memory in use (bytes) and the memory
    working set as a fraction of the request, per (namespace, pod)."""

    def __init__(self, gpu_memory: dict, ratios: dict):
        self.gpu_memory, self.ratios = gpu_memory, ratios

    async def gpu_staging(self, queries, names, at=None):
        return self.gpu_memory, self.ratios


def gpu_pod(name: str, gpus: int, node_name: str = "a") -> dict:
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return {
        "metadata": {"name": name, "namespace": "jhub"},
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "notebook", "resources": {"limits": limits}}],
        },
    }


def capabilities(nodes: dict) -> dict:
    """The capability of each node of :meth:`GpuCapabilities.nodes`' answer."""
    return {n: g.capability for n, g in nodes.items()}


def gpu_actions(nodes, pods, prometheus, report=REPORT) -> Actions:
    """The service's actions over stand-ins: these nodes and pods, an agent giving ``report``
    on every node, and Prometheus answering what ``prometheus`` says."""
    kube = NodesKube(nodes, pods)
    caps = GpuCapabilities(kube, lambda n, ip: ReportingAgent(report, [], n), CapabilityConfig())
    svc = SimpleNamespace(
        kube=kube,
        namespace="jhub",
        gpu_resources={"nvidia.com/gpu"},
        gpu_capabilities=caps,
        prometheus=prometheus,
        queries=None,
        names=None,
        now=lambda: datetime.now(UTC),
        log=None,
    )
    return Actions(svc)  # type: ignore[arg-type]


async def test_suspend_answers_409_with_the_reason_for_a_gpu_server_on_an_incapable_node():
    actions = gpu_actions(
        [node("a"), node("mps", **{"nvidia.com/gpu.sharing-strategy": "mps"})],
        [
            gpu_pod("jupyter-gus", 1, "mps"),
            gpu_pod("jupyter-ann", 1, "a"),
            gpu_pod("jupyter-cy", 0, "mps"),
        ],
        StagingPrometheus({}, {}),
    )
    svc = actions.service
    with pytest.raises(ActionError) as err:
        await actions._gpu_capable("gus", "", read_state({"pod_name": "jupyter-gus"}))
    assert err.value.status == 409
    assert err.value.message.startswith("gus is left running: node mps cannot checkpoint GPUs")
    assert "MPS" in err.value.message
    svc.prometheus = StagingPrometheus({("jhub", "jupyter-ann"): 0.0}, {})
    await actions._gpu_capable("ann", "", read_state({"pod_name": "jupyter-ann"}))
    await actions._gpu_capable("cy", "", read_state({"pod_name": "jupyter-cy"}))  # no GPU


# ---- on the local cluster: simulated GPU nodes, real agents, kubelet, containerd and CRIU -----


def gpu_holder(name: str, image: str) -> dict:
    pod = holder_pod(name, image)
    pod["spec"]["containers"][0]["resources"]["limits"] = {"nvidia.com/gpu": "1"}
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "gpu-node-1"}
    pod["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    return pod


@pytest.mark.slow
async def test_simulated_gpu_nodes_and_device_state_on_the_local_cluster(cluster, tmp_path):
    # The GPU node is labelled as GPU feature discovery would; its agent reports a simulated
    # CUDA plugin and CDI; the service finds it capable (simulated), and the CPU node not.
    api = await make_api_client(cluster.kubeconfig_path)
    try:
        caps = GpuCapabilities(
            Kube(api),
            lambda n, ip: AgentClient(cluster.agent_urls[n], cluster.agent_token),
            CapabilityConfig(),
        )
        got = capabilities(await caps.nodes(["gpu-node-1", "node-1"]))
    finally:
        await api.close()
    gpu = got["gpu-node-1"]
    assert (gpu.capable, gpu.device_mode, gpu.simulated) == (True, "cdi", True), gpu
    assert "580.65.06" in gpu.reason and "(simulated)" in gpu.reason
    assert not got["node-1"].capable and "no driver version label" in got["node-1"].reason

    name = f"gpu-{secrets.token_hex(3)}"
    cluster.store.create("pods", "default", gpu_holder(name, cluster.images["notebook"]))
    try:
        await wait_running(cluster.store, name)
        repo = f"{cluster.registry_host}/jhub-suspend"
        # the node's own agent: the simulated plugin's marker stands for the device state
        agent = AgentClient(cluster.agent_urls["gpu-node-1"], cluster.agent_token, timeout=300)

        async def gpu_checkpoints() -> dict[str, float]:
            page = await AsyncHTTPClient().fetch(cluster.agent_urls["gpu-node-1"] + "/metrics")
            found = re.findall(
                r'^jhub_suspend_agent_gpu_checkpoints_total\{device_state="(\w+)"\} (\S+)$',
                page.body.decode(),
                re.M,
            )
            return {state: float(value) for state, value in found}

        before = await gpu_checkpoints()
        result = await agent.checkpoint("default", name, "notebook", f"{repo}/gpu:ok", gpus=1)
        await agent.delete_image(result.image)
        after = await gpu_checkpoints()
        # counted as simulated, never as real (whatever the session checkpointed before)
        assert after["simulated"] == before.get("simulated", 0.0) + 1
        assert after["real"] == before.get("real", 0.0) == 0.0

        # an agent that does not accept the simulation: the checkpoint holds no device state,
        # so it fails, its archive is deleted and the pod keeps running
        plugins = tmp_path / "criu"
        plugins.mkdir()
        (plugins / "cuda_plugin.so").write_text("stub")
        traits = e2e_traits(cluster, "gpu-node-1", criu_plugin_dir=str(plugins))
        async with running_agent(**traits) as strict:
            with pytest.raises(AgentError) as err:
                await AgentClient(url(strict), TOKEN, timeout=300).checkpoint(
                    "default", name, "notebook", f"{repo}/gpu:no", gpus=1
                )
        assert err.value.status == 502 and "holds no GPU state" in err.value.message
        assert archives_of(cluster, "gpu-node-1", name) == []
        assert_still_running(cluster, name)

        # an agent on a node without the plugin refuses before any dump
        traits = e2e_traits(cluster, "gpu-node-1", criu_plugin_dir=str(tmp_path / "none"))
        async with running_agent(**traits) as bare:
            with pytest.raises(AgentError) as err:
                await AgentClient(url(bare), TOKEN, timeout=300).checkpoint(
                    "default", name, "notebook", f"{repo}/gpu:none", gpus=1
                )
        assert err.value.status == 502 and "is not installed on this node" in err.value.message
        assert_still_running(cluster, name)
    finally:
        cluster.store.delete("pods", "default", name, grace_period_seconds=0)
        await wait_gone(cluster.store, name)
