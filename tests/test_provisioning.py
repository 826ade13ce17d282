"""Provisioning pages through Flask's test client, with a real central database: SQLite and PostgreSQL
(`central_db_url`) for what is written to the registry and read back, SQLite alone (`sqlite_only`)
for refusals decided before it.

Admin only; gateways registered with credentials shown once; devices validated
as the agent validates them (nothing saved on error); CSV import all or
nothing with per-line errors; broker files written or downloaded; config push
through a real Mosquitto, and the page's view of what each gateway applied.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import re
import stat
import threading
import time
import zipfile
from html import unescape as html_unescape
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from campus import contract
from campus.contract import State
from central import provisioning as prov
from central.ledger import Ledger, Sequenced
from dashboards import WebConfig, close_app, create_app
from dashboards.context import central
from device_profiles.config import load_gateway_config
from tests.apps import sqlite_only

PAGES = ["/provisioning/gateways", "/provisioning/places", "/provisioning/import", "/provisioning/broker",
         "/provisioning/ingest",
         "/provisioning/gateways/gw-101", "/provisioning/gateways/gw-101/config.yaml",
         "/provisioning/import/example.csv"]


def make_app(tmp_path: Path, db_url: str, mqtt_url: str | None = None):
    """The web app on the central database `db_url`, its points in their own SQLite file."""
    app = create_app(WebConfig(store_url=f"sqlite:///{tmp_path / 'points.db'}", db_url=db_url, mqtt_url=mqtt_url))
    app.config["TESTING"] = True
    reg = central(app).registry
    reg.register_gateway("gw-101", "s1", "101", "A")
    reg.add_user("boss", "boss-password", "admin")
    reg.add_user("fm", "fm-password", "facility")
    reg.add_user("teach", "teach-password", "teacher", rooms=[("s1", "101")])
    return app


@pytest.fixture
def app(tmp_path: Path, central_db_url: str):
    app = make_app(tmp_path, central_db_url)
    yield app
    close_app(app)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def login(app, user: str, password: str):
    client = app.test_client()
    token = csrf_of(client.get("/login").get_data(as_text=True))
    resp = client.post("/login", data={"csrf": token, "username": user, "password": password})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    # Logging in starts a new session: its CSRF token is in every page's logout form.
    client.csrf = csrf_of(client.get("/provisioning/gateways").get_data(as_text=True))
    return client


def post(client, path: str, **data):
    return client.post(path, data={"csrf": client.csrf, **data})


def mosquitto_hash_ok(digest: str, password: str) -> bool:
    """Verify a `$7$` password_file hash the way Mosquitto does (PBKDF2-SHA512)."""
    _, seven, iterations, salt, expected = digest.split("$")
    assert seven == "7"
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(base64.b64encode(got).decode(), expected)


def stored_hash(app, gateway: str) -> str:
    from central.registry import Gateway

    with central(app).registry.session() as s:
        return s.get(Gateway, gateway).mqtt_password_hash


# ---------------------------------------------------------------- access


@sqlite_only
def test_pages_are_for_admins_only(app) -> None:
    anonymous = app.test_client()
    others = [login(app, "fm", "fm-password"), login(app, "teach", "teach-password")]
    admin = login(app, "boss", "boss-password")
    for path in PAGES:
        resp = anonymous.get(path)
        assert resp.status_code == 302 and "/login" in resp.headers["Location"], path
        for client in others:
            assert client.get(path).status_code == 403, path
        assert admin.get(path).status_code == 200, path
    # Only admins see the menu entry.
    assert "Provisioning" in admin.get("/provisioning/places").get_data(as_text=True)
    assert ">Provisioning<" not in others[0].get("/").get_data(as_text=True)


@sqlite_only
def test_writes_are_refused_to_other_roles_and_without_csrf(app) -> None:
    reg = central(app).registry
    for user, password in (("fm", "fm-password"), ("teach", "teach-password")):
        client = login(app, user, password)
        assert post(client, "/provisioning/gateways", school="s1", room="102", gateway="gw-x").status_code == 403
        assert post(client, "/provisioning/gateways/gw-101/devices", device="env",
                    profile="env-6in1-modbus", **{"addr.modbus.host": "10.0.0.5"}).status_code == 403
    admin = login(app, "boss", "boss-password")
    no_csrf = admin.post("/provisioning/gateways", data={"school": "s1", "room": "102", "gateway": "gw-x"})
    assert no_csrf.status_code == 403
    assert reg.gateway_info("gw-x") is None
    assert reg.gateway_info("gw-101")["devices"] == []
    refusals = [a for a in reg.audit_trail() if a["action"] == "refused"]
    assert len(refusals) >= 5


# ---------------------------------------------------------------- gateways


def test_register_gateway_shows_the_password_once(tmp_path: Path, mosquitto, central_db_url: str) -> None:
    app = make_app(tmp_path, central_db_url, mosquitto.url)
    try:
        admin = login(app, "boss", "boss-password")
        resp = post(admin, "/provisioning/gateways", school="s1", building="B", room="201", gateway="gw-201")
        html = resp.get_data(as_text=True)
        assert resp.status_code == 200, html
        assert resp.headers["Cache-Control"] == "no-store"
        password = re.search(r'id="mqtt-password">([^<]+)<', html).group(1)
        assert mosquitto_hash_ok(stored_hash(app, "gw-201"), password)
        assert "shown only this once" in html

        # The YAML on the page is a config the agent accepts, with the app's broker and these credentials.
        text = html_unescape(re.search(r'<textarea id="gw-yaml"[^>]*>(.*?)</textarea>', html, re.S).group(1))
        path = tmp_path / "gw-201.yaml"
        path.write_text(text)
        config = load_gateway_config(path)
        assert (config.school, config.gateway, config.room, config.building) == ("s1", "gw-201", "201", "B")
        assert config.mqtt == f"mqtt://gw-s1-gw-201:{password}@127.0.0.1:{mosquitto.port}"
        assert 'download="gw-201.yaml"' in html

        # Never again: not on the list, the detail page, nor the config download.
        for page in ("/provisioning/gateways", "/provisioning/gateways/gw-201",
                     "/provisioning/gateways/gw-201/config.yaml"):
            body = admin.get(page).get_data(as_text=True)
            assert password not in body
            assert "gw-201" in body
        assert "CHANGE-ME" in admin.get("/provisioning/gateways/gw-201/config.yaml").get_data(as_text=True)

        # A second registration of the same id is refused, and the first password still holds.
        again = post(admin, "/provisioning/gateways", school="s1", room="201", gateway="gw-201")
        assert again.status_code == 400 and "already registered" in again.get_data(as_text=True)
        assert mosquitto_hash_ok(stored_hash(app, "gw-201"), password)

        # A new password replaces the old one and is shown once too.
        resp = post(admin, "/provisioning/gateways/gw-201/password")
        new = re.search(r'id="mqtt-password">([^<]+)<', resp.get_data(as_text=True)).group(1)
        assert new != password and mosquitto_hash_ok(stored_hash(app, "gw-201"), new)
        actions = [a["action"] + " " + a["detail"] for a in central(app).registry.audit_trail()]
        assert any("registered gw-201" in a for a in actions)
        assert any("new MQTT password for gw-201" in a for a in actions)
    finally:
        close_app(app)


def test_add_device_with_a_bad_address_names_the_field_and_saves_nothing(app) -> None:
    reg = central(app).registry
    admin = login(app, "boss", "boss-password")
    version = reg.gateway_info("gw-101")["config_version"]

    bad = post(admin, "/provisioning/gateways/gw-101/devices", device="env", profile="env-6in1-modbus",
               **{"addr.modbus.host": "10.0.0.5", "addr.modbus.port": "70000"})
    html = bad.get_data(as_text=True)
    assert bad.status_code == 400
    assert "field address: port must be 1-65535, got 70000" in html
    assert 'value="70000"' in html  # the form keeps what was typed
    assert reg.gateway_info("gw-101")["devices"] == []
    assert reg.gateway_info("gw-101")["config_version"] == version

    # JSON address with a field the PJLink driver does not know.
    bad = post(admin, "/provisioning/gateways/gw-101/devices", device="proj", profile="projector-pjlink",
               address_json='{"host": "10.0.0.6", "prot": 4352}')
    assert bad.status_code == 400 and "unknown address field &#39;prot&#39;" in bad.get_data(as_text=True)
    bad = post(admin, "/provisioning/gateways/gw-101/devices", device="bad id!", profile="env-6in1-modbus",
               **{"addr.modbus.host": "10.0.0.5"})
    assert bad.status_code == 400 and "field id" in bad.get_data(as_text=True)
    bad = post(admin, "/provisioning/gateways/gw-101/devices", device="x", profile="no-such-model")
    assert bad.status_code == 400 and "field profile" in bad.get_data(as_text=True)
    assert reg.gateway_info("gw-101")["devices"] == []
    # Numbers JSON does not have: refused, not stored (SQLite's JSON column took NaN, which the gateway's
    # config parser then refused; PostgreSQL's json type refused it itself: a 503).
    for field, text, problem in (("options_json", '{"gain": NaN}', "NaN"), ("address_json", '{"host": "h", '
                                 '"port": 1e999}', "finite"), ("options_json", '{"a": 1, "a": 2}', "twice")):
        bad = post(admin, "/provisioning/gateways/gw-101/devices", device="proj", profile="projector-pjlink",
                   **{"addr.pjlink.host": "10.0.0.6", field: text})
        assert bad.status_code == 400 and problem in bad.get_data(as_text=True), (field, text)
    assert reg.gateway_info("gw-101")["devices"] == []

    good = post(admin, "/provisioning/gateways/gw-101/devices", device="env", profile="env-6in1-modbus",
                **{"addr.modbus.host": "10.0.0.5", "addr.modbus.port": "502", "addr.modbus.unit": "3",
                   "addr.pjlink.host": "ignored: another protocol's field"})
    assert good.status_code == 302
    info = reg.gateway_info("gw-101")
    assert info["devices"] == [{"id": "env", "profile": "env-6in1-modbus",
                                "address": {"host": "10.0.0.5", "port": 502, "unit": 3}, "options": {}}]
    assert info["config_version"] == version + 1
    page = admin.get("/provisioning/gateways/gw-101").get_data(as_text=True)
    assert "Device env saved" in page and 'data-device="env"' in page

    dup = post(admin, "/provisioning/gateways/gw-101/devices", device="env", profile="env-6in1-modbus",
               **{"addr.modbus.host": "10.0.0.9"})
    assert dup.status_code == 400 and "already on gw-101" in dup.get_data(as_text=True)

    assert post(admin, "/provisioning/gateways/gw-101/devices/env/remove").status_code == 302
    assert reg.gateway_info("gw-101")["devices"] == []
    trail = [(a["action"], a["ok"]) for a in reg.audit_trail()]
    assert ("provision.device", False) in trail and ("provision.device", True) in trail


@sqlite_only
def test_push_without_mqtt_is_a_clear_error(app) -> None:
    admin = login(app, "boss", "boss-password")
    resp = post(admin, "/provisioning/gateways/gw-101/push")
    assert resp.status_code == 400
    assert "no MQTT connection" in resp.get_data(as_text=True)


# ---------------------------------------------------------------- CSV import


GOOD_CSV = """\
# rooms and devices of building A
school,building,room,gateway,device,profile,address,options
s2,A,A-101,gw-a101,env,env-6in1-modbus,host=10.1.1.21; port=502; unit=1,
s2,A,A-101,gw-a101,projector,projector-pjlink2,"{""host"": ""10.1.1.22"", ""password"": ""1234""}",
s2,A,A-101,gw-a101,display,display-samsung-mdc,serial=/dev/ttyUSB0; display_id=1,
s2,A,A-102,gw-a102,cards,card-em4100,serial=/dev/ttyUSB1,
s2,B,B-201,,,,,
s1,,101,gw-101,env,env-6in1-modbus,host=10.0.0.5,{"timeout": 2}
"""


def upload(client, text: str | bytes, name: str = "rooms.csv"):
    data = text.encode() if isinstance(text, str) else text
    return client.post("/provisioning/import", data={"csrf": client.csrf, "file": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def snapshot(app) -> tuple:
    reg = central(app).registry
    return json.dumps(reg.gateways(), sort_keys=True), json.dumps(prov.places(reg), sort_keys=True)


def test_csv_import_of_a_good_file_imports_everything(app) -> None:
    reg = central(app).registry
    admin = login(app, "boss", "boss-password")
    resp = upload(admin, GOOD_CSV)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200, html
    assert "Imported 6 lines" in html
    assert resp.headers["Cache-Control"] == "no-store"  # new gateways' passwords are on it
    a101 = reg.gateway_info("gw-a101")
    assert (a101["school"], a101["building"], a101["room"]) == ("s2", "A", "A-101")
    assert {d["id"]: d["address"] for d in a101["devices"]} == {
        "env": {"host": "10.1.1.21", "port": 502, "unit": 1},
        "projector": {"host": "10.1.1.22", "password": "1234"},
        "display": {"serial": "/dev/ttyUSB0", "display_id": 1}}
    assert [d["id"] for d in reg.gateway_info("gw-a102")["devices"]] == ["cards"]
    existing = reg.gateway_info("gw-101")
    assert existing["devices"][0]["options"] == {"timeout": 2}
    rooms = {(s["id"], r["building"], r["name"]) for s in prov.places(reg) for r in s["rooms"]}
    assert {("s2", "A", "A-101"), ("s2", "A", "A-102"), ("s2", "B", "B-201")} <= rooms
    # The new gateways' passwords are on the page once, and they match the stored hashes.
    for gateway in ("gw-a101", "gw-a102"):
        row = re.search(rf">{gateway}</a></td><td class=\"mono\">[^<]+</td>\s*<td><code class=\"secret\">([^<]+)<",
                        html)
        assert row and mosquitto_hash_ok(stored_hash(app, gateway), row.group(1))
    assert "gw-101" not in re.findall(r">(gw-[^<]+)</a></td><td class=\"mono\">", html)  # existing: no new password
    assert any(a["action"] == "provision.import" and a["ok"] for a in reg.audit_trail())


def test_csv_import_with_one_bad_line_imports_nothing_and_names_it(app) -> None:
    reg = central(app).registry
    admin = login(app, "boss", "boss-password")
    before = snapshot(app)
    bad = GOOD_CSV.replace("display_id=1", "display_id=999")  # line 5
    resp = upload(admin, bad)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400
    assert "Nothing imported: 1 problem" in html
    rows = re.findall(r"<tr><td>(\d+)</td><td class=\"mono\">([^<]+)</td><td>([^<]+)</td></tr>", html)
    assert rows == [("5", "address", "display_id must be a whole number 0-254, got 999")]
    assert snapshot(app) == before
    assert reg.gateway_info("gw-a101") is None
    assert any(a["action"] == "provision.import" and not a["ok"] and "line 5" in a["detail"]
               for a in reg.audit_trail())


def test_csv_import_reports_every_problem_line_by_line(app) -> None:
    admin = login(app, "boss", "boss-password")
    before = snapshot(app)
    text = (
        "school,room,gateway,device,profile,address\n"
        "s2,A-101,gw-a101,env,env-6in1-modbus,host=10.1.1.21\n"      # 2: fine
        ",A-102,,,,\n"                                                # 3: school missing
        "s2,A-103,gw-a101,env2,env-6in1-modbus,host=10.1.1.23\n"      # 4: gateway in another room
        "s2,A-101,gw-a101,env,env-6in1-modbus,host=10.1.1.24\n"       # 5: device twice
        "s2,A-104,gw-a104,proj,projector-pjlink,{\"host\": 1\n"       # 6: broken JSON
        "s1,999,gw-101,env,env-6in1-modbus,host=10.0.0.5\n"           # 7: registered gateway, wrong room
        "s2,A-105,gw-a105,cam,camera-occupancy,source=ftp://x/y\n"    # 8: camera URL scheme
    )
    resp = upload(admin, text)
    rows = re.findall(r"<tr><td>(\d+)</td><td class=\"mono\">([^<]+)</td>", resp.get_data(as_text=True))
    assert resp.status_code == 400
    assert rows == [("3", "school"), ("4", "gateway"), ("5", "device"), ("6", "address"), ("7", "gateway"), ("8", "address")]
    assert snapshot(app) == before

    bad_header = upload(admin, "school,room,colour\ns2,1,red\n")
    assert bad_header.status_code == 400 and "unknown column" in bad_header.get_data(as_text=True)
    gbk = upload(admin, "school,building,room\ns2,教学楼,三年级一班\n".encode("gb18030"))
    assert gbk.status_code == 200
    reg = central(app).registry
    assert ("教学楼", "三年级一班") in {(r["building"], r["name"]) for s in prov.places(reg) for r in s["rooms"]}


@sqlite_only
def test_every_csv_import_refuses_an_empty_file_and_a_header_alone_in_one_way(app) -> None:
    """One ending for the four CSV imports (`CsvRecords.ending`): a file without a header (empty, or comments
    and blank lines only) names the header in both languages, as each import reads either (the roster and
    the podium cards once named the English one alone); a header with nothing after it says so in the
    import's own words; nothing is written."""
    from central import attendance, podium, timetable_csv, timetables

    reg = central(app).registry
    room = podium.find_room(reg, "s1", "101")
    assert room is not None
    imports = [
        (lambda data: prov.import_csv(reg, data), prov.IMPORT_HEADER, "no rows after the header"),
        (lambda data: attendance.import_roster(reg, "s1", data, "boss"), attendance.ROSTER_HEADER,
         "no people after the header"),
        (lambda data: podium.import_cards(reg, "s1", data, "boss", room="101"), podium.CARD_HEADER,
         "no cards after the header"),
        (lambda data: timetable_csv.import_csv(reg, "s1", data, "boss"), timetable_csv.TIMETABLE_HEADER,
         "no lines after the header"),
    ]
    before = snapshot(app)
    for run, header, nothing in imports:
        empty = (f"the file is empty; the first line must be the header {','.join(header.columns)} or "
                 f"{','.join(header.names(chinese=True))}")
        for data in (b"", b"\xef\xbb\xbf", b"# rooms of 2025\n\n  ,  \n"):
            report = run(data)
            assert not report.ok and [(e.line, e.column, str(e.message)) for e in report.errors] == [(1, "", empty)]
        for head in (",".join(header.columns), ",".join(header.names(chinese=True))):
            report = run(f"{head}\n# nobody yet\n".encode("gb18030"))
            assert not report.ok and [(e.line, str(e.message)) for e in report.errors] == [(1, nothing)]
    assert snapshot(app) == before
    assert attendance.roster(reg, "s1") == [] and podium.cards(reg, room) == []
    assert timetables.load(reg, "s1") is None


