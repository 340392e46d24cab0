"""Running external commands (skopeo, ip, ...) with a timeout and a clear error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import OwnError

log = logging.getLogger(__name__)


class CommandError(OwnError, RuntimeError):
    """An external command failed or timed out."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        what = "timed out" if returncode is None else f"exited with {returncode}"
        detail = (stderr.strip() or stdout.strip())[-2000:]
        message = f"{' '.join(self.argv)} {what}" + (f": {detail}" if detail else "")
        super().__init__(message)


@dataclass
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


async def run_command(
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    cwd: str | None = None,
) -> CommandResult:
    """Run ``argv`` (no shell) with a timeout; on timeout the process is killed.

    Raises :class:`CommandError` on timeout, and on a non-zero exit when ``check`` is true.
    """
    log.debug("running %s", " ".join(argv))
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
        pass_fds=tuple(pass_fds),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandError(argv, None, "", f"after {timeout:.0f} s") from None
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
        raise
    result = CommandResult(
        list(argv),
        proc.returncode if proc.returncode is not None else -1,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )
    if check and result.returncode != 0:
        raise CommandError(argv, result.returncode, result.stdout, result.stderr)
    return result


# --- argument builders (pure) -------------------------------------------------------------
