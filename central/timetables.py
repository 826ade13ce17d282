"""School timetables (作息时间表): class periods per weekday, terms, holidays and make-up working days.

A school's timetable is what everything that cares about "is there a class now" asks: the usage rate
(central/usage.py) counts a room's class periods from it, schedules will switch rooms by it. It is
one whole document per school, replaced whole (the page, the CSV import and `PUT
/api/schools/<school>/timetable` all save a complete timetable), so there is no half-edited state:

- periods: (weekday 1-7, Monday 1; number, 第N节; start and end, local "HH:MM"; a name). Weekdays
  may differ (a short Friday); a weekday without periods has no classes (weekends).
- terms (学期): date ranges. With terms, a date outside every term has no classes (寒暑假 between
  terms need not be listed); with none, every date is in term.
- holidays (法定节假日, 寒假, 暑假, a sports day): date ranges without classes.
- workdays (调休 make-up working days): dates that follow another weekday's periods (a Sunday
  worked "按周五课表"). One inside a holiday is refused: it would silently never count.

Times are the school's local time (`timezone`, an IANA name, Asia/Shanghai by default), so a
district spread over time zones, or a server kept in UTC, counts the same 08:00. The same zone is the
school's for everything shown of it (`zones`, `school_zone`: its pages, exports and notifications); a
school without a timetable has the site's.

The two questions (`period_at`, `class_periods`) take a `Timetable` value, not the database: a
report over 2,000 rooms loads each school's timetable once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Date, Float, ForeignKey, Integer, String, UniqueConstraint, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from campus import names
from campus.errors import ConfigError
from campus.i18n import N_, LazyText, lazy_gettext
from central.db import Base
from central.registry import Gateway, Registry, School

DEFAULT_TIMEZONE = "Asia/Shanghai"
# Bounds that keep a typo from becoming a report over a millennium, and a body from becoming a DoS.
FIRST_DATE, LAST_DATE = date(2000, 1, 1), date(2099, 12, 31)
MAX_PERIODS_PER_DAY = 20
MAX_RANGES = 500
MAX_RANGE_DAYS = 366       # a term, a holiday, a make-up span
MAX_QUERY_DAYS = 400       # `class_periods` in one call: a school year and a bit
NAME_MAX = 100
WEEKDAY_NAMES = (N_("Monday"), N_("Tuesday"), N_("Wednesday"), N_("Thursday"), N_("Friday"), N_("Saturday"),
                 N_("Sunday"))
RANGE_KINDS = ("terms", "holidays", "workdays")
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


# ---------------------------------------------------------------- tables (migration 0003)


class TimetableRow(Base):
    """A school's timetable: its time zone and who saved it last; the periods and dates hang off it."""
    __tablename__ = "timetables"
    school_id: Mapped[str] = mapped_column(ForeignKey("schools.id"), primary_key=True)
    timezone: Mapped[str] = mapped_column(String(64), default=DEFAULT_TIMEZONE)
    updated: Mapped[float] = mapped_column(Float, default=time.time)
    updated_by: Mapped[str] = mapped_column(String(64), default="")


