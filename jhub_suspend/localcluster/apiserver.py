"""The Kubernetes REST API over HTTP, backed by a :class:`~.store.Store`.

Faithful enough that the real ``kubernetes_asyncio`` client and KubeSpawner work against it
through an ordinary kubeconfig (see :func:`write_kubeconfig`): JSON Status errors with the
real codes, list/watch with resourceVersion, label and field selectors, ``timeoutSeconds``,
ERROR events for expired watches, merge/strategic/JSON patches, DeleteOptions,
``/api/v1/nodes/{node}/proxy/...`` forwarded to the node's kubelet, the Eviction API
(``POST .../pods/{name}/eviction``) with validating admission webhooks
(:mod:`.admission`), and ``admissionregistration.k8s.io/v1`` under ``/apis``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import yaml
from tornado import httpclient, web
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets

from ..kubevalues import rfc3339
from .admission import Admission, Attributes
from .faults import FaultPoints, InjectedFault
from .store import (
    RESOURCES,
    ApiError,
    ResourceInfo,
    Store,
    WatchStream,
    check_preconditions,
    resource_info,
)

log = logging.getLogger(__name__)

SERVER_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-jhub-suspend",
    "gitCommit": "",
    "gitTreeState": "clean",
    "buildDate": "",
    "goVersion": "",
    "compiler": "gc",
    "platform": "linux/amd64",
}

# The real server ends a watch without timeoutSeconds after --min-request-timeout (1800 s) or
# up to twice that; clients reconnect.
DEFAULT_WATCH_TIMEOUT = 1800.0
PROXY_TIMEOUT = 600.0
PUBLIC_PATHS = frozenset({"/version", "/healthz", "/readyz", "/livez"})

Authorizer = Callable[[str | None, str, str, str | None, str | None], bool]


def authorize(
    user: str | None, verb: str, resource: str, subresource: str | None, namespace: str | None
) -> bool:
    """The default authorization hook: everything authenticated is allowed."""
    return True


def permission_allows(
    permissions: Iterable[str], verb: str, resource: str, subresource: str | None
) -> bool:
    """The local cluster's RBAC, reduced to one list per token: ``*`` allows everything; an
    entry ``[VERBS ]RESOURCE[/SUBRESOURCE]`` allows the comma-separated VERBS (any verb
    without them) on that resource, e.g. ``nodes/checkpoint`` or ``create pods/eviction``.
    A resource's entry does not cover its subresources, as in RBAC."""
    what = f"{resource}/{subresource}" if subresource else resource
    for entry in permissions:
        if entry == "*":
            return True
        verbs, _, target = entry.strip().rpartition(" ")
        if target == what and (not verbs or verb in verbs.split(",")):
            return True
    return False


def permissions_authorizer(permissions: Mapping[str, Iterable[str]]) -> Authorizer:
    """An authorization hook from each user's permissions (see :func:`permission_allows`)."""

    def authorizer(
        user: str | None, verb: str, resource: str, subresource: str | None, namespace: str | None
    ) -> bool:
        allowed = permissions.get(user or "", ())
        return user is not None and permission_allows(allowed, verb, resource, subresource)

    return authorizer


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def forbidden(
    user: str | None,
    verb: str,
    resource: str,
    subresource: str | None,
    namespace: str | None,
    group: str = "",
) -> ApiError:
    what = f"{resource}/{subresource}" if subresource else resource
    qualified = f"{resource}.{group}" if group else resource
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    return ApiError(
        403,
        "Forbidden",
        f'{qualified} is forbidden: User "{user}" cannot {verb} resource "{what}" in API group'
        f' "{group}"{where}',
        kind=resource,
    )


def resource_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def method_not_allowed(method: str) -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        f"the server does not allow this method on the requested resource ({method})",
    )


# --- paths -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a path under /api/v1/ names."""

    resource: str
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    proxy_path: str | None = None
    legacy_watch: bool = False
    group: str = ""


_SUBRESOURCES = {
    "pods": ("status", "binding", "eviction"),
    "services": ("status",),
    "persistentvolumeclaims": ("status",),
    "nodes": ("status",),
    "namespaces": ("status", "finalize"),
}


