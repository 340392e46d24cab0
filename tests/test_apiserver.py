"""The API server, driven by the real kubernetes_asyncio client and KubeSpawner's reflector
through an ordinary kubeconfig."""

import asyncio
import base64
import json
import logging
import ssl
import time
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

from jhub_suspend.localcluster.apiserver import (
    permission_allows,
    permissions_authorizer,
    serve,
    write_kubeconfig,
)
from jhub_suspend.localcluster.store import Store
from jhub_suspend.testing.tls import CertificateAuthority
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
    assert "validatingwebhookconfigurations" not in names  # not a core resource
    # kubectl drain looks for the Eviction's group and version here
    (eviction,) = [r for r in resources.resources if r.name == "pods/eviction"]
    assert (eviction.group, eviction.version, eviction.kind) == ("policy", "v1", "Eviction")
    assert eviction.verbs == ["create"]
    groups = await client.ApisApi(cluster.api_client).get_api_versions()
    assert [g.name for g in groups.groups] == ["admissionregistration.k8s.io"]
    group = await client.AdmissionregistrationApi(cluster.api_client).get_api_group()
    assert group.preferred_version.group_version == "admissionregistration.k8s.io/v1"
    v1 = await client.AdmissionregistrationV1Api(cluster.api_client).get_api_resources()
    assert [r.name for r in v1.resources] == ["validatingwebhookconfigurations"]
    assert (await raw(cluster, "GET", "/apis/admissionregistration.k8s.io/v2")).code == 404
    assert (await raw(cluster, "GET", "/apis/widgets.example.org")).code == 404


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
        # the events reach KubeSpawner through their own watch, which may lag the pod's
        reasons = await wait_for(
            lambda: [e["reason"] for e in spawner.events], "no event reached KubeSpawner", 10
        )
        assert reasons == ["Started"]

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


# --- the Eviction API ------------------------------------------------------------------------


def eviction(name: str, namespace: str = "default", **options: Any) -> client.V1Eviction:
    """An Eviction as kubectl drain sends it (policy/v1)."""
    return client.V1Eviction(
        api_version="policy/v1",
        kind="Eviction",
        metadata=client.V1ObjectMeta(name=name, namespace=namespace),
        delete_options=client.V1DeleteOptions(**options) if options else None,
    )


async def running_pod(cluster: Cluster, name: str, labels: dict[str, str] | None = None) -> None:
    """A pod bound to a node, so that deleting it is graceful (its kubelet finishes it)."""
    await cluster.api.create_namespaced_pod("default", pod_manifest(name, labels))
    cluster.store.mutate("pods", "default", name, lambda p: p["spec"].update(nodeName="node-1"))


async def test_eviction_deletes_the_pod_gracefully(cluster: Cluster) -> None:
    api = cluster.api
    await running_pod(cluster, "jupyter-alice")
    await api.create_namespaced_pod_eviction("jupyter-alice", "default", eviction("jupyter-alice"))
    pod = await api.read_namespaced_pod("jupyter-alice", "default")
    assert pod.metadata.deletion_timestamp is not None
    assert pod.metadata.deletion_grace_period_seconds == 30  # the pod's own
    (target,) = [c for c in pod.status.conditions if c.type == "DisruptionTarget"]
    assert (target.status, target.reason) == ("True", "EvictionByEvictionAPI")
    # Evicting a pod that is already going away succeeds again, as kubectl's retries need.
    path = "/api/v1/namespaces/default/pods/jupyter-alice/eviction"
    again = await raw(cluster, "POST", path, {"metadata": {"name": "jupyter-alice"}})
    assert again.code == 201
    assert json.loads(again.body) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 201,
    }
    # The Eviction's DeleteOptions are honoured.
    await api.create_namespaced_pod_eviction(
        "jupyter-alice", "default", eviction("jupyter-alice", grace_period_seconds=0)
    )
    await expect_status(404, api.read_namespaced_pod("jupyter-alice", "default"))
    gone = await expect_status(
        404,
        api.create_namespaced_pod_eviction("jupyter-alice", "default", eviction("jupyter-alice")),
    )
    assert status_of(gone)["message"] == 'pods "jupyter-alice" not found'


