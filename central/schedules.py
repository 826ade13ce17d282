"""Schedules: e.g. every display and projector in a building off at 22:00 on school days.

A `Schedule` (registry) names a local time `at` ("HH:MM"), the weekdays it
runs on, an action (`power_off`, ...), the device kinds it applies to and
its scope (a school, a building, or everywhere). `due()` says whether a
schedule should run now: at or after its time on one of its days, not yet
run for that occurrence, and no later than a grace window after it (a
server that was down at 22:00 and back at 22:10 still runs it, once; one
back the next morning does not switch anything off at 07:00).

Its `at` and weekdays are the wall clock of its school's zone (central/timetables.py `zones`: the school's
timetable's, else the site's, `campus web --timezone`), never the host's: a server kept in UTC switches a
Beijing school off at 17:30 Beijing time. A schedule for every school runs at `at` in each school's zone:
central runs one occurrence per distinct zone (`zone_groups`: the schools sharing a zone together, one
run in the history, as when they all had the site's), each claimed apart (`ZONE_CLAIM` in
`schedule_claims`); the edge plans each gateway in its own school's zone (central/edge_schedules.py), so
both agree.

Instead of `at`, a schedule may be anchored (`anchor`, one of ANCHORS) to the school's day:
"last_period" runs `offset_min` minutes (0 to OFFSET_MAX) after the end of that day's last class
period in the school's timetable (central/timetables.py), in the school's time zone. Its time differs
per school (a schedule for every school runs at each school's own time), so central claims each
school's occurrence apart (`ScheduleClaim`) and runs it on that school's devices only. A day without
periods (a weekend, a holiday, out of term) and a school without a timetable have no anchored run: there
is no "last period" to follow, and switching off at a guessed time would surprise a school working late
(the fixed-time schedule is the tool for "every day at 22:00").

`run()` sends the action to every matching device through the
`CommandService` (gateways from the registry, their devices from the
ledger), waits a few seconds for the results and records a `ScheduleRun`
with one result per device: `done`, `failed`, `rejected`, `expired`, or
`pending` (no answer yet, e.g. the gateway is offline; the agent runs it if
it returns before the command's deadline, never after), and `skipped` for a
provisioned device that has never reported. `Scheduler` checks every few
seconds in a daemon thread; it claims an occurrence in the database before
running it, so two web processes never run the same one twice.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy import update as sql_update
from sqlalchemy.exc import IntegrityError

from campus import names
from campus.i18n import N_, LazyText, ReportedText, lazy_gettext, message_of
from central.db import translatable
from central.registry import Building, Registry, Schedule, ScheduleClaim, ScheduleRun, School, row_id
from central.timetables import DEFAULT_TIMEZONE, Timetable, day_periods, site_zone_of, zones
from central.workers import LeasedWorker

if TYPE_CHECKING:
    from central.overview import Target

log = logging.getLogger(__name__)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SCHOOL_DAYS = "mon,tue,wed,thu,fri"
# Actions a schedule may send: those that need no parameters (the model has no params field).
SCHEDULE_ACTIONS = ("power_off", "power_on", "mute", "unmute")
SCHEDULE_KINDS = ("display", "projector")
GRACE = timedelta(minutes=30)
COMMAND_TTL_S = 15 * 60.0
FINAL = ("done", "failed", "rejected", "expired")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
# What a schedule may be anchored to instead of its fixed time `at` (see the module docstring).
LAST_PERIOD = "last_period"
ANCHORS = (LAST_PERIOD,)
OFFSET_MAX = 240  # minutes after the anchor: up to four hours (a school's evening self-study ends late)
# The `schedule_claims` key of one zone's occurrence of a fixed-time schedule for every school (`ZONE_CLAIM` +
# the zone's IANA name): ':' is in no school id (campus/contract.py check_segment), so no school's claim is it.
ZONE_CLAIM = "zone:"


# Actions that switch equipment on: on a day without classes in the school's timetable (a holiday, out
# of term, a weekend without periods) a schedule never sends them, here or at the edge (issue 21: "never
# on during holidays"); switching off runs every listed day. A school without a timetable (or one with
# no periods) has classes every day, as before timetables.
SWITCH_ON_ACTIONS = ("power_on", "unmute")
NO_CLASSES = "no classes on this day in the school timetable: a schedule never switches equipment on then"


def no_classes(action: str, timetable: Timetable | None, when: float) -> bool:
    """True if a run of `action` at `when` (unix time) is skipped: it switches on, on a day without classes."""
    if action not in SWITCH_ON_ACTIONS or timetable is None or not timetable.periods:
        return False
    return not day_periods(timetable, datetime.fromtimestamp(when, timetable.zone).date())


class ScheduleError(ValueError):
    """A schedule field is wrong; the message names the field, for people; `field` names it for programs
    (the API's 400 `field`)."""

    def __init__(self, message: Any, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def parse_at(at: str) -> dtime:
    m = _HHMM.match((at or "").strip())
    if not m:
        raise ScheduleError(lazy_gettext("time must be HH:MM (24 h), e.g. 22:00, got %(value)s",
                                         value=repr(str(at)[:20])), "at")
    return dtime(int(m.group(1)), int(m.group(2)))


def parse_days(days: str | None) -> tuple[int, ...]:
    """Weekday numbers (Monday 0) of a "mon,tue,..." list."""
    names = [d.strip().lower()[:3] for d in (days if days is not None else SCHOOL_DAYS).split(",") if d.strip()]
    bad = [n for n in names if n not in DAYS]
    if bad or not names:
        if bad:
            raise ScheduleError(lazy_gettext("days must be some of %(days)s; got %(value)s", days=", ".join(DAYS),
                                             value=repr(bad[0])), "days")
        raise ScheduleError(lazy_gettext("days must be some of %(days)s", days=", ".join(DAYS)), "days")
    return tuple(sorted({DAYS.index(n) for n in names}))


def anchored(schedule: Any) -> bool:
    """True if the schedule runs relative to the school's day (`anchor`), not at its fixed time `at`."""
    return getattr(schedule, "anchor", None) in ANCHORS


def _when(schedule: Any) -> tuple[dtime, tuple[int, ...]] | None:
    """(time of day, weekdays) of an enabled fixed-time schedule; None if it is disabled, anchored (see
    `anchored_time`) or unreadable (it never runs at a fixed time)."""
    if schedule.enabled is False or anchored(schedule):
        return None
    try:
        return parse_at(schedule.at), parse_days(schedule.days)
    except ScheduleError:
        return None


def occurrence(schedule: Any, now_local: datetime, grace: timedelta = GRACE) -> datetime | None:
    """The occurrence of `schedule` to run now, if any (see the module docstring).

    `now_local` is now on the wall clock of the schedule's zone (its school's: `zone_groups`; naive or
    aware, its tzinfo is the zone `at` is read in); `schedule.last_run` a unix time.
    """
    return _occurrence(schedule, now_local, schedule.last_run, grace)


def _occurrence(schedule: Any, now_local: datetime, last_run: float | None,
                grace: timedelta = GRACE) -> datetime | None:
    """`occurrence` with the last run given apart (one zone's claim of a schedule for every school)."""
    parsed = _when(schedule)
    if parsed is None:
        return None
    at, days = parsed
    # Today's occurrence, or yesterday's when the grace window crosses midnight (23:50 + 30 min).
    for back in (0, 1):
        day = (now_local - timedelta(days=back)).date()
        if day.weekday() not in days:
            continue
        when = datetime.combine(day, at, tzinfo=now_local.tzinfo)
        if when <= now_local <= when + grace:
            if last_run is None or last_run < when.timestamp():
                return when
            return None
    return None


def anchored_time(schedule: Any, timetable: Timetable | None, day: date) -> datetime | None:
    """When an anchored schedule runs on `day` (a date in the school's zone) for the school of
    `timetable`: the end of the day's last period plus `offset_min`, an aware time in the school's zone;
    None if the schedule is not anchored, disabled, not for this weekday, or the day has no periods (or
    the school no timetable): then it does not run (the module docstring says why)."""
    if schedule.enabled is False or not anchored(schedule) or timetable is None:
        return None
    try:
        weekdays = parse_days(schedule.days)
    except ScheduleError:
        return None
    periods = day_periods(timetable, day) if day.weekday() in weekdays else []
    if not periods:
        return None
    last = max(p.end for p in periods)
    offset = max(0, min(OFFSET_MAX, int(schedule.offset_min or 0)))
    # The wall-clock end in the school's zone, then the offset in real minutes (a DST change in between
    # moves the wall clock, not the wait).
    end = datetime.combine(day, last, tzinfo=timetable.zone)
    return datetime.fromtimestamp(end.timestamp() + offset * 60.0, timetable.zone)


def anchored_occurrence(schedule: Any, timetable: Timetable | None, now: float, last_run: float | None,
                        grace: timedelta = GRACE) -> datetime | None:
    """The occurrence of an anchored schedule to run now for one school (`last_run`: that school's claim),
    today's or, when the grace window crosses midnight, yesterday's; None if there is none."""
    if timetable is None:
        return None
    today = datetime.fromtimestamp(now, timetable.zone).date()
    for back in (0, 1):
        when = anchored_time(schedule, timetable, today - timedelta(days=back))
        if when is not None and when.timestamp() <= now <= when.timestamp() + grace.total_seconds():
            return when if last_run is None or last_run < when.timestamp() else None
    return None


def due(schedule: Any, now_local: datetime, grace: timedelta = GRACE) -> bool:
    return occurrence(schedule, now_local, grace) is not None


def next_run(schedule: Any, now_local: datetime, timetables: Mapping[str, Timetable] | None = None,
             school_zones: Mapping[str, ZoneInfo] | None = None) -> datetime | None:
    """When the schedule runs next (for the page), in `now_local`'s zone, or None if it never will. An
    anchored one: its earliest next run over the `timetables` of the schools it applies to (its school's,
    or every one given). A fixed-time one: at `at` in its school's zone, the earliest over every school's
    zone for one for every school (`school_zones`, each school's zone: `zones_of`); without them, in
    `now_local`'s zone."""
    if anchored(schedule):
        found = [tt for school, tt in (timetables or {}).items()
                 if schedule.school_id is None or school == schedule.school_id]
        now = now_local.timestamp()
        times = []
        for tt in found:
            today = datetime.fromtimestamp(now, tt.zone).date()
            for ahead in range(15):
                when = anchored_time(schedule, tt, today + timedelta(days=ahead))
                if when is not None and when.timestamp() > now:
                    times.append(when)
                    break
        return min(times, key=lambda w: w.timestamp()).astimezone(now_local.tzinfo) if times else None
    parsed = _when(schedule)
    if parsed is None:
        return None
    at, days = parsed
    in_zones: list[Any] = [now_local.tzinfo]  # tzinfo None (naive): the wall clock of `now_local` as it is
    if school_zones is not None:
        site = now_local.tzinfo if isinstance(now_local.tzinfo, ZoneInfo) else ZoneInfo(DEFAULT_TIMEZONE)
        in_zones = [zone for zone, _ in zone_groups(schedule, school_zones, site).values()]
    times = []
    for zone in in_zones:
        here = now_local.astimezone(zone) if zone is not None else now_local
        for ahead in range(8):
            day = (here + timedelta(days=ahead)).date()
            when = datetime.combine(day, at, tzinfo=zone)
            if day.weekday() in days and when > here:
                times.append(when)
                break
    if not times:
        return None
    first = min(times, key=lambda w: w.timestamp())
    return first if school_zones is None else first.astimezone(now_local.tzinfo)


def zones_of(registry: Registry, schedules: list[Any], site_zone: ZoneInfo | None = None) -> dict[str, ZoneInfo]:
    """The zone of each school the `schedules` apply to (every school, for one without a school): its
    timetable's, else `site_zone` (None: Asia/Shanghai, the default of `campus web --timezone`). Two small
    queries (central/timetables.py `zones`, the one place a school's zone is read)."""
    site = site_zone_of(site_zone)
    schools = schools_of(registry, schedules) if schedules else ()
    # Every school's zone at once when every school is wanted: no district-long IN list each tick.
    everywhere = any(sched.school_id is None for sched in schedules)
    found = zones(registry, None if everywhere else schools) if schools else {}
    return {school: found.get(school, site) for school in schools}


def zone_groups(schedule: Any, school_zones: Mapping[str, ZoneInfo],
                site_zone: ZoneInfo) -> dict[str, tuple[ZoneInfo, tuple[str, ...] | None]]:
    """The zones a fixed-time schedule runs in, by zone name, each with the schools its occurrence is for:
    a schedule with a school runs in that school's zone (schools None: the schedule's own scope); one for
    every school in each distinct zone of `school_zones` (each school's zone), the schools sharing it
    together; with no school at all, in `site_zone` (schools None: nothing to run on, as before)."""
    if schedule.school_id is not None:
        zone = school_zones.get(schedule.school_id, site_zone)
        return {zone.key: (zone, None)}
    if not school_zones:
        return {site_zone.key: (site_zone, None)}
    groups: dict[str, tuple[ZoneInfo, list[str]]] = {}
    for school, zone in sorted(school_zones.items()):
        groups.setdefault(zone.key, (zone, []))[1].append(school)
    return {key: (zone, tuple(schools)) for key, (zone, schools) in sorted(groups.items())}


# ---------------------------------------------------------------- editing


def validate(form: Mapping[str, Any], registry: Registry) -> dict[str, Any]:
    """Check a schedule as typed in a form (or JSON); returns model fields or raises ScheduleError."""
    try:
        name = names.display_name(str(form.get("name", "")), "name", max_chars=names.SCHEDULE_NAME_MAX)
    except names.BadName as exc:
        raise ScheduleError(message_of(exc), "name") from None
    anchor_raw = form.get("anchor")
    anchor = None if anchor_raw is None or anchor_raw == "" or anchor_raw == "time" else anchor_raw
    if anchor is not None and anchor not in ANCHORS:
        raise ScheduleError(lazy_gettext("anchor must be empty (the time above) or %(anchors)s",
                                         anchors=", ".join(ANCHORS)), "anchor")
    offset = _offset(form.get("offset_min"), anchor is not None)
    at = str(form.get("at") or "").strip()
    if anchor is None or at:
        parse_at(at)  # an anchored one keeps a time typed for when the anchor is taken off: a time, too
    days_raw = form.get("days", "")
    days_list = days_raw if isinstance(days_raw, list) else str(days_raw).split(",")
    days = ",".join(DAYS[i] for i in parse_days(",".join(str(d) for d in days_list)))
    action = str(form.get("action", ""))
    if action not in SCHEDULE_ACTIONS:
        raise ScheduleError(lazy_gettext("action must be one of %(actions)s", actions=", ".join(SCHEDULE_ACTIONS)),
                            "action")
    kinds_raw = form.get("kinds", "")
    kinds_list = [k.strip() for k in (kinds_raw if isinstance(kinds_raw, list) else str(kinds_raw).split(","))
                  if str(k).strip()]
    if not kinds_list or any(k not in SCHEDULE_KINDS for k in kinds_list):
        raise ScheduleError(lazy_gettext("devices must be some of %(kinds)s", kinds=", ".join(SCHEDULE_KINDS)),
                            "kinds")
    kinds = ",".join(k for k in SCHEDULE_KINDS if k in kinds_list)
    school = str(form.get("school_id") or "").strip() or None
    if school is not None:  # looked up below: PostgreSQL refuses a NUL in a query outright (a 503)
        try:
            names.identifier(school, "school")
        except names.BadName:
            raise ScheduleError(lazy_gettext("school must be one of the listed schools"), "school_id") from None
    building_raw = str(form.get("building_id") or "").strip()
    building_id = None
    with registry.session() as s:
        if school is not None and s.get(School, school) is None:
            raise ScheduleError(lazy_gettext("no school %(school)s", school=repr(school)), "school_id")
        if building_raw:
            building_key = row_id(building_raw)
            if building_key is None:
                raise ScheduleError(lazy_gettext("building must be one of the listed buildings"), "building_id")
            b = s.get(Building, building_key)
            if b is None:
                raise ScheduleError(lazy_gettext("no building %(building)s", building=building_raw), "building_id")
            if school is not None and b.school_id != school:
                raise ScheduleError(lazy_gettext("building %(building)s is not in school %(school)s",
                                                 building=repr(b.name), school=repr(school)), "building_id")
            building_id, school = b.id, b.school_id
    enabled = form.get("enabled", True)
    if isinstance(enabled, str):
        enabled = enabled.lower() in ("1", "on", "true", "yes")
    return {"name": name, "at": at, "days": days, "action": action, "kinds": kinds, "school_id": school,
            "building_id": building_id, "enabled": bool(enabled), "anchor": anchor, "offset_min": offset}


def _offset(raw: Any, wanted: bool) -> int:
    """`offset_min` of a form or a JSON body: whole minutes 0 to OFFSET_MAX (0 when absent; only an
    anchored schedule uses it, but a wrong one is refused either way rather than dropped unseen)."""
    if raw is None or raw == "":
        return 0
    value: int | None = None
    if isinstance(raw, bool) or isinstance(raw, float) and not raw.is_integer():
        value = None
    elif isinstance(raw, (int, float)):
        value = int(raw)
    else:
        text = str(raw).strip()
        value = int(text) if re.fullmatch(r"[+-]?\d{1,6}", text) else None
    if value is None or not 0 <= value <= OFFSET_MAX:
        raise ScheduleError(lazy_gettext("minutes after the last period must be a whole number from 0 to "
                                         "%(most)s, got %(value)s", most=OFFSET_MAX, value=repr(str(raw)[:20])),
                            "offset_min")
    return value if wanted else 0


def schedule_dict(s: Schedule, places: Mapping[int, str] | None = None) -> dict[str, Any]:
    # Shown on pages and in the API: English text the web app translates where it is shown (campus.i18n).
    scope: LazyText = lazy_gettext("every school")
    if s.building_id is not None:
        building = places.get(s.building_id, s.building_id) if places else s.building_id
        scope = (lazy_gettext("building %(building)s (%(school)s)", building=building, school=s.school_id)
                 if s.school_id else lazy_gettext("building %(building)s", building=building))
    elif s.school_id:
        scope = lazy_gettext("school %(school)s", school=s.school_id)
    when: LazyText | str = s.at
    if anchored(s):
        when = lazy_gettext("%(minutes)s min after the last period", minutes=s.offset_min or 0)
    return {"id": s.id, "name": s.name, "school_id": s.school_id, "building_id": s.building_id, "at": s.at,
            "days": s.days, "action": s.action, "kinds": s.kinds, "enabled": bool(s.enabled),
            "anchor": s.anchor if anchored(s) else None, "offset_min": s.offset_min or 0,
            "last_run": s.last_run, "scope": scope, "when": when}


def all_schedules(registry: Registry, schools: tuple[str, ...] | None = None) -> list[Schedule]:
    """Every schedule (of `schools` only, if given: a school-scoped account's, never one for every school),
    by time of day (detached rows: read their fields, change them through `update`)."""
    query = select(Schedule).order_by(Schedule.at, Schedule.id)
    if schools is not None:
        query = query.where(Schedule.school_id.in_(schools))
    with registry.session() as s:
        return list(s.scalars(query))


def schedule_page(registry: Registry, limit: int, offset: int, q: str | None = None,
                  schools: tuple[str, ...] | None = None) -> tuple[list[Schedule], int]:
    """A page of `all_schedules` (`q`: a substring of the name) and how many there are in all, in SQL."""
    from sqlalchemy import func

    from central.lists import like

    where = [Schedule.school_id.in_(schools)] if schools is not None else []
    if q:
        where.append(Schedule.name.ilike(like(q), escape="\\"))
    with registry.session() as s:
        total = s.scalar(select(func.count(Schedule.id)).where(*where)) or 0
        rows = list(s.scalars(select(Schedule).where(*where).order_by(Schedule.at, Schedule.id)
                              .limit(limit).offset(offset)))
    return rows, total


def get(registry: Registry, schedule_id: int) -> Schedule | None:
    with registry.session() as s:
        return s.get(Schedule, schedule_id)


def create(registry: Registry, fields: Mapping[str, Any]) -> int:
    """A new schedule of `validate`d fields; its id."""
    with registry.session() as s:
        row = Schedule(**fields)
        s.add(row)
        s.flush()
        sid = row.id
    _replan(registry, fields)
    return sid


def update(registry: Registry, schedule_id: int, fields: Mapping[str, Any]) -> dict[str, Any] | None:
    """Change a schedule's `validate`d fields; what it was before (`schedule_dict`), None if there is none."""
    with registry.session() as s:
        row = s.get(Schedule, schedule_id)
        if row is None:
            return None
        before = schedule_dict(row)
        for k, v in fields.items():
            setattr(row, k, v)
    _replan(registry, before)
    _replan(registry, fields)
    return before


def set_enabled(registry: Registry, schedule_id: int, enabled: bool) -> bool:
    """Enable or disable a schedule; False if there is none."""
    with registry.session() as s:
        row = s.get(Schedule, schedule_id)
        if row is None:
            return False
        row.enabled = enabled
        scope = {"school_id": row.school_id, "building_id": row.building_id}
    _replan(registry, scope)
    return True


def _replan(registry: Registry, scope: Mapping[str, Any]) -> None:
    """A schedule changed: the gateways in its scope need a new plan (central/edge_schedules.py)."""
    from central.edge_schedules import bump_gateways

    bump_gateways(registry, scope.get("school_id"), scope.get("building_id"))


# ---------------------------------------------------------------- running


def targets(schedule: Any, registry: Registry, ledger: Any) -> list[Target]:
    """Every device the schedule applies to (central/overview.py joins the registry's gateways in scope
    with the devices the ledger heard of; imported here, overview being above this module)."""
    from central.overview import schedule_targets

    return schedule_targets(schedule, registry, ledger)


def run(schedule: Any, registry: Registry, ledger: Any, service: Any, *, now: float | None = None,
        wait: float = 5.0, publish_wait: float = 0.5, ttl: float = COMMAND_TTL_S,
        by: str | None = None, school: str | None = None,
        schools: Collection[str] | None = None) -> dict[str, Any]:
    """Send the schedule's action to every target (of `school` only, if given: an anchored schedule's
    occurrence is one school's; of `schools` only, if given: one zone's occurrence of a schedule for every
    school), wait up to `wait` s for results, record a ScheduleRun."""
    now = time.time() if now is None else now
    who = by or f"schedule:{schedule.name}"
    results: list[dict[str, Any]] = []
    found = targets(schedule, registry, ledger)
    if school is not None:
        found = [t for t in found if t.school == school]
    if schools is not None:
        wanted = set(schools)
        found = [t for t in found if t.school in wanted]
    if by is None and found:
        # The scheduler leaves alone the gateways that run this schedule themselves (central/edge_schedules.py);
        # a person's "run now" still goes to every device.
        from central.edge_schedules import edge_gateways

        edge = edge_gateways(ledger, {t.gateway for t in found}, schedule.id, now)
        found = [t for t in found if t.gateway not in edge]
        if not found and edge:
            return {"id": None, "schedule_id": schedule.id, "ran_at": now, "results": [], "edge": sorted(edge)}
    timetables: dict[str, Timetable] = {}
    if by is None and schedule.action in SWITCH_ON_ACTIONS and found:
        from central.timetables import load_all

        timetables = load_all(registry, tuple(sorted({t.school for t in found})))
    for t in found:
        base = {"gateway": t.gateway, "room": t.room, "device": t.device, "kind": t.kind,
                "action": schedule.action}
        if no_classes(schedule.action, timetables.get(t.school), now):
            results.append({**base, "status": "skipped", "detail": NO_CLASSES, "command": None})
            continue
        if t.status == "never reported":
            results.append({**base, "status": "skipped", "detail": "provisioned, but the gateway has never "
                            "reported this device", "command": None})
            continue
        if service is None:
            results.append({**base, "status": "failed", "command": None,
                            "detail": "this server has no MQTT connection (started without --mqtt)"})
            continue
        try:
            # An offline gateway will not answer now: do not wait for it device after device.
            record = service.send(t.school, t.gateway, t.device, schedule.action, {}, by=who, ttl=ttl,
                                  wait=publish_wait if t.status != "offline" else min(publish_wait, 0.05))
        except Exception as exc:  # noqa: BLE001 - one device's failure is that device's result
            results.append({**base, "status": "failed", "detail": f"not sent: {exc}", "command": None})
            continue
        results.append({**base, "status": record["status"], **result_detail(record.get("detail", "")),
                        "command": record["id"], "offline": t.status == "offline",
                        "deadline": record.get("deadline")})
    # Wait for the answers together: a building's worth of devices costs one wait, not one each.
    deadline = time.monotonic() + wait
    while any(r["status"] == "pending" for r in results) and time.monotonic() < deadline:
        _refresh(results, ledger)
        if any(r["status"] == "pending" for r in results):
            time.sleep(0.1)
    _refresh(results, ledger)
    for r in results:
        if r["status"] == "pending":
            r["detail"] = ("gateway offline: " if r.pop("offline", False) else "no answer yet: ") + \
                f"it runs if the gateway gets it within {ttl / 60:.0f} min"
        r.pop("offline", None)
        r.pop("deadline", None)
    with registry.session() as s:
        row = s.get(Schedule, schedule.id)
        if row is not None and (row.last_run is None or row.last_run < now):
            row.last_run = now
        run_row = ScheduleRun(schedule_id=schedule.id, ran_at=now, results=results)
        s.add(run_row)
        s.flush()
        run_id = run_row.id
    if by is None:  # a person's "run now" is audited by the web app, with their address
        registry.audit("scheduler", "schedule_run",
                       f"{schedule.name} ({schedule.action}): {summarise(results) or 'no matching devices'}")
    return {"id": run_id, "schedule_id": schedule.id, "ran_at": now, "results": results}


def _refresh(results: list[dict[str, Any]], ledger: Any) -> None:
    for r in results:
        if r["status"] == "pending" and r.get("command"):
            record = ledger.command(r["command"])
            if record and record["status"] != "pending":
                r["status"] = record["status"]
                r.update(result_detail(record["detail"]))


def result_detail(value: Any) -> dict[str, Any]:
    """A device's result detail as a run keeps it (JSON): `detail`, the English, and for a text the gateway
    marked for translation `detail_text` (campus.i18n.ReportedText.as_dict), which the history page shows in
    the reader's language (dashboards/health_schedules.py)."""
    text = translatable(value)
    if isinstance(text, ReportedText) and text.msgid:
        return {"detail": str(value), "detail_text": text.as_dict()}
    return {"detail": value if isinstance(value, str) else str(value)}


def summarise(results: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


# A run's statuses as a person reads them (the words the pages use for a command's status).
STATUS_WORDS = {"done": N_("done"), "failed": N_("failed"), "rejected": N_("refused"), "expired": N_("expired"),
                "pending": N_("waiting"), "skipped": N_("skipped"), "missed": N_("missed")}


def summary_parts(results: list[dict[str, Any]]) -> list[LazyText]:
    """`summarise` translatable: one `3 done` per status, in the same order (join them with a comma)."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return [lazy_gettext("%(count)s %(status)s", count=n, status=LazyText(STATUS_WORDS.get(status, status)))
            for status, n in sorted(counts.items())]


def claim(registry: Registry, schedule_id: int, when: datetime, now: float) -> bool:
    """Atomically mark an occurrence as taken; False if someone (another process) already ran it."""
    with registry.session() as s:
        result = s.execute(sql_update(Schedule).where(Schedule.id == schedule_id, Schedule.enabled.is_(True),
                                                  or_(Schedule.last_run.is_(None),
                                                      Schedule.last_run < when.timestamp()))
                           .values(last_run=now))
        return result.rowcount == 1


def claim_school(registry: Registry, schedule_id: int, school: str, when: datetime, now: float) -> bool:
    """`claim` for one school's occurrence of an anchored schedule (or, `school` = ZONE_CLAIM + a zone, one
    zone's of a fixed-time schedule for every school): atomically, so two web processes never both run it
    (the row's primary key refuses the second first claim; the update the second later one)."""
    with registry.session() as s:
        if s.scalar(select(Schedule.id).where(Schedule.id == schedule_id, Schedule.enabled.is_(True))) is None:
            return False
        result = s.execute(sql_update(ScheduleClaim).where(ScheduleClaim.schedule_id == schedule_id,
                                                           ScheduleClaim.school_id == school,
                                                           ScheduleClaim.last_run < when.timestamp())
                           .values(last_run=now))
        if result.rowcount == 1:
            return True
        if s.get(ScheduleClaim, (schedule_id, school)) is not None:
            return False
        try:
            with s.begin_nested():
                s.add(ScheduleClaim(schedule_id=schedule_id, school_id=school, last_run=now))
        except IntegrityError:
            return False
        return True


def school_claims(registry: Registry, schedule_ids: list[int]) -> dict[tuple[int, str], float]:
    """Each school's (or zone's: ZONE_CLAIM) last claim of these schedules, by (schedule, key), in one read."""
    if not schedule_ids:
        return {}
    with registry.session() as s:
        return {(sid, school): at for sid, school, at in s.execute(
            select(ScheduleClaim.schedule_id, ScheduleClaim.school_id, ScheduleClaim.last_run)
            .where(ScheduleClaim.schedule_id.in_(schedule_ids)))}


def schools_of(registry: Registry, schedules: Iterable[Any]) -> tuple[str, ...]:
    """The schools the `schedules` apply to: each one's school, every school for one without."""
    schedules = list(schedules)
    if any(sched.school_id is None for sched in schedules):
        with registry.session() as s:
            return tuple(s.scalars(select(School.id).order_by(School.id)))
    return tuple(sorted({sched.school_id for sched in schedules}))


def runs(registry: Registry, schedule_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    q = select(ScheduleRun).order_by(ScheduleRun.ran_at.desc(), ScheduleRun.id.desc()).limit(limit)
    if schedule_id is not None:
        q = q.where(ScheduleRun.schedule_id == schedule_id)
    with registry.session() as s:
        return [{"id": r.id, "schedule_id": r.schedule_id, "ran_at": r.ran_at, "results": list(r.results or [])}
                for r in s.scalars(q)]


class Scheduler(LeasedWorker):
    """Runs due schedules; checks every `interval` seconds in a daemon thread until stop().

    Every instance checks (no lease, central/workers.py): each run is claimed in the database first
    (`claim`, `claim_school`), so of several instances one runs it. `site_zone` is the zone of a school
    without a timetable (`campus web --timezone`; None: Asia/Shanghai): a fixed time is read in the
    school's zone, never the host's."""

    def __init__(self, registry: Registry, ledger: Any, service: Any | Callable[[], Any], interval: float = 20.0,
                 grace: timedelta = GRACE, wait: float = 5.0, site_zone: ZoneInfo | None = None) -> None:
        super().__init__(registry.db, None, interval=interval, name="scheduler", what="schedule check",
                         join_s=interval + 60)
        self.registry, self.ledger, self.grace, self.wait = registry, ledger, grace, wait
        self.site_zone = site_zone_of(site_zone)
        self._service = service
        from central.edge_schedules import EdgeRunCollector

        self._edge_runs = EdgeRunCollector(registry, ledger)

    @property
    def service(self) -> Any:
        return self._service() if callable(self._service) and not hasattr(self._service, "send") else self._service

    def tick(self, now_local: datetime | None = None) -> list[dict[str, Any]]:
        """Run every due schedule once; returns the runs made. `now_local`: now, an aware time in any zone
        (only the instant counts: each schedule reads it in its school's zone); None: the clock."""
        now = time.time() if now_local is None else now_local.timestamp()
        with self.registry.session() as s:
            schedules = list(s.scalars(select(Schedule).where(Schedule.enabled.is_(True)).order_by(Schedule.id)))
        done = []
        self._edge(now)
        done += self._anchored([sched for sched in schedules if anchored(sched)], now)
        done += self._fixed([sched for sched in schedules if not anchored(sched)], now)
        return done

    def _fixed(self, schedules: list[Any], now: float) -> list[dict[str, Any]]:
        """Run the fixed-time schedules due now, `at` read in each school's zone (`zone_groups`). One with a
        school is claimed on its row (`claim`); one for every school once per zone (`claim_school`, key
        ZONE_CLAIM + the zone), on that zone's schools. Reads the schools' zones once a tick."""
        if not schedules:
            return []
        school_zones = zones_of(self.registry, schedules, self.site_zone)
        everywhere = [sched.id for sched in schedules if sched.school_id is None]
        claims = school_claims(self.registry, everywhere)
        claimed = {sid for sid, _ in claims}
        done = []
        for sched in schedules:
            for key, (zone, schools) in zone_groups(sched, school_zones, self.site_zone).items():
                here = datetime.fromtimestamp(now, zone)
                if sched.school_id is not None:
                    when = occurrence(sched, here, self.grace)
                    if when is None or not claim(self.registry, sched.id, when, now):
                        continue
                else:
                    # No zone claimed yet (a schedule from before zones, or a new one): its row's last run
                    # counts, so an occurrence run just before the upgrade is not run again.
                    last = claims.get((sched.id, ZONE_CLAIM + key),
                                      None if sched.id in claimed else sched.last_run)
                    when = _occurrence(sched, here, last, self.grace)
                    if when is None or not claim_school(self.registry, sched.id, ZONE_CLAIM + key, when, now):
                        continue
                log.info("schedule %r (%s at %s, %s) runs", sched.name, sched.action, sched.at, key)
                result = run(sched, self.registry, self.ledger, self.service, now=now, wait=self.wait,
                             schools=schools)
                if result["id"] is not None:  # None: every gateway in scope ran it itself
                    done.append({**result, "zone": key, "planned": when.timestamp()})
        return done

    def _anchored(self, schedules: list[Any], now: float) -> list[dict[str, Any]]:
        """Run the anchored schedules due now, each school's occurrence apart: its own last period (its
        timetable, its zone), its own claim, its own devices. Reads every school's timetable once a tick."""
        if not schedules:
            return []
        from central.timetables import load_all

        timetables = load_all(self.registry, schools_of(self.registry, schedules))
        claims = school_claims(self.registry, [sched.id for sched in schedules])
        done = []
        for sched in schedules:
            for school, tt in sorted(timetables.items()):
                if sched.school_id is not None and school != sched.school_id:
                    continue
                when = anchored_occurrence(sched, tt, now, claims.get((sched.id, school)), self.grace)
                if when is None or not claim_school(self.registry, sched.id, school, when, now):
                    continue
                log.info("schedule %r (%s, %s min after the last period) runs for %s at %s", sched.name,
                         sched.action, sched.offset_min, school, when.isoformat())
                result = run(sched, self.registry, self.ledger, self.service, now=now, wait=self.wait,
                             school=school)
                if result["id"] is not None:
                    done.append({**result, "school": school, "planned": when.timestamp()})
        return done

    def _edge(self, now: float) -> None:
        """The edge's part: record the runs gateways reported, and give every gateway a fresh plan daily."""
        from central import edge_schedules

        try:
            self._edge_runs.collect(now)
            client = getattr(self.service, "client", None)
            if client is not None:
                edge_schedules.refresh_due(self.registry, client, now, site_zone=self.site_zone)
        except Exception:  # noqa: BLE001 - central's own runs go on
            log.exception("recording or planning the schedules run at the edge failed")

    def round(self) -> None:
        self.tick()
