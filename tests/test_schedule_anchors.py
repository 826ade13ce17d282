"""Schedules anchored to the last period ("off 15 minutes after the last period"), and the panel's "why".

Two schools with different days, checked by hand: s1 (Asia/Shanghai) ends Monday to Thursday at 17:20 and
Friday at 15:40, with Wednesday 2025-03-12 a holiday; s2 (Asia/Urumqi, UTC+6) has evening study until 21:30
Monday to Thursday and no periods on Friday. One schedule for every school, 15 minutes after the last
period, so s1's rooms switch off at 17:35 (15:55 on Friday), s2's at 21:45 Urumqi time (23:45 in
Shanghai), on no holiday and no day without periods. Central's own scheduler runs each school's occurrence
once, on that school's rooms only. Each test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask import Flask

from campus import contract
from central import edge_schedules, schedules, timetables
from central.ledger import Sequenced
from central.registry import ScheduleRun
from central.schedules import LAST_PERIOD, ScheduleError, Scheduler
from dashboards import close_app
from dashboards.context import central, web
from tests.apps import ScheduleSite, add_people, central_db, register_rooms, two_rooms, web_app
from tests.test_request_cost import login

SHANGHAI, URUMQI = ZoneInfo("Asia/Shanghai"), ZoneInfo("Asia/Urumqi")
EVERY_DAY = "mon,tue,wed,thu,fri,sat,sun"


def periods(weekdays: range, *spans: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"weekday": d, "number": n, "start": a, "end": b} for d in weekdays for n, (a, b) in enumerate(spans, 1)]


S1 = {"timezone": "Asia/Shanghai",
      "periods": periods(range(1, 5), ("08:00", "08:45"), ("16:35", "17:20"))
      + periods(range(5, 6), ("08:00", "08:45"), ("14:55", "15:40")),
      "holidays": [{"name": "sports day", "start": "2025-03-12"}]}
S2 = {"timezone": "Asia/Urumqi", "periods": periods(range(1, 5), ("08:00", "08:45"), ("20:45", "21:30"))}


class Site(ScheduleSite):
    """s1's gw-a and s2's gw-b, each online with a projector, and their timetables."""

    def __init__(self, url: str) -> None:
        super().__init__(url, {"gw-a": "s1", "gw-b": "s2"}, {"s1": S1, "s2": S2},
                         {"name": "放学关机", "at": "", "days": "mon,tue,wed,thu,fri", "action": "power_off",
                          "kinds": "projector", "school_id": None, "building_id": None, "anchor": LAST_PERIOD,
                          "offset_min": 15})


@pytest.fixture
def site(central_db_url: str) -> Iterator[Site]:
    s = Site(central_db_url)
    yield s
    s.close()


def local(ts: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, zone).strftime("%a %d %H:%M")


def test_each_gateway_plans_its_own_schools_last_period_plus_the_offset(site: Site) -> None:
    """The week as checked by hand: no run on s1's holiday, none on s2's Friday without periods, s2's in its
    own zone; a fixed-time schedule beside it is planned as before."""
    off = site.add()
    fixed = site.add(name="22:00", at="22:00", anchor=None, offset_min=0, days=EVERY_DAY)
    monday = datetime(2025, 3, 10, 0, 30, tzinfo=SHANGHAI).timestamp()
    plan = {gw: edge_schedules.compile_runs(site.registry, gw, monday, days=7)["runs"] for gw in ("gw-a", "gw-b")}
    anchored = {gw: [local(r["at"], zone) for r in runs if r["schedule"] == off.id]
                for (gw, runs), zone in zip(plan.items(), (SHANGHAI, URUMQI), strict=True)}
    assert anchored["gw-a"] == ["Mon 10 17:35", "Tue 11 17:35", "Thu 13 17:35", "Fri 14 15:55"]
    assert anchored["gw-b"] == ["Mon 10 21:45", "Tue 11 21:45", "Wed 12 21:45", "Thu 13 21:45"]
    assert [local(r["at"], SHANGHAI) for r in plan["gw-b"] if r["schedule"] == off.id][0] == "Mon 10 23:45"
    first = next(r for r in plan["gw-a"] if r["schedule"] == off.id)
    assert first["steps"] == [{"device": "proj", "action": "power_off"}] and first["name"] == "放学关机"
    assert len([r for r in plan["gw-a"] if r["schedule"] == fixed.id]) == 7

    # The page's next run: the earliest over the schools; none for a school without a timetable.
    tts = timetables.load_all(site.registry)
    nxt = schedules.next_run(off, datetime.fromtimestamp(monday, SHANGHAI), tts)
    assert nxt is not None and local(nxt.timestamp(), SHANGHAI) == "Mon 10 17:35"
    assert schedules.next_run(off, datetime.fromtimestamp(monday, SHANGHAI), {}) is None
    only_s2 = site.add(school_id="s2", offset_min=0)
    nxt = schedules.next_run(only_s2, datetime.fromtimestamp(monday, SHANGHAI), tts)
    assert nxt is not None and local(nxt.timestamp(), URUMQI) == "Mon 10 21:30"


def test_a_school_without_a_timetable_or_periods_gets_no_anchored_run(site: Site) -> None:
    site.registry.register_gateway("gw-c", "s3", "101", "A")
    site.registry.add_device("gw-c", "proj", "projector-pjlink", {"host": "127.0.0.1", "port": 4352})
    off = site.add()
    monday = datetime(2025, 3, 10, 0, 30, tzinfo=SHANGHAI).timestamp()
    assert [r for r in edge_schedules.compile_runs(site.registry, "gw-c", monday)["runs"]
            if r["schedule"] == off.id] == []
    # A weekend: no periods, no run, even on a schedule listing every day.
    every = site.add(days=EVERY_DAY)
    saturday = datetime(2025, 3, 15, tzinfo=SHANGHAI).date()
    assert schedules.anchored_time(every, timetables.load(site.registry, "s1"), saturday) is None


class Sent:
    """Where central's scheduler sends commands (the devices' answers are not the point here)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def send(self, school: str, gateway: str, device: str, action: str, params: dict[str, Any],
             **_: Any) -> dict[str, Any]:
        self.sent.append((school, gateway, action))
        return {"id": f"c{len(self.sent)}", "status": "done", "detail": ""}


