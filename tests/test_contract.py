"""The MQTT contract: topics and payloads round-trip; malformed input is a PayloadError."""

from __future__ import annotations

import json

import pytest

from campus import contract
from campus.contract import Command, CommandResult, Event, State, Telemetry
from campus.errors import PayloadError


def test_topics_and_parse_roundtrip() -> None:
    assert contract.telemetry_topic("s1", "gw1", "env") == "campus/v1/s1/gw1/telemetry/env"
    assert contract.cmd_result_topic("s1", "gw1", "proj") == "campus/v1/s1/gw1/cmd/proj/result"
    for topic, kind, device in [
        (contract.state_topic("s1", "gw1"), contract.KIND_STATE, None),
        (contract.telemetry_topic("s1", "gw1", "env"), contract.KIND_TELEMETRY, "env"),
        (contract.event_topic("s1", "gw1", "card"), contract.KIND_EVENT, "card"),
        (contract.cmd_topic("s1", "gw1", "proj"), contract.KIND_CMD, "proj"),
        (contract.cmd_result_topic("s1", "gw1", "proj"), contract.KIND_CMD_RESULT, "proj"),
    ]:
        parsed = contract.parse_topic(topic)
        assert (parsed.kind, parsed.school, parsed.gateway, parsed.device) == (kind, "s1", "gw1", device)


@pytest.mark.parametrize("topic", ["campus/v1/s1", "other/v1/s1/gw/state", "campus/v1/s1/gw/telemetry",
                                   "campus/v1/s1/gw/bogus/x", "campus/v1/s+/gw/state", "campus/v1/s1/#/state",
                                   "campus/v1/s1/gw/telemetry/a/b"])
def test_bad_topics(topic: str) -> None:
    with pytest.raises(PayloadError):
        contract.parse_topic(topic)


def test_ids_cannot_be_wildcards() -> None:
    for bad in ["a/b", "+", "#", "", "x" * 65, "-lead"]:
        with pytest.raises(PayloadError):
            contract.telemetry_topic("s", "g", bad)


def test_payload_roundtrips() -> None:
    t = Telemetry(seq=7, ts=1700000000.5, values={"co2_ppm": 812, "power": "on"})
    assert Telemetry.decode(t.encode()) == t
    e = Event(seq=8, ts=1.0, type="card_swipe", data={"card": "ab12"})
    assert Event.decode(e.encode()) == e
    s = State(online=True, ts=2.0, agent="0.1", devices={"env": {"profile": "p", "status": "ok"}}, interval=5)
    assert State.decode(s.encode()) == s
    c = Command(id="c1", action="power_on", params={}, deadline=3.0, by="t")
    assert Command.decode(c.encode()) == c
    r = CommandResult(id="c1", status="done", detail="", ts=4.0)
    assert CommandResult.decode(r.encode()) == r


@pytest.mark.parametrize("payload, field", [
    (b"not json", "not JSON"),
    (b"[1,2]", "JSON object"),
    (b'{"ts": 1, "values": {}}', "'seq' is missing"),
    (b'{"seq": 0, "ts": 1, "values": {}}', "'seq' must be >= 1"),
    (b'{"seq": true, "ts": 1, "values": {}}', "boolean"),
    (b'{"seq": 1, "ts": "x", "values": {}}', "'ts' must be a number"),
    (b'{"seq": 1, "ts": 1, "values": []}', "'values' must be an object"),
    (b'{"seq": 1, "ts": 1, "values": {"co2": [1]}}', "metric 'co2'"),
    (b'{"seq": 1, "ts": 1, "values": {"co2": NaN}}', "NaN"),
    (b'{"seq": 1, "ts": 1, "values": {"co2": 1e999}}', "finite"),
    (b'{"seq": 9223372036854775808, "ts": 1, "values": {}}', "64 bits"),
    (b'{"seq": 1, "ts": 1, "values": {"a/b": 1}}', "metric name"),
    (b"\xff\xfe", "not JSON"),
])
def test_malformed_telemetry_names_the_problem(payload: bytes, field: str) -> None:
    with pytest.raises(PayloadError, match=field):
        Telemetry.decode(payload)


