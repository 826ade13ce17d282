"""Electricity in the daily rollup and its page, API and files (central/energy.py, dashboards/energy.py), and the
projector maintenance list (central/maintenance.py), against figures worked out by hand.

The week 2025-09-08 (Monday) .. 14 of tests/test_timetables.py's DOC (Asia/Shanghai): Monday's school day
08:00-14:45, Tuesday's 08:00-10:45, Wednesday a holiday, Saturday a make-up day following Monday. Meter
readings go through the real store and the real rollup; a meter reset on Monday evening counts as a restart,
never as -98.5 kWh (what last-minus-first would say)."""

from __future__ import annotations

import csv
import io
import itertools
import time
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from campus.contract import State
from central import energy, maintenance
from central import timetables as tts
from central import usage as usage_mod
from central import usage_rollup as rollup
from central.ledger import Ledger, Sequenced
from central.store.base import Sample
from central.store.sqlite import SqlitePointStore
from dashboards import close_app
from dashboards.context import central
from tests.apps import add_people, central_db, register_rooms, sqlite_only, web_app
from tests.test_paging import small_and_large, statements  # noqa: F401 - a fixture
from tests.test_timetables import DOC

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = time.time()
_seq = itertools.count(1)
METER = {"profile": "meter-sdm120-modbus", "kind": "meter", "status": "ok"}
PROJ2 = {"profile": "projector-pjlink2", "kind": "projector", "status": "ok"}
PROJ1 = {"profile": "projector-pjlink", "kind": "projector", "status": "ok"}
ROOMS = {  # gateway: (school, building, room, devices)
    "gw-101": ("s1", "A", "101", {"meter": METER, "proj": PROJ2}),
    "gw-102": ("s1", "B", "102", {"meter": METER, "proj": PROJ1}),
    "gw-201": ("s2", "A", "201", {"meter": METER}),  # s2 has no timetable: outside kWh unknown
}


def t(day: str, hhmm: str) -> float:
    return datetime.fromisoformat(f"2025-09-{day}T{hhmm}").replace(tzinfo=SHANGHAI).timestamp()


READINGS = {  # gateway: [(day, time, kWh)]
    "gw-101": [("07", "23:50", 100.0),  # Sunday: the reading before Monday
               ("08", "07:00", 101.0),  # 1.0 before the first period: outside
               ("08", "08:30", 103.0),  # 2.0 in the school day
               ("08", "14:45", 104.0),  # 1.0 ending as the last period ends: outside
               ("08", "22:00", 0.5),    # the meter reset: 0.5 since, outside
               ("08", "23:00", 1.5),    # 1.0 outside
               ("09", "00:10", 2.0),    # 0.5 across midnight: Tuesday's, outside
               ("09", "09:00", 4.0),    # 2.0 in the school day
               ("10", "10:00", 7.0)],   # 3.0 on the holiday: outside
    "gw-102": [("13", "07:00", 10.0),   # Saturday (a make-up school day): nothing before it
               ("13", "12:00", 12.0),   # 2.0 in the school day
               ("14", "10:00", 15.0)],  # 3.0 on Sunday: outside
    "gw-201": [("08", "09:00", 50.0), ("08", "10:00", 51.5)],
}
# (kWh, outside) per room and day, and in the week.
DAYS = {("gw-101", "08"): (5.5, 3.5), ("gw-101", "09"): (2.5, 0.5), ("gw-101", "10"): (3.0, 3.0),
        ("gw-102", "13"): (2.0, 0.0), ("gw-102", "14"): (3.0, 3.0), ("gw-201", "08"): (1.5, None)}
WEEK = {"gw-101": (11.0, 7.0), "gw-102": (5.0, 3.0), "gw-201": (1.5, None)}
TARIFF = 0.5
WEEKS = 7 * 86400
# Projector hours relative to now: gw-101's lamp 3000 -> 3200 over three weeks (66.7 h a week, 300 h of its
# 3500 left: 4.5 weeks); its filter replaced in between (1900, then 50: a reset, then 170): 170 h in three
# weeks, 1830 of 2000 left; gw-102's class 1 lamp past its rating (due now), one reading (no rate).
HOURS = [("gw-101", "lamp_hours", [(-3 * WEEKS, 3000.0), (-WEEKS, 3140.0), (0, 3200.0)]),
         ("gw-101", "filter_hours", [(-3 * WEEKS, 1900.0), (-2 * WEEKS, 50.0), (0, 170.0)]),
         ("gw-102", "lamp_hours", [(0, 3600.0)])]


