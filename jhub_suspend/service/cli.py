"""``jhub-suspend``: the command-line client of the suspend service's REST API.

    jhub-suspend list [--user NAME] [--state STATE] [--json]
    jhub-suspend suspend USER[/SERVER] [--wait]
    jhub-suspend resume USER[/SERVER] [--wait]
    jhub-suspend discard USER[/SERVER]
    jhub-suspend keep-running USER[/SERVER] (--hours N | --forever | --off)
    jhub-suspend plan [--fresh] [--json]
    jhub-suspend drain NODE [--dry-run] [--json]

The service URL comes from ``--url`` or ``JHUB_SUSPEND_URL`` (default: ``JUPYTERHUB_URL`` +
``/services/suspend/``), the token from ``--token`` or ``JUPYTERHUB_API_TOKEN``.

Exit codes: 0 success; 1 the service refused (its message is printed); 2 bad usage;
3 the service could not be reached; 4 a waited-for operation failed (or is still running
after ``--wait-timeout``); 5 a drain left notebook servers running on the node.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TextIO
from urllib.parse import quote, urlencode

from ..errors import NO_ANSWER, JhubSuspendError

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_FAILED, EXIT_LEFT = 1, 2, 3, 4, 5


class CliError(JhubSuspendError):
    """``code`` is the exit code; ``status`` the service's HTTP status when it answered."""

    def __init__(self, code: int, message: str, status: int = JhubSuspendError.status) -> None:
        super().__init__(status, message)
        self.code = code


class Client:
    def __init__(self, url: str, token: str, timeout: float = 60) -> None:
        self.url = url.rstrip("/") + "/"
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"token {self.token}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw).get("message") or raw.decode()
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace").strip() or e.reason
            if e.code == 503 and path.startswith("api/plan"):
                return e.code, json.loads(raw)
            raise CliError(EXIT_REFUSED, f"{e.code}: {message}", e.code) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CliError(
                EXIT_UNREACHABLE, f"cannot reach {self.url}: {reason}", NO_ANSWER
            ) from None


def server_path(spec: str) -> str:
    user, _, name = spec.partition("/")
    if not user or "/" in name:
        raise CliError(EXIT_USAGE, f"{spec!r} is not USER or USER/SERVER")
    return f"api/servers/{quote(user, safe='')}" + (f"/{quote(name, safe='')}" if name else "")


