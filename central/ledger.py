"""The ledger: what central knows besides the points.

Per gateway: its latest `state` (online, devices and their status), when it
was last heard from, and the `seq` numbers received, from which it counts
gaps (numbers never received) and duplicates (redeliveries dropped). Also
the events and the command audit trail. SQLite; for the embedded store it
lives in the same file as the points.

The `seen` numbers only feed those counters: a message's points, event and
latest values are written whether or not it is new (each write is
idempotent). So `seen` keeps just the newest SEEN_KEEP numbers of each
gateway; everything at or below the gateway's `seq_floor` counts as seen.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from campus.contract import CommandResult, State
from campus.errors import StoreError
from central import acks
from central.store.sqlite import PerThreadConnection

log = logging.getLogger(__name__)

# Redeliveries come from a window of in-flight messages (the agent's unacked
# outbox rows, ingest's Receive Maximum of 1000 per worker), not from days
# back; 10,000 numbers is ~3.5 h of a busy room (4 messages / 5 s) and caps
# `seen` at ~190 kB a gateway (19.4 bytes a row measured, docs/storage.md).
# A message older than that counts as a duplicate, and is stored all the same.
SEEN_KEEP = 10_000
WORKER_REPORT_S = 5.0  # how often an ingest worker writes its counters; three missed reports: not running
PRUNE_SLICE = 100  # gateways pruned in one transaction (~25 ms at 480 rows each)
_SQL_PARAMS = 900  # seqs per look-up: under SQLite's oldest limit of 999 parameters per statement

# A redelivered event has its seq and its ts; a replaced outbox (new SD card) starts again at seq 1
# with new timestamps, and its events must not be taken for redeliveries of the old ones.
_EVENTS_KEY = "PRIMARY KEY (gateway, seq, ts)"
_EVENTS_DDL = (
    "CREATE TABLE IF NOT EXISTS events (gateway TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
    f" ts REAL NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL, {_EVENTS_KEY})",
    "CREATE INDEX IF NOT EXISTS events_ts ON events (ts)",
)

# Columns added after files were in use, per table, with their definitions.
_ADDED_COLUMNS = {
    "gateways": {
        "seq_floor": "INTEGER NOT NULL DEFAULT 0",
        # A gateway's seq numbers belong to one outbox instance (edge_agent/outbox.py). When a newer
        # state names another one, the old one's gaps and received count are set aside and the
        # new one's numbers, which start again at 1, are counted afresh.
        "outbox_instance": "INTEGER",
        "gaps_before": "INTEGER NOT NULL DEFAULT 0",
        "received_before": "INTEGER NOT NULL DEFAULT 0",
        # Numbering epochs: a new outbox instance or a seq jump beyond SEQ_JUMP_MAX starts one.
        # Values are ordered by (epoch, seq): the gateway's own order, whatever its clock says.
        "epoch": "INTEGER NOT NULL DEFAULT 0",
        "seq_jumps": "INTEGER NOT NULL DEFAULT 0",
        # Messages whose ts was more than contract.CLOCK_AHEAD_S ahead of receipt (stored, never latest),
        # and the smoothed receipt time - ts of the gateway's live heartbeats.
        "clock_ahead": "INTEGER NOT NULL DEFAULT 0",
        "clock_offset": "REAL",
        # Central's acknowledgement (central/acks.py): the watermark, the agent's lowest seq held (NULL: an
        # agent without acknowledgements), the watermark last published and when, and a prompt ack due.
        "acked_seq": "INTEGER NOT NULL DEFAULT 0",
        "outbox_oldest": "INTEGER",
        "ack_sent": "INTEGER NOT NULL DEFAULT 0",
        "ack_sent_at": "REAL NOT NULL DEFAULT 0",
        "ack_due": "INTEGER NOT NULL DEFAULT 0",
    },
    "latest": {"epoch": "INTEGER NOT NULL DEFAULT 0", "seq": "INTEGER NOT NULL DEFAULT 0"},
    # When a pending command was last published, and the `since` of its gateway's connection then
    # (central/commands.py publishes it again when the gateway reconnects, or after COMMAND_RETRY_S).
    "commands": {"published": "REAL", "published_since": "REAL"},
}

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

SCHEMA = """
CREATE TABLE IF NOT EXISTS gateways (
    id TEXT PRIMARY KEY, school TEXT NOT NULL, room TEXT NOT NULL DEFAULT '',
    online INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT '{}', interval REAL NOT NULL DEFAULT 0,
    last_seen REAL, first_seq INTEGER, max_seq INTEGER,
    received INTEGER NOT NULL DEFAULT 0, duplicates INTEGER NOT NULL DEFAULT 0,
    seq_floor INTEGER NOT NULL DEFAULT 0,
    outbox_instance INTEGER, gaps_before INTEGER NOT NULL DEFAULT 0, received_before INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0, seq_jumps INTEGER NOT NULL DEFAULT 0,
    clock_ahead INTEGER NOT NULL DEFAULT 0, clock_offset REAL,
    acked_seq INTEGER NOT NULL DEFAULT 0, outbox_oldest INTEGER, ack_sent INTEGER NOT NULL DEFAULT 0,
    ack_sent_at REAL NOT NULL DEFAULT 0, ack_due INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS seen (
    gateway TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (gateway, seq)
) WITHOUT ROWID;
""" + "".join(f"{ddl};\n" for ddl in _EVENTS_DDL) + """CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY, gateway TEXT NOT NULL, device TEXT NOT NULL, action TEXT NOT NULL,
    params TEXT NOT NULL, by TEXT NOT NULL, created REAL NOT NULL, deadline REAL NOT NULL,
    status TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', finished REAL, published REAL, published_since REAL
);
CREATE INDEX IF NOT EXISTS commands_created ON commands (created);
CREATE INDEX IF NOT EXISTS commands_pending ON commands (deadline) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS ingest_workers (
    name TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started REAL NOT NULL, updated REAL NOT NULL,
    stats TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS latest (
    gateway TEXT NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL, ts REAL NOT NULL, value TEXT NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (gateway, device, metric)
) WITHOUT ROWID;
"""


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


class Ledger(PerThreadConnection):
    schema = SCHEMA

    def __init__(self, path: str | Path, seen_keep: int = SEEN_KEEP) -> None:
        super().__init__(path)
        self.seen_keep = seen_keep
        self.convert_once(lambda: bool(self._missing_columns()), self._add_columns, "add the new columns")
        self.convert_once(lambda: _EVENTS_KEY not in self._events_sql(), self._rekey_events,
                          "re-key the events table")

    def _missing_columns(self) -> list[tuple[str, str]]:
        missing = []
        for table, columns in _ADDED_COLUMNS.items():
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            missing += [(table, column) for column in columns if column not in have]
        return missing

    def _add_columns(self) -> None:
        for table, column in self._missing_columns():
            self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {_ADDED_COLUMNS[table][column]}")

    def _events_sql(self) -> str:
        return self.db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone()[0]

    def _rekey_events(self) -> None:
        """Events keyed by ts too: rebuild the table (SQLite cannot change a key)."""
        self.db.execute("ALTER TABLE events RENAME TO events_before_rekey")
        self.db.execute("DROP INDEX IF EXISTS events_ts")
        for ddl in _EVENTS_DDL:
            self.db.execute(ddl)
        self.db.execute("INSERT INTO events SELECT * FROM events_before_rekey")
        self.db.execute("DROP TABLE events_before_rekey")

    def _ensure_gateway(self, school: str, gateway: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO gateways (id, school) VALUES (?, ?)", (gateway, school))

    # ------------------------------------------------------------ ingest side

    def record(self, messages: list[Sequenced], states: list[tuple[str, str, State]],
               results: list[CommandResult], clocks: dict[str, float] | None = None,
               refused: list[tuple[str, str, int]] | None = None) -> list[bool]:
        """Record a batch in one transaction; returns, per message, whether it was new.

        Work is per gateway, not per message: one look-up of the batch's seqs in
        `seen`, one counter update, and one `latest` row per metric (the
        newest in the batch), so the cost grows with the gateways and metrics
        in a batch, not with its messages.

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
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")  # the write lock: no other worker records between look-up and insert
                # A new outbox's state comes before its first messages (the agent publishes it on
                # connect, before draining), so its reset comes first here too.
                touched: dict[str, bool] = {}  # gateways whose watermark may move -> a prompt ack (resend seen)
                for school, gateway, state in states:
                    self._ensure_gateway(school, gateway)
                    acks.note_state(self.db, gateway, state, self._follow_outbox(gateway, state, now))
                    touched[gateway] = False
                new_seqs: dict[str, set[int]] = {}
                counted: dict[str, set[int]] = {}  # seqs of the gateway's current epoch (the rest: strays)
                epochs: dict[str, int] = {}
                for gateway, msgs in by_gateway.items():
                    self._ensure_gateway(msgs[0].school, gateway)
                    seqs = self._current_epoch(gateway, {m.seq for m in msgs})
                    counted[gateway] = seqs
                    new_seqs[gateway] = seqs - self._seen(gateway, seqs)
                    epochs[gateway] = self.db.execute("SELECT epoch FROM gateways WHERE id = ?",
                                                      (gateway,)).fetchone()[0]
                seen_rows: list[tuple[str, int]] = []
                latest: dict[tuple[str, str, str], tuple[int, float, str]] = {}  # key -> (seq, ts, value)
                events: list[tuple[str, str, int, float, str, str]] = []
                counts: dict[str, list[int]] = {}  # gateway -> [new, duplicates, lowest new seq, highest new seq]
                ahead: dict[str, int] = {}
                for m in messages:
                    c = counts.get(m.gateway)
                    if c is None:
                        c = counts[m.gateway] = [0, 0, _SEQ_MAX, 0]
                    if m.ahead:
                        ahead[m.gateway] = ahead.get(m.gateway, 0) + 1
                    if m.seq not in counted[m.gateway]:
                        fresh.append(False)  # a stray of a jump (SEQ_JUMP_MAX): stored, not counted
                    elif m.seq in new_seqs[m.gateway]:
                        fresh.append(True)
                        new_seqs[m.gateway].discard(m.seq)  # the same seq twice in one batch: a duplicate
                        seen_rows.append((m.gateway, m.seq))
                        c[0] += 1
                        c[2], c[3] = min(c[2], m.seq), max(c[3], m.seq)
                    else:
                        fresh.append(False)
                        c[1] += 1
                    # Written for duplicates too (idempotent): one older than `seen` remembers is not lost.
                    if m.values and not m.ahead and m.seq in counted[m.gateway]:
                        for metric, value in m.values.items():
                            key = (m.gateway, m.device, metric)
                            old = latest.get(key)
                            if old is None or m.seq >= old[0]:
                                latest[key] = (m.seq, m.ts, value)
                    if m.event is not None:
                        events.append((m.gateway, m.device, m.seq, m.ts, m.event[0], json.dumps(m.event[1])))
                seen_rows.sort()
                self.db.executemany("INSERT INTO seen VALUES (?, ?)", seen_rows)
                for gateway, (new, dups, low, high) in counts.items():
                    if new:
                        self.db.execute(
                            "UPDATE gateways SET received = received + ?, duplicates = duplicates + ?, last_seen = ?,"
                            " first_seq = MIN(COALESCE(first_seq, ?), ?), max_seq = MAX(COALESCE(max_seq, ?), ?)"
                            " WHERE id = ?", (new, dups, now, low, low, high, high, gateway))
                    else:
                        self.db.execute("UPDATE gateways SET duplicates = duplicates + ?, last_seen = ? WHERE id = ?",
                                        (dups, now, gateway))
                    touched[gateway] = dups > 0  # duplicates: the agent is sending again; tell it what we have
                refused_by_gateway: dict[str, set[int]] = {}
                for school, gateway, seq in refused or ():
                    self._ensure_gateway(school, gateway)
                    refused_by_gateway.setdefault(gateway, set()).add(seq)
                for gateway, seqs in refused_by_gateway.items():
                    acks.record_refused(self.db, gateway, seqs)
                    touched.setdefault(gateway, False)
                for gateway, prompt in touched.items():
                    acks.advance(self.db, gateway, prompt)
                self.db.executemany(
                    "INSERT INTO latest (gateway, device, metric, ts, value, epoch, seq) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (gateway, device, metric) DO UPDATE"
                    " SET ts=excluded.ts, value=excluded.value, epoch=excluded.epoch, seq=excluded.seq"
                    " WHERE excluded.epoch > latest.epoch OR (excluded.epoch = latest.epoch AND excluded.seq >= latest.seq)",
                    [(gw, dev, metric, ts, json.dumps(value), epochs[gw], seq)
                     for (gw, dev, metric), (seq, ts, value) in latest.items()])
                self.db.executemany("UPDATE gateways SET clock_ahead = clock_ahead + ? WHERE id = ?",
                                    [(n, gw) for gw, n in ahead.items()])
                self.db.executemany(
                    "UPDATE gateways SET clock_offset = CASE WHEN clock_offset IS NULL THEN ?"
                    " ELSE clock_offset + ? * (? - clock_offset) END WHERE id = ?",
                    [(offset, CLOCK_SMOOTHING, offset, gw) for gw, offset in (clocks or {}).items()])
                self.db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)", events)
                for _, gateway, state in states:
                    # Newer states win (by ts), so a late Will of an earlier connection does not
                    # overwrite "online". The Will of the *current* connection is older than that
                    # connection's heartbeats (it is fixed at connect), so it wins by `since`; and
                    # once a connection's Will (or clean-stop state) is in, a heartbeat of that same
                    # connection recorded after it (another ingest worker was slower) loses.
                    self.db.execute(
                        "UPDATE gateways SET online = ?, state = ?, interval = ?, room = COALESCE(NULLIF(?, ''), room),"
                        " last_seen = CASE WHEN ? THEN ? ELSE last_seen END"
                        " WHERE id = ? AND (COALESCE(json_extract(state, '$.ts'), 0) <= ?"
                        " OR (NOT ? AND ? > 0 AND ? >= COALESCE(json_extract(state, '$.since'), 0)))"
                        " AND NOT (? AND ? > 0 AND json_extract(state, '$.online') = 0"
                        " AND ? <= COALESCE(json_extract(state, '$.since'), 0))",
                        (int(state.online), json.dumps(_state_dict(state)), state.interval,
                         state.room, state.online, now, gateway, state.ts, state.online, state.since, state.since,
                         state.online, state.since, state.since))
                for r in results:
                    self.db.execute("UPDATE commands SET status = ?, detail = ?, finished = ?"
                                    " WHERE id = ? AND status = 'pending'", (r.status, r.detail, r.ts, r.id))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: ledger write failed: {exc}") from None
        return fresh

    def _follow_outbox(self, gateway: str, state: State, now: float) -> float | None:
        """Start counting afresh when a state newer than the stored one names another outbox instance.
        Returns the stored state's `since` (before this one is recorded)."""
        instance = state.outbox.get("instance")
        stored, stored_ts, since = self.db.execute(
            "SELECT outbox_instance, COALESCE(json_extract(state, '$.ts'), 0), json_extract(state, '$.since')"
            " FROM gateways WHERE id = ?", (gateway,)).fetchone()
        if instance is None or stored == instance or state.ts < stored_ts:
            return since  # the same outbox; an agent from before instances; a Will; an older state
        if stored is not None:
            log.warning("gateway %s: a new outbox (instance %s, was %s): its seq numbers are counted afresh",
                        gateway, instance, stored)
            self._new_epoch(gateway, now)
        acks.reset(self.db, gateway, now, new_instance=True)
        self.db.execute("UPDATE gateways SET outbox_instance = ? WHERE id = ?", (instance, gateway))
        return since

    def _new_epoch(self, gateway: str, now: float | None = None) -> None:
        """Set the current numbers' gaps and count aside; the next numbers are counted afresh and win."""
        self.db.execute(
            "UPDATE gateways SET gaps_before = gaps_before + COALESCE(max_seq - first_seq + 1"
            " - (received - received_before), 0), received_before = received,"
            " first_seq = NULL, max_seq = NULL, seq_floor = 0, epoch = epoch + 1 WHERE id = ?", (gateway,))
        self.db.execute("DELETE FROM seen WHERE gateway = ?", (gateway,))
        acks.reset(self.db, gateway, time.time() if now is None else now, new_instance=False)

    def _current_epoch(self, gateway: str, seqs: set[int]) -> set[int]:
        """The batch's seqs that belong to the gateway's numbering after this batch.

        Runs of numbers within SEQ_JUMP_MAX of each other (and of the numbers counted so far)
        are one numbering; a run beyond that starts a new epoch (`seq_jumps`). The numbers of
        runs left behind in the same batch are strays: stored, not counted.
        """
        first, top = self.db.execute("SELECT first_seq, max_seq FROM gateways WHERE id = ?", (gateway,)).fetchone()
        runs: list[list[int]] = []
        for seq in sorted(seqs):
            if runs and seq - runs[-1][-1] <= SEQ_JUMP_MAX:
                runs[-1].append(seq)
            else:
                runs.append([seq])
        span = (first, top) if first is not None else None
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
                        gateway, current[0], SEQ_JUMP_MAX)
            self._new_epoch(gateway)
            self.db.execute("UPDATE gateways SET seq_jumps = seq_jumps + ? WHERE id = ?", (jumps, gateway))
        return set(current)

    def _seen(self, gateway: str, seqs: set[int]) -> set[int]:
        """Which of `seqs` this gateway's ledger already has (all at or below its floor)."""
        floor = self.db.execute("SELECT seq_floor FROM gateways WHERE id = ?", (gateway,)).fetchone()[0]
        found = {seq for seq in seqs if seq <= floor}
        ordered = sorted(seqs - found)
        for i in range(0, len(ordered), _SQL_PARAMS):
            chunk = ordered[i:i + _SQL_PARAMS]
            found.update(r[0] for r in self.db.execute(
                f"SELECT seq FROM seen WHERE gateway = ? AND seq IN ({','.join('?' * len(chunk))})", (gateway, *chunk)))
        return found

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
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                page = self.db.execute("SELECT id, max_seq, seq_floor, acked_seq, outbox_oldest FROM gateways"
                                       " WHERE id > ? ORDER BY id LIMIT ?", (after, gateways)).fetchall()
                floors = [(gateway, acks.prune_floor(top, self.seen_keep, acked, oldest), floor)
                          for gateway, top, floor, acked, oldest in page if top is not None]
                rows = [(gateway, new) for gateway, new, floor in floors if new > floor]
                for gateway, floor in rows:
                    deleted += self.db.execute("DELETE FROM seen WHERE gateway = ? AND seq <= ?",
                                               (gateway, floor)).rowcount
                self.db.executemany("UPDATE gateways SET seq_floor = ? WHERE id = ?", [(f, g) for g, f in rows])
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: pruning seen numbers failed: {exc}") from None
        if deleted:
            log.info("ledger: forgot %d seen numbers of %d gateways (each keeps its newest %d)",
                     deleted, len(rows), self.seen_keep)
        return deleted, (page[-1][0] if len(page) == gateways else None)

    def take_acks(self, now: float | None = None,
                  max_delay: float = acks.ACK_MAX_DELAY_S) -> list[tuple[str, str, int, int]]:
        """The acknowledgements to publish now, as (school, gateway, outbox instance, watermark), claimed in
        one transaction so that of several ingest workers only one publishes each (central/acks.py)."""
        now = time.time() if now is None else now
        try:
            if not acks.due(self.db, now, max_delay):  # the usual case: a read, no write lock
                return []
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                rows = acks.due(self.db, now, max_delay)
                acks.claim(self.db, rows, now)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot claim acknowledgements: {exc}") from None
        return [(school, gateway, instance, seq) for gateway, school, instance, seq in rows]

    def mark_silent(self, now: float | None = None) -> list[str]:
        """Gateways that said nothing for 3 poll intervals become offline."""
        now = now or time.time()
        rows = self.db.execute("SELECT id FROM gateways WHERE online = 1 AND interval > 0 AND last_seen < ? - 3 * interval",
                               (now,)).fetchall()
        if rows:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany("UPDATE gateways SET online = 0 WHERE id = ?", rows)
        return [r[0] for r in rows]

    def record_worker(self, name: str, host: str, pid: int, started: float, stats: dict[str, Any],
                      now: float | None = None) -> None:
        """An ingest worker's counters since it started (one row per worker name, replaced each report)."""
        try:
            self.db.execute("INSERT OR REPLACE INTO ingest_workers VALUES (?, ?, ?, ?, ?, ?)",
                            (name, host, pid, started, time.time() if now is None else now, json.dumps(stats)))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot record ingest worker {name!r}: {exc}") from None

    # ------------------------------------------------------------ read side

    def workers(self, now: float | None = None) -> list[dict[str, Any]]:
        """Every ingest worker that ever reported, with `running` (reported within three intervals)."""
        now = time.time() if now is None else now
        rows = self.db.execute("SELECT name, host, pid, started, updated, stats FROM ingest_workers ORDER BY name")
        return [{"name": name, "host": host, "pid": pid, "started": started, "updated": updated,
                 "running": now - updated < 3 * WORKER_REPORT_S, **json.loads(stats)}
                for name, host, pid, started, updated, stats in rows]

    def _gateway_rows(self, gateway: str | None = None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Each gateway (or just `gateway`) as the API shows it, with its last `state`, in one query."""
        self.mark_silent()
        where, args = ("WHERE id = ?", (gateway,)) if gateway is not None else ("", ())
        cur = self.db.execute("SELECT id, school, room, online, last_seen, received, duplicates, first_seq, max_seq,"
                              " state, gaps_before, received_before, seq_jumps, clock_ahead, clock_offset, acked_seq"
                              f" FROM gateways {where} ORDER BY school, id", args)
        out = []
        now = time.time()
        for (gid, school, room, online, last_seen, received, dups, first, top, state, gaps_before, before,
             jumps, ahead, offset, acked) in cur:
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

    def gateways(self, gateway: str | None = None) -> list[dict[str, Any]]:
        """Every gateway (or just `gateway`) as the API shows it."""
        return [gw for gw, _ in self._gateway_rows(gateway)]

    def gateway_devices(self, gateway: str | None = None) -> list[dict[str, Any]]:
        """Every device the agents reported (of one gateway, or all), with status (offline when its gateway is)."""
        out = []
        for gw, state in self._gateway_rows(gateway):
            for dev, info in sorted(state.get("devices", {}).items()):
                out.append({"gateway": gw["id"], "school": gw["school"], "room": gw["room"], "id": dev,
                            "profile": info.get("profile", ""), "kind": info.get("kind", ""),
                            "status": info.get("status", "ok") if gw["online"] else "offline"})
        return out

    def latest(self) -> dict[tuple[str, str], dict[str, float | int | str]]:
        """The newest value of every metric, by (gateway, device)."""
        out: dict[tuple[str, str], dict[str, float | int | str]] = {}
        for gw, dev, metric, value in self.db.execute("SELECT gateway, device, metric, value FROM latest"):
            out.setdefault((gw, dev), {})[metric] = json.loads(value)
        return out

    def events(self, gateway: str | None = None, type_: str | None = None, since: float | None = None,
               limit: int = 1000) -> list[dict[str, Any]]:
        sql, args = "SELECT gateway, device, seq, ts, type, data FROM events WHERE 1=1", []
        for cond, value in (("gateway = ?", gateway), ("type = ?", type_), ("ts >= ?", since)):
            if value is not None:
                sql += f" AND {cond}"
                args.append(value)
        sql += " ORDER BY ts DESC LIMIT ?"
        args.append(limit)
        return [{"gateway": g, "device": d, "seq": s, "ts": ts, "type": t, "data": json.loads(data)}
                for g, d, s, ts, t, data in self.db.execute(sql, args)]

    # ------------------------------------------------------------ commands

    def add_command(self, cid: str, gateway: str, device: str, action: str, params: dict[str, Any], by: str,
                    deadline: float) -> None:
        """The audit record of a command about to be published (`published` now, with its gateway's `since`)."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT INTO commands (id, gateway, device, action, params, by, created, deadline, status,"
                            " published, published_since) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?,"
                            " (SELECT COALESCE(json_extract(state, '$.since'), 0) FROM gateways WHERE id = ?))",
                            (cid, gateway, device, action, json.dumps(params), by, now, deadline, now, gateway))

    def commands_to_publish_again(self, retry_s: float, now: float | None = None) -> list[dict[str, Any]]:
        """Pending commands to publish again, claimed (so several web processes do not all send them): of a
        gateway that is online on another connection than when the command was last published (the broker
        it reconnected to may have lost it), or online and unanswered for `retry_s`. Never past the deadline;
        never to an offline gateway (its persistent session holds the command, or its reconnect will say
        it does not). The agent's journal answers a repeat without running it again."""
        now = time.time() if now is None else now
        query = ("SELECT c.id, g.school, c.gateway, c.device, c.action, c.params, c.by, c.deadline, c.created,"
                 " COALESCE(json_extract(g.state, '$.since'), 0) AS since"
                 " FROM commands c JOIN gateways g ON g.id = c.gateway"
                 " WHERE c.status = 'pending' AND c.deadline > ? AND g.online = 1"
                 " AND (c.published IS NULL OR c.published < ? OR COALESCE(c.published_since, -1) != since)")
        try:
            if not self.db.execute(query, (now, now - retry_s)).fetchone():
                return []
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                rows = self.db.execute(query, (now, now - retry_s)).fetchall()
                self.db.executemany("UPDATE commands SET published = ?, published_since = ? WHERE id = ?",
                                    [(now, r[9], r[0]) for r in rows])
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the pending commands: {exc}") from None
        return [{"id": cid, "school": school, "gateway": gw, "device": dev, "action": action,
                 "params": json.loads(params), "by": by, "deadline": deadline, "created": created}
                for cid, school, gw, dev, action, params, by, deadline, created, _ in rows]

    def command(self, cid: str) -> dict[str, Any] | None:
        rows = self._commands("WHERE id = ?", (cid,))
        return rows[0] if rows else None

    def commands(self, gateway: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        if gateway:
            return self._commands("WHERE gateway = ? ORDER BY created DESC LIMIT ?", (gateway, limit))
        return self._commands("ORDER BY created DESC LIMIT ?", (limit,))

    def _commands(self, where: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT id, gateway, device, action, params, by, created, deadline, status, detail,"
                              f" finished FROM commands {where}", args)
        out = []
        now = time.time()
        for cid, gw, dev, action, params, by, created, deadline, status, detail, finished in cur:
            if status == "pending" and deadline < now - 5:
                # The agent never answered and never will run it now: say so.
                status, detail = "expired", "no answer from the gateway before the deadline"
            out.append({"id": cid, "gateway": gw, "device": dev, "action": action, "params": json.loads(params),
                        "by": by, "created": created, "deadline": deadline, "status": status, "detail": detail,
                        "finished": finished})
        return out

    # ------------------------------------------------------------ reads for central/overview.py
    # (added for issue 17: the modules that joined ledger and registry read these tables themselves)

    def latest_times(self) -> dict[tuple[str, str], float]:
        """When each device last sent a value: the newest `latest` sample per (gateway, device). The alarm
        rule "device offline too long" and the board's "last value" read it."""
        rows = self.db.execute("SELECT gateway, device, MAX(ts) FROM latest GROUP BY gateway, device")
        return {(gw, dev): ts for gw, dev, ts in rows}

    def states(self) -> dict[str, dict[str, Any]]:
        """The last `state` each gateway sent, as sent (the config version it applied, its devices), by
        gateway; the provisioning pages compare it with what the registry wants."""
        return {gid: json.loads(state or "{}") for gid, state in self.db.execute("SELECT id, state FROM gateways")}


def _state_dict(state: State) -> dict[str, Any]:
    # Its fields are plain values and dicts of them: a shallow copy is what
    # asdict's deep copy gives, at a fraction of the cost (once per heartbeat).
    return dict(vars(state))
