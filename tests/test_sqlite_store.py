"""The embedded SQLite store: one row per sample, queries per metric, old files converted; its connection pool."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from campus.errors import PayloadError, StoreError
from central.store.base import Sample, Window
from central.store.sqlite import ConnectionPool, SqlitePointStore
from tests.servers import wait_until
from tests.stores import assert_newest_is_in_the_answer

ENV = {"temperature_c": 22.5, "co2_ppm": 812, "pm25_ugm3": 14.2}


def test_values_come_back_per_metric_with_their_types(tmp_path: Path) -> None:
    store = SqlitePointStore(tmp_path / "c.db")
    try:
        store.write([Sample("s", "gw1", "env", "environment", 100.0 + i, {**ENV, "co2_ppm": 800 + i}) for i in range(5)]
                    + [Sample("s", "gw1", "proj", "projector", 103.5, {"power": "warming", "input": "hdmi1"})])
        assert store.query("gw1", "env", "co2_ppm", 101, 103) == [(101.0, 801), (102.0, 802), (103.0, 803)]
        # A cut keeps the newest points: a caller pages back from the oldest it got.
        assert store.query("gw1", "env", "temperature_c", 0, 1e10, limit=2) == [(103.0, 22.5), (104.0, 22.5)]
        assert store.query("gw1", "proj", "power", 0, 1e10) == [(103.5, "warming")]
        assert store.query("gw1", "env", "power", 0, 1e10) == []  # a metric this device never had
        assert store.query("gw2", "env", "co2_ppm", 0, 1e10) == []
        assert store.count() == 5 * 3 + 2 and store.count("gw1") == 17 and store.count("gw2") == 0
    finally:
        store.close()


def test_redelivery_overwrites_and_same_instant_merges(tmp_path: Path) -> None:
    store = SqlitePointStore(tmp_path / "c.db")
    try:
        first = [Sample("s", "gw1", "env", "environment", 100.0, ENV)]
        store.write(first)
        store.write(first)  # a redelivered batch
        store.write([Sample("s", "gw1", "env", "environment", 100.0, {"noise_dba": 41.7})])  # same instant, more
        assert store.count() == 4
        assert store.query("gw1", "env", "co2_ppm", 0, 1e10) == [(100.0, 812)]
        assert store.query("gw1", "env", "noise_dba", 0, 1e10) == [(100.0, 41.7)]
    finally:
        store.close()


@pytest.mark.parametrize("text", ["\x00", "on\x00off", "\u2028", "投影仪 ON", '"quoted" \\ back', "x" * 256])
def test_a_string_metric_comes_back_exactly(tmp_path: Path, text: str) -> None:
    # SQLite's json_extract cuts a string at its first NUL (found by tests/test_fuzz_ingest.py).
    store = SqlitePointStore(tmp_path / "c.db")
    try:
        store.write([Sample("s", "gw1", "proj", "projector", 100.0, {"input": text, "lamp_hours": 7})])
        assert store.query("gw1", "proj", "input", 0, 1e10) == [(100.0, text)]
        [(_, hours)] = store.query("gw1", "proj", "lamp_hours", 0, 1e10)
        assert type(hours) is float and hours == 7.0
    finally:
        store.close()


@pytest.mark.parametrize("metric", ['co2"ppm', "a b", "", "$.x", "x" * 65])
def test_a_metric_name_that_is_not_one_is_refused(tmp_path: Path, metric: str) -> None:
    store = SqlitePointStore(tmp_path / "c.db")
    try:
        with pytest.raises(PayloadError, match="metric"):
            store.query("gw1", "env", metric, 0, 1e10)
    finally:
        store.close()


def test_a_long_window_is_downsampled_and_ends_with_the_newest_point(tmp_path: Path) -> None:
    """50,000 samples in the window: at most the points asked for, the newest sample of each step, and
    the window's newest point last (the store used to answer the oldest 10,000 and say nothing)."""
    store = SqlitePointStore(tmp_path / "c.db")
    try:
        store.write([Sample("s", "gw1", "env", "environment", 1000.0 + i, {"co2_ppm": 400 + i % 1000})
                     for i in range(50_000)])
        store.write([Sample("s", "gw1", "env", "environment", 60_000.0, {"co2_ppm": 9999})])  # after the window
        newest = (50_999.0, 400.0 + 49_999 % 1000)
        assert store.query("gw1", "env", "co2_ppm", 0, 51_000, limit=3) == [
            (50_997.0, 1397.0), (50_998.0, 1398.0), newest]
        got = store.window("gw1", "env", "co2_ppm", 0, 51_000, max_points=1000)
        assert got.downsampled and got.step == 51.103  # 51,000 s in 998 buckets, rounded up to whole ms
        assert len(got.points) <= 1000 and got.points[-1] == newest
        # Each point is a real sample, the newest of its bucket.
        assert all(int(ts) == ts and v == 400 + (ts - 1000) % 1000 for ts, v in got.points)
        buckets = [int(ts / got.step) for ts, _ in got.points]
        assert buckets == sorted(set(buckets))
        assert all(int((ts + 1) / got.step) != b for (ts, _), b in zip(got.points[:-1], buckets, strict=False))
        # A window that holds few enough points comes back whole, raw.
        assert store.window("gw1", "env", "co2_ppm", 50_000, 51_000) == Window(
            [(float(t), 400.0 + (t - 1000) % 1000) for t in range(50_000, 51_000)])
    finally:
        store.close()