@sqlite_only
def test_every_csv_import_refuses_a_file_that_stops_being_csv_with_one_error_naming_the_line(app) -> None:
    """A record the csv module cannot read (a value over its field limit, plain or quoted across lines) after
    good lines: each of the four imports says so once, on the line the record starts on, and writes nothing.
    The timetable's lines overlap, so a timetable import that went on to check between lines would say more."""
    from central import attendance, podium, timetable_csv, timetables

    reg = central(app).registry
    room = podium.find_room(reg, "s1", "101")
    assert room is not None
    imports = [
        (lambda data: prov.import_csv(reg, data), "school,room\ns1,901\n# a comment\n"),
        (lambda data: attendance.import_roster(reg, "s1", data, "boss"), "name,class,card\n张三,一班,12345678\n\n"),
        (lambda data: podium.import_cards(reg, "s1", data, "boss", room="101"), "card,role\n12345678,teacher\n\n"),
        (lambda data: timetable_csv.import_csv(reg, "s1", data, "boss"),
         "type,name,weekday,number,start,end\nperiod,1,1-5,1,08:00,08:45\nperiod,1b,1-5,1,08:30,09:15\n"),
    ]
    big = "x" * (csv.field_size_limit() + 1)
    invalid = f"not valid CSV: field larger than field limit ({csv.field_size_limit()})"
    before = snapshot(app)
    for run, good in imports:
        line = good.count("\n") + 1
        for bad in (f"{big},a\n", f'"{big[:10]}\n{big}",a\n'):
            report = run((good + bad + "more,lines\n").encode())
            assert not report.ok and [(e.line, e.column, str(e.message)) for e in report.errors] == [(line, "", invalid)]
    assert snapshot(app) == before
    assert attendance.roster(reg, "s1") == [] and podium.cards(reg, room) == []
    assert timetables.load(reg, "s1") is None


