"""Whether a node can checkpoint a CUDA process, and whether a checkpoint holds its GPU state
(pure: data in, a verdict and a sentence out).

A GPU server is suspended only on a node known to be capable (:func:`node_capability`):

* **the driver** supports CUDA checkpoints: r580 and newer natively (the plugin calls the
  driver's checkpoint API), r550 to r579 through NVIDIA's ``cuda-checkpoint`` tool, older not
  at all. Read from GPU feature discovery's ``nvidia.com/cuda.driver-version.major`` (or the
  deprecated ``nvidia.com/cuda.driver.major``);
* **no MIG and no MPS**, which CUDA checkpoints do not support: ``nvidia.com/mig.strategy``
  ``single``/``mixed`` or a ``-MIG-`` product, ``nvidia.com/gpu.sharing-strategy=mps`` or
  ``nvidia.com/mps.capable=true``;
* **CRIU's CUDA plugin** on the node, and the device mode (CDI or legacy device injection),
  which no label says: the node's agent reports them about its own node
  (:class:`AgentGpuReport`, its ``GET /capabilities``).

Anything unknown (labels unreadable, no driver label, no agent report) is not capable, as
missing metrics are never idle.

A checkpoint of a GPU process holds its device state when CRIU's inventory image lists the CUDA
plugin (:func:`jhub_suspend.archive.inventory_plugins`): the plugin adds itself there when it
has locked and checkpointed a CUDA process, and CRIU's restore then requires the plugin.
:func:`device_state_problem` says what is wrong with one that does not.

On a capable node, one GPU server is suspendable only when (:func:`server_gpu_readiness`):

* **legacy device mode**: the pod holds ALL of its node's GPUs (``nvidia.com/gpu.count``). A
  CUDA restore works only onto the same GPU indices; only a pod that held every GPU of its
  node is guaranteed them (0..n-1) on any node of the same product and count. CDI mode remaps
  GPUs by UUID and has no such limit;
* **host memory to stage the GPU memory**: the CUDA plugin copies the device memory in use
  (DCGM's framebuffer-used, summed over the pod's GPUs; unknown is never suspendable) into the
  process's host memory, which is charged to the pod's memory cgroup: the pod's memory limit
  less its working set, and the node's available memory, must each hold it. Otherwise the
  kernel would be OOM-killed mid-checkpoint and the notebook lost.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

DeviceMode = Literal["cdi", "legacy"]
DEVICE_MODES: tuple[DeviceMode, ...] = ("cdi", "legacy")

#: GPU feature discovery's labels (NVIDIA k8s-device-plugin, docs/gpu-feature-discovery)
PRODUCT_LABEL = "nvidia.com/gpu.product"
COUNT_LABEL = "nvidia.com/gpu.count"
DRIVER_MAJOR_LABELS = ("nvidia.com/cuda.driver-version.major", "nvidia.com/cuda.driver.major")
DRIVER_FULL_LABEL = "nvidia.com/cuda.driver-version.full"
DRIVER_MINOR_LABELS = ("nvidia.com/cuda.driver-version.minor", "nvidia.com/cuda.driver.minor")
MIG_STRATEGY_LABEL = "nvidia.com/mig.strategy"
SHARING_STRATEGY_LABEL = "nvidia.com/gpu.sharing-strategy"
MPS_CAPABLE_LABEL = "nvidia.com/mps.capable"

#: the CUDA plugin's file in CRIU's plugin directory (CRIU's plugins/cuda/Makefile)
CUDA_PLUGIN_FILE = "cuda_plugin.so"
#: the name the CUDA plugin records in CRIU's inventory image (CR_PLUGIN_REGISTER)
CUDA_PLUGIN_NAME = "cuda_plugin"


@dataclass(frozen=True)
class CapabilityConfig:
    """Which drivers count: ``native_driver`` and newer checkpoint natively; from
    ``tool_driver`` up to it, only with NVIDIA's ``cuda-checkpoint`` tool on the node."""

    native_driver: int = 580
    tool_driver: int = 550

    def __post_init__(self) -> None:
        if not 0 < self.tool_driver <= self.native_driver:
            raise ValueError(
                f"need 0 < tool_driver <= native_driver, got {self.tool_driver}, "
                f"{self.native_driver}"
            )


