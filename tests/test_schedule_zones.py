"""A clock schedule's `at` is its school's wall clock, never the host's (central/schedules.py `zone_groups`).

A school without a timetable has the site's zone (`campus web --timezone`, Asia/Shanghai by default), one
with a timetable that timetable's. Central's scheduler (`Scheduler.tick`), the edge plan (`compile_runs`) and
the schedule pages all read it so, whatever zone the host keeps: the tests run with the process's TZ set to
zones far from the schools' (`host_tz`) and tick with times given, never the clock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask import Flask

from central import edge_schedules, schedules, timetables
from central.registry import ScheduleRun
from central.schedules import Scheduler
from dashboards import close_app
from tests.apps import ScheduleSite, add_people, central_db, register_rooms, two_rooms, web_app

SHANGHAI, URUMQI, TOKYO = ZoneInfo("Asia/Shanghai"), ZoneInfo("Asia/Urumqi"), ZoneInfo("Asia/Tokyo")
EVERY_DAY = "mon,tue,wed,thu,fri,sat,sun"
MONDAY_UTC = datetime(2025, 3, 10, tzinfo=UTC)  # a Monday in every zone from Urumqi to Tokyo at 09:00 UTC
URUMQI_TIMETABLE = {"timezone": "Asia/Urumqi",
                    "periods": [{"weekday": d, "number": 1, "start": "10:00", "end": "10:45"} for d in range(1, 6)]}


@pytest.fixture(params=["UTC", "America/New_York", "Asia/Shanghai"])
def host_tz(request: pytest.FixtureRequest) -> Iterator[str]:
    """The host's zone (TZ, re-read by time.tzset) for the test, given back after it."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    try:
        yield request.param
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


class Site(ScheduleSite):
    """School s1 (no timetable: the site's zone) with gw-s1, school s2 (a timetable in Asia/Urumqi) with
    gw-s2, each online with a projector."""

    def __init__(self, url: str) -> None:
        super().__init__(url, {"gw-s1": "s1", "gw-s2": "s2"}, {"s2": URUMQI_TIMETABLE},
                         {"name": "off", "at": "17:30", "days": "mon,tue,wed,thu,fri", "action": "power_off",
                          "kinds": "projector", "school_id": None, "building_id": None})


@pytest.fixture
def site(central_db_url: str) -> Iterator[Site]:
    s = Site(central_db_url)
    yield s
    s.close()


class Service:
    """A command service that answers every command done and keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, school: str, gateway: str, device: str, action: str, params: dict[str, Any],
             **_: Any) -> dict[str, Any]:
        self.sent.append((school, gateway))
        return {"id": f"c{len(self.sent)}", "status": "done", "detail": ""}


def utc(hh: int, mm: int, day: int = 0) -> datetime:
    return MONDAY_UTC + timedelta(days=day, hours=hh, minutes=mm)


def planned(site: Site, gateway: str, sid: int, days: int = 2, site_zone: ZoneInfo | None = None) -> list[datetime]:
    zone = {} if site_zone is None else {"site_zone": site_zone}
    runs = edge_schedules.compile_runs(site.registry, gateway, utc(0, 0).timestamp(), days=days, **zone)["runs"]
    return [datetime.fromtimestamp(r["at"], UTC) for r in runs if r["schedule"] == sid]


def test_1730_for_a_shanghai_school_runs_at_0930_utc_whatever_the_hosts_zone(site: Site, host_tz: str) -> None:
    """School s1 has no timetable: its 17:30 is 17:30 in the site's zone (Asia/Shanghai by default), 09:30 UTC,
    at the edge and in central, on a host kept in UTC, in New York or in Shanghai alike."""
    off = site.add(school_id="s1")
    assert planned(site, "gw-s1", off.id) == [utc(9, 30), utc(9, 30, 1)]
    service = Service()
    scheduler = Scheduler(site.registry, site.ledger, service, wait=0)
    assert scheduler.tick(utc(9, 29)) == [] and service.sent == []
    made = scheduler.tick(utc(9, 31))
    assert [(r["schedule_id"], r["planned"]) for r in made] == [(off.id, utc(9, 30).timestamp())]
    assert service.sent == [("s1", "gw-s1")]
    assert scheduler.tick(utc(9, 45)) == []  # claimed: once
    # The page's next run: 17:30 in Shanghai, whatever zone the page reads it in.
    zones = schedules.zones_of(site.registry, [off])
    nxt = schedules.next_run(off, utc(8, 0).astimezone(TOKYO), None, zones)
    assert nxt is not None and nxt.timestamp() == utc(9, 30).timestamp() and nxt.tzinfo == TOKYO


def test_the_site_zone_is_the_zone_of_a_school_without_a_timetable(site: Site) -> None:
    """`campus web --timezone Asia/Tokyo`: the scheduler (`site_zone`) and the plan read s1's 17:30 as Tokyo's,
    08:30 UTC; s2 keeps its timetable's zone."""
    off = site.add(school_id="s1")
    assert planned(site, "gw-s1", off.id, days=1, site_zone=TOKYO) == [utc(8, 30)]
    scheduler = Scheduler(site.registry, site.ledger, Service(), wait=0, site_zone=TOKYO)
    assert [r["schedule_id"] for r in scheduler.tick(utc(8, 31))] == [off.id]


