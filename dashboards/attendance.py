"""Attendance (考勤) pages and JSON: the register of a room's day, the school's weekly rates, the roster.

Who sees what (docs/attendance.md): names are personal data of minors, so only those who keep a class's
register see them: a teacher for their own rooms, and the admin and facility accounts of the school (those
limited to some schools). A district-wide account (not limited to any school: the district's, or a
city's staff) sees counts only, on every page, export and the API. Every view and export that shows
names is in the audit trail (`attendance.view`, `attendance.export`), and so is each correction.

Pages: `/attendance` (the rooms and schools in sight), `/attendance/<school>/rooms/<room>?date=&class=`
(the register: counts and, for those who may, names; a teacher corrects an entry there), its
`register.csv` and `register.xlsx`; `/attendance/<school>` (the rate per class per week, with its CSV and
XLSX, and the school's grace and retention); `/attendance/<school>/roster` (the roster and its CSV import);
`/attendance/panel/<gateway>` (the current period's register, the fragment the teacher's panel reloads
when its live stream says a swipe came). JSON: `GET /api/attendance?gateway=G&date=D[&class=C]` (or
`school=S&class=C`), paged; `POST /api/schools/<school>/roster` (a CSV body, all or nothing).
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from typing import Any

from flask import Blueprint, Flask, abort, g, jsonify, make_response, render_template, request
from flask_babel import gettext

from campus import names
from campus.errors import ConfigError, PayloadError
from campus.i18n import N_, LazyText, lazy_gettext
from central import attendance as att
from central import lists
from dashboards import auth
from dashboards.auth import STAFF, audit, login_required, may_see, not_found, refuse, school_scoped, sight
from dashboards.context import central
from dashboards.exports import CSV, XLSX, Sheet, csv_text, download, xlsx_bytes
from dashboards.i18n import either, error_text, format_clock, page_zone, site_zone, translate

bp = Blueprint("attendance", __name__)
PANEL_AUDIT_KEYS = 10_000
_PANEL_AUDITED: set[tuple[str, str, date, int]] = set()  # (account, gateway, day, period) whose panel view is audited
MAX_SUMMARY_WEEKS = 26


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    auth.add_nav(app, N_("Attendance"), "attendance.index", ("admin", "facility", "teacher"))


class _Refused(Exception):
    def __init__(self, status: int, message: str | LazyText, field: str | None = None) -> None:
        super().__init__(str(message))
        self.status, self.message, self.field = status, message, field


def _answer(exc: _Refused) -> Any:
    if request.path.startswith("/api/"):
        return jsonify({"error": exc.message, **({"field": exc.field} if exc.field else {})}), exc.status
    return render_template("error.html", status=exc.status, message=exc.message), exc.status


def may_see_names(user: dict[str, Any]) -> bool:
    """Whether `user` may see who attended (of what they may see at all): a teacher (their rooms) and a
    school's own admin and facility accounts; never a district-wide account (counts only)."""
    return user["role"] == "teacher" or school_scoped(user)


def _school(school: str, staff_only: bool = False) -> str:
    """The school of the URL if it exists and the caller may see it; else the refusal."""
    user = g.user
    try:
        names.identifier(school, "school")
    except names.BadName as exc:
        raise _Refused(404, exc.reason) from None
    if school_scoped(user) and not sight(user).allows_school(school):
        abort(make_response(not_found("school")))
    if staff_only and user["role"] not in STAFF:
        abort(make_response(refuse(403, lazy_gettext("this needs the role %(roles)s", roles=either("role", STAFF)))))
    from central import timetables

    if not timetables.school_exists(central().registry, school):
        raise _Refused(404, lazy_gettext("no school %(school)s", school=repr(school)))
    return school


