"""The central database's schema (Alembic, central/migrations): made the same on both engines, an old
file upgraded without losing a row, a server database upgraded only by `campus db upgrade`, and a
database that cannot be reached said in one line at start-up."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from campus.errors import StoreError
from central import migrations
from central.db import Base, Database, open_database
from central.ledger import Ledger
from central.registry import Registry
from tests.servers import PostgreSQL
from tests.stores import sql

DATA = Path(__file__).parent / "data"
# What the release of stop 23 kept in its file (tests/data/README.md), table by table.
STOP23_ROWS = {"alarm_rules": 5, "alarms": 1, "api_tokens": 1, "audit": 3, "buildings": 1, "commands": 1, "events": 12,
               "gateways": 2, "ingest_workers": 1, "latest": 56, "registered_devices": 10, "registered_gateways": 2,
               "rooms": 2, "samples": 246, "schedule_runs": 1, "schedules": 1, "schools": 1, "seen": 259,
               "user_rooms": 1, "users": 3}


def campus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "programs.cli", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def counts(path: Path) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        db.close()


def test_a_file_made_by_the_release_before_migrations_upgrades_without_losing_a_row(tmp_path: Path) -> None:
    path = tmp_path / "campus.db"
    shutil.copy(DATA / "central-stop23.db", path)
    assert {t: n for t, n in counts(path).items() if n} == STOP23_ROWS
    db = open_database(f"sqlite:///{path}")  # what every program does at start on SQLite
    try:
        after = counts(path)
        # Every row kept but the demo's QR check-ins, which carried the printed codes in clear: 0014 deletes them.
        assert {t: after[t] for t in STOP23_ROWS} == {**STOP23_ROWS, "events": STOP23_ROWS["events"] - 6}
        assert sql(db, "SELECT count(*) FROM events WHERE type = 'attendance'").fetchone()[0] == 0
        assert after["alembic_version"] == 1 and after["leases"] == 0
        ledger, registry = Ledger(db), Registry(db)
        # The ledger reads and writes the adopted tables: the gateways' stored states were copied into
        # the columns it decides by, so a heartbeat older than the stored one still loses.
        gateways = {g["id"]: g for g in ledger.gateways()}
        assert set(gateways) == {"gw-101", "gw-102"} and gateways["gw-101"]["received"] > 0
        state_ts = sql(db, "SELECT state_ts FROM gateways WHERE id = 'gw-101'").fetchone()[0]
        assert state_ts > 1.7e9
        assert [c["action"] for c in ledger.commands()] == ["power_on"]
        assert registry.check_password("admin", "wrong password") is None
        assert registry.gateway_info("gw-101")["school"] == "demo-school"
        assert migrations.ensure_current(db, upgrade=True) == migrations.head()  # a second start: nothing to do
    finally:
        db.close()


def _schema(url: str) -> dict[str, list[str]]:
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        return {t: sorted(c["name"] for c in inspector.get_columns(t)) for t in inspector.get_table_names()}
    finally:
        engine.dispose()


def test_a_new_database_gets_every_table_of_the_metadata_on_both_engines(central_db_url: str) -> None:
    open_database(central_db_url, upgrade=True).close()
    schema = _schema(central_db_url)
    expected = {t.name: sorted(c.name for c in t.columns) for t in Base.metadata.sorted_tables}
    assert {t: schema[t] for t in expected} == expected
    assert set(schema) - set(expected) == {"alembic_version"}
    # Nothing the models say is missing from what the migrations made (types, indexes, constraints):
    # a model changed without a migration fails here.
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = sa.create_engine(central_db_url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
    finally:
        engine.dispose()


def test_a_server_database_is_upgraded_only_by_campus_db_upgrade(pg_url: str) -> None:
    with pytest.raises(StoreError, match="campus db upgrade"):
        open_database(pg_url)  # a program starting on an empty (or older) server database stops
    result = campus("db", "status", "--db", pg_url)
    assert result.returncode == 0 and "at schema none" in result.stdout, result.stderr
    result = campus("db", "upgrade", "--db", pg_url)
    assert result.returncode == 0, result.stderr
    assert f"upgraded from schema none to {migrations.head()}" in result.stdout
    assert "***" in result.stdout and pg_url.split(":")[2].split("@")[0] not in result.stdout  # no password
    assert "already at schema" in campus("db", "upgrade", "--db", pg_url).stdout
    open_database(pg_url).close()


def test_two_programs_upgrading_a_new_file_at_once_both_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'campus.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", f"from central.db import open_database; open_database({url!r})"],
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert counts(tmp_path / "campus.db")["alembic_version"] == 1


@pytest.mark.parametrize("program", [
    ["users", "token", "admin"], ["broker-config", "--out", "OUT"], ["db", "upgrade"],
    ["web", "--store", "sqlite:///OUT/points.db", "--http-port", "0"],
    ["ingest", "--mqtt", "mqtt://127.0.0.1:1", "--store", "sqlite:///OUT/points.db"],
])
def test_an_unreachable_database_or_a_wrong_password_is_one_line_and_exit_2(
        program: list[str], postgres_server: PostgreSQL, pg_url: str, tmp_path: Path) -> None:
    wrong_password = pg_url.replace(f":{postgres_server.password}@", ":not-the-password@")
    nobody_listens = pg_url.replace(f":{postgres_server.port}/", ":1/")
    for url, reason in ((wrong_password, "password authentication failed"), (nobody_listens, "connection")):
        args = [a.replace("OUT", str(tmp_path / "out")) for a in program]
        env = {"PATH": "/usr/bin:/bin", "CAMPUS_DB": url, "HOME": str(tmp_path)}
        result = campus(*args, env=env)  # by CAMPUS_DB: every program reads it
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("campus: error: ") and reason in lines[0], lines[0]
        assert "not-the-password" not in result.stderr and postgres_server.password not in result.stderr


def test_a_bad_database_url_is_refused_by_name() -> None:
    result = campus("users", "token", "admin", "--db", "mysql://root@localhost/campus")
    assert result.returncode == 2
    assert "campus: error: --db 'mysql://root@localhost/campus': the central database is sqlite:///PATH or " \
           "postgresql://" in result.stderr


def test_database_urls_are_spelled_for_psycopg_3() -> None:
    assert Database("postgresql://u:p@127.0.0.1:1/x").url == "postgresql+psycopg://u:p@127.0.0.1:1/x"
    assert Database("postgres://u:p@127.0.0.1:1/x").name == "postgresql://u:***@127.0.0.1:1/x"


def database_at(engine: str, tmp_path: Path, request: pytest.FixtureRequest, revision: str) -> Database:
    """A new database of `engine` (a file in `tmp_path`, or the session's PostgreSQL) migrated up to
    `revision` only: the rows a later migration must carry over are written into it by the test."""
    from alembic import command

    url = f"sqlite:///{tmp_path / 'campus.db'}" if engine == "sqlite" else request.getfixturevalue("pg_url")
    db = Database(url)
    with db.engine.connect() as conn:
        command.upgrade(migrations.config(conn), revision)
        conn.commit()
    return db


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_duplicate_alarm_rules_fold_into_the_oldest_and_stay_one_per_kind(
        engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Migration 0002: two web instances that seeded an empty database at once left two rules per kind
    (each condition raised twice); the upgrade keeps the oldest, its alarms and the twin's alarms."""
    db = database_at(engine, tmp_path, request, "0001")
    try:
        with db.write() as conn:
            for rule_id in (1, 2, 3):
                kind = "co2_above" if rule_id < 3 else "gateway_offline"
                conn.exec_driver_sql("INSERT INTO alarm_rules (id, kind, params, enabled) VALUES "
                                     f"({rule_id}, '{kind}', '{{}}', true)")
            for alarm_id, rule_id in ((1, 1), (2, 2)):
                conn.exec_driver_sql("INSERT INTO alarms (id, rule_id, gateway, device, message, value, raised_at) "
                                     f"VALUES ({alarm_id}, {rule_id}, 'gw-1', 'env', 'CO2', '', 1.7e9)")
        assert migrations.ensure_current(db, upgrade=True) == "0001"
        assert sorted(sql(db, "SELECT id, kind FROM alarm_rules").fetchall()) == [(1, "co2_above"),
                                                                               (3, "gateway_offline")]
        assert sorted(sql(db, "SELECT id, rule_id FROM alarms").fetchall()) == [(1, 1), (2, 1)]
        with pytest.raises(sa.exc.IntegrityError), db.write() as conn:
            conn.exec_driver_sql("INSERT INTO alarm_rules (kind, params, enabled) VALUES ('co2_above', '{}', true)")
    finally:
        db.close()


def test_two_registries_seeding_an_empty_database_make_each_rule_once(central_db_url: str) -> None:
    import threading

    from central import alarms

    db = open_database(central_db_url)
    try:
        registries = [Registry(db), Registry(Database(central_db_url))]
        start = threading.Barrier(2)
        results: list[list] = []

        def seed(registry: Registry) -> None:
            start.wait()
            results.append(alarms.ensure_default_rules(registry))
        threads = [threading.Thread(target=seed, args=(r,)) for r in registries]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        kinds = [k for (k,) in sql(db, "SELECT kind FROM alarm_rules").fetchall()]
        assert sorted(kinds) == sorted(alarms.RULE_KINDS) and len(results) == 2
        assert [r.id for r in results[0]] == [r.id for r in results[1]]
        registries[1].db.close()
    finally:
        db.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_older_agents_raw_qr_codes_are_deleted_and_pseudonymised_check_ins_kept(
        engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Migration 0014: a QR check-in an older agent sent with the printed code in clear (an identifier of a
    minor) is deleted; a pseudonymised one, and any other event with a "code" in it, stays."""
    import json

    db = database_at(engine, tmp_path, request, "0013")
    try:
        rows = [(1, "attendance", {"code": "STU-101-0001", "camera": "cam"}),
                (2, "attendance", {"person": "ab" * 32, "camera": "cam"}),
                (3, "projector_error", {"code": "ERR2", "detail": "lamp"})]
        with db.write() as conn:
            for seq, type_, data in rows:
                conn.execute(sa.text("INSERT INTO events (gateway, device, seq, ts, type, data) VALUES "
                                     "('gw-1', 'cam', :seq, 1.7e9, :type, :data)"),
                             {"seq": seq, "type": type_, "data": json.dumps(data)})
        migrations.ensure_current(db, upgrade=True)
        assert sorted(sql(db, "SELECT seq FROM events").fetchall()) == [(2,), (3,)]
        assert "STU-101" not in str(sql(db, "SELECT data FROM events").fetchall())
    finally:
        db.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_the_stored_states_device_kinds_are_filled_as_the_ledger_writes_them(
        engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Migration 0021: `gateways.device_kinds` of the states already stored (what the usage rate asks instead
    of their JSON) is what the ledger writes with a new state: the same text for the same devices; empty for
    a state without devices, one that is not JSON, and a gateway that sent none."""
    import json

    from central.tables import device_kinds_text

    devices = {"proj": {"kind": "projector", "profile": "projector-pjlink", "status": "ok"},
               "disp": {"kind": "display", "profile": "display-samsung-mdc", "status": "ok"},
               "env": {"kind": "environment", "profile": "env-6in1-modbus", "status": "ok"},
               "odd": {"kind": "100% a_b", "profile": "x", "status": "ok"}}
    states = {"gw-1": json.dumps({"online": True, "devices": devices}), "gw-2": json.dumps({"online": True}),
              "gw-3": "not json", "gw-4": "{}"}
    db = database_at(engine, tmp_path, request, "0020")
    try:
        with db.write() as conn:
            for gateway, state in states.items():
                conn.execute(sa.text("INSERT INTO gateways (id, school, state) VALUES (:id, 's1', :state)"),
                             {"id": gateway, "state": state})
        assert migrations.ensure_current(db, upgrade=True) == "0020"  # the revision it upgraded from
        kinds = dict(sql(db, "SELECT id, device_kinds FROM gateways").fetchall())
        assert kinds == {"gw-1": device_kinds_text(devices), "gw-2": "", "gw-3": "", "gw-4": ""}
        assert kinds["gw-1"] == " 100%25%20a_b display environment projector "
        # The ledger writes the same text with a newer state, and clears it with one without devices.
        from campus.contract import State

        ledger = Ledger(db)
        ledger.record([], [("s1", "gw-5", State(online=True, ts=1.7e9, devices=devices)),
                           ("s1", "gw-1", State(online=True, ts=1.8e9, devices={}))], [])
        kinds = dict(sql(db, "SELECT id, device_kinds FROM gateways").fetchall())
        assert (kinds["gw-5"], kinds["gw-1"]) == (device_kinds_text(devices), "")
    finally:
        db.close()


def test_centrals_postgresql_connections_run_without_jit(pg_url: str) -> None:
    """PostgreSQL 15 compiled the usage rate's schools' sums (its estimate over the union of places) for
    270-310 ms to run them in 40-50 ms, every request: central's connections turn JIT off."""
    db = open_database(pg_url, upgrade=True)
    try:
        with db.read() as conn:
            assert conn.exec_driver_sql("SHOW jit").scalar_one() == "off"
    finally:
        db.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_the_room_months_are_filled_from_the_days_kept(engine: str, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    """Migration 0022: `usage_months` filled from the `usage_days` rows already kept, a row per room and calendar
    month, what the rollup's `recount_months` makes of the same days (a month's report reads them)."""
    from datetime import date

    from central import usage

    days = [("gw-1", date(2025, 8, 31), 6, 2, 1, True, 10.0), ("gw-1", date(2025, 9, 1), 6, 3, 1, True, 20.0),
            ("gw-1", date(2025, 9, 30), 4, 4, 0, False, 30.0), ("gw-1", date(2025, 9, 2), 5, 1, 2, False, 25.0),
            ("gw-2", date(2025, 9, 15), 6, 6, 1, True, 40.0), ("gw-2", date(2025, 10, 1), 3, 1, 1, False, 50.0)]
    db = database_at(engine, tmp_path, request, "0021")
    try:
        with db.write() as conn:
            conn.execute(usage.UsageDay.__table__.insert(), [
                {"gateway": gw, "day": day, "school": "s1", "periods": n, "used": k, "power_devices": devices,
                 "co2_over_s": 0.0, "co2_devices": 0, "co2_limit": None, "complete": complete, "counted_to": to,
                 "computed_at": to, "energy_kwh": None, "energy_off_kwh": None, "meter_devices": 0}
                for gw, day, n, k, devices, complete, to in days])
        assert migrations.ensure_current(db, upgrade=True) == "0021"  # the revision it upgraded from
        m = usage.UsageMonth.__table__
        query = sa.select(m.c.month, m.c.gateway, m.c.periods, m.c.used, m.c.measured, m.c.days, m.c.partial)

        def months() -> set[tuple]:
            with db.read() as conn:
                return {tuple(r) for r in conn.execute(query)}

        filled = months()
        assert filled == {(date(2025, 8, 1), "gw-1", 6, 2, 1, 1, None), (date(2025, 9, 1), "gw-1", 11, 4, 2, 3, 25.0),
                          (date(2025, 9, 1), "gw-2", 6, 6, 1, 1, None), (date(2025, 10, 1), "gw-2", 3, 1, 1, 1, 50.0)}
        with db.write() as conn:  # the rollup's recount of the same days makes the same rows
            conn.execute(m.delete())
            assert usage.recount_months(conn, [(gw, day) for gw, day, *_ in days]) == 4
        assert months() == filled
    finally:
        db.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_the_room_weeks_are_filled_from_the_days_kept(engine: str, tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    """Migration 0023: `usage_weeks` filled from the `usage_days` rows already kept, a row per room and ISO week
    (Monday to Sunday, across a month's end), and `usage_day_totals` a row per day, what the rollup's
    `recount_months` makes of the same days (a week's report reads them)."""
    from datetime import date

    from central import usage

    # Sunday 31 August 2025 ends the week of the 25th; Monday 1 September starts the next; the 7th its Sunday.
    days = [("gw-1", date(2025, 8, 31), 6, 2, 1, True, 10.0), ("gw-1", date(2025, 9, 1), 6, 3, 1, True, 20.0),
            ("gw-1", date(2025, 9, 7), 4, 4, 0, False, 30.0), ("gw-1", date(2025, 9, 2), 5, 1, 2, False, 25.0),
            ("gw-2", date(2025, 9, 15), 6, 6, 1, True, 40.0), ("gw-2", date(2025, 9, 8), 3, 1, 1, False, 50.0)]
    db = database_at(engine, tmp_path, request, "0022")
    try:
        with db.write() as conn:
            conn.execute(usage.UsageDay.__table__.insert(), [
                {"gateway": gw, "day": day, "school": "s1", "periods": n, "used": k, "power_devices": devices,
                 "co2_over_s": 0.0, "co2_devices": 0, "co2_limit": None, "complete": complete, "counted_to": to,
                 "computed_at": to, "energy_kwh": n * 0.5, "energy_off_kwh": None if gw == "gw-2" else k * 0.25,
                 "meter_devices": devices}
                for gw, day, n, k, devices, complete, to in days])
            # 0022's month rows, as its rollup kept them (without the energy columns 0023 adds and fills).
            conn.exec_driver_sql("INSERT INTO usage_months (month, gateway, periods, used, measured, days) "
                                 "VALUES ('2025-09-01', 'gw-1', 11, 4, 2, 3)")
        assert migrations.ensure_current(db, upgrade=True) == "0022"  # the revision it upgraded from
        w = usage.UsageWeek.__table__
        query = sa.select(w.c.week, w.c.gateway, w.c.periods, w.c.used, w.c.measured, w.c.days, w.c.partial)

        def weeks() -> set[tuple]:
            with db.read() as conn:
                return {tuple(r) for r in conn.execute(query)}

        d = usage.UsageDayTotal.__table__

        def totals() -> set[tuple]:
            with db.read() as conn:
                return {tuple(r) for r in conn.execute(sa.select(d.c.day, d.c.periods, d.c.used))}

        filled, filled_totals = weeks(), totals()
        assert filled == {(date(2025, 8, 25), "gw-1", 6, 2, 1, 1, None), (date(2025, 9, 1), "gw-1", 11, 4, 2, 3, 25.0),
                          (date(2025, 9, 8), "gw-2", 3, 1, 1, 1, 50.0), (date(2025, 9, 15), "gw-2", 6, 6, 1, 1, None)}
        # The days' totals over the measured rows (the 7th measured nothing: no line).
        assert filled_totals == {(date(2025, 8, 31), 6, 2), (date(2025, 9, 1), 6, 3), (date(2025, 9, 2), 5, 1),
                                 (date(2025, 9, 8), 3, 1), (date(2025, 9, 15), 6, 6)}
        everything = [c for c in w.c if c.name != "week"]

        def kept(table: sa.Table, key: str) -> set[tuple]:
            with db.read() as conn:
                return {tuple(r) for r in conn.execute(sa.select(table.c[key], *(table.c[c.name] for c in everything)))}

        m = usage.UsageMonth.__table__
        kept_weeks, kept_months = kept(w, "week"), kept(m, "month")
        # The energy of gw-1's week of the 1st: its metered days (the 7th has no meter), kWh and those outside.
        assert (date(2025, 9, 1), "gw-1", 11, 4, 2, 3, 25.0, 2, 5.5, 1.0, 5.5) in kept_weeks
        assert (date(2025, 9, 1), "gw-2", 9, 7, 2, 2, 50.0, 2, 4.5, None, None) in kept_months
        with db.write() as conn:  # the rollup's recount of the same days makes the same rows
            conn.execute(w.delete())
            conn.execute(d.delete())
            conn.execute(m.delete())
            usage.recount_months(conn, [(gw, day) for gw, day, *_ in days])
        assert weeks() == filled and totals() == filled_totals
        assert kept(w, "week") == kept_weeks and kept(m, "month") == kept_months
    finally:
        db.close()
