"""The local cluster's SIMULATED CUDA restore rules (pure, plus one reader of containerd's
content store).

The local cluster has no GPU: its kubelet hands pods simulated GPU indices, and its simulated
CUDA plugin marks a GPU pod's checkpoint (:data:`jhub_suspend.archive.SIMULATED_CUDA_MARKER`)
with the GPUs the pod held. When a pod is restored from such a checkpoint, the kubelet applies
the rules a real node's runtime would (issue 13's facts), so that jhub-suspend's restore
placement is tested against them:

* a different number of GPUs fails;
* on a node in legacy device mode, GPUs at other indices than at checkpoint time fail as users
  report (``CUDA_ERROR_NOT_SUPPORTED``);
* on a CDI node, the GPUs are remapped by UUID (``old=new,...``), which succeeds.

Every message says SIMULATED: nothing here restores CUDA state.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Any

from ..archive import SIMULATED_CUDA_MARKER
from ..restore import device_map

log = logging.getLogger("jhub_suspend.localcluster.gpurestore")

_INDEX_IN_UUID = re.compile(r"-([0-9]{4})$")


def gpu_uuid(node: str, index: int) -> str:
    """The UUID of a simulated GPU, as the DCGM exporter and the CUDA plugin name it."""
    return f"GPU-{node}-{index:04d}"


@dataclass(frozen=True)
class SimulatedRestore:
    """What the simulated CUDA plugin makes of a restore: ``ok``, and the message (an error
    for a failure, the device map for a remap, "" when nothing was remapped)."""

    ok: bool
    message: str = ""
    device_map: str = ""


def marker_indices(marker: dict[str, Any]) -> list[int] | None:
    """The GPU indices the checkpointed pod held; None when the marker does not say."""
    indices = marker.get("indices")
    if isinstance(indices, list) and all(isinstance(i, int) for i in indices):
        return list(indices)
    found = [_INDEX_IN_UUID.search(str(u)) for u in marker.get("gpus") or []]
    if found and all(found):
        return [int(m.group(1)) for m in found if m]
    return None


def simulated_cuda_restore(
    marker: dict[str, Any], node: str, device_mode: str, indices: list[int]
) -> SimulatedRestore:
    """Whether a CUDA process checkpointed with ``marker`` restores into a container holding
    the GPUs ``indices`` of ``node`` in ``device_mode`` ("cdi" or "legacy")."""
    old_uuids = [str(u) for u in marker.get("gpus") or []]
    old = marker_indices(marker)
    if len(old_uuids) != len(indices):
        return SimulatedRestore(
            False,
            f"SIMULATED CUDA plugin: cuda restore failed: CUDA_ERROR_NOT_SUPPORTED: the "
            f"checkpoint holds {len(old_uuids)} GPU(s), the container has {len(indices)}",
        )
    if not indices:
        return SimulatedRestore(True)
    if device_mode == "cdi":
        try:
            mapping = device_map(old_uuids, [gpu_uuid(node, i) for i in indices])
        except ValueError as e:
            return SimulatedRestore(
                False, f"SIMULATED CUDA plugin: cuda restore failed: bad device map: {e}"
            )
        return SimulatedRestore(True, device_map=mapping)
    if old != indices:
        return SimulatedRestore(
            False,
            f"SIMULATED CUDA plugin: cuda restore failed: CUDA_ERROR_NOT_SUPPORTED: "
            f"checkpointed on GPU index(es) {old}, restored onto {indices} in legacy device "
            "mode, which cannot remap GPUs",
        )
    return SimulatedRestore(True)


def read_marker(content_dir: str, manifest_digest: str, max_bytes: int = 1 << 20) -> Any:
    """The simulated CUDA marker in a checkpoint image that containerd holds, read from its
    content store (``<root>/io.containerd.content.v1.content``); None when there is none."""

    def blob(digest: str) -> str:
        algo, _, hexdigest = digest.partition(":")
        if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return os.path.join(content_dir, "blobs", "sha256", hexdigest)

    try:
        with open(blob(manifest_digest), "rb") as f:
            manifest = json.loads(f.read(max_bytes))
        for layer in manifest.get("layers") or []:
            with tarfile.open(blob(str(layer.get("digest", ""))), "r:*") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if name != SIMULATED_CUDA_MARKER or not member.isfile():
                        continue
                    if member.size > max_bytes:
                        return None
                    data = tar.extractfile(member)
                    return json.loads(data.read()) if data is not None else None
    except (OSError, ValueError, EOFError, tarfile.TarError) as e:
        log.warning("could not read the checkpoint image %s: %s", manifest_digest, e)
    return None
