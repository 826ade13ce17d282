"""The point-store interface every backend implements.

Writes are idempotent: a point is identified by (gateway, device, metric,
ts), so a redelivered sample overwrites itself instead of adding a point.
The newest value of each metric is kept by the ledger, not here, so the
dashboard's "latest" works the same over every backend (strings included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Point:
    school: str
    gateway: str
    device: str
    kind: str
    metric: str
    ts: float
    value: float | str
    room: str = ""


class PointStore(Protocol):
    def write(self, points: list[Point]) -> None:
        """Store all points durably, or raise StoreError having stored none for sure."""

    def query(self, gateway: str, device: str, metric: str, start: float, end: float,
              limit: int = 10_000) -> list[tuple[float, float | str]]:
        """Points of one series in [start, end], oldest first."""

    def close(self) -> None: ...
