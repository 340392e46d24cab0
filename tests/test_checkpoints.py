"""The checkpoint record and the restore driver's pure parts."""

import datetime

import pytest
from cryptography.fernet import Fernet
from jupyterhub.crypto import CryptKeeper
from kubernetes_asyncio.client import V1Container, V1ObjectMeta, V1Pod, V1PodSpec

from jhub_suspend.checkpoints import (
    GPU_UUIDS_ANNOTATION,
    ORIGINAL_IMAGE_ANNOTATION,
    Checkpoint,
    LastError,
    NodeFacts,
    Status,
    image_annotations,
    image_reference,
    node_facts,
    original_image,
    pod_gpu_count,
)
from jhub_suspend.restore import (
    CheckpointImageDriver,
    RestoreFailed,
    compatibility_affinity,
    merge_affinity,
    restore_failure,
)
from jhub_suspend.state import STATE_KEY, read_state

NOW = datetime.datetime(2026, 11, 30, 1, 2, 3, tzinfo=datetime.UTC)
DIGEST = "sha256:" + "b" * 64


def record(**kw):
    values = dict(
        image=f"reg:5000/jhub-suspend/default/jupyter-alice@{DIGEST}",
        digest=DIGEST,
        size=123_000_000,
        created="2026-11-30T01:02:03Z",
        reason="idle",
        container="notebook",
        original_image="jupyter/base:1",
        node=NodeFacts("gpu-1", "amd64", "NVIDIA-A100", 1, "cdi", 2, ("GPU-1",)),
    )
    values.update(kw)
    return Checkpoint(**values)


@pytest.fixture
def crypt_key():
    keeper = CryptKeeper.instance()
    old = keeper.keys
    keeper.keys = [Fernet.generate_key()[:32]]
    try:
        yield keeper
    finally:
        keeper.keys = old


def test_state_round_trip_without_a_crypt_key():
    CryptKeeper.instance().keys = []
    c = record()
    state = c.to_state()
    assert state["image"] == c.image
    assert Checkpoint.from_state(state) == c


def test_image_reference_is_sealed_with_the_hubs_crypt_key(crypt_key):
    c = record()
    state = c.to_state()
    assert state["image"].startswith("fernet:")
    assert "jupyter-alice" not in state["image"]
    assert Checkpoint.from_state(state) == c
    crypt_key.keys = []
    with pytest.raises(ValueError, match="JUPYTERHUB_CRYPT_KEY"):
        Checkpoint.from_state(state)


def test_unknown_state_keys_from_a_newer_version_are_ignored():
    state = {**record().to_state(seal=False), "future_field": 1}
    assert Checkpoint.from_state(state).digest == DIGEST


def test_statuses_decide_what_is_restorable():
    assert record().restorable
    assert record(status=Status.SUSPENDED).restorable
    for status in (Status.RESTORING, Status.RESTORED, Status.RESTORE_FAILED, Status.DISCARDED):
        assert not record(status=status).restorable


def test_image_reference_and_annotations():
    ref = image_reference("reg:5000/jhub-suspend/", "jhub", "jupyter-Alice_2", NOW)
    assert ref == "reg:5000/jhub-suspend/jhub/jupyter-alice_2:20261130T010203Z"
    ann = image_annotations(
        user="alice",
        server_name="gpu",
        namespace="jhub",
        pod="jupyter-alice--gpu",
        original_image="img",
        reason="idle",
        now=NOW,
    )
    assert ann["jhub-suspend.jupyter.org/user"] == "alice"
    assert ann["jhub-suspend.jupyter.org/server-name"] == "gpu"
    assert ann["jhub-suspend.jupyter.org/created"] == "2026-11-30T01:02:03Z"


def test_node_facts_and_gpu_count():
    node = {
        "metadata": {
            "name": "g1",
            "labels": {"kubernetes.io/arch": "arm64", "nvidia.com/gpu.product": "H100"},
        }
    }
    assert node_facts(node, 2) == NodeFacts("g1", "arm64", "H100", 2)
    # A CPU pod on a GPU node does not need a GPU node to come back.
    assert node_facts(node, 0) == NodeFacts("g1", "arm64", "", 0)
    pod = {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "2"}}}]}}
    assert pod_gpu_count(pod) == 2


