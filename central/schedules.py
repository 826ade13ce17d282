"""Schedules: e.g. every display and projector in a building off at 22:00 on school days.

A `Schedule` (registry) names a local time `at` ("HH:MM"), the weekdays it
runs on, an action (`power_off`, ...), the device kinds it applies to and
its scope (a school, a building, or everywhere). `due()` says whether a
schedule should run now: at or after its time on one of its days, not yet
run for that occurrence, and no later than a grace window after it (a
server that was down at 22:00 and back at 22:10 still runs it, once; one
back the next morning does not switch anything off at 07:00).

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
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select
from sqlalchemy import update as sql_update

from campus import names
from campus.i18n import N_, LazyText, ReportedText, lazy_gettext, message_of
from central.db import translatable
from central.registry import Building, Registry, Schedule, ScheduleRun, School, row_id
from central.timetables import Timetable, day_periods

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
    """A schedule field is wrong; the message names the field, for people."""


def parse_at(at: str) -> dtime:
    m = _HHMM.match((at or "").strip())
    if not m:
        raise ScheduleError(lazy_gettext("time must be HH:MM (24 h), e.g. 22:00, got %(value)s",
                                         value=repr(str(at)[:20])))
    return dtime(int(m.group(1)), int(m.group(2)))


def parse_days(days: str | None) -> tuple[int, ...]:
    """Weekday numbers (Monday 0) of a "mon,tue,..." list."""
    names = [d.strip().lower()[:3] for d in (days if days is not None else SCHOOL_DAYS).split(",") if d.strip()]
    bad = [n for n in names if n not in DAYS]
    if bad or not names:
        if bad:
            raise ScheduleError(lazy_gettext("days must be some of %(days)s; got %(value)s", days=", ".join(DAYS),
                                             value=repr(bad[0])))
        raise ScheduleError(lazy_gettext("days must be some of %(days)s", days=", ".join(DAYS)))
    return tuple(sorted({DAYS.index(n) for n in names}))


def _when(schedule: Any) -> tuple[dtime, tuple[int, ...]] | None:
    """(time of day, weekdays) of an enabled schedule; None if it is disabled or unreadable (it never runs)."""
    if schedule.enabled is False:
        return None
    try:
        return parse_at(schedule.at), parse_days(schedule.days)
    except ScheduleError:
        return None


def occurrence(schedule: Any, now_local: datetime, grace: timedelta = GRACE) -> datetime | None:
    """The occurrence of `schedule` to run now, if any (see the module docstring).

    `now_local` is the local wall-clock time (naive or aware); `schedule.last_run` a unix time.
    """
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
            if schedule.last_run is None or schedule.last_run < when.timestamp():
                return when
            return None
    return None


def due(schedule: Any, now_local: datetime, grace: timedelta = GRACE) -> bool:
    return occurrence(schedule, now_local, grace) is not None


def next_run(schedule: Any, now_local: datetime) -> datetime | None:
    """When the schedule runs next (for the page), or None if it never will."""
    parsed = _when(schedule)
    if parsed is None:
        return None
    at, days = parsed
    for ahead in range(8):
        day = (now_local + timedelta(days=ahead)).date()
        when = datetime.combine(day, at, tzinfo=now_local.tzinfo)
        if day.weekday() in days and when > now_local:
            return when
    return None


# ---------------------------------------------------------------- editing


def validate(form: Mapping[str, Any], registry: Registry) -> dict[str, Any]:
    """Check a schedule as typed in a form (or JSON); returns model fields or raises ScheduleError."""
    try:
        name = names.display_name(str(form.get("name", "")), "name", max_chars=names.SCHEDULE_NAME_MAX)
    except names.BadName as exc:
        raise ScheduleError(message_of(exc)) from None
    at = str(form.get("at", "")).strip()
    parse_at(at)
    days_raw = form.get("days", "")
    days_list = days_raw if isinstance(days_raw, list) else str(days_raw).split(",")
    days = ",".join(DAYS[i] for i in parse_days(",".join(str(d) for d in days_list)))
    action = str(form.get("action", ""))
    if action not in SCHEDULE_ACTIONS:
        raise ScheduleError(lazy_gettext("action must be one of %(actions)s", actions=", ".join(SCHEDULE_ACTIONS)))
    kinds_raw = form.get("kinds", "")
    kinds_list = [k.strip() for k in (kinds_raw if isinstance(kinds_raw, list) else str(kinds_raw).split(","))
                  if str(k).strip()]
    if not kinds_list or any(k not in SCHEDULE_KINDS for k in kinds_list):
        raise ScheduleError(lazy_gettext("devices must be some of %(kinds)s", kinds=", ".join(SCHEDULE_KINDS)))
    kinds = ",".join(k for k in SCHEDULE_KINDS if k in kinds_list)
    school = str(form.get("school_id") or "").strip() or None
    if school is not None:  # looked up below: PostgreSQL refuses a NUL in a query outright (a 503)
        try:
            names.identifier(school, "school")
        except names.BadName:
            raise ScheduleError(lazy_gettext("school must be one of the listed schools")) from None
    building_raw = str(form.get("building_id") or "").strip()
    building_id = None
    with registry.session() as s:
        if school is not None and s.get(School, school) is None:
            raise ScheduleError(lazy_gettext("no school %(school)s", school=repr(school)))
        if building_raw:
            building_key = row_id(building_raw)
            if building_key is None:
                raise ScheduleError(lazy_gettext("building must be one of the listed buildings"))
            b = s.get(Building, building_key)
            if b is None:
                raise ScheduleError(lazy_gettext("no building %(building)s", building=building_raw))
            if school is not None and b.school_id != school:
                raise ScheduleError(lazy_gettext("building %(building)s is not in school %(school)s",
                                                 building=repr(b.name), school=repr(school)))
            building_id, school = b.id, b.school_id
    enabled = form.get("enabled", True)
    if isinstance(enabled, str):
        enabled = enabled.lower() in ("1", "on", "true", "yes")
    return {"name": name, "at": at, "days": days, "action": action, "kinds": kinds, "school_id": school,
            "building_id": building_id, "enabled": bool(enabled)}


def schedule_dict(s: Schedule, places: Mapping[int, str] | None = None) -> dict[str, Any]:
    # Shown on pages and in the API: English text the web app translates where it is shown (campus.i18n).
    scope: LazyText = lazy_gettext("every school")
    if s.building_id is not None:
        building = places.get(s.building_id, s.building_id) if places else s.building_id
        scope = (lazy_gettext("building %(building)s (%(school)s)", building=building, school=s.school_id)
                 if s.school_id else lazy_gettext("building %(building)s", building=building))
    elif s.school_id:
        scope = lazy_gettext("school %(school)s", school=s.school_id)
    return {"id": s.id, "name": s.name, "school_id": s.school_id, "building_id": s.building_id, "at": s.at,
            "days": s.days, "action": s.action, "kinds": s.kinds, "enabled": bool(s.enabled),
            "last_run": s.last_run, "scope": scope}


def all_schedules(registry: Registry, schools: tuple[str, ...] | None = None) -> list[Schedule]:
    """Every schedule (of `schools` only, if given: a school-scoped account's, never one for every school),
    by time of day (detached rows: read their fields, change them through `update`)."""
    query = select(Schedule).order_by(Schedule.at, Schedule.id)
    if schools is not None:
        query = query.where(Schedule.school_id.in_(schools))
    with registry.session() as s:
        return list(s.scalars(query))


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
        by: str | None = None) -> dict[str, Any]:
    """Send the schedule's action to every target, wait up to `wait` s for results, record a ScheduleRun."""
    now = time.time() if now is None else now
    who = by or f"schedule:{schedule.name}"
    results: list[dict[str, Any]] = []
    found = targets(schedule, registry, ledger)
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


def runs(registry: Registry, schedule_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    q = select(ScheduleRun).order_by(ScheduleRun.ran_at.desc(), ScheduleRun.id.desc()).limit(limit)
    if schedule_id is not None:
        q = q.where(ScheduleRun.schedule_id == schedule_id)
    with registry.session() as s:
        return [{"id": r.id, "schedule_id": r.schedule_id, "ran_at": r.ran_at, "results": list(r.results or [])}
                for r in s.scalars(q)]


class Scheduler:
    """Runs due schedules; checks every `interval` seconds in a daemon thread until stop()."""

    def __init__(self, registry: Registry, ledger: Any, service: Any | Callable[[], Any], interval: float = 20.0,
                 grace: timedelta = GRACE, wait: float = 5.0) -> None:
        if interval <= 0:
            raise ValueError("the schedule interval must be positive")
        self.registry, self.ledger, self.interval, self.grace, self.wait = registry, ledger, interval, grace, wait
        self._service = service
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    @property
    def service(self) -> Any:
        return self._service() if callable(self._service) and not hasattr(self._service, "send") else self._service

    def tick(self, now_local: datetime | None = None) -> list[dict[str, Any]]:
        """Run every due schedule once; returns the runs made."""
        now_local = now_local or datetime.now().astimezone()
        now = now_local.timestamp()
        with self.registry.session() as s:
            schedules = list(s.scalars(select(Schedule).where(Schedule.enabled.is_(True)).order_by(Schedule.id)))
        done = []
        self._edge(now)
        for sched in schedules:
            when = occurrence(sched, now_local, self.grace)
            if when is None or not claim(self.registry, sched.id, when, now):
                continue
            log.info("schedule %r (%s at %s) runs", sched.name, sched.action, sched.at)
            result = run(sched, self.registry, self.ledger, self.service, now=now, wait=self.wait)
            if result["id"] is not None:  # None: every gateway in scope ran it itself
                done.append(result)
        return done

    def _edge(self, now: float) -> None:
        """The edge's part: record the runs gateways reported, and give every gateway a fresh plan daily."""
        from central import edge_schedules

        try:
            edge_schedules.collect(self.registry, self.ledger, now)
            client = getattr(self.service, "client", None)
            if client is not None:
                edge_schedules.refresh_due(self.registry, client, now)
        except Exception:  # noqa: BLE001 - central's own runs go on
            log.exception("recording or planning the schedules run at the edge failed")

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - try again next time
                log.exception("schedule check failed; retrying in %.0f s", self.interval)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 60)
