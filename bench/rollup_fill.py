"""The usage rollup's first fill at district size, in-process (issue 19, docs/benchmarks.md 11h).

A site whose store began recording today (bench/dashboard.py's district on its first start): the district
of bench/alarm_round.py (the `Plan` and CSV of bench/dashboard.py straight into a central SQLite database,
every gateway reported once), a timetable per school, and a few samples of today per room in the SQLite
point store (the same file). Then `usage_rollup.fill` as a first start runs it (every room's last `--days`
days, no budget): CPU (process time), wall, rows written and how many of them were days before the room's
first point (written without reading the store). `--every-read` turns that shortcut off (the code before
it): give fewer `--days` there, it costs ~1.6 ms of CPU a room-day.

    python bench/rollup_fill.py --rooms 10000
    python bench/rollup_fill.py --rooms 10000 --days 4 --every-read
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from bench.alarm_round import build  # noqa: E402
from bench.common import machine_line  # noqa: E402
from bench.dashboard import ROOMS_PER_SCHOOL, Plan, timetable  # noqa: E402
from central import timetables as tts  # noqa: E402
from central import usage_rollup as rollup  # noqa: E402
from central.store import open_store  # noqa: E402
from central.store.base import Sample  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=2000)
    parser.add_argument("--days", type=int, default=rollup.DEFAULT_DAYS, help="days to fill (default 62)")
    parser.add_argument("--every-read", action="store_true", help="read every day from the store (the code "
                        "before the shortcut for days before a room's first point)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 rooms")
    args = parser.parse_args(argv)
    if args.quick:
        args.rooms = 100
    schools = max(1, args.rooms // ROOMS_PER_SCHOOL)
    plan = Plan.make(args.rooms, schools, args.rooms // 100, args.rooms // 50, args.rooms // 100)
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-rollup-fill-") as tmp:
        url = f"sqlite:///{tmp}/central.db"
        t0 = time.perf_counter()
        registry, ledger = build(url, plan)
        doc = timetable(date.today())
        for school in plan.school_ids():
            tts.save(registry, tts.from_document(school, doc), "bench")
        store = open_store(url)
        now = time.time()
        samples = []
        for i in range(plan.rooms):
            school, gw = plan.school(i), plan.gateway(i)
            for k in range(6):  # half an hour of today, every 5 minutes
                ts = now - 1800 + 300 * k
                samples += [Sample(school, gw, "env", "environment", ts, {"co2_ppm": 600 + i % 400}),
                            Sample(school, gw, "projector", "projector", ts, {"power": "on" if i % 5 == 0 else "off"}),
                            Sample(school, gw, "display", "display", ts, {"power": "off"}),
                            Sample(school, gw, "meter", "meter", ts, {"energy_kwh": 1000.0 + i + k / 10})]
            if len(samples) >= 20000:
                store.write(samples)
                samples = []
        store.write(samples)
        print(f"built {args.rooms} rooms in {schools} schools, today's samples in the store, in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        if args.every_read:
            rollup._days_before_data = lambda *_a: set()  # the code before: every day read from the store
        load = psutil.getloadavg()[0]
        c0, w0 = time.process_time(), time.perf_counter()
        progress = rollup.fill(registry, ledger, store, now=now, days=args.days)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        print(f"fill of {args.days} days x {args.rooms} rooms ({'every day read' if args.every_read else 'as is'}): "
              f"{cpu:.1f} s CPU, {wall:.1f} s wall; {progress.written} rows, {progress.blank} of them before the "
              f"first point; {1000 * cpu / max(1, progress.written):.3f} ms CPU a row; load average "
              f"{load:.1f} -> {psutil.getloadavg()[0]:.1f}", flush=True)
        store.close()
        ledger.close()
        registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
