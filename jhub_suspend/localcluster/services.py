"""The real servers the local cluster runs: Prometheus and the OCI registry.

Every server is a :class:`ManagedProcess`: started in its own process group, with its output in
a log file, and with ``PR_SET_PDEATHSIG=SIGKILL`` so that it never outlives the Python process
that started it, even when that process is killed with SIGKILL. Each process is entered in a
:class:`ProcessGroup` (by default the module's :data:`PROCESSES`), so a cluster can stop
everything it started, also after a failure, with :meth:`ProcessGroup.stop_all`, and
:func:`install_cleanup_hooks` kills what is left at interpreter exit and on SIGTERM/SIGHUP.

Debian's prometheus and docker-registry packages may have started their own servers through
systemd on the default ports (9090, 5000). These are never used nor touched: our servers get
their own ports (0 picks a free one) and their own data directories.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import ctypes
import inspect
import json
import logging
import os
import shutil
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from jupyterhub.utils import exponential_backoff
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger(__name__)

INSTALL_HINT = "run scripts/install.sh as root, which installs it"
PR_SET_PDEATHSIG = 1

ReadyCheck = str | Callable[[], Awaitable[bool] | bool]


class ServiceError(RuntimeError):
    """A managed server could not be started or did not become ready."""


class ServiceExitedError(ServiceError):
    """The server exited while we waited for it to become ready."""


class ServiceTimeoutError(ServiceError, TimeoutError):
    """The server did not become ready in time."""


class MissingBinaryError(ServiceError, FileNotFoundError):
    """A server's program is not installed."""


# --- binaries and ports -----------------------------------------------------------------------


def install_prefix() -> Path:
    """Where scripts/install.sh puts the system-wide parts (JHUB_SUSPEND_PREFIX)."""
    return Path(os.environ.get("JHUB_SUSPEND_PREFIX", "/opt/jhub-suspend"))


def binary_env_var(name: str) -> str:
    """The environment variable that overrides a program's path: JHUB_SUSPEND_<NAME>, as for
    JHUB_SUSPEND_CRIU."""
    return "JHUB_SUSPEND_" + "".join(c if c.isalnum() else "_" for c in name).upper()


def binary_candidates(name: str, configured: str | os.PathLike[str] | None = None) -> list[str]:
    """Where to look for a program, in order (pure but for the environment variable)."""
    if configured:
        return [os.fspath(configured)]
    candidates = []
    if from_env := os.environ.get(binary_env_var(name)):
        candidates.append(from_env)
    candidates.append(str(install_prefix() / "bin" / name))
    candidates.append(name)  # looked up on PATH
    return candidates


