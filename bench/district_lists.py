"""CPU per request of the district's lists in-process: `/district` and `GET /api/schools` (the school
rollup), at district size (issue 19; docs/benchmarks.md 11g); with `--energy` the energy pages, with
`--maintenance` the maintenance list (`/health/maintenance`, `/api/maintenance`) and the usage rollup's
rating round it reads, instead.

Builds the district of bench/alarm_round.py (bench/dashboard.py's `Plan` and CSV straight into a central
SQLite database, every gateway live, one alarm round so the alarms are open), then calls what the views
call, as often as `--calls`, and prints the median CPU (process time) per call: the figure that holds on
a machine shared with other work, where the wall clock is mostly waiting for a core.

    python bench/district_lists.py --rooms 10000
    python bench/district_lists.py --rooms 10000 --energy
    python bench/district_lists.py --rooms 10000 --maintenance
    python bench/district_lists.py --rooms 10000 --usage
    python bench/district_lists.py --rooms 10000 --usage --month
    python bench/district_lists.py --rooms 10000 --energy --exports [energy.xlsx] --keep FILE

`--energy`: the usage rollup's rows of this week and the last (every room metered, kWh and kWh outside the
timetable made up per room and day, written straight into `usage_days` as the rollup would), then
`/health/energy`, `GET /api/energy` and `GET /api/energy/left-on?limit=20` (issue 19's targets).
`--usage`: a timetable per school and this week's `usage_days` rows written straight (what the usage
rollup would have written: central/usage_rollup.py), then the usage-rate report's page, API and CSV; with
`--month` last calendar month's rows too, and that month's report (`?month=YYYY-MM`) instead of the CSV.
`--usage` also asks `/health/usage` (the week's hours on per device, read from the point store for a page of
50 rooms): the store holds the last hour of the page's projectors and displays, a `power` sample every 30 s
(as bench/dashboard.py's gateways publish them, a few minutes' worth there).
`--exports [TEXT]` (with `--energy`): the district-wide downloads instead (the energy, usage-rate and maintenance
CSV and XLSX, or those whose path contains TEXT), each read to its end as a client would: CPU per download and
the process's RSS before the first, after it and after the last (what the web keeps after a download; the
district's download of 10,000 rooms is what grew the web to 433-459 MB in §11l and §11o), and the peak.
Run one download per process (`--exports energy.xlsx`) for RSS figures that are that download's alone.
`--served` (with `--exports`): the same downloads from a real `campus web --no-jobs` (gunicorn, a Mosquitto beside
it) over HTTP instead: the web's CPU per download and its RSS (arbiter + worker) before and after, as deployed.
`--keep FILE`: build the district into FILE, or use it if it exists (before and after on the same data).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert  # noqa: E402

from bench.alarm_round import build  # noqa: E402
from bench.common import machine_line  # noqa: E402
from bench.dashboard import ROOMS_PER_SCHOOL, Plan, timetable  # noqa: E402
from central import alarms, lists, maintenance, overview  # noqa: E402
from central.ledger import Ledger  # noqa: E402
from central.registry import Registry  # noqa: E402
from central.timetables import DEFAULT_TIMEZONE, today_in  # noqa: E402
from central.usage import UsageDay  # noqa: E402
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


def school_cases(cases: dict[str, Callable[[], Any]], registry: Any) -> None:
    """The school rollup in SQL and, where this tree has it, from the snapshot (11g)."""
    db = registry.db
    cases["school rollup in SQL, first page"] = lambda: overview.school_rollup(registry)
    cases["school rollup in SQL, sort=-alarms"] = lambda: overview.school_rollup(registry, sort="alarms",
                                                                                 descending=True)
    cases["school rollup in SQL, q=s0"] = lambda: overview.school_rollup(registry, lists.Paging(q="s0"))
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


def maintenance_cases(cases: dict[str, Callable[[], Any]], registry: Any, tmp: str) -> Any:
    """The rollup's rating round (every part: a refresh; only new ones: every other round), the list worked
    out whole and a page of it as `maintenance.page` answers it (the rollup's lines where this tree keeps
    them). Every projector reports `lamp_hours` (bench/alarm_round.py); the store holds no hours, so each
    part is read from it and gets no rate, as in 11f-11g. Returns the store (closed by the caller)."""
    from central.store.sqlite import SqlitePointStore

    db = registry.db
    store = SqlitePointStore(f"{tmp}/points.db")
    t0 = time.process_time()
    rated = maintenance.rate_parts(db, store)
    print(f"first rating round: {rated} parts, {(time.process_time() - t0) * 1000:.0f} ms CPU")
    every = maintenance.parts(db, store)
    first = maintenance.page(db, store, lists.Paging(limit=100))
    assert (first.items, first.total) == (every[:100], len(every)), "the page is not the list's first 100"
    cases["rating round, every part (each refresh)"] = lambda: maintenance.rate_parts(db, store)
    cases["rating round, only new parts (every other round)"] = lambda: maintenance.rate_parts(db, store,
                                                                                                only_new=True)
    cases["list worked out whole, first 100"] = lambda: maintenance.parts(db, store)[:100]
    cases["maintenance.page, first 100"] = lambda: maintenance.page(db, store, lists.Paging(limit=100))
    return store


def fill_week(registry: Any, plan: Plan, month: bool = False) -> None:
    """A timetable per school (bench/dashboard.py's) and each room's `usage_days` row of every day of this
    week up to today, as the usage rollup writes them: six periods a weekday, some used, one room in ten
    with nothing measured. `month`: every day of the last calendar month too (a month report's rows: 300,000
    at 10,000 rooms), as a site keeps them (the rollup keeps 62 days)."""
    from central import timetables as tts
    from central import usage

    today = today_in(ZoneInfo(DEFAULT_TIMEZONE))  # the rollup's today (the schools' zone), not the host's
    doc = timetable(today)
    for school in plan.school_ids():
        tts.save(registry, tts.from_document(school, doc), "bench")
    monday = today - timedelta(days=today.weekday())
    days = {monday + timedelta(days=k) for k in range((today - monday).days + 1)}
    if month:
        first = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
        days |= {first + timedelta(days=k) for k in range((today.replace(day=1) - first).days)}
    now = time.time()
    rows = []
    for i in range(plan.rooms):
        for day in sorted(days):
            k = (day - monday).days
            periods = 6 if day.weekday() < 5 else 0
            rows.append({"gateway": plan.gateway(i), "day": day, "school": plan.school(i), "periods": periods,
                         "used": (i + k) % (periods + 1), "power_devices": 0 if i % 10 == 9 else 2,
                         "co2_over_s": 0.0, "co2_devices": 1, "co2_limit": 1500.0, "complete": day < today,
                         "counted_to": now, "computed_at": now, "energy_kwh": 1.0, "energy_off_kwh": 0.1,
                         "meter_devices": 1})
    with registry.db.write("bench usage rows") as conn:
        for k in range(0, len(rows), 5000):
            conn.execute(insert(UsageDay.__table__), rows[k:k + 5000])
        if hasattr(usage, "recount_months"):  # the rollup's month sums of the rows written (migration 0022)
            usage.recount_months(conn, {(r["gateway"], r["day"]) for r in rows})


def power_points(db: Any, store_url: str, rooms: int = 50) -> int:
    """The last hour of `power` samples (every 30 s, on and off in turn) of the projector and display of the
    first `rooms` rooms of `/health/usage`'s first page (by school, then id), written into the point store
    that page reads: how many samples."""
    from central.store import open_store
    from central.store.base import Sample

    page = lists.gateway_ids(db, lists.Paging(limit=rooms))
    now = time.time()
    samples = [Sample("", gw, device, device, now - 3600 + 30 * k, {"power": "on" if (k // 20) % 2 else "off"})
               for gw in page.items for device in ("projector", "display") for k in range(120)]
    store = open_store(store_url)
    try:
        store.write(samples)
    finally:
        store.close()
    return len(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 rooms, 3 calls each")
    parser.add_argument("--usage", action="store_true", help="the usage-rate report instead of the school rollup")
    parser.add_argument("--month", action="store_true", help="with --usage: last calendar month's rows too, and "
                        "the month's report (`?month=YYYY-MM`)")
    parser.add_argument("--energy", action="store_true", help="the energy pages (a fortnight of rollup rows)")
    parser.add_argument("--maintenance", action="store_true",
                        help="the maintenance list and the rollup's rating round instead of the school rollup")
    parser.add_argument("--exports", nargs="?", const="", metavar="TEXT",
                        help="with --energy: the district-wide downloads (those whose path contains TEXT) instead")
    parser.add_argument("--served", action="store_true", help="with --exports: from a real `campus web` over HTTP")
    parser.add_argument("--keep", metavar="FILE", help="build the district into this SQLite file, or use it if it "
                        "exists (runs before and after a change on the same data)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rooms, args.calls = 100, 3
    schools = max(1, args.rooms // ROOMS_PER_SCHOOL)
    plan = Plan.make(args.rooms, schools, args.rooms // 100, args.rooms // 50, args.rooms // 100)
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="bench-district-") as tmp:
        url = f"sqlite:///{args.keep or f'{tmp}/central.db'}"
        t0 = time.perf_counter()
        kept = bool(args.keep) and Path(args.keep).exists()
        if kept:
            registry, ledger = Registry(url), Ledger(url)
        else:
            registry, ledger = build(url, plan)
            alarms.evaluate(registry, ledger)
        print(f"{'opened' if kept else 'built'} {args.rooms} rooms in {schools} schools in "
              f"{time.perf_counter() - t0:.1f} s")
        db = registry.db
        cases: dict[str, Callable[[], Any]] = {}
        if args.maintenance:
            store = maintenance_cases(cases, registry, tmp)
        elif args.usage:
            if not kept:
                fill_week(registry, plan, month=args.month)
            what = "this week's and last month's" if args.month else "this week's"
            print(f"timetables and {what} usage rows written; load average {os.getloadavg()[0]:.2f}")
            print(f"{power_points(db, f'sqlite:///{tmp}/points.db')} power samples in the point store")
        elif not args.energy:
            school_cases(cases, registry)
        # The requests as the web process answers them (the test client: routing, the bearer's lookup, the
        # page's template), its background threads off, the snapshot's `ttl` as deployed unless 0.
        for name in ("CAMPUS_ALARM_INTERVAL", "CAMPUS_SCHEDULE_INTERVAL", "CAMPUS_ATTENDANCE_INTERVAL",
                     "CAMPUS_USAGE_INTERVAL"):
            os.environ[name] = "0"
        app = create_app(WebConfig(store_url=f"sqlite:///{tmp}/points.db", db_url=url))
        if not kept:
            registry.add_user("bench-admin", "bench-admin-password", "admin")
        bearer = {"Authorization": f"Bearer {registry.issue_token('bench-admin')}"}
        web = app.test_client()
        sizes: dict[str, int] = {}
        paths: tuple[str, ...] = ("/api/schools", "/api/schools?sort=-alarms", "/district",
                                  "/district?sort=-offline&problems=1")
        how = f" ({'snapshot' if hasattr(lists, 'school_snapshot') else 'SQL'})"
        if args.maintenance:
            paths = ("/api/maintenance?limit=100", "/health/maintenance", "/api/maintenance?within=50&due=1&limit=100",
                     "/api/maintenance?q=s00&limit=100", "/api/maintenance?limit=100&offset=5000")
            how = f" ({'lines' if hasattr(maintenance, 'FALLBACKS') else 'whole'})"
        elif args.usage:
            paths = ("/health/usage", "/health/usage-rate", "/api/usage", "/api/usage?limit=100&offset=200",
                     f"/health/usage-rate?school={plan.school(0)}", f"/api/usage?school={plan.school(0)}",
                     "/health/usage-rate.csv")
            if args.month:
                today = today_in(ZoneInfo(DEFAULT_TIMEZONE))
                month = f"?month={(today.replace(day=1) - timedelta(days=1)):%Y-%m}"
                paths = (f"/health/usage-rate{month}", f"/api/usage{month}", f"/api/usage{month}&limit=100&offset=200",
                         f"/health/usage-rate{month}&school={plan.school(0)}", f"/api/usage{month}&school={plan.school(0)}",
                         "/health/usage", "/health/usage-rate", "/api/usage")
            how = ""
        elif args.energy:
            t0 = time.perf_counter()
            if not kept:
                print(f"{energy_rows(db)} usage_days rows in {time.perf_counter() - t0:.1f} s")
            paths = ("/health/energy", "/api/energy", "/api/energy/left-on?limit=20",
                     f"/health/energy?school={plan.school_ids()[1]}", f"/api/energy?offset={args.rooms // 2}")
            how = ""
            if args.exports is not None and args.served:
                store = served_exports(registry, url, tmp, args.calls, args.exports)
                paths = ()
            elif args.exports is not None:
                store = export_cases(cases, registry, tmp, web, bearer, args.calls, args.exports)
                paths = ()
        for path in paths:
            def request(path: str = path) -> None:
                resp = web.get(path, headers=bearer)
                assert resp.status_code == 200, (path, resp.status_code)
                sizes[path] = len(resp.data)

            cases[f"GET {path}{how}"] = request
        for name, fn in cases.items():
            med, low, high = cpu_ms(fn, args.calls)
            size = next((f", {sizes[p] / 1024:.0f} KB" for p in sizes if name.split(" (")[0] == f"GET {p}"), "")
            print(f"{name}: CPU median {med:.2f} ms (min {low:.2f}, max {high:.2f}){size}")
        if args.maintenance and hasattr(maintenance, "FALLBACKS"):
            print(f"parts the list computed itself: {maintenance.FALLBACKS.parts} in {maintenance.FALLBACKS.lists} lists")
        close_app(app)
        if args.maintenance or (args.energy and args.exports is not None):
            store.close()
        ledger.close()
        db.engine.dispose()
    return 0


EXPORTS = ("/health/energy.xlsx", "/health/energy.csv", "/health/usage-rate.xlsx", "/health/usage-rate.csv",
           "/health/maintenance.xlsx?within=52", "/health/maintenance.csv?within=52")


def export_cases(cases: dict[str, Callable[[], Any]], registry: Any, tmp: str, web: Any, bearer: dict[str, str],
                 calls: int, only: str) -> Any:
    """Times the district-wide downloads itself (`cases` is left empty): per download the CPU of each call (the
    body read to its end, chunk by chunk, as a client reads it), the file's size, and the process's RSS before
    the first call, after it and after the last; then the peak RSS (`ru_maxrss`). The maintenance files need the
    rollup's rating round first (one round, not timed). Returns the point store (closed by the caller)."""
    import resource

    import openpyxl  # noqa: F401  (imported by the first XLSX in the web too: not a download's memory)
    import psutil

    from central.store.sqlite import SqlitePointStore

    store = SqlitePointStore(f"{tmp}/points.db")
    maintenance.rate_parts(registry.db, store)
    me = psutil.Process()

    def rss() -> float:
        return me.memory_info().rss / 2**20

    def fetch(path: str) -> int:
        # In a thread of its own, as gunicorn's gthread worker answers a request in a pool thread: glibc gives
        # such a thread a malloc arena of its own, and what a download leaves in it is what the web keeps.
        size: list[int] = []

        def get() -> None:
            resp = web.get(path, headers=bearer, buffered=False)
            assert resp.status_code == 200, (path, resp.status_code)
            size.append(sum(len(chunk) for chunk in resp.response))
            resp.close()

        thread = threading.Thread(target=get)
        thread.start()
        thread.join()
        assert size, f"GET {path} failed"
        return size[0]

    for path in EXPORTS:
        if only not in path:
            continue
        before = rss()
        cpu, size, after_first = [], 0, 0.0
        for k in range(calls):
            c0 = time.process_time()
            size = fetch(path)
            cpu.append(time.process_time() - c0)
            if k == 0:
                after_first = rss()
        cpu.sort()
        print(f"GET {path}: CPU median {cpu[len(cpu) // 2]:.2f} s (min {cpu[0]:.2f}, max {cpu[-1]:.2f}), "
              f"{size / 1024:.0f} KB; RSS {before:.0f} MB before, {after_first:.0f} after the first, "
              f"{rss():.0f} after {calls}; load average {os.getloadavg()[0]:.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the process (ru_maxrss): {peak:.0f} MB")
    return store


def served_exports(registry: Any, url: str, tmp: str, calls: int, only: str) -> Any:
    """`export_cases` from a real `campus web --no-jobs` (the deployed gunicorn worker, its pool threads): each
    download `calls` times over one kept-alive connection, the body read to its end; the web's CPU per download
    (arbiter and worker, from /proc) and its RSS before the first, after it and after the last. Returns the
    point store (closed by the caller)."""
    import http.client
    import secrets

    import psutil

    from bench.common import CampusProcess, broker, wait_until
    from campus.net import free_port
    from central.store.sqlite import SqlitePointStore

    store = SqlitePointStore(f"{tmp}/points.db")
    maintenance.rate_parts(registry.db, store)
    token, port = secrets.token_urlsafe(24), free_port()
    with broker(Path(tmp) / "mq") as mq:
        web = CampusProcess(["web", "--mqtt", mq.url, "--store", f"sqlite:///{tmp}/points.db", "--db", url,
                             "--http-port", str(port), f"--admin-token={token}", "--no-jobs"], Path(tmp) / "web.log")
        web.start()
        try:
            web.wait_listening(port, timeout=60)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

            def fetch(path: str) -> int:
                conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
                resp = conn.getresponse()
                size = 0
                while chunk := resp.read(65536):
                    size += len(chunk)
                assert resp.status == 200, (path, resp.status)
                return size

            wait_until(lambda: fetch("/api/health") > 0, 60, message="campus web answering")
            root = psutil.Process(web.proc.pid)  # type: ignore[union-attr]

            def tree() -> list[Any]:
                return [root, *root.children(recursive=True)]

            def rss() -> float:
                fetch("/api/health")  # after the last download's response was closed (its on-close hooks run)
                return sum(p.memory_info().rss for p in tree()) / 2**20

            def cpu() -> float:
                return sum(sum(p.cpu_times()[:2]) for p in tree())

            print(f"campus web (arbiter + {len(tree()) - 1} worker) RSS {rss():.0f} MB at start")
            for path in EXPORTS:
                if only not in path:
                    continue
                before, took, size, after = rss(), [], 0, []
                for _ in range(calls):
                    c0 = cpu()
                    size = fetch(path)
                    took.append(cpu() - c0)
                    after.append(rss())
                took.sort()
                print(f"GET {path} (campus web): CPU median {took[len(took) // 2]:.2f} s (min {took[0]:.2f}, max "
                      f"{took[-1]:.2f}), {size / 1024:.0f} KB; web RSS {before:.0f} MB before, {after[0]:.0f} "
                      f"after the first, {after[-1]:.0f} after {calls} (each: {' '.join(f'{r:.0f}' for r in after)}); "
                      f"load average {os.getloadavg()[0]:.2f}")
            conn.close()
        finally:
            web.stop()
    return store


def energy_rows(db: Any) -> int:
    """This week's and last week's rollup rows of every gateway with a meter, as `usage_rollup` writes
    them (today's incomplete), the kWh made up from the gateway's number: how many were written."""
    from datetime import timedelta

    from sqlalchemy import insert, text

    with db.read("bench") as conn:
        gateways = list(conn.execute(text("SELECT id, school_id FROM registered_gateways ORDER BY id")))
    today = today_in(ZoneInfo(DEFAULT_TIMEZONE))  # the rollup's today (the schools' zone), not the host's
    monday = today - timedelta(days=today.weekday() + 7)
    rows = []
    for i, (gw, school) in enumerate(gateways):
        for d in range((today - monday).days + 1):
            day = monday + timedelta(days=d)
            kwh = round(2 + (i % 37) * 0.31 + d * 0.07, 6)
            rows.append({"gateway": gw, "day": day, "school": school, "periods": 8, "used": 4, "power_devices": 1,
                         "co2_over_s": 0.0, "co2_devices": 1, "co2_limit": 1000.0, "complete": day < today,
                         "counted_to": time.time(), "computed_at": time.time(), "energy_kwh": kwh,
                         "energy_off_kwh": round(kwh * ((i * 7 + d) % 11) / 20, 6), "meter_devices": 1})
    from central import usage

    with db.write("bench") as conn:
        for k in range(0, len(rows), 5000):
            conn.execute(insert(UsageDay.__table__), rows[k:k + 5000])
        if hasattr(usage, "recount_months"):  # the rollup's month sums of the rows written (migration 0022)
            usage.recount_months(conn, {(r["gateway"], r["day"]) for r in rows})
    return len(rows)


if __name__ == "__main__":
    raise SystemExit(main())