def test_oversized_payload_rejected() -> None:
    big = json.dumps({"seq": 1, "ts": 1, "values": {"x": "y" * 100}, "pad": "z" * contract.MAX_PAYLOAD_BYTES})
    with pytest.raises(PayloadError, match="exceeds"):
        Telemetry.decode(big.encode())


def test_command_and_result_validation() -> None:
    with pytest.raises(PayloadError, match="action"):
        Command.decode(b'{"id": "1", "action": "Rm -rf", "deadline": 5}')
    with pytest.raises(PayloadError, match="deadline"):
        Command.decode(b'{"id": "1", "action": "power_on"}')
    with pytest.raises(PayloadError, match="status"):
        CommandResult.decode(b'{"id": "1", "status": "maybe", "ts": 1}')
    with pytest.raises(PayloadError, match="devices.env.status"):
        State.decode(b'{"online": true, "ts": 1, "devices": {"env": {"status": "on fire"}}}')


def test_a_result_id_that_names_no_command_is_refused_and_a_nul_in_its_detail_is_replaced() -> None:
    """Central stores both, and PostgreSQL text cannot hold a NUL: one in a result used to fail the whole
    ingest batch there, for ever (a database error is retried), while SQLite stored it."""
    for bad in ('"c\\u0000"', '""', f'"{"c" * 65}"'):
        with pytest.raises(PayloadError, match="'id' must be 1 to 64 characters, without NUL"):
            CommandResult.decode(f'{{"id": {bad}, "status": "done", "ts": 1}}')
    got = CommandResult.decode(b'{"id": "c1", "status": "failed", "detail": "lamp\\u0000 error", "ts": 1}')
    assert got.detail == "lamp\ufffd error"


@pytest.mark.parametrize("number, fits", [(2**63 - 1, True), (-2**63, True), (2**63, False), (-2**63 - 1, False)])
def test_integers_are_64_bit_signed_everywhere_in_a_payload(number: int, fits: bool) -> None:
    # A fuzz campaign's "valid" event carried 2**63 in its data: the strategy was off by one, not the contract.
    payload = json.dumps({"seq": 1, "ts": 1.0, "type": "alarm", "data": {"n": [number]}}).encode()
    if fits:
        assert Event.decode(payload).data == {"n": [number]}
    else:
        with pytest.raises(PayloadError, match="does not fit in 64 bits"):
            Event.decode(payload)


# ---------------------------------------------------------------- central's acknowledgement and presence


def test_ack_and_ingest_presence_topics_and_payloads() -> None:
    assert contract.ack_topic("s1", "gw1") == "campus/v1/s1/gw1/ack"
    parsed = contract.parse_topic(contract.ack_topic("s1", "gw1"))
    assert (parsed.kind, parsed.school, parsed.gateway) == (contract.KIND_ACK, "s1", "gw1")
    assert contract.ingest_state_topic("ingest-0") == "campus/v1/ingest/ingest-0"
    assert contract.parse_ingest_state_topic("campus/v1/ingest/ingest-0") == "ingest-0"
    for other in ("campus/v1/ingest", "campus/v1/ingest/a/b", "campus/v1/s1/gw1/state", "campus/v1/ingest/+"):
        assert contract.parse_ingest_state_topic(other) is None
    with pytest.raises(PayloadError, match="ingest worker name"):
        contract.ingest_state_topic("a/b")
    a = contract.Ack(instance=2**53, seq=41, ts=5.0)
    assert contract.Ack.decode(a.encode()) == a
    p = contract.IngestState(online=False, instance=7, ts=6.0)
    assert contract.IngestState.decode(p.encode()) == p
    for bad, what in ((b'{"instance": 0, "seq": 1, "ts": 1}', "instance"), (b'{"instance": 1, "seq": -1, "ts": 1}',
                      "'seq' must be >= 0"), (b'{"instance": 1, "ts": 1}', "'seq' is missing"),
                      (b'{"instance": 2, "seq": true, "ts": 1}', "boolean")):
        with pytest.raises(PayloadError, match=what):
            contract.Ack.decode(bad)
    with pytest.raises(PayloadError, match="'online' is missing"):
        contract.IngestState.decode(b'{"instance": 1, "ts": 1}')


