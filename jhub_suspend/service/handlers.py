"""The REST API under ``/services/suspend/api/`` and the ``/metrics`` and ``/health`` pages.

Authentication is JupyterHub's: an API token in the ``Authorization`` header, or the OAuth
cookie a browser gets by logging in through the hub (``HubOAuthenticated``). Cookie-authenticated
requests that change something need the ``_xsrf`` token, exactly as for JupyterHub's own
services; token-authenticated ones do not. A request needs ``access:services!service=suspend``
(granted to every user in the demo). Admins (hub admins, or holders of the custom scope
``custom:jhub-suspend:admin``) may act on any server, drain nodes and read the policy's plan;
everyone else acts on, and sees, only their own servers.

Errors are JSON ``{"message": ...}``; no traceback reaches a client.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import re
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol, cast

import aiohttp
import yaml
from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
)
from kubernetes_asyncio.client.rest import ApiException
from prometheus_client import CONTENT_TYPE_LATEST
from tornado import web

from .. import promql, upstream
from ..kubevalues import rfc3339_or_none
from ..policy import PolicyConfig
from . import listing, observe
from .actions import ActionError, Actions
from .drain import Drains
from .hubclient import HubError
from .loop import PolicyLoop
from .metrics import ServiceMetrics
from .operations import Operations

JSON = "application/json; charset=UTF-8"


class WebContext(Protocol):
    """What the handlers use of the service that serves them."""

    log: logging.Logger
    hub_auth: HubOAuth
    service_prefix: str
    admin_scope: str
    cycle_interval: float
    cycle_timeout: float
    loop: PolicyLoop
    actions: Actions
    drains: Drains
    operations: Operations
    metrics: ServiceMetrics
    queries: promql.Queries

    @property
    def policy_config(self) -> PolicyConfig: ...

    def now(self) -> datetime: ...

    def is_admin(self, model: dict[str, Any]) -> bool: ...


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    service: WebContext

    def initialize(self, service: WebContext) -> None:
        self.service = service
        self.hub_auth = service.hub_auth

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", JSON)
        self.set_header("Cache-Control", "no-store")

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = None
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        if not message:
            message = self._reason if status_code != 500 else "internal error; see the service log"
        self.set_header("Content-Type", JSON)
        self.finish(json.dumps({"message": message}))

    def get_login_url(self) -> str:
        # API requests are never redirected to a login page.
        raise web.HTTPError(401, "authentication required: send a JupyterHub API token")

    async def prepare(self) -> None:
        try:
            model = await self.hub_auth.get_user(self, sync=False)
        except web.HTTPError as e:
            self.service.log.warning("Cannot check a token with the hub: %s", e.log_message)
            raise web.HTTPError(502, "cannot check the token with the hub") from None
        if not model:
            upstream.set_current_user(self, None)
            raise web.HTTPError(
                401, "authentication required: send a valid JupyterHub API token "
                "(Authorization: token ...) or log in through the hub",
            )  # fmt: skip
        try:
            upstream.set_current_user(self, self.check_hub_user(model))
        except UserNotAllowed:
            upstream.set_current_user(self, None)
            raise web.HTTPError(
                403, f"{model.get('kind', 'user')} {model.get('name')} may not use this service "
                "(needs access:services!service=suspend)",
            ) from None  # fmt: skip

    # ---- who may do what -------------------------------------------------------------------

    @property
    def who(self) -> dict[str, Any]:
        user = self.current_user
        assert isinstance(user, dict)
        return user

    @property
    def is_admin(self) -> bool:
        return self.service.is_admin(self.who)

    @property
    def name(self) -> str:
        return f"{self.who.get('kind', 'user')}:{self.who.get('name')}"

    def require_admin(self) -> None:
        if not self.is_admin:
            raise web.HTTPError(403, f"this needs an admin or the scope {self.service.admin_scope}")

    def require_owner(self, user: str) -> None:
        if self.is_admin:
            return
        if self.who.get("kind", "user") != "user" or self.who.get("name") != user:
            raise web.HTTPError(403, f"you may act only on your own servers, not on {user!r}'s")

    async def act(self, coro: Any) -> Any:
        try:
            return await coro
        except ActionError as e:
            raise web.HTTPError(e.status, e.message.replace("%", "%%")) from None
        except HubError as e:
            self.service.log.warning("Hub API error: %s", e.message)
            raise web.HTTPError(502, "the hub API failed; try again") from None
        except (ApiException, aiohttp.ClientError) as e:
            self.service.log.warning("Kubernetes API error: %s", e)
            raise web.HTTPError(502, "the Kubernetes API failed; try again") from None

    def accepted(self, op: Any) -> None:
        """Answer with an operation: 202 while it runs, 200 once it has finished."""
        url = f"{self.service.service_prefix}api/operations/{op.id}"
        self.set_header("Location", url)
        self.write_json(
            {"operation": op.to_dict(self.service.service_prefix), "status_url": url},
            200 if op.done else 202,
        )

    def json_body(self) -> Any:
        if not self.request.body:
            return {}
        try:
            return json.loads(self.request.body)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's limit
            raise web.HTTPError(400, "the request body is not valid JSON") from None


class IndexHandler(BaseHandler):
    def get_login_url(self) -> str:  # browsers log in through the hub
        return HubOAuthenticated.get_login_url(self)

    async def prepare(self) -> None:
        model = await self.hub_auth.get_user(self, sync=False)
        upstream.set_current_user(self, self.check_hub_user(model) if model else None)

    @web.authenticated
    def get(self) -> None:
        prefix = self.service.service_prefix
        self.write_json(
            {
                "service": "jhub-suspend",
                "user": self.who.get("name"),
                "admin": self.is_admin,
                "api": f"{prefix}api/",
                "servers": f"{prefix}api/servers",
            }
        )


class ServersHandler(BaseHandler):
    """Every server the hub knows, as it is now (see :mod:`.listing`)."""

    async def get(self) -> None:
        user = self.get_argument("user", None)
        state = self.get_argument("state", None)
        server_name = self.get_argument("server", None)
        if state is not None and state not in observe.API_STATES:
            raise web.HTTPError(
                400, f"unknown state {state!r}; use one of {', '.join(sorted(observe.API_STATES))}"
            )
        if not self.is_admin:
            if user is not None and user != self.who.get("name"):
                raise web.HTTPError(403, "you may list only your own servers")
            user = self.who.get("name")
        svc = self.service
        snap = svc.loop.snapshot  # before the read: the cycle's view is never newer than it
        views = await self.act(svc.loop.current_views(user))
        now = svc.now()
        entries = listing.server_entries(
            [
                v
                for v in views
                if (server_name is None or v.server_name == server_name)
                and (state is None or v.state == state)
            ],
            snap,
            now=now,
            operations={(o.user, o.server_name): o for o in svc.operations.running() if not o.node},
            prefix=svc.service_prefix,
            max_keep_running=svc.policy_config.max_keep_running,
        )
        self.write_json(
            {
                "as_of": rfc3339_or_none(now),
                "policy_as_of": rfc3339_or_none(snap.time) if snap else None,
                "metrics": {"ok": snap.plan.metrics.ok, "reason": snap.plan.metrics.reason}
                if snap
                else {"ok": None, "reason": "the policy has not completed a cycle yet"},
                "servers": entries,
            }
        )


# What a server answers to, and with which method each: the routes and the 405s come from here.
ACTION_METHODS = {
    "suspend": "POST",
    "resume": "POST",
    "checkpoint": "DELETE",
    "keep-running": "PUT",
}


class ServerActionHandler(BaseHandler):
    """``servers/{user}[/{server_name}]/{action}``, each action with its method
    (:data:`ACTION_METHODS`)."""

    def _target(self, user: str, *rest: str) -> tuple[str, str, str]:
        if len(rest) == 2:
            server_name, action = rest
        else:
            server_name, action = "", rest[0]
        if ACTION_METHODS[action] != self.request.method:
            raise web.HTTPError(
                405,
                f"{self.request.method} is not allowed on {action}; use {ACTION_METHODS[action]}",
            )
        self.require_owner(user)
        return user, server_name, action

    async def post(self, user: str, *rest: str) -> None:
        user, server_name, action = self._target(user, *rest)
        if action == "suspend":
            op = await self.act(self.service.actions.suspend(user, server_name, self.name))
        else:
            op = await self.act(self.service.actions.resume(user, server_name, self.name))
        self.accepted(op)

    async def delete(self, user: str, *rest: str) -> None:
        user, server_name, _ = self._target(user, *rest)
        result = await self.act(self.service.actions.discard(user, server_name, self.name))
        self.write_json(result)

    async def put(self, user: str, *rest: str) -> None:
        user, server_name, _ = self._target(user, *rest)
        body = self.json_body()
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            raise web.HTTPError(400, 'send {"enabled": true|false, "hours": optional number}')
        unknown = set(body) - {"enabled", "hours"}
        if unknown:
            raise web.HTTPError(400, f"unknown fields {sorted(unknown)}")
        hours = body.get("hours")
        if hours is not None:
            if isinstance(hours, bool) or not isinstance(hours, int | float):
                raise web.HTTPError(400, f"hours must be a number, not {hours!r:.40}")
            # comparisons, not math.isfinite: an integer too big for a float overflows that
            if not 0 < hours <= 24 * 366:  # NaN and the infinities fail it too
                raise web.HTTPError(400, f"hours must be > 0 and at most a year, got {hours!r:.40}")
        result = await self.act(
            self.service.actions.keep_running(
                user, server_name, body["enabled"], float(hours) if hours else None, self.name
            )
        )
        self.write_json(result)


class NodeDrainHandler(BaseHandler):
    """``POST nodes/{node}/drain[?dry_run=true]`` (admins): suspend every notebook server on
    the node (see :mod:`.drain`)."""

    async def post(self, node: str) -> None:
        self.require_admin()
        dry_run = self.get_argument("dry_run", "false").lower()
        if dry_run not in ("true", "1", "false", "0"):
            raise web.HTTPError(400, "dry_run must be true or false")
        op = await self.act(
            self.service.drains.start(
                node, dry_run=dry_run in ("true", "1"), requested_by=self.name
            )
        )
        self.accepted(op)


class OperationHandler(BaseHandler):
    def get(self, op_id: str) -> None:
        op = self.service.operations.get(op_id)
        if op is None:
            raise web.HTTPError(404, f"no operation {op_id!r}")
        if op.node:
            self.require_admin()  # a drain: on everyone's servers
        else:
            self.require_owner(op.user)
        self.write_json(op.to_dict(self.service.service_prefix))


class PolicyHandler(BaseHandler):
    def get(self) -> None:
        svc = self.service
        cfg = svc.policy_config.to_dict()
        if not self.is_admin:
            # who is exempt is the admins' business
            for key in ("exempt_users", "exempt_groups"):
                cfg[key] = len(cfg[key])
        data: dict[str, Any] = {"policy": cfg, "cycle_interval": svc.cycle_interval}
        if self.is_admin:
            data["queries"] = svc.queries.all()
            data["loop"] = svc.loop.health.to_dict()
        self.write_json(data)


class PlanHandler(BaseHandler):
    async def get(self) -> None:
        self.require_admin()
        if self.get_argument("fresh", "") in ("1", "true"):
            try:
                snap = await self.service.loop.observe(record=False)
            except HubError as e:
                raise web.HTTPError(502, f"the hub API failed: {e.message}") from None
        else:
            last = self.service.loop.snapshot
            if last is None:
                raise web.HTTPError(503, "the first policy cycle has not completed yet")
            snap = last
        plan = snap.plan.to_dict()
        plan["pending_pods"] = [p.full_name for p in snap.pending]
        plan["prometheus_queries"] = snap.queries
        plan["hub_pages"] = snap.hub_pages
        if not snap.plan.metrics.ok:
            self.set_status(503)
            self.finish(
                json.dumps(
                    {
                        "message": f"Prometheus is unusable ({snap.plan.metrics.reason}); "
                        "nothing is suspended",
                        "plan": plan,
                    }
                )
            )
            return
        self.write_json(plan)


class MetricsHandler(web.RequestHandler):
    """Prometheus text; aggregates only, no user names, so no authentication."""

    def initialize(self, service: WebContext) -> None:
        self.service = service

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.service.metrics.render())


class HealthHandler(web.RequestHandler):
    """Liveness: 200 while the loop runs and cycles complete, else 503. No user data."""

    def initialize(self, service: WebContext) -> None:
        self.service = service

    def get(self) -> None:
        svc = self.service
        h = svc.loop.health
        ok = svc.loop.alive
        if ok and h.last_cycle is not None:
            age = (svc.now() - h.last_cycle).total_seconds()
            ok = age < 3 * svc.cycle_interval + svc.cycle_timeout
        self.set_header("Content-Type", JSON)
        self.set_status(200 if ok else 503)
        self.finish(
            json.dumps(
                {
                    "ok": ok,
                    "last_cycle": rfc3339_or_none(h.last_cycle),
                    "last_success": rfc3339_or_none(h.last_success),
                    "failsafe": h.failsafe is not None,
                }
            )
        )


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    """Finishes the hub's OAuth login for browsers, with this service's HubOAuth."""

    def initialize(self, service: WebContext) -> None:
        self.hub_auth = service.hub_auth


OPENAPI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.yaml")


@functools.cache
def _openapi_source() -> dict[str, Any]:
    with open(OPENAPI, encoding="utf-8") as f:
        return cast(dict[str, Any], yaml.safe_load(f))


def openapi_document(prefix: str) -> dict[str, Any]:
    """The API's OpenAPI description (``openapi.yaml``) for a service at ``prefix``."""
    doc = copy.deepcopy(_openapi_source())
    doc["servers"] = [{"url": prefix.rstrip("/") or "/"}]
    with contextlib.suppress(PackageNotFoundError):
        doc["info"]["version"] = version("jhub-suspend")
    return doc


