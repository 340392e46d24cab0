"""Checkpoint images: the annotations that make an image one for every runtime, and how they
are referenced."""

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from conftest import CONTAINERD, INSTALL_HINT, require_command

from jhub_suspend.archive import (
    CHECKPOINT_NAME_ANNOTATIONS,
    CRIO_CHECKPOINT_NAME_ANNOTATION,
    CRIU_CHECKPOINT_NAME_ANNOTATION,
    checkpoint_image_annotations,
)
from jhub_suspend.images import (
    LAYER_MEDIA_TYPE,
    checkpoint_image_blobs,
    complete_annotations,
    file_digest,
    pinned_reference,
    write_layout,
)

# containerd's config.dump of a notebook container, as CheckpointContainer writes it.
CONFIG_DUMP = {
    "id": "e3ad042da3bd",
    "name": "notebook_jupyter-alice_default_33e38a38_0",
    "rootfsImageName": "registry.example.org/library/notebook:latest",
    "rootfsImageRef": "registry.example.org/library/notebook@sha256:e918",
    "runtime": "io.containerd.runc.v2",
}


def test_every_runtime_finds_the_container_name():
    ann = checkpoint_image_annotations("notebook", pod="jupyter-alice", namespace="default")
    assert ann[CRIU_CHECKPOINT_NAME_ANNOTATION] == "notebook"
    assert ann[CRIO_CHECKPOINT_NAME_ANNOTATION] == "notebook"
    assert ann["org.criu.checkpoint.pod.name"] == "jupyter-alice"
    assert ann["org.criu.checkpoint.pod.namespace"] == "default"
    assert ann["org.criu.checkpoint.host.arch"] in ("amd64", "arm64")
    assert ann["org.criu.checkpoint.engine.name"] == "jhub-suspend"


def test_the_archive_adds_what_checkpointctl_shows():
    ann = checkpoint_image_annotations("notebook", config=CONFIG_DUMP)
    assert ann["org.criu.checkpoint.rootfsImageName"] == CONFIG_DUMP["rootfsImageName"]
    assert ann["org.criu.checkpoint.runtime.name"] == "io.containerd.runc.v2"
    # only checkpointctl's names, no empty values
    assert all(
        k.startswith("org.criu.checkpoint.") or k in CHECKPOINT_NAME_ANNOTATIONS for k in ann
    )
    assert all(ann.values())


@pytest.mark.parametrize(
    "given",
    [
        {},  # nothing: the name comes from config.dump, as runtimes name their containers there
        {CRIO_CHECKPOINT_NAME_ANNOTATION: "notebook"},  # what agents sent before
        {CRIU_CHECKPOINT_NAME_ANNOTATION: "notebook"},
    ],
)
def test_a_built_image_always_carries_both_names(given):
    config = {**CONFIG_DUMP, "name": "notebook"}
    ann = complete_annotations({**given, "jhub-suspend.jupyter.org/user": "alice"}, config)
    assert {ann[a] for a in CHECKPOINT_NAME_ANNOTATIONS} == {"notebook"}
    assert ann["jhub-suspend.jupyter.org/user"] == "alice"
    assert ann["org.criu.checkpoint.rootfsImageName"] == CONFIG_DUMP["rootfsImageName"]


def test_the_callers_name_wins_over_config_dump():
    ann = complete_annotations({CRIO_CHECKPOINT_NAME_ANNOTATION: "notebook"}, CONFIG_DUMP)
    assert ann[CRIU_CHECKPOINT_NAME_ANNOTATION] == "notebook"


def test_the_installed_containerd_looks_for_checkpointctls_name():
    """The name containerd's checkIfCheckpointOCIImage reads (from checkpointctl's metadata
    package) is compiled into the containerd binary the local cluster runs: check ours against
    it, so an upstream rename fails here rather than in every restore."""
    binary = require_command(CONTAINERD, INSTALL_HINT)
    with open(binary, "rb") as f:
        data = f.read()
    # Go lays string constants end to end: find every org.criu.checkpoint.* name prefix.
    names = set(re.findall(rb"org\.criu\.checkpoint\.[a-z.]*name", data))
    assert CRIU_CHECKPOINT_NAME_ANNOTATION.encode() in names, names
    assert CRIU_CHECKPOINT_NAME_ANNOTATION in CHECKPOINT_NAME_ANNOTATIONS


def test_pinned_reference_drops_the_tag_when_a_digest_is_given():
    digest = "sha256:" + "a" * 64
    assert pinned_reference(f"127.0.0.1:5000/ckpt/alice:v1@{digest}") == (
        f"127.0.0.1:5000/ckpt/alice@{digest}"
    )
    assert pinned_reference("127.0.0.1:5000/ckpt/alice:v1") == "127.0.0.1:5000/ckpt/alice:v1"
    assert pinned_reference(f"registry/alice@{digest}") == f"registry/alice@{digest}"


def test_the_archive_is_the_layer_as_it_is(tmp_path):
    archive = tmp_path / "checkpoint-jupyter-alice_default-notebook-2026-11-30T12:29:36Z.tar"
    archive.write_bytes(os.urandom(3 << 20))
    layout, digest = write_layout(str(archive), {CRIU_CHECKPOINT_NAME_ANNOTATION: "notebook"})
    # beside the archive, without the colons skopeo's oci:PATH:TAG cannot hold
    assert layout == str(
        tmp_path / "checkpoint-jupyter-alice_default-notebook-2026-11-30T12_29_36Z.tar.oci"
    )
    layer_digest = "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    assert file_digest(str(archive)) == layer_digest
    # a hard link: the node's disk holds the bytes once
    blob = os.path.join(layout, "blobs", "sha256", layer_digest.split(":")[1])
    assert os.stat(blob).st_ino == archive.stat().st_ino
    index = json.loads(Path(layout, "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["digest"] == digest
    manifest_bytes = Path(layout, "blobs", "sha256", digest.split(":")[1]).read_bytes()
    manifest = json.loads(manifest_bytes)
    assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == digest
    (layer,) = manifest["layers"]
    assert layer == {"mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest, "size": 3 << 20}
    assert manifest["annotations"] == {CRIU_CHECKPOINT_NAME_ANNOTATION: "notebook"}


def test_image_config_names_the_uncompressed_layer():
    config, manifest = checkpoint_image_blobs("sha256:" + "c" * 64, 10, {"a": "b"})
    cfg, man = json.loads(config), json.loads(manifest)
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + "c" * 64]}
    assert cfg["os"] == "linux" and cfg["architecture"] in ("amd64", "arm64")
    assert man["config"]["digest"] == "sha256:" + hashlib.sha256(config).hexdigest()
    assert man["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    # runtimes know images by their config: other annotations, another image
    other, _ = checkpoint_image_blobs("sha256:" + "c" * 64, 10, {"a": "c"})
    assert other != config
