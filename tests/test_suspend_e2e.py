"""Suspend and restore end to end: real JupyterHub with SuspendingKubeSpawner, the node agents,
CRIU, the registry, on the local cluster.

Each test is a user's story; a failure names the story.
"""

import asyncio
import json
import os
import re
from pathlib import Path

import pytest
import pytest_asyncio
from jupyterhub.utils import exponential_backoff
from kubernetes_asyncio import client
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from jhub_suspend import images
from jhub_suspend.checkpoints import pinned_image
from jhub_suspend.demo.hub import running_hub
from jhub_suspend.spawner import NO_ROOM_MESSAGE
from jhub_suspend.suspension import request_suspension, server_model
from jhub_suspend.testing.hubapi import HubAPI
from jhub_suspend.testing.kernel import KernelClient, KernelError
from jhub_suspend.testing.waiting import wait_for

pytestmark = pytest.mark.slow


# A restore gives up waiting for room after 30 s (the default is 60 % of start_timeout).
HUB_CONFIG = "c.SuspendingKubeSpawner.restore_timeout = 30\n"
# The user whose pods run as on a node whose CRIU configuration lacks tcp-close: runc hands
# CRIU the file that the pod's org.criu.config annotation names instead of /etc/criu/runc.conf.
NO_TCP_CLOSE_USER = "dave"
NODE_WITHOUT_TCP_CLOSE = """
def _as_on_a_node_without_tcp_close(spawner, pod):
    if spawner.user.name == {user!r}:
        pod.metadata.annotations = {{**(pod.metadata.annotations or {{}}),
                                    "org.criu.config": {path!r}}}
    return pod
c.KubeSpawner.modify_pod_hook = _as_on_a_node_without_tcp_close
"""


@pytest_asyncio.fixture(scope="module")
async def hub(cluster, tmp_path_factory):
    state = tmp_path_factory.mktemp("hub")
    criu_conf = state / "criu-without-tcp-close.conf"
    criu_conf.write_text("# a node's CRIU configuration that lacks tcp-close\n")
    config = HUB_CONFIG + NODE_WITHOUT_TCP_CLOSE.format(user=NO_TCP_CLOSE_USER, path=str(criu_conf))
    async with running_hub(cluster.describe(), str(state), extra_config=config) as h:
        yield h


@pytest_asyncio.fixture
async def api(hub):
    api = HubAPI(hub.api_url, hub.service_token)
    yield api
    # Whatever a story left running, stop it: the small node has room for two notebooks.
    await api.stop_all_servers()


async def server_with_kernel(hub, api, user, name=""):
    """A user with a running server and a kernel in it: each story starts here."""
    await api.ensure_user(user)
    await api.start_server(user, name)
    kernel = KernelClient(server_url(hub, user, name), hub.service_token)
    await kernel.start()
    return kernel


def server_url(hub, user, name=""):
    return f"{hub.url}/user/{user}/{name + '/' if name else ''}"


async def start_with_progress(hub, api, user, name="", options=None):
    """Start a server and collect the progress messages the spawn page would show."""
    path = f"users/{user}/servers/{name}" if name else f"users/{user}/server"
    # The hub answers the POST only when the spawn is done or slow; follow the progress
    # stream meanwhile, as the spawn page does.
    post = asyncio.ensure_future(api.request("POST", path, options))

    async def spawning():
        if post.done():
            post.result()  # raise a failed POST
            return True
        s = await api.server(user, name)
        return bool(s and (s.get("pending") == "spawn" or s.get("ready")))

    # Poll briskly: a restore takes a few seconds, and the stream must be joined before it ends.
    await exponential_backoff(
        spawning, f"{user}/{name} never started spawning", start_wait=0.05, max_wait=0.2
    )
    messages: list[str] = []

    def on_chunk(chunk: bytes) -> None:
        for line in chunk.decode().splitlines():
            if line.startswith("data:"):
                messages.append(json.loads(line[5:]).get("message", ""))

    progress = f"{hub.api_url}/users/{user}/{'servers/' + name if name else 'server'}/progress"
    await AsyncHTTPClient().fetch(
        HTTPRequest(
            progress,
            headers={"Authorization": f"token {hub.service_token}"},
            streaming_callback=on_chunk,
            request_timeout=300,
        )
    )

    await post

    async def ready():
        s = await api.server(user, name)
        return s if s and s.get("ready") else False

    await wait_for(ready, f"{user}/{name} never became ready", timeout=180)
    return messages


async def suspend(hub, api, core, user, name=""):
    return await request_suspension(api.request, core, user, name, reason="test")


def ours(server):
    return (server.get("state") or {}).get("jhub_suspend") or {}


