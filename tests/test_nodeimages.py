"""The node images scripts/install.sh builds, pushed to a real registry (docker-registry)."""

from __future__ import annotations

import asyncio
import json
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_command

from jhub_suspend.commands import run_command
from jhub_suspend.localcluster import nodeimages, services
from jhub_suspend.localcluster.services import ProcessGroup

LABEXTENSION = "opt/notebook/share/jupyter/labextensions/jhub-suspend/package.json"


def test_image_ref() -> None:
    assert (
        nodeimages.image_ref("127.0.0.1:5000", "busybox") == "127.0.0.1:5000/library/busybox:latest"
    )
    assert nodeimages.NODE_IMAGES == ("busybox", "notebook")
    assert nodeimages.oci_source("/x/images", "notebook") == "oci:/x/images/notebook:latest"


async def test_a_missing_image_fails_before_any_push(tmp_path: Path) -> None:
    (tmp_path / "busybox").mkdir()
    (tmp_path / "busybox" / "index.json").write_text("{}")
    # nothing listens on port 1: a push would fail with NodeImagePushFailed instead
    with pytest.raises(nodeimages.NodeImageMissing, match=r"'notebook'.*scripts/install\.sh"):
        await nodeimages.push_node_images("127.0.0.1:1", str(tmp_path))


@pytest.fixture
async def group() -> AsyncIterator[ProcessGroup]:
    g = ProcessGroup()
    yield g
    await g.stop_all(grace=2)


async def skopeo_inspect(ref: str, *flags: str) -> dict[str, Any]:
    result = await run_command(
        ["skopeo", "inspect", "--tls-verify=false", *flags, f"docker://{ref}"], timeout=60
    )
    return json.loads(result.stdout)


def layout_manifest(name: str) -> tuple[str, dict[str, Any]]:
    """The digest and the manifest of the image's OCI layout."""
    layout = Path(nodeimages.layout_dir(nodeimages.IMAGES_DIR, name))
    digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / Path(*digest.split(":"))).read_text())
    return digest, manifest


def layer_members(name: str) -> set[str]:
    """The paths in the image's (single) layer, from its OCI layout."""
    layout = Path(nodeimages.layout_dir(nodeimages.IMAGES_DIR, name))
    _, manifest = layout_manifest(name)
    members: set[str] = set()
    for layer in manifest["layers"]:
        with tarfile.open(layout / "blobs" / Path(*layer["digest"].split(":")), "r:*") as tar:
            members.update(m.name.removeprefix("./") for m in tar)
    return members


@pytest.mark.slow
async def test_push_node_images_to_a_registry(tmp_path: Path, group: ProcessGroup) -> None:
    require_command("skopeo", "run scripts/install.sh, which installs skopeo")
    require_command("docker-registry", "run scripts/install.sh, which installs docker-registry")
    for name in nodeimages.NODE_IMAGES:
        path = nodeimages.layout_dir(nodeimages.IMAGES_DIR, name)
        if not os.path.isfile(os.path.join(path, "index.json")):
            pytest.fail(f"node image {name} is missing in {path}: run scripts/install.sh")

    registry = await services.start_registry(tmp_path / "registry", group=group)
    refs = await nodeimages.push_node_images(registry.host)
    assert refs == {
        name: f"{registry.host}/library/{name}:latest" for name in nodeimages.NODE_IMAGES
    }

    for name, ref in refs.items():
        info = await skopeo_inspect(ref)
        # copied as the layout holds it: the same manifest, nothing recompressed
        assert info["Digest"] == layout_manifest(name)[0]
        assert len(info["Layers"]) == 1

    busybox = (await skopeo_inspect(refs["busybox"], "--config"))["config"]
    assert busybox["Cmd"] == ["sleep", "infinity"]
    notebook = (await skopeo_inspect(refs["notebook"], "--config"))["config"]
    assert notebook["User"] in ("1000:100", "1000")
    assert notebook["WorkingDir"] == "/home/jovyan"
    assert notebook["Cmd"] == ["jupyterhub-singleuser"]
    assert "HOME=/home/jovyan" in notebook["Env"]
    assert any(e.startswith("PATH=/opt/notebook/bin:") for e in notebook["Env"])

    busybox_files = await asyncio.to_thread(layer_members, "busybox")
    assert {"bin/busybox", "bin/sh", "bin/sleep", "bin/wget", "bin/nc"} <= busybox_files
    notebook_files = await asyncio.to_thread(layer_members, "notebook")
    assert LABEXTENSION in notebook_files
    assert "opt/notebook/bin/jupyterhub-singleuser" in notebook_files
    assert "home/jovyan" in notebook_files