def test_compatibility_affinity_requires_arch_and_gpu_product():
    aff = compatibility_affinity(NodeFacts("n", "amd64", "A100", 1, "cdi", 2, ("GPU-a",)), [])
    terms = aff["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["A100"]},
            ]
        }
    ]
    assert compatibility_affinity(NodeFacts(), []) == {}


def test_merge_affinity_adds_the_requirements_to_every_term():
    existing = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "a", "operator": "Exists"}]},
                    {"matchExpressions": [{"key": "b", "operator": "Exists"}]},
                ]
            }
        },
        "podAntiAffinity": {"x": 1},
    }
    merged = merge_affinity(existing, compatibility_affinity(NodeFacts("", "amd64"), []))
    terms = merged["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert all(t["matchExpressions"][-1]["key"] == "kubernetes.io/arch" for t in terms)
    assert merged["podAntiAffinity"] == {"x": 1}
    assert (
        len(
            existing["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"
            ][0]["matchExpressions"]
        )
        == 1
    )  # the input is not changed


def test_checkpoint_image_driver_swaps_the_image_and_pins_the_node_kind():
    pod = V1Pod(
        metadata=V1ObjectMeta(name="jupyter-alice"),
        spec=V1PodSpec(
            containers=[V1Container(name="notebook", image="jupyter/base:1")],
            node_selector={"pool": "user"},
        ),
    )
    driver = CheckpointImageDriver(
        node_selector_terms=[{"key": "site", "operator": "In", "values": ["a"]}]
    )
    out = driver.apply(pod, record(), "notebook")
    assert out.spec.containers[0].image == record().image
    expressions = out.spec.affinity["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"][0]["matchExpressions"]
    assert [e["key"] for e in expressions] == [
        "kubernetes.io/arch",
        "nvidia.com/gpu.product",
        "site",
    ]
    assert out.spec.node_selector == {"pool": "user"}
    # the restored pod says which image it really runs from, for its next checkpoint
    assert out.metadata.annotations[ORIGINAL_IMAGE_ANNOTATION] == record().original_image
    # and, for a CDI GPU checkpoint, which GPUs it held (for the runtime's device map)
    assert out.metadata.annotations[GPU_UUIDS_ANNOTATION] == "GPU-1"
    with pytest.raises(RestoreFailed, match="no container 'other'"):
        driver.apply(pod, record(), "other")


def test_a_restored_pods_next_checkpoint_names_the_users_image():
    """Suspended a second time, the record must not name the previous checkpoint image."""
    container = {"name": "notebook", "image": "reg/jhub-suspend/default/jupyter-alice@sha256:c"}
    restored = {"metadata": {"annotations": {ORIGINAL_IMAGE_ANNOTATION: "jupyter/base:1"}}}
    assert original_image(restored, container) == "jupyter/base:1"
    fresh = {"metadata": {"name": "jupyter-alice"}}
    assert original_image(fresh, {"name": "notebook", "image": "jupyter/base:1"}) == (
        "jupyter/base:1"
    )


@pytest.mark.parametrize(
    "status, message, detail",
    [
        (
            {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/2 nodes are available: 2 node(s) didn't match Pod's "
                        "node affinity/selector.",
                    }
                ]
            },
            "no node has the same kind of CPU and GPU",
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
        ),
        (
            {
                "containerStatuses": [
                    {
                        "name": "notebook",
                        "state": {
                            "waiting": {"reason": "ErrImagePull", "message": "manifest unknown"}
                        },
                    }
                ]
            },
            "the saved checkpoint no longer exists in the registry",
            "ErrImagePull: manifest unknown",
        ),
        (
            {
                "containerStatuses": [
                    {
                        "name": "notebook",
                        "state": {
                            "waiting": {"reason": "ErrImagePull", "message": "connection refused"}
                        },
                    }
                ]
            },
            "the saved checkpoint could not be downloaded",
            "ErrImagePull: connection refused",
        ),
        (
            {
                "containerStatuses": [
                    {
                        "name": "notebook",
                        "state": {
                            "waiting": {
                                "reason": "CreateContainerError",
                                "message": "criu restore failed: File /home/x has bad size 10 (expect 4)",
                            }
                        },
                    }
                ]
            },
            "a file it had open is gone or has changed since it was saved",
            "CreateContainerError: criu restore failed: File /home/x has bad size 10 (expect 4)",
        ),
        (
            {"containerStatuses": [{"name": "notebook", "state": {"terminated": {"exitCode": 1}}}]},
            "the restored server stopped at once",
            "exit code 1",
        ),
        (
            {"phase": "Failed", "reason": "Evicted"},
            "the restored server stopped at once",
            "Evicted",
        ),
    ],
)
def test_restore_failure_is_read_from_the_pod_status(status, message, detail):
    failure = restore_failure({"status": status}, "notebook")
    assert (str(failure), failure.detail) == (message, detail)