def test_places_create_school_and_room(app) -> None:
    admin = login(app, "boss", "boss-password")
    assert post(admin, "/provisioning/places", what="school", school="no1", name="第一中学").status_code == 302
    assert post(admin, "/provisioning/places", what="room", school="no1", building="东楼", room="301").status_code == 302
    bad = post(admin, "/provisioning/places", what="school", school="no 1")
    assert bad.status_code == 400 and "not a valid id" in bad.get_data(as_text=True)
    page = admin.get("/provisioning/places").get_data(as_text=True)
    assert "第一中学" in page and "东楼" in page and "301" in page


# ---------------------------------------------------------------- broker files


@sqlite_only
def test_broker_files_written_to_the_configured_dir_or_downloaded(app, tmp_path: Path, monkeypatch) -> None:
    admin = login(app, "boss", "boss-password")
    assert 'disabled' in admin.get("/provisioning/broker").get_data(as_text=True)  # no directory configured
    zipped = post(admin, "/provisioning/broker", action="download")
    assert zipped.status_code == 200 and zipped.mimetype == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(zipped.data)).namelist()
    assert sorted(names) == ["campus-broker/acl", "campus-broker/dynamic-security.json", "campus-broker/mosquitto.conf",
                             "campus-broker/passwd", "campus-broker/service-accounts.txt"]

    target = tmp_path / "broker"
    monkeypatch.setenv("CAMPUS_BROKER_CONFIG_DIR", str(target))
    resp = post(admin, "/provisioning/broker", action="write")
    assert resp.status_code == 200 and 'id="written"' in resp.get_data(as_text=True)
    assert stat.S_IMODE((target / "passwd").stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "service-accounts.txt").stat().st_mode) == 0o600
    assert "user gw-s1-gw-101" in (target / "acl").read_text()
    assert (target / "passwd").read_text().count("$7$") == 3  # gw-101, ingest, web
    first = (target / "service-accounts.txt").read_text()
    post(admin, "/provisioning/broker", action="write")
    assert (target / "service-accounts.txt").read_text() == first  # service passwords are kept
    assert any(a["action"] == "provision.broker_config" for a in central(app).registry.audit_trail())

    # On the district's broker: a bridge account and conf per school, in the zip too.
    resp = post(admin, "/provisioning/broker", action="write", district="mqtt.district.example:8883")
    assert resp.status_code == 200 and "bridge-s1" in resp.get_data(as_text=True)
    assert "address mqtt.district.example:8883" in (target / "bridges" / "bridge-s1.conf").read_text()
    assert "user bridge-s1" in (target / "acl").read_text()
    zipped = post(admin, "/provisioning/broker", action="download", district="mqtt.district.example:8883")
    assert "campus-broker/bridges/bridge-s1.conf" in zipfile.ZipFile(io.BytesIO(zipped.data)).namelist()
    bad = post(admin, "/provisioning/broker", action="write", district="8883")
    assert bad.status_code == 400 and "name the host" in bad.get_data(as_text=True)


