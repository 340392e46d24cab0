"""PromQL for the idle policy: pure query builders and a strict result parser.

Every builder returns ONE query that covers ALL notebook pods at once (selected by namespace and
a pod-name regex), so the number of Prometheus queries per policy cycle is constant in the number
of users. Results are keyed by the Kubernetes ``(namespace, pod)`` labels as named in
:class:`MetricNames`; GPU results are relabelled into those same label names, so a caller joins
every signal on one key.

Signals and units:

* **CPU**: ``rate(cpu_usage)`` summed per pod divided by the pod's summed CPU request, a
  *fraction of the request* (``0.012`` is 1.2 %). The idle check uses the **maximum** of that
  ratio over the idle window, evaluated as a subquery ``max_over_time((...)[window:step])``, and
  the matching ``count_over_time`` tells complete data from gaps.
* **memory**: current working set divided by the memory request (a fraction).
* **GPU**: utilisation in **percent** (0-100), averaged over the pod's GPUs, from
  ``DCGM_FI_DEV_GPU_UTIL`` (already 0-100) or ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` (0-1, multiplied
  by 100 here so one threshold fits both). ``source="auto"`` uses engine-active where the
  exporter provides it and falls back to GPU_UTIL per pod (PromQL ``or``).
* **GPU memory**: the framebuffer memory in use, in **bytes**, summed over the pod's GPUs, from
  ``DCGM_FI_DEV_FB_USED`` (MiB); what a checkpoint must stage into host memory.
* **requests**: per pod and resource, summed over all containers (what the scheduler reserves and
  what a suspension frees).

cAdvisor also exports a pod-level series (``container=""``) and the pause container
(``container="POD"``); both are always excluded from usage sums so nothing is counted twice.

:func:`parse_vector` turns prometheus-api-client's ``custom_query`` result into a mapping and
raises :class:`MalformedResponse` on anything unexpected; see its docstring for NaN handling.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import OwnError

GpuSource = Literal["util", "engine_active", "auto"]
GpuAggregation = Literal["avg", "max"]

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_STRING_LITERAL = r'"(?:[^"\\]|\\.)*"'
_MATCHER = rf"\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=~|!~|!=|=)\s*{_STRING_LITERAL}\s*"
_MATCHER_LIST = re.compile(rf"^{_MATCHER}(?:,{_MATCHER})*$")
_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
# Seconds per unit, in the order of the groups of _DURATION (Prometheus: 1y = 365d).
_UNITS: tuple[tuple[str, float], ...] = (
    ("y", 365 * 86400),
    ("w", 7 * 86400),
    ("d", 86400),
    ("h", 3600),
    ("m", 60),
    ("s", 1),
    ("ms", 0.001),
)
_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")


class MalformedResponse(OwnError, ValueError):
    """Prometheus returned something this module cannot trust; the cycle must fail safe."""

    status = 502


@dataclass(frozen=True)
class MetricNames:
    """Metric and label names, all configurable because sites relabel differently.

    Defaults are those of cAdvisor (through the kubelet), kube-state-metrics v2 and NVIDIA's
    dcgm-exporter. dcgm-exporter scraped through a ServiceMonitor often ends up with the pod's
    labels as ``exported_namespace``/``exported_pod``: set :attr:`gpu_namespace` and
    :attr:`gpu_pod` accordingly.
    """

    cpu_usage: str = "container_cpu_usage_seconds_total"
    memory_working_set: str = "container_memory_working_set_bytes"
    requests: str = "kube_pod_container_resource_requests"
    gpu_util: str = "DCGM_FI_DEV_GPU_UTIL"
    gpu_engine_active: str = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
    #: framebuffer memory used, in MiB (dcgm-exporter's default counters include it)
    gpu_fb_used: str = "DCGM_FI_DEV_FB_USED"
    namespace: str = "namespace"
    pod: str = "pod"
    container: str = "container"
    resource: str = "resource"
    gpu_namespace: str = "namespace"
    gpu_pod: str = "pod"
    cpu_resource: str = "cpu"
    memory_resource: str = "memory"
    gpu_resource: str = "nvidia_com_gpu"
    #: Extra matchers added to the CPU, memory and request selectors, e.g. ``container="notebook"``.
    extra_matchers: str = ""
    #: Extra matchers added to the DCGM selectors, e.g. ``job="dcgm-exporter"``.
    gpu_extra_matchers: str = ""

    def __post_init__(self) -> None:
        for attr in (
            "cpu_usage",
            "memory_working_set",
            "requests",
            "gpu_util",
            "gpu_engine_active",
            "gpu_fb_used",
        ):
            if not _METRIC_NAME.match(getattr(self, attr)):
                raise ValueError(f"MetricNames.{attr}={getattr(self, attr)!r} is not a metric name")
        for attr in ("namespace", "pod", "container", "resource", "gpu_namespace", "gpu_pod"):
            if not _LABEL_NAME.match(getattr(self, attr)):
                raise ValueError(f"MetricNames.{attr}={getattr(self, attr)!r} is not a label name")
        for attr in ("cpu_resource", "memory_resource", "gpu_resource"):
            if not getattr(self, attr):
                raise ValueError(f"MetricNames.{attr} must not be empty")
        for attr in ("extra_matchers", "gpu_extra_matchers"):
            value = getattr(self, attr)
            if value and not _MATCHER_LIST.match(value):
                raise ValueError(
                    f"MetricNames.{attr}={value!r} is not a comma-separated list of label "
                    'matchers such as container="notebook"'
                )


@dataclass(frozen=True)
class PodSelector:
    """Which pods are notebook servers: an exact namespace and an RE2 regex on the pod name.

    Prometheus anchors the regex at both ends, so ``jupyter-.*`` matches whole names.
    """

    namespace: str
    pod_regex: str = "jupyter-.*"

    def __post_init__(self) -> None:
        if not self.namespace:
            raise ValueError("PodSelector.namespace must not be empty")
        if not self.pod_regex:
            raise ValueError("PodSelector.pod_regex must not be empty")


@dataclass(frozen=True)
class SignalQueries:
    """The two queries of one windowed signal and how many samples complete data has."""

    max: str
    count: str
    window_seconds: float
    expected_samples: int


@dataclass(frozen=True)
class Queries:
    """Every query of one policy cycle; their number does not depend on the number of users.

    ``cpu_gpu_window`` is the CPU signal over the GPU idle window, for GPU servers, present only
    when that window differs from the CPU idle window.
    """

    cpu: SignalQueries
    cpu_gpu_window: SignalQueries | None
    gpu: SignalQueries
    memory_ratio: str
    requests: str
    freshness: str
    gpu_memory: str

    def all(self) -> dict[str, str]:
        """Every query by a stable name (for logging and for counting queries)."""
        out = {
            "cpu_max": self.cpu.max,
            "cpu_count": self.cpu.count,
            "gpu_max": self.gpu.max,
            "gpu_count": self.gpu.count,
            "memory_ratio": self.memory_ratio,
            "requests": self.requests,
            "freshness": self.freshness,
            "gpu_memory": self.gpu_memory,
        }
        if self.cpu_gpu_window is not None:
            out["cpu_gpu_window_max"] = self.cpu_gpu_window.max
            out["cpu_gpu_window_count"] = self.cpu_gpu_window.count
        return out


# ---------------------------------------------------------------------------------------------
# Escaping and durations


def escape_label_value(value: str) -> str:
    """Escape ``value`` for use inside a double-quoted PromQL string literal.

    Backslash and double quote are escaped, and control characters become Go escapes
    (``\\n``, ``\\t``, ``\\u0001``), which Prometheus's lexer (``strconv.Unquote``) reads back.
    The result does NOT include the surrounding quotes.
    """
    out: list[str] = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def escape_regex(value: str) -> str:
    """Escape RE2 metacharacters so ``value`` matches literally inside a ``=~`` matcher.

    Apply :func:`escape_label_value` afterwards (as :func:`matcher` does) to embed it in a query.
    """
    return "".join("\\" + ch if ch in _RE2_SPECIAL else ch for ch in value)


def matcher(label: str, op: str, value: str) -> str:
    """One label matcher, e.g. ``matcher("pod", "=~", "jupyter-.*")`` -> ``pod=~"jupyter-.*"``."""
    if not _LABEL_NAME.match(label):
        raise ValueError(f"{label!r} is not a label name")
    if op not in ("=", "!=", "=~", "!~"):
        raise ValueError(f"{op!r} is not a label matching operator")
    return f'{label}{op}"{escape_label_value(value)}"'


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as ``5m``, ``1h30m`` or ``500ms``.

    Raises :class:`ValueError` for anything Prometheus would reject, and for zero.
    """
    m = _DURATION.match(text) if isinstance(text, str) else None
    if not text or m is None:
        raise ValueError(
            f"{text!r} is not a Prometheus duration (digits followed by y, w, d, h, m, s or ms, "
            "largest unit first, e.g. 1h30m)"
        )
    seconds = sum(int(g) * unit for g, (_, unit) in zip(m.groups(), _UNITS, strict=True) if g)
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return seconds


