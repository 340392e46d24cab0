"""PromQL builders and the result parser: exact strings, escaping, durations, malformed data.

One test evaluates the built queries with ``promtool test rules`` against synthetic series, so the
joins, the GPU relabelling and the subquery counts are checked by Prometheus itself.
"""

from __future__ import annotations

import math
import subprocess
import textwrap
from dataclasses import replace

import pytest

from jhub_suspend.promql import (
    MalformedResponse,
    MetricNames,
    PodSelector,
    build_queries,
    chart_queries,
    cpu_ratio_queries,
    duration,
    escape_label_value,
    escape_regex,
    expected_samples,
    format_duration,
    freshness_query,
    gpu_memory_query,
    gpu_util_expr,
    gpu_util_queries,
    matcher,
    memory_ratio_query,
    parse_duration,
    parse_vector,
    requests_query,
)
from tests.conftest import require_command

PODS = PodSelector("jhub", "jupyter-.*")
DEFAULT = MetricNames()
RELABELLED = MetricNames(
    gpu_namespace="exported_namespace",
    gpu_pod="exported_pod",
    extra_matchers='container="notebook"',
    gpu_extra_matchers='job="dcgm"',
)

# every name renamed
RENAMED = MetricNames(
    cpu_usage="cpu_total",
    memory_working_set="mem_ws",
    requests="ksm_requests",
    gpu_util="gpu_u",
    gpu_engine_active="gpu_a",
    gpu_fb_used="gpu_fb",
    namespace="ns",
    pod="p",
    container="c",
    resource="r",
    gpu_namespace="gns",
    gpu_pod="gp",
    cpu_resource="core",
    memory_resource="ram",
    gpu_resource="gpus",
)

CPU_INNER = (
    "sum by (namespace, pod) (rate(container_cpu_usage_seconds_total"
    '{namespace="jhub", pod=~"jupyter-.*", container!="", container!="POD"}[2m]))'
    " / on(namespace, pod) "
    "sum by (namespace, pod) (kube_pod_container_resource_requests"
    '{namespace="jhub", pod=~"jupyter-.*", resource="cpu"})'
)
GPU_UTIL = 'avg by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL{namespace="jhub", pod=~"jupyter-.*"})'
GPU_ACTIVE = (
    "100 * avg by (namespace, pod) "
    '(DCGM_FI_PROF_GR_ENGINE_ACTIVE{namespace="jhub", pod=~"jupyter-.*"})'
)


# --- exact strings for the default names ------------------------------------------------------


def test_cpu_queries_default_names() -> None:
    q = cpu_ratio_queries(DEFAULT, PODS, "1h", "1m")
    assert q.max == f"max_over_time(({CPU_INNER})[1h:1m])"
    assert q.count == f"count_over_time(({CPU_INNER})[1h:1m])"
    assert q.window_seconds == 3600
    assert q.expected_samples == 60


def test_cpu_queries_accept_seconds() -> None:
    assert cpu_ratio_queries(DEFAULT, PODS, 5400, 30).max.endswith(")[1h30m:30s])")
    assert "[5m]))" in cpu_ratio_queries(DEFAULT, PODS, 3600, rate_window=300).max


def test_memory_query_default_names() -> None:
    assert memory_ratio_query(DEFAULT, PODS) == (
        "sum by (namespace, pod) (container_memory_working_set_bytes"
        '{namespace="jhub", pod=~"jupyter-.*", container!="", container!="POD"})'
        " / on(namespace, pod) "
        "sum by (namespace, pod) (kube_pod_container_resource_requests"
        '{namespace="jhub", pod=~"jupyter-.*", resource="memory"})'
    )


@pytest.mark.parametrize(
    ("source", "inner"),
    [
        ("util", GPU_UTIL),
        ("engine_active", GPU_ACTIVE),
        ("auto", f"({GPU_ACTIVE}) or ({GPU_UTIL})"),
    ],
)
def test_gpu_queries_default_names(source, inner) -> None:
    q = gpu_util_queries(DEFAULT, PODS, "30m", "1m", source=source)
    assert q.max == f"max_over_time(({inner})[30m:1m])"
    assert q.count == f"count_over_time(({inner})[30m:1m])"
    assert q.expected_samples == 30


def test_gpu_per_gpu_max() -> None:
    assert gpu_util_expr(DEFAULT, PODS, "util", per_gpu="max").startswith("max by (namespace, pod)")


