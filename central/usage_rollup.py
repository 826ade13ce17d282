"""The daily usage rollup (`usage_days`, central/usage.py `UsageDay`), kept up to date in the background.

The usage rate and the CO2-over-limit hours are sums over rooms and days of what the point store holds:
every power sample of every display and projector, every CO2 sample. Reading them per request cost
0.6 s of CPU for a week of 2,000 rooms (docs/benchmarks.md) and grew with the weeks asked for. Here each
room's local day is worked out once, from the store, into one row, and requests add rows up in SQL.

- Each round that refreshes today also rates every projector part's hours a week (`part_rates`,
  central/maintenance.py `rate_parts`; the other rounds only the parts not rated yet): the maintenance
  list's store reads, once per refresh instead of in every request.
- The same row carries the room's electricity of the day (central/energy.py: kWh from its meters'
  `energy_kwh` counters, and those outside the timetable): one job, one table, one read of the places.
- Each write recounts the written rows' room-months and room-weeks (`usage_months`, `usage_weeks`, with the
  rooms' energy of the span) and their days' totals (`usage_day_totals`; central/usage.py `recount_months`) in
  its transaction: a calendar month's or a week's report (usage or energy) adds one row a room instead of its
  days, and the district's per-day line one row a day.
- A finished day is computed once. It is computed again only when what it was counted against changed
  after it: its school's timetable was saved, or the CO2 alarm limit is another (the `co2_above` rule's
  ppm: the same limit the alarms and the history charts draw), or the room's number of meters is another
  (a row from before migration 0010 has none recorded: it is computed again once, energy included).
- Today's row (each school's local today) is a partial one, refreshed every `refresh` seconds
  (CAMPUS_USAGE_INTERVAL, default 300): it counts the periods over when it was computed.
- A day not rolled up yet (a first start, a store that caught up with an outage) is filled here, newest
  first, back to `days` days (CAMPUS_USAGE_DAYS, default 62: this month and the last whole one), at most
  `budget` seconds of work per round so the lease is renewed in between; a request never computes one
  (its report says how many room-days are `pending`).
- A past day before the first point a room's series hold (a site whose store began recording today, a
  room added since) reads nothing from the store: `fill` finds those days with a few one-point probes
  per series (`_days_before_data`) and computes them against `NO_POINTS` instead, the same row as
  the store's empty answers give, without 62 days of reads per room (17 min of CPU at 10,000 rooms before).
- Several web instances on one database (or `campus jobs` processes) each run the thread; the one holding the `usage-rollup` lease
  (Database.take_lease, as the alarm monitor) computes. A round with nothing to do still reads every
  room and the rows of `days` (0.5 s of CPU at 2,000 rooms and 62 days), so a caught-up job looks
  every TICK_S (a minute): a new room's today, or a new day, waits at most that.

CO2 is read as at most CO2_POINTS samples per sensor and day (`PointStore.window`): exact for a sensor
sending every 30 s or less often, otherwise the newest sample of each 30-second bucket (an error of at
most a bucket per crossing of the limit), which bounds the work per room at any sampling rate.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from central import alarms as alarm_engine
from central import energy, maintenance, usage
from central import timetables as tts
from central.ledger import Ledger
from central.registry import Registry
from central.store.base import Point, PointStore, Window
from central.workers import LeasedWorker

log = logging.getLogger(__name__)

REFRESH_ENV, DAYS_ENV = "CAMPUS_USAGE_INTERVAL", "CAMPUS_USAGE_DAYS"
DEFAULT_REFRESH_S = 300.0
DEFAULT_DAYS = 62
TICK_S = 60.0          # between rounds when caught up: how soon a new room or a new day is noticed
BUDGET_S = 20.0        # work per round before the lease is renewed
CO2_POINTS = 2880      # per sensor and day: one per 30 s
WRITE_BATCH = 200      # rows computed from the store per transaction
# Rows per transaction at most, days before the data included (no store read between them): each
# transaction waits for SQLite's write lock, which ingest takes many times a second. At 200 rows a
# first fill at 10,000 rooms spent most of its time waiting for it (3,100 transactions); ~0.1 s of
# writing per transaction here.
BLANK_BATCH = 5000


@dataclass(frozen=True)
class Room:
    gateway: str
    school: str
    power: tuple[str, ...]    # displays and projectors
    sensors: tuple[str, ...]  # environment sensors (CO2)
    meters: tuple[str, ...] = ()  # electricity meters (energy_kwh: central/energy.py)


def co2_limit(registry: Registry) -> float:
    """The CO2 limit the product alarms at: the `co2_above` rule's ppm (seeded from the profiles)."""
    for rule in alarm_engine.ensure_default_rules(registry):
        if rule.kind == "co2_above":
            return float(rule.params.get("ppm", alarm_engine.FALLBACK_DEFAULTS["co2_above"]["ppm"]))
    return float(alarm_engine.FALLBACK_DEFAULTS["co2_above"]["ppm"])


