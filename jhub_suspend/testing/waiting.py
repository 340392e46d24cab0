"""Waiting in tests: for a condition, never for a fixed time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from jupyterhub.utils import exponential_backoff


async def wait_for(
    predicate: Callable[[], Awaitable[Any] | Any],
    message: str,
    timeout: float = 60,
    *,
    start_wait: float = 0.2,
    max_wait: float = 1,
) -> Any:
    """Poll ``predicate`` (jittered backoff from ``start_wait``, at most ``max_wait`` seconds
    apart) until it returns something true, and return that; raise TimeoutError with
    ``message`` after ``timeout`` seconds."""
    return await exponential_backoff(
        predicate, message, timeout=timeout, start_wait=start_wait, max_wait=max_wait
    )


class PodStore(Protocol):
    """What the waits below read of a pod store (the local cluster's ``Store``)."""

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]: ...

    def exists(self, kind: str, namespace: str | None, name: str) -> bool: ...


async def wait_running(
    store: PodStore, name: str, timeout: float = 30, namespace: str = "default"
) -> dict[str, Any]:
    """Wait until the pod's phase is Running, and return the pod."""

    def running() -> dict[str, Any] | bool:
        pod = store.get("pods", namespace, name)
        return pod if pod["status"].get("phase") == "Running" else False

    result: dict[str, Any] = await wait_for(running, f"pod {name} never ran", timeout)
    return result


async def wait_gone(
    store: PodStore, name: str, timeout: float = 30, namespace: str = "default"
) -> None:
    """Wait until the pod no longer exists."""
    await wait_for(
        lambda: not store.exists("pods", namespace, name), f"pod {name} was never removed", timeout
    )
