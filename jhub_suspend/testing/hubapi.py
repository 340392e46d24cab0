"""A small client for the JupyterHub REST API, for tests and the demo's self-check."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jupyterhub.utils import exponential_backoff
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


@dataclass
class HubAPI:
    api_url: str  # e.g. http://127.0.0.1:8000/hub/api
    token: str

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        req = HTTPRequest(
            f"{self.api_url}/{path.lstrip('/')}",
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            body=json.dumps(body)
            if body is not None
            else (b"" if method in ("POST", "PUT") else None),
            allow_nonstandard_methods=True,
            request_timeout=60,
        )
        resp = await AsyncHTTPClient().fetch(req)
        return json.loads(resp.body) if resp.body else None

    async def ensure_user(self, name: str) -> dict:
        try:
            return await self.request("POST", f"users/{name}")
        except HTTPClientError as e:
            if e.code != 409:
                raise
            return await self.request("GET", f"users/{name}")

    async def server(self, user: str, server_name: str = "") -> dict | None:
        model = await self.request("GET", f"users/{user}")
        return (model.get("servers") or {}).get(server_name)

    async def start_server(self, user: str, server_name: str = "", timeout: float = 180) -> dict:
        """Start a server and wait until the hub says it is ready."""
        path = f"users/{user}/servers/{server_name}" if server_name else f"users/{user}/server"
        await self.request("POST", path)

        async def ready() -> dict | bool:
            s = await self.server(user, server_name)
            return s if s and s.get("ready") else False

        return await exponential_backoff(
            ready, f"server {user}/{server_name} did not become ready", timeout=timeout
        )

    async def stop_server(self, user: str, server_name: str = "", timeout: float = 120) -> None:
        path = f"users/{user}/servers/{server_name}" if server_name else f"users/{user}/server"
        await self.request("DELETE", path)

        async def stopped() -> bool:
            return await self.server(user, server_name) is None

        await exponential_backoff(
            stopped, f"server {user}/{server_name} did not stop", timeout=timeout
        )

    async def stop_all_servers(self) -> None:
        """Stop every server that is running or starting, as a test's cleanup."""
        for user in await self.request("GET", "users"):
            for name, server in (user.get("servers") or {}).items():
                if server.get("ready") or server.get("pending"):
                    await self.stop_server(user["name"], name)
