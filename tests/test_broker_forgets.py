"""Nothing lost even when the broker forgets: central's acknowledgement, end to end.

A broker's PUBACK is not delivery. Each test makes a broker lose messages it
had accepted (restarted without its saved state, a queue limit, ingest's
session expired) while real `campus agent`, `campus ingest` and `campus sim`
processes run, and then counts seq by seq: every seq the agent allocated is
stored exactly once (tests/test_faults.py `assert_exactly_once`). Ingest
acknowledges within a second here (tests/e2e.py), the product within minutes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from campus.net import free_port
from campus.urls import parse_mqtt_url
from central.commands import CommandService
from central.ledger import Ledger
from tests.e2e import Classroom, SimulatorsInThread
from tests.servers import Mosquitto, wait_until
from tests.test_commands import projector, set_commands
from tests.test_faults import assert_exactly_once

pytestmark = pytest.mark.slow


def connections(room: Classroom) -> int:
    return room.agent.output().count("connected to mqtt://")


def test_broker_restarted_empty_twice_mid_stream(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mq")
    broker.start()
    room = Classroom(tmp_path, broker.url, poll_interval=0.1).start()
    try:
        for round_ in (1, 2):
            room.wait_stored_at_least(30 * round_)
            broker.restart_empty(down_s=2)  # the agent buffers meanwhile; sessions, queues, retained: gone
            wait_until(lambda r=round_: connections(room) > r, 30, message="the agent reconnected")
        figures = room.quiesce_and_account(timeout=90)
        assert figures["dropped"] == 0
        assert_exactly_once(room, figures)
        assert "sending" in room.agent.output() and room.agent.alive() and room.ingest.alive()
    finally:
        room.stop()
        broker.stop()


def test_an_agent_back_before_ingest_on_an_empty_broker_waits_for_central(tmp_path: Path) -> None:
    # The failure the issue measured (42 samples lost per gateway): the agents drained their outboxes
    # into a broker restarted empty before ingest had subscribed again. (The agent's config names one
    # broker URL, so the broker comes back on the same port, empty.)
    broker = Mosquitto(tmp_path / "mq")
    broker.start()
    room = Classroom(tmp_path, broker.url, poll_interval=0.1).start()
    try:
        room.wait_stored_at_least(20)
        room.ingest.kill()
        broker.restart_empty()
        wait_until(lambda: connections(room) >= 2, 30, message="the agent reconnected to the empty broker")
        before = room.agent_outbox()
        wait_until(lambda: room.agent_outbox()["last_seq"] >= before["last_seq"] + 20, 30, message="20 more samples")
        held = room.agent_outbox()
        assert held["unacked"] == 0, "published into a broker with no ingest subscribed"
        assert held["pending"] >= 20
        room.ingest = room._ingest().start()  # its session is gone with the broker's state
        figures = room.quiesce_and_account(timeout=60)
        assert_exactly_once(room, figures)
    finally:
        room.stop()
        broker.stop()


def test_a_queue_limit_drops_what_ingest_could_not_take_and_the_agent_sends_it_again(tmp_path: Path) -> None:
    # Mosquitto accepts (PUBACK) and discards QoS 1 messages beyond max_queued_messages for a slow
    # session. Ingest is stopped (SIGSTOP: still connected, still "online"); the agent's watermark
    # stalls and, after ack_timeout_s, it sends everything central has not acknowledged again.
    broker = Mosquitto(tmp_path / "mq", "max_queued_messages 10\nmax_inflight_messages 10\n")
    broker.start()
    room = Classroom(tmp_path, broker.url, poll_interval=0.05, outbox={"ack_timeout_s": 3}).start()
    try:
        room.wait_stored_at_least(20)
        pid = room.ingest.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            before = room.agent_outbox()["last_seq"]
            # 100 samples against 20 in flight or queued: most are accepted and dropped (well within ingest's
            # 15 s keep-alive, so the broker does not call ingest gone).
            wait_until(lambda: room.agent_outbox()["last_seq"] >= before + 100, 30, message="100 more samples")
        finally:
            os.kill(pid, signal.SIGCONT)
        figures = room.quiesce_and_account(timeout=90)
        assert figures["dropped"] == 0
        assert_exactly_once(room, figures)
        assert "no acknowledgement for 3 s" in room.agent.output(), "the broker dropped nothing: the test proves nothing"
    finally:
        room.stop()
        broker.stop()


def test_ingest_killed_and_its_session_expired_while_the_agent_publishes(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mq")
    broker.start()
    room = Classroom(tmp_path, broker.url, poll_interval=0.05)
    room.ingests = [room._ingest()]
    room.ingest.args += ["--session-expiry", "1"]
    room.start()
    try:
        room.wait_stored_at_least(20)
        pid = room.ingest.proc.pid
        os.kill(pid, signal.SIGSTOP)  # still "online": the agent publishes on, the broker queues for ingest
        before = room.agent_outbox()["last_seq"]
        wait_until(lambda: room.agent_outbox()["last_seq"] >= before + 30, 30, message="30 more samples")
        room.ingest.kill()  # its Will: central is offline; its session (and the queue) expires a second later
        wait_until(lambda: "central is offline" in room.agent.output(), 20, message="the agent saw central go")
        time.sleep(3)  # the session's expiry passing is the fault itself, not synchronisation
        ingest = room._ingest()
        ingest.args += ["--session-expiry", "1"]
        room.ingest = ingest.start()
        figures = room.quiesce_and_account(timeout=90)
        assert_exactly_once(room, figures)
        # Both ingest processes log to the same file: the second found no session either.
        assert room.ingest.output().count("(session present: False)") == 2, "the session did not expire"
    finally:
        room.stop()
        broker.stop()


def test_a_command_queued_while_the_broker_restarts_empty_still_runs_once(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mq")
    broker.start()
    room = Classroom(tmp_path, broker.url, poll_interval=0.3, devices=[projector(free_port())])
    with SimulatorsInThread(room.config) as sims:
        room.start(sim=False)
        ledger = Ledger(str(room.db))
        service = CommandService(parse_mqtt_url(broker.url), ledger)
        service.start()
        try:
            wait_until(lambda: any(d["id"] == "proj" for d in ledger.gateway_devices()), 30, message="projector known")
            room.agent.stop()  # offline: the command waits in the agent's session at the broker ...
            wait_until(lambda: not ledger.gateways()[0]["online"], 20, message="gateway offline")
            queued = service.send("s1", "gw1", "proj", "power_on", {}, by="t", ttl=120, wait=0.5)
            assert queued["status"] == "pending"
            broker.restart_empty()  # ... which the broker forgets
            room.agent = room._agent().start()
            wait_until(lambda: ledger.command(queued["id"])["status"] == "done", 60, message="the command ran")
            assert service.republished >= 1
            assert set_commands(sims) == ["%1POWR 1"]  # once: the projector counts
        finally:
            service.stop()
            room.stop()
            ledger.close()
            broker.stop()