def _wait(
    client: Client,
    op: dict[str, Any],
    timeout: float,
    max_delay: float = 5,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Poll the operation until it has finished; ``progress(op)`` after each reading."""
    path = op["url"].split("/api/", 1)[1]
    deadline = time.monotonic() + timeout
    delay = 0.5
    if progress:
        progress(op)
    while op.get("status") == "running":
        if time.monotonic() > deadline:
            raise CliError(EXIT_FAILED, f"operation {op['id']} still running after {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 1.5, max_delay)
        _, op = client.request("GET", f"api/{path}")
        if progress:
            progress(op)
    return op


def server_label(s: dict[str, Any]) -> str:
    """USER, or USER/SERVER for a named server, of a listing's or a drain's server entry."""
    return f"{s['user']}/{s['server_name']}" if s["server_name"] else s["user"]


DRAIN_LABELS = {
    "suspended": "suspended",
    "failed": "FAILED",
    "left_running": "left running",
    "not_running": "not running",
    "would_suspend": "would suspend",
}


def _drain_line(s: dict[str, Any]) -> str:
    """One server's outcome; ``s`` is an entry of a drain's ``result.servers``."""
    text = f"{DRAIN_LABELS[s['outcome']]:13}  {server_label(s)}"
    ck = s.get("checkpoint")
    if s["outcome"] == "suspended" and ck:
        seconds = f" in {ck['seconds']:.1f} s" if ck.get("seconds") is not None else ""
        return f"{text}: checkpoint {(ck.get('size') or 0) / 2**20:.0f} MiB{seconds}"
    if s["outcome"] == "failed":
        return f"{text}: {s['message']} (not suspended)"
    return f"{text}: {s['message'] or s['reason']}" if s["outcome"] != "would_suspend" else text


def drain(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    path = f"api/nodes/{quote(args.node, safe='')}/drain"
    _, data = client.request("POST", path + ("?dry_run=true" if args.dry_run else ""))
    op = data["operation"]
    shown: set[tuple[str, str]] = set()

    def progress(op: dict[str, Any]) -> None:
        if args.json:
            return
        for s in op["result"]["servers"]:
            key = (s["user"], s["server_name"])
            if key not in shown and s["outcome"] in DRAIN_LABELS:
                shown.add(key)
                print(_drain_line(s), file=out, flush=True)

    if not args.json:
        servers = op["result"]["servers"]
        acting = sum(1 for s in servers if s["outcome"] in ("pending", "suspending"))
        print(
            f"drain of {args.node}{' (dry run)' if args.dry_run else ''}: "
            f"{len(servers)} notebook server(s) on it"
            + (f", suspending {acting} (operation {op['id']})" if acting else ""),
            file=out,
            flush=True,
        )
    op = _wait(client, op, args.wait_timeout, max_delay=2, progress=progress)
    if args.json:
        json.dump(op, out, indent=2)
        out.write("\n")
    else:
        print(f"{args.node}: {op['message']}", file=out)
        if not op["result"].get("node_checked", True):
            print(
                "note: the service may not read nodes, so a node that does not exist looks empty",
                file=sys.stderr,
            )
    left = [s for s in op["result"]["servers"] if s["outcome"] in ("failed", "left_running")]
    return EXIT_LEFT if left and not args.dry_run else 0


def _table(servers: list[dict[str, Any]]) -> str:
    rows = [("USER", "SERVER", "STATE", "CPU%REQ", "GPU%", "IDLE", "CHECKPOINT", "NEXT")]
    for s in servers:
        util = s.get("utilisation") or {}
        cpu = (util.get("cpu_percent_of_request") or {}).get("max")
        gpu = (util.get("gpu_percent") or {}).get("max")
        idle = s.get("idle_seconds")
        ck = s.get("checkpoint") or {}
        decision = s.get("decision") or {}
        rows.append(
            (
                s["user"],
                s["server_name"] or "-",
                s["state"],
                "-" if cpu is None else f"{cpu:.1f}",
                "-" if gpu is None else f"{gpu:.0f}",
                "-" if idle is None else f"{idle / 60:.0f}m",
                f"{ck.get('size', 0) / 2**20:.0f}MiB {ck.get('created', '')}" if ck else "-",
                decision.get("action", "-")
                + (f" at {decision['suspend_at']}" if decision.get("suspend_at") else ""),
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows
    )


def run(args: argparse.Namespace) -> int:
    if not args.url:
        raise CliError(EXIT_USAGE, "no service URL: pass --url or set JHUB_SUSPEND_URL")
    if not args.token:
        raise CliError(EXIT_USAGE, "no token: pass --token or set JUPYTERHUB_API_TOKEN")
    client = Client(args.url, args.token, timeout=args.timeout)
    out = sys.stdout
    if args.command == "list":
        query = {k: v for k, v in (("user", args.user), ("state", args.state)) if v}
        _, data = client.request("GET", "api/servers" + (f"?{urlencode(query)}" if query else ""))
        if args.json:
            json.dump(data, out, indent=2)
            out.write("\n")
        else:
            health = data["metrics"]
            if health["ok"] is None:  # before the policy's first cycle: no decisions yet
                print(f"note: {health['reason']}", file=sys.stderr)
            elif not health["ok"]:
                print(f"warning: metrics unusable: {health['reason']}", file=sys.stderr)
            print(_table(data["servers"]), file=out)
        return 0
    if args.command == "plan":
        status, data = client.request("GET", "api/plan" + ("?fresh=1" if args.fresh else ""))
        plan = data.get("plan", data) if status == 503 else data
        if status == 503:
            print(f"warning: {data.get('message')}", file=sys.stderr)
        if args.json:
            json.dump(plan, out, indent=2)
            out.write("\n")
        else:
            print(f"counts: {plan['counts']}  pending pods: {plan['pending']}", file=out)
            for d in plan["decisions"]:
                name = f"{d['user']}/{d['server_name']}" if d["server_name"] else d["user"]
                print(f"{d['action']:8} {name}: {'; '.join(d['reasons'])}", file=out)
        return 0
    if args.command == "drain":
        return drain(client, args, out)
    path = server_path(args.server)
    if args.command in ("suspend", "resume"):
        _, data = client.request("POST", f"{path}/{args.command}")
        op = data["operation"]
        print(f"{args.command} of {args.server}: operation {op['id']} {op['status']}", file=out)
        if args.wait:
            op = _wait(client, op, args.wait_timeout)
            print(f"{op['status']}: {op['message']}", file=out)
            return 0 if op["status"] == "succeeded" else EXIT_FAILED
        return 0
    if args.command == "discard":
        _, data = client.request("DELETE", f"{path}/checkpoint")
        print(data["message"], file=out)
        return 0
    if args.command == "keep-running":
        body: dict[str, Any] = {"enabled": not args.off}
        if args.hours is not None:
            body["hours"] = args.hours
        _, data = client.request("PUT", f"{path}/keep-running", body)
        kr = data.get("keep_running")
        print(
            "keep-running cleared"
            if kr is None
            else f"keep-running until {kr['effective_until'] or 'no end'}",
            file=out,
        )
        return 0
    raise CliError(EXIT_USAGE, f"unknown command {args.command}")


def parser() -> argparse.ArgumentParser:
    hub = os.environ.get("JUPYTERHUB_URL", "").rstrip("/")
    p = argparse.ArgumentParser(
        prog="jhub-suspend", description="Suspend, resume and inspect Jupyter servers."
    )
    p.add_argument(
        "--url",
        default=os.environ.get("JHUB_SUSPEND_URL") or (f"{hub}/services/suspend/" if hub else ""),
        help="the service's URL (JHUB_SUSPEND_URL)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("JUPYTERHUB_API_TOKEN", ""),
        help="a JupyterHub API token (JUPYTERHUB_API_TOKEN)",
    )
    p.add_argument("--timeout", type=float, default=60, help="seconds per request")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="servers, their state and utilisation")
    ls.add_argument("--user")
    ls.add_argument("--state")
    ls.add_argument("--json", action="store_true")
    for name, text in (("suspend", "suspend a server now"), ("resume", "restore a server now")):
        c = sub.add_parser(name, help=text)
        c.add_argument("server", metavar="USER[/SERVER]")
        c.add_argument("--wait", action="store_true", help="wait until the operation finishes")
        c.add_argument("--wait-timeout", type=float, default=900)
    d = sub.add_parser("discard", help="discard a suspended server's checkpoint")
    d.add_argument("server", metavar="USER[/SERVER]")
    k = sub.add_parser("keep-running", help="set or clear a server's keep-running opt-out")
    k.add_argument("server", metavar="USER[/SERVER]")
    g = k.add_mutually_exclusive_group(required=True)
    g.add_argument("--hours", type=float)
    g.add_argument("--forever", action="store_true")
    g.add_argument("--off", action="store_true")
    pl = sub.add_parser("plan", help="what the policy would do, and why")
    pl.add_argument("--fresh", action="store_true", help="observe now instead of the last cycle")
    pl.add_argument("--json", action="store_true")
    dr = sub.add_parser(
        "drain",
        help="suspend every notebook server on a node (admins)",
        description="""Suspend every notebook server whose pod is on NODE, a few at a time
        (the service's drain_concurrency), printing a line per server as it is done and a
        summary. Servers with a keep-running opt-out in force, and servers starting,
        restoring or being stopped, are left running, each with the reason; suspend an
        opted-out server regardless with `jhub-suspend suspend USER[/SERVER]`. Cordon the
        node first (kubectl cordon NODE) so that nothing restores onto it; this command does
        not. Interrupting the command does not stop the drain, which the service runs.
        Exit status: 0 when no notebook server is left running on the node (also when there
        was none), 5 when a server was left running or its suspension failed (listed),
        4 when the drain still runs after --wait-timeout, 1 when the service refused (e.g. 404:
        no such node; 403: not an admin). A dry run exits 0.""",
    )
    dr.add_argument("node", metavar="NODE", help="the Kubernetes node's name")
    dr.add_argument(
        "--dry-run", action="store_true", help="list what would be done, and do nothing"
    )
    dr.add_argument("--json", action="store_true", help="print the finished operation as JSON")
    dr.add_argument("--wait-timeout", type=float, default=3600, help="seconds to follow the drain")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except CliError as e:
        print(f"jhub-suspend: {e.message}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
