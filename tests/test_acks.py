"""Central's acknowledgement (central/acks.py through the ledger): the watermark passes exactly the seqs
central holds, holes stop it until they are filled, and acks go out batched, promptly when it matters,
and once whatever the number of ingest workers."""

from __future__ import annotations

import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from campus import contract
from campus.contract import Command, State
from campus.urls import parse_mqtt_url
from central import acks
from central.commands import CommandService
from central.ledger import Ledger, Sequenced
from tests.servers import Mosquitto, wait_until
from tests.stores import sql

INSTANCE = 4242
T0 = 1_000_000.0


def msg(seq: int, gateway: str = "gw1") -> Sequenced:
    return Sequenced("s1", gateway, "env", seq, T0 + seq, values={"co2_ppm": seq})


def state(oldest: int | None, *, instance: int = INSTANCE, ts: float = T0, since: float = T0,
          gateway: str = "gw1") -> tuple[str, str, State]:
    outbox = {"pending": 0, "dropped": 0, "instance": instance}
    if oldest is not None:
        outbox["oldest"] = oldest
    return ("s1", gateway, State(online=True, ts=ts, since=since, outbox=outbox))


def watermark(ledger: Ledger, gateway: str = "gw1") -> int:
    return sql(ledger, "SELECT acked_seq FROM gateways WHERE id = ?", (gateway,)).fetchone()[0]


@pytest.fixture
def ledger(central_db_url: str) -> Ledger:
    ledger = Ledger(central_db_url, seen_keep=10)
    yield ledger
    ledger.close()


def test_the_watermark_stops_at_a_hole_and_passes_it_once_filled(ledger: Ledger) -> None:
    ledger.record([msg(s) for s in (1, 2, 3, 5, 6)], [state(1)], [])
    assert watermark(ledger) == 3
    ledger.record([msg(7)], [], [])
    assert watermark(ledger) == 3  # 4 is still missing: the agent keeps 4 and everything after it
    ledger.record([msg(4)], [], [])  # the agent sent it again
    assert watermark(ledger) == 7


def test_the_agents_oldest_lets_it_pass_what_the_agent_dropped(ledger: Ledger) -> None:
    ledger.record([msg(s) for s in (1, 2, 9, 10)], [state(1)], [])
    assert watermark(ledger) == 2
    # The outbox bound dropped 3..8 (counted in `dropped`): the agent's lowest seq held is now 9.
    ledger.record([], [state(9, ts=T0 + 1)], [])
    assert watermark(ledger) == 10
    [gw] = ledger.gateways("gw1")
    assert gw["gaps"] == 6 and gw["acked_seq"] == 10  # the dropped numbers are still gaps: the truth
    # A late state with an older `oldest` does not move it back.
    ledger.record([msg(11)], [state(1, ts=T0 - 5)], [])
    assert watermark(ledger) == 11


def test_an_agent_without_acknowledgements_gets_none_and_is_pruned_as_before(ledger: Ledger) -> None:
    ledger.record([msg(s) for s in range(1, 101) if s != 50], [state(None)], [])
    assert watermark(ledger) == 0 and ledger.take_acks(now=2e9) == []
    ledger.prune_seen()
    assert sql(ledger, "SELECT seq_floor FROM gateways").fetchone()[0] == 90  # newest 10 kept


def test_seen_is_never_pruned_above_the_watermark_so_a_late_hole_stays_one(ledger: Ledger) -> None:
    ledger.record([msg(s) for s in range(1, 101) if s != 50], [state(1)], [])
    assert watermark(ledger) == 49
    ledger.prune_seen()
    assert sql(ledger, "SELECT seq_floor FROM gateways").fetchone()[0] == 49  # not 90: 50 is missing
    assert ledger.record([msg(50)], [], []) == [True]  # a new message, not taken for a duplicate
    assert watermark(ledger) == 100
    ledger.prune_seen()
    assert sql(ledger, "SELECT seq_floor FROM gateways").fetchone()[0] == 90
    assert ledger.gateways("gw1")[0]["gaps"] == 0


def test_acks_are_batched_by_count_and_by_delay(ledger: Ledger) -> None:
    ledger.record([], [state(1)], [])  # the agent's first state: counting starts now
    t = sql(ledger, "SELECT ack_sent_at FROM gateways").fetchone()[0]
    ledger.record([msg(s) for s in range(1, acks.ACK_EVERY)], [], [])
    assert ledger.take_acks(now=t + 1) == []  # 24 messages, a second: not yet
    ledger.record([msg(acks.ACK_EVERY)], [], [])
    assert ledger.take_acks(now=t + 1) == [("s1", "gw1", INSTANCE, acks.ACK_EVERY)]
    assert ledger.take_acks(now=t + 1) == []  # claimed: published once
    ledger.record([msg(acks.ACK_EVERY + 1)], [], [])
    assert ledger.take_acks(now=t + 2) == []
    assert ledger.take_acks(now=t + 1 + acks.ACK_MAX_DELAY_S) == [("s1", "gw1", INSTANCE, acks.ACK_EVERY + 1)]
    assert ledger.take_acks(now=t + 2 * acks.ACK_MAX_DELAY_S) == []  # nothing new: nothing to say


