"""Property-based tests of the parsers of untrusted input (issue 10, "bad input").

Each parser is fed arbitrary JSON values, arbitrary bytes and mutated valid documents: it must
answer with a value that keeps its invariants or with its own error type and a readable
message, never with an exception it does not document. Where a parser has an inverse, the
round trip is checked; where a parsed value feeds a safety decision (a server looking idle, an
image being verified), the decision is checked too.
"""

from __future__ import annotations

import asyncio
import bz2
import contextlib
import copy
import gzip
import hashlib
import io
import json
import lzma
import math
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from jupyterhub.crypto import CryptKeeper

from jhub_suspend import archive, images
from jhub_suspend.agent.app import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    IMAGE_REF,
    MAX_ANNOTATION_BYTES,
    ApiError,
    check_ref,
    parse_checkpoint_request,
    parse_json_body,
)
from jhub_suspend.agent.checkpointer import verification_problems
from jhub_suspend.checkpoints import RESTORABLE_STATUSES, Checkpoint, NodeFacts, Status
from jhub_suspend.policy import (
    MetricsHealth,
    PolicyConfig,
    Resources,
    ServerObservation,
    decide,
    freshness_health,
)
from jhub_suspend.promql import (
    MalformedResponse,
    MetricNames,
    PodSelector,
    build_queries,
    parse_vector,
)
from jhub_suspend.service.prom import MetricsUnavailable, PrometheusReader, Readings
from jhub_suspend.spawner import STATE_KEY, UNREADABLE_KEY, SuspendingKubeSpawner

# The whole file runs in about 20 s; the example database (.hypothesis/) replays what failed.
QUICK = settings(max_examples=150, deadline=None)
THOROUGH = settings(max_examples=200, deadline=None)
# for tests whose fixture is module-scoped: reusing it across examples is the point
MODULE_FIXTURE = settings(QUICK, suppress_health_check=[HealthCheck.function_scoped_fixture])

DIGEST = "sha256:" + "c" * 64

# ---- strategies ---------------------------------------------------------------------------------

# Integers past any float's range, as JSON parsers produce them from long digit strings.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**308, max_value=10**400)
    | st.floats()
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)


def _slots(doc: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key or index) of a JSON document, nested ones included."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield doc, key
            yield from _slots(value)
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield doc, i
            yield from _slots(value)


@st.composite
def mutated(draw: st.DrawFn, documents: st.SearchStrategy[Any]) -> Any:
    """A valid document with one to three of its values replaced, deleted or added to."""
    doc = copy.deepcopy(draw(documents))
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(doc))
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            container[key] = draw(json_values)
        elif action == "delete":
            del container[key]
        elif isinstance(container, dict):
            container[draw(st.text(max_size=10))] = draw(json_values)
        else:
            container.insert(key, draw(json_values))
    return doc


def assert_clear(error: BaseException) -> None:
    message = str(error.message if isinstance(error, ApiError) else error)
    assert message.strip(), f"{type(error).__name__} without a message"


# ---- 1. the checkpoint record in the spawner's state ---------------------------------------------

short_text = st.text(max_size=30)
statuses = st.sampled_from(
    [
        Status.VERIFIED,
        Status.SUSPENDED,
        Status.RESTORING,
        Status.RESTORED,
        Status.RESTORE_FAILED,
        Status.DISCARDED,
    ]
)
checkpoints = st.builds(
    Checkpoint,
    image=short_text,
    digest=short_text,
    size=st.integers(0, 2**63),
    created=short_text,
    reason=short_text,
    container=short_text,
    original_image=short_text,
    node=st.builds(
        NodeFacts,
        node=short_text,
        arch=short_text,
        gpu_product=short_text,
        gpu_count=st.integers(0, 16),
    ),
    status=statuses | short_text,
    archive_bytes=st.integers(0, 2**63),
    seconds=st.floats(0, 1e9),
)
references = st.builds(
    "{}/{}@sha256:{}".format,
    st.from_regex(r"[a-z0-9]{1,12}(:[0-9]{2,5})?/[a-z0-9]{1,12}", fullmatch=True),
    st.from_regex(r"jupyter-[a-z0-9]{1,20}", fullmatch=True),
    st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
)


