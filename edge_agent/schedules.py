"""Central's schedules, run by the gateway on its own clock (offline too).

Central compiles a room's schedules into planned runs (schedule id, unix time, actions on this
gateway's devices; central/edge_schedules.py) and pushes them with the device list (`schedules` in
the gateway config). The gateway needs no timetable: it keeps time. So a gateway cut off from central
at 22:00 still switches its projector off at 22:00.

Each run goes through the command executor (`run_local`: journaled, queued behind the device's other
commands, at most once) and is reported once through the outbox as a `schedule_run` event
(contract.SCHEDULE_RUN_EVENT) with the schedule id, the planned time and each step's result.

At most once, kept in the outbox's database (`schedule_runs`, keyed by schedule and planned time): a
run is claimed there before its first step, and its report is queued in the same transaction that
marks it reported. A run found late (the agent was down at its time) still runs once if within the
grace window, else it is reported `missed`; a run claimed but never reported (the agent stopped
mid-run) is reported `interrupted` at the next start (its commands were answered by the executor's
own recovery), never run again. While a teacher's override holds (edge_agent/rules.py) a power-off run
is reported `skipped` with reason `override` instead of run.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from campus import contract
from campus.contract import Event
from campus.i18n import lazy_gettext
from device_profiles.config import GatewayConfig, PlannedRun
from edge_agent.commands import CommandExecutor
from edge_agent.outbox import Outbox

log = logging.getLogger(__name__)

SCHEMA = ("CREATE TABLE IF NOT EXISTS schedule_runs (schedule INTEGER NOT NULL, planned REAL NOT NULL,"
          " state TEXT NOT NULL, PRIMARY KEY (schedule, planned));")
STEP_WITHIN_S = 120.0   # a projector may be cooling down before it takes the next command
KEEP_S = 60 * 86400.0   # journal rows older than this go (central plans a few weeks ahead at most)
RECHECK_S = 30.0        # the longest sleep: a wall clock set by NTP, or a new push, is seen within it


class EdgeScheduler:
    def __init__(self, outbox: Outbox, commands: CommandExecutor, config: Callable[[], GatewayConfig], *,
                 wake_drain: Callable[[], None], clock: Callable[[], float] = time.time,
                 skip: Callable[[PlannedRun], str | None] = lambda run: None) -> None:
        """`config()`: the running gateway config (a push replaces the planned runs at any time); `skip(run)`:
        why a due run must not run (a teacher's override holds: edge_agent/rules.py), None to run it."""
        self.outbox, self.commands, self.config = outbox, commands, config
        self.skip = skip
        self.wake_drain, self.clock = wake_drain, clock
        outbox.extend_schema(SCHEMA)
        self.changed = asyncio.Event()  # set by a config push: look at the new plan now

    async def run(self) -> None:
        """Run each planned run at its time; runs until cancelled."""
        self._report_interrupted()
        self.prune(self.clock() - KEEP_S)
        while True:
            self.changed.clear()  # before looking: a push landing while runs run wakes the next wait
            try:
                await self.run_due()
            except Exception:  # a bug here must not take the agent (its task group) down
                log.exception("schedules: a planned run could not be handled")
            wait = self._next_in()
            try:
                async with asyncio.timeout(min(RECHECK_S, wait) if wait is not None else RECHECK_S):
                    await self.changed.wait()
            except TimeoutError:
                pass

    def _plan(self) -> tuple[list[PlannedRun], float]:
        plan = self.config().schedules
        return (list(plan.runs), plan.grace_s) if plan is not None else ([], 0.0)

    def _settled(self) -> set[tuple[int, float]]:
        rows = self.outbox.read(lambda db: db.execute("SELECT schedule, planned FROM schedule_runs").fetchall(), None)
        if rows is None:  # storage failing: run nothing rather than something twice
            raise RuntimeError("the schedule journal cannot be read")
        return {(int(s), float(p)) for s, p in rows}

    def _next_in(self) -> float | None:
        runs, _ = self._plan()
        try:
            settled = self._settled()
        except RuntimeError:
            return RECHECK_S
        # Only runs ahead: one past and unsettled (its claim refused by a failing disk) is tried again at
        # the next recheck, not in a busy loop.
        now = self.clock()
        future = [r.at for r in runs if r.at > now and (r.schedule, r.at) not in settled]
        return min(future) - now if future else None

    async def run_due(self) -> list[tuple[int, float, str]]:
        """Run (or report missed) every planned run whose time has come; (schedule, planned, outcome) of each."""
        runs, grace = self._plan()
        now = self.clock()
        settled = self._settled()
        due = sorted((r for r in runs if r.at <= now and (r.schedule, r.at) not in settled), key=lambda r: r.at)
        done = []
        for run in due:
            if now - run.at > grace:
                if self._claim(run, "missed"):
                    log.warning("schedules: %r planned at %.0f missed (%.0f s late, grace %.0f s)", run.name,
                                run.at, now - run.at, grace)
                    seconds = f"{now - run.at:.0f}"
                    late = contract.text_fields(lazy_gettext(
                        "the gateway was not running at the planned time (%(seconds)s s late)", seconds=seconds))
                    self._report(run, "missed", [{"device": s.device, "action": s.action, "status": "missed", **late}
                                                 for s in run.steps])
                    done.append((run.schedule, run.at, "missed"))
                continue
            reason = self.skip(run)
            if reason is not None:
                if self._claim(run, "running"):
                    log.info("schedules: %r planned at %.0f skipped (%s)", run.name, run.at, reason)
                    skipped = contract.text_fields(
                        lazy_gettext("not run: a teacher kept the room on for this period")
                        if reason == contract.OVERRIDE_REASON else reason)
                    self._report(run, contract.SCHEDULE_SKIPPED, [
                        {"device": s.device, "action": s.action, "status": "skipped", **skipped}
                        for s in run.steps], reason=reason)
                    done.append((run.schedule, run.at, contract.SCHEDULE_SKIPPED))
                continue
            if not self._claim(run, "running"):
                continue
            log.info("schedules: %r planned at %.0f runs", run.name, run.at)
            steps = await self._run_steps(run)
            self._report(run, "ran", steps)
            done.append((run.schedule, run.at, "ran"))
        return done

    async def _run_steps(self, run: PlannedRun) -> list[dict[str, Any]]:
        """Each device's steps in order, the devices at once (one slow projector holds up only itself)."""
        by_device: dict[str, list[int]] = {}
        for i, step in enumerate(run.steps):
            by_device.setdefault(step.device, []).append(i)
        results: dict[int, dict[str, Any]] = {}

        async def one_device(indexes: list[int]) -> None:
            for i in indexes:
                step = run.steps[i]
                status, detail = await self.commands.run_local(step.device, step.action, dict(step.params),
                                                               by=f"schedule:{run.schedule}", within_s=STEP_WITHIN_S)
                results[i] = {"device": step.device, "action": step.action, "status": status,
                              **contract.text_fields(detail, contract.STEP_DETAIL_CHARS)}

        await asyncio.gather(*(one_device(ix) for ix in by_device.values()))
        return [results[i] for i in range(len(run.steps))]

    # ------------------------------------------------------------ what is kept and reported

    def _claim(self, run: PlannedRun, state: str) -> bool:
        """Take the run (once, ever); False if it was taken before or the storage refused the write."""
        claimed: list[bool] = []

        def body(db: sqlite3.Connection) -> None:
            cur = db.execute("INSERT OR IGNORE INTO schedule_runs (schedule, planned, state) VALUES (?, ?, ?)",
                             (run.schedule, run.at, state))
            claimed.append(cur.rowcount == 1)

        return self.outbox.write(body) and claimed == [True]

    def _report(self, run: PlannedRun, outcome: str, steps: list[dict[str, Any]], reason: str = "") -> None:
        now = self.clock()
        config = self.config()
        data = {"schedule": run.schedule, "planned": run.at, "name": run.name, "outcome": outcome, "steps": steps,
                **({"reason": reason} if reason else {})}
        self.outbox.add(
            sequenced=[(contract.event_topic(config.school, config.gateway, contract.SCHEDULE_DEVICE),
                        lambda seq: Event(seq, now, contract.SCHEDULE_RUN_EVENT, data).encode())],
            also=lambda db: db.execute("UPDATE schedule_runs SET state='reported' WHERE schedule=? AND planned=?",
                                       (run.schedule, run.at)))
        self.wake_drain()

    def _report_interrupted(self) -> None:
        """Runs claimed but never reported (the agent stopped mid-run): reported once, not run again."""
        rows = self.outbox.read(lambda db: db.execute(
            "SELECT schedule, planned FROM schedule_runs WHERE state='running'").fetchall(), [])
        runs = {(r.schedule, r.at): r for r in self._plan()[0]}
        for schedule, planned in rows:
            run = runs.get((int(schedule), float(planned)))
            if run is None:  # no longer in the plan: reported without its steps
                run = PlannedRun.model_construct(schedule=int(schedule), at=float(planned), name="", steps=[])
            stopped = contract.text_fields(lazy_gettext("the gateway stopped during the run"))
            self._report(run, "interrupted", [{"device": s.device, "action": s.action, "status": "failed", **stopped}
                                              for s in run.steps])

    def prune(self, before: float) -> None:
        """Forget runs planned before `before` (the journal only has to outlive the plan that names them)."""
        self.outbox.write(lambda db: db.execute(
            "DELETE FROM schedule_runs WHERE planned < ? AND state != 'running'", (before,)))
