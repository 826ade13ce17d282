"""School timetables and the usage rate (应用率), as pages, JSON and report files.

Pages (facility and admin read, admin changes; in the equipment-health area):

* `/health/timetables` every school and whether it has a timetable;
* `/health/timetables/<school>` its periods per weekday, terms, holidays and make-up working days;
  an admin edits it as CSV text (prefilled with the current timetable) or uploads a CSV file (UTF-8
  or GB18030, Chinese or English headers: central/timetable_csv.py), sets its time zone and the default
  idle-off minutes of its rooms (central/edge_rules.py; a room's own setting wins). The
  whole file is checked first; if any line is wrong, nothing changes and every problem is listed
  with its line and column;
* `/health/usage-rate?week=2025-W37|month=2025-09[&school=S]` the usage rate per school (or per room
  of one school), drawn as bars, with the days below; `.csv` and `.xlsx` of the same report.

JSON (CONTRACT.md's school sub-paths; the `/api/schools` list is the district overview's):

* `GET|PUT /api/schools/<school>/timetable` the whole timetable (`central.timetables.Timetable.as_dict`);
  a PUT replaces it, or answers 400 `{error, field}` naming the first bad field and changes nothing;
* `GET /api/schools/<school>/timetable/periods?start=D&end=D` the class periods between two dates;
* `GET|PUT /api/schools/<school>/rules` the rooms' default idle-off minutes (PUT: admin; audited, pushed to
  the gateways of the rooms without their own);
* `GET /api/usage?week=|month=[&school=]` the usage-rate report.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

from flask import (
    Blueprint,
    Flask,
    abort,
    g,
    jsonify,
    make_response,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext

from campus import names
from campus.errors import ConfigError, PayloadError
from campus.i18n import LazyText, lazy_gettext, message_of
from central import edge_rules, lists, timetable_csv, usage
from central import timetables as tts
from central.overview import places
from dashboards.auth import audit, login_required, may_see_school, not_found, sight
from dashboards.context import central
from dashboards.exports import CSV, XLSX, Sheet, csv_file, download, xlsx_file
from dashboards.health import STAFF, parse_week
from dashboards.i18n import error_text, format_time, request_language, site_zone
from dashboards.podium import set_and_push_idle_off
from dashboards.strict_json import json_object

bp = Blueprint("timetables", __name__)
ADMIN = ("admin",)


def register(app: Flask) -> None:
    app.register_blueprint(bp)


def _school(school: str) -> str:
    """The school of the URL, or a 404 naming it (an id no school can have included)."""
    try:
        names.identifier(school, "school")
    except names.BadName:
        abort(404, lazy_gettext("no school %(school)s: not a valid id", school=repr(school[:64])))
    if not may_see_school(g.user, school):  # another school of a school-scoped account: as if there were none
        abort(make_response(not_found("school")))
    if not tts.school_exists(central().registry, school):
        abort(404, lazy_gettext("no school %(school)s", school=repr(school)))
    return school


def _field_error(field: str, message: str | LazyText) -> LazyText:
    """`field: message`, translatable as a whole (the field name stays as the API spells it)."""
    return lazy_gettext("%(field)s: %(reason)s", field=field, reason=message)


def _bad(message: str | LazyText, field: str, status: int = 400) -> Any:
    return jsonify({"error": message, "field": field}), status


# ---------------------------------------------------------------- JSON


@bp.get("/api/schools/<school>/timetable")
@login_required(roles=STAFF)
def api_timetable(school: str) -> Any:
    tt = tts.load(central().registry, _school(school))
    return jsonify((tt or tts.Timetable(school, site_zone().key)).as_dict())  # without one: the site's zone


@bp.put("/api/schools/<school>/timetable")
@login_required(roles=ADMIN)
def api_put_timetable(school: str) -> Any:
    _school(school)
    body = json_object()
    try:
        tt = tts.save(central().registry, tts.from_document(school, body, site_zone().key), g.user["user"])
    except tts.TimetableError as exc:
        audit("timetable.save", f"{school}: refused, {exc.path}: {exc.message}", ok=False)
        return _bad(_field_error(exc.path, exc.message), exc.path)
    audit("timetable.save", f"{school}: {len(tt.periods)} periods, {len(tt.ranges)} dates")
    return jsonify(tt.as_dict())


@bp.get("/api/schools/<school>/rules")
@login_required(roles=STAFF)
def api_school_rules(school: str) -> Any:
    return jsonify(edge_rules.school_settings(central().registry, _school(school)))


@bp.put("/api/schools/<school>/rules")
@login_required(roles=ADMIN)
def api_set_school_rules(school: str) -> Any:
    """Body {idle_off_minutes: 1..480 or null}: the default of the school's rooms without their own, pushed."""
    _school(school)
    body = json_object()
    unknown = sorted(set(body) - {"idle_off_minutes"})
    if unknown:
        return _bad(lazy_gettext("unknown field %(field)s (the rules have idle_off_minutes)",
                                 field=repr(unknown[0][:40])), unknown[0][:40])
    if "idle_off_minutes" not in body:
        return _bad(lazy_gettext("idle_off_minutes: missing"), "idle_off_minutes")
    try:
        minutes, push = _set_school_idle_off(school, body["idle_off_minutes"])
    except ConfigError as exc:
        return _bad(error_text(exc), "idle_off_minutes")
    return jsonify({"idle_off_minutes": minutes, **push})


