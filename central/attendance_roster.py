"""Attendance rosters: the CSV import that pseudonymises card numbers and QR codes as it reads them, and
the roster as pages show it (names, never a pseudonym). Part of central/attendance.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select

from campus import names
from campus.errors import ConfigError
from campus.i18n import LazyText, lazy_gettext, message_of
from central.attendance_model import (
    CLASS_MAX,
    MAX_PEOPLE,
    NAME_MAX,
    QR_MAX,
    ROLE_ALIASES,
    ROLES,
    AttendanceMark,
    ClassRoom,
    RosterPerson,
)
from central.provisioning import CsvRecords, Header, ImportProblem, decode_csv
from central.registry import Registry, Room, School
from protocols.card_ids import CARD_NUMBER_FORMS, card_hash, card_uid, qr_pseudonym

ROSTER_COLUMNS = ("name", "class", "role", "card", "qr", "room")
ROSTER_HEADER = Header(ROSTER_COLUMNS, {"name": "姓名", "class": "班级", "role": "角色", "card": "一卡通",
                                        "qr": "二维码", "room": "教室"}, ("name",),
                       {"卡号": "card", "一卡通号": "card", "校园卡": "card", "qr code": "qr", "code": "qr",
                        "二维码号": "qr", "班": "class", "房间": "room", "身份": "role"})



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
    records = CsvRecords(text, report.errors)
    header: list[str] | None = None
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
    records.finish(ROSTER_HEADER, lazy_gettext("no people after the header"))
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



EXAMPLE_CSV = """\
# campus-iot attendance roster: one line per person; card numbers and QR codes are pseudonymised at import.
姓名,班级,角色,一卡通,二维码,教室
张三,高一(1)班,学生,0x0009356179,STU-101-0001,101
李四,高一(1)班,学生,A1B2C3D4,,101
王老师,,教师,3735928559,,
"""

