"""The three patch algorithms: JSON merge patch (RFC 7386), strategic merge patch, and JSON
patch (RFC 6902)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from ..selectors import ApiError, bad_request
from .resources import Obj

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
