"""campus/names.py: one validator for every name, and what it keeps out of the broker's files (issue 15).

The validator on its own (Chinese names pass; every way to end a line, every
control and invisible format character is refused and named), then at each
door it guards: the CLI, the agent's config, the `state` decoder, schedules.
Property tests draw names from all of Unicode and send them through the
validator, the registration form and the CSV import; whatever is accepted or
refused, the acl the registry then gives, read as Mosquitto reads it, holds
exactly the expected rules.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from campus import names
from campus.contract import State
from campus.errors import ConfigError, PayloadError
from central import broker_config
from central import provisioning as prov
from central.registry import Registry
from dashboards import close_app
from dashboards.context import central
from tests.brokerfiles import assert_exact_rules, mosquitto_passwd
from tests.test_provisioning import login, make_app, post

ATTACK = "R9\nuser gw-s1-gw-a\ntopic readwrite #"
# Everything that ends a line somewhere (C, Python, YAML, JavaScript), and invisible characters.
BREAKERS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x00", "\t",
            "\x1b", "\x7f", "\u200b", "\u200d", "\u202e", "\u2066", "\ufeff", "\ufffe", "\U0010ffff"]
REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def room(value: object) -> str:
    return names.display_name(value, "room", max_chars=names.ROOM_MAX)


# ---------------------------------------------------------------- the validator


def test_chinese_and_ordinary_names_are_valid_trimmed_and_nfc() -> None:
    for name in ("教学楼A", "三年级2班", "化学实验室（一）", "Room 101", "Salle d’étude", "🏫 A-101", "教室\u3000一"):
        assert room(name) == name
    assert room("  三年级2班\u3000") == "三年级2班"  # blanks around, ideographic space too
    assert room("R9\n") == "R9"  # a line end at the edge is trimmed away, not stored
    assert room("Cafe\u0301") == "Café" and len(room("Cafe\u0301")) == 4  # one room however it was typed
    assert names.display_name("", "building", max_chars=names.BUILDING_MAX, required=False) == ""
    assert room("\ue000") == "\ue000"  # private use: GB18030 puts rare Chinese characters there


@pytest.mark.parametrize("breaker", BREAKERS)
def test_a_character_that_ends_a_line_or_hides_is_refused_and_named(breaker: str) -> None:
    with pytest.raises(names.BadName) as refused:
        room(f"R9{breaker}x")
    assert refused.value.field == "room"
    message = str(refused.value)
    assert message.startswith("room: ") and f"(U+{ord(breaker[0]):04X}) at character 3 is not allowed" in message
    assert "\n" not in message and breaker not in message  # the message itself is one clean line


def test_lengths_and_types() -> None:
    assert room("房" * 64) == "房" * 64
    with pytest.raises(names.BadName, match="^room needs 1 to 64 characters$"):
        room("房" * 65)
    with pytest.raises(names.BadName, match="^room needs 1 to 64 characters$"):
        room(" \u3000 ")
    with pytest.raises(names.BadName, match="^room: must be text$"):
        room(101)
    with pytest.raises(names.BadName, match="^building has at most 100 characters$"):
        names.display_name("x" * 101, "building", max_chars=names.BUILDING_MAX, required=False)


def test_ids_keep_the_topic_segment_rules() -> None:
    assert names.identifier("gw-101", "gateway") == "gw-101"
    for bad in ("gw 101", " gw-101", "gw-101\n", "教室", "a/b", "+", "#", "", "x" * 65):
        with pytest.raises(names.BadName, match="gateway .* is not a valid id") as refused:
            names.identifier(bad, "gateway")
        assert isinstance(refused.value, ConfigError) and refused.value.field == "gateway"


def test_check_one_line_refuses_and_never_trims() -> None:
    assert names.check_one_line("/srv/校园 broker/passwd", "--out") == "/srv/校园 broker/passwd"
    for bad in ("/srv/x\npassword_file /tmp/mine", "/srv/x\r", " /srv/x", "/srv/x ", "/srv/\x00x", "/srv/\u2028"):
        with pytest.raises(ConfigError, match="^--out "):
            names.check_one_line(bad, "--out")


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=80) | st.lists(st.text(max_size=10) | st.sampled_from(BREAKERS), max_size=6).map("".join))
def test_any_unicode_text_is_refused_or_becomes_one_line_of_visible_text(value: str) -> None:
    expected = unicodedata.normalize("NFC", value).strip()
    bad = [c for c in expected if unicodedata.category(c) in REFUSED_CATEGORIES
           or 0xFDD0 <= ord(c) <= 0xFDEF or (ord(c) & 0xFFFE) == 0xFFFE]
    try:
        got = room(value)
    except names.BadName as exc:
        assert exc.field == "room" and str(exc).startswith("room")
        assert bad or not 1 <= len(expected) <= names.ROOM_MAX
        return
    assert not bad and got == expected and 1 <= len(got) <= names.ROOM_MAX
    assert got.splitlines() == [got] and got == got.strip()
    assert yaml.safe_load(yaml.safe_dump({"room": got}, allow_unicode=True)) == {"room": got}
    assert json.loads(json.dumps(got)) == got


# ---------------------------------------------------------------- the other doors


def test_the_agent_config_and_the_state_decoder_refuse_such_names(tmp_path: Path) -> None:
    from device_profiles.config import load_gateway_config

    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"school": "s1", "gateway": "gw-a", "room": ATTACK}))
    with pytest.raises(ConfigError, match=r"gw.yaml:\d+: field room: a line break \(U\+000A\)"):
        load_gateway_config(path)
    path.write_text(yaml.safe_dump({"school": "s1", "gateway": "gw-a", "room": "三年级2班", "building": " 教学楼A"},
                                   allow_unicode=True))
    assert (load_gateway_config(path).room, load_gateway_config(path).building) == ("三年级2班", "教学楼A")

    ok = State.decode(json.dumps({"online": True, "ts": 1.0, "room": "三年级2班", "building": "教学楼A"}))
    assert (ok.room, ok.building) == ("三年级2班", "教学楼A")
    for field in ("room", "building"):
        with pytest.raises(PayloadError, match=f"^state: {field}: a line break"):
            State.decode(json.dumps({"online": True, "ts": 1.0, field: "A\u2028B"}))


def test_schedule_names_follow_the_same_rules(central_db_url: str) -> None:
    from central import schedules

    reg = Registry(central_db_url)
    try:
        form = {"name": "晚间关机", "at": "22:00", "days": "mon", "action": "power_off", "kinds": "display"}
        assert schedules.validate(form, reg)["name"] == "晚间关机"
        with pytest.raises(schedules.ScheduleError, match=r"^name: a line break \(U\+2029\)"):
            schedules.validate({**form, "name": "晚间\u2029关机"}, reg)
    finally:
        reg.close()


def test_cli_users_add_refuses_a_bad_room_in_one_line(central_db_url: str) -> None:
    reg = Registry(central_db_url)
    reg.ensure_room("s1", "三年级2班")
    reg.close()

    def users_add(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "programs.cli", "users", "add", *args, "--db", central_db_url,
                               "--password-stdin"], input="teacher-password\n", capture_output=True, text=True,
                              timeout=60)

    bad = users_add("t1", "--role", "teacher", "--room", "s1:三年级2班\u2028x")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "campus: error: room: a line break (U+2028) at character 6 is not allowed: a name is one line of visible text"]
    good = users_add("t1", "--role", "teacher", "--room", "s1:三年级2班")
    assert good.returncode == 0, good.stderr
    reg = Registry(central_db_url)
    try:
        assert reg.principal("t1")["rooms"] == ["三年级2班"]
    finally:
        reg.close()


# ---------------------------------------------------------------- property: forms and import -> broker files

hostile_names = (st.text(max_size=70)
                 | st.text(st.characters(exclude_categories=tuple(REFUSED_CATEGORIES)), max_size=70)  # mostly valid
                 | st.builds(lambda a, b, c: a + b + c, st.text(max_size=12), st.sampled_from(BREAKERS),
                             st.text(max_size=12))
                 | st.sampled_from([ATTACK, "教学楼A", "三年级2班", "A\u2028user web", " R9 ", "#", "topic #"]))


@pytest.fixture(scope="module")
def shared_app():
    """One web app for every example: the registry grows, and so does the set of expected rules."""
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(Path(tmp), f"sqlite:///{tmp}/central.db")
        app.counter = itertools.count()
        app.registered = [("s1", "gw-101")]
        app.admin = login(app, "boss", "boss-password")
        app.out = Path(tmp) / "broker"
        yield app
        close_app(app)


def _csv(school: str, building: str, room_name: str, gateway: str) -> bytes:
    out = io.StringIO()
    out.write("school,building,room,gateway\n")
    csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL).writerow([school, building, room_name, gateway])
    return out.getvalue().encode()


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(room_name=hostile_names, building=hostile_names, via=st.sampled_from(["form", "csv"]))
def test_any_name_through_the_form_or_the_import_leaves_exactly_the_expected_rules(
        shared_app, room_name: str, building: str, via: str) -> None:
    app, reg = shared_app, central(shared_app).registry
    gateway = f"gw-p{next(app.counter)}"
    try:
        wanted = (room(room_name),
                  names.display_name(building, "building", max_chars=names.BUILDING_MAX, required=False))
    except names.BadName:
        wanted = None
    if via == "form":
        resp = post(app.admin, "/provisioning/gateways", school="s1", building=building, room=room_name,
                    gateway=gateway)
    else:
        resp = app.admin.post("/provisioning/import", data={"csrf": app.admin.csrf,
                                                            "file": (io.BytesIO(_csv("s1", building, room_name,
                                                                                     gateway)), "x.csv")},
                              content_type="multipart/form-data")
    info = reg.gateway_info(gateway)
    if info is not None:
        app.registered.append(("s1", gateway))  # first: a failing example must not spoil the next ones
    event(f"{via}: {'refused' if wanted is None else 'accepted'}")
    if wanted is None:
        assert resp.status_code == 400 and info is None
    else:
        assert resp.status_code == 200 and info["room"] == wanted[0]
        # No building given: an existing room (drawn again) keeps the one it has.
        assert info["building"] == wanted[1] or not wanted[1]
        # The YAML for this gateway reads back to the same names.
        config = yaml.safe_load(prov.gateway_yaml(reg, gateway, None))
        assert (config["room"], config["building"]) == (info["room"], info["building"])

    files = broker_config.render(reg, out_dir=app.out)
    assert_exact_rules(files.acl, app.registered)
    assert set(mosquitto_passwd(files.passwd)) == {f"gw-{s}-{g}" for s, g in app.registered} | {"ingest", "web"}
