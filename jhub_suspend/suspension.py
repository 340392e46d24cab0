"""Asking for a suspension: mark the server's pod, then stop the server through the hub.

JupyterHub has no "suspend" verb, so a suspension is a stop of a server whose pod carries the
suspend mark; SuspendingKubeSpawner.stop() sees the mark and checkpoints first. The service, the
admin API and the tests all suspend through this one function.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from jupyterhub.utils import exponential_backoff
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.client.rest import ApiException

from .checkpoints import SUSPEND_REQUEST_ANNOTATION, SUSPEND_REQUESTED_AT_ANNOTATION
from .errors import JhubSuspendError
from .kubevalues import rfc3339
from .state import read_state

# request(method, path, body) -> parsed JSON, against the hub's REST API (e.g. /hub/api)
HubRequest = Callable[[str, str, Any], Awaitable[Any]]


class SuspensionError(JhubSuspendError):
    """The suspension could not be asked for; the message says why."""


def server_path(user: str, server_name: str = "") -> str:
    base = f"users/{quote(user, safe='')}"
    return f"{base}/servers/{quote(server_name, safe='')}" if server_name else f"{base}/server"


async def user_model(hub: HubRequest, user: str) -> Any:
    """The hub's model of one user with every server, stopped ones included, and their spawner
    state (the caller's token needs `admin:server_state` for the state)."""
    return await hub("GET", f"users/{quote(user, safe='')}?include_stopped_servers=1", None)


async def server_model(hub: HubRequest, user: str, server_name: str = "") -> dict | None:
    """The hub's model of one server (see :func:`user_model`)."""
    model = await user_model(hub, user)
    return (model.get("servers") or {}).get(server_name)


async def request_suspension(
    hub: HubRequest,
    core: CoreV1Api,
    user: str,
    server_name: str = "",
    reason: str = "requested",
    *,
    timeout: float = 600,
) -> dict:
    """Suspend a running server and wait until the hub has stopped it.

    Returns the server's model afterwards: its state says whether it was checkpointed
    (``state.jhub_suspend.checkpoint``) or why not (``state.jhub_suspend.last_error``). When
    the checkpoint failed, the server is running again when this returns.
    """
    server = await server_model(hub, user, server_name)
    if not server or not server.get("ready"):
        raise SuspensionError(409, f"server {user}/{server_name} is not running")
    state = read_state(server.get("state"))
    pod, namespace = state.pod_name, state.namespace
    if not pod or not namespace:
        raise SuspensionError(
            409, f"server {user}/{server_name} is not a SuspendingKubeSpawner server"
        )
    mark = {
        SUSPEND_REQUEST_ANNOTATION: reason,
        SUSPEND_REQUESTED_AT_ANNOTATION: rfc3339(datetime.datetime.now(datetime.UTC)),
    }
    patch = {"metadata": {"annotations": mark}}
    try:
        await core.patch_namespaced_pod(pod, namespace, patch)
    except ApiException as e:
        raise SuspensionError(
            404 if e.status == 404 else 502, f"cannot mark pod {namespace}/{pod}: {e.reason}"
        ) from e
    await hub("DELETE", server_path(user, server_name), None)

    async def stopped() -> dict | bool:
        s = await server_model(hub, user, server_name)
        if s is None or s.get("pending"):
            return False
        # Running again under a new start: the suspension failed and someone (the service's
        # repair) started it again before this saw it stopped.
        restarted = s.get("ready") and s.get("started") != server.get("started")
        return s if not s.get("ready") or restarted else False

    # A read every 2 s at most: the hub answers it in milliseconds, and the default (5 s)
    # made the suspension look seconds longer than it was.
    after = await exponential_backoff(
        stopped,
        f"server {user}/{server_name} did not stop within {timeout}s",
        timeout=timeout,
        max_wait=2,
    )
    if after.get("ready") or not kept_running(after):
        return after

    # The checkpoint failed and the spawner left the pod running, but JupyterHub ends a server
    # whenever stop() returns. Start it again at once: the spawner adopts the live pod (nothing
    # restarts), so the hub routes to it and the user keeps a running server.
    return await restart_kept_server(hub, user, server_name, timeout=timeout)


async def restart_kept_server(
    hub: HubRequest, user: str, server_name: str = "", *, timeout: float = 600
) -> dict:
    """Start a server whose pod was kept running after a failed suspension, and wait until the
    hub has it running again (the spawner adopts the pod). Returns its model."""
    await hub("POST", server_path(user, server_name), None)

    async def running_again() -> dict | bool:
        s = await server_model(hub, user, server_name)
        return s if s is not None and s.get("ready") else False

    return await exponential_backoff(
        running_again,
        f"server {user}/{server_name} was kept running but the hub did not take it back",
        timeout=timeout,
    )


def kept_running(server: dict) -> bool:
    """Whether a stopped server's suspension failed and its pod was left running."""
    state = read_state(server.get("state"))
    restorable = state.checkpoint is not None and state.checkpoint.restorable
    failed = state.last_error is not None and state.last_error.operation == "suspend"
    return failed and not restorable
