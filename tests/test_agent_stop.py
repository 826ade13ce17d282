"""Stopping an agent: a stop that arrives together with work must still stop it.

On Python 3.11 `asyncio.wait_for` returns the awaited result when that result
and a cancellation arrive in the same turn of the event loop, and the
cancellation is lost; a loop around such a wait then runs forever and the
TaskGroup that cancelled it waits forever. CI caught `campus demo` hanging on
Ctrl-C this way once in some dozens of runs. These tests make the race happen
every time: the event a loop is waiting for is set, and the agent is cancelled,
in one step.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from campus import contract
from campus.aio import raise_if_cancelled, wait_event
from campus.contract import IngestState
from campus.net import free_port
from device_profiles.config import load_gateway_config
from edge_agent.agent import Agent
from tests.e2e import env_device, write_gateway_config

STOP_TIMEOUT_S = 20  # generous: a clean stop takes milliseconds


def _wake_events(agent: Agent, which: str) -> list[asyncio.Event]:
    return {"outbox": [agent.drain.pending], "state": [agent.presence.changed],
            "poll": list(agent.polling.poll_soon.values()),
            "all": [agent.drain.pending, agent.presence.changed, *agent.polling.poll_soon.values()]}[which]


def central_online(mosquitto) -> None:
    """Central's retained presence, as an ingest worker publishes it: the agent's drain then waits for work,
    not for central."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        client.publish(contract.ingest_state_topic("ingest"), IngestState(True, 1, time.time()).encode(), qos=1,
                       retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.parametrize("which", ["outbox", "state", "poll", "all"])
def test_agent_stops_when_cancelled_in_the_same_turn_as_its_loops_wake(tmp_path: Path, mosquitto, which: str) -> None:
    # Nothing listens on the device's port: its poller runs (offline) and then waits for its next turn.
    path = write_gateway_config(tmp_path / "gw1.yaml", mosquitto.url, poll_interval=60,
                                devices=[env_device(free_port())])
    config = load_gateway_config(path)
    central_online(mosquitto)

    async def main() -> None:
        agent = Agent(config)
        task = asyncio.create_task(agent.run())
        deadline = time.monotonic() + 20
        # Idle: connected, device read once, and every loop waiting on its event (`_waiters`, asyncio's
        # own list of who waits, is the only way to see that from outside).
        while not (agent.connected.is_set() and agent.polling.status.get("env") == "offline"
                   and (events := _wake_events(agent, which)) and all(e._waiters for e in events)):
            assert time.monotonic() < deadline, "agent never became idle"
            assert not task.done(), task
            await asyncio.sleep(0.01)
        for event in events:
            event.set()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=STOP_TIMEOUT_S)
        if not done:
            stack = "".join(f"\n  {t.get_coro().__qualname__}" for t in asyncio.all_tasks()
                            if t is not asyncio.current_task())
            task.cancel()
            pytest.fail(f"agent still running {STOP_TIMEOUT_S} s after it was cancelled; tasks:{stack}")
        assert task.cancelled()

    asyncio.run(main())


# ---------------------------------------------------------------- campus.aio, the helpers the loops use


def test_a_loop_around_a_swallowing_wait_stops_at_raise_if_cancelled() -> None:
    """The PUBACK race: a library's wait_for returns normally although the task was cancelled."""

    async def main() -> None:
        acked = asyncio.Event()
        rounds = 0

        async def publish_loop() -> None:
            nonlocal rounds
            while True:
                rounds += 1
                puback = asyncio.get_running_loop().create_future()
                waiting = asyncio.ensure_future(asyncio.wait_for(puback, 30))  # as aiomqtt waits for a PUBACK
                await asyncio.sleep(0)
                puback.set_result(None)
                acked.set()
                await waiting
                raise_if_cancelled()

        task = asyncio.create_task(publish_loop())
        await acked.wait()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=STOP_TIMEOUT_S)
        assert task in done and task.cancelled()

    asyncio.run(main())


def test_wait_event_returns_whether_set_and_leaves_no_cancel_behind() -> None:
    async def main() -> None:
        event = asyncio.Event()
        assert await wait_event(event, 0.01) is False
        raise_if_cancelled()  # a deadline that passed is not a stop
        asyncio.get_running_loop().call_soon(event.set)
        assert await wait_event(event, STOP_TIMEOUT_S) is True
        assert await wait_event(event, -1) is True  # already set: no wait at all

    asyncio.run(main())
