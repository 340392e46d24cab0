"""The container runtime end to end: real namespaces, real CRIU, a real registry.

These tests need root, CRIU >= 4.2, buildah, skopeo and docker-registry. When something is
missing they fail and say what (they never skip).
"""

import asyncio
import contextlib
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tarfile
import time
import uuid

import pytest
from conftest import require_command, require_root
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from jhub_suspend import archive as ckpt
from jhub_suspend import images
from jhub_suspend.localcluster.criu import CriuError, dump_args, run_criu
from jhub_suspend.localcluster.network import (
    PodNetwork,
    allocate_address,
    gateway_address,
    host_veth_name,
    parse_ipv4_addresses,
    parse_netns_list,
    pod_addresses,
)
from jhub_suspend.localcluster.runtime import Runtime, exit_code_from_returncode

pytestmark = pytest.mark.slow

# A test-only bridge and range, so a running local cluster (jhs0, 10.98.0.0/24) is untouched.
BRIDGE = "jhst0"
CIDR = "10.98.251.0/24"
PREFIX = "jhst-"

SERVER = r"""
import http.server, json, os, socket, sys, threading

counter = 0
# an internal loopback TCP connection between two threads: it must survive a restore
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
client = socket.create_connection(listener.getsockname())
peer, _ = listener.accept()

def echo():
    while True:
        data = peer.recv(100)
        if not data:
            break
        peer.sendall(data.upper())

threading.Thread(target=echo, daemon=True).start()
lock = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global counter
        if self.path == "/exit":
            sys.stdout.write("exiting with 7\n")
            os._exit(7)
        with lock:
            counter += 1
            client.sendall(b"ping%d" % counter)
            reply = client.recv(100).decode()
        body = json.dumps({"counter": counter, "loopback": reply, "pid": os.getpid(),
                           "sid": os.getsid(0)}).encode()
        # one write per line: under -u, print() writes each piece separately and another
        # thread's output could land in between
        sys.stdout.write("request %d\n" % counter)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # the host's connection is closed after a restore; say so in one line
        sys.stdout.write("connection from %s ended: %r\n" % (client_address[0], sys.exc_info()[1]))

print("listening", flush=True)
Server(("0.0.0.0", 8888), Handler).serve_forever()
"""


# --- pure helpers of the network module --------------------------------------------------


def test_address_allocation():
    assert gateway_address("10.98.0.0/24") == "10.98.0.1"
    addrs = list(pod_addresses("10.98.0.0/29"))
    assert addrs == ["10.98.0.2", "10.98.0.3", "10.98.0.4", "10.98.0.5", "10.98.0.6"]
    assert allocate_address("10.98.0.0/29", []) == "10.98.0.2"
    assert allocate_address("10.98.0.0/29", ["10.98.0.2"]) == "10.98.0.3"
    # after the last one handed out, wrapping around, never one still held
    assert allocate_address("10.98.0.0/29", ["10.98.0.3"], after="10.98.0.5") == "10.98.0.6"
    assert allocate_address("10.98.0.0/29", ["10.98.0.6"], after="10.98.0.5") == "10.98.0.2"
    with pytest.raises(RuntimeError, match="no free address"):
        allocate_address("10.98.0.0/29", addrs)


def test_network_parsers():
    assert parse_netns_list("jhs-a (id: 3)\njhs-b\n\n") == ["jhs-a", "jhs-b"]
    out = json.dumps(
        [
            {
                "ifname": "eth0",
                "addr_info": [
                    {"family": "inet", "local": "10.98.0.4", "prefixlen": 24},
                    {"family": "inet6", "local": "fe80::1", "prefixlen": 64},
                ],
            }
        ]
    )
    assert parse_ipv4_addresses(out) == [("10.98.0.4", 24)]
    assert parse_ipv4_addresses(out, "lo") == []
    name = host_veth_name("jhs0", "jhs-default-jupyter-alice-with-a-long-name")
    assert len(name) <= 15 and name == host_veth_name(
        "jhs0", "jhs-default-jupyter-alice-with-a-long-name"
    )
    assert name != host_veth_name("jhs0", "jhs-other")


def test_only_private_ranges():
    with pytest.raises(ValueError):
        PodNetwork(cidr="8.8.8.0/24")