def test_gpu_memory_query_default_names() -> None:
    # DCGM's framebuffer-used is in MiB: the query answers bytes, summed over the pod's GPUs
    assert gpu_memory_query(DEFAULT, PODS) == (
        "1048576 * sum by (namespace, pod) (DCGM_FI_DEV_FB_USED"
        '{namespace="jhub", pod=~"jupyter-.*"})'
    )
    assert build_queries(DEFAULT, PODS, cpu_window="1h", gpu_window="1h").gpu_memory == (
        gpu_memory_query(DEFAULT, PODS)
    )


def test_gpu_memory_query_relabelled_with_the_gpu_matchers() -> None:
    assert gpu_memory_query(RELABELLED, PODS) == (
        "label_replace(label_replace("
        "1048576 * sum by (exported_namespace, exported_pod) (DCGM_FI_DEV_FB_USED"
        '{exported_namespace="jhub", exported_pod=~"jupyter-.*", job="dcgm"}), '
        '"pod", "$1", "exported_pod", "(.*)"), '
        '"namespace", "$1", "exported_namespace", "(.*)")'
    )


def test_requests_query_default_names() -> None:
    assert requests_query(DEFAULT, PODS) == (
        "sum by (namespace, pod, resource) (kube_pod_container_resource_requests"
        '{namespace="jhub", pod=~"jupyter-.*", resource=~"cpu|memory|nvidia_com_gpu"})'
    )


def test_requests_query_escapes_resource_regex() -> None:
    names = MetricNames(gpu_resource="nvidia.com/gpu")
    assert r'resource=~"cpu|memory|nvidia\\.com/gpu"' in requests_query(names, PODS)


# --- relabelled and renamed ----------------------------------------------------------------------


def test_gpu_query_relabelled_exporter_labels_are_mapped_to_pod_labels() -> None:
    expr = gpu_util_expr(RELABELLED, PODS, "util")
    assert expr == (
        "label_replace(label_replace("
        "avg by (exported_namespace, exported_pod) (DCGM_FI_DEV_GPU_UTIL"
        '{exported_namespace="jhub", exported_pod=~"jupyter-.*", job="dcgm"}), '
        '"pod", "$1", "exported_pod", "(.*)"), '
        '"namespace", "$1", "exported_namespace", "(.*)")'
    )


def test_extra_matchers_apply_to_cpu_and_memory_but_not_gpu_or_requests() -> None:
    q = build_queries(RELABELLED, PODS, cpu_window="1h", gpu_window="1h")
    assert q.cpu.max.count('container="notebook"') == 2  # usage and request
    assert q.memory_ratio.count('container="notebook"') == 2
    assert 'container="notebook"' not in q.gpu.max
    assert 'container="notebook"' not in q.requests
    assert 'job="dcgm"' in q.gpu.max


def test_all_names_configurable() -> None:
    q = build_queries(RENAMED, PODS, cpu_window="1h", gpu_window="1h")
    text = " ".join(q.all().values())
    for default in (
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "kube_pod_container_resource_requests",
        "DCGM_",
        "namespace",
        "pod=",
        "container",
        "resource",
    ):
        assert default not in text, default
    assert 'sum by (ns, p) (rate(cpu_total{ns="jhub", p=~"jupyter-.*", c!="", c!="POD"}' in text
    assert 'r="core"' in q.cpu.max
    assert 'r="ram"' in q.memory_ratio
    assert 'r=~"core|ram|gpus"' in q.requests
    assert 'gpu_a{gns="jhub", gp=~"jupyter-.*"}' in q.gpu.max
    assert '"p", "$1", "gp", "(.*)"' in q.gpu.max


def test_chart_queries_default_names() -> None:
    q = chart_queries(DEFAULT, PODS, rate_window=120, step=60)
    requests = 'kube_pod_container_resource_requests{namespace="jhub", pod=~"jupyter-.*", '
    assert q["cpu_reserved"] == f'sum({requests}resource="cpu"}}) or vector(0)'
    assert q["cpu_used"] == (
        "sum(rate(container_cpu_usage_seconds_total"
        '{namespace="jhub", pod=~"jupyter-.*", container!="", container!="POD"}[4m])) or vector(0)'
    )
    assert q["gpu_reserved"] == f'sum({requests}resource="nvidia_com_gpu"}}) or vector(0)'
    assert q["gpu_used"] == (
        f"sum((({GPU_ACTIVE}) or ({GPU_UTIL})) / 100 * on(namespace, pod) "
        f'sum by (namespace, pod) ({requests}resource="nvidia_com_gpu"}})) or vector(0)'
    )
    assert q["reclaimed_cpu"] == "sum(jhub_suspend_reclaimed_cpu_cores)"
    assert q["reclaimed_gpu_hours"] == "sum(jhub_suspend_reclaimed_gpu_seconds_total) / 3600"
    assert q["reclaimed_core_hours"] == (
        "sum(jhub_suspend_reclaimed_cpu_core_seconds_total) / 3600"
    )


