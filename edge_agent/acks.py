"""Central as one agent sees it: is an ingest worker online, and what has central acknowledged.

A broker's PUBACK is not delivery (a broker restarted without its saved
state, a queue limit or an expired session drop what they accepted), so the
outbox keeps a row until central's retained `ack` (its watermark,
`contract.Ack`) passes its seq. This module decides when to send again
everything central has not acknowledged (`Outbox.resend`):

- when the agent (re)connects to the broker (the caller calls `connected`);
- when central comes back: no ingest worker was online, then one is, or a
  worker shows a new instance (it lost its broker session, and with it what
  the broker held for it);
- when the watermark has not moved for `ack_timeout_s` while sent rows wait
  (the broker dropped them while everyone stayed connected).

Central drops the duplicates. The drain publishes only while `online` is
set (Sparkplug's primary-host rule): an agent back on a broker restarted
empty does not pour its outbox into it before ingest has subscribed again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from campus import contract
from campus.contract import Ack, IngestState
from edge_agent.outbox import Outbox

log = logging.getLogger(__name__)


class Central:
    def __init__(self, outbox: Outbox, ack_timeout_s: float, *, wake_drain: Callable[[], None],
                 came_back: Callable[[], None]) -> None:
        """`wake_drain()` when there is something to send again; `came_back()` when central returned
        (the agent publishes its `state` again: central may have lost it too)."""
        self.outbox = outbox
        self.ack_timeout = ack_timeout_s
        self.wake_drain = wake_drain
        self.came_back = came_back
        self.workers: dict[str, IngestState] = {}  # ingest worker -> its last presence, on this connection
        self.online = asyncio.Event()              # some worker is online: the drain may publish
        self.acked_seq = 0                         # central's watermark for this outbox, as last heard
        self.progress = time.monotonic()           # when it last moved (or everything was sent again)
        self.resends = 0                           # rows marked for sending again
        self.round = 0                             # bumped by every resend: PUBACKs of an earlier round mark nothing

    def connected(self) -> None:
        """A new broker connection: what the broker accepted on the last one may be gone with it, and
        central is offline until its retained presence (delivered on subscribe) says otherwise."""
        self.resend("reconnected to the broker")
        self.workers.clear()
        self.online.clear()

    def presence(self, worker: str, payload: bytes) -> None:
        """An ingest worker's retained presence (an empty payload: it was cleared, the worker is gone)."""
        was_online = self.online.is_set()
        before = self.workers.get(worker)
        if not payload:
            self.workers.pop(worker, None)
        else:
            try:
                self.workers[worker] = IngestState.decode(payload)
            except contract.PayloadError as exc:
                log.warning("ignored central presence of %s: %s", worker, exc)
                return
        online = any(s.online for s in self.workers.values())
        now = self.workers.get(worker)
        # A worker back without its broker session (its Will, then online with another instance) may have
        # lost what the broker held for it, even while other workers stayed online.
        restarted = now is not None and now.online and before is not None and before.instance != now.instance
        if online and not was_online:
            log.info("central is online (ingest %s)", worker)
            self.resend("central came back")
            self.came_back()
        elif restarted:
            self.resend(f"ingest {worker} restarted without its session")
            self.came_back()
        elif was_online and not online:
            log.warning("central is offline (no ingest worker online): holding the outbox")
        if online:
            self.online.set()
            self.wake_drain()
        else:
            self.online.clear()

    def acknowledged(self, payload: bytes) -> None:
        """Central's ack: delete the rows it covers. PayloadError for a malformed one."""
        ack = Ack.decode(payload)
        deleted = self.outbox.acknowledge(ack.instance, ack.seq)
        if ack.instance == self.outbox.instance and (deleted or ack.seq > self.acked_seq):
            self.acked_seq = max(self.acked_seq, ack.seq)
            self.progress = time.monotonic()

    def resend(self, reason: str) -> None:
        self.round += 1
        count = self.outbox.resend()
        self.progress = time.monotonic()
        if count:
            self.resends += count
            log.info("sending %d messages again (%s): central has not acknowledged them", count, reason)
            self.wake_drain()

    async def watch(self) -> None:
        """Send again what waits for central's acknowledgement when its watermark stalls."""
        while True:
            await asyncio.sleep(min(5.0, self.ack_timeout / 4))
            if not self.online.is_set():
                continue  # nothing is sent meanwhile; central's return sends everything again anyway
            oldest = self.outbox.oldest_sent()
            stalled = time.monotonic() - self.progress
            if oldest is not None and time.time() - oldest > self.ack_timeout and stalled > self.ack_timeout:
                log.warning("central acknowledged nothing for %.0f s", stalled)
                self.resend(f"no acknowledgement for {self.ack_timeout:g} s")
