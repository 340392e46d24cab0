"""Renamed settings keep working for a while, with a warning, as in jupyterhub and kubespawner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from traitlets import observe
from traitlets.traitlets import ObserveHandler


def renamed_setting(
    old: str, new: str, since: str, convert: Callable[[Any], Any] = lambda value: value
) -> ObserveHandler:
    """An observer, assigned in the class body, that forwards the deprecated setting ``old``
    to ``new`` (through ``convert``) and warns once per assignment.

    The old trait stays declared, with config=True and a help saying what replaced it, so
    existing configuration files still load.
    """

    def forward(self: Any, change: dict[str, Any]) -> None:
        cls = type(self).__name__
        self.log.warning(
            "%s.%s is deprecated since jhub-suspend %s: set %s.%s instead",
            cls,
            old,
            since,
            cls,
            new,
        )
        setattr(self, new, convert(change["new"]))

    return observe(old)(forward)
