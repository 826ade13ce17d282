"""Equipment health, for facility managers (and admins): board, alarms, thresholds, history, usage, schedules.

Pages under /health (roles `facility` and `admin`; teachers get 403,
anonymous users the login page):

* `/health/` the board: every room with its gateway online/offline, each
  device's status and last value time, its open alarms; filters by school,
  building and problem (offline, fault, alarm). A room whose gateway is
  registered but has never sent a message is "not installed yet": not
  offline, not alarmed. Polls /api/board.
* `/health/alarms` open alarms (a page at a time) and history; Acknowledge records who and when
  (POST with the CSRF token). Polls /api/alarms, so new alarms appear by themselves; the other
  pages ask it for the count of active alarms alone (`state=active&limit=1`, X-Total-Count).
* `/health/thresholds` the alarm rules' limits, validated, every change audited.
* `/health/rooms/<gateway>` history charts (environment, occupancy, equipment
  power) over 1 h / 24 h / 7 d, drawn as inline SVG from /api/telemetry.
* `/health/usage` projector and display on-hours per room per week, and
  hours on at night (22:00-06:00, local time): displays left on.
* `/health/schedules` timed actions (e.g. everything off at 22:00 on school
  days) and the per-device results of each run (dashboards/health_schedules.py).

JSON: `GET /api/alarms`, `POST /api/alarms/<id>/ack`, `GET /api/board`.
The alarm monitor and the scheduler that work behind these pages are
threads of `Central` (central/service.py; intervals `CAMPUS_ALARM_INTERVAL`,
`CAMPUS_SCHEDULE_INTERVAL`), not of this blueprint.
"""

from __future__ import annotations

