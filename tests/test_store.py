"""The object store: the API server's semantics, in process, with an injected clock."""

import asyncio
from typing import Any

import pytest

from jhub_suspend.localcluster.store import (
    ApiError,
    Store,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
    qos_class,
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> Store:
    return Store(clock=clock)


def pod(name: str = "jupyter-alice", labels: dict[str, str] | None = None, **spec: Any) -> dict:
    return {
        "metadata": {"name": name, "labels": labels or {"component": "singleuser-server"}},
        "spec": {"containers": [{"name": "notebook", "image": "jupyter/base:1.0"}], **spec},
    }


def raises(code: int, reason: str):
    class _Check:
        def __enter__(self) -> None:
            self.ctx = pytest.raises(ApiError)
            self.info = self.ctx.__enter__()

        def __exit__(self, *exc: Any) -> bool:
            handled = self.ctx.__exit__(*exc)
            assert (self.info.value.code, self.info.value.reason) == (code, reason), self.info.value
            return bool(handled)

    return _Check()


# --- create ----------------------------------------------------------------------------------


def test_create_sets_server_fields(store: Store) -> None:
    created = store.create("pods", "default", pod())
    meta = created["metadata"]
    assert len(meta["uid"]) == 36
    assert meta["namespace"] == "default"
    assert meta["creationTimestamp"] == "2023-11-14T22:13:20Z"
    assert meta["generation"] == 1
    assert int(meta["resourceVersion"]) == int(store.resource_version)
    assert created["kind"] == "Pod" and created["apiVersion"] == "v1"
    second = store.create("pods", "default", pod("jupyter-bob"))
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert second["metadata"]["uid"] != meta["uid"]


def test_create_pod_gets_defaults_and_pending_status(store: Store) -> None:
    created = store.create("pods", "default", pod())
    spec = created["spec"]
    assert spec["restartPolicy"] == "Always"
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["dnsPolicy"] == "ClusterFirst"
    assert spec["schedulerName"] == "default-scheduler"
    container = spec["containers"][0]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert created["status"] == {"phase": "Pending", "conditions": [], "qosClass": "BestEffort"}


def test_create_ignores_client_status_and_rv(store: Store) -> None:
    body = pod()
    body["status"] = {"phase": "Running"}
    body["metadata"]["resourceVersion"] = "999"
    created = store.create("pods", "default", body)
    assert created["status"]["phase"] == "Pending"
    assert created["metadata"]["resourceVersion"] != "999"


def test_generate_name(store: Store) -> None:
    body = {"metadata": {"generateName": "cm-"}, "data": {"a": "b"}}
    first = store.create("configmaps", "default", body)
    second = store.create("configmaps", "default", body)
    assert first["metadata"]["name"].startswith("cm-")
    assert len(first["metadata"]["name"]) == len("cm-") + 5
    assert first["metadata"]["name"] != second["metadata"]["name"]


def test_create_twice_is_already_exists(store: Store) -> None:
    store.create("pods", "default", pod())
    with raises(409, "AlreadyExists"):
        store.create("pods", "default", pod())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (pod("Bad_Name"), "metadata.name"),
        ({"metadata": {}, "spec": {"containers": [{"name": "a", "image": "b"}]}}, "metadata.name"),
        ({"metadata": {"name": "p"}, "spec": {"containers": []}}, "spec.containers"),
        (
            {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}},
            "spec.containers[0].image",
        ),
        (
            {"metadata": {"name": "p"}, "spec": {"containers": [{"image": "a"}]}},
            "spec.containers[0].name",
        ),
    ],
)
def test_invalid_pods_are_422(store: Store, body: dict, field: str) -> None:
    with pytest.raises(ApiError) as info:
        store.create("pods", "default", body)
    assert info.value.code == 422
    assert info.value.reason == "Invalid"
    assert field in info.value.message
    assert info.value.status()["details"]["causes"][0]["field"] == field


def test_service_names_are_dns_1035_labels(store: Store) -> None:
    with raises(422, "Invalid"):
        store.create("services", "default", {"metadata": {"name": "1abc"}, "spec": {}})
    svc = store.create(
        "services", "default", {"metadata": {"name": "abc"}, "spec": {"ports": [{"port": 8888}]}}
    )
    assert svc["spec"]["clusterIP"].startswith("10.96.")
    assert svc["spec"]["ports"][0] == {"port": 8888, "protocol": "TCP", "targetPort": 8888}


