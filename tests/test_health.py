"""The equipment-health area: every page and JSON route, every role, every refusal; and in Chromium.

Flask's test client against a real central database (ledger filled through
`Ledger.record`, points through the SQLite store, registry with rooms and
people): SQLite and PostgreSQL (`central_db_url`) for the board, alarms,
thresholds and schedules, SQLite alone (`sqlite_only`) for who may see what. The background alarm monitor and scheduler are switched off
(`CAMPUS_*_INTERVAL=0`) so each test decides when rules are evaluated.

The last test is the facility manager's story against a running `campus
demo` in headless Chromium: CO2 pushed over the limit, the alarm appears by
itself, Acknowledge, "acknowledged by facility" (the README's picture of it
is made by scripts/screenshots.py).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from campus.contract import State
from campus.net import free_port
from central import alarms
from central.ledger import Ledger, Sequenced
from central.registry import AlarmRule, Building, Schedule, ScheduleRun
from central.store.base import Sample
from central.store.sqlite import SqlitePointStore
from dashboards import WebConfig, close_app, create_app, health
from dashboards.context import central
from tests.apps import add_people, central_db, db_url_of, register_rooms, sqlite_only, web_app
from tests.servers import launch_chromium, screenshot_path, wait_until

ROOT = Path(__file__).resolve().parent.parent
NOW = time.time()
WEEK = date(2025, 3, 3)  # Monday of ISO week 2025-W10
_seq = itertools.count(1)
DEVICES = {"env": {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"},
           "proj": {"profile": "projector-pjlink", "kind": "projector", "status": "ok"},
           "display": {"profile": "display-samsung-mdc", "kind": "display", "status": "ok"}}


ZONE = ZoneInfo("Asia/Shanghai")  # the site's (WebConfig's default): a week's days are its days


def local(day: int, hh: int, mm: int = 0) -> float:
    return datetime.combine(WEEK + timedelta(days=day), datetime.min.time(), tzinfo=ZONE).replace(
        hour=hh, minute=mm).timestamp()


def power_points(gw: str, device: str, kind: str, start: float, stop: float, step: float = 300) -> list[Sample]:
    """`on` every `step` seconds from start, `off` at stop."""
    pts = [Sample("s1", gw, device, kind, start + i * step, {"power": "on"}) for i in range(int((stop - start) // step))]
    return pts + [Sample("s1", gw, device, kind, stop, {"power": "off"})]


def _rooms_and_a_week(ledger: Ledger, points: SqlitePointStore) -> None:
    for gw, room in (("gw-101", "101"), ("gw-102", "102"), ("gw-201", "201")):
        ledger.record([Sequenced("s1", gw, "env", next(_seq), NOW - 5, values={"co2_ppm": 800, "temperature_c": 21}),
                       Sequenced("s1", gw, "proj", next(_seq), NOW - 4, values={"power": "on", "lamp_hours": 1200})],
                      [("s1", gw, State(online=True, ts=NOW, room=room, devices=DEVICES))], [])
        points.write([Sample("s1", gw, "env", "environment", NOW - 60 * i, {"co2_ppm": 800.0 + i}) for i in range(30)])
    # gw-201 went offline; its display was last heard long ago.
    ledger.record([], [("s1", "gw-201", State(online=False, ts=NOW + 1, room="201", devices=DEVICES))], [])
    # A week of usage: the projector of 101 on Monday 08:00-10:00; the display of 102 left on Tuesday 21:00-01:00.
    points.write(power_points("gw-101", "proj", "projector", local(0, 8), local(0, 10)))
    points.write(power_points("gw-102", "display", "display", local(1, 21), local(2, 1), step=600))


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, central_db_url: str):
    db = central_db(tmp_path, _rooms_and_a_week, central_db_url)
    app = web_app(db, monkeypatch)
    register_rooms(app, (("gw-101", "s1", "101", "A"), ("gw-102", "s1", "102", "A"), ("gw-201", "s1", "201", "B"),
                         ("gw-901", "s2", "9", "Annex")))
    app.tokens = add_people(app)
    app.db = db
    yield app
    close_app(app)


def call(app, method: str, path: str, role: str | None = None, **kw):
    headers = {"Authorization": f"Bearer {app.tokens[role]}"} if role else {}
    return app.test_client().open(path, method=method, headers=headers, **kw)


PASSWORDS = {"admin": ("boss", "boss-password"), "facility": ("fm", "fm-password"),
             "teacher": ("teach", "teach-password")}


def login(app, role: str):
    """A browser-like client logged in as `role`, and its session's CSRF token."""
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    user, password = PASSWORDS[role]
    assert client.post("/login", data={"csrf": token, "username": user, "password": password}).status_code == 302
    page = client.get("/login").get_data(as_text=True)  # the session's new token (login starts a new session)
    return client, re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def raise_co2(app, gw: str = "gw-102", ppm: float = 2100) -> dict:
    """Report `ppm` from a room's sensor (as ingest records it) and evaluate the rules; the CO2 alarm, if any."""
    c = central(app)
    c.ledger.record([Sequenced("s1", gw, "env", next(_seq), time.time(), values={"co2_ppm": ppm})], [], [])
    alarms.evaluate(c.registry, c.ledger)
    return next((a for a in alarms.list_alarms(c.registry, "all")
                 if a["gateway"] == gw and a["kind"] == "co2_above"), {})


