"""Small fakes of the suspend service's IO boundary, for unit tests and benchmarks.

* :class:`FakeHub`: the hub's ``GET /hub/api/users`` with JupyterHub's pagination, and ``GET
  /hub/api/users/{name}``, served over HTTP on loopback (so the real
  :class:`~jhub_suspend.service.hubclient.HubClient` is used);
* :class:`FakePrometheus`: ``GET /api/v1/query`` answering the policy's queries for synthetic
  pods, over HTTP (so the real prometheus-api-client is used), or something malformed;
* :class:`FakeKube`: the service's :class:`~jhub_suspend.service.kube.Kube`, in process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from ..checkpoints import Checkpoint, Status
from ..gpu import Capability


def checkpoint(
    status: str = Status.SUSPENDED, digest: str = "sha256:ab", **fields: Any
) -> Checkpoint:
    """A checkpoint of a default server's pod, as the spawner records it."""
    values: dict[str, Any] = {
        "image": f"registry.example.org/jhub-suspend/default/jupyter-ann@{digest}",
        "digest": digest,
        "size": 1000,
        "created": "2026-01-01T12:00:00Z",
        "reason": "idle",
        "container": "notebook",
        "original_image": "quay.io/jupyter/base-notebook",
        "status": status,
    }
    return Checkpoint(**{**values, **fields})


def checkpoint_record(
    status: str = Status.SUSPENDED, digest: str = "sha256:ab", **fields: Any
) -> dict[str, Any]:
    """:func:`checkpoint`'s record in the spawner's state."""
    return checkpoint(status, digest, **fields).to_state(seal=False)


def synthetic_users(n: int, now: datetime, namespace: str = "default") -> list[dict[str, Any]]:
    """``n`` users, each with one running default server; every tenth requests a GPU."""
    started = (now - timedelta(hours=3)).isoformat()
    users = []
    for i in range(n):
        name = f"user{i:05d}"
        users.append(
            {
                "kind": "user",
                "name": name,
                "admin": False,
                "groups": ["students"] if i % 3 else [],
                "servers": {
                    "": {
                        "name": "",
                        "ready": True,
                        "pending": None,
                        "started": started,
                        "last_activity": (now - timedelta(minutes=i % 240)).isoformat(),
                        "state": {
                            "pod_name": f"jupyter-{name}",
                            "namespace": namespace,
                            "jhub_suspend": {"checkpoint": None, "last_error": None},
                        },
                    }
                },
            }
        )
    return users


def synthetic_pods(n: int, namespace: str = "default") -> list[dict[str, Any]]:
    pods = []
    for i in range(n):
        limits = {"nvidia.com/gpu": "1"} if i % 10 == 0 else {}
        pods.append(
            {
                "metadata": {
                    "name": f"jupyter-user{i:05d}",
                    "namespace": namespace,
                    "labels": {"component": "singleuser-server"},
                    "annotations": {},
                },
                "spec": {
                    "nodeName": f"node-{i % 50}",
                    "containers": [
                        {
                            "name": "notebook",
                            "resources": {
                                "requests": {"cpu": "500m", "memory": "512M"},
                                "limits": limits,
                            },
                        }
                    ],
                },
                "status": {"phase": "Running"},
            }
        )
    return pods


class _Users(web.RequestHandler):
    def initialize(self, hub: FakeHub) -> None:
        self.hub = hub

    def get(self) -> None:
        self.hub.requests += 1
        offset = int(self.get_argument("offset", "0"))
        limit = min(int(self.get_argument("limit", "200")), self.hub.max_limit)
        items = self.hub.users[offset : offset + limit]
        end = offset + len(items)
        nxt = {"offset": end, "limit": limit, "url": ""} if end < len(self.hub.users) else None
        if "pagination" in self.request.headers.get("Accept", ""):
            body: Any = {
                "items": items,
                "_pagination": {
                    "offset": offset,
                    "limit": limit,
                    "total": len(self.hub.users),
                    "next": nxt,
                },
            }
        else:
            body = items
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class _User(web.RequestHandler):
    """``GET users/{name}``: one user, stopped servers included."""

    def initialize(self, hub: FakeHub) -> None:
        self.hub = hub

    def get(self, name: str) -> None:
        self.hub.requests += 1
        user = next((u for u in self.hub.users if u.get("name") == name), None)
        if user is None:
            self.set_status(404)
            self.finish(json.dumps({"status": 404, "message": "Not Found"}))
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(user))


def serve(app: web.Application) -> tuple[HTTPServer, str]:
    """A test's stand-in ``app`` served on a free loopback port: the server (to stop) and its
    base URL."""
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    return server, f"http://127.0.0.1:{sockets[0].getsockname()[1]}"


