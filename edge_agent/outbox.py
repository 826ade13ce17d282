"""The agent's durable outbox: store first, publish second, delete on PUBACK.

Every telemetry sample, event and command result is committed to SQLite
(WAL, synchronous=FULL, so a power cut keeps what was committed) before the
MQTT link sees it, and leaves only when the broker acknowledged it. The
per-gateway `seq` is allocated here, in the same transaction as the row, so
it is strictly increasing across restarts and never reused.

A new outbox file draws a random `instance` number, which the agent reports
in its `state` (`outbox.instance`): a gateway whose outbox was lost (a new SD
card) starts again at seq 1, and central, seeing another instance, starts
counting that gateway's gaps and duplicates afresh instead of taking the new
numbers for redeliveries.

Bounds: at most `max_messages` rows and nothing older than `max_age_s`.
When a bound is hit the *oldest* rows are dropped and counted in
`dropped`: after a long outage a facility manager wants the recent days,
and central sees the dropped `seq` numbers as gaps, which is the truth.
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


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes
    retain: bool


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
        # Drawn once per file (INSERT OR IGNORE); below 2**53 so that every JSON reader keeps it exact.
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('instance', ?)", (secrets.randbits(52) + 1,))
        self.max_messages = max_messages
        self.max_age_s = max_age_s
        self.clock = clock

    def close(self) -> None:
        self.db.close()

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
            rows = []
            for topic, build in sequenced:
                rows.append((topic, build(next_seq), now))
                seqs.append(next_seq)
                next_seq += 1
            rows.extend((topic, payload, now) for topic, payload in plain)
            self.db.executemany("INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)", rows)
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
        """The oldest `limit` messages, in the order they were added."""
        cur = self.db.execute("SELECT id, topic, payload, retain FROM outbox ORDER BY id LIMIT ?", (limit,))
        return [OutboxRow(i, t, bytes(p), bool(r)) for i, t, p, r in cur]

    def remove(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in ids])
