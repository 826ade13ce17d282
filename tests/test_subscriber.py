"""The ingest subscriber (central/subscriber.py): MQTT framing by hand, then a real Mosquitto.

Packets in the unit tests are built here from the MQTT specification (not
with the module's own encoder), so a framing mistake cannot cancel itself
out. The rest runs against a real broker and checks, message by message,
what arrives, what is acknowledged and what is delivered again.
"""

from __future__ import annotations

import contextlib
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campus.errors import CampusError
from campus.net import free_port
from campus.urls import MqttUrl, parse_mqtt_url
from central.subscriber import Delivery, ProtocolError, Subscriber, parse_publishes
from tests.servers import Mosquitto, wait_until
from tests.tlsbrokers import write_passwd

TOPIC = "campus/v1/s1/gw1/telemetry/env"


def _remaining_length(n: int) -> bytes:
    out = b""
    while True:
        n, digit = divmod(n, 128)
        out += bytes([digit | (0x80 if n else 0)])
        if not n:
            return out


def publish_packet(topic: str, payload: bytes, qos: int, packet_id: int, v5: bool, props: bytes = b"") -> bytes:
    """A PUBLISH as MQTT 3.1.1 section 3.3 / MQTT 5 section 3.3 lay it out."""
    name = topic.encode()
    body = struct.pack("!H", len(name)) + name + (struct.pack("!H", packet_id) if qos else b"")
    if v5:
        body += _remaining_length(len(props)) + props
    body += payload
    return bytes([0x30 | (qos << 1)]) + _remaining_length(len(body)) + body


def _parse_all(chunks: list[bytes], v5: bool) -> tuple[list[tuple[int, int, str, bytes]], list[int]]:
    buf, got, control = bytearray(), [], []
    for chunk in chunks:
        buf += chunk
        deliveries, used = parse_publishes(buf, 7, v5, lambda ptype, flags, body: control.append(ptype))
        del buf[:used]
        got += [(d.packet_id, d.qos, d.topic, d.payload) for d in deliveries]
    assert not buf, "bytes left over after whole packets"
    return got, control


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
def test_publishes_parse_the_same_however_the_stream_is_cut(v5: bool) -> None:
    # User property + payload format indicator: properties the parser must step over.
    props = b"\x26" + struct.pack("!H", 1) + b"k" + struct.pack("!H", 2) + b"vv" + b"\x01\x01"
    big = bytes(range(256)) * 80  # a remaining length of three bytes
    expected = [(1, 1, TOPIC, b'{"seq":1}'), (0, 0, "campus/v1/s1/gw1/state", b""), (65535, 1, TOPIC, big),
                (2, 1, "campus/v1/s/g/event/d", "中文".encode())]
    stream = b"".join(publish_packet(t, p, q, i, v5, props if v5 else b"") for i, q, t, p in expected)
    stream += b"\xd0\x00"  # a PINGRESP among them goes to the control handler
    assert _parse_all([stream], v5) == (expected, [13])
    for cut in range(1, len(stream)):
        assert _parse_all([stream[:cut], stream[cut:]], v5) == (expected, [13]), f"cut at byte {cut}"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_garbage_from_the_broker_is_a_protocol_error_and_nothing_else(data: bytes, v5: bool) -> None:
    try:
        parse_publishes(bytearray(data), 1, v5, lambda ptype, flags, body: None)
    except ProtocolError:
        pass