def test_50000_points_in_a_window_the_newest_is_in_the_answer(tmp_path: Path) -> None:
    store = SqlitePointStore(tmp_path / "c.db")
    try:
        assert_newest_is_in_the_answer(store)
    finally:
        store.close()


def test_downsampling_a_metric_only_some_samples_carry(tmp_path: Path) -> None:
    """Where the newest sample of a bucket lacks the metric, the newest that has it stands for the bucket."""
    store = SqlitePointStore(tmp_path / "c.db")
    try:
        store.write([Sample("s", "gw1", "proj", "projector", float(t), {"lamp_hours": 7, **({"power": "on"} if t % 10 < 3
                                                                                           else {})})
                     for t in range(100)])
        got = store.window("gw1", "proj", "power", 0, 99, max_points=12)
        assert got.step == 9.9 and got.points[-1] == (92.0, "on")
        assert [ts for ts, _ in got.points] == [2.0, 12.0, 22.0, 32.0, 42.0, 52.0, 62.0, 72.0, 82.0, 92.0]
    finally:
        store.close()


def old_file(path: Path, script: str) -> Path:
    """A database file as an earlier version left it (`script`: its tables and rows)."""
    db = sqlite3.connect(path)
    db.executescript(script)
    db.commit()
    db.close()
    return path


def test_a_file_with_the_old_per_point_table_is_converted(tmp_path: Path) -> None:
    path = old_file(tmp_path / "old.db", """
        CREATE TABLE points (gateway TEXT NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL, ts REAL NOT NULL,
            value REAL, text TEXT, PRIMARY KEY (gateway, device, metric, ts)) WITHOUT ROWID;
        INSERT INTO points VALUES ('gw1', 'env', 'co2_ppm', 100.0, 812.0, NULL), ('gw1', 'env', 'co2_ppm', 160.0, 790.0, NULL),
            ('gw1', 'env', 'temperature_c', 100.0, 22.5, NULL), ('gw1', 'proj', 'power', 100.0, NULL, 'on');
    """)
    store = SqlitePointStore(path)
    try:
        assert store.count() == 4
        assert store.query("gw1", "env", "co2_ppm", 0, 1e10) == [(100.0, 812.0), (160.0, 790.0)]
        assert store.query("gw1", "env", "temperature_c", 0, 1e10) == [(100.0, 22.5)]
        assert store.query("gw1", "proj", "power", 0, 1e10) == [(100.0, "on")]
        tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "points" not in tables
    finally:
        store.close()
    again = SqlitePointStore(path)  # opening it again changes nothing
    try:
        assert again.count() == 4
    finally:
        again.close()