def test_centrals_scheduler_runs_each_schools_occurrence_once_on_its_rooms(site: Site) -> None:
    off = site.add()
    service = Sent()
    first, second = (Scheduler(site.registry, site.ledger, service, wait=0),
                     Scheduler(site.registry, site.ledger, service, wait=0))

    def tick(scheduler: Scheduler, hhmm: str, day: int = 10) -> list[str]:
        when = datetime(2025, 3, day, int(hhmm[:2]), int(hhmm[3:]), tzinfo=SHANGHAI)
        return [r["school"] for r in scheduler.tick(when) if r["schedule_id"] == off.id]

    assert tick(first, "17:34") == []
    assert tick(first, "17:36") == ["s1"] and service.sent == [("s1", "gw-a", "power_off")]
    # Claimed per school in the database: neither this scheduler nor another (a second web process) runs it
    # again, and s2's own time has not come.
    assert tick(first, "17:40") == [] and tick(second, "17:50") == []
    assert tick(second, "23:44") == []
    assert tick(second, "23:46") == ["s2"] and service.sent[-1] == ("s2", "gw-b", "power_off")
    assert tick(first, "23:50") == [] and tick(second, "23:59") == []
    assert len(service.sent) == 2
    # The next day each school again, once; Wednesday is s1's holiday: s2 only.
    assert tick(second, "17:36", 11) == ["s1"] and tick(first, "23:46", 11) == ["s2"]
    assert tick(first, "17:36", 12) == [] and tick(first, "23:46", 12) == ["s2"]
    with site.registry.session() as s:
        runs = list(s.query(ScheduleRun).where(ScheduleRun.schedule_id == off.id).order_by(ScheduleRun.id))
    assert [[r["gateway"] for r in run.results] for run in runs] == [["gw-a"], ["gw-b"], ["gw-a"], ["gw-b"], ["gw-b"]]
    # Past the grace window (server down from 17:30 to 18:10): the run is missed, not made at 18:10.
    assert tick(first, "18:10", 13) == []


