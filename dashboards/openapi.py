"""The OpenAPI 3.1 document for /api/openapi.json, written out by hand.

Kept next to the routes it describes; a test checks every route is in it. Its summaries and descriptions are
English, marked (`N_`), and served in the request's language (`localized`, dashboards/i18n.py).
"""

from __future__ import annotations

from typing import Any

import campus
from campus import contract
from campus.i18n import N_, LazyText, lazy_gettext
from central import energy, lists
from central import usage as usage_mod
from central.store.base import MAX_POINTS


def _get(summary: str | LazyText, params: list[tuple[str, str, bool]] = (), schema: dict[str, Any] | None = None,
         auth: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [{"name": n, "in": where, "required": req, "schema": {"type": "number" if n in
                        ("start", "end", "since", "cursor") else "string"}} for n, where, req in params],
        "responses": {"200": {"description": N_("OK"), "content": {"application/json": {"schema": schema or {}}}}},
    }
    if auth:
        op["responses"].update({"401": {"description": N_("login required")}, "403": {"description": N_("forbidden")}})
        op["security"] = [{"bearer": []}]
    else:
        op["security"] = []
    if any(p[1] == "query" for p in params):
        op["responses"]["400"] = {"description": N_("bad query parameter")}
    return op


def _paged(op: dict[str, Any], default: int = lists.DEFAULT_LIMIT, most: int = lists.MAX_LIMIT) -> dict[str, Any]:
    """A list (central/lists.py): `limit`, `offset`, `q`, and the total of all pages in `X-Total-Count`."""
    op["parameters"] += [
        {"name": "limit", "in": "query", "required": False, "description": N_("rows of this page"),
         "schema": {"type": "integer", "minimum": 1, "maximum": most, "default": default}},
        {"name": "offset", "in": "query", "required": False, "description": N_("rows skipped before this page"),
         "schema": {"type": "integer", "minimum": 0, "maximum": lists.MAX_OFFSET, "default": 0}},
        {"name": "q", "in": "query", "required": False,
         "description": N_("only rows holding this text in their names or ids (case-insensitive)"),
         "schema": {"type": "string", "maxLength": lists.Q_MAX}}]
    op["responses"]["200"]["headers"] = {"X-Total-Count": {
        "description": N_("rows of the whole list (every page) matching the query"), "schema": {"type": "integer"}}}
    op["responses"]["400"] = {"description": N_("bad query parameter (`error` names it)")}
    return op


