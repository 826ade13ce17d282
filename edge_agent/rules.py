"""The room's own rules, decided on the gateway (offline too): idle-off and the teacher's period override.

Idle-off ("off after M minutes with people_count 0 and no command"): the room's cameras count people;
once every camera has counted nobody for M minutes running, no command (panel, podium, schedule) ran
in the room in that time, and a projector or display is on, the gateway switches those off through the
command executor (`run_local`: journaled, queued behind the device's other commands, at most once) and
reports one `rule_run` event (contract.RULE_RUN_EVENT) through the outbox. A camera in fault, silent, or
reading without a count is not "nobody there": missing data restarts the wait, it never switches
anything off (a camera unplugged at 10:00 must not darken a lesson at 10:20).

The decision itself is `IdleWatch`: no I/O, its clock handed in, so the agent and the school-week
benchmark (bench/school_week.py) run the same code.

At most once, like the schedules (edge_agent/schedules.py): a run is claimed in the outbox's database
(`rule_runs`, keyed by rule and planned time: the moment the condition was met) before its first step,
and its report is queued in the same transaction that marks it reported; a run claimed but never
reported (the agent stopped mid-run) is reported `interrupted` at the next start, never run again.
After a restart the watch starts afresh: the gateway knows nothing of the minutes it was down, and not
knowing is not "nobody there".

The override: a teacher's "keep on for this period" reaches the gateway as a gateway-level command
(contract.RULES_DEVICE, action `override`, params `until`), kept in the outbox's database (a restart
keeps it); until then idle-off does not act and power-off schedule runs are reported `skipped`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from campus import contract
from campus.contract import Event
from campus.errors import ActionRejected, DeviceError
from campus.i18n import LazyText, lazy_gettext
from device_profiles.config import GatewayConfig, PlannedRun
from edge_agent.commands import CommandExecutor
from edge_agent.outbox import Outbox

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS rule_runs (rule TEXT NOT NULL, planned REAL NOT NULL, state TEXT NOT NULL,
                                      PRIMARY KEY (rule, planned));
CREATE TABLE IF NOT EXISTS rule_state (key TEXT PRIMARY KEY, value REAL NOT NULL);
"""
SWITCHED_KINDS = ("projector", "display")  # what idle-off switches off
PEOPLE_METRIC = "people_count"
ON_STATES = ("on", "warming")              # a `power` reading that counts as on
STALE_POLLS = 3        # a camera silent for this many of its poll intervals has no data (not "nobody")
STEP_WITHIN_S = 120.0  # a projector may be warming up before it takes power_off
MAX_TICK_S = 5.0       # the longest wait between two looks at the room
OVERRIDE_MAX_S = 24 * 3600.0  # an override holds a period, a day at the very most
KEEP_S = 60 * 86400.0


@dataclass
class IdleWatch:
    """Whether idle-off is due: every camera counted 0 for `minutes` (of `minute_s` seconds) running, no
    command in that time, something on. Pure: the caller hands in the time, the counts and the commands."""

    minutes: float
    minute_s: float = 60.0
    stale_s: float = 15.0                     # a camera's count older than this is no count
    cameras: tuple[str, ...] = ()
    idle_since: dict[str, float | None] = field(default_factory=dict)  # camera -> when its 0s began
    seen: dict[str, float] = field(default_factory=dict)               # camera -> its last count's time
    last_command: float = -math.inf

    def count(self, now: float, camera: str, people: int | float | None) -> None:
        """One reading of a camera: its people_count, or None (no count: fault, no frame yet)."""
        if people is None or (isinstance(people, float) and math.isnan(people)):
            self.idle_since[camera] = None
            self.seen.pop(camera, None)
            return
        last = self.seen.get(camera)
        if last is not None and now - last > self.stale_s:
            self.idle_since[camera] = None  # a gap in the data: the 0s before it do not count
        self.seen[camera] = now
        if people > 0:
            self.idle_since[camera] = None
        elif self.idle_since.get(camera) is None:
            self.idle_since[camera] = now

    def command(self, now: float) -> None:
        """A command ran in the room (someone is acting here): the wait starts again."""
        self.last_command = max(self.last_command, now)

    def since(self, now: float) -> float | None:
        """Since when the room has been empty with no command, by every camera's fresh data; None if not."""
        if not self.cameras:
            return None
        starts = []
        for camera in self.cameras:
            began, seen = self.idle_since.get(camera), self.seen.get(camera)
            if began is None or seen is None or now - seen > self.stale_s:
                return None
            starts.append(began)
        return max(*starts, self.last_command)

    def due(self, now: float, anything_on: bool) -> float | None:
        """The planned time of an idle-off due now (the moment the condition was met), else None."""
        start = self.since(now)
        if start is None or not anything_on:
            return None
        at = start + self.minutes * self.minute_s
        return at if now >= at else None