# --- fixtures ------------------------------------------------------------------------------


def require_tools() -> None:
    require_root()
    for tool in ("nsenter", "unshare", "setsid", "ip", "ss", "sysctl"):
        require_command(tool, "install util-linux, iproute2 and procps (scripts/install.sh)")


@pytest.fixture
async def network():
    require_tools()
    net = PodNetwork(bridge=BRIDGE, cidr=CIDR, netns_prefix=PREFIX)
    await net.teardown()  # leftovers of an interrupted run
    await net.setup()
    try:
        yield net
    finally:
        await net.teardown()


@pytest.fixture
async def runtime(criu_path, tmp_path):
    rt = Runtime(criu_path, str(tmp_path / "runtime"))
    started: list = []
    rt.started = started  # type: ignore[attr-defined]
    yield rt
    for proc in started:
        if proc.running:
            with contextlib.suppress(Exception):
                await rt.kill(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(tmp_path):
    """Debian's docker-registry on a free loopback port with its own storage; stopped after."""
    require_root()
    binary = require_command("/usr/bin/docker-registry", "apt-get install docker-registry")
    port = free_port()
    storage = tmp_path / "registry"
    storage.mkdir()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(tmp_path / "registry.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"docker-registry did not start: {(tmp_path / 'registry.log').read_text()}"
                )
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def image_config(tmp_path):
    require_command("buildah", "apt-get install buildah")
    require_command("skopeo", "apt-get install skopeo")
    return images.ImageConfig(
        root=str(tmp_path / "buildah" / "storage"), runroot=str(tmp_path / "buildah" / "run")
    )


def http_get(ip: str, path: str = "/", conn=None, timeout: float = 5.0):
    c = conn or http.client.HTTPConnection(ip, 8888, timeout=timeout)
    c.request("GET", path)
    r = c.getresponse()
    return json.loads(r.read()), c


async def get(ip: str, path: str = "/", conn=None):
    return await asyncio.to_thread(http_get, ip, path, conn)


async def wait_serving(ip: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await get(ip, "/healthz-is-a-request-too")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def pid_max() -> int:
    return int(pathlib.Path("/proc/sys/kernel/pid_max").read_text())


def exists(path) -> bool:
    return os.path.exists(path)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


# --- end to end ----------------------------------------------------------------------------


async def test_checkpoint_image_and_restore_on_a_new_ip(
    network, runtime, registry, image_config, tmp_path
):
    server = tmp_path / "server.py"
    server.write_text(SERVER)
    ns_a = await network.create_netns(f"{PREFIX}a")
    ns_b = await network.create_netns(f"{PREFIX}b")
    assert ns_a.ip != ns_b.ip and ns_a.gateway == ns_b.gateway == gateway_address(CIDR)
    log_a = tmp_path / "logs" / "a.log"
    log_b = tmp_path / "logs" / "b.log"

    proc = await runtime.start(
        ns_a, [sys.executable, "-u", str(server)], dict(os.environ), str(tmp_path), str(log_a)
    )
    runtime.started.append(proc)
    assert not proc.restored and proc.wrapper_pid and proc.pid != proc.wrapper_pid
    await wait_serving(ns_a.ip)  # counter 1
    first, keepalive = await get(ns_a.ip)
    assert first["counter"] == 2 and first["loopback"] == "PING2"
    assert first["pid"] == 1 and first["sid"] == 1  # PID 1 and session leader in its namespace
    cpu, rss = runtime.usage(proc)
    assert cpu > 0 and rss > 5 * 1024 * 1024

    # checkpoint: the container keeps running
    archive_path = str(tmp_path / "checkpoint-jupyter-alice_default-notebook.tar")
    stats = await runtime.checkpoint(
        proc,
        ns_a,
        archive_path,
        container_name="notebook",
        pod_meta={"name": "jupyter-alice", "namespace": "default", "uid": "u-1"},
        timeout=60,
    )
    assert stats["bytes"] == os.stat(archive_path).st_size and stats["seconds"] > 0
    after, _ = await get(ns_a.ip, conn=keepalive)
    assert after["counter"] == 3 and after["loopback"] == "PING3"
    with tarfile.open(archive_path) as tar:
        names = set(tar.getnames())
    for name in ("checkpoint", "config.dump", "spec.dump", "rootfs-diff.tar", "deleted.files",
                 "network.status", "stats-dump", "dump.log"):  # fmt: skip
        assert name in names

    # checkpoint image: build, push, inspect
    ref = f"{registry}/checkpoints/jupyter-alice:notebook-1"
    t0 = time.monotonic()
    digest = await images.build_and_push(
        archive_path, ref, {"jhub-suspend.jupyter.org/user": "alice"}, config=image_config
    )
    push_seconds = time.monotonic() - t0
    assert digest.startswith("sha256:")
    meta = await images.inspect(ref, config=image_config)
    assert meta["digest"] == digest
    assert meta["annotations"][ckpt.CHECKPOINT_NAME_ANNOTATION] == "notebook"
    assert meta["annotations"]["jhub-suspend.jupyter.org/user"] == "alice"
    assert 0 < meta["size"] < stats["bytes"]  # one gzip layer

    # the original goes away (PID 1 ignores SIGTERM: SIGKILL)
    assert await runtime.kill(proc) == 128 + signal.SIGKILL
    assert await runtime.kill(proc) == 128 + signal.SIGKILL  # idempotent
    assert not alive(proc.pid)
    assert runtime.usage(proc) == (0.0, 0)

    # pull into a fresh directory and restore into another pod's namespace (another IP)
    t0 = time.monotonic()
    pulled = await images.pull_archive(ref, str(tmp_path / "pulled"), config=image_config)
    pull_seconds = time.monotonic() - t0
    assert ckpt.read_checkpoint(pulled).name == "notebook"
    t0 = time.monotonic()
    restored = await runtime.restore(pulled, ns_b, str(log_b))
    restore_seconds = time.monotonic() - t0
    runtime.started.append(restored)
    assert restored.restored and restored.pid != proc.pid
    again, _ = await get(ns_b.ip)
    # the counter continues from the checkpoint (2), over the restored loopback connection
    assert again["counter"] == 3 and again["loopback"] == "PING3" and again["pid"] == 1
    # the connection from outside the pod (the host's keep-alive) did not come back
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        await get(ns_b.ip, conn=keepalive)
    with pytest.raises(OSError):
        await asyncio.to_thread(http_get, ns_a.ip, "/", None, 1.0)  # nobody on the old IP
    cpu, rss = runtime.usage(restored)
    assert rss > 5 * 1024 * 1024

    # a restored container's own exit is noticed, with its exit code
    with contextlib.suppress(http.client.HTTPException, OSError):
        await get(ns_b.ip, "/exit")
    assert await asyncio.wait_for(restored.wait(), 10) == 7
    await restored.wait_logs()
    assert not alive(restored.pid)

    # output went through pipes into the logs, fresh pipe after the restore
    assert "request 3" in log_a.read_text()
    b_text = log_b.read_text()
    assert "request 3" in b_text and "exiting with 7" in b_text and "listening" not in b_text

    await images.delete(ref, config=image_config)
    with pytest.raises(images.ImageNotFound):
        await images.inspect(ref, config=image_config)
    with pytest.raises(images.ImageNotFound):
        await images.pull_archive(ref, str(tmp_path / "gone"), config=image_config)

    print(
        f"\n[runtime timings] checkpoint {stats['seconds']:.3f} s "
        f"(criu dump {stats['criu_seconds']:.3f} s, archive {stats['archive_seconds']:.3f} s), "
        f"archive {stats['bytes'] / 1e6:.1f} MB (images {stats['images_bytes'] / 1e6:.1f} MB), "
        f"layer {meta['size'] / 1e6:.1f} MB gzip; build+push {push_seconds:.2f} s; "
        f"pull {pull_seconds:.2f} s; restore {restore_seconds:.3f} s"
    )


async def test_output_and_exit_code(network, runtime, tmp_path):
    ns = await network.create_netns(f"{PREFIX}c")
    log_path = tmp_path / "c.log"
    proc = await runtime.start(
        ns,
        ["/bin/sh", "-c", 'echo "out $$"; echo err >&2; ip -4 -o addr show dev eth0; exit 3'],
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        str(tmp_path),
        str(log_path),
    )
    runtime.started.append(proc)
    assert await asyncio.wait_for(proc.wait(), 10) == 3
    await proc.wait_logs()
    text = log_path.read_text()
    assert "out 1" in text and "err" in text and ns.ip in text


async def test_terminate_sends_sigterm_then_kills(network, runtime, tmp_path):
    ns = await network.create_netns(f"{PREFIX}d")
    proc = await runtime.start(
        ns, ["sleep", "600"], dict(os.environ), str(tmp_path), str(tmp_path / "d.log")
    )
    runtime.started.append(proc)
    # sleep as PID 1 has no SIGTERM handler, so the kernel ignores SIGTERM: it is killed
    code = await runtime.terminate(proc, grace=0.5)
    assert code == 128 + signal.SIGKILL and not alive(proc.pid)


async def test_netns_addresses_are_not_reused_and_are_recovered(network):
    a = await network.create_netns(f"{PREFIX}e")
    b = await network.create_netns(f"{PREFIX}f")
    assert a.ip != b.ip
    assert exists(a.path)
    again = await network.create_netns(f"{PREFIX}e")  # idempotent
    assert again.ip == a.ip
    # a second PodNetwork (a restarted cluster) learns what is held and hands out another
    other = PodNetwork(bridge=BRIDGE, cidr=CIDR, netns_prefix=PREFIX)
    await other.setup()
    c = await other.create_netns(f"{PREFIX}g")
    assert c.ip not in (a.ip, b.ip)
    await network.delete_netns(a.name)
    await network.delete_netns(a.name)  # idempotent
    assert not exists(a.path)


async def test_dump_of_a_missing_pid_gives_criu_reason(criu_path, tmp_path):
    images_dir = tmp_path / "checkpoint"
    images_dir.mkdir()
    missing = pid_max() + 1000
    argv = dump_args(criu_path, pid=missing, images_dir=str(images_dir))
    with pytest.raises(CriuError) as err:
        await run_criu(argv, log_path=str(images_dir / "dump.log"), timeout=60)
    message = str(err.value)
    assert message.startswith("criu dump failed")
    assert "Error (" in message and str(missing) in message


async def test_restore_of_a_corrupted_archive_gives_criu_reason(network, runtime, tmp_path):
    ns = await network.create_netns(f"{PREFIX}h")
    work = tmp_path / "bad"
    (work / "checkpoint").mkdir(parents=True)
    (work / "checkpoint" / "inventory.img").write_bytes(b"this is not a CRIU image")
    ckpt.write_metadata(
        str(work),
        config=ckpt.config_dump(container_id="x", name="broken"),
        spec=ckpt.spec_dump(args=["true"]),
    )
    archive_path = str(tmp_path / "bad.tar")
    ckpt.write_archive(str(work), archive_path)
    with pytest.raises(CriuError) as err:
        await runtime.restore(archive_path, ns, str(tmp_path / "bad.log"))
    assert "criu restore failed" in str(err.value)
    assert "inventory.img" in str(err.value)  # CRIU's own reason: "Magic doesn't match ..."
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"junk" * 100)
    with pytest.raises(CriuError, match="cannot read checkpoint archive"):
        await runtime.restore(str(junk), ns, str(tmp_path / "junk.log"))


async def test_failed_checkpoint_leaves_the_container_running(network, runtime, tmp_path):
    ns = await network.create_netns(f"{PREFIX}i")
    proc = await runtime.start(
        ns, ["sleep", "600"], dict(os.environ), str(tmp_path), str(tmp_path / "i.log")
    )
    runtime.started.append(proc)
    # a dump that cannot finish in time
    with pytest.raises(CriuError, match="timed out"):
        await runtime.checkpoint(
            proc, ns, str(tmp_path / "x.tar"), container_name="c", pod_meta={}, timeout=0.001
        )
    await asyncio.sleep(0.2)
    assert proc.running and alive(proc.pid)
    assert not exists(tmp_path / "x.tar")
    await runtime.kill(proc)


def test_exit_codes():
    assert exit_code_from_returncode(0) == 0
    assert exit_code_from_returncode(3) == 3
    assert exit_code_from_returncode(-9) == 137


# --- a real Jupyter server with kernels ----------------------------------------------------

TOKEN = "test-token"


async def jupyter_api(ip: str, method: str, path: str, body=None):
    request = HTTPRequest(
        f"http://{ip}:8888{path}",
        method=method,
        headers={"Authorization": f"token {TOKEN}"},
        body=json.dumps(body) if body is not None else None,
        request_timeout=10,
    )
    response = await AsyncHTTPClient().fetch(request)
    return json.loads(response.body or b"null")


async def execute(ip: str, kernel_id: str, code: str) -> str:
    """Run ``code`` in a kernel through the server's websocket; return its output."""
    ws = await websocket_connect(
        HTTPRequest(
            f"ws://{ip}:8888/api/kernels/{kernel_id}/channels",
            headers={"Authorization": f"token {TOKEN}"},
        )
    )
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "username": "t", "session": uuid.uuid4().hex, "date": "",
              "msg_type": "execute_request", "version": "5.3"}  # fmt: skip
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
               "allow_stdin": False}  # fmt: skip
    ws.write_message(
        json.dumps(
            {
                "header": header,
                "parent_header": {},
                "metadata": {},
                "channel": "shell",
                "content": content,
            }
        )
    )
    out = []
    try:
        while True:
            raw = await asyncio.wait_for(ws.read_message(), 30)
            assert raw is not None, "the server closed the kernel's websocket"
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "execute_result":
                out.append(msg["content"]["data"]["text/plain"])
            elif msg["msg_type"] == "error":
                out.append(msg["content"]["ename"])
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)
    finally:
        ws.close()


