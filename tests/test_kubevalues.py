"""Kubernetes' value formats: resource quantities and RFC 3339 times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from jhub_suspend.kubevalues import parse_quantity, parse_time, rfc3339


@pytest.mark.parametrize(
    "text, expected",
    [
        ("500m", Decimal("0.5")),
        ("1Gi", Decimal(2**30)),
        ("2", Decimal(2)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("128974848", Decimal(128974848)),
        ("129M", Decimal(129_000_000)),
        ("123Mi", Decimal(123 * 2**20)),
        ("1.5Ki", Decimal(1536)),
        ("0.1", Decimal("0.1")),
        (".5", Decimal("0.5")),
        ("100n", Decimal("0.0000001")),
        ("250u", Decimal("0.00025")),
        ("1k", Decimal(1000)),
        ("1E", Decimal(10**18)),
        ("2Ei", Decimal(2 * 2**60)),
        ("1e-3", Decimal("0.001")),
        (" 4 ", Decimal(4)),
        (3, Decimal(3)),
        (0.25, Decimal("0.25")),
    ],
)
def test_parse_quantity(text: str | int | float, expected: Decimal) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    "text", ["", "abc", "1KB", "1ki", "1e", "Mi", "1.2.3", "--1", "1 Gi", True]
)
def test_parse_quantity_rejects(text: Any) -> None:
    with pytest.raises(ValueError, match="invalid quantity"):
        parse_quantity(text)


def test_times_are_written_as_kubernetes_writes_them_and_read_back():
    t = datetime(2026, 1, 1, 12, 30, 5, 999, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(t) == "2026-01-01T10:30:05Z"
    assert rfc3339(1_700_000_000.5) == "2023-11-14T22:13:20Z"
    assert parse_time("2026-01-01T10:30:05Z") == t.replace(microsecond=0)
    assert parse_time("2026-01-01T10:30:05") == datetime(2026, 1, 1, 10, 30, 5, tzinfo=UTC)
    assert parse_time("yesterday") is None and parse_time(5) is None and parse_time("") is None
