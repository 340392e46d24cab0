"""Validation and defaulting of new and updated objects, as the real API server does them."""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ...kubevalues import parse_quantity
from ..selectors import ApiError
from .resources import Obj, ResourceInfo

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
    # FieldValueRequired, FieldValueInvalid, FieldValueDuplicate, FieldValueForbidden,
    # FieldValueNotSupported
    reason: str
    detail: str
    value: Any = None

    def message(self) -> str:
        words = {
            "FieldValueRequired": "Required value",
            "FieldValueInvalid": "Invalid value",
            "FieldValueDuplicate": "Duplicate value",
            "FieldValueForbidden": "Forbidden",
            "FieldValueNotSupported": "Unsupported value",
        }[self.reason]
        if self.reason in ("FieldValueInvalid", "FieldValueDuplicate", "FieldValueNotSupported"):
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
    elif info.plural == "validatingwebhookconfigurations":
        causes += webhook_configuration_errors(obj)
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


# --- admission webhook configurations --------------------------------------------------------

_OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT", "*")
_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
#: what the local cluster sends to admission webhooks; see :func:`_local_rule_errors`
LOCAL_ADMISSION = "the local cluster sends only CREATE requests on pods/eviction to webhooks"


def _not_supported(path: str, value: Any, supported: tuple[str, ...]) -> Cause:
    detail = "supported values: " + ", ".join(f'"{v}"' for v in supported)
    return Cause(path, "FieldValueNotSupported", detail, value)


def _client_config_errors(config: Mapping[str, Any], path: str) -> list[Cause]:
    url, service = config.get("url"), config.get("service")
    if (url is None) == (service is None):
        return [Cause(path, "FieldValueRequired", "exactly one of url or service is required")]
    causes: list[Cause] = []
    if service is None:
        parsed = urlsplit(str(url))
        if parsed.scheme != "https":
            causes.append(
                Cause(
                    f"{path}.url",
                    "FieldValueInvalid",
                    "'https' is the only allowed URL scheme",
                    url,
                )
            )
        if not parsed.hostname:
            causes.append(Cause(f"{path}.url", "FieldValueInvalid", "host must be specified", url))
        if parsed.username or parsed.password:
            causes.append(
                Cause(
                    f"{path}.url",
                    "FieldValueInvalid",
                    "user information is not permitted in the URL",
                    url,
                )
            )
        if parsed.fragment:
            causes.append(
                Cause(f"{path}.url", "FieldValueInvalid", "fragments are not permitted", url)
            )
        if parsed.query:
            causes.append(
                Cause(f"{path}.url", "FieldValueInvalid", "query parameters are not permitted", url)
            )
    else:
        for key in ("namespace", "name"):
            if not service.get(key):
                causes.append(
                    Cause(
                        f"{path}.service.{key}",
                        "FieldValueRequired",
                        "service " + key + " is required",
                    )
                )
        service_path = service.get("path")
        if service_path is not None and not str(service_path).startswith("/"):
            causes.append(
                Cause(
                    f"{path}.service.path",
                    "FieldValueInvalid",
                    "must start with a '/'",
                    service_path,
                )
            )
        port = service.get("port", 443)
        if not isinstance(port, int) or not 1 <= port <= 65535:
            causes.append(
                Cause(
                    f"{path}.service.port",
                    "FieldValueInvalid",
                    "port is not valid: must be between 1 and 65535, inclusive",
                    port,
                )
            )
    bundle = config.get("caBundle")
    if bundle is not None:
        try:
            base64.b64decode(str(bundle), validate=True)
        except (binascii.Error, ValueError):
            causes.append(Cause(f"{path}.caBundle", "FieldValueInvalid", "must be base64", "..."))
    return causes


def _rule_errors(rule: Mapping[str, Any], path: str) -> list[Cause]:
    causes: list[Cause] = []
    operations = rule.get("operations") or []
    if not operations:
        causes.append(Cause(f"{path}.operations", "FieldValueRequired", ""))
    for i, op in enumerate(operations):
        if op not in _OPERATIONS:
            causes.append(_not_supported(f"{path}.operations[{i}]", op, _OPERATIONS))
    if len(operations) > 1 and "*" in operations:
        causes.append(
            Cause(
                f"{path}.operations",
                "FieldValueInvalid",
                "if '*' is present, must not specify other operations",
                operations,
            )
        )
    for key in ("apiGroups", "apiVersions", "resources"):
        if not rule.get(key):
            causes.append(Cause(f"{path}.{key}", "FieldValueRequired", ""))
    for i, version in enumerate(rule.get("apiVersions") or []):
        if not version:
            causes.append(
                Cause(f"{path}.apiVersions[{i}]", "FieldValueRequired", "resource cannot be empty")
            )
    scope = rule.get("scope", "*")
    if scope not in ("Cluster", "Namespaced", "*"):
        causes.append(_not_supported(f"{path}.scope", scope, ("Cluster", "Namespaced", "*")))
    return causes


def _local_rule_errors(rule: Mapping[str, Any], path: str) -> list[Cause]:
    """The local cluster calls webhooks only for CREATE pods/eviction (the only request it
    sends through admission), so it refuses a rule that would match anything else, rather
    than store a webhook it would silently never call."""
    return [
        Cause(f"{path}.resources[{i}]", "FieldValueForbidden", LOCAL_ADMISSION)
        for i, resource in enumerate(rule.get("resources") or [])
        if resource not in ("pods/eviction", "*/eviction")
    ]