@dataclass(frozen=True)
class AgentGpuReport:
    """What a node agent found on its own node.

    ``cuda_plugin``: CRIU's plugin directory holds ``cuda_plugin.so``. ``cuda_checkpoint``:
    NVIDIA's ``cuda-checkpoint`` tool was found. ``device_mode``: ``cdi`` when CDI specs for
    ``nvidia.com/gpu`` exist on the node, else ``legacy``. ``simulated``: the local cluster's
    simulated plugin (never a real CUDA checkpoint). ``memory_available``: the node's
    available memory in bytes (``MemAvailable``) when the agent answered; None: unknown.
    """

    cuda_plugin: bool
    cuda_checkpoint: bool
    device_mode: DeviceMode | None
    simulated: bool = False
    memory_available: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "cuda_plugin": self.cuda_plugin,
            "cuda_checkpoint": self.cuda_checkpoint,
            "device_mode": self.device_mode,
            "simulated": self.simulated,
            "memory_available": self.memory_available,
        }

    @classmethod
    def from_json(cls, data: Any) -> AgentGpuReport:
        """Parse an agent's ``gpu`` report; ValueError when malformed."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a GPU report must be an object, not {type(data).__name__}")
        flags = {}
        for key in ("cuda_plugin", "cuda_checkpoint", "simulated"):
            value = data.get(key, False)
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false, not {value!r}")
            flags[key] = value
        mode = data.get("device_mode")
        if mode is not None and mode not in DEVICE_MODES:
            raise ValueError(f"device_mode {mode!r} is not one of {list(DEVICE_MODES)}")
        available = data.get("memory_available")
        if available is not None and (
            isinstance(available, bool) or not isinstance(available, int) or available < 0
        ):
            raise ValueError(f"memory_available must be a whole number of bytes, not {available!r}")
        return cls(
            flags["cuda_plugin"],
            flags["cuda_checkpoint"],
            mode,
            simulated=flags["simulated"],
            memory_available=available,
        )


@dataclass(frozen=True)
class Capability:
    """Whether one node can checkpoint CUDA processes; ``reason`` says why or why not."""

    capable: bool
    reason: str
    device_mode: DeviceMode | None = None
    simulated: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "capable": self.capable,
            "reason": self.reason,
            "device_mode": self.device_mode,
            "simulated": self.simulated,
        }


def _int_label(labels: Mapping[str, str], names: tuple[str, ...]) -> int | None:
    for name in names:
        raw = labels.get(name)
        if raw is None:
            continue
        try:
            value = float(str(raw).strip())
        except ValueError:
            return None
        return int(value) if math.isfinite(value) and value >= 0 else None
    return None


def node_gpu_count(labels: Mapping[str, str] | None) -> int | None:
    """The node's GPU count (GPU feature discovery's ``nvidia.com/gpu.count``); None when
    absent or not a whole number."""
    return _int_label(labels or {}, (COUNT_LABEL,))


def driver_version(labels: Mapping[str, str]) -> tuple[int, str] | None:
    """(major, text) of the node's NVIDIA driver from GPU feature discovery's labels; None
    when no label gives a readable major version."""
    major = _int_label(labels, DRIVER_MAJOR_LABELS)
    if major is None:
        return None
    full = labels.get(DRIVER_FULL_LABEL, "")
    if not full:
        minor = _int_label(labels, DRIVER_MINOR_LABELS)
        full = f"{major}.{minor}" if minor is not None else str(major)
    return major, full


def sharing_problem(labels: Mapping[str, str]) -> str | None:
    """Why the node's GPUs are shared in a way CUDA checkpoints do not support (MIG, MPS)."""
    strategy = labels.get(MIG_STRATEGY_LABEL, "").strip().lower()
    if strategy in ("single", "mixed"):
        return (
            f"MIG is in use ({MIG_STRATEGY_LABEL}={strategy}); CUDA checkpoints do not support MIG"
        )
    product = labels.get(PRODUCT_LABEL, "")
    if "-MIG-" in product.upper():
        return f"MIG is in use (GPU product {product}); CUDA checkpoints do not support MIG"
    if labels.get(SHARING_STRATEGY_LABEL, "").strip().lower() == "mps":
        return f"the GPUs are shared through MPS ({SHARING_STRATEGY_LABEL}=mps); CUDA checkpoints do not support MPS"
    if labels.get(MPS_CAPABLE_LABEL, "").strip().lower() == "true":
        return f"the GPUs are shared through MPS ({MPS_CAPABLE_LABEL}=true); CUDA checkpoints do not support MPS"
    return None


