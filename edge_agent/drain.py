"""The outbox drain: publish what the outbox holds, oldest first, paced, while central is online.

`inflight` messages at a time (QoS 1), at most `drain_rate` per second, so a
school reconnecting at once cannot flood ingest. A row is marked published
on the broker's PUBACK but leaves the outbox only when central's
acknowledgement passes its seq; when central is online, what it has not
acknowledged and when to send it again is `acks.Central`'s job, which the
drain owns and the MQTT link feeds. PUBACKs of a round that was meanwhile
sent again in full mark nothing (they may predate what the broker lost).

Before the first numbers of a new outbox instance (a damaged outbox replaced
while running) central must hear of that instance in the gateway's state,
or it takes the numbers for redeliveries of the old ones.
"""

from __future__ import annotations

import asyncio

import aiomqtt

from campus.aio import raise_if_cancelled, wait_event
from device_profiles.config import GatewayConfig
from edge_agent.acks import Central
from edge_agent.outbox import Outbox
from edge_agent.presence import Presence


class Drain:
    def __init__(self, config: GatewayConfig, outbox: Outbox, presence: Presence) -> None:
        self.outbox = outbox
        self.presence = presence
        self.rate = config.outbox.drain_rate
        self.batch = config.outbox.inflight
        self.pending = asyncio.Event()  # set when the outbox has something new
        self.published = 0              # PUBACKs received, for figures
        # Central's presence and acknowledgements: when the drain may publish, what to send again.
        self.central = Central(outbox, config.outbox.ack_timeout_s, wake_drain=self.wake,
                               came_back=presence.changed.set)

    def wake(self) -> None:
        """Something new is in the outbox (a reading, a command's result): publish it now."""
        self.pending.set()

    async def run(self, client: aiomqtt.Client) -> None:
        """Publish the outbox oldest first, `inflight` at a time, at most `drain_rate`/s, while central is online."""
        loop = asyncio.get_running_loop()
        while True:
            if not self.central.online.is_set():
                await wait_event(self.central.online, 5.0)
                self.outbox.expire()  # the bounds hold while we wait
                continue
            rows = self.outbox.peek(self.batch)
            if not rows:
                self.pending.clear()
                await wait_event(self.pending, 5.0)
                self.outbox.expire()
                continue
            if not self.presence.announced():
                # The outbox was replaced while running: central must hear of the new instance before
                # its first numbers, or it takes them for redeliveries of the old ones.
                self.presence.changed.clear()
                await self.presence.announce(client)
                continue
            started = loop.time()
            round_ = self.central.round
            results = await asyncio.gather(
                *(client.publish(r.topic, r.payload, qos=1, retain=r.retain, timeout=30) for r in rows),
                return_exceptions=True)
            raise_if_cancelled()
            acked = [r.id for r, res in zip(rows, results, strict=True) if res is None]
            if round_ == self.central.round:
                self.outbox.published(acked)
            # else: everything was to be sent again meanwhile; these PUBACKs may predate what the broker lost
            self.published += len(acked)
            failed = next((res for res in results if isinstance(res, BaseException)), None)
            if failed is not None:
                raise failed if isinstance(failed, aiomqtt.MqttError) else aiomqtt.MqttError(str(failed))
            # Pace the drain so a school reconnecting at once cannot flood ingest.
            spare = len(rows) / self.rate - (loop.time() - started)
            if spare > 0:
                await asyncio.sleep(spare)
