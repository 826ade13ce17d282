"""The city above the districts (central/city.py, central/city_push.py, dashboards/city.py).

In-process (Flask's test client on a real city database): a push is kept and shown, the newest seq per
district wins and a replay changes nothing, a wrong token and another district's name are refused, and
every hostile body is one 400 naming its field with nothing changed. Then, marked slow, two districts
and a city as real `campus web` processes on one machine: the city shows both districts' schools with
the figures each district's own `/api/schools` gives, a district pushes again after the city restarts,
and nothing is lost.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from campus.contract import State
from campus.errors import ConfigError
from campus.net import free_port
from central import city
from central.city_push import CityLink
from central.ledger import Ledger
from central.registry import Registry
from dashboards import close_app
from dashboards.context import central
from tests.apps import add_people, central_db, web_app
from tests.servers import CampusProcess, wait_until


def school(sid: str, **figures: Any) -> dict[str, Any]:
    row = {"school": sid, "name": f"第{sid}中学", "rooms": 4, "gateways": 4, "online": 3, "offline": 1, "alarms": 2,
           "alarms_active": 1, "alarms_by_kind": {"co2_above": 2}, "faults": 1, "lamps_due": 0, "filters_due": 1,
           "usage_periods": 40, "usage_used": 30}
    return {**row, **figures}


def body(district: str = "north", seq: int = 1, schools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"district": district, "seq": seq, "generated_at": time.time(),
            "schools": [school("n1"), school("n2", online=4, offline=0)] if schools is None else schools}


@pytest.fixture
def city_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    app = web_app(central_db(tmp_path, lambda _ledger, _points: None), monkeypatch, city=True)
    app.tokens = add_people(app, {"facility": ("fm", "fm-password", [])})  # type: ignore[attr-defined]
    app.districts = {d: city.add_district(central(app).db, d) for d in ("north", "south")}  # type: ignore[attr-defined]
    try:
        yield app
    finally:
        close_app(app)


def push(app: Flask, payload: object, district: str = "north", token: str | None = None) -> Any:
    token = token if token is not None else app.districts[district]  # type: ignore[attr-defined]
    return app.test_client().post("/api/city/rollups", json=payload, headers={"Authorization": f"Bearer {token}"})


def read(app: Flask, path: str) -> Any:
    resp = app.test_client().get(path, headers={"Authorization": f"Bearer {app.tokens['facility']}"})  # type: ignore[attr-defined]
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp


def held(app: Flask) -> dict[str, Any]:
    """Everything the city holds: each district's seq and schools."""
    return {d["district"]: (d["seq"], read(app, f"/api/districts/{d['district']}/schools").get_json())
            for d in read(app, "/api/districts").get_json()}


def test_a_push_is_kept_shown_and_totalled(city_app: Flask) -> None:
    resp = push(city_app, body())
    assert resp.status_code == 200 and resp.get_json() == {"stored": True, "seq": 1}
    listed = read(city_app, "/api/districts")
    assert listed.headers["X-Total-Count"] == "2"
    north, south = listed.get_json()
    assert (north["district"], north["schools"], north["rooms"], north["online"], north["offline"]) == ("north", 2, 8, 7, 1)
    assert (north["alarms"], north["usage_periods"], north["usage_used"], north["usage_rate"]) == (4, 80, 60, 0.75)
    assert (south["schools"], south["seq"], south["generated_at"]) == (0, 0, None)  # admitted, nothing yet
    schools = read(city_app, "/api/districts/north/schools?q=n2").get_json()
    assert [(s["school"], s["name"], s["online"], s["usage_rate"]) for s in schools] == [("n2", "第n2中学", 4, 0.75)]
    page = read(city_app, "/city").get_data(as_text=True)
    assert 'data-district="north"' in page and 'data-district="south"' in page and "75%" in page
    assert "第n1中学" in read(city_app, "/city/north").get_data(as_text=True)
    home = city_app.test_client().get("/", headers={"Authorization": f"Bearer {city_app.tokens['facility']}"})  # type: ignore[attr-defined]
    assert home.status_code == 302 and home.headers["Location"].endswith("/city")
    assert city_app.test_client().get("/api/districts/nowhere/schools", headers={
        "Authorization": f"Bearer {city_app.tokens['facility']}"}).status_code == 404  # type: ignore[attr-defined]


