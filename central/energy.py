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
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any

from sqlalchemy import func, select

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
    """kWh of every metered room, building and school in sight from `first` to `last`, and of each day;
    `tariff` yuan per kWh (`yuan` and `off_yuan` of each line in `as_dict`)."""
    first: date = date.min
    last: date = date.min
    tariff: float = DEFAULT_TARIFF
    rooms: list[RoomEnergy] = field(default_factory=list)
    buildings: list[PlaceEnergy] = field(default_factory=list)
    schools: list[PlaceEnergy] = field(default_factory=list)
    days: list[DayEnergy] = field(default_factory=list)

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


def report(db: Database, first: date, last: date, scope: lists.Scope = lists.EVERYTHING,
           building: str | None = None, tariff: float = DEFAULT_TARIFF) -> EnergyReport:
    """The energy of every metered room in `scope` (of one building, by name, if given) from `first` to
    `last`, added up per building, school, day and in all: two statements however many rooms and days.
    ValueError for a span that ends before it starts or is longer than the usage reports allow."""
    from central.usage import MAX_REPORT_DAYS, UsageDay

    if last < first:
        raise ValueError(f"the end {last} is before the start {first}")
    if (last - first).days >= MAX_REPORT_DAYS:
        raise ValueError(f"at most {MAX_REPORT_DAYS} days in one report")
    u = _u()
    p = lists.places(db)
    where = [*_span(first, last, scope, p), *_building_filter(p, building)]
    per_room = (select(u.gateway, p.c.school, p.c.building, p.c.room, func.sum(u.energy_kwh),
                       func.sum(u.energy_off_kwh))
                .select_from(UsageDay.__table__).join(p, p.c.id == u.gateway).where(*where)
                .group_by(u.gateway, p.c.school, p.c.building, p.c.room))
    per_day = (select(u.day, func.sum(u.energy_kwh), func.sum(u.energy_off_kwh))
               .select_from(UsageDay.__table__).join(p, p.c.id == u.gateway).where(*where).group_by(u.day))
    with db.read("cannot read the energy rollup") as conn:
        room_rows = list(conn.execute(per_room))
        day_rows = list(conn.execute(per_day))
    out = EnergyReport(first=first, last=last, tariff=tariff)
    buildings: dict[tuple[str, str], PlaceEnergy] = {}
    schools: dict[str, PlaceEnergy] = {}
    for gw, school, bld, room, kwh, off in room_rows:
        kwh, off = float(kwh or 0), None if off is None else float(off)
        r = RoomEnergy(gateway=gw, school=school or "", building=bld or "", room=room or "")
        r.add(kwh, off)
        out.rooms.append(r)
        for line in (buildings.setdefault((r.school, r.building), PlaceEnergy(school=r.school, building=r.building)),
                     schools.setdefault(r.school, PlaceEnergy(school=r.school))):
            line.add(kwh, off)
            line.rooms += 1
        out.add(kwh, off)
    out.rooms.sort(key=lambda r: (r.school, r.building, r.room, r.gateway))
    out.buildings = sorted(buildings.values(), key=lambda b: (b.school, b.building))
    out.schools = sorted(schools.values(), key=lambda s: s.school)
    for d, kwh, off in sorted(day_rows):
        line = DayEnergy(day=d)
        line.add(float(kwh or 0), None if off is None else float(off))
        out.days.append(line)
    return out


def left_on(db: Database, first: date, last: date, paging: lists.Paging, scope: lists.Scope = lists.EVERYTHING,
            building: str | None = None) -> lists.Page[RoomEnergy]:
    """Rooms by kWh used outside the timetable from `first` to `last`, worst first (then by name), those
    matching `q` in the school, building, room or gateway: one page and its total, two statements."""
    from central.usage import UsageDay

    u = _u()
    p = lists.places(db)
    off = func.sum(u.energy_off_kwh)
    query = (select(u.gateway, p.c.school, p.c.building, p.c.room, func.sum(u.energy_kwh).label("kwh"),
                    off.label("off"))
             .select_from(UsageDay.__table__).join(p, p.c.id == u.gateway)
             .where(*_span(first, last, scope, p), *_building_filter(p, building), u.energy_off_kwh.is_not(None),
                    lists.matches(paging.q, u.gateway, p.c.school, p.c.building, p.c.room))
             .group_by(u.gateway, p.c.school, p.c.building, p.c.room))
    rows, total = lists.page_of(db, query, [off.desc(), lists.ordered(db, p.c.school), lists.ordered(db, u.gateway)],
                                paging, "rooms' energy")
    items = []
    for gw, school, bld, room, kwh, off_kwh in rows:
        r = RoomEnergy(gateway=gw, school=school or "", building=bld or "", room=room or "")
        r.add(float(kwh or 0), float(off_kwh or 0))
        items.append(r)
    return lists.Page(items, total)



def room_days(db: Database, first: date, last: date, scope: lists.Scope = lists.EVERYTHING,
              building: str | None = None) -> list[tuple[date, str, str, str, str, float, float | None]]:
    """(day, school, building, room, gateway, kWh, kWh outside the timetable) of every metered room-day in
    `scope` from `first` to `last`, in that order: one statement (the XLSX's per-day sheet)."""
    from central.usage import UsageDay

    u = _u()
    p = lists.places(db)
    query = (select(u.day, p.c.school, p.c.building, p.c.room, u.gateway, u.energy_kwh, u.energy_off_kwh)
             .select_from(UsageDay.__table__).join(p, p.c.id == u.gateway)
             .where(*_span(first, last, scope, p), *_building_filter(p, building))
             .order_by(u.day, lists.ordered(db, p.c.school), lists.ordered(db, u.gateway)))
    with db.read("cannot read the energy rollup") as conn:
        return [(d, s or "", b or "", r or "", gw, float(k or 0), None if o is None else float(o))
                for d, s, b, r, gw, k, o in conn.execute(query)]
