"""The embedded SQLite store: one row per sample, queries per metric, old files converted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from campus.errors import PayloadError
from central.store.base import Sample
from central.store.sqlite import SqlitePointStore

ENV = {"temperature_c": 22.5, "co2_ppm": 812, "pm25_ugm3": 14.2}


def test_values_come_back_per_metric_with_their_types(tmp_path: Path) -> None:
    store = SqlitePointStore(tmp_path / "c.db")
    try:
        store.write([Sample("s", "gw1", "env", "environment", 100.0 + i, {**ENV, "co2_ppm": 800 + i}) for i in range(5)]
                    + [Sample("s", "gw1", "proj", "projector", 103.5, {"power": "warming", "input": "hdmi1"})])
        assert store.query("gw1", "env", "co2_ppm", 101, 103) == [(101.0, 801), (102.0, 802), (103.0, 803)]
        assert store.query("gw1", "env", "temperature_c", 0, 1e10, limit=2) == [(100.0, 22.5), (101.0, 22.5)]
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