def test_the_newest_seq_per_district_wins_and_a_replay_changes_nothing(city_app: Flask) -> None:
    assert push(city_app, body(seq=5)).get_json() == {"stored": True, "seq": 5}
    # A school the district no longer has leaves the city with the next push.
    assert push(city_app, body(seq=6, schools=[school("n1", faults=3)])).get_json() == {"stored": True, "seq": 6}
    before = held(city_app)
    assert [s["faults"] for s in before["north"][1]] == [3]
    assert push(city_app, body(seq=6, schools=[school("n1", faults=9)])).get_json() == {"stored": False, "seq": 6}
    older = push(city_app, body(seq=4, schools=[school("n9")]))
    assert older.status_code == 409 and older.get_json()["seq"] == 6 and older.get_json()["field"] == "seq"
    assert held(city_app) == before


def test_a_wrong_token_and_another_districts_rows_are_refused(city_app: Flask) -> None:
    push(city_app, body("south", schools=[school("s1")]), district="south")
    before = held(city_app)
    for token in ("not-a-district-token-at-all-0000", ""):
        resp = push(city_app, body("south", seq=2, schools=[]), token=token)
        assert resp.status_code == 401, resp.get_json()
    # A person's API token is not a district's either.
    assert push(city_app, body(seq=2), token=city_app.tokens["facility"]).status_code == 401  # type: ignore[attr-defined]
    # North's token writing south's rows.
    resp = push(city_app, body("south", seq=2, schools=[]), district="north")
    assert resp.status_code == 403 and resp.get_json()["field"] == "district"
    assert held(city_app) == before


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change of the valid body at `path` (dots; [i] for an item)."""
    def change(b: dict[str, Any]) -> None:
        keys = path.replace("[", ".").replace("]", "").split(".")
        obj: Any = b
        for k in keys[:-1]:
            obj = obj[int(k)] if k.isdigit() else obj[k]
        last: Any = int(keys[-1]) if keys[-1].isdigit() else keys[-1]
        if value is KeyError:
            del obj[last]
        else:
            obj[last] = value
    return change


HOSTILE = [
    (_set("district", "../../etc"), "district"), (_set("district", 7), "district"),
    (_set("seq", 0), "seq"), (_set("seq", "2"), "seq"), (_set("seq", True), "seq"), (_set("seq", 2**62 + 1), "seq"),
    (_set("seq", 2.5), "seq"),
    (_set("generated_at", "now"), "generated_at"), (_set("generated_at", 1e300), "generated_at"),
    (_set("generated_at", 0), "generated_at"), (_set("generated_at", time.time() + 3600), "generated_at"),
    (_set("schools", {"n1": {}}), "schools"), (_set("schools", [school(f"x{i}") for i in range(city.MAX_SCHOOLS + 1)]),
                                                "schools"),
    (_set("schools[0]", "n1"), "schools[0]"),
    (_set("schools[0].school", "n1\nuser x"), "schools[0].school"), (_set("schools[0].school", ""), "schools[0].school"),
    (_set("schools[0].name", "A\u202eB"), "schools[0].name"), (_set("schools[0].name", "校" * 201), "schools[0].name"),
    (_set("schools[0].name", None), "schools[0].name"),
    (_set("schools[0].online", -1), "schools[0].online"), (_set("schools[0].online", 1.5), "schools[0].online"),
    (_set("schools[0].online", "3"), "schools[0].online"), (_set("schools[0].online", 99), "schools[0].online"),
    (_set("schools[0].rooms", city.MAX_COUNT + 1), "schools[0].rooms"),
    (_set("schools[0].alarms_active", 3), "schools[0].alarms_active"),
    (_set("schools[0].alarms_by_kind", {"co2 above": 1}), "schools[0].alarms_by_kind"),
    (_set("schools[0].alarms_by_kind", {"co2_above": 5}), "schools[0].alarms_by_kind"),
    (_set("schools[0].alarms_by_kind", [1]), "schools[0].alarms_by_kind"),
    (_set("schools[0].usage_used", None), "schools[0].usage_used"),
    (_set("schools[0].usage_used", 41), "schools[0].usage_used"),
    (_set("schools[1].school", "n1"), "schools[1].school"),
    (_set("schools[0].faults", KeyError), "schools[0].faults"),
    # Raw personal data has no field to travel in: refused, not dropped.
    (_set("schools[0].cards", [{"card": "ab12", "person": "张三"}]), "schools[0].cards"),
    (_set("users", ["fm"]), "users"),
]


def test_every_hostile_body_is_one_400_naming_the_field_and_changes_nothing(city_app: Flask) -> None:
    push(city_app, body(seq=1))
    before = held(city_app)
    for change, field in HOSTILE:  # one city for all of them: each must leave it as it was
        bad = copy.deepcopy(body(seq=2))
        change(bad)
        resp = push(city_app, bad)
        assert resp.status_code == 400, (field, resp.get_data(as_text=True))
        assert resp.get_json()["field"] == field and resp.get_json()["error"].startswith(field), resp.get_json()
    assert held(city_app) == before
    assert push(city_app, body(seq=2)).get_json() == {"stored": True, "seq": 2}  # the valid body, for contrast


def test_not_json_is_a_400_and_a_body_too_large_a_413(city_app: Flask) -> None:
    token = city_app.districts["north"]  # type: ignore[attr-defined]
    client = city_app.test_client()
    for data in (b"[1]", b'{"district": NaN}', b"{"):
        resp = client.post("/api/city/rollups", data=data, content_type="application/json",
                           headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 400, (data, resp.get_data(as_text=True))
    resp = client.post("/api/city/rollups", data=b" " * (3 * 1024 * 1024), content_type="application/json",
                       headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 413


def test_a_district_link_needs_all_three_and_checks_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CAMPUS_CITY_URL", "CAMPUS_CITY_TOKEN", "CAMPUS_DISTRICT"):
        monkeypatch.delenv(var, raising=False)
    assert CityLink.from_options(None, None, None) is None
    with pytest.raises(ConfigError, match="--city-token missing"):
        CityLink.from_options("http://127.0.0.1:1/", None, "north")
    with pytest.raises(ConfigError, match="--city-url"):
        CityLink.from_options("ftp://city/", "t" * 32, "north")
    with pytest.raises(ConfigError, match="--district"):
        CityLink.from_options("http://city/", "t" * 32, "north\nx")
    monkeypatch.setenv("CAMPUS_CITY_TOKEN", "t" * 32)
    link = CityLink.from_options("https://city:8443/campus/", None, "north")
    assert link is not None and link.endpoint == "https://city:8443/campus/api/city/rollups"


def test_one_pusher_of_a_district_sends_and_another_takes_over_counting_on(city_app: Flask, tmp_path: Path) -> None:
    """Two pushers on one district database (two web workers): the one holding the `city-push` lease
    sends; when it stops, the other takes over and its seq numbers go on from the district's count."""
    from central.city_push import CityPusher
    from central.store.sqlite import SqlitePointStore
    from dashboards.server import serve

    server = serve(city_app, "127.0.0.1", 0)
    db_url = f"sqlite:///{tmp_path / 'district.db'}"
    fill_district(db_url, [("gw-n1a", "n1", True)])
    link = CityLink(f"http://127.0.0.1:{server.port}/", city_app.districts["north"], "north")  # type: ignore[attr-defined]
    parts = [(Registry(db_url), SqlitePointStore(str(tmp_path / "points.db"))) for _ in range(2)]
    pushers = [CityPusher(link, reg, None, store, interval=0.05, usage_interval=0) for reg, store in parts]

    def city_seq() -> int:
        return next(d["seq"] for d in read(city_app, "/api/districts").get_json() if d["district"] == "north")
    try:
        for p in pushers:
            p.start()
        wait_until(lambda: city_seq() >= 5, 20, message="five pushes")
        assert sorted(p.pushes > 0 for p in pushers) == [False, True]  # one sends, the other waits
        holder, other = sorted(pushers, key=lambda p: p.pushes, reverse=True)
        holder.stop()
        seq = city_seq()
        wait_until(lambda: other.pushes >= 2, 20, message="the other pusher taking over")
        assert city_seq() > seq
        assert [s["school"] for s in read(city_app, "/api/districts/north/schools").get_json()] == ["n1"]
    finally:
        for p in pushers:
            p.stop()
        for reg, store in parts:
            reg.close()
            store.close()
        server.shutdown()


