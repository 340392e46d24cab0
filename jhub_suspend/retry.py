"""Retries with jittered exponential backoff (jupyterhub's ``exponential_backoff``), a time
limit per attempt and a cap on the total.

Every client in jhub-suspend that retries (the hub's API, Kubernetes, the node agents, the
kubelet) retries through :func:`with_retries`, and says which of its errors are safe to try
again: an error it refuses ends the retries at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from jupyterhub.utils import exponential_backoff

T = TypeVar("T")

#: the least time an attempt is given, however little of the total is left
MIN_ATTEMPT_SECONDS = 1.0


@dataclass
class _Ok(Generic[T]):
    value: T


async def with_retries(
    attempt: Callable[[float], Awaitable[T]],
    what: str,
    *,
    retryable: Callable[[BaseException], bool],
    attempt_timeout: float,
    total_timeout: float,
    retry_for: float | None = None,
    max_attempts: int | None = None,
    cancel: bool = True,
    log: logging.Logger | logging.LoggerAdapter,
    start_wait: float = 0.2,
    max_wait: float = 5.0,
) -> T:
    """Run ``attempt(seconds)`` until it returns, retrying the errors ``retryable`` accepts.

    ``seconds`` is the time the attempt may take: ``attempt_timeout``, or what is left of
    ``total_timeout`` when that is less. With ``cancel`` the attempt is cancelled when its time
    is up (a TimeoutError, retried only if ``retryable`` accepts one); without, it keeps to that
    time itself, as a request that must not be dropped half-way does with its own timeout.

    Errors are retried for ``retry_for`` seconds (default: the total) and for at most
    ``max_attempts`` attempts; then the last one is raised.
    """
    deadline = time.monotonic() + total_timeout
    last: list[BaseException] = []
    attempts = 0

    async def once() -> _Ok[T] | bool:
        nonlocal attempts
        attempts += 1
        seconds = min(attempt_timeout, max(MIN_ATTEMPT_SECONDS, deadline - time.monotonic()))
        try:
            call = attempt(seconds)
            return _Ok(await (asyncio.wait_for(call, seconds) if cancel else call))
        except Exception as e:
            if not retryable(e) or (max_attempts is not None and attempts >= max_attempts):
                raise
            last[:] = [e]
            log.info("%s failed (%s); retrying", what, e or type(e).__name__)
            return False

    window = total_timeout if retry_for is None else min(retry_for, total_timeout)
    try:
        result = await exponential_backoff(
            once, what, start_wait=start_wait, max_wait=max_wait, timeout=window
        )
    except TimeoutError:
        if last:
            raise last[0] from None
        raise
    assert isinstance(result, _Ok)
    return result.value
