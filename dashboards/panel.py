"""The teachers' classroom panel: one room's projectors and displays, at the lectern.

Pages: `GET /panel` (a teacher with one room goes straight to it; with
several, and for admins and facility managers, a room picker),
`GET /panel/<gateway>` (the room: a card per display and projector with big
buttons, the room's CO2 and temperature small at the top) and
`GET /panel/<gateway>/cards` (the cards alone, fetched by the page when the
room's equipment changes). Taps go to the command API of `dashboards.api`;
this module sends no command itself.

Live state: `GET /api/panel/<gateway>/stream` is a server-sent event stream.
It sends an `event: room` whenever the room's state changed: the gateway online or offline, each
display's and projector's status and latest values, the room's recent
commands and their statuses, and what the room did by itself lately (`automatic`: schedule runs, a class
started or ended at the podium, an edge rule such as idle-off; central/room_actions.py), shown as "why"
lines in the school's time zone. A `: keepalive` comment goes out every
`PANEL_HEARTBEAT_S` (15 s) of silence, and then the caller's rights are
checked again (a teacher moved to another room stops receiving it). Since
it reads the shared database, it works whether ingest runs in this process
(`campus demo`) or in another (`campus ingest` + `campus web`). One poller
thread per process (`RoomStates`) reads every watched room in one ledger read
each `PANEL_POLL_S` (0.5 s) and wakes the streams whose room changed; a stream
itself never reads the database (only its heartbeat's rights check does).

Rights: `may_see` to view (403 otherwise, and never another room's data);
`may_command` decides whether the controls are enabled. The command API
checks again by itself, so a disabled button is a courtesy, not the guard.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from flask_babel import gettext

from campus import contract
from campus.errors import CampusError, PayloadError
from campus.i18n import N_, lazy_gettext
from central import lists, overview, room_actions
from central.attendance import EVENT_TYPES as ATTENDANCE_EVENTS
from central.ledger import Ledger
from dashboards import auth, strict_json
from dashboards.api import error
from dashboards.auth import audit, login_required, may_command, may_see, not_found, school_scoped, sight
from dashboards.context import central, web
from dashboards.i18n import gateway_text, gateway_texts, term
from device_profiles import available_profiles, load_profile

log = logging.getLogger(__name__)

bp = Blueprint("panel", __name__)

CONTROLLED_KINDS = ("projector", "display")
SHOWN_METRICS = ("power", "input", "volume", "muted")
ENVIRONMENT_METRICS = ("co2_ppm", "temperature_c", "humidity_pct")
RECENT_COMMANDS = 8
RECENT_COMMANDS_S = 24 * 3600.0  # a panel shows the room's commands of the last day, the newest 8
PICK_PAGE = 60  # rooms per page of the room picker
DEFAULT_POLL_S = 0.5
# A room nobody watched yet is read at once, unless the poller read others less than this ago: then they
# are read together a moment later. A read costs ~2 ms whatever its rooms (five statements); 500 panels
# opened at 8:00 were read in ~180 reads of 1-3 rooms, now in batches (bench/panels.py).
GATHER_S = 0.025
DEFAULT_HEARTBEAT_S = 15.0
# Streams being opened at once (`_OpeningGate`), and how long one waits for its turn before it goes anyway.
OPENING_AT_ONCE = 4
OPENING_WAIT_S = 2.0

INPUT_LABELS = {"hdmi": "HDMI", "vga": "VGA", "pc": "PC", "usb": "USB", "dvi": "DVI", "displayport": "DisplayPort",
                "dp": "DisplayPort", "video": N_("Video"), "network": N_("Network"), "component": N_("Component"),
                "svideo": "S-Video"}


def register(app: Flask) -> None:
    """Called by `create_app` (AREAS): the blueprint, the nav link and the stream poller."""
    app.register_blueprint(bp)
    auth.add_nav(app, N_("My classroom"), "panel.home", ("teacher", "admin"))
    state = web(app)
    states = RoomStates(state.central.ledger, float(app.config.get("PANEL_POLL_S", DEFAULT_POLL_S)))
    state.panel = states
    app.wsgi_app = _OpeningGate(app.wsgi_app)  # type: ignore[method-assign]
    # Open streams end when the app closes (or its server stops), before the ledger does.
    state.on_close.append(states.close)


# ---------------------------------------------------------------- state


def input_label(name: str) -> str:
    """A button label for a profile's input name: hdmi1 -> "HDMI 1", displayport -> "DisplayPort"."""
    m = re.fullmatch(r"([A-Za-z_-]*?)[_-]?(\d*)", name)
    stem, number = (m.group(1), m.group(2)) if m else (name, "")
    label = INPUT_LABELS.get(stem.lower(), stem.replace("_", " ").capitalize() or name)
    return f"{gettext(label)} {number}".strip()  # in the request's language (English outside a request)


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