import logging
import time
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from flask import (
    Blueprint,
    Flask,
    abort,
    flash,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext

from campus import names
from campus.errors import PayloadError
from campus.i18n import N_, LazyText, lazy_gettext, message_of
from central import alarms as alarm_engine
from central import lists, overview
from central.registry import row_id
from central.timetables import today_in
from central.usage import MAX_SAMPLE_GAP_S, POWER_KINDS, iter_points, on_intervals, overlap, power_state  # noqa: F401
from dashboards.auth import (
    add_nav,
    audit,
    login_required,
    may_see,
    refuse,
    refuse_gateway,
    school_scoped,
    sight,
)
from dashboards.context import central
from dashboards.i18n import TERMS, error_text, format_date, format_time, page_zone, site_zone, translate

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

STAFF = ("admin", "facility")
PROBLEMS = overview.PROBLEMS
NOT_INSTALLED = overview.NOT_INSTALLED
WINDOWS = {"1h": 3600, "24h": 24 * 3600, "7d": 7 * 24 * 3600}
USAGE_PAGE = 50  # rooms per page of /health/usage: each is read from the point store
NIGHT = (22, 6)  # hours: on between 22:00 and 06:00 counts as "left on"
# Labels are English, marked: the room page shows them translated (`room`), the CSV keeps the metric names.
ENV_METRICS = (("temperature_c", N_("Temperature"), "°C"), ("co2_ppm", "CO2", "ppm"),
               ("humidity_pct", N_("Humidity"), "%RH"), ("pm25_ugm3", "PM2.5", "µg/m³"),
               ("noise_dba", N_("Noise"), "dB(A)"), ("illuminance_lux", N_("Light"), "lx"))


def register(app: Flask) -> None:
    """Blueprint and top-bar links. The alarm monitor and the scheduler are central's threads
    (central/service.py), started with it."""
    from dashboards import health_schedules  # noqa: F401 - its pages are routes of `bp`, added on import

    app.register_blueprint(bp)
    add_nav(app, N_("District"), "health.district", STAFF)
    add_nav(app, N_("Equipment"), "health.board", STAFF)
    add_nav(app, N_("Alarms"), "health.alarms", STAFF)


@bp.app_template_filter("health_time")
def _fmt_time(ts: float | None, fmt: str = "%S") -> str:
    """The site's date and 24-hour time (dashboards/i18n.py); a `fmt` without seconds drops them."""
    return format_time(ts or None, seconds="%S" in fmt)


def db_id(raw: str | None) -> int | None:
    """A database id typed in a URL or form (central.registry.row_id: within INTEGER on both engines)."""
    return row_id(raw)


def _json_error(status: int, message: str | LazyText) -> Any:
    return jsonify({"error": message}), status


# ---------------------------------------------------------------- the board


def board_data(school: str | None = None, building: int | None = None,
               problem: str | None = None, paging: lists.Paging | None = None,
               scope: lists.Scope = lists.EVERYTHING) -> overview.Board:
    """A page of the rooms (gateways) within `scope` with their devices, status, last seen and open alarms,
    problems first, filtered (central/overview.py)."""
    c = central()
    return overview.board(c.registry, c.ledger, school, building, problem, paging, scope, c.board_snapshots)


def paged(body: Any, total: int) -> Any:
    """A JSON answer with the list's total (all pages) in `X-Total-Count`."""
    resp = jsonify(body)
    resp.headers["X-Total-Count"] = str(total)
    return resp


def _filters(args: Any) -> tuple[str | None, int | None, str | None]:
    try:
        school = lists.name_arg(args, "school")
    except PayloadError as exc:
        raise ValueError(message_of(exc)) from None
    raw_building = args.get("building") or ""
    if raw_building and db_id(raw_building) is None:
        raise ValueError(lazy_gettext("building must be a building id"))
    problem = args.get("problem") or None
    if problem not in (None, "any", *PROBLEMS):
        raise ValueError(lazy_gettext("problem must be one of any, %(problems)s", problems=", ".join(PROBLEMS)))
    return school, db_id(raw_building), problem


@bp.get("/health/")
@login_required(roles=STAFF)
def board() -> Any:
    places = overview.places(central().registry, sight(g.user))
    try:
        school, building, problem = _filters(request.args)
    except ValueError as exc:
        return render_template("error.html", status=400, message=error_text(exc)), 400
    try:
        paging = lists.Paging.parse(request.args)
    except PayloadError:
        paging = lists.Paging()
    return render_template("health_board.html", schools=places.schools, buildings=places.buildings, school=school,
                           building=building, problem=problem, problems=PROBLEMS, paging=paging, tab="board")


@bp.get("/api/board")
@login_required(roles=STAFF)
def api_board() -> Any:
    try:
        school, building, problem = _filters(request.args)
        paging = lists.Paging.parse(request.args)
    except (ValueError, PayloadError) as exc:
        return _json_error(400, error_text(exc))
    data = board_data(school, building, problem, paging, sight(g.user))
    return paged(data.as_dict(), data.total)


# ---------------------------------------------------------------- the district


@bp.get("/district")
@login_required(roles=STAFF)
def district() -> Any:
    """One row per school (central/lists.py `schools`), sortable and filterable, each drilling into its board."""
    sort = request.args.get("sort") or "school"
    try:
        paging = lists.Paging.parse(request.args)
        c = central()
        page = overview.school_rollup(c.registry, paging, sort.removeprefix("-")[:40], sort.startswith("-"),
                                      request.args.get("problems") == "1", sight(g.user), c.board_snapshots,
                                      today_in(site_zone()))
    except PayloadError as exc:
        return render_template("error.html", status=400, message=error_text(exc)), 400
    return render_template("health_district.html", schools=page.items, total=page.total, paging=paging, sort=sort,
                           problems=request.args.get("problems") == "1", tab="district")


# ---------------------------------------------------------------- alarms


@bp.get("/health/alarms")
@login_required(roles=STAFF)
def alarms() -> Any:
    return render_template("health_alarms.html", tab="alarms")


@bp.get("/api/alarms")
@login_required(roles=STAFF)
def api_alarms() -> Any:
    state = request.args.get("state", "open")
    if state not in ("open", "active", "history", "all"):
        return _json_error(400, lazy_gettext("state must be open, active, history or all"))
    try:
        paging = lists.Paging.parse(request.args, default_limit=200, max_limit=2000)
    except PayloadError as exc:
        return _json_error(400, error_text(exc))
    gateway = request.args.get("gateway") or None
    if gateway is not None:  # compared in SQL, where PostgreSQL refuses a NUL outright (a 503, not a 400)
        try:
            names.identifier(gateway[:100], "gateway")
        except names.BadName as exc:
            return _json_error(400, error_text(exc))
    reg = central().registry
    page = lists.alarm_ids(reg.db, paging, state, gateway, sight(g.user))
    # The page's ids are already the state's: `active` ones are open ones.
    rows = alarm_engine.list_alarms(reg, "open" if state == "active" else state, paging.limit,
                                    ids=page.items) if page.items else []
    return paged(rows, page.total)


def _ack(raw_id: str) -> tuple[dict[str, Any] | None, str]:
    alarm_id = db_id(raw_id)
    if alarm_id is None:
        return None, gettext("no such alarm")
    if school_scoped(g.user):  # an alarm of another school is one that does not exist
        found = alarm_engine.list_alarms(central().registry, "all", 1, ids=[alarm_id])
        if not found or not may_see(g.user, found[0]["gateway"]):
            audit("refused", f"404 {request.method} {request.path}: outside the account's schools", ok=False)
            return None, gettext("no alarm %(id)s", id=raw_id)
    result = alarm_engine.acknowledge(central().registry, alarm_id, g.user["user"])
    if result is None:
        return None, gettext("no alarm %(id)s", id=raw_id)
    alarm, changed = result
    if changed:
        audit("alarm_ack", f"alarm {alarm['id']} {alarm['gateway']}/{alarm['device'] or '-'}: {alarm['message']}")
    return alarm, ""


@bp.post("/api/alarms/<aid>/ack")
@login_required(roles=STAFF)
def api_ack(aid: str) -> Any:
    alarm, problem = _ack(aid)
    if alarm is None:
        return _json_error(404, problem)
    return jsonify(alarm)


@bp.post("/health/alarms/<aid>/ack")
@login_required(roles=STAFF)
def ack(aid: str) -> Any:
    """The same for a plain form (no script): acknowledge, then back to the alarms page."""
    alarm, problem = _ack(aid)
    if alarm is None:
        return render_template("error.html", status=404, message=problem), 404
    flash(gettext("Alarm acknowledged by %(user)s.", user=alarm["acked_by"]))
    return redirect(url_for("health.alarms"))


# ---------------------------------------------------------------- thresholds


@bp.route("/health/thresholds", methods=["GET", "POST"])
@login_required(roles=STAFF)
def thresholds() -> Any:
    reg = central().registry
    errors: dict[int, str] = {}
    typed: dict[int, dict[str, Any]] = {}
    status = 200
    if request.method == "POST":
        if school_scoped(g.user):
            return refuse(403, lazy_gettext("alarm rules are the district's, for every school; your account is "
                                            "limited to some schools"))
        raw_id = request.form.get("rule_id", "")
        rule_id = db_id(raw_id) or -1
        spec = next((r for r in alarm_engine.list_rules(reg) if r["id"] == rule_id), None)
        if spec is None:
            abort(404, lazy_gettext("no such alarm rule"))
        enabled = request.form.get("enabled") == "on"
        params = {p.name: request.form.get(p.name, "") for p in alarm_engine.RULE_KINDS[spec["kind"]].params}
        try:
            before, after = alarm_engine.update_rule(reg, rule_id, params, enabled)
        except alarm_engine.RuleError as exc:
            errors[rule_id] = error_text(exc)
            typed[rule_id] = {**params, "enabled": enabled}
            audit("alarm_rule", f"refused {spec['kind']} #{rule_id} {params}: {exc}", ok=False)
            status = 400
        else:
            if before != after:
                audit("alarm_rule", f"{after['kind']} #{rule_id}: {before['params']} enabled={before['enabled']}"
                      f" -> {after['params']} enabled={after['enabled']}")
                flash(gettext("Saved: %(rule)s.", rule=translate(after["label"])))
            return redirect(url_for("health.thresholds"))
    rules = alarm_engine.list_rules(reg)
    for r in rules:
        r["specs"] = alarm_engine.RULE_KINDS[r["kind"]].params if r["kind"] in alarm_engine.RULE_KINDS else ()
    return render_template("health_thresholds.html", rules=rules, errors=errors, typed=typed,
                           tab="thresholds"), status


# ---------------------------------------------------------------- history charts


def room_series(info: overview.BoardRoom) -> list[dict[str, Any]]:
    """The series a room's history shows (environment, occupancy, equipment power), with alarm limits."""
    rules = {r["kind"]: r for r in alarm_engine.list_rules(central().registry) if r["enabled"]}
    series: list[dict[str, Any]] = []
    kinds = {d.id: d.kind for d in info.devices}
    for dev, kind in sorted(kinds.items()):
        if kind == "environment":
            for metric, label, unit in ENV_METRICS:
                limits: list[dict[str, Any]] = []
                if metric == "co2_ppm" and "co2_above" in rules:
                    limits = [{"value": rules["co2_above"]["params"]["ppm"], "label": N_("alarm limit")}]
                if metric == "temperature_c" and "temperature_range" in rules:
                    p = rules["temperature_range"]["params"]
                    limits = [{"value": p["min"], "label": N_("lowest")}, {"value": p["max"], "label": N_("highest")}]
                series.append({"group": N_("Environment"), "device": dev, "metric": metric, "label": label,
                               "unit": unit, "type": "line", "limits": limits})
        elif kind == "camera":
            series.append({"group": N_("Occupancy"), "device": dev, "metric": "people_count", "label": N_("People"),
                           "unit": N_("people"), "type": "line", "limits": []})
        elif kind in POWER_KINDS:
            series.append({"group": N_("Equipment power"), "device": dev, "metric": "power",
                           "label": TERMS["kind"].get(kind, kind), "unit": "", "type": "state", "limits": []})
    order = ("Environment", "Occupancy", "Equipment power")
    series.sort(key=lambda s: order.index(s["group"]))  # stable: devices keep their order within a group
    return series


def requested_room(gateway: str) -> tuple[overview.BoardRoom, str]:
    """The room (as on the board) and the `window` of a history request; an error page for a bad one."""
    window = request.args.get("window", "24h")
    if window not in WINDOWS:
        abort(make_response(render_template("error.html", status=400, message=gettext("window must be 1h, 24h or 7d")),
                                  400))
    if not may_see(g.user, gateway):
        abort(make_response(refuse_gateway(g.user, lazy_gettext("gateway %(gateway)s is not yours",
                                                                gateway=repr(gateway)))))
    c = central()
    info = overview.board_room(c.registry, c.ledger, gateway)
    if info is None:
        abort(make_response(render_template("error.html", status=404,
                                            message=gettext("no gateway %(gateway)s", gateway=repr(gateway))), 404))
    return info, window


@bp.get("/health/rooms/<gateway>")
@login_required(roles=STAFF)
def room(gateway: str) -> Any:
    info, window = requested_room(gateway)
    # In the reader's language: the page's script draws these words as they are.
    series = [{**s, "group": gettext(s["group"]), "label": _capital(gettext(s["label"])),
               "unit": gettext(s["unit"]) if s["unit"] else "",
               "limits": [{**limit, "label": gettext(limit["label"])} for limit in s["limits"]]}
              for s in room_series(info)]
    return render_template("health_room.html", room=info, window=window, windows=list(WINDOWS),
                           seconds=WINDOWS[window], series=series, max_gap=MAX_SAMPLE_GAP_S, tab="board")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------- usage


def week_bounds(week: date, zone: tzinfo) -> list[float]:
    """Unix times of the midnights in `zone` (the site's) of the week starting on `week` (8 values): the
    server's own zone (often UTC) would start a Shanghai Monday at 08:00."""
    return [datetime.combine(week + timedelta(days=i), datetime.min.time(), tzinfo=zone).timestamp()
            for i in range(8)]


def night_windows(week: date, zone: tzinfo) -> list[tuple[float, float]]:
    """22:00-06:00 windows in `zone` touching the week."""
    out = []
    for i in range(-1, 7):
        d = week + timedelta(days=i)
        a = datetime.combine(d, datetime.min.time(), tzinfo=zone).replace(hour=NIGHT[0]).timestamp()
        b = datetime.combine(d + timedelta(days=1), datetime.min.time(), tzinfo=zone).replace(hour=NIGHT[1]).timestamp()
        out.append((a, b))
    return out


def usage_for(spans: list[tuple[float, float]], week: date, zone: tzinfo,
              frame: tuple[list[float], list[tuple[float, float]]] | None = None) -> dict[str, Any]:
    """A device's hours on per day of the week and at night. `frame`: the week's `week_bounds` and
    `night_windows` worked out once for a page's every device (the same for each)."""
    bounds, nights = frame or (week_bounds(week, zone), night_windows(week, zone))
    days = [overlap(spans, bounds[i], bounds[i + 1]) / 3600 for i in range(7)]
    lo, hi = bounds[0], bounds[-1]
    night = sum(overlap(spans, max(a, lo), min(b, hi)) for a, b in nights if min(b, hi) > max(a, lo))
    return {"days": [round(h, 2) for h in days], "total": round(sum(days), 2), "night": round(night / 3600, 2)}


def parse_week(raw: str | None, today: date | None = None) -> date:
    """The Monday of an ISO week "YYYY-Www" (default: this week, in the page's zone); ValueError with a
    readable message."""
    if not raw:
        today = today or datetime.now(page_zone()).date()
        return today - timedelta(days=today.weekday())
    try:
        year, week = raw.split("-W")
        return date.fromisocalendar(int(year), int(week), 1)
    except ValueError:
        raise ValueError(lazy_gettext("week must look like 2025-W07, got %(value)s", value=repr(raw[:20]))) from None


@bp.get("/health/usage")
@login_required(roles=STAFF)
def usage() -> Any:
    try:
        week = parse_week(request.args.get("week"))
    except ValueError as exc:
        return render_template("error.html", status=400, message=error_text(exc)), 400
    try:
        paging = lists.Paging.parse(request.args, default_limit=USAGE_PAGE)
    except PayloadError as exc:
        return render_template("error.html", status=400, message=error_text(exc)), 400
    try:
        school = lists.name_arg(request.args, "school")
    except PayloadError as exc:
        return render_template("error.html", status=400, message=error_text(exc)), 400
    c = central()
    store = c.store
    zone = page_zone()  # the school's, when the report is one school's
    bounds = week_bounds(week, zone)
    now = time.time()
    end = min(bounds[-1], now)
    rows = []
    # A page of rooms (by school and id), each read from the store: the page's cost, not the district's.
    page = lists.gateway_ids(c.registry.db, paging, sight(g.user).narrowed(school=school))
    data = overview.board(c.registry, c.ledger, paging=lists.Paging(limit=max(1, len(page.items))),
                          scope=lists.Scope(gateways=tuple(page.items)))
    by_id = {r.gateway: r for r in data.rooms}
    frame = (bounds, night_windows(week, zone))
    # The week in one store read a device (paged back past MAX_POINTS as any): `iter_points`' 6-hour chunks were
    # 25 reads a device, 2,500 a page of 50 rooms (docs/benchmarks.md); every point is held for the page anyway.
    whole = end - bounds[0] + MAX_SAMPLE_GAP_S + 1
    for r in (by_id[gid] for gid in page.items if gid in by_id):
        for d in r.devices:
            if d.kind not in POWER_KINDS:
                continue
            if end > bounds[0]:
                points = list(iter_points(store, r.gateway, d.id, "power", bounds[0] - MAX_SAMPLE_GAP_S, end,
                                          chunk=whole))
                figures = usage_for(on_intervals(points, bounds[0], end), week, zone, frame)
            else:
                figures = {"days": [0.0] * 7, "total": 0.0, "night": 0.0}
            power = d.latest.get("power")
            rows.append({"gateway": r.gateway, "room": r.room, "building": r.building, "school": r.school,
                         "device": d.id, "kind": d.kind, "now": power_state(power) if power is not None else "",
                         **figures})
    iso = week.isocalendar()
    totals = {k: round(sum(x["total"] for x in rows if x["kind"] == k), 1) for k in POWER_KINDS}
    left_on = [x for x in rows if x["night"] >= 0.25]
    peak = max([h for x in rows for h in x["days"]] + [1.0])
    return render_template("health_usage.html", rows=rows, week=week, week_id=f"{iso[0]}-W{iso[1]:02d}",
                           prev_week=_week_id(week - timedelta(days=7)), next_week=_week_id(week + timedelta(days=7)),
                           day_names=[format_date(week + timedelta(days=i))[5:] for i in range(7)],
                           totals=totals, left_on=left_on, peak=peak, night=NIGHT, tab="usage",
                           total=page.total, paging=paging, school=school)


def _week_id(d: date) -> str:
    iso = d.isocalendar()
    return f"{iso[0]}-W{iso[1]:02d}"
