"""The real servers of the local cluster: Prometheus and docker-registry, started by our own
launcher on our own ports. These tests fail, never skip, when a program is missing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_command
from prometheus_api_client import PrometheusConnect
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from jhub_suspend.localcluster import metrics, services
from jhub_suspend.localcluster.services import (
    ManagedProcess,
    MissingBinaryError,
    ProcessGroup,
    ServiceError,
    ServiceExitedError,
    ServiceTimeoutError,
)
from jhub_suspend.testing.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
BRISK = {"start_wait": 0.05, "max_wait": 0.5}  # processes here exit or answer within moments


def binary(name: str) -> str:
    """The program as the launcher finds it; fails the test (never skips) when it is missing."""
    try:
        return services.find_binary(name)
    except MissingBinaryError as e:
        return require_command(name, str(e))


def alive(pid: int) -> bool:
    """Whether pid is a live process (a zombie waiting for a reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live processes in a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@pytest.fixture
async def group() -> AsyncIterator[ProcessGroup]:
    g = ProcessGroup()
    yield g
    await g.stop_all(grace=2)


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


# --- pure helpers -----------------------------------------------------------------------------


def test_prometheus_config() -> None:
    text = services.prometheus_config(
        [
            {
                "job": "kubelet",
                "targets": ["127.0.0.1:1", "127.0.0.1:2"],
                "metrics_path": "/metrics/cadvisor",
            },
            {
                "job": "ksm",
                "targets": ["127.0.0.1:3"],
                "scrape_interval": "1s",
                "labels": {"a": "b"},
            },
        ],
        scrape_interval="2s",
    )
    cfg = json.loads(text)  # JSON, which Prometheus reads as YAML
    assert cfg["global"] == {
        "scrape_interval": "2s",
        "scrape_timeout": "2s",
        "evaluation_interval": "2s",
    }
    kubelet, ksm = cfg["scrape_configs"]
    assert kubelet == {
        "job_name": "kubelet",
        "metrics_path": "/metrics/cadvisor",
        "static_configs": [{"targets": ["127.0.0.1:1", "127.0.0.1:2"]}],
    }
    assert ksm["scrape_interval"] == ksm["scrape_timeout"] == "1s"
    assert ksm["metrics_path"] == "/metrics"
    assert ksm["static_configs"] == [{"targets": ["127.0.0.1:3"], "labels": {"a": "b"}}]
    assert (
        json.loads(services.prometheus_config([], "5s", "10s"))["global"]["evaluation_interval"]
        == "10s"
    )


@pytest.mark.parametrize(
    "targets, message",
    [
        ([{"targets": ["a:1"]}], "without a job"),
        ([{"job": "a", "targets": "a:1"}], "must be a list"),
        ([{"job": "a", "targets": ["a:1"]}, {"job": "a", "targets": []}], "given twice"),
        ([{"job": "a", "targets": [], "path": "/x"}], "unknown keys"),
    ],
)
def test_prometheus_config_rejects(targets: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        services.prometheus_config(targets)


def test_registry_config(tmp_path: Path) -> None:
    cfg = json.loads(services.registry_config(tmp_path / "storage", 5123, log_level="debug"))
    assert cfg["version"] == "0.1"
    assert cfg["http"]["addr"] == "127.0.0.1:5123"
    assert cfg["storage"]["filesystem"] == {"rootdirectory": str(tmp_path / "storage")}
    assert cfg["storage"]["delete"] == {"enabled": True}
    assert cfg["log"]["level"] == "debug"
    assert "auth" not in cfg and "tls" not in cfg["http"]


def test_port_clash() -> None:
    assert services.port_clash("listen tcp 127.0.0.1:9090: bind: address already in use")
    assert not services.port_clash("Server is ready to receive web requests.")


def test_free_port_is_bindable() -> None:
    port = services.free_port()
    assert 0 < port < 65536
    bind_sockets(port, "127.0.0.1")[0].close()


def test_missing_binary_names_the_install_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("JHUB_SUSPEND_PREFIX", str(tmp_path / "prefix"))
    monkeypatch.delenv("JHUB_SUSPEND_PROMETHEUS", raising=False)
    with pytest.raises(MissingBinaryError, match=r"scripts/install\.sh") as exc:
        services.find_binary("prometheus")
    assert "prometheus is not installed" in str(exc.value)
    assert str(tmp_path / "prefix" / "bin" / "prometheus") in str(exc.value)
    with pytest.raises(
        MissingBinaryError, match=r"/nonexistent/docker-registry.*scripts/install\.sh"
    ):
        services.find_binary("docker-registry", "/nonexistent/docker-registry")


def test_find_binary_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "prefix" / "bin").mkdir(parents=True)
    (tmp_path / "path").mkdir()
    for p in (
        tmp_path / "prefix" / "bin" / "tool",
        tmp_path / "path" / "tool",
        tmp_path / "env-tool",
    ):
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.setenv("JHUB_SUSPEND_PREFIX", str(tmp_path / "prefix"))
    monkeypatch.delenv("JHUB_SUSPEND_TOOL", raising=False)
    assert services.find_binary("tool") == str(tmp_path / "prefix" / "bin" / "tool")
    monkeypatch.setenv("JHUB_SUSPEND_TOOL", str(tmp_path / "env-tool"))
    assert services.find_binary("tool") == str(tmp_path / "env-tool")
    assert services.find_binary("tool", tmp_path / "path" / "tool") == str(
        tmp_path / "path" / "tool"
    )
    (tmp_path / "prefix" / "bin" / "tool").unlink()
    monkeypatch.delenv("JHUB_SUSPEND_TOOL")
    assert services.find_binary("tool") == str(tmp_path / "path" / "tool")
    assert services.binary_env_var("docker-registry") == "JHUB_SUSPEND_DOCKER_REGISTRY"


async def test_start_with_missing_binary_fails_clearly(tmp_path: Path, group: ProcessGroup) -> None:
    with pytest.raises(MissingBinaryError, match=r"scripts/install\.sh"):
        await services.start_prometheus(
            tmp_path / "prom", binary="/nonexistent/prometheus", group=group
        )
    with pytest.raises(MissingBinaryError, match=r"scripts/install\.sh"):
        await services.start_registry(
            tmp_path / "reg", binary="/nonexistent/docker-registry", group=group
        )
    assert len(group) == 0


# --- ManagedProcess ---------------------------------------------------------------------------


async def test_stop_kills_the_whole_group(tmp_path: Path, group: ProcessGroup) -> None:
    proc = await ManagedProcess(
        "tree",
        sh("sleep 300 & sleep 300 & echo started; wait"),
        log_path=tmp_path / "tree.log",
        group=group,
    ).start()
    assert proc.pid is not None and list(group) == [proc]
    # Both children run before the shell writes its line: wait for the line too, or a loaded
    # machine reads the log too early.
    await proc.wait_ready(
        lambda: len(group_members(proc.pid or 0)) == 3 and "started" in proc.log_tail(),
        timeout=10,
    )
    assert "started" in proc.log_tail()
    code = await proc.stop(grace=5)
    assert code == -signal.SIGTERM
    assert not alive(proc.pid) and group_members(proc.pid) == []
    assert len(group) == 0
    assert await proc.stop() == code  # idempotent


async def test_stop_kills_what_ignores_sigterm(tmp_path: Path, group: ProcessGroup) -> None:
    script = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); signal.pause()"
    proc = await ManagedProcess(
        "stubborn", [sys.executable, "-c", script], log_path=tmp_path / "s.log", group=group
    ).start()
    await proc.wait_ready(lambda: "up" in proc.log_tail(), timeout=10)
    t0 = time.monotonic()
    codes = await asyncio.gather(proc.stop(grace=0.5), proc.stop(grace=0.5))
    assert codes == [-signal.SIGKILL, -signal.SIGKILL]
    assert time.monotonic() - t0 < 5
    assert proc.pid is not None and not alive(proc.pid)