def test_chart_queries_use_the_configured_names() -> None:
    """The GPU join is on the configured pod labels, not on ``namespace`` and ``pod``."""
    names = replace(RENAMED, extra_matchers='c="notebook"')
    q = chart_queries(names, PODS, rate_window=300, step=30, gpu_source="util")
    for default in ("namespace", "pod", "container", "resource", "nvidia"):
        assert not any(default in text for text in q.values()), default
    assert q["cpu_reserved"] == (
        'sum(ksm_requests{ns="jhub", p=~"jupyter-.*", r="core", c="notebook"}) or vector(0)'
    )
    assert q["cpu_used"].endswith('c="notebook"}[5m])) or vector(0)')
    assert ") / 100 * on(ns, p) sum by (ns, p) (ksm_requests{" in q["gpu_used"]
    assert '"p", "$1", "gp", "(.*)"' in q["gpu_used"]


def test_build_queries_count_is_constant() -> None:
    same = build_queries(DEFAULT, PODS, cpu_window="1h", gpu_window=3600)
    assert same.cpu_gpu_window is None
    assert len(same.all()) == 8
    differ = build_queries(DEFAULT, PODS, cpu_window="1h", gpu_window="30m", step="30s")
    assert len(differ.all()) == 10
    assert differ.cpu_gpu_window is not None
    assert differ.cpu_gpu_window.max.endswith("[30m:30s])")
    assert differ.cpu_gpu_window.expected_samples == 60
    assert differ.cpu.expected_samples == 120


@pytest.mark.parametrize(
    "kwargs",
    [
        {"namespace": "bad-label"},
        {"gpu_pod": "1pod"},
        {"cpu_usage": "cpu-usage"},
        {"gpu_fb_used": "DCGM FB"},
        {"gpu_fb_used": ""},
        {"gpu_resource": ""},
        {"extra_matchers": "container=notebook"},
        {"extra_matchers": '{container="notebook"}'},
        {"extra_matchers": 'container="a",'},
        {"gpu_extra_matchers": 'job="x"} or vector(1'},
    ],
)
def test_metric_names_validation(kwargs) -> None:
    with pytest.raises(ValueError, match="MetricNames"):
        MetricNames(**kwargs)


def test_metric_names_accept_matcher_lists() -> None:
    m = MetricNames(extra_matchers=' container="notebook", image!~"pause.*" ')
    assert 'container="notebook", image!~"pause.*"}' in cpu_ratio_queries(m, PODS, "1h").max


def test_pod_selector_validation() -> None:
    with pytest.raises(ValueError, match="namespace"):
        PodSelector("")
    with pytest.raises(ValueError, match="pod_regex"):
        PodSelector("jhub", "")


# --- escaping -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("jhub", "jhub"),
        ('a"b', 'a\\"b'),
        ("a\\b", "a\\\\b"),
        ("line\nbreak\ttab\rcr", "line\\nbreak\\ttab\\rcr"),
        ("\x01\x7f", "\\u0001\\u007f"),
        ("ünï", "ünï"),
        ('"} or vector(1) #', '\\"} or vector(1) #'),
    ],
)
def test_escape_label_value(raw, escaped) -> None:
    assert escape_label_value(raw) == escaped


def test_escaped_values_cannot_break_out_of_the_selector() -> None:
    q = cpu_ratio_queries(DEFAULT, PodSelector('x"} or vector(1) or up{a="'), "1h").max
    assert 'namespace="x\\"} or vector(1) or up{a=\\""' in q
    # Every quote that is not escaped delimits a string: they must pair up.
    assert q.replace('\\"', "").count('"') % 2 == 0


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("jupyter-alice", "jupyter-alice"),
        ("a.b+c", r"a\.b\+c"),
        ("(x)|[y]{z}^$*?\\", r"\(x\)\|\[y\]\{z\}\^\$\*\?\\"),
    ],
)
def test_escape_regex(raw, escaped) -> None:
    assert escape_regex(raw) == escaped


