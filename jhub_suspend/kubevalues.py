"""Kubernetes' value formats: resource quantities and RFC 3339 times (pure)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

_BINARY_SUFFIXES = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_SUFFIXES = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<exponent>[eE][+-]?[0-9]+)|(?P<decimal>[numkMGTPE]))?$"
)


def parse_quantity(quantity: str | int | float | Decimal) -> Decimal:
    """Parse a Kubernetes resource quantity ("500m", "1Gi", "129M", "1e3", "2") exactly.

    kubernetes_asyncio ships no parser (the official client's ``utils.quantity`` is not in it),
    and jupyterhub's ByteSpecification reads "M" as 2**20, which is wrong for Kubernetes; so
    this follows the grammar of k8s.io/apimachinery's resource.Quantity: binary suffixes
    Ki..Ei, decimal suffixes n..E, or a decimal exponent. Raises ValueError for anything else.
    """
    if isinstance(quantity, bool):
        raise ValueError(f"invalid quantity {quantity!r}")
    if isinstance(quantity, Decimal):
        return quantity
    if isinstance(quantity, int | float):
        if isinstance(quantity, float) and not math.isfinite(quantity):
            raise ValueError(f"invalid quantity {quantity!r}")
        return Decimal(str(quantity))
    match = _QUANTITY.match(quantity.strip()) if isinstance(quantity, str) else None
    if not match:
        raise ValueError(f"invalid quantity {quantity!r}")
    try:
        number = Decimal(match["number"])
    except InvalidOperation as e:  # pragma: no cover - the regex admits only valid numbers
        raise ValueError(f"invalid quantity {quantity!r}") from e
    if match["binary"]:
        return number * (Decimal(1024) ** _BINARY_SUFFIXES[match["binary"]])
    if match["exponent"]:
        return number.scaleb(int(match["exponent"][1:]))
    return number.scaleb(_DECIMAL_SUFFIXES[match["decimal"] or ""])


def rfc3339(t: datetime | float) -> str:
    """An aware datetime, or seconds since the epoch, as Kubernetes writes a time
    (``metav1.Time``): UTC, to the second."""
    if not isinstance(t, datetime):
        t = datetime.fromtimestamp(t, UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_or_none(t: datetime | None) -> str | None:
    """:func:`rfc3339`, or None for no time (an API field that may be absent)."""
    return rfc3339(t) if t else None


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 / ISO 8601 time as an aware datetime (naive ones are UTC); None if absent
    or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