def find_binary(name: str, configured: str | os.PathLike[str] | None = None) -> str:
    """The absolute path of a program: ``configured`` when given (and nothing else), else
    ``$JHUB_SUSPEND_<NAME>``, ``<prefix>/bin/<name>`` or ``name`` on PATH.

    Raises MissingBinaryError naming scripts/install.sh when none is executable.
    """
    tried = binary_candidates(name, configured)
    for candidate in tried:
        if os.sep in candidate:
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return os.path.abspath(candidate)
        elif found := shutil.which(candidate):
            return found
    raise MissingBinaryError(
        f"{name} is not installed (looked for {', '.join(tried)}); {INSTALL_HINT}"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on host right now. Another process may take it before the server
    binds it; the start_* functions retry on a port clash."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_clash(log_text: str) -> bool:
    """Whether a server's log says that its port was taken."""
    return "address already in use" in log_text.lower()


# --- process groups ---------------------------------------------------------------------------


# Loaded in the parent, so that the forked child does not dlopen (unsafe after fork).
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when the thread that forked it exits. (Note: the
    parent *thread*; start servers from the event loop's thread, which lives as long as the
    cluster.)"""

    def preexec() -> None:
        if _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(127)
        # The parent may have died before prctl took effect.
        if os.getppid() != parent_pid:
            os._exit(127)

    return preexec


def _killpg(pgid: int, sig: int) -> bool:
    """Send sig to a process group; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("not allowed to signal process group %d", pgid)
        return False
    return True


class ProcessGroup:
    """The processes a cluster started, so that it can stop all of them."""

    def __init__(self) -> None:
        self._procs: dict[int, ManagedProcess] = {}

    def add(self, proc: ManagedProcess) -> None:
        self._procs[id(proc)] = proc

    def discard(self, proc: ManagedProcess) -> None:
        self._procs.pop(id(proc), None)

    def __iter__(self) -> Iterator[ManagedProcess]:
        return iter(list(self._procs.values()))

    def __len__(self) -> int:
        return len(self._procs)

    async def stop_all(self, grace: float = 5.0) -> None:
        """Stop every process still in the group, concurrently; never raises for one that
        fails to stop (it is logged and killed)."""
        procs = list(reversed(self._procs.values()))
        results = await asyncio.gather(*(p.stop(grace) for p in procs), return_exceptions=True)
        for proc, result in zip(procs, results, strict=True):
            if isinstance(result, BaseException):
                log.error("stopping %s failed: %s", proc.name, result)
                proc.kill_now()

    def kill_all_now(self) -> None:
        """SIGKILL every registered process group at once, synchronously (for atexit and signal
        handlers, where no event loop may run)."""
        for proc in list(self._procs.values()):
            proc.kill_now()


PROCESSES = ProcessGroup()

_hooked: set[ProcessGroup] = set()


def install_cleanup_hooks(
    group: ProcessGroup = PROCESSES,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGHUP),
) -> None:
    """SIGKILL the group's processes at interpreter exit and on these signals, then let the
    signal do what its previous handler did (call it, ignore it, or the default: terminate).

    Call it from the main thread (Python's rule for signal handlers); a second call for the same
    group does nothing. PR_SET_PDEATHSIG already covers a parent killed with SIGKILL.
    """
    if group in _hooked:
        return
    _hooked.add(group)
    atexit.register(group.kill_all_now)
    for sig in signals:
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            log.warning("signal %d: killing %d started processes", signum, len(group))
            group.kill_all_now()
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(sig, handler)


# --- a managed process ------------------------------------------------------------------------


