"""Equipment usage from the point store: when a projector or display was on, and the usage rate (应用率).

The usage rate is what a district reports upward about its classroom multimedia (班班通: 课堂用、经常
用、普遍用): of the class periods a room had (its school's timetable, central/timetables.py), the share
in which the room's display or projector was on. A room counts a period as used when its displays and
projectors together were on for at least `USED_MIN_S` of it: a projector switched on for a moment and
off again is not a lesson that used it, five minutes of one are. Periods still running or to come are
not counted yet (a Monday report on Monday morning is about the periods that are over).

Rates add up by periods, not by averaging rates: a school's is its rooms' used periods over their
periods, the district's its schools'. A room without a display or projector has nothing to measure
and is left out (listed, rate None); a school without a timetable has no periods (rate None).

"On" is read from the `power` series the agents send (CONTRACT.md), as /health/usage reads it: each
sample's state lasts until the next sample, at most `MAX_SAMPLE_GAP_S` (a silent gateway says nothing
about the time in between). Only each school day's span of class periods is read from the store.

Reports never read the store: a room's day is worked out once into `usage_days` (`UsageDay`: its
class periods, those used, and the seconds its CO2 was over the alarm limit) by a background job of
the web process (central/usage_rollup.py), and a report, the district overview and the city push add
those rows up in SQL. Reading weeks of every room's points per request cost 0.6 s of CPU at 2,000 rooms.
A calendar month's report adds one row a room-month (`usage_months`, `UsageMonth`), kept with the days.
The same rows carry each room's electricity of the day (central/energy.py), for the same reason.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Boolean,
    Date,
    Float,
    Index,
    Integer,
    String,
    Text,
    and_,
    case,
    func,
    literal,
    not_,
    or_,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from campus import contract
from central import timetables as tts
from central.db import Base
from central.ledger import Ledger
from central.registry import Device, Registry
from central.store.base import MAX_POINTS, PointStore

# Power samples further apart than this do not count as "on" in between (the gateway was silent).
MAX_SAMPLE_GAP_S = 15 * 60
POWER_KINDS = ("projector", "display")
USED_MIN_S = 5 * 60
MAX_REPORT_DAYS = 62  # a month and a bit
PAGE_ROOMS = 100  # rooms of a page of the report (`/api/usage`, a school's `/health/usage-rate`) by default
RECOUNT_CHUNK = 500  # rooms of one statement of `recount_months`
MAX_PAGE_ROOMS = 500  # and at most; every room is the CSV and XLSX
ENVIRONMENT_KIND = "environment"  # the devices whose `co2_ppm` the CO2-over-limit time is read from
METER_KIND = "meter"  # the electricity meters whose `energy_kwh` the energy figures are read from (central/energy.py)


class UsageDay(Base):
    """One room's (gateway's) local day, rolled up (migration 0008): what the usage rate and the
    CO2-over-limit hours add up, so that no request reads the point store.

    `periods`: the school's class periods of the day (those over when it was computed); `used`: those in
    which the room's displays and projectors were on for USED_MIN_S; `power_devices`: how many were
    measured (0: nothing to measure, the day is left out of rates). `co2_over_s`: seconds the room's CO2
    was above `co2_limit` (the `co2_above` alarm rule's ppm when computed), `co2_devices` the sensors
    read (0: not measured). `complete`: the day was over at `counted_to` (never computed again unless its
    timetable or the CO2 limit changes after `computed_at`); today's row is refreshed every few minutes.

    Energy (migration 0010, central/energy.py): `energy_kwh` the kWh the room's meters counted in the day,
    `energy_off_kwh` those outside its school's timetable (None: the school has none), `meter_devices`
    the meters read (0: no meter; None: a row rolled up before 0009, computed again)."""
    __tablename__ = "usage_days"
    # What central/energy.py's sums read of a row, so a span's rows come from the index alone (migration 0019);
    # and what the usage rate's sums read (`usage_rate`, migration 0021).
    __table_args__ = (Index("usage_days_energy", "day", "meter_devices", "gateway", "energy_kwh", "energy_off_kwh"),
                      Index("usage_days_rate", "day", "gateway", "power_devices", "periods", "used", "complete",
                            "counted_to"))
    gateway: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True, index=True)
    school: Mapped[str] = mapped_column(String(64))
    periods: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer)
    power_devices: Mapped[int] = mapped_column(Integer)
    co2_over_s: Mapped[float] = mapped_column(Float)
    co2_devices: Mapped[int] = mapped_column(Integer)
    co2_limit: Mapped[float | None] = mapped_column(Float, nullable=True)
    complete: Mapped[bool] = mapped_column(Boolean)
    counted_to: Mapped[float] = mapped_column(Float)   # periods ending after it are not counted (the as-of time)
    computed_at: Mapped[float] = mapped_column(Float)  # when (this clock): against a timetable saved after it
    energy_kwh: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_off_kwh: Mapped[float | None] = mapped_column(Float, nullable=True)
    meter_devices: Mapped[int | None] = mapped_column(Integer, nullable=True)


class _RoomSpanSums:
    """A room's sums over a span of its `usage_days` rows, as the reports read them (`UsageMonth`, `UsageWeek`).
    Over the measured days (power_devices > 0): `periods`, `used`, `measured` (how many); `days`: rows of the
    span; `partial`: the earliest `counted_to` of its incomplete days."""
    periods: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer)
    measured: Mapped[int] = mapped_column(Integer)
    days: Mapped[int] = mapped_column(Integer)
    partial: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The energy pages' per-room sums (migration 0023, `room_energy_sums`): over the metered days
    # (meter_devices > 0), how many, their kWh, those outside the timetable, and the kWh of those with an `off`.
    metered: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kwh: Mapped[float | None] = mapped_column(Float, nullable=True)
    off_kwh: Mapped[float | None] = mapped_column(Float, nullable=True)
    left_kwh: Mapped[float | None] = mapped_column(Float, nullable=True)


class UsageMonth(_RoomSpanSums, Base):
    """One room's (gateway's) calendar month of `usage_days` rows, summed as the usage rate's per-room sums read
    them (`usage_rate`'s `sums`; migration 0022), so that a month's report adds 10,000 rows at 10,000 rooms, not
    300,000 room-days (250 ms of CPU, issue 19). Kept by `recount_months`, in the transaction that writes the
    day rows (the rollup's `_write`): recomputed from them, never added to, so a day written again is counted
    once. `month`: its first day."""
    __tablename__ = "usage_months"
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    gateway: Mapped[str] = mapped_column(String(64), primary_key=True)


class UsageWeek(_RoomSpanSums, Base):
    """One room's (gateway's) ISO week (Monday to Sunday: the report's default span, `week`) of `usage_days` rows,
    the same sums as `UsageMonth` (migration 0023), so that the district's week adds 10,000 rows at 10,000 rooms,
    not its ~60,000 room-days grouped by room (the schools' sums 62 -> ~20 ms of SQLite's CPU). Kept by
    `recount_months` with the months, in the transaction that writes the day rows, recomputed from them."""
    __tablename__ = "usage_weeks"
    week: Mapped[date] = mapped_column(Date, primary_key=True)
    gateway: Mapped[str] = mapped_column(String(64), primary_key=True)


class UsageDayTotal(Base):
    """A day's class periods and those used over every room's `usage_days` row of it that was measured
    (power_devices > 0; migration 0023): the district's per-day line of the usage-rate report, without reading
    the day's 10,000 rows per request (a month's 300,000: 50 of its ~100 ms of CPU). Every room's rows, places or
    not: the report takes off the rows of the span's few rooms that are no place (found from their week's or
    month's rows). Kept by `recount_months` with the weeks and months, recomputed from the day's rows in the
    transaction that writes them: one writer at a time (the rollup holds its lease), or a day's total could miss
    rows another transaction wrote meanwhile (PostgreSQL) until the day is written again."""
    __tablename__ = "usage_day_totals"
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    periods: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer)


def week_span(day: date) -> tuple[date, date]:
    """The Monday and the Sunday of `day`'s ISO week."""
    monday = day - timedelta(days=day.weekday())
    return monday, monday + timedelta(days=6)


def whole_week(first: date, last: date) -> date | None:
    """The week (its Monday) when `first`..`last` is exactly one ISO week, else None."""
    return first if week_span(first) == (first, last) else None


def month_span(month: date) -> tuple[date, date]:
    """The first and last day of `month`'s calendar month."""
    first = month.replace(day=1)
    following = (first + timedelta(days=31)).replace(day=1)
    return first, following - timedelta(days=1)


def whole_month(first: date, last: date) -> date | None:
    """The month (its first day) when `first`..`last` is exactly one calendar month, else None."""
    return first if first.day == 1 and month_span(first)[1] == last else None


def room_day_sums() -> list[Any]:
    """A room's (gateway's) figures over its `usage_days` rows, to be grouped by gateway: `gateway`, then over the
    measured days (power_devices > 0) `periods`, `used` and how many (`measured`), the rows (`days`) and the
    earliest `counted_to` of the incomplete ones (`partial`). What a report sums of a span and what
    `usage_months` keeps of a month, the same columns in the same order."""
    u = UsageDay.__table__.c
    measured = u.power_devices > 0
    return [u.gateway.label("gateway"), func.sum(case((measured, u.periods), else_=0)).label("periods"),
            func.sum(case((measured, u.used), else_=0)).label("used"),
            func.sum(case((measured, 1), else_=0)).label("measured"), func.count().label("days"),
            func.min(case((u.complete.is_(False), u.counted_to), else_=None)).label("partial")]


def room_energy_sums() -> list[Any]:
    """A room's energy over its `usage_days` rows, to be grouped by gateway, as central/energy.py sums a span's
    metered days (meter_devices > 0): how many (`metered`: 0, the room is not in the energy report), `kwh`,
    `off_kwh` (outside the timetable: None where no day has one), `left_kwh` (the kWh of the days with an
    `off_kwh`: the left-on list's). What `usage_weeks` and `usage_months` keep besides `room_day_sums`."""
    u = UsageDay.__table__.c
    metered = u.meter_devices > 0
    return [func.sum(case((metered, 1), else_=0)).label("metered"),
            func.sum(case((metered, u.energy_kwh), else_=None)).label("kwh"),
            func.sum(case((metered, u.energy_off_kwh), else_=None)).label("off_kwh"),
            func.sum(case((and_(metered, u.energy_off_kwh.is_not(None)), u.energy_kwh), else_=None)).label("left_kwh")]


KEPT_COLUMNS = ["gateway", "periods", "used", "measured", "days", "partial", "metered", "kwh", "off_kwh", "left_kwh"]


def recount_months(conn: Any, days: Iterable[tuple[str, date]]) -> int:
    """Recompute the `usage_months` and `usage_weeks` rows of the room-months and room-weeks of these (gateway,
    day) pairs from their `usage_days` rows, in `conn`'s transaction: what every writer of `usage_days` calls
    after writing (the rollup, the bench, a test that writes rows itself). A room-month or room-week left without
    day rows loses its row. How many room-months were recounted.

    Recomputed, not added to: a day written again (today's row, every refresh) is counted once. A month's (a
    week's) rooms RECOUNT_CHUNK at a time, each seeking its days by the primary key (gateway, day): at 10,000
    rooms a refresh of today's rows costs 0.14 s of CPU more for the months (0.13 -> 0.27 s), a first fill's
    300,000 rows of a month 5.3 s more (3.3 -> 8.7 s; a 5,000-row transaction 56 -> 144 ms); the weeks about as
    much again (docs/benchmarks.md)."""
    pairs = list(days)
    count = _recount(conn, UsageMonth.__table__, "month", month_span, pairs)
    _recount(conn, UsageWeek.__table__, "week", week_span, pairs)
    written = sorted({day for _gateway, day in pairs})
    if written:  # the days' totals (`usage_day_totals`): each day's measured rows, every room's
        totals, u = UsageDayTotal.__table__, UsageDay.__table__.c
        conn.execute(totals.delete().where(totals.c.day.in_(written)))
        conn.execute(totals.insert().from_select(["day", "periods", "used"], day_totals().where(u.day.in_(written))))
    return count


def day_totals() -> Any:
    """Each day's measured rows (power_devices > 0) summed: `day`, `periods`, `used`, grouped by day (a statement to
    narrow with a WHERE): what `usage_day_totals` keeps and the report's days add."""
    u = UsageDay.__table__.c
    return (select(u.day, func.coalesce(func.sum(u.periods), 0), func.coalesce(func.sum(u.used), 0))
            .where(u.power_devices > 0).group_by(u.day))


def _recount(conn: Any, table: Any, key: str, span_of: Callable[[date], tuple[date, date]],
             days: list[tuple[str, date]]) -> int:
    """`recount_months` for one kind of span: `table`'s rows (keyed by `key`, the span's first day) of the
    spans (`span_of`) of these (gateway, day) pairs, from their day rows."""
    by_span: dict[tuple[date, date], set[str]] = {}
    for gateway, day in days:
        by_span.setdefault(span_of(day), set()).add(gateway)
    u = UsageDay.__table__.c
    count = 0
    for (first, last), gateways in sorted(by_span.items()):
        ordered = sorted(gateways)
        for k in range(0, len(ordered), RECOUNT_CHUNK):
            chunk = ordered[k:k + RECOUNT_CHUNK]
            conn.execute(table.delete().where(table.c[key] == first, table.c.gateway.in_(chunk)))
            sums = (select(literal(first, Date), *room_day_sums(), *room_energy_sums())
                    .where(u.gateway.in_(chunk), u.day >= first, u.day <= last).group_by(u.gateway))
            conn.execute(table.insert().from_select([key, *KEPT_COLUMNS], sums))
            count += len(chunk)
    return count


class PartRate(Base):
    """How many hours a week a projector part's counter grew lately (central/maintenance.py
    `hours_per_week`: `lamp_hours` or `filter_hours` over its last RATE_WEEKS), worked out by the usage
    rollup's round as of `as_of` (migration 0012), so that the maintenance list reads no point store.
    `per_week` None: too few readings for a rate.

    The rest is the part's line of the maintenance list as of the round that last saw it (`listed_at`;
    migration 0020): its place, profile, hours, rated hours and weeks left (`undated`: none, they sort
    last), so that a page of the list is one ordered read of this table (central/lists.py `part_rows`).
    `hours` None: the part is rated but not listed (its counter is not a finite number)."""
    __tablename__ = "part_rates"
    __table_args__ = (Index("ix_part_rates_due", "undated", "weeks_left", "school", "gateway", "device", "part"),)
    gateway: Mapped[str] = mapped_column(String(64), primary_key=True)
    device: Mapped[str] = mapped_column(String(64), primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    per_week: Mapped[float | None] = mapped_column(Float, nullable=True)
    as_of: Mapped[float] = mapped_column(Float)
    listed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    school: Mapped[str | None] = mapped_column(String(64), nullable=True)
    building: Mapped[str | None] = mapped_column(Text, nullable=True)
    building_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    room: Mapped[str | None] = mapped_column(Text, nullable=True)
    profile: Mapped[str | None] = mapped_column(Text, nullable=True)
    part: Mapped[str | None] = mapped_column(String(16), nullable=True)
    hours: Mapped[float | None] = mapped_column(Float, nullable=True)
    rated: Mapped[float | None] = mapped_column(Float, nullable=True)
    weeks_left: Mapped[float | None] = mapped_column(Float, nullable=True)
    undated: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


def power_state(value: float | str) -> str:
    """A power sample as its state name (stores without strings give the enum index)."""
    if isinstance(value, str):
        return value
    enum = contract.metric_enum("power") or ()
    if float(value).is_integer() and 0 <= int(value) < len(enum):
        return enum[int(value)]
    return str(value)


def on_intervals(points: Iterable[tuple[float, float | str]], start: float, end: float,
                 max_gap: float = MAX_SAMPLE_GAP_S, on_states: tuple[str, ...] = ("on",)) -> list[tuple[float, float]]:
    """Time spans, clipped to [start, end], during which the device was in an `on` state (see `spans_where`)."""
    return spans_where(points, start, end, lambda value: power_state(value) in on_states, max_gap)


def spans_where(points: Iterable[tuple[float, float | str]], start: float, end: float,
                test: Callable[[float | str], bool], max_gap: float = MAX_SAMPLE_GAP_S) -> list[tuple[float, float]]:
    """Time spans, clipped to [start, end], during which a series' value passed `test` (a projector on, CO2
    over its limit).

    Each sample's value lasts until the next sample, but at most `max_gap` seconds (a silent
    gateway says nothing about the time in between); overlapping spans are merged.
    """
    pts = sorted(points, key=lambda p: p[0])
    spans: list[tuple[float, float]] = []
    for i, (ts, value) in enumerate(pts):
        if not test(value):
            continue
        nxt = pts[i + 1][0] if i + 1 < len(pts) else None
        stop = ts + max_gap if nxt is None else min(nxt, ts + max_gap)
        a, b = max(ts, start), min(stop, end)
        if b <= a:
            continue
        if spans and a <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], b))
        else:
            spans.append((a, b))
    return spans


