"""Stopping the demo suspends its servers, and the next start brings them back (issue 12).

The end-to-end story runs the demo as a user runs it, in a subprocess: Ctrl-C (SIGINT) suspends
every running server through the suspend service, and the demo started again on the same state
directory restores a server on its user's next login, with its kernel's variables. The stop's
bounds (concurrency, total time, failures) are told against a fake of the service's REST API.
"""

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import sys
from urllib.parse import urlencode

import pytest
from conftest import CONTAINERD, CRIU, INSTALL_HINT, free_pod_cidr, require_command, require_root
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from jhub_suspend.demo.stop import suspend_all
from jhub_suspend.localcluster.services import free_port
from jhub_suspend.testing import fakes
from jhub_suspend.testing.hubapi import HubAPI
from jhub_suspend.testing.kernel import KernelClient

PASSWORD = "demo-stop-test"
TOKEN = "fake-admin-token"


# ---- the stop's bounds, against a fake suspend service ---------------------------------------


class FakeService:
    """``GET api/servers``, ``POST api/servers/{user}/suspend`` and ``GET api/operations/{id}``
    of the suspend service. ``script[user]`` is how a suspension goes: the statuses its
    operation shows on each read (the last one repeats), and its message and result."""

    def __init__(self, servers, script):
        self.servers = servers
        self.script = script
        self.reads: dict[str, int] = {}
        self.in_flight: set[str] = set()
        self.most_in_flight = 0
        self.posts: list[str] = []

    def operation(self, user):
        steps = self.script[user]["statuses"]
        status = steps[min(self.reads.get(user, 0), len(steps) - 1)]
        if status != "running":
            self.in_flight.discard(user)
        return {
            "id": f"op-{user}",
            "status": status,
            "message": self.script[user].get("message", ""),
            "result": self.script[user].get("result", {}) if status == "succeeded" else {},
        }

    def start(self):
        fake = self

        class Handler(web.RequestHandler):
            def prepare(self):
                if self.request.headers.get("Authorization") != f"token {TOKEN}":
                    raise web.HTTPError(403)

            def answer(self, body, status=200):
                self.set_status(status)
                self.finish(json.dumps(body))

        class Servers(Handler):
            def get(self):
                user = self.get_argument("user", None)
                listed = [s for s in fake.servers if user in (None, s["user"])]
                if user and fake.script[user].get("taken"):  # the policy's suspension
                    listed = [{**s, "state": "suspending", "operation": {"id": f"op-{user}", "status": "running"}}
                              for s in listed]  # fmt: skip
                self.answer({"servers": listed})

        class Suspend(Handler):
            def post(self, user):
                fake.posts.append(user)
                if fake.script[user].get("taken"):
                    return self.answer({"message": f"{user} is already suspending"}, 409)
                fake.in_flight.add(user)
                fake.most_in_flight = max(fake.most_in_flight, len(fake.in_flight))
                self.answer({"operation": {"id": f"op-{user}", "status": "running"}}, 202)

        class Operation(Handler):
            def get(self, user):
                fake.reads[user] = fake.reads.get(user, 0) + 1
                self.answer(fake.operation(user))

        self.server, base = fakes.serve(
            web.Application(
                [
                    (r"/api/servers", Servers),
                    (r"/api/servers/([^/]+)/suspend", Suspend),
                    (r"/api/operations/op-([^/]+)", Operation),
                ]
            )
        )
        return f"{base}/"


def server(user, state):
    return {"user": user, "server_name": "", "state": state, "operation": None}


