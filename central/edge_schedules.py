"""Schedules run at the edge: central plans each gateway's runs, the gateway keeps time.

A gateway cut off from central at 22:00 must still switch its projector off at 22:00, so central
compiles the schedules that apply to a gateway into concrete planned runs for the next HORIZON_DAYS
(schedule id, planned unix time, the action on each of its devices of the schedule's kinds) and sends
them in the gateway's pushed config (`schedules`, central/podium.py config_payload). Times are
resolved here, as central's own scheduler resolves them (central/schedules.py: `at` and the weekdays on
the wall clock of the gateway's school's zone, its timetable's, else the site's; never the host's), so the
gateway needs no calendar and both sides agree on a run's time. The school's timetable is applied
here too: a run that switches equipment on, on a day without classes (a holiday, out of term), is not
planned (central/schedules.py no_classes, which central's own runs follow). A schedule anchored to the
last period (central/schedules.py `anchored_time`) is resolved with the gateway's school's timetable, in
the school's zone: each day's last period end plus the offset, so one schedule for several schools plans
each gateway at its own school's time, and a day without periods (or a school without a timetable) plans
no anchored run.

Who runs a schedule for a gateway, without a double run: the gateway's own word. An agent that applied
a plan says so in its `config_applied` event (the schedule ids and the end of the plan,
edge_agent/config_push.py schedules_taken); central's scheduler leaves those schedules' devices on
that gateway alone until the plan's end (`edge_gateways`). Not the push: a push refused, not yet
delivered (the gateway offline) or read by an older agent leaves the schedule with central, so nothing
is left unrun; and a plan that ran out (a gateway away for weeks) gives the schedule back to central.

Each edge run comes back through the outbox as a `schedule_run` event; `collect` (`EdgeRunCollector` each
tick of central's scheduler) writes it into the same history central's runs go to (`schedule_runs`), one
row per occurrence (the schedule and its planned time) with each gateway's results in it, each gateway's
once whatever is delivered again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select

from campus import contract
from campus.errors import PayloadError
from central.registry import Gateway, Registry, Room, Schedule, ScheduleRun
from central.schedules import GRACE, _when, anchored, anchored_time, no_classes, result_detail
from central.timetables import load, school_zone, site_zone_of

log = logging.getLogger(__name__)

HORIZON_DAYS = 14
REFRESH_AFTER_S = 86400.0   # re-planned and pushed daily, long before the horizon runs out
REFRESH_PER_CALL = 50
COLLECT_WINDOW_S = 7 * 86400.0  # how far back `collect` looks for reports (a gateway away for a week)
COLLECT_LIMIT = 20000           # reports read in one round
# A round after the first reads what was recorded after the newest report it has read, and also what was
# recorded in this long before the round before began: a batch still committing then (PostgreSQL, several
# ingest workers: one recorded earlier may commit after one recorded later), or a clock stepped back. Such
# a report is read for this long at most, and recorded once all the same (`_record`).
RECORDED_OVERLAP_S = 60.0
EDGE = "edge"  # `by` of an edge run's results in the history


def compile_runs(registry: Registry, gateway: str, now: float | None = None, days: int = HORIZON_DAYS,
                 site_zone: ZoneInfo | None = None) -> dict[str, Any]:
    """The `schedules` of a gateway's pushed config: every run of an enabled schedule in scope of the
    gateway (its school, its room's building, or every school) from `now` to `now + days`, on its
    devices of the schedule's kinds, in time order (edge_agent/schedules.py runs them). A fixed time is
    read in the gateway's school's zone (`site_zone` for a school without a timetable; None: Asia/Shanghai),
    as central's scheduler reads it for that school."""
    from central.overview import profile_kind

    now = time.time() if now is None else now
    until = now + days * 86400.0
    with registry.session() as s:
        row = s.execute(select(Gateway.school_id, Room.building_id).outerjoin(Room, Gateway.room_id == Room.id)
                        .where(Gateway.id == gateway)).first()
        if row is None:
            return {"until": until, "grace_s": GRACE.total_seconds(), "runs": []}
        school, building = row
        query = select(Schedule).where(Schedule.enabled.is_(True),
                                       or_(Schedule.school_id.is_(None), Schedule.school_id == school))
        query = query.where(or_(Schedule.building_id.is_(None), Schedule.building_id == building)
                            if building is not None else Schedule.building_id.is_(None))
        schedules = list(s.scalars(query.order_by(Schedule.id)))
    info = registry.gateway_info(gateway) or {"devices": []}
    timetable = load(registry, school)
    kinds = {d["id"]: profile_kind(d["profile"]) for d in info["devices"]}
    runs: list[dict[str, Any]] = []
    zone = school_zone(registry, site_zone_of(site_zone), school=school)
    start = datetime.fromtimestamp(now, zone)
    for sched in schedules:
        parsed = _when(sched)
        wanted = {k.strip() for k in (sched.kinds or "").split(",") if k.strip()}
        devices = sorted(d for d, kind in kinds.items() if kind in wanted)
        if anchored(sched) and devices and timetable is not None:
            first = datetime.fromtimestamp(now, timetable.zone).date()
            for ahead in range(days + 1):
                at_time = anchored_time(sched, timetable, first + timedelta(days=ahead))
                when = at_time.timestamp() if at_time is not None else None
                if when is not None and now < when <= until and not no_classes(sched.action, timetable, when):
                    runs.append({"schedule": sched.id, "at": when, "name": sched.name,
                                 "steps": [{"device": d, "action": sched.action} for d in devices]})
            continue
        if parsed is None or not devices:
            continue
        at, weekdays = parsed
        for ahead in range(days + 1):
            day = (start + timedelta(days=ahead)).date()
            if day.weekday() not in weekdays:
                continue
            # The school's wall clock (DST included), as central's scheduler reads `at` for this school.
            when = datetime.combine(day, at, tzinfo=zone).timestamp()
            if now < when <= until and not no_classes(sched.action, timetable, when):
                runs.append({"schedule": sched.id, "at": when, "name": sched.name,
                             "steps": [{"device": d, "action": sched.action} for d in devices]})
    runs.sort(key=lambda r: (r["at"], r["schedule"]))
    return {"until": until, "grace_s": GRACE.total_seconds(), "runs": runs}


def edge_gateways(ledger: Any, gateways: Collection[str], schedule_id: int, now: float) -> set[str]:
    """Which of `gateways` run `schedule_id` themselves now (their newest `config_applied` says so)."""
    newest = ledger.newest_events(list(gateways), ["config_applied"])
    out = set()
    for (gateway, _type), event in newest.items():
        data = event.get("data") or {}
        until = data.get("schedules_until")
        if isinstance(until, (int, float)) and until > now and schedule_id in (data.get("schedules") or []):
            out.add(gateway)
    return out


def bump_gateways(registry: Registry, school: str | None = None, building: int | None = None) -> int:
    """Raise the config version of every gateway a schedule (or a school's timetable) applies to, so the
    next push sends them a new plan (provisioning shows them as "changes not pushed"); how many."""
    with registry.session() as s:
        query = select(Gateway).outerjoin(Room, Gateway.room_id == Room.id)
        if school is not None:
            query = query.where(Gateway.school_id == school)
        if building is not None:
            query = query.where(Room.building_id == building)
        rows = list(s.scalars(query))
        for gw in rows:
            gw.config_version += 1
        return len(rows)


def refresh_due(registry: Registry, client: Any, now: float | None = None,
                site_zone: ZoneInfo | None = None) -> list[str]:
    """Push a new plan to every gateway whose last push is older than REFRESH_AFTER_S (daily), so its plan
    never runs out while central is up; the gateways pushed (planned with `site_zone`, `compile_runs`).
    Stops at the first failure (the broker)."""
    from campus.errors import CampusError
    from central import provisioning

    now = time.time() if now is None else now
    provisioning.ensure_tables(registry)
    with registry.session() as s:
        pushed = {gid: at for gid, at in s.execute(select(provisioning.ConfigPush.gateway_id,
                                                          provisioning.ConfigPush.pushed_at))}
        # Only gateways central pushes to already (one run from its config file alone stays so), a few per
        # call: the scheduler's tick must not stall on a district's 2,000 pushes.
        stale = sorted(gid for gid in s.scalars(select(Gateway.id))
                       if pushed.get(gid) is not None and pushed[gid] < now - REFRESH_AFTER_S)[:REFRESH_PER_CALL]
    done = []
    for gateway in stale:
        with registry.session() as s:
            gw = s.get(Gateway, gateway)
            if gw is None:
                continue
            gw.config_version += 1
        try:
            provisioning.push_config(registry, client, gateway, "scheduler", site_zone=site_zone)
        except CampusError as exc:
            log.warning("daily schedule push to %s failed: %s", gateway, exc)
            break
        done.append(gateway)
    return done


def collect(registry: Registry, ledger: Any, now: float | None = None) -> int:
    """Record the `schedule_run` events gateways reported in the last COLLECT_WINDOW_S (by their `ts`) in the
    schedules' history; how many were new. A one-off look: `EdgeRunCollector` is the one that runs each
    tick, reading after its first round only what was recorded since."""
    now = time.time() if now is None else now
    return _record(registry, ledger.events(type_=contract.SCHEDULE_RUN_EVENT, since=now - COLLECT_WINDOW_S,
                                           limit=COLLECT_LIMIT))


class EdgeRunCollector:
    """`collect`, round after round (central's scheduler, every tick): the first round reads the reports of
    the last COLLECT_WINDOW_S by their time, as `collect` does; each next one only those recorded since
    (`Ledger.events_recorded`: a run reported days late by a gateway that was away is new when it comes),
    where every round used to read the seven days again. Its marks are times of the ledger's clock
    (`Ledger.clock`, `recorded`), never this process's: ingest may run on other hosts."""

    def __init__(self, registry: Registry, ledger: Any) -> None:
        self.registry, self.ledger = registry, ledger
        self._began: float | None = None  # when the last round's read began (None: no round yet)
        self._mark: float | None = None   # the newest `recorded` read (None: none recorded yet)

    def collect(self, now: float | None = None) -> int:
        """One round; how many reports were new. The marks move only once the round's reports are recorded:
        a round that failed is read again by the next."""
        began = self.ledger.clock()
        if self._began is None:
            mark = self.ledger.newest_recorded(contract.SCHEDULE_RUN_EVENT)  # first: what comes after is new
            events = self.ledger.events(type_=contract.SCHEDULE_RUN_EVENT,
                                        since=(time.time() if now is None else now) - COLLECT_WINDOW_S,
                                        limit=COLLECT_LIMIT)
        else:
            mark = self._mark
            after = self._began - RECORDED_OVERLAP_S
            events = self.ledger.events_recorded(contract.SCHEDULE_RUN_EVENT,
                                                 after if mark is None else min(mark, after), limit=COLLECT_LIMIT)
        added = _record(self.registry, events)
        if self._began is not None and len(events) == COLLECT_LIMIT:
            # More than a round takes: the next one goes on from the last read (a second before it: the
            # rest of its batch, written within it), as if this one had begun then.
            last = events[-1]["recorded"]
            self._began, self._mark = last + RECORDED_OVERLAP_S, last - 1.0
        else:
            self._began = began
            self._mark = max((r for r in (mark, *(ev.get("recorded") for ev in events)) if r is not None),
                             default=None)
        return added


def _record(registry: Registry, events: list[dict[str, Any]]) -> int:
    """Record these `schedule_run` events in the schedules' history; how many were new.

    One row per occurrence (schedule, planned time: `ran_at`), each gateway's results added once: the
    schedule's row is locked first (PostgreSQL: FOR UPDATE; SQLite: the one writer), so two web
    processes collecting at once cannot both add them."""
    reports = []
    for ev in sorted(events, key=lambda e: (e["ts"], e["seq"])):
        sid, planned = ev["data"].get("schedule"), ev["data"].get("planned")
        if (not isinstance(sid, bool) and isinstance(sid, int) and not isinstance(planned, bool)
                and isinstance(planned, (int, float))):
            reports.append((ev, sid, float(planned)))
    if not reports:
        return 0
    # What is recorded already, in one read: the next 20 s tick must not cost a transaction per report.
    with registry.session() as s:
        recorded = {(sid, ran_at, r.get("gateway")) for sid, ran_at, results in s.execute(
            select(ScheduleRun.schedule_id, ScheduleRun.ran_at, ScheduleRun.results)
            .where(ScheduleRun.ran_at >= min(p for _, _, p in reports)))
            for r in results or [] if isinstance(r, dict) and r.get("by") == EDGE}
    reports = [(ev, sid, p) for ev, sid, p in reports if (sid, p, ev["gateway"]) not in recorded]
    places = registry.gateway_infos({ev["gateway"] for ev, _, _ in reports}) if reports else {}
    added = 0
    for ev, sid, planned in reports:
        data, gateway = ev["data"], ev["gateway"]
        room = (places.get(gateway) or {}).get("room", "")
        with registry.session() as s:
            if s.scalar(select(Schedule.id).where(Schedule.id == sid).with_for_update()) is None:
                continue  # the schedule was deleted since
            row = s.scalar(select(ScheduleRun).where(ScheduleRun.schedule_id == sid, ScheduleRun.ran_at == planned))
            if row is not None and any(r.get("gateway") == gateway for r in row.results or []):
                continue
            results = [{"gateway": gateway, "room": room, "device": step.get("device"), "kind": "",
                        "action": step.get("action"), "status": step.get("status"),
                        **_step_detail(step), "command": None, "by": EDGE}
                       for step in data.get("steps") or [] if isinstance(step, dict)]
            if not results:  # a run with no step still shows which gateway ran it
                results = [{"gateway": gateway, "room": room, "device": "", "kind": "", "action": "",
                            "status": data.get("outcome", ""), "detail": "", "command": None, "by": EDGE}]
            if row is None:
                s.add(ScheduleRun(schedule_id=sid, ran_at=planned, results=results))
            else:
                row.results = [*(row.results or []), *results]  # a new list: the JSON column sees the change
            # Not `last_run`: that is central's claim of an occurrence for the gateways it runs itself.
            added += 1
    return added


def _step_detail(step: dict[str, Any]) -> dict[str, Any]:
    """A step's detail as the run keeps it: with the msgid and params the agent marked it with, when they are
    within the contract's bounds (campus/contract.py `reported_text`); else its English as it was sent."""
    try:
        return result_detail(contract.reported_text(step, "schedule_run step"))
    except PayloadError as exc:
        log.warning("schedule_run step: %s: its detail is kept in English", exc)
        return {"detail": step.get("detail", "")}
