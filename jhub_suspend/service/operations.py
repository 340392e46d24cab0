"""Operations the service runs in the background (suspend, resume, a node's drain), for ``GET
api/operations/{id}``. Kept in memory; the oldest finished ones are forgotten first."""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..kubevalues import rfc3339, rfc3339_or_none


@dataclass
class Operation:
    id: str
    kind: str  # suspend | resume | drain
    user: str  # "" for a drain
    server_name: str
    requested_by: str
    reason: str
    created: datetime
    status: str = "running"  # running | succeeded | failed
    message: str = ""
    finished: datetime | None = None
    result: dict[str, Any] = field(default_factory=dict)
    #: the node a drain empties ("" for an operation on one server)
    node: str = ""
    task: asyncio.Task | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.status != "running"

    def to_dict(self, prefix: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "user": self.user,
            "server_name": self.server_name,
            "requested_by": self.requested_by,
            "reason": self.reason,
            "status": self.status,
            "message": self.message,
            "created": rfc3339(self.created),
            "finished": rfc3339_or_none(self.finished),
            "result": self.result,
            "node": self.node or None,
            "url": f"{prefix}api/operations/{self.id}",
        }


class Operations:
    """The registry: at most one running operation per server, and one drain per node."""

    def __init__(self, keep: int = 1000) -> None:
        self.keep = keep
        self._ops: OrderedDict[str, Operation] = OrderedDict()

    def get(self, op_id: str) -> Operation | None:
        return self._ops.get(op_id)

    def running(self, kind: str | None = None) -> list[Operation]:
        return [o for o in self._ops.values() if not o.done and (kind is None or o.kind == kind)]

    def running_for(self, user: str, server_name: str) -> Operation | None:
        return next(
            (
                o
                for o in self.running()
                if not o.node and o.user == user and o.server_name == server_name
            ),
            None,
        )

    def draining(self, node: str) -> Operation | None:
        """The drain of ``node`` under way, if any."""
        return next((o for o in self.running("drain") if o.node == node), None)

    def by_server(self) -> dict[tuple[str, str], str]:
        """Kind of the running operation per server (a drain is on no one server)."""
        return {(o.user, o.server_name): o.kind for o in self.running() if not o.node}

    def start(
        self,
        kind: str,
        user: str,
        server_name: str,
        requested_by: str,
        reason: str,
        now: datetime,
        work: Callable[[Operation], Coroutine[Any, Any, None]],
        *,
        node: str = "",
    ) -> Operation:
        """Register an operation and run ``work(op)`` as a task; ``work`` sets the outcome."""
        op = Operation(
            secrets.token_hex(8), kind, user, server_name, requested_by, reason, now, node=node
        )
        self._ops[op.id] = op
        name = f"{kind} {node}" if node else f"{kind} {user}/{server_name}"
        op.task = asyncio.create_task(work(op), name=name)
        self._forget_old()
        return op

    def _forget_old(self) -> None:
        while len(self._ops) > self.keep:
            oldest = next((k for k, o in self._ops.items() if o.done), None)
            if oldest is None:
                return
            del self._ops[oldest]

    async def cancel_all(self) -> None:
        tasks = [o.task for o in self.running() if o.task]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
