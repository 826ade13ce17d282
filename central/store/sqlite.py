"""The embedded point store: SQLite in WAL mode, zero set-up.

Ingest writes and the web app reads the same file from separate processes;
WAL lets readers run while a batch commits.

One row per sample, as the agent sent it: (gateway, device, ts) and the
metrics as one JSON object, like one line of InfluxDB line protocol. Rows
per metric cost ingest four times as much (six inserts per message instead
of one: ~30 against ~8 us a message measured) and took 51 bytes a point
against 28; a history query pulls its metric out with `->`
(~10 ms for an hour of 1 Hz samples). A redelivered sample overwrites
itself; two samples of one device with the same timestamp merge.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from campus import contract
from campus.errors import StoreError
from central.store.base import MAX_POINTS, Point, Sample, Window, downsample_step

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    gateway TEXT NOT NULL, device TEXT NOT NULL, ts REAL NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (gateway, device, ts)
) WITHOUT ROWID;
"""
_MERGE = " ON CONFLICT (gateway, device, ts) DO UPDATE SET metrics = json_patch(metrics, excluded.metrics)"
_UPSERT = "INSERT INTO samples VALUES (?, ?, ?, ?)" + _MERGE
# Files written before samples became rows kept a row per point in `points`.
_MIGRATE = ("INSERT INTO samples SELECT gateway, device, ts, json_group_object(metric, COALESCE(text, value))"
            " FROM points WHERE true GROUP BY gateway, device, ts" + _MERGE)
_HAS_POINTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'points'"
_dump_metrics = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_load_json = json.JSONDecoder().decode


# One metric of one device's samples in [start, end]: `->` hands back the value as JSON text
# (json_extract would return a string cut at its first NUL).
_SERIES = "SELECT ts, metrics -> ? AS value FROM samples WHERE gateway = ? AND device = ? AND ts BETWEEN ? AND ?"


def _json_path(metric: str) -> str:
    return f'$."{contract.check_segment(metric, "metric")}"'


def _metric_value(text: str) -> float | str:
    """One metric as a query returns it: a string as stored, any number as a float."""
    value = _load_json(text)
    return value if isinstance(value, str) else float(value)


