"""The kubelet of one local-cluster node.

It registers its node, runs the pods bound to it in the real container runtime (containerd,
through CRI: a sandbox per pod on the CNI bridge, then pull, create and start of each
container), reports their status and events back to the API, and serves the kubelet's own
HTTP API:

- ``POST /checkpoint/{namespace}/{pod}/{container}?timeout=N``, the kubelet checkpoint contract:
  the runtime's ``CheckpointContainer`` (runc, then CRIU), the container keeps running, the
  answer is ``{"items": [archive path]}``;
- ``GET /healthz``, ``GET /pods``;
- image garbage collection, as the kubelet's image manager (:mod:`.imagegc`): unused images
  are removed through CRI when the image filesystem fills up;
- ``GET /metrics/cadvisor`` (container CPU and memory from the runtime's cgroup statistics) and
  ``GET /metrics/dcgm`` (the node's simulated GPUs, DCGM-exporter style), with
  ``PUT /debug/gpus/{index}`` for tests and demos to set a simulated GPU's utilisation
  (``{"utilization": percent}``) and framebuffer memory used (``{"fb_used_mib": MiB}``, 0 until
  set: a process that never touched its GPU).

GPUs are simulated. A GPU node carries the labels GPU feature discovery would set (product,
count, driver version; MIG and MPS through ``labels``). Where the node's config says
``cuda_plugin``, a SIMULATED CUDA plugin adds, to the checkpoint archive of a pod holding
GPUs, a marker (:data:`jhub_suspend.archive.SIMULATED_CUDA_MARKER`) saying so, which an
agent accepts as device state only with ``NodeAgent.simulated_cuda_plugin``: never a real
CUDA checkpoint, and logged as simulated.

A pod whose container image is a checkpoint image is created like any other: containerd
recognises the image (checkpointctl's ``org.criu.checkpoint.container.name`` annotation) and
restores the container in ``CreateContainer`` and ``StartContainer``. The kubelet only reads
the image's config from the runtime (the agent repeats the annotation as a label) to word its
events, and, for a checkpoint that carries the simulated CUDA marker, applies the SIMULATED
CUDA restore rules (:mod:`.gpurestore`): the container create fails as a real runtime's would
where GPU indices or counts do not match, and a CDI node's remap is logged and evented.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import re
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from ..archive import CRIU_CHECKPOINT_NAME_ANNOTATION, SIMULATED_CUDA_MARKER
from ..kubevalues import rfc3339
from . import crispec, metrics
from .cri import CriClient, CriError, cri
from .crispec import NODE_LABEL, RunAs
from .faults import FaultPoints, InjectedFault
from .gpurestore import gpu_uuid, read_marker, simulated_cuda_restore
from .imagegc import (
    IMAGE_GC_PERIOD,
    FsUsage,
    ImageFilesystem,
    ImageGcFailed,
    ImageGcPolicy,
    ImageGcResult,
    ImageRecord,
    RuntimeImage,
    detect_images,
    eviction_order,
    images_to_free,
    is_used,
    space_to_free,
    too_old,
)
from .podstatus import set_condition
from .store import ApiError, Store

log = logging.getLogger(__name__)


# authorize(token, verb, resource, subresource) -> username, or None when not allowed.
Authorizer = Callable[[str | None, str, str, str], str | None]


def machine_arch() -> str:
    """The node's architecture as Kubernetes names it (``kubernetes.io/arch``)."""
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@dataclass
class NodeConfig:
    """One simulated node: its name, capacity and labels."""

    name: str
    cpu: str = "2"
    memory: str = "4Gi"
    gpus: int = 0
    gpu_product: str = "NVIDIA-A100-SXM4-40GB"
    #: the simulated NVIDIA driver (GPU feature discovery's driver labels); "" for none
    gpu_driver: str = "580.65.06"
    #: whether the node has the (simulated) CUDA plugin for CRIU
    cuda_plugin: bool = True
    #: how the node hands GPUs to containers: "cdi" or "legacy" (what its agent finds)
    gpu_device_mode: str = "cdi"
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict] = field(default_factory=list)


def gfd_labels(cfg: NodeConfig) -> dict[str, str]:
    """The labels GPU feature discovery sets on a node with ``cfg``'s GPUs (pure)."""
    if not cfg.gpus:
        return {}
    labels = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": cfg.gpu_product,
        "nvidia.com/gpu.count": str(cfg.gpus),
        "nvidia.com/mig.capable": "false",
        "nvidia.com/mps.capable": "false",
    }
    if cfg.gpu_driver:
        parts = [*cfg.gpu_driver.split("."), "", "", ""][:3]
        labels["nvidia.com/cuda.driver-version.full"] = cfg.gpu_driver
        for key, old, value in zip(
            ("major", "minor", "revision"), ("major", "minor", "rev"), parts, strict=True
        ):
            if value:
                labels[f"nvidia.com/cuda.driver-version.{key}"] = value
                labels[f"nvidia.com/cuda.driver.{old}"] = value
    return labels


