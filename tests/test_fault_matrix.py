"""The fault matrix (issue 10): the hub, the suspend service or a node agent is SIGKILLed at each
step of a suspension and of a restore, on the shared local cluster, and afterwards nothing is
lost.

The steps are held on cue by the emulated kubelet and API server (``cluster.faults``, see
``jhub_suspend/localcluster/faults.py``); the push, which is the agent's own, is caught by
watching for its skopeo process. After every fault the same invariants are checked:

* the notebook is running, or it has a verified checkpoint; either way its kernel's state
  comes back;
* nothing was checkpointed twice;
* once the parts are back, no pod, image, archive, layout or suspension mark is left over;
* the user sees a clear state and, if something failed, a message without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import service_healthy
from test_service_e2e import call
from test_suspend_e2e import ours, pod_exists, server_with_kernel, suspend_services_of
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from jhub_suspend import checkpoints as ck
from jhub_suspend import images
from jhub_suspend.commands import run_command
from jhub_suspend.demo.hub import running_hub
from jhub_suspend.localcluster import registrygc
from jhub_suspend.suspension import request_suspension, server_model
from jhub_suspend.testing.hubapi import HubAPI
from jhub_suspend.testing.waiting import wait_for

pytestmark = pytest.mark.slow

NODE = "node-1"
SUSPEND_STEPS = ("before-checkpoint", "after-checkpoint", "during-push", "before-pod-delete")
RESUME_STEPS = ("during-pull", "during-restore")
# The service first: while the hub brings a killed service back (it polls every 30 s), the
# agent's case, which needs no service, runs, and the hub's case starts a new one anyway.
VICTIMS = ("service", "agent", "hub")
# The kubelet's (or API server's) fault point each step is held at; the push has none.
HELD_AT = {
    "before-checkpoint": "checkpoint",
    "after-checkpoint": "checkpoint-written",
    "before-pod-delete": "pod-delete",
    "during-pull": "pull",
    "during-restore": "restore",
}


# What becomes of the server, per (killed part, step): the table in docs/deploy.md ("When a
# part dies mid-operation"). "suspended" means it was left with a restorable checkpoint (and
# check_invariants then restores it); "running" that it runs (after a restore, for the
# restore steps).
EXPECTED = {
    "hub": dict.fromkeys(SUSPEND_STEPS, "running") | dict.fromkeys(RESUME_STEPS, "suspended"),
    "service": dict.fromkeys(SUSPEND_STEPS, "suspended") | dict.fromkeys(RESUME_STEPS, "running"),
    "agent": dict.fromkeys(SUSPEND_STEPS, "running")
    | {"before-pod-delete": "suspended"}
    | dict.fromkeys(RESUME_STEPS, "running"),
}


@pytest_asyncio.fixture(scope="module")
async def hub(cluster, tmp_path_factory):
    state = tmp_path_factory.mktemp("hub")
    # Short cycles, and a short wait for a stop: the service hands back a locked-out server
    # within seconds, and clears a mark no stop followed after 12 s.
    config = "c.SuspendService.cycle_interval = 2\nc.SuspendService.suspend_timeout = 12\n"
    # The hub waits 20 s for a checkpoint, so that a kubelet that never answers is given up.
    hub_config = "c.SuspendingKubeSpawner.checkpoint_timeout = 20\n"
    async with running_hub(
        cluster.describe(), str(state), extra_config=hub_config, service_config=config
    ) as h:
        yield h
    cluster.faults.clear()


@pytest_asyncio.fixture
async def api(hub, cluster):
    api = HubAPI(hub.api_url, hub.service_token)
    yield api
    cluster.faults.clear()
    await api.stop_all_servers()


# ---- killing, and watching for the push --------------------------------------------------


async def kill(victim: str, hub, cluster) -> None:
    if victim == "hub":
        await hub.crash_and_restart()
    elif victim == "service":
        pids = suspend_services_of(hub)
        assert pids, "no suspend service is running to kill"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    else:
        # The whole process group, as a container's processes die with it.
        os.killpg(cluster.agents[NODE].pid, signal.SIGKILL)


def pushing(pod: str) -> bool:
    """Whether skopeo is pushing a layout of this pod's archive now."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = any(f"checkpoint-{pod}_".encode() in a for a in argv)
        if argv and argv[0].endswith(b"skopeo") and b"copy" in argv and ours:
            return True
    return False


async def wait_pushing(pod: str) -> None:
    await wait_for(
        lambda: pushing(pod),
        f"the agent never pushed the checkpoint of {pod}",
        120,
        start_wait=0.005,
        max_wait=0.02,
    )


