"""The card-authorised podium (刷卡授权): a swipe of an enrolled card starts or ends the class.

Decided here, on the gateway, so a room works with central unreachable: the allow-list (card
pseudonyms, never UIDs, with a role each) comes in the gateway config (`podium`, pushed by central),
and the scenes run through the command executor like any command (journaled, at most once, queued
behind the device's other commands). Each swipe's outcome goes to central through the outbox as one
`podium` event (contract.PODIUM_EVENT): the card's pseudonym, its role, `started`, `ended`,
`refused` (not enrolled) or `logged` (a role configured to open the room only, a cleaner), and each
scene step's result. A class nobody ends by a swipe ends by itself after `timeout_s`.

Whether a class is running is kept in the outbox's database, so an agent restarted mid-class still
ends it at its timeout (a gateway rebooted at 22:00 must not leave the projector on all night).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from campus import contract
from campus.contract import Event
from device_profiles.config import GatewayConfig, PodiumConfig, SceneStep
from edge_agent.commands import CommandExecutor
from edge_agent.drivers.base import DeviceEvent
from edge_agent.outbox import Outbox

log = logging.getLogger(__name__)

SCHEMA = "CREATE TABLE IF NOT EXISTS podium (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
SCENE_KINDS = ("projector", "display")  # the devices a default scene switches
STEP_WITHIN_S = 120.0  # a projector may cool down before it can power on again


def default_scenes(config: GatewayConfig, podium: PodiumConfig) -> tuple[list[SceneStep], list[SceneStep]]:
    """(start, end): every projector and display on, on its podium input (`podium.inputs`), unmuted; off."""
    start: list[SceneStep] = []
    end: list[SceneStep] = []
    for dev in config.devices:
        profile = dev.profile_obj
        if profile.kind not in SCENE_KINDS:
            continue
        start.append(SceneStep(device=dev.id, action="power_on"))
        if dev.id in podium.inputs and "select_input" in profile.actions:
            start.append(SceneStep(device=dev.id, action="select_input", params={"input": podium.inputs[dev.id]}))
        if "unmute" in profile.actions:
            start.append(SceneStep(device=dev.id, action="unmute"))
        end.append(SceneStep(device=dev.id, action="power_off"))
    return start, end


class Podium:
    def __init__(self, outbox: Outbox, commands: CommandExecutor, config: Callable[[], GatewayConfig], *,
                 wake_drain: Callable[[], None], clock: Callable[[], float] = time.time) -> None:
        """`config()`: the running gateway config (a push may change the allow-list at any time)."""
        self.outbox, self.commands, self.config = outbox, commands, config
        self.wake_drain, self.clock = wake_drain, clock
        outbox.extend_schema(SCHEMA)
        self.swipes: asyncio.Queue[tuple[str, str]] = asyncio.Queue()  # (card, reader), in order
        self.class_started: float | None = self._load()  # when the running class began, if one is

    # ------------------------------------------------------------ from the pollers

    def observe(self, device_id: str, events: list[DeviceEvent]) -> None:
        """A reading's events are in the outbox: queue its swipes (handled one at a time, in order)."""
        for ev in events:
            if ev.type == contract.CARD_SWIPE_EVENT and isinstance(ev.data.get("card"), str):
                self.swipes.put_nowait((ev.data["card"], device_id))

    # ------------------------------------------------------------ the podium's own task

    async def run(self) -> None:
        """Handle swipes and the class timeout; runs until cancelled."""
        while True:
            swipe: tuple[str, str] | None = None
            try:
                async with asyncio.timeout(self._timeout_in()):
                    swipe = await self.swipes.get()
            except TimeoutError:
                pass  # the class's time is up
            try:
                if swipe is not None:
                    await self.swipe(*swipe)
                elif (podium := self.config().podium) is not None and self.class_started is not None:
                    await self._end(podium, "", "", "timeout")
            except Exception:  # a bug here must not take the agent (its task group) down
                log.exception("podium: a swipe or the class timeout could not be handled")

    def _timeout_in(self) -> float | None:
        podium = self.config().podium
        if podium is None or self.class_started is None or not podium.timeout_s:
            return None
        return max(0.0, self.class_started + podium.timeout_s - self.clock())

    async def swipe(self, card: str, reader: str) -> str | None:
        """Decide one swipe; the outcome, or None when this gateway has no podium (or not on that reader)."""
        podium = self.config().podium
        if podium is None or (podium.readers and reader not in podium.readers):
            return None
        entry = podium.cards.get(card)
        if entry is None:
            log.info("podium: card %s… is not enrolled here: refused", card[:8])
            self._record(card, "", "refused", reader, [])
            return "refused"
        if entry.role in podium.log_only:
            log.info("podium: %s card %s… logged (the role opens the room only)", entry.role, card[:8])
            self._record(card, entry.role, "logged", reader, [])
            return "logged"
        if self.class_started is None:
            start, _ = self._scenes(podium)
            steps = await self._run_scene(start, card)
            self._set_started(self.clock())
            self._record(card, entry.role, "started", reader, steps)
            return "started"
        return await self._end(podium, card, entry.role, reader)

    async def _end(self, podium: PodiumConfig, card: str, role: str, reader: str) -> str:
        _, end = self._scenes(podium)
        steps = await self._run_scene(end, card or "timeout")
        self._set_started(None)
        self._record(card, role, "ended", reader, steps, reason="timeout" if not card else "swipe")
        return "ended"

    def _scenes(self, podium: PodiumConfig) -> tuple[list[SceneStep], list[SceneStep]]:
        start, end = default_scenes(self.config(), podium)
        return (podium.start if podium.start is not None else start), (podium.end if podium.end is not None else end)

    async def _run_scene(self, steps: list[SceneStep], card: str) -> list[dict[str, Any]]:
        """Each device's steps in order, the devices at once (a projector warming up holds up only itself)."""
        by_device: dict[str, list[SceneStep]] = {}
        for step in steps:
            by_device.setdefault(step.device, []).append(step)
        results: dict[int, dict[str, Any]] = {}

        async def one_device(device_steps: list[SceneStep]) -> None:
            for step in device_steps:
                status, detail = await self.commands.run_local(step.device, step.action, dict(step.params),
                                                               by=f"podium:{card[:8]}", within_s=STEP_WITHIN_S)
                results[id(step)] = {"device": step.device, "action": step.action, "status": status,
                                     **contract.text_fields(detail, contract.STEP_DETAIL_CHARS)}

        await asyncio.gather(*(one_device(s) for s in by_device.values()))
        return [results[id(step)] for step in steps]

    # ------------------------------------------------------------ what is kept and reported

    def _record(self, card: str, role: str, outcome: str, reader: str, steps: list[dict[str, Any]],
                **extra: str) -> None:
        now = self.clock()
        data = {"card": card, "role": role, "outcome": outcome, "reader": reader, "steps": steps, **extra}
        config = self.config()
        self.outbox.add(sequenced=[(contract.event_topic(config.school, config.gateway, contract.PODIUM_DEVICE),
                                    lambda seq: Event(seq, now, contract.PODIUM_EVENT, data).encode())])
        self.wake_drain()

    def _load(self) -> float | None:
        row = self.outbox.read(lambda db: db.execute("SELECT value FROM podium WHERE key='class'").fetchone(), None)
        try:
            return float(json.loads(row[0])["started"]) if row else None
        except (ValueError, KeyError, TypeError):
            return None

    def _set_started(self, started: float | None) -> None:
        self.class_started = started
        value = json.dumps({"started": started})
        if not self.outbox.write(lambda db: db.execute(
                "INSERT INTO podium (key, value) VALUES ('class', ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (value,))):
            log.warning("podium: the class state could not be saved (storage %s)", self.outbox.health.status)
