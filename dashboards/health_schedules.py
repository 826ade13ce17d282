"""The schedule pages of the equipment-health area: timed actions and the results of each run.

`/health/schedules` lists the schedules (e.g. every display and projector of
a building off at 22:00 on school days) with their next and last run,
creates one; `/health/schedules/<id>` edits one, enables or disables it,
and shows each run's per-device results (a pending command looked up again,
it may have finished since); admins may run one now. `GET/POST /api/schedules` and `GET/PUT
/api/schedules/<id>` are the same for programs (a 400 names the `field`). Routes of the health
blueprint (roles `facility` and `admin`), so their endpoints are
`health.schedules`, `health.schedule`, ...; the scheduler thread that runs
them on time is started by `dashboards.health.register`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from flask import abort, flash, g, jsonify, make_response, redirect, render_template, request, url_for
from flask_babel import gettext

from campus.errors import PayloadError
from campus.i18n import LazyText, ReportedText, lazy_gettext, message_of
from central import overview
from central import schedules as sched
from central.lists import Paging
from central.registry import Schedule
from dashboards.api import error, paged
from dashboards.auth import audit, login_required, not_found, school_scoped, sight
from dashboards.context import central
from dashboards.health import STAFF, bp, db_id
from dashboards.i18n import error_text, page_zone, site_zone, translate
from dashboards.security import safe_target
from dashboards.strict_json import json_object


def _schedule_page(form_values: dict[str, Any] | None = None, error: str | LazyText = "", status: int = 200) -> Any:
    reg = central().registry
    scope = sight(g.user)
    places = overview.places(reg, scope)
    schools, buildings, names = places.schools, places.buildings, places.building_names()
    now_local = datetime.now(page_zone())
    rows = sched.all_schedules(reg, scope.schools)
    timetables, zones = _timetables(rows), _zones(rows)
    last_runs: dict[int, dict[str, Any]] = {}
    for run_ in sched.runs(reg, limit=500):
        last_runs.setdefault(run_["schedule_id"], run_)
    items = []
    for row in rows:
        item = sched.schedule_dict(row, names)
        nxt = sched.next_run(row, now_local, timetables, zones)
        item["next_run"] = nxt.timestamp() if nxt else None
        last = last_runs.get(row.id)
        item["last_summary"] = _summary(_live(last["results"])) if last else ""
        items.append(item)
    return render_template("health_schedules.html", schedules=items, schools=schools, buildings=buildings,
                           form=form_values or {"days": sched.SCHOOL_DAYS, "at": "22:00", "action": "power_off",
                                                "kinds": "display,projector", "enabled": True, "offset_min": 0},
                           error=error, tab="schedules", **_choices()), status


def _choices() -> dict[str, Any]:
    """The form's choices (health_schedule_form.html)."""
    return {"days": sched.DAYS, "actions": sched.SCHEDULE_ACTIONS, "kinds": sched.SCHEDULE_KINDS,
            "anchors": sched.ANCHORS, "offset_max": sched.OFFSET_MAX}


def _timetables(rows: list[Schedule]) -> dict[str, Any]:
    """The timetables an anchored schedule's next run is read from (none read without one)."""
    from central.timetables import load_all

    anchored = [row for row in rows if sched.anchored(row)]
    return load_all(central().registry, sched.schools_of(central().registry, anchored)) if anchored else {}


def _zones(rows: list[Schedule]) -> dict[str, Any]:
    """Each school's zone, for a fixed-time schedule's next run: `at` is its school's wall clock (a school
    without a timetable has the site's); none read without one."""
    fixed = [row for row in rows if not sched.anchored(row)]
    return sched.zones_of(central().registry, fixed, site_zone()) if fixed else {}


def _form_values() -> dict[str, Any]:
    return {"name": request.form.get("name", ""), "at": request.form.get("at", ""),
            "days": ",".join(request.form.getlist("days")), "action": request.form.get("action", ""),
            "kinds": ",".join(request.form.getlist("kinds")), "school_id": request.form.get("school_id", ""),
            "building_id": request.form.get("building_id", ""), "enabled": request.form.get("enabled") == "on",
            "anchor": request.form.get("anchor", ""), "offset_min": request.form.get("offset_min", "")}


def _outside(fields: dict[str, Any]) -> str:
    """Why a school-scoped account may not save a schedule of these fields ("" if it may): it acts on
    its schools only, so a schedule for every school is not its to make."""
    if not school_scoped(g.user) or sight(g.user).allows_school(fields.get("school_id") or ""):
        return ""
    audit("schedule", f"refused {fields}: outside the account's schools", ok=False)
    return gettext("school: your account is limited to some schools; pick one of them")