def the_week(ledger: Ledger, points: SqlitePointStore) -> None:
    for gw, (school, _b, room, devices) in ROOMS.items():
        ledger.record([], [(school, gw, State(online=True, ts=NOW, room=room, devices=devices))], [])
    points.write([Sample(ROOMS[gw][0], gw, "meter", "meter", t(d, hhmm), {"energy_kwh": v})
                  for gw, readings in READINGS.items() for d, hhmm, v in readings])
    for gw, metric, readings in HOURS:
        points.write([Sample("s1", gw, "proj", "projector", NOW - 60 + dt, {metric: v}) for dt, v in readings])
        ledger.record([Sequenced("s1", gw, "proj", next(_seq), NOW - 60 + readings[-1][0],
                                 values={metric: readings[-1][1]})], [], [])


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, central_db_url: str):
    app = web_app(central_db(tmp_path, the_week, central_db_url), monkeypatch, tariff=TARIFF)
    register_rooms(app, tuple((gw, school, room, building) for gw, (school, building, room, _d) in ROOMS.items()))
    tts.save(central(app).registry, tts.from_document("s1", DOC), "test")
    app.tokens = add_people(app)
    c = central(app)
    rollup.fill(c.registry, c.ledger, c.store, now=t("15", "12:00"), days=9)
    yield app
    close_app(app)


def get(app, path: str, role: str = "facility"):
    return app.test_client().get(path, headers={"Authorization": f"Bearer {app.tokens[role]}"})


def test_the_rollup_counts_each_rooms_kwh_and_those_outside_the_timetable(app) -> None:
    c = central(app)
    from central.usage import UsageDay

    with c.db.read() as conn:
        rows = {(r.gateway, r.day.strftime("%d")): r for r in conn.execute(UsageDay.__table__.select())}
    got = {k: (round(r.energy_kwh, 6), None if r.energy_off_kwh is None else round(r.energy_off_kwh, 6))
           for k, r in rows.items() if r.energy_kwh}
    assert got == DAYS
    assert all(r.meter_devices == 1 for r in rows.values())
    # A row rolled up before 0009 (no meters recorded) is computed again, energy included.
    with c.db.write() as conn:
        conn.execute(UsageDay.__table__.update().where(UsageDay.__table__.c.gateway == "gw-201")
                     .values(meter_devices=None, energy_kwh=None))
    again = rollup.fill(c.registry, c.ledger, c.store, now=t("15", "12:00"), days=9, refresh_today=False)
    assert again.written == 8  # its finished days; today (the 15th) has its row and is not refreshed
    assert energy.report(c.db, date(2025, 9, 8), date(2025, 9, 14)).kwh == 17.5


def test_the_report_adds_up_rooms_buildings_schools_days_in_kwh_and_yuan(app) -> None:
    body = get(app, "/api/energy?week=2025-W37").get_json()
    assert {r["gateway"]: (r["kwh"], r["off_kwh"]) for r in body["rooms"]} == WEEK
    assert (body["kwh"], body["off_kwh"], body["yuan"], body["off_yuan"], body["tariff"]) == (17.5, 10.0, 8.75, 5.0, 0.5)
    assert {(s["school"], s["kwh"], s["off_kwh"], s["rooms"]) for s in body["schools"]} == {
        ("s1", 16.0, 10.0, 2), ("s2", 1.5, None, 1)}
    assert {(b["school"], b["building"], b["kwh"]) for b in body["buildings"]} == {
        ("s1", "A", 11.0), ("s1", "B", 5.0), ("s2", "A", 1.5)}
    assert {d["day"]: (d["kwh"], d["off_kwh"]) for d in body["days"]} == {
        "2025-09-08": (7.0, 3.5), "2025-09-09": (2.5, 0.5), "2025-09-10": (3.0, 3.0), "2025-09-11": (0.0, 0.0),
        "2025-09-12": (0.0, 0.0), "2025-09-13": (2.0, 0.0), "2025-09-14": (3.0, 3.0)}
    one = get(app, "/api/energy?week=2025-W37&school=s1&building=B").get_json()
    assert [r["gateway"] for r in one["rooms"]] == ["gw-102"] and one["kwh"] == 5.0
    # Worst first, paged on the server; a school without a timetable has no "outside".
    left = get(app, "/api/energy/left-on?week=2025-W37")
    assert left.headers["X-Total-Count"] == "2"
    assert [(r["gateway"], r["off_kwh"], r["off_yuan"]) for r in left.get_json()] == [("gw-101", 7.0, 3.5),
                                                                                   ("gw-102", 3.0, 1.5)]
    second = get(app, "/api/energy/left-on?week=2025-W37&limit=1&offset=1")
    assert [r["gateway"] for r in second.get_json()] == ["gw-102"] and second.headers["X-Total-Count"] == "2"
    assert get(app, "/api/energy/left-on?week=2025-W37&q=102").headers["X-Total-Count"] == "1"


