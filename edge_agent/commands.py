"""The agent's command executor: every command runs at most once, never late.

A command is journaled (SQLite, in the outbox's database) before the MQTT
message is acknowledged, so a redelivery after a crash or reconnect finds
it and answers with the first result instead of running it again. Commands
wait in a queue per device and run in order (a projector warming up takes
the next command after it is done); different devices run concurrently.
The deadline is checked on arrival and again just before running. Results
go out through the outbox with a seq of their own, so they survive a broker
outage, and a broker that forgets them, too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from campus import contract
from campus.aio import raise_if_cancelled
from campus.contract import Command, CommandResult
from campus.errors import ActionRejected, DeviceError, PayloadError
from edge_agent.drivers.base import Driver
from edge_agent.outbox import Outbox

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    payload BLOB NOT NULL,
    state TEXT NOT NULL,          -- queued | running | done | failed | rejected | expired
    detail TEXT NOT NULL DEFAULT '',
    received REAL NOT NULL,
    finished REAL
);
"""
# How long a command may take on the device at most, whatever its deadline.
MAX_RUN_S = 60.0


@dataclass
class _Job:
    command: Command
    device: str


class CommandExecutor:
    def __init__(self, outbox: Outbox, school: str, gateway: str, drivers: dict[str, Driver],
                 locks: dict[str, asyncio.Lock], clock: Callable[[], float] = time.time,
                 on_result: Callable[[str, str], None] = lambda device, status: None) -> None:
        self.outbox = outbox
        self.db = outbox.db
        self.db.executescript(SCHEMA)
        self.school, self.gateway = school, gateway
        self.drivers = drivers
        self.locks = locks
        self.clock = clock
        # Wakes the MQTT link: a result must not wait for the next poll's telemetry.
        self.on_result = on_result
        self.queues: dict[str, asyncio.Queue[_Job]] = {d: asyncio.Queue() for d in drivers}
        self.executed: dict[str, int] = {}  # action runs per command id, for tests and audits

    # ------------------------------------------------------------ arrival

    def receive(self, device: str, payload: bytes) -> None:
        """Journal (or answer) one command message. Called before the MQTT ack."""
        try:
            cmd = Command.decode(payload)
        except PayloadError as exc:
            cid = _salvage_id(payload)
            log.warning("command for %s rejected: %s", device, exc)
            if cid is not None and not self._known(cid):
                self._journal(cid, device, payload, "queued")
                self._finish(cid, device, "rejected", str(exc))
            return
        row = self.db.execute("SELECT state, detail, finished FROM commands WHERE id=?", (cmd.id,)).fetchone()
        if row is not None:
            state, detail, finished = row
            log.info("command %s delivered again (state %s): not run again", cmd.id, state)
            if state in contract.FINAL_COMMAND_STATUSES:
                # Answer again with the first result: the sender may have missed it.
                at = finished or self.clock()
                self.outbox.add(sequenced=[(contract.cmd_result_topic(self.school, self.gateway, device),
                                            lambda seq: CommandResult(cmd.id, state, detail, at, seq).encode())])
            return
        self._journal(cmd.id, device, payload, "queued")
        if device not in self.drivers:
            self._finish(cmd.id, device, "rejected", f"no device {device!r} on gateway {self.gateway}")
        elif cmd.deadline <= self.clock():
            self._finish(cmd.id, device, "expired", "arrived after its deadline")
        else:
            self.queues[device].put_nowait(_Job(cmd, device))

    def _known(self, cid: str) -> bool:
        return self.db.execute("SELECT 1 FROM commands WHERE id=?", (cid,)).fetchone() is not None

    def _journal(self, cid: str, device: str, payload: bytes, state: str) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT INTO commands (id, device, payload, state, received) VALUES (?, ?, ?, ?, ?)",
                            (cid, device, payload, state, self.clock()))

    def _finish(self, cid: str, device: str, status: str, detail: str) -> None:
        now = self.clock()

        def record(db: sqlite3.Connection) -> None:
            db.execute("UPDATE commands SET state=?, detail=?, finished=? WHERE id=?", (status, detail, now, cid))

        # Sequenced like telemetry, so central's acknowledgement covers it: a result the broker lost is sent again.
        self.outbox.add(sequenced=[(contract.cmd_result_topic(self.school, self.gateway, device),
                                    lambda seq: CommandResult(cid, status, detail, now, seq).encode())],
                        also=record)
        self.on_result(device, status)
        log.info("command %s on %s: %s %s", cid, device, status, detail)

    def recover(self) -> None:
        """After a restart: requeue commands never started; fail the interrupted ones."""
        rows = self.db.execute("SELECT id, device, payload, state FROM commands WHERE state IN ('queued', 'running')"
                               " ORDER BY received").fetchall()
        for cid, device, payload, state in rows:
            if state == "running":
                # It may or may not have reached the device: never run it twice.
                self._finish(cid, device, "failed", "agent restarted while the command was running")
                continue
            cmd = Command.decode(payload)
            if cmd.deadline <= self.clock():
                self._finish(cid, device, "expired", "deadline passed while the agent was down")
            else:
                self.queues[device].put_nowait(_Job(cmd, device))

    # ------------------------------------------------------------ running

    async def run_device(self, device: str) -> None:
        """Worker for one device's queue; runs until cancelled."""
        queue = self.queues[device]
        while True:
            job = await queue.get()
            await self._run(job)
            raise_if_cancelled()  # a driver's library may have swallowed the stop (see campus.aio)

    async def _run(self, job: _Job) -> None:
        cmd, device = job.command, job.device
        remaining = cmd.deadline - self.clock()
        if remaining <= 0:
            self._finish(cmd.id, device, "expired", "deadline passed while waiting for the device")
            return
        driver = self.drivers[device]
        try:
            driver.validate_action(cmd.action, cmd.params)
        except ActionRejected as exc:
            self._finish(cmd.id, device, "rejected", str(exc))
            return
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("UPDATE commands SET state='running' WHERE id=?", (cmd.id,))
        self.executed[cmd.id] = self.executed.get(cmd.id, 0) + 1
        try:
            async with self.locks[device]:
                async with asyncio.timeout(min(remaining, MAX_RUN_S)):
                    detail = await driver.execute(cmd.action, cmd.params)
            status = "done"
        except ActionRejected as exc:
            status, detail = "rejected", str(exc)
        except DeviceError as exc:
            status, detail = "failed", str(exc)
        except TimeoutError:
            status, detail = "failed", "the device did not confirm before the deadline"
        except Exception as exc:  # a driver bug must not kill the worker
            log.exception("driver %s failed on %s", device, cmd.action)
            status, detail = "failed", f"internal error: {type(exc).__name__}"
        self._finish(cmd.id, device, status, detail or "")


def _salvage_id(payload: bytes) -> str | None:
    """The `id` of a malformed command, if one can be read, to answer `rejected`."""
    try:
        cid = json.loads(payload).get("id")
    except Exception:
        return None
    return cid if isinstance(cid, str) and 0 < len(cid) <= 64 else None
