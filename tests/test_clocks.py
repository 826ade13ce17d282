"""Clocks are data, not authority (issue 15): a gateway's `ts` never decides what is newest.

The attack: one telemetry sample (or a duplicate seq) or `state` with a `ts` a day ahead used to
become the room's "latest" until the wall clock caught up, hiding later values, alarms and device
status. Central now orders a gateway's values by its seq (within a numbering epoch), flags samples
far ahead of their receipt, refuses times no clock could mean, and reports each gateway's clock
offset. End to end through a real Mosquitto and `campus ingest`; the ledger's rules directly.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from campus import contract
from campus.contract import State, Telemetry
from campus.errors import PayloadError
from central import alarms
from central.ledger import CLOCK_WARN_S, SEQ_JUMP_MAX, Ledger, Sequenced
from central.registry import Registry
from tests.e2e import ingest_with_publisher
from tests.servers import Mosquitto, wait_until

DAY = 86400.0
ENV = {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"}


@pytest.mark.slow
def test_far_future_sample_never_freezes_a_room(tmp_path: Path, mosquitto: Mosquitto) -> None:
    telemetry = contract.telemetry_topic("s1", "gw-f", "env")
    state_topic = contract.state_topic("s1", "gw-f")
    now = time.time()
    first = Telemetry(seq=1, ts=now, values={"co2_ppm": 500}).encode()
    with ingest_with_publisher(tmp_path, mosquitto.port, mosquitto.url, "clock-test", telemetry, first) as (
            _, pub, view):
        registry = Registry(f"sqlite:///{tmp_path / 'central.db'}")
        registry.register_gateway("gw-f", "s1", "101", "A")

        def send(topic: str, payload: bytes) -> None:
            pub.publish(topic, payload, qos=1).wait_for_publish(5)

        def state(ts: float, env_status: str) -> bytes:
            return State(online=True, ts=ts, room="101", interval=60,
                         devices={"env": {**ENV, "status": env_status}}).encode()

        # The attack: a state and samples a day ahead, one of them a duplicate of seq 1.
        send(state_topic, state(now + DAY, "fault"))
        send(telemetry, Telemetry(seq=2, ts=now + DAY, values={"co2_ppm": 400}).encode())
        send(telemetry, Telemetry(seq=1, ts=now + DAY + 1, values={"co2_ppm": 9999}).encode())
        wait_until(lambda: view.gateway("gw-f")["clock_ahead"] == 2, 20, message="the two samples flagged")
        # Then the live ones: a CO2 level over the alarm limit, and the device fine again.
        send(state_topic, state(time.time(), "ok"))
        for seq in range(3, 6):
            send(telemetry, Telemetry(seq=seq, ts=time.time(), values={"co2_ppm": 3000 + seq}).encode())
        wait_until(lambda: view.gateway("gw-f")["received"] == 5, 20, message="five numbers received")

        ledger = Ledger(tmp_path / "central.db")
        try:
            assert ledger.latest()[("gw-f", "env")]["co2_ppm"] == 3005
            assert [d["status"] for d in ledger.gateway_devices("gw-f")] == ["ok"]
            gw = ledger.gateways("gw-f")[0]
            # (ingest_with_publisher may have sent seq 1 more than once before ingest subscribed)
            assert gw["gaps"] == 0 and gw["duplicates"] >= 1 and gw["clock_ahead"] == 2
            # Both far-future samples are stored all the same: they are data.
            assert (now + DAY, 400.0) in view.points.query("gw-f", "env", "co2_ppm", now, now + 2 * DAY)
            alarms.evaluate(registry, ledger)
            raised = alarms.list_alarms(registry, "open")
            assert [(a["gateway"], a["device"]) for a in raised if "CO2" in a["message"] or "co2" in a["message"]] \
                == [("gw-f", "env")], raised
        finally:
            ledger.close()
            registry.close()


@pytest.mark.slow
def test_implausible_times_and_string_numbers_are_rejected(tmp_path: Path, mosquitto: Mosquitto) -> None:
    topic = contract.telemetry_topic("s1", "gw-r", "env")
    first = Telemetry(seq=1, ts=time.time(), values={"co2_ppm": 500}).encode()
    with ingest_with_publisher(tmp_path, mosquitto.port, mosquitto.url, "reject-test", topic, first) as (
            _, pub, view):
        bad = [b'{"seq": 2, "ts": 0, "values": {"co2_ppm": 1}}',
               b'{"seq": 3, "ts": 1e15, "values": {"co2_ppm": 1}}',
               b'{"seq": 4, "ts": %d, "values": {"co2_ppm": 1}}' % (time.time() - 500 * DAY),
               b'{"seq": 5, "ts": %d, "values": {"temperature_c": "NaN"}}' % time.time(),
               b'{"seq": 6, "ts": %d, "values": {"co2_ppm": "Infinity"}}' % time.time(),
               b'{"seq": 7, "ts": %d, "values": {"co2_ppm": NaN}}' % time.time()]
        for payload in bad:
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        pub.publish(topic, Telemetry(seq=8, ts=time.time(), values={"co2_ppm": 600}).encode(), qos=1).wait_for_publish(5)
        wait_until(lambda: view.gateway("gw-r")["received"] == 2, 20, message="the good message stored")
        assert view.points.count("gw-r") == 2  # nothing of the six bad ones
        wait_until(lambda: [w["rejected"] for w in view.ledger.workers()] == [6], 20,
                   message="ingest reported the six rejected")


def test_clock_verdicts() -> None:
    now = 1_800_000_000.0
    assert contract.clock_ahead(now, now, "t") is False
    assert contract.clock_ahead(now - 30 * DAY, now, "t") is False  # an outbox drained after a month
    assert contract.clock_ahead(now + contract.CLOCK_AHEAD_S + 1, now, "t") is True
    for ts in (0.0, 1e15, now - 401 * DAY, now + 8 * DAY, contract.TS_FLOOR - 1):
        with pytest.raises(PayloadError, match="field 'ts'"):
            contract.clock_ahead(ts, now, "t")


_seq = itertools.count(1)


def _values(ledger: Ledger, gw: str, seq: int, co2: int, *, ahead: bool = False) -> None:
    ledger.record([Sequenced("s1", gw, "env", seq, time.time(), values={"co2_ppm": co2}, ahead=ahead)], [], [])


def test_latest_follows_seq_not_ts(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "c.db")
    ledger.record([Sequenced("s1", "g", "env", 2, 2e9, values={"co2_ppm": 1})], [], [])  # a clock far ahead
    ledger.record([Sequenced("s1", "g", "env", 3, 1.8e9, values={"co2_ppm": 2})], [], [])
    assert ledger.latest()[("g", "env")]["co2_ppm"] == 2
    ledger.record([Sequenced("s1", "g", "env", 1, 2.5e9, values={"co2_ppm": 3})], [], [])  # a late redelivery
    assert ledger.latest()[("g", "env")]["co2_ppm"] == 2
    _values(ledger, "g", 4, 4, ahead=True)
    assert ledger.latest()[("g", "env")]["co2_ppm"] == 2  # flagged: stored elsewhere, never the latest
    ledger.close()


def test_a_new_outbox_instance_wins_with_low_numbers(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "c.db")
    ledger.record([], [("s1", "g", State(online=True, ts=1.0, outbox={"instance": 1}))], [])
    _values(ledger, "g", 500, 1)
    ledger.record([], [("s1", "g", State(online=True, ts=2.0, outbox={"instance": 2}))], [])
    _values(ledger, "g", 1, 2)
    assert ledger.latest()[("g", "env")]["co2_ppm"] == 2
    ledger.close()


def test_seq_jump_starts_a_flagged_epoch(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "c.db")
    for seq in range(1, 11):
        _values(ledger, "g", seq, seq)
    _values(ledger, "g", 2**63 - 1, 99)
    gw = ledger.gateways("g")[0]
    assert gw["gaps"] == 0 and gw["seq_jumps"] == 1 and gw["received"] == 11
    assert ledger.latest()[("g", "env")]["co2_ppm"] == 99
    # The real numbering goes on: another epoch, still no astronomical gaps.
    for seq in range(11, 14):
        _values(ledger, "g", seq, seq)
    gw = ledger.gateways("g")[0]
    assert gw["gaps"] == 0 and gw["seq_jumps"] == 2 and gw["received"] == 14
    assert ledger.latest()[("g", "env")]["co2_ppm"] == 13
    # Both at once in one batch: the higher numbering counts, the other is stored but not counted.
    batch = [Sequenced("s1", "g", "env", 14, time.time(), values={"co2_ppm": 14}),
             Sequenced("s1", "g", "env", 14 + SEQ_JUMP_MAX + 1, time.time(), values={"co2_ppm": 15})]
    assert ledger.record(batch, [], []) == [False, True]
    assert ledger.gateways("g")[0]["gaps"] == 0
    # An ordinary gap (an outbox that dropped rows) stays a gap.
    _values(ledger, "g", 14 + SEQ_JUMP_MAX + 5, 16)
    assert ledger.gateways("g")[0]["gaps"] == 3
    ledger.close()


def test_clock_offset_is_smoothed_and_warned(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "c.db")
    ledger.record([], [("s1", "g", State(online=True, ts=1.0))], [], {"g": -DAY})
    gw = ledger.gateways("g")[0]
    assert gw["clock_offset"] == -DAY and gw["clock_wrong"] is True
    for _ in range(40):
        ledger.record([], [], [], {"g": 0.5})
    gw = ledger.gateways("g")[0]
    assert abs(gw["clock_offset"]) < CLOCK_WARN_S and gw["clock_wrong"] is False
    ledger.close()