def test_duplicates_and_a_reconnect_bring_a_prompt_ack_but_not_more_often_than_the_minimum(ledger: Ledger) -> None:
    ledger.record([msg(s) for s in range(1, 4)], [state(1)], [])
    t = sql(ledger, "SELECT ack_sent_at FROM gateways").fetchone()[0]
    assert ledger.take_acks(now=t + 5) == []
    ledger.record([msg(2)], [], [])  # a duplicate: the agent is sending again; tell it what we have
    assert ledger.take_acks(now=t + 5) == [("s1", "gw1", INSTANCE, 3)]
    ledger.record([msg(3)], [], [])
    assert ledger.take_acks(now=t + 5 + acks.ACK_MIN_INTERVAL_S / 2) == []  # due, but not yet again
    assert ledger.take_acks(now=t + 5 + acks.ACK_MIN_INTERVAL_S) == [("s1", "gw1", INSTANCE, 3)]
    # The agent reconnected (a new `since`): the same watermark again, since an empty broker lost the retained one.
    ledger.record([], [state(4, ts=T0 + 10, since=T0 + 9)], [])
    assert ledger.take_acks(now=t + 10) == [("s1", "gw1", INSTANCE, 3)]
    ledger.record([], [state(4, ts=T0 + 11, since=T0 + 9)], [])  # a heartbeat of the same connection
    assert ledger.take_acks(now=t + 20) == []


def test_two_workers_publish_each_ack_once(central_db_url: str) -> None:
    one, two = Ledger(central_db_url), Ledger(central_db_url)
    try:
        one.record([], [state(1, gateway=g) for g in ("gw1", "gw2")], [])
        two.record([msg(s, g) for g in ("gw1", "gw2") for s in range(1, 31)], [], [])
        now = sql(one, "SELECT MAX(ack_sent_at) FROM gateways").fetchone()[0] + 1
        got = one.take_acks(now=now) + two.take_acks(now=now)
        assert sorted(got) == [("s1", "gw1", INSTANCE, 30), ("s1", "gw2", INSTANCE, 30)]
    finally:
        one.close()
        two.close()


def test_a_new_outbox_instance_starts_its_watermark_afresh(ledger: Ledger) -> None:
    ledger.record([msg(s) for s in range(1, 31)], [state(1)], [])
    assert watermark(ledger) == 30
    ledger.record([msg(s) for s in (1, 2)], [state(1, instance=777, ts=T0 + 5)], [])  # a new SD card
    assert watermark(ledger) == 2
    ledger.record([msg(s) for s in range(3, 40)], [], [])
    t = sql(ledger, "SELECT ack_sent_at FROM gateways").fetchone()[0]
    assert ledger.take_acks(now=t + 1) == [("s1", "gw1", 777, 39)]


def test_a_refused_message_is_passed_and_still_counted_as_a_gap(ledger: Ledger) -> None:
    ledger.record([msg(1), msg(3)], [state(1)], [], refused=[("s1", "gw1", 2)])
    assert watermark(ledger) == 3
    assert ledger.gateways("gw1")[0]["gaps"] == 1
    ledger.record([], [], [], refused=[("s1", "gw1", 2**62)])  # a corrupt seq far away: not remembered
    assert sql(ledger, "SELECT MAX(seq) FROM seen").fetchone()[0] == 3


def test_gateways_show_what_waits_for_central(ledger: Ledger) -> None:
    outbox = {"pending": 12, "unacked": 10, "dropped": 0, "instance": INSTANCE, "oldest": 5, "oldest_age": 40}
    ledger.record([msg(s) for s in range(1, 5)], [("s1", "gw1", State(online=True, ts=T0, outbox=outbox))], [])
    [gw] = ledger.gateways("gw1")
    assert gw["waiting"] == 12 and gw["acked_seq"] == 4
    assert gw["waiting_age"] >= 40 and gw["waiting_long"]  # its state is old (T0): ages since then



def test_a_command_published_again_keeps_its_first_time(ledger: Ledger, mosquitto: Mosquitto) -> None:
    """The republished command carries the time central first issued it: an agent whose journal began later
    (a replaced outbox) answers it `expired` instead of running it a second time (edge_agent/commands.py)."""
    ledger.record([], [("s1", "gw1", State(online=True, ts=time.time(), since=1.0))], [])
    ledger.add_command("c1", "gw1", "proj", "power_on", {}, "t", time.time() + 60)
    created = ledger.command("c1")["created"]
    seen: list[bytes] = []
    watcher = paho.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
    watcher.on_message = lambda _c, _u, message: seen.append(message.payload)
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe(contract.cmd_topic("s1", "gw1", "proj"), qos=1)
    watcher.loop_start()
    service = CommandService(parse_mqtt_url(mosquitto.url), ledger)
    service.start()
    try:
        assert service.connected.wait(10)
        # The gateway reconnected (another `since`): the broker it is on now may have lost the command.
        ledger.record([], [("s1", "gw1", State(online=True, ts=time.time() + 1, since=2.0))], [])
        wait_until(lambda: service.publish_again() or seen, 10, message="the command published again")
        wait_until(lambda: seen, 10, message="the command at the gateway's topic")
        again = Command.decode(seen[0])
        assert (again.id, again.ts) == ("c1", created)
    finally:
        service.stop()
        watcher.loop_stop()
        watcher.disconnect()