def test_the_page_and_files_say_the_same(app) -> None:
    page = get(app, "/health/energy?week=2025-W37")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'id="energy-chart"' in html and "17.5 kWh" in html
    assert html.index('data-gateway="gw-101"') < html.index('data-gateway="gw-102"')
    assert 'data-gateway="gw-201"' not in html
    assert get(app, "/health/energy?week=2025-W37&limit=1").get_data(as_text=True).count("data-gateway=") == 1
    text = get(app, "/health/energy.csv?week=2025-W37").data.decode("utf-8")
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert rows[1] == ["district", "", "", "", "", "17.5", "10", "8.75", "5"]
    assert ["room", "s1", "A", "101", "gw-101", "11", "7", "5.5", "3.5"] in rows
    assert ["room", "s2", "A", "201", "gw-201", "1.5", "", "0.75", ""] in rows
    from openpyxl import load_workbook

    xlsx = get(app, "/health/energy.xlsx?week=2025-W37")
    assert xlsx.status_code == 200 and xlsx.mimetype.endswith("spreadsheetml.sheet")
    book = load_workbook(io.BytesIO(xlsx.data))
    assert [c.value for c in book["energy"][2]][:9] == ["district", None, None, None, None, 17.5, 10, 8.75, 5]
    room_days = [[c.value for c in row] for row in book["room days"].iter_rows(min_row=2)]
    assert len(room_days) == 3 * 7 and room_days[0][4:] == ["gw-101", 5.5, 3.5]  # every metered room-day
    assert len([r for r in room_days if r[5]]) == len(DAYS)


def test_the_district_overview_and_the_city_push_carry_this_weeks_kwh(app) -> None:
    c = central(app)
    monday = date.today().toordinal() - date.today().weekday()
    row = {"school": "s1", "periods": 0, "used": 0, "power_devices": 0, "co2_over_s": 0.0, "co2_devices": 0,
           "co2_limit": None, "complete": True, "counted_to": 0.0, "computed_at": 0.0, "meter_devices": 1,
           "energy_off_kwh": 0.0}
    rollup._write(c.db, [{**row, "gateway": "gw-101", "day": date.fromordinal(monday), "energy_kwh": 12.25},
                         {**row, "gateway": "gw-102", "day": date.fromordinal(monday), "energy_kwh": 2.0},
                         {**row, "gateway": "gw-101", "day": date.fromordinal(monday - 1), "energy_kwh": 99.0}])
    body = {s["school"]: s["energy_kwh"] for s in get(app, "/api/schools").get_json()}
    assert body == {"s1": 14.25, "s2": None}
    assert [s["school"] for s in get(app, "/api/schools?sort=-energy_kwh").get_json()] == ["s1", "s2"]
    page = get(app, "/district").get_data(as_text=True)
    assert '<td class="num energy-kwh">14 kWh</td>' in page
    from central import city, city_push

    pushed = city_push.rollup(c.db, "north", 1, time.time())
    assert {s["school"]: s["energy_kwh"] for s in pushed["schools"]} == {"s1": 14.25, "s2": None}
    assert city.parse_rollup(pushed).schools[0]["energy_kwh"] == 14.25  # the city takes it
    bad = {**pushed, "schools": [{**pushed["schools"][0], "energy_kwh": -1}]}
    with pytest.raises(city.RollupError, match=r"schools\[0\].energy_kwh"):
        city.parse_rollup(bad)