def node_capability(
    node: str,
    labels: Mapping[str, str] | None,
    report: AgentGpuReport | None,
    config: CapabilityConfig = CapabilityConfig(),  # frozen: shared safely
    *,
    report_error: str = "",
) -> Capability:
    """Whether ``node`` can checkpoint a CUDA process, from its labels (None: unreadable) and
    its agent's report (None: unavailable, ``report_error`` says why). See the module
    docstring for the rules."""
    where = f"node {node}" if node else "the node"
    if labels is None:
        return Capability(False, f"GPU checkpoints unknown on {where}: its labels are unreadable")
    version = driver_version(labels)
    if version is None:
        return Capability(
            False,
            f"GPU checkpoints unknown on {where}: no driver version label "
            f"({DRIVER_MAJOR_LABELS[0]}, set by GPU feature discovery)",
        )
    major, full = version
    if major < config.tool_driver:
        return Capability(
            False,
            f"{where} cannot checkpoint GPUs: NVIDIA driver {full} is older than "
            f"{config.tool_driver}, the first with CUDA checkpoints",
        )
    shared = sharing_problem(labels)
    if shared:
        return Capability(False, f"{where} cannot checkpoint GPUs: {shared}")
    if report is None:
        why = f": {report_error}" if report_error else ""
        return Capability(
            False, f"GPU checkpoints unknown on {where}: no report from its node agent{why}"
        )
    sim = " (simulated)" if report.simulated else ""
    if not report.cuda_plugin:
        return Capability(
            False,
            f"{where} cannot checkpoint GPUs: CRIU's CUDA plugin ({CUDA_PLUGIN_FILE}) is not "
            "installed there",
            simulated=report.simulated,
        )
    if major < config.native_driver and not report.cuda_checkpoint:
        return Capability(
            False,
            f"{where} cannot checkpoint GPUs: NVIDIA driver {full} needs NVIDIA's "
            f"cuda-checkpoint tool (drivers before {config.native_driver}), which the node "
            "agent did not find",
            simulated=report.simulated,
        )
    if report.device_mode is None:
        return Capability(
            False,
            f"GPU checkpoints unknown on {where}: its agent could not tell the device mode",
            simulated=report.simulated,
        )
    via = "the driver's checkpoint API" if major >= config.native_driver else "cuda-checkpoint"
    return Capability(
        True,
        f"{where} can checkpoint GPUs{sim}: NVIDIA driver {full} ({via}), CRIU's CUDA plugin, "
        f"{'CDI' if report.device_mode == 'cdi' else 'legacy'} device mode",
        device_mode=report.device_mode,
        simulated=report.simulated,
    )


def device_state_problem(
    plugins: list[str] | None, *, simulated_marker: bool = False, accept_simulated: bool = False
) -> str | None:
    """What is wrong with a GPU process's checkpoint (None: it holds the device state).

    ``plugins``: the plugins CRIU's inventory image lists (None: no readable inventory).
    ``simulated_marker``: the archive carries the local cluster's simulated-plugin marker,
    which counts only when ``accept_simulated`` (a local cluster's agent).
    """
    if plugins is not None and CUDA_PLUGIN_NAME in plugins:
        return None
    if simulated_marker and accept_simulated:
        return None
    if plugins is None:
        return "the checkpoint has no readable CRIU inventory (checkpoint/inventory.img)"
    listed = ", ".join(plugins) if plugins else "none"
    return (
        f"the checkpoint holds no GPU state: CRIU's inventory lists no {CUDA_PLUGIN_NAME} "
        f"(plugins: {listed}); the CUDA plugin did not run or found no CUDA process"
    )


_CDI_NVIDIA_GPU_KIND = re.compile(
    r"""["']?kind["']?\s*:\s*["']?nvidia\.com/gpu["']?\s*(?:[,}\n]|$)"""
)


def is_nvidia_cdi_spec(text: str) -> bool:
    """Whether a CDI spec (JSON or YAML text) declares the ``nvidia.com/gpu`` device kind, as
    the NVIDIA Container Toolkit's generated specs do."""
    return bool(_CDI_NVIDIA_GPU_KIND.search(text))


#: ``NVIDIA_VISIBLE_DEVICES`` values that name no particular GPU
_NO_DEVICE_LIST = frozenset({"", "all", "none", "void"})
_CDI_GPU_NAME = re.compile(r"nvidia\.com/gpu=([^,\s]+)")
_DEV_NVIDIA = re.compile(r"/dev/nvidia([0-9]+)")


