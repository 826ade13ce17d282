"""Lists at district size (issue 19): every list pages, searches and counts in SQL.

A district of a few hundred rooms, registered in bulk (the CSV import) and reporting in one ledger batch;
each list answers a page, the total in `X-Total-Count`, and runs as many SQL statements with 300 rooms as
with 30 (counted with a `before_cursor_execute` listener): nothing a request does grows with the rooms.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, update

from campus.contract import State
from campus.errors import PayloadError
from central import alarms, lists, overview
from central import provisioning as prov
from central.ledger import Sequenced
from central.tables import gateways as gw_t
from dashboards import close_app
from dashboards.context import central
from tests.apps import ENV_AND_PROJECTOR, PEOPLE, add_people, central_db, sqlite_only, web_app

SCHOOLS = 10


def district_app(tmp: Path, db_url: str, rooms: int, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """`rooms` gateways over SCHOOLS schools, registered by CSV import; all but every 10th reporting (those
    are not installed yet); every 7th offline, every 11th with a projector in fault, every 13th with CO2
    over the limit (an open alarm after one evaluation)."""
    app = web_app(central_db(tmp, lambda ledger, points: None, db_url=db_url), monkeypatch)
    c = central(app)
    places = [(f"gw-{i:04d}", f"s{i % SCHOOLS:02d}", str(100 + i // SCHOOLS)) for i in range(rooms)]
    csv = "school,building,room,gateway\n" + "".join(f"{s},A,{r},{g}\n" for g, s, r in places)
    assert prov.import_csv(c.registry, csv.encode()).ok
    app.tokens = add_people(app, {**PEOPLE, "teacher": ("teach", "teach-password", [("s01", "101")])})  # type: ignore[attr-defined]
    now = time.time()
    messages, states = [], []
    for i, (gateway, school, room) in enumerate(places):
        if i % 10 == 9:
            continue
        devices = {k: dict(v) for k, v in ENV_AND_PROJECTOR.items()}
        if i % 11 == 0:
            devices["proj"]["status"] = "fault"
        messages.append(Sequenced(school, gateway, "env", 1, now - 5, values={"co2_ppm": 2500 if i % 13 == 0 else 600}))
        states.append((school, gateway, State(online=i % 7 != 0, ts=now, room=room, devices=devices, interval=5)))
    c.ledger.record(messages, states, [])
    alarms.evaluate(c.registry, c.ledger, now=now)
    return app


@pytest.fixture
def small_and_large(tmp_path: Path, central_db_url: str, request: pytest.FixtureRequest,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Flask, Flask]]:
    """Two districts on one engine: 30 rooms, and 300 (the second in a fresh database of the same engine)."""
    small = district_app(tmp_path / "small", central_db_url, 30, monkeypatch)
    if central_db_url.startswith("sqlite"):
        other = f"sqlite:///{tmp_path}/large.db"
    else:
        from tests.conftest import _fresh_database

        gen = _fresh_database(request.getfixturevalue("postgres_server"), request)
        other = next(gen)
        from central.db import open_database

        open_database(other, upgrade=True).close()
    large = district_app(tmp_path / "large", other, 300, monkeypatch)
    yield small, large
    close_app(small)
    close_app(large)


def get(app: Flask, path: str, role: str = "admin"):
    return app.test_client().get(path, headers={"Authorization": f"Bearer {app.tokens[role]}"})  # type: ignore[attr-defined]


def statements(app: Flask, path: str, role: str = "admin") -> tuple[int, object]:
    """The SQL statements one request runs, and its response."""
    engine = central(app).registry.db.engine
    count = 0

    def counter(*_args: object) -> None:
        nonlocal count
        count += 1

    get(app, path, role).close()  # warm: first-use work (sessions, caches) is not the request's
    event.listen(engine, "before_cursor_execute", counter)
    try:
        resp = get(app, path, role)
    finally:
        event.remove(engine, "before_cursor_execute", counter)
    return count, resp


LISTS = ["/api/gateways?limit=20", "/api/devices?limit=20", "/api/events?limit=20", "/api/commands?limit=20",
         "/api/audit?limit=20", "/api/alarms?limit=20", "/api/board?limit=20", "/api/schools?limit=20",
         "/api/board?school=s03&limit=5", "/api/gateways?q=gw-00&limit=20"]
PAGES = ["/health/?x=1", "/provisioning/gateways?limit=20", "/provisioning/gateways/gw-0001",
         "/provisioning/broker", "/panel?limit=20", "/health/usage?limit=20", "/district"]


def test_statements_per_request_do_not_grow_with_rooms(small_and_large: tuple[Flask, Flask]) -> None:
    small, large = small_and_large
    # The board's and the district's snapshots read afresh by every request: their statements are counted
    # too (not growing with rooms either), and none is read again between the warm request and the counted one.
    for app in small_and_large:
        central(app).board_snapshots.ttl = 0
    for path in LISTS + PAGES:
        few, resp_few = statements(small, path)
        many, resp_many = statements(large, path)
        assert resp_few.status_code == resp_many.status_code == 200, (path, resp_many.get_data(as_text=True)[:300])
        assert many == few, f"{path}: {few} statements with 30 rooms, {many} with 300"


def test_lists_answer_a_page_and_the_total(small_and_large: tuple[Flask, Flask]) -> None:
    _, app = small_and_large
    resp = get(app, "/api/gateways?limit=25&offset=50")
    rows = resp.get_json()
    assert len(rows) == 25 and resp.headers["X-Total-Count"] == "300"
    everything = [gw["id"] for off in range(0, 300, 100)
                  for gw in get(app, f"/api/gateways?limit=100&offset={off}").get_json()]
    assert len(everything) == len(set(everything)) == 300  # pages neither overlap nor leave a gap
    assert [gw["id"] for gw in rows] == everything[50:75]
    assert sum(1 for gw in everything if gw.endswith("9")) == 30
    assert sum(1 for gw in get(app, "/api/gateways?limit=1000").get_json() if not gw["installed"]) == 30
    resp = get(app, "/api/devices?limit=7")
    assert len(resp.get_json()) == 7 and resp.headers["X-Total-Count"] == str(270 * 2)
    assert all(set(d) >= {"gateway", "id", "profile", "kind", "status", "latest"} for d in resp.get_json())
    assert get(app, "/api/gateways").headers["X-Total-Count"] == "300" and len(get(app, "/api/gateways").get_json()) \
        == 100  # the default page
    resp = get(app, "/api/events?limit=5")
    assert resp.headers["X-Total-Count"] == "0" and resp.get_json() == []


def test_search_matches_names_and_ids_with_like_characters_taken_literally(
        small_and_large: tuple[Flask, Flask]) -> None:
    _, app = small_and_large
    resp = get(app, "/api/gateways?q=GW-012&limit=100")
    assert sorted(gw["id"] for gw in resp.get_json()) == [f"gw-012{i}" for i in range(10)]
    assert resp.headers["X-Total-Count"] == "10"
    assert get(app, "/api/gateways?q=s03").headers["X-Total-Count"] == "30"  # by school
    for literal in ("%", "_", "\\", "gw_0", "100%"):
        resp = get(app, f"/api/gateways?q={literal}")
        assert resp.status_code == 200 and resp.headers["X-Total-Count"] == "0", literal
    assert get(app, "/api/devices?q=proj").headers["X-Total-Count"] == "270"
    assert get(app, "/api/audit?q=no-such-thing").get_json() == []


def test_the_board_shows_problems_first_and_counts_every_room(small_and_large: tuple[Flask, Flask]) -> None:
    _, app = small_and_large
    data = get(app, "/api/board?limit=30").get_json()
    offline = sum(1 for i in range(300) if i % 10 != 9 and i % 7 == 0)
    fault = sum(1 for i in range(300) if i % 10 != 9 and i % 7 != 0 and i % 11 == 0)
    assert data["counts"]["rooms"] == 300 and data["counts"]["not_installed"] == 30
    assert (data["counts"]["offline"], data["counts"]["fault"]) == (offline, fault)
    assert data["total"] == 300 and len(data["rooms"]) == 30
    problems = [bool(r["problems"]) for r in get(app, "/api/board?limit=300").get_json()["rooms"]]
    assert problems == sorted(problems, reverse=True) and problems[0] and not problems[-1]
    resp = get(app, "/api/board?problem=offline&limit=1000")
    assert resp.headers["X-Total-Count"] == str(offline)
    assert all("offline" in r["problems"] for r in resp.get_json()["rooms"])
    assert {r["school"] for r in get(app, "/api/board?school=s04&limit=100").get_json()["rooms"]} == {"s04"}


def heard_for_the_hour(c: Any) -> None:
    """Every gateway heard from just now, for the next hour: on a loaded machine the district's 5 s heartbeats
    go silent (SILENT_INTERVALS) while a test compares a snapshot with the database asked afresh."""
    with c.registry.db.write() as conn:
        conn.execute(update(gw_t).values(last_seen=time.time() + 3600))


def test_the_boards_snapshot_answers_what_the_database_does(small_and_large: tuple[Flask, Flask]) -> None:
    """The web process ranks and counts the board from one snapshot of the district per CAMPUS_BOARD_CACHE_S
    (central/lists.py `BoardSnapshots`): every page, filter and caller's scope answers the same rooms, order,
    total and counts as the database asked afresh, and the snapshot is read once for all of them."""
    _, app = small_and_large
    c = central(app)
    heard_for_the_hour(c)
    snaps = lists.BoardSnapshots(ttl=3600)
    gateways = tuple(f"gw-{i:04d}" for i in (0, 7, 11, 13, 21, 299)) + ("gw-none",)
    scopes = [lists.EVERYTHING, lists.Scope(schools=("s01", "s02")), lists.Scope(gateways=gateways),
              lists.Scope(schools=())]
    cases = 0
    for scope in scopes:
        for school in (None, "s04", "s02"):
            for problem in (None, "any", "offline", "fault", "alarm"):
                for offset, limit in ((0, 20), (20, 20), (290, 50)):
                    paging = lists.Paging(limit=limit, offset=offset)
                    args = (c.registry, c.ledger, school, None, problem, paging, scope)
                    fresh, cached = overview.board(*args), overview.board(*args, snapshots=snaps)
                    assert ([r.gateway for r in cached.rooms], cached.total, cached.counts) == \
                        ([r.gateway for r in fresh.rooms], fresh.total, fresh.counts), (scope, school, problem, offset)
                    cases += bool(fresh.rooms)
    assert cases > 30 and snaps.reads == 1
    # A search asks the database (its case-folding is the engine's), and a snapshot older than `ttl` is read again.
    searched = overview.board(c.registry, c.ledger, paging=lists.Paging(q="GW-002"), snapshots=snaps)
    assert searched.total == 10 and snaps.reads == 1
    now = lists.BoardSnapshots(ttl=0)
    c.ledger.record([], [("s00", "gw-0010", State(online=False, ts=time.time(), room="101", devices={}, interval=5))],
                    [])
    for expected in (1, 2):
        board = overview.board(c.registry, c.ledger, "s00", None, "offline", lists.Paging(limit=300), snapshots=now)
        assert "gw-0010" in [r.gateway for r in board.rooms] and now.reads == expected


def test_the_districts_snapshot_answers_what_the_database_does(small_and_large: tuple[Flask, Flask]) -> None:
    """`/district` and `GET /api/schools` roll the schools up from one snapshot per CAMPUS_BOARD_CACHE_S
    (central/lists.py `BoardSnapshots.schools`): every sort, direction, filter, caller's schools and page
    answers the same rows, order and total as the database asked afresh (ties by school, nothing measured
    last), the snapshot read once for all of them; a search asks the database; an older one is read again."""
    from central.usage import UsageDay

    _, app = small_and_large
    c = central(app)
    monday = lists.week_monday()
    # This week's usage for some schools, with ties (s02 = s03) and a school measured but never used (s05).
    usage = {"s01": (10, 7, 3600.0, 12.5), "s02": (10, 5, 0.0, 3.25), "s03": (20, 10, 7200.0, 3.25),
             "s05": (8, 0, 100.0, 0.0), "s08": (6, 6, 0.0, 40.0)}
    with c.registry.db.write() as conn:
        conn.execute(UsageDay.__table__.insert(), [
            {"gateway": f"gw-{int(school[1:]):04d}", "day": monday, "school": school, "periods": periods,
             "used": used, "power_devices": 1, "co2_over_s": co2, "co2_devices": 1, "co2_limit": 1500.0,
             "complete": True, "counted_to": 0.0, "computed_at": 0.0, "energy_kwh": kwh, "energy_off_kwh": 0.0,
             "meter_devices": 1} for school, (periods, used, co2, kwh) in usage.items()])
    heard_for_the_hour(c)
    snaps = lists.BoardSnapshots(ttl=3600)
    cases = 0
    for scope in (lists.EVERYTHING, lists.Scope(schools=("s01", "s02", "s07")), lists.Scope(schools=())):
        for sort in lists.SCHOOL_SORTS:
            for descending in (False, True):
                for problems in (False, True):
                    for offset, limit in ((0, 100), (2, 3), (9, 5)):
                        args = (c.registry, lists.Paging(limit=limit, offset=offset), sort, descending, problems, scope)
                        fresh, cached = overview.school_rollup(*args), overview.school_rollup(*args, snapshots=snaps)
                        assert cached == fresh, (scope, sort, descending, problems, offset)
                        cases += len(fresh.items) > 1
    assert cases > 100 and snaps.school_reads == 1
    ranked = overview.school_rollup(c.registry, sort="usage_rate", descending=True, snapshots=snaps).items
    assert [r.school for r in ranked[:5]] == ["s08", "s01", "s02", "s03", "s05"]  # 1, 0.7, 0.5 = 0.5 by id, 0
    with pytest.raises(PayloadError):
        overview.school_rollup(c.registry, sort="bogus", snapshots=snaps)
    searched = overview.school_rollup(c.registry, lists.Paging(q="S07"), snapshots=snaps)
    assert [r.school for r in searched.items] == ["s07"] and snaps.school_reads == 1
    now = lists.BoardSnapshots(ttl=0)
    c.ledger.record([], [("s00", "gw-0010", State(online=False, ts=time.time(), room="101", devices={}, interval=5))],
                    [])
    for expected in (1, 2):
        [s00] = overview.school_rollup(c.registry, lists.Paging(limit=1), snapshots=now).items
        assert s00.offline == fresh_offline(c, "s00") and now.school_reads == expected


def fresh_offline(c: Any, school: str) -> int:
    """A school's offline gateways as the database counts them now."""
    return next(r.offline for r in overview.school_rollup(c.registry).items if r.school == school)


