"""A district on several hosts: ingest workers and web instances that share nothing but PostgreSQL and the broker.

Each "host" is a working directory of its own with its own SQLite point store; the central database
(ledger and registry) is one PostgreSQL database, brought to this release's schema by `campus db
upgrade` before any program starts, as docs/deployment.md says. Every program is the real `campus ...`
process; the gateways are real agents with their outboxes, polling simulated sensors.

- Two ingest workers in one shared subscription: one is SIGKILLed mid-stream and PostgreSQL is killed
  and started again mid-stream (a crash: WAL replay). Every seq each gateway sequenced is in the
  ledger exactly once, `received` counts each once, and the agents' outboxes drain (central
  acknowledged everything). The surviving worker rides out the database outage by itself: it retries
  with backoff and acks nothing meanwhile.
- Two web instances: a due schedule runs once, not once per instance, and an alarm condition raises
  one alarm, not one per instance. Both races are forced, not hoped for: the test holds a table lock
  so that both instances reach the contested write at the same moment (see each test).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from campus.contract import State
from campus.net import free_port
from central.alarms import ensure_default_rules
from central.db import Database
from central.ledger import Ledger, Sequenced
from central.registry import Alarm, AlarmRule, Registry, Schedule, ScheduleRun
from central.store.sqlite import SqlitePointStore
from tests.e2e import Classroom
from tests.servers import CampusProcess, Mosquitto, PostgreSQL, wait_until
from tests.stores import sql

pytestmark = pytest.mark.slow

GATEWAYS = ("gw1", "gw2")
TOKEN = "district-hosts-admin-token-0123456789"
# Room gateways as the web tests see them: an environment sensor, a projector and a display each.
DEVICES = {"env": {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"},
           "proj": {"profile": "projector-pjlink", "kind": "projector", "status": "ok"},
           "display": {"profile": "display-samsung-mdc", "kind": "display", "status": "ok"}}
WEB_GATEWAYS = ("gw-101", "gw-102")
INTERVAL_S = 1  # CAMPUS_SCHEDULE_INTERVAL and CAMPUS_ALARM_INTERVAL of both web instances


def upgrade(url: str, log: Path) -> None:
    """`campus db upgrade`, as an operator runs it once per release before starting the programs."""
    proc = CampusProcess(["db", "upgrade", "--db", url], log).start()
    assert proc.proc is not None
    assert proc.proc.wait(60) == 0, proc.output()


@pytest.fixture
def district_db(pg_url: str, tmp_path: Path) -> Iterator[Database]:
    """The district's PostgreSQL database at this release's schema; the test's own look at it."""
    upgrade(pg_url, tmp_path / "db-upgrade.log")
    db = Database(pg_url)
    yield db
    db.close()


def host(tmp_path: Path, name: str) -> Path:
    home = tmp_path / name
    home.mkdir()
    return home


def ingest_worker(home: Path, mqtt: str, db_url: str, name: str) -> CampusProcess:
    """`campus ingest` on a host of its own: its own point store, the district's database, one shared
    subscription with the other workers. Acknowledgements within a second: the test waits for the
    agents' outboxes to drain."""
    return CampusProcess(["ingest", "--mqtt", mqtt, "--store", f"sqlite:///{home / 'points.db'}", "--db", db_url,
                          "--name", name, "--share", "district", "--ack-max-delay", "1"], home / "ingest.log",
                         cwd=home)


