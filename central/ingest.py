"""Central ingest: MQTT in, points and ledger out, ack only after the store has it.

The subscriber's network thread (central/subscriber.py) hands every chunk
of received messages to a queue; the writer thread takes batches, decodes
them (garbage is counted, logged and acked so it is not redelivered
forever), writes the points (idempotent), records the ledger (dedup by
gateway + seq) and only then acknowledges the batch with one write of its
PUBACKs. If the store fails, the batch is retried with backoff and nothing
is acked, so the broker keeps the messages for our persistent session; a
restart of ingest loses nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import asdict, dataclass, field

from campus import contract
from campus.contract import CommandResult, Event, State, Telemetry
from campus.errors import PayloadError, StoreError
from campus.urls import MqttUrl
from central.ledger import WORKER_REPORT_S, Ledger, Sequenced
from central.store import PointStore, Sample
from central.subscriber import Delivery, Subscriber

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 24 * 3600
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


def _carries_result(deliveries: list[Delivery]) -> bool:
    return any(contract.is_cmd_result(d.topic) for d in deliveries)


class Ingest:
    def __init__(self, mqtt: MqttUrl, store: PointStore, ledger: Ledger, *, name: str = "ingest",
                 share_group: str | None = None, batch_size: int = 500, linger_s: float = LINGER_S,
                 prune_seen_every_s: float = PRUNE_SEEN_EVERY_S) -> None:
        self.mqtt = mqtt
        self.store = store
        self.ledger = ledger
        self.name = name
        self.share_group = share_group
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.prune_seen_every_s = prune_seen_every_s
        self.stats = IngestStats()
        self.started = time.time()
        # Chunks of deliveries as the network thread read them (one queue operation per chunk).
        self.inbox: queue.Queue[list[Delivery]] = queue.Queue()
        self._pending: list[Delivery] = []
        self.kinds: dict[tuple[str, str], str] = {}
        self.rooms: dict[str, str] = {}
        self._looked_up: dict[str, float] = {}  # gateway -> when its devices were last read from the ledger
        self._load_maps()
        self.ledger.release()  # read by the constructing thread; the writer thread takes its own connection
        filters = contract.ingest_filters()
        if share_group:
            filters = [contract.share(f, share_group) for f in filters]
        self.subscriber = Subscriber(mqtt, f"campus-{name}", filters, self.inbox.put,
                                     session_expiry=SESSION_EXPIRY_S, receive_maximum=RECEIVE_MAXIMUM)
        self.connected = self.subscriber.ready
        self._bad_logged = 0.0

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
        last_silence_check = last_prune = 0.0
        prune_from: str | None = None  # where the pass over the gateways goes on; None: no pass running
        while not stop.is_set():
            batch = self._take(timeout=0.2)
            if batch:
                self._write_until_stored(batch, stop)
            now = time.monotonic()
            if now - last_silence_check > WORKER_REPORT_S:
                last_silence_check = now
                self.ledger.mark_silent()
                self._report()
            if prune_from is None and now - last_prune > self.prune_seen_every_s:
                last_prune, prune_from = now, ""
            if prune_from is not None:  # a slice of gateways between two batches, not the district at once
                prune_from = self._prune_seen(prune_from)

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
                    results.append(CommandResult.decode(m.payload))
                else:
                    continue
                counted[topic.kind] = counted.get(topic.kind, 0) + 1
            except PayloadError as exc:
                self.stats.rejected += 1
                now = time.monotonic()
                if now - self._bad_logged > 5:  # a flood of garbage must not flood the log
                    self._bad_logged = now
                    log.warning("rejected message on %r: %s (%d rejected so far)", m.topic[:200], exc,
                                self.stats.rejected)
        if samples:
            self.stats.refused_by_store += self.store.write(samples)
        fresh = self.ledger.record(sequenced, states, results, {gw: off for gw, (_, off) in clocks.items()})
        self.stats.messages += len(batch)
        self.stats.stored += sum(fresh)
        self.stats.duplicates += len(fresh) - sum(fresh)
        self.stats.points += sum(len(s.values) for s in samples)

    def close(self) -> None:
        self.subscriber.close()