def log_tail(path: Path, lines: int = 30, max_bytes: int = 64 * 1024) -> str:
    """The last lines of a log file ("" when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class ManagedProcess:
    """A server process that the local cluster started: own process group, output to a log
    file, killed when its parent dies, stopped with SIGTERM then SIGKILL to the whole group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        url: str | None = None,
        ready_url: str | None = None,
        group: ProcessGroup | None = PROCESSES,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.url = url
        self.ready_url = ready_url or url
        self.group = group
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping: asyncio.Task[int | None] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} url={self.url}>"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def pgid(self) -> int | None:
        """The process group: the child called setsid, so it equals the pid."""
        return self.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def respawn(self) -> ManagedProcess:
        """A new, unstarted process like this one (same command, log, URLs, group): for
        starting a server again after it stopped or was killed."""
        twin = copy.copy(self)
        twin._proc = None
        twin._stopping = None
        return twin

    async def wait_exit(self) -> int:
        """Wait until the process exits; return its exit status."""
        if self._proc is None:
            raise ServiceError(f"{self.name} was never started")
        return await self._proc.wait()

    async def start(self) -> ManagedProcess:
        if self._proc is not None:
            raise ServiceError(f"{self.name} was already started (pid {self.pid})")
        log.info("starting %s: %s (log %s)", self.name, " ".join(self.argv), self.log_path)
        out = _open_log(self.log_path)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        except OSError as e:
            raise ServiceError(f"cannot start {self.name} ({self.argv[0]}): {e}") from e
        finally:
            os.close(out)
        if self.group is not None:
            self.group.add(self)
        log.debug("%s started, pid %d", self.name, self._proc.pid)
        return self

    def _failure(self, what: str) -> str:
        tail = self.log_tail()
        if not tail:
            return f"{self.name} {what}; its log {self.log_path} is empty"
        return f"{self.name} {what}; log {self.log_path}:\n{tail}"

    async def wait_ready(
        self,
        check: ReadyCheck | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Wait until check passes: a URL that answers 200 (default: self.ready_url) or a
        predicate (sync or async). Polls with jittered exponential backoff. Raises
        ServiceExitedError if the process exits first and ServiceTimeoutError after timeout;
        both messages carry the tail of the log."""
        check = check if check is not None else self.ready_url
        if check is None:
            raise ValueError(f"{self.name}: no URL or predicate to wait for")
        predicate = _url_answers(check) if isinstance(check, str) else check
        target = check if isinstance(check, str) else getattr(check, "__name__", "predicate")

        async def ready() -> bool:
            if self._proc is None:
                raise ServiceError(f"{self.name} was never started")
            if self._proc.returncode is not None:
                raise ServiceExitedError(
                    self._failure(f"exited with status {self._proc.returncode} before it was ready")
                )
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            return bool(result)

        try:
            await exponential_backoff(
                ready,
                f"{self.name} not ready",
                start_wait=0.05,
                max_wait=1.0,
                timeout=timeout,
            )
        except TimeoutError:
            raise ServiceTimeoutError(
                self._failure(f"was not ready at {target} after {timeout:g}s")
            ) from None
        log.info("%s ready (pid %d, %s)", self.name, self.pid, target)

    async def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM to the process group, SIGKILL after grace seconds, then SIGKILL to whatever is
        left in the group. Idempotent; concurrent calls share one stop. Returns the exit status."""
        if self._proc is None:
            return None
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))
        return await asyncio.shield(self._stopping)

    async def _stop(self, grace: float) -> int | None:
        proc = self._proc
        assert proc is not None
        pgid = proc.pid
        try:
            if proc.returncode is None:
                log.info("stopping %s (pid %d)", self.name, pgid)
                _killpg(pgid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), grace)
                except TimeoutError:
                    log.warning("%s ignored SIGTERM for %gs; killing it", self.name, grace)
                    _killpg(pgid, signal.SIGKILL)
                    await proc.wait()
            # Anything the leader left behind in its group.
            _killpg(pgid, signal.SIGKILL)
        finally:
            if self.group is not None:
                self.group.discard(self)
        log.debug("%s stopped with status %s", self.name, proc.returncode)
        return proc.returncode

    def kill_now(self) -> None:
        """SIGKILL the process group synchronously, for atexit and signal handlers."""
        if self._proc is None or (self._stopping is not None and self._stopping.done()):
            return
        _killpg(self._proc.pid, signal.SIGKILL)


def _open_log(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)


def _url_answers(url: str) -> Callable[[], Awaitable[bool]]:
    async def answers() -> bool:
        try:
            resp = await AsyncHTTPClient().fetch(
                HTTPRequest(url, request_timeout=5, connect_timeout=2), raise_error=False
            )
        except (OSError, HTTPClientError) as e:
            log.debug("%s: %s", url, e)
            return False
        return resp.code == 200

    answers.__name__ = url
    return answers


async def start_and_wait(
    make: Callable[[int], ManagedProcess],
    port: int,
    *,
    timeout: float,
    attempts: int = 3,
) -> ManagedProcess:
    """Start make(port) and wait until it is ready. When port is 0 a free port is picked and, if
    another process takes it first, the start is retried on a new one."""
    for attempt in range(1, attempts + 1):
        chosen = port or free_port()
        proc = await make(chosen).start()
        try:
            await proc.wait_ready(timeout=timeout)
        except ServiceExitedError:
            await proc.stop()
            if port == 0 and attempt < attempts and port_clash(proc.log_tail()):
                log.warning("%s: port %d was taken; trying another", proc.name, chosen)
                continue
            raise
        except BaseException:
            await proc.stop()
            raise
        return proc
    raise AssertionError("unreachable")  # pragma: no cover


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _child_env(drop_prefixes: Iterable[str] = ()) -> dict[str, str]:
    prefixes = tuple(drop_prefixes)
    return {k: v for k, v in os.environ.items() if not (prefixes and k.startswith(prefixes))}


# --- Prometheus -------------------------------------------------------------------------------