def _set_school_idle_off(school: str, value: Any) -> tuple[int | None, dict[str, Any]]:
    """Set, audit and push the school's default idle-off (ConfigError, audited, if the value is bad)."""
    return set_and_push_idle_off(
        "rules.school_idle_off", school, value,
        lambda: edge_rules.set_school_idle_off(central().registry, school, value),
        lambda minutes, changed: f"default idle-off {minutes if minutes is not None else 'none'}"
                                 f"{' (unchanged)' if not changed else f', {len(changed)} gateways'}")


@bp.get("/api/schools/<school>/timetable/periods")
@login_required(roles=STAFF)
def api_periods(school: str) -> Any:
    tt = tts.load(central().registry, _school(school)) or tts.Timetable(school, site_zone().key)
    try:
        today = datetime.now(tt.zone).date()
        first = tts.parse_date(request.args.get("start") or today.isoformat(), "", "start")
        last = tts.parse_date(request.args.get("end") or first.isoformat(), "", "end")
        slots = tts.class_periods(tt, first, last)
    except tts.TimetableError as exc:
        return _bad(_field_error(exc.field, exc.message), exc.field)
    except ValueError as exc:
        return _bad(_field_error("end", message_of(exc)), "end")
    return jsonify({"school": school, "timezone": tt.timezone, "start": first.isoformat(), "end": last.isoformat(),
                    "periods": [{"date": s.day.isoformat(), **s.period.as_dict(), "start_ts": s.start,
                                 "end_ts": s.end} for s in slots]})


@bp.get("/api/usage")
@login_required(roles=STAFF)
def api_usage() -> Any:
    """The report; its `rooms` are one page of the rooms (`limit`, default usage.PAGE_ROOMS, at most MAX_PAGE_ROOMS;
    `offset`; `q` matching gateway, school, building or room), in the report's order, the schools, days and
    district whole. `X-Total-Count`: the rooms matching `q`, all pages. Every room at once is the CSV and
    XLSX (10,000 rooms were 1.5 MB and 0.8 s of CPU here: docs/benchmarks.md 11h)."""
    try:
        page = lists.Paging.parse(request.args, default_limit=usage.PAGE_ROOMS, max_limit=usage.MAX_PAGE_ROOMS)
        report = _report(page)
    except _Refused as exc:
        return _bad(exc.message, exc.field, exc.status)
    except PayloadError as exc:  # "query parameter 'limit' ...": the parameter is the field
        found = re.search(r"'([a-z_]+)'", str(exc))
        return _bad(message_of(exc), found.group(1) if found else "query")
    resp = jsonify(report.as_dict())
    resp.headers["X-Total-Count"] = str(report.total_rooms)
    return resp


# ---------------------------------------------------------------- the usage-rate report


class _Refused(ValueError):
    def __init__(self, field: str, message: str | LazyText, status: int = 400) -> None:
        super().__init__(message)
        self.field, self.message, self.status = field, _field_error(field, message), status


def span(week: str | None, month: str | None, today: date | None = None) -> tuple[date, date, str]:
    """The report's first and last day and its label: an ISO week (default: this one) or a month."""
    if month:
        try:
            first = datetime.strptime(month.strip(), "%Y-%m").date()
        except ValueError:
            raise _Refused("month", lazy_gettext("must look like 2025-09, got %(value)s",
                                                 value=repr(month[:20]))) from None
        if not tts.FIRST_DATE <= first <= tts.LAST_DATE:
            raise _Refused("month", lazy_gettext("%(month)s is not a school month", month=month))
        return *usage.month_span(first), first.strftime("%Y-%m")
    try:
        monday = parse_week(week, today)
    except ValueError as exc:
        raise _Refused("week", message_of(exc)) from None
    if not tts.FIRST_DATE <= monday <= tts.LAST_DATE:
        raise _Refused("week", lazy_gettext("%(week)s is not a school week", week=week))
    iso = monday.isocalendar()
    return monday, monday + timedelta(days=6), f"{iso[0]}-W{iso[1]:02d}"