def document() -> dict[str, Any]:
    obj = {"type": "object"}
    arr = {"type": "array", "items": obj}
    send = _get(N_("Send a command to a device and wait a few seconds for its result"),
                [("gateway", "path", True), ("device", "path", True)], obj)
    send["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["action"],
        "properties": {"action": {"type": "string", "enum": list(contract.ACTIONS)},
                       "params": {"type": "object", "description": N_("select_input {input: one of the profile's "
                                  "inputs}, set_volume {level: whole number 0-100}, none for the others")},
                       "ttl": {"type": "number", "minimum": 1, "maximum": 86400}}}}}}
    send["responses"].update({"202": {"description": N_("sent; no result yet")},
                              "400": {"description": N_("bad body: `error` says why, `field` names what (`action`, "
                                                     "`params.level`, ...); nothing was stored or sent")},
                              "415": {"description": N_("the body is not sent as application/json")},
                              "429": {"description": N_("too many commands; wait a minute")},
                              "404": {"description": N_("no such device")},
                              "503": {"description": N_("no MQTT connection configured")}})
    stream = _get(N_("Live state of one room for the classroom panel: server-sent events (`event: room`, the room as "
                  "JSON, on every change; a `: keepalive` comment every 15 s)"), [("gateway", "path", True)])
    stream["responses"]["200"] = {"description": N_("an open text/event-stream"),
                                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    metrics = _get(N_("Gateways, devices and ingest workers in the Prometheus text format 0.0.4, for scraping "
                      "with a bearer token (facility, admin; an account limited to some schools: their "
                      "gateways and devices, no ingest worker)"))
    metrics["responses"]["200"] = {"description": N_("metrics"), "content": {"text/plain": {"schema": {"type": "string"}}}}
    telemetry = _get(
        N_("Points of one series in [start, end] (default: the last hour), oldest first, never without the newest: at "
        "most `limit` points. A window holding more is downsampled (`downsampled`, `step`: the newest sample of "
        "each step; each at its own time, on InfluxDB at its step's start), its newest point last; with `raw=1` "
        "the answer is the newest `limit` raw points, `truncated` says older ones were left out and `next` is the "
        "`cursor` for the page before (same start, end and limit)."),
        [("gateway", "query", True), ("device", "query", True), ("metric", "query", True),
         ("start", "query", False), ("end", "query", False), ("cursor", "query", False)],
        {"type": "object", "required": ["points"], "properties": {
            "points": {"type": "array", "items": {"type": "array", "prefixItems": [
                {"type": "number"}, {"type": ["number", "string"]}], "minItems": 2, "maxItems": 2}},
            "start": {"type": "number"}, "end": {"type": "number"}, "limit": {"type": "integer"},
            "downsampled": {"type": "boolean"}, "step": {"type": "number", "description": N_("seconds; 0: raw")},
            "truncated": {"type": "boolean"}, "next": {"type": ["string", "null"]}}})
    telemetry["parameters"] += [
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_POINTS, "default": MAX_POINTS}},
        {"name": "raw", "in": "query", "required": False, "schema": {"type": "string", "enum": ["0", "1"]}}]
    cursor = next(p for p in telemetry["parameters"] if p["name"] == "cursor")
    cursor["description"] = N_("the `next` of a raw page: the page before it (with raw=1)")
    override = _get(N_("Keep the room on for this period: a command to the gateway, whose idle-off and power-off "
                       "schedules leave the room alone until the end of the school's current period (`until`; "
                       "outside a period 45 minutes)"), [("gateway", "path", True)], obj)
    override["responses"]["202"] = {"description": N_("sent; the gateway has not answered yet")}
    ack = _get(N_("Acknowledge an alarm: records who and when (facility, admin)"), [("aid", "path", True)], obj)
    ack["responses"]["404"] = {"description": N_("no such alarm")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "campus-iot", "version": campus.__version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/api/health": {"get": _get(N_("Liveness"), schema={"type": "object", "properties": {
                "status": {"type": "string"}}}, auth=False)},
            "/api/gateways": {"get": _paged(_get(N_("Gateways with presence and delivery counters; `installed` false for one "
                                          "registered that has never sent a message (not installed yet, no alarms); "
                                          "`waiting` messages the gateway holds until central acknowledges them, "
                                          "`waiting_age` the oldest's age (s), `acked_seq` central's acknowledged "
                                          "watermark"), schema=arr))},
            "/api/devices": {"get": _paged(_get(N_("Devices with status and latest values; `gateway`: only those of "
                                                "these gateways (comma-separated)"), [("gateway", "query", False)],
                                                arr))},
            "/api/schools": {"get": _paged(_get(lazy_gettext(
                "The district, one row per school: rooms, gateways online / offline, open alarms (active: not "
                "acknowledged; by rule kind), devices in fault, projector lamps and filters due, this ISO week's "
                "usage rate (`usage_periods`, `usage_used`, `usage_rate`) and CO2-over-limit time (`co2_over_s`, "
                "`co2_hours`, added up over its rooms) (facility, admin); "
                "`sort` one of %(sorts)s (`-` before it: descending), `problems=1` only schools with an offline "
                "gateway, an alarm or a fault", sorts=", ".join(lists.SCHOOL_SORTS)),
                [("sort", "query", False), ("problems", "query", False)], arr))},
            "/api/telemetry": {"get": telemetry},
            "/api/events": {"get": _paged(_get(N_("Events, newest first"), [("gateway", "query", False),
                                                                        ("type", "query", False),
                                                                        ("since", "query", False)], arr), 1000)},
            "/api/gateways/{gateway}/devices/{device}/commands": {"post": send},
            "/api/gateways/{gateway}/override": {"post": override},
            "/api/commands": {"get": _paged(_get(N_("Command audit trail, newest first"), [("gateway", "query", False)],
                                                 arr), 200)},
            "/api/commands/{cid}": {"get": _get(N_("One command"), [("cid", "path", True)], obj)},
            "/api/panel/{gateway}/stream": {"get": stream},
            "/api/alarms": {"get": _paged(_get(N_("Alarms, newest first: open (not cleared), active (open, "
                                                  "not acknowledged), history (cleared) or all (facility, admin)"),
                                               [("state", "query", False),
                                                              ("gateway", "query", False)], arr), 200, 2000)},
            "/api/alarms/{aid}/ack": {"post": ack},
            "/api/board": {"get": _paged(_get(
                N_("A page of the rooms, those with a problem first: gateway online and last seen, devices with "
                "status (and `detail`: why one is in fault or offline, as its gateway wrote it, in the reader's "
                "language), problems, open alarms (facility, admin); `counts` of every room before the filters, "
                "`total` (also `X-Total-Count`) of the rooms matching them"), [("school", "query", False),
                                                                              ("building", "query", False),
                                                                              ("problem", "query", False)], obj))},
            "/api/ingest": {"get": _get(N_("Ingest workers: counters since each started (messages, stored, duplicates, "
                                        "rejected, refused_by_store, store_errors, last_error), running (facility, "
                                        "admin)"), schema=arr)},
            "/api/metrics": {"get": metrics},
            "/api/audit": {"get": _paged(_get(N_("Audit trail, newest first: logins, refusals, commands (admin)"),
                                              schema=arr), 200)},
            "/api/openapi.json": {"get": _get(N_("This document"), auth=False)},
            **_timetables(),
            **_energy(),
            **_city(),
            **_notifications(),
            **_podium(),
            **_schedules(),
            **_attendance(),
        },
    }


