"""The local cluster's container runtime: real process trees, checkpointed with real CRIU.

A container is started as ``nsenter --net=NETNS unshare --pid --fork setsid CMD``:
its command runs in the pod's network namespace, as PID 1 and session leader of a PID namespace
of its own (so a restore never collides with a PID in use, and CRIU can dump the whole tree).
``ip netns exec`` is not used: it also creates a mount namespace, which CRIU then refuses to dump.

Output goes to a pipe that this runtime reads into the container's log file. Containers never
hold the log file open, because CRIU checks the size of open files at restore. On restore the
runtime hands CRIU a fresh pipe for the old one with ``--inherit-fd``.

A checkpoint is ``criu dump --leave-running`` of the tree, with the network namespace marked
external; the container keeps running. A restore puts the tree into a *different* pod's network
namespace (another address) by handing CRIU that namespace as an inherited fd.

Restored processes are not children of this process; the runtime makes itself a child
subreaper (``PR_SET_CHILD_SUBREAPER``) so that they are reparented to it when CRIU exits, and
waits for them through a pidfd.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import archive as ckpt
from ..commands import run_command
from .criu import (
    DEFAULT_CRIU,
    DUMP_LOG,
    RESTORE_LOG,
    STATS_DUMP,
    CriuError,
    dump_args,
    pipe_resource,
    restore_args,
    run_criu,
)
from .network import NetnsInfo

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
#: the key under which the pod's network namespace is external to the dump
NETNS_KEY = "extNetNs"
START_TIMEOUT = 10.0
KILL_TIMEOUT = 10.0
LOOPBACK_NET = "127.0.0.0/8"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def set_child_subreaper() -> bool:
    """Make this process a child subreaper, so orphaned descendants (restored trees) are ours."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: %s", os.strerror(err))
        return False
    return True


def exit_code_from_status(status: int) -> int:
    """A wait status as Kubernetes reports exit codes (128 + signal for a signal)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def exit_code_from_returncode(returncode: int) -> int:
    """asyncio's returncode (negative for a signal) as a Kubernetes exit code."""
    return 128 - returncode if returncode < 0 else returncode


#: PID 1 waits for one line on stdin (the runtime's go-ahead, sent once it has found the
#: init's host PID, so even a command that exits at once is seen), then runs the command with
#: stdin from /dev/null; ``exec`` keeps the PID.
_GATE = 'IFS= read -r _ || exit 125; exec "$0" "$@" </dev/null'


def container_argv(netns_path: str, argv: list[str]) -> list[str]:
    """The host command line that runs ``argv`` as PID 1 of a new PID namespace in a pod.

    No ``--kill-child``: it sets PR_SET_PDEATHSIG on the init, CRIU dumps that, and the
    restored init would be killed the moment CRIU exits.
    """
    return [
        shutil.which("nsenter") or "nsenter",
        f"--net={netns_path}",
        shutil.which("unshare") or "unshare",
        "--pid",
        "--fork",
        shutil.which("setsid") or "setsid",
        "/bin/sh",
        "-c",
        _GATE,
        *argv,
    ]


def namespace_init_child(wrapper_pid: int) -> int:
    """The child of ``wrapper_pid`` that is PID 1 of its PID namespace (0 if none yet)."""
    try:
        with open(f"/proc/{wrapper_pid}/task/{wrapper_pid}/children") as f:
            children = f.read().split()
    except FileNotFoundError:
        raise RuntimeError("the container exited before it started") from None
    for child in children:
        try:
            with open(f"/proc/{child}/status") as f:
                status = f.read()
        except FileNotFoundError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:") and line.split()[-1] == "1":
                return int(child)
    return 0


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # the command name may contain spaces and parentheses: split after the last ')'
    return data[data.rindex(")") + 2 :].split()


