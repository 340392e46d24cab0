"""The kubelet of one local-cluster node.

It registers its node, runs the pods bound to it as real process trees (through ``runtime``),
reports their status and events back to the API, and serves the kubelet's own HTTP API:

- ``POST /checkpoint/{namespace}/{pod}/{container}?timeout=N``, the kubelet checkpoint contract:
  a real CRIU dump, the container keeps running, the answer is ``{"items": [archive path]}``;
- ``GET /healthz``, ``GET /pods``;
- ``GET /metrics/cadvisor`` (container CPU and memory measured from the real processes) and
  ``GET /metrics/dcgm`` (the node's simulated GPUs, DCGM-exporter style), with
  ``PUT /debug/gpus/{index}`` for tests and demos to set a simulated GPU's utilisation.

A container whose image is a checkpoint image (annotated
``io.kubernetes.cri-o.annotations.checkpoint.name``) is pulled and restored with CRIU instead of
started, as CRI-O does with ``container_level_enabled = "checkpoint_restore"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from .. import images
from . import metrics
from .network import NetnsInfo, PodNetwork
from .podstatus import set_condition
from .runtime import ContainerProcess, Runtime
from .store import ApiError, Store, rfc3339

log = logging.getLogger(__name__)

CHECKPOINT_ANNOTATION = "io.kubernetes.cri-o.annotations.checkpoint.name"
RUNTIME_NAME = "jhub-suspend-localcluster"

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
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict] = field(default_factory=list)


def node_object(cfg: NodeConfig, address: str, port: int, now: float) -> dict:
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
        labels.setdefault("nvidia.com/gpu.product", cfg.gpu_product)
        labels.setdefault("nvidia.com/gpu.count", str(cfg.gpus))
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
                "containerRuntimeVersion": f"{RUNTIME_NAME}://0.1",
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


def container_argv(container: dict) -> list[str]:
    """What a container runs: ``command`` + ``args`` (there is no image entrypoint here)."""
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    if not argv:
        raise ValueError(
            f"container {container.get('name')!r} has neither command nor args; "
            "the local cluster runs commands on the host and has no image entrypoint"
        )
    return argv


def container_env(container: dict, pod: dict, extra: dict[str, str]) -> dict[str, str]:
    """The container's environment: a minimal base, the pod's env (with downward-API fields)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOSTNAME": pod["metadata"]["name"],
        "LANG": "C.UTF-8",
        **extra,
    }
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = _expand(str(item["value"]), env)
        elif field_ref := (item.get("valueFrom") or {}).get("fieldRef"):
            env[item["name"]] = str(_field_path(pod, field_ref.get("fieldPath", "")))
    return env


def _expand(value: str, env: dict[str, str]) -> str:
    for k, v in env.items():
        value = value.replace(f"$({k})", v)
    return value


def _field_path(pod: dict, path: str) -> str:
    obj: object = pod
    for part in path.split("."):
        obj = obj.get(part, "") if isinstance(obj, dict) else ""
    return str(obj or "")