PAGES = ["/health/", "/health/alarms", "/health/thresholds", "/health/rooms/gw-101", "/health/usage",
         "/health/schedules"]
APIS = ["/api/alarms", "/api/board"]


# ---------------------------------------------------------------- who may do what


@sqlite_only
def test_anonymous_users_go_to_the_login_or_get_401(app) -> None:
    for path in PAGES:
        resp = call(app, "GET", path)
        assert resp.status_code == 302 and "/login?next=" in resp.headers["Location"], path
    for path in APIS:
        assert call(app, "GET", path).status_code == 401, path
        assert app.test_client().get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert call(app, "POST", "/api/alarms/1/ack").status_code == 401


@sqlite_only
def test_teachers_may_not_see_this_area(app) -> None:
    client, _csrf = login(app, "teacher")
    for path in PAGES + APIS:
        assert call(app, "GET", path, "teacher").status_code == 403, path
        assert client.get(path).status_code == 403, path


@sqlite_only
def test_teachers_cannot_acknowledge_or_change_anything(app) -> None:
    alarm = raise_co2(app)
    rule = next(r for r in alarms.list_rules(central(app).registry) if r["kind"] == "co2_above")
    client, csrf = login(app, "teacher")
    assert client.post(f"/api/alarms/{alarm['id']}/ack", headers={"X-CSRF-Token": csrf}).status_code == 403
    assert call(app, "POST", f"/api/alarms/{alarm['id']}/ack", "teacher").status_code == 403
    assert client.post("/health/thresholds", data={"csrf": csrf, "rule_id": rule["id"], "ppm": "900",
                                                   "enabled": "on"}).status_code == 403
    assert client.post("/health/schedules", data={"csrf": csrf, "name": "x", "at": "22:00", "days": "mon",
                                                  "action": "power_off", "kinds": "display"}).status_code == 403
    reg = central(app).registry
    assert alarms.list_alarms(reg)[0]["acked_by"] is None
    assert next(r for r in alarms.list_rules(reg) if r["kind"] == "co2_above")["params"] == {"ppm": 1500}
    with reg.session() as s:
        assert s.query(Schedule).count() == 0
    assert sum(1 for r in reg.audit_trail() if r["action"] == "refused" and r["user"] == "teach") >= 3


@sqlite_only
def test_top_bar_links_for_staff_only(app) -> None:
    for role in ("admin", "facility"):
        client, _ = login(app, role)
        page = client.get("/health/").get_data(as_text=True)
        assert 'href="/health/"' in page and 'href="/health/alarms"' in page
    client, _ = login(app, "teacher")
    assert "/health/" not in client.get("/", follow_redirects=True).get_data(as_text=True)


@sqlite_only
@pytest.mark.parametrize("role", ["admin", "facility"])
def test_staff_see_every_page(app, role: str) -> None:
    client, _ = login(app, role)
    expected = {"/health/": "Equipment health", "/health/alarms": "History",
                "/health/thresholds": "CO2 too high", "/health/rooms/gw-101": "Room 101",
                "/health/usage": "Projector and display usage", "/health/schedules": "New schedule"}
    for path, text in expected.items():
        resp = client.get(path)
        assert resp.status_code == 200, path
        assert text in resp.get_data(as_text=True), path
        assert "health.js" in resp.get_data(as_text=True) and "health.css" in resp.get_data(as_text=True)
    for path in APIS:
        assert call(app, "GET", path, role).status_code == 200


@sqlite_only
def test_static_files_are_served(app) -> None:
    for name in ("health.js", "health.css"):
        resp = app.test_client().get(f"/static/{name}")
        assert resp.status_code == 200 and len(resp.data) > 1000
        resp.close()


# ---------------------------------------------------------------- the board


def test_board_lists_every_room_with_status_and_last_seen(app) -> None:
    data = call(app, "GET", "/api/board", "facility").get_json()
    rooms = {r["gateway"]: r for r in data["rooms"]}
    # Problems first (gw-201 is offline), then school, building, room order.
    assert list(rooms) == ["gw-201", "gw-101", "gw-102", "gw-901"]
    assert data["total"] == 4 and (data["limit"], data["offset"]) == (100, 0)
    r101 = rooms["gw-101"]
    assert (r101["room"], r101["building"], r101["school"], r101["online"]) == ("101", "A", "s1", True)
    assert r101["last_seen"] == pytest.approx(time.time(), abs=60) and r101["problems"] == []
    env = next(d for d in r101["devices"] if d["id"] == "env")
    assert env["status"] == "ok" and env["last_seen"] == pytest.approx(NOW - 5) and env["latest"]["co2_ppm"] == 800
    assert rooms["gw-201"]["online"] is False and "offline" in rooms["gw-201"]["problems"]
    assert all(d["status"] == "offline" for d in rooms["gw-201"]["devices"])
    assert data["counts"] == {"offline": 1, "fault": 0, "alarm": 0, "rooms": 4, "unacked": 0, "not_installed": 1}


