"""The jhub-suspend node agent: checkpoints a container through its own node's kubelet, pushes
the archive as an OCI checkpoint image, verifies it and deletes the archive.

``python -m jhub_suspend.agent`` runs it; :class:`AgentClient` is how the spawner calls it.
"""

from .app import NodeAgent
from .checkpointer import CheckpointRequest
from .client import AgentClient, AgentError, CheckpointResult

__all__ = ["AgentClient", "AgentError", "CheckpointRequest", "CheckpointResult", "NodeAgent"]
