"""Eviction becomes suspension: the validating admission webhook for ``CREATE pods/eviction``.

``kubectl drain``, the cluster autoscaler and other tools evict pods through the Eviction API
and retry an eviction refused with 429 (as they do for PodDisruptionBudgets). The API server
asks this webhook first (helm-values/webhook/), and it answers:

- for the pod of a running notebook server of this hub: **refused** with code 429 and a
  message that the server is being suspended, and its suspension started
  (:meth:`Actions.start_suspension`, reason ``eviction``), unless one is under way already.
  The suspension checkpoints the server and deletes its pod; the drain's next retry finds no
  pod (the API server answers 404) and goes on. The user's next start restores the server on
  another node.
- for a notebook that **cannot be suspended** (its spawner cannot checkpoint it, it holds
  GPUs it cannot be suspended with safely, its suspension failed, it is still starting, or the
  hub cannot be asked): reported (log and
  ``jhub_suspend_eviction_unsuspendable_total``), then refused for
  ``SuspendService.eviction_hold_seconds`` from when that was first seen, then allowed.
- for every other pod (not a notebook, already gone or going): **allowed**.

A dry run (``kubectl drain --dry-run=server``) is allowed, with what would happen as a warning,
and changes nothing. The API server calls this over HTTPS on a listener of its own
(``SuspendService.webhook_port``), not through JupyterHub's proxy.

:func:`decide` is the decision, a pure function of the review, the pod, the hub's view of its
server and what this service remembers of the pod's earlier evictions; :class:`Evictions` reads
those, acts, and remembers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from tornado import web
from tornado.ioloop import PeriodicCallback

from ..errors import OwnError
from ..kubevalues import rfc3339
from .actions import Actions
from .kube import Kube
from .loop import PolicyLoop
from .metrics import ServiceMetrics
from .observe import ServerView
from .operations import Operation, Operations

REVIEW_VERSION = "admission.k8s.io/v1"
#: KubeSpawner's annotations on a server's pod
USER_ANNOTATION = "hub.jupyter.org/username"
SERVER_NAME_ANNOTATION = "hub.jupyter.org/servername"
#: how long one review may take to decide, under the API server's default webhook timeout
#: (10 s): an answer after it would count as the webhook failing
DECISION_TIMEOUT = 7.0
#: how often the listener looks for a renewed certificate (cert-manager renews in place)
TLS_RELOAD_INTERVAL = 60.0


class ReviewError(OwnError):
    """A request that is not an admission.k8s.io/v1 AdmissionReview (answered with 400)."""

    status = 400


@dataclass(frozen=True)
class EvictionReview:
    """The parts of an AdmissionReview's request the decision reads."""

    uid: str
    operation: str
    resource: tuple[str, str, str]  # group, version, resource
    subresource: str
    namespace: str
    name: str
    dry_run: bool

    @property
    def is_pod_eviction(self) -> bool:
        group, _, resource = self.resource
        return (
            self.operation == "CREATE"
            and group == ""
            and resource == "pods"
            and self.subresource == "eviction"
        )


def _str_field(request: dict[str, Any], key: str, required: bool = True) -> str:
    value = request.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise ReviewError(f"request.{key} must be a non-empty string")
    return value


def parse_review(body: Any) -> EvictionReview:
    """Read an AdmissionReview; raise :class:`ReviewError` saying what is wrong with it."""
    if not isinstance(body, dict):
        raise ReviewError("the body must be an AdmissionReview object")
    if body.get("apiVersion") != REVIEW_VERSION or body.get("kind") != "AdmissionReview":
        raise ReviewError(
            f"expected an AdmissionReview of {REVIEW_VERSION}, got kind {body.get('kind')!r}"
            f" of {body.get('apiVersion')!r}",
        )
    request = body.get("request")
    if not isinstance(request, dict):
        raise ReviewError("the AdmissionReview has no request")
    resource = request.get("resource")
    if not isinstance(resource, dict):
        raise ReviewError("request.resource must be an object")
    parts = tuple(resource.get(k) for k in ("group", "version", "resource"))
    if not all(isinstance(p, str) for p in parts):
        raise ReviewError("request.resource needs group, version and resource strings")
    dry_run = request.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise ReviewError("request.dryRun must be a boolean")
    return EvictionReview(
        uid=_str_field(request, "uid"),
        operation=_str_field(request, "operation"),
        resource=(str(parts[0]), str(parts[1]), str(parts[2])),
        subresource=_str_field(request, "subResource", required=False),
        namespace=_str_field(request, "namespace", required=False),
        name=_str_field(request, "name", required=False),
        dry_run=dry_run,
    )


