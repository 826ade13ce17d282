"""The agent's command executor: every command runs at most once, never late.

A command is journaled (SQLite, in the outbox's database) before the MQTT
message is acknowledged, so a redelivery after a crash or reconnect finds
it and answers with the first result instead of running it again. Commands
wait in a queue per device and run in order (a projector warming up takes
the next command after it is done); different devices run concurrently.
The deadline is checked on arrival and again just before running. Results
go out through the outbox with a seq of their own, so they survive a broker
outage, and a broker that forgets them, too.

When the storage refuses a write (disk full, see `outbox.py`) a command is
journaled in memory instead (`volatile`), which guards against redelivery
while the agent runs, and its result is held by the outbox. A command
journaled on disk as queued whose `running` mark cannot be written is not
run (`failed`): a restart would find it queued and run it a second time.

When the journal itself is lost (a damaged outbox replaced by a new file, a
new SD card) a redelivered command is unknown to the new journal although it
may have run. So an unknown command issued (`ts`, central's clock) before
the journal began (`Outbox.journal_since`) is answered `expired` and not
run; a command without `ts` (an older central) is not checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from campus import contract
from campus.aio import raise_if_cancelled
from campus.contract import Command, CommandResult
from campus.errors import ActionRejected, DeviceError, PayloadError
from campus.i18n import LazyText, lazy_gettext, message_of, text_from_dict
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

# Starts a task in the caller's task group (the agent's), so a worker stops with everything else.
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


# A result's detail: marked for translation where a person reads it (campus/contract.py `text_fields`: the
# result carries its msgid and params beside the English), or a plain text.
Detail = str | LazyText

# Answer to a command whose journal entry cannot be read (I/O error): running it could be running it twice.
_UNREADABLE = ("failed", lazy_gettext("not run: the gateway cannot read its command journal"), None)
# The journal keeps a marked detail as its JSON (so a redelivered command is answered in the same words).
_MARK = '{"msgid"'


def _stored(detail: Detail) -> str:
    return json.dumps(detail.as_dict(), ensure_ascii=False) if isinstance(detail, LazyText) else detail


def _loaded(detail: str) -> Detail:
    if detail.startswith(_MARK):
        try:
            return text_from_dict(json.loads(detail))
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    return detail


class GatewayHandler(Protocol):
    """A gateway-level command target (not a device: the room's rules, contract.RULES_DEVICE): it takes
    commands the way a driver does, so they are journaled, run at most once and answered like the rest."""

    def validate_action(self, action: str, params: dict[str, Any]) -> None: ...

    async def execute(self, action: str, params: dict[str, Any]) -> str | LazyText: ...


@dataclass
class _Job:
    command: Command
    device: str
    payload: bytes


@dataclass
class _Entry:
    """A journal entry the storage refused to write, kept in memory."""

    device: str
    payload: bytes
    state: str
    detail: Detail
    received: float
    finished: float | None = None


def _upsert(db: sqlite3.Connection, cid: str, device: str, payload: bytes, state: str, detail: Detail,
            received: float, finished: float | None) -> None:
    """Record a command's state; a command the journal lost (or never had) gets its row back."""
    db.execute("INSERT INTO commands (id, device, payload, state, detail, received, finished)"
               " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
               " SET state=excluded.state, detail=excluded.detail, finished=excluded.finished",
               (cid, device, payload, state, _stored(detail), received, finished))


class CommandExecutor:
    def __init__(self, outbox: Outbox, school: str, gateway: str, drivers: dict[str, Driver],
                 locks: dict[str, asyncio.Lock], clock: Callable[[], float] = time.time,
                 on_result: Callable[[str, str], None] = lambda device, status: None) -> None:
        self.outbox = outbox
        outbox.extend_schema(SCHEMA)
        self.school, self.gateway = school, gateway
        self.drivers = drivers
        self.locks = locks
        self.clock = clock
        # Wakes the MQTT link: a result must not wait for the next poll's telemetry.
        self.on_result = on_result
        self.queues: dict[str, asyncio.Queue[_Job]] = {d: asyncio.Queue() for d in drivers}
        self.workers: dict[str, asyncio.Task[None]] = {}  # device -> its worker, when started by `start`
        self.executed: dict[str, int] = {}  # action runs per command id, for tests and audits
        self.volatile: dict[str, _Entry] = {}  # journal entries the storage refused (disk full)
        self._waiters: dict[str, asyncio.Future[tuple[str, Detail]]] = {}  # local commands: id -> (status, detail)
        self.handlers: dict[str, GatewayHandler] = {}  # gateway-level targets (add_handler), not devices
        self._handler_locks: dict[str, asyncio.Lock] = {}

    def add_handler(self, name: str, handler: GatewayHandler) -> None:
        """Take commands for `name` (a contract device segment that is no device) with `handler`; its worker
        starts with `start(name, spawn)` like a device's."""
        self.handlers[name] = handler
        self._handler_locks[name] = asyncio.Lock()
        self.queues.setdefault(name, asyncio.Queue())

    def _target(self, device: str) -> tuple[Any, asyncio.Lock] | None:
        """The driver (or gateway-level handler) a command for `device` runs on, and its lock."""
        if device in self.handlers:
            return self.handlers[device], self._handler_locks[device]
        if device in self.drivers:
            return self.drivers[device], self.locks[device]
        return None

    @property
    def db(self) -> sqlite3.Connection:
        """The journal's database: the outbox's, whichever file that is now (it may have been replaced)."""
        return self.outbox.db

    # ------------------------------------------------------------ arrival

    def receive(self, device: str, payload: bytes) -> None:
        """Journal (or answer) one command message. Called before the MQTT ack."""
        try:
            cmd = Command.decode(payload)
        except PayloadError as exc:
            cid = _salvage_id(payload)
            log.warning("command for %s rejected: %s", device, exc)
            if cid is not None and self._lookup(cid) is None:
                self._journal(cid, device, payload)
                self._finish(cid, device, "rejected", message_of(exc))
            return
        known = self._lookup(cmd.id)
        if known is _UNREADABLE:
            self._answer(cmd.id, device, *known)
            return
        if known is not None:
            state, detail, finished = known
            log.info("command %s delivered again (state %s): not run again", cmd.id, state)
            if state in contract.FINAL_COMMAND_STATUSES:
                # Answer again with the first result: the sender may have missed it.
                self._answer(cmd.id, device, state, detail, finished)
            return
        self._journal(cmd.id, device, payload)
        if self._target(device) is None:
            self._finish(cmd.id, device, "rejected", lazy_gettext("no device %(device)s on gateway %(gateway)s",
                                                                  device=repr(device), gateway=self.gateway))
        elif cmd.deadline <= self.clock():
            self._finish(cmd.id, device, "expired", lazy_gettext("arrived after its deadline"))
        elif cmd.ts and cmd.ts < (since := self.outbox.journal_since):
            began = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
            self._finish(cmd.id, device, "expired", lazy_gettext(
                "not run: issued before this gateway's command journal began (%(began)s, a new outbox); "
                "it may have run already. Send it again if it is still wanted", began=began))
        else:
            self.queues[device].put_nowait(_Job(cmd, device, payload))

    def _answer(self, cid: str, device: str, state: str, detail: Detail, finished: float | None) -> None:
        """Answer a repeated command again with its first result (the sender may have missed it)."""
        at = finished or self.clock()
        self.outbox.add(sequenced=[(contract.cmd_result_topic(self.school, self.gateway, device),
                                    lambda seq: CommandResult.of(cid, state, detail, at, seq).encode())], hold=True)

    def _lookup(self, cid: str) -> tuple[str, Detail, float | None] | None:
        """(state, detail, finished) of a journaled command, None if unknown, _UNREADABLE if it cannot be told."""
        entry = self.volatile.get(cid)
        if entry is not None:
            return entry.state, entry.detail, entry.finished
        missing: Any = object()
        row = self.outbox.read(
            lambda db: db.execute("SELECT state, detail, finished FROM commands WHERE id=?", (cid,)).fetchone(),
            missing)
        if row is missing:
            return _UNREADABLE
        return (row[0], _loaded(row[1]), row[2]) if row is not None else None

    def _journal(self, cid: str, device: str, payload: bytes) -> None:
        now = self.clock()
        if not self.outbox.write(lambda db: db.execute(
                "INSERT OR IGNORE INTO commands (id, device, payload, state, received) VALUES (?, ?, ?, 'queued', ?)",
                (cid, device, payload, now))):
            self.volatile[cid] = _Entry(device, payload, "queued", "", now)

    def _mark_running(self, job: _Job) -> bool:
        """Record that the command starts; False if that cannot be recorded (then it must not run)."""
        cid, device = job.command.id, job.device
        entry = self.volatile.get(cid)
        if entry is not None:
            entry.state = "running"
            return True
        now = self.clock()
        return self.outbox.write(lambda db: _upsert(db, cid, device, job.payload, "running", "", now, None))

    def _finish(self, cid: str, device: str, status: str, detail: Detail) -> None:
        now = self.clock()
        entry = self.volatile.get(cid)
        if entry is not None:
            entry.state, entry.detail, entry.finished = status, detail, now
        payload, received = (entry.payload, entry.received) if entry is not None else (b"", now)

        def record(db: sqlite3.Connection) -> None:
            _upsert(db, cid, device, payload, status, detail, received, now)

        # Sequenced like telemetry, so central's acknowledgement covers it: a result the broker lost is sent
        # again. If the storage refuses this write, the outbox holds the result (and `record`) in memory.
        self.outbox.add(sequenced=[(contract.cmd_result_topic(self.school, self.gateway, device),
                                    lambda seq: CommandResult.of(cid, status, detail, now, seq).encode())],
                        also=record, hold=True)
        self.on_result(device, status)
        log.info("command %s on %s: %s %s", cid, device, status, detail)
        waiter = self._waiters.get(cid)
        if waiter is not None and not waiter.done():
            waiter.set_result((status, detail))

    async def run_local(self, device: str, action: str, params: dict[str, Any], by: str,
                        within_s: float = MAX_RUN_S) -> tuple[str, Detail]:
        """(status, detail) of an action the gateway decided itself (the podium's scenes).

        It goes the way a command from central goes: journaled, queued behind the device's other
        commands, run at most once, its result in the outbox. So a swipe and a teacher's panel
        command never run on one device at once, and central's command history sees both.
        """
        now = self.clock()
        cid = f"local-{uuid.uuid4().hex[:24]}"
        waiter: asyncio.Future[tuple[str, Detail]] = asyncio.get_running_loop().create_future()
        self._waiters[cid] = waiter
        try:
            self.receive(device, Command(id=cid, action=action, params=params, deadline=now + within_s,
                                         by=by, ts=now).encode())
            async with asyncio.timeout(within_s + 5):
                return await waiter
        except TimeoutError:
            return "failed", lazy_gettext("no result in time")
        finally:
            self._waiters.pop(cid, None)

    def recover(self) -> None:
        """After a restart: requeue commands never started; fail the interrupted ones."""
        rows = self.outbox.read(lambda db: db.execute(
            "SELECT id, device, payload, state FROM commands WHERE state IN ('queued', 'running')"
            " ORDER BY received").fetchall(), [])
        for cid, device, payload, state in rows:
            if state == "running":
                # It may or may not have reached the device: never run it twice.
                self._finish(cid, device, "failed", lazy_gettext("agent restarted while the command was running"))
                continue
            try:
                cmd = Command.decode(payload)
            except PayloadError as exc:
                self._finish(cid, device, "failed", lazy_gettext("its journal entry is unreadable: %(error)s",
                                                                 error=str(exc)))
                continue
            if cmd.deadline <= self.clock():
                self._finish(cid, device, "expired", lazy_gettext("deadline passed while the agent was down"))
            else:
                self.queues[device].put_nowait(_Job(cmd, device, bytes(payload)))

    # ------------------------------------------------------------ the journal, for the agent

    def open_devices(self) -> set[str]:
        """The devices that have a journaled command not finished (queued or running)."""
        rows = self.outbox.read(lambda db: db.execute(
            "SELECT DISTINCT device FROM commands WHERE state IN ('queued', 'running')").fetchall(), [])
        return {r[0] for r in rows}

    def forget_device(self, device: str, reason: Detail) -> int:
        """Answer the journaled commands of a device that is gone (queued: `rejected`, running: `failed`),
        so none waits forever; how many were answered."""
        rows = self.outbox.read(lambda db: db.execute(
            "SELECT id, state FROM commands WHERE device=? AND state IN ('queued', 'running') ORDER BY received",
            (device,)).fetchall(), [])
        for cid, state in rows:
            self._finish(cid, device, "rejected" if state == "queued" else "failed", reason)
        return len(rows)

    def state_of(self, cid: str) -> tuple[str, Detail] | None:
        """(state, detail) of a journaled command, None if the journal does not know it."""
        known = self._lookup(cid)
        return None if known is None else (known[0], known[1])

    # ------------------------------------------------------------ devices coming and going

    def start(self, device: str, spawn: Spawn) -> None:
        """Run `device`'s commands: its worker, a task made by `spawn`; its queue is kept if it has one."""
        self.queues.setdefault(device, asyncio.Queue())
        self.workers[device] = spawn(self.run_device(device))

    async def stop(self, device: str) -> None:
        """Stop `device`'s worker (hold the device's lock: a command running finishes first)."""
        worker = self.workers.pop(device, None)
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    def remove(self, device: str, reason: Detail) -> None:
        """The device is gone (its worker stopped): drop its queue, answer its journaled commands."""
        self.queues.pop(device, None)
        self.forget_device(device, reason)

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
            self._finish(cmd.id, device, "expired", lazy_gettext("deadline passed while waiting for the device"))
            return
        target = self._target(device)
        if target is None:  # removed while the command waited (config push answers those; a guard all the same)
            self._finish(cmd.id, device, "rejected", lazy_gettext("no device %(device)s on gateway %(gateway)s",
                                                                  device=repr(device), gateway=self.gateway))
            return
        driver, lock = target
        try:
            driver.validate_action(cmd.action, cmd.params)
        except ActionRejected as exc:
            self._finish(cmd.id, device, "rejected", message_of(exc))
            return
        if not self._mark_running(job):
            self._finish(cmd.id, device, "failed", lazy_gettext(
                "not run: the gateway cannot write its command journal (storage %(status)s), and running it "
                "unrecorded could run it twice", status=self.outbox.health.status))
            return
        self.executed[cmd.id] = self.executed.get(cmd.id, 0) + 1
        detail: Detail
        try:
            async with lock:
                async with asyncio.timeout(min(remaining, MAX_RUN_S)):
                    detail = await driver.execute(cmd.action, cmd.params)
            status = "done"
        except ActionRejected as exc:
            status, detail = "rejected", message_of(exc)
        except DeviceError as exc:
            status, detail = "failed", message_of(exc)
        except TimeoutError:
            status, detail = "failed", lazy_gettext("the device did not confirm before the deadline")
        except Exception as exc:  # a driver bug must not kill the worker
            log.exception("driver %s failed on %s", device, cmd.action)
            status, detail = "failed", lazy_gettext("internal error: %(error)s", error=type(exc).__name__)
        self._finish(cmd.id, device, status, detail or "")


def _salvage_id(payload: bytes) -> str | None:
    """The `id` of a malformed command, if one can be read, to answer `rejected`."""
    try:
        cid = json.loads(payload).get("id")
    except Exception:
        return None
    return cid if isinstance(cid, str) and 0 < len(cid) <= 64 else None
