"""A running program whose central database is upgraded under it stops, in one line, losing nothing.

Another machine's `campus db upgrade` moves the database's schema revision while an old `campus ingest`,
`campus jobs` or `campus web` still runs (central/schema_watch.py): each reads the revision every
CAMPUS_SCHEMA_CHECK_INTERVAL seconds (0.2 here) and, finding it is not this release's, stops as SIGTERM
stops it and exits with status 2 and one line naming the database's revision and its own. Here the
upgrade is the `alembic_version` row stamped to a revision no release of ours has ('9999_newer'), as a
newer release's migration leaves it. A database that cannot be read for a while (PostgreSQL restarting)
does not stop it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import text

from campus import contract
from campus.contract import Telemetry
from campus.errors import StoreError
from campus.net import free_port
from central import migrations
from central.db import Database, open_database
from central.schema_watch import SCHEMA_CHECK_ENV, SCHEMA_CHECK_S, SchemaChanged, SchemaWatch
from tests.e2e import StoreView
from tests.servers import CampusProcess, Mosquitto, PostgreSQL, wait_until

NEWER = "9999_newer"
HEAD = migrations.head()
TOKEN = "schema-watch-admin-token-0123456789"


def stamp(url: str, revision: str) -> None:
    """Move the database's revision as another machine's `campus db upgrade` would have."""
    db = Database(url)
    try:
        with db.write("stamp") as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    finally:
        db.close()


def the_line(output: str) -> str:
    """The one line that says why the program stopped; it must name both revisions."""
    lines = [line for line in output.splitlines() if "while this program" in line]
    assert len(lines) == 1, output[-4000:]
    assert lines[0].startswith("campus: error: the central database ")
    assert f"upgraded to schema {NEWER} while this program (schema {HEAD}) ran: stopping" in lines[0]
    assert "Traceback" not in output, output[-4000:]
    return lines[0]


def exited(proc: CampusProcess, timeout: float = 30.0) -> int:
    wait_until(lambda: not proc.alive(), timeout, message=f"campus {proc.args[0]} to stop by itself")
    assert proc.proc is not None
    return proc.proc.returncode


# ---------------------------------------------------------------- the decision (no servers)


class Reader:
    """A revision reader that fails (StoreError) while `down`, else answers `revision`."""

    def __init__(self) -> None:
        self.down, self.revision, self.reads = False, HEAD, 0

    def __call__(self) -> str | None:
        self.reads += 1
        if self.down:
            raise StoreError("postgresql://db/campus: cannot read the schema version: connection refused")
        return self.revision


def test_an_unreadable_database_is_said_once_per_outage_and_never_stops_the_program(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    read = Reader()
    watch = SchemaWatch(db, 1.0, read=read)
    caplog.set_level(logging.INFO, logger="central.schema_watch")
    try:
        watch.check()  # at this release's head: nothing said
        read.down = True
        for _ in range(5):
            watch.check()  # an outage of five rounds: no stop
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "connection refused" in caplog.records[0].getMessage()
        read.down = False
        watch.check()
        assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]  # and once when it ends
        read.down = True
        watch.check()  # a second outage is said again, once
        assert [r.levelname for r in caplog.records] == ["WARNING", "INFO", "WARNING"]
        read.down, read.revision = False, NEWER
        with pytest.raises(SchemaChanged) as err:
            watch.check()
        assert f"upgraded to schema {NEWER} while this program (schema {HEAD}) ran" in str(err.value)
        assert db.name in str(err.value)
        read.revision = "0001"  # a revision this release knows: the database was moved back
        with pytest.raises(SchemaChanged, match=f"moved back to schema 0001 while this program .schema {HEAD}.+"
                                                "campus db upgrade"):
            watch.check()
    finally:
        db.close()


def test_poll_reads_once_per_interval_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    now = [100.0]
    read = Reader()
    try:
        monkeypatch.setenv(SCHEMA_CHECK_ENV, "2.5")
        watch = SchemaWatch(db, read=read, clock=lambda: now[0])
        assert watch.interval == 2.5
        for t in (100.0, 101.0, 102.4, 102.5, 103.0, 104.9, 105.0):
            now[0] = t
            watch.poll()
        assert read.reads == 2  # at 102.5 and 105.0: one cheap read per interval, not per poll
        monkeypatch.setenv(SCHEMA_CHECK_ENV, "0")
        off = SchemaWatch(db, read=read, clock=lambda: now[0])
        now[0] = 1e9
        off.poll()
        assert read.reads == 2  # 0 turns the watch off
        monkeypatch.delenv(SCHEMA_CHECK_ENV)
        assert SchemaWatch(db, read=read).interval == SCHEMA_CHECK_S == 60.0
    finally:
        db.close()


def test_the_watch_reads_the_real_revision(central_db_url: str) -> None:
    db = open_database(central_db_url)
    try:
        watch = SchemaWatch(db, 1.0)
        watch.check()
        stamp(central_db_url, NEWER)
        with pytest.raises(SchemaChanged, match=NEWER):
            watch.check()
    finally:
        db.close()


# ---------------------------------------------------------------- the programs, as real processes


@pytest.mark.slow
def test_campus_ingest_stops_as_on_sigterm_and_loses_nothing(tmp_path: Path, mosquitto: Mosquitto,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SCHEMA_CHECK_ENV, "0.2")
    db = tmp_path / "central.db"
    url = f"sqlite:///{db}"
    args = ["ingest", "--mqtt", mosquitto.url, "--store", url, "--ack-max-delay", "1"]
    ingest = CampusProcess(args, tmp_path / "ingest.log").start()
    again = CampusProcess(args, tmp_path / "ingest-again.log")  # the same name: its persistent session
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="schema-watch-publisher")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    view = None
    try:
        wait_until(lambda: "subscribed: ready" in ingest.output() or not ingest.alive(), 30, message="subscribed")
        topic, t0 = contract.telemetry_topic("s1", "gw-sw", "env"), time.time()

        def send(seq: int) -> paho.MQTTMessageInfo:
            return pub.publish(topic, Telemetry(seq=seq, ts=t0 + seq, values={"co2_ppm": 400 + seq}).encode(), qos=1)

        before = [send(seq) for seq in range(1, 501)]
        for info in before:  # the broker has each (PUBACK) before the database moves
            info.wait_for_publish(10)
        stamp(url, NEWER)
        # The gateways go on sending while ingest notices and stops: it stops mid-stream, holding, writing or
        # acknowledging part of it.
        after, sent, deadline = [], 500, time.monotonic() + 30
        while ingest.alive() and time.monotonic() < deadline:
            sent += 1
            after.append(send(sent))
            if sent % 100 == 0:
                after[-1].wait_for_publish(10)
        for info in after:
            info.wait_for_publish(10)
        assert exited(ingest) == 2
        the_line(ingest.output())
        # What it stored it acknowledged; what it did not, the broker kept: this machine's new release
        # (the schema as it expects) takes the rest from the same session, and every seq is there once.
        stamp(url, HEAD)
        view = StoreView(db)
        stored = view.seqs("gw-sw")
        assert stored == sorted(set(stored)) and set(stored) <= set(range(1, sent + 1))
        again.start()
        wait_until(lambda: len(view.seqs("gw-sw")) == sent or not again.alive(), 30, message="the rest redelivered")
        assert view.seqs("gw-sw") == list(range(1, sent + 1))
        gw = view.gateway("gw-sw")
        assert gw is not None and gw["received"] == sent and gw["gaps"] == 0
        assert gw["duplicates"] == 0  # and what it stored it had acknowledged: none of it came again
    finally:
        if view is not None:
            view.close()
        pub.loop_stop()
        pub.disconnect()
        ingest.stop()
        again.stop()


def leases(url: str) -> dict[str, float]:
    db = Database(url)
    try:
        with db.read("leases") as conn:
            return dict(conn.execute(text("SELECT name, until FROM leases")).all())
    finally:
        db.close()


@pytest.mark.slow
def test_campus_jobs_stops_and_gives_its_leases_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SCHEMA_CHECK_ENV, "0.2")
    url = f"sqlite:///{tmp_path / 'campus.db'}"
    jobs = CampusProcess(["jobs", "--store", url], tmp_path / "jobs.log").start()
    try:
        wait_until(lambda: "campus jobs: alarm monitor" in jobs.output() or not jobs.alive(), 60,
                   message="campus jobs started")
        wait_until(lambda: "usage-rollup" in leases(url), 30, message="the usage rollup's lease taken")
        stamp(url, NEWER)
        assert exited(jobs) == 2
        the_line(jobs.output())
        held = leases(url)
        assert held and all(until == 0.0 for until in held.values()), held  # given up, as on SIGTERM
    finally:
        jobs.stop()


def serving_workers(arbiter: int) -> int:
    """How many of the arbiter's workers have built their app: their request threads start after it
    (dashboards/server.py `_Worker.run`), so a worker with more threads than `--threads` serves."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            threads = len(list((stat.parent / "task").iterdir()))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        count += ppid == arbiter and threads > 4
    return count


