"""The web app on a real central database, as the dashboard tests build it.

The database is filled through the calls ingest uses (`Ledger.record`,
`SqlitePointStore.write`), the registry through its own methods; only the
background alarm monitor and scheduler are left to each test (off unless
it asks), so that a test decides when rules are evaluated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import pytest
from flask import Flask

from campus.contract import State
from central.ledger import Ledger, Sequenced
from central.store.base import Sample
from central.store.sqlite import SqlitePointStore
from dashboards import WebConfig, create_app
from dashboards.context import central

# For a test of a fixture that takes `central_db_url` (both engines) whose subject is not the central
# database (a refused request, a page's HTML, the point store): its SQLite case alone, to keep the suite
# lean. Tests whose subject is data going into or out of the database stay on both engines.
sqlite_only = pytest.mark.parametrize("central_db_url", ["sqlite"], indirect=True)

ENV_AND_PROJECTOR = {"env": {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"},
                     "proj": {"profile": "projector-pjlink", "kind": "projector", "status": "ok"}}
TWO_ROOMS = (("gw-101", "s1", "101", "A"), ("gw-102", "s1", "102", "A"))  # gateway, school, room, building
PEOPLE = {"admin": ("boss", "boss-password", []), "facility": ("fm", "fm-password", []),
          "teacher": ("teach", "teach-password", [("s1", "101")])}


@dataclass(frozen=True)
class CentralDb:
    """A central database on either engine and the SQLite point store beside it, as `campus web --db URL
    --store sqlite:///PATH` opens them: what `central_db(..., db_url=...)` fills and `web_app` takes."""
    url: str        # sqlite:///PATH or postgresql+psycopg://... (the `central_db_url` fixture)
    store_url: str  # sqlite:///TMP/points.db


@overload
def central_db(tmp: Path, fill: Callable[[Ledger, SqlitePointStore], None]) -> str: ...
@overload
def central_db(tmp: Path, fill: Callable[[Ledger, SqlitePointStore], None], db_url: str) -> CentralDb: ...
def central_db(tmp: Path, fill: Callable[[Ledger, SqlitePointStore], None],
               db_url: str | None = None) -> str | CentralDb:
    """A central database filled by `fill(ledger, points)`. Without `db_url`: one SQLite file in `tmp`
    for ledger and points, its path. With `db_url` (either engine): that database for the ledger and
    registry, the points in their own SQLite file in `tmp`; both URLs as a `CentralDb`."""
    path = str(tmp / "central.db")
    where = CentralDb(db_url, f"sqlite:///{tmp / 'points.db'}") if db_url else None
    ledger = Ledger(where.url if where else path)
    points = SqlitePointStore(where.store_url.removeprefix("sqlite:///") if where else path)
    try:
        fill(ledger, points)
    finally:
        ledger.close()
        points.close()
    return where or path


def db_url_of(db: str | CentralDb) -> str:
    """What `Ledger(...)` or `Registry(...)` opens for the database `central_db` returned."""
    return db.url if isinstance(db, CentralDb) else f"sqlite:///{db}"


def two_rooms(ledger: Ledger, points: SqlitePointStore, now: float | None = None) -> None:
    """gw-101 and gw-102 of school s1 online, each with a CO2 sample and a card swipe."""
    now = time.time() if now is None else now
    for gw, room in (("gw-101", "101"), ("gw-102", "102")):
        ledger.record([Sequenced("s1", gw, "env", 1, now - 5, values={"co2_ppm": 800}),
                       Sequenced("s1", gw, "cards", 2, now - 4, event=("card_swipe", {"card": "ab"}))],
                      [("s1", gw, State(online=True, ts=now, room=room, devices=ENV_AND_PROJECTOR, interval=5))], [])
        points.write([Sample("s1", gw, "env", "environment", now - 5, {"co2_ppm": 800.0})])


def district(count: int, schools: int = 1) -> tuple[tuple[str, str, str, str], ...]:
    """`count` rooms spread over `schools` schools, as (gateway, school, room, building) for `register_rooms`
    and `rooms_with_history`: gw-0000, gw-0001, ... in schools s1, s2, ..."""
    return tuple((f"gw-{i:04d}", f"s{i % schools + 1}", str(100 + i // schools), "A") for i in range(count))


def rooms_with_history(places: tuple[tuple[str, str, str, str], ...], samples: int = 60,
                       every_s: float = 60.0, now: float | None = None) -> Callable[[Ledger, SqlitePointStore], None]:
    """A filler for `central_db`: each room's gateway online with an environment sensor and a projector,
    and `samples` environment samples `every_s` apart up to now (the last one the device's latest values)."""
    def fill(ledger: Ledger, points: SqlitePointStore) -> None:
        at = time.time() if now is None else now
        for gateway, school, room, _building in places:
            values = [{"co2_ppm": 600.0 + (k * 37) % 500, "temperature_c": 20.0 + (k % 40) / 10}
                      for k in range(samples)]
            times = [at - every_s * (samples - k) for k in range(samples)]
            points.write([Sample(school, gateway, "env", "environment", ts, v) for ts, v in zip(times, values,
                                                                                              strict=True)])
            ledger.record([Sequenced(school, gateway, "env", k + 1, ts, values=v)
                           for k, (ts, v) in enumerate(zip(times, values, strict=True))]
                          + [Sequenced(school, gateway, "proj", samples + 1, at - 1, values={"power": "on"})],
                          [(school, gateway, State(online=True, ts=at, room=room, devices=ENV_AND_PROJECTOR,
                                                   interval=5))], [])
    return fill


def web_app(db: str | CentralDb, monkeypatch: pytest.MonkeyPatch | None = None, store_url: str | None = None,
            **config: object) -> Flask:
    """`create_app` on the database `central_db` returned (a SQLite path: points in it too, unless
    `store_url` names another store; a `CentralDb`: its database and its store); with `monkeypatch`,
    the alarm monitor and scheduler stay off."""
    if monkeypatch is not None:
        monkeypatch.setenv("CAMPUS_ALARM_INTERVAL", "0")
        monkeypatch.setenv("CAMPUS_SCHEDULE_INTERVAL", "0")
        monkeypatch.setenv("CAMPUS_ATTENDANCE_INTERVAL", "0")  # the attendance retention (tests run it themselves)
        monkeypatch.setenv("CAMPUS_USAGE_INTERVAL", "0")  # the usage rollup (tests run it as of their own week)
    if isinstance(db, CentralDb):
        return create_app(WebConfig(store_url=store_url or db.store_url, db_url=db.url, **config))  # type: ignore[arg-type]
    return create_app(WebConfig(store_url=store_url or f"sqlite:///{db}", db_url=db, **config))  # type: ignore[arg-type]


def add_people(app: Flask, people: dict[str, tuple[str, str, list[tuple[str, str]]]] | None = None) -> dict[str, str]:
    """Accounts by role (name, password, rooms), default `PEOPLE`; an API token for each role."""
    reg = central(app).registry
    tokens = {}
    for role, (name, password, rooms) in (people or PEOPLE).items():
        reg.add_user(name, password, role, rooms=rooms)
        tokens[role] = reg.issue_token(name)
    return tokens


def one_gateway_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """A web app over an empty central database with one registered gateway (gw1 in s1, room 101) and the
    people of `add_people` (their tokens as `app.tokens`): for a fixture's `yield from`."""
    from dashboards import close_app

    app = web_app(central_db(tmp_path, lambda ledger, points: None), monkeypatch)
    register_rooms(app, (("gw1", "s1", "101", "A"),))
    app.tokens = add_people(app)  # type: ignore[attr-defined]
    yield app
    close_app(app)


def register_rooms(app: Flask, rooms: tuple[tuple[str, str, str, str], ...] = TWO_ROOMS) -> None:
    """Gateways in the registry as (gateway, school, room, building)."""
    reg = central(app).registry
    for gateway, school, room, building in rooms:
        reg.register_gateway(gateway, school, room, building)


class ScheduleSite:
    """Central's database at `url` with one room per school, `rooms` (gateway -> school), each online with a
    projector, the `timetables` given (school -> document), and schedules made by `add` (`defaults` and the
    fields given): the schedule tests' district."""

    def __init__(self, url: str, rooms: dict[str, str], timetables: dict[str, dict[str, Any]],
                 defaults: dict[str, Any]) -> None:
        from central import timetables as tts
        from central.db import open_database
        from central.registry import Registry

        self.db = open_database(url)
        self.registry, self.ledger = Registry(self.db), Ledger(self.db)
        for gw, school in rooms.items():
            self.registry.register_gateway(gw, school, "101", "A")
            self.registry.add_device(gw, "proj", "projector-pjlink", {"host": "127.0.0.1", "port": 4352})
            self.ledger.record([], [(school, gw, State(online=True, ts=time.time(), room="101",
                                                       devices=ENV_AND_PROJECTOR))], [])
        for school, doc in timetables.items():
            tts.save(self.registry, tts.from_document(school, doc))
        self.defaults = defaults

    def add(self, **fields: Any) -> Any:
        from central.registry import Schedule

        with self.registry.session() as s:
            row = Schedule(**{**self.defaults, **fields})
            s.add(row)
            s.flush()
        return row

    def close(self) -> None:
        self.ledger.close()
        self.registry.close()
        self.db.close()
