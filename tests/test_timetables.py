"""School timetables (central/timetables.py, central/timetable_csv.py, dashboards/timetables.py): the two
questions (which period now, the periods between two dates) with terms, holidays and make-up working
days in the school's time zone; saved and read back on both engines; the CSV import all or nothing
with each bad line named; the JSON API refusing hostile bodies with one 400 naming the field and
changing nothing; the page for admins only to change."""

from __future__ import annotations

import io
import json
import re
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from central import timetable_csv as tcsv
from central import timetables as tts
from dashboards import close_app
from dashboards.context import central
from tests.apps import add_people, central_db, register_rooms, sqlite_only, two_rooms, web_app

SHANGHAI = ZoneInfo("Asia/Shanghai")
# Monday to Friday three periods, Monday a fourth in the afternoon; a term from September; 10 September
# (a Wednesday) a holiday; Saturday 13 September a make-up day following Monday.
DOC = {
    "timezone": "Asia/Shanghai",
    "periods": [{"weekday": d, "number": n, "name": f"第{n}节", "start": s, "end": e}
                for d in range(1, 6) for n, s, e in ((1, "08:00", "08:45"), (2, "09:00", "09:45"),
                                                      (3, "10:00", "10:45"))]
               + [{"weekday": 1, "number": 4, "start": "14:00", "end": "14:45"}],
    "terms": [{"name": "第一学期", "start": "2025-09-01", "end": "2026-01-16"}],
    "holidays": [{"name": "运动会", "start": "2025-09-10"}],
    "workdays": [{"name": "调休", "start": "2025-09-13", "follows": 1}],
}


def at(day: str, hhmm: str, zone: ZoneInfo = SHANGHAI) -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=zone)


def test_which_period_a_school_is_in_and_its_periods_between_two_dates() -> None:
    tt = tts.from_document("s1", DOC)
    assert tts.period_at(tt, at("2025-09-08", "08:00"))[1].number == 1      # start included
    assert tts.period_at(tt, at("2025-09-08", "08:45")) is None             # end excluded
    assert tts.period_at(tt, at("2025-09-08", "14:10"))[1].number == 4
    assert tts.period_at(tt, at("2025-09-09", "14:10")) is None             # Tuesday has no 4th
    assert tts.period_at(tt, at("2025-09-10", "08:10")) is None             # the holiday
    assert tts.period_at(tt, at("2025-09-13", "14:10"))[1].number == 4      # Saturday follows Monday
    assert tts.period_at(tt, at("2025-09-14", "08:10")) is None             # Sunday
    assert tts.period_at(tt, at("2025-08-25", "08:10")) is None             # before the term
    # A unix time is read in the school's zone: 00:10 UTC is 08:10 in Shanghai.
    assert tts.period_at(tt, at("2025-09-08", "00:10", ZoneInfo("UTC")).timestamp())[1].number == 1
    slots = tts.class_periods(tt, date(2025, 9, 8), date(2025, 9, 14))
    per_day = {}
    for s in slots:
        per_day[s.day.isoformat()] = per_day.get(s.day.isoformat(), 0) + 1
    assert per_day == {"2025-09-08": 4, "2025-09-09": 3, "2025-09-11": 3, "2025-09-12": 3, "2025-09-13": 4}
    assert slots[0].start == at("2025-09-08", "08:00").timestamp() and slots[0].end - slots[0].start == 45 * 60
    with pytest.raises(ValueError, match="before"):
        tts.class_periods(tt, date(2025, 9, 8), date(2025, 9, 1))
    with pytest.raises(ValueError, match="at most"):
        tts.class_periods(tt, date(2025, 1, 1), date(2026, 6, 1))


