"""The spawner's restore and fallback paths, without a hub or a cluster.

KubeSpawner's own ``_start`` (which creates the pod and waits for it) and ``stop`` are
replaced by fakes that record what they were asked, and the restore driver by a fake whose
verdict each test chooses. What is checked is SuspendingKubeSpawner's own choices: restore or
start fresh, what becomes of the checkpoint, and what the user is told.
"""

import asyncio
import dataclasses

import pytest
from conftest import checkpoint_record
from kubernetes_asyncio.client import V1ObjectMeta, V1Pod, V1PodSpec
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from traitlets.config import Config

from jhub_suspend.checkpoints import (
    ANNOTATION_PREFIX,
    SUSPEND_FAILED_ANNOTATION,
    Status,
    discard_marker_name,
)
from jhub_suspend.restore import RestoreDriver, RestoreFailed
from jhub_suspend.spawner import NO_ROOM_MESSAGE, SuspendingKubeSpawner

FRESH_URL = "http://10.0.0.1:8888/"
RESTORED_URL = "http://10.0.0.2:8888/"
RESTORED_FROM = f"{ANNOTATION_PREFIX}/restored-from"
UNSCHEDULABLE = {
    "phase": "Pending",
    "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
}


class FakeDriver(RestoreDriver):
    """A restore driver whose verdict on the restoring pod the test sets."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.applied: list[str] = []
        self.verdict: RestoreFailed | None = None

    def apply(self, pod, checkpoint, container):
        self.applied.append(checkpoint.digest)
        return pod

    def failure(self, pod, container):
        return self.verdict


class FakeAgent:
    def __init__(self):
        self.deleted: list[str] = []

    async def delete_image(self, image):
        self.deleted.append(image)


class Cluster:
    """What KubeSpawner's _start and stop did, and what the restoring pod does."""

    def __init__(self):
        self.starts: list[str] = []  # "restore" or "fresh", in order
        self.stops = 0
        self.stopped_now: list[bool] = []  # each stop's ``now``: True deletes with no grace
        self.pod: dict | None = None  # what the API answers for the server's pod
        self.restore_hangs = False
        self.discard_markers: set[str] = set()
        self.annotated: list[dict] = []
        self.restored_from: list[str] = []  # the restoring pods' annotation


@pytest.fixture
def cluster(mock_kubeconfig, monkeypatch):
    c = Cluster()

    async def kube_start(self):
        if self._restoring is None:
            c.starts.append("fresh")
            return FRESH_URL
        c.starts.append("restore")
        manifest = await self.get_pod_manifest()  # the driver applies the checkpoint
        c.restored_from.append(manifest.metadata.annotations[RESTORED_FROM])
        if c.restore_hangs:
            await asyncio.sleep(3600)
        # The pod comes up; the driver's verdict on it is raised from here.
        assert self.is_pod_running(running_pod(image=self._restoring.image))
        return RESTORED_URL

    async def kube_stop(self, now=False):
        c.stops += 1
        c.stopped_now.append(now)

    async def manifest(self):
        return V1Pod(metadata=V1ObjectMeta(name=self.pod_name), spec=V1PodSpec(containers=[]))

    async def no_watch(self, replace=False):
        return None

    monkeypatch.setattr(KubeSpawner, "_start", kube_start)
    monkeypatch.setattr(KubeSpawner, "stop", kube_stop)
    monkeypatch.setattr(KubeSpawner, "get_pod_manifest", manifest)
    monkeypatch.setattr(KubeSpawner, "_start_watching_pods", no_watch)

    async def current_pod(self):
        return c.pod

    monkeypatch.setattr(SuspendingKubeSpawner, "_current_pod", current_pod)
    return c


def spawner(cluster, **config):
    c = Config()
    c.SuspendingKubeSpawner.restore_driver_class = FakeDriver
    for key, value in config.items():
        setattr(c.SuspendingKubeSpawner, key, value)
    s = SuspendingKubeSpawner(_mock=True, config=c)
    s.agent = FakeAgent()
    s._any_agent = lambda: s.agent

    async def delete_secret(name, namespace):
        if name not in cluster.discard_markers:
            raise ApiException(status=404)
        cluster.discard_markers.discard(name)

    async def patch_pod(name, namespace, body):
        cluster.annotated.append(body["metadata"]["annotations"])

    s.api.delete_namespaced_secret = delete_secret
    s.api.patch_namespaced_pod = patch_pod
    return s


