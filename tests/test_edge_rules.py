"""Central's side of the room's rules (central/edge_rules.py): the idle-off setting and the teacher's override.

The setting is a room's (either engine), set from the room's page or the API, validated, audited and pushed
to the room's gateways in their config; the override goes to a real agent through a real broker.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from central import edge_rules, podium, timetables
from dashboards import close_app
from dashboards.context import central
from device_profiles.config import load_gateway_config
from edge_agent.config_push import validate_pushed_config
from tests.apps import add_people, central_db, register_rooms, two_rooms, web_app
from tests.e2e import write_gateway_config
from tests.servers import wait_until

RULES = "/api/schools/s1/rooms/101/rules"


@pytest.fixture
def app(tmp_path: Path, central_db_url: str):
    app = web_app(central_db(tmp_path, lambda ledger, points: two_rooms(ledger, points), central_db_url))
    register_rooms(app)
    app.tokens = add_people(app)  # type: ignore[attr-defined]
    yield app
    close_app(app)


def call(app: Flask, method: str, path: str, role: str | None = None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {app.tokens[role]}"} if role else {}  # type: ignore[attr-defined]
    return app.test_client().open(path, method=method, headers=headers, **kw)


def versions(app: Flask) -> dict[str, int]:
    return {g["id"]: g["config_version"] for g in central(app).registry.gateways()}


def pushed_rules(app: Flask, gateway: str = "gw-101") -> Any:
    return json.loads(podium.config_payload(central(app).registry, gateway))["rules"]


def test_idle_off_is_a_room_setting_validated_audited_and_pushed(app: Flask, tmp_path: Path) -> None:
    assert call(app, "GET", RULES, "teacher").get_json() == {"idle_off_minutes": None, "school_idle_off_minutes": None,
                                                             "effective_idle_off_minutes": None}
    assert pushed_rules(app) is None
    before = versions(app)
    for bad in (-1, 481, 12.5, "ten", True, [], {"m": 1}):
        resp = call(app, "PUT", RULES, "teacher", json={"idle_off_minutes": bad})
        assert resp.status_code == 400 and resp.get_json()["field"] == "idle_off_minutes", bad
    resp = call(app, "PUT", RULES, "teacher", json={"idle_of_minutes": 5})
    assert resp.status_code == 400 and resp.get_json()["field"] == "idle_of_minutes"
    assert call(app, "PUT", "/api/schools/s1/rooms/102/rules", "teacher", json={"idle_off_minutes": 5}).status_code == 403
    assert call(app, "PUT", RULES, "facility", json={"idle_off_minutes": 5}).status_code == 403
    assert call(app, "PUT", "/api/schools/s1/rooms/nope/rules", "admin", json={"idle_off_minutes": 5}).status_code == 404
    assert versions(app) == before and pushed_rules(app) is None  # nothing changed

    resp = call(app, "PUT", RULES, "teacher", json={"idle_off_minutes": 20})
    assert resp.status_code == 200 and resp.get_json()["idle_off_minutes"] == 20
    assert versions(app) == {**before, "gw-101": before["gw-101"] + 1}  # only the room's gateway gets a new plan
    assert pushed_rules(app) == {"idle_off_minutes": 20} and pushed_rules(app, "gw-102") is None
    trail = [r for r in central(app).registry.audit_trail() if r["action"] == "rules.idle_off"]
    assert any(r["ok"] and "idle-off 20" in r["detail"] for r in trail) and any(not r["ok"] for r in trail)
    # What the gateway gets, it takes.
    base = load_gateway_config(write_gateway_config(tmp_path / "gw.yaml", "mqtt://127.0.0.1:1", school="s1",
                                                    gateway="gw-101"))
    _, config = validate_pushed_config(base, podium.config_payload(central(app).registry, "gw-101"))
    assert config.rules is not None and config.rules.idle_off_minutes == 20

    # The room's page: its form, a bad value refused on the page, empty is "never" (null, pushed: cleared).
    page = call(app, "GET", "/podium/s1/101", "teacher").get_data(as_text=True)
    assert 'name="idle_off_minutes"' in page and 'value="20"' in page
    assert call(app, "POST", "/podium/s1/101/rules", "teacher", data={"idle_off_minutes": "-3"}).status_code == 400
    assert pushed_rules(app) == {"idle_off_minutes": 20}
    assert call(app, "POST", "/podium/s1/101/rules", "teacher", data={"idle_off_minutes": ""}).status_code == 200
    payload = json.loads(podium.config_payload(central(app).registry, "gw-101"))
    assert "rules" in payload and payload["rules"] is None  # said, not left out: the gateway drops its rule
    _, config = validate_pushed_config(base, json.dumps(payload))
    assert config.rules is None


def test_a_schools_idle_off_default_is_taken_by_its_rooms_without_their_own(app: Flask) -> None:
    """An admin sets the school's default (API or the school's page); the rooms without their own setting take
    it and only their gateways get a new config; a room's own minutes win; audited; bad input changes nothing."""
    school = "/api/schools/s1/rules"
    assert call(app, "GET", school, "facility").get_json() == {"idle_off_minutes": None}
    assert call(app, "PUT", RULES, "teacher", json={"idle_off_minutes": 20}).status_code == 200  # 101's own
    before = versions(app)
    for bad in (0, 481, 12.5, "ten", True, [], {"m": 1}):
        resp = call(app, "PUT", school, "admin", json={"idle_off_minutes": bad})
        assert resp.status_code == 400 and resp.get_json()["field"] == "idle_off_minutes", bad
    resp = call(app, "PUT", school, "admin", json={"idle_minutes": 5})
    assert resp.status_code == 400 and resp.get_json()["field"] == "idle_minutes"
    assert call(app, "PUT", school, "admin", json={}).get_json()["field"] == "idle_off_minutes"
    assert call(app, "PUT", school, "teacher", json={"idle_off_minutes": 5}).status_code == 403
    assert call(app, "PUT", school, "facility", json={"idle_off_minutes": 5}).status_code == 403
    assert call(app, "PUT", "/api/schools/s9/rules", "admin", json={"idle_off_minutes": 5}).status_code == 404
    assert versions(app) == before and call(app, "GET", school, "admin").get_json() == {"idle_off_minutes": None}

    resp = call(app, "PUT", school, "admin", json={"idle_off_minutes": 30})
    assert resp.status_code == 200 and resp.get_json()["idle_off_minutes"] == 30
    assert versions(app) == {**before, "gw-102": before["gw-102"] + 1}  # 101 keeps its own: no new plan
    assert pushed_rules(app, "gw-102") == {"idle_off_minutes": 30} and pushed_rules(app) == {"idle_off_minutes": 20}
    assert call(app, "GET", "/api/schools/s1/rooms/102/rules", "admin").get_json() == {
        "idle_off_minutes": None, "school_idle_off_minutes": 30, "effective_idle_off_minutes": 30}
    trail = [r for r in central(app).registry.audit_trail() if r["action"] == "rules.school_idle_off"]
    assert any(r["ok"] and "s1: default idle-off 30" in r["detail"] for r in trail) and any(not r["ok"] for r in trail)
    # The same again: nothing to push.
    assert call(app, "PUT", school, "admin", json={"idle_off_minutes": 30}).get_json()["pushed"] == []
    assert versions(app)["gw-102"] == before["gw-102"] + 1
    # Room 101 drops its own: it takes the school's.
    assert call(app, "PUT", RULES, "teacher", json={"idle_off_minutes": None}).status_code == 200
    assert pushed_rules(app) == {"idle_off_minutes": 30}
    page = call(app, "GET", "/podium/s1/101?lang=zh-CN", "teacher").get_data(as_text=True)
    assert "学校默认：无人 30 分钟后关机。" in page

    # The school's page: the admin's form, a bad value refused naming the rule, empty is "no default".
    page = call(app, "GET", "/health/timetables/s1", "admin").get_data(as_text=True)
    assert 'name="idle_off_minutes"' in page and 'value="30"' in page
    assert 'name="idle_off_minutes"' not in call(app, "GET", "/health/timetables/s1", "facility").get_data(as_text=True)
    bad = call(app, "POST", "/health/timetables/s1?lang=en", "admin", data={"idle_off_minutes": "-3"})
    assert bad.status_code == 400 and "idle_off_minutes must be a whole number" in bad.get_data(as_text=True)
    assert call(app, "POST", "/health/timetables/s1", "facility", data={"idle_off_minutes": "5"}).status_code == 403
    assert pushed_rules(app) == {"idle_off_minutes": 30}
    assert call(app, "POST", "/health/timetables/s1", "admin", data={"idle_off_minutes": ""}).status_code == 200
    assert pushed_rules(app) is None and pushed_rules(app, "gw-102") is None  # said (null), so the gateways drop it


