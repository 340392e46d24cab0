"""Benchmark: many notebook servers suspended and resumed at once (issue 10, load).

Through the real hub, the suspend service, the node agents, containerd with CRIU and the
registry on the local cluster, for N users:

1. every user's server is started, with a kernel holding a value of its own;
2. the service is asked to suspend all of them at once (its REST API, as an admin does); each
   suspension is timed from the request until the hub has the server suspended;
3. all of them are started again at once (the hub's REST API, as users logging in do); each
   resume is timed from the request until the server is ready;
4. every kernel is asked for its value: no state may be lost.

The agents' own limit (``--NodeAgent.max_concurrent_checkpoints``, 1 per node) is the
concurrency of checkpoints; suspensions queue behind it. The pods are small (the notebook
image with an empty kernel, 0.01 CPU and 128 MB requested) so that the machine holds them.

Results: ``benchmarks/results/load.{json,md}`` — throughput, latency percentiles, failures
(there must be none). Timings are never asserted; ``tests/test_load.py`` runs a small version
and checks that no operation failed and no state was lost.

    .venv/bin/python benchmarks/load.py [--servers 100] [--nodes 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from jhub_suspend.suspension import server_model
from jhub_suspend.testing.hubapi import HubAPI
from jhub_suspend.testing.kernel import KernelClient
from jhub_suspend.testing.waiting import wait_for

RESULTS = Path(__file__).parent / "results"
# Small pods: what the hub asks for each server, so that a hundred fit on the local nodes.
HUB_CONFIG = """
c.KubeSpawner.cpu_guarantee = 0.01
c.KubeSpawner.mem_guarantee = "128M"
c.KubeSpawner.storage_pvc_ensure = False
c.KubeSpawner.volumes = []
c.KubeSpawner.volume_mounts = []
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
c.SuspendingKubeSpawner.checkpoint_timeout = 900
c.SuspendingKubeSpawner.start_timeout = 900
"""
# Requests in flight at once from this client (tornado's own client queues more).
REQUESTS_AT_ONCE = 8
# The service's policy must not act on its own while the load runs.
SERVICE_CONFIG = "c.SuspendService.dry_run = True\nc.SuspendService.suspend_timeout = 1800\n"


@dataclass
class Phase:
    """One phase over every server: when each finished, and which failed (and why)."""

    name: str
    started: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    wall: float = 0.0
    #: answers to this benchmark's own polling that were errors, by status
    poll_errors: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        times = sorted(self.seconds.values())
        done = len(times)
        return {
            "done": done,
            "failed": len(self.failures),
            "failures": self.failures,
            "wall_s": round(self.wall, 2),
            "throughput_per_min": round(60 * done / self.wall, 1) if self.wall else None,
            "latency_s": percentiles(times),
            "poll_errors": self.poll_errors,
        }


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max of sorted ``values`` (nearest rank)."""
    if not values:
        return {}

    def rank(p: float) -> float:
        return round(values[min(len(values) - 1, max(0, round(p * len(values)) - 1))], 2)

    return {
        "p50": rank(0.5),
        "p90": rank(0.9),
        "p99": rank(0.99),
        "max": round(values[-1], 2),
        "mean": round(statistics.fmean(values), 2),
    }


async def bounded(limit: int, jobs: Iterable[Callable[[], Awaitable[None]]]) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


def value_of(user: str) -> str:
    return f"state of {user}"


async def prepare(hub, api: HubAPI, users: list[str], concurrency: int) -> dict[str, KernelClient]:
    """Start every user's server, each with a kernel that holds its own value."""
    kernels: dict[str, KernelClient] = {}

    async def start(user: str) -> None:
        await api.ensure_user(user)
        await api.start_server(user, timeout=900)
        kernel = KernelClient(f"{hub.url}/user/{user}/", hub.service_token, timeout=120)
        await kernel.start()
        # No history: IPython's history thread may warn on stderr after a restore.
        await kernel.execute(f"v = {value_of(user)!r}", store_history=False)
        kernels[user] = kernel

    await bounded(concurrency, [lambda u=u: start(u) for u in users])
    return kernels


async def _service(hub, method: str, path: str) -> tuple[int, Any]:
    resp = await AsyncHTTPClient().fetch(
        HTTPRequest(
            hub.service_url + path,
            method=method,
            body=b"" if method == "POST" else None,
            headers={"Authorization": f"token {hub.service_token}"},
            request_timeout=600,
        ),
        raise_error=False,
    )
    if not resp.body:
        return resp.code, None
    try:
        return resp.code, json.loads(resp.body)
    except ValueError:  # a proxy's error page
        return resp.code, resp.body.decode(errors="replace")


