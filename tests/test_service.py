"""central/service.py: one `Central` that starts and stops its threads together, reached by blueprints
through dashboards.context; and the layering rules of issue 17, checked on the source."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from campus.errors import StoreError
from central.service import Central, CentralConfig
from dashboards import WebConfig, close_app, create_app
from dashboards.context import central, web
from tests.apps import PEOPLE, add_people, central_db, two_rooms
from tests.servers import Mosquitto, wait_until

ROOT = Path(__file__).resolve().parent.parent
# Threads of a started Central: the alarm monitor, the scheduler, the command service's republisher.
THREADS = {"alarm-monitor", "scheduler", "commands-again"}


_EARLIER: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _threads_of_this_test() -> None:
    """Threads of those names another test left running are not this test's Central's."""
    _EARLIER.clear()
    _EARLIER.update(threading.enumerate())


def running() -> set[str]:
    return {t.name for t in threading.enumerate() if t.is_alive() and t not in _EARLIER} & THREADS


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_central_starts_and_stops_its_threads_together(tmp_path: Path, broker: Mosquitto) -> None:
    db = str(tmp_path / "central.db")
    c = Central.open(CentralConfig(store_url=f"sqlite:///{db}", db_url=db, mqtt_url=broker.url,
                                   alarm_interval=0.05, schedule_interval=0.05))
    try:
        assert running() == set(), "open() starts nothing"
        c.start()
        assert running() == THREADS
        assert c.alarm_monitor is not None and c.scheduler is not None and c.commands is not None
        monitor = c.alarm_monitor
        wait_until(lambda: monitor.runs > 0, 10, message="the alarm monitor evaluated the rules")
        assert c.commands.connected.wait(10), "the command service reached the broker"
        c.stop()
        wait_until(lambda: not running(), 10, message="every thread of Central ended")
        assert c.alarm_monitor is None and c.scheduler is None
        assert c.ledger.gateways() == []  # stop() leaves the database open
    finally:
        c.close()
    with pytest.raises(StoreError):  # close() closed it
        c.ledger.gateways()


def test_close_stops_the_threads_before_the_database_closes(tmp_path: Path) -> None:
    db = str(tmp_path / "central.db")
    c = Central.open(CentralConfig(store_url=f"sqlite:///{db}", db_url=db, alarm_interval=0.05,
                                   schedule_interval=0.05)).start()
    assert running() == {"alarm-monitor", "scheduler"}  # no MQTT URL: no command service
    c.close()
    assert not running()  # joined in close(), not later


def test_an_ingest_central_runs_no_background_threads(tmp_path: Path, broker: Mosquitto,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPUS_ALARM_INTERVAL", "0.05")
    db = str(tmp_path / "central.db")
    with Central.open(CentralConfig(store_url=f"sqlite:///{db}", db_url=db, mqtt_url=broker.url,
                                    commands=False, background=False)) as c:
        c.start()
        assert c.commands is None and running() == set()


def test_the_intervals_come_from_the_config_else_the_environment(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "central.db")
    monkeypatch.setenv("CAMPUS_ALARM_INTERVAL", "0")
    monkeypatch.setenv("CAMPUS_SCHEDULE_INTERVAL", "not a number")
    with Central.open(CentralConfig(store_url=f"sqlite:///{db}", db_url=db)) as c:
        assert c.alarm_interval == 0 and c.schedule_interval == 20.0
        c.start()
        assert running() == {"scheduler"}
    with Central.open(CentralConfig(store_url=f"sqlite:///{db}", db_url=db, alarm_interval=3)) as c:
        assert c.alarm_interval == 3


def test_a_blueprint_reaches_the_central_it_was_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPUS_ALARM_INTERVAL", "0")
    monkeypatch.setenv("CAMPUS_SCHEDULE_INTERVAL", "0")
    db = central_db(tmp_path, two_rooms)
    config = WebConfig(store_url=f"sqlite:///{db}", db_url=db)
    with Central.open(config.central_config()) as c:
        app = create_app(config, c)
        with app.app_context():
            assert central() is c and web().config is config
        assert central(app) is c
        c.registry.register_gateway("gw-new", "s2", "201", "B")  # only the given Central knows it so far
        token = add_people(app, {"admin": PEOPLE["admin"]})["admin"]
        answer = app.test_client().get("/api/gateways", headers={"Authorization": f"Bearer {token}"}).get_json()
        assert {"gw-101", "gw-102", "gw-new"} <= {g["id"] for g in answer}
        close_app(app)
        assert [g["id"] for g in c.ledger.gateways()] == ["gw-101", "gw-102"]  # a given Central stays open
    own = create_app(config)
    ledger = central(own).ledger
    close_app(own)
    with pytest.raises(StoreError):  # an app that opened its Central closes it
        ledger.gateways()


def test_the_accessor_refuses_an_app_not_made_by_create_app() -> None:
    from flask import Flask

    with pytest.raises(RuntimeError, match="create_app"):
        central(Flask("other"))


# ---------------------------------------------------------------- layering rules (source scan)

LEDGER_TABLES = ("gateways", "seen", "events", "commands", "latest", "ingest_workers")
LEDGER_SQL = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+(?:" + "|".join(LEDGER_TABLES) + r")\b")
# The modules that own the ledger's tables: the ledger, its acknowledgements, the tables' definitions,
# the paged lists that join them with the registry's in SQL, and the migrations that make and change them.
LEDGER_OWNERS = ("central/ledger.py", "central/acks.py", "central/tables.py", "central/lists.py")
LEDGER_TABLES_IMPORT = re.compile(r"^\s*(?:from\s+central\.tables\s+import|from\s+central\s+import\s+tables|"
                                  r"import\s+central\.tables)", re.MULTILINE)


def _sources(*packages: str) -> Iterator[tuple[str, str]]:
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")


def test_no_view_runs_sql() -> None:
    bad = []
    for name, text in _sources("dashboards"):
        for pattern in (r"^\s*(?:from|import)\s+sqlalchemy", r"\bselect\(", r"\btext\(", r"\.db\.execute",
                        r"\.session\(\)", r"\bsqlite3\b"):
            bad += [f"{name}: {pattern}" for _ in re.finditer(pattern, text, re.MULTILINE)]
    assert bad == []


def test_only_the_ledger_reads_its_tables() -> None:
    bad = []
    for name, text in _sources("central", "dashboards", "campus"):
        if name in LEDGER_OWNERS or name.startswith("central/migrations/"):
            continue
        bad += [f"{name}: {m.group(0)!r}" for m in LEDGER_SQL.finditer(text)]
        bad += [f"{name}: {m.group(0).strip()!r}" for m in LEDGER_TABLES_IMPORT.finditer(text)]
        if not name.startswith("central/store/"):  # the point store's own connections and tables
            bad += [f"{name}: .db.execute" for _ in re.finditer(r"\.db\.execute", text)]
    assert bad == []


def test_the_rules_would_catch_the_old_reads() -> None:
    """The scan finds the two reads this issue moved into the ledger (so it is not vacuous)."""
    assert LEDGER_SQL.search('ledger.db.execute("SELECT gateway, device, MAX(ts) FROM latest GROUP BY gateway")')
    assert LEDGER_SQL.search('ledger.db.execute("SELECT id, state FROM gateways")')
    assert LEDGER_TABLES_IMPORT.search("from central.tables import gateways as gw_t\n")
