"""One check every point store must pass: a busy window never loses its newest point."""

from __future__ import annotations

import math
import time
from typing import Any

from sqlalchemy.engine import Result

from central.store.base import PointStore, Sample
from tests.servers import wait_until

BUSY = 50_000


def sql(owner: Any, query: str, params: tuple[Any, ...] = ()) -> Result[Any]:
    """A test's own look at the central database of `owner` (a Ledger, Registry or Database), with `?`
    placeholders on both engines; the rows are read at once (the connection is back in the pool)."""
    db = getattr(owner, "db", owner)
    with db.engine.connect() as conn:
        if db.dialect == "postgresql":
            query = query.replace("?", "%s")
        return conn.exec_driver_sql(query, tuple(params)).freeze()()


def assert_newest_is_in_the_answer(store: PointStore, own_timestamps: bool = True) -> None:
    """A device with 50,000 samples a second apart in the window, and a minute more after its end: a raw page
    is the newest samples, the window is downsampled (it says so by its step), bounded, and ends with the
    window's newest sample. Each point is a sample of its bucket: the newest one, at its own time where the
    store dates it so (`own_timestamps`), else at its bucket's start."""
    end = float(round(time.time()) - 120)
    start = end - BUSY + 1
    value = lambda ts: float((ts - start) % 1000)  # noqa: E731 - the value each sample carries
    samples = [Sample("s1", "gw1", "env", "environment", start + i, {"co2_ppm": value(start + i)}, "101")
               for i in range(BUSY)]
    samples += [Sample("s1", "gw1", "env", "environment", end + i, {"co2_ppm": 5000.0}, "101") for i in range(1, 61)]
    for i in range(0, len(samples), 10_000):
        assert store.write(samples[i:i + 10_000]) == 0
    wait_until(lambda: len(store.query("gw1", "env", "co2_ppm", end - 9, end + 60, limit=100)) == 70, 30,
               message="the samples readable")  # a server may take a moment to make new samples searchable
    newest = (end, value(end))

    page = store.query("gw1", "env", "co2_ppm", start, end, limit=1000)
    assert page == [(end - 999 + i, value(end - 999 + i)) for i in range(1000)]

    got = store.window("gw1", "env", "co2_ppm", start, end, max_points=1000)
    assert got.downsampled and 0 < got.step < 60
    assert 900 <= len(got.points) <= 1000 and got.points[-1] == newest
    times = [ts for ts, _ in got.points]
    assert times == sorted(set(times)) and start <= times[0] <= start + 2 * got.step and times[-1] <= end
    for ts, v in got.points[:-1]:
        if own_timestamps:
            assert v == value(ts), (ts, v)
        else:
            assert v in {value(s) for s in range(math.ceil(ts), math.floor(ts + got.step) + 1)}, (ts, v)

    assert store.window("gw1", "env", "co2_ppm", end - 999, end, max_points=1000).points == page  # raw
