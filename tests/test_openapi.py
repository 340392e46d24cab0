"""The service's OpenAPI description (``api/openapi.json``) against its routes, without servers:
every route of ``routes()`` with each method its handler implements is documented, nothing else
is, every status a handler raises is documented, and the document is valid OpenAPI 3.1."""

from __future__ import annotations

import inspect
import json
import re
from types import SimpleNamespace
from typing import Any

import pytest
from openapi_spec_validator import validate
from tornado import web
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from traitlets.config import Config

from jhub_suspend.service import SuspendService, actions, drain, handlers, ui
from jhub_suspend.service.app import routes
from jhub_suspend.service.handlers import ACTION_METHODS, openapi_document

PREFIX = "/services/suspend/"
# Pages for browsers, not the API: the OAuth login and its callback, static files, and the
# catch-all that answers 404 for every other path under api/.
NOT_API = (
    ui.LoginHandler,
    handlers.OAuthCallbackHandler,
    ui.StaticHandler,
    handlers.NotFoundHandler,
)
METHODS = ("get", "head", "post", "delete", "patch", "put", "options")
SAMPLES = {"user": "ann", "server_name": "lab", "id": "ff00", "node": "node-1"}

DOC = openapi_document(PREFIX)
APP = web.Application(routes(SimpleNamespace(service_prefix=PREFIX)))  # type: ignore[arg-type]


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in DOC["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def route_of(path: str, method: str) -> tuple[type[web.RequestHandler], list[str]]:
    """The handler tornado picks for a documented path (its parameters filled in)."""
    url = PREFIX.rstrip("/") + re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m.group(1)], path)
    request = HTTPServerRequest(
        start_line=RequestStartLine(method.upper(), url, "HTTP/1.1"),
        headers=HTTPHeaders({"Host": "hub.example"}),
    )
    delegate = APP.find_handler(request)
    return delegate.handler_class, [a.decode() for a in delegate.path_args or []]


def implemented(cls: type) -> set[str]:
    return {m for m in METHODS if getattr(cls, m) is not getattr(web.RequestHandler, m)}


def api_routes() -> list[tuple[str, type[web.RequestHandler]]]:
    return [
        (pattern, cls)
        for pattern, cls, *_ in routes(SimpleNamespace(service_prefix=PREFIX))  # type: ignore[arg-type]
        if not issubclass(cls, NOT_API)
    ]


def test_the_document_is_valid_openapi():
    validate(DOC)
    assert DOC["openapi"].startswith("3.1")
    assert DOC["servers"] == [{"url": "/services/suspend"}]
    assert openapi_document("/")["servers"] == [{"url": "/"}]
    json.dumps(DOC)  # what the service serves


@pytest.mark.parametrize(
    "path, method, op", operations(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_documented_operation_is_served(path, method, op):
    cls, args = route_of(path, method)
    assert not issubclass(cls, NOT_API), f"{method.upper()} {path} is not an API route"
    assert method in implemented(cls), f"{cls.__name__} does not implement {method.upper()}"
    if cls is handlers.ServerActionHandler:
        assert ACTION_METHODS[args[-1]] == method.upper(), (path, method)


def test_every_route_and_method_is_documented():
    documented: dict[type, set[str]] = {}
    actions_documented: dict[tuple[int, str], set[str]] = {}
    for path, method, _ in operations():
        cls, args = route_of(path, method)
        documented.setdefault(cls, set()).add(method)
        if cls is handlers.ServerActionHandler:
            actions_documented.setdefault((len(args), args[-1]), set()).add(method.upper())
    for pattern, cls in api_routes():
        if cls is handlers.ServerActionHandler:
            continue
        assert documented.get(cls) == implemented(cls), (pattern, cls.__name__)
    # the default server's and named servers' paths, each action with exactly its method
    assert actions_documented == {
        (n, action): {verb} for n in (2, 3) for action, verb in ACTION_METHODS.items()
    }


def _raised(source: str) -> set[int]:
    return {int(s) for s in re.findall(r"(?:HTTPError|ActionError)\(\s*(\d{3})", source)}


@pytest.mark.parametrize(
    "path, method, op", operations(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_status_a_handler_raises_is_documented(path, method, op):
    cls, _ = route_of(path, method)
    statuses = {int(s) for s in op["responses"]}
    raised = _raised(inspect.getsource(cls)) - {405}  # 405: only methods the spec leaves out
    if cls is handlers.ServerActionHandler:
        raised |= _raised(inspect.getsource(actions)) | {502}  # act(): the hub or Kubernetes
    if cls is handlers.NodeDrainHandler:
        raised |= _raised(inspect.getsource(drain)) | {502}
    secured = op.get("security", DOC["security"]) != []
    if secured and cls.prepare is handlers.BaseHandler.prepare:
        raised |= {401, 403, 502}  # no or bad token; no access scope; the hub cannot check it
    params = op.get("parameters", []) + DOC["paths"][path].get("parameters", [])
    if params:
        raised.add(400)  # tornado: an argument that is not UTF-8
    missing = raised - statuses
    assert not missing, f"{method.upper()} {path} does not document {sorted(missing)}"


def test_errors_are_documented_as_the_handlers_write_them():
    """``BaseHandler.write_error`` writes ``{"message": ...}``: every JSON error says so."""
    for path, method, op in operations():
        if not issubclass(route_of(path, method)[0], handlers.BaseHandler):
            continue  # /health and /metrics answer no errors but /health's own 503
        for status, response in op["responses"].items():
            if "$ref" in response:
                response = DOC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
            schema = (response.get("content") or {}).get("application/json", {}).get("schema")
            if int(status) >= 400 and schema is not None:
                name = schema["$ref"].rsplit("/", 1)[1]
                required = DOC["components"]["schemas"][name]["required"]
                assert "message" in required, (method, path, status)


def test_the_charts_series_are_the_ones_the_service_serves():
    cfg = Config()
    cfg.SuspendService.prometheus_url = "http://127.0.0.1:9"
    svc = SuspendService(config=cfg)
    svc.prepare()
    (series,) = [
        p for p in DOC["paths"]["/api/metrics/range"]["get"]["parameters"] if p["name"] == "series"
    ]
    pattern = series["schema"]["pattern"]
    names = set(re.match(r"\^\(([^)]*)\)", pattern).group(1).split("|"))
    assert names == set(svc.chart_queries)
    assert re.fullmatch(pattern, "cpu_used,restores") and not re.fullmatch(pattern, "cpu_used,")
