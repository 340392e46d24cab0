"""The exposition builders of jhub_suspend.localcluster.metrics: pure, no servers."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jhub_suspend.localcluster.metrics import (
    ContainerUsage,
    GpuSample,
    MetricFamily,
    cadvisor_metrics,
    dcgm_metrics,
    escape_label_value,
    format_value,
    kube_state_metrics,
    render,
    resource_value_and_unit,
    sanitize_label_name,
)


def families(text: str) -> dict[str, Any]:
    """Parse exposition text with the reference parser; fails on invalid text."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    ]


def pod(
    name: str = "jupyter-alice",
    *,
    namespace: str = "default",
    phase: str = "Running",
    node: str = "node-a",
    requests: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    owner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-{name}"}
    if labels:
        meta["labels"] = labels
    if owner:
        meta["ownerReferences"] = [owner]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "notebook",
                    "image": "jupyter/base",
                    "resources": {"requests": requests or {}, "limits": limits or {}},
                }
            ],
        },
        "status": {"phase": phase, "hostIP": "10.0.0.1", "podIP": "10.244.0.5"},
    }


@pytest.mark.parametrize(
    "resource, quantity, expected",
    [
        ("cpu", "500m", (0.5, "core")),
        ("cpu", "2", (2.0, "core")),
        ("cpu", "0.0001", (0.001, "core")),  # MilliValue() rounds up
        ("memory", "1Gi", (float(2**30), "byte")),
        ("memory", "129M", (129e6, "byte")),
        ("memory", "0.5", (1.0, "byte")),  # Value() rounds up
        ("ephemeral-storage", "10Gi", (float(10 * 2**30), "byte")),
        ("hugepages-2Mi", "4Mi", (float(4 * 2**20), "byte")),
        ("nvidia.com/gpu", "1", (1.0, "integer")),
        ("pods", "110", (110.0, "integer")),
        ("kubernetes.io/something", "1", None),
        ("unknown", "1", None),
    ],
)
def test_resource_value_and_unit(
    resource: str, quantity: str, expected: tuple[float, str] | None
) -> None:
    assert resource_value_and_unit(resource, quantity) == expected


def test_sanitize_label_name() -> None:
    assert sanitize_label_name("nvidia.com/gpu") == "nvidia_com_gpu"
    assert sanitize_label_name("app.kubernetes.io/name") == "app_kubernetes_io_name"
    assert sanitize_label_name("hub.jupyter.org/username") == "hub_jupyter_org_username"


# --- exposition primitives --------------------------------------------------------------------


def test_escape_label_value() -> None:
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_label_value("plain") == "plain"


def test_escaped_values_round_trip_through_the_parser() -> None:
    fam = MetricFamily("x_info", "gauge", "Help with a backslash \\ and\na newline.")
    tricky = 'C:\\path "quoted"\nsecond line'
    fam.add(1, value=tricky)
    text = render([fam])
    assert 'value="C:\\\\path \\"quoted\\"\\nsecond line"' in text
    assert "# HELP x_info Help with a backslash \\\\ and\\na newline." in text
    parsed = families(text)["x_info"]
    assert parsed.samples[0].labels == {"value": tricky}
    assert parsed.documentation == "Help with a backslash \\ and\na newline."