@contextlib.contextmanager
def crypt_key(key: bytes | None = None) -> Iterator[bytes]:
    """The hub's crypt key (JUPYTERHUB_CRYPT_KEY) set to ``key`` or a new one."""
    keeper = CryptKeeper.instance()
    old = keeper.keys
    key = key or Fernet.generate_key()[:32]
    keeper.keys = [key]
    try:
        yield key
    finally:
        keeper.keys = old


HUB_KEY = Fernet.generate_key()[:32]


def sealed(checkpoint: Checkpoint) -> dict:
    """The record as a hub with :data:`HUB_KEY` stores it."""
    with crypt_key(HUB_KEY):
        return stored(checkpoint.to_state())


@contextlib.contextmanager
def no_crypt_key() -> Iterator[None]:
    keeper = CryptKeeper.instance()
    old = keeper.keys
    keeper.keys = []
    try:
        yield
    finally:
        keeper.keys = old


def stored(state: dict) -> Any:
    """``state`` as the hub's database gives it back: through JSON."""
    return json.loads(json.dumps(state))


@QUICK
@given(checkpoint=checkpoints, seal=st.booleans())
def test_a_checkpoint_record_round_trips_through_the_hubs_database(checkpoint, seal):
    with crypt_key():
        assert Checkpoint.from_state(stored(checkpoint.to_state(seal=seal))) == checkpoint
    with no_crypt_key():
        assert Checkpoint.from_state(stored(checkpoint.to_state())) == checkpoint


def assert_readable_or_refused(record: Any) -> None:
    try:
        checkpoint = Checkpoint.from_state(record)
    except ValueError as e:
        assert_clear(e)
        return
    for name in ("image", "digest", "created", "reason", "container", "original_image", "status"):
        assert isinstance(getattr(checkpoint, name), str), name
    for number in (checkpoint.size, checkpoint.archive_bytes, checkpoint.node.gpu_count):
        assert isinstance(number, int) and not isinstance(number, bool)
    assert isinstance(checkpoint.seconds, int | float) and not isinstance(checkpoint.seconds, bool)
    # what the spawner asks of every record it holds must answer, not raise
    assert checkpoint.restorable == (checkpoint.status in RESTORABLE_STATUSES)
    assert isinstance(checkpoint.to_state(seal=False), dict)


@THOROUGH
@given(record=json_values | mutated(checkpoints.map(lambda c: stored(c.to_state(seal=False)))))
# Each of these leaked AttributeError or TypeError (or, later, on `restorable`) before.
@example(record=[])
@example(record={"image": 1, "digest": "d"})
@example(
    record={
        **stored(Checkpoint("i", "d", 1, "c", "r", "n", "o").to_state(seal=False)),
        "status": [],
    }
)
@example(
    record={**stored(Checkpoint("i", "d", 1, "c", "r", "n", "o").to_state(seal=False)), "node": "x"}
)
@example(
    record={
        **stored(Checkpoint("i", "d", 1, "c", "r", "n", "o").to_state(seal=False)),
        "size": True,
    }
)
def test_any_record_is_read_with_its_types_or_refused_with_a_value_error(record):
    with no_crypt_key():
        assert_readable_or_refused(record)


@QUICK
@given(
    record=mutated(
        checkpoints.map(sealed) | checkpoints.map(lambda c: stored(c.to_state(seal=False)))
    )
)
def test_a_sealed_record_mutated_is_read_or_refused_with_a_value_error(record):
    with crypt_key(HUB_KEY):
        assert_readable_or_refused(record)


