"""The browser side of the service: the admin page, the login route for hub pages, the session
endpoint that hands same-origin JavaScript its XSRF token, static files, and Prometheus range
queries for the admin page's charts.

How a hub page (``/hub/home``) talks to the service (same origin, ``/services/suspend/``):

1. ``GET api/session`` with the service's OAuth cookie answers ``{user, admin, xsrf}``; without
   one it answers 401 with ``login_url``.
2. On 401 the page navigates once to ``login?next=<the page>``: a navigation, so the service
   runs the hub's OAuth (no confirmation page for this hub-managed service), sets its cookie and
   its ``_xsrf`` cookie (path ``/services/suspend/``), and redirects back to ``next``.
3. Every later request sends ``X-XSRFToken: <xsrf>``; the service checks it as JupyterHub does.

``api/session`` skips the XSRF check on its GET only: it changes nothing, and its answer is
readable only by same-origin pages (no CORS headers), which is what the token protects against.
"""

from __future__ import annotations

import html
import math
import os
import time
from typing import Any, Protocol
from urllib.parse import urlencode

from jupyterhub.services.auth import HubOAuthenticated
from tornado import web

from .. import upstream
from .handlers import BaseHandler, IndexHandler, WebContext
from .prom import MetricsUnavailable, PrometheusReader

HERE = os.path.dirname(os.path.abspath(__file__))
# The service's static files, uPlot included (static/vendor/uplot, vendored with its licence and
# version: no CDN, the pages work offline, and every install of the package serves it).
STATIC = os.path.join(HERE, "static")


def _hub_prefix(service: WebContext) -> str:
    return str(getattr(service.hub_auth, "hub_prefix", "") or "/hub/")