def format_duration(seconds: float) -> str:
    """The Prometheus duration for ``seconds`` (a positive multiple of 1 ms), e.g. 5400 -> 1h30m.

    Only h, m, s and ms are used, so the text is unambiguous (no 365-day years).
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"duration must be a number of seconds, not {seconds!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration must be a positive number of seconds, not {seconds!r}")
    millis = round(seconds * 1000)
    if abs(millis - seconds * 1000) > 1e-6 or millis == 0:
        raise ValueError(f"duration {seconds!r} s is not a whole number of milliseconds")
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def duration(value: str | float) -> tuple[str, float]:
    """Normalise a duration given as Prometheus text or as seconds: ``(text, seconds)``."""
    if isinstance(value, str):
        return value, parse_duration(value)
    text = format_duration(value)
    return text, parse_duration(text)


def expected_samples(window: str | float, step: str | float) -> int:
    """Points a ``[window:step]`` subquery has when data is complete: ``floor(window / step)``.

    Prometheus aligns subquery steps to multiples of ``step``, so a window holds this many
    points or one more; a coverage threshold below 1 absorbs the difference.
    """
    _, w = duration(window)
    _, s = duration(step)
    return int(w // s)


def _window_and_step(window: str | float, step: str | float) -> tuple[str, str, float, int]:
    wtext, w = duration(window)
    stext, s = duration(step)
    if s > w:
        raise ValueError(f"step {stext} is longer than the window {wtext}")
    return wtext, stext, w, int(w // s)


# ---------------------------------------------------------------------------------------------
# Selectors


def _selector(metric: str, matchers: Sequence[str], extra: str) -> str:
    parts = list(matchers)
    if extra:
        parts.append(extra.strip())
    return f"{metric}{{{', '.join(parts)}}}"


def _pod_matchers(names: MetricNames, pods: PodSelector, *, gpu: bool = False) -> list[str]:
    ns_label = names.gpu_namespace if gpu else names.namespace
    pod_label = names.gpu_pod if gpu else names.pod
    return [matcher(ns_label, "=", pods.namespace), matcher(pod_label, "=~", pods.pod_regex)]


def _container_matchers(names: MetricNames) -> list[str]:
    return [matcher(names.container, "!=", ""), matcher(names.container, "!=", "POD")]


def _by(names: MetricNames) -> str:
    return f"{names.namespace}, {names.pod}"


def _requests(names: MetricNames, pods: PodSelector, resource: str) -> str:
    """The notebook pods' requests of ``resource`` (one series per container)."""
    return _selector(
        names.requests,
        [*_pod_matchers(names, pods), matcher(names.resource, "=", resource)],
        names.extra_matchers,
    )