# ---------------------------------------------------------------- config push, real Mosquitto


def test_push_publishes_the_retained_device_list_and_shows_versions(tmp_path: Path, mosquitto,
                                                                   central_db_url: str) -> None:
    app = make_app(tmp_path, central_db_url, mosquitto.url)
    try:
        reg = central(app).registry
        service = central(app).commands
        assert service.connected.wait(10)
        reg.add_device("gw-101", "env", "env-6in1-modbus", {"host": "10.0.0.5"})
        wanted = reg.gateway_info("gw-101")["config_version"]
        admin = login(app, "boss", "boss-password")
        page = admin.get("/provisioning/gateways").get_data(as_text=True)
        assert "not pushed yet" in page

        assert post(admin, "/provisioning/gateways/gw-101/push").status_code == 302

        # A new subscriber gets the retained device list from the broker.
        got: list[bytes] = []
        arrived = threading.Event()
        sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-reader")
        sub.on_message = lambda c, u, m: (got.append(m.payload), arrived.set())
        sub.connect("127.0.0.1", mosquitto.port)
        sub.subscribe(contract.config_topic("s1", "gw-101"), qos=1)
        sub.loop_start()
        try:
            assert arrived.wait(10)
        finally:
            sub.loop_stop()
            sub.disconnect()
        # With the school's card secret, the room's podium (none: no card enrolled) and rules (none: no idle-off set),
        # and the runs of its schedules (none here), central/edge_schedules.py.
        pushed = json.loads(got[0])
        assert pushed.pop("schedules")["runs"] == []
        assert pushed == {"version": wanted, "devices": [
            {"id": "env", "profile": "env-6in1-modbus", "address": {"host": "10.0.0.5"}, "options": {}}],
            "card_secret": reg.card_secret("s1"), "podium": None, "rules": None}
        page = admin.get("/provisioning/gateways").get_data(as_text=True)
        assert "waiting for the gateway" in page or "gateway offline" in page

        # The agent's answers, as ingest records them in the ledger.
        ledger = Ledger(central_db_url)
        try:
            ledger.record([Sequenced("s1", "gw-101", "agent", 1, time.time(), event=(
                "config_rejected", {"version": wanted, "error": "v2: field devices.0.address: boom"}))],
                [("s1", "gw-101", State(online=True, ts=time.time(), config_version=None, interval=5))], [])
            page = admin.get("/provisioning/gateways/gw-101").get_data(as_text=True)
            assert "refused" in page and "boom" in page
            ledger.record([], [("s1", "gw-101", State(online=True, ts=time.time(), config_version=wanted,
                                                      interval=5))], [])
        finally:
            ledger.close()
        row = re.search(r'<tr data-gateway="gw-101">(.*?)</tr>', admin.get("/provisioning/gateways")
                        .get_data(as_text=True), re.S).group(1)
        assert "in sync" in row and "online" in row
        assert any(a["action"] == "provision.push" and a["ok"] for a in reg.audit_trail())
    finally:
        close_app(app)


