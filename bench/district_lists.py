"""CPU per request of the district's lists in-process: `/district` and `GET /api/schools` (the school
rollup), at district size (issue 19; docs/benchmarks.md 11g).

Builds the district of bench/alarm_round.py (bench/dashboard.py's `Plan` and CSV straight into a central
SQLite database, every gateway live, one alarm round so the alarms are open), then calls what the views
call, as often as `--calls`, and prints the median CPU (process time) per call: the figure that holds on
a machine shared with other work, where the wall clock is mostly waiting for a core.

    python bench/district_lists.py --rooms 10000
    python bench/district_lists.py --rooms 10000 --usage   # the usage-rate report (docs/benchmarks.md 11i)

`--usage`: a timetable per school and this week's `usage_days` rows written straight (what the usage
rollup would have written: central/usage_rollup.py), then the usage-rate report's page, API and CSV.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert  # noqa: E402

from bench.alarm_round import build  # noqa: E402
from bench.common import machine_line  # noqa: E402
from bench.dashboard import ROOMS_PER_SCHOOL, Plan, timetable  # noqa: E402
from central import alarms, lists, overview  # noqa: E402
from dashboards import WebConfig, close_app, create_app  # noqa: E402


def cpu_ms(fn: Callable[[], Any], calls: int) -> tuple[float, float, float]:
    """Median, min and max CPU milliseconds of `calls` calls of `fn`."""
    out = []
    for _ in range(calls):
        c0 = time.process_time()
        fn()
        out.append((time.process_time() - c0) * 1000)
    out.sort()
    return out[len(out) // 2], out[0], out[-1]


def fill_week(registry: Any, plan: Plan) -> None:
    """A timetable per school (bench/dashboard.py's) and each room's `usage_days` row of every day of this
    week up to today, as the usage rollup writes them: six periods a weekday, some used, one room in ten
    with nothing measured."""
    from central import timetables as tts
    from central.usage import UsageDay

    today = date.today()
    doc = timetable(today)
    for school in plan.school_ids():
        tts.save(registry, tts.from_document(school, doc), "bench")
    monday = today - timedelta(days=today.weekday())
    now = time.time()
    rows = []
    for i in range(plan.rooms):
        for k in range((today - monday).days + 1):
            day = monday + timedelta(days=k)
            periods = 6 if day.weekday() < 5 else 0
            rows.append({"gateway": plan.gateway(i), "day": day, "school": plan.school(i), "periods": periods,
                         "used": (i + k) % (periods + 1), "power_devices": 0 if i % 10 == 9 else 2,
                         "co2_over_s": 0.0, "co2_devices": 1, "co2_limit": 1500.0, "complete": day < today,
                         "counted_to": now, "computed_at": now, "energy_kwh": 1.0, "energy_off_kwh": 0.1,
                         "meter_devices": 1})
    with registry.db.write("bench usage rows") as conn:
        conn.execute(insert(UsageDay.__table__), rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 rooms, 3 calls each")
    parser.add_argument("--usage", action="store_true", help="the usage-rate report instead of the school rollup")
    args = parser.parse_args(argv)
    if args.quick:
        args.rooms, args.calls = 100, 3
    schools = max(1, args.rooms // ROOMS_PER_SCHOOL)
    plan = Plan.make(args.rooms, schools, args.rooms // 100, args.rooms // 50, args.rooms // 100)
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="bench-district-") as tmp:
        url = f"sqlite:///{tmp}/central.db"
        t0 = time.perf_counter()
        registry, ledger = build(url, plan)
        alarms.evaluate(registry, ledger)
        print(f"built {args.rooms} rooms in {schools} schools in {time.perf_counter() - t0:.1f} s")
        db = registry.db
        if args.usage:
            fill_week(registry, plan)
            print(f"timetables and this week's usage rows written; load average {os.getloadavg()[0]:.2f}")
        cases: dict[str, Callable[[], Any]] = {} if args.usage else {
            "school rollup in SQL, first page": lambda: overview.school_rollup(registry),
            "school rollup in SQL, sort=-alarms": lambda: overview.school_rollup(registry, sort="alarms",
                                                                                  descending=True),
            "school rollup in SQL, q=s0": lambda: overview.school_rollup(registry, lists.Paging(q="s0")),
        }
        snapshots = getattr(lists, "BoardSnapshots", None)
        if not args.usage and snapshots is not None and hasattr(lists, "school_snapshot"):
            snaps = snapshots(ttl=3600)
            cases["snapshot read (once per CAMPUS_BOARD_CACHE_S)"] = lambda: lists.school_snapshot(db)
            cases["school rollup from the snapshot, first page"] = lambda: overview.school_rollup(
                registry, snapshots=snaps)
            cases["school rollup from the snapshot, sort=-alarms"] = lambda: overview.school_rollup(
                registry, sort="alarms", descending=True, snapshots=snaps)
            cases["school rollup from the snapshot, offset=20 problems"] = lambda: overview.school_rollup(
                registry, lists.Paging(limit=20, offset=20), problems_only=True, snapshots=snaps)
            assert overview.school_rollup(registry, snapshots=snaps) == overview.school_rollup(registry)
        # The requests as the web process answers them (the test client: routing, the bearer's lookup, the
        # page's template), its background threads off, the snapshot's `ttl` as deployed unless 0.
        for name in ("CAMPUS_ALARM_INTERVAL", "CAMPUS_SCHEDULE_INTERVAL", "CAMPUS_ATTENDANCE_INTERVAL",
                     "CAMPUS_USAGE_INTERVAL"):
            os.environ[name] = "0"
        app = create_app(WebConfig(store_url=f"sqlite:///{tmp}/points.db", db_url=url))
        registry.add_user("bench-admin", "bench-admin-password", "admin")
        bearer = {"Authorization": f"Bearer {registry.issue_token('bench-admin')}"}
        web = app.test_client()
        paths = (("/health/usage-rate", "/api/usage", "/api/usage?limit=100&offset=200",
                  f"/health/usage-rate?school={plan.school(0)}", f"/api/usage?school={plan.school(0)}",
                  "/health/usage-rate.csv") if args.usage else
                 ("/api/schools", "/api/schools?sort=-alarms", "/district", "/district?sort=-offline&problems=1"))
        sizes: dict[str, int] = {}
        for path in paths:
            def request(path: str = path) -> None:
                resp = web.get(path, headers=bearer)
                assert resp.status_code == 200, (path, resp.status_code)
                sizes[path] = len(resp.data)

            how = "" if args.usage else f" ({'snapshot' if hasattr(lists, 'school_snapshot') else 'SQL'})"
            cases[f"GET {path}{how}"] = request
        for name, fn in cases.items():
            med, low, high = cpu_ms(fn, args.calls)
            size = next((f", {sizes[p] / 1000:.0f} KB" for p in sizes if name == f"GET {p}"), "")
            print(f"{name}: CPU median {med:.2f} ms (min {low:.2f}, max {high:.2f}){size}", flush=True)
        print(f"load average {os.getloadavg()[0]:.2f}")
        close_app(app)
        ledger.close()
        db.engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
