"""The service's client for the JupyterHub REST API: one per process, retries for reads."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from ..errors import NO_ANSWER, JhubSuspendError
from ..retry import with_retries

PAGINATION = "application/jupyterhub-pagination+json"
_RETRYABLE_STATUS = frozenset({429, 502, 503, 504, NO_ANSWER})


class HubError(JhubSuspendError):
    """A hub API call failed; ``status`` is the hub's HTTP status (``NO_ANSWER``: none)."""


def _retryable(e: BaseException) -> bool:
    return isinstance(e, TimeoutError | ConnectionError) or (
        isinstance(e, HubError) and e.status in _RETRYABLE_STATUS
    )


def _hub_message(e: HTTPClientError) -> str:
    body = e.response.body if e.response is not None else b""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return message if isinstance(message, str) and message else str(e)


class HubClient:
    """Calls ``api_url`` (e.g. ``http://hub:8081/hub/api``) with the service's token.

    GETs are retried (jittered backoff) on connection errors, timeouts, 429 and 5xx answers
    from a proxy, each attempt bounded by ``timeout`` and all attempts by ``total_timeout``.
    Other methods are sent once: a start or stop that timed out may have happened.
    """

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        total_timeout: float = 120.0,
        page_size: int = 200,
        log: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.total_timeout = total_timeout
        self.page_size = page_size
        self.log = log or logging.getLogger(__name__)
        self.requests_made = 0

    def __repr__(self) -> str:  # never show the token
        return f"HubClient({self.api_url!r})"

    async def request(
        self, method: str, path: str, body: Any = None, *, accept: str = "application/json"
    ) -> Any:
        """One API call; the parsed JSON answer (None when empty). Raises :class:`HubError`."""
        url = f"{self.api_url}/{path.lstrip('/')}"

        async def attempt(seconds: float) -> Any:
            self.requests_made += 1
            req = HTTPRequest(
                url,
                method=method,
                headers={
                    "Authorization": f"token {self.token}",
                    "Accept": accept,
                    "Content-Type": "application/json",
                },
                body=json.dumps(body)
                if body is not None
                else (b"" if method in ("POST", "PUT", "PATCH") else None),
                allow_nonstandard_methods=True,
                request_timeout=seconds,
            )
            try:
                resp = await AsyncHTTPClient().fetch(req)
            except HTTPClientError as e:
                status = NO_ANSWER if e.code == 599 else e.code  # tornado's 599: no answer
                raise HubError(status, f"{method} {path}: {_hub_message(e)}") from e
            except OSError as e:
                raise HubError(NO_ANSWER, f"{method} {path}: cannot reach the hub: {e}") from e
            return json.loads(resp.body) if resp.body else None

        if method != "GET":
            return await attempt(self.timeout)
        return await with_retries(
            attempt,
            f"hub {method} {path.split('?', 1)[0]}",
            retryable=_retryable,
            attempt_timeout=self.timeout,
            total_timeout=self.total_timeout,
            cancel=False,  # the request keeps to its time, and fails as a HubError
            log=self.log,
        )

    async def users(self) -> tuple[list[dict[str, Any]], int]:
        """Every user with all servers (stopped ones included) and their state, page by page.
        Returns (users, pages read)."""
        users: list[dict[str, Any]] = []
        offset, pages = 0, 0
        while True:
            query = urlencode(
                {"include_stopped_servers": "1", "offset": offset, "limit": self.page_size}
            )
            page = await self.request("GET", f"users?{query}", accept=PAGINATION)
            pages += 1
            if isinstance(page, list):  # a hub without pagination support
                users.extend(page)
                return users, pages
            items = page.get("items") or []
            users.extend(items)
            nxt = (page.get("_pagination") or {}).get("next")
            if not nxt or not items:
                return users, pages
            offset = int(nxt.get("offset", offset + len(items)))