@sqlite_only
def test_push_all_to_hundreds_keeps_the_cookie_small_and_the_result_in_the_registry(tmp_path: Path, mosquitto,
                                                                                    central_db_url: str) -> None:
    """"Push all" used to put every gateway's name in the flash message, in the session cookie: 5,990 bytes
    for 2,000 gateways, which browsers drop. Its outcome now lives in the registry; the page shows it."""
    app = make_app(tmp_path, central_db_url, mosquitto.url)
    try:
        reg = central(app).registry
        assert central(app).commands.connected.wait(10)
        rows = "".join(f"s1,A,{1000 + i},gw-{i:04d}\n" for i in range(400))
        assert prov.import_csv(reg, f"school,building,room,gateway\n{rows}".encode()).ok
        admin = login(app, "boss", "boss-password")
        assert "Push all changed (401)" in admin.get("/provisioning/gateways").get_data(as_text=True)

        resp = post(admin, "/provisioning/push")
        assert resp.status_code == 302
        # Sessions live in the database (dashboards/sessions.py): the cookie is an id, set at login and
        # not even re-sent here; whatever is set stays small.
        cookies = resp.headers.getlist("Set-Cookie")
        assert all(len(c) < 1024 for c in cookies), [len(c) for c in cookies]
        jar = admin.get_cookie(app.config["SESSION_COOKIE_NAME"])
        assert jar is not None and len(jar.value) < 100
        [run] = prov.push_runs(reg)
        assert (len(run["pushed"]), run["failed"], run["left"], run["by"]) == (401, [], 0, "boss")
        assert set(prov.pushed_versions(reg)) == {"gw-101", *(f"gw-{i:04d}" for i in range(400))}

        page = admin.get(resp.headers["Location"]).get_data(as_text=True)
        assert f"Push all #{run['id']}: 401 of 401 pushed." in page  # the flash
        runs = re.search(r'<section class="card" id="push-runs">(.*?)</section>', page, re.S).group(1)
        assert "401 of 401 pushed" in runs and "gw-0000 v1" in runs and "gw-0399 v1" in runs
        assert "Push all changed" not in page  # nothing left to push
        again = post(admin, "/provisioning/push")
        assert "Nothing to push" in admin.get(again.headers["Location"]).get_data(as_text=True)
        assert len(prov.push_runs(reg)) == 1
        trail = [a for a in reg.audit_trail() if a["action"] == "provision.push"]
        assert trail[0]["detail"] == f"push all #{run['id']}: 401 of 401 pushed" and trail[0]["ok"]  # newest first
    finally:
        close_app(app)