def prometheus_config(
    scrape_targets: Sequence[Mapping[str, Any]],
    scrape_interval: str = "2s",
    evaluation_interval: str | None = None,
) -> str:
    """Prometheus configuration (JSON, which Prometheus reads as YAML) for static targets.

    Each target is a dict with ``job`` and ``targets`` ("host:port" strings), and optionally
    ``metrics_path`` (default /metrics), ``scrape_interval`` (the job's scrape timeout is set
    to it), ``scrape_timeout``, ``scheme``, ``honor_labels``, ``labels`` (added to every
    series) and ``bearer_token`` (sent as ``Authorization: Bearer``, as Prometheus scrapes
    kubelets with its service account's token). Raises ValueError for a malformed target or a job given twice.
    """
    jobs = []
    seen: set[str] = set()
    for t in scrape_targets:
        job = t.get("job")
        targets = t.get("targets")
        if not job or not isinstance(job, str):
            raise ValueError(f"scrape target without a job name: {t!r}")
        if job in seen:
            raise ValueError(f"job {job!r} given twice")
        seen.add(job)
        if isinstance(targets, str) or not isinstance(targets, Sequence):
            raise ValueError(f"job {job!r}: targets must be a list of host:port, got {targets!r}")
        unknown = set(t) - {
            "job",
            "targets",
            "metrics_path",
            "scrape_interval",
            "scrape_timeout",
            "scheme",
            "honor_labels",
            "labels",
            "bearer_token",
        }
        if unknown:
            raise ValueError(f"job {job!r}: unknown keys {sorted(unknown)}")
        static: dict[str, Any] = {"targets": [str(x) for x in targets]}
        if t.get("labels"):
            static["labels"] = {str(k): str(v) for k, v in t["labels"].items()}
        cfg: dict[str, Any] = {
            "job_name": job,
            "metrics_path": t.get("metrics_path") or "/metrics",
            "static_configs": [static],
        }
        if t.get("scrape_interval"):
            cfg["scrape_interval"] = t["scrape_interval"]
            cfg["scrape_timeout"] = t.get("scrape_timeout") or t["scrape_interval"]
        elif t.get("scrape_timeout"):
            cfg["scrape_timeout"] = t["scrape_timeout"]
        for key in ("scheme", "honor_labels"):
            if key in t:
                cfg[key] = t[key]
        if t.get("bearer_token"):
            cfg["authorization"] = {"type": "Bearer", "credentials": t["bearer_token"]}
        jobs.append(cfg)
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            # The default timeout (10s) must not exceed the interval.
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval or scrape_interval,
        },
        "scrape_configs": jobs,
    }
    return json.dumps(config, indent=2) + "\n"


def prometheus_argv(
    binary: str, config_file: Path, data_dir: Path, port: int, retention: str
) -> list[str]:
    return [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data_dir}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=info",
    ]


async def reload_prometheus(url: str) -> None:
    """Make Prometheus re-read its configuration (needs --web.enable-lifecycle). Raises
    ServiceError with Prometheus's message when the new configuration is rejected."""
    resp = await AsyncHTTPClient().fetch(
        HTTPRequest(url.rstrip("/") + "/-/reload", method="POST", body=b"", request_timeout=30),
        raise_error=False,
    )
    if resp.code != 200:
        body = resp.body.decode(errors="replace").strip() if resp.body else str(resp.error)
        raise ServiceError(f"Prometheus at {url} refused to reload ({resp.code}): {body}")