def test_namespace_mismatch_and_missing_namespace(store: Store) -> None:
    body = pod()
    body["metadata"]["namespace"] = "other"
    with raises(400, "BadRequest"):
        store.create("pods", "default", body)
    with pytest.raises(ApiError) as info:
        store.create("pods", "nosuch", pod())
    assert info.value.code == 404
    assert info.value.message == 'namespaces "nosuch" not found'


def test_secret_string_data_becomes_data(store: Store) -> None:
    secret = store.create(
        "secrets", "default", {"metadata": {"name": "s"}, "stringData": {"token": "abc"}}
    )
    assert secret["data"] == {"token": "YWJj"}
    assert "stringData" not in secret
    assert secret["type"] == "Opaque"


def test_initial_namespaces(store: Store) -> None:
    names = [ns["metadata"]["name"] for ns in store.list("namespaces")[0]]
    assert "default" in names
    assert store.get("namespaces", None, "default")["status"]["phase"] == "Active"


# --- get and list ----------------------------------------------------------------------------


def test_get_missing_is_404_with_real_message(store: Store) -> None:
    with pytest.raises(ApiError) as info:
        store.get("pods", "default", "x")
    status = info.value.status()
    assert status["code"] == 404
    assert status["message"] == 'pods "x" not found'
    assert status["details"] == {"name": "x", "kind": "pods"}


def test_list_filters_by_namespace_and_selectors(store: Store) -> None:
    store.create("namespaces", None, {"metadata": {"name": "other"}})
    store.create("pods", "default", pod("a", {"component": "singleuser-server"}))
    store.create("pods", "default", pod("b", {"component": "hub"}))
    store.create("pods", "other", pod("c", {"component": "singleuser-server"}))
    store.mutate("pods", "default", "a", lambda p: p["spec"].update(nodeName="node-1"))

    def names(items: list[dict]) -> list[str]:
        return [i["metadata"]["name"] for i in items]

    assert names(store.list("pods", "default")[0]) == ["a", "b"]
    assert names(store.list("pods")[0]) == ["a", "b", "c"]
    assert names(store.list("pods", label_selector="component=singleuser-server")[0]) == ["a", "c"]
    assert names(store.list("pods", field_selector="spec.nodeName=node-1")[0]) == ["a"]
    assert names(store.list("pods", field_selector="metadata.namespace!=default")[0]) == ["c"]
    assert store.list("pods")[1] == store.resource_version
    with raises(400, "BadRequest"):
        store.list("pods", label_selector="a in (b")


# --- update ----------------------------------------------------------------------------------


def test_replace_with_stale_resource_version_conflicts(store: Store) -> None:
    created = store.create("configmaps", "default", {"metadata": {"name": "c"}, "data": {"a": "1"}})
    created["data"] = {"a": "2"}
    updated = store.replace("configmaps", "default", "c", created)
    assert updated["data"] == {"a": "2"}
    created["data"] = {"a": "3"}  # still carries the old resourceVersion
    with pytest.raises(ApiError) as info:
        store.replace("configmaps", "default", "c", created)
    assert info.value.code == 409
    assert "the object has been modified" in info.value.message


def test_noop_replace_keeps_resource_version(store: Store) -> None:
    created = store.create("configmaps", "default", {"metadata": {"name": "c"}, "data": {"a": "1"}})
    again = store.replace("configmaps", "default", "c", created)
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_replace_keeps_status_and_status_subresource_only_changes_status(store: Store) -> None:
    created = store.create("pods", "default", pod())
    body = dict(created, status={"phase": "Running"})
    body["metadata"] = dict(created["metadata"], labels={"x": "y"})
    updated = store.replace("pods", "default", "jupyter-alice", body)
    assert updated["status"]["phase"] == "Pending"
    assert updated["metadata"]["labels"] == {"x": "y"}
    body = dict(updated, status={"phase": "Running", "podIP": "10.0.0.5"})
    body["metadata"] = dict(updated["metadata"], labels={"ignored": "yes"})
    updated = store.replace("pods", "default", "jupyter-alice", body, subresource="status")
    assert updated["status"] == {"phase": "Running", "podIP": "10.0.0.5"}
    assert updated["metadata"]["labels"] == {"x": "y"}


