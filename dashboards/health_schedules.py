"""The schedule pages of the equipment-health area: timed actions and the results of each run.

`/health/schedules` lists the schedules (e.g. every display and projector of
a building off at 22:00 on school days) with their next and last run,
creates one; `/health/schedules/<id>` edits one, enables or disables it,
and shows each run's per-device results (a pending command looked up again,
it may have finished since); admins may run one now. Routes of the health
blueprint (roles `facility` and `admin`), so their endpoints are
`health.schedules`, `health.schedule`, ...; the scheduler thread that runs
them on time is started by `dashboards.health.register`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import abort, flash, g, make_response, redirect, render_template, request, url_for
from flask_babel import gettext

from campus.i18n import LazyText, ReportedText, lazy_gettext
from central import overview
from central import schedules as sched
from central.registry import Schedule
from dashboards.auth import audit, login_required, not_found, school_scoped, sight
from dashboards.context import central
from dashboards.health import STAFF, bp, db_id
from dashboards.i18n import error_text, translate
from dashboards.security import safe_target


def _schedule_page(form_values: dict[str, Any] | None = None, error: str | LazyText = "", status: int = 200) -> Any:
    reg = central().registry
    scope = sight(g.user)
    places = overview.places(reg, scope)
    schools, buildings, names = places.schools, places.buildings, places.building_names()
    now_local = datetime.now().astimezone()
    rows = sched.all_schedules(reg, scope.schools)
    last_runs: dict[int, dict[str, Any]] = {}
    for run_ in sched.runs(reg, limit=500):
        last_runs.setdefault(run_["schedule_id"], run_)
    items = []
    for row in rows:
        item = sched.schedule_dict(row, names)
        nxt = sched.next_run(row, now_local)
        item["next_run"] = nxt.timestamp() if nxt else None
        last = last_runs.get(row.id)
        item["last_summary"] = _summary(_live(last["results"])) if last else ""
        items.append(item)
    return render_template("health_schedules.html", schedules=items, schools=schools, buildings=buildings,
                           form=form_values or {"days": sched.SCHOOL_DAYS, "at": "22:00", "action": "power_off",
                                                "kinds": "display,projector", "enabled": True},
                           error=error, days=sched.DAYS, actions=sched.SCHEDULE_ACTIONS, kinds=sched.SCHEDULE_KINDS,
                           tab="schedules"), status


def _form_values() -> dict[str, Any]:
    return {"name": request.form.get("name", ""), "at": request.form.get("at", ""),
            "days": ",".join(request.form.getlist("days")), "action": request.form.get("action", ""),
            "kinds": ",".join(request.form.getlist("kinds")), "school_id": request.form.get("school_id", ""),
            "building_id": request.form.get("building_id", ""), "enabled": request.form.get("enabled") == "on"}


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
    nxt = sched.next_run(row, datetime.now().astimezone())
    item["next_run"] = nxt.timestamp() if nxt else None
    history = [{**r, "results": _live(r["results"])} for r in sched.runs(reg, row.id, limit=30)]
    for r in history:
        r["summary"] = _summary(r["results"])
    form = form_values or {**item, "school_id": item["school_id"] or "", "building_id": item["building_id"] or ""}
    return render_template("health_schedule.html", schedule=item, runs=history, form=form, error=error,
                           schools=schools, buildings=buildings, days=sched.DAYS, actions=sched.SCHEDULE_ACTIONS,
                           kinds=sched.SCHEDULE_KINDS, tab="schedules"), status


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