def page(service: WebContext, title: str, body: str, user: str = "", script: str = "") -> str:
    """An HTML page with the hub's look: its CSS, Bootstrap and navigation bar."""
    hub = _hub_prefix(service)
    prefix = service.service_prefix
    e = html.escape
    who = (
        f'<span class="me-1">{e(user)}</span><a id="logout" role="button" '
        f'class="btn btn-sm btn-outline-contrast" href="{hub}logout">Logout</a>'
        if user
        else ""
    )
    scripts = (
        f'<script src="{prefix}static/vendor/uplot/uPlot.iife.min.js"></script>'
        f'<script src="{prefix}static/jhub-suspend.js"></script>'
        f'<script src="{prefix}static/{script}"></script>'
        if script
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="{hub}static/css/style.min.css">
<link rel="stylesheet" href="{prefix}static/vendor/uplot/uPlot.min.css">
<link rel="stylesheet" href="{prefix}static/jhub-suspend.css">
<link rel="icon" href="{hub}static/favicon.ico" type="image/x-icon">
<script src="{hub}static/components/bootstrap/dist/js/bootstrap.bundle.min.js"></script>
<script src="{hub}static/js/darkmode.js"></script>
</head><body data-service-prefix="{e(prefix)}" data-hub-prefix="{e(hub)}">
<nav class="navbar navbar-expand-sm bg-body-tertiary mb-4"><div class="container-fluid">
<span id="jupyterhub-logo" class="navbar-brand"><a href="{hub}"><img src="{hub}logo"
 alt="JupyterHub logo" class="jpy-logo" title="Home"></a></span>
<ul class="navbar-nav me-auto mb-0">
<li class="nav-item"><a class="nav-link" href="{hub}home">Home</a></li>
<li class="nav-item"><a class="nav-link active" href="{prefix}">Suspend</a></li></ul>
<ul class="nav navbar-nav me-2"><li class="nav-item"><button class="btn btn-sm" type="button"
 id="dark-theme-toggle" aria-label="Toggle dark mode" title="Toggle dark mode"><i aria-hidden="true"
 class="fa fa-circle-half-stroke"></i></button></li>
<li class="nav-item"><span id="login_widget">{who}</span>
</li></ul></div></nav>
{body}
{scripts}
</body></html>"""


ADMIN_BODY = """
<div class="container-fluid px-4" id="jhs-admin">
  <h1 class="h3">Suspended and running servers</h1>
  <div id="jhs-admin-alerts"></div>
  <div class="row g-3 mb-3" id="jhs-reclaimed">
    <div class="col-md-3"><div class="card"><div class="card-body">
      <div class="text-body-secondary small">CPU reclaimed now</div>
      <div class="fs-4" id="jhs-reclaimed-cpu">&ndash;</div></div></div></div>
    <div class="col-md-3"><div class="card"><div class="card-body">
      <div class="text-body-secondary small">Memory reclaimed now</div>
      <div class="fs-4" id="jhs-reclaimed-mem">&ndash;</div></div></div></div>
    <div class="col-md-3"><div class="card"><div class="card-body">
      <div class="text-body-secondary small">GPUs reclaimed now</div>
      <div class="fs-4" id="jhs-reclaimed-gpu">&ndash;</div></div></div></div>
    <div class="col-md-3"><div class="card"><div class="card-body">
      <div class="text-body-secondary small">Servers suspended / running</div>
      <div class="fs-4" id="jhs-counts">&ndash;</div></div></div></div>
  </div>
  <form class="row g-2 mb-2" id="jhs-filters" onsubmit="return false">
    <div class="col-auto"><input class="form-control form-control-sm" id="jhs-filter-user"
      placeholder="filter by user" aria-label="filter by user"></div>
    <div class="col-auto"><select class="form-select form-select-sm" id="jhs-filter-state"
      aria-label="filter by state"><option value="">all states</option>
      <option>running</option><option>suspending</option><option>suspended</option>
      <option>restoring</option><option>failed</option><option>starting</option>
      <option>stopping</option><option>stopped</option></select></div>
    <div class="col-auto small text-body-secondary pt-1" id="jhs-as-of"></div>
  </form>
  <div class="table-responsive">
  <table class="table table-sm table-striped align-middle" id="jhs-servers">
    <thead><tr><th>User</th><th>Server</th><th>State</th><th>CPU used / request</th>
    <th>GPU</th><th>Memory / request</th><th>Idle</th><th>Checkpoint</th><th>Keep running</th>
    <th>Last error</th><th>Actions</th></tr></thead>
    <tbody><tr><td colspan="11" class="text-body-secondary">Loading&hellip;</td></tr></tbody>
  </table></div>
  <h2 class="h5 mt-4">Over the last <select id="jhs-range" class="form-select form-select-sm
    d-inline-block w-auto"><option value="60">hour</option><option value="360">6 hours</option>
    <option value="1440">day</option><option value="10080">week</option></select></h2>
  <div class="row g-3" id="jhs-charts">
    <div class="col-lg-6"><div class="card"><div class="card-body">
      <h3 class="h6">CPU cores: reserved vs used</h3><div id="jhs-chart-cpu"></div></div></div></div>
    <div class="col-lg-6"><div class="card"><div class="card-body">
      <h3 class="h6">GPUs: reserved vs used</h3><div id="jhs-chart-gpu"></div></div></div></div>
    <div class="col-lg-6"><div class="card"><div class="card-body">
      <h3 class="h6">Capacity reclaimed by suspension</h3><div id="jhs-chart-reclaimed"></div>
    </div></div></div>
    <div class="col-lg-6"><div class="card"><div class="card-body">
      <h3 class="h6">Suspensions and restores</h3><div id="jhs-chart-suspensions"></div>
    </div></div></div>
    <div class="col-lg-6"><div class="card"><div class="card-body">
      <h3 class="h6">GPU-hours and core-hours reclaimed
        <span class="text-body-secondary fw-normal" id="jhs-hours-total"></span></h3>
      <div id="jhs-chart-hours"></div>
    </div></div></div>
  </div>
</div>
<div class="modal fade" id="jhs-confirm" tabindex="-1" aria-hidden="true"><div class="modal-dialog">
 <div class="modal-content"><div class="modal-header"><h2 class="modal-title h5">Confirm</h2>
 <button type="button" class="btn-close" data-bs-dismiss="modal" aria-label="Close"></button>
 </div><div class="modal-body" id="jhs-confirm-text"></div><div class="modal-footer">
 <button type="button" class="btn btn-secondary" data-bs-dismiss="modal">Cancel</button>
 <button type="button" class="btn btn-danger" id="jhs-confirm-ok">Discard</button></div>
 </div></div></div>
"""


class IndexPageHandler(IndexHandler):
    """``GET /services/suspend/``: the admin page for browsers (HTML), JSON for the rest."""

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")

    @web.authenticated
    def get(self) -> None:
        if "text/html" not in self.request.headers.get("Accept", ""):
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
            return
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        name = str(self.who.get("name") or "")
        if not self.is_admin:
            self.set_status(403)
            self.finish(
                page(
                    self.service,
                    "403: not an admin of jhub-suspend",
                    f"""<div class="container"><div class="alert alert-danger" id="jhs-forbidden">
<h1 class="h4">403: Forbidden</h1><p>The suspend service's admin page is for hub admins and
holders of the scope <code>{html.escape(self.service.admin_scope)}</code>;
<strong>{html.escape(name)}</strong> is neither.</p>
<p>Your own servers can be suspended and resumed from your
<a href="{_hub_prefix(self.service)}home">home page</a>.</p></div></div>""",
                    user=name,
                )
            )
            return
        self.finish(page(self.service, "jhub-suspend: servers", ADMIN_BODY, name, "admin.js"))


class LoginHandler(HubOAuthenticated, web.RequestHandler):
    """``login?next=/hub/home``: log in to the service through the hub, then go back."""

    def initialize(self, service: WebContext) -> None:
        self.service = service
        self.hub_auth = service.hub_auth

    def _next(self) -> str:
        nxt = self.get_argument("next", "") or _hub_prefix(self.service) + "home"
        # only paths on this origin
        if not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
            nxt = _hub_prefix(self.service) + "home"
        return nxt

    @web.authenticated
    def get(self) -> None:
        # Touch the token so the _xsrf cookie is (re)set on this navigation.
        _ = self.xsrf_token
        self.redirect(self._next())


class SessionHandler(BaseHandler):
    """``GET api/session``: who is logged in, and the XSRF token for the next requests."""

    def check_xsrf_cookie(self) -> None:
        if self.request.method not in ("GET", "HEAD"):
            super().check_xsrf_cookie()

    async def prepare(self) -> None:
        try:
            await super().prepare()
        except web.HTTPError as e:
            if e.status_code != 401:
                raise
            query = urlencode({"next": self.get_argument("next", "")})
            self.write_json(
                {
                    "message": "log in to the suspend service through the hub",
                    "login_url": f"{self.service.service_prefix}login?{query}",
                },
                401,
            )

    def get(self) -> None:
        if not upstream.xsrf_cookie_is_current(self):
            # No _xsrf cookie for this login yet (it is set only on navigations): log in again.
            query = urlencode({"next": self.get_argument("next", "")})
            self.write_json(
                {
                    "message": "the service's XSRF cookie is missing or stale; log in again",
                    "login_url": f"{self.service.service_prefix}login?{query}",
                },
                401,
            )
            return
        token = self.xsrf_token
        self.write_json(
            {
                "user": self.who.get("name"),
                "kind": self.who.get("kind", "user"),
                "admin": self.is_admin,
                "xsrf": token.decode() if isinstance(token, bytes) else str(token),
                "hub_prefix": _hub_prefix(self.service),
            }
        )


class ChartsContext(WebContext, Protocol):
    """What the charts use of the service, besides what every handler does."""

    prometheus: PrometheusReader
    #: the named series of :func:`jhub_suspend.promql.chart_queries`
    chart_queries: dict[str, str]
    query_step: float


class MetricsRangeHandler(BaseHandler):
    """``GET api/metrics/range?series=a,b&minutes=60``: Prometheus range queries for the charts.

    Admins only; only the named series of :attr:`ChartsContext.chart_queries`, never a query
    from the client.
    """

    service: ChartsContext

    async def get(self) -> None:
        self.require_admin()
        svc = self.service
        available = svc.chart_queries
        wanted = [s for s in self.get_argument("series", "").split(",") if s]
        unknown = [s for s in wanted if s not in available]
        if not wanted or unknown:
            raise web.HTTPError(
                400, f"series must be a comma-separated list of {', '.join(sorted(available))}"
            )
        try:
            minutes = float(self.get_argument("minutes", "60"))
        except ValueError:
            minutes = math.nan
        if not math.isfinite(minutes):  # NaN would reach round() below
            raise web.HTTPError(400, "minutes must be a number")
        minutes = min(max(minutes, 5), 31 * 24 * 60)
        end = time.time()
        start = end - 60 * minutes
        step = max(svc.query_step, round(60 * minutes / 240))
        out: dict[str, Any] = {"start": start, "end": end, "step": step, "series": {}}
        errors = []
        for name in wanted:
            try:
                out["series"][name] = await svc.prometheus.query_range(
                    available[name], start, end, step
                )
            except MetricsUnavailable as e:
                errors.append(f"{name}: {e}")
                out["series"][name] = None
        if errors:
            out["errors"] = errors
        self.write_json(out)


class StaticHandler(web.StaticFileHandler):
    """Static files: public (no user data), cached briefly."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "max-age=300")


def routes(service: ChartsContext) -> list[tuple]:
    """The pages' routes; they come before the API's (whose last route catches every path)."""
    p = service.service_prefix
    kw = {"service": service}
    return [
        (p.rstrip("/") + "/?", IndexPageHandler, kw),
        (f"{p}login", LoginHandler, kw),
        (f"{p}api/session", SessionHandler, kw),
        (f"{p}api/metrics/range", MetricsRangeHandler, kw),
        (f"{p}static/(.*)", StaticHandler, {"path": STATIC}),
    ]