def test_pod_spec_is_immutable_but_image_is_not(store: Store) -> None:
    created = store.create("pods", "default", pod())
    created["spec"]["containers"][0]["image"] = "jupyter/base:2.0"
    updated = store.replace("pods", "default", "jupyter-alice", created)
    assert updated["spec"]["containers"][0]["image"] == "jupyter/base:2.0"
    assert updated["metadata"]["generation"] == 2
    updated["spec"]["restartPolicy"] = "Never"
    with raises(422, "Invalid"):
        store.replace("pods", "default", "jupyter-alice", updated)


def test_identity_cannot_be_changed(store: Store) -> None:
    created = store.create("configmaps", "default", {"metadata": {"name": "c"}})
    body = {
        "metadata": {"name": "c", "uid": "forged", "creationTimestamp": "x"},
        "data": {"k": "v"},
    }
    updated = store.replace("configmaps", "default", "c", body)
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert updated["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]
    with raises(400, "BadRequest"):
        store.replace("configmaps", "default", "c", {"metadata": {"name": "other"}})


# --- patch -----------------------------------------------------------------------------------


def test_merge_patch() -> None:
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    assert apply_merge_patch(target, {"a": {"b": None, "d": 3}, "l": [3]}) == {
        "a": {"c": 2, "d": 3},
        "l": [3],
    }


def test_strategic_merge_patch_merges_named_lists() -> None:
    target = {
        "spec": {
            "containers": [
                {"name": "notebook", "image": "a", "env": [{"name": "A", "value": "1"}]},
                {"name": "sidecar", "image": "s"},
            ],
            "args": ["x"],
        },
        "metadata": {"finalizers": ["a"]},
    }
    patch = {
        "spec": {
            "containers": [
                {"name": "notebook", "env": [{"name": "B", "value": "2"}]},
                {"name": "sidecar", "$patch": "delete"},
            ],
            "args": ["y"],
        },
        "metadata": {"finalizers": ["b"]},
    }
    result = apply_strategic_merge_patch(target, patch)
    assert result["spec"]["containers"] == [
        {
            "name": "notebook",
            "image": "a",
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
        }
    ]
    assert result["spec"]["args"] == ["y"]
    assert result["metadata"]["finalizers"] == ["a", "b"]
    removed = apply_strategic_merge_patch(
        result,
        {
            "$deleteFromPrimitiveList/x": [],
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
        },
    )
    assert removed["metadata"]["finalizers"] == ["b"]


def test_json_patch() -> None:
    target = {"metadata": {"labels": {"a": "1"}}, "list": [1, 2]}
    result = apply_json_patch(
        target,
        [
            {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
            {"op": "remove", "path": "/metadata/labels/a"},
            {"op": "add", "path": "/list/-", "value": 3},
            {"op": "replace", "path": "/list/0", "value": 0},
            {"op": "test", "path": "/list/2", "value": 3},
            {"op": "copy", "from": "/list", "path": "/copy"},
        ],
    )
    assert result == {"metadata": {"labels": {"b/c": "2"}}, "list": [0, 2, 3], "copy": [0, 2, 3]}
    assert target["list"] == [1, 2]
    with raises(422, "Invalid"):
        apply_json_patch(target, [{"op": "test", "path": "/list/0", "value": 9}])
    with raises(422, "Invalid"):
        apply_json_patch(target, [{"op": "remove", "path": "/nope"}])


def test_store_patch_kinds(store: Store) -> None:
    store.create("pods", "default", pod())
    patched = store.patch(
        "pods",
        "default",
        "jupyter-alice",
        {"metadata": {"annotations": {"hub.jupyter.org/suspended": "true"}}},
        "application/merge-patch+json",
    )
    assert patched["metadata"]["annotations"] == {"hub.jupyter.org/suspended": "true"}
    patched = store.patch(
        "pods",
        "default",
        "jupyter-alice",
        [{"op": "replace", "path": "/status/phase", "value": "Running"}],
        "application/json-patch+json",
        subresource="status",
    )
    assert patched["status"]["phase"] == "Running"
    patched = store.patch(
        "pods",
        "default",
        "jupyter-alice",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        "application/strategic-merge-patch+json",
        subresource="status",
    )
    assert patched["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert patched["status"]["phase"] == "Running"
    with raises(409, "Conflict"):
        store.patch(
            "pods",
            "default",
            "jupyter-alice",
            {"metadata": {"resourceVersion": "1", "labels": {"a": "b"}}},
            "application/merge-patch+json",
        )
    with raises(415, "UnsupportedMediaType"):
        store.patch("pods", "default", "jupyter-alice", {}, "application/apply-patch+yaml")


# --- mutate ----------------------------------------------------------------------------------


async def test_mutate_records_only_real_changes(store: Store) -> None:
    created = store.create("pods", "default", pod())
    watch = store.watch("pods", resource_version=created["metadata"]["resourceVersion"])
    same = store.mutate("pods", "default", "jupyter-alice", lambda p: None)
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]

    def bind(p: dict) -> None:
        p["spec"]["nodeName"] = "node-1"
        p["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
        p["metadata"]["uid"] = "forged"

    bound = store.mutate("pods", "default", "jupyter-alice", bind)
    assert bound["spec"]["nodeName"] == "node-1"
    assert bound["status"]["conditions"][0]["type"] == "PodScheduled"
    assert bound["metadata"]["uid"] == created["metadata"]["uid"]
    type_, obj = await asyncio.wait_for(anext(watch), 1)
    assert type_ == "MODIFIED"
    assert obj["metadata"]["resourceVersion"] == bound["metadata"]["resourceVersion"]
    status_only = store.mutate(
        "pods",
        "default",
        "jupyter-alice",
        lambda p: p["spec"].update(nodeName="x") or p["status"].update(phase="Running"),
        subresource="status",
    )
    assert status_only["spec"]["nodeName"] == "node-1"
    assert status_only["status"]["phase"] == "Running"
    watch.close()


# --- delete ----------------------------------------------------------------------------------


def test_unbound_pod_is_deleted_at_once(store: Store) -> None:
    store.create("pods", "default", pod())
    deleted = store.delete("pods", "default", "jupyter-alice")
    assert not store.exists("pods", "default", "jupyter-alice")
    assert int(deleted["metadata"]["resourceVersion"]) == int(store.resource_version)


def test_bound_pod_is_deleted_gracefully(store: Store, clock: FakeClock) -> None:
    store.create("pods", "default", pod(terminationGracePeriodSeconds=10))
    bound = store.mutate(
        "pods", "default", "jupyter-alice", lambda p: p["spec"].update(nodeName="n1")
    )
    marked = store.delete("pods", "default", "jupyter-alice")
    assert marked["metadata"]["deletionTimestamp"] == "2023-11-14T22:13:30Z"
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 10
    assert marked["metadata"]["generation"] == bound["metadata"]["generation"] + 1
    assert store.exists("pods", "default", "jupyter-alice")
    shorter = store.delete("pods", "default", "jupyter-alice", grace_period_seconds=3)
    assert shorter["metadata"]["deletionGracePeriodSeconds"] == 3
    longer = store.delete("pods", "default", "jupyter-alice", grace_period_seconds=60)
    assert longer["metadata"]["deletionGracePeriodSeconds"] == 3
    clock.now += 3
    store.delete("pods", "default", "jupyter-alice", grace_period_seconds=0)
    assert not store.exists("pods", "default", "jupyter-alice")


def test_finished_or_force_deleted_bound_pods_go_at_once(store: Store) -> None:
    for name in ("done", "forced"):
        store.create("pods", "default", pod(name))
        store.mutate("pods", "default", name, lambda p: p["spec"].update(nodeName="n1"))
    store.mutate("pods", "default", "done", lambda p: p["status"].update(phase="Succeeded"))
    store.delete("pods", "default", "done")
    store.delete("pods", "default", "forced", grace_period_seconds=0)
    assert store.list("pods", "default")[0] == []


def test_finalizers_hold_deletion(store: Store) -> None:
    store.create("configmaps", "default", {"metadata": {"name": "c", "finalizers": ["x/y"]}})
    marked = store.delete("configmaps", "default", "c")
    assert "deletionTimestamp" in marked["metadata"]
    assert store.exists("configmaps", "default", "c")
    store.mutate("configmaps", "default", "c", lambda c: c["metadata"].update(finalizers=[]))
    assert not store.exists("configmaps", "default", "c")


def test_delete_preconditions(store: Store) -> None:
    store.create("secrets", "default", {"metadata": {"name": "s"}})
    with pytest.raises(ApiError) as info:
        store.delete("secrets", "default", "s", preconditions={"uid": "nope"})
    assert info.value.code == 409
    assert "Precondition failed: UID in precondition: nope" in info.value.message
    with raises(404, "NotFound"):
        store.delete("secrets", "default", "missing")


def test_owner_references_are_garbage_collected(store: Store) -> None:
    owner = store.create("pods", "default", pod())
    ref = {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "jupyter-alice",
        "uid": owner["metadata"]["uid"],
    }
    store.create("secrets", "default", {"metadata": {"name": "s", "ownerReferences": [ref]}})
    store.create(
        "services", "default", {"metadata": {"name": "svc", "ownerReferences": [ref]}, "spec": {}}
    )
    store.create("secrets", "default", {"metadata": {"name": "unrelated"}})
    store.delete("pods", "default", "jupyter-alice")
    assert [s["metadata"]["name"] for s in store.list("secrets", "default")[0]] == ["unrelated"]
    assert store.list("services", "default")[0] == []


def test_gc_waits_for_graceful_owner_and_orphan_keeps_dependents(store: Store) -> None:
    owner = store.create("pods", "default", pod())
    store.mutate("pods", "default", "jupyter-alice", lambda p: p["spec"].update(nodeName="n1"))
    ref = {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "jupyter-alice",
        "uid": owner["metadata"]["uid"],
    }
    store.create("secrets", "default", {"metadata": {"name": "s", "ownerReferences": [ref]}})
    store.delete("pods", "default", "jupyter-alice")
    assert store.exists("secrets", "default", "s")
    store.delete(
        "pods", "default", "jupyter-alice", grace_period_seconds=0, propagation_policy="Orphan"
    )
    assert store.get("secrets", "default", "s")["metadata"]["ownerReferences"] == []


def test_namespace_deletion_removes_its_objects(store: Store) -> None:
    store.create("namespaces", None, {"metadata": {"name": "user-alice"}})
    store.create("pods", "user-alice", pod())
    store.delete("namespaces", None, "user-alice")
    assert store.list("pods")[0] == []
    with raises(404, "NotFound"):
        store.create("pods", "user-alice", pod())


# --- watch -----------------------------------------------------------------------------------


async def collect(watch: Any, count: int) -> list[tuple[str, str]]:
    events = []
    for _ in range(count):
        type_, obj = await asyncio.wait_for(anext(watch), 1)
        events.append((type_, obj["metadata"]["name"]))
    return events


async def test_watch_without_rv_starts_with_current_objects(store: Store) -> None:
    store.create("pods", "default", pod("a"))
    async with store.watch("pods", "default") as watch:
        store.create("pods", "default", pod("b"))
        store.delete("pods", "default", "a")
        assert await collect(watch, 3) == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]


async def test_watch_from_rv_replays_history(store: Store) -> None:
    a = store.create("pods", "default", pod("a"))
    store.create("pods", "default", pod("b"))
    store.mutate("pods", "default", "a", lambda p: p["metadata"].update(labels={"x": "1"}))
    with store.watch("pods", resource_version=a["metadata"]["resourceVersion"]) as watch:
        assert await collect(watch, 2) == [("ADDED", "b"), ("MODIFIED", "a")]


async def test_watch_from_evicted_rv_is_gone(clock: FakeClock) -> None:
    store = Store(clock=clock, history_limit=3)
    first = store.create("configmaps", "default", {"metadata": {"name": "c0"}})
    for i in range(1, 5):
        store.create("configmaps", "default", {"metadata": {"name": f"c{i}"}})
    with pytest.raises(ApiError) as info:
        store.watch("configmaps", resource_version=first["metadata"]["resourceVersion"])
    assert info.value.code == 410
    assert info.value.message.startswith("too old resource version")
    latest = store.resource_version
    store.watch("configmaps", resource_version=latest).close()


async def test_filtered_watch_sees_objects_leave_and_enter(store: Store) -> None:
    store.create("pods", "default", pod("a", {"component": "singleuser-server"}))
    async with store.watch("pods", label_selector="component=singleuser-server") as watch:
        assert await collect(watch, 1) == [("ADDED", "a")]
        store.mutate(
            "pods", "default", "a", lambda p: p["metadata"].update(labels={"component": "x"})
        )
        type_, obj = await asyncio.wait_for(anext(watch), 1)
        assert type_ == "DELETED"
        assert obj["metadata"]["labels"] == {"component": "singleuser-server"}
        assert obj["metadata"]["resourceVersion"] == store.resource_version
        store.create("pods", "default", pod("other", {"component": "hub"}))
        store.mutate(
            "pods",
            "default",
            "a",
            lambda p: p["metadata"].update(labels={"component": "singleuser-server"}),
        )
        assert await collect(watch, 1) == [("ADDED", "a")]


async def test_watch_by_node_name_sees_binding_as_added(store: Store) -> None:
    store.create("pods", "default", pod("a"))
    async with store.watch("pods", field_selector="spec.nodeName=n1") as watch:
        store.mutate("pods", "default", "a", lambda p: p["spec"].update(nodeName="n1"))
        store.delete("pods", "default", "a", grace_period_seconds=0)
        assert await collect(watch, 2) == [("ADDED", "a"), ("DELETED", "a")]


async def test_watch_timeout_and_close_end_the_stream(store: Store) -> None:
    watch = store.watch("pods", timeout=0.05)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(watch), 2)
    watch = store.watch("pods")
    pending = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0)
    watch.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 1)