def rows(db: Database, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
    return list(sql(db, query, params))


def ledger_row(db: Database, gateway: str) -> dict[str, int]:
    found = rows(db, "SELECT received, duplicates, first_seq, max_seq FROM gateways WHERE id = ?", (gateway,))
    if not found:
        return {"received": 0, "duplicates": 0, "gaps": 0}
    received, duplicates, first, last = found[0]
    return {"received": received, "duplicates": duplicates,
            "gaps": 0 if first is None else last - first + 1 - received}


def seen(db: Database, gateway: str) -> list[int]:
    return [r[0] for r in rows(db, "SELECT seq FROM seen WHERE gateway = ? ORDER BY seq", (gateway,))]


def test_two_ingest_hosts_store_every_seq_once_through_a_worker_kill_and_a_postgres_crash(
        tmp_path: Path, mosquitto: Mosquitto, postgres_server: PostgreSQL, pg_url: str,
        district_db: Database) -> None:
    db = district_db
    a = ingest_worker(host(tmp_path, "host-a"), mosquitto.url, pg_url, "ingest-a").start()
    b = ingest_worker(host(tmp_path, "host-b"), mosquitto.url, pg_url, "ingest-b").start()
    rooms: list[Classroom] = []
    try:
        for worker in (a, b):
            wait_until(lambda w=worker: "subscribed: ready" in w.output() or not w.alive(), 30,
                       message="ingest subscribed")
            assert worker.alive(), worker.output()[-2000:]
        # Agents that resend what central has not acknowledged after 3 s: what the broker queued for the
        # killed worker's session reaches the other one.
        for gw in GATEWAYS:
            rooms.append(Classroom(host(tmp_path, gw), mosquitto.url, gateway=gw, poll_interval=0.05,
                                   outbox={"ack_timeout_s": 3}).start(ingest=False))

        def stored_at_least(n: int) -> bool:
            return all(ledger_row(db, gw)["received"] >= n for gw in GATEWAYS)

        wait_until(lambda: stored_at_least(20), 30, interval=0.2, message="20 messages of each gateway stored")
        b.kill()  # host B dies: no goodbye, its batch in flight never acked
        before = min(ledger_row(db, gw)["received"] for gw in GATEWAYS)
        wait_until(lambda: stored_at_least(before + 20), 30, interval=0.2, message="host A storing on alone")

        retries = a.output().count("retrying in")
        postgres_server.kill()  # the database host crashes mid-stream
        wait_until(lambda: a.output().count("retrying in") > retries, 30, message="ingest A retrying its batch")
        sequenced = [room.agent_outbox()["last_seq"] for room in rooms]
        wait_until(lambda: all(room.agent_outbox()["last_seq"] >= s + 10 for room, s in zip(rooms, sequenced,
                                                                                           strict=True)),
                   30, message="the agents sequencing on meanwhile")
        postgres_server.start()  # crash recovery; ingest A was not restarted

        for room in rooms:
            room.sim.stop()  # stop producing; what the outboxes hold must all arrive
        figures = {}
        for room in rooms:
            def drained(room: Classroom = room) -> dict[str, int] | None:
                out = room.agent_outbox()
                return out if out["pending"] == 0 and ledger_row(db, room.gateway)["received"] == out["last_seq"] \
                    else None
            try:
                figures[room.gateway] = wait_until(drained, 90, interval=0.2,
                                                   message=f"{room.gateway}: outbox drained, everything stored")
            except AssertionError as exc:  # what each side held then: which of them stopped short
                ack = rows(db, "SELECT acked_seq, ack_sent, ack_sent_at, ack_due, max_seq, seq_floor, outbox_oldest,"
                               " outbox_instance FROM gateways WHERE id = ?", (room.gateway,))
                raise AssertionError(f"{exc}\noutbox {room.agent_outbox()}\nledger {ledger_row(db, room.gateway)}"
                                     f" acks {ack}\ningest A:\n{a.output()[-3000:]}") from None

        for gw, out in figures.items():
            assert out["dropped"] == 0
            last = out["last_seq"]
            assert seen(db, gw) == list(range(1, last + 1)), f"{gw}: seq numbers stored differ from those sent"
            row = ledger_row(db, gw)
            assert (row["received"], row["gaps"]) == (last, 0), row
            # Every sample is in some host's point store (one worker's, or both after a redelivery).
            stamps: set[float] = set()
            for name in ("host-a", "host-b"):
                store = SqlitePointStore(tmp_path / name / "points.db")
                try:
                    stamps |= {ts for ts, _ in store.query(gw, "env", "co2_ppm", 0, time.time() + 60,
                                                           limit=100_000)}
                finally:
                    store.close()
            events = rows(db, "SELECT COUNT(*) FROM events WHERE gateway = ?", (gw,))[0][0]
            assert len(stamps) == last - events, f"{gw}: a sample missing from both point stores"
        assert a.alive(), a.output()[-2000:]
        assert "store write failed" in a.output() and "nothing acked" in a.output()
    finally:
        for room in rooms:
            room.stop()
        a.stop()
        b.stop()


# ---------------------------------------------------------------- two web instances


class WebHosts:
    """Two `campus web` instances on the district database, each on a host of its own."""

    def __init__(self, tmp_path: Path, db: Database, mqtt: str) -> None:
        self.db = db
        self.registry = Registry(db)
        self.ledger = Ledger(db)
        for gw, room in zip(WEB_GATEWAYS, ("101", "102"), strict=True):
            self.registry.register_gateway(gw, "s1", room, "A")
        now = time.time()
        self.ledger.record([Sequenced("s1", gw, "env", 1, now - 5, values={"co2_ppm": 800}) for gw in WEB_GATEWAYS],
                           [("s1", gw, State(online=True, ts=now, room=gw[-3:], devices=DEVICES, interval=600))
                            for gw in WEB_GATEWAYS], [])
        # Seeded here: two instances starting on an empty database would each seed the rules (see the report).
        ensure_default_rules(self.registry)
        self.webs = []
        for name in ("web-a", "web-b"):
            home = host(tmp_path, name)
            port = free_port()
            self.webs.append((CampusProcess(
                ["web", "--store", f"sqlite:///{home / 'points.db'}", "--db", db.url, "--mqtt", mqtt,
                 "--http-port", str(port), "--admin-token", TOKEN], home / "web.log", cwd=home), port))

    def start(self) -> WebHosts:
        for web, _port in self.webs:
            web.start()
        for web, port in self.webs:
            web.wait_listening(port, timeout=30)
            assert web.alive(), web.output()[-2000:]
        return self

    def pids(self) -> list[int]:
        return [web.proc.pid for web, _ in self.webs if web.proc is not None]

    def blocked_on(self, statement: str) -> int:
        """Backends of the web instances waiting for a lock in a statement starting with `statement`."""
        return rows(self.db, "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                   " AND wait_event_type = 'Lock' AND query ILIKE ?", (statement + "%",))[0][0]

    def stop(self) -> None:
        for web, _ in self.webs:
            if web.alive() and web.proc is not None:
                os.kill(web.proc.pid, signal.SIGCONT)  # a test that failed while they were paused
            web.stop()
        self.ledger.close()
        self.registry.close()


@pytest.fixture
def web_hosts(tmp_path: Path, district_db: Database, mosquitto: Mosquitto,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[WebHosts]:
    monkeypatch.setenv("CAMPUS_SCHEDULE_INTERVAL", str(INTERVAL_S))
    monkeypatch.setenv("CAMPUS_ALARM_INTERVAL", str(INTERVAL_S))
    hosts = WebHosts(tmp_path, district_db, mosquitto.url)
    try:
        yield hosts.start()
    finally:
        hosts.stop()


def hold_lock(db: Database, table: str) -> Any:
    """A transaction holding `table` in EXCLUSIVE mode: reads go on, every INSERT/UPDATE/DELETE waits.
    The caller commits it to let them through."""
    conn = db.engine.connect()
    conn.execute(text("SET lock_timeout = '10s'"))
    conn.execute(text(f"LOCK TABLE {table} IN EXCLUSIVE MODE"))
    return conn


def test_a_due_schedule_runs_once_across_two_web_hosts(web_hosts: WebHosts) -> None:
    db = web_hosts.db
    # Both instances are paused while the schedule appears and its row is locked, then resumed together:
    # each scheduler reads the due schedule and both try to claim it at the same moment (the claim is one
    # conditional UPDATE; a read-then-write claim would run it twice here).
    for pid in web_hosts.pids():
        os.kill(pid, signal.SIGSTOP)
    now = datetime.now(ZoneInfo("Asia/Shanghai"))  # s1 has no timetable: `at` is the site's clock (the default)
    with web_hosts.registry.session() as s:
        s.add(Schedule(name="Everything off", at=now.strftime("%H:%M"), days="mon,tue,wed,thu,fri,sat,sun",
                       action="power_off", kinds="display,projector", school_id="s1"))
    lock = hold_lock(db, "schedules")
    try:
        for pid in web_hosts.pids():
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: web_hosts.blocked_on("UPDATE schedules") == 2, 20,
                   message="both schedulers claiming the schedule")
    finally:
        lock.commit()
        lock.close()
    # The run waits a few seconds for the gateways' answers (none here: no agent) before its record.
    wait_until(lambda: rows(db, "SELECT COUNT(*) FROM schedule_runs")[0][0] >= 1, 30, message="the schedule's run")
    # Several more ticks of both schedulers: a second run would show within them. A bounded wait for
    # something that must not happen, on purpose.
    with pytest.raises(AssertionError, match="timed out"):
        wait_until(lambda: rows(db, "SELECT COUNT(*) FROM schedule_runs")[0][0] > 1, 5 * INTERVAL_S,
                   message="a second run")
    with web_hosts.registry.session() as s:
        runs = list(s.query(ScheduleRun))
    assert len(runs) == 1
    targets = sorted((gw, dev) for gw in WEB_GATEWAYS for dev in ("display", "proj"))
    assert sorted((r["gateway"], r["device"]) for r in runs[0].results) == targets
    commands = rows(db, "SELECT gateway, device, action, \"by\" FROM commands ORDER BY gateway, device")
    assert [tuple(c) for c in commands] == [(gw, dev, "power_off", "schedule:Everything off") for gw, dev in targets]
    ran = [web for web, _ in web_hosts.webs if "schedule 'Everything off'" in web.output()]
    assert len(ran) == 1, [web.output()[-1000:] for web, _ in web_hosts.webs]


def test_an_alarm_condition_raises_one_alarm_across_two_web_hosts(web_hosts: WebHosts) -> None:
    db = web_hosts.db
    # The alarms table is held while the CO2 limit is crossed: every instance that evaluates alarms reads
    # "no alarm open" and waits at its INSERT, so a second evaluator cannot hide behind timing.
    lock = hold_lock(db, "alarms")
    try:
        web_hosts.ledger.record([Sequenced("s1", "gw-101", "env", 2, time.time(), values={"co2_ppm": 3000})], [], [])
        wait_until(lambda: web_hosts.blocked_on("INSERT INTO alarms") >= 1, 20, message="an instance raising the alarm")
        # Both instances evaluate every INTERVAL_S: a second evaluator waits here within one interval and its
        # evaluation. A bounded wait for something that must not happen, on purpose; kept short, so that the
        # evaluator holding a lease (renewed each interval, lasting a few) does not lose it while it waits.
        try:
            wait_until(lambda: web_hosts.blocked_on("INSERT INTO alarms") >= 2, 2 * INTERVAL_S,
                       message="a second instance raising it")
        except AssertionError:
            pass
    finally:
        lock.commit()
        lock.close()
    co2 = web_hosts.registry
    with co2.session() as s:
        rule = s.query(AlarmRule).filter_by(kind="co2_above").one().id

    def alarms() -> list[Alarm]:
        with co2.session() as s:
            return list(s.query(Alarm).filter_by(rule_id=rule, gateway="gw-101"))
    wait_until(lambda: any(a.cleared_at is None for a in alarms()), 20, message="the CO2 alarm open")
    raised = alarms()
    assert len(raised) == 1, [(a.id, a.raised_at, a.cleared_at) for a in raised]
    assert raised[0].cleared_at is None and raised[0].device == "env"
