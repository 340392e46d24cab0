"""The scheduler's decisions, as plain functions of pods and nodes."""

from jhub_suspend.localcluster.scheduler import (
    holds_resources,
    is_pending_unbound,
    matches_node_selection,
    pod_requests,
    schedule,
    tolerates_taints,
)


def node(name, cpu="2", memory="4Gi", gpus=0, labels=None, taints=None):
    alloc = {"cpu": cpu, "memory": memory}
    if gpus:
        alloc["nvidia.com/gpu"] = str(gpus)
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": taints or []},
        "status": {"allocatable": alloc},
    }


def pod(name, cpu=None, memory=None, gpu=None, node_name=None, phase="Pending", **spec):
    requests = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = memory
    limits = {"nvidia.com/gpu": gpu} if gpu else {}
    container = {"name": "c", "image": "x", "resources": {"requests": requests, "limits": limits}}
    spec = {"containers": [container], **spec}
    if node_name:
        spec["nodeName"] = node_name
    return {
        "metadata": {"name": name, "namespace": "default", "uid": name + "-uid"},
        "spec": spec,
        "status": {"phase": phase},
    }


def test_requests_sum_containers_and_take_limits_as_requests():
    p = pod("a", cpu="500m", memory="1Gi", gpu="1")
    p["spec"]["containers"].append(
        {"name": "d", "image": "x", "resources": {"requests": {"cpu": "250m"}}}
    )
    p["spec"]["initContainers"] = [
        {"name": "i", "image": "x", "resources": {"requests": {"cpu": "2"}}}
    ]
    assert pod_requests(p) == {"cpu": 2.0, "memory": 1024**3, "nvidia.com/gpu": 1.0}


def test_fits_on_the_node_with_most_room():
    nodes = [node("small", cpu="1"), node("big", cpu="4")]
    assert schedule(pod("a", cpu="500m"), nodes, []).node == "big"


def test_a_pod_that_does_not_fit_gets_the_schedulers_message():
    nodes = [node("n1", cpu="1"), node("gpu", cpu="8", gpus=1, labels={"gpu": "yes"})]
    running = [pod("busy", cpu="800m", node_name="n1", phase="Running")]
    want = pod("a", cpu="500m", nodeSelector={"pool": "cpu"})
    decision = schedule(want, nodes, running)
    assert decision.node is None
    assert decision.message == (
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
    )
    decision = schedule(pod("b", cpu="500m"), [nodes[0]], running)
    assert decision.node is None
    assert decision.message == "0/1 nodes are available: 1 Insufficient cpu."


def test_room_frees_when_a_pod_finishes_or_leaves():
    nodes = [node("n1", cpu="1")]
    waiting = pod("w", cpu="750m")
    busy = pod("busy", cpu="500m", node_name="n1", phase="Running")
    assert schedule(waiting, nodes, [busy]).node is None
    terminating = {**busy, "metadata": {**busy["metadata"], "deletionTimestamp": "now"}}
    # A terminating pod still holds its room, as in Kubernetes.
    assert schedule(waiting, nodes, [terminating]).node is None
    assert schedule(waiting, nodes, [{**busy, "status": {"phase": "Succeeded"}}]).node == "n1"
    assert schedule(waiting, nodes, []).node == "n1"


def test_gpus_are_counted():
    nodes = [node("gpu", gpus=1)]
    holder = pod("g1", gpu="1", node_name="gpu", phase="Running")
    assert schedule(pod("g2", gpu="1"), nodes, []).node == "gpu"
    decision = schedule(pod("g2", gpu="1"), nodes, [holder])
    assert decision.message == "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."


def test_node_affinity_terms_are_ored_and_expressions_anded():
    n = node("a100", labels={"nvidia.com/gpu.product": "A100", "kubernetes.io/arch": "amd64"})
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "x", "operator": "Exists"}]},
                    {
                        "matchExpressions": [
                            {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["A100"]},
                            {"key": "kubernetes.io/arch", "operator": "NotIn", "values": ["arm64"]},
                        ]
                    },
                ]
            }
        }
    }
    assert matches_node_selection(pod("p", affinity=affinity), n)
    affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][
        1
    ]["matchExpressions"][0]["values"] = ["H100"]
    assert not matches_node_selection(pod("p", affinity=affinity), n)


def test_taints_need_tolerations():
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    n = node("gpu", taints=[taint])
    assert not tolerates_taints(pod("p"), n)
    tol = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert tolerates_taints(pod("p", tolerations=tol), n)
    decision = schedule(pod("p", cpu="1"), [n], [])
    assert decision.message == "0/1 nodes are available: 1 node(s) had untolerated taint."


def test_which_pods_are_pending_and_which_hold_room():
    assert is_pending_unbound(pod("a"))
    assert not is_pending_unbound(pod("a", node_name="n"))
    assert not is_pending_unbound(pod("a", schedulerName="other"))
    assert holds_resources(pod("a", node_name="n", phase="Running"))
    assert not holds_resources(pod("a", node_name="n", phase="Failed"))
    assert not holds_resources(pod("a"))
