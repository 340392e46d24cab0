"""Which nodes can checkpoint GPU servers: GPU feature discovery's labels on the node objects,
and what each node's agent reports about its own node (``GET /capabilities``), joined by
:func:`jhub_suspend.gpu.node_capability`.

Labels are read fresh (one list of nodes per call). An agent's report is kept for ``ttl``
seconds; a failed report is asked again after ``retry`` seconds, and meanwhile the node is not
capable, with the error as the reason. The report carries the node's available memory, which
changes all the time: the figure the policy uses is as old as ``ttl`` at most (so ``ttl`` is
short by default), and a suspension asked for by a user or an admin asks the agent afresh
(``fresh=True``).

:func:`server_readiness` adds the per-server rules (legacy device mode, host memory to stage
the GPU memory) of :func:`jhub_suspend.gpu.server_gpu_readiness`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..agent.client import AgentClient, AgentError
from ..gpu import (
    AgentGpuReport,
    Capability,
    CapabilityConfig,
    node_capability,
    node_gpu_count,
    server_gpu_readiness,
)
from .kube import Kube


def internal_ip(node: Mapping[str, Any]) -> str:
    """A node's InternalIP ("" when it has none): where its agent listens on the host network."""
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP":
            return str(address.get("address") or "")
    return ""


@dataclass(frozen=True)
class GpuNode:
    """What the per-server GPU rules need of one node."""

    capability: Capability
    #: GPU feature discovery's nvidia.com/gpu.count (None: no readable label)
    gpu_count: int | None = None
    #: the node's available memory in bytes, as its agent last reported it (None: unknown)
    memory_available: int | None = None


def server_readiness(
    node_name: str,
    node: GpuNode | None,
    *,
    gpus: float,
    memory_limit: float | None,
    memory_used: float | None,
    gpu_memory_used: float | None,
) -> Capability:
    """Whether a server holding ``gpus`` GPUs on ``node_name`` may be suspended (see
    :func:`jhub_suspend.gpu.server_gpu_readiness`); ``node`` None: its node is unknown."""
    if node is None:
        where = f"node {node_name}" if node_name else "its node"
        return Capability(False, f"GPU checkpoints unknown on {where}: not assessed")
    return server_gpu_readiness(
        node.capability,
        gpus=gpus,
        node_gpu_count=node.gpu_count,
        gpu_memory_used=gpu_memory_used,
        memory_limit=memory_limit,
        memory_used=memory_used,
        node_memory_available=node.memory_available,
        node=node_name,
    )


class GpuCapabilities:
    """Capability per node, for the policy loop and the suspend action."""

    def __init__(
        self,
        kube: Kube,
        agent_for: Callable[[str, str], AgentClient | None],
        config: CapabilityConfig,
        *,
        ttl: float = 300.0,
        retry: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.kube = kube
        self.agent_for = agent_for
        self.config = config
        self.ttl = ttl
        self.retry = retry
        self.clock = clock
        self.log = log or logging.getLogger(__name__)
        # node -> (when it expires, the report or None, the error)
        self._reports: dict[str, tuple[float, AgentGpuReport | None, str]] = {}

    async def nodes(self, nodes: Iterable[str], *, fresh: bool = False) -> dict[str, GpuNode]:
        """The capability, GPU count and available memory of each of ``nodes``; ``fresh``:
        ask their agents now, whatever is cached."""
        wanted = sorted(set(nodes))
        if not wanted:
            return {}
        listed = await self.kube.list_nodes()
        if listed is None:
            return {
                n: GpuNode(
                    Capability(
                        False,
                        f"GPU checkpoints unknown on node {n}: this service may not list nodes "
                        "(it needs get/list on nodes)",
                    )
                )
                for n in wanted
            }
        by_name = {n["metadata"]["name"]: n for n in listed}
        reports = await asyncio.gather(
            *(self._report(n, by_name.get(n), fresh=fresh) for n in wanted)
        )
        out = {}
        for name, (report, error) in zip(wanted, reports, strict=True):
            node = by_name.get(name)
            labels = None if node is None else dict(node["metadata"].get("labels") or {})
            out[name] = GpuNode(
                node_capability(name, labels, report, self.config, report_error=error),
                node_gpu_count(labels),
                None if report is None else report.memory_available,
            )
        return out

    async def _report(
        self, name: str, node: Mapping[str, Any] | None, *, fresh: bool = False
    ) -> tuple[AgentGpuReport | None, str]:
        now = self.clock()
        cached = self._reports.get(name)
        if cached is not None and cached[0] > now and not fresh:
            return cached[1], cached[2]
        report: AgentGpuReport | None = None
        error = ""
        agent = None if node is None else self.agent_for(name, internal_ip(node))
        if node is None:
            error = "no such node"
        elif agent is None:
            error = "no node agent URL for it"
        else:
            try:
                report = await agent.gpu_report()
            except AgentError as e:
                error = str(e)
                self.log.warning("No GPU report from the agent on node %s: %s", name, error)
        if report is not None and report.simulated:
            self.log.info("The agent on node %s reports a SIMULATED CUDA plugin", name)
        self._reports[name] = (now + (self.ttl if report else self.retry), report, error)
        return report, error
