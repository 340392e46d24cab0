"""The jhub-suspend node agent: checkpoints a container through its own node's kubelet, pushes
the archive as an OCI checkpoint image, verifies it and deletes the archive.

``python -m jhub_suspend.agent`` runs it (:mod:`.app`); :class:`AgentClient` is how the spawner
and the service call it. Importing this package loads only the client side.
"""

from .client import AgentClient, AgentError
from .protocol import CheckpointRequest, CheckpointResult

__all__ = ["AgentClient", "AgentError", "CheckpointRequest", "CheckpointResult"]