def _request_sum(names: MetricNames, pods: PodSelector, resource: str) -> str:
    return f"sum by ({_by(names)}) ({_requests(names, pods, resource)})"


# ---------------------------------------------------------------------------------------------
# Builders


def cpu_ratio_expr(names: MetricNames, pods: PodSelector, rate_window: str | float = "2m") -> str:
    """Instant CPU usage per pod as a fraction of its CPU request (no window)."""
    rtext, _ = duration(rate_window)
    usage = _selector(
        names.cpu_usage,
        [*_pod_matchers(names, pods), *_container_matchers(names)],
        names.extra_matchers,
    )
    return (
        f"sum by ({_by(names)}) (rate({usage}[{rtext}]))"
        f" / on({_by(names)}) "
        f"{_request_sum(names, pods, names.cpu_resource)}"
    )


def cpu_ratio_queries(
    names: MetricNames,
    pods: PodSelector,
    window: str | float,
    step: str | float = "1m",
    rate_window: str | float = "2m",
) -> SignalQueries:
    """Max over ``window`` of CPU usage / CPU request per pod, and its sample count.

    ``rate_window`` must hold at least two scrapes (2m suits scrape intervals up to 1m). A pod
    without a CPU request has no ratio at all, hence no samples, hence is never idle.
    """
    wtext, stext, w, expected = _window_and_step(window, step)
    inner = cpu_ratio_expr(names, pods, rate_window)
    return SignalQueries(
        max=f"max_over_time(({inner})[{wtext}:{stext}])",
        count=f"count_over_time(({inner})[{wtext}:{stext}])",
        window_seconds=w,
        expected_samples=expected,
    )


