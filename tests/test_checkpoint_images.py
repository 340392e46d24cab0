"""Checkpoint images: the annotations that make an image one for every runtime, and how they
are referenced."""

import re

import pytest
from conftest import CONTAINERD, INSTALL_HINT, require_command

from jhub_suspend.archive import (
    CHECKPOINT_NAME_ANNOTATIONS,
    CRIO_CHECKPOINT_NAME_ANNOTATION,
    CRIU_CHECKPOINT_NAME_ANNOTATION,
    checkpoint_image_annotations,
)
from jhub_suspend.images import complete_annotations, pinned_reference

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
