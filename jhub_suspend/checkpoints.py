"""The checkpoint record: what a suspended server's state keeps so it can be restored.

Plain data and pure functions; the spawner does the IO.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from cryptography.fernet import InvalidToken
from jupyterhub.crypto import CryptKeeper

from .gpu import PRODUCT_LABEL, node_gpu_count
from .kubevalues import rfc3339

ANNOTATION_PREFIX = "jhub-suspend.jupyter.org"
# Set on a pod by whoever asks for a suspension (the service, an admin, the user); the
# spawner's stop() checkpoints a pod that carries it.
SUSPEND_REQUEST_ANNOTATION = f"{ANNOTATION_PREFIX}/suspend-requested"
# When it was set (RFC 3339): a mark that outlived every requester's patience is stale (its
# requester died before the stop), and the service clears it.
SUSPEND_REQUESTED_AT_ANNOTATION = f"{ANNOTATION_PREFIX}/suspend-requested-at"
# The merge-patch annotations that take a suspension mark off a pod.
CLEAR_SUSPEND_MARK = {SUSPEND_REQUEST_ANNOTATION: None, SUSPEND_REQUESTED_AT_ANNOTATION: None}
# Set by the spawner on a pod whose suspension failed: the pod keeps running and the next start
# adopts it instead of replacing it.
SUSPEND_FAILED_ANNOTATION = f"{ANNOTATION_PREFIX}/suspend-failed"
# Set by the restore driver on a restored pod, whose container image is the checkpoint image:
# the image the user's server really runs from, for the next checkpoint's record.
ORIGINAL_IMAGE_ANNOTATION = f"{ANNOTATION_PREFIX}/original-image"
# Set by the restore driver on a pod restoring a CDI GPU checkpoint: the GPU UUIDs the pod held
# when it was checkpointed, comma-separated, from which the node's runtime (CRIU's CUDA plugin,
# ``cuda.device-map``) maps them onto the GPUs the pod holds now.
GPU_UUIDS_ANNOTATION = f"{ANNOTATION_PREFIX}/gpu-uuids"
SEALED_PREFIX = "fernet:"


class Status:
    """Where a checkpoint is in its life."""

    #: pushed and verified; the pod may still exist (a stop in progress)
    VERIFIED = "verified"
    #: the pod is gone; the checkpoint is what remains of the server
    SUSPENDED = "suspended"
    #: a restore from it has started
    RESTORING = "restoring"
    #: the server was restored from it; it can be deleted from the registry
    RESTORED = "restored"
    #: a restore from it failed; it is kept for the admin
    RESTORE_FAILED = "restore_failed"
    #: the user chose to start fresh instead
    DISCARDED = "discarded"


# A checkpoint in one of these states is what remains of its server: a start restores it.
RESTORABLE_STATUSES = frozenset({Status.VERIFIED, Status.SUSPENDED})
# ... and so is one whose restore was under way when the hub stopped, once the hub has the
# server stopped: its image is intact, and the next start tries again.
RESTORABLE_WHEN_STOPPED = RESTORABLE_STATUSES | {Status.RESTORING}


@dataclass(frozen=True)
class NodeFacts:
    """What a restore needs from the node the checkpoint was taken on.

    ``gpu_count``: GPUs the pod held (its own request). ``gpu_device_mode``: how that node
    handed GPUs to containers, ``cdi`` or ``legacy`` as its agent reported it, ``""`` unknown
    (a record from before this was kept, or an agent that did not say). ``node_gpu_count``: the
    node's GPUs (``nvidia.com/gpu.count``; 0 unknown). ``gpu_devices``: the devices the pod
    held, as its agent read them from the checkpoint (GPU UUIDs, or indices where the node's
    device plugin names GPUs by index); empty when unknown.
    """

    node: str = ""
    arch: str = ""
    gpu_product: str = ""
    gpu_count: int = 0
    gpu_device_mode: str = ""
    node_gpu_count: int = 0
    gpu_devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Checkpoint:
    """A server's checkpoint, as recorded in the spawner's state."""

    image: str  # repository@sha256:..., the only reference a restore uses
    digest: str
    size: int
    created: str  # RFC 3339
    reason: str
    container: str
    original_image: str
    node: NodeFacts = field(default_factory=NodeFacts)
    status: str = Status.VERIFIED
    archive_bytes: int = 0
    seconds: float = 0.0
    #: restores from it that never finished because the hub stopped during them
    interrupted_restores: int = 0

    @property
    def restorable(self) -> bool:
        return self.status in RESTORABLE_STATUSES

    def with_status(self, status: str) -> Checkpoint:
        return replace(self, status=status)

    def to_state(self, seal: bool = True) -> dict[str, Any]:
        """The record for the spawner's state; the image reference is sealed with the hub's
        crypt key when one is set, since whoever can pull it can read the notebook's memory."""
        data = asdict(self)
        if seal:
            data["image"] = seal_secret(self.image)
        return data

    @classmethod
    def from_state(cls, data: Any, *, unseal: bool = True) -> Checkpoint:
        """The record :meth:`to_state` wrote; :class:`ValueError` if it cannot be read. Keys
        this version does not know (a newer version's) are ignored. Without ``unseal`` the
        image reference stays as recorded (sealed when the hub has a crypt key): for readers
        that never use it and have no key, such as the service."""
        values = _record_fields(cls, data, "checkpoint record")
        node = _record_fields(NodeFacts, values.get("node") or {}, "checkpoint record's node")
        if "gpu_devices" in node:
            node["gpu_devices"] = _string_tuple(node["gpu_devices"], "checkpoint record's node")
        values["node"] = NodeFacts(**node)
        if unseal:
            values["image"] = unseal_secret(values["image"])
        return cls(**values)