def node_object(
    cfg: NodeConfig, address: str, port: int, now: float, runtime: str = "containerd://2"
) -> dict:
    """The Node the kubelet registers (pure)."""
    capacity = {"cpu": cfg.cpu, "memory": cfg.memory, "pods": "110"}
    labels = {
        "kubernetes.io/hostname": cfg.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": machine_arch(),
        **cfg.labels,
    }
    if cfg.gpus:
        capacity["nvidia.com/gpu"] = str(cfg.gpus)
        for key, value in gfd_labels(cfg).items():
            labels.setdefault(key, value)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": cfg.name, "labels": labels},
        "spec": {"taints": cfg.taints} if cfg.taints else {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "addresses": [
                {"type": "InternalIP", "address": address},
                {"type": "Hostname", "address": cfg.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": rfc3339(now),
                    "lastTransitionTime": rfc3339(now),
                }
            ],
            # Every field the API declares required, or clients refuse the Node.
            "nodeInfo": {
                "architecture": machine_arch(),
                "bootID": _boot_id(),
                "containerRuntimeVersion": runtime,
                "kernelVersion": platform.release(),
                "kubeProxyVersion": "",
                "kubeletVersion": "v1.33.0-localcluster",
                "machineID": cfg.name,
                "operatingSystem": "linux",
                "osImage": platform.platform(),
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, cfg.name)),
            },
        },
    }


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def running_status(pod: dict, ip: str, host_ip: str, started: float, containers: dict) -> dict:
    """The status of a pod whose containers all run (pure)."""
    status = dict(pod.get("status") or {})
    status.update(
        phase="Running",
        podIP=ip,
        podIPs=[{"ip": ip}],
        hostIP=host_ip,
        hostIPs=[{"ip": host_ip}],
        startTime=status.get("startTime") or rfc3339(started),
    )
    out = {"status": status}
    for cond in ("Initialized", "ContainersReady", "Ready", "PodScheduled"):
        set_condition(out, cond, "True")
    status["containerStatuses"] = [
        {
            "name": name,
            "image": c["image"],
            "imageID": c.get("imageID", c["image"]),
            "containerID": f"containerd://{c['id']}",
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": rfc3339(c["started"])}},
        }
        for name, c in containers.items()
    ]
    return status


def waiting_status(pod: dict, reason: str, message: str = "") -> dict:
    """The status of a pod whose containers wait, e.g. ContainerCreating or ErrImagePull."""
    status = dict(pod.get("status") or {})
    status["phase"] = "Pending"
    state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
    status["containerStatuses"] = [
        {
            "name": c["name"],
            "image": c["image"],
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": state,
        }
        for c in pod["spec"]["containers"]
    ]
    out = {"status": status}
    set_condition(out, "ContainersReady", "False", "ContainersNotReady", message or reason)
    set_condition(out, "Ready", "False", "ContainersNotReady", message or reason)
    return status


def terminated_status(pod: dict, exit_codes: dict[str, int], finished: float) -> dict:
    """The status once the containers have ended; there are no restarts on the local cluster."""
    status = dict(pod.get("status") or {})
    status["phase"] = "Succeeded" if all(c == 0 for c in exit_codes.values()) else "Failed"
    previous = {c["name"]: c for c in status.get("containerStatuses") or []}
    statuses = []
    for c in pod["spec"]["containers"]:
        code = exit_codes.get(c["name"], 137)
        cs = dict(previous.get(c["name"]) or {"name": c["name"], "image": c["image"]})
        cs.update(
            ready=False,
            started=False,
            state={
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "finishedAt": rfc3339(finished),
                }
            },
        )
        statuses.append(cs)
    status["containerStatuses"] = statuses
    out = {"status": status}
    set_condition(out, "ContainersReady", "False", "PodCompleted")
    set_condition(out, "Ready", "False", "PodCompleted")
    return status


class PodFailed(Exception):
    """A pod's container could not be created; ``reason`` is the kubelet's waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class PodRecord:
    """What the kubelet holds for a pod it runs: its sandbox and containers in the runtime."""

    uid: str
    namespace: str
    name: str
    sandbox_id: str = ""
    sandbox_config: Any = None
    ip: str = ""
    containers: dict[str, str] = field(default_factory=dict)  # name -> runtime container id
    gpus: list[int] = field(default_factory=list)
    task: asyncio.Task | None = None


def exit_codes(statuses: list[Any]) -> dict[str, int] | None:
    """Exit codes by container name once every container has exited, else None (pure)."""
    codes: dict[str, int] = {}
    for status in statuses:
        if status.state != cri.CONTAINER_EXITED:
            return None
        codes[status.metadata.name] = int(status.exit_code)
    return codes


def prepare_volume_dirs(dirs: dict[str, str], user: RunAs) -> None:
    """Create the pod's volume directories, owned as the kubelet applies ``fsGroup``: group
    ``fsGroup``, group-writable and setgid, so the container's user can write them."""
    for path in dirs.values():
        if os.path.isdir(path):
            continue
        os.makedirs(path)
        uid = user.uid if user.uid is not None else -1
        gid = user.fs_group if user.fs_group is not None else (user.gid or 0)
        if user.uid is not None or user.fs_group is not None:
            os.chown(path, uid, gid)
            os.chmod(path, 0o2775)


def criu_log_path(message: str) -> str:
    """The CRIU log that a runc error message names (``... path= /x/criu-dump.log``)."""
    match = re.search(r"path=\s*(\S+\.log)", message)
    return match.group(1) if match else ""


def criu_errors(log_text: str, limit: int = 3) -> list[str]:
    """CRIU's own reasons from its log (``Error (file:line): reason``), the first ``limit``:
    the first error is the cause, the later ones its consequences."""
    reasons = re.findall(r"Error \([^)]*\): (.*)", log_text)
    return list(dict.fromkeys(r.strip() for r in reasons))[:limit]


def read_criu_errors(path: str) -> str:
    """CRIU's reasons from the log at ``path`` ("" when there is none)."""
    if not path:
        return ""
    try:
        with open(path, errors="replace") as f:
            return "; ".join(criu_errors(f.read()))
    except OSError:
        return ""