@QUICK
@given(checkpoint=checkpoints, reference=references, data=st.data())
# InvalidToken, which is no ValueError, leaked from the decryption before.
@example(
    checkpoint=Checkpoint("i", "d", 1, "c", "r", "n", "o"),
    reference=f"r/p/jupyter-a@{DIGEST}",
    data=None,
)
def test_a_sealed_image_reference_cannot_be_changed_unnoticed(checkpoint, reference, data):
    """With the hub's crypt key, the image a record names is unreadable in the database and an
    altered or foreign token is refused: the record names the image the hub sealed or none.

    (An altered ``fernet:`` prefix makes the value a plain reference, which is read as one even
    with a key set: records written before the key was set stay readable.)"""
    checkpoint = replace(checkpoint, image=reference)
    with crypt_key(HUB_KEY):
        state = stored(checkpoint.to_state())
        assert reference not in json.dumps(state)
        assert "@sha256:" not in json.dumps(state)
        token = state["image"]
        if data is None:
            altered = token[:-6] + "AAAAAA"
        else:
            i = data.draw(st.integers(len("fernet:"), len(token) - 1), label="position")
            altered = token[:i] + data.draw(st.characters(), label="character") + token[i + 1 :]
        assume(altered != token)
        try:
            assert Checkpoint.from_state({**state, "image": altered}).image == reference
        except ValueError as e:
            assert "altered" in str(e)
    with crypt_key(), pytest.raises(ValueError, match="encrypted with another key"):
        Checkpoint.from_state(state)


@pytest.fixture(scope="module")
def spawner(tmp_path_factory):
    """One SuspendingKubeSpawner (KubeSpawner's _mock) whose state is loaded again and again."""
    from kubernetes_asyncio.config import kube_config
    from kubespawner import clients

    from jhub_suspend.localcluster.apiserver import write_kubeconfig

    path = tmp_path_factory.mktemp("kube") / "kubeconfig"
    write_kubeconfig(str(path), "http://127.0.0.1:9", token="unused")

    async def make() -> SuspendingKubeSpawner:
        return SuspendingKubeSpawner(_mock=True)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
        yield asyncio.run(make())
    clients._client_cache.clear()


spawner_states = st.fixed_dictionaries(
    {
        STATE_KEY: json_values
        | mutated(checkpoints.map(lambda c: {"checkpoint": stored(c.to_state(seal=False))}))
    }
)


@MODULE_FIXTURE
@given(state=spawner_states)
# A list under jhub_suspend made load_state raise AttributeError: the user could not start.
@example(state={STATE_KEY: [1]})
@example(state={STATE_KEY: "x"})
def test_the_spawner_loads_any_state_and_keeps_what_it_cannot_read(spawner, state):
    """A state the hub cannot read never locks the user out: load_state does not raise; a record
    it cannot read is not restorable, is kept for the admin and the user is told."""
    with no_crypt_key():
        spawner.load_state(state)
        ours = state[STATE_KEY]
        raw = ours.get("checkpoint") if isinstance(ours, dict) else ours
        if not raw:
            assert spawner.checkpoint is None
            return
        try:
            expected = Checkpoint.from_state(raw)
        except ValueError:
            assert spawner.checkpoint is None
            assert not spawner.suspended
            assert spawner.unreadable_checkpoint is raw
            assert spawner.last_error is not None and spawner.last_error.operation == "restore"
            assert spawner.get_state()[STATE_KEY][UNREADABLE_KEY] is raw
        else:
            assert spawner.checkpoint == expected


# ---- 2. the node agent's request body ------------------------------------------------------------

REPO = "registry.example.org/jhub-suspend"
CKPT_NAMES = archive.CHECKPOINT_NAME_ANNOTATIONS

