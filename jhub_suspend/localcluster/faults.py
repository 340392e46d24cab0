"""Fault points: places where a test makes the emulated control plane stop, or fail, on cue.

A real kubelet or API server cannot be paused between two steps; ours can, so that a test can
kill the hub, the service or an agent at a precise step of a suspension or a restore and then
check that nothing was lost. Production code never arms a fault; an unarmed point costs one
dict lookup.

The points, and where they are:

======================  ========================================================================
``checkpoint``          kubelet, ``POST /checkpoint``: the request arrived, nothing dumped yet
``checkpoint-written``  kubelet: the runtime wrote the archive; the answer is not sent yet
``pull``                kubelet: a pod's image is about to be pulled
``restore``             kubelet: a container is about to be created from a checkpoint image
``pod-delete``          API server: a pod is about to be deleted
======================  ========================================================================
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

POINTS = ("checkpoint", "checkpoint-written", "pull", "restore", "pod-delete")


class InjectedFault(Exception):
    """The failure an armed fault point was told to produce (an HTTP status and a message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ArmedFault:
    """One armed point, for one pod (or any, when ``pod`` is empty).

    ``hold``: the step waits at the point until :meth:`release`; ``fail``: it then fails with
    this (status, message) instead of going on. ``reached`` is set when a step got there."""

    point: str
    pod: str = ""
    hold: bool = True
    fail: tuple[int, str] | None = None
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    hits: int = 0

    def release(self, fail: tuple[int, str] | None = None) -> None:
        """Let the held step go on, or fail it (e.g. its caller was killed meanwhile)."""
        if fail is not None:
            self.fail = fail
        self.released.set()

    async def wait_reached(self, timeout: float = 120) -> None:
        await asyncio.wait_for(self.reached.wait(), timeout)


class FaultPoints:
    """The armed points of one local cluster, shared by its API server and kubelets."""

    def __init__(self) -> None:
        self._armed: dict[str, list[ArmedFault]] = {}

    def arm(
        self,
        point: str,
        *,
        pod: str = "",
        hold: bool = True,
        fail: tuple[int, str] | None = None,
    ) -> ArmedFault:
        if point not in POINTS:
            raise ValueError(f"unknown fault point {point!r}; known: {', '.join(POINTS)}")
        fault = ArmedFault(point, pod, hold, fail)
        self._armed.setdefault(point, []).append(fault)
        return fault

    def disarm(self, fault: ArmedFault) -> None:
        """Remove the fault, releasing a step it still holds."""
        armed = self._armed.get(fault.point, [])
        if fault in armed:
            armed.remove(fault)
        fault.released.set()

    def clear(self) -> None:
        for faults in list(self._armed.values()):
            for fault in list(faults):
                self.disarm(fault)

    async def reach(self, point: str, pod: str) -> None:
        """Called at the point: count it for every fault armed there, hold while any of them
        says so, then raise the first failure one was told to produce."""
        faults = [f for f in self._armed.get(point, ()) if f.pod in ("", pod)]
        for fault in faults:
            fault.hits += 1
            fault.reached.set()
        for fault in faults:
            if fault.hold:
                await fault.released.wait()
        for fault in faults:
            if fault.fail is not None:
                raise InjectedFault(*fault.fail)


__all__ = ["POINTS", "ArmedFault", "FaultPoints", "InjectedFault"]
