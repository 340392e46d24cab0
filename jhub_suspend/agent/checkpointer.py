"""The node-local part of a suspension, as one sequence with its IO injected.

1. ask the node's kubelet to checkpoint the container (it keeps running); for a pod holding
   GPUs, only where CRIU's CUDA plugin is installed;
2. check that the archive lies inside the checkpoint directory (never touch anything else);
   for a pod holding GPUs, that it holds their device state (CRIU's inventory lists the CUDA
   plugin, :func:`jhub_suspend.gpu.device_state_problem`): one without is a failed
   suspension, as the restored process would have lost its GPU memory;
3. build an OCI checkpoint image from it and push it;
4. verify the pushed image: same digest, the checkpoint annotation, a non-zero size;
5. delete the archive, after the push and also on every failure: it holds the notebook's
   memory, tokens included.

Only a :class:`CheckpointResult` means the caller may delete the pod. Every failure raises a
:class:`CheckpointError` whose ``status`` is the agent's HTTP answer and ``reason`` the metric
label.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .. import images
from ..archive import (
    INVENTORY_FILE,
    SIMULATED_CUDA_MARKER,
    SPEC_DUMP_FILE,
    InventoryError,
    checkpoint_image_annotations,
    inventory_plugins,
)
from ..errors import OwnError
from ..gpu import CUDA_PLUGIN_NAME, AgentGpuReport, device_state_problem, devices_from_spec
from ..retry import with_retries
from .criuconfig import node_setting_hint
from .kubelet import KubeletError
from .protocol import CheckpointRequest, CheckpointResult

log = logging.getLogger(__name__)

#: every failure reason (the ``reason`` label of the failure counter)
FAILURE_REASONS = (
    "not_found",
    "kubelet",
    "unsafe_path",
    "build",
    "registry",
    "verify",
    "gpu_state",
    "internal",
)


class CheckpointError(OwnError):
    """A checkpoint failed; nothing was left behind, and the pod must stay as it is."""

    reason = "internal"


class NotFound(CheckpointError):
    status, reason = 404, "not_found"


class KubeletFailed(CheckpointError):
    status, reason = 502, "kubelet"


class UnsafeArchivePath(CheckpointError):
    status, reason = 502, "unsafe_path"


class ImageBuildFailed(CheckpointError):
    status, reason = 500, "build"


class RegistryUnavailable(CheckpointError):
    status, reason = 503, "registry"


class VerificationFailed(CheckpointError):
    status, reason = 500, "verify"


class GpuStateMissing(CheckpointError):
    """A pod holding GPUs cannot be, or was not, checkpointed with its device state."""

    status, reason = 502, "gpu_state"


class Kubelet(Protocol):
    async def checkpoint(self, namespace: str, pod: str, container: str, timeout: float) -> str: ...


class ImageStore(Protocol):
    async def build_and_push(
        self, archive: str, ref: str, annotations: Mapping[str, str]
    ) -> str: ...

    async def inspect(self, ref: str) -> dict[str, Any]: ...

    async def delete(self, ref: str) -> None: ...


@dataclass
class RegistryImages:
    """:class:`ImageStore` backed by :mod:`jhub_suspend.images` (skopeo)."""

    tls_verify: bool = True
    config: images.ImageConfig | None = None

    async def build_and_push(self, archive: str, ref: str, annotations: Mapping[str, str]) -> str:
        return await images.build_and_push(
            archive, ref, annotations, tls_verify=self.tls_verify, config=self.config
        )

    async def inspect(self, ref: str) -> dict[str, Any]:
        return await images.inspect(ref, tls_verify=self.tls_verify, config=self.config)

    async def delete(self, ref: str) -> None:
        await images.delete(ref, tls_verify=self.tls_verify, config=self.config)


def inside(path: str, directory: str) -> str | None:
    """``path`` resolved (symlinks too) if it lies strictly inside ``directory``, else None."""
    if not path or not os.path.isabs(path):
        return None
    real = os.path.realpath(path)
    base = os.path.realpath(directory)
    if real == base or os.path.commonpath([real, base]) != base:
        return None
    return real


def remove_archive(path: str) -> bool:
    """Delete an archive; True when it is gone (also when it never existed)."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return True
    except OSError as e:
        log.error("could not delete checkpoint archive %s: %s", path, e)
        return False
    return True