class _Watched:
    """One room with open streams: how many, its (version, JSON) as last read, and the condition its streams
    wait on, with a lock of its own. Not the poller's lock: a stream woken for its room takes its own lock at
    once instead of queueing behind the poller, which goes on waking the other rooms of its read (with one
    shared lock, each of 500 streams opened at once woke, found the lock held and slept again: a fifth of
    the web's CPU during the burst, bench/panels.py)."""

    __slots__ = ("streams", "version", "body", "changed", "read_at")

    def __init__(self) -> None:
        self.streams = 0
        self.version = 0  # 0: not read yet
        self.body = ""
        self.changed = threading.Condition()
        self.read_at = -math.inf  # when the poller's last read of it began (monotonic; the poller's alone)


class RoomStates:
    """The rooms with open streams, read by one poller thread for the whole process.

    Every `poll_s` the poller reads the rooms of every gateway some stream watches in one ledger read
    (`Ledger.rooms`: three statements, whatever the number of streams or gateways), builds each room's
    snapshot and its JSON once, and wakes only the streams of the rooms whose JSON changed. A stream for
    a room nobody watched yet wakes the poller at once, which reads just the new rooms, so the first event
    does not wait for the next tick. Before, each stream polled by itself: with hundreds of panels open
    the web process spent its time in the same reads.
    """

    def __init__(self, ledger: Ledger, poll_s: float = DEFAULT_POLL_S) -> None:
        self.ledger = ledger
        self.poll_s = poll_s
        self.stop = threading.Event()
        self.ticks = 0  # full reads of every watched room so far (tests and the benchmark count them)
        self._lock = threading.Lock()  # the poller's: which rooms are watched, which are unread
        self._wake = threading.Condition(self._lock)  # a new room, closing
        self._watched: dict[str, _Watched] = {}
        self._unread: set[str] = set()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ for pages

    def snapshot(self, gateway: str) -> dict[str, Any]:
        """The room now, as sent to the page (no volatile fields, so equal means unchanged)."""
        since = time.time() - RECENT_COMMANDS_S
        rooms = self.ledger.rooms([gateway], RECENT_COMMANDS, since)
        events = room_actions.recent(self.ledger.db, [gateway], since)
        return room_snapshot(gateway, rooms.get(gateway), events.get(gateway, []), self._swiped([gateway]).get(gateway))

    def _swiped(self, gateways: list[str]) -> dict[str, float]:
        """The time of each room's newest swipe or check-in (one statement for every watched room): a new one
        changes the snapshot, so the page reloads its attendance (dashboards/attendance.py)."""
        newest = self.ledger.newest_events(gateways, ATTENDANCE_EVENTS)
        out: dict[str, float] = {}
        for (gw, _type), ev in newest.items():
            out[gw] = max(out.get(gw, 0.0), ev["ts"])
        return out

    # ------------------------------------------------------------ for streams

    @contextmanager
    def watching(self, gateway: str) -> Iterator[None]:
        """The poller reads `gateway` for as long as this is open."""
        with self._lock:
            if self.stop.is_set():
                raise StreamsClosed
            room = self._watched.get(gateway)
            if room is None:
                room = self._watched[gateway] = _Watched()
                self._unread.add(gateway)
                self._wake.notify()
            room.streams += 1
            if self._thread is None:
                # Started by the first stream, in the process that serves it (a gunicorn worker, after the fork).
                self._thread = threading.Thread(target=self._run, name="panel-poller", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                room.streams -= 1
                if not room.streams and self._watched.get(gateway) is room:
                    del self._watched[gateway]
                    self._unread.discard(gateway)

    def next(self, gateway: str, version: int, timeout: float) -> tuple[int, str] | None:
        """The room's (version, JSON) once it is newer than `version`; None after `timeout` seconds without
        a change, or when closing (see `closed`). Only while `watching(gateway)`."""
        room = self._watched[gateway]
        with room.changed:
            room.changed.wait_for(lambda: self.stop.is_set() or room.version != version, max(0.0, timeout))
            if room.version in (0, version) or self.stop.is_set():
                return None
            return room.version, room.body

    @property
    def closed(self) -> bool:
        return self.stop.is_set()

    def close(self) -> None:
        """End every open stream (they return at once) and the poller."""
        with self._lock:
            self.stop.set()
            self._wake.notify_all()
            rooms = list(self._watched.values())
        for room in rooms:
            with room.changed:
                room.changed.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    # ------------------------------------------------------------ the poller

    def _run(self) -> None:
        due = 0.0  # when the next full read of every watched room is due (monotonic)
        last = -math.inf  # when the last read began
        while True:
            with self._lock:
                # Sleep until the tick, unless a room nobody has read yet needs its first event now (or as
                # soon as GATHER_S has passed since the last read).
                while not self.stop.is_set():
                    now = time.monotonic()
                    if not self._watched:
                        self._wake.wait()
                    elif now >= due or (self._unread and now >= last + GATHER_S):
                        break
                    else:
                        self._wake.wait(min(due, last + GATHER_S) - now if self._unread else due - now)
                if self.stop.is_set():
                    return
                began = last = time.monotonic()
                full = began >= due
                if full:
                    # Every room not read in the last half tick: a room whose first read was a moment ago
                    # (hundreds of panels opening at 8:00, each read as it comes) is not read again at once.
                    # So a room is read every poll_s to 1.5 poll_s.
                    fresh = began - self.poll_s / 2
                    gateways = [gw for gw, room in self._watched.items() if room.read_at <= fresh]
                else:
                    gateways = list(self._unread)
                self._unread.clear()
                reading = [self._watched[gw] for gw in gateways]
            if full:
                due = began + self.poll_s
            if not gateways:
                continue
            for room in reading:
                room.read_at = began
            try:
                since = time.time() - RECENT_COMMANDS_S
                rooms = self.ledger.rooms(gateways, RECENT_COMMANDS, since)
                # One more statement a tick each, whatever the number of rooms: what each did by itself, and
                # its newest swipe (the attendance box).
                events = room_actions.recent(self.ledger.db, gateways, since)
                swiped = self._swiped(gateways)
                bodies = {gw: strict_json.dumps(room_snapshot(gw, rooms.get(gw), events.get(gw, []), swiped.get(gw)),
                                                sort_keys=True, separators=(",", ":")) for gw in gateways}
            except Exception:  # a locked or briefly unreadable database: the streams wait for the next tick
                log.exception("panel: reading the rooms failed")
                self.stop.wait(self.poll_s)
                continue
            if full:
                self.ticks += 1
            for room, body in zip(reading, bodies.values(), strict=True):
                with room.changed:
                    if room.version == 0 or room.body != body:
                        room.version, room.body = room.version + 1, body
                        room.changed.notify_all()


class _OpeningGate:
    """WSGI middleware: a panel stream's request takes one of `OPENING_AT_ONCE` turns from its start (the
    request, the caller's sign-in and rights: ~1-2 ms of the GIL) until its body's first chunk, which
    `stream` sends once the room is watched, or until it ends. Why: when 500 panels open at 8:00 in one
    process, all 500 requests took turns at the GIL, so each reached its first event near the end of the
    burst (bench/panels.py: the median first event was close to the last). A few at a time, in the order
    they came (a condition wakes its oldest waiter first), the first half is served in about half the time.
    The turn is not held while the stream waits for its room's first read (the poller reads the rooms
    opened meanwhile together), and a request that waited `wait_s` goes on without one: a stuck opening
    cannot stall the rest for long."""

    def __init__(self, app: Callable[..., Any], slots: int = OPENING_AT_ONCE,
                 wait_s: float = OPENING_WAIT_S) -> None:
        self.app = app
        self.wait_s = wait_s
        self.free = slots    # turns not taken
        self.waiting = 0     # requests waiting for one
        self._turns = threading.Condition()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if not (path.startswith("/api/panel/") and path.endswith("/stream")):
            return self.app(environ, start_response)
        held = self._take()
        try:
            body = self.app(environ, start_response)
        except BaseException:
            if held:
                self.give_back()
            raise
        return _UntilFirstChunk(body, self if held else None)

    def _take(self) -> bool:
        with self._turns:
            self.waiting += 1
            try:
                if not self._turns.wait_for(lambda: self.free > 0, self.wait_s):
                    return False
                self.free -= 1
                return True
            finally:
                self.waiting -= 1

    def give_back(self) -> None:
        with self._turns:
            self.free += 1
            self._turns.notify()


class _UntilFirstChunk:
    """A stream's response body that gives its turn back at its first chunk, or when it is closed."""

    def __init__(self, body: Any, gate: _OpeningGate | None) -> None:
        self._body = body
        self._gate = gate  # None: no turn taken (or given back already)

    def release(self) -> None:
        # Only the serving thread iterates and closes a body: no lock needed.
        if self._gate is not None:
            self._gate, gate = None, self._gate
            gate.give_back()

    def __iter__(self) -> Iterator[Any]:
        try:
            for chunk in self._body:
                self.release()
                yield chunk
        finally:
            self.release()

    def close(self) -> None:
        self.release()
        close = getattr(self._body, "close", None)
        if close is not None:
            close()


class StreamsClosed(Exception):
    """The app is closing: no new stream."""


def room_snapshot(gateway: str, room: dict[str, Any] | None, events: list[dict[str, Any]] | None = None,
                  swiped: float | None = None) -> dict[str, Any]:
    """One room as the panel shows it, from `Ledger.rooms` (None: a gateway the ledger never heard of), its
    automatic-action `events` (central/room_actions.py `recent`) and the time of its newest swipe or
    check-in (`swiped`)."""
    room = room or {}
    devices = [{"id": dev, "kind": info.get("kind", ""), "profile": info.get("profile", ""),
                "status": info.get("status", "ok") if room.get("online") else "offline"}
               for dev, info in sorted(room.get("devices", {}).items())]
    latest = room.get("latest", {})
    environment: dict[str, Any] = {}
    for dev in devices:
        if dev["kind"] == "environment":
            for metric in ENVIRONMENT_METRICS:
                if metric in latest.get(dev["id"], {}) and metric not in environment:
                    environment[metric] = latest[dev["id"]][metric]
    controlled = sorted((d for d in devices if d["kind"] in CONTROLLED_KINDS),
                        key=lambda d: (CONTROLLED_KINDS.index(d["kind"]), d["id"]))
    online = bool(room.get("online"))
    return {
        "gateway": gateway,
        "room": room.get("room", ""),
        "reported": bool(room),
        "online": online,
        # Only while offline: it would otherwise change with every heartbeat.
        "offline_since": room.get("last_seen") if room and not online else None,
        "environment": environment,
        "devices": [{**d, "values": {m: v for m, v in latest.get(d["id"], {}).items() if m in SHOWN_METRICS},
                     "errors": {m[6:]: v for m, v in latest.get(d["id"], {}).items()
                                if m.startswith("error_") and v != "ok"}}
                    for d in controlled],
        # `detail` is the gateway's English; `details` the same in each language of the site (the snapshot is
        # built once for readers of every language, and each page shows its own: static/panel.js).
        "commands": [{**{k: c[k] for k in ("id", "device", "action", "params", "status", "detail", "by",
                                            "created", "finished")}, "details": gateway_texts(c["detail"])}
                     for c in room.get("commands", [])],
        # A rule's reason as the gateway marked it, in each language too (`reasons`: the script redraws it).
        "automatic": [{**item, "reasons": gateway_texts(_rule_reason(item))} if item.get("reason_marked") else item
                      for item in room_actions.actions(events or [], room.get("commands", []))],
        "swiped": swiped,
    }


# What the room did by itself (central/room_actions.py), in words: one message per source and action, so each
# language can say it in its own order. static/panel.js says the same with the same messages.
SCHEDULE_WORDS = {"power_off": N_("%(devices)s switched off by schedule “%(name)s”"),
                  "power_on": N_("%(devices)s switched on by schedule “%(name)s”"),
                  "mute": N_("%(devices)s muted by schedule “%(name)s”"),
                  "unmute": N_("%(devices)s unmuted by schedule “%(name)s”")}
SCHEDULE_OTHER = N_("Schedule “%(name)s” ran on %(devices)s")
SCHEDULE_MISSED = N_("Schedule “%(name)s” was missed: the gateway was not running then")
SCHEDULE_INTERRUPTED = N_("Schedule “%(name)s” was interrupted")
# Not run at all (contract.SCHEDULE_SKIPPED): said as such, never "switched off … (skipped)", which reads as done.
SCHEDULE_SKIPPED_WORDS = {contract.OVERRIDE_REASON:
                          N_("Schedule “%(name)s” was not run: a teacher kept the room on for this period")}
SCHEDULE_SKIPPED = N_("Schedule “%(name)s” was not run (%(reason)s)")
PODIUM_WORDS = {("started", "swipe"): N_("Class started with a card at the podium"),
                ("ended", "swipe"): N_("Class ended with a card at the podium"),
                ("ended", "timeout"): N_("Class ended by itself: nobody swiped a card before the timeout")}
IDLE_OFF = N_("%(devices)s switched off: nobody was in the room")
IDLE_OFF_INTERRUPTED = N_("Switching off an empty room was interrupted: the gateway stopped during it")
RULE_OTHER = N_("%(devices)s switched by rule “%(rule)s” (%(reason)s)")
STATUS_AFTER = N_("(%(status)s)")
THE_EQUIPMENT = N_("the equipment")
STATUS_WORDS = {"failed": N_("failed"), "rejected": N_("refused"), "expired": N_("expired"), "pending": N_("waiting…"),
                "skipped": N_("skipped")}


SAID_IN_FULL = ("missed", "interrupted", contract.SCHEDULE_SKIPPED)  # outcomes whose words say how it went


def why_text(item: dict[str, Any], kinds: dict[str, str]) -> str:
    """One automatic action (central/room_actions.py `actions`) as the panel says it, in the request's
    language; `kinds`: the room's devices' kinds, to name them ("Projector", "投影机")."""
    names = []
    for dev in item["devices"]:
        name = term("kind", kinds[dev]) if dev in kinds else dev
        if name not in names:
            names.append(name)
    devices = gettext(", ").join(names) if names else gettext(THE_EQUIPMENT)
    if item["source"] == "schedule":
        if item["outcome"] == "missed":
            text = gettext(SCHEDULE_MISSED, name=item["name"])
        elif item["outcome"] == "interrupted":
            text = gettext(SCHEDULE_INTERRUPTED, name=item["name"])
        elif item["outcome"] == contract.SCHEDULE_SKIPPED:
            words = SCHEDULE_SKIPPED_WORDS.get(item["reason"])
            text = gettext(words, name=item["name"]) if words else gettext(SCHEDULE_SKIPPED, name=item["name"],
                                                                           reason=item["reason"])
        else:
            text = gettext(SCHEDULE_WORDS.get(item["action"], SCHEDULE_OTHER), devices=devices, name=item["name"])
    elif item["source"] == "podium":
        text = gettext(PODIUM_WORDS.get((item["outcome"], item["reason"]), PODIUM_WORDS[(item["outcome"], "swipe")]
                                        if item["outcome"] in ("started", "ended") else THE_EQUIPMENT))
    elif item["rule"] == contract.RULE_IDLE_OFF:
        words = IDLE_OFF_INTERRUPTED if item["outcome"] == "interrupted" else IDLE_OFF
        text = gettext(words, devices=devices)
    else:
        text = gettext(RULE_OTHER, devices=devices, rule=item["rule"], reason=gateway_text(_rule_reason(item)))
    if item["status"] != "done" and item["outcome"] not in SAID_IN_FULL:
        status = STATUS_WORDS.get(item["status"])
        text += " " + gettext(STATUS_AFTER, status=gettext(status) if status else item["status"])
    return text[:1].upper() + text[1:]


def _rule_reason(item: dict[str, Any]) -> Any:
    """A rule run's reason: the gateway's words, marked where it marked them (campus/contract.py EVENT_TEXTS),
    to be said in the reader's language; an older agent's plain English as it came."""
    return contract.marked_text({**(item.get("reason_marked") or {}), "reason": item["reason"]}, "reason")


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
    return overview.room_presence(c.registry, c.ledger, paging, sight(g.user))


def _refuse_page(gateway: str) -> Any:
    if school_scoped(g.user):
        return not_found("room")
    audit("refused", f"403 panel {gateway}: not in the user's rooms", ok=False)
    return render_template("error.html", status=403,
                           message=gettext("The room of gateway %(gateway)s is not one of your rooms.",
                                           gateway=gateway)), 403


def _card_context(gateway: str, snapshot: dict[str, Any]) -> dict[str, Any]:
    devices = [{**dev, "controls": controls_for(dev["profile"])} for dev in snapshot["devices"]]
    counts: dict[str, int] = {}
    for dev in devices:
        counts[dev["kind"]] = counts.get(dev["kind"], 0) + 1
    for dev in devices:
        name = term("kind", dev["kind"])  # in the reader's language: "Projector", "投影机"
        kind = name[:1].upper() + name[1:]
        dev["title"] = kind if counts[dev["kind"]] == 1 else f"{kind} {dev['id']}"
    can = may_command(g.user, gateway)
    return {"devices": devices, "can_command": can, "enabled": can and snapshot["online"], "gateway": gateway}


def _why(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """The room's automatic actions with their words, for the page's first render (the script redraws them)."""
    kinds = {d["id"]: d["kind"] for d in snapshot["devices"]}
    return [{**item, "text": why_text(item, kinds)} for item in snapshot.get("automatic", [])]


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
        return render_template("error.html", status=404,
                               message=gettext("There is no gateway %(gateway)s.", gateway=gateway)), 404
    return render_template("panel.html", room=name, snapshot=snapshot, why=_why(snapshot),
                           **_card_context(gateway, snapshot))


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


def _room_events(states: RoomStates, gateway: str, heartbeat_s: float) -> Iterator[str]:
    """The room whenever it changes, a keepalive after `heartbeat_s` of silence (and then the rights are
    checked again); ends when the app closes."""
    version = seq = 0
    quiet_since = time.monotonic()
    while True:
        room = states.next(gateway, version, heartbeat_s - (time.monotonic() - quiet_since))
        if states.closed:
            return
        if room is not None:
            (version, body), seq = room, seq + 1
            yield _sse("room", body, seq)
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= heartbeat_s:
            user = auth.current_user(recheck=True)  # logged out meanwhile: the stream ends
            if user is None or not may_see(user, gateway):
                yield _sse("denied", json.dumps({"error": "you may no longer see this room"}), seq + 1)
                return
            yield ": keepalive\n\n"
            quiet_since = time.monotonic()


@bp.get("/api/panel/<gateway>/stream")
@login_required
def stream(gateway: str) -> Any:
    if not may_see(g.user, gateway):
        if school_scoped(g.user):
            return not_found("room")
        audit("refused", f"403 panel stream {gateway}: not in the user's rooms", ok=False)
        return error(403, lazy_gettext("gateway %(gateway)s is not in your rooms", gateway=repr(gateway)))
    states = _states()
    if states.closed:
        return error(503, lazy_gettext("the server is stopping; try again soon"))
    heartbeat_s = float(current_app.config.get("PANEL_HEARTBEAT_S", DEFAULT_HEARTBEAT_S))

    def events() -> Iterator[str]:
        try:
            with states.watching(gateway):
                # The first chunk once the room is watched: it ends the opening (`_OpeningGate`). It tells
                # EventSource how soon to come back after a dropped connection.
                yield "retry: 2000\n\n"
                yield from _room_events(states, gateway, heartbeat_s)
        except StreamsClosed:  # the server began stopping since the check above
            return

    response = Response(stream_with_context(events()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache, no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response
