"""``python -m jhub_suspend.demo``: JupyterHub with jhub-suspend on a local test cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import Sequence
from pathlib import Path

from traitlets import Float, Integer, Unicode, default, validate
from traitlets.config import Application

from ..localcluster import services
from ..localcluster.cluster import LocalCluster
from .hub import Hub, start_hub
from .stop import suspend_all

#: the ports kept from one run of the demo to the next (see :func:`kept_ports`)
PORTS_FILE = "ports.json"
KEPT_PORTS = ("registry", "hub")


def kept_ports(state_dir: str, names: Sequence[str] = KEPT_PORTS) -> dict[str, int]:
    """The ports that stay the same from one run of the demo to the next, kept in the state
    directory's ports.json and picked free on the first run: a checkpoint names its registry
    (and its notebook image) by host and port, and a restored server calls the hub at the
    address it was started with."""
    path = Path(state_dir, PORTS_FILE)
    try:
        kept = json.loads(path.read_text())
    except FileNotFoundError:
        kept = {}
    except ValueError:
        kept = {}  # a torn write: the servers suspended before it start fresh
    if not isinstance(kept, dict):
        kept = {}
    ports: dict[str, int] = {}
    for name in names:
        port = kept.get(name)
        if not (isinstance(port, int) and 0 < port < 65536):
            port = services.free_port()
            while port in ports.values():  # the kernel may hand out a just-closed port again
                port = services.free_port()
        ports[name] = port
    if ports != {name: kept.get(name) for name in names}:
        os.makedirs(state_dir, exist_ok=True)
        tmp = path.with_name(f".{PORTS_FILE}.tmp")
        tmp.write_text(json.dumps({**kept, **ports}, indent=2) + "\n")
        os.replace(tmp, path)
    return ports


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class Demo(Application):
    """Start the local cluster and a JupyterHub on it, print where to log in, run until Ctrl-C."""

    name = "jhub-suspend-demo"
    description = __doc__
    classes = [LocalCluster]  # noqa: RUF012 (traitlets declares these as instance variables)
    aliases = {"port": "Demo.port", "state-dir": "Demo.state_dir"}  # noqa: RUF012

    port = Integer(8000, help="Port on 127.0.0.1 where the hub answers.").tag(config=True)
    state_dir = Unicode(help="Where the demo keeps the cluster's and the hub's state.").tag(
        config=True
    )

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return os.environ.get("JHUB_SUSPEND_STATE", "/var/lib/jhub-suspend/demo")

    @validate("state_dir")
    def _validate_state_dir(self, proposal: dict) -> str:
        return os.path.abspath(proposal["value"])

    stop_concurrency = Integer(
        2,
        help="""How many servers are suspended at once when the demo stops (Ctrl-C). Each
        suspension checkpoints its server and pushes the checkpoint to the registry.""",
    ).tag(config=True)

    @validate("stop_concurrency")
    def _validate_stop_concurrency(self, proposal: dict) -> int:
        if proposal["value"] < 1:
            raise ValueError("stop_concurrency must be at least 1")
        return int(proposal["value"])

    stop_timeout = Float(
        300,
        help="""Seconds the suspensions may take in all when the demo stops. Servers not
        suspended by then are stopped (their kernels end), as is any server whose suspension
        failed; a server keeps its earlier checkpoint, if it has one.""",
    ).tag(config=True)

    user_password = Unicode(
        "jhub-suspend", help="Password of the demo users (any name but admin logs in with it)."
    ).tag(config=True)
    admin_password = Unicode(
        "jhub-suspend-admin-demo-password",
        help="Password of the `admin` user (JupyterHub asks for 32 characters or more).",
    ).tag(config=True)

    def start(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        ports = kept_ports(self.state_dir)
        for name, port in ports.items():
            if port_taken(port):
                raise SystemExit(
                    f"Port {port}, which the demo keeps for its {name} (in "
                    f"{os.path.join(self.state_dir, PORTS_FILE)}), is in use. Stop what uses it; "
                    "or delete that file, and suspended servers then start afresh."
                )
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None
        ready = False
        signals = 0
        stop, at_once = asyncio.Event(), asyncio.Event()

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if not ready:
                if signals == 1:
                    main.cancel()  # nothing runs yet that could be suspended
            elif signals == 1:
                stop.set()
            else:
                at_once.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        cluster = LocalCluster(
            parent=self,
            state_dir=os.path.join(self.state_dir, "cluster"),
            registry_port=ports["registry"],
        )
        cluster.initialize([])
        try:
            await cluster.up()
            try:
                hub = await self._start_hub(cluster, ports["hub"])
                ready = True
                await stop.wait()
                await self._suspend_all(hub, at_once)
            finally:
                print("Stopping the hub and the cluster…", flush=True)
                await services.PROCESSES.stop_all()
                await cluster.down()
        except asyncio.CancelledError:
            if not signals:
                raise
            print("Stopped before the demo was ready.", flush=True)

    async def _start_hub(self, cluster: LocalCluster, hub_port: int) -> Hub:
        hub = await start_hub(
            cluster.describe(),
            os.path.join(self.state_dir, "hub"),
            port=self.port,
            hub_port=hub_port,
            user_password=self.user_password,
            admin_password=self.admin_password,
        )
        # The admin page's charts of reclaimed capacity and suspensions come from the service's
        # own metrics, through Prometheus.
        await cluster.add_scrape_job(
            {
                "job": "jhub-suspend-service",
                "targets": [hub.url.split("://", 1)[1]],
                "metrics_path": "/services/suspend/metrics",
            }
        )
        print(
            f"\njhub-suspend demo is running at {hub.url}/\n"
            f"  users: any name (e.g. alice, bob), password {self.user_password}\n"
            f"  admin: admin, password {self.admin_password}\n"
            f"  Prometheus: {cluster.prometheus_url}   registry: {cluster.registry_host}\n"
            "Press Ctrl-C to stop: it suspends every running server, and the next ./demo "
            "brings them back on login.\n",
            flush=True,
        )
        return hub

    async def _suspend_all(self, hub: Hub, at_once: asyncio.Event) -> None:
        """Suspend every running server through the suspend service; a second signal
        (``at_once``) stops waiting for them."""
        print(
            "\nSuspending every running server, so that the next ./demo restores it on login. "
            "Press Ctrl-C again to stop at once (the kernels of servers not yet suspended end).",
            flush=True,
        )
        work = asyncio.ensure_future(
            suspend_all(
                hub.service_url,
                hub.service_token,
                concurrency=self.stop_concurrency,
                timeout=self.stop_timeout,
                say=lambda line: print(line, flush=True),
            )
        )
        hurry = asyncio.ensure_future(at_once.wait())
        try:
            await asyncio.wait({work, hurry}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
        if work.done():
            if error := work.exception():
                print(f"Could not suspend the servers: {error}; stopping them.", flush=True)
            return
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        print("Stopping at once: servers not yet suspended are stopped.", flush=True)


main = Demo.launch_instance
