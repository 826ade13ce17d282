"""The class register: computed from the ledger's swipes and check-ins of a room's day, the timetable, the
roster and the corrections (central/attendance.py says how). Never stored.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from campus import contract
from campus.errors import ConfigError
from campus.i18n import lazy_gettext
from central import lists, timetables
from central.attendance_model import (
    CORRECTABLE,
    EARLY_S,
    EVENT_TYPES,
    PREFIX_CHARS,
    STATUSES,
    AttendanceMark,
    ClassRoom,
    RosterPerson,
    _forget_days,
    first_kept,
    settings,
)
from central.attendance_roster import class_rooms
from central.registry import Gateway, Registry, Room

# The fields of an event that carry a pseudonym: a swipe's `card`; a QR check-in's `person` (the code keyed-hashed
# on the gateway: contract.ATTENDANCE_FIELDS). Only 64 hex digits count: an older agent's raw `code` never matches.
PSEUDONYM_FIELDS = ("card", "person")

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


# ---------------------------------------------------------------- the register


@dataclass(frozen=True)
class Entry:
    """One line of a register: a person (or an unknown pseudonym's prefix) in one period."""
    day: date
    period: int
    period_name: str
    room: str
    person: str
    person_id: int | None
    klass: str
    role: str
    status: str
    first_seen: float | None
    source: str | None       # card, qr; None: not seen
    corrected_by: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"date": self.day.isoformat(), "period": self.period, "room": self.room, "person": self.person,
                "class": self.klass, "status": self.status, "first_seen": self.first_seen, "source": self.source,
                "corrected": bool(self.corrected_by)}


@dataclass(frozen=True, slots=True)
class _Person:
    """A roster row as a plain value: a summary reads hundreds of thousands of its fields."""
    id: int
    name: str
    class_name: str
    role: str
    card: str | None
    qr: str | None


@dataclass
class _School:
    """What a school's registers are computed from, read once for a page or a report."""
    school: str
    zone: ZoneInfo
    tt: timetables.Timetable | None
    grace_s: float
    people: dict[int, _Person]
    by_pseudonym: dict[str, _Person]
    classes_of_room: dict[int, list[str]]
    room_names: dict[int, str]
    gateways_of_room: dict[int, list[str]]


def _load(registry: Registry, school: str, site_zone: ZoneInfo) -> _School:
    tt = timetables.load(registry, school)
    grace = settings(registry, school).grace_min * 60.0
    with registry.session() as s:
        r = RosterPerson
        people = {row[0]: _Person(*row) for row in s.execute(
            select(r.id, r.name, r.class_name, r.role, r.card, r.qr).where(r.school_id == school))}
        classes: dict[int, list[str]] = {}
        for klass, rid in s.execute(select(ClassRoom.class_name, ClassRoom.room_id).where(ClassRoom.school_id == school)):
            classes.setdefault(rid, []).append(klass)
        rooms = dict(s.execute(select(Room.id, Room.name).where(Room.school_id == school)).all())
        gateways: dict[int, list[str]] = {}
        for gid, rid in s.execute(select(Gateway.id, Gateway.room_id).where(Gateway.school_id == school,
                                                                            Gateway.room_id.is_not(None))):
            gateways.setdefault(rid, []).append(gid)
    by_pseudonym: dict[str, _Person] = {}
    for p in people.values():
        for value in (p.card, p.qr):
            if value:
                by_pseudonym[value] = p
    return _School(school, tt.zone if tt else site_zone, tt, grace, people, by_pseudonym,
                   {rid: sorted(c) for rid, c in classes.items()}, rooms, gateways)


def pseudonym_of(data: Any, type_: str = contract.CARD_SWIPE_EVENT) -> tuple[str, str] | None:
    """The pseudonym an event carries and its source (card: a reader's swipe; qr: a camera's check-in), or
    None (a raw code is not one)."""
    if not isinstance(data, dict):
        return None
    for key in PSEUDONYM_FIELDS:
        value = data.get(key)
        if isinstance(value, str) and _HEX64.match(value):
            return value, "card" if type_ == contract.CARD_SWIPE_EVENT else "qr"
    return None