async def pod_exists(core, name):
    try:
        await core.read_namespaced_pod(name, "default")
    except client.ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def waiting_pod(name, cpu, image):
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            termination_grace_period_seconds=0,
            containers=[
                client.V1Container(
                    name="main",
                    image=image,
                    command=["sleep", "600"],
                    resources=client.V1ResourceRequirements(requests={"cpu": cpu}),
                )
            ],
        ),
    )


async def test_suspend_frees_the_node_and_restore_brings_the_kernel_back(hub, api, core, cluster):
    user = "bob"
    kernel = await server_with_kernel(hub, api, user)
    assert await kernel.execute("x = 41 + 1\nprint(x)") == "42\n"
    token = (await kernel.execute("import os\nprint(os.environ['JUPYTERHUB_API_TOKEN'])")).strip()
    state = (await server_model(api.request, user))["state"]
    pod_name = state["pod_name"]
    assert pod_name == "jupyter-bob"

    # Someone waits for the room the idle notebook holds.
    await core.create_namespaced_pod(
        "default", waiting_pod("waiting", "750m", cluster.images["busybox"])
    )
    after = await suspend(hub, api, core, user)

    record = ours(after)["checkpoint"]
    assert record["status"] == "suspended", after
    ref = _image_ref(after, cluster)
    facts = await images.inspect(ref)
    assert facts["annotations"]["jhub-suspend.jupyter.org/user"] == user
    assert facts["annotations"]["io.kubernetes.cri-o.annotations.checkpoint.name"] == "notebook"
    assert record["image"].startswith("fernet:")  # sealed in the hub's database
    assert record["size"] > 1_000_000
    assert record["node"]["arch"] in ("amd64", "arm64")
    assert ours(after)["last_error"] is None
    assert not await pod_exists(core, pod_name)
    # The archive did not stay on the node.
    archives = os.listdir(cluster.kubelet("node-1").checkpoint_dir)
    assert not [a for a in archives if a.startswith(f"checkpoint-{pod_name}_")], archives

    async def waiting_runs():
        pod = await core.read_namespaced_pod("waiting", "default")
        return pod if pod.status.phase == "Running" else False

    assert (await wait_for(waiting_runs, "the waiting pod never ran")).spec.node_name == "node-1"

    # The node is full now: the resume waits for room (Pending, not a failed restore) ...
    resume = asyncio.ensure_future(start_with_progress(hub, api, user))

    async def restore_unschedulable():
        try:
            pod = await core.read_namespaced_pod(pod_name, "default")
        except client.ApiException as e:
            if e.status == 404:
                return False
            raise
        conditions = pod.status.conditions or []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)

    await wait_for(restore_unschedulable, "the restoring pod never waited for room")
    assert not resume.done()
    waiting = ours(await server_model(api.request, user))
    assert waiting["checkpoint"]["status"] == "restoring" and waiting["last_error"] is None
    # ... and goes on once the other pod leaves.
    await core.delete_namespaced_pod("waiting", "default", grace_period_seconds=0)
    messages = await resume
    events = await core.list_namespaced_event(
        "default", field_selector=f"involvedObject.name={pod_name}"
    )
    waited = [e.message for e in events.items if e.reason == "FailedScheduling"]
    assert any("Insufficient cpu" in m for m in waited), waited
    restoring = [m for m in messages if "Restoring your saved session" in m]
    assert restoring, messages
    assert re.search(r"pulling a checkpoint of \d+(\.\d)? (kB|MB|GB)", restoring[0]), restoring
    # The node reports the pull with its size, as a kubelet does (the spawn page shows the
    # pod's events too, when they arrive before the server is ready).
    events = await core.list_namespaced_event(
        "default", field_selector=f"involvedObject.name={pod_name}"
    )
    pulled = [e.message for e in events.items if e.reason == "Pulled"]
    checkpoint_pulls = [m for m in pulled if "jhub-suspend/default/jupyter-bob@sha256:" in m]
    assert checkpoint_pulls and re.search(r"Image size: [1-9]\d+ bytes", checkpoint_pulls[0]), (
        pulled
    )
    restored = [e.message for e in events.items if e.reason == "Started"]
    assert any("Restored container notebook from checkpoint image" in m for m in restored)
    assert kernel.kernel_id in [k["id"] for k in await kernel.kernels()]
    assert await kernel.execute("print(x)") == "42\n"
    # The restored process still holds its token, and the hub still accepts it.
    assert (await kernel.execute("print(os.environ['JUPYTERHUB_API_TOKEN'])")).strip() == token
    whoami = await HubAPI(hub.api_url, token).request("GET", "user")
    assert whoami["name"] == user

    restored = await server_model(api.request, user)
    assert ours(restored)["checkpoint"] is None  # used, and removed (retention 0)
    with pytest.raises(images.ImageNotFound):
        await images.inspect(ref)
    await api.stop_server(user)


