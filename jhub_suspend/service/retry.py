"""Retries with jittered exponential backoff, a timeout per attempt and a cap on the total."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from jupyterhub.utils import exponential_backoff

T = TypeVar("T")


@dataclass
class _Ok(Generic[T]):
    value: T


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    what: str,
    *,
    retryable: Callable[[BaseException], bool],
    attempt_timeout: float,
    total_timeout: float,
    log: logging.Logger | logging.LoggerAdapter,
    start_wait: float = 0.2,
    max_wait: float = 5.0,
) -> T:
    """Run ``attempt`` until it succeeds, retrying only errors ``retryable`` accepts.

    Each attempt is cancelled after ``attempt_timeout`` (the timeout counts as retryable only
    if ``retryable(TimeoutError())`` says so); all attempts together stop after
    ``total_timeout``, raising the last error. Waits are jittered (jupyterhub's
    ``exponential_backoff``).
    """
    deadline = time.monotonic() + total_timeout
    last: list[BaseException] = []

    async def once() -> _Ok[T] | bool:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            return _Ok(await asyncio.wait_for(attempt(), min(attempt_timeout, remaining)))
        except Exception as e:
            if not retryable(e):
                raise
            last[:] = [e]
            log.info("%s failed (%s); retrying", what, e or type(e).__name__)
            return False

    try:
        result = await exponential_backoff(
            once, what, start_wait=start_wait, max_wait=max_wait, timeout=total_timeout
        )
    except TimeoutError:
        if last:
            raise last[0] from None
        raise
    assert isinstance(result, _Ok)
    return result.value
