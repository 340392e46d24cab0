"""The store itself: the objects, the resourceVersion counter and the change history."""

from __future__ import annotations

import builtins
import copy
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...kubevalues import rfc3339
from ..selectors import ApiError, Selector, bad_request, make_selector
from .lifecycle import (
    bump_generation,
    check_preconditions,
    deletion_grace,
    mark_for_deletion,
    owned_by,
    prepare_update,
    should_delete_during_update,
    without_resource_version,
)
from .patches import apply_patch
from .resources import (
    INITIAL_NAMESPACES,
    MODIFIED_CONFLICT,
    RESOURCES,
    Obj,
    ResourceInfo,
    conflict,
    not_found,
    resource_info,
)
from .validation import (
    apply_defaults,
    initial_status,
    invalid,
    pod_errors,
    validate_create,
    validate_pod_update,
    webhook_configuration_errors,
)
from .watches import (
    Change,
    WatchStream,
    parse_resource_version,
    watch_event_for,
    with_resource_version,
)

log = logging.getLogger(__name__)


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
    """Objects of the resources in :data:`RESOURCES`, with their history."""

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
        new["apiVersion"] = info.api_version
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
        elif validate and info.plural == "validatingwebhookconfigurations":
            causes = webhook_configuration_errors(prepared)
            if causes:
                raise invalid(info.kind, old["metadata"]["name"], causes)
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
