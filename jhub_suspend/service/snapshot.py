"""What one policy cycle saw and decided: the loop records it, the listing and the retention
sweep read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..policy import Decision, PendingPod, Plan
from .observe import ServerView


@dataclass
class Snapshot:
    """What one cycle saw and decided."""

    time: datetime
    views: list[ServerView]
    plan: Plan
    failsafe: str | None  # fail-safe category, None when the metrics were usable
    pending: list[PendingPod]
    markers: dict[str, dict[str, Any]]  # digest -> marker Secret
    queries: int
    hub_pages: int
    duration: float = 0.0
    decisions: dict[tuple[str, str], Decision] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.decisions = {(d.user, d.server_name): d for d in self.plan.decisions}

    def view(self, user: str, server_name: str) -> ServerView | None:
        return next((v for v in self.views if v.key == (user, server_name)), None)