def test_a_room_can_opt_out_of_its_schools_idle_off_default(app: Flask, tmp_path: Path) -> None:
    """0 is "never" for a room, distinct from null (the school's default): pushed as no rule (so the gateway
    switches nothing off however short the school's default), kept through a change of the school's default,
    audited, said on the room's page in both languages; the gateway's decision follows it."""
    from edge_agent.agent import Agent
    from tests.test_rules import room_config

    school = "/api/schools/s1/rules"
    assert call(app, "PUT", school, "admin", json={"idle_off_minutes": 1}).status_code == 200
    assert pushed_rules(app) == {"idle_off_minutes": 1}
    before = versions(app)
    resp = call(app, "PUT", RULES, "teacher", json={"idle_off_minutes": 0})
    assert resp.status_code == 200 and resp.get_json()["idle_off_minutes"] == 0
    assert call(app, "GET", RULES, "teacher").get_json() == {
        "idle_off_minutes": 0, "school_idle_off_minutes": 1, "effective_idle_off_minutes": None}
    assert versions(app)["gw-101"] == before["gw-101"] + 1
    payload = json.loads(podium.config_payload(central(app).registry, "gw-101"))
    assert "rules" in payload and payload["rules"] is None  # said (null): the gateway drops even the file's rule
    trail = [r for r in central(app).registry.audit_trail() if r["action"] == "rules.idle_off"]
    assert any(r["ok"] and r["detail"] == "s1/101: idle-off never" for r in trail)
    # The school's default changes: a room that opted out is not among the gateways to push, nor changed.
    before = versions(app)
    assert call(app, "PUT", school, "admin", json={"idle_off_minutes": 45}).status_code == 200
    assert versions(app) == {**before, "gw-102": before["gw-102"] + 1} and pushed_rules(app) is None
    assert pushed_rules(app, "gw-102") == {"idle_off_minutes": 45}
    # The page, in both languages; its form takes 0 too.
    en = call(app, "GET", "/podium/s1/101?lang=en", "teacher").get_data(as_text=True)
    assert "Never: this room is not switched off by itself, whatever the school’s default." in en
    assert 'name="idle_off_minutes" type="number" min="0"' in en and 'value="0"' in en
    zh = call(app, "GET", "/podium/s1/101?lang=zh-CN", "teacher").get_data(as_text=True)
    assert "从不：无论学校默认如何，本教室都不会自动关机。" in zh and "学校默认：无人 45 分钟后关机。" in zh
    bad = call(app, "PUT", RULES, "teacher", json={"idle_off_minutes": -1})
    assert bad.status_code == 400 and "0 for never" in bad.get_json()["error"]
    assert call(app, "PUT", RULES + "?lang=zh-CN", "teacher", json={"idle_off_minutes": 481}).get_json()["error"] \
        .endswith("0 表示从不，留空表示采用学校默认值")
    assert call(app, "GET", RULES, "teacher").get_json()["idle_off_minutes"] == 0  # refused: nothing changed

    # The gateway's decision: a file that says 1 minute, the school's default 1 minute, the room "never".
    base = room_config(tmp_path, minutes=1)
    devices = [d.model_dump(exclude={"simulator"}) for d in base.devices]
    assert call(app, "PUT", school, "admin", json={"idle_off_minutes": 1}).status_code == 200

    def decision(payload: bytes) -> tuple[Any, Any]:
        doc = {**json.loads(payload), "devices": devices}  # central's rules, the test room's camera and projector
        _, config = validate_pushed_config(base, json.dumps(doc))
        agent = Agent(config)
        try:
            now = [1000.0]
            agent.rules.clock = lambda: now[0]
            agent.rules.observe("proj", {"power": "on"})
            for t in range(0, 121, 5):  # two rule minutes (1 s each here) of nobody, fresh counts
                now[0] = 1000.0 + t / 10
                agent.rules.observe("cam", {"people_count": 0})
            watch = agent.rules._watch()
            return config.rules, watch.due(now[0], True) if watch is not None else None
        finally:
            agent.outbox.close()

    rules, due = decision(podium.config_payload(central(app).registry, "gw-101"))
    assert rules is None and due is None  # never: no watch at all, nothing due
    assert call(app, "PUT", RULES, "teacher", json={"idle_off_minutes": None}).status_code == 200
    rules, due = decision(podium.config_payload(central(app).registry, "gw-101"))
    assert rules is not None and rules.idle_off_minutes == 1 and due is not None  # the school's default acts
    assert call(app, "POST", "/podium/s1/101/rules", "teacher", data={"idle_off_minutes": "0"}).status_code == 200
    assert call(app, "GET", RULES, "teacher").get_json()["idle_off_minutes"] == 0 and pushed_rules(app) is None