@pytest.mark.parametrize(
    "value, text",
    [
        (1, "1"),
        (1.0, "1"),
        (0.5, "0.5"),
        (1e20, "1e+20"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
        (float("nan"), "NaN"),
        (-3, "-3"),
    ],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


def test_render_orders_samples_and_merges_families() -> None:
    a = MetricFamily("m", "gauge", "M.")
    a.add(2, pod="b")
    b = MetricFamily("m", "gauge", "M.")
    b.add(1, pod="a")
    text = render([a, b])
    assert text == '# HELP m M.\n# TYPE m gauge\nm{pod="a"} 1\nm{pod="b"} 2\n'
    assert render([b, a]) == text  # stable whatever the input order
    with pytest.raises(ValueError, match="both gauge and counter"):
        render([a, MetricFamily("m", "counter", "M.")])
    assert render([]) == ""


# --- cAdvisor ---------------------------------------------------------------------------------


def test_cadvisor_metrics() -> None:
    text = cadvisor_metrics(
        [
            ContainerUsage("default", "jupyter-bob", "notebook", "node-b", 7.25, 2_000_000),
            ContainerUsage("default", "jupyter-alice", "notebook", "node-a", 12.5, 123_456_789),
        ]
    )
    assert "# TYPE container_cpu_usage_seconds_total counter" in text
    assert "# TYPE container_memory_working_set_bytes gauge" in text
    assert (
        'container_cpu_usage_seconds_total{container="notebook",namespace="default",'
        'node="node-a",pod="jupyter-alice"} 12.5'
    ) in text
    # alice before bob: stable ordering
    assert text.index('pod="jupyter-alice"') < text.index('pod="jupyter-bob"')
    fams = families(text)
    # The parser strips _total from a counter family's name, not from its samples.
    assert fams["container_cpu_usage_seconds"].type == "counter"
    assert fams["container_memory_working_set_bytes"].type == "gauge"
    cpu = samples(text, "container_cpu_usage_seconds_total")
    assert {s[0]["pod"]: s[1] for s in cpu} == {"jupyter-alice": 12.5, "jupyter-bob": 7.25}
    mem = samples(text, "container_memory_working_set_bytes")
    assert mem[0] == (
        {"container": "notebook", "namespace": "default", "node": "node-a", "pod": "jupyter-alice"},
        123456789.0,
    )


# --- kube-state-metrics -----------------------------------------------------------------------


def test_kube_state_metrics_requests_limits_and_units() -> None:
    p = pod(
        requests={"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"},
        limits={"cpu": "2", "memory": "2Gi", "nvidia.com/gpu": 1},
    )
    text = kube_state_metrics([p])
    fams = families(text)
    assert fams["kube_pod_container_resource_requests"].type == "gauge"
    req = {
        (s[0]["resource"], s[0]["unit"]): s[1]
        for s in samples(text, "kube_pod_container_resource_requests")
    }
    assert req == {
        ("cpu", "core"): 0.5,
        ("memory", "byte"): 2**30,
        ("nvidia_com_gpu", "integer"): 1,
    }
    lim = {
        (s[0]["resource"], s[0]["unit"]): s[1]
        for s in samples(text, "kube_pod_container_resource_limits")
    }
    assert lim == {("cpu", "core"): 2, ("memory", "byte"): 2**31, ("nvidia_com_gpu", "integer"): 1}
    labels = samples(text, "kube_pod_container_resource_requests")[0][0]
    assert labels == {
        "namespace": "default",
        "pod": "jupyter-alice",
        "uid": "uid-jupyter-alice",
        "container": "notebook",
        "node": "node-a",
        "resource": "cpu",
        "unit": "core",
    }


def test_kube_pod_info_and_phase() -> None:
    owner = {"kind": "ReplicaSet", "name": "hub-123", "controller": True, "uid": "x"}
    text = kube_state_metrics(
        [pod("hub-123-abc", owner=owner), pod("jupyter-carol", phase="Pending", node="")]
    )
    info = {s[0]["pod"]: s for s in samples(text, "kube_pod_info")}
    assert info["hub-123-abc"] == (
        {
            "namespace": "default",
            "pod": "hub-123-abc",
            "uid": "uid-hub-123-abc",
            "host_ip": "10.0.0.1",
            "pod_ip": "10.244.0.5",
            "node": "node-a",
            "created_by_kind": "ReplicaSet",
            "created_by_name": "hub-123",
            "priority_class": "",
            "host_network": "false",
        },
        1.0,
    )
    assert info["jupyter-carol"][0]["created_by_kind"] == "<none>"
    phases = {(s[0]["pod"], s[0]["phase"]): s[1] for s in samples(text, "kube_pod_status_phase")}
    assert len(phases) == 10
    assert phases[("hub-123-abc", "Running")] == 1
    assert phases[("jupyter-carol", "Pending")] == 1
    assert sum(v for (p, _), v in phases.items() if p == "jupyter-carol") == 1
    assert phases[("jupyter-carol", "Running")] == 0


def test_kube_pod_labels() -> None:
    text = kube_state_metrics(
        [pod(labels={"hub.jupyter.org/username": "alice", "component": 'single"user'})]
    )
    [(labels, value)] = samples(text, "kube_pod_labels")
    assert value == 1
    assert labels["label_hub_jupyter_org_username"] == "alice"
    assert labels["label_component"] == 'single"user'
    assert "kube_pod_labels" not in kube_state_metrics([pod()], with_labels=False)


def test_kube_node_status_allocatable() -> None:
    node = {
        "metadata": {"name": "node-a"},
        "status": {
            "allocatable": {"cpu": "1900m", "memory": "7Gi", "pods": "110", "nvidia.com/gpu": "2"},
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110", "nvidia.com/gpu": "2"},
        },
    }
    text = kube_state_metrics([], [node])
    alloc = {
        (s[0]["node"], s[0]["resource"], s[0]["unit"]): s[1]
        for s in samples(text, "kube_node_status_allocatable")
    }
    assert alloc == {
        ("node-a", "cpu", "core"): 1.9,
        ("node-a", "memory", "byte"): 7 * 2**30,
        ("node-a", "pods", "integer"): 110,
        ("node-a", "nvidia_com_gpu", "integer"): 2,
    }
    assert len(samples(text, "kube_node_status_capacity")) == 4


def test_kube_state_metrics_tolerates_sparse_objects() -> None:
    text = kube_state_metrics([{"metadata": {"name": "bare"}}], [{"metadata": {"name": "n"}}])
    fams = families(text)
    assert [s.labels["phase"] for s in fams["kube_pod_status_phase"].samples if s.value == 1] == [
        "Pending"
    ]
    assert fams["kube_pod_container_resource_requests"].samples == []


def test_kube_state_metrics_is_stable() -> None:
    pods = [pod("b", requests={"memory": "1Gi", "cpu": "1"}), pod("a", requests={"cpu": "1"})]
    assert kube_state_metrics(pods) == kube_state_metrics(list(reversed(pods)))


# --- DCGM exporter ----------------------------------------------------------------------------


def test_dcgm_metrics() -> None:
    gpus = [
        GpuSample(
            gpu=1,
            uuid="GPU-b",
            hostname="node-a",
            model_name="NVIDIA A100-SXM4-40GB",
            utilization=0,
        ),
        GpuSample(
            gpu=0,
            uuid="GPU-a",
            hostname="node-a",
            model_name="NVIDIA A100-SXM4-40GB",
            utilization=87.5,
            gr_engine_active=0.42,
            fb_used_mib=1024,
            namespace="default",
            pod="jupyter-alice",
            container="notebook",
        ),
    ]
    text = dcgm_metrics(gpus)
    assert "# TYPE DCGM_FI_DEV_GPU_UTIL gauge" in text
    assert text.index('UUID="GPU-a"') < text.index('UUID="GPU-b"')
    util = samples(text, "DCGM_FI_DEV_GPU_UTIL")
    assert util[0] == (
        {
            "gpu": "0",
            "UUID": "GPU-a",
            "pci_bus_id": "",
            "device": "nvidia0",
            "modelName": "NVIDIA A100-SXM4-40GB",
            "Hostname": "node-a",
            "container": "notebook",
            "namespace": "default",
            "pod": "jupyter-alice",
        },
        87.5,
    )
    assert util[1][0]["pod"] == "" and util[1][1] == 0
    assert samples(text, "DCGM_FI_PROF_GR_ENGINE_ACTIVE") == [(util[0][0], 0.42)]
    assert samples(text, "DCGM_FI_DEV_FB_USED") == [(util[0][0], 1024.0)]


def test_dcgm_metrics_without_gpus_is_valid() -> None:
    text = dcgm_metrics([])
    assert families(text)["DCGM_FI_DEV_GPU_UTIL"].samples == []
    assert "DCGM_FI_PROF_GR_ENGINE_ACTIVE" not in text


def test_pages_combine_into_one_valid_page() -> None:
    page = (
        cadvisor_metrics([ContainerUsage("ns", "p", "c", "n", 1, 2)])
        + kube_state_metrics([pod(requests={"cpu": "1"})])
        + dcgm_metrics([GpuSample(gpu=0, uuid="GPU-0", hostname="n", utilization=5)])
    )
    names = set(families(page))
    assert {
        "container_cpu_usage_seconds",
        "kube_pod_container_resource_requests",
        "kube_pod_status_phase",
        "DCGM_FI_DEV_GPU_UTIL",
    } <= names
