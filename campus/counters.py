"""Counters (`contract.COUNTER_METRICS`, e.g. a meter's `energy_kwh`): their increase over an interval.

A meter's kWh register only grows, until it is cleared or the meter is replaced; the new one starts
near zero. The difference of the last and the first reading of a day would then be a large negative
number of kWh. The rule here is Prometheus' (`increase`): a reading lower than the one before is a
reset, and the step across it counts as the new reading itself (the energy since the reset), so no
step is ever negative. What is lost is only what the old meter counted between its last reading and
its removal, which nobody read. Whatever sums a counter (the energy pages to come) uses this one
function; VictoriaMetrics' and Prometheus' `increase()` do the same for Grafana users.
"""

from __future__ import annotations

from collections.abc import Iterable


def steps(readings: Iterable[float]) -> list[float]:
    """The increase between each reading and the one before, in order (one fewer than the readings):
    `b - a`, or `b` where `b < a` (a reset)."""
    out: list[float] = []
    last: float | None = None
    for value in readings:
        if last is not None:
            out.append(value - last if value >= last else value)
        last = value
    return out


def increase(readings: Iterable[float]) -> float:
    """How much the counter grew over `readings` (in time order), resets counted as restarts from 0."""
    return sum(steps(readings))


def is_reset(before: float, after: float) -> bool:
    """Does `after` following `before` mean the counter was reset (or its device replaced)?"""
    return after < before
