"""A server's spawner state, as read from the hub by those who do not own it (the service).

SuspendingKubeSpawner's ``get_state()`` writes KubeSpawner's state (``pod_name``,
``namespace``, ...) and, under :data:`STATE_KEY`, its checkpoint record and last error. The hub
hands that state to the service as it is stored: written by any version of the spawner, or
damaged. :func:`read_state` reads it without raising, so that one server's state cannot stop
what the service does for every other server: what it cannot read it leaves out (as the spawner
does, whose next start is then fresh) and names in :attr:`ServerState.problems`.

The checkpoint's image reference stays sealed: the service has no crypt key, and needs none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .checkpoints import Checkpoint, LastError

#: the spawner's part of its state
STATE_KEY = "jhub_suspend"
#: where the spawner keeps a checkpoint record it could not read, for the admin
UNREADABLE_KEY = "unreadable_checkpoint"


@dataclass(frozen=True)
class ServerState:
    """What the spawner's state says about its server."""

    pod_name: str = ""
    namespace: str = ""
    #: the recorded checkpoint, its image still sealed
    checkpoint: Checkpoint | None = None
    last_error: LastError | None = None
    #: what could not be read, for the log
    problems: tuple[str, ...] = ()


def read_state(state: Any) -> ServerState:
    """The spawner's ``state`` (from the hub's server model), read tolerantly."""
    if state is None:
        return ServerState()
    if not isinstance(state, Mapping):
        return ServerState(problems=(f"the state is a {type(state).__name__}, not an object",))
    problems = []

    def text(key: str) -> str:
        value = state.get(key) or ""
        if isinstance(value, str):
            return value
        problems.append(f"its {key} is a {type(value).__name__}, not a string")
        return ""

    pod_name, namespace = text("pod_name"), text("namespace")
    ours = state.get(STATE_KEY) or {}
    if not isinstance(ours, Mapping):
        problems.append(f"its {STATE_KEY} is a {type(ours).__name__}, not an object")
        ours = {}
    checkpoint = last_error = None
    if ours.get("checkpoint"):
        try:
            checkpoint = Checkpoint.from_state(ours["checkpoint"], unseal=False)
        except (ValueError, TypeError) as e:
            problems.append(str(e))
    if ours.get("last_error"):
        try:
            last_error = LastError.from_state(ours["last_error"])
        except (ValueError, TypeError) as e:
            problems.append(str(e))
    return ServerState(pod_name, namespace, checkpoint, last_error, tuple(problems))