async def _watch(phase: Phase, users: list[str], settled, timeout: float) -> None:
    """Poll every server until ``await settled(user)`` says done (True) or failed (a message);
    record when."""
    waiting = set(users)

    async def check(user: str) -> None:
        try:
            outcome = await settled(user)
        except HTTPClientError as e:
            # The hub under this load sometimes answers a read with 403 or 5xx (why was not
            # established); the server's state is read again next round.
            phase.poll_errors[f"{e.code}"] = phase.poll_errors.get(f"{e.code}", 0) + 1
            return
        if outcome is True:
            phase.seconds[user] = time.monotonic() - phase.started
        elif isinstance(outcome, str):
            phase.failures[user] = outcome
        else:
            return
        waiting.discard(user)

    async def all_settled() -> bool:
        await bounded(16, [lambda u=u: check(u) for u in list(waiting)])
        return not waiting

    try:
        await wait_for(all_settled, f"{phase.name}: servers never settled", timeout)
    except TimeoutError:
        for user in waiting:
            phase.failures[user] = f"not settled within {timeout:.0f} s"
    phase.wall = time.monotonic() - phase.started


def _record(model: dict[str, Any]) -> dict[str, Any]:
    return ((model.get("state") or {}).get("jhub_suspend")) or {}


def suspended(model: dict[str, Any]) -> bool | str | None:
    if model.get("pending") or model.get("ready"):
        return None
    record = _record(model)
    if (record.get("checkpoint") or {}).get("status") == "suspended":
        return True
    error = record.get("last_error") or {}
    return error.get("message") or "stopped without a checkpoint"


def resumed(model: dict[str, Any]) -> bool | str | None:
    if model.get("ready"):
        return True
    if model.get("pending"):
        return None
    return (_record(model).get("last_error") or {}).get("message") or "did not start"


async def suspend_all(hub, api: HubAPI, users: list[str], timeout: float) -> Phase:
    """Ask the service to suspend every server; each is done when its operation has finished
    and the hub has the server suspended (a failed suspension leaves it running, and fails)."""
    phase = Phase("suspend", started=time.monotonic())
    # All asked for at once, a few connections at a time (as many admins' clicks would).
    gate = asyncio.Semaphore(REQUESTS_AT_ONCE)

    async def ask(user: str) -> tuple[int, Any]:
        async with gate:
            return await _service(hub, "POST", f"api/servers/{user}/suspend")

    answers = await asyncio.gather(*(ask(u) for u in users))
    operations = {}
    for user, (code, body) in zip(users, answers, strict=True):
        if code == 202:
            operations[user] = body["operation"]["id"]
        else:
            phase.failures[user] = f"the service answered {code}: {body}"

    async def finished(user: str) -> bool | str | None:
        code, op = await _service(hub, "GET", f"api/operations/{operations[user]}")
        if code == 404:
            return f"its operation is gone ({code}: {op})"
        if code != 200:  # a proxy or the service under load: _watch counts it, reads again
            raise HTTPClientError(code)
        if op["status"] == "running":
            return None
        if op["status"] != "succeeded":
            return op["message"] or op["status"]
        return suspended(await server_model(api.request, user) or {})

    await _watch(phase, list(operations), finished, timeout)
    return phase


async def resume_all(api: HubAPI, users: list[str], timeout: float) -> Phase:
    phase = Phase("resume", started=time.monotonic())
    gate = asyncio.Semaphore(REQUESTS_AT_ONCE)

    async def start(user: str) -> Any:
        async with gate:
            return await api.request("POST", f"users/{user}/server")

    answers = await asyncio.gather(*(start(u) for u in users), return_exceptions=True)
    asked = []
    for user, answer in zip(users, answers, strict=True):
        if isinstance(answer, BaseException):
            phase.failures[user] = f"the hub refused the start: {answer}"
        else:
            asked.append(user)

    async def settled(user: str) -> bool | str | None:
        return resumed(await server_model(api.request, user) or {})

    await _watch(phase, asked, settled, timeout)
    return phase


