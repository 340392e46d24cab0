"""CRIU command lines (pure) and an async runner that reports CRIU's own reason on failure.

The argument builders are plain functions so the exact command line can be tested without CRIU.
``run_criu`` runs one CRIU command with a timeout; when CRIU fails it raises :class:`CriuError`
whose message carries the last ``Error (...)`` lines of CRIU's log file.

``run_command`` is the small subprocess helper the other local-cluster modules share: every
external command runs as an asyncio subprocess with a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence

from ..commands import CommandResult

log = logging.getLogger(__name__)

DEFAULT_CRIU = "/opt/jhub-suspend/bin/criu"
#: the name CRI-O and Podman give CRIU's dump log inside the checkpoint directory
DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
#: CRIU's statistics files (written into the images directory)
STATS_DUMP = "stats-dump"
STATS_RESTORE = "stats-restore"
#: CRIU log verbosity: 4 is what runc and crun ask for, so the log explains failures
LOG_LEVEL = 4


class CriuError(RuntimeError):
    """CRIU failed; ``str(err)`` includes CRIU's own reason from its log."""

    def __init__(
        self, message: str, *, returncode: int | None = None, log_path: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.returncode = returncode
        self.log_path = log_path


def external_netns_option(netns_inode: int, key: str) -> str:
    """``--external`` value that keeps a network namespace out of the dump under ``key``."""
    return f"net[{netns_inode}]:{key}"


def inherit_fd_option(fd: int, resource: str) -> str:
    """``--inherit-fd`` value: use our ``fd`` for the dumped ``resource`` (a key or pipe:[ino])."""
    return f"fd[{fd}]:{resource}"


def pipe_resource(inode: int) -> str:
    """How CRIU names a pipe for ``--inherit-fd`` (as in /proc/PID/fd links)."""
    return f"pipe:[{inode}]"


def dump_args(
    criu_path: str,
    *,
    pid: int,
    images_dir: str,
    log_file: str = DUMP_LOG,
    work_dir: str | None = None,
    leave_running: bool = True,
    tcp_established: bool = True,
    tcp_close: bool = False,
    external_netns: tuple[int, str] | None = None,
    file_locks: bool = True,
    ghost_limit: int | None = None,
    extra: Iterable[str] = (),
) -> list[str]:
    """The command line for ``criu dump`` of the process tree rooted at ``pid``.

    ``external_netns`` is ``(inode of /proc/PID/ns/net, key)``: the namespace is not dumped and
    the restore plugs a different one in with ``--inherit-fd fd[N]:key``.
    """
    if pid <= 0:
        raise ValueError(f"invalid pid {pid}")
    argv = [criu_path, "dump", "--tree", str(pid)]
    argv += _common_options(images_dir, log_file, work_dir, tcp_established, tcp_close, file_locks)
    if leave_running:
        argv.append("--leave-running")
    if ghost_limit is not None:
        argv += ["--ghost-limit", str(ghost_limit)]
    if external_netns is not None:
        argv += ["--external", external_netns_option(*external_netns)]
    argv += list(extra)
    return argv


def _common_options(
    images_dir: str,
    log_file: str,
    work_dir: str | None,
    tcp_established: bool,
    tcp_close: bool,
    file_locks: bool,
) -> list[str]:
    """The options a dump and its restore must agree on."""
    if tcp_established and tcp_close:
        raise ValueError("tcp_established and tcp_close are mutually exclusive")
    argv = ["--images-dir", images_dir, "--log-file", log_file, f"-v{LOG_LEVEL}"]
    if work_dir is not None:
        argv += ["--work-dir", work_dir]
    if tcp_established:
        argv.append("--tcp-established")
    if tcp_close:
        argv.append("--tcp-close")
    if file_locks:
        argv.append("--file-locks")
    return argv


def restore_args(
    criu_path: str,
    *,
    images_dir: str,
    pidfile: str,
    log_file: str = RESTORE_LOG,
    work_dir: str | None = None,
    tcp_established: bool = True,
    tcp_close: bool = False,
    inherit_fds: Mapping[int, str] | Iterable[tuple[int, str]] = (),
    file_locks: bool = True,
    detached: bool = True,
    extra: Iterable[str] = (),
) -> list[str]:
    """The command line for ``criu restore`` from ``images_dir``.

    ``inherit_fds`` maps our fd numbers to the resource each replaces: the external network
    namespace's key, or ``pipe:[old inode]`` for the container's stdout/stderr pipe.
    """
    argv = [criu_path, "restore", "--pidfile", pidfile]
    argv += _common_options(images_dir, log_file, work_dir, tcp_established, tcp_close, file_locks)
    if detached:
        argv.append("--restore-detached")
    pairs = inherit_fds.items() if isinstance(inherit_fds, Mapping) else inherit_fds
    for fd, resource in sorted(pairs):
        argv += ["--inherit-fd", inherit_fd_option(fd, resource)]
    argv += list(extra)
    return argv


# --- log parsing (pure) -------------------------------------------------------------------

_ERROR_RE = re.compile(r"\bError\s*\(")
#: errors CRIU logs on every run on these machines without failing (dropped from reasons
#: when there are others): it cannot raise its own RLIMIT_NOFILE in this sandbox
NOISE = ("Can't setup RLIMIT_NOFILE for self",)


def criu_error_lines(log_text: str, limit: int = 5) -> list[str]:
    """The last ``limit`` lines of a CRIU log that report an error (``Error (file:line): ...``).

    The timestamp prefix (``(00.012345)``) is dropped.
    """
    lines = [
        re.sub(r"^\(\s*[\d.]+\)\s*", "", line).strip()
        for line in log_text.splitlines()
        if _ERROR_RE.search(line)
    ]
    meaningful = [line for line in lines if not any(n in line for n in NOISE)]
    return (meaningful or lines)[-limit:]


def criu_failure_message(
    action: str, returncode: int | None, log_text: str, stderr: str = ""
) -> str:
    """A one-paragraph message for a failed CRIU ``action`` with CRIU's own reason."""
    how = "timed out" if returncode is None else f"failed (exit {returncode})"
    reasons = criu_error_lines(log_text)
    if not reasons:
        tail = [line.strip() for line in (stderr or log_text).splitlines() if line.strip()]
        reasons = tail[-3:]
    reason = "; ".join(reasons) if reasons else "no reason in CRIU's log"
    return f"criu {action} {how}: {reason}"


# --- runner -------------------------------------------------------------------------------


async def run_criu(
    argv: Sequence[str],
    *,
    log_path: str,
    timeout: float,
    pass_fds: Sequence[int] = (),
) -> CommandResult:
    """Run CRIU; raise :class:`CriuError` with CRIU's reason on failure or timeout.

    ``log_path`` is where the command's ``--log-file`` ends up (relative log files go into the
    work directory, which defaults to the images directory).
    """
    action = argv[1] if len(argv) > 1 else "?"
    log.info("criu %s: %s", action, " ".join(argv[2:]))
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        pass_fds=tuple(pass_fds),
    )
    returncode: int | None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        returncode = proc.returncode
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        returncode = None
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
        raise
    stderr = err.decode(errors="replace")
    if returncode == 0:
        return CommandResult(list(argv), 0, out.decode(errors="replace"), stderr)
    log_text = read_log(log_path)
    message = criu_failure_message(action, returncode, log_text, stderr)
    log.warning("%s (log: %s)", message, log_path)
    raise CriuError(message, returncode=returncode, log_path=log_path)


def read_log(path: str) -> str:
    """A CRIU log's text ('' if it cannot be read)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def images_log_path(images_dir: str, log_file: str, work_dir: str | None = None) -> str:
    """Where CRIU writes ``log_file``: absolute as given, else in the work (or images) dir."""
    if os.path.isabs(log_file):
        return log_file
    return os.path.join(work_dir or images_dir, log_file)
