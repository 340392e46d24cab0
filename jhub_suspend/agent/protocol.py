"""What the node agent and its clients exchange: the request and answer of a checkpoint, and
the header by which a client tells the agent's own answers from a proxy's.

The hub and the service import this and :mod:`.client`, never the agent's server code.
"""

from __future__ import annotations

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

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointResult:
        """Parse an agent's answer; raises ValueError (or KeyError, TypeError) if malformed."""
        digest = str(data["digest"])
        if not digest.startswith("sha256:") or "@" not in str(data["image"]):
            raise ValueError(f"not a pinned checkpoint image: {data['image']!r}")
        return cls(
            image=str(data["image"]),
            digest=digest,
            size=int(data["size"]),
            archive_bytes=int(data["archive_bytes"]),
            timings={str(k): float(v) for k, v in dict(data["timings"]).items()},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "digest": self.digest,
            "size": self.size,
            "archive_bytes": self.archive_bytes,
            "timings": dict(self.timings),
        }
