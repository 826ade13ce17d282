"""Fixtures that start real servers on ephemeral loopback ports."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.servers import (
    POSTGRES_HINT,
    InfluxDB,
    Mosquitto,
    PostgreSQL,
    ServerProcess,
    SmallFilesystem,
    VictoriaMetrics,
)

# Property tests draw the same examples on every run, so that a red CI means a
# change broke something, not that this run happened on a new input (stop 10's
# CI failed on an input no earlier run had drawn). New inputs are a campaign's
# job: FUZZ_EXAMPLES=10 scripts/test tests/test_fuzz*.py draws fresh random
# examples, ten times as many; what it finds becomes a regression test.
# No deadline: hypothesis's 200 ms per example is a timing assertion, and on a loaded 2-core machine a
# correct test failed on it (test_ledger's presence property); speed is the benchmarks' business.
settings.register_profile("repeatable", derandomize=True, database=None, deadline=None)
settings.register_profile("campaign", derandomize=False, deadline=None)
settings.load_profile("campaign" if os.environ.get("FUZZ_EXAMPLES") else "repeatable")


def _running(server: ServerProcess) -> Iterator[Any]:
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    yield from _running(Mosquitto(tmp_path / "mosquitto"))


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    yield from _running(VictoriaMetrics(tmp_path))


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxDB]:
    yield from _running(InfluxDB(tmp_path))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallFilesystem]:
    """An 8 MB filesystem of its own at tmp_path/disk (root only: skipped elsewhere), unmounted afterwards."""
    why = SmallFilesystem.available()
    if why:
        pytest.skip(why)
    disk = SmallFilesystem(tmp_path / "disk")
    try:
        disk.mount()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        yield disk
    finally:
        disk.umount()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgreSQL]:
    """One PostgreSQL server of our own for the whole run, started the first time a test asks for it
    (initdb and start take 0.6-1 s here, a fresh database 0.05-0.2 s). Tests share the server,
    never a database: take `pg_url` for a fresh one. No PostgreSQL installed is a failure, not a skip:
    a green run must have run the PostgreSQL tests."""
    problem = None
    try:
        server = PostgreSQL()
        server.start()
    except FileNotFoundError as exc:  # no binaries
        problem = str(exc)
    except Exception as exc:  # noqa: BLE001 - reported with the server's log below
        problem = f"could not start PostgreSQL: {exc}\n{server.log_tail()}\n({POSTGRES_HINT})"
        server.remove()
    if problem:
        pytest.fail(problem, pytrace=False)  # outside the except: one message, no chained traceback
    yield server
    server.remove()


def _fresh_database(server: PostgreSQL, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new empty database named after the test (readable in the server's log and in pg_stat_activity)
    plus a random suffix (unique across parametrizations and reruns); dropped afterwards, open
    connections and all. A test may kill or stop the shared server: it is started again around it."""
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    name = f"t_{stem}_{uuid.uuid4().hex[:8]}"
    if not server.alive():  # an earlier test stopped or killed the shared server
        server.start()
    url = server.create_database(name)
    yield url
    if not server.alive():  # this test stopped or killed it: bring it back for the next one
        server.start()
    server.drop_database(name)


@pytest.fixture
def pg_url(postgres_server: PostgreSQL, request: pytest.FixtureRequest) -> Iterator[str]:
    """`postgresql+psycopg://postgres:PASSWORD@127.0.0.1:PORT/DB` of a fresh empty database for this test."""
    yield from _fresh_database(postgres_server, request)


@pytest.fixture(params=["sqlite", "postgresql"])
def central_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The central database URL, once per engine: `sqlite:///TMP/campus.db`, then a fresh PostgreSQL
    database. A test that takes it runs on both (ids `[sqlite]`, `[postgresql]`; `-k sqlite` runs
    one); the PostgreSQL server starts only if a `[postgresql]` case runs. The PostgreSQL database is at
    this release's schema, as `campus db upgrade` leaves it (programs on SQLite upgrade their file)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/campus.db"
    else:
        from central.db import open_database

        for url in _fresh_database(request.getfixturevalue("postgres_server"), request):
            open_database(url, upgrade=True).close()
            yield url
