"""The teacher's override end to end (issue 21): pressed in the web app, acknowledged by a real agent, its
result in central's ledger and on the panel, and a power-off schedule run planned inside the override window
reported `skipped` (reason override) into central's schedule history once, the projector left on; also with
the broker taken away after the acknowledgement (the skip happens offline and reaches central once it is back).

Real parts: Mosquitto, `campus agent` and `campus ingest` as processes, the PJLink projector simulator in this
process (to read its command log), the web app in this process on the database ingest writes. The plan is
pushed the way central pushes it (a retained config on the gateway's config topic) with a run a few seconds
ahead, as tests/test_edge_schedules.py does: a schedule's HH:MM cannot be seconds away.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from campus import contract
from central import edge_schedules
from central.registry import Schedule, ScheduleRun
from dashboards import close_app
from dashboards.context import central, web
from tests.apps import add_people, register_rooms, web_app
from tests.e2e import Classroom, SimulatorsInThread
from tests.servers import Mosquitto, wait_until
from tests.test_edge_schedules import projector_room

NAME = "放学关机"


def outbox_topics(room: Classroom) -> list[str]:
    """The topics of what the agent's outbox holds (read-only: never create the agent's file)."""
    db = sqlite3.connect(f"{(room.data_dir / 'agent.db').as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return [r[0] for r in db.execute("SELECT topic FROM outbox")]
    finally:
        db.close()


def push_plan(broker: Mosquitto, config: Any, sid: int, planned: float) -> None:
    """Central's push of a plan with one power-off run at `planned` (retained, as central/provisioning.py)."""
    payload = {"version": 2, "devices": [d.model_dump() for d in config.devices],
               "schedules": {"until": time.time() + 86400, "grace_s": 1800.0,
                             "runs": [{"schedule": sid, "at": planned, "name": NAME,
                                       "steps": [{"device": "proj", "action": "power_off"}]}]}}
    pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        pub.publish(contract.config_topic("s1", "gw1"), json.dumps(payload), qos=1, retain=True).wait_for_publish(5)
    finally:
        pub.loop_stop()
        pub.disconnect()


@pytest.mark.slow
@pytest.mark.parametrize("offline", [False, True], ids=["online", "broker-stopped"])
def test_the_teachers_override_is_acknowledged_shown_and_skips_a_power_off_run_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: bool) -> None:
    broker = Mosquitto(tmp_path / "mq")
    broker.start()
    room, config = projector_room(tmp_path, broker.url)

    app = None
    with SimulatorsInThread(room.config) as sims:
        room.start(sim=False)
        try:
            wait_until(lambda: (room.view.gateway("gw1") or {}).get("online"), 30, message="the gateway online")
            wait_until(lambda: sims.call(lambda: sims["proj"].power) == "on", 10, message="the projector on")
            # The web app on the database ingest records in; its scheduler and monitors off (the test collects).
            app = web_app(str(room.db), monkeypatch, mqtt_url=broker.url)
            register_rooms(app, (("gw1", "s1", "101", "A"),))
            tokens = add_people(app)
            teacher = {"Authorization": f"Bearer {tokens['teacher']}"}
            client = app.test_client()
            registry, ledger = central(app).registry, central(app).ledger
            with registry.session() as s:
                row = Schedule(name=NAME, at="22:05", days="mon", action="power_off", kinds="projector")
                s.add(row)
                s.flush()
                sid = row.id
            wait_until(lambda: 'id="override-btn" disabled' not in client.get("/panel/gw1", headers=teacher)
                       .get_data(as_text=True), 20, message="the panel's override button enabled")

            # The teacher presses 保持开启至本节课结束 (the panel's button posts here).
            resp = client.post("/api/gateways/gw1/override", headers=teacher)
            assert resp.status_code in (200, 202), resp.get_json()
            body = resp.get_json()
            cid, until = body["id"], body["until"]
            assert body["period_end"] is False  # s1 has no timetable: one period's worth
            # The agent's result comes back through its outbox to ingest, into central's ledger.
            done = wait_until(lambda: (ledger.command(cid) or {}).get("status") == "done" and ledger.command(cid),
                              30, message="the override's result in central's ledger")
            assert (done["device"], done["action"]) == (contract.RULES_DEVICE, contract.OVERRIDE_ACTION)
            assert done["detail"] == "kept on until " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until))
            shown = client.get(f"/api/commands/{cid}?lang=en", headers=teacher).get_json()
            assert (shown["status"], shown["detail"]) == ("done", done["detail"])
            states = web(app).panel
            assert states is not None
            [on_panel] = [c for c in states.snapshot("gw1")["commands"] if c["id"] == cid]
            assert on_panel["status"] == "done" and on_panel["detail"] == done["detail"]
            assert on_panel["details"]["zh-CN"].startswith("保持开启至"), on_panel["details"]

            # A power-off run planned inside the override window, pushed, taken by the gateway.
            planned = time.time() + 5
            assert planned < until
            push_plan(broker, config, sid, planned)
            wait_until(lambda: edge_schedules.edge_gateways(ledger, ["gw1"], sid, time.time()) == {"gw1"}, 30,
                       message="the gateway's config_applied at central")
            if offline:
                broker.stop()  # central unreachable from here on
                assert time.time() < planned, "set-up too slow: the run would not have been offline"
                schedules_topic = contract.event_topic("s1", "gw1", contract.SCHEDULE_DEVICE)
                wait_until(lambda: schedules_topic in outbox_topics(room), 30,
                           message="the skipped run reported into the gateway's outbox")
                assert ledger.events(type_=contract.SCHEDULE_RUN_EVENT) == []  # central has heard nothing yet
                broker.start()  # back on the same port, with its saved sessions
            wait_until(lambda: ledger.events(type_=contract.SCHEDULE_RUN_EVENT), 60,
                                message="the run's report at central")
            wait_until(lambda: room.agent_outbox()["pending"] == 0, 30, message="the outbox drained")
            [event] = ledger.events(type_=contract.SCHEDULE_RUN_EVENT)
            data = event["data"]
            assert (data["schedule"], data["outcome"], data["reason"]) == (sid, contract.SCHEDULE_SKIPPED,
                                                                            contract.OVERRIDE_REASON)
            assert data["planned"] == pytest.approx(planned)
            # Into the schedule's history, once.
            assert edge_schedules.collect(registry, ledger) == 1
            assert edge_schedules.collect(registry, ledger) == 0
            with registry.session() as s:
                rows = list(s.query(ScheduleRun).where(ScheduleRun.schedule_id == sid))
            assert len(rows) == 1 and rows[0].ran_at == pytest.approx(planned)
            assert [(r["gateway"], r["device"], r["status"], r["detail"]) for r in rows[0].results] == [
                ("gw1", "proj", "skipped", "not run: a teacher kept the room on for this period")]
            # The projector stayed on: no power command ever reached it.
            assert sims.power_commands() == [] and sims.call(lambda: sims["proj"].power) == "on"
            assert len(ledger.events(type_=contract.SCHEDULE_RUN_EVENT)) == 1
            # The panel says why the room stayed on, in the teacher's language.
            zh = client.get("/panel/gw1?lang=zh-CN", headers=teacher).get_data(as_text=True)
            assert f"计划「{NAME}」未执行：教师已设置本节课保持开启" in zh.split('id="why"', 1)[1].split("</ol>", 1)[0]
            en = client.get("/panel/gw1?lang=en", headers=teacher).get_data(as_text=True)
            assert f"Schedule “{NAME}” was not run: a teacher kept the room on for this period" in en
        finally:
            if app is not None:
                close_app(app)
            room.stop()
            broker.stop()
