"""Attendance (central/attendance.py, dashboards/attendance.py): the roster import, the register made from
hand-made swipes and check-ins, who sees names, corrections, retention and the exports.

A roster's card numbers and QR codes must appear nowhere in the central database (every text value read
back, and on SQLite the file's own bytes with its WAL) nor in the audit trail."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from sqlalchemy import select

from campus.contract import ATTENDANCE_EVENT, CARD_SWIPE_EVENT
from central import attendance as att
from central import ledger as ledger_mod
from central import timetables as tts
from central.attendance_summary import _keep_days as keep_days
from central.ledger import Sequenced
from dashboards import close_app
from dashboards.context import central, web
from protocols.card_ids import card_hash, card_uid, qr_pseudonym
from tests.apps import add_people, central_db, register_rooms, sqlite_only, two_rooms, web_app
from tests.test_podium_cards import call, text_values

ZONE = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 30)  # a Monday
NOW = datetime.combine(DAY, dtime(20, 0), ZONE).timestamp()
ROSTER = ("姓名,班级,角色,一卡通,二维码,教室\n"
          "张三,一班,学生,0x0009356179,,101\n"
          "李四,一班,学生,A1B2C3D4,,101\n"
          "王五,一班,学生,,STU-101-0003,101\n"
          "赵六,二班,学生,3735928559,,102\n"
          "钱老师,,教师,0x00AABBCCDD,,\n")
RAW = ("0009356179", "a1b2c3d4", "3735928559", "00aabbccdd", "stu-101-0003", "deadbeef")
ROSTER_API = "/api/schools/s1/roster"


def at(hour: int, minute: int, day: date = DAY) -> float:
    return datetime.combine(day, dtime(hour, minute), ZONE).timestamp()


@pytest.fixture
def app(tmp_path: Path, central_db_url: str, monkeypatch: pytest.MonkeyPatch):
    app = web_app(central_db(tmp_path, lambda ledger, points: two_rooms(ledger, points), central_db_url), monkeypatch)
    register_rooms(app)
    app.tokens = add_people(app, {  # type: ignore[attr-defined]
        "admin": ("boss", "boss-password", []), "facility": ("fm", "fm-password", []),
        "teacher": ("teach", "teach-password", [("s1", "101")])})
    reg = central(app).registry
    reg.add_user("fm-s1", "fm-s1-password", "facility", schools=["s1"])
    app.tokens["school"] = reg.issue_token("fm-s1")  # type: ignore[attr-defined]
    periods = tuple(p for w in range(1, 8) for p in (tts.Period(w, 1, dtime(8), dtime(8, 45), "第一节"),
                                                      tts.Period(w, 2, dtime(9), dtime(9, 45), "第二节")))
    tts.save(reg, tts.Timetable("s1", "Asia/Shanghai", periods))
    yield app
    close_app(app)


def card(app: Flask, number: str) -> str:
    return card_hash(central(app).registry.card_secret("s1"), card_uid(number))


def swipes(app: Flask, gateway: str, events: list[tuple[float, str, dict[str, Any]]], first_seq: int = 10) -> None:
    central(app).ledger.record([Sequenced("s1", gateway, "reader", first_seq + n, ts, event=(kind, data))
                                for n, (ts, kind, data) in enumerate(events)], [], [])


def imported(app: Flask) -> None:
    resp = call(app, "POST", ROSTER_API, "admin", data=ROSTER.encode("gb18030"), content_type="text/csv")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"added": 5, "changed": 0, "removed": 0, "classes": 2}


def a_day_of_swipes(app: Flask) -> str:
    """Period 1: 张三 early and again (folded), 李四 late, 王五 absent, 赵六 of 二班 in 101, the teacher, an
    unknown card and a raw QR code (which matches nothing); period 2: 王五 by QR. The unknown pseudonym."""
    secret = central(app).registry.card_secret("s1")
    unknown = card_hash(secret, "CAFEF00D")  # on no roster (3735928559 is DEADBEEF)
    swipes(app, "gw-101", [
        (at(7, 55), CARD_SWIPE_EVENT, {"card": card(app, "0x0009356179"), "reader": "r"}),
        (at(8, 20), CARD_SWIPE_EVENT, {"card": card(app, "0x0009356179"), "reader": "r"}),
        (at(8, 7), CARD_SWIPE_EVENT, {"card": card(app, "A1B2C3D4"), "reader": "r"}),
        (at(8, 2), CARD_SWIPE_EVENT, {"card": card(app, "3735928559"), "reader": "r"}),
        (at(8, 0), CARD_SWIPE_EVENT, {"card": card(app, "0x00AABBCCDD"), "reader": "r"}),
        (at(8, 3), CARD_SWIPE_EVENT, {"card": unknown, "reader": "r"}),
        (at(8, 4), ATTENDANCE_EVENT, {"code": "STU-101-0003", "camera": "cam"}),
        (at(9, 1), ATTENDANCE_EVENT, {"person": qr_pseudonym(secret, "STU-101-0003"), "camera": "cam"}),
    ])
    return unknown


def statuses(entries: list[att.Entry]) -> dict[tuple[int, str], tuple[str, str, str | None]]:
    return {(e.period, e.person): (e.klass, e.status, e.source) for e in entries}


# ---------------------------------------------------------------- the roster


def test_a_chinese_gb18030_roster_is_imported_and_no_number_or_code_is_stored(app: Flask) -> None:
    imported(app)
    people = att.roster(central(app).registry, "s1")
    assert [(p["class"], p["name"], p["role"], p["room"]) for p in people] == [
        ("", "钱老师", "staff", ""), ("一班", "张三", "student", "101"), ("一班", "李四", "student", "101"),
        ("一班", "王五", "student", "101"), ("二班", "赵六", "student", "102")]
    assert att.class_rooms(central(app).registry, "s1") == {"一班": "101", "二班": "102"}
    # Imported again in English, one person less: the others keep their rows, one is removed.
    english = "name,class,role,card,qr,room\n" + "\n".join(ROSTER.splitlines()[1:5]).replace("学生", "student")
    resp = call(app, "POST", ROSTER_API, "admin", data=english.encode(), content_type="text/csv")
    assert resp.get_json() == {"added": 0, "changed": 4, "removed": 1, "classes": 2}
    everything = text_values(app)
    assert not [raw for raw in RAW if raw in everything]
    path = central(app).registry.db.path
    if path is not None:  # SQLite: the file and its WAL, free pages included
        data = b"".join(p.read_bytes() for p in Path(path).parent.glob(Path(path).name + "*")).lower()
        assert data and not [raw for raw in RAW if raw.encode() in data]
    trail = json.dumps(central(app).registry.audit_trail(), ensure_ascii=False).lower()
    assert "attendance.roster" in trail and not [raw for raw in RAW if raw in trail]


def test_a_bad_roster_names_its_lines_and_changes_nothing(app: Flask) -> None:
    imported(app)
    before = att.roster(central(app).registry, "s1")
    bad = ("name,class,role,card,qr,room\n"
           "甲,一班,student,A1B2C3D4,,101\n"
           "乙,一班,student,12345,,101\n"       # not a card number
           "丙,一班,pupil,0x0009356179,,101\n"  # no such role
           "丁,一班,student,A1B2C3D4,,101\n"     # the same card as line 2
           "戊,,student,3735928559,,\n"          # a student without a class
           "己,一班,student,,,101\n"             # neither card nor QR code
           "庚,三班,student,0x00AABBCCDD,,999\n")  # no such room
    resp = call(app, "POST", ROSTER_API, "admin", data=bad.encode(), content_type="text/csv")
    assert resp.status_code == 400
    assert [(e["line"], e["column"]) for e in resp.get_json()["errors"]] == [
        (3, "card"), (4, "role"), (5, "card"), (6, "class"), (7, "card"), (8, "room")]
    assert "12345" not in resp.get_data(as_text=True) and "a1b2c3d4" not in resp.get_data(as_text=True).lower()
    assert att.roster(central(app).registry, "s1") == before
    for body, line in ((b"\xff\xfe\x00bad", 1), (b"", 1), (b"name,shoe\n", 1), ("姓名\n".encode("gb18030"), 1)):
        resp = call(app, "POST", ROSTER_API, "admin", data=body, content_type="text/csv")
        assert resp.status_code == 400 and resp.get_json()["errors"][0]["line"] == line, resp.get_json()
    assert call(app, "POST", ROSTER_API, "facility", data=ROSTER.encode(), content_type="text/csv").status_code == 403
    assert call(app, "POST", ROSTER_API, "teacher", data=ROSTER.encode(), content_type="text/csv").status_code == 403
    assert call(app, "POST", "/api/schools/nope/roster", "admin", data=ROSTER.encode()).status_code == 404
    trail = json.dumps(central(app).registry.audit_trail()).lower()
    assert "12345" not in trail and "a1b2c3d4" not in trail


# ---------------------------------------------------------------- the register


def test_the_register_from_swipes_and_check_ins(app: Flask) -> None:
    imported(app)
    unknown = a_day_of_swipes(app)
    entries = att.register(central(app).registry, "s1", "101", DAY, now=NOW)
    assert statuses(entries) == {
        (1, "张三"): ("一班", "present", "card"), (1, "李四"): ("一班", "late", "card"),
        (1, "王五"): ("一班", "absent", None), (1, "赵六"): ("二班", "present", "card"),
        (1, "钱老师"): ("", "present", "card"), (1, unknown[:att.PREFIX_CHARS]): ("", "unknown", "card"),
        (2, "张三"): ("一班", "absent", None), (2, "李四"): ("一班", "absent", None),
        (2, "王五"): ("一班", "present", "qr")}
    first = {(e.period, e.person): e.first_seen for e in entries}
    assert first[(1, "张三")] == at(7, 55)  # the second swipe folded into the first
    assert [c for c in att.counts(entries) if c["class"] == "一班"] == [
        {"date": "2026-11-30", "period": 1, "class": "一班", "room": "101", "present": 1, "late": 1, "absent": 1,
         "excused": 0, "unknown": 0},
        {"date": "2026-11-30", "period": 2, "class": "一班", "room": "101", "present": 1, "late": 0, "absent": 2,
         "excused": 0, "unknown": 0}]
    one_class = att.register(central(app).registry, "s1", "101", DAY, klass="一班", now=NOW)
    assert {e.klass for e in one_class} == {"一班"}
    # Before period 2 starts it is not on the register; a longer grace makes 李四 on time.
    assert {e.period for e in att.register(central(app).registry, "s1", "101", DAY, now=at(8, 50))} == {1}
    att.save_settings(central(app).registry, "s1", "10", "150", "boss")
    again = att.register(central(app).registry, "s1", "101", DAY, now=NOW)
    assert statuses(again)[(1, "李四")][1] == "present"
    assert att.register(central(app).registry, "s1", "102", DAY, now=NOW)[0].status == "absent"  # 赵六 at home


def test_a_teacher_corrects_an_entry_and_it_is_audited(app: Flask) -> None:
    imported(app)
    a_day_of_swipes(app)
    page = "/attendance/s1/rooms/101/correct"
    form = {"date": DAY.isoformat(), "period": "1", "person": "王五", "class": "一班", "status": "excused"}
    assert call(app, "POST", page, "facility", data=form).status_code == 403
    assert call(app, "POST", page, "teacher", data={**form, "status": "unknown"}).status_code == 400
    assert call(app, "POST", page, "teacher", data={**form, "person": "nobody"}).status_code == 404
    assert call(app, "POST", page, "teacher", data={**form, "person": "王\x00五"}).status_code == 400
    assert call(app, "POST", "/attendance/s1/rooms/102/correct", "teacher", data=form).status_code == 403
    resp = call(app, "POST", page, "teacher", data=form)
    assert resp.status_code == 200
    entry = next(e for e in att.register(central(app).registry, "s1", "101", DAY, now=NOW)
                 if (e.period, e.person) == (1, "王五"))
    assert (entry.status, entry.corrected_by) == ("excused", "teach")
    assert any(r["action"] == "attendance.correct" and r["user"] == "teach" and "王五" in r["detail"]
               for r in central(app).registry.audit_trail())


# ---------------------------------------------------------------- who sees what


def test_the_api_is_scoped_and_a_district_account_sees_counts_only(app: Flask) -> None:
    imported(app)
    unknown = a_day_of_swipes(app)
    url = f"/api/attendance?gateway=gw-101&date={DAY}"
    resp = call(app, "GET", url, "teacher")
    assert resp.status_code == 200 and resp.headers["X-Total-Count"] == "9"
    named = resp.get_json()
    assert {"period": 1, "person": "李四", "class": "一班", "status": "late", "first_seen": at(8, 7),
            "source": "card"}.items() <= next(e for e in named if e["person"] == "李四").items()
    assert unknown not in resp.get_data(as_text=True)  # an unknown card only by its prefix
    paged = call(app, "GET", url + "&limit=2&offset=2", "teacher")
    assert paged.get_json() == named[2:4] and paged.headers["X-Total-Count"] == "9"
    assert call(app, "GET", f"/api/attendance?gateway=gw-102&date={DAY}", "teacher").status_code == 403
    assert call(app, "GET", f"/api/attendance?school=s1&class=二班&date={DAY}", "teacher").status_code == 403
    by_class = call(app, "GET", f"/api/attendance?school=s1&class=一班&date={DAY}", "school").get_json()
    assert {e["person"] for e in by_class} == {"张三", "李四", "王五"}
    district = call(app, "GET", url, "facility")
    assert district.status_code == 200 and "张三" not in district.get_data(as_text=True)
    assert {(c["period"], c["class"], c["present"], c["late"], c["absent"]) for c in district.get_json()} >= {
        (1, "一班", 1, 1, 1), (2, "一班", 1, 0, 2)}
    page = call(app, "GET", f"/attendance/s1/rooms/101?date={DAY}", "facility").get_data(as_text=True)
    assert "counts-only" in page and "张三" not in page
    assert "张三" in call(app, "GET", f"/attendance/s1/rooms/101?date={DAY}", "school").get_data(as_text=True)
    for bad, field in (("/api/attendance?gateway=gw-101&date=yesterday", "date"), ("/api/attendance", "gateway"),
                       ("/api/attendance?gateway=gw%00x", "gateway"), ("/api/attendance?school=s1&class=a%00b", "class"),
                       ("/api/attendance?school=s1&class=九班", "class")):
        resp = call(app, "GET", bad, "school")
        assert 400 <= resp.status_code < 500 and resp.get_json()["field"] == field, (bad, resp.get_json())
    views = [r for r in central(app).registry.audit_trail(200) if r["action"] == "attendance.view"]
    assert {r["user"] for r in views} == {"teach", "fm-s1"}  # the counts-only views name nobody: not audited


# ---------------------------------------------------------------- retention


def test_retention_reduces_old_days_to_counts_and_deletes_their_swipes(app: Flask) -> None:
    imported(app)
    a_day_of_swipes(app)
    reg = central(app).registry
    before = att.summary(reg, "s1", DAY, DAY, now=NOW)
    assert [(r.klass, r.expected, r.present, r.late, r.absent) for r in before] == [("一班", 6, 2, 1, 3),
                                                                                  ("二班", 2, 0, 0, 2)]
    assert att.apply_retention(reg, now=NOW) == 0  # within the term: nothing to do
    att.save_settings(reg, "s1", "5", "7", "boss")
    later = NOW + 9 * 86400
    assert att.apply_retention(reg, now=later) == 2  # 30 November and 1 December: older than 7 days
    left = central(app).ledger.events(gateway="gw-101", since=at(0, 0))
    assert not [e for e in left if e["type"] in att.EVENT_TYPES and e["ts"] < at(0, 0, DAY + timedelta(days=1))]
    assert att.summary(reg, "s1", DAY, DAY, now=later) == before  # the rate survives as counts
    assert att.register(reg, "s1", "101", DAY, now=later) == []  # no named entry left
    assert att.apply_retention(reg, now=later) == 0


def test_a_swipe_that_comes_after_its_day_was_reduced_leaves_the_counts_alone(app: Flask) -> None:
    imported(app)
    a_day_of_swipes(app)
    reg = central(app).registry
    att.save_settings(reg, "s1", "5", "7", "boss")
    later = NOW + 9 * 86400
    assert att.apply_retention(reg, now=later) == 2
    reduced = att.summary(reg, "s1", DAY, DAY, now=later)
    # A gateway offline since: 王五's swipe of that morning comes now. Alone it must not make the others absent.
    swipes(app, "gw-101", [(at(8, 1), ATTENDANCE_EVENT, {"person": qr_pseudonym(reg.card_secret("s1"), "STU-101-0003"),
                                                          "camera": "cam"})], first_seq=500)
    assert att.apply_retention(reg, now=later) > 0
    assert att.summary(reg, "s1", DAY, DAY, now=later) == reduced
    assert not [e for e in central(app).ledger.events(gateway="gw-101", since=at(0, 0))
                if e["ts"] < at(0, 0, DAY + timedelta(days=1))]


# ---------------------------------------------------------------- finished days kept as counts


def test_the_ledger_flags_events_that_arrive_late(app: Flask) -> None:
    db = central(app).registry.db
    hour_ago, week_ago = time.time() - 3600, time.time() - 7 * 86400
    swipes(app, "gw-101", [(time.time(), CARD_SWIPE_EVENT, {"card": "0" * 64})], first_seq=1)
    assert ledger_mod.late_events(db, ["gw-101", "gw-102"]) == []
    swipes(app, "gw-101", [(hour_ago, CARD_SWIPE_EVENT, {"card": "0" * 64})], first_seq=2)
    swipes(app, "gw-101", [(week_ago, CARD_SWIPE_EVENT, {"card": "0" * 64})], first_seq=3)
    (row,) = ledger_mod.late_events(db, ["gw-101", "gw-102"])
    assert row[0] == "gw-101" and row[1] == pytest.approx(week_ago) and row[2] == 2  # the oldest, two batches
    ledger_mod.forget_late_events(db, [(row[0], row[1], 1)])  # read before the second batch: not forgotten
    assert ledger_mod.late_events(db, ["gw-101"]) == [row]
    ledger_mod.forget_late_events(db, [row])
    assert ledger_mod.late_events(db, ["gw-101"]) == []


def test_finished_days_are_kept_as_counts_and_stay_identical_to_the_registers(app: Flask) -> None:
    """The summary reads kept counts for finished days; a late swipe, a correction, a roster import, a timetable
    and a grace change each give what every register computed gives."""
    imported(app)
    reg = central(app).registry
    today = datetime.now(ZONE).date()
    past = today - timedelta(days=10)
    first = past - timedelta(days=past.weekday())  # its week, over before today
    last, now = first + timedelta(days=6), time.time()
    secret = reg.card_secret("s1")
    swipes(app, "gw-101", [(at(7, 58, past), CARD_SWIPE_EVENT, {"card": card(app, "0x0009356179")}),
                           (at(8, 9, past), CARD_SWIPE_EVENT, {"card": card(app, "A1B2C3D4")}),
                           (at(9, 2, past), CARD_SWIPE_EVENT, {"card": card(app, "A1B2C3D4")})])
    swipes(app, "gw-102", [(at(8, 1, past), CARD_SWIPE_EVENT, {"card": card(app, "3735928559")})])

    def both() -> list[att.WeekRow]:
        kept = att.summary(reg, "s1", first, last, now=now)
        assert kept == att.summary(reg, "s1", first, last, now=now, cache=False)
        return kept

    def of(klass: str, rows: list[att.WeekRow] | None = None) -> tuple[int, int, int, int, int]:
        (r,) = [r for r in (both() if rows is None else rows) if r.klass == klass]
        return r.expected, r.present, r.late, r.absent, r.excused

    # 一班: 3 students x 2 periods x 7 days; 张三 present at 1, 李四 late at 1 and present at 2.
    assert of("一班") == (42, 2, 1, 39, 0) and of("二班") == (14, 1, 0, 13, 0)
    att.summary(reg, "s1", today, today, now=now)
    with reg.session() as s:
        kept = {row.day: json.loads(row.counts) for row in s.scalars(select(att.DayCounts))}
        assert today not in kept and set(kept) == {first + timedelta(days=n) for n in range(7)}
        assert kept[past]["一班"] == [6, 2, 1, 3, 0]
        s.get(att.DayCounts, ("s1", past)).counts = json.dumps({**kept[past], "一班": [6, 6, 0, 0, 0]})
    assert of("一班", att.summary(reg, "s1", first, last, now=now)) == (42, 6, 0, 36, 0)  # read, not computed
    with reg.session() as s:
        s.get(att.DayCounts, ("s1", past)).counts = json.dumps(kept[past])
    # 王五's QR check-in of that morning arrives days late (its gateway was offline): counted, once.
    swipes(app, "gw-101", [(at(8, 3, past), ATTENDANCE_EVENT, {"person": qr_pseudonym(secret, "STU-101-0003")})],
           first_seq=100)
    assert of("一班") == (42, 3, 1, 38, 0)
    assert of("一班") == (42, 3, 1, 38, 0)
    att.correct(reg, "s1", "101", past, 2, "王五", "一班", "excused", "teach")
    assert of("一班") == (42, 3, 1, 37, 1)
    att.save_settings(reg, "s1", "15", "", "boss")  # 李四 at 8:09 is no longer late
    assert of("一班") == (42, 4, 0, 37, 1)
    tt = tts.load(reg, "s1")
    tts.save(reg, tts.Timetable("s1", "Asia/Shanghai", tt.periods + tuple(
        tts.Period(w, 3, dtime(10), dtime(10, 45)) for w in range(1, 8))))
    assert of("一班") == (63, 4, 0, 58, 1) and of("二班") == (21, 1, 0, 20, 0)
    english = "name,class,role,card,qr,room\n" + "\n".join(ROSTER.splitlines()[1:3]).replace("学生", "student")
    assert att.import_roster(reg, "s1", english.encode(), "boss").ok  # 张三 and 李四 of 一班 only
    assert {r.klass for r in both()} == {"一班"} and of("一班") == (42, 3, 0, 39, 0)


def test_counts_computed_before_a_correction_are_not_kept(app: Flask) -> None:
    imported(app)
    reg = central(app).registry
    past = datetime.now(ZONE).date() - timedelta(days=3)
    assert keep_days(reg, "s1", 0, "stamp", {past - timedelta(days=1): {"一班": [1, 1, 0, 0, 0]}})
    att.correct(reg, "s1", "101", past, 1, "王五", "一班", "excused", "teach")  # meanwhile, in another request
    assert not keep_days(reg, "s1", 0, "stamp", {past: {"一班": [6, 0, 0, 6, 0]}})
    with reg.session() as s:
        assert [row.day for row in s.scalars(select(att.DayCounts))] == [past - timedelta(days=1)]


# ---------------------------------------------------------------- retention by term


def test_the_default_retention_is_until_the_end_of_the_next_term() -> None:
    terms = (tts.DateRange("terms", date(2026, 2, 23), date(2026, 7, 10), "spring"),
             tts.DateRange("terms", date(2026, 9, 1), date(2027, 1, 20), "autumn"),
             tts.DateRange("terms", date(2027, 2, 22), date(2027, 7, 9), "spring 2027"))
    tt = tts.Timetable("s1", "Asia/Shanghai", (tts.Period(1, 1, dtime(8), dtime(8, 45)),), terms)
    # During the autumn term the spring term's registers are kept (the next term, autumn, is not over).
    assert att.first_kept(tt, None, date(2026, 12, 5)) == date(2026, 12, 5) - timedelta(days=400)
    # After autumn ends, spring's days (and the summer between) go; autumn's stay through the spring of 2027.
    assert att.first_kept(tt, None, date(2027, 1, 21)) == date(2026, 7, 11)
    assert att.first_kept(tt, None, date(2027, 7, 9)) == date(2026, 7, 11)
    assert att.first_kept(tt, None, date(2027, 7, 10)) == date(2027, 1, 21)
    # A timetable whose later terms were never entered keeps no more than 400 days.
    assert att.first_kept(tt, None, date(2029, 1, 1)) == date(2029, 1, 1) - timedelta(days=400)
    # Without terms: 150 days; a school's own number wins either way.
    assert att.first_kept(tts.Timetable("s1"), None, date(2027, 1, 21)) == date(2027, 1, 21) - timedelta(days=150)
    assert att.first_kept(None, None, date(2027, 1, 21)) == date(2027, 1, 21) - timedelta(days=150)
    assert att.first_kept(tt, 30, date(2027, 1, 21)) == date(2026, 12, 22)


def test_retention_by_term_reduces_the_term_before_last(app: Flask) -> None:
    imported(app)
    a_day_of_swipes(app)
    reg = central(app).registry
    tt = tts.load(reg, "s1")
    tts.save(reg, tts.Timetable("s1", "Asia/Shanghai", tt.periods, (
        tts.DateRange("terms", date(2026, 9, 1), date(2027, 1, 20), "autumn"),
        tts.DateRange("terms", date(2027, 2, 22), date(2027, 7, 9), "spring"))))
    assert att.settings(reg, "s1").retention_days is None
    in_spring = datetime.combine(date(2027, 7, 9), dtime(20), ZONE).timestamp()
    assert att.apply_retention(reg, now=in_spring) == 0  # 30 November is kept all through the next term
    assert att.register(reg, "s1", "101", DAY, now=in_spring)
    assert att.apply_retention(reg, now=in_spring + 86400) > 0  # spring is over: autumn's names go
    assert att.register(reg, "s1", "101", DAY, now=in_spring + 86400) == []
    att.save_settings(reg, "s1", "5", "200", "boss")
    assert att.settings(reg, "s1").retention_days == 200
    assert att.save_settings(reg, "s1", "5", " ", "boss").retention_days is None


# ---------------------------------------------------------------- pages and exports


@sqlite_only
def test_the_exports_agree_with_the_page(app: Flask) -> None:
    from openpyxl import load_workbook

    imported(app)
    a_day_of_swipes(app)
    entries = att.register(central(app).registry, "s1", "101", DAY)
    base = "/attendance/s1/rooms/101/register"
    rows = list(csv.reader(io.StringIO(call(app, "GET", f"{base}.csv?date={DAY}", "teacher")
                                       .get_data(as_text=True).lstrip("\ufeff"))))
    assert [(int(r[1]), r[3], r[4]) for r in rows[1:]] == [(e.period, e.person, e.status) for e in entries]
    book = load_workbook(io.BytesIO(call(app, "GET", f"{base}.xlsx?date={DAY}", "teacher").get_data()))
    sheet = [list(r) for r in book.active.iter_rows(values_only=True)]
    assert [["" if v is None else str(v) for v in r] for r in sheet[:len(rows)]] == rows
    page = call(app, "GET", f"/attendance/s1/rooms/101?date={DAY}", "teacher").get_data(as_text=True)
    assert page.count('data-status="late"') >= 1 and "李四" in page
    district = call(app, "GET", f"{base}.csv?date={DAY}", "facility").get_data(as_text=True)
    assert "张三" not in district and "一班" in district
    exports = [r for r in central(app).registry.audit_trail(200) if r["action"] == "attendance.export"]
    assert len(exports) == 2 and {r["user"] for r in exports} == {"teach"}
    summary = call(app, "GET", "/attendance/s1?weeks=26", "school").get_data(as_text=True)
    assert 'data-class="一班"' in summary
    out = list(csv.reader(io.StringIO(call(app, "GET", "/attendance/s1/summary.csv?weeks=26", "school")
                                      .get_data(as_text=True).lstrip("\ufeff"))))
    week = next(r for r in out[1:] if r[0] == "一班" and r[1] == DAY.isoformat())
    direct = next(r for r in att.summary(central(app).registry, "s1", DAY, DAY + timedelta(days=6))
                  if r.klass == "一班")
    assert week[2:7] == [str(v) for v in (direct.expected, direct.present, direct.late, direct.absent, 0)]
    assert direct.present == 2 and direct.late == 1  # the swipes of the week's Monday
    assert f'data-rate="{float(week[7]):.4f}"' in summary and float(week[7]) == pytest.approx(direct.rate, abs=1e-4)
    assert call(app, "GET", "/attendance/s1", "teacher").status_code == 403


@sqlite_only
def test_the_panel_shows_the_current_period(app: Flask) -> None:
    imported(app)
    reg = central(app).registry
    everyday = tuple(tts.Period(w, 1, dtime(0, 0), dtime(23, 59), "") for w in range(1, 8))
    tts.save(reg, tts.Timetable("s1", "Asia/Shanghai", everyday))
    import time

    swiped = time.time() - 5
    swipes(app, "gw-101", [(swiped, CARD_SWIPE_EVENT, {"card": card(app, "A1B2C3D4"), "reader": "r"})], 50)
    # The panel's live stream carries the room's newest swipe: a new one changes the room, the page reloads.
    assert web(app).panel.snapshot("gw-101")["swiped"] == pytest.approx(swiped)
    page = call(app, "GET", "/attendance/panel/gw-101", "teacher").get_data(as_text=True)
    if datetime.now(ZONE).time() < dtime(23, 59):
        assert "李四" in page and 'data-status="absent"' in page
    assert call(app, "GET", "/attendance/panel/gw-102", "teacher").status_code == 403
    panel = call(app, "GET", "/panel/gw-101", "teacher").get_data(as_text=True)
    assert "/attendance/panel/gw-101" in panel


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_swipes_at_a_simulated_em4100_reader_fill_the_register(tmp_path: Path) -> None:
    """A real agent reads the EM4100 simulator's frames on a pty and a roster QR code from the camera's video,
    pseudonymises both with the school's secret and sends them through Mosquitto to a real ingest; the register
    of the room then shows who swiped or checked in, and no card number or code is in the database or a log."""
    import asyncio
    import time

    from central.registry import Registry, SchoolSecret
    from tests.e2e import Classroom, SimulatorsInThread, write_gateway_config
    from tests.servers import Mosquitto, wait_until

    secret, pupil, stranger, code = "school-secret-1", "14008EC793", "0AFFFFFFFF", "STU-101-0002"
    devices = [{"id": "cards", "profile": "card-em4100", "address": {"serial": str(tmp_path / "cards.tty")},
                "options": {"repeat_window_s": 0.2}},
               {"id": "cam", "profile": "camera-occupancy", "address": {"source": str(tmp_path / "cam.avi")},
                "options": {"loop": True}, "simulator": {"people": 1, "qr_text": code, "seconds": 4, "fps": 10}}]
    broker = Mosquitto(tmp_path / "mq")
    broker.start()
    room = Classroom(tmp_path, broker.url, poll_interval=0.3, devices=devices)
    write_gateway_config(room.config, broker.url, poll_interval=0.3, devices=devices, data_dir=str(room.data_dir),
                         card_secret=secret)
    reg = Registry(room.db_url)
    try:
        reg.register_gateway("gw1", "s1", "101", "A")
        with reg.session() as s:  # the gateway's config came with this school's secret
            s.merge(SchoolSecret(school_id="s1", card_secret=secret))
        local = datetime.now(ZONE) - timedelta(minutes=1)  # a period that started a minute ago: swipes on time
        if local.time() >= dtime(23, 50):
            pytest.skip("too close to midnight for a period of today")
        tts.save(reg, tts.Timetable("s1", "Asia/Shanghai", tuple(
            tts.Period(w, 1, dtime(local.hour, local.minute), dtime(23, 59)) for w in range(1, 8))))
        roster = (f"姓名,班级,一卡通,二维码,教室\n张三,一班,0x{pupil},,101\n李四,一班,A1B2C3D4,{code},101\n"
                  "王五,一班,3735928559,,101\n")
        assert att.import_roster(reg, "s1", roster.encode("gb18030"), "test").ok
        today = datetime.now(ZONE).date()
        with SimulatorsInThread(room.config) as sims:
            room.start(sim=False)
            try:
                wait_until(lambda: (room.view.gateway("gw1") or {}).get("online"), 30, message="the gateway online")
                for uid in (pupil, pupil, stranger):  # the second swipe of the pupil folds into the first
                    asyncio.run_coroutine_threadsafe(sims["cards"].swipe(uid), sims.loop).result(10)

                def register() -> dict[str, str]:
                    return {e.person: e.status for e in att.register(reg, "s1", "101", today, now=time.time())}

                wait_until(lambda: len(register()) == 4 and register()["李四"] == "present", 60,
                           message="the swipes and the check-in in the register")
                assert register() == {"张三": "present", "李四": "present", "王五": "absent",
                                      card_hash(secret, stranger)[:att.PREFIX_CHARS]: "unknown"}
                sources = {e.person: e.source for e in att.register(reg, "s1", "101", today, now=time.time())}
                assert (sources["张三"], sources["李四"]) == ("card", "qr")
                # Late by time: the same arrivals came one to two minutes after the period began; with no grace
                # they are late, the absent and the unknown as they were.
                att.save_settings(reg, "s1", 0, "", "test")
                assert register() == {"张三": "late", "李四": "late", "王五": "absent",
                                      card_hash(secret, stranger)[:att.PREFIX_CHARS]: "unknown"}
            finally:
                room.stop()
                broker.stop()
        # Nothing but pseudonyms left the gateway: no card number (as printed or as the reader's UID) and no
        # printed code in central's database files, the gateway's outbox or in any process's log.
        raw = [pupil, pupil.lower(), stranger, code, "A1B2C3D4", "3735928559"]
        files = [p for p in tmp_path.rglob("*") if p.is_file() and (p.suffix == ".log" or ".db" in p.name)]
        assert any(".db" in p.name for p in files) and any(p.suffix == ".log" for p in files), files
        for path in files:
            data = path.read_bytes()
            assert not [r for r in raw if r.encode() in data], path
    finally:
        reg.close()