async def test_eviction_requests_are_checked(cluster: Cluster) -> None:
    api = cluster.api
    await running_pod(cluster, "jupyter-alice")
    wrong = await expect_status(
        400, api.create_namespaced_pod_eviction("jupyter-alice", "default", eviction("other"))
    )
    assert status_of(wrong)["message"] == "name in URL does not match name in Eviction object"
    path = "/api/v1/namespaces/default/pods/jupyter-alice/eviction"
    not_eviction = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "jupyter-alice"}}
    assert (await raw(cluster, "POST", path, not_eviction)).code == 400
    assert (await raw(cluster, "GET", path)).code == 405
    uid_mismatch = eviction("jupyter-alice", preconditions=client.V1Preconditions(uid="x"))
    await expect_status(
        409, api.create_namespaced_pod_eviction("jupyter-alice", "default", uid_mismatch)
    )
    # A dry run changes nothing.
    dry = eviction("jupyter-alice", dry_run=["All"])
    await api.create_namespaced_pod_eviction("jupyter-alice", "default", dry)
    pod = await api.read_namespaced_pod("jupyter-alice", "default")
    assert pod.metadata.deletion_timestamp is None
    assert not [c for c in pod.status.conditions or [] if c.type == "DisruptionTarget"]
    # A resourceVersion precondition is checked against the pod the client saw: a stale one
    # is 409, the current one evicts (the DisruptionTarget condition set on the way is the
    # eviction's own change).
    stale = eviction("jupyter-alice", preconditions=client.V1Preconditions(resource_version="1"))
    await expect_status(409, api.create_namespaced_pod_eviction("jupyter-alice", "default", stale))
    current = eviction(
        "jupyter-alice",
        preconditions=client.V1Preconditions(resource_version=pod.metadata.resource_version),
    )
    await api.create_namespaced_pod_eviction("jupyter-alice", "default", current)
    pod = await api.read_namespaced_pod("jupyter-alice", "default")
    assert pod.metadata.deletion_timestamp is not None


async def test_eviction_is_its_own_permission(tmp_path: Any) -> None:
    """RBAC: `create pods/eviction` allows evicting, and neither it nor `delete pods` allows
    the other."""
    store = Store()
    tokens = {TOKEN: "admin", "drain-token": "drainer", "delete-token": "deleter"}
    authorizer = permissions_authorizer(
        {
            "admin": ["*"],
            "drainer": ["create pods/eviction", "get,list pods"],
            "deleter": ["delete pods"],
        }
    )
    server, port = await serve(store, tokens=tokens, authorizer=authorizer)
    clients = []
    try:
        for token in ("drain-token", "delete-token"):
            path = str(tmp_path / f"{token}.kubeconfig")
            write_kubeconfig(path, f"http://127.0.0.1:{port}", token=token)
            clients.append(await config.new_client_from_config(config_file=path))
        drainer, deleter = (client.CoreV1Api(c) for c in clients)
        for name in ("a", "b"):
            pod = {
                "metadata": {"name": name},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            }
            store.create("pods", "default", pod)
        await expect_status(403, drainer.delete_namespaced_pod("a", "default"))
        denied = await expect_status(
            403, deleter.create_namespaced_pod_eviction("a", "default", eviction("a"))
        )
        assert status_of(denied)["message"] == (
            'pods is forbidden: User "deleter" cannot create resource "pods/eviction" in API'
            ' group "" in the namespace "default"'
        )
        await drainer.create_namespaced_pod_eviction("a", "default", eviction("a"))
        await deleter.delete_namespaced_pod("b", "default")
        assert [p.metadata.name for p in (await drainer.list_namespaced_pod("default")).items] == []
    finally:
        for c in clients:
            await c.close()
        store.close_watches()
        server.stop()
        await server.close_all_connections()


