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

import json
import os
import platform
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# checkpointctl lib/metadata.go
CHECKPOINT_DIRECTORY = "checkpoint"
CONFIG_DUMP_FILE = "config.dump"
SPEC_DUMP_FILE = "spec.dump"
ROOTFS_DIFF_TAR = "rootfs-diff.tar"
STATS_DUMP_FILE = "stats-dump"
DUMP_LOG_FILE = "dump.log"

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


class ArchiveError(RuntimeError):
    """A checkpoint archive is missing, unreadable or not laid out as expected."""


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
    ann.update({CRIU_ANNOTATION_PREFIX + k: str(v) for k, v in facts.items() if v})
    return ann


def _safe_members(tar: tarfile.TarFile, dest: str) -> list[tarfile.TarInfo]:
    root = os.path.realpath(dest)
    members = []
    for m in tar.getmembers():
        if not (m.isfile() or m.isdir()):
            raise ArchiveError(f"unexpected entry {m.name!r} (only files and directories)")
        target = os.path.realpath(os.path.join(root, m.name))
        if target != root and not target.startswith(root + os.sep):
            raise ArchiveError(f"entry {m.name!r} points outside the archive")
        members.append(m)
    return members


def extract_archive(archive_path: str, dest_dir: str) -> str:
    """Unpack a checkpoint archive (plain or compressed tar) into ``dest_dir``; return it."""
    os.makedirs(dest_dir, exist_ok=True)
    try:
        with tarfile.open(archive_path, mode="r:*") as tar:
            members = _safe_members(tar, dest_dir)
            if hasattr(tarfile, "tar_filter"):  # Python >= 3.11.4
                tar.extractall(dest_dir, members=members, filter="tar")
            else:  # _safe_members has already refused links and paths that escape
                tar.extractall(dest_dir, members=members)
    except (OSError, tarfile.TarError) as e:
        raise ArchiveError(f"cannot read checkpoint archive {archive_path}: {e}") from e
    return dest_dir


@dataclass
class CheckpointInfo:
    """What a checkpoint directory says about itself."""

    path: str
    config: dict[str, Any]
    spec: dict[str, Any]

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.spec.get("annotations") or {})

    @property
    def images_dir(self) -> str:
        return os.path.join(self.path, CHECKPOINT_DIRECTORY)

    @property
    def name(self) -> str:
        return str(self.config.get("name", ""))

    @property
    def rootfs_image(self) -> str:
        """The image the checkpointed container ran, which a restore pulls as its base."""
        return str(self.config.get("rootfsImageName") or self.config.get("rootfsImage") or "")


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise ArchiveError(f"checkpoint has no {os.path.basename(path)} ({path})") from e
    except (OSError, ValueError) as e:
        raise ArchiveError(f"cannot read {path}: {e}") from e


def read_checkpoint(path: str) -> CheckpointInfo:
    """Read an extracted checkpoint directory's metadata and check its layout."""
    if not os.path.isdir(os.path.join(path, CHECKPOINT_DIRECTORY)):
        raise ArchiveError(f"{path} is not a checkpoint: no {CHECKPOINT_DIRECTORY}/ directory")
    config = _read_json(os.path.join(path, CONFIG_DUMP_FILE))
    spec = _read_json(os.path.join(path, SPEC_DUMP_FILE))
    if not isinstance(config, dict) or not isinstance(spec, dict):
        raise ArchiveError(f"{path}: config.dump and spec.dump must be JSON objects")
    return CheckpointInfo(path, config, spec)
