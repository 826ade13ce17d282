"""The command lifecycle end to end: dashboard service -> Mosquitto -> agent -> projector and back.

Real processes for the agent and ingest, the projector simulator (PJLink
over TCP) in this process so the test can count what reached the device. The
commands table's semantics (a command runs once, a late one expires) are
checked on SQLite and PostgreSQL (`central_db_url`), the rest on SQLite.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from campus import contract
from campus.contract import Command
from campus.net import free_port
from campus.urls import parse_mqtt_url
from central.commands import CommandService
from central.ledger import Ledger
from tests.apps import sqlite_only
from tests.e2e import Classroom, SimulatorsInThread
from tests.servers import Mosquitto, wait_until

pytestmark = pytest.mark.slow


def projector(port: int, **sim: object) -> dict[str, object]:
    return {"id": "proj", "profile": "projector-pjlink", "address": {"host": "127.0.0.1", "port": port},
            "simulator": {"warmup_s": 1.5, "cooldown_s": 1.0, **sim}}


def set_commands(sims: SimulatorsInThread) -> list[str]:
    """The state-changing commands the projector received, in order."""
    return [c for c in sims.call(lambda: sims["proj"].commands) if not c.endswith(" ?")]


@pytest.fixture
def room(tmp_path: Path, mosquitto: Mosquitto, central_db_url: str):
    port = free_port()
    room = Classroom(tmp_path, mosquitto.url, poll_interval=0.3, devices=[projector(port)], db_url=central_db_url,
                     store=f"sqlite:///{tmp_path / 'points.db'}")
    with SimulatorsInThread(room.config) as sims:
        room.start(sim=False)
        ledger = Ledger(room.db_url)
        service = CommandService(parse_mqtt_url(mosquitto.url), ledger)
        service.start()
        wait_until(lambda: any(d["id"] == "proj" for d in ledger.gateway_devices()), 30, message="projector known")
        try:
            yield room, sims, service, ledger
        finally:
            service.stop()
            room.stop()
            ledger.close()


@sqlite_only
def test_power_on_then_input_while_warming_run_in_order(room) -> None:
    room, sims, service, ledger = room
    first = service.send("s1", "gw1", "proj", "power_on", {}, by="teacher1", wait=10)
    assert first["status"] == "done", first
    # Sent at once, while the projector warms up: queued at the device, run in order.
    second = service.send("s1", "gw1", "proj", "select_input", {"input": "hdmi2"}, by="teacher1", wait=15)
    third = service.send("s1", "gw1", "proj", "mute", {}, by="teacher1", wait=15)
    assert second["status"] == "done" and third["status"] == "done", (second, third)
    assert set_commands(sims) == ["%1POWR 1", "%1INPT 33", "%1AVMT 31"]
    assert sims.call(lambda: (sims["proj"].power, sims["proj"].input)) == ("on", "33")
    # The dashboard sees the states the projector went through.
    wait_until(lambda: ledger.latest()[("gw1", "proj")].get("power") == "on", 10)
    audit = ledger.command(first["id"])
    assert audit["by"] == "teacher1" and audit["action"] == "power_on" and audit["finished"] >= audit["created"]


@sqlite_only
def test_rejected_and_failed_results(room) -> None:
    room, sims, service, ledger = room
    bad_input = service.send("s1", "gw1", "proj", "select_input", {"input": "hdmi9"}, by="t", wait=10)
    assert bad_input["status"] == "rejected" and "hdmi9" in bad_input["detail"]
    volume = service.send("s1", "gw1", "proj", "set_volume", {"level": 50}, by="t", wait=10)
    assert volume["status"] == "rejected" and "not supported" in volume["detail"]
    sims.call(lambda: setattr(sims["proj"], "fault_error", True))
    broken = service.send("s1", "gw1", "proj", "power_on", {}, by="t", wait=10)
    assert broken["status"] == "failed" and "ERR4" in broken["detail"], broken
    assert set_commands(sims) == ["%1POWR 1"]  # the rejected ones never reached the device


def test_same_command_delivered_twice_runs_once(room, mosquitto: Mosquitto) -> None:
    room, sims, service, ledger = room
    results: list[dict[str, object]] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="dup-sender")
    client.on_message = lambda c, u, m: results.append(json.loads(m.payload))
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe(contract.cmd_result_topic("s1", "gw1", "proj"), qos=1)
    client.loop_start()
    try:
        cmd = Command(id="dup-1", action="power_on", params={}, deadline=time.time() + 30, by="t")
        topic = contract.cmd_topic("s1", "gw1", "proj")
        for _ in range(3):  # redeliveries while the first is still running: one run, one answer
            client.publish(topic, cmd.encode(), qos=1).wait_for_publish(5)
        wait_until(lambda: len(results) >= 1, 20, message="the result")
        client.publish(topic, cmd.encode(), qos=1).wait_for_publish(5)  # a redelivery after it finished
        wait_until(lambda: len(results) >= 2, 20, message="the result, answered again")
    finally:
        client.loop_stop()
        client.disconnect()
    assert set_commands(sims) == ["%1POWR 1"]
    # Every answer is the first result, word for word, but for its seq: each is an outbox row of its own,
    # covered by central's acknowledgement like any other.
    first = {k: v for k, v in results[0].items() if k != "seq"}
    assert all({k: v for k, v in r.items() if k != "seq"} == first for r in results) and first["status"] == "done"
    assert all(isinstance(r["seq"], int) for r in results)


def test_command_to_offline_gateway_runs_on_return_or_expires(room) -> None:
    room, sims, service, ledger = room
    room.agent.stop()  # a clean stop: the agent says offline; its session stays at the broker
    wait_until(lambda: not ledger.gateways()[0]["online"], 20, message="gateway offline")
    waits = service.send("s1", "gw1", "proj", "power_on", {}, by="t", ttl=60, wait=0.5)
    late = service.send("s1", "gw1", "proj", "mute", {}, by="t", ttl=1, wait=0.5)
    assert waits["status"] == "pending" and late["status"] == "pending"
    wait_until(lambda: time.time() > late["deadline"], 5)
    room.agent = room._agent().start()
    wait_until(lambda: ledger.command(waits["id"])["status"] == "done", 30, message="queued command ran")
    wait_until(lambda: ledger.command(late["id"])["finished"], 30, message="late command answered")
    expired = ledger.command(late["id"])
    assert expired["status"] == "expired" and "deadline" in expired["detail"]
    assert set_commands(sims) == ["%1POWR 1"]  # the expired mute never reached the projector


@sqlite_only
def test_the_result_passing_by_wakes_the_waiting_send(room, monkeypatch: pytest.MonkeyPatch) -> None:
    # With the ledger read only every 10 minutes, send() can return within its wait only
    # because the service saw the result go by on MQTT and then looked at the ledger often.
    room, sims, service, ledger = room
    monkeypatch.setattr("central.commands.LEDGER_POLL_S", 600.0)
    started = time.monotonic()
    done = service.send("s1", "gw1", "proj", "power_on", {}, by="teacher1", wait=120)
    assert done["status"] == "done", done
    assert time.monotonic() - started < 60  # generous: not woken, it would have waited all 120 s
    assert ledger.command(done["id"])["status"] == "done"  # what it returned is what the ledger holds


def test_a_done_command_is_followed_by_a_fresh_reading(tmp_path: Path, mosquitto: Mosquitto) -> None:
    # Polled once a minute, the projector's new state reaches central right after the command,
    # not at the next poll: the teacher's panel shows "warming" at once.
    room = Classroom(tmp_path, mosquitto.url, poll_interval=60, devices=[projector(free_port())])
    with SimulatorsInThread(room.config) as sims:
        room.start(sim=False)
        ledger = Ledger(str(room.db))
        service = CommandService(parse_mqtt_url(mosquitto.url), ledger)
        service.start()
        try:
            wait_until(lambda: ledger.latest().get(("gw1", "proj"), {}).get("power") == "off", 30,
                       message="the first reading")
            done = service.send("s1", "gw1", "proj", "power_on", {}, by="teacher1", wait=10)
            assert done["status"] == "done", done
            wait_until(lambda: ledger.latest()[("gw1", "proj")]["power"] in ("warming", "on"), 20,
                       message="a reading after the command (the next poll is a minute away)")
            assert sims.call(lambda: sims["proj"].power) in ("warming", "on")
        finally:
            service.stop()
            room.stop()
            ledger.close()