def memory_ratio_query(names: MetricNames, pods: PodSelector) -> str:
    """Current memory working set per pod as a fraction of its memory request."""
    usage = _selector(
        names.memory_working_set,
        [*_pod_matchers(names, pods), *_container_matchers(names)],
        names.extra_matchers,
    )
    return (
        f"sum by ({_by(names)}) ({usage})"
        f" / on({_by(names)}) "
        f"{_request_sum(names, pods, names.memory_resource)}"
    )


def _relabel_to_pod_labels(names: MetricNames, expr: str) -> str:
    """Copy the exporter's namespace/pod labels into the Kubernetes label names."""
    if names.gpu_pod != names.pod:
        expr = f'label_replace({expr}, "{names.pod}", "$1", "{names.gpu_pod}", "(.*)")'
    if names.gpu_namespace != names.namespace:
        expr = f'label_replace({expr}, "{names.namespace}", "$1", "{names.gpu_namespace}", "(.*)")'
    return expr


def gpu_util_expr(
    names: MetricNames,
    pods: PodSelector,
    source: GpuSource = "auto",
    per_gpu: GpuAggregation = "avg",
) -> str:
    """Instant GPU utilisation per pod in percent, over the pod's GPUs (``avg`` or ``max``).

    The result carries the Kubernetes ``namespace``/``pod`` label names whatever the exporter
    calls them, so it joins with the CPU and request results.
    """
    if source not in ("util", "engine_active", "auto"):
        raise ValueError(f"GPU source {source!r} is not one of util, engine_active, auto")
    if per_gpu not in ("avg", "max"):
        raise ValueError(f"per_gpu {per_gpu!r} is not avg or max")
    by = f"{names.gpu_namespace}, {names.gpu_pod}"
    matchers = _pod_matchers(names, pods, gpu=True)
    util = f"{per_gpu} by ({by}) ({_selector(names.gpu_util, matchers, names.gpu_extra_matchers)})"
    active = (
        f"100 * {per_gpu} by ({by}) "
        f"({_selector(names.gpu_engine_active, matchers, names.gpu_extra_matchers)})"
    )
    expr = {"util": util, "engine_active": active, "auto": f"({active}) or ({util})"}[source]
    return _relabel_to_pod_labels(names, expr)


def gpu_util_queries(
    names: MetricNames,
    pods: PodSelector,
    window: str | float,
    step: str | float = "1m",
    source: GpuSource = "auto",
    per_gpu: GpuAggregation = "avg",
) -> SignalQueries:
    """Max over ``window`` of GPU utilisation (percent) per pod, and its sample count."""
    wtext, stext, w, expected = _window_and_step(window, step)
    inner = gpu_util_expr(names, pods, source, per_gpu)
    return SignalQueries(
        max=f"max_over_time(({inner})[{wtext}:{stext}])",
        count=f"count_over_time(({inner})[{wtext}:{stext}])",
        window_seconds=w,
        expected_samples=expected,
    )


