"""The eviction webhook of the suspend service without a cluster: the decision (pure), the
AdmissionReview's checks, and the HTTPS listener answering reviews, starting suspensions and
holding evictions of notebooks it cannot suspend (hub and pods faked, the clock injected)."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets import TraitError

from jhub_suspend.localcluster.services import free_port
from jhub_suspend.service import SuspendService
from jhub_suspend.service.actions import Actions
from jhub_suspend.service.eviction import (
    EvictionReview,
    Evictions,
    Memory,
    ReviewError,
    decide,
    parse_review,
)
from jhub_suspend.service.hubclient import HubClient
from jhub_suspend.service.loop import PolicyLoop
from jhub_suspend.service.observe import ServerView
from jhub_suspend.service.operations import Operation
from jhub_suspend.testing import fakes
from jhub_suspend.testing.tls import CertificateAuthority
from jhub_suspend.testing.waiting import wait_for

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
HOLD = 600.0


def review(name: str = "jupyter-ann", **changes: Any) -> EvictionReview:
    values: dict[str, Any] = {
        "uid": "u1",
        "operation": "CREATE",
        "resource": ("", "v1", "pods"),
        "subresource": "eviction",
        "namespace": "default",
        "name": name,
        "dry_run": False,
    }
    return EvictionReview(**{**values, **changes})


def notebook_pod(name: str = "jupyter-ann", user: str = "ann", **metadata: Any) -> dict[str, Any]:
    """A pod as KubeSpawner makes it: its user in an annotation."""
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "annotations": {"hub.jupyter.org/username": user},
            **metadata,
        },
        "spec": {"nodeName": "node-1", "containers": [{"name": "notebook"}]},
        "status": {"phase": "Running"},
    }


def view(state: str = "running", pod_name: str = "jupyter-ann") -> ServerView:
    return ServerView(
        user="ann", server_name="", state=state, namespace="default", pod_name=pod_name
    )


def operation(status: str = "running", message: str = "") -> Operation:
    return Operation("op1", "suspend", "ann", "", "eviction", "eviction", NOW, status, message)


def decided(
    pod: dict[str, Any] | None = None,
    server: ServerView | None = None,
    memory: Memory | None = None,
    *,
    at: datetime = NOW,
    the_review: EvictionReview | None = None,
    hold: float = HOLD,
    hub_error: str | None = None,
    gpu_refusal: str | None = None,
):
    return decide(
        the_review or review(),
        pod,
        server,
        memory,
        hold=hold,
        now=at,
        hub_error=hub_error,
        gpu_refusal=gpu_refusal,
    )


# ---- the decision ----------------------------------------------------------------------------


def test_a_running_notebook_is_refused_with_429_and_suspended():
    verdict = decided(notebook_pod(), view())
    assert not verdict.allowed and verdict.code == 429
    assert verdict.suspend and verdict.outcome == "suspend_started"
    assert "is being suspended" in verdict.message and "jupyter-ann" in verdict.message


@pytest.mark.parametrize(
    "server, memory",
    [
        (view("suspending"), None),
        (view(), Memory("uid-jupyter-ann", NOW, operation=operation("running"))),
    ],
    ids=["marked", "our-suspension-runs"],
)
def test_a_notebook_being_suspended_is_refused_without_a_second_suspension(server, memory):
    verdict = decided(notebook_pod(), server, memory)
    assert (verdict.allowed, verdict.suspend, verdict.outcome) == (False, False, "suspending")


@pytest.mark.parametrize(
    "the_review, pod, server",
    [
        (review(subresource="status", operation="UPDATE"), notebook_pod(), view()),
        (review(), None, None),
        (review(), notebook_pod(deletionTimestamp="2026-01-01T11:59:00Z"), view()),
        (review(), {**notebook_pod(), "status": {"phase": "Failed"}}, view()),
        (review(), notebook_pod(), None),  # not the pod of a server the hub has
        (review(), notebook_pod(), view("stopping")),
        (review(), notebook_pod(), view("suspended")),
    ],
    ids=["not-eviction", "gone", "terminating", "terminated", "no-server", "stopping", "suspended"],
)
def test_what_is_not_a_running_notebook_is_allowed(the_review, pod, server):
    verdict = decided(pod, server, the_review=the_review)
    assert verdict.allowed and not verdict.suspend and verdict.outcome == "allowed"


@pytest.mark.parametrize(
    "server, memory, hub_error, reason",
    [
        (view(pod_name=""), None, None, "not_capable"),
        (
            view(),
            Memory("u", NOW, operation=operation("failed", "no room")),
            None,
            "suspension_failed",
        ),
        (view("failed"), None, None, "suspension_failed"),
        (view("restoring"), None, None, "not_running"),
        (None, None, "HubError: 502", "hub_error"),
    ],
    ids=["not-capable", "our-suspension-failed", "locked-out", "restoring", "hub-down"],
)
def test_a_notebook_that_cannot_be_suspended_is_held_then_let_go(server, memory, hub_error, reason):
    pod = notebook_pod()
    first = decided(pod, server, memory, hub_error=hub_error)
    assert (first.allowed, first.outcome, first.unsuspendable) == (False, "held", reason)
    assert "cannot be suspended" in first.message
    assert "2026-01-01T12:10:00Z" in first.message  # until when
    seen = replace(memory or Memory("u", NOW), unsuspendable_since=NOW - timedelta(seconds=5))
    still = decided(pod, server, seen, hub_error=hub_error)
    assert not still.allowed
    later = decided(pod, server, seen, at=NOW + timedelta(seconds=HOLD), hub_error=hub_error)
    assert (later.allowed, later.outcome, later.unsuspendable) == (True, "released", reason)
    at_once = decided(pod, server, memory, hold=0, hub_error=hub_error)
    assert (at_once.allowed, at_once.outcome) == (True, "released")


def test_a_gpu_notebook_that_cannot_be_suspended_safely_is_held_with_the_reason():
    why = "in legacy device mode it holds 1 of its node's 2 GPUs"
    verdict = decided(notebook_pod(), view(), gpu_refusal=why)
    assert (verdict.allowed, verdict.outcome, verdict.unsuspendable) == (
        False,
        "held",
        "not_capable",
    )
    assert not verdict.suspend
    assert f"cannot be suspended safely: {why}" in verdict.message
    # ... but a suspension already under way is waited for, whatever the GPU rules say now
    running = Memory("uid-jupyter-ann", NOW, operation=operation("running"))
    assert decided(notebook_pod(), view(), running, gpu_refusal=why).outcome == "suspending"


def test_a_dry_run_is_allowed_and_says_what_would_happen():
    for server in (view(), view(pod_name="")):
        verdict = decided(notebook_pod(), server, the_review=review(dry_run=True))
        assert verdict.allowed and not verdict.suspend and verdict.outcome == "dry_run"
        (warning,) = verdict.warnings
        assert warning.startswith("dry run: ")


# ---- the review ------------------------------------------------------------------------------


def admission_review(**request: Any) -> dict[str, Any]:
    base = {
        "uid": "u1",
        "kind": {"group": "policy", "version": "v1", "kind": "Eviction"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "subResource": "eviction",
        "requestKind": {"group": "policy", "version": "v1", "kind": "Eviction"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "requestSubResource": "eviction",
        "name": "jupyter-ann",
        "namespace": "default",
        "operation": "CREATE",
        "userInfo": {"username": "admin", "groups": ["system:authenticated"]},
        "object": {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": "jupyter-ann"},
        },
        "oldObject": None,
        "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {**base, **request},
    }


def test_a_review_is_read():
    got = parse_review(admission_review())
    assert got == review()
    assert got.is_pod_eviction


@pytest.mark.parametrize(
    "body, message",
    [
        ([], "must be an AdmissionReview object"),
        (
            {**admission_review(), "apiVersion": "admission.k8s.io/v1beta1"},
            "expected an AdmissionReview",
        ),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "has no request"),
        (admission_review(uid=""), "request.uid"),
        (admission_review(resource="pods"), "request.resource must be an object"),
        (
            admission_review(resource={"group": "", "resource": "pods"}),
            "group, version and resource",
        ),
        (admission_review(dryRun="yes"), "request.dryRun"),
        (admission_review(name=7), "request.name"),
    ],
)
def test_a_malformed_review_is_a_400(body, message):
    with pytest.raises(ReviewError) as info:
        parse_review(body)
    assert info.value.status == 400 and message in info.value.message


# ---- the listener ----------------------------------------------------------------------------


@dataclass
class Webhook:
    svc: SuspendService
    url: str
    context: ssl.SSLContext
    hub: fakes.FakeHub
    kube: fakes.FakeKube
    started: list[tuple[str, str]]
    release: asyncio.Event
    clock: list[datetime]

    async def post(self, body: Any, raw: bytes | None = None) -> tuple[int, Any]:
        response = await AsyncHTTPClient().fetch(
            HTTPRequest(
                self.url,
                method="POST",
                headers={"Content-Type": "application/json"},
                body=raw if raw is not None else json.dumps(body),
                ssl_options=self.context,
            ),
            raise_error=False,
        )
        return response.code, json.loads(response.body)

    def metric(self, name: str, **labels: str) -> float:
        value = self.svc.metrics.registry.get_sample_value(f"jhub_suspend_{name}", labels)
        return value or 0.0


def users_with(server: dict[str, Any]) -> list[dict[str, Any]]:
    users = fakes.synthetic_users(1, NOW)
    users[0]["name"] = "ann"
    users[0]["servers"][""].update(server)
    return users


@pytest.fixture
async def webhook(tmp_path) -> AsyncIterator[Webhook]:
    ca = CertificateAuthority()
    cert = ca.issue(tmp_path / "tls", ["127.0.0.1"])
    clock = [NOW]
    port = free_port()
    svc = fakes.configured_service(
        webhook_certfile=cert.certfile,
        webhook_keyfile=cert.keyfile,
        webhook_ip="127.0.0.1",
        webhook_port=port,
        eviction_hold_seconds=HOLD,
        clock=lambda: clock[0],
    )
    hub = fakes.FakeHub(users_with({"state": {"pod_name": "jupyter-ann", "namespace": "default"}}))
    other = {**notebook_pod("other"), "metadata": {"name": "other", "namespace": "default"}}
    kube = fakes.FakeKube([notebook_pod(), other])
    svc.hub = HubClient(hub.start(), "t")
    svc.kube = kube  # type: ignore[assignment]
    svc.actions = Actions(svc)
    svc.loop = PolicyLoop(svc)
    svc.evictions = Evictions(svc)
    started: list[tuple[str, str]] = []
    release = asyncio.Event()

    def start_suspension(user: str, server_name: str, requested_by: str, reason: str) -> Operation:
        """Stands in for the suspension: it runs until the test says how it ended."""
        started.append((user, reason))

        async def work(op: Operation) -> None:
            await release.wait()
            op.status, op.message = "failed", "the checkpoint failed"

        return svc.operations.start("suspend", user, server_name, requested_by, reason, NOW, work)

    svc.actions.start_suspension = start_suspension  # type: ignore[method-assign]
    svc._serve_webhook()
    context = ssl.create_default_context(cadata=ca.pem.decode())
    try:
        yield Webhook(
            svc, f"https://127.0.0.1:{port}/eviction", context, hub, kube, started, release, clock
        )
    finally:
        await svc.operations.cancel_all()
        await svc.close()
        hub.stop()


async def test_the_webhook_refuses_starts_one_suspension_and_holds_when_it_fails(webhook):
    status, answer = await webhook.post(admission_review())
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "u1" and response["allowed"] is False
    assert response["status"]["code"] == 429
    assert response["status"]["reason"] == "TooManyRequests"
    assert "is being suspended" in response["status"]["message"]
    assert webhook.started == [("ann", "eviction")]
    # kubectl retries: refused again, and no second suspension
    _, again = await webhook.post(admission_review(uid="u2"))
    assert again["response"]["allowed"] is False and again["response"]["uid"] == "u2"
    assert webhook.started == [("ann", "eviction")]
    assert webhook.metric("eviction_reviews_total", outcome="suspend_started") == 1
    assert webhook.metric("eviction_reviews_total", outcome="suspending") == 1

    # The suspension fails (the server keeps running): held, reported once, then let go.
    webhook.release.set()
    await wait_for(lambda: not webhook.svc.operations.running(), "the suspension never ended")
    _, held = await webhook.post(admission_review(uid="u3"))
    assert held["response"]["allowed"] is False
    assert "its suspension failed: the checkpoint failed" in held["response"]["status"]["message"]
    assert webhook.metric("eviction_unsuspendable_total", reason="suspension_failed") == 1
    assert webhook.metric("eviction_held_pods") == 1
    webhook.clock[0] = NOW + timedelta(seconds=HOLD - 1)
    _, still = await webhook.post(admission_review(uid="u4"))
    assert still["response"]["allowed"] is False
    webhook.clock[0] = NOW + timedelta(seconds=HOLD)
    _, released = await webhook.post(admission_review(uid="u5"))
    assert released["response"]["allowed"] is True
    assert webhook.metric("eviction_reviews_total", outcome="released") == 1
    assert webhook.metric("eviction_unsuspendable_total", reason="suspension_failed") == 1
    assert webhook.metric("eviction_held_pods") == 0
    assert webhook.started == [("ann", "eviction")]


async def test_the_webhook_allows_other_pods_and_dry_runs(webhook):
    _, other = await webhook.post(admission_review(name="other", uid="o"))
    assert other["response"] == {"uid": "o", "allowed": True}
    _, gone = await webhook.post(admission_review(name="nobody", uid="g"))
    assert gone["response"]["allowed"] is True
    _, dry = await webhook.post(admission_review(uid="d", dryRun=True))
    assert dry["response"]["allowed"] is True
    assert dry["response"]["warnings"][0].startswith("dry run: ")
    assert webhook.started == []
    assert webhook.metric("eviction_reviews_total", outcome="allowed") == 2
    assert webhook.metric("eviction_reviews_total", outcome="dry_run") == 1


async def test_a_malformed_review_gets_a_clear_400(webhook):
    status, answer = await webhook.post(None, raw=b"not json")
    assert status == 400 and answer["message"].startswith("the body is not JSON")
    status, answer = await webhook.post({"kind": "AdmissionReview"})
    assert (
        status == 400 and "expected an AdmissionReview of admission.k8s.io/v1" in answer["message"]
    )
    assert webhook.started == []


async def test_the_webhook_loads_a_renewed_certificate(tmp_path, webhook):
    """cert-manager renews the Secret in place: new connections get the new certificate."""
    tls = webhook.svc._webhook_tls
    assert not tls.reload_if_changed()
    renewed = CertificateAuthority("the renewing CA")
    cert = renewed.issue(tmp_path / "renewed", ["127.0.0.1"])
    os.replace(cert.certfile, tls.certfile)
    os.replace(cert.keyfile, tls.keyfile)
    assert tls.reload_if_changed()
    webhook.context = ssl.create_default_context(cadata=renewed.pem.decode())
    status, _ = await webhook.post(admission_review(name="other"))
    assert status == 200


def test_webhook_settings_are_checked():
    service = fakes.configured_service
    with pytest.raises(TraitError, match="webhook_certfile and webhook_keyfile go together"):
        service(webhook_certfile="/tls.crt")
    with pytest.raises(TraitError, match="eviction_hold_seconds must be 0 or more"):
        service(eviction_hold_seconds=-1)
    assert service().eviction_hold_seconds == 3600
