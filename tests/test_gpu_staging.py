"""The per-server GPU rules (legacy device mode, host memory to stage the GPU memory), the
checkpoint-size estimate, and their plumbing: pure functions, the agent's memory report, the
service's node facts and the suspend action's 409. No cluster."""

from __future__ import annotations

import pytest
from test_gpu import (
    LABELS,
    REPORT,
    NodesKube,
    ReportingAgent,
    StagingPrometheus,
    gpu_actions,
    gpu_pod,
    node,
)

from jhub_suspend.agent.app import NodeAgent, meminfo_available
from jhub_suspend.gpu import (
    AgentGpuReport,
    Capability,
    CapabilityConfig,
    checkpoint_size_estimate,
    human_bytes,
    node_gpu_count,
    server_gpu_readiness,
)
from jhub_suspend.policy import Resources
from jhub_suspend.promql import MetricNames, PodSelector, build_queries
from jhub_suspend.service.actions import ActionError
from jhub_suspend.service.gpucaps import GpuCapabilities, GpuNode, server_readiness
from jhub_suspend.service.observe import ServerView, pod_memory_limit, working_set
from jhub_suspend.service.prom import MetricsUnavailable, PrometheusReader
from jhub_suspend.state import read_state

GIB, MIB = 1 << 30, 1 << 20
CDI = Capability(True, "node a can checkpoint GPUs", "cdi")
LEGACY = Capability(True, "node a can checkpoint GPUs", "legacy", simulated=True)
FITS = {
    "gpus": 1,
    "node_gpu_count": 8,
    "gpu_memory_used": 10 * GIB,
    "memory_limit": 32 * GIB,
    "memory_used": 4 * GIB,
    "node_memory_available": 100 * GIB,
    "node": "a",
}


def ready(capability: Capability = CDI, **changes) -> Capability:
    return server_gpu_readiness(capability, **{**FITS, **changes})


# ---- the rules --------------------------------------------------------------------------------


def test_a_server_that_fits_is_suspendable_and_keeps_the_node_reason():
    got = ready()
    assert got.capable and got.device_mode == "cdi"
    assert got.reason == (
        "node a can checkpoint GPUs; its 10.0 GiB of GPU memory fits in host memory to stage"
    )


def test_an_incapable_node_decides_alone():
    node_says = Capability(False, "node a cannot checkpoint GPUs: MIG is in use")
    assert ready(node_says, gpu_memory_used=None) is node_says


@pytest.mark.parametrize(
    ("gpus", "count", "capable"),
    [(8, 8, True), (1, 8, False), (2, 8, False), (1, 1, True), (1, None, False), (8, 16, False)],
)
def test_legacy_mode_needs_all_of_the_nodes_gpus(gpus, count, capable):
    got = ready(LEGACY, gpus=gpus, node_gpu_count=count)
    assert got.capable is capable
    assert got.simulated and got.device_mode == "legacy"  # carried for the listing
    if not capable:
        held = "an unknown number" if count is None else str(count)
        assert got.reason.startswith(f"it holds {gpus} of node a's {held} GPUs in legacy device")
        assert "same GPU indices" in got.reason
        assert "CDI device mode removes this limit" in got.reason


def test_cdi_mode_has_no_gpu_count_rule():
    assert ready(gpus=1, node_gpu_count=8).capable
    assert ready(gpus=1, node_gpu_count=None).capable


@pytest.mark.parametrize("unknown", [None, float("nan"), float("inf"), -1.0])
def test_unknown_gpu_memory_is_never_suspendable(unknown):
    got = ready(gpu_memory_used=unknown)
    assert not got.capable and "GPU memory it uses is unknown" in got.reason


def test_the_memory_limit_must_leave_room_for_the_gpu_memory():
    # limit - working set = 28 GiB: 28 GiB fits exactly, a byte more does not
    assert ready(gpu_memory_used=28 * GIB).capable
    got = ready(gpu_memory_used=28 * GIB + 1)
    assert not got.capable
    assert got.reason == (
        "staging its 28.0 GiB of GPU memory in host memory needs more than its memory limit "
        "leaves (32.0 GiB limit, 4.0 GiB in use, 28.0 GiB free): its processes would be "
        "OOM-killed mid-checkpoint and the notebook lost"
    )
    # a working set over the limit (the cgroup counts caches): no room, shown as 0
    got = ready(memory_used=33 * GIB, gpu_memory_used=MIB)
    assert not got.capable and "0 B free" in got.reason


def test_with_a_limit_the_working_set_must_be_known():
    got = ready(memory_used=None)
    assert not got.capable and "working set is unknown" in got.reason
    assert "32.0 GiB" in got.reason


def test_without_a_limit_only_the_node_bounds_the_staging():
    assert ready(memory_limit=None, memory_used=None, gpu_memory_used=90 * GIB).capable


