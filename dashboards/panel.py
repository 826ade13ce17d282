"""The teachers' classroom panel: one room's projectors and displays, at the lectern.

Pages: `GET /panel` (a teacher with one room goes straight to it; with
several, and for admins and facility managers, a room picker),
`GET /panel/<gateway>` (the room: a card per display and projector with big
buttons, the room's CO2 and temperature small at the top) and
`GET /panel/<gateway>/cards` (the cards alone, fetched by the page when the
room's equipment changes). Taps go to the command API of `dashboards.api`;
this module sends no command itself.

Live state: `GET /api/panel/<gateway>/stream` is a server-sent event stream.
It polls the ledger every `PANEL_POLL_S` (0.5 s) and sends an `event: room`
whenever the room's state changed: the gateway online or offline, each
display's and projector's status and latest values, the room's recent
commands and their statuses. A `: keepalive` comment goes out every
`PANEL_HEARTBEAT_S` (15 s) of silence, and then the caller's rights are
checked again (a teacher moved to another room stops receiving it). Since
it reads the shared database, it works whether ingest runs in this process
(`campus demo`) or in another (`campus ingest` + `campus web`). All open
streams share one ledger read per poll interval.

Rights: `may_see` to view (403 otherwise, and never another room's data);
`may_command` decides whether the controls are enabled. The command API
checks again by itself, so a disabled button is a courtesy, not the guard.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)

from campus import contract
from campus.errors import CampusError, PayloadError
from central import lists, overview
from central.ledger import Ledger
from dashboards import auth, strict_json
from dashboards.api import error
from dashboards.auth import audit, login_required, may_command, may_see
from dashboards.context import central, web
from device_profiles import available_profiles, load_profile

log = logging.getLogger(__name__)

bp = Blueprint("panel", __name__)

CONTROLLED_KINDS = ("projector", "display")
SHOWN_METRICS = ("power", "input", "volume", "muted")
ENVIRONMENT_METRICS = ("co2_ppm", "temperature_c", "humidity_pct")
RECENT_COMMANDS = 8
PICK_PAGE = 60  # rooms per page of the room picker
DEFAULT_POLL_S = 0.5
DEFAULT_HEARTBEAT_S = 15.0

INPUT_LABELS = {"hdmi": "HDMI", "vga": "VGA", "pc": "PC", "usb": "USB", "dvi": "DVI", "displayport": "DisplayPort",
                "dp": "DisplayPort", "video": "Video", "network": "Network", "component": "Component",
                "svideo": "S-Video"}


def register(app: Flask) -> None:
    """Called by `create_app` (AREAS): the blueprint, the nav link and the stream poller."""
    app.register_blueprint(bp)
    auth.add_nav(app, "My classroom", "panel.home", ("teacher", "admin"))
    state = web(app)
    states = RoomStates(state.central.ledger, max_age=app.config.get("PANEL_POLL_S", DEFAULT_POLL_S) * 0.8)
    state.panel = states
    # Open streams end when the app closes, before the ledger does.
    state.on_close.append(states.stop.set)


# ---------------------------------------------------------------- state


def input_label(name: str) -> str:
    """A button label for a profile's input name: hdmi1 -> "HDMI 1", displayport -> "DisplayPort"."""
    m = re.fullmatch(r"([A-Za-z_-]*?)[_-]?(\d*)", name)
    stem, number = (m.group(1), m.group(2)) if m else (name, "")
    label = INPUT_LABELS.get(stem.lower(), stem.replace("_", " ").capitalize() or name)
    return f"{label} {number}".strip()


