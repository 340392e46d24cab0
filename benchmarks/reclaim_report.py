"""The reclaim replay's report: capacity accounting, the JSON, the Markdown page and the plot.

Accounting is per minute of the week (the lead-in is not counted). A server *reserves* its
requests while its pod exists: from its start to the end of its reservation, except, with
jhub-suspend, from the moment its checkpoint is pushed and its pod deleted until the user's next
login, and, with the culler, from the cull until the next login. It *uses* CPU and GPU only while
its pod exists; *work* is the CPU of its computations (bursts), without the idle overhead.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import reclaim_world as rw

if TYPE_CHECKING:
    from reclaim_replay import Cull, Replay, Suspension

COMMAND = ".venv/bin/python benchmarks/reclaim_replay.py"
CULLER_RULE = "jupyterhub-idle-culler --timeout=3600 --cull-every=600"
Intervals = dict[str, list[tuple[float, float]]]


# ---------------------------------------------------------------------------------------------
# Per-minute accounting


def held(u: rw.User, world: rw.World) -> np.ndarray:
    """Minutes of the week in which the server exists when nothing suspends or culls it."""
    m = np.arange(world.minutes)
    return (m >= u.reservation[0]) & (m < u.reservation[1])


def reserved(u: rw.User, world: rw.World, off: Intervals) -> np.ndarray:
    """Minutes of the week in which the server holds its requests, given its free intervals
    (a minute is free only when all of it is)."""
    mask = held(u, world)
    for start, end in off.get(u.name, []):
        mask[max(0, math.ceil(start)) : max(0, min(world.minutes, int(end)))] = False
    return mask


def _week(arr: np.ndarray, world: rw.World) -> np.ndarray:
    return arr[world.index(0) :]


def series(world: rw.World, off: Intervals) -> dict[str, np.ndarray]:
    """Cluster totals per minute: reserved and used CPU cores, work, GPUs and memory."""
    keys = ("cores", "used_cores", "work_cores", "gpus", "used_gpus", "memory")
    out = {k: np.zeros(world.minutes) for k in keys}
    for u in world.users:
        mask = reserved(u, world, off)
        cpu = _week(u.cpu, world)
        out["cores"] += mask * u.cpu_request
        out["used_cores"] += mask * cpu
        out["work_cores"] += (mask & _week(u.busy, world)) * cpu
        out["memory"] += mask * u.memory_request
        if u.gpus:
            out["gpus"] += mask * u.gpus
            out["used_gpus"] += mask * u.gpus * _week(u.gpu_util, world) / 100
    return out


def totals(s: dict[str, np.ndarray]) -> dict[str, float]:
    hours = {k: float(v.sum()) / 60 for k, v in s.items()}
    return {
        "reserved_core_hours": round(hours["cores"], 1),
        "used_core_hours": round(hours["used_cores"], 1),
        "work_core_hours": round(hours["work_cores"], 1),
        "reserved_gpu_hours": round(hours["gpus"], 1),
        "used_gpu_hours": round(hours["used_gpus"], 1),
        "reserved_memory_gib_hours": round(hours["memory"] / rw.GIB, 1),
        "mean_reserved_cores": round(float(s["cores"].mean()), 1),
        "peak_reserved_cores": round(float(s["cores"].max()), 1),
        "mean_reserved_gpus": round(float(s["gpus"].mean()), 2),
        "peak_reserved_gpus": round(float(s["gpus"].max()), 1),
    }


def compared(base: dict[str, float], other: dict[str, float]) -> dict[str, float]:
    """What ``other`` gives back relative to ``base``: hours and shares."""
    out = dict(other)
    for kind in ("core", "gpu"):
        b, o = base[f"reserved_{kind}_hours"], other[f"reserved_{kind}_hours"]
        idle = b - base[f"used_{kind}_hours"]
        out[f"reclaimed_{kind}_hours"] = round(b - o, 1)
        out[f"reclaimed_{kind}_share"] = round((b - o) / b, 4) if b else 0.0
        out[f"reclaimed_share_of_idle_{kind}_hours"] = round((b - o) / idle, 4) if idle else 0.0
    return out


# ---------------------------------------------------------------------------------------------
# Sections


def spread(values: list[float], digits: int = 1) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=float)
    return {
        "min": round(float(arr.min()), digits),
        "median": round(float(np.median(arr)), digits),
        "p90": round(float(np.percentile(arr, 90)), digits),
        "max": round(float(arr.max()), digits),
        "total": round(float(arr.sum()), digits),
    }


def _in_week(minute: int | None, r: Replay) -> bool:
    return minute is not None and 0 <= minute < r.world.minutes


def _busy_minutes_while_suspended(r: Replay) -> float:
    off = r.suspended_off()
    lost = 0.0
    for u in r.world.users:
        mask = held(u, r.world) & ~reserved(u, r.world, off)
        lost += float(_week(u.busy, r.world)[mask].sum())
    return lost


def _warnings(r: Replay, ss: list[Suspension]) -> dict[str, Any]:
    w = r.policy.warnings
    leads = [s.warned_minutes_before for s in ss if s.warned_minutes_before is not None]
    warn_before = r.policy_config.warn_before / 60
    return {
        "issued": w.issued,
        "followed_by_a_suspension": len(leads),
        "withdrawn_user_back_or_busy": w.withdrawn,
        "reset_by_the_suspension_limit": w.reset_by_limit,
        "minutes_before_suspension": spread(leads),
        "suspensions_warned_less_than_warn_before": sum(
            1
            for s in ss
            if s.warned_minutes_before is None or s.warned_minutes_before < warn_before
        ),
    }


def suspend_section(r: Replay) -> dict[str, Any]:
    """jhub-suspend's actions in the week: safety, warnings, cost."""
    ss = [s for s in r.suspensions if _in_week(s.minute, r)]
    restores = [s for s in r.suspensions if _in_week(s.resumed_at, r)]
    back_soon = [s for s in restores if (s.resumed_at or 0) - s.minute <= 15]
    return {
        "suspensions": len(ss),
        "gpu_suspensions": sum(1 for s in ss if s.gpu),
        "servers_suspended_at_least_once": len({s.user for s in ss}),
        "active_servers_suspended": sum(1 for s in ss if s.active),
        "active_suspensions": [
            {"user": s.user, "minute": s.minute, "why": s.active} for s in ss if s.active
        ][:20],
        "computation_minutes_while_suspended": _busy_minutes_while_suspended(r),
        "kernels_preserved": sum(s.kernels for s in ss),
        "never_restored_reservation_ended": sum(1 for s in ss if s.resumed_at is None),
        "restores": len(restores),
        "restores_within_15_min_of_the_suspension": len(back_soon),
        "checkpoint_gib": spread([s.working_set / rw.GIB for s in ss], 2),
        "suspend_seconds": spread([s.suspend_seconds for s in ss]),
        "resume_wait_seconds": spread([s.resume_seconds or 0.0 for s in restores]),
        "hours_suspended_until_the_next_login": spread(
            [(s.resumed_at - s.minute) / 60 for s in ss if s.resumed_at is not None]
        ),
        "warnings": _warnings(r, ss),
    }


