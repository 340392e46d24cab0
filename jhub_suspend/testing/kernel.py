"""Run code in a Jupyter kernel through a single-user server's own REST and websocket API.

This is what a notebook front end does: create (or find) a kernel with ``POST api/kernels``,
then send ``execute_request`` messages on the kernel's websocket and collect the output.
"""

from __future__ import annotations

import datetime
import json
import uuid
from dataclasses import dataclass

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect


class KernelError(Exception):
    """The code raised in the kernel, or the kernel did not answer."""


@dataclass
class KernelClient:
    """A client for one kernel of one server, e.g. ``http://127.0.0.1:8000/user/alice/``."""

    server_url: str
    token: str
    kernel_id: str | None = None
    timeout: float = 30

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    async def _api(self, method: str, path: str, body: dict | None = None) -> dict | list:
        req = HTTPRequest(
            self.server_url.rstrip("/") + "/api/" + path,
            method=method,
            headers={**self._headers(), "Content-Type": "application/json"},
            body=json.dumps(body) if body is not None else None,
            request_timeout=self.timeout,
        )
        resp = await AsyncHTTPClient().fetch(req)
        return json.loads(resp.body or b"null")

    async def kernels(self) -> list[dict]:
        result = await self._api("GET", "kernels")
        assert isinstance(result, list)
        return result

    async def start(self, name: str = "python3") -> str:
        """Start a kernel and remember it."""
        kernel = await self._api("POST", "kernels", {"name": name})
        assert isinstance(kernel, dict)
        self.kernel_id = kernel["id"]
        return kernel["id"]

    async def execute(self, code: str, store_history: bool = True) -> str:
        """Run ``code`` in the kernel and return what it printed (stdout and results).

        With ``store_history=False`` the kernel does not write the cell to its history
        database, which a probe must not do on a server whose checkpoint is to be restored:
        the restored kernel would write the same history line again.
        """
        if not self.kernel_id:
            raise KernelError("no kernel: call start() first or pass kernel_id")
        ws_url = self.server_url.replace("http", "ws", 1).rstrip("/")
        conn = await websocket_connect(
            HTTPRequest(
                f"{ws_url}/api/kernels/{self.kernel_id}/channels?session_id={uuid.uuid4()}",
                headers=self._headers(),
                request_timeout=self.timeout,
            )
        )
        try:
            return await self._run(conn, code, store_history)
        finally:
            conn.close()

    async def _run(self, conn, code: str, store_history: bool) -> str:
        import asyncio

        msg_id = uuid.uuid4().hex
        conn.write_message(json.dumps(_execute_request(msg_id, code, store_history)))
        out: list[str] = []
        done_reply = done_idle = False
        async with asyncio.timeout(self.timeout):
            while not (done_reply and done_idle):
                raw = await conn.read_message()
                if raw is None:
                    raise KernelError("the kernel's websocket closed before the reply")
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    out.append(content["text"])
                elif kind in ("execute_result", "display_data"):
                    out.append(content["data"].get("text/plain", "") + "\n")
                elif kind == "error":
                    raise KernelError(f"{content['ename']}: {content['evalue']}")
                elif kind == "execute_reply":
                    done_reply = True
                elif kind == "status" and content.get("execution_state") == "idle":
                    done_idle = True
        return "".join(out)


def _execute_request(msg_id: str, code: str, store_history: bool) -> dict:
    return {
        "header": {
            "msg_id": msg_id,
            "username": "jhub-suspend-test",
            "session": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "version": "5.3",
            "date": datetime.datetime.now(datetime.UTC).isoformat(),
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": store_history,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
        "buffers": [],
    }
