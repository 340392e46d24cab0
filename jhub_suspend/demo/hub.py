"""Start a real JupyterHub (with its real configurable-http-proxy) on the local cluster."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

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

    async def stop(self) -> None:
        await self.process.stop()

    async def crash_and_restart(self, timeout: float = 60) -> None:
        """Kill the hub at once (no cleanup, as a crash would) and start it again on the same
        database, ports and configuration."""
        old = self.process
        old.kill_now()
        await old.stop(grace=0)
        self.process = services.ManagedProcess(
            old.name,
            old.argv,
            log_path=old.log_path,
            env=old.env,
            cwd=old.cwd,
            url=old.url,
            ready_url=old.ready_url,
            group=old.group,
        )
        await self.process.start()
        await self.process.wait_ready(timeout=timeout)


async def start_hub(
    cluster: dict,
    state_dir: str,
    *,
    port: int = 0,
    extra_config: str = "",
    spawner: str = "suspending-kubespawner",
    user_password: str | None = None,
    admin_password: str | None = None,
    group: services.ProcessGroup | None = services.PROCESSES,
    timeout: float = 60,
) -> Hub:
    """Start JupyterHub with the demo configuration plus ``extra_config`` (Python config text)."""
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
        "JHUB_SUSPEND_HUB_PORT": str(services.free_port()),
        "JHUB_SUSPEND_PROXY_API_URL": f"http://127.0.0.1:{services.free_port()}",
        "JHUB_SUSPEND_SERVICE_TOKEN": token,
        "JHUB_SUSPEND_USER_PASSWORD": user_password,
        "JHUB_SUSPEND_ADMIN_PASSWORD": admin_password,
        "JHUB_SUSPEND_SPAWNER": spawner,
        # Secrets in the spawner's state (the checkpoint's image reference) are encrypted.
        "JUPYTERHUB_CRYPT_KEY": os.environ.get("JUPYTERHUB_CRYPT_KEY") or secrets.token_hex(32),
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}",
    }
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
    return Hub(process, url, f"{url}/hub/api", token, user_password, admin_password, state_dir)
