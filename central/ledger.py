"""The ledger: what central knows besides the points.

Per gateway: its latest `state` (online, devices and their status), when it
was last heard from, and the `seq` numbers received, from which it counts
gaps (numbers never received) and duplicates (redeliveries dropped). Also
the events and the command audit trail. Its tables (central/tables.py) are in
the central database (central/db.py: SQLite, or PostgreSQL for a district),
and only this module and central/acks.py touch them.

The `seen` numbers only feed those counters: a message's points, event and
latest values are written whether or not it is new (each write is
idempotent). So `seen` keeps just the newest SEEN_KEEP numbers of each
gateway; everything at or below the gateway's `seq_floor` counts as seen.

Several ingest workers, on several hosts, record at once. A seq is new when
its INSERT into `seen` (primary key gateway, seq) inserts a row: exact
whoever races. A batch locks its gateways' rows first, in id order (SQLite:
the one write lock; PostgreSQL: SELECT ... FOR UPDATE, the same order in every
worker, so no deadlock), and so the counters, epochs and watermark of a
gateway move under one writer at a time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    Select,
    and_,
    bindparam,
    case,
    func,
    not_,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy import delete as sql_delete

from campus import contract
from campus.contract import CommandResult, State
from campus.i18n import lazy_gettext
from central import acks
from central.db import Database, StoredText, open_database, url_of
from central.tables import commands as commands_t
from central.tables import device_kinds_text, ingest_workers, seen
from central.tables import events as events_t
from central.tables import gateways as gw_t
from central.tables import late_events as late_t
from central.tables import latest as latest_t

log = logging.getLogger(__name__)

# Redeliveries come from a window of in-flight messages (the agent's unacked
# outbox rows, ingest's Receive Maximum of 1000 per worker), not from days
# back; 10,000 numbers is ~3.5 h of a busy room (4 messages / 5 s) and caps
# `seen` at ~190 kB a gateway (19.4 bytes a row measured, docs/storage.md).
# A message older than that counts as a duplicate, and is stored all the same.
SEEN_KEEP = 10_000
WORKER_REPORT_S = 5.0  # how often an ingest worker writes its counters; three missed reports: not running
PRUNE_SLICE = 100  # gateways pruned in one transaction (~25 ms at 480 rows each)
_ROWS_PER_INSERT = 400  # rows of one multi-row INSERT (2-3 parameters each: under every engine's limit)

# A seq more than this beyond the numbers counted so far (or below them) is no gap: a corrupt or
# hostile number (2**63 - 1 would count 9.2e18 gaps for ever). It starts a new epoch, counted in
# `seq_jumps`. 100 million is four years of a busy room's messages: an outbox that dropped its
# oldest rows (counted as gaps, which is the truth) cannot jump that far.
SEQ_JUMP_MAX = 100_000_000
_SEQ_MAX = 2**63 - 1
# Smoothing of the clock offset (exponential, per live heartbeat), and the offset above which the
# dashboard warns that a gateway's clock is wrong (docs: keep gateways on NTP).
CLOCK_SMOOTHING = 0.2
CLOCK_WARN_S = 120.0
# Rows wait for central's acknowledgement up to a few minutes normally (central/acks.py ACK_MAX_DELAY_S);
# the oldest waiting longer than this is worth a warning on the dashboard (ingest down, a broker lost).
WAITING_WARN_S = 900.0


# A gateway that said nothing for this many of its heartbeat intervals is offline, whatever its last
# state said (`online_at`).
SILENT_INTERVALS = 3


# What else a recorded batch's events mean is not the ledger's to know: a module that keeps something worked
# out of events registers an observer (`after_record`; central/attendance_summary.py: a swipe that arrives
# late makes its day's kept counts stale), run in the batch's own transaction so that what it writes stands
# or falls with the events.
EventsObserver = Callable[[Database, Connection, list[dict[str, Any]], float], None]
_observers: list[EventsObserver] = []


def after_record(observer: EventsObserver) -> EventsObserver:
    """Run `observer(db, conn, events, now)` in every `Ledger.record` transaction that wrote events, after
    they are written: `events` the rows ({gateway, device, seq, ts, type, data as JSON}), `now` the batch's
    time of receipt. Once however often it is registered; returned, to be used as a decorator."""
    if observer not in _observers:
        _observers.append(observer)
    return observer


def online_at(now: float) -> ColumnElement[bool]:
    """A gateway is online at `now`: its newest state said so, and it was heard from within
    SILENT_INTERVALS of its heartbeat interval (a gateway without an interval: its state alone).

    Every reader of "online" (the API, the board and its counts, the district's rollup, the panel, the
    alarm rules, commands sent again) asks this at read time. It used to be a stored flag that each read
    first brought up to date (`mark_silent`): a GET that took SQLite's write lock and waited behind
    ingest's batches (1 s and more at 10,000 rooms, docs/benchmarks.md section 11). The stored `online`
    column is now what the newest state said, turned off by ingest's `mark_silent` for direct readers of
    the table; nothing here depends on that having run."""
    c = gw_t.c
    return and_(c.online.is_(True), or_(c.interval <= 0, c.last_seen.is_(None),
                                        c.last_seen >= now - SILENT_INTERVALS * c.interval))


@dataclass
class Sequenced:
    """One telemetry or event message, decoded, waiting to be recorded."""
    school: str
    gateway: str
    device: str
    seq: int
    ts: float
    event: tuple[str, dict[str, Any]] | None = None  # (type, data) for events
    values: dict[str, float | int | str] | None = None  # telemetry values, for `latest`
    ahead: bool = False  # ts far ahead of receipt (contract.clock_ahead): stored, never the latest value


def chunks(rows: list[Any], size: int = _ROWS_PER_INSERT) -> list[list[Any]]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


_SEEN_FROM_ARRAYS = text("INSERT INTO seen (gateway, seq) SELECT * FROM unnest(CAST(:gateways AS varchar[]),"
                         " CAST(:seqs AS bigint[])) ON CONFLICT DO NOTHING RETURNING gateway, seq")

# What a batch reads of its gateways' rows (under their lock), works on, and writes back.
_ROW_COLUMNS = ("id", "online", "room", "interval", "last_seen", "first_seq", "max_seq", "received", "duplicates",
                "seq_floor", "outbox_instance", "gaps_before", "received_before", "epoch", "seq_jumps", "clock_ahead",
                "clock_offset", "acked_seq", "outbox_oldest", "ack_sent", "ack_sent_at", "ack_due", "state_ts",
                "state_since", "state_online")
_WRITTEN = _ROW_COLUMNS[1:]


@dataclass(slots=True)
class GatewayRow:
    """One gateway's row of `gateways` while a batch holds its lock (the columns of `_ROW_COLUMNS`)."""
    id: str
    online: bool
    room: str
    interval: float
    last_seen: float | None
    first_seq: int | None
    max_seq: int | None
    received: int
    duplicates: int
    seq_floor: int
    outbox_instance: int | None
    gaps_before: int
    received_before: int
    epoch: int
    seq_jumps: int
    clock_ahead: int
    clock_offset: float | None
    acked_seq: int
    outbox_oldest: int | None
    ack_sent: int
    ack_sent_at: float
    ack_due: bool
    state_ts: float
    state_since: float | None
    state_online: bool | None