def school_arg(report: str) -> str | None:
    """A report's `school` query parameter: None (every school in sight), or a school that exists and the caller
    may see; _Refused naming `school` if not (404 outside the caller's schools, as if there were none, audited
    with the `report`'s name). The usage and energy reports both ask it."""
    school = request.args.get("school") or None
    if school is not None:
        try:
            names.identifier(school, "school")
        except names.BadName as exc:
            raise _Refused("school", exc.reason) from None
        if not may_see_school(g.user, school):
            audit("refused", f"{report} of {school}: outside the account's schools", ok=False)
            raise _Refused("school", lazy_gettext("no such %(what)s in your schools", what=LazyText("school")), 404)
        if not tts.school_exists(central().registry, school):
            raise _Refused("school", lazy_gettext("no school %(school)s", school=repr(school)))
    return school


def _report(page: lists.Paging | None = None) -> usage.UsageReport:
    """The request's report, its rooms the `page` (None: every room: the CSV and XLSX)."""
    first, last, _label = span(request.args.get("week"), request.args.get("month"))
    school = school_arg("usage report")
    c = central()
    return usage.usage_rate(c.registry, c.ledger, first, last, school, schools_in=sight(g.user).schools, page=page,
                            site_zone=site_zone())


def _pct(rate: float | None) -> str:
    return "" if rate is None else f"{100 * rate:.1f}%"


def report_table(report: usage.UsageReport) -> Iterator[tuple[Any, ...]]:
    """The report as rows for a spreadsheet, made as they are written: the district, each school, each room
    (a level column); the header and the levels in the request's language."""
    yield (gettext("level"), gettext("school"), gettext("building"), gettext("room"), gettext("gateway"),
           gettext("devices"), gettext("class periods"), gettext("periods used"), gettext("usage rate"))
    yield gettext("district"), "", "", "", "", "", report.periods, report.used, report.rate
    level_school, level_room = gettext("school"), gettext("room")
    yield from ((level_school, s.school, "", "", "", "", s.periods, s.used, s.rate) for s in report.schools)
    yield from ((level_room, r.school, r.building, r.room, r.gateway, " ".join(r.devices), r.periods, r.used, r.rate)
                for r in report.rooms)


def _filename(ext: str) -> str:
    _first, _last, label = span(request.args.get("week"), request.args.get("month"))
    school = request.args.get("school")
    return f"usage-rate-{label}{'-' + school if school else ''}.{ext}"


@bp.get("/health/usage-rate")
@login_required(roles=STAFF)
def usage_rate_page() -> Any:
    school = request.args.get("school") or ""
    try:
        first, last, label = span(request.args.get("week"), request.args.get("month"))
        # The district's page draws its schools only; a school's lists a page of its rooms.
        page = (lists.Paging.parse(request.args, default_limit=usage.PAGE_ROOMS, max_limit=usage.MAX_PAGE_ROOMS) if school
                else lists.Paging(limit=0))
        report = _report(page)
    except _Refused as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    except PayloadError as exc:
        return render_template("error.html", status=400, message=message_of(exc)), 400
    by_month = bool(request.args.get("month"))
    if by_month:
        before = (first - timedelta(days=1)).strftime("%Y-%m")
        after = (last + timedelta(days=1)).strftime("%Y-%m")
    else:
        before, after = (_week_id(first - timedelta(days=7)), _week_id(first + timedelta(days=7)))
    key = "month" if by_month else "week"
    bars = ([(r.room or r.gateway, r.rate, r.periods, r.used) for r in report.rooms if r.devices] if school else
            [(s.school, s.rate, s.periods, s.used) for s in report.schools])
    query = {key: label, **({"school": school} if school else {})}
    rooms_prev = (url_for(".usage_rate_page", **query, offset=max(0, page.offset - page.limit), limit=page.limit)
                  if school and page.offset else None)
    rooms_next = (url_for(".usage_rate_page", **query, offset=page.offset + page.limit, limit=page.limit)
                  if school and page.offset + page.limit < report.total_rooms else None)
    return render_template("timetable_usage.html", tab="usage-rate", report=report, label=label, key=key,
                           first=first, last=last, school=school,
                           schools=places(central().registry, sight(g.user)).schools,
                           prev_url=url_for(".usage_rate_page", **{**query, key: before}),
                           next_url=url_for(".usage_rate_page", **{**query, key: after}),
                           csv_url=url_for(".usage_rate_csv", **query), xlsx_url=url_for(".usage_rate_xlsx", **query),
                           bars=bars, pct=_pct, used_min=usage.USED_MIN_S // 60, rooms_prev=rooms_prev,
                           rooms_next=rooms_next)


def _week_id(d: date) -> str:
    iso = d.isocalendar()
    return f"{iso[0]}-W{iso[1]:02d}"


@bp.get("/health/usage-rate.csv")
@login_required(roles=STAFF)
def usage_rate_csv() -> Any:
    try:
        report = _report()
    except _Refused as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    return download(csv_file(report_table(report), cell=lambda v: f"{v:.4f}" if isinstance(v, float) else
                             ("" if v is None else v)), _filename("csv"), CSV)


