"""Watches: the change history's entries, what a filtered watch sees of a change, and the
stream a watch reads."""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..selectors import Selector, bad_request
from .resources import Obj

# --- watch -----------------------------------------------------------------------------------


@dataclass
class Change:
    """One entry of the history: the object after the change and before it."""

    rv: int
    resource: str
    type: str
    obj: Obj
    prev: Obj | None


def with_resource_version(obj: Mapping[str, Any], rv: int) -> Obj:
    result = copy.deepcopy(dict(obj))
    result["metadata"]["resourceVersion"] = str(rv)
    return result


def watch_event_for(selector: Selector, change: Change) -> tuple[str, Obj] | None:
    """What a filtered watch sees of a change, as the real watch cache decides it: an object
    that starts matching is ADDED, one that stops matching is DELETED (with its old content)."""
    now = change.type != "DELETED" and selector.matches(change.obj)
    before = change.prev is not None and selector.matches(change.prev)
    if change.type == "DELETED":
        return ("DELETED", change.obj) if selector.matches(change.obj) else None
    if now and before:
        return ("MODIFIED", change.obj)
    if now:
        return ("ADDED", change.obj)
    if before and change.prev is not None:
        return ("DELETED", with_resource_version(change.prev, change.rv))
    return None


def parse_resource_version(value: str | None) -> int | None:
    """None for "" / None / "0" (start from the current state), else the integer."""
    if value is None or value in ("", "0"):
        return None
    if not value.isdigit():
        raise bad_request(f'invalid resource version "{value}"')
    return int(value)


class Subscriptions(Protocol):
    """What a stream needs of its store: to leave it when closed."""

    def _unsubscribe(self, stream: WatchStream) -> None: ...


class WatchStream:
    """An async iterator of ``(type, object)``; created by :meth:`Store.watch`.

    It is registered with the store from creation, so no change is missed between the call
    and the first ``__anext__``. Close it (or use ``async with``) when done.
    """

    def __init__(
        self,
        store: Subscriptions,
        resource: str,
        selector: Selector,
        initial: list[tuple[str, Obj]],
        timeout: float | None,
    ) -> None:
        self.resource = resource
        self.selector = selector
        self._store = store
        self._pending: deque[tuple[str, Obj]] = deque(initial)
        self._queue: asyncio.Queue[Change | None] = asyncio.Queue()
        self._timeout = timeout
        self._deadline: float | None = None
        self._closed = False

    def _deliver(self, change: Change | None) -> None:
        self._queue.put_nowait(change)

    def __aiter__(self) -> AsyncIterator[tuple[str, Obj]]:
        return self

    async def __anext__(self) -> tuple[str, Obj]:
        loop = asyncio.get_running_loop()
        if self._deadline is None and self._timeout is not None:
            self._deadline = loop.time() + self._timeout
        while not self._closed:
            if self._pending:
                return self._pending.popleft()
            try:
                change = await self._next_change(loop)
            except asyncio.CancelledError:
                # The consumer's task was cancelled (a controller stopping): don't stay subscribed.
                self.close()
                raise
            if change is None:
                break
            event = watch_event_for(self.selector, change)
            if event is not None:
                return event[0], copy.deepcopy(event[1])
        self.close()
        raise StopAsyncIteration

    async def _next_change(self, loop: asyncio.AbstractEventLoop) -> Change | None:
        if self._deadline is None:
            return await self._queue.get()
        remaining = self._deadline - loop.time()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), remaining)
        except TimeoutError:
            return None

    def close(self) -> None:
        """Stop the stream; a pending ``__anext__`` ends with StopAsyncIteration."""
        if not self._closed:
            self._closed = True
            self._store._unsubscribe(self)
            self._queue.put_nowait(None)

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> WatchStream:
        return self

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aexit__(self, *exc: object) -> None:
        self.close()