def record(status=Status.SUSPENDED, **changes):
    return checkpoint_record(status, **changes)


async def test_a_restore_that_succeeds_releases_the_checkpoint_as_restored(cluster):
    s = spawner(cluster)
    s.checkpoint = record()
    assert await s.start() == RESTORED_URL
    assert cluster.starts == ["restore"]
    assert s.restore_driver.applied == [record().digest]
    assert cluster.restored_from == [record().digest]
    # Used: with no retention the image is deleted and the record dropped.
    assert s.agent.deleted == [record().image]
    assert s.checkpoint is None
    assert s.last_error is None
    assert s._restoring is None


async def test_a_restored_checkpoint_under_retention_is_kept_as_restored(cluster):
    s = spawner(cluster, keep_used_checkpoints=True)
    s.checkpoint = record()
    assert await s.start() == RESTORED_URL
    assert s.checkpoint.status == Status.RESTORED
    assert s.agent.deleted == []


async def test_a_failed_restore_starts_fresh_and_keeps_the_checkpoint(cluster):
    s = spawner(cluster)
    s.checkpoint = record()
    s.restore_driver.verdict = RestoreFailed("CRIU could not restore", "criu: exit 1")
    assert await s.start() == FRESH_URL
    assert cluster.starts == ["restore", "fresh"]
    assert cluster.stops == 1  # the failed pod goes before the fresh one starts
    assert s.checkpoint == record(status=Status.RESTORE_FAILED)
    assert s.agent.deleted == []  # kept for the admin, whatever the retention
    assert s.last_error.operation == "restore"
    assert "could not be restored: CRIU could not restore" in s.last_error.message
    assert "fresh server" in s.last_error.message
    assert s.last_error.detail == "criu: exit 1"
    assert s._restore_failure == "CRIU could not restore"
    assert s._restoring is None
    # The failed checkpoint is never tried again.
    cluster.starts.clear()
    assert await s.start() == FRESH_URL
    assert cluster.starts == ["fresh"]


async def test_a_restore_waiting_for_room_keeps_the_checkpoint_for_later(cluster):
    s = spawner(cluster, restore_timeout=0.05)
    s.checkpoint = record()
    cluster.restore_hangs = True
    cluster.pod = {"metadata": {"name": "jupyter-alice"}, "status": UNSCHEDULABLE}
    with pytest.raises(TimeoutError, match="No node had room"):
        await s.start()
    assert cluster.starts == ["restore"]  # no fresh server: the user may wait for room
    assert cluster.stops == 1  # the pending pod is removed
    assert s.checkpoint == record()  # still restorable, not restoring
    assert s.checkpoint.restorable
    assert s.last_error.message == NO_ROOM_MESSAGE
    assert s.agent.deleted == []
    assert s._restoring is None
    # Later, with room, the same checkpoint is restored.
    cluster.restore_hangs = False
    cluster.pod = None
    assert await s.start() == RESTORED_URL
    assert cluster.starts == ["restore", "restore"]


async def test_a_scheduled_restore_that_times_out_starts_fresh(cluster):
    s = spawner(cluster, restore_timeout=0.05)
    s.checkpoint = record()
    cluster.restore_hangs = True
    cluster.pod = {"metadata": {"name": "jupyter-alice"}, "status": {"phase": "Pending"}}
    assert await s.start() == FRESH_URL
    assert cluster.starts == ["restore", "fresh"]
    assert s.checkpoint.status == Status.RESTORE_FAILED
    assert "did not start in time" in s.last_error.message


async def test_a_requested_discard_starts_fresh_and_deletes_the_image(cluster):
    s = spawner(cluster)
    s.checkpoint = record()
    s.user_options = {"discard_checkpoint": True, "profile": "gpu"}
    assert await s.start() == FRESH_URL
    assert cluster.starts == ["fresh"]
    assert s.restore_driver.applied == []
    assert s.agent.deleted == [record().image]
    assert s.checkpoint is None
    # The request is consumed: a later start must not discard a newer checkpoint.
    assert s.user_options == {"profile": "gpu"}