# ---- the invariants ----------------------------------------------------------------------


async def settled(api, user: str) -> dict[str, Any]:
    """The server once it is running, or stopped with a restorable checkpoint. A server stopped
    without one while its pod runs is waited for: the service hands it back."""

    async def done():
        s = await server_model(api.request, user)
        if not s or s.get("pending"):
            return False
        status = (ours(s).get("checkpoint") or {}).get("status")
        return s if s.get("ready") or status in ck.RESTORABLE_WHEN_STOPPED else False

    try:
        return await wait_for(done, "", 180)
    except TimeoutError:
        s = await server_model(api.request, user)
        raise AssertionError(
            f"{user}'s server is neither running nor restorable: the notebook is lost or its "
            f"user locked out: {s and ours(s)}"
        ) from None


def leftovers(cluster, pod: str) -> list[str]:
    directory = cluster.kubelet(NODE).checkpoint_dir
    try:
        return [n for n in os.listdir(directory) if n.startswith(f"checkpoint-{pod}_")]
    except FileNotFoundError:
        return []


async def tags(cluster, pod: str) -> list[str]:
    repo = ck.image_repository(cluster.checkpoint_repository, "default", pod)
    name = repo.split("/", 1)[1]
    resp = await AsyncHTTPClient().fetch(
        f"http://{cluster.registry_host}/v2/{name}/tags/list", raise_error=False
    )
    if resp.code == 404:
        return []
    assert resp.code == 200, resp.body
    return json.loads(resp.body).get("tags") or []


async def _no_tags(cluster, pod: str) -> bool:
    return not await tags(cluster, pod)


def clear_message(record: dict[str, Any]) -> None:
    error = record.get("last_error") or {}
    message = error.get("message", "")
    assert message, f"a failure without a message for the user: {record}"
    assert "Traceback" not in message, message


async def check_invariants(
    hub, api, core, cluster, user, kernel, value, checkpoints, most: int
) -> str:
    """Check what must hold after any fault; return what became of the server."""
    server = await settled(api, user)
    record = ours(server)
    pod = server["state"]["pod_name"]
    if server.get("ready"):
        outcome = "running"
        assert await pod_exists(core, pod), "the hub says running, but the pod is gone"
    else:
        checkpoint = record.get("checkpoint") or {}
        assert checkpoint.get("status") in ck.RESTORABLE_WHEN_STOPPED, (
            f"the server is stopped and has no restorable checkpoint: the notebook is lost: "
            f"{record}"
        )
        assert not await pod_exists(core, pod), "the hub says stopped, but the pod still runs"
        outcome = "suspended"
        await api.start_server(user)
    if record.get("last_error"):
        clear_message(record)
    assert await kernel.execute("print(v)") == f"{value}\n", "the kernel's state did not survive"
    assert checkpoints.hits <= most, f"checkpointed {checkpoints.hits} times"

    # Once the parts are back: no suspension mark, no stray pod, image, archive or layout.
    async def unmarked():
        live = await core.read_namespaced_pod(pod, "default")
        return ck.SUSPEND_REQUEST_ANNOTATION not in (live.metadata.annotations or {})

    await wait_for(unmarked, f"the suspension mark stayed on {pod}", 60)
    pods = await core.list_namespaced_pod("default")
    assert [p.metadata.name for p in pods.items] == [pod]
    await wait_for(lambda: not leftovers(cluster, pod), f"archives of {pod} stayed on the node", 60)
    # An agent whose caller went away deletes what it pushed once its push is done.
    try:
        await wait_for(lambda: _no_tags(cluster, pod), "", 60)
    except TimeoutError:
        raise AssertionError(f"checkpoint images nobody owns: {await tags(cluster, pod)}") from None
    await wait_for(lambda: cluster.agents[NODE].running, "the agent never came back", 60)
    return outcome


async def ask_for_suspension(hub, api, core, user: str, victim: str) -> asyncio.Future | None:
    """Ask for the suspension through the service's REST API when the service is the victim,
    else as the service does it, through the same function (the mark, the stop, and the
    server started again if the suspension failed), in the background."""
    if victim != "service":
        return asyncio.ensure_future(request_suspension(api.request, core, user, reason="test"))
    await service_back(hub)
    await suspend_through_the_service(hub, user)
    return None


async def suspend_through_the_service(hub, user: str) -> None:
    """Ask for the suspension as an admin does, through the service's REST API."""
    status, body = await call(hub, "POST", f"api/servers/{user}/suspend", hub.service_token)
    assert status == 202, (status, body)