def _suspended_during(r: Replay, c: Cull) -> bool:
    """Whether jhub-suspend suspended the server in the idle spell the culler ended it in (else
    it kept it running: a computation, or a user back before the warning ran out)."""
    end = c.respawned_at if c.respawned_at is not None else math.inf
    for s in r.cluster.suspensions.get(c.user, []):
        back = s.resumed_at if s.resumed_at is not None else math.inf
        if s.minute < end and back > c.minute:
            return True
    return False


def culler_section(r: Replay) -> dict[str, Any]:
    """The culler's actions in the week, next to what jhub-suspend did with the same servers."""
    culls = [c for c in r.culls if _in_week(c.minute, r)]
    in_checkpoint = sum(c.kernels for c in culls if _suspended_during(r, c))
    destroyed = sum(c.kernels for c in culls)
    return {
        "rule": CULLER_RULE + " (Zero to JupyterHub's defaults)",
        "culls": len(culls),
        "servers_culled_at_least_once": len({c.user for c in culls}),
        "kernels_destroyed": destroyed,
        "kernels_jhub_suspend_kept_in_a_checkpoint": in_checkpoint,
        "kernels_jhub_suspend_kept_running": destroyed - in_checkpoint,
        "running_computations_killed": sum(1 for c in culls if c.killed_computation),
        "core_hours_of_killed_computations": round(sum(c.lost_core_minutes for c in culls) / 60, 1),
        "fresh_starts_after_a_cull": sum(1 for c in culls if c.respawned_at is not None),
    }


