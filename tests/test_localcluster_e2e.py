"""The local cluster end to end, with real parts: JupyterHub, KubeSpawner (unmodified), a real
jupyterhub-singleuser and kernel in a pod, CRIU through the kubelet checkpoint contract, the
registry and Prometheus, on containerd: the checkpoint is containerd's ``CheckpointContainer``
and the restore its ``CreateContainer`` from the checkpoint image.

One hub and one user's server carry the whole story, in order, because a spawn is expensive;
each step is its own test so a failure names the step.
"""

import copy
import os
import shutil
import time

import pytest
from conftest import module_hub
from kubernetes_asyncio import client
from prometheus_api_client import PrometheusConnect

from jhub_suspend import images
from jhub_suspend.archive import CRIO_CHECKPOINT_NAME_ANNOTATION as CRIO_NAME
from jhub_suspend.testing.hubapi import HubAPI
from jhub_suspend.testing.kernel import KernelClient
from jhub_suspend.testing.waiting import wait_for

pytestmark = pytest.mark.slow

USER = "alice"
POD = f"jupyter-{USER}"
# Polling would notice the pod that this module deletes behind the hub's back and end the
# server's token; the story here is the cluster's, so the hub leaves the server alone.
HUB_CONFIG = "c.KubeSpawner.poll_interval = 0\n"

story: dict = {}


async def crio_only_image(archive: str, ref: str) -> str:
    """A checkpoint image as agents built them before containerd was supported: the archive as
    its layer, annotated only with CRI-O's checkpoint name. Returns it pinned to its digest."""
    layout, digest = images.write_layout(archive, {CRIO_NAME: "notebook"})
    try:
        await images.push_layout(layout, ref)
    finally:
        shutil.rmtree(layout)
    facts = await images.inspect(ref)
    assert facts["annotations"] == {CRIO_NAME: "notebook"}
    return f"{ref.rsplit(':', 1)[0]}@{digest}"


hub = module_hub(extra_config=HUB_CONFIG, spawner="kubespawner.KubeSpawner")


async def test_kubespawner_spawns_a_server(hub, core):
    api = HubAPI(hub.api_url, hub.service_token)
    await api.ensure_user(USER)
    server = await api.start_server(USER)
    pod = await core.read_namespaced_pod(POD, "default")
    assert pod.status.phase == "Running"
    assert pod.spec.node_name == "node-1"  # the GPU node is tainted
    assert pod.status.pod_ip.startswith("10.98.")
    assert server["url"] == f"/user/{USER}/"
    story["pod"] = pod


async def test_code_runs_in_the_kernel(hub):
    kernel = KernelClient(f"{hub.url}/user/{USER}/", hub.service_token)
    await kernel.start()
    assert await kernel.execute("x = 6 * 7\nprint(x)") == "42\n"
    story["kernel_id"] = kernel.kernel_id


async def test_prometheus_sees_cpu_usage_against_request(hub, cluster):
    kernel = KernelClient(f"{hub.url}/user/{USER}/", hub.service_token, story["kernel_id"])
    # Burn real CPU in the kernel for a moment so the rate is clearly above zero.
    await kernel.execute("import time\nt = time.time()\nwhile time.time() - t < 3: pass")
    prom = PrometheusConnect(cluster.prometheus_url, disable_ssl=True)
    query = (
        f'sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{{pod="{POD}"}}[20s]))'
        " / on (namespace, pod) sum by (namespace, pod) "
        f'(kube_pod_container_resource_requests{{pod="{POD}", resource="cpu"}})'
    )

    def answered():
        result = prom.custom_query(query)
        return result if result and float(result[0]["value"][1]) > 0.05 else False

    result = await wait_for(answered, f"Prometheus never answered {query}", timeout=60)
    ratio = float(result[0]["value"][1])
    # A busy loop uses at most one core of the 0.5 core requested: at most 200% of the request.
    assert 0.05 < ratio <= 2.2, ratio


async def test_checkpoint_through_the_kubelet_contract(cluster, core, hub):
    node = story["pod"].spec.node_name
    started = time.monotonic()
    body = await core.api_client.call_api(
        f"/api/v1/nodes/{node}/proxy/checkpoint/default/{POD}/notebook",
        "POST",
        query_params=[("timeout", "60")],
        response_types_map={200: "object"},
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
    )
    story["checkpoint_seconds"] = time.monotonic() - started
    (archive,) = body["items"]
    assert os.path.basename(archive).startswith(f"checkpoint-{POD}_default-notebook-")
    assert os.path.getsize(archive) > 1_000_000
    story["archive"] = archive
    # The container keeps running after a checkpoint. (The probe stays out of the kernel's
    # history database, which the restored kernel will write to again.)
    kernel = KernelClient(f"{hub.url}/user/{USER}/", hub.service_token, story["kernel_id"])
    assert await kernel.execute("print(x)", store_history=False) == "42\n"


async def test_unknown_container_is_a_404(core):
    node = story["pod"].spec.node_name
    with pytest.raises(client.ApiException) as err:
        await core.api_client.call_api(
            f"/api/v1/nodes/{node}/proxy/checkpoint/default/{POD}/nope",
            "POST",
            auth_settings=["BearerToken"],
        )
    assert err.value.status == 404


