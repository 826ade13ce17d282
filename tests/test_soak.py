"""Soak tests: the long-running programs give back every connection, thread and file they open.

`campus web`, `campus ingest` and `campus agent` run for months under a
service manager's open-file limit. Werkzeug's threaded server gives every
HTTP connection a new thread; a SQLite connection kept per thread leaked one
database connection (two files) per request, and under systemd's 1,024 open
files the dashboard answered 503 from request ~500 on (issue 14). Each test
here drives a real process through thousands of requests, messages or polls
and then reads the process from outside (psutil): its open files and threads
must come back to what they were after the warm-up, its memory stay flat.

They run the issue's full counts (5,000 requests, 100,000 messages, 10,000
polls), each in under 30 s on two loaded cores; a district's web app for 30
minutes is `bench/soak.py`.
"""

from __future__ import annotations

import http.client
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from bench.common import ENV_VALUES, ledger_totals
from bench.ingest import Feed, publish
from campus import contract
from campus.contract import Telemetry
from campus.net import free_port
from central.store.sqlite import IDLE_CONNECTIONS
from dashboards import close_app
from tests.apps import add_people, central_db, district, register_rooms, rooms_with_history, web_app
from tests.e2e import StoreView, env_device, write_gateway_config
from tests.servers import CampusProcess, Mosquitto, wait_until

pytestmark = pytest.mark.slow

OPEN_FILES_LIMIT = 256
INGEST_MESSAGES = 100_000
AGENT_POLLS = 10_000
AGENT_POLL_S = 0.002  # each device read back to back (a read takes longer than this)
# `campus web` at rest: the main thread, the one serving HTTP, the alarm monitor and the scheduler.
WEB_THREADS = 4


@dataclass(frozen=True)
class Footprint:
    """What a process holds, read from outside: file descriptors (files, sockets, pipes), the
    descriptors of those that are the central database's files, threads and resident memory."""
    fds: int
    db_fds: int
    threads: int
    rss: int

    @property
    def other_fds(self) -> int:
        return self.fds - self.db_fds


def footprint(pid: int, db: Path) -> Footprint:
    proc = psutil.Process(pid)
    db_fds = sum(1 for f in proc.open_files() if f.path.startswith(str(db)))
    return Footprint(proc.num_fds(), db_fds, proc.num_threads(), proc.memory_info().rss)


# ---------------------------------------------------------------- the web app


@pytest.fixture
def web_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[CampusProcess, int, str, Path]]:
    """`campus web` on a database of 12 rooms with an hour of history, under 256 open files:
    (process, port, an admin API token, the database file)."""
    places = district(12, schools=2)
    db = Path(central_db(tmp_path, rooms_with_history(places)))
    app = web_app(str(db), monkeypatch)
    try:
        register_rooms(app, places)
        token = add_people(app)["admin"]
    finally:
        close_app(app)
    monkeypatch.undo()  # the served app runs its alarm monitor and scheduler, as `campus web` does
    port = free_port()
    web = CampusProcess(["web", "--store", f"sqlite:///{db}", "--http-port", str(port)], tmp_path / "web.log",
                        open_files=OPEN_FILES_LIMIT).start()
    try:
        web.wait_listening(port, timeout=30)
        yield web, port, token, db
    finally:
        web.stop()


def get(port: int, path: str, token: str) -> tuple[int, bytes]:
    """One GET on a new HTTP connection, closed after the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}", "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def web_paths(places: tuple[tuple[str, str, str, str], ...]) -> list[str]:
    """The facility manager's board (page and data), the API a script polls, and room pages."""
    now = time.time()
    paths = ["/health/", "/api/board", "/api/gateways", "/api/devices", "/"]
    for gateway, *_ in places[:4]:
        paths += [f"/api/telemetry?gateway={gateway}&device=env&metric=co2_ppm&start={now - 3600:.0f}",
                  f"/health/rooms/{gateway}"]
    return paths


