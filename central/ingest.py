"""Central ingest: MQTT in, points and ledger out, ack only after the store has it.

paho-mqtt's network thread hands every message to a queue; the writer
thread takes batches, decodes them (garbage is counted, logged and acked so
it is not redelivered forever), writes the points (idempotent), records the
ledger (dedup by gateway + seq) and only then sends the PUBACKs. If the
store fails, the batch is retried with backoff and nothing is acked, so the
broker keeps the messages for our persistent session; a restart of ingest
loses nothing.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from campus import contract
from campus.contract import CommandResult, Event, State, Telemetry
from campus.errors import CampusError, PayloadError, StoreError
from campus.mqtt import explain_connect_error, paho_client
from campus.urls import MqttUrl
from central.ledger import Ledger, Sequenced
from central.store import Point, PointStore

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 24 * 3600
RECEIVE_MAXIMUM = 1000  # unacked messages the broker may send us (MQTT 5 flow control)


@dataclass
class IngestStats:
    messages: int = 0
    stored: int = 0
    points: int = 0
    duplicates: int = 0
    rejected: int = 0
    store_errors: int = 0
    last_error: str = ""
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class _Incoming:
    mid: int
    qos: int
    topic: str
    payload: bytes


class Ingest:
    def __init__(self, mqtt: MqttUrl, store: PointStore, ledger: Ledger, *, name: str = "ingest",
                 share_group: str | None = None, batch_size: int = 500) -> None:
        self.mqtt = mqtt
        self.store = store
        self.ledger = ledger
        self.name = name
        self.share_group = share_group
        self.batch_size = batch_size
        self.stats = IngestStats()
        self.inbox: queue.Queue[_Incoming] = queue.Queue()
        self.kinds: dict[tuple[str, str], str] = {}
        self.rooms: dict[str, str] = {}
        self._maps_loaded = 0.0
        self._load_maps()
        self.connected = threading.Event()
        self.client = paho_client(mqtt, f"campus-{name}", manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(0.2, 5)
        self._bad_logged = 0.0

    def _load_maps(self) -> None:
        """Device kinds and rooms as the ledger knows them (from any worker's `state`)."""
        self.kinds.update({(d["gateway"], d["id"]): d["kind"] for d in self.ledger.gateway_devices() if d["kind"]})
        self.rooms.update({g["id"]: g["room"] for g in self.ledger.gateways() if g["room"]})
        self._maps_loaded = time.monotonic()

    def _kind_and_room(self, gateway: str, device: str) -> tuple[str, str]:
        # With shared subscriptions another worker may have taken this gateway's
        # `state`: on a miss, look in the ledger (at most once a second).
        if (gateway, device) not in self.kinds and time.monotonic() - self._maps_loaded > 1.0:
            self._load_maps()
        return self.kinds.get((gateway, device), "device"), self.rooms.get(gateway, "")

    # ------------------------------------------------------------ MQTT side

    def connect(self) -> None:
        props = None
        if self.mqtt.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            props.ReceiveMaximum = RECEIVE_MAXIMUM
        try:
            if self.mqtt.protocol == "5":
                self.client.connect(self.mqtt.host, self.mqtt.port, keepalive=15, clean_start=False, properties=props)
            else:
                self.client.connect(self.mqtt.host, self.mqtt.port, keepalive=15)
        except ssl.SSLError as exc:  # reached it, but its certificate is wrong: say which way
            raise CampusError(f"MQTT broker {self.mqtt}: {explain_connect_error(exc)}") from None
        except OSError as exc:
            raise CampusError(f"cannot reach MQTT broker {self.mqtt}: {exc.strerror or exc}") from None
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("broker %s refused ingest: %s", self.mqtt, reason)
            return
        filters = contract.ingest_filters()
        if self.share_group:
            filters = [contract.share(f, self.share_group) for f in filters]
        client.subscribe([(f, 1) for f in filters])
        log.info("%s connected to %s (session present: %s)", self.name, self.mqtt, flags.session_present)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            log.error("%s: broker refused subscriptions: %s", self.name, failed)
            return
        self.connected.set()
        log.info("%s subscribed: ready", self.name)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        log.warning("%s disconnected from %s: %s", self.name, self.mqtt, reason)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.inbox.put(_Incoming(msg.mid, msg.qos, msg.topic, msg.payload))

    # ------------------------------------------------------------ writer side

    def run(self, stop: threading.Event) -> None:
        """Write batches until `stop` is set."""
        last_silence_check = 0.0
        while not stop.is_set():
            batch = self._take(timeout=0.2)
            if batch:
                self._write_until_stored(batch, stop)
            if time.monotonic() - last_silence_check > 5:
                last_silence_check = time.monotonic()
                self.ledger.mark_silent()

    def _take(self, timeout: float) -> list[_Incoming]:
        try:
            batch = [self.inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(batch) < self.batch_size:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write_until_stored(self, batch: list[_Incoming], stop: threading.Event) -> None:
        backoff = 0.2
        while True:
            try:
                self.process(batch)
                break
            except StoreError as exc:
                self.stats.store_errors += 1
                self.stats.last_error = str(exc)
                log.error("store write failed (%s); retrying in %.1fs, nothing acked", exc, backoff)
                if stop.wait(backoff):
                    return  # stopping: unacked messages stay with the broker
                backoff = min(backoff * 2, 10.0)
        for m in batch:
            if m.qos > 0:
                self.client.ack(m.mid, m.qos)

    def process(self, batch: list[_Incoming]) -> None:
        """Decode, store and record one batch. Raises StoreError having acked nothing."""
        points: list[Point] = []
        sequenced: list[Sequenced] = []
        states: list[tuple[str, str, State]] = []
        results: list[CommandResult] = []
        for m in batch:
            try:
                topic = contract.parse_topic(m.topic)
                if topic.kind == contract.KIND_TELEMETRY:
                    t = Telemetry.decode(m.payload)
                    kind, room = self._kind_and_room(topic.gateway, topic.device or "")
                    points.extend(Point(topic.school, topic.gateway, topic.device or "", kind, name, t.ts, value, room)
                                  for name, value in t.values.items())
                    sequenced.append(Sequenced(topic.school, topic.gateway, topic.device or "", t.seq, t.ts,
                                               values=t.values))
                elif topic.kind == contract.KIND_EVENT:
                    e = Event.decode(m.payload)
                    sequenced.append(Sequenced(topic.school, topic.gateway, topic.device or "", e.seq, e.ts,
                                               event=(e.type, e.data)))
                elif topic.kind == contract.KIND_STATE:
                    state = State.decode(m.payload)
                    states.append((topic.school, topic.gateway, state))
                    if state.room:
                        self.rooms[topic.gateway] = state.room
                    for dev, info in state.devices.items():
                        if info.get("kind"):
                            self.kinds[(topic.gateway, dev)] = info["kind"]
                elif topic.kind == contract.KIND_CMD_RESULT:
                    results.append(CommandResult.decode(m.payload))
                else:
                    continue
                self.stats.kinds[topic.kind] = self.stats.kinds.get(topic.kind, 0) + 1
            except PayloadError as exc:
                self.stats.rejected += 1
                now = time.monotonic()
                if now - self._bad_logged > 5:  # a flood of garbage must not flood the log
                    self._bad_logged = now
                    log.warning("rejected message on %r: %s (%d rejected so far)", m.topic[:200], exc,
                                self.stats.rejected)
        if points:
            self.store.write(points)
        fresh = self.ledger.record(sequenced, states, results)
        self.stats.messages += len(batch)
        self.stats.stored += sum(fresh)
        self.stats.duplicates += len(fresh) - sum(fresh)
        self.stats.points += len(points)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
