"""Attendance's tables, constants and per-school settings (central/attendance.py says what attendance is).

Everything the roster, the register, the summary and the retention share: the ORM tables (migrations 0014,
0016), a school's grace and retention (`settings`, and `first_kept`: which days' named entries are kept), and
the one way the summary's kept day counts are thrown away (`_forget_days`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Date, Float, ForeignKey, Integer, String, Text, UniqueConstraint, delete
from sqlalchemy.orm import Mapped, mapped_column

from campus import contract
from campus.errors import ConfigError
from campus.i18n import N_, lazy_gettext
from central import timetables
from central.db import Base
from central.registry import Registry, School

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
# An event recorded this long after its own time arrived late (the ledger's `late_events`, noted by
# central/attendance_summary.py's observer of each batch): what was worked out of its day may lack it. Ten
# minutes: a live swipe takes seconds.
LATE_EVENT_S = 600.0
# A day is *finished* this long after its end: its counts are kept (`attendance_day_counts`) and a summary reads
# them instead of its registers. Longer than LATE_EVENT_S (a swipe recorded later than that after its time
# is flagged, and its day's counts redone) with room for the slowest write.
SETTLE_S = 6 * LATE_EVENT_S
ROLES = ("student", "staff")
ROLE_ALIASES = {"学生": "student", "教师": "staff", "老师": "staff", "教职工": "staff", "员工": "staff",
                "teacher": "staff"}
STATUSES = ("present", "late", "absent", "excused", "unknown")
CORRECTABLE = ("present", "late", "absent", "excused")
STATUS_NAMES = {"present": N_("present"), "late": N_("late"), "absent": N_("absent"), "excused": N_("excused"),
                "unknown": N_("unknown")}
EVENT_TYPES = (contract.CARD_SWIPE_EVENT, contract.ATTENDANCE_EVENT)

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



def _forget_days(registry: Registry, s: Any, school: str, first: date, last: date | None = None) -> None:
    """Delete the school's kept counts of `first` to `last` (or on) and bump its generation, in session `s`:
    counts being computed meanwhile by another request are then not stored (`_keep_days`)."""
    t = CacheGeneration.__table__
    upsert = registry.db.insert(t).values(school_id=school, generation=1)
    s.execute(upsert.on_conflict_do_update(index_elements=[t.c.school_id], set_={"generation": t.c.generation + 1}))
    query = delete(DayCounts).where(DayCounts.school_id == school, DayCounts.day >= first)
    s.execute(query if last is None else query.where(DayCounts.day <= last))


