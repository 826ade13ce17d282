"""The teachers' classroom panel (dashboards/panel.py): pages, rights, the live stream, and a browser.

The Flask test-client tests build the app as tests/test_api.py does (a real
ledger and registry in tmp_path, filled through `Ledger.record`, the same
call ingest uses) and log in through the login form, as a browser does. The
end-to-end test drives headless Chromium against a real `campus demo`
subprocess: the teacher logs in, lands on their room, switches the
projector on and watches it warm up and come on without reloading the page.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event

from campus.contract import CommandResult, State
from campus.net import free_port
from central.ledger import Ledger, Sequenced
from central.registry import Registry
from dashboards import WebConfig, close_app, create_app
from dashboards.context import central, web
from dashboards.panel import controls_for, input_label
from tests.apps import add_people, district, register_rooms, rooms_with_history, web_app
from tests.apps import central_db as central_db_of
from tests.servers import EventStream, launch_chromium, screenshot_path, wait_until

NOW = time.time()
DEVICES = {"env": {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"},
           "projector": {"profile": "projector-pjlink", "kind": "projector", "status": "ok"},
           "display": {"profile": "display-samsung-mdc", "kind": "display", "status": "ok"},
           "cards": {"profile": "card-em4100", "kind": "card_reader", "status": "ok"}}
# Distinct values per room, so a page can be checked for another room's data.
CO2 = {"gw-101": 612, "gw-102": 1777}
PASSWORDS = {"boss": "boss-password", "fm": "fm-password", "teach": "teach-password", "two": "two-password"}


def _record(db: str, gateway: str, seq: int, device: str, values: dict[str, Any], ts: float) -> None:
    ledger = Ledger(db)
    try:
        ledger.record([Sequenced("s1", gateway, device, seq, ts, values=values)], [], [])
    finally:
        ledger.close()


@pytest.fixture(scope="module")
def central_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two rooms reporting, and the people, once per module (password hashing is slow on purpose)."""
    db = tmp_path_factory.mktemp("panel") / "central.db"
    ledger = Ledger(str(db))
    for gw, room in (("gw-101", "101"), ("gw-102", "102")):
        ledger.record([Sequenced("s1", gw, "env", 1, NOW - 5, values={"co2_ppm": CO2[gw], "temperature_c": 21.5}),
                       Sequenced("s1", gw, "projector", 2, NOW - 4, values={"power": "off", "lamp_hours": 10}),
                       Sequenced("s1", gw, "display", 3, NOW - 4,
                                 values={"power": "on", "input": "hdmi1", "volume": 20, "muted": "off"})],
                      # A long heartbeat interval: the rooms stay online however slowly the tests run.
                      [("s1", gw, State(online=True, ts=NOW, room=room, devices=DEVICES, interval=3600))], [])
    ledger.close()
    reg = Registry(f"sqlite:///{db}")
    for gw, room in (("gw-101", "101"), ("gw-102", "102")):
        reg.register_gateway(gw, "s1", room, "A")
    reg.add_user("boss", PASSWORDS["boss"], "admin")
    reg.add_user("fm", PASSWORDS["fm"], "facility")
    reg.add_user("teach", PASSWORDS["teach"], "teacher", rooms=[("s1", "101")])
    reg.add_user("two", PASSWORDS["two"], "teacher", rooms=[("s1", "101"), ("s1", "102")])
    reg.close()
    return db


@pytest.fixture
def app(tmp_path: Path, central_db: Path) -> Iterator[Flask]:
    db = str(tmp_path / "central.db")
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{central_db}{suffix}").exists():
            shutil.copyfile(f"{central_db}{suffix}", f"{db}{suffix}")
    app = create_app(WebConfig(store_url=f"sqlite:///{db}", db_url=db))
    web(app).panel.poll_s = 0.02
    app.db_path = db  # type: ignore[attr-defined]
    yield app
    close_app(app)


def login(app: Flask, user: str) -> FlaskClient:
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf" value="')[1].split('"')[0]
    resp = client.post("/login", data={"csrf": token, "username": user, "password": PASSWORDS[user]})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return client


def csrf_of(html: str) -> str:
    return html.split('<meta name="csrf-token" content="')[1].split('"')[0]