dns_labels = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
components = st.from_regex(r"[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
annotations = st.dictionaries(
    st.text(
        st.characters(exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=30
    ).filter(lambda k: "=" not in k and not any(c.isspace() for c in k)),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=60),
    max_size=5,
)


@st.composite
def request_bodies(draw: st.DrawFn) -> dict[str, Any]:
    container = draw(dns_labels)
    path = "/".join(draw(st.lists(components, min_size=1, max_size=3)))
    tag = draw(st.none() | tags)
    ann = draw(annotations)
    for name in draw(st.sets(st.sampled_from(CKPT_NAMES))):
        ann[name] = container
    return {
        "namespace": draw(dns_labels),
        "pod": ".".join(draw(st.lists(dns_labels, min_size=1, max_size=3))),
        "container": container,
        "image": f"{REPO}/{path}" + (f":{tag}" if tag else ""),
        "annotations": draw(st.none() | st.just(ann)),
    }


@QUICK
@given(body=request_bodies())
def test_a_valid_request_body_parses_to_what_it_says(body):
    req = parse_checkpoint_request(parse_json_body(json.dumps(body).encode()), REPO)
    assert (req.namespace, req.pod, req.container, req.image) == (
        body["namespace"],
        body["pod"],
        body["container"],
        body["image"],
    )
    assert req.annotations == (body["annotations"] or {})


def assert_accepted_request_is_safe(body: Any) -> None:
    try:
        req = parse_checkpoint_request(body, REPO)
    except ApiError as e:
        assert e.status_code in (400, 403)
        assert_clear(e)
        return
    assert len(req.namespace) <= 63 and DNS_LABEL.fullmatch(req.namespace)
    assert len(req.pod) <= 253 and DNS_SUBDOMAIN.fullmatch(req.pod)
    assert len(req.container) <= 63 and DNS_LABEL.fullmatch(req.container)
    assert req.namespace.isascii() and req.pod.isascii() and req.container.isascii()
    # the push goes to a tag under this agent's repository, in characters registries know
    m = IMAGE_REF.fullmatch(req.image)
    assert m and not m["digest"] and req.image.isascii() and len(req.image) <= 512
    assert m["name"] == REPO or m["name"].startswith(REPO + "/")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in req.annotations.items())
    json.dumps(req.annotations, ensure_ascii=False).encode()  # no lone surrogates
    assert len(json.dumps(req.annotations)) <= MAX_ANNOTATION_BYTES
    for name in CKPT_NAMES:
        assert req.annotations.get(name, req.container) == req.container


@THOROUGH
@given(body=json_values | mutated(request_bodies()))
# A Unicode tag (\w without re.ASCII) and a lone surrogate were accepted, to fail in the registry.
@example(body={"namespace": "a", "pod": "b", "container": "c", "image": f"{REPO}/a:é"})
@example(body={"namespace": "a", "pod": "b", "container": "c", "image": f"{REPO}/a:x٣"})
@example(
    body={
        "namespace": "a",
        "pod": "b",
        "container": "c",
        "image": f"{REPO}/a",
        "annotations": {"k": "\ud800"},
    }
)
def test_any_request_body_is_refused_with_400_or_403_or_is_safe(body):
    assert_accepted_request_is_safe(body)


@QUICK
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
# Deep nesting raised RecursionError: a 500 where a 400 is due.
@example(raw=b"[" * 100_000)
@example(raw=b'{"a":' * 50_000)
def test_any_body_bytes_are_json_or_a_400(raw):
    try:
        parse_json_body(raw)
    except ApiError as e:
        assert e.status_code == 400
        assert_clear(e)


@QUICK
@given(value=json_values.filter(lambda v: "NaN" not in json.dumps(v)))
def test_json_bodies_round_trip(value):
    assert parse_json_body(json.dumps(value).encode()) == value


repositories = st.builds(
    "{}/{}".format,
    st.from_regex(r"[a-z0-9]{1,10}(\.[a-z]{2,5})?(:[0-9]{2,5})?", fullmatch=True),
    st.lists(components, min_size=1, max_size=2).map("/".join),
)


@QUICK
@given(repository=repositories, other=repositories, suffix=components, tag=tags)
def test_only_references_under_the_agents_repository_are_accepted(repository, other, suffix, tag):
    """A sibling whose name merely starts with the repository's (``repo-evil``) is outside."""
    for name in (other, repository + suffix, f"{repository}-{suffix}", f"{repository}/{suffix}"):
        inside = name == repository or name.startswith(repository + "/")
        ref = f"{name}:{tag}"
        try:
            assert check_ref(ref, repository, allow_digest=False) == ref
            assert inside, f"{ref} accepted outside {repository}"
        except ApiError as e:
            assert e.status_code == 403 and not inside


# ---- 3. Prometheus's answers -------------------------------------------------------------------

KEY = ("namespace", "pod")
label_values = st.text(max_size=20)
sample_values = st.floats() | st.integers(-(10**20), 10**20).map(float)


