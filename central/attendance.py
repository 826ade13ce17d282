"""Attendance (考勤, issue 22): class rosters, and a register per room and class period made from swipes.

The gateways already report every card swipe (`card_swipe`, the card's pseudonym) and every QR check-in
on a camera (`attendance`, the code's pseudonym, protocols/card_ids.py `qr_pseudonym`) to the ledger.
Central keeps the other half here:

- a **roster** per school (`roster_people`): each person's name, class (班级) and role (student or
  staff) with the *pseudonyms* of their campus card (一卡通) and QR code, made with the school's card
  secret at import (`import_roster`) and never stored, logged or repeated in an error as numbers;
- each class's **home room** (`attendance_class_rooms`, the roster's optional `room` column): the class
  is taught there in every period of the school's timetable. Deliberately simple: a class that moves
  between rooms (labs, PE) is registered in its home room only; a school needing more would add a
  per-period room table here, which `register` could then read instead;
- **corrections** by a teacher (`attendance_marks`), which override a computed status and are audited by
  the page that makes them;
- per-school **settings** (`attendance_settings`): the grace after a period's start before an arrival
  is late, and how many days named attendance is kept;
- **counts** (`attendance_counts`): what remains of a day after its retention ran out.

The register is never stored: it is computed when asked, from the ledger's events of the room's
gateways in the day (one statement, central/lists.py `attendance_events`), the timetable, the roster and
the corrections. For each class period that has started: a roster person of the room's classes seen
(first swipe or check-in from `EARLY_S` before the start to the end) by `grace` after the start is
*present*, later *late*, not seen *absent*; a pseudonym on no roster of the school is *unknown*; a
person of another class seen in the room is listed with their own class. Repeated swipes fold into the
first. Staff are listed when seen, never absent.

Retention (`apply_retention`, run by `AttendanceRetention` under a lease like the usage rollup): the days
older than a school's limit are first reduced to counts per class and day, then their swipes and
check-ins are deleted from the ledger and their corrections from here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Date, Float, ForeignKey, Integer, String, Text, UniqueConstraint, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from campus import contract, names
from campus.errors import ConfigError, StoreError
from campus.i18n import N_, LazyText, lazy_gettext, message_of
from central import ledger, lists, timetables
from central.db import Base
from central.provisioning import CsvRecords, Header, ImportProblem, decode_csv
from central.registry import Gateway, Registry, Room, School
from protocols.card_ids import CARD_NUMBER_FORMS, card_hash, card_uid, qr_pseudonym

log = logging.getLogger(__name__)

NAME_MAX = 100
CLASS_MAX = 64
QR_MAX = 128
PREFIX_CHARS = 12            # how much of an unknown pseudonym a register shows
MAX_PEOPLE = 20_000          # a school's roster in one file
EARLY_S = 10 * 60            # a swipe this long before a period's start counts for it
DEFAULT_GRACE_MIN = 5
GRACE_RANGE = (0, 60)
DEFAULT_RETENTION_DAYS = 150  # about one term (学期): the default of a school whose timetable has no terms
RETENTION_RANGE = (7, 400)
# A day is *finished* this long after its end: its counts are kept (`attendance_day_counts`) and a summary reads
# them instead of its registers. Longer than ledger.LATE_EVENT_S (a swipe recorded later than that after its time
# is flagged, and its day's counts redone) with room for the slowest write.
SETTLE_S = 6 * ledger.LATE_EVENT_S
ROLES = ("student", "staff")
ROLE_ALIASES = {"学生": "student", "教师": "staff", "老师": "staff", "教职工": "staff", "员工": "staff",
                "teacher": "staff"}
STATUSES = ("present", "late", "absent", "excused", "unknown")
CORRECTABLE = ("present", "late", "absent", "excused")
STATUS_NAMES = {"present": N_("present"), "late": N_("late"), "absent": N_("absent"), "excused": N_("excused"),
                "unknown": N_("unknown")}
EVENT_TYPES = (contract.CARD_SWIPE_EVENT, contract.ATTENDANCE_EVENT)
# The fields of an event that carry a pseudonym: a swipe's `card`; a QR check-in's `person` (the code keyed-hashed
# on the gateway: contract.ATTENDANCE_FIELDS). Only 64 hex digits count: an older agent's raw `code` never matches.
PSEUDONYM_FIELDS = ("card", "person")

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
ROSTER_COLUMNS = ("name", "class", "role", "card", "qr", "room")
ROSTER_HEADER = Header(ROSTER_COLUMNS, {"name": "姓名", "class": "班级", "role": "角色", "card": "一卡通",
                                        "qr": "二维码", "room": "教室"}, ("name",),
                       {"卡号": "card", "一卡通号": "card", "校园卡": "card", "qr code": "qr", "code": "qr",
                        "二维码号": "qr", "班": "class", "房间": "room", "身份": "role"})


# ---------------------------------------------------------------- tables (migration 0012)


class RosterPerson(Base):
    """A person of a school's roster: name, class, role and the pseudonyms of their card and QR code."""
    __tablename__ = "roster_people"
    __table_args__ = (UniqueConstraint("school_id", "card", name="uq_roster_people_card"),
                      UniqueConstraint("school_id", "qr", name="uq_roster_people_qr"))
    id: Mapped[int] = mapped_column(primary_key=True)
    school_id: Mapped[str] = mapped_column(ForeignKey("schools.id"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    class_name: Mapped[str] = mapped_column(String(CLASS_MAX), default="")
    role: Mapped[str] = mapped_column(String(16), default="student")
    card: Mapped[str | None] = mapped_column(String(64), nullable=True)
    qr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    added: Mapped[float] = mapped_column(Float, default=time.time)
    added_by: Mapped[str] = mapped_column(String(64), default="")


class ClassRoom(Base):
    """The room a class is taught in (its home room, 班级教室)."""
    __tablename__ = "attendance_class_rooms"
    school_id: Mapped[str] = mapped_column(ForeignKey("schools.id"), primary_key=True)
    class_name: Mapped[str] = mapped_column(String(CLASS_MAX), primary_key=True)
    room_id: Mapped[int] = mapped_column(ForeignKey("rooms.id"), index=True)


class AttendanceMark(Base):
    """A teacher's correction of one person's status in one period of a room's day."""
    __tablename__ = "attendance_marks"
    __table_args__ = (UniqueConstraint("room_id", "day", "period", "person_id", name="uq_attendance_marks_entry"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    room_id: Mapped[int] = mapped_column(ForeignKey("rooms.id"), index=True)
    day: Mapped[date] = mapped_column(Date)
    period: Mapped[int] = mapped_column(Integer)
    person_id: Mapped[int] = mapped_column(ForeignKey("roster_people.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    by: Mapped[str] = mapped_column(String(64), default="")
    ts: Mapped[float] = mapped_column(Float, default=time.time)


class AttendanceSettings(Base):
    __tablename__ = "attendance_settings"
    school_id: Mapped[str] = mapped_column(ForeignKey("schools.id"), primary_key=True)
    grace_min: Mapped[int] = mapped_column(Integer, default=DEFAULT_GRACE_MIN)
    # None: the default, by the timetable's terms (`first_kept`); a number of days is the school's own choice.
    retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    updated: Mapped[float] = mapped_column(Float, default=time.time)
    updated_by: Mapped[str] = mapped_column(String(64), default="")


class AttendanceCount(Base):
    """A class's day once its named entries are past the retention: person-periods by status."""
    __tablename__ = "attendance_counts"
    school_id: Mapped[str] = mapped_column(ForeignKey("schools.id"), primary_key=True)
    class_name: Mapped[str] = mapped_column(String(CLASS_MAX), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    expected: Mapped[int] = mapped_column(Integer, default=0)  # roster students x class periods
    present: Mapped[int] = mapped_column(Integer, default=0)
    late: Mapped[int] = mapped_column(Integer, default=0)
    absent: Mapped[int] = mapped_column(Integer, default=0)
    excused: Mapped[int] = mapped_column(Integer, default=0)


class DayCounts(Base):
    """A finished day's counts per class (a summary's cache, migration 0016): what `_class_day_counts` gives
    for that day, as JSON {class: [expected, present, late, absent, excused]}. Read only while `stamp` (a hash
    of the roster, class rooms, gateways, timetable and grace: `_stamp`) is the school's; deleted for a
    correction of the day and for swipes that arrive late (ledger `late_events`)."""
    __tablename__ = "attendance_day_counts"
    school_id: Mapped[str] = mapped_column(ForeignKey("schools.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    stamp: Mapped[str] = mapped_column(String(64))
    counts: Mapped[str] = mapped_column(Text)


class CacheGeneration(Base):
    """Bumped by every deletion of a school's day counts: counts computed before it are not stored."""
    __tablename__ = "attendance_cache_gens"
    school_id: Mapped[str] = mapped_column(ForeignKey("schools.id"), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    grace_min: int = DEFAULT_GRACE_MIN
    retention_days: int | None = None  # None: until the end of the next term (`first_kept`)


def settings(registry: Registry, school: str) -> Settings:
    with registry.session() as s:
        row = s.get(AttendanceSettings, school)
        return Settings(row.grace_min, row.retention_days) if row else Settings()


def save_settings(registry: Registry, school: str, grace_min: object, retention_days: object, by: str) -> Settings:
    """Change the school's grace (minutes) and retention (days; empty or None: the default, by term);
    ConfigError naming the field out of range."""
    checked: list[int | None] = []
    for name, value, (low, high) in (("grace_min", grace_min, GRACE_RANGE),
                                     ("retention_days", retention_days, RETENTION_RANGE)):
        if name == "retention_days" and (value is None or not str(value).strip()):
            checked.append(None)
            continue
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ConfigError(lazy_gettext("%(field)s: not a whole number", field=name)) from None
        if not low <= number <= high:
            raise ConfigError(lazy_gettext("%(field)s must be between %(low)s and %(high)s", field=name, low=low,
                                           high=high))
        checked.append(number)
    with registry.session() as s:
        if s.get(School, school) is None:
            raise LookupError(school)
        row = s.get(AttendanceSettings, school) or AttendanceSettings(school_id=school)
        row.grace_min, row.retention_days, row.updated, row.updated_by = checked[0], checked[1], time.time(), by[:64]
        s.add(row)
    return Settings(int(checked[0] or 0), checked[1])


# ---------------------------------------------------------------- the roster import


@dataclass
class RosterImport:
    """What `import_roster` did: `ok` (all imported) or `errors` (nothing changed); the counts."""
    ok: bool = False
    added: int = 0
    changed: int = 0
    removed: int = 0
    classes: int = 0
    errors: list[ImportProblem] = field(default_factory=list)


@dataclass
class _Line:
    line: int
    name: str
    klass: str
    role: str
    card: str | None
    qr: str | None
    room_id: int | None


def import_roster(registry: Registry, school: str, data: bytes, by: str = "") -> RosterImport:
    """Replace the school's roster with the people of a CSV (UTF-8 or GB18030; columns `name,class,role,
    card,qr,room` or 姓名,班级,角色,一卡通,二维码,教室), all or nothing, each error naming its line and
    column. Card numbers and QR codes are pseudonymised with the school's card secret as each line is read
    and then forgotten: no row, error or log line repeats them. A person already on the roster (the same
    card, QR code, or class and name) keeps their corrections; one not in the file is removed. `room` sets
    the class's home room (one per class). LookupError for a school that does not exist."""
    report = RosterImport()
    with registry.session() as s:
        if s.get(School, school) is None:
            raise LookupError(school)
        room_ids = {name: rid for rid, name in s.execute(select(Room.id, Room.name).where(Room.school_id == school))}
    try:
        text = decode_csv(data)
    except ConfigError as exc:
        report.errors.append(ImportProblem(1, "", message_of(exc)))
        return report
    secret = registry.card_secret(school)
    wanted: list[_Line] = []
    firsts: dict[tuple[str, str], int] = {}  # (kind, key) -> first line: duplicates named
    homes: dict[str, tuple[int | None, int]] = {}  # class -> (room id, line)
    records = CsvRecords(text)
    header: list[str] | None = None
    try:
        for line, cells in records:
            if header is None:
                header, _labels, problems = ROSTER_HEADER.read(cells, line)
                report.errors += problems
                if report.errors:
                    return report
                continue
            if len(wanted) >= MAX_PEOPLE:
                report.errors.append(ImportProblem(line, "", lazy_gettext("at most %(n)s people in one roster",
                                                                          n=MAX_PEOPLE)))
                break
            values = CsvRecords.values(line, cells, header)
            if isinstance(values, ImportProblem):
                report.errors.append(values)
                continue
            row = _roster_line(line, values, secret, room_ids, report)
            if row is None:
                continue
            keys = [("card", row.card), ("qr", row.qr), ("name", f"{row.klass}\x00{row.name}")]
            clash = next(((kind, firsts[(kind, key)]) for kind, key in keys if key and (kind, key) in firsts), None)
            if clash is not None:
                kind, first = clash
                report.errors.append(ImportProblem(line, "name" if kind == "name" else kind, lazy_gettext(
                    "the same person is on line %(line)s", line=first)))
                continue
            for kind, key in keys:
                if key:
                    firsts[(kind, key)] = line
            if row.room_id is not None and row.klass:
                home = homes.setdefault(row.klass, (row.room_id, line))
                if home[0] != row.room_id:
                    report.errors.append(ImportProblem(line, "room", lazy_gettext(
                        "line %(line)s gives this class another room", line=home[1])))
                    continue
            wanted.append(row)
    except csv.Error as exc:
        report.errors.append(records.invalid(exc))
    if header is None and not report.errors:
        report.errors.append(ImportProblem(1, "", lazy_gettext(
            "the file is empty; the first line must be the header %(columns)s", columns=",".join(ROSTER_COLUMNS))))
    elif not wanted and not report.errors:
        report.errors.append(ImportProblem(1, "", lazy_gettext("no people after the header")))
    if report.errors:
        return report
    _store_roster(registry, school, wanted, homes, by, report)
    report.ok = True
    return report


def _roster_line(line: int, v: dict[str, str], secret: str, room_ids: dict[str, int],
                 report: RosterImport) -> _Line | None:
    before = len(report.errors)

    def bad(column: str, message: str | LazyText) -> None:
        report.errors.append(ImportProblem(line, column, message))

    name = klass = ""
    try:
        name = names.display_name(v.get("name", ""), "name", max_chars=NAME_MAX)
    except names.BadName as exc:
        bad("name", exc.reason)
    try:
        klass = names.display_name(v.get("class", ""), "class", max_chars=CLASS_MAX, required=False)
    except names.BadName as exc:
        bad("class", exc.reason)
    raw_role = v.get("role", "").strip()
    role = ROLE_ALIASES.get(raw_role, raw_role.lower() or "student")
    if role not in ROLES:
        bad("role", lazy_gettext("role must be one of %(roles)s", roles=", ".join(ROLES)))
    elif role == "student" and not klass and "class" not in {e.column for e in report.errors[before:]}:
        bad("class", lazy_gettext("a student needs a class"))
    card = qr = None
    if v.get("card", "").strip():
        try:
            card = card_hash(secret, card_uid(v["card"]))  # the number goes no further than this line
        except ValueError:
            bad("card", lazy_gettext("not a card number: write %(forms)s", forms=CARD_NUMBER_FORMS))
    code = v.get("qr", "").strip()
    if code:
        if len(code) > QR_MAX or not code.isprintable():
            bad("qr", lazy_gettext("a QR code id is 1 to %(max)s printable characters", max=QR_MAX))
        else:
            qr = qr_pseudonym(secret, code)  # the code goes no further either
    if card is None and qr is None and len(report.errors) == before:
        bad("card", lazy_gettext("a card number or a QR code id is needed"))
    room_id = None
    room = v.get("room", "").strip()
    if room:
        room_id = room_ids.get(room)
        if room_id is None:
            bad("room", lazy_gettext("no such room in this school"))
    if len(report.errors) != before:
        return None
    return _Line(line, name, klass, role, card, qr, room_id)


def _store_roster(registry: Registry, school: str, wanted: list[_Line], homes: dict[str, tuple[int | None, int]],
                  by: str, report: RosterImport) -> None:
    with registry.session() as s:
        old = list(s.scalars(select(RosterPerson).where(RosterPerson.school_id == school)))
        by_card = {p.card: p for p in old if p.card}
        by_qr = {p.qr: p for p in old if p.qr}
        by_name = {(p.class_name, p.name): p for p in old}
        kept: set[int] = set()
        fresh: list[tuple[_Line, RosterPerson | None]] = []
        for row in wanted:
            person = ((by_card.get(row.card) if row.card else None) or (by_qr.get(row.qr) if row.qr else None)
                      or by_name.get((row.klass, row.name)))
            if person is not None and person.id in kept:
                person = None
            if person is not None:
                kept.add(person.id)
            fresh.append((row, person))
        gone = [p.id for p in old if p.id not in kept]
        if gone:  # first: a kept person may take over a removed one's card
            s.execute(delete(AttendanceMark).where(AttendanceMark.person_id.in_(gone)))
            s.execute(delete(RosterPerson).where(RosterPerson.id.in_(gone)))
        for _row, person in fresh:  # free every pseudonym before setting new ones (unique per school)
            if person is not None:
                person.card = person.qr = None
        s.flush()
        for row, person in fresh:
            if person is None:
                s.add(RosterPerson(school_id=school, name=row.name, class_name=row.klass, role=row.role,
                                   card=row.card, qr=row.qr, added=time.time(), added_by=by[:64]))
                report.added += 1
            else:
                person.name, person.class_name, person.role, person.card, person.qr = (
                    row.name, row.klass, row.role, row.card, row.qr)
                report.changed += 1
        report.removed = len(gone)
        classes = {row.klass for row in wanted if row.klass}
        s.execute(delete(ClassRoom).where(ClassRoom.school_id == school, ClassRoom.class_name.not_in(classes)))
        for klass, (room_id, _line) in homes.items():
            if room_id is not None:
                s.merge(ClassRoom(school_id=school, class_name=klass, room_id=room_id))
        report.classes = len(classes)


def roster(registry: Registry, school: str, klass: str | None = None) -> list[dict[str, Any]]:
    """The school's roster (of one class), by class then name: names and roles, never a pseudonym."""
    query = select(RosterPerson).where(RosterPerson.school_id == school)
    if klass:
        query = query.where(RosterPerson.class_name == klass)
    with registry.session() as s:
        rooms = dict(s.execute(select(ClassRoom.class_name, Room.name).join(Room, Room.id == ClassRoom.room_id)
                               .where(ClassRoom.school_id == school)).all())
        return [{"name": p.name, "class": p.class_name, "role": p.role, "card": p.card is not None,
                 "qr": p.qr is not None, "room": rooms.get(p.class_name, "")}
                for p in sorted(s.scalars(query), key=lambda p: (p.class_name, p.name))]


def class_rooms(registry: Registry, school: str) -> dict[str, str]:
    """Each class of the school with a home room: class -> room name."""
    with registry.session() as s:
        return dict(s.execute(select(ClassRoom.class_name, Room.name).join(Room, Room.id == ClassRoom.room_id)
                              .where(ClassRoom.school_id == school)).all())


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


# ---------------------------------------------------------------- the school's summary


@dataclass(frozen=True)
class WeekRow:
    klass: str
    week: date          # its Monday
    expected: int       # student person-periods
    present: int
    late: int
    absent: int
    excused: int

    @property
    def rate(self) -> float | None:
        """Present or late, of those expected who were not excused."""
        due = self.expected - self.excused
        return (self.present + self.late) / due if due > 0 else None


def _class_day_counts(sc: _School, first: date, last: date, registry: Registry,
                      now: float) -> dict[tuple[str, date], list[int]]:
    """(class, day) -> [expected, present, late, absent, excused] of the roster's students, from the registers
    of every room with classes (events read in one statement for the school)."""
    slots, start, end = _day_span(sc, first, last)
    rooms = [rid for rid in sc.classes_of_room if rid in sc.room_names]
    gateways = [gw for rid in rooms for gw in sc.gateways_of_room.get(rid, [])]
    events = lists.attendance_events(registry.db, gateways, start, end, EVENT_TYPES) if gateways else []
    by_gateway: dict[str, list[tuple[str, float, str, Any]]] = {}
    for ev in events:
        by_gateway.setdefault(ev[0], []).append(ev)
    marks = _marks(registry, rooms, first, last)
    out: dict[tuple[str, date], list[int]] = {}
    for rid in rooms:
        mine = [ev for gw in sc.gateways_of_room.get(rid, []) for ev in by_gateway.get(gw, [])]
        for e in _entries(sc, rid, slots, mine, marks.get(rid, {}), now):
            if e.role != "student" or e.klass not in sc.classes_of_room[rid]:
                continue
            row = out.setdefault((e.klass, e.day), [0, 0, 0, 0, 0])
            row[0] += 1
            row[1 + ("present", "late", "absent", "excused").index(e.status)] += 1
    return out


# ---------------------------------------------------------------- finished days' counts (the summary's cache)


def _stamp(sc: _School) -> str:
    """A hash of everything a day's counts are computed from besides its events and corrections: a roster import,
    a class's room, a gateway placed or moved, a timetable or a grace saved changes it (and so every day's counts
    of the school are computed again), without each of those places having to know about this cache."""
    tt = None if sc.tt is None else (sc.tt.timezone, [p.as_dict() for p in sc.tt.periods],
                                     [(r.kind, r.as_dict()) for r in sc.tt.ranges])
    parts = (str(sc.zone), tt, sc.grace_s,
             sorted((p.id, p.class_name, p.role, p.card or "", p.qr or "") for p in sc.people.values()),
             sorted(sc.classes_of_room.items()), sorted((rid, sorted(g)) for rid, g in sc.gateways_of_room.items()))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _forget_days(registry: Registry, s: Any, school: str, first: date, last: date | None = None) -> None:
    """Delete the school's kept counts of `first` to `last` (or on) and bump its generation, in session `s`:
    counts being computed meanwhile by another request are then not stored (`_keep_days`)."""
    t = CacheGeneration.__table__
    upsert = registry.db.insert(t).values(school_id=school, generation=1)
    s.execute(upsert.on_conflict_do_update(index_elements=[t.c.school_id], set_={"generation": t.c.generation + 1}))
    query = delete(DayCounts).where(DayCounts.school_id == school, DayCounts.day >= first)
    s.execute(query if last is None else query.where(DayCounts.day <= last))


def _keep_days(registry: Registry, school: str, generation: int, stamp: str,
               days: dict[date, dict[str, list[int]]]) -> bool:
    """Store finished days' counts, unless the school's generation moved since `generation` was read (a correction
    or a late swipe: these counts may lack it). In one transaction holding the write lock (SQLite) or the
    generation's row (PostgreSQL), so a deletion cannot slip between the check and the write."""
    if not days:
        return True
    gens, rows = CacheGeneration.__table__, DayCounts.__table__
    with registry.db.write("cannot keep the attendance day counts") as conn:
        conn.execute(registry.db.insert(gens).values(school_id=school, generation=0).on_conflict_do_nothing())
        now_gen = conn.execute(select(gens.c.generation).where(gens.c.school_id == school).with_for_update()).scalar()
        if now_gen != generation:
            return False
        upsert = registry.db.insert(rows)
        conn.execute(upsert.on_conflict_do_update(
            index_elements=[rows.c.school_id, rows.c.day],
            set_={"stamp": upsert.excluded.stamp, "counts": upsert.excluded.counts}),
            [{"school_id": school, "day": day, "stamp": stamp, "counts": json.dumps(counts, sort_keys=True)}
             for day, counts in sorted(days.items())])
    return True


def _days_counts(registry: Registry, sc: _School, first: date, last: date,
                 now: float) -> dict[tuple[str, date], list[int]]:
    """`_class_day_counts` of `first` to `last`, reading the kept counts of finished days and computing (then
    keeping) the others: a month's summary reads a row a day instead of every swipe. Identical results: a kept
    day is one computed from the same roster, rooms, timetable and grace (`_stamp`), deleted when a correction
    of it is made or a swipe of it arrives late (the ledger's `late_events`, taken here first)."""
    gateways = sorted(gw for gws in sc.gateways_of_room.values() for gw in gws)
    late = ledger.late_events(registry.db, gateways)
    if late:
        since = datetime.fromtimestamp(min(row[1] for row in late), sc.zone).date()
        with registry.session() as s:
            _forget_days(registry, s, sc.school, since)
        ledger.forget_late_events(registry.db, late)
    stamp = _stamp(sc)
    with registry.session() as s:
        generation = s.scalar(select(CacheGeneration.generation).where(CacheGeneration.school_id == sc.school)) or 0
        kept = {row.day: json.loads(row.counts) for row in s.scalars(
            select(DayCounts).where(DayCounts.school_id == sc.school, DayCounts.day >= first, DayCounts.day <= last,
                                    DayCounts.stamp == stamp))}
    # Finished by the caller's clock and the real one: a report "as of" a later time must not keep a day whose
    # swipes are still coming in.
    settled = min(now, time.time()) - SETTLE_S
    out: dict[tuple[str, date], list[int]] = {}
    for day, counts in kept.items():
        for klass, values in counts.items():
            out[(klass, day)] = values
    day, runs = first, []
    while day <= last:  # the days not kept, in runs of consecutive days: one read of the events a run
        if day not in kept:
            if runs and runs[-1][1] == day - timedelta(days=1):
                runs[-1][1] = day
            else:
                runs.append([day, day])
        day += timedelta(days=1)
    fresh: dict[date, dict[str, list[int]]] = {}
    for run_first, run_last in runs:
        computed = _class_day_counts(sc, run_first, run_last, registry, now)
        out.update(computed)
        day = run_first
        while day <= run_last:
            end = datetime.combine(day + timedelta(days=1), datetime.min.time(), sc.zone).timestamp()
            if end <= settled:
                fresh[day] = {}
            day += timedelta(days=1)
        for (klass, day), values in computed.items():
            if day in fresh:
                fresh[day][klass] = values
    _keep_days(registry, sc.school, generation, stamp, fresh)
    return out


def summary(registry: Registry, school: str, first: date, last: date, *,
            site_zone: ZoneInfo | str = timetables.DEFAULT_TIMEZONE, now: float | None = None,
            cache: bool = True) -> list[WeekRow]:
    """The attendance rate of each class per week from `first` to `last`: for the days still kept, the kept
    counts of finished days and the registers of the others (`cache` False: every day's registers, computed:
    the reference the tests and the benchmark compare with); the reduced counts for older ones. By class,
    then week."""
    zone = site_zone if isinstance(site_zone, ZoneInfo) else ZoneInfo(site_zone)
    sc = _load(registry, school, zone)
    now = time.time() if now is None else now
    kept = max(first, _first_kept(registry, sc, now))
    count = _days_counts if cache else (lambda registry, sc, first, last, now:
                                         _class_day_counts(sc, first, last, registry, now))
    days = count(registry, sc, kept, last, now) if kept <= last else {}
    with registry.session() as s:
        for c in s.scalars(select(AttendanceCount).where(AttendanceCount.school_id == school,
                                                         AttendanceCount.day >= first, AttendanceCount.day <= last)):
            days[(c.class_name, c.day)] = [c.expected, c.present, c.late, c.absent, c.excused]
    weeks: dict[tuple[str, date], list[int]] = {}
    for (klass, day), values in days.items():
        row = weeks.setdefault((klass, day - timedelta(days=day.weekday())), [0, 0, 0, 0, 0])
        for i, v in enumerate(values):
            row[i] += v
    return [WeekRow(k, w, *v) for (k, w), v in sorted(weeks.items())]


# ---------------------------------------------------------------- retention


def _first_kept(registry: Registry, sc: _School, now: float) -> date:
    """The school's first day whose named entries are still kept."""
    return first_kept(sc.tt, settings(registry, sc.school).retention_days,
                      datetime.fromtimestamp(now, sc.zone).date())


def first_kept(tt: timetables.Timetable | None, retention_days: int | None, today: date) -> date:
    """The first day whose named attendance is still kept on `today`. A school's own number of days wins.
    By default (None) it is one term, read as: **a day's named entries are kept until the end of the term after
    its own** (a day between terms belongs to the term that follows), so a term's registers can be looked at
    and corrected all through the next one, then only counts remain. Never more than RETENTION_RANGE's
    longest (a timetable whose last terms were never entered keeps no more than that), and DEFAULT_RETENTION_DAYS
    for a school whose timetable has no terms."""
    if retention_days is not None:
        return today - timedelta(days=retention_days)
    terms = sorted(tt.of("terms"), key=lambda t: t.last) if tt is not None else []
    if not terms:
        return today - timedelta(days=DEFAULT_RETENTION_DAYS)
    longest = today - timedelta(days=RETENTION_RANGE[1])
    ended = [t for t in terms if t.last < today]
    if len(ended) < 2:  # no day's next term has ended yet
        return longest
    return max(longest, ended[-2].last + timedelta(days=1))


def apply_retention(registry: Registry, *, now: float | None = None,
                    site_zone: ZoneInfo | str = timetables.DEFAULT_TIMEZONE, max_days: int = 31) -> int:
    """Reduce each school's days older than its retention to counts, then delete their swipes, check-ins and
    corrections; at most `max_days` days a school per call (a first run catches up over several). The
    number of days reduced."""
    now = time.time() if now is None else now
    zone = site_zone if isinstance(site_zone, ZoneInfo) else ZoneInfo(site_zone)
    with registry.session() as s:
        schools = sorted(s.scalars(select(School.id)))
    done = 0
    for school in schools:
        sc = _load(registry, school, zone)
        cutoff_day = _first_kept(registry, sc, now)
        cutoff = datetime.combine(cutoff_day, datetime.min.time(), sc.zone).timestamp()
        gateways = sorted(gw for gws in sc.gateways_of_room.values() for gw in gws)
        oldest = lists.oldest_attendance_event(registry.db, gateways, EVENT_TYPES) if gateways else None
        with registry.session() as s:
            oldest_mark = s.scalar(select(AttendanceMark.day).join(Room, Room.id == AttendanceMark.room_id)
                                   .where(Room.school_id == school).order_by(AttendanceMark.day).limit(1))
        starts = [d for d in (datetime.fromtimestamp(oldest, sc.zone).date() if oldest is not None else None,
                              oldest_mark) if d is not None and d < cutoff_day]
        if not starts:
            continue
        first = min(starts)
        last = min(cutoff_day - timedelta(days=1), first + timedelta(days=max_days - 1))
        reduced = _days_counts(registry, sc, first, last, now)
        until = datetime.combine(last + timedelta(days=1), datetime.min.time(), sc.zone).timestamp()
        with registry.session() as s:
            # A day reduced before keeps its counts: what is left of it in the ledger is a swipe that came after
            # (a gateway offline for weeks), alone it would make everyone else absent.
            done_days = set(s.scalars(select(AttendanceCount.day).distinct().where(
                AttendanceCount.school_id == school, AttendanceCount.day >= first, AttendanceCount.day <= last)))
            for (klass, day), v in reduced.items():
                if day not in done_days:
                    s.merge(AttendanceCount(school_id=school, class_name=klass, day=day, expected=v[0],
                                            present=v[1], late=v[2], absent=v[3], excused=v[4]))
            room_ids = list(sc.room_names)
            s.execute(delete(AttendanceMark).where(AttendanceMark.room_id.in_(room_ids),
                                                   AttendanceMark.day <= last))
            s.execute(delete(DayCounts).where(DayCounts.school_id == school, DayCounts.day <= last))
        if gateways:
            ledger.delete_events(registry.db, gateways, EVENT_TYPES, min(until, cutoff))
        done += (last - first).days + 1
    return done


class AttendanceRetention:
    """Runs `apply_retention` every `interval` seconds in one instance at a time (the lease), from a daemon
    thread until stop(): the pattern of the usage rollup (central/usage_rollup.py)."""

    LEASE = "attendance-retention"

    def __init__(self, registry: Registry, interval: float, site_zone: ZoneInfo | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if interval <= 0:
            raise ValueError("the retention's interval must be positive")
        self.registry, self.interval, self.clock = registry, interval, clock
        self.site_zone = site_zone or ZoneInfo(timetables.DEFAULT_TIMEZONE)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="attendance-retention", daemon=True)

    def start(self) -> AttendanceRetention:
        self._thread.start()
        return self

    def _run(self) -> None:
        db = self.registry.db
        # The first round a minute after start, not at it: a program starting (or a test's app) is not slowed.
        wait = min(60.0, self.interval)
        while not self._stop.wait(wait):
            busy = False
            try:
                if db.take_lease(self.LEASE, self.holder, 3 * self.interval + 60):
                    busy = apply_retention(self.registry, now=self.clock(), site_zone=self.site_zone) > 0
                    self.rounds += 1
            except StoreError as exc:
                log.warning("attendance retention: %s; retrying in %.0f s", exc, self.interval)
            except Exception:  # noqa: BLE001 - a bad moment must not end the retention
                log.exception("attendance retention failed; retrying in %.0f s", self.interval)
            wait = 1.0 if busy else self.interval

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        try:
            self.registry.db.drop_lease(self.LEASE, self.holder)
        except StoreError as exc:
            log.warning("attendance retention: %s", exc)


EXAMPLE_CSV = """\
# campus-iot attendance roster: one line per person; card numbers and QR codes are pseudonymised at import.
姓名,班级,角色,一卡通,二维码,教室
张三,高一(1)班,学生,0x0009356179,STU-101-0001,101
李四,高一(1)班,学生,A1B2C3D4,,101
王老师,,教师,3735928559,,
"""