def _item_target(
    info: ResourceInfo, namespace: str | None, rest: list[str], legacy_watch: bool
) -> Target:
    group = info.group
    if not rest:
        return Target(info.plural, namespace, legacy_watch=legacy_watch, group=group)
    name, more = rest[0], rest[1:]
    if info.plural == "nodes" and more and more[0] == "proxy":
        return Target("nodes", None, name, "proxy", proxy_path="/".join(more[1:]))
    if not more:
        return Target(info.plural, namespace, name, legacy_watch=legacy_watch, group=group)
    if len(more) == 1 and more[0] in _SUBRESOURCES.get(info.plural, ()):
        return Target(info.plural, namespace, name, more[0], group=group)
    raise resource_not_found()


def served(group: str = "", version: str = "v1") -> dict[str, ResourceInfo]:
    """The resources of one API group and version."""
    return {
        plural: info
        for plural, info in RESOURCES.items()
        if info.group == group and info.version == version
    }


def parse_api_path(segments: list[str], group: str = "", version: str = "v1") -> Target:
    """Map the segments after ``/api/v1/`` (or ``/apis/GROUP/VERSION/``) to a resource,
    namespace, name and subresource."""
    resources = served(group, version)
    legacy_watch = bool(segments) and segments[0] == "watch"
    if legacy_watch:
        segments = segments[1:]
    if not segments:
        raise resource_not_found()
    if segments[0] == "namespaces" and len(segments) >= 3 and segments[2] in resources:
        info = resources[segments[2]]
        if not info.namespaced:
            raise resource_not_found()
        return _item_target(info, segments[1], segments[3:], legacy_watch)
    if segments[0] not in resources:
        raise resource_not_found()
    info = resources[segments[0]]
    if info.namespaced and len(segments) > 1:
        raise resource_not_found()
    return _item_target(info, None, segments[1:], legacy_watch)


def split_path(path: str, prefix: str = "/api/v1/") -> list[str]:
    rest = path[len(prefix) :] if path.startswith(prefix) else ""
    return [unquote(part) for part in rest.split("/")] if rest else []


def parse_request_path(path: str) -> Target:
    """The target of a path under ``/api/v1/`` or ``/apis/GROUP/VERSION/``."""
    if path.startswith("/api/v1/"):
        return parse_api_path(split_path(path))
    parts = path.split("/", 4)
    if len(parts) == 5 and parts[0] == "" and parts[1] == "apis" and parts[2] and parts[3]:
        prefix = f"/apis/{parts[2]}/{parts[3]}/"
        return parse_api_path(split_path(path, prefix), parts[2], parts[3])
    raise resource_not_found()


# --- bodies ----------------------------------------------------------------------------------


def list_body(
    info: ResourceInfo, items: list[dict[str, Any]], rv: str, **meta: Any
) -> dict[str, Any]:
    """A typed list as the server sends it: its items carry no kind or apiVersion."""
    stripped = [
        {k: v for k, v in item.items() if k not in ("kind", "apiVersion")} for item in items
    ]
    metadata: dict[str, Any] = {"resourceVersion": rv}
    metadata.update({k: v for k, v in meta.items() if v is not None})
    return {
        "kind": f"{info.kind}List",
        "apiVersion": info.api_version,
        "metadata": metadata,
        "items": stripped,
    }


def success_status(info: ResourceInfo, obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": obj["metadata"]["name"],
            **({"group": info.group} if info.group else {}),
            "kind": info.plural,
            "uid": obj["metadata"].get("uid"),
        },
    }


def _item_key(item: Mapping[str, Any]) -> str:
    return f"{item['metadata'].get('namespace', '')}/{item['metadata']['name']}"


def paginate(
    items: list[dict[str, Any]], rv: str, limit: int | None, token: str | None
) -> tuple[list[dict[str, Any]], str | None, int | None]:
    """Items after the continue token, at most ``limit``; the next token and how many remain."""
    if token:
        try:
            state = json.loads(base64.urlsafe_b64decode(token.encode()))
            start = str(state["start"])
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            raise ApiError(400, "BadRequest", f"invalid continue token: {e}") from e
        items = [item for item in items if _item_key(item) > start]
    if not limit or limit >= len(items):
        return items, None, None
    page = items[:limit]
    state = {"rv": rv, "start": _item_key(page[-1])}
    next_token = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
    return page, next_token, len(items) - limit


