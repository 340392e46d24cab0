"""Benchmark: one policy cycle for 1,000 and 10,000 synthetic servers.

What is measured: ``PolicyLoop.observe()`` (read the hub's users page by page, the pods, the
discard markers and the Prometheus signals; build the observations; ``policy.decide``), i.e.
everything a cycle does except starting suspensions. The IO boundary is faked:

* the hub and Prometheus are tiny fakes served over HTTP on loopback in the same process
  (``jhub_suspend.testing.fakes``), so the real hub client (tornado, paginated, 200 users per
  page) and the real prometheus-api-client (requests, in the service's thread executor) do
  their real work, including JSON parsing; the fakes' own serialisation runs on the same CPU
  and is included in the time;
* Kubernetes is faked in process (the pod list is handed over as parsed JSON), so the
  API server's and the JSON decoding's share of a real pod list is not included.

Memory: the peak of Python allocations during the cycle (tracemalloc), and the process's
maximum RSS. Results go to benchmarks/results/policy_cycle.json.

    .venv/bin/python benchmarks/policy_cycle.py [--sizes 1000 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import time
import tracemalloc
from datetime import UTC, datetime
from typing import Any

from traitlets.config import Config

from jhub_suspend.service import SuspendService
from jhub_suspend.service.actions import Actions
from jhub_suspend.service.hubclient import HubClient
from jhub_suspend.service.loop import PolicyLoop
from jhub_suspend.service.prom import PrometheusReader
from jhub_suspend.service.retention import Retention
from jhub_suspend.testing import fakes

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "policy_cycle.json")


async def measure(n: int, repeat: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    hub = fakes.FakeHub(fakes.synthetic_users(n, now))
    pods = fakes.synthetic_pods(n)
    keys = [("default", p["metadata"]["name"]) for p in pods]
    prom = fakes.FakePrometheus(keys, gpu_pods=keys[::10])
    hub.start()
    prom.start()
    cfg = Config()
    cfg.SuspendService.prometheus_url = prom.url
    cfg.SuspendService.namespace = "default"
    svc = SuspendService(config=cfg)
    svc.prepare()
    svc.hub = HubClient(hub.url, "benchmark-token", page_size=200)
    svc.prometheus = PrometheusReader(prom.url, timeout=60)
    svc.kube = fakes.FakeKube(pods)  # type: ignore[assignment]
    svc.gpu_capabilities = fakes.AssumedGpuCapabilities()  # type: ignore[assignment]
    svc.actions = Actions(svc)
    svc.retention = Retention(svc)
    svc.loop = PolicyLoop(svc)
    try:
        times = []
        snap = None
        for _ in range(repeat):  # timed without tracemalloc, which slows allocation down
            hub.requests = prom.queries = 0
            t0 = time.perf_counter()
            snap = await svc.loop.observe()
            times.append(time.perf_counter() - t0)
        assert snap is not None and len(snap.plan.decisions) == n
        queries, pages = prom.queries, hub.requests  # of the last cycle
        svc.loop.snapshot = None  # measure one cycle's allocations, not the kept snapshot
        tracemalloc.start()
        await svc.loop.observe(record=False)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return {
            "servers": n,
            "cycle_seconds": {
                "median": statistics.median(times),
                "min": min(times),
                "max": max(times),
                "runs": times,
            },
            "prometheus_queries_per_cycle": queries,
            "hub_pages_per_cycle": pages,
            "kubernetes_calls_per_cycle": svc.kube.calls // (repeat + 1),  # type: ignore[attr-defined]
            "python_peak_bytes": peak,
            "decisions": snap.plan.counts,
        }
    finally:
        svc.prometheus.close()
        hub.stop()
        prom.stop()


async def run(sizes: list[int], repeat: int, output: str | None = RESULTS) -> dict[str, Any]:
    results = [await measure(n, repeat) for n in sizes]
    report = {
        "benchmark": "policy_cycle",
        "what": "PolicyLoop.observe(): hub pages + pods + markers + Prometheus + decide",
        "io": "hub and Prometheus: fakes over loopback HTTP in-process; Kubernetes: in-process fake",
        "when": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "results": results,
    }
    if output:
        os.makedirs(os.path.dirname(output), exist_ok=True)
        with open(output, "w") as f:
            json.dump(report, f, indent=2)
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--output", default=RESULTS)
    args = p.parse_args()
    report = asyncio.run(run(args.sizes, args.repeat, args.output))
    for r in report["results"]:
        print(
            f"{r['servers']:>6} servers: {r['cycle_seconds']['median']:.2f} s per cycle, "
            f"{r['prometheus_queries_per_cycle']} Prometheus queries, "
            f"{r['hub_pages_per_cycle']} hub pages, "
            f"peak {r['python_peak_bytes'] / 2**20:.0f} MiB Python"
        )
    print(f"max RSS {report['max_rss_bytes'] / 2**20:.0f} MiB; written to {args.output}")


if __name__ == "__main__":
    main()