# Field types as the dataclasses above spell them (postponed annotations are strings).
_RECORD_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float)}


def _record_fields(cls: type, data: Any, what: str) -> dict[str, Any]:
    """The values of ``cls``'s fields in a state record, checked against their types."""
    if not isinstance(data, dict):
        raise ValueError(f"the {what} is a {type(data).__name__}, not an object")
    values = {}
    for f in fields(cls):
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ValueError(f"the {what} has no {f.name!r}")
            continue
        value = data[f.name]
        types = _RECORD_TYPES.get(str(f.type))
        # bool is an int to Python, never a size or a duration in a record
        if types and (isinstance(value, bool) or not isinstance(value, types)):
            raise ValueError(f"the {what}'s {f.name!r} is {value!r:.80}, not a {f.type}")
        values[f.name] = value
    return values


def _string_tuple(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"the {what}'s 'gpu_devices' is {value!r:.80}, not a list of strings")
    return tuple(value)


@dataclass(frozen=True)
class LastError:
    """The last failure of a suspension or a restore, kept for the UI."""

    operation: str  # "suspend" or "restore"
    message: str  # for the user
    time: str
    detail: str = ""  # what Kubernetes, the agent or CRIU said, for the admin

    def to_state(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_state(cls, data: Any) -> LastError:
        """The record :meth:`to_state` wrote; :class:`ValueError` if it cannot be read."""
        return cls(**_record_fields(cls, data, "last error"))


def discard_marker_name(digest: str) -> str:
    """Name of the Secret that marks a checkpoint as discarded by an admin or the service
    while its server was stopped; the spawner then starts fresh and deletes the marker."""
    return f"jhub-suspend-discard-{digest.split(':')[-1][:16]}"


def seal_secret(value: str) -> str:
    """Encrypt ``value`` with JupyterHub's crypt key (JUPYTERHUB_CRYPT_KEY) when one is set."""
    keeper = CryptKeeper.instance()
    if not keeper.keys or keeper.fernet is None:
        return value
    return SEALED_PREFIX + keeper.fernet.encrypt(value.encode()).decode()


def unseal_secret(value: str) -> str:
    if not value.startswith(SEALED_PREFIX):
        return value
    keeper = CryptKeeper.instance()
    if keeper.fernet is None:
        raise ValueError(
            "a checkpoint reference is encrypted but JUPYTERHUB_CRYPT_KEY is not set; "
            "set the key the hub used when it recorded the checkpoint"
        )
    try:
        return keeper.fernet.decrypt(value[len(SEALED_PREFIX) :].encode()).decode()
    except (InvalidToken, UnicodeError) as e:
        raise ValueError(
            f"a checkpoint reference does not decrypt with JUPYTERHUB_CRYPT_KEY "
            f"({type(e).__name__}): it was encrypted with another key, or altered"
        ) from None


def image_repository(repository: str, namespace: str, pod: str) -> str:
    """The image repository of a pod's checkpoints: one per pod, under the configured one."""
    return f"{repository.rstrip('/')}/{_path_component(namespace)}/{_path_component(pod)}"


def image_reference(repository: str, namespace: str, pod: str, now: datetime.datetime) -> str:
    """Where a checkpoint of ``pod`` is pushed: one tag per checkpoint."""
    tag = now.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{image_repository(repository, namespace, pod)}:{tag}"


def pinned_image(repository: str, namespace: str, pod: str, digest: str) -> str:
    """The reference of one checkpoint by digest, as a restore and a deletion name it."""
    return f"{image_repository(repository, namespace, pod)}@{digest}"


def _path_component(name: str) -> str:
    # OCI distribution path components: lowercase alphanumerics separated by . _ __ or -
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("._-")
    if not cleaned:
        raise ValueError(f"{name!r} gives an empty image path component")
    return cleaned


def image_annotations(
    *,
    user: str,
    server_name: str,
    namespace: str,
    pod: str,
    original_image: str,
    reason: str,
    now: datetime.datetime,
) -> dict[str, str]:
    """Annotations the checkpoint image carries besides the checkpoint name (added by the
    agent). They say whose server it is, so a restore can check it is the owner's."""
    return {
        f"{ANNOTATION_PREFIX}/user": user,
        f"{ANNOTATION_PREFIX}/server-name": server_name,
        f"{ANNOTATION_PREFIX}/namespace": namespace,
        f"{ANNOTATION_PREFIX}/pod": pod,
        ORIGINAL_IMAGE_ANNOTATION: original_image,
        f"{ANNOTATION_PREFIX}/reason": reason,
        f"{ANNOTATION_PREFIX}/created": rfc3339(now),
    }


def original_image(pod: dict[str, Any], container: dict[str, Any]) -> str:
    """The image the server runs from: a restored pod's container runs the checkpoint image,
    so the restore driver's annotation names the real one (pure)."""
    annotations = pod.get("metadata", {}).get("annotations") or {}
    return str(annotations.get(ORIGINAL_IMAGE_ANNOTATION) or container["image"])


def node_facts(
    node: dict[str, Any],
    gpu_count: int,
    *,
    device_mode: str = "",
    devices: tuple[str, ...] = (),
) -> NodeFacts:
    """What a compatible restore node must share with ``node``, where the pod held ``gpu_count``
    GPUs: CUDA checkpoints restore only onto the same GPU product and count. ``device_mode`` and
    ``devices``: what the node's agent said of the checkpoint (see :class:`NodeFacts`)."""
    labels = node.get("metadata", {}).get("labels") or {}
    if not gpu_count:
        device_mode, devices = "", ()
    return NodeFacts(
        node=node.get("metadata", {}).get("name", ""),
        arch=labels.get("kubernetes.io/arch", ""),
        gpu_product=labels.get(PRODUCT_LABEL, "") if gpu_count else "",
        gpu_count=gpu_count,
        gpu_device_mode=device_mode if device_mode in ("cdi", "legacy") else "",
        node_gpu_count=(node_gpu_count(labels) or 0) if gpu_count else 0,
        gpu_devices=tuple(devices),
    )


def pod_gpu_count(pod: dict[str, Any]) -> int:
    """GPUs the pod's containers ask for (limits, as Kubernetes requires for extended resources)."""
    total = 0
    for c in pod.get("spec", {}).get("containers", []):
        res = c.get("resources") or {}
        asked = {**(res.get("requests") or {}), **(res.get("limits") or {})}
        total += int(asked.get("nvidia.com/gpu", 0) or 0)
    return total
