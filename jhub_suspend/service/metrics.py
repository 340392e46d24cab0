"""The service's own Prometheus metrics (``GET /services/suspend/metrics``), in a registry of
their own so nothing else in the process leaks into them. No metric carries a user name."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

FAILSAFE_REASONS = ("unreachable", "timeout", "error", "malformed", "stale", "other")
_DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
_BYTES_BUCKETS = tuple(2**n for n in range(20, 38, 2))  # 1 MiB .. 64 GiB


class ServiceMetrics:
    """Every metric the service exports."""

    def __init__(self, namespace: str = "jhub_suspend") -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        ns = namespace
        self.suspensions = Counter(
            "suspensions",
            "Suspensions asked for, by reason (idle, capacity, manual, drain, eviction) and outcome "
            "(success, failed: the server kept running, error: could not be asked for).",
            ["reason", "outcome"],
            namespace=ns,
            registry=r,
        )
        self.restores = Counter(
            "restores",
            "Restores, by reason (manual: the resume API; login: seen after the fact) and "
            "outcome (success, fresh: the checkpoint could not be used, error).",
            ["reason", "outcome"],
            namespace=ns,
            registry=r,
        )
        self.suspension_duration = Histogram(
            "suspension_duration_seconds",
            "Time from asking for a suspension to the server being stopped.",
            ["outcome"],
            buckets=_DURATION_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.restore_duration = Histogram(
            "restore_duration_seconds",
            "Time from asking the hub to start a suspended server to it being ready.",
            ["outcome"],
            buckets=_DURATION_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.checkpoint_bytes = Histogram(
            "checkpoint_bytes",
            "Size of the checkpoint images of the suspensions this service asked for.",
            buckets=_BYTES_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.stored_checkpoint_bytes = Gauge(
            "stored_checkpoint_bytes",
            "Total size of the checkpoints of the servers currently suspended.",
            namespace=ns,
            registry=r,
        )
        self.reclaimed_cpu = Gauge(
            "reclaimed_cpu_cores",
            "CPU cores requested by the servers currently suspended (freed on the nodes).",
            namespace=ns,
            registry=r,
        )
        self.reclaimed_memory = Gauge(
            "reclaimed_memory_bytes",
            "Memory requested by the servers currently suspended.",
            namespace=ns,
            registry=r,
        )
        self.reclaimed_gpus = Gauge(
            "reclaimed_gpus",
            "GPUs requested by the servers currently suspended.",
            namespace=ns,
            registry=r,
        )
        self.reclaimed_cpu_core_seconds = Counter(
            "reclaimed_cpu_core_seconds",
            "CPU core-seconds freed by suspension: the CPU requested by suspended servers, "
            "summed over the time between policy cycles.",
            namespace=ns,
            registry=r,
        )
        self.reclaimed_gpu_seconds = Counter(
            "reclaimed_gpu_seconds",
            "GPU-seconds freed by suspension: the GPUs requested by suspended servers, summed "
            "over the time between policy cycles (divide by 3600 for GPU-hours).",
            namespace=ns,
            registry=r,
        )
        self.reclaimed_unknown = Gauge(
            "reclaimed_unknown_servers",
            "Suspended servers whose requests this process never saw (not in the sums above).",
            namespace=ns,
            registry=r,
        )
        self.servers = Gauge(
            "servers",
            "Servers by state, as of the last cycle.",
            ["state"],
            namespace=ns,
            registry=r,
        )
        self.suspended = Gauge(
            "servers_suspended", "Servers currently suspended.", namespace=ns, registry=r
        )
        self.decisions = Gauge(
            "policy_decisions",
            "Decisions of the last policy cycle, by action (suspend, warn, keep).",
            ["action"],
            namespace=ns,
            registry=r,
        )
        self.cycle_duration = Histogram(
            "policy_cycle_duration_seconds",
            "Time one policy cycle took (reading, deciding and starting suspensions).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            namespace=ns,
            registry=r,
        )
        self.cycles = Counter(
            "policy_cycles",
            "Policy cycles by outcome (ok, failsafe: metrics unusable, error: the cycle failed).",
            ["outcome"],
            namespace=ns,
            registry=r,
        )
        self.last_success = Gauge(
            "policy_last_success_timestamp_seconds",
            "Unix time of the last cycle that completed with usable metrics.",
            namespace=ns,
            registry=r,
        )
        self.loop_restarts = Counter(
            "policy_loop_restarts",
            "Times the policy loop task died and was restarted.",
            namespace=ns,
            registry=r,
        )
        self.failsafe = Gauge(
            "failsafe",
            "1 while the metrics are unusable and nothing is suspended, else 0.",
            namespace=ns,
            registry=r,
        )
        self.failsafe_reason = Gauge(
            "failsafe_reason",
            "1 for the reason the fail-safe is on (unreachable, timeout, error, malformed, "
            "stale, other), 0 for the others.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.prometheus_queries = Gauge(
            "prometheus_queries_per_cycle",
            "Prometheus queries the last policy cycle ran (constant in the number of servers).",
            namespace=ns,
            registry=r,
        )
        self.prometheus_queries_total = Counter(
            "prometheus_queries",
            "Prometheus queries run.",
            namespace=ns,
            registry=r,
        )
        self.hub_pages = Gauge(
            "hub_pages_per_cycle",
            "Hub API user-list pages the last policy cycle read.",
            namespace=ns,
            registry=r,
        )
        self.eviction_reviews = Counter(
            "eviction_reviews",
            "Evictions the API server asked the admission webhook about, by outcome: "
            "suspend_started (refused, the notebook's suspension started), suspending "
            "(refused while it is suspended), held (refused: it cannot be suspended), "
            "released (allowed after eviction_hold_seconds), allowed (not a running notebook), "
            "dry_run, error (refused: could not decide in time).",
            ["outcome"],
            namespace=ns,
            registry=r,
        )
        self.eviction_unsuspendable = Counter(
            "eviction_unsuspendable",
            "Notebook pods being evicted that could not be suspended, by reason (not_capable: "
            "not a SuspendingKubeSpawner server; suspension_failed; not_running: still "
            "starting; hub_error: the hub could not be asked). Each pod is counted once.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.eviction_held_pods = Gauge(
            "eviction_held_pods",
            "Notebook pods whose eviction is refused now because they cannot be suspended "
            "(allowed after eviction_hold_seconds).",
            namespace=ns,
            registry=r,
        )
        for reason in FAILSAFE_REASONS:
            self.failsafe_reason.labels(reason).set(0)
        for action in ("suspend", "warn", "keep"):
            self.decisions.labels(action).set(0)

    def set_failsafe(self, category: str | None) -> None:
        """Turn the fail-safe gauge on with a reason category, or off with None."""
        self.failsafe.set(0 if category is None else 1)
        if category is not None and category not in FAILSAFE_REASONS:
            category = "other"
        for reason in FAILSAFE_REASONS:
            self.failsafe_reason.labels(reason).set(1 if reason == category else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
