"""CPU per request of the district's lists in-process: `/district` and `GET /api/schools` (the school
rollup), at district size (issue 19; docs/benchmarks.md 11g).

Builds the district of bench/alarm_round.py (bench/dashboard.py's `Plan` and CSV straight into a central
SQLite database, every gateway live, one alarm round so the alarms are open), then calls what the views
call, as often as `--calls`, and prints the median CPU (process time) per call: the figure that holds on
a machine shared with other work, where the wall clock is mostly waiting for a core.

    python bench/district_lists.py --rooms 10000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.alarm_round import build  # noqa: E402
from bench.common import machine_line  # noqa: E402
from bench.dashboard import ROOMS_PER_SCHOOL, Plan  # noqa: E402
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 rooms, 3 calls each")
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
        cases: dict[str, Callable[[], Any]] = {
            "school rollup in SQL, first page": lambda: overview.school_rollup(registry),
            "school rollup in SQL, sort=-alarms": lambda: overview.school_rollup(registry, sort="alarms",
                                                                                  descending=True),
            "school rollup in SQL, q=s0": lambda: overview.school_rollup(registry, lists.Paging(q="s0")),
        }
        snapshots = getattr(lists, "BoardSnapshots", None)
        if snapshots is not None and hasattr(lists, "school_snapshot"):
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
        for path in ("/api/schools", "/api/schools?sort=-alarms", "/district", "/district?sort=-offline&problems=1"):
            def request(path: str = path) -> None:
                resp = web.get(path, headers=bearer)
                assert resp.status_code == 200, (path, resp.status_code)

            cases[f"GET {path} ({'snapshot' if hasattr(lists, 'school_snapshot') else 'SQL'})"] = request
        for name, fn in cases.items():
            med, low, high = cpu_ms(fn, args.calls)
            print(f"{name}: CPU median {med:.2f} ms (min {low:.2f}, max {high:.2f})")
        close_app(app)
        ledger.close()
        db.engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