def controls(html: str) -> list[str]:
    """Every control tag (button or slider with a data-action) of a page."""
    return re.findall(r"<(?:button|input)\b[^>]*\bdata-action=[^>]*>", html)


class EventReader:
    """Reads server-sent events from a streaming test-client response, never more than `limit` bytes."""

    def __init__(self, resp: Any, limit: int = 256 * 1024) -> None:
        self.chunks = iter(resp.response)
        self.buf = b""
        self.total = 0
        self.limit = limit

    def block(self) -> str:
        while b"\n\n" not in self.buf:
            chunk = next(self.chunks)
            chunk = chunk if isinstance(chunk, bytes) else chunk.encode()
            self.total += len(chunk)
            assert self.total < self.limit, "the stream sent far more than expected"
            self.buf += chunk
        block, self.buf = self.buf.split(b"\n\n", 1)
        return block.decode()

    def event(self) -> tuple[str, dict[str, Any]]:
        """The next event (skipping `retry:` and comments): its name and JSON data."""
        while True:
            fields = dict(line.split(": ", 1) for line in self.block().splitlines()
                          if ": " in line and not line.startswith(":"))
            if "data" in fields:
                return fields.get("event", "message"), json.loads(fields["data"])


# ---------------------------------------------------------------- pages and rights


def test_input_labels_and_controls_come_from_the_profiles() -> None:
    assert [input_label(n) for n in ("hdmi1", "hdmi2", "vga", "displayport", "pc", "network", "usb_c")] == \
        ["HDMI 1", "HDMI 2", "VGA", "DisplayPort", "PC", "Network", "Usb c"]
    display = controls_for("display-samsung-mdc")
    assert display["volume"] and [n for n, _ in display["inputs"]] == ["hdmi1", "hdmi2", "displayport", "pc"]
    projector = controls_for("projector-pjlink")
    assert not projector["volume"] and "select_input" in projector["actions"]
    # A profile name a gateway reports is never opened as a path.
    assert controls_for("/etc/passwd") == {"known": False, "actions": [], "inputs": [], "volume": False, "model": ""}


def test_unauthenticated_is_sent_to_login(app: Flask) -> None:
    client = app.test_client()
    for path in ("/panel", "/panel/gw-101", "/panel/gw-101/cards"):
        resp = client.get(path)
        assert resp.status_code == 302 and resp.headers["Location"].startswith("/login?next=")
    assert client.get("/api/panel/gw-101/stream").status_code == 401


