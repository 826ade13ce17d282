"""Fuzzing central ingest: `Ingest.process(batch)` on batches that mix valid messages and garbage.

Runs against a real `SqlitePointStore` and `Ledger` (one SQLite file, as
`campus ingest` uses them) in a temporary directory; the paho client is
created but never connected. Property: `process` raises nothing but
`StoreError`; every message that decodes is recorded (its points stored, its
seq in the ledger, its event row, its command result); every message on an
ingest topic that does not decode is counted in `stats.rejected`. Known bugs
and `only(...)`: see `tests/test_fuzz.py`.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from campus import contract
from campus.contract import CommandResult, Event, State, Telemetry
from campus.errors import PayloadError, StoreError
from campus.urls import MqttUrl
from central.ingest import Ingest
from central.ledger import Ledger
from central.store.sqlite import SqlitePointStore
from central.subscriber import Delivery
from tests.stores import sql
from tests.test_fuzz import (
    CONTRACT_BUGS,
    KnownBug,
    Raw,
    fuzz_settings,
    hostile,
    json_bytes,
    mutated,
    only,
    segments,
    valid_dicts,
)

I_INT = [KnownBug("I1 integer out of SQLite/float range", OverflowError, where, "too large to convert")
         for where in ("central/ledger.py:record", "central/store/sqlite.py:write")]
I_SURROGATE = [KnownBug("I2 lone surrogate in a stored string", UnicodeEncodeError, where, "surrogates not allowed")
               for where in ("central/ledger.py:record", "central/store/sqlite.py:write")]
INGEST_BUGS = (*I_INT, *I_SURROGATE, *CONTRACT_BUGS)

GATEWAYS = ("gw1", "gw2")
DEVICES = ("env", "card", "proj")
COMMANDS = ("c1", "c2")
CLASSES: dict[str, type] = {contract.KIND_TELEMETRY: Telemetry, contract.KIND_EVENT: Event,
                            contract.KIND_STATE: State, contract.KIND_CMD_RESULT: CommandResult}


def topic_for(kind: str, gateway: str, device: str) -> str:
    if kind == contract.KIND_STATE:
        return contract.state_topic("s1", gateway)
    if kind == contract.KIND_CMD_RESULT:
        return contract.cmd_result_topic("s1", gateway, device)
    return {contract.KIND_TELEMETRY: contract.telemetry_topic, contract.KIND_EVENT: contract.event_topic}[kind](
        "s1", gateway, device)


@st.composite
def valid_message(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(CLASSES)))
    fields = draw(valid_dicts[CLASSES[kind]])
    if kind == contract.KIND_CMD_RESULT:
        fields["id"] = draw(st.sampled_from([*COMMANDS, "unknown"]))
    return topic_for(kind, draw(st.sampled_from(GATEWAYS)), draw(st.sampled_from(DEVICES))), json_bytes(fields)


@st.composite
def garbage_message(draw: st.DrawFn) -> tuple[str, bytes]:
    topic, payload = draw(valid_message())
    choice = draw(st.sampled_from(["payload", "json", "mutated", "edge", "topic", "other-kind"]))
    if choice == "edge":  # a valid payload with one field at an edge of what the store can hold
        kind = contract.parse_topic(topic).kind
        fields = draw(valid_dicts[CLASSES[kind]])
        key = draw(st.sampled_from(sorted(fields)))
        edge = draw(edge_values)
        if isinstance(fields[key], dict):
            fields[key] = {**fields[key], draw(segments): edge}
        else:
            fields[key] = edge
        return topic, json_bytes(fields)
    if choice == "payload":
        return topic, draw(st.binary(max_size=60))
    if choice == "json":
        return topic, json_bytes(draw(hostile))
    if choice == "mutated":
        kind = contract.parse_topic(topic).kind
        return topic, json_bytes(draw(mutated(draw(valid_dicts[CLASSES[kind]]))), draw(st.booleans()))
    if choice == "topic":
        return draw(st.text(max_size=40) | st.sampled_from([
            "campus/v1/s1/gw1/telemetry", "campus/v1/s1/gw1/bogus/env", "campus/v1/s 1/gw1/state",
            "campus/v1/s1/gw1/telemetry/env/x", "campus/v2/s1/gw1/state", "campus/v1/s1/+/state"])), payload
    return draw(st.sampled_from([contract.cmd_topic("s1", "gw1", "proj"), contract.config_topic("s1", "gw1")])), payload


edge_values = st.sampled_from([Raw("9223372036854775807"), Raw("9223372036854775808"), Raw("-9223372036854775809"),
                               Raw("1" + "0" * 320), Raw("1e308"), Raw("-1e308"), Raw("5e-324"), "\ud800", "a\udfffb",
                               "\x00", "x" * 256, "\u2028", 2**53 + 1])


@dataclass
class Expected:
    """What ingest must have done with one message."""

    kind: str          # a contract kind, or "" for messages on a topic ingest does not handle
    topic: contract.Topic | None
    obj: Any           # the decoded payload, None if rejected


def classify(topic: str, payload: bytes) -> Expected:
    try:
        parsed = contract.parse_topic(topic)
    except PayloadError:
        return Expected("rejected", None, None)
    if parsed.kind not in CLASSES:
        return Expected("", parsed, None)
    try:
        obj = CLASSES[parsed.kind].decode(payload)
        if parsed.kind in (contract.KIND_TELEMETRY, contract.KIND_EVENT, contract.KIND_STATE):
            contract.clock_ahead(obj.ts, time.time(), parsed.kind)  # a ts no clock could mean: refused
        return Expected(parsed.kind, parsed, obj)
    except PayloadError:
        return Expected("rejected", parsed, None)


def check_recorded(ledger: Ledger, store: SqlitePointStore, batch: list[Delivery], ingest: Ingest) -> None:
    expected = [classify(m.topic, m.payload) for m in batch]
    stats = ingest.stats
    assert stats.messages == len(batch)
    assert stats.rejected == sum(e.kind == "rejected" for e in expected)
    for kind in CLASSES:
        assert stats.kinds.get(kind, 0) == sum(e.kind == kind for e in expected)
    sequenced = [e for e in expected if e.kind in (contract.KIND_TELEMETRY, contract.KIND_EVENT)]
    assert stats.stored + stats.duplicates == len(sequenced)
    first_event: set[tuple[str, int, float]] = set()
    last_value: dict[tuple[str, str, str, float], Any] = {}
    for e in sequenced:
        assert e.topic is not None
        gw, dev, obj = e.topic.gateway, e.topic.device or "", e.obj
        assert sql(ledger, "SELECT 1 FROM seen WHERE gateway=? AND seq=?", (gw, obj.seq)).fetchone()
        if isinstance(obj, Telemetry):
            for name, value in obj.values.items():
                last_value[(gw, dev, name, obj.ts)] = value
        elif (gw, obj.seq, obj.ts) not in first_event:  # an event is kept once per (gateway, seq, ts)
            row = sql(ledger, "SELECT device, type FROM events WHERE gateway=? AND seq=? AND ts=?",
                                    (gw, obj.seq, obj.ts)).fetchone()
            assert row == (dev, obj.type)
            first_event.add((gw, obj.seq, obj.ts))
    for (gw, dev, name, ts), value in last_value.items():
        points = store.query(gw, dev, name, ts, ts)
        assert points == [(ts, value if isinstance(value, str) else float(value))]
    states = {e.topic.gateway for e in expected if e.kind == contract.KIND_STATE and e.topic}
    assert states <= {g["id"] for g in ledger.gateways()}
    for cid in COMMANDS:
        results = [e.obj for e in expected if e.kind == contract.KIND_CMD_RESULT and e.obj.id == cid]
        command = ledger.command(cid)
        assert command is not None
        if results:
            assert (command["status"], command["detail"]) == (results[0].status, results[0].detail)
        else:
            assert command["status"] == "pending"


_run = itertools.count()


def hits_contract_bug(topic: str, payload: bytes) -> bool:
    """Would decoding crash on a known contract bug (tests/test_fuzz.py)? Such garbage would abort the batch."""
    with only((), CONTRACT_BUGS) as outcome:
        classify(topic, payload)
    return outcome.known is not None


@fuzz_settings(50)
@given(st.lists(valid_message(), max_size=8), st.lists(garbage_message(), max_size=8), st.randoms())
def test_ingest_process_records_valid_and_counts_garbage(tmp_path_factory: pytest.TempPathFactory,
                                                         valid: list[tuple[str, bytes]],
                                                         garbage: list[tuple[str, bytes]], rnd: Any) -> None:
    messages = valid + [m for m in garbage if not hits_contract_bug(*m)]
    rnd.shuffle(messages)
    seqs = itertools.count(1)
    batch = []
    for mid, (topic, payload) in enumerate(messages, 1):
        if (topic, payload) in valid and contract.parse_topic(topic).kind in ("telemetry", "event"):
            kind = contract.parse_topic(topic).kind
            obj = CLASSES[kind].decode(payload)
            obj.seq = next(seqs)  # unique seq per batch, so that each valid message is new
            payload = obj.encode()
        batch.append(Delivery(1, mid, 1, topic, payload))
    db = Path(tmp_path_factory.mktemp(f"ingest{next(_run)}")) / "central.db"
    store, ledger = SqlitePointStore(db), Ledger(db)
    try:
        for cid in COMMANDS:
            ledger.add_command(cid, "gw1", "proj", "power_on", {}, "fuzz", 4e9)
        ingest = Ingest(MqttUrl("127.0.0.1", 1883), store, ledger)
        with only(StoreError, INGEST_BUGS) as outcome:
            ingest.process(batch)
        event("batch: " + ("ok" if outcome.ok else "known bug" if outcome.known else "StoreError"))
        event(f"garbage messages rejected: {min(ingest.stats.rejected, 3)}{'+' * (ingest.stats.rejected >= 3)}")
        if outcome.ok:
            check_recorded(ledger, store, batch, ingest)
    finally:
        store.close()
        ledger.close()


# ------------------------------------------------------------------ regressions for the bugs found


@pytest.fixture
def ingest(tmp_path: Path) -> Any:
    db = tmp_path / "central.db"
    store, ledger = SqlitePointStore(db), Ledger(db)
    yield Ingest(MqttUrl("127.0.0.1", 1883), store, ledger)
    store.close()
    ledger.close()


def _one(topic: str, payload: bytes) -> list[Delivery]:
    return [Delivery(1, 1, 1, topic, payload)]


@pytest.mark.parametrize("payload", [
    b'{"seq":9223372036854775808,"ts":1,"values":{"co2":1}}',
    b'{"seq":1,"ts":1,"values":{"co2":1' + b"0" * 320 + b"}}",
], ids=["seq-2**63", "value-1e320"])
def test_bug_i1_out_of_range_integers_crash_process(ingest: Ingest, payload: bytes) -> None:
    ingest.process(_one(contract.telemetry_topic("s1", "gw1", "env"), payload))  # must store or reject, not crash
    assert ingest.stats.rejected + ingest.stats.stored == 1


@pytest.mark.parametrize("topic, payload", [
    (contract.telemetry_topic("s1", "gw1", "env"), b'{"seq":1,"ts":1,"values":{"power":"\\ud800"}}'),
    (contract.state_topic("s1", "gw1"), b'{"online":true,"ts":1,"room":"\\udfff"}'),
    (contract.cmd_result_topic("s1", "gw1", "proj"), b'{"id":"c1","status":"done","ts":1,"detail":"\\ud800"}'),
], ids=["telemetry-string", "state-room", "result-detail"])
def test_bug_i2_lone_surrogates_crash_process(ingest: Ingest, topic: str, payload: bytes) -> None:
    ingest.process(_one(topic, payload))
    assert ingest.stats.messages == 1
