"""How long one chart series takes to read: `PointStore.window` over a busy series, per store.

One environment sensor reporting every second for a week (604,800 samples), written
through the product's own store classes into embedded SQLite, a real VictoriaMetrics
and a real InfluxDB (fresh servers on loopback, in a temporary directory). Then, for
the windows a room page offers (1 h, 24 h, 7 d), the time of `window()` with the
chart's 1,200 points and with the API's default 10,000, and of a raw page of the
newest 10,001 points (`query`, what `/api/telemetry?raw=1` reads). Every answer is
checked to end with the window's newest sample; the benchmark exits 1 if one does not.

    python bench/telemetry_window.py [--days 7] [--rate 1] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from common import machine_line, print_table, store_server, wait_until

from central.store import Sample, open_store

WINDOWS = (("1 h", 3600), ("24 h", 86400), ("7 d", 7 * 86400))


def fill(store: Any, end: float, seconds: int, rate: float) -> int:
    """One sensor's samples every 1/rate s over `seconds` up to `end`; how many."""
    n = int(seconds * rate)
    batch: list[Sample] = []
    for i in range(n):
        ts = round(end - (n - 1 - i) / rate, 3)
        batch.append(Sample("s1", "gw1", "env", "environment", ts, {"co2_ppm": 400.0 + i % 800,
                                                                      "temperature_c": 21.5}, "101"))
        if len(batch) == 20_000:
            store.write(batch)
            batch = []
    if batch:
        store.write(batch)
    return n


def timed(fn: Any, repeat: int) -> tuple[float, Any]:
    """The best of `repeat` runs (ms), and the answer."""
    best, answer = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        answer = fn()
        best = min(best, (time.perf_counter() - t) * 1000)
    return best, answer


def measure(kind: str, store: Any, days: float, rate: float, repeat: int, bad: list[str]) -> list[list[object]]:
    """Fill the store with one busy series, then time each window; a row per window."""
    end = float(round(time.time()) - 60)
    t = time.perf_counter()
    n = fill(store, end, int(days * 86400), rate)
    write_s = time.perf_counter() - t
    wait_until(partial(newest_readable, store, end), 60, message="the newest sample readable")
    rows = []
    for label, seconds in WINDOWS:
        start = end - seconds
        figures: list[object] = []
        for fn in (partial(store.window, "gw1", "env", "co2_ppm", start, end, 1200),
                   partial(store.window, "gw1", "env", "co2_ppm", start, end, 10_000),
                   partial(store.query, "gw1", "env", "co2_ppm", start, end, 10_001)):
            ms, answer = timed(fn, repeat)
            points = getattr(answer, "points", answer)
            if not points or points[-1][0] != end:
                bad.append(f"{kind} {label}: the answer does not end with the newest sample")
            figures += [ms, len(points)]
        rows.append([kind, f"{n:,} in {write_s:.0f} s", label, *figures])
    return rows


def newest_readable(store: Any, end: float) -> bool:
    """A server may take a moment to make what it acknowledged searchable."""
    page = store.query("gw1", "env", "co2_ppm", end - 3600, end, 1)
    return bool(page) and page[-1][0] == end


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=7.0, help="length of the stored series (default 7)")
    parser.add_argument("--rate", type=float, default=1.0, help="samples per second (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure, the best counts (default 3)")
    parser.add_argument("--stores", default="sqlite,victoriametrics,influxdb")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one day at one sample a minute")
    args = parser.parse_args()
    if args.quick:
        args.days, args.rate, args.repeat = 1.0, 1 / 60, 1
    print(machine_line(), flush=True)
    rows: list[list[object]] = []
    bad: list[str] = []
    with tempfile.TemporaryDirectory(prefix="campus-bench-window-") as tmp:
        for kind in args.stores.split(","):
            with store_server(kind, Path(tmp) / kind) as server:
                store = open_store(server.url if server else f"sqlite:///{Path(tmp) / 'points.db'}")
                try:
                    rows += measure(kind, store, args.days, args.rate, args.repeat, bad)
                finally:
                    store.close()
    print_table(f"One series, {args.rate:g} sample/s over {args.days:g} days: window() and a raw page (best of "
                f"{args.repeat}, ms)", ["store", "samples written", "window", "1,200 pts ms", "points",
                                        "10,000 pts ms", "points", "raw page ms", "points"], rows)
    print(machine_line(), flush=True)
    for problem in bad:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
