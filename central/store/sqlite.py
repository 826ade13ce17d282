"""The embedded point store: SQLite in WAL mode, zero set-up.

Ingest writes and the web app reads the same file from separate processes;
WAL lets readers run while a batch commits.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

from campus.errors import StoreError
from central.store.base import Point

SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    gateway TEXT NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL, ts REAL NOT NULL,
    value REAL, text TEXT,
    PRIMARY KEY (gateway, device, metric, ts)
) WITHOUT ROWID;
"""


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection tuned for one writer and many readers across processes."""
    deadline = time.monotonic() + 30
    db: sqlite3.Connection | None = None
    while True:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
            db.execute("PRAGMA busy_timeout=30000")
            # Two processes opening a new file at once: switching to WAL can answer
            # "locked" without waiting on the busy timeout, so retry it here.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash of the process loses nothing committed
            return db
        except sqlite3.OperationalError as exc:
            with contextlib.suppress(Exception):
                db.close()
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise StoreError(f"cannot open SQLite database {path}: {exc}") from None
            time.sleep(0.05)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SQLite database {path}: {exc}") from None


class PerThreadConnection:
    """One SQLite connection per thread: a web server's request threads must not
    share a connection's transaction state."""

    schema = ""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.db.executescript(self.schema)

    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


class SqlitePointStore(PerThreadConnection):
    schema = SCHEMA

    def write(self, points: list[Point]) -> None:
        rows = [(p.gateway, p.device, p.metric, p.ts, None if isinstance(p.value, str) else float(p.value),
                 p.value if isinstance(p.value, str) else None) for p in points]
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany("INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: write failed: {exc}") from None

    def query(self, gateway: str, device: str, metric: str, start: float, end: float,
              limit: int = 10_000) -> list[tuple[float, float | str]]:
        cur = self.db.execute(
            "SELECT ts, value, text FROM points WHERE gateway=? AND device=? AND metric=? AND ts BETWEEN ? AND ?"
            " ORDER BY ts LIMIT ?", (gateway, device, metric, start, end, limit))
        return [(ts, text if value is None else value) for ts, value, text in cur]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM points").fetchone()[0]
