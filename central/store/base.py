"""The point-store interface every backend implements.

A store takes `Sample`s: one device's metrics at one instant, as one
telemetry message carries them. Writes are idempotent: a point is
identified by (gateway, device, metric, ts), so a redelivered sample
overwrites itself instead of adding a point. The newest value of each
metric is kept by the ledger, not here, so the dashboard's "latest" works
the same over every backend (strings included).

Reads never lose the newest data silently. `query` is a raw page: when a
window holds more points than asked for, it answers the *newest* ones (a
caller pages back from the oldest it got); `window` is what a chart or the
JSON API shows: bounded, raw when the window holds few enough points, else
downsampled to the newest sample of each step, and always ending with the
newest point of the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

Point = tuple[float, float | str]
# The most points one answer holds (the JSON API's default and its cap).
MAX_POINTS = 10_000


@dataclass(slots=True)  # not frozen: one is made per message, and frozen init is slow
class Sample:
    school: str
    gateway: str
    device: str
    kind: str
    ts: float
    values: dict[str, float | int | str]
    room: str = ""


@dataclass(slots=True)
class Window:
    """One series over a window, at most the points asked for, oldest first, the window's newest point last.

    `step` 0: every point of the window. `step` > 0: the window held more points than asked for, and
    these are the newest sample of each `step`-second bucket (a chart's pixel column, say): each with its
    own timestamp on SQLite and VictoriaMetrics, its bucket's start on InfluxDB (which gives no other),
    except the last point, always the window's newest sample with its own timestamp.
    """
    points: list[Point] = field(default_factory=list)
    step: float = 0.0

    @property
    def downsampled(self) -> bool:
        return self.step > 0


def downsample_step(start: float, end: float, max_points: int) -> float:
    """The bucket width, in whole milliseconds, that puts [start, end] in at most `max_points` buckets,
    with room for the two partial buckets at the ends a server's alignment of buckets may add."""
    buckets = max(1, max_points - 2)
    return max(1, math.ceil((end - start) * 1000 / buckets)) / 1000


class PointStore(Protocol):
    def write(self, samples: list[Sample]) -> int:
        """Store every metric of every sample durably, or raise StoreError (retryable: the caller
        acknowledges nothing and writes the batch again). Returns how many samples the server
        refused for their content and left out; retrying those could never succeed."""

    def check(self) -> None:
        """Raise StoreError naming the store if it cannot be reached or written (at a program's start)."""

    def query(self, gateway: str, device: str, metric: str, start: float, end: float,
              limit: int = MAX_POINTS) -> list[Point]:
        """Raw points of one series in [start, end], oldest first; of a window holding more than `limit`,
        the newest `limit` (ask for one more than you want to tell a cut, and page back with `end` at the
        oldest point you got)."""

    def window(self, gateway: str, device: str, metric: str, start: float, end: float,
               max_points: int = MAX_POINTS) -> Window:
        """At most `max_points` points of one series in [start, end], the newest last (see `Window`)."""

    def release(self) -> None:
        """Give back what the calling thread holds (a database connection), at the end of a web request
        or of a background loop's round; a thread that ends gives it back by itself."""

    def close(self) -> None: ...