def _matches(filter_: str, topic: str) -> bool:
    """MQTT topic-filter matching (`+` one level, `#` the rest), as the broker does it."""
    f, t = filter_.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


@pytest.mark.parametrize("worker", ["state", "telemetry", "event", "cmd", "config", "ack", "ingest-0"])
def test_no_ingest_presence_is_taken_for_a_gateway_message(worker: str) -> None:
    # Whatever a worker is called (even "state"), its presence matches no filter ingest subscribes to and
    # no gateway topic; and no gateway topic of any school (even "ingest") matches the agents' presence filter.
    topic = contract.ingest_state_topic(worker)
    assert not any(_matches(f, topic) for f in contract.ingest_filters())
    with pytest.raises(PayloadError):
        contract.parse_topic(topic)
    for gateway_topic in (contract.state_topic("ingest", worker), contract.ack_topic("ingest", worker),
                          contract.config_topic("ingest", worker)):
        assert not _matches(contract.ingest_states_filter(), gateway_topic)


def test_a_command_result_carries_its_seq_and_one_from_before_none() -> None:
    r = CommandResult(id="c1", status="done", detail="", ts=4.0, seq=12)
    assert CommandResult.decode(r.encode()) == r
    old = CommandResult(id="c1", status="done", detail="", ts=4.0)
    assert b"seq" not in old.encode()  # a central from before reads it as it always did
    assert CommandResult.decode(old.encode()).seq is None
    with pytest.raises(PayloadError, match="'seq' must be >= 1"):
        CommandResult.decode(b'{"id": "c1", "status": "done", "ts": 1, "seq": 0}')


@pytest.mark.parametrize("outbox", [{"instance": 2**53 + 1}, {"oldest": -1}, {"pending": -5},
                                    {"last_seq": -(2**63)}])
def test_outbox_figures_out_of_range_are_refused_by_name(outbox: dict) -> None:
    """A figure no database column holds (or no count can be) would fail every write of its batch on
    PostgreSQL, and ingest retries a failed batch: refused at decode, naming the field."""
    payload = json.dumps({"online": True, "ts": 1.7e9, "outbox": outbox}).encode()
    with pytest.raises(PayloadError, match=f"outbox.{next(iter(outbox))} .* out of range"):
        State.decode(payload)


PERSON = "5f" * 32  # what qr_pseudonym makes: 64 lower-case hex digits
RAW_CODE = "STU-101-0001"


def test_an_attendance_event_carries_a_pseudonym() -> None:
    e = Event(seq=9, ts=1.0, type=contract.ATTENDANCE_EVENT, data=contract.attendance_data(PERSON, "cam1"))
    assert Event.decode(e.encode()) == e and e.data == {"person": PERSON, "camera": "cam1"}


@pytest.mark.parametrize("data, field", [
    ({"code": RAW_CODE, "camera": "cam1"}, "field 'data.code' is not allowed"),  # an older agent's raw code
    ({"person": PERSON, "camera": "cam1", "code": RAW_CODE}, "field 'data.code' is not allowed"),
    ({"person": RAW_CODE, "camera": "cam1"}, "field 'person' must be a pseudonym"),
    ({"person": PERSON.upper(), "camera": "cam1"}, "field 'person' must be a pseudonym"),
    ({"person": 5, "camera": "cam1"}, "field 'person' must be a string"),
    ({"camera": "cam1"}, "field 'person' is missing"),
    ({"person": PERSON}, "field 'camera' is missing"),
    ({"person": PERSON, "camera": "a/b"}, "camera"),
])
def test_an_attendance_event_with_a_raw_code_or_no_pseudonym_is_refused_naming_the_field(
        data: dict, field: str) -> None:
    payload = json.dumps({"seq": 1, "ts": 1.0, "type": "attendance", "data": data}).encode()
    with pytest.raises(PayloadError, match=field) as err:
        Event.decode(payload)
    assert RAW_CODE not in str(err.value)  # a refusal is logged: it never repeats the code
