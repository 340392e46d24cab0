"""Checkpoint images: OCI images whose single layer is a checkpoint archive.

The kubelet's archive is the image's single layer as it is: hashed once, hard-linked into an
OCI layout beside it and streamed to the registry by ``skopeo``, which also inspects and
deletes images; the registry protocol is never spoken here.
The image carries the container's name under both ``org.criu.checkpoint.container.name``
(which containerd looks for) and ``io.kubernetes.cri-o.annotations.checkpoint.name`` (CRI-O's)
in its manifest annotations, with checkpointctl's other metadata: see
:func:`jhub_suspend.archive.checkpoint_image_annotations`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import platform
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import archive as ckpt
from .commands import CommandError, run_command
from .errors import OwnError

log = logging.getLogger(__name__)


class ImageError(OwnError, RuntimeError):
    """An image operation failed."""


class ImageNotFound(ImageError):
    """The registry has no such image (manifest or repository unknown)."""

    status = 404


class ImagePushFailed(ImageError):
    """The image was built but the registry did not take it."""

    status = 503


@dataclass
class ImageConfig:
    """How skopeo is run: its path, each command's time limit, registry credentials."""

    skopeo: str = "skopeo"
    timeout: float = 300.0
    #: a registry credentials file (docker ``config.json`` format), passed as ``--authfile``
    authfile: str | None = None

    def auth_args(self, flag: str = "--authfile") -> list[str]:
        """``[flag, authfile]`` when a credentials file is configured, else nothing."""
        return [flag, self.authfile] if self.authfile else []


#: the configuration used when a call does not pass one (the cluster may replace it)
default_config = ImageConfig()

# skopeo delete says "Image may not exist" for an image that is already gone.
_NOT_FOUND_MARKERS = ("manifest unknown", "name unknown", "not found", "may not exist")


def _is_not_found(message: str) -> bool:
    low = message.lower()
    return any(m in low for m in _NOT_FOUND_MARKERS)


def pinned_reference(ref: str) -> str:
    """``repo:tag@digest`` as container runtimes read it: the digest wins and the tag is dropped
    (skopeo refuses references that carry both)."""
    name, at, digest = ref.partition("@")
    if not at:
        return ref
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        last[-1] = last[-1].split(":", 1)[0]
        name = "/".join(last)
    return f"{name}@{digest}"


def _docker(ref: str) -> str:
    ref = ref.removeprefix("docker://")
    return f"docker://{pinned_reference(ref)}"


def _tls(flag: str, tls_verify: bool) -> str:
    return f"{flag}={'true' if tls_verify else 'false'}"


def _error(action: str, ref: str, e: CommandError) -> ImageError:
    detail = (e.stderr or e.stdout).strip().splitlines()
    reason = detail[-1] if detail else str(e)
    # skopeo's messages look like: time="..." level=fatal msg="...: manifest unknown"
    if 'msg="' in reason:
        reason = reason.split('msg="', 1)[1].rstrip('"')
    if e.returncode is None:
        return ImageError(f"{action} {ref} timed out: {reason}")
    if _is_not_found(reason):
        return ImageNotFound(f"{action} {ref}: image not found ({reason})")
    if action == "pushing":
        return ImagePushFailed(f"{action} {ref} failed: {reason}")
    return ImageError(f"{action} {ref} failed: {reason}")


def archive_config(archive_path: str) -> dict[str, Any]:
    """An archive's ``config.dump`` (empty if it has none or it is unreadable)."""
    try:
        with tarfile.open(archive_path, "r:*") as tar:
            for member in tar:
                # A regular file only: a link's target may be missing (KeyError) or elsewhere.
                if member.isfile() and member.name.lstrip("./") == ckpt.CONFIG_DUMP_FILE:
                    f = tar.extractfile(member)
                    if f is not None:
                        config = json.load(f)
                        return config if isinstance(config, dict) else {}
    # EOFError: a compressed archive cut short; RecursionError: JSON nested too deep
    except (OSError, EOFError, tarfile.TarError, ValueError, RecursionError):
        pass
    return {}