async def test_named_server_suspends_and_restores(hub, api, core):
    user, name = "carol", "analysis"
    kernel = await server_with_kernel(hub, api, user, name)
    await kernel.execute("data = {'rows': 3}")
    after = await suspend(hub, api, core, user, name)
    assert ours(after)["checkpoint"]["status"] == "suspended"
    assert not await pod_exists(core, after["state"]["pod_name"])
    assert after["state"]["pod_name"] == "jupyter-carol--analysis"

    await start_with_progress(hub, api, user, name)
    assert await kernel.execute("print(data['rows'])") == "3\n"
    await api.stop_server(user, name)


async def test_a_node_without_tcp_close_leaves_the_server_running_and_says_why(hub, api, core):
    """On a node whose CRIU configuration lacks tcp-close, no notebook can be checkpointed (its
    kernels and the proxy hold TCP connections): the pod stays, the user and the admin are told
    which setting is missing, and the next start gives the same live server back."""
    user = NO_TCP_CLOSE_USER
    kernel = await server_with_kernel(hub, api, user)
    await kernel.execute("y = 'still here'")
    uid = (await core.read_namespaced_pod(f"jupyter-{user}", "default")).metadata.uid
    after = await suspend(hub, api, core, user)
    # The hub has the live server back at once; the user never had to start anything.
    assert after["ready"], after
    error = ours(after)["last_error"]
    assert error["operation"] == "suspend"
    assert "Suspending failed, the server keeps running" in error["message"]
    text = error["message"] + " " + (error.get("detail") or "")
    assert "tcp-close" in text and "/etc/criu/runc.conf" in text, error
    assert ours(after)["checkpoint"] is None
    pod = await core.read_namespaced_pod(f"jupyter-{user}", "default")
    assert pod.status.phase == "Running"
    assert pod.metadata.deletion_timestamp is None
    assert pod.metadata.uid == uid  # the same pod, adopted, not a new one

    assert await kernel.execute("print(y)") == "still here\n"
    await api.stop_server(user)


async def test_a_gone_checkpoint_starts_fresh_with_a_message_and_no_retry(hub, api, core, cluster):
    user = "erin"
    kernel = await server_with_kernel(hub, api, user)
    await kernel.execute("z = 1")
    after = await suspend(hub, api, core, user)
    # The image disappears from the registry (a retention sweep, an admin, a registry reset).
    await images.delete(_image_ref(after, cluster))

    messages = await start_with_progress(hub, api, user)
    assert any("could not be restored" in m for m in messages), messages
    server = await server_model(api.request, user)
    assert ours(server)["checkpoint"]["status"] == "restore_failed"  # kept for the admin
    error = ours(server)["last_error"]
    assert error["message"] == (
        "Your saved session could not be restored: the saved checkpoint no longer exists in "
        "the registry. A fresh server was started on the same volume."
    )
    assert "ErrImagePull" in error["detail"]
    fresh = KernelClient(server_url(hub, user), hub.service_token)
    await fresh.start()
    with pytest.raises(KernelError, match="NameError"):
        await fresh.execute("print(z)")

    # A later stop and start is a plain fresh start: no second restore attempt.
    await api.stop_server(user)
    messages = await start_with_progress(hub, api, user)
    assert not any("Restoring" in m for m in messages), messages
    await api.stop_server(user)


async def test_a_file_removed_while_suspended_fails_the_restore_cleanly(hub, api, core, cluster):
    """CRIU reopens the files a process had open; if one is gone, the restore fails."""
    user = "frank"
    kernel = await server_with_kernel(hub, api, user)
    await kernel.execute("open('data.csv', 'w').write('a,b\\n')\nf = open('data.csv')")
    await suspend(hub, api, core, user)
    # The user's volume (their PVC) on the host, where the local cluster keeps volumes.
    volume = os.path.join(cluster.state_dir, "volumes", "default", f"claim-{user}")
    os.remove(os.path.join(volume, "data.csv"))

    messages = await start_with_progress(hub, api, user)
    assert any("could not be restored" in m for m in messages), messages
    server = await server_model(api.request, user)
    assert ours(server)["checkpoint"]["status"] == "restore_failed"
    error = ours(server)["last_error"]
    assert "a file it had open is gone or has changed" in error["message"], error
    assert "data.csv" in error["detail"], error
    await api.stop_server(user)


