"""The web app on a real central database, as the dashboard tests build it.

The database is filled through the calls ingest uses (`Ledger.record`,
`SqlitePointStore.write`), the registry through its own methods; only the
background alarm monitor and scheduler are left to each test (off unless
it asks), so that a test decides when rules are evaluated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from campus.contract import State
from central.ledger import Ledger, Sequenced
from central.store.base import Sample
from central.store.sqlite import SqlitePointStore
from dashboards import WebConfig, create_app
from dashboards.context import central

ENV_AND_PROJECTOR = {"env": {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"},
                     "proj": {"profile": "projector-pjlink", "kind": "projector", "status": "ok"}}
TWO_ROOMS = (("gw-101", "s1", "101", "A"), ("gw-102", "s1", "102", "A"))  # gateway, school, room, building
PEOPLE = {"admin": ("boss", "boss-password", []), "facility": ("fm", "fm-password", []),
          "teacher": ("teach", "teach-password", [("s1", "101")])}


def central_db(tmp: Path, fill: Callable[[Ledger, SqlitePointStore], None]) -> str:
    """A central database file in `tmp`, filled by `fill(ledger, points)`; its path."""
    db = str(tmp / "central.db")
    ledger, points = Ledger(db), SqlitePointStore(db)
    try:
        fill(ledger, points)
    finally:
        ledger.close()
        points.close()
    return db


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


def web_app(db: str, monkeypatch: pytest.MonkeyPatch | None = None, store_url: str | None = None,
            **config: object) -> Flask:
    """`create_app` on that database (points in it too, unless `store_url` names another store); with
    `monkeypatch`, the alarm monitor and scheduler stay off."""
    if monkeypatch is not None:
        monkeypatch.setenv("CAMPUS_ALARM_INTERVAL", "0")
        monkeypatch.setenv("CAMPUS_SCHEDULE_INTERVAL", "0")
    return create_app(WebConfig(store_url=store_url or f"sqlite:///{db}", db_url=db, **config))  # type: ignore[arg-type]


def add_people(app: Flask, people: dict[str, tuple[str, str, list[tuple[str, str]]]] | None = None) -> dict[str, str]:
    """Accounts by role (name, password, rooms), default `PEOPLE`; an API token for each role."""
    reg = central(app).registry
    tokens = {}
    for role, (name, password, rooms) in (people or PEOPLE).items():
        reg.add_user(name, password, role, rooms=rooms)
        tokens[role] = reg.issue_token(name)
    return tokens


def register_rooms(app: Flask, rooms: tuple[tuple[str, str, str, str], ...] = TWO_ROOMS) -> None:
    """Gateways in the registry as (gateway, school, room, building)."""
    reg = central(app).registry
    for gateway, school, room, building in rooms:
        reg.register_gateway(gateway, school, room, building)
