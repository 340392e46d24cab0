"""How the hub and the service reach the node agents: the settings both declare once.

A configurable mixin. Its settings can be given per class
(``c.SuspendingKubeSpawner.agent_token``, ``c.SuspendService.agent_token``) or once for both
(``c.AgentClientConfig.agent_token``), as traitlets reads a class's config from every
configurable class it derives from.
"""

from __future__ import annotations

import json
import os

from traitlets import Dict, Float, Unicode, default
from traitlets.config import Configurable

from .client import AgentClient


def node_agent_url(template: str, node: str, host_ip: str) -> str:
    """The URL of the agent on ``node`` from a template naming ``{node}`` and ``{host_ip}``
    (pure). An IPv6 address is bracketed, as a URL's host must be; "" when the template
    needs a host address and there is none."""
    if not host_ip and "{host_ip}" in template:
        return ""
    host = f"[{host_ip}]" if ":" in host_ip else host_ip
    return template.format(node=node, host_ip=host)


class AgentClientConfig(Configurable):
    agent_urls = Dict(
        Unicode(),
        help="""Node agent URLs by node name ($JHUB_SUSPEND_AGENT_URLS, as JSON). For the
        spawner they take precedence over its `agent_url`; for the service, which may call any
        agent, the first one is used when its `agent_url` is not set.""",
    ).tag(config=True)

    @default("agent_urls")
    def _default_agent_urls(self) -> dict[str, str]:
        return json.loads(os.environ.get("JHUB_SUSPEND_AGENT_URLS", "{}"))

    agent_token = Unicode(
        help="Token the node agents accept (default: $JHUB_SUSPEND_AGENT_TOKEN)."
    ).tag(config=True)

    @default("agent_token")
    def _default_agent_token(self) -> str:
        return os.environ.get("JHUB_SUSPEND_AGENT_TOKEN", "")

    agent_ca_file = Unicode(
        "", help="CA bundle that signed the agents' TLS certificates (for https agent URLs)."
    ).tag(config=True)
    agent_client_cert = Unicode(
        "", help="Client certificate presented to agents that require mTLS."
    ).tag(config=True)
    agent_client_key = Unicode("", help="Key of `agent_client_cert`.").tag(config=True)

    agent_call_timeout = Float(
        120,
        help="""Seconds one call to a node agent may take once sent, other than a checkpoint
        (deleting an image from the registry, for instance). A checkpoint has its own bound,
        `SuspendingKubeSpawner.checkpoint_timeout`.""",
    ).tag(config=True)

    agent_reconnect_timeout = Float(
        30,
        help="""Seconds to keep trying to reach a node agent that refuses connections before
        the call fails (a suspension fails and the server keeps running). A refused connection
        means nothing has started, so there is no reason to wait for the call's own timeout.""",
    ).tag(config=True)

    def agent_client(self, url: str, timeout: float | None = None) -> AgentClient:
        """A client for the agent at ``url``; ``timeout`` bounds each call (default
        `agent_call_timeout`)."""
        return AgentClient(
            url,
            self.agent_token,
            timeout=self.agent_call_timeout if timeout is None else timeout,
            reconnect_timeout=self.agent_reconnect_timeout,
            ca_file=self.agent_ca_file or None,
            client_cert=self.agent_client_cert or None,
            client_key=self.agent_client_key or None,
        )
