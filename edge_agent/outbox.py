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
drops the duplicates. A row without a seq (none are written now; a file
from before may hold some) is deleted on PUBACK as before.

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
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('next_seq', 1), ('dropped', 0);
"""
# Columns added for central's acknowledgement (a file from before gains them, see _add_ack_columns):
# the row's seq (NULL for a message without one), and when the broker last accepted it (0: not sent).
ACK_COLUMNS = {"seq": "INTEGER", "sent": "REAL NOT NULL DEFAULT 0"}
ACK_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_seq ON outbox (seq);
-- What the drain reads: unsent rows in order, without stepping over the sent ones waiting for central.
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent = 0;
"""


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes
    retain: bool
    seq: int | None = None


# A message whose payload needs the seq the outbox allocates for it.
SequencedMessage = tuple[str, Callable[[int], bytes]]


class Outbox:
    def __init__(self, path: str | Path, *, max_messages: int = 200_000, max_age_s: float = 7 * 86400,
                 clock: Callable[[], float] = time.time) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._add_ack_columns()
        # Drawn once per file (INSERT OR IGNORE); below 2**53 so that every JSON reader keeps it exact.
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('instance', ?)", (secrets.randbits(52) + 1,))
        self.max_messages = max_messages
        self.max_age_s = max_age_s
        self.clock = clock

    def close(self) -> None:
        self.db.close()

    def _add_ack_columns(self) -> None:
        """A file from before acknowledgements: add the columns, and read each row's seq from its payload
        (a result from then has none, and is deleted on PUBACK as it was)."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(outbox)")}
        missing = [c for c in ACK_COLUMNS if c not in have]
        if missing:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                for column in missing:
                    self.db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {ACK_COLUMNS[column]}")
                self.db.execute("UPDATE outbox SET seq = json_extract(CAST(payload AS TEXT), '$.seq')"
                                " WHERE json_valid(CAST(payload AS TEXT))"
                                " AND json_type(CAST(payload AS TEXT), '$.seq') = 'integer'")
        self.db.executescript(ACK_INDEXES)

    def _meta(self, key: str) -> int:
        return self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0]

    @property
    def dropped(self) -> int:
        return self._meta("dropped")

    @property
    def instance(self) -> int:
        return self._meta("instance")

    @property
    def last_seq(self) -> int:
        return self._meta("next_seq") - 1

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def add(self, sequenced: Iterable[SequencedMessage] = (), plain: Iterable[tuple[str, bytes]] = (),
            also: Callable[[sqlite3.Connection], None] | None = None) -> list[int]:
        """Commit messages in one transaction; returns the seq numbers allocated.

        `also` runs more SQL in the same transaction (the command journal
        records a result and queues its message atomically)."""
        now = self.clock()
        seqs: list[int] = []
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            next_seq = self._meta("next_seq")
            rows: list[tuple[str, bytes, float, int | None]] = []
            for topic, build in sequenced:
                rows.append((topic, build(next_seq), now, next_seq))
                seqs.append(next_seq)
                next_seq += 1
            rows.extend((topic, payload, now, None) for topic, payload in plain)
            self.db.executemany("INSERT INTO outbox (topic, payload, created, seq) VALUES (?, ?, ?, ?)", rows)
            self.db.execute("UPDATE meta SET value=? WHERE key='next_seq'", (next_seq,))
            if also is not None:
                also(self.db)
            self._enforce_bounds(now)
        return seqs

    def _enforce_bounds(self, now: float) -> None:
        dropped = self.db.execute("DELETE FROM outbox WHERE created < ?", (now - self.max_age_s,)).rowcount
        excess = len(self) - self.max_messages
        if excess > 0:
            dropped += self.db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,)).rowcount
        if dropped:
            self.db.execute("UPDATE meta SET value = value + ? WHERE key='dropped'", (dropped,))

    def expire(self) -> None:
        """Apply the age bound now (called periodically while nothing is added)."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self._enforce_bounds(self.clock())

    def peek(self, limit: int) -> list[OutboxRow]:
        """The oldest `limit` messages not sent yet, in the order they were added."""
        cur = self.db.execute("SELECT id, topic, payload, retain, seq FROM outbox WHERE sent = 0 ORDER BY id LIMIT ?",
                              (limit,))
        return [OutboxRow(i, t, bytes(p), bool(r), q) for i, t, p, r, q in cur]

    def remove(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in ids])

    def published(self, ids: Iterable[int]) -> None:
        """The broker accepted these rows (PUBACK): they wait for central's acknowledgement, marked sent;
        a row without a seq, which no acknowledgement can name, is deleted."""
        marks = [(self.clock(), i) for i in ids]
        if marks:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany("UPDATE outbox SET sent = ? WHERE id = ?", marks)
                self.db.executemany("DELETE FROM outbox WHERE id = ? AND seq IS NULL", [(i,) for _, i in marks])

    def acknowledge(self, instance: int, seq: int) -> int:
        """Central holds every seq of `instance` up to `seq`: delete those rows (sent or not). Returns how
        many went; an acknowledgement for another outbox instance (an old SD card's) deletes nothing."""
        if instance != self.instance:
            return 0
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,)).rowcount

    def resend(self) -> int:
        """Mark every sent row unsent, so the drain publishes it again; returns how many."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db.execute("UPDATE outbox SET sent = 0 WHERE sent > 0").rowcount

    def oldest_sent(self) -> float | None:
        """When the longest-waiting sent row was accepted by the broker, or None if no row is sent."""
        return self.db.execute("SELECT MIN(sent) FROM outbox WHERE sent > 0").fetchone()[0]

    def figures(self) -> dict[str, int]:
        """What `state.outbox` reports, read in one snapshot (a row added between two reads must not make
        `oldest` pass it): pending, unacked (sent, not yet acknowledged), dropped, last_seq, instance,
        oldest (lowest seq held; last_seq + 1 when none) and oldest_age (s)."""
        with self.db:
            self.db.execute("BEGIN")
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
            pending, unacked, oldest, created = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(sent > 0), 0), MIN(seq), MIN(created) FROM outbox").fetchone()
        return {"pending": pending, "unacked": unacked, "dropped": meta["dropped"], "last_seq": meta["next_seq"] - 1,
                "instance": meta["instance"], "oldest": meta["next_seq"] if oldest is None else oldest,
                "oldest_age": 0 if created is None else max(0, int(self.clock() - created))}