def prometheus_number(value: float, fixed: bool) -> str:
    """``value`` as Prometheus writes it: NaN, +Inf, -Inf, else Go's shortest decimal."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return format(Decimal(repr(value)), "f") if fixed else repr(value)


@st.composite
def vectors(draw: st.DrawFn) -> tuple[dict[tuple[str, ...], float], list[dict]]:
    """Samples by key and the instant vector Prometheus would answer with for them."""
    samples = draw(
        st.dictionaries(st.tuples(label_values, label_values), sample_values, max_size=6)
    )
    series = []
    for (namespace, pod), value in samples.items():
        extra = draw(
            st.dictionaries(st.sampled_from(["container", "job", "__name__"]), label_values)
        )
        timestamp = draw(st.floats(0, 2e9) | st.integers(0, 2**31) | st.floats(0, 2e9).map(str))
        series.append(
            {
                "metric": {**extra, "namespace": namespace, "pod": pod},
                "value": [timestamp, prometheus_number(value, draw(st.booleans()))],
            }
        )
    return samples, draw(st.permutations(series))


def same_floats(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@QUICK
@given(vector=vectors())
def test_a_prometheus_vector_parses_to_its_samples(vector):
    samples, result = vector
    parsed = parse_vector(stored(result), KEY)
    assert parsed.keys() == samples.keys()
    assert all(same_floats(parsed[k], v) for k, v in samples.items())


@QUICK
@given(vector=vectors(), data=st.data())
def test_two_series_for_one_key_are_refused(vector, data):
    """A query that did not aggregate as meant must not have one of its values picked."""
    _, result = vector
    assume(result)
    twin = copy.deepcopy(data.draw(st.sampled_from(result)))
    twin["metric"]["container"] = "twin"
    with pytest.raises(MalformedResponse, match="duplicate"):
        parse_vector([*result, twin], KEY)


def assert_parsed_or_malformed(result: Any, key: tuple[str, ...] = KEY) -> None:
    try:
        parsed = parse_vector(result, key)
    except MalformedResponse as e:
        assert_clear(e)
        return
    for k, v in parsed.items():
        assert isinstance(k, tuple) and len(k) == len(key) and all(isinstance(s, str) for s in k)
        assert isinstance(v, float)


@THOROUGH
@given(result=json_values | mutated(vectors().map(lambda v: v[1])))
# A timestamp beyond any float raised OverflowError through the reader's fail-safe.
@example(result=[{"metric": {"namespace": "a", "pod": "b"}, "value": [10**400, "1"]}])
def test_any_prometheus_answer_parses_or_is_malformed(result):
    assert_parsed_or_malformed(result)


class CannedReader(PrometheusReader):
    """The reader with its queries answered from a dict instead of by Prometheus."""

    def __init__(self, answers: dict[str, Any]) -> None:  # no client: nothing is queried
        self.answers = answers
        self.queries_total = 0

    async def query(self, name: str, text: str, at: float | None = None) -> Any:
        self.queries_total += 1
        return self.answers.get(name, [])


CONFIG = PolicyConfig(warn_before=600)
NAMES = MetricNames()
QUERIES = build_queries(
    NAMES,
    PodSelector("jhub"),
    cpu_window=CONFIG.idle_window,
    gpu_window=CONFIG.gpu_idle_window,
)
# what the reader asks Prometheus (the requests come from the pod specs)
QUERY_NAMES = tuple(name for name in QUERIES.all() if name != "requests")


def read(answers: dict[str, Any]) -> Readings:
    return asyncio.run(CannedReader(answers).read(QUERIES, NAMES, 1.7e9))


@QUICK
@given(answers=st.fixed_dictionaries({}, optional=dict.fromkeys(QUERY_NAMES, json_values)))
# OverflowError got past the reader, which turns only MalformedResponse into a fail-safe cycle.
@example(answers={"cpu_max": [{"metric": {"namespace": "a", "pod": "b"}, "value": [10**400, "1"]}]})
def test_the_reader_gives_readings_or_fails_safe_as_malformed(answers):
    try:
        readings = read(answers)
    except MetricsUnavailable as e:
        assert e.category == "malformed"
        assert_clear(e)
    else:
        assert readings.queries == len(QUERY_NAMES)


NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
LONG_AGO = NOW - timedelta(days=30)
POD = ("jhub", "jupyter-alice")


def answer(value: float, fixed: bool = False) -> list[dict]:
    return [
        {
            "metric": {"namespace": POD[0], "pod": POD[1]},
            "value": [1.7e9, prometheus_number(value, fixed)],
        }
    ]


def idle_enough(value: float | None, count: float | None, threshold: float, expected: int) -> bool:
    """What the policy's docstring promises: idle only on a finite value in [0, threshold)
    with enough samples; missing, sparse, negative, NaN or infinite data is never idle."""
    if value is None or count is None:
        return False
    samples = int(count) if math.isfinite(count) and count > 0 else 0
    enough = min(1.0, samples / expected) >= CONFIG.min_coverage
    return math.isfinite(value) and 0 <= value < threshold and enough


# Values a broken exporter or a request of 0 produce, the edges of the thresholds, and any float.
bad_or_edge = (
    st.sampled_from(
        [
            math.nan,
            math.inf,
            -math.inf,
            -0.0,
            -1e-300,
            1e308,
            0.0,
            0.05,
            0.0499999,
            5.0,
            4.99,
            1e-300,
        ]
    )
    | st.floats()
)
counts = (
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1.0, 48.0, 60.0, 61.0, 1e300])
    | st.floats()
)


@THOROUGH
@given(
    cpu=st.none() | bad_or_edge,
    cpu_count=st.none() | counts,
    gpu=st.none() | bad_or_edge,
    gpu_count=st.none() | counts,
    gpus=st.sampled_from([0, 1]),
    fixed=st.booleans(),
)
# NaN, a tiny negative, a bad GPU signal of a GPU server, an infinite count
@example(cpu=math.nan, cpu_count=60.0, gpu=None, gpu_count=None, gpus=0, fixed=False)
@example(cpu=-1e-300, cpu_count=60.0, gpu=None, gpu_count=None, gpus=0, fixed=False)
@example(cpu=0.0, cpu_count=60.0, gpu=math.nan, gpu_count=30.0, gpus=1, fixed=False)
@example(cpu=0.0, cpu_count=60.0, gpu=-math.inf, gpu_count=30.0, gpus=1, fixed=False)
@example(cpu=0.0, cpu_count=math.inf, gpu=None, gpu_count=None, gpus=0, fixed=False)
def test_bad_or_missing_metrics_never_make_a_server_look_idle(
    cpu, cpu_count, gpu, gpu_count, gpus, fixed
):
    """From Prometheus's answer to the policy's decision, as the service runs them: a server
    whose activity and warning are long past is suspended exactly when every signal it is judged
    on is a finite value in [0, threshold) with enough samples; any other answer keeps it."""
    answers: dict[str, Any] = {}
    cpu_prefix = "cpu_gpu_window" if gpus else "cpu"
    if cpu is not None:
        answers[f"{cpu_prefix}_max"] = answer(cpu, fixed)
    if cpu_count is not None:
        answers[f"{cpu_prefix}_count"] = answer(cpu_count, fixed)
    if gpu is not None:
        answers["gpu_max"] = answer(gpu, fixed)
    if gpu_count is not None:
        answers["gpu_count"] = answer(gpu_count, fixed)
    readings = read(answers)
    signals = readings.cpu_gpu_window if gpus else readings.cpu
    assert signals is not None
    observation = ServerObservation(
        user="alice",
        server_name="",
        state="running",
        started=LONG_AGO,
        requests=Resources(cpu=1, memory=2**30, gpu=gpus),
        namespace=POD[0],
        pod=POD[1],
        cpu=signals.get(POD),
        gpu=readings.gpu.get(POD) if gpus else None,
        last_activity=LONG_AGO,
        warned_since=LONG_AGO,
        gpu_capable=True,  # the node's GPU capability is not what this test varies
    )
    plan = decide([observation], [], CONFIG, NOW, MetricsHealth(True))
    decision = plan.decisions[0]
    cpu_queries = QUERIES.cpu_gpu_window if gpus else QUERIES.cpu
    assert cpu_queries is not None
    idle = idle_enough(cpu, cpu_count, CONFIG.cpu_threshold, cpu_queries.expected_samples)
    if gpus:
        idle = idle and idle_enough(
            gpu, gpu_count, CONFIG.gpu_threshold, QUERIES.gpu.expected_samples
        )
    assert decision.action == ("suspend" if idle else "keep"), decision.reasons


@QUICK
@given(
    ages=st.dictionaries(
        st.sampled_from(["cpu", "memory", "requests", "gpu"]), bad_or_edge | counts
    ),
    required=st.sets(st.sampled_from(["cpu", "memory", "requests", "gpu"])),
    max_age=st.floats(1, 3600),
)
def test_metrics_are_fresh_only_with_a_finite_recent_age_for_every_source(ages, required, max_age):
    result = [
        {"metric": {"source": s}, "value": [1.7e9, prometheus_number(a, False)]}
        for s, a in ages.items()
    ]
    parsed = {k[0]: v for k, v in parse_vector(stored(result), ("source",)).items()}
    health = freshness_health(parsed, required, max_age)
    fresh = all(s in ages and math.isfinite(ages[s]) and ages[s] <= max_age for s in required)
    assert health.ok == fresh
    if not health.ok:
        assert health.reason.startswith("stale")


# ---- 4. the checkpoint archive's metadata and the image's annotations ---------------------------

config_dumps = st.fixed_dictionaries(
    {},
    optional={
        "id": short_text,
        "name": short_text | json_values,
        "rootfsImage": short_text | json_values,
        "rootfsImageName": short_text | json_values,
        "runtime": short_text | json_values,
        "createdTime": short_text,
    },
)


def tar_with(members: list[tuple[str, bytes | str | None]]) -> bytes:
    """A tar of regular files (bytes), symbolic links (str: the target) and directories (None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, bytes):
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
    return buf.getvalue()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("archives") / "checkpoint.tar"