def devices_from_spec(spec: Any) -> tuple[str, ...]:
    """The GPUs a container held, from its OCI runtime spec (the ``spec.dump`` that containerd
    and CRI-O write into a checkpoint archive); empty when the spec does not say.

    In order: the ``NVIDIA_VISIBLE_DEVICES`` list the device plugin sets with its ``envvar``
    strategy (UUIDs by default, indices with ``deviceIDStrategy=index``); the CDI device names
    ``nvidia.com/gpu=<id>`` of its ``cdi-annotations`` strategy (``cdi.k8s.io/…``
    annotations); the ``/dev/nvidia<N>`` device nodes CDI injection puts into the spec
    (indices).
    """
    if not isinstance(spec, Mapping):
        return ()
    process = spec.get("process")
    env = process.get("env") if isinstance(process, Mapping) else None
    for entry in env if isinstance(env, list) else []:
        if isinstance(entry, str) and entry.startswith("NVIDIA_VISIBLE_DEVICES="):
            value = entry.partition("=")[2].strip()
            if value.lower() not in _NO_DEVICE_LIST:
                return tuple(d.strip() for d in value.split(",") if d.strip())
    annotations = spec.get("annotations")
    if isinstance(annotations, Mapping):
        named = [
            m.group(1)
            for key, value in sorted(annotations.items())
            if str(key).startswith("cdi.k8s.io/") and isinstance(value, str)
            for m in _CDI_GPU_NAME.finditer(value)
        ]
        if named:
            return tuple(dict.fromkeys(named))
    linux = spec.get("linux")
    nodes = linux.get("devices") if isinstance(linux, Mapping) else None
    indices = []
    for dev in nodes if isinstance(nodes, list) else []:
        m = _DEV_NVIDIA.fullmatch(str(dev.get("path", ""))) if isinstance(dev, Mapping) else None
        if m:
            indices.append(m.group(1))
    return tuple(indices)


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units for a sentence, e.g. ``12.0 GiB``, ``512 MiB``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}" if unit in ("TiB", "GiB") else f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"


def _known(value: float | None) -> float | None:
    """``value`` when it is a usable amount of bytes (finite, not negative), else None."""
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def checkpoint_size_estimate(
    memory_used: float | None, gpu_memory_used: float | None
) -> int | None:
    """What a checkpoint of a server will roughly hold, in bytes: its host memory working set
    plus the GPU memory in use, which the CUDA plugin stages into host memory (0 for a server
    without GPUs). None when either is unknown."""
    host, gpu = _known(memory_used), _known(gpu_memory_used)
    if host is None or gpu is None:
        return None
    return int(host + gpu)


def server_gpu_readiness(
    capability: Capability,
    *,
    gpus: float,
    node_gpu_count: int | None,
    gpu_memory_used: float | None,
    memory_limit: float | None,
    memory_used: float | None,
    node_memory_available: float | None,
    node: str = "",
) -> Capability:
    """Whether one server holding ``gpus`` GPUs can be suspended, on top of its node's
    ``capability`` (see the module docstring for the rules).

    ``node_gpu_count``: the node's ``nvidia.com/gpu.count`` (None: unknown).
    ``gpu_memory_used``: the GPU memory the pod uses, in bytes, summed over its GPUs (None:
    no sample). ``memory_limit``: the memory limit binding its GPU containers, in bytes (None:
    no limit). ``memory_used``: its memory working set in bytes (None: unknown).
    ``node_memory_available``: its node's available memory in bytes (None: unknown).
    """
    if not capability.capable:
        return capability
    where = f"node {node}" if node else "its node"

    def refuse(reason: str) -> Capability:
        return Capability(False, reason, capability.device_mode, capability.simulated)

    held = f"{gpus:g}"
    if capability.device_mode == "legacy" and (node_gpu_count is None or gpus != node_gpu_count):
        count = "an unknown number" if node_gpu_count is None else str(node_gpu_count)
        return refuse(
            f"it holds {held} of {where}'s {count} GPUs in legacy device mode: a CUDA restore "
            "works only onto the same GPU indices, which only a pod holding all of its node's "
            f"GPUs is guaranteed ({COUNT_LABEL}); CDI device mode removes this limit"
        )
    staged = _known(gpu_memory_used)
    if staged is None:
        return refuse(
            "the GPU memory it uses is unknown (no DCGM framebuffer-used sample for its GPUs), "
            "so whether host memory can stage it for the checkpoint cannot be checked"
        )
    need = human_bytes(staged)
    if memory_limit is not None:
        used = _known(memory_used)
        if used is None:
            return refuse(
                f"its memory working set is unknown, so whether its memory limit "
                f"({human_bytes(memory_limit)}) leaves room to stage its {need} of GPU memory "
                "cannot be checked"
            )
        free = memory_limit - used
        if free < staged:
            return refuse(
                f"staging its {need} of GPU memory in host memory needs more than its memory "
                f"limit leaves ({human_bytes(memory_limit)} limit, "
                f"{human_bytes(used)} in use, {human_bytes(max(free, 0.0))} free): "
                "its processes would be OOM-killed mid-checkpoint and the notebook lost"
            )
    available = _known(node_memory_available)
    if available is None:
        return refuse(
            f"{where}'s available memory is unknown (its node agent did not report it), so "
            f"whether it can stage {need} of GPU memory cannot be checked"
        )
    if available < staged:
        return refuse(
            f"{where} has {human_bytes(available)} of memory available, less than the {need} "
            "of GPU memory to stage for the checkpoint"
        )
    return Capability(
        True,
        f"{capability.reason}; its {need} of GPU memory fits in host memory to stage",
        capability.device_mode,
        capability.simulated,
    )