@dataclass(frozen=True)
class RunAs:
    """The user a container runs as, from the pod's and the container's securityContext."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    fs_group: int | None

    def argv(self) -> list[str]:
        """A prefix that drops to this user and then execs the command (the pid stays the same)."""
        groups = ",".join(str(g) for g in self.groups)
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            f"--groups={groups}" if groups else "--clear-groups",
            "--",
        ]


def run_as(pod: dict, container: dict) -> RunAs | None:
    """Who the container runs as; None means root, the default user of the host "image"."""
    psc = pod["spec"].get("securityContext") or {}
    csc = container.get("securityContext") or {}
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    if uid is None or uid == 0:
        return None
    gid = csc.get("runAsGroup", psc.get("runAsGroup", 0))
    fs_group = psc.get("fsGroup")
    groups = tuple(
        dict.fromkeys(
            ([fs_group] if fs_group is not None else []) + psc.get("supplementalGroups", [])
        )
    )
    return RunAs(int(uid), int(gid), tuple(int(g) for g in groups), fs_group)


def volume_dirs(pod: dict, state_dir: str) -> dict[str, str]:
    """Host directories for the pod's volumes, by volume name.

    A PVC is a directory per claim, so it outlives the pod as a real volume does; other
    volumes live with the pod.
    """
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    dirs = {}
    for vol in pod["spec"].get("volumes") or []:
        if claim := vol.get("persistentVolumeClaim"):
            dirs[vol["name"]] = os.path.join(state_dir, "volumes", ns, claim["claimName"])
        else:
            dirs[vol["name"]] = os.path.join(state_dir, "pods", ns, name, "volumes", vol["name"])
    return dirs


def host_path(container: dict, mounts: dict[str, str], path: str) -> str | None:
    """The host directory that a path inside the container maps to, through its mounts."""
    best: tuple[int, str] | None = None
    for m in container.get("volumeMounts") or []:
        mount_path = m["mountPath"].rstrip("/") or "/"
        if m["name"] in mounts and (path == mount_path or path.startswith(mount_path + "/")):
            rel = path[len(mount_path) :].lstrip("/")
            if best is None or len(mount_path) > best[0]:
                host = os.path.join(mounts[m["name"]], rel) if rel else mounts[m["name"]]
                best = (len(mount_path), host)
    return best[1] if best else None


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
            "containerID": f"{RUNTIME_NAME}://{c['id']}",
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
    """What the kubelet holds for a pod it runs."""

    uid: str
    namespace: str
    name: str
    netns: NetnsInfo | None = None
    containers: dict[str, ContainerProcess] = field(default_factory=dict)
    gpus: list[int] = field(default_factory=list)
    task: asyncio.Task | None = None


class Kubelet:
    """Runs the pods bound to one node. IO lives here; decisions are the functions above."""

    def __init__(
        self,
        store: Store,
        node: NodeConfig,
        runtime: Runtime,
        network: PodNetwork,
        *,
        state_dir: str,
        checkpoint_dir: str | None = None,
        checkpoint_registries: tuple[str, ...] = (),
        registry_tls_verify: bool = False,
        authorize: Authorizer | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        self.node = node
        self.runtime = runtime
        self.network = network
        self.state_dir = state_dir
        self.checkpoint_dir = checkpoint_dir or os.path.join(state_dir, "checkpoints", node.name)
        self.checkpoint_registries = checkpoint_registries
        self.registry_tls_verify = registry_tls_verify
        self.authorize = authorize
        self.clock = clock or store.clock
        self.pods: dict[str, PodRecord] = {}
        self.gpu_util: dict[int, float] = {}
        self.address = "127.0.0.1"
        self.port = 0
        self._server: HTTPServer | None = None
        self._watch_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._terminating: set[str] = set()

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve the kubelet API, register the node and start watching its pods."""
        sockets = bind_sockets(port, host)
        self.address, self.port = host, sockets[0].getsockname()[1]
        server = self._server = HTTPServer(self.make_app())
        server.add_sockets(sockets)
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        self._register_node()
        self._watch_task = asyncio.create_task(self._watch(), name=f"kubelet-{self.node.name}")
        log.info("kubelet %s serving on %s:%s", self.node.name, self.address, self.port)

    def _register_node(self) -> None:
        obj = node_object(self.node, self.address, self.port, self.clock())
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
        """Stop watching and end every pod's processes; the API objects stay as they are."""
        if self._watch_task:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await asyncio.gather(*(self._teardown(rec) for rec in list(self.pods.values())))
        if self._server:
            self._server.stop()

    @property
    def healthy(self) -> bool:
        return self._watch_task is not None and not self._watch_task.done()

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
            rec.netns = await self.network.create_netns(
                f"{self.network.netns_prefix}{rec.uid[:13]}"
            )
            started: dict[str, dict] = {}
            for container in pod["spec"]["containers"]:
                proc, info = await self._start_container(pod, rec, container)
                rec.containers[container["name"]] = proc
                started[container["name"]] = info
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
        host_ip = self.address
        self._set_status(
            current, running_status(current, rec.netns.ip, host_ip, self.clock(), started)
        )
        exit_codes = dict(
            zip(
                rec.containers,
                await asyncio.gather(*(p.wait() for p in rec.containers.values())),
                strict=True,
            )
        )
        current = self._current(rec)
        if current is not None and not current["metadata"].get("deletionTimestamp"):
            log.info("pod %s/%s ended: %s", rec.namespace, rec.name, exit_codes)
            self._set_status(current, terminated_status(current, exit_codes, self.clock()))

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
        self, pod: dict, rec: PodRecord, container: dict
    ) -> tuple[ContainerProcess, dict]:
        name, image = container["name"], container["image"]
        pod_dir = os.path.join(self.state_dir, "pods", rec.namespace, rec.name)
        log_path = os.path.join(pod_dir, "logs", f"{name}-{int(self.clock())}.log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        assert rec.netns is not None
        info = {"image": image, "started": self.clock(), "id": f"{rec.uid[:12]}-{name}"}

        checkpoint = await self._checkpoint_image(pod, image)
        if checkpoint is not None:
            return await self._restore_container(pod, rec, container, checkpoint, log_path), {
                **info,
                "imageID": f"{image}@{checkpoint['digest']}",
            }

        user = run_as(pod, container)
        mounts = volume_dirs(pod, self.state_dir)
        workdir = container.get("workingDir")
        cwd = (host_path(container, mounts, workdir) if workdir else None) or os.path.join(
            pod_dir, "home"
        )
        for path in {*mounts.values(), cwd}:
            if not os.path.isdir(path):
                os.makedirs(path)
                # As the kubelet applies fsGroup to volumes, so the user can write them.
                if user:
                    os.chown(
                        path, user.uid, user.fs_group if user.fs_group is not None else user.gid
                    )
        extra = {"HOME": cwd}
        if rec.gpus:
            devices = ",".join(str(i) for i in rec.gpus)
            extra.update(NVIDIA_VISIBLE_DEVICES=devices, CUDA_VISIBLE_DEVICES=devices)
        try:
            argv = (user.argv() if user else []) + container_argv(container)
            env = container_env(container, pod, extra)
            proc = await self.runtime.start(rec.netns, argv, env, cwd, log_path)
        except (ValueError, OSError) as e:
            raise PodFailed("CreateContainerError", str(e)) from e
        self._event(pod, "Started", f"Started container {name}")
        return proc, info

    async def _checkpoint_image(self, pod: dict, image: str) -> dict | None:
        """The checkpoint image's manifest facts, or None for an ordinary image."""
        if not any(image.startswith(r + "/") for r in self.checkpoint_registries):
            return None
        self._event(pod, "Pulling", f'Pulling image "{image}"')
        try:
            facts = await images.inspect(image, tls_verify=self.registry_tls_verify)
        except images.ImageError as e:
            raise PodFailed("ErrImagePull", f'Failed to pull image "{image}": {e}') from e
        if CHECKPOINT_ANNOTATION not in (facts.get("annotations") or {}):
            return None
        return facts

    async def _restore_container(
        self, pod: dict, rec: PodRecord, container: dict, facts: dict, log_path: str
    ) -> ContainerProcess:
        image = container["image"]
        assert rec.netns is not None
        dest = os.path.join(self.state_dir, "restore", rec.uid, container["name"])
        started = self.clock()
        try:
            archive = await images.pull_archive(image, dest, tls_verify=self.registry_tls_verify)
        except images.ImageError as e:
            raise PodFailed("ErrImagePull", f'Failed to pull image "{image}": {e}') from e
        self._event(
            pod,
            "Pulled",
            f'Successfully pulled checkpoint image "{image}" ({facts.get("size", 0)} bytes) '
            f"in {self.clock() - started:.1f}s",
        )
        try:
            proc = await self.runtime.restore(archive, rec.netns, log_path)
        except Exception as e:  # CRIU's reason is in the message
            raise PodFailed("CreateContainerError", f"restoring checkpoint failed: {e}") from e
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        self._event(
            pod,
            "Started",
            f"Restored container {container['name']} from checkpoint image {image} "
            f"in {self.clock() - started:.1f}s",
        )
        return proc

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
        await asyncio.gather(*(self.runtime.terminate(p, grace) for p in rec.containers.values()))
        if rec.netns:
            await self.network.delete_netns(rec.netns.name)
        shutil.rmtree(
            os.path.join(self.state_dir, "pods", rec.namespace, rec.name, "volumes"),
            ignore_errors=True,
        )

    # ---- the kubelet's HTTP API ------------------------------------------------------------

    def find(self, namespace: str, pod: str) -> PodRecord | None:
        return next(
            (r for r in self.pods.values() if r.namespace == namespace and r.name == pod), None
        )

    async def checkpoint(self, namespace: str, pod: str, container: str, timeout: float) -> str:
        """Checkpoint one container with CRIU; it keeps running. Returns the archive's path."""
        rec = self.find(namespace, pod)
        if rec is None or container not in rec.containers or rec.netns is None:
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
        current = self._current(rec) or {"metadata": {"name": pod, "namespace": namespace}}
        await self.runtime.checkpoint(
            rec.containers[container],
            rec.netns,
            path,
            container_name=container,
            pod_meta=current["metadata"],
            timeout=timeout,
        )
        return path

    def usage(self) -> list[metrics.ContainerUsage]:
        out = []
        for rec in list(self.pods.values()):
            for name, proc in rec.containers.items():
                cpu, mem = self.runtime.usage(proc)
                out.append(
                    metrics.ContainerUsage(
                        namespace=rec.namespace,
                        pod=rec.name,
                        container=name,
                        node=self.node.name,
                        cpu_seconds=cpu,
                        working_set_bytes=mem,
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
                    uuid=f"GPU-{self.node.name}-{i:04d}",
                    model_name=self.node.gpu_product.replace("-", " "),
                    hostname=self.node.name,
                    utilization=self.gpu_util.get(i, 0.0) if rec else 0.0,
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
        if not self.kubelet.healthy:
            raise web.HTTPError(503, "pod watch is not running")
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

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4")
        self.finish(metrics.cadvisor_metrics(self.kubelet.usage()))


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
        try:
            value = float(json.loads(self.request.body or b"{}")["utilization"])
        except (ValueError, KeyError, TypeError):
            raise web.HTTPError(400, 'body must be {"utilization": <percent>}') from None
        if not 0 <= value <= 100:
            raise web.HTTPError(400, "utilization must be between 0 and 100")
        self.kubelet.gpu_util[i] = value
        self.finish({"gpu": i, "utilization": value})