async def test_stop_suspends_running_servers_two_at_a_time_within_its_time_bound():
    fake = FakeService(
        [
            server("alice", "running"),
            server("bob", "running"),
            server("carol", "running"),
            server("frank", "running"),
            server("dave", "starting"),
            server("erin", "suspended"),
        ],
        {
            "alice": {
                "statuses": ["running", "running", "succeeded"],
                "result": {"checkpoint": {"size": 1_234_000_000}},
            },
            "bob": {"statuses": ["failed"], "message": "CRIU said no"},
            "carol": {"statuses": ["running"]},  # never finishes
            # The policy started its suspension after the listing: it is waited for.
            "frank": {"statuses": ["succeeded"], "taken": True},
        },
    )
    url = fake.start()
    lines: list[str] = []
    try:
        outcomes = await suspend_all(url, TOKEN, concurrency=2, timeout=3, say=lines.append)
    finally:
        fake.server.stop()
    text = "\n".join(lines)
    assert "dave: starting, so it cannot be suspended now; stopping it" in lines, text
    assert not [line for line in lines if "erin" in line], text
    assert re.search(r"^alice: suspended \(1\.2 GB, \d+\.\d s\)$", text, re.M), text
    assert "bob: could not suspend: CRIU said no; stopping it" in lines, text
    assert "carol: not suspended within 3 s; stopping it" in lines, text
    assert re.search(r"^frank: suspended \(\d+\.\d s\)$", text, re.M), text
    assert lines[-1] == "2 of 4 server(s) suspended.", text
    assert {o.server: o.suspended for o in outcomes} == {
        "alice": True, "bob": False, "carol": False, "frank": True
    }  # fmt: skip
    assert sorted(fake.posts) == ["alice", "bob", "carol", "frank"]
    assert fake.most_in_flight == 2


async def test_stop_says_so_when_the_service_does_not_answer():
    lines: list[str] = []
    url = f"http://127.0.0.1:{free_port()}/"
    assert await suspend_all(url, TOKEN, concurrency=2, timeout=5, say=lines.append) == []
    assert len(lines) == 1 and lines[0].startswith(
        "Could not list the running servers: the suspend service did not answer"
    ), lines


# ---- the demo, as a user runs it --------------------------------------------------------------