@pytest.mark.parametrize("change, field", [
    ({"offset_min": 241}, "offset_min"), ({"offset_min": -5}, "offset_min"), ({"offset_min": "15 min"}, "offset_min"),
    ({"offset_min": 1.5}, "offset_min"), ({"offset_min": True}, "offset_min"), ({"anchor": "sunset"}, "anchor"),
    ({"anchor": "", "at": ""}, "at"), ({"at": "25:00"}, "at"),
])
def test_validate_refuses_a_bad_anchor_or_offset_naming_the_field(site: Site, change: dict[str, Any],
                                                                   field: str) -> None:
    form = {"name": "off", "anchor": LAST_PERIOD, "offset_min": "15", "days": "mon", "action": "power_off",
            "kinds": "projector", **change}
    with pytest.raises(ScheduleError) as exc:
        schedules.validate(form, site.registry)
    assert exc.value.field == field


def test_validate_takes_an_anchored_schedule_without_a_time(site: Site) -> None:
    form = {"name": "off", "anchor": LAST_PERIOD, "offset_min": "240", "days": "mon", "action": "power_off",
            "kinds": "projector"}
    fields = schedules.validate(form, site.registry)
    assert (fields["anchor"], fields["offset_min"], fields["at"]) == (LAST_PERIOD, 240, "")
    # A fixed-time schedule ignores the offset (0), as before.
    fields = schedules.validate({**form, "anchor": "", "at": "22:00", "offset_min": "30"}, site.registry)
    assert (fields["anchor"], fields["offset_min"], fields["at"]) == (None, 0, "22:00")


# ---------------------------------------------------------------- the web: form, API, panel


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, central_db_url: str) -> Iterator[Flask]:
    app = web_app(central_db(tmp_path, two_rooms, central_db_url), monkeypatch)
    register_rooms(app)
    app.tokens = add_people(app)  # type: ignore[attr-defined]
    timetables.save(central(app).registry, timetables.from_document("s1", S1))
    yield app
    close_app(app)


def call(app: Flask, method: str, path: str, role: str = "admin", **kw: Any) -> Any:
    return app.test_client().open(path, method=method,
                                  headers={"Authorization": f"Bearer {app.tokens[role]}"}, **kw)  # type: ignore[attr-defined]


def test_the_api_creates_reads_and_changes_an_anchored_schedule_and_refuses_a_bad_one(app: Flask) -> None:
    body = {"name": "放学关机", "anchor": "last_period", "offset_min": 15, "days": ["mon", "fri"],
            "action": "power_off", "kinds": ["projector"], "school_id": "s1"}
    bad = call(app, "POST", "/api/schedules?lang=zh-CN", json={**body, "offset_min": 500})
    assert bad.status_code == 400 and bad.get_json()["field"] == "offset_min"
    assert "最后一节课后的分钟数" in bad.get_json()["error"]
    assert call(app, "POST", "/api/schedules", json={**body, "colour": "red"}).get_json()["field"] == "colour"
    assert call(app, "GET", "/api/schedules").headers["X-Total-Count"] == "0"  # nothing was stored
    made = call(app, "POST", "/api/schedules", json=body)
    assert made.status_code == 201, made.get_json()
    one = made.get_json()
    assert (one["anchor"], one["offset_min"], one["days"], one["when"]) == \
        ("last_period", 15, "mon,fri", "15 min after the last period")
    assert one["next_run"] is not None
    assert datetime.fromtimestamp(one["next_run"], SHANGHAI).strftime("%H:%M") in ("17:35", "15:55")
    put = call(app, "PUT", f"/api/schedules/{one['id']}?lang=zh-CN", json={"offset_min": 30})
    assert put.status_code == 200 and put.get_json()["offset_min"] == 30
    assert put.get_json()["when"] == "最后一节课后 30 分钟" and put.get_json()["name"] == "放学关机"
    assert call(app, "PUT", f"/api/schedules/{one['id']}", json={"offset_min": "x"}).status_code == 400
    assert call(app, "GET", f"/api/schedules/{one['id']}").get_json()["offset_min"] == 30
    listed = call(app, "GET", "/api/schedules?limit=1")
    assert listed.headers["X-Total-Count"] == "1" and [s["id"] for s in listed.get_json()] == [one["id"]]
    assert call(app, "GET", "/api/schedules", role="teacher").status_code == 403
    assert call(app, "GET", "/api/schedules?limit=0").get_json()["field"] == "limit"
    assert "/api/schedules/{sid}" in call(app, "GET", "/api/openapi.json").get_json()["paths"]