# ---------------------------------------------------------------- two districts and a city, real processes


ADMIN = "city-test-admin-token-0123456789abcdef"


def http(port: int, path: str, token: str = ADMIN, data: object = None) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if data is not None else "GET",
                                 data=json.dumps(data).encode() if data is not None else None,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def fill_district(db_url: str, gateways: list[tuple[str, str, bool | None]]) -> None:
    """Gateways (id, school, online: True / False / None for never heard of) registered and reported."""
    registry, ledger = Registry(db_url), Ledger(db_url)
    try:
        for gw, school_id, online in gateways:
            registry.register_gateway(gw, school_id, f"R-{gw}")
            if online is not None:
                # A long reporting interval: an online gateway must not go stale (offline) while a loaded
                # machine runs the rest of the test (it did, at interval=5, under a full CI beside helpers).
                ledger.record([], [(school_id, gw, State(online=online, ts=time.time(), room=f"R-{gw}", devices={},
                                                         interval=600))], [])
    finally:
        registry.close()
        ledger.close()


def campus_web(home: Path, port: int, *extra: str) -> CampusProcess:
    home.mkdir(exist_ok=True)
    return CampusProcess(["web", "--store", f"sqlite:///{home / 'campus.db'}", "--http-port", str(port),
                          "--admin-token", ADMIN, *extra], home / "web.log", cwd=home)