def test_a_gateway_that_never_reported_is_not_installed_yet_not_offline(app) -> None:
    """Registered before it is mounted: the board, the room page and /api/gateways say "not installed yet";
    it is no problem and raises no alarm however long it waits."""
    reg = central(app).registry
    reg.add_device("gw-901", "env", "env-6in1-modbus", {"host": "10.0.0.9"})
    alarms.evaluate(reg, central(app).ledger, now=time.time() + 7 * 86400)
    assert [a["gateway"] for a in alarms.list_alarms(reg, "open")] == ["gw-201"]  # offline for real, a week on
    rooms = {r["gateway"]: r for r in call(app, "GET", "/api/board", "facility").get_json()["rooms"]}
    r901 = rooms["gw-901"]
    assert (r901["installed"], r901["online"], r901["problems"], r901["alarms"]) == (False, False, [], [])
    assert [(d["id"], d["status"]) for d in r901["devices"]] == [("env", "not installed yet")]
    assert rooms["gw-201"]["installed"] is True and rooms["gw-201"]["problems"] == ["offline", "alarm"]
    assert [r["gateway"] for r in call(app, "GET", "/api/board?problem=any", "facility").get_json()["rooms"]] == \
        ["gw-201"]
    client, _ = login(app, "facility")
    assert '<span class="badge uninstalled">not installed yet</span>' in client.get("/health/rooms/gw-901").get_data(
        as_text=True)
    gateways = {gw["id"]: gw for gw in call(app, "GET", "/api/gateways", "facility").get_json()}
    assert gateways["gw-901"]["installed"] is False and gateways["gw-901"]["last_seen"] is None
    assert gateways["gw-901"]["school"] == "s2" and gateways["gw-901"]["room"] == "9"
    assert all(gateways[gw]["installed"] for gw in ("gw-101", "gw-102", "gw-201"))


def test_board_shows_a_full_gateway_disk_and_a_replaced_outbox_with_devices_still_ok(app) -> None:
    # What an agent on a full disk, whose outbox was found damaged an hour ago, says in its state.
    now = time.time()
    central(app).ledger.record([], [("s1", "gw-102", State(
        online=True, ts=now, room="102", devices=DEVICES, interval=5,
        outbox={"pending": 3, "dropped": 41, "not_stored": 41, "last_seq": 10, "instance": 7},
        storage={"status": "full", "since": now - 60, "error": "database or disk is full"},
        outbox_replaced={"at": now - 3600, "reason": "the outbox file is damaged (database disk image is malformed)",
                         "kept_as": "agent.db.corrupt-20250303T080000Z", "lost": None,
                         "previous_instance": 5, "previous_last_seq": 900}))], [])
    rooms = {r["gateway"]: r for r in call(app, "GET", "/api/board", "facility").get_json()["rooms"]}
    r102 = rooms["gw-102"]
    assert r102["problems"] == ["storage"] and all(d["status"] == "ok" for d in r102["devices"])
    notes = [n["text"] for n in r102["notes"]]
    assert len(notes) == 2
    assert notes[0].startswith("Gateway storage full since ") and "41 not stored" in notes[0]
    assert "Outbox replaced after damage" in notes[1] and "unknown number of unsent messages lost" in notes[1]
    assert "agent.db.corrupt-20250303T080000Z" in notes[1]
    assert rooms["gw-101"]["notes"] == [] and "storage" not in rooms["gw-101"]["problems"]
    assert [r["gateway"] for r in call(app, "GET", "/api/board?problem=any", "facility").get_json()["rooms"]
            if "storage" in r["problems"]] == ["gw-102"]
    gw = next(g for g in call(app, "GET", "/api/gateways", "facility").get_json() if g["id"] == "gw-102")
    assert gw["storage"]["status"] == "full" and gw["outbox_replaced"]["previous_last_seq"] == 900
    page = call(app, "GET", "/provisioning/gateways/gw-102", "admin").get_data(as_text=True)
    assert "Gateway storage full since" in page and "Outbox replaced after damage" in page
    listing = call(app, "GET", "/provisioning/gateways", "admin").get_data(as_text=True)
    assert listing.count("storage-note") == 2


def test_board_filters(app) -> None:
    raise_co2(app, "gw-102")
    with central(app).registry.session() as s:
        buildings = {b.name: b.id for b in s.query(Building)}

    def gateways(query: str) -> list[str]:
        return [r["gateway"] for r in call(app, "GET", f"/api/board?{query}", "facility").get_json()["rooms"]]

    assert gateways("school=s2") == ["gw-901"]
    assert gateways(f"building={buildings['A']}") == ["gw-102", "gw-101"]  # its alarm first
    assert gateways("problem=alarm") == ["gw-102"]
    assert gateways("problem=offline") == ["gw-201"]  # gw-901 never reported: not installed yet, not offline
    assert gateways("problem=fault") == []
    assert gateways("problem=any") == ["gw-102", "gw-201"]
    assert gateways(f"school=s1&building={buildings['B']}&problem=offline") == ["gw-201"]
    for bad in ("problem=fire", "building=A"):
        resp = call(app, "GET", f"/api/board?{bad}", "facility")
        assert resp.status_code == 400 and resp.get_json()["error"]
    room = next(r for r in call(app, "GET", "/api/board", "facility").get_json()["rooms"] if r["gateway"] == "gw-102")
    assert [a["label"] for a in room["alarms"]] == ["CO2 too high"]


# ---------------------------------------------------------------- alarms