async def test_a_checkpoint_discarded_while_stopped_is_not_restored(cluster):
    s = spawner(cluster)
    s.checkpoint = record()
    cluster.discard_markers.add(discard_marker_name(record().digest))
    assert await s.start() == FRESH_URL
    assert cluster.starts == ["fresh"]
    assert s.checkpoint is None
    assert not cluster.discard_markers  # the marker is consumed


@pytest.mark.parametrize("interrupted", [0, 1])
async def test_an_interrupted_restore_is_tried_again(cluster, interrupted):
    s = spawner(cluster, max_interrupted_restores=2, keep_used_checkpoints=True)
    s.checkpoint = record(Status.RESTORING, interrupted_restores=interrupted)
    assert await s.start() == RESTORED_URL
    assert cluster.starts == ["restore"]
    assert s.checkpoint.status == Status.RESTORED
    assert s.checkpoint.interrupted_restores == interrupted + 1


async def test_a_restore_interrupted_too_often_is_kept_for_the_admin(cluster):
    s = spawner(cluster, max_interrupted_restores=2)
    s.checkpoint = record(Status.RESTORING, interrupted_restores=2)
    assert await s.start() == FRESH_URL
    assert cluster.starts == ["fresh"]
    assert s.checkpoint.status == Status.RESTORE_FAILED
    assert s.agent.deleted == []
    assert "last 3 restores" in s.last_error.message


async def test_after_interrupted_restore_counts_each_attempt(cluster):
    s = spawner(cluster, max_interrupted_restores=1)
    once = s._after_interrupted_restore(record(Status.RESTORING))
    assert (once.status, once.interrupted_restores) == (Status.SUSPENDED, 1)
    twice = s._after_interrupted_restore(dataclasses.replace(once, status=Status.RESTORING))
    assert twice.status == Status.RESTORE_FAILED
    assert s.last_error is not None


def running_pod(annotations=None, image="img"):
    return {
        "metadata": {"name": "jupyter-alice", "uid": "uid-1", "annotations": annotations or {}},
        "spec": {
            "containers": [
                {
                    "name": "notebook",
                    "image": image,
                    "ports": [{"name": "notebook-port", "containerPort": 8888}],
                }
            ]
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.3",
            "containerStatuses": [{"name": "notebook", "ready": True, "state": {"running": {}}}],
        },
    }


async def test_a_pod_whose_suspension_failed_is_adopted(cluster):
    s = spawner(cluster)
    s.checkpoint = record(Status.VERIFIED)
    cluster.pod = running_pod({SUSPEND_FAILED_ANNOTATION: "agent down"})
    url = await s.start()
    assert "10.0.0.3" in str(url)
    assert cluster.starts == []  # the live server is not replaced
    assert s.pod_id == "uid-1"
    assert cluster.annotated == [{SUSPEND_FAILED_ANNOTATION: None}]
    # The running server wins over the verified checkpoint.
    assert s.checkpoint is None
    assert s.agent.deleted == [record().image]


async def test_a_restore_that_finished_after_the_hub_stopped_is_adopted(cluster):
    s = spawner(cluster, keep_used_checkpoints=True)
    s.checkpoint = record(Status.RESTORING)
    cluster.pod = running_pod(image=record().image)
    url = await s.start()
    assert "10.0.0.3" in str(url)
    assert cluster.starts == []
    assert s.checkpoint.status == Status.RESTORED


async def test_a_running_pod_that_is_not_ours_to_adopt_is_left_to_kubespawner(cluster):
    s = spawner(cluster)
    cluster.pod = running_pod()
    assert await s._adopt_running_pod() is None
    assert cluster.annotated == []


async def test_a_verified_suspension_deletes_the_pod_with_no_grace_period(cluster):
    """The restore resumes from the checkpoint: the server's graceful shutdown is of no use."""
    s = spawner(cluster)

    async def suspend(pod, reason):
        return record(Status.VERIFIED)

    s.suspend = suspend
    await s._suspend_and_stop(running_pod(), "idle", now=False)
    assert cluster.stopped_now == [True]
    assert s.checkpoint.status == Status.SUSPENDED


async def test_a_failed_suspension_deletes_nothing(cluster):
    s = spawner(cluster)

    async def suspend(pod, reason):
        raise RuntimeError("the registry is gone")

    s.suspend = suspend
    await s._suspend_and_stop(running_pod(), "idle", now=False)
    assert cluster.stopped_now == []
    assert s.last_error and "the registry is gone" in s.last_error.message