@MODULE_FIXTURE
@given(
    config=config_dumps, name=st.sampled_from(["config.dump", "./config.dump"]), gz=st.booleans()
)
def test_an_archives_config_dump_is_read_as_written(scratch, config, name, gz):
    assume("NaN" not in json.dumps(config))  # NaN != NaN
    data = tar_with([("checkpoint/", None), (name, json.dumps(config).encode())])
    scratch.write_bytes(gzip.compress(data) if gz else data)
    assert images.archive_config(str(scratch)) == stored(config)


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    """Checkpoint archives, valid or not: any members, config.dump of any bytes or type,
    compressed or not, with a byte changed, cut anywhere."""
    config = draw(
        st.binary(max_size=100)
        | json_values.map(lambda v: json.dumps(v).encode())
        | config_dumps.map(lambda c: json.dumps(c).encode())
    )
    names = st.sampled_from(["config.dump", "./config.dump", "spec.dump", "checkpoint"])
    contents = st.just(config) | st.sampled_from(["missing", "spec.dump", "/etc/x"]) | st.none()
    members = draw(st.lists(st.tuples(names, contents), max_size=3))
    compress = draw(st.sampled_from([bytes, gzip.compress, bz2.compress, lzma.compress]))
    data = compress(tar_with(members))
    if data and draw(st.booleans()):
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@MODULE_FIXTURE
@given(data=archives() | st.binary(max_size=600))
# A config.dump that is a link to a missing member raised KeyError, one nested deeper than the
# recursion limit RecursionError, a gzip cut in its header EOFError: the contract is an empty
# config.
@example(data=tar_with([("config.dump", "missing")]))
@example(data=tar_with([("config.dump", b"[" * 100_000)]))
@example(data=gzip.compress(tar_with([("config.dump", b"{}")]))[:5])
def test_any_archive_gives_its_config_or_an_empty_one(scratch, data):
    scratch.write_bytes(data)
    config = images.archive_config(str(scratch))
    assert isinstance(config, dict)


