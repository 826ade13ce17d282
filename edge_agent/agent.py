"""One classroom gateway: poll every device, publish through the outbox, run commands.

Tasks, all in one asyncio loop:
- one poller per device (the scheduler): read, commit to the outbox, note status;
- one command worker per device (see `commands.py`);
- the MQTT link: connect with a persistent session and a Last Will, publish
  the retained `state`, subscribe to this gateway's commands, its retained
  `config` and `ack`, and to central's presence; drain the outbox at a
  bounded rate while central is online; on any broker error, back off and
  reconnect.

Central's acknowledgement: a row leaves the outbox when central's retained
`ack` (its watermark) passes its seq, not on the broker's PUBACK; what is
sent again when, and whether central is online, is `acks.py`'s job.

Config push: central publishes `{"version": N, "devices": [...]}` retained on
`campus/v1/{school}/{gateway}/config`. A version newer than the one running is
validated exactly like the config file (GatewayConfig/DeviceConfig); if it is
invalid the agent keeps its devices, logs one error and reports a
`config_rejected` event; else it swaps only the devices that changed (their
pollers restart; command workers keep their queues), saves the list next to
its outbox (`pushed-config.json`, used instead of the file's devices at the
next start), reports a `config_applied` event and `config_version` in `state`.
A list that cannot be saved (disk full) is applied all the same: the broker
delivers the retained list again at the next connect.

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

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import campus
from campus import contract
from campus.aio import raise_if_cancelled, wait_event
from campus.contract import Event, State, Telemetry
from campus.errors import CampusError, ConfigError, DeviceError
from campus.mqtt import tls_context
from campus.urls import parse_mqtt_url
from edge_agent import config_push
from edge_agent.acks import Central
from edge_agent.commands import CommandExecutor
from edge_agent.config import DeviceConfig, GatewayConfig
from edge_agent.drivers import create_driver
from edge_agent.drivers.base import DeviceUnreachable, Driver, Reading
from edge_agent.outbox import Outbox, SequencedMessage
from edge_agent.storage import Replacement

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600  # commands for an offline gateway wait this long at most
MIN_HEARTBEAT_S = 2.0             # a fast poll must not turn presence into a flood
AGENT_EVENT_DEVICE = "agent"      # device segment of events about the agent itself (config_*)


class Agent:
    def __init__(self, config: GatewayConfig) -> None:
        self.file_config = config
        # First: an unusable data_dir is one error line, before anything else reads or logs about it.
        self.outbox = Outbox(config.data_path / "agent.db", max_messages=config.outbox.max_messages,
                             max_age_s=config.outbox.max_age_s)
        self.config_version: int | None = None  # None: running the config file's device list
        pushed = config_push.load_pushed(config)
        if pushed is not None:
            self.config_version, config = pushed
        self.config = config
        self.mqtt_url = parse_mqtt_url(config.mqtt)
        self.school, self.gateway = config.school, config.gateway
        self.boot = time.time()
        self.since = 0.0  # when the current MQTT connection began (set by _client)
        self.drivers: dict[str, Driver] = {dev.id: self._new_driver(dev) for dev in config.devices}
        self.locks = {d: asyncio.Lock() for d in self.drivers}
        self.status: dict[str, str] = {d: "starting" for d in self.drivers}
        self.pending = asyncio.Event()        # set when the outbox has something new
        self.poll_soon: dict[str, asyncio.Event] = {}  # device -> set to read it now instead of at its next poll
        self.commands = CommandExecutor(self.outbox, self.school, self.gateway, self.drivers, self.locks,
                                        on_result=self._command_finished)
        self.state_changed = asyncio.Event()
        self.outbox.on_change = self.state_changed.set  # storage status, or a new outbox instance
        self.outbox.on_replaced.append(self._outbox_replaced)
        self._announced_instance: int | None = None  # the outbox instance central was last told of
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.published = 0
        # Central's presence and acknowledgements: when the drain may publish, what to send again.
        self.central = Central(self.outbox, config.outbox.ack_timeout_s, wake_drain=self.pending.set,
                               came_back=self.state_changed.set)
        # `state` is republished this often, so central can call a gateway that
        # is silent for 3 heartbeats offline even when its devices send nothing.
        self.heartbeat = max(MIN_HEARTBEAT_S, config.poll_interval)
        self._tasks: asyncio.TaskGroup | None = None
        self.pollers: dict[str, asyncio.Task[None]] = {}
        self._reconfigure = asyncio.Lock()
        self._refused: bytes | None = None  # the last refused payload, reported once

    def _new_driver(self, dev: DeviceConfig) -> Driver:
        options = dict(dev.options)
        if dev.profile_obj.kind == "card_reader":
            options.setdefault("secret", self.file_config.card_secret)
        return create_driver(dev.id, dev.profile_obj, dev.address, options)

    # ------------------------------------------------------------ scheduler

    def _command_finished(self, device_id: str, status: str) -> None:
        self.pending.set()  # the result is in the outbox: publish it now
        if status == "done" and device_id in self.poll_soon:
            # The device changed: read it now, so the panel shows "warming" in a moment,
            # not at the next poll (5 s by default).
            self.poll_soon[device_id].set()

    async def poll_device(self, device_id: str) -> None:
        dev = self.config.device(device_id)
        assert dev is not None
        interval = self.config.interval_for(dev)
        driver = self.drivers[device_id]
        loop = asyncio.get_running_loop()
        soon = self.poll_soon.setdefault(device_id, asyncio.Event())
        next_at = loop.time()
        while True:
            raise_if_cancelled()  # a driver's library may have swallowed the stop (see campus.aio)
            soon.clear()
            try:
                async with self.locks[device_id]:
                    async with asyncio.timeout(max(interval, 5.0)):
                        reading = await driver.read()
                self._set_status(device_id, "ok")
                self.record(device_id, reading)
            except DeviceUnreachable as exc:
                self._set_status(device_id, "offline", exc)
            except (DeviceError, TimeoutError) as exc:
                self._set_status(device_id, "fault", exc)
            except Exception as exc:  # a driver bug must not stop the other devices
                log.exception("driver %s crashed", device_id)
                self._set_status(device_id, "fault", exc)
            next_at += interval
            now = loop.time()
            if next_at < now:  # fell behind (slow device): skip, do not burst
                next_at = now + interval
            if await wait_event(soon, next_at - now):  # a command changed the device: read it now, then every interval from here
                next_at = loop.time()

    def _set_status(self, device_id: str, status: str, exc: BaseException | None = None) -> None:
        if self.status.get(device_id) != status:
            if exc is not None:
                log.warning("%s is %s: %s", device_id, status, exc or type(exc).__name__)
            else:
                log.info("%s is %s", device_id, status)
            self.status[device_id] = status
            self.state_changed.set()

    def record(self, device_id: str, reading: Reading) -> list[int]:
        """Commit one reading (telemetry and events) to the outbox."""
        now = time.time()
        msgs: list[SequencedMessage] = []
        if reading.values:
            values = dict(reading.values)
            msgs.append((contract.telemetry_topic(self.school, self.gateway, device_id),
                         lambda seq, v=values: Telemetry(seq, now, v).encode()))
        for ev in reading.events:
            msgs.append((contract.event_topic(self.school, self.gateway, device_id),
                         lambda seq, e=ev: Event(seq, e.ts or now, e.type, e.data).encode()))
        seqs = self.outbox.add(sequenced=msgs) if msgs else []
        if seqs:
            self.pending.set()
        return seqs

    # ------------------------------------------------------------ MQTT link

    def state(self, online: bool = True) -> State:
        replaced = self.outbox.replaced
        return State(online=online, ts=time.time(), agent=campus.__version__, boot=self.boot, since=self.since,
                     room=self.config.room, building=self.config.building,
                     devices={d: {"profile": drv.profile.name, "kind": drv.profile.kind,
                                  "status": self.status.get(d, "starting") if online else "offline"}
                              for d, drv in self.drivers.items()},
                     interval=self.heartbeat, config_version=self.config_version,
                     outbox=self.outbox.figures(), storage=self.outbox.health.as_dict(),
                     outbox_replaced=replaced.as_dict() if replaced is not None else None)

    def _client(self) -> aiomqtt.Client:
        url = self.mqtt_url
        v5 = url.protocol == "5"
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.since = time.time()  # this connection's: in the Will and in every state sent on it
        will = aiomqtt.Will(contract.state_topic(self.school, self.gateway), self.state(online=False).encode(),
                            qos=1, retain=True)
        return aiomqtt.Client(
            url.host, url.port, username=url.username, password=url.password,
            identifier=contract.agent_client_id(self.school, self.gateway),
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            # A persistent session: commands sent while we are offline wait for us.
            clean_session=None if v5 else False,
            clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY, properties=props,
            will=will, keepalive=15, timeout=10, tls_context=tls_context(url),
            max_inflight_messages=self.config.outbox.inflight)

    async def run_link(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with self._client() as client:
                    # Ack commands only after they are journaled (see commands.py); a command's ack, then
                    # its result, without waiting (no_delay).
                    campus.mqtt.manual_acks(client)
                    self.client = client
                    self.connected.set()
                    backoff = 0.5
                    log.info("connected to %s", self.mqtt_url)
                    self.central.connected()  # send again what is unacknowledged; wait for central's presence
                    await self._send_state(client)
                    await client.subscribe(contract.agent_cmd_filter(self.school, self.gateway), qos=1)
                    await client.subscribe(contract.config_topic(self.school, self.gateway), qos=1)
                    await client.subscribe(contract.ack_topic(self.school, self.gateway), qos=1)
                    await client.subscribe(contract.ingest_states_filter(), qos=1)
                    try:
                        async with asyncio.TaskGroup() as tg:
                            tg.create_task(self._drain(client))
                            tg.create_task(self._receive(client))
                            tg.create_task(self._publish_state(client))
                            tg.create_task(self.central.watch())
                    except asyncio.CancelledError:
                        # A clean stop sends no Will: say we are going offline ourselves.
                        with contextlib.suppress(Exception):
                            await client.publish(contract.state_topic(self.school, self.gateway),
                                                 self.state(online=False).encode(), qos=1, retain=True, timeout=2)
                        raise
            except* aiomqtt.MqttError as group:
                # One clear line: a bad certificate or a refused login named as such.
                log.warning("MQTT link to %s %s: %s; retrying in %.1fs", self.mqtt_url,
                            "lost" if self.connected.is_set() else "failed",
                            campus.mqtt.explain_connect_error(group.exceptions[0]), backoff)
            finally:
                self.client = None
                self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _send_state(self, client: aiomqtt.Client) -> None:
        state = self.state()
        await client.publish(contract.state_topic(self.school, self.gateway), state.encode(), qos=1, retain=True)
        self._announced_instance = state.outbox.get("instance")

    async def _publish_state(self, client: aiomqtt.Client) -> None:
        while True:
            await wait_event(self.state_changed, self.heartbeat)
            self.state_changed.clear()
            await self._send_state(client)
            raise_if_cancelled()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                worker = contract.parse_ingest_state_topic(message.topic.value)
                if worker is not None:
                    self.central.presence(worker, _payload(message))
                    continue
                topic = contract.parse_topic(message.topic.value)
                if topic.kind == contract.KIND_ACK and topic.gateway == self.gateway and topic.school == self.school:
                    self.central.acknowledged(_payload(message))
                elif topic.kind == contract.KIND_CMD and topic.gateway == self.gateway and topic.device:
                    payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                    self.commands.receive(topic.device, payload)
                    self.pending.set()
                elif (topic.kind == contract.KIND_CONFIG and topic.gateway == self.gateway
                      and topic.school == self.school):
                    payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                    if payload and self._tasks is not None:  # an empty retained message clears the topic
                        self._tasks.create_task(self.apply_pushed_config(payload))
            except contract.PayloadError as exc:
                log.warning("ignored message on %s: %s", message.topic.value, exc)
            finally:
                campus.mqtt.ack(client, message)

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish the outbox oldest first, `inflight` at a time, at most `drain_rate`/s, while central is online."""
        rate = self.config.outbox.drain_rate
        batch = self.config.outbox.inflight
        loop = asyncio.get_running_loop()
        while True:
            if not self.central.online.is_set():
                await wait_event(self.central.online, 5.0)
                self.outbox.expire()  # the bounds hold while we wait
                continue
            rows = self.outbox.peek(batch)
            if not rows:
                self.pending.clear()
                await wait_event(self.pending, 5.0)
                self.outbox.expire()
                continue
            if self.outbox.instance != self._announced_instance:
                # The outbox was replaced while running: central must hear of the new instance before
                # its first numbers, or it takes them for redeliveries of the old ones.
                self.state_changed.clear()
                await self._send_state(client)
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
            spare = len(rows) / rate - (loop.time() - started)
            if spare > 0:
                await asyncio.sleep(spare)

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        log.info("agent %s/%s starting with %d devices; outbox holds %d", self.school, self.gateway,
                 len(self.drivers), len(self.outbox))
        if self.outbox.replaced_now is not None:
            self._outbox_replaced(self.outbox.replaced_now)
        for device in self.commands.open_devices() - set(self.drivers):
            self.commands.forget_device(device, "the device is no longer in this gateway's config")
        self.commands.recover()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                tg.create_task(self.run_link())
                for device_id in self.drivers:
                    self._start_poller(device_id)
                    self._start_worker(device_id)
        finally:
            self._tasks = None
            await self.close()

    def _start_poller(self, device_id: str) -> None:
        assert self._tasks is not None
        self.pollers[device_id] = self._tasks.create_task(self.poll_device(device_id))

    def _start_worker(self, device_id: str) -> None:
        self.commands.start(device_id, self._spawn)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._tasks is not None
        return self._tasks.create_task(coro)

    # ------------------------------------------------------------ config push

    def _outbox_replaced(self, replacement: Replacement) -> None:
        """A damaged outbox was set aside: say so through the new one (its first numbers)."""
        self.record_agent_event("outbox_replaced", replacement.as_dict())
        self.state_changed.set()

    def record_agent_event(self, type_: str, data: dict[str, Any]) -> None:
        """An event about the agent itself, through the outbox like any other."""
        now = time.time()
        self.outbox.add(sequenced=[(contract.event_topic(self.school, self.gateway, AGENT_EVENT_DEVICE),
                                    lambda seq: Event(seq, now, type_, data).encode())])
        self.pending.set()

    async def apply_pushed_config(self, payload: bytes) -> bool:
        """Apply a pushed device list if it is newer than the running one; True if applied."""
        async with self._reconfigure:
            version = config_push.pushed_version(payload)
            if version is not None and self.config_version is not None and version <= self.config_version:
                return False  # the retained message again (reconnect), or an older one
            if payload == self._refused:
                return False  # the same refused list again (reconnect): reported once already
            try:
                version, new = config_push.validate_pushed_config(self.file_config, payload)
                await self._swap_devices(version, new, payload)
            except CampusError as exc:
                self._refuse(payload, version, str(exc))
                return False
            except Exception as exc:  # never let a bad push take the agent down
                log.exception("applying pushed config v%s failed", version)
                self._refuse(payload, version, f"internal error: {type(exc).__name__}: {exc}")
                return False
            return True

    def _refuse(self, payload: bytes, version: int | None, error: str) -> None:
        self._refused = payload
        running = f"v{self.config_version}" if self.config_version is not None else "the config file's list"
        log.error("pushed config %s refused, still running %s: %s",
                  f"v{version}" if version is not None else "(no version)", running, error)
        self.record_agent_event("config_rejected", {"version": version, "error": error[:1000],
                                                    "running": self.config_version})

    async def _swap_devices(self, version: int, new: GatewayConfig, payload: bytes) -> None:
        added, changed, removed = config_push.device_changes(self.config, new, set(self.drivers))
        wanted = {d.id: d for d in new.devices}
        # Every new driver first: a profile or address a driver refuses rejects the whole push.
        fresh: dict[str, Driver] = {}
        try:
            for dev_id in added + changed:
                try:
                    fresh[dev_id] = self._new_driver(wanted[dev_id])
                except (CampusError, ValueError) as exc:
                    raise ConfigError(f"device {dev_id}: {exc}") from None
            try:
                config_push.save_pushed(self.config, payload)
            except OSError as exc:
                # A full disk must not stop a push: the broker keeps the list (retained) and delivers it
                # again at the next connect; until then a restart runs the list saved before.
                log.warning("pushed config v%d applied but not saved (%s): a restart runs the previous list "
                            "until the broker delivers this one again", version, exc.strerror or exc)
        except BaseException:
            for driver in fresh.values():
                with contextlib.suppress(Exception):
                    await driver.close()
            raise
        for dev_id in removed:
            await self._remove_device(dev_id, f"device removed from the gateway config (v{version})")
        for dev_id in changed:
            await self._replace_driver(dev_id, fresh[dev_id])
        self.config, self.config_version = new, version
        for dev_id in added:
            self.locks[dev_id] = asyncio.Lock()
            self.status[dev_id] = "starting"
            self.drivers[dev_id] = fresh[dev_id]
            self._start_worker(dev_id)
        for dev_id in changed + added:
            self._start_poller(dev_id)
        self._refused = None
        log.info("applied pushed config v%d: %d devices (added %s, changed %s, removed %s)", version,
                 len(self.drivers), added or "-", changed or "-", removed or "-")
        self.record_agent_event("config_applied", {"version": version, "added": added, "changed": changed,
                                                   "removed": removed})
        self.state_changed.set()

    async def _stop_poller(self, device_id: str) -> None:
        task = self.pollers.pop(device_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _replace_driver(self, device_id: str, driver: Driver) -> None:
        """Same device id, new settings: the command worker and its queue stay."""
        await self._stop_poller(device_id)
        async with self.locks[device_id]:  # a command running on the old driver finishes first
            old, self.drivers[device_id] = self.drivers[device_id], driver
            self.status[device_id] = "starting"
        with contextlib.suppress(Exception):
            await old.close()

    async def _remove_device(self, device_id: str, reason: str) -> None:
        await self._stop_poller(device_id)
        async with self.locks[device_id]:  # a command running on it finishes first
            await self.commands.stop(device_id)
            driver = self.drivers.pop(device_id)
            self.status.pop(device_id, None)
        self.locks.pop(device_id, None)
        self.commands.remove(device_id, reason)
        with contextlib.suppress(Exception):
            await driver.close()

    async def close(self) -> None:
        for driver in self.drivers.values():
            with contextlib.suppress(Exception):
                await driver.close()
        self.outbox.close()


def _payload(message: aiomqtt.Message) -> bytes:
    return message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()


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

