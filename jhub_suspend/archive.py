"""Checkpoint archives laid out as CRI-O writes them (and checkpointctl reads them).

An archive is an uncompressed tar (CRI-O's default) of::

    checkpoint/        CRIU's image files
    config.dump        JSON: id, name, rootfsImage*, runtime, createdTime, checkpointedTime, ...
    spec.dump          the OCI runtime spec (JSON) with the container's annotations
    rootfs-diff.tar    changes to the container's root filesystem (empty here: no rootfs)
    deleted.files      JSON list of deleted rootfs files (empty)
    network.status     JSON list of CNI results: the pod's interface and address
    stats-dump         CRIU's dump statistics
    dump.log           CRIU's dump log

The file names and JSON keys are those of checkpointctl's ``lib/metadata.go`` and CRI-O's
``internal/lib/checkpoint.go``. What this runtime needs to restore (the old stdout/stderr pipe
inodes, the key of the external network namespace, the pod's original address) goes into
``spec.dump`` annotations under :data:`ANNOTATION_PREFIX`.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# checkpointctl lib/metadata.go
CHECKPOINT_DIRECTORY = "checkpoint"
CONFIG_DUMP_FILE = "config.dump"
SPEC_DUMP_FILE = "spec.dump"
NETWORK_STATUS_FILE = "network.status"
ROOTFS_DIFF_TAR = "rootfs-diff.tar"
DELETED_FILES_FILE = "deleted.files"
STATS_DUMP_FILE = "stats-dump"
STATS_RESTORE_FILE = "stats-restore"
DUMP_LOG_FILE = "dump.log"

#: the image annotation that makes CRI-O restore instead of start (and the container's name)
CHECKPOINT_NAME_ANNOTATION = "io.kubernetes.cri-o.annotations.checkpoint.name"

# CRI-O's spec annotations that checkpointctl shows
ANNOTATION_CONTAINER_MANAGER = "io.container.manager"
ANNOTATION_CRIO_METADATA = "io.kubernetes.cri-o.Metadata"
ANNOTATION_CRIO_CREATED = "io.kubernetes.cri-o.Created"
ANNOTATION_CRIO_IP0 = "io.kubernetes.cri-o.IP.0"
ANNOTATION_CRIO_CONTAINER_NAME = "io.kubernetes.cri-o.ContainerName"
ANNOTATION_CRIO_IMAGE_NAME = "io.kubernetes.cri-o.ImageName"
ANNOTATION_POD_NAME = "io.kubernetes.pod.name"
ANNOTATION_POD_NAMESPACE = "io.kubernetes.pod.namespace"
ANNOTATION_POD_UID = "io.kubernetes.pod.uid"
ANNOTATION_CONTAINER_NAME = "io.kubernetes.container.name"

# this runtime's own annotations
ANNOTATION_PREFIX = "jhub-suspend.jupyter.org/"
ANNOTATION_NETNS_KEY = ANNOTATION_PREFIX + "external-netns-key"
ANNOTATION_STDIO_PIPES = ANNOTATION_PREFIX + "stdio-pipe-inodes"
ANNOTATION_POD_IP = ANNOTATION_PREFIX + "pod-ip"
ANNOTATION_TCP_MODE = ANNOTATION_PREFIX + "tcp"

CONTAINER_MANAGER = "cri-o"
RUNTIME_NAME = "jhub-suspend-localcluster"


class ArchiveError(RuntimeError):
    """A checkpoint archive is missing, unreadable or not laid out as expected."""


def go_time(ts: datetime | float | None = None) -> str:
    """A timestamp as Go's ``time.Time`` marshals it to JSON (RFC 3339, UTC, nanoseconds)."""
    if ts is None:
        dt = datetime.now(UTC)
    elif isinstance(ts, datetime):
        dt = ts.astimezone(UTC)
    else:
        dt = datetime.fromtimestamp(ts, UTC)
    frac = f"{dt.microsecond:06d}".rstrip("0")
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def parse_go_time(value: str) -> datetime:
    """The inverse of :func:`go_time` (accepts up to nanoseconds and a ``Z`` or offset)."""
    v = value.strip()
    if v.endswith("Z"):
        v = v[:-1] + "+00:00"
    if "." in v:
        head, rest = v.split(".", 1)
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        tz = rest[len(digits) :]
        v = f"{head}.{digits[:6].ljust(6, '0')}{tz}"
    return datetime.fromisoformat(v)


