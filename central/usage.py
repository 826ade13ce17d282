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
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import select

from campus import contract
from central import alarms as alarm_engine
from central import timetables as tts
from central.ledger import Ledger
from central.registry import Device, Registry
from central.store.base import MAX_POINTS, PointStore

# Power samples further apart than this do not count as "on" in between (the gateway was silent).
MAX_SAMPLE_GAP_S = 15 * 60
POWER_KINDS = ("projector", "display")
USED_MIN_S = 5 * 60
MAX_REPORT_DAYS = 62  # a month and a bit: a report reads every room's power over it


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
    """Time spans, clipped to [start, end], during which the device was in an `on` state.

    Each sample's state lasts until the next sample, but at most `max_gap` seconds (a silent
    gateway says nothing about the time in between); overlapping spans are merged.
    """
    pts = sorted(points)
    spans: list[tuple[float, float]] = []
    for i, (ts, value) in enumerate(pts):
        if power_state(value) not in on_states:
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
    `last`, and of each day; `asof`: periods ending after it were not counted."""
    first: date = date.min
    last: date = date.min
    asof: float = 0.0
    rooms: list[RoomUsage] = field(default_factory=list)
    schools: list[SchoolUsage] = field(default_factory=list)
    days: list[DayUsage] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """As the JSON API answers it: each level with its `rate` (0-1, None without periods)."""
        def one(c: Count) -> dict[str, Any]:
            out = {k: v.isoformat() if isinstance(v, date) else v for k, v in asdict(c).items()
                   if k not in ("rooms", "schools", "days")}
            return {**out, "rate": c.rate}
        return {**one(self), "rooms": [one(r) for r in self.rooms], "schools": [one(s) for s in self.schools],
                "days": [one(d) for d in self.days]}


def usage_rate(registry: Registry, ledger: Ledger, store: PointStore, first: date, last: date,
               school: str | None = None, *, now: float | None = None,
               timetables: dict[str, tts.Timetable] | None = None, min_on_s: float = USED_MIN_S,
               schools_in: tuple[str, ...] | None = None) -> UsageReport:
    """The usage rate of every room with a display or projector (of one school, or all; of `schools_in` only,
    if given: a school-scoped account's) from `first` to `last` (both included), its schools' and the
    district's (of what is in sight). ValueError for a span that ends before it
    starts or is longer than MAX_REPORT_DAYS."""
    if last < first:
        raise ValueError(f"the end {last} is before the start {first}")
    if (last - first).days >= MAX_REPORT_DAYS:
        raise ValueError(f"at most {MAX_REPORT_DAYS} days in one report")
    now = time.time() if now is None else now
    timetables = tts.load_all(registry, schools_in) if timetables is None else timetables
    report = UsageReport(first=first, last=last, asof=now)
    schools: dict[str, SchoolUsage] = {}
    days: dict[date, DayUsage] = {}
    slots_of: dict[str, list[tts.Slot]] = {}
    for room in _rooms(registry, ledger, schools_in):
        if school is not None and room.school != school:
            continue
        sch = schools.setdefault(room.school, SchoolUsage(school=room.school, timetable=room.school in timetables))
        if not room.devices:
            report.rooms.append(room)
            continue
        if room.school not in slots_of:
            tt = timetables.get(room.school)
            slots_of[room.school] = [s for s in tts.class_periods(tt, first, last) if s.end <= now] if tt else []
        used = room_periods_used(store, room.gateway, room.devices, slots_of[room.school], min_on_s)
        for slot, on in zip(slots_of[room.school], used, strict=True):
            room.add(1, int(on))
            days.setdefault(slot.day, DayUsage(day=slot.day)).add(1, int(on))
        sch.rooms += 1
        sch.add(room.periods, room.used)
        report.add(room.periods, room.used)
        report.rooms.append(room)
    report.schools = sorted(schools.values(), key=lambda s: s.school)
    report.days = [days[d] for d in sorted(days)]
    return report


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
    merged: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return [overlap(merged, s.start, s.end) >= min(min_on_s, s.end - s.start) for s in slots]


def _rooms(registry: Registry, ledger: Ledger, schools: tuple[str, ...] | None = None) -> list[RoomUsage]:
    """Every room (a gateway, registered or reporting; of `schools`, if given) with its displays and
    projectors: those its agent reports, and those provisioned that never reported (they count as off:
    nothing says they were on)."""
    from central import lists
    from central.overview import profile_kind  # the overview imports much; only this is wanted here

    ids = None if schools is None else lists.all_gateway_ids(registry.db, lists.Scope(schools=schools))
    if ids == []:
        return []
    places = alarm_engine.gateway_places(registry, ids=ids)
    gateways = {gw["id"]: gw for gw in ledger.gateways(ids=ids)}
    devices: dict[str, set[str]] = {}
    for dev in ledger.gateway_devices(ids=ids):
        if dev.get("kind") in POWER_KINDS:
            devices.setdefault(dev["gateway"], set()).add(dev["id"])
    query = select(Device.gateway_id, Device.device_id, Device.profile)
    with registry.session() as s:
        provisioned = list(s.execute(query if ids is None else query.where(Device.gateway_id.in_(ids))))
    kinds: dict[str, str] = {}
    for gid, device_id, profile in provisioned:
        if kinds.setdefault(profile, profile_kind(profile)) in POWER_KINDS:
            devices.setdefault(gid, set()).add(device_id)
    rooms = []
    for gid in sorted(set(places) | set(gateways)):
        place, gw = places.get(gid, {}), gateways.get(gid, {})
        rooms.append(RoomUsage(gateway=gid, school=place.get("school") or gw.get("school", ""),
                               building=place.get("building", ""), room=place.get("room") or gw.get("room", ""),
                               devices=sorted(devices.get(gid, ()))))
    return sorted(rooms, key=lambda r: (r.school, r.building, r.room, r.gateway))
