"""The node agent: the checkpoint sequence with fakes, its HTTP API and client with fakes, and
end to end on the local cluster (real kubelet, containerd and CRIU, skopeo and registry)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlencode

import pytest
from conftest import AGENT_TOKEN, require_command
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from jhub_suspend import images
from jhub_suspend.agent import AgentClient, AgentError
from jhub_suspend.agent import checkpointer as checkpointer_module
from jhub_suspend.agent.app import (
    AgentConfigError,
    ApiError,
    NodeAgent,
    check_ref,
    parse_checkpoint_request,
)
from jhub_suspend.agent.checkpointer import (
    Checkpointer,
    ImageBuildFailed,
    KubeletFailed,
    NotFound,
    RegistryUnavailable,
    UnsafeArchivePath,
    VerificationFailed,
    inside,
    sweep_orphans,
    verification_problems,
)
from jhub_suspend.agent.criuconfig import (
    criu_config_options,
    criu_config_problem,
    node_setting_hint,
)
from jhub_suspend.agent.kubelet import KubeletClient, KubeletError
from jhub_suspend.agent.protocol import CheckpointRequest
from jhub_suspend.localcluster.services import free_port
from jhub_suspend.testing.waiting import wait_for, wait_gone, wait_running

CKPT = "io.kubernetes.cri-o.annotations.checkpoint.name"
CRIU_NAME = "org.criu.checkpoint.container.name"
REPO = "registry.example.org/jhub-suspend"
DIGEST = "sha256:" + "ab" * 32
TOKEN = "agent-api-token-for-tests"


# ---- fakes -----------------------------------------------------------------------------------


class FakeKubelet:
    """Writes an archive into ``directory`` as the kubelet does, or fails as told."""

    def __init__(self, directory: str, calls: list[str], error: KubeletError | None = None):
        self.directory = directory
        self.calls = calls
        self.error = error
        self.errors_first: list[KubeletError] = []  # raised once each, before anything else
        self.path: str | None = None
        self.gate: asyncio.Event | None = None

    async def checkpoint(self, namespace: str, pod: str, container: str, timeout: float) -> str:
        self.calls.append("checkpoint")
        if self.gate is not None:
            await self.gate.wait()
        if self.errors_first:
            raise self.errors_first.pop(0)
        if self.error:
            raise self.error
        path = self.path or os.path.join(self.directory, f"checkpoint-{pod}_{namespace}-x.tar")
        with open(path, "wb") as f:
            f.write(b"criu images" * 100)
        return path


class FakeImages:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.push_error: Exception | None = None
        self.inspect_error: Exception | None = None
        self.facts: dict[str, Any] | None = None
        self.pushed: dict[str, Any] = {}
        self.deleted: list[str] = []

    async def build_and_push(self, archive: str, ref: str, annotations: Mapping[str, str]) -> str:
        self.calls.append("push")
        assert os.path.isfile(archive), "the archive must still exist while it is pushed"
        if self.push_error:
            raise self.push_error
        self.pushed = {"ref": ref, "annotations": dict(annotations), "archive": archive}
        return DIGEST

    async def inspect(self, ref: str) -> dict[str, Any]:
        self.calls.append("verify")
        if self.inspect_error:
            raise self.inspect_error
        if self.facts is not None:
            return self.facts
        return {"digest": DIGEST, "annotations": self.pushed["annotations"], "size": 4242}

    async def delete(self, ref: str) -> None:
        self.deleted.append(ref)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        self.t += 1.5
        return self.t


@pytest.fixture
def ckpt_dir(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    return str(d)


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def fakes(ckpt_dir, calls):
    kubelet, store = FakeKubelet(ckpt_dir, calls), FakeImages(calls)
    return kubelet, store, Checkpointer(kubelet, store, ckpt_dir, node_name="n1", clock=Clock())


def request(**over: Any) -> CheckpointRequest:
    args: dict[str, Any] = {
        "namespace": "default",
        "pod": "jupyter-alice",
        "container": "notebook",
        "image": f"{REPO}/alice:s1",
        "annotations": {"jhub-suspend.jupyter.org/user": "alice"},
    }
    args.update(over)
    return CheckpointRequest(**args)


# ---- the sequence, with fakes ----------------------------------------------------------------


async def test_checkpoint_pushes_verifies_then_deletes_the_archive(fakes, ckpt_dir, calls):
    _, store, checkpointer = fakes
    result = await checkpointer.checkpoint(request())
    assert calls == ["checkpoint", "push", "verify"]
    pushed = store.pushed["annotations"]
    assert pushed["jhub-suspend.jupyter.org/user"] == "alice"
    # Every runtime's name for the container: containerd's (checkpointctl's) and CRI-O's.
    assert pushed[CRIU_NAME] == pushed[CKPT] == "notebook"
    assert pushed["org.criu.checkpoint.pod.name"] == "jupyter-alice"
    assert pushed["org.criu.checkpoint.pod.namespace"] == "default"
    assert result.image == f"{REPO}/alice@{DIGEST}"
    assert (result.digest, result.size, result.archive_bytes) == (DIGEST, 4242, 1100)
    assert result.timings == {"checkpoint": 1.5, "push": 1.5, "verify": 1.5, "total": 9.0}
    assert os.listdir(ckpt_dir) == []


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (images.ImagePushFailed("pushing x failed: connection refused"), RegistryUnavailable),
        (images.ImageError("building checkpoint image x failed: disk full"), ImageBuildFailed),
    ],
)
async def test_a_failed_push_still_deletes_the_archive(fakes, ckpt_dir, calls, error, expected):
    _, store, checkpointer = fakes
    store.push_error = error
    with pytest.raises(expected) as err:
        await checkpointer.checkpoint(request())
    assert str(error) in err.value.message
    assert calls == ["checkpoint", "push"]
    assert os.listdir(ckpt_dir) == []


@pytest.mark.parametrize(
    ("facts", "problem"),
    [
        ({"digest": "sha256:" + "cd" * 32, "annotations": {CKPT: "notebook"}, "size": 9}, "digest"),
        ({"digest": DIGEST, "annotations": {}, "size": 9}, CKPT),
        ({"digest": DIGEST, "annotations": {CKPT: "notebook"}, "size": 0}, "size 0"),
    ],
)
async def test_a_pushed_image_that_does_not_verify_is_an_error(fakes, ckpt_dir, facts, problem):
    _, store, checkpointer = fakes
    store.facts = facts
    with pytest.raises(VerificationFailed) as err:
        await checkpointer.checkpoint(request(annotations={}))
    assert problem in err.value.message
    assert err.value.status == 500
    assert os.listdir(ckpt_dir) == []


async def test_verification_errors_from_the_registry(fakes, ckpt_dir):
    _, store, checkpointer = fakes
    store.inspect_error = images.ImageNotFound("inspecting x: image not found")
    with pytest.raises(VerificationFailed):
        await checkpointer.checkpoint(request())
    store.inspect_error = images.ImageError("inspecting x failed: connection refused")
    with pytest.raises(RegistryUnavailable):
        await checkpointer.checkpoint(request())
    assert os.listdir(ckpt_dir) == []


@pytest.mark.parametrize(
    ("status", "expected", "words"),
    [
        (404, NotFound, "answered 404: CRIU says no"),
        (500, KubeletFailed, "CRIU says no"),
        (403, KubeletFailed, "nodes/checkpoint"),
        (0, KubeletFailed, "CRIU says no"),
    ],
)
async def test_kubelet_errors(fakes, calls, status, expected, words):
    kubelet, _, checkpointer = fakes
    kubelet.error = KubeletError(status, "CRIU says no")
    with pytest.raises(expected) as err:
        await checkpointer.checkpoint(request())
    assert words in err.value.message
    assert "jupyter-alice" in err.value.message or status == 403
    assert calls == ["checkpoint"]


async def test_a_container_the_runtime_could_not_freeze_is_tried_once_more(
    fakes, calls, monkeypatch
):
    """Found by the load benchmark: runc's "unable to freeze" on a busy node (nothing dumped,
    the container runs on). One more try; a second failure is reported."""
    monkeypatch.setattr(checkpointer_module, "FREEZE_RETRY_DELAY", 0)
    kubelet, _, checkpointer = fakes
    frozen = KubeletError(500, "OCI runtime pause failed: unable to freeze")
    kubelet.errors_first = [frozen]
    result = await checkpointer.checkpoint(request())
    assert result.digest and calls[:3] == ["checkpoint", "checkpoint", "push"]

    calls.clear()
    kubelet.errors_first = [frozen, frozen]
    with pytest.raises(KubeletFailed) as err:
        await checkpointer.checkpoint(request())
    assert "unable to freeze" in err.value.message and calls == ["checkpoint", "checkpoint"]

    calls.clear()
    kubelet.errors_first = [KubeletError(500, "CRIU says no")]  # other failures: no retry
    with pytest.raises(KubeletFailed):
        await checkpointer.checkpoint(request())
    assert calls == ["checkpoint"]


async def test_an_archive_outside_the_checkpoint_dir_is_never_touched(fakes, tmp_path, calls):
    kubelet, _, checkpointer = fakes
    outside = tmp_path / "secret.tar"
    kubelet.path = str(outside)
    with pytest.raises(UnsafeArchivePath):
        await checkpointer.checkpoint(request())
    assert outside.exists() and calls == ["checkpoint"]

    # a symlink inside the directory that points out of it is outside too
    target = tmp_path / "target"
    target.write_text("keep me")
    link = os.path.join(checkpointer.checkpoint_dir, "checkpoint-link.tar")
    os.symlink(target, link)
    assert inside(link, checkpointer.checkpoint_dir) is None
    assert inside(checkpointer.checkpoint_dir, checkpointer.checkpoint_dir) is None
    assert inside("relative.tar", checkpointer.checkpoint_dir) is None
    assert (
        inside(os.path.join(checkpointer.checkpoint_dir, "../x.tar"), checkpointer.checkpoint_dir)
        is None
    )
    assert target.read_text() == "keep me"


async def test_a_cancelled_checkpoint_deletes_its_archive(fakes, ckpt_dir, calls):
    _, store, checkpointer = fakes
    started = asyncio.Event()

    async def slow_push(archive: str, ref: str, annotations: Mapping[str, str]) -> str:
        started.set()
        await asyncio.Event().wait()
        return DIGEST

    store.build_and_push = slow_push  # type: ignore[method-assign]
    task = asyncio.create_task(checkpointer.checkpoint(request()))
    await asyncio.wait_for(started.wait(), 5)
    assert len(os.listdir(ckpt_dir)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert os.listdir(ckpt_dir) == []


def test_sweep_deletes_only_old_unused_archives(tmp_path):
    d = tmp_path
    for name in ("checkpoint-old.tar", "checkpoint-busy.tar", "checkpoint-new.tar", "other.tar"):
        (d / name).write_text("x")
        os.utime(d / name, (1000, 1000))
    os.utime(d / "checkpoint-new.tar", (5000, 5000))
    removed = sweep_orphans(str(d), 600, in_use=[str(d / "checkpoint-busy.tar")], now=5100)
    assert removed == [str(d / "checkpoint-old.tar")]
    assert sorted(os.listdir(d)) == ["checkpoint-busy.tar", "checkpoint-new.tar", "other.tar"]
    assert sweep_orphans(str(d / "missing"), 1) == []


def test_sweep_deletes_image_layouts_an_agent_left_mid_push(tmp_path):
    """A layout holds the archive as a hard link: the notebook's memory stays on the node
    until the layout goes too."""
    for name in ("checkpoint-left-T12:00Z.tar", "checkpoint-busy.tar"):
        archive = tmp_path / name
        archive.write_text("x")
        images.write_layout(str(archive), {})
        archive.unlink()  # the agent deleted the archive, then was killed
        os.utime(images.layout_path(str(archive)), (1000, 1000))
    busy = [str(tmp_path / "checkpoint-busy.tar")]
    removed = sweep_orphans(str(tmp_path), 600, in_use=busy, now=5100)
    assert removed == [str(tmp_path / "checkpoint-left-T12_00Z.tar.oci")]
    assert os.listdir(tmp_path) == ["checkpoint-busy.tar.oci"]


def test_criu_configuration_options_and_problems():
    text = "# node settings\n--tcp-close   # restores on a new address\n\nlog-file /x.log\n"
    assert criu_config_options(text) == ["tcp-close", "log-file"]
    runc, crun = "/etc/criu/runc.conf", "/etc/criu/crun.conf"
    assert criu_config_problem({runc: ["tcp-close"]}) == ""
    # crun falls back to runc.conf: the option in either file is enough
    assert criu_config_problem({crun: ["log-file"], runc: ["tcp-close"]}) == ""
    missing = criu_config_problem({runc: ["tcp-established"]})
    assert missing.startswith(f"no tcp-close in {runc}") and "docs/deploy.md" in missing
    unreadable = criu_config_problem({runc: None, crun: None})
    assert "cannot read the node's CRIU configuration" in unreadable and "/etc/criu" in unreadable


def test_a_checkpoint_without_a_tcp_option_names_the_node_setting():
    criu = "Error (criu/sk-inet.c:196): inet: Connected TCP socket, consider using --tcp-established option."
    hint = node_setting_hint(f"checkpointing container failed: criu failed: {criu}")
    assert "tcp-close" in hint and "/etc/criu/runc.conf" in hint and "/etc/criu/crun.conf" in hint
    assert node_setting_hint("criu failed: Can't dump ghost file") == ""


async def test_the_health_check_reports_the_nodes_criu_configuration(tmp_path):
    conf = tmp_path / "runc.conf"
    conf.write_text("tcp-established\n")
    agent = NodeAgent(criu_config_files=[str(conf), str(tmp_path / "crun.conf")])
    assert agent.criu_config_health().startswith(f"no tcp-close in {conf}")
    conf.write_text("tcp-close\n")
    assert agent.criu_config_health() == "ok"
    conf.unlink()
    assert "cannot read the node's CRIU configuration" in agent.criu_config_health()


def test_verification_problems_is_pure():
    ok = {"digest": DIGEST, "annotations": {CKPT: "c"}, "size": 1}
    assert verification_problems(ok, DIGEST, {CKPT: "c"}) == []
    assert verification_problems(ok, "", {CKPT: "c"}) == ["the push returned no sha256 digest ('')"]


# ---- input validation ------------------------------------------------------------------------


def body(**over: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "namespace": "default",
        "pod": "jupyter-alice",
        "container": "notebook",
        "image": f"{REPO}/alice:s1",
        "annotations": {"jhub-suspend.jupyter.org/user": "alice"},
    }
    b.update(over)
    return b


@pytest.mark.parametrize(
    "bad",
    [
        {"namespace": None},
        {"namespace": 3},
        {"pod": "../../etc"},
        {"pod": "Jupyter-Alice"},
        {"container": "a/b"},
        {"container": ""},
        {"image": ["x"]},
        {"image": f"{REPO}/alice:s1@{DIGEST}"},
        {"image": f"{REPO}/Alice:s1"},
        {"image": f"{REPO}/alice:s1 --rm"},
        {"annotations": ["a"]},
        {"annotations": {"k": 1}},
        {"annotations": {"": "v"}},
        {"annotations": {CKPT: "other-container"}},
    ],
)
def test_bad_requests_are_400(bad):
    with pytest.raises(ApiError) as err:
        parse_checkpoint_request(body(**bad), REPO)
    assert err.value.status_code == 400


@pytest.mark.parametrize(
    "image",
    ["registry.example.org/other/alice:s1", f"{REPO}-evil/alice:s1", "docker.io/library/alice:s1"],
)
def test_images_outside_the_repository_are_403(image):
    with pytest.raises(ApiError) as err:
        parse_checkpoint_request(body(image=image), REPO)
    assert err.value.status_code == 403


def test_good_requests_parse():
    req = parse_checkpoint_request(body(annotations=None), REPO)
    assert (req.namespace, req.pod, req.container, req.annotations) == (
        "default",
        "jupyter-alice",
        "notebook",
        {},
    )
    assert check_ref(f"{REPO}/a@{DIGEST}", REPO, allow_digest=True)
    assert check_ref("127.0.0.1:5000/jhs/a:b", "127.0.0.1:5000/jhs", allow_digest=False)


# ---- configuration ---------------------------------------------------------------------------


def test_configuration_defaults_come_from_the_downward_api(monkeypatch):
    monkeypatch.setenv("NODE_NAME", " node-7 ")
    monkeypatch.setenv("NODE_IP", "10.0.0.7")
    monkeypatch.setenv("JHUB_SUSPEND_AGENT_TOKEN", "from-env")
    agent = NodeAgent()
    agent.initialize([f"--repository={REPO}/", "--checkpoint-dir=/var/lib/kubelet/checkpoints/"])
    assert agent.node_name == "node-7"
    assert agent.kubelet_url == "https://10.0.0.7:10250"
    assert agent.api_token == "from-env"
    assert agent.repository == REPO
    assert agent.checkpoint_dir == "/var/lib/kubelet/checkpoints"
    assert agent.port == 9770 and agent.checkpoint_timeout == 300
    assert agent.max_concurrent_checkpoints == 1
    assert agent.orphan_archive_age == 600
    agent.check_config()
    agent.registry_auth_file = "/secrets/config.json"
    assert agent.image_config().auth_args() == ["--authfile", "/secrets/config.json"]


def test_the_agent_refuses_to_start_without_a_token(monkeypatch):
    monkeypatch.delenv("JHUB_SUSPEND_AGENT_TOKEN", raising=False)
    agent = NodeAgent(repository=REPO)
    agent.initialize([])
    with pytest.raises(AgentConfigError, match="JHUB_SUSPEND_AGENT_TOKEN"):
        agent.check_config()
    agent.allow_unauthenticated = True
    agent.check_config()
    bad = NodeAgent(api_token="t")
    with pytest.raises(AgentConfigError, match="repository"):
        bad.check_config()
    with pytest.raises(Exception, match="http"):
        NodeAgent(kubelet_url="ftp://x")


def test_mtls_requires_client_certificates(tmp_path):
    require_command("openssl", "apt-get install openssl")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    os.system(
        f"openssl req -x509 -newkey rsa:2048 -nodes -keyout {key} -out {cert} "
        "-subj /CN=agent -days 1 2>/dev/null"
    )
    agent = NodeAgent(
        repository=REPO, ssl_certfile=str(cert), ssl_keyfile=str(key), ssl_client_ca=str(cert)
    )
    agent.check_config()  # mTLS alone authenticates
    ctx = agent.ssl_context()
    assert ctx is not None and ctx.verify_mode.name == "CERT_REQUIRED"
    with pytest.raises(AgentConfigError):
        NodeAgent(repository=REPO, api_token="t", ssl_certfile=str(cert)).check_config()


# ---- the HTTP API and the client, with a fake kubelet and registry ----------------------------


@contextlib.asynccontextmanager
async def running_agent(**traits: Any) -> AsyncIterator[NodeAgent]:
    settings = {"ip": "127.0.0.1", "port": 0, "api_token": TOKEN, "orphan_archive_age": 0}
    settings.update(traits)
    agent = NodeAgent(**settings)
    agent.initialize([])
    await agent.start_server()
    try:
        yield agent
    finally:
        await agent.stop_server()


def url(agent: NodeAgent) -> str:
    return f"http://127.0.0.1:{agent.bound_port}"


async def fetch(agent: NodeAgent, path: str, method: str = "GET", token: str | None = TOKEN, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await AsyncHTTPClient().fetch(
        url(agent) + path, method=method, headers=headers, raise_error=False, **kw
    )


@pytest.fixture
async def fake_agent(ckpt_dir, calls):
    async with running_agent(
        repository=REPO, checkpoint_dir=ckpt_dir, kubelet_url="http://127.0.0.1:1"
    ) as agent:
        agent.checkpointer.kubelet = FakeKubelet(ckpt_dir, calls)
        agent.checkpointer.images = agent.image_store = FakeImages(calls)  # type: ignore[assignment]
        yield agent


async def test_an_agent_sweeps_what_a_killed_agent_left_when_it_starts(tmp_path):
    """An agent killed mid-suspension leaves the notebook's memory on the node: the archive,
    and the layout it was pushing from. No operation owns them once an agent starts."""
    left = tmp_path / "checkpoint-jupyter-alice_default-notebook-2026-11-30T12:00:00Z.tar"
    left.write_bytes(b"a notebook's memory")
    layout, _ = images.write_layout(str(left), {})
    (tmp_path / "unrelated.txt").write_text("not ours")
    for path in (left, layout):
        os.utime(path, (time.time() - 5, time.time() - 5))  # from before this agent started
    async with running_agent(
        repository=REPO,
        checkpoint_dir=str(tmp_path),
        kubelet_url="http://127.0.0.1:1",
        orphan_archive_age=3600,  # the periodic sweep's age; the start sweeps all
    ):
        assert sorted(os.listdir(tmp_path)) == ["unrelated.txt"]


async def test_http_api_with_fakes(fake_agent, ckpt_dir):
    client = AgentClient(url(fake_agent), TOKEN, timeout=10)
    result = await client.checkpoint("default", "p1", "notebook", f"{REPO}/u:t", {"a/b": "c"})
    assert result.image == f"{REPO}/u@{DIGEST}" and result.timings["total"] >= 0
    assert os.listdir(ckpt_dir) == []

    r = await fetch(fake_agent, "/api/checkpoints", "POST", body="{nope")
    assert r.code == 400 and "JSON" in json.loads(r.body)["message"]
    assert r.headers["X-JHub-Suspend-Agent"] == "1"
    r = await fetch(fake_agent, "/api/checkpoints", "POST", token=None, body="{}")
    assert r.code == 401 and "token" in json.loads(r.body)["message"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await fetch(fake_agent, "/api/checkpoints", "POST", token="wrong" + TOKEN, body="{}")
    assert r.code == 401
    r = await fetch(fake_agent, "/api/nothing")
    assert r.code == 404 and "no such endpoint" in json.loads(r.body)["message"]
    r = await fetch(fake_agent, "/api/checkpoints")
    assert r.code == 405 and "message" in json.loads(r.body)

    fake_agent.image_store.inspect_error = images.ImageError("connection refused")
    with pytest.raises(AgentError) as err:
        await client.checkpoint("default", "p1", "notebook", f"{REPO}/u:t")
    assert err.value.status == 503 and "connection refused" in err.value.message

    await client.delete_image(f"{REPO}/u@{DIGEST}")
    assert fake_agent.image_store.deleted == [f"{REPO}/u@{DIGEST}"]
    with pytest.raises(AgentError) as err:
        await client.delete_image("elsewhere.org/u:t")
    assert err.value.status == 403


async def test_a_second_checkpoint_of_the_same_pod_is_409(fake_agent, ckpt_dir):
    kubelet = fake_agent.checkpointer.kubelet
    kubelet.gate = asyncio.Event()
    client = AgentClient(url(fake_agent), TOKEN, timeout=10)
    first = asyncio.create_task(client.checkpoint("default", "p1", "notebook", f"{REPO}/u:1"))
    await wait_for(lambda: fake_agent.in_flight, "the first checkpoint never started", 5)
    with pytest.raises(AgentError) as err:
        await client.checkpoint("default", "p1", "notebook", f"{REPO}/u:2")
    assert err.value.status == 409 and "already running" in err.value.message
    kubelet.gate.set()
    assert (await first).digest == DIGEST
    assert fake_agent.in_flight == set()
    assert (await client.health())["kubelet"].startswith("error")


async def test_the_client_retries_only_what_never_reached_the_agent():
    hits: list[int] = []

    class Answer(web.RequestHandler):
        def post(self) -> None:
            hits.append(1)
            if len(hits) == 1:  # a proxy with no agent behind it
                self.set_status(503)
                self.finish("no endpoints")
                return
            self.set_status(503)  # the agent's own 503: the registry is down
            self.set_header("X-JHub-Suspend-Agent", "1")
            self.finish({"message": "registry: connection refused"})

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(web.Application([(r"/api/checkpoints", Answer)]))
    server.add_sockets(sockets)
    try:
        client = AgentClient(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", "t", timeout=5)
        with pytest.raises(AgentError) as err:
            await client.checkpoint("default", "p", "c", f"{REPO}/u:t")
        assert err.value.status == 503 and err.value.message == "registry: connection refused"
        assert len(hits) == 2
    finally:
        server.stop()

    closed = AgentClient(f"http://127.0.0.1:{free_port()}", "sekrit", timeout=5, total_timeout=1)
    with pytest.raises(AgentError) as err:
        await closed.health()
    assert err.value.status == 0 and "could not reach the node agent" in err.value.message
    assert "sekrit" not in repr(closed)


async def test_an_agent_that_is_down_fails_a_checkpoint_fast():
    """A refused connection means nothing started: the caller hears within the reconnect
    window, not after the checkpoint's timeout (which would keep the user locked out)."""
    down = AgentClient(f"http://127.0.0.1:{free_port()}", "t", timeout=900, reconnect_timeout=1)
    assert down.total_timeout == 960  # what it waited before
    with pytest.raises(AgentError) as err:
        await asyncio.wait_for(down.checkpoint("default", "p", "c", f"{REPO}/u:t"), 60)
    assert err.value.status == 0
    assert "within 1 s (is it running?)" in err.value.message
    assert "cannot connect" in err.value.message