class PrometheusProcess(ManagedProcess):
    """A Prometheus server we started; ``url`` is http://127.0.0.1:PORT."""

    url: str

    def __init__(
        self,
        *args: Any,
        config_path: Path,
        scrape_interval: str,
        evaluation_interval: str | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.config_path = config_path
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval

    async def set_targets(self, targets: Sequence[Mapping[str, Any]]) -> None:
        """Replace the scrape targets: rewrite the configuration and reload it. When Prometheus
        refuses the new configuration the previous one is put back and ServiceError raised."""
        text = prometheus_config(targets, self.scrape_interval, self.evaluation_interval)
        previous = self.config_path.read_text()
        _write_atomically(self.config_path, text)
        try:
            await reload_prometheus(self.url)
        except ServiceError:
            _write_atomically(self.config_path, previous)
            raise


async def start_prometheus(
    state_dir: str | os.PathLike[str],
    port: int = 0,
    targets: Sequence[Mapping[str, Any]] = (),
    *,
    scrape_interval: str = "2s",
    evaluation_interval: str | None = None,
    retention: str = "1d",
    binary: str | None = None,
    group: ProcessGroup | None = PROCESSES,
    timeout: float = 60.0,
) -> PrometheusProcess:
    """Start Prometheus on 127.0.0.1:port (0: a free port) with its configuration
    (prometheus.yml), data (data/) and log (prometheus.log) in state_dir, its own directory, and
    wait until /-/ready answers. Registered in group for stop_all()."""
    exe = find_binary("prometheus", binary)
    base = Path(state_dir)
    data_dir = base / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = base / "prometheus.yml"
    _write_atomically(config_path, prometheus_config(targets, scrape_interval, evaluation_interval))

    def make(p: int) -> ManagedProcess:
        return PrometheusProcess(
            "prometheus",
            prometheus_argv(exe, config_path, data_dir, p, retention),
            log_path=base / "prometheus.log",
            cwd=base,
            url=f"http://127.0.0.1:{p}",
            ready_url=f"http://127.0.0.1:{p}/-/ready",
            group=group,
            config_path=config_path,
            scrape_interval=scrape_interval,
            evaluation_interval=evaluation_interval,
        )

    proc = await start_and_wait(make, port, timeout=timeout)
    assert isinstance(proc, PrometheusProcess)
    return proc


# --- the OCI registry -------------------------------------------------------------------------


def registry_config(storage_dir: str | os.PathLike[str], port: int, log_level: str = "info") -> str:
    """docker-registry (distribution 2.x) configuration: filesystem storage, deletes enabled, on
    127.0.0.1:port, no authentication, no TLS. JSON, which the registry reads as YAML."""
    config = {
        "version": "0.1",
        "log": {"level": log_level, "formatter": "text", "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": os.fspath(storage_dir)},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {
            "addr": f"127.0.0.1:{port}",
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
    }
    return json.dumps(config, indent=2) + "\n"


class RegistryProcess(ManagedProcess):
    """A registry we started; ``host`` is "127.0.0.1:PORT" (for image references and
    --tls-verify=false), ``url`` is http://127.0.0.1:PORT."""

    url: str

    def __init__(self, *args: Any, host: str, storage_dir: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.host = host
        self.storage_dir = storage_dir


async def start_registry(
    state_dir: str | os.PathLike[str],
    port: int = 0,
    *,
    log_level: str = "info",
    binary: str | None = None,
    group: ProcessGroup | None = PROCESSES,
    timeout: float = 30.0,
) -> RegistryProcess:
    """Start docker-registry on 127.0.0.1:port (0: a free port) with its configuration
    (config.yml), storage (storage/) and log (registry.log) in state_dir, its own directory, and
    wait until /v2/ answers. Registered in group for stop_all()."""
    exe = find_binary("docker-registry", binary)
    base = Path(state_dir)
    storage = base / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config_path = base / "config.yml"
    # REGISTRY_* variables would override the configuration file.
    env = _child_env(drop_prefixes=("REGISTRY_",))

    def make(p: int) -> ManagedProcess:
        _write_atomically(config_path, registry_config(storage, p, log_level))
        return RegistryProcess(
            "docker-registry",
            [exe, "serve", str(config_path)],
            log_path=base / "registry.log",
            env=env,
            cwd=base,
            url=f"http://127.0.0.1:{p}",
            ready_url=f"http://127.0.0.1:{p}/v2/",
            group=group,
            host=f"127.0.0.1:{p}",
            storage_dir=storage,
        )

    proc = await start_and_wait(make, port, timeout=timeout)
    assert isinstance(proc, RegistryProcess)
    return proc


__all__ = [
    "PROCESSES",
    "ManagedProcess",
    "MissingBinaryError",
    "ProcessGroup",
    "PrometheusProcess",
    "RegistryProcess",
    "ServiceError",
    "ServiceExitedError",
    "ServiceTimeoutError",
    "find_binary",
    "free_port",
    "install_cleanup_hooks",
    "prometheus_config",
    "registry_config",
    "reload_prometheus",
    "start_prometheus",
    "start_registry",
]
