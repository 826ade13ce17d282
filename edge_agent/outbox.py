"""The agent's durable outbox: store first, publish second, delete when central has it.

Every telemetry sample, event and command result is committed to SQLite
(WAL, synchronous=FULL, so a power cut keeps what was committed) before the
MQTT link sees it. The per-gateway `seq` is allocated here, in the same
transaction as the row (and kept in the row's `seq` column), so it is
strictly increasing across restarts and never reused.

A broker's PUBACK is not delivery (a broker restarted without its saved
state, a queue limit, an expired session drop what they acknowledged), so a
row leaves only when central's acknowledgement (`contract.Ack`) says every
seq up to it is stored: on PUBACK the row is only marked `sent` (the time),
and `acknowledge` deletes the rows at or below central's watermark.
`resend` marks every sent row unsent again (the agent calls it on each
reconnect, when central comes back, and when the watermark stalls); central
drops the duplicates. A row without a seq (a result held in memory while the
disk was full, or a file from before) is deleted on PUBACK as before.

A new outbox file draws a random `instance` number, which the agent reports
in its `state` (`outbox.instance`): a gateway whose outbox was lost (a new SD
card) starts again at seq 1, and central, seeing another instance, starts
counting that gateway's gaps and duplicates afresh instead of taking the new
numbers for redeliveries.

Bounds: at most `max_messages` rows and nothing older than `max_age_s`,
sent and unsent alike. When a bound is hit the *oldest* rows are dropped and
counted in `dropped`: after a long outage a facility manager wants the
recent days, and central sees the dropped `seq` numbers as gaps, which is
the truth (`figures()["oldest"]` lets its watermark pass them).

The storage may fail under it (see `storage.py`), and the outbox never takes
the agent down for that:
- a damaged file (at open, or found while running) is set aside and a new
  file, with a new instance, replaces it (`replaced`);
- a write the storage refuses (disk full, I/O error) is not retried in a
  loop: a sequenced message is counted in `dropped` and in `not_stored`
  (it never got a seq, so central sees no gap for it; the counter is
  exact, kept in memory until the next write that works adds it on disk);
  a command result (`hold=True`) is held in memory, without a seq, and
  published from there, and written with the next write that works; a
  published row whose `sent` mark is refused is remembered and not
  published again. `health` is the gateway-level `storage` status.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from campus.errors import ConfigError
from campus.i18n import LazyText, lazy_gettext
from edge_agent.storage import (
    Replacement,
    StorageHealth,
    check_data_dir,
    classify,
    connect,
    damaged,
    precheck,
    reason_from_column,
    set_aside,
    verify,
)

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('next_seq', 1), ('dropped', 0), ('not_stored', 0);
CREATE TABLE IF NOT EXISTS replaced (
    at REAL NOT NULL, reason TEXT NOT NULL, kept_as TEXT NOT NULL,
    lost INTEGER, previous_instance INTEGER, previous_last_seq INTEGER
);
"""
# Columns added for central's acknowledgement (a file from before gains them, see _add_ack_columns):
# the row's seq (NULL for a message without one), and when the broker last accepted it (0: not sent).
ACK_COLUMNS = {"seq": "INTEGER", "sent": "REAL NOT NULL DEFAULT 0"}
ACK_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_seq ON outbox (seq);
-- What the drain reads: unsent rows in order, without stepping over the sent ones waiting for central.
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent = 0;
"""
# A file found damaged while running is replaced at once; damaged again so soon, the card is failing:
# writes are then refused (and counted) rather than setting aside a file a minute.
REPLACE_AGAIN_AFTER_S = 60.0

T = TypeVar("T")


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes
    retain: bool
    seq: int | None = None


@dataclass
class _Held:
    """A plain message the storage refused: published from memory, written with the next write that works."""

    topic: str
    payload: bytes
    created: float
    also: Callable[[sqlite3.Connection], None] | None = None


# A message whose payload needs the seq the outbox allocates for it.
SequencedMessage = tuple[str, Callable[[int], bytes]]


class Outbox:
    def __init__(self, path: str | Path, *, max_messages: int = 200_000, max_age_s: float = 7 * 86400,
                 clock: Callable[[], float] = time.time) -> None:
        """Open (or create) the outbox at `path`; ConfigError naming the directory if it cannot be used."""
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_age_s = max_age_s
        self.clock = clock
        self.health = StorageHealth(self.path.parent, clock)
        self.replaced: Replacement | None = None      # how this file began, if it replaced a damaged one
        self.replaced_now: Replacement | None = None  # ... when that happened while this object ran
        self.on_change: Callable[[], None] = lambda: None  # the storage status or the instance changed
        self.on_replaced: list[Callable[[Replacement], None]] = []
        self._schemas: list[str] = []
        self._unsaved = 0                  # sequenced messages refused, not yet added to `dropped` on disk
        self._held: dict[int, _Held] = {}  # by negative id, so they never meet a row id
        self._next_held = -1
        self._folded: dict[int, int] = {}  # held id -> the row id it got when written
        self._gone: set[int] = set()       # published rows whose `sent` mark was refused
        self._max_peeked = 0
        self._replaced_mono = -math.inf
        # The last figures read, for when reads fail: meta, and (rows, sent, lowest seq, oldest created).
        self._last: tuple[dict[str, int], tuple[int, int, int | None, float | None]] = ({}, (0, 0, None, None))
        self._full_at_start = not check_data_dir(self.path.parent)
        self.db = self._open()
        self._instance = self._read_instance()
        if self._full_at_start:
            self.health.failed("full", "no space left on device", 0)

    # ------------------------------------------------------------ opening, replacing

    def _refuse_dir(self, what: str, exc: BaseException) -> ConfigError:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return ConfigError(f"data_dir {self.path.parent}: {what} {self.path.name} ({detail})")

    def _open(self) -> sqlite3.Connection:
        existed = os.path.lexists(self.path)
        problem = precheck(self.path)
        if problem is None:
            db: sqlite3.Connection | None = None
            try:
                db = connect(self.path, exclusive=self._full_at_start)
                if existed:
                    problem = verify(db)
                if problem is None:
                    self._init(db, fresh=not existed)
                    self.replaced = self._load_replaced(db)
                    return db
            except sqlite3.Error as exc:
                if classify(exc) != "corrupt":
                    raise self._refuse_dir("cannot open the outbox", exc) from None
                problem = damaged(str(exc))
            if db is not None:
                db.close()
        return self._start_over(problem)

    def _init(self, db: sqlite3.Connection, *, fresh: bool) -> None:
        try:
            db.executescript(SCHEMA + "".join(self._schemas))
            _add_ack_columns(db)
            # Drawn once per file (INSERT OR IGNORE); below 2**53 so that every JSON reader keeps it exact.
            db.execute("INSERT OR IGNORE INTO meta VALUES ('instance', ?)", (secrets.randbits(52) + 1,))
            # From when the command journal is complete (a file from before this key: from the start).
            db.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (self.clock() if fresh else 0,))
        except sqlite3.Error as exc:
            kind = classify(exc)
            if fresh or kind not in ("full", "error"):
                raise
            # A sound file that already has its tables, on a full disk: it works as it is.
            self.health.failed(kind, exc, 0)

    def _load_replaced(self, db: sqlite3.Connection) -> Replacement | None:
        row = db.execute("SELECT at, reason, kept_as, lost, previous_instance, previous_last_seq FROM replaced"
                         " ORDER BY at DESC LIMIT 1").fetchone()
        if not row:
            return None
        at, reason, *rest = row
        return Replacement(at, reason_from_column(reason), *rest)

    def _start_over(self, problem: str | LazyText) -> sqlite3.Connection:
        """Set the damaged file aside and start a new one (a new instance)."""
        try:
            replacement = set_aside(self.path, problem, self.clock())
        except OSError as exc:
            raise self._refuse_dir("cannot move aside the damaged outbox", exc) from None
        lost = "an unknown number of" if replacement.lost is None else str(replacement.lost)
        log.error("outbox %s: %s; moved to %s (%s unsent messages lost); a new outbox (a new instance) starts",
                  self.path, problem, replacement.kept_as, lost)
        try:
            db = connect(self.path)
            self._init(db, fresh=True)
            if self._max_peeked:  # row ids go on from the old file's: a late PUBACK must not delete a new row
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (self._max_peeked,))
            db.execute("INSERT INTO replaced VALUES (?, ?, ?, ?, ?, ?)",
                       (replacement.at, replacement.stored_reason(), replacement.kept_as, replacement.lost,
                        replacement.previous_instance, replacement.previous_last_seq))
        except sqlite3.Error as exc:
            raise self._refuse_dir("cannot create a new outbox", exc) from None
        self.replaced = self.replaced_now = replacement
        return db

    def _replace_live(self, reason: str) -> bool:
        """The file turned out damaged while running: replace it now (not twice a minute)."""
        now = time.monotonic()
        if now - self._replaced_mono < REPLACE_AGAIN_AFTER_S:
            return False
        self._replaced_mono = now
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
        before = self.replaced_now
        try:
            self.db = self._start_over(lazy_gettext("the outbox file is damaged (%(error)s), found while running",
                                                    error=reason))
        except ConfigError as exc:
            log.error("%s; keeping the outbox in memory until the agent restarts", exc)
            self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            self._init(self.db, fresh=True)
            self.health.failed("error", exc, self._unsaved)
        self._gone.clear()
        self._folded.clear()
        self._last = ({}, (0, 0, None, None))
        self._instance = self._read_instance()
        if self.replaced_now is not None and self.replaced_now is not before:
            for callback in self.on_replaced:
                callback(self.replaced_now)
        self.on_change()
        return True

    def extend_schema(self, sql: str) -> None:
        """More tables in the same file (the command journal), created again in any file that replaces it."""
        self._schemas.append(sql)
        try:
            self.db.executescript(sql)
        except sqlite3.Error as exc:
            kind = classify(exc)
            if kind is None:
                raise
            if not (kind == "corrupt" and self._replace_live(str(exc))):
                self._refused(kind, exc)

    def close(self) -> None:
        if self._unsaved or self._held:
            self.write()  # one last try to put the count and the held results on disk
        if self._unsaved or self._held:
            log.warning("outbox closing with %d messages not stored and %d results held in memory: "
                        "the count and those results are lost", self._unsaved, len(self._held))
        self.db.close()

    # ------------------------------------------------------------ reads

    def read(self, fn: Callable[[sqlite3.Connection], T], default: T) -> T:
        """`fn(db)`, or `default` if the storage fails it (a damaged file is replaced and `fn` tried again)."""
        for attempt in range(2):
            try:
                return fn(self.db)
            except sqlite3.Error as exc:
                if not self._try_again(exc, attempt):
                    return default
        return default

    def _try_again(self, exc: sqlite3.Error, attempt: int) -> bool:
        """After a storage failure: True if the file was found damaged and replaced (try once more), else the
        failure is recorded in `health` (and one that is not the storage's, a bug, is raised)."""
        kind = classify(exc)
        if kind is None:
            raise exc
        if kind == "corrupt" and attempt == 0 and self._replace_live(str(exc)):
            return True
        self._refused(kind, exc)
        return False

    def figures(self) -> dict[str, int]:
        """What `state.outbox` reports, read in one snapshot (a row added between two reads must not make
        `oldest` pass it): pending, unacked (sent, not yet acknowledged), dropped, not_stored, last_seq,
        instance, oldest (lowest seq held; last_seq + 1 when none) and oldest_age (s)."""
        def read(db: sqlite3.Connection) -> tuple[dict[str, int], tuple[int, int, int | None, float | None]]:
            with db:
                db.execute("BEGIN")
                meta = dict(db.execute("SELECT key, value FROM meta"))
                rows = db.execute("SELECT COUNT(*), COALESCE(SUM(sent > 0), 0), MIN(seq), MIN(created)"
                                  " FROM outbox").fetchone()
            return meta, rows

        got = self.read(read, None)
        if got is not None:
            self._last = got
        meta, (rows, sent, oldest, created) = self._last if self._last[0] else ({}, (0, 0, None, None))
        next_seq = meta.get("next_seq", 1)
        return {"pending": rows + len(self._held), "unacked": sent + len(self._gone),
                "dropped": meta.get("dropped", 0) + self._unsaved,
                "not_stored": meta.get("not_stored", 0) + self._unsaved,
                "last_seq": next_seq - 1, "instance": meta.get("instance", 0),
                "oldest": next_seq if oldest is None else oldest,
                "oldest_age": 0 if created is None else max(0, int(self.clock() - created))}

    @property
    def dropped(self) -> int:
        return self.figures()["dropped"]

    @property
    def not_stored(self) -> int:
        return self.figures()["not_stored"]

    def _read_instance(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key='instance'").fetchone()
        return int(row[0]) if row else 0

    @property
    def instance(self) -> int:
        """This file's instance number (a file keeps its own: read once)."""
        return self._instance

    @property
    def last_seq(self) -> int:
        return self.figures()["last_seq"]

    @property
    def journal_since(self) -> float:
        """Since when this file's command journal knows every command (0: since before it recorded that)."""
        row = self.read(lambda db: db.execute("SELECT value FROM meta WHERE key='created'").fetchone(), None)
        return float(row[0]) if row else 0.0

    def __len__(self) -> int:
        return self.figures()["pending"]

    def peek(self, limit: int) -> list[OutboxRow]:
        """The oldest `limit` messages not sent yet, in the order they were added (held results first).

        While a `sent` mark is refused the stored rows wait: publishing them again
        and again would only flood central with duplicates."""
        out = [OutboxRow(hid, m.topic, m.payload, False) for hid, m in list(self._held.items())[:limit]]
        if self._gone or len(out) >= limit:
            return out
        cur = self.read(lambda db: db.execute("SELECT id, topic, payload, retain, seq FROM outbox WHERE sent = 0"
                                               " ORDER BY id LIMIT ?", (limit - len(out),)).fetchall(), [])
        rows = [OutboxRow(i, t, bytes(p), bool(r), q) for i, t, p, r, q in cur]
        if rows:
            self._max_peeked = max(self._max_peeked, rows[-1].id)
        return out + rows

    # ------------------------------------------------------------ writes

    def _refused(self, kind: str, exc: BaseException) -> None:
        if kind == "corrupt":
            kind = "error"  # damaged again within REPLACE_AGAIN_AFTER_S
        if self.health.failed(kind, exc, self._unsaved):
            self.on_change()

    def _transaction(self, body: Callable[[sqlite3.Connection], T] | None) -> tuple[bool, T | None]:
        """Run `body` in one write transaction, together with whatever storage refused before.

        (False, None) if the storage refuses it; the caller decides what is held and what is counted."""
        for attempt in range(2):
            db = self.db
            unsaved, held, gone = self._unsaved, list(self._held.items()), sorted(self._gone)
            folded: dict[int, int] = {}
            try:
                with db:
                    db.execute("BEGIN IMMEDIATE")
                    if gone:
                        _mark_sent(db, gone, self.clock())
                    for hid, msg in held:
                        folded[hid] = db.execute("INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)",
                                                 (msg.topic, msg.payload, msg.created)).lastrowid or 0
                        if msg.also is not None:
                            msg.also(db)
                    if unsaved:
                        db.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                                       " SET value = value + excluded.value",
                                       [("dropped", unsaved), ("not_stored", unsaved)])
                    result = body(db) if body is not None else None
            except sqlite3.Error as exc:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.rollback()
                if self._try_again(exc, attempt):
                    continue
                return False, None
            self._unsaved -= unsaved
            for hid in folded:
                self._held.pop(hid, None)
            self._folded.update(folded)
            self._gone.difference_update(gone)
            if self.health.succeeded(unsaved):
                self.on_change()
            return True, result
        return False, None

    def write(self, body: Callable[[sqlite3.Connection], Any] | None = None) -> bool:
        """Run `body` (more SQL: the command journal) in one write transaction; False if storage refused it."""
        return self._transaction(body)[0]

    def add(self, sequenced: Iterable[SequencedMessage] = (), plain: Iterable[tuple[str, bytes]] = (),
            also: Callable[[sqlite3.Connection], None] | None = None, *, hold: bool = False) -> list[int]:
        """Commit messages in one transaction; returns the seq numbers allocated.

        `also` runs more SQL in the same transaction (the command journal
        records a result and queues its message atomically). If the storage
        refuses the write, the sequenced messages are counted as dropped
        (no seq: [] is returned), unless `hold` (a command result: someone
        waits for it), when they are held in memory without a seq, like the
        plain ones, with `also`."""
        sequenced, plain = list(sequenced), list(plain)
        now = self.clock()

        def body(db: sqlite3.Connection) -> list[int]:
            next_seq = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0]
            rows: list[tuple[str, bytes, float, int | None]] = []
            seqs = []
            for topic, build in sequenced:
                rows.append((topic, build(next_seq), now, next_seq))
                seqs.append(next_seq)
                next_seq += 1
            rows.extend((topic, payload, now, None) for topic, payload in plain)
            db.executemany("INSERT INTO outbox (topic, payload, created, seq) VALUES (?, ?, ?, ?)", rows)
            db.execute("UPDATE meta SET value=? WHERE key='next_seq'", (next_seq,))
            if also is not None:
                also(db)
            self._enforce_bounds(db, now)
            return seqs

        ok, seqs = self._transaction(body)
        if ok:
            return seqs or []
        if hold:
            plain = [(topic, build(None)) for topic, build in sequenced] + plain
        else:
            self._unsaved += len(sequenced)
        for i, (topic, payload) in enumerate(plain):
            self._held[self._next_held] = _Held(topic, payload, now, also if i == len(plain) - 1 else None)
            self._next_held -= 1
        return []

    def _enforce_bounds(self, db: sqlite3.Connection, now: float) -> None:
        dropped = db.execute("DELETE FROM outbox WHERE created < ?", (now - self.max_age_s,)).rowcount
        excess = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] - self.max_messages
        if excess > 0:
            dropped += db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,)).rowcount
        if dropped:
            db.execute("UPDATE meta SET value = value + ? WHERE key='dropped'", (dropped,))

    def expire(self) -> None:
        """Apply the age bound now (called periodically while nothing is added; also a retry of refused writes)."""
        self._transaction(lambda db: self._enforce_bounds(db, self.clock()))

    def published(self, ids: Iterable[int]) -> None:
        """The broker accepted these rows (PUBACK): they wait for central's acknowledgement, marked sent;
        a row without a seq, which no acknowledgement can name, is deleted (a held one forgotten). A
        refused mark is remembered and retried with the next write."""
        disk = []
        for i in ids:
            if i > 0:
                disk.append(i)
            elif self._held.pop(i, None) is None and i in self._folded:
                disk.append(self._folded.pop(i))
        if disk and not self.write(lambda db: _mark_sent(db, disk, self.clock())):
            self._gone.update(disk)

    def acknowledge(self, instance: int, seq: int) -> int:
        """Central holds every seq of `instance` up to `seq`: delete those rows (sent or not). Returns how
        many went; an acknowledgement for another outbox instance (an old SD card's) deletes nothing, and
        one the storage refuses is done by the next (they only grow)."""
        if instance != self.instance:
            return 0
        ok, gone = self._transaction(lambda db: db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,)).rowcount)
        return gone or 0 if ok else 0

    def resend(self) -> int:
        """Mark every sent row unsent, so the drain publishes it again; returns how many."""
        ok, count = self._transaction(lambda db: db.execute("UPDATE outbox SET sent = 0 WHERE sent > 0").rowcount)
        if ok:
            self._gone.clear()  # their marks are moot: unsent is what they are now
        return count or 0 if ok else 0

    def oldest_sent(self) -> float | None:
        """When the longest-waiting sent row was accepted by the broker, or None if no row is sent."""
        return self.read(lambda db: db.execute("SELECT MIN(sent) FROM outbox WHERE sent > 0").fetchone()[0], None)


def _mark_sent(db: sqlite3.Connection, ids: list[int], now: float) -> None:
    db.executemany("UPDATE outbox SET sent = ? WHERE id = ?", [(now, i) for i in ids])
    db.executemany("DELETE FROM outbox WHERE id = ? AND seq IS NULL", [(i,) for i in ids])


def _add_ack_columns(db: sqlite3.Connection) -> None:
    """A file from before acknowledgements: add the columns, and read each row's seq from its payload
    (a result from then has none, and is deleted on PUBACK as it was)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    missing = [c for c in ACK_COLUMNS if c not in have]
    if missing:
        with db:
            db.execute("BEGIN IMMEDIATE")
            for column in missing:
                db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {ACK_COLUMNS[column]}")
            db.execute("UPDATE outbox SET seq = json_extract(CAST(payload AS TEXT), '$.seq')"
                       " WHERE json_valid(CAST(payload AS TEXT))"
                       " AND json_type(CAST(payload AS TEXT), '$.seq') = 'integer'")
    db.executescript(ACK_INDEXES)
