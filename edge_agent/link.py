"""The agent's MQTT link: one connection at a time, and what runs on it.

Connects with a persistent session (commands sent while the gateway is
offline wait for it, up to SESSION_EXPIRY_S) and the gateway's Last Will;
acknowledges received messages by hand, after they are handled (a command
is journaled before its ack, see `commands.py`); publishes the state,
subscribes to this gateway's commands, its retained `config` and `ack`, and
to central's presence; then runs the drain, the presence heartbeat and
central's acknowledgement watch until the connection fails, when it backs
off (0.5 s doubling to 30 s) and connects again. What a message means is the
handlers' business: the link only routes it by topic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import campus.mqtt
from campus import contract
from campus.mqtt import tls_context
from campus.urls import parse_mqtt_url
from device_profiles.config import GatewayConfig
from edge_agent.drain import Drain
from edge_agent.presence import Presence

# The logger these lines had before the agent was split: log filters and alerts name it.
log = logging.getLogger("edge_agent.agent")

SESSION_EXPIRY_S = 7 * 24 * 3600  # commands for an offline gateway wait this long at most


class Link:
    def __init__(self, config: GatewayConfig, presence: Presence, drain: Drain, *,
                 on_command: Callable[[str, bytes], None], on_config: Callable[[bytes], None]) -> None:
        """`on_command(device, payload)` journals a command (before its ack); `on_config(payload)` takes a
        pushed device list."""
        self.url = parse_mqtt_url(config.mqtt)
        self.school, self.gateway = config.school, config.gateway
        self.inflight = config.outbox.inflight
        self.presence, self.drain = presence, drain
        self.on_command, self.on_config = on_command, on_config
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()

    def _client(self) -> aiomqtt.Client:
        url = self.url
        v5 = url.protocol == "5"
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
        return aiomqtt.Client(
            url.host, url.port, username=url.username, password=url.password,
            identifier=contract.agent_client_id(self.school, self.gateway),
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            # A persistent session: commands sent while we are offline wait for us.
            clean_session=None if v5 else False,
            clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY, properties=props,
            will=self.presence.will(), keepalive=15, timeout=10, tls_context=tls_context(url),
            max_inflight_messages=self.inflight)

    async def run(self) -> None:
        """Stay connected until cancelled."""
        backoff = 0.5
        central = self.drain.central
        while True:
            try:
                async with self._client() as client:
                    # Ack commands only after they are journaled (see commands.py); a command's ack, then
                    # its result, without waiting (no_delay).
                    campus.mqtt.manual_acks(client)
                    self.client = client
                    self.connected.set()
                    backoff = 0.5
                    log.info("connected to %s", self.url)
                    central.connected()  # send again what is unacknowledged; wait for central's presence
                    await self.presence.announce(client)
                    await client.subscribe(contract.agent_cmd_filter(self.school, self.gateway), qos=1)
                    await client.subscribe(contract.config_topic(self.school, self.gateway), qos=1)
                    await client.subscribe(contract.ack_topic(self.school, self.gateway), qos=1)
                    await client.subscribe(contract.ingest_states_filter(), qos=1)
                    try:
                        async with asyncio.TaskGroup() as tg:
                            tg.create_task(self.drain.run(client))
                            tg.create_task(self._receive(client))
                            tg.create_task(self.presence.run(client))
                            tg.create_task(central.watch())
                    except asyncio.CancelledError:
                        await self.presence.say_offline(client)  # a clean stop sends no Will
                        raise
            except* aiomqtt.MqttError as group:
                # One clear line: a bad certificate or a refused login named as such.
                log.warning("MQTT link to %s %s: %s; retrying in %.1fs", self.url,
                            "lost" if self.connected.is_set() else "failed",
                            campus.mqtt.explain_connect_error(group.exceptions[0]), backoff)
            finally:
                self.client = None
                self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _receive(self, client: aiomqtt.Client) -> None:
        central = self.drain.central
        async for message in client.messages:
            try:
                worker = contract.parse_ingest_state_topic(message.topic.value)
                if worker is not None:
                    central.presence(worker, _payload(message))
                    continue
                topic = contract.parse_topic(message.topic.value)
                ours = topic.gateway == self.gateway and topic.school == self.school
                if topic.kind == contract.KIND_ACK and ours:
                    central.acknowledged(_payload(message))
                elif topic.kind == contract.KIND_CMD and topic.gateway == self.gateway and topic.device:
                    self.on_command(topic.device, _payload(message))
                elif topic.kind == contract.KIND_CONFIG and ours:
                    self.on_config(_payload(message))
            except contract.PayloadError as exc:
                log.warning("ignored message on %s: %s", message.topic.value, exc)
            finally:
                campus.mqtt.ack(client, message)


def _payload(message: aiomqtt.Message) -> bytes:
    return message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
