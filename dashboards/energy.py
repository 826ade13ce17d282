"""Electricity and projector maintenance, as pages, JSON and report files (issue 21), for facility and admin.

* `/health/energy?week=2025-W37|month=2025-09[&school=S][&building=B]` kWh per school (or per building and
  room of one school) and per day, drawn as bars, in yuan at the site's tariff; below it the rooms whose
  equipment was left on outside the timetable, worst first, paged on the server; `.csv` and `.xlsx` of
  the same report (every room, and every room's days in the XLSX).
* `/health/maintenance?within=4[&due=1][&school=S]` projector lamps and filters against their rated hours,
  soonest due first, paged and searchable; `.csv` and `.xlsx` of the whole list.

JSON: `GET /api/energy?week=|month=[&school=][&building=][&limit=&offset=&q=]` the report (central/energy.py
`EnergyReport.as_dict`): its totals whole, its rooms a page (100, `limit` up to 500; `X-Total-Count` and
`room_count` how many match); `GET /api/energy/left-on?...&limit=&offset=&q=` its rooms by kWh outside the
timetable (a list: `X-Total-Count`); `GET /api/maintenance?within=&due=&school=&limit=&offset=&q=`.

Everything reads the daily rollup and the ledger (a fixed number of statements however many rooms); the
maintenance list also reads each projector's hour counters from the point store (central/maintenance.py).
A school-scoped account sees its schools only. Strings shown to people are English here and marked in
the templates; the catalog holds their translations.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask, g, jsonify, render_template, request, url_for
from flask_babel import gettext

from campus.errors import PayloadError
from campus.i18n import lazy_gettext
from central import energy, lists, maintenance
from central.overview import places
from dashboards.auth import login_required, sight
from dashboards.context import central, web
from dashboards.exports import CSV, XLSX, Sheet, csv_file, download, xlsx_file
from dashboards.health import STAFF
from dashboards.i18n import format_time
from dashboards.timetables import _Refused, _week_id, school_arg, span

bp = Blueprint("energy", __name__)
LEFT_ON_PAGE = 20   # rooms per page of the page's "left on" list


def register(app: Flask) -> None:
    app.register_blueprint(bp)


def tariff() -> float:
    """Yuan per kWh: `campus web --tariff`, else $CAMPUS_TARIFF, else the default (a malformed variable
    in an app made without the command line: the default)."""
    configured = web().config.tariff
    if configured is not None:
        return configured
    try:
        return energy.tariff_from(None)
    except ValueError:
        return energy.DEFAULT_TARIFF


def _scope() -> tuple[lists.Scope, str | None]:
    """The caller's sight narrowed to the `school` asked for, and the `building` (a name); _Refused naming
    the parameter for a school that is not one, or not the caller's (404, as if there were none)."""
    school = school_arg("energy")
    try:
        building = lists.name_arg(request.args, "building")
    except PayloadError as exc:
        raise _Refused("building", str(exc)) from None
    return sight(g.user).narrowed(school=school), building


def _report(rooms: lists.Paging | None = None) -> tuple[energy.EnergyReport, str]:
    """The report the query parameters ask for; `rooms` as `energy.report` takes it (None: every room)."""
    first, last, label = span(request.args.get("week"), request.args.get("month"))
    scope, building = _scope()
    return energy.report(central().registry.db, first, last, scope, building, tariff(), rooms), label


def _query(label: str) -> dict[str, str]:
    key = "month" if request.args.get("month") else "week"
    return {key: label, **{k: request.args[k] for k in ("school", "building") if request.args.get(k)}}


# ---------------------------------------------------------------- JSON


def _named(exc: PayloadError) -> _Refused:
    """A paging parameter's PayloadError (central/lists.py `Paging.parse`: "query parameter 'limit' ...") as a
    refusal naming its field, as the report's own refusals do."""
    found = re.search(r"'([a-z_]+)'", str(exc))
    refused = _Refused(found.group(1) if found else "query", "")
    refused.message = str(exc)
    return refused


def _bad(exc: _Refused) -> Any:
    return jsonify({"error": exc.message, "field": exc.field}), exc.status


@bp.get("/api/energy")
@login_required(roles=STAFF)
def api_energy() -> Any:
    # The totals are the whole report's; the rooms a page of it (`limit`, `offset`, `q`), as every list.
    try:
        paging = lists.Paging.parse(request.args, default_limit=energy.ROOMS_PAGE, max_limit=energy.MAX_ROOMS_PAGE)
        report, _label = _report(paging)
    except _Refused as exc:
        return _bad(exc)
    except PayloadError as exc:
        return _bad(_named(exc))
    resp = jsonify(report.as_dict())
    resp.headers["X-Total-Count"] = str(report.room_count)
    return resp


