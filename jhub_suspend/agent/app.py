"""The node agent: a small HTTP service on each node that checkpoints a container through its
own node's kubelet, pushes the archive as an OCI checkpoint image and deletes the archive.

HTTP API (JSON; errors are ``{"message": ...}``):

- ``POST /api/checkpoints`` ``{"namespace", "pod", "container", "image", "annotations"}`` →
  201 ``{"image": "repo@sha256:...", "digest", "size", "archive_bytes", "timings"}``, and for
  a pod holding GPUs ``"gpu": {"device_mode": "cdi" | "legacy" | null, "devices": [...]}``
  (the node's device mode, and the GPUs the container held as its ``spec.dump`` names them);
  400 bad input, 401 no or bad token, 403 image outside the repository, 404 pod or container
  not on this node, 409 a checkpoint of that pod is already running, 502 kubelet or runtime
  failure, 503 registry unreachable, 500 verification failure.
- ``DELETE /api/images?ref=...`` → 204 (also when the registry has no such image); 403
  outside the repository.
- ``GET /healthz`` (no token) → 200 ``{"node", "kubelet": "ok" or the error, "criu": "ok" or
  what the node's CRIU configuration lacks, "checkpoints"}``.
- ``GET /capabilities`` (no token) → 200 ``{"node", "gpu": {"cuda_plugin", "cuda_checkpoint",
  "device_mode", "simulated", "memory_available"}}``: what this node offers GPU checkpoints that
  no node label says, and its available memory in bytes as of the request (``MemAvailable``,
  null when unreadable), which must stage a GPU server's device memory (see
  :class:`jhub_suspend.gpu.AgentGpuReport`).
- ``GET /metrics`` (no token) → Prometheus text.

Every answer carries the ``X-JHub-Suspend-Agent`` header, so a client can tell the agent's own
502/503 from a proxy's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import re
import signal
import socket
import ssl
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets import Bool, Float, Integer, List, TraitError, Unicode, default, validate
from traitlets.config import Application

from .. import images
from ..archive import CHECKPOINT_NAME_ANNOTATIONS
from ..configfile import ConfigFileApplication
from ..errors import JhubSuspendError, OwnError
from ..gpu import CUDA_PLUGIN_FILE, DEVICE_MODES, AgentGpuReport, is_nvidia_cdi_spec
from .checkpointer import (
    FAILURE_REASONS,
    Checkpointer,
    CheckpointError,
    RegistryImages,
    sweep_orphans,
)
from .criuconfig import criu_config_options, criu_config_problem
from .kubelet import KubeletClient, KubeletError
from .protocol import AGENT_HEADER, CheckpointRequest, CheckpointResult

SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
TOKEN_ENV = "JHUB_SUSPEND_AGENT_TOKEN"
MAX_ANNOTATION_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
DNS_LABEL = re.compile(_LABEL)
DNS_SUBDOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*")
# ASCII: a tag's \w is the OCI distribution spec's [A-Za-z0-9_], not Unicode's.
IMAGE_REF = re.compile(
    rf"(?P<name>{REPOSITORY.pattern})"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?",
    re.ASCII,
)


class AgentConfigError(OwnError, ValueError):
    """The agent's configuration cannot work; the message says what to set."""


class ApiError(web.HTTPError, JhubSuspendError):
    """An error answer with a message for the caller (tornado answers it as its status)."""

    def __init__(self, status: int, message: str) -> None:
        web.HTTPError.__init__(self, status)
        JhubSuspendError.__init__(self, status, message)


# ---- input validation (pure) -----------------------------------------------------------------


