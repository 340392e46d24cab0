"""Image garbage collection on the local cluster's kubelets: the decisions as plain functions
(thresholds, least recently used first, minimum and maximum age, images in use and pinned
images kept), the kubelet's run of them against a stand-in runtime, and one run against the
cluster's real containerd."""

import os
from types import SimpleNamespace

import grpc
import pytest

from jhub_suspend import images
from jhub_suspend.localcluster.cluster import LocalCluster
from jhub_suspend.localcluster.cri import CriError, cri
from jhub_suspend.localcluster.imagegc import (
    FsUsage,
    ImageFilesystem,
    ImageGcFailed,
    ImageGcPolicy,
    ImageRecord,
    RuntimeImage,
    detect_images,
    eviction_order,
    images_to_free,
    space_to_free,
    too_old,
)
from jhub_suspend.localcluster.kubelet import Kubelet, NodeConfig
from jhub_suspend.localcluster.store import Store
from jhub_suspend.testing.waiting import wait_for, wait_gone

GIB = 1 << 30
NOW = 10_000.0
POLICY = ImageGcPolicy()  # the kubelet's defaults: 85 %, 80 %, 2 minutes


def record(id_, size=GIB, first=0.0, last=0.0, pinned=False, names=()):
    return ImageRecord(RuntimeImage(id_, size, pinned, tuple(names)), first, last)


def records(*recs):
    return {r.image.id: r for r in recs}


def ids(recs):
    return [r.image.id for r in recs]


# ---- the decisions ---------------------------------------------------------------------------


def test_nothing_is_freed_below_the_high_threshold():
    assert FsUsage(100 * GIB, 16 * GIB).percent == 84
    assert space_to_free(FsUsage(100 * GIB, 16 * GIB), POLICY) == 0


def test_at_the_high_threshold_enough_is_freed_to_reach_the_low_threshold():
    usage = FsUsage(100 * GIB, 15 * GIB)
    assert usage.percent == 85
    assert space_to_free(usage, POLICY) == 5 * GIB  # 20 % free wanted, 15 % free now
    assert space_to_free(FsUsage(100 * GIB, 2 * GIB), POLICY) == 18 * GIB


def test_usage_rounds_as_the_kubelets_does_and_a_filesystem_without_size_is_an_error():
    # 100 - int(15.9) = 85: a fraction of a percent free does not count.
    assert FsUsage(1000, 159).percent == 85
    assert FsUsage(1000, 2000).percent == 0  # more available than capacity is capped
    with pytest.raises(ImageGcFailed, match="invalid capacity"):
        space_to_free(FsUsage(0, 0), POLICY)


def test_usage_comes_from_statvfs_as_an_unprivileged_writer_sees_it():
    st = SimpleNamespace(f_blocks=1000, f_frsize=4096, f_bavail=100, f_bfree=150)
    assert FsUsage.of(st) == FsUsage(4_096_000, 409_600)  # f_bavail, not f_bfree


def test_least_recently_used_go_first_then_the_longest_known():
    recs = records(
        record("used-late", last=900.0, first=10.0),
        record("never-used-new", last=0.0, first=500.0),
        record("never-used-old", last=0.0, first=100.0),
        record("used-early", last=300.0, first=50.0),
    )
    assert ids(eviction_order(recs, set())) == [
        "never-used-old",
        "never-used-new",
        "used-early",
        "used-late",
    ]


def test_images_in_use_or_pinned_are_never_candidates():
    recs = records(
        record("by-id"),
        record("by-name", names=("reg/notebook:latest", "reg/notebook@sha256:aa")),
        record("pause", pinned=True),
        record("unused", names=("reg/checkpoints/alice@sha256:bb",)),
    )
    in_use = {"by-id", "reg/notebook:latest"}
    assert ids(eviction_order(recs, in_use)) == ["unused"]


def test_removal_stops_once_the_low_threshold_is_reached():
    candidates = [record("a", size=3 * GIB), record("b", size=3 * GIB), record("c", size=GIB)]
    assert ids(images_to_free(candidates, 5 * GIB, POLICY, NOW)) == ["a", "b"]
    assert ids(images_to_free(candidates, 3 * GIB, POLICY, NOW)) == ["a"]
    assert ids(images_to_free(candidates, 100 * GIB, POLICY, NOW)) == ["a", "b", "c"]
    assert images_to_free(candidates, 0, POLICY, NOW) == []


