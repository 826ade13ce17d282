"""Podium cards (刷卡授权): who may start a class by a swipe, per room, as pages and JSON.

A teacher manages the rooms assigned to them, an admin every room in sight (a school-scoped admin: its
schools); facility managers read. Cards are shown by the start of their pseudonym, never by number
(central/podium.py keeps none). Each change is audited and pushed to the room's gateways when this web
app has an MQTT connection (else the provisioning page's push sends it later).

Pages: `/podium` the rooms; `/podium/<school>/<room>` its cards, "enrol the next swipe" and the CSV import.
JSON: `GET|POST /api/schools/<school>/rooms/<room>/cards` (POST: a CSV body, all or nothing),
`DELETE /api/schools/<school>/rooms/<room>/cards/<card>`, `GET|POST /api/schools/<school>/rooms/<room>/enrolment`.

The room's rules live on the same page (they are the room's, pushed to its gateways the same way):
idle-off minutes (central/edge_rules.py), `GET|PUT /api/schools/<school>/rooms/<room>/rules`, and the
page's form `POST /podium/<school>/<room>/rules`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, abort, g, jsonify, make_response, render_template, request

from campus import contract, names
from campus.errors import CampusError, ConfigError
from campus.i18n import N_, lazy_gettext
from central import edge_rules, podium
from central import provisioning as prov
from dashboards import auth
from dashboards.auth import audit, login_required, not_found, refuse, school_scoped, sight
from dashboards.context import central
from dashboards.i18n import error_text, site_zone, translate
from dashboards.strict_json import json_object

bp = Blueprint("podium", __name__)
MANAGERS = ("admin", "teacher")


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    auth.add_nav(app, N_("Podium cards"), "podium.rooms_page", ("admin", "facility", "teacher"))


def _room(school: str, room: str, manage: bool) -> int:
    """The id of the room of the URL, if the caller may see it (`manage`: and change its cards); else the
    refusal: a 404 for a school outside a scoped account's, a 403 for another teacher's room."""
    user = g.user
    if school_scoped(user) and not sight(user).allows_school(school):
        abort(make_response(not_found("room")))
    try:
        names.identifier(school, "school")
    except names.BadName:
        abort(404, f"no school {school[:64]!r}: not a valid id")
    # A NUL would fail the query itself on PostgreSQL (a 503), and no room name is that long or holds one.
    rid = None if len(room) > names.ROOM_MAX or "\x00" in room else podium.find_room(central().registry, school, room)
    if rid is None:
        abort(404, f"no room {room[:64]!r} in school {school!r}")
    if user["role"] == "teacher" and rid not in user.get("room_ids", []):
        abort(make_response(refuse(403, "not one of your rooms")))
    if manage and user["role"] not in MANAGERS:
        abort(make_response(refuse(403, "enrolling cards needs an admin or the room's teacher")))
    return rid


def push_gateways(gateways: list[str]) -> dict[str, Any]:
    """Send the changed config (allow-list, rules) to `gateways` now, if this app can publish (the school's
    idle-off default, dashboards/timetables.py, pushes through here too)."""
    service = central().commands
    client = service.client if service is not None else None
    if not gateways:
        return {"pushed": [], "not_pushed": None}
    if client is None:
        return {"pushed": [], "not_pushed": "this web app has no MQTT connection: push the gateways' config "
                                            "from provisioning"}
    pushed = []
    for gateway in gateways:
        try:
            prov.push_config(central().registry, client, gateway, g.user["user"], site_zone=site_zone())
            pushed.append(gateway)
        except CampusError as exc:
            return {"pushed": pushed, "not_pushed": f"{gateway}: {exc}"}
    return {"pushed": pushed, "not_pushed": None}


def _enrolment(rid: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The room's enrol mode (completed now if its swipe came) and what was pushed if it just enrolled."""
    state, changed = podium.enrolment(central().registry, central().ledger, rid, g.user["user"])
    push = push_gateways(changed)
    if changed and state is not None:
        audit("podium.enrol", f"card {state['card']} enrolled by a swipe as {state['role']}"
                              f"{' ' + repr(state['label']) if state['label'] else ''}")
    return state, push


def _import(school: str, room: str | None, data: bytes, rid: int | None) -> tuple[podium.CardImport, dict[str, Any]]:
    user = g.user
    allowed = None
    if user["role"] == "teacher":
        allowed = set(user.get("rooms", [])) if room is None else {room}
    report = podium.import_cards(central().registry, school, data, user["user"], room=room, rooms_allowed=allowed)
    where = f"{school}/{room}" if room else school
    if report.ok:
        audit("podium.import", f"{where}: {report.added} cards added, {report.changed} changed")
        return report, push_gateways(report.gateways)
    # The problems name lines and columns, never a card number: they may go into the audit trail.
    audit("podium.import", f"{where}: refused, {len(report.errors)} problems, first: {report.errors[0]}", ok=False)
    return report, {}


# ---------------------------------------------------------------- JSON


