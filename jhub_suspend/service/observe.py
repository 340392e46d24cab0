"""Pure translation of what the hub and Kubernetes say into the policy's inputs.

Nothing here does IO or reads a clock: the policy loop fetches hub users, pods and Prometheus
signals, and these functions turn them into :class:`jhub_suspend.policy.ServerObservation`,
:class:`jhub_suspend.policy.PendingPod` and the per-server view the REST API shows.

Server states. The policy knows ``running``, ``suspending``, ``suspended``, ``restoring`` and
``failed``; the API adds ``starting``, ``stopping`` and ``stopped`` for servers that are none of
those (they are never candidates and have no observation):

* ``running``: the hub says ready and no suspension is under way;
* ``suspending``: the pod carries the suspend-request annotation, or this service is suspending it;
* ``suspended``: stopped, with a verified or suspended checkpoint that was not discarded;
* ``restoring``: starting from a checkpoint (status ``restoring``, or a resume under way);
* ``failed``: stopped, and the last restore failed (checkpoint ``restore_failed``) or the last
  operation left an error and no restorable checkpoint;
* ``starting``/``stopping``: the hub's pending spawn or stop of a server without a checkpoint;
* ``stopped``: stopped, nothing to restore.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..checkpoints import (
    ANNOTATION_PREFIX,
    RESTORABLE_STATUSES,
    RESTORABLE_WHEN_STOPPED,
    SUSPEND_REQUEST_ANNOTATION,
    SUSPEND_REQUESTED_AT_ANNOTATION,
    Checkpoint,
    LastError,
    Status,
)
from ..gpu import Capability, checkpoint_size_estimate
from ..kubevalues import parse_quantity, parse_time, rfc3339
from ..policy import (
    KeepRunning,
    PendingPod,
    Resources,
    ServerObservation,
    Signal,
    insufficient_resources,
)
from ..state import ServerState, read_state

KEEP_RUNNING_SINCE = f"{ANNOTATION_PREFIX}/keep-running-since"
KEEP_RUNNING_UNTIL = f"{ANNOTATION_PREFIX}/keep-running-until"
MANAGED_BY = ("app.kubernetes.io/managed-by", "jhub-suspend")
RESTORABLE = RESTORABLE_STATUSES
API_STATES = frozenset(
    {"running", "suspending", "suspended", "restoring", "failed", "starting", "stopping", "stopped"}
)
POLICY_STATES = frozenset({"running", "suspending", "suspended", "restoring", "failed"})


def _requested(value: Any) -> float:
    """A pod's resource quantity; an unreadable or negative one counts as none."""
    try:
        result = float(parse_quantity(value))
    except (ValueError, ArithmeticError):
        return 0.0
    return result if math.isfinite(result) and result >= 0 else 0.0


def pod_requests(pod: Mapping[str, Any], gpu_resources: Iterable[str]) -> Resources:
    """What the pod's containers request (for extended resources such as GPUs the limit counts
    when no request is given, as Kubernetes defaults it)."""
    gpu_names = frozenset(gpu_resources)
    cpu = memory = gpu = 0.0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        asked = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        requests = res.get("requests") or {}
        cpu += _requested(requests.get("cpu", 0))
        memory += _requested(requests.get("memory", 0))
        gpu += sum(_requested(v) for k, v in asked.items() if k in gpu_names)
    return Resources(cpu=cpu, memory=memory, gpu=gpu)


def pod_memory_limit(pod: Mapping[str, Any], gpu_resources: Iterable[str]) -> float | None:
    """The memory limit, in bytes, that binds the pod's GPU processes: the sum of the limits of
    its containers that hold GPUs, each of which is limited by its own cgroup. None when one
    of them has no limit (the pod then has no pod-level limit either), or none holds GPUs."""
    gpu_names = frozenset(gpu_resources)
    total, holders = 0.0, 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        asked = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        if not any(_requested(v) > 0 for k, v in asked.items() if k in gpu_names):
            continue
        holders += 1
        limit = (res.get("limits") or {}).get("memory")
        if limit is None:
            return None
        total += _requested(limit)
    return total if holders else None


def working_set(memory_ratio: float | None, requests: Resources | None) -> float | None:
    """A pod's memory working set in bytes, from its ratio to the memory request (the policy's
    memory signal); None without a finite ratio or a memory request. A pod with a memory limit
    always has a request (Kubernetes defaults it to the limit)."""
    if memory_ratio is None or requests is None or requests.memory <= 0:
        return None
    used = memory_ratio * requests.memory
    return used if math.isfinite(used) and used >= 0 else None


def pod_annotations(pod: Mapping[str, Any] | None) -> Mapping[str, str]:
    return ((pod or {}).get("metadata") or {}).get("annotations") or {}


def keep_running_of(pod: Mapping[str, Any] | None) -> KeepRunning | None:
    """The keep-running opt-out stored on the pod, or None (also when unreadable)."""
    ann = pod_annotations(pod)
    since = parse_time(ann.get(KEEP_RUNNING_SINCE))
    if since is None:
        return None
    until = parse_time(ann.get(KEEP_RUNNING_UNTIL))
    return KeepRunning(since=since, until=until)