def test_images_younger_than_the_minimum_age_are_passed_over():
    candidates = [
        record("just-pulled", first=NOW - 60),  # 1 minute: may be about to be used
        record("old", first=NOW - 121),
        record("older", first=NOW - 3600),
    ]
    assert ids(images_to_free(candidates, 2 * GIB, POLICY, NOW)) == ["old", "older"]
    no_minimum = ImageGcPolicy(minimum_age=0)
    assert ids(images_to_free(candidates, 2 * GIB, no_minimum, NOW)) == ["just-pulled", "old"]


def test_detection_remembers_first_sight_and_last_use_and_forgets_removed_images():
    a, b = RuntimeImage("a", 10), RuntimeImage("b", 20, names=("reg/b:1",))
    first = detect_images({}, [a, b], {"a"}, 100.0)
    assert first["a"] == ImageRecord(a, 100.0, 100.0)
    assert first["b"] == ImageRecord(b, 100.0, 0.0)  # never seen in use
    later = detect_images(first, [a, b], {"reg/b:1"}, 400.0)
    assert later["a"] == ImageRecord(a, 100.0, 100.0)  # its last use stays
    assert later["b"] == ImageRecord(b, 100.0, 400.0)
    assert set(detect_images(later, [b], set(), 700.0)) == {"b"}


def test_the_maximum_age_removes_long_unused_images_once_the_kubelet_has_run_that_long():
    policy = ImageGcPolicy(maximum_age=3600)
    candidates = [record("stale", last=NOW - 3601), record("recent", last=NOW - 600)]
    assert ids(too_old(candidates, policy, NOW, started=NOW - 7200)) == ["stale"]
    # The kubelet cannot know what was used before it started.
    assert too_old(candidates, policy, NOW, started=NOW - 3000) == []
    assert too_old(candidates, POLICY, NOW, started=0.0) == []  # no maximum age: never


def test_the_policy_is_validated_as_the_kubelet_validates_it():
    with pytest.raises(ValueError, match="can not be higher"):
        ImageGcPolicy(high_threshold_percent=70, low_threshold_percent=80)
    with pytest.raises(ValueError, match=r"range \[0-100\]"):
        ImageGcPolicy(high_threshold_percent=101)
    with pytest.raises(ValueError, match="greater than its minimum age"):
        ImageGcPolicy(minimum_age=120, maximum_age=60)
    assert ImageGcPolicy(high_threshold_percent=100).disabled
    assert not ImageGcPolicy(high_threshold_percent=100, maximum_age=3600).disabled
    assert not POLICY.disabled


def test_the_local_clusters_settings_make_the_kubelets_policy():
    lc = LocalCluster(
        image_gc_high_threshold_percent=90,
        image_gc_low_threshold_percent=70,
        image_minimum_gc_age=60,
        image_maximum_gc_age=86400,
    )
    assert lc.image_gc_policy == ImageGcPolicy(90, 70, 60.0, 86400.0)
    assert LocalCluster().image_gc_policy == POLICY
    with pytest.raises(ValueError, match="between 0 and 100"):
        LocalCluster(image_gc_high_threshold_percent=101)
    with pytest.raises(ValueError, match="can not be higher"):
        _ = LocalCluster(image_gc_low_threshold_percent=90).image_gc_policy


def test_images_being_started_from_are_held_until_the_block_ends():
    fs = ImageFilesystem()
    with fs.holding("reg/nb:1") as hold, fs.holding("reg/nb:1"):
        hold("sha256:nb")
        assert fs.starting == {"reg/nb:1": 2, "sha256:nb": 1}
    assert not fs.starting


# ---- the kubelet's collection, against a stand-in runtime -------------------------------------


class ImageRuntime:
    """The CRI calls of the kubelet's image GC, over a dict of images."""

    def __init__(self, images_, containers=(), fail=()):
        self.images = {i.id: i for i in images_}
        self.containers = list(containers)
        self.fail = set(fail)
        self.removed = []

    async def list_images(self):
        return list(self.images.values())

    async def list_containers(self, sandbox_id=""):
        return self.containers

    async def list_pod_sandboxes(self, labels=None):
        return []

    async def image_fs_info(self):
        return [cri.FilesystemUsage(fs_id=cri.FilesystemIdentifier(mountpoint=IMAGEFS))]

    async def remove_image(self, image):
        if image in self.fail:
            raise CriError("RemoveImage", grpc.StatusCode.UNKNOWN, "device busy")
        self.removed.append(image)
        self.images.pop(image, None)


IMAGEFS = "/imagefs-of-the-stand-in"