def _selector_errors(selector: Any, path: str) -> list[Cause]:
    if selector is None:
        return []
    if not isinstance(selector, Mapping):
        return [Cause(path, "FieldValueInvalid", "must be a label selector", selector)]
    causes: list[Cause] = []
    labels = selector.get("matchLabels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        causes.append(
            Cause(f"{path}.matchLabels", "FieldValueInvalid", "must map strings to strings", labels)
        )
    for i, expression in enumerate(selector.get("matchExpressions") or []):
        where = f"{path}.matchExpressions[{i}]"
        if not isinstance(expression, Mapping):
            causes.append(Cause(where, "FieldValueInvalid", "must be an object", expression))
            continue
        if not expression.get("key") or not isinstance(expression["key"], str):
            causes.append(Cause(f"{where}.key", "FieldValueRequired", "Required value"))
        op, values = expression.get("operator"), expression.get("values") or []
        if op not in _SELECTOR_OPERATORS:
            causes.append(_not_supported(f"{where}.operator", op, _SELECTOR_OPERATORS))
        elif op in ("In", "NotIn") and not values:
            causes.append(
                Cause(
                    f"{where}.values",
                    "FieldValueRequired",
                    "must be specified when `operator` is 'In' or 'NotIn'",
                )
            )
        elif op in ("Exists", "DoesNotExist") and values:
            causes.append(
                Cause(
                    f"{where}.values",
                    "FieldValueForbidden",
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                )
            )
    return causes


def _webhook_errors(webhook: Mapping[str, Any], path: str) -> list[Cause]:
    causes: list[Cause] = []
    name = webhook.get("name") or ""
    if not name:
        causes.append(Cause(f"{path}.name", "FieldValueRequired", ""))
    else:
        causes += name_errors("subdomain", name, f"{path}.name")
        if name.count(".") < 2:
            causes.append(
                Cause(
                    f"{path}.name",
                    "FieldValueInvalid",
                    "should be a domain with at least three segments separated by dots",
                    name,
                )
            )
    versions = webhook.get("admissionReviewVersions") or []
    if not versions:
        causes.append(
            Cause(
                f"{path}.admissionReviewVersions",
                "FieldValueRequired",
                "must specify one of v1, v1beta1",
            )
        )
    elif not set(versions) & {"v1", "v1beta1"}:
        causes.append(
            Cause(
                f"{path}.admissionReviewVersions",
                "FieldValueInvalid",
                "must include at least one of v1, v1beta1",
                versions,
            )
        )
    side_effects = webhook.get("sideEffects")
    if side_effects is None:
        causes.append(Cause(f"{path}.sideEffects", "FieldValueRequired", ""))
    elif side_effects not in ("None", "NoneOnDryRun"):
        causes.append(_not_supported(f"{path}.sideEffects", side_effects, ("None", "NoneOnDryRun")))
    policy = webhook.get("failurePolicy", "Fail")
    if policy not in ("Fail", "Ignore"):
        causes.append(_not_supported(f"{path}.failurePolicy", policy, ("Fail", "Ignore")))
    match_policy = webhook.get("matchPolicy", "Equivalent")
    if match_policy not in ("Exact", "Equivalent"):
        causes.append(_not_supported(f"{path}.matchPolicy", match_policy, ("Exact", "Equivalent")))
    timeout = webhook.get("timeoutSeconds", 10)
    if not isinstance(timeout, int) or not 1 <= timeout <= 30:
        causes.append(
            Cause(
                f"{path}.timeoutSeconds",
                "FieldValueInvalid",
                "the timeout value must be between 1 and 30 seconds",
                timeout,
            )
        )
    causes += _client_config_errors(webhook.get("clientConfig") or {}, f"{path}.clientConfig")
    for j, rule in enumerate(webhook.get("rules") or []):
        causes += _rule_errors(rule, f"{path}.rules[{j}]")
        causes += _local_rule_errors(rule, f"{path}.rules[{j}]")
    for key in ("namespaceSelector", "objectSelector"):
        causes += _selector_errors(webhook.get(key), f"{path}.{key}")
    if webhook.get("matchConditions"):
        causes.append(
            Cause(
                f"{path}.matchConditions",
                "FieldValueForbidden",
                "the local cluster does not evaluate CEL match conditions",
            )
        )
    return causes


def webhook_configuration_errors(config: Mapping[str, Any]) -> list[Cause]:
    """Validation of an admissionregistration.k8s.io/v1 ValidatingWebhookConfiguration, with
    the local cluster's two limits (see :func:`_local_rule_errors`; no ``matchConditions``)."""
    causes: list[Cause] = []
    seen: set[str] = set()
    for i, webhook in enumerate(config.get("webhooks") or []):
        causes += _webhook_errors(webhook, f"webhooks[{i}]")
        name = webhook.get("name")
        if name and name in seen:
            causes.append(Cause(f"webhooks[{i}].name", "FieldValueDuplicate", "", name))
        seen.add(name)
    return causes


def default_webhook_configuration(config: Obj) -> None:
    """What the v1 API defaults in each webhook."""
    for webhook in config.get("webhooks") or []:
        webhook.setdefault("failurePolicy", "Fail")
        webhook.setdefault("matchPolicy", "Equivalent")
        webhook.setdefault("namespaceSelector", {})
        webhook.setdefault("objectSelector", {})
        webhook.setdefault("timeoutSeconds", 10)
        for rule in webhook.get("rules") or []:
            rule.setdefault("scope", "*")
        service = (webhook.get("clientConfig") or {}).get("service")
        if service is not None:
            service.setdefault("port", 443)


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
    elif resource == "validatingwebhookconfigurations":
        default_webhook_configuration(obj)
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