def _room(school: str, room: str) -> str:
    """The room of the URL, if the caller may see it: a teacher only their own rooms."""
    _school(school)
    if len(room) > names.ROOM_MAX or "\x00" in room:
        raise _Refused(404, lazy_gettext("no room %(room)s", room=repr(room[:64])))
    from central import podium

    rid = podium.find_room(central().registry, school, room)
    if rid is None:
        raise _Refused(404, lazy_gettext("no room %(room)s", room=repr(room[:64])))
    if g.user["role"] == "teacher" and rid not in g.user.get("room_ids", []):
        abort(make_response(refuse(403, lazy_gettext("not one of your rooms"))))
    return room


def _day(value: str | None) -> date:
    if not value:
        return datetime.now(page_zone()).date()
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise _Refused(400, lazy_gettext("date must look like 2026-12-04, got %(value)s", value=repr(value[:20])),
                       "date") from None


def _class_arg() -> str | None:
    value = request.args.get("class") or None
    if value is not None and (len(value) > att.CLASS_MAX or not value.isprintable()):
        raise _Refused(400, lazy_gettext("class: not a class name"), "class")
    return value


def _register(school: str, room: str, day: date, klass: str | None) -> list[att.Entry]:
    return att.register(central().registry, school, room, day, klass=klass, site_zone=site_zone())


def _status_name(status: str) -> str:
    return gettext(att.STATUS_NAMES.get(status, status))


# ---------------------------------------------------------------- JSON


@bp.get("/api/attendance")
@login_required
def api_attendance() -> Any:
    """The register entries of a room's day (`gateway`), or of a class's day (`school` and `class`): named for
    those who may see names (audited), else counts per period and class."""
    try:
        paging = lists.Paging.parse(request.args)
        day, klass = _day(request.args.get("date")), _class_arg()
        gateway = request.args.get("gateway")
        if gateway:
            try:
                names.identifier(gateway, "gateway")
            except names.BadName as exc:
                raise _Refused(400, exc.reason, "gateway") from None
            if not may_see(g.user, gateway):
                return auth.refuse_gateway(g.user, lazy_gettext("not one of your rooms"))
            place = att.room_of_gateway(central().registry, gateway)
            if place is None:
                raise _Refused(404, lazy_gettext("gateway %(gateway)s is in no registered room", gateway=gateway),
                               "gateway")
            school, room = place
        else:
            school = request.args.get("school") or ""
            if not school or not klass:
                raise _Refused(400, lazy_gettext("give gateway, or school and class"), "gateway")
            _school(school)
            found = att.class_room(central().registry, school, klass)
            if found is None:
                raise _Refused(404, lazy_gettext("class %(class)s has no room", **{"class": klass}), "class")
            room = _room(school, found)
        entries = _register(school, room, day, klass)
    except _Refused as exc:
        return _answer(exc)
    except PayloadError as exc:
        return jsonify({"error": error_text(exc)}), 400
    if may_see_names(g.user):
        items = [e.as_dict() for e in entries]
        audit("attendance.view", f"{school}/{room} {day}{' ' + klass if klass else ''}: {len(items)} entries (API)")
    else:
        items = att.counts(entries)
    page = items[paging.offset:paging.offset + paging.limit]
    resp = jsonify(page)
    resp.headers["X-Total-Count"] = str(len(items))
    return resp


@bp.post("/api/schools/<school>/roster")
@login_required(roles=("admin",))
def api_roster_import(school: str) -> Any:
    """A CSV body (`name,class,role,card,qr,room` or 姓名,班级,角色,一卡通,二维码,教室): the school's roster
    replaced, all or nothing."""
    try:
        _school(school, staff_only=True)
    except _Refused as exc:
        return _answer(exc)
    report = _import(school, request.get_data())
    if not report.ok:
        first = report.errors[0]
        return jsonify({"error": f"line {first.line}: {first.column + ': ' if first.column else ''}"
                                 f"{translate(first.message)}",
                        "field": first.column or None,
                        "errors": [{"line": e.line, "column": e.column, "message": translate(e.message)}
                                   for e in report.errors]}), 400
    return jsonify({"added": report.added, "changed": report.changed, "removed": report.removed,
                    "classes": report.classes})