def delete_options(query: Mapping[str, str], body: Mapping[str, Any] | None) -> dict[str, Any]:
    """DeleteOptions from the query and the body (the body wins)."""
    options: dict[str, Any] = {}
    if "gracePeriodSeconds" in query:
        options["grace_period_seconds"] = _int_param(query, "gracePeriodSeconds")
    if "propagationPolicy" in query:
        options["propagation_policy"] = query["propagationPolicy"]
    if query.get("orphanDependents") in ("true", "True", "1"):
        options["propagation_policy"] = "Orphan"
    body = body or {}
    if body.get("gracePeriodSeconds") is not None:
        options["grace_period_seconds"] = int(body["gracePeriodSeconds"])
    if body.get("preconditions"):
        options["preconditions"] = body["preconditions"]
    if body.get("propagationPolicy"):
        options["propagation_policy"] = body["propagationPolicy"]
    if body.get("orphanDependents") is True:
        options["propagation_policy"] = "Orphan"
    return options


def _int_param(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as e:
        raise ApiError(400, "BadRequest", f"invalid {name} {value!r}") from e


def _truthy(value: str | None) -> bool:
    return value in ("true", "True", "1")


_SUBRESOURCE_KINDS = {
    "binding": ("", "", "Binding", ["create"]),
    "eviction": ("policy", "v1", "Eviction", ["create"]),
}


def api_resource_list(group: str = "", version: str = "v1") -> dict[str, Any]:
    """The discovery document of one group version (``/api/v1``, ``/apis/GROUP/VERSION``)."""
    resources = []
    for info in served(group, version).values():
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        resources.append(
            {
                "name": info.plural,
                "singularName": info.singular,
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": verbs,
                "shortNames": list(info.short_names),
            }
        )
        for sub in _SUBRESOURCES.get(info.plural, ()):
            sub_group, sub_version, kind, sub_verbs = _SUBRESOURCE_KINDS.get(
                sub, ("", "", info.kind, ["get", "patch", "update"])
            )
            entry: dict[str, Any] = {
                "name": f"{info.plural}/{sub}",
                "singularName": "",
                "namespaced": info.namespaced,
                "kind": kind,
                "verbs": sub_verbs,
            }
            if sub_group:
                # kubectl drain finds the Eviction's group version here
                entry.update(group=sub_group, version=sub_version)
            resources.append(entry)
    if not group:
        resources.append(
            {
                "name": "nodes/proxy",
                "singularName": "",
                "namespaced": False,
                "kind": "NodeProxyOptions",
                "verbs": ["create", "delete", "get", "patch", "update"],
            }
        )
    group_version = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources}


def api_groups() -> list[dict[str, Any]]:
    """The API groups served under /apis, as APIGroup objects."""
    versions: dict[str, list[str]] = {}
    for info in RESOURCES.values():
        if info.group and info.version not in versions.setdefault(info.group, []):
            versions[info.group].append(info.version)
    groups = []
    for name, served_versions in sorted(versions.items()):
        listed = [{"groupVersion": f"{name}/{v}", "version": v} for v in served_versions]
        groups.append(
            {
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": name,
                "versions": listed,
                "preferredVersion": listed[0],
            }
        )
    return groups


# --- handlers --------------------------------------------------------------------------------


class BaseHandler(web.RequestHandler):
    """Authentication, JSON bodies and Status errors."""

    store: Store
    tokens: Mapping[str, str] | None
    user: str | None = None

    def initialize(self, store: Store, tokens: Mapping[str, str] | None = None, **_: Any) -> None:
        self.store = store
        self.tokens = tokens

    def check_xsrf_cookie(self) -> None:  # an API server, not a browser app
        pass

    def prepare(self) -> None:
        self.user = self._authenticate()

    def _authenticate(self) -> str | None:
        if self.tokens is None or self.request.path in PUBLIC_PATHS:
            return None
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        user = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise _Reply(unauthorized())
        return user

    def send_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def send_error_status(self, error: ApiError) -> None:
        self.clear()
        self.send_json(error.status(), error.code)

    def json_body(self) -> Any:
        if not self.request.body:
            return None
        try:
            return json.loads(self.request.body)
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"the request body is not valid JSON: {e}") from e

    def query(self) -> dict[str, str]:
        return {k: self.get_query_argument(k) for k in self.request.query_arguments}

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, _Reply):
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        error = exc_info[1] if exc_info else None
        if isinstance(error, _Reply):
            error = error.error
        if not isinstance(error, ApiError):
            message = self._reason if status_code != 500 else "Internal error"
            error = ApiError(
                status_code, "InternalError" if status_code == 500 else "Unknown", message
            )
        self.set_header("Content-Type", "application/json")
        self.set_status(error.code)
        self.finish(json.dumps(error.status()))


