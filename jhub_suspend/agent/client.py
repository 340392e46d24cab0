"""The spawner's client for a node agent.

Retry policy. A checkpoint is not idempotent: each one runs CRIU and pushes an image, and a
second dump racing the first would fail or leave an orphaned image. So a request is retried
(with jittered exponential backoff, under a cap on the total time) only when it certainly
never reached the agent:

- the connection could not be made (refused, reset while connecting, DNS, connect timeout),
  and only for ``reconnect_timeout``: a refused connection means nothing has started, so the
  caller learns at once that the agent is down rather than after the checkpoint's timeout;
- a 502 or 503 came back *without* the agent's ``X-JHub-Suspend-Agent`` header, i.e. from a
  proxy or load balancer that had no agent to forward to.

Never retried: any answer from the agent itself (its 503 means the registry is unreachable and
the checkpoint already ran and was cleaned up), a timeout after the request was sent, and a
connection that closed mid-request; for those the agent may still be working, and the caller
gets an :class:`AgentError` with status 0 saying the outcome is unknown. A later request for
the same pod while the first still runs is answered 409 by the agent.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from ..errors import NO_ANSWER, JhubSuspendError
from ..gpu import AgentGpuReport
from ..retry import with_retries
from .protocol import AGENT_HEADER, CheckpointResult

__all__ = ["AgentClient", "AgentError", "CheckpointResult"]

log = logging.getLogger(__name__)


class AgentError(JhubSuspendError):
    """A node agent call failed. ``status`` is the agent's HTTP status, or ``NO_ANSWER`` (0)
    when there was no answer (unreachable, or timed out with the outcome unknown)."""


#: requests to node agents one process may have open at once (one per suspension in flight)
MAX_OPEN_REQUESTS = 1000


class AgentHTTPClient(SimpleAsyncHTTPClient):
    """The process's one HTTP client for node agents (one per event loop, as tornado's own).

    Not tornado's shared client: that one opens 10 connections at a time and queues the rest,
    and a queued request fails after its *connect* timeout. A hub suspending more than 10
    servers at once (a drain, the policy after a quiet night) had the 11th fail with "Timeout
    in request queue" while the agents, which queue checkpoints themselves, were fine."""


def _http() -> AgentHTTPClient:
    return AgentHTTPClient(max_clients=MAX_OPEN_REQUESTS)


class _Retry(Exception):
    """This attempt certainly did not reach the agent; another one may."""


def _message(response: HTTPResponse | None, default: str) -> str:
    if response is None or not response.body:
        return default
    try:
        message = json.loads(response.body).get("message")
    except (ValueError, AttributeError):
        message = None
    if isinstance(message, str) and message:
        return message
    return response.body.decode("utf-8", errors="replace").strip()[:500] or default


