"""GPU-safe restore targeting (issue 13, "Restore"): what a GPU checkpoint records, where it
may be restored (CDI: any node of the product, remapped by UUID; legacy or unknown: only a pod
that held all its node's GPUs, onto a node with as many), the spawner's clean refusal, and the
local cluster's SIMULATED CUDA restore rules."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from conftest import checkpoint_record
from kubernetes_asyncio.client import V1Node, V1ObjectMeta
from test_spawner_restore import FRESH_URL, spawner
from test_spawner_restore import cluster as cluster

from jhub_suspend.agent.checkpointer import read_device_state
from jhub_suspend.agent.protocol import CheckpointResult, gpu_facts_from_json
from jhub_suspend.checkpoints import (
    GPU_UUIDS_ANNOTATION,
    Checkpoint,
    NodeFacts,
    Status,
    node_facts,
)
from jhub_suspend.gpu import devices_from_spec
from jhub_suspend.localcluster.gpurestore import (
    gpu_uuid,
    marker_indices,
    read_marker,
    simulated_cuda_restore,
)
from jhub_suspend.restore import (
    CheckpointImageDriver,
    RestoreFailed,
    compatibility_affinity,
    device_map,
    gpu_restore_placement,
)
from jhub_suspend.spawner import SuspendFailed

A100 = "NVIDIA-A100-SXM4-40GB"
PRODUCT = {"key": "nvidia.com/gpu.product", "operator": "In", "values": [A100]}


def facts(mode: str, held: int, of: int, devices: tuple[str, ...] = ()) -> NodeFacts:
    return NodeFacts("g1", "amd64", A100, held, mode, of, devices)


# ---- what a checkpoint records ------------------------------------------------------------


def test_node_facts_record_the_device_mode_node_count_and_devices():
    node = {
        "metadata": {
            "name": "g1",
            "labels": {"nvidia.com/gpu.product": A100, "nvidia.com/gpu.count": "4"},
        }
    }
    got = node_facts(node, 2, device_mode="cdi", devices=("GPU-a", "GPU-b"))
    assert got == NodeFacts("g1", "", A100, 2, "cdi", 4, ("GPU-a", "GPU-b"))
    # an unknown mode, or a count label that is not a number, reads as unknown
    node["metadata"]["labels"]["nvidia.com/gpu.count"] = "many"
    assert node_facts(node, 1, device_mode="mig").gpu_device_mode == ""
    assert node_facts(node, 1).node_gpu_count == 0
    # a CPU pod records no GPU facts, whatever the agent said
    assert node_facts(node, 0, device_mode="cdi", devices=("GPU-a",)) == NodeFacts("g1")


def test_gpu_facts_round_trip_and_old_records_stay_readable():
    ck = checkpoint_record(node=facts("cdi", 1, 2, ("GPU-x-0001",)))
    state = ck.to_state(seal=False)
    assert state["node"]["gpu_devices"] == ("GPU-x-0001",)
    assert Checkpoint.from_state(json.loads(json.dumps(state)), unseal=False) == ck
    # a record written before these fields: unknown mode and devices
    del state["node"]["gpu_device_mode"], state["node"]["gpu_devices"]
    del state["node"]["node_gpu_count"]
    old = Checkpoint.from_state(state, unseal=False).node
    assert (old.gpu_device_mode, old.node_gpu_count, old.gpu_devices) == ("", 0, ())
    state["node"]["gpu_devices"] = "GPU-x"
    with pytest.raises(ValueError, match="gpu_devices"):
        Checkpoint.from_state(state, unseal=False)


RESULT = {
    "image": "reg/x@sha256:" + "a" * 64,
    "digest": "sha256:" + "a" * 64,
    "size": 1,
    "archive_bytes": 2,
    "timings": {"total": 1.0},
}


def test_the_agents_gpu_facts_are_parsed_and_malformed_ones_read_as_unknown():
    good = {"device_mode": "cdi", "devices": ["GPU-1", "GPU-2"]}
    got = CheckpointResult.from_json({**RESULT, "gpu": good})
    assert (got.gpu_device_mode, got.gpu_devices) == ("cdi", ("GPU-1", "GPU-2"))
    assert CheckpointResult.from_json(got.to_json()) == got
    # an older agent says nothing: unknown
    old = CheckpointResult.from_json(RESULT)
    assert (old.gpu_device_mode, old.gpu_devices) == ("", ())
    assert "gpu" not in old.to_json()
    assert gpu_facts_from_json({"device_mode": "legacy", "devices": ["0"]}) == ("legacy", ("0",))
    assert gpu_facts_from_json({"device_mode": "mps", "devices": []}) == ("", ())
    assert gpu_facts_from_json({"device_mode": "cdi", "devices": ["a b"]}) == ("cdi", ())
    assert gpu_facts_from_json({"device_mode": "cdi", "devices": ["GPU-1", "GPU-1"]}) == (
        "cdi",
        (),
    )
    assert gpu_facts_from_json({"device_mode": "cdi", "devices": "GPU-1"}) == ("cdi", ())
    assert gpu_facts_from_json(["cdi"]) == ("", ())


def test_the_devices_a_container_held_come_from_its_spec():
    env = {"process": {"env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=GPU-a,GPU-b"]}}
    assert devices_from_spec(env) == ("GPU-a", "GPU-b")
    # "all" names no GPU: CDI annotations, then CDI-injected device nodes
    cdi = {
        "process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]},
        "annotations": {"cdi.k8s.io/nvidia-device-plugin_x": "nvidia.com/gpu=GPU-c"},
        "linux": {"devices": [{"path": "/dev/nvidia3"}]},
    }
    assert devices_from_spec(cdi) == ("GPU-c",)
    del cdi["annotations"]
    nodes = {"path": "/dev/nvidiactl"}, {"path": "/dev/nvidia3"}, {"path": "/dev/nvidia-uvm"}
    cdi["linux"]["devices"] = list(nodes)
    assert devices_from_spec(cdi) == ("3",)
    assert devices_from_spec({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=void"]}}) == ()
    assert devices_from_spec("not a spec") == ()


def test_the_agent_reads_the_devices_from_the_archives_spec_dump(tmp_path):
    archive = tmp_path / "checkpoint.tar"
    spec = json.dumps({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=GPU-n-0001"]}}).encode()
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("spec.dump")
        info.size = len(spec)
        tar.addfile(info, io.BytesIO(spec))
    assert read_device_state(str(archive)).devices == ("GPU-n-0001",)


# ---- where a GPU checkpoint may be restored --------------------------------------------------


def test_a_cpu_checkpoint_has_no_gpu_placement():
    assert gpu_restore_placement(NodeFacts("n", "amd64")).expressions == []


def test_cdi_goes_to_any_node_of_the_product_with_the_old_uuids():
    placement = gpu_restore_placement(facts("cdi", 1, 2, ("GPU-a",)))
    assert placement.expressions == [PRODUCT]
    assert placement.annotations == {GPU_UUIDS_ANNOTATION: "GPU-a"}
    assert "remapped by UUID" in placement.reason


@pytest.mark.parametrize(
    "mode, devices, words",
    [
        ("legacy", ("0",), "legacy device mode"),
        ("", (), "unknown device mode, read as legacy"),
        # CDI without UUIDs cannot be remapped: the legacy rule
        ("cdi", ("0",), "without the GPUs' UUIDs"),
    ],
)
def test_legacy_goes_only_to_nodes_with_as_many_gpus_when_the_pod_held_them_all(
    mode, devices, words
):
    placement = gpu_restore_placement(facts(mode, 2, 2, devices))
    count = {"key": "nvidia.com/gpu.count", "operator": "In", "values": ["2"]}
    assert placement.expressions == [PRODUCT, count]
    assert placement.annotations == {}
    assert words in placement.reason


@pytest.mark.parametrize("mode", ["legacy", ""])
@pytest.mark.parametrize("of", [2, 0])  # 0: the node's count is unknown
def test_legacy_with_some_of_a_nodes_gpus_has_no_safe_target(mode, of):
    with pytest.raises(RestoreFailed) as err:
        gpu_restore_placement(facts(mode, 1, of, ("GPU-a",)))
    assert "no node can safely restore its GPU state" in str(err.value)
    assert "no safe restore target" in err.value.detail
    assert f"held 1 GPU(s) of {of or 'an unknown number of'}" in err.value.detail
    assert "kept for the administrator" in err.value.detail


def test_a_gpu_checkpoint_without_a_product_has_no_safe_target():
    with pytest.raises(RestoreFailed, match="which GPU model"):
        gpu_restore_placement(NodeFacts("g1", "amd64", "", 1, "cdi", 1, ("GPU-a",)))


def test_the_affinity_carries_the_placement():
    aff = compatibility_affinity(facts("legacy", 1, 1, ("0",)), [])
    (term,) = aff["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    keys = [e["key"] for e in term["matchExpressions"]]
    assert keys == ["kubernetes.io/arch", "nvidia.com/gpu.product", "nvidia.com/gpu.count"]


def test_device_map():
    assert device_map(["GPU-a", "GPU-b"], ["GPU-c", "GPU-a"]) == "GPU-a=GPU-c,GPU-b=GPU-a"
    for old, new in [
        ([], []),
        (["GPU-a"], ["GPU-b", "GPU-c"]),
        (["GPU-a", "GPU-a"], ["GPU-b", "GPU-c"]),
        (["0"], ["GPU-b"]),
        (["GPU-a=b"], ["GPU-b"]),
    ]:
        with pytest.raises(ValueError):
            device_map(old, new)


# ---- the spawner refuses cleanly ------------------------------------------------------------


async def test_a_restore_without_a_safe_target_starts_fresh_and_keeps_the_checkpoint(cluster):
    s = spawner(cluster, restore_driver_class=CheckpointImageDriver)
    unsafe = checkpoint_record(node=facts("legacy", 1, 2, ("0",)))
    s.checkpoint = unsafe
    assert await s.start() == FRESH_URL
    # the driver refused in the restoring pod's manifest, so no restoring pod was made
    assert cluster.starts == ["restore", "fresh"]
    assert cluster.restored_from == []
    assert s.checkpoint == unsafe.with_status(Status.RESTORE_FAILED)
    assert s.agent.deleted == []  # the image is kept for the admin
    assert s.last_error.operation == "restore"
    assert "no node can safely restore its GPU state" in s.last_error.message
    assert "fresh server" in s.last_error.message
    assert "no safe restore target" in s.last_error.detail


class CheckpointingAgent:
    """A node agent whose checkpoint reports ``devices`` in CDI device mode."""

    def __init__(self, devices: tuple[str, ...]):
        self.devices = devices
        self.deleted: list[str] = []

    async def checkpoint(self, namespace, pod, container, ref, annotations, gpus=0):
        repo = ref.rsplit(":", 1)[0]
        return CheckpointResult(
            f"{repo}@sha256:{'a' * 64}", f"sha256:{'a' * 64}", 1, 1, {}, "cdi", self.devices
        )

    async def delete_image(self, image):
        self.deleted.append(image)


@pytest.mark.parametrize(
    "devices, restorable",
    [(("GPU-n-0001",), True), (("1",), False)],  # by UUID; by index: nothing to remap by
    ids=["uuids", "indices"],
)
async def test_a_checkpoint_no_node_may_restore_is_a_failed_suspension(
    cluster, devices, restorable
):
    s = spawner(cluster, checkpoint_repository="registry.test/ck")
    labels = {"nvidia.com/gpu.product": A100, "nvidia.com/gpu.count": "2"}

    async def read_node(name):
        return V1Node(metadata=V1ObjectMeta(name=name, labels=labels))

    s.api.read_node = read_node
    agent = CheckpointingAgent(devices)
    s.agent_for = lambda node, host_ip: agent
    pod = {
        "metadata": {"name": s.pod_name, "namespace": "default"},
        "spec": {
            "nodeName": "n",
            "containers": [
                {"name": "notebook", "image": "nb", "resources": {"limits": {"nvidia.com/gpu": 1}}}
            ],
        },
        "status": {"hostIP": "10.0.0.9"},
    }
    if restorable:
        checkpoint = await s.suspend(pod, "idle")
        assert checkpoint.node.gpu_devices == devices and agent.deleted == []
        return
    with pytest.raises(SuspendFailed, match="could be restored nowhere") as err:
        await s.suspend(pod, "idle")
    assert "no safe restore target" in str(err.value)
    assert agent.deleted == [f"registry.test/ck/default/{s.pod_name}@sha256:{'a' * 64}"]


# ---- the local cluster's SIMULATED CUDA restore ------------------------------------------------


def marker(node: str, indices: list[int], mode: str = "legacy") -> dict:
    return {
        "simulated": True,
        "gpus": [gpu_uuid(node, i) for i in indices],
        "indices": indices,
        "device_mode": mode,
    }


def test_simulated_legacy_restore_needs_the_same_indices():
    assert simulated_cuda_restore(marker("a", [0]), "b", "legacy", [0]).ok
    failed = simulated_cuda_restore(marker("a", [1]), "a", "legacy", [0])
    assert not failed.ok
    assert "SIMULATED" in failed.message and "CUDA_ERROR_NOT_SUPPORTED" in failed.message
    assert "[1]" in failed.message and "[0]" in failed.message


def test_simulated_cdi_restore_remaps_by_uuid():
    got = simulated_cuda_restore(marker("a", [1], "cdi"), "b", "cdi", [0])
    assert got.ok and got.device_map == "GPU-a-0001=GPU-b-0000"


@pytest.mark.parametrize("mode", ["cdi", "legacy"])
def test_simulated_restore_with_another_gpu_count_fails(mode):
    got = simulated_cuda_restore(marker("a", [0, 1], mode), "b", mode, [0])
    assert not got.ok and "holds 2 GPU(s), the container has 1" in got.message


def test_the_marker_indices_come_from_the_uuids_of_an_older_marker():
    assert marker_indices({"gpus": ["GPU-a-0003"]}) == [3]
    assert marker_indices({"gpus": ["GPU-odd"]}) is None


def test_the_marker_is_read_back_from_the_runtimes_content_store(tmp_path):
    import hashlib

    blobs = tmp_path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    buf = io.BytesIO()
    data = json.dumps(marker("a", [0])).encode()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("jhub-suspend-simulated-cuda.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = put(buf.getvalue())
    manifest = put(json.dumps({"layers": [{"digest": layer}]}).encode())
    assert read_marker(str(tmp_path), manifest)["indices"] == [0]
    assert read_marker(str(tmp_path), "sha256:" + "0" * 64) is None
    assert read_marker(str(tmp_path), "sha256:../../etc") is None
