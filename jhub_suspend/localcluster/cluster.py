"""LocalCluster: the single-machine Kubernetes that the demo and the tests run on.

It starts, in one process, the emulated API server, the scheduler and one kubelet per node,
and beside them the real servers: Debian's docker-registry for the node images and checkpoint
images, containerd (with runc and CRIU) that the kubelets drive through CRI, and Prometheus
scraping the kubelets' cAdvisor and DCGM endpoints and the kube-state-metrics endpoint. It
writes a kubeconfig for clients and a ``cluster.json`` describing where everything listens, and
stops all of it again, even after a failure.

Run it with ``python -m jhub_suspend.localcluster`` from this repository (it is not in the
wheel: see setup.cfg).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets import Bool, Dict, Float, Integer, List, Unicode, default, validate
from traitlets.config import Application

from . import apiserver, metrics, nodeimages, registrygc, services
from .containerd import Containerd, gateway_address
from .faults import FaultPoints
from .imagegc import IMAGE_GC_PERIOD, ImageFilesystem, ImageGcPolicy
from .kubelet import Kubelet, NodeConfig
from .scheduler import Scheduler
from .store import Store

#: back-off before restarting a node agent that exited, doubled while it keeps failing
AGENT_RESTART_DELAY = 1.0
AGENT_MAX_RESTART_DELAY = 60.0

DEFAULT_NODES: list[dict[str, Any]] = [
    {"name": "node-1", "cpu": "2", "memory": "4Gi"},
    {"name": "gpu-node-1", "cpu": "2", "memory": "4Gi", "gpus": 1},
]


class KubeStateMetricsHandler(web.RequestHandler):
    def initialize(self, store: Store) -> None:
        self.store = store

    def get(self) -> None:
        pods, _ = self.store.list("pods")
        nodes, _ = self.store.list("nodes")
        self.set_header("Content-Type", "text/plain; version=0.0.4")
        self.finish(metrics.kube_state_metrics(pods, nodes))


class LocalCluster(Application):
    """A local Kubernetes for jhub-suspend: emulated API server and kubelets, real everything else."""

    name = "jhub-suspend-localcluster"
    description = __doc__

    state_dir = Unicode(
        help="Directory for the cluster's state: pod logs, volumes, checkpoints, the registry's "
        "storage, Prometheus's data, the kubeconfig and cluster.json."
    ).tag(config=True)

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return os.environ.get("JHUB_SUSPEND_STATE", "/var/lib/jhub-suspend/localcluster")

    @validate("state_dir")
    def _validate_state_dir(self, proposal: dict) -> str:
        return os.path.abspath(proposal["value"])

    host = Unicode("127.0.0.1", help="Loopback address the API server and kubelets bind.").tag(
        config=True
    )
    api_port = Integer(0, help="Port of the Kubernetes API server; 0 picks a free one.").tag(
        config=True
    )
    nodes = List(
        Dict(),
        help="""The simulated nodes. Each is a dict with `name` and optionally `cpu`, `memory`,
        `gpus` (a count of simulated `nvidia.com/gpu`), `gpu_product`, `gpu_driver` (the
        driver version GPU feature discovery's labels give, default 580.65.06; "" for none),
        `cuda_plugin` (the node has CRIU's CUDA plugin, simulated; default true),
        `gpu_device_mode` (`cdi` or `legacy`), `labels` (e.g. `nvidia.com/mig.strategy`) and
        `taints`.""",
    ).tag(config=True)

    @default("nodes")
    def _default_nodes(self) -> list[dict]:
        return [{**n} for n in DEFAULT_NODES]

    @validate("nodes")
    def _validate_nodes(self, proposal: dict) -> list[dict]:
        fields = set(NodeConfig.__dataclass_fields__)
        names = set()
        for node in proposal["value"]:
            unknown = set(node) - fields
            if unknown:
                raise ValueError(
                    f"unknown node setting(s) {sorted(unknown)}; known: {sorted(fields)}"
                )
            if not node.get("name"):
                raise ValueError(f"every node needs a name: {node!r}")
            if node["name"] in names:
                raise ValueError(f"node name {node['name']!r} is used twice")
            if node.get("gpu_device_mode", "cdi") not in ("cdi", "legacy"):
                raise ValueError(f"gpu_device_mode of {node['name']} must be cdi or legacy")
            names.add(node["name"])
        if not names:
            raise ValueError("the cluster needs at least one node")
        return proposal["value"]

    pod_cidr = Unicode(
        "10.98.0.0/24",
        help="Private range for pod addresses. It exists only on this machine, on the bridge.",
    ).tag(config=True)
    bridge = Unicode("jhs0", help="Name of the bridge the pods' veth pairs join.").tag(config=True)
    registry_port = Integer(0, help="Port of the registry; 0 picks a free one.").tag(config=True)
    registry_gc_interval = Float(
        3600,
        help="""Seconds between garbage collections of the registry (0: never). Deleted
        checkpoint images free their storage only when it runs. Each collection waits until no
        node agent has a checkpoint in flight, then stops the registry for the collector's
        run (about a second), as an operator's maintenance window does; the registry also
        collects once at start when its storage is not empty.
        """,
    ).tag(config=True)
    image_gc_high_threshold_percent = Integer(
        ImageGcPolicy.high_threshold_percent,
        help="""Usage of the image filesystem (the one holding containerd's root), in percent,
        at or above which the kubelets remove unused images, as the kubelet's
        `imageGCHighThresholdPercent`. 100 turns image garbage collection off (unless
        `image_maximum_gc_age` is set). The nodes share one containerd, so they share its
        images and this filesystem.
        """,
    ).tag(config=True)
    image_gc_low_threshold_percent = Integer(
        ImageGcPolicy.low_threshold_percent,
        help="""Usage of the image filesystem, in percent, that removing unused images aims to
        come down to, as the kubelet's `imageGCLowThresholdPercent`. At most
        `image_gc_high_threshold_percent`.
        """,
    ).tag(config=True)

    @validate("image_gc_high_threshold_percent", "image_gc_low_threshold_percent")
    def _validate_image_gc_percent(self, proposal: dict) -> int:
        if not 0 <= proposal["value"] <= 100:
            raise ValueError(f"{proposal['trait'].name} must be between 0 and 100")
        return int(proposal["value"])

    image_minimum_gc_age = Float(
        ImageGcPolicy.minimum_age,
        help="""Seconds since a kubelet first saw an image before it may remove it, as the
        kubelet's `imageMinimumGCAge` (2 minutes): an image just pulled is about to be used.
        """,
    ).tag(config=True)
    image_maximum_gc_age = Float(
        ImageGcPolicy.maximum_age,
        help="""Seconds after its last use by a container that an unused image is removed,
        whatever the disk usage, as the kubelet's `imageMaximumGCAge`; 0 (the kubelet's
        default) never. Counted from the kubelet's start at the earliest.
        """,
    ).tag(config=True)
    image_gc_period = Float(
        IMAGE_GC_PERIOD,
        help="""Seconds between the kubelets' image garbage collections (a kubelet's is fixed
        at 5 minutes); 0 never.
        """,
    ).tag(config=True)
    start_prometheus = Bool(True, help="Start Prometheus scraping the cluster's metrics.").tag(
        config=True
    )
    prometheus_port = Integer(0, help="Port of Prometheus; 0 picks a free one.").tag(config=True)
    scrape_interval = Unicode("2s", help="How often Prometheus scrapes the cluster.").tag(
        config=True
    )
    tokens = Dict(
        help="""Bearer tokens the API server and kubelets accept, as
        `{token: {"user": name, "permissions": ["nodes/checkpoint", ...] or ["*"]}}`.
        A permission is `*` (everything), or `[VERBS ]RESOURCE[/SUBRESOURCE]` allowing the
        comma-separated verbs (all without them), e.g. `create pods/eviction` or
        `get,list pods`; a resource's permission does not cover its subresources, as in RBAC.
        An admin token (`*`) is added when none is given.
        """
    ).tag(config=True)
    start_agents = Bool(
        True,
        help="Start a jhub-suspend node agent per node, as the agent DaemonSet does.",
    ).tag(config=True)
    agent_args = List(
        Unicode(),
        help="Extra command-line arguments for every node agent, e.g. `--NodeAgent.x=y`.",
    ).tag(config=True)
    agent_token = Unicode(
        help="Token the node agents accept; generated when empty. Written to `agent-token`."
    ).tag(config=True)

    @default("agent_token")
    def _default_agent_token(self) -> str:
        return secrets.token_hex(24)

    ready_timeout = Float(60, help="Seconds to wait for each real server to become ready.").tag(
        config=True
    )

    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)
        # Every client authenticates, as on a real cluster: an admin token for the kubeconfig,
        # and tokens as narrow as the real service accounts' for Prometheus and the node agents.
        tokens = dict(self.tokens)
        if not any("*" in v.get("permissions", []) for v in tokens.values()):
            tokens[secrets.token_hex(16)] = {"user": "admin", "permissions": ["*"]}
        self._prometheus_token = secrets.token_hex(16)
        tokens[self._prometheus_token] = {"user": "prometheus", "permissions": ["nodes/metrics"]}
        self._agent_kubelet_token = secrets.token_hex(16)
        tokens[self._agent_kubelet_token] = {
            "user": "system:serviceaccount:jhub-suspend:agent",
            "permissions": ["nodes/checkpoint"],
        }
        self.tokens = tokens
        self.agents: dict[str, services.ManagedProcess] = {}
        self.agent_restarts: dict[str, int] = {}
        self._prometheus: services.PrometheusProcess | None = None
        self._extra_scrape_jobs: list[dict] = []
        self.store = Store()
        #: where tests stop or fail the API server and kubelets on cue (see faults.py)
        self.faults = FaultPoints()
        self.kubelets: list[Kubelet] = []
        self.containerd: Containerd | None = None
        self.images: dict[str, str] = {}
        self.processes = services.ProcessGroup()
        self._servers: list[HTTPServer] = []
        self._tasks: list[asyncio.Task] = []
        self.api_url = ""
        self.ksm_url = ""
        self.registry_host = ""
        self.prometheus_url = ""
        self.registry: services.RegistryProcess | None = None
        self._registry_lock = asyncio.Lock()
        self.registry_metrics: registrygc.RegistryMetrics | None = None

    # ---- start and stop --------------------------------------------------------------------

    async def up(self) -> None:
        """Start the cluster; on any failure stop whatever had started, then re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.down()
            raise

    async def _start(self) -> None:
        image_gc = self.image_gc_policy  # settings that disagree fail before anything starts
        os.makedirs(self.state_dir, exist_ok=True)
        _, port = await apiserver.serve(
            self.store,
            host=self.host,
            port=self.api_port,
            tokens={t: v["user"] for t, v in self.tokens.items()},
            authorizer=apiserver.permissions_authorizer(self._permissions_by_user()),
            kubelet_address=self._kubelet_address,
            faults=self.faults,
        )
        self.api_url = f"http://{self.host}:{port}"
        registry = self.registry = await services.start_registry(
            os.path.join(self.state_dir, "registry"),
            port=self.registry_port,
            group=self.processes,
            timeout=self.ready_timeout,
        )
        self.registry_host = registry.host
        self.registry_metrics = registrygc.RegistryMetrics(registry.storage_dir)
        self.ksm_url = self._serve(
            web.Application(
                [
                    (r"/metrics", KubeStateMetricsHandler, {"store": self.store}),
                    (
                        r"/metrics/registry",
                        registrygc.RegistryMetricsHandler,
                        {"metrics": self.registry_metrics},
                    ),
                ]
            )
        )
        if await asyncio.to_thread(registrygc.storage_bytes, registry.storage_dir):
            await self.collect_registry_garbage()  # what an earlier run left deleted
        # The node images (the notebook image, and busybox as the sandbox image) built by
        # scripts/install.sh, pushed so that containerd pulls them as a node pulls any image.
        self.images = await nodeimages.push_node_images(self.registry_host)
        self.containerd = Containerd(
            os.path.join(self.state_dir, "containerd"),
            bridge=self.bridge,
            pod_cidr=self.pod_cidr,
            registry_host=self.registry_host,
            sandbox_image=self.images["busybox"],
            group=self.processes,
        )
        cri_client = await self.containerd.start(timeout=self.ready_timeout)

        # The node images stay obtainable when image GC removes them: the notebook image is
        # pulled again from the registry (which keeps tagged manifests), by a new pod or by a
        # restore that needs it as its base; the sandbox image is pinned in containerd's
        # configuration, as a node pins its pause image, and GC passes pinned images over.
        imagefs = ImageFilesystem()
        for spec in self.nodes:
            kubelet = Kubelet(
                self.store,
                NodeConfig(**spec),
                cri_client,
                state_dir=self.state_dir,
                runtime_version=self.containerd.runtime_version,
                criu_work_dir=str(self.containerd.criu_work),
                content_dir=self.containerd.content_dir,
                authorize=self._authorize,
                faults=self.faults,
                image_gc=image_gc,
                image_gc_period=self.image_gc_period,
                imagefs=imagefs,
            )
            await kubelet.start(self.host)
            self.kubelets.append(kubelet)
        self._tasks.append(asyncio.create_task(Scheduler(self.store).run(), name="scheduler"))

        if self.start_prometheus:
            prom = await services.start_prometheus(
                os.path.join(self.state_dir, "prometheus"),
                port=self.prometheus_port,
                targets=self.scrape_targets(),
                scrape_interval=self.scrape_interval,
                group=self.processes,
                timeout=self.ready_timeout,
            )
            self.prometheus_url = prom.url
            self._prometheus = prom

        if self.start_agents:
            await self._start_agents()
        if self.registry_gc_interval > 0:
            self._tasks.append(asyncio.create_task(self._registry_gc_loop(), name="registry-gc"))

        apiserver.write_kubeconfig(self.kubeconfig_path, self.api_url, token=self.admin_token)
        Path(self.state_dir, "cluster.json").write_text(json.dumps(self.describe(), indent=2))
        self.log.info(
            "local cluster ready: API %s, registry %s, Prometheus %s",
            self.api_url,
            self.registry_host or "-",
            self.prometheus_url or "-",
        )

    @property
    def image_gc_policy(self) -> ImageGcPolicy:
        """The kubelets' image GC policy (ValueError when the thresholds or ages disagree)."""
        return ImageGcPolicy(
            high_threshold_percent=self.image_gc_high_threshold_percent,
            low_threshold_percent=self.image_gc_low_threshold_percent,
            minimum_age=self.image_minimum_gc_age,
            maximum_age=self.image_maximum_gc_age,
        )

    async def _start_agents(self) -> None:
        """One node agent per node, as separate processes, talking to their own kubelet with a
        token that allows only nodes/checkpoint."""
        secret_dir = os.path.join(self.state_dir, "secrets")
        os.makedirs(secret_dir, mode=0o700, exist_ok=True)
        kubelet_token_file = _write_secret(
            secret_dir, "agent-kubelet-token", self._agent_kubelet_token
        )
        _write_secret(secret_dir, "agent-token", self.agent_token)
        for kubelet in self.kubelets:
            name = kubelet.node.name
            port = services.free_port()
            url = f"http://{self.host}:{port}"
            proc = services.ManagedProcess(
                f"agent-{name}",
                [
                    sys.executable,
                    "-m",
                    "jhub_suspend.agent",
                    f"--NodeAgent.node_name={name}",
                    f"--NodeAgent.kubelet_url=http://{kubelet.address}:{kubelet.port}",
                    f"--NodeAgent.kubelet_token_file={kubelet_token_file}",
                    f"--NodeAgent.checkpoint_dir={kubelet.checkpoint_dir}",
                    f"--NodeAgent.repository={self.checkpoint_repository}",
                    "--NodeAgent.registry_tls_verify=False",
                    f"--NodeAgent.ip={self.host}",
                    f"--NodeAgent.port={port}",
                    *self._gpu_agent_args(kubelet.node),
                    *self.agent_args,
                ],
                log_path=os.path.join(self.state_dir, "agents", f"{name}.log"),
                env={**os.environ, "JHUB_SUSPEND_AGENT_TOKEN": self.agent_token},
                url=url,
                ready_url=f"{url}/healthz",
                group=self.processes,
            )
            await proc.start()
            await proc.wait_ready(timeout=self.ready_timeout)
            self.agents[name] = proc
            self.agent_restarts[name] = 0
            self._tasks.append(
                asyncio.create_task(self._supervise_agent(name), name=f"supervise-agent-{name}")
            )

    def _gpu_agent_args(self, node: NodeConfig) -> list[str]:
        """What a node's agent finds of GPU checkpoint support: a per-node CRIU plugin
        directory holding a stub cuda_plugin.so where the node has the (simulated) plugin, and a
        CDI spec for nvidia.com/gpu in CDI mode. Never the host's own directories."""
        base = os.path.join(self.state_dir, "nodes", node.name)
        plugins, cdi = os.path.join(base, "criu-plugins"), os.path.join(base, "cdi")
        for d in (plugins, cdi):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
        if node.gpus and node.cuda_plugin:
            Path(plugins, "cuda_plugin.so").write_text(
                "SIMULATED by the jhub-suspend local cluster: not CRIU's CUDA plugin\n"
            )
        if node.gpus and node.gpu_device_mode == "cdi":
            Path(cdi, "nvidia.yaml").write_text(
                "# SIMULATED by the jhub-suspend local cluster\n"
                "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: []\n"
            )
        return [
            f"--NodeAgent.criu_plugin_dir={plugins}",
            f"--NodeAgent.cdi_spec_dirs={cdi}",
            f"--NodeAgent.cuda_checkpoint_paths={os.path.join(base, 'no-cuda-checkpoint')}",
            f"--NodeAgent.simulated_cuda_plugin={bool(node.gpus and node.cuda_plugin)}",
        ]

    async def _supervise_agent(self, node: str) -> None:
        """Start a node's agent again whenever it exits, as a kubelet restarts a DaemonSet's
        pod: after a back-off that doubles while it keeps failing (1 s to 60 s)."""
        delay = AGENT_RESTART_DELAY
        while True:
            proc = self.agents[node]
            status = await proc.wait_exit()
            self.log.warning(
                "agent on %s exited with status %s; restarting it in %.0f s", node, status, delay
            )
            await asyncio.sleep(delay)  # the back-off itself, as the kubelet's
            self.processes.discard(proc)
            proc = self.agents[node] = proc.respawn()
            self.agent_restarts[node] += 1
            try:
                await proc.start()
                await proc.wait_ready(timeout=self.ready_timeout)
            except services.ServiceError as e:
                self.log.error("agent on %s did not come back: %s", node, e)
                delay = min(delay * 2, AGENT_MAX_RESTART_DELAY)
            else:
                delay = AGENT_RESTART_DELAY

    # ---- registry garbage collection -------------------------------------------------------

    async def collect_registry_garbage(self) -> registrygc.GcResult:
        """Free the storage of deleted images: with no checkpoint in flight, stop the
        registry, run its garbage collector, start it again on the same port. Skipped (and
        said why) while any agent is checkpointing or cannot tell."""
        assert self.registry is not None and self.registry_metrics is not None
        async with self._registry_lock:
            busy = await self._agents_busy()
            if busy:
                result = registrygc.GcResult(skipped=busy)
                self.log.info("registry garbage collection postponed: %s", busy)
                self.registry_metrics.record(result)
                return result
            registry = self.registry
            storage = registry.storage_dir
            started = time.monotonic()
            before = await asyncio.to_thread(registrygc.storage_bytes, storage)
            await self.stop_registry()
            try:
                await registrygc.collect_garbage(registry.argv[0], registry.argv[-1])
            except Exception:
                self.registry_metrics.runs.labels("failed").inc()
                raise
            finally:
                await self.start_registry_again()
            after = await asyncio.to_thread(registrygc.storage_bytes, storage)
            result = registrygc.GcResult(before, after, time.monotonic() - started)
        self.registry_metrics.record(result)
        self.log.info(
            "registry garbage collection freed %d of %d bytes in %.1f s",
            result.freed,
            before,
            result.seconds,
        )
        return result

    async def stop_registry(self) -> None:
        """Stop the registry (for its garbage collection, or as a fault in tests)."""
        assert self.registry is not None
        await self.registry.stop()
        self.processes.discard(self.registry)

    async def start_registry_again(self) -> None:
        """Start the stopped registry again, on the same port and storage."""
        assert self.registry is not None
        restarted = self.registry.respawn()
        assert isinstance(restarted, services.RegistryProcess)
        await restarted.start()
        await restarted.wait_ready(timeout=self.ready_timeout)
        self.registry = restarted

    async def _agents_busy(self) -> str:
        """Why the registry must not stop now ("" when it may): an agent with a checkpoint in
        flight, or one that does not answer (it may still have a push running)."""
        for node, proc in self.agents.items():
            try:
                resp = await AsyncHTTPClient().fetch(
                    HTTPRequest(f"{proc.url}/healthz", request_timeout=5, connect_timeout=2)
                )
                in_flight = int(json.loads(resp.body).get("checkpoints", 0))
            except (OSError, HTTPClientError, ValueError, TypeError) as e:
                return f"the agent on {node} did not answer ({e})"
            if in_flight:
                return f"the agent on {node} has {in_flight} checkpoint(s) in flight"
        return ""

    async def _registry_gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self.registry_gc_interval)  # the schedule itself
            try:
                await self.collect_registry_garbage()
            except Exception:  # counted by collect_registry_garbage; the next one may succeed
                self.log.exception("registry garbage collection failed")

    @property
    def agent_urls(self) -> dict[str, str]:
        """Where each node's agent listens (the same across its restarts)."""
        return {node: str(proc.url) for node, proc in self.agents.items()}

    @property
    def checkpoint_repository(self) -> str:
        return f"{self.registry_host}/jhub-suspend"

    def _serve(self, app: web.Application) -> str:
        sockets = bind_sockets(0, self.host)
        server = HTTPServer(app)
        server.add_sockets(sockets)
        self._servers.append(server)
        return f"http://{self.host}:{sockets[0].getsockname()[1]}"

    async def down(self) -> None:
        """Stop everything this cluster started: pods, kubelets, servers, network."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for kubelet in self.kubelets:
            try:
                await kubelet.stop()
            except Exception:
                self.log.exception("stopping kubelet %s", kubelet.node.name)
        if self.containerd is not None:
            try:
                await self.containerd.stop()
            except Exception:
                self.log.exception("stopping containerd")
        await self.processes.stop_all()
        for server in self._servers:
            server.stop()
        self.log.info("local cluster stopped")

    # ---- facts for clients -----------------------------------------------------------------

    @property
    def kubeconfig_path(self) -> str:
        return os.path.join(self.state_dir, "kubeconfig")

    @property
    def admin_token(self) -> str | None:
        return next((t for t, v in self.tokens.items() if "*" in v.get("permissions", [])), None)

    def _kubelet_address(self, node: str) -> str | None:
        k = next((k for k in self.kubelets if k.node.name == node), None)
        return f"{k.address}:{k.port}" if k else None

    def _authorize(self, token: str | None, verb: str, resource: str, sub: str) -> str | None:
        """RBAC reduced to what the local cluster needs: a token's permissions (see `tokens`)."""
        entry = self.tokens.get(token or "")
        if not entry:
            return None
        allowed = entry.get("permissions", [])
        return entry["user"] if apiserver.permission_allows(allowed, verb, resource, sub) else None

    def _permissions_by_user(self) -> dict[str, list[str]]:
        """What each user's tokens allow together (the API server authorizes users)."""
        permissions: dict[str, list[str]] = {}
        for entry in self.tokens.values():
            permissions.setdefault(entry["user"], []).extend(entry.get("permissions", []))
        return permissions

    def kubelet(self, node: str) -> Kubelet:
        return next(k for k in self.kubelets if k.node.name == node)

    async def add_scrape_job(self, job: dict) -> None:
        """Have Prometheus also scrape ``job`` (e.g. the hub's suspend service)."""
        self._extra_scrape_jobs.append(job)
        if self._prometheus is not None:
            await self._prometheus.set_targets(self.scrape_targets())

    def scrape_targets(self) -> list[dict]:
        kubelets = [f"{k.address}:{k.port}" for k in self.kubelets]
        return [
            {
                "job": "kubelet-cadvisor",
                "targets": kubelets,
                "metrics_path": "/metrics/cadvisor",
                "bearer_token": self._prometheus_token,
            },
            {"job": "dcgm-exporter", "targets": kubelets, "metrics_path": "/metrics/dcgm"},
            {
                "job": "kube-state-metrics",
                "targets": [self.ksm_url.split("://", 1)[1]],
                "metrics_path": "/metrics",
            },
            {
                "job": "registry",
                "targets": [self.ksm_url.split("://", 1)[1]],
                "metrics_path": "/metrics/registry",
            },
            *self._extra_scrape_jobs,
        ]

    def describe(self) -> dict:
        return {
            "api": self.api_url,
            "kubeconfig": self.kubeconfig_path,
            "registry": self.registry_host,
            "prometheus": self.prometheus_url,
            "kube_state_metrics": self.ksm_url,
            "bridge": self.bridge,
            "gateway": gateway_address(self.pod_cidr),
            "images": self.images,
            "nodes": {k.node.name: f"http://{k.address}:{k.port}" for k in self.kubelets},
            "agents": self.agent_urls,
            "agent_token_file": os.path.join(self.state_dir, "secrets", "agent-token"),
            "checkpoint_repository": self.checkpoint_repository,
        }

    # ---- command line ----------------------------------------------------------------------

    def start(self) -> None:
        asyncio.run(self._run_until_signalled())

    async def _run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.up()
        print(json.dumps(self.describe(), indent=2), flush=True)
        try:
            await stop.wait()
        finally:
            await self.down()


main = LocalCluster.launch_instance


def _write_secret(directory: str, name: str, value: str) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return path