@bp.get("/api/energy/left-on")
@login_required(roles=STAFF)
def api_left_on() -> Any:
    try:
        first, last, _label = span(request.args.get("week"), request.args.get("month"))
        scope, building = _scope()
        paging = lists.Paging.parse(request.args)
    except _Refused as exc:
        return _bad(exc)
    except PayloadError as exc:
        return _bad(_named(exc))
    page = energy.left_on(central().registry.db, first, last, paging, scope, building)
    rate = tariff()
    resp = jsonify([{"gateway": r.gateway, "school": r.school, "building": r.building, "room": r.room,
                     "kwh": r.kwh, "off_kwh": r.off_kwh, "off_yuan": round((r.off_kwh or 0) * rate, 2)}
                    for r in page.items])
    resp.headers["X-Total-Count"] = str(page.total)
    return resp


@bp.get("/api/maintenance")
@login_required(roles=STAFF)
def api_maintenance() -> Any:
    try:
        page, _within = _maintenance_page()
    except _Refused as exc:
        return _bad(exc)
    resp = jsonify([r.as_dict() for r in page.items])
    resp.headers["X-Total-Count"] = str(page.total)
    return resp


# ---------------------------------------------------------------- the energy page and files


@bp.get("/health/energy")
@login_required(roles=STAFF)
def energy_page() -> Any:
    try:
        report, label = _report(energy.NO_ROOMS)  # the page shows no room line but the left-on list's
        scope, building = _scope()
        paging = lists.Paging.parse(request.args, default_limit=LEFT_ON_PAGE)
    except _Refused as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    except PayloadError as exc:
        return render_template("error.html", status=400, message=str(exc)), 400
    left = energy.left_on(central().registry.db, report.first, report.last, paging, scope, building,
                          report.left_on_count)
    school = request.args.get("school") or ""
    by_month = bool(request.args.get("month"))
    key = "month" if by_month else "week"
    if by_month:
        before = (report.first.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
        after = (report.last + timedelta(days=1)).strftime("%Y-%m")
    else:
        before, after = _week_id(report.first - timedelta(days=7)), _week_id(report.first + timedelta(days=7))
    bars = ([(f"{b.building or '—'}", b.kwh, b.off_kwh) for b in report.buildings] if school else
            [(s.school, s.kwh, s.off_kwh) for s in report.schools])
    query = _query(label)
    return render_template("energy.html", tab="energy", report=report, label=label, key=key, school=school,
                           building=building or "", schools=places(central().registry, sight(g.user)).schools,
                           prev_url=url_for(".energy_page", **{**query, key: before}),
                           next_url=url_for(".energy_page", **{**query, key: after}),
                           csv_url=url_for(".energy_csv", **query), xlsx_url=url_for(".energy_xlsx", **query),
                           bars=bars, most=max([b[1] for b in bars] + [d.kwh for d in report.days] + [0.001]),
                           left=left.items, total=left.total, paging=paging, query=query, kwh=_kwh)


def _kwh(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def report_table(report: energy.EnergyReport) -> Iterator[tuple[Any, ...]]:
    """The report as spreadsheet rows, made as they are written: the district, each school, building and
    room (a level column)."""
    def line(level: str, e: energy.Energy, school: str = "", building: str = "", room: str = "",
             gateway: str = "") -> tuple[Any, ...]:
        return (level, school, building, room, gateway, round(e.kwh, 3),
                None if e.off_kwh is None else round(e.off_kwh, 3), report.yuan(e.kwh), report.yuan(e.off_kwh))

    # The level words are the same msgids as the usage export's (dashboards/timetables.py).
    yield (gettext("level"), gettext("school"), gettext("building"), gettext("room"), gettext("gateway"), "kWh",
           gettext("kWh outside timetable"), gettext("yuan"), gettext("yuan outside timetable"))
    yield line(gettext("district"), report)
    school, building, room = gettext("school"), gettext("building"), gettext("room")
    yield from (line(school, s, s.school) for s in report.schools)
    yield from (line(building, b, b.school, b.building) for b in report.buildings)
    yield from (line(room, r, r.school, r.building, r.room, r.gateway) for r in report.rooms)


def _filename(label: str, ext: str, what: str = "energy") -> str:
    school, building = request.args.get("school"), request.args.get("building")
    return f"{what}-{label}{'-' + school if school else ''}{'-' + building if building else ''}.{ext}"


@bp.get("/health/energy.csv")
@login_required(roles=STAFF)
def energy_csv() -> Any:
    try:
        report, label = _report()
    except _Refused as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    return download(csv_file(report_table(report)), _filename(label, "csv"), CSV)


@bp.get("/health/energy.xlsx")
@login_required(roles=STAFF)
def energy_xlsx() -> Any:
    try:
        report, label = _report()
        scope, building = _scope()
    except _Refused as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    days = [[gettext("date"), "kWh", gettext("kWh outside timetable"), gettext("yuan")]]
    days += [[d.day, round(d.kwh, 3), None if d.off_kwh is None else round(d.off_kwh, 3), report.yuan(d.kwh)]
             for d in report.days]

    def room_days() -> Iterator[tuple[Any, ...]]:  # read and written as they come: 70,000 rows a district's week
        yield (gettext("date"), gettext("school"), gettext("building"), gettext("room"), gettext("gateway"), "kWh",
               gettext("kWh outside timetable"))
        for d, s, b, r, gw, k, o in energy.iter_room_days(central().registry.db, report.first, report.last,
                                                          scope, building):
            yield d, s, b, r, gw, round(k, 3), None if o is None else round(o, 3)
    note = gettext("%(first)s to %(last)s; %(tariff)s yuan per kWh; outside the timetable: before the first class "
                   "period, after the last, and days without classes; made %(made)s", first=report.first,
                   last=report.last, tariff=format(report.tariff, "g"), made=format_time(time.time()))
    return download(xlsx_file([Sheet(gettext("energy"), report_table(report), note=note),
                               Sheet(gettext("days"), days), Sheet(gettext("room days"), room_days())]),
                    _filename(label, "xlsx"), XLSX)


# ---------------------------------------------------------------- the maintenance list and files


def _maintenance_page(default_limit: int = lists.DEFAULT_LIMIT,
                      whole: bool = False) -> tuple[lists.Page[maintenance.PartDue], float]:
    raw = request.args.get("within") or str(maintenance.DEFAULT_WITHIN_WEEKS)
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= maintenance.MAX_WITHIN_WEEKS:
        raise _Refused("within", lazy_gettext("must be a whole number of weeks from 1 to %(most)s, got %(value)s",
                                              most=maintenance.MAX_WITHIN_WEEKS, value=repr(raw[:20])))
    due = request.args.get("due") or "0"
    if due not in ("0", "1"):
        raise _Refused("due", lazy_gettext("must be 1 or 0, got %(value)s", value=repr(due[:20])))
    scope, _building = _scope()
    try:
        paging = lists.Paging.parse(request.args, default_limit=default_limit)
    except PayloadError as exc:
        raise _named(exc) from None
    if whole:
        paging = lists.Paging(limit=maintenance.MAX_ROWS, offset=0, q=paging.q)
    c = central()
    return maintenance.page(c.registry.db, c.store, paging, scope, int(raw), due == "1"), int(raw)


@bp.get("/health/maintenance")
@login_required(roles=STAFF)
def maintenance_page() -> Any:
    try:
        page, within = _maintenance_page(default_limit=50)
    except _Refused as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    paging = lists.Paging.parse(request.args, default_limit=50)
    school = request.args.get("school") or ""
    query = {"within": str(within), **{k: request.args[k] for k in ("school", "due", "q") if request.args.get(k)}}
    return render_template("maintenance.html", tab="maintenance", rows=page.items, total=page.total,
                           paging=paging, within=within, due=request.args.get("due") == "1", school=school,
                           rate_weeks=maintenance.RATE_WEEKS,
                           schools=places(central().registry, sight(g.user)).schools,
                           csv_url=url_for(".maintenance_csv", **query), xlsx_url=url_for(".maintenance_xlsx", **query))


def maintenance_table(rows: list[maintenance.PartDue]) -> Iterator[tuple[Any, ...]]:
    """The list as spreadsheet rows, made as they are written."""
    yield (gettext("school"), gettext("building"), gettext("room"), gettext("gateway"), gettext("device"),
           gettext("profile"), gettext("part"), gettext("hours"), gettext("rated hours"), gettext("hours per week"),
           gettext("weeks left"), gettext("due"))
    yes, no, lamp, filter_ = gettext("yes"), gettext("no"), gettext("lamp"), gettext("filter")
    for r in rows:
        yield (r.school, r.building, r.room, r.gateway, r.device, r.profile, lamp if r.part == "lamp" else filter_,
               r.hours, r.rated, r.per_week, r.weeks_left, yes if r.due else no)


@bp.get("/health/maintenance.csv")
@login_required(roles=STAFF)
def maintenance_csv() -> Any:
    try:
        page, within = _maintenance_page(whole=True)
    except _Refused as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    return download(csv_file(maintenance_table(page.items)), _filename(f"{within}w", "csv", "maintenance"), CSV)


@bp.get("/health/maintenance.xlsx")
@login_required(roles=STAFF)
def maintenance_xlsx() -> Any:
    try:
        page, within = _maintenance_page(whole=True)
    except _Refused as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    note = gettext("due: within %(within)s weeks at the rate of the last %(weeks)s weeks; made %(made)s",
                   within=within, weeks=maintenance.RATE_WEEKS, made=format_time(time.time()))
    return download(xlsx_file([Sheet(gettext("maintenance"), maintenance_table(page.items), note=note)]),
                    _filename(f"{within}w", "xlsx", "maintenance"), XLSX)