def test_matcher() -> None:
    assert matcher("pod", "=~", 'a"b') == 'pod=~"a\\"b"'
    with pytest.raises(ValueError, match="label name"):
        matcher("bad-label", "=", "x")
    with pytest.raises(ValueError, match="operator"):
        matcher("pod", "==", "x")


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1m", 60),
        ("90s", 90),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("1d", 86400),
        ("2w", 14 * 86400),
        ("1y", 365 * 86400),
        ("1h0m5s", 3605),
        ("1m500ms", 60.5),
    ],
)
def test_parse_duration(text, seconds) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "1", "1.5h", "m", "30m1h", "1 h", "-1m", "1H", "0s", "0m0s", "1h1h"]
)
def test_parse_duration_rejects(text) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (60, "1m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (0.25, "250ms"),
        (86400, "24h"),
        (61.5, "1m1s500ms"),
    ],
)
def test_format_duration(seconds, text) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("seconds", [0, -5, 0.0001, math.nan, math.inf, True, "60"])
def test_format_duration_rejects(seconds) -> None:
    with pytest.raises(ValueError, match="duration"):
        format_duration(seconds)


def test_duration_normalises_both_forms() -> None:
    assert duration("1h") == ("1h", 3600)
    assert duration(3600) == ("1h", 3600)


def test_window_and_step_validation() -> None:
    with pytest.raises(ValueError, match="longer than the window"):
        cpu_ratio_queries(DEFAULT, PODS, "1m", "5m")
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        cpu_ratio_queries(DEFAULT, PODS, "one hour")
    with pytest.raises(ValueError, match="positive"):
        gpu_util_queries(DEFAULT, PODS, "30m", 0)
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        cpu_ratio_queries(DEFAULT, PODS, "1h", rate_window="2 m")
    with pytest.raises(ValueError, match="GPU source"):
        gpu_util_queries(DEFAULT, PODS, "30m", source="sm_active")  # type: ignore[arg-type]


def test_expected_samples() -> None:
    assert expected_samples("1h", "1m") == 60
    assert expected_samples(3600, "7m") == 8
    assert expected_samples("30m", 30) == 60


# --- parsing ------------------------------------------------------------------------------------

KEY = ("namespace", "pod")


def _series(pod: str, value: str, **labels: str) -> dict:
    return {"metric": {"namespace": "jhub", "pod": pod, **labels}, "value": [1700000000.5, value]}


def test_parse_vector() -> None:
    result = [_series("jupyter-a", "0.012"), _series("jupyter-b", "1e-3", extra="x")]
    assert parse_vector(result, KEY) == {("jhub", "jupyter-a"): 0.012, ("jhub", "jupyter-b"): 0.001}


def test_parse_vector_empty_is_valid() -> None:
    assert parse_vector([], KEY) == {}


def test_parse_vector_key_with_resource() -> None:
    result = [
        _series("jupyter-a", "2", resource="cpu"),
        _series("jupyter-a", "1", resource="nvidia_com_gpu"),
    ]
    assert parse_vector(result, (*KEY, "resource")) == {
        ("jhub", "jupyter-a", "cpu"): 2.0,
        ("jhub", "jupyter-a", "nvidia_com_gpu"): 1.0,
    }


