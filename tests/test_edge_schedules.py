"""Schedules run at the edge: central's plan (central/edge_schedules.py), the agent's clock
(edge_agent/schedules.py), and the history central keeps of the runs.

The agent tests run an agent in this process with a PJLink projector simulator on a TCP port and no
broker at all (its URL names a closed port). The end-to-end test takes a real Mosquitto away from a
gateway (an agent process, as `campus agent`) and gives it back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from campus import contract
from campus.contract import Event
from campus.errors import ConfigError
from campus.net import free_port
from central import edge_schedules, podium
from central.registry import Schedule, ScheduleRun
from central.schedules import Scheduler
from device_profiles.config import GatewayConfig, load_gateway_config
from edge_agent.agent import Agent
from edge_agent.config_push import validate_pushed_config
from firmware_stubs.runner import SimulatorSet
from tests.e2e import outbox_events, power_commands, until, write_gateway_config
from tests.e2e import run_room as e2e_run_room
from tests.test_schedules import SHANGHAI, Site


def projector(port: int, power: str = "on") -> list[dict[str, Any]]:
    return [{"id": "proj", "profile": "projector-pjlink", "address": {"host": "127.0.0.1", "port": port},
             "simulator": {"warmup_s": 0.2, "cooldown_s": 0.2, "power": power}}]


def projector_room(tmp_path: Path, broker_url: str) -> tuple[Any, Any]:
    """A classroom (tests/e2e.py `Classroom`) whose gateway has one PJLink projector simulator, polled every
    0.3 s through `broker_url`: the room and its loaded gateway config."""
    from tests.e2e import Classroom

    room = Classroom(tmp_path, broker_url, poll_interval=0.3, devices=projector(free_port()))
    write_gateway_config(room.config, broker_url, poll_interval=0.3, devices=projector(room.port),
                         data_dir=str(room.data_dir))
    return room, load_gateway_config(room.config)


def plan(*runs: tuple[int, float, str], grace_s: float = 1800.0) -> dict[str, Any]:
    return {"until": time.time() + 86400, "grace_s": grace_s,
            "runs": [{"schedule": sid, "at": at, "name": f"schedule {sid}", "steps": [{"device": "proj", "action": a}]}
                     for sid, at, a in runs]}






# ---------------------------------------------------------------- the agent


def test_a_planned_run_fires_at_its_time_once_and_late_runs_run_within_grace_else_are_missed(tmp_path: Path) -> None:
    now = time.time()
    path = write_gateway_config(tmp_path / "gw1.yaml", f"mqtt://127.0.0.1:{free_port()}", poll_interval=0.3,
                                devices=projector(free_port()),
                                schedules=plan((7, now - 7200, "power_on"),   # long past the grace: missed
                                               (8, now + 2.5, "power_off")))  # ahead: runs on time
    config = load_gateway_config(path)

    async def first(agent: Agent, sims: SimulatorSet) -> None:
        await until(lambda: len(schedule_events(agent)) == 1, what="the missed run reported")
        missed = schedule_events(agent)[0]
        assert (missed["schedule"], missed["outcome"], missed["steps"][0]["status"]) == (7, "missed", "missed")
        assert sims.by_device["proj"].power == "on" and power_commands(sims) == []  # not run at all
        await until(lambda: sims.by_device["proj"].power == "off", 20, what="the projector off by the schedule")
        await until(lambda: len(schedule_events(agent)) == 2, what="the run reported")
        ran = schedule_events(agent)[1]
        assert (ran["schedule"], ran["planned"], ran["outcome"]) == (8, pytest.approx(now + 2.5), "ran")
        assert [(s["device"], s["action"], s["status"]) for s in ran["steps"]] == [("proj", "power_off", "done")]
        assert power_commands(sims) == ["%1POWR 0"]

    run_room(config, first)

    # A restart with the same plan: nothing runs or is reported again; a run 60 s late is still run once.
    config = load_gateway_config(write_gateway_config(
        tmp_path / "gw1.yaml", config.mqtt, poll_interval=0.3, devices=projector(free_port(), power="off"),
        schedules=plan((7, now - 7200, "power_on"), (8, now + 2.5, "power_off"), (9, time.time() - 60, "power_on"))))

    async def again(agent: Agent, sims: SimulatorSet) -> None:
        await until(lambda: len(schedule_events(agent)) == 3, what="the late run reported")
        late = schedule_events(agent)[2]
        assert (late["schedule"], late["outcome"], late["steps"][0]["status"]) == (9, "ran", "done")
        assert power_commands(sims) == ["%1POWR 1"]
        assert [e["schedule"] for e in schedule_events(agent)] == [7, 8, 9]  # 7 and 8 not again

    run_room(config, again)


def test_a_bad_pushed_schedule_entry_is_refused_naming_the_field(tmp_path: Path) -> None:
    base = load_gateway_config(write_gateway_config(tmp_path / "gw1.yaml", "mqtt://127.0.0.1:1",
                                                    devices=projector(4352)))
    devices = [d.model_dump() for d in base.devices]
    good = plan((3, time.time() + 60, "power_off"))
    version, pushed = validate_pushed_config(base, json.dumps({"version": 2, "devices": devices, "schedules": good}))
    assert version == 2 and pushed.schedules is not None and pushed.schedules.runs[0].schedule == 3

    def broken(change: Callable[[dict[str, Any]], None]) -> str:
        doc = json.loads(json.dumps(good))
        change(doc)
        return json.dumps({"version": 3, "devices": devices, "schedules": doc})

    cases = [(lambda d: d["runs"][0]["steps"][0].update(action="explode"), "field schedules.runs.0.steps.0.action"),
             (lambda d: d["runs"][0].pop("at"), "field schedules.runs.0.at"),
             (lambda d: d["runs"][0].update(schedule="x"), "field schedules.runs.0.schedule"),
             (lambda d: d["runs"][0]["steps"][0].update(device="nope"), "schedules.runs.0.steps.0.device"),
             (lambda d: d.update(until=-1), "field schedules.until")]
    for change, field in cases:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            validate_pushed_config(base, broken(change))


# ---------------------------------------------------------------- central


@pytest.fixture
def site(central_db_url: str):
    s = Site(central_db_url)
    yield s
    s.ledger.close()
    s.registry.close()
    s.db.close()


def test_central_plans_the_runs_of_a_gateway_in_scope_and_on_its_devices_of_the_kinds(site: Site,
                                                                                     tmp_path: Path) -> None:
    site.registry.add_device("gw-101", "proj", "projector-pjlink", {"host": "127.0.0.1", "port": 4352})
    site.registry.add_device("gw-101", "env", "env-6in1-modbus", {"host": "127.0.0.1", "port": 502})
    mine = site.add(at="22:00", days="mon,tue,wed,thu,fri,sat,sun")               # building A
    site.add(name="B off", building_id=site.building["B"])                         # not this building
    site.add(name="disabled", enabled=False, building_id=None)
    now = datetime(2025, 3, 10, 21, 0, tzinfo=SHANGHAI).timestamp()  # a Monday, 21:00 at school s1 (the site's zone)
    compiled = edge_schedules.compile_runs(site.registry, "gw-101", now, days=3)
    assert [r["schedule"] for r in compiled["runs"]] == [mine.id] * 3  # Mon, Tue, Wed 22:00 (Thu is past 3 days)
    assert compiled["runs"][0]["at"] == datetime(2025, 3, 10, 22, 0, tzinfo=SHANGHAI).timestamp()
    assert compiled["runs"][0]["steps"] == [{"device": "proj", "action": "power_off"}]  # not the sensor
    # What the gateway gets in its pushed config, and takes.
    payload = json.loads(podium.config_payload(site.registry, "gw-101"))
    assert payload["schedules"]["runs"] and payload["schedules"]["runs"][0]["schedule"] == mine.id
    base = load_gateway_config(write_gateway_config(tmp_path / "gw.yaml", "mqtt://127.0.0.1:1", school="s1",
                                                    gateway="gw-101"))
    validate_pushed_config(base, json.dumps(payload))
    # A changed schedule needs a new plan: its gateways' config version goes up.
    before = site.registry.gateway_info("gw-101")["config_version"]
    from central import schedules

    schedules.set_enabled(site.registry, mine.id, False)
    assert site.registry.gateway_info("gw-101")["config_version"] == before + 1


def test_central_records_each_edge_run_once_and_its_scheduler_leaves_edge_gateways_alone(site: Site) -> None:
    s = site.add(at="22:00", days="mon,tue,wed,thu,fri,sat,sun")
    planned = datetime(2025, 3, 10, 22, 0, tzinfo=SHANGHAI).timestamp()
    # gw-101 took the plan (its config_applied says so); gw-102 did not.
    applied = Event(1, planned - 3600, "config_applied", {"version": 2, "schedules": [s.id],
                                                          "schedules_until": planned + 86400})
    from central.ledger import Sequenced

    site.ledger.record([Sequenced("s1", "gw-101", "agent", 1, applied.ts, event=(applied.type, applied.data))], [], [])
    assert edge_schedules.edge_gateways(site.ledger, ["gw-101", "gw-102"], s.id, planned) == {"gw-101"}
    assert edge_schedules.edge_gateways(site.ledger, ["gw-101"], s.id, planned + 2 * 86400) == set()  # plan ran out

    ran = {"schedule": s.id, "planned": planned, "name": s.name, "outcome": "ran",
           "steps": [{"device": "proj", "action": "power_off", "status": "done", "detail": ""}]}
    for seq in (2, 3):  # the same run delivered twice under two numbers: recorded once all the same
        site.ledger.record([Sequenced("s1", "gw-101", contract.SCHEDULE_DEVICE, seq, planned + 1,
                                      event=(contract.SCHEDULE_RUN_EVENT, ran))], [], [])
    assert edge_schedules.collect(site.registry, site.ledger, planned + 60) == 1
    assert edge_schedules.collect(site.registry, site.ledger, planned + 60) == 0
    rows = [r for r in site.runs() if r.schedule_id == s.id]
    assert len(rows) == 1 and rows[0].ran_at == planned
    assert [(r["gateway"], r["device"], r["status"], r["by"]) for r in rows[0].results] == \
        [("gw-101", "proj", "done", "edge")]

    # Central's scheduler at 22:00 sends the action to gw-102's devices only, never to gw-101's.
    sent: list[tuple[str, str]] = []

    class Service:
        def send(self, school: str, gateway: str, device: str, action: str, params: dict[str, Any],
                 **_: Any) -> dict[str, Any]:
            sent.append((gateway, device))
            return {"id": f"c{len(sent)}", "status": "done", "detail": ""}

    Scheduler(site.registry, site.ledger, Service(), wait=0).tick(
        datetime.fromtimestamp(planned + 5, UTC))
    assert sent and {gw for gw, _ in sent} == {"gw-102"}


def test_each_round_after_the_first_reads_only_the_runs_recorded_since_however_late_they_came(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler's collector (`EdgeRunCollector`, every 20 s) read seven days of `schedule_run` events each
    round. Now the first round reads them, and each next one what the ledger recorded since: a run a gateway
    reports a day late (it was away) is collected by the next round, and a round with nothing new reads no
    row and runs no other statement."""
    from sqlalchemy import event

    from central.ledger import Sequenced

    s = site.add(at="22:00", days="mon,tue,wed,thu,fri,sat,sun")
    planned = datetime(2025, 3, 10, 22, 0, tzinfo=SHANGHAI).timestamp()

    def report(gateway: str, seq: int, when: float) -> None:
        ran = {"schedule": s.id, "planned": when, "name": s.name, "outcome": "ran",
               "steps": [{"device": "proj", "action": "power_off", "status": "done", "detail": ""}]}
        site.ledger.record([Sequenced("s1", gateway, contract.SCHEDULE_DEVICE, seq, when + 1,
                                      event=(contract.SCHEDULE_RUN_EVENT, ran))], [], [])

    read: list[tuple[str, int]] = []  # (which read, rows it returned)

    def spy(name: str) -> Callable[..., Any]:
        real = getattr(site.ledger, name)

        def counted(*args: Any, **kw: Any) -> Any:
            rows = real(*args, **kw)
            read.append((name, len(rows)))
            return rows
        return counted

    for name in ("events", "events_recorded"):
        monkeypatch.setattr(site.ledger, name, spy(name))

    collector = edge_schedules.EdgeRunCollector(site.registry, site.ledger)
    report("gw-101", 1, planned)
    assert collector.collect(planned + 60) == 1
    assert read == [("events", 1)]  # the first round: the seven days, by the runs' own time
    # From here on each round comes a minute or more after what it reads was recorded (past the overlap).
    real_clock = site.ledger.clock
    monkeypatch.setattr(site.ledger, "clock", lambda: real_clock() + edge_schedules.RECORDED_OVERLAP_S + 1)
    report("gw-102", 1, planned - 86400)  # gw-102 back after a day away: yesterday's run, older than any read
    assert collector.collect(planned + 120) == 1
    assert read[1:] == [("events_recorded", 2)]  # the late run, and gw-101's still within the overlap
    statements: list[str] = []
    event.listen(site.db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert collector.collect(planned + 140) == 0
    assert read[2:] == [("events_recorded", 0)]  # nothing new: no old row read again
    # That read alone (and, on PostgreSQL, the server's clock): no history looked up, nothing written.
    assert len([q for q in statements if "clock_timestamp" not in q]) == 1
    rows = sorted((r.ran_at, [x["gateway"] for x in r.results]) for r in site.runs() if r.schedule_id == s.id)
    assert rows == [(planned - 86400, ["gw-102"]), (planned, ["gw-101"])]


# ---------------------------------------------------------------- end to end: broker stopped, then back


@pytest.mark.slow
def test_a_schedule_fires_on_a_gateway_cut_off_from_central_and_its_record_reaches_central_once(
        tmp_path: Path) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from central.db import open_database
    from central.ledger import Ledger
    from central.registry import Registry
    from tests.e2e import SimulatorsInThread
    from tests.servers import Mosquitto, wait_until

    broker = Mosquitto(tmp_path / "mq")
    broker.start()
    room, config = projector_room(tmp_path, broker.url)

    with SimulatorsInThread(room.config) as sims:
        room.start(sim=False)
        try:
            wait_until(lambda: (room.view.gateway("gw1") or {}).get("online"), 30, message="the gateway online")
            db = open_database(room.db_url)
            registry, ledger = Registry(db), Ledger(db)
            with registry.session() as s:
                row = Schedule(name="lights out", at="22:00", days="mon", action="power_off", kinds="projector")
                s.add(row)
                s.flush()
                sid = row.id
            # Central's push (retained on the gateway's config topic), planned a few seconds ahead.
            planned = time.time() + 6
            payload = {"version": 2, "devices": [d.model_dump() for d in config.devices],
                       "schedules": plan((sid, planned, "power_off"))}
            pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
            pub.connect("127.0.0.1", broker.port)
            pub.loop_start()
            pub.publish(contract.config_topic("s1", "gw1"), json.dumps(payload), qos=1, retain=True).wait_for_publish(5)
            pub.loop_stop()
            pub.disconnect()
            # Central learns the gateway took the plan from the gateway itself, and leaves the schedule to it.
            wait_until(lambda: edge_schedules.edge_gateways(ledger, ["gw1"], sid, time.time()) == {"gw1"}, 30,
                       message="the gateway's config_applied at central")
            broker.stop()  # central unreachable from here on
            assert time.time() < planned, "set-up too slow: the run would not have been offline"
            wait_until(lambda: sims.call(lambda: sims["proj"].power) == "off", 30, message="the projector off")
            assert sims.power_commands() == ["%1POWR 0"]
            assert ledger.events(type_=contract.SCHEDULE_RUN_EVENT) == []  # central has heard nothing yet

            broker.start()  # back on the same port, with its saved sessions
            wait_until(lambda: ledger.events(type_=contract.SCHEDULE_RUN_EVENT), 60, message="the run at central")
            wait_until(lambda: room.agent_outbox()["pending"] == 0, 30, message="the outbox drained")
            assert edge_schedules.collect(registry, ledger) == 1
            assert edge_schedules.collect(registry, ledger) == 0
            with registry.session() as s:
                rows = list(s.query(ScheduleRun).where(ScheduleRun.schedule_id == sid))
                assert len(rows) == 1 and rows[0].ran_at == pytest.approx(planned)
                assert [(r["gateway"], r["device"], r["status"]) for r in rows[0].results] == [("gw1", "proj", "done")]
            assert len(ledger.events(type_=contract.SCHEDULE_RUN_EVENT)) == 1
            assert sims.power_commands() == ["%1POWR 0"]  # once
        finally:
            room.stop()
            broker.stop()



def test_gateways_pushed_over_a_day_ago_get_a_new_plan(site: Site, mosquitto: Any) -> None:
    """The daily re-plan (central's scheduler calls it): only gateways central already pushes to, through a
    real broker, with a new config version the agent will apply."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from central import provisioning
    from tests.servers import wait_until

    site.registry.add_device("gw-101", "proj", "projector-pjlink", {"host": "127.0.0.1", "port": 4352})
    sched = site.add(days="mon,tue,wed,thu,fri,sat,sun")
    now = time.time()
    provisioning.ensure_tables(site.registry)
    with site.registry.session() as s:
        s.add(provisioning.ConfigPush(gateway_id="gw-101", version=1, pushed_at=now - 2 * 86400, pushed_by="x"))
        s.add(provisioning.ConfigPush(gateway_id="gw-102", version=1, pushed_at=now - 3600, pushed_by="x"))
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        before = site.registry.gateway_info("gw-101")["config_version"]
        assert edge_schedules.refresh_due(site.registry, client, now) == ["gw-101"]  # not 102 (fresh), not 201
        assert edge_schedules.refresh_due(site.registry, client, now) == []  # pushed now: not again today
        got: list[bytes] = []
        client.on_message = lambda c, u, msg: got.append(msg.payload)
        client.subscribe(contract.config_topic("s1", "gw-101"), qos=1)
        wait_until(lambda: got, 10, message="the retained plan")
    finally:
        client.loop_stop()
        client.disconnect()
    payload = json.loads(got[0])
    assert payload["version"] == before + 1
    assert {r["schedule"] for r in payload["schedules"]["runs"]} == {sched.id}


def test_switching_on_follows_the_school_timetable_at_the_edge_and_in_central(site: Site) -> None:
    """A power-on is not planned (nor sent by central) on a day without classes; a power-off runs every day."""
    from central import timetables

    site.registry.add_device("gw-101", "proj", "projector-pjlink", {"host": "127.0.0.1", "port": 4352})
    every_day = "mon,tue,wed,thu,fri,sat,sun"
    on = site.add(name="on", at="07:50", days=every_day, action="power_on")
    off = site.add(name="off", at="22:00", days=every_day, action="power_off")
    before = site.registry.gateway_info("gw-101")["config_version"]
    timetables.save(site.registry, timetables.from_document("s1", {
        "timezone": "UTC", "periods": [{"weekday": d, "number": 1, "start": "08:00", "end": "08:45"} for d in range(1, 6)],
        "holidays": [{"name": "sports day", "start": "2025-03-11"}]}))
    assert site.registry.gateway_info("gw-101")["config_version"] == before + 1  # a new plan is due
    monday = datetime(2025, 3, 10, 0, 30, tzinfo=UTC).timestamp()  # the school's zone is UTC
    runs = edge_schedules.compile_runs(site.registry, "gw-101", monday, days=7)["runs"]

    def days(sid: int) -> list[int]:
        return [datetime.fromtimestamp(r["at"], UTC).day for r in runs if r["schedule"] == sid]

    assert days(on.id) == [10, 12, 13, 14]                    # not the holiday (11th), nor the weekend
    assert days(off.id) == [10, 11, 12, 13, 14, 15, 16]       # switching off: every day

    sent: list[str] = []

    class Service:
        def send(self, school: str, gateway: str, device: str, action: str, params: dict[str, Any],
                 **_: Any) -> dict[str, Any]:
            sent.append(gateway)
            return {"id": f"c{len(sent)}", "status": "done", "detail": ""}

    holiday = datetime(2025, 3, 11, 7, 50, 5, tzinfo=UTC)
    result = Scheduler(site.registry, site.ledger, Service(), wait=0).tick(holiday)
    assert sent == [] and result and {r["status"] for r in result[0]["results"]} == {"skipped"}
    assert "no classes" in result[0]["results"][0]["detail"]


def schedule_events(agent: Agent) -> list[dict[str, Any]]:
    """The schedule events in the outbox (nothing is published: there is no broker)."""
    return outbox_events(agent, contract.SCHEDULE_DEVICE)


def run_room(config: GatewayConfig, body: Callable[[Agent, SimulatorSet], Awaitable[None]]) -> None:
    e2e_run_room(config, body, ready="proj", what="the projector read")