def stand_in_kubelet(tmp_path, runtime, usage, monkeypatch, clock, policy):
    real_statvfs = os.statvfs

    def statvfs(path):
        if path == IMAGEFS:
            return SimpleNamespace(f_blocks=usage.capacity, f_frsize=1, f_bavail=usage.available)
        return real_statvfs(path)

    monkeypatch.setattr(os, "statvfs", statvfs)
    store = Store()
    kubelet = Kubelet(
        store, NodeConfig("node-x"), runtime, state_dir=str(tmp_path), clock=clock, image_gc=policy
    )
    return store, kubelet


def node_events(store, reason):
    events, _ = store.list("events", "default")
    return [
        e
        for e in events
        if e["involvedObject"]
        == {"kind": "Node", "apiVersion": "v1", "name": "node-x", "uid": "node-x"}
        and e["reason"] == reason
    ]


async def test_a_removal_that_fails_is_passed_over_and_falling_short_is_an_event(
    tmp_path, monkeypatch
):
    runtime = ImageRuntime(
        [
            cri.Image(id="old", size=4 * GIB),
            cri.Image(id="stuck", size=4 * GIB),
            cri.Image(id="running", size=GIB, repo_tags=["reg/nb:1"]),
            cri.Image(id="pause", size=GIB, pinned=True),
        ],
        containers=[cri.Container(image_ref="running", image=cri.ImageSpec(image="reg/nb:1"))],
        fail={"stuck"},
    )
    now = [0.0]
    # 95 % used: 15 GiB must go to come down to 80 %.
    store, kubelet = stand_in_kubelet(
        tmp_path,
        runtime,
        FsUsage(100 * GIB, 5 * GIB),
        monkeypatch,
        clock=lambda: now[0],
        policy=ImageGcPolicy(minimum_age=60),
    )
    await kubelet.detect_images()
    now[0] = 100.0
    runtime.images["newer"] = cri.Image(id="newer", size=3 * GIB)
    await kubelet.detect_images()
    now[0] = 200.0
    runtime.images["just-pulled"] = cri.Image(id="just-pulled", size=3 * GIB)
    runtime.images["pulling"] = cri.Image(id="pulling", size=GIB, repo_tags=["reg/ckpt:1"])
    with kubelet.imagefs.holding("reg/ckpt:1"):
        result = await kubelet.collect_images()
    # "stuck" failed, so "newer" was tried next; "just-pulled" is too young, "pulling" is held
    # for a container being created, and the running container's and the pinned image stay.
    assert runtime.removed == ["old", "newer"]
    assert set(runtime.images) == {"stuck", "running", "pause", "just-pulled", "pulling"}
    assert (result.usage_percent, result.to_free, result.freed) == (95, 15 * GIB, 7 * GIB)
    assert "device busy" in result.failure
    assert not node_events(store, "FreeDiskSpaceFailed")  # an error, not a shortfall

    runtime.fail.clear()
    now[0] = 300.0
    result = await kubelet.collect_images()
    assert runtime.removed == ["old", "newer", "stuck", "just-pulled", "pulling"]
    assert result.failure.startswith("Failed to garbage collect required amount of images.")
    (event,) = node_events(store, "FreeDiskSpaceFailed")
    assert event["type"] == "Warning" and event["source"]["host"] == "node-x"
    assert f"Attempted to free {15 * GIB} bytes, but only found {8 * GIB} bytes" in event["message"]


async def test_below_the_high_threshold_nothing_is_removed(tmp_path, monkeypatch):
    runtime = ImageRuntime([cri.Image(id="unused", size=GIB)])
    _, kubelet = stand_in_kubelet(
        tmp_path, runtime, FsUsage(100 * GIB, 50 * GIB), monkeypatch, lambda: NOW, POLICY
    )
    result = await kubelet.collect_images()
    assert (result.usage_percent, result.to_free, runtime.removed) == (50, 0, [])
    assert not result.failure


async def test_the_periodic_collection_tells_a_repeated_failure_on_the_node(tmp_path, monkeypatch):
    runtime = ImageRuntime([cri.Image(id="stuck", size=GIB)], fail={"stuck"})
    store, kubelet = stand_in_kubelet(
        tmp_path,
        runtime,
        FsUsage(100 * GIB, 5 * GIB),
        monkeypatch,
        lambda: NOW,
        ImageGcPolicy(minimum_age=0),
    )
    kubelet.image_gc_period = 0.05
    await kubelet.start()
    try:
        # A first failure is only logged (stats may not be ready yet), a second one is told.
        (event,) = await wait_for(
            lambda: node_events(store, "ImageGCFailed"), "no ImageGCFailed event"
        )
        assert "device busy" in event["message"] and event["type"] == "Warning"
        assert kubelet.healthy
    finally:
        await kubelet.stop()
    assert not kubelet.healthy


