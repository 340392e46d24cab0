"""Prometheus text exposition for the local cluster: pure builders, no IO.

Three exporters are imitated, with the metric and label names of the real ones, so that PromQL
written against a real cluster works unchanged against the local one:

- cAdvisor, as the kubelet serves it on ``/metrics/cadvisor``:
  ``container_cpu_usage_seconds_total`` and ``container_memory_working_set_bytes``.
- kube-state-metrics, from pod and node objects as the Kubernetes API returns them (plain
  dicts): ``kube_pod_container_resource_requests``/``_limits`` (``resource``/``unit`` labels as
  kube-state-metrics v2 writes them: ``cpu``/``core``, ``memory``/``byte``,
  ``nvidia_com_gpu``/``integer``), ``kube_pod_info``, ``kube_pod_status_phase``,
  ``kube_pod_labels`` and ``kube_node_status_allocatable``.
- NVIDIA's dcgm-exporter: ``DCGM_FI_DEV_GPU_UTIL`` (percent) and, when the sample has them,
  ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` (ratio) and ``DCGM_FI_DEV_FB_USED`` (MiB), labelled
  ``gpu, UUID, pci_bus_id, device, modelName, Hostname, container, namespace, pod``.

Each ``*_families`` function returns :class:`MetricFamily` objects, so a server can merge
several exporters into one page; :func:`render` turns families into exposition text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING
from typing import Any, Literal

from ..kubevalues import parse_quantity

MetricType = Literal["counter", "gauge", "untyped"]
Labels = tuple[tuple[str, str], ...]

POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")


def sanitize_label_name(name: str) -> str:
    """Turn a Kubernetes name ("nvidia.com/gpu", "app.kubernetes.io/name") into a label name,
    as kube-state-metrics does: every character outside [a-zA-Z0-9_] becomes "_"."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _is_extended_resource(resource: str) -> bool:
    """Kubernetes' IsExtendedResourceName: a domain-prefixed name outside kubernetes.io."""
    return (
        "/" in resource
        and not resource.startswith("requests.")
        and not resource.split("/", 1)[0].endswith("kubernetes.io")
    )


def resource_value_and_unit(resource: str, quantity: str | int | float) -> tuple[float, str] | None:
    """The value and unit kube-state-metrics exports for one resource, or None for a resource it
    leaves out. cpu is in cores; memory, storage and hugepages in whole bytes (rounded up, like
    Quantity.Value()); pods and extended resources (nvidia.com/gpu) are integers."""
    value = parse_quantity(quantity)
    if resource == "cpu":
        # MilliValue()/1000: rounded up to a whole millicore.
        return float((value * 1000).to_integral_value(rounding=ROUND_CEILING) / 1000), "core"
    whole = float(value.to_integral_value(rounding=ROUND_CEILING))
    if resource in ("memory", "storage", "ephemeral-storage") or resource.startswith(
        ("hugepages-", "attachable-volumes-")
    ):
        return whole, "byte"
    if resource == "pods" or _is_extended_resource(resource):
        return whole, "integer"
    return None


# --- exposition -------------------------------------------------------------------------------


@dataclass
class MetricFamily:
    """One metric family: its HELP and TYPE lines and its samples (labels in the order given)."""

    name: str
    type: MetricType
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, value: float, /, **labels: str) -> None:
        self.samples.append((tuple(labels.items()), value))

    def add_labels(self, labels: Mapping[str, str] | Labels, value: float) -> None:
        items = tuple(labels.items()) if isinstance(labels, Mapping) else tuple(labels)
        self.samples.append((items, value))


def escape_label_value(value: str) -> str:
    r"""Escape a label value for the text format: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    r"""Escape HELP text: backslash and newline (quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: integers without a fraction, +Inf, -Inf, NaN."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def format_sample(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {format_value(value)}"
    body = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)
    return f"{name}{{{body}}} {format_value(value)}"