def pids_in_pid_namespace(ns_inode: int) -> list[int]:
    """Host PIDs of all processes whose PID namespace has inode ``ns_inode``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/pid").st_ino == ns_inode:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def stdio_pipe_inodes(pid: int) -> list[int]:
    """Inodes of the pipes on the process's fds 0-2."""
    inodes: list[int] = []
    for fd in (0, 1, 2):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("pipe:[") and link.endswith("]"):
            ino = int(link[6:-1])
            if ino not in inodes:
                inodes.append(ino)
    return inodes


def _finish_images(work: str) -> int:
    """Move CRIU's stats-dump next to checkpoint/ (as in CRI-O's archive); images' size."""
    images = os.path.join(work, ckpt.CHECKPOINT_DIRECTORY)
    stats_src = os.path.join(images, STATS_DUMP)
    if os.path.exists(stats_src):
        os.replace(stats_src, os.path.join(work, ckpt.STATS_DUMP_FILE))
    return sum(os.path.getsize(os.path.join(images, f)) for f in os.listdir(images))


def _read_pidfile(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


@dataclass
class ContainerProcess:
    """A running container: the host PID of its PID namespace's init, and how to wait for it."""

    pid: int
    netns: NetnsInfo
    log_path: str
    started_at: float
    restored: bool = False
    wrapper_pid: int | None = None
    pidns_inode: int = 0
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    exit_code: int | None = None
    _pidfd: int = -1
    _signalled: int = 0
    _exited: asyncio.Future[int] | None = field(default=None, repr=False)
    _log_done: asyncio.Future[None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.exit_code is None

    async def wait(self) -> int:
        """Wait for the container's init to exit; return its exit code (128+N for signal N)."""
        assert self._exited is not None
        return await asyncio.shield(self._exited)

    async def wait_logs(self, timeout: float = 5.0) -> None:
        """Wait until the output pipe reached end of file (all writers gone)."""
        if self._log_done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._log_done), timeout)