@dataclass
class Memory:
    """What this service remembers of the evictions of one pod (one run: one uid)."""

    uid: str
    last_seen: datetime
    #: the suspension this webhook started for it
    operation: Operation | None = None
    #: since when its evictions are held because it cannot be suspended, and why
    unsuspendable_since: datetime | None = None
    unsuspendable: str = ""
    released: bool = False


@dataclass(frozen=True)
class Verdict:
    """The answer to one review, and what the service does with it."""

    allowed: bool
    #: why, for the log and the client (kubectl shows a denial's message)
    message: str
    #: the metric's outcome label
    outcome: str
    #: start a suspension of the server
    suspend: bool = False
    #: why it cannot be suspended (the metric's reason label), when it cannot
    unsuspendable: str | None = None
    warnings: tuple[str, ...] = ()
    code: int = 429


def notebook_of(pod: dict[str, Any] | None, namespace: str) -> tuple[str, str] | None:
    """(user, server name) a pod belongs to by KubeSpawner's annotations, if it is in the
    notebooks' namespace; the hub's view of that server then says whether it is this pod."""
    if pod is None:
        return None
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    user = annotations.get(USER_ANNOTATION)
    if metadata.get("namespace") != namespace or not isinstance(user, str) or not user:
        return None
    return user, str(annotations.get(SERVER_NAME_ANNOTATION) or "")


def _label(user: str, server_name: str) -> str:
    return f"the server {user}/{server_name}" if server_name else f"the server of {user}"


def decide(
    review: EvictionReview,
    pod: dict[str, Any] | None,
    view: ServerView | None,
    memory: Memory | None,
    *,
    hold: float,
    now: datetime,
    hub_error: str | None = None,
    gpu_refusal: str | None = None,
) -> Verdict:
    """Allow or refuse one eviction (see the module's docstring).

    ``pod``: the pod as it is now (None: there is none). ``view``: the hub's view of the
    server the pod's annotations name, when that server's pod is this pod (None otherwise, or
    when the hub could not be asked: ``hub_error`` then says why). ``memory``: what was seen
    of this pod's earlier evictions. ``hold``: ``eviction_hold_seconds``. ``gpu_refusal``:
    why the server, which holds GPUs, cannot be suspended safely (None: it can, or holds
    none); it is then held as one that cannot be checkpointed.
    """
    verdict = _decide(
        review,
        pod,
        view,
        memory,
        hold=hold,
        now=now,
        hub_error=hub_error,
        gpu_refusal=gpu_refusal,
    )
    if review.dry_run and (not verdict.allowed or verdict.suspend):
        # A dry run changes nothing, and a refusal would have kubectl retry it for ever.
        return Verdict(True, verdict.message, "dry_run", warnings=(f"dry run: {verdict.message}",))
    return verdict


def _decide(
    review: EvictionReview,
    pod: dict[str, Any] | None,
    view: ServerView | None,
    memory: Memory | None,
    *,
    hold: float,
    now: datetime,
    hub_error: str | None,
    gpu_refusal: str | None,
) -> Verdict:
    if not review.is_pod_eviction:
        return Verdict(True, "not an eviction of a pod; not this webhook's concern", "allowed")
    if pod is None:
        return Verdict(True, f"pod {review.namespace}/{review.name} does not exist", "allowed")
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return Verdict(True, f"pod {review.name} is already being deleted", "allowed")
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return Verdict(True, f"pod {review.name} has terminated", "allowed")
    if view is None and hub_error is None:
        return Verdict(True, f"pod {review.name} is no notebook server's pod", "allowed")
    operation = memory.operation if memory else None
    if view is not None:
        what = _label(view.user, view.server_name)
        if (operation is not None and not operation.done) or view.state == "suspending":
            return Verdict(
                False,
                f"{what} (pod {review.name}) is being suspended: its kernels are saved before"
                " the pod leaves the node, and the eviction succeeds once the pod is gone",
                "suspending",
            )
        if view.state == "stopping":
            return Verdict(True, f"{what} is being stopped", "allowed")
        if operation is not None and operation.status == "failed":
            why, reason = f"its suspension failed: {operation.message}", "suspension_failed"
        elif view.state == "running" and not view.pod_name:
            why, reason = "its spawner cannot checkpoint it", "not_capable"
        elif view.state == "running" and gpu_refusal is not None:
            why = f"it holds GPUs and cannot be suspended safely: {gpu_refusal}"
            reason = "not_capable"
        elif view.state == "running":
            return Verdict(
                False,
                f"{what} (pod {review.name}) is being suspended: its kernels are saved before"
                " the pod leaves the node, and the eviction succeeds once the pod is gone",
                "suspend_started",
                suspend=True,
            )
        elif view.state in ("starting", "restoring"):
            why, reason = f"it is {view.state}; it can be suspended once it runs", "not_running"
        elif view.state == "failed":
            why, reason = "its last suspension failed and it kept running", "suspension_failed"
        else:  # stopped or suspended: the hub runs nothing in this pod
            return Verdict(True, f"{what} is {view.state}", "allowed")
    else:
        what = f"the notebook pod {review.name}"
        why, reason = f"the hub could not be asked about it: {hub_error}", "hub_error"
    since = (memory.unsuspendable_since if memory else None) or now
    until = since + timedelta(seconds=hold)
    if now >= until:
        return Verdict(
            True,
            f"{what} cannot be suspended ({why}); its eviction was held"
            f" {hold:.0f} s (SuspendService.eviction_hold_seconds) and is now allowed",
            "released",
            unsuspendable=reason,
        )
    return Verdict(
        False,
        f"{what} cannot be suspended ({why}); its eviction is refused until {rfc3339(until)}"
        " (SuspendService.eviction_hold_seconds), then allowed: suspend or stop it before then"
        " to keep its work",
        "held",
        unsuspendable=reason,
    )


