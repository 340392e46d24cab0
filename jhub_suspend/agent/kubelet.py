"""A client for the node's own kubelet: the checkpoint call and ``/healthz``.

The agent authenticates with its service account's token, which (on a real cluster) is bound
only to ``nodes/checkpoint``. The token file is read on every call because bound
service-account tokens are rotated by the kubelet.

Retries: only failures to *connect* are retried (the request never reached the kubelet). A
timeout or an answer, including a 500 from the runtime, is never retried: CRIU may still be
running, and a second dump of the same container would race the first.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from ..errors import NO_ANSWER, JhubSuspendError
from ..retry import with_retries

log = logging.getLogger(__name__)

#: seconds added to the checkpoint's own ``?timeout`` for the HTTP request as a whole
CHECKPOINT_TIMEOUT_SLACK = 30.0
#: the longest kubelet message kept in an error
MAX_MESSAGE = 2000


class KubeletError(JhubSuspendError):
    """The kubelet answered with an error, or could not be reached (``status`` ``NO_ANSWER``)."""

    def __str__(self) -> str:
        return f"{self.status} {self.message}" if self.status else self.message


def _connect_failed(e: BaseException) -> bool:
    """True for errors raised before the request was sent (tornado raises these unwrapped)."""
    if isinstance(e, HTTPClientError):
        return e.code == 599 and "while connecting" in str(e)
    return isinstance(e, ConnectionRefusedError | socket.gaierror | ConnectionResetError)


def _body_text(response: HTTPResponse | None) -> str:
    if response is None or not response.body:
        return ""
    return response.body.decode("utf-8", errors="replace").strip()[:MAX_MESSAGE]


@dataclass
class KubeletClient:
    """Calls one kubelet. ``token`` wins over ``token_file``; ``ca_file`` "" means system CAs."""

    url: str
    token: str = ""
    token_file: str = ""
    ca_file: str = ""
    tls_verify: bool = True
    connect_timeout: float = 10.0
    connect_retries: int = 3
    #: the first wait before a retry (they grow, jittered)
    retry_delay: float = 0.5

    def _token(self) -> str:
        if self.token:
            return self.token
        if not self.token_file:
            return ""
        try:
            with open(self.token_file) as f:
                return f.read().strip()
        except OSError as e:
            raise KubeletError(
                NO_ANSWER, f"cannot read the kubelet token file {self.token_file}: {e}"
            ) from e

    def _request(self, path: str, method: str, timeout: float, auth: bool) -> HTTPRequest:
        headers = {"Accept": "application/json"}
        token = self._token() if auth else ""
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return HTTPRequest(
            self.url.rstrip("/") + path,
            method=method,
            headers=headers,
            body=b"" if method == "POST" else None,
            connect_timeout=self.connect_timeout,
            request_timeout=timeout,
            validate_cert=self.tls_verify,
            ca_certs=self.ca_file or None,
        )

    async def _fetch(
        self, path: str, method: str, timeout: float, auth: bool = True
    ) -> HTTPResponse:
        http = AsyncHTTPClient()
        try:
            return await with_retries(
                lambda seconds: http.fetch(self._request(path, method, seconds, auth)),
                f"kubelet {method} {self.url}{path.split('?', 1)[0]}",
                retryable=_connect_failed,
                attempt_timeout=timeout,
                # room for every retry to follow a connection that timed out
                total_timeout=timeout + self.connect_retries * self.connect_timeout,
                max_attempts=self.connect_retries + 1,
                cancel=False,  # a checkpoint under way must not be dropped
                log=log,
                start_wait=self.retry_delay,
            )
        except HTTPClientError as e:
            if e.code != 599:
                raise KubeletError(e.code, _body_text(e.response) or e.message) from e
            raise KubeletError(NO_ANSWER, f"kubelet at {self.url}: {e}") from e
        except (OSError, ssl.SSLError) as e:
            raise KubeletError(NO_ANSWER, f"cannot reach the kubelet at {self.url}: {e}") from e

    async def checkpoint(self, namespace: str, pod: str, container: str, timeout: float) -> str:
        """Checkpoint one container; return the archive path the kubelet wrote."""
        path = "/checkpoint/{}/{}/{}?timeout={}".format(
            quote(namespace, safe=""), quote(pod, safe=""), quote(container, safe=""), int(timeout)
        )
        response = await self._fetch(path, "POST", timeout + CHECKPOINT_TIMEOUT_SLACK)
        try:
            items = json.loads(response.body)["items"]
        except (ValueError, KeyError, TypeError) as e:
            raise KubeletError(response.code, f"unexpected checkpoint answer: {e}") from e
        if not (isinstance(items, list) and len(items) == 1 and isinstance(items[0], str)):
            raise KubeletError(response.code, f"unexpected checkpoint answer: items={items!r}")
        return items[0]

    async def healthz(self, timeout: float = 5.0) -> str:
        """The kubelet's ``/healthz`` answer ("ok"); raises :class:`KubeletError` otherwise.

        The token is sent when there is one; a kubelet that answers at all is alive, so a
        401/403 (``/healthz`` may need ``nodes/proxy`` or ``nodes/healthz``, which the agent
        lacks) comes back as such an error for the caller to judge.
        """
        try:
            auth = bool(self._token())
        except KubeletError:
            auth = False
        response = await self._fetch("/healthz", "GET", timeout, auth=auth)
        return _body_text(response)
