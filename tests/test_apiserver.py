"""The API server, driven by the real kubernetes_asyncio client and KubeSpawner's reflector
through an ordinary kubeconfig."""

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from unittest.mock import Mock

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import kube_config
from kubespawner import clients as kubespawner_clients
from tornado import httpclient, web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from jhub_suspend.localcluster.apiserver import serve, write_kubeconfig
from jhub_suspend.localcluster.store import Store
from jhub_suspend.testing.waiting import wait_for

TOKEN = "test-admin-token"
# kubernetes_asyncio accepts _content_type at run time; its type stubs do not list it.
MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
LABELS = {"component": "singleuser-server", "app": "jupyterhub"}


@dataclass
class Cluster:
    store: Store
    url: str
    api: client.CoreV1Api
    api_client: client.ApiClient
    kubeconfig: str
    kubelets: dict[str, str]


@pytest.fixture
async def cluster(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    store = Store(history_limit=50)
    kubelets: dict[str, str] = {}
    server, port = await serve(store, tokens={TOKEN: "admin"}, kubelet_address=kubelets.get)
    url = f"http://127.0.0.1:{port}"
    kubeconfig = str(tmp_path / "kubeconfig")
    write_kubeconfig(kubeconfig, url, token=TOKEN)
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    # kubernetes_asyncio reads $KUBECONFIG once, at import; KubeSpawner's load_config() relies
    # on that default location.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
    # Global default configuration, as KubeSpawner's load_config leaves it.
    await config.load_kube_config(config_file=kubeconfig)
    api_client = client.ApiClient()
    try:
        yield Cluster(store, url, client.CoreV1Api(api_client), api_client, kubeconfig, kubelets)
    finally:
        await api_client.close()
        await forget_kubespawner_clients()
        store.close_watches()
        server.stop()
        await server.close_all_connections()


async def forget_kubespawner_clients() -> None:
    """KubeSpawner caches one client per event loop, and the loop outlives a test here: a
    cached client would still point at the previous test's server."""
    for cached in list(kubespawner_clients._client_cache.values()):
        await cached.api_client.close()
    kubespawner_clients._client_cache.clear()


def pod_manifest(name: str, labels: dict[str, str] | None = None) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels if labels is not None else LABELS),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="notebook",
                    image="quay.io/jupyter/base-notebook:2024-01-01",
                    env=[client.V1EnvVar(name="JUPYTERHUB_USER", value=name)],
                )
            ]
        ),
    )


def status_of(error: ApiException) -> dict[str, Any]:
    """The Status object the server sent with an error."""
    return json.loads(error.body or b"{}")


async def expect_status(status: int, call: Any) -> ApiException:
    with pytest.raises(ApiException) as info:
        await call
    assert info.value.status == status, info.value.body
    return info.value