def test_permissions_are_per_verb_and_subresource() -> None:
    assert permission_allows(["*"], "delete", "pods", None)
    assert permission_allows(["nodes/checkpoint"], "create", "nodes", "checkpoint")
    assert not permission_allows(["nodes/checkpoint"], "get", "nodes", None)
    assert permission_allows(["create pods/eviction"], "create", "pods", "eviction")
    assert not permission_allows(["create pods/eviction"], "delete", "pods", None)
    assert not permission_allows(["pods"], "create", "pods", "eviction")
    assert permission_allows(["get,list pods"], "list", "pods", None)
    assert not permission_allows(["get,list pods"], "delete", "pods", None)


# --- validating admission webhooks -----------------------------------------------------------

WEBHOOK = "evictions.jhub-suspend.test"


@dataclass
class Webhook:
    """A tiny HTTPS admission webhook: it records each review and answers with ``answer``."""

    url: str
    port: int
    ca_bundle: str
    reviews: list[dict[str, Any]]
    answer: Callable[[dict[str, Any]], Any]


def allow(review: dict[str, Any], **response: Any) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": True, **response},
    }


def deny(review: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    answer = allow(review, status=status)
    answer["response"]["allowed"] = False
    return answer


class _WebhookHandler(web.RequestHandler):
    def initialize(self, hook: Webhook) -> None:
        self.hook = hook

    async def post(self) -> None:
        review = json.loads(self.request.body)
        review["_query"] = self.request.query
        self.hook.reviews.append(review)
        answer = self.hook.answer(review)
        if asyncio.iscoroutine(answer):
            answer = await answer
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(answer))


@pytest.fixture
async def webhook(tmp_path: Any) -> AsyncIterator[Webhook]:
    ca = CertificateAuthority()
    cert = ca.issue(tmp_path / "webhook-tls", ["127.0.0.1", "admission.default.svc"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert.certfile, cert.keyfile)
    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    hook = Webhook(
        f"https://127.0.0.1:{port}/validate", port, base64.b64encode(ca.pem).decode(), [], allow
    )
    server = HTTPServer(
        web.Application([(r"/validate", _WebhookHandler, {"hook": hook})]), ssl_options=context
    )
    server.add_sockets(sockets)
    try:
        yield hook
    finally:
        server.stop()
        await server.close_all_connections()


def webhook_configuration(
    hook: Webhook | None = None, config_name: str = "evictions", **webhook: Any
) -> dict[str, Any]:
    """A ValidatingWebhookConfiguration for CREATE pods/eviction, calling ``hook``."""
    spec: dict[str, Any] = {
        "name": WEBHOOK,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "NoneOnDryRun",
        "rules": [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods/eviction"],
            }
        ],
    }
    if hook is not None:
        spec["clientConfig"] = {"url": hook.url, "caBundle": hook.ca_bundle}
    spec.update(webhook)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": config_name},
        "webhooks": [spec],
    }


def admission_api(cluster: Cluster) -> client.AdmissionregistrationV1Api:
    return client.AdmissionregistrationV1Api(cluster.api_client)