def test_the_maintenance_list_dates_lamps_and_filters_from_their_hours_and_rate(app) -> None:
    c = central(app)
    parts = maintenance.parts(c.db, c.store, within_weeks=4)
    got = [(p.gateway, p.part, p.hours, p.rated, p.per_week, p.weeks_left, p.due) for p in parts]
    assert got == [("gw-102", "lamp", 3600.0, 3500.0, None, 0.0, True),
                   ("gw-101", "lamp", 3200.0, 3500.0, round(200 / 3, 3), 4.5, False),
                   ("gw-101", "filter", 170.0, 2000.0, round(170 / 3, 3), round(1830 / (170 / 3), 1), False)]
    resp = get(app, "/api/maintenance?within=5&due=1")
    assert resp.headers["X-Total-Count"] == "2"
    assert [(r["gateway"], r["part"]) for r in resp.get_json()] == [("gw-102", "lamp"), ("gw-101", "lamp")]
    assert [r["part"] for r in get(app, "/api/maintenance?q=gw-101&limit=1&offset=1").get_json()] == ["filter"]
    page = get(app, "/health/maintenance?within=5").get_data(as_text=True)
    assert page.index('data-part="gw-102/proj/lamp"') < page.index('data-part="gw-101/proj/filter"')
    text = get(app, "/health/maintenance.csv?within=5").data.decode("utf-8")
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert rows[1][:8] == ["s1", "B", "102", "gw-102", "proj", "projector-pjlink", "lamp", "3600"]
    assert rows[1][-2:] == ["0", "yes"] and len(rows) == 4
    assert get(app, "/health/maintenance.xlsx?within=5").mimetype.endswith("spreadsheetml.sheet")


def test_the_maintenance_list_reads_the_rollups_rates_not_the_store(app) -> None:
    """The usage rollup's round rates every projector part (`part_rates`); the list then answers the same
    parts, rates and dates without reading the point store, and reads it again for a rate older than a day."""
    c = central(app)
    now = time.time()
    before = maintenance.parts(c.db, c.store, within_weeks=4, now=now)
    rollup.fill(c.registry, c.ledger, c.store, now=now, days=1)
    with c.db.read() as conn:
        from central.usage import PartRate

        rated = {(r.gateway, r.metric): r.per_week for r in conn.execute(PartRate.__table__.select())}
    assert rated == {("gw-101", "lamp_hours"): round(200 / 3, 3), ("gw-101", "filter_hours"): round(170 / 3, 3),
                     ("gw-102", "lamp_hours"): None}

    class NoStore:
        def window(self, *_args: object, **_kw: object) -> None:
            raise AssertionError("the point store was read")

    assert maintenance.parts(c.db, NoStore(), within_weeks=4, now=now + 60) == before  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="point store"):
        maintenance.parts(c.db, NoStore(), within_weeks=4, now=now + 2 * 86400)  # type: ignore[arg-type]


@sqlite_only
def test_bad_requests_are_one_400_naming_the_field(app) -> None:
    for path, field in (("/api/energy?week=2025-W99", "week"), ("/api/energy?school=nowhere", "school"),
                        ("/api/energy?school=a%20b", "school"), ("/api/energy/left-on?limit=0", "limit"),
                        ("/api/maintenance?within=0", "within"), ("/api/maintenance?due=2", "due"),
                        ("/api/maintenance?offset=-1", "offset")):
        resp = get(app, path)
        assert resp.status_code == 400 and resp.get_json()["field"] == field, (path, resp.get_json())
    assert get(app, "/health/energy?month=2025-13").status_code == 400
    assert get(app, "/health/maintenance.csv?within=x").status_code == 400
    assert get(app, "/api/energy", role="teacher").status_code == 403
    assert app.test_client().get("/health/energy.csv").status_code == 302  # to the login page
    for raw in ("x", "-1", "nan", "1000"):
        with pytest.raises(ValueError, match="tariff"):
            energy.tariff_from(raw)
    assert energy.tariff_from("0.62") == 0.62


def test_campus_web_refuses_a_bad_tariff_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    from programs.cli import main

    for args, env, named in ((["--tariff", "abc"], "", "--tariff"), ([], "-2", "$CAMPUS_TARIFF")):
        monkeypatch.setenv("CAMPUS_TARIFF", env)
        with pytest.raises(SystemExit) as stop:
            main(["web", "--store", f"sqlite:///{tmp_path}/s.db", *args])
        err = capfd.readouterr().err
        assert stop.value.code == 2 and named in err and "yuan per kWh" in err, err
    assert not (tmp_path / "s.db").exists()  # refused before anything was opened