def city_schools(port: int, district: str) -> list[dict[str, Any]]:
    status, rows = http(port, f"/api/districts/{district}/schools")
    return rows if status == 200 else []


@pytest.mark.slow
def test_two_districts_feed_a_city_which_restarts_without_losing_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPUS_CITY_INTERVAL", "0.3")
    monkeypatch.setenv("CAMPUS_ALARM_INTERVAL", "0")  # the figures hold still while they are compared
    monkeypatch.setenv("CAMPUS_SCHEDULE_INTERVAL", "0")
    city_db = f"sqlite:///{tmp_path / 'city' / 'campus.db'}"
    (tmp_path / "city").mkdir()
    tokens = {}
    for name in ("north", "south"):
        out = subprocess.run([sys.executable, "-m", "programs.cli", "city", "add-district", name, "--db", city_db],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert out.returncode == 0, out.stderr
        tokens[name] = out.stdout.strip()
    homes = {name: tmp_path / name for name in ("north", "south")}
    for home in homes.values():
        home.mkdir()
    fill_district(f"sqlite:///{homes['north'] / 'campus.db'}",
                  [("gw-n1a", "n1", True), ("gw-n1b", "n1", False), ("gw-n2a", "n2", None)])
    fill_district(f"sqlite:///{homes['south'] / 'campus.db'}", [("gw-s1a", "s1", True), ("gw-s1b", "s1", True)])
    ports = {name: free_port() for name in ("city", "north", "south")}
    city_web = campus_web(tmp_path / "city", ports["city"], "--city")
    districts = {name: campus_web(homes[name], ports[name], "--city-url", f"http://127.0.0.1:{ports['city']}/",
                                  "--district", name, "--city-token", tokens[name]) for name in ("north", "south")}
    procs = [city_web, *districts.values()]
    try:
        for proc in procs:
            proc.start()
        for proc, port in zip(procs, (ports["city"], ports["north"], ports["south"]), strict=True):
            proc.wait_listening(port)

        # What each district's own district view says is what the city shows for it.
        for name in ("north", "south"):
            status, own = http(ports[name], "/api/schools")
            assert status == 200
            # The usage and CO2 figures too (none measured here: the rooms have no devices).
            want = [{**{k: v for k, v in row.items() if k != "alarms_acknowledged"}, "district": name} for row in own]
            assert {(r["usage_periods"], r["usage_rate"], r["co2_over_s"], r["co2_hours"]) for r in own} == {
                (None, None, None, None)}
            wait_until(lambda n=name, w=want: city_schools(ports["city"], n) == w, 30,
                       message=f"the city showing {name}'s schools as {name} does")
        north = city_schools(ports["city"], "north")
        assert [(s["school"], s["gateways"], s["online"], s["offline"]) for s in north] == [("n1", 2, 1, 1),
                                                                                          ("n2", 1, 0, 0)]
        status, listed = http(ports["city"], "/api/districts")
        assert status == 200 and [(d["district"], d["schools"], d["gateways"], d["online"]) for d in listed] == [
            ("north", 2, 3, 1), ("south", 1, 2, 2)]

        # A wrong token and another district's name, against the real city.
        assert http(ports["city"], "/api/city/rollups", "wrong-token-wrong-token-wrong", body("north", 10**9))[0] == 401
        status, answer = http(ports["city"], "/api/city/rollups", tokens["south"], body("north", 10**9))
        assert status == 403 and answer["field"] == "district"

        # The city stops; south gains a school meanwhile and keeps trying; the city comes back on its database.
        south_log = len(districts["south"].output())  # what it logs from here on
        assert city_web.stop() is not None
        fill_district(f"sqlite:///{homes['south'] / 'campus.db'}", [("gw-s2a", "s2", True)])
        wait_until(lambda: "attempt 2, next in" in districts["south"].output()[south_log:], 30,
                   message="south retrying while the city is down")
        city_web = campus_web(tmp_path / "city", ports["city"], "--city")
        procs[0] = city_web
        city_web.start()
        city_web.wait_listening(ports["city"])
        wait_until(lambda: [s["school"] for s in city_schools(ports["city"], "south")] == ["s1", "s2"], 30,
                   message="south's new school at the restarted city")
        assert [s["school"] for s in city_schools(ports["city"], "north")] == ["n1", "n2"]  # nothing lost
        assert "reached again after" in districts["south"].output()[south_log:]
        for proc in districts.values():
            assert "Traceback" not in proc.output(), proc.output()[-3000:]
    finally:
        for proc in procs:
            proc.stop()


def test_the_co2_over_limit_time_crosses_and_an_older_district_without_it_is_taken(city_app: Flask) -> None:
    """`co2_over_s` (migration 0006) is kept and shown; a district of the release before sends none (null);
    more than a week in each room is a contradiction, refused naming the field."""
    older = {k: v for k, v in school("n2").items() if k != "co2_over_s"}
    assert push(city_app, body(schools=[school("n1", co2_over_s=7200), older])).status_code == 200
    schools = {s["school"]: s for s in read(city_app, "/api/districts/north/schools").get_json()}
    assert (schools["n1"]["co2_over_s"], schools["n1"]["co2_hours"]) == (7200, 2.0)
    assert (schools["n2"]["co2_over_s"], schools["n2"]["co2_hours"]) == (None, None)
    north = read(city_app, "/api/districts?q=north").get_json()[0]
    assert (north["co2_over_s"], north["co2_hours"]) == (7200, 2.0)
    page = read(city_app, "/city/north").get_data(as_text=True)
    assert '<td class="num co2-hours">2.0 h</td>' in page and '<td class="num usage-rate">75%</td>' in page
    resp = push(city_app, body(seq=2, schools=[school("n1", co2_over_s=4 * 7 * 86400 + 1)]))
    assert resp.status_code == 400 and resp.get_json()["field"] == "schools[0].co2_over_s"
    assert read(city_app, "/api/districts/north/schools?q=n1").get_json()[0]["co2_over_s"] == 7200  # unchanged


def test_the_push_counts_the_week_of_the_sites_today_not_the_hosts(tmp_path: Path) -> None:
    """The week whose usage a push carries is that of the site's today, as the district's own pages count it:
    at 18:00 UTC on Sunday 14 September 2025 it is Monday 15 September in Shanghai (a new week) and still
    Sunday 11:00 in Los Angeles. It took the host's date (Sunday on a host kept in UTC): the last week."""
    from datetime import date, datetime
    from zoneinfo import ZoneInfo

    from central.city_push import rollup
    from central.usage import UsageDay

    db_url = f"sqlite:///{tmp_path / 'district.db'}"
    fill_district(db_url, [("gw-n1a", "n1", True)])
    registry = Registry(db_url)
    try:
        with registry.db.write() as conn:
            conn.execute(UsageDay.__table__.insert(), [
                {"gateway": "gw-n1a", "day": day, "school": "n1", "periods": periods, "used": used,
                 "power_devices": 1, "co2_over_s": 0.0, "co2_devices": 1, "co2_limit": 1500.0, "complete": True,
                 "counted_to": 0.0, "computed_at": 0.0, "energy_kwh": 0.0, "energy_off_kwh": 0.0, "meter_devices": 0}
                for day, periods, used in ((date(2025, 9, 12), 8, 2), (date(2025, 9, 15), 6, 6))])
        now = datetime(2025, 9, 14, 18, 0, tzinfo=ZoneInfo("UTC")).timestamp()

        def usage(**kw: Any) -> tuple[int, int]:
            [n1] = rollup(registry.db, "north", 1, now, **kw)["schools"]
            return n1["usage_periods"], n1["usage_used"]

        assert usage() == (6, 6)  # the site in Shanghai (the default): Monday's new week
        assert usage(site_zone=ZoneInfo("Asia/Shanghai")) == (6, 6)
        assert usage(site_zone=ZoneInfo("America/Los_Angeles")) == (8, 2)  # still the week of Friday the 12th
    finally:
        registry.close()