async def test_webhook_configurations_are_stored_defaulted_and_validated(
    cluster: Cluster, webhook: Webhook
) -> None:
    api = admission_api(cluster)
    created = await api.create_validating_webhook_configuration(webhook_configuration(webhook))
    assert created.api_version == "admissionregistration.k8s.io/v1"
    (hook,) = created.webhooks
    assert (hook.failure_policy, hook.match_policy, hook.timeout_seconds) == (
        "Fail",
        "Equivalent",
        10,
    )
    assert hook.rules[0].scope == "*"
    assert hook.client_config.ca_bundle == webhook.ca_bundle
    listed = await api.list_validating_webhook_configuration()
    assert [c.metadata.name for c in listed.items] == ["evictions"]
    await api.patch_validating_webhook_configuration(
        "evictions",
        {
            "webhooks": [
                {**webhook_configuration(webhook)["webhooks"][0], "failurePolicy": "Ignore"}
            ]
        },
        **MERGE_PATCH,
    )
    read = await api.read_validating_webhook_configuration("evictions")
    assert read.webhooks[0].failure_policy == "Ignore"

    service = {"service": {"namespace": "default", "name": "admission", "path": "/validate"}}
    by_service = webhook_configuration(config_name="by-service", clientConfig=service)
    stored = await api.create_validating_webhook_configuration(by_service)
    assert stored.webhooks[0].client_config.service.port == 443

    bad = {
        "plain http": {"clientConfig": {"url": "http://127.0.0.1:1/validate"}},
        "no client": {"clientConfig": {}},
        "slow": {"clientConfig": {"url": webhook.url}, "timeoutSeconds": 31},
        "short name": {"clientConfig": {"url": webhook.url}, "name": "short.name"},
        "side effects": {"clientConfig": {"url": webhook.url}, "sideEffects": "Some"},
        "what policy": {"clientConfig": {"url": webhook.url}, "failurePolicy": "Maybe"},
        # matching it would fail on every eviction
        "keyless selector": {
            "clientConfig": {"url": webhook.url},
            "objectSelector": {"matchExpressions": [{"operator": "Exists"}]},
        },
        "labels not strings": {
            "clientConfig": {"url": webhook.url},
            "namespaceSelector": {"matchLabels": {"team": 1}},
        },
        # what the local cluster would never call it for
        "pod creates": {
            "clientConfig": {"url": webhook.url},
            "rules": [
                {
                    "operations": ["*"],
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["pods"],
                }
            ],
        },
        "CEL": {
            "clientConfig": {"url": webhook.url},
            "matchConditions": [{"name": "x", "expression": "true"}],
        },
    }
    for why, change in bad.items():
        response = await raw(
            cluster,
            "POST",
            "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
            webhook_configuration(config_name="bad", **change),
        )
        assert response.code == 422, (why, response.body)
    await api.delete_validating_webhook_configuration("evictions")
    await expect_status(404, api.read_validating_webhook_configuration("evictions"))


async def test_a_webhook_denial_reaches_the_client_with_its_code(
    cluster: Cluster, webhook: Webhook
) -> None:
    await running_pod(cluster, "jupyter-alice")
    await admission_api(cluster).create_validating_webhook_configuration(
        webhook_configuration(webhook)
    )
    message = "jupyter-alice is being suspended"
    webhook.answer = lambda review: deny(
        review, {"code": 429, "reason": "TooManyRequests", "message": message}
    )
    refused = await expect_status(
        429,
        cluster.api.create_namespaced_pod_eviction(
            "jupyter-alice", "default", eviction("jupyter-alice")
        ),
    )
    status = status_of(refused)
    assert status["message"] == f'admission webhook "{WEBHOOK}" denied the request: {message}'
    assert status["reason"] == "TooManyRequests"
    pod = await cluster.api.read_namespaced_pod("jupyter-alice", "default")
    assert pod.metadata.deletion_timestamp is None

    (review,) = webhook.reviews
    assert review["apiVersion"] == "admission.k8s.io/v1"
    assert review["kind"] == "AdmissionReview"
    assert review["_query"] == "timeout=10s"
    request = review["request"]
    assert request["operation"] == "CREATE"
    assert request["resource"] == {"group": "", "version": "v1", "resource": "pods"}
    assert request["subResource"] == "eviction"
    assert request["kind"] == {"group": "policy", "version": "v1", "kind": "Eviction"}
    assert (request["namespace"], request["name"]) == ("default", "jupyter-alice")
    assert request["userInfo"]["username"] == "admin"
    assert request["object"]["kind"] == "Eviction"
    assert request["object"]["metadata"]["name"] == "jupyter-alice"
    assert request["oldObject"] is None
    assert request["dryRun"] is False
    assert request["options"]["kind"] == "CreateOptions"

    # A denial without a code, or with one under 400, is a 400.
    webhook.answer = lambda review: deny(review, {"code": 200})
    unexplained = await expect_status(
        400,
        cluster.api.create_namespaced_pod_eviction(
            "jupyter-alice", "default", eviction("jupyter-alice")
        ),
    )
    assert status_of(unexplained)["message"] == (
        f'admission webhook "{WEBHOOK}" denied the request without explanation'
    )
    # The webhook is asked before the pod is looked up, as the real server does.
    await expect_status(
        400, cluster.api.create_namespaced_pod_eviction("nobody", "default", eviction("nobody"))
    )
    assert webhook.reviews[-1]["request"]["name"] == "nobody"