@pytest.mark.parametrize("change, field, words", [
    ({"periods": [{"weekday": 1, "number": 1, "start": "08:00", "end": "07:59"}]}, "periods[0].end", "not after"),
    ({"periods": [{"weekday": 1, "number": 1, "start": "8点", "end": "09:00"}]}, "periods[0].start", "HH:MM"),
    ({"periods": [{"weekday": 1, "number": 1, "start": "25:00", "end": "26:00"}]}, "periods[0].start", "HH:MM"),
    ({"periods": [{"weekday": 8, "number": 1, "start": "08:00", "end": "09:00"}]}, "periods[0].weekday", "1-7"),
    ({"periods": [{"weekday": 1, "number": 0, "start": "08:00", "end": "09:00"}]}, "periods[0].number", "1-20"),
    ({"periods": [{"weekday": 1, "number": 1, "start": "08:00", "end": "09:00"},
                  {"weekday": 1, "number": 2, "start": "08:30", "end": "09:30"}]}, "periods[1].start", "overlaps"),
    ({"periods": [{"weekday": 1, "number": 1, "start": "08:00", "end": "09:00"},
                  {"weekday": 1, "number": 1, "start": "10:00", "end": "11:00"}]}, "periods[1].number", "twice"),
    ({"periods": [{"weekday": 1, "number": 1, "start": "08:00"}]}, "periods[0].end", "required"),
    ({"periods": "all of them"}, "periods", "list"),
    ({"periods": [{"weekday": 1, "number": 1, "start": "08:00", "end": "09:00", "room": 1}]}, "periods[0].room",
     "unknown"),
    ({"terms": [{"start": "2025-09-01", "end": "2025-08-01"}]}, "terms[0].end", "before the start"),
    ({"terms": [{"start": "9999-09-01", "end": "9999-12-01"}]}, "terms[0].start", "not a school date"),
    ({"terms": [{"start": "2025-02-30"}]}, "terms[0].start", "YYYY-MM-DD"),
    ({"terms": [{"start": "2025-01-01", "end": "2027-01-01"}]}, "terms[0].end", "longer than"),
    ({"terms": [{"start": "2025-09-01", "end": "2026-01-16"}, {"start": "2026-01-10", "end": "2026-06-30"}]},
     "terms[1].start", "overlaps"),
    ({"holidays": [{"start": "2025-10-01", "end": "2025-10-08", "follows": 5}]}, "holidays[0].follows", "unknown"),
    ({"workdays": [{"start": "2025-09-28"}]}, "workdays[0].follows", "follows"),
    ({"holidays": [{"start": "2025-10-01", "end": "2025-10-08"}], "workdays": [{"start": "2025-10-05", "follows": 5}]},
     "workdays[0].start", "inside the holiday"),
    ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
    ({"periods": [{"weekday": 1, "number": 1, "start": "08:00", "end": "09:00", "name": "a\nb"}]},
     "periods[0].name", "line"),
    ({"school": "s2"}, "school", "URL"),
    ({"periods": [{"weekday": 1, "number": n % 20 + 1, "start": "08:00", "end": "09:00"} for n in range(200)]},
     "periods", "at most"),
])
def test_a_bad_timetable_is_refused_naming_the_field(change: dict, field: str, words: str) -> None:
    with pytest.raises(tts.TimetableError) as err:
        tts.from_document("s1", {"timezone": "Asia/Shanghai", **change})
    assert err.value.path == field and words in err.value.message, (err.value.path, err.value.message)


CSV_ZH = """\
# 作息时间表
类型,名称,星期,节次,开始,结束,按星期
节次,第1节,周一至周五,1,8:00,08:45,
节次,第2节,1-5,2,09:00,09:45,
节次,第3节,1-5,3,10:00,10:45,
节次,,1,4,14:00,14:45,
学期,第一学期,,,2025-09-01,2026-01-16,
假期,运动会,,,2025-09-10,,
调休,调休,,,2025/09/13,,周一
"""


def test_a_chinese_excel_file_reads_as_the_same_timetable_and_writes_back() -> None:
    report = tcsv.parse(tcsv.decode_csv(CSV_ZH.encode("gb18030")), "s1")
    assert report.errors == [] and report.rows == 7
    assert report.timetable == tts.from_document("s1", DOC)
    again = tcsv.parse(tcsv.to_csv(report.timetable), "s1")
    assert again.errors == [] and again.timetable == report.timetable
    assert tcsv.parse(tcsv.to_csv(report.timetable, chinese=True), "s1").timetable == report.timetable
    example = tcsv.parse(tcsv.EXAMPLE_CSV, "s1")
    assert example.errors == [] and example.timetable is not None


