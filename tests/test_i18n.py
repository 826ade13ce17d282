"""Simplified Chinese and English, complete (issue 20): the catalog, every page, the language switch, local time.

- The catalog: what the sources mark now (extracted as `babel.cfg` says) is exactly what the zh_CN .po
  holds, each with a current translation: a message without one, a fuzzy or obsolete entry, or a .po
  not merged since the sources changed fails here.
- Every page (a walk over `app.url_map`, as tests/test_scope.py walks it) rendered for a zh-CN browser
  shows no English word outside an allow-list (the brand, units, protocol and product names), once the
  fixture's own data (ids, names typed by people) is taken out.
- Which language a request gets, and the switch that keeps it on the account; times in the site's zone.
- A teacher's panel in Chromium, in Chinese, with 24-hour times; the choice survives a new login.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from babel.messages.pofile import read_po
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import Rule

from campus.contract import CommandResult, State
from campus.i18n import N_, LazyText, lazy_gettext
from central import alarms
from central import provisioning as prov
from central import schedules as sched
from central.ledger import Sequenced
from central.registry import ScheduleRun
from dashboards import close_app, i18n_build
from dashboards.context import central
from device_profiles import available_profiles, load_profile
from protocols import PROTOCOLS
from tests.apps import ENV_AND_PROJECTOR, central_db, web_app

PO = i18n_build.TRANSLATIONS / "zh_Hans_CN" / "LC_MESSAGES" / "messages.po"


# ---------------------------------------------------------------- the catalog


def test_every_marked_message_has_a_current_chinese_translation() -> None:
    extracted = i18n_build.extract()
    with open(PO, "rb") as f:
        po = read_po(f, locale="zh_Hans_CN")
    wanted = {m.id for m in extracted if m.id}
    held = {m.id for m in po if m.id}
    assert wanted, "nothing was extracted: babel.cfg or the keywords are wrong"
    assert sorted(wanted - held, key=str) == [], "not in the .po: run `python -m dashboards.i18n_build update`"
    assert sorted(held - wanted, key=str) == [], "in the .po but no longer in the sources (stale): run update"
    assert list(po.obsolete) == []
    assert [m.id for m in po if m.id and "fuzzy" in m.flags] == [], "fuzzy: the source changed; check them"
    assert [m.id for m in po if m.id and not m.string] == [], "without a translation"
    # A translation whose %(name)s parameters differ from its message's (Babel's checkers).
    assert [(m.id, errors) for m, errors in po.check()] == []


def test_the_page_scripts_mark_messages_one_way_only() -> None:
    """Every `_(` call of a page script has a double-quoted literal, the form extract_js reads (a `_(name)`
    or a template literal would be shown untranslated)."""
    for path in sorted((Path(i18n_build.PACKAGE) / "static").glob("*.js")):
        code = re.sub(r"/\*.*?\*/", "", path.read_text(encoding="utf-8"), flags=re.S)  # the examples in comments
        calls = len(re.findall(r"(?<![\w$.])_\(", code))
        with open(path, "rb") as f:
            read = sum(1 for _ in i18n_build.extract_js(f, None, None, None))
        assert calls == read, path.name


def test_lazy_text_is_english_until_shown_and_translated_where_shown(app: Flask) -> None:
    """What central/ marks (campus.i18n) is English in logs, and Chinese in a zh-CN request's JSON and pages."""
    text = lazy_gettext("Room %(room)s", room="101")
    assert str(text) == "Room 101" and LazyText.from_dict(text.as_dict()) == text
    assert N_("Alarms") == "Alarms"
    with app.test_request_context("/?lang=zh-CN"):
        from flask import json, render_template_string

        from dashboards.i18n import translate

        assert translate(text) == "101 教室" and translate("Alarms") == "告警"
        assert json.loads(json.dumps({"detail": text})) == {"detail": "101 教室"}
        assert render_template_string("{{ t }}", t=text) == "101 教室"


# ---------------------------------------------------------------- the app