def complete_annotations(annotations: Mapping[str, str], config: Mapping[str, Any]) -> dict:
    """``annotations`` with every runtime's checkpoint annotations added (pure): the container
    is the one a name annotation gives, else the ``config.dump`` name; checkpointctl's metadata
    comes from ``config.dump`` where the caller gave none."""
    given = [annotations[a] for a in ckpt.CHECKPOINT_NAME_ANNOTATIONS if annotations.get(a)]
    name = given[0] if given else config.get("name")
    if not name or not isinstance(name, str):
        return dict(annotations)
    return {
        **ckpt.checkpoint_image_annotations(name, config=config),
        **annotations,
        **{a: name for a in ckpt.CHECKPOINT_NAME_ANNOTATIONS},
    }


#: media types of the image: an OCI manifest, and the archive as an uncompressed tar layer,
#: which containerd and CRI-O both unpack
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
#: the layout directory built beside an archive ends so (see :func:`layout_path`)
LAYOUT_SUFFIX = ".oci"


def checkpoint_image_blobs(
    layer_digest: str, layer_size: int, annotations: Mapping[str, str]
) -> tuple[bytes, bytes]:
    """The config and manifest (JSON bytes) of a checkpoint image whose single layer is the
    archive, uncompressed (pure). The layer's digest is also its diff_id.

    The annotations are also the config's labels: container runtimes know an image by its
    config's digest, so two images of one archive with different annotations must not share
    a config (containerd would take one for the other)."""
    config = {
        "architecture": ckpt.GO_ARCH.get(platform.machine(), platform.machine()),
        "os": "linux",
        "config": {"Labels": dict(sorted(annotations.items()))},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": _digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest, "size": layer_size}],
        "annotations": dict(sorted(annotations.items())),
    }
    return config_bytes, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: str) -> str:
    """The sha256 digest of a file, read in chunks: memory does not grow with its size."""
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def layout_path(archive_path: str) -> str:
    """Where the image layout for an archive is built: beside it, on the same filesystem (for
    the hard link), named after it without the colons of its timestamp, which skopeo's
    ``oci:PATH:TAG`` references cannot hold (pure)."""
    directory, name = os.path.split(archive_path)
    return os.path.join(directory, name.replace(":", "_") + LAYOUT_SUFFIX)


def write_layout(archive_path: str, annotations: Mapping[str, str]) -> tuple[str, str]:
    """An OCI layout beside the archive whose layer *is* the archive: a hard link, so nothing
    is copied or repacked and the node's disk holds the bytes once. Returns the layout's
    directory and the manifest's digest."""
    layout = layout_path(archive_path)
    shutil.rmtree(layout, ignore_errors=True)
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs, mode=0o700)
    layer_digest = file_digest(archive_path)
    os.link(archive_path, os.path.join(blobs, layer_digest.split(":", 1)[1]))
    config, manifest = checkpoint_image_blobs(
        layer_digest, os.path.getsize(archive_path), annotations
    )
    for blob in (config, manifest):
        with open(os.path.join(blobs, hashlib.sha256(blob).hexdigest()), "wb") as f:
            f.write(blob)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": _digest(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "checkpoint"},
            }
        ],
    }
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return layout, _digest(manifest)


async def build_and_push(
    archive_path: str,
    ref: str,
    annotations: Mapping[str, str],
    *,
    tls_verify: bool = False,
    config: ImageConfig | None = None,
) -> str:
    """Push the archive at ``archive_path`` as a checkpoint image to ``ref``; return the
    manifest's digest.

    The archive becomes the image's single, uncompressed layer as it is: one pass to hash it,
    then skopeo streams it to the registry (``--preserve-digests``: no recompression, so the
    digest computed here is the one the registry stores). ``annotations`` become manifest
    annotations, completed with every runtime's checkpoint annotations
    (:func:`complete_annotations`). The layout beside the archive is removed after.
    """
    cfg = config or default_config
    if not await asyncio.to_thread(os.path.isfile, archive_path):
        raise ImageError(f"checkpoint archive {archive_path} does not exist")
    ann = complete_annotations(annotations, await asyncio.to_thread(archive_config, archive_path))
    if not ann.get(ckpt.CRIU_CHECKPOINT_NAME_ANNOTATION):
        raise ImageError(
            f"{archive_path} has no config.dump name; pass the "
            f"{ckpt.CRIU_CHECKPOINT_NAME_ANNOTATION} annotation"
        )
    try:
        layout, digest = await asyncio.to_thread(write_layout, archive_path, ann)
    except OSError as e:
        await asyncio.to_thread(shutil.rmtree, layout_path(archive_path), True)
        raise ImageError(f"building checkpoint image {ref} failed: {e}") from e
    try:
        await push_layout(layout, ref, tls_verify=tls_verify, config=cfg)
    finally:
        await asyncio.to_thread(shutil.rmtree, layout, True)
    log.info("pushed checkpoint image %s (%s)", ref, digest)
    return digest


