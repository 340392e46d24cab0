"""Draining a node as ``kubectl drain`` does, through the Eviction API.

``kubectl drain NODE`` cordons the node, then evicts every pod on it at once
(``POST pods/{name}/eviction``, policy/v1). An eviction refused with 429 (a
PodDisruptionBudget, or an admission webhook such as jhub-suspend's) is tried again (kubectl
waits 5 s between tries; here the waits are short and back off); one answered 404 is done (the
pod is gone); any other error ends the drain. Once an eviction is accepted, it waits until
the pod is deleted (or replaced by a new pod of the same name). The local cluster has no
DaemonSet or mirror pods, which kubectl would skip.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from .waiting import wait_for


class DrainError(Exception):
    """An eviction failed with something other than 429 or 404, as kubectl drain fails."""


@dataclass
class Eviction:
    """What happened to one pod's eviction: each answer, in order (code, message)."""

    namespace: str
    name: str
    node: str
    answers: list[tuple[int, str]] = field(default_factory=list)

    @property
    def refusals(self) -> list[str]:
        return [message for code, message in self.answers if code == 429]


async def _evict_until_done(core: client.CoreV1Api, eviction: Eviction, timeout: float) -> None:
    body = client.V1Eviction(
        api_version="policy/v1",
        kind="Eviction",
        metadata=client.V1ObjectMeta(name=eviction.name, namespace=eviction.namespace),
    )
    uid = None

    async def attempt() -> bool:
        nonlocal uid
        try:
            pod = await core.read_namespaced_pod(eviction.name, eviction.namespace)
            uid = pod.metadata.uid
            await core.create_namespaced_pod_eviction(eviction.name, eviction.namespace, body)
        except ApiException as e:
            message = _message(e)
            eviction.answers.append((e.status, message))
            if e.status == 404:
                return True
            if e.status == 429:
                return False
            raise DrainError(
                f"error when evicting pods/{eviction.name} -n {eviction.namespace}: {message}"
            ) from None
        eviction.answers.append((201, ""))
        return True

    await wait_for(
        attempt,
        f"the eviction of {eviction.namespace}/{eviction.name} was refused for {timeout} s",
        timeout,
        max_wait=1,
    )

    async def deleted() -> bool:
        try:
            pod = await core.read_namespaced_pod(eviction.name, eviction.namespace)
        except ApiException as e:
            if e.status == 404:
                return True
            raise
        return bool(pod.metadata.uid != uid)

    await wait_for(deleted, f"pod {eviction.namespace}/{eviction.name} was never deleted", timeout)


def _message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or b"{}").get("message") or error.reason)
    except ValueError:
        return str(error.reason)


async def drain(core: client.CoreV1Api, node: str, timeout: float = 300) -> list[Eviction]:
    """Cordon ``node`` and evict every pod on it, as ``kubectl drain`` does; returns what
    each eviction was answered. Raises :class:`DrainError` as kubectl drain fails."""
    await core.patch_node(node, {"spec": {"unschedulable": True}})
    pods = await core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}")
    evictions = [Eviction(p.metadata.namespace, p.metadata.name, node) for p in pods.items]
    await asyncio.gather(*(_evict_until_done(core, e, timeout) for e in evictions))
    return evictions
