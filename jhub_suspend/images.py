"""Checkpoint images: OCI images whose single layer is a checkpoint archive.

Built and pushed with ``buildah`` (as ``checkpointctl build`` and the Kubernetes docs do),
inspected, pulled and deleted with ``skopeo``; the registry protocol is never spoken here.
The image carries the container's name under both ``org.criu.checkpoint.container.name``
(which containerd looks for) and ``io.kubernetes.cri-o.annotations.checkpoint.name`` (CRI-O's)
in its manifest annotations, with checkpointctl's other metadata: see
:func:`jhub_suspend.archive.checkpoint_image_annotations`.

buildah keeps its own storage (``vfs`` driver) under :attr:`ImageConfig.root`, chosen with
command-line flags, so nothing under ``/etc`` needs to change.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import archive as ckpt
from .commands import CommandError, run_command

log = logging.getLogger(__name__)


class ImageError(RuntimeError):
    """An image operation failed."""


class ImageNotFound(ImageError):
    """The registry has no such image (manifest or repository unknown)."""


class ImagePushFailed(ImageError):
    """The image was built but the registry did not take it."""


@dataclass
class ImageConfig:
    """Where buildah keeps its working containers and images, and command time limits."""

    root: str = "/var/lib/jhub-suspend/containers/storage"
    runroot: str = "/run/jhub-suspend/containers"
    driver: str = "vfs"
    buildah: str = "buildah"
    skopeo: str = "skopeo"
    timeout: float = 300.0
    #: a registry credentials file (docker ``config.json`` format), passed as ``--authfile``
    authfile: str | None = None

    def auth_args(self, flag: str = "--authfile") -> list[str]:
        """``[flag, authfile]`` when a credentials file is configured, else nothing."""
        return [flag, self.authfile] if self.authfile else []

    def buildah_argv(self, *args: str) -> list[str]:
        return [
            self.buildah,
            "--root",
            self.root,
            "--runroot",
            self.runroot,
            "--storage-driver",
            self.driver,
            *args,
        ]


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


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def archive_config(archive_path: str) -> dict[str, Any]:
    """An archive's ``config.dump`` (empty if it has none or it is unreadable)."""
    try:
        with tarfile.open(archive_path, "r:*") as tar:
            for member in tar:
                if member.name.lstrip("./") == ckpt.CONFIG_DUMP_FILE:
                    f = tar.extractfile(member)
                    if f is not None:
                        config = json.load(f)
                        return config if isinstance(config, dict) else {}
    except (OSError, tarfile.TarError, ValueError):
        pass
    return {}


def complete_annotations(annotations: Mapping[str, str], config: Mapping[str, Any]) -> dict:
    """``annotations`` with every runtime's checkpoint annotations added (pure): the container
    is the one a name annotation gives, else the ``config.dump`` name; checkpointctl's metadata
    comes from ``config.dump`` where the caller gave none."""
    given = [annotations[a] for a in ckpt.CHECKPOINT_NAME_ANNOTATIONS if annotations.get(a)]
    name = given[0] if given else str(config.get("name", ""))
    if not name:
        return dict(annotations)
    return {
        **ckpt.checkpoint_image_annotations(name, config=config),
        **annotations,
        **{a: name for a in ckpt.CHECKPOINT_NAME_ANNOTATIONS},
    }


async def build_and_push(
    archive_path: str,
    ref: str,
    annotations: Mapping[str, str],
    *,
    tls_verify: bool = False,
    config: ImageConfig | None = None,
) -> str:
    """Build a checkpoint image from ``archive_path``, push it to ``ref``; return its digest.

    ``annotations`` become manifest annotations, completed with every runtime's checkpoint
    annotations (:func:`complete_annotations`). The working container and local image are
    removed after.
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
    local = f"localhost/jhub-suspend-checkpoint-{uuid.uuid4().hex[:12]}:latest"
    workdir = tempfile.mkdtemp(prefix="jhs-image-")
    digestfile = os.path.join(workdir, "digest")
    container = ""
    try:
        try:
            result = await run_command(cfg.buildah_argv("from", "scratch"), timeout=cfg.timeout)
            container = result.stdout.strip().splitlines()[-1]
            await run_command(
                cfg.buildah_argv("add", container, archive_path, "/"), timeout=cfg.timeout
            )
            config_args = ["config"]
            for key, value in sorted(ann.items()):
                config_args += ["--annotation", f"{key}={value}"]
            await run_command(cfg.buildah_argv(*config_args, container), timeout=cfg.timeout)
            await run_command(
                cfg.buildah_argv("commit", "-q", "--format", "oci", container, local),
                timeout=cfg.timeout,
            )
        except CommandError as e:
            raise _error("building checkpoint image", ref, e) from e
        try:
            await run_command(
                cfg.buildah_argv(
                    "push",
                    _tls("--tls-verify", tls_verify),
                    *cfg.auth_args(),
                    "--digestfile",
                    digestfile,
                    local,
                    _docker(ref),
                ),
                timeout=cfg.timeout,
            )
        except CommandError as e:
            raise _error("pushing", ref, e) from e
        digest = (await asyncio.to_thread(_read_text, digestfile)).strip()
        log.info("pushed checkpoint image %s (%s)", ref, digest)
        return digest
    finally:
        if container:
            await run_command(cfg.buildah_argv("rm", container), timeout=60, check=False)
        await run_command(cfg.buildah_argv("rmi", "-f", local), timeout=60, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


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
    raw = result.stdout
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise ImageError(f"inspecting {ref}: the registry returned no JSON manifest") from e
    if "manifests" in manifest:
        raise ImageError(f"{ref} is an image index, not a checkpoint image")
    layers = manifest.get("layers") or []
    return {
        "digest": "sha256:" + hashlib.sha256(raw.encode()).hexdigest(),
        "annotations": dict(manifest.get("annotations") or {}),
        "size": sum(int(layer.get("size", 0)) for layer in layers),
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
