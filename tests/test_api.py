"""The JSON API through Flask's test client: every route, every role, every refusal.

The central database is real, on both engines (`central_db_url`: SQLite and PostgreSQL) for the tests
whose subject is what goes into or out of it, SQLite alone (`sqlite_only`) for refusals decided
before it; the ledger is filled through the same `record` call ingest uses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from central.store.base import Sample
from dashboards import close_app
from dashboards.context import central, web
from tests.apps import (
    ENV_AND_PROJECTOR,
    add_people,
    central_db,
    db_url_of,
    register_rooms,
    sqlite_only,
    two_rooms,
    web_app,
)

NOW = time.time()


@pytest.fixture
def app(tmp_path: Path, central_db_url: str):
    app = web_app(central_db(tmp_path, lambda ledger, points: two_rooms(ledger, points, NOW), central_db_url))
    register_rooms(app)
    app.tokens = add_people(app)
    yield app
    close_app(app)


def call(app, method: str, path: str, role: str | None = None, **kw):
    headers = {"Authorization": f"Bearer {app.tokens[role]}"} if role else {}
    return app.test_client().open(path, method=method, headers=headers, **kw)


READS = ["/api/gateways", "/api/devices", "/api/events", "/api/commands",
         "/api/telemetry?gateway=gw-101&device=env&metric=co2_ppm"]


@sqlite_only
def test_health_and_openapi_need_no_login(app) -> None:
    assert call(app, "GET", "/api/health").get_json() == {"status": "ok"}
    doc = call(app, "GET", "/api/openapi.json").get_json()
    routes = {r.rule.replace("<", "{").replace(">", "}") for r in app.url_map.iter_rules()
              if r.rule.startswith("/api/") and not r.rule.startswith("/api/demo/")}
    documented = set(doc["paths"])
    assert routes <= documented, f"undocumented routes: {routes - documented}"


@sqlite_only
@pytest.mark.parametrize("path", READS + ["/api/commands/x", "/api/audit"])
def test_every_route_refuses_without_login(app, path: str) -> None:
    assert call(app, "GET", path).status_code == 401
    bad = app.test_client().get(path, headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401


def test_admin_and_facility_see_everything(app) -> None:
    for role in ("admin", "facility"):
        assert {g["id"] for g in call(app, "GET", "/api/gateways", role).get_json()} == {"gw-101", "gw-102"}
        devices = call(app, "GET", "/api/devices", role).get_json()
        assert {(d["gateway"], d["id"]) for d in devices} >= {("gw-101", "env"), ("gw-102", "proj")}
        env = next(d for d in devices if d["gateway"] == "gw-101" and d["id"] == "env")
        assert env["latest"] == {"co2_ppm": 800} and env["kind"] == "environment" and env["status"] == "ok"
        events = call(app, "GET", "/api/events?type=card_swipe", role).get_json()
        assert {e["gateway"] for e in events} == {"gw-101", "gw-102"}


def test_teacher_sees_only_their_rooms(app) -> None:
    assert [g["id"] for g in call(app, "GET", "/api/gateways", "teacher").get_json()] == ["gw-101"]
    assert {d["gateway"] for d in call(app, "GET", "/api/devices", "teacher").get_json()} == {"gw-101"}
    assert {e["gateway"] for e in call(app, "GET", "/api/events", "teacher").get_json()} == {"gw-101"}
    ok = call(app, "GET", "/api/telemetry?gateway=gw-101&device=env&metric=co2_ppm", "teacher")
    assert ok.status_code == 200 and ok.get_json()["points"] == [[pytest.approx(NOW - 5), 800.0]]
    refused = call(app, "GET", "/api/telemetry?gateway=gw-102&device=env&metric=co2_ppm", "teacher")
    assert refused.status_code == 403
    assert call(app, "GET", "/api/events?gateway=gw-102", "teacher").status_code == 403
    assert call(app, "GET", "/api/audit", "teacher").status_code == 403


def test_command_refusals_change_nothing(app) -> None:
    body = {"json": {"action": "power_on", "params": {}}}
    # Facility managers read and acknowledge; they do not switch equipment.
    assert call(app, "POST", "/api/gateways/gw-101/devices/proj/commands", "facility", **body).status_code == 403
    # A teacher commands only their own room.
    assert call(app, "POST", "/api/gateways/gw-102/devices/proj/commands", "teacher", **body).status_code == 403
    assert call(app, "POST", "/api/gateways/gw-101/devices/proj/commands", None, **body).status_code == 401
    assert call(app, "GET", "/api/commands", "admin").get_json() == []
    trail = call(app, "GET", "/api/audit", "admin").get_json()
    assert sum(1 for r in trail if not r["ok"] and "gw-102" in r["detail"]) >= 1


@sqlite_only
@pytest.mark.parametrize("body, status, text", [
    ({"action": "explode"}, 400, "action must be one of"),
    ({"action": "power_on", "params": []}, 400, "params"),
    ({"action": "power_on", "ttl": 0}, 400, "ttl"),
    ("not json", 400, "not valid JSON"),
    ([1, 2], 400, "must be a JSON object, got an array"),
])
def test_bad_command_bodies(app, body, status: int, text: str) -> None:
    kw = {"json": body} if not isinstance(body, str) else {"data": body, "content_type": "application/json"}
    resp = call(app, "POST", "/api/gateways/gw-101/devices/proj/commands", "admin", **kw)
    assert resp.status_code == status and text in resp.get_json()["error"]


@sqlite_only
def test_unknown_device_and_no_broker(app) -> None:
    body = {"json": {"action": "power_on"}}
    assert call(app, "POST", "/api/gateways/gw-101/devices/nope/commands", "admin", **body).status_code == 404
    resp = call(app, "POST", "/api/gateways/gw-101/devices/proj/commands", "admin", **body)
    assert resp.status_code == 503 and "--mqtt" in resp.get_json()["error"]


@sqlite_only
@pytest.mark.parametrize("query, text", [
    ("gateway=gw-101&device=env", "metric"),
    ("gateway=gw-101&device=env&metric=co2_ppm&start=abc", "unix time"),
    ("gateway=gw-101&device=env&metric=co2_ppm&start=nan", "finite"),
    ("gateway=gw-101&device=env&metric=co2_ppm&start=10&end=5", "start is after end"),
    ("gateway=gw-101&device=env&metric=a%2Fb", "not a valid id"),
    ("gateway=gw-101&device=env&metric=co2_ppm&limit=0", "'limit' must be a whole number from 1 to 10000"),
    ("gateway=gw-101&device=env&metric=co2_ppm&limit=10001", "'limit' must be a whole number from 1 to 10000"),
    ("gateway=gw-101&device=env&metric=co2_ppm&limit=%EF%BC%95", "'limit' must be a whole number"),  # a wide 5
    ("gateway=gw-101&device=env&metric=co2_ppm&raw=yes", "'raw' must be 1 or 0"),
    ("gateway=gw-101&device=env&metric=co2_ppm&cursor=5", "cursor pages raw points"),
    ("gateway=gw-101&device=env&metric=co2_ppm&raw=1&cursor=inf", "finite"),
])
def test_bad_telemetry_queries(app, query: str, text: str) -> None:
    resp = call(app, "GET", f"/api/telemetry?{query}", "admin")
    assert resp.status_code == 400 and text in resp.get_json()["error"]


def test_telemetry_of_a_busy_window_keeps_the_newest_point_and_says_when_it_cuts(tmp_path: Path) -> None:
    """A device with 50,000 points in the window: the API used to answer the oldest 10,000 and say nothing.
    Now the answer is downsampled and says so, or (raw=1) is the newest page, with a cursor to the older."""
    end = round(NOW) - 60
    start = end - 50_000 + 1

    def fill(ledger, points) -> None:
        two_rooms(ledger, points, NOW)
        points.write([Sample("s1", "gw-101", "env", "environment", float(start + i), {"co2_ppm": float(i % 1000)})
                      for i in range(50_000)])

    app = web_app(central_db(tmp_path, fill))
    try:
        register_rooms(app)
        app.tokens = add_people(app)
        newest = [float(end), 999.0]
        series = "gateway=gw-101&device=env&metric=co2_ppm"
        window = f"{series}&start={start}&end={end}"
        body = call(app, "GET", f"/api/telemetry?{window}", "facility").get_json()
        assert body["downsampled"] is True and body["step"] > 0 and body["truncated"] is False
        assert len(body["points"]) <= 10_000 and body["points"][-1] == newest
        assert body["points"][0][0] <= start + 2 * body["step"]  # and it spans the whole window
        small = call(app, "GET", f"/api/telemetry?{window}&limit=500", "facility").get_json()
        assert len(small["points"]) <= 500 and small["points"][-1] == newest and small["step"] > body["step"]

        # Raw pages, from the newest back, until the cursor runs out: every point exactly once.
        pages, cursor = [], ""
        while True:
            page = call(app, "GET", f"/api/telemetry?{window}&raw=1&limit=10000{cursor}", "facility").get_json()
            pages.append(page["points"])
            assert page["downsampled"] is False and len(page["points"]) <= 10_000
            if not page["truncated"]:
                assert page["next"] is None
                break
            cursor = f"&cursor={page['next']}"
        assert pages[0][-1] == newest and [len(p) for p in pages] == [10_000] * 5
        assert [ts for p in reversed(pages) for ts, _ in p] == [float(start + i) for i in range(50_000)]
        # A window that holds few enough points is answered whole, as before.
        few = call(app, "GET", f"/api/telemetry?{series}&start={end - 99}&end={end}", "facility").get_json()
        assert len(few["points"]) == 100 and few["downsampled"] is False and few["truncated"] is False
    finally:
        close_app(app)


def test_browser_login_session_and_csrf(app) -> None:
    client = app.test_client()
    page = client.get("/login")
    token = page.get_data(as_text=True).split('name="csrf" value="')[1].split('"')[0]
    wrong = client.post("/login", data={"csrf": token, "username": "fm", "password": "nope"})
    assert wrong.status_code == 200 and "wrong password" in wrong.get_data(as_text=True)
    ok = client.post("/login", data={"csrf": token, "username": "fm", "password": "fm-password"})
    assert ok.status_code == 302
    assert len(client.get("/api/gateways").get_json()) == 2
    # A session write without the CSRF header is refused.
    no_csrf = client.post("/api/gateways/gw-101/devices/proj/commands", json={"action": "power_on"})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.get_json()["error"]
    trail = call(app, "GET", "/api/audit", "admin").get_json()
    assert [r["detail"] for r in trail if r["action"] == "login"][:2] == ["ok", "wrong user or password"]


@sqlite_only
def test_login_rate_limit(app) -> None:
    client = app.test_client()
    page = client.get("/login")
    token = page.get_data(as_text=True).split('name="csrf" value="')[1].split('"')[0]
    codes = [client.post("/login", data={"csrf": token, "username": "fm", "password": "x"}).status_code
             for _ in range(12)]
    assert codes[:10] == [200] * 10 and codes[10:] == [429, 429]
    # Even the right password is refused while limited: guessing gains nothing.
    right = client.post("/login", data={"csrf": token, "username": "fm", "password": "fm-password"})
    assert right.status_code == 429


def test_audit_records_are_json(app) -> None:
    call(app, "GET", "/api/gateways")  # refused: audited
    trail = call(app, "GET", "/api/audit", "admin").get_json()
    assert trail and json.dumps(trail)
    assert any(r["action"] == "refused" and "401" in r["detail"] for r in trail)


def test_ingest_workers_for_staff_only(app) -> None:
    central(app).ledger.record_worker("ingest-0", "central", 4242, NOW - 60,
                                                     {"messages": 10, "stored": 9, "rejected": 1})
    for role in ("admin", "facility"):
        workers = call(app, "GET", "/api/ingest", role).get_json()
        assert [(w["name"], w["pid"], w["stored"], w["rejected"], w["running"]) for w in workers] == [
            ("ingest-0", 4242, 9, 1, True)]
    assert call(app, "GET", "/api/ingest", "teacher").status_code == 403
    assert call(app, "GET", "/api/ingest").status_code == 401


# ---------------------------------------------------------------- hostile command bodies (issue 15)

TV = {**ENV_AND_PROJECTOR, "tv": {"profile": "display-lg-serial", "kind": "display", "status": "ok"},
      "own": {"profile": "my-own-projector", "kind": "projector", "status": "ok"}}  # a profile central lacks


def _strict(text: str) -> object:
    """What a browser's JSON.parse accepts: no NaN, no Infinity."""
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a JSON answer")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def commanding(tmp_path: Path, mosquitto, central_db_url: str):
    """The app with a command service on a real Mosquitto (as `campus web --mqtt`), and a display."""
    from campus.contract import State
    from central.ledger import Ledger

    db = central_db(tmp_path, lambda ledger, points: two_rooms(ledger, points, NOW), central_db_url)
    ledger = Ledger(db_url_of(db))
    ledger.record([], [("s1", "gw-101", State(online=True, ts=NOW + 1, room="101", devices=TV, interval=5))], [])
    ledger.close()
    app = web_app(db, mqtt_url=mosquitto.url)
    register_rooms(app)
    app.tokens = add_people(app)
    yield app
    close_app(app)