def test_every_bad_line_is_named_with_its_column_as_the_file_spells_it() -> None:
    text = ("类型,名称,星期,节次,开始,结束,按星期\n"
            "节次,,1-5,1,08:00,08:45,\n"
            "节次,,1,2,08:30,09:10,\n"          # overlaps line 2 on Monday
            "节次,,1-5,3,10:00,09:00,\n"        # ends before it starts
            "假期,国庆,,,2025-10-01,2025-13-08,\n"
            "上学,,,,2025-09-01,,\n"            # no such type
            "调休,,,,2025-09-28,,\n"            # follows missing
            "节次,,1,5,11:00,11:45,x,y\n")      # too many cells
    problems = [(e.line, e.column, e.message) for e in tcsv.parse(text, "s1").errors]
    assert [(line, column) for line, column, _ in problems] == [
        (3, "开始"), (4, "结束"), (5, "结束"), (6, "类型"), (7, "按星期"), (8, "")]
    assert "overlaps period 1 (08:00-08:45, line 2)" in problems[0][2]
    header = tcsv.parse("type,start,colour\nperiod,08:00,red\n", "s1").errors
    assert [(e.line, e.column) for e in header] == [(1, "colour")]
    assert "neither UTF-8 nor GB18030" in tcsv.import_csv(None, "s1", b"\xff\xfe\x00bad\x81").errors[0].message


# ---------------------------------------------------------------- the database and the web


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, central_db_url: str):
    app = web_app(central_db(tmp_path, two_rooms, central_db_url), monkeypatch)
    register_rooms(app)
    app.tokens = add_people(app)
    yield app
    close_app(app)


def call(app, method: str, path: str, role: str = "admin", **kw):
    return app.test_client().open(path, method=method, headers={"Authorization": f"Bearer {app.tokens[role]}"}, **kw)


def test_a_timetable_put_is_read_back_and_a_bad_one_changes_nothing(app) -> None:
    assert call(app, "GET", "/api/schools/s1/timetable").get_json()["periods"] == []
    put = call(app, "PUT", "/api/schools/s1/timetable", json=DOC)
    assert put.status_code == 200, put.get_json()
    got = call(app, "GET", "/api/schools/s1/timetable", role="facility").get_json()
    assert got["periods"][0] == {"weekday": 1, "number": 1, "name": "第1节", "start": "08:00", "end": "08:45"}
    assert len(got["periods"]) == 16 and got["updated_by"] == "boss"
    assert got["holidays"] == [{"name": "运动会", "start": "2025-09-10", "end": "2025-09-10"}]
    assert got["workdays"] == [{"name": "调休", "start": "2025-09-13", "end": "2025-09-13", "follows": 1}]
    assert tts.from_document("s1", got) == tts.from_document("s1", DOC)  # what it answers, it takes back
    bad = call(app, "PUT", "/api/schools/s1/timetable",
               json={**DOC, "periods": DOC["periods"] + [{"weekday": 2, "number": 9, "start": "10:30", "end": "11:00"}]})
    assert bad.status_code == 400 and bad.get_json()["field"] == "periods[16].start", bad.get_json()
    assert "overlaps period 3" in bad.get_json()["error"]
    for body, field in (([1, 2], None), ({"timezone": 5}, "timezone")):
        refused = call(app, "PUT", "/api/schools/s1/timetable", json=body)
        assert refused.status_code == 400 and refused.get_json().get("field") == field
    assert call(app, "GET", "/api/schools/s1/timetable").get_json() == got  # nothing changed
    periods = call(app, "GET", "/api/schools/s1/timetable/periods?start=2025-09-12&end=2025-09-14").get_json()
    assert [(p["date"], p["number"]) for p in periods["periods"]] == [
        ("2025-09-12", 1), ("2025-09-12", 2), ("2025-09-12", 3),
        ("2025-09-13", 1), ("2025-09-13", 2), ("2025-09-13", 3), ("2025-09-13", 4)]
    assert periods["periods"][0]["start_ts"] == at("2025-09-12", "08:00").timestamp()


@sqlite_only
def test_refusals_unknown_schools_and_oversized_bodies(app) -> None:
    assert call(app, "PUT", "/api/schools/s1/timetable", role="facility", json=DOC).status_code == 403
    assert call(app, "PUT", "/api/schools/s1/timetable", role="teacher", json=DOC).status_code == 403
    assert call(app, "GET", "/api/schools/s1/timetable", role="teacher").status_code == 403
    assert app.test_client().get("/api/schools/s1/timetable").status_code == 401
    unknown = call(app, "PUT", "/api/schools/nowhere/timetable", json=DOC)
    assert unknown.status_code == 404 and "nowhere" in unknown.get_json()["error"]
    assert call(app, "GET", "/api/schools/no%20such/timetable").status_code == 404
    big = {**DOC, "terms": [{"name": "x" * 1000, "start": "2025-09-01"}] * 3000}
    assert call(app, "PUT", "/api/schools/s1/timetable", data=json.dumps(big),
                content_type="application/json").status_code == 413
    for query, field in (("start=2025-09-01&end=2027-01-01", "end"), ("start=1066-10-14", "start"),
                         ("start=yesterday", "start"), ("start=2025-09-10&end=2025-09-01", "end")):
        resp = call(app, "GET", f"/api/schools/s1/timetable/periods?{query}")
        assert resp.status_code == 400 and resp.get_json()["field"] == field, (query, resp.get_json())
    assert tts.load(central(app).registry, "s1") is None


