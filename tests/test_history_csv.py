"""A room's history as CSV: exact rows from a real central database, roles, bad requests, Excel's BOM."""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from campus.contract import State
from central.ledger import Ledger, Sequenced
from central.store.base import Sample
from central.store.sqlite import SqlitePointStore
from dashboards import close_app
from tests.apps import PEOPLE, add_people, central_db, register_rooms, web_app

NOW = time.time()
DEVICES = {"env": {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"},
           "cam": {"profile": "camera-occupancy", "kind": "camera", "status": "ok"},
           "proj": {"profile": "projector-pjlink", "kind": "projector", "status": "ok"}}


def _one_room(ledger: Ledger, points: SqlitePointStore) -> None:
    ledger.record([Sequenced("s1", "gw-101", "env", 1, NOW - 5, values={"co2_ppm": 800})],
                  [("s1", "gw-101", State(online=True, ts=NOW, room="101", devices=DEVICES))], [])
    points.write([Sample("s1", "gw-101", "env", "environment", NOW - 600 + 60 * i,
                         {"co2_ppm": 800.0 + i, "temperature_c": 21.5, "humidity_pct": 40.0}) for i in range(3)])
    points.write([Sample("s1", "gw-101", "cam", "camera", NOW - 600, {"people_count": 31}),
                  Sample("s1", "gw-101", "proj", "projector", NOW - 540, {"power": "warming"}),
                  Sample("s1", "gw-101", "proj", "projector", NOW - 480, {"power": "on"}),
                  Sample("s1", "gw-101", "env", "environment", NOW - 2 * 86400, {"co2_ppm": 999.0})])  # a day too old


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    app = web_app(central_db(tmp_path, _one_room), monkeypatch)
    register_rooms(app, (("gw-101", "s1", "101", "教学楼A"),))
    app.tokens = add_people(app, {role: PEOPLE[role] for role in ("facility", "teacher")})
    yield app
    close_app(app)


def get(app, path: str, role: str | None = "facility"):
    headers = {"Authorization": f"Bearer {app.tokens[role]}"} if role else {}
    return app.test_client().get(path, headers=headers)


def local(ts: float) -> str:
    """The site's time (Asia/Shanghai, the default), 24-hour, with the English weekday: no Accept-Language."""
    return datetime.fromtimestamp(ts, ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %a %H:%M:%S")


def test_rows_are_the_stored_samples_one_per_device_and_time(app) -> None:
    resp = get(app, "/health/rooms/gw-101/history.csv?window=24h")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert resp.headers["Content-Disposition"].startswith('attachment; filename="campus-gw-101-24h-')
    body = resp.get_data()
    assert body.startswith("\ufeff".encode())  # Excel reads UTF-8 only with the byte-order mark
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    assert rows[0] == ["time", "unix_ts", "device", "temperature_c", "co2_ppm", "humidity_pct", "pm25_ugm3",
                       "noise_dba", "illuminance_lux", "people_count", "power"]
    env = lambda i: [local(NOW - 600 + 60 * i), f"{NOW - 600 + 60 * i:.3f}", "env", "21.5", str(800 + i),  # noqa: E731
                     "40", "", "", "", "", ""]
    assert rows[1:] == [
        [local(NOW - 600), f"{NOW - 600:.3f}", "cam", "", "", "", "", "", "", "31", ""],
        env(0),
        env(1),
        [local(NOW - 540), f"{NOW - 540:.3f}", "proj", "", "", "", "", "", "", "", "warming"],
        env(2),
        [local(NOW - 480), f"{NOW - 480:.3f}", "proj", "", "", "", "", "", "", "", "on"],
    ]
    assert body.count(b"\r\n") == len(rows)


def test_window_decides_what_is_in_it(app) -> None:
    week = list(csv.reader(io.StringIO(get(app, "/health/rooms/gw-101/history.csv?window=7d").get_data(as_text=True))))
    assert any(row[2] == "env" and row[4] == "999" for row in week[1:])  # two days old: in the week, not the day
    hour = list(csv.reader(io.StringIO(get(app, "/health/rooms/gw-101/history.csv?window=1h").get_data(as_text=True))))
    assert len(hour) == 7 and not any(row[4] == "999" for row in hour[1:])


def test_refusals_and_bad_requests(app) -> None:
    anonymous = get(app, "/health/rooms/gw-101/history.csv", role=None)
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]
    assert get(app, "/health/rooms/gw-101/history.csv", role="teacher").status_code == 403
    bad = get(app, "/health/rooms/gw-101/history.csv?window=1y")
    assert bad.status_code == 400 and "window must be 1h, 24h or 7d" in bad.get_data(as_text=True)
    missing = get(app, "/health/rooms/gw-999/history.csv")
    assert missing.status_code == 404 and "no gateway" in missing.get_data(as_text=True)


def test_the_room_page_links_to_its_csv(app) -> None:
    page = get(app, "/health/rooms/gw-101?window=7d").get_data(as_text=True)
    assert 'href="/health/rooms/gw-101/history.csv?window=7d"' in page and "Download CSV" in page


# ---------------------------------------------------------------- a school with a zone of its own (issue 20)


def _two_schools(ledger: Ledger, points: SqlitePointStore) -> None:
    for school, gw, room in (("s1", "gw-101", "101"), ("s2", "gw-201", "201")):
        ledger.record([], [(school, gw, State(online=True, ts=NOW, room=room, devices=DEVICES))], [])
        points.write([Sample(school, gw, "cam", "camera", FRIDAY, {"people_count": 31})])


FRIDAY = 1796396400.0  # 2026-12-04 15:00 UTC, a Friday: 23:00 in Shanghai (the site), 21:00 in Urumqi


def test_a_school_with_its_own_zone_has_its_pages_and_csv_in_it_and_mixed_pages_say_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from central import timetables as tts
    from dashboards.context import central

    app = web_app(central_db(tmp_path, _two_schools), monkeypatch)
    try:
        register_rooms(app, (("gw-101", "s1", "101", "A"), ("gw-201", "s2", "201", "B")))
        tts.save(central(app).registry, tts.Timetable("s2", "Asia/Urumqi"))
        app.tokens = add_people(app, {"facility": PEOPLE["facility"],
                                      "teacher": ("teach", "teach-password", [("s1", "101"), ("s2", "201")])})
        zh = {"Accept-Language": "zh-CN"}

        def page(path: str, role: str = "facility") -> str:
            resp = app.test_client().get(path, headers={**zh, "Authorization": f"Bearer {app.tokens[role]}"})
            assert resp.status_code == 200, (path, resp.status_code)
            return resp.get_data(as_text=True)

        def csv_time(gw: str) -> str:
            rows = list(csv.reader(io.StringIO(page(f"/health/rooms/{gw}/history.csv?window=7d").lstrip("\ufeff"))))
            return rows[1][0]

        assert csv_time("gw-201") == "2026-12-04 周五 21:00:00"  # the school's zone, 24-hour, 周五
        assert csv_time("gw-101") == "2026-12-04 周五 23:00:00"  # a site-zone school's: unchanged
        # One school's pages: the zone the page scripts format with, and the footer, are the school's.
        for path, role in (("/health/rooms/gw-201", "facility"), ("/panel/gw-201", "teacher"),
                           ("/health/?school=s2", "facility"), ("/health/energy?school=s2", "facility")):
            body = page(path, role)
            assert '"timeZone": "Asia/Urumqi"' in body and "时间为 Asia/Urumqi（UTC+06:00）" in body, path
        for path, role in (("/health/rooms/gw-101", "facility"), ("/panel/gw-101", "teacher")):
            assert '"timeZone": "Asia/Shanghai"' in page(path, role), path
        # A page mixing schools: the site's zone, and the school that keeps another named beside it.
        board = page("/health/")
        assert '"timeZone": "Asia/Shanghai"' in board and "时间为 Asia/Shanghai（UTC+08:00）" in board
        assert "s2 Asia/Urumqi (UTC+06:00)" in board and "s1 Asia" not in board
    finally:
        close_app(app)