async def eventually(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait, briskly, for a condition that another task makes true (the reflector has no
    hook)."""
    await wait_for(
        predicate, "condition not reached in time", seconds, start_wait=0.01, max_wait=0.05
    )


async def raw(
    cluster: Cluster, method: str, path: str, body: Any = None, token: str | None = TOKEN
) -> httpclient.HTTPResponse:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return await httpclient.AsyncHTTPClient().fetch(
        cluster.url + path,
        method=method,
        headers=headers,
        body=None if body is None else json.dumps(body),
        raise_error=False,
        allow_nonstandard_methods=True,
    )


# --- discovery and authentication ------------------------------------------------------------


async def test_discovery(cluster: Cluster) -> None:
    version = await client.VersionApi(cluster.api_client).get_code()
    assert version.major == "1"
    resources = await cluster.api.get_api_resources()
    names = {r.name for r in resources.resources}
    assert {"pods", "pods/status", "events", "secrets", "nodes/proxy"} <= names
    assert json.loads((await raw(cluster, "GET", "/apis")).body)["groups"] == []


async def test_requests_need_a_known_bearer_token(cluster: Cluster) -> None:
    response = await raw(cluster, "GET", "/api/v1/namespaces/default/pods", token=None)
    assert response.code == 401
    assert json.loads(response.body)["reason"] == "Unauthorized"
    response = await raw(cluster, "GET", "/api/v1/namespaces/default/pods", token="wrong")
    assert response.code == 401
    assert (await raw(cluster, "GET", "/healthz", token=None)).code == 200


async def test_unknown_paths_and_methods(cluster: Cluster) -> None:
    response = await raw(cluster, "GET", "/api/v1/namespaces/default/widgets")
    assert response.code == 404
    assert json.loads(response.body)["kind"] == "Status"
    response = await raw(cluster, "PUT", "/api/v1/namespaces/default/pods", body={})
    assert response.code == 405
    assert json.loads(response.body)["reason"] == "MethodNotAllowed"


# --- CRUD ------------------------------------------------------------------------------------


async def test_pod_crud_and_errors(cluster: Cluster) -> None:
    api = cluster.api
    created = await api.create_namespaced_pod("default", pod_manifest("jupyter-alice"))
    assert created.metadata.uid
    assert created.metadata.namespace == "default"
    assert created.status.phase == "Pending"
    assert created.spec.restart_policy == "Always"
    read = await api.read_namespaced_pod("jupyter-alice", "default")
    assert read.metadata.resource_version == created.metadata.resource_version

    error = await expect_status(
        409, api.create_namespaced_pod("default", pod_manifest("jupyter-alice"))
    )
    assert status_of(error)["reason"] == "AlreadyExists"
    error = await expect_status(404, api.read_namespaced_pod("nobody", "default"))
    assert status_of(error)["message"] == 'pods "nobody" not found'
    error = await expect_status(
        422, api.create_namespaced_pod("default", pod_manifest("Not_Valid"))
    )
    assert status_of(error)["reason"] == "Invalid"
    no_image = client.V1Pod(
        metadata=client.V1ObjectMeta(name="no-image"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c")]),
    )
    await expect_status(422, api.create_namespaced_pod("default", no_image))
    await expect_status(404, api.create_namespaced_pod("nosuch", pod_manifest("p")))

    deleted = await api.delete_namespaced_pod("jupyter-alice", "default")
    assert deleted.metadata.name == "jupyter-alice"
    await expect_status(404, api.read_namespaced_pod("jupyter-alice", "default"))


async def test_list_with_label_and_field_selectors(cluster: Cluster) -> None:
    api = cluster.api
    await api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="user-ns")))
    await api.create_namespaced_pod("default", pod_manifest("jupyter-alice"))
    await api.create_namespaced_pod("default", pod_manifest("hub", {"component": "hub"}))
    await api.create_namespaced_pod("user-ns", pod_manifest("jupyter-bob"))
    cluster.store.mutate(
        "pods", "default", "jupyter-alice", lambda p: p["spec"].update(nodeName="node-1")
    )

    listed = await api.list_namespaced_pod("default", label_selector="component=singleuser-server")
    assert [p.metadata.name for p in listed.items] == ["jupyter-alice"]
    assert listed.metadata.resource_version == cluster.store.resource_version
    everywhere = await api.list_pod_for_all_namespaces(
        label_selector="component in (singleuser-server)"
    )
    assert sorted(p.metadata.name for p in everywhere.items) == ["jupyter-alice", "jupyter-bob"]
    on_node = await api.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-1")
    assert [p.metadata.name for p in on_node.items] == ["jupyter-alice"]
    not_alice = await api.list_namespaced_pod(
        "default", field_selector="metadata.name!=jupyter-alice"
    )
    assert [p.metadata.name for p in not_alice.items] == ["hub"]
    await expect_status(400, api.list_namespaced_pod("default", label_selector="component in (x"))
    await expect_status(400, api.list_namespaced_pod("default", field_selector="spec.image=x"))


async def test_list_pagination(cluster: Cluster) -> None:
    for i in range(5):
        await cluster.api.create_namespaced_config_map(
            "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"cm-{i}"))
        )
    names: list[str] = []
    token = None
    while True:
        kwargs: dict[str, Any] = {"_continue": token} if token else {}
        page = await cluster.api.list_namespaced_config_map("default", limit=2, **kwargs)
        assert len(page.items) <= 2
        names += [c.metadata.name for c in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert names == [f"cm-{i}" for i in range(5)]


async def test_secrets_services_pvcs_and_events(cluster: Cluster) -> None:
    api = cluster.api
    secret = await api.create_namespaced_secret(
        "default",
        client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"token": "abc"}),
    )
    assert secret.data == {"token": "YWJj"}
    status = await api.delete_namespaced_secret("s", "default")
    assert status.status == "Success"
    assert status.details.name == "s"
    await expect_status(404, api.read_namespaced_secret("s", "default"))

    service = await api.create_namespaced_service(
        "default",
        client.V1Service(
            metadata=client.V1ObjectMeta(name="jupyter-alice"),
            spec=client.V1ServiceSpec(
                selector={"app": "x"}, ports=[client.V1ServicePort(port=8888)]
            ),
        ),
    )
    assert service.spec.cluster_ip
    assert service.spec.ports[0].target_port == 8888

    pvc = await api.create_namespaced_persistent_volume_claim(
        "default",
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="claim-alice"),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )
    assert pvc.status.phase == "Pending"
    await expect_status(
        409,
        api.create_namespaced_persistent_volume_claim(
            "default",
            client.V1PersistentVolumeClaim(
                metadata=client.V1ObjectMeta(name="claim-alice"),
                spec=client.V1PersistentVolumeClaimSpec(access_modes=["ReadWriteOnce"]),
            ),
        ),
    )
    read = await api.read_namespaced_persistent_volume_claim("claim-alice", "default")
    assert read.spec.resources.requests == {"storage": "1Gi"}

    pod = cluster.store.create(
        "pods",
        "default",
        {
            "metadata": {"name": "jupyter-alice"},
            "spec": {"containers": [{"name": "notebook", "image": "x:1"}]},
        },
    )
    cluster.store.record_event(pod, "Scheduled", "assigned", component="default-scheduler")
    await api.create_namespaced_event(
        "default",
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(name="manual.1"),
            involved_object=client.V1ObjectReference(kind="Node", name="node-1"),
            reason="Test",
            message="hello",
        ),
    )
    events = await api.list_namespaced_event("default", field_selector="involvedObject.kind=Pod")
    assert [e.reason for e in events.items] == ["Scheduled"]
    assert events.items[0].involved_object.uid == pod["metadata"]["uid"]
    assert events.items[0].last_timestamp is not None


# --- update and patch ------------------------------------------------------------------------


async def test_replace_conflict_and_patches(cluster: Cluster) -> None:
    api = cluster.api
    cm = await api.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"), data={"a": "1"})
    )
    cm.data = {"a": "2"}
    updated = await api.replace_namespaced_config_map("c", "default", cm)
    assert updated.data == {"a": "2"}
    cm.data = {"a": "3"}
    error = await expect_status(409, api.replace_namespaced_config_map("c", "default", cm))
    assert "the object has been modified" in status_of(error)["message"]

    await api.create_namespaced_pod("default", pod_manifest("jupyter-alice"))
    strategic = await api.patch_namespaced_pod(
        "jupyter-alice",
        "default",
        {
            "spec": {
                "containers": [{"name": "notebook", "image": "quay.io/jupyter/base-notebook:2"}]
            }
        },
    )
    container = strategic.spec.containers[0]
    assert container.image == "quay.io/jupyter/base-notebook:2"
    assert container.env[0].name == "JUPYTERHUB_USER"  # merged by name, not replaced
    merged = await api.patch_namespaced_pod(
        "jupyter-alice",
        "default",
        {"metadata": {"annotations": {"suspend": "yes"}}},
        **MERGE_PATCH,
    )
    assert merged.metadata.annotations == {"suspend": "yes"}
    json_patched = await api.patch_namespaced_pod(
        "jupyter-alice",
        "default",
        [{"op": "remove", "path": "/metadata/annotations/suspend"}],
    )
    assert not json_patched.metadata.annotations
    status = await api.patch_namespaced_pod_status(
        "jupyter-alice", "default", {"status": {"phase": "Running", "podIP": "10.0.0.7"}}
    )
    assert status.status.phase == "Running"
    assert status.status.pod_ip == "10.0.0.7"
    await expect_status(
        422,
        api.patch_namespaced_pod("jupyter-alice", "default", {"spec": {"restartPolicy": "Never"}}),
    )


# --- deletion --------------------------------------------------------------------------------


async def test_graceful_delete_then_kubelet_finalizes(cluster: Cluster) -> None:
    api = cluster.api
    await api.create_namespaced_pod("default", pod_manifest("jupyter-alice"))
    cluster.store.mutate(
        "pods", "default", "jupyter-alice", lambda p: p["spec"].update(nodeName="node-1")
    )
    # As KubeSpawner.stop() sends it: DeleteOptions in the body and the grace in the query.
    marked = await api.delete_namespaced_pod(
        "jupyter-alice",
        "default",
        body=client.V1DeleteOptions(grace_period_seconds=5),
        grace_period_seconds=5,
    )
    assert marked.metadata.deletion_timestamp is not None
    assert marked.metadata.deletion_grace_period_seconds == 5
    still = await api.read_namespaced_pod("jupyter-alice", "default")
    assert still.metadata.deletion_timestamp is not None
    # The kubelet, once the containers are gone:
    cluster.store.delete("pods", "default", "jupyter-alice", grace_period_seconds=0)
    await expect_status(404, api.read_namespaced_pod("jupyter-alice", "default"))


async def test_delete_preconditions_over_http(cluster: Cluster) -> None:
    api = cluster.api
    await api.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"))
    )
    await expect_status(
        409,
        api.delete_namespaced_config_map(
            "c",
            "default",
            body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="x")),
        ),
    )
    await api.read_namespaced_config_map("c", "default")


async def test_owner_reference_garbage_collection(cluster: Cluster) -> None:
    api = cluster.api
    pod = await api.create_namespaced_pod("default", pod_manifest("jupyter-alice"))
    owner = client.V1OwnerReference(
        api_version="v1",
        kind="Pod",
        name="jupyter-alice",
        uid=pod.metadata.uid,
        block_owner_deletion=True,
        controller=False,
    )
    await api.create_namespaced_secret(
        "default",
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="jupyter-alice", owner_references=[owner])
        ),
    )
    await api.create_namespaced_service(
        "default",
        client.V1Service(
            metadata=client.V1ObjectMeta(name="jupyter-alice", owner_references=[owner]),
            spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=8888)]),
        ),
    )
    await api.delete_namespaced_pod("jupyter-alice", "default", grace_period_seconds=0)
    await expect_status(404, api.read_namespaced_secret("jupyter-alice", "default"))
    await expect_status(404, api.read_namespaced_service("jupyter-alice", "default"))


# --- watch -----------------------------------------------------------------------------------


async def test_watch_from_resource_version(cluster: Cluster) -> None:
    api = cluster.api
    listed = await api.list_namespaced_pod("default")
    rv = listed.metadata.resource_version
    await api.create_namespaced_pod("default", pod_manifest("jupyter-alice"))
    await api.create_namespaced_pod("default", pod_manifest("hub", {"component": "hub"}))
    await api.delete_namespaced_pod("jupyter-alice", "default")

    seen = []
    w = watch.Watch()
    async with w.stream(
        api.list_namespaced_pod,
        "default",
        resource_version=rv,
        label_selector="component=singleuser-server",
        timeout_seconds=5,
    ) as stream:
        async for event in stream:
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 2:
                w.stop()
    assert seen == [("ADDED", "jupyter-alice"), ("DELETED", "jupyter-alice")]


async def test_watch_ends_at_timeout_seconds(cluster: Cluster) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = []
    async with watch.Watch().stream(
        cluster.api.list_namespaced_pod, "default", timeout_seconds=1
    ) as stream:
        async for event in stream:
            events.append(event)
    assert events == []
    assert 0.9 <= loop.time() - started < 5


async def test_watch_sees_live_changes(cluster: Cluster) -> None:
    api = cluster.api
    seen: list[tuple[str, str]] = []
    got_two = asyncio.Event()

    async def consume() -> None:
        async with watch.Watch().stream(
            api.list_namespaced_pod, "default", timeout_seconds=10
        ) as stream:
            async for event in stream:
                seen.append((event["type"], event["raw_object"]["metadata"]["name"]))
                if len(seen) == 2:
                    got_two.set()
                    return

    task = asyncio.create_task(consume())
    await eventually(lambda: len(cluster.store._watchers) == 1)
    await api.create_namespaced_pod("default", pod_manifest("jupyter-alice"))
    cluster.store.mutate(
        "pods", "default", "jupyter-alice", lambda p: p["status"].update(phase="Running")
    )
    await asyncio.wait_for(got_two.wait(), 5)
    await task
    assert seen == [("ADDED", "jupyter-alice"), ("MODIFIED", "jupyter-alice")]


async def test_watch_with_expired_resource_version_is_410(cluster: Cluster) -> None:
    api = cluster.api
    listed = await api.list_namespaced_config_map("default")
    old_rv = listed.metadata.resource_version
    for i in range(60):  # history_limit is 50
        cluster.store.create("configmaps", "default", {"metadata": {"name": f"c{i}"}})
    with pytest.raises(ApiException) as info:
        async with watch.Watch().stream(
            api.list_namespaced_config_map, "default", resource_version=old_rv, timeout_seconds=5
        ) as stream:
            async for _ in stream:
                pass
    assert info.value.status == 410
    response = await raw(
        cluster, "GET", f"/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={old_rv}"
    )
    assert response.code == 200
    event = json.loads(response.body.decode().splitlines()[0])
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410


# --- KubeSpawner's reflectors ----------------------------------------------------------------


async def test_kubespawner_reflectors(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from kubespawner.spawner import EventReflector, PodReflector

    api = cluster.api
    watches: list[dict[str, Any]] = []
    real_watch = cluster.store.watch

    def counting_watch(resource: str, *args: Any, **kwargs: Any) -> Any:
        if resource == "pods":
            watches.append(kwargs)
        return real_watch(resource, *args, **kwargs)

    monkeypatch.setattr(cluster.store, "watch", counting_watch)
    await api.create_namespaced_pod("default", pod_manifest("jupyter-old"))
    pods = PodReflector(
        namespace="default",
        labels={"component": "singleuser-server"},
        timeout_seconds=1,  # exercise reconnects: list again with resource_version, then watch
        restart_seconds=2,
    )
    events = EventReflector(namespace="default", fields={"involvedObject.kind": "Pod"})
    await pods.start()
    await events.start()
    try:
        assert set(pods.pods) == {"default/jupyter-old"}
        created = await api.create_namespaced_pod("default", pod_manifest("jupyter-alice"))
        await api.create_namespaced_pod("default", pod_manifest("hub", {"component": "hub"}))
        await eventually(lambda: "default/jupyter-alice" in pods.pods)
        assert pods.pods["default/jupyter-alice"]["metadata"]["uid"] == created.metadata.uid
        assert "default/hub" not in pods.pods

        stored = cluster.store.get("pods", "default", "jupyter-alice")
        cluster.store.record_event(
            stored, "Scheduled", "Successfully assigned", component="default-scheduler"
        )
        await eventually(lambda: any(e["reason"] == "Scheduled" for e in events.events))

        cluster.store.mutate(
            "pods", "default", "jupyter-alice", lambda p: p["status"].update(phase="Running")
        )
        await eventually(lambda: pods.pods["default/jupyter-alice"]["status"]["phase"] == "Running")
        await api.delete_namespaced_pod("jupyter-alice", "default", grace_period_seconds=0)
        await eventually(lambda: "default/jupyter-alice" not in pods.pods)
        # Survives server-side watch timeouts (it lists again, then watches from that
        # resourceVersion) and still sees changes.
        reconnects = len(watches) + 2
        await eventually(lambda: len(watches) >= reconnects, seconds=15)
        assert all(w["resource_version"] not in (None, "", "0") for w in watches)
        assert all(w["label_selector"] == "component=singleuser-server" for w in watches)
        await api.delete_namespaced_pod("jupyter-old", "default")
        await eventually(lambda: not pods.pods)
        assert pods.watch_task is not None and not pods.watch_task.done()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await pods.stop()
        await events.stop()


# --- node proxy ------------------------------------------------------------------------------


class EchoHandler(web.RequestHandler):
    def _echo(self, path: str) -> None:
        if path == "missing":
            self.set_status(404)
        self.set_header("Content-Type", "application/json")
        self.finish(
            {
                "method": self.request.method,
                "path": path,
                "query": self.request.query,
                "body": self.request.body.decode(),
                "auth": self.request.headers.get("Authorization"),
            }
        )

    get = post = delete = _echo


async def test_node_proxy_forwards_to_the_kubelet(cluster: Cluster) -> None:
    sockets = bind_sockets(0, "127.0.0.1")
    kubelet = HTTPServer(web.Application([(r"/(.*)", EchoHandler)]))
    kubelet.add_sockets(sockets)
    try:
        cluster.store.create("nodes", None, {"metadata": {"name": "node-1"}, "spec": {}})
        cluster.kubelets["node-1"] = f"127.0.0.1:{sockets[0].getsockname()[1]}"
        response = await raw(
            cluster,
            "POST",
            "/api/v1/nodes/node-1/proxy/checkpoint/default/p/notebook?timeout=30",
            body={"x": 1},
        )
        assert response.code == 200
        echoed = json.loads(response.body)
        assert echoed == {
            "method": "POST",
            "path": "checkpoint/default/p/notebook",
            "query": "timeout=30",
            "body": '{"x": 1}',
            "auth": f"Bearer {TOKEN}",
        }
        text = await cluster.api.connect_get_node_proxy_with_path("node-1", "healthz")
        assert "healthz" in text
        assert (await raw(cluster, "GET", "/api/v1/nodes/node-1/proxy/missing")).code == 404
        assert (await raw(cluster, "GET", "/api/v1/nodes/node-2/proxy/healthz")).code == 404
        cluster.store.create("nodes", None, {"metadata": {"name": "node-3"}, "spec": {}})
        assert (await raw(cluster, "GET", "/api/v1/nodes/node-3/proxy/healthz")).code == 404
    finally:
        kubelet.stop()


# --- KubeSpawner itself ----------------------------------------------------------------------


async def run_pods_like_a_kubelet(store: Store) -> None:
    """A stand-in for scheduler and kubelet: bind and run new pods, finish graceful deletes."""
    async for type_, pod in store.watch("pods"):
        meta = pod["metadata"]
        if type_ == "ADDED" and not pod["spec"].get("nodeName"):

            def run(p: dict[str, Any]) -> None:
                p["spec"]["nodeName"] = "node-1"
                p["status"].update(
                    phase="Running",
                    podIP="127.0.0.1",
                    containerStatuses=[
                        {
                            "name": c["name"],
                            "image": c["image"],
                            "imageID": "",
                            "ready": True,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}},
                        }
                        for c in p["spec"]["containers"]
                    ],
                )

            running = store.mutate("pods", meta["namespace"], meta["name"], run)
            store.record_event(running, "Started", "Started container notebook", host="node-1")
        elif type_ == "MODIFIED" and "deletionTimestamp" in meta:
            store.delete("pods", meta["namespace"], meta["name"], grace_period_seconds=0)


async def test_kubespawner_starts_and_stops_a_server(cluster: Cluster) -> None:
    from jupyterhub.objects import Hub, Server
    from kubespawner import KubeSpawner

    user = Mock()
    user.name = user.escaped_name = "alice"
    user.id = 1
    user.url = "/user/alice/"
    user.settings = {}
    user.server = Server()
    kubelet = asyncio.create_task(run_pods_like_a_kubelet(cluster.store))
    spawner = KubeSpawner(
        hub=Hub(),
        user=user,
        api_token="token",
        oauth_client_id="client",
        _mock=True,
        services_enabled=True,
        storage_pvc_ensure=True,
        start_timeout=20,
    )
    try:
        url = await asyncio.wait_for(spawner.start(), 30)
        assert url == "http://jupyter-alice.default.svc.cluster.local:8888"
        pod = cluster.store.get("pods", "default", "jupyter-alice")
        assert pod["metadata"]["labels"]["component"] == "singleuser-server"
        service = cluster.store.get("services", "default", "jupyter-alice")
        assert service["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
        assert cluster.store.exists("persistentvolumeclaims", "default", "claim-alice")
        assert await spawner.poll() is None
        assert [e["reason"] for e in spawner.events] == ["Started"]

        await asyncio.wait_for(spawner.stop(), 30)
        assert not cluster.store.exists("pods", "default", "jupyter-alice")
        assert not cluster.store.exists("services", "default", "jupyter-alice")  # collected
        assert cluster.store.exists("persistentvolumeclaims", "default", "claim-alice")
        assert await spawner.poll() == 1
    finally:
        await KubeSpawner._stop_all_reflectors()
        kubelet.cancel()


async def test_pod_binding_subresource(cluster: Cluster) -> None:
    await cluster.api.create_namespaced_pod("default", pod_manifest("jupyter-alice"))
    binding = {"apiVersion": "v1", "kind": "Binding", "target": {"kind": "Node", "name": "n1"}}
    path = "/api/v1/namespaces/default/pods/jupyter-alice/binding"
    assert (await raw(cluster, "POST", path, body=binding)).code == 201
    pod = await cluster.api.read_namespaced_pod("jupyter-alice", "default")
    assert pod.spec.node_name == "n1"
    again = await raw(cluster, "POST", path, body=binding)
    assert again.code == 409
    assert "already assigned" in json.loads(again.body)["message"]