class _LogPump:
    """Reads a pipe into a log file (append) from the event loop."""

    def __init__(self, read_fd: int, log_path: str, done: asyncio.Future[None]) -> None:
        self.fd = read_fd
        self.done = done
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        self.out = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed at EOF
        os.set_blocking(read_fd, False)
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(read_fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            log.warning("reading container output: %s", e)
            data = b""
        if data:
            self.out.write(data)
            return
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
            self.out.close()
            if not self.done.done():
                self.done.set_result(None)


class Runtime:
    """Starts, stops, checkpoints and restores containers on this machine.

    ``tcp`` chooses what happens to TCP connections at restore: ``"established"`` (default)
    restores them with CRIU's ``--tcp-established``, then closes the ones whose peer is outside
    the pod (``ss -K``), so loopback connections inside the pod survive; ``"close"`` restores every
    connection closed (CRIU's ``--tcp-close``), and applications must reconnect.
    """

    def __init__(
        self,
        criu_path: str = DEFAULT_CRIU,
        state_dir: str = "/var/lib/jhub-suspend/runtime",
        *,
        subreaper: bool = True,
        tcp: str = "established",
        command_timeout: float = 30.0,
    ) -> None:
        if tcp not in ("established", "close"):
            raise ValueError("tcp must be 'established' or 'close'")
        self.criu_path = criu_path
        self.state_dir = state_dir
        self.tcp = tcp
        self.command_timeout = command_timeout
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.subreaper = set_child_subreaper() if subreaper else False

    # --- start / stop ---------------------------------------------------------------------

    async def start(
        self,
        netns: NetnsInfo,
        argv: list[str],
        env: Mapping[str, str],
        cwd: str,
        log_path: str,
    ) -> ContainerProcess:
        """Run ``argv`` in the pod's network namespace as PID 1 of a new PID namespace."""
        if not argv:
            raise ValueError("empty command")
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        gate_r, gate_w = os.pipe()
        try:
            wrapper = await asyncio.create_subprocess_exec(
                *container_argv(netns.path, list(argv)),
                stdin=gate_r,
                stdout=write_fd,
                stderr=write_fd,
                env=dict(env),
                cwd=cwd,
            )
        except BaseException:
            for fd in (read_fd, write_fd, gate_w):
                os.close(fd)
            raise
        finally:
            os.close(gate_r)
        os.close(write_fd)
        log_done: asyncio.Future[None] = loop.create_future()
        pump = _LogPump(read_fd, log_path, log_done)
        try:
            pid = await self._find_init(wrapper.pid)
            pidfd = os.pidfd_open(pid)
            pidns_inode = os.stat(f"/proc/{pid}/ns/pid").st_ino
        except BaseException:
            os.close(gate_w)
            with contextlib.suppress(ProcessLookupError):
                wrapper.kill()
            await wrapper.wait()
            pump.close()
            raise
        os.write(gate_w, b"go\n")
        os.close(gate_w)
        proc = ContainerProcess(
            pid=pid,
            netns=netns,
            log_path=log_path,
            started_at=time.time(),
            wrapper_pid=wrapper.pid,
            pidns_inode=pidns_inode,
            argv=list(argv),
            env=dict(env),
            cwd=cwd,
            _pidfd=pidfd,
            _exited=loop.create_future(),
            _log_done=log_done,
        )

        async def _reap() -> None:
            rc = await wrapper.wait()
            code = exit_code_from_returncode(rc)
            if code != 0 and proc._signalled:
                # unshare cannot re-raise the signal that killed its child (it exits with 1)
                code = 128 + proc._signalled
            self._set_exit(proc, code)

        proc_task = loop.create_task(_reap())
        proc_task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
        log.info("started %s as pid %d in %s (%s)", argv[0], pid, netns.name, netns.ip)
        return proc

    async def _find_init(self, wrapper_pid: int) -> int:
        """The host PID of unshare's child, once it is PID 1 of its namespace."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            pid = namespace_init_child(wrapper_pid)
            if pid:
                return pid
            await asyncio.sleep(0.01)
        raise RuntimeError(f"no PID namespace init under pid {wrapper_pid} after {START_TIMEOUT} s")

    def _set_exit(self, proc: ContainerProcess, code: int) -> None:
        if proc.exit_code is None:
            proc.exit_code = code
            log.info("container pid %d exited with %d", proc.pid, code)
        if proc._pidfd >= 0:
            with contextlib.suppress(OSError):
                asyncio.get_running_loop().remove_reader(proc._pidfd)
            os.close(proc._pidfd)
            proc._pidfd = -1
        if proc._exited is not None and not proc._exited.done():
            proc._exited.set_result(proc.exit_code)

    def _watch_restored(self, proc: ContainerProcess) -> None:
        """Notice the exit of a restored init (not our child unless we are its subreaper)."""
        loop = asyncio.get_running_loop()

        def _exited() -> None:
            code = 128 + signal.SIGKILL  # unknown: not our child
            try:
                wpid, status = os.waitpid(proc.pid, os.WNOHANG)
                if wpid == 0:
                    return  # pidfd readable but not yet reapable: try again
                code = exit_code_from_status(status)
            except ChildProcessError:
                log.debug("restored pid %d is not our child; exit code unknown", proc.pid)
            self._set_exit(proc, code)

        loop.add_reader(proc._pidfd, _exited)

    async def kill(self, proc: ContainerProcess) -> int:
        """SIGKILL the container's init (and so its whole PID namespace); wait; idempotent."""
        if proc.exit_code is None and proc._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(proc._pidfd, signal.SIGKILL)
                proc._signalled = signal.SIGKILL
        try:
            code = await asyncio.wait_for(proc.wait(), KILL_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(f"container pid {proc.pid} did not exit after SIGKILL") from None
        await proc.wait_logs(1.0)
        return code

    async def terminate(self, proc: ContainerProcess, grace: float = 10.0) -> int:
        """SIGTERM every process in the container (init last), then SIGKILL after ``grace``."""
        if proc.exit_code is None:
            others = [p for p in pids_in_pid_namespace(proc.pidns_inode) if p != proc.pid]
            for pid in others:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            if proc._pidfd >= 0:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(proc._pidfd, signal.SIGTERM)
                    proc._signalled = signal.SIGTERM
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(proc.wait(), grace)
        return await self.kill(proc)

    # --- usage ----------------------------------------------------------------------------

    def usage(self, proc: ContainerProcess) -> tuple[float, int]:
        """(CPU seconds, working set bytes) of all processes in the container's PID namespace.

        CPU is utime+stime+cutime+cstime (children already reaped count too); memory is the
        sum of resident set sizes.
        """
        if proc.exit_code is not None or not proc.pidns_inode:
            return 0.0, 0
        ticks = 0
        rss_pages = 0
        for pid in pids_in_pid_namespace(proc.pidns_inode):
            try:
                fields = _stat_fields(pid)
            except (OSError, ValueError):
                continue
            # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17, rss=24
            ticks += sum(int(fields[i - 3]) for i in (14, 15, 16, 17))
            rss_pages += int(fields[24 - 3])
        return ticks / CLK_TCK, rss_pages * PAGE_SIZE

    # --- checkpoint -----------------------------------------------------------------------

    async def checkpoint(
        self,
        proc: ContainerProcess,
        netns: NetnsInfo,
        archive_path: str,
        *,
        container_name: str,
        pod_meta: Mapping[str, Any],
        timeout: float = 120.0,
        image: str = "",
    ) -> dict[str, Any]:
        """Dump the container with CRIU (it keeps running) and write a CRI-O layout archive.

        ``pod_meta`` may carry ``name``, ``namespace``, ``uid`` and ``annotations`` (extra
        spec annotations). Returns stats: ``seconds`` (whole checkpoint), ``criu_seconds``,
        ``archive_seconds``, ``bytes`` (archive size), ``images_bytes`` (CRIU images).
        Raises :class:`CriuError` with CRIU's reason on failure; the container keeps running.
        """
        if proc.exit_code is not None:
            raise CriuError(f"criu dump: container pid {proc.pid} is not running")
        t0 = time.monotonic()
        work = tempfile.mkdtemp(prefix="dump-", dir=self.state_dir)
        try:
            images = os.path.join(work, ckpt.CHECKPOINT_DIRECTORY)
            os.makedirs(images)
            try:
                netns_inode = os.stat(f"/proc/{proc.pid}/ns/net").st_ino
                pipes = stdio_pipe_inodes(proc.pid)
            except FileNotFoundError:
                raise CriuError(f"criu dump: no process {proc.pid}") from None
            argv = dump_args(
                self.criu_path,
                pid=proc.pid,
                images_dir=images,
                work_dir=work,
                log_file=DUMP_LOG,
                leave_running=True,
                tcp_established=True,
                external_netns=(netns_inode, NETNS_KEY),
            )
            await run_criu(argv, log_path=os.path.join(work, DUMP_LOG), timeout=timeout)
            t_criu = time.monotonic() - t0
            images_bytes = await asyncio.to_thread(_finish_images, work)
            now = time.time()
            pod_name = str(pod_meta.get("name", ""))
            pod_ns = str(pod_meta.get("namespace", "default"))
            pod_uid = str(pod_meta.get("uid", ""))
            annotations = ckpt.crio_annotations(
                container_name=container_name,
                pod_name=pod_name,
                pod_namespace=pod_ns,
                pod_uid=pod_uid,
                pod_ip=netns.ip,
                image=image,
                created=proc.started_at,
            )
            annotations.update(
                {str(k): str(v) for k, v in (pod_meta.get("annotations") or {}).items()}
            )
            annotations.update(
                {
                    ckpt.ANNOTATION_NETNS_KEY: NETNS_KEY,
                    ckpt.ANNOTATION_STDIO_PIPES: ",".join(str(i) for i in pipes),
                    ckpt.ANNOTATION_POD_IP: netns.ip,
                    ckpt.ANNOTATION_TCP_MODE: "established",
                }
            )
            ckpt.write_metadata(
                work,
                config=ckpt.config_dump(
                    container_id=f"{pod_uid or pod_name}-{container_name}-{proc.pid}",
                    name=container_name,
                    rootfs_image_name=image,
                    created=proc.started_at,
                    checkpointed=now,
                ),
                spec=ckpt.spec_dump(
                    args=proc.argv,
                    env=proc.env,
                    cwd=proc.cwd,
                    hostname=pod_name,
                    netns_path=netns.path,
                    annotations=annotations,
                ),
                net_status=ckpt.network_status(
                    ip=netns.ip,
                    prefixlen=netns.prefixlen,
                    gateway=netns.gateway,
                    sandbox=netns.path,
                ),
            )
            t1 = time.monotonic()
            size = await asyncio.to_thread(ckpt.write_archive, work, archive_path)
            t2 = time.monotonic()
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        stats = {
            "seconds": round(t2 - t0, 3),
            "criu_seconds": round(t_criu, 3),
            "archive_seconds": round(t2 - t1, 3),
            "bytes": size,
            "images_bytes": images_bytes,
        }
        log.info("checkpointed pid %d to %s: %s", proc.pid, archive_path, stats)
        return stats

    # --- restore --------------------------------------------------------------------------

    async def restore(
        self,
        archive_dir_or_tar: str,
        netns: NetnsInfo,
        log_path: str,
        *,
        timeout: float = 120.0,
    ) -> ContainerProcess:
        """Restore a checkpoint into ``netns`` (another pod's namespace, another address).

        Loopback connections inside the pod come back; connections to peers outside the pod
        are closed after the restore (see the class docstring). Raises :class:`CriuError`.
        """
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        cleanup: list[str] = []
        if await asyncio.to_thread(os.path.isdir, archive_dir_or_tar):
            source = archive_dir_or_tar
        else:
            source = tempfile.mkdtemp(prefix="restore-src-", dir=self.state_dir)
            cleanup.append(source)
            try:
                await asyncio.to_thread(ckpt.extract_archive, archive_dir_or_tar, source)
            except ckpt.ArchiveError as e:
                shutil.rmtree(source, ignore_errors=True)
                raise CriuError(f"criu restore: {e}") from e
        work = tempfile.mkdtemp(prefix="restore-", dir=self.state_dir)
        cleanup.append(work)
        fds: list[int] = []
        read_fd = -1
        try:
            try:
                info = ckpt.read_checkpoint(source)
            except ckpt.ArchiveError as e:
                raise CriuError(f"criu restore: {e}") from e
            netns_fd = os.open(netns.path, os.O_RDONLY | os.O_CLOEXEC)
            fds.append(netns_fd)
            read_fd, write_fd = os.pipe()
            fds.append(write_fd)
            inherit: list[tuple[int, str]] = [(netns_fd, info.netns_key or NETNS_KEY)]
            for ino in info.stdio_pipe_inodes:
                inherit.append((write_fd, pipe_resource(ino)))
            pidfile = os.path.join(work, "restore.pid")
            old_ip = info.pod_ip
            moved = bool(old_ip) and old_ip != netns.ip
            if moved:
                # CRIU reconnects established sockets (in repair mode) from their old address,
                # which must be local for the route lookup: lend it to lo while restoring.
                await self._lend_old_address(netns, old_ip, True)
            argv = restore_args(
                self.criu_path,
                images_dir=info.images_dir,
                pidfile=pidfile,
                work_dir=work,
                log_file=RESTORE_LOG,
                tcp_established=self.tcp == "established",
                tcp_close=self.tcp == "close",
                inherit_fds=inherit,
            )
            for fd in fds:
                os.set_inheritable(fd, True)
            try:
                await run_criu(
                    argv,
                    log_path=os.path.join(work, RESTORE_LOG),
                    timeout=timeout,
                    pass_fds=fds,
                )
                if self.tcp == "established":
                    await self._close_outside_connections(netns, old_ip)
            finally:
                if moved:
                    await self._lend_old_address(netns, old_ip, False)
            pid = await asyncio.to_thread(_read_pidfile, pidfile)
            log_done: asyncio.Future[None] = loop.create_future()
            pump = _LogPump(read_fd, log_path, log_done)
            read_fd = -1
            spec_proc = info.spec.get("process") or {}
            env = dict(
                e.split("=", 1) for e in spec_proc.get("env", []) if isinstance(e, str) and "=" in e
            )
            try:
                pidfd = os.pidfd_open(pid)
                pidns_inode = os.stat(f"/proc/{pid}/ns/pid").st_ino
            except (ProcessLookupError, FileNotFoundError):
                pump.close()
                raise CriuError(f"criu restore: restored pid {pid} is gone already") from None
            proc = ContainerProcess(
                pid=pid,
                netns=netns,
                log_path=log_path,
                started_at=time.time(),
                restored=True,
                pidns_inode=pidns_inode,
                argv=list(spec_proc.get("args", [])),
                env=env,
                cwd=str(spec_proc.get("cwd", "/")),
                _pidfd=pidfd,
                _exited=loop.create_future(),
                _log_done=log_done,
            )
            self._watch_restored(proc)
            log.info(
                "restored %s as pid %d in %s (%s, was %s) in %.2f s",
                info.name,
                pid,
                netns.name,
                netns.ip,
                old_ip,
                time.monotonic() - t0,
            )
            return proc
        finally:
            for fd in fds:
                os.close(fd)
            if read_fd >= 0:
                os.close(read_fd)
            for d in cleanup:
                await asyncio.to_thread(shutil.rmtree, d, True)

    async def _lend_old_address(self, netns: NetnsInfo, address: str, add: bool) -> None:
        """Add (or remove) the pod's old address on the new namespace's ``lo``.

        With ``arp_ignore=1`` and ``arp_announce=2`` the namespace neither answers ARP for it
        nor uses it as an ARP source, so the address stays invisible outside the namespace.
        """
        nsenter = shutil.which("nsenter") or "nsenter"
        if add:
            for key, value in (("arp_ignore", 1), ("arp_announce", 2)):
                await run_command(
                    [nsenter, f"--net={netns.path}", "sysctl", "-q", "-w",
                     f"net.ipv4.conf.all.{key}={value}"],
                    timeout=self.command_timeout,
                )  # fmt: skip
            # replace, not add: an interrupted restore may have left it there
            await run_command(
                [nsenter, f"--net={netns.path}", "ip", "addr", "replace", f"{address}/32",
                 "dev", "lo"],
                timeout=self.command_timeout,
            )  # fmt: skip
        else:
            await run_command(
                [nsenter, f"--net={netns.path}", "ip", "addr", "del", f"{address}/32",
                 "dev", "lo"],
                timeout=self.command_timeout,
                check=False,
            )  # fmt: skip

    async def _close_outside_connections(self, netns: NetnsInfo, old_ip: str) -> None:
        """Destroy restored TCP sockets whose peer is outside the pod (kernel sock_destroy)."""
        inside = [LOOPBACK_NET, netns.ip]
        if old_ip:
            inside.append(old_ip)
        expr: list[str] = ["not", "("]
        for i, addr in enumerate(inside):
            expr += (["or"] if i else []) + ["dst", addr]
        expr.append(")")
        argv = [
            shutil.which("nsenter") or "nsenter",
            f"--net={netns.path}",
            "ss",
            "-K",
            "-t",
            "-n",
            "-4",
            "state",
            "connected",
            *expr,
        ]
        result = await run_command(argv, timeout=self.command_timeout, check=False)
        if result.returncode != 0:
            log.warning("closing outside connections failed: %s", result.stderr.strip())
        else:
            killed = [ln for ln in result.stdout.splitlines()[1:] if ln.strip()]
            log.info("closed %d connection(s) to peers outside pod %s", len(killed), netns.name)