def test_web_serves_5000_requests_under_256_open_files_and_gives_back_what_it_opened(
        web_server: tuple[CampusProcess, int, str, Path]) -> None:
    web, port, token, db = web_server
    assert web.proc is not None
    paths = web_paths(district(12, schools=2))
    failures: list[str] = []
    lock = threading.Lock()

    def hit(i: int) -> None:
        path = paths[i % len(paths)]
        try:
            status, body = get(port, path, token)
        except OSError as exc:
            status, body = 0, repr(exc).encode()
        if status != 200:
            with lock:
                failures.append(f"request {i} {path}: {status} {body[:200]!r}")

    def run(count: int) -> None:
        with ThreadPoolExecutor(4) as pool:  # a few browsers and scripts at once
            list(pool.map(hit, range(count)))

    # Warm-up: every page once (imports, templates, the database pools), then the steady state.
    run(200)
    assert not failures, failures[:5]
    wait_until(lambda: footprint(web.proc.pid, db).threads <= WEB_THREADS, 30,
               message="the warm-up's request threads ended")
    start = footprint(web.proc.pid, db)
    run(5000)
    assert not failures, f"{len(failures)} failed requests, the first: {failures[:5]}"
    status, body = get(port, "/api/gateways", token)
    assert status == 200 and len(json.loads(body)) == 12
    # Every request's thread has ended and every socket and file it opened is closed again;
    # the database connections are back in their pools, which keep a few idle ones open.
    pools = 2  # the ledger's and the point store's (SQLAlchemy's pool of the registry: its own bound)
    db_bound = 2 * (pools * IDLE_CONNECTIONS + 5) + 1  # two files a connection (database, WAL) and the shared -shm

    def settled() -> Footprint | None:
        now = footprint(web.proc.pid, db)
        return now if now.threads <= start.threads and now.other_fds <= start.other_fds else None
    try:
        end = wait_until(settled, 30, message="threads and open files back to their starting count")
    finally:
        print(f"web: start {start}, end {footprint(web.proc.pid, db)}")
    assert isinstance(end, Footprint)
    assert end.db_fds <= db_bound, end
    assert end.rss - start.rss < 16 * 2**20, f"RSS grew from {start.rss >> 20} to {end.rss >> 20} MiB"
    assert web.alive()


# ---------------------------------------------------------------- ingest


def telemetry_feed(tmp: Path, gateways: int, per_gateway: int, prefix: str) -> Feed:
    """Contract telemetry, seq 1..per_gateway for each of `gateways` gateways, a file of payloads each."""
    base = time.time() - 3600
    files = []
    for g in range(gateways):
        gateway = f"{prefix}-{g}"
        path = tmp / f"{gateway}.lines"
        with path.open("wb") as out:
            for seq in range(1, per_gateway + 1):
                out.write(Telemetry(seq, round(base + seq * 0.01, 3), {**ENV_VALUES, "co2_ppm": 400 + seq % 900})
                          .encode() + b"\n")
        files.append((gateway, contract.telemetry_topic("soak", gateway, "env"), path))
    return Feed(files, per_gateway)


