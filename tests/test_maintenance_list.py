"""The maintenance list paged from the lines the usage rollup keeps (central/maintenance.py `page`, `rate_parts`;
issue 19, 21): the same rows in the same order as the list worked out whole (`parts`) for every scope, search,
filter and page, on SQLite and PostgreSQL; the parts the rollup has not listed yet computed and merged in
(counted); and the statements of a page the same with three times the rooms."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from campus.contract import State
from central import lists, maintenance
from central.ledger import Ledger, Sequenced
from central.registry import Building
from central.store.base import Sample
from central.store.sqlite import SqlitePointStore
from dashboards import close_app
from dashboards.context import central
from tests.apps import PEOPLE, add_people, central_db, register_rooms, web_app
from tests.test_paging import statements

NOW = time.time()
WEEK = 7 * 86400
SCHOOLS = ("s1", "s2", "s3")
PROJ1 = {"profile": "projector-pjlink", "kind": "projector", "status": "ok"}
PROJ2 = {"profile": "projector-pjlink2", "kind": "projector", "status": "ok"}
DISPLAY = {"profile": "display-rs232", "kind": "display", "status": "ok"}
_seq = itertools.count(1)


def places(rooms: int) -> tuple[tuple[str, str, str, str], ...]:
    """(gateway, school, room, building): three schools, two buildings each."""
    return tuple((f"gw-{i:03d}", SCHOOLS[i % 3], str(100 + i), "AB"[i // 3 % 2]) for i in range(rooms))


def report(ledger: Ledger, points: SqlitePointStore, i: int, gateway: str, school: str, room: str) -> None:
    """Room `i`'s projector and its hours: lamps and (class 2) filters at many ages and rates, so that the
    list has parts due now (ties at 0 weeks), ties of weeks left across schools, parts without a rate (one
    reading) or not growing (undated), and a display whose `lamp_hours` is no projector's (left out)."""
    devices = {"proj": PROJ2 if i % 2 else PROJ1, "disp": DISPLAY}
    ledger.record([], [(school, gateway, State(online=True, ts=NOW, room=room, devices=devices))], [])
    values = {"lamp_hours": float(500 + (i % 10) * 340)}  # rooms 20 apart: the same hours and growth
    if i % 2:
        values["filter_hours"] = float((i % 10) * 230)
    grew = (i % 4) * 30.0  # 0: not growing, no date
    for metric, hours in values.items():
        if i % 7 != 6:  # every 7th room: one reading only, no rate
            points.write([Sample(school, gateway, "proj", "projector", NOW - 2 * WEEK, {metric: hours - grew})])
        points.write([Sample(school, gateway, "proj", "projector", NOW - 60, {metric: hours})])
    ledger.record([Sequenced(school, gateway, "proj", next(_seq), NOW - 60, values=values),
                   Sequenced(school, gateway, "disp", next(_seq), NOW - 60, values={"lamp_hours": 10.0})], [], [])


def district(tmp: Path, db_url: str, rooms: int, monkeypatch: pytest.MonkeyPatch) -> Flask:
    where = places(rooms)

    def fill(ledger: Ledger, points: SqlitePointStore) -> None:
        for i, (gateway, school, room, _building) in enumerate(where):
            report(ledger, points, i, gateway, school, room)

    app = web_app(central_db(tmp, fill, db_url), monkeypatch)
    register_rooms(app, where)
    app.tokens = add_people(app, {**PEOPLE, "teacher": ("teach", "teach-password", [("s1", "100")])})  # type: ignore[attr-defined]
    return app