def test_an_override_holds_until_the_end_of_the_current_period(app: Flask) -> None:
    reg = central(app).registry
    timetables.save(reg, timetables.from_document("s1", {
        "timezone": "Asia/Shanghai",
        "periods": [{"weekday": d, "number": 1, "start": "08:00", "end": "08:45"} for d in range(1, 6)]}))
    zone = timetables.load(reg, "s1").zone  # type: ignore[union-attr]
    in_class = datetime(2025, 3, 10, 8, 20, tzinfo=zone).timestamp()  # a Monday, 08:20
    assert edge_rules.override_until(reg, "s1", in_class) == (datetime(2025, 3, 10, 8, 45, tzinfo=zone).timestamp(),
                                                              True)
    saturday = datetime(2025, 3, 15, 10, 0, tzinfo=zone).timestamp()  # no classes: one period's worth
    assert edge_rules.override_until(reg, "s1", saturday) == (saturday + edge_rules.OVERRIDE_OUTSIDE_S, False)
    assert edge_rules.override_until(reg, "s9", in_class) == (in_class + edge_rules.OVERRIDE_OUTSIDE_S, False)


def test_on_a_holiday_the_teachers_command_and_override_reach_the_gateway(tmp_path: Path, mosquitto: Any) -> None:
    """Through the real broker to an in-process agent and its projector simulator, on a day the timetable
    says is a holiday ("never on during holidays unless a teacher overrides": the teacher's own command
    and the override still work); a teacher of another room may not; the panel offers the button."""
    from campus.net import free_port
    from edge_agent.agent import Agent
    from firmware_stubs.runner import SimulatorSet
    from tests.e2e import power_commands

    db = central_db(tmp_path, lambda ledger, points: two_rooms(ledger, points))
    app = web_app(db, mqtt_url=mosquitto.url)
    register_rooms(app)
    app.tokens = add_people(app)  # type: ignore[attr-defined]
    today = datetime.now(UTC).date()
    timetables.save(central(app).registry, timetables.from_document("s1", {
        "timezone": "UTC", "periods": [{"weekday": d, "number": 1, "start": "00:00", "end": "23:59"} for d in range(1, 8)],
        "holidays": [{"name": "holiday", "start": (today - timedelta(days=1)).isoformat(),
                      "end": (today + timedelta(days=1)).isoformat()}]}))
    proj = {"id": "proj", "profile": "projector-pjlink", "address": {"host": "127.0.0.1", "port": free_port()},
            "simulator": {"power": "off", "warmup_s": 0.2, "cooldown_s": 0.2}}
    config = load_gateway_config(write_gateway_config(tmp_path / "gw.yaml", mosquitto.url, school="s1",
                                                      gateway="gw-101", room="101", devices=[proj]))
    loop = asyncio.new_event_loop()
    sims = SimulatorSet(config)
    loop.run_until_complete(sims.start())
    agent = Agent(config)
    task = loop.create_task(agent.run())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        wait_until(lambda: agent.connected.is_set(), 20, message="the agent connected")
        assert call(app, "POST", "/api/gateways/gw-102/override", "teacher").status_code == 403
        resp = call(app, "POST", "/api/gateways/gw-101/override", "teacher", json={"until": 1})
        assert resp.status_code == 400 and resp.get_json()["field"] == "until"  # central says when, not the caller
        resp = call(app, "POST", "/api/gateways/gw-101/override", "teacher")
        body = resp.get_json()
        assert resp.status_code in (200, 202) and body["period_end"] is False  # a holiday: one period's worth
        assert body["until"] == pytest.approx(time.time() + edge_rules.OVERRIDE_OUTSIDE_S, abs=30)
        sent = central(app).ledger.command(body["id"])
        assert (sent["device"], sent["action"], sent["params"]) == ("rules", "override", {"until": body["until"]})
        # The gateway ran it (its result goes back through the outbox, to central's ingest, like any result).
        wait_until(lambda: (agent.commands.state_of(body["id"]) or ("",))[0] == "done", 20,
                   message="the override done on the gateway")
        assert agent.rules.override_until() == pytest.approx(body["until"], abs=0.01)
        assert any(r["action"] == "override" and r["ok"] for r in central(app).registry.audit_trail())
        # The teacher's own command on the holiday: sent and run.
        resp = call(app, "POST", "/api/gateways/gw-101/devices/proj/commands", "teacher", json={"action": "power_on"})
        assert resp.status_code in (200, 202), resp.get_json()
        wait_until(lambda: power_commands(sims) == ["%1POWR 1"], 20, message="the projector switched on")
        page = call(app, "GET", "/panel/gw-101", "teacher").get_data(as_text=True)
        assert 'id="override-btn"' in page
    finally:
        loop.call_soon_threadsafe(task.cancel)
        wait_until(task.done, 20, message="the agent stopped")
        asyncio.run_coroutine_threadsafe(sims.stop(), loop).result(20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        close_app(app)
