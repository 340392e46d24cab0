"""Every private symbol of JupyterHub and KubeSpawner that jhub-suspend relies on, in one place.

Private names change without notice, so the product reaches them only through this module, and
``tests/test_upstream.py`` has one test per symbol that fails when upstream changes it. Checked
against jupyterhub 6.1.1 and jupyterhub-kubespawner 7.1.0 (the versions in constraints.txt);
when either is upgraded, run that test first.

KubeSpawner (``kubespawner.KubeSpawner``):

- ``_start()`` (overridden): the coroutine ``KubeSpawner.start()`` runs to create the pod and wait
  for it. SuspendingKubeSpawner overrides it to restore instead of starting fresh, and calls the
  original through :func:`kubespawner_start` to create the pod. The public ``start()`` wraps it
  in its exponential backoff, which the restore path needs to keep.
- ``_start_watching_pods()``: starts (or joins) the shared pod reflector. A stop or a start
  reads the reflector before KubeSpawner's own start or stop has started it.
- ``_get_pod_url(pod)``: the server's URL from a running pod's IP and port, as KubeSpawner
  returns it from ``start()``; an adopted pod must answer the same.

JupyterHub's ``Spawner`` (``jupyterhub.spawner.Spawner``):

- ``_log_name``: "alice" or "alice:name", the name JupyterHub's own log lines use.
- ``_stop_pending``: set by the hub while a stop is in progress; ``poll()`` must not discard a
  verified checkpoint during a suspension's own stop.

JupyterHub's service authentication (``jupyterhub.services.auth.HubAuthenticated``, and
``jupyterhub._xsrf_utils``):

- ``HubAuthenticated._hub_auth_user_cache``: where ``get_current_user()`` caches the user
  model. The service's handlers authenticate asynchronously in ``prepare()`` and store the model
  there, so the synchronous ``current_user`` (and ``web.authenticated``) find it.
- ``HubAuthenticated._xsrf_token_id``: the id the hub ties a login's XSRF token to.
- ``jupyterhub._xsrf_utils._get_xsrf_token_cookie(handler)``: the ``(token, id)`` in the
  request's ``_xsrf`` cookie; a session whose cookie id differs from ``_xsrf_token_id`` belongs
  to an older login and must log in again.

This module imports neither kubespawner nor tornado at import time, so the service can use it
without loading the spawner's dependencies.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

KUBESPAWNER_START = "_start"
"""The KubeSpawner method SuspendingKubeSpawner overrides (see the module's docstring)."""


# ---- KubeSpawner ---------------------------------------------------------------------------


def kubespawner_start(parent: Any) -> Awaitable[Any]:
    """KubeSpawner's own ``_start()``: pass ``super()`` from the overriding spawner, so the
    method resolution order (and any mixin) is kept."""
    return getattr(parent, KUBESPAWNER_START)()


def watch_pods(spawner: Any) -> Awaitable[Any]:
    """Start, or join, KubeSpawner's shared pod reflector."""
    return spawner._start_watching_pods()


def pod_url(spawner: Any, pod: dict[str, Any]) -> str:
    """The URL KubeSpawner's start returns for this running pod."""
    return str(spawner._get_pod_url(pod))


# ---- JupyterHub's Spawner ------------------------------------------------------------------


def log_name(spawner: Any) -> str:
    """The server's name as JupyterHub's log lines write it."""
    return str(spawner._log_name)


def stop_pending(spawner: Any) -> bool:
    """Whether the hub is stopping this server now."""
    return bool(getattr(spawner, "_stop_pending", False))


# ---- JupyterHub's service authentication ---------------------------------------------------


def set_current_user(handler: Any, model: dict[str, Any] | None) -> None:
    """Make ``model`` the handler's ``current_user`` (None: nobody is logged in)."""
    handler._hub_auth_user_cache = model


def xsrf_cookie_is_current(handler: Any) -> bool:
    """Whether the request's ``_xsrf`` cookie belongs to the current login."""
    from jupyterhub._xsrf_utils import _get_xsrf_token_cookie

    _, cookie_id = _get_xsrf_token_cookie(handler)
    return bool(cookie_id == handler._xsrf_token_id)
