"""SuspendingKubeSpawner's own decisions, without a hub or a cluster (KubeSpawner's _mock)."""

import pytest
from conftest import checkpoint_record
from cryptography.fernet import Fernet
from jupyterhub.crypto import CryptKeeper
from kubernetes_asyncio.client.rest import ApiException
from traitlets import TraitError
from traitlets.config import Config

from jhub_suspend.checkpoints import (
    SUSPEND_REQUEST_ANNOTATION,
    Checkpoint,
    LastError,
    Status,
)
from jhub_suspend.spawner import STATE_KEY, UNREADABLE_KEY, SuspendingKubeSpawner, human_size


@pytest.fixture(autouse=True)
def kubeconfig(mock_kubeconfig):
    """Every spawner here is made with KubeSpawner's _mock (conftest's mock_kubeconfig)."""


def spawner(**config):
    c = Config()
    for key, value in config.items():
        setattr(c.SuspendingKubeSpawner, key, value)
    return SuspendingKubeSpawner(_mock=True, config=c)


def pod(annotations=None, deleting=False):
    meta = {"name": "jupyter-alice", "annotations": annotations or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-30T00:00:00Z"
    return {"metadata": meta, "spec": {}}


def record(status=Status.SUSPENDED):
    return checkpoint_record(status)


async def test_a_stop_suspends_only_when_asked_or_configured():
    s = spawner()
    assert s.suspend_reason(pod()) is None
    assert s.suspend_reason(pod({SUSPEND_REQUEST_ANNOTATION: "idle"})) == "idle"
    # A pod that is already being deleted cannot be checkpointed.
    assert s.suspend_reason(pod({SUSPEND_REQUEST_ANNOTATION: "idle"}, deleting=True)) is None
    assert s.suspend_reason(None) is None
    assert spawner(suspend_on_stop=True).suspend_reason(pod()) == "stop"


async def test_the_checkpoint_survives_the_hubs_clear_state():
    s = spawner()
    s.checkpoint = record()
    s.last_error = LastError("restore", "msg", "2026-11-30T00:00:00Z", "detail")
    s.clear_state()  # JupyterHub calls this after every stop
    state = s.get_state()
    fresh = spawner()
    fresh.load_state(state)
    assert fresh.checkpoint == record()
    assert fresh.last_error == s.last_error
    assert fresh.suspended
    assert state[STATE_KEY]["checkpoint"]["status"] == "suspended"


async def test_a_checkpoint_sealed_with_another_key_never_locks_the_user_out():
    """The hub's crypt key changed since the suspension (a restarted demo, a rotated key):
    loading the state must not raise (it would fail the user's login and start with a 500).
    The next start is fresh, the user is told why, and the record is kept for the admin."""
    keeper = CryptKeeper.instance()
    old = keeper.keys
    try:
        keeper.keys = [Fernet.generate_key()[:32]]
        s = spawner()
        s.checkpoint = record()
        state = s.get_state()
        sealed = state[STATE_KEY]["checkpoint"]
        assert sealed["image"].startswith("fernet:")

        keeper.keys = [Fernet.generate_key()[:32]]  # another key
        fresh = spawner()
        fresh.load_state(state)
        assert fresh.checkpoint is None and not fresh.suspended
        assert fresh.last_error.operation == "restore"
        assert "encryption key has changed" in fresh.last_error.message
        assert "InvalidToken" in fresh.last_error.detail
        # kept as it was, across the hub's saves, for the admin
        again = fresh.get_state()
        assert again[STATE_KEY][UNREADABLE_KEY] == sealed
        later = spawner()
        later.load_state(again)
        assert later.unreadable_checkpoint == sealed
    finally:
        keeper.keys = old


async def test_only_restorable_checkpoints_make_a_server_suspended():
    s = spawner()
    for status in (Status.RESTORE_FAILED, Status.RESTORED, Status.DISCARDED, Status.RESTORING):
        s.checkpoint = record(status)
        assert not s.suspended, status


async def test_agent_urls_and_tls_settings():
    s = spawner(
        agent_url="https://{host_ip}:9771",
        agent_urls={"special": "http://10.0.0.9:1"},
        agent_token="t0k3n",
        agent_ca_file="/ca.pem",
        agent_client_cert="/c.pem",
        agent_client_key="/k.pem",
    )
    client = s.agent_for("node-a", "192.0.2.7")
    assert client.base_url == "https://192.0.2.7:9771"
    assert (client.ca_file, client.client_cert, client.client_key) == (
        "/ca.pem",
        "/c.pem",
        "/k.pem",
    )
    assert "t0k3n" not in repr(client)
    assert s.agent_for("special", "192.0.2.8").base_url == "http://10.0.0.9:1"


async def test_bad_repository_is_refused_with_a_clear_message():
    with pytest.raises(TraitError, match="without a scheme"):
        spawner(checkpoint_repository="https://registry.example.org/ckpt")
    assert spawner(checkpoint_repository="registry.example.org/ckpt/").checkpoint_repository == (
        "registry.example.org/ckpt"
    )


async def test_human_sizes():
    assert [human_size(n) for n in (512, 32_645_392, 1_200_000_000)] == [
        "512 B",
        "32.6 MB",
        "1.2 GB",
    ]


async def test_restore_timeout_defaults_below_start_timeout_and_rejects_nonsense():
    assert spawner(start_timeout=600).restore_timeout == pytest.approx(360)
    assert spawner(start_timeout=600, restore_timeout=100).restore_timeout == 100
    s = spawner()
    with pytest.raises(TraitError, match="restore_timeout must be above 0"):
        s.restore_timeout = 0


async def test_the_spawner_gives_its_agent_clients_the_checkpoint_and_reconnect_timeouts():
    # The behaviour itself: test_agent.py::test_an_agent_that_is_down_fails_a_checkpoint_fast
    s = spawner(checkpoint_timeout=600, agent_reconnect_timeout=5)
    client = s.agent_for("node-1", "10.0.0.7")
    assert client.timeout == 600  # a checkpoint that runs may take long
    assert client.reconnect_timeout == 5  # an agent that refuses connections fails fast


async def test_agent_client_settings_are_shared_with_the_service_in_one_section():
    """c.AgentClientConfig sets both the spawner's and the service's agent settings; a
    class's own section still wins, as with any traitlets class hierarchy."""
    from jhub_suspend.service import SuspendService

    c = Config()
    c.AgentClientConfig.agent_token = "shared"
    c.AgentClientConfig.agent_call_timeout = 42
    c.SuspendService.agent_token = "service-only"
    c.SuspendService.prometheus_url = "http://127.0.0.1:9"
    s = SuspendingKubeSpawner(_mock=True, config=c)
    svc = SuspendService(config=c)
    assert s.agent_token == "shared"
    assert svc.agent_token == "service-only"
    assert s.agent_call_timeout == svc.agent_call_timeout == 42
    # image deletions get the call timeout, checkpoints their own
    svc.agent_url = "http://10.0.0.1:9770"
    agent = svc.agent()
    assert agent is not None and agent.timeout == 42
    assert s.agent_for("node-1", "10.0.0.7").timeout == s.checkpoint_timeout


async def test_the_renamed_checkpoint_retention_still_keeps_used_checkpoints(caplog):
    assert spawner().keep_used_checkpoints is False
    assert spawner(checkpoint_retention=3600).keep_used_checkpoints is True
    assert spawner(checkpoint_retention=0).keep_used_checkpoints is False
    assert "checkpoint_retention is deprecated" in caplog.text
    assert "keep_used_checkpoints" in caplog.text


async def test_an_interrupted_restore_is_tried_again_a_bounded_number_of_times():
    """The hub stopped during a restore (issue 10's fault matrix): the image is intact, so the
    next start restores again, up to max_interrupted_restores times, then keeps it aside."""
    s = spawner(max_interrupted_restores=2)
    again = s._after_interrupted_restore(record(Status.RESTORING))
    assert again.status == Status.SUSPENDED and again.restorable
    assert again.interrupted_restores == 1
    assert s.last_error is None
    twice = s._after_interrupted_restore(again.with_status(Status.RESTORING))
    assert twice.restorable and twice.interrupted_restores == 2
    given_up = s._after_interrupted_restore(twice.with_status(Status.RESTORING))
    assert given_up.status == Status.RESTORE_FAILED and not given_up.restorable
    assert "did not finish" in s.last_error.message
    # The count travels through the hub's state.
    assert Checkpoint.from_state(twice.to_state(seal=False)).interrupted_restores == 2


async def test_a_running_pod_of_the_checkpoint_being_restored_is_the_restored_server():
    s = spawner()
    s.checkpoint = record(Status.RESTORING)
    restored = {"spec": {"containers": [{"name": "notebook", "image": s.checkpoint.image}]}}
    fresh = {"spec": {"containers": [{"name": "notebook", "image": "img"}]}}
    assert s._restored_by(restored)
    assert not s._restored_by(fresh)
    s.checkpoint = record(Status.SUSPENDED)  # no restore under way: not adopted as one
    assert not s._restored_by(restored)


async def test_polling_a_restore_the_hub_stop_interrupted_says_stopped(monkeypatch):
    """Back after a crash mid-restore, the hub polls first: the restore's pod runs at an address
    it was never told. Stopped at once (not after JupyterHub's minute of waiting for the old
    address), the next start restores again. A restore this hub runs is left alone."""
    from kubespawner import KubeSpawner

    async def running(self):
        return None

    stops = []

    async def stop(self, now=False):
        stops.append(now)

    async def no_watch(self, replace=False):
        return None

    monkeypatch.setattr(KubeSpawner, "poll", running)
    monkeypatch.setattr(KubeSpawner, "stop", stop)
    monkeypatch.setattr(KubeSpawner, "_start_watching_pods", no_watch)
    s = spawner()
    s.checkpoint = record(Status.RESTORING)
    assert await s.poll() == 1
    assert stops == [True]  # the hub will not stop it: poll said it had stopped
    assert s.checkpoint.status == Status.RESTORING  # the next start counts the interruption
    s._restoring = s.checkpoint  # this hub's own restore
    assert await s.poll() is None

    async def failing_stop(self, now=False):
        raise ApiException(status=500, reason="the API server is down")

    monkeypatch.setattr(KubeSpawner, "stop", failing_stop)
    s._restoring = None
    assert await s.poll() == 1  # no traceback into the hub's start-up; the next start adopts
    s._restoring = None
    s.checkpoint = record(Status.SUSPENDED)
    assert await s.poll() is None
    assert stops == [True]


async def test_polling_a_running_server_discards_a_suspension_that_never_finished(monkeypatch):
    """A checkpoint verified just before the hub stopped, whose pod was never deleted: the
    running server wins, but never while this hub is itself suspending or stopping it."""
    from kubespawner import KubeSpawner

    async def running(self):
        return None

    monkeypatch.setattr(KubeSpawner, "poll", running)
    released = []

    async def release(self, checkpoint):
        released.append(checkpoint.status)
        self.checkpoint = None

    monkeypatch.setattr(SuspendingKubeSpawner, "_release", release)
    s = spawner()
    s.checkpoint = record(Status.VERIFIED)
    s._suspending = True
    assert await s.poll() is None and released == []
    s._suspending, s._stop_pending = False, True
    assert await s.poll() is None and released == []
    s._stop_pending = False
    assert await s.poll() is None
    assert released == [Status.DISCARDED] and s.checkpoint is None
    s.checkpoint = record(Status.SUSPENDED)  # only a verified one is stale
    await s.poll()
    assert released == [Status.DISCARDED]


# ---- reaching the node agent -----------------------------------------------------------------


@pytest.mark.parametrize(
    "template, host_ip, url",
    [
        ("http://{host_ip}:9770", "10.0.0.5", "http://10.0.0.5:9770"),
        ("http://{host_ip}:9770", "fd00::5", "http://[fd00::5]:9770"),
        ("http://{host_ip}:9770", "", ""),  # no address to put in it
        ("https://agent-{node}.nodes:9770", "", "https://agent-n1.nodes:9770"),
    ],
)
async def test_the_agent_url_of_a_node(template, host_ip, url):
    from jhub_suspend.agent.client_config import node_agent_url

    assert node_agent_url(template, "n1", host_ip) == url
    s = spawner(agent_url=template)
    assert s.agent_url_for("n1", host_ip) == url
    assert (
        spawner(agent_url=template, agent_urls={"n1": "http://x:1"}).agent_url_for("n1", host_ip)
        == "http://x:1"
    )


async def test_no_agent_address_is_a_failed_suspension_with_the_reason():
    from jhub_suspend.spawner import SuspendFailed

    with pytest.raises(SuspendFailed, match="has no host IP"):
        spawner(agent_url="http://{host_ip}:9770").agent_for("n1", "")