async def test_an_allowing_webhook_lets_the_eviction_through_with_its_warnings(
    cluster: Cluster, webhook: Webhook
) -> None:
    await running_pod(cluster, "jupyter-alice")
    await admission_api(cluster).create_validating_webhook_configuration(
        webhook_configuration(webhook)
    )
    webhook.answer = lambda review: allow(review, warnings=["noted by the test"])
    path = "/api/v1/namespaces/default/pods/jupyter-alice/eviction"
    response = await raw(cluster, "POST", path, {"metadata": {"name": "jupyter-alice"}})
    assert response.code == 201
    assert response.headers.get_list("Warning") == ['299 - "noted by the test"']
    pod = await cluster.api.read_namespaced_pod("jupyter-alice", "default")
    assert pod.metadata.deletion_timestamp is not None
    # A dry run is sent as one.
    dry = "/api/v1/namespaces/default/pods/jupyter-alice/eviction?dryRun=All"
    assert (await raw(cluster, "POST", dry, {"metadata": {"name": "jupyter-alice"}})).code == 201
    assert webhook.reviews[-1]["request"]["dryRun"] is True


async def test_failure_policy_decides_when_the_webhook_cannot_answer(
    cluster: Cluster, webhook: Webhook
) -> None:
    api = admission_api(cluster)
    await running_pod(cluster, "jupyter-alice")
    closed = bind_sockets(0, "127.0.0.1")[0]
    closed_url = f"https://127.0.0.1:{closed.getsockname()[1]}/validate"
    closed.close()
    config = webhook_configuration(webhook)
    config["webhooks"][0]["clientConfig"]["url"] = closed_url
    await api.create_validating_webhook_configuration(config)

    async def evict_status() -> dict[str, Any]:
        error = await expect_status(
            500,
            cluster.api.create_namespaced_pod_eviction(
                "jupyter-alice", "default", eviction("jupyter-alice")
            ),
        )
        return status_of(error)

    unreachable = await evict_status()
    assert unreachable["reason"] == "InternalError"
    assert unreachable["message"].startswith(
        f'Internal error occurred: failed calling webhook "{WEBHOOK}": failed to call webhook:'
    )

    async def reconfigure(**change: Any) -> None:
        hook = {**config["webhooks"][0], **change}
        await api.patch_validating_webhook_configuration(
            "evictions", {"webhooks": [hook]}, **MERGE_PATCH
        )

    # An answer for another request, or one that is not an AdmissionReview
    await reconfigure(clientConfig={"url": webhook.url, "caBundle": webhook.ca_bundle})
    webhook.answer = lambda review: {**allow(review), "response": {"uid": "x", "allowed": True}}
    assert "received invalid webhook response" in (await evict_status())["message"]
    webhook.answer = lambda review: {"allowed": True}
    assert "expected webhook response of admission.k8s.io/v1" in (await evict_status())["message"]

    # A certificate from a CA the caBundle does not hold
    other_ca = base64.b64encode(CertificateAuthority("another CA").pem).decode()
    webhook.answer = allow
    await reconfigure(clientConfig={"url": webhook.url, "caBundle": other_ca})
    assert "CERTIFICATE_VERIFY_FAILED" in (await evict_status())["message"]

    # Slower than timeoutSeconds
    async def slow(review: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(5)  # the slow webhook itself, which the deadline must cut short
        return allow(review)

    webhook.answer = slow
    await reconfigure(
        clientConfig={"url": webhook.url, "caBundle": webhook.ca_bundle}, timeoutSeconds=1
    )
    started = time.monotonic()
    late = await evict_status()
    assert time.monotonic() - started < 3
    assert "context deadline exceeded" in late["message"]
    assert webhook.reviews[-1]["_query"] == "timeout=1s"

    # Ignore: the eviction goes ahead without the webhook's say
    await reconfigure(failurePolicy="Ignore")
    await cluster.api.create_namespaced_pod_eviction(
        "jupyter-alice", "default", eviction("jupyter-alice")
    )
    pod = await cluster.api.read_namespaced_pod("jupyter-alice", "default")
    assert pod.metadata.deletion_timestamp is not None


async def test_selectors_decide_which_evictions_a_webhook_sees(
    cluster: Cluster, webhook: Webhook
) -> None:
    """namespaceSelector matches the namespace's labels; objectSelector the Eviction's, not
    the pod's: a selector on the notebook pods' labels never sees their evictions."""
    api = admission_api(cluster)
    notebook = {"component": "singleuser-server"}
    await running_pod(cluster, "jupyter-alice", notebook)
    webhook.answer = lambda review: deny(review, {"code": 429, "message": "held"})
    configs = {
        "other-namespace": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "jhub"}}
        },
        "pod-labels": {"objectSelector": {"matchLabels": notebook}},
    }
    for name, change in configs.items():
        await api.create_validating_webhook_configuration(
            webhook_configuration(webhook, config_name=name, **change)
        )
    await cluster.api.create_namespaced_pod_eviction(
        "jupyter-alice", "default", eviction("jupyter-alice", dry_run=["All"])
    )
    assert webhook.reviews == []
    # this namespace, and labels the Eviction itself carries
    await api.create_validating_webhook_configuration(
        webhook_configuration(
            webhook,
            config_name="this-namespace",
            namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": "default"}},
            objectSelector={"matchExpressions": [{"key": "drain", "operator": "Exists"}]},
        )
    )
    labelled = eviction("jupyter-alice")
    labelled.metadata.labels = {"drain": "yes"}
    await expect_status(
        429, cluster.api.create_namespaced_pod_eviction("jupyter-alice", "default", labelled)
    )
    assert len(webhook.reviews) == 1
    await cluster.api.create_namespaced_pod_eviction(
        "jupyter-alice", "default", eviction("jupyter-alice")
    )
    assert len(webhook.reviews) == 1