def test_teacher_lands_on_their_room_with_working_controls(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf" value="')[1].split('"')[0]
    resp = client.post("/login", data={"csrf": token, "username": "teach", "password": PASSWORDS["teach"]})
    assert resp.headers["Location"] == "/panel"
    home = client.get("/panel")
    assert home.status_code == 302 and home.headers["Location"] == "/panel/gw-101"
    html = client.get("/panel/gw-101").get_data(as_text=True)
    assert "<h1>Room 101</h1>" in html and 'href="/panel"' in html  # the "My classroom" link
    assert csrf_of(html) and 'data-can-command="true"' in html
    cards = re.findall(r'class="pcard" data-device="([^"]+)"', html)
    assert cards == ["projector", "display"]  # no card for the sensor or the card reader
    assert controls(html) and not [c for c in controls(html) if "disabled" in c]
    # Inputs from each profile; a volume slider only where the profile has set_volume.
    assert 'data-input="vga"' in html and 'data-input="displayport"' in html
    assert len(re.findall(r'data-action="set_volume"', html)) == 1
    # The initial state is in the page, and it is this room's only.
    initial = json.loads(html.split('id="panel-initial">')[1].split("</script>")[0])
    assert initial["gateway"] == "gw-101" and initial["environment"]["co2_ppm"] == CO2["gw-101"]
    assert "gw-102" not in html and str(CO2["gw-102"]) not in html
    # The cards alone, which the page fetches when the room's equipment changes.
    fragment = client.get("/panel/gw-101/cards").get_data(as_text=True)
    assert "<html" not in fragment and re.findall(r'class="pcard" data-device="([^"]+)"', fragment) == cards


def test_teacher_is_refused_another_room(app: Flask) -> None:
    client = login(app, "teach")
    for path in ("/panel/gw-102", "/panel/gw-102/cards"):
        resp = client.get(path)
        assert resp.status_code == 403
        assert str(CO2["gw-102"]) not in resp.get_data(as_text=True)
    stream = client.get("/api/panel/gw-102/stream")
    assert stream.status_code == 403 and stream.mimetype == "application/json"
    trail = central(app).registry.audit_trail()
    assert sum(1 for r in trail if not r["ok"] and "gw-102" in r["detail"]) >= 3


def test_teacher_with_several_rooms_picks_one(app: Flask) -> None:
    html = login(app, "two").get("/panel").get_data(as_text=True)
    assert re.findall(r'data-gateway="([^"]+)"', html) == ["gw-101", "gw-102"]


def test_facility_views_without_controls_and_cannot_command(app: Flask) -> None:
    client = login(app, "fm")
    picker = client.get("/panel").get_data(as_text=True)
    assert re.findall(r'data-gateway="([^"]+)"', picker) == ["gw-101", "gw-102"]
    assert "My classroom" not in picker  # the nav link is for teachers and admins
    html = client.get("/panel/gw-102").get_data(as_text=True)
    assert 'data-can-command="false"' in html and "View only" in html
    assert controls(html) and all(" disabled" in c for c in controls(html))
    resp = client.post("/api/gateways/gw-102/devices/projector/commands", json={"action": "power_on"},
                       headers={"X-CSRF-Token": csrf_of(html)})
    assert resp.status_code == 403
    assert client.get("/api/panel/gw-102/stream", buffered=False).status_code == 200


def test_admin_picks_any_room_and_commands_it(app: Flask) -> None:
    client = login(app, "boss")
    assert re.findall(r'data-gateway="([^"]+)"', client.get("/panel").get_data(as_text=True)) == ["gw-101", "gw-102"]
    html = client.get("/panel/gw-102").get_data(as_text=True)
    assert controls(html) and not [c for c in controls(html) if "disabled" in c]
    assert client.get("/panel/gw-999").status_code == 404
    # A room IT registered whose gateway has not reported yet: a page that says so, no cards.
    central(app).registry.register_gateway("gw-103", "s1", "103", "A")
    html = client.get("/panel/gw-103").get_data(as_text=True)
    assert "<h1>Room 103</h1>" in html and "No projector or display has reported" in html and not controls(html)
    assert '"reported": false' in html


def test_offline_room_has_a_banner_and_disabled_controls(app: Flask) -> None:
    ledger = Ledger(app.db_path)  # type: ignore[attr-defined]
    ledger.record([], [("s1", "gw-101", State(online=False, ts=NOW + 1, room="101", devices=DEVICES, interval=3600))], [])
    ledger.close()
    html = login(app, "teach").get("/panel/gw-101").get_data(as_text=True)
    assert re.search(r'<div id="offline" class="banner bad" role="alert">', html)
    assert controls(html) and all(" disabled" in c for c in controls(html))


# ---------------------------------------------------------------- the stream


def test_stream_sends_the_room_then_every_change(app: Flask) -> None:
    client = login(app, "teach")
    resp = client.get("/api/panel/gw-101/stream", buffered=False)
    try:
        assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
        assert resp.headers["Cache-Control"].startswith("no-cache")
        reader = EventReader(resp)
        name, room = reader.event()
        assert name == "room" and room["gateway"] == "gw-101" and room["online"] is True
        assert [(d["id"], d["kind"]) for d in room["devices"]] == [("projector", "projector"), ("display", "display")]
        assert room["devices"][1]["values"] == {"power": "on", "input": "hdmi1", "volume": 20, "muted": "off"}
        assert room["devices"][0]["values"] == {"power": "off"}  # lamp hours are not the panel's business
        assert room["environment"] == {"co2_ppm": CO2["gw-101"], "temperature_c": 21.5}
        assert room["commands"] == []

        # Ingest (another connection, as from another process) records a warm-up: the next event has it.
        _record(app.db_path, "gw-101", 10, "projector", {"power": "warming"}, NOW)  # type: ignore[attr-defined]
        name, room = reader.event()
        assert room["devices"][0]["values"]["power"] == "warming"

        # A command and its result, as the command API and ingest write them.
        ledger = Ledger(app.db_path)  # type: ignore[attr-defined]
        ledger.add_command("c1", "gw-101", "display", "select_input", {"input": "hdmi2"}, "teach", time.time() + 60)
        name, room = reader.event()
        assert [(c["id"], c["status"]) for c in room["commands"]] == [("c1", "pending")]
        ledger.record([], [], [CommandResult(id="c1", status="failed", detail="no signal", ts=time.time())])
        ledger.close()
        name, room = reader.event()
        assert room["commands"][0]["status"] == "failed" and room["commands"][0]["detail"] == "no signal"
        # Nothing from the other room ever arrives on this stream.
        assert "gw-102" not in json.dumps(room)
    finally:
        resp.close()


def test_stream_heartbeat_and_end_when_rights_are_withdrawn(app: Flask) -> None:
    app.config["PANEL_HEARTBEAT_S"] = 0.05
    client = login(app, "two")
    resp = client.get("/api/panel/gw-102/stream", buffered=False)
    try:
        reader = EventReader(resp)
        assert reader.event()[0] == "room"
        assert reader.block() == ": keepalive"  # nothing changed: a comment keeps proxies from closing it
        # IT takes room 102 away from this teacher: the open stream stops at its next check.
        central(app).registry.add_user("two", PASSWORDS["two"], "teacher", rooms=[("s1", "101")])
        name, data = reader.event()
        assert name == "denied" and "no longer" in data["error"]
        with pytest.raises(StopIteration):
            reader.block()
    finally:
        resp.close()


def test_streams_open_a_few_at_a_time_in_the_order_they_came(app: Flask) -> None:
    """A stream's request takes one of OPENING_AT_ONCE turns until its first chunk, sent once its room is
    watched, so 500 panels opening at once are served a few at a time instead of all together. Here the
    openings are held where the poller's lock would hold them (`watching`): the next stream waits for a
    turn, a page does not, and every stream opens once the lock is free; a refused stream keeps no turn."""
    from dashboards.panel import OPENING_AT_ONCE, _OpeningGate

    gate = app.wsgi_app
    assert isinstance(gate, _OpeningGate)
    clients = [login(app, "teach") for _ in range(OPENING_AT_ONCE + 1)]
    first_events: list[str] = []

    def open_stream(client: FlaskClient) -> None:
        resp = client.get("/api/panel/gw-101/stream", buffered=False)
        try:
            first_events.append(EventReader(resp).event()[0])
        finally:
            resp.close()

    states = web(app).panel
    openers = [threading.Thread(target=open_stream, args=(c,)) for c in clients]
    with states._lock:  # as the poller holds it while it picks the rooms to read
        for opener in openers[:-1]:
            opener.start()
        wait_until(lambda: gate.free == 0, 10, message="every turn to be taken")
        openers[-1].start()
        wait_until(lambda: gate.waiting == 1, 10, message="the next stream to wait for its turn")
        assert clients[0].get("/panel/gw-101").status_code == 200  # a page takes no turn
        assert not first_events
    for opener in openers:
        opener.join(10)
    assert first_events == ["room"] * len(clients)
    assert gate.free == OPENING_AT_ONCE and gate.waiting == 0
    assert clients[0].get("/api/panel/gw-102/stream", buffered=False).status_code == 403
    assert gate.free == OPENING_AT_ONCE


def test_a_turn_is_given_back_however_the_opening_ends() -> None:
    """`_OpeningGate` around a WSGI app whose openings the test holds: a body closed before its first chunk,
    and an app that raised, give their turn back; a request that waited `wait_s` for a turn goes on without
    one and gives none back."""
    from dashboards.panel import _OpeningGate

    def opening(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"].endswith("/boom/stream"):
            raise RuntimeError("boom")
        start_response("200 OK", [])
        return iter([b"first", b"second"])

    gate = _OpeningGate(opening, slots=2, wait_s=30)
    path = {"PATH_INFO": "/api/panel/gw-1/stream"}
    held = [gate(path, lambda *a: None) for _ in range(2)]
    assert gate.free == 0
    assert gate({"PATH_INFO": "/api/panel/gw-1"}, lambda *a: None) is not None  # not a stream: no turn
    held[0].close()  # closed unread
    assert gate.free == 1
    with pytest.raises(RuntimeError):
        gate({"PATH_INFO": "/api/panel/boom/stream"}, lambda *a: None)
    assert gate.free == 1
    assert list(held[1]) == [b"first", b"second"] and gate.free == 2
    held = [gate(path, lambda *a: None) for _ in range(2)]
    gate.wait_s = 0.05
    untimely = gate(path, lambda *a: None)  # every turn taken: it waited 50 ms and went on
    assert gate.free == 0 and gate.waiting == 0
    assert list(untimely) == [b"first", b"second"] and gate.free == 0
    for body in held:
        body.close()
    assert gate.free == 2


def test_closing_the_app_ends_open_streams(app: Flask) -> None:
    client = login(app, "teach")
    resp = client.get("/api/panel/gw-101/stream", buffered=False)
    reader = EventReader(resp)
    assert reader.event()[0] == "room"
    web(app).panel.close()
    with pytest.raises(StopIteration):
        while True:
            reader.block()
    resp.close()


def test_one_poller_reads_every_open_room_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """50 streams on 50 rooms, served over HTTP: the poller's statements per tick stay those of one
    `Ledger.rooms` read (3) and one read of the rooms' automatic actions (central/room_actions.py), where a poll per stream made 50 reads or more; no stream reads the database
    itself; and a stream still gets its room's change, the others nothing."""
    from dashboards.server import serve

    rooms = district(50)
    db = central_db_of(tmp_path, rooms_with_history(rooms, samples=1))
    app = web_app(db, monkeypatch)
    server = serve(app, "127.0.0.1", 0)
    streams: list[EventStream] = []
    try:
        register_rooms(app, rooms)
        token = add_people(app)["admin"]
        states = web(app).panel
        states.poll_s = 0.05
        by_thread: dict[str, int] = {}

        def count(*_args: object) -> None:
            name = threading.current_thread().name
            by_thread[name] = by_thread.get(name, 0) + 1

        event.listen(central(app).db.engine, "before_cursor_execute", count)
        streams = [EventStream(server.port, f"/api/panel/{gw}/stream", token) for gw, *_ in rooms]
        for (gw, *_), stream in zip(rooms, streams, strict=True):
            name, room = stream.event()
            assert name == "room" and room["gateway"] == gw and room["environment"]["co2_ppm"] == 600.0
        ticks, before = states.ticks, dict(by_thread)
        wait_until(lambda: states.ticks >= ticks + 10, timeout=30, message="ten ticks")
        ticked = states.ticks - ticks
        made = {name: n - before.get(name, 0) for name, n in by_thread.items() if n != before.get(name, 0)}
        # A tick under way at either end of the window: within one tick's statements of 5 per tick (the three
        # of Ledger.rooms, the rooms' automatic actions, and their newest swipes for the attendance box); and
        # nothing but the poller read anything (the streams wait on it).
        assert set(made) == {"panel-poller"}, made
        assert 5 * (ticked - 1) <= made["panel-poller"] <= 5 * (ticked + 1), (made, ticked)

        gw = rooms[17][0]
        _record(db, gw, 99, "env", {"co2_ppm": 1234.0}, time.time())
        name, room = streams[17].event(timeout=10)
        assert name == "room" and room["gateway"] == gw and room["environment"]["co2_ppm"] == 1234.0
        # The other rooms did not change: their streams have nothing to send.
        assert states.next(rooms[16][0], 1, 0) is None
    finally:
        for stream in streams:
            stream.close()
        server.shutdown()
        close_app(app)


def test_the_pollers_reads_on_both_engines(central_db_url: str) -> None:
    """The poller's three reads, built once with bind parameters (central/ledger.py `_room_reads`,
    `_newest_events`; central/lists.py `_room_events`), answer as asked on SQLite and PostgreSQL: the rooms
    asked and no other, each room's newest values, its newest `commands` commands since the bound (all of them
    without one), online from the heartbeat, the newest event of each type, and a room's newest events since
    a time, at most `per_room`."""
    from central import lists

    now = time.time()
    ledger = Ledger(central_db_url)
    try:
        ledger.record([Sequenced("s1", gw, "env", seq, now - 100 + seq, values={"co2_ppm": 500 + seq})
                       for gw in ("gw-a", "gw-b", "gw-c") for seq in (1, 2)]
                      + [Sequenced("s1", "gw-a", "podium", 10 + k, now - 50 + k,
                                   event=("podium_session", {"n": k})) for k in range(4)]
                      + [Sequenced("s1", "gw-a", "reader", 20, now - 40, event=("card_swipe", {"k": 1})),
                         Sequenced("s1", "gw-a", "reader", 21, now - 30, event=("card_swipe", {"k": 2}))],
                      [("s1", gw, State(online=True, ts=now, room="101", devices={}, interval=interval))
                       for gw, interval in (("gw-a", 60), ("gw-b", 60), ("gw-c", 0.001))], [])
        for k in range(5):
            ledger.add_command(f"c{k}", "gw-a", "projector", "power_on", {}, "t", now + 60)
        rooms = ledger.rooms(["gw-a", "gw-b", "gw-c", "gw-nobody"], commands=3)
        assert sorted(rooms) == ["gw-a", "gw-b", "gw-c"]
        assert rooms["gw-a"]["latest"] == {"env": {"co2_ppm": 502}} and rooms["gw-b"]["latest"] == {"env": {"co2_ppm": 502}}
        assert [c["id"] for c in rooms["gw-a"]["commands"]] == ["c4", "c3", "c2"] and rooms["gw-b"]["commands"] == []
        assert rooms["gw-a"]["online"] and not rooms["gw-c"]["online"]  # gw-c's heartbeat is long overdue
        assert ledger.rooms(["gw-a"], commands=8, commands_since=now + 3600)["gw-a"]["commands"] == []
        assert ledger.rooms(["gw-b"]).keys() == {"gw-b"}

        newest = ledger.newest_events(["gw-a", "gw-b"], ["card_swipe", "podium_session"])
        assert sorted(newest) == [("gw-a", "card_swipe"), ("gw-a", "podium_session")]
        assert newest[("gw-a", "card_swipe")]["data"] == {"k": 2} and newest[("gw-a", "podium_session")]["seq"] == 13

        events = lists.room_events(ledger.db, ["gw-a", "gw-b"], ("podium_session",), 2, now - 49)
        assert list(events) == ["gw-a"] and [e["data"]["n"] for e in events["gw-a"]] == [3, 2]
        assert [e["data"]["n"] for e in lists.room_events(ledger.db, ["gw-a"], ("podium_session",), 9, now - 48.5)
                ["gw-a"]] == [3, 2]
    finally:
        ledger.close()


def test_panels_opening_together_are_read_together(tmp_path: Path) -> None:
    """Rooms whose streams open one after another within a moment (every panel of a school at 8:00) are read
    in a few reads, not one read each: a read costs five statements whatever its rooms. And a room's first
    read is not repeated by the full tick that follows at once. Checked to fail with the poller reading each
    new room as it came (40 reads)."""
    from dashboards.panel import GATHER_S, RoomStates

    rooms = district(40)
    ledger = Ledger(central_db_of(tmp_path, rooms_with_history(rooms, samples=1)))
    states = RoomStates(ledger, poll_s=30.0)  # no second full tick during the test
    reads: list[list[str]] = []
    rooms_read = ledger.rooms
    ledger.rooms = lambda gateways, *a, **kw: reads.append(sorted(gateways)) or rooms_read(gateways, *a, **kw)
    try:
        with contextlib.ExitStack() as open_streams:
            # The first opens the poller's full tick; the other 39 come 5 ms apart, over 0.2 s.
            for gw, *_ in rooms:
                open_streams.enter_context(states.watching(gw))
                time.sleep(0.005)  # the arrival pattern, not a wait for anything
            for gw, *_ in rooms:
                assert states.next(gw, 0, timeout=10) is not None, gw
            read = [gw for batch in reads for gw in batch]
            # Every room read once: none twice (the full tick skipped the rooms just read).
            assert sorted(read) == sorted(gw for gw, *_ in rooms), reads
            # 0.2 s of arrivals in batches GATHER_S apart, and a margin for a slow machine.
            assert len(reads) <= 0.2 / GATHER_S + 4, [len(b) for b in reads]
    finally:
        states.close()
        ledger.close()


# ---------------------------------------------------------------- in a browser, against `campus demo`


def start_demo(tmp_path: Path, attempts: int = 3, rooms: int = 2,
               duration: int = 120) -> tuple[subprocess.Popen[bytes], str, dict[str, str], Path]:
    """`campus demo` on free ports: (process, base URL, logins.txt as a dict, log file). It inherits this
    process's environment (CAMPUS_ALARM_INTERVAL, …); scripts/screenshots.py starts it too.

    A free port is only free until someone else takes it; on a busy machine the
    demo can lose that race at start (and exit), so a fresh start is tried then.
    """
    for attempt in range(attempts):
        port = free_port()
        data, log_path = tmp_path / f"demo{attempt}", tmp_path / f"demo{attempt}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "programs.cli", "demo", "--rooms", str(rooms), "--duration", str(duration),
                                     "--http-port", str(port), "--data-dir", str(data)],
                                    stdout=log, stderr=subprocess.STDOUT)
        logins = data / "logins.txt"
        wait_until(lambda: proc.poll() is not None or (logins.exists() and "url " in logins.read_text()), 60,  # noqa: B023
                   message="campus demo to write its logins")
        if proc.poll() is None:
            return proc, f"http://127.0.0.1:{port}", dict(line.split(" ", 1) for line in
                                                           logins.read_text().splitlines()), log_path
        proc.wait()
    raise AssertionError(f"campus demo did not start {attempts} times; last log:\n{log_path.read_text()[-3000:]}")


