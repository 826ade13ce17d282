"""Issue 20, what is not a template or a page script: API refusals, imports, exports, the OpenAPI document
and alarms in the request's language (campus/i18n.py marks, dashboards/i18n.py translates).

Each refusal is checked both ways: Chinese when the request asks for it (Accept-Language or ?lang), the
English it always was without (existing tests assert that English); the field it names stays as it is.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest
from babel.messages.pofile import read_po
from openpyxl import load_workbook
from sqlalchemy import text

from campus import names
from campus.i18n import LazyText, lazy_gettext, message_of
from central import alarms as alarm_engine
from central import provisioning as prov
from central import timetable_csv as tcsv
from central.ledger import Sequenced
from central.registry import Alarm
from central.store.base import Sample
from dashboards import close_app, i18n_build
from dashboards.context import central
from tests.apps import ENV_AND_PROJECTOR, add_people, central_db, register_rooms, sqlite_only, web_app

NOW = time.time()
ZH = {"Accept-Language": "zh-CN,zh;q=0.9"}


def co2_rooms(ledger, points) -> None:
    """gw-101 with CO2 at 1800 ppm (above the default limit of 1500), gw-102 at 800."""
    from campus.contract import State

    for gw, room, co2 in (("gw-101", "101", 1800), ("gw-102", "102", 800)):
        ledger.record([Sequenced("s1", gw, "env", 1, NOW - 5, values={"co2_ppm": co2})],
                      [("s1", gw, State(online=True, ts=NOW, room=room, devices=ENV_AND_PROJECTOR, interval=5))], [])
        points.write([Sample("s1", gw, "env", "environment", NOW - 5, {"co2_ppm": float(co2)})])


@pytest.fixture
def app(tmp_path: Path, central_db_url: str, monkeypatch: pytest.MonkeyPatch):
    app = web_app(central_db(tmp_path, co2_rooms, central_db_url), monkeypatch)
    register_rooms(app)
    app.tokens = add_people(app)
    yield app
    close_app(app)


def call(app, method: str, path: str, role: str = "admin", headers: dict[str, str] | None = None, **kw):
    return app.test_client().open(path, method=method, **kw,
                                  headers={"Authorization": f"Bearer {app.tokens[role]}", **(headers or {})})


# ---------------------------------------------------------------- API refusals

HOSTILE = [
    # (method, path, body, English, Chinese, field)
    ("POST", "/api/gateways/gw-101/devices/proj/commands", {"action": "power_on", "colour": "red"},
     "unknown field 'colour' (a command has action, params and ttl)", "未知字段 'colour'（指令包含 action、params 和 ttl）",
     "colour"),
    ("POST", "/api/gateways/gw-101/devices/proj/commands", '{"action": "set_volume", "params": {"level": NaN}}',
     "the body is not valid JSON: NaN is not a number JSON allows", "请求体不是有效的 JSON：NaN 不是 JSON 允许的数值", None),
    ("POST", "/api/gateways/gw-101/devices/proj/commands", [1, 2],
     "the body must be a JSON object, got an array", "请求体必须是 JSON 对象，收到的是数组", None),
    ("POST", "/api/gateways/gw-101/devices/proj/commands", {"action": "power_on", "params": {"level": 5}},
     "params.level is not a parameter of power_on (it takes none)", "params.level 不是 power_on 的参数（其参数为无）",
     "params.level"),
    ("GET", "/api/gateways?limit=lots", None,
     "query parameter 'limit' must be a whole number from 1 to", "查询参数 'limit' 必须是 1 到", None),
    ("GET", "/api/telemetry?gateway=gw-101&device=env&metric=co2_ppm&start=soon", None,
     "query parameter 'start' must be a unix time, got 'soon'", "查询参数 'start' 必须是 Unix 时间，收到的是 'soon'", None),
    ("GET", "/api/commands/no%20such", None,
     "no command 'no such': not a valid id", "没有指令 'no such'：不是有效的编号", None),
    ("PUT", "/api/schools/s1/timetable", {"periods": [{"weekday": 1, "number": 1, "start": "09:00", "end": "08:00"}]},
     "periods[0].end: 08:00 is not after the start 09:00", "periods[0].end：08:00 不晚于开始时间 09:00",
     "periods[0].end"),
]


@sqlite_only
@pytest.mark.parametrize(("method", "path", "body", "english", "chinese", "field"), HOSTILE,
                         ids=[h[1].split("?")[0] + f"-{i}" for i, h in enumerate(HOSTILE)])
def test_a_refusal_is_in_the_language_asked_for_and_english_without(app, method, path, body, english, chinese,
                                                                     field) -> None:
    kw = {"data": body, "content_type": "application/json"} if isinstance(body, str) else \
        {"json": body} if body is not None else {}
    before = call(app, "GET", "/api/commands").headers["X-Total-Count"]
    plain = call(app, method, path, **kw)
    zh = call(app, method, path, headers=ZH, **kw)
    by_query = call(app, method, path + ("&" if "?" in path else "?") + "lang=zh-CN", **kw)
    assert plain.status_code == zh.status_code == by_query.status_code and 400 <= plain.status_code < 500
    assert english in plain.get_json()["error"], plain.get_json()
    assert chinese in zh.get_json()["error"], zh.get_json()
    assert zh.get_json()["error"] == by_query.get_json()["error"]
    assert "must" not in zh.get_json()["error"]  # not the English with a Chinese word in it
    assert plain.get_json().get("field") == zh.get_json().get("field") == field  # the field keeps its name
    assert call(app, "GET", "/api/commands").headers["X-Total-Count"] == before  # nothing was sent


@sqlite_only
def test_a_role_refusal_names_the_roles_in_the_readers_language(app) -> None:
    zh = call(app, "GET", "/api/board", role="teacher", headers=ZH)
    plain = call(app, "GET", "/api/board", role="teacher")
    assert zh.status_code == plain.status_code == 403
    assert zh.get_json()["error"] == "需要角色 管理员或设施管理员", zh.get_json()
    assert plain.get_json()["error"] == "this needs the role admin or facility"


@sqlite_only
def test_a_login_refusal_and_a_page_error_speak_chinese(app) -> None:
    client = app.test_client()
    assert client.get("/api/gateways", headers=ZH).get_json() == {"error": "需要登录"}
    assert client.get("/api/gateways").get_json() == {"error": "login required"}
    page = call(app, "GET", "/health/rooms/gw-101?window=1y", role="facility", headers=ZH)
    assert page.status_code == 400 and "时间窗口必须是 1h、24h 或 7d" in page.get_data(as_text=True)


def test_errors_keep_english_below_the_web_app() -> None:
    """str() of a marked error is the English it always was (logs, the CLI, the audit trail)."""
    with pytest.raises(names.BadName) as err:
        names.display_name("A\u202eB", "room", max_chars=10)
    assert str(err.value) == ("room: an invisible format character (U+202E) at character 2 is not allowed: "
                              "a name is one line of visible text")
    assert isinstance(message_of(err.value), LazyText) and err.value.reason == str(err.value.reason)
    # Rendered with a catalog, the nested parts are translated too.
    table = {"%(field)s: %(reason)s": "%(field)s：%(reason)s", "needs 1 to %(max)s characters": "需要 1 到 %(max)s 个字符"}
    nested = lazy_gettext("%(field)s: %(reason)s", field="room", reason=lazy_gettext("needs 1 to %(max)s characters",
                                                                                     max=64))
    assert nested.render(lambda s: table.get(s, s)) == "room：需要 1 到 64 个字符"
    assert LazyText.from_dict(json.loads(json.dumps(nested.as_dict()))) == nested


# ---------------------------------------------------------------- CSV imports: Chinese or English headers

ZH_IMPORT = ("学校,教学楼,教室,网关,设备,设备型号,地址,选项\n"
             "s9,实验楼,物理实验室,gw-s9-1,env,env-6in1-modbus,host=10.9.1.21; port=502; unit=1,\n"
             "s9,实验楼,化学实验室,,,,,\n")


@sqlite_only
def test_the_device_import_reads_a_chinese_header(app) -> None:
    reg = central(app).registry
    report = prov.import_csv(reg, ZH_IMPORT.encode("gb18030"))
    assert report.ok and report.errors == [], report.errors
    assert report.created["rooms"] == 2 and report.created["gateways"] == 1 and report.created["devices added"] == 1
    info = reg.gateway_info("gw-s9-1")
    assert info is not None and [d["id"] for d in info["devices"]] == ["env"]
    mixed = "school,教学楼,room,网关\ns9,实验楼,生物实验室,\n"  # each column in either language
    assert prov.import_csv(reg, mixed.encode()).ok


@sqlite_only
@pytest.mark.parametrize(("header", "named", "says"), [
    ("学校,教室,颜色", "颜色", "unknown column; the columns are school,building"),
    ("school,教室,room", "room", "column appears twice in the header (also as 教室)"),
    ("教室,网关", "school", "required column is missing from the header (school or 学校)"),
])
def test_a_bad_import_header_is_one_error_naming_the_column(app, header, named, says) -> None:
    reg = central(app).registry
    before = prov.places(reg)
    report = prov.import_csv(reg, f"{header}\ns9,101,x\n".encode())
    assert not report.ok and [(e.line, e.column) for e in report.errors] == [(1, named)], report.errors
    assert says in str(report.errors[0].message)
    assert prov.places(reg) == before  # nothing imported


@sqlite_only
def test_import_errors_name_the_column_as_the_file_spells_it_in_chinese(app) -> None:
    client = app.test_client()
    page = client.get("/login", headers=ZH).get_data(as_text=True)
    token = page.split('name="csrf" value="')[1].split('"')[0]
    assert client.post("/login", data={"csrf": token, "username": "boss", "password": "boss-password"}).status_code == 302
    csrf = client.get("/provisioning/import").get_data(as_text=True).split('name="csrf" value="')[1].split('"')[0]
    bad = "学校,教室,网关,设备\ns9,101,gw-x,env\n"  # a device without its profile
    resp = client.post("/provisioning/import", headers=ZH, content_type="multipart/form-data",
                       data={"csrf": csrf, "file": (io.BytesIO(bad.encode()), "x.csv")})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "设备必填" in html and ">设备型号<" in html, html  # the column as spelled
    problems = prov.import_csv(central(app).registry, bad.encode()).errors
    assert [(e.column, str(e.message)) for e in problems] == [("设备型号", "required for a device")]


def test_the_timetable_import_reads_either_language_and_names_an_unknown_column() -> None:
    english = "type,name,weekday,number,start,end,follows\nperiod,P1,1-5,1,08:00,08:45,\n"
    chinese = "类型,名称,星期,节次,开始,结束,按星期\n节次,第1节,1-5,1,08:00,08:45,\n"
    mixed = "类型,name,星期,number,开始,end\nperiod,P1,1-5,1,08:00,08:45\n"
    for text_ in (english, chinese, mixed):
        report = tcsv.parse(text_, "s1")
        assert report.errors == [] and len(report.timetable.periods) == 5, (text_, report.errors)
    bad = tcsv.parse("类型,颜色,开始\n节次,红,08:00\n", "s1").errors
    assert [(e.line, e.column) for e in bad] == [(1, "颜色")] and "类型,名称,星期" in str(bad[0].message)
    assert tcsv.TIMETABLE_HEADER.names(chinese=True) == ["类型", "名称", "星期", "节次", "开始", "结束", "按星期"]


# ---------------------------------------------------------------- exports


@sqlite_only
def test_exports_have_headers_in_the_language_of_the_request(app) -> None:
    zh = call(app, "GET", "/health/usage-rate.csv?week=2025-W37", role="facility", headers=ZH)
    rows = list(csv.reader(io.StringIO(zh.data.decode("utf-8-sig"))))
    assert rows[0] == ["层级", "学校", "教学楼", "教室", "网关", "设备", "上课节次", "使用节次", "应用率"]
    assert rows[1][0] == "区县"
    en = call(app, "GET", "/health/usage-rate.csv?week=2025-W37", role="facility")
    assert next(csv.reader(io.StringIO(en.data.decode("utf-8-sig"))))[0] == "level"
    book = load_workbook(io.BytesIO(call(app, "GET", "/health/usage-rate.xlsx?week=2025-W37", role="facility",
                                         headers=ZH).data))
    assert book.sheetnames == ["应用率", "每日"] and book["每日"]["A1"].value == "日期"
    history = call(app, "GET", "/health/rooms/gw-101/history.csv?window=1h", role="facility", headers=ZH)
    assert next(csv.reader(io.StringIO(history.data.decode("utf-8-sig"))))[:3] == ["时间", "Unix时间戳", "设备"]
    zh_tt = call(app, "GET", "/health/timetables/s1/timetable.csv", role="facility", headers=ZH)
    en_tt = call(app, "GET", "/health/timetables/s1/timetable.csv", role="facility")
    assert zh_tt.data.decode("utf-8-sig").startswith("类型,名称,星期,节次,开始,结束,按星期")
    assert en_tt.data.decode("utf-8-sig").startswith("type,name,weekday,number,start,end,follows")
    example = call(app, "GET", "/provisioning/import/example.csv", headers=ZH).data.decode("utf-8-sig")
    report = prov.import_csv(central(app).registry, example.encode())  # the Chinese example imports as it is
    assert "学校,教学楼,教室,网关" in example and report.ok, report.errors


# ---------------------------------------------------------------- OpenAPI


@sqlite_only
def test_the_openapi_document_is_in_the_language_of_the_request(app) -> None:
    client = app.test_client()
    en = client.get("/api/openapi.json").get_json()
    zh = client.get("/api/openapi.json", headers=ZH).get_json()
    assert en["paths"]["/api/health"]["get"]["summary"] == "Liveness"
    assert zh["paths"]["/api/health"]["get"]["summary"] == "存活检查"
    assert zh["paths"]["/api/schools"]["get"]["summary"].startswith("区县概况")
    assert "`sort` 取 school, rooms, online" in zh["paths"]["/api/schools"]["get"]["summary"]  # its parameter kept
    assert set(zh["paths"]) == set(en["paths"])  # the same document, only its words


# ---------------------------------------------------------------- alarms


def test_an_alarm_message_is_stored_translatable_and_old_rows_still_read(app) -> None:
    c = central(app)
    outcome = alarm_engine.evaluate(c.registry, c.ledger, NOW)
    assert len(outcome.raised) == 1
    with c.registry.session() as s:
        raw = s.execute(text("SELECT message FROM alarms WHERE id = :id"), {"id": outcome.raised[0]}).scalar_one()
        assert json.loads(raw) == {"msgid": "CO2 %(value)s ppm is above the limit of %(limit)s ppm",
                                   "params": {"value": "1800", "limit": "1500"}}
        # Read through the model it is the English text, a str any reader can log or send as JSON.
        row = s.get(Alarm, outcome.raised[0])
        assert isinstance(row.message, str) and json.dumps({"m": row.message}) == \
            '{"m": "CO2 1800 ppm is above the limit of 1500 ppm"}'
        rule = s.scalars(text("SELECT id FROM alarm_rules WHERE kind = 'co2_above'")).one()
        s.add(Alarm(rule_id=rule, gateway="gw-102", device="env", value="1600 ppm", raised_at=NOW - 60,
                    message="CO2 1600 ppm is above the limit of 1500 ppm"))  # as written before issue 20
    zh = {a["gateway"]: a for a in call(app, "GET", "/api/alarms", role="facility", headers=ZH).get_json()}
    en = {a["gateway"]: a for a in call(app, "GET", "/api/alarms", role="facility").get_json()}
    assert zh["gw-101"]["message"] == "CO2 1800 ppm，高于限值 1500 ppm" and zh["gw-101"]["label"] == "CO2 浓度过高"
    assert en["gw-101"]["message"] == "CO2 1800 ppm is above the limit of 1500 ppm"
    assert en["gw-101"]["label"] == "CO2 too high"
    assert zh["gw-102"]["message"] == en["gw-102"]["message"] == "CO2 1600 ppm is above the limit of 1500 ppm"
    board = call(app, "GET", "/health/alarms", role="facility", headers=ZH)
    assert board.status_code == 200
    # Searching still finds it by what its message says.
    assert call(app, "GET", "/api/alarms?q=CO2", role="facility").headers["X-Total-Count"] == "2"


# ---------------------------------------------------------------- the catalog


OURS = ("campus/", "central/", "device_profiles/", "dashboards/api.py", "dashboards/openapi.py",
        "dashboards/strict_json.py", "dashboards/auth.py", "dashboards/health", "dashboards/provisioning.py",
        "dashboards/timetables.py", "dashboards/history_csv.py", "dashboards/city.py", "dashboards/panel.py",
        "dashboards/sessions.py", "dashboards/__init__.py")


def test_every_message_marked_below_the_templates_has_a_current_chinese_translation() -> None:
    """The messages marked in Python (not a template, not a page script) are all in the zh_CN catalog,
    translated and not fuzzy, with the same %(name)s parameters."""
    extracted = i18n_build.extract()
    with open(i18n_build.TRANSLATIONS / "zh_Hans_CN" / "LC_MESSAGES" / "messages.po", "rb") as f:
        catalog = read_po(f, locale="zh_Hans_CN")
    missing = []
    for message in extracted:
        if not message.id or not any(loc[0].startswith(OURS) for loc in message.locations):
            continue
        entry = catalog.get(message.id)
        if entry is None or not entry.string or entry.fuzzy:
            missing.append(message.id)
    assert missing == []
    assert not [(m.id, errors) for m, errors in catalog.check()]