def _timetables() -> dict[str, Any]:
    """School timetables and the usage rate (dashboards/timetables.py)."""
    hhmm = {"type": "string", "pattern": "^([01]?[0-9]|2[0-3]):[0-5][0-9]$", "description": N_("local time HH:MM")}
    day = {"type": "string", "format": "date", "description": N_("YYYY-MM-DD")}
    weekday = {"type": "integer", "minimum": 1, "maximum": 7, "description": N_("Monday 1 .. Sunday 7")}
    span = {"type": "object", "required": ["start"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "start": day, "end": day}}
    timetable = {"type": "object", "additionalProperties": False, "properties": {
        "school": {"type": "string"}, "timezone": {"type": "string", "description": N_("IANA name; Asia/Shanghai")},
        "periods": {"type": "array", "maxItems": 140, "items": {
            "type": "object", "required": ["weekday", "number", "start", "end"], "additionalProperties": False,
            "properties": {"weekday": weekday, "number": {"type": "integer", "minimum": 1, "maximum": 20},
                           "name": {"type": "string"}, "start": hhmm, "end": hhmm}}},
        "terms": {"type": "array", "items": span}, "holidays": {"type": "array", "items": span},
        "workdays": {"type": "array", "items": {**span, "required": ["start", "follows"], "properties": {
            **span["properties"], "follows": weekday}}},
        "updated": {"type": ["number", "null"]}, "updated_by": {"type": "string"}}}
    school = [("school", "path", True)]
    get = _get(N_("A school's timetable (作息时间表): class periods per weekday, terms, holidays, make-up working days "
               "(facility, admin)"), school, timetable)
    get["responses"]["404"] = {"description": N_("no such school")}
    put = _get(N_("Replace a school's whole timetable (admin); the answer is the timetable saved"), school, timetable)
    put["requestBody"] = {"required": True, "content": {"application/json": {"schema": timetable}}}
    put["responses"].update({"400": {"description": N_("bad body: `error` says why, `field` names what "
                                                    "(`periods[3].end`, ...); nothing was changed")},
                             "404": {"description": N_("no such school")}, "413": {"description": N_("body too large")},
                             "415": {"description": N_("the body is not sent as application/json")}})
    periods = _get(N_("The class periods of a school from `start` to `end` (dates, both included; default today), with "
                   "their unix times (facility, admin)"), school, {"type": "object"})
    periods["parameters"] += [{"name": n, "in": "query", "required": False, "schema": day} for n in ("start", "end")]
    periods["responses"].update({"400": {"description": N_("bad date or span (at most 400 days)")},
                                 "404": {"description": N_("no such school")}})
    usage = _get(N_("The usage rate (应用率) of each room, school and the district over an ISO week (default this one) "
                    "or a month: the share of class periods in which a display or projector was on (facility, admin), "
                    "from the daily usage rollup; `pending`: room-days of the span not rolled up yet (not counted)"),
                 [("week", "query", False), ("month", "query", False), ("school", "query", False)], {"type": "object"})
    _paged(usage, usage_mod.PAGE_ROOMS, usage_mod.MAX_PAGE_ROOMS)
    usage["parameters"][-3]["description"] = N_("rooms of this page (the CSV and XLSX have every room); the schools, "
                                                "days and district are always whole")
    rules_obj = {"type": "object", "properties": {"idle_off_minutes": {"type": ["integer", "null"], "minimum": 1,
                                                                      "maximum": 480}}}
    rules = _get(N_("A school's default idle-off minutes for its rooms without their own (null: none) (facility, "
                    "admin)"), school, rules_obj)
    rules["responses"]["404"] = {"description": N_("no such school")}
    set_rules = _get(N_("Set a school's default idle-off minutes (1-480, null: none) (admin); pushed to the gateways "
                        "of its rooms without their own"), school, {"type": "object", "properties": {
                            **rules_obj["properties"], "pushed": {"type": "array", "items": {"type": "string"}},
                            "not_pushed": {"type": ["string", "null"]}}})
    set_rules["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
        **rules_obj, "required": ["idle_off_minutes"]}}}}
    set_rules["responses"].update({"400": {"description": N_("`field` names the bad part; nothing changed")},
                                   "404": {"description": N_("no such school")}})
    return {"/api/schools/{school}/timetable": {"get": get, "put": put},
            "/api/schools/{school}/rules": {"get": rules, "put": set_rules},
            "/api/schools/{school}/timetable/periods": {"get": periods},
            "/api/usage": {"get": usage}}