@dataclass(frozen=True)
class DeviceState:
    """What a checkpoint archive says of GPU device state (see :func:`read_device_state`)."""

    #: the plugins CRIU's inventory lists; None when it has no readable inventory
    plugins: list[str] | None
    #: it carries the local cluster's simulated-plugin marker
    simulated: bool = False
    #: the GPUs the container held, from its ``spec.dump`` (see
    #: :func:`jhub_suspend.gpu.devices_from_spec`); empty when it does not say
    devices: tuple[str, ...] = ()


def read_device_state(archive: str, max_bytes: int = 1 << 20) -> DeviceState:
    """Read CRIU's inventory and the simulated-plugin marker from a checkpoint archive."""
    plugins: list[str] | None = None
    simulated = False
    devices: tuple[str, ...] = ()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if not member.isfile() or member.size > max_bytes:
                    continue
                if name == INVENTORY_FILE:
                    f = tar.extractfile(member)
                    if f is not None:
                        try:
                            plugins = inventory_plugins(f.read())
                        except InventoryError as e:
                            log.warning("unreadable CRIU inventory in %s: %s", archive, e)
                elif name == SPEC_DUMP_FILE:
                    f = tar.extractfile(member)
                    if f is not None:
                        try:
                            devices = devices_from_spec(json.loads(f.read()))
                        except ValueError as e:
                            log.warning("unreadable spec.dump in %s: %s", archive, e)
                elif name == SIMULATED_CUDA_MARKER:
                    f = tar.extractfile(member)
                    if f is not None:
                        try:
                            simulated = json.loads(f.read()).get("simulated") is True
                        except (ValueError, AttributeError):
                            simulated = False
    except (OSError, EOFError, tarfile.TarError) as e:
        log.warning("could not read checkpoint archive %s: %s", archive, e)
    return DeviceState(plugins, simulated, devices)


def sweep_orphans(
    directory: str, max_age: float, in_use: Iterable[str] = (), now: float | None = None
) -> list[str]:
    """Delete kubelet checkpoint archives (``checkpoint-*.tar``) older than ``max_age`` seconds
    that no running checkpoint uses, e.g. one the kubelet finished after its caller gave up,
    and the image layouts built beside them (``checkpoint-*.tar.oci``, which hold the archive
    as a hard link) that an agent killed mid-push left. Returns the paths deleted."""
    now = time.time() if now is None else now
    busy = {os.path.realpath(p) for p in in_use}
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    busy |= {os.path.realpath(images.layout_path(p)) for p in busy}
    for entry in entries:
        layout = entry.name.endswith(".tar" + images.LAYOUT_SUFFIX)
        if not (entry.name.startswith("checkpoint-") and (layout or entry.name.endswith(".tar"))):
            continue
        if os.path.realpath(entry.path) in busy:
            continue
        if not (entry.is_dir if layout else entry.is_file)(follow_symlinks=False):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        if age <= max_age:
            continue
        if layout:
            shutil.rmtree(entry.path, ignore_errors=True)
            gone = not os.path.exists(entry.path)
        else:
            gone = remove_archive(entry.path)
        if gone:
            log.warning("deleted orphaned checkpoint archive %s (%.0f s old)", entry.path, age)
            removed.append(entry.path)
    return removed


#: seconds before the one retry of a checkpoint whose container the runtime could not freeze
FREEZE_RETRY_DELAY = 1.0


def freeze_failed(e: BaseException) -> bool:
    """Whether the runtime failed to freeze the container's cgroup before CRIU ran (runc's
    "unable to freeze", seen once on a busy node in the 100-server load run): nothing was
    dumped and the container runs on, so one more try is safe."""
    return isinstance(e, KubeletError) and e.status == 500 and "unable to freeze" in e.message


