"""What the kubelet asks the runtime for: a pod's sandbox and containers as CRI messages (pure).

These are the kubelet's translations of a Pod object (kuberuntime_sandbox.go and
kuberuntime_container.go upstream): names and labels that identify the pod to the runtime, the
user a container runs as, its environment with downward-API fields, its mounts, and where its
log goes. No IO happens here, so they are tested without a runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .cri import cri

# Labels the kubelet puts on sandboxes and containers (kubelet/types/labels.go), and ours for
# the node: one containerd serves every node of the local cluster.
POD_NAME_LABEL = "io.kubernetes.pod.name"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
POD_UID_LABEL = "io.kubernetes.pod.uid"
CONTAINER_NAME_LABEL = "io.kubernetes.container.name"
NODE_LABEL = "jhub-suspend.localcluster/node"

#: the environment every container gets before the pod's own
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class RunAs:
    """The user a container runs as, from the pod's and the container's securityContext."""

    uid: int | None
    gid: int | None
    groups: tuple[int, ...]
    fs_group: int | None


def run_as(pod: dict, container: dict) -> RunAs:
    """Who the container runs as; ``uid`` None means the image's own user."""
    psc = pod["spec"].get("securityContext") or {}
    csc = container.get("securityContext") or {}
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup"))
    fs_group = psc.get("fsGroup")
    groups = tuple(
        dict.fromkeys(
            ([fs_group] if fs_group is not None else []) + list(psc.get("supplementalGroups", []))
        )
    )
    return RunAs(
        None if uid is None else int(uid),
        None if gid is None else int(gid),
        tuple(int(g) for g in groups),
        None if fs_group is None else int(fs_group),
    )


def container_env(container: dict, pod: dict, extra: dict[str, str]) -> dict[str, str]:
    """The container's own environment: the kubelet's additions, then the pod's ``env`` with
    ``$(VAR)`` references and downward-API ``fieldRef`` values resolved. The image's
    environment (PATH, HOME) is the runtime's to merge in."""
    env = dict(extra)
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = _expand(str(item["value"]), env)
        elif field_ref := (item.get("valueFrom") or {}).get("fieldRef"):
            env[item["name"]] = _field_path(pod, field_ref.get("fieldPath", ""))
    return env


def _expand(value: str, env: dict[str, str]) -> str:
    for k, v in env.items():
        value = value.replace(f"$({k})", v)
    return value


def _field_path(pod: dict, path: str) -> str:
    obj: object = pod
    for part in path.split("."):
        obj = obj.get(part, "") if isinstance(obj, dict) else ""
    return str(obj or "")


def volume_dirs(pod: dict, state_dir: str) -> dict[str, str]:
    """Host directories for the pod's volumes, by volume name.

    A PVC is a directory per claim, so it outlives the pod as a real volume does; other
    volumes live with the pod.
    """
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    dirs = {}
    for vol in pod["spec"].get("volumes") or []:
        if claim := vol.get("persistentVolumeClaim"):
            dirs[vol["name"]] = os.path.join(state_dir, "volumes", ns, claim["claimName"])
        else:
            dirs[vol["name"]] = os.path.join(state_dir, "pods", ns, name, "volumes", vol["name"])
    return dirs


def pod_log_dir(state_dir: str, pod: dict) -> str:
    """Where the runtime writes the pod's container logs (``/var/log/pods/NS_NAME_UID``)."""
    meta = pod["metadata"]
    return os.path.join(state_dir, "pods", meta["namespace"], meta["name"], "logs")


def sandbox_labels(pod: dict, node: str) -> dict[str, str]:
    meta = pod["metadata"]
    return {
        **{str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        POD_NAME_LABEL: meta["name"],
        POD_NAMESPACE_LABEL: meta["namespace"],
        POD_UID_LABEL: meta["uid"],
        NODE_LABEL: node,
    }


def sandbox_config(pod: dict, node: str, log_dir: str, attempt: int = 0) -> Any:
    """The PodSandboxConfig for ``pod`` on ``node``."""
    meta = pod["metadata"]
    psc = pod["spec"].get("securityContext") or {}
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(
            name=meta["name"], namespace=meta["namespace"], uid=meta["uid"], attempt=attempt
        ),
        hostname=pod["spec"].get("hostname") or meta["name"],
        log_directory=log_dir,
        labels=sandbox_labels(pod, node),
        annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
        linux=cri.LinuxPodSandboxConfig(
            cgroup_parent="",
            security_context=cri.LinuxSandboxSecurityContext(
                namespace_options=cri.NamespaceOption(
                    network=cri.POD, pid=cri.CONTAINER, ipc=cri.POD
                ),
                run_as_user=_int64(psc.get("runAsUser")),
                run_as_group=_int64(psc.get("runAsGroup")),
                supplemental_groups=[int(g) for g in psc.get("supplementalGroups", [])],
            ),
        ),
    )


def _int64(value: Any) -> Any:
    return None if value is None else cri.Int64Value(value=int(value))


def container_mounts(container: dict, volumes: dict[str, str]) -> list[Any]:
    """The container's volumeMounts as CRI mounts of the volumes' host directories."""
    mounts = []
    for m in container.get("volumeMounts") or []:
        if m["name"] not in volumes:
            raise ValueError(f"volumeMount {m['name']!r} names no volume of the pod")
        host = volumes[m["name"]]
        if sub := m.get("subPath"):
            host = os.path.join(host, sub)
        mounts.append(
            cri.Mount(
                container_path=m["mountPath"],
                host_path=host,
                readonly=bool(m.get("readOnly")),
            )
        )
    return mounts


def container_config(
    pod: dict,
    container: dict,
    *,
    image: str,
    volumes: dict[str, str],
    extra_env: dict[str, str],
    attempt: int = 0,
) -> Any:
    """The ContainerConfig for one of the pod's containers (``image`` as the runtime names it)."""
    meta = pod["metadata"]
    user = run_as(pod, container)
    env = container_env(container, pod, extra_env)
    return cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=container["name"], attempt=attempt),
        image=cri.ImageSpec(image=image, user_specified_image=container["image"]),
        command=list(container.get("command") or []),
        args=list(container.get("args") or []),
        working_dir=container.get("workingDir") or "",
        envs=[cri.KeyValue(key=k, value=v.encode()) for k, v in env.items()],
        mounts=container_mounts(container, volumes),
        labels={
            POD_NAME_LABEL: meta["name"],
            POD_NAMESPACE_LABEL: meta["namespace"],
            POD_UID_LABEL: meta["uid"],
            CONTAINER_NAME_LABEL: container["name"],
        },
        annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
        log_path=os.path.join(container["name"], f"{attempt}.log"),
        linux=cri.LinuxContainerConfig(
            security_context=cri.LinuxContainerSecurityContext(
                namespace_options=cri.NamespaceOption(
                    network=cri.POD, pid=cri.CONTAINER, ipc=cri.POD
                ),
                run_as_user=_int64(user.uid),
                run_as_group=_int64(user.gid),
                supplemental_groups=list(user.groups),
            ),
        ),
    )
