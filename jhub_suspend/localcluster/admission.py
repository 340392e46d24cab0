"""Validating admission webhooks, called as the real API server calls them.

For a request that goes through admission, every ``admissionregistration.k8s.io/v1``
ValidatingWebhookConfiguration's webhooks are matched against it (rules on operations, API
groups, versions, resources with subresources, and scope; ``namespaceSelector`` on the labels
of the request's namespace; ``objectSelector`` on the labels of the object sent to the webhook
and of the old object, so for ``pods/eviction`` on the Eviction, not on the pod it names), and
the matching ones are called at once, each with an ``admission.k8s.io/v1`` AdmissionReview
POSTed over HTTPS:

- to ``clientConfig.url``, or to ``clientConfig.service`` resolved through the Service's
  Endpoints object to an endpoint address, as kube-apiserver does with
  ``--enable-aggregator-routing`` (the local cluster has no cluster IPs to route), with the
  server's certificate checked for ``NAME.NAMESPACE.svc``;
- with the server's certificate verified against ``clientConfig.caBundle`` (the system's
  roots without one), and ``?timeout=`` and a deadline of ``timeoutSeconds``.

A webhook that denies the request rejects it with its ``status`` (a code under 400 becomes
400, the message is prefixed with which webhook denied it); one that cannot be called, times
out or answers with something other than a valid AdmissionReview for this request rejects it
with a 500 under ``failurePolicy: Fail`` and is skipped under ``Ignore``. The answers'
``warnings`` are returned for the response's Warning headers.

The local cluster sends only ``CREATE pods/eviction`` through admission (and refuses webhook
configurations whose rules would match anything else, see ``store.validation``). The matching
and the review's shape are pure functions; :class:`Admission` does the calls.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.netutil import DefaultLoopResolver, OverrideResolver

from .selectors import ApiError, match_label_selector_object
from .store import Store

log = logging.getLogger(__name__)

REVIEW_VERSION = "admission.k8s.io/v1"
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")


@dataclass(frozen=True)
class Attributes:
    """What admission knows of one request (the API server's ``admission.Attributes``)."""

    operation: str  # CREATE, UPDATE, DELETE, CONNECT
    resource: tuple[str, str, str]  # group, version, resource
    subresource: str
    kind: tuple[str, str, str]  # group, version, kind of the object sent
    name: str
    namespace: str | None
    obj: Mapping[str, Any] | None
    old_obj: Mapping[str, Any] | None = None
    user: str | None = None
    dry_run: bool = False
    options: Mapping[str, Any] | None = None


class StatusError(ApiError):
    """An error whose Status the API server sends as it is (a webhook's denial)."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(int(status["code"]), status.get("reason", ""), status["message"])
        self._status = status

    def status(self) -> dict[str, Any]:
        return dict(self._status)


class WebhookCallError(Exception):
    """A webhook could not be called, or did not answer properly; its failurePolicy decides."""


@dataclass
class Outcome:
    """What admission decided: the warnings to send, or the error that rejects the request."""

    warnings: list[str] = field(default_factory=list)
    error: ApiError | None = None


# --- matching (pure) -------------------------------------------------------------------------


def _split_resource(entry: str) -> tuple[str, str]:
    resource, _, sub = entry.partition("/")
    return resource, sub


def rule_matches(rule: Mapping[str, Any], attrs: Attributes) -> bool:
    """Whether one of a webhook's rules matches the request (the apiserver's rule matcher)."""
    group, version, resource = attrs.resource

    def has(key: str, value: str) -> bool:
        values = rule.get(key) or []
        return "*" in values or value in values

    if not (has("operations", attrs.operation) and has("apiGroups", group)):
        return False
    if not has("apiVersions", version):
        return False
    if not any(
        res in ("*", resource) and sub in ("*", attrs.subresource)
        for res, sub in map(_split_resource, rule.get("resources") or [])
    ):
        return False
    scope = rule.get("scope", "*")
    is_namespace = resource == "namespaces" and group == ""
    if scope == "Namespaced":
        return not is_namespace and attrs.namespace is not None
    if scope == "Cluster":
        return is_namespace or attrs.namespace is None
    return True


def namespace_selected(
    webhook: Mapping[str, Any], attrs: Attributes, namespace_labels: Mapping[str, str] | None
) -> bool:
    """``namespaceSelector``: on the labels of the request's namespace; cluster-scoped requests
    (other than for namespaces themselves) are never skipped by it."""
    selector = webhook.get("namespaceSelector") or {}
    if not selector:
        return True
    group, _, resource = attrs.resource
    if group == "" and resource == "namespaces":
        labels = ((attrs.obj or attrs.old_obj or {}).get("metadata") or {}).get("labels") or {}
        return match_label_selector_object(selector, labels)
    if attrs.namespace is None:
        return True
    return match_label_selector_object(selector, namespace_labels or {})


def object_selected(webhook: Mapping[str, Any], attrs: Attributes) -> bool:
    """``objectSelector``: on the labels of the object sent and of the old object; a missing
    object matches nothing. For a subresource this is the subresource's object (for
    ``pods/eviction`` the Eviction, which carries no labels of the pod)."""
    selector = webhook.get("objectSelector") or {}
    if not selector:
        return True
    for obj in (attrs.obj, attrs.old_obj):
        if obj is None:
            continue
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if match_label_selector_object(selector, labels):
            return True
    return False


def webhook_applies(
    webhook: Mapping[str, Any], attrs: Attributes, namespace_labels: Mapping[str, str] | None
) -> bool:
    return (
        any(rule_matches(rule, attrs) for rule in webhook.get("rules") or [])
        and namespace_selected(webhook, attrs, namespace_labels)
        and object_selected(webhook, attrs)
    )


# --- the review and its answer (pure) --------------------------------------------------------


def _gvk(parts: tuple[str, str, str], last: str) -> dict[str, str]:
    return {"group": parts[0], "version": parts[1], last: parts[2]}


def admission_review(attrs: Attributes, uid: str) -> dict[str, Any]:
    """The ``admission.k8s.io/v1`` AdmissionReview sent for a request."""
    if attrs.user is None:
        user_info = {"username": "system:anonymous", "groups": ["system:unauthenticated"]}
    else:
        user_info = {"username": attrs.user, "groups": ["system:authenticated"]}
    request: dict[str, Any] = {
        "uid": uid,
        "kind": _gvk(attrs.kind, "kind"),
        "resource": _gvk(attrs.resource, "resource"),
        "requestKind": _gvk(attrs.kind, "kind"),
        "requestResource": _gvk(attrs.resource, "resource"),
        "name": attrs.name,
        "operation": attrs.operation,
        "userInfo": user_info,
        "object": attrs.obj,
        "oldObject": attrs.old_obj,
        "dryRun": attrs.dry_run,
        "options": attrs.options,
    }
    if attrs.subresource:
        request["subResource"] = attrs.subresource
        request["requestSubResource"] = attrs.subresource
    if attrs.namespace is not None:
        request["namespace"] = attrs.namespace
    return {"apiVersion": REVIEW_VERSION, "kind": "AdmissionReview", "request": request}


def review_response(body: bytes, uid: str) -> dict[str, Any]:
    """The ``response`` of a webhook's answer, checked as the API server checks a v1 answer
    of a validating webhook; raises :class:`WebhookCallError` saying what is wrong."""
    try:
        review = json.loads(body)
    except ValueError as e:
        raise WebhookCallError(f"the answer is not JSON: {e}") from None
    if not isinstance(review, dict):
        raise WebhookCallError("the answer is not a JSON object")
    got = f"{review.get('apiVersion')}, Kind={review.get('kind')}"
    if review.get("apiVersion") != REVIEW_VERSION or review.get("kind") != "AdmissionReview":
        raise WebhookCallError(
            f"expected webhook response of {REVIEW_VERSION}, Kind=AdmissionReview, got {got}"
        )
    response = review.get("response")
    if not isinstance(response, dict):
        raise WebhookCallError("webhook response was absent")
    if response.get("uid") != uid:
        raise WebhookCallError(f'expected response.uid="{uid}", got "{response.get("uid")}"')
    if not isinstance(response.get("allowed"), bool):
        raise WebhookCallError("response.allowed is not a boolean")
    if response.get("patchType") is not None:
        raise WebhookCallError("validating webhook may not return response.patchType")
    if response.get("patch"):
        raise WebhookCallError("validating webhook may not return response.patch")
    warnings = response.get("warnings") or []
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        raise WebhookCallError("response.warnings is not a list of strings")
    return response


def denial(webhook: str, result: Mapping[str, Any] | None) -> StatusError:
    """The error a denial returns to the client: the webhook's status, with a code of at
    least 400 and a message that names the webhook (the apiserver's ``ToStatusErr``)."""
    status: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}}
    result = dict(result or {})
    code = result.get("code")
    status["code"] = code if isinstance(code, int) and code >= 400 else 400
    status["status"] = "Failure"
    denied_by = f'admission webhook "{webhook}" denied the request'
    message, reason = result.get("message"), result.get("reason")
    if message:
        status["message"] = f"{denied_by}: {message}"
    elif reason:
        status["message"] = f"{denied_by}: {reason}"
    else:
        status["message"] = f"{denied_by} without explanation"
    if reason:
        status["reason"] = reason
    if isinstance(result.get("details"), dict):
        status["details"] = result["details"]
    return StatusError(status)