def login(app, user: str, password: str):
    client = app.test_client()
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
    assert client.post("/login", data={"csrf": token, "username": user, "password": password}).status_code == 302
    page = client.get("/health/timetables").get_data(as_text=True)
    return client, re.search(r'name="csrf" value="([^"]+)"', page).group(1)


@sqlite_only
def test_the_page_imports_csv_all_or_nothing_for_admins_only(app) -> None:
    client, csrf = login(app, "boss", "boss-password")
    assert "s1" in client.get("/health/timetables").get_data(as_text=True)
    bad = CSV_ZH.replace("10:00,10:45", "10:00,9:00")
    resp = client.post("/health/timetables/s1", data={"csrf": csrf, "text": bad})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "Nothing changed" in page and "not after the start" in page
    assert tts.load(central(app).registry, "s1") is None
    resp = client.post("/health/timetables/s1", data={"csrf": csrf, "file": (io.BytesIO(CSV_ZH.encode("gb18030")),
                                                                             "作息.csv")},
                       content_type="multipart/form-data")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    saved = tts.load(central(app).registry, "s1")
    assert saved.periods == tts.from_document("s1", DOC).periods
    assert "08:00–08:45" in client.get("/health/timetables/s1").get_data(as_text=True)
    listed = client.get("/health/timetables").get_data(as_text=True)
    assert re.search(r">s1</a></td>\s*<td class=\"num\">16</td>", listed), listed
    assert client.post("/health/timetables/s1", data={"text": CSV_ZH}).status_code == 403  # no CSRF token
    resp = client.post("/health/timetables/s1", data={"csrf": csrf, "timezone": "Asia/Urumqi"})
    assert resp.status_code == 200 and tts.load(central(app).registry, "s1").timezone == "Asia/Urumqi"
    assert client.post("/health/timetables/s1", data={"csrf": csrf, "timezone": "Nowhere/City"}).status_code == 400
    csv_file = client.get("/health/timetables/s1/timetable.csv")
    assert csv_file.status_code == 200 and csv_file.data.startswith("\ufeff".encode())
    facility, fcsrf = login(app, "fm", "fm-password")
    assert facility.get("/health/timetables/s1").status_code == 200
    assert "Check and save" not in facility.get("/health/timetables/s1").get_data(as_text=True)
    assert facility.post("/health/timetables/s1", data={"csrf": fcsrf, "text": "类型,开始\n"}).status_code == 403
    assert tts.load(central(app).registry, "s1").periods == saved.periods
    assert client.get("/health/timetables/nowhere").status_code == 404


def test_a_school_without_a_timetable_is_in_the_sites_zone_and_a_first_one_keeps_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a site in Asia/Urumqi, a first timetable without a zone (a CSV has none; a PUT may leave it out)
    is in the site's zone, not Asia/Shanghai: it would move the school's pages to another clock."""
    app = web_app(central_db(tmp_path, two_rooms), monkeypatch, timezone="Asia/Urumqi")
    try:
        register_rooms(app, (("gw-101", "s1", "101", "A"), ("gw-201", "s2", "201", "B")))
        app.tokens = add_people(app)
        assert call(app, "GET", "/api/schools/s1/timetable").get_json()["timezone"] == "Asia/Urumqi"
        doc = {k: v for k, v in DOC.items() if k != "timezone"}
        assert call(app, "PUT", "/api/schools/s1/timetable", json=doc).status_code == 200
        report = tcsv.import_csv(central(app).registry, "s2", CSV_ZH.encode(), "boss", "Asia/Urumqi")
        assert report.ok, report.errors
        assert {s: tts.load(central(app).registry, s).timezone for s in ("s1", "s2")} == {
            "s1": "Asia/Urumqi", "s2": "Asia/Urumqi"}
    finally:
        close_app(app)
