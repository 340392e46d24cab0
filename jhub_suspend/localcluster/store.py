"""The object store of the local API server.

Everything that decides something (validation, defaulting, patching, what a delete does, how a
watch sees a change) is a small pure function; :class:`Store` only holds the objects, the
resourceVersion counter and the change history that watches replay.

The store is not thread-safe: use it from the event loop that serves the API (the scheduler and
the kubelets run there too). Time comes only from the injected clock.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import copy
import logging
import random
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..kubevalues import parse_quantity, rfc3339
from .selectors import ApiError, Selector, bad_request, make_selector

__all__ = [
    "RESOURCES",
    "ApiError",
    "ResourceInfo",
    "Store",
    "WatchStream",
    "apply_json_patch",
    "apply_merge_patch",
    "apply_strategic_merge_patch",
]

log = logging.getLogger(__name__)

Obj = dict[str, Any]


# --- resources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceInfo:
    """What the API server knows about one resource type (core/v1 only)."""

    plural: str
    kind: str
    singular: str
    namespaced: bool = True
    name_rule: str = "subdomain"  # "subdomain", "label" (RFC 1123) or "label1035"
    has_status: bool = False
    returns_deleted_object: bool = False
    short_names: tuple[str, ...] = ()


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


# --- time ------------------------------------------------------------------------------------


def rfc3339_micro(t: float) -> str:
    """Microsecond RFC 3339 time, as ``metav1.MicroTime`` is serialised."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- validation ------------------------------------------------------------------------------

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

_NAME_RULES: dict[str, tuple[re.Pattern[str], int, str]] = {
    "subdomain": (
        _SUBDOMAIN,
        253,
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or"
        " '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex"
        " used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
    ),
    "label": (
        _LABEL_1123,
        63,
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and"
        " must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex"
        " used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
    ),
    "label1035": (
        _LABEL_1035,
        63,
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an"
        " alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or"
        " 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
    ),
}


@dataclass(frozen=True)
class Cause:
    """One field error of a 422 Invalid response."""

    field: str
    reason: str  # FieldValueRequired, FieldValueInvalid, FieldValueDuplicate, FieldValueForbidden
    detail: str
    value: Any = None

    def message(self) -> str:
        words = {
            "FieldValueRequired": "Required value",
            "FieldValueInvalid": "Invalid value",
            "FieldValueDuplicate": "Duplicate value",
            "FieldValueForbidden": "Forbidden",
        }[self.reason]
        if self.reason in ("FieldValueInvalid", "FieldValueDuplicate"):
            words += f": {_go_quote(self.value)}"
        return f"{words}: {self.detail}" if self.detail else words


def _go_quote(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def invalid(kind: str, name: str, causes: list[Cause]) -> ApiError:
    """A 422 whose message is laid out as the real server lays it out."""
    rendered = [f"{c.field}: {c.message()}" for c in causes]
    summary = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {summary}',
        name=name,
        kind=kind,
        causes=[{"reason": c.reason, "message": c.message(), "field": c.field} for c in causes],
    )


def name_errors(rule: str, name: str, field_path: str = "metadata.name") -> list[Cause]:
    pattern, max_len, detail = _NAME_RULES[rule]
    if not pattern.match(name):
        return [Cause(field_path, "FieldValueInvalid", detail, name)]
    if len(name) > max_len:
        return [
            Cause(
                field_path, "FieldValueInvalid", f"must be no more than {max_len} characters", name
            )
        ]
    return []


def pod_errors(pod: Mapping[str, Any]) -> list[Cause]:
    """The checks of pod validation that a client most often trips over."""
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        return [Cause("spec.containers", "FieldValueRequired", "")]
    causes: list[Cause] = []
    seen: set[str] = set()
    for group in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(group) or []):
            path = f"spec.{group}[{i}]"
            cname = container.get("name")
            if not cname:
                causes.append(Cause(f"{path}.name", "FieldValueRequired", ""))
            else:
                causes += name_errors("label", cname, f"{path}.name")
                if cname in seen:
                    causes.append(Cause(f"{path}.name", "FieldValueDuplicate", "", cname))
                seen.add(cname)
            if not container.get("image"):
                causes.append(Cause(f"{path}.image", "FieldValueRequired", ""))
    volumes: set[str] = set()
    for i, volume in enumerate(spec.get("volumes") or []):
        vname = volume.get("name", "")
        if vname in volumes:
            causes.append(Cause(f"spec.volumes[{i}].name", "FieldValueDuplicate", "", vname))
        volumes.add(vname)
    return causes