def call_failure(webhook: str, why: str) -> ApiError:
    """The 500 a webhook that could not be called gives under ``failurePolicy: Fail``."""
    message = f'failed calling webhook "{webhook}": {why}'
    return StatusError(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"Internal error occurred: {message}",
            "reason": "InternalError",
            "details": {"causes": [{"message": message}]},
            "code": 500,
        }
    )


# --- calling (IO) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where to send a webhook's review: the URL, the address it is dialled at when the URL's
    host is a Service name, and the name the server's certificate must carry (the URL's)."""

    url: str
    dial: tuple[str, int] | None = None


def service_endpoint(store: Store, ref: Mapping[str, Any]) -> Endpoint:
    """A webhook's ``clientConfig.service``, resolved through its Endpoints object."""
    namespace, name = ref.get("namespace", ""), ref.get("name", "")
    port = int(ref.get("port", 443))
    try:
        service = store.get("services", namespace, name)
    except ApiError:
        raise WebhookCallError(f'service "{name}" not found') from None
    spec = service.get("spec") or {}
    if spec.get("type", "ClusterIP") not in SERVICE_TYPES:
        raise WebhookCallError(f'unsupported service type "{spec.get("type")}"')
    service_port = next((p for p in spec.get("ports") or [] if p.get("port") == port), None)
    if service_port is None:
        raise WebhookCallError(f'no service port {port} found for service "{name}"')
    port_name = service_port.get("name") or ""
    try:
        endpoints = store.get("endpoints", namespace, name)
    except ApiError:
        endpoints = {}
    for subset in endpoints.get("subsets") or []:
        addresses = subset.get("addresses") or []
        for endpoint_port in subset.get("ports") or []:
            if (endpoint_port.get("name") or "") == port_name and addresses:
                host = f"{name}.{namespace}.svc"
                path = ref.get("path") or ""
                return Endpoint(
                    f"https://{host}:{port}{path}", (addresses[0]["ip"], int(endpoint_port["port"]))
                )
    raise WebhookCallError(f'no endpoints available for service "{name}"')