@pytest.mark.slow
def test_teacher_switches_the_projector_on_in_a_browser(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    proc, base, logins, log_path = start_demo(tmp_path)
    try:
        password = logins["teacher"]
        with sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                page = browser.new_page(viewport={"width": 1024, "height": 768})
                page.goto(f"{base}/login")
                page.fill("input[name=username]", "teacher")
                page.fill("input[name=password]", password)
                page.click("button[type=submit]")
                page.wait_for_url(re.compile(r"/panel/gw-101$"))
                expect(page.locator("h1")).to_have_text("Room 101")
                expect(page.locator("#live")).to_have_text("Live", timeout=10_000)

                projector = page.locator('.pcard[data-device="projector"]')
                power = projector.locator('[data-field="power"]')
                result = projector.locator('[data-field="result"]')
                expect(power).to_have_attribute("data-power", "off", timeout=30_000)
                # Everything below happens without a reload: this mark would be gone after one.
                page.evaluate("""() => {
                    window.notReloaded = true;
                    window.results = [];
                    const el = document.querySelector('.pcard[data-device="projector"] [data-field="result"]');
                    new MutationObserver(() => window.results.push(el.textContent))
                        .observe(el, {childList: true, subtree: true, characterData: true});
                }""")

                projector.get_by_role("button", name="Power on").click()
                expect(power).to_have_attribute("data-power", "warming", timeout=15_000)
                expect(power).to_have_text(re.compile("warming", re.I))
                expect(projector.locator('[data-field="note"]')).to_contain_text("Warming up")
                expect(result).to_contain_text("Power on: done", timeout=15_000)
                expect(power).to_have_attribute("data-power", "on", timeout=45_000)
                expect(power).to_have_text("On")
                assert any("sending" in r for r in page.evaluate("window.results"))

                display = page.locator('.pcard[data-device="display"]')
                expect(display.locator('[data-field="power"]')).to_have_attribute("data-power", "on", timeout=15_000)
                display.get_by_role("button", name="HDMI 2", exact=True).click()
                expect(display.locator('[data-field="input"]')).to_have_text("HDMI 2", timeout=15_000)
                expect(display.get_by_role("button", name="HDMI 2", exact=True)).to_have_attribute("aria-pressed", "true")
                expect(display.locator('[data-field="result"]')).to_contain_text("Input HDMI 2: done", timeout=15_000)
                expect(page.locator("#recent")).to_contain_text("Projector: Power on")
                assert page.evaluate("window.notReloaded") is True

                shot = screenshot_path("panel.png", tmp_path)
                page.screenshot(path=str(shot), animations="disabled")
                assert shot.stat().st_size > 10_000
            finally:
                browser.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(15)
    assert "Traceback" not in log_path.read_text(errors="replace")