def gpu_memory_query(names: MetricNames, pods: PodSelector) -> str:
    """GPU memory in use per pod, in bytes, summed over the pod's GPUs (``DCGM_FI_DEV_FB_USED``
    is in MiB). Carries the Kubernetes label names, as :func:`gpu_util_expr`. A pod whose GPUs
    have no sample is absent: its GPU memory is unknown."""
    by = f"{names.gpu_namespace}, {names.gpu_pod}"
    sel = _selector(
        names.gpu_fb_used, _pod_matchers(names, pods, gpu=True), names.gpu_extra_matchers
    )
    return _relabel_to_pod_labels(names, f"1048576 * sum by ({by}) ({sel})")


def requests_query(names: MetricNames, pods: PodSelector) -> str:
    """Requests per pod and resource (cpu cores, memory bytes, GPUs), summed over containers.

    Parse with key labels ``(namespace, pod, resource)``. The extra matchers are NOT applied:
    a suspension frees the whole pod's requests, sidecars included.
    """
    values = (names.cpu_resource, names.memory_resource, names.gpu_resource)
    regex = "|".join(escape_regex(v) for v in values)
    sel = _selector(
        names.requests, [*_pod_matchers(names, pods), matcher(names.resource, "=~", regex)], ""
    )
    return f"sum by ({_by(names)}, {names.resource}) ({sel})"


def freshness_query(names: MetricNames, pods: PodSelector) -> str:
    """Age in seconds of the newest sample per source, labelled ``source``.

    Sources: ``cpu`` and ``memory`` (cAdvisor), ``requests`` (kube-state-metrics) and ``gpu``
    (DCGM GPU_UTIL). A source with no sample in Prometheus's lookback (5 min by default) is absent
    from the result. Parse with key ``("source",)``; the caller decides which ages are too old and
    which sources must be present, and reports :class:`MetricsHealth`-style failure.
    """
    sources = (
        ("cpu", _selector(names.cpu_usage, _pod_matchers(names, pods), "")),
        ("memory", _selector(names.memory_working_set, _pod_matchers(names, pods), "")),
        ("requests", _selector(names.requests, _pod_matchers(names, pods), "")),
        ("gpu", _selector(names.gpu_util, _pod_matchers(names, pods, gpu=True), "")),
    )
    return " or ".join(
        f'label_replace(time() - max(timestamp({sel})), "source", "{name}", "", "")'
        for name, sel in sources
    )


def build_queries(
    names: MetricNames,
    pods: PodSelector,
    *,
    cpu_window: str | float,
    gpu_window: str | float,
    step: str | float = "1m",
    rate_window: str | float = "2m",
    gpu_source: GpuSource = "auto",
    per_gpu: GpuAggregation = "avg",
) -> Queries:
    """Every query one policy cycle needs (8, or 10 when the GPU window differs)."""
    cpu = cpu_ratio_queries(names, pods, cpu_window, step, rate_window)
    gpu = gpu_util_queries(names, pods, gpu_window, step, gpu_source, per_gpu)
    cpu_gpu = None
    if gpu.window_seconds != cpu.window_seconds:
        cpu_gpu = cpu_ratio_queries(names, pods, gpu_window, step, rate_window)
    return Queries(
        cpu=cpu,
        cpu_gpu_window=cpu_gpu,
        gpu=gpu,
        memory_ratio=memory_ratio_query(names, pods),
        requests=requests_query(names, pods),
        freshness=freshness_query(names, pods),
        gpu_memory=gpu_memory_query(names, pods),
    )