def _schedules() -> dict[str, Any]:
    """Schedules (dashboards/health_schedules.py, central/schedules.py)."""
    from central.schedules import ANCHORS, DAYS, OFFSET_MAX, SCHEDULE_ACTIONS, SCHEDULE_KINDS

    body = {"type": "object", "additionalProperties": False, "properties": {
        "name": {"type": "string", "maxLength": 100},
        "at": {"type": "string", "description": N_("local time HH:MM (24 h) of a fixed-time schedule")},
        "days": {"type": "array", "items": {"type": "string", "enum": list(DAYS)},
                 "description": N_("weekdays it runs on (or one comma-separated string)")},
        "action": {"type": "string", "enum": list(SCHEDULE_ACTIONS)},
        "kinds": {"type": "array", "items": {"type": "string", "enum": list(SCHEDULE_KINDS)},
                  "description": N_("the kinds of devices it switches (or one comma-separated string)")},
        "school_id": {"type": ["string", "null"], "description": N_("its school; null: every school")},
        "building_id": {"type": ["integer", "string", "null"], "description": N_("its building; null: every one")},
        "enabled": {"type": "boolean"},
        "anchor": {"type": ["string", "null"], "enum": [*ANCHORS, None],
                   "description": N_("null: at the time `at`; last_period: `offset_min` minutes after the end of the "
                                     "day's last class period in each school's timetable, in the school's time zone; "
                                     "a day without periods (or a school without a timetable) has no such run")},
        "offset_min": {"type": "integer", "minimum": 0, "maximum": OFFSET_MAX,
                       "description": N_("minutes after the last period (anchored schedules)")}}}
    one = {"type": "object", "description": N_("a schedule: the fields above, and id, scope, when (its time as a "
                                               "person reads it), last_run and next_run (unix times)")}
    bad = {"description": N_("bad body: `error` says why, `field` names what (`offset_min`, `at`, ...); nothing "
                             "was changed")}
    listed = _paged(_get(N_("The schedules, by time of day (facility, admin; an account limited to some schools: "
                            "theirs)"), schema={"type": "array", "items": one}))
    create = _get(N_("Create a schedule (facility, admin); the answer is the schedule saved"), schema=one)
    create["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
        **body, "required": ["name", "action", "kinds"]}}}}
    create["responses"]["201"] = create["responses"].pop("200")
    create["responses"].update({"400": bad, "415": {"description": N_("the body is not sent as application/json")}})
    sid = [("sid", "path", True)]
    get = _get(N_("One schedule (facility, admin)"), sid, one)
    get["responses"]["404"] = {"description": N_("no such schedule")}
    put = _get(N_("Change a schedule: the fields given replace its own (facility, admin)"), sid, one)
    put["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    put["responses"].update({"400": bad, "404": {"description": N_("no such schedule")},
                             "415": {"description": N_("the body is not sent as application/json")}})
    return {"/api/schedules": {"get": listed, "post": create}, "/api/schedules/{sid}": {"get": get, "put": put}}