async def lost_state(kernels: dict[str, KernelClient], concurrency: int) -> dict[str, str]:
    """Users whose kernel did not answer with its value: what it said instead, or, prefixed
    "unreachable:", why it could not be asked."""
    lost: dict[str, str] = {}

    async def ask(user: str) -> None:
        try:
            answer = await kernels[user].execute("print(v)", store_history=False)
        except Exception as e:
            lost[user] = f"unreachable: {type(e).__name__}: {e}"
            return
        if answer != value_of(user) + "\n":
            lost[user] = f"answered {answer!r}"

    await bounded(concurrency, [lambda u=u: ask(u) for u in kernels])
    return lost


async def run_load(hub, users: list[str], *, concurrency: int = 8, timeout: float = 1800) -> dict:
    """The whole run against a hub (``jhub_suspend.demo.hub.Hub``); returns the results."""
    api = HubAPI(hub.api_url, hub.service_token)
    t0 = time.monotonic()
    kernels = await prepare(hub, api, users, concurrency)
    started = time.monotonic() - t0
    suspend = await suspend_all(hub, api, users, timeout)
    resume = await resume_all(api, [u for u in users if u in suspend.seconds], timeout)
    lost = await lost_state(kernels, concurrency)
    return {
        "servers": len(users),
        "start_all_s": round(started, 1),
        "suspend": suspend.summary(),
        "resume": resume.summary(),
        "state_lost": lost,
    }


# ---- the benchmark ----------------------------------------------------------------------------


def write_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Load: suspending and resuming many servers at once",
        "",
        f"Measured {result['date']} on {result['machine']} with `benchmarks/load.py`: "
        f"{result['servers']} servers on {result['nodes']} nodes of the local cluster "
        "(real JupyterHub, suspend service, node agents, containerd, CRIU, registry), one "
        "checkpoint at a time per node (the agents' default). Times in seconds, from the "
        "request until the hub has the server suspended, or ready.",
        "",
        "| phase | done | failed | wall | per minute | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("suspend", "resume"):
        p = result[name]
        lat = p["latency_s"]
        lines.append(
            f"| {name} | {p['done']} | {p['failed']} | {p['wall_s']} | "
            f"{p['throughput_per_min']} | {lat.get('p50')} | {lat.get('p90')} | "
            f"{lat.get('p99')} | {lat.get('max')} |"
        )
    lost = result["state_lost"]
    unreachable = sum(why.startswith("unreachable:") for why in lost.values())
    lines += [
        "",
        f"Starting the {result['servers']} servers with their kernels took "
        f"{result['start_all_s']} s. Kernels that did not answer with their value: "
        f"{len(lost)} ({unreachable} could not be asked at all).",
    ]
    for phase in ("suspend", "resume"):
        errors = result[phase].get("poll_errors") or {}
        if errors:
            lines.append(
                f"- While the {phase} ran, the hub answered "
                + ", ".join(
                    f"{n} of this benchmark's status reads with {code}"
                    for code, n in errors.items()
                )
                + "; each server was read again the next round."
            )
        for user, why in result[phase]["failures"].items():
            lines.append(f"- {phase} of {user} failed: {why}")
    for user, why in lost.items():
        lines.append(f"- {user} lost its state: {why}")
    if result.get("notes"):
        lines += ["", "## Notes", "", *result["notes"]]
    return "\n".join(lines) + "\n"


async def main() -> None:
    from jhub_suspend.demo.hub import running_hub
    from jhub_suspend.localcluster.cluster import LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jhub-suspend-load-") as state:
        lc = LocalCluster(
            state_dir=state,
            bridge=f"jhsl{os.getpid() % 1000}",
            pod_cidr="10.97.0.0/24",
            nodes=[
                {"name": f"node-{i}", "cpu": "64", "memory": "256Gi"}
                for i in range(1, args.nodes + 1)
            ],
        )
        lc.initialize([])
        await lc.up()
        try:
            os.makedirs(os.path.join(state, "hub"))
            async with running_hub(
                lc.describe(),
                os.path.join(state, "hub"),
                extra_config=HUB_CONFIG,
                service_config=SERVICE_CONFIG,
            ) as hub:
                users = [f"load{i:03d}" for i in range(args.servers)]
                result = await run_load(hub, users)
        finally:
            await lc.down()
    result.update(
        date=time.strftime("%Y-%m-%d"),
        machine=f"{platform.machine()}, {os.cpu_count()} cores",
        nodes=args.nodes,
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "load.md").write_text(write_markdown(result))
    print(write_markdown(result))


if __name__ == "__main__":
    asyncio.run(main())
