"""The card-authorised podium on the gateway (edge_agent/podium.py), with real simulators.

An agent runs in this process with an EM4100 reader simulator on a pty and a PJLink projector
simulator on a TCP port, and no broker at all (its URL names a closed port): the decisions are the
gateway's own. The end-to-end run through a stopped and restarted Mosquitto to central is
tests/test_podium_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from campus import contract
from campus.errors import ConfigError
from campus.net import free_port
from device_profiles.config import GatewayConfig, load_gateway_config
from edge_agent.agent import Agent
from edge_agent.config_push import validate_pushed_config
from firmware_stubs.runner import SimulatorSet
from protocols.card_ids import card_hash
from tests.e2e import outbox_events, power_commands, until, write_gateway_config
from tests.e2e import run_room as e2e_run_room

SECRET = "school-secret-1"
TEACHER, CLEANER, STRANGER = "14008EC793", "0C000621A5", "0AFFFFFFFF"


def podium_devices(tmp_path: Path, pjlink_port: int) -> list[dict[str, Any]]:
    return [{"id": "proj", "profile": "projector-pjlink", "address": {"host": "127.0.0.1", "port": pjlink_port},
             "simulator": {"warmup_s": 0.2, "cooldown_s": 0.2}},
            {"id": "cards", "profile": "card-em4100", "address": {"serial": str(tmp_path / "cards.tty")},
             "options": {"repeat_window_s": 0.2}}]


def podium_config(**extra: Any) -> dict[str, Any]:
    return {"inputs": {"proj": "hdmi1"},
            "cards": {card_hash(SECRET, TEACHER): {"role": "teacher", "label": "Ms Li"},
                      card_hash(SECRET, CLEANER): {"role": "cleaner"}}, **extra}






def test_swipes_start_and_end_the_class_refuse_strangers_and_log_cleaners(tmp_path: Path) -> None:
    # Polled every 30 s: each swipe below is decided within the 20 s `until` allows only because a swipe
    # wakes its reader's poller (card_reader.on_swipe), as a teacher at the podium needs.
    path = write_gateway_config(tmp_path / "gw1.yaml", f"mqtt://127.0.0.1:{free_port()}", poll_interval=30,
                                devices=podium_devices(tmp_path, free_port()), card_secret=SECRET,
                                podium=podium_config())
    config = load_gateway_config(path)

    async def body(agent: Agent, sims: SimulatorSet) -> None:
        reader, proj = sims.by_device["cards"], sims.by_device["proj"]
        await reader.swipe(STRANGER)
        await reader.swipe(CLEANER)
        await until(lambda: len(podium_events(agent)) == 2, what="two swipes decided")
        assert [e["outcome"] for e in podium_events(agent)] == ["refused", "logged"]
        assert power_commands(sims) == [] and proj.power == "off"  # neither changed anything

        await reader.swipe(TEACHER)
        await until(lambda: len(podium_events(agent)) == 3, what="the class started")
        started = podium_events(agent)[2]
        assert started["outcome"] == "started" and started["role"] == "teacher"
        assert started["card"] == card_hash(SECRET, TEACHER) and TEACHER not in json.dumps(started)
        assert [(s["action"], s["status"]) for s in started["steps"]] == \
            [("power_on", "done"), ("select_input", "done"), ("unmute", "done")]
        await until(lambda: proj.power == "on", what="the projector on")
        assert "%1INPT 32" in proj.commands  # hdmi1, the podium input

        await reader.swipe(TEACHER)
        await until(lambda: len(podium_events(agent)) == 4, what="the class ended")
        assert podium_events(agent)[3]["outcome"] == "ended"
        assert power_commands(sims) == ["%1POWR 1", "%1POWR 0"]

    run_room(config, body)


def test_a_class_nobody_ends_ends_at_its_timeout_even_after_a_restart(tmp_path: Path) -> None:
    path = write_gateway_config(tmp_path / "gw1.yaml", f"mqtt://127.0.0.1:{free_port()}",
                                devices=podium_devices(tmp_path, free_port()), card_secret=SECRET,
                                podium=podium_config(timeout_s=3))
    config = load_gateway_config(path)

    async def start_class(agent: Agent, sims: SimulatorSet) -> None:
        await sims.by_device["cards"].swipe(TEACHER)
        await until(lambda: len(podium_events(agent)) == 1, what="the class started")

    run_room(config, start_class)  # the agent stops mid-class ...

    async def after_restart(agent: Agent, sims: SimulatorSet) -> None:
        assert agent.podium.class_started is not None  # ... and knows it at the next start
        await until(lambda: any(e["outcome"] == "ended" for e in podium_events(agent)), 20, what="the timeout")
        ended = podium_events(agent)[-1]
        assert ended["reason"] == "timeout" and ended["card"] == "" and ended["steps"][0]["action"] == "power_off"

    run_room(config, after_restart)


def test_a_pushed_allow_list_and_secret_are_validated_like_the_file(tmp_path: Path) -> None:
    path = write_gateway_config(tmp_path / "gw1.yaml", "mqtt://127.0.0.1:1",
                                devices=podium_devices(tmp_path, 4352), card_secret=SECRET)
    base = load_gateway_config(path)
    devices = [d.model_dump() for d in base.devices]
    version, pushed = validate_pushed_config(base, json.dumps(
        {"version": 2, "devices": devices, "card_secret": "new", "podium": podium_config()}))
    assert version == 2 and pushed.card_secret == "new" and pushed.podium is not None
    assert pushed.podium.cards[card_hash(SECRET, TEACHER)].role == "teacher"
    bad = [({"cards": {TEACHER: {"role": "teacher"}}}, "64 lower-case hex"),  # a raw UID is not a card here
           ({"cards": {card_hash(SECRET, TEACHER): {"role": "janitor"}}}, "teacher, facility, cleaner"),
           ({"start": [{"device": "nope", "action": "power_on"}]}, "no device 'nope'"),
           ({"start": [{"device": "proj", "action": "explode"}]}, "must be one of")]
    for podium, message in bad:
        with pytest.raises(ConfigError, match=message):
            validate_pushed_config(base, json.dumps({"version": 3, "devices": devices, "podium": podium}))
    with pytest.raises(ConfigError, match="field card_secret"):
        validate_pushed_config(base, json.dumps({"version": 3, "devices": devices, "card_secret": ""}))


# ---------------------------------------------------------------- end to end: broker stopped, then back


@pytest.mark.slow
def test_a_swipe_with_the_broker_stopped_powers_the_projector_and_reaches_central_once(tmp_path: Path) -> None:
    from tests.e2e import Classroom, SimulatorsInThread
    from tests.servers import Mosquitto, wait_until

    broker = Mosquitto(tmp_path / "mq")
    broker.start()
    room = Classroom(tmp_path, broker.url, poll_interval=0.3, devices=podium_devices(tmp_path, free_port()))
    write_gateway_config(room.config, broker.url, poll_interval=0.3, devices=podium_devices(tmp_path, room.port),
                         data_dir=str(room.data_dir), card_secret=SECRET, podium=podium_config())

    def podium_stored() -> list[dict[str, Any]]:
        return sorted(room.view.ledger.events(gateway="gw1", type_=contract.PODIUM_EVENT), key=lambda e: e["seq"])

    def powers(sims: SimulatorsInThread) -> list[str]:
        return [c for c in sims.call(lambda: sims["proj"].commands) if c.startswith("%1POWR ") and c[-1] != "?"]

    def swipe(sims: SimulatorsInThread, uid: str) -> None:
        asyncio.run_coroutine_threadsafe(sims["cards"].swipe(uid), sims.loop).result(10)

    with SimulatorsInThread(room.config) as sims:
        room.start(sim=False)
        try:
            wait_until(lambda: (room.view.gateway("gw1") or {}).get("online"), 30, message="the gateway online")
            broker.stop()  # central unreachable from here on
            wait_until(lambda: "MQTT link to" in room.agent.output(), 20, message="the agent saw the broker go")
            swipe(sims, STRANGER)
            wait_until(lambda: room.agent_outbox()["pending"] > 0, 20, message="the refusal in the outbox")
            swipe(sims, TEACHER)
            wait_until(lambda: sims.call(lambda: sims["proj"].power) == "on", 30, message="the projector on")
            assert powers(sims) == ["%1POWR 1"]  # the stranger changed nothing, the teacher powered it on
            assert podium_stored() == []          # central has heard nothing yet

            broker.start()  # back on the same port, with its saved sessions
            wait_until(lambda: len(podium_stored()) == 2, 60, message="both outcomes at central")
            swipe(sims, TEACHER)  # the second swipe ends the class
            wait_until(lambda: len(podium_stored()) == 3, 60, message="the end at central")
            wait_until(lambda: room.agent_outbox()["pending"] == 0, 30, message="the outbox drained")
            stored = podium_stored()
            assert [e["data"]["outcome"] for e in stored] == ["refused", "started", "ended"]
            assert stored[0]["data"]["card"] == card_hash(SECRET, STRANGER) and stored[0]["data"]["steps"] == []
            assert stored[1]["data"]["role"] == "teacher"
            assert powers(sims) == ["%1POWR 1", "%1POWR 0"]
            gw = room.view.gateway("gw1")
            # Each outcome stored once: redeliveries after the outage (counted as duplicates) were dropped.
            assert gw is not None and gw["gaps"] == 0 and len({e["seq"] for e in stored}) == 3
        finally:
            room.stop()
            broker.stop()


def test_a_pushed_secret_and_allow_list_take_effect_without_a_restart(tmp_path: Path) -> None:
    """What central's push sends (central/podium.py config_payload): the school's secret and the room's
    cards. The reader is rebuilt with the new secret, so a card enrolled under it starts the class."""
    path = write_gateway_config(tmp_path / "gw1.yaml", f"mqtt://127.0.0.1:{free_port()}",
                                devices=podium_devices(tmp_path, free_port()), card_secret="old-secret")
    config = load_gateway_config(path)
    new = "the-school-secret"

    async def body(agent: Agent, sims: SimulatorSet) -> None:
        reader = sims.by_device["cards"]
        await reader.swipe(TEACHER)  # no podium yet: the swipe is only a swipe
        await until(lambda: any(r.topic.endswith("/event/cards") for r in agent.outbox.peek(1000)), what="a swipe")
        assert podium_events(agent) == []
        payload = json.dumps({"version": 5, "devices": [d.model_dump() for d in config.devices], "card_secret": new,
                              "podium": {"cards": {card_hash(new, TEACHER): {"role": "teacher"}}}})
        assert await agent.apply_pushed_config(payload.encode())
        await until(lambda: agent.polling.status.get("cards") == "ok", what="the reader back")
        await reader.swipe(TEACHER)
        await until(lambda: len(podium_events(agent)) == 1, what="the class started")
        assert podium_events(agent)[0]["outcome"] == "started"
        assert podium_events(agent)[0]["card"] == card_hash(new, TEACHER)

    run_room(config, body)


def podium_events(agent: Agent) -> list[dict[str, Any]]:
    """The podium events in the outbox (nothing is published: there is no broker)."""
    return outbox_events(agent, contract.PODIUM_DEVICE)


def run_room(config: GatewayConfig, body: Callable[[Agent, SimulatorSet], Awaitable[None]]) -> None:
    e2e_run_room(config, body, ready="cards", what="the reader open")