class PeriodRow(Base):
    __tablename__ = "timetable_periods"
    __table_args__ = (UniqueConstraint("school_id", "weekday", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    school_id: Mapped[str] = mapped_column(ForeignKey("timetables.school_id"))
    weekday: Mapped[int] = mapped_column(Integer)    # ISO: Monday 1 .. Sunday 7
    number: Mapped[int] = mapped_column(Integer)     # 第N节
    start_min: Mapped[int] = mapped_column(Integer)  # minutes after local midnight
    end_min: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(NAME_MAX), default="")


class DateRangeRow(Base):
    """A term, a holiday or a make-up working day span (`kind`), first and last day included."""
    __tablename__ = "timetable_dates"
    id: Mapped[int] = mapped_column(primary_key=True)
    school_id: Mapped[str] = mapped_column(ForeignKey("timetables.school_id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # terms, holidays, workdays
    name: Mapped[str] = mapped_column(String(NAME_MAX), default="")
    first: Mapped[date] = mapped_column(Date)
    last: Mapped[date] = mapped_column(Date)
    follows: Mapped[int | None] = mapped_column(Integer, nullable=True)  # workdays: the weekday followed


# ---------------------------------------------------------------- the timetable as a value


class TimetableError(ConfigError):
    """One thing wrong with a timetable: `where` is the item (``periods[3]``, or a CSV line number),
    `field` the field in it (``end``); the message says what is wrong, for people."""

    def __init__(self, where: str | int, field: str, message: str | LazyText) -> None:
        super().__init__(message)
        self.where, self.field, self.message = where, field, message

    @property
    def path(self) -> str:
        """The JSON path of the field, as a 400 names it: ``periods[3].end``."""
        return f"{self.where}.{self.field}" if self.field and self.where != "" else str(self.field or self.where)


@dataclass(frozen=True)
class Period:
    weekday: int
    number: int
    start: dtime
    end: dtime
    name: str = ""
    where: str | int = field(default="", compare=False)  # where it came from, for errors

    def as_dict(self) -> dict[str, Any]:
        return {"weekday": self.weekday, "number": self.number, "name": self.name,
                "start": self.start.strftime("%H:%M"), "end": self.end.strftime("%H:%M")}


@dataclass(frozen=True)
class DateRange:
    kind: str  # one of RANGE_KINDS
    first: date
    last: date
    name: str = ""
    follows: int | None = None
    where: str | int = field(default="", compare=False)

    def __contains__(self, day: date) -> bool:
        return self.first <= day <= self.last

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "start": self.first.isoformat(), "end": self.last.isoformat()}
        if self.kind == "workdays":
            out["follows"] = self.follows
        return out


@dataclass(frozen=True)
class Timetable:
    school: str
    timezone: str = DEFAULT_TIMEZONE
    periods: tuple[Period, ...] = ()
    ranges: tuple[DateRange, ...] = ()
    updated: float | None = None
    updated_by: str = ""

    def __post_init__(self) -> None:
        # In a canonical order: two timetables with the same periods and dates are equal, however given.
        object.__setattr__(self, "periods", tuple(sorted(self.periods, key=lambda p: (p.weekday, p.start, p.number))))
        object.__setattr__(self, "ranges", tuple(sorted(self.ranges, key=lambda r: (r.kind, r.first, r.last, r.name))))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def of(self, kind: str) -> list[DateRange]:
        return [r for r in self.ranges if r.kind == kind]

    def as_dict(self) -> dict[str, Any]:
        """The timetable as the JSON API answers it (and takes it back in a PUT)."""
        return {"school": self.school, "timezone": self.timezone,
                "periods": [p.as_dict() for p in sorted(self.periods, key=lambda p: (p.weekday, p.start))],
                **{kind: [r.as_dict() for r in sorted(self.of(kind), key=lambda r: r.first)] for kind in RANGE_KINDS},
                "updated": self.updated, "updated_by": self.updated_by}


@dataclass(frozen=True)
class Slot:
    """One class period on one date, with its start and end as unix times (the school's time zone)."""
    day: date
    period: Period
    start: float
    end: float


# ---------------------------------------------------------------- the questions


def site_zone_of(given: ZoneInfo | None) -> ZoneInfo:
    """The site's zone: the one `given` (`campus web --timezone`, passed down by central/service.py), else the
    default, Asia/Shanghai: what a school without a timetable keeps. The one place that default is chosen."""
    return given or ZoneInfo(DEFAULT_TIMEZONE)


def today_in(zone: ZoneInfo, now: float | None = None) -> date:
    """The date in `zone` at `now` (None: now): a school's today, the day the usage rollup writes as today
    and the usage report expects rows up to (central/usage_rollup.py, central/usage.py); not the host's
    `date.today()`, a day behind Asia/Shanghai from 16:00 UTC on a host kept in UTC."""
    return datetime.fromtimestamp(time.time() if now is None else now, zone).date()


def day_periods(tt: Timetable, day: date) -> list[Period]:
    """The class periods of `day` in order: none outside every term (when there are terms) or on a
    holiday; a make-up working day's are those of the weekday it follows."""
    terms = tt.of("terms")
    if terms and not any(day in t for t in terms):
        return []
    if any(day in h for h in tt.of("holidays")):
        return []
    weekday = next((w.follows for w in tt.of("workdays") if day in w and w.follows), day.isoweekday())
    return sorted((p for p in tt.periods if p.weekday == weekday), key=lambda p: p.start)


def period_at(tt: Timetable, when: float | datetime) -> tuple[date, Period] | None:
    """Which period (if any) the school is in at `when` (a unix time, or an aware datetime): the local
    date and the period, start included, end excluded; None between periods, on holidays, out of term."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError("period_at needs an aware datetime (or a unix time)")
        local = when.astimezone(tt.zone)
    else:
        local = datetime.fromtimestamp(when, tt.zone)
    now = local.time().replace(tzinfo=None)
    for p in day_periods(tt, local.date()):
        if p.start <= now < p.end:
            return local.date(), p
    return None


def class_periods(tt: Timetable, first: date, last: date) -> list[Slot]:
    """Every class period of the school from `first` to `last` (both included), in time order.
    ValueError for a span beyond MAX_QUERY_DAYS or one that ends before it starts."""
    if last < first:
        raise ValueError(lazy_gettext("the end %(end)s is before the start %(start)s", end=str(last), start=str(first)))
    if (last - first).days >= MAX_QUERY_DAYS:
        raise ValueError(lazy_gettext("at most %(max)s days at once", max=MAX_QUERY_DAYS))
    zone, out = tt.zone, []
    day = first
    while day <= last:
        for p in day_periods(tt, day):
            out.append(Slot(day, p, datetime.combine(day, p.start, zone).timestamp(),
                            datetime.combine(day, p.end, zone).timestamp()))
        day += timedelta(days=1)
    return out


# ---------------------------------------------------------------- checking what people send


def parse_time(value: object, where: str | int, name: str) -> dtime:
    text = value.strip() if isinstance(value, str) else ""
    m = _HHMM.match(text.replace("：", ":"))  # a full-width colon, as Chinese input methods type it
    if not m:
        raise TimetableError(where, name, lazy_gettext("must be a time HH:MM (24 h), e.g. 08:00, got %(value)s",
                                                         value=repr(str(value)[:20])))
    return dtime(int(m.group(1)), int(m.group(2)))


def parse_date(value: object, where: str | int, name: str) -> date:
    text = value.strip().replace("/", "-") if isinstance(value, str) else ""
    try:
        y, m, d = (int(x) for x in text.split("-"))
        day = date(y, m, d)
    except ValueError:
        raise TimetableError(where, name, lazy_gettext(
            "must be a date YYYY-MM-DD, e.g. 2025-09-01, got %(value)s", value=repr(str(value)[:20]))) from None
    if not FIRST_DATE <= day <= LAST_DATE:
        raise TimetableError(where, name, lazy_gettext(
            "%(day)s is not a school date (between %(first)s and %(last)s)", day=str(day), first=str(FIRST_DATE),
            last=str(LAST_DATE)))
    return day


def parse_weekday(value: object, where: str | int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or str(value).strip() not in _WEEKDAYS:
        raise TimetableError(where, name, lazy_gettext(
            "must be a weekday 1-7 (Monday 1) or its name, got %(value)s", value=repr(str(value)[:20])))
    return _WEEKDAYS[str(value).strip()]


_WEEKDAYS: dict[str, int] = {}
for _i, (_en, _zh) in enumerate(zip(WEEKDAY_NAMES, "一二三四五六日", strict=True), start=1):
    for _key in (str(_i), _en, _en.lower(), _en[:3], _en[:3].lower(), _zh, f"周{_zh}", f"星期{_zh}"):
        _WEEKDAYS[_key] = _i
for _key in ("天", "周天", "星期天"):
    _WEEKDAYS[_key] = 7


def check_timezone(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise TimetableError("", "timezone", lazy_gettext("must be an IANA time zone name, e.g. Asia/Shanghai"))
    try:
        ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise TimetableError("", "timezone", lazy_gettext("unknown time zone %(value)s (e.g. Asia/Shanghai)",
                                                           value=repr(value[:64]))) from None
    return value.strip()


def check_name(value: object, where: str | int, name: str = "name") -> str:
    try:
        return names.display_name("" if value is None else value, name, max_chars=NAME_MAX, required=False)
    except names.BadName as exc:
        raise TimetableError(where, name, exc.reason) from None


def check_whole(tt: Timetable) -> Timetable:
    """Checks between items: periods of a weekday in order without overlap and numbered once, terms
    apart, every span a sensible length, no make-up day inside a holiday. Raises the first problem."""
    for problem in problems(tt):
        raise problem
    return tt


def problems(tt: Timetable) -> Iterable[TimetableError]:
    """Every problem between the items of `tt` (each item's own fields are already checked)."""
    by_day: dict[int, list[Period]] = {}
    for p in tt.periods:
        by_day.setdefault(p.weekday, []).append(p)
    for weekday, periods in sorted(by_day.items()):
        if len(periods) > MAX_PERIODS_PER_DAY:
            yield TimetableError(periods[MAX_PERIODS_PER_DAY].where, "weekday",
                                 lazy_gettext("more than %(max)s periods on %(weekday)s", max=MAX_PERIODS_PER_DAY,
                                              weekday=LazyText(WEEKDAY_NAMES[weekday - 1])))
        numbers: dict[int, Period] = {}
        for p in periods:
            if p.number in numbers:
                yield TimetableError(p.where, "number", lazy_gettext(
                    "period %(number)s of %(weekday)s is given twice (also %(where)s)", number=p.number,
                    weekday=LazyText(WEEKDAY_NAMES[weekday - 1]), where=_at(numbers[p.number].where)))
            numbers.setdefault(p.number, p)
        ordered = sorted(periods, key=lambda p: (p.start, p.end))
        for before, after in zip(ordered, ordered[1:], strict=False):
            if after.start < before.end:
                yield TimetableError(after.where, "start", lazy_gettext(
                    "%(span)s overlaps period %(number)s (%(other)s, %(where)s) on %(weekday)s",
                    span=after.start.strftime("%H:%M") + "-" + after.end.strftime("%H:%M"), number=before.number,
                    other=before.start.strftime("%H:%M") + "-" + before.end.strftime("%H:%M"), where=_at(before.where),
                    weekday=LazyText(WEEKDAY_NAMES[weekday - 1])))
    if len(tt.ranges) > MAX_RANGES:
        yield TimetableError(tt.ranges[MAX_RANGES].where, "", lazy_gettext(
            "more than %(max)s terms, holidays and workdays", max=MAX_RANGES))
    for r in tt.ranges:
        if (r.last - r.first).days >= MAX_RANGE_DAYS:
            yield TimetableError(r.where, "end", lazy_gettext(
                "%(first)s to %(last)s is longer than %(max)s days", first=str(r.first), last=str(r.last),
                max=MAX_RANGE_DAYS))
    terms = sorted(tt.of("terms"), key=lambda r: r.first)
    for before, after in zip(terms, terms[1:], strict=False):
        if after.first <= before.last:
            yield TimetableError(after.where, "start", lazy_gettext(
                "term %(term)s overlaps term %(other)s (%(first)s to %(last)s, %(where)s)",
                term=str(after.name or after.first), other=str(before.name or before.first), first=str(before.first),
                last=str(before.last), where=_at(before.where)))
    for w in tt.of("workdays"):
        for h in tt.of("holidays"):
            if w.first <= h.last and h.first <= w.last:
                yield TimetableError(w.where, "start", lazy_gettext(
                    "make-up day %(day)s is inside the holiday %(holiday)s (%(first)s to %(last)s, %(where)s): a "
                    "holiday has no classes; remove one of them", day=str(w.first), holiday=str(h.name or h.first),
                    first=str(h.first), last=str(h.last), where=_at(h.where)))


def _at(where: str | int) -> str | LazyText:
    return lazy_gettext("line %(line)s", line=where) if isinstance(where, int) else str(where)


def from_document(school: str, doc: Mapping[str, Any], timezone: str = DEFAULT_TIMEZONE) -> Timetable:
    """A timetable from the JSON API's document (`Timetable.as_dict`'s keys; without a `timezone`: `timezone`,
    the site's); TimetableError naming the first bad field (``periods[2].end``) otherwise."""
    known = {"school", "timezone", "periods", *RANGE_KINDS, "updated", "updated_by"}
    for key in doc:
        if key not in known:
            raise TimetableError("", str(key)[:64], lazy_gettext("unknown field; the fields are %(fields)s",
                                                                 fields=", ".join(sorted(known))))
    if doc.get("school", school) != school:
        raise TimetableError("", "school", lazy_gettext("the body is for school %(body)s, the URL for %(url)s",
                                                        body=repr(str(doc["school"])[:64]), url=repr(school)))
    timezone = check_timezone(doc.get("timezone", timezone))
    periods: list[Period] = []
    for i, item in enumerate(_list(doc, "periods", 7 * MAX_PERIODS_PER_DAY)):
        where = f"periods[{i}]"
        v = _object(item, where, ("weekday", "number", "start", "end", "name"), ("weekday", "number", "start", "end"))
        periods.append(period_of(where, v["weekday"], v["number"], v["start"], v["end"], v.get("name")))
    ranges: list[DateRange] = []
    for kind in RANGE_KINDS:
        allowed = ("name", "start", "end", "follows") if kind == "workdays" else ("name", "start", "end")
        for i, item in enumerate(_list(doc, kind, MAX_RANGES)):
            where = f"{kind}[{i}]"
            v = _object(item, where, allowed, ("start",))
            ranges.append(range_of(where, kind, v.get("name"), v["start"], v.get("end", v["start"]), v.get("follows")))
    return check_whole(Timetable(school, timezone, tuple(periods), tuple(ranges)))


def _list(doc: Mapping[str, Any], key: str, most: int) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise TimetableError("", key, lazy_gettext("must be a list"))
    if len(value) > most:
        raise TimetableError("", key, lazy_gettext("at most %(max)s items", max=most))
    return value


def _object(item: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise TimetableError(where, "", lazy_gettext("must be an object"))
    for key in item:
        if key not in allowed:
            raise TimetableError(where, str(key)[:64], lazy_gettext("unknown field; the fields are %(fields)s",
                                                                    fields=", ".join(allowed)))
    for key in required:
        if key not in item:
            raise TimetableError(where, key, lazy_gettext("required"))
    return item


def period_of(where: str | int, weekday: object, number: object, start: object, end: object,
            name: object) -> Period:
    day = parse_weekday(weekday, where, "weekday")
    if isinstance(number, str) and number.strip().isdigit() and len(number.strip()) <= 3:
        number = int(number.strip())
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_PERIODS_PER_DAY:
        raise TimetableError(where, "number", lazy_gettext("must be a whole number 1-%(max)s (第N节)",
                                                           max=MAX_PERIODS_PER_DAY))
    a, b = parse_time(start, where, "start"), parse_time(end, where, "end")
    if b <= a:
        raise TimetableError(where, "end", lazy_gettext("%(end)s is not after the start %(start)s",
                                                        end=b.strftime("%H:%M"), start=a.strftime("%H:%M")))
    return Period(day, number, a, b, check_name(name, where), where)


def range_of(where: str | int, kind: str, name: object, start: object, end: object, follows: object) -> DateRange:
    first, last = parse_date(start, where, "start"), parse_date(end, where, "end")
    if last < first:
        raise TimetableError(where, "end", lazy_gettext("%(end)s is before the start %(start)s", end=str(last),
                                                        start=str(first)))
    if kind == "workdays":
        if follows is None or follows == "":
            raise TimetableError(where, "follows", lazy_gettext(
                "a make-up working day follows a weekday's periods: give it (1-7)"))
        day: int | None = parse_weekday(follows, where, "follows")
    elif follows not in (None, ""):
        raise TimetableError(where, "follows", lazy_gettext(
            "only a make-up working day follows another weekday"))
    else:
        day = None
    return DateRange(kind, first, last, check_name(name, where), day, where)


# ---------------------------------------------------------------- the database


def load(registry: Registry, school: str) -> Timetable | None:
    """The school's saved timetable, or None if it has none."""
    with registry.session() as s:
        head = s.get(TimetableRow, school)
        if head is None:
            return None
        periods = tuple(Period(p.weekday, p.number, _hhmm(p.start_min), _hhmm(p.end_min), p.name)
                        for p in s.scalars(select(PeriodRow).where(PeriodRow.school_id == school)))
        ranges = tuple(DateRange(r.kind, r.first, r.last, r.name, r.follows)
                       for r in s.scalars(select(DateRangeRow).where(DateRangeRow.school_id == school)
                                          .order_by(DateRangeRow.first)))
        return Timetable(school, head.timezone, periods, ranges, head.updated, head.updated_by)


def load_all(registry: Registry, schools_in: tuple[str, ...] | None = None) -> dict[str, Timetable]:
    """Every school's timetable (of `schools_in`, if given: a school-scoped account's), by school (a
    district report reads them once)."""
    query = select(TimetableRow.school_id)
    if schools_in is not None:
        query = query.where(TimetableRow.school_id.in_(schools_in))
    with registry.session() as s:
        schools = list(s.scalars(query))
    return {school: tt for school in schools if (tt := load(registry, school)) is not None}


def save(registry: Registry, tt: Timetable, by: str = "") -> Timetable:
    """Replace the school's timetable with `tt` (checked again here), in one transaction. LookupError
    if the school is not in the registry."""
    check_whole(tt)
    with registry.session() as s:
        if s.get(School, tt.school) is None:
            raise LookupError(f"no school {tt.school!r}")
        head = s.get(TimetableRow, tt.school)
        if head is None:
            head = TimetableRow(school_id=tt.school)
            s.add(head)
        head.timezone, head.updated, head.updated_by = tt.timezone, time.time(), by[:64]
        s.flush()
        s.execute(delete(PeriodRow).where(PeriodRow.school_id == tt.school))
        s.execute(delete(DateRangeRow).where(DateRangeRow.school_id == tt.school))
        s.add_all(PeriodRow(school_id=tt.school, weekday=p.weekday, number=p.number, name=p.name,
                            start_min=p.start.hour * 60 + p.start.minute, end_min=p.end.hour * 60 + p.end.minute)
                  for p in tt.periods)
        s.add_all(DateRangeRow(school_id=tt.school, kind=r.kind, name=r.name, first=r.first, last=r.last,
                               follows=r.follows) for r in tt.ranges)
    saved = load(registry, tt.school)
    assert saved is not None
    # The school's gateways plan their schedules' runs by it (central/edge_schedules.py): a new plan is due.
    from central.edge_schedules import bump_gateways

    bump_gateways(registry, tt.school)
    return saved


def zones(registry: Registry, schools: Iterable[str] | None = None,
          gateways: Iterable[str] | None = None) -> dict[str, ZoneInfo]:
    """The zone of each school that has a timetable (of `schools`, and of the schools of `gateways`, if
    given: a caller's sight), by school; the one place a school's zone is read (a school without a
    timetable is absent: the caller's site zone is its zone). One small query: the page footer and the
    notifier ask it often."""
    query = select(TimetableRow.school_id, TimetableRow.timezone)
    if schools is not None:
        query = query.where(TimetableRow.school_id.in_(list(schools)))
    if gateways is not None:
        query = query.where(TimetableRow.school_id.in_(select(Gateway.school_id)
                                                       .where(Gateway.id.in_(list(gateways)))))
    with registry.session() as s:
        rows = s.execute(query).all()
    out: dict[str, ZoneInfo] = {}
    for school, name in rows:
        try:
            out[school] = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):  # saved before check_timezone, or tzdata lost it: the site's
            continue
    return out


def school_zone(registry: Registry, default: str | ZoneInfo, school: str | None = None,
                gateway: str | None = None) -> ZoneInfo:
    """The zone of `school` (or of the school `gateway` is placed in): its timetable's, else `default` (the
    site's zone). An unknown school or gateway has `default`: the caller refuses it on its own terms."""
    if gateway is not None:
        with registry.session() as s:
            school = s.scalar(select(Gateway.school_id).where(Gateway.id == gateway))
    found = zones(registry, [school]).get(school) if school else None
    return found or (default if isinstance(default, ZoneInfo) else ZoneInfo(default))


def school_exists(registry: Registry, school: str) -> bool:
    with registry.session() as s:
        return s.get(School, school) is not None


def _hhmm(minutes: int) -> dtime:
    return dtime(minutes // 60, minutes % 60)