@pytest.mark.parametrize(
    "status",
    [
        {"phase": "Pending"},
        {
            "containerStatuses": [
                {"name": "notebook", "state": {"waiting": {"reason": "ContainerCreating"}}}
            ]
        },
        {
            "containerStatuses": [
                {"name": "sidecar", "state": {"waiting": {"reason": "ErrImagePull"}}}
            ]
        },
        {
            # a compatible node is full: wait, room may come (capacity pressure suspends)
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 1 Insufficient nvidia.com/gpu, "
                    "2 node(s) didn't match Pod's node affinity/selector.",
                }
            ]
        },
    ],
)
def test_a_restore_that_may_still_succeed_is_not_a_failure(status):
    assert restore_failure({"status": status}, "notebook") is None


# ---- the spawner state, as the service reads it -------------------------------------------------


def test_the_service_reads_a_state_with_the_image_still_sealed(crypt_key):
    sealed = record().to_state()
    state = read_state({"pod_name": "p", "namespace": "ns", STATE_KEY: {"checkpoint": sealed}})
    assert (state.pod_name, state.namespace, state.problems) == ("p", "ns", ())
    assert state.checkpoint is not None and state.checkpoint.digest == DIGEST
    assert state.checkpoint.image == sealed["image"] != record().image


def broken(**kw):
    return {**record().to_state(seal=False), **kw}


LAST_ERROR = {"operation": "suspend", "message": "m", "time": "2026-11-30T01:02:03Z"}


@pytest.mark.parametrize(
    "state, left_out",
    [
        (["not", "an", "object"], "the state is a list"),
        ("text", "the state is a str"),
        ({"pod_name": 5}, "pod_name is a int"),
        ({STATE_KEY: [1]}, "jhub_suspend is a list"),
        ({STATE_KEY: {"checkpoint": "x"}}, "checkpoint record is a str"),
        ({STATE_KEY: {"checkpoint": broken(status=["suspended"])}}, "'status'"),
        ({STATE_KEY: {"checkpoint": broken(size="big")}}, "'size'"),
        ({STATE_KEY: {"checkpoint": {"status": "suspended"}}}, "no 'image'"),
        ({STATE_KEY: {"last_error": ["x"]}}, "last error is a list"),
        ({STATE_KEY: {"last_error": {**LAST_ERROR, "operation": 1}}}, "'operation'"),
    ],
)
def test_what_the_state_reader_cannot_read_is_left_out_and_named(state, left_out):
    read = read_state(state)
    assert any(left_out in p for p in read.problems), read.problems
    assert read.checkpoint is None and read.last_error is None


def test_the_rest_of_a_state_is_read_all_the_same():
    read = read_state(
        {"pod_name": "p", STATE_KEY: {"checkpoint": {"size": 1}, "last_error": LAST_ERROR}}
    )
    assert read.pod_name == "p" and read.last_error == LastError(**LAST_ERROR)
    assert read.checkpoint is None and len(read.problems) == 1
