"""Waiting in tests: for a condition, never for a fixed time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from jupyterhub.utils import exponential_backoff


async def wait_for(
    predicate: Callable[[], Awaitable[Any] | Any], message: str, timeout: float = 60
) -> Any:
    """Poll ``predicate`` (jittered backoff, at most 1 s apart) until it returns something
    true, and return that; raise TimeoutError with ``message`` after ``timeout`` seconds."""
    return await exponential_backoff(predicate, message, timeout=timeout, max_wait=1)
