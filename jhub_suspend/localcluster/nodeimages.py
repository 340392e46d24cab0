"""The local cluster's node images: built once by ``scripts/build-images.sh`` (which
``scripts/install.sh`` runs) as OCI layouts in :data:`IMAGES_DIR`, and pushed with ``skopeo`` to
the cluster's registry, from which containerd pulls them as a node pulls any image.

- ``busybox``: Debian's static busybox, ``sleep infinity``; the sandbox ("pause") image, and a
  tiny image for tests.
- ``notebook``: a Jupyter user image (jupyterhub, jupyterlab, ipykernel and jhub-suspend's Lab
  extension in ``/opt/notebook``, user ``jovyan``, 1000:100).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable

from ..commands import CommandError, run_command
from .services import install_prefix

log = logging.getLogger(__name__)

#: where scripts/build-images.sh puts the OCI layouts (``JHUB_SUSPEND_IMAGES``, else
#: ``$JHUB_SUSPEND_PREFIX/images``)
IMAGES_DIR = os.environ.get("JHUB_SUSPEND_IMAGES") or str(install_prefix() / "images")
#: the images every node gets
NODE_IMAGES = ("busybox", "notebook")
INSTALL_HINT = "run scripts/install.sh, which builds the node images"


class NodeImageError(RuntimeError):
    """A node image could not be provided."""


class NodeImageMissing(NodeImageError):
    """The image's OCI layout has not been built."""


class NodeImagePushFailed(NodeImageError):
    """skopeo could not copy the image to the registry."""


def image_ref(registry_host: str, name: str) -> str:
    """The reference a node pulls the image ``name`` by, from the registry at ``registry_host``
    (``host:port``)."""
    return f"{registry_host}/library/{name}:latest"


def layout_dir(images_dir: str, name: str) -> str:
    """The OCI layout directory of the image ``name``."""
    return os.path.join(images_dir, name)


def oci_source(images_dir: str, name: str) -> str:
    """skopeo's name for the image in its OCI layout."""
    return f"oci:{layout_dir(images_dir, name)}:latest"


def check_layout(images_dir: str, name: str) -> None:
    """Raise :class:`NodeImageMissing` unless the image's OCI layout is there."""
    path = layout_dir(images_dir, name)
    if not os.path.isfile(os.path.join(path, "index.json")):
        raise NodeImageMissing(f"node image {name!r}: no OCI layout in {path}; {INSTALL_HINT}")


async def push_node_image(
    registry_host: str, name: str, images_dir: str = IMAGES_DIR, timeout: float = 300
) -> str:
    """Copy one image from its OCI layout to the (plain HTTP) registry; return its reference.

    Layers are copied as the layout holds them (gzip), so a push recompresses nothing.
    """
    check_layout(images_dir, name)
    ref = image_ref(registry_host, name)
    start = time.monotonic()
    try:
        await run_command(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                oci_source(images_dir, name),
                f"docker://{ref}",
            ],
            timeout=timeout,
        )
    except CommandError as e:
        raise NodeImagePushFailed(f"pushing node image {name!r} to {ref}: {e}") from e
    log.info("pushed node image %s in %.1f s", ref, time.monotonic() - start)
    return ref


async def push_node_images(
    registry_host: str,
    images_dir: str = IMAGES_DIR,
    names: Iterable[str] = NODE_IMAGES,
    timeout: float = 300,
) -> dict[str, str]:
    """Push the node images to the registry at ``registry_host``, side by side; return
    ``{name: reference}``.

    Every layout is checked first, so a missing image fails before anything is pushed
    (:class:`NodeImageMissing`, which says to run scripts/install.sh).
    """
    names = list(names)
    for name in names:
        check_layout(images_dir, name)
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = {
                name: tg.create_task(push_node_image(registry_host, name, images_dir, timeout))
                for name in names
            }
    except ExceptionGroup as group:
        # one clear error rather than a group (the other pushes were cancelled)
        raise group.exceptions[0] from None
    return {name: task.result() for name, task in tasks.items()}


__all__ = [
    "IMAGES_DIR",
    "NODE_IMAGES",
    "NodeImageError",
    "NodeImageMissing",
    "NodeImagePushFailed",
    "image_ref",
    "layout_dir",
    "oci_source",
    "push_node_image",
    "push_node_images",
]
