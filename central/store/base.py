"""The point-store interface every backend implements.

A store takes `Sample`s: one device's metrics at one instant, as one
telemetry message carries them. Writes are idempotent: a point is
identified by (gateway, device, metric, ts), so a redelivered sample
overwrites itself instead of adding a point. The newest value of each
metric is kept by the ledger, not here, so the dashboard's "latest" works
the same over every backend (strings included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)  # not frozen: one is made per message, and frozen init is slow
class Sample:
    school: str
    gateway: str
    device: str
    kind: str
    ts: float
    values: dict[str, float | int | str]
    room: str = ""


class PointStore(Protocol):
    def write(self, samples: list[Sample]) -> int:
        """Store every metric of every sample durably, or raise StoreError (retryable: the caller
        acknowledges nothing and writes the batch again). Returns how many samples the server
        refused for their content and left out; retrying those could never succeed."""

    def check(self) -> None:
        """Raise StoreError naming the store if it cannot be reached or written (at a program's start)."""

    def query(self, gateway: str, device: str, metric: str, start: float, end: float,
              limit: int = 10_000) -> list[tuple[float, float | str]]:
        """Points of one series in [start, end], oldest first."""

    def release(self) -> None:
        """Give back what the calling thread holds (a database connection), at the end of a web request
        or of a background loop's round; a thread that ends gives it back by itself."""

    def close(self) -> None: ...