@pytest.mark.parametrize("packet", [
    b"\x30\x05\x00\x09abc",  # topic length past the end of the packet
    b"\x32\x04\x00\x02ab",  # QoS 1 without a packet id
    b"\x34\x05\x00\x01a\x00\x01",  # QoS 2: we never subscribe with it
    b"\x36\x02\x00\x00",  # QoS 3 does not exist
    b"\x30\xff\xff\xff\xff\x01",  # remaining length of five bytes
])
def test_malformed_publishes_are_named(packet: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_publishes(bytearray(packet), 1, False, lambda *a: None)


# ------------------------------------------------------------------ against a real Mosquitto


class Received:
    """What a Subscriber handed on, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: list[Delivery] = []

    def __call__(self, chunk: list[Delivery]) -> None:
        with self.lock:
            self.deliveries.extend(chunk)

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [d.payload for d in self.deliveries]

    def until(self, n: int, timeout: float = 20) -> list[Delivery]:
        wait_until(lambda: len(self.payloads()) >= n, timeout, message=f"{n} deliveries")
        with self.lock:
            return list(self.deliveries)


def publish(url: str, messages: list[tuple[str, bytes]]) -> None:
    """Publish QoS 1 with paho (another MQTT implementation) and wait for every PUBACK."""
    mq = parse_mqtt_url(url)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect(mq.host, mq.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(20)
            assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


@contextlib.contextmanager
def subscribed(url: str, received: Received, protocol: str = "5", client_id: str = "ingest-test",
               **kwargs: object) -> Iterator[Subscriber]:
    """A started Subscriber (same client id, so the same persistent session), closed on exit."""
    mq = parse_mqtt_url(url + ("?protocol=3.1.1" if protocol == "3.1.1" else ""))
    sub = Subscriber(mq, client_id, ["campus/v1/+/+/telemetry/+", "campus/v1/+/+/marker"], received, **kwargs)
    sub.start()
    try:
        wait_until(sub.ready.is_set, 10, message="subscribed")
        yield sub
    finally:
        sub.close()  # the acks go out before the DISCONNECT


def numbered(n: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [(TOPIC, f"m{i}".encode()) for i in range(start, start + n)]


def with_marker(url: str, received: Received, name: str) -> list[bytes]:
    """Publish a marker and wait for it: everything queued for the session arrives before it."""
    publish(url, [("campus/v1/s1/gw1/marker", name.encode())])
    wait_until(lambda: name.encode() in received.payloads(), 20, message=f"marker {name}")
    return [p for p in received.payloads() if p != name.encode()]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_everything_arrives_once_and_acked_messages_never_come_back(mosquitto: Mosquitto, protocol: str) -> None:
    received = Received()
    with subscribed(mosquitto.url, received, protocol) as sub:
        publish(mosquitto.url, numbered(3000))
        acked = 0

        def ack_as_they_come() -> bool:  # the broker sends at most Receive Maximum (1000) unacked
            nonlocal acked
            with received.lock:
                fresh = received.deliveries[acked:]
            acked += sub.ack(fresh)
            return acked >= 3000
        wait_until(ack_as_they_come, 30, message="3000 deliveries acked")
        got = received.until(3000)
        assert [d.payload for d in got] == [p for _, p in numbered(3000)]  # in order, none twice
        assert all(d.qos == 1 and d.topic == TOPIC for d in got)
    again = Received()
    with subscribed(mosquitto.url, again, protocol) as sub:
        assert sub.session_present
        assert with_marker(mosquitto.url, again, "after") == []


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_unacknowledged_messages_are_delivered_again_exactly(mosquitto: Mosquitto, protocol: str) -> None:
    received = Received()
    with subscribed(mosquitto.url, received, protocol) as sub:
        publish(mosquitto.url, numbered(100))
        got = received.until(100)
        sub.ack(got[:60])
    again = Received()
    with subscribed(mosquitto.url, again, protocol) as sub:
        assert sorted(with_marker(mosquitto.url, again, "after")) == sorted(p for _, p in numbered(40, 60))


def test_acks_of_an_earlier_connection_are_not_sent_on_the_next(mosquitto: Mosquitto) -> None:
    received = Received()
    with subscribed(mosquitto.url, received) as sub:
        publish(mosquitto.url, numbered(20))
        first = received.until(20)
        sock = sub._sock
        assert sock is not None
        sock.shutdown(2)  # the connection breaks under the subscriber
        wait_until(lambda: sub.connection == 2 and sub.ready.is_set(), 20, message="reconnected")
        assert sub.ack(first) == 0  # their packet ids belong to the broken connection
        redelivered = received.until(40)[20:]
        assert sorted(d.payload for d in redelivered) == sorted(p for _, p in numbered(20))
        assert sub.ack(redelivered) == 20
    again = Received()
    with subscribed(mosquitto.url, again) as sub:
        assert with_marker(mosquitto.url, again, "after") == []


def test_broker_killed_and_restarted_loses_nothing(mosquitto: Mosquitto) -> None:
    received = Received()
    with subscribed(mosquitto.url, received, reconnect_delay=(0.1, 0.5)) as sub:
        publish(mosquitto.url, numbered(50))
        sub.ack(received.until(50))
        wait_until(lambda: not sub._acks, 10, message="acks sent")
        mosquitto.kill()
        wait_until(lambda: not sub.ready.is_set(), 20, message="subscriber noticed the broker is gone")
        mosquitto.start()
        wait_until(lambda: sub.ready.is_set() and sub.connection >= 2, 30, message="reconnected")
        publish(mosquitto.url, numbered(50, 50))
        everything = {p for _, p in numbered(100)}
        wait_until(lambda: set(received.payloads()) >= everything, 20, message="all 100 messages")
        got = received.payloads()
        assert set(got) == everything
        # The first 50 were acknowledged before the kill: at most redelivered (if the broker
        # had not saved the acks), never lost. The next 50 arrive each exactly once, in order.
        assert [p for p in got if p not in {p for _, p in numbered(50)}] == [p for _, p in numbered(50, 50)]


def test_idle_connection_is_kept_alive_with_pings(mosquitto: Mosquitto) -> None:
    received = Received()
    with subscribed(mosquitto.url, received, keepalive=1) as sub:
        heard = sub._last_heard
        # Nothing is published: only PINGRESPs can be heard, and the broker would
        # drop a silent client after 1.5 keep-alive periods.
        wait_until(lambda: sub._last_heard > heard + 3, 15, message="pings answered for 3 s")
        assert sub.connection == 1 and sub.ready.is_set()


def test_a_refused_login_is_one_clear_error(tmp_path: Path) -> None:
    passwd = write_passwd(tmp_path / "passwd", {"ingest": "right"})
    broker = Mosquitto(tmp_path / "mq", f"allow_anonymous false\npassword_file {passwd}\n")
    broker.start()
    try:
        url = MqttUrl("127.0.0.1", broker.port, username="ingest", password="wrong")
        with pytest.raises(CampusError, match="refused the connection: (bad user name or password|not authorized)"):
            Subscriber(url, "x", ["a/#"], Received()).start()
        ok = Subscriber(MqttUrl("127.0.0.1", broker.port, username="ingest", password="right"), "x", ["a/#"],
                        Received())
        ok.start()
        wait_until(ok.ready.is_set, 10, message="subscribed with the right password")
        ok.close()
    finally:
        broker.stop()


def test_unreachable_broker_is_one_clear_error() -> None:
    with pytest.raises(CampusError, match=r"cannot reach MQTT broker mqtt://127\.0\.0\.1:\d+"):
        Subscriber(MqttUrl("127.0.0.1", free_port()), "x", ["a/#"], Received()).start()


# ---------------------------------------------------------------- its own messages: presence and acknowledgements


class Watcher:
    """A paho client (another MQTT implementation) recording what arrives on some filters."""

    def __init__(self, url: str, *filters: str) -> None:
        mq = parse_mqtt_url(url)
        self.lock = threading.Lock()
        self.got: list[tuple[str, bytes, bool]] = []
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.c.on_message = lambda c, u, m: self._add(m.topic, m.payload, bool(m.retain))
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect(mq.host, mq.port)
        self.c.loop_start()
        self.c.subscribe([(f, 1) for f in filters])
        assert subscribed.wait(10)

    def _add(self, topic: str, payload: bytes, retain: bool) -> None:
        with self.lock:
            self.got.append((topic, payload, retain))

    def payloads(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.got if t == topic]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_its_own_publishes_are_acknowledged_and_its_will_says_it_is_gone(mosquitto: Mosquitto, protocol: str) -> None:
    presence = "campus/v1/ingest/test"
    sub_ref: list[Subscriber] = []

    def online(session_present: bool) -> None:
        sub_ref[0].publish(presence, b"online")

    watcher = Watcher(mosquitto.url, "campus/v1/ingest/+", "campus/v1/s1/+/ack")
    mq = parse_mqtt_url(mosquitto.url + ("?protocol=3.1.1" if protocol == "3.1.1" else ""))
    sub = Subscriber(mq, "ingest-own", ["campus/v1/+/+/telemetry/+"], Received(), keepalive=2,
                     will=lambda: (presence, b"offline"), on_subscribed=online, reconnect_delay=(0.1, 0.3))
    sub_ref.append(sub)
    sub.start()
    try:
        wait_until(lambda: watcher.payloads(presence) == [b"online"], 10, message="online, after the SUBACK")
        # More than the broker lets in flight at once (max_inflight_messages 100 in tests/servers.py):
        # the rest waits for PUBACKs; each topic's newest payload arrives.
        for i in range(300):
            sub.publish(f"campus/v1/s1/gw{i}/ack", f"{i}".encode())
        wait_until(lambda: sub.published >= 301, 20, message="300 acks PUBACKed")
        wait_until(lambda: len([t for t, _, _ in watcher.got if t.endswith("/ack")]) >= 300, 10,
                   message="300 acks at the watcher")
        for i in (0, 150, 299):
            assert watcher.payloads(f"campus/v1/s1/gw{i}/ack") == [f"{i}".encode()]
        # A newer message to a topic replaces one not sent yet, so a burst keeps only the newest; it is retained.
        for n in range(50):
            sub.publish("campus/v1/s1/gwx/ack", f"x{n}".encode())
        wait_until(lambda: watcher.payloads("campus/v1/s1/gwx/ack")[-1:] == [b"x49"], 10, message="the newest")
        late = Watcher(mosquitto.url, "campus/v1/s1/gwx/ack")
        wait_until(lambda: late.payloads("campus/v1/s1/gwx/ack") == [b"x49"], 10, message="retained newest")
        late.close()
        # The connection breaks under it: the broker publishes the Will; reconnected, it says online again.
        assert sub._sock is not None
        sub._sock.shutdown(2)
        wait_until(lambda: watcher.payloads(presence)[1:2] == [b"offline"], 10, message="the Will")
        wait_until(lambda: watcher.payloads(presence)[2:] == [b"online"], 10, message="online again")
        assert sub.refused == []
    finally:
        sub.close()
        watcher.close()


def test_a_publish_the_broker_refuses_is_named_not_retried(tmp_path: Path) -> None:
    passwd = write_passwd(tmp_path / "passwd", {"ingest": "pw"})
    (tmp_path / "acl").write_text("user ingest\ntopic read campus/#\ntopic write campus/v1/ingest/+\n")
    broker = Mosquitto(tmp_path / "mq", f"allow_anonymous false\npassword_file {passwd}\nacl_file {tmp_path / 'acl'}\n")
    broker.start()
    sub = Subscriber(MqttUrl("127.0.0.1", broker.port, username="ingest", password="pw"), "ingest-acl",
                     ["campus/v1/+/+/telemetry/+"], Received())
    try:
        sub.start()
        wait_until(sub.ready.is_set, 10, message="subscribed")
        sub.publish("campus/v1/s1/gw1/ack", b"not allowed")
        sub.publish("campus/v1/ingest/x", b"allowed")
        wait_until(lambda: sub.refused and sub.published, 10, message="both answered")
        assert sub.refused == [("campus/v1/s1/gw1/ack", "not authorized")]
        assert sub.published == 1 and not sub._inflight
    finally:
        sub.close()
        broker.stop()
