"""Checkpoint archives as container runtimes write them, and the images made from them.

A runtime's ``CheckpointContainer`` (containerd, CRI-O, Podman) writes an uncompressed tar::

    checkpoint/        CRIU's image files
    config.dump        JSON: id, name, rootfsImage*, runtime, createdTime, checkpointedTime
    spec.dump          the container's OCI runtime spec (JSON)
    status.dump        containerd: the container's CRI status
    rootfs-diff.tar    changes to the container's root filesystem
    stats-dump         CRIU's dump statistics
    dump.log           CRIU's dump log

The file names and JSON keys are those of checkpointctl's ``lib/metadata.go``. The checkpoint
image's single layer is the archive's contents; what marks it as a checkpoint image differs by
runtime (:func:`checkpoint_image_annotations`).
"""

from __future__ import annotations

import platform
import struct
from collections.abc import Mapping
from typing import Any

from .errors import OwnError

#: the archive's container metadata (checkpointctl lib/metadata.go)
CONFIG_DUMP_FILE = "config.dump"
#: the container's OCI runtime spec, as the runtime wrote it into the archive
SPEC_DUMP_FILE = "spec.dump"
#: CRIU's inventory image inside the archive
INVENTORY_FILE = "checkpoint/inventory.img"
#: its magic number (CRIU's criu/include/magic.h: INVENTORY_MAGIC), the file's first 4 bytes
INVENTORY_MAGIC = 0x58313116
#: inventory_entry's field plugins_entry, and plugins_entry's field plugins (images/inventory.proto)
_PLUGINS_ENTRY_FIELD = 12
_PLUGINS_FIELD = 12
#: what the local cluster's simulated CUDA plugin adds to a GPU pod's archive (never a real
#: runtime): JSON saying it is simulated
SIMULATED_CUDA_MARKER = "jhub-suspend-simulated-cuda.json"

#: CRI-O's checkpoint image annotation (cri-o ``pkg/annotations``: CheckpointAnnotationName)
CRIO_CHECKPOINT_NAME_ANNOTATION = "io.kubernetes.cri-o.annotations.checkpoint.name"
#: checkpointctl's (``lib/metadata``: CheckpointAnnotationName); containerd >= 2.1 looks for
#: it in the manifest's or index's annotations (``checkIfCheckpointOCIImage``)
CRIU_CHECKPOINT_NAME_ANNOTATION = "org.criu.checkpoint.container.name"
#: every annotation that names the checkpointed container: a checkpoint image carries all
CHECKPOINT_NAME_ANNOTATIONS = (CRIU_CHECKPOINT_NAME_ANNOTATION, CRIO_CHECKPOINT_NAME_ANNOTATION)
#: checkpointctl's other metadata annotations that an image built here carries
CRIU_ANNOTATION_PREFIX = "org.criu.checkpoint."
#: machine names as Go (and so checkpointctl and Kubernetes) name them
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def checkpoint_image_annotations(
    container: str,
    *,
    config: Mapping[str, Any] | None = None,
    pod: str = "",
    namespace: str = "",
    engine: str = "jhub-suspend",
) -> dict[str, str]:
    """The manifest annotations that make an image a checkpoint image on every runtime (pure
    but for the host facts): the container's name under containerd's and CRI-O's names, and
    checkpointctl's metadata from the archive's ``config.dump`` where it has them."""
    cfg = config or {}
    ann = {name: container for name in CHECKPOINT_NAME_ANNOTATIONS}
    facts = {
        "engine.name": engine,
        "pod.name": pod,
        "pod.namespace": namespace,
        "rootfsImageName": cfg.get("rootfsImageName") or cfg.get("rootfsImage"),
        "runtime.name": cfg.get("runtime"),
        "host.arch": GO_ARCH.get(platform.machine(), platform.machine()),
        "host.kernel": platform.release(),
    }
    # config.dump is JSON: a value that is not a string is not checkpointctl's, and left out
    ann.update(
        {CRIU_ANNOTATION_PREFIX + k: v for k, v in facts.items() if v and isinstance(v, str)}
    )
    return ann


class InventoryError(OwnError, ValueError):
    """CRIU's inventory image is not readable."""

    status = 502  # what a node's CRIU wrote, not what a caller sent


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise InventoryError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(message: bytes) -> list[tuple[int, int, int | bytes]]:
    """A protobuf message's (field number, wire type, value) in order (pure, no schema)."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(message, pos)
        elif wire == 1 or wire == 5:
            width = 8 if wire == 1 else 4
            if pos + width > len(message):
                raise InventoryError("truncated fixed-width field")
            value, pos = int.from_bytes(message[pos : pos + width], "little"), pos + width
        elif wire == 2:
            length, pos = _varint(message, pos)
            if pos + length > len(message):
                raise InventoryError("truncated length-delimited field")
            value, pos = message[pos : pos + length], pos + length
        else:
            raise InventoryError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def inventory_plugins(data: bytes) -> list[str]:
    """The plugins CRIU's inventory image (``checkpoint/inventory.img``) lists: those that
    recorded state in the checkpoint, which the restore must load (CRIU's
    ``write_img_inventory``). The file is the inventory magic, the entry's size (both 32-bit
    little-endian) and the ``inventory_entry`` protobuf. Raises :class:`InventoryError` when
    it is not such a file."""
    if len(data) < 8:
        raise InventoryError("shorter than its header")
    magic, size = struct.unpack_from("<II", data)
    if magic != INVENTORY_MAGIC:
        raise InventoryError(f"magic {magic:#x} is not CRIU's inventory magic")
    if size > len(data) - 8:
        raise InventoryError(f"entry of {size} bytes, {len(data) - 8} present")
    plugins: list[str] = []
    for number, wire, value in _fields(data[8 : 8 + size]):
        if number != _PLUGINS_ENTRY_FIELD or wire != 2 or not isinstance(value, bytes):
            continue
        for inner, inner_wire, name in _fields(value):
            if inner == _PLUGINS_FIELD and inner_wire == 2 and isinstance(name, bytes):
                try:
                    plugins.append(name.decode())
                except UnicodeDecodeError as e:
                    raise InventoryError(f"plugin name is not UTF-8: {e}") from None
    return plugins


def inventory_image(plugins: list[str], img_version: int = 2) -> bytes:
    """An inventory image listing ``plugins`` (the inverse of :func:`inventory_plugins`, for
    tests: a real one comes from CRIU)."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def field(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    entry = varint(1 << 3) + varint(img_version)
    if plugins:
        inner = b"".join(field(_PLUGINS_FIELD, p.encode()) for p in plugins)
        entry += field(_PLUGINS_ENTRY_FIELD, inner)
    return struct.pack("<II", INVENTORY_MAGIC, len(entry)) + entry