def _entries(sc: _School, room_id: int, slots: list[timetables.Slot], events: list[tuple[str, float, str, Any]],
             marks: dict[tuple[date, int, int], tuple[str, str]], now: float,
             klass: str | None = None) -> list[Entry]:
    """The room's register for these slots (the periods that have started by `now`)."""
    room = sc.room_names.get(room_id, "")
    gateways = set(sc.gateways_of_room.get(room_id, []))
    classes = [c for c in sc.classes_of_room.get(room_id, []) if klass is None or c == klass]
    expected = sorted((p for p in sc.people.values() if p.class_name in classes and p.role == "student"),
                      key=lambda p: (p.class_name, p.name))
    seen_events = sorted((ts, found) for gw, ts, type_, data in events
                         if gw in gateways and (found := pseudonym_of(data, type_)) is not None)
    times = [ts for ts, _found in seen_events]
    out: list[Entry] = []
    for slot in slots:
        if slot.start > now:
            continue
        first: dict[str, tuple[float, str]] = {}
        # The period's window by bisection: a summary runs this for every period of weeks of swipes.
        for ts, (pseudonym, source) in seen_events[bisect_left(times, slot.start - EARLY_S):
                                                   bisect_left(times, slot.end)]:
            if pseudonym not in first:
                first[pseudonym] = (ts, source)  # duplicates fold into the first
        seen_people: dict[int, tuple[float, str]] = {}
        unknown: list[tuple[str, float, str]] = []
        for pseudonym, (ts, source) in first.items():
            person = sc.by_pseudonym.get(pseudonym)
            if person is None:
                unknown.append((pseudonym, ts, source))
            elif person.id not in seen_people or ts < seen_people[person.id][0]:
                seen_people[person.id] = (ts, source)  # card and QR of one person: the first

        def line(person: _Person, seen: tuple[float, str] | None,
                 slot: timetables.Slot = slot) -> Entry:
            status = "absent" if seen is None else ("late" if seen[0] > slot.start + sc.grace_s else "present")
            mark = marks.get((slot.day, slot.period.number, person.id))
            return Entry(slot.day, slot.period.number, slot.period.name, room, person.name, person.id,
                         person.class_name, person.role, mark[0] if mark else status,
                         seen[0] if seen else None, seen[1] if seen else None, mark[1] if mark else "")

        listed = set()
        for person in expected:
            out.append(line(person, seen_people.get(person.id)))
            listed.add(person.id)
        for pid, seen in sorted(seen_people.items(), key=lambda kv: kv[1][0]):
            person = sc.people[pid]
            if pid not in listed and (klass is None or person.class_name == klass):
                out.append(line(person, seen))
        if klass is None:
            out += [Entry(slot.day, slot.period.number, slot.period.name, room, p[:PREFIX_CHARS], None, "", "",
                          "unknown", ts, source) for p, ts, source in sorted(unknown, key=lambda u: u[1])]
    return out


def _marks(registry: Registry, room_ids: Iterable[int], first: date, last: date
           ) -> dict[int, dict[tuple[date, int, int], tuple[str, str]]]:
    out: dict[int, dict[tuple[date, int, int], tuple[str, str]]] = {}
    with registry.session() as s:
        for m in s.scalars(select(AttendanceMark).where(AttendanceMark.room_id.in_(list(room_ids)),
                                                        AttendanceMark.day >= first, AttendanceMark.day <= last)):
            out.setdefault(m.room_id, {})[(m.day, m.period, m.person_id)] = (m.status, m.by or "?")
    return out


def _day_span(sc: _School, first: date, last: date) -> tuple[list[timetables.Slot], float, float]:
    slots = timetables.class_periods(sc.tt, first, last) if sc.tt else []
    start = datetime.combine(first, datetime.min.time(), sc.zone).timestamp()
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), sc.zone).timestamp()
    return slots, start, end