def test_ingest_stores_every_seq_of_100000_messages_with_flat_files_and_threads(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    db = tmp_path / "central.db"
    ingest = CampusProcess(["ingest", "--mqtt", mosquitto.url, "--store", f"sqlite:///{db}"], tmp_path / "ingest.log",
                           open_files=OPEN_FILES_LIMIT).start()
    try:
        wait_until(lambda: "subscribed: ready" in ingest.output(), 30, message="ingest subscribed")
        assert ingest.proc is not None
        # Warm-up at full speed too: the allocator's and SQLite's caches reach their working size.
        warm = telemetry_feed(tmp_path, 4, 5_000, "warm")
        publish(mosquitto.port, warm, timeout=60)
        wait_until(lambda: ledger_totals(db).received >= warm.total, 60, message="the warm-up stored")
        start = footprint(ingest.proc.pid, db)
        feed = telemetry_feed(tmp_path, 4, INGEST_MESSAGES // 4, "gw")
        publish(mosquitto.port, feed, timeout=180)
        wait_until(lambda: ledger_totals(db).received >= warm.total + feed.total or not ingest.alive(), 180,
                   interval=0.2, message=f"{feed.total} messages stored")
        end = footprint(ingest.proc.pid, db)
        print(f"ingest: start {start}, end {end}")
        view = StoreView(db)
        try:
            for gateway, _topic, _path in feed.files:
                row = view.gateway(gateway)
                assert row is not None and (row["received"], row["gaps"], row["duplicates"]) \
                    == (feed.per_gateway, 0, 0), row
                assert view.seqs(gateway) == list(range(1, feed.per_gateway + 1))
            assert view.points.count() == (warm.total + feed.total) * len(ENV_VALUES)
        finally:
            view.close()
        assert (end.fds, end.threads) == (start.fds, start.threads)
        # Resident memory moves up and down by 5-17 MiB between runs (anonymous memory in smaps: glibc's
        # arenas, not Python objects, which tracemalloc finds flat); a leak of 340 bytes or more a message
        # would break this bound.
        assert end.rss - start.rss < 32 * 2**20, f"RSS grew from {start.rss >> 20} to {end.rss >> 20} MiB"
    finally:
        assert ingest.stop() == 0, ingest.output()[-2000:]


# ---------------------------------------------------------------- the agent


def test_agent_polls_10000_times_with_flat_files_threads_and_memory(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A Modbus sensor (one connection kept) and a PJLink projector (a connection per poll) read
    back to back: every poll opens and closes what it needs."""
    devices = [env_device(free_port(), seed=3),
               {"id": "proj", "profile": "projector-pjlink2", "address": {"host": "127.0.0.1", "port": free_port()}}]
    config = write_gateway_config(tmp_path / "gw.yaml", mosquitto.url, gateway="soak", poll_interval=AGENT_POLL_S,
                                  devices=devices, outbox={"drain_rate": 5000, "inflight": 200})
    sim = CampusProcess(["sim", "--config", str(config)], tmp_path / "sim.log").start()
    agent = None
    try:
        for dev in devices:
            sim.wait_listening(dev["address"]["port"], timeout=30)
        agent = CampusProcess(["agent", "--config", str(config)], tmp_path / "agent.log",
                              open_files=OPEN_FILES_LIMIT).start()
        assert agent.proc is not None
        outbox = tmp_path / "soak-data" / "agent.db"
        wait_until(lambda: outbox_seq(outbox) >= 200, 60, message="the agent polling")
        start = footprint(agent.proc.pid, outbox)
        first = outbox_seq(outbox)
        wait_until(lambda: outbox_seq(outbox) >= first + AGENT_POLLS or not agent.alive(), 240, interval=0.2,
                   message=f"{AGENT_POLLS} polls")
        end = footprint(agent.proc.pid, outbox)
        print(f"agent: start {start}, end {end}, polls {outbox_seq(outbox) - first}")
        assert agent.alive(), agent.output()[-2000:]
        # Every read succeeded: no device ever went offline or faulty (the agent logs each change).
        assert not re.search(r" is (offline|fault)", agent.output()), agent.output()[-2000:]
        # A poll in flight may hold the projector's socket at either reading: at most one more.
        assert end.threads == start.threads and start.fds - 1 <= end.fds <= start.fds + 1, (start, end)
        assert end.rss - start.rss < 16 * 2**20, f"RSS grew from {start.rss >> 20} to {end.rss >> 20} MiB"
    finally:
        if agent is not None:
            assert agent.stop() == 0, agent.output()[-2000:]
        sim.stop()


def outbox_seq(path: Path) -> int:
    """The agent's last allocated seq (one per poll of each device): how many polls it made."""
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0] - 1
    except (sqlite3.OperationalError, TypeError):
        return 0
    finally:
        db.close()
