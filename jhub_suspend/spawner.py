"""SuspendingKubeSpawner: a KubeSpawner whose stop can checkpoint and whose start can restore.

A suspension is a stop that checkpoints first. JupyterHub removes the proxy route before it
calls ``stop()``, so no user input reaches the notebook while it is checkpointed. The node agent
on the pod's node checkpoints the notebook container, pushes the checkpoint image and verifies
it; only then is the pod deleted, so its CPU, memory and GPUs return to the node.

A restore is a start that uses the checkpoint: the pod is created by the restore driver from the
checkpoint, with the same spec otherwise, on a compatible node. When a restore cannot succeed,
the user gets a fresh server on the same volume and a message saying why; the checkpoint is
kept for the admin, and the spawner never tries it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from dataclasses import replace
from typing import Any

from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from sqlalchemy.orm import object_session
from traitlets import (
    Bool,
    Float,
    Instance,
    Integer,
    TraitError,
    Type,
    Unicode,
    default,
    validate,
)

from . import checkpoints as ck
from . import upstream
from .agent.client import AgentClient, AgentError
from .agent.client_config import AgentClientConfig, node_agent_url
from .checkpoints import Checkpoint, LastError, Status
from .deprecation import renamed_setting
from .errors import OwnError
from .kubevalues import rfc3339
from .restore import CheckpointImageDriver, RestoreDriver, RestoreFailed, gpu_restore_placement
from .state import STATE_KEY, UNREADABLE_KEY

UNREADABLE_MESSAGE = (
    "Your saved session cannot be read by this hub (most likely its encryption key has changed "
    "since it was saved). Your server starts fresh on the same volume; the saved record is "
    "kept for the admin."
)
NOTEBOOK_CONTAINER = "notebook"  # KubeSpawner's name for the notebook container
NO_ROOM_MESSAGE = (
    "No node had room to restore your server in time. Your saved session is kept: "
    "start the server again later to restore it."
)


class SuspendFailed(OwnError):
    """A checkpoint could not be made durable; the pod was left running and untouched."""


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class SuspendingKubeSpawner(AgentClientConfig, KubeSpawner):
    """KubeSpawner that suspends servers to a CRIU checkpoint and restores them on next start."""

    suspend_on_stop = Bool(
        False,
        help="""Suspend on every stop, not only when a suspension was requested.

        When False, a server is suspended only when it is marked for suspension (by the
        jhub-suspend service, an admin, or the user's Suspend button); a plain Stop ends it.
        When True, every stop checkpoints the server first, so Stop and the idle culler keep
        the user's kernels too.
        """,
    ).tag(config=True)

    checkpoint_repository = Unicode(
        help="""Image repository for checkpoint images, e.g. `registry.example.org/jhub-suspend`.

        Each checkpoint is pushed as `<repository>/<namespace>/<pod>:<time>`. Keep this
        registry private: a checkpoint holds the notebook's memory, tokens included.
        """,
    ).tag(config=True)

    @validate("checkpoint_repository")
    def _validate_repository(self, proposal: dict) -> str:
        value = proposal["value"].strip().rstrip("/")
        if value and ("://" in value or " " in value):
            raise TraitError(
                f"checkpoint_repository {value!r} must be an image repository such as "
                "registry.example.org/jhub-suspend, without a scheme"
            )
        return value

    agent_url = Unicode(
        "http://{host_ip}:9770",
        help="""URL of the node agent on the pod's node. `{node}` and `{host_ip}` are replaced
        by the pod's node name and host IP (the agent DaemonSet listens on the host network).
        """,
    ).tag(config=True)

    checkpoint_timeout = Float(
        300,
        help="Seconds a checkpoint may take, from the agent's start to the verified push.",
    ).tag(config=True)

    keep_used_checkpoints = Bool(
        False,
        help="""Keep a checkpoint's image in the registry after it was restored or discarded.

        False deletes the image at once. True leaves it, and its record in the spawner's
        state, to the jhub-suspend service's retention sweep, which deletes it once older than
        `SuspendService.used_checkpoint_retention`. A checkpoint whose restore failed is kept
        for the admin either way.
        """,
    ).tag(config=True)

    checkpoint_retention = Float(
        None,
        allow_none=True,  # so that setting it to 0, the old default, still reaches the new one
        help="""Deprecated since jhub-suspend 0.1: use `keep_used_checkpoints`.

        The spawner never used this as a duration: any value above 0 kept used checkpoints
        for the service's sweep, whose own age limit is
        `SuspendService.used_checkpoint_retention`. Setting it sets `keep_used_checkpoints`.
        """,
    ).tag(config=True)

    _checkpoint_retention_renamed = renamed_setting(
        "checkpoint_retention", "keep_used_checkpoints", "0.1", convert=lambda seconds: seconds > 0
    )

    restore_timeout = Float(
        help="""Seconds a restore may take before it is given up (capped at `start_timeout`).

        Shorter than the hub's `start_timeout` (by default 60 % of it), so that what follows
        still happens while the hub waits: a restore that waited for room on a full node keeps
        its checkpoint for the next start, and a restore that failed otherwise falls back to a
        fresh server in the time that is left.
        """,
    ).tag(config=True)

    max_interrupted_restores = Integer(
        2,
        help="""How many times a restore that the hub's own stop interrupted (a crash, a
        restart, an upgrade) is tried again on the next start. After that the checkpoint is
        kept for the admin as `restore_failed` and the user gets a fresh server, so that a
        restore that brings the hub down cannot do so forever.""",
    ).tag(config=True)

    @default("restore_timeout")
    def _default_restore_timeout(self) -> float:
        return 0.6 * self.start_timeout

    @validate("restore_timeout")
    def _validate_restore_timeout(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not value > 0:
            raise TraitError(f"restore_timeout must be above 0 seconds, not {value:g}")
        return value

    restore_driver_class = Type(
        CheckpointImageDriver,
        klass=RestoreDriver,
        help="How a pod is restored from a checkpoint (see jhub_suspend.restore).",
    ).tag(config=True)

    restore_driver = Instance(RestoreDriver)

    @default("restore_driver")
    def _default_restore_driver(self) -> RestoreDriver:
        return self.restore_driver_class(parent=self)

    # ---- state -----------------------------------------------------------------------------

    checkpoint: Checkpoint | None = None
    last_error: LastError | None = None
    #: a checkpoint record this hub could not read, kept as it was for the admin
    unreadable_checkpoint: dict[str, Any] | None = None
    _restoring: Checkpoint | None = None
    # The checkpoint this start is restoring (or tried to), and why that failed: for progress().
    _restore_attempt: Checkpoint | None = None
    # True while stop() checkpoints and deletes the pod (see poll)
    _suspending = False
    _restore_failure: str | None = None
    _start_decided = asyncio.Event()
    _progress_news = asyncio.Event()

    @property
    def suspended(self) -> bool:
        return self.checkpoint is not None and self.checkpoint.restorable

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state[STATE_KEY] = {
            "checkpoint": self.checkpoint.to_state() if self.checkpoint else None,
            "last_error": self.last_error.to_state() if self.last_error else None,
        }
        if self.unreadable_checkpoint is not None:
            state[STATE_KEY][UNREADABLE_KEY] = self.unreadable_checkpoint
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        ours = state.get(STATE_KEY) or {}
        if not isinstance(ours, dict):
            # Not what get_state wrote: read it as an unreadable checkpoint record, so that it
            # is kept for the admin and the user is told.
            ours = {"checkpoint": ours}
        self.unreadable_checkpoint = ours.get(UNREADABLE_KEY)
        self.checkpoint = None
        try:
            self.last_error = (
                LastError.from_state(ours["last_error"]) if ours.get("last_error") else None
            )
        except ValueError:
            self.last_error = None
        if raw := ours.get("checkpoint"):
            try:
                self.checkpoint = Checkpoint.from_state(raw)
            except Exception as e:
                # The hub's crypt key changed, or the record is from an incompatible version:
                # a state the hub cannot read must never lock the user out. The next start is
                # fresh; the record is kept, untouched, for the admin.
                self.log.warning(
                    "%s: its checkpoint cannot be read (%s: %s); the next start is fresh and "
                    "the record is kept under %s",
                    self._server_name,
                    type(e).__name__,
                    e,
                    UNREADABLE_KEY,
                )
                self.unreadable_checkpoint = raw
                self._record_error("restore", UNREADABLE_MESSAGE, f"{type(e).__name__}: {e}")

    def clear_state(self) -> None:
        # JupyterHub clears state after every stop; the checkpoint is exactly what must survive.
        super().clear_state()

    def _persist_state(self) -> None:
        """Write the state to the hub's database now, mid-operation, so a hub that dies after
        this point finds the checkpoint."""
        if self.orm_spawner is None:
            return
        self.orm_spawner.state = self.get_state()
        session = object_session(self.orm_spawner)
        if session is not None:
            session.commit()

    def _record_error(self, operation: str, message: str, detail: str = "") -> None:
        self.last_error = LastError(operation, message, rfc3339(self._now()), detail or message)

    def _now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    # ---- suspend ---------------------------------------------------------------------------

    @property
    def _server_name(self) -> str:
        return upstream.log_name(self)

    def _ref_key(self) -> str:
        return f"{self.namespace}/{self.pod_name}"

    def suspend_reason(self, pod: dict[str, Any] | None) -> str | None:
        """Why this stop should suspend, or None for a plain stop."""
        if not pod or pod["metadata"].get("deletionTimestamp"):
            return None
        requested = (pod["metadata"].get("annotations") or {}).get(ck.SUSPEND_REQUEST_ANNOTATION)
        if requested:
            return requested
        return "stop" if self.suspend_on_stop else None

    async def stop(self, now: bool = False) -> None:
        try:
            await self._stop(now)
        except Exception:
            # JupyterHub drops exceptions from stop() without a word; say what happened.
            self.log.exception("Stopping %s failed", self._server_name)
            raise

    async def poll(self) -> int | None:
        status = await super().poll()
        checkpoint = self.checkpoint
        if status is None and self._restore_interrupted():
            # The hub stopped during this restore and, back, polls first. Its pod was started
            # by the hub that died, at an address this one was never told: the hub would wait
            # for the server there and give up a minute later. The pod goes now, and the next
            # start restores again (JupyterHub does not stop what poll says has stopped).
            self.log.warning(
                "The restore of %s was under way when the hub stopped; its pod is deleted and "
                "the next start restores it again",
                self._server_name,
            )
            try:
                await super().stop(now=True)
            except (ApiException, TimeoutError) as e:
                # Still stopped as far as the hub goes: the next start adopts the restored pod
                # if it is still there (see _adopt_running_pod).
                self.log.warning("Could not delete the pod of %s: %s", self._server_name, e)
            return 1
        if (
            status is None
            and checkpoint is not None
            and checkpoint.status == Status.VERIFIED
            and not self._suspending
            and not upstream.stop_pending(self)
        ):
            # A suspension verified its checkpoint, then the hub stopped before it deleted the
            # pod (a hub restart polls first). The running server wins; the checkpoint would
            # otherwise stay unowned in the registry, or be restored over newer work later.
            self.log.warning(
                "%s runs, and its suspension never finished: discarding its checkpoint",
                self._server_name,
            )
            await self._release(checkpoint.with_status(Status.DISCARDED))
            self._persist_state()
        return status

    async def _current_pod(self) -> dict[str, Any] | None:
        """The pod as the API has it now. The reflector may lag behind a suspension mark set a
        moment ago, and a stop that missed the mark would delete the pod without a checkpoint."""
        try:
            pod = await self.api.read_namespaced_pod(self.pod_name, self.namespace)
            return self.api.api_client.sanitize_for_serialization(pod)  # the API's JSON shape
        except ApiException as e:
            if e.status == 404:
                return None
            self.log.warning(
                "Reading pod %s failed (%s); using the reflector's copy", self.pod_name, e
            )
            return self.pod_reflector.pods.get(self._ref_key())

    async def _stop(self, now: bool) -> None:
        await upstream.watch_pods(self)
        pod = await self._current_pod()
        reason = None if now else self.suspend_reason(pod)
        if pod is None or reason is None:
            self.will_resume = self.suspended
            await super().stop(now)
            return
        self._suspending = True
        try:
            await self._suspend_and_stop(pod, reason, now)
        finally:
            self._suspending = False

    async def _suspend_and_stop(self, pod: dict[str, Any], reason: str, now: bool) -> None:
        try:
            checkpoint = await self.suspend(pod, reason)
        except Exception as e:  # whatever went wrong, the pod must not be lost
            # Never lose a notebook: the pod keeps running; the next start adopts it.
            self.log.warning("Suspending %s failed, it keeps running: %s", self._server_name, e)
            self._record_error(
                "suspend", f"Suspending failed, the server keeps running: {e}", repr(e)
            )
            await self._annotate_pod(
                {**ck.CLEAR_SUSPEND_MARK, ck.SUSPEND_FAILED_ANNOTATION: str(e)[:1000]}
            )
            self.will_resume = True
            return
        self.checkpoint = checkpoint
        self.last_error = None
        self._persist_state()
        # At once, with no grace period: the restore resumes from the checkpoint, so whatever
        # the server did while shutting down gracefully would be lost anyway, and files it wrote
        # then would only disagree with the restored memory. It also frees the node sooner.
        await super().stop(now=True)
        self.checkpoint = checkpoint.with_status(Status.SUSPENDED)
        self.will_resume = True
        self.log.info(
            "Suspended %s to %s (%s) in %.1fs",
            self._server_name,
            checkpoint.image,
            human_size(checkpoint.size),
            checkpoint.seconds,
        )

    def agent_url_for(self, node: str, host_ip: str) -> str:
        """The agent's URL on ``node``; "" when the template needs a host IP and there is none."""
        return self.agent_urls.get(node) or node_agent_url(self.agent_url, node, host_ip)

    def agent_for(self, node: str, host_ip: str) -> AgentClient:
        """The client for checkpointing on ``node``: each call may take `checkpoint_timeout`."""
        url = self.agent_url_for(node, host_ip)
        if not url:
            raise SuspendFailed(
                f"no address for the node agent on node {node}: the pod has no host IP, which "
                f"SuspendingKubeSpawner.agent_url ({self.agent_url}) needs"
            )
        return self.agent_client(url, timeout=self.checkpoint_timeout)

    async def suspend(self, pod: dict[str, Any], reason: str) -> Checkpoint:
        """Checkpoint the running pod through its node's agent; the pod is not touched."""
        if not self.checkpoint_repository:
            raise SuspendFailed(
                "SuspendingKubeSpawner.checkpoint_repository is not set; nowhere to store it"
            )
        node_name = pod["spec"].get("nodeName", "")
        try:
            node = await self.api.read_node(node_name)
        except ApiException as e:
            raise SuspendFailed(f"cannot read node {node_name}: {e.reason}") from e
        node_obj = {"metadata": {"name": node_name, "labels": node.metadata.labels or {}}}
        now = self._now()
        container = next(
            (c for c in pod["spec"]["containers"] if c["name"] == NOTEBOOK_CONTAINER), None
        )
        if container is None:
            raise SuspendFailed(f"pod {self.pod_name} has no {NOTEBOOK_CONTAINER} container")
        ref = ck.image_reference(self.checkpoint_repository, self.namespace, self.pod_name, now)
        annotations = ck.image_annotations(
            user=self.user.name,
            server_name=self.name,
            namespace=self.namespace,
            pod=self.pod_name,
            original_image=ck.original_image(pod, container),
            reason=reason,
            now=now,
        )
        agent = self.agent_for(node_name, pod.get("status", {}).get("hostIP", ""))
        try:
            result = await agent.checkpoint(
                self.namespace,
                self.pod_name,
                NOTEBOOK_CONTAINER,
                ref,
                annotations,
                gpus=ck.pod_gpu_count(pod),
            )
        except AgentError as e:
            raise SuspendFailed(str(e)) from e
        facts = ck.node_facts(
            node_obj,
            ck.pod_gpu_count(pod),
            device_mode=result.gpu_device_mode,
            devices=result.gpu_devices,
        )
        try:
            # The restore's own rule, before the pod goes: a checkpoint no node may restore
            # (e.g. CDI without the GPUs' UUIDs) would cost the user the running server.
            gpu_restore_placement(facts)
        except RestoreFailed as e:
            await self._delete_unusable(agent, result.image)
            raise SuspendFailed(
                f"the checkpoint could be restored nowhere ({e.detail or e}); it was deleted"
            ) from e
        return Checkpoint(
            image=result.image,
            digest=result.digest,
            size=result.size,
            created=rfc3339(now),
            reason=reason,
            container=NOTEBOOK_CONTAINER,
            original_image=ck.original_image(pod, container),
            node=facts,
            status=Status.VERIFIED,
            archive_bytes=result.archive_bytes,
            seconds=result.timings.get("total", 0.0),
        )

    async def _delete_unusable(self, agent: AgentClient, image: str) -> None:
        try:
            await agent.delete_image(image)
        except AgentError as e:
            # No record will name it, so no sweep will find it: the log is the admin's clue.
            self.log.warning(
                "Could not delete the unusable checkpoint image %s (delete it by hand): %s",
                image,
                e,
            )

    async def _annotate_pod(self, annotations: dict[str, str | None]) -> None:
        """Set (or, with None, remove) annotations on the pod, if it still exists."""
        patch = {"metadata": {"annotations": annotations}}
        try:
            await self.api.patch_namespaced_pod(self.pod_name, self.namespace, patch)
        except ApiException as e:
            if e.status != 404:
                self.log.warning("Could not annotate pod %s: %s", self.pod_name, e)

    # ---- start and restore -----------------------------------------------------------------

    def start(self) -> Any:
        self._restore_attempt = None
        self._restore_failure = None
        self._start_decided = asyncio.Event()
        self._progress_news = asyncio.Event()
        return super().start()

    async def _start(self) -> tuple[str, int] | str:
        # Overrides KubeSpawner's private _start (upstream.KUBESPAWNER_START; see upstream.py),
        # which its public start() runs inside its backoff.
        try:
            return await self._start_or_restore()
        finally:
            self._start_decided.set()

    async def _start_or_restore(self) -> tuple[str, int] | str:
        adopted = await self._adopt_running_pod()
        if adopted is not None:
            return adopted
        checkpoint = self.checkpoint
        if checkpoint and checkpoint.status == Status.RESTORING:
            self.checkpoint = checkpoint = self._after_interrupted_restore(checkpoint)
        if checkpoint and checkpoint.restorable and await self._discarded_elsewhere(checkpoint):
            self.log.info(
                "The checkpoint of %s was discarded while it was stopped", self._server_name
            )
            self.checkpoint = checkpoint = None
        if checkpoint and checkpoint.restorable and self._discard_requested():
            self.log.info(
                "Discarding the checkpoint of %s at the user's request", self._server_name
            )
            await self._release(checkpoint.with_status(Status.DISCARDED))
            checkpoint = None
        if not (checkpoint and checkpoint.restorable):
            self._start_decided.set()
            return await upstream.kubespawner_start(super())
        return await self._restore(checkpoint)

    def _restore_interrupted(self) -> bool:
        """Whether the state says a restore is under way that this hub is not running: one
        that the hub's own stop interrupted."""
        checkpoint = self.checkpoint
        return (
            checkpoint is not None
            and checkpoint.status == Status.RESTORING
            and self._restoring is None
        )

    def _after_interrupted_restore(self, checkpoint: Checkpoint) -> Checkpoint:
        """A restore was under way when the hub stopped. Its image is intact, so try again,
        but only ``max_interrupted_restores`` times: a restore that itself brought the hub
        down must not do it forever."""
        attempts = checkpoint.interrupted_restores + 1
        if attempts > self.max_interrupted_restores:
            self._record_error(
                "restore",
                f"The last {attempts} restores of your saved session did not finish; "
                "it is kept for the administrator",
            )
            return checkpoint.with_status(Status.RESTORE_FAILED)
        self.log.warning(
            "The restore of %s was interrupted (%d time(s)); trying again",
            self._server_name,
            attempts,
        )
        return replace(checkpoint, status=Status.SUSPENDED, interrupted_restores=attempts)

    async def _discarded_elsewhere(self, checkpoint: Checkpoint) -> bool:
        """Whether the service (or an admin) discarded this checkpoint while the server was
        stopped: it deletes the image and leaves a marker Secret, which is consumed here."""
        name = ck.discard_marker_name(checkpoint.digest)
        try:
            await self.api.delete_namespaced_secret(name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def _discard_requested(self) -> bool:
        """Whether this start was asked to discard the checkpoint. The flag is consumed:
        JupyterHub keeps a start's options as the default for later starts, and a later
        resume must not discard a newer checkpoint."""
        options: dict[str, Any] = dict(self.user_options or {})  # type: ignore[has-type]
        requested = bool(options.pop("discard_checkpoint", False))
        if requested:
            self.user_options = options
            if self.orm_spawner is not None:
                self.orm_spawner.user_options = options
        return requested

    async def _adopt_running_pod(self) -> tuple[str, int] | str | None:
        """A pod that kept running (a suspension that failed, or a hub that restarted) is the
        user's live server: start returns it instead of replacing it."""
        await upstream.watch_pods(self)
        # From the API, not the reflector: the mark was set moments ago by the failed stop,
        # and missing it would make KubeSpawner replace the live pod.
        pod = await self._current_pod()
        if pod is None or not self.is_pod_running(pod):
            return None
        annotations = pod.get("metadata", {}).get("annotations") or {}
        restored = self._restored_by(pod)
        if ck.SUSPEND_FAILED_ANNOTATION not in annotations and not restored:
            return None
        self.log.info("Adopting the running pod %s for %s", self.pod_name, self._server_name)
        self.pod_id = pod["metadata"]["uid"]
        await self._annotate_pod({ck.SUSPEND_FAILED_ANNOTATION: None})
        if restored and self.checkpoint:
            # The restore finished after the hub that started it stopped: the restored pod is
            # the server, and the checkpoint was used.
            await self._release(self.checkpoint.with_status(Status.RESTORED))
        elif self.checkpoint and self.checkpoint.status == Status.VERIFIED:
            # The suspension never deleted the pod: the running server wins.
            await self._release(self.checkpoint.with_status(Status.DISCARDED))
        return upstream.pod_url(self, pod)

    def _restored_by(self, pod: dict[str, Any]) -> bool:
        """Whether the pod runs the checkpoint this server was being restored from."""
        checkpoint = self.checkpoint
        if checkpoint is None or checkpoint.status != Status.RESTORING:
            return False
        containers = pod.get("spec", {}).get("containers") or []
        images = {c.get("image") for c in containers if c.get("name") == checkpoint.container}
        return checkpoint.image in images

    async def _restore(self, checkpoint: Checkpoint) -> tuple[str, int] | str:
        self._restoring = self._restore_attempt = checkpoint
        self._start_decided.set()
        self.checkpoint = checkpoint.with_status(Status.RESTORING)
        self._persist_state()
        try:
            deadline = min(self.restore_timeout, self.start_timeout)
            url = await asyncio.wait_for(upstream.kubespawner_start(super()), deadline)
        except TimeoutError as e:
            if not await self._waiting_for_room():
                return await self._start_fresh(checkpoint, e)
            await self._keep_for_later(checkpoint)
            raise TimeoutError(NO_ROOM_MESSAGE) from e
        except RestoreFailed as e:
            return await self._start_fresh(checkpoint, e)
        finally:
            self._restoring = None
        self.log.info("Restored %s from %s", self._server_name, checkpoint.image)
        await self._release(checkpoint.with_status(Status.RESTORED))
        return url

    async def _waiting_for_room(self) -> bool:
        """Whether the restoring pod is still unscheduled: the cluster is full, the checkpoint
        itself may be fine."""
        pod = await self._current_pod()
        conditions = ((pod or {}).get("status") or {}).get("conditions") or []
        return any(
            c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
            for c in conditions
        )

    async def _keep_for_later(self, checkpoint: Checkpoint) -> None:
        """Give up waiting for room: the pod goes, the checkpoint stays restorable."""
        self.log.warning("No room to restore %s in time; its checkpoint is kept", self._server_name)
        self._record_error("restore", NO_ROOM_MESSAGE)
        self.checkpoint = checkpoint
        self._restoring = None
        self._persist_state()
        await super().stop(now=True)

    async def _start_fresh(
        self, checkpoint: Checkpoint, e: RestoreFailed | TimeoutError
    ) -> tuple[str, int] | str:
        """The restore cannot succeed: keep the checkpoint for the admin, start fresh."""
        failure = (
            e
            if isinstance(e, RestoreFailed)
            else RestoreFailed("the restored server did not start in time", str(e))
        )
        self.log.warning("Restoring %s failed: %s", self._server_name, failure.detail)
        self._restore_failure = str(failure)
        self._progress_news.set()
        self._record_error(
            "restore",
            f"Your saved session could not be restored: {failure}. "
            "A fresh server was started on the same volume.",
            failure.detail,
        )
        self.checkpoint = checkpoint.with_status(Status.RESTORE_FAILED)
        self._restoring = None
        self._persist_state()
        await super().stop(now=True)
        return await upstream.kubespawner_start(super())

    async def _release(self, checkpoint: Checkpoint) -> None:
        """A checkpoint that was used or discarded: delete its image unless retention keeps it."""
        self.checkpoint = checkpoint if self.keep_used_checkpoints else None
        if self.keep_used_checkpoints:
            return
        agent = self._any_agent()
        if agent is None:
            return
        try:
            await agent.delete_image(checkpoint.image)
        except AgentError as e:
            # The image outlives its record; the service's retention sweep removes it later.
            self.log.warning("Could not delete checkpoint image %s: %s", checkpoint.image, e)

    def _any_agent(self) -> AgentClient | None:
        pod = self.pod_reflector.pods.get(self._ref_key()) if self.pod_reflector else None
        if pod and pod["spec"].get("nodeName"):
            node, host_ip = pod["spec"]["nodeName"], pod["status"].get("hostIP", "")
            url = self.agent_url_for(node, host_ip)
            if url:
                return self.agent_client(url)
        if self.agent_urls:
            return self.agent_client(next(iter(self.agent_urls.values())))
        return None

    async def get_pod_manifest(self) -> Any:
        pod = await super().get_pod_manifest()
        if self._restoring is not None:
            pod = self.restore_driver.apply(pod, self._restoring, NOTEBOOK_CONTAINER)
            pod.metadata.annotations = {
                **(pod.metadata.annotations or {}),
                f"{ck.ANNOTATION_PREFIX}/restored-from": self._restoring.digest,
            }
        return pod

    def is_pod_running(self, pod: dict[str, Any] | None) -> bool:
        if self._restoring is not None:
            failure = self.restore_driver.failure(pod, NOTEBOOK_CONTAINER)
            if failure:
                raise failure
        return bool(super().is_pod_running(pod))

    async def progress(self) -> Any:
        """KubeSpawner's events, with the restore's own steps told in words as they happen."""
        with contextlib.suppress(TimeoutError):
            # Whether this start restores is known within moments; wait for it, so the first
            # message already says so.
            await asyncio.wait_for(self._start_decided.wait(), 10)
        told: set[str] = set()
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for event in KubeSpawner.progress(self):
                    await events.put(event)
            finally:
                await events.put(None)

        pumping = asyncio.ensure_future(pump())
        try:
            while True:
                for item in self._restore_news(told):
                    yield item
                self._progress_news.clear()
                get = asyncio.ensure_future(events.get())
                news = asyncio.ensure_future(self._progress_news.wait())
                await asyncio.wait({get, news}, return_when=asyncio.FIRST_COMPLETED)
                news.cancel()
                if not get.done():
                    get.cancel()
                    continue
                event = get.result()
                if event is None:
                    break
                yield event
            for item in self._restore_news(told):
                yield item
        finally:
            pumping.cancel()

    def _restore_news(self, told: set[str]) -> list[dict[str, Any]]:
        """What the spawn page has not been told yet about the restore."""
        out = []
        attempt = self._restore_attempt
        if attempt is not None and "restoring" not in told:
            told.add("restoring")
            out.append(
                {
                    "progress": 2,
                    "message": "Restoring your saved session: pulling a checkpoint of "
                    f"{human_size(attempt.size)} taken {attempt.created}",
                }
            )
        if self._restore_failure and "failed" not in told:
            told.add("failed")
            out.append(
                {
                    "message": "Your saved session could not be restored: "
                    f"{self._restore_failure}. Starting a fresh server on the same volume."
                }
            )
        return out
