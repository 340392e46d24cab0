"""The node's CRIU configuration, as a notebook's checkpoint needs it (pure).

The CRI checkpoint call passes CRIU no TCP option, so the file the OCI runtime hands CRIU
(runc: ``/etc/criu/runc.conf``; crun: ``/etc/criu/crun.conf``, then runc's) must say what to do
with a notebook's TCP connections: ``tcp-close`` (see docs/deploy.md, "CRIU").
"""

from __future__ import annotations

from collections.abc import Mapping

#: what CRIU says when a container holds a TCP connection and was not told what to do with it
TCP_OPTION_MISSING = "consider using --tcp-established"
#: the node's CRIU option that a notebook's checkpoint and its restore on a new address need
TCP_CLOSE = "tcp-close"
TCP_CLOSE_ADVICE = (
    "add a line 'tcp-close' to /etc/criu/runc.conf (runc) or /etc/criu/crun.conf (crun) on "
    "every node; see docs/deploy.md"
)


def node_setting_hint(message: str) -> str:
    """What a node admin must change, when a checkpoint failed for lack of a node setting."""
    if TCP_OPTION_MISSING in message:
        return (
            "The node's CRIU configuration lacks tcp-close, without which no notebook can be "
            f"checkpointed (its kernels and the proxy hold TCP connections): {TCP_CLOSE_ADVICE}"
        )
    return ""


def criu_config_options(text: str) -> list[str]:
    """The options a CRIU configuration file sets: one per line, ``#`` comments, optional
    leading dashes (pure)."""
    options = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            options.append(line.split()[0].lstrip("-"))
    return options


def criu_config_problem(files: Mapping[str, list[str] | None]) -> str:
    """Why the node's CRIU configuration cannot checkpoint a notebook, or "" (pure).

    ``files`` maps each configuration file the runtime may read (runc reads runc.conf; crun
    reads crun.conf, then runc.conf) to its options, or None when it could not be read.
    """
    readable = {path: options for path, options in files.items() if options is not None}
    if not readable:
        return (
            f"cannot read the node's CRIU configuration ({', '.join(files) or 'no file set'}); "
            "mount the host's /etc/criu into the agent"
        )
    if any(TCP_CLOSE in options for options in readable.values()):
        return ""
    return f"no tcp-close in {', '.join(readable)}: {TCP_CLOSE_ADVICE}"