def keep_running_annotations(
    enabled: bool, now: datetime, hours: float | None
) -> dict[str, str | None]:
    """The pod annotations (a merge patch: None removes) that set or clear the opt-out."""
    if not enabled:
        return {KEEP_RUNNING_SINCE: None, KEEP_RUNNING_UNTIL: None}
    until = rfc3339(now + timedelta(hours=hours)) if hours is not None else None
    return {KEEP_RUNNING_SINCE: rfc3339(now), KEEP_RUNNING_UNTIL: until}


def is_unschedulable(pod: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a Pending pod was refused by the scheduler, and the scheduler's message."""
    status = pod.get("status") or {}
    if status.get("phase") != "Pending":
        return False, ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return cond.get("reason") == "Unschedulable", cond.get("message") or ""
    return False, ""


def pending_pods(
    pods: Iterable[Mapping[str, Any]], gpu_resources: Iterable[str]
) -> list[PendingPod]:
    """The unschedulable pods, with the resources the scheduler said they lack."""
    gpu_names = tuple(gpu_resources)
    out = []
    for pod in pods:
        unschedulable, message = is_unschedulable(pod)
        if not unschedulable:
            continue
        meta = pod.get("metadata") or {}
        out.append(
            PendingPod(
                namespace=meta.get("namespace", ""),
                name=meta.get("name", ""),
                requests=pod_requests(pod, gpu_names),
                reasons=insufficient_resources(message),
                node_selector=dict((pod.get("spec") or {}).get("nodeSelector") or {}),
            )
        )
    return out


def pod_alive(pod: Mapping[str, Any] | None) -> bool:
    """Whether a pod exists, is not being deleted, and is still running or starting."""
    if pod is None or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return (pod.get("status") or {}).get("phase") in ("Pending", "Running")


def suspend_mark_time(pod: Mapping[str, Any] | None) -> datetime | None:
    """When the pod's suspension mark was set; None without a mark, or when it is undated
    (set by hand, or by an older version) and so cannot be known to be stale."""
    annotations = pod_annotations(pod)
    if SUSPEND_REQUEST_ANNOTATION not in annotations:
        return None
    return parse_time(annotations.get(SUSPEND_REQUESTED_AT_ANNOTATION))


def server_state(
    server: Mapping[str, Any],
    pod: Mapping[str, Any] | None,
    *,
    discarded: bool = False,
    operation: str | None = None,
    state: ServerState | None = None,
) -> str:
    """The API state of one hub server (see the module docstring).

    ``discarded``: its checkpoint has a discard marker. ``operation``: the kind of this
    service's operation under way for it (``suspend`` or ``resume``), if any. ``state``: its
    spawner state, when already read.
    """
    if state is None:
        state = read_state(server.get("state"))
    status = state.checkpoint.status if state.checkpoint else None
    pending = server.get("pending")
    if operation == "suspend" or (
        pending == "stop" and SUSPEND_REQUEST_ANNOTATION in pod_annotations(pod)
    ):
        return "suspending"
    stopped = not server.get("ready") and not pending and operation != "resume"
    if (status == "restoring" and not stopped) or (
        operation == "resume" and not server.get("ready")
    ):
        return "restoring"
    if pending == "spawn":
        return "restoring" if status in RESTORABLE and not discarded else "starting"
    if pending == "stop":
        return "stopping"
    if server.get("ready"):
        return "suspending" if SUSPEND_REQUEST_ANNOTATION in pod_annotations(pod) else "running"
    if status in (RESTORABLE_WHEN_STOPPED if stopped else RESTORABLE) and not discarded:
        return "suspended"  # a restore the hub's restart interrupted is tried again on start
    if status == Status.RESTORE_FAILED or (state.last_error and status not in RESTORABLE):
        return "failed"
    return "stopped"


@dataclass
class ServerView:
    """One hub server as this service sees it in one cycle."""

    user: str
    server_name: str
    state: str
    groups: frozenset[str] = frozenset()
    started: datetime | None = None
    last_activity: datetime | None = None
    namespace: str = ""
    pod_name: str = ""
    node: str | None = None
    requests: Resources | None = None
    #: its image reference still sealed
    checkpoint: Checkpoint | None = None
    last_error: LastError | None = None
    keep_running: KeepRunning | None = None
    #: its pod exists, is not being deleted and has not terminated
    pod_alive: bool = False
    #: when the suspension mark on its pod was set (see :func:`suspend_mark_time`)
    suspend_marked: datetime | None = None
    #: what the hub has pending for it ("spawn", "stop"), if anything
    pending: str | None = None
    #: what of its spawner state could not be read (see :func:`jhub_suspend.state.read_state`)
    state_problems: tuple[str, ...] = ()
    cpu: Signal | None = None
    gpu: Signal | None = None
    memory_ratio: float | None = None
    #: its memory working set, bytes (from memory_ratio and its memory request)
    memory_used: float | None = None
    #: GPU memory in use, bytes, summed over its GPUs (servers holding GPUs; None: unknown)
    gpu_memory_used: float | None = None
    #: the memory limit binding its GPU containers, bytes (see :func:`pod_memory_limit`)
    memory_limit: float | None = None
    #: whether it can be suspended as far as its GPUs go: its node can checkpoint GPUs, and
    #: the rules of :func:`jhub_suspend.gpu.server_gpu_readiness` hold (servers holding GPUs;
    #: None: not assessed)
    gpu_capability: Capability | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.user, self.server_name)

    @property
    def estimated_checkpoint_bytes(self) -> int | None:
        """What a checkpoint of it would roughly hold now (running servers): its working set
        plus the GPU memory in use; None when unknown."""
        if self.state != "running":
            return None
        gpus = self.requests is not None and self.requests.gpu > 0
        return checkpoint_size_estimate(self.memory_used, self.gpu_memory_used if gpus else 0.0)

    def stale_mark(self, now: datetime, patience: float) -> bool:
        """Whether its pod carries a suspension mark that no stop followed: the server runs,
        and the mark is older than any requester waits (``patience``), so the requester died
        between marking the pod and stopping the server. It would show the server as
        suspending for ever, and turn the user's next stop into a suspension."""
        return (
            self.state == "suspending"
            and not self.pending
            and self.suspend_marked is not None
            and (now - self.suspend_marked).total_seconds() > patience
        )

    @property
    def locked_out(self) -> bool:
        """Its suspension failed and the pod kept running, but the hub counts the server as
        stopped (JupyterHub ends a server whenever stop() returns) and nobody started it
        again, e.g. because whoever asked for the suspension died: the notebook runs, and the
        hub does not route its user to it."""
        return (
            self.state == "failed"
            and self.last_error is not None
            and self.last_error.operation == "suspend"
            and self.pod_alive
        )

    def observation(self) -> ServerObservation | None:
        """The policy's input, for servers in one of the policy's states with a start time."""
        if self.state not in POLICY_STATES or self.started is None:
            return None
        return ServerObservation(
            user=self.user,
            server_name=self.server_name,
            state=self.state,  # type: ignore[arg-type]
            started=self.started,
            requests=self.requests or Resources(),
            groups=self.groups,
            namespace=self.namespace,
            pod=self.pod_name,
            node=self.node,
            cpu=self.cpu,
            gpu=self.gpu,
            memory_ratio=self.memory_ratio,
            last_activity=self.last_activity,
            keep_running=self.keep_running,
            gpu_capable=self.gpu_capability.capable if self.gpu_capability else None,
            gpu_capability=self.gpu_capability.reason if self.gpu_capability else "",
        )


