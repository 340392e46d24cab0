"""The service's Kubernetes calls, through one shared kubernetes_asyncio client.

Lists are read as raw JSON (``_preload_content=False``): turning ten thousand pods into model
objects costs more than the whole policy cycle. Reads are retried with jittered backoff on
connection errors, timeouts, 429 and 5xx; deleting something already gone succeeds, creating
something already there succeeds.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from ..checkpoints import discard_marker_name
from ..retry import with_retries
from .observe import MANAGED_BY

MARKER_SELECTOR = f"{MANAGED_BY[0]}={MANAGED_BY[1]}"
MARKER_LABEL = "jhub-suspend.jupyter.org/discard-marker"


def _retryable(e: BaseException) -> bool:
    if isinstance(e, ApiException):
        return e.status in (0, 429, 500, 502, 503, 504)
    return isinstance(e, TimeoutError | aiohttp.ClientError | ConnectionError)


async def make_api_client(kubeconfig: str = "", in_cluster: bool | None = None) -> client.ApiClient:
    """An API client from the in-cluster service account, or from a kubeconfig file."""
    if in_cluster is None:
        in_cluster = "KUBERNETES_SERVICE_HOST" in os.environ and not kubeconfig
    if in_cluster:
        config.load_incluster_config()
        return client.ApiClient()
    return await config.new_client_from_config(config_file=kubeconfig or None)


class Kube:
    """Pods, discard markers and nodes, in the notebooks' namespace."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        timeout: float = 30.0,
        total_timeout: float = 120.0,
        log: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.timeout = timeout
        self.total_timeout = total_timeout
        self.log = log or logging.getLogger(__name__)

    async def _read(self, what: str, call: Any) -> Any:
        async def attempt(_: float) -> Any:  # cancelled when its time is up
            resp = await call()
            data = await resp.read()
            # Unlike a preloaded call, a raw one returns whatever the status: an error's body
            # (a Status object) would be taken for the object asked for.
            if not 200 <= resp.status <= 299:
                error = ApiException(status=resp.status, reason=resp.reason)
                error.body = data
                raise error
            return json.loads(data)

        return await with_retries(
            attempt,
            what,
            retryable=_retryable,
            attempt_timeout=self.timeout,
            total_timeout=self.total_timeout,
            log=self.log,
        )

    async def list_pods(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every pod of ``namespace`` (None: all namespaces), as JSON."""
        if namespace is None:
            data = await self._read(
                "list pods",
                lambda: self.core.list_pod_for_all_namespaces(
                    field_selector="status.phase=Pending", _preload_content=False
                ),
            )
        else:
            data = await self._read(
                f"list pods in {namespace}",
                lambda: self.core.list_namespaced_pod(namespace, _preload_content=False),
            )
        return list(data.get("items") or [])

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One pod as JSON, or None when there is none."""
        try:
            return await self._read(
                f"read pod {namespace}/{name}",
                lambda: self.core.read_namespaced_pod(name, namespace, _preload_content=False),
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def list_nodes(self) -> list[dict[str, Any]] | None:
        """Every node as JSON, or None when this service may not list nodes."""
        try:
            data = await self._read(
                "list nodes", lambda: self.core.list_node(_preload_content=False)
            )
        except ApiException as e:
            if e.status in (401, 403):
                return None
            raise
        return list(data.get("items") or [])

    async def node_labels(self) -> dict[str, dict[str, str]] | None:
        """Labels per node, or None when this service may not list nodes."""
        nodes = await self.list_nodes()
        if nodes is None:
            return None
        return {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in nodes}

    async def node_exists(self, name: str) -> bool | None:
        """Whether the cluster has a node ``name``; None when this service may not read nodes."""
        try:
            await self._read(
                f"read node {name}", lambda: self.core.read_node(name, _preload_content=False)
            )
        except ApiException as e:
            if e.status == 404:
                return False
            if e.status in (401, 403):
                return None
            raise
        return True

    async def patch_pod_annotations(
        self, namespace: str, pod: str, annotations: dict[str, str | None]
    ) -> None:
        """Merge-patch annotations (None removes one)."""
        await self.core.patch_namespaced_pod(
            pod, namespace, {"metadata": {"annotations": annotations}}
        )

    async def list_markers(self, namespace: str) -> list[dict[str, Any]]:
        data = await self._read(
            f"list discard markers in {namespace}",
            lambda: self.core.list_namespaced_secret(
                namespace, label_selector=f"{MARKER_SELECTOR},{MARKER_LABEL}=true",
                _preload_content=False,
            ),
        )  # fmt: skip
        return list(data.get("items") or [])

    async def create_marker(self, namespace: str, digest: str, owner: str) -> bool:
        """Mark a checkpoint as discarded; False if the marker was already there."""
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=discard_marker_name(digest),
                labels={MANAGED_BY[0]: MANAGED_BY[1], MARKER_LABEL: "true"},
                annotations={"jhub-suspend.jupyter.org/server": owner},
            ),
            data={"digest": base64.b64encode(digest.encode()).decode()},
        )
        try:
            await self.core.create_namespaced_secret(namespace, body)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    async def delete_secret(self, namespace: str, name: str) -> None:
        try:
            await self.core.delete_namespaced_secret(name, namespace)
        except ApiException as e:
            if e.status != 404:
                raise


def marker_digest(secret: dict[str, Any]) -> str:
    """The checkpoint digest a discard marker names ("" if unreadable)."""
    raw = (secret.get("data") or {}).get("digest", "")
    try:
        return base64.b64decode(raw).decode()
    except (ValueError, UnicodeDecodeError):
        return ""