def enable_wal(db: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """Write-ahead logging (many readers beside one writer, across processes) and NORMAL sync (with WAL, a
    crash of the process loses nothing committed). Two processes opening a new file at once: switching to
    WAL can answer "locked" at once, without the busy timeout, so it is tried again for `wait_s`."""
    db.execute(f"PRAGMA busy_timeout={int(wait_s * 1000)}")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    db.execute("PRAGMA synchronous=NORMAL")


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection tuned for one writer and many readers across processes."""
    db: sqlite3.Connection | None = None
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        enable_wal(db)
        return db
    except (OSError, sqlite3.Error) as exc:
        if db is not None:
            with contextlib.suppress(Exception):
                db.close()
        raise StoreError(f"cannot open SQLite database {path}: {exc}") from None


# A pool's bounds. Idle connections wait for the next thread (opening one costs a few hundred
# microseconds and its first statements re-read the schema); a web server's burst of request threads
# opens more, closed again as they come back. A thread beyond MAX_CONNECTIONS waits up to
# CONNECTION_WAIT_S for one, then gets a StoreError (a 503), never an open-file limit's EMFILE.
IDLE_CONNECTIONS = 4
MAX_CONNECTIONS = 32
CONNECTION_WAIT_S = 30.0


class _Lease:
    """A thread's hold on one connection; kept in the pool's threading.local, so it dies with the thread."""

    __slots__ = ("conn", "give_back", "__weakref__")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.give_back: weakref.finalize | None = None


class ConnectionPool:
    """Connections to one SQLite file for many threads, each connection used by one thread at a time.

    A thread leases a connection at its first statement and keeps it, so all its statements (and any
    transaction) run on one connection, until it gives it back: `release()` (the web app at the end of
    each request, a background loop after each round), or the thread's end: the lease lives in a
    threading.local, which CPython clears when a thread finishes, and a weakref.finalize on the lease
    then returns the connection (tests/test_sqlite_store.py checks both). Werkzeug starts a thread per
    request: a connection kept per thread for ever leaked one per request (issue 14).
    """

    def __init__(self, path: str, idle: int = IDLE_CONNECTIONS, limit: int = MAX_CONNECTIONS,
                 wait_s: float = CONNECTION_WAIT_S) -> None:
        self.path, self.idle, self.limit, self.wait_s = path, idle, limit, wait_s
        self._local = threading.local()
        # Re-entrant: a lease's finalizer could run in a thread that holds the lock (if the cyclic
        # garbage collector ever freed one there); it must not deadlock.
        self._cond = threading.Condition(threading.RLock())
        self._idle: list[sqlite3.Connection] = []
        self._leased: set[sqlite3.Connection] = set()
        self._opening = 0
        self._closed = False

    def connection(self) -> sqlite3.Connection:
        """This thread's connection: the one it holds, else one from the pool (StoreError if none comes)."""
        lease = getattr(self._local, "lease", None)
        if lease is not None and not self._closed:
            return lease.conn
        if self._closed:
            raise StoreError(f"{self.path}: the database was closed (the program is stopping)")
        lease = _Lease(self._take())
        lease.give_back = weakref.finalize(lease, self._give_back, lease.conn)
        lease.give_back.atexit = False  # at exit the process closes its files anyway
        self._local.lease = lease
        return lease.conn

    def release(self) -> None:
        """Give this thread's connection back (nothing if it holds none)."""
        lease = self._local.__dict__.pop("lease", None)
        if lease is not None and lease.give_back is not None:
            lease.give_back()  # runs _give_back once; the finalizer will not run again

    def counts(self) -> tuple[int, int]:
        """(connections open, of which idle)."""
        with self._cond:
            return len(self._leased) + len(self._idle), len(self._idle)

    def close(self) -> None:
        """Close every connection, idle or leased: the program is stopping."""
        with self._cond:
            self._closed = True
            conns = self._idle + list(self._leased)
            self._idle.clear()
            self._leased.clear()
            self._cond.notify_all()
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _take(self) -> sqlite3.Connection:
        deadline = None
        with self._cond:
            while True:
                if self._closed:
                    raise StoreError(f"{self.path}: the database was closed (the program is stopping)")
                if self._idle:
                    conn = self._idle.pop()  # the most recently used: its pages are warm
                    self._leased.add(conn)
                    return conn
                if len(self._leased) + self._opening < self.limit:
                    self._opening += 1  # counts against the limit while it opens, outside the lock
                    break
                now = time.monotonic()
                deadline = deadline or now + self.wait_s
                if now >= deadline:
                    raise StoreError(f"{self.path}: all {self.limit} database connections stayed busy for "
                                     f"{self.wait_s:g} s")
                self._cond.wait(deadline - now)
        try:
            conn = connect(self.path)
        except BaseException:
            with self._cond:
                self._opening -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._opening -= 1
            closed = self._closed
            if not closed:
                self._leased.add(conn)
        if closed:
            conn.close()
            raise StoreError(f"{self.path}: the database was closed (the program is stopping)")
        return conn

    def _give_back(self, conn: sqlite3.Connection) -> None:
        # Runs in the releasing thread, or while CPython tears down a finished thread: no logging here
        # (a log record asks threading.current_thread(), which registers a dummy for a dead thread).
        with self._cond:
            leased = conn in self._leased
            self._leased.discard(conn)
            # A connection left inside a transaction (a thread that died half-way) is not handed on.
            keep = leased and not self._closed and len(self._idle) < self.idle and not conn.in_transaction
            if keep:
                self._idle.append(conn)
            self._cond.notify()
        if not keep:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


class PerThreadConnection:
    """A SQLite file for many threads: `self.db` is this thread's connection, leased from a bounded
    pool (`ConnectionPool`), so a web server's request threads never share a connection's transaction
    state, and a thread that finishes or calls `release()` gives its connection back."""

    schema = ""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.pool = ConnectionPool(self.path)
        self.db.executescript(self.schema)

    @property
    def db(self) -> sqlite3.Connection:
        return self.pool.connection()

    def release(self) -> None:
        """Give this thread's connection back to the pool (at the end of a request, or of a loop's round)."""
        self.pool.release()

    def convert_once(self, needed: Callable[[], bool], convert: Callable[[], None], what: str) -> None:
        """Convert a file an earlier version wrote: look first without a lock (the usual case, nothing
        to do), then under the write lock look again (two processes opening it at once: one converts)."""
        try:
            if not needed():
                return
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                if needed():
                    convert()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot {what}: {exc}") from None

    def close(self) -> None:
        """Close every connection (the program is stopping); using it afterwards raises StoreError."""
        self.pool.close()
class SqlitePointStore(PerThreadConnection):
    schema = SCHEMA

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.convert_once(lambda: bool(self.db.execute(_HAS_POINTS).fetchone()), self._migrate_points,
                          "convert the old points table")

    def _migrate_points(self) -> None:
        moved = self.db.execute("SELECT COUNT(*) FROM points").fetchone()[0]
        self.db.execute(_MIGRATE)
        self.db.execute("DROP TABLE points")
        log.warning("%s: moved %d points from the old per-point table into samples", self.path, moved)

    def write(self, samples: list[Sample]) -> int:
        rows = [(s.gateway, s.device, s.ts, _dump_metrics(s.values)) for s in samples if s.values]
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany(_UPSERT, rows)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: write failed: {exc}") from None
        return 0  # any JSON value is a valid row: nothing is refused

    def check(self) -> None:
        """Opening the file already created or converted it; nothing more to reach."""

    def query(self, gateway: str, device: str, metric: str, start: float, end: float,
              limit: int = MAX_POINTS) -> list[Point]:
        # Newest first along the primary key, so a cut drops the oldest points, never the newest.
        rows = self.db.execute(
            f"SELECT ts, value FROM ({_SERIES}) WHERE value IS NOT NULL ORDER BY ts DESC LIMIT ?",
            (_json_path(metric), gateway, device, start, end, limit)).fetchall()
        rows.reverse()
        return [(ts, _metric_value(value)) for ts, value in rows]

    def window(self, gateway: str, device: str, metric: str, start: float, end: float,
               max_points: int = MAX_POINTS) -> Window:
        newest = self.query(gateway, device, metric, start, end, max_points + 1)
        if len(newest) <= max_points:
            return Window(newest)
        step = downsample_step(start, end, max_points)
        bucket = "GROUP BY CAST((ts - ?) / ? AS INTEGER)"
        path = _json_path(metric)
        # The newest sample of each bucket, found along the primary key without opening any JSON (a
        # third of the time on a week of 1 Hz samples); it carries the metric unless the device sent
        # that metric in some samples only, and then the exact query below takes the newest that has it.
        rows = self.db.execute(
            "SELECT ts, metrics -> ? FROM samples WHERE gateway = ? AND device = ? AND ts IN"
            f" (SELECT MAX(ts) FROM samples WHERE gateway = ? AND device = ? AND ts BETWEEN ? AND ? {bucket})"
            " ORDER BY ts", (path, gateway, device, gateway, device, start, end, start, step)).fetchall()
        if any(value is None for _, value in rows):
            # With one max() in a query, SQLite takes the other columns from the row that holds it.
            rows = self.db.execute(f"SELECT MAX(ts), value FROM ({_SERIES}) WHERE value IS NOT NULL {bucket}"
                                   " ORDER BY 1", (path, gateway, device, start, end, start, step)).fetchall()
        return Window([(ts, _metric_value(value)) for ts, value in rows][-max_points:], step)

    def count(self, gateway: str | None = None) -> int:
        """Points (metric values) stored, of one gateway or all."""
        where, args = ("WHERE gateway = ?", (gateway,)) if gateway else ("", ())
        return self.db.execute("SELECT COALESCE(SUM((SELECT COUNT(*) FROM json_each(metrics))), 0)"
                               f" FROM samples {where}", args).fetchone()[0]