def _summary(results: list[dict[str, Any]]) -> str:
    """`3 done, 1 failed` in the request's language (central/schedules.py `summarise` is the English one)."""
    return gettext(", ").join(translate(part) for part in sched.summary_parts(results))


def _live(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's results with pending commands looked up again (they may have finished since)."""
    ledger = central().ledger
    out = []
    for r in results:
        r = dict(r)
        if isinstance(r.get("detail_text"), dict):  # a gateway's marked text: shown in the reader's language
            r["detail"] = ReportedText.from_dict(r["detail_text"])
        if r.get("status") == "pending" and r.get("command"):
            record = ledger.command(r["command"])
            if record and record["status"] != "pending":
                r["status"], r["detail"] = record["status"], record["detail"] or lazy_gettext(
                    "later: %(status)s", status=LazyText(sched.STATUS_WORDS.get(record["status"], record["status"])))
        out.append(r)
    return out


@bp.get("/health/schedules")
@login_required(roles=STAFF)
def schedules() -> Any:
    return _schedule_page()


@bp.post("/health/schedules")
@login_required(roles=STAFF)
def create_schedule() -> Any:
    values = _form_values()
    try:
        fields = sched.validate(values, central().registry)
    except sched.ScheduleError as exc:
        return _schedule_page(values, error_text(exc), 400)
    if problem := _outside(fields):
        return _schedule_page(values, problem, 403)
    sid = sched.create(central().registry, fields)
    audit("schedule", f"created #{sid} {fields}")
    flash(gettext("Schedule “%(name)s” created.", name=fields["name"]))
    return redirect(url_for("health.schedules"))


def _get_schedule(sid: str) -> Schedule:
    schedule_id = db_id(sid)
    if schedule_id is None:
        abort(404, lazy_gettext("no such schedule"))
    row = sched.get(central().registry, schedule_id)
    if row is None:
        abort(404, lazy_gettext("no such schedule"))
    if school_scoped(g.user) and not sight(g.user).allows_school(row.school_id or ""):
        abort(make_response(not_found("schedule")))
    return row


@bp.get("/health/schedules/<sid>")
@login_required(roles=STAFF)
def schedule(sid: str) -> Any:
    return _one_schedule(_get_schedule(sid))


def _one_schedule(row: Schedule, form_values: dict[str, Any] | None = None, error: str | LazyText = "",
                  status: int = 200) -> Any:
    reg = central().registry
    places = overview.places(reg, sight(g.user))
    schools, buildings = places.schools, places.buildings
    item = sched.schedule_dict(row, places.building_names())
    nxt = sched.next_run(row, datetime.now(page_zone()), _timetables([row]), _zones([row]))
    item["next_run"] = nxt.timestamp() if nxt else None
    history = [{**r, "results": _live(r["results"])} for r in sched.runs(reg, row.id, limit=30)]
    for r in history:
        r["summary"] = _summary(r["results"])
    form = form_values or {**item, "school_id": item["school_id"] or "", "building_id": item["building_id"] or ""}
    return render_template("health_schedule.html", schedule=item, runs=history, form=form, error=error,
                           schools=schools, buildings=buildings, tab="schedules", **_choices()), status


@bp.post("/health/schedules/<sid>")
@login_required(roles=STAFF)
def edit_schedule(sid: str) -> Any:
    row = _get_schedule(sid)
    values = _form_values()
    try:
        fields = sched.validate(values, central().registry)
    except sched.ScheduleError as exc:
        return _one_schedule(row, values, error_text(exc), 400)
    if problem := _outside(fields):
        return _one_schedule(row, values, problem, 403)
    before = sched.update(central().registry, row.id, fields)
    if before is None:
        abort(404, lazy_gettext("no such schedule"))
    audit("schedule", f"edited #{row.id}: {before} -> {fields}")
    flash(gettext("Schedule “%(name)s” saved.", name=fields["name"]))
    return redirect(url_for("health.schedule", sid=row.id))


@bp.post("/health/schedules/<sid>/enabled")
@login_required(roles=STAFF)
def toggle_schedule(sid: str) -> Any:
    row = _get_schedule(sid)
    enabled = request.form.get("enabled") == "on"
    if not sched.set_enabled(central().registry, row.id, enabled):
        abort(404, lazy_gettext("no such schedule"))
    audit("schedule", f"{'enabled' if enabled else 'disabled'} #{row.id} {row.name}")
    flash(gettext("Schedule “%(name)s” enabled.", name=row.name) if enabled
          else gettext("Schedule “%(name)s” disabled.", name=row.name))
    back = safe_target(request.form.get("back"), "")
    return redirect(back if back.startswith("/health/") else url_for("health.schedules"))


@bp.post("/health/schedules/<sid>/run")
@login_required(roles=("admin",))
def run_schedule(sid: str) -> Any:
    """Run a schedule now (admin: it switches equipment, which facility managers do not do by hand)."""
    row = _get_schedule(sid)
    c = central()
    result = sched.run(row, c.registry, c.ledger, c.commands, by=g.user["user"])
    audit("schedule", f"ran #{row.id} {row.name} now: {sched.summarise(result['results']) or 'no devices'}")
    flash(gettext("Ran “%(name)s”: %(summary)s.", name=row.name,
                  summary=_summary(result["results"]) or gettext("no matching devices")))
    return redirect(url_for("health.schedule", sid=row.id))


# ---------------------------------------------------------------- JSON API


def _api_item(row: Schedule, timetables: dict[str, Any], zones: dict[str, Any] | None = None) -> dict[str, Any]:
    item = sched.schedule_dict(row)
    nxt = sched.next_run(row, datetime.now(page_zone()), timetables, _zones([row]) if zones is None else zones)
    return {**item, "next_run": nxt.timestamp() if nxt else None}


# Fields a body may hold: the form's, as JSON (days and kinds as lists or comma-separated).
API_FIELDS = ("name", "at", "days", "action", "kinds", "school_id", "building_id", "enabled", "anchor", "offset_min")


def _api_fields(before: dict[str, Any] | None = None) -> tuple[dict[str, Any] | None, Any]:
    """The checked fields of the request's body (a PUT: over the schedule's own), or the 400/403 to answer."""
    body = json_object()
    unknown = sorted(k for k in body if k not in API_FIELDS)
    if unknown:
        return None, error(400, lazy_gettext("unknown field %(field)s", field=repr(unknown[0][:40])), unknown[0][:40])
    values = {**(before or {}), **body}
    for key in ("school_id", "building_id"):
        if values.get(key) is None:
            values[key] = ""
    try:
        fields = sched.validate(values, central().registry)
    except sched.ScheduleError as exc:
        return None, error(400, exc.args[0] if exc.args else str(exc), exc.field)
    if problem := _outside(fields):
        return None, error(403, problem, "school_id")
    return fields, None


@bp.get("/api/schedules")
@login_required(roles=STAFF)
def api_schedules() -> Any:
    """The schedules (of the account's schools, for one limited to some), by time of day, paged."""
    try:
        paging = Paging.parse(request.args)
    except PayloadError as exc:  # "query parameter 'limit' ...": the parameter is the field
        found = re.search(r"'([a-z_]+)'", str(exc))
        return error(400, message_of(exc), found.group(1) if found else "query")
    rows, total = sched.schedule_page(central().registry, paging.limit, paging.offset, paging.q,
                                      sight(g.user).schools)
    timetables, zones = _timetables(rows), _zones(rows)
    return paged([_api_item(row, timetables, zones) for row in rows], total)


@bp.post("/api/schedules")
@login_required(roles=STAFF)
def api_create_schedule() -> Any:
    fields, refusal = _api_fields()
    if fields is None:
        return refusal
    sid = sched.create(central().registry, fields)
    audit("schedule", f"created #{sid} {fields}")
    row = sched.get(central().registry, sid)
    assert row is not None
    return jsonify(_api_item(row, _timetables([row]))), 201


@bp.get("/api/schedules/<sid>")
@login_required(roles=STAFF)
def api_schedule(sid: str) -> Any:
    row = _get_schedule(sid)
    return jsonify(_api_item(row, _timetables([row])))


@bp.put("/api/schedules/<sid>")
@login_required(roles=STAFF)
def api_edit_schedule(sid: str) -> Any:
    """Change a schedule: the fields given replace its own, the others stay."""
    row = _get_schedule(sid)
    own = {k: v for k, v in sched.schedule_dict(row).items() if k in API_FIELDS}
    fields, refusal = _api_fields(own)
    if fields is None:
        return refusal
    before = sched.update(central().registry, row.id, fields)
    if before is None:
        abort(404, lazy_gettext("no such schedule"))
    audit("schedule", f"edited #{row.id}: {before} -> {fields}")
    new = sched.get(central().registry, row.id)
    assert new is not None
    return jsonify(_api_item(new, _timetables([new])))