def controls_for(profile_name: str) -> dict[str, Any]:
    """What a device's profile accepts: actions, inputs as (name, label), and whether it has a volume."""
    # Profile names come from the gateways: only shipped profiles are looked up
    # (load_profile would also open a path).
    if profile_name not in available_profiles():
        return {"known": False, "actions": [], "inputs": [], "volume": False, "model": ""}
    try:
        profile = load_profile(profile_name)
    except CampusError as exc:
        log.warning("panel: profile %s: %s", profile_name, exc)
        return {"known": False, "actions": [], "inputs": [], "volume": False, "model": ""}
    actions = [a for a in profile.actions if a in contract.ACTIONS]
    inputs = [(name, input_label(name)) for name in profile.inputs] if "select_input" in actions else []
    model = " · ".join(p for p in (profile.manufacturer if profile.manufacturer != "generic" else "", profile.model)
                       if p)
    return {"known": True, "actions": actions, "inputs": inputs, "volume": "set_volume" in actions, "model": model}


class RoomStates:
    """The ledger as the panel needs it, read at most once per `max_age` seconds for all open streams."""

    def __init__(self, ledger: Ledger, max_age: float) -> None:
        self.ledger = ledger
        self.max_age = max_age
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._at = float("-inf")
        self._gateways: dict[str, dict[str, Any]] = {}
        self._devices: list[dict[str, Any]] = []
        self._latest: dict[tuple[str, str], dict[str, Any]] = {}
        self._commands: dict[str, list[dict[str, Any]]] = {}

    def snapshot(self, gateway: str) -> dict[str, Any]:
        """The state of one room as sent to the page (no volatile fields, so equal means unchanged)."""
        with self.lock:
            if time.monotonic() - self._at > self.max_age:
                self._gateways = {gw["id"]: gw for gw in self.ledger.gateways()}
                self._devices = self.ledger.gateway_devices()
                self._latest = self.ledger.latest()
                self._commands = {}
                self._at = time.monotonic()
            if gateway not in self._commands:
                self._commands[gateway] = self.ledger.commands(gateway, limit=RECENT_COMMANDS)
            gw = self._gateways.get(gateway)
            devices = [d for d in self._devices if d["gateway"] == gateway]
            latest = {dev: values for (gid, dev), values in self._latest.items() if gid == gateway}
            commands = self._commands[gateway]
        environment: dict[str, Any] = {}
        for dev in devices:
            if dev["kind"] == "environment":
                for metric in ENVIRONMENT_METRICS:
                    if metric in latest.get(dev["id"], {}) and metric not in environment:
                        environment[metric] = latest[dev["id"]][metric]
        controlled = sorted((d for d in devices if d["kind"] in CONTROLLED_KINDS),
                            key=lambda d: (CONTROLLED_KINDS.index(d["kind"]), d["id"]))
        online = bool(gw and gw["online"])
        return {
            "gateway": gateway,
            "room": gw["room"] if gw else "",
            "reported": gw is not None,
            "online": online,
            # Only while offline: it would otherwise change with every heartbeat.
            "offline_since": gw["last_seen"] if gw and not online else None,
            "environment": environment,
            "devices": [{"id": d["id"], "kind": d["kind"], "profile": d["profile"], "status": d["status"],
                         "values": {m: v for m, v in latest.get(d["id"], {}).items() if m in SHOWN_METRICS},
                         "errors": {m[6:]: v for m, v in latest.get(d["id"], {}).items()
                                    if m.startswith("error_") and v != "ok"}}
                        for d in controlled],
            "commands": [{k: c[k] for k in ("id", "device", "action", "params", "status", "detail", "by",
                                             "created", "finished")} for c in commands],
        }


def _states() -> RoomStates:
    states = web().panel
    assert states is not None, "set by register()"
    return states


def _room_name(gateway: str, snapshot: dict[str, Any]) -> str | None:
    """The room's name as IT registered it, else as the gateway reported it; None if the gateway is unknown."""
    info = central().registry.gateway_info(gateway)
    if info is not None:
        return info["room"] or gateway
    return (snapshot["room"] or gateway) if snapshot["reported"] else None


def _visible_rooms(paging: lists.Paging) -> lists.Page[overview.RoomPresence]:
    """A page of the rooms the current user may see: registered or reporting, with its presence."""
    c = central()
    sight = None if g.user["role"] in ("admin", "facility") else tuple(g.user.get("gateways", []))
    return overview.room_presence(c.registry, c.ledger, paging, sight)