async def test_wait_ready_reports_an_early_exit_with_the_log(
    tmp_path: Path, group: ProcessGroup
) -> None:
    proc = await ManagedProcess(
        "crasher", sh("echo 'boom: bad flag' >&2; exit 3"), log_path=tmp_path / "c.log", group=group
    ).start()
    with pytest.raises(ServiceExitedError) as exc:
        await proc.wait_ready(lambda: False, timeout=10)
    message = str(exc.value)
    assert "crasher exited with status 3" in message
    assert "boom: bad flag" in message and str(tmp_path / "c.log") in message
    await proc.stop()


async def test_wait_ready_times_out_with_the_log(tmp_path: Path, group: ProcessGroup) -> None:
    proc = await ManagedProcess(
        "slow",
        sh("echo still starting; exec sleep 300"),
        log_path=tmp_path / "slow.log",
        group=group,
    ).start()
    url = f"http://127.0.0.1:{services.free_port()}/ready"
    with pytest.raises(ServiceTimeoutError) as exc:
        await proc.wait_ready(url, timeout=0.5)
    assert isinstance(exc.value, TimeoutError)
    assert f"slow was not ready at {url} after 0.5s" in str(exc.value)
    assert "still starting" in str(exc.value)
    await proc.stop()


async def test_start_of_a_missing_program_fails_clearly(
    tmp_path: Path, group: ProcessGroup
) -> None:
    proc = ManagedProcess(
        "ghost", ["/nonexistent/ghostd"], log_path=tmp_path / "g.log", group=group
    )
    with pytest.raises(ServiceError, match=r"cannot start ghost \(/nonexistent/ghostd\)"):
        await proc.start()
    assert len(group) == 0 and proc.pid is None
    assert await proc.stop() is None