def _energy() -> dict[str, Any]:
    """Electricity and projector maintenance (dashboards/energy.py, central/energy.py, central/maintenance.py)."""
    where = [("week", "query", False), ("month", "query", False), ("school", "query", False),
             ("building", "query", False)]
    report = _paged(_get(N_("kWh of each metered room, building, school, day and in all over an ISO week (default this "
                         "one) or a month, and of them outside the timetable (`off_kwh`; null: the school has no "
                         "timetable), with `yuan` at the site's tariff; from the daily rollup. The totals are whole, "
                         "`rooms` one page of them by school, building and room (`room_count` and `X-Total-Count`: "
                         "how many) (facility, admin)"), list(where), {"type": "object"}),
                    energy.ROOMS_PAGE, energy.MAX_ROOMS_PAGE)
    left = _paged(_get(N_("Rooms by kWh used outside the timetable, worst first (facility, admin)"), list(where),
                       {"type": "array", "items": {"type": "object"}}))
    due = _paged(_get(N_("Projector lamps and filters against their rated hours, soonest due first: `weeks_left` at the "
                      "rate of the last weeks; `within` (weeks, default 4) marks `due`, `due=1` lists only those "
                      "(facility, admin)"), [("within", "query", False), ("due", "query", False),
                                            ("school", "query", False)], {"type": "array", "items": {"type": "object"}}))
    for op in (report, left, due):
        op["responses"].setdefault("400", {"description": N_("bad query parameter: `error` says why, `field` names it")})
        op["responses"]["404"] = {"description": N_("a school outside the account's schools")}
    return {"/api/energy": {"get": report}, "/api/energy/left-on": {"get": left}, "/api/maintenance": {"get": due}}


