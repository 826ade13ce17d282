"""The school's summary: each class's attendance rate per week, from the kept counts of finished days
(`attendance_day_counts`, thrown away when a correction, a late swipe or a change of roster, rooms, timetable
or grace could change them) and the registers of the others. Part of central/attendance.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select

from central import ledger, lists, timetables
from central.attendance_model import (
    EVENT_TYPES,
    LATE_EVENT_S,
    SETTLE_S,
    AttendanceCount,
    CacheGeneration,
    DayCounts,
    _forget_days,
)
from central.attendance_register import _day_span, _entries, _first_kept, _load, _marks, _School
from central.db import Database
from central.registry import Registry

# ---------------------------------------------------------------- late swipes


@ledger.after_record
def note_late(db: Database, conn: Connection, events: list[dict[str, Any]], now: float) -> None:
    """Of each batch the ledger records: the oldest event per gateway that came LATE_EVENT_S or more after its
    time, remembered in the ledger's `late_events` in the batch's transaction, so that the kept counts of
    its day and after are redone (`_days_counts`) before a summary reads them. Any late event counts, a
    redelivery too: it costs a reader a recount, never a loss."""
    late: dict[str, float] = {}
    for ev in events:
        if now - ev["ts"] >= LATE_EVENT_S:
            late[ev["gateway"]] = min(ev["ts"], late.get(ev["gateway"], ev["ts"]))
    ledger.note_late_events(db, conn, late)


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