def _import(school: str, data: bytes) -> att.RosterImport:
    report = att.import_roster(central().registry, school, data, g.user["user"])
    if report.ok:
        audit("attendance.roster", f"{school}: {report.added} added, {report.changed} changed, "
                                   f"{report.removed} removed")
    else:  # the problems name lines and columns, never a number or a code
        audit("attendance.roster", f"{school}: refused, {len(report.errors)} problems, first: {report.errors[0]}",
              ok=False)
    return report


# ---------------------------------------------------------------- pages


@bp.get("/attendance")
@login_required
def index() -> Any:
    from central import podium

    user = g.user
    if user["role"] == "teacher":
        rooms = podium.rooms(central().registry, room_ids=list(user.get("room_ids", [])))
    else:
        rooms = podium.rooms(central().registry, schools=sight(user).schools)
    schools = sorted({r["school"] for r in rooms}) if user["role"] in STAFF else []
    return render_template("attendance_index.html", rooms=rooms, schools=schools)


@bp.get("/attendance/<school>/rooms/<room>")
@login_required
def register_page(school: str, room: str) -> Any:
    try:
        _room(school, room)
        day, klass = _day(request.args.get("date")), _class_arg()
        entries = _register(school, room, day, klass)
    except _Refused as exc:
        return _answer(exc)
    return _register_page(school, room, day, klass, entries)


def _register_page(school: str, room: str, day: date, klass: str | None, entries: list[att.Entry],
                   error: str | None = None) -> Any:
    named = may_see_names(g.user)
    if named:
        audit("attendance.view", f"{school}/{room} {day}{' ' + klass if klass else ''}: {len(entries)} entries")
    classes = sorted(c for c, r in att.class_rooms(central().registry, school).items() if r == room)
    may_correct = named and g.user["role"] in ("admin", "teacher")
    return render_template("attendance_register.html", school=school, room=room, day=day, klass=klass,
                           classes=classes, counts=att.counts(entries), entries=entries if named else None,
                           status_name=_status_name, may_correct=may_correct, correctable=att.CORRECTABLE,
                           error=error, prev_day=day - timedelta(days=1), next_day=day + timedelta(days=1),
                           statuses=att.STATUSES), 400 if error else 200


@bp.post("/attendance/<school>/rooms/<room>/correct")
@login_required(roles=("admin", "teacher"))
def correct(school: str, room: str) -> Any:
    try:
        _room(school, room)
        day = _day(request.form.get("date"))
        if not may_see_names(g.user):
            abort(make_response(refuse(403, lazy_gettext("a district account sees counts only"))))
        try:
            period = int(request.form.get("period", ""))
        except ValueError:
            raise _Refused(400, lazy_gettext("period: not a number"), "period") from None
        person, klass, status = (request.form.get(k, "")[:att.NAME_MAX] for k in ("person", "class", "status"))
        for name, value in (("person", person), ("class", klass)):
            if not value.isprintable():  # no name holds a control character (and PostgreSQL refuses a NUL)
                raise _Refused(400, lazy_gettext("%(field)s: not a name", field=name), name)
        try:
            att.correct(central().registry, school, room, day, period, person, klass, status, g.user["user"])
        except ConfigError as exc:
            return _register_page(school, room, day, None, _register(school, room, day, None), error=error_text(exc))
        except LookupError:
            raise _Refused(404, lazy_gettext("no such person on this school's roster"), "person") from None
    except _Refused as exc:
        return _answer(exc)
    audit("attendance.correct", f"{school}/{room} {day} period {period}: {person} ({klass}) set to {status}")
    return _register_page(school, room, day, None, _register(school, room, day, None))


def _register_rows(school: str, room: str, day: date, klass: str | None, entries: list[att.Entry]) -> list[list[Any]]:
    """The register as a table: named lines for those who may see names, else counts (the page's figures)."""
    if may_see_names(g.user):
        audit("attendance.export", f"{school}/{room} {day}{' ' + klass if klass else ''}: {len(entries)} entries")
        rows: list[list[Any]] = [[gettext("date"), gettext("period"), gettext("class"), gettext("name"),
                                  gettext("status"), gettext("first seen"), gettext("source")]]
        rows += [[e.day.isoformat(), e.period, e.klass, e.person, _status_name(e.status),
                  format_clock(e.first_seen) if e.first_seen else "", e.source or ""] for e in entries]
        return rows
    rows = [[gettext("date"), gettext("period"), gettext("class"), *(_status_name(s) for s in att.STATUSES)]]
    rows += [[c["date"], c["period"], c["class"], *(c[s] for s in att.STATUSES)] for c in att.counts(entries)]
    return rows