def _podium() -> dict[str, Any]:
    """Podium cards (dashboards/podium.py, central/podium.py): a room's allow-list, by pseudonym prefix."""
    room = [("school", "path", True), ("room", "path", True)]
    card = {"type": "object", "properties": {
        "card": {"type": "string", "description": N_("the start of the card's pseudonym (never its number)")},
        "role": {"type": "string", "enum": list(contract.PODIUM_ROLES)}, "label": {"type": "string"},
        "added": {"type": "number"}, "by": {"type": "string"}}}
    pushed = {"pushed": {"type": "array", "items": {"type": "string"}}, "not_pushed": {"type": ["string", "null"]}}
    listing = _get(N_("The cards enrolled at a room's podium (the room's teacher, facility, admin)"), room,
                   {"type": "array", "items": card})
    imported = _get(N_("Enrol cards from a CSV body (`card,role,label`; 一卡通 numbers, UTF-8 or GB18030), "
                       "pseudonymised with the school's secret as read, never stored; all or nothing (the room's "
                       "teacher, admin)"), room, {"type": "object", "properties": {
                        "added": {"type": "integer"}, "changed": {"type": "integer"}, **pushed}})
    imported["requestBody"] = {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}
    imported["responses"]["400"] = {"description": N_("`errors`: every problem with its line and column; nothing changed")}
    removed = _get(N_("Remove one enrolled card, named by the start of its pseudonym (the room's teacher, admin)"),
                   [*room, ("card", "path", True)], {"type": "object"})
    removed["responses"].update({"400": {"description": N_("not a pseudonym prefix, or more than one card has it")},
                                 "404": {"description": N_("no such card in this room")}})
    state = {"type": "object", "properties": {
        "status": {"type": "string", "enum": ["waiting", "enrolled", "expired"]}, "role": {"type": "string"},
        "label": {"type": "string"}, "until": {"type": "number"}, "card": {"type": ["string", "null"]}, **pushed}}
    status = _get(N_("The room's latest enrol mode; a swipe reported within it is enrolled now"), room, state)
    status["responses"]["404"] = {"description": N_("no enrol mode was started in this room")}
    start = _get(N_("Enrol the next card swiped at the room's readers within `seconds` (10-600, default 60) "
                    "(the room's teacher, admin)"), room, state)
    start["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["role"], "properties": {
            "role": {"type": "string", "enum": list(contract.PODIUM_ROLES)}, "label": {"type": "string"},
            "seconds": {"type": "number", "minimum": 10, "maximum": 600}}}}}}
    start["responses"]["201"] = start["responses"].pop("200")
    start["responses"]["400"] = {"description": N_("`field` names the bad part; nothing changed")}
    minutes = {"type": ["integer", "null"], "minimum": 1, "maximum": 480}
    # A room's own setting also says "never" (0), whatever the school's default (central/edge_rules.py).
    rules_obj = {"type": "object", "properties": {"idle_off_minutes": {"type": ["integer", "null"], "minimum": 0,
                                                                      "maximum": 480}}}
    rules = _get(N_("The room's rules run by its gateway: `idle_off_minutes`, switch off after this many minutes "
                    "with nobody counted and no command (0: never, whatever the school's default; null: the "
                    "school's default, `school_idle_off_minutes`; `effective_idle_off_minutes`: the one in force, "
                    "null: never)"), room, rules_obj)
    rules["responses"]["200"]["content"]["application/json"]["schema"] = {"type": "object", "properties": {
        **rules_obj["properties"], "school_idle_off_minutes": minutes, "effective_idle_off_minutes": minutes}}
    set_rules = _get(N_("Set the room's idle-off minutes (1-480; 0: never, whatever the school's default; null: the "
                        "school's default); pushed to its gateways (the room's teacher, admin)"), room,
                     {"type": "object", "properties": {
                            **rules_obj["properties"], **pushed}})
    set_rules["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
        **rules_obj, "required": ["idle_off_minutes"]}}}}
    set_rules["responses"]["400"] = {"description": N_("`field` names the bad part; nothing changed")}
    for op in (listing, imported, removed, status, start, rules, set_rules):
        op["responses"].setdefault("404", {"description": N_("no such room (or not in your schools)")})
    return {"/api/schools/{school}/rooms/{room}/rules": {"get": rules, "put": set_rules},
            "/api/schools/{school}/rooms/{room}/cards": {"get": listing, "post": imported},
            "/api/schools/{school}/rooms/{room}/cards/{card}": {"delete": removed},
            "/api/schools/{school}/rooms/{room}/enrolment": {"get": status, "post": start}}


def _attendance() -> dict[str, Any]:
    """Attendance (dashboards/attendance.py, central/attendance.py): registers and the roster import."""
    entry = {"type": "object", "properties": {
        "date": {"type": "string"}, "period": {"type": "integer"}, "room": {"type": "string"},
        "person": {"type": "string", "description": N_("the name on the roster; an unknown card: the start of its "
                                                       "pseudonym")},
        "class": {"type": "string"}, "status": {"type": "string", "enum": ["present", "late", "absent", "excused",
                                                                            "unknown"]},
        "first_seen": {"type": ["number", "null"]}, "source": {"type": ["string", "null"], "enum": ["card", "qr", None]},
        "corrected": {"type": "boolean"}}}
    register = _paged(_get(
        N_("The register of a room's day (`gateway`) or of a class's (`school` and `class`): one entry per person "
           "and class period that has started; an account that may not see names (district-wide) gets counts per "
           "period and class instead"),
        [("gateway", "query", False), ("date", "query", False), ("school", "query", False),
         ("class", "query", False)], {"type": "array", "items": entry}))
    register["responses"]["400"] = {"description": N_("bad query parameter: `error` says why, `field` names it")}
    register["responses"]["404"] = {"description": N_("no such room or class (or not in your schools)")}
    roster = _get(N_("Replace the school's roster from a CSV body (`name,class,role,card,qr,room` or 姓名,班级,角色,"
                     "一卡通,二维码,教室; UTF-8 or GB18030); card numbers and QR codes pseudonymised as read, never "
                     "stored; all or nothing (admin)"), [("school", "path", True)], {"type": "object", "properties": {
                         "added": {"type": "integer"}, "changed": {"type": "integer"}, "removed": {"type": "integer"},
                         "classes": {"type": "integer"}}})
    roster["requestBody"] = {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}
    roster["responses"]["400"] = {"description": N_("`errors`: every problem with its line and column; nothing changed")}
    roster["responses"]["404"] = {"description": N_("no such school (or not in your schools)")}
    return {"/api/attendance": {"get": register}, "/api/schools/{school}/roster": {"post": roster}}