@sqlite_only
@pytest.mark.parametrize("raw, problem", [
    ('{"action":"set_volume","params":{"level":NaN}}', "NaN"),
    ('{"action":"set_volume","params":{"level":Infinity}}', "Infinity"),
    ('{"action":"set_volume","params":{"level":-Infinity}}', "-Infinity"),
    ('{"action":"set_volume","params":{"level":1e999}}', "finite"),
    ('{"action":"set_volume","params":{"level":5},"params":{"level":100}}', "'params' appears twice"),
    ('{"action":"set_volume","params":{"level":5,"level":100}}', "'level' appears twice"),
    ('{"action":"set_volume","params":{"level":123456789012345678901234567890}}', "64 bits"),
])
def test_non_json_numbers_and_duplicate_keys_are_refused_before_anything_is_stored(
        commanding, raw: str, problem: str) -> None:
    """The attack of issue 15: NaN in a command gave a 500, stored the command anyway, and /api/commands
    then answered `NaN`, which the teacher's panel cannot parse."""
    resp = call(commanding, "POST", "/api/gateways/gw-101/devices/tv/commands", "admin", data=raw,
                content_type="application/json")
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert problem in resp.get_json()["error"]
    assert central(commanding).ledger.commands() == []
    assert _strict(call(commanding, "GET", "/api/commands", "admin").get_data(as_text=True)) == []