def _register_file(school: str, room: str) -> tuple[list[list[Any]], date]:
    """The rows of a room's register download and its day (_Refused: a bad room, date or class)."""
    _room(school, room)
    day, klass = _day(request.args.get("date")), _class_arg()
    return _register_rows(school, room, day, klass, _register(school, room, day, klass)), day


@bp.get("/attendance/<school>/rooms/<room>/register.csv")
@login_required
def register_csv(school: str, room: str) -> Any:
    try:
        rows, day = _register_file(school, room)
    except _Refused as exc:
        return _answer(exc)
    return download(csv_text(rows), f"attendance-{school}-{room}-{day}.csv", CSV)


@bp.get("/attendance/<school>/rooms/<room>/register.xlsx")
@login_required
def register_xlsx(school: str, room: str) -> Any:
    try:
        rows, day = _register_file(school, room)
    except _Refused as exc:
        return _answer(exc)
    note = gettext("Attendance of room %(room)s on %(day)s; made %(made)s", room=room, day=str(day),
                   made=format_clock(time.time()))
    return download(xlsx_bytes([Sheet(gettext("attendance"), rows, note=note)]),
                    f"attendance-{school}-{room}-{day}.xlsx", XLSX)


def _weeks() -> tuple[date, date]:
    raw = request.args.get("weeks", "4")
    try:
        weeks = int(raw)
    except ValueError:
        raise _Refused(400, lazy_gettext("weeks: not a whole number"), "weeks") from None
    if not 1 <= weeks <= MAX_SUMMARY_WEEKS:
        raise _Refused(400, lazy_gettext("weeks must be between 1 and %(max)s", max=MAX_SUMMARY_WEEKS), "weeks")
    today = datetime.now(page_zone()).date()
    monday = today - timedelta(days=today.weekday())
    return monday - timedelta(weeks=weeks - 1), today


def _summary_rows(rows: list[att.WeekRow]) -> list[list[Any]]:
    out: list[list[Any]] = [[gettext("class"), gettext("week"), gettext("expected"), _status_name("present"),
                             _status_name("late"), _status_name("absent"), _status_name("excused"),
                             gettext("attendance rate")]]
    out += [[r.klass, r.week.isoformat(), r.expected, r.present, r.late, r.absent, r.excused,
             None if r.rate is None else round(r.rate, 4)] for r in rows]
    return out


def _summary(school: str) -> tuple[list[att.WeekRow], date, date]:
    """The school's summary for the weeks asked, with its first and last day: what the page and both of its
    downloads show (_Refused: a school out of scope or not for this role, bad weeks)."""
    _school(school, staff_only=True)
    first, last = _weeks()
    return att.summary(central().registry, school, first, last, site_zone=site_zone()), first, last


@bp.get("/attendance/<school>")
@login_required(roles=STAFF)
def summary_page(school: str) -> Any:
    try:
        rows, first, last = _summary(school)
    except _Refused as exc:
        return _answer(exc)
    return render_template("attendance_summary.html", school=school, rows=rows, first=first, last=last,
                           weeks=request.args.get("weeks", "4"), settings=att.settings(central().registry, school),
                           may_change=g.user["role"] == "admin", named=may_see_names(g.user),
                           classes=att.class_rooms(central().registry, school))


@bp.get("/attendance/<school>/summary.csv")
@login_required(roles=STAFF)
def summary_csv(school: str) -> Any:
    try:
        rows, first, last = _summary(school)
    except _Refused as exc:
        return _answer(exc)
    return download(csv_text(_summary_rows(rows)), f"attendance-{school}-{first}.csv", CSV)