def config_dump(
    *,
    container_id: str,
    name: str,
    rootfs_image_name: str = "",
    rootfs_image: str = "",
    rootfs_image_ref: str = "",
    runtime: str = RUNTIME_NAME,
    created: datetime | float | None = None,
    checkpointed: datetime | float | None = None,
    restored: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``config.dump`` as CRI-O writes it (checkpointctl's ``ContainerConfig``)."""
    config: dict[str, Any] = {
        "id": container_id,
        "name": name,
        "rootfsImage": rootfs_image or rootfs_image_name,
        "rootfsImageRef": rootfs_image_ref,
        "rootfsImageName": rootfs_image_name,
        "runtime": runtime,
        "createdTime": go_time(created),
        "checkpointedTime": go_time(checkpointed),
        "restoredTime": "0001-01-01T00:00:00Z",
        "restored": restored,
    }
    if extra:
        config.update(extra)
    return config


def spec_dump(
    *,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str = "/",
    hostname: str = "",
    netns_path: str = "",
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A minimal OCI runtime spec for the container (``spec.dump``)."""
    namespaces: list[dict[str, str]] = [{"type": "pid"}]
    namespaces.append(
        {"type": "network", "path": netns_path} if netns_path else {"type": "network"}
    )
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": os.geteuid(), "gid": os.getegid()},
            "args": list(args),
            "env": [f"{k}={v}" for k, v in (env or {}).items()],
            "cwd": cwd,
        },
        "root": {"path": "/", "readonly": False},
        "hostname": hostname,
        "annotations": dict(annotations or {}),
        "linux": {"namespaces": namespaces},
    }


def crio_annotations(
    *,
    container_name: str,
    pod_name: str,
    pod_namespace: str,
    pod_uid: str = "",
    pod_ip: str = "",
    image: str = "",
    created: datetime | float | None = None,
    attempt: int = 0,
) -> dict[str, str]:
    """The CRI-O spec annotations checkpointctl reads to describe a container."""
    ann = {
        ANNOTATION_CONTAINER_MANAGER: CONTAINER_MANAGER,
        ANNOTATION_CRIO_METADATA: json.dumps({"name": container_name, "attempt": attempt}),
        ANNOTATION_CRIO_CREATED: go_time(created),
        ANNOTATION_CRIO_CONTAINER_NAME: f"k8s_{container_name}_{pod_name}_{pod_namespace}_{pod_uid}_{attempt}",
        ANNOTATION_POD_NAME: pod_name,
        ANNOTATION_POD_NAMESPACE: pod_namespace,
        ANNOTATION_CONTAINER_NAME: container_name,
    }
    if pod_uid:
        ann[ANNOTATION_POD_UID] = pod_uid
    if pod_ip:
        ann[ANNOTATION_CRIO_IP0] = pod_ip
    if image:
        ann[ANNOTATION_CRIO_IMAGE_NAME] = image
    return ann


def network_status(
    *, ip: str, prefixlen: int, gateway: str, ifname: str = "eth0", sandbox: str = "", mac: str = ""
) -> list[dict[str, Any]]:
    """``network.status``: a list of CNI results (checkpointctl reads the first IP and MAC)."""
    iface: dict[str, Any] = {"name": ifname, "sandbox": sandbox}
    if mac:
        iface["mac"] = mac
    return [
        {
            "cniVersion": "1.0.0",
            "interfaces": [iface],
            "ips": [{"interface": 0, "address": f"{ip}/{prefixlen}", "gateway": gateway}],
            "routes": [{"dst": "0.0.0.0/0", "gw": gateway}],
            "dns": {},
        }
    ]


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.chmod(path, 0o600)


def empty_tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT):
        pass
    return buf.getvalue()


def write_metadata(
    work_dir: str,
    *,
    config: Mapping[str, Any],
    spec: Mapping[str, Any],
    net_status: Sequence[Mapping[str, Any]] = (),
    deleted_files: Sequence[str] = (),
) -> None:
    """Write the metadata files next to ``work_dir/checkpoint`` (CRIU's images)."""
    os.makedirs(os.path.join(work_dir, CHECKPOINT_DIRECTORY), exist_ok=True)
    _write_json(os.path.join(work_dir, CONFIG_DUMP_FILE), dict(config))
    _write_json(os.path.join(work_dir, SPEC_DUMP_FILE), dict(spec))
    _write_json(os.path.join(work_dir, NETWORK_STATUS_FILE), [dict(n) for n in net_status])
    _write_json(os.path.join(work_dir, DELETED_FILES_FILE), list(deleted_files))
    rootfs_diff = os.path.join(work_dir, ROOTFS_DIFF_TAR)
    if not os.path.exists(rootfs_diff):
        with open(rootfs_diff, "wb") as f:
            f.write(empty_tar_bytes())


ARCHIVE_MEMBERS = (
    STATS_DUMP_FILE,
    DUMP_LOG_FILE,
    CHECKPOINT_DIRECTORY,
    CONFIG_DUMP_FILE,
    SPEC_DUMP_FILE,
    ROOTFS_DIFF_TAR,
    DELETED_FILES_FILE,
    NETWORK_STATUS_FILE,
)


def write_archive(work_dir: str, archive_path: str) -> int:
    """Tar (uncompressed) the archive members found in ``work_dir`` into ``archive_path``.

    The archive is created with mode 0600: it holds every memory page of the container.
    Returns its size in bytes.
    """
    if not os.path.isdir(os.path.join(work_dir, CHECKPOINT_DIRECTORY)):
        raise ArchiveError(f"{work_dir} has no {CHECKPOINT_DIRECTORY}/ directory")
    for required in (CONFIG_DUMP_FILE, SPEC_DUMP_FILE):
        if not os.path.exists(os.path.join(work_dir, required)):
            raise ArchiveError(f"{work_dir} has no {required}")
    tmp = archive_path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with (
            os.fdopen(fd, "wb") as f,
            tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for member in ARCHIVE_MEMBERS:
                path = os.path.join(work_dir, member)
                if os.path.exists(path):
                    tar.add(path, arcname=member, recursive=True)
        os.replace(tmp, archive_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return os.path.getsize(archive_path)


def _safe_members(tar: tarfile.TarFile, dest: str) -> list[tarfile.TarInfo]:
    root = os.path.realpath(dest)
    members = []
    for m in tar.getmembers():
        if not (m.isfile() or m.isdir()):
            raise ArchiveError(f"unexpected entry {m.name!r} (only files and directories)")
        target = os.path.realpath(os.path.join(root, m.name))
        if target != root and not target.startswith(root + os.sep):
            raise ArchiveError(f"entry {m.name!r} points outside the archive")
        members.append(m)
    return members


def extract_archive(archive_path: str, dest_dir: str) -> str:
    """Unpack a checkpoint archive (plain or compressed tar) into ``dest_dir``; return it."""
    os.makedirs(dest_dir, exist_ok=True)
    try:
        with tarfile.open(archive_path, mode="r:*") as tar:
            members = _safe_members(tar, dest_dir)
            if hasattr(tarfile, "tar_filter"):  # Python >= 3.11.4
                tar.extractall(dest_dir, members=members, filter="tar")
            else:  # _safe_members has already refused links and paths that escape
                tar.extractall(dest_dir, members=members)
    except (OSError, tarfile.TarError) as e:
        raise ArchiveError(f"cannot read checkpoint archive {archive_path}: {e}") from e
    return dest_dir


@dataclass
class CheckpointInfo:
    """What a checkpoint directory says about itself."""

    path: str
    config: dict[str, Any]
    spec: dict[str, Any]
    network_status: list[dict[str, Any]] = field(default_factory=list)

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.spec.get("annotations") or {})

    @property
    def images_dir(self) -> str:
        return os.path.join(self.path, CHECKPOINT_DIRECTORY)

    @property
    def name(self) -> str:
        return str(self.config.get("name", ""))

    @property
    def stdio_pipe_inodes(self) -> list[int]:
        raw = self.annotations.get(ANNOTATION_STDIO_PIPES, "")
        return [int(x) for x in raw.split(",") if x.strip()]

    @property
    def netns_key(self) -> str:
        return self.annotations.get(ANNOTATION_NETNS_KEY, "")

    @property
    def pod_ip(self) -> str:
        return self.annotations.get(ANNOTATION_POD_IP, "") or self.annotations.get(
            ANNOTATION_CRIO_IP0, ""
        )


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise ArchiveError(f"checkpoint has no {os.path.basename(path)} ({path})") from e
    except (OSError, ValueError) as e:
        raise ArchiveError(f"cannot read {path}: {e}") from e


def read_checkpoint(path: str) -> CheckpointInfo:
    """Read an extracted checkpoint directory's metadata and check its layout."""
    if not os.path.isdir(os.path.join(path, CHECKPOINT_DIRECTORY)):
        raise ArchiveError(f"{path} is not a checkpoint: no {CHECKPOINT_DIRECTORY}/ directory")
    config = _read_json(os.path.join(path, CONFIG_DUMP_FILE))
    spec = _read_json(os.path.join(path, SPEC_DUMP_FILE))
    if not isinstance(config, dict) or not isinstance(spec, dict):
        raise ArchiveError(f"{path}: config.dump and spec.dump must be JSON objects")
    net: list[dict[str, Any]] = []
    if os.path.exists(os.path.join(path, NETWORK_STATUS_FILE)):
        loaded = _read_json(os.path.join(path, NETWORK_STATUS_FILE))
        net = loaded if isinstance(loaded, list) else []
    return CheckpointInfo(path, config, spec, net)