class _Reply(web.HTTPError):
    """Carries an ApiError through tornado's error path (from prepare())."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.code)
        self.error = error


class InfoHandler(BaseHandler):
    """/version, /api, /api/v1, /apis, /healthz, /readyz, /livez."""

    def get(self) -> None:
        path = self.request.path.rstrip("/") or "/"
        if path == "/version":
            self.send_json(SERVER_VERSION)
        elif path == "/api":
            address = self.request.host
            self.send_json(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": address}
                    ],
                }
            )
        elif path == "/api/v1":
            self.send_json(api_resource_list())
        elif path == "/apis":
            groups = [{k: v for k, v in g.items() if k != "kind"} for g in api_groups()]
            self.send_json({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        elif path.startswith("/apis/"):
            self._group_discovery(path.split("/")[2:])
        else:
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("ok")

    def _group_discovery(self, parts: list[str]) -> None:
        group = next((g for g in api_groups() if g["name"] == parts[0]), None)
        if group is None:
            self.send_error_status(resource_not_found())
        elif len(parts) == 1:
            self.send_json(group)
        elif any(v["version"] == parts[1] for v in group["versions"]):
            self.send_json(api_resource_list(parts[0], parts[1]))
        else:
            self.send_error_status(resource_not_found())


class ResourceHandler(BaseHandler):
    """Everything under /api/v1/ except the discovery document."""

    authorizer: Authorizer
    kubelet_address: Callable[[str], str | None] | None
    kubelet_token: str | None
    faults: FaultPoints | None
    admission: Admission
    _watch: WatchStream | None = None

    def initialize(  # type: ignore[override]
        self,
        store: Store,
        tokens: Mapping[str, str] | None = None,
        authorizer: Authorizer = authorize,
        kubelet_address: Callable[[str], str | None] | None = None,
        kubelet_token: str | None = None,
        faults: FaultPoints | None = None,
        admission: Admission | None = None,
    ) -> None:
        super().initialize(store, tokens)
        self.authorizer = authorizer
        self.kubelet_address = kubelet_address
        self.kubelet_token = kubelet_token
        self.faults = faults
        self.admission = admission or Admission(store)

    async def get(self) -> None:
        await self._dispatch("GET")

    async def post(self) -> None:
        await self._dispatch("POST")

    async def put(self) -> None:
        await self._dispatch("PUT")

    async def patch(self) -> None:
        await self._dispatch("PATCH")

    async def delete(self) -> None:
        await self._dispatch("DELETE")

    async def _dispatch(self, method: str) -> None:
        try:
            target = parse_request_path(self.request.path)
            if target.proxy_path is not None:
                self._authorize(_proxy_verb(method), target)
                await self._proxy(method, target)
            else:
                await self._serve(method, target)
        except ApiError as e:
            if not self._headers_written:
                self.send_error_status(e)
            else:
                log.warning("error after the response began: %s", e)

    def _authorize(self, verb: str, target: Target) -> None:
        if not self.authorizer(
            self.user, verb, target.resource, target.subresource, target.namespace
        ):
            raise forbidden(
                self.user,
                verb,
                target.resource,
                target.subresource,
                target.namespace,
                target.group,
            )

    async def _serve(self, method: str, target: Target) -> None:
        query = self.query()
        if target.name is None:
            await self._collection(method, target, query)
            return
        if target.subresource == "eviction":
            await self._evict(method, target, query)
            return
        if (
            self.faults
            and method == "DELETE"
            and target.resource == "pods"
            and not target.subresource
        ):
            try:
                await self.faults.reach("pod-delete", target.name)
            except InjectedFault as e:
                raise ApiError(e.status, "InternalError", e.message) from e
        self._item(method, target, query)

    async def _collection(self, method: str, target: Target, query: dict[str, str]) -> None:
        info = resource_info(target.resource)
        if method == "GET":
            if target.legacy_watch or _truthy(query.get("watch")):
                self._authorize("watch", target)
                await self._stream_watch(target, query)
            else:
                self._authorize("list", target)
                self._list(info, target, query)
        elif method == "POST":
            self._authorize("create", target)
            body = self._object_body()
            self.send_json(self.store.create(target.resource, target.namespace, body), 201)
        elif method == "DELETE":
            self._authorize("deletecollection", target)
            self._delete_collection(info, target, query)
        else:
            raise method_not_allowed(method)

    def _list(self, info: ResourceInfo, target: Target, query: dict[str, str]) -> None:
        items, rv = self.store.list(
            target.resource,
            target.namespace,
            label_selector=query.get("labelSelector", ""),
            field_selector=query.get("fieldSelector", ""),
        )
        page, token, remaining = paginate(
            items, rv, _int_param(query, "limit"), query.get("continue")
        )
        self.send_json(
            list_body(info, page, rv, **{"continue": token, "remainingItemCount": remaining})
        )

    def _delete_collection(self, info: ResourceInfo, target: Target, query: dict[str, str]) -> None:
        items, _ = self.store.list(
            target.resource,
            target.namespace,
            label_selector=query.get("labelSelector", ""),
            field_selector=query.get("fieldSelector", ""),
        )
        options = delete_options(query, self.json_body())
        deleted = []
        for item in items:
            metadata = item["metadata"]
            with contextlib.suppress(ApiError):
                deleted.append(
                    self.store.delete(
                        target.resource, metadata.get("namespace"), metadata["name"], **options
                    )
                )
        self.send_json(list_body(info, deleted, self.store.resource_version))

    def _item(self, method: str, target: Target, query: dict[str, str]) -> None:
        assert target.name is not None
        resource, namespace, name, sub = (
            target.resource,
            target.namespace,
            target.name,
            target.subresource,
        )
        if sub == "binding":
            if method != "POST":
                raise method_not_allowed(method)
            self._authorize("create", target)
            self.send_json(self._bind(namespace, name), 201)
        elif method == "GET":
            self._authorize("get", target)
            self.send_json(self.store.get(resource, namespace, name))
        elif method == "PUT":
            self._authorize("update", target)
            body = self._object_body()
            self.send_json(self.store.replace(resource, namespace, name, body, subresource=sub))
        elif method == "PATCH":
            self._authorize("patch", target)
            content_type = self.request.headers.get("Content-Type", "application/json")
            body = self.json_body()
            self.send_json(
                self.store.patch(resource, namespace, name, body, content_type, subresource=sub)
            )
        elif method == "DELETE" and sub is None:
            self._authorize("delete", target)
            self._delete(target, query)
        else:
            raise method_not_allowed(method)

    def _object_body(self) -> dict[str, Any]:
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        return body

    def _delete(self, target: Target, query: dict[str, str]) -> None:
        assert target.name is not None
        info = resource_info(target.resource)
        options = delete_options(query, self.json_body())
        obj = self.store.delete(target.resource, target.namespace, target.name, **options)
        still_there = self.store.exists(target.resource, target.namespace, target.name)
        if still_there or info.returns_deleted_object:
            self.send_json(obj)
        else:
            self.send_json(success_status(info, obj))

    async def _evict(self, method: str, target: Target, query: dict[str, str]) -> None:
        """The Eviction API: admission first (before the pod is even looked up, as the real
        server does), then a graceful delete with the Eviction's DeleteOptions. Without
        PodDisruptionBudgets (not served here), only a webhook refuses an eviction."""
        assert target.name is not None and target.namespace is not None
        if method != "POST":
            raise method_not_allowed(method)
        self._authorize("create", target)
        eviction = eviction_body(self._object_body(), target.namespace, target.name)
        raw_options = dict(eviction.get("deleteOptions") or {})
        dry_run = dry_run_of(query, raw_options)
        outcome = await self.admission.validate(
            Attributes(
                operation="CREATE",
                resource=("", "v1", "pods"),
                subresource="eviction",
                kind=("policy", eviction["apiVersion"].partition("/")[2], "Eviction"),
                name=target.name,
                namespace=target.namespace,
                obj=eviction,
                user=self.user,
                dry_run=dry_run,
                options={"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
            )
        )
        for warning in outcome.warnings:
            self.add_header("Warning", f'299 - "{warning}"')
        if outcome.error is not None:
            raise outcome.error
        options = delete_options({}, raw_options)
        pod = self.store.get("pods", target.namespace, target.name)
        check_preconditions("pods", pod, options.get("preconditions"))
        if not dry_run:
            marked = self.store.mutate(
                "pods", target.namespace, target.name, _disruption_target, subresource="status"
            )
            if (options.get("preconditions") or {}).get("resourceVersion") is not None:
                # Checked above against the pod the client saw; the condition set just now is
                # the eviction's own change, as the API server moves the precondition past it.
                options["preconditions"] = {
                    **options["preconditions"],
                    "resourceVersion": marked["metadata"]["resourceVersion"],
                }
            self.store.delete("pods", target.namespace, target.name, **options)
        self.send_json(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "code": 201,
            },
            201,
        )

    def _bind(self, namespace: str | None, name: str) -> dict[str, Any]:
        body = self._object_body()
        node = (body.get("target") or {}).get("name")
        if not node:
            raise ApiError(
                422, "Invalid", f'Binding "{name}" is invalid: target.name: Required value'
            )

        def bind(pod: dict[str, Any]) -> None:
            current = pod["spec"].get("nodeName")
            if current:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on pods/binding "{name}": pod {name} is already'
                    f' assigned to node "{current}"',
                )
            pod["spec"]["nodeName"] = node

        self.store.mutate("pods", namespace, name, bind)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }

    # -- watch --

    async def _stream_watch(self, target: Target, query: dict[str, str]) -> None:
        timeout = _int_param(query, "timeoutSeconds")
        try:
            stream = self.store.watch(
                target.resource,
                target.namespace,
                resource_version=query.get("resourceVersion"),
                label_selector=query.get("labelSelector", ""),
                field_selector=query.get("fieldSelector", ""),
                timeout=float(timeout) if timeout else DEFAULT_WATCH_TIMEOUT,
            )
        except ApiError as e:
            if e.code != 410:
                raise
            # As the watch cache does: the watch starts, then reports the error as an event.
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"type": "ERROR", "object": e.status()}) + "\n")
            return
        self._watch = stream
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-cache, private")
        try:
            await self.flush()
            async for type_, obj in stream:
                self.write(json.dumps({"type": type_, "object": obj}) + "\n")
                await self.flush()
        except StreamClosedError:
            log.debug("watch of %s: client went away", target.resource)
            return
        finally:
            stream.close()
        if not self._finished:
            with contextlib.suppress(StreamClosedError):
                self.finish()

    def on_connection_close(self) -> None:
        if self._watch is not None:
            self._watch.close()

    # -- node proxy --

    async def _proxy(self, method: str, target: Target) -> None:
        assert target.name is not None and target.proxy_path is not None
        self.store.get("nodes", None, target.name)
        address = self.kubelet_address(target.name) if self.kubelet_address else None
        if not address:
            raise ApiError(
                404,
                "NotFound",
                f'no kubelet address known for node "{target.name}"',
                name=target.name,
                kind="nodes",
            )
        url = f"http://{address}/{quote(target.proxy_path)}"
        if self.request.query:
            url += "?" + self.request.query
        response = await httpclient.AsyncHTTPClient().fetch(
            self._proxy_request(method, url), raise_error=False
        )
        if response.code == 599:
            raise ApiError(
                503,
                "ServiceUnavailable",
                f"error trying to reach service: {response.error}",
            )
        self.set_status(response.code, response.reason)
        for header in ("Content-Type",):
            if header in response.headers:
                self.set_header(header, response.headers[header])
        self.finish(response.body or b"")

    def _proxy_request(self, method: str, url: str) -> httpclient.HTTPRequest:
        headers = {
            name: value
            for name, value in self.request.headers.items()
            if name.lower() in ("content-type", "accept")
        }
        credential = (
            f"Bearer {self.kubelet_token}"
            if self.kubelet_token
            else self.request.headers.get("Authorization")
        )
        if credential:
            headers["Authorization"] = credential
        body: bytes | None = self.request.body or None
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        return httpclient.HTTPRequest(
            url,
            method=method,
            headers=headers,
            body=body,
            allow_nonstandard_methods=True,
            request_timeout=PROXY_TIMEOUT,
        )


def _proxy_verb(method: str) -> str:
    return {
        "GET": "get",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete",
    }.get(method, method.lower())


EVICTION_VERSIONS = ("policy/v1", "policy/v1beta1")


def eviction_body(body: dict[str, Any], namespace: str, name: str) -> dict[str, Any]:
    """The Eviction a request carries, checked as the real server decodes and checks it."""
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if kind not in (None, "Eviction") or api_version not in (None, *EVICTION_VERSIONS):
        raise ApiError(400, "BadRequest", f"not a Eviction object: {api_version}, Kind={kind}")
    metadata = body.get("metadata") or {}
    if metadata.get("name") != name:
        raise ApiError(400, "BadRequest", "name in URL does not match name in Eviction object")
    if metadata.get("namespace") not in (None, "", namespace):
        raise ApiError(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        )
    eviction = {**body, "kind": "Eviction", "apiVersion": api_version or EVICTION_VERSIONS[0]}
    eviction["metadata"] = {**metadata, "namespace": namespace}
    return eviction


def dry_run_of(query: Mapping[str, str], options: Mapping[str, Any]) -> bool:
    """Whether a request is a dry run (``?dryRun=All`` or DeleteOptions' ``dryRun``)."""
    values = set(options.get("dryRun") or [])
    if "dryRun" in query:
        values.add(query["dryRun"])
    unknown = values - {"All"}
    if unknown:
        raise ApiError(400, "BadRequest", f"Invalid dry run value: {sorted(unknown)[0]!r}")
    return bool(values)


def _disruption_target(pod: dict[str, Any]) -> None:
    """The condition the Eviction API sets on a pod it deletes."""
    status = pod.setdefault("status", {})
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "DisruptionTarget"]
    conditions.append(
        {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "EvictionByEvictionAPI",
            "message": "Eviction API: evicting",
            "lastTransitionTime": rfc3339(time.time()),
        }
    )
    status["conditions"] = conditions