def test_the_node_must_have_the_memory_available():
    assert ready(node_memory_available=10 * GIB).capable  # exactly enough
    got = ready(node_memory_available=10 * GIB - 1)
    assert not got.capable
    assert got.reason == (
        "node a has 10.0 GiB of memory available, less than the 10.0 GiB of GPU memory to "
        "stage for the checkpoint"
    )
    got = ready(node_memory_available=None)
    assert not got.capable and "available memory is unknown" in got.reason


def test_checkpoint_size_estimate():
    assert checkpoint_size_estimate(4 * GIB, 10 * GIB) == 14 * GIB
    assert checkpoint_size_estimate(300 * MIB, 0.0) == 300 * MIB  # a CPU server
    for unknown in (None, float("nan"), -1.0):
        assert checkpoint_size_estimate(unknown, 0.0) is None
        assert checkpoint_size_estimate(GIB, unknown) is None


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 512, 64 * MIB, 1536 * MIB, 3 << 40)] == [
        "0 B",
        "512 B",
        "64 MiB",
        "1.5 GiB",
        "3.0 TiB",
    ]


# ---- the agent's report -----------------------------------------------------------------------


def test_the_report_carries_the_available_memory():
    report = AgentGpuReport(True, False, "cdi", memory_available=5 * GIB)
    assert AgentGpuReport.from_json(report.to_json()) == report
    old = {"cuda_plugin": True, "cuda_checkpoint": False, "device_mode": "cdi"}
    assert AgentGpuReport.from_json(old).memory_available is None  # an older agent: unknown
    for bad in (True, -1, 1.5, "5G"):
        with pytest.raises(ValueError, match="memory_available"):
            AgentGpuReport.from_json({**old, "memory_available": bad})


def test_meminfo_available():
    text = "MemTotal:       16303012 kB\nMemFree:  1 kB\nMemAvailable:   12000000 kB\n"
    assert meminfo_available(text) == 12000000 * 1024
    assert meminfo_available("MemTotal: 1 kB\n") is None
    assert meminfo_available("MemAvailable: lots kB\n") is None