@dataclass
class FakeHub:
    users: list[dict[str, Any]]
    max_limit: int = 200
    requests: int = 0
    url: str = ""
    _server: HTTPServer | None = None

    def start(self) -> str:
        self._server, base = serve(
            web.Application(
                [
                    (r"/hub/api/users", _Users, {"hub": self}),
                    (r"/hub/api/users/([^/]+)", _User, {"hub": self}),
                ]
            )
        )
        self.url = f"{base}/hub/api"
        return self.url

    def stop(self) -> None:
        if self._server:
            self._server.stop()


def _vector(keys: list[tuple[str, str]], value: float, ts: float) -> list[dict[str, Any]]:
    return [
        {"metric": {"namespace": ns, "pod": pod}, "value": [ts, repr(value)]} for ns, pod in keys
    ]


class _Query(web.RequestHandler):
    def initialize(self, prom: FakePrometheus) -> None:
        self.prom = prom

    def _answer(self) -> None:
        self.prom.queries += 1
        query = self.get_argument("query")
        ts = float(self.get_argument("time", str(datetime.now(UTC).timestamp())))
        if self.prom.malformed:
            self.finish(json.dumps({"status": "success", "data": {"result": {"oops": 1}}}))
            return
        pods, gpu_pods = self.prom.pods, self.prom.gpu_pods
        if query.startswith("label_replace(time()"):
            result = [
                {"metric": {"source": s}, "value": [ts, "3"]}
                for s in ("cpu", "memory", "requests", "gpu")
            ]
        elif "DCGM" in query:
            value = self.prom.expected if query.startswith("count_over_time") else 0.0
            result = _vector(gpu_pods, value, ts)
        elif query.startswith("count_over_time"):
            result = _vector(pods, self.prom.expected, ts)
        elif query.startswith("max_over_time"):
            result = _vector(pods, self.prom.cpu_ratio, ts)
        else:  # memory ratio
            result = _vector(pods, 0.3, ts)
        self.set_header("Content-Type", "application/json")
        self.finish(
            json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})
        )

    def get(self) -> None:
        self._answer()

    def post(self) -> None:
        self._answer()


@dataclass
class FakePrometheus:
    pods: list[tuple[str, str]]
    gpu_pods: list[tuple[str, str]] = field(default_factory=list)
    cpu_ratio: float = 0.01
    expected: float = 60.0
    malformed: bool = False
    queries: int = 0
    url: str = ""
    _server: HTTPServer | None = None

    def start(self) -> str:
        self._server, self.url = serve(
            web.Application([(r"/api/v1/query", _Query, {"prom": self})])
        )
        return self.url

    def stop(self) -> None:
        if self._server:
            self._server.stop()


@dataclass
class FakeKube:
    """Stands in for :class:`jhub_suspend.service.kube.Kube`."""

    pods: list[dict[str, Any]]
    markers: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    core: Any = None

    async def list_pods(self, namespace: str | None) -> list[dict[str, Any]]:
        self.calls += 1
        return self.pods if namespace is not None else []

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls += 1
        return next(
            (
                p
                for p in self.pods
                if p["metadata"]["name"] == name
                and p["metadata"].get("namespace", namespace) == namespace
            ),
            None,
        )

    async def list_markers(self, namespace: str) -> list[dict[str, Any]]:
        self.calls += 1
        return self.markers

    async def node_labels(self) -> dict[str, dict[str, str]] | None:
        self.calls += 1
        return None

    async def list_nodes(self) -> list[dict[str, Any]] | None:
        self.calls += 1
        return None


class AssumedGpuCapabilities:
    """Stands in for :class:`jhub_suspend.service.gpucaps.GpuCapabilities` where no node or
    agent exists (benchmarks of the policy alone): every GPU node is assumed capable, in CDI
    mode with ``memory_available`` bytes free (1 TiB), marked simulated, and the reason says
    so."""

    memory_available = 1 << 40

    async def nodes(self, nodes: Any, *, fresh: bool = False) -> dict[str, Any]:
        from ..service.gpucaps import GpuNode

        return {
            n: GpuNode(
                Capability(
                    True, f"node {n} assumed able to checkpoint GPUs (simulation)", "cdi", True
                ),
                None,
                self.memory_available,
            )
            for n in nodes
        }


def configured_service(**settings: Any) -> Any:
    """A SuspendService configured with ``settings`` (and a Prometheus URL nothing listens
    on) and prepared, as its command line would: its settings checked, nothing started."""
    from traitlets.config import Config

    from ..service import SuspendService

    cfg = Config()
    cfg.SuspendService.prometheus_url = "http://127.0.0.1:9"
    for key, value in settings.items():
        setattr(cfg.SuspendService, key, value)
    svc = SuspendService(config=cfg)
    svc.prepare()
    return svc