def test_the_schedule_form_takes_the_anchor_and_names_a_bad_offset(app: Flask) -> None:
    client = login(app)
    page = client.get("/health/schedules?lang=zh-CN").get_data(as_text=True)
    assert "最后一节课后" in page and 'name="offset_min"' in page
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    form = {"csrf": csrf, "name": "放学关机", "anchor": "last_period", "offset_min": "999", "days": ["mon"],
            "action": "power_off", "kinds": ["projector"], "school_id": "s1", "enabled": "on"}
    refused = client.post("/health/schedules?lang=zh-CN", data=form)
    assert refused.status_code == 400 and "最后一节课后的分钟数须为 0 到 240 之间的整数" in refused.get_data(as_text=True)
    assert client.post("/health/schedules", data={**form, "offset_min": "15"}).status_code == 302
    listing = client.get("/health/schedules?lang=en").get_data(as_text=True)
    assert "15 min after the last period" in listing
    [sid] = [s["id"] for s in call(app, "GET", "/api/schedules").get_json()]
    one = client.get(f"/health/schedules/{sid}?lang=zh-CN").get_data(as_text=True)
    assert "最后一节课后 15 分钟" in one, one[one.find("hhead"):][:600]
    assert '<option value="last_period" selected>' in one


def _events(app: Flask, gateway: str, events: list[tuple[str, str, dict[str, Any], float]]) -> None:
    central(app).ledger.record([Sequenced("s1", gateway, device, 100 + k, ts, event=(kind, data))
                                for k, (device, kind, data, ts) in enumerate(events)], [], [])


def test_the_panel_says_why_the_room_did_something_by_itself(app: Flask) -> None:
    """A schedule run at the edge, an idle-off rule, a class ended at its timeout: each a line with its time in
    the school's zone, in zh-CN and in English; a refused card (which did nothing) is no line."""
    # Ten minutes ago, on the minute (the panel shows the last day's).
    planned = datetime.fromtimestamp(time.time() - 600, SHANGHAI).replace(second=0, microsecond=0)
    step = [{"device": "proj", "action": "power_off", "status": "done", "detail": ""}]
    _events(app, "gw-101", [
        ("schedules", contract.SCHEDULE_RUN_EVENT, {"schedule": 1, "planned": planned.timestamp(), "name": "放学关机",
                                                    "outcome": "ran", "steps": step}, planned.timestamp() + 2),
        ("rules", contract.RULE_RUN_EVENT, {"rule": "idle_off", "at": planned.timestamp() - 60, "reason": "idle",
                                            "steps": step}, planned.timestamp() - 59),
        ("podium", contract.PODIUM_EVENT, {"card": "", "outcome": "ended", "reason": "timeout", "steps": step},
         planned.timestamp() - 120),
        ("podium", contract.PODIUM_EVENT, {"card": "ff", "outcome": "refused", "steps": []}, planned.timestamp() - 60),
        # An idle-off run the gateway's stop cut short: never said as done ("switched off: nobody was there").
        ("rules", contract.RULE_RUN_EVENT, {"rule": "idle_off", "at": planned.timestamp() - 3600, "reason": "x",
                                            "outcome": "interrupted", "steps": []}, planned.timestamp() - 3000),
    ])
    hhmm = planned.strftime("%H:%M")
    zh = call(app, "GET", "/panel/gw-101?lang=zh-CN", role="teacher").get_data(as_text=True)
    why = zh.split('id="why"', 1)[1].split("</ol>", 1)[0]
    assert f"<time>{hhmm}</time> <span>投影机已按计划「放学关机」关闭</span>" in why
    assert "投影机已关闭：教室无人" in why and "超时无人刷卡，已自动下课" in why
    assert "空教室自动关机被中断：网关在执行中停止" in why and why.count("教室无人") == 1
    assert why.count("<li") == 4  # not the refused card
    assert why.index("放学关机") < why.index("教室无人") < why.index("超时")  # newest first
    en = call(app, "GET", "/panel/gw-101?lang=en", role="teacher").get_data(as_text=True)
    assert f"<time>{hhmm}</time> <span>Projector switched off by schedule “放学关机”</span>" in en
    assert "Projector switched off: nobody was in the room" in en
    assert "Switching off an empty room was interrupted: the gateway stopped during it" in en
    # What the stream sends (the panel's JSON): the same items, as data the script words.
    states = web(app).panel
    assert states is not None
    items = states.snapshot("gw-101")["automatic"]
    assert [(i["source"], i["action"], i["devices"]) for i in items] == [
        ("schedule", "power_off", ["proj"]), ("rule", "power_off", ["proj"]), ("podium", "power_off", ["proj"]),
        ("rule", "", [])]
    assert items[0]["ts"] == planned.timestamp() and items[0]["name"] == "放学关机"
    assert items[1]["rule"] == "idle_off" and items[1]["reason"] == "idle"
    # Another room's actions are not this room's.
    assert states.snapshot("gw-102")["automatic"] == []