def test_the_agent_reads_its_meminfo_file_at_each_report(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable:    2048 kB\n")
    agent = NodeAgent(meminfo_path=str(meminfo), cdi_spec_dirs=[])
    assert agent.gpu_report().memory_available == 2048 * 1024
    meminfo.write_text("MemAvailable:    4096 kB\n")
    assert agent.gpu_report().memory_available == 4096 * 1024
    meminfo.unlink()
    assert agent.gpu_report().memory_available is None


# ---- the service: pod and node facts, and the per-server verdict ----------------------------


def test_pod_memory_limit_is_that_of_the_gpu_containers():
    def container(name, gpu, memory=None):
        limits = {"nvidia.com/gpu": str(gpu)} if gpu else {}
        if memory:
            limits["memory"] = memory
        return {"name": name, "resources": {"limits": limits}}

    def pod(*containers):
        return {"spec": {"containers": list(containers)}}

    gpus = {"nvidia.com/gpu"}
    assert pod_memory_limit(pod(container("nb", 1, "2Gi")), gpus) == 2 * GIB
    assert pod_memory_limit(pod(container("nb", 1, "2Gi"), container("s", 0, "1Gi")), gpus) == (
        2 * GIB
    )
    assert pod_memory_limit(pod(container("nb", 1)), gpus) is None  # no limit
    assert pod_memory_limit(pod(container("a", 1, "1Gi"), container("b", 1)), gpus) is None
    assert pod_memory_limit(pod(container("nb", 0, "1Gi")), gpus) is None  # holds no GPU


def test_working_set_from_the_ratio_and_the_request():
    assert working_set(0.5, Resources(memory=2 * GIB)) == GIB
    assert working_set(0.5, Resources()) is None  # no request
    assert working_set(None, Resources(memory=GIB)) is None
    assert working_set(float("inf"), Resources(memory=GIB)) is None


def test_the_view_estimates_its_checkpoint_while_running():
    view = ServerView("u", "", "running", requests=Resources(gpu=1), memory_used=GIB)
    assert view.estimated_checkpoint_bytes is None  # its GPU memory is unknown
    view.gpu_memory_used = GIB
    assert view.estimated_checkpoint_bytes == 2 * GIB
    view.requests = Resources()  # no GPU: its GPU memory does not count
    assert view.estimated_checkpoint_bytes == GIB
    view.state = "suspended"
    assert view.estimated_checkpoint_bytes is None


def test_gpu_count_label():
    assert node_gpu_count(LABELS) == 8
    assert node_gpu_count({}) is None and node_gpu_count(None) is None
    assert node_gpu_count({"nvidia.com/gpu.count": "two"}) is None


def test_server_readiness_of_an_unknown_node():
    got = server_readiness(
        "x", None, gpus=1, memory_limit=None, memory_used=None, gpu_memory_used=0.0
    )
    assert not got.capable and "node x" in got.reason


async def test_nodes_give_the_count_and_memory_and_fresh_asks_again():
    asked: list[str] = []
    caps = GpuCapabilities(
        NodesKube([node("a")]),
        lambda n, ip: ReportingAgent(REPORT, asked, n),
        CapabilityConfig(),
        ttl=300,
        clock=lambda: 0.0,
    )
    (facts,) = (await caps.nodes(["a"])).values()
    assert facts == GpuNode((await caps.nodes(["a"]))["a"].capability, 8, 64 * GIB)
    assert asked == ["a"]  # the second call used the cached report
    await caps.nodes(["a"], fresh=True)
    assert asked == ["a", "a"]


# ---- the suspend action -----------------------------------------------------------------------


def staging_actions(pods, node_labels, prometheus, report=REPORT):
    return gpu_actions([node("a", **node_labels)], pods, prometheus, report)


def limited(name: str, gpus: int, limit: str, request: str) -> dict:
    pod = gpu_pod(name, gpus)
    res = pod["spec"]["containers"][0]["resources"]
    res["limits"]["memory"] = limit
    res["requests"] = {"memory": request}
    return pod


async def test_suspend_answers_409_for_a_legacy_server_holding_some_of_its_nodes_gpus():
    legacy = AgentGpuReport(True, False, "legacy", memory_available=64 * GIB)
    key = ("jhub", "jupyter-leg")
    actions = staging_actions(
        [gpu_pod("jupyter-leg", 1), gpu_pod("jupyter-all", 8)],
        {},
        StagingPrometheus({key: 0.0, ("jhub", "jupyter-all"): 0.0}, {}),
        legacy,
    )
    with pytest.raises(ActionError) as err:
        await actions._gpu_capable("leg", "", read_state({"pod_name": "jupyter-leg"}))
    assert err.value.status == 409
    assert err.value.message.startswith(
        "leg is left running: it holds 1 of node a's 8 GPUs in legacy device mode"
    )
    await actions._gpu_capable("all", "", read_state({"pod_name": "jupyter-all"}))


async def test_suspend_answers_409_when_the_limit_leaves_no_room_to_stage():
    key = ("jhub", "jupyter-big")
    # 1 GiB of the 2 GiB request in use: 3 GiB of the 4 GiB limit free
    prom = StagingPrometheus({key: 3 * GIB + MIB}, {key: 0.5})
    actions = staging_actions([limited("jupyter-big", 1, "4Gi", "2Gi")], {}, prom)
    with pytest.raises(ActionError) as err:
        await actions._gpu_capable("big", "", read_state({"pod_name": "jupyter-big"}))
    assert err.value.status == 409
    assert err.value.message.startswith("big is left running: staging its 3.0 GiB of GPU")
    assert "(4.0 GiB limit, 1.0 GiB in use, 3.0 GiB free)" in err.value.message
    prom.gpu_memory[key] = 3 * GIB  # fits now, exactly
    await actions._gpu_capable("big", "", read_state({"pod_name": "jupyter-big"}))
    del prom.gpu_memory[key]  # no sample: never suspended
    with pytest.raises(ActionError) as err:
        await actions._gpu_capable("big", "", read_state({"pod_name": "jupyter-big"}))
    assert "GPU memory it uses is unknown" in err.value.message


# ---- Prometheus: the GPU memory query's answers ----------------------------------------------


class Canned(PrometheusReader):
    def __init__(self, answers: dict) -> None:  # no client: nothing is queried
        self.answers, self.queries_total = answers, 0

    async def query(self, name, text, at=None):
        self.queries_total += 1
        return self.answers.get(name, [])


QUERIES = build_queries(MetricNames(), PodSelector("jhub"), cpu_window=3600, gpu_window=1800)


def sample(value: str) -> list:
    return [{"metric": {"namespace": "jhub", "pod": "jupyter-a"}, "value": [1.7e9, value]}]


async def test_gpu_memory_is_parsed_and_a_malformed_answer_fails_safe():
    readings = await Canned({"gpu_memory": sample("1073741824")}).read(
        QUERIES, MetricNames(), 1.7e9
    )
    assert readings.gpu_memory == {("jhub", "jupyter-a"): GIB}
    for bad in ({"oops": 1}, sample("lots")):
        with pytest.raises(MetricsUnavailable) as err:
            await Canned({"gpu_memory": bad}).read(QUERIES, MetricNames(), 1.7e9)
        assert err.value.category == "malformed"
        with pytest.raises(MetricsUnavailable) as err:
            await Canned({"gpu_memory": bad}).gpu_staging(QUERIES, MetricNames())
        assert err.value.category == "malformed"
    reader = Canned({"gpu_memory": sample("1048576"), "memory_ratio": sample("0.5")})
    gpu, ratio = await reader.gpu_staging(QUERIES, MetricNames())
    assert (gpu, ratio) == ({("jhub", "jupyter-a"): MIB}, {("jhub", "jupyter-a"): 0.5})
    assert reader.queries_total == 2
