"""The ledger's memory of seq numbers: bounded, and never the reason a message is lost."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campus import contract
from campus.contract import State
from campus.urls import MqttUrl
from central.ingest import Ingest
from central.ledger import Ledger, Sequenced
from central.store.sqlite import SqlitePointStore
from central.subscriber import Delivery
from tests.servers import wait_until
from tests.stores import sql
from tests.test_sqlite_store import old_file

KEEP = 100


def telemetry(seq: int, co2: int | None = None) -> Sequenced:
    return Sequenced("s1", "gw1", "env", seq, 1000.0 + seq, values={"co2_ppm": seq if co2 is None else co2})


def seen_rows(ledger: Ledger) -> list[int]:
    return [r[0] for r in sql(ledger, "SELECT seq FROM seen WHERE gateway = 'gw1' ORDER BY seq")]


def counters(ledger: Ledger) -> tuple[int, int, int]:
    [gw] = ledger.gateways("gw1")
    return gw["received"], gw["gaps"], gw["duplicates"]


def test_pruning_keeps_the_newest_numbers_and_the_counters_stay_exact(central_db_url: str) -> None:
    ledger = Ledger(central_db_url, seen_keep=KEEP)
    try:
        for start in range(1, 1001, 50):
            assert ledger.record([telemetry(s) for s in range(start, start + 50)], [], []) == [True] * 50
        assert ledger.prune_seen() == 1000 - KEEP
        assert seen_rows(ledger) == list(range(1001 - KEEP, 1001))
        assert ledger.prune_seen() == 0  # nothing more until more arrives
        # A redelivery inside the window, one below the floor, and a new one.
        assert ledger.record([telemetry(990), telemetry(10), telemetry(1001)], [], []) == [False, False, True]
        assert counters(ledger) == (1001, 0, 2)
    finally:
        ledger.close()


def test_a_message_older_than_the_window_is_still_recorded(central_db_url: str) -> None:
    # seq 5 arrives after the ledger has forgotten numbers up to 900 (a worker that was down a long
    # time, or a gateway whose outbox was replaced and starts again at 1): it counts as a duplicate,
    # but its event and its latest value are kept.
    ledger = Ledger(central_db_url, seen_keep=KEEP)
    try:
        ledger.record([telemetry(s) for s in range(1, 1001) if s != 5], [], [])
        ledger.prune_seen()
        late = Sequenced("s1", "gw1", "cards", 5, 5000.0, event=("card_swipe", {"card": "04a1"}),
                         values={"co2_ppm": 4242})
        assert ledger.record([late, late], [], []) == [False, False]
        assert [(e["seq"], e["data"]) for e in ledger.events("gw1")] == [(5, {"card": "04a1"})]
        assert ledger.latest()[("gw1", "cards")]["co2_ppm"] == 4242
        # An older sample redelivered does not move `latest` back.
        ledger.record([telemetry(999, co2=1)], [], [])
        assert ledger.latest()[("gw1", "env")]["co2_ppm"] == 1000
    finally:
        ledger.close()


def test_a_file_from_before_pruning_gains_the_floor(tmp_path: Path) -> None:
    db = old_file(tmp_path / "c.db", """
        CREATE TABLE gateways (id TEXT PRIMARY KEY, school TEXT NOT NULL, room TEXT NOT NULL DEFAULT '',
            online INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT '{}', interval REAL NOT NULL DEFAULT 0,
            last_seen REAL, first_seq INTEGER, max_seq INTEGER,
            received INTEGER NOT NULL DEFAULT 0, duplicates INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE seen (gateway TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (gateway, seq)) WITHOUT ROWID;
        INSERT INTO gateways (id, school, first_seq, max_seq, received) VALUES ('gw1', 's1', 1, 300, 300);
        WITH RECURSIVE n(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM n WHERE seq < 300)
        INSERT INTO seen SELECT 'gw1', seq FROM n;
    """)
    ledger, again = Ledger(db, seen_keep=KEEP), Ledger(db, seen_keep=KEEP)  # the second finds the column there
    try:
        assert ledger.record([telemetry(300), telemetry(301)], [], []) == [False, True]
        assert ledger.prune_seen() == 301 - KEEP
        assert seen_rows(again) == list(range(302 - KEEP, 302))
        assert counters(again) == (301, 0, 1)
    finally:
        ledger.close()
        again.close()


def test_ingest_prunes_while_it_runs(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    ledger = Ledger(db, seen_keep=KEEP)
    ingest = Ingest(MqttUrl("127.0.0.1", 1883), SqlitePointStore(db), ledger, prune_seen_every_s=0.0)
    topic = contract.telemetry_topic("s1", "gw1", "env")
    ingest.inbox.put([Delivery(1, seq, 1, topic, contract.Telemetry(seq, time.time() - 600 + seq, {"co2_ppm": seq}).encode())
                      for seq in range(1, 501)])
    stop = threading.Event()
    writer = threading.Thread(target=ingest.run, args=(stop,))
    writer.start()
    try:
        wait_until(lambda: counters(ledger)[0] == 500 and len(seen_rows(ledger)) == KEEP, 30,
                   message="the batch was recorded and the seen numbers pruned")
        assert seen_rows(ledger) == list(range(501 - KEEP, 501))
    finally:
        stop.set()
        writer.join()
        ingest.store.close()
        ledger.close()


def swipe(seq: int, ts: float, card: str) -> Sequenced:
    return Sequenced("s1", "gw1", "cards", seq, ts, event=("card_swipe", {"card": card}))


def test_a_replaced_outbox_starting_again_at_one_keeps_its_events(central_db_url: str) -> None:
    ledger = Ledger(central_db_url, seen_keep=KEEP)
    try:
        ledger.record([swipe(s, 1000.0 + s, f"old{s}") for s in (1, 2, 3)], [], [])
        # New SD card: seq 1 and 2 again, later timestamps. Counted as duplicates, kept as events.
        ledger.record([swipe(1, 9001.0, "new1"), swipe(2, 9002.0, "new2"), swipe(2, 9002.0, "new2")], [], [])
        cards = sorted(e["data"]["card"] for e in ledger.events("gw1"))
        assert cards == ["new1", "new2", "old1", "old2", "old3"]  # the redelivered new2 once
    finally:
        ledger.close()


def test_an_events_table_keyed_by_gateway_and_seq_is_rekeyed_with_its_rows(tmp_path: Path) -> None:
    db = old_file(tmp_path / "c.db", """
        CREATE TABLE events (gateway TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,
            type TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (gateway, seq));
        CREATE INDEX events_ts ON events (ts);
        INSERT INTO events VALUES ('gw1', 'cards', 1, 1001.0, 'card_swipe', '{"card": "old1"}');
    """)
    ledger, again = Ledger(db), Ledger(db)
    try:
        ledger.record([swipe(1, 9001.0, "new1")], [], [])
        assert sorted(e["data"]["card"] for e in again.events("gw1")) == ["new1", "old1"]
        indexes = {r[0] for r in sql(ledger, "SELECT name FROM sqlite_master WHERE tbl_name = 'events'")}
        assert "events_ts" in indexes and "events_before_rekey" not in indexes
    finally:
        ledger.close()
        again.close()


def state(ts: float, instance: int | None) -> tuple[str, str, State]:
    outbox = {"pending": 0, "dropped": 0} if instance is None else {"pending": 0, "dropped": 0, "instance": instance}
    return ("s1", "gw1", State(online=True, ts=ts, outbox=outbox))


def test_a_new_outbox_instance_is_counted_afresh(central_db_url: str) -> None:
    ledger = Ledger(central_db_url)
    try:
        ledger.record([telemetry(s) for s in range(1, 101) if s != 50], [state(10.0, 111)], [])
        assert counters(ledger) == (99, 1, 0)
        # New SD card: its state (another instance) and its first numbers in one batch, then more.
        assert ledger.record([telemetry(s) for s in range(1, 11)], [state(20.0, 222)], []) == [True] * 10
        ledger.record([telemetry(s) for s in (12, 13)], [], [])
        assert counters(ledger) == (111, 1 + 1, 0)  # seq 50 of the old outbox, seq 11 of the new one
        ledger.record([telemetry(11), telemetry(12)], [state(30.0, 222)], [])  # late 11, 12 again; same instance
        assert counters(ledger) == (112, 1, 1)
        assert seen_rows(ledger) == list(range(1, 14))
        # A late state of the old outbox (older ts) changes nothing.
        ledger.record([], [state(15.0, 111)], [])
        assert counters(ledger) == (112, 1, 1)
    finally:
        ledger.close()


def test_states_without_an_instance_never_reset(central_db_url: str) -> None:
    ledger = Ledger(central_db_url)
    try:
        ledger.record([telemetry(s) for s in range(1, 21)], [state(10.0, None)], [])  # an agent from before
        ledger.record([telemetry(s) for s in range(21, 31)], [state(20.0, 333)], [])  # upgraded: same outbox file
        ledger.record([telemetry(5)], [state(30.0, None)], [])  # a Will: no outbox instance
        assert counters(ledger) == (30, 0, 1)
    finally:
        ledger.close()


def test_pruning_goes_a_slice_of_gateways_at_a_time(central_db_url: str) -> None:
    ledger = Ledger(central_db_url, seen_keep=10)
    try:
        for g in ("gw-a", "gw-b", "gw-c", "gw-d", "gw-e"):
            ledger.record([Sequenced("s1", g, "env", s, float(s), values={"co2_ppm": s}) for s in range(1, 31)], [], [])
        assert ledger.prune_seen_slice("", gateways=2) == (40, "gw-b")
        assert ledger.prune_seen_slice("gw-b", gateways=2) == (40, "gw-d")
        assert ledger.prune_seen_slice("gw-d", gateways=2) == (20, None)  # the last, short page ends the pass
        assert sql(ledger, "SELECT COUNT(*) FROM seen").fetchone()[0] == 5 * 10
        assert ledger.prune_seen() == 0
    finally:
        ledger.close()


def presence(ts: float, since: float, online: bool) -> tuple[str, str, State]:
    return ("s1", "gw1", State(online=online, ts=ts, since=since))


def test_the_will_of_the_current_connection_wins_a_stale_one_does_not(central_db_url: str) -> None:
    ledger = Ledger(central_db_url)

    def online() -> bool:
        return ledger.gateways("gw1")[0]["online"]
    try:
        ledger.record([], [presence(100.0, 50.0, True)], [])  # a heartbeat of the connection made at 50
        ledger.record([], [presence(50.0, 50.0, False)], [])  # its Will: fixed at connect, so older than 100
        assert not online()
        ledger.record([], [presence(200.0, 150.0, True)], [])  # the agent is back: a new connection
        ledger.record([], [presence(50.0, 50.0, False)], [])  # the old Will once more (a late copy)
        assert online()
        ledger.record([], [presence(90.0, 0.0, False)], [])  # an agent without `since`: by ts alone
        assert online()
    finally:
        ledger.close()


def test_a_heartbeat_recorded_after_its_connections_will_does_not_revive_the_gateway(central_db_url: str) -> None:
    """With several ingest workers the last heartbeat and the Will can be recorded in either order."""
    ledger = Ledger(central_db_url)

    def online() -> bool:
        return ledger.gateways("gw1")[0]["online"]
    try:
        ledger.record([], [presence(100.0, 50.0, True)], [])
        ledger.record([], [presence(50.0, 50.0, False)], [])  # the Will, taken by the faster worker
        ledger.record([], [presence(105.0, 50.0, True)], [])  # the dead connection's last heartbeat, later
        assert not online()
        ledger.record([], [presence(120.0, 50.0, False)], [])  # a clean stop says so itself (newer ts) ...
        ledger.record([], [presence(119.0, 50.0, True)], [])  # ... and a heartbeat sent before it comes after
        assert not online()
        ledger.record([], [presence(200.0, 150.0, True)], [])  # a new connection
        assert online()
        ledger.record([], [presence(300.0, 0.0, False)], [])  # agents without `since`: by ts alone
        ledger.record([], [presence(301.0, 0.0, True)], [])
        assert online()
    finally:
        ledger.close()


_examples = itertools.count()


@st.composite
def connections(draw: st.DrawFn) -> list[tuple[float, float, bool]]:
    """States of 1-4 successive connections (since 100, 200, ...): heartbeats, and maybe an end (the
    Will, ts = since, or a clean stop's own offline state, newer than its heartbeats); as (ts, since, online)."""
    states = []
    for i in range(1, draw(st.integers(1, 4)) + 1):
        since = 100.0 * i
        beats = draw(st.sets(st.integers(1, 98), min_size=1, max_size=3))  # the agent says "online" on connect
        states += [(since + b, since, True) for b in beats]
        end = draw(st.sampled_from([None, "will", "stop"]))
        if end is not None:
            states.append((since if end == "will" else since + 99.5, since, False))
    return states


@given(connections().flatmap(st.permutations))
def test_presence_is_the_newest_connections_whatever_order_the_states_are_recorded_in(
        tmp_path_factory: pytest.TempPathFactory, states: list[tuple[float, float, bool]]) -> None:
    """Several ingest workers record a gateway's states in any order; the outcome may not depend on it:
    offline exactly when the newest connection has ended."""
    gateway = f"gw{next(_examples)}"
    newest = max(since for _, since, _ in states)
    expected = not any(since == newest and not online for _, since, online in states)
    ledger = Ledger(_presence_db(tmp_path_factory))
    try:
        for ts, since, online in states:
            ledger.record([], [("s1", gateway, State(online=online, ts=ts, since=since))], [])
        assert ledger.gateways(gateway)[0]["online"] == expected, states
    finally:
        ledger.close()


def _presence_db(factory: pytest.TempPathFactory, _made: list[Path] = []) -> Path:  # noqa: B006 (one file for all)
    if not _made:
        _made.append(factory.mktemp("presence") / "c.db")
    return _made[0]


def test_ingest_workers_report_and_go_stale(tmp_path: Path) -> None:
    from central.ledger import WORKER_REPORT_S

    ledger = Ledger(str(tmp_path / "c.db"))
    ledger.record_worker("ingest-1", "host-a", 101, 1000.0, {"messages": 5, "stored": 4, "rejected": 1}, now=1010.0)
    ledger.record_worker("ingest-0", "host-a", 100, 1000.0, {"messages": 1, "stored": 1, "rejected": 0}, now=1010.0)
    ledger.record_worker("ingest-1", "host-b", 102, 1005.0, {"messages": 9, "stored": 9, "rejected": 0}, now=1012.0)
    assert ledger.workers(now=1012.0) == [
        {"name": "ingest-0", "host": "host-a", "pid": 100, "started": 1000.0, "updated": 1010.0, "running": True,
         "messages": 1, "stored": 1, "rejected": 0},
        {"name": "ingest-1", "host": "host-b", "pid": 102, "started": 1005.0, "updated": 1012.0, "running": True,
         "messages": 9, "stored": 9, "rejected": 0}]
    later = ledger.workers(now=1010.0 + 3 * WORKER_REPORT_S)
    assert [w["running"] for w in later] == [False, True]
    ledger.close()