def review_answer(uid: str, verdict: Verdict) -> dict[str, Any]:
    """The AdmissionReview a verdict is sent back as."""
    response: dict[str, Any] = {"uid": uid, "allowed": verdict.allowed}
    if not verdict.allowed:
        response["status"] = {
            "code": verdict.code,
            "reason": "TooManyRequests" if verdict.code == 429 else "",
            "message": verdict.message,
        }
    if verdict.warnings:
        response["warnings"] = list(verdict.warnings)
    return {"apiVersion": REVIEW_VERSION, "kind": "AdmissionReview", "response": response}


# --- IO: reading, acting, remembering --------------------------------------------------------


class EvictionContext(Protocol):
    """What the webhook uses of the service that runs it."""

    log: logging.Logger
    namespace: str
    kube: Kube
    loop: PolicyLoop
    actions: Actions
    operations: Operations
    metrics: ServiceMetrics
    eviction_hold_seconds: float
    suspend_timeout: float

    def now(self) -> datetime: ...


@dataclass
class Evictions:
    """Answers the reviews, starts the suspensions, and remembers each pod's evictions."""

    service: EvictionContext
    memory: dict[tuple[str, str], Memory] = field(default_factory=dict)

    async def review(self, body: Any) -> dict[str, Any]:
        """The answer to an AdmissionReview; :class:`ReviewError` when it is none."""
        review = parse_review(body)
        svc = self.service
        try:
            verdict = await asyncio.wait_for(self._verdict(review), DECISION_TIMEOUT)
        except Exception as e:  # a webhook must answer; the drain retries a refusal
            svc.log.warning("Eviction of pod %s/%s: cannot decide: %s", review.namespace,
                            review.name, e)  # fmt: skip
            verdict = Verdict(
                False,
                f"jhub-suspend could not decide about pod {review.name} in time"
                f" ({type(e).__name__}: {e}); retry",
                "error",
            )
        svc.metrics.eviction_reviews.labels(verdict.outcome).inc()
        return review_answer(review.uid, verdict)

    async def _verdict(self, review: EvictionReview) -> Verdict:
        svc = self.service
        now = svc.now()
        self._forget_old(now)
        pod = await svc.kube.read_pod(review.namespace, review.name) if review.name else None
        server = notebook_of(pod, svc.namespace) if review.is_pod_eviction else None
        view, hub_error = None, None
        if server is not None:
            try:
                views = await svc.loop.current_views(server[0])
            except Exception as e:
                hub_error = f"{type(e).__name__}: {e}"
            else:
                view = _view_of(views, server, review)
        memory = self._remember(review, pod, now) if server is not None else None
        gpu_refusal = None
        suspending = memory is not None and memory.operation is not None
        if view is not None and view.state == "running" and view.pod_name and not suspending:
            # the agent's report as cached: a drain retries every few seconds
            gpu_refusal = await svc.actions.gpu_refusal(pod, fresh=False)
        verdict = decide(
            review,
            pod,
            view,
            memory,
            hold=svc.eviction_hold_seconds,
            now=now,
            hub_error=hub_error,
            gpu_refusal=gpu_refusal,
        )
        if not review.dry_run and memory is not None:
            self._act(verdict, view, memory, review, now)
        level = logging.INFO if verdict.outcome != "allowed" else logging.DEBUG
        svc.log.log(level, "Eviction of pod %s/%s: %s (%s)", review.namespace, review.name,
                    verdict.outcome, verdict.message)  # fmt: skip
        return verdict

    def _remember(
        self, review: EvictionReview, pod: dict[str, Any] | None, now: datetime
    ) -> Memory:
        uid = str(((pod or {}).get("metadata") or {}).get("uid") or "")
        key = (review.namespace, review.name)
        memory = self.memory.get(key)
        if memory is None or memory.uid != uid:  # a new pod of the same name
            memory = self.memory[key] = Memory(uid, now)
        memory.last_seen = now
        return memory

    def _act(
        self,
        verdict: Verdict,
        view: ServerView | None,
        memory: Memory,
        review: EvictionReview,
        now: datetime,
    ) -> None:
        svc = self.service
        if verdict.suspend and view is not None:
            running = svc.operations.running_for(view.user, view.server_name)
            memory.operation = running or svc.actions.start_suspension(
                view.user, view.server_name, "eviction", "eviction"
            )
        if verdict.unsuspendable and memory.unsuspendable_since is None:
            memory.unsuspendable_since, memory.unsuspendable = now, verdict.unsuspendable
            svc.metrics.eviction_unsuspendable.labels(verdict.unsuspendable).inc()
            svc.log.warning("Eviction of pod %s/%s: %s", review.namespace, review.name,
                            verdict.message)  # fmt: skip
        if verdict.outcome == "released" and not memory.released:
            memory.released = True
            svc.log.warning("Eviction of pod %s/%s allowed after its hold: %s",
                            review.namespace, review.name, verdict.message)  # fmt: skip
        self._count_held()

    def _count_held(self) -> None:
        held = sum(1 for m in self.memory.values() if m.unsuspendable_since and not m.released)
        self.service.metrics.eviction_held_pods.set(held)

    def _forget_old(self, now: datetime) -> None:
        """Forget pods whose evictions stopped long ago (their drain ended)."""
        svc = self.service
        keep = timedelta(seconds=svc.eviction_hold_seconds + svc.suspend_timeout + 3600)
        for key in [k for k, m in self.memory.items() if now - m.last_seen > keep]:
            del self.memory[key]
        self._count_held()