def gpu_nodes(views: Iterable[ServerView]) -> set[str]:
    """The nodes of running servers that hold GPUs: whose GPU capability the policy needs."""
    return {
        v.node
        for v in views
        if v.node and v.state == "running" and v.requests is not None and v.requests.gpu > 0
    }


def build_views(
    users: Iterable[Mapping[str, Any]],
    pods: Mapping[tuple[str, str], Mapping[str, Any]],
    *,
    default_namespace: str,
    gpu_resources: Iterable[str],
    discarded_digests: frozenset[str] = frozenset(),
    operations: Mapping[tuple[str, str], str] | None = None,
    known_requests: Mapping[tuple[str, str], Resources] | None = None,
) -> list[ServerView]:
    """One view per hub server (stopped ones included), joined to its pod by the pod name
    the spawner keeps in its state. ``known_requests`` gives requests of pods seen earlier
    (for suspended servers, whose pod is gone)."""
    gpu_names = tuple(gpu_resources)
    operations = operations or {}
    known_requests = known_requests or {}
    views = []
    for user in users:
        name = user.get("name", "")
        groups = frozenset(user.get("groups") or ())
        for server_name, server in (user.get("servers") or {}).items():
            state = read_state(server.get("state"))
            namespace = state.namespace or default_namespace
            pod_name = state.pod_name
            pod = pods.get((namespace, pod_name)) if pod_name else None
            checkpoint = state.checkpoint
            api_state = server_state(
                server,
                pod,
                discarded=checkpoint is not None and checkpoint.digest in discarded_digests,
                operation=operations.get((name, server_name)),
                state=state,
            )
            requests = (
                pod_requests(pod, gpu_names)
                if pod is not None
                else known_requests.get((namespace, pod_name))
            )
            views.append(
                ServerView(
                    user=name,
                    server_name=server_name,
                    state=api_state,
                    groups=groups,
                    started=parse_time(server.get("started")),
                    last_activity=parse_time(server.get("last_activity")),
                    namespace=namespace,
                    pod_name=pod_name,
                    node=((pod or {}).get("spec") or {}).get("nodeName"),
                    requests=requests,
                    memory_limit=None if pod is None else pod_memory_limit(pod, gpu_names),
                    checkpoint=checkpoint,
                    last_error=state.last_error,
                    keep_running=keep_running_of(pod),
                    pod_alive=pod_alive(pod),
                    suspend_marked=suspend_mark_time(pod),
                    pending=server.get("pending"),
                    state_problems=state.problems,
                )
            )
    return views