def _refuse_page(gateway: str) -> Any:
    audit("refused", f"403 panel {gateway}: not in the user's rooms", ok=False)
    return render_template("error.html", status=403,
                           message=f"The room of gateway {gateway} is not one of your rooms."), 403


def _card_context(gateway: str, snapshot: dict[str, Any]) -> dict[str, Any]:
    devices = [{**dev, "controls": controls_for(dev["profile"])} for dev in snapshot["devices"]]
    counts: dict[str, int] = {}
    for dev in devices:
        counts[dev["kind"]] = counts.get(dev["kind"], 0) + 1
    for dev in devices:
        kind = dev["kind"].capitalize()
        dev["title"] = kind if counts[dev["kind"]] == 1 else f"{kind} {dev['id']}"
    can = may_command(g.user, gateway)
    return {"devices": devices, "can_command": can, "enabled": can and snapshot["online"], "gateway": gateway}


# ---------------------------------------------------------------- pages


@bp.get("/panel")
@login_required
def home() -> Any:
    try:
        paging = lists.Paging.parse(request.args, default_limit=PICK_PAGE)
    except PayloadError:
        paging = lists.Paging(limit=PICK_PAGE)
    page = _visible_rooms(paging)
    if g.user["role"] == "teacher" and page.total == 1 and not paging.q and page.items:
        return redirect(url_for("panel.room", gateway=page.items[0].gateway))
    return render_template("panel_pick.html", rooms=page.items, total=page.total, paging=paging)


@bp.get("/panel/<gateway>")
@login_required
def room(gateway: str) -> Any:
    if not may_see(g.user, gateway):
        return _refuse_page(gateway)
    snapshot = _states().snapshot(gateway)
    name = _room_name(gateway, snapshot)
    if name is None:
        return render_template("error.html", status=404, message=f"There is no gateway {gateway}."), 404
    return render_template("panel.html", room=name, snapshot=snapshot, **_card_context(gateway, snapshot))


@bp.get("/panel/<gateway>/cards")
@login_required
def cards(gateway: str) -> Any:
    if not may_see(g.user, gateway):
        return _refuse_page(gateway)
    snapshot = _states().snapshot(gateway)
    return render_template("panel_cards.html", **_card_context(gateway, snapshot))


# ---------------------------------------------------------------- stream


def _sse(event: str, data: str, seq: int) -> str:
    return f"event: {event}\nid: {seq}\ndata: {data}\n\n"


@bp.get("/api/panel/<gateway>/stream")
@login_required
def stream(gateway: str) -> Any:
    if not may_see(g.user, gateway):
        audit("refused", f"403 panel stream {gateway}: not in the user's rooms", ok=False)
        return error(403, f"gateway {gateway!r} is not in your rooms")
    states = _states()
    poll_s = float(current_app.config.get("PANEL_POLL_S", DEFAULT_POLL_S))
    heartbeat_s = float(current_app.config.get("PANEL_HEARTBEAT_S", DEFAULT_HEARTBEAT_S))

    def events() -> Iterator[str]:
        last, seq = None, 0
        quiet_since = time.monotonic()
        # Tell EventSource how soon to come back after a dropped connection.
        yield "retry: 2000\n\n"
        while not states.stop.is_set():
            try:
                body = strict_json.dumps(states.snapshot(gateway), sort_keys=True, separators=(",", ":"))
            except Exception:  # a locked or briefly unreadable database: try again next round
                log.exception("panel stream %s: reading the ledger failed", gateway)
                body = last
            if body is not None and body != last:
                last, seq = body, seq + 1
                yield _sse("room", body, seq)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= heartbeat_s:
                user = auth.current_user(recheck=True)  # logged out meanwhile: the stream ends
                if user is None or not may_see(user, gateway):
                    yield _sse("denied", json.dumps({"error": "you may no longer see this room"}), seq + 1)
                    return
                yield ": keepalive\n\n"
                quiet_since = time.monotonic()
            states.stop.wait(poll_s)

    response = Response(stream_with_context(events()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache, no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response