def test_energy_requests_run_as_many_statements_for_300_rooms_as_for_30(small_and_large) -> None:  # noqa: F811
    monday = date.today().toordinal() - date.today().weekday()
    week = date.today().strftime("%G-W%V")
    for district in small_and_large:
        c = central(district)
        row = {"periods": 0, "used": 0, "power_devices": 0, "co2_over_s": 0.0, "co2_devices": 0, "co2_limit": None,
               "complete": True, "counted_to": 0.0, "computed_at": 0.0, "meter_devices": 1}
        rollup._write(c.db, [{**row, "gateway": gw, "school": school, "day": date.fromordinal(monday),
                              "energy_kwh": 3.0, "energy_off_kwh": 1.0}
                             for gw, school, _b, _r in energy.lists.place_rows(c.db)])
    for path in (f"/api/energy?week={week}", f"/api/energy?week={week}&school=s03", f"/health/energy?week={week}",
                 f"/health/energy.csv?week={week}", f"/health/energy.xlsx?week={week}",
                 f"/api/energy/left-on?week={week}&limit=20", f"/api/energy/left-on?week={week}&q=gw-00",
                 f"/api/energy?week={week}&q=gw-00&limit=5", f"/api/energy?week={week}&offset=10",
                 "/api/schools?sort=-energy_kwh",
                 "/api/maintenance?within=4", "/health/maintenance"):
        few, resp_few = statements(small_and_large[0], path)
        many, resp_many = statements(small_and_large[1], path)
        assert resp_few.status_code == resp_many.status_code == 200, (path, resp_many.get_data(as_text=True)[:300])
        assert many == few, f"{path}: {few} statements with 30 rooms, {many} with 300"


def test_a_name_that_looks_like_a_formula_stays_text_in_the_xlsx_and_the_csv() -> None:
    from openpyxl import load_workbook

    from dashboards.exports import Sheet, csv_text, xlsx_bytes

    rows = [["room", "kWh", "share"], ["=HYPERLINK(\"http://x\")", 1.5, 0.25], ["@SUM(A1)", -2.0, None]]
    sheet = load_workbook(io.BytesIO(xlsx_bytes([Sheet("energy", rows, formats={2: "0.0%"}, note="note")])))["energy"]
    assert (sheet["A2"].value, sheet["A2"].data_type, sheet["B2"].value, sheet["A5"].value) == (
        '=HYPERLINK("http://x")', "s", 1.5, "note")
    assert (sheet["A3"].data_type, sheet["B3"].value, sheet["C2"].number_format, sheet["C1"].value) == (
        "s", -2.0, "0.0%", "share")
    text = csv_text(rows)
    assert text.startswith("\ufeffroom,kWh,share\r\n")
    assert "\'=HYPERLINK" in text and "\'@SUM(A1),-2," in text  # text made inert; a negative number stays one


def test_a_school_without_a_timetable_is_rolled_up_in_the_sites_zone(app) -> None:
    """The rollup's day of a school without a timetable of its own is the site's (`campus web --timezone`,
    CentralConfig.timezone), not Asia/Shanghai's: gw-201's 09:00-10:00 Shanghai readings of the 8th are the
    evening of the 7th in Los Angeles."""
    from zoneinfo import ZoneInfo

    from central.usage import UsageDay

    c = central(app)
    days = UsageDay.__table__
    with c.db.write() as conn:
        conn.execute(days.delete().where(days.c.gateway == "gw-201"))
    rollup.fill(c.registry, c.ledger, c.store, now=t("15", "12:00"), days=9,
                site_zone=ZoneInfo("America/Los_Angeles"))
    with c.db.read() as conn:
        kwh = {r.day.strftime("%d"): r.energy_kwh for r in conn.execute(days.select().where(days.c.gateway == "gw-201"))
               if r.energy_kwh}
    assert kwh == {"07": 1.5}


@pytest.mark.parametrize("raw", ["200", "12.5", "-3", "1e3", "12345678901234567890", '"12"', "true", "false",
                                 "NaN", "Infinity", "1e400", '"warning"', "null", '{"h": 1}', "[1]"])
