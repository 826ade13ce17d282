"""Accounts scoped to schools (issue 19, part 5): a school's own IT person or facility manager.

A district of two schools, `alpha` (40 rooms) and `zeta` (25), every room reporting, with events, a
command, an open alarm and a schedule in each. An admin and a facility account limited to `alpha` get
only alpha's rows from every list (the totals in `X-Total-Count` say the filter is the query's, not a
page's), a 404 for zeta's gateway, command, alarm, schedule and timetable, a 403 for what belongs to the
whole district; a district-wide account sees both. A walk over every route of the app (`app.url_map`)
with the scoped accounts finds no response naming zeta: a route added later without its filter fails it.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from werkzeug.routing import Rule

from campus.contract import State
from central import alarms
from central import provisioning as prov
from central import schedules as sched
from central.ledger import Sequenced
from central.notify import channels as chan
from central.notify.outbox import Notifier, list_deliveries
from central.registry import Registry
from dashboards import close_app
from dashboards.context import central
from tests.apps import ENV_AND_PROJECTOR, central_db, sqlite_only, web_app

ROOMS = {"alpha": 40, "zeta": 25}
# role key -> (user name, role, schools)
ACCOUNTS = {"admin_a": ("it-alpha", "admin", ["alpha"]), "fm_a": ("fm-alpha", "facility", ["alpha"]),
            "admin": ("boss", "admin", []), "fm": ("fm", "facility", [])}
SCOPED = ("admin_a", "fm_a")
Z_GW = "gw-zeta-000"
A_GW = "gw-alpha-001"


def gateways(school: str) -> list[str]:
    return [f"gw-{school}-{i:03d}" for i in range(ROOMS[school])]


def two_schools(tmp: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """The district above; `app.tokens` by ACCOUNTS key, `app.ids` the zeta and alpha things by name."""
    app = web_app(central_db(tmp, lambda ledger, points: None, db_url=db_url), monkeypatch)
    c = central(app)
    csv = "school,building,room,gateway\n" + "".join(
        f"{school},A,{100 + i},{gw}\n" for school in ROOMS for i, gw in enumerate(gateways(school)))
    assert prov.import_csv(c.registry, csv.encode()).ok
    now = time.time()
    messages, states = [], []
    for school in ROOMS:
        for i, gw in enumerate(gateways(school)):
            co2 = 2500 if i == 0 else 600  # one open CO2 alarm per school
            messages.append(Sequenced(school, gw, "env", 1, now - 5, values={"co2_ppm": co2}))
            messages.append(Sequenced(school, gw, "reader", 2, now - 4, event=("card_swipe", {"card": f"c{i}"})))
            states.append((school, gw, State(online=True, ts=now, room=str(100 + i),
                                             devices={k: dict(v) for k, v in ENV_AND_PROJECTOR.items()}, interval=5)))
    c.ledger.record(messages, states, [])
    alarms.evaluate(c.registry, c.ledger, now=now)
    for school in ROOMS:
        c.ledger.add_command(f"cmd-{school}", gateways(school)[0], "proj", "power_on", {}, "boss", now + 60)
        sched.create(c.registry, sched.validate({"name": f"off-{school}", "at": "22:00", "days": "mon",
                                                 "action": "power_off", "kinds": "projector",
                                                 "school_id": school}, c.registry))
    sched.create(c.registry, sched.validate({"name": "off-everywhere", "at": "23:00", "days": "mon",
                                             "action": "power_off", "kinds": "projector"}, c.registry))
    tokens = {}
    for key, (name, role, schools) in ACCOUNTS.items():
        c.registry.add_user(name, f"{name}-password", role, schools=schools)
        tokens[key] = c.registry.issue_token(name)
    app.tokens = tokens  # type: ignore[attr-defined]
    zeta_alarm = next(a for a in alarms.list_alarms(c.registry, "open") if a["gateway"] == Z_GW)
    zeta_schedule = next(s for s in sched.all_schedules(c.registry) if s.name == "off-zeta")
    # A notification channel, a mute and a delivery of each school (issue 20): alpha's first, so each has id 1.
    notify = {}
    for school in ROOMS:
        ch = chan.save_channel(c.registry, chan.parse_channel(c.registry, {
            "name": f"duty-{school}", "kind": "webhook", "school": school, "url": f"http://127.0.0.1:9/{school}",
            "secret": f"secret-of-{school}-0123456789"}))
        mute = chan.add_mute(c.registry, {"school": school, "room": "101", "until": now + 3600}, "boss",
                             ZoneInfo("Asia/Shanghai"), now=now)
        notify[school] = (ch["id"], mute["id"])
    Notifier(c.registry, window=0.0).batch(now + 1)  # the open alarms' deliveries, not sent
    deliveries = {d["school"]: d["id"] for d in list_deliveries(c.registry)[0]}
    app.ids = {"alarm": zeta_alarm["id"], "schedule": zeta_schedule.id,  # type: ignore[attr-defined]
               "chid": (notify["alpha"][0], notify["zeta"][0]), "mid": (notify["alpha"][1], notify["zeta"][1]),
               "did": (deliveries["alpha"], deliveries["zeta"])}
    return app


@pytest.fixture
def district(tmp_path: Path, central_db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    app = two_schools(tmp_path, central_db_url, monkeypatch)
    yield app
    close_app(app)


def call(app: Flask, who: str, path: str, method: str = "GET", **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {app.tokens[who]}"}  # type: ignore[attr-defined]
    return app.test_client().open(path, method=method, headers=headers, **kw)


def total(app: Flask, who: str, path: str) -> int:
    resp = call(app, who, path)
    assert resp.status_code == 200, (who, path, resp.get_data(as_text=True)[:300])
    return int(resp.headers["X-Total-Count"])


# ---------------------------------------------------------------- lists


def test_scoped_accounts_get_only_their_schools_rows_and_district_accounts_all(district: Flask) -> None:
    app = district
    alpha, every = ROOMS["alpha"], sum(ROOMS.values())
    expected = {  # path: (total for an alpha account, total for a district-wide one)
        "/api/gateways?limit=5": (alpha, every),
        "/api/devices?limit=5": (2 * alpha, 2 * every),
        "/api/events?limit=5": (alpha, every),
        "/api/commands?limit=5": (1, 2),
        "/api/alarms?limit=5": (1, 2),
        "/api/board?limit=5": (alpha, every),
        "/api/schools": (1, 2),
        "/api/gateways?q=zeta": (0, ROOMS["zeta"]),  # a search does not reach past the scope
        "/api/board?school=zeta": (0, ROOMS["zeta"]),  # nor a filter
        "/api/devices?gateway=gw-zeta-001,gw-alpha-001": (2, 4),
    }
    for path, (scoped, district_wide) in expected.items():
        for who in SCOPED:
            assert total(app, who, path) == scoped, (who, path)
        for who in ("admin", "fm"):
            assert total(app, who, path) == district_wide, (who, path)
    for who in SCOPED:
        for path in expected:
            assert "zeta" not in call(app, who, path.replace("limit=5", "limit=1000")).get_data(as_text=True), path
        board = call(app, who, "/api/board?limit=1000").get_json()
        assert board["counts"]["rooms"] == alpha and board["counts"]["alarm"] == 1
        assert [s["school"] for s in call(app, who, "/api/schools").get_json()] == ["alpha"]
        usage = call(app, who, "/api/usage").get_json()
        assert {r["school"] for r in usage["rooms"]} == {"alpha"} and len(usage["rooms"]) == alpha
    assert [s["school"] for s in call(app, "fm", "/api/schools").get_json()] == ["alpha", "zeta"]
    assert {r["school"] for r in call(app, "fm", "/api/usage").get_json()["rooms"]} == {"alpha", "zeta"}


# ---------------------------------------------------------------- one thing of the other school


def test_the_other_schools_things_are_not_found_and_district_things_forbidden(district: Flask) -> None:
    app, ids = district, district.ids  # type: ignore[attr-defined]
    not_found = [f"/api/telemetry?gateway={Z_GW}&device=env&metric=co2_ppm", f"/api/events?gateway={Z_GW}",
                 "/api/commands/cmd-zeta", f"/health/rooms/{Z_GW}", f"/health/rooms/{Z_GW}/history.csv",
                 f"/panel/{Z_GW}", f"/panel/{Z_GW}/cards", f"/api/panel/{Z_GW}/stream",
                 "/api/schools/zeta/timetable", "/api/schools/zeta/timetable/periods", "/health/timetables/zeta",
                 "/health/timetables/zeta/timetable.csv", "/api/usage?school=zeta", "/health/usage-rate?school=zeta",
                 "/health/usage-rate.csv?school=zeta", "/health/usage-rate.xlsx?school=zeta",
                 f"/health/schedules/{ids['schedule']}"]
    admin_not_found = [f"/provisioning/gateways/{Z_GW}", f"/provisioning/gateways/{Z_GW}/config.yaml"]
    for who in SCOPED:
        for path in not_found + (admin_not_found if who == "admin_a" else []):
            resp = call(app, who, path)
            assert resp.status_code == 404, (who, path, resp.status_code)
            assert Z_GW not in resp.get_data(as_text=True) and "zeta" not in resp.get_data(as_text=True)
        # The same answer for a gateway that does not exist: nothing tells the two apart.
        assert call(app, who, "/panel/gw-nowhere").status_code == 404
        resp = call(app, who, f"/api/alarms/{ids['alarm']}/ack", "POST")
        assert resp.status_code == 404
    for who in ("admin", "fm"):  # district-wide: the same paths answer
        assert call(app, who, f"/health/rooms/{Z_GW}").status_code == 200
        assert call(app, who, "/api/schools/zeta/timetable").status_code == 200
        assert call(app, who, "/api/commands/cmd-zeta").status_code == 200
    assert alarms.list_alarms(central(app).registry, "all", ids=[ids["alarm"]])[0]["acked_by"] is None
    # Commands: the scoped admin commands alpha's rooms (refused for want of a broker here: 503), not zeta's.
    body = {"action": "power_on", "params": {}}
    assert call(app, "admin_a", f"/api/gateways/{Z_GW}/devices/proj/commands", "POST", json=body).status_code == 404
    assert call(app, "admin_a", f"/api/gateways/{A_GW}/devices/proj/commands", "POST", json=body).status_code == 503
    assert call(app, "admin", f"/api/gateways/{Z_GW}/devices/proj/commands", "POST", json=body).status_code == 503
    # What belongs to the whole district.
    for path in ("/api/audit", "/api/ingest"):
        for who in SCOPED:
            assert call(app, who, path).status_code == 403, path
    # Metrics: a school's own monitoring scrapes its schools' gateways and devices, not the district's
    # ingest workers.
    central(app).ledger.record_worker("ingest-1", "central-host", 1, time.time(), {"messages": 1})
    for who in SCOPED:
        resp = call(app, who, "/api/metrics")
        text = resp.get_data(as_text=True)
        assert resp.status_code == 200 and "zeta" not in text and "central-host" not in text
        assert text.count("campus_gateway_online{") == ROOMS["alpha"]
        assert text.count("campus_device_ok{") == 2 * ROOMS["alpha"]
    text = call(app, "fm", "/api/metrics").get_data(as_text=True)
    assert text.count("campus_gateway_online{") == sum(ROOMS.values()) and "central-host" in text
    for path in ("/provisioning/broker", "/provisioning/ingest"):
        assert call(app, "admin_a", path).status_code == 403, path
        assert call(app, "admin", path).status_code == 200, path
    reg = central(app).registry
    before = alarms.list_rules(reg)
    rule = before[0]
    resp = call(app, "admin_a", "/health/thresholds", "POST", data={"rule_id": str(rule["id"]), "enabled": ""})
    assert resp.status_code == 403 and alarms.list_rules(reg) == before
    refused = [r for r in reg.audit_trail(500) if r["user"] == "it-alpha" and not r["ok"]]
    assert any(r["detail"].startswith("404 GET /panel/") for r in refused)
    assert any(r["detail"].startswith("403 GET /api/audit") for r in refused)


def test_a_scoped_admin_changes_only_its_schools(district: Flask) -> None:
    app, ids = district, district.ids  # type: ignore[attr-defined]
    reg = central(app).registry
    zeta_before = reg.gateway_info(Z_GW)
    for path, data in ((f"/provisioning/gateways/{Z_GW}/devices", {"device": "x", "profile": "projector-pjlink"}),
                       (f"/provisioning/gateways/{Z_GW}/devices/proj/remove", {}),
                       (f"/provisioning/gateways/{Z_GW}/push", {}), (f"/provisioning/gateways/{Z_GW}/password", {}),
                       (f"/health/schedules/{ids['schedule']}", {"name": "x", "at": "01:00", "days": "mon",
                                                                  "action": "power_off", "kinds": "projector"}),
                       (f"/health/schedules/{ids['schedule']}/enabled", {}),
                       (f"/health/schedules/{ids['schedule']}/run", {})):
        assert call(app, "admin_a", path, "POST", data=data).status_code == 404, path
    assert reg.gateway_info(Z_GW) == zeta_before
    assert sched.get(reg, ids["schedule"]).enabled and sched.get(reg, ids["schedule"]).name == "off-zeta"
    resp = call(app, "admin_a", "/provisioning/gateways", "POST",
                data={"school": "zeta", "room": "900", "gateway": "gw-new"})
    assert resp.status_code == 403 and reg.gateway_info("gw-new") is None
    assert call(app, "admin_a", "/provisioning/gateways", "POST",
                data={"school": "alpha", "room": "900", "gateway": "gw-new"}).status_code == 200
    assert reg.gateway_info("gw-new")["school"] == "alpha"
    resp = call(app, "admin_a", "/provisioning/places", "POST", data={"what": "school", "school": "omega"})
    assert resp.status_code == 403
    assert "omega" not in [p["id"] for p in prov.places(reg)]
    csv = b"school,room,gateway\nalpha,901,gw-a901\nzeta,901,gw-z901\n"
    resp = call(app, "admin_a", "/provisioning/import", "POST", data={"text": csv.decode()})
    assert resp.status_code == 403 and "<td>3</td>" in resp.get_data(as_text=True)
    assert "not one of your schools" in resp.get_data(as_text=True)
    assert reg.gateway_info("gw-a901") is None and reg.gateway_info("gw-z901") is None  # all or nothing
    resp = call(app, "admin_a", "/health/schedules", "POST", data={
        "name": "everywhere", "at": "01:00", "days": "mon", "action": "power_off", "kinds": "projector"})
    assert resp.status_code == 403
    assert "everywhere" not in [s.name for s in sched.all_schedules(reg)]
    assert call(app, "admin_a", "/health/schedules", "POST", data={
        "name": "mine", "at": "01:00", "days": "mon", "action": "power_off", "kinds": "projector",
        "school_id": "alpha"}).status_code == 302
    listed = call(app, "admin_a", "/health/schedules").get_data(as_text=True)
    assert "mine" in listed and "off-alpha" in listed and "off-zeta" not in listed and "off-everywhere" not in listed


# ---------------------------------------------------------------- every route


FILL = {"gateway": (A_GW, Z_GW), "device": ("proj", "proj"), "school": ("alpha", "zeta"),
        "cid": ("cmd-alpha", "cmd-zeta"), "district": ("north", "north"),
        "room": ("100", "100"), "card": ("0123abcd", "0123abcd")}  # podium cards: a room of each school


def _text(resp: Any) -> str:
    """A response's text; a spreadsheet's (a zip) is that of its members."""
    body = resp.get_data()
    if body.startswith(b"PK"):
        with zipfile.ZipFile(io.BytesIO(body)) as book:
            return "".join(book.read(name).decode("utf-8", "replace") for name in book.namelist())
    return body.decode("utf-8", "replace")


def _paths(rule: Rule, ids: dict[str, Any], zeta: bool) -> str | None:
    values = {}
    for arg in rule.arguments:
        if arg == "aid":
            values[arg] = str(ids["alarm"]) if zeta else "1"
        elif arg == "sid":
            values[arg] = str(ids["schedule"]) if zeta else "1"
        elif arg in ("chid", "mid", "did"):  # notification channels, mutes, deliveries: (alpha's, zeta's)
            values[arg] = str(ids[arg][zeta])
        elif arg in FILL:
            values[arg] = FILL[arg][zeta]
        else:
            return None
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: values[m.group(1)], rule.rule)


@sqlite_only
def test_no_route_shows_a_scoped_account_the_other_school(district: Flask) -> None:
    """Every GET with alpha's names (and none) shows nothing of zeta; every route with zeta's names is
    refused (404, or 403 for what is the district's; 405 for a route of another method)."""
    app, ids = district, district.ids  # type: ignore[attr-defined]
    skipped = {"static", "auth.login", "auth.logout"}
    walked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint in skipped:
            continue
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
        for who in SCOPED:
            own = _paths(rule, ids, zeta=False)
            assert own is not None, f"{rule.rule}: teach this test the values of its arguments"
            if "GET" in methods and not rule.endpoint.endswith("stream"):  # an own room's stream never ends
                resp = call(app, who, own)
                text = _text(resp)
                assert resp.status_code < 500, (who, own, text[:300])
                assert "zeta" not in text, (who, own, re.findall(r".{0,60}zeta.{0,60}", text)[:3])
                walked += 1
            if rule.arguments and any(a in ("gateway", "school", "cid", "aid", "sid", "chid", "mid", "did")
                                      for a in rule.arguments):
                other = _paths(rule, ids, zeta=True)
                for method in methods:
                    resp = call(app, who, other, method, data={})
                    text = _text(resp)
                    assert resp.status_code in (403, 404), (who, method, other, resp.status_code, text[:200])
                    assert "zeta" not in text, (who, method, other)
    assert walked > 2 * 40  # every route was reached
    assert sched.get(central(app).registry, ids["schedule"]).enabled


# ---------------------------------------------------------------- the command line


def users_add(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "programs.cli", "users", "add", *args, "--password-stdin",
                           "--db", db], input="a-long-password\n", capture_output=True, text=True, timeout=60)


def test_campus_users_add_school(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/campus.db"
    reg = Registry(db)
    try:
        for school in ("alpha", "zeta"):
            prov.create_school(reg, school)
        done = users_add(db, "it-a", "--role", "admin", "--school", "alpha", "--school", "zeta")
        assert done.returncode == 0, done.stderr
        assert reg.principal("it-a")["schools"] == ["alpha", "zeta"]
        done = users_add(db, "it-a", "--role", "admin", "--school", "nope")
        assert done.returncode != 0 and done.stderr.strip().count("\n") == 0 and "no school 'nope'" in done.stderr
        assert reg.principal("it-a")["schools"] == ["alpha", "zeta"]  # unchanged
        done = users_add(db, "t", "--role", "teacher", "--school", "alpha")
        assert done.returncode != 0 and "teacher" in done.stderr and reg.principal("t") is None
        assert users_add(db, "everywhere", "--role", "facility").returncode == 0
        assert reg.principal("everywhere")["schools"] == []
    finally:
        reg.close()