def validate_create(info: ResourceInfo, obj: Mapping[str, Any]) -> None:
    """Raise 422 Invalid for what the real server would reject on create."""
    metadata = obj.get("metadata") or {}
    name = metadata.get("name") or ""
    if not name:
        causes = [Cause("metadata.name", "FieldValueRequired", "name or generateName is required")]
    else:
        causes = name_errors(info.name_rule, name)
    if info.plural == "pods":
        causes += pod_errors(obj)
    if causes:
        raise invalid(info.kind, name, causes)


_POD_MUTABLE_SPEC = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds")


def _comparable_pod_spec(spec: Mapping[str, Any]) -> Obj:
    result = copy.deepcopy(dict(spec))
    for key in _POD_MUTABLE_SPEC:
        result.pop(key, None)
    for group in ("containers", "initContainers"):
        for container in result.get(group) or []:
            container.pop("image", None)
    return result


def validate_pod_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Pods are immutable apart from images, deadlines and tolerations."""
    if _comparable_pod_spec(old.get("spec") or {}) != _comparable_pod_spec(new.get("spec") or {}):
        name = new["metadata"]["name"]
        raise invalid(
            "Pod",
            name,
            [
                Cause(
                    "spec",
                    "FieldValueForbidden",
                    "pod updates may not change fields other than `spec.containers[*].image`,"
                    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
                    "`spec.tolerations` (only additions to existing tolerations),"
                    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was"
                    " previously negative)",
                )
            ],
        )


# --- defaulting ------------------------------------------------------------------------------

_DEFAULT_TOLERATIONS = (
    {
        "key": "node.kubernetes.io/not-ready",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    },
    {
        "key": "node.kubernetes.io/unreachable",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    },
)


def image_pull_policy(image: str) -> str:
    """``Always`` for ``:latest`` or an untagged image, else ``IfNotPresent``."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last or last.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def default_container(container: Obj) -> None:
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("imagePullPolicy", image_pull_policy(container.get("image") or ""))
    resources = container.setdefault("resources", {})
    limits = resources.get("limits") or {}
    if limits:
        requests = resources.setdefault("requests", {})
        for key, value in limits.items():
            requests.setdefault(key, value)
    for port in container.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for env in container.get("env") or []:
        field_ref = (env.get("valueFrom") or {}).get("fieldRef")
        if field_ref is not None:
            field_ref.setdefault("apiVersion", "v1")


def default_pod_spec(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    tolerations = spec.setdefault("tolerations", [])
    for toleration in _DEFAULT_TOLERATIONS:
        if not any(t.get("key") == toleration["key"] for t in tolerations):
            tolerations.append(dict(toleration))
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            default_container(container)
    for volume in spec.get("volumes") or []:
        for source in ("secret", "configMap"):
            if source in volume:
                volume[source].setdefault("defaultMode", 420)


def qos_class(pod: Mapping[str, Any]) -> str:
    """Guaranteed, Burstable or BestEffort, from the (defaulted) container resources."""
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    any_set = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        requests = resources.get("requests") or {}
        limits = resources.get("limits") or {}
        if requests or limits:
            any_set = True
        for name in ("cpu", "memory"):
            if name not in limits or name not in requests:
                guaranteed = False
        for name, value in requests.items():
            if name in limits and parse_quantity(limits[name]) != parse_quantity(value):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def default_service_spec(spec: Obj) -> None:
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))


def default_secret(secret: Obj) -> None:
    """``stringData`` is write-only: the server folds it into ``data``."""
    secret.setdefault("type", "Opaque")
    string_data = secret.pop("stringData", None) or {}
    if string_data:
        data = secret.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(value.encode()).decode()


def apply_defaults(resource: str, obj: Obj) -> None:
    """Defaults the real server adds whenever it decodes an object (create and update)."""
    if resource == "pods":
        default_pod_spec(obj.setdefault("spec", {}))
    elif resource == "services":
        default_service_spec(obj.setdefault("spec", {}))
    elif resource == "secrets":
        default_secret(obj)
    elif resource == "persistentvolumeclaims":
        obj.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
    elif resource == "namespaces":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        labels = obj["metadata"].setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]


def initial_status(resource: str, obj: Mapping[str, Any]) -> Obj | None:
    """The status a new object starts with (the server ignores a client's status on create)."""
    if resource == "pods":
        return {"phase": "Pending", "conditions": [], "qosClass": qos_class(obj)}
    if resource == "persistentvolumeclaims":
        return {"phase": "Pending"}
    if resource == "namespaces":
        return {"phase": "Active"}
    if resource == "services":
        return {"loadBalancer": {}}
    return None


# --- updates ---------------------------------------------------------------------------------

_IDENTITY_FIELDS = (
    "uid",
    "name",
    "namespace",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "resourceVersion",
)