class Checkpointer:
    """Runs the sequence for one node. ``on_archive`` is told each archive path in use and
    ``None`` when it is gone, so a sweeper can leave it alone."""

    def __init__(
        self,
        kubelet: Kubelet,
        image_store: ImageStore,
        checkpoint_dir: str,
        *,
        node_name: str = "",
        timeout: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        remove: Callable[[str], bool] = remove_archive,
        gpu_report: Callable[[], AgentGpuReport] | None = None,
        accept_simulated_gpu_state: bool = False,
        on_gpu_checkpoint: Callable[[str], None] | None = None,
    ) -> None:
        self.kubelet = kubelet
        self.images = image_store
        self.checkpoint_dir = checkpoint_dir
        self.node_name = node_name
        self.timeout = timeout
        self.clock = clock
        self.remove = remove
        self.gpu_report = gpu_report
        self.accept_simulated_gpu_state = accept_simulated_gpu_state
        self.archives_in_use: set[str] = set()
        self.cleanup_failures = 0
        #: told "real" or "simulated" after each successful checkpoint of a pod holding GPUs
        self.on_gpu_checkpoint = on_gpu_checkpoint

    async def checkpoint(self, req: CheckpointRequest) -> CheckpointResult:
        timings: dict[str, float] = {}
        start = self.clock()
        device_mode = ""
        if req.gpus:
            device_mode = await self._check_gpu_node(req)
        raw_path = await self._kubelet_checkpoint(req)
        timings["checkpoint"] = self.clock() - start
        archive = inside(raw_path, self.checkpoint_dir)
        if archive is None:
            # Not ours to read or delete, whatever it is.
            raise UnsafeArchivePath(
                f"the kubelet returned the archive path {raw_path!r}, which is not inside the "
                f"checkpoint directory {self.checkpoint_dir}; refusing to read or delete it"
            )
        self.archives_in_use.add(archive)
        device_state = ""
        devices: tuple[str, ...] = ()
        try:
            if req.gpus:
                device_state, devices = await self._check_device_state(req, archive)
            archive_bytes = await self._archive_size(archive)
            annotations = {
                **req.annotations,
                **checkpoint_image_annotations(req.container, pod=req.pod, namespace=req.namespace),
            }
            t = self.clock()
            digest = await self._push(archive, req.image, annotations)
            timings["push"] = self.clock() - t
            t = self.clock()
            size = await self._verify(req.image, digest, annotations)
            timings["verify"] = self.clock() - t
        finally:
            await self._delete_archive(archive)
        timings["total"] = self.clock() - start
        if device_state and self.on_gpu_checkpoint:
            self.on_gpu_checkpoint(device_state)
        return CheckpointResult(
            image=images.pinned_reference(f"{req.image}@{digest}"),
            digest=digest,
            size=size,
            archive_bytes=archive_bytes,
            timings={k: round(v, 3) for k, v in timings.items()},
            gpu_device_mode=device_mode,
            gpu_devices=devices,
        )

    async def _archive_size(self, archive: str) -> int:
        try:
            return await asyncio.to_thread(os.path.getsize, archive)
        except OSError as e:
            raise KubeletFailed(f"the kubelet's checkpoint archive is not readable: {e}") from e

    async def _delete_archive(self, archive: str) -> None:
        # Shielded: an agent shutting down must still not leave the notebook's memory behind.
        try:
            gone = await asyncio.shield(asyncio.to_thread(self.remove, archive))
        finally:
            self.archives_in_use.discard(archive)
        if gone:
            log.info("deleted checkpoint archive %s", archive)
        else:
            self.cleanup_failures += 1

    async def _check_gpu_node(self, req: CheckpointRequest) -> str:
        """Refuse before dumping a GPU pod where CRIU's CUDA plugin is missing: the checkpoint
        would lack its GPU memory. Return the node's device mode ("" unknown), which a restore
        needs."""
        report = await asyncio.to_thread(self.gpu_report) if self.gpu_report else None
        if report is None or not report.cuda_plugin:
            raise GpuStateMissing(
                f"cannot checkpoint {self._where(req)}: it holds {req.gpus} GPU(s), and CRIU's "
                "CUDA plugin (cuda_plugin.so) is not installed on this node; the server keeps "
                "running"
            )
        return report.device_mode or ""

    async def _check_device_state(
        self, req: CheckpointRequest, archive: str
    ) -> tuple[str, tuple[str, ...]]:
        """Raise unless the archive holds GPU device state; say which kind ("real",
        "simulated"), and the GPUs the container held (from its spec.dump; empty when it does
        not say)."""
        state = await asyncio.to_thread(read_device_state, archive)
        problem = device_state_problem(
            state.plugins,
            simulated_marker=state.simulated,
            accept_simulated=self.accept_simulated_gpu_state,
        )
        if problem:
            raise GpuStateMissing(
                f"the checkpoint of {self._where(req)} is unusable: {problem}; it was deleted "
                "and the server keeps running"
            )
        if not state.devices:
            log.warning(
                "the checkpoint of %s does not say which GPUs it held (no device list in its "
                "spec.dump); a restore cannot remap them",
                self._where(req),
            )
        if state.plugins is not None and CUDA_PLUGIN_NAME in state.plugins:
            return "real", state.devices
        log.warning(
            "SIMULATED GPU device state in the checkpoint of %s (the local cluster's "
            "simulated CUDA plugin; no real CUDA checkpoint)",
            self._where(req),
        )
        return "simulated", state.devices

    def _where(self, req: CheckpointRequest) -> str:
        node = f" on node {self.node_name}" if self.node_name else ""
        return f"{req.namespace}/{req.pod}/{req.container}{node}"

    async def _kubelet_checkpoint(self, req: CheckpointRequest) -> str:
        try:
            # Only a failed freeze is tried again; any other answer may come from a CRIU that
            # did (part of) its work.
            return await with_retries(
                lambda _: self.kubelet.checkpoint(
                    req.namespace, req.pod, req.container, self.timeout
                ),
                f"checkpoint of {self._where(req)}",
                retryable=freeze_failed,
                attempt_timeout=self.timeout,
                total_timeout=2 * self.timeout + FREEZE_RETRY_DELAY,
                max_attempts=2,
                cancel=False,  # the kubelet client keeps to the checkpoint's own timeout
                start_wait=FREEZE_RETRY_DELAY,
                log=log,
            )
        except KubeletError as e:
            where = self._where(req)
            if e.status == 404:
                raise NotFound(
                    f"no container {req.container} in pod {req.namespace}/{req.pod} here; "
                    f"the kubelet{' on node ' + self.node_name if self.node_name else ''} "
                    f"answered 404: {e.message}"
                ) from e
            if e.status in (401, 403):
                raise KubeletFailed(
                    f"the kubelet refused the agent's credentials ({e.status}: {e.message}); "
                    "the agent's service account needs create on nodes/checkpoint"
                ) from e
            hint = node_setting_hint(e.message)
            raise KubeletFailed(
                f"checkpointing {where} failed: {e}" + (f". {hint}" if hint else "")
            ) from e

    async def _push(self, archive: str, ref: str, annotations: Mapping[str, str]) -> str:
        try:
            return await self.images.build_and_push(archive, ref, annotations)
        except images.ImagePushFailed as e:
            raise RegistryUnavailable(f"registry: {e}") from e
        except images.ImageError as e:
            raise ImageBuildFailed(f"building the checkpoint image failed: {e}") from e

    async def _verify(self, ref: str, digest: str, annotations: Mapping[str, str]) -> int:
        try:
            facts = await self.images.inspect(ref)
        except images.ImageNotFound as e:
            raise VerificationFailed(f"the pushed image {ref} is not in the registry: {e}") from e
        except images.ImageError as e:
            raise RegistryUnavailable(f"registry: verifying {ref}: {e}") from e
        problems = verification_problems(facts, digest, annotations)
        if problems:
            raise VerificationFailed(
                f"the pushed image {ref} does not verify: {'; '.join(problems)}"
            )
        return int(facts["size"])


def verification_problems(
    facts: Mapping[str, Any], digest: str, annotations: Mapping[str, str]
) -> list[str]:
    """What is wrong with a pushed image compared with what was pushed (pure)."""
    problems = []
    if not digest.startswith("sha256:"):
        problems.append(f"the push returned no sha256 digest ({digest!r})")
    elif facts.get("digest") != digest:
        problems.append(f"registry digest {facts.get('digest')} != pushed digest {digest}")
    found = facts.get("annotations") or {}
    for key, value in annotations.items():
        if found.get(key) != value:
            problems.append(f"annotation {key} is {found.get(key)!r}, expected {value!r}")
    if not int(facts.get("size") or 0) > 0:
        problems.append("the image has no layer data (size 0)")
    return problems