class NotFoundHandler(BaseHandler):
    def _not_found(self) -> None:
        self.send_error_status(resource_not_found())

    get = post = put = patch = delete = _not_found


# --- application -----------------------------------------------------------------------------


def make_app(
    store: Store,
    *,
    tokens: dict[str, str] | None = None,
    kubelet_address: Callable[[str], str | None] | None = None,
    authorizer: Authorizer = authorize,
    kubelet_token: str | None = None,
    faults: FaultPoints | None = None,
    admission: Admission | None = None,
) -> web.Application:
    """The API server application.

    ``tokens`` maps bearer tokens to user names; without it every request is anonymous.
    ``kubelet_address(node)`` gives "host:port" of a node's kubelet for the node proxy, which
    authenticates to the kubelet with ``kubelet_token`` or, without one, the caller's token.
    """
    common = {"store": store, "tokens": tokens}
    resource_args = {
        **common,
        "authorizer": authorizer,
        "kubelet_address": kubelet_address,
        "kubelet_token": kubelet_token,
        "faults": faults,
        "admission": admission or Admission(store),
    }
    return web.Application(
        [
            (r"/(?:version|healthz|readyz|livez|api|apis|api/v1)/?", InfoHandler, common),
            (r"/apis/[^/]+(?:/[^/]+)?/?", InfoHandler, common),
            (r"/api/v1/.+", ResourceHandler, resource_args),
            (r"/apis/[^/]+/[^/]+/.+", ResourceHandler, resource_args),
            (r"/.*", NotFoundHandler, common),
        ]
    )


