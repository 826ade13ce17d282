"""Electricity per room, building, school and day, and what was used outside the timetable (issue 21).

A classroom's meter (DL/T 645 or Modbus, kind `meter`) reports `energy_kwh`, a counter. A room's kWh of a
day is the increase of its meters' counters (campus/counters.py: a reading lower than the one before is a
reset, never a negative step), worked out once per room and local day by the usage rollup
(central/usage_rollup.py) into the same `usage_days` row as the usage rate (`energy_kwh`,
`energy_off_kwh`, `meter_devices`), so that no page, report or API call reads the point store.

Each step between two readings is counted in the day, and inside or outside the timetable, of the reading
that ends it. Agents keep what they measured while offline and send it later (edge_agent's outbox), so
readings are as frequent as the meter is polled (a minute in the shipped configs): a step is placed to
within a poll. The day's first step starts at the last reading before midnight (looked back at most
LOOKBACK_S), so the kWh of consecutive days add up to the counter's increase over them.

"Outside the timetable" is the time outside the school day's class periods: before its first period,
after its last, and whole days without periods (weekends, holidays, days outside term). The breaks
between periods count as school time: a projector left on over lunch is not equipment left on. A school
without a timetable has no school time: its outside kWh is unknown (None), not all of it.

The tariff (yuan per kWh) is the site's (`campus web --tariff`, CAMPUS_TARIFF; DEFAULT_TARIFF otherwise):
money is shown, never stored, so a new tariff applies to every past day at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any

from sqlalchemy import func, literal, select

from campus import counters
from central import lists
from central import timetables as tts
from central.db import Database
from central.store.base import PointStore

METRIC = "energy_kwh"
LOOKBACK_S = 2 * 86400.0  # how far before a day its meters' last reading is looked for
TARIFF_ENV = "CAMPUS_TARIFF"
DEFAULT_TARIFF = 0.6      # yuan per kWh: a typical Chinese school (non-residential) rate
MAX_TARIFF = 100.0


def tariff_from(value: str | float | None) -> float:
    """A tariff (yuan per kWh) from the command line or CAMPUS_TARIFF; ValueError naming `tariff` if it is
    not a number from 0 to MAX_TARIFF. None or empty: the environment's, else DEFAULT_TARIFF."""
    raw = os.environ.get(TARIFF_ENV, "") if value is None or value == "" else value
    if raw == "" or raw is None:
        return DEFAULT_TARIFF
    try:
        number = float(raw)
    except ValueError:
        raise ValueError(f"tariff: must be yuan per kWh (a number), got {str(raw)[:20]!r}") from None
    if not 0 <= number <= MAX_TARIFF:  # NaN fails this too
        raise ValueError(f"tariff: must be from 0 to {MAX_TARIFF:g} yuan per kWh, got {str(raw)[:20]!r}")
    return number


# ---------------------------------------------------------------- one room's day (the rollup)


def school_time(tt: tts.Timetable | None, day: date) -> tuple[float, float] | None:
    """The school day's span, from its first period's start to its last one's end, as unix times; None on
    a day without periods. Only with a timetable (see `day_energy`)."""
    slots = tts.class_periods(tt, day, day) if tt else []
    return (min(s.start for s in slots), max(s.end for s in slots)) if slots else None


def split_steps(readings: Iterable[tuple[float, float]], start: float, end: float,
                school: tuple[float, float] | None) -> tuple[float, float]:
    """The kWh of the steps ending in [start, end) (`readings` in time order, the one before `start`
    included), and those of them ending outside `school` (all of them when it is None)."""
    pts = list(readings)
    total = outside = 0.0
    for (_ta, _va), (tb, _vb), step in zip(pts, pts[1:], counters.steps(v for _t, v in pts), strict=False):
        if not start <= tb < end:
            continue
        total += step
        if school is None or not school[0] <= tb < school[1]:
            outside += step
    return total, outside


def day_energy(store: PointStore, gateway: str, meters: Iterable[str], day_start: float, day_end: float,
               now: float, tt: tts.Timetable | None, day: date) -> tuple[float, float | None]:
    """The kWh a room's meters counted in the local day [day_start, day_end) as of `now`, and those outside
    the timetable (None without one): what `usage_days` keeps."""
    from central.usage import iter_points

    stop = min(day_end, now)
    school = school_time(tt, day)
    total = outside = 0.0
    for meter in meters:
        before = [p for p in store.query(gateway, meter, METRIC, day_start - LOOKBACK_S, day_start, 2)
                  if p[0] < day_start]
        readings = [(ts, _number(v)) for ts, v in (*before[-1:], *iter_points(store, gateway, meter, METRIC,
                                                                              day_start, stop))]
        kwh, off = split_steps([r for r in readings if r[1] is not None], day_start, day_end, school)
        total += kwh
        outside += off
    return round(total, 6), (round(outside, 6) if tt is not None else None)


