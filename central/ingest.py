"""Central ingest: MQTT in, points and ledger out, ack only after the store has it.

The subscriber's network thread (central/subscriber.py) hands every chunk
of received messages to a queue; the writer thread takes batches, decodes
them (garbage is counted, logged and acked so it is not redelivered
forever), writes the points (idempotent), records the ledger (dedup by
gateway + seq) and only then acknowledges the batch with one write of its
PUBACKs. If the store fails, the batch is retried with backoff and nothing
is acked, so the broker keeps the messages for our persistent session; a
restart of ingest loses nothing.

Central's side of "nothing lost even when the broker forgets" (docs/architecture.md):
each worker publishes its presence (`contract.IngestState`, retained, with a
Last Will) once its subscriptions are acknowledged, and after each commit
the ledger moves every gateway's watermark; the due acknowledgements
(`contract.Ack`, central/acks.py says when) go out on the subscriber's own
connection.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass, field

from campus import contract
from campus.contract import Ack, CommandResult, Event, IngestState, State, Telemetry
from campus.errors import PayloadError, StoreError
from campus.urls import MqttUrl
from central.acks import ACK_MAX_DELAY_S, ACK_MIN_INTERVAL_S
from central.ledger import WORKER_REPORT_S, Ledger, Sequenced
from central.store import PointStore, Sample
from central.subscriber import Delivery, Subscriber

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 24 * 3600
# A worker of a shared subscription keeps its session a minute only. While its session lives, Mosquitto
# goes on handing the away worker its share of the group's messages (queued for it, not given to the
# others: eclipse-mosquitto/mosquitto#1747), so a dead worker with a day's session would hold back half of
# every gateway's stream for a day (the agents' resends land on it again half the time). Its queue lost at
# expiry costs nothing: the agents send again what central has not acknowledged.
SHARED_SESSION_EXPIRY_S = 60
RECEIVE_MAXIMUM = 1000  # unacked messages the broker may send us (MQTT 5 flow control)
LINGER_S = 0.02  # how long a batch that is not full waits for more messages
PRUNE_SEEN_EVERY_S = 600  # the ledger forgets old seq numbers (central/ledger.py SEEN_KEEP) this often


@dataclass
class IngestStats:
    messages: int = 0
    stored: int = 0
    points: int = 0
    duplicates: int = 0
    rejected: int = 0
    refused_by_store: int = 0  # samples recorded in the ledger that the point store refused to keep
    store_errors: int = 0
    last_error: str = ""
    kinds: dict[str, int] = field(default_factory=dict)
    acks: int = 0  # acknowledgements published to agents


def _carries_result(deliveries: list[Delivery]) -> bool:
    return any(contract.is_cmd_result(d.topic) for d in deliveries)


_SEQUENCED_KINDS = (contract.KIND_TELEMETRY, contract.KIND_EVENT, contract.KIND_CMD_RESULT)


def _salvage_seq(payload: bytes) -> int | None:
    """The seq of a message refused at decode, if it has a plain one (central/acks.py record_refused)."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    seq = data.get("seq") if isinstance(data, dict) else None
    return seq if type(seq) is int and 1 <= seq < 2**63 else None


def _instance() -> int:
    return secrets.randbits(52) + 1  # as outbox instances: below 2**53, exact in every JSON reader