class EdgeRules:
    """The room's rules on the gateway: watches readings and commands, switches off, keeps the override."""

    def __init__(self, outbox: Outbox, commands: CommandExecutor, config: Callable[[], GatewayConfig], *,
                 wake_drain: Callable[[], None], clock: Callable[[], float] = time.time) -> None:
        """`config()`: the running gateway config (a push may change the rules or the devices at any time)."""
        self.outbox, self.commands, self.config = outbox, commands, config
        self.wake_drain, self.clock = wake_drain, clock
        outbox.extend_schema(SCHEMA)
        self.power: dict[str, str] = {}  # device -> its last `power` reading
        self.watch: IdleWatch | None = None
        self._watch_key: tuple[Any, ...] = ()
        self._watch_config: GatewayConfig | None = None
        self.changed = asyncio.Event()  # a reading or a command: look at the room now

    # ------------------------------------------------------------ what the agent tells it

    def _watch(self) -> IdleWatch | None:
        """The watch for the running config: a new one when the rule, the scale or the cameras change."""
        config = self.config()
        if config is self._watch_config:  # the same running config (a push replaces the object): no change
            return self.watch
        self._watch_config = config
        minutes = config.rules.idle_off_minutes if config.rules is not None else None
        # The room's people counters: every device whose profile reads people_count (the cameras).
        cameras = tuple(d.id for d in config.devices if PEOPLE_METRIC in d.profile_obj.metrics)
        stale = max((config.interval_for(d) for d in config.devices if d.id in cameras), default=0.0)
        key = (minutes, config.rules_minute_s, cameras, stale)
        if key != self._watch_key:
            self._watch_key = key
            self.watch = None if minutes is None else IdleWatch(
                minutes, config.rules_minute_s, max(STALE_POLLS * stale, 1.0), cameras)
        return self.watch

    def observe(self, device: str, values: dict[str, Any]) -> None:
        """A device's reading (the pollers call it): a camera's count, a projector's power."""
        if isinstance(values.get("power"), str):
            self.power[device] = values["power"]
        watch = self._watch()
        if watch is not None and device in watch.cameras:
            people = values.get(PEOPLE_METRIC)
            watch.count(self.clock(), device, people if isinstance(people, int | float) else None)
            self.changed.set()

    def command_finished(self, device: str) -> None:
        """A command ran on a device of the room (any sender): the idle wait starts again."""
        if device == contract.RULES_DEVICE:
            return  # an override is not someone using the room's equipment
        watch = self._watch()
        if watch is not None:
            watch.command(self.clock())

    # ------------------------------------------------------------ the override (a gateway-level command)

    def validate_action(self, action: str, params: dict[str, Any]) -> None:
        if action != contract.OVERRIDE_ACTION:
            raise ActionRejected(lazy_gettext("the room's rules take only %(override)s, not %(action)s",
                                              override=repr(contract.OVERRIDE_ACTION), action=repr(action)))
        until = params.get("until")
        if set(params) != {"until"} or isinstance(until, bool) or not isinstance(until, int | float) \
                or not math.isfinite(until):
            raise ActionRejected(lazy_gettext("params.until: must be a unix time (a number)"))
        if until > self.clock() + OVERRIDE_MAX_S:
            raise ActionRejected(lazy_gettext("params.until: an override holds for a period, at most a day ahead"))

    async def execute(self, action: str, params: dict[str, Any]) -> str | LazyText:
        until = float(params["until"])
        if not self.outbox.write(lambda db: db.execute(
                "INSERT INTO rule_state (key, value) VALUES ('override_until', ?)"
                " ON CONFLICT (key) DO UPDATE SET value=excluded.value", (until,))):
            raise DeviceError(lazy_gettext("the gateway cannot write its storage: the override is not kept"))
        self.changed.set()
        if until <= self.clock():
            return lazy_gettext("override cleared")
        return lazy_gettext("kept on until %(time)s",
                            time=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until)))

    def override_until(self) -> float:
        """Until when a teacher's override holds (0: none was ever given)."""
        row = self.outbox.read(lambda db: db.execute(
            "SELECT value FROM rule_state WHERE key='override_until'").fetchone(), None)
        return float(row[0]) if row else 0.0

    def overridden(self, now: float | None = None) -> bool:
        return (self.clock() if now is None else now) < self.override_until()

    def skip_reason(self, run: PlannedRun) -> str | None:
        """Why a schedule run must not run (EdgeScheduler asks): a power-off while the override holds."""
        if any(s.action == "power_off" for s in run.steps) and self.overridden():
            return contract.OVERRIDE_REASON
        return None

    # ------------------------------------------------------------ running

    def _on_devices(self) -> list[str]:
        config = self.config()
        return [d.id for d in config.devices
                if d.profile_obj.kind in SWITCHED_KINDS and self.power.get(d.id) in ON_STATES]

    async def run(self) -> None:
        """Look at the room on every reading and command, and every few seconds; runs until cancelled."""
        self._report_interrupted()
        self.outbox.write(lambda db: db.execute(
            "DELETE FROM rule_runs WHERE planned < ? AND state != 'running'", (self.clock() - KEEP_S,)))
        while True:
            self.changed.clear()
            try:
                await self.check()
            except Exception:  # a bug here must not take the agent (its task group) down
                log.exception("rules: the room could not be checked")
            tick = min(MAX_TICK_S, self.config().rules_minute_s / 4)
            try:
                async with asyncio.timeout(tick):
                    await self.changed.wait()
            except TimeoutError:
                pass

    async def check(self) -> str | None:
        """Run idle-off if it is due now; its outcome (`ran`), or None if nothing was due."""
        watch = self._watch()
        if watch is None:
            return None
        now = self.clock()
        on = self._on_devices()
        planned = watch.due(now, bool(on))
        if planned is None or self.overridden(now):
            return None
        if not self._claim(contract.RULE_IDLE_OFF, planned):
            watch.command(now)  # taken before (or the storage refused it): not again for this stretch
            return None
        minutes = f"{watch.minutes:g}"
        reason = lazy_gettext("nobody in the room for %(minutes)s minutes and no command", minutes=minutes)
        log.info("rules: idle-off planned at %.0f: switching off %s (%s)", planned, ", ".join(on), reason)
        steps = await asyncio.gather(*(self._off(device) for device in on))
        watch.command(self.clock())
        self._report(contract.RULE_IDLE_OFF, planned, list(steps), reason, "ran")
        return "ran"

    async def _off(self, device: str) -> dict[str, Any]:
        status, detail = await self.commands.run_local(device, "power_off", {}, by=f"rule:{contract.RULE_IDLE_OFF}",
                                                       within_s=STEP_WITHIN_S)
        return {"device": device, "action": "power_off", "status": status,
                **contract.text_fields(detail, contract.STEP_DETAIL_CHARS)}

    # ------------------------------------------------------------ what is kept and reported

    def _claim(self, rule: str, planned: float) -> bool:
        claimed: list[bool] = []

        def body(db: sqlite3.Connection) -> None:
            cur = db.execute("INSERT OR IGNORE INTO rule_runs (rule, planned, state) VALUES (?, ?, 'running')",
                             (rule, planned))
            claimed.append(cur.rowcount == 1)

        return self.outbox.write(body) and claimed == [True]

    def _report(self, rule: str, planned: float, steps: list[dict[str, Any]], reason: LazyText, outcome: str
                ) -> None:
        now = self.clock()
        config = self.config()
        # The reason in English (every central before) and marked (campus/contract.py EVENT_TEXTS).
        data = {"rule": rule, "at": planned, "steps": steps, **contract.text_fields(reason, key="reason"),
                "outcome": outcome}
        self.outbox.add(
            sequenced=[(contract.event_topic(config.school, config.gateway, contract.RULES_DEVICE),
                        lambda seq: Event(seq, now, contract.RULE_RUN_EVENT, data).encode())],
            also=lambda db: db.execute("UPDATE rule_runs SET state='reported' WHERE rule=? AND planned=?",
                                       (rule, planned)))
        self.wake_drain()

    def _report_interrupted(self) -> None:
        rows = self.outbox.read(lambda db: db.execute(
            "SELECT rule, planned FROM rule_runs WHERE state='running'").fetchall(), [])
        for rule, planned in rows:
            self._report(rule, float(planned), [], lazy_gettext("the gateway stopped during the run"), "interrupted")