def _tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    if not ca_bundle:
        return ssl.create_default_context()
    try:
        pem = base64.b64decode(ca_bundle).decode()
        return ssl.create_default_context(cadata=pem)
    except (ValueError, ssl.SSLError) as e:
        raise WebhookCallError(f"caBundle holds no usable certificate: {e}") from None


class Admission:
    """Calls the validating webhooks of the configurations in ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _namespace_labels(self, namespace: str | None) -> dict[str, str]:
        if namespace is None:
            return {}
        try:
            ns = self.store.get("namespaces", None, namespace)
        except ApiError:
            return {}
        return dict((ns.get("metadata") or {}).get("labels") or {})

    def matching(self, attrs: Attributes) -> list[dict[str, Any]]:
        """The webhooks to call, in the order of their configurations' names."""
        configs, _ = self.store.list("validatingwebhookconfigurations")
        labels = self._namespace_labels(attrs.namespace)
        return [
            webhook
            for config in configs
            for webhook in config.get("webhooks") or []
            if webhook_applies(webhook, attrs, labels)
        ]

    async def validate(self, attrs: Attributes) -> Outcome:
        """Call every matching webhook at once; the first denial or failure (in order) wins."""
        webhooks = self.matching(attrs)
        if not webhooks:
            return Outcome()
        results = await asyncio.gather(*(self._call(w, attrs) for w in webhooks))
        outcome = Outcome()
        for webhook, (response, failure) in zip(webhooks, results, strict=True):
            name = webhook["name"]
            if failure is not None:
                if webhook.get("failurePolicy", "Fail") == "Ignore":
                    log.warning(
                        "webhook %s failed, ignored by its failurePolicy: %s", name, failure
                    )
                    continue
                outcome.error = outcome.error or call_failure(name, failure)
                continue
            assert response is not None
            outcome.warnings += response.get("warnings") or []
            if not response["allowed"]:
                outcome.error = outcome.error or denial(name, response.get("status"))
        return outcome

    async def _call(
        self, webhook: Mapping[str, Any], attrs: Attributes
    ) -> tuple[dict[str, Any] | None, str | None]:
        """(the webhook's response, None), or (None, why it failed)."""
        uid = str(uuid.uuid4())
        timeout = float(webhook.get("timeoutSeconds", 10))
        config = webhook.get("clientConfig") or {}
        try:
            if config.get("service") is not None:
                endpoint = service_endpoint(self.store, config["service"])
            else:
                endpoint = Endpoint(str(config.get("url")))
            context = _tls_context(config.get("caBundle"))
        except WebhookCallError as e:
            return None, f"failed to call webhook: {e}"
        url = endpoint.url + ("&" if urlsplit(endpoint.url).query else "?")
        url += "timeout=" + quote(f"{int(timeout)}s")
        resolver = None
        if endpoint.dial is not None:
            host = urlsplit(endpoint.url)
            key = (host.hostname, host.port or 443)
            resolver = OverrideResolver(DefaultLoopResolver(), {key: endpoint.dial})
        client = AsyncHTTPClient(force_instance=True, resolver=resolver)
        request = HTTPRequest(
            url,
            method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            body=json.dumps(admission_review(attrs, uid)),
            ssl_options=context,
            connect_timeout=timeout,
            request_timeout=timeout,
            follow_redirects=False,
        )
        try:
            async with asyncio.timeout(timeout):
                answer = await client.fetch(request)
        except TimeoutError:
            return None, f'failed to call webhook: Post "{url}": context deadline exceeded'
        except HTTPClientError as e:
            if e.code == 599:
                return None, f'failed to call webhook: Post "{url}": {e.message}'
            return (
                None,
                f"failed to call webhook: the server responded with the status code {e.code}",
            )
        except Exception as e:  # refused, reset, TLS: whatever it is, the call failed
            return None, f'failed to call webhook: Post "{url}": {e}'
        finally:
            client.close()
            if resolver is not None:
                resolver.close()
        try:
            return review_response(answer.body, uid), None
        except WebhookCallError as e:
            return None, f"received invalid webhook response: {e}"