def test_the_district_rolls_up_each_school(small_and_large: tuple[Flask, Flask]) -> None:
    _, app = small_and_large
    resp = get(app, "/api/schools", "facility")
    rows = {r["school"]: r for r in resp.get_json()}
    assert resp.headers["X-Total-Count"] == str(SCHOOLS) and len(rows) == SCHOOLS
    for school, row in rows.items():
        mine = [i for i in range(300) if f"s{i % SCHOOLS:02d}" == school]
        reporting = [i for i in mine if i % 10 != 9]
        assert row["rooms"] == row["gateways"] == 30
        assert row["online"] == sum(1 for i in reporting if i % 7 != 0)
        assert row["offline"] == sum(1 for i in reporting if i % 7 == 0)
        assert row["faults"] == sum(1 for i in reporting if i % 7 != 0 and i % 11 == 0)
        co2 = sum(1 for i in reporting if i % 13 == 0 and i % 7 != 0)  # an offline room raises no CO2 alarm
        assert row["alarms_by_kind"].get("co2_above", 0) == co2
    busiest = get(app, "/api/schools?sort=-alarms&limit=1", "facility").get_json()[0]
    assert busiest["alarms"] == max(r["alarms"] for r in rows.values())
    assert [r["school"] for r in get(app, "/api/schools?q=S07", "facility").get_json()] == ["s07"]
    assert get(app, "/api/schools?sort=bogus", "facility").status_code == 400
    assert get(app, "/api/schools", "teacher").status_code == 403