string_annotations = st.dictionaries(short_text, short_text, max_size=4)


@QUICK
@given(
    given_annotations=string_annotations,
    names=st.lists(st.sampled_from(CKPT_NAMES), unique=True).flatmap(
        lambda ns: st.fixed_dictionaries({n: short_text for n in ns})
    ),
    config=config_dumps,
)
# A config.dump whose name or runtime was no string gave annotations such as "['x']".
@example(given_annotations={}, names={}, config={"name": ["x"]})
@example(given_annotations={}, names={}, config={"name": "c", "runtime": {"a": 1}})
def test_checkpoint_annotations_name_one_container_in_strings(given_annotations, names, config):
    ann = {**given_annotations, **names}
    out = images.complete_annotations(ann, config)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in out.items())
    given_name = next((ann[n] for n in CKPT_NAMES if ann.get(n)), None)
    config_name = config.get("name")
    name = given_name or (config_name if isinstance(config_name, str) else None)
    if not name:
        assert out == ann
        return
    assert all(out[n] == name for n in CKPT_NAMES)
    # the caller's annotations win; what is added is checkpointctl's metadata
    assert all(out[k] == v for k, v in ann.items() if k not in CKPT_NAMES)
    added = out.keys() - ann.keys() - set(CKPT_NAMES)
    assert all(k.startswith(archive.CRIU_ANNOTATION_PREFIX) for k in added)
    runtime = config.get("runtime")
    key = archive.CRIU_ANNOTATION_PREFIX + "runtime.name"
    if key not in ann:
        assert out.get(key) == (runtime if isinstance(runtime, str) and runtime else None)


