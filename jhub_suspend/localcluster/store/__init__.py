"""The object store of the local API server.

Everything that decides something is a small pure function, in the module of its concern:

- :mod:`.resources`: the resources served, the API's errors, its time format;
- :mod:`.validation`: validation and defaulting of objects;
- :mod:`.lifecycle`: what an update or a delete does to an object;
- :mod:`.patches`: the three patch algorithms (merge, strategic merge, JSON patch);
- :mod:`.watches`: how a watch sees a change, and the stream it reads;
- :mod:`.storage`: :class:`Store`, which only holds the objects, the resourceVersion counter
  and the change history that watches replay.

Every name is importable from this package, as it was from the single module it replaces.

The store is not thread-safe: use it from the event loop that serves the API (the scheduler and
the kubelets run there too). Time comes only from the injected clock.
"""

from __future__ import annotations

from ..selectors import ApiError
from .lifecycle import (
    bump_generation,
    check_preconditions,
    deletion_grace,
    keep_identity,
    mark_for_deletion,
    owned_by,
    prepare_update,
    should_delete_during_update,
    without_resource_version,
)
from .patches import (
    MERGE_KEYS,
    PATCH_TYPES,
    PRIMITIVE_SET_LISTS,
    apply_json_patch,
    apply_merge_patch,
    apply_patch,
    apply_strategic_merge_patch,
)
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
from .storage import (
    Store,
    object_reference,
)
from .validation import (
    LOCAL_ADMISSION,
    Cause,
    apply_defaults,
    default_container,
    default_pod_spec,
    default_secret,
    default_service_spec,
    default_webhook_configuration,
    image_pull_policy,
    initial_status,
    invalid,
    name_errors,
    pod_errors,
    qos_class,
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

__all__ = [
    "INITIAL_NAMESPACES",
    "LOCAL_ADMISSION",
    "MERGE_KEYS",
    "MODIFIED_CONFLICT",
    "PATCH_TYPES",
    "PRIMITIVE_SET_LISTS",
    "RESOURCES",
    "ApiError",
    "Cause",
    "Change",
    "Obj",
    "ResourceInfo",
    "Store",
    "WatchStream",
    "apply_defaults",
    "apply_json_patch",
    "apply_merge_patch",
    "apply_patch",
    "apply_strategic_merge_patch",
    "bump_generation",
    "check_preconditions",
    "conflict",
    "default_container",
    "default_pod_spec",
    "default_secret",
    "default_service_spec",
    "default_webhook_configuration",
    "deletion_grace",
    "image_pull_policy",
    "initial_status",
    "invalid",
    "keep_identity",
    "mark_for_deletion",
    "name_errors",
    "not_found",
    "object_reference",
    "owned_by",
    "parse_resource_version",
    "pod_errors",
    "prepare_update",
    "qos_class",
    "resource_info",
    "should_delete_during_update",
    "validate_create",
    "validate_pod_update",
    "watch_event_for",
    "webhook_configuration_errors",
    "with_resource_version",
    "without_resource_version",
]