def _city() -> dict[str, Any]:
    """The city above the districts (dashboards/city.py, central/city.py)."""
    from central import city

    count = {"type": "integer", "minimum": 0, "maximum": city.MAX_COUNT}
    required = [k for k in city.SCHOOL_FIELDS if k not in city.OPTIONAL_FIELDS]
    school = {"type": "object", "additionalProperties": False, "required": required, "properties": {
        "school": {"type": "string", "description": N_("the school's id in its district")},
        "name": {"type": "string", "maxLength": 200}, **{k: count for k in city.COUNTS},
        "alarms_by_kind": {"type": "object", "maxProperties": city.MAX_KINDS, "additionalProperties": count},
        "usage_periods": {"type": ["integer", "null"], "minimum": 0, "maximum": city.MAX_COUNT,
                          "description": N_("class periods this ISO week so far (null: not measured)")},
        "usage_used": {"type": ["integer", "null"], "minimum": 0, "maximum": city.MAX_COUNT,
                       "description": N_("of those, the periods a display or projector was on")},
        "co2_over_s": {"type": ["integer", "null"], "minimum": 0, "maximum": city.MAX_CO2_S,
                       "description": N_("seconds this ISO week the rooms' CO2 was over the alarm limit, added up "
                                         "over the rooms (null: no sensor measured)")},
        "energy_kwh": {"type": ["number", "null"], "minimum": 0,
                       "description": N_("kWh this ISO week of the school's metered rooms (null: no meter)")}}}
    rollup = {"type": "object", "additionalProperties": False, "required": list(city.FIELDS), "properties": {
        "district": {"type": "string"}, "seq": {"type": "integer", "minimum": 1, "maximum": city.MAX_SEQ},
        "generated_at": {"type": "number", "description": N_("unix time the district made it")},
        "schools": {"type": "array", "maxItems": city.MAX_SCHOOLS, "items": school}}}
    push = _get(N_("A district's rollup of its schools (a district's push token from `campus city add-district`, not a "
                "person's): the city keeps the newest seq per district; the same seq again changes nothing"),
                schema={"type": "object", "properties": {"stored": {"type": "boolean"}, "seq": {"type": "integer"}}})
    push["requestBody"] = {"required": True, "content": {"application/json": {"schema": rollup}}}
    push["responses"].update({"400": {"description": N_("bad body: `error` says why, `field` names what "
                                                    "(`schools[3].online`, ...); nothing was changed")},
                              "401": {"description": N_("not a district's push token")},
                              "403": {"description": N_("the body names another district than the token's")},
                              "409": {"description": N_("the city holds a newer seq of this district (`seq`)")},
                              "413": {"description": N_("body too large")},
                              "415": {"description": N_("the body is not sent as application/json")},
                              "429": {"description": N_("too many wrong tokens from this address")}})
    districts = _paged(_get(N_("The city: every district with its newest push (seq, generated_at, received_at) and its "
                            "schools' totals (facility, admin)"), schema={"type": "array", "items": {"type": "object"}}))
    schools = _paged(_get(N_("One district's schools as its newest push said (facility, admin)"),
                          [("district", "path", True)], {"type": "array", "items": {"type": "object"}}))
    schools["responses"]["404"] = {"description": N_("no such district")}
    return {"/api/city/rollups": {"post": push}, "/api/districts": {"get": districts},
            "/api/districts/{district}/schools": {"get": schools}}