def keep_identity(old: Mapping[str, Any], new: Obj) -> None:
    """Metadata that no update can change."""
    metadata = new.setdefault("metadata", {})
    for key in _IDENTITY_FIELDS:
        if key in old["metadata"]:
            metadata[key] = old["metadata"][key]
        else:
            metadata.pop(key, None)
    new["kind"] = old.get("kind")
    new["apiVersion"] = old.get("apiVersion")


def prepare_update(
    info: ResourceInfo,
    old: Mapping[str, Any],
    new: Obj,
    subresource: str | None,
    *,
    keep_status: bool = True,
) -> Obj:
    """The object an update leaves behind: the status subresource changes only the status,
    the main resource everything but the status (unless ``keep_status`` is false, which
    in-process controllers use to change both at once)."""
    if subresource == "status":
        result = copy.deepcopy(dict(old))
        if "status" in new:
            result["status"] = copy.deepcopy(new["status"])
        else:
            result.pop("status", None)
        return result
    result = copy.deepcopy(new)
    keep_identity(old, result)
    if info.has_status and keep_status:
        if "status" in old:
            result["status"] = copy.deepcopy(old["status"])
        else:
            result.pop("status", None)
    apply_defaults(info.plural, result)
    if info.plural == "services":
        spec = result.setdefault("spec", {})
        old_spec = old.get("spec") or {}
        for key in ("clusterIP", "clusterIPs"):
            if key in old_spec and not spec.get(key):
                spec[key] = copy.deepcopy(old_spec[key])
    return result


def bump_generation(old: Mapping[str, Any], new: Obj) -> None:
    """metadata.generation counts changes of the spec (objects without one have none)."""
    if "generation" not in new["metadata"]:
        return
    if old.get("spec") != new.get("spec"):
        new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1


def should_delete_during_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """An object marked for deletion with grace 0 goes away once its finalizers are gone."""
    metadata = new["metadata"]
    return (
        "deletionTimestamp" in metadata
        and not metadata.get("finalizers")
        and old["metadata"].get("deletionGracePeriodSeconds") == 0
    )


def without_resource_version(obj: Mapping[str, Any]) -> Obj:
    result = dict(obj)
    result["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return result


# --- patches ---------------------------------------------------------------------------------


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


# patchMergeKey of the list fields that the common clients patch; other lists are replaced.
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "ownerReferences": ("uid",),
    "conditions": ("type",),
    "hostAliases": ("ip",),
    "ports": ("containerPort", "port"),
    "taints": ("key",),
    "addresses": ("type",),
    "secrets": ("name",),
    "topologySpreadConstraints": ("topologyKey",),
    "resourceClaims": ("name",),
}
PRIMITIVE_SET_LISTS = frozenset({"finalizers"})


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_directives(v)
            for k, v in value.items()
            if not k.startswith("$") and v is not None
        }
    if isinstance(value, list):
        return [_strip_directives(v) for v in value if not (isinstance(v, dict) and "$patch" in v)]
    return value


def _merge_key(field_name: str, items: Iterable[Any]) -> str | None:
    candidates = MERGE_KEYS.get(field_name)
    if not candidates:
        return None
    for candidate in candidates:
        if any(isinstance(item, dict) and candidate in item for item in items):
            return candidate
    return candidates[0]