def is_checkpoint_image(config: Mapping[str, Any]) -> bool:
    """Whether an image's OCI config marks it as a checkpoint image that containerd restores
    (pure): the agent's images repeat their manifest annotations as config labels."""
    labels = (config.get("config") or {}).get("Labels") or {}
    return CRIU_CHECKPOINT_NAME_ANNOTATION in labels


class Kubelet:
    """Runs the pods bound to one node through the runtime's CRI, as a kubelet does.

    IO lives here; what goes into each CRI call is decided in :mod:`.crispec`.
    """

    #: how often the containers' states are relisted (the kubelet's PLEG period)
    relist_period = 1.0

    def __init__(
        self,
        store: Store,
        node: NodeConfig,
        runtime: CriClient,
        *,
        state_dir: str,
        runtime_version: str = "containerd://2",
        criu_work_dir: str = "",
        content_dir: str = "",
        checkpoint_dir: str | None = None,
        authorize: Authorizer | None = None,
        clock: Callable[[], float] | None = None,
        faults: FaultPoints | None = None,
        image_gc: ImageGcPolicy | None = None,
        image_gc_period: float = IMAGE_GC_PERIOD,
        imagefs: ImageFilesystem | None = None,
    ) -> None:
        self.store = store
        self.faults = faults or FaultPoints()
        self.node = node
        self.runtime = runtime
        self.runtime_version = runtime_version
        self.criu_work_dir = criu_work_dir
        #: the runtime's content store, where the simulated CUDA plugin reads its marker back
        self.content_dir = content_dir
        self.state_dir = state_dir
        self.checkpoint_dir = checkpoint_dir or os.path.join(state_dir, "checkpoints", node.name)
        self.authorize = authorize
        self.clock = clock or store.clock
        self.pods: dict[str, PodRecord] = {}
        self.gpu_util: dict[int, float] = {}
        self.gpu_fb_used: dict[int, float] = {}  # MiB
        self.address = "127.0.0.1"
        self.port = 0
        self._server: HTTPServer | None = None
        self._watch_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._terminating: set[str] = set()
        #: the image GC policy; a test may replace it on a running kubelet
        self.image_gc = image_gc or ImageGcPolicy()
        #: seconds between image garbage collections (0: none but those asked for)
        self.image_gc_period = image_gc_period
        #: shared with the kubelets on the same runtime (the local cluster's one containerd)
        self.imagefs = imagefs or ImageFilesystem()
        self.image_records: dict[str, ImageRecord] = {}
        self._image_gc_task: asyncio.Task | None = None
        self._started = 0.0

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve the kubelet API, register the node and start watching its pods."""
        sockets = bind_sockets(port, host)
        self.address, self.port = host, sockets[0].getsockname()[1]
        server = self._server = HTTPServer(self.make_app())
        server.add_sockets(sockets)
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        await self._remove_orphans()
        self._register_node()
        self._started = self.clock()
        self._watch_task = asyncio.create_task(self._watch(), name=f"kubelet-{self.node.name}")
        if self.image_gc_period > 0:
            self._image_gc_task = self._spawn(self._image_gc_loop(), f"image-gc-{self.node.name}")
        log.info("kubelet %s serving on %s:%s", self.node.name, self.address, self.port)

    async def _remove_orphans(self) -> None:
        """Remove this node's sandboxes left by an earlier run: the API store starts empty, so
        no pod owns them (a kubelet kills pods that are not bound to it)."""
        for sb in await self.runtime.list_pod_sandboxes({NODE_LABEL: self.node.name}):
            log.info("kubelet %s: removing orphaned sandbox %s", self.node.name, sb.id[:12])
            await self._remove_sandbox(sb.id)

    def _register_node(self) -> None:
        obj = node_object(
            self.node, self.address, self.port, self.clock(), runtime=self.runtime_version
        )
        try:
            self.store.create("nodes", None, obj)
        except ApiError as e:
            if e.code != 409:
                raise

            def refresh(node: dict) -> None:
                node["metadata"]["labels"] = obj["metadata"]["labels"]
                node["spec"] = obj["spec"]
                node["status"] = obj["status"]

            self.store.mutate("nodes", None, self.node.name, refresh)

    async def stop(self) -> None:
        """Stop watching and remove every pod's containers; the API objects stay as they are."""
        for task in (self._watch_task, self._image_gc_task):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.gather(*(self._teardown(rec) for rec in list(self.pods.values())))
        if self._server:
            self._server.stop()

    @property
    def unhealthy(self) -> str:
        """Why the kubelet is not healthy ("" when it is): a background loop that ended."""
        if self._watch_task is None or self._watch_task.done():
            return "pod watch is not running"
        if self._image_gc_task is not None and self._image_gc_task.done():
            return "image garbage collection is not running"
        return ""

    @property
    def healthy(self) -> bool:
        return not self.unhealthy

    async def _watch(self) -> None:
        selector = f"spec.nodeName={self.node.name}"
        async for type_, pod in self.store.watch("pods", field_selector=selector):
            try:
                self._on_pod_event(type_, pod)
            except Exception:
                log.exception("kubelet %s: handling %s failed", self.node.name, type_)

    def _on_pod_event(self, type_: str, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        rec = self.pods.get(uid)
        if type_ == "DELETED":
            if rec:
                self._spawn(self._teardown(rec), f"teardown-{rec.name}")
            return
        if pod["metadata"].get("deletionTimestamp"):
            if uid not in self._terminating:
                self._terminating.add(uid)
                self._spawn(self._terminate(pod, rec), f"terminate-{pod['metadata']['name']}")
            return
        if rec is None and pod.get("status", {}).get("phase") in (None, "Pending"):
            rec = PodRecord(uid, pod["metadata"]["namespace"], pod["metadata"]["name"])
            self.pods[uid] = rec
            rec.task = self._spawn(self._run_pod(pod, rec), f"pod-{rec.name}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task:
        """Run a pod task; keep a reference, and log any failure instead of losing it."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("kubelet %s: %s failed", self.node.name, name, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    # ---- running a pod ---------------------------------------------------------------------

    def _event(self, pod: dict, reason: str, message: str, type_: str = "Normal") -> None:
        with contextlib.suppress(ApiError):
            self.store.record_event(pod, reason, message, type_=type_, host=self.node.name)

    def _set_status(self, pod: dict, status: dict) -> None:
        meta = pod["metadata"]

        def apply(obj: dict) -> None:
            obj["status"] = status

        self.store.mutate("pods", meta["namespace"], meta["name"], apply, subresource="status")

    def _current(self, rec: PodRecord) -> dict | None:
        try:
            pod = self.store.get("pods", rec.namespace, rec.name)
        except ApiError:
            return None
        return pod if pod["metadata"]["uid"] == rec.uid else None

    async def _run_pod(self, pod: dict, rec: PodRecord) -> None:
        self._set_status(pod, waiting_status(pod, "ContainerCreating"))
        try:
            rec.gpus = self._allocate_gpus(pod)
            volumes = crispec.volume_dirs(pod, self.state_dir)
            first = pod["spec"]["containers"][0] if pod["spec"]["containers"] else {}
            await asyncio.to_thread(prepare_volume_dirs, volumes, crispec.run_as(pod, first))
            rec.sandbox_config = crispec.sandbox_config(
                pod, self.node.name, crispec.pod_log_dir(self.state_dir, pod)
            )
            try:
                rec.sandbox_id = await self.runtime.run_pod_sandbox(rec.sandbox_config)
                status = await self.runtime.pod_sandbox_status(rec.sandbox_id)
            except CriError as e:
                raise PodFailed(
                    "CreatePodSandboxError", f"Failed to create pod sandbox: {e}"
                ) from e
            rec.ip = status.network.ip
            started: dict[str, dict] = {}
            for container in pod["spec"]["containers"]:
                started[container["name"]] = await self._start_container(
                    pod, rec, container, volumes
                )
        except Exception as e:
            if not isinstance(e, PodFailed):
                log.exception("pod %s/%s: creating containers failed", rec.namespace, rec.name)
                e = PodFailed("CreateContainerError", f"{type(e).__name__}: {e}")
            log.warning("pod %s/%s: %s: %s", rec.namespace, rec.name, e.reason, e.message)
            self._event(pod, "Failed", e.message, "Warning")
            if current := self._current(rec):
                self._set_status(current, waiting_status(current, e.reason, e.message))
            return
        current = self._current(rec)
        if current is None or current["metadata"].get("deletionTimestamp"):
            return  # deleted while starting; _terminate cleans up
        self._set_status(
            current, running_status(current, rec.ip, self.address, self.clock(), started)
        )
        codes = await self._wait_for_exit(rec)
        current = self._current(rec)
        if current is not None and not current["metadata"].get("deletionTimestamp"):
            log.info("pod %s/%s ended: %s", rec.namespace, rec.name, codes)
            self._set_status(current, terminated_status(current, codes, self.clock()))

    async def _wait_for_exit(self, rec: PodRecord) -> dict[str, int]:
        """Relist the pod's containers every ``relist_period`` until all have exited."""
        while True:
            try:
                statuses = [
                    await self.runtime.container_status(cid) for cid in rec.containers.values()
                ]
            except CriError as e:
                if not e.not_found:
                    raise
                return {name: 137 for name in rec.containers}  # removed behind our back
            if (codes := exit_codes(statuses)) is not None:
                return codes
            await asyncio.sleep(self.relist_period)

    def _allocate_gpus(self, pod: dict) -> list[int]:
        from .scheduler import pod_requests

        want = int(pod_requests(pod).get("nvidia.com/gpu", 0))
        if not want:
            return []
        taken = {i for r in self.pods.values() for i in r.gpus}
        free = [i for i in range(self.node.gpus) if i not in taken]
        if len(free) < want:
            raise PodFailed("UnexpectedAdmissionError", f"Allocate failed: {want} nvidia.com/gpu")
        return free[:want]

    async def _start_container(
        self, pod: dict, rec: PodRecord, container: dict, volumes: dict[str, str]
    ) -> dict:
        """Pull the container's image, create and start the container; return its status
        facts. A checkpoint image is restored by the runtime in create and start.

        Image GC counts the image as in use from before its pull until the container exists.
        A real kubelet leaves that window open and, should GC remove the image in it, pulls
        again on its next sync; this kubelet does not retry a failed container, so a removal
        there would fail the pod for good.
        """
        with self.imagefs.holding(container["image"]) as hold:
            return await self._pull_create_start(pod, rec, container, volumes, hold)

    async def _pull_create_start(
        self,
        pod: dict,
        rec: PodRecord,
        container: dict,
        volumes: dict[str, str],
        hold: Callable[[str], None],
    ) -> dict:
        name, image = container["name"], container["image"]
        started = self.clock()
        self._event(pod, "Pulling", f'Pulling image "{image}"')
        try:
            await self.faults.reach("pull", rec.name)
            image_ref = await self.runtime.pull_image(image, rec.sandbox_config)
            hold(image_ref)
        except CriError as e:
            raise PodFailed("ErrImagePull", f'Failed to pull image "{image}": {e.details}') from e
        except InjectedFault as e:
            raise PodFailed("ErrImagePull", f'Failed to pull image "{image}": {e}') from e
        pulled = self.clock() - started
        status, image_config = await self.runtime.image_status(image_ref)
        # Only to word the events: containerd itself decides to restore.
        checkpoint = is_checkpoint_image(image_config)
        self._event(
            pod,
            "Pulled",
            f'Successfully pulled image "{image}" in {pulled:.1f}s. '
            f"Image size: {status.size if status else 0} bytes.",
        )
        if checkpoint and (rec.gpus or self.node.gpus):  # a CPU node has no CUDA to restore
            await self._simulate_cuda_restore(pod, rec, image, status)
        extra: dict[str, str] = {}
        if rec.gpus:
            # As NVIDIA's device plugin does by default (envvar strategy, UUIDs); the indices
            # for CUDA, as a container toolkit would make them visible
            extra.update(
                NVIDIA_VISIBLE_DEVICES=",".join(gpu_uuid(self.node.name, i) for i in rec.gpus),
                CUDA_VISIBLE_DEVICES=",".join(str(i) for i in rec.gpus),
            )
        try:
            config = crispec.container_config(
                pod, container, image=image_ref, volumes=volumes, extra_env=extra
            )
        except ValueError as e:
            raise PodFailed("CreateContainerConfigError", str(e)) from e
        what = "restoring checkpoint failed" if checkpoint else "Error"
        try:
            if checkpoint:
                await self.faults.reach("restore", rec.name)
            cid = await self.runtime.create_container(rec.sandbox_id, config, rec.sandbox_config)
        except CriError as e:
            raise PodFailed("CreateContainerError", f"{what}: {e.details}") from e
        except InjectedFault as e:
            raise PodFailed("CreateContainerError", f"{what}: {e}") from e
        rec.containers[name] = cid
        self._event(pod, "Created", f"Created container {name}")
        try:
            await self.runtime.start_container(cid)
        except CriError as e:
            reason = "CreateContainerError" if checkpoint else "RunContainerError"
            # runc names no log when a restore fails; it is in the runtime's CRIU work dir.
            why = ""
            if checkpoint and self.criu_work_dir:
                restore_log = os.path.join(self.criu_work_dir, "restore.log")
                why = await asyncio.to_thread(read_criu_errors, restore_log)
            raise PodFailed(reason, f"{what}: {e.details}" + (f": {why}" if why else "")) from e
        if checkpoint:
            self._event(
                pod,
                "Started",
                f"Restored container {name} from checkpoint image {image} "
                f"in {self.clock() - started:.1f}s",
            )
        else:
            self._event(pod, "Started", f"Started container {name}")
        info = {"image": image, "started": self.clock(), "id": cid}
        if status is not None and status.repo_digests:
            info["imageID"] = status.repo_digests[0]
        return info

    # ---- stopping a pod --------------------------------------------------------------------

    async def _terminate(self, pod: dict, rec: PodRecord | None) -> None:
        meta = pod["metadata"]
        try:
            if rec is not None:
                self._event(pod, "Killing", "Stopping container(s)")
                grace = float(meta.get("deletionGracePeriodSeconds") or 0)
                await self._teardown(rec, grace)
            with contextlib.suppress(ApiError):
                self.store.delete("pods", meta["namespace"], meta["name"], grace_period_seconds=0)
        finally:
            self._terminating.discard(meta["uid"])

    async def _teardown(self, rec: PodRecord, grace: float = 0) -> None:
        if self.pods.pop(rec.uid, None) is None:
            return
        if rec.task and not rec.task.done():
            rec.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await rec.task
        # SIGTERM first, SIGKILL after the grace period, as the kubelet does.
        await asyncio.gather(*(self._stop_container(cid, grace) for cid in rec.containers.values()))
        if rec.sandbox_id:
            await self._remove_sandbox(rec.sandbox_id)
        shutil.rmtree(
            os.path.join(self.state_dir, "pods", rec.namespace, rec.name, "volumes"),
            ignore_errors=True,
        )

    async def _stop_container(self, container_id: str, grace: float) -> None:
        try:
            await self.runtime.stop_container(container_id, int(grace))
            await self.runtime.remove_container(container_id)
        except CriError as e:
            if not e.not_found:
                log.warning("removing container %s: %s", container_id[:12], e)

    async def _remove_sandbox(self, sandbox_id: str) -> None:
        try:
            await self.runtime.remove_pod_sandbox_and_containers(sandbox_id)
        except CriError as e:
            log.warning("removing sandbox %s: %s", sandbox_id[:12], e)

    # ---- image garbage collection ----------------------------------------------------------

    def _node_event(self, reason: str, message: str) -> None:
        """A warning about the node; the kubelet's reference to its node has its name as uid."""
        ref = {"kind": "Node", "apiVersion": "v1", "name": self.node.name, "uid": self.node.name}
        self._event(ref, reason, message, "Warning")

    async def detect_images(self, now: float | None = None) -> list[ImageRecord]:
        """Look at the runtime's images and at every container it has (in any state, on any
        node: they share its images), record when each image was first seen and last used
        (``now``), and return the images GC may remove, in eviction order."""
        now = self.clock() if now is None else now
        images = [
            RuntimeImage(i.id, i.size, i.pinned, (*i.repo_tags, *i.repo_digests))
            for i in await self.runtime.list_images()
        ]
        containers = await self.runtime.list_containers()
        in_use = {c.image_ref for c in containers} | {c.image.image for c in containers}
        in_use |= set(self.imagefs.starting)
        self.image_records = detect_images(self.image_records, images, in_use, now)
        return eviction_order(self.image_records, in_use)

    async def _image_fs_usage(self) -> tuple[str, FsUsage]:
        """The image filesystem (where the runtime says it keeps images) and its usage."""
        filesystems = await self.runtime.image_fs_info()
        if not filesystems:
            raise ImageGcFailed("the runtime names no image filesystem")
        path = filesystems[0].fs_id.mountpoint
        return path, FsUsage.of(await asyncio.to_thread(os.statvfs, path))

    async def _remove_images(
        self, records: list[ImageRecord], why: str, result: ImageGcResult
    ) -> int:
        """Remove images through CRI, one by one, going on past failures; return the bytes
        freed (by the runtime's image sizes)."""
        freed = 0
        for record in records:
            image = record.image
            if is_used(image, set(self.imagefs.starting)):
                continue  # a pod began to start from it while earlier removals ran
            name = image.names[0] if image.names else "-"
            log.info(
                "kubelet %s: removing image %s (%s, %d bytes): %s",
                self.node.name,
                image.id,
                name,
                image.size,
                why,
            )
            try:
                await self.runtime.remove_image(image.id)
            except CriError as e:
                result.errors.append(f"{image.id}: {e.details or e.code.name}")
                continue
            self.image_records.pop(image.id, None)
            result.removed.append(image.id)
            freed += image.size
        result.freed += freed
        return freed

    async def collect_images(self) -> ImageGcResult:
        """One image garbage collection, as the kubelet's ``GarbageCollect``: images unused
        for longer than the maximum age, then, with the image filesystem at or above the high
        threshold, unused images least recently used first until the low threshold is
        reached. Falling short is the result's ``failure`` and a ``FreeDiskSpaceFailed``
        event on the node. The periodic loop calls this; so may tests."""
        policy = self.image_gc
        result = ImageGcResult()
        async with self.imagefs.lock:
            now = self.clock()
            candidates = await self.detect_images(now)
            old = too_old(candidates, policy, now, self._started)
            await self._remove_images(
                old, f"unused for more than {policy.maximum_age:.0f} s", result
            )
            candidates = [c for c in candidates if c.image.id not in result.removed]
            path, usage = await self._image_fs_usage()
            if usage.capacity <= 0:
                message = f"invalid capacity 0 on image filesystem {path}"
                self._node_event("InvalidDiskCapacity", message)
                raise ImageGcFailed(message)
            result.to_free = space_to_free(usage, policy)
            result.usage_percent = usage.percent
            space_freed = 0
            if result.to_free:
                log.info(
                    "kubelet %s: image filesystem %s is %d %% used (high threshold %d %%): "
                    "freeing %d bytes to come down to %d %%",
                    self.node.name,
                    path,
                    usage.percent,
                    policy.high_threshold_percent,
                    result.to_free,
                    policy.low_threshold_percent,
                )
                tried: set[str] = set()
                # A removal that fails is passed over for the next candidate, as the kubelet does.
                while batch := images_to_free(
                    [c for c in candidates if c.image.id not in tried],
                    result.to_free - space_freed,
                    policy,
                    now,
                ):
                    tried.update(r.image.id for r in batch)
                    space_freed += await self._remove_images(batch, "disk usage", result)
            if result.removed:
                _, after = await self._image_fs_usage()
                log.info(
                    "kubelet %s: image garbage collection removed %d image(s), %d bytes; "
                    "image filesystem %d %% used, was %d %%",
                    self.node.name,
                    len(result.removed),
                    result.freed,
                    after.percent,
                    usage.percent,
                )
        if result.errors:
            result.failure = (
                f"wanted to free {result.to_free} bytes, but freed {space_freed} bytes with "
                f"errors in image deletion: {'; '.join(result.errors)}"
            )
        elif space_freed < result.to_free:
            result.failure = (
                "Failed to garbage collect required amount of images. Attempted to free "
                f"{result.to_free} bytes, but only found {space_freed} bytes eligible to free."
            )
            self._node_event("FreeDiskSpaceFailed", result.failure)
        return result

    async def _image_gc_loop(self) -> None:
        """Detect the images at start, then collect every ``image_gc_period``. A failed run is
        logged; one that fails again is also an ``ImageGCFailed`` event, as on a kubelet."""
        try:
            await self.detect_images()
        except CriError as e:
            log.warning("kubelet %s: listing images failed: %s", self.node.name, e)
        failed = False
        while True:
            await asyncio.sleep(self.image_gc_period)  # the period itself
            if self.image_gc.disabled:
                continue
            try:
                error = (await self.collect_images()).failure
            except (CriError, ImageGcFailed, OSError) as e:
                error = str(e)
            except Exception as e:  # a defect: its traceback is logged; the next run may succeed
                log.exception("kubelet %s: image garbage collection failed", self.node.name)
                error = f"{type(e).__name__}: {e}"
            if error:
                log.warning(
                    "kubelet %s: image garbage collection failed: %s", self.node.name, error
                )
            if error and failed:
                self._node_event("ImageGCFailed", error)
            failed = bool(error)

    # ---- the kubelet's HTTP API ------------------------------------------------------------

    def find(self, namespace: str, pod: str) -> PodRecord | None:
        return next(
            (r for r in self.pods.values() if r.namespace == namespace and r.name == pod), None
        )

    async def checkpoint(self, namespace: str, pod: str, container: str, timeout: float) -> str:
        """Checkpoint one container through the runtime; it keeps running. Returns the
        archive's path, as the kubelet's ``/checkpoint`` answers it."""
        rec = self.find(namespace, pod)
        if rec is None or container not in rec.containers:
            raise web.HTTPError(
                404,
                "pod or container %s/%s/%s not found on node %s",
                namespace,
                pod,
                container,
                self.node.name,
            )
        stamp = rfc3339(self.clock())
        path = os.path.join(
            self.checkpoint_dir, f"checkpoint-{pod}_{namespace}-{container}-{stamp}.tar"
        )
        try:
            await self.faults.reach("checkpoint", pod)
            await self.runtime.checkpoint_container(
                rec.containers[container], path, max(1, int(timeout))
            )
            if rec.gpus and self.node.cuda_plugin:
                await asyncio.to_thread(self._simulate_cuda_plugin, rec, path)
            await self.faults.reach("checkpoint-written", pod)
        except InjectedFault as e:
            raise web.HTTPError(e.status, "%s", e.message) from e
        except CriError as e:
            # runc names CRIU's log but not CRIU's reason; the log goes with the container.
            reason = await asyncio.to_thread(read_criu_errors, criu_log_path(e.details))
            raise CriError(
                e.method, e.code, f"{e.details}: {reason}" if reason else e.details
            ) from e
        return path

    def _simulate_cuda_plugin(self, rec: PodRecord, archive: str) -> None:
        """Mark, in the archive, the device state a CUDA plugin would have written: SIMULATED
        (the pod's process never used a GPU, and no GPU memory is in the checkpoint). The
        marker names the GPUs (UUIDs and indices) and the node's device mode, which the
        simulated restore (:mod:`.gpurestore`) checks."""
        marker = {
            "simulated": True,
            "what": "jhub-suspend local cluster: simulated CUDA plugin, not a CUDA checkpoint",
            "node": self.node.name,
            "gpus": [gpu_uuid(self.node.name, i) for i in rec.gpus],
            "indices": list(rec.gpus),
            "device_mode": self.node.gpu_device_mode,
        }
        data = json.dumps(marker).encode()
        with tempfile.TemporaryFile() as f, tarfile.open(archive, "a") as tar:
            f.write(data)
            f.seek(0)
            info = tarfile.TarInfo(SIMULATED_CUDA_MARKER)
            info.size = len(data)
            tar.addfile(info, f)
        log.warning(
            "SIMULATED CUDA plugin on %s: marked device state of GPU(s) %s in %s",
            self.node.name, marker["gpus"], archive,
        )  # fmt: skip

    async def _simulate_cuda_restore(
        self, pod: dict, rec: PodRecord, image: str, status: Any
    ) -> None:
        """Apply the SIMULATED CUDA plugin's restore rules (:mod:`.gpurestore`) to a pod
        restoring a checkpoint image that carries the simulated marker; raise
        :class:`PodFailed` as the runtime's create would fail."""
        digest = image.partition("@")[2]
        if not digest and status is not None and status.repo_digests:
            digest = status.repo_digests[0].partition("@")[2]
        if not (digest and self.content_dir):
            return
        marker = await asyncio.to_thread(read_marker, self.content_dir, digest)
        if not isinstance(marker, dict) or marker.get("simulated") is not True:
            return
        outcome = simulated_cuda_restore(
            marker, self.node.name, self.node.gpu_device_mode, rec.gpus
        )
        where = f"{rec.namespace}/{rec.name} on {self.node.name}"
        if not outcome.ok:
            log.warning("SIMULATED CUDA restore of %s failed: %s", where, outcome.message)
            raise PodFailed(
                "CreateContainerError", f"restoring checkpoint failed: {outcome.message}"
            )
        if outcome.device_map:
            log.warning(
                "SIMULATED CUDA plugin on %s: remapped GPUs by UUID for %s (CDI): %s",
                self.node.name, where, outcome.device_map,
            )  # fmt: skip
            self._event(
                pod,
                "SimulatedGpuRemap",
                f"SIMULATED CUDA restore: GPUs remapped by UUID (cuda.device-map "
                f"{outcome.device_map})",
            )

    async def usage(self) -> list[metrics.ContainerUsage]:
        """CPU and memory of this node's containers, from the runtime's cgroup statistics."""
        owners = {
            cid: (rec, name) for rec in self.pods.values() for name, cid in rec.containers.items()
        }
        out = []
        for stats in await self.runtime.list_container_stats():
            owner = owners.get(stats.attributes.id)
            if owner is None:
                continue
            rec, name = owner
            out.append(
                metrics.ContainerUsage(
                    namespace=rec.namespace,
                    pod=rec.name,
                    container=name,
                    node=self.node.name,
                    cpu_seconds=stats.cpu.usage_core_nano_seconds.value / 1e9,
                    working_set_bytes=stats.memory.working_set_bytes.value,
                )
            )
        return out

    def gpu_samples(self) -> list[metrics.GpuSample]:
        owners = {i: rec for rec in self.pods.values() for i in rec.gpus}
        samples = []
        for i in range(self.node.gpus):
            rec = owners.get(i)
            samples.append(
                metrics.GpuSample(
                    gpu=i,
                    uuid=gpu_uuid(self.node.name, i),
                    model_name=self.node.gpu_product.replace("-", " "),
                    hostname=self.node.name,
                    utilization=self.gpu_util.get(i, 0.0) if rec else 0.0,
                    fb_used_mib=self.gpu_fb_used.get(i, 0.0) if rec else 0.0,
                    namespace=rec.namespace if rec else "",
                    pod=rec.name if rec else "",
                    container=next(iter(rec.containers), "") if rec else "",
                )
            )
        return samples

    def make_app(self) -> web.Application:
        return web.Application(
            [
                (r"/healthz", HealthHandler, {"kubelet": self}),
                (r"/pods/?", PodsHandler, {"kubelet": self}),
                (r"/checkpoint/([^/]+)/([^/]+)/([^/]+)", CheckpointHandler, {"kubelet": self}),
                (r"/metrics/cadvisor", CadvisorHandler, {"kubelet": self}),
                (r"/metrics/dcgm", DcgmHandler, {"kubelet": self}),
                (r"/debug/gpus/([0-9]+)", GpuUtilHandler, {"kubelet": self}),
            ]
        )


class KubeletHandler(web.RequestHandler):
    # What each handler needs, as the real kubelet maps paths to node subresources.
    verb = "get"
    subresource = "proxy"

    def initialize(self, kubelet: Kubelet) -> None:
        self.kubelet = kubelet

    def prepare(self) -> None:
        if self.kubelet.authorize is None:
            return
        header = self.request.headers.get("Authorization", "")
        token = header[len("Bearer ") :] if header.startswith("Bearer ") else None
        if token is None:
            raise web.HTTPError(401, "Unauthorized")
        if self.kubelet.authorize(token, self.verb, "nodes", self.subresource) is None:
            raise web.HTTPError(
                403, "Forbidden (user cannot %s nodes/%s)", self.verb, self.subresource
            )

    def write_error(self, status_code: int, **kwargs: object) -> None:
        exc = kwargs.get("exc_info")
        message = self._reason
        err = exc[1] if isinstance(exc, tuple) else None
        if isinstance(err, web.HTTPError) and err.log_message:
            message = err.log_message % err.args if err.args else err.log_message
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message + "\n")


class HealthHandler(KubeletHandler):
    def prepare(self) -> None:  # /healthz is open, as on a real kubelet
        pass

    def get(self) -> None:
        if reason := self.kubelet.unhealthy:
            raise web.HTTPError(503, "%s", reason)
        self.finish("ok")


class PodsHandler(KubeletHandler):
    def get(self) -> None:
        items = [self.kubelet._current(r) for r in list(self.kubelet.pods.values())]
        self.finish({"kind": "PodList", "apiVersion": "v1", "items": [p for p in items if p]})


class CheckpointHandler(KubeletHandler):
    verb = "create"
    subresource = "checkpoint"

    async def post(self, namespace: str, pod: str, container: str) -> None:
        try:
            timeout = float(self.get_argument("timeout", "60"))
        except ValueError:
            raise web.HTTPError(400, "timeout must be a number of seconds") from None
        try:
            path = await self.kubelet.checkpoint(namespace, pod, container, timeout)
        except web.HTTPError:
            raise
        except Exception as e:
            log.warning("checkpoint of %s/%s/%s failed: %s", namespace, pod, container, e)
            raise web.HTTPError(500, "checkpointing the container failed: %s", e) from e
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"items": [path]}))


