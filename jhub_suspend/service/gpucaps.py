"""Which nodes can checkpoint GPU servers: GPU feature discovery's labels on the node objects,
and what each node's agent reports about its own node (``GET /capabilities``), joined by
:func:`jhub_suspend.gpu.node_capability`.

Labels are read fresh (one list of nodes per call). Agent reports change only when a node is
reconfigured, so each is kept for ``ttl`` seconds; a failed report is asked again after
``retry`` seconds, and meanwhile the node is not capable, with the error as the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..agent.client import AgentClient, AgentError
from ..gpu import AgentGpuReport, Capability, CapabilityConfig, node_capability
from .kube import Kube


def internal_ip(node: Mapping[str, Any]) -> str:
    """A node's InternalIP ("" when it has none): where its agent listens on the host network."""
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP":
            return str(address.get("address") or "")
    return ""


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

    async def for_nodes(self, nodes: Iterable[str]) -> dict[str, Capability]:
        """The capability of each of ``nodes``."""
        wanted = sorted(set(nodes))
        if not wanted:
            return {}
        listed = await self.kube.list_nodes()
        if listed is None:
            return {
                n: Capability(
                    False,
                    f"GPU checkpoints unknown on node {n}: this service may not list nodes "
                    "(it needs get/list on nodes)",
                )
                for n in wanted
            }
        by_name = {n["metadata"]["name"]: n for n in listed}
        reports = await asyncio.gather(*(self._report(n, by_name.get(n)) for n in wanted))
        out = {}
        for name, (report, error) in zip(wanted, reports, strict=True):
            node = by_name.get(name)
            labels = None if node is None else dict(node["metadata"].get("labels") or {})
            out[name] = node_capability(name, labels, report, self.config, report_error=error)
        return out

    async def _report(
        self, name: str, node: Mapping[str, Any] | None
    ) -> tuple[AgentGpuReport | None, str]:
        now = self.clock()
        cached = self._reports.get(name)
        if cached is not None and cached[0] > now:
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