def render(families: Iterable[MetricFamily]) -> str:
    """Exposition text for families, in the order given; samples sorted by their labels, so the
    output is stable. Families with the same name are merged."""
    merged: dict[str, MetricFamily] = {}
    for fam in families:
        if fam.name in merged:
            prev = merged[fam.name]
            if prev.type != fam.type:
                raise ValueError(f"metric {fam.name} given as both {prev.type} and {fam.type}")
            prev.samples.extend(fam.samples)
        else:
            merged[fam.name] = MetricFamily(fam.name, fam.type, fam.help, list(fam.samples))
    lines: list[str] = []
    for fam in merged.values():
        lines.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in sorted(fam.samples, key=lambda s: s[0]):
            lines.append(format_sample(fam.name, labels, value))
    return "\n".join(lines) + "\n" if lines else ""


# --- cAdvisor ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerUsage:
    """One container's usage, as cAdvisor reports it."""

    namespace: str
    pod: str
    container: str
    node: str
    cpu_seconds: float
    working_set_bytes: float


def cadvisor_families(usages: Iterable[ContainerUsage]) -> list[MetricFamily]:
    cpu = MetricFamily(
        "container_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed in seconds."
    )
    mem = MetricFamily(
        "container_memory_working_set_bytes", "gauge", "Current working set in bytes."
    )
    for u in usages:
        labels = {"container": u.container, "namespace": u.namespace, "node": u.node, "pod": u.pod}
        cpu.add_labels(labels, u.cpu_seconds)
        mem.add_labels(labels, u.working_set_bytes)
    return [cpu, mem]


def cadvisor_metrics(usages: Iterable[ContainerUsage]) -> str:
    """The page a kubelet serves on /metrics/cadvisor."""
    return render(cadvisor_families(usages))


# --- kube-state-metrics -----------------------------------------------------------------------


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _pod_ids(pod: Mapping[str, Any]) -> dict[str, str]:
    meta = _meta(pod)
    return {
        "namespace": meta.get("namespace") or "default",
        "pod": meta.get("name") or "",
        "uid": meta.get("uid") or "",
    }


def _created_by(pod: Mapping[str, Any]) -> tuple[str, str]:
    """The controller owner reference (kind, name) as kube_pod_info reports it, "<none>" when
    there is none."""
    refs = _meta(pod).get("ownerReferences") or []
    chosen = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if not chosen:
        return "<none>", "<none>"
    return chosen.get("kind") or "<none>", chosen.get("name") or "<none>"


def pod_phase(pod: Mapping[str, Any]) -> str:
    """The pod's phase; a pod being deleted on an unreachable node aside, kube-state-metrics
    reports status.phase as it is."""
    return (pod.get("status") or {}).get("phase") or "Pending"


def _container_resource_samples(
    pod: Mapping[str, Any], kind: Literal["requests", "limits"]
) -> list[tuple[Labels, float]]:
    ids = _pod_ids(pod)
    node = (pod.get("spec") or {}).get("nodeName") or ""
    samples: list[tuple[Labels, float]] = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        amounts = (c.get("resources") or {}).get(kind) or {}
        for resource in sorted(amounts):
            converted = resource_value_and_unit(resource, amounts[resource])
            if converted is None:
                continue
            value, unit = converted
            labels: Labels = (
                ("namespace", ids["namespace"]),
                ("pod", ids["pod"]),
                ("uid", ids["uid"]),
                ("container", c.get("name") or ""),
                ("node", node),
                ("resource", sanitize_label_name(resource)),
                ("unit", unit),
            )
            samples.append((labels, value))
    return samples


