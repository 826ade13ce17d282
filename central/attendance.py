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
  is late, and how long named attendance is kept (by default until the end of the next term: `first_kept`);
- **counts** (`attendance_counts`): what remains of a day after its retention ran out;
- **finished days' counts** (`attendance_day_counts`): the summary's, kept per school and day once a day is
  over, and thrown away when anything they were computed from changes (docs/attendance.md).

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

The code is in five modules; every name callers use is importable from here, as before the split:
central/attendance_model.py (tables, constants, settings), attendance_roster.py (the import),
attendance_register.py (the register and corrections), attendance_summary.py (the weekly summary and its
kept day counts) and this one (retention).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import delete, select

from central import ledger, lists, timetables
from central.attendance_model import (
    CLASS_MAX,
    CORRECTABLE,
    DEFAULT_GRACE_MIN,
    DEFAULT_RETENTION_DAYS,
    EARLY_S,
    EVENT_TYPES,
    GRACE_RANGE,
    MAX_PEOPLE,
    NAME_MAX,
    PREFIX_CHARS,
    QR_MAX,
    RETENTION_RANGE,
    ROLE_ALIASES,
    ROLES,
    SETTLE_S,
    STATUS_NAMES,
    STATUSES,
    AttendanceCount,
    AttendanceMark,
    AttendanceSettings,
    CacheGeneration,
    ClassRoom,
    DayCounts,
    RosterPerson,
    Settings,
    first_kept,
    save_settings,
    settings,
)
from central.attendance_register import (
    PSEUDONYM_FIELDS,
    Entry,
    _first_kept,
    _load,
    class_room,
    correct,
    counts,
    current_period,
    pseudonym_of,
    register,
    room_of_gateway,
)
from central.attendance_roster import (
    EXAMPLE_CSV,
    ROSTER_COLUMNS,
    ROSTER_HEADER,
    RosterImport,
    class_rooms,
    import_roster,
    roster,
)
from central.attendance_summary import WeekRow, _days_counts, summary
from central.registry import Registry, Room, School
from central.workers import LeasedWorker

log = logging.getLogger(__name__)

# What callers use from here (the names stayed where they were before the modules were split).
__all__ = [
    'AttendanceCount', 'AttendanceMark', 'AttendanceRetention', 'AttendanceSettings', 'CLASS_MAX',
    'CORRECTABLE', 'CacheGeneration', 'ClassRoom', 'DEFAULT_GRACE_MIN', 'DEFAULT_RETENTION_DAYS',
    'DayCounts', 'EARLY_S', 'EVENT_TYPES', 'EXAMPLE_CSV', 'Entry', 'GRACE_RANGE', 'MAX_PEOPLE',
    'NAME_MAX', 'PREFIX_CHARS', 'PSEUDONYM_FIELDS', 'QR_MAX', 'RETENTION_RANGE', 'ROLES',
    'ROLE_ALIASES', 'ROSTER_COLUMNS', 'ROSTER_HEADER', 'RosterImport', 'RosterPerson', 'SETTLE_S',
    'STATUSES', 'STATUS_NAMES', 'Settings', 'WeekRow', 'apply_retention', 'class_room', 'class_rooms',
    'correct', 'counts', 'current_period', 'first_kept', 'import_roster', 'pseudonym_of', 'register',
    'room_of_gateway', 'roster', 'save_settings', 'settings', 'summary',
]


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


class AttendanceRetention(LeasedWorker):
    """Runs `apply_retention` every `interval` seconds in one instance at a time (the lease), from a daemon
    thread until stop() (central/workers.py)."""

    LEASE = "attendance-retention"

    def __init__(self, registry: Registry, interval: float, site_zone: ZoneInfo | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        # The first round a minute after start, not at it: a program starting (or a test's app) is not slowed.
        super().__init__(registry.db, self.LEASE, interval=interval, ttl=3 * interval + 60,
                         name="attendance-retention", what="attendance retention", first_wait=min(60.0, interval))
        self.registry, self.clock = registry, clock
        self.site_zone = timetables.site_zone_of(site_zone)

    def round(self) -> float | None:
        return 1.0 if apply_retention(self.registry, now=self.clock(), site_zone=self.site_zone) > 0 else None


