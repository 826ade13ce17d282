"""What a register, a school's weekly summary and a retention round cost (issue 22, docs/benchmarks.md).

Builds one school straight into a central SQLite database in a temp dir: `--classes` classes of
`--students` students, each class in its own room with a gateway; a timetable of 8 periods on weekdays;
`--days` school days of swipes (each student once a period, 5% absent, 10% late, 10% swiping twice) by
one `Ledger.record` per day. Then times: one room's register of a day, the school summary over `--weeks`
weeks (every room's registers, computed), and the retention round that reduces every day to counts and
deletes its swipes. The summary three ways: every register computed (what it cost before finished days
were kept as counts), the first call (which computes and keeps them) and the next ones. CPU (process time)
and wall, median of `--rounds`.

    python bench/attendance.py
    python bench/attendance.py --classes 40 --students 45 --days 60 --weeks 12
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from zoneinfo import ZoneInfo

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_line  # noqa: E402
from central import attendance as att  # noqa: E402
from central import timetables as tts  # noqa: E402
from central.ledger import Ledger, Sequenced  # noqa: E402
from central.registry import Registry  # noqa: E402
from protocols.card_ids import card_hash  # noqa: E402

ZONE = ZoneInfo("Asia/Shanghai")
PERIODS = [(dtime(8 + n, 0), dtime(8 + n, 45)) for n in range(8)]


def build(url: str, classes: int, students: int, days: int) -> tuple[Registry, Ledger, date]:
    """The school, its roster and timetable, and `days` weekdays of swipes ending yesterday; the last day."""
    registry, ledger = Registry(url), Ledger(url)
    for c in range(classes):
        registry.register_gateway(f"gw-{c:03d}", "s1", str(100 + c), "A")
    tts.save(registry, tts.Timetable("s1", "Asia/Shanghai", tuple(
        tts.Period(w, n + 1, start, end) for w in range(1, 6) for n, (start, end) in enumerate(PERIODS))))
    lines = ["name,class,card,room"] + [f"S{c}-{s},C{c},{(c * 1000 + s + 1):08X},{100 + c}"
                                        for c in range(classes) for s in range(students)]
    report = att.import_roster(registry, "s1", "\n".join(lines).encode(), "bench")
    assert report.ok, report.errors[:3]
    secret = registry.card_secret("s1")
    cards = {(c, s): card_hash(secret, f"{(c * 1000 + s + 1):08X}") for c in range(classes) for s in range(students)}
    rng = random.Random(7)
    day, school_days, seq = date.today() - timedelta(days=1), [], {c: 0 for c in range(classes)}
    while len(school_days) < days:
        if day.isoweekday() <= 5:
            school_days.append(day)
        day -= timedelta(days=1)
    for day in sorted(school_days):
        batch = []
        for c in range(classes):
            for start, _end in PERIODS:
                begin = datetime.combine(day, start, ZONE).timestamp()
                for s in range(students):
                    roll = rng.random()
                    if roll < 0.05:
                        continue
                    ts = begin + (rng.uniform(360, 1200) if roll < 0.15 else rng.uniform(-300, 200))
                    for again in range(2 if roll > 0.9 else 1):
                        seq[c] += 1
                        batch.append(Sequenced("s1", f"gw-{c:03d}", "cards", seq[c], ts + 3 * again,
                                               event=("card_swipe", {"card": cards[(c, s)], "reader": "r"})))
        ledger.record(batch, [], [])
    return registry, ledger, max(school_days)


def timed(fn, rounds: int) -> tuple[float, float]:  # noqa: ANN001 - any callable
    cpu, wall = [], []
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu) * 1000, statistics.median(wall) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=30)
    parser.add_argument("--students", type=int, default=45)
    parser.add_argument("--days", type=int, default=20, help="school days of swipes")
    parser.add_argument("--weeks", type=int, default=4, help="weeks of the summary")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a small school, one round (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.classes, args.students, args.days, args.weeks, args.rounds = 3, 10, 5, 1, 1
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'central.db'}"
        t0 = time.perf_counter()
        registry, ledger, last = build(url, args.classes, args.students, args.days)
        swipes = args.classes * args.students * len(PERIODS) * args.days
        print(f"built {args.classes} classes x {args.students} students, {args.days} days (~{swipes:,} swipes) "
              f"in {time.perf_counter() - t0:.1f} s")
        now = time.time()
        first = last - timedelta(weeks=args.weeks) + timedelta(days=1)
        rows = [("one room's register of a day", timed(
                    lambda: att.register(registry, "s1", "100", last, now=now), args.rounds)),
                (f"school summary, {args.weeks} weeks, every register computed (cache=False)", timed(
                    lambda: att.summary(registry, "s1", first, last, now=now, cache=False), args.rounds)),
                (f"school summary, {args.weeks} weeks, first (computes, keeps finished days' counts)", timed(
                    lambda: att.summary(registry, "s1", first, last, now=now), 1)),
                (f"school summary, {args.weeks} weeks, from kept counts", timed(
                    lambda: att.summary(registry, "s1", first, last, now=now), args.rounds))]
        assert att.summary(registry, "s1", first, last, now=now) == att.summary(registry, "s1", first, last, now=now,
                                                                                cache=False)
        att.save_settings(registry, "s1", "5", "7", "bench")
        later = now + 400 * 86400  # every day past its retention
        c0, w0 = time.process_time(), time.perf_counter()
        reduced = 0
        while (n := att.apply_retention(registry, now=later)) > 0:
            reduced += n
        rows.append((f"retention: {reduced} calendar days reduced to counts", ((time.process_time() - c0) * 1000,
                                                                     (time.perf_counter() - w0) * 1000)))
        print("| what | CPU ms | wall ms |\n|---|---:|---:|")
        for what, (cpu, wall) in rows:
            print(f"| {what} | {cpu:,.1f} | {wall:,.1f} |")
        print(machine_line())
        registry.close()
        ledger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
