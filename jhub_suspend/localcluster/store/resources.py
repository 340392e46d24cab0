"""The resources the local API server serves, its API errors, and its clock format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..selectors import ApiError

Obj = dict[str, Any]


# --- resources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceInfo:
    """What the API server knows about one resource type."""

    plural: str
    kind: str
    singular: str
    namespaced: bool = True
    name_rule: str = "subdomain"  # "subdomain", "label" (RFC 1123) or "label1035"
    has_status: bool = False
    returns_deleted_object: bool = False
    short_names: tuple[str, ...] = ()
    group: str = ""  # "" is the core group, served under /api/v1
    version: str = "v1"

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, ``group/version`` for the others."""
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES: dict[str, ResourceInfo] = {
    info.plural: info
    for info in (
        ResourceInfo(
            "pods", "Pod", "pod", has_status=True, returns_deleted_object=True, short_names=("po",)
        ),
        ResourceInfo("events", "Event", "event", short_names=("ev",)),
        ResourceInfo(
            "services",
            "Service",
            "service",
            name_rule="label1035",
            has_status=True,
            returns_deleted_object=True,
            short_names=("svc",),
        ),
        ResourceInfo("endpoints", "Endpoints", "endpoints", short_names=("ep",)),
        ResourceInfo("secrets", "Secret", "secret"),
        ResourceInfo("configmaps", "ConfigMap", "configmap", short_names=("cm",)),
        ResourceInfo(
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            "persistentvolumeclaim",
            has_status=True,
            returns_deleted_object=True,
            short_names=("pvc",),
        ),
        ResourceInfo("serviceaccounts", "ServiceAccount", "serviceaccount", short_names=("sa",)),
        ResourceInfo(
            "nodes",
            "Node",
            "node",
            namespaced=False,
            has_status=True,
            returns_deleted_object=True,
            short_names=("no",),
        ),
        ResourceInfo(
            "namespaces",
            "Namespace",
            "namespace",
            namespaced=False,
            name_rule="label",
            has_status=True,
            returns_deleted_object=True,
            short_names=("ns",),
        ),
        ResourceInfo(
            "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfiguration",
            namespaced=False,
            group="admissionregistration.k8s.io",
        ),
    )
}

INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def resource_info(resource: str) -> ResourceInfo:
    info = RESOURCES.get(resource)
    if info is None:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    return info


def not_found(resource: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource} "{name}" not found', name=name, kind=resource)


def conflict(resource: str, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {resource} "{name}": {why}',
        name=name,
        kind=resource,
    )


MODIFIED_CONFLICT = (
    "the object has been modified; please apply your changes to the latest version and try again"
)