def _merge_list(field_name: str, current: Any, patch: list[Any]) -> list[Any]:
    current_list = list(current) if isinstance(current, list) else []
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return _strip_directives(patch)
    if field_name in PRIMITIVE_SET_LISTS:
        return current_list + [item for item in patch if item not in current_list]
    key = _merge_key(field_name, [*current_list, *patch])
    if key is None:
        return _strip_directives(patch)
    result = [copy.deepcopy(item) for item in current_list]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise bad_request(f"map: {item!r} does not contain declared merge key: {key}")
        index = next(
            (i for i, existing in enumerate(result) if existing.get(key) == item[key]), None
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(_strip_directives(item))
        else:
            result[index] = apply_strategic_merge_patch(result[index], item)
    return result


def apply_strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Kubernetes strategic merge patch for the lists in :data:`MERGE_KEYS`, with the
    ``$patch`` (replace, delete), ``$deleteFromPrimitiveList`` and ``$retainKeys`` directives."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return _strip_directives(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [item for item in result.get(name) or [] if item not in value]
        elif key.startswith("$"):
            continue
        elif value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            result[key] = apply_strategic_merge_patch(result.get(key), value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _json_patch_error(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)


def _resolve_parent(doc: Any, parts: list[str]) -> tuple[Any, str]:
    current = doc
    for part in parts[:-1]:
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise _json_patch_error(f"doc is missing path: /{'/'.join(parts)}")
    return current, parts[-1]


def _json_get(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return doc
    parent, last = _resolve_parent(doc, parts)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise _json_patch_error(f"doc is missing path: /{'/'.join(parts)}")


def _json_remove(doc: Any, parts: list[str]) -> Any:
    parent, last = _resolve_parent(doc, parts)
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise _json_patch_error(f"unable to remove nonexistent key: {last}: missing value")


def _json_add(doc: Any, parts: list[str], value: Any, *, replace: bool = False) -> Any:
    if not parts:
        return copy.deepcopy(value)
    parent, last = _resolve_parent(doc, parts)
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise _json_patch_error(f"replace operation does not apply: doc is missing key: {last}")
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(copy.deepcopy(value))
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = copy.deepcopy(value)
            else:
                parent.insert(int(last), copy.deepcopy(value))
        else:
            raise _json_patch_error(f"index out of range: {last}")
    else:
        raise _json_patch_error(f"doc is missing path: /{'/'.join(parts)}")
    return doc


def apply_json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    if not isinstance(operations, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise bad_request(f"invalid json patch operation {operation!r}")
        op = operation["op"]
        parts = _pointer(operation["path"])
        if op == "add":
            doc = _json_add(doc, parts, operation.get("value"))
        elif op == "replace":
            doc = _json_add(doc, parts, operation.get("value"), replace=True)
        elif op == "remove":
            _json_remove(doc, parts)
        elif op in ("move", "copy"):
            source = _pointer(operation.get("from", ""))
            value = _json_remove(doc, source) if op == "move" else _json_get(doc, source)
            doc = _json_add(doc, parts, value)
        elif op == "test":
            if _json_get(doc, parts) != operation.get("value"):
                raise _json_patch_error(f"testing value {operation['path']} failed")
        else:
            raise bad_request(f"unexpected json patch operation {op!r}")
    return doc


PATCH_TYPES: dict[str, Callable[[Any, Any], Any]] = {
    "application/merge-patch+json": apply_merge_patch,
    "application/strategic-merge-patch+json": apply_strategic_merge_patch,
    "application/json-patch+json": apply_json_patch,
}


def apply_patch(current: Obj, patch: Any, content_type: str) -> Obj:
    media_type = content_type.split(";", 1)[0].strip().lower()
    apply = PATCH_TYPES.get(media_type)
    if apply is None:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f'{", ".join(PATCH_TYPES)}; got "{media_type}"',
        )
    result = apply(current, patch)
    if not isinstance(result, dict):
        raise bad_request("the patch does not leave an object")
    return result


# --- deletion --------------------------------------------------------------------------------


def check_preconditions(
    resource: str, obj: Mapping[str, Any], preconditions: Mapping[str, Any] | None
) -> None:
    if not preconditions:
        return
    metadata = obj["metadata"]
    name = metadata["name"]
    uid = preconditions.get("uid")
    if uid is not None and uid != metadata.get("uid"):
        raise conflict(
            resource,
            name,
            f"Precondition failed: UID in precondition: {uid}, UID in object meta: {metadata.get('uid')}",
        )
    rv = preconditions.get("resourceVersion")
    if rv is not None and rv != metadata.get("resourceVersion"):
        raise conflict(
            resource,
            name,
            f"Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in"
            f" object meta: {metadata.get('resourceVersion')}",
        )


def deletion_grace(resource: str, obj: Mapping[str, Any], requested: int | None) -> int:
    """The grace period a delete gets: pods that a kubelet runs get theirs, all else none."""
    if resource != "pods":
        return 0
    spec = obj.get("spec") or {}
    phase = (obj.get("status") or {}).get("phase")
    if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
        return 0
    grace = requested if requested is not None else spec.get("terminationGracePeriodSeconds")
    grace = 30 if grace is None else int(grace)
    return 1 if grace < 0 else grace


def mark_for_deletion(obj: Obj, grace: int, now: float) -> None:
    metadata = obj["metadata"]
    metadata["deletionTimestamp"] = rfc3339(now + grace)
    metadata["deletionGracePeriodSeconds"] = grace
    if "generation" in metadata:
        metadata["generation"] += 1


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


# --- watch -----------------------------------------------------------------------------------


@dataclass
class Change:
    """One entry of the history: the object after the change and before it."""

    rv: int
    resource: str
    type: str
    obj: Obj
    prev: Obj | None


def with_resource_version(obj: Mapping[str, Any], rv: int) -> Obj:
    result = copy.deepcopy(dict(obj))
    result["metadata"]["resourceVersion"] = str(rv)
    return result


def watch_event_for(selector: Selector, change: Change) -> tuple[str, Obj] | None:
    """What a filtered watch sees of a change, as the real watch cache decides it: an object
    that starts matching is ADDED, one that stops matching is DELETED (with its old content)."""
    now = change.type != "DELETED" and selector.matches(change.obj)
    before = change.prev is not None and selector.matches(change.prev)
    if change.type == "DELETED":
        return ("DELETED", change.obj) if selector.matches(change.obj) else None
    if now and before:
        return ("MODIFIED", change.obj)
    if now:
        return ("ADDED", change.obj)
    if before and change.prev is not None:
        return ("DELETED", with_resource_version(change.prev, change.rv))
    return None


def parse_resource_version(value: str | None) -> int | None:
    """None for "" / None / "0" (start from the current state), else the integer."""
    if value is None or value in ("", "0"):
        return None
    if not value.isdigit():
        raise bad_request(f'invalid resource version "{value}"')
    return int(value)


class WatchStream:
    """An async iterator of ``(type, object)``; created by :meth:`Store.watch`.

    It is registered with the store from creation, so no change is missed between the call
    and the first ``__anext__``. Close it (or use ``async with``) when done.
    """

    def __init__(
        self,
        store: Store,
        resource: str,
        selector: Selector,
        initial: list[tuple[str, Obj]],
        timeout: float | None,
    ) -> None:
        self.resource = resource
        self.selector = selector
        self._store = store
        self._pending: deque[tuple[str, Obj]] = deque(initial)
        self._queue: asyncio.Queue[Change | None] = asyncio.Queue()
        self._timeout = timeout
        self._deadline: float | None = None
        self._closed = False

    def _deliver(self, change: Change | None) -> None:
        self._queue.put_nowait(change)

    def __aiter__(self) -> AsyncIterator[tuple[str, Obj]]:
        return self

    async def __anext__(self) -> tuple[str, Obj]:
        loop = asyncio.get_running_loop()
        if self._deadline is None and self._timeout is not None:
            self._deadline = loop.time() + self._timeout
        while not self._closed:
            if self._pending:
                return self._pending.popleft()
            try:
                change = await self._next_change(loop)
            except asyncio.CancelledError:
                # The consumer's task was cancelled (a controller stopping): don't stay subscribed.
                self.close()
                raise
            if change is None:
                break
            event = watch_event_for(self.selector, change)
            if event is not None:
                return event[0], copy.deepcopy(event[1])
        self.close()
        raise StopAsyncIteration

    async def _next_change(self, loop: asyncio.AbstractEventLoop) -> Change | None:
        if self._deadline is None:
            return await self._queue.get()
        remaining = self._deadline - loop.time()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), remaining)
        except TimeoutError:
            return None

    def close(self) -> None:
        """Stop the stream; a pending ``__anext__`` ends with StopAsyncIteration."""
        if not self._closed:
            self._closed = True
            self._store._unsubscribe(self)
            self._queue.put_nowait(None)

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> WatchStream:
        return self

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aexit__(self, *exc: object) -> None:
        self.close()


# --- the store -------------------------------------------------------------------------------

_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass
class _ClusterIPs:
    """Service cluster IPs from 10.96.0.0/12, as a fresh cluster hands them out."""

    next_host: int = 1
    prefix: tuple[int, int] = (10, 96)

    def allocate(self) -> str:
        host = self.next_host
        self.next_host += 1
        return f"{self.prefix[0]}.{self.prefix[1] + host // 65536}.{host // 256 % 256}.{host % 256}"


@dataclass
class _State:
    objects: dict[str, dict[tuple[str, str], Obj]] = field(
        default_factory=lambda: {resource: {} for resource in RESOURCES}
    )


class Store:
    """Objects of the core/v1 resources in :data:`RESOURCES`, with their history."""

    def __init__(self, clock: Callable[[], float] = time.time, history_limit: int = 10000) -> None:
        self.clock = clock
        self._state = _State()
        self._rv = 0
        self._history: deque[Change] = deque()
        self._history_limit = history_limit
        self._compacted_rv = 0
        self._watchers: list[WatchStream] = []
        self._random = random.Random()
        self._cluster_ips = _ClusterIPs()
        for namespace in INITIAL_NAMESPACES:
            self.create("namespaces", None, {"metadata": {"name": namespace}})

    # -- reading --

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def _key(self, info: ResourceInfo, namespace: str | None, name: str) -> tuple[str, str]:
        if not info.namespaced:
            return ("", name)
        return (namespace or "", name)

    def _stored(self, resource: str, namespace: str | None, name: str) -> Obj:
        info = resource_info(resource)
        obj = self._state.objects[resource].get(self._key(info, namespace, name))
        if obj is None:
            raise not_found(resource, name)
        return obj

    def get(self, resource: str, namespace: str | None, name: str) -> Obj:
        return copy.deepcopy(self._stored(resource, namespace, name))

    def exists(self, resource: str, namespace: str | None, name: str) -> bool:
        info = resource_info(resource)
        return self._key(info, namespace, name) in self._state.objects[resource]

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> tuple[list[Obj], str]:
        """Matching objects sorted by namespace and name, and the current resourceVersion."""
        info = resource_info(resource)
        selector = make_selector(
            resource, namespace if info.namespaced else None, label_selector, field_selector
        )
        objects = self._state.objects[resource]
        items = [copy.deepcopy(objects[key]) for key in sorted(objects)]
        return [obj for obj in items if selector.matches(obj)], str(self._rv)

    # -- writing --

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _record(self, resource: str, type_: str, obj: Obj, prev: Obj | None) -> None:
        change = Change(int(obj["metadata"]["resourceVersion"]), resource, type_, obj, prev)
        if len(self._history) >= self._history_limit:
            self._compacted_rv = self._history.popleft().rv
        self._history.append(change)
        for watcher in list(self._watchers):
            if watcher.resource == resource:
                watcher._deliver(change)

    def _check_namespace(self, info: ResourceInfo, namespace: str | None) -> str:
        if not info.namespaced:
            return ""
        if not namespace:
            raise bad_request("the server could not find the requested resource: no namespace")
        if ("", namespace) not in self._state.objects["namespaces"]:
            raise not_found("namespaces", namespace)
        return namespace

    def _generate_name(self, info: ResourceInfo, namespace: str, prefix: str) -> str:
        for _ in range(8):
            suffix = "".join(self._random.choice(_GENERATE_ALPHABET) for _ in range(5))
            name = prefix + suffix
            if (namespace, name) not in self._state.objects[info.plural]:
                return name
        raise ApiError(500, "AlreadyExists", "could not generate a unique name")

    def create(self, resource: str, namespace: str | None, obj: Mapping[str, Any]) -> Obj:
        info = resource_info(resource)
        new = copy.deepcopy(dict(obj))
        metadata = new.setdefault("metadata", {})
        body_namespace = metadata.get("namespace")
        if info.namespaced and body_namespace and namespace and body_namespace != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        namespace = self._check_namespace(info, namespace or body_namespace)
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = self._generate_name(info, namespace, metadata["generateName"])
        validate_create(info, new)
        name = metadata["name"]
        if (namespace, name) in self._state.objects[resource]:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{resource} "{name}" already exists',
                name=name,
                kind=resource,
            )
        self._fill_new(info, namespace, new)
        self._state.objects[resource][(namespace, name)] = new
        self._record(resource, "ADDED", copy.deepcopy(new), None)
        log.debug("created %s %s/%s rv=%s", resource, namespace, name, self._rv)
        return copy.deepcopy(new)

    def _fill_new(self, info: ResourceInfo, namespace: str, new: Obj) -> None:
        metadata = new["metadata"]
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            metadata.pop(key, None)
        if info.namespaced:
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = rfc3339(self.clock())
        new["kind"] = info.kind
        new["apiVersion"] = "v1"
        apply_defaults(info.plural, new)
        if "spec" in new:
            metadata["generation"] = 1
        status = initial_status(info.plural, new)
        if status is not None:
            new["status"] = status
        if info.plural == "services":
            spec = new["spec"]
            if not spec.get("clusterIP") and spec.get("type") != "ExternalName":
                spec["clusterIP"] = self._cluster_ips.allocate()
            if spec.get("clusterIP"):
                spec.setdefault("clusterIPs", [spec["clusterIP"]])
        metadata["resourceVersion"] = str(self._next_rv())

    def replace(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        obj: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> Obj:
        """PUT: honours metadata.resourceVersion as a precondition."""
        info = resource_info(resource)
        old = self._stored(resource, namespace, name)
        new = copy.deepcopy(dict(obj))
        metadata = new.get("metadata") or {}
        if metadata.get("name") not in (None, name):
            raise bad_request(
                f"the name of the object ({metadata.get('name')}) does not match the name on the URL ({name})"
            )
        body_namespace = metadata.get("namespace")
        if info.namespaced and body_namespace and body_namespace != old["metadata"]["namespace"]:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        wanted_rv = metadata.get("resourceVersion")
        if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
            raise conflict(resource, name, MODIFIED_CONFLICT)
        return self._update(info, old, new, subresource, validate=True)

    def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        patch: Any,
        content_type: str,
        *,
        subresource: str | None = None,
    ) -> Obj:
        """PATCH with a merge, strategic merge or JSON patch."""
        old = self._stored(resource, namespace, name)
        patched = apply_patch(copy.deepcopy(old), patch, content_type)
        if not isinstance(patched.get("metadata"), dict):
            raise bad_request("the patch removed metadata")
        patched["metadata"].setdefault("name", name)
        return self.replace(resource, namespace, name, patched, subresource=subresource)

    def mutate(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        fn: Callable[[Obj], Obj | None],
        *,
        subresource: str | None = None,
    ) -> Obj:
        """For in-process controllers: ``fn`` changes a deep copy (or returns a new object).

        No validation and no resourceVersion precondition; nothing is recorded if nothing changed.
        """
        info = resource_info(resource)
        old = self._stored(resource, namespace, name)
        draft = copy.deepcopy(old)
        result = fn(draft)
        new = draft if result is None else result
        return self._update(info, old, new, subresource, validate=False)

    def _update(
        self, info: ResourceInfo, old: Obj, new: Obj, subresource: str | None, *, validate: bool
    ) -> Obj:
        if subresource not in (None, "status") or (subresource and not info.has_status):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        prepared = prepare_update(info, old, new, subresource, keep_status=validate)
        if validate and info.plural == "pods" and subresource is None:
            validate_pod_update(old, prepared)
            causes = pod_errors(prepared)
            if causes:
                raise invalid("Pod", old["metadata"]["name"], causes)
        if without_resource_version(prepared) == without_resource_version(old):
            return copy.deepcopy(old)
        bump_generation(old, prepared)
        prepared["metadata"]["resourceVersion"] = str(self._next_rv())
        key = self._key(info, old["metadata"].get("namespace"), old["metadata"]["name"])
        self._state.objects[info.plural][key] = prepared
        self._record(info.plural, "MODIFIED", copy.deepcopy(prepared), copy.deepcopy(old))
        if should_delete_during_update(old, prepared):
            return self._remove(info, prepared, propagation_policy=None)
        return copy.deepcopy(prepared)

    def delete(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        *,
        grace_period_seconds: int | None = None,
        preconditions: Mapping[str, Any] | None = None,
        propagation_policy: str | None = None,
    ) -> Obj:
        """Delete, or only mark for deletion (graceful pods, finalizers); returns the object."""
        info = resource_info(resource)
        obj = self._stored(resource, namespace, name)
        check_preconditions(resource, obj, preconditions)
        grace = deletion_grace(resource, obj, grace_period_seconds)
        metadata = obj["metadata"]
        finalizers = metadata.get("finalizers") or []
        if "deletionTimestamp" in metadata:
            current = metadata.get("deletionGracePeriodSeconds") or 0
            if grace == 0 and not finalizers:
                return self._remove(info, obj, propagation_policy)
            if grace < current:
                return self._mark(info, obj, grace)
            return copy.deepcopy(obj)
        if grace > 0 or finalizers:
            return self._mark(info, obj, grace)
        return self._remove(info, obj, propagation_policy)

    def _mark(self, info: ResourceInfo, obj: Obj, grace: int) -> Obj:
        old = copy.deepcopy(obj)
        mark_for_deletion(obj, grace, self.clock())
        obj["metadata"]["resourceVersion"] = str(self._next_rv())
        self._record(info.plural, "MODIFIED", copy.deepcopy(obj), old)
        return copy.deepcopy(obj)

    def _remove(self, info: ResourceInfo, obj: Obj, propagation_policy: str | None) -> Obj:
        metadata = obj["metadata"]
        if info.plural == "namespaces":
            self._empty_namespace(metadata["name"])
        key = self._key(info, metadata.get("namespace"), metadata["name"])
        stored = self._state.objects[info.plural].pop(key)
        final = with_resource_version(stored, self._next_rv())
        self._record(info.plural, "DELETED", copy.deepcopy(final), copy.deepcopy(stored))
        log.debug("deleted %s %s/%s", info.plural, metadata.get("namespace"), metadata["name"])
        self._collect_dependents(metadata["uid"], propagation_policy)
        return final

    def _empty_namespace(self, namespace: str) -> None:
        """Namespace deletion removes everything in it (at once, not gracefully)."""
        for resource, info in RESOURCES.items():
            if not info.namespaced:
                continue
            for key in [k for k in self._state.objects[resource] if k[0] == namespace]:
                obj = self._state.objects[resource].get(key)
                if obj is not None:
                    self._remove(info, obj, None)

    def _dependents(self, uid: str) -> builtins.list[tuple[ResourceInfo, Obj]]:
        return [
            (RESOURCES[resource], obj)
            for resource, objects in self._state.objects.items()
            for obj in objects.values()
            if owned_by(obj, uid)
        ]

    def _collect_dependents(self, uid: str, propagation_policy: str | None) -> None:
        """The garbage collector's part: background deletion, or orphaning on request."""
        for info, obj in self._dependents(uid):
            metadata = obj["metadata"]
            namespace, name = metadata.get("namespace"), metadata["name"]
            if propagation_policy == "Orphan":

                def orphan(draft: Obj) -> None:
                    refs = draft["metadata"].get("ownerReferences") or []
                    draft["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]

                self.mutate(info.plural, namespace, name, orphan)
            elif self.exists(info.plural, namespace, name):
                self.delete(info.plural, namespace, name)

    # -- events --

    def record_event(
        self,
        involved: Mapping[str, Any],
        reason: str,
        message: str,
        type_: str = "Normal",
        component: str = "kubelet",
        host: str | None = None,
    ) -> Obj:
        """Record a core/v1 Event about ``involved`` (an object or an ObjectReference); an
        identical event for the same object only bumps ``count`` and ``lastTimestamp``."""
        ref = object_reference(involved)
        namespace = ref.get("namespace") or "default"
        source: Obj = {"component": component}
        if host:
            source["host"] = host
        now = self.clock()
        for event in self._state.objects["events"].values():
            if _same_event(event, ref, reason, message, type_, source):
                return self.mutate(
                    "events",
                    namespace,
                    event["metadata"]["name"],
                    lambda draft: _repeat_event(draft, now),
                )
        event = {
            "metadata": {"name": self._event_name(namespace, ref["name"], now)},
            "involvedObject": ref,
            "reason": reason,
            "message": message,
            "source": source,
            "firstTimestamp": rfc3339(now),
            "lastTimestamp": rfc3339(now),
            "count": 1,
            "type": type_,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": host or "",
        }
        return self.create("events", namespace, event)

    def _event_name(self, namespace: str, name: str, now: float) -> str:
        stamp = int(now * 1e9)
        while (namespace, f"{name}.{stamp:x}") in self._state.objects["events"]:
            stamp += 1
        return f"{name}.{stamp:x}"

    # -- watch --

    def watch(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        timeout: float | None = None,
    ) -> WatchStream:
        """Watch changes. Without a resourceVersion (or "0") it starts with a synthetic ADDED for
        every matching object; with one it replays the history after it, or raises 410 Gone if
        that part of the history is gone. Errors are raised here, before any event."""
        info = resource_info(resource)
        selector = make_selector(
            resource, namespace if info.namespaced else None, label_selector, field_selector
        )
        since = parse_resource_version(resource_version)
        if since is None:
            items, _ = self.list(
                resource,
                namespace,
                label_selector=label_selector,
                field_selector=field_selector,
            )
            initial = [("ADDED", obj) for obj in items]
        else:
            initial = self._replay(resource, selector, since)
        stream = WatchStream(self, resource, selector, initial, timeout)
        self._watchers.append(stream)
        return stream

    def _replay(
        self, resource: str, selector: Selector, since: int
    ) -> builtins.list[tuple[str, Obj]]:
        if since < self._compacted_rv:
            raise ApiError(
                410, "Expired", f"too old resource version: {since} ({self._compacted_rv + 1})"
            )
        events = []
        for change in self._history:
            if change.rv > since and change.resource == resource:
                event = watch_event_for(selector, change)
                if event is not None:
                    events.append((event[0], copy.deepcopy(event[1])))
        return events

    def _unsubscribe(self, stream: WatchStream) -> None:
        if stream in self._watchers:
            self._watchers.remove(stream)

    def close_watches(self) -> None:
        """End every open watch (at shutdown)."""
        for stream in list(self._watchers):
            stream._deliver(None)


def object_reference(involved: Mapping[str, Any]) -> Obj:
    """An ObjectReference to an object, or a copy of what already is one."""
    if "metadata" not in involved:
        return {k: v for k, v in involved.items() if v is not None}
    metadata = involved["metadata"]
    ref = {
        "kind": involved.get("kind"),
        "namespace": metadata.get("namespace"),
        "name": metadata.get("name"),
        "uid": metadata.get("uid"),
        "apiVersion": involved.get("apiVersion", "v1"),
        "resourceVersion": metadata.get("resourceVersion"),
    }
    return {k: v for k, v in ref.items() if v is not None}


def _same_event(
    event: Mapping[str, Any],
    ref: Mapping[str, Any],
    reason: str,
    message: str,
    type_: str,
    source: Mapping[str, Any],
) -> bool:
    involved = event.get("involvedObject") or {}
    same_object = all(
        involved.get(key) == ref.get(key) for key in ("kind", "namespace", "name", "uid")
    )
    return (
        same_object
        and event.get("reason") == reason
        and event.get("message") == message
        and event.get("type") == type_
        and event.get("source") == source
    )


def _repeat_event(event: Obj, now: float) -> None:
    event["count"] = event.get("count", 1) + 1
    event["lastTimestamp"] = rfc3339(now)