@bp.get("/attendance/<school>/summary.xlsx")
@login_required(roles=STAFF)
def summary_xlsx(school: str) -> Any:
    try:
        rows, first, last = _summary(school)
    except _Refused as exc:
        return _answer(exc)
    note = gettext("Attendance rate of each class per week, %(first)s to %(last)s", first=str(first), last=str(last))
    return download(xlsx_bytes([Sheet(gettext("attendance"), _summary_rows(rows), note=note)]),
                     f"attendance-{school}-{first}.xlsx", XLSX)


@bp.post("/attendance/<school>/settings")
@login_required(roles=("admin",))
def settings(school: str) -> Any:
    try:
        _school(school, staff_only=True)
        first, last = _weeks()
    except _Refused as exc:
        return _answer(exc)
    error = None
    try:
        saved = att.save_settings(central().registry, school, request.form.get("grace_min", ""),
                                  request.form.get("retention_days", ""), g.user["user"])
        kept = "by term" if saved.retention_days is None else f"{saved.retention_days} days"
        audit("attendance.settings", f"{school}: grace {saved.grace_min} min, kept {kept}")
    except ConfigError as exc:
        error = error_text(exc)
    rows = att.summary(central().registry, school, first, last, site_zone=site_zone())
    return render_template("attendance_summary.html", school=school, rows=rows, first=first, last=last, weeks="4",
                           settings=att.settings(central().registry, school), may_change=True,
                           named=may_see_names(g.user), classes=att.class_rooms(central().registry, school),
                           error=error), 400 if error else 200


@bp.route("/attendance/<school>/roster", methods=["GET", "POST"])
@login_required(roles=STAFF)
def roster_page(school: str) -> Any:
    try:
        _school(school, staff_only=True)
    except _Refused as exc:
        return _answer(exc)
    report = None
    if request.method == "POST":
        if g.user["role"] != "admin":
            return refuse(403, lazy_gettext("this needs the role %(roles)s", roles=either("role", ["admin"])))
        upload = request.files.get("file")
        data = upload.read() if upload else b""
        report = _import(school, data or request.form.get("text", "").encode())
    named = may_see_names(g.user)
    people = att.roster(central().registry, school) if named else None
    if named:
        audit("attendance.view", f"{school}: roster, {len(people or [])} people")
    return render_template("attendance_roster.html", school=school, people=people, report=report,
                           classes=att.class_rooms(central().registry, school),
                           may_import=g.user["role"] == "admin", example=att.EXAMPLE_CSV), \
        400 if report is not None and not report.ok else 200


@bp.get("/attendance/panel/<gateway>")
@login_required
def panel_fragment(gateway: str) -> Any:
    """The current period's register of the gateway's room: the teacher's panel shows it, reloaded when the
    panel's live stream says a swipe came."""
    if not may_see(g.user, gateway):
        return auth.refuse_gateway(g.user, lazy_gettext("not one of your rooms"))
    place = att.room_of_gateway(central().registry, gateway)
    period = att.current_period(central().registry, place[0], site_zone()) if place else None
    entries = []
    if place and period:
        entries = [e for e in att.register(central().registry, place[0], place[1], period[0],
                                           site_zone=site_zone()) if e.period == period[1]]
    named = may_see_names(g.user)
    if named and entries and period is not None and place is not None:
        # Audited once per account, room and period: the panel reloads this on every swipe and each minute.
        key = (g.user["user"], gateway, period[0], period[1])
        if key not in _PANEL_AUDITED:
            if len(_PANEL_AUDITED) >= PANEL_AUDIT_KEYS:
                _PANEL_AUDITED.clear()
            _PANEL_AUDITED.add(key)
            audit("attendance.view", f"{place[0]}/{place[1]} {period[0]} period {period[1]}: panel")
    return render_template("attendance_panel.html", place=place, period=period, counts=att.counts(entries),
                           entries=entries if named else None, status_name=_status_name,
                           statuses=att.STATUSES)