def chart_queries(
    names: MetricNames,
    pods: PodSelector,
    *,
    rate_window: float,
    step: float,
    gpu_source: GpuSource = "auto",
    per_gpu: GpuAggregation = "avg",
) -> dict[str, str]:
    """The admin page's charts: one series each, summed over every notebook pod, by name.

    CPU and GPUs reserved (requests) and used (CPU cores busy; GPUs busy as utilisation times
    the pod's GPUs), and what this service exports about itself: among it the GPU- and
    core-hours reclaimed, running totals that restart with the service (the page adds up
    their increases over the range). ``step`` is the policy's query
    step; the CPU rate window holds at least four of them.
    """

    def reserved(resource: str) -> str:
        return f"sum({_requests(names, pods, resource)}) or vector(0)"

    usage = _selector(
        names.cpu_usage,
        [*_pod_matchers(names, pods), *_container_matchers(names)],
        names.extra_matchers,
    )
    rate = format_duration(max(rate_window, 4 * step))
    gpu = gpu_util_expr(names, pods, gpu_source, per_gpu)
    gpus_per_pod = _request_sum(names, pods, names.gpu_resource)
    return {
        "cpu_reserved": reserved(names.cpu_resource),
        "cpu_used": f"sum(rate({usage}[{rate}])) or vector(0)",
        "gpu_reserved": reserved(names.gpu_resource),
        "gpu_used": f"sum(({gpu}) / 100 * on({_by(names)}) {gpus_per_pod}) or vector(0)",
        "reclaimed_cpu": "sum(jhub_suspend_reclaimed_cpu_cores)",
        "reclaimed_gpus": "sum(jhub_suspend_reclaimed_gpus)",
        "reclaimed_gpu_hours": "sum(jhub_suspend_reclaimed_gpu_seconds_total) / 3600",
        "reclaimed_core_hours": "sum(jhub_suspend_reclaimed_cpu_core_seconds_total) / 3600",
        "suspensions": 'sum(increase(jhub_suspend_suspensions_total{outcome="success"}[5m]))',
        "restores": "sum(increase(jhub_suspend_restores_total[5m]))",
    }


# ---------------------------------------------------------------------------------------------
# Parsing


def _parse_value(raw: Any, where: str) -> float:
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        raise MalformedResponse(f"{where}: 'value' must be [timestamp, \"number\"], got {raw!r}")
    ts, text = raw
    if isinstance(ts, bool) or not isinstance(ts, int | float | str):
        raise MalformedResponse(f"{where}: timestamp {ts!r} is not a number")
    try:
        float(ts)
    except (ValueError, OverflowError):  # OverflowError: an integer beyond any float
        raise MalformedResponse(f"{where}: timestamp {ts!r} is not a number") from None
    if not isinstance(text, str):
        raise MalformedResponse(f"{where}: sample value {text!r} is not a string")
    try:
        return float(text)
    except ValueError:
        raise MalformedResponse(f"{where}: sample value {text!r} is not a number") from None


def parse_vector(result: Any, key_labels: Sequence[str]) -> dict[tuple[str, ...], float]:
    """Map an instant-vector result to ``{(label values in key_labels order): value}``.

    ``result`` is what prometheus-api-client's ``custom_query`` returns: a list of
    ``{"metric": {label: value}, "value": [timestamp, "value"]}``. An empty list is valid (no
    series). :class:`MalformedResponse` is raised, with the position of the offending item, when
    ``result`` is not a list, an item is not such a mapping, a key label is missing, a value is not
    a number, or two items have the same key (the query did not aggregate as intended).

    NaN and infinities are returned as the floats ``nan``, ``inf`` and ``-inf`` (Prometheus writes
    them ``"NaN"``, ``"+Inf"``, ``"-Inf"``; they arise from a request of 0). They are not an
    error, because one misconfigured pod must not stop the policy for every user; the policy
    treats any non-finite value as a bad signal that never counts as idle.
    """
    if not isinstance(result, list):
        raise MalformedResponse(f"expected a list of series, got {type(result).__name__}")
    keys = tuple(key_labels)
    out: dict[tuple[str, ...], float] = {}
    for i, item in enumerate(result):
        where = f"series {i}"
        if not isinstance(item, Mapping):
            raise MalformedResponse(f"{where}: expected an object, got {type(item).__name__}")
        if "values" in item and "value" not in item:
            raise MalformedResponse(
                f"{where}: got a range vector ('values'); expected an instant vector"
            )
        metric = item.get("metric")
        if not isinstance(metric, Mapping):
            raise MalformedResponse(f"{where}: missing or invalid 'metric' labels")
        if "value" not in item:
            raise MalformedResponse(f"{where}: missing 'value'")
        missing = [k for k in keys if not isinstance(metric.get(k), str)]
        if missing:
            raise MalformedResponse(
                f"{where}: labels {missing} missing from {dict(metric)!r} "
                "(check the label names in MetricNames)"
            )
        key = tuple(metric[k] for k in keys)
        value = _parse_value(item["value"], where)
        if key in out:
            raise MalformedResponse(
                f"{where}: duplicate series for {dict(zip(keys, key, strict=True))}"
            )
        out[key] = value
    return out
