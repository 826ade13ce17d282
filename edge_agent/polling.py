"""Device polling: one poller per device reads it every interval and commits the reading to the outbox.

A reading becomes telemetry (its values) and events, committed to the outbox
in one transaction with their seqs (`Outbox.add`) before anything is
published; the drain (`drain.py`) is woken to send them. Each device's
`status` (`starting`, `ok`, `offline`, `fault`) is kept here for the
gateway's `state` (`presence.py`). A poller that falls behind (a slow
device) skips a turn instead of bursting, and a command that changed a
device asks for a read now (`read_soon`), so the panel shows "warming" in a
moment, not at the next poll.

The drivers and their locks are shared with the command executor (a read and
a command never run on one device at once) and changed by a config push
(`config_push.ConfigPush`), which stops and starts pollers here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from campus import contract, counters
from campus.aio import raise_if_cancelled, wait_event
from campus.contract import Event, Telemetry
from campus.errors import DeviceError
from campus.i18n import LazyText, lazy_gettext, message_of
from device_profiles.config import GatewayConfig
from edge_agent.commands import Spawn
from edge_agent.drivers.base import DeviceEvent, DeviceUnreachable, Driver, Reading
from edge_agent.outbox import Outbox, SequencedMessage

# The logger these lines had before the agent was split: log filters and alerts name it.
log = logging.getLogger("edge_agent.agent")


class Polling:
    def __init__(self, config: GatewayConfig, outbox: Outbox, drivers: dict[str, Driver],
                 locks: dict[str, asyncio.Lock], *, wake_drain: Callable[[], None],
                 status_changed: Callable[[], None],
                 on_events: Callable[[str, list[DeviceEvent]], None] | None = None,
                 on_values: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        """`wake_drain()` when a reading is in the outbox; `status_changed()` when a device's status changed;
        `on_events(device, events)` once a reading's events are in the outbox (the podium acts on swipes);
        `on_values(device, values)` with every reading's values, empty ones too (the room's rules)."""
        self.config = config  # the running config: a config push replaces it
        self.school, self.gateway = config.school, config.gateway
        self.outbox = outbox
        self.drivers, self.locks = drivers, locks
        self.wake_drain, self.status_changed = wake_drain, status_changed
        self.on_events, self.on_values = on_events, on_values
        self.status: dict[str, str] = {d: "starting" for d in drivers}
        # Why a device is in fault or offline: its driver's error, marked for translation (`State.device_details`).
        self.reasons: dict[str, str | LazyText] = {}
        self.poll_soon: dict[str, asyncio.Event] = {}  # device -> set to read it now instead of at its next poll
        self.pollers: dict[str, asyncio.Task[None]] = {}
        self.counter_last: dict[tuple[str, str], float] = {}  # (device, counter metric) -> its last reading

    # ------------------------------------------------------------ pollers coming and going

    def start(self, device_id: str, spawn: Spawn) -> None:
        self.pollers[device_id] = spawn(self.poll_device(device_id))

    async def stop(self, device_id: str) -> None:
        task = self.pollers.pop(device_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def starting(self, device_id: str) -> None:
        """A new or replaced driver: not read yet."""
        self.status[device_id] = "starting"

    def forget(self, device_id: str) -> None:
        self.status.pop(device_id, None)
        self.reasons.pop(device_id, None)

    def read_soon(self, device_id: str) -> None:
        """Read the device now (a command changed it), then every interval from there."""
        if device_id in self.poll_soon:
            self.poll_soon[device_id].set()

    def describe(self, online: bool) -> dict[str, dict[str, str]]:
        """The `devices` of the gateway's state: every device is `offline` when the gateway is."""
        return {d: {"profile": drv.profile.name, "kind": drv.profile.kind,
                    "status": self.status.get(d, "starting") if online else "offline"}
                for d, drv in self.drivers.items()}

    def details(self, online: bool) -> dict[str, dict[str, Any]]:
        """The `device_details` of the gateway's state: why each device in fault or offline is, in the words of
        its driver (a gateway offline says nothing of its devices)."""
        if not online:
            return {}
        # Within a budget, so that a gateway with many devices in fault still sends a state central takes
        # (contract.MAX_PAYLOAD_BYTES): a reason's marked text first goes, then the reason.
        out: dict[str, dict[str, Any]] = {}
        budget = contract.DEVICE_DETAILS_BYTES
        for d, reason in sorted(self.reasons.items()):
            if d not in self.drivers or self.status.get(d) not in ("fault", "offline"):
                continue
            fields = contract.text_fields(reason, contract.DEVICE_DETAIL_CHARS)
            for part in (fields, {"detail": fields["detail"]}):
                size = len(json.dumps(part, ensure_ascii=False).encode()) + len(d) + 8
                if size <= budget:
                    out[d], budget = part, budget - size
                    break
        return out

    # ------------------------------------------------------------ one device

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
            except DeviceError as exc:
                self._set_status(device_id, "fault", exc)
            except TimeoutError as exc:
                self._set_status(device_id, "fault", exc, lazy_gettext(
                    "%(device)s: no reading within %(seconds)ss", device=device_id, seconds=format(max(interval, 5.0), "g")))
            except Exception as exc:  # a driver bug must not stop the other devices
                log.exception("driver %s crashed", device_id)
                # Its type only: a bug's own words are for the log, not for a page.
                self._set_status(device_id, "fault", exc, lazy_gettext("internal error: %(error)s",
                                                                       error=type(exc).__name__))
            next_at += interval
            now = loop.time()
            if next_at < now:  # fell behind (slow device): skip, do not burst
                next_at = now + interval
            if await wait_event(soon, next_at - now):  # a command changed the device: read it now, then every interval from here
                next_at = loop.time()

    def _set_status(self, device_id: str, status: str, exc: BaseException | None = None,
                    reason: str | LazyText | None = None) -> None:
        """`reason`: what the state says of it (`details`); by default the message `exc` was raised with."""
        if exc is not None:
            self.reasons[device_id] = reason or message_of(exc) or type(exc).__name__
        else:
            self.reasons.pop(device_id, None)
        if self.status.get(device_id) != status:
            if exc is not None:
                log.warning("%s is %s: %s", device_id, status, exc or type(exc).__name__)
            else:
                log.info("%s is %s", device_id, status)
            self.status[device_id] = status
            self.status_changed()

    def _counter_resets(self, device_id: str, reading: Reading) -> list[DeviceEvent]:
        """An event for each counter (a meter's kWh) lower than at the last poll: the register was cleared or
        the meter replaced. The telemetry still carries the reading as it is; whoever sums the counter
        counts the step as a restart from 0 (campus/counters.py), and this event says why it happened."""
        out: list[DeviceEvent] = []
        for metric in contract.COUNTER_METRICS & reading.values.keys():
            value = reading.values[metric]
            if not isinstance(value, int | float):
                continue
            before = self.counter_last.get((device_id, metric))
            if before is not None and counters.is_reset(before, value):
                log.warning("%s: %s went down from %s to %s (reset or replaced)", device_id, metric, before, value)
                out.append(DeviceEvent(contract.COUNTER_RESET, {"metric": metric, "before": before, "after": value}))
            self.counter_last[(device_id, metric)] = value
        return out

    def record(self, device_id: str, reading: Reading) -> list[int]:
        """Commit one reading (telemetry and events) to the outbox."""
        now = time.time()
        msgs: list[SequencedMessage] = []
        events = reading.events + self._counter_resets(device_id, reading)
        if reading.values:
            values = dict(reading.values)
            msgs.append((contract.telemetry_topic(self.school, self.gateway, device_id),
                         lambda seq, v=values: Telemetry(seq, now, v).encode()))
        for ev in events:
            msgs.append((contract.event_topic(self.school, self.gateway, device_id),
                         lambda seq, e=ev: Event(seq, e.ts or now, e.type, e.data).encode()))
        seqs = self.outbox.add(sequenced=msgs) if msgs else []
        if seqs:
            self.wake_drain()
        if events and self.on_events is not None:
            self.on_events(device_id, events)
        if self.on_values is not None:
            self.on_values(device_id, reading.values)
        return seqs