# ---------------------------------------------------------------- the connection pool


def _in_thread(fn: Callable[[], object]) -> object:
    """Run `fn` in a new thread that ends right after it (as a Werkzeug request thread does); its result
    or its exception."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            out.append(exc)
    worker = threading.Thread(target=run)
    worker.start()
    worker.join(10)
    assert not worker.is_alive()
    if isinstance(out[0], Exception):
        raise out[0]
    return out[0]


def test_a_finished_thread_gives_its_connection_back(tmp_path: Path) -> None:
    store = SqlitePointStore(tmp_path / "c.db")
    try:
        store.release()
        # 200 threads one after another, each using the store and ending without a word:
        # CPython clears a finished thread's locals, and the lease's finalizer gives the connection back.
        used = {id(_in_thread(lambda: store.db.execute("SELECT 1") and store.db)) for _ in range(200)}
        assert store.pool.counts() == (1, 1)
        assert len(used) == 1  # the same connection every time, not a new one per thread
    finally:
        store.close()


def test_release_gives_the_connection_back_and_keeps_only_a_few_idle(tmp_path: Path) -> None:
    pool = ConnectionPool(str(tmp_path / "c.db"), idle=2, limit=10)
    go, taken = threading.Event(), threading.Barrier(6)
    held: list[sqlite3.Connection] = []

    def request() -> None:  # six at once, each holding its own connection, then releasing it
        held.append(pool.connection())
        taken.wait(10)
        go.wait(10)
        pool.release()
    workers = [threading.Thread(target=request) for _ in range(6)]
    try:
        for w in workers:
            w.start()
        wait_until(lambda: pool.counts()[0] == 6, 10, message="six connections leased")
        assert len({id(c) for c in held}) == 6  # no two threads share one
        go.set()
        for w in workers:
            w.join(10)
        assert pool.counts() == (2, 2)  # two kept for the next threads, four closed
        closed = [c for c in held if _is_closed(c)]
        assert len(closed) == 4
    finally:
        pool.close()
    assert all(_is_closed(c) for c in held)


def test_a_thread_past_the_limit_waits_for_one_then_is_told(tmp_path: Path) -> None:
    pool = ConnectionPool(str(tmp_path / "c.db"), idle=1, limit=1, wait_s=0.3)
    try:
        first = pool.connection()
        with pytest.raises(StoreError, match="all 1 database connections stayed busy"):
            _in_thread(pool.connection)
        # One that is given back while another thread waits goes to the waiting thread.
        waiting = threading.Thread(target=lambda: got.append(pool.connection()))
        got: list[sqlite3.Connection] = []
        pool.wait_s = 10
        waiting.start()
        pool.release()
        waiting.join(10)
        assert got == [first]
    finally:
        pool.close()


def test_a_connection_left_in_a_transaction_is_not_handed_on(tmp_path: Path) -> None:
    store = SqlitePointStore(tmp_path / "c.db")
    try:
        store.release()

        def dies_mid_transaction() -> sqlite3.Connection:
            store.db.execute("BEGIN IMMEDIATE")
            return store.db
        conn = _in_thread(dies_mid_transaction)
        assert isinstance(conn, sqlite3.Connection) and _is_closed(conn)
        # Its write lock went with it: another connection can write at once.
        store.write([Sample("s", "gw1", "env", "environment", 1.0, ENV)])
        assert store.count() == len(ENV)
    finally:
        store.close()


def test_close_closes_leased_connections_too_and_later_use_is_a_store_error(tmp_path: Path) -> None:
    store = SqlitePointStore(tmp_path / "c.db")
    conn = store.db
    store.close()
    assert _is_closed(conn)
    with pytest.raises(StoreError, match="closed"):
        store.query("gw1", "env", "co2_ppm", 0, 1)


def _is_closed(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False