def test_push_all_stops_at_the_first_failure_and_records_it(app) -> None:
    """Without a broker connection the route says so; a run that fails keeps what it did."""
    admin = login(app, "boss", "boss-password")
    resp = post(admin, "/provisioning/push")
    assert resp.status_code == 400 and "no MQTT connection" in resp.get_data(as_text=True)

    class BrokerDown:
        def publish(self, *args, **kwargs):
            raise RuntimeError("not connected")

    reg = central(app).registry
    reg.register_gateway("gw-102", "s1", "102", "A")
    run = prov.push_all(reg, BrokerDown(), ["gw-101", "gw-102"], "boss")
    assert run["pushed"] == [] and run["failed"] == [("gw-101", "cannot publish to the broker: not connected")]
    assert run["left"] == 1 and run["finished"] is not None
    page = admin.get("/provisioning/gateways").get_data(as_text=True)
    assert "stopped at gw-101: cannot publish to the broker" in page and "1 left for the next run" in page


def test_gateway_yaml_and_sync_status_helpers(app) -> None:
    reg = central(app).registry
    text = prov.gateway_yaml(reg, "gw-101", None)
    data = yaml.safe_load(text)
    assert "config_version" not in data and data["mqtt"].startswith("mqtt://gw-s1-gw-101:CHANGE-ME@broker-host")
    assert prov.sync_status(3, None, None, True, None) == ("warning", "not pushed yet")
    assert prov.sync_status(3, 2, 2, True, None) == ("warning", "changes not pushed")
    assert prov.sync_status(3, 3, 2, False, None)[0] == "offline"
    assert prov.sync_status(3, 3, 3, True, None) == ("ok", "in sync")


def test_card_secret_is_one_per_school_and_stays(app) -> None:
    # Cards are pseudonymised with it (HMAC of the UID): a new secret per download gave the same
    # student a different pseudonym in each room, and a new one each time a config was re-downloaded.
    reg = central(app).registry
    reg.register_gateway("gw-102", "s1", "102", "A")
    reg.register_gateway("gw-901", "s9", "901")
    admin = login(app, "boss", "boss-password")

    def secret(gateway: str) -> str:
        text = admin.get(f"/provisioning/gateways/{gateway}/config.yaml").get_data(as_text=True)
        return yaml.safe_load(text)["card_secret"]

    first = secret("gw-101")
    assert len(first) == 32 and first == secret("gw-101") == secret("gw-102")
    assert secret("gw-901") not in (first, "")
    reopened = type(reg)(reg.url)  # another process on the same database sees the same secret
    try:
        assert reopened.card_secret("s1") == first
    finally:
        reopened.close()


def test_ingest_page_shows_each_worker_and_which_stopped_reporting(app) -> None:
    import time

    admin = login(app, "boss", "boss-password")
    assert "No ingest worker has reported yet" in admin.get("/provisioning/ingest").get_data(as_text=True)
    ledger = central(app).ledger
    now = time.time()
    ledger.record_worker("ingest-a", "central-1", 111, now - 3600,
                         {"messages": 12345, "stored": 12000, "duplicates": 340, "rejected": 5, "refused_by_store": 2,
                          "store_errors": 3, "last_error": "victoriametrics at http://tsdb:8428 unreachable"}, now=now)
    ledger.record_worker("ingest-b", "central-2", 222, now - 7200,
                         {"messages": 1, "stored": 1, "duplicates": 0, "rejected": 0, "refused_by_store": 0,
                          "store_errors": 0, "last_error": ""}, now=now - 600)
    html = admin.get("/provisioning/ingest").get_data(as_text=True)
    row_a = html.split('data-worker="ingest-a"')[1].split("</tr>")[0]
    row_b = html.split('data-worker="ingest-b"')[1].split("</tr>")[0]
    assert "central-1 / 111" in row_a and ">running<" in row_a and "12345" in row_a and "12000" in row_a
    assert "unreachable" in row_a
    assert ">stopped<" in row_b


