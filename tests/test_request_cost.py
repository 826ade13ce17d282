"""What one request costs the central database (issue 19, the speed that was left): statements and writes.

A district of 300 rooms (tests/test_paging.py `district_app`). The statements a request runs do not grow
with the rows it shows (a page of 50 costs what a page of 5 costs: no statement per row), resolving an
API token is one statement whatever the account's rooms or schools, and a GET writes nothing: "online"
is derived from when a gateway was last heard (central/ledger.py `online_at`), where every read used to
take the write lock to mark silent gateways offline first. A gateway silent past its limit still shows
offline everywhere.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, select, update

from central import overview
from central.ledger import Sequenced
from central.registry import Registry
from central.tables import gateways as gw_t
from dashboards import close_app
from dashboards.context import central
from tests.test_paging import district_app, get, statements

ROOMS = 300


@pytest.fixture
def district(tmp_path: Path, central_db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    app = district_app(tmp_path, central_db_url, ROOMS, monkeypatch)
    yield app
    close_app(app)


class Counter:
    """The SQL statements run on `registry`'s engine inside `with`: all of them, and the writes."""

    WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|BEGIN IMMEDIATE)\b", re.IGNORECASE)

    def __init__(self, registry: Registry) -> None:
        self.engine = registry.db.engine
        self.all: list[str] = []

    def _seen(self, _conn: object, _cursor: object, statement: str, *_args: object) -> None:
        self.all.append(statement)

    @property
    def writes(self) -> list[str]:
        return [s for s in self.all if self.WRITE.match(s)]

    def __enter__(self) -> Counter:
        event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


def test_statements_do_not_grow_with_the_page(district: Flask) -> None:
    """A page of 50 rows runs the statements of a page of 5: nothing is read per row (the provisioning list
    read each gateway's two newest config events with two statements of its own)."""
    central(district).board_snapshots.ttl = 0  # the board's snapshot read by each request: counted, never between
    for path in ("/provisioning/gateways?limit={}", "/api/board?limit={}", "/api/gateways?limit={}",
                 "/api/devices?limit={}", "/panel?limit={}", "/api/alarms?state=open&limit={}"):
        few, resp_few = statements(district, path.format(5))
        many, resp_many = statements(district, path.format(50))
        assert resp_few.status_code == resp_many.status_code == 200, (path,
                                                                      resp_many.get_data(as_text=True)[:300])
        assert many == few, f"{path}: {few} statements for 5 rows, {many} for 50"
    page = get(district, "/provisioning/gateways?limit=50").get_data(as_text=True)
    assert page.count('<tr data-gateway="') == 50


def test_the_provisioning_list_shows_each_gateways_newest_config_events(district: Flask) -> None:
    """The events of the page, read together, are still each gateway's newest of each kind."""
    c = central(district)
    now = time.time()
    def ev(gateway: str, seq: int, ago: float, kind: str, data: dict[str, object]) -> Sequenced:
        return Sequenced("s00", gateway, "agent", seq, now - ago, event=(kind, data))

    c.ledger.record([
        ev("gw-0000", 10, 30, "config_applied", {"version": 1}),
        ev("gw-0000", 11, 20, "config_rejected", {"version": 2, "error": "x"}),
        ev("gw-0000", 12, 10, "config_rejected", {"version": 3, "error": "y"}),
        ev("gw-0000", 13, 5, "card_swipe", {"card": "ab"}),
        ev("gw-0010", 10, 10, "config_applied", {"version": 4}),
        ev("gw-0010", 11, 40, "config_applied", {"version": 3}),
    ], [], [])
    rows = {r.id: r for r in overview.provisioned_gateways(c.registry, c.ledger).items}
    assert rows["gw-0000"].applied_event["data"] == {"version": 1}
    assert rows["gw-0000"].rejected["data"] == {"version": 3, "error": "y"}
    assert rows["gw-0010"].applied_event["data"] == {"version": 4} and rows["gw-0010"].rejected is None
    assert rows["gw-0020"].applied_event is None and rows["gw-0020"].rejected is None


