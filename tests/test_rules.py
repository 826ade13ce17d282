"""The room's rules on the gateway (edge_agent/rules.py): idle-off and the teacher's period override.

The agent runs in-process with its room's simulators (tests/e2e.py run_room): a PJLink projector and the
synthetic camera (firmware_stubs/camera.py) whose video the real camera driver counts, so people_count
reaches the rule through the real polling path. A rule minute is 1 s here (`rules_minute_s`), never a
sleep: every wait is a condition with a deadline.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from campus import contract
from campus.contract import Command
from campus.errors import ConfigError
from campus.net import free_port
from device_profiles.config import load_gateway_config
from edge_agent.agent import Agent
from edge_agent.config_push import validate_pushed_config
from edge_agent.rules import IdleWatch
from firmware_stubs.runner import SimulatorSet
from tests.e2e import outbox_events, power_commands, run_room, until, write_gateway_config

# ---------------------------------------------------------------- the decision, on its own clock


def test_idle_watch_waits_m_minutes_of_zeros_and_something_on() -> None:
    w = IdleWatch(minutes=10, minute_s=60, stale_s=30, cameras=("cam",))
    for t in range(0, 600, 10):
        w.count(1000 + t, "cam", 0)
        assert w.due(1000 + t, anything_on=True) is None
    w.count(1600, "cam", 0)
    assert w.due(1600, anything_on=True) == 1600  # planned: the moment the ten minutes were full
    assert w.due(1600, anything_on=False) is None  # nothing on: nothing to do


def test_idle_watch_someone_a_command_or_missing_data_start_the_wait_again() -> None:
    w = IdleWatch(minutes=10, minute_s=60, stale_s=30, cameras=("cam",))

    def zeros(start: int, end: int) -> None:
        for t in range(start, end, 10):
            w.count(t, "cam", 0)

    zeros(0, 300)
    w.count(300, "cam", 2)                 # someone came back
    zeros(310, 900)
    assert w.due(890, True) is None and w.due(900, True) is None
    zeros(900, 1000)
    assert w.due(910, True) == 910         # 10 minutes after the 0s began again at 310
    w.command(950)                         # a teacher's panel command
    assert w.due(990, True) is None
    zeros(1000, 1560)
    assert w.due(1550, True) == 1550       # 600 s after the command
    # A camera fault (no count) is not "nobody there", nor a camera that falls silent.
    w2 = IdleWatch(minutes=1, minute_s=60, stale_s=30, cameras=("cam",))
    w2.count(0, "cam", 0)
    w2.count(20, "cam", None)
    w2.count(40, "cam", 0)
    assert w2.due(90, True) is None and w2.due(100, True) is None  # stale after 70 s: no data
    w2.count(100, "cam", 0)                 # a gap of 60 s: the zeros before it do not count
    assert w2.due(100, True) is None and w2.since(100) == 100
    w2.count(110, "cam", math.nan)
    assert w2.since(110) is None
    # Two cameras: both must count nobody; one never reading is no data.
    w3 = IdleWatch(minutes=1, minute_s=60, stale_s=30, cameras=("a", "b"))
    for t in range(0, 200, 10):
        w3.count(t, "a", 0)
    assert w3.due(190, True) is None
    # No camera on the gateway: never.
    assert IdleWatch(minutes=1, cameras=()).due(1e9, True) is None


# ---------------------------------------------------------------- the agent: a real camera and projector


def room_config(tmp_path: Path, *, people: int = 0, minutes: float = 2, camera_source: str | None = None,
                power: str = "on", **extra: Any) -> Any:
    video = tmp_path / "cam.avi"
    cam = {"id": "cam", "profile": "camera-occupancy",
           "address": {"source": camera_source or str(video)},
           "options": {"loop": True, "realtime": False}, "poll_interval": 0.2,
           "simulator": {"people": people, "seconds": 2, "fps": 10, "seed": 3}}
    proj = {"id": "proj", "profile": "projector-pjlink", "address": {"host": "127.0.0.1", "port": free_port()},
            "simulator": {"power": power, "warmup_s": 0.2, "cooldown_s": 0.2}}
    path = write_gateway_config(tmp_path / "gw1.yaml", "mqtt://127.0.0.1:1", poll_interval=0.2,
                                devices=[proj, cam], rules={"idle_off_minutes": minutes}, rules_minute_s=1.0,
                                **extra)
    return load_gateway_config(path)


def rule_events(agent: Agent) -> list[dict[str, Any]]:
    return outbox_events(agent, contract.RULES_DEVICE)


def in_room(config: Any, body: Callable[[Agent, SimulatorSet], Awaitable[None]]) -> None:
    run_room(config, body, ready="proj", what="the projector read")


def test_an_empty_room_is_switched_off_once_and_reported_once(tmp_path: Path) -> None:
    config = room_config(tmp_path, people=0, minutes=2)

    async def body(agent: Agent, sims: SimulatorSet) -> None:
        await until(lambda: rule_events(agent), 30, "the idle-off report")
        await until(lambda: sims.by_device["proj"].power == "off", 20, "the projector off")
        [event] = rule_events(agent)
        assert event["rule"] == contract.RULE_IDLE_OFF and event["outcome"] == "ran"
        assert [(s["device"], s["action"], s["status"]) for s in event["steps"]] == [("proj", "power_off", "done")]
        assert "2 minutes" in event["reason"]
        # Marked beside the English (campus/contract.py EVENT_TEXTS), for central to say in the reader's language.
        assert (event["reason_msgid"], event["reason_params"]) == (
            "nobody in the room for %(minutes)s minutes and no command", {"minutes": "2"})
        since = agent.rules.watch.idle_since["cam"]
        assert since is not None and event["at"] >= since + 2.0  # two rule minutes of zeros, at least
        assert power_commands(sims) == ["%1POWR 0"]
        # Still empty, the projector off: nothing more to do, however long it stays empty.
        seen = agent.rules.watch.seen["cam"]
        await until(lambda: agent.rules.watch.seen["cam"] > seen + 3, 20, "three more rule minutes of counts")
        assert len(rule_events(agent)) == 1 and power_commands(sims) == ["%1POWR 0"]

    in_room(config, body)

    # A restart (the same outbox): the run is not reported or run again.
    async def again(agent: Agent, sims: SimulatorSet) -> None:
        await until(lambda: agent.rules.watch is not None and "cam" in agent.rules.watch.seen, 20, "the camera")
        start = agent.rules.watch.seen["cam"]
        await until(lambda: agent.rules.watch.seen["cam"] > start + 3, 20, "three rule minutes")
        assert len(rule_events(agent)) == 1  # the first agent's report, still waiting for central
        assert power_commands(sims) == []     # the projector simulator started afresh (off): nothing sent

    in_room(room_config(tmp_path, people=0, minutes=2, power="off"), again)


def test_people_in_the_room_or_a_command_in_the_window_keep_it_on(tmp_path: Path) -> None:
    config = room_config(tmp_path, people=3, minutes=1)

    async def body(agent: Agent, sims: SimulatorSet) -> None:
        await until(lambda: agent.rules.watch is not None and "cam" in agent.rules.watch.seen, 20, "the camera")
        start = agent.rules.watch.seen["cam"]
        await until(lambda: agent.rules.watch.seen["cam"] > start + 3, 20, "three rule minutes with people")
        assert agent.rules.watch.since(time.time()) is None
        assert rule_events(agent) == [] and power_commands(sims) == []

    in_room(config, body)

    (tmp_path / "b").mkdir()
    config = room_config(tmp_path / "b", people=0, minutes=3)

    async def command(agent: Agent, sims: SimulatorSet) -> None:
        watch = agent.rules.watch
        await until(lambda: watch.since(time.time()) is not None, 20, "the room seen empty")
        began = watch.since(time.time())
        await until(lambda: time.time() > began + 1.5, 10, "half the window")
        # A teacher's panel command (through the executor, as central sends it): the wait starts again.
        agent._command_received("proj", Command(id="c-panel", action="power_on", params={},
                                                deadline=time.time() + 30, ts=time.time()).encode())
        await until(lambda: (agent.commands.state_of("c-panel") or ("",))[0] == "done", 20, "the panel command done")
        sent = time.time()
        await until(lambda: rule_events(agent), 30, "the idle-off, later")
        assert rule_events(agent)[0]["at"] >= sent - 0.5 + 3.0  # three minutes after the command, not the zeros

    in_room(config, command)


def test_missing_camera_data_never_switches_off(tmp_path: Path) -> None:
    """A camera whose stream is not there (unplugged, the NVR down) reads as `offline`, never as 0."""
    import asyncio

    config = room_config(tmp_path, minutes=1)
    only_projector = config.model_copy(update={"devices": [config.devices[0]]})  # no video is written

    async def main() -> None:
        sims = SimulatorSet(only_projector)
        await sims.start()
        agent = Agent(config)
        task = asyncio.create_task(agent.run())
        try:
            await until(lambda: agent.polling.status.get("proj") == "ok"
                        and agent.polling.status.get("cam") in ("offline", "fault"), 20, "the camera missing")
            began = time.time()
            await until(lambda: time.time() > began + 4, 10, "four rule minutes")
            assert agent.polling.status.get("cam") in ("offline", "fault")
            assert agent.rules.watch.since(time.time()) is None
            assert rule_events(agent) == [] and power_commands(sims) == []
            assert sims.by_device["proj"].power == "on"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sims.stop()

    asyncio.run(main())


def override(agent: Agent, until_: float, cid: str = "c-override") -> None:
    agent._command_received(contract.RULES_DEVICE, Command(
        id=cid, action=contract.OVERRIDE_ACTION, params={"until": until_}, deadline=time.time() + 30,
        by="teacher", ts=time.time()).encode())


def test_a_teachers_override_keeps_the_room_on_through_idle_off_and_a_power_off_schedule(tmp_path: Path) -> None:
    now = time.time()
    schedules = {"until": now + 86400, "runs": [{"schedule": 5, "at": now + 4, "name": "lunch off",
                                                 "steps": [{"device": "proj", "action": "power_off"}]}]}
    config = room_config(tmp_path, people=0, minutes=1, schedules=schedules)

    async def body(agent: Agent, sims: SimulatorSet) -> None:
        override(agent, time.time() + 3600)
        await until(lambda: (agent.commands.state_of("c-override") or ("",))[0] == "done", 10, "the override taken")
        assert agent.rules.overridden()
        # Idle all the while, past the schedule's time: the schedule run is reported skipped, nothing is off.
        await until(lambda: outbox_events(agent, contract.SCHEDULE_DEVICE), 20, "the schedule's report")
        [run] = outbox_events(agent, contract.SCHEDULE_DEVICE)
        assert (run["schedule"], run["outcome"], run["reason"]) == (5, "skipped", "override")
        assert [(s["status"], s["detail"]) for s in run["steps"]] == [("skipped", "not run: a teacher kept the room on for this period")]
        watch = agent.rules.watch
        await until(lambda: (watch.since(time.time()) or math.inf) + 3 < time.time(), 20, "three idle minutes")
        assert rule_events(agent) == [] and power_commands(sims) == []
        # A bad override is refused, answered like any command.
        override(agent, "tomorrow", cid="c-bad")  # type: ignore[arg-type]
        await until(lambda: agent.commands.state_of("c-bad") is not None
                    and agent.commands.state_of("c-bad")[0] == "rejected", 10, "the bad override refused")

    in_room(config, body)

    # The override survives a restart; once it is cleared, idle-off acts.
    async def after(agent: Agent, sims: SimulatorSet) -> None:
        assert agent.rules.overridden()
        override(agent, time.time() - 1, cid="c-clear")
        await until(lambda: rule_events(agent), 30, "the idle-off once the override is cleared")
        assert power_commands(sims) == ["%1POWR 0"]

    in_room(config, after)


def test_a_run_interrupted_by_a_stop_is_reported_once_never_run_again(tmp_path: Path) -> None:
    config = room_config(tmp_path, people=3, minutes=5)
    agent = Agent(config)
    agent.outbox.write(lambda db: db.execute(
        "INSERT INTO rule_runs (rule, planned, state) VALUES ('idle_off', 1000.0, 'running')"))
    agent.outbox.close()

    async def body(agent: Agent, sims: SimulatorSet) -> None:
        await until(lambda: rule_events(agent), 10, "the interrupted run reported")
        [event] = rule_events(agent)
        assert (event["at"], event["outcome"]) == (1000.0, "interrupted")
        assert power_commands(sims) == []

    in_room(config, body)
    in_room(config, lambda agent, sims: _assert_one(agent))


async def _assert_one(agent: Agent) -> None:
    assert len(rule_events(agent)) == 1


# ---------------------------------------------------------------- the pushed config


def test_pushed_rules_are_validated_naming_the_field(tmp_path: Path) -> None:
    base = room_config(tmp_path)
    devices = [d.model_dump() for d in base.devices]
    version, pushed = validate_pushed_config(base, json.dumps(
        {"version": 2, "devices": devices, "rules": {"idle_off_minutes": 15}}))
    assert pushed.rules is not None and pushed.rules.idle_off_minutes == 15
    assert pushed.rules_minute_s == 1.0  # the file's own scale: a push does not change it
    for rules, field in [({"idle_off_minutes": 0}, "rules.idle_off_minutes"),
                         ({"idle_off_minutes": "ten"}, "rules.idle_off_minutes"),
                         ({"idle_off_minutes": 24 * 60 + 1}, "rules.idle_off_minutes"),
                         ({"idle_of_minutes": 5}, "rules.idle_of_minutes"),
                         ("off", "rules")]:
        with pytest.raises(ConfigError, match="field " + re.escape(field)):
            validate_pushed_config(base, json.dumps({"version": 3, "devices": devices, "rules": rules}))
    with pytest.raises(ConfigError, match="field rules_minute_s"):
        load_gateway_config(write_gateway_config(tmp_path / "bad.yaml", "mqtt://127.0.0.1:1", rules_minute_s=0))
