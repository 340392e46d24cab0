"""A node drain suspends its notebooks instead of killing them, end to end.

A real hub with the suspend service's eviction webhook on, behind a Service, registered with
the local API server by a ValidatingWebhookConfiguration as helm-values/webhook/ registers it
(failurePolicy Fail; in this namespace); node-1 is drained through the Eviction API as
``kubectl drain`` drains it (jhub_suspend.testing.drain), while the spare node-2 takes the
notebooks when their users come back.

Two differences from helm-values/webhook/: the local cluster does not evaluate CEL, so the
configuration has no ``matchConditions`` (the webhook allows the evictions of other pods
itself), and its TLS is a CA made here instead of cert-manager's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from conftest import SPARE_TAINT, service_healthy
from kubernetes_asyncio import client
from test_service_e2e import metrics
from test_suspend_e2e import ours, server_with_kernel

from jhub_suspend.demo.hub import running_hub
from jhub_suspend.localcluster.services import free_port
from jhub_suspend.suspension import server_model
from jhub_suspend.testing.drain import drain
from jhub_suspend.testing.hubapi import HubAPI
from jhub_suspend.testing.tls import CertificateAuthority
from jhub_suspend.testing.waiting import wait_for, wait_running

pytestmark = pytest.mark.slow

WEBHOOK_SERVICE = "suspend-webhook"
USERS = ("ann", "ben")


def webhook_configuration(ca_pem: bytes) -> dict:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "jhub-suspend-eviction"},
        "webhooks": [
            {
                "name": "eviction.jhub-suspend.jupyter.org",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
                "clientConfig": {
                    "service": {
                        "namespace": "default",
                        "name": WEBHOOK_SERVICE,
                        "port": 8443,
                        "path": "/eviction",
                    },
                    "caBundle": base64.b64encode(ca_pem).decode(),
                },
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods/eviction"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}},
            }
        ],
    }


@pytest_asyncio.fixture(scope="module")
async def hub(cluster, core, tmp_path_factory):
    """A hub whose service serves the eviction webhook, reached by the API server through
    the Service ``suspend-webhook`` (its endpoint set by hand: the service runs on this
    machine, not in a pod)."""
    state = tmp_path_factory.mktemp("hub")
    ca = CertificateAuthority()
    cert = ca.issue(state / "webhook-tls", [f"{WEBHOOK_SERVICE}.default.svc"])
    port = free_port()
    config = "\n".join(
        [
            f"c.SuspendService.webhook_certfile = {cert.certfile!r}",
            f"c.SuspendService.webhook_keyfile = {cert.keyfile!r}",
            'c.SuspendService.webhook_ip = "127.0.0.1"',
            f"c.SuspendService.webhook_port = {port}",
        ]
    )
    await core.create_namespaced_service(
        "default",
        client.V1Service(
            metadata=client.V1ObjectMeta(name=WEBHOOK_SERVICE),
            spec=client.V1ServiceSpec(
                ports=[client.V1ServicePort(name="https", port=8443, target_port=port)]
            ),
        ),
    )
    await core.create_namespaced_endpoints(
        "default",
        client.V1Endpoints(
            metadata=client.V1ObjectMeta(name=WEBHOOK_SERVICE),
            subsets=[
                client.V1EndpointSubset(
                    addresses=[client.V1EndpointAddress(ip="127.0.0.1")],
                    ports=[client.CoreV1EndpointPort(name="https", port=port)],
                )
            ],
        ),
    )
    admission = client.AdmissionregistrationV1Api(core.api_client)
    await admission.create_validating_webhook_configuration(webhook_configuration(ca.pem))
    try:
        async with running_hub(cluster.describe(), str(state), service_config=config) as h:
            await wait_for(lambda: service_healthy(h), "the suspend service never became healthy")
            yield h
    finally:
        await admission.delete_validating_webhook_configuration("jhub-suspend-eviction")
        await core.delete_namespaced_service(WEBHOOK_SERVICE, "default")
        await core.delete_namespaced_endpoints(WEBHOOK_SERVICE, "default")


@contextlib.asynccontextmanager
async def maintenance_window(core) -> AsyncIterator[None]:
    """node-2 joins for the maintenance (its taint is lifted); afterwards node-1 is
    uncordoned and node-2 tainted again, as the other tests expect them."""
    # A merge patch: a strategic merge patch merges lists of taints, and [] would change none.
    merge: dict = {"_content_type": "application/merge-patch+json"}
    await core.patch_node("node-2", {"spec": {"taints": None}}, **merge)
    try:
        yield
    finally:
        await core.patch_node("node-2", {"spec": {"taints": [SPARE_TAINT]}}, **merge)
        await core.patch_node("node-1", {"spec": {"unschedulable": False}})


async def node_of(core, pod: str) -> str:
    return (await core.read_namespaced_pod(pod, "default")).spec.node_name


async def test_draining_a_node_suspends_its_notebooks_and_they_resume_elsewhere(hub, core, cluster):
    api = HubAPI(hub.api_url, hub.service_token)
    # node-2 is still tainted: the notebooks start on node-1.
    kernels = await asyncio.gather(*(server_with_kernel(hub, api, user) for user in USERS))
    for user, kernel in zip(USERS, kernels, strict=True):
        assert await kernel.execute(f"x = {user!r} * 3\nprint(x)") == f"{user * 3}\n"
        assert await node_of(core, f"jupyter-{user}") == "node-1"
    # Something else runs on the node too; its eviction is none of jhub-suspend's business.
    await core.create_namespaced_pod(
        "default",
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="bystander"),
            spec=client.V1PodSpec(
                termination_grace_period_seconds=0,
                node_selector={"kubernetes.io/hostname": "node-1"},
                containers=[
                    client.V1Container(
                        name="main", image=cluster.images["busybox"], command=["sleep", "600"]
                    )
                ],
            ),
        ),
    )
    await wait_running(cluster.store, "bystander")

    async with maintenance_window(core):
        evictions = {e.name: e for e in await drain(core, "node-1", timeout=240)}

        # The drain completed: nothing is left on the node ...
        left = await core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-1")
        assert left.items == []
        assert evictions["bystander"].answers == [(201, "")]
        # ... every notebook's eviction was refused while it was suspended, then went through
        for user in USERS:
            answers = evictions[f"jupyter-{user}"].answers
            assert answers[0][0] == 429, answers
            assert "is being suspended" in answers[0][1], answers
            assert answers[-1][0] in (201, 404), answers
            assert all(code in (429, 201, 404) for code, _ in answers), answers
        # ... and none was killed: each was checkpointed, and the checkpoint verified, before
        # its pod was deleted (the hub records the suspension as done a moment later).
        for user in USERS:

            async def suspended(user: str = user) -> dict | bool:
                server = await server_model(api.request, user)
                record = ours(server or {}).get("checkpoint") or {}
                return server if record.get("status") == "suspended" else False

            server = await wait_for(suspended, f"the suspension of {user} never finished", 60)
            assert not server.get("ready") and ours(server)["checkpoint"]["reason"] == "eviction"
            assert ours(server)["last_error"] is None
        done = 'jhub_suspend_suspensions_total{outcome="success",reason="eviction"}'

        async def counted() -> dict | bool:  # each operation counts once it has seen the end
            m = await metrics(hub)
            return m if m.get(done) == 2 else False

        m = await wait_for(counted, "the service never counted two suspensions by eviction", 30)
        assert m['jhub_suspend_eviction_reviews_total{outcome="suspend_started"}'] == 2

        # The users come back: their servers resume on the other node, kernels and all.
        await asyncio.gather(*(api.start_server(user) for user in USERS))
        for user, kernel in zip(USERS, kernels, strict=True):
            assert await node_of(core, f"jupyter-{user}") == "node-2"
            assert await kernel.execute("print(x)") == f"{user * 3}\n"
        await asyncio.gather(*(api.stop_server(user) for user in USERS))