NOW = time.time()
GATEWAYS = {"gw-alpha-1": ("alpha", "101", "A"), "gw-alpha-2": ("alpha", "102", "A"), "gw-zeta-1": ("zeta", "201", "B")}
PASSWORDS = {"boss": "boss-password", "fm": "fm-password", "teach": "teach-password"}
GATEWAY_RESULTS = {
    "cmd-2": ("done", lazy_gettext("input %(name)s (%(code)s) selected", name="hdmi1", code="32")),
    "cmd-3": ("rejected", lazy_gettext("input %(name)s has code %(code)s, which this PJLink class %(pjlink_class)s "
                                       "projector cannot select", name="'hdmi1'", code="'6A'", pjlink_class="1")),
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """Two schools with rooms reporting, an open alarm, a command, a schedule that ran, a timetable, and
    an admin, a facility manager and a teacher; the site's default language English."""
    mp = pytest.MonkeyPatch()
    app = web_app(central_db(tmp_path_factory.mktemp("i18n"), lambda ledger, points: None), mp)
    c = central(app)
    csv = "school,building,room,gateway\n" + "".join(f"{s},{b},{r},{g}\n" for g, (s, r, b) in GATEWAYS.items())
    assert prov.import_csv(c.registry, csv.encode()).ok
    c.ledger.record(
        [Sequenced(s, g, "env", 1, NOW - 5, values={"co2_ppm": 2500 if g == "gw-alpha-1" else 600, "temperature_c": 21.5})
         for g, (s, _r, _b) in GATEWAYS.items()]
        + [Sequenced(s, g, "proj", 2, NOW - 4, values={"power": "on", "lamp_hours": 10})
           for g, (s, _r, _b) in GATEWAYS.items()],
        [(s, g, State(online=g != "gw-zeta-1", ts=NOW, room=r, devices={k: dict(v) for k, v in ENV_AND_PROJECTOR.items()},
                      interval=3600)) for g, (s, r, _b) in GATEWAYS.items()], [])
    alarms.evaluate(c.registry, c.ledger, now=NOW)
    c.ledger.add_command("cmd-1", "gw-alpha-1", "proj", "power_on", {}, "boss", NOW + 60)
    schedule = sched.create(c.registry, sched.validate({"name": "晚间关机", "at": "22:00", "days": "mon,fri",
                                                        "action": "power_off", "kinds": "projector",
                                                        "school_id": "alpha"}, c.registry))
    # Results the gateway wrote (as the PJLink driver marks them): a command done and one refused, in the room's
    # history (the panel) and in a run of the schedule (its page).
    for cid in GATEWAY_RESULTS:
        c.ledger.add_command(cid, "gw-alpha-1", "proj", "select_input", {"input": "hdmi1"}, "teach", NOW + 60)
    c.ledger.record([], [], [CommandResult.of(cid, status, text, NOW, None)
                             for cid, (status, text) in GATEWAY_RESULTS.items()])
    with c.registry.session() as s:
        s.add(ScheduleRun(schedule_id=schedule, ran_at=NOW - 60, results=[
            {"gateway": "gw-alpha-1", "room": "101", "device": "proj", "kind": "projector", "action": "select_input",
             "status": status, **sched.result_detail(c.ledger.command(cid)["detail"]), "command": cid, "by": ""}
            for cid, (status, _text) in GATEWAY_RESULTS.items()]))
    c.registry.add_user("boss", PASSWORDS["boss"], "admin")
    c.registry.add_user("fm", PASSWORDS["fm"], "facility")
    c.registry.add_user("teach", PASSWORDS["teach"], "teacher", rooms=[("alpha", "101")])
    app.tokens = {n: c.registry.issue_token(n) for n in PASSWORDS}  # type: ignore[attr-defined]
    app.ids = {"alarm": alarms.list_alarms(c.registry, "open")[0]["id"],  # type: ignore[attr-defined]
               "schedule": schedule}
    yield app
    close_app(app)
    mp.undo()


def login(app: Flask, user: str, **headers: str) -> FlaskClient:
    client = app.test_client()
    page = client.get("/login", headers=headers).get_data(as_text=True)
    token = page.split('name="csrf" value="')[1].split('"')[0]
    resp = client.post("/login", data={"csrf": token, "username": user, "password": PASSWORDS[user]}, headers=headers)
    assert resp.status_code == 302, resp.get_data(as_text=True)[:300]
    return client


# ---------------------------------------------------------------- every page in zh-CN

# Words a Chinese page may show in Latin letters: the brand, units, protocols, formats and products,
# the language switch's own "English", UTC (the footer's "UTC+08:00", written so in Chinese too), and the
# contract's ids a person types (device ids in examples).
ALLOWED = set("""
campus iot ppm rh lx db µg kwh mqtt mqtts csv xlsx json yaml tls ntp acl iana pid http https hdmi vga usb
pjlink modbus rs rtsp tcp rtu ip mosquitto english excel gb utf zip co ok id ids v vs smtp starttls webhook markdown utc
""".split())
# Text inside these is code, a command or a file's contents, not prose: left out of the check.
CODE = re.compile(r"<(code|pre|textarea|script|style|datalist)\b.*?</\1>", re.S | re.I)
ATTRS = re.compile(r'\b(?:title|placeholder|aria-label|data-confirm)="([^"]*)"')


def data_words(app: Flask) -> set[str]:
    """The fixture's own names and the shipped profiles' names and models, whole: data, which no catalog
    translates (taken out as phrases, so "projector" in a model's name does not excuse a "Projector")."""
    phrases = {"alpha", "zeta", "gw", "env", "proj", "boss", "fm", "teach", "cmd", "Asia/Shanghai", "north",
               "sqlite", "PATH", "localhost", "env、projector"}  # the last: device ids a placeholder suggests
    for name in available_profiles():
        profile = load_profile(name)
        phrases |= {name, profile.manufacturer, profile.model}
    phrases |= set(PROTOCOLS)  # protocol ids, as the add-device form names them
    return {p for p in phrases if p}


def english_words(page: str, data: set[str]) -> list[str]:
    """Latin-letter words a reader sees (text and the attributes a browser shows) that are neither allowed
    nor data."""
    body = page.split("<body>", 1)[-1]
    shown = CODE.sub(" ", body)
    text = " ".join([re.sub(r"<[^>]+>", " ", shown), *ATTRS.findall(shown)])
    text = html.unescape(text)
    for phrase in sorted(data, key=len, reverse=True):
        text = re.sub(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", " ", text)
    text = re.sub(r"\b[\w.-]*\d[\w.-]*\b", " ", text)  # ids with digits (gw-101, v3, 10.1.2.30, 2026-12-04)
    text = re.sub(r"[\w-]+(?:\.[\w-]+)+", " ", text)  # host and file names (mqtt.district.example, a.json)
    text = re.sub(r"\S*[/=]\S*", " ", text)  # paths, URLs and key=value syntax (/dev/ttyUSB0, rtsp://…)
    return sorted({w for w in re.findall(r"[A-Za-z]{2,}", text) if w.lower() not in ALLOWED})


FILL = {"gateway": "gw-alpha-1", "device": "proj", "school": "alpha", "cid": "cmd-1", "district": "north"}
# A room, for the attendance and podium pages of a room.
ROOM_AREAS = ("attendance.", "podium.")


def _path(rule: Rule, ids: dict[str, Any]) -> str | None:
    values = {"aid": str(ids["alarm"]), "sid": str(ids["schedule"]), **FILL}
    if rule.endpoint.startswith(ROOM_AREAS):
        values["room"] = "101"
    if any(arg not in values for arg in rule.arguments):
        return None
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: values[m.group(1)], rule.rule)


def test_every_page_in_chinese_shows_no_english_words(app: Flask) -> None:
    data = data_words(app)
    boss = login(app, "boss", **{"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"})
    teacher = login(app, "teach", **{"Accept-Language": "zh"})
    found, walked = {}, 0
    for rule in app.url_map.iter_rules():
        path = _path(rule, app.ids)  # type: ignore[attr-defined]
        if (path is None or "GET" not in rule.methods or rule.endpoint == "static" or path.startswith("/api/")
                or rule.endpoint.endswith("stream")):
            continue
        for client in (boss, teacher) if rule.endpoint.startswith(("panel.", "attendance.register", "attendance.panel",
                                                                   "attendance.index")) else (boss,):
            resp = client.get(path, headers={"Accept-Language": "zh-CN"})
            if resp.mimetype != "text/html" or 300 <= resp.status_code < 400:
                continue
            page = resp.get_data(as_text=True)
            assert resp.status_code < 500, (path, page[:300])
            assert '<html lang="zh-CN">' in page or not page.startswith("<!doctype"), path
            walked += 1
            if words := english_words(page, data):
                found[path] = words
    # The login page and an error page, for a browser that is not logged in.
    anonymous = app.test_client()
    for path in ("/login", "/no-such-page"):
        page = anonymous.get(path, headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
        if words := english_words(page, data):
            found[path] = words
    assert walked > 25
    assert found == {}, "\n".join(f"{path}: {words}" for path, words in found.items())


def test_the_gateways_words_in_a_rooms_history_are_chinese(app: Flask) -> None:
    """The panel's command history is drawn by its script from the room's JSON (left out of the walk above):
    the gateway's details in it, for a zh-CN page, have no English either; the schedule's page shows them too."""
    data = data_words(app)
    teacher = login(app, "teach", **{"Accept-Language": "zh"})
    page = teacher.get("/panel/gw-alpha-1", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    room = json.loads(html.unescape(page.split('id="panel-initial">')[1].split("</script>")[0]))
    details = {c["id"]: c["details"]["zh-CN"] for c in room["commands"] if c["id"] in GATEWAY_RESULTS}
    assert details == {"cmd-2": "已选择信号源 hdmi1（32）",
                       "cmd-3": "信号源 'hdmi1' 的代码为 '6A'，这台 PJLink 1 类投影机无法选择它"}
    assert [english_words(f"<body>{d}</body>", data) for d in details.values()] == [[], []]
    boss = login(app, "boss", **{"Accept-Language": "zh-CN"})
    shown = boss.get(f"/health/schedules/{app.ids['schedule']}",  # type: ignore[attr-defined]
                     headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert all(d in html.unescape(shown) for d in details.values())
    assert "(32) selected" not in shown and "cannot select" not in shown


def test_the_check_finds_english() -> None:
    """The walk's check itself: an untranslated page fails it."""
    assert english_words("<body><h1>Alarm thresholds</h1><p title='x'>教室 101</p></body>", set()) == ["Alarm",
                                                                                                    "thresholds"]
    assert english_words('<body><button title="Power on">开机</button><code>campus web</code></body>', set()) == \
        ["Power", "on"]


# ---------------------------------------------------------------- which language, the switch, time


def test_the_language_follows_the_query_the_account_the_cookie_the_browser_then_the_site(app: Flask) -> None:
    client = app.test_client()
    lang = lambda resp: re.search(r'<html lang="([^"]+)"', resp.get_data(as_text=True)).group(1)  # noqa: E731
    assert lang(client.get("/login")) == "en"  # the site's default (a WebConfig made in code)
    assert lang(client.get("/login", headers={"Accept-Language": "zh-TW;q=0.9,en;q=0.8"})) == "zh-CN"
    assert lang(client.get("/login", headers={"Accept-Language": "fr, en;q=0.5"})) == "en"
    assert lang(client.get("/login?lang=zh-CN", headers={"Accept-Language": "en"})) == "zh-CN"
    page = client.get("/login").get_data(as_text=True)
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    # Hostile input: one clear 400 naming the field, nothing stored.
    bad = client.post("/language", data={"csrf": csrf, "lang": "klingon", "next": "/login"})
    assert bad.status_code == 400 and "lang" in bad.get_data(as_text=True)
    assert client.post("/language", data={"csrf": "wrong", "lang": "zh-CN"}).status_code == 400
    resp = client.post("/language", data={"csrf": csrf, "lang": "zh-CN", "next": "/login?lang=en"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/login"  # ?lang would override the choice
    page = client.get("/login", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert '<html lang="zh-CN">' in page and "登录" in page  # the cookie, over the browser's language

    # Logged in: the switch stores the choice on the account, which a new browser then gets.
    fm = login(app, "fm")
    home = fm.get("/health/alarms")
    assert '<html lang="en">' in home.get_data(as_text=True)
    csrf = home.get_data(as_text=True).split('name="csrf" value="')[1].split('"')[0]
    assert fm.post("/language", data={"csrf": csrf, "lang": "zh-CN", "next": "/health/alarms"}).status_code == 302
    assert central(app).registry.principal("fm")["language"] == "zh-CN"
    fresh = login(app, "fm", **{"Accept-Language": "en"})
    assert "<h1>告警</h1>" in fresh.get("/health/alarms", headers={"Accept-Language": "en"}).get_data(as_text=True)
    central(app).registry.set_language("fm", None)


def test_times_are_the_sites_zone_24_hour_with_a_chinese_weekday(app: Flask) -> None:
    from dashboards.i18n import format_clock, format_date, format_time

    ts = 1796396400.0  # 2026-12-04 15:00 UTC: 23:00 in Asia/Shanghai, a Friday
    with app.test_request_context("/", headers={"Accept-Language": "zh-CN"}):
        assert (format_time(ts), format_date(ts), format_clock(ts)) == ("2026-12-04 周五 23:00", "2026-12-04 周五",
                                                                        "23:00:00")
    with app.test_request_context("/", headers={"Accept-Language": "en"}):
        assert format_time(ts + 3600, seconds=True) == "2026-12-05 Sat 00:00:00"
    page = login(app, "boss").get("/health/schedules?lang=zh-CN").get_data(as_text=True)
    assert re.search(r"\d{4}-\d\d-\d\d 周[一二三四五六日] \d\d:\d\d", page)  # the next run
    assert '"timeZone": "Asia/Shanghai"' in page and '"lang": "zh-CN"' in page  # what the page scripts format with


# ---------------------------------------------------------------- in a browser, against `campus demo`


@pytest.mark.slow
def test_a_chinese_teacher_powers_the_projector_on_and_the_choice_of_english_outlives_the_login(
        tmp_path: Path) -> None:
    """A browser asking for zh-CN in New York: the panel speaks Chinese and shows 24-hour times of the site
    (Asia/Shanghai), never the browser's zone or 12-hour clock; English chosen with the switch is the
    account's, so a new browser asking for Chinese gets English after logging in."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    from playwright.sync_api import expect, sync_playwright

    from tests.servers import launch_chromium, screenshot_path
    from tests.test_panel import start_demo

    proc, base, logins, log_path = start_demo(tmp_path)
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                chinese = browser.new_context(locale="zh-CN", timezone_id="America/New_York",
                                              viewport={"width": 1024, "height": 768})
                page = chinese.new_page()
                page.goto(f"{base}/login")
                expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
                page.fill("input[name=username]", "teacher")
                page.fill("input[name=password]", logins["teacher"])
                page.get_by_role("button", name="登录").click()
                page.wait_for_url(re.compile(r"/panel/gw-101$"))
                expect(page.locator("h1")).to_have_text("101 教室")
                expect(page.locator("#live")).to_have_text("实时", timeout=10_000)

                projector = page.locator('.pcard[data-device="projector"]')
                expect(projector.locator('[data-field="power"]')).to_have_attribute("data-power", "off", timeout=30_000)
                projector.get_by_role("button", name="开机").click()
                expect(projector.locator('[data-field="result"]')).to_contain_text("开机：已完成", timeout=15_000)
                expect(projector.locator('[data-field="power"]')).to_have_text("已开机", timeout=45_000)
                recent = page.locator("#recent li").first
                expect(recent).to_contain_text("开机")
                shown = recent.locator("time").inner_text()
                assert re.fullmatch(r"\d\d:\d\d:\d\d", shown), shown  # 24-hour, no 上午/下午 or AM/PM
                site = datetime.now(ZoneInfo("Asia/Shanghai"))
                near = {(site - timedelta(minutes=m)).strftime("%H:%M") for m in range(3)}
                assert shown[:5] in near, (shown, near)  # the site's zone, not New York's
                page.screenshot(path=str(screenshot_path("panel-zh.png", tmp_path)), animations="disabled")

                page.locator("form.lang").get_by_role("button", name="English").click()
                expect(page.locator("h1")).to_have_text("Room 101")
                expect(page.locator("html")).to_have_attribute("lang", "en")
                page.get_by_role("button", name="Log out").click()
                page.wait_for_url(re.compile(r"/login"))
                chinese.close()

                fresh = browser.new_context(locale="zh-CN")  # a new browser: no cookie, asks for Chinese
                page = fresh.new_page()
                page.goto(f"{base}/login")
                expect(page.locator("html")).to_have_attribute("lang", "zh-CN")  # nobody has logged in yet
                page.fill("input[name=username]", "teacher")
                page.fill("input[name=password]", logins["teacher"])
                page.get_by_role("button", name="登录").click()
                page.wait_for_url(re.compile(r"/panel/gw-101$"))
                expect(page.locator("h1")).to_have_text("Room 101")  # the account's choice, over the browser's
                expect(page.locator("#live")).to_have_text("Live", timeout=10_000)
                fresh.close()
            finally:
                browser.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(15)
    assert "Traceback" not in log_path.read_text(errors="replace")


def test_campus_web_takes_a_site_language_and_zone_and_refuses_others_in_one_line() -> None:
    from programs.cli import build_parser

    args = build_parser().parse_args(["web", "--store", "sqlite:///x.db"])
    assert (args.lang, args.timezone) == ("zh-CN", "Asia/Shanghai")  # a school's site: Chinese, Beijing time
    args = build_parser().parse_args(["web", "--store", "sqlite:///x.db", "--lang", "en", "--timezone", "Asia/Urumqi"])
    assert (args.lang, args.timezone) == ("en", "Asia/Urumqi")
    for bad in (["--lang", "fr"], ["--timezone", "Mars/Base"]):
        result = subprocess.run([sys.executable, "-m", "programs.cli", "web", "--store", "sqlite:///x.db", *bad],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and bad[0] in result.stderr and "Traceback" not in result.stderr
