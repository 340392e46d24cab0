"""The one retry helper every client uses (the hub's API, Kubernetes, node agents, kubelets)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from jhub_suspend.retry import with_retries

log = logging.getLogger("test")


class Flaky(Exception):
    pass


def attempts(*outcomes):
    """An attempt that raises or returns each of ``outcomes`` in turn; records its times."""
    seen: list[float] = []

    async def attempt(seconds: float):
        seen.append(seconds)
        outcome = outcomes[len(seen) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return attempt, seen


async def retry(attempt, **kw):
    args = {
        "retryable": lambda e: isinstance(e, Flaky),
        "attempt_timeout": 5,
        "total_timeout": 5,
        "log": log,
        "start_wait": 0.01,
        "max_wait": 0.02,
    }
    return await with_retries(attempt, "test", **{**args, **kw})


async def test_retryable_errors_are_retried_until_an_attempt_returns():
    attempt, seen = attempts(Flaky(), Flaky(), "ok")
    assert await retry(attempt) == "ok"
    assert len(seen) == 3


async def test_other_errors_end_the_retries_at_once():
    attempt, seen = attempts(Flaky(), KeyError("no"), "ok")
    with pytest.raises(KeyError):
        await retry(attempt)
    assert len(seen) == 2


async def test_max_attempts_then_the_last_error():
    attempt, seen = attempts(Flaky(1), Flaky(2), Flaky(3), "ok")
    with pytest.raises(Flaky) as err:
        await retry(attempt, max_attempts=3)
    assert err.value.args == (3,) and len(seen) == 3


async def test_the_retry_window_ends_retries_with_the_last_error():
    async def refused(seconds: float):
        raise Flaky("refused")

    t0 = time.monotonic()
    with pytest.raises(Flaky, match="refused"):
        await retry(refused, retry_for=0.3, total_timeout=60)
    assert time.monotonic() - t0 < 2


async def test_an_attempt_is_cancelled_when_its_time_is_up_unless_it_keeps_to_it_itself():
    async def hangs(seconds: float):
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError):  # not retryable here
        await retry(hangs, attempt_timeout=0.1)

    got = []

    async def keeps_to_it(seconds: float):
        got.append(seconds)
        await asyncio.sleep(0.05)
        return "done"

    assert await retry(keeps_to_it, attempt_timeout=0.01, cancel=False) == "done"
    assert got == [0.01]


async def test_attempts_get_what_is_left_of_the_total():
    attempt, seen = attempts(Flaky(), "ok")
    await retry(attempt, attempt_timeout=100, total_timeout=30)
    assert seen[0] == pytest.approx(30, abs=0.5) and seen[1] <= seen[0]
