"""SuspendService: the JupyterHub service ``suspend`` (policy loop, REST API, metrics).

Every setting is a traitlet; set them in a config file (``-f suspend_config.py``,
``c.SuspendService.idle_window = 1800``) or on the command line
(``--SuspendService.dry_run=True``). The policy's settings have the names of
:class:`jhub_suspend.policy.PolicyConfig`'s fields and are turned into one in
:meth:`SuspendService._build_policy_config`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth
from jupyterhub.services.auth import check_scopes as hub_check_scopes
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import (
    Bool,
    Bytes,
    Callable,
    Dict,
    Enum,
    Float,
    Instance,
    Integer,
    Set,
    TraitError,
    Unicode,
    Union,
    default,
    validate,
)
from traitlets.config import catch_config_error
from traitlets.utils.importstring import import_item

from .. import promql
from ..agent.client import AgentClient
from ..agent.client_config import AgentClientConfig, node_agent_url
from ..configfile import ConfigFileApplication
from ..deprecation import renamed_setting
from ..gpu import CapabilityConfig
from ..policy import PolicyConfig, decide
from . import handlers, ui
from .actions import Actions
from .drain import Drains
from .eviction import Evictions, ReloadingTLS, webhook_app
from .gpucaps import GpuCapabilities
from .hubclient import HubClient
from .kube import Kube, make_api_client
from .loop import PolicyLoop
from .metrics import ServiceMetrics
from .operations import Operations
from .prom import PrometheusReader
from .retention import Retention

POLICY_FIELDS = tuple(PolicyConfig.__dataclass_fields__)
# The policy's defaults are PolicyConfig's: the traits below take theirs from it.
POLICY_DEFAULTS = PolicyConfig()
ADMIN_SCOPE = "custom:jhub-suspend:admin"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def routes(service: ui.ChartsContext) -> list[tuple]:
    """Every route: the pages first, then the API, whose last route answers 404 under api/."""
    return [*ui.routes(service), *handlers.routes(service)]


def _default_namespace() -> str:
    if ns := os.environ.get("POD_NAMESPACE"):
        return ns
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    return "default"


class SuspendService(AgentClientConfig, ConfigFileApplication):
    name = "jhub-suspend-service"

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.INFO

    @default("log_format")
    def _default_log_format(self) -> str:
        return (
            "[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s %(module)s:%(lineno)d] %(message)s"
        )

    @default("log_datefmt")
    def _default_log_datefmt(self) -> str:
        return "%Y-%m-%d %H:%M:%S"

    description = "Suspends idle Jupyter servers to CRIU checkpoints; a JupyterHub service."

    aliases = {  # noqa: RUF012 (traitlets declares these as instance variables)
        "f": "SuspendService.config_file",
        "config": "SuspendService.config_file",
        "prometheus-url": "SuspendService.prometheus_url",
        "port": "SuspendService.port",
        "cycle-interval": "SuspendService.cycle_interval",
        "log-level": "Application.log_level",
    }
    flags = {  # noqa: RUF012
        "dry-run": ({"SuspendService": {"dry_run": True}}, "Report decisions, act on none."),
        "generate-config": (
            {"SuspendService": {"generate_config": True}},
            "Print a config file with every setting and its help, commented out, and exit "
            "(jhub-suspend-service --generate-config > suspend_config.py).",
        ),
    }

    # ---- policy (the fields of policy.PolicyConfig, with its defaults) ----------------------

    cpu_threshold = Float(
        POLICY_DEFAULTS.cpu_threshold,
        help="A server is idle only while its CPU use stays under this fraction of its CPU "
        "request for the whole idle window (0.05 = 5 %).",
    ).tag(config=True)
    idle_window = Float(
        POLICY_DEFAULTS.idle_window,
        help="Seconds over which CPU (and GPU) must stay under the thresholds.",
    ).tag(config=True)
    activity_timeout = Float(
        POLICY_DEFAULTS.activity_timeout,
        help="A server is idle only when the hub has seen no activity for this many seconds.",
    ).tag(config=True)
    gpu_threshold = Float(
        POLICY_DEFAULTS.gpu_threshold,
        help="Servers that request GPUs are idle only while GPU utilisation stays under this "
        "many percent.",
    ).tag(config=True)
    gpu_idle_window = Float(
        POLICY_DEFAULTS.gpu_idle_window,
        help="Idle window of GPU servers, for both their CPU and GPU signals (an idle GPU is "
        "the scarcest thing held, so it is shorter).",
    ).tag(config=True)
    gpu_activity_timeout = Float(
        POLICY_DEFAULTS.gpu_activity_timeout, help="Activity timeout of GPU servers, in seconds."
    ).tag(config=True)
    min_coverage = Float(
        POLICY_DEFAULTS.min_coverage,
        help="Fraction of the expected samples a window must hold; servers with sparser data "
        "are never idle.",
    ).tag(config=True)
    exempt_users = Set(
        Unicode(),
        set(POLICY_DEFAULTS.exempt_users),
        help="Users whose servers are never suspended.",
    ).tag(config=True)
    exempt_groups = Set(
        Unicode(),
        set(POLICY_DEFAULTS.exempt_groups),
        help="Members of these hub groups are never suspended.",
    ).tag(config=True)
    exempt_server_names = Set(
        Unicode(),
        set(POLICY_DEFAULTS.exempt_server_names),
        help='Server names never suspended ("" exempts default servers).',
    ).tag(config=True)
    allow_keep_running = Bool(
        POLICY_DEFAULTS.allow_keep_running,
        help="Honour the keep-running opt-out users set on their servers.",
    ).tag(config=True)
    max_keep_running = Float(
        POLICY_DEFAULTS.max_keep_running,
        allow_none=True,
        help="Cap, in seconds from when it was set, on a keep-running opt-out; None: no cap.",
    ).tag(config=True)
    max_suspensions_per_cycle = Integer(
        POLICY_DEFAULTS.max_suspensions_per_cycle, help="At most this many suspensions per cycle."
    ).tag(config=True)
    max_concurrent_suspensions = Integer(
        POLICY_DEFAULTS.max_concurrent_suspensions,
        help="At most this many suspensions under way at once (checkpoints load the nodes).",
    ).tag(config=True)
    dry_run = Bool(POLICY_DEFAULTS.dry_run, help="Decide and report, but suspend nothing.").tag(
        config=True
    )
    capacity_pressure = Bool(
        POLICY_DEFAULTS.capacity_pressure,
        help="While pods are Pending for lack of CPU, memory or GPUs, suspend first the idle "
        "servers that free what they lack; when none wait, relax timeouts by relaxed_factor.",
    ).tag(config=True)
    relaxed_factor = Float(
        POLICY_DEFAULTS.relaxed_factor,
        help="Activity timeouts are multiplied by this while nobody is Pending (1 = off).",
    ).tag(config=True)
    waste_weights = Dict(
        dict(POLICY_DEFAULTS.waste_weights),
        help="Weight of an unused CPU core, GiB of memory and GPU when ranking servers by waste.",
    ).tag(config=True)
    warn_before = Float(
        POLICY_DEFAULTS.warn_before,
        help="""Warn users this many seconds before their server is suspended (0: never). No
        server is suspended before it has been warned for this long.""",
    ).tag(config=True)
    gpu_resources = Set(
        Unicode(),
        set(POLICY_DEFAULTS.gpu_resources),
        help="Kubernetes resource names that count as GPUs.",
    ).tag(config=True)

    decide_hook = Union(
        [Callable(), Unicode()],
        help="""The policy's decision, replaceable: a function with the signature of
        jhub_suspend.policy.decide (the default), or its import name such as
        "mysite.policy.decide". Each cycle it gets every server's observation, the Pending
        pods, the policy's settings, the time and the metrics' health, and returns a
        jhub_suspend.policy.Plan; it may call jhub_suspend.policy.decide and change its plan.
        It must be pure (no IO: it runs in the loop) and fast. Whatever it returns, nothing is
        suspended in dry-run mode or while the metrics are unusable.""",
    ).tag(config=True)

    @default("decide_hook")
    def _default_decide_hook(self) -> Any:
        return decide

    @validate("decide_hook")
    def _validate_decide_hook(self, proposal: Any) -> Any:
        hook = proposal.value
        if isinstance(hook, str):
            try:
                hook = import_item(hook)
            except (ImportError, AttributeError, ValueError) as e:
                raise TraitError(f"decide_hook: cannot import {proposal.value!r}: {e}") from None
        if not callable(hook):
            raise TraitError(f"decide_hook: {proposal.value!r} is not callable")
        return hook

    @validate(*POLICY_FIELDS)
    def _validate_policy_field(self, proposal: Any) -> Any:
        trial = {f: getattr(self, f) for f in POLICY_FIELDS}
        trial[proposal.trait.name] = proposal.value
        try:
            PolicyConfig(**trial)
        except (TypeError, ValueError) as e:
            raise TraitError(f"SuspendService.{proposal.trait.name}: {e}") from None
        return proposal.value

    # ---- signals ----------------------------------------------------------------------------

    prometheus_url = Unicode(
        help="Prometheus's base URL, e.g. http://prometheus-server.monitoring.svc"
    ).tag(config=True)

    @default("prometheus_url")
    def _default_prometheus_url(self) -> str:
        return os.environ.get("JHUB_SUSPEND_PROMETHEUS_URL", "")

    prometheus_headers = Dict(
        help="Extra HTTP headers for Prometheus (e.g. Authorization); never logged."
    ).tag(config=True)
    prometheus_verify_tls = Bool(True, help="Verify Prometheus's TLS certificate.").tag(config=True)
    prometheus_timeout = Float(10.0, help="Seconds each Prometheus query may take.").tag(
        config=True
    )
    max_metrics_age = Float(
        180,
        help="Fail safe when the newest CPU, memory, request or (with GPU servers) GPU sample "
        "is older than this many seconds.",
    ).tag(config=True)
    query_step = Float(
        60, help="Seconds between the points of the windowed subqueries (>= scrape interval)."
    ).tag(config=True)
    rate_window = Float(
        120, help="Seconds of the CPU rate() window; must hold at least two scrapes."
    ).tag(config=True)
    gpu_source = Enum(
        ["auto", "util", "engine_active"],
        "auto",
        help="GPU utilisation metric: DCGM_FI_DEV_GPU_UTIL (util), "
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE (engine_active), or engine-active where present (auto).",
    ).tag(config=True)
    gpu_aggregation = Enum(
        ["avg", "max"], "avg", help="How a pod's GPUs combine into one value."
    ).tag(config=True)
    metric_names = Dict(
        help="Metric and label names, overriding jhub_suspend.promql.MetricNames's defaults, "
        'e.g. {"gpu_pod": "exported_pod", "gpu_namespace": "exported_namespace"}.'
    ).tag(config=True)

    @validate("metric_names")
    def _validate_metric_names(self, proposal: Any) -> dict:
        known = set(promql.MetricNames.__dataclass_fields__)
        unknown = set(proposal.value) - known
        if unknown:
            raise TraitError(
                f"metric_names: unknown keys {sorted(unknown)}; known: {sorted(known)}"
            )
        try:
            promql.MetricNames(**proposal.value)
        except ValueError as e:
            raise TraitError(f"metric_names: {e}") from None
        return dict(proposal.value)

    # ---- which servers -----------------------------------------------------------------------

    namespace = Unicode(help="Namespace of the notebook pods (KubeSpawner's namespace).").tag(
        config=True
    )

    @default("namespace")
    def _default_namespace(self) -> str:
        return _default_namespace()

    pod_regex = Unicode(
        "jupyter-.*", help="RE2 regex on notebook pod names (Prometheus anchors it)."
    ).tag(config=True)
    pending_pods_all_namespaces = Bool(
        False,
        help="Look for Pending pods in every namespace (needs a cluster-wide pod list), not "
        "only in the notebooks' namespace.",
    ).tag(config=True)

    # ---- hub --------------------------------------------------------------------------------

    hub_api_url = Unicode(help="The hub's REST API URL (JUPYTERHUB_API_URL).").tag(config=True)

    @default("hub_api_url")
    def _default_hub_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")

    hub_api_token = Unicode(help="The service's hub API token (JUPYTERHUB_API_TOKEN).").tag(
        config=True
    )

    @default("hub_api_token")
    def _default_hub_api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    hub_page_size = Integer(200, help="Users per hub API page (the hub caps it).").tag(config=True)
    hub_timeout = Float(30.0, help="Seconds each hub API request may take.").tag(config=True)

    # ---- kubernetes -------------------------------------------------------------------------

    kubeconfig = Unicode(help="A kubeconfig file; empty: in-cluster or ~/.kube/config.").tag(
        config=True
    )

    @default("kubeconfig")
    def _default_kubeconfig(self) -> str:
        return os.environ.get("KUBECONFIG", "")

    in_cluster = Bool(
        None,
        allow_none=True,
        help="Use the pod's service account (None: when running in a cluster without kubeconfig).",
    ).tag(config=True)
    kube_timeout = Float(30.0, help="Seconds each Kubernetes API request may take.").tag(
        config=True
    )

    # ---- checkpoints ------------------------------------------------------------------------

    checkpoint_repository = Unicode(
        help="Where the spawner pushes checkpoints (SuspendingKubeSpawner.checkpoint_repository)."
    ).tag(config=True)

    @default("checkpoint_repository")
    def _default_checkpoint_repository(self) -> str:
        return os.environ.get("JHUB_SUSPEND_CHECKPOINT_REPOSITORY", "")

    agent_url = Unicode(
        help="""One node agent URL, e.g. the agents' Service; used before `agent_urls`. The
        service only deletes images through an agent, which any agent can do."""
    ).tag(config=True)

    # ---- GPU servers ------------------------------------------------------------------------

    node_agent_url = Unicode(
        "http://{host_ip}:9770",
        help="""URL of the node agent on a given node, asked what the node offers GPU
        checkpoints (`GET /capabilities`). `{node}` and `{host_ip}` are replaced by the node's
        name and InternalIP; `agent_urls` wins for the nodes it names. As the spawner's
        `agent_url`.""",
    ).tag(config=True)
    gpu_native_driver = Integer(
        CapabilityConfig.native_driver,
        help="""NVIDIA driver major version from which CRIU's CUDA plugin checkpoints through
        the driver's own API. GPU servers are suspended only on nodes whose driver (GPU
        feature discovery's nvidia.com/cuda.driver-version.major) is at least this, or at
        least `gpu_tool_driver` with NVIDIA's cuda-checkpoint tool on the node.""",
    ).tag(config=True)
    gpu_tool_driver = Integer(
        CapabilityConfig.tool_driver,
        help="""The oldest NVIDIA driver major version that checkpoints CUDA processes (through
        NVIDIA's cuda-checkpoint tool, which the node agent must find on the node).""",
    ).tag(config=True)
    gpu_capability_ttl = Float(
        30,
        help="""Seconds a node agent's report about its node (GPU checkpoint support, and the
        node's available memory, which must stage a GPU server's device memory) is reused by
        the policy; a failed report is asked again after 30 s. The available memory the policy
        uses is as old as this at most, hence the short default (one small request per GPU node
        and period). A user's or an admin's Suspend asks the agent afresh. Node labels are read
        every cycle.""",
    ).tag(config=True)

    used_checkpoint_retention = Float(
        86400,
        help="""Seconds after which the retention sweep deletes images of restored or
        discarded checkpoints (those the spawner keeps, with
        `SuspendingKubeSpawner.keep_used_checkpoints`), and orphaned discard markers.""",
    ).tag(config=True)

    # None by default, so that any value set, 0 included, reaches the new setting
    checkpoint_retention = Float(
        None,
        allow_none=True,
        help="Deprecated since jhub-suspend 0.1: use `used_checkpoint_retention`.",
    ).tag(config=True)

    _checkpoint_retention_renamed = renamed_setting(
        "checkpoint_retention", "used_checkpoint_retention", "0.1"
    )

    max_suspended_age = Float(
        None,
        allow_none=True,
        help="Discard checkpoints of servers suspended for longer than this many seconds "
        "(None: keep them until the user returns).",
    ).tag(config=True)
    retention_interval = Float(3600, help="Seconds between retention sweeps.").tag(config=True)

    # ---- the loop ---------------------------------------------------------------------------

    cycle_interval = Float(60, help="Seconds between policy cycles.").tag(config=True)
    cycle_timeout = Float(300, help="A cycle taking longer than this is abandoned.").tag(
        config=True
    )
    suspend_timeout = Float(
        900, help="Seconds a suspension may take until the server stopped."
    ).tag(config=True)
    resume_timeout = Float(
        600, help="Seconds a resume started through the service may take until the server is ready."
    ).tag(config=True)
    restore_timeout = Float(
        None, allow_none=True, help="Deprecated since jhub-suspend 0.1: use `resume_timeout`."
    ).tag(config=True)

    _restore_timeout_renamed = renamed_setting("restore_timeout", "resume_timeout", "0.1")

    drain_concurrency = Integer(
        2,
        help="""Suspensions a drain (`POST api/nodes/{node}/drain`, `jhub-suspend drain NODE`)
        runs at once. Every server of a drain is on the one node, whose agent checkpoints
        `NodeAgent.max_concurrent_checkpoints` pods at a time (default 1) and queues the
        others, and a queued checkpoint's wait counts against the spawner's
        `checkpoint_timeout`. 2 keeps that agent busy (the next checkpoint is queued while the
        last one's pod is deleted and the hub records the stop), and each of its requests
        waits behind at most one of its other checkpoints. Raise it with the agents' setting.
        Only this bounds a drain; the policy counts a drain's suspensions as in flight against
        `max_concurrent_suspensions`, so it starts fewer of its own meanwhile.""",
    ).tag(config=True)

    @validate("drain_concurrency")
    def _validate_drain_concurrency(self, proposal: Any) -> int:
        if proposal.value < 1:
            raise TraitError("SuspendService.drain_concurrency must be at least 1")
        return int(proposal.value)

    clock = Callable(
        help="Returns the current time as an aware datetime; tests inject their own."
    ).tag(config=True)

    @default("clock")
    def _default_clock(self) -> Any:
        return _utcnow

    # ---- the eviction webhook ----------------------------------------------------------------

    webhook_certfile = Unicode(
        "",
        help="""TLS certificate (PEM, with its chain) of the validating admission webhook that
        turns evictions of notebook pods (kubectl drain, the cluster autoscaler) into
        suspensions. The API server calls it over HTTPS on a listener of its own
        (webhook_ip:webhook_port), not through JupyterHub's proxy; its
        ValidatingWebhookConfiguration's caBundle must hold the CA that signed this
        certificate, for the Service name it calls (helm-values/webhook/). Empty: no webhook.
        A renewed certificate (same files) is loaded within a minute.""",
    ).tag(config=True)
    webhook_keyfile = Unicode("", help="Private key (PEM) of `webhook_certfile`.").tag(config=True)
    webhook_ip = Unicode(
        "",
        help="Address the eviction webhook listens on; empty: every interface (the API "
        "server calls it from outside the pod).",
    ).tag(config=True)
    webhook_port = Integer(8443, help="Port the eviction webhook listens on.").tag(config=True)
    eviction_hold_seconds = Float(
        3600,
        help="""How long the eviction of a notebook that cannot be suspended (its spawner cannot
        checkpoint it, its suspension failed, it is still starting, or the hub cannot be
        asked) is refused, from when that was first seen, before it is allowed (and the
        notebook killed, as without jhub-suspend). Refusing at first is the safe side: nothing
        is lost while an admin or the user suspends or stops it by hand, and the drain retries
        by itself; allowing in the end keeps a drain (an upgrade, a scale-down) from hanging
        for ever on one notebook. Each such notebook is logged and counted
        (jhub_suspend_eviction_unsuspendable_total, jhub_suspend_eviction_held_pods). 0:
        allow at once. Notebooks that can be suspended are never let go before their
        suspension ends.""",
    ).tag(config=True)

    @validate("eviction_hold_seconds")
    def _validate_eviction_hold_seconds(self, proposal: Any) -> float:
        if not proposal.value >= 0:
            raise TraitError("eviction_hold_seconds must be 0 or more")
        return float(proposal.value)

    # ---- HTTP -------------------------------------------------------------------------------

    service_url = Unicode(help="Where the service listens (JUPYTERHUB_SERVICE_URL).").tag(
        config=True
    )

    @default("service_url")
    def _default_service_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    ip = Unicode(help="Address to listen on (default: from service_url).").tag(config=True)

    @default("ip")
    def _default_ip(self) -> str:
        return urlparse(self.service_url).hostname or "127.0.0.1"

    port = Integer(help="Port to listen on (default: from service_url).").tag(config=True)

    @default("port")
    def _default_port(self) -> int:
        return urlparse(self.service_url).port or 10101

    service_prefix = Unicode(help="URL prefix (JUPYTERHUB_SERVICE_PREFIX).").tag(config=True)

    @default("service_prefix")
    def _default_service_prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/suspend/")

    @validate("service_prefix")
    def _validate_service_prefix(self, proposal: Any) -> str:
        value = "/" + proposal.value.strip("/") + "/"
        return value.replace("//", "/")

    admin_scope = Unicode(
        ADMIN_SCOPE,
        help="Holders of this custom hub scope (define it in c.JupyterHub.custom_scopes) are "
        "admins of this service, as are hub admins.",
    ).tag(config=True)
    cookie_secret = Bytes(help="Secret for the OAuth cookie (random per process).").tag(config=True)

    @default("cookie_secret")
    def _default_cookie_secret(self) -> bytes:
        return os.urandom(32)

    hub_auth = Instance(HubOAuth)

    @default("hub_auth")
    def _default_hub_auth(self) -> HubOAuth:
        return HubOAuth(
            parent=self,
            api_token=self.hub_api_token,
            api_url=self.hub_api_url,
            oauth_client_id=os.environ.get("JUPYTERHUB_CLIENT_ID", "service-suspend"),
        )

    # ---- derived ----------------------------------------------------------------------------

    def _build_policy_config(self) -> PolicyConfig:
        """The one place traits become the policy's settings."""
        return PolicyConfig(**{f: getattr(self, f) for f in POLICY_FIELDS})

    @property
    def policy_config(self) -> PolicyConfig:
        return self._policy_config

    def now(self) -> datetime:
        return self.clock()

    def is_admin(self, model: dict[str, Any]) -> bool:
        """Hub admins and holders of the admin scope."""
        if model.get("admin") is True:
            return True
        return bool(hub_check_scopes({self.admin_scope}, set(model.get("scopes") or ())))

    def agent(self) -> AgentClient | None:
        url = self.agent_url or next(iter(self.agent_urls.values()), "")
        return self.agent_client(url) if url else None

    def agent_on(self, node: str, host_ip: str) -> AgentClient | None:
        """The agent on ``node`` (for what only it knows of its node), or None without an
        address for it."""
        url = self.agent_urls.get(node) or node_agent_url(self.node_agent_url, node, host_ip)
        if not url:
            return None
        client = self.agent_client(url, timeout=10.0)
        # a report is not worth a stalled cycle: an agent that is down is simply not capable
        client.reconnect_timeout = min(client.reconnect_timeout, 5.0)
        return client

    # ---- lifecycle --------------------------------------------------------------------------

    @catch_config_error
    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)
        self.prepare()

    def prepare(self) -> None:
        """Check the settings and build what needs no IO (also for in-process use)."""
        self._policy_config = self._build_policy_config()
        self.names = promql.MetricNames(**self.metric_names)
        pods = promql.PodSelector(self.namespace, self.pod_regex)
        gpu_source = cast(promql.GpuSource, self.gpu_source)
        per_gpu = cast(promql.GpuAggregation, self.gpu_aggregation)
        self.queries = promql.build_queries(
            self.names,
            pods,
            cpu_window=self.idle_window,
            gpu_window=self.gpu_idle_window,
            step=self.query_step,
            rate_window=self.rate_window,
            gpu_source=gpu_source,
            per_gpu=per_gpu,
        )
        self.chart_queries = promql.chart_queries(
            self.names,
            pods,
            rate_window=self.rate_window,
            step=self.query_step,
            gpu_source=gpu_source,
            per_gpu=per_gpu,
        )
        if not self.prometheus_url:
            raise TraitError("SuspendService.prometheus_url must be set")
        try:
            self.gpu_config = CapabilityConfig(self.gpu_native_driver, self.gpu_tool_driver)
        except ValueError as e:
            raise TraitError(f"SuspendService.gpu_native_driver/gpu_tool_driver: {e}") from None
        if bool(self.webhook_certfile) != bool(self.webhook_keyfile):
            raise TraitError(
                "SuspendService.webhook_certfile and webhook_keyfile go together: set both "
                "(the eviction webhook) or neither"
            )
        self.metrics = ServiceMetrics()
        self.operations = Operations()
        self._gpu_capabilities: GpuCapabilities | None = None

    @property
    def gpu_capabilities(self) -> GpuCapabilities:
        """Which nodes can checkpoint GPU servers (made on first use, on :attr:`kube`)."""
        if self._gpu_capabilities is None:
            self._gpu_capabilities = GpuCapabilities(
                self.kube, self.agent_on, self.gpu_config, ttl=self.gpu_capability_ttl, log=self.log
            )
        return self._gpu_capabilities

    @gpu_capabilities.setter
    def gpu_capabilities(self, value: GpuCapabilities) -> None:
        self._gpu_capabilities = value

    async def setup(self) -> None:
        """Create the shared clients: one Kubernetes client, one hub client, one Prometheus
        reader per process."""
        if not hasattr(self, "_policy_config"):
            self.prepare()
        self.api_client = await make_api_client(self.kubeconfig, self.in_cluster)
        self.kube = Kube(self.api_client, timeout=self.kube_timeout, log=self.log)
        self.hub = HubClient(
            self.hub_api_url,
            self.hub_api_token,
            timeout=self.hub_timeout,
            page_size=self.hub_page_size,
            log=self.log,
        )
        self.prometheus = PrometheusReader(
            self.prometheus_url,
            headers=self.prometheus_headers,
            verify_tls=self.prometheus_verify_tls,
            timeout=self.prometheus_timeout,
        )
        self.actions = Actions(self)
        self.drains = Drains(self)
        self.retention = Retention(self)
        self.loop = PolicyLoop(self)
        self.evictions = Evictions(self)

    def make_app(self) -> web.Application:
        return web.Application(
            routes(self),
            cookie_secret=self.cookie_secret,
            log_function=self._log_request,
        )

    def _log_request(self, handler: web.RequestHandler) -> None:
        status = handler.get_status()
        level = self.log.info if status < 400 else self.log.warning
        if handler.request.path.endswith(("/metrics", "/health")) and status < 400:
            level = self.log.debug
        # the path only: query strings may carry tokens
        level(
            "%s %s %s %.1fms",
            status,
            handler.request.method,
            handler.request.path,
            1000 * handler.request.request_time(),
        )

    async def serve(self) -> HTTPServer:
        """Listen, and start the policy loop."""
        server = HTTPServer(self.make_app(), xheaders=True)
        server.listen(self.port, self.ip)
        self._http_server = server
        if self.webhook_certfile:
            self._serve_webhook()
        self.loop.start()
        self.log.info(
            "jhub-suspend service at http://%s:%s%s (Prometheus %s, every %ss%s)",
            self.ip,
            self.port,
            self.service_prefix,
            self.prometheus_url,
            self.cycle_interval,
            ", dry run" if self.dry_run else "",
        )
        return server

    def _serve_webhook(self) -> None:
        tls = self._webhook_tls = ReloadingTLS(
            self.webhook_certfile, self.webhook_keyfile, self.log
        )
        server = HTTPServer(webhook_app(self.evictions), ssl_options=tls.context)
        server.listen(self.webhook_port, self.webhook_ip)
        tls.start()
        self._webhook_server = server
        self.log.info(
            "Eviction webhook at https://%s:%s/eviction (held evictions are allowed after %s s)",
            self.webhook_ip or "*",
            self.webhook_port,
            self.eviction_hold_seconds,
        )

    async def close(self) -> None:
        if getattr(self, "_webhook_server", None) is not None:
            self._webhook_server.stop()
            self._webhook_tls.stop()
        if hasattr(self, "loop"):
            await self.loop.stop()
        if hasattr(self, "operations"):
            await self.operations.cancel_all()
        if getattr(self, "_http_server", None) is not None:
            self._http_server.stop()
        if hasattr(self, "prometheus"):
            self.prometheus.close()
        if hasattr(self, "api_client"):
            await self.api_client.close()

    async def run(self) -> None:
        await self.setup()
        await self.serve()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await self.close()

    def start(self) -> None:
        asyncio.run(self.run())


def main(argv: list[str] | None = None) -> None:
    SuspendService.launch_instance(argv)
