"""Stopping the demo: suspend every running server first, so that the next ``./demo`` restores
it on login.

The suspensions go through the suspend service's REST API with the hub's admin service token,
the same path an admin's ``jhub-suspend suspend`` takes: the spawner checkpoints the server, the
node agent pushes the checkpoint to the registry and the pod is deleted only once it is durable.
A server that cannot be suspended (in time) is reported, and stops with the demo as before.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from jupyterhub.utils import exponential_backoff
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from ..service.cli import server_label, server_path
from ..spawner import human_size

#: states (the service's) in which a server cannot be suspended now, but holds a pod
NOT_SUSPENDABLE = ("starting", "restoring", "stopping")
#: the statuses of an operation that is over
FINISHED = ("succeeded", "failed")


class StopError(Exception):
    """The service refused or did not answer; the message says which, for the user."""


@dataclass
class Outcome:
    server: str  # "alice", or "alice/lab" for a named server
    suspended: bool
    line: str  # what the user was told


def outcome_of(label: str, op: dict[str, Any], seconds: float) -> Outcome:
    """What a finished suspend operation means for the user (pure)."""
    if op.get("status") == "succeeded":
        size = ((op.get("result") or {}).get("checkpoint") or {}).get("size")
        what = f"{human_size(size)}, " if size else ""
        return Outcome(label, True, f"{label}: suspended ({what}{seconds:.1f} s)")
    message = op.get("message") or "the suspension failed"
    return Outcome(label, False, f"{label}: could not suspend: {message}; stopping it")


class ServiceClient:
    """The few calls of the suspend service's REST API that stopping needs."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/") + "/"
        self.token = token

    async def request(self, method: str, path: str) -> Any:
        req = HTTPRequest(
            self.url + path,
            method=method,
            headers={"Authorization": f"token {self.token}", "Accept": "application/json"},
            body=b"" if method == "POST" else None,
            request_timeout=60,
        )
        try:
            # An error status is an answer, not an exception: one that comes after a second
            # Ctrl-C cancelled the wait would be logged with its traceback.
            resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        except (OSError, HTTPClientError) as e:  # no answer: refused, timed out, cut off
            raise StopError(f"the suspend service did not answer ({e})") from None
        if resp.code >= 400:
            raise StopError(_refusal(resp))
        return json.loads(resp.body) if resp.body else None


def _refusal(resp: HTTPResponse) -> str:
    try:
        message = json.loads(resp.body)["message"]
    except (ValueError, KeyError, TypeError):
        message = ""
    return str(message or f"the suspend service answered {resp.code}")


async def suspend_all(
    service_url: str,
    token: str,
    *,
    concurrency: int,
    timeout: float,
    say: Callable[[str], None],
) -> list[Outcome]:
    """Suspend every running server, ``concurrency`` at a time, within ``timeout`` seconds in
    all, telling ``say`` about each. Servers not suspended by then are left as they are (the
    demo then stops them). Never raises for a server; cancelling it stops the waits."""
    client = ServiceClient(service_url, token)
    try:
        listing = await client.request("GET", "api/servers")
    except StopError as e:
        say(f"Could not list the running servers: {e}; stopping them.")
        return []
    servers = listing["servers"]
    for s in servers:
        if s["state"] in NOT_SUSPENDABLE:
            say(f"{server_label(s)}: {s['state']}, so it cannot be suspended now; stopping it")
    todo = [s for s in servers if s["state"] in ("running", "suspending")]
    if not todo:
        say("No running servers to suspend.")
        return []
    deadline = time.monotonic() + timeout
    limit = asyncio.Semaphore(concurrency)

    def too_late(label: str) -> Outcome:
        return Outcome(label, False, f"{label}: not suspended within {timeout:.0f} s; stopping it")

    async def one(server: dict[str, Any]) -> Outcome:
        label = server_label(server)
        async with limit:
            if time.monotonic() >= deadline:
                outcome = too_late(label)  # its turn came too late to start a suspension
            else:
                say(f"suspending {label}…")
                outcome = await _suspend(client, server, label, deadline, too_late)
        say(outcome.line)
        return outcome

    tasks = {asyncio.ensure_future(one(s)): server_label(s) for s in todo}
    try:
        # A little past the deadline, so that the suspensions under way say it themselves.
        await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()) + 1)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    outcomes = []
    for task, label in tasks.items():
        if task.cancelled():
            outcomes.append(too_late(label))
            say(outcomes[-1].line)
        else:
            outcomes.append(task.result())
    suspended = sum(o.suspended for o in outcomes)
    say(f"{suspended} of {len(todo)} server(s) suspended.")
    return outcomes


async def _suspend(
    client: ServiceClient,
    server: dict[str, Any],
    label: str,
    deadline: float,
    too_late: Callable[[str], Outcome],
) -> Outcome:
    started = time.monotonic()
    try:
        op = server.get("operation") if server["state"] == "suspending" else None
        if not op:
            op = await _start_suspension(client, server)
        op = await _finished(client, op, deadline - time.monotonic())
    except TimeoutError:
        return too_late(label)
    except Exception as e:  # one server's surprise must not keep the others from suspending
        message = str(e) if isinstance(e, StopError) else f"{type(e).__name__}: {e}"
        return Outcome(label, False, f"{label}: could not suspend: {message}; stopping it")
    return outcome_of(label, op, time.monotonic() - started)


async def _start_suspension(client: ServiceClient, server: dict[str, Any]) -> dict[str, Any]:
    """The operation suspending ``server``: a new one, or the one the policy started since
    the listing (the service then refuses a second one)."""
    user, name = quote(server["user"], safe=""), quote(server["server_name"], safe="")
    try:
        answer = await client.request("POST", f"{server_path(server_label(server))}/suspend")
        op: dict[str, Any] = answer["operation"]
        return op
    except StopError as refused:
        try:
            now = await client.request("GET", f"api/servers?user={user}&server={name}")
        except StopError:
            raise refused from None
        for s in now["servers"]:
            if s["state"] == "suspending" and s.get("operation"):
                ongoing: dict[str, Any] = s["operation"]
                return ongoing
        raise


async def _finished(client: ServiceClient, op: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The operation once it is no longer running (raises TimeoutError after ``timeout``)."""
    path = f"api/operations/{quote(op['id'], safe='')}"

    async def done() -> dict[str, Any] | bool:
        nonlocal op
        if op.get("status") not in FINISHED:
            op = await client.request("GET", path)
        return op if op.get("status") in FINISHED else False

    result: dict[str, Any] = await exponential_backoff(
        done, "the suspension did not finish", timeout=max(timeout, 0.1), max_wait=2
    )
    return result
