"""Hostile ids, names and numbers through the web app on PostgreSQL: a 4xx, never a 5xx.

SQLite takes what PostgreSQL refuses outright: a NUL in any text ("PostgreSQL text fields cannot contain
NUL"), an integer beyond INTEGER's 32 bits ("integer out of range"), a string longer than its VARCHAR.
Each of these, reaching a query, made a database error, which the app answers as an outage (503). The
other fuzz tests run on SQLite and so never saw them; this one sends the same kinds of value to every
route that takes an id, a name or a number, on PostgreSQL, and checks that each is refused as the
caller's mistake (or, for a value that could be a name, taken), never a 5xx.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from dashboards import close_app
from dashboards.context import central
from tests.apps import add_people, central_db, register_rooms, two_rooms, web_app

# What no gateway, device or command id can be: a NUL, 10 kB, a leading '-', 65 characters.
NOT_IDS = ["a\x00b", "x" * 10_000, "-1", "g" * 65]
# What no row id (alarm, schedule, building) can be on PostgreSQL: past INTEGER's 32 bits, past 12 digits.
NOT_ROW_IDS = [str(2**31), "9" * 13]
HOSTILE = NOT_IDS + NOT_ROW_IDS
ROW_ID_ROUTES = [("POST", "/api/alarms/{}/ack"), ("POST", "/health/alarms/{}/ack"), ("GET", "/health/schedules/{}"),
                 ("POST", "/health/schedules/{}"), ("POST", "/health/schedules/{}/enabled"),
                 ("POST", "/health/schedules/{}/run")]
ID_ROUTES = [("POST", "/provisioning/gateways/{}/push"), ("POST", "/provisioning/gateways/{}/password"),
             ("POST", "/provisioning/gateways/{}/devices"), ("POST", "/provisioning/gateways/gw-101/devices/{}/remove"),
             ("POST", "/api/gateways/{}/devices/proj/commands"), ("POST", "/api/gateways/gw-101/devices/{}/commands"),
             ("GET", "/api/commands/{}"), ("GET", "/api/commands?gateway={}"), ("GET", "/api/events?gateway={}"),
             ("GET", "/api/events?type={}"), ("GET", "/api/alarms?gateway={}"), ("GET", "/health/rooms/{}"),
             ("GET", "/health/rooms/{}/history.csv"), ("GET", "/panel/{}"), ("GET", "/panel/{}/cards"),
             ("GET", "/provisioning/gateways/{}"), ("GET", "/provisioning/gateways/{}/config.yaml")]
OTHER_GETS = ["/?school={}", "/health/?school={}", "/health/?building={}", "/api/board?school={}",
              "/api/board?building={}", "/health/usage?school={}", "/api/alarms?limit={}", "/api/events?since={}"]


@pytest.fixture
def app(tmp_path: Path, central_db_url: str, monkeypatch: pytest.MonkeyPatch):
    app = web_app(central_db(tmp_path, two_rooms, central_db_url), monkeypatch)
    register_rooms(app)
    app.tokens = add_people(app)
    yield app
    close_app(app)


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


@pytest.mark.parametrize("central_db_url", ["postgresql"], indirect=True)
def test_hostile_ids_names_and_numbers_are_a_4xx_on_postgresql(app) -> None:
    client = app.test_client()
    token = _csrf(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"csrf": token, "username": "boss", "password": "boss-password"}).status_code == 302
    csrf = _csrf(client.get("/provisioning/gateways").get_data(as_text=True))
    bearer = {"Authorization": f"Bearer {app.tokens['admin']}"}
    reg = central(app).registry
    wrong: list[tuple[str, str, int]] = []

    def send(method: str, path: str, low: int = 400, **kw: object) -> None:
        status = client.open(path, method=method, **kw).status_code
        if not low <= status < 500:
            wrong.append((method, path[:90], status))

    for value in HOSTILE:
        part = quote(value, safe="")
        for method, path in ROW_ID_ROUTES + ID_ROUTES:
            # A 4xx where the value cannot name what the route looks up; else (a number is a valid gateway
            # id) an answer about nothing: anything but a 5xx.
            cannot = (method, path) in ROW_ID_ROUTES or value in NOT_IDS
            send(method, path.format(part), low=400 if cannot else 200, data={"csrf": csrf},
                 headers={"X-CSRF-Token": csrf, **bearer} if path.startswith("/api/") else {"X-CSRF-Token": csrf})
        for path in OTHER_GETS:  # a filter naming nothing may answer an empty page: anything but a 5xx
            send("GET", path.format(part), low=200)
        for field in ("gateway", "school", "room", "building"):
            form = {"csrf": csrf, "gateway": "gw-new", "school": "s1", "room": "r1", "building": "A", field: value}
            send("POST", "/provisioning/gateways", low=200, data=form)
        send("POST", "/provisioning/places", low=200, data={"csrf": csrf, "school": value, "name": value, "room": value,
                                                   "building": value})
        for field in ("device", "profile"):
            form = {"csrf": csrf, "device": "d1", "profile": "env-6in1-modbus", "host": "10.0.0.5", field: value}
            send("POST", "/provisioning/gateways/gw-101/devices", low=200, data=form)
        for field in ("name", "school_id", "building_id"):
            form = {"csrf": csrf, "name": "night", "at": "22:00", "days": "mon", "action": "power_off",
                    "kinds": "display", field: value}
            send("POST", "/health/schedules", low=200, data=form)
        send("POST", "/health/thresholds", low=200, data={"csrf": csrf, "rule_id": value, "enabled": "on"})
        csv = f"school,building,room,gateway\ns1,{value},{value},gw-q\n".encode()
        send("POST", "/provisioning/import", low=200, data={"csrf": csrf, "file": (io.BytesIO(csv), "rooms.csv")},
             content_type="multipart/form-data")
        send("POST", "/api/gateways/gw-101/devices/proj/commands", json={"action": "power_on", "ttl": value},
             headers=bearer)
        send("GET", "/api/gateways", headers={"Authorization": f"Bearer {value}"})
        send("POST", "/login", low=200, data={"csrf": token, "username": value, "password": value})

    assert wrong == []
    assert central(app).ledger.commands() == []  # not one of the commands above was valid
    # Refusals are audited with what was sent, a NUL written as \x00 (PostgreSQL cannot store the byte).
    assert any("a\\x00b" in r["detail"] and not r["ok"] for r in reg.audit_trail(limit=2000))


def test_a_nul_in_a_school_or_gateway_of_the_url_is_no_500(app) -> None:
    """The page's time zone is looked up from the URL's school or gateway before any view refuses it (the
    footer of every page, error pages included): a NUL byte, which PostgreSQL refuses in a text parameter,
    once made the error page itself a 500 (the fuzzer above, in CI). It is not an id: the site's zone."""
    client = app.test_client()
    token = _csrf(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"csrf": token, "username": "boss", "password": "boss-password"}).status_code == 302
    for url in ("/?school=a%00b", "/health/?school=%00", "/health/rooms/gw%00x", "/health/usage-rate?school=s%001"):
        answer = client.get(url)
        assert 200 <= answer.status_code < 500, (url, answer.status_code)
        assert '"timeZone": "Asia/Shanghai"' in answer.get_data(as_text=True), url