@pytest.mark.slow
def test_campus_web_stops_the_whole_server_not_one_worker(tmp_path: Path, central_db_url: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # On PostgreSQL too: the arbiter gives its connection back after each read (it forks between them).
    monkeypatch.setenv(SCHEMA_CHECK_ENV, "0.2")
    url = central_db_url
    port = free_port()
    web = CampusProcess(["web", "--store", f"sqlite:///{tmp_path / 'points.db'}", "--db", url, "--http-port",
                         str(port), "--workers", "2", "--threads", "4", "--no-jobs", "--admin-token", TOKEN],
                        tmp_path / "web.log", cwd=tmp_path).start()
    try:
        web.wait_listening(port, timeout=60)
        assert web.proc is not None
        # Both serving, not booting: a worker that boots after the upgrade is refused by its own start-up check.
        wait_until(lambda: serving_workers(web.proc.pid) == 2, 60, message="both workers serving")
        stamp(url, NEWER)
        assert exited(web) == 2
        out = web.output()
        the_line(out)
        # The arbiter halted: both workers stopped gracefully, and none was started again in their place.
        assert out.count("Booting worker") == 2 and out.count("Worker exiting") == 2, out[-4000:]
    finally:
        web.stop()


@pytest.mark.slow
def test_a_postgresql_restart_does_not_stop_campus_jobs(tmp_path: Path, postgres_server: PostgreSQL,
                                                        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SCHEMA_CHECK_ENV, "0.2")
    open_database(pg_url, upgrade=True).close()  # as `campus db upgrade` left it
    jobs = CampusProcess(["jobs", "--store", f"sqlite:///{tmp_path / 'points.db'}", "--db", pg_url],
                         tmp_path / "jobs.log").start()
    try:
        wait_until(lambda: "campus jobs: alarm monitor" in jobs.output() or not jobs.alive(), 60,
                   message="campus jobs started")
        postgres_server.stop()
        wait_until(lambda: "schema check skipped" in jobs.output(), 30, message="the outage seen")
        postgres_server.start()
        wait_until(lambda: "can be read again" in jobs.output() or not jobs.alive(), 30, message="the database back")
        assert jobs.alive(), jobs.output()[-4000:]
        assert jobs.output().count("schema check skipped") == 1  # once per outage, not once per round
        stamp(pg_url, NEWER)  # still watching after the outage
        assert exited(jobs) == 2
        the_line(jobs.output())
    finally:
        jobs.stop()


def test_a_release_older_than_the_database_refuses_it_in_one_line(tmp_path: Path, central_db_url: str) -> None:
    # What the old release says if a service manager restarts it on a database a newer release upgraded
    # (on SQLite it would have tried to migrate: Alembic's traceback), and `campus db upgrade` alike.
    open_database(central_db_url).close()
    stamp(central_db_url, NEWER)
    with pytest.raises(StoreError, match=f"at schema {NEWER}, which a newer release made .this release's is {HEAD}"):
        open_database(central_db_url)
    result = subprocess.run([sys.executable, "-m", "programs.cli", "db", "upgrade", "--db", central_db_url],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("campus: error: the central database ") and NEWER in result.stderr