def test_parse_vector_keeps_non_finite_values_for_the_policy_to_reject() -> None:
    got = parse_vector(
        [_series("a", "NaN"), _series("b", "+Inf"), _series("c", "-Inf"), _series("d", "Inf")], KEY
    )
    assert math.isnan(got[("jhub", "a")])
    assert got[("jhub", "b")] == math.inf
    assert got[("jhub", "c")] == -math.inf
    assert got[("jhub", "d")] == math.inf


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ({"resultType": "vector"}, "expected a list"),
        (None, "expected a list"),
        ([1700000000, "1"], "expected an object"),
        ([{"value": [1, "1"]}], "'metric'"),
        ([{"metric": {"namespace": "jhub", "pod": "a"}}], "missing 'value'"),
        ([{"metric": {"namespace": "jhub", "pod": "a"}, "values": [[1, "1"]]}], "range vector"),
        ([{"metric": {"namespace": "jhub"}, "value": [1, "1"]}], r"labels \['pod'\] missing"),
        ([{"metric": {"namespace": "jhub", "pod": 7}, "value": [1, "1"]}], "labels"),
        ([_series("a", "idle")], "not a number"),
        ([_series("a", "")], "not a number"),
        ([{"metric": {"namespace": "jhub", "pod": "a"}, "value": [1, 0.5]}], "not a string"),
        ([{"metric": {"namespace": "jhub", "pod": "a"}, "value": ["now", "1"]}], "timestamp"),
        ([{"metric": {"namespace": "jhub", "pod": "a"}, "value": [None, "1"]}], "timestamp"),
        ([{"metric": {"namespace": "jhub", "pod": "a"}, "value": [1]}], r"\[timestamp"),
        ([{"metric": {"namespace": "jhub", "pod": "a"}, "value": "1"}], r"\[timestamp"),
        ([_series("a", "1"), _series("a", "2", container="x")], "duplicate series"),
    ],
)
def test_parse_vector_malformed(result, message) -> None:
    with pytest.raises(MalformedResponse, match=message):
        parse_vector(result, KEY)


def test_malformed_names_the_series_position() -> None:
    with pytest.raises(MalformedResponse, match="series 1"):
        parse_vector([_series("a", "1"), _series("b", "x")], KEY)


# --- evaluated by Prometheus (promtool) --------------------------------------------------------


def test_freshness_query_default_names() -> None:
    assert freshness_query(DEFAULT, PODS) == " or ".join(
        f'label_replace(time() - max(timestamp({metric}{{namespace="jhub", pod=~"jupyter-.*"}})), '
        f'"source", "{source}", "", "")'
        for source, metric in (
            ("cpu", "container_cpu_usage_seconds_total"),
            ("memory", "container_memory_working_set_bytes"),
            ("requests", "kube_pod_container_resource_requests"),
            ("gpu", "DCGM_FI_DEV_GPU_UTIL"),
        )
    )


def _promtool_case(expr: str, samples: list[tuple[str, float]], eval_time: str = "2h") -> str:
    exp = "".join(
        f"\n          - labels: '{labels}'\n            value: {value}" for labels, value in samples
    )
    return f"      - expr: '{expr}'\n        eval_time: {eval_time}\n        exp_samples:{exp}\n"