async def test_many_checkpoints_at_once_wait_for_the_agent_not_in_the_clients_queue():
    """Found by the load benchmark: with tornado's shared client (10 connections), the 11th
    concurrent suspension in a hub failed after the connect timeout, "Timeout in request
    queue", while the agent was merely busy with the others."""
    answered = asyncio.Event()
    open_requests: list[int] = []

    class Slow(web.RequestHandler):
        async def post(self) -> None:
            open_requests.append(1)
            if len(open_requests) == 15:
                answered.set()
            await answered.wait()  # the agent answers once all 15 are open at once
            self.set_status(201)
            self.set_header("X-JHub-Suspend-Agent", "1")
            self.finish(
                {"image": f"{REPO}/u@sha256:" + "a" * 64, "digest": "sha256:" + "a" * 64,
                 "size": 1, "archive_bytes": 1, "timings": {}}
            )  # fmt: skip

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(web.Application([(r"/api/checkpoints", Slow)]))
    server.add_sockets(sockets)
    try:
        client = AgentClient(
            f"http://127.0.0.1:{sockets[0].getsockname()[1]}", "t", timeout=60, connect_timeout=1
        )
        results = await asyncio.wait_for(
            asyncio.gather(
                *(client.checkpoint("default", f"p{i}", "c", f"{REPO}/u:t") for i in range(15))
            ),
            60,
        )
        assert len(results) == 15 and len(open_requests) == 15
    finally:
        server.stop()