def _number(value: float | str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- reports (from usage_days)


@dataclass
class Energy:
    """kWh used, and of them outside the timetable (`off_kwh`; None where no school counted has one)."""
    kwh: float = 0.0
    off_kwh: float | None = None

    def add(self, kwh: float, off: float | None) -> None:
        self.kwh = round(self.kwh + kwh, 6)
        if off is not None:
            self.off_kwh = round((self.off_kwh or 0.0) + off, 6)


@dataclass
class RoomEnergy(Energy):
    gateway: str = ""
    school: str = ""
    building: str = ""
    room: str = ""


@dataclass
class PlaceEnergy(Energy):
    school: str = ""
    building: str = ""  # "" for a school's own line
    rooms: int = 0


@dataclass
class DayEnergy(Energy):
    day: date = date.min


@dataclass
class EnergyReport(Energy):
    """kWh of the metered rooms (`rooms`: all of them, or a page of `room_count`), buildings and schools in
    sight from `first` to `last`, and of each day; `tariff` yuan per kWh (`yuan` and `off_yuan` of each
    line in `as_dict`)."""
    first: date = date.min
    last: date = date.min
    tariff: float = DEFAULT_TARIFF
    rooms: list[RoomEnergy] = field(default_factory=list)
    buildings: list[PlaceEnergy] = field(default_factory=list)
    schools: list[PlaceEnergy] = field(default_factory=list)
    days: list[DayEnergy] = field(default_factory=list)
    room_count: int = 0     # the metered rooms (matching the rooms' `q`), however many `rooms` holds
    left_on_count: int = 0  # of them those with a timetable: `left_on`'s whole list

    def yuan(self, kwh: float | None) -> float | None:
        return None if kwh is None else round(kwh * self.tariff, 2)

    def as_dict(self) -> dict[str, Any]:
        """As `GET /api/energy` answers it: each line with its yuan."""
        def one(e: Energy) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for f in fields(e):
                v = getattr(e, f.name)
                if not isinstance(v, list):  # the report's own lists follow, each line by itself
                    out[f.name] = v.isoformat() if isinstance(v, date) else v
            return {**out, "yuan": self.yuan(e.kwh), "off_yuan": self.yuan(e.off_kwh)}
        return {**one(self), "rooms": [one(r) for r in self.rooms], "buildings": [one(b) for b in self.buildings],
                "schools": [one(s) for s in self.schools], "days": [one(d) for d in self.days]}


def _span(first: date, last: date, scope: lists.Scope, p: Any) -> list[Any]:
    u = _u()
    return [u.day >= first, u.day <= last, u.meter_devices > 0, *lists.place_filter(p, scope)]


def _u() -> Any:
    from central.usage import UsageDay
    return UsageDay.__table__.c


def _building_filter(p: Any, building: str | None) -> list[Any]:
    return [] if building is None else [func.coalesce(p.c.building, "") == building]


NO_ROOMS = lists.Paging(limit=0)  # `report(rooms=NO_ROOMS)`: the totals and the count, no room lines
ROOMS_PAGE = 100                  # room lines of `GET /api/energy` without `limit`
MAX_ROOMS_PAGE = 500              # ... and at most


def _check_span(first: date, last: date) -> None:
    from central.usage import MAX_REPORT_DAYS

    if last < first:
        raise ValueError(f"the end {last} is before the start {first}")
    if (last - first).days >= MAX_REPORT_DAYS:
        raise ValueError(f"at most {MAX_REPORT_DAYS} days in one report")


def _rooms(db: Database, first: date, last: date, scope: lists.Scope,
           building: str | None) -> tuple[Any, Any, Any, list[Any]]:
    """Each metered room's sums from `first` to `last` (a subquery: `gateway`, `kwh`, `off_kwh`, and `left_kwh` the
    kWh of its days with an `off_kwh`; also `metered` from the days), joined to its place, and the conditions keeping `scope` and `building`.

    The room-days are summed per gateway before they meet `places`: the join is one row per room, not per
    room-day, and the rows come from the `usage_days_energy` index alone (migration 0019). A whole ISO week or
    calendar month (the pages' spans) reads each room's sums kept with its usage (`usage_weeks`, `usage_months`,
    migration 0023): a row a room instead of grouping its ~7-31 days (~25 ms of each statement at 10,000 rooms)."""
    def kept(p: Any) -> list[Any]:
        return [*lists.place_filter(p, scope), *_building_filter(p, building)]

    from central.usage import kept_span, room_energy_sums

    u = _u()
    inside = lists.places(db)  # a school's or a building's rooms are picked before their days are summed

    def narrowed(gateway: Any) -> list[Any]:
        return [gateway.in_(select(inside.c.id).where(*kept(inside)))] if kept(inside) else []

    whole = kept_span(first, last)
    if whole is not None:  # a whole week or month: each room's sums kept by the rollup (`usage_weeks`, `usage_months`)
        k, key = whole
        per_room = (select(k.gateway.label("gateway"), k.kwh, k.off_kwh, k.left_kwh)
                    .where(key, k.metered > 0, *narrowed(k.gateway)).subquery("room_energy"))
    else:  # the same sums as the rollup keeps (`room_energy_sums`), of the span's metered days
        per_room = (select(u.gateway.label("gateway"), *room_energy_sums())
                    .where(u.day >= first, u.day <= last, u.meter_devices > 0, *narrowed(u.gateway))
                    .group_by(u.gateway).subquery("room_energy"))
    p = lists.places(db)
    return per_room.join(p, p.c.id == per_room.c.gateway), per_room, p, kept(p)


def _room(gw: str, school: str | None, bld: str | None, room: str | None, kwh: Any, off: Any) -> RoomEnergy:
    r = RoomEnergy(gateway=gw, school=school or "", building=bld or "", room=room or "")
    r.add(float(kwh or 0), None if off is None else float(off))
    return r


def report(db: Database, first: date, last: date, scope: lists.Scope = lists.EVERYTHING,
           building: str | None = None, tariff: float = DEFAULT_TARIFF,
           rooms: lists.Paging | None = None) -> EnergyReport:
    """The energy of the metered rooms in `scope` (of one building, by name, if given) from `first` to
    `last`, added up per building, school, day and in all, all of it summed in SQL (GROUP BY): the
    district's size costs SQL's read of the span's rollup rows (an index), never a Python object per room.

    `rooms`: which room lines to give, those matching its `q`, by school, building, room and gateway
    (`room_count` is how many there are): None every one (the report files), a `lists.Paging` a page of
    them (`GET /api/energy`), NO_ROOMS none (the page shows the totals). Three statements, four with a
    `q` (the count of the rooms matching it), however many rooms and days. ValueError for a span that
    ends before it starts or is longer than the usage reports allow.

    The building, school and district lines add up the rooms' sums as SQL gives them, where they used to
    add the rooms' sums rounded to 6 places: the same to within 1e-6 kWh (tests/test_energy.py)."""
    _check_span(first, last)
    u = _u()
    joined, r, p, where = _rooms(db, first, last, scope, building)
    bld = func.coalesce(p.c.building, "")
    per_building = (select(p.c.school, bld, func.sum(r.c.kwh), func.sum(r.c.off_kwh), func.count(), func.count(r.c.off_kwh))
                    .select_from(joined).where(*where).group_by(p.c.school, bld))
    # Every rollup row is a place's (the rollup walks `places`, nothing deletes one): the whole district's days
    # need not meet `places` (a week's: 6 ms of SQLite's CPU at 10,000 rooms against 43 ms with it).
    placed = [u.gateway.in_(select(p.c.id).where(*where))] if where else []
    per_day = (select(u.day, func.sum(u.energy_kwh), func.sum(u.energy_off_kwh))
               .where(u.day >= first, u.day <= last, u.meter_devices > 0, *placed).group_by(u.day))
    q = rooms.q if rooms is not None else None
    matching = [*where, lists.matches(q, r.c.gateway, p.c.school, p.c.building, p.c.room)]
    per_room = (select(r.c.gateway, p.c.school, p.c.building, p.c.room, r.c.kwh, r.c.off_kwh)
                .select_from(joined).where(*matching)
                .order_by(*(lists.ordered(db, c) for c in (func.coalesce(p.c.school, ""), bld,
                                                            func.coalesce(p.c.room, ""), r.c.gateway))))
    if rooms is not None:
        per_room = per_room.limit(rooms.limit).offset(rooms.offset)
    with db.read("cannot read the energy rollup") as conn:
        building_rows = list(conn.execute(per_building))
        day_rows = list(conn.execute(per_day))
        room_rows = list(conn.execute(per_room)) if rooms is None or rooms.limit > 0 else []
        count = (conn.execute(select(func.count()).select_from(joined).where(*matching)).scalar_one() if q
                 else None)
    out = EnergyReport(first=first, last=last, tariff=tariff)
    out.rooms = [_room(*row) for row in room_rows]
    schools: dict[str, PlaceEnergy] = {}
    for school, name, kwh, off, in_it, with_off in building_rows:
        kwh, off = float(kwh or 0), None if off is None else float(off)
        line = PlaceEnergy(school=school or "", building=name or "", rooms=in_it)
        line.add(kwh, off)
        out.buildings.append(line)
        whole = schools.setdefault(line.school, PlaceEnergy(school=line.school))
        whole.add(kwh, off)
        whole.rooms += in_it
        out.add(kwh, off)
        out.left_on_count += with_off
    out.buildings.sort(key=lambda b: (b.school, b.building))
    out.schools = sorted(schools.values(), key=lambda s: s.school)
    out.room_count = sum(s.rooms for s in out.schools) if count is None else count
    for d, kwh, off in sorted(day_rows):
        line = DayEnergy(day=d)
        line.add(float(kwh or 0), None if off is None else float(off))
        out.days.append(line)
    return out


def left_on(db: Database, first: date, last: date, paging: lists.Paging, scope: lists.Scope = lists.EVERYTHING,
            building: str | None = None, total: int | None = None) -> lists.Page[RoomEnergy]:
    """Rooms by kWh used outside the timetable from `first` to `last`, worst first (then by name), those
    matching `q` in the school, building, room or gateway: one page and its total (`total` if given: the
    same span's and scope's `EnergyReport.left_on_count`, without a `q`), one statement (two for a page
    past the end). A room's `kwh` is that of its days with a timetable (an `off_kwh`)."""
    joined, r, p, where = _rooms(db, first, last, scope, building)
    where = [*where, r.c.off_kwh.is_not(None), lists.matches(paging.q, r.c.gateway, p.c.school, p.c.building, p.c.room)]
    counted = total is None or bool(paging.q)  # the count in the same statement: SQL's window over every row
    query = (select(r.c.gateway, p.c.school, p.c.building, p.c.room, r.c.left_kwh, r.c.off_kwh,
                    func.count().over() if counted else literal(total))
             .select_from(joined).where(*where)
             .order_by(r.c.off_kwh.desc(), lists.ordered(db, p.c.school), lists.ordered(db, r.c.gateway))
             .limit(paging.limit).offset(paging.offset))
    with db.read("cannot read the rooms' energy") as conn:
        rows = list(conn.execute(query))
        if counted:  # a page past the end has no row to tell it: then the count by itself
            total = (rows[0][-1] if rows
                     else conn.execute(select(func.count()).select_from(joined).where(*where)).scalar_one())
    items = []
    for gw, school, bld, room, kwh, off_kwh, _total in rows:
        item = RoomEnergy(gateway=gw, school=school or "", building=bld or "", room=room or "")
        item.add(float(kwh or 0), float(off_kwh or 0))
        items.append(item)
    return lists.Page(items, total)


def room_days(db: Database, first: date, last: date, scope: lists.Scope = lists.EVERYTHING,
              building: str | None = None) -> list[tuple[date, str, str, str, str, float, float | None]]:
    """(day, school, building, room, gateway, kWh, kWh outside the timetable) of every metered room-day in
    `scope` from `first` to `last`, in that order: one statement (the XLSX's per-day sheet)."""
    return list(iter_room_days(db, first, last, scope, building))


ROOM_DAYS_CHUNK = 500  # rows `iter_room_days` fetches at a time


def iter_room_days(db: Database, first: date, last: date, scope: lists.Scope = lists.EVERYTHING,
                   building: str | None = None) -> Iterator[tuple[date, str, str, str, str, float, float | None]]:
    """`room_days` as they are read, `ROOM_DAYS_CHUNK` rows at a time (a server-side cursor on PostgreSQL):
    a district's month is 300,000 rows, which the XLSX writes as they come rather than hold. The read stays
    open until the iterator is exhausted or closed."""
    from central.usage import UsageDay

    u = _u()
    p = lists.places(db)
    query = (select(u.day, p.c.school, p.c.building, p.c.room, u.gateway, u.energy_kwh, u.energy_off_kwh)
             .select_from(UsageDay.__table__).join(p, p.c.id == u.gateway)
             .where(*_span(first, last, scope, p), *_building_filter(p, building))
             .order_by(u.day, lists.ordered(db, p.c.school), lists.ordered(db, u.gateway)))
    with db.read("cannot read the energy rollup") as conn:
        for d, s, b, r, gw, k, o in conn.execution_options(yield_per=ROOM_DAYS_CHUNK).execute(query):
            yield d, s or "", b or "", r or "", gw, float(k or 0), None if o is None else float(o)