class OpenAPIHandler(web.RequestHandler):
    """``GET api/openapi.json``: the API's description. Public, as the hub's own is."""

    def initialize(self, service: WebContext) -> None:
        self.service = service

    def get(self) -> None:
        self.set_header("Content-Type", JSON)
        self.finish(json.dumps(openapi_document(self.service.service_prefix)))


class NotFoundHandler(BaseHandler):
    async def prepare(self) -> None:
        raise web.HTTPError(404, f"no such API endpoint: {self.request.path}")


def routes(service: WebContext) -> list[tuple]:
    """The API's routes, ending with the 404 of every other path under ``api/``."""
    p = service.service_prefix
    api = f"{p}api/"
    seg = r"([^/]+)"
    act = "(" + "|".join(map(re.escape, ACTION_METHODS)) + ")"
    kw = {"service": service}
    return [
        (f"{p}oauth_callback", OAuthCallbackHandler, kw),
        (f"{p}metrics", MetricsHandler, kw),
        (f"{p}health", HealthHandler, kw),
        (f"{api}openapi.json", OpenAPIHandler, kw),
        (f"{api}servers", ServersHandler, kw),
        (f"{api}servers/{seg}/{act}", ServerActionHandler, kw),
        (f"{api}servers/{seg}/{seg}/{act}", ServerActionHandler, kw),
        (f"{api}nodes/{seg}/drain", NodeDrainHandler, kw),
        (f"{api}operations/{seg}", OperationHandler, kw),
        (f"{api}policy", PolicyHandler, kw),
        (f"{api}plan", PlanHandler, kw),
        (f"{api}.*", NotFoundHandler, kw),
    ]
