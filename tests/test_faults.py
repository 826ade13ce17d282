"""Nothing lost, nothing doubled: every delivery path under faults, real processes.

Each test counts what the agent sequenced (its outbox's own counter) and
what central stored, and asserts they are the same messages, one by one.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from campus import contract
from campus.contract import Telemetry
from tests.e2e import Classroom, ingest_with_publisher
from tests.servers import Mosquitto, wait_until

pytestmark = pytest.mark.slow
METRICS_PER_SAMPLE = 6


def assert_exactly_once(room: Classroom, figures: dict[str, int]) -> None:
    """Every seq the agent kept is stored exactly once; the ones it dropped are gaps."""
    last, dropped = figures["last_seq"], figures["dropped"]
    seqs = room.view.seqs(room.gateway)
    assert seqs == list(range(dropped + 1, last + 1)), "stored seq numbers differ from those sent"
    gw = room.view.gateway(room.gateway)
    assert gw["received"] == last - dropped
    assert gw["gaps"] == 0  # the first stored seq is dropped+1: nothing missing after it
    points = room.view.points.count(room.gateway)
    assert points == METRICS_PER_SAMPLE * (last - dropped), "a sample was stored twice or lost a metric"


def test_broker_killed_for_20s_mid_stream(tmp_path: Path, mosquitto: Mosquitto) -> None:
    room = Classroom(tmp_path, mosquitto.url).start()
    try:
        room.wait_stored_at_least(20)
        mosquitto.kill()
        outage_started = room.agent_outbox()["last_seq"]
        time.sleep(20)  # the outage itself (not synchronisation): the agent keeps polling into its outbox
        during = room.agent_outbox()
        assert during["last_seq"] > outage_started + 20 and during["pending"] > 20, "agent did not buffer"
        mosquitto.start()
        figures = room.quiesce_and_account(timeout=90)
        assert figures["dropped"] == 0
        assert_exactly_once(room, figures)
        assert room.agent.alive() and room.ingest.alive()
    finally:
        room.stop()


def test_agent_sigkill_mid_stream_and_restart(tmp_path: Path, mosquitto: Mosquitto) -> None:
    room = Classroom(tmp_path, mosquitto.url, poll_interval=0.05).start()
    try:
        for round_ in range(3):
            room.wait_stored_at_least(30 * (round_ + 1))
            room.agent.kill()  # SIGKILL: no goodbye, maybe mid-transaction, maybe between PUBACK and delete
            room.agent = room._agent().start()
        figures = room.quiesce_and_account()
        assert_exactly_once(room, figures)
        # The Last Will told central the gateway went away (test_a_killed_agent_is_offline_at_once_by_its_will);
        # the last agent started comes back online.
        wait_until(lambda: room.view.gateway(room.gateway)["online"], 30, message="the last agent online")
    finally:
        room.stop()


def test_a_gateway_with_a_new_outbox_is_counted_exactly(tmp_path: Path, mosquitto: Mosquitto) -> None:
    # The gateway's SD card is replaced: the agent comes back with an empty outbox whose seq
    # numbers start again at 1. Central must store and count them, not take them for redeliveries.
    room = Classroom(tmp_path, mosquitto.url, poll_interval=0.05).start()
    try:
        room.wait_stored_at_least(30)
        old = room.quiesce_and_account()
        room.agent.stop()
        shutil.rmtree(tmp_path / f"{room.gateway}-data")
        new = room.restart_with_a_new_outbox(old)
        assert room.view.points.count(room.gateway) == METRICS_PER_SAMPLE * (old["last_seq"] + new["last_seq"])
    finally:
        room.stop()


def test_a_killed_agent_is_offline_at_once_by_its_will(tmp_path: Path, mosquitto: Mosquitto) -> None:
    # Heartbeats every 30 s: silence would take 90 s to notice; the Last Will says it at once.
    room = Classroom(tmp_path, mosquitto.url, poll_interval=30).start()
    try:
        room.wait_stored_at_least(1)
        wait_until(lambda: room.view.gateway(room.gateway)["online"], 30, message="online")
        room.agent.kill()
        wait_until(lambda: not room.view.gateway(room.gateway)["online"], 30, message="offline by the Will")
        room.agent = room._agent().start()
        wait_until(lambda: room.view.gateway(room.gateway)["online"], 30, message="online again")
    finally:
        room.stop()


def test_ingest_killed_and_restarted_while_agent_publishes(tmp_path: Path, mosquitto: Mosquitto) -> None:
    room = Classroom(tmp_path, mosquitto.url).start()
    try:
        room.wait_stored_at_least(10)
        room.ingest.kill()
        before = room.agent_outbox()["last_seq"]
        wait_until(lambda: room.agent_outbox()["last_seq"] >= before + 25, 30, message="agent publishing on")
        # Central's presence (its Last Will) says no ingest worker is online: the agent holds its outbox
        # rather than pour it into a broker nobody reads (before acknowledgements, the broker took it).
        assert room.agent_outbox()["pending"] >= 25, "the agent should hold its outbox while central is offline"
        room.ingest = room._ingest().start()
        figures = room.quiesce_and_account()
        assert_exactly_once(room, figures)
    finally:
        room.stop()


def test_redelivered_message_is_stored_once(tmp_path: Path, mosquitto: Mosquitto) -> None:
    topic = contract.telemetry_topic("s1", "gwd", "env")
    t0 = round(time.time())
    msg = Telemetry(seq=1, ts=t0, values={"co2_ppm": 500, "temperature_c": 21.5}).encode()
    with ingest_with_publisher(tmp_path, mosquitto.port, mosquitto.url, "redeliver", topic, msg) as (_, pub, view):
        second = Telemetry(seq=2, ts=t0 + 1, values={"co2_ppm": 510, "temperature_c": 21.6}).encode()
        for _ in range(3):
            pub.publish(topic, second, qos=1).wait_for_publish(5)
        pub.publish(topic, msg, qos=1).wait_for_publish(5)
        wait_until(lambda: view.gateway("gwd")["duplicates"] >= 3, 20, message="redeliveries seen")
        gw = view.gateway("gwd")
        assert gw["received"] == 2 and gw["gaps"] == 0
        assert view.points.query("gwd", "env", "co2_ppm", 0, t0 + 10) == [(t0, 500.0), (t0 + 1.0, 510.0)]


def test_outbox_full_drops_oldest_and_counts_exactly(tmp_path: Path, mosquitto: Mosquitto) -> None:
    mosquitto.kill()  # the broker is down from the start: everything goes to the outbox
    room = Classroom(tmp_path, mosquitto.url, poll_interval=0.05, outbox={"max_messages": 40}).start(ingest=False)
    try:
        wait_until(lambda: room.agent_outbox()["last_seq"] >= 100, 30, message="100 samples sequenced")
        figures = room.agent_outbox()
        assert figures["pending"] == 40
        assert figures["dropped"] == figures["last_seq"] - 40  # exact: every sample is kept or counted
        mosquitto.start()
        room.ingest.start()
        figures = room.quiesce_and_account()
        assert figures["dropped"] > 0
        assert_exactly_once(room, figures)  # the newest 40 survive, in order
    finally:
        room.stop()
