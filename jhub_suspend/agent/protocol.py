"""What the node agent and its clients exchange: the request and answer of a checkpoint, and
the header by which a client tells the agent's own answers from a proxy's.

The hub and the service import this and :mod:`.client`, never the agent's server code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: set on every answer of the agent itself; a 502 or 503 without it came from a proxy
AGENT_HEADER = "X-JHub-Suspend-Agent"


@dataclass(frozen=True)
class CheckpointRequest:
    namespace: str
    pod: str
    container: str
    #: where to push: ``repository[:tag]`` (no digest; the push assigns it)
    image: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    #: GPUs the pod holds: its checkpoint must hold their device state
    gpus: int = 0


#: a GPU as the device plugin names it: a UUID (``GPU-…``, ``MIG-…``) or an index
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_DEVICES = 1024


def gpu_facts_from_json(data: Any) -> tuple[str, tuple[str, ...]]:
    """The ``gpu`` part of an agent's checkpoint answer: ``(device mode, devices)``.

    ``{"device_mode": "cdi" | "legacy" | null, "devices": ["GPU-…", …]}``. Anything missing
    or malformed reads as unknown (``""``, ``()``) rather than failing a checkpoint that was
    pushed and verified: a restore treats unknown as legacy device mode, the safe reading.
    """
    if not isinstance(data, Mapping):
        return "", ()
    mode = data.get("device_mode")
    mode = mode if mode in ("cdi", "legacy") else ""
    devices = data.get("devices")
    if (
        not isinstance(devices, list)
        or len(devices) > MAX_DEVICES
        or not all(isinstance(d, str) and _DEVICE_ID.fullmatch(d) for d in devices)
        or len(set(devices)) != len(devices)
    ):
        return mode, ()
    return mode, tuple(devices)


@dataclass(frozen=True)
class CheckpointResult:
    #: ``repository@sha256:...``, what a pod spec should name
    image: str
    digest: str
    #: the image's (compressed) layer size in bytes
    size: int
    archive_bytes: int
    #: seconds per phase: checkpoint, push, verify, total
    timings: dict[str, float]
    #: for a pod holding GPUs: how its node hands GPUs to containers ("cdi", "legacy"; ""
    #: unknown, as from an agent older than this field) and the GPUs the pod held
    gpu_device_mode: str = ""
    gpu_devices: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointResult:
        """Parse an agent's answer; raises ValueError (or KeyError, TypeError) if malformed."""
        digest = str(data["digest"])
        if not digest.startswith("sha256:") or "@" not in str(data["image"]):
            raise ValueError(f"not a pinned checkpoint image: {data['image']!r}")
        mode, devices = gpu_facts_from_json(data.get("gpu"))
        return cls(
            image=str(data["image"]),
            digest=digest,
            size=int(data["size"]),
            archive_bytes=int(data["archive_bytes"]),
            timings={str(k): float(v) for k, v in dict(data["timings"]).items()},
            gpu_device_mode=mode,
            gpu_devices=devices,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "image": self.image,
            "digest": self.digest,
            "size": self.size,
            "archive_bytes": self.archive_bytes,
            "timings": dict(self.timings),
        }
        if self.gpu_device_mode or self.gpu_devices:
            out["gpu"] = {
                "device_mode": self.gpu_device_mode or None,
                "devices": list(self.gpu_devices),
            }
        return out