# ---------------------------------------------------------------- hostile names (issue 15)

ATTACK = "R9\nuser gw-s1-gw-a\ntopic readwrite #"  # gateway A's way to every topic, as a room name


def broker_rules(app, tmp_path: Path) -> list:
    """The rules of the acl the registry gives now, read as Mosquitto reads them."""
    from central import broker_config
    from tests.brokerfiles import mosquitto_acl

    files = broker_config.render(central(app).registry, out_dir=tmp_path / "broker")
    return mosquitto_acl(files.acl)


def csv_text(*rows: tuple[str, ...], header: str = "school,building,room,gateway") -> str:
    out = io.StringIO()
    out.write(header + "\n")
    csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL).writerows(rows)  # a bare \r ends a row
    return out.getvalue()


@sqlite_only
@pytest.mark.parametrize("breaker", ["\n", "\r", "\u2028", "\u2029", "\x85", "\x00", "\u202e"])
def test_a_name_that_would_end_a_line_is_refused_by_the_forms_and_the_import(app, tmp_path: Path,
                                                                             breaker: str) -> None:
    from tests.brokerfiles import expected_rules

    reg = central(app).registry
    admin = login(app, "boss", "boss-password")
    rules, before = broker_rules(app, tmp_path), snapshot(app)
    assert set(rules) == expected_rules([("s1", "gw-101")])
    name = ATTACK.replace("\n", breaker)

    resp = post(admin, "/provisioning/gateways", school="s1", building="A", room=name, gateway="gw-a")
    page = html_unescape(resp.get_data(as_text=True))
    assert resp.status_code == 400
    assert re.search(rf"room: an? [a-z ]+ \(U\+{ord(breaker):04X}\) at character 3 is not allowed", page)
    assert "Traceback" not in page
    resp = post(admin, "/provisioning/gateways", school="s1", building=name, room="R9", gateway="gw-a")
    assert resp.status_code == 400 and "building: " in html_unescape(resp.get_data(as_text=True))
    for field in ("room", "building"):
        resp = post(admin, "/provisioning/places", what="room", school="s1",
                    **{"room": "R9", "building": "A", field: name})
        assert resp.status_code == 400 and f"{field}: " in html_unescape(resp.get_data(as_text=True))
    resp = post(admin, "/provisioning/places", what="school", school="s9", name=f"第一中学{breaker}user web")
    assert resp.status_code == 400 and "school name: " in html_unescape(resp.get_data(as_text=True))

    # The CSV import: a quoted cell may hold any line break; the error names the line and the column.
    resp = upload(admin, csv_text(("s1", "A", "R8", "gw-r8"), ("s1", "A", name, "gw-a"), ("s1", name, "R7", "")))
    rows = re.findall(r"<tr><td>(\d+)</td><td class=\"mono\">([^<]+)</td><td>([^<]+)</td></tr>",
                      resp.get_data(as_text=True))
    assert resp.status_code == 400
    assert [(line, column) for line, column, _ in rows] == [("3", "room"), ("6" if breaker in "\n\r" else "4",
                                                                           "building")]
    assert f"U+{ord(breaker):04X}" in rows[0][2]

    assert snapshot(app) == before and reg.gateway_info("gw-a") is None and reg.gateway_info("gw-r8") is None
    assert broker_rules(app, tmp_path) == rules
    assert all(not a["ok"] for a in reg.audit_trail()[:6])  # each refusal is in the audit trail


def test_chinese_names_pass_the_forms_and_the_import(app, tmp_path: Path) -> None:
    from tests.brokerfiles import expected_rules

    reg = central(app).registry
    admin = login(app, "boss", "boss-password")
    resp = post(admin, "/provisioning/gateways", school="s1", building=" 教学楼A ", room="三年级2班", gateway="gw-a")
    assert resp.status_code == 200
    assert (reg.gateway_info("gw-a")["building"], reg.gateway_info("gw-a")["room"]) == ("教学楼A", "三年级2班")
    assert upload(admin, csv_text(("s1", "实验楼", "化学实验室（一）", "gw-b"))).status_code == 200
    assert reg.gateway_info("gw-b")["room"] == "化学实验室（一）"
    assert set(broker_rules(app, tmp_path)) == expected_rules([("s1", "gw-101"), ("s1", "gw-a"), ("s1", "gw-b")])
    config = yaml.safe_load(admin.get("/provisioning/gateways/gw-a/config.yaml").get_data(as_text=True))
    assert (config["building"], config["room"]) == ("教学楼A", "三年级2班")