async def test_restored_jupyter_server_still_talks_to_its_kernels(network, runtime, tmp_path):
    jupyter = require_command(
        os.path.join(os.path.dirname(sys.executable), "jupyter"),
        "pip install jupyter_server ipykernel (the test extra)",
    )
    ns_a = await network.create_netns(f"{PREFIX}ja")
    ns_b = await network.create_netns(f"{PREFIX}jb")
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), JUPYTER_RUNTIME_DIR=str(home / "runtime"))
    env["PATH"] = os.path.dirname(sys.executable) + ":" + env.get("PATH", "/usr/bin:/bin")
    argv = [jupyter, "server", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--allow-root",
            f"--IdentityProvider.token={TOKEN}"]  # fmt: skip
    proc = await runtime.start(ns_a, argv, env, str(home), str(tmp_path / "jupyter-a.log"))
    runtime.started.append(proc)
    deadline = time.monotonic() + 60
    while True:
        try:
            await jupyter_api(ns_a.ip, "GET", "/api/status")
            break
        except OSError:
            assert time.monotonic() < deadline, "jupyter server did not start"
            await asyncio.sleep(0.2)
    k1 = (await jupyter_api(ns_a.ip, "POST", "/api/kernels", {"name": "python3"}))["id"]
    k2 = (await jupyter_api(ns_a.ip, "POST", "/api/kernels", {"name": "python3"}))["id"]
    assert await execute(ns_a.ip, k1, "x = 41; x + 1") == "42"
    assert await execute(ns_a.ip, k2, "import os; os.getpid() > 1") == "True"

    archive_path = str(tmp_path / "jupyter.tar")
    stats = await runtime.checkpoint(
        proc, ns_a, archive_path, container_name="notebook", pod_meta={"name": "j"}, timeout=120
    )
    await runtime.kill(proc)
    t0 = time.monotonic()
    restored = await runtime.restore(archive_path, ns_b, str(tmp_path / "jupyter-b.log"))
    restore_seconds = time.monotonic() - t0
    runtime.started.append(restored)

    status = await jupyter_api(ns_b.ip, "GET", "/api/status")
    assert status["kernels"] == 2
    # the server reaches its kernels over the restored loopback ZeroMQ connections
    assert await execute(ns_b.ip, k1, "x") == "41"
    assert await execute(ns_b.ip, k2, "'still here'") == "'still here'"
    print(
        f"\n[jupyter timings] server + 2 kernels: checkpoint {stats['seconds']:.3f} s "
        f"(criu dump {stats['criu_seconds']:.3f} s), archive {stats['bytes'] / 1e6:.0f} MB; "
        f"restore {restore_seconds:.3f} s"
    )
    await runtime.kill(restored)
    assert not alive(restored.pid)