def test_the_panel_says_a_schedule_was_not_run_because_a_teacher_kept_the_room_on(app: Flask) -> None:
    """A power-off run the gateway skipped (a teacher's override held) is said as not run, with the reason, never
    as "switched off … (skipped)"; beside it an idle-off run; in zh-CN and English."""
    planned = datetime.fromtimestamp(time.time() - 600, SHANGHAI).replace(second=0, microsecond=0)
    skipped = [{"device": "proj", "action": "power_off", "status": "skipped",
                "detail": "not run: a teacher kept the room on for this period"}]
    _events(app, "gw-101", [
        ("schedules", contract.SCHEDULE_RUN_EVENT, {"schedule": 1, "planned": planned.timestamp(), "name": "放学关机",
                                                    "outcome": contract.SCHEDULE_SKIPPED,
                                                    "reason": contract.OVERRIDE_REASON, "steps": skipped},
         planned.timestamp() + 1),
        ("schedules", contract.SCHEDULE_RUN_EVENT, {"schedule": 2, "planned": planned.timestamp() - 30,
                                                    "name": "午休", "outcome": contract.SCHEDULE_SKIPPED,
                                                    "reason": "maintenance", "steps": skipped},
         planned.timestamp() - 29),
        ("rules", contract.RULE_RUN_EVENT, {"rule": "idle_off", "at": planned.timestamp() - 60, "reason": "idle",
                                            "outcome": "ran", "steps": [{**skipped[0], "status": "done"}]},
         planned.timestamp() - 59),
    ])
    hhmm = planned.strftime("%H:%M")
    zh = call(app, "GET", "/panel/gw-101?lang=zh-CN", role="teacher").get_data(as_text=True)
    why = zh.split('id="why"', 1)[1].split("</ol>", 1)[0]
    assert f"<time>{hhmm}</time> <span>计划「放学关机」未执行：教师已设置本节课保持开启</span>" in why, why
    assert "计划「午休」未执行（maintenance）" in why and "投影机已关闭：教室无人" in why
    assert "已按计划「放学关机」关闭" not in why and "跳过" not in why
    en = call(app, "GET", "/panel/gw-101?lang=en", role="teacher").get_data(as_text=True)
    why = en.split('id="why"', 1)[1].split("</ol>", 1)[0]
    assert (f"<time>{hhmm}</time> <span>Schedule “放学关机” was not run: a teacher kept the room on for this period"
            "</span>") in why, why
    assert "Schedule “午休” was not run (maintenance)" in why and "Projector switched off: nobody was in the room" in why
    assert "switched off by schedule" not in why and "skipped" not in why
    states = web(app).panel
    assert states is not None
    first = states.snapshot("gw-101")["automatic"][0]
    assert (first["outcome"], first["reason"], first["status"]) == ("skipped", "override", "skipped")