def test_queries_evaluate_as_intended_in_prometheus(tmp_path) -> None:
    """Synthetic cAdvisor, kube-state-metrics and DCGM series, evaluated by promtool.

    * jupyter-idle uses no CPU of its 1-core request; jupyter-busy 0.5 of 1 core (two containers), with
      the pod-level (container="") and pause series that must not be counted.
    * jupyter-gpu has two GPUs at 10 % and 30 % (avg 20 %) via GPU_UTIL only; jupyter-gpu2 has
      engine-active 0.02 and a GPU_UTIL of 90 that ``auto`` must ignore.
    * DCGM series carry the exporter's own namespace label and exported_* pod labels.
    """
    promtool = require_command("promtool", "install the prometheus package (scripts/install.sh)")
    names = MetricNames(gpu_namespace="exported_namespace", gpu_pod="exported_pod")
    q = build_queries(names, PODS, cpu_window="1h", gpu_window="30m", step="1m")
    ksm = "kube_pod_container_resource_requests"
    series = {
        'container_cpu_usage_seconds_total{namespace="jhub", pod="jupyter-idle", container="notebook"}': "7x300",
        'container_cpu_usage_seconds_total{namespace="jhub", pod="jupyter-busy", container="notebook"}': "0+15x300",
        'container_cpu_usage_seconds_total{namespace="jhub", pod="jupyter-busy", container=""}': "0+150x300",
        'container_cpu_usage_seconds_total{namespace="jhub", pod="jupyter-busy", container="POD"}': "0+150x300",
        'container_cpu_usage_seconds_total{namespace="other", pod="jupyter-x", container="notebook"}': "0+15x300",
        'container_memory_working_set_bytes{namespace="jhub", pod="jupyter-idle", container="notebook"}': "512x300",
        'container_memory_working_set_bytes{namespace="jhub", pod="jupyter-idle", container=""}': "9999x300",
        f'{ksm}{{namespace="jhub", pod="jupyter-idle", container="notebook", resource="cpu"}}': "1x300",
        f'{ksm}{{namespace="jhub", pod="jupyter-idle", container="notebook", resource="memory"}}': "1024x300",
        f'{ksm}{{namespace="jhub", pod="jupyter-busy", container="notebook", resource="cpu"}}': "0.5x300",
        f'{ksm}{{namespace="jhub", pod="jupyter-busy", container="sidecar", resource="cpu"}}': "0.5x300",
        f'{ksm}{{namespace="jhub", pod="jupyter-gpu", container="notebook", resource="nvidia_com_gpu"}}': "2x300",
        f'{ksm}{{namespace="jhub", pod="jupyter-gpu", container="notebook", resource="ephemeral_storage"}}': "5x300",
        'DCGM_FI_DEV_GPU_UTIL{namespace="gpu-operator", exported_namespace="jhub", exported_pod="jupyter-gpu", gpu="0"}': "10x300",
        'DCGM_FI_DEV_GPU_UTIL{namespace="gpu-operator", exported_namespace="jhub", exported_pod="jupyter-gpu", gpu="1"}': "30x300",
        'DCGM_FI_DEV_GPU_UTIL{namespace="gpu-operator", exported_namespace="jhub", exported_pod="jupyter-gpu2", gpu="2"}': "90x300",
        'DCGM_FI_PROF_GR_ENGINE_ACTIVE{namespace="gpu-operator", exported_namespace="jhub", exported_pod="jupyter-gpu2", gpu="2"}': "0.02x300",
    }
    inputs = "".join(f"      - series: '{s}'\n        values: '{v}'\n" for s, v in series.items())
    idle = '{namespace="jhub", pod="jupyter-idle"}'
    busy = '{namespace="jhub", pod="jupyter-busy"}'
    gpu_labels = (
        '{{namespace="jhub", pod="{pod}", exported_namespace="jhub", exported_pod="{pod}"}}'
    )
    cases = [
        _promtool_case(q.cpu.max, [(idle, 0), (busy, 0.5)]),
        # Prometheus 2.x subqueries include both ends: 61 points for [1h:1m].
        _promtool_case(q.cpu.count, [(idle, 61), (busy, 61)]),
        _promtool_case(q.memory_ratio, [(idle, 0.5)]),
        _promtool_case(
            q.gpu.max,
            [
                (gpu_labels.format(pod="jupyter-gpu"), 20),
                (gpu_labels.format(pod="jupyter-gpu2"), 2),
            ],
        ),
        _promtool_case(
            q.gpu.count,
            [
                (gpu_labels.format(pod="jupyter-gpu"), 31),
                (gpu_labels.format(pod="jupyter-gpu2"), 31),
            ],
        ),
        _promtool_case(
            q.requests,
            [
                ('{namespace="jhub", pod="jupyter-idle", resource="cpu"}', 1),
                ('{namespace="jhub", pod="jupyter-idle", resource="memory"}', 1024),
                ('{namespace="jhub", pod="jupyter-busy", resource="cpu"}', 1),
                ('{namespace="jhub", pod="jupyter-gpu", resource="nvidia_com_gpu"}', 2),
            ],
        ),
    ]
    assert all("'" not in expr for expr in q.all().values())  # safe inside YAML single quotes
    test_file = tmp_path / "queries.yml"
    # A second group: cAdvisor stopped at 100 min, kube-state-metrics still scraped, no DCGM.
    stale_inputs = (
        "      - series: 'container_cpu_usage_seconds_total"
        '{namespace="jhub", pod="jupyter-a", container="notebook"}\'\n'
        "        values: '0+1x200'\n"
        f'      - series: \'{ksm}{{namespace="jhub", pod="jupyter-a", resource="cpu"}}\'\n'
        "        values: '1x300'\n"
    )
    stale_case = _promtool_case(
        q.freshness, [('{source="cpu"}', 120), ('{source="requests"}', 0)], eval_time="102m"
    )
    header = "  - interval: 30s\n    input_series:\n"
    test_file.write_text(
        "evaluation_interval: 1m\ntests:\n"
        + header
        + inputs
        + "    promql_expr_test:\n"
        + "".join(cases)
        + _promtool_case(
            q.freshness, [(f'{{source="{s}"}}', 0) for s in ("cpu", "memory", "requests", "gpu")]
        )
        + header
        + stale_inputs
        + "    promql_expr_test:\n"
        + stale_case
    )
    proc = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, textwrap.indent(proc.stdout + proc.stderr, "  ")