async def test_checkpoint_image_is_pushed(cluster):
    ref = f"{cluster.registry_host}/checkpoints/{USER}:e2e"
    digest = await images.build_and_push(
        story["archive"], ref, {"io.kubernetes.cri-o.annotations.checkpoint.name": "notebook"}
    )
    # What agents built before: the same archive, with only CRI-O's annotation.
    story["crio_only_image"] = await crio_only_image(
        story["archive"], f"{cluster.registry_host}/checkpoints/{USER}:crio-only"
    )
    # This test plays the node agent's part: the kubelet never deletes archives, the agent does.
    os.remove(story["archive"])
    facts = await images.inspect(ref)
    assert facts["digest"] == digest
    assert facts["annotations"]["io.kubernetes.cri-o.annotations.checkpoint.name"] == "notebook"
    # containerd looks for checkpointctl's name: the image gets it even when only CRI-O's is asked.
    assert facts["annotations"]["org.criu.checkpoint.container.name"] == "notebook"
    story["image"] = f"{ref}@{digest}"


async def test_deleting_the_pod_frees_room_for_a_waiting_pod(core, cluster):
    waiting = client.V1Pod(
        metadata=client.V1ObjectMeta(name="waiting"),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="main",
                    image=cluster.images["busybox"],
                    command=["sleep", "600"],
                    resources=client.V1ResourceRequirements(requests={"cpu": "750m"}),
                )
            ]
        ),
    )
    await core.create_namespaced_pod("default", waiting)

    async def failed_scheduling():
        events = await core.list_namespaced_event(
            "default", field_selector="involvedObject.name=waiting"
        )
        return [e for e in events.items if e.reason == "FailedScheduling"]

    (event,) = await wait_for(failed_scheduling, "no FailedScheduling event for the waiting pod")
    assert "Insufficient cpu" in event.message
    assert (await core.read_namespaced_pod("waiting", "default")).spec.node_name is None

    await core.delete_namespaced_pod(POD, "default")

    async def scheduled():
        pod = await core.read_namespaced_pod("waiting", "default")
        return pod if pod.status.phase == "Running" else False

    pod = await wait_for(scheduled, "the waiting pod never ran after the notebook pod left")
    assert pod.spec.node_name == "node-1"
    with pytest.raises(client.ApiException) as err:
        await core.read_namespaced_pod(POD, "default")
    assert err.value.status == 404
    await core.delete_namespaced_pod("waiting", "default", grace_period_seconds=0)

    async def gone():
        pods = await core.list_namespaced_pod("default", field_selector="metadata.name=waiting")
        return not pods.items

    await wait_for(gone, "the waiting pod was never removed")


async def test_pod_from_the_checkpoint_image_restores_the_kernel(core, hub):
    old = story["pod"]
    spec = copy.deepcopy(old.spec)
    spec.node_name = None
    spec.containers[0].image = story["image"]
    restored = client.V1Pod(
        metadata=client.V1ObjectMeta(name=POD, labels=old.metadata.labels), spec=spec
    )
    started = time.monotonic()
    await core.create_namespaced_pod("default", restored)

    async def running():
        pod = await core.read_namespaced_pod(POD, "default")
        waiting = [
            cs.state.waiting
            for cs in pod.status.container_statuses or []
            if cs.state and cs.state.waiting and cs.state.waiting.reason != "ContainerCreating"
        ]
        assert not waiting, f"the restore failed: {waiting}"
        return pod if pod.status.phase == "Running" else False

    pod = await wait_for(running, "the restored pod never ran", timeout=120)
    assert pod.status.pod_ip != old.status.pod_ip  # a new sandbox, a new address

    # Talk to the restored server directly on its new address: the hub still routes to the old one.
    kernel = KernelClient(
        f"http://{pod.status.pod_ip}:8888/user/{USER}/", hub.service_token, story["kernel_id"]
    )

    async def answers():
        return [k["id"] for k in await kernel.kernels()]

    kernels = await wait_for(answers, "the restored server never answered", timeout=60)
    story["restore_seconds"] = time.monotonic() - started
    assert story["kernel_id"] in kernels
    assert await kernel.execute("print(x)") == "42\n"
    print(
        f"\ncheckpoint {story['checkpoint_seconds']:.2f}s, "
        f"restore (pull + CRIU + server answering) {story['restore_seconds']:.2f}s"
    )


async def test_containerd_does_not_restore_an_image_with_only_crio_annotation(core, hub):
    """The defect this project had: images annotated only for CRI-O are started, not restored,
    by containerd, and fail; the same archive with checkpointctl's annotation restored above."""
    spec = copy.deepcopy(story["pod"].spec)
    spec.node_name = None
    spec.containers[0].image = story["crio_only_image"]
    await core.create_namespaced_pod(
        "default", client.V1Pod(metadata=client.V1ObjectMeta(name="crio-only"), spec=spec)
    )

    async def failed():
        pod = await core.read_namespaced_pod("crio-only", "default")
        assert pod.status.phase != "Running", "containerd ran an image it should not restore"
        for cs in pod.status.container_statuses or []:
            if cs.state and cs.state.waiting and cs.state.waiting.reason != "ContainerCreating":
                return cs.state.waiting
        return False

    waiting = await wait_for(failed, "the pod from the CRI-O-only image never failed")
    assert waiting.reason in ("RunContainerError", "CreateContainerError"), waiting
    # containerd took it for an ordinary image: it looked for the command in its layer.
    assert "executable file not found" in waiting.message or "no command" in waiting.message
    await core.delete_namespaced_pod("crio-only", "default", grace_period_seconds=0)