def kube_state_pod_families(
    pods: Iterable[Mapping[str, Any]], *, with_labels: bool = True
) -> list[MetricFamily]:
    requests = MetricFamily(
        "kube_pod_container_resource_requests",
        "gauge",
        "The number of requested request resource by a container.",
    )
    limits = MetricFamily(
        "kube_pod_container_resource_limits",
        "gauge",
        "The number of requested limit resource by a container.",
    )
    info = MetricFamily("kube_pod_info", "gauge", "Information about pod.")
    phase = MetricFamily("kube_pod_status_phase", "gauge", "The pods current phase.")
    labels_fam = MetricFamily(
        "kube_pod_labels", "gauge", "Kubernetes labels converted to Prometheus labels."
    )
    for pod in pods:
        ids = _pod_ids(pod)
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        requests.samples.extend(_container_resource_samples(pod, "requests"))
        limits.samples.extend(_container_resource_samples(pod, "limits"))
        kind, name = _created_by(pod)
        info.add(
            1,
            namespace=ids["namespace"],
            pod=ids["pod"],
            uid=ids["uid"],
            host_ip=status.get("hostIP") or "",
            pod_ip=status.get("podIP") or "",
            node=spec.get("nodeName") or "",
            created_by_kind=kind,
            created_by_name=name,
            priority_class=spec.get("priorityClassName") or "",
            host_network=str(bool(spec.get("hostNetwork"))).lower(),
        )
        current = pod_phase(pod)
        for p in POD_PHASES:
            phase.add(1 if p == current else 0, **ids, phase=p)
        if with_labels:
            pod_labels = _meta(pod).get("labels") or {}
            extra = {
                f"label_{sanitize_label_name(k)}": str(v) for k, v in sorted(pod_labels.items())
            }
            labels_fam.add_labels({**ids, **extra}, 1)
    families = [requests, limits, info, phase]
    if with_labels:
        families.append(labels_fam)
    return families


def kube_state_node_families(nodes: Iterable[Mapping[str, Any]]) -> list[MetricFamily]:
    allocatable = MetricFamily(
        "kube_node_status_allocatable",
        "gauge",
        "The allocatable for different resources of a node that are available for scheduling.",
    )
    capacity = MetricFamily(
        "kube_node_status_capacity", "gauge", "The capacity for different resources of a node."
    )
    for node in nodes:
        name = _meta(node).get("name") or ""
        status = node.get("status") or {}
        for fam, key in ((allocatable, "allocatable"), (capacity, "capacity")):
            amounts: Mapping[str, Any] = status.get(key) or {}
            for resource in sorted(amounts):
                converted = resource_value_and_unit(resource, amounts[resource])
                if converted is None:
                    continue
                value, unit = converted
                fam.add(value, node=name, resource=sanitize_label_name(resource), unit=unit)
    return [allocatable, capacity]


def kube_state_metrics(
    pods: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]] = (),
    *,
    with_labels: bool = True,
) -> str:
    """A kube-state-metrics page for these pods and nodes."""
    return render(
        [*kube_state_pod_families(pods, with_labels=with_labels), *kube_state_node_families(nodes)]
    )


# --- DCGM exporter ----------------------------------------------------------------------------


@dataclass
class GpuSample:
    """One GPU as dcgm-exporter sees it. ``namespace``/``pod``/``container`` name the pod the GPU
    is assigned to ("" when none). ``utilization`` is DCGM_FI_DEV_GPU_UTIL in percent (0-100),
    ``gr_engine_active`` a ratio (0-1), ``fb_used_mib`` MiB; tests set them directly."""

    gpu: int
    uuid: str
    hostname: str
    model_name: str = "NVIDIA H100 80GB HBM3"
    device: str = ""
    pci_bus_id: str = ""
    utilization: float = 0.0
    gr_engine_active: float | None = None
    fb_used_mib: float | None = None
    namespace: str = ""
    pod: str = ""
    container: str = ""

    def labels(self) -> Labels:
        return (
            ("gpu", str(self.gpu)),
            ("UUID", self.uuid),
            ("pci_bus_id", self.pci_bus_id),
            ("device", self.device or f"nvidia{self.gpu}"),
            ("modelName", self.model_name),
            ("Hostname", self.hostname),
            ("container", self.container),
            ("namespace", self.namespace),
            ("pod", self.pod),
        )


def dcgm_families(samples: Sequence[GpuSample]) -> list[MetricFamily]:
    util = MetricFamily("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).")
    engine = MetricFamily(
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active."
    )
    fb_used = MetricFamily("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).")
    for s in samples:
        util.add_labels(s.labels(), s.utilization)
        if s.gr_engine_active is not None:
            engine.add_labels(s.labels(), s.gr_engine_active)
        if s.fb_used_mib is not None:
            fb_used.add_labels(s.labels(), s.fb_used_mib)
    return [f for f in (util, engine, fb_used) if f.samples or f is util]


def dcgm_metrics(samples: Sequence[GpuSample]) -> str:
    """A dcgm-exporter page for these GPUs."""
    return render(dcgm_families(samples))