class AgentClient:
    """Calls one node agent at ``base_url`` with ``token``.

    ``timeout`` bounds each attempt (a checkpoint waits for CRIU, the push and the
    verification, and may queue behind other checkpoints on the node); ``total_timeout`` caps
    all attempts together (default ``timeout`` + 60 s); ``reconnect_timeout`` caps how long
    attempts that never reached the agent are retried (default 30 s). ``ca_file``,
    ``client_cert`` and ``client_key`` are for an agent served over (m)TLS.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 900.0,
        total_timeout: float | None = None,
        reconnect_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        validate_cert: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.total_timeout = total_timeout if total_timeout is not None else timeout + 60.0
        self.reconnect_timeout = reconnect_timeout
        self.connect_timeout = connect_timeout
        self.ca_file = ca_file
        self.client_cert = client_cert
        self.client_key = client_key
        self.validate_cert = validate_cert

    def __repr__(self) -> str:  # never show the token
        return f"AgentClient({self.base_url!r})"

    async def checkpoint(
        self,
        namespace: str,
        pod: str,
        container: str,
        image_ref: str,
        annotations: Mapping[str, str] | None = None,
        gpus: int = 0,
    ) -> CheckpointResult:
        """Checkpoint a container into ``image_ref`` (``repo:tag``); return the pinned image.
        ``gpus``: the GPUs the pod holds, whose device state the checkpoint must hold."""
        body: dict[str, Any] = {
            "namespace": namespace,
            "pod": pod,
            "container": container,
            "image": image_ref,
            "annotations": dict(annotations or {}),
        }
        if gpus:
            body["gpus"] = gpus
        response = await self._call("POST", "/api/checkpoints", body, self.timeout)
        try:
            return CheckpointResult.from_json(json.loads(response.body))
        except (ValueError, KeyError, TypeError) as e:
            raise AgentError(502, f"the node agent at {self.base_url} answered oddly: {e}") from e

    async def delete_image(self, ref: str) -> None:
        """Delete a checkpoint image; an image that is already gone counts as deleted."""
        await self._call("DELETE", "/api/images?" + urlencode({"ref": ref}), None, 120.0)

    async def health(self) -> dict[str, Any]:
        """The agent's ``/healthz``: ``{"node", "kubelet", ...}``."""
        response = await self._call("GET", "/healthz", None, 10.0)
        return dict(json.loads(response.body))

    async def gpu_report(self) -> AgentGpuReport:
        """What the agent found on its node about GPU checkpoints (``GET /capabilities``)."""
        response = await self._call("GET", "/capabilities", None, 10.0)
        try:
            return AgentGpuReport.from_json(json.loads(response.body)["gpu"])
        except (ValueError, KeyError, TypeError) as e:
            raise AgentError(502, f"the node agent at {self.base_url} answered oddly: {e}") from e

    # ---- transport ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any, timeout: float) -> HTTPRequest:
        headers = {"Accept": "application/json", "Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        return HTTPRequest(
            self.base_url + path,
            method=method,
            headers=headers,
            body=json.dumps(body) if body is not None else None,
            connect_timeout=self.connect_timeout,
            request_timeout=timeout,
            ca_certs=self.ca_file,
            client_cert=self.client_cert,
            client_key=self.client_key,
            validate_cert=self.validate_cert,
        )

    async def _call(self, method: str, path: str, body: Any, timeout: float) -> HTTPResponse:
        window = min(self.total_timeout, self.reconnect_timeout)
        try:
            return await with_retries(
                lambda seconds: self._attempt(method, path, body, seconds),
                f"node agent {method} {self.base_url}{path.split('?', 1)[0]}",
                retryable=lambda e: isinstance(e, _Retry),
                attempt_timeout=timeout,
                total_timeout=self.total_timeout,
                retry_for=window,
                # An attempt that reaches the agent runs to its own end: dropping it would make
                # the agent abandon a checkpoint it may have finished.
                cancel=False,
                log=log,
            )
        except _Retry as e:
            raise AgentError(
                NO_ANSWER,
                f"could not reach the node agent at {self.base_url} within {window:.0f} s "
                f"(is it running?): {e}",
            ) from None

    async def _attempt(self, method: str, path: str, body: Any, timeout: float) -> HTTPResponse:
        what = f"{method} {self.base_url}{path.split('?', 1)[0]}"
        try:
            return await _http().fetch(self._request(method, path, body, timeout))
        except HTTPClientError as e:
            response = e.response
            if e.code == 599:
                if "while connecting" in str(e):
                    raise _Retry(f"timed out connecting ({what})") from e
                raise AgentError(
                    NO_ANSWER,
                    f"no answer from the node agent ({what}): {e}; it may still be working, "
                    "the outcome is unknown",
                ) from e
            from_agent = response is not None and AGENT_HEADER in response.headers
            if e.code in (502, 503) and not from_agent:
                raise _Retry(f"{e.code} from a proxy in front of the agent ({what})") from e
            raise AgentError(e.code, _message(response, f"{what} failed: {e}")) from e
        except (ConnectionRefusedError, ConnectionResetError, socket.gaierror) as e:
            raise _Retry(f"cannot connect ({what}): {e}") from e
        except OSError as e:  # TLS and other local errors: retrying will not help
            raise AgentError(NO_ANSWER, f"cannot talk to the node agent ({what}): {e}") from e