@sqlite_only
@pytest.mark.parametrize("path", ["/api/gateways", "/api/devices", "/api/events", "/api/commands", "/api/audit",
                                  "/api/alarms", "/api/board", "/api/schools"])
def test_hostile_paging_gets_a_400_naming_the_parameter(tmp_path: Path, central_db_url: str, path: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    app = district_app(tmp_path, central_db_url, 12, monkeypatch)
    try:
        for query, name in (("limit=0", "limit"), ("limit=-1", "limit"), ("limit=abc", "limit"),
                            ("limit=99999999999999999999", "limit"), ("offset=-5", "offset"),
                            ("offset=1e3", "offset"), ("limit=%EF%BC%91", "limit"), ("q=a%00b", "q"),
                            ("q=" + "x" * 101, "q")):
            resp = get(app, f"{path}?{query}")
            assert resp.status_code == 400, (path, query, resp.status_code)
            assert name in resp.get_json()["error"], (path, query)
        for query in ("limit=", "offset=", "q=", "offset=1000000"):
            resp = get(app, f"{path}?{query}")
            assert resp.status_code == 200 and "X-Total-Count" in resp.headers, (path, query)
    finally:
        close_app(app)


@sqlite_only
def test_the_pages_render_a_page_of_a_district(tmp_path: Path, central_db_url: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    app = district_app(tmp_path, central_db_url, 120, monkeypatch)
    try:
        page = get(app, "/provisioning/gateways?limit=20&q=s01").get_data(as_text=True)
        assert page.count('<tr data-gateway="') == 12 and 'data-total="12"' in page
        page = get(app, "/provisioning/gateways").get_data(as_text=True)
        assert page.count('<tr data-gateway="') == 50 and 'rel="next"' in page and "120 registered" in page
        page = get(app, "/panel?limit=10&offset=10").get_data(as_text=True)
        assert page.count('class="card pick"') == 10 and 'rel="prev"' in page
        page = get(app, "/health/usage?limit=5").get_data(as_text=True)
        assert 'data-total="120"' in page
        page = get(app, "/district").get_data(as_text=True)
        assert page.count('<tr data-school="') == SCHOOLS
        assert get(app, "/provisioning/gateways?limit=bogus").status_code == 200  # the first page
    finally:
        close_app(app)


def test_a_page_of_gateway_ids_reads_the_places_names_only_for_a_search(tmp_path: Path, central_db_url: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`lists.gateway_ids` (`/health/usage`, the room picker, `GET /api/gateways`) joins the places' rooms and
    buildings only when a `q` or a building asks them: every page, total and scope the same as the places read
    with their names (`place_rows`), with a gateway that reports without being registered."""
    app = district_app(tmp_path, central_db_url, 60, monkeypatch)
    try:
        c = central(app)
        c.ledger.record([], [("s03", "gw-loose", State(online=True, ts=time.time(), room="loose", devices={}))], [])
        with c.db.read() as conn:
            building_id = conn.exec_driver_sql("SELECT id FROM buildings ORDER BY id LIMIT 1").scalar_one()
        for scope in (lists.EVERYTHING, lists.Scope(school="s01"), lists.Scope(schools=("s02", "s03")),
                      lists.Scope(gateways=("gw-0003", "gw-0040", "gw-loose")), lists.Scope(schools=()),
                      lists.Scope(building=building_id)):
            for q in (None, "gw-00", "LOOSE", "A"):
                rows = lists.place_rows(c.db, scope)
                want = sorted(((s, gw) for gw, s, b, r in rows
                               if not q or any(q.lower() in v.lower() for v in (gw, s, b, r))))
                for offset in (0, 7, 50):
                    page = lists.gateway_ids(c.db, lists.Paging(limit=7, offset=offset, q=q), scope)
                    assert page.items == [gw for _s, gw in want[offset:offset + 7]] and page.total == len(want)
        assert lists.gateway_ids(c.db, lists.Paging(), lists.EVERYTHING).total == 61
    finally:
        close_app(app)