def _by_gateway(pairs: list[tuple[str, int]], gateways: Any) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {gateway: set() for gateway in gateways}
    for gateway, seq in pairs:
        out.setdefault(gateway, set()).add(seq)
    return out


class Ledger:
    def __init__(self, db: Database | str | Path, seen_keep: int = SEEN_KEEP) -> None:
        # A path or URL: a database of its own (tests, tools), closed with the ledger.
        self._owns_db = not isinstance(db, Database)
        if isinstance(db, Database):
            self.db = db
        else:
            self.db = open_database(url_of(db))
        self.seen_keep = seen_keep

    def close(self) -> None:
        if self._owns_db:
            self.db.close()

    def _lock_gateways(self, conn: Connection, schools: dict[str, str],
                       others: Iterable[str] = ()) -> dict[str, GatewayRow]:
        """Make the batch's gateways' rows, then hold them (and those of `others` that exist), in id order,
        until the transaction ends, and read what the batch works on: two statements, whatever the number
        of gateways."""
        ids = sorted(set(schools) | set(others))
        if not ids:
            return {}
        if schools:
            conn.execute(self.db.insert(gw_t).on_conflict_do_nothing(),
                         [{"id": g, "school": schools[g]} for g in sorted(schools)])
        rows: dict[str, GatewayRow] = {}
        for part in chunks(ids):
            for r in conn.execute(select(*(gw_t.c[c] for c in _ROW_COLUMNS)).where(gw_t.c.id.in_(part))
                                  .order_by(gw_t.c.id).with_for_update()):
                rows[r.id] = GatewayRow(**r._mapping)
        return rows

    # ------------------------------------------------------------ ingest side

    def record(self, messages: list[Sequenced], states: list[tuple[str, str, State]],
               results: list[CommandResult], clocks: dict[str, float] | None = None,
               refused: list[tuple[str, str, int]] | None = None) -> list[bool]:
        """Record a batch in one transaction; returns, per message, whether it was new.

        A handful of statements per batch, whatever its gateways and messages: the gateways' rows are
        read under their lock, worked on here (counters, epochs, watermark, the newest state) and
        written back in one UPDATE; the batch's seqs go into `seen` in one INSERT (the rows it inserts
        are the new ones), the newest value of each metric into `latest`, the events into `events`.
        (A statement per gateway and step cost 240 statements and 84 ms for 20 gateways on
        PostgreSQL, a third of the broker's rate: docs/benchmarks.md.)

        The newest value of a metric is the one with the highest (epoch, seq): the
        order the gateway allocated them in. A `ts` is the gateway clock's word only,
        so one sample a day ahead cannot freeze a room's values (a message flagged
        `ahead` is stored but never becomes the latest). `clocks` maps a gateway to
        one live sample of its clock offset (receipt time - ts of a heartbeat).

        Then each gateway's acknowledgement watermark moves (central/acks.py); `refused`
        are (school, gateway, seq) of messages refused at decode, which it may pass.
        """
        now = time.time()
        fresh: list[bool] = []
        by_gateway: dict[str, list[Sequenced]] = {}
        for m in messages:
            by_gateway.setdefault(m.gateway, []).append(m)
        schools = {gateway: school for school, gateway, _ in states}
        schools.update({gateway: msgs[0].school for gateway, msgs in by_gateway.items()})
        for school, gateway, _ in refused or ():
            schools.setdefault(gateway, school)
        with self.db.write("ledger write failed") as conn:
            rows = self._lock_gateways(conn, schools, clocks or ())
            # A new outbox's state comes before its first messages (the agent publishes it on
            # connect, before draining), so its reset comes first here too.
            touched: dict[str, bool] = {}  # gateways whose watermark may move -> a prompt ack (resend seen)
            for _school, gateway, state in states:
                row = rows[gateway]
                acks.note_state(row, state, self._follow_outbox(conn, row, state, now))
                touched[gateway] = False
            counted: dict[str, set[int]] = {}  # seqs of the gateway's current epoch (the rest: strays)
            wanted: list[dict[str, Any]] = []
            for gateway, msgs in by_gateway.items():
                row = rows[gateway]
                counted[gateway] = seqs = self._current_epoch(conn, row, {m.seq for m in msgs})
                wanted += [{"gateway": gateway, "seq": s} for s in sorted(seqs) if s > row.seq_floor]
            inserted = self._insert_seen(conn, wanted)
            new_seqs = _by_gateway(inserted, by_gateway)
            latest: dict[tuple[str, str, str], tuple[int, float, Any]] = {}  # key -> (seq, ts, value)
            events: list[dict[str, Any]] = []
            for m in messages:
                row = rows[m.gateway]
                if m.ahead:
                    row.clock_ahead += 1
                if m.seq not in counted[m.gateway]:
                    fresh.append(False)  # a stray of a jump (SEQ_JUMP_MAX): stored, not counted
                elif m.seq in new_seqs[m.gateway]:
                    fresh.append(True)
                    new_seqs[m.gateway].discard(m.seq)  # the same seq twice in one batch: a duplicate
                    row.received += 1
                    row.first_seq = m.seq if row.first_seq is None else min(row.first_seq, m.seq)
                    row.max_seq = m.seq if row.max_seq is None else max(row.max_seq, m.seq)
                else:
                    fresh.append(False)
                    row.duplicates += 1
                    touched[m.gateway] = True  # duplicates: the agent is sending again; tell it what we have
                row.last_seen = now
                touched.setdefault(m.gateway, False)
                # Written for duplicates too (idempotent): one older than `seen` remembers is not lost.
                if m.values and not m.ahead and m.seq in counted[m.gateway]:
                    for metric, value in m.values.items():
                        key = (m.gateway, m.device, metric)
                        old = latest.get(key)
                        if old is None or m.seq >= old[0]:
                            latest[key] = (m.seq, m.ts, value)
                if m.event is not None:
                    events.append({"gateway": m.gateway, "device": m.device, "seq": m.seq, "ts": m.ts,
                                   "type": m.event[0], "data": json.dumps(m.event[1])})
            refused_by_gateway: dict[str, set[int]] = {}
            for _school, gateway, seq in refused or ():
                refused_by_gateway.setdefault(gateway, set()).add(seq)
            refused_rows = [{"gateway": gateway, "seq": s} for gateway, seqs in refused_by_gateway.items()
                            for s in acks.refused_seen(rows[gateway], seqs)]
            if refused_rows:
                inserted += self._insert_seen(conn, refused_rows)
            for gateway in refused_by_gateway:
                touched.setdefault(gateway, False)
            self._advance(conn, rows, touched, inserted)
            for gateway, offset in (clocks or {}).items():
                row = rows.get(gateway)
                if row is not None:
                    row.clock_offset = offset if row.clock_offset is None \
                        else row.clock_offset + CLOCK_SMOOTHING * (offset - row.clock_offset)
            states_json: dict[str, tuple[str, str]] = {}
            for _school, gateway, state in states:
                if self._newer_state(rows[gateway], state, now):
                    states_json[gateway] = (json.dumps(_state_dict(state)), device_kinds_text(state.devices))
            self._write_rows(conn, rows, states_json)
            if latest:
                upsert = self.db.insert(latest_t)
                upsert = upsert.on_conflict_do_update(
                    index_elements=[latest_t.c.gateway, latest_t.c.device, latest_t.c.metric],
                    set_={"ts": upsert.excluded.ts, "value": upsert.excluded.value,
                          "epoch": upsert.excluded.epoch, "seq": upsert.excluded.seq},
                    where=or_(upsert.excluded.epoch > latest_t.c.epoch,
                              and_(upsert.excluded.epoch == latest_t.c.epoch, upsert.excluded.seq >= latest_t.c.seq)))
                conn.execute(upsert, [{"gateway": gw, "device": dev, "metric": metric, "ts": ts,
                                       "value": json.dumps(value), "epoch": rows[gw].epoch, "seq": seq}
                                      for (gw, dev, metric), (seq, ts, value) in sorted(latest.items())])
            if events:
                # `recorded`: taken as the rows are written, just before the commit, not at the batch's start (a
                # batch may wait for its locks first), so that a reader of what is new by it (events_recorded)
                # compares times of one clock in about commit order: SQLite's one writer's, PostgreSQL's
                # server's own (not each ingest host's: several hosts' clocks may disagree).
                recorded = func.extract("epoch", func.clock_timestamp()) if self.db.dialect == "postgresql" \
                    else time.time()
                conn.execute(self.db.insert(events_t).values(recorded=recorded).on_conflict_do_nothing(), events)
                for observer in _observers:
                    observer(self.db, conn, events, now)
            for r in results:
                conn.execute(update(commands_t).where(commands_t.c.id == r.id, commands_t.c.status == "pending")
                             .values(status=r.status, detail=r.text, finished=r.ts))
        return fresh

    def _write_rows(self, conn: Connection, rows: dict[str, GatewayRow],
                    states_json: dict[str, tuple[str, str]]) -> None:
        """The batch's gateways' rows back, one UPDATE (two: with and without a new state) for them all.
        `states_json`: (the state's JSON, its `device_kinds`) of the gateways with a new state."""
        for with_state in (False, True):
            params = [{"b_id": row.id, **{c: getattr(row, c) for c in _WRITTEN}, **(
                dict(zip(("state", "device_kinds"), states_json[row.id], strict=True)) if with_state else {})}
                for row in rows.values() if (row.id in states_json) == with_state]
            if params:
                columns = _WRITTEN + (("state", "device_kinds") if with_state else ())
                conn.execute(update(gw_t).where(gw_t.c.id == bindparam("b_id"))
                             .values({c: bindparam(c) for c in columns}), params)

    def _insert_seen(self, conn: Connection, rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
        """Record (gateway, seq) rows as seen; returns those that were not (the rows the INSERT made)."""
        if not rows:
            return []
        if self.db.dialect == "postgresql":
            # Two arrays, one statement text whatever the rows: psycopg and the server parse it once (a
            # multi-row VALUES of a new length each batch was a third of record()'s time).
            return [(g, s) for g, s in conn.execute(_SEEN_FROM_ARRAYS, {
                "gateways": [r["gateway"] for r in rows], "seqs": [r["seq"] for r in rows]})]
        return [(g, s) for g, s in conn.execute(
            self.db.insert(seen).on_conflict_do_nothing().returning(seen.c.gateway, seen.c.seq), rows)]

    def _advance(self, conn: Connection, rows: dict[str, GatewayRow], touched: dict[str, bool],
                 inserted: list[tuple[str, int]]) -> None:
        """Move the touched gateways' watermarks through `seen`. The run above each watermark is walked
        first through the seqs this batch inserted; one query then asks, for all of them at once, whether
        `seen` holds the next number (a hole filled earlier, a refused message); only those walk on in
        the database."""
        known = _by_gateway(inserted, touched)
        ends: dict[str, int] = {}
        for gateway in touched:
            start = acks.walk_from(rows[gateway])
            if start is not None:
                while start in known[gateway]:
                    start += 1
                ends[gateway] = start  # the first number not known to be seen
        more = set()
        for part in chunks(sorted(ends.items())):
            more.update(conn.execute(select(seen.c.gateway).where(tuple_(seen.c.gateway, seen.c.seq).in_(part)))
                        .scalars())
        for gateway in more:
            expected = ends[gateway]
            for seq in conn.execute(select(seen.c.seq).where(seen.c.gateway == gateway, seen.c.seq >= expected)
                                    .order_by(seen.c.seq)).scalars():
                if seq != expected:
                    break
                expected += 1
            ends[gateway] = expected
        for gateway, prompt in touched.items():
            acks.advance(rows[gateway], prompt, ends[gateway] - 1 if gateway in ends else None)

    @staticmethod
    def _newer_state(row: GatewayRow, state: State, now: float) -> bool:
        """Whether `state` replaces the stored one, and if so take it into the row.

        Newer states win (by ts), so a late Will of an earlier connection does not overwrite "online".
        The Will of the *current* connection is older than that connection's heartbeats (it is fixed at
        connect), so it wins by `since`; and once a connection's Will (or clean-stop state) is in, a
        heartbeat of that same connection recorded after it (another ingest worker was slower) loses."""
        stored_since = row.state_since or 0.0
        if state.online:
            newer = row.state_ts <= state.ts and not (
                state.since > 0 and row.state_online is False and state.since <= stored_since)
        else:
            newer = row.state_ts <= state.ts or (state.since > 0 and stored_since <= state.since)
        if newer:
            row.online, row.interval, row.state_ts = state.online, state.interval, state.ts
            row.state_since, row.state_online = state.since, state.online
            if state.room:
                row.room = state.room
            if state.online:
                row.last_seen = now
        return newer

    def _follow_outbox(self, conn: Connection, row: GatewayRow, state: State, now: float) -> float | None:
        """Start counting afresh when a state newer than the stored one names another outbox instance.
        Returns the stored state's `since` (before this one is recorded)."""
        instance = state.outbox.get("instance")
        if instance is None or row.outbox_instance == instance or state.ts < row.state_ts:
            return row.state_since  # the same outbox; an agent from before instances; a Will; an older state
        if row.outbox_instance is not None:
            log.warning("gateway %s: a new outbox (instance %s, was %s): its seq numbers are counted afresh",
                        row.id, instance, row.outbox_instance)
            self._new_epoch(conn, row, now)
        acks.reset(row, now, new_instance=True)
        row.outbox_instance = instance
        return row.state_since

    @staticmethod
    def _new_epoch(conn: Connection, row: GatewayRow, now: float | None = None) -> None:
        """Set the current numbers' gaps and count aside; the next numbers are counted afresh and win."""
        if row.first_seq is not None and row.max_seq is not None:
            row.gaps_before += row.max_seq - row.first_seq + 1 - (row.received - row.received_before)
        row.received_before = row.received
        row.first_seq = row.max_seq = None
        row.seq_floor = 0
        row.epoch += 1
        conn.execute(sql_delete(seen).where(seen.c.gateway == row.id))
        acks.reset(row, time.time() if now is None else now, new_instance=False)

    def _current_epoch(self, conn: Connection, row: GatewayRow, seqs: set[int]) -> set[int]:
        """The batch's seqs that belong to the gateway's numbering after this batch.

        Runs of numbers within SEQ_JUMP_MAX of each other (and of the numbers counted so far)
        are one numbering; a run beyond that starts a new epoch (`seq_jumps`). The numbers of
        runs left behind in the same batch are strays: stored, not counted.
        """
        runs: list[list[int]] = []
        for seq in sorted(seqs):
            if runs and seq - runs[-1][-1] <= SEQ_JUMP_MAX:
                runs[-1].append(seq)
            else:
                runs.append([seq])
        span = (row.first_seq, row.max_seq) if row.first_seq is not None else None
        current: list[int] = []
        jumps = 0
        for run in runs:
            if span is None or (run[0] >= span[0] - SEQ_JUMP_MAX and run[-1] <= span[1] + SEQ_JUMP_MAX):
                current += run
                span = (run[0], run[-1]) if span is None else (min(span[0], run[0]), max(span[1], run[-1]))
            else:
                jumps += 1
                current, span = list(run), (run[0], run[-1])
        if jumps:
            log.warning("gateway %s: seq jumped to %d, more than %d from the numbers before: counted afresh",
                        row.id, current[0], SEQ_JUMP_MAX)
            self._new_epoch(conn, row)
            row.seq_jumps += jumps
        return set(current)

    def prune_seen(self) -> int:
        """Forget each gateway's seen numbers more than `seen_keep` below its highest; returns rows deleted."""
        deleted, after = 0, ""
        while after is not None:
            count, after = self.prune_seen_slice(after)
            deleted += count
        return deleted

    def prune_seen_slice(self, after: str = "", gateways: int = PRUNE_SLICE) -> tuple[int, str | None]:
        """`prune_seen` for the next `gateways` gateways (by id) after `after`, in one short transaction.

        Returns the rows deleted and where the next slice starts (None: the pass is done). Ingest
        prunes a slice at a time between batches: a whole district at once held the write lock
        for ~1 s (0.5 us a row, ~480 rows a gateway per 10 minutes, 4,000 gateways).
        """
        deleted = 0
        with self.db.write("pruning seen numbers failed") as conn:
            page = conn.execute(select(gw_t.c.id, gw_t.c.max_seq, gw_t.c.seq_floor, gw_t.c.acked_seq,
                                       gw_t.c.outbox_oldest).where(gw_t.c.id > after).order_by(gw_t.c.id)
                                .limit(gateways).with_for_update()).all()
            floors = [(gateway, acks.prune_floor(top, self.seen_keep, acked, oldest), floor)
                      for gateway, top, floor, acked, oldest in page if top is not None]
            rows = [(gateway, new) for gateway, new, floor in floors if new > floor]
            for gateway, floor in rows:
                deleted += conn.execute(sql_delete(seen).where(seen.c.gateway == gateway, seen.c.seq <= floor)).rowcount
                conn.execute(update(gw_t).where(gw_t.c.id == gateway).values(seq_floor=floor))
        if deleted:
            log.info("ledger: forgot %d seen numbers of %d gateways (each keeps its newest %d)",
                     deleted, len(rows), self.seen_keep)
        return deleted, (page[-1][0] if len(page) == gateways else None)

    def take_acks(self, now: float | None = None,
                  max_delay: float = acks.ACK_MAX_DELAY_S) -> list[tuple[str, str, int, int]]:
        """The acknowledgements to publish now, as (school, gateway, outbox instance, watermark), claimed in
        one transaction so that of several ingest workers only one publishes each (central/acks.py)."""
        now = time.time() if now is None else now
        with self.db.read("cannot read the acknowledgements due") as conn:
            if not conn.execute(acks.due(now, max_delay).limit(1)).first():
                return []  # the usual case: a read, no write lock
        with self.db.write("cannot claim acknowledgements") as conn:
            # SKIP LOCKED: a gateway another worker is recording or claiming now is taken next round.
            rows = conn.execute(acks.due(now, max_delay).with_for_update(skip_locked=True)).all()
            acks.claim(conn, rows, now)
        return [(school, gateway, instance, seq) for gateway, school, instance, seq in rows]

    def mark_silent(self, now: float | None = None) -> list[str]:
        """Store "offline" for gateways that said nothing for SILENT_INTERVALS intervals; returns them.

        Ingest's housekeeping, for readers of the table itself: the ledger's own reads derive "online" at
        read time (`online_at`) and never call this, so that no GET writes."""
        now = now or time.time()
        silent = and_(gw_t.c.online.is_(True), not_(online_at(now)))
        with self.db.read("cannot read the gateways") as conn:
            if not conn.execute(select(gw_t.c.id).where(silent).limit(1)).first():
                return []
        with self.db.write("cannot mark silent gateways offline") as conn:
            return list(conn.execute(update(gw_t).where(silent).values(online=False).returning(gw_t.c.id)).scalars())

    def record_worker(self, name: str, host: str, pid: int, started: float, stats: dict[str, Any],
                      now: float | None = None) -> None:
        """An ingest worker's counters since it started (one row per worker name, replaced each report)."""
        row = {"name": name, "host": host, "pid": pid, "started": started,
               "updated": time.time() if now is None else now, "stats": json.dumps(stats)}
        with self.db.write(f"cannot record ingest worker {name!r}") as conn:
            upsert = self.db.insert(ingest_workers).values(row)
            conn.execute(upsert.on_conflict_do_update(index_elements=[ingest_workers.c.name],
                                                      set_={k: v for k, v in row.items() if k != "name"}))

    # ------------------------------------------------------------ read side

    def workers(self, now: float | None = None) -> list[dict[str, Any]]:
        """Every ingest worker that ever reported, with `running` (reported within three intervals)."""
        now = time.time() if now is None else now
        with self.db.read("cannot read the ingest workers") as conn:
            rows = conn.execute(select(ingest_workers).order_by(ingest_workers.c.name)).all()
        return [{"name": name, "host": host, "pid": pid, "started": started, "updated": updated,
                 "running": now - updated < 3 * WORKER_REPORT_S, **json.loads(stats)}
                for name, host, pid, started, updated, stats in rows]

    def _gateway_rows(self, gateway: str | None = None, ids: Iterable[str] | None = None
                      ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Each gateway (or just `gateway`, or those of `ids`: a page of a list) as the API shows it, with
        its last `state`, in one query; a read only ("online" is `online_at` now)."""
        c = gw_t.c
        query = select(c.id, c.school, c.room, online_at(time.time()), c.last_seen, c.received, c.duplicates,
                       c.first_seq, c.max_seq, c.state, c.gaps_before, c.received_before, c.seq_jumps,
                       c.clock_ahead, c.clock_offset, c.acked_seq).order_by(c.school, c.id)
        if gateway is not None:
            query = query.where(c.id == gateway)
        if ids is not None:
            query = query.where(c.id.in_(list(ids)))
        with self.db.read("cannot read the gateways") as conn:
            rows = conn.execute(query).all()
        out = []
        now = time.time()
        for (gid, school, room, online, last_seen, received, dups, first, top, state, gaps_before, before,
             jumps, ahead, offset, acked) in rows:
            # Numbers never received, in the epoch now counted and in earlier ones.
            gaps = gaps_before + ((top - first + 1 - (received - before)) if first is not None else 0)
            st = json.loads(state)
            outbox = st.get("outbox", {})
            # Rows the gateway holds until central acknowledges them, as of its last state, and how old
            # the oldest of them is now (its age then, plus the time since).
            waiting = outbox.get("pending")
            age = outbox.get("oldest_age")
            waiting_age = (round(age + max(0.0, now - st.get("ts", now))) if waiting and isinstance(age, int)
                           else None)
            out.append(({"id": gid, "school": school, "room": room, "online": bool(online), "last_seen": last_seen,
                         "received": received, "gaps": gaps, "duplicates": dups,
                         "outbox": outbox, "agent": st.get("agent", ""),
                         "seq_jumps": jumps, "clock_ahead": ahead,
                         "clock_offset": None if offset is None else round(offset, 1),
                         "clock_wrong": offset is not None and abs(offset) > CLOCK_WARN_S,
                         "acked_seq": acked, "waiting": waiting, "waiting_age": waiting_age,
                         "waiting_long": waiting_age is not None and waiting_age > WAITING_WARN_S,
                         # The gateway's own disk, and the last time its outbox was found damaged and replaced.
                         "storage": st.get("storage") or {"status": "ok"},
                         "outbox_replaced": st.get("outbox_replaced")}, st))
        return out

    def gateways(self, gateway: str | None = None, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Every gateway (or just `gateway`, or those of `ids`) as the API shows it."""
        return [gw for gw, _ in self._gateway_rows(gateway, ids)]

    def gateway_devices(self, gateway: str | None = None, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Every device the agents reported (of one gateway, those of `ids`, or all), with status (offline when
        its gateway is) and `detail`, the reason its gateway gave for a fault (a ReportedText, or None)."""
        out = []
        for gw, state in self._gateway_rows(gateway, ids):
            details = state.get("device_details") or {} if gw["online"] else {}
            for dev, info in sorted(state.get("devices", {}).items()):
                out.append({"gateway": gw["id"], "school": gw["school"], "room": gw["room"], "id": dev,
                            "profile": info.get("profile", ""), "kind": info.get("kind", ""),
                            "status": info.get("status", "ok") if gw["online"] else "offline",
                            # why it is in fault or offline, as its gateway wrote it (None: no reason given)
                            "detail": contract.device_detail(details.get(dev))})
        return out

    def latest(self, ids: Iterable[str] | None = None) -> dict[tuple[str, str], dict[str, float | int | str]]:
        """The newest value of every metric, by (gateway, device); of the gateways of `ids` only if given."""
        out: dict[tuple[str, str], dict[str, float | int | str]] = {}
        query = select(latest_t.c.gateway, latest_t.c.device, latest_t.c.metric, latest_t.c.value)
        if ids is not None:
            query = query.where(latest_t.c.gateway.in_(list(ids)))
        with self.db.read("cannot read the latest values") as conn:
            rows = conn.execute(query)
            for gw, dev, metric, value in rows:
                out.setdefault((gw, dev), {})[metric] = json.loads(value)
        return out

    def latest_times(self, ids: Iterable[str] | None = None) -> dict[tuple[str, str], float]:
        """When each device last sent a value: its newest `latest` sample, by (gateway, device), of the
        gateways of `ids` only if given. The alarm rule "device offline too long" and the board's "last
        value" read it."""
        query = select(latest_t.c.gateway, latest_t.c.device, func.max(latest_t.c.ts))
        if ids is not None:
            query = query.where(latest_t.c.gateway.in_(list(ids)))
        with self.db.read("cannot read the latest values") as conn:
            rows = conn.execute(query.group_by(latest_t.c.gateway, latest_t.c.device)).all()
        return {(gw, dev): ts for gw, dev, ts in rows}

    def states(self, ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """The last state each gateway (of `ids`, if given) sent (its JSON, decoded), by gateway."""
        query = select(gw_t.c.id, gw_t.c.state)
        if ids is not None:
            query = query.where(gw_t.c.id.in_(list(ids)))
        with self.db.read("cannot read the gateways") as conn:
            return {gid: json.loads(state or "{}") for gid, state in conn.execute(query)}

    def rooms(self, gateways: Collection[str], commands: int = 8,
              commands_since: float | None = None) -> dict[str, dict[str, Any]]:
        """What the classroom panel shows of each of `gateways`, read together: its row (`room`, `online`,
        `last_seen`), the `devices` of its last state, the `latest` value of each device's metrics, and its
        `commands` (the `commands` newest created since `commands_since`, newest first). One read of three
        statements whatever the number of gateways: the panel's poller asks once per tick for every room
        with an open stream (dashboards/panel.py). A gateway the ledger never heard of is absent."""
        ids = sorted(set(gateways))
        if not ids:
            return {}
        with self.db.read("cannot read the rooms") as conn:
            rows = conn.execute(_ROOMS, {"ids": ids, "now": time.time()}).all()
            values = conn.execute(_ROOM_VALUES, {"ids": ids}).all()
            cmds = conn.execute(_ROOM_COMMANDS, {"ids": ids, "since": commands_since or 0.0,
                                                 "newest": commands}).all()
        out = {gid: {"id": gid, "room": room, "online": bool(online), "last_seen": last_seen,
                     "devices": json.loads(state or "{}").get("devices", {}), "latest": {}, "commands": []}
               for gid, room, online, last_seen, state in rows}
        for gw, dev, metric, value in values:
            if gw in out:
                out[gw]["latest"].setdefault(dev, {})[metric] = json.loads(value)
        now = time.time()
        for row in cmds:
            if row[1] in out:
                out[row[1]]["commands"].append(_command(row, now))
        return out

    def events(self, gateway: str | None = None, type_: str | None = None, since: float | None = None,
               limit: int = 1000) -> list[dict[str, Any]]:
        e = events_t.c
        query = select(e.gateway, e.device, e.seq, e.ts, e.type, e.data).order_by(e.ts.desc()).limit(limit)
        if gateway is not None:
            query = query.where(e.gateway == gateway)
        if type_ is not None:
            query = query.where(e.type == type_)
        if since is not None:
            query = query.where(e.ts >= since)
        with self.db.read("cannot read the events") as conn:
            rows = conn.execute(query).all()
        return [{"gateway": g, "device": d, "seq": s, "ts": ts, "type": t, "data": json.loads(data)}
                for g, d, s, ts, t, data in rows]

    def events_recorded(self, type_: str, after: float | None, limit: int = 20000) -> list[dict[str, Any]]:
        """The events of `type_` recorded after `after` (None: all of them since migration 0018), by the time
        the ledger wrote them (`recorded`, `clock`; not the gateway's `ts`: an event may come days after it),
        oldest recorded first, each with its `recorded`: what is new since a reader's last look, however
        late it came. One statement on the (type, recorded) index."""
        e = events_t.c
        query = (select(e.gateway, e.device, e.seq, e.ts, e.type, e.data, e.recorded)
                 .where(e.type == type_, e.recorded > after if after is not None else e.recorded.is_not(None))
                 .order_by(e.recorded, e.gateway, e.seq).limit(limit))
        with self.db.read("cannot read the events") as conn:
            rows = conn.execute(query).all()
        return [{"gateway": g, "device": d, "seq": s, "ts": ts, "type": t, "data": json.loads(data), "recorded": r}
                for g, d, s, ts, t, data, r in rows]

    def clock(self) -> float:
        """Now, by the clock events are `recorded` with: PostgreSQL's server's (one statement), SQLite's host's."""
        if self.db.dialect != "postgresql":
            return time.time()
        with self.db.read("cannot read the database's clock") as conn:
            return float(conn.execute(select(func.extract("epoch", func.clock_timestamp()))).scalar_one())

    def newest_recorded(self, type_: str) -> float | None:
        """When the newest event of `type_` was recorded (None: none since migration 0018): where a reader of
        `events_recorded` starts, in the ledger's clock."""
        with self.db.read("cannot read the events") as conn:
            return conn.execute(select(func.max(events_t.c.recorded)).where(events_t.c.type == type_)).scalar()

    def newest_events(self, gateways: Collection[str],
                      types: Collection[str]) -> dict[tuple[str, str], dict[str, Any]]:
        """The newest event of each of `types` of each of `gateways`, by (gateway, type): one statement for a
        page of gateways (a window function), where `events(gateway=, type_=, limit=1)` per gateway and type
        cost two statements per row of the provisioning list."""
        ids, kinds = sorted(set(gateways)), sorted(set(types))
        if not ids or not kinds:
            return {}
        with self.db.read("cannot read the events") as conn:
            rows = conn.execute(_NEWEST_EVENTS, {"ids": ids, "types": kinds}).all()
        return {(g, t): {"gateway": g, "device": d, "seq": seq, "ts": ts, "type": t, "data": json.loads(data)}
                for g, d, seq, ts, t, data in rows}

    # ------------------------------------------------------------ commands

    def add_command(self, cid: str, gateway: str, device: str, action: str, params: dict[str, Any], by: str,
                    deadline: float) -> None:
        """The audit record of a command about to be published (`published` now, with its gateway's `since`)."""
        now = time.time()
        since = select(func.coalesce(gw_t.c.state_since, 0)).where(gw_t.c.id == gateway).scalar_subquery()
        with self.db.write("cannot record the command") as conn:
            conn.execute(commands_t.insert().values(
                id=cid, gateway=gateway, device=device, action=action, params=json.dumps(params), by=by, created=now,
                deadline=deadline, status="pending", published=now, published_since=since))

    def commands_to_publish_again(self, retry_s: float, now: float | None = None) -> list[dict[str, Any]]:
        """Pending commands to publish again, claimed (so several web processes do not all send them): of a
        gateway that is online on another connection than when the command was last published (the broker
        it reconnected to may have lost it), or online and unanswered for `retry_s`. Never past the deadline;
        never to an offline gateway (its persistent session holds the command, or its reconnect will say
        it does not). The agent's journal answers a repeat without running it again."""
        now = time.time() if now is None else now
        c = commands_t.c
        since = func.coalesce(gw_t.c.state_since, 0)
        query = (select(c.id, gw_t.c.school, c.gateway, c.device, c.action, c.params, c.by, c.deadline, c.created,
                        since).join(gw_t, gw_t.c.id == c.gateway)
                 .where(c.status == "pending", c.deadline > now, online_at(now),
                        or_(c.published.is_(None), c.published < now - retry_s,
                            func.coalesce(c.published_since, -1) != since)))
        with self.db.read("cannot read the pending commands") as conn:
            if not conn.execute(query.limit(1)).first():
                return []
        with self.db.write("cannot claim the pending commands") as conn:
            # Another web instance claiming the same rows now: it has them (SKIP LOCKED), this one not.
            rows = conn.execute(query.with_for_update(of=commands_t, skip_locked=True)).all()
            for r in rows:
                conn.execute(update(commands_t).where(c.id == r[0]).values(published=now, published_since=r[9]))
        return [{"id": cid, "school": school, "gateway": gw, "device": dev, "action": action,
                 "params": json.loads(params), "by": by, "deadline": deadline, "created": created}
                for cid, school, gw, dev, action, params, by, deadline, created, _ in rows]

    def command(self, cid: str) -> dict[str, Any] | None:
        rows = self._commands(commands_t.c.id == cid)
        return rows[0] if rows else None

    def commands_of(self, ids: list[str]) -> list[dict[str, Any]]:
        """The commands of these ids (a page of central/lists.py `command_ids`), newest first."""
        return self._commands(commands_t.c.id.in_(ids))

    def commands(self, gateway: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        return self._commands(commands_t.c.gateway == gateway if gateway else None, limit)

    def _commands(self, where: Any, limit: int | None = None) -> list[dict[str, Any]]:
        query = select(*_COMMAND_COLUMNS).order_by(commands_t.c.created.desc())
        if where is not None:
            query = query.where(where)
        if limit is not None:
            query = query.limit(limit)
        with self.db.read("cannot read the commands") as conn:
            rows = conn.execute(query).all()
        now = time.time()
        return [_command(row, now) for row in rows]


_COMMAND_COLUMNS = tuple(commands_t.c[name] for name in ("id", "gateway", "device", "action", "params", "by",
                                                         "created", "deadline", "status", "detail", "finished"))


def _room_reads() -> tuple[Select[Any], Select[Any], Select[Any]]:
    """`Ledger.rooms`'s three statements, built once with bind parameters (`ids`, `now`, `since`, `newest`):
    the panel's poller runs them several times a second, often for a few rooms (panels opening), and building
    the selects anew cost ten times running them for one room (2 ms against 0.2; bench/panels.py)."""
    g, lt, c = gw_t.c, latest_t.c, commands_t.c
    rooms = (select(g.id, g.room, online_at(bindparam("now", type_=Float())), g.last_seen, g.state)
             .where(g.id.in_(bindparam("ids", expanding=True))))
    values = select(lt.gateway, lt.device, lt.metric, lt.value).where(lt.gateway.in_(bindparam("ids", expanding=True)))
    # The newest per gateway in one statement (a window function: SQLite >= 3.25 and PostgreSQL). The
    # table has no index on gateway: the time bound keeps the scan to recent rows (commands_created).
    rank = func.row_number().over(partition_by=c.gateway, order_by=c.created.desc()).label("rank")
    recent = (select(*_COMMAND_COLUMNS, rank)
              .where(c.gateway.in_(bindparam("ids", expanding=True)), c.created >= bindparam("since")).subquery())
    newest = (select(*(recent.c[col.name] for col in _COMMAND_COLUMNS))
              .where(recent.c.rank <= bindparam("newest")).order_by(recent.c.created.desc()))
    return rooms, values, newest


def _newest_events() -> Select[Any]:
    """`Ledger.newest_events`'s statement, built once (`ids`, `types`): the poller's read of swipes, too."""
    e = events_t.c
    rank = func.row_number().over(partition_by=(e.gateway, e.type), order_by=(e.ts.desc(), e.seq.desc()))
    ranked = (select(e.gateway, e.device, e.seq, e.ts, e.type, e.data, rank.label("rank"))
              .where(e.gateway.in_(bindparam("ids", expanding=True)), e.type.in_(bindparam("types", expanding=True)))
              .subquery())
    r = ranked.c
    return select(r.gateway, r.device, r.seq, r.ts, r.type, r.data).where(r.rank == 1)


_ROOMS, _ROOM_VALUES, _ROOM_COMMANDS = _room_reads()
_NEWEST_EVENTS = _newest_events()


def delete_events(db: Database, gateways: Collection[str], types: Collection[str], before: float) -> int:
    """Delete the events of `types` of `gateways` older than `before`: the attendance retention's end of
    named swipes and check-ins (central/attendance.py); the number deleted."""
    if not gateways or not types:
        return 0
    e = events_t.c
    with db.write("cannot delete old events") as conn:
        return conn.execute(sql_delete(events_t).where(e.gateway.in_(list(gateways)), e.type.in_(list(types)),
                                                       e.ts < before)).rowcount


def note_late_events(db: Database, conn: Connection, late: Mapping[str, float]) -> None:
    """Remember, per gateway, the oldest time of an event of this batch that its observer (`after_record`)
    found came late, `late[gateway]`: in the batch's own transaction `conn`, one statement, only for a batch
    that has one."""
    if not late:
        return
    upsert = db.insert(late_t)
    conn.execute(upsert.on_conflict_do_update(
        index_elements=[late_t.c.gateway],
        set_={"since": case((upsert.excluded.since < late_t.c.since, upsert.excluded.since),
                            else_=late_t.c.since),
              "arrivals": late_t.c.arrivals + 1}),
        [{"gateway": gw, "since": ts, "arrivals": 1} for gw, ts in sorted(late.items())])


def late_events(db: Database, gateways: Collection[str]) -> list[tuple[str, float, int]]:
    """(gateway, since, arrivals) of `gateways` that had events arrive late (`late_events`), not yet forgotten."""
    if not gateways:
        return []
    c = late_t.c
    with db.read("cannot read the late events") as conn:
        return [tuple(row) for row in conn.execute(select(c.gateway, c.since, c.arrivals)
                                                   .where(c.gateway.in_(list(gateways))))]


def forget_late_events(db: Database, taken: Iterable[tuple[str, float, int]]) -> None:
    """Delete the rows `late_events` returned once their reader has redone its days, each only if no late
    event came since it was read (`since` and `arrivals` unchanged): one that came stays for the next reader."""
    c = late_t.c
    with db.write("cannot forget the late events") as conn:
        for gateway, since, arrivals in taken:
            conn.execute(sql_delete(late_t).where(c.gateway == gateway, c.since == since, c.arrivals == arrivals))


def _command(row: Any, now: float) -> dict[str, Any]:
    """A row of `_COMMAND_COLUMNS` as the API shows it."""
    cid, gw, dev, action, params, by, created, deadline, status, detail, finished = row
    # `detail` is a str, English, for every reader (a schedule run's JSON, the audit); one the gateway marked
    # for translation is a StoredText that keeps it (central/db.py): the web app shows it in the reader's
    # language (dashboards/i18n.py `translate`, `shown_command`).
    if status == "pending" and deadline < now - 5:
        # The agent never answered and never will run it now: say so.
        status, detail = "expired", StoredText(lazy_gettext("no answer from the gateway before the deadline"))
    return {"id": cid, "gateway": gw, "device": dev, "action": action, "params": json.loads(params), "by": by,
            "created": created, "deadline": deadline, "status": status, "detail": detail, "finished": finished}


def _state_dict(state: State) -> dict[str, Any]:
    # Its fields are plain values and dicts of them: a shallow copy is what
    # asdict's deep copy gives, at a fraction of the cost (once per heartbeat).
    return dict(vars(state))