def day_bounds(day: date, zone: ZoneInfo) -> tuple[float, float]:
    """The local day as unix times [start, end) (23 or 25 hours across a daylight-saving change)."""
    return (datetime.combine(day, datetime.min.time(), zone).timestamp(),
            datetime.combine(day + timedelta(days=1), datetime.min.time(), zone).timestamp())


def compute_day(store: PointStore, room: Room, day: date, tt: tts.Timetable | None, limit: float, now: float,
                min_on_s: float = usage.USED_MIN_S, site_zone: ZoneInfo | None = None) -> dict[str, Any]:
    """One room's day as a `usage_days` row, as of `now` (a day not over yet counts the periods over); a
    school without a timetable has the site's zone (`site_zone`; None: the default, Asia/Shanghai)."""
    zone = tt.zone if tt else tts.site_zone_of(site_zone)
    start, end = day_bounds(day, zone)
    slots = [s for s in tts.class_periods(tt, day, day) if s.end <= now] if tt else []
    used = usage.room_periods_used(store, room.gateway, list(room.power), slots, min_on_s) if room.power else []
    stop = min(end, now)
    over: list[tuple[float, float]] = []
    if stop > start:
        for sensor in room.sensors:
            window = store.window(room.gateway, sensor, "co2_ppm", start - usage.MAX_SAMPLE_GAP_S, stop, CO2_POINTS)
            over += usage.spans_where(window.points, start, stop, lambda v: _number(v) > limit)
    kwh, off = energy.day_energy(store, room.gateway, room.meters, start, end, now, tt, day) if room.meters \
        else (None, None)
    return {"gateway": room.gateway, "day": day, "school": room.school, "periods": len(slots), "used": sum(used),
            "energy_kwh": kwh, "energy_off_kwh": off, "meter_devices": len(room.meters),
            "power_devices": len(room.power), "co2_over_s": round(sum(b - a for a, b in usage.merged(over)), 3),
            "co2_devices": len(room.sensors), "co2_limit": limit if room.sensors else None,
            "complete": now >= end, "counted_to": now, "computed_at": time.time()}