async def finish(request: asyncio.Future, victim: str) -> None:
    """Wait for the hub's answer to the request; a killed hub may never give one."""
    if victim == "hub":
        with contextlib.suppress(Exception):
            await request
    else:
        await request


async def service_back(hub) -> None:
    """The hub restarts a managed service that died (it polls every 30 s or so)."""

    await wait_for(lambda: service_healthy(hub), "the suspend service never came back", 90)


# ---- the matrix --------------------------------------------------------------------------


@pytest.mark.parametrize("victim", VICTIMS)
@pytest.mark.parametrize("step", SUSPEND_STEPS)
async def test_killed_during_a_suspension(hub, api, core, cluster, victim, step):
    user = f"s-{victim}-{SUSPEND_STEPS.index(step)}"
    kernel = await server_with_kernel(hub, api, user)
    value = f"{victim} at {step}"
    # A larger notebook for the push, so that it lasts long enough to be caught.
    pad = "pad = bytearray(os.urandom(64 << 20))\n" if step == "during-push" else ""
    await kernel.execute(f"import os\n{pad}v = {value!r}")
    pod = (await server_model(api.request, user))["state"]["pod_name"]
    checkpoints = cluster.faults.arm("checkpoint-written", pod=pod, hold=False)
    held = cluster.faults.arm(HELD_AT[step], pod=pod) if step in HELD_AT else None

    request = await ask_for_suspension(hub, api, core, user, victim)
    if held is not None:
        await held.wait_reached()
    else:
        await wait_pushing(pod)
    await kill(victim, hub, cluster)
    if held is not None:
        # A hub killed before it deleted the pod never sent the delete.
        killed_caller = victim == "hub" and step == "before-pod-delete"
        held.release(fail=(503, "the caller is gone") if killed_caller else None)
        cluster.faults.disarm(held)
    if request is not None:
        await finish(request, victim)
    outcome = await check_invariants(
        hub, api, core, cluster, user, kernel, value, checkpoints, most=1
    )
    assert outcome == EXPECTED[victim][step]
    await api.stop_server(user)


@pytest.mark.parametrize("victim", VICTIMS)
@pytest.mark.parametrize("step", RESUME_STEPS)
async def test_killed_during_a_restore(hub, api, core, cluster, victim, step):
    user = f"r-{victim}-{RESUME_STEPS.index(step)}"
    kernel = await server_with_kernel(hub, api, user)
    value = f"{victim} at {step}"
    await kernel.execute(f"v = {value!r}")
    pod = (await server_model(api.request, user))["state"]["pod_name"]
    request = await ask_for_suspension(hub, api, core, user, victim)
    if request is not None:
        await request

    async def suspended():
        s = await server_model(api.request, user)
        return (ours(s).get("checkpoint") or {}).get("status") == "suspended"

    await wait_for(suspended, f"{user}'s server was never suspended", 120)
    checkpoints = cluster.faults.arm("checkpoint-written", pod=pod, hold=False)
    held = cluster.faults.arm(HELD_AT[step], pod=pod)

    start = asyncio.ensure_future(api.request("POST", f"users/{user}/server"))
    await held.wait_reached()
    await kill(victim, hub, cluster)
    held.release()
    cluster.faults.disarm(held)
    await finish(start, victim)
    outcome = await check_invariants(
        hub, api, core, cluster, user, kernel, value, checkpoints, most=0
    )
    assert outcome == EXPECTED[victim][step]
    await api.stop_server(user)


# ---- injected faults ---------------------------------------------------------------------


async def suspended_or_kept(hub, api, core, cluster, user, step_fault) -> tuple[str, dict]:
    """Suspend ``user``'s server with ``step_fault`` (an async callable run once the request is
    on its way) in effect; return the outcome and the server's record once settled."""
    kernel = await server_with_kernel(hub, api, user)
    value = f"{user} survives"
    await kernel.execute(f"v = {value!r}")
    pod = (await server_model(api.request, user))["state"]["pod_name"]
    checkpoints = cluster.faults.arm("checkpoint-written", pod=pod, hold=False)
    undo = await step_fault(pod)
    try:
        after = await request_suspension(api.request, core, user, reason="test")
    finally:
        await undo()
    outcome = await check_invariants(
        hub, api, core, cluster, user, kernel, value, checkpoints, most=1
    )
    return outcome, ours(after)


def nothing():
    async def undo() -> None:
        pass

    return undo