def register(registry: Registry, school: str, room: str, day: date, *, klass: str | None = None,
             site_zone: ZoneInfo | str = timetables.DEFAULT_TIMEZONE, now: float | None = None) -> list[Entry]:
    """The register of `room` of `school` on `day` (of one class, if given), every period that has started,
    in period then class then name order. LookupError for a room that does not exist."""
    zone = site_zone if isinstance(site_zone, ZoneInfo) else ZoneInfo(site_zone)
    sc = _load(registry, school, zone)
    room_id = next((rid for rid, name in sc.room_names.items() if name == room), None)
    if room_id is None:
        raise LookupError(room)
    now = time.time() if now is None else now
    if day < _first_kept(registry, sc, now):
        return []  # past the retention: only counts are left (`summary`)
    slots, start, end = _day_span(sc, day, day)
    events = lists.attendance_events(registry.db, sc.gateways_of_room.get(room_id, []), start, end, EVENT_TYPES)
    marks = _marks(registry, [room_id], day, day).get(room_id, {})
    entries = _entries(sc, room_id, slots, events, marks, now, klass)
    order = {s: n for n, s in enumerate(STATUSES)}
    return sorted(entries, key=lambda e: (e.period, e.klass == "", e.klass, order[e.status], e.person))


def counts(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    """The register as counts per period and class (what a role that may not see names gets)."""
    out: dict[tuple[date, int, str], dict[str, Any]] = {}
    for e in entries:
        row = out.setdefault((e.day, e.period, e.klass), {"date": e.day.isoformat(), "period": e.period,
                                                          "class": e.klass, "room": e.room,
                                                          **{s: 0 for s in STATUSES}})
        row[e.status] += 1
    return [out[k] for k in sorted(out)]


def current_period(registry: Registry, school: str, site_zone: ZoneInfo | str,
                   now: float | None = None) -> tuple[date, int] | None:
    """The school's period now (date and number), or None between periods and without a timetable."""
    tt = timetables.load(registry, school)
    if tt is None:
        return None
    found = timetables.period_at(tt, time.time() if now is None else now)
    return (found[0], found[1].number) if found else None


def room_of_gateway(registry: Registry, gateway: str) -> tuple[str, str] | None:
    """The (school, room) a registered gateway is placed in, or None."""
    with registry.session() as s:
        row = s.execute(select(Gateway.school_id, Room.name).join(Room, Room.id == Gateway.room_id)
                        .where(Gateway.id == gateway)).first()
    return (row[0], row[1]) if row else None


def class_room(registry: Registry, school: str, klass: str) -> str | None:
    """The home room of a class, or None."""
    return class_rooms(registry, school).get(klass)


def correct(registry: Registry, school: str, room: str, day: date, period: int, person: str, klass: str,
            status: str, by: str) -> None:
    """A teacher's correction: `person` (name) of `klass` has `status` in that period. ConfigError for a
    status that cannot be set, LookupError for a room or person not on the roster."""
    if status not in CORRECTABLE:
        raise ConfigError(lazy_gettext("status must be one of %(statuses)s", statuses=", ".join(CORRECTABLE)))
    with registry.session() as s:
        room_id = s.scalar(select(Room.id).where(Room.school_id == school, Room.name == room))
        pid = s.scalar(select(RosterPerson.id).where(RosterPerson.school_id == school, RosterPerson.name == person,
                                                     RosterPerson.class_name == klass))
        if room_id is None or pid is None:
            raise LookupError(person)
        row = s.scalar(select(AttendanceMark).where(AttendanceMark.room_id == room_id, AttendanceMark.day == day,
                                                    AttendanceMark.period == period,
                                                    AttendanceMark.person_id == pid))
        if row is None:
            s.add(AttendanceMark(room_id=room_id, day=day, period=period, person_id=pid, status=status, by=by[:64],
                                 ts=time.time()))
        else:
            row.status, row.by, row.ts = status, by[:64], time.time()
        _forget_days(registry, s, school, day, day)  # in the correction's transaction



def _first_kept(registry: Registry, sc: _School, now: float) -> date:
    """The school's first day whose named entries are still kept."""
    return first_kept(sc.tt, settings(registry, sc.school).retention_days,
                      datetime.fromtimestamp(now, sc.zone).date())