def _notifications() -> dict[str, Any]:
    """Alarms to people: channels, deliveries, mutes (dashboards/notifications.py, central/notify)."""
    from central.notify import channels as chan

    refused = {"400": {"description": N_("bad body: `error` says why, `field` names what; nothing was changed")},
               "404": {"description": N_("no such channel (in your schools)")},
               "415": {"description": N_("the body is not sent as application/json")}}
    text = {"type": "string"}
    channel = {"type": "object", "required": ["name", "kind"], "properties": {
        "name": {"type": "string", "maxLength": chan.NAME_MAX},
        "kind": {"type": "string", "enum": list(chan.KINDS)},
        "school": {"type": "string", "description": N_("empty: every school (district-wide admins only)")},
        "min_severity": {"type": "string", "enum": list(chan.SEVERITIES)},
        "lang": {"type": "string", "enum": list(chan.LANGS)}, "enabled": {"type": "boolean"},
        "url": {"type": "string", "maxLength": chan.URL_MAX, "description": N_("http(s): WeCom, DingTalk, webhook")},
        "msgtype": {"type": "string", "enum": list(chan.MSGTYPES)},
        "smtp_host": text, "smtp_port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "security": {"type": "string", "enum": list(chan.SMTP_SECURITY)}, "username": text, "sender": text,
        "recipients": {"type": "array", "items": text, "maxItems": chan.RECIPIENTS_MAX},
        "secret": {"type": "string", "maxLength": chan.SECRET_MAX,
                   "description": N_("SMTP password, DingTalk signing secret or webhook key; empty on update: keep it")}}}
    body = {"required": True, "content": {"application/json": {"schema": channel}}}
    one = [("chid", "path", True)]
    create = _get(N_("Add a notification channel (admin); secrets are never shown back"), schema=channel)
    create.update(requestBody=body)
    create["responses"].update(refused)
    get = _get(N_("One notification channel, secrets masked (admin)"), one, channel)
    get["responses"]["404"] = refused["404"]
    put = _get(N_("Change a notification channel (admin); its kind stays"), one, channel)
    put.update(requestBody=body)
    put["responses"].update(refused)
    delete = _get(N_("Remove a notification channel and its deliveries (admin)"), one)
    delete["responses"]["404"] = refused["404"]
    test = _get(N_("Send a test message through a channel now (admin): `sent`, or `error` from the receiver"), one,
                {"type": "object", "properties": {"sent": {"type": "boolean"}, "error": text}})
    test["responses"]["404"] = refused["404"]
    deliveries = _paged(_get(N_("Notification deliveries, newest first: status (pending, sent, failed), attempts, "
                             "next attempt, last error (admin)"), [("status", "query", False)],
                             {"type": "array", "items": {"type": "object"}}), 100, 1000)
    retry = _get(N_("Send a failed delivery again (admin)"), [("did", "path", True)])
    retry["responses"]["404"] = {"description": N_("no such delivery")}
    mute = {"type": "object", "required": ["school", "until"], "properties": {
        "school": text, "room": {"type": "string", "description": N_("a room's name; empty: the whole school")},
        "until": {"type": ["number", "string"], "description": N_("unix time, or a local date and time 2026-12-05 18:00")},
        "reason": {"type": "string", "maxLength": chan.REASON_MAX}}}
    add_mute = _get(N_("Mute a room or a school for maintenance until a time (facility, admin): its alarms are still "
                    "raised, not notified"), schema=mute)
    add_mute.update(requestBody={"required": True, "content": {"application/json": {"schema": mute}}})
    add_mute["responses"].update({"400": refused["400"], "415": refused["415"]})
    end_mute = _get(N_("End a mute now (facility, admin)"), [("mid", "path", True)])
    end_mute["responses"]["404"] = {"description": N_("no such mute")}
    return {"/api/notifications/channels": {"get": _get(N_("Notification channels, secrets masked (admin)"),
                                                        schema={"type": "array", "items": channel}),
                                            "post": create},
            "/api/notifications/channels/{chid}": {"get": get, "put": put, "delete": delete},
            "/api/notifications/channels/{chid}/test": {"post": test},
            "/api/notifications/deliveries": {"get": deliveries},
            "/api/notifications/deliveries/{did}/retry": {"post": retry},
            "/api/notifications/mutes": {"get": _get(N_("Mutes in force (facility, admin)"),
                                                     schema={"type": "array", "items": mute}), "post": add_mute},
            "/api/notifications/mutes/{mid}": {"delete": end_mute}}


def localized(doc: Any, translate: Any) -> Any:
    """`doc` with every summary and description (marked English, or a LazyText) in the language of `translate`
    (dashboards.i18n.translate: the request's)."""
    if isinstance(doc, dict):
        return {k: translate(v) if k in ("summary", "description") and isinstance(v, (str, LazyText))
                else localized(v, translate) for k, v in doc.items()}
    if isinstance(doc, list):
        return [localized(v, translate) for v in doc]
    return doc
