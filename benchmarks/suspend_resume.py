"""Benchmark: suspend and resume of a notebook-sized process, phase by phase, next to the floors.

On the local cluster (real containerd, runc, CRIU 4.2 and registry), for each size of process
state, in one run:

* **suspend**, as the node agent does it: the kubelet's checkpoint (containerd's
  ``CheckpointContainer``), the push of the archive as the image's layer
  (``images.build_and_push``: hash, hard-linked layout, skopeo), the verification of the pushed
  manifest (``images.inspect``), the archive's deletion, and the pod's deletion;
* **resume**: a pod created from the checkpoint image until its process answers with a
  digest of its state, equal to the one before; split into the image pull (the kubelet's
  ``Pulled`` event) and the rest (containerd's restore with CRIU, and the answer);
* **floors** for the same bytes: CRIU's own dump, from its start to "Dumping finished
  successfully" in the archive's ``dump.log`` (CRIU's frozen time, from the archive's
  ``stats-dump`` read with ``checkpointctl inspect --stats``, is reported beside it), one
  monolithic blob upload of the archive's bytes to the same registry, and one blob download;
* **what users do today after culling**: a fresh pod from the same image that recomputes its
  state, until it answers;
* **inside containerd**, where its share goes, from outside: the checkpoint's last step (the
  window in which the archive file grows: containerd's copy of its tar stream into it) is
  sampled every 10 ms, and CRIU's dump time is subtracted, leaving what containerd does in
  between (it stores CRIU's images in its content store, unpacks them into a work directory
  and compresses the container's writable layer); the pull's download (the window in which a
  file grows in containerd's content ingest directory) is sampled the same way, leaving the
  layer's unpacking into a snapshot; and CRIU's own restore time is read from the
  ``restore.log`` runc leaves in the runtime's CRIU work directory.

The process holds realistic state, not only random bytes: half random bytes (incompressible,
like numeric arrays), a quarter repetitive bytes, and a quarter Python objects (lists of ints
and strings), so compression, if any, would be judged fairly.

The phases above call what the node agent calls, in the agent's order (the kubelet's
checkpoint, ``images.build_and_push``, ``images.inspect``), not the agent's ``Checkpointer``
itself (so without its one retry of a failed freeze). Then, **through the product**, as a user
and an admin meet it: a user's notebook server whose kernel holds the same kind of state is
suspended through the suspend service's REST API (request → the hub has it suspended, its pod
gone) and started again through the hub's (request → ready, and → the kernel answers with
its state's digest, equal to the one before), next to a fresh server started through the hub
that builds the same state again.

Results: ``benchmarks/results/suspend_resume.{json,md,png}``. Timings are never asserted.

    .venv/bin/python benchmarks/suspend_resume.py [--sizes 0.1 1 4] [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import platform
import re
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import load  # benchmarks/load.py: the same calls through the hub and the service, for one server

from jhub_suspend import images
from jhub_suspend.commands import run_command
from jhub_suspend.demo.hub import running_hub
from jhub_suspend.localcluster.cluster import LocalCluster
from jhub_suspend.testing.hubapi import HubAPI
from jhub_suspend.testing.kernel import KernelClient
from jhub_suspend.testing.waiting import wait_for

RESULTS = Path(__file__).parent / "results"
PORT = 7777
SUSPEND_PHASES = ("checkpoint", "push", "verify", "delete")
CHECKPOINTCTL = "/opt/jhub-suspend/bin/checkpointctl"

# The notebook-like process: builds its state, then answers every connection with the sha256
# of that state (computed once, so an answer is quick) and how long building it took.
STATE_PROGRAM = """
import hashlib, os, socket, sys, time
size, port = int(sys.argv[1]), int(sys.argv[2])
t0 = time.monotonic()
random_part = os.urandom(size // 2)
repetitive = (b"jhub-suspend " * (size // 4 // 13 + 1))[: size // 4]
n = size // 4 // 40  # a Python int and a short str in a list take about 40 bytes each
objects = [i * 7 for i in range(n // 2)] + [f"row-{i}" for i in range(n // 2)]
h = hashlib.sha256(random_part + repetitive)
h.update(repr(objects[:1000] + objects[-1000:]).encode() + str(len(objects)).encode())
answer = f"{h.hexdigest()} {time.monotonic() - t0:.3f}\\n".encode()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(answer)
    c.close()
"""


# The same state in a notebook's kernel; ``digest()`` is its fingerprint.
KERNEL_STATE = """
import hashlib, os
size = {size}
random_part = os.urandom(size // 2)
repetitive = (b"jhub-suspend " * (size // 4 // 13 + 1))[: size // 4]
n = size // 4 // 40
objects = [i * 7 for i in range(n // 2)] + [f"row-{{i}}" for i in range(n // 2)]
def digest():
    h = hashlib.sha256(random_part)
    h.update(repetitive)
    h.update(repr(objects[:1000] + objects[-1000:]).encode() + str(len(objects)).encode())
    return h.hexdigest()
"""
# The load benchmark's small pods (no memory limit: the node's), with room for the largest state.
HUB_CONFIG = load.HUB_CONFIG + (
    "c.SuspendingKubeSpawner.checkpoint_timeout = 1200\n"
    "c.SuspendingKubeSpawner.start_timeout = 1200\n"
)


def pod(name: str, image: str, size: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {
            "containers": [
                {
                    "name": "notebook",
                    "image": image,
                    "command": ["python3", "-c", STATE_PROGRAM, str(size), str(PORT)],
                    # as root, as the local cluster's notebooks (docs/localcluster.md)
                    "securityContext": {"runAsUser": 0},
                }
            ],
            "terminationGracePeriodSeconds": 0,
        },
    }


def ask(ip: str) -> tuple[str, float] | None:
    """The process's answer: (digest of its state, seconds it took to build it)."""
    try:
        with socket.create_connection((ip, PORT), timeout=2) as s:
            data = s.recv(200).decode().split()
    except OSError:
        return None
    return (data[0], float(data[1])) if len(data) == 2 else None


async def answering(lc: LocalCluster, name: str, timeout: float) -> tuple[str, float]:
    async def answer() -> tuple[str, float] | bool:
        p = lc.store.get("pods", "default", name)
        status = p.get("status") or {}
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") not in (None, "ContainerCreating"):
                raise RuntimeError(f"pod {name}: {waiting}")
        if status.get("phase") != "Running":
            return False
        return await asyncio.to_thread(ask, status["podIP"]) or False

    result = await wait_for(answer, f"pod {name} never answered", timeout=timeout)
    assert isinstance(result, tuple)
    return result


async def delete_pod(lc: LocalCluster, name: str) -> None:
    lc.store.delete("pods", "default", name, grace_period_seconds=0)
    await wait_for(lambda: not lc.store.exists("pods", "default", name), f"{name} stayed")


def pulled_seconds(lc: LocalCluster, name: str, image: str) -> float:
    events, _ = lc.store.list("events", "default")
    for e in events:
        ours = e["involvedObject"]["name"] == name and e["reason"] == "Pulled"
        if ours and image in e["message"] and (m := re.search(r" in ([0-9.]+)s", e["message"])):
            return float(m.group(1))
    return float("nan")


def criu_frozen_seconds(archive: str) -> float:
    out = subprocess.run(
        [CHECKPOINTCTL, "inspect", "--stats", archive], capture_output=True, text=True
    ).stdout
    m = re.search(r"Frozen time: ([0-9.]+) (µs|ms|s)", out)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"µs": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]


class GrowthWindow:
    """Samples the files matching ``pattern`` every 10 ms while it runs: ``window`` is the time
    from the first sample that found one to the last sample in which one grew."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.first: float | None = None
        self.last_growth: float | None = None
        self._sizes: dict[str, int] = {}
        self._task: asyncio.Task | None = None

    def _sample(self) -> None:
        now = time.monotonic()
        for path in glob.glob(self.pattern):
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            if self.first is None:
                self.first = now
            if size != self._sizes.get(path):
                self._sizes[path] = size
                self.last_growth = now

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(0.01)  # the sampling period, not a wait for something

    def __enter__(self) -> GrowthWindow:
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self._sample()

    @property
    def window(self) -> float:
        if self.first is None or self.last_growth is None:
            return float("nan")
        return self.last_growth - self.first


def criu_restore_seconds(work_dir: str, since: float) -> float:
    """CRIU's restore time, from the newest ``restore.log`` under the runtime's CRIU work
    directory written after ``since`` (wall clock): the stamp of its last line."""
    logs = [p for p in glob.glob(os.path.join(work_dir, "**", "restore.log"), recursive=True)]
    logs = [p for p in logs if os.path.getmtime(p) >= since]
    if not logs:
        return float("nan")
    with open(max(logs, key=os.path.getmtime), errors="replace") as f:
        stamps = re.findall(r"^\(\s*([0-9.]+)\)", f.read(), re.M)
    return float(stamps[-1]) if stamps else float("nan")


def criu_dump_seconds(archive: str) -> float:
    """How long CRIU's dump ran: the time stamp of the last line of the archive's dump.log
    (CRIU stamps each line with the seconds since it started)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("dump.log")
        text = member.read().decode(errors="replace") if member else ""
    stamps = re.findall(r"^\(\s*([0-9.]+)\)", text, re.M)
    return float(stamps[-1]) if stamps else float("nan")


async def raw_blob_push_and_pull(registry: str, path: str) -> tuple[float, float]:
    """One monolithic upload of the file as a blob, then one download: the registry's floor."""
    digest = await asyncio.to_thread(images.file_digest, path)
    repo = f"http://{registry}/v2/bench/raw"
    t0 = time.monotonic()
    started = await run_command(
        ["curl", "-sS", "-X", "POST", "-D", "-", "-o", "/dev/null", f"{repo}/blobs/uploads/"]
    )
    location = next(
        line.split(":", 1)[1].strip()
        for line in started.stdout.splitlines()
        if line.lower().startswith("location:")
    )
    if location.startswith("/"):
        location = f"http://{registry}{location}"
    sep = "&" if "?" in location else "?"
    await run_command(
        ["curl", "-sS", "-f", "-H", "Content-Type: application/octet-stream",
         "--upload-file", path, f"{location}{sep}digest={digest}"],
        timeout=1800,
    )  # fmt: skip
    push = time.monotonic() - t0
    t0 = time.monotonic()
    await run_command(
        ["curl", "-sS", "-f", "-o", "/dev/null", f"{repo}/blobs/{digest}"], timeout=1800
    )
    return push, time.monotonic() - t0


async def one_size(lc: LocalCluster, gb: float, round_: int) -> dict[str, Any]:
    size = int(gb * (1 << 30))
    image = lc.images["notebook"]
    name = f"bench-{round_}"
    lc.store.create("pods", "default", pod(name, image, size))
    digest, build_seconds = await answering(lc, name, timeout=600)
    p = lc.store.get("pods", "default", name)
    kubelet = lc.kubelet(p["spec"]["nodeName"])

    phases: dict[str, float] = {}
    t = time.monotonic()
    with GrowthWindow(os.path.join(kubelet.checkpoint_dir, f"checkpoint-{name}_*.tar")) as written:
        archive = await kubelet.checkpoint("default", name, "notebook", 1200)
    phases["checkpoint"] = time.monotonic() - t
    archive_bytes = os.path.getsize(archive)
    criu_dump = criu_dump_seconds(archive)
    criu_frozen = criu_frozen_seconds(archive)
    ref = f"{lc.checkpoint_repository}/bench:{name}"
    t = time.monotonic()
    pushed = await images.build_and_push(archive, ref, {"jhub-suspend.jupyter.org/pod": name})
    phases["push"] = time.monotonic() - t
    t = time.monotonic()
    facts = await images.inspect(ref)
    assert facts["digest"] == pushed
    phases["verify"] = time.monotonic() - t
    # the floors for the same bytes, before the archive goes
    raw_push, raw_pull = await raw_blob_push_and_pull(lc.registry_host, archive)
    t = time.monotonic()
    os.remove(archive)
    await delete_pod(lc, name)
    phases["delete"] = time.monotonic() - t

    restored = f"{name}-restored"
    checkpoint_image = images.pinned_reference(f"{ref}@{pushed}")
    spec = pod(restored, checkpoint_image, size)
    assert lc.containerd is not None
    ingest = os.path.join(
        lc.containerd.dir, "root", "io.containerd.content.v1.content", "ingest", "*", "data"
    )
    t, wall = time.monotonic(), time.time()
    with GrowthWindow(ingest) as fetched:
        lc.store.create("pods", "default", spec)
        restored_digest, _ = await answering(lc, restored, timeout=600)
    resume = time.monotonic() - t
    criu_restore = criu_restore_seconds(str(lc.containerd.criu_work), wall)
    assert restored_digest == digest, "the restored process lost its state"
    phases["pull"] = pulled_seconds(lc, restored, checkpoint_image)
    phases["restore"] = resume - phases["pull"]
    await delete_pod(lc, restored)

    fresh = f"{name}-fresh"
    t = time.monotonic()
    lc.store.create("pods", "default", pod(fresh, image, size))
    await answering(lc, fresh, timeout=600)
    cold = time.monotonic() - t
    await delete_pod(lc, fresh)
    await images.delete(ref)

    # the agent's phases only: the floors measured in between are not part of a suspension
    suspend = sum(phases[p] for p in SUSPEND_PHASES)
    floor_suspend = criu_dump + raw_push
    return {
        "state_gb": gb,
        "archive_bytes": archive_bytes,
        "suspend_seconds": round(suspend, 3),
        "resume_seconds": round(resume, 3),
        "phases": {k: round(v, 3) for k, v in phases.items()},
        "floors": {
            "criu_dump_seconds": round(criu_dump, 3),
            "criu_frozen_seconds": round(criu_frozen, 3),
            "raw_blob_push_seconds": round(raw_push, 3),
            "raw_blob_pull_seconds": round(raw_pull, 3),
        },
        "inside_containerd": {
            "checkpoint_criu_dump": round(criu_dump, 3),
            "checkpoint_containerd_copies": round(
                phases["checkpoint"] - criu_dump - written.window, 3
            ),
            "checkpoint_archive_write": round(written.window, 3),
            "pull_download": round(fetched.window, 3),
            "pull_unpack": round(phases["pull"] - fetched.window, 3),
            "restore_criu": round(criu_restore, 3),
        },
        "suspend_over_floor": round(suspend / floor_suspend, 2),
        "resume_pull_over_raw_pull": round(phases["pull"] / raw_pull, 2),
        "cold_start_and_recompute_seconds": round(cold, 3),
        "state_build_seconds_in_process": build_seconds,
    }


async def through_hub(hub: Any, gb: float, round_: int) -> dict[str, Any]:
    """Suspend and resume one user's server holding ``gb`` of kernel state through the
    service's and the hub's REST APIs; and a fresh server that builds the state again."""
    api = HubAPI(hub.api_url, hub.service_token)
    state = KERNEL_STATE.format(size=int(gb * (1 << 30)))
    user, fresh_user = f"hub{round_}", f"fresh{round_}"
    await api.ensure_user(user)
    await api.start_server(user, timeout=600)
    kernel = KernelClient(f"{hub.url}/user/{user}/", hub.service_token, timeout=600)
    await kernel.start()
    await kernel.execute(state, store_history=False)
    before = await kernel.execute("print(digest())", store_history=False)

    suspend = await load.suspend_all(hub, api, [user], timeout=1800)
    if user not in suspend.seconds:
        raise RuntimeError(f"suspending {user} failed: {suspend.failures}")
    resume = await load.resume_all(api, [user], timeout=1800)
    if user not in resume.seconds:
        raise RuntimeError(f"resuming {user} failed: {resume.failures}")
    after = await kernel.execute("print(digest())", store_history=False)
    answered = time.monotonic() - resume.started
    assert after == before, "the resumed kernel lost its state"
    await api.stop_server(user)

    await api.ensure_user(fresh_user)
    # Started and polled as the resume was, so that the two are timed alike.
    fresh_start = await load.resume_all(api, [fresh_user], timeout=600)
    if fresh_user not in fresh_start.seconds:
        raise RuntimeError(f"starting {fresh_user} failed: {fresh_start.failures}")
    ready = fresh_start.seconds[fresh_user]
    t = fresh_start.started
    fresh = KernelClient(f"{hub.url}/user/{fresh_user}/", hub.service_token, timeout=600)
    await fresh.start()
    await fresh.execute(state, store_history=False)
    await fresh.execute("print(digest())", store_history=False)
    recomputed = time.monotonic() - t
    await api.stop_server(fresh_user)
    return {
        "suspend_seconds": round(suspend.seconds[user], 3),
        "resume_ready_seconds": round(resume.seconds[user], 3),
        "resume_kernel_answers_seconds": round(answered, 3),
        "fresh_server_ready_seconds": round(ready, 3),
        "fresh_server_and_recompute_seconds": round(recomputed, 3),
    }


def write_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Suspend and resume, phase by phase",
        "",
        f"Measured {result['date']} on {result['machine']} with `benchmarks/suspend_resume.py`: "
        "real containerd, runc, CRIU and docker-registry on the local cluster. "
        "Times in seconds.",
        "",
        "| state | archive | suspend | checkpoint | push | verify | delete | floor: CRIU dump "
        "| floor: blob PUT | suspend / floor | resume | pull | restore + answer "
        "| floor: blob GET | fresh pod + recompute |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        ph, fl = r["phases"], r["floors"]
        lines.append(
            f"| {r['state_gb']} GB | {r['archive_bytes'] / 1e9:.2f} GB | {r['suspend_seconds']} "
            f"| {ph['checkpoint']} | {ph['push']} | {ph['verify']} | {ph['delete']} "
            f"| {fl['criu_dump_seconds']} | {fl['raw_blob_push_seconds']} "
            f"| {r['suspend_over_floor']} | {r['resume_seconds']} | {ph['pull']} "
            f"| {ph['restore']:.3f} | {fl['raw_blob_pull_seconds']} "
            f"| {r['cold_start_and_recompute_seconds']} |"
        )
    lines += [
        "",
        "The suspend floor is CRIU's own dump (from its dump.log) plus one monolithic upload of",
        "the same bytes. `checkpoint` is the kubelet's whole call: what containerd does around",
        "CRIU is the difference. `restore + answer` is containerd's restore with CRIU until the",
        "process answers; the pull is the kubelet's own figure.",
        "",
        "## Inside containerd",
        "",
        "Where the checkpoint's and the pull's time goes, measured from outside (see the",
        "benchmark's docstring): CRIU's dump; what containerd does before it writes the archive",
        "(CRIU's images into its content store, unpacked again into a work directory, the",
        "writable layer compressed); the archive's write; the layer's download into the content",
        "store and its unpacking into a snapshot; and CRIU's own restore. The two columns",
        "marked derived are what is left of the call once the measured parts are taken away:",
        "they also hold the kubelet's HTTP, runc's freeze and the manifest's fetch.",
        "",
        "| state | checkpoint | CRIU dump | rest of the call before the archive (derived) "
        "| archive write | pull | download | rest of the pull: unpack (derived) "
        "| restore + answer | CRIU restore |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        ph, inside = r["phases"], r.get("inside_containerd")
        if not inside:
            continue
        lines.append(
            f"| {r['state_gb']} GB | {ph['checkpoint']} | {inside['checkpoint_criu_dump']} "
            f"| {inside['checkpoint_containerd_copies']} | {inside['checkpoint_archive_write']} "
            f"| {ph['pull']} | {inside['pull_download']} | {inside['pull_unpack']} "
            f"| {ph['restore']:.3f} | {inside['restore_criu']} |"
        )
    lines += [
        "",
        "## Through the product",
        "",
        "A user's notebook server whose kernel holds the state, suspended through the suspend",
        "service's REST API (until the hub has it suspended) and started again through the",
        "hub's (until ready, and until its kernel answers with the same state); beside it, a",
        "fresh server started through the hub, and the same state built again in its kernel.",
        "",
        "| state | suspend | resume: ready | resume: kernel answers | fresh server: ready "
        "| fresh server + recompute |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        hub = r.get("through_hub")
        if not hub:
            continue
        lines.append(
            f"| {r['state_gb']} GB | {hub['suspend_seconds']} | {hub['resume_ready_seconds']} "
            f"| {hub['resume_kernel_answers_seconds']} | {hub['fresh_server_ready_seconds']} "
            f"| {hub['fresh_server_and_recompute_seconds']} |"
        )
    lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    labels = [f"{r['state_gb']} GB" for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    bottom = [0.0] * len(runs)
    for phase in SUSPEND_PHASES:
        values = [r["phases"][phase] for r in runs]
        ax1.bar(labels, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    floors = [r["floors"]["criu_dump_seconds"] + r["floors"]["raw_blob_push_seconds"] for r in runs]
    ax1.plot(labels, floors, "k_", markersize=30, label="floor: dump + blob PUT")
    ax1.set_title("suspend")
    ax1.set_ylabel("seconds")
    ax1.legend()
    bottom = [0.0] * len(runs)
    for phase in ("pull", "restore"):
        values = [r["phases"][phase] for r in runs]
        ax2.bar(labels, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    cold = [r["cold_start_and_recompute_seconds"] for r in runs]
    ax2.plot(labels, cold, "r_", markersize=30, label="fresh pod + recompute")
    ax2.set_title("resume")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_results(result: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "suspend_resume.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "suspend_resume.md").write_text(write_markdown(result))
    plot(result, RESULTS / "suspend_resume.png")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.1, 1.0, 4.0])
    parser.add_argument(
        "--state-dir",
        default="",
        help="keep the cluster's state here (default: a temporary directory, removed)",
    )
    args = parser.parse_args()
    if args.state_dir:
        await run_all(args.state_dir, args.sizes)
    else:
        # The cluster's state holds every checkpoint and image of the run: gigabytes at 4 GB.
        with tempfile.TemporaryDirectory(prefix="jhs-bench-") as state:
            await run_all(state, args.sizes)


async def run_all(state: str, sizes: list[float]) -> None:
    lc = LocalCluster(
        state_dir=state,
        bridge="jhsbench0",
        pod_cidr="10.98.240.0/24",
        nodes=[{"name": "bench-node", "cpu": "2", "memory": "20Gi"}],
    )
    lc.initialize([])
    await lc.up()
    try:
        runs = []
        for i, gb in enumerate(sizes):
            run = await one_size(lc, gb, i)
            print(json.dumps(run), flush=True)
            runs.append(run)
        os.makedirs(os.path.join(state, "hub"))
        async with running_hub(
            lc.describe(),
            os.path.join(state, "hub"),
            extra_config=HUB_CONFIG,
            service_config=load.SERVICE_CONFIG,  # the policy acts on none
        ) as hub:
            for i, (gb, run) in enumerate(zip(sizes, runs, strict=True)):
                run["through_hub"] = await through_hub(hub, gb, i)
                print(json.dumps(run["through_hub"]), flush=True)
    finally:
        await lc.down()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}",
        "runs": runs,
    }
    write_results(result)
    print(write_markdown(result))


if __name__ == "__main__":
    asyncio.run(main())