class Ingest:
    def __init__(self, mqtt: MqttUrl, store: PointStore, ledger: Ledger, *, name: str = "ingest",
                 share_group: str | None = None, batch_size: int = 500, linger_s: float = LINGER_S,
                 prune_seen_every_s: float = PRUNE_SEEN_EVERY_S, session_expiry: int | None = None,
                 ack_max_delay: float = ACK_MAX_DELAY_S) -> None:
        """`session_expiry`: how long the broker keeps our session (and queues for us) while we are away
        (default: a day alone, a minute in a shared group: SHARED_SESSION_EXPIRY_S says why);
        `ack_max_delay`: the longest a stored message waits for its acknowledgement (central/acks.py)."""
        self.presence_topic = contract.ingest_state_topic(name)  # PayloadError (a CampusError) for a bad name
        self.instance = _instance()
        self.mqtt = mqtt
        self.store = store
        self.ledger = ledger
        self.name = name
        self.share_group = share_group
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.prune_seen_every_s = prune_seen_every_s
        self.ack_max_delay = ack_max_delay
        if session_expiry is None:
            session_expiry = SHARED_SESSION_EXPIRY_S if share_group else SESSION_EXPIRY_S
        self.session_expiry = session_expiry
        self.stats = IngestStats()
        self.started = time.time()
        # Chunks of deliveries as the network thread read them (one queue operation per chunk).
        self.inbox: queue.Queue[list[Delivery]] = queue.Queue()
        self._pending: list[Delivery] = []
        self.kinds: dict[tuple[str, str], str] = {}
        self.rooms: dict[str, str] = {}
        self._looked_up: dict[str, float] = {}  # gateway -> when its devices were last read from the ledger
        self._load_maps()
        filters = contract.ingest_filters()
        if share_group:
            filters = [contract.share(f, share_group) for f in filters]
        self._connections = 0
        self.subscriber = Subscriber(mqtt, f"campus-{name}", filters, self.inbox.put,
                                     session_expiry=session_expiry, receive_maximum=RECEIVE_MAXIMUM,
                                     will=lambda: self._presence(False), on_subscribed=self._subscribed)
        self.connected = self.subscriber.ready
        self._bad_logged = 0.0

    # ------------------------------------------------------------ presence

    def _presence(self, online: bool) -> tuple[str, bytes]:
        return self.presence_topic, IngestState(online, self.instance, time.time()).encode()

    def _subscribed(self, session_present: bool) -> None:
        """Subscribed (network thread): say we are online. Without our session (a broker restarted
        empty, or a session expired), what it held for us is gone: a new instance tells agents to send
        again everything central has not acknowledged."""
        self._connections += 1
        if self._connections > 1 and not session_present:
            self.instance = _instance()
            log.warning("%s: the broker had no session for us: anything it held is lost; agents will send it again",
                        self.name)
        self.subscriber.publish(*self._presence(True))

    def _load_maps(self, gateway: str | None = None) -> None:
        """Device kinds and rooms as the ledger knows them (from any worker's `state`), of every gateway or one."""
        self.kinds.update({(d["gateway"], d["id"]): d["kind"] for d in self.ledger.gateway_devices(gateway)
                           if d["kind"]})
        self.rooms.update({g["id"]: g["room"] for g in self.ledger.gateways(gateway) if g["room"]})

    def _kind_and_room(self, gateway: str, device: str) -> tuple[str, str]:
        # With shared subscriptions another worker may have taken this gateway's
        # `state`: on a miss, look that gateway up in the ledger (at most once a
        # second per gateway; one row, however large the district).
        if (gateway, device) not in self.kinds:
            now = time.monotonic()
            if now - self._looked_up.get(gateway, -2.0) > 1.0:
                if len(self._looked_up) > 100_000:
                    self._looked_up.clear()
                self._looked_up[gateway] = now
                self._load_maps(gateway)
        return self.kinds.get((gateway, device), "device"), self.rooms.get(gateway, "")

    def connect(self) -> None:
        """Connect and subscribe (CampusError naming the broker if it cannot), then keep at it."""
        self.subscriber.start()

    # ------------------------------------------------------------ writer side

    def run(self, stop: threading.Event) -> None:
        """Write batches until `stop` is set."""
        last_silence_check = last_prune = last_acks = 0.0
        prune_from: str | None = None  # where the pass over the gateways goes on; None: no pass running
        while not stop.is_set():
            batch = self._take(timeout=0.2)
            if batch:
                self._write_until_stored(batch, stop)
            now = time.monotonic()
            if now - last_acks >= ACK_MIN_INTERVAL_S:
                last_acks = now
                self.publish_acks()
            if now - last_silence_check > WORKER_REPORT_S:
                last_silence_check = now
                self._mark_silent()
                self._report()
            if prune_from is None and now - last_prune > self.prune_seen_every_s:
                last_prune, prune_from = now, ""
            if prune_from is not None:  # a slice of gateways between two batches, not the district at once
                prune_from = self._prune_seen(prune_from)

    def publish_acks(self) -> int:
        """Publish the acknowledgements due now (after the commits that moved the watermarks)."""
        try:
            due = self.ledger.take_acks(max_delay=self.ack_max_delay)
        except StoreError as exc:  # the next round tries again; agents wait meanwhile
            log.warning("%s", exc)
            return 0
        now = time.time()
        for school, gateway, instance, seq in due:
            self.subscriber.publish(contract.ack_topic(school, gateway), Ack(instance, seq, now).encode())
        self.stats.acks += len(due)
        return len(due)

    def _mark_silent(self) -> None:
        try:
            self.ledger.mark_silent()
        except StoreError as exc:  # the database is away (restarting): the next round marks them
            log.warning("%s", exc)

    def _report(self) -> None:
        """This worker's counters into the ledger, for `GET /api/ingest` (IT staff watching ingest)."""
        try:
            self.ledger.record_worker(self.name, socket.gethostname(), os.getpid(), self.started, asdict(self.stats))
        except StoreError as exc:  # only the report: the next one may get through
            log.warning("%s", exc)

    def _prune_seen(self, after: str) -> str | None:
        try:
            return self.ledger.prune_seen_slice(after)[1]
        except StoreError as exc:  # only the counters' memory: try again next time
            log.warning("%s", exc)
            return None

    def _take(self, timeout: float) -> list[Delivery]:
        """Up to batch_size deliveries: what is waiting, or what arrives within `timeout`.

        A batch that is not full waits up to `linger_s` for more: live traffic
        comes a message at a time, and two commits per message cost ingest far
        more CPU than the few milliseconds of delay (see docs/benchmarks.md).
        Not a batch with a command result: someone is waiting for it.
        """
        batch = self._pending
        if not batch:
            try:
                batch = self.inbox.get(timeout=timeout)
            except queue.Empty:
                return []
        lingers = len(batch) < self.batch_size and not _carries_result(batch)
        until = time.monotonic() + (self.linger_s if lingers else 0.0)
        while len(batch) < self.batch_size:
            try:
                wait = until - time.monotonic()
                chunk = self.inbox.get(timeout=wait) if wait > 0 else self.inbox.get_nowait()
            except queue.Empty:
                break
            batch = batch + chunk
            if _carries_result(chunk):
                until = 0.0
        batch, self._pending = batch[:self.batch_size], batch[self.batch_size:]
        return batch

    def _write_until_stored(self, batch: list[Delivery], stop: threading.Event) -> None:
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
        self.subscriber.ack(batch)

    def process(self, batch: list[Delivery]) -> None:
        """Decode, store and record one batch. Raises StoreError having acked nothing."""
        samples: list[Sample] = []
        sequenced: list[Sequenced] = []
        states: list[tuple[str, str, State]] = []
        results: list[CommandResult] = []
        refused: list[tuple[str, str, int]] = []  # (school, gateway, seq) of sequenced messages refused at decode
        clocks: dict[str, tuple[float, float]] = {}  # gateway -> (ts, receipt - ts) of its newest live heartbeat
        counted = self.stats.kinds
        received = time.time()  # the batch arrived within milliseconds: one clock reading for all of it
        for m in batch:
            try:
                topic = contract.parse_topic(m.topic)
                if topic.kind == contract.KIND_TELEMETRY:
                    t = Telemetry.decode(m.payload)
                    ahead = contract.clock_ahead(t.ts, received, "telemetry")
                    device = topic.device or ""
                    kind, room = self._kind_and_room(topic.gateway, device)
                    samples.append(Sample(topic.school, topic.gateway, device, kind, t.ts, t.values, room))
                    sequenced.append(Sequenced(topic.school, topic.gateway, device, t.seq, t.ts, values=t.values,
                                               ahead=ahead))
                elif topic.kind == contract.KIND_EVENT:
                    e = Event.decode(m.payload)
                    ahead = contract.clock_ahead(e.ts, received, "event")
                    sequenced.append(Sequenced(topic.school, topic.gateway, topic.device or "", e.seq, e.ts,
                                               event=(e.type, e.data), ahead=ahead))
                elif topic.kind == contract.KIND_STATE:
                    state = State.decode(m.payload)
                    if state.online and not m.retain:  # a live heartbeat: its age is the clock's offset
                        newest = clocks.get(topic.gateway)
                        if newest is None or state.ts > newest[0]:
                            clocks[topic.gateway] = (state.ts, received - state.ts)
                    if contract.clock_ahead(state.ts, received, "state"):
                        # States are ordered by ts; one from a clock far ahead would outrank every
                        # later one. Its receipt time is the best word on when it was true.
                        state = dataclasses.replace(state, ts=received)
                    states.append((topic.school, topic.gateway, state))
                    if state.room:
                        self.rooms[topic.gateway] = state.room
                    for dev, info in state.devices.items():
                        if info.get("kind"):
                            self.kinds[(topic.gateway, dev)] = info["kind"]
                elif topic.kind == contract.KIND_CMD_RESULT:
                    r = CommandResult.decode(m.payload)
                    results.append(r)
                    if r.seq is not None:  # counted like telemetry, so the watermark covers it
                        sequenced.append(Sequenced(topic.school, topic.gateway, topic.device or "", r.seq, r.ts))
                else:
                    continue
                counted[topic.kind] = counted.get(topic.kind, 0) + 1
            except PayloadError as exc:
                self.stats.rejected += 1
                # Sending it again cannot change the verdict: let the watermark pass it (it still counts as a gap).
                parsed = _parse_quietly(m.topic)
                if parsed is not None and parsed.kind in _SEQUENCED_KINDS:
                    seq = _salvage_seq(m.payload)
                    if seq is not None:
                        refused.append((parsed.school, parsed.gateway, seq))
                now = time.monotonic()
                if now - self._bad_logged > 5:  # a flood of garbage must not flood the log
                    self._bad_logged = now
                    log.warning("rejected message on %r: %s (%d rejected so far)", m.topic[:200], exc,
                                self.stats.rejected)
        if samples:
            self.stats.refused_by_store += self.store.write(samples)
        fresh = self.ledger.record(sequenced, states, results, {gw: off for gw, (_, off) in clocks.items()},
                                   refused)
        self.stats.messages += len(batch)
        self.stats.stored += sum(fresh)
        self.stats.duplicates += len(fresh) - sum(fresh)
        self.stats.points += sum(len(s.values) for s in samples)

    def close(self) -> None:
        # A clean stop sends no Last Will: say we are going offline ourselves (sent before DISCONNECT).
        self.subscriber.publish(*self._presence(False))
        self.subscriber.close()


def _parse_quietly(topic: str) -> contract.Topic | None:
    try:
        return contract.parse_topic(topic)
    except PayloadError:
        return None