def _field(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{key!r} must be a non-empty string")
    return value


def _name(body: Mapping[str, Any], key: str, pattern: re.Pattern[str], limit: int) -> str:
    value = _field(body, key)
    if len(value) > limit or not pattern.fullmatch(value):
        raise ApiError(400, f"{key} {value!r} is not a valid Kubernetes name")
    return value


def check_ref(ref: str, repository: str, *, allow_digest: bool) -> str:
    """``ref`` if it is an image reference under ``repository``: 400 if malformed, 403 if
    outside."""
    m = IMAGE_REF.fullmatch(ref)
    if not m or len(ref) > 512:
        raise ApiError(400, f"{ref!r} is not a valid image reference")
    if m["digest"] and not allow_digest:
        raise ApiError(400, f"{ref!r} carries a digest; name a tag, the push assigns the digest")
    name = m["name"]
    if not repository or not (name == repository or name.startswith(repository + "/")):
        raise ApiError(403, f"{ref!r} is outside this agent's repository {repository!r}")
    return ref


def check_annotations(value: Any, container: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, "'annotations' must be an object of strings")
    for k, v in value.items():
        if not isinstance(k, str) or not k or not isinstance(v, str):
            raise ApiError(400, f"annotation {k!r}: keys and values must be strings")
        if len(k) > 317 or any(c.isspace() or c == "=" for c in k):
            raise ApiError(400, f"annotation key {k!r} is not valid")
        try:
            (k + v).encode()
        except UnicodeEncodeError:
            # JSON's \ud800 escapes decode to lone surrogates, which no registry keeps as sent.
            raise ApiError(400, f"annotation {k!r} is not valid Unicode text") from None
    if len(json.dumps(value)) > MAX_ANNOTATION_BYTES:
        raise ApiError(400, f"annotations exceed {MAX_ANNOTATION_BYTES} bytes")
    for name in CHECKPOINT_NAME_ANNOTATIONS:
        if value.get(name, container) != container:
            raise ApiError(400, f"annotation {name} must name the container")
    return dict(value)


def parse_json_body(raw: bytes) -> Any:
    """A request body's JSON value, or a 400 :class:`ApiError`."""
    try:
        return json.loads(raw or b"")
    except (ValueError, RecursionError):
        # RecursionError: nesting deeper than the interpreter's recursion limit.
        raise ApiError(400, "the body must be JSON") from None


def parse_checkpoint_request(body: Any, repository: str) -> CheckpointRequest:
    """A :class:`CheckpointRequest` from a request body, or an :class:`ApiError` (400/403)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    namespace = _name(body, "namespace", DNS_LABEL, 63)
    pod = _name(body, "pod", DNS_SUBDOMAIN, 253)
    container = _name(body, "container", DNS_LABEL, 63)
    image = check_ref(_field(body, "image"), repository, allow_digest=False)
    annotations = check_annotations(body.get("annotations"), container)
    gpus = body.get("gpus", 0)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 0 <= gpus <= 1024:
        raise ApiError(400, "'gpus' must be a whole number from 0 to 1024")
    return CheckpointRequest(namespace, pod, container, image, annotations, gpus)


# ---- metrics -----------------------------------------------------------------------------------


class AgentMetrics:
    """The agent's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.checkpoints = Counter(
            "jhub_suspend_agent_checkpoints",
            "Checkpoints attempted, by outcome (success, failure).",
            ["outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "jhub_suspend_agent_checkpoint_duration_seconds",
            "Seconds per phase of successful checkpoints (checkpoint, push, verify, total).",
            ["phase"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.bytes = Histogram(
            "jhub_suspend_agent_checkpoint_bytes",
            "Bytes of successful checkpoints: the archive and the pushed image's layers.",
            ["kind"],
            buckets=tuple(2**i for i in range(20, 37, 2)),
            registry=r,
        )
        self.failures = Counter(
            "jhub_suspend_agent_failures",
            "Failed checkpoints by reason; cleanup counts archives that could not be deleted.",
            ["reason"],
            registry=r,
        )
        self.gpu_checkpoints = Counter(
            "jhub_suspend_agent_gpu_checkpoints",
            "Checkpoints of pods holding GPUs whose device state was verified, by device_state: "
            "real (CRIU's CUDA plugin recorded it) or simulated (the local cluster's simulated "
            "plugin; never a real CUDA checkpoint).",
            ["device_state"],
            registry=r,
        )
        for kind in ("real", "simulated"):
            self.gpu_checkpoints.labels(kind)
        self.in_progress = Gauge(
            "jhub_suspend_agent_checkpoints_in_progress",
            "Checkpoints running now.",
            registry=r,
        )
        for outcome in ("success", "failure"):
            self.checkpoints.labels(outcome)
        for reason in (*FAILURE_REASONS, "cleanup"):
            self.failures.labels(reason)

    def success(self, result: CheckpointResult) -> None:
        self.checkpoints.labels("success").inc()
        for phase, seconds in result.timings.items():
            self.duration.labels(phase).observe(seconds)
        self.bytes.labels("archive").observe(result.archive_bytes)
        self.bytes.labels("image").observe(result.size)

    def failure(self, reason: str) -> None:
        self.checkpoints.labels("failure").inc()
        self.failures.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# ---- HTTP handlers ----------------------------------------------------------------------------


class BaseHandler(web.RequestHandler):
    authenticated = True

    def initialize(self, agent: NodeAgent) -> None:
        self.agent = agent

    def set_default_headers(self) -> None:
        self.set_header(AGENT_HEADER, "1")
        self.set_header("Content-Type", "application/json; charset=utf-8")

    def prepare(self) -> None:
        if self.authenticated:
            self.agent.authenticate(self.request.headers.get("Authorization", ""))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        err = exc[1] if isinstance(exc, tuple) else None
        if isinstance(err, ApiError):
            message = err.message
        elif isinstance(err, web.HTTPError) and err.log_message:
            message = err.log_message % err.args if err.args else err.log_message
        else:
            message = self._reason if status_code < 500 else "internal error in the node agent"
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="jhub-suspend-agent"')
        self.finish(json.dumps({"message": message}))

    def json_body(self) -> Any:
        return parse_json_body(self.request.body)


class CheckpointsHandler(BaseHandler):
    caller_gone = False

    def on_connection_close(self) -> None:
        self.caller_gone = True

    async def post(self) -> None:
        req = parse_checkpoint_request(self.json_body(), self.agent.repository)
        result = await self.agent.checkpoint(req)
        if self.caller_gone:
            # The caller (the hub) died or gave up: nobody will record this image, and the pod
            # is still running (it is deleted only after this answer), so the image is an
            # unowned copy of the notebook's memory.
            await self.agent.abandon(result)
            return
        self.set_status(201)
        self.finish(json.dumps(result.to_json()))


class ImagesHandler(BaseHandler):
    async def delete(self) -> None:
        ref = self.get_argument("ref", "")
        if not ref:
            raise ApiError(400, "the ref query argument is required")
        await self.agent.delete_image(check_ref(ref, self.agent.repository, allow_digest=True))
        self.set_status(204)
        self.finish()


class HealthHandler(BaseHandler):
    authenticated = False

    async def get(self) -> None:
        self.finish(json.dumps(await self.agent.health()))


class CapabilitiesHandler(BaseHandler):
    authenticated = False

    async def get(self) -> None:
        report = await asyncio.to_thread(self.agent.gpu_report)
        self.finish(json.dumps({"node": self.agent.node_name, "gpu": report.to_json()}))


class MetricsHandler(BaseHandler):
    authenticated = False

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.agent.metrics.exposition())


class NotFoundHandler(BaseHandler):
    authenticated = False

    def prepare(self) -> None:
        raise ApiError(404, f"no such endpoint: {self.request.path}")


# ---- the application ---------------------------------------------------------------------------


class NodeAgent(ConfigFileApplication):
    """The jhub-suspend node agent: checkpoints containers on this node into OCI images."""

    name = "jhub-suspend-agent"
    description = __doc__
    aliases = {  # noqa: RUF012 (traitlets declares these as instance variables)
        "config": "NodeAgent.config_file",
        "ip": "NodeAgent.ip",
        "port": "NodeAgent.port",
        "node-name": "NodeAgent.node_name",
        "kubelet-url": "NodeAgent.kubelet_url",
        "checkpoint-dir": "NodeAgent.checkpoint_dir",
        "repository": "NodeAgent.repository",
        "log-level": "Application.log_level",
    }
    flags = {  # noqa: RUF012
        **Application.flags,
        "generate-config": (
            {"NodeAgent": {"generate_config": True}},
            "Print a config file with every setting and its help, commented out, and exit "
            "(jhub-suspend-agent --generate-config > agent_config.py).",
        ),
    }

    node_name = Unicode(help="This node's name (the downward API's spec.nodeName).").tag(
        config=True
    )

    @default("node_name")
    def _default_node_name(self) -> str:
        # @validate does not see dynamic defaults
        return (os.environ.get("NODE_NAME") or socket.gethostname()).strip()

    @validate("node_name")
    def _valid_node_name(self, proposal: dict) -> str:
        return str(proposal["value"]).strip()

    node_ip = Unicode(help="This node's IP (the downward API's status.hostIP).").tag(config=True)

    @default("node_ip")
    def _default_node_ip(self) -> str:
        return os.environ.get("NODE_IP", "127.0.0.1").strip()

    kubelet_url = Unicode(
        help="Base URL of this node's kubelet; default https://{node_ip}:10250."
    ).tag(config=True)

    @default("kubelet_url")
    def _default_kubelet_url(self) -> str:
        host = f"[{self.node_ip}]" if ":" in self.node_ip else self.node_ip
        return f"https://{host}:10250"

    @validate("kubelet_url")
    def _valid_kubelet_url(self, proposal: dict) -> str:
        url = str(proposal["value"]).strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise TraitError(f"kubelet_url must be an http(s) URL, not {url!r}")
        return url

    kubelet_token_file = Unicode(
        SERVICE_ACCOUNT_TOKEN,
        help="""File holding the token the agent sends to the kubelet; read on every call,
        since service-account tokens are rotated. The token needs only `create` on
        `nodes/checkpoint`.""",
    ).tag(config=True)
    kubelet_token = Unicode(
        "", help="The kubelet token itself (tests, local clusters); wins over kubelet_token_file."
    ).tag(config=True)
    kubelet_ca_file = Unicode(
        "", help="CA bundle that signed the kubelet's serving certificate; empty: system CAs."
    ).tag(config=True)
    kubelet_tls_verify = Bool(
        True,
        help="""Verify the kubelet's certificate. Clusters whose kubelets use self-signed
        certificates need False (as metrics-server's --kubelet-insecure-tls).""",
    ).tag(config=True)
    kubelet_connect_timeout = Float(10.0, help="Seconds to connect to the kubelet.").tag(
        config=True
    )
    kubelet_connect_retries = Integer(
        3, help="Retries when the kubelet cannot be connected to; answers are never retried."
    ).tag(config=True)

    checkpoint_dir = Unicode(
        "/var/lib/kubelet/checkpoints",
        help="""Where the kubelet writes checkpoint archives, mounted at the same path in the
        agent. The agent reads and deletes archives only inside it.""",
    ).tag(config=True)

    @validate("checkpoint_dir")
    def _valid_checkpoint_dir(self, proposal: dict) -> str:
        path = str(proposal["value"]).strip()
        if not os.path.isabs(path):
            raise TraitError(f"checkpoint_dir must be an absolute path, not {path!r}")
        return os.path.normpath(path)

    checkpoint_timeout = Float(
        300.0, help="Seconds the kubelet may take to checkpoint (its ?timeout=)."
    ).tag(config=True)

    @validate("checkpoint_timeout")
    def _valid_timeout(self, proposal: dict) -> float:
        if proposal["value"] <= 0:
            raise TraitError("checkpoint_timeout must be positive")
        return float(proposal["value"])

    orphan_archive_age = Float(
        help="""Delete `checkpoint-*.tar` archives in checkpoint_dir that are older than this
        many seconds and not in use, e.g. one the kubelet finished after a timeout.
        0 disables. Default: twice checkpoint_timeout, at least 10 minutes.""",
    ).tag(config=True)

    orphan_sweep_interval = Float(
        60.0, help="Seconds between sweeps of orphaned archives (see orphan_archive_age)."
    ).tag(config=True)

    @validate("orphan_sweep_interval")
    def _valid_sweep_interval(self, proposal: dict) -> float:
        if proposal["value"] <= 0:
            raise TraitError("orphan_sweep_interval must be positive")
        return float(proposal["value"])

    @default("orphan_archive_age")
    def _default_orphan_age(self) -> float:
        return max(600.0, 2 * self.checkpoint_timeout)

    max_concurrent_checkpoints = Integer(
        1,
        help="""Checkpoints run at once on this node; more wait their turn. A second request
        for a pod whose checkpoint is running is refused with 409.""",
    ).tag(config=True)

    @validate("max_concurrent_checkpoints")
    def _valid_concurrency(self, proposal: dict) -> int:
        if proposal["value"] < 1:
            raise TraitError("max_concurrent_checkpoints must be at least 1")
        return int(proposal["value"])

    criu_config_files = List(
        Unicode(),
        ["/etc/criu/runc.conf", "/etc/criu/crun.conf"],
        help="""The node's CRIU configuration files, as the runtime reads them (runc reads
        runc.conf; crun reads crun.conf, then runc.conf). Mount the host's /etc/criu read-only
        at the same path. `GET /healthz` reports under `criu` whether they let CRIU checkpoint a
        notebook (they must set `tcp-close`).""",
    ).tag(config=True)

    criu_plugin_dir = Unicode(
        "/usr/lib/criu",
        help=f"""CRIU's plugin directory on this node (CRIU's default --libdir), mounted
        read-only at the same path. GPU servers are suspended only on nodes where it holds
        CRIU's CUDA plugin ({CUDA_PLUGIN_FILE}); `GET /capabilities` reports it.""",
    ).tag(config=True)
    cuda_checkpoint_paths = List(
        Unicode(),
        ["/usr/bin/cuda-checkpoint", "/usr/local/bin/cuda-checkpoint"],
        help="""Where NVIDIA's cuda-checkpoint tool may be on this node (mounted read-only at
        the same paths). CRIU's CUDA plugin needs it with drivers before r580; `GET
        /capabilities` reports whether one of them is an executable file.""",
    ).tag(config=True)
    cdi_spec_dirs = List(
        Unicode(),
        ["/etc/cdi", "/var/run/cdi"],
        help="""The node's CDI spec directories (mounted read-only at the same paths). With a
        spec for nvidia.com/gpu in one of them the node's device mode is reported as `cdi`
        (GPUs are remapped by UUID on restore), else `legacy`. See gpu_device_mode.""",
    ).tag(config=True)
    gpu_device_mode = Unicode(
        "auto",
        help="""How the node hands GPUs to containers: `cdi`, `legacy`, or `auto` (from
        cdi_spec_dirs). Set it where the device plugin's strategy differs from what the CDI
        specs suggest.""",
    ).tag(config=True)

    @validate("gpu_device_mode")
    def _valid_gpu_device_mode(self, proposal: dict) -> str:
        mode = str(proposal["value"]).strip().lower()
        if mode not in ("auto", *DEVICE_MODES):
            raise TraitError(f"gpu_device_mode must be auto, cdi or legacy, not {mode!r}")
        return mode

    meminfo_path = Unicode(
        "/proc/meminfo",
        help="""Where the agent reads its node's available memory (`MemAvailable`), reported by
        `GET /capabilities` at each request: a GPU server is suspended only when its node can
        stage the GPU memory it uses in host memory. A container sees the host's
        /proc/meminfo unless LXCFS or similar masks it; then mount the host's file elsewhere
        and point this at it.""",
    ).tag(config=True)

    simulated_cuda_plugin = Bool(
        False,
        help="""Local cluster only: the node's CUDA plugin is the local cluster's simulation,
        whose marker in a GPU pod's checkpoint stands in for device state. Reported as
        `simulated` and counted apart; never a real CUDA checkpoint. Never set it on a real
        node.""",
    ).tag(config=True)

    repository = Unicode(
        "",
        help="""Image repository prefix the agent pushes to and deletes from, e.g.
        registry.example.org/jhub-suspend. Requests for other images are refused (403).""",
    ).tag(config=True)

    @validate("repository")
    def _valid_repository(self, proposal: dict) -> str:
        repo = str(proposal["value"]).strip().removeprefix("docker://").rstrip("/")
        if repo and not REPOSITORY.fullmatch(repo):
            raise TraitError(f"repository {repo!r} is not a repository name (no tag or digest)")
        return repo

    registry_tls_verify = Bool(True, help="Verify the registry's TLS certificate.").tag(config=True)
    registry_auth_file = Unicode(
        "",
        help="""Registry credentials (docker config.json, e.g. mounted from a Secret), passed
        to skopeo as --authfile.""",
    ).tag(config=True)
    image_timeout = Float(600.0, help="Seconds each skopeo command may take (a push of GBs).").tag(
        config=True
    )

    api_token = Unicode(
        help=f"""Token callers send as `Authorization: Bearer <token>`; default from
        ${TOKEN_ENV}. Required unless allow_unauthenticated or ssl_client_ca is set.""",
    ).tag(config=True)

    @default("api_token")
    def _default_api_token(self) -> str:
        return os.environ.get(TOKEN_ENV, "").strip()

    @validate("api_token")
    def _valid_api_token(self, proposal: dict) -> str:
        return str(proposal["value"]).strip()

    allow_unauthenticated = Bool(
        False, help="Accept requests without a token (local development only)."
    ).tag(config=True)
    ssl_certfile = Unicode("", help="TLS certificate the agent serves with.").tag(config=True)
    ssl_keyfile = Unicode("", help="Key of ssl_certfile.").tag(config=True)
    ssl_client_ca = Unicode(
        "", help="CA for client certificates: set it to require mTLS (CERT_REQUIRED)."
    ).tag(config=True)

    ip = Unicode("", help="Address to listen on; empty: all interfaces.").tag(config=True)
    port = Integer(9770, help="Port to listen on; 0 picks a free one.").tag(config=True)
    shutdown_timeout = Float(
        30.0, help="Seconds a stop waits for running checkpoints before cancelling them."
    ).tag(config=True)

    # ---- lifecycle ---------------------------------------------------------------------------

    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)
        self.metrics = AgentMetrics()
        self._server: HTTPServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        self.in_flight: set[tuple[str, str]] = set()
        self.bound_port = 0

    def check_config(self) -> None:
        """Raise :class:`AgentConfigError` for a configuration that cannot work safely."""
        if not self.repository:
            raise AgentConfigError("NodeAgent.repository is not set: where should images go?")
        if not (self.api_token or self.ssl_client_ca or self.allow_unauthenticated):
            raise AgentConfigError(
                f"no API token: set ${TOKEN_ENV} or NodeAgent.api_token (or require client "
                "certificates with NodeAgent.ssl_client_ca); NodeAgent.allow_unauthenticated "
                "turns authentication off for local development only"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise AgentConfigError("ssl_certfile and ssl_keyfile must be set together")
        if self.ssl_client_ca and not self.ssl_certfile:
            raise AgentConfigError("ssl_client_ca (mTLS) needs ssl_certfile and ssl_keyfile")

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.ssl_certfile:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        if self.ssl_client_ca:
            ctx.load_verify_locations(self.ssl_client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def image_config(self) -> images.ImageConfig:
        return images.ImageConfig(
            timeout=self.image_timeout,
            authfile=self.registry_auth_file or None,
        )

    def make_app(self) -> web.Application:
        args = {"agent": self}
        return web.Application(
            [
                (r"/api/checkpoints/?", CheckpointsHandler, args),
                (r"/api/images/?", ImagesHandler, args),
                (r"/healthz", HealthHandler, args),
                (r"/capabilities", CapabilitiesHandler, args),
                (r"/metrics", MetricsHandler, args),
            ],
            default_handler_class=NotFoundHandler,
            default_handler_args=args,
        )

    async def start_server(self) -> int:
        """Check the configuration, listen, and return the bound port."""
        self.check_config()
        self.kubelet = KubeletClient(
            self.kubelet_url,
            token=self.kubelet_token,
            token_file=self.kubelet_token_file,
            ca_file=self.kubelet_ca_file,
            tls_verify=self.kubelet_tls_verify,
            connect_timeout=self.kubelet_connect_timeout,
            connect_retries=self.kubelet_connect_retries,
        )
        self.image_store = RegistryImages(self.registry_tls_verify, self.image_config())
        self.checkpointer = Checkpointer(
            self.kubelet,
            self.image_store,
            self.checkpoint_dir,
            node_name=self.node_name,
            timeout=self.checkpoint_timeout,
            gpu_report=self.gpu_report,
            accept_simulated_gpu_state=self.simulated_cuda_plugin,
            on_gpu_checkpoint=lambda kind: self.metrics.gpu_checkpoints.labels(kind).inc(),
        )
        self._semaphore = asyncio.Semaphore(self.max_concurrent_checkpoints)
        if self.orphan_archive_age > 0:
            # Before serving, no checkpoint is this agent's: what a previous agent left (one
            # killed mid-suspension) holds a notebook's memory and is no one's now.
            swept = await asyncio.to_thread(sweep_orphans, self.checkpoint_dir, 0.0)
            if swept:
                self.log.warning("swept %d archive(s) a previous agent left", len(swept))
        sockets = bind_sockets(self.port, self.ip or None)
        self._server = HTTPServer(
            self.make_app(), ssl_options=self.ssl_context(), max_body_size=MAX_BODY_BYTES
        )
        self._server.add_sockets(sockets)
        self.bound_port = sockets[0].getsockname()[1]
        if self.orphan_archive_age > 0:
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="archive-sweeper")
        self.log.info(
            "node agent for node %s on port %d: kubelet %s, checkpoints in %s, repository %s%s",
            self.node_name,
            self.bound_port,
            self.kubelet_url,
            self.checkpoint_dir,
            self.repository,
            ", mTLS" if self.ssl_client_ca else "",
        )
        if not self.api_token and not self.ssl_client_ca:
            self.log.warning("authentication is OFF (allow_unauthenticated)")
        return self.bound_port

    async def stop_server(self) -> None:
        """Stop listening, let running checkpoints finish (up to shutdown_timeout), close."""
        if self._server is None:
            return
        self._server.stop()
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._tasks:
            self.log.info("waiting for %d running checkpoint(s)", len(self._tasks))
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.shutdown_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self._server.close_all_connections()
        self._server = None

    def start(self) -> None:
        try:
            asyncio.run(self._serve_forever())
        except AgentConfigError as e:
            self.log.critical("%s", e)
            self.exit(1)

    async def _serve_forever(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start_server()
        try:
            await stop.wait()
        finally:
            await self.stop_server()

    async def _sweep_loop(self) -> None:
        while True:  # start_server swept already
            await asyncio.sleep(self.orphan_sweep_interval)  # the schedule itself
            await asyncio.to_thread(
                sweep_orphans,
                self.checkpoint_dir,
                self.orphan_archive_age,
                set(self.checkpointer.archives_in_use),
            )

    # ---- operations ------------------------------------------------------------------------

    def authenticate(self, header: str) -> None:
        """Raise 401 unless ``header`` is ``Bearer <api_token>`` (or no token is required)."""
        if not self.api_token:
            return
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if (
            scheme.lower() != "bearer"
            or not value
            or not hmac.compare_digest(value.encode(), self.api_token.encode())
        ):
            raise ApiError(401, "missing or invalid token (send Authorization: Bearer <token>)")

    async def checkpoint(self, req: CheckpointRequest) -> CheckpointResult:
        """Run one checkpoint (409 if one of the same pod runs); errors become ApiErrors."""
        key = (req.namespace, req.pod)
        if key in self.in_flight:
            raise ApiError(409, f"a checkpoint of {req.namespace}/{req.pod} is already running")
        self.in_flight.add(key)
        task = asyncio.create_task(self._checkpoint(req), name=f"checkpoint {req.pod}")
        # Tornado does not cancel a handler whose caller went away: the checkpoint goes on and
        # cleans up after itself. stop_server waits for these tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self.in_flight.discard(key))
        return await task

    async def _checkpoint(self, req: CheckpointRequest) -> CheckpointResult:
        where = f"{req.namespace}/{req.pod}/{req.container}"
        async with self._semaphore:
            self.metrics.in_progress.inc()
            failed_cleanups = self.checkpointer.cleanup_failures
            try:
                self.log.info("checkpointing %s into %s", where, req.image)
                result = await self.checkpointer.checkpoint(req)
            except CheckpointError as e:
                self.metrics.failure(e.reason)
                self.log.warning("checkpoint of %s failed (%s): %s", where, e.reason, e.message)
                raise ApiError(e.status, e.message) from e
            except Exception as e:
                self.metrics.failure("internal")
                self.log.exception("checkpoint of %s failed", where)
                raise ApiError(500, f"checkpoint of {where} failed: {e}") from e
            finally:
                self.metrics.in_progress.dec()
                cleanup = self.checkpointer.cleanup_failures - failed_cleanups
                if cleanup:
                    self.metrics.failures.labels("cleanup").inc(cleanup)
        self.metrics.success(result)
        self.log.info(
            "checkpointed %s as %s: %d bytes archive, %d bytes image, %s",
            where,
            result.image,
            result.archive_bytes,
            result.size,
            ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()),
        )
        return result

    async def abandon(self, result: CheckpointResult) -> None:
        """Delete the image of a checkpoint whose caller went away before the answer."""
        self.log.warning(
            "the caller of the checkpoint %s went away before the answer; deleting the image",
            result.image,
        )
        try:
            await self.delete_image(result.image)
        except ApiError as e:
            self.metrics.failures.labels("cleanup").inc()
            self.log.error("could not delete abandoned image %s: %s", result.image, e.message)

    async def delete_image(self, ref: str) -> None:
        """Delete ``ref`` from the registry; an image that is already gone counts as deleted."""
        try:
            await self.image_store.delete(ref)
        except images.ImageNotFound:
            self.log.info("image %s was already gone", ref)
        except images.ImageError as e:
            # skopeo reports a missing manifest on delete in words of its own ("Image may not
            # exist ..."): ask the registry whether the image is there before calling it failed.
            if not await self._image_exists(ref):
                self.log.info("image %s was already gone", ref)
                return
            raise ApiError(503, f"registry: {e}") from e
        else:
            self.log.info("deleted image %s", ref)

    async def _image_exists(self, ref: str) -> bool:
        try:
            await self.image_store.inspect(ref)
        except images.ImageNotFound:
            return False
        except images.ImageError:
            return True  # unknown: do not report a delete that may have failed as done
        return True

    async def health(self) -> dict[str, Any]:
        try:
            answer = await self.kubelet.healthz()
            kubelet = "ok" if answer == "ok" else f"unexpected answer: {answer[:200]}"
        except KubeletError as e:
            if e.status in (401, 403):
                kubelet = f"reachable, /healthz not permitted ({e})"
            else:
                kubelet = f"error: {e}"
        except Exception as e:
            kubelet = f"error: {e}"
        return {
            "node": self.node_name,
            "kubelet": kubelet,
            "criu": await asyncio.to_thread(self.criu_config_health),
            "checkpoints": len(self.in_flight),
        }

    def gpu_report(self) -> AgentGpuReport:
        """What this node offers GPU checkpoints (reads the file system: call in a thread)."""
        plugin = os.path.isfile(os.path.join(self.criu_plugin_dir, CUDA_PLUGIN_FILE))
        tool = any(os.path.isfile(p) and os.access(p, os.X_OK) for p in self.cuda_checkpoint_paths)
        mode = self.gpu_device_mode
        if mode == "auto":
            mode = "cdi" if self._nvidia_cdi_spec() else "legacy"
        return AgentGpuReport(
            cuda_plugin=plugin,
            cuda_checkpoint=tool,
            device_mode=mode,  # type: ignore[arg-type]
            simulated=self.simulated_cuda_plugin,
            memory_available=self.memory_available(),
        )

    def memory_available(self) -> int | None:
        """The node's available memory in bytes (``MemAvailable`` in :attr:`meminfo_path`), or
        None when unreadable."""
        try:
            with open(self.meminfo_path) as f:
                return meminfo_available(f.read())
        except OSError as e:
            self.log.warning("Cannot read %s: %s", self.meminfo_path, e)
            return None

    def _nvidia_cdi_spec(self) -> bool:
        for directory in self.cdi_spec_dirs:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                if not entry.name.endswith((".json", ".yaml", ".yml")):
                    continue
                try:
                    with open(entry.path, errors="replace") as f:
                        if is_nvidia_cdi_spec(f.read(1 << 20)):
                            return True
                except OSError:
                    continue
        return False

    def criu_config_health(self) -> str:
        """ "ok", or what is wrong with the node's CRIU configuration for notebooks."""
        files: dict[str, list[str] | None] = {}
        for path in self.criu_config_files:
            try:
                with open(path) as f:
                    files[path] = criu_config_options(f.read())
            except FileNotFoundError:
                continue
            except OSError:
                files[path] = None
        if not files:
            files = {path: None for path in self.criu_config_files}
        return criu_config_problem(files) or "ok"


def meminfo_available(text: str) -> int | None:
    """``MemAvailable`` of a /proc/meminfo text, in bytes; None when absent or unreadable."""
    m = re.search(r"^MemAvailable:\s+(\d+)\s*kB\s*$", text, re.M)
    return int(m.group(1)) * 1024 if m else None


main = NodeAgent.launch_instance