def test_a_school_with_a_timetable_in_urumqi_runs_at_its_own_1730(site: Site, host_tz: str) -> None:
    off = site.add(school_id="s2")
    assert planned(site, "gw-s2", off.id, days=1) == [utc(11, 30)]
    service = Service()
    scheduler = Scheduler(site.registry, site.ledger, service, wait=0)
    assert scheduler.tick(utc(9, 31)) == [] and scheduler.tick(utc(11, 29)) == []
    assert [r["schedule_id"] for r in scheduler.tick(utc(11, 31))] == [off.id]
    assert service.sent == [("s2", "gw-s2")]


def test_one_schedule_for_every_school_runs_per_zone_and_the_edge_plan_agrees(site: Site, host_tz: str) -> None:
    """17:30 for every school: s1's devices at 09:30 UTC (Shanghai), s2's at 11:30 UTC (Urumqi), one run each,
    once each (two schedulers); each gateway's plan holds its run at the time central runs it for it."""
    off = site.add(days=EVERY_DAY)
    service = Service()
    first, second = (Scheduler(site.registry, site.ledger, service, wait=0),
                     Scheduler(site.registry, site.ledger, service, wait=0))
    central_runs: dict[str, float] = {}
    for scheduler, when in ((first, utc(9, 29)), (first, utc(9, 31)), (second, utc(9, 40)),
                            (second, utc(11, 29)), (second, utc(11, 31)), (first, utc(11, 50))):
        for run in scheduler.tick(when):
            assert run["schedule_id"] == off.id
            for result in run["results"]:
                assert result["gateway"] not in central_runs, "run twice"
                central_runs[result["gateway"]] = run["planned"]
            assert len({r["gateway"] for r in run["results"]}) == 1  # one zone's school, its gateway alone
    assert service.sent == [("s1", "gw-s1"), ("s2", "gw-s2")]
    assert central_runs == {"gw-s1": utc(9, 30).timestamp(), "gw-s2": utc(11, 30).timestamp()}
    with site.registry.session() as s:
        assert s.query(ScheduleRun).count() == 2
    for gateway, when in central_runs.items():
        assert planned(site, gateway, off.id, days=1)[0].timestamp() == when
    # The page's next run: the earliest over the schools' zones (s2's at 10:00 UTC; s1's next day at 12:00).
    zones = schedules.zones_of(site.registry, [off])
    assert schedules.next_run(off, utc(10, 0), None, zones).timestamp() == utc(11, 30).timestamp()
    assert schedules.next_run(off, utc(12, 0), None, zones).timestamp() == utc(9, 30, 1).timestamp()


def test_a_run_made_before_zones_is_not_run_again(site: Site) -> None:
    """A schedule for every school that central ran at 09:30 UTC before this change (its row's `last_run`,
    no zone claimed yet) is not run again in Shanghai's grace window; Urumqi's occurrence still runs."""
    off = site.add(days=EVERY_DAY, last_run=utc(9, 30).timestamp() + 2)
    service = Service()
    scheduler = Scheduler(site.registry, site.ledger, service, wait=0)
    assert scheduler.tick(utc(9, 40)) == [] and service.sent == []
    assert [r["schedule_id"] for r in scheduler.tick(utc(11, 31))] == [off.id] and service.sent == [("s2", "gw-s2")]


# ---------------------------------------------------------------- the pages and the API


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, central_db_url: str) -> Iterator[Flask]:
    """A site in Asia/Tokyo (`--timezone`): s1 (no timetable) and s2 (a timetable in Asia/Urumqi)."""
    app = web_app(central_db(tmp_path, two_rooms, central_db_url), monkeypatch, timezone="Asia/Tokyo")
    register_rooms(app, (("gw-101", "s1", "101", "A"), ("gw-u", "s2", "u1", "U")))
    app.tokens = add_people(app)  # type: ignore[attr-defined]
    from dashboards.context import central

    timetables.save(central(app).registry, timetables.from_document("s2", URUMQI_TIMETABLE))
    yield app
    close_app(app)


def test_the_api_and_the_page_give_the_next_run_at_the_schools_wall_clock(app: Flask, host_tz: str) -> None:
    client = app.test_client()
    auth = {"Authorization": f"Bearer {app.tokens['admin']}"}  # type: ignore[attr-defined]
    body = {"name": "off", "at": "17:30", "days": list(EVERY_DAY.split(",")), "action": "power_off",
            "kinds": ["projector"]}
    mine = client.post("/api/schedules", json={**body, "school_id": "s1"}, headers=auth).get_json()
    theirs = client.post("/api/schedules", json={**body, "name": "晚关", "school_id": "s2"}, headers=auth).get_json()
    assert datetime.fromtimestamp(mine["next_run"], TOKYO).strftime("%H:%M") == "17:30"  # the site's zone
    assert datetime.fromtimestamp(theirs["next_run"], URUMQI).strftime("%H:%M") == "17:30"  # its timetable's
    got = client.get(f"/api/schedules/{theirs['id']}", headers=auth).get_json()
    assert got["next_run"] == theirs["next_run"]
    # The list page mixes schools: in the site's zone, Urumqi's 17:30 is 20:30.
    page = client.get("/health/schedules?lang=en", headers=auth).get_data(as_text=True)
    row = page[page.index("晚关"):][:600]
    assert " 20:30" in row, row