async def test_discarding_the_checkpoint_starts_fresh(hub, api, core, cluster):
    user = "gina"
    kernel = await server_with_kernel(hub, api, user)
    await kernel.execute("w = 5")
    after = await suspend(hub, api, core, user)
    ref = _image_ref(after, cluster)
    await start_with_progress(hub, api, user, options={"discard_checkpoint": True})
    server = await server_model(api.request, user)
    assert ours(server)["checkpoint"] is None
    assert "discard_checkpoint" not in (server.get("user_options") or {})  # consumed
    with pytest.raises(images.ImageNotFound):
        await images.inspect(ref)
    assert kernel.kernel_id not in [k["id"] for k in await kernel.kernels()]
    await api.stop_server(user)


async def test_a_hub_crash_during_a_suspension_loses_nothing(hub, api, core):
    user = "hank"
    kernel = await server_with_kernel(hub, api, user)
    await kernel.execute("v = 'survives'")
    state = (await server_model(api.request, user))["state"]
    patch = {"metadata": {"annotations": {"jhub-suspend.jupyter.org/suspend-requested": "test"}}}
    await core.patch_namespaced_pod(state["pod_name"], "default", patch)
    await api.request("DELETE", f"users/{user}/server")
    # The stop is under way (the agent is checkpointing) when the hub dies.
    await asyncio.sleep(0)
    old_services = suspend_services_of(hub)
    assert len(old_services) == 1, old_services
    await hub.crash_and_restart()
    # The old hub's suspend service died with it (as in a hub pod); the new hub starts its own.
    assert not set(old_services) & set(suspend_services_of(hub))
    await wait_for(
        lambda: len(suspend_services_of(hub)) == 1, "the new hub did not start its service", 60
    )

    async def settled():
        s = await server_model(api.request, user)
        return s if s and not s.get("pending") else False

    server = await wait_for(settled, "the server never settled after the hub restarted", 120)
    running = await pod_exists(core, state["pod_name"])
    if server.get("ready"):
        assert running, "the hub says running but the pod is gone"
    else:
        # Stopped: then it must be restorable, not lost.
        assert not running, "the hub says stopped but the pod still runs (orphan)"
        assert ours(server)["checkpoint"]["status"] in ("verified", "suspended"), server
        await api.start_server(user)
    assert await kernel.execute("print(v)") == "survives\n"
    await api.stop_server(user)


def suspend_services_of(hub) -> list[int]:
    """PIDs of the suspend service processes this hub started (they run in its state dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if b"jhub_suspend.service" in cmdline and cwd == hub.state_dir:
            found.append(int(entry))
    return found


def _image_ref(server, cluster):
    """The checkpoint's image reference, from the registry (the state holds it sealed)."""
    digest = ours(server)["checkpoint"]["digest"]
    return pinned_image(
        cluster.checkpoint_repository, "default", server["state"]["pod_name"], digest
    )


async def test_a_restore_with_no_room_in_time_keeps_the_checkpoint(hub, api, core, cluster):
    """Waiting for room ends at restore_timeout, while the hub still waits: the spawn fails
    with a clear message, the pending pod goes, and the checkpoint stays restorable."""
    user = "gina"
    kernel = await server_with_kernel(hub, api, user)
    await kernel.execute("w = 'waited'")
    await core.create_namespaced_pod(
        "default", waiting_pod("filler", "750m", cluster.images["busybox"])
    )
    after = await suspend(hub, api, core, user)
    pod_name = after["state"]["pod_name"]

    async def filler_runs():
        pod = await core.read_namespaced_pod("filler", "default")
        return pod.status.phase == "Running"

    await wait_for(filler_runs, "the filler pod never took the freed room")
    await api.request("POST", f"users/{user}/server")

    async def given_up():
        s = await server_model(api.request, user)
        return s if s and not s.get("pending") and not s.get("ready") else False

    server = await wait_for(given_up, "the restore never gave up waiting for room", 120)
    record = ours(server)
    assert record["checkpoint"]["status"] == "suspended", record
    assert record["last_error"]["message"] == NO_ROOM_MESSAGE, record
    assert not await pod_exists(core, pod_name)

    await core.delete_namespaced_pod("filler", "default", grace_period_seconds=0)

    async def filler_gone():
        return not await pod_exists(core, "filler")

    await wait_for(filler_gone, "the filler pod was never removed")
    await api.start_server(user)
    assert await kernel.execute("print(w)") == "waited\n"
    await api.stop_server(user)


async def test_suspending_a_stopped_server_is_refused(hub, api, core):
    from jhub_suspend.suspension import SuspensionError

    await api.ensure_user("ivy")
    with pytest.raises(SuspensionError) as err:
        await request_suspension(api.request, core, "ivy")
    assert err.value.status == 409
    assert "not running" in str(err.value)