async def test_stop_all_stops_everything(tmp_path: Path) -> None:
    g = ProcessGroup()
    procs = [
        await ManagedProcess(
            f"p{i}", ["sleep", "300"], log_path=tmp_path / f"{i}.log", group=g
        ).start()
        for i in range(3)
    ]
    assert len(g) == 3
    await g.stop_all(grace=2)
    assert len(g) == 0
    assert all(p.returncode is not None and not alive(p.pid or 0) for p in procs)
    await g.stop_all()  # nothing left: a no-op


def run_script(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def script_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


async def test_children_die_with_their_parent(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a server never outlives the Python process that started it, even one
    killed with SIGKILL, which runs no cleanup at all."""
    parent = await asyncio.create_subprocess_exec(
        *run_script(
            f"""
            import asyncio, sys
            from jhub_suspend.localcluster.services import ManagedProcess

            async def main():
                p = await ManagedProcess("orphan", ["sleep", "300"], log_path={str(tmp_path / "o.log")!r}).start()
                print(p.pid, flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

            asyncio.run(main())
            """
        ),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=script_env(),
    )
    assert parent.stdout is not None
    line = await asyncio.wait_for(parent.stdout.readline(), 30)
    child = int(line)
    assert alive(child)
    parent.kill()
    await parent.wait()
    await wait_for(lambda: not alive(child), f"child {child} outlived its parent", 20, **BRISK)


async def test_cleanup_hook_kills_on_signal(tmp_path: Path) -> None:
    g = ProcessGroup()
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        proc = await ManagedProcess(
            "victim", ["sleep", "300"], log_path=tmp_path / "v.log", group=g
        ).start()
        services.install_cleanup_hooks(g, signals=(signal.SIGUSR1,))
        services.install_cleanup_hooks(g, signals=(signal.SIGUSR1,))  # a second call does nothing
        os.kill(os.getpid(), signal.SIGUSR1)
        await wait_for(
            lambda: proc.returncode is not None,
            "the signal hook did not kill the process",
            20,
            **BRISK,
        )
        assert proc.returncode == -signal.SIGKILL
        assert seen == [signal.SIGUSR1]  # the previous handler still ran, once
    finally:
        signal.signal(signal.SIGUSR1, previous)
        await g.stop_all()


# --- Prometheus -------------------------------------------------------------------------------


class FakeNode:
    """A metrics endpoint like a kubelet's plus kube-state-metrics: one container using CPU at a
    fixed rate, its counter advanced at each scrape by the time since the last one."""

    def __init__(self, cpu_rate: float, request: str) -> None:
        self.cpu_rate = cpu_rate
        self.cpu_seconds = 1000.0  # far from 0, so rate() never extrapolates to a counter start
        self.last = time.monotonic()
        self.scrapes = 0
        self.pod = {
            "metadata": {"name": "jupyter-alice", "namespace": "default", "uid": "u-1"},
            "spec": {
                "nodeName": "node-a",
                "containers": [{"name": "notebook", "resources": {"requests": {"cpu": request}}}],
            },
            "status": {"phase": "Running"},
        }

    def page(self) -> str:
        now = time.monotonic()
        self.cpu_seconds += self.cpu_rate * (now - self.last)
        self.last = now
        self.scrapes += 1
        usage = metrics.ContainerUsage(
            "default", "jupyter-alice", "notebook", "node-a", self.cpu_seconds, 5e7
        )
        return metrics.render(
            [*metrics.cadvisor_families([usage]), *metrics.kube_state_pod_families([self.pod])]
        )


class PageHandler(RequestHandler):
    def initialize(self, node: FakeNode) -> None:
        self.node = node

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.node.page())


@pytest.fixture
async def fake_node() -> AsyncIterator[tuple[FakeNode, str]]:
    node = FakeNode(cpu_rate=0.25, request="500m")
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([(r"/metrics", PageHandler, {"node": node})]))
    server.add_sockets(sockets)
    yield node, f"127.0.0.1:{sockets[0].getsockname()[1]}"
    server.stop()


async def query(url: str, promql: str) -> list[dict[str, Any]]:
    resp = await AsyncHTTPClient().fetch(
        HTTPRequest(f"{url}/api/v1/query", method="POST", body=f"query={_quote(promql)}")
    )
    body = json.loads(resp.body)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


@pytest.mark.slow
async def test_prometheus_scrapes_and_answers_promql(
    tmp_path: Path, group: ProcessGroup, fake_node: tuple[FakeNode, str]
) -> None:
    node, target = fake_node
    prom = await services.start_prometheus(
        tmp_path / "prometheus",
        targets=[],
        scrape_interval="500ms",
        binary=binary("prometheus"),
        group=group,
    )
    assert prom.url is not None and prom.url.startswith("http://127.0.0.1:")
    assert prom.pid is not None and list(group) == [prom]
    assert (tmp_path / "prometheus" / "data").is_dir()

    # Targets are added through a configuration reload, as the cluster does when nodes join.
    await prom.set_targets([{"job": "node", "targets": [target]}])
    assert target in prom.config_path.read_text()

    # A configuration Prometheus refuses leaves the previous one in place.
    good = prom.config_path.read_text()
    with pytest.raises(ServiceError, match="scrape timeout greater than scrape interval"):
        await prom.set_targets(
            [{"job": "node", "targets": [target], "scrape_interval": "1s", "scrape_timeout": "5s"}]
        )
    assert prom.config_path.read_text() == good

    # rate() over a window the series does not yet fill extrapolates only half an interval
    # back, so wait until its history (>= 9 samples 500ms apart) is longer than the window (3s).
    async def scraped_enough() -> bool:
        result = await query(
            prom.url,
            'count_over_time(container_cpu_usage_seconds_total{pod="jupyter-alice"}[5s])',
        )
        return bool(result) and float(result[0]["value"][1]) >= 9

    await wait_for(scraped_enough, "Prometheus did not scrape the fake node", 30, **BRISK)
    assert node.scrapes >= 9

    ratio_query = (
        'sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{container!=""}[3s]))'
        ' / sum by (namespace, pod) (kube_pod_container_resource_requests{resource="cpu", unit="core"})'
    )
    # prometheus-api-client, as the suspend service uses it (it is synchronous).
    client = PrometheusConnect(url=prom.url, disable_ssl=True)
    assert await asyncio.to_thread(client.check_prometheus_connection)
    result = await asyncio.to_thread(client.custom_query, ratio_query)
    assert len(result) == 1
    assert result[0]["metric"] == {"namespace": "default", "pod": "jupyter-alice"}
    # 0.25 cores used of 0.5 requested.
    assert float(result[0]["value"][1]) == pytest.approx(0.5, rel=0.05)

    targets = (
        await asyncio.to_thread(client.get_targets) if hasattr(client, "get_targets") else None
    )
    if targets is None:
        resp = await AsyncHTTPClient().fetch(f"{prom.url}/api/v1/targets")
        targets = json.loads(resp.body)["data"]
    [active] = targets["activeTargets"]
    assert active["health"] == "up" and active["labels"]["job"] == "node"

    pid = prom.pid
    assert await prom.stop() == 0  # Prometheus shuts down cleanly on SIGTERM
    assert not alive(pid) and group_members(pid) == []
    assert len(group) == 0


# --- the registry -----------------------------------------------------------------------------


@pytest.mark.slow
async def test_registry_serves_the_v2_api(tmp_path: Path, group: ProcessGroup) -> None:
    reg = await services.start_registry(
        tmp_path / "registry", binary=binary("docker-registry"), group=group
    )
    assert reg.host.startswith("127.0.0.1:") and reg.url == f"http://{reg.host}"
    http = AsyncHTTPClient()

    resp = await http.fetch(f"{reg.url}/v2/")
    assert resp.code == 200
    assert resp.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    resp = await http.fetch(f"{reg.url}/v2/_catalog")
    assert json.loads(resp.body) == {"repositories": []}

    # A monolithic blob upload lands in our storage directory, and deletes are enabled.
    blob = b"checkpoint layer"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    resp = await http.fetch(f"{reg.url}/v2/test/blobs/uploads/", method="POST", body=b"")
    assert resp.code == 202
    location = resp.headers["Location"]
    location = location if location.startswith("http") else reg.url + location
    sep = "&" if "?" in location else "?"
    resp = await http.fetch(
        f"{location}{sep}digest={digest}",
        method="PUT",
        body=blob,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert resp.code == 201
    stored = reg.storage_dir / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
    assert stored.read_bytes() == blob
    resp = await http.fetch(f"{reg.url}/v2/test/blobs/{digest}", method="DELETE")
    assert resp.code == 202

    pid = reg.pid
    assert pid is not None
    await reg.stop()
    assert not alive(pid) and group_members(pid) == []
    assert len(group) == 0