async def test_a_request_the_agent_may_still_be_working_on_is_not_retried():
    hits: list[int] = []
    never = asyncio.Event()

    class Slow(web.RequestHandler):
        async def post(self) -> None:
            hits.append(1)
            await never.wait()

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(web.Application([(r"/api/checkpoints", Slow)]))
    server.add_sockets(sockets)
    try:
        client = AgentClient(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", "t", timeout=0.5)
        with pytest.raises(AgentError) as err:
            await client.checkpoint("default", "p", "c", f"{REPO}/u:t")
        assert err.value.status == 0 and "outcome is unknown" in err.value.message
        assert len(hits) == 1
    finally:
        never.set()
        server.stop()
        await server.close_all_connections()


async def test_the_kubelet_client_retries_connections_but_never_answers():
    hits: list[int] = []

    class Fails(web.RequestHandler):
        def post(self, *args: str) -> None:
            hits.append(1)
            assert self.request.headers["Authorization"] == "Bearer kt"
            self.set_status(500)
            self.finish("checkpointing the container failed: CRIU dump failed: bad things")

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(web.Application([(r"/checkpoint/(.*)", Fails)]))
    server.add_sockets(sockets)
    try:
        kubelet = KubeletClient(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", token="kt")
        with pytest.raises(KubeletError) as err:
            await kubelet.checkpoint("default", "p", "c", 10)
        assert err.value.status == 500 and "CRIU dump failed: bad things" in err.value.message
        assert len(hits) == 1
    finally:
        server.stop()

    closed = KubeletClient(f"http://127.0.0.1:{free_port()}", token="kt", retry_delay=0.01)
    with pytest.raises(KubeletError) as err:
        await closed.checkpoint("default", "p", "c", 10)
    assert err.value.status == 0 and "cannot reach the kubelet" in err.value.message


# ---- end to end on the local cluster ---------------------------------------------------------


def holder_pod(name: str, image: str) -> dict:
    """A pod whose process holds some memory, so the checkpoint has something in it."""
    # Non-zero bytes: pages of zeros are never touched, so they would not be in the dump.
    script = "import time\ndata = b'x' * (16 << 20)\nwhile True:\n    time.sleep(1)\n"
    return {
        "metadata": {"name": name, "labels": {"app": "agent-test"}},
        "spec": {
            "containers": [
                {
                    "name": "notebook",
                    "image": image,
                    "command": ["python3", "-c", script],
                    # as root, as the demo's notebooks: see docs/localcluster.md
                    "securityContext": {"runAsUser": 0},
                    "resources": {"requests": {"cpu": "100m"}},
                }
            ],
            "terminationGracePeriodSeconds": 0,
        },
    }


@pytest.fixture
async def pod(cluster) -> AsyncIterator[dict]:
    name = f"agent-{secrets.token_hex(3)}"
    cluster.store.create("pods", "default", holder_pod(name, cluster.images["notebook"]))
    try:
        running = await wait_running(cluster.store, name)
        kubelet = cluster.kubelet(running["spec"]["nodeName"])

        async def holding_memory():
            # Running means started; the checkpoint needs the program to have its memory.
            used = [u.working_set_bytes for u in await kubelet.usage() if u.pod == name]
            return bool(used) and used[0] > 16 << 20

        await wait_for(holding_memory, f"pod {name} never held its memory", 30, max_wait=0.5)
        yield running
    finally:
        cluster.store.delete("pods", "default", name, grace_period_seconds=0)
        await wait_gone(cluster.store, name)


@pytest.fixture
def skopeo() -> str:
    return require_command("skopeo", "apt-get install skopeo")


def e2e_traits(cluster, node: str, **over: Any) -> dict[str, Any]:
    kubelet = cluster.kubelet(node)
    traits = {
        "node_name": node,
        "kubelet_url": f"http://{kubelet.address}:{kubelet.port}",
        "kubelet_token": AGENT_TOKEN,
        "checkpoint_dir": kubelet.checkpoint_dir,
        "repository": f"{cluster.registry_host}/jhub-suspend",
        "registry_tls_verify": False,
    }
    traits.update(over)
    return traits


def archives_of(cluster, node: str, pod: str) -> list[str]:
    d = cluster.kubelet(node).checkpoint_dir
    return [f for f in os.listdir(d) if f.startswith(f"checkpoint-{pod}_")]


def assert_still_running(cluster, name: str) -> None:
    """The checkpointed pod keeps running; if not, say why (its status and its log)."""
    pod = cluster.store.get("pods", "default", name)
    if pod["status"].get("phase") == "Running":
        return
    logs = os.path.join(cluster.state_dir, "pods", "default", name, "logs")
    tail = ""
    with contextlib.suppress(OSError):
        for f in sorted(os.listdir(logs)):
            with open(os.path.join(logs, f), errors="replace") as fh:
                tail += f"--- {f}\n" + fh.read()[-2000:]
    raise AssertionError(f"pod {name} is not running: {json.dumps(pod['status'])}\n{tail}")


def sample(page: str, prefix: str) -> float:
    """The value of the first exposition line starting with ``prefix``."""
    for line in page.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {prefix} in metrics:\n{page}")


@pytest.mark.slow
async def test_checkpoint_push_verify_and_delete_end_to_end(cluster, pod, skopeo):
    name, node = pod["metadata"]["name"], pod["spec"]["nodeName"]
    repo = f"{cluster.registry_host}/jhub-suspend"
    annotations = {
        "jhub-suspend.jupyter.org/user": "alice",
        "jhub-suspend.jupyter.org/server-name": "",
        "jhub-suspend.jupyter.org/pod": name,
        "jhub-suspend.jupyter.org/original-image": "python:3",
    }
    async with running_agent(**e2e_traits(cluster, node)) as agent:
        client = AgentClient(url(agent), TOKEN, timeout=300)
        health = await client.health()
        assert health == {"node": node, "kubelet": "ok", "criu": "ok", "checkpoints": 0}

        result = await client.checkpoint(
            "default", name, "notebook", f"{repo}/alice:e2e", annotations
        )
        print(f"\nagent checkpoint of {name}: {result}")
        assert result.image == f"{repo}/alice@{result.digest}"
        assert result.archive_bytes > 1 << 20 and result.size > 0
        assert set(result.timings) == {"checkpoint", "push", "verify", "total"}

        facts = await images.inspect(result.image, tls_verify=False)
        assert facts["digest"] == result.digest and facts["size"] == result.size
        assert facts["annotations"].items() >= {**annotations, CKPT: "notebook"}.items()
        assert archives_of(cluster, node, name) == []
        assert_still_running(cluster, name)
        assert cluster.kubelet(node).find("default", name) is not None

        page = (await fetch(agent, "/metrics", token=None)).body.decode()
        assert sample(page, 'jhub_suspend_agent_checkpoints_total{outcome="success"}') == 1
        assert (
            sample(page, 'jhub_suspend_agent_checkpoint_duration_seconds_count{phase="push"}') == 1
        )
        assert (
            sample(page, 'jhub_suspend_agent_checkpoint_bytes_sum{kind="archive"}')
            == result.archive_bytes
        )

        # unknown pod and container: 404 with the kubelet's words, counted as a failure
        with pytest.raises(AgentError) as err:
            await client.checkpoint("default", "no-such-pod", "notebook", f"{repo}/x:y")
        assert err.value.status == 404
        assert "no-such-pod" in err.value.message and node in err.value.message
        with pytest.raises(AgentError) as err:
            await client.checkpoint("default", name, "nope", f"{repo}/x:y")
        assert err.value.status == 404
        # outside the repository, and a wrong token
        with pytest.raises(AgentError) as err:
            await client.checkpoint("default", name, "notebook", "elsewhere.example/x:y")
        assert err.value.status == 403 and "outside" in err.value.message
        with pytest.raises(AgentError) as err:
            await AgentClient(url(agent), "wrong", timeout=10).checkpoint(
                "default", name, "notebook", f"{repo}/x:y"
            )
        assert err.value.status == 401
        page = (await fetch(agent, "/metrics", token=None)).body.decode()
        assert sample(page, 'jhub_suspend_agent_failures_total{reason="not_found"}') == 2

        # delete: gone from the registry; deleting again is still a success
        await client.delete_image(result.image)
        with pytest.raises(images.ImageNotFound):
            await images.inspect(result.image, tls_verify=False)
        r = await fetch(agent, "/api/images?" + urlencode({"ref": result.image}), "DELETE")
        assert r.code == 204, r.body
        r = await fetch(agent, "/api/images?ref=elsewhere.example/x:y", "DELETE")
        assert r.code == 403


@pytest.mark.slow
async def test_the_agent_token_may_checkpoint_but_not_proxy(cluster, pod):
    kubelet = cluster.kubelet(pod["spec"]["nodeName"])
    base = f"http://{kubelet.address}:{kubelet.port}"
    http = AsyncHTTPClient()
    auth = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    with pytest.raises(HTTPClientError) as err:
        await http.fetch(f"{base}/pods", headers=auth)
    assert err.value.code == 403  # nodes/proxy would allow exec into every pod: not granted
    client = KubeletClient(base, token=AGENT_TOKEN)
    with pytest.raises(KubeletError) as kerr:
        await client.checkpoint("default", "no-such-pod", "c", 10)
    assert kerr.value.status == 404  # authorized for nodes/checkpoint; the pod is unknown
    with pytest.raises(KubeletError) as kerr:
        await KubeletClient(base, token="wrong").checkpoint("default", "x", "c", 10)
    assert kerr.value.status in (401, 403)
    with pytest.raises(KubeletError) as kerr:
        await KubeletClient(base).checkpoint("default", "x", "c", 10)
    assert kerr.value.status == 401
    assert await client.healthz() == "ok"


@pytest.mark.slow
async def test_registry_down_is_503_and_the_archive_is_still_deleted(cluster, pod, skopeo):
    name, node = pod["metadata"]["name"], pod["spec"]["nodeName"]
    closed = f"127.0.0.1:{free_port()}/jhub-suspend"
    traits = e2e_traits(cluster, node, repository=closed)
    async with running_agent(**traits) as agent:
        client = AgentClient(url(agent), TOKEN, timeout=300)
        with pytest.raises(AgentError) as err:
            await client.checkpoint("default", name, "notebook", f"{closed}/alice:down")
        assert err.value.status == 503
        assert "registry" in err.value.message and "connection refused" in err.value.message
        assert archives_of(cluster, node, name) == []
        assert_still_running(cluster, name)
        page = (await fetch(agent, "/metrics", token=None)).body.decode()
        assert sample(page, 'jhub_suspend_agent_failures_total{reason="registry"}') == 1
