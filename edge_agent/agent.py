"""One classroom gateway: poll every device, publish through the outbox, run commands.

`Agent` wires the parts together and owns start and stop; each job is a
class of its own, all tasks in one asyncio loop (the agent's task group):

- device polling (`polling.Polling`): one poller per device reads it, commits
  the reading to the outbox and keeps the device's status;
- command execution (`commands.CommandExecutor`): one worker per device; a
  command is journaled before its MQTT ack and runs at most once, never late;
- the outbox drain (`drain.Drain`): publishes the outbox, paced, while central
  is online; a row leaves the outbox when central's acknowledgement passes its
  seq, not on the broker's PUBACK (`acks.Central`);
- presence (`presence.Presence`): the retained `state`, on connect, on change
  and every heartbeat, and `online: false` in the Last Will and at a clean stop;
- config push (`config_push.ConfigPush`): a newer device list pushed by
  central (retained on the gateway's `config` topic) swaps only the devices
  that changed, is saved next to the outbox (`pushed-config.json`, used
  instead of the file's devices at the next start), and is reported as a
  `config_applied` or `config_rejected` event and `config_version` in `state`;
- the podium (`podium.Podium`): a swipe of an enrolled card starts or ends the class (the room's
  scenes through the command executor), decided here, reported as a `podium` event;
- schedules (`schedules.EdgeScheduler`): the runs central planned for this gateway, on its own
  clock, through the command executor, each reported once as a `schedule_run` event;
- the room's rules (`rules.EdgeRules`): idle-off (nobody counted, no command, something on: off) and
  the teacher's period override (a gateway-level command), decided here, reported as `rule_run`;
- the MQTT link (`link.Link`): one connection at a time with a persistent
  session, routing what arrives to the parts above; on any broker error it
  backs off and connects again.

Storage (see `storage.py`, `outbox.py`): an unusable `data_dir` stops the agent
at start with one line (ConfigError); a damaged outbox is replaced by a new
one, reported in `state.outbox_replaced` and as an `outbox_replaced` event; a
full disk is `state.storage`, while devices keep their own status and
commands, presence and config pushes carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from campus import contract
from campus.contract import Event, State
from campus.i18n import lazy_gettext
from device_profiles.config import DeviceConfig, GatewayConfig
from edge_agent import config_push
from edge_agent.commands import CommandExecutor
from edge_agent.config_push import ConfigPush
from edge_agent.drain import Drain
from edge_agent.drivers import create_driver
from edge_agent.drivers.base import Driver
from edge_agent.link import Link
from edge_agent.outbox import Outbox
from edge_agent.podium import Podium
from edge_agent.polling import Polling
from edge_agent.presence import Presence
from edge_agent.rules import EdgeRules
from edge_agent.schedules import EdgeScheduler
from edge_agent.storage import Replacement

log = logging.getLogger(__name__)

AGENT_EVENT_DEVICE = contract.AGENT_DEVICE  # device segment of events about the agent itself (config_*)


class Agent:
    def __init__(self, config: GatewayConfig) -> None:
        self.file_config = config
        # First: an unusable data_dir is one error line, before anything else reads or logs about it.
        self.outbox = Outbox(config.data_path / "agent.db", max_messages=config.outbox.max_messages,
                             max_age_s=config.outbox.max_age_s)
        version: int | None = None  # None: running the config file's device list
        pushed = config_push.load_pushed(config)
        if pushed is not None:
            version, config = pushed
        self.school, self.gateway = config.school, config.gateway
        # Shared by the pollers, the command workers and config pushes: a read and a command never
        # run on one device at once (its lock).
        self.drivers: dict[str, Driver] = {dev.id: self._new_driver(dev, config) for dev in config.devices}
        self.locks = {d: asyncio.Lock() for d in self.drivers}
        self._tasks: asyncio.TaskGroup | None = None

        self.presence = Presence(config, self.outbox, devices=lambda online: self.polling.describe(online),
                                 config_version=lambda: self.push.version,
                                 device_details=lambda online: self.polling.details(online))
        self.drain = Drain(config, self.outbox, self.presence)
        self.polling = Polling(config, self.outbox, self.drivers, self.locks, wake_drain=self.drain.wake,
                               status_changed=self.presence.changed.set,
                               on_events=lambda device, events: self.podium.observe(device, events),
                               on_values=lambda device, values: self.rules.observe(device, values))
        self.commands = CommandExecutor(self.outbox, self.school, self.gateway, self.drivers, self.locks,
                                        on_result=self._command_finished)
        self.podium = Podium(self.outbox, self.commands, lambda: self.push.config, wake_drain=self.drain.wake)
        self.rules = EdgeRules(self.outbox, self.commands, lambda: self.push.config, wake_drain=self.drain.wake)
        self.commands.add_handler(contract.RULES_DEVICE, self.rules)  # the teacher's override comes as a command
        self.schedules = EdgeScheduler(self.outbox, self.commands, lambda: self.push.config,
                                       wake_drain=self.drain.wake, skip=self.rules.skip_reason)
        self.push = ConfigPush(self.file_config, config, version, drivers=self.drivers, locks=self.locks,
                               polling=self.polling, commands=self.commands, new_driver=self._new_driver,
                               spawn=self._spawn, agent_event=self.record_agent_event,
                               changed=self._config_changed)
        self.link = Link(config, self.presence, self.drain, on_command=self._command_received,
                         on_config=self._config_received)
        self.outbox.on_change = self.presence.changed.set  # storage status, or a new outbox instance
        self.outbox.on_replaced.append(self._outbox_replaced)

    # ------------------------------------------------------------ what the parts tell each other

    def _new_driver(self, dev: DeviceConfig, config: GatewayConfig) -> Driver:
        options = dict(dev.options)
        # The school's secret, for card readers (UIDs) and cameras (QR codes): the file's, or the one central pushed.
        if dev.profile_obj.kind in contract.CARD_SECRET_KINDS:
            options.setdefault("secret", config.card_secret)
        driver = create_driver(dev.id, dev.profile_obj, dev.address, options)
        if hasattr(driver, "on_swipe"):  # a swipe is read at once (the podium), not at the next poll
            driver.on_swipe = lambda device=dev.id: self.polling.read_soon(device)
        return driver

    def _command_received(self, device_id: str, payload: bytes) -> None:
        self.commands.receive(device_id, payload)
        self.drain.wake()  # an answer (a repeated or refused command) may be in the outbox already

    def _command_finished(self, device_id: str, status: str) -> None:
        self.drain.wake()  # the result is in the outbox: publish it now
        self.rules.command_finished(device_id)  # someone acted in the room: idle-off waits afresh
        if status == "done":
            # The device changed: read it now, so the panel shows "warming" in a moment,
            # not at the next poll (5 s by default).
            self.polling.read_soon(device_id)

    def _config_received(self, payload: bytes) -> None:
        if payload and self._tasks is not None:  # an empty retained message clears the topic
            self._tasks.create_task(self.push.apply(payload))

    def _config_changed(self) -> None:
        self.presence.changed.set()
        self.schedules.changed.set()  # a new plan may have a run sooner than the one waited for

    def _outbox_replaced(self, replacement: Replacement) -> None:
        """A damaged outbox was set aside: say so through the new one (its first numbers)."""
        self.record_agent_event(contract.OUTBOX_REPLACED_EVENT, replacement.as_dict())
        self.presence.changed.set()

    def record_agent_event(self, type_: str, data: dict[str, Any]) -> None:
        """An event about the agent itself, through the outbox like any other."""
        now = time.time()
        self.outbox.add(sequenced=[(contract.event_topic(self.school, self.gateway, AGENT_EVENT_DEVICE),
                                    lambda seq: Event(seq, now, type_, data).encode())])
        self.drain.wake()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._tasks is not None
        return self._tasks.create_task(coro)

    # ------------------------------------------------------------ a view for tests and figures

    @property
    def config(self) -> GatewayConfig:
        """The running config: the file's, or the last pushed device list applied."""
        return self.push.config

    @property
    def config_version(self) -> int | None:
        return self.push.version

    @property
    def connected(self) -> asyncio.Event:
        return self.link.connected

    def state(self, online: bool = True) -> State:
        return self.presence.state(online)

    async def apply_pushed_config(self, payload: bytes) -> bool:
        """Apply a pushed device list if it is newer than the running one; True if applied."""
        return await self.push.apply(payload)

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        log.info("agent %s/%s starting with %d devices; outbox holds %d", self.school, self.gateway,
                 len(self.drivers), len(self.outbox))
        if self.outbox.replaced_now is not None:
            self._outbox_replaced(self.outbox.replaced_now)
        for device in self.commands.open_devices() - set(self.drivers) - set(self.commands.handlers):
            self.commands.forget_device(device, lazy_gettext("the device is no longer in this gateway's config"))
        self.commands.recover()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                tg.create_task(self.link.run())
                tg.create_task(self.podium.run())
                tg.create_task(self.schedules.run())
                tg.create_task(self.rules.run())
                self.commands.start(contract.RULES_DEVICE, self._spawn)
                for device_id in self.drivers:
                    self.polling.start(device_id, self._spawn)
                    self.commands.start(device_id, self._spawn)
        finally:
            self._tasks = None
            await self.close()

    async def close(self) -> None:
        for driver in self.drivers.values():
            with contextlib.suppress(Exception):
                await driver.close()
        self.outbox.close()


async def run_agent(config: GatewayConfig, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or forever); used by `campus agent` and the demo."""
    agent = Agent(config)
    task = asyncio.create_task(agent.run())
    if stop is None:
        await task
        return
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