@st.composite
def manifests(draw: st.DrawFn) -> tuple[dict, str]:
    """An OCI image manifest as a registry returns it, and its raw text."""
    layers = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "mediaType": st.just(images.LAYER_MEDIA_TYPE),
                    "digest": st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True),
                    "size": st.integers(0, 2**40),
                }
            ),
            max_size=3,
        )
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": images.MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": images.CONFIG_MEDIA_TYPE, "digest": DIGEST, "size": 2},
        "layers": layers,
        "annotations": draw(string_annotations),
    }
    return manifest, json.dumps(manifest, indent=draw(st.none() | st.just(2)))


@QUICK
@given(manifest=manifests())
def test_a_manifest_gives_its_digest_size_and_annotations(manifest):
    doc, raw = manifest
    facts = images.manifest_facts("r/a:b", raw)
    assert facts["digest"] == "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
    assert facts["size"] == sum(layer["size"] for layer in doc["layers"])
    assert facts["annotations"] == doc["annotations"]
    assert facts["layers"] == [layer["digest"] for layer in doc["layers"]]


@THOROUGH
@given(
    raw=st.text(max_size=100)
    | json_values.map(json.dumps)
    | mutated(manifests().map(lambda m: m[0])).map(json.dumps)
)
# Each leaked an AttributeError, TypeError, ValueError or RecursionError, no ImageError: the
# agent's verification answered 500 "internal" where the registry's answer was at fault.
@example(raw="[]")
@example(raw='{"layers": [1]}')
@example(raw='{"layers": [{"size": "x"}]}')
@example(raw='{"annotations": [1]}')
@example(raw="[" * 100_000)
def test_any_manifest_gives_facts_or_an_image_error(raw):
    try:
        facts = images.manifest_facts("r/a:b", raw)
    except images.ImageError as e:
        assert_clear(e)
        return
    assert isinstance(facts["size"], int) and facts["size"] >= 0
    assert isinstance(facts["annotations"], dict)
    # the agent's verification reads these facts; it must answer, not raise
    assert isinstance(verification_problems(facts, DIGEST, {"k": "v"}), list)


@QUICK
@given(
    manifest=manifests(),
    pushed=string_annotations,
    data=st.data(),
)
def test_an_image_verifies_only_with_the_pushed_digest_annotations_and_some_data(
    manifest, pushed, data
):
    doc, _ = manifest
    doc["annotations"] = {**doc["annotations"], **pushed}
    if pushed and data.draw(st.booleans(), label="alter an annotation"):
        key = data.draw(st.sampled_from(sorted(pushed)), label="key")
        doc["annotations"][key] = data.draw(
            short_text.filter(lambda v: v != pushed[key]), label="to"
        )
    raw = json.dumps(doc)
    facts = images.manifest_facts("r/a:b", raw)
    pushed_digest = data.draw(st.sampled_from([facts["digest"], DIGEST]), label="pushed digest")
    problems = verification_problems(facts, pushed_digest, pushed)
    verifies = (
        pushed_digest == facts["digest"]
        and all(doc["annotations"].get(k) == v for k, v in pushed.items())
        and facts["size"] > 0
    )
    assert (problems == []) == verifies, problems