@bp.get("/api/schools/<school>/rooms/<room>/cards")
@login_required
def api_cards(school: str, room: str) -> Any:
    return jsonify(podium.cards(central().registry, _room(school, room, manage=False)))


@bp.post("/api/schools/<school>/rooms/<room>/cards")
@login_required(roles=MANAGERS)
def api_import(school: str, room: str) -> Any:
    """A CSV body (`card,role,label`, UTF-8 or GB18030): enrolled all or nothing."""
    rid = _room(school, room, manage=True)
    report, push = _import(school, room, request.get_data(), rid)
    if not report.ok:
        first = report.errors[0]
        return jsonify({"error": f"line {first.line}: {first.column + ': ' if first.column else ''}{translate(first.message)}",
                        "field": first.column or None,
                        "errors": [{"line": e.line, "column": e.column, "message": translate(e.message)}
                                   for e in report.errors]}), 400
    return jsonify({"added": report.added, "changed": report.changed, **push})


@bp.delete("/api/schools/<school>/rooms/<room>/cards/<card>")
@login_required(roles=MANAGERS)
def api_remove(school: str, room: str, card: str) -> Any:
    rid = _room(school, room, manage=True)
    try:
        gone, changed = podium.remove_card(central().registry, rid, card)
    except LookupError as exc:
        return jsonify({"error": str(translate(exc.args[0]))}), 404
    except ConfigError as exc:
        return jsonify({"error": error_text(exc), "field": "card"}), 400
    audit("podium.remove", f"{school}/{room}: card {gone['card']} ({gone['role']}) removed")
    return jsonify({"removed": gone, **push_gateways(changed)})


@bp.get("/api/schools/<school>/rooms/<room>/enrolment")
@login_required
def api_enrolment(school: str, room: str) -> Any:
    rid = _room(school, room, manage=False)
    state, push = _enrolment(rid)
    if state is None:
        return jsonify({"error": "no enrol mode was started in this room"}), 404
    return jsonify({**state, **push})


@bp.post("/api/schools/<school>/rooms/<room>/enrolment")
@login_required(roles=MANAGERS)
def api_start_enrolment(school: str, room: str) -> Any:
    """Body {role, label?, seconds?}: enrol the next card swiped at the room's readers within `seconds`."""
    rid = _room(school, room, manage=True)
    body = json_object()
    fields = {"role": body.get("role", ""), "label": body.get("label", ""),
              "seconds": body.get("seconds", podium.ENROL_DEFAULT_S)}
    for name, kind in (("role", str), ("label", str), ("seconds", (int, float))):
        if isinstance(fields[name], bool) or not isinstance(fields[name], kind):
            return jsonify({"error": f"{name}: wrong type", "field": name}), 400
    try:
        state = podium.start_enrolment(central().registry, rid, fields["role"], fields["label"], g.user["user"],
                                       float(fields["seconds"]))
    except ConfigError as exc:
        field = next((f for f in fields if str(exc).startswith(f)), None)
        return jsonify({"error": error_text(exc), **({"field": field} if field else {})}), 400
    audit("podium.enrol", f"{school}/{room}: enrol mode for {fields['seconds']:g} s as {state['role']}")
    return jsonify(state), 201


@bp.get("/api/schools/<school>/rooms/<room>/rules")
@login_required
def api_rules(school: str, room: str) -> Any:
    return jsonify(edge_rules.settings(central().registry, _room(school, room, manage=False)))


@bp.put("/api/schools/<school>/rooms/<room>/rules")
@login_required(roles=MANAGERS)
def api_set_rules(school: str, room: str) -> Any:
    """Body {idle_off_minutes: 1..480, 0 (never, whatever the school's default) or null (the school's default)}:
    the room's idle-off, pushed to its gateways."""
    rid = _room(school, room, manage=True)
    body = json_object()
    unknown = sorted(set(body) - {"idle_off_minutes"})
    if unknown:
        return jsonify({"error": str(translate(lazy_gettext("unknown field %(field)s (the rules have "
                                                            "idle_off_minutes)", field=repr(unknown[0][:40])))),
                        "field": unknown[0][:40]}), 400
    if "idle_off_minutes" not in body:
        return jsonify({"error": str(translate(lazy_gettext("idle_off_minutes: missing"))),
                        "field": "idle_off_minutes"}), 400
    return _set_rules(school, room, rid, body["idle_off_minutes"], json=True)


def set_and_push_idle_off(action: str, subject: str, value: Any,
                          set_minutes: Callable[[], tuple[int | None, list[str]]],
                          said: Callable[[int | None, list[str]], str]) -> tuple[int | None, dict[str, Any]]:
    """Set idle-off minutes, a room's or a school's default (`set_minutes`, central/edge_rules.py), audit it as
    `action` of `subject` (`said`: the detail, from the minutes and the gateways changed) and push those
    gateways: the one way both forms and both APIs do it (dashboards/timetables.py the school's). A bad value
    is audited as refused and raised again (ConfigError: nothing changed)."""
    try:
        minutes, changed = set_minutes()
    except ConfigError:
        audit(action, f"{subject}: refused {str(value)[:40]!r}", ok=False)
        raise
    audit(action, f"{subject}: {said(minutes, changed)}")
    return minutes, push_gateways(changed)