def test_an_api_token_is_resolved_in_one_statement(district: Flask) -> None:
    reg = central(district).registry
    reg.add_user("many-rooms", "many-rooms-password", "teacher",
                 rooms=[(f"s{i % 10:02d}", str(100 + i // 10)) for i in range(0, 40, 3)])
    reg.add_user("two-schools", "two-schools-password", "facility", schools=["s07", "s02"])
    expected = {
        "teach": {"role": "teacher", "rooms": ["101"], "gateways": ["gw-0011"], "schools": []},
        "many-rooms": {"role": "teacher", "rooms": [str(100 + i // 10) for i in range(0, 40, 3)],
                       "gateways": [f"gw-{i:04d}" for i in range(0, 40, 3)], "schools": []},
        "two-schools": {"role": "facility", "rooms": [], "gateways": [], "schools": ["s02", "s07"]},
        "boss": {"role": "admin", "rooms": [], "gateways": [], "schools": []},
    }
    for name, want in expected.items():
        token = reg.issue_token(name)
        with Counter(reg) as counted:
            principal = reg.principal_for_token(token)
        assert len(counted.all) == 1, (name, counted.all)
        assert principal is not None and principal["user"] == name
        assert {k: principal[k] for k in want} == want, name
        assert len(principal["room_ids"]) == len(want["rooms"])
        assert reg.principal(name) == principal  # a browser session's lookup gives the same
    with Counter(reg) as counted:
        assert reg.principal_for_token("no-such-token-at-all-anywhere") is None
    assert len(counted.all) == 1
    # A teacher's rights follow: the panel of one of the rooms opens, another room's is refused.
    bearer = {"Authorization": f"Bearer {reg.issue_token('many-rooms')}"}
    assert district.test_client().get("/panel/gw-0003", headers=bearer).status_code == 200
    assert district.test_client().get("/panel/gw-0004", headers=bearer).status_code == 403


def login(app: Flask) -> FlaskClient:
    """A browser logged in as the admin, its session holding its CSRF token already (pages render it)."""
    client = app.test_client()
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
    resp = client.post("/login", data={"csrf": token, "username": "boss", "password": "boss-password"})
    assert resp.status_code == 302
    client.get("/login")  # the new session's CSRF token, stored now rather than by the first page below
    return client


def test_a_get_writes_nothing_and_a_silent_gateway_is_offline(district: Flask) -> None:
    """gw-0001 said it was online, then nothing for an hour (its heartbeat is every 5 s): every page and list
    shows it offline, without any GET writing to the database (the stored flag is left as it was), and
    ingest's housekeeping (`mark_silent`) still stores it."""
    c = central(district)
    silent = "gw-0001"
    before = get(district, "/api/board?limit=1").get_json()["counts"]
    # The board's ranking is a snapshot at most CAMPUS_BOARD_CACHE_S old (central/lists.py): this test looks
    # at once, so it takes a snapshot per request.
    c.board_snapshots.ttl = 0
    with c.registry.db.write() as conn:  # an hour without a word, as if ingest had heard nothing since
        conn.execute(update(gw_t).where(gw_t.c.id == silent).values(last_seen=time.time() - 3600))
    browser = login(district)
    pages = ["/api/board?limit=20", "/api/board?school=s01&problem=offline", "/district", "/api/schools",
             "/health/", "/api/gateways?limit=20", "/api/devices?limit=20", f"/api/gateways?q={silent}",
             "/panel?limit=20", f"/panel/{silent}", "/provisioning/gateways?limit=20", "/api/metrics",
             "/api/alarms?state=active&limit=1", f"/health/rooms/{silent}"]
    with Counter(c.registry) as counted:
        answers = {path: browser.get(path) for path in pages}
        answers.update({f"bearer {path}": get(district, path) for path in pages if path.startswith("/api/")})
    for path, resp in answers.items():
        assert resp.status_code == 200, (path, resp.get_data(as_text=True)[:300])
    assert counted.writes == [], counted.writes

    [gw] = answers[f"/api/gateways?q={silent}"].get_json()
    assert gw["online"] is False
    board = answers["/api/board?school=s01&problem=offline"].get_json()
    assert silent in [r["gateway"] for r in board["rooms"]]
    assert next(r for r in board["rooms"] if r["gateway"] == silent)["online"] is False
    counts = answers["/api/board?limit=20"].get_json()["counts"]
    assert counts["offline"] == before["offline"] + 1 and counts["rooms"] == ROOMS
    s01 = next(s for s in answers["/api/schools"].get_json() if s["school"] == "s01")
    reporting = [i for i in range(1, ROOMS, 10) if i % 10 != 9]  # s01's rooms that report
    assert s01["offline"] == sum(1 for i in reporting if i % 7 == 0 or i == 1)
    assert s01["online"] == len(reporting) - s01["offline"]
    assert f'campus_gateway_online{{school="s01",gateway="{silent}",room="100"}} 0.0' in \
        answers["/api/metrics"].get_data(as_text=True).splitlines()
    assert c.ledger.rooms([silent])[silent]["online"] is False  # what the panel's stream sends
    # Nothing was stored by the reads: the flag is still the last state's word, until ingest's housekeeping.
    with c.registry.db.read() as conn:
        assert conn.execute(select(gw_t.c.online).where(gw_t.c.id == silent)).scalar_one() is True
    assert c.ledger.mark_silent() == [silent]
    with c.registry.db.read() as conn:
        assert conn.execute(select(gw_t.c.online).where(gw_t.c.id == silent)).scalar_one() is False
    assert get(district, "/api/board?limit=1").get_json()["counts"] == counts