async def push_layout(
    layout: str, ref: str, *, tls_verify: bool = False, config: ImageConfig | None = None
) -> None:
    """Push the image of a layout :func:`write_layout` built to ``ref``, digests preserved."""
    cfg = config or default_config
    try:
        await run_command(
            [
                cfg.skopeo,
                "copy",
                "--quiet",
                "--preserve-digests",
                _tls("--dest-tls-verify", tls_verify),
                *cfg.auth_args("--dest-authfile"),
                f"oci:{layout}:checkpoint",
                _docker(ref),
            ],
            timeout=cfg.timeout,
        )
    except CommandError as e:
        raise _error("pushing", ref, e) from e


async def inspect(
    ref: str, *, tls_verify: bool = False, config: ImageConfig | None = None
) -> dict[str, Any]:
    """``{"digest", "annotations", "size", "media_type", "layers"}`` of the image at ``ref``.

    ``digest`` is the manifest's digest, ``annotations`` its manifest annotations, ``size``
    the sum of its layers' (compressed) sizes. Raises :class:`ImageNotFound` if absent.
    """
    cfg = config or default_config
    try:
        result = await run_command(
            [
                cfg.skopeo,
                "inspect",
                "--raw",
                _tls("--tls-verify", tls_verify),
                *cfg.auth_args(),
                _docker(ref),
            ],
            timeout=cfg.timeout,
        )
    except CommandError as e:
        raise _error("inspecting", ref, e) from e
    return manifest_facts(ref, result.stdout)


def manifest_facts(ref: str, raw: str) -> dict[str, Any]:
    """What :func:`inspect` says of the image manifest ``raw`` that the registry returned for
    ``ref`` (pure); :class:`ImageError` if it is not an image manifest."""
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ImageError(f"inspecting {ref}: the registry returned no JSON manifest") from e
    if not isinstance(manifest, dict):
        raise ImageError(f"inspecting {ref}: the manifest is a JSON {type(manifest).__name__}")
    if "manifests" in manifest:
        raise ImageError(f"{ref} is an image index, not a checkpoint image")
    layers = manifest.get("layers") or []
    annotations = manifest.get("annotations") or {}
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise ImageError(f"inspecting {ref}: the manifest's layers are not a list of objects")
    sizes = [layer.get("size", 0) for layer in layers]
    if not all(type(size) is int and size >= 0 for size in sizes):
        raise ImageError(
            f"inspecting {ref}: a layer's size is not a number of bytes: {sizes!r:.200}"
        )
    if not isinstance(annotations, dict):
        raise ImageError(f"inspecting {ref}: the manifest's annotations are not an object")
    return {
        "digest": _digest(raw.encode()),
        "annotations": dict(annotations),
        "size": sum(sizes),
        "media_type": manifest.get("mediaType", ""),
        "layers": [layer.get("digest", "") for layer in layers],
    }


async def delete(ref: str, *, tls_verify: bool = False, config: ImageConfig | None = None) -> None:
    """Delete the image ``ref`` from its registry (the registry must allow deletes)."""
    cfg = config or default_config
    try:
        await run_command(
            [
                cfg.skopeo,
                "delete",
                _tls("--tls-verify", tls_verify),
                *cfg.auth_args(),
                _docker(ref),
            ],
            timeout=cfg.timeout,
        )
    except CommandError as e:
        raise _error("deleting", ref, e) from e
    log.info("deleted checkpoint image %s", ref)