@pytest.fixture
def app(tmp_path: Path, central_db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    app = district(tmp_path, central_db_url, 30, monkeypatch)
    yield app
    close_app(app)


def whole(c, scope: lists.Scope, within: float, due_only: bool, q: str | None, now: float) -> list:
    rows = maintenance.parts(c.db, c.store, scope, within, q, now)
    return [r for r in rows if r.due] if due_only else rows


def same_as_whole(c, now: float) -> int:
    """Every scope, search, filter and page of `page` against `parts` sliced; returns the cases compared."""
    with c.db.read() as conn:
        building_b = conn.execute(select(Building.id).where(Building.school_id == "s2", Building.name == "B")
                                  ).scalar_one()
    scopes = [lists.EVERYTHING, lists.Scope(school="s2"), lists.Scope(schools=("s1", "s3")),
              lists.Scope(gateways=("gw-001", "gw-004", "gw-009")), lists.Scope(gateways=()),
              lists.Scope(school="s2", building=building_b)]
    cases = 0
    for scope, q, within, due_only in itertools.product(scopes, (None, "GW-00", "b", "pjlink2"), (1, 4, 50),
                                                        (False, True)):
        every = whole(c, scope, within, due_only, q, now)
        for limit, offset in ((1000, 0), (5, 0), (5, 3), (4, 9), (7, 40)):
            got = maintenance.page(c.db, c.store, lists.Paging(limit=limit, offset=offset, q=q), scope, within,
                                   due_only, now)
            assert (got.items, got.total) == (every[offset:offset + limit], len(every)), (scope, q, within, limit)
            cases += 1
    return cases


def test_a_page_of_the_rollups_lines_is_the_list_worked_out_whole(app: Flask) -> None:
    c = central(app)
    maintenance.rate_parts(c.db, c.store, NOW)
    every = maintenance.parts(c.db, c.store, now=NOW)
    # The district has what the order has to get right: parts due now, ties of weeks left, undated parts.
    lefts = [r.weeks_left for r in every]
    assert lefts.count(0.0) >= 2 and None in lefts and len(every) == 45
    assert len({r.weeks_left for r in every if r.weeks_left}) < len([r for r in every if r.weeks_left])
    assert all(r.profile.startswith("projector") for r in every)  # the display's lamp_hours are no part
    before = maintenance.FALLBACKS.parts
    assert same_as_whole(c, NOW + 60) == 6 * 4 * 3 * 2 * 5
    assert maintenance.FALLBACKS.parts == before  # every part from the rollup's lines: none computed


def test_parts_the_rollup_has_not_listed_are_computed_and_merged(app: Flask) -> None:
    c = central(app)
    maintenance.rate_parts(c.db, c.store, NOW)
    # A projector that reported after the round: its two parts computed by the list, the rest read.
    report(c.ledger, c.store, 31, "gw-031", "s2", "131")
    central(app).registry.register_gateway("gw-031", "s2", "131", "A")
    before = maintenance.FALLBACKS.parts
    got = maintenance.page(c.db, c.store, lists.Paging(limit=1000), now=NOW + 60)
    assert got.items == maintenance.parts(c.db, c.store, now=NOW + 60) and got.total == 47
    assert {(r.gateway, r.part) for r in got.items} >= {("gw-031", "lamp"), ("gw-031", "filter")}
    assert maintenance.FALLBACKS.parts == before + 2
    assert same_as_whole(c, NOW + 60) > 0
    # The next round lists it: nothing computed any more.
    maintenance.rate_parts(c.db, c.store, NOW + 120, only_new=True)
    before = maintenance.FALLBACKS.parts
    assert maintenance.page(c.db, c.store, lists.Paging(limit=1000), now=NOW + 180).items == \
        maintenance.parts(c.db, c.store, now=NOW + 180)
    assert maintenance.FALLBACKS.parts == before
    # A list as of another time (lines and rates two days off): every part computed as before.
    assert maintenance.page(c.db, c.store, lists.Paging(limit=1000), now=NOW + 2 * 86400).items == \
        maintenance.parts(c.db, c.store, now=NOW + 2 * 86400)
    assert maintenance.FALLBACKS.parts == before + 47


def test_a_round_rewrites_what_changed_and_drops_what_is_gone(app: Flask) -> None:
    c = central(app)
    maintenance.rate_parts(c.db, c.store, NOW)
    # gw-001's lamp replaced (hours 0), gw-002 no longer reports a projector.
    c.ledger.record([Sequenced("s2", "gw-001", "proj", next(_seq), NOW, values={"lamp_hours": 0.0})], [], [])
    c.ledger.record([], [("s3", "gw-002", State(online=True, ts=NOW + 1, room="102", devices={"disp": DISPLAY}))], [])
    assert maintenance.rate_parts(c.db, c.store, NOW + 60, only_new=True) == 0  # no store read: no new part
    got = maintenance.page(c.db, c.store, lists.Paging(limit=1000), now=NOW + 90)
    assert got.items == maintenance.parts(c.db, c.store, now=NOW + 90)
    assert not any(r.gateway == "gw-002" for r in got.items)
    assert [r.hours for r in got.items if (r.gateway, r.part) == ("gw-001", "lamp")] == [0.0]


def test_a_page_reads_as_many_statements_with_three_times_the_rooms(tmp_path: Path, central_db_url: str,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   request: pytest.FixtureRequest) -> None:
    small = district(tmp_path / "small", central_db_url, 30, monkeypatch)
    if central_db_url.startswith("sqlite"):
        other = f"sqlite:///{tmp_path}/large.db"
    else:
        from central.db import open_database
        from tests.conftest import _fresh_database

        other = next(_fresh_database(request.getfixturevalue("postgres_server"), request))
        open_database(other, upgrade=True).close()
    large = district(tmp_path / "large", other, 90, monkeypatch)
    try:
        for app in (small, large):
            c = central(app)
            maintenance.rate_parts(c.db, c.store)
        for path in ("/api/maintenance?limit=20", "/api/maintenance?within=50&due=1&limit=5&offset=5",
                     "/api/maintenance?q=gw-0&school=s2&limit=10", "/health/maintenance?limit=20"):
            few, resp_few = statements(small, path)
            many, resp_many = statements(large, path)
            assert resp_few.status_code == resp_many.status_code == 200, path  # type: ignore[attr-defined]
            assert many == few, f"{path}: {few} statements with 30 rooms, {many} with 90"
        resp = statements(large, "/api/maintenance?limit=20")[1]
        assert resp.headers["X-Total-Count"] == str(len(maintenance.parts(central(large).db, central(large).store)))  # type: ignore[attr-defined]
    finally:
        close_app(small)
        close_app(large)