async def serve(
    store: Store, host: str = "127.0.0.1", port: int = 0, **kw: Any
) -> tuple[HTTPServer, int]:
    """Listen on ``host:port`` (0: any free port); returns the server and the port.

    To shut down: ``store.close_watches()``, ``server.stop()`` and
    ``await server.close_all_connections()``.
    """
    app = make_app(store, **kw)
    sockets = bind_sockets(port, host)
    server = HTTPServer(app)
    server.add_sockets(sockets)
    bound_port = sockets[0].getsockname()[1]
    log.info("API server listening on %s:%s", host, bound_port)
    return server, bound_port


def write_kubeconfig(
    path: str, server_url: str, token: str | None = None, namespace: str = "default"
) -> None:
    """An ordinary kubeconfig for ``server_url`` (readable only by its owner: it holds a token)."""
    user: dict[str, Any] = {"token": token} if token else {}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "jhub-suspend-local", "cluster": {"server": server_url}}],
        "users": [{"name": "jhub-suspend", "user": user}],
        "contexts": [
            {
                "name": "jhub-suspend-local",
                "context": {
                    "cluster": "jhub-suspend-local",
                    "user": "jhub-suspend",
                    "namespace": namespace,
                },
            }
        ],
        "current-context": "jhub-suspend-local",
        "preferences": {},
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