class DemoProcess:
    """``python -m jhub_suspend.demo`` as a user runs it, its output kept line by line."""

    def __init__(self, args: list[str], log_path) -> None:
        self.args = args
        self.log_path = log_path
        self.lines: list[str] = []
        self._news = asyncio.Condition()
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jhub_suspend.demo",
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, as in a terminal
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log_path, "a") as log:
            async for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                async with self._news:
                    self.lines.append(line)
                    self._news.notify_all()
        async with self._news:
            self._news.notify_all()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])

    async def _output(self, pattern: str, timeout: float) -> re.Match | None:
        """The first output line matching ``pattern``, or None once the demo's output ended."""
        assert self._reader is not None

        def found() -> re.Match | bool:
            for line in self.lines:
                if m := re.search(pattern, line):
                    return m
            return self._reader.done()

        async with self._news:
            try:
                result = await asyncio.wait_for(self._news.wait_for(found), timeout)
            except TimeoutError:
                pytest.fail(f"the demo never printed {pattern!r} in {timeout} s:\n{self.tail()}")
        return result if isinstance(result, re.Match) else None

    async def wait_line(self, pattern: str, timeout: float) -> re.Match:
        """The first output line matching ``pattern``; fails if the demo exits first."""
        if found := await self._output(pattern, timeout):
            return found
        pytest.fail(f"the demo exited before it printed {pattern!r}:\n{self.tail()}")

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the terminal's foreground process group."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):  # it exited: wait_exit tells
            os.killpg(self.proc.pid, signal.SIGINT)

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None and self._reader is not None
        try:
            status = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            pytest.fail(f"the demo did not exit within {timeout} s of Ctrl-C:\n{self.tail()}")
        await self._reader
        return status

    async def stop_at_once(self) -> None:
        """Ctrl-C twice (the demo's quick stop), for a test that failed half-way."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.interrupt()
        if await self._output(r"Suspending every running server|Stopping the hub", 60):
            self.interrupt()
        await self.wait_exit(180)


async def log_in(hub_url: str, user: str, password: str) -> str:
    """Log in through the hub's login form, as a browser does (which creates the user), then
    get an API token with the same name and password."""
    http = AsyncHTTPClient()
    page = await http.fetch(f"{hub_url}/hub/login")
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.body.decode())
    assert xsrf, "the login page has no _xsrf field"
    cookies = "; ".join(c.split(";", 1)[0] for c in page.headers.get_list("Set-Cookie"))
    answer = await http.fetch(
        HTTPRequest(
            f"{hub_url}/hub/login",
            method="POST",
            headers={"Cookie": cookies},
            body=urlencode({"username": user, "password": password, "_xsrf": xsrf.group(1)}),
            follow_redirects=False,
        ),
        raise_error=False,
    )
    assert answer.code == 302, f"login as {user} failed: {answer.code} {answer.body[:300]!r}"
    api = HubAPI(f"{hub_url}/hub/api", "")
    token = await api.request(
        "POST",
        f"users/{user}/tokens",
        {"auth": {"username": user, "password": password}, "note": "test_demo_stop"},
    )
    return str(token["token"])


@pytest.mark.slow
async def test_stopping_the_demo_suspends_a_server_and_the_next_demo_restores_it(
    tmp_path_factory,
):
    require_root()
    require_command(CRIU, INSTALL_HINT)
    require_command(CONTAINERD, INSTALL_HINT)
    port = free_port()
    hub_url = f"http://127.0.0.1:{port}"
    args = [
        f"--port={port}",
        # Short: containerd's socket lies in it.
        f"--state-dir={tmp_path_factory.mktemp('demo')}",
        f"--Demo.user_password={PASSWORD}",
        # A network of its own, so that test runs side by side never share pods.
        f"--LocalCluster.bridge=jhsd{os.getpid() % 10000}",
        f"--LocalCluster.pod_cidr={free_pod_cidr()}",
    ]
    user, value = "alice", secrets.token_hex(8)

    logs = tmp_path_factory.mktemp("demo-logs")
    first = DemoProcess(args, logs / "demo-1.log")
    await first.start()
    try:
        await first.wait_line(r"jhub-suspend demo is running at", 240)
        token = await log_in(hub_url, user, PASSWORD)
        await HubAPI(f"{hub_url}/hub/api", token).start_server(user)
        kernel = KernelClient(f"{hub_url}/user/{user}/", token)
        kernel_id = await kernel.start()
        assert await kernel.execute(f"x = {value!r}\nprint(x)") == f"{value}\n"

        first.interrupt()
        await first.wait_line(r"Ctrl-C again to stop at once", 30)
        assert await first.wait_exit(300) == 0, first.tail()
    finally:
        await first.stop_at_once()
    output = "\n".join(first.lines)
    assert f"suspending {user}…" in output, output
    assert re.search(rf"^{user}: suspended \(\d+\.\d [kMG]B, \d+\.\d s\)$", output, re.M), output
    assert "1 of 1 server(s) suspended." in output

    second = DemoProcess(args, logs / "demo-2.log")
    await second.start()
    try:
        await second.wait_line(r"jhub-suspend demo is running at", 240)
        token = await log_in(hub_url, user, PASSWORD)
        await HubAPI(f"{hub_url}/hub/api", token).start_server(user)
        # The same kernel, restored: a fresh server would have no kernel of this id.
        kernel = KernelClient(f"{hub_url}/user/{user}/", token, kernel_id=kernel_id)
        assert await kernel.execute("print(x)", store_history=False) == f"{value}\n"

        # Ctrl-C twice stops at once, without waiting for the suspension under way.
        second.interrupt()
        await second.wait_line(rf"suspending {user}…", 60)
        second.interrupt()
        assert await second.wait_exit(120) == 0, second.tail()
        assert "Stopping at once" in "\n".join(second.lines)
    finally:
        await second.stop_at_once()