def test_alarms_list_open_and_history(app) -> None:
    alarm = raise_co2(app)
    got = call(app, "GET", "/api/alarms", "facility").get_json()
    assert [a["id"] for a in got] == [alarm["id"]] and got[0]["room"] == "102" and got[0]["state"] == "active"
    assert call(app, "GET", "/api/alarms?state=history", "facility").get_json() == []
    raise_co2(app, ppm=600)
    assert call(app, "GET", "/api/alarms", "facility").get_json() == []
    [past] = call(app, "GET", "/api/alarms?state=history", "facility").get_json()
    assert past["id"] == alarm["id"] and past["cleared_at"]
    assert len(call(app, "GET", "/api/alarms?state=all&gateway=gw-102", "admin").get_json()) == 1
    for bad in ("state=closed", "limit=0", "limit=x"):
        assert call(app, "GET", f"/api/alarms?{bad}", "facility").status_code == 400


@sqlite_only
def test_acknowledge_needs_csrf_in_a_browser_session(app) -> None:
    alarm = raise_co2(app)
    client, csrf = login(app, "facility")
    refused = client.post(f"/api/alarms/{alarm['id']}/ack")
    assert refused.status_code == 403 and "CSRF" in refused.get_json()["error"]
    assert client.post(f"/api/alarms/{alarm['id']}/ack", headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert alarms.list_alarms(central(app).registry)[0]["acked_by"] is None
    ok = client.post(f"/api/alarms/{alarm['id']}/ack", headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200
    body = ok.get_json()
    assert body["acked_by"] == "fm" and body["acked_at"] == pytest.approx(time.time(), abs=30)
    assert body["state"] == "acknowledged" and body["cleared_at"] is None
    trail = central(app).registry.audit_trail()
    assert any(r["action"] == "alarm_ack" and r["user"] == "fm" and f"alarm {alarm['id']}" in r["detail"]
               for r in trail)


def test_acknowledge_with_a_token_form_and_unknown_ids(app) -> None:
    alarm = raise_co2(app)
    assert call(app, "POST", f"/api/alarms/{alarm['id']}/ack", "admin").get_json()["acked_by"] == "boss"
    # A second acknowledgement keeps the first.
    assert call(app, "POST", f"/api/alarms/{alarm['id']}/ack", "facility").get_json()["acked_by"] == "boss"
    assert call(app, "POST", "/api/alarms/999/ack", "facility").status_code == 404
    assert call(app, "POST", "/api/alarms/abc/ack", "facility").status_code == 404
    # Past PostgreSQL's 32-bit INTEGER (SQLite's is 64): no alarm, not "integer out of range" (a 503).
    for big in (2**31, 2**63, 10**12):
        assert call(app, "POST", f"/api/alarms/{big}/ack", "facility").status_code == 404
    other = raise_co2(app, "gw-101")
    client, csrf = login(app, "facility")
    assert client.post(f"/health/alarms/{other['id']}/ack").status_code == 403  # form without the token
    resp = client.post(f"/health/alarms/{other['id']}/ack", data={"csrf": csrf})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/health/alarms")
    assert "acknowledged by fm" in client.get("/health/alarms").get_data(as_text=True)
    assert client.post("/health/alarms/999/ack", data={"csrf": csrf}).status_code == 404


# ---------------------------------------------------------------- thresholds


def _rule(app, kind: str) -> dict:
    return next(r for r in alarms.list_rules(central(app).registry) if r["kind"] == kind)


def test_thresholds_edit_is_validated_audited_and_needs_csrf(app) -> None:
    co2 = _rule(app, "co2_above")
    client, csrf = login(app, "facility")
    form = {"rule_id": co2["id"], "ppm": "1200", "enabled": "on"}
    assert client.post("/health/thresholds", data=form).status_code == 403
    assert _rule(app, "co2_above")["params"] == {"ppm": 1500}
    resp = client.post("/health/thresholds", data={**form, "csrf": csrf})
    assert resp.status_code == 302
    assert _rule(app, "co2_above") == {**co2, "params": {"ppm": 1200}}
    assert "Saved: CO2 too high." in client.get("/health/thresholds").get_data(as_text=True)
    trail = central(app).registry.audit_trail()
    assert any(r["action"] == "alarm_rule" and r["user"] == "fm" and "{'ppm': 1500}" in r["detail"]
               and "{'ppm': 1200}" in r["detail"] for r in trail)
    # Disabling is a change too.
    client.post("/health/thresholds", data={"csrf": csrf, "rule_id": co2["id"], "ppm": "1200"})
    assert _rule(app, "co2_above")["enabled"] is False


BAD_THRESHOLDS = [
    ("co2_above", {"ppm": "lots"}, "CO2 limit (ppm) must be a number, got &#39;lots&#39;"),
    ("co2_above", {"ppm": "20"}, "CO2 limit (ppm) must be between 400 and 10000, got 20"),
    ("co2_above", {"ppm": "inf"}, "must be a finite number"),
    ("temperature_range", {"min": "28", "max": "18"}, "the lowest temperature (28 °C) must be below the highest"),
    ("offline_minutes", {"minutes": ""}, "Offline for more than (min) must be a number"),
]


@sqlite_only
def test_bad_threshold_input_is_refused_clearly_and_changes_nothing(app) -> None:
    client, csrf = login(app, "admin")
    for kind, fields, message in BAD_THRESHOLDS:
        rule = _rule(app, kind)
        resp = client.post("/health/thresholds", data={"csrf": csrf, "rule_id": rule["id"], "enabled": "on",
                                                       **fields})
        page = resp.get_data(as_text=True)
        assert resp.status_code == 400 and message in page and 'role="alert"' in page, (kind, fields)
        # The form shows what was typed, so it can be corrected.
        for value in fields.values():
            assert f'value="{value}"' in page
        assert _rule(app, kind) == rule
    with central(app).registry.session() as s:
        assert s.query(AlarmRule).count() == len(alarms.RULE_KINDS)
    assert sum(1 for r in central(app).registry.audit_trail()
               if r["action"] == "alarm_rule" and not r["ok"]) == len(BAD_THRESHOLDS)


@sqlite_only
def test_unknown_rule_is_404(app) -> None:
    client, csrf = login(app, "facility")
    assert client.post("/health/thresholds", data={"csrf": csrf, "rule_id": "999"}).status_code == 404


# ---------------------------------------------------------------- history and usage


@sqlite_only
def test_room_history_page(app) -> None:
    client, _ = login(app, "facility")
    page = client.get("/health/rooms/gw-101?window=1h").get_data(as_text=True)
    series = json.loads(re.search(r'<script type="application/json" id="series">(.*?)</script>', page, re.S).group(1))
    got = {(s["device"], s["metric"], s["type"]) for s in series}
    assert {("env", "co2_ppm", "line"), ("env", "temperature_c", "line"), ("proj", "power", "state"),
            ("display", "power", "state")} <= got
    co2 = next(s for s in series if s["metric"] == "co2_ppm")
    assert co2["limits"] == [{"value": 1500, "label": "alarm limit"}]
    assert 'data-seconds="3600"' in page and 'aria-current="page">Last hour' in page
    assert client.get("/health/rooms/gw-101?window=2y").status_code == 400
    assert client.get("/health/rooms/nope").status_code == 404
    # The charts' data: /api/telemetry, which facility may read for every room.
    pts = call(app, "GET", f"/api/telemetry?gateway=gw-101&device=env&metric=co2_ppm&start={NOW - 3600}",
               "facility").get_json()["points"]
    assert len(pts) == 30


def test_on_intervals_count_on_time_capped_at_a_gap() -> None:
    pts = [(0, "on"), (60, "on"), (120, "off"), (200, "on"), (5000, "off"), (6000, "warming"), (6100, "on")]
    # 0-120 on; 200 on, next sample 4800 s later: only the 900 s cap counts; 6100 on until the end (cap).
    assert health.on_intervals(pts, 0, 7000) == [(0, 120), (200, 1100), (6100, 7000)]
    assert health.on_intervals(pts, 50, 250) == [(50, 120), (200, 250)]
    assert health.on_intervals([(0, 1), (10, 0)], 0, 100) == [(0, 10)]  # enum indexes from a numbers-only store
    assert health.on_intervals([], 0, 100) == []


def test_usage_figures_per_day_and_at_night() -> None:
    spans = [(local(0, 8), local(0, 10)), (local(1, 21), local(2, 1))]
    figures = health.usage_for(spans, WEEK, ZONE)
    assert figures["days"] == [2.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert figures["total"] == 6.0 and figures["night"] == 3.0
    # The site's days, whatever the server's zone: Monday 00:30-01:30 in Shanghai (Sunday evening in UTC)
    # is Monday's, and at night.
    early = health.usage_for([(local(0, 0, 30), local(0, 1, 30))], WEEK, ZONE)
    assert early["days"][0] == 1.0 and early["night"] == 1.0
    assert health.parse_week("2025-W10") == WEEK
    assert health.parse_week(None, today=date(2025, 3, 6)) == WEEK
    with pytest.raises(ValueError, match="2025-W07"):
        health.parse_week("last week")


def test_iter_points_pages_past_the_store_limit(tmp_path: Path) -> None:
    store = SqlitePointStore(tmp_path / "p.db")
    store.write([Sample("s", "g", "d", "display", 1000.0 + i, {"power": "on"}) for i in range(250)])
    got = list(health.iter_points(store, "g", "d", "power", 0, 2000, chunk=600, limit=40))
    assert [ts for ts, _ in got] == [1000.0 + i for i in range(250)]
    store.close()


@sqlite_only
def test_usage_page(app) -> None:
    client, _ = login(app, "facility")
    page = client.get("/health/usage?week=2025-W10").get_data(as_text=True)
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr[^>]*>\s*<td><a [^>]*>Room (\d+)</a>.*?</tr>", page, re.S)
            if "projector" in m.group(0) or "display" in m.group(0)}
    assert rows, page
    proj = re.search(r"Room 101</a>.*?projector.*?</tr>", page, re.S).group(0)
    assert "<b>2.0 h</b>" in proj
    display = re.search(r"Room 102</a>.*?display.*?</tr>", page, re.S).group(0)
    assert "<b>4.0 h</b>" in display and "3.0 h" in display and "leftover" in page
    assert "Left on at night: <b>1</b>" in page
    assert client.get("/health/usage?week=soon").status_code == 400
    assert client.get("/health/usage").status_code == 200


@sqlite_only
def test_usage_page_reads_each_device_once(app, monkeypatch: pytest.MonkeyPatch) -> None:
    """`/health/usage` reads a device's week from the store in one read (paged back only past MAX_POINTS), not
    one per 6 hours (29 a device for a week over, 2,500 a page of 50 rooms at 10,000 rooms): the reads are the
    page's power devices, and the figures are those the 6-hour chunks gave (the same points)."""
    store = central(app).store
    reads: list[tuple[str, str]] = []
    query = store.query

    def counted(gateway: str, device: str, *args: object, **kw: object) -> list:
        reads.append((gateway, device))
        return query(gateway, device, *args, **kw)

    monkeypatch.setattr(store, "query", counted)
    client, _ = login(app, "facility")
    page = client.get("/health/usage?week=2025-W10").get_data(as_text=True)
    # gw-101, gw-102 and gw-201 each with a projector and a display; gw-901 reports none.
    assert sorted(reads) == sorted((gw, d) for gw in ("gw-101", "gw-102", "gw-201") for d in ("display", "proj"))
    assert "<b>2.0 h</b>" in re.search(r"Room 101</a>.*?projector.*?</tr>", page, re.S).group(0)
    display = re.search(r"Room 102</a>.*?display.*?</tr>", page, re.S).group(0)
    assert "<b>4.0 h</b>" in display and "3.0 h" in display
    start, end = local(0, 0) - health.MAX_SAMPLE_GAP_S, local(7, 0)
    for gw, device in set(reads):
        assert (list(health.iter_points(query.__self__, gw, device, "power", start, end, chunk=end - start + 1))
                == list(health.iter_points(query.__self__, gw, device, "power", start, end)))


# ---------------------------------------------------------------- schedules


def _schedule_form(csrf: str, **change: object) -> dict:
    return {"csrf": csrf, "name": "Building A off", "at": "22:00", "days": ["mon", "tue", "wed", "thu", "fri"],
            "action": "power_off", "kinds": ["display", "projector"], "school_id": "s1", "building_id": "",
            "enabled": "on", **change}


def _schedules(app) -> list[Schedule]:
    with central(app).registry.session() as s:
        return list(s.query(Schedule).order_by(Schedule.id))


def test_create_edit_disable_and_run_a_schedule(app) -> None:
    client, csrf = login(app, "facility")
    assert client.post("/health/schedules", data=_schedule_form("")).status_code == 403
    assert _schedules(app) == []
    resp = client.post("/health/schedules", data=_schedule_form(csrf))
    assert resp.status_code == 302
    [row] = _schedules(app)
    assert (row.name, row.at, row.days, row.kinds, row.school_id, row.enabled) == \
        ("Building A off", "22:00", "mon,tue,wed,thu,fri", "display,projector", "s1", True)
    listing = client.get("/health/schedules").get_data(as_text=True)
    assert "Building A off" in listing and "school s1" in listing and "Disable" in listing
    # Edit.
    resp = client.post(f"/health/schedules/{row.id}", data=_schedule_form(csrf, at="21:30", days=["fri"]))
    assert resp.status_code == 302
    [row] = _schedules(app)
    assert (row.at, row.days) == ("21:30", "fri")
    # Disable, enable.
    assert client.post(f"/health/schedules/{row.id}/enabled", data={"csrf": csrf}).status_code == 302
    assert _schedules(app)[0].enabled is False
    client.post(f"/health/schedules/{row.id}/enabled", data={"csrf": csrf, "enabled": "on"})
    assert _schedules(app)[0].enabled is True
    # Running by hand switches equipment: admins only.
    assert client.post(f"/health/schedules/{row.id}/run", data={"csrf": csrf}).status_code == 403
    admin, admin_csrf = login(app, "admin")
    assert admin.post(f"/health/schedules/{row.id}/run", data={"csrf": admin_csrf}).status_code == 302
    page = admin.get(f"/health/schedules/{row.id}").get_data(as_text=True)
    assert "Run now" in page and "without --mqtt" in page and "6 failed" in page
    assert "Run now" not in client.get(f"/health/schedules/{row.id}").get_data(as_text=True)
    with central(app).registry.session() as s:
        [run] = s.query(ScheduleRun).all()
        assert len(run.results) == 6 and {r["status"] for r in run.results} == {"failed"}
    trail = [r for r in central(app).registry.audit_trail() if r["action"] == "schedule"]
    assert [r["user"] for r in trail] == ["boss", "fm", "fm", "fm", "fm"]


def test_bad_schedules_are_refused_clearly(app) -> None:
    client, csrf = login(app, "admin")
    for change, message in [({"at": "24:00"}, "time must be HH:MM"), ({"days": []}, "days must be some of"),
                            ({"kinds": []}, "devices must be some of"), ({"name": ""}, "name needs 1 to 100"),
                            ({"action": "explode"}, "action must be one of")]:
        resp = client.post("/health/schedules", data=_schedule_form(csrf, **change))
        assert resp.status_code == 400 and message in resp.get_data(as_text=True), change
    assert _schedules(app) == []
    client.post("/health/schedules", data=_schedule_form(csrf))
    [row] = _schedules(app)
    resp = client.post(f"/health/schedules/{row.id}", data=_schedule_form(csrf, at="7pm"))
    assert resp.status_code == 400 and "time must be HH:MM" in resp.get_data(as_text=True)
    assert _schedules(app)[0].at == "22:00"


def test_unknown_schedule_is_404(app) -> None:
    client, csrf = login(app, "facility")
    assert client.get("/health/schedules/999").status_code == 404
    assert client.get(f"/health/schedules/{2**31}").status_code == 404  # past PostgreSQL's INTEGER
    assert client.post("/health/schedules/x/enabled", data={"csrf": csrf}).status_code == 404


# ---------------------------------------------------------------- background work


def test_register_starts_and_stops_the_monitor_and_scheduler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPUS_ALARM_INTERVAL", "0.05")
    monkeypatch.setenv("CAMPUS_SCHEDULE_INTERVAL", "0.05")
    db = str(tmp_path / "c.db")
    app = create_app(WebConfig(store_url=f"sqlite:///{db}", db_url=db))
    c = central(app)
    monitor, scheduler = c.alarm_monitor, c.scheduler
    assert monitor is not None and scheduler is not None
    wait_until(lambda: monitor.runs > 0, 10, message="monitor ran")
    assert len(alarms.list_rules(c.registry)) == len(alarms.RULE_KINDS)  # seeded on first use
    close_app(app)
    assert not monitor._thread.is_alive() and not scheduler._thread.is_alive()


# ---------------------------------------------------------------- in a browser, against `campus demo`


def _api(base: str, token: str, path: str, body: dict | None = None) -> object:
    req = urllib.request.Request(f"{base}{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_facility_sees_and_acknowledges_a_co2_alarm_in_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    port, data = free_port(), tmp_path / "demo"
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CAMPUS_ALARM_INTERVAL": "1"}
    demo = subprocess.Popen([sys.executable, "-m", "programs.cli", "demo", "--rooms", "2", "--http-port", str(port),
                             "--data-dir", str(data)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        logins = wait_until(lambda: (data / "logins.txt").exists() and dict(
            line.split(" ", 1) for line in (data / "logins.txt").read_text().splitlines()), 60, message="demo logins")
        token, password = logins["token"], logins["facility"]
        wait_until(lambda: any(d["gateway"] == "gw-101" and "co2_ppm" in d["latest"]
                               for d in _api(base, token, "/api/devices")), 60, message="CO2 from gw-101")

        def co2_alarm_open() -> bool:
            return any(a["gateway"] == "gw-101" and a["kind"] == "co2_above"
                       for a in _api(base, token, "/api/alarms?state=open"))

        # Start from fresh air, so the alarm we see is the one we cause.
        _api(base, token, "/api/demo/simulators/gw-101/env", {"overrides": {"co2_ppm": 600}})
        wait_until(lambda: not co2_alarm_open(), 30, message="no CO2 alarm in room 101")
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{base}/login")
            page.fill("input[name=username]", "facility")
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/")
            page.click("header.top a:has-text('Alarms')")
            page.wait_for_url(f"{base}/health/alarms")
            row = page.locator("#open-alarms tr[data-gateway='gw-101'][data-kind='co2_above']")
            expect(page.locator("#updated")).to_contain_text("Updated")
            expect(row).to_have_count(0)

            _api(base, token, "/api/demo/simulators/gw-101/env", {"overrides": {"co2_ppm": 2100}})
            # No reload: the page polls and the alarm appears by itself.
            expect(row).to_be_visible(timeout=45_000)
            expect(row).to_contain_text("CO2 too high")
            expect(row).to_contain_text("Room 101")
            expect(row).to_contain_text("New — needs attention")
            row.get_by_role("button", name="Acknowledge").click()
            expect(row).to_contain_text("Acknowledged by facility", timeout=15_000)
            expect(row.get_by_role("button", name="Acknowledge")).to_have_count(0)
            acked = next(a for a in _api(base, token, "/api/alarms?state=open")
                         if a["gateway"] == "gw-101" and a["kind"] == "co2_above")
            assert acked["acked_by"] == "facility" and acked["cleared_at"] is None

            # The board shows it too, as acknowledged, without a reload either.
            page.click("nav.htabs a:has-text('Board')")
            room = page.locator(".hroom[data-gateway='gw-101']")
            expect(room.locator(".halarms")).to_contain_text("acknowledged by facility", timeout=15_000)
            page.goto(f"{base}/health/alarms")
            expect(row).to_contain_text("Acknowledged by facility")
            shot = screenshot_path("health.png", tmp_path)
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            browser.close()
        _api(base, token, "/api/demo/simulators/gw-101/env", {"overrides": {"co2_ppm": None}})
    finally:
        demo.terminate()
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
        log.close()
    assert demo.returncode == 0, (tmp_path / "demo.log").read_text()
    assert "Traceback" not in (tmp_path / "demo.log").read_text()


def test_a_gateway_whose_clock_is_a_day_off_is_warned_about(app) -> None:
    ledger = Ledger(db_url_of(app.db))
    try:
        ledger.record([], [], [], {"gw-102": -86400.0})  # its heartbeats arrive a day before their ts
    finally:
        ledger.close()
    rooms = {r["gateway"]: r for r in call(app, "GET", "/api/board", "facility").get_json()["rooms"]}
    assert rooms["gw-102"]["clock_wrong"] is True and rooms["gw-102"]["clock_offset"] == -86400.0
    assert rooms["gw-101"]["clock_wrong"] is False
    page = call(app, "GET", "/health/rooms/gw-102", "facility").get_data(as_text=True)
    assert "Gateway clock is 1440 min ahead" in page
    assert "Gateway clock is" not in call(app, "GET", "/health/rooms/gw-101", "facility").get_data(as_text=True)
    gateways = {g["id"]: g for g in call(app, "GET", "/api/gateways", "facility").get_json()}
    assert gateways["gw-102"]["clock_offset"] == -86400.0 and gateways["gw-102"]["clock_wrong"] is True


# ---------------------------------------------------------------- the 7-day power chart, in a browser


def _a_week_of_projector_power(ledger: Ledger, points: SqlitePointStore) -> None:
    """One room whose projector reported every 10 s for 7 days: on 8 h a day on 6 days (48 h), off otherwise."""
    now = time.time()
    ledger.record([Sequenced("s1", "gw-101", "proj", next(_seq), now - 5, values={"power": "off"})],
                  [("s1", "gw-101", State(online=True, ts=now, room="101", devices={"proj": DEVICES["proj"]},
                                          interval=5))], [])
    start = now - 7 * 86400 + 600
    on = [(start + day * 86400 + 3600, start + day * 86400 + 9 * 3600) for day in range(6)]
    samples = [Sample("s1", "gw-101", "proj", "projector", ts,
                      {"power": "on" if any(a <= ts < b for a, b in on) else "off"})
               for ts in (start + 10 * i for i in range(int((now - start) // 10)))]
    points.write(samples)


@contextlib.contextmanager
def _chromium_as_facility(app) -> Iterator[tuple[object, str]]:
    """The app served on a loopback port, and a headless Chromium page logged in as facility (fm)."""
    from playwright.sync_api import sync_playwright

    from dashboards.server import serve

    server = serve(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(f"{base}/login")
                page.fill("input[name=username]", "fm")
                page.fill("input[name=password]", "fm-password")
                page.click("button[type=submit]")
                page.wait_for_url(re.compile(r"/(district)?$"))  # more than one school: the district first
                yield page, base
            finally:
                browser.close()
    finally:
        server.shutdown()


@pytest.mark.slow
def test_seven_day_power_chart_draws_the_hours_on_in_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 7-day projector chart was blank while its label said "48 h on": each 10 s sample was drawn
    as its own rectangle, 0.01 px wide on a week, and every one under the 0.05 px cut was left out."""
    from playwright.sync_api import expect

    app = web_app(central_db(tmp_path, _a_week_of_projector_power), monkeypatch)
    try:
        register_rooms(app, (("gw-101", "s1", "101", "A"),))
        add_people(app)
        with _chromium_as_facility(app) as (page, base):
            page.goto(f"{base}/health/rooms/gw-101?window=7d")
            chart = page.locator(".hchart[data-device='proj']")
            expect(chart.locator(".now")).to_contain_text("on ", timeout=30_000)
            label = chart.locator(".now").inner_text()
            hours = float(re.search(r"on ([0-9.]+) h", label).group(1))
            assert 46 <= hours <= 50, label
            # What is drawn says the same as the label: the "on" bars span 48 of the 168 hours' width.
            widths = chart.locator("svg rect.s-on").evaluate_all("rs => rs.map(r => +r.getAttribute('width'))")
            plot = 640 - 48 - 12
            assert sum(widths) == pytest.approx(plot * 48 / 168, rel=0.06), (len(widths), sum(widths))
            assert len(widths) <= 20  # one bar per stretch of "on", not one per sample
            assert float(chart.get_attribute("data-step")) > 0  # a week of 10 s samples came downsampled
    finally:
        close_app(app)


@sqlite_only
@pytest.mark.slow
def test_the_board_shows_a_gateway_not_installed_yet_in_chromium(app) -> None:
    with _chromium_as_facility(app) as (page, base):
        from playwright.sync_api import expect

        page.goto(f"{base}/health/")
        room = page.locator(".hroom[data-gateway='gw-901']")
        expect(room.locator("header .badge")).to_have_text("not installed yet", timeout=15_000)
        expect(room).not_to_have_class(re.compile(r"p-offline"))
        expect(page.locator(".hroom[data-gateway='gw-201'] header .badge")).to_have_text("offline")
        expect(page.locator("#not-installed")).to_have_text("Not installed yet: 1")
        expect(page.locator("#summary [data-problem='offline']")).to_contain_text("Offline: 1")


def test_messages_waiting_for_central_are_shown_per_gateway(app) -> None:
    outbox = {"pending": 40, "unacked": 35, "dropped": 0, "last_seq": 90, "instance": 5, "oldest": 51,
              "oldest_age": 1200}
    ledger = Ledger(db_url_of(app.db))
    try:
        ledger.record([], [("s1", "gw-102", State(online=True, ts=time.time(), room="102", devices=DEVICES,
                                                  outbox=outbox))], [])
    finally:
        ledger.close()
    gateways = {g["id"]: g for g in call(app, "GET", "/api/gateways", "facility").get_json()}
    assert gateways["gw-102"]["waiting"] == 40 and gateways["gw-102"]["waiting_age"] >= 1200
    assert gateways["gw-102"]["waiting_long"] is True and gateways["gw-102"]["acked_seq"] == 50
    assert not gateways["gw-101"]["waiting"]
    rooms = {r["gateway"]: r for r in call(app, "GET", "/api/board", "facility").get_json()["rooms"]}
    assert rooms["gw-102"]["waiting"] == 40 and rooms["gw-102"]["waiting_long"] is True
    page = call(app, "GET", "/health/rooms/gw-102", "facility").get_data(as_text=True)
    assert "⚠ 40 messages waiting for central, oldest 20 min (is ingest running?)" in page
    assert "waiting for central" not in call(app, "GET", "/health/rooms/gw-101", "facility").get_data(as_text=True)