# --- events ----------------------------------------------------------------------------------


def test_record_event_dedupes_repeats(store: Store, clock: FakeClock) -> None:
    p = store.create("pods", "default", pod())
    first = store.record_event(p, "Pulling", "Pulling image", host="node-1")
    assert first["involvedObject"]["uid"] == p["metadata"]["uid"]
    assert first["involvedObject"]["kind"] == "Pod"
    assert first["source"] == {"component": "kubelet", "host": "node-1"}
    assert first["count"] == 1
    assert first["firstTimestamp"] == first["lastTimestamp"] == "2023-11-14T22:13:20Z"
    assert first["eventTime"] is None
    clock.now += 5
    again = store.record_event(p, "Pulling", "Pulling image", host="node-1")
    assert again["metadata"]["name"] == first["metadata"]["name"]
    assert again["count"] == 2
    assert again["lastTimestamp"] == "2023-11-14T22:13:25Z"
    store.record_event(p, "Pulled", "Pulled image", host="node-1")
    events, _ = store.list("events", "default", field_selector="involvedObject.name=jupyter-alice")
    assert len(events) == 2


def test_node_events_go_to_default_namespace(store: Store) -> None:
    node = store.create("nodes", None, {"metadata": {"name": "node-1"}, "spec": {}})
    event = store.record_event(node, "NodeReady", "ready", component="kubelet", host="node-1")
    assert event["metadata"]["namespace"] == "default"
    assert "namespace" not in node["metadata"]


# --- quantities and QoS ----------------------------------------------------------------------


def test_qos_class(store: Store) -> None:
    limits_only = pod("g")
    limits_only["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1", "memory": "1Gi"}}
    created = store.create("pods", "default", limits_only)
    assert created["spec"]["containers"][0]["resources"]["requests"] == {
        "cpu": "1",
        "memory": "1Gi",
    }
    assert created["status"]["qosClass"] == "Guaranteed"
    burstable = pod("b")
    burstable["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "500m"}}
    assert store.create("pods", "default", burstable)["status"]["qosClass"] == "Burstable"
    equal = {
        "spec": {
            "containers": [
                {
                    "resources": {
                        "requests": {"cpu": "1000m", "memory": "1Gi"},
                        "limits": {"cpu": "1", "memory": "1024Mi"},
                    }
                }
            ]
        }
    }
    assert qos_class(equal) == "Guaranteed"


async def test_cancelled_consumer_unsubscribes(store: Store) -> None:
    async def consume() -> None:
        async for _ in store.watch("pods"):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)  # one step: the task subscribes and blocks waiting for a change
    assert len(store._watchers) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store._watchers == []