def test_the_maintenance_list_reads_a_stored_value_as_json_does(raw: str) -> None:
    """The list reads a part's hours with `float` first (json.loads was half its CPU at 10,000 projectors,
    docs/benchmarks.md 11g): whatever the stored JSON, the part is listed or left out, and with the hours,
    exactly as `json.loads` would have it."""
    import json

    fast, slow = maintenance._number(raw), json.loads(raw)
    assert maintenance._finite(fast) == maintenance._finite(slow)
    if maintenance._finite(slow):
        assert float(fast) == float(slow)


# ---------------------------------------------------------------- the sums in SQL against the code before them


def _old_report(db, first: date, last: date, scope=energy.lists.EVERYTHING, building=None) -> energy.EnergyReport:
    """central/energy.py `report` before issue 19's paging: every room's sum, added up in Python."""
    from sqlalchemy import func, select

    from central.usage import UsageDay

    u, p = energy._u(), energy.lists.places(db)
    where = [*energy._span(first, last, scope, p), *energy._building_filter(p, building)]
    per_room = (select(u.gateway, p.c.school, p.c.building, p.c.room, func.sum(u.energy_kwh), func.sum(u.energy_off_kwh))
                .select_from(UsageDay.__table__).join(p, p.c.id == u.gateway).where(*where)
                .group_by(u.gateway, p.c.school, p.c.building, p.c.room))
    per_day = (select(u.day, func.sum(u.energy_kwh), func.sum(u.energy_off_kwh))
               .select_from(UsageDay.__table__).join(p, p.c.id == u.gateway).where(*where).group_by(u.day))
    with db.read() as conn:
        room_rows, day_rows = list(conn.execute(per_room)), list(conn.execute(per_day))
    out = energy.EnergyReport(first=first, last=last)
    buildings: dict = {}
    schools: dict = {}
    for gw, school, bld, room, kwh, off in room_rows:
        kwh, off = float(kwh or 0), None if off is None else float(off)
        r = energy.RoomEnergy(gateway=gw, school=school or "", building=bld or "", room=room or "")
        r.add(kwh, off)
        out.rooms.append(r)
        for line in (buildings.setdefault((r.school, r.building), energy.PlaceEnergy(school=r.school, building=r.building)),
                     schools.setdefault(r.school, energy.PlaceEnergy(school=r.school))):
            line.add(kwh, off)
            line.rooms += 1
        out.add(kwh, off)
    out.rooms.sort(key=lambda r: (r.school, r.building, r.room, r.gateway))
    out.buildings = sorted(buildings.values(), key=lambda b: (b.school, b.building))
    out.schools = sorted(schools.values(), key=lambda s: s.school)
    for d, kwh, off in sorted(day_rows):
        line = energy.DayEnergy(day=d)
        line.add(float(kwh or 0), None if off is None else float(off))
        out.days.append(line)
    return out


def _old_left_on(db, first: date, last: date, q: str | None, scope=energy.lists.EVERYTHING,
                 building=None) -> list[energy.RoomEnergy]:
    """`left_on` before: the whole list (worst first), in one GROUP BY over the room-days joined to places."""
    from sqlalchemy import func, select

    from central.usage import UsageDay

    u, p = energy._u(), energy.lists.places(db)
    off = func.sum(u.energy_off_kwh)
    query = (select(u.gateway, p.c.school, p.c.building, p.c.room, func.sum(u.energy_kwh), off)
             .select_from(UsageDay.__table__).join(p, p.c.id == u.gateway)
             .where(*energy._span(first, last, scope, p), *energy._building_filter(p, building),
                    u.energy_off_kwh.is_not(None), energy.lists.matches(q, u.gateway, p.c.school, p.c.building, p.c.room))
             .group_by(u.gateway, p.c.school, p.c.building, p.c.room)
             .order_by(off.desc(), energy.lists.ordered(db, p.c.school), energy.lists.ordered(db, u.gateway)))
    with db.read() as conn:
        rows = list(conn.execute(query))
    out = []
    for gw, school, bld, room, kwh, off_kwh in rows:
        r = energy.RoomEnergy(gateway=gw, school=school or "", building=bld or "", room=room or "")
        r.add(float(kwh or 0), float(off_kwh or 0))
        out.append(r)
    return out