@bp.get("/health/usage-rate.xlsx")
@login_required(roles=STAFF)
def usage_rate_xlsx() -> Any:
    try:
        report = _report()
    except _Refused as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    note = gettext("%(first)s to %(last)s; a class period counts as used when a display or projector was on "
                   "for %(minutes)s minutes of it; made %(made)s", first=str(report.first),
                   last=str(report.last), minutes=usage.USED_MIN_S // 60, made=format_time(time.time()))
    days = [[gettext("date"), gettext("class periods"), gettext("periods used"), gettext("usage rate")]]
    days += [[d.day, d.periods, d.used, d.rate] for d in report.days]
    return download(xlsx_file([Sheet(gettext("usage rate"), report_table(report), formats={8: "0.0%"}, note=note),
                               Sheet(gettext("days"), days)]), _filename("xlsx"), XLSX)


# ---------------------------------------------------------------- timetable pages


@bp.get("/health/timetables")
@login_required(roles=STAFF)
def timetables_page() -> Any:
    reg = central().registry
    scope = sight(g.user)
    saved = tts.load_all(reg, scope.schools)
    rows = [{"school": s, "timetable": saved.get(s)} for s in places(reg, scope).schools]
    return render_template("timetables.html", tab="timetables", rows=rows)


@bp.get("/health/timetables/<school>")
@login_required(roles=STAFF)
def timetable_page(school: str) -> Any:
    return _timetable_page(_school(school))


@bp.post("/health/timetables/<school>")
@login_required(roles=ADMIN)
def timetable_save(school: str) -> Any:
    """The time zone form, the rooms' idle-off default, or a CSV file or text replacing the whole timetable (all
    or nothing)."""
    reg = central().registry
    _school(school)
    if "idle_off_minutes" in request.form:
        try:
            _, push = _set_school_idle_off(school, request.form["idle_off_minutes"])
        except ConfigError as exc:
            return _timetable_page(school, error=error_text(exc))
        return _timetable_page(school, push=push)
    if "timezone" in request.form:
        try:
            zone = tts.check_timezone(request.form["timezone"])
        except tts.TimetableError as exc:
            return _timetable_page(school, error=_field_error(exc.path, exc.message))
        current = tts.load(reg, school) or tts.Timetable(school)
        tts.save(reg, tts.Timetable(school, zone, current.periods, current.ranges), g.user["user"])
        audit("timetable.timezone", f"{school}: {zone}")
        return _timetable_page(school)
    upload = request.files.get("file")
    data = upload.read() if upload else b""
    text = None
    if not data:
        text = request.form.get("text", "")
        data = text.encode()
    report = timetable_csv.import_csv(reg, school, data, g.user["user"], site_zone().key)
    if report.ok:
        audit("timetable.import", f"{school}: {report.rows} lines")
        return _timetable_page(school, report=report)
    audit("timetable.import", f"{school}: refused, {len(report.errors)} errors, first: {report.errors[0]}", ok=False)
    return _timetable_page(school, report=report, text=text)


def _timetable_page(school: str, report: timetable_csv.TimetableImport | None = None,
                    error: str | LazyText | None = None,
                    text: str | None = None, push: dict[str, Any] | None = None) -> Any:
    tt = tts.load(central().registry, school)
    grid: dict[int, dict[int, tts.Period]] = {}
    for p in (tt.periods if tt else ()):
        grid.setdefault(p.number, {})[p.weekday] = p
    if text is None:
        text = timetable_csv.to_csv(tt, chinese=_chinese()) if tt else timetable_csv.EXAMPLE_CSV
    status = 400 if error or (report is not None and not report.ok) else 200
    return render_template("timetable.html", tab="timetables", school=school, tt=tt, grid=sorted(grid.items()),
                           weekdays=tts.WEEKDAY_NAMES, report=report, error=error, text=text, push=push,
                           rules=edge_rules.school_settings(central().registry, school),
                           idle_range=edge_rules.IDLE_OFF_RANGE), status


@bp.get("/health/timetables/<school>/timetable.csv")
@login_required(roles=STAFF)
def timetable_csv_file(school: str) -> Any:
    tt = tts.load(central().registry, _school(school))
    return download("\ufeff" + timetable_csv.to_csv(tt, chinese=_chinese()), f"timetable-{school}.csv", CSV)


def _chinese() -> bool:
    """A timetable file in the request's language (its header and type words); the import reads either."""
    return request_language() == "zh-CN"


@bp.get("/health/timetables/example.csv")
@login_required(roles=STAFF)
def timetable_example() -> Any:
    return download("\ufeff" + timetable_csv.EXAMPLE_CSV, "timetable-example.csv", CSV)