def _number(value: float | str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("-inf")  # not a reading: never over a limit


@dataclass
class Progress:
    """What one `fill` did: rows written (`blank` of them days before the room's first point, computed
    without reading the store), and whether days are still missing (the budget ran out)."""
    written: int = 0
    more: bool = False
    blank: int = 0


class _NoPoints:
    """The point store as a room's day before its first point finds it: no point in any window.
    `compute_day` reads through `query` (usage.iter_points, energy) and `window` (CO2) only."""

    def query(self, gateway: str, device: str, metric: str, start: float, end: float,
              limit: int = 0) -> list[Point]:
        return []

    def window(self, gateway: str, device: str, metric: str, start: float, end: float,
               max_points: int = 0) -> Window:
        return Window([])


NO_POINTS: Any = _NoPoints()
# How far before a day's start `compute_day` reads: a meter's last reading (energy.LOOKBACK_S), the sample
# in force at a period's or the day's start (usage.MAX_SAMPLE_GAP_S). It reads up to the day's end at most
# (a class period ends within its day; a finished day's `now` is past its end).
READ_BEFORE_S = max(energy.LOOKBACK_S, usage.MAX_SAMPLE_GAP_S)


def _days_before_data(store: PointStore, work: list[tuple[date, Room]], today: dict[str, date],
                      zones: dict[str, ZoneInfo]) -> set[tuple[str, date]]:
    """The past days of `work` (gateway, day) whose reads would find nothing: no series of the room
    (its displays' and projectors' power, its sensors' CO2, its meters' kWh) holds a point from
    READ_BEFORE_S before the oldest such day to the end of that day. `compute_day` on NO_POINTS gives their
    rows exactly. Oldest first, such days are a prefix of the room's days (the probed span only grows):
    the newest is probed first (a store that began today: one point asked per series), else a binary
    search, at most log2(days) probes per series."""
    past: dict[str, tuple[Room, list[date]]] = {}
    for day, room in work:
        if day < today[room.school]:
            past.setdefault(room.gateway, (room, []))[1].append(day)
    blank: set[tuple[str, date]] = set()
    for room, days in past.values():
        days.sort()
        zone = zones[room.school]
        lo = day_bounds(days[0], zone)[0] - READ_BEFORE_S
        series = ([(d, "power") for d in room.power] + [(d, "co2_ppm") for d in room.sensors]
                  + [(m, energy.METRIC) for m in room.meters])

        def nothing_to(day: date, room: Room = room, zone: ZoneInfo = zone, lo: float = lo,
                       series: list[tuple[str, str]] = series) -> bool:
            end = day_bounds(day, zone)[1]
            return not any(store.query(room.gateway, device, metric, lo, end, 1) for device, metric in series)

        if nothing_to(days[-1]):
            count = len(days)
        else:  # the first k days read nothing, the others something: k by bisection
            a, b = 0, len(days) - 1  # days[b] reads something
            while a < b:
                mid = (a + b) // 2
                a, b = (mid + 1, b) if nothing_to(days[mid]) else (a, mid)
            count = a
        blank.update((room.gateway, d) for d in days[:count])
    return blank


def fill(registry: Registry, ledger: Ledger, store: PointStore, *, now: float | None = None,
         days: int = DEFAULT_DAYS, refresh_today: bool = True, budget_s: float | None = None,
         min_on_s: float = usage.USED_MIN_S, stopping: Callable[[], bool] = lambda: False,
         site_zone: ZoneInfo | None = None) -> Progress:
    """Bring `usage_days` up to date as of `now`: today's row of every room (if `refresh_today`), then every
    finished day of the last `days` that is missing or stale, newest first, for at most `budget_s` seconds
    of work (None: all), or until `stopping()` (the program is stopping: what is done is written)."""
    now = time.time() if now is None else now
    started = time.monotonic()
    db = registry.db
    timetables = tts.load_all(registry)
    limit = co2_limit(registry)
    rooms = [Room(r.gateway, r.school, tuple(r.devices), tuple(sensors), tuple(r.meters))
             for r, sensors in usage.rooms_with_sensors(registry, ledger)]
    site = tts.site_zone_of(site_zone)
    zones = {r.school: timetables[r.school].zone if r.school in timetables else site for r in rooms}
    today = {school: tts.today_in(zone, now) for school, zone in zones.items()}
    oldest = min(today.values(), default=tts.today_in(site, now)) - timedelta(days=max(1, days) - 1)
    t = usage.UsageDay.__table__
    with db.read("cannot read the usage rollup") as conn:
        have = {(gw, d): (complete, computed_at, lim, school, meters)
                for gw, d, complete, computed_at, lim, school, meters in conn.execute(
                    select(t.c.gateway, t.c.day, t.c.complete, t.c.computed_at, t.c.co2_limit, t.c.school,
                           t.c.meter_devices).where(t.c.day >= oldest))}

    def stale(room: Room, day: date) -> bool:
        row = have.get((room.gateway, day))
        if row is None or not row[0] or row[3] != room.school:
            return True
        if row[4] is None or row[4] != len(room.meters):  # rolled up before energy was (0010), or a meter came
            return True
        tt = timetables.get(room.school)
        if tt is not None and tt.updated is not None and tt.updated > row[1]:
            return True
        return bool(room.sensors) and row[2] != limit

    work: list[tuple[date, Room]] = []
    for offset in range(max(1, days)):
        for room in rooms:
            day = today[room.school] - timedelta(days=offset)
            # Today: at each refresh, and at once for a room that has no row yet (just registered).
            if offset == 0 and (refresh_today or (room.gateway, day) not in have) or offset > 0 and stale(room, day):
                work.append((day, room))
    progress = Progress()
    blank = _days_before_data(store, work, today, zones)
    blank_rows: dict[tuple[str, date, int, int, int], dict[str, Any]] = {}
    # The projector parts' hours a week (central/maintenance.py): all of them with today's rows, and those
    # not rated yet in every round (a projector that reported since).
    maintenance.rate_parts(db, store, now, only_new=not refresh_today)
    batch: list[dict[str, Any]] = []
    computed = 0  # rows of the batch read from the store
    for day, room in work:
        if budget_s is not None and time.monotonic() - started > budget_s or stopping():
            progress.more = True
            break
        tt = timetables.get(room.school)
        if (room.gateway, day) in blank:
            # Without points a row depends on the gateway only by name: one computation per school, day and
            # number of each kind of device (the class periods are the costly part), a copy per room.
            key = (room.school, day, len(room.power), len(room.sensors), len(room.meters))
            if key not in blank_rows:
                blank_rows[key] = compute_day(NO_POINTS, room, day, tt, limit, now, min_on_s, site)
            batch.append({**blank_rows[key], "gateway": room.gateway, "computed_at": time.time()})
            progress.blank += 1
        else:
            batch.append(compute_day(store, room, day, tt, limit, now, min_on_s, site))
            computed += 1
        if computed >= WRITE_BATCH or len(batch) >= BLANK_BATCH:
            progress.written += _write(db, batch)
            batch, computed = [], 0
    if batch:
        progress.written += _write(db, batch)
    return progress


def _write(db: Any, rows: list[dict[str, Any]]) -> int:
    """Replace these rows (one transaction): a day computed again is the newer word; and, in the same
    transaction, their room-months' and room-weeks' sums and their days' totals (`usage_months`, 0022;
    `usage_weeks`, `usage_day_totals`, 0023: a month's or a week's report reads those)."""
    if not rows:
        return 0
    t = usage.UsageDay.__table__
    stmt = db.insert(t)
    keep = [c.name for c in t.columns if c.name not in ("gateway", "day")]
    with db.write("cannot write the usage rollup") as conn:
        conn.execute(stmt.on_conflict_do_update(index_elements=["gateway", "day"],
                                                set_={k: stmt.excluded[k] for k in keep}), rows)
        usage.recount_months(conn, ((r["gateway"], r["day"]) for r in rows))
    return len(rows)


# ---------------------------------------------------------------- the thread


def setting(env: str, default: float) -> float:
    """A positive number from the environment, else `default` (a malformed value is logged)."""
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        return max(0.0, float(raw))
    except ValueError:
        log.warning("%s=%r is not a number; using %s", env, raw, default)
        return default


class UsageRollup(LeasedWorker):
    """Keeps `usage_days` up to date from a daemon thread until stop(); see the module.

    `clock` gives the time the rollup is computed as of (tests run it in a week of their own)."""

    LEASE = "usage-rollup"

    def __init__(self, registry: Registry, ledger: Ledger, store: PointStore, refresh: float = DEFAULT_REFRESH_S,
                 days: int = DEFAULT_DAYS, tick: float = TICK_S, budget: float = BUDGET_S,
                 clock: Callable[[], float] = time.time, site_zone: ZoneInfo | None = None) -> None:
        if refresh <= 0:
            raise ValueError("the usage rollup's intervals must be positive")
        # The lease outlasts a round's work, so that a long backfill does not hand it over mid-round.
        super().__init__(registry.db, self.LEASE, interval=tick, ttl=3 * tick + budget + 60, name="usage-rollup",
                         what="usage rollup", join_s=budget + 30, release=store.release)
        self.site_zone = site_zone  # the day of a school without a timetable (`campus web --timezone`)
        self.registry, self.ledger, self.store = registry, ledger, store
        self.refresh, self.days, self.tick, self.budget, self.clock = refresh, days, tick, budget, clock
        self.caught_up = False   # the last round left no day missing
        self._refreshed = float("-inf")  # monotonic time of the last refresh of today's rows

    def round(self) -> float | None:
        refresh = time.monotonic() - self._refreshed >= self.refresh
        progress = fill(self.registry, self.ledger, self.store, now=self.clock(), days=self.days,
                        refresh_today=refresh, budget_s=self.budget, stopping=self.stopping,
                        site_zone=self.site_zone)
        if refresh:
            self._refreshed = time.monotonic()
        self.caught_up = not progress.more
        # Days still missing: the next round at once (a breath, not a tick, later).
        return min(1.0, self.tick) if progress.more else None