class CadvisorHandler(KubeletHandler):
    subresource = "metrics"

    async def get(self) -> None:
        try:
            usage = await self.kubelet.usage()
        except CriError as e:
            raise web.HTTPError(500, "reading container statistics from the runtime: %s", e) from e
        self.set_header("Content-Type", "text/plain; version=0.0.4")
        self.finish(metrics.cadvisor_metrics(usage))


class DcgmHandler(KubeletHandler):
    def prepare(self) -> None:  # the DCGM exporter is a separate, unauthenticated endpoint
        pass

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4")
        self.finish(metrics.dcgm_metrics(self.kubelet.gpu_samples()))


class GpuUtilHandler(KubeletHandler):
    verb = "update"

    def put(self, index: str) -> None:
        i = int(index)
        if i >= self.kubelet.node.gpus:
            raise web.HTTPError(404, "node %s has no GPU %s", self.kubelet.node.name, i)
        usage = 'body must be {"utilization": <percent>, "fb_used_mib": <MiB>} (either or both)'
        try:
            body = json.loads(self.request.body or b"{}")
            values = {k: float(body[k]) for k in ("utilization", "fb_used_mib") if k in body}
        except (ValueError, TypeError, AttributeError):
            raise web.HTTPError(400, usage) from None
        if not values or len(values) != len(body):
            raise web.HTTPError(400, usage)
        if not 0 <= values.get("utilization", 0) <= 100:
            raise web.HTTPError(400, "utilization must be between 0 and 100")
        if not 0 <= values.get("fb_used_mib", 0) < float("inf"):
            raise web.HTTPError(400, "fb_used_mib must be a number of MiB, at least 0")
        if "utilization" in values:
            self.kubelet.gpu_util[i] = values["utilization"]
        if "fb_used_mib" in values:
            self.kubelet.gpu_fb_used[i] = values["fb_used_mib"]
        self.finish(
            {
                "gpu": i,
                "utilization": self.kubelet.gpu_util.get(i, 0.0),
                "fb_used_mib": self.kubelet.gpu_fb_used.get(i, 0.0),
            }
        )