def build(r: Replay) -> dict[str, Any]:
    """The report's data (what the JSON holds)."""
    base = totals(series(r.world, {}))
    cfg = r.policy_config
    return {
        "benchmark": "reclaim_replay",
        "command": COMMAND,
        "when": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "world": {
            "seed": r.world.seed,
            "week_start": rw.WEEK_START.isoformat(),
            "shape": asdict(r.world.shape),
            "generated": rw.describe(r.world),
        },
        "policy": {
            "settings": "the service's defaults",
            "cpu_threshold": cfg.cpu_threshold,
            "idle_window_s": cfg.idle_window,
            "activity_timeout_s": cfg.activity_timeout,
            "gpu_threshold_percent": cfg.gpu_threshold,
            "gpu_idle_window_s": cfg.gpu_idle_window,
            "gpu_activity_timeout_s": cfg.gpu_activity_timeout,
            "warn_before_s": cfg.warn_before,
            "max_concurrent_suspensions": cfg.max_concurrent_suspensions,
            "step_s": r.step,
            "lead_in_cycles": r.policy.lead_in_cycles,
            "cycles": r.policy.cycles,
            "prometheus_queries": r.policy.prometheus_queries,
            "failsafe_cycles": r.policy.failsafe,
            "cycles_where_the_suspension_limit_held_servers_back": r.policy.limited_cycles,
        },
        "capacity": {
            "without_jhub_suspend": base,
            "jhub_suspend": compared(base, totals(series(r.world, r.suspended_off()))),
            "idle_culler": compared(base, totals(series(r.world, r.culled_off()))),
        },
        "jhub_suspend": suspend_section(r),
        "idle_culler": culler_section(r),
        "timings": r.timings,
    }


def headline(report: dict[str, Any]) -> str:
    cap = report["capacity"]
    js, cu = cap["jhub_suspend"], cap["idle_culler"]
    s, c = report["jhub_suspend"], report["idle_culler"]
    return (
        f"jhub-suspend gives back {js['reclaimed_core_share']:.0%} of the reserved core-hours "
        f"and {js['reclaimed_gpu_share']:.0%} of the GPU-hours with "
        f"{s['active_servers_suspended']} active servers suspended; the culler "
        f"{cu['reclaimed_core_share']:.0%} and {cu['reclaimed_gpu_share']:.0%}, destroying "
        f"{c['kernels_destroyed']} kernels and {c['running_computations_killed']} running "
        "computations that jhub-suspend keeps."
    )


# ---------------------------------------------------------------------------------------------
# Files


