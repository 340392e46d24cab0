"""The retention sweep's decisions, with the IO (agents, Kubernetes) replaced by recorders."""

import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from jhub_suspend.service.retention import Retention
from jhub_suspend.testing import fakes

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
REPO = "reg:5000/jhub-suspend"


def iso(hours_ago: float) -> str:
    return (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def view(user, status, hours_ago, digest, state="stopped"):
    return SimpleNamespace(
        user=user,
        server_name="",
        namespace="jhub",
        pod_name=f"jupyter-{user}",
        state=state,
        checkpoint=fakes.checkpoint(status, digest, created=iso(hours_ago)),
    )


class Recorder:
    def __init__(self, fail=()):
        self.deleted: list[str] = []
        self.discarded: list[str] = []
        self.secrets: list[str] = []
        self.orphans: set[str] = set()
        self.fail = set(fail)

    async def delete_image(self, ref):
        if ref in self.fail:
            return False, "registry down"
        self.deleted.append(ref)
        return True, ""

    async def discard(self, user, server_name, why):
        self.discarded.append(user)

    async def delete_secret(self, namespace, name):
        self.secrets.append(name)


def service(recorder, retention_hours=24, max_suspended_hours=None, dry_run=False):
    return SimpleNamespace(
        log=logging.getLogger("test"),
        actions=recorder,
        kube=recorder,
        used_checkpoint_retention=retention_hours * 3600,
        max_suspended_age=None if max_suspended_hours is None else max_suspended_hours * 3600,
        checkpoint_repository=REPO,
        namespace="jhub",
        retention_interval=3600,
        dry_run=dry_run,
    )


def marker(name, hours_ago):
    return {"metadata": {"name": name, "namespace": "jhub", "creationTimestamp": iso(hours_ago)}}


async def test_used_checkpoints_are_deleted_after_the_retention_and_only_once():
    rec = Recorder()
    r = Retention(service(rec))
    snap = SimpleNamespace(
        time=NOW,
        views=[
            view("old", "restored", 30, "sha256:aa"),
            view("young", "restored", 2, "sha256:bb"),
            view("gone", "discarded", 48, "sha256:cc"),
            view("waiting", "suspended", 48, "sha256:dd", state="suspended"),
            view("broken", "restore_failed", 48, "sha256:ee"),
        ],
        markers={},
    )
    stats = await r.sweep(snap)
    assert rec.deleted == [
        f"{REPO}/jhub/jupyter-old@sha256:aa",
        f"{REPO}/jhub/jupyter-gone@sha256:cc",
    ]
    assert stats["images"] == 2
    # A suspended server's checkpoint and a failed restore's (kept for the admin) stay.
    await r.sweep(snap)
    assert len(rec.deleted) == 2


async def test_a_failed_deletion_is_tried_again_next_time():
    ref = f"{REPO}/jhub/jupyter-old@sha256:aa"
    rec = Recorder(fail={ref})
    r = Retention(service(rec))
    snap = SimpleNamespace(time=NOW, views=[view("old", "restored", 30, "sha256:aa")], markers={})
    await r.sweep(snap)
    assert rec.deleted == []
    rec.fail.clear()
    await r.sweep(snap)
    assert rec.deleted == [ref]


async def test_markers_stay_while_they_name_a_restorable_checkpoint():
    rec = Recorder()
    r = Retention(service(rec))
    snap = SimpleNamespace(
        time=NOW,
        views=[view("waiting", "suspended", 48, "sha256:dd", state="suspended")],
        markers={
            "sha256:dd": marker("jhub-suspend-discard-dd", 48),
            "sha256:ff": marker("jhub-suspend-discard-ff", 48),
            "sha256:99": marker("jhub-suspend-discard-99", 1),
        },
    )
    await r.sweep(snap)
    assert rec.secrets == ["jhub-suspend-discard-ff"]


async def test_max_suspended_age_discards_old_suspensions():
    rec = Recorder()
    r = Retention(service(rec, max_suspended_hours=24 * 7))
    snap = SimpleNamespace(
        time=NOW,
        views=[
            view("ancient", "suspended", 24 * 8, "sha256:a1", state="suspended"),
            view("recent", "suspended", 24, "sha256:a2", state="suspended"),
        ],
        markers={},
    )
    stats = await r.sweep(snap)
    assert rec.discarded == ["ancient"]
    assert stats["discarded"] == 1


async def test_a_dry_run_counts_what_it_would_delete_and_deletes_nothing(caplog):
    rec = Recorder()
    rec.orphans.add(f"{REPO}/jhub/jupyter-orphan@sha256:0f")
    r = Retention(service(rec, max_suspended_hours=24, dry_run=True))
    snap = SimpleNamespace(
        time=NOW,
        views=[
            view("old", "restored", 30, "sha256:aa"),
            view("ancient", "suspended", 48, "sha256:a1", state="suspended"),
        ],
        markers={"sha256:ff": marker("jhub-suspend-discard-ff", 48)},
    )
    with caplog.at_level(logging.INFO):
        stats = await r.sweep(snap)
    assert stats == {"images": 1, "markers": 1, "discarded": 1, "orphans": 1}
    assert rec.deleted == rec.discarded == rec.secrets == []
    assert "would delete the image reg:5000/jhub-suspend/jhub/jupyter-old@sha256:aa" in caplog.text
    assert "would discard the checkpoint of ancient" in caplog.text
