"""Garbage collection of the local cluster's registry (issue 10, defect 5): deleted checkpoint
images give their storage back, kept ones stay pullable, and the stored bytes are a metric."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from jhub_suspend import images
from jhub_suspend.commands import run_command
from jhub_suspend.localcluster import registrygc


def test_storage_bytes_counts_blob_data_only(tmp_path: Path) -> None:
    blobs = tmp_path.joinpath(*registrygc.BLOBS_DIR, "sha256", "ab", "abcd")
    blobs.mkdir(parents=True)
    (blobs / "data").write_bytes(b"x" * 1000)
    repos = tmp_path / "docker" / "registry" / "v2" / "repositories" / "r"
    repos.mkdir(parents=True)
    (repos / "link").write_bytes(b"y" * 500)  # metadata, not blob data
    assert registrygc.storage_bytes(tmp_path) == 1000
    assert registrygc.storage_bytes(tmp_path / "missing") == 0


def test_a_skipped_collection_frees_nothing() -> None:
    assert registrygc.GcResult(skipped="busy").freed == 0
    assert registrygc.GcResult(before=10, after=4).freed == 6


async def push_random_image(tmp_path: Path, ref: str, size: int) -> str:
    """Push an image whose one layer is ``size`` random bytes (shared with no other image)."""
    layer = tmp_path / f"{os.urandom(4).hex()}.tar"
    layer.write_bytes(os.urandom(size))
    layout, digest = images.write_layout(str(layer), {"test": ref})
    await images.push_layout(layout, ref)
    return digest


async def registry_metric(cluster, name: str) -> float:
    body = (await AsyncHTTPClient().fetch(f"{cluster.ksm_url}/metrics/registry")).body.decode()
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in the registry's metrics:\n{body}")


@pytest.mark.slow
async def test_collection_frees_deleted_images_and_keeps_the_others(cluster, tmp_path) -> None:
    repo = f"{cluster.registry_host}/gc-test"
    storage = cluster.registry.storage_dir
    deleted = await push_random_image(tmp_path, f"{repo}:deleted", 3 << 20)
    kept = await push_random_image(tmp_path, f"{repo}:kept", 1 << 20)
    await images.delete(f"{repo}@{deleted}")
    before = registrygc.storage_bytes(storage)
    assert await registry_metric(cluster, "registry_storage_bytes") == before
    runs = await registry_metric(cluster, 'registry_gc_runs_total{outcome="done"}')

    result = await cluster.collect_registry_garbage()

    assert not result.skipped
    assert result.before == before
    assert result.freed >= 3 << 20, result
    after = registrygc.storage_bytes(storage)
    assert after == result.after == await registry_metric(cluster, "registry_storage_bytes")
    assert await registry_metric(cluster, 'registry_gc_runs_total{outcome="done"}') == runs + 1
    # The registry serves again on the same address; the kept image is whole (its blob is
    # readable), and so are the node images the kubelets pull.
    assert (await images.inspect(f"{repo}@{kept}"))["digest"] == kept
    await run_command(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{repo}@{kept}",
            f"dir:{tmp_path / 'pulled'}",
        ],
        timeout=120,
    )
    assert sum(f.stat().st_size for f in (tmp_path / "pulled").iterdir()) >= 1 << 20
    for ref in cluster.images.values():
        await images.inspect(ref)
    await images.delete(f"{repo}@{kept}")


@pytest.mark.slow
async def test_collection_waits_while_an_agent_cannot_say_it_is_idle(cluster) -> None:
    node, agent = next(iter(cluster.agents.items()))
    registry_pid = cluster.registry.pid
    os.kill(agent.pid, signal.SIGSTOP)  # a hung agent may still have a push running
    try:
        result = await cluster.collect_registry_garbage()
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    assert result.skipped.startswith(f"the agent on {node} did not answer"), result
    assert cluster.registry.pid == registry_pid  # the registry was never stopped
    assert await registry_metric(cluster, 'registry_gc_runs_total{outcome="skipped"}') >= 1
