"""The usage rate (应用率, central/usage.py and its page, API and files in dashboards/timetables.py) against
a week worked out by hand: class periods from the school's timetable (a holiday, a make-up Saturday
following Monday), a projector and a display on in some periods and off in others, a silent gateway,
a moment's switch-on that does not count, a projector on during the holiday and on Sunday that
counts nowhere; in the school's time zone, on both engines. The figures go through the daily rollup
(central/usage_rollup.py) computed from the real store, with the CO2-over-limit seconds beside them."""

from __future__ import annotations

import csv
import io
import itertools
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from sqlalchemy import select

from campus.contract import State
from central import lists, usage
from central import timetables as tts
from central import usage_rollup as rollup
from central.ledger import Ledger
from central.store.base import Sample
from central.store.sqlite import SqlitePointStore
from dashboards import close_app
from dashboards.context import central
from tests.apps import add_people, central_db, register_rooms, sqlite_only, web_app
from tests.servers import wait_until
from tests.test_paging import SCHOOLS, small_and_large, statements  # noqa: F401 - a fixture
from tests.test_paging import get as paging_get
from tests.test_timetables import DOC

SHANGHAI = ZoneInfo("Asia/Shanghai")
_seq = itertools.count(1)
ENV = {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"}
PROJ = {"profile": "projector-pjlink", "kind": "projector", "status": "ok"}
DISP = {"profile": "display-samsung-mdc", "kind": "display", "status": "ok"}
ROOMS = {  # gateway: (school, room, devices)
    "gw-101": ("s1", "101", {"env": ENV, "proj": PROJ, "disp": DISP}),
    "gw-102": ("s1", "102", {"proj": PROJ}),
    "gw-103": ("s1", "103", {"env": ENV}),   # nothing to measure: left out
    "gw-201": ("s2", "201", {"proj": PROJ}),  # s2 has no timetable: no periods
}


def t(day: str, hhmm: str) -> float:
    return datetime.fromisoformat(f"2025-09-{day}T{hhmm}").replace(tzinfo=SHANGHAI).timestamp()


def on(gw: str, device: str, day: str, start: str, stop: str) -> list[Sample]:
    """`on` every minute from start, `off` at stop (what an agent polling the device reports)."""
    school, _room, devices = ROOMS[gw]
    a, b = t(day, start), t(day, stop)
    kind = devices[device]["kind"]
    return ([Sample(school, gw, device, kind, a + 60 * i, {"power": "on"}) for i in range(int((b - a) // 60))]
            + [Sample(school, gw, device, kind, b, {"power": "off"})])


# The week 2025-09-08 (Monday) .. 14 (Sunday). Periods (DOC): Monday 1-4, Tuesday 1-3, Wednesday the
# holiday, Thursday and Friday 1-3, Saturday a make-up day following Monday (1-4), Sunday none: 17.
# Period times: 1 08:00-08:45, 2 09:00-09:45, 3 10:00-10:45, 4 (Monday's) 14:00-14:45.
def the_week(ledger: Ledger, points: SqlitePointStore) -> None:
    for gw, (school, room, devices) in ROOMS.items():
        ledger.record([], [(school, gw, State(online=True, ts=t("08", "07:00"), room=room, devices=devices))], [])
    samples = (
        # gw-101, the projector. Monday: 1 on throughout (used); 2 one "on" and then silence until an "off" at
        # 10:30: on for the 15 minutes a sample lasts (used), 3 not; 4 on for 3 minutes (not used).
        on("gw-101", "proj", "08", "07:55", "08:50")
        + [Sample("s1", "gw-101", "proj", "projector", t("08", "09:00"), {"power": "on"}),
           Sample("s1", "gw-101", "proj", "projector", t("08", "10:30"), {"power": "off"})]
        + on("gw-101", "proj", "08", "14:00", "14:03")
        # Wednesday is the holiday, Sunday has no periods: neither counts anywhere.
        + on("gw-101", "proj", "10", "08:00", "12:00") + on("gw-101", "proj", "14", "08:00", "11:00")
        # Friday: on 09:40-09:50, exactly 5 minutes of period 2 (used); 3 not.
        + on("gw-101", "proj", "12", "09:40", "09:50")
        # gw-101, the display. Monday 08:30-08:40 inside period 1 (already used: counted once). Tuesday
        # 08:10-10:50: periods 1, 2, 3 used. Saturday 13:50-14:50: Monday's period 4 (used), 1-3 not.
        + on("gw-101", "disp", "08", "08:30", "08:40") + on("gw-101", "disp", "09", "08:10", "10:50")
        + on("gw-101", "disp", "13", "13:50", "14:50")
        # gw-102: on every morning 07:30-12:00, Monday to Saturday: every morning period, no afternoon one.
        + [s for d in ("08", "09", "10", "11", "12", "13") for s in on("gw-102", "proj", d, "07:30", "12:00")]
        + on("gw-201", "proj", "08", "07:30", "12:00")
        # CO2 (the limit: 1500 ppm, the profile's). gw-101 Monday: over 09:00-09:20 (1200 s; a value at the
        # limit is not over it). gw-103 Monday: one sample over, then silence: over for MAX_SAMPLE_GAP_S.
        + [Sample("s1", "gw-101", "env", "environment", t("08", hhmm), {"co2_ppm": ppm})
           for hhmm, ppm in (("08:00", 800), ("09:00", 1600), ("09:10", 1700), ("09:20", 1500), ("09:40", 900))]
        + [Sample("s1", "gw-103", "env", "environment", t("08", "10:00"), {"co2_ppm": 2000})])
    points.write(samples)


# gw-101: Monday 2 of 4, Tuesday 3/3, Thursday 0/3, Friday 1/3, Saturday 1/4 = 7 of 17.
# gw-102: Monday 3/4, Tuesday 3/3, Thursday 3/3, Friday 3/3, Saturday 3/4 = 15 of 17.
# s1: 22 of 34; s2: no timetable; the district: 22 of 34.
HAND_CHECKED = {"gw-101": (17, 7), "gw-102": (17, 15), "gw-103": (0, 0), "gw-201": (0, 0)}
DAYS = {"2025-09-08": (8, 5), "2025-09-09": (6, 6), "2025-09-11": (6, 3), "2025-09-12": (6, 4),
        "2025-09-13": (8, 4)}


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, central_db_url: str):
    app = web_app(central_db(tmp_path, the_week, central_db_url), monkeypatch)
    register_rooms(app, tuple((gw, school, room, "A") for gw, (school, room, _d) in ROOMS.items()))
    tts.save(central(app).registry, tts.from_document("s1", DOC), "test")
    app.tokens = add_people(app)
    yield app
    close_app(app)


CO2_OVER = {("gw-101", "2025-09-08"): 1200.0, ("gw-103", "2025-09-08"): float(usage.MAX_SAMPLE_GAP_S)}


def week_report(app, school: str | None = None) -> usage.UsageReport:
    c = central(app)
    return usage.usage_rate(c.registry, c.ledger, date(2025, 9, 8), date(2025, 9, 14), school)


def rows(app) -> dict[tuple[str, str], dict]:
    c = central(app)
    with c.db.read() as conn:
        return {(r.gateway, r.day.isoformat()): r._asdict() for r in conn.execute(select(usage.UsageDay.__table__))}


def test_the_usage_rate_of_a_hand_checked_week(app) -> None:
    c = central(app)
    # Tuesday 09:50: Monday's four periods and Tuesday's first two are over, the rest not yet counted; the
    # days after are not rolled up yet: pending, not counted as unused.
    rollup.fill(c.registry, c.ledger, c.store, now=t("09", "09:50"), days=2)
    early = week_report(app)
    assert {r.gateway: (r.periods, r.used) for r in early.rooms if r.periods} == {"gw-101": (6, 4), "gw-102": (6, 5)}
    assert early.pending == 3 * 5 and early.asof == t("09", "09:50")  # gw-101, 102, 201: Wednesday to Sunday
    monday = rows(app)[("gw-101", "2025-09-08")]
    # The Monday after: Tuesday (partial) is computed again, the finished Monday is not; today has no row
    # yet, so it gets one even without a refresh.
    done = rollup.fill(c.registry, c.ledger, c.store, now=t("15", "12:00"), days=8, refresh_today=False)
    assert done.written == 7 * len(ROOMS) and not done.more
    assert rows(app)[("gw-101", "2025-09-08")]["computed_at"] == monday["computed_at"]
    report = week_report(app)
    assert {r.gateway: (r.periods, r.used) for r in report.rooms} == HAND_CHECKED
    assert report.pending == 0
    assert {k: r["co2_over_s"] for k, r in rows(app).items() if r["co2_over_s"]} == CO2_OVER
    assert rows(app)[("gw-102", "2025-09-08")]["co2_devices"] == 0  # no sensor: CO2 not measured
    # Nothing left to do; a saved timetable makes its school's finished days stale, and only those.
    assert rollup.fill(c.registry, c.ledger, c.store, now=t("15", "12:00"), days=8, refresh_today=False).written == 0
    tts.save(c.registry, tts.from_document("s1", DOC), "test")
    assert rollup.fill(c.registry, c.ledger, c.store, now=t("15", "12:00"), days=8,
                       refresh_today=False).written == 7 * 3  # s1's three rooms, Monday 8 to Sunday 14
    rooms = {r.gateway: r for r in report.rooms}
    assert rooms["gw-101"].devices == ["disp", "proj"] and rooms["gw-103"].devices == []
    assert rooms["gw-101"].rate == round(7 / 17, 4) and rooms["gw-103"].rate is None
    schools = {s.school: s for s in report.schools}
    assert (schools["s1"].periods, schools["s1"].used, schools["s1"].rooms, schools["s1"].timetable) == (34, 22, 2, True)
    assert (schools["s2"].periods, schools["s2"].rate, schools["s2"].timetable) == (0, None, False)
    assert (report.periods, report.used, report.rate) == (34, 22, round(22 / 34, 4))
    assert {d.day.isoformat(): (d.periods, d.used) for d in report.days} == DAYS
    only_s2 = week_report(app, "s2")
    assert [r.gateway for r in only_s2.rooms] == ["gw-201"] and only_s2.periods == 0
    # A stricter threshold: Friday's five minutes (gw-101) no longer count.
    friday = rollup.Room("gw-101", "s1", ("disp", "proj"), ("env",))
    tt = tts.load(c.registry, "s1")
    assert rollup.compute_day(c.store, friday, date(2025, 9, 12), tt, 1500, t("15", "12:00"))["used"] == 1
    assert rollup.compute_day(c.store, friday, date(2025, 9, 12), tt, 1500, t("15", "12:00"), min_on_s=301)["used"] == 0


def call(app, path: str, role: str = "facility"):
    if not rows(app):
        c = central(app)
        rollup.fill(c.registry, c.ledger, c.store, now=t("30", "23:00"), days=30)
    return app.test_client().get(path, headers={"Authorization": f"Bearer {app.tokens[role]}"})


def test_the_api_and_the_files_say_the_same(app) -> None:
    body = call(app, "/api/usage?week=2025-W37").get_json()
    assert (body["periods"], body["used"], body["rate"]) == (34, 22, round(22 / 34, 4))
    assert {r["gateway"]: (r["periods"], r["used"]) for r in body["rooms"]} == HAND_CHECKED
    assert body["first"] == "2025-09-08" and body["last"] == "2025-09-14"
    month = call(app, "/api/usage?month=2025-09&school=s1").get_json()
    assert month["first"] == "2025-09-01" and month["last"] == "2025-09-30"
    assert month["used"] >= 22 and month["periods"] > 34  # the rest of September's periods, unused
    text = call(app, "/health/usage-rate.csv?week=2025-W37").data.decode("utf-8")
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert rows[1] == ["district", "", "", "", "", "", "34", "22", f"{22 / 34:.4f}"]
    assert ["room", "s1", "A", "101", "gw-101", "disp proj", "17", "7", f"{7 / 17:.4f}"] in rows
    from openpyxl import load_workbook

    xlsx = call(app, "/health/usage-rate.xlsx?week=2025-W37")
    assert xlsx.status_code == 200 and xlsx.mimetype.endswith("spreadsheetml.sheet")
    sheet = load_workbook(io.BytesIO(xlsx.data))["usage rate"]
    values = [[cell.value for cell in row] for row in sheet.iter_rows()]
    assert values[1][:9] == ["district", None, None, None, None, None, 34, 22, round(22 / 34, 4)]
    assert sheet["I2"].number_format == "0.0%"
    page = call(app, "/health/usage-rate?week=2025-W37&school=s1")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'id="rate-chart"' in html and "64.7%" in html and "41.2%" in html


@sqlite_only
def test_bad_report_requests_are_one_400_naming_the_field(app) -> None:
    for query, field in (("week=2025-W99", "week"), ("month=2025-13", "month"), ("month=1850-01", "month"),
                         ("school=nowhere", "school"), ("school=a%20b", "school")):
        resp = call(app, f"/api/usage?{query}")
        assert resp.status_code == 400 and resp.get_json()["field"] == field, (query, resp.get_json())
        assert call(app, f"/health/usage-rate?{query}").status_code == 400
        assert call(app, f"/health/usage-rate.xlsx?{query}").status_code == 400
    assert call(app, "/api/usage", role="teacher").status_code == 403
    assert app.test_client().get("/health/usage-rate.csv").status_code == 302  # to the login page
    with pytest.raises(ValueError, match="at most"):
        c = central(app)
        usage.usage_rate(c.registry, c.ledger, date(2025, 1, 1), date(2025, 6, 1))


def test_the_background_job_fills_the_week_once_under_its_lease(app) -> None:
    """Two instances' jobs on one database: the one holding the lease fills the missing days (the report
    then says what fill() says), the other computes nothing."""
    c = central(app)
    jobs = [rollup.UsageRollup(c.registry, c.ledger, c.store, refresh=60, days=8, tick=0.1,
                               clock=lambda: t("15", "12:00")) for _ in range(2)]
    try:
        for job in jobs:
            job.start()
        wait_until(lambda: any(j.caught_up for j in jobs), 30, message="the rollup caught up")
        assert sorted(j.rounds > 0 for j in jobs) == [False, True]
    finally:
        for job in jobs:
            job.stop()
    assert {r.gateway: (r.periods, r.used) for r in week_report(app).rooms} == HAND_CHECKED


def test_days_before_a_rooms_first_point_are_written_as_the_store_would_and_without_reading_it(
        app, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fill's shortcut (`_days_before_data`): the rows of days before the data equal those the store's
    reads give, and only those days take it. gw-104's meter first reads exactly at the end of Sunday the
    7th (Monday 00:00): that day reads it, so it is not one of them."""
    c = central(app)
    meter = {"profile": "meter-sdm120-modbus", "kind": "meter", "status": "ok"}
    c.ledger.record([], [("s1", "gw-104", State(online=True, ts=t("08", "07:00"), room="104",
                                                devices={"env": ENV, "meter": meter}))], [])
    c.store.write([Sample("s1", "gw-104", "meter", "meter", t("08", "00:00") + 3600 * h, {"energy_kwh": 100.0 + h})
                   for h in range(30)]
                  + [Sample("s1", "gw-104", "env", "environment", t("09", "09:00"), {"co2_ppm": 2000})])
    now, days = t("15", "12:00"), 14  # Tuesday 2nd .. Monday 15th: six days before the week's first point

    def written() -> dict[tuple[str, str], dict]:
        return {k: {f: v for f, v in r.items() if f != "computed_at"} for k, r in rows(app).items()}

    with monkeypatch.context() as m:  # every day read from the store
        m.setattr(rollup, "_days_before_data", lambda *_a: set())
        slow = rollup.fill(c.registry, c.ledger, c.store, now=now, days=days)
    every_read = written()
    with c.db.write() as conn:
        conn.execute(usage.UsageDay.__table__.delete())
    fast = rollup.fill(c.registry, c.ledger, c.store, now=now, days=days)
    assert written() == every_read
    assert slow.blank == 0 and fast.written == slow.written == len(every_read)
    gateways = {gw for gw, _day in every_read}
    assert "gw-104" in gateways and len(gateways) >= 4
    assert fast.blank == sum(5 if gw == "gw-104" else 6 for gw in gateways)
    assert every_read[("gw-104", "2025-09-08")]["energy_kwh"] > 0  # the meter's data is read where it is


def test_the_district_overview_and_api_show_this_weeks_usage_and_co2(app) -> None:
    """`/api/schools`, `/district` and the city push body carry this week's rollup, sortable by both."""
    c = central(app)
    monday = date.today() - timedelta(days=date.today().weekday())
    row = {"school": "s1", "power_devices": 1, "co2_devices": 1, "co2_limit": 1500.0, "complete": True,
           "counted_to": 0.0, "computed_at": 0.0, "co2_over_s": 0.0}
    rollup._write(c.db, [  # two rooms of s1 on two days; s2's room measured no CO2; last week's row not counted
        {**row, "gateway": "gw-101", "day": monday, "periods": 8, "used": 6, "co2_over_s": 5400.0},
        {**row, "gateway": "gw-102", "day": monday, "periods": 8, "used": 1, "co2_over_s": 1800.0},
        {**row, "gateway": "gw-103", "day": monday, "periods": 8, "used": 0, "power_devices": 0},
        {**row, "gateway": "gw-201", "day": monday, "school": "s2", "periods": 10, "used": 9, "co2_devices": 0},
        {**row, "gateway": "gw-101", "day": monday - timedelta(days=1), "periods": 8, "used": 8, "co2_over_s": 1e5}])
    body = call(app, "/api/schools").get_json()
    figures = {s["school"]: (s["usage_periods"], s["usage_used"], s["usage_rate"], s["co2_over_s"], s["co2_hours"])
               for s in body}
    assert figures == {"s1": (16, 7, round(7 / 16, 4), 7200, 2.0), "s2": (10, 9, 0.9, None, None)}
    assert [s["school"] for s in call(app, "/api/schools?sort=-usage_rate").get_json()] == ["s2", "s1"]
    assert [s["school"] for s in call(app, "/api/schools?sort=-co2_hours").get_json()] == ["s1", "s2"]
    assert [s["school"] for s in call(app, "/api/schools?sort=co2_hours").get_json()] == ["s2", "s1"]
    page = call(app, "/district?sort=-usage_rate").get_data(as_text=True)
    assert "sort=co2_hours" in page and page.index('data-school="s2"') < page.index('data-school="s1"')
    s1 = page[page.index('data-school="s1"'):]
    assert '<td class="num usage-rate">44%</td>' in s1 and '<td class="num co2-hours">2.0 h</td>' in s1
    from central import city_push

    pushed = {s["school"]: s for s in city_push.rollup(c.db, "north", 1, time.time())["schools"]}
    assert (pushed["s1"]["usage_periods"], pushed["s1"]["usage_used"], pushed["s1"]["co2_over_s"]) == (16, 7, 7200)
    assert all(s["co2_over_s"] is None for s in city_push.rollup(c.db, "north", 2, time.time(), usage=False)["schools"])


def test_usage_reports_run_as_many_statements_for_300_rooms_as_for_30(small_and_large) -> None:  # noqa: F811
    """With every school's timetable and today rolled up, a report (JSON, page, file) and the overview run a
    fixed number of statements, and none reads the point store per room."""
    today = tts.today_in(ZoneInfo(DOC["timezone"]))  # the rollup's today: the schools', not the host's
    week = today.strftime("%G-W%V")
    every_week = {"timezone": DOC["timezone"], "periods": DOC["periods"]}  # no terms: classes every weekday
    store_reads: list[str] = []
    for district, rooms in zip(small_and_large, (30, 300), strict=True):
        c = central(district)
        for school in (f"s{i:02d}" for i in range(SCHOOLS)):
            tts.save(c.registry, tts.from_document(school, every_week), "test")
        assert rollup.fill(c.registry, c.ledger, c.store, days=1).written == rooms
        for name in ("query", "window"):  # from now on: a request that reads the point store is counted
            read = getattr(c.store, name)
            setattr(c.store, name, lambda *a, _read=read, _name=name, **k: store_reads.append(_name) or _read(*a, **k))
    month = f"{today:%Y-%m}"  # a whole calendar month: its rooms' `usage_months` rows (migration 0022)
    for path in (f"/api/usage?week={week}", f"/api/usage?week={week}&school=s03", f"/health/usage-rate?week={week}",
                 f"/health/usage-rate.csv?week={week}", "/api/schools?sort=-usage_rate", "/district?sort=co2_hours",
                 f"/api/usage?month={month}", f"/health/usage-rate?month={month}&school=s03"):
        few, resp_few = statements(small_and_large[0], path)
        many, resp_many = statements(small_and_large[1], path)
        assert resp_few.status_code == resp_many.status_code == 200, (path, resp_many.get_data(as_text=True)[:300])
        assert many == few, f"{path}: {few} statements with 30 rooms, {many} with 300"
    assert store_reads == []
    body = paging_get(small_and_large[1], f"/api/usage?week={week}&limit=500").get_json()
    measured = [r for r in body["rooms"] if r["devices"]]
    assert len(body["rooms"]) == 300 and len(measured) == 270  # the 30 never installed have no devices
    assert body["pending"] == today.weekday() * 270  # only today is rolled up: the days before are pending
    # A page of the rooms (issue 19: 264 KB whole at 2,000 rooms); the schools, days and district stay whole.
    page = paging_get(small_and_large[1], f"/api/usage?week={week}&limit=50&offset=100")
    assert page.status_code == 200 and page.headers["X-Total-Count"] == "300"
    paged = page.get_json()
    assert [r["gateway"] for r in paged["rooms"]] == [r["gateway"] for r in body["rooms"][100:150]]
    assert {k: paged[k] for k in ("schools", "days", "periods", "used")} == {k: body[k] for k in
                                                                           ("schools", "days", "periods", "used")}
    # Without `limit`, a default page (10,000 rooms were 1.5 MB: 11h), never every room.
    first = paging_get(small_and_large[1], f"/api/usage?week={week}")
    assert first.headers["X-Total-Count"] == "300"
    assert [r["gateway"] for r in first.get_json()["rooms"]] == [r["gateway"] for r in body["rooms"][:100]]
    assert paging_get(small_and_large[1], f"/api/usage?week={week}&limit=501").status_code == 400
    # A school's page lists a page of its rooms, with a link to the next.
    school_page = paging_get(small_and_large[1], f"/health/usage-rate?week={week}&school=s03&limit=10")
    text = school_page.get_data(as_text=True)
    assert school_page.status_code == 200 and text.count("<tr><td>s03</td>") == 10, text[:300]
    assert 'id="rate-rooms-pager"' in text and "offset=10" in text
    assert paging_get(small_and_large[1], f"/health/usage-rate?week={week}&school=s03&limit=x").status_code == 400
    found = paging_get(small_and_large[1], f"/api/usage?week={week}&q=GW-029")
    assert found.headers["X-Total-Count"] == "10"
    assert {r["gateway"] for r in found.get_json()["rooms"]} == {f"gw-029{i}" for i in range(10)}
    many, _resp = statements(small_and_large[1], f"/api/usage?week={week}&limit=5")
    few, _resp = statements(small_and_large[0], f"/api/usage?week={week}&limit=5")
    assert many == few
    for query, name in (("limit=0", "limit"), ("offset=-1", "offset"), ("limit=x", "limit")):
        bad = paging_get(small_and_large[1], f"/api/usage?week={week}&{query}")
        assert bad.status_code == 400 and bad.get_json()["field"] == name, bad.get_data(as_text=True)


def every_room_report(c, first: date, last: date, school: str | None = None,
                      schools_in: tuple[str, ...] | None = None, today: date | None = None) -> usage.UsageReport:
    """The report as it was made before issue 19's paging (every room's devices read into Python, the
    schools and district added up there): what the SQL sums and the page must still answer. Its rooms'
    days are expected up to `today` (None: the schools' today, Asia/Shanghai; it was the host's date)."""
    from sqlalchemy import case, func

    from central import lists

    u = usage.UsageDay.__table__.c
    p = lists.places(c.db)
    measured = u.power_devices > 0
    in_span = [u.day >= first, u.day <= last, *lists.place_filter(p, lists.Scope(school=school, schools=schools_in))]
    per_room = (select(u.gateway, func.coalesce(func.sum(case((measured, u.periods), else_=0)), 0),
                       func.coalesce(func.sum(case((measured, u.used), else_=0)), 0),
                       func.sum(case((measured, 1), else_=0)), func.count(),
                       func.min(case((u.complete.is_(False), u.counted_to), else_=None)))
                .select_from(usage.UsageDay.__table__).join(p, p.c.id == u.gateway).where(*in_span).group_by(u.gateway))
    with c.db.read() as conn:
        rows = {gw: (int(n), int(k), int(dm), int(d), part) for gw, n, k, dm, d, part in conn.execute(per_room)}
        with_timetable = set(conn.execute(select(tts.TimetableRow.school_id)).scalars())
    partials = [r[4] for r in rows.values() if r[4] is not None]
    report = usage.UsageReport(first=first, last=last, asof=min(partials) if partials else 0.0)
    schools: dict[str, usage.SchoolUsage] = {}
    today = tts.today_in(ZoneInfo(tts.DEFAULT_TIMEZONE)) if today is None else today
    expected = (min(last, today) - first).days + 1
    for room, _sensors in usage.rooms_with_sensors(c.registry, c.ledger, schools_in):
        if school is not None and room.school != school:
            continue
        sch = schools.setdefault(room.school, usage.SchoolUsage(school=room.school,
                                                                timetable=room.school in with_timetable))
        periods, used, days_measured, days, _partial = rows.get(room.gateway, (0, 0, 0, 0, None))
        if room.devices or days_measured:
            room.add(periods, used)
            sch.rooms += 1
            sch.add(periods, used)
            report.add(periods, used)
            report.pending += max(0, expected - days)
        report.rooms.append(room)
    report.schools = sorted(schools.values(), key=lambda s: s.school)
    return report


def test_the_paged_report_answers_what_every_room_read_did(tmp_path: Path, central_db_url: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every room, school and the district the same as the report that read every room into Python (issue
    19), in every scope, the pages adding up to the whole; with a room measured whose devices are gone, a
    provisioned projector never reported, and rooms with nothing at all."""
    from tests.test_paging import district_app

    district = district_app(tmp_path, central_db_url, 60, monkeypatch)
    try:
        c = central(district)
        # Which rooms have a display or projector is read from `gateways.device_kinds` now (migration 0021), the
        # old report read the states' JSON: a newer state without its projector, kinds that only look like ours
        # (another case, a space, LIKE's wildcards) and an unregistered gateway's display must count alike.
        later = time.time() + 1
        c.ledger.record([], [
            ("s03", "gw-0003", State(online=True, ts=later, room="103", devices={"env": dict(ENV)})),
            ("s04", "gw-odd", State(online=True, ts=later, room="odd", devices={
                "p": {**PROJ, "kind": "Projector"}, "q": {**PROJ, "kind": "a projector"},
                "r": {**DISP, "kind": "100%_display"}, "s": {**DISP, "kind": "display\\"}})),
            ("s05", "gw-loose", State(online=True, ts=later, room="loose", devices={"d": dict(DISP)}))], [])
        for school in (f"s{i:02d}" for i in range(SCHOOLS)):
            if school != "s02":  # a school without a timetable: no periods
                tts.save(c.registry, tts.from_document(school, {"timezone": DOC["timezone"],
                                                                "periods": DOC["periods"]}), "test")
        assert rollup.fill(c.registry, c.ledger, c.store, days=3).written > 0
        # The rollup's days are the schools' (Asia/Shanghai), not the host's: from 16:00 UTC they differ.
        today = datetime.now(ZoneInfo(DOC["timezone"])).date()
        with c.db.write() as conn:  # gw-0009 never reported: measured two days ago (its devices since removed)
            u = usage.UsageDay.__table__
            assert conn.execute(u.update().where(u.c.gateway == "gw-0009", u.c.day == today - timedelta(days=2))
                                .values(periods=6, used=4, power_devices=1)).rowcount == 1
            # As every writer of day rows must (a span that is a whole week or month reads the kept sums: on a
            # Sunday, `first`..`last` below is one).
            usage.recount_months(conn, [("gw-0009", today - timedelta(days=2))])
        c.registry.add_device("gw-0019", "proj", "projector-pjlink", {"host": "127.0.0.1", "port": 4352})
        first, last = today - timedelta(days=6), today
        for school, schools_in in ((None, None), ("s09", None), (None, ("s01", "s09")), ("s01", ("s01",)),
                                   (None, ())):
            old = every_room_report(c, first, last, school, schools_in)
            new = usage.usage_rate(c.registry, c.ledger, first, last, school, schools_in=schools_in)
            assert (new.periods, new.used, new.pending) == (old.periods, old.used, old.pending)
            assert new.schools == old.schools and new.rooms == old.rooms and new.total_rooms == len(old.rooms)
            paged = [r for offset in range(0, len(old.rooms) + 1, 7) for r in usage.usage_rate(
                c.registry, c.ledger, first, last, school, schools_in=schools_in,
                page=lists.Paging(limit=7, offset=offset)).rooms]
            assert paged == old.rooms
        whole = every_room_report(c, first, last)
        assert whole.periods > 0 and whole.pending > 0 and all(s.rooms > 0 for s in whole.schools)
        equipped = {r.gateway for r in whole.rooms if r.devices}
        assert equipped >= {"gw-0019", "gw-0000", "gw-loose"} and not equipped & {"gw-0003", "gw-odd"}
        assert next(r for r in whole.rooms if r.gateway == "gw-0009").periods == 6
        found = usage.usage_rate(c.registry, c.ledger, first, last, page=lists.Paging(q="GW-001"))
        assert [r.gateway for r in found.rooms] == [f"gw-001{i}" for i in range(10)] and found.total_rooms == 10
    finally:
        close_app(district)


def test_pending_days_run_to_each_schools_today_not_the_hosts(app) -> None:
    """The days a room should have rows of run to its school's today (the zone of its timetable, else the
    site's), as the rollup writes them; they ran to the host's `date.today()`, a day behind Shanghai's from
    16:00 UTC (and any date at all in a test: the real one). At 18:00 UTC on Wednesday 10 September 2025 it
    is Thursday 02:00 in Shanghai and Wednesday 11:00 in Los Angeles."""
    c = central(app)
    now = datetime(2025, 9, 10, 18, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    la = ZoneInfo("America/Los_Angeles")

    def pending(site_zone: ZoneInfo | None = None) -> int:
        return usage.usage_rate(c.registry, c.ledger, date(2025, 9, 8), date(2025, 9, 14), now=now,
                                site_zone=site_zone).pending

    # s1 keeps Shanghai (its timetable): Tuesday to Thursday rolled up. s2 has none: the site's zone, Los
    # Angeles here, Monday to Wednesday.
    rollup.fill(c.registry, c.ledger, c.store, now=now, days=3, site_zone=la)
    days = {(gw, day) for gw, day in rows(app)}
    assert {d for gw, d in days if gw == "gw-101"} == {"2025-09-09", "2025-09-10", "2025-09-11"}
    assert {d for gw, d in days if gw == "gw-201"} == {"2025-09-08", "2025-09-09", "2025-09-10"}
    # Monday is pending in s1's two rooms with a projector or display (gw-103 has neither); nothing in s2's.
    assert pending(la) == 2
    assert pending() == 3  # a site in Shanghai: s2's Thursday is due too
    # A timetable in Los Angeles for s2: its own zone, whatever the site's.
    tts.save(c.registry, tts.from_document("s2", {**DOC, "timezone": "America/Los_Angeles"}), "test")
    assert pending() == 2


def timetabled_district(tmp_path: Path, central_db_url: str,
                        monkeypatch: pytest.MonkeyPatch) -> tuple[Flask, dict[str, str]]:
    """tests/test_paging.py's district of 40 rooms, every school with classes every weekday but s02 (no
    timetable: no periods), and each room's school."""
    from tests.test_paging import district_app

    district = district_app(tmp_path, central_db_url, 40, monkeypatch)
    c = central(district)
    every_week = {"timezone": DOC["timezone"], "periods": DOC["periods"]}  # no terms: classes every weekday
    for school in (f"s{i:02d}" for i in range(SCHOOLS)):
        if school != "s02":
            tts.save(c.registry, tts.from_document(school, every_week), "test")
    return district, {gw: school for gw, school, *_ in lists.place_rows(c.db, lists.Scope())}


def test_a_months_report_from_its_room_months_answers_what_its_days_do(tmp_path: Path, central_db_url: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole calendar month's report reads one `usage_months` row a room (migration 0022), kept by the rollup
    with the day rows: the same report, every field, as the sums of the days (the path a week takes), for a
    month over and a month running, every scope, every page; after new days are filled, after today's row is
    rewritten with more periods used, and with a row of a gateway that is no place any more (written the way
    a writer other than the rollup must: `recount_months` in its transaction)."""
    district, school_of = timetabled_district(tmp_path, central_db_url, monkeypatch)
    try:
        c = central(district)
        # Friday 12 September 2025, 11:00 in Shanghai: August over, September running (today's row partial).
        now = t("12", "11:00")
        today = date(2025, 9, 12)
        power = [Sample(school_of[gw], gw, "proj", "projector", t(day, hhmm) + 60 * i, {"power": "on"})
                 for gw, day, hhmm in (("gw-0000", "08", "08:00"), ("gw-0001", "09", "09:00"), ("gw-0013", "11", "10:00"))
                 for i in range(50)]
        c.store.write(power)

        def same(first: date, last: date, **kw: object) -> usage.UsageReport:
            by_month = usage.usage_rate(c.registry, c.ledger, first, last, now=now, **kw)  # type: ignore[arg-type]
            with monkeypatch.context() as m:
                m.setattr(usage, "whole_month", lambda _a, _b: None)  # the days' sums, as any other span
                by_days = usage.usage_rate(c.registry, c.ledger, first, last, now=now, **kw)  # type: ignore[arg-type]
            assert by_month == by_days
            return by_month

        def months() -> list[usage.UsageReport]:
            out = []
            for first, last in (usage.month_span(date(2025, 8, 1)), usage.month_span(today)):
                whole = same(first, last)
                for school, schools_in in (("s03", None), (None, ("s01", "s03")), ("s01", ("s01",)), (None, ())):
                    same(first, last, school=school, schools_in=schools_in)
                paged = [r for offset in range(0, len(whole.rooms) + 1, 9)
                         for r in same(first, last, page=lists.Paging(limit=9, offset=offset)).rooms]
                assert paged == whole.rooms
                assert same(first, last, page=lists.Paging(q="GW-001")).total_rooms == 10
                out.append(whole)
            return out

        assert rollup.fill(c.registry, c.ledger, c.store, now=now, days=20).written > 0
        august, september = months()
        assert august.pending > 0 and september.used == 3  # a period the 8th, 9th, 11th; August: 1-3 missing
        assert usage.whole_month(date(2025, 9, 1), date(2025, 9, 30)) == date(2025, 9, 1)
        assert usage.whole_month(date(2025, 9, 1), date(2025, 9, 29)) is None
        # Older days filled: August's month rows grow with them.
        assert rollup.fill(c.registry, c.ledger, c.store, now=now, days=45).written > 0
        august2, september2 = months()
        assert august2.periods > august.periods and august2.pending < august.pending and september2 == september
        # Today's row rewritten: gw-0001's projector on through periods 1-3, the refresh at 11:30 counts them.
        c.store.write([Sample(school_of["gw-0001"], "gw-0001", "proj", "projector", t("12", "07:59") + 60 * i,
                              {"power": "on"}) for i in range(170)])
        now = t("12", "11:30")
        assert rollup.fill(c.registry, c.ledger, c.store, now=now, days=1).written == 40
        _august3, september3 = months()
        room = next(r for r in september3.rooms if r.gateway == "gw-0001")
        assert september3.used == september.used + 3 and room.used == 4
        # A room-day of a gateway no place any more (and one of a place) written by hand, with its month.
        u = usage.UsageDay.__table__
        extra = [{"gateway": gw, "day": date(2025, 9, 3), "school": "s01", "periods": 6, "used": 5,
                  "power_devices": 1, "co2_over_s": 0.0, "co2_devices": 0, "co2_limit": None, "complete": True,
                  "counted_to": now, "computed_at": now, "energy_kwh": None, "energy_off_kwh": None,
                  "meter_devices": 0} for gw in ("gw-gone", "gw-0039")]
        with c.db.write() as conn:
            conn.execute(u.delete().where(u.c.gateway == "gw-0039", u.c.day == date(2025, 9, 3)))
            conn.execute(u.insert(), extra)
            assert usage.recount_months(conn, [("gw-gone", date(2025, 9, 3)), ("gw-0039", date(2025, 9, 3))]) == 2
        _august4, september4 = months()
        day3 = next(d for d in september4.days if d.day == date(2025, 9, 3))
        assert september4.used == september3.used + 5 and day3.used == 5  # gw-gone's row counts nowhere
    finally:
        close_app(district)


def test_a_weeks_report_from_its_room_weeks_answers_what_its_days_do(tmp_path: Path, central_db_url: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An ISO week's report (the default span) reads one `usage_weeks` row a room (migration 0023), kept by the
    rollup with the day rows as the months are: the same report, every field, as the sums of the days, for a
    week over and the week running, every scope, every page; after older days are filled, after today's row is
    rewritten with more periods used, and with hand-written rows of a place and of a gateway that is no place
    (counted in neither the rooms nor the days). Turning the recount of the weeks off fails it."""
    district, school_of = timetabled_district(tmp_path, central_db_url, monkeypatch)
    try:
        c = central(district)
        # Friday 12 September 2025, 11:00 in Shanghai: the week of the 1st over, the week of the 8th running.
        now = t("12", "11:00")
        c.store.write([Sample(school_of[gw], gw, "proj", "projector", t(day, hhmm) + 60 * i, {"power": "on"})
                       for gw, day, hhmm in (("gw-0000", "05", "08:00"), ("gw-0001", "09", "09:00"),
                                             ("gw-0013", "11", "10:00")) for i in range(50)])

        def same(first: date, last: date, **kw: object) -> usage.UsageReport:
            by_week = usage.usage_rate(c.registry, c.ledger, first, last, now=now, **kw)  # type: ignore[arg-type]
            with monkeypatch.context() as m:
                m.setattr(usage, "whole_week", lambda _a, _b: None)  # the days' sums, as any other span
                by_days = usage.usage_rate(c.registry, c.ledger, first, last, now=now, **kw)  # type: ignore[arg-type]
            assert by_week == by_days
            return by_week

        def weeks() -> list[usage.UsageReport]:
            out = []
            for monday in (date(2025, 9, 1), date(2025, 9, 8)):
                first, last = usage.week_span(monday)
                whole = same(first, last)
                for school, schools_in in (("s03", None), (None, ("s01", "s03")), ("s01", ("s01",)), (None, ())):
                    same(first, last, school=school, schools_in=schools_in)
                paged = [r for offset in range(0, len(whole.rooms) + 1, 9)
                         for r in same(first, last, page=lists.Paging(limit=9, offset=offset)).rooms]
                assert paged == whole.rooms
                assert same(first, last, page=lists.Paging(q="GW-001")).total_rooms == 10
                out.append(whole)
            return out

        assert usage.whole_week(date(2025, 9, 8), date(2025, 9, 14)) == date(2025, 9, 8)
        assert usage.whole_week(date(2025, 9, 9), date(2025, 9, 15)) is None  # a Tuesday to a Monday
        assert usage.whole_week(date(2025, 9, 1), date(2025, 9, 30)) is None
        assert rollup.fill(c.registry, c.ledger, c.store, now=now, days=9).written > 0
        before, running = weeks()
        assert before.pending > 0 and running.used == 2  # a period the 9th and the 11th; the 1st-3rd not filled
        assert rollup.fill(c.registry, c.ledger, c.store, now=now, days=20).written > 0
        before2, running2 = weeks()
        assert before2.used == 1 and before2.pending < before.pending and running2 == running
        # Today's row rewritten: gw-0001's projector on through periods 1-3, the refresh at 11:30 counts them.
        c.store.write([Sample(school_of["gw-0001"], "gw-0001", "proj", "projector", t("12", "07:59") + 60 * i,
                              {"power": "on"}) for i in range(170)])
        now = t("12", "11:30")
        assert rollup.fill(c.registry, c.ledger, c.store, now=now, days=1).written == 40
        _before3, running3 = weeks()
        assert running3.used == running.used + 3
        assert next(r for r in running3.rooms if r.gateway == "gw-0001").used == 4
        # A room-day of a gateway no place any more (and one of a place) written by hand, with its week.
        u = usage.UsageDay.__table__
        extra = [{"gateway": gw, "day": date(2025, 9, 10), "school": "s01", "periods": 6, "used": 5,
                  "power_devices": 1, "co2_over_s": 0.0, "co2_devices": 0, "co2_limit": None, "complete": True,
                  "counted_to": now, "computed_at": now, "energy_kwh": None, "energy_off_kwh": None,
                  "meter_devices": 0} for gw in ("gw-gone", "gw-0039")]
        with c.db.write() as conn:
            conn.execute(u.delete().where(u.c.gateway == "gw-0039", u.c.day == date(2025, 9, 10)))
            conn.execute(u.insert(), extra)
            usage.recount_months(conn, [("gw-gone", date(2025, 9, 10)), ("gw-0039", date(2025, 9, 10))])
        _before4, running4 = weeks()
        day10 = next(d for d in running4.days if d.day == date(2025, 9, 10))
        assert running4.used == running3.used + 5 and day10.used == 5  # gw-gone's row counts nowhere
    finally:
        close_app(district)
