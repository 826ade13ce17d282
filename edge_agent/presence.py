"""Presence: the gateway's retained `state`, online while connected and offline otherwise.

- online: published (QoS 1, retained) on every connect, whenever something in
  it changed (`changed`: a device's status, the storage, central's return,
  a config push), and every `heartbeat` seconds even when nothing did, so
  central can call a gateway silent for 3 heartbeats offline;
- offline: the Last Will of every connection (`will`), and said by the agent
  itself at a clean stop (`say_offline`), which sends no Will.

The state also names the outbox instance central should expect numbers from:
`announced` tells the drain whether central has heard of the current one
(a damaged outbox replaced while running starts a new instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiomqtt

import campus
from campus import contract
from campus.aio import raise_if_cancelled, wait_event
from campus.contract import State
from device_profiles.config import GatewayConfig
from edge_agent.outbox import Outbox

# The logger these lines had before the agent was split: log filters and alerts name it.
log = logging.getLogger("edge_agent.agent")

MIN_HEARTBEAT_S = 2.0  # a fast poll must not turn presence into a flood


class Presence:
    def __init__(self, config: GatewayConfig, outbox: Outbox, *,
                 devices: Callable[[bool], dict[str, dict[str, str]]],
                 config_version: Callable[[], int | None],
                 device_details: Callable[[bool], dict[str, dict[str, Any]]] = lambda online: {}) -> None:
        """`devices(online)`: the devices part of the state; `config_version()`: the pushed list running;
        `device_details(online)`: why devices are in fault or offline (`State.device_details`)."""
        self.school, self.gateway = config.school, config.gateway
        self.room, self.building = config.room, config.building
        self.outbox = outbox
        self.devices, self.config_version, self.device_details = devices, config_version, device_details
        self.boot = time.time()
        self.since = 0.0  # when the current MQTT connection began (set by `will`)
        # `state` is republished this often, so central can call a gateway that
        # is silent for 3 heartbeats offline even when its devices send nothing.
        self.heartbeat = max(MIN_HEARTBEAT_S, config.poll_interval)
        self.changed = asyncio.Event()  # set: publish the state now
        self._announced_instance: int | None = None  # the outbox instance central was last told of

    def state(self, online: bool = True) -> State:
        replaced = self.outbox.replaced
        return State(online=online, ts=time.time(), agent=campus.__version__, boot=self.boot, since=self.since,
                     room=self.room, building=self.building, devices=self.devices(online),
                     interval=self.heartbeat, config_version=self.config_version(),
                     outbox=self.outbox.figures(), storage=self.outbox.health.as_dict(),
                     outbox_replaced=replaced.as_dict() if replaced is not None else None,
                     device_details=self.device_details(online))

    def will(self) -> aiomqtt.Will:
        """The Last Will of a new connection (which begins now: `since`, in every state sent on it)."""
        self.since = time.time()
        return aiomqtt.Will(contract.state_topic(self.school, self.gateway), self.state(online=False).encode(),
                            qos=1, retain=True)

    def announced(self) -> bool:
        """Whether central was told of the outbox instance the drain publishes from."""
        return self.outbox.instance == self._announced_instance

    async def announce(self, client: aiomqtt.Client) -> None:
        """Publish the online state now."""
        state = self.state()
        await client.publish(contract.state_topic(self.school, self.gateway), state.encode(), qos=1, retain=True)
        self._announced_instance = state.outbox.get("instance")

    async def run(self, client: aiomqtt.Client) -> None:
        """Publish the state when it changed, or every heartbeat; runs until cancelled."""
        while True:
            await wait_event(self.changed, self.heartbeat)
            self.changed.clear()
            await self.announce(client)
            raise_if_cancelled()

    async def say_offline(self, client: aiomqtt.Client) -> None:
        """A clean stop sends no Will: say we are going offline ourselves (best effort, 2 s)."""
        with contextlib.suppress(Exception):
            await client.publish(contract.state_topic(self.school, self.gateway),
                                 self.state(online=False).encode(), qos=1, retain=True, timeout=2)