@sqlite_only
@pytest.mark.parametrize("device, body, field", [
    ("tv", {"action": "set_volume", "params": {"level": 101}}, "params.level"),
    ("tv", {"action": "set_volume", "params": {"level": 50.5}}, "params.level"),
    ("tv", {"action": "set_volume", "params": {"level": "50"}}, "params.level"),
    ("tv", {"action": "set_volume", "params": {}}, "params.level"),
    ("tv", {"action": "set_volume", "params": {"level": 5, "fade": 2}}, "params.fade"),
    ("tv", {"action": "select_input", "params": {"input": "hdmi9"}}, "params.input"),
    ("tv", {"action": "power_on", "params": {"level": 5}}, "params.level"),
    ("tv", {"action": "mute", "params": "loud"}, "params"),
    ("tv", {"action": "mute", "when": "now"}, "when"),
    ("proj", {"action": "set_volume", "params": {"level": 5}}, "action"),  # projector-pjlink has no volume
    ("own", {"action": "select_input", "params": {"input": "HDMI 1\n"}}, "params.input"),
])
def test_bad_parameters_are_a_400_naming_the_field_and_store_nothing(commanding, device: str, body: dict,
                                                                      field: str) -> None:
    resp = call(commanding, "POST", f"/api/gateways/gw-101/devices/{device}/commands", "admin", json=body)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.get_json()["field"] == field and field in resp.get_json()["error"]
    assert central(commanding).ledger.commands() == []