def test_a_name_planted_in_the_database_does_not_reach_the_gateway_yaml_or_the_push(app) -> None:
    from sqlalchemy import text

    reg = central(app).registry
    with reg.engine.begin() as conn:
        conn.execute(text("UPDATE rooms SET name = :name WHERE name = '101'"), {"name": ATTACK})
    admin = login(app, "boss", "boss-password")
    resp = admin.get("/provisioning/gateways/gw-101/config.yaml")
    page = html_unescape(resp.get_data(as_text=True))
    assert resp.status_code == 400
    assert "gateway 'gw-101' in the registry: room: a line break (U+000A)" in page and "user gw-s1" not in page
    assert admin.get("/provisioning/gateways/gw-nope/config.yaml").status_code == 404
    # The pushed device list holds ids only: a planted device id is refused before the (absent) broker.
    reg.add_device("gw-101", "env", "env-6in1-modbus", {"host": "10.0.0.5"})
    with reg.engine.begin() as conn:
        conn.execute(text("UPDATE registered_devices SET device_id = :bad"), {"bad": "env\nx"})
    with pytest.raises(prov.ConfigError, match=r"gateway 'gw-101' in the registry: device 'env\\nx' is not a valid"):
        prov.push_config(reg, None, "gw-101")


def test_colliding_mqtt_user_names_are_refused_without_a_500_or_a_hash_in_the_logs(app, caplog, monkeypatch) -> None:
    import logging

    from central.registry import Gateway

    caplog.set_level(logging.DEBUG)
    reg = central(app).registry
    admin = login(app, "boss", "boss-password")
    first = post(admin, "/provisioning/gateways", school="a-b", room="R1", gateway="c")
    assert first.status_code == 200
    digest = stored_hash(app, "c")
    before = snapshot(app)

    # a/b-c would be gw-a-b-c too: the account of gateway c.
    second = post(admin, "/provisioning/gateways", school="a", room="R2", gateway="b-c")
    page = html_unescape(second.get_data(as_text=True))
    assert second.status_code == 400
    assert "gateway 'b-c': its MQTT user name 'gw-a-b-c' is already the account of gateway 'c'" in page
    assert snapshot(app) == before and stored_hash(app, "c") == digest  # school a, room R2: not created either

    # The import: against the registry, and between two new gateways of one file.
    resp = upload(admin, csv_text(("a", "", "R2", "b-c"), ("x-y", "", "R3", "z"), ("x", "", "R4", "y-z")))
    rows = re.findall(r"<tr><td>(\d+)</td><td class=\"mono\">([^<]+)</td><td>([^<]+)</td></tr>",
                      html_unescape(resp.get_data(as_text=True)))
    assert resp.status_code == 400
    assert [(line, column) for line, column, _ in rows] == [("2", "gateway"), ("4", "gateway")]
    assert "already the account of gateway c" in rows[0][2] and "gateway z on line 3" in rows[1][2]
    assert snapshot(app) == before

    # Two registrations at the same moment: the database's UNIQUE constraint answers, as a refusal.
    with reg.session() as s:
        s.delete(s.get(Gateway, "c"))
    # As if the other request had not committed yet when this one checked:
    monkeypatch.setattr(type(reg), "_check_new_gateway", staticmethod(lambda *_: None))
    reg.register_gateway("c", "a-b", "R1")
    with pytest.raises(prov.ConfigError, match="was just registered by someone else") as refused:
        reg.register_gateway("b-c", "a", "R2")
    assert "$7$" not in str(refused.value)

    text = caplog.text + page + json.dumps(reg.audit_trail())
    assert "$7$" not in text and digest not in text and "Traceback" not in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ---------------------------------------------------------------- a PostgreSQL whose collation is not C


@pytest.fixture
def icu_db_url(postgres_server, request):
    """A fresh database at this release's schema whose collation is ICU's en-US, as on a district's server
    made with a locale (the test cluster's is C, which sorts like SQLite and so hides the difference)."""
    import uuid

    from sqlalchemy import create_engine

    from central.db import open_database

    name = f"t_icu_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                             "LOCALE 'C'")
    admin.dispose()
    url = postgres_server.url(name)
    open_database(url, upgrade=True).close()
    yield url
    postgres_server.drop_database(name)


def test_the_registry_lists_read_alike_whatever_the_databases_collation(icu_db_url: str) -> None:
    """In en-US "gw_b" < "gw-a" < "GW-A" < "gw.d" and case is ignored; in C (and SQLite) it is code-point
    order. The lists the pages, the filters and the broker files are made from are sorted in Python."""
    from central import overview
    from central.registry import Registry
    from tests.stores import sql

    reg = Registry(icu_db_url)
    try:
        for gateway, school, room_name, building in (("gw_b", "s_2", "b1", "b楼"), ("gw-a", "s-1", "a1", "A楼"),
                                                     ("GW-A", "s-1", "B2", "三年级"), ("gw.d", "S-0", "a2", "教学楼")):
            reg.register_gateway(gateway, school, room_name, building)
        by_sql = [gid for (gid,) in sql(reg, "SELECT id FROM registered_gateways ORDER BY id")]
        assert by_sql != sorted(by_sql)  # the database's own order is not code-point order: the test tests
        assert [g["id"] for g in reg.gateways()] == ["gw.d", "GW-A", "gw-a", "gw_b"]  # (school, id)
        places = prov.places(reg)
        assert [p["id"] for p in places] == ["S-0", "s-1", "s_2"]
        assert [r["name"] for r in places[1]["rooms"]] == ["B2", "a1"]
        assert [(b.school, b.name) for b in overview.places(reg).buildings] == [
            ("S-0", "教学楼"), ("s-1", "A楼"), ("s-1", "三年级"), ("s_2", "b楼")]
    finally:
        reg.close()