def _close(new: energy.Energy, old: energy.Energy) -> bool:
    """The same line: kWh to within 1e-6 (SQL adds the room-days, the old code the rooms' rounded sums)."""
    return (abs(new.kwh - old.kwh) < 1e-6 and (new.off_kwh is None) == (old.off_kwh is None)
            and abs((new.off_kwh or 0) - (old.off_kwh or 0)) < 1e-6
            and (not isinstance(new, energy.PlaceEnergy)
                 or (new.school, new.building, new.rooms) == (old.school, old.building, old.rooms)))


def test_the_sums_in_sql_and_the_pages_give_what_the_python_sums_gave(tmp_path: Path, central_db_url: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19: the report's building, school, day and district lines summed in SQL, its rooms paged, and the
    left-on list's page and count in one statement, against the code before, on both engines: three schools
    (one without a timetable: no `off`), buildings, a gateway that reports without being registered, rooms
    without a meter, ties in kWh outside the timetable, days outside the span. The span is a whole ISO week,
    read from the rooms' kept week rows (`usage_weeks`, migration 0023); those and a month's (`usage_months`)
    answer exactly what the days' sums do, every line, page and scope."""
    from central.ledger import Ledger
    from central.registry import Registry

    places = [(f"gw-{i:03d}", f"s{i % 3}", f"{100 + i}", "AB"[i % 2] if i % 5 else "") for i in range(40)]
    registry = Registry(central_db_url)
    for gw, school, room, building in places[:-1]:
        registry.register_gateway(gw, school, room, building)
    ledger = Ledger(central_db_url)
    ledger.record([], [("s2", places[-1][0], State(online=True, ts=NOW, room="999", devices={"meter": METER}))], [])
    ledger.close()
    first, last = date(2025, 9, 8), date(2025, 9, 14)
    row = {"periods": 8, "used": 1, "power_devices": 1, "co2_over_s": 0.0, "co2_devices": 0, "co2_limit": None,
           "complete": True, "counted_to": 0.0, "computed_at": 0.0}
    rows = []
    for i, (gw, school, _room, _b) in enumerate(places):
        for d in range(-1, 9):  # a day before the span and one after it
            kwh = round(((i * 37 + d * 11) % 23) / 7 + 0.1, 6)
            rows.append({**row, "gateway": gw, "school": school, "day": date.fromordinal(first.toordinal() + d),
                         "meter_devices": 0 if i % 9 == 4 else 1, "energy_kwh": 0.0 if i % 9 == 4 else kwh,
                         "energy_off_kwh": None if school == "s1" else round((i % 4) * 0.25, 6)})
    rollup._write(registry.db, rows)
    db = registry.db
    try:
        for scope, building in ((energy.lists.EVERYTHING, None), (energy.lists.Scope(school="s0"), None),
                                (energy.lists.Scope(school="s2"), "B"), (energy.lists.Scope(schools=("s1", "s2")), None)):
            old = _old_report(db, first, last, scope, building)
            new = energy.report(db, first, last, scope, building)
            assert [(r.gateway, r.school, r.building, r.room, r.kwh, r.off_kwh) for r in new.rooms] == \
                [(r.gateway, r.school, r.building, r.room, r.kwh, r.off_kwh) for r in old.rooms]
            assert len(new.buildings) == len(old.buildings) and all(map(_close, new.buildings, old.buildings))
            assert len(new.schools) == len(old.schools) and all(map(_close, new.schools, old.schools))
            assert [(d.day, d.kwh, d.off_kwh) for d in new.days] == [(d.day, d.kwh, d.off_kwh) for d in old.days]
            assert _close(new, old) and new.room_count == len(old.rooms) and old.rooms
            whole_left = _old_left_on(db, first, last, None, scope, building)
            assert new.left_on_count == len(whole_left)
            # The rooms a page at a time (with and without `q`), and the left-on list, with and without its total.
            for limit, offset, q in ((5, 0, None), (5, 5, None), (7, 20, "gw-01"), (3, 0, "A"), (5, 500, None)):
                paging = energy.lists.Paging(limit=limit, offset=offset, q=q)
                want = [r for r in old.rooms if not q or any(q.lower() in v.lower()
                                                             for v in (r.gateway, r.school, r.building, r.room))]
                page = energy.report(db, first, last, scope, building, rooms=paging)
                assert [(r.gateway, r.kwh, r.off_kwh) for r in page.rooms] == \
                    [(r.gateway, r.kwh, r.off_kwh) for r in want[offset:offset + limit]]
                assert page.room_count == len(want) and _close(page, old)
                left_want = _old_left_on(db, first, last, q, scope, building)
                for total in (None, new.left_on_count):
                    left = energy.left_on(db, first, last, paging, scope, building, total)
                    assert [(r.gateway, r.kwh, r.off_kwh) for r in left.items] == \
                        [(r.gateway, r.kwh, r.off_kwh) for r in left_want[offset:offset + limit]]
                    assert left.total == len(left_want)
            assert not energy.report(db, first, last, scope, building, rooms=energy.NO_ROOMS).rooms
        ties = _old_left_on(db, first, last, None)
        assert len({r.off_kwh for r in ties}) < len(ties)  # the order's names after the kWh were needed
        # The kept rows of a week and a month against the days' sums (the kept rows switched off), exactly.
        assert usage_mod.kept_span(first, last) is not None
        spans = ((first, last), usage_mod.month_span(first), (date(2025, 8, 25), date(2025, 8, 31)))
        assert usage_mod.kept_span(*spans[1]) is not None
        def both(a: date, b: date, scope: energy.lists.Scope, building: str | None,
                 paging: energy.lists.Paging | None) -> tuple:
            left = energy.left_on(db, a, b, paging or energy.lists.Paging(limit=9), scope, building)
            return (energy.report(db, a, b, scope, building, rooms=paging).as_dict(), [vars(r) for r in left.items],
                    left.total)

        for a, b in spans:
            for scope, building in ((energy.lists.EVERYTHING, None), (energy.lists.Scope(school="s2"), "B"),
                                    (energy.lists.Scope(schools=("s1", "s2")), None)):
                for paging in (None, energy.lists.Paging(limit=7, offset=14), energy.lists.Paging(q="A")):
                    kept = both(a, b, scope, building, paging)
                    with monkeypatch.context() as m:
                        m.setattr(usage_mod, "kept_span", lambda _a, _b: None)
                        assert kept == both(a, b, scope, building, paging)
                    assert a.month == 8 or kept[0]["kwh"] > 0
    finally:
        db.engine.dispose()


def test_api_energy_is_paged_by_default(small_and_large) -> None:  # noqa: F811
    """`GET /api/energy`: the totals whole, its rooms 100 by default (up to 500), `X-Total-Count` all of them."""
    monday = date.today().toordinal() - date.today().weekday()
    week = date.today().strftime("%G-W%V")
    large = small_and_large[1]
    c = central(large)
    row = {"periods": 0, "used": 0, "power_devices": 0, "co2_over_s": 0.0, "co2_devices": 0, "co2_limit": None,
           "complete": True, "counted_to": 0.0, "computed_at": 0.0, "meter_devices": 1}
    rollup._write(c.db, [{**row, "gateway": gw, "school": school, "day": date.fromordinal(monday),
                          "energy_kwh": 3.0, "energy_off_kwh": 1.0} for gw, school, _b, _r in energy.lists.place_rows(c.db)])
    client = large.test_client()
    bearer = {"Authorization": f"Bearer {large.tokens['admin']}"}
    first = client.get(f"/api/energy?week={week}", headers=bearer)
    body = first.get_json()
    assert first.headers["X-Total-Count"] == "300" and body["room_count"] == 300 and len(body["rooms"]) == 100
    assert body["kwh"] == 900.0 and sum(s["rooms"] for s in body["schools"]) == 300
    last = client.get(f"/api/energy?week={week}&limit=500&offset=250", headers=bearer).get_json()
    assert len(last["rooms"]) == 50 and last["kwh"] == 900.0
    for bad, field in (("limit=501", "limit"), ("offset=-1", "offset"), ("limit=x", "limit")):
        resp = client.get(f"/api/energy?week={week}&{bad}", headers=bearer)
        assert resp.status_code == 400 and resp.get_json()["field"] == field, bad
    page = client.get(f"/health/energy?week={week}", headers=bearer).get_data(as_text=True)
    assert "<b>300</b>" in page and page.count("data-gateway=") == 20