def _view_of(
    views: list[ServerView], server: tuple[str, str], review: EvictionReview
) -> ServerView | None:
    """The hub's server the pod belongs to: the one its annotations name, when that server's
    pod is this pod (a server of another spawner, with no pod name, is taken at its word)."""
    user, server_name = server
    view = next((v for v in views if v.key == (user, server_name)), None)
    if view is None:
        return None
    if view.pod_name and (view.namespace, view.pod_name) != (review.namespace, review.name):
        return None
    return view


# --- HTTP ------------------------------------------------------------------------------------


class AdmissionHandler(web.RequestHandler):
    """``POST /eviction``: an AdmissionReview in, an AdmissionReview out."""

    def initialize(self, evictions: Evictions) -> None:
        self.evictions = evictions

    def check_xsrf_cookie(self) -> None:  # called by the API server, not a browser
        pass

    async def post(self) -> None:
        try:
            body = json.loads(self.request.body)
        except ValueError as e:
            raise web.HTTPError(400, "the body is not JSON: %s", e) from None
        try:
            answer = await self.evictions.review(body)
        except ReviewError as e:
            raise web.HTTPError(e.status, "%s", e.message) from None
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(answer))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code == 500:
            message = "internal error; see the service log"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message}))


def webhook_app(evictions: Evictions) -> web.Application:
    return web.Application([(r"/eviction", AdmissionHandler, {"evictions": evictions})])


class ReloadingTLS:
    """The listener's TLS context, loaded again when its certificate file changes (as
    cert-manager renews a mounted Secret in place)."""

    def __init__(self, certfile: str, keyfile: str, log: logging.Logger) -> None:
        self.certfile, self.keyfile, self.log = certfile, keyfile, log
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._stamp = self._mtimes()
        self.context.load_cert_chain(certfile, keyfile)
        self._timer = PeriodicCallback(self._tick, TLS_RELOAD_INTERVAL * 1000)

    def _mtimes(self) -> tuple[float, float]:
        return os.stat(self.certfile).st_mtime, os.stat(self.keyfile).st_mtime

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def _tick(self) -> None:
        self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """Load the certificate again if its files changed; new connections get it."""
        try:
            stamp = self._mtimes()
            if stamp == self._stamp:
                return False
            self.context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as e:  # mid-update: the next look gets both files
            self.log.warning("Eviction webhook: cannot load %s yet: %s", self.certfile, e)
            return False
        self._stamp = stamp
        self.log.info("Eviction webhook: loaded the renewed certificate %s", self.certfile)
        return True
