"""A small version of the load benchmark (benchmarks/load.py, issue 10): several servers
suspended and resumed at once through the hub, the service and the agents, on the shared
local cluster. Every operation succeeds and every kernel keeps its state; timings are the
benchmark's business, not asserted here."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest
from conftest import module_hub

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import load

pytestmark = pytest.mark.slow
SERVERS = 5


hub = module_hub(extra_config=load.HUB_CONFIG, service_config=load.SERVICE_CONFIG)


async def test_servers_suspended_and_resumed_at_once_lose_nothing(hub):
    users = [f"load{i}" for i in range(SERVERS)]
    result = await load.run_load(hub, users, concurrency=SERVERS, timeout=600)
    for phase in ("suspend", "resume"):
        assert result[phase]["failures"] == {}, result
        assert result[phase]["done"] == SERVERS, result
    assert result["state_lost"] == {}, result
    assert result["suspend"]["latency_s"]["max"] > 0


def test_percentiles_use_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert load.percentiles(values) == {"p50": 50, "p90": 90, "p99": 99, "max": 100, "mean": 50.5}
    assert load.percentiles([]) == {}
    assert load.percentiles([3.0])["p99"] == 3.0


async def test_a_failed_read_of_an_operation_is_read_again_and_only_a_404_fails(monkeypatch):
    answers = {
        "ann": [(503, {"message": "busy"}), (200, {"status": "running"}), (200, DONE)],
        "bob": [(404, {"message": "no such operation"})],
    }

    async def service(hub, method, path):
        if method == "POST":
            user = path.split("/")[2]
            return 202, {"operation": {"id": user}}
        return answers[path.rsplit("/", 1)[1]].pop(0)

    async def suspended_model(request, user):
        return {"state": {"jhub_suspend": {"checkpoint": {"status": "suspended"}}}}

    monkeypatch.setattr(load, "_service", service)
    monkeypatch.setattr(load, "server_model", suspended_model)
    hub_api = SimpleNamespace(request=None)  # only server_model reads through it
    phase = await load.suspend_all(None, hub_api, ["ann", "bob"], timeout=30)
    assert set(phase.seconds) == {"ann"}
    assert phase.poll_errors == {"503": 1}
    assert "its operation is gone (404" in phase.failures["bob"]


DONE = {"status": "succeeded", "message": "suspended"}
