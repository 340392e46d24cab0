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
from collections.abc import Mapping
from typing import Any

#: the archive's container metadata (checkpointctl lib/metadata.go)
CONFIG_DUMP_FILE = "config.dump"

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
