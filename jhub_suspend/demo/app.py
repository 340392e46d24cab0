"""``python -m jhub_suspend.demo``: JupyterHub with jhub-suspend on a local test cluster."""

from __future__ import annotations

import asyncio
import os
import signal

from traitlets import Integer, Unicode, default
from traitlets.config import Application

from ..localcluster import services
from ..localcluster.cluster import LocalCluster
from .hub import start_hub


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
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        cluster = LocalCluster(parent=self, state_dir=os.path.join(self.state_dir, "cluster"))
        cluster.initialize([])
        await cluster.up()
        try:
            hub = await start_hub(
                cluster.describe(),
                os.path.join(self.state_dir, "hub"),
                port=self.port,
                user_password=self.user_password,
                admin_password=self.admin_password,
            )
            # The admin page's charts of reclaimed capacity and suspensions come from the
            # service's own metrics, through Prometheus.
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
                "Press Ctrl-C to stop.\n",
                flush=True,
            )
            await stop.wait()
        finally:
            await services.PROCESSES.stop_all()
            await cluster.down()


main = Demo.launch_instance