def _set_rules(school: str, room: str, rid: int, value: Any, *, json: bool) -> Any:
    try:
        minutes, push = set_and_push_idle_off(
            "rules.idle_off", f"{school}/{room}", value,
            lambda: edge_rules.set_idle_off(central().registry, rid, value),
            lambda minutes, changed: "idle-off " + ("the school's default" if minutes is None else "never"
                                                    if minutes == edge_rules.IDLE_OFF_NEVER else str(minutes))
                                     + (" (unchanged)" if not changed else ""))
    except ConfigError as exc:
        if json:
            return jsonify({"error": error_text(exc), "field": "idle_off_minutes"}), 400
        return _page(school, room, rid, error=error_text(exc))
    if json:
        return jsonify({"idle_off_minutes": minutes, **push})
    return _page(school, room, rid, push=push)


# ---------------------------------------------------------------- pages


@bp.get("/podium")
@login_required
def rooms_page() -> Any:
    user = g.user
    if user["role"] == "teacher":
        found = podium.rooms(central().registry, room_ids=list(user.get("room_ids", [])))
    else:
        scope = sight(user)
        found = podium.rooms(central().registry, schools=scope.schools)
    return render_template("podium_rooms.html", rooms=found)


@bp.get("/podium/example.csv")
@login_required
def example_csv() -> Any:
    return Response("\ufeff" + podium.EXAMPLE_CSV, mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=podium-cards.csv"})


@bp.get("/podium/<school>/<room>")
@login_required
def room_page(school: str, room: str) -> Any:
    rid = _room(school, room, manage=False)
    state, push = _enrolment(rid)
    return _page(school, room, rid, enrolment=state, push=push)


@bp.post("/podium/<school>/<room>/enrol")
@login_required(roles=MANAGERS)
def enrol(school: str, room: str) -> Any:
    rid = _room(school, room, manage=True)
    try:
        seconds = float(request.form.get("seconds") or podium.ENROL_DEFAULT_S)
        state = podium.start_enrolment(central().registry, rid, request.form.get("role", ""),
                                       request.form.get("label", ""), g.user["user"], seconds)
    except (ConfigError, ValueError) as exc:
        return _page(school, room, rid, error=error_text(exc) if isinstance(exc, ConfigError)
                     else translate(N_("seconds: not a number")))
    audit("podium.enrol", f"{school}/{room}: enrol mode for {seconds:g} s as {state['role']}")
    return _page(school, room, rid, enrolment=state)


@bp.post("/podium/<school>/<room>/import")
@login_required(roles=MANAGERS)
def import_page(school: str, room: str) -> Any:
    rid = _room(school, room, manage=True)
    upload = request.files.get("file")
    data = upload.read() if upload else b""
    if not data:
        data = request.form.get("text", "").encode()
    report, push = _import(school, room, data, rid)
    return _page(school, room, rid, report=report, push=push)


@bp.post("/podium/<school>/<room>/rules")
@login_required(roles=MANAGERS)
def rules_form(school: str, room: str) -> Any:
    rid = _room(school, room, manage=True)
    return _set_rules(school, room, rid, request.form.get("idle_off_minutes", ""), json=False)


@bp.post("/podium/<school>/<room>/cards/<card>/remove")
@login_required(roles=MANAGERS)
def remove(school: str, room: str, card: str) -> Any:
    rid = _room(school, room, manage=True)
    try:
        gone, changed = podium.remove_card(central().registry, rid, card)
    except LookupError as exc:
        return _page(school, room, rid, error=str(translate(exc.args[0])))
    except ConfigError as exc:
        return _page(school, room, rid, error=error_text(exc))
    audit("podium.remove", f"{school}/{room}: card {gone['card']} ({gone['role']}) removed")
    return _page(school, room, rid, removed=gone, push=push_gateways(changed))


def _page(school: str, room: str, rid: int, *, error: str | None = None, report: podium.CardImport | None = None,
          enrolment: dict[str, Any] | None = None, removed: dict[str, Any] | None = None,
          push: dict[str, Any] | None = None) -> Any:
    status = 400 if error or (report is not None and not report.ok) else 200
    may_manage = g.user["role"] in MANAGERS
    return render_template("podium_room.html", school=school, room=room, cards=podium.cards(central().registry, rid),
                           error=error, report=report, enrolment=enrolment, removed=removed, push=push or {},
                           may_manage=may_manage, roles=contract.PODIUM_ROLES,
                           rules=edge_rules.settings(central().registry, rid), idle_range=edge_rules.IDLE_OFF_RANGE,
                           default_seconds=int(podium.ENROL_DEFAULT_S)), status
