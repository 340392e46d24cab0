"""Reading the policy's signals from Prometheus, for all notebook pods at once.

prometheus-api-client is synchronous (requests), so each query runs in a thread of a small
executor, bounded by a timeout; the queries of one cycle run concurrently and their number does
not depend on the number of servers (see :func:`jhub_suspend.promql.build_queries`).
Any failure (unreachable, timeout, an error status, an answer :func:`promql.parse_vector`
rejects) raises :class:`MetricsUnavailable`, which the loop turns into a fail-safe cycle.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from .. import promql
from ..errors import OwnError
from ..policy import Signal, signals_from_vectors

Key = tuple[str, ...]


class MetricsUnavailable(OwnError):
    """The metrics cannot be used this cycle. ``category`` is a short label value for the
    fail-safe metric (unreachable, timeout, error, malformed, stale); the message says more."""

    status = 503

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category


@dataclass
class Readings:
    """One cycle's signals, keyed by (namespace, pod)."""

    cpu: dict[Key, Signal] = field(default_factory=dict)
    cpu_gpu_window: dict[Key, Signal] | None = None
    gpu: dict[Key, Signal] = field(default_factory=dict)
    memory_ratio: dict[Key, float] = field(default_factory=dict)
    #: GPU memory in use, bytes, summed over each pod's GPUs (pods without a sample absent)
    gpu_memory: dict[Key, float] = field(default_factory=dict)
    ages: dict[str, float] = field(default_factory=dict)
    queries: int = 0


class PrometheusReader:
    """Runs a cycle's queries against ``url``; counts them in :attr:`queries_total`."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        verify_tls: bool = True,
        timeout: float = 10.0,
        workers: int = 4,
    ) -> None:
        self.url = url
        self.timeout = timeout
        # No retries inside requests: a cycle fails safe and the next one tries again.
        self._client = PrometheusConnect(
            url=url,
            headers=dict(headers or {}),
            disable_ssl=not verify_tls,
            retry=Retry(total=0),
            timeout=timeout,
        )
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="promql")
        self.queries_total = 0

    def __repr__(self) -> str:  # headers may hold credentials
        return f"PrometheusReader({self.url!r})"

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    async def query(self, name: str, text: str, at: float | None = None) -> Any:
        """One instant query; its raw result list."""
        self.queries_total += 1
        params = {"time": f"{at:.3f}"} if at is not None else None
        return await self._ask(name, lambda: self._client.custom_query(text, params=params))

    async def _ask(self, name: str, request: Callable[[], Any]) -> Any:
        """Run one blocking client call in the executor, its failures as MetricsUnavailable."""
        call = asyncio.get_running_loop().run_in_executor(self._executor, request)
        try:
            return await asyncio.wait_for(call, self.timeout + 1)
        except TimeoutError:
            raise MetricsUnavailable(
                "timeout", f"Prometheus did not answer query {name} within {self.timeout:.0f} s"
            ) from None
        except (KeyError, TypeError, ValueError) as e:
            raise MetricsUnavailable("malformed", f"query {name}: unreadable answer: {e}") from e
        except Exception as e:
            kind = type(e).__name__
            if "ApiClientException" in kind:
                raise MetricsUnavailable("error", f"query {name}: Prometheus said {e}") from e
            if "Timeout" in kind:
                raise MetricsUnavailable("timeout", f"query {name}: {kind}") from e
            raise MetricsUnavailable(
                "unreachable", f"Prometheus at {self.url} is unreachable ({kind})"
            ) from e

    async def read(self, queries: promql.Queries, names: promql.MetricNames, at: float) -> Readings:
        """Run every query of the cycle concurrently and parse them."""
        texts = queries.all()
        texts.pop("requests", None)  # requests come from the pod specs, which are exact
        results = await asyncio.gather(*(self.query(n, q, at) for n, q in texts.items()))
        raw = dict(zip(texts, results, strict=True))
        key = (names.namespace, names.pod)
        try:
            out = Readings(queries=len(texts))
            out.cpu = signals_from_vectors(
                promql.parse_vector(raw["cpu_max"], key),
                promql.parse_vector(raw["cpu_count"], key),
                queries.cpu.expected_samples,
                queries.cpu.window_seconds,
            )
            if queries.cpu_gpu_window is not None:
                out.cpu_gpu_window = signals_from_vectors(
                    promql.parse_vector(raw["cpu_gpu_window_max"], key),
                    promql.parse_vector(raw["cpu_gpu_window_count"], key),
                    queries.cpu_gpu_window.expected_samples,
                    queries.cpu_gpu_window.window_seconds,
                )
            out.gpu = signals_from_vectors(
                promql.parse_vector(raw["gpu_max"], key),
                promql.parse_vector(raw["gpu_count"], key),
                queries.gpu.expected_samples,
                queries.gpu.window_seconds,
            )
            out.memory_ratio = promql.parse_vector(raw["memory_ratio"], key)
            out.gpu_memory = promql.parse_vector(raw["gpu_memory"], key)
            out.ages = {
                k[0]: v for k, v in promql.parse_vector(raw["freshness"], ("source",)).items()
            }
        except promql.MalformedResponse as e:
            raise MetricsUnavailable("malformed", f"malformed answer from Prometheus: {e}") from e
        return out

    async def gpu_staging(
        self, queries: promql.Queries, names: promql.MetricNames, at: float | None = None
    ) -> tuple[dict[Key, float], dict[Key, float]]:
        """Now, for one server's suspension: (GPU memory in use in bytes, memory working set
        as a fraction of the request) per pod; two queries, whatever the number of pods."""
        gpu, ratio = await asyncio.gather(
            self.query("gpu_memory", queries.gpu_memory, at),
            self.query("memory_ratio", queries.memory_ratio, at),
        )
        key = (names.namespace, names.pod)
        try:
            return promql.parse_vector(gpu, key), promql.parse_vector(ratio, key)
        except promql.MalformedResponse as e:
            raise MetricsUnavailable("malformed", f"malformed answer from Prometheus: {e}") from e

    async def query_range(
        self, query: str, start: float, end: float, step: float
    ) -> list[list[float | None]]:
        """The first series of a range query as ``[[time, value], ...]`` (empty when there is
        none; a value that is not a finite number is None, which JSON can carry), for charts;
        not counted in :attr:`queries_total`."""
        result = await self._ask(
            "range",
            lambda: self._client.custom_query_range(
                query,
                datetime.fromtimestamp(start, UTC),
                datetime.fromtimestamp(end, UTC),
                f"{step:g}",
            ),
        )
        try:
            values = result[0]["values"] if result else []
            return [[float(t), _finite_or_none(float(v))] for t, v in values]
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise MetricsUnavailable("malformed", f"range query: unreadable answer: {e}") from e


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