def test_a_good_command_still_goes_out(commanding) -> None:
    resp = call(commanding, "POST", "/api/gateways/gw-101/devices/tv/commands", "admin",
                json={"action": "set_volume", "params": {"level": 35}, "ttl": 5})
    assert resp.status_code == 202  # no agent in this test: sent, waiting for the gateway
    [row] = central(commanding).ledger.commands()
    assert (row["device"], row["action"], row["params"]) == ("tv", "set_volume", {"level": 35})


def test_a_non_finite_number_stored_earlier_is_sent_as_null(commanding) -> None:
    """A ledger written by an older version may hold NaN: the API still answers JSON a browser reads."""
    central(commanding).ledger.add_command("old", "gw-101", "tv", "set_volume",
                                                          {"level": float("nan")}, "boss", NOW + 60)
    for path in ("/api/commands", "/api/commands/old"):
        resp = call(commanding, "GET", path, "admin")
        assert resp.status_code == 200
        answer = _strict(resp.get_data(as_text=True))
        row = answer[0] if isinstance(answer, list) else answer
        assert row["params"] == {"level": None}


@sqlite_only
def test_other_json_bodies_are_strict_too(app) -> None:
    pinned = []
    web(app).config.sim_control = lambda gateway, device, overrides: pinned.append(overrides)
    resp = call(app, "POST", "/api/demo/simulators/gw-101/env", "admin", data='{"overrides":{"co2_ppm":NaN}}',
                content_type="application/json")
    assert resp.status_code == 400 and "NaN" in resp.get_json()["error"] and pinned == []
    wrong_type = call(app, "POST", "/api/gateways/gw-101/devices/proj/commands", "admin", data="{}",
                      content_type="text/plain")
    assert wrong_type.status_code == 415 and "application/json" in wrong_type.get_json()["error"]