def merged(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of spans, sorted and disjoint (several devices of one room: on when any is)."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def overlap(spans: list[tuple[float, float]], a: float, b: float) -> float:
    """Seconds of the (sorted, disjoint) spans inside [a, b]."""
    total = 0.0
    i = max(0, bisect.bisect_right([s[1] for s in spans], a))
    for s, e in spans[i:]:
        if s >= b:
            break
        total += max(0.0, min(e, b) - max(s, a))
    return total


def iter_points(store: Any, gateway: str, device: str, metric: str, start: float, end: float,
                chunk: float = 6 * 3600, limit: int = MAX_POINTS) -> Iterator[tuple[float, float | str]]:
    """Every raw point of a series in [start, end], oldest first, a `chunk` of time at a time.

    A store answers at most `limit` points of a window, the newest: each chunk is paged back from its end
    (so only one chunk's points are held at once) and handed out oldest first.
    """
    limit = max(2, limit)  # a page of one would be the point at its end again and again
    a = start
    while a <= end:
        b = min(end, a + chunk)
        last = b >= end  # chunks are [a, b), the last one [a, end]
        pages: list[list[tuple[float, float | str]]] = []
        top = b
        while True:
            page = store.query(gateway, device, metric, a, top, limit)
            full = len(page) >= limit
            # The window's end is included: drop the point at `top` a page before already gave, and the
            # next chunk's first point.
            page = [p for p in page if p[0] < top or (last and not pages)]
            pages.append(page)
            if not full or not page:
                break
            top = page[0][0]
        for page in reversed(pages):
            yield from page
        if last:
            break
        a = b



# ---------------------------------------------------------------- the usage rate (应用率)


@dataclass
class Count:
    """Class periods and those used; the rate is their quotient (None: no periods to count)."""
    periods: int = 0
    used: int = 0

    @property
    def rate(self) -> float | None:
        return round(self.used / self.periods, 4) if self.periods else None

    def add(self, periods: int, used: int) -> None:
        self.periods += periods
        self.used += used


@dataclass
class RoomUsage(Count):
    gateway: str = ""
    school: str = ""
    building: str = ""
    room: str = ""
    devices: list[str] = field(default_factory=list)  # the displays and projectors measured
    meters: list[str] = field(default_factory=list)   # the electricity meters (central/energy.py)


@dataclass
class SchoolUsage(Count):
    school: str = ""
    rooms: int = 0             # rooms measured (with a display or projector)
    timetable: bool = False    # whether the school has one (without: no periods)


@dataclass
class DayUsage(Count):
    day: date = date.min


@dataclass
class UsageReport(Count):
    """The usage rate of every room, school and the district (the report's own counts) from `first` to
    `last`, and of each day; `asof`: periods ending after it were not counted (today's figures are those of
    the rollup's last refresh); `pending`: room-days of the span the rollup has not reached yet (a first
    start, a store catching up): they count when the background job has filled them."""
    first: date = date.min
    last: date = date.min
    asof: float = 0.0
    pending: int = 0
    rooms: list[RoomUsage] = field(default_factory=list)
    schools: list[SchoolUsage] = field(default_factory=list)
    days: list[DayUsage] = field(default_factory=list)
    total_rooms: int = 0  # the rooms in sight matching the page's `q`, every page (`X-Total-Count`)

    def as_dict(self) -> dict[str, Any]:
        """As the JSON API answers it: each level with its `rate` (0-1, None without periods)."""
        def one(c: Count) -> dict[str, Any]:
            # Field by field, not dataclasses.asdict: that deep-copies every value, a third of a district
            # report's time for 2,000 rooms.
            out: dict[str, Any] = {}
            for f in fields(c):
                if f.name not in ("rooms", "schools", "days", "total_rooms"):
                    v = getattr(c, f.name)
                    out[f.name] = v.isoformat() if isinstance(v, date) else list(v) if isinstance(v, list) else v
            return {**out, "rate": c.rate}
        return {**one(self), "rooms": [one(r) for r in self.rooms], "schools": [one(s) for s in self.schools],
                "days": [one(d) for d in self.days]}


def usage_rate(registry: Registry, ledger: Ledger, first: date, last: date, school: str | None = None, *,
               schools_in: tuple[str, ...] | None = None, page: Any = None, now: float | None = None,
               site_zone: ZoneInfo | None = None) -> UsageReport:
    """The usage rate of every room with a display or projector (of one school, or all; of `schools_in` only,
    if given: a school-scoped account's) from `first` to `last` (both included), its schools' and the
    district's (of what is in sight), read from the daily rollup (`UsageDay`, kept by
    central/usage_rollup.py): a fixed number of statements, none to the point store, however many rooms
    and days. ValueError for a span that ends before it starts or is longer than MAX_REPORT_DAYS.

    `page` (a `lists.Paging`): the report's `rooms` are that page of the rooms in sight (in the report's
    order: school, building, room, gateway; matching its `q`), `total_rooms` how many match; None: every
    room (the CSV and XLSX). The schools, days and district are always whole, added up in SQL: a page's
    cost does not grow with the district (docs/benchmarks.md 11i: every room's devices read into Python
    was 1.0 s of 1.5 s at 10,000 rooms). A span that is exactly one calendar month (`?month=`) reads each room's
    sums from its `usage_months` row (`UsageMonth`, one a room, recounted with the day rows) instead of grouping
    its ~30 days (300,000 room-days at 10,000 rooms: 300 -> 100 ms of CPU); one ISO week (`?week=`, the default)
    from its `usage_weeks` row (`UsageWeek`) the same way; the days' totals still add the day rows.

    `pending` counts each room's days from `first` to its school's today (at `now`, None: now) in its
    school's zone (its timetable's, else `site_zone`, None: Asia/Shanghai), as the rollup writes them: not
    the host's date, a day behind Shanghai's from 16:00 UTC."""
    from central import lists
    from central.overview import profile_kind  # the overview imports much; only this is wanted here

    if last < first:
        raise ValueError(f"the end {last} is before the start {first}")
    if (last - first).days >= MAX_REPORT_DAYS:
        raise ValueError(f"at most {MAX_REPORT_DAYS} days in one report")
    db = registry.db
    scope = lists.Scope(school=school, schools=schools_in)
    u = UsageDay.__table__.c
    p = lists.places(db, names=False, kinds=True)  # each room's school and kinds (the page names its rooms)
    in_sight = lists.place_filter(p, scope)
    in_span = [u.day >= first, u.day <= last]
    if in_sight:  # a school's report adds up its rooms' rows only
        in_span.append(u.gateway.in_(select(p.c.id).where(*in_sight)))

    kept = kept_span(first, last)

    def sums(ids: list[str] | None = None) -> Any:
        """Each room's (gateway's) figures of the span, of the rooms `ids` (None: all in sight): a whole calendar
        month's or ISO week's from its `usage_months` or `usage_weeks` row (one a room, kept with the day rows),
        else summed from the days."""
        if kept is not None:
            mo, key = kept
            of_ids = [] if ids is None else [mo.gateway.in_(ids)]
            mine = [mo.gateway.in_(select(p.c.id).where(*in_sight))] if in_sight else []
            return select(mo.gateway.label("gateway"), mo.periods.label("periods"), mo.used.label("used"),
                          mo.measured.label("measured"), mo.days.label("days"),
                          mo.partial.label("partial")).where(key, *mine, *of_ids)
        of_ids = [] if ids is None else [u.gateway.in_(ids)]
        return select(*room_day_sums()).where(*in_span, *of_ids).group_by(u.gateway)

    per_gw = sums().subquery("per_gw")
    # The days. A school's report seeks its rooms' rows (`in_span`). The district's whole week or month: the days'
    # kept totals (`usage_day_totals`, one row a day, every room's rows) less the rows of the span's few rooms
    # that are no place (from its `usage_weeks` or `usage_months` rows, one a room: every room with a day row of
    # the span has one; their days sought by the primary key): a month's 300,000 room-days read by day and each
    # one's room looked up were 50 of its ~100 ms. Another span: its rows read by day from the index
    # `usage_days_rate`, each one's room looked up (`IN places` made SQLite seek every place's rows instead).
    gone = None
    if in_sight:
        per_day = day_totals().where(*in_span)
    elif kept is not None:
        mo, key = kept
        t = UsageDayTotal.__table__.c
        per_day = select(t.day, t.periods, t.used).where(t.day >= first, t.day <= last)
        gone = day_totals().where(*in_span, u.gateway.in_(select(mo.gateway).where(key, not_(lists.is_place(mo.gateway)))))
    else:
        per_day = day_totals().where(*in_span, lists.is_place(u.gateway))
    school_of = func.coalesce(p.c.school, "")
    expected = _expected_days(registry, school_of, first, last, now, site_zone)
    with db.read("cannot read the provisioned devices' profiles") as conn:
        profiles = [pr for pr in conn.execute(select(Device.profile).distinct()).scalars()
                    if profile_kind(pr) in POWER_KINDS]
    # A room counts (and its days not rolled up yet are pending) when it has a display or projector now
    # (reported or provisioned) or had one measured in the span.
    counted = or_(lists.equipped(db, p, POWER_KINDS, profiles), func.coalesce(per_gw.c.measured, 0) > 0)
    left = expected - func.coalesce(per_gw.c.days, 0)
    per_school = (select(school_of, func.sum(case((counted, 1), else_=0)),
                         func.coalesce(func.sum(per_gw.c.periods), 0), func.coalesce(func.sum(per_gw.c.used), 0),
                         func.sum(case((and_(counted, left > 0), left), else_=0)), func.min(per_gw.c.partial),
                         func.count())
                  .select_from(p).outerjoin(per_gw, per_gw.c.gateway == p.c.id).where(*in_sight).group_by(school_of))
    with db.read("cannot read the usage rollup") as conn:
        school_rows = [(s, int(n), int(k), int(m), int(pend or 0), partial, int(places))
                       for s, n, k, m, pend, partial, places in conn.execute(per_school)]
        day_rows = [(d, int(n), int(k)) for d, n, k in conn.execute(per_day)]
        if gone is not None:
            off = {d: (int(n), int(k)) for d, n, k in conn.execute(gone)}
            day_rows = [(d, n - off.get(d, (0, 0))[0], k - off.get(d, (0, 0))[1]) for d, n, k in day_rows]
        with_timetable = set(conn.execute(select(tts.TimetableRow.school_id)).scalars())
    partials = [r[5] for r in school_rows if r[5] is not None]
    report = UsageReport(first=first, last=last, asof=min(partials) if partials else time.time() if now is None else now)
    for name, rooms, periods, used, pending, _partial, _places in sorted(school_rows):
        sch = SchoolUsage(school=name, rooms=rooms, timetable=name in with_timetable)
        sch.add(periods, used)
        report.add(periods, used)
        report.pending += pending
        report.schools.append(sch)
    # Without a `q` every place in sight is a room of the list: the schools' rows counted them.
    in_list = None if page is not None and page.q else sum(r[6] for r in school_rows)
    report.rooms, report.total_rooms = _room_page(registry, scope, sums, page, profiles, in_list)
    report.days = [DayUsage(day=d, periods=n, used=k) for d, n, k in sorted(day_rows) if n]  # days with classes
    return report


def kept_span(first: date, last: date) -> tuple[Any, Any] | None:
    """The kept per-room sums of `first`..`last` when it is exactly a calendar month (`usage_months`) or an ISO
    week (`usage_weeks`): their columns and the condition picking the span's rows; None: sum the day rows."""
    month = whole_month(first, last)
    if month is not None:
        mo = UsageMonth.__table__.c
        return mo, mo.month == month
    week = whole_week(first, last)
    if week is not None:
        wk = UsageWeek.__table__.c
        return wk, wk.week == week
    return None


def _expected_days(registry: Registry, school_of: Any, first: date, last: date, now: float | None,
                   site_zone: ZoneInfo | None) -> Any:
    """How many days of the span each room's school has had up to its today (the days the rollup has rows of
    when it is caught up), as an SQL expression of the room's school (`school_of`): a number when every
    school with a timetable keeps the site's zone (one small read of the zones)."""
    now = time.time() if now is None else now
    site = tts.site_zone_of(site_zone)

    def days_to(zone: ZoneInfo) -> int:
        return (min(last, tts.today_in(zone, now)) - first).days + 1

    everywhere = days_to(site)
    other = {school: n for school, zone in tts.zones(registry).items() if (n := days_to(zone)) != everywhere}
    return case(other, value=school_of, else_=everywhere) if other else literal(everywhere)


def _room_page(registry: Registry, scope: Any, sums: Callable[..., Any], page: Any, profiles: list[str],
               in_list: int | None) -> tuple[list[RoomUsage], int]:
    """The report's rooms of `page` (None: all) with their figures, and how many match its `q` (`in_list`: that
    number, when the caller knows it); the displays, projectors and meters read for those rooms only."""
    from central import lists
    from central.overview import profile_kind

    db = registry.db
    p = lists.places(db)
    where = [*lists.place_filter(p, scope), lists.matches(page.q if page else None, p.c.id, p.c.school,
                                                         p.c.building, p.c.room)]
    if page is None:  # every room: the sums of every room in one pass
        per_gw = sums().subquery("per_gw")
        query = (select(p.c.id, p.c.school, p.c.building, p.c.room, per_gw.c.periods, per_gw.c.used)
                 .select_from(p).outerjoin(per_gw, per_gw.c.gateway == p.c.id).where(*where)
                 .order_by(*lists.place_order(db, p)))
        with db.read("cannot read the usage rollup") as conn:
            rows = conn.execute(query).all()
        total = len(rows)
    else:  # the page's rooms from the places alone, then their sums (a join would sum every room's first)
        query = (select(p.c.id, p.c.school, p.c.building, p.c.room).where(*where)
                 .order_by(*lists.place_order(db, p)).limit(page.limit).offset(page.offset))
        with db.read("cannot read the usage rollup") as conn:
            places = conn.execute(query).all() if page.limit else []
            total = (conn.execute(select(func.count()).select_from(p).where(*where)).scalar_one()
                     if in_list is None else in_list)
            ids = [r[0] for r in places]
            figures = {gid: (n, k) for gid, n, k, *_rest in conn.execute(sums(ids))} if ids else {}
        rows = [(*r, *figures.get(r[0], (0, 0))) for r in places]
    ids = None if page is None else [r[0] for r in rows]
    devices: dict[str, set[str]] = {}
    meters: dict[str, set[str]] = {}
    kinds = (*POWER_KINDS, METER_KIND)
    reported = (lists.reported_kinds(db, kinds) if ids is None else lists.reported_kinds_of(db, kinds, ids))
    for gid, device_id, kind in reported:
        (meters if kind == METER_KIND else devices).setdefault(gid, set()).add(device_id)
    query = select(Device.gateway_id, Device.device_id, Device.profile)
    if ids is not None:
        query = query.where(Device.gateway_id.in_(ids)) if ids else None
    kind_of: dict[str, str] = {pr: POWER_KINDS[0] for pr in profiles}
    if query is not None:
        with db.read("cannot read the provisioned devices") as conn:
            provisioned = list(conn.execute(query))
        for gid, device_id, profile in provisioned:
            kind = kind_of.setdefault(profile, profile_kind(profile))
            if kind in POWER_KINDS or kind == METER_KIND:
                (meters if kind == METER_KIND else devices).setdefault(gid, set()).add(device_id)
    return [RoomUsage(periods=int(periods or 0), used=int(used or 0), gateway=gid, school=school or "",
                      building=building or "", room=room or "", devices=sorted(devices.get(gid, ())),
                      meters=sorted(meters.get(gid, ())))
            for gid, school, building, room, periods, used in rows], total


def room_periods_used(store: PointStore, gateway: str, devices: list[str], slots: list[tts.Slot],
                      min_on_s: float = USED_MIN_S) -> list[bool]:
    """For each slot, whether the room's devices together were on for `min_on_s` of it (or all of a
    shorter one). The store is read one school day's span of periods at a time."""
    by_day: dict[date, tuple[float, float]] = {}
    for s in slots:
        lo, hi = by_day.get(s.day, (s.start, s.end))
        by_day[s.day] = (min(lo, s.start), max(hi, s.end))
    spans: list[tuple[float, float]] = []
    for lo, hi in by_day.values():
        for device in devices:
            points = iter_points(store, gateway, device, "power", lo - MAX_SAMPLE_GAP_S, hi,
                                 chunk=hi - lo + MAX_SAMPLE_GAP_S + 1)
            spans += on_intervals(points, lo, hi)
    union = merged(spans)
    return [overlap(union, s.start, s.end) >= min(min_on_s, s.end - s.start) for s in slots]


def _rooms(registry: Registry, ledger: Ledger, schools: tuple[str, ...] | None = None) -> list[RoomUsage]:
    """Every room (a gateway, registered or reporting; of `schools`, if given) with its displays and
    projectors: those its agent reports, and those provisioned that never reported (they count as off:
    nothing says they were on)."""
    return [room for room, _sensors in rooms_with_sensors(registry, ledger, schools)]


def rooms_with_sensors(registry: Registry, ledger: Ledger,
                       schools: tuple[str, ...] | None = None) -> list[tuple[RoomUsage, list[str]]]:
    """`_rooms` (with their meters), each with its environment sensors (reported or provisioned) whose CO2
    is measured.
    Four statements however many rooms, the agents' reported devices read from their state in SQL."""
    from central import lists
    from central.overview import profile_kind  # the overview imports much; only this is wanted here

    places = lists.place_rows(registry.db, lists.Scope(schools=schools))
    if not places:
        return []
    ids = None if schools is None else [gid for gid, *_ in places]
    devices: dict[str, set[str]] = {}
    sensors: dict[str, set[str]] = {}
    meters: dict[str, set[str]] = {}
    for gid, device_id, kind in lists.reported_kinds(registry.db, (*POWER_KINDS, ENVIRONMENT_KIND, METER_KIND)):
        by_kind = sensors if kind == ENVIRONMENT_KIND else meters if kind == METER_KIND else devices
        by_kind.setdefault(gid, set()).add(device_id)
    query = select(Device.gateway_id, Device.device_id, Device.profile)
    with registry.db.read("cannot read the provisioned devices") as conn:
        provisioned = list(conn.execute(query if ids is None else query.where(Device.gateway_id.in_(ids))))
    kinds: dict[str, str] = {}
    for gid, device_id, profile in provisioned:
        kind = kinds.setdefault(profile, profile_kind(profile))
        if kind in POWER_KINDS:
            devices.setdefault(gid, set()).add(device_id)
        elif kind == ENVIRONMENT_KIND:
            sensors.setdefault(gid, set()).add(device_id)
        elif kind == METER_KIND:
            meters.setdefault(gid, set()).add(device_id)
    rooms = [(RoomUsage(gateway=gid, school=school, building=building, room=room,
                        devices=sorted(devices.get(gid, ())), meters=sorted(meters.get(gid, ()))),
              sorted(sensors.get(gid, ())))
             for gid, school, building, room in places]
    return sorted(rooms, key=lambda r: (r[0].school, r[0].building, r[0].room, r[0].gateway))