# ---- against the cluster's containerd --------------------------------------------------------


def sleeper(name, image):
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeName": "node-1",
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "command": ["sleep", "600"],
                    # CRIU needs root here (see docs/localcluster.md, "Notebooks run as root").
                    "securityContext": {"runAsUser": 0},
                }
            ],
            "terminationGracePeriodSeconds": 0,
        },
    }


async def running_or_failed(store, name, timeout=60):
    """Wait until the pod runs; fail at once with the kubelet's reason if it cannot start."""

    def running():
        pod = store.get("pods", "default", name)
        for cs in pod["status"].get("containerStatuses") or []:
            waiting = cs["state"].get("waiting") or {}
            assert waiting.get("reason") in (None, "ContainerCreating"), waiting
        return pod if pod["status"].get("phase") == "Running" else False

    return await wait_for(running, f"pod {name} never ran", timeout)


@pytest.mark.slow
async def test_gc_removes_an_unused_checkpoint_image_and_keeps_the_running_pods(cluster):
    store, kubelet = cluster.store, cluster.kubelet("node-1")
    runtime = cluster.containerd.client
    notebook, busybox = cluster.images["notebook"], cluster.images["busybox"]
    store.create("pods", "default", sleeper("gc-running", notebook))
    await running_or_failed(store, "gc-running", timeout=120)

    # A checkpoint image, pulled as a restore pulls it; once restored nothing uses it.
    archive = await kubelet.checkpoint("default", "gc-running", "main", 60)
    try:
        tagged = f"{cluster.registry_host}/jhub-suspend/gc-test:1"
        ref = f"{tagged.rsplit(':', 1)[0]}@{await images.build_and_push(archive, tagged, {})}"
    finally:
        os.remove(archive)
    checkpoint_image = await runtime.pull_image(ref)
    notebook_id = (await runtime.image_status(notebook))[0].id
    busybox_id = (await runtime.image_status(busybox))[0].id

    saved = kubelet.image_gc
    # Any usage is over the high threshold, and everything unused must go.
    kubelet.image_gc = ImageGcPolicy(0, 0, minimum_age=0)
    try:
        result = await kubelet.collect_images()
    finally:
        kubelet.image_gc = saved
    present = {i.id: i for i in await runtime.list_images()}
    assert checkpoint_image in result.removed and checkpoint_image not in present
    assert notebook_id in present, "the image of a running pod was removed"
    assert busybox_id in present and present[busybox_id].pinned  # the sandbox image
    # Nothing frees a whole disk: the shortfall is told on the node, as by a kubelet.
    assert result.failure.startswith("Failed to garbage collect required amount")
    events, _ = store.list("events", "default")
    assert any(
        e["reason"] == "FreeDiskSpaceFailed" and e["involvedObject"]["name"] == "node-1"
        for e in events
    )

    # A fresh pod still starts, in a new sandbox (the pinned image), from the very image GC
    # removed: the kubelet pulls it again from the registry and containerd restores it.
    store.create("pods", "default", sleeper("gc-restored", ref))
    await running_or_failed(store, "gc-restored")
    events, _ = store.list("events", "default")
    assert any(
        e["involvedObject"]["name"] == "gc-restored"
        and e["message"].startswith("Restored container main from checkpoint image")
        for e in events
    )
    for name in ("gc-running", "gc-restored"):
        store.delete("pods", "default", name, grace_period_seconds=0)
        await wait_gone(store, name)


async def test_an_image_a_pod_starts_from_during_the_collection_is_kept(tmp_path, monkeypatch):
    """The images in use are read once per collection; one that a pod begins to start from
    while earlier removals run must not be removed under it."""
    runtime = ImageRuntime(
        [cri.Image(id="first", size=8 * GIB), cri.Image(id="second", size=8 * GIB)]
    )
    _, kubelet = stand_in_kubelet(
        tmp_path,
        runtime,
        FsUsage(100 * GIB, 5 * GIB),
        monkeypatch,
        clock=lambda: 1000.0,
        policy=ImageGcPolicy(minimum_age=0),
    )
    remove = runtime.remove_image
    held = []

    async def remove_then_a_pod_starts(image):
        await remove(image)
        if not held:  # a pod starts from the other image while this removal ran
            held.append(kubelet.imagefs.holding("second"))
            held[0].__enter__()

    runtime.remove_image = remove_then_a_pod_starts
    await kubelet.detect_images()
    await kubelet.collect_images()
    assert runtime.removed == ["first"]
    assert "second" in runtime.images
    held[0].__exit__(None, None, None)