async def test_the_kubelet_answering_500_leaves_the_server_running(hub, api, core, cluster):
    async def kubelet_500(pod):
        cluster.faults.arm("checkpoint", pod=pod, hold=False, fail=(500, "injected: runtime error"))
        return nothing()

    outcome, record = await suspended_or_kept(hub, api, core, cluster, "k-500", kubelet_500)
    assert outcome == "running"
    assert "injected: runtime error" in record["last_error"]["message"], record


async def test_a_kubelet_that_never_answers_leaves_the_server_running(hub, api, core, cluster):
    held = []

    async def kubelet_hangs(pod):
        held.append(cluster.faults.arm("checkpoint", pod=pod))

        async def undo() -> None:  # the kubelet answers at last, after its caller gave up
            held[0].release()
            cluster.faults.disarm(held[0])

        return undo

    outcome, record = await suspended_or_kept(hub, api, core, cluster, "k-hang", kubelet_hangs)
    assert outcome == "running"
    assert "no answer from the node agent" in record["last_error"]["message"], record


async def test_a_full_disk_while_the_archive_is_written_leaves_the_server_running(
    hub, api, core, cluster
):
    directory = cluster.kubelet(NODE).checkpoint_dir

    async def disk_full(pod):
        os.makedirs(directory, exist_ok=True)
        await run_command(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", directory])

        async def undo() -> None:
            await run_command(["umount", directory])

        return undo

    outcome, record = await suspended_or_kept(hub, api, core, cluster, "k-disk", disk_full)
    assert outcome == "running"
    assert "no space left on device" in record["last_error"]["message"].lower(), record


async def test_the_registry_down_during_the_push_leaves_the_server_running(hub, api, core, cluster):
    async def registry_down(pod):
        written = cluster.faults.arm("checkpoint-written", pod=pod)

        async def stop_when_written() -> None:
            await written.wait_reached()
            await cluster.stop_registry()
            written.release()
            cluster.faults.disarm(written)

        stopping = asyncio.ensure_future(stop_when_written())

        async def undo() -> None:
            await stopping
            await cluster.start_registry_again()

        return undo

    outcome, record = await suspended_or_kept(hub, api, core, cluster, "k-reg", registry_down)
    assert outcome == "running"
    assert "registry" in record["last_error"]["message"].lower(), record


async def test_the_registry_answering_500_leaves_the_server_running(hub, api, core, cluster):
    repositories = Path(cluster.registry.storage_dir, "docker", "registry", "v2", "repositories")

    async def registry_500(pod):
        # Its storage broken under it, the real registry answers 500 to the push.
        aside = repositories.with_name("repositories.aside")
        repositories.rename(aside)
        repositories.write_text("not a directory")

        async def undo() -> None:
            repositories.unlink()
            aside.rename(repositories)

        return undo

    outcome, record = await suspended_or_kept(hub, api, core, cluster, "k-reg500", registry_500)
    assert outcome == "running"
    assert "registry" in record["last_error"]["message"].lower(), record


async def test_a_corrupted_checkpoint_image_starts_fresh_and_keeps_the_image(
    hub, api, core, cluster
):
    """A checkpoint that cannot be restored cannot give the kernel back: the user gets a fresh
    server at once, with a message, and the image is kept for the admin, not deleted."""
    user = "k-corrupt"
    kernel = await server_with_kernel(hub, api, user)
    await kernel.execute("v = 1")
    after = await request_suspension(api.request, core, user, reason="test")
    checkpoint = ours(after)["checkpoint"]
    assert checkpoint["status"] == "suspended", after
    repo = ck.image_repository(cluster.checkpoint_repository, "default", after["state"]["pod_name"])
    layer = (await images.inspect(f"{repo}@{checkpoint['digest']}"))["layers"][0]
    algorithm, hexdigest = layer.split(":")
    blob = Path(
        cluster.registry.storage_dir, *registrygc.BLOBS_DIR, algorithm, hexdigest[:2], hexdigest,
        "data",
    )  # fmt: skip
    with open(blob, "r+b") as f:
        f.seek(blob.stat().st_size // 2)
        f.write(os.urandom(4096))

    await api.start_server(user)
    server = await server_model(api.request, user)
    record = ours(server)
    assert server.get("ready")
    assert record["checkpoint"]["status"] == "restore_failed", record
    clear_message(record)
    assert (await images.inspect(f"{repo}@{checkpoint['digest']}"))["digest"] == checkpoint[
        "digest"
    ]  # kept for the admin
    with pytest.raises(HTTPClientError) as gone:
        await kernel.execute("print(v)")  # a fresh server: that kernel is gone
    assert gone.value.code == 404
    await images.delete(f"{repo}@{checkpoint['digest']}")
