"""Label and field selectors, parsed and matched as the Kubernetes API server does.

This module has no dependencies inside the package, so it also defines :class:`ApiError`,
the error every part of the local API server raises; ``store`` re-exports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ApiError(Exception):
    """An error with the HTTP status, reason and message the real API server would send."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        name: str | None = None,
        kind: str | None = None,
        causes: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.name = name
        self.kind = kind
        self.causes = causes

    def status(self) -> dict[str, Any]:
        """The ``Status`` object the API server sends with this error."""
        details: dict[str, Any] = {}
        if self.name is not None:
            details["name"] = self.name
        if self.kind is not None:
            details["kind"] = self.kind
        if self.causes:
            details["causes"] = self.causes
        result: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if details:
            result["details"] = details
        return result

    def __repr__(self) -> str:
        return f"ApiError({self.code}, {self.reason!r}, {self.message!r})"


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


# --- label selectors -------------------------------------------------------------------------

_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

LABEL_OPERATORS = ("=", "==", "!=", "in", "notin", "exists", "!", "gt", "lt")


@dataclass(frozen=True)
class Requirement:
    """One requirement of a label selector; ``op`` is one of :data:`LABEL_OPERATORS`."""

    key: str
    op: str
    values: tuple[str, ...] = ()


def valid_label_key(key: str) -> bool:
    """A qualified name with an optional DNS-subdomain prefix, as for label keys."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


def valid_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside parentheses (the sets of ``in``/``notin``)."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise bad_request(f"unable to parse requirement: unbalanced ')' in {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise bad_request(f"unable to parse requirement: unbalanced '(' in {text!r}")
    parts.append("".join(current))
    return parts


_SET_RE = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQ_RE = re.compile(r"^(?P<key>[^=!<>\s]+)\s*(?P<op>==|=|!=|<|>)\s*(?P<value>\S*)$")


def _parse_requirement(part: str) -> Requirement:
    term = part.strip()
    if not term:
        raise bad_request("unable to parse requirement: found '', expected: identifier")
    match = _SET_RE.match(term)
    if match:
        values = tuple(sorted(v.strip() for v in match["values"].split(",")))
        requirement = Requirement(match["key"], match["op"], values)
    elif (match := _EQ_RE.match(term)) is not None:
        op = {"<": "lt", ">": "gt"}.get(match["op"], match["op"])
        requirement = Requirement(match["key"], op, (match["value"],))
    elif term.startswith("!"):
        requirement = Requirement(term[1:].strip(), "!")
    else:
        requirement = Requirement(term, "exists")
    _validate_requirement(requirement, term)
    return requirement


def _validate_requirement(requirement: Requirement, term: str) -> None:
    if not valid_label_key(requirement.key):
        raise bad_request(
            f"unable to parse requirement: invalid label key {requirement.key!r} in {term!r}"
        )
    if requirement.op in ("gt", "lt"):
        if not all(re.fullmatch(r"-?\d+", v) for v in requirement.values):
            raise bad_request(
                f"unable to parse requirement: for 'gt', 'lt' operators, the value must be an integer: {term!r}"
            )
        return
    for value in requirement.values:
        if not valid_label_value(value):
            raise bad_request(
                f"unable to parse requirement: invalid label value: {value!r}: at key: {requirement.key!r}"
            )


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    """Parse a label selector string; an empty selector matches everything."""
    if text is None or not text.strip():
        return ()
    return tuple(_parse_requirement(part) for part in _split_top_level(text))


def requirement_matches(requirement: Requirement, labels: Mapping[str, str]) -> bool:
    present = requirement.key in labels
    value = labels.get(requirement.key)
    op = requirement.op
    if op in ("=", "==", "in"):
        return present and value in requirement.values
    if op in ("!=", "notin"):
        return not present or value not in requirement.values
    if op == "exists":
        return present
    if op == "!":
        return not present
    if op in ("gt", "lt"):
        if value is None or not re.fullmatch(r"-?\d+", value):
            return False
        bound = int(requirement.values[0])
        return int(value) > bound if op == "gt" else int(value) < bound
    raise ValueError(f"unknown operator {op!r}")


def labels_match(requirements: tuple[Requirement, ...], labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(requirement_matches(r, labels) for r in requirements)


def match_label_selector_object(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Match a structured ``LabelSelector`` (``matchLabels`` and ``matchExpressions``)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expression in selector.get("matchExpressions") or []:
        op = ops.get(expression.get("operator", ""))
        if op is None:
            raise bad_request(f"{expression.get('operator')!r} is not a valid selector operator")
        requirement = Requirement(expression["key"], op, tuple(expression.get("values") or ()))
        if not requirement_matches(requirement, labels):
            return False
    return True


# --- field selectors -------------------------------------------------------------------------

_COMMON_FIELDS = ("metadata.name", "metadata.namespace")

SUPPORTED_FIELDS: dict[str, tuple[str, ...]] = {
    "pods": (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    "events": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
    "secrets": ("type",),
    "nodes": ("spec.unschedulable",),
    "namespaces": ("status.phase",),
    "persistentvolumeclaims": (),
    "services": (),
    "endpoints": (),
    "configmaps": (),
    "serviceaccounts": (),
}


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    op: str  # "=" or "!="
    value: str


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        raise bad_request(f"invalid field selector: trailing backslash in {text!r}")
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


_FIELD_TERM = re.compile(r"^(?P<field>[^=!]+?)\s*(?P<op>!=|==|=)(?P<value>.*)$", re.S)


def parse_field_selector(
    text: str | None, resource: str | None = None
) -> tuple[FieldRequirement, ...]:
    """Parse a field selector; with ``resource``, reject fields that resource does not index."""
    if text is None or not text.strip():
        return ()
    requirements = []
    for term in _split_unescaped(text, ","):
        match = _FIELD_TERM.match(term.strip())
        if match is None:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        field = match["field"].strip()
        op = "!=" if match["op"] == "!=" else "="
        requirement = FieldRequirement(field, op, _unescape(match["value"]))
        if resource is not None and not field_supported(resource, field):
            raise bad_request(f"field label not supported: {field}")
        requirements.append(requirement)
    return tuple(requirements)


def field_supported(resource: str, field: str) -> bool:
    return field in _COMMON_FIELDS or field in SUPPORTED_FIELDS.get(resource, ())


def field_value(obj: Mapping[str, Any], field: str) -> str:
    """The value of a field as the API server's field index renders it."""
    if field == "source":
        source = obj.get("source") or {}
        return str(source.get("component", ""))
    current: Any = obj
    for part in field.split("."):
        if not isinstance(current, Mapping):
            return ""
        current = current.get(part)
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


def fields_match(requirements: tuple[FieldRequirement, ...], obj: Mapping[str, Any]) -> bool:
    for requirement in requirements:
        equal = field_value(obj, requirement.field) == requirement.value
        if equal != (requirement.op == "="):
            return False
    return True


@dataclass(frozen=True)
class Selector:
    """A parsed label and field selector together, with an optional namespace."""

    labels: tuple[Requirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()
    namespace: str | None = None

    def matches(self, obj: Mapping[str, Any]) -> bool:
        metadata = obj.get("metadata") or {}
        if self.namespace is not None and metadata.get("namespace") != self.namespace:
            return False
        return labels_match(self.labels, metadata.get("labels")) and fields_match(self.fields, obj)


def make_selector(
    resource: str,
    namespace: str | None = None,
    label_selector: str | None = "",
    field_selector: str | None = "",
) -> Selector:
    """Parse both selectors for ``resource``; raises a 400 :class:`ApiError` if either is bad."""
    return Selector(
        labels=parse_label_selector(label_selector),
        fields=parse_field_selector(field_selector, resource),
        namespace=namespace,
    )