def write(report: dict[str, Any], r: Replay, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "reclaim_replay.json", out / "reclaim_replay.md", out / "reclaim_replay.png"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    plot(r, paths[2])
    return paths


def plot(r: Replay, path: Path, every: int = 10) -> None:
    """Reserved and used cores and GPUs over the week, in ``every``-minute means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = series(r.world, {})
    lines = (
        ("reserved, without jhub-suspend", base, "0.55", "-"),
        ("reserved, with jhub-suspend", series(r.world, r.suspended_off()), "C0", "-"),
        ("reserved, with the idle culler", series(r.world, r.culled_off()), "C1", "--"),
    )
    n = r.world.minutes // every
    days = np.arange(n) * every / rw.DAY

    def mean(a: np.ndarray) -> np.ndarray:
        return a[: n * every].reshape(n, every).mean(axis=1)

    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for ax, key, unit in ((axes[0], "cores", "CPU cores"), (axes[1], "gpus", "GPUs")):
        for label, s, color, style in lines:
            ax.plot(days, mean(s[key]), color=color, linestyle=style, linewidth=1.3, label=label)
        ax.fill_between(days, mean(base[f"used_{key}"]), color="k", alpha=0.6, label="used")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8, ncol=2)
    axes[0].set_title(
        f"{len(r.world.users)} notebook servers over a week: reserved and used "
        "(jhub-suspend: its real policy on a real Prometheus)"
    )
    names = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    axes[1].set_xticks(range(r.world.shape.days))
    axes[1].set_xticklabels([names[d % 7] for d in range(r.world.shape.days)])
    axes[1].set_xlabel(f"day (UTC), week of {rw.WEEK_START:%Y-%m-%d}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Markdown


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _h(x: float) -> str:
    return f"{x:,.0f}"


def _capacity_table(cap: dict[str, Any]) -> list[str]:
    rows = [
        "| | reserved core-hours | used | of which computations | reserved GPU-hours | used "
        "| core-hours back | GPU-hours back | mean / peak reserved cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, key in (
        ("without jhub-suspend", "without_jhub_suspend"),
        ("**with jhub-suspend**", "jhub_suspend"),
        ("with the idle culler", "idle_culler"),
    ):
        c = cap[key]
        back_c = _pct(c["reclaimed_core_share"]) if "reclaimed_core_share" in c else "-"
        back_g = _pct(c["reclaimed_gpu_share"]) if "reclaimed_gpu_share" in c else "-"
        rows.append(
            f"| {name} | {_h(c['reserved_core_hours'])} | {_h(c['used_core_hours'])} "
            f"| {_h(c['work_core_hours'])} | {_h(c['reserved_gpu_hours'])} "
            f"| {c['used_gpu_hours']:,.1f} | {back_c} | {back_g} "
            f"| {c['mean_reserved_cores']:.0f} / {c['peak_reserved_cores']:.0f} |"
        )
    return rows


def _spread_text(s: dict[str, float] | None, unit: str) -> str:
    if not s:
        return "none"
    return f"median {s['median']} {unit} (min {s['min']}, p90 {s['p90']}, max {s['max']})"


def _versus(cap: dict[str, Any]) -> str:
    """How the culler's freed capacity compares with jhub-suspend's, and why."""
    js, cu = cap["jhub_suspend"], cap["idle_culler"]
    parts = []
    for kind, what in (("core", "core-hours"), ("gpu", "GPU-hours")):
        a, b = js[f"reclaimed_{kind}_share"], cu[f"reclaimed_{kind}_share"]
        who = "the culler" if b > a else "jhub-suspend"
        parts.append(f"{who} frees {abs(b - a) * 100:.1f} percentage points more of the {what}")
    text = "; ".join(parts)
    return (
        text[0].upper() + text[1:] + ". The culler ignores CPU and GPU use, warns nobody and "
        "stops any number of servers at once; jhub-suspend's GPU timeout is 30 minutes where "
        "the culler's is an hour."
    )


def markdown(report: dict[str, Any]) -> str:
    cap, s, c = report["capacity"], report["jhub_suspend"], report["idle_culler"]
    w, p, g = s["warnings"], report["policy"], report["world"]["generated"]
    base, js = cap["without_jhub_suspend"], cap["jhub_suspend"]
    t = report["timings"]
    shape = report["world"]["shape"]
    out = [
        "# What jhub-suspend reclaims: a week of notebooks through the real policy and Prometheus",
        "",
        f"Run {report['when'][:10]} with `{report['command']}` ({t['total_seconds']:.0f} s on "
        f"{report['machine']['cpus']} cores): {g['users']} synthetic users shaped like the seed "
        f"cluster, seed {report['world']['seed']}, {shape['days']} days from {report['world']['week_start'][:10]} "
        f"after a {shape['lead_in_hours']} h lead-in that is not counted. The suspend service's own "
        "observe-and-decide with its default settings, its PromQL answered by a real Prometheus "
        "holding the week's backfilled cAdvisor, kube-state-metrics and DCGM series at each "
        f"simulated instant, every {p['step_s']} s; jupyterhub-idle-culler's rule over the same week.",
        "",
        f"**{headline(report)}**",
        "",
        "![reserved and used cores and GPUs over the week](reclaim_replay.png)",
        "",
        "## Capacity",
        "",
        *_capacity_table(cap),
        "",
        f"Without jhub-suspend the notebooks reserve {_h(base['reserved_core_hours'])} core-hours "
        f"and use {_pct(base['used_core_hours'] / base['reserved_core_hours'])} of them (the "
        "seed's notebook pods used 0.2-19 % of one core over their reservation, most under 3 %, "
        "whatever they requested). jhub-suspend gives back "
        f"{_pct(js['reclaimed_share_of_idle_core_hours'])} of the idle core-hours and "
        f"{_pct(js['reclaimed_share_of_idle_gpu_hours'])} of the idle GPU-hours. Every "
        "computation runs as it would without it (the *computations* column is the same); "
        "*used* is lower only by the idle overhead of servers that are not there.",
        "",
        "## Safety",
        "",
        f"- **Suspensions of a server that was active within its window: "
        f"{s['active_servers_suspended']}** of {s['suspensions']} ({s['gpu_suspensions']} of GPU "
        "servers). Checked against the world's own record, not the policy's view: a server was "
        "active if, in the idle window before the suspension (60 min; GPU servers 30 min), any "
        "minute's CPU reached 5 % of its request, a GPU server's GPU reached 5 %, or the hub "
        "recorded activity within the activity timeout.",
        f"- Computation minutes that fell in a suspension: {s['computation_minutes_while_suspended']:.0f}.",
        f"- Warnings: every suspension was warned {_spread_text(w['minutes_before_suspension'], 'min')} "
        f"ahead; {w['suspensions_warned_less_than_warn_before']} were warned less than "
        f"{p['warn_before_s'] / 60:.0f} min ahead. Warnings issued: {w['issued']}; ended in "
        f"the suspension: {w['followed_by_a_suspension']}; withdrawn because the user came back "
        f"or the server got busy: {w['withdrawn_user_back_or_busy']}; ended because the "
        f"suspension limit ({p['max_concurrent_suspensions']} at once) held an eligible server "
        f"back for a cycle: {w['reset_by_the_suspension_limit']} (a server it holds back stays "
        "warned, and is suspended in a later cycle without a new warning). The limit held "
        f"servers back in {p['cycles_where_the_suspension_limit_held_servers_back']} of "
        f"{p['cycles']} cycles.",
        f"- Fail-safe cycles: {sum(p['failsafe_cycles'].values())}.",
        "",
        "## Cost",
        "",
        f"- {s['suspensions']} suspensions of {s['servers_suspended_at_least_once']} servers, "
        f"keeping {s['kernels_preserved']} kernels. Checkpoints (the working set): "
        f"{_spread_text(s['checkpoint_gib'], 'GiB')}.",
        f"- Suspend time, during which the server still holds its requests: "
        f"{_spread_text(s['suspend_seconds'], 's')}, {s['suspend_seconds']['total'] / 60:.0f} min "
        "in all."
        if s["suspend_seconds"]
        else "- No suspend time.",
        f"- {s['restores']} restores at a login: the user waits "
        f"{_spread_text(s['resume_wait_seconds'], 's')}; "
        f"{s['restores_within_15_min_of_the_suspension']} came within 15 minutes of the "
        f"suspension. {s['never_restored_reservation_ended']} suspended servers were never "
        "resumed (their reservation ended first: the user never came back in time).",
        f"- Servers stay suspended {_spread_text(s['hours_suspended_until_the_next_login'], 'h')} "
        "until the next login.",
        "",
        "Suspend and resume times are interpolated by checkpoint size between the measurements in "
        "[suspend_resume.json](suspend_resume.json) (archives of 0.13, 1.19 and 4.74 GB), and "
        "extrapolated linearly beyond the largest; a GPU server's device memory, which CRIU's "
        "CUDA plugin adds to its checkpoint, is not counted.",
        "",
        "## The idle culler",
        "",
        f"`{CULLER_RULE}`: {c['culls']} culls of {c['servers_culled_at_least_once']} servers "
        f"give back {_pct(cap['idle_culler']['reclaimed_core_share'])} of the reserved "
        f"core-hours and {_pct(cap['idle_culler']['reclaimed_gpu_share'])} of the GPU-hours, "
        f"and destroy **{c['kernels_destroyed']} kernels**. jhub-suspend destroys none of them: "
        f"it held {c['kernels_jhub_suspend_kept_in_a_checkpoint']} in a checkpoint when the "
        f"culler would have destroyed them and kept {c['kernels_jhub_suspend_kept_running']} "
        "running (their server was computing, or the user came back before the warning ran "
        f"out). The culler kills **{c['running_computations_killed']} running computations** "
        f"({c['core_hours_of_killed_computations']} core-hours of work lost, not counting the "
        "reruns): runs that print nothing for an hour are idle to the hub, while jhub-suspend, "
        "which sees their CPU and GPU, lets every one finish (no computation minute fell in a "
        f"suspension). {c['fresh_starts_after_a_cull']} logins find a fresh server. "
        + _versus(cap),
        "",
        "## How the replay works",
        "",
        "- **The world** (`benchmarks/reclaim_world.py`, whose docstring documents the "
        f"generator): {g['users']} users, {g['gpu_users']} of them with {g['gpus']} GPUs; "
        f"{g['never_return_users']} never come back after their first session; reservations of "
        f"{g['reservation_days']['min']}-{g['reservation_days']['max']} days (median "
        f"{g['reservation_days']['median']}, {g['reservations_longer_than_the_week']} longer than "
        f"the week); {g['cpu_hours_per_reservation']['min']}-"
        f"{g['cpu_hours_per_reservation']['max']} h of CPU per reservation (median "
        f"{g['cpu_hours_per_reservation']['median']}; 45 min to 7 h drawn, a reservation's end "
        f"cuts some short) in {g['bursts']} bursts, "
        f"{g['background_runs']} of them left running after the session "
        f"({g['background_runs_printing_progress']} printing progress); daily sessions at each "
        "user's hour, fewer at weekends; hub activity for each session minute, for progress "
        "output, and for browser tabs left open. The seed's pods: 45 min to 7 h of CPU in "
        "14.5 h to 2.29 weeks of reservation.",
        f"- **Prometheus**: {t['samples']:,} samples written as OpenMetrics text "
        f"({t['openmetrics_bytes'] / 1e6:.0f} MB, {t['write_seconds']} s), turned into TSDB blocks "
        f"by `promtool tsdb create-blocks-from openmetrics` ({t['promtool_seconds']} s), served by "
        "Prometheus started on that TSDB with a ten-year retention; the names and labels are "
        "cAdvisor's (`container_cpu_usage_seconds_total`, `container_memory_working_set_bytes`, "
        'with the pod-level `container=""` series the queries exclude), kube-state-metrics\' '
        "(`kube_pod_container_resource_requests`) and dcgm-exporter's (`DCGM_FI_DEV_GPU_UTIL`).",
        f"- **jhub-suspend**: {p['cycles']} cycles of the service's `PolicyLoop.observe()` "
        f"({p['prometheus_queries']:,} PromQL queries, {t['policy_seconds']} s) with an injected "
        "clock, the hub's users and the pods given by the simulated cluster in the hub's and "
        "Kubernetes' JSON, and Prometheus queried at the simulated time; each suspension in its "
        "plan frees the server's requests once the checkpoint is pushed, until the user's next "
        "login resumes it.",
        "- **The culler**: its rule (stop a ready server whose last activity, or start, is "
        "`--timeout` old) every `--cull-every` seconds; the next login starts a fresh server.",
        "",
        "## What this replay does not show",
        "",
        "- The users are synthetic, shaped like the seed's measurements; no trace of a real "
        "cluster was replayed.",
        f"- The policy runs every {p['step_s']} s of simulated time where the service runs every "
        "60 s, so suspensions come up to that much later than they would (and the suspension "
        "limit allows fewer per minute); the reclaimed share is, if anything, understated.",
        "- A suspended server in this world never has a computation it would have started "
        "without a login: nothing in the generator starts work without a session (cron-like "
        "jobs inside a notebook are not modelled).",
        "- The culler's users recompute their state after a fresh start; that work is not counted.",
        "- Every GPU node is taken to be able to checkpoint CUDA processes (the replay's service "
        "has `fakes.AssumedGpuCapabilities`): on a cluster where some cannot, their GPU servers "
        "are left running, so the GPU-hours reclaimed are an upper bound.",
        "",
    ]
    return "\n".join(out)