async def test_a_webhook_service_is_reached_through_its_endpoints(
    cluster: Cluster, webhook: Webhook
) -> None:
    await running_pod(cluster, "jupyter-alice")
    service = {"namespace": "default", "name": "admission", "path": "/validate", "port": 8443}
    config = webhook_configuration(
        config_name="by-service",
        clientConfig={"service": service, "caBundle": webhook.ca_bundle},
    )
    await admission_api(cluster).create_validating_webhook_configuration(config)
    webhook.answer = lambda review: deny(review, {"code": 429, "message": "held"})

    async def evict() -> Any:
        return await cluster.api.create_namespaced_pod_eviction(
            "jupyter-alice", "default", eviction("jupyter-alice")
        )

    missing = await expect_status(500, evict())
    assert 'service "admission" not found' in status_of(missing)["message"]
    await cluster.api.create_namespaced_service(
        "default",
        client.V1Service(
            metadata=client.V1ObjectMeta(name="admission"),
            spec=client.V1ServiceSpec(
                ports=[client.V1ServicePort(name="https", port=8443, target_port=9443)]
            ),
        ),
    )
    no_endpoints = await expect_status(500, evict())
    assert 'no endpoints available for service "admission"' in status_of(no_endpoints)["message"]
    # A Service without a selector, its endpoint set by hand: the webhook on this machine.
    await cluster.api.create_namespaced_endpoints(
        "default",
        client.V1Endpoints(
            metadata=client.V1ObjectMeta(name="admission"),
            subsets=[
                client.V1EndpointSubset(
                    addresses=[client.V1EndpointAddress(ip="127.0.0.1")],
                    ports=[client.CoreV1EndpointPort(name="https", port=webhook.port)],
                )
            ],
        ),
    )
    # The certificate is checked for admission.default.svc, which the webhook's holds.
    refused = await expect_status(429, evict())
    assert "held" in status_of(refused)["message"]
    assert webhook.reviews[-1]["request"]["name"] == "jupyter-alice"
