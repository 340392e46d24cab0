"""Start a real JupyterHub (with its real configurable-http-proxy) on the local cluster."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..localcluster import services

BASE_CONFIG = Path(__file__).with_name("jupyterhub_config.py")


@dataclass
class Hub:
    """A running hub: its process, where it answers, and the secrets its users and tests need."""

    process: services.ManagedProcess
    url: str
    api_url: str
    service_token: str
    user_password: str
    admin_password: str
    state_dir: str
    service_url: str = ""  # the suspend service, e.g. http://127.0.0.1:8000/services/suspend/

    async def stop(self) -> None:
        await self.process.stop()

    async def crash_and_restart(self, timeout: float = 60) -> None:
        """Kill the hub at once (no cleanup, as a crash would) and start it again on the same
        database, ports and configuration."""
        old = self.process
        # The hub's managed services (the suspend service) run in their own sessions but in the
        # hub's container on a real cluster, so they die with it; the proxy is another pod.
        services_of_hub = [pid for pid in _children(old.pid) if pid != self._proxy_pid()]
        old.kill_now()
        await old.stop(grace=0)
        for pid in services_of_hub:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.gather(*(_reap_when_dead(pid) for pid in services_of_hub))
        # The proxy runs in its own session and outlives the hub, as it should; the new hub
        # stops it through its pid file. Its parent is gone, so it is reparented to this
        # process when this process runs pods (a child subreaper), and must be reaped here,
        # or its zombie looks alive and the new hub refuses to start.
        reaper = asyncio.ensure_future(_reap_when_dead(self._proxy_pid()))
        self.process = old.respawn()
        await self.process.start()
        try:
            await self.process.wait_ready(timeout=timeout)
        finally:
            reaper.cancel()

    def _proxy_pid(self) -> int | None:
        try:
            with open(os.path.join(self.state_dir, "jupyterhub-proxy.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None


def _children(pid: int | None) -> list[int]:
    if pid is None:
        return []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


async def _reap_when_dead(pid: int | None) -> None:
    """Reap ``pid`` once it has died, if it is our (reparented) child."""
    if pid is None:
        return
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG never blocks
        except ChildProcessError:
            return  # not ours: its own parent reaps it
        if done:
            return
        await asyncio.sleep(0.05)  # a pid gives no event to wait on


@contextlib.asynccontextmanager
async def running_hub(cluster: dict, state_dir: str, **options: Any) -> AsyncIterator[Hub]:
    """:func:`start_hub` for the length of an ``async with`` block, stopped at its end."""
    hub = await start_hub(cluster, state_dir, **options)
    try:
        yield hub
    finally:
        await hub.stop()


CRYPT_KEY_FILE = "jupyterhub_crypt_key"


def crypt_key(state_dir: str) -> str:
    """The hub's crypt key, kept in its state directory (mode 0600) as the cookie secret is:
    made on the first start, read on the next ones."""
    path = Path(state_dir, CRYPT_KEY_FILE)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


async def start_hub(
    cluster: dict,
    state_dir: str,
    *,
    port: int = 0,
    hub_port: int = 0,
    extra_config: str = "",
    service_config: str = "",
    spawner: str = "suspending-kubespawner",
    user_password: str | None = None,
    admin_password: str | None = None,
    group: services.ProcessGroup | None = services.PROCESSES,
    timeout: float = 60,
) -> Hub:
    """Start JupyterHub with the demo configuration plus ``extra_config`` (Python config text).

    ``service_config`` is Python config text for the jhub-suspend service
    (``c.SuspendService.*``), written to a file the service loads. ``hub_port`` is where pods
    reach the hub (0: a free port); a restored server calls the hub at the address it was
    first started with, so a hub that restores servers across its restarts keeps it.
    """
    os.makedirs(state_dir, exist_ok=True)
    config = Path(state_dir, "jupyterhub_config.py")
    config.write_text(f"load_subconfig({str(BASE_CONFIG)!r})\n{extra_config}\n")
    token = secrets.token_hex(32)
    user_password = user_password or secrets.token_urlsafe(12)
    admin_password = admin_password or secrets.token_urlsafe(32)
    public_port = port or services.free_port()
    env = {
        **os.environ,
        "JHUB_SUSPEND_CLUSTER": os.path.join(
            os.path.dirname(cluster["kubeconfig"]), "cluster.json"
        ),
        "JHUB_SUSPEND_HUB_STATE": state_dir,
        # kubernetes_asyncio reads KUBECONFIG once, when it is first imported.
        "KUBECONFIG": cluster["kubeconfig"],
        "JHUB_SUSPEND_HUB_URL": f"http://127.0.0.1:{public_port}",
        "JHUB_SUSPEND_HUB_PORT": str(hub_port or services.free_port()),
        "JHUB_SUSPEND_PROXY_API_URL": f"http://127.0.0.1:{services.free_port()}",
        "JHUB_SUSPEND_SERVICE_TOKEN": token,
        "JHUB_SUSPEND_USER_PASSWORD": user_password,
        "JHUB_SUSPEND_ADMIN_PASSWORD": admin_password,
        "JHUB_SUSPEND_SPAWNER": spawner,
        # Secrets in the spawner's state (the checkpoint's image reference) are encrypted
        # with a key kept beside the hub's database, so a suspended server survives a restart.
        "JUPYTERHUB_CRYPT_KEY": os.environ.get("JUPYTERHUB_CRYPT_KEY") or crypt_key(state_dir),
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}",
        "JHUB_SUSPEND_SERVICE_PORT": str(services.free_port()),
    }
    if service_config:
        service_config_path = Path(state_dir, "suspend_service_config.py")
        service_config_path.write_text(service_config + "\n")
        env["JHUB_SUSPEND_SERVICE_CONFIG"] = str(service_config_path)
    url = f"http://127.0.0.1:{public_port}"
    process = services.ManagedProcess(
        "jupyterhub",
        [sys.executable, "-m", "jupyterhub", "-f", str(config)],
        log_path=os.path.join(state_dir, "jupyterhub.log"),
        env=env,
        cwd=state_dir,
        url=url,
        ready_url=f"{url}/hub/api",
        group=group,
    )
    await process.start()
    try:
        await process.wait_ready(timeout=timeout)
    except BaseException:
        await process.stop()
        raise
    return Hub(
        process,
        url,
        f"{url}/hub/api",
        token,
        user_password,
        admin_password,
        state_dir,
        f"{url}/services/suspend/",
    )
