"""Podium cards at central (central/podium.py, dashboards/podium.py): enrolment by CSV and by a swipe,
who may do it, and what reaches the gateways. The card numbers of a CSV must appear nowhere in the
central database: every text column is read back, and on SQLite the file's own bytes too."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from campus.contract import CARD_SWIPE_EVENT
from central import podium
from central.ledger import Sequenced
from dashboards import close_app
from dashboards.context import central
from device_profiles.config import PodiumConfig
from protocols.card_em4100 import EM4100Parser, encode_frame
from protocols.card_ids import card_hash, card_uid
from protocols.card_line import LineParser
from tests.apps import add_people, central_db, register_rooms, two_rooms, web_app

# Three forms of 一卡通 number: an EM4100 ID that is all digits (0x), a Mifare UID in hex, one as a number.
NUMBERS = ("0x0009356179", "A1B2C3D4", "3735928559")
RAW_FORMS = ("0009356179", "a1b2c3d4", "3735928559", "deadbeef")  # as written, and as the UIDs they are
GOOD_CSV = "card,role,label\n" + "".join(f"{n},{r},Person {i}\n"
                                         for i, (n, r) in enumerate(zip(NUMBERS, ("teacher", "teacher", "cleaner"),
                                                                        strict=True)))
CARDS = "/api/schools/s1/rooms/101/cards"


@pytest.fixture
def app(tmp_path: Path, central_db_url: str):
    app = web_app(central_db(tmp_path, lambda ledger, points: two_rooms(ledger, points), central_db_url))
    register_rooms(app)
    app.tokens = add_people(app)  # type: ignore[attr-defined]
    yield app
    close_app(app)


def call(app: Flask, method: str, path: str, role: str | None = None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {app.tokens[role]}"} if role else {}  # type: ignore[attr-defined]
    return app.test_client().open(path, method=method, headers=headers, **kw)


def text_values(app: Flask) -> str:
    """Every text value of every table of the central database, one string (either engine)."""
    engine = central(app).registry.db.engine
    out = []
    meta = sa.MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            cols = [c for c in table.columns if isinstance(c.type, (sa.String, sa.Text, sa.JSON))]
            if cols:
                out += [str(v) for row in conn.execute(sa.select(*cols)) for v in row if v is not None]
    return "\n".join(out).lower()


def versions(app: Flask) -> dict[str, int]:
    return {g["id"]: g["config_version"] for g in central(app).registry.gateways()}


def pushed_podium(app: Flask, gateway: str = "gw-101") -> PodiumConfig | None:
    payload = json.loads(podium.config_payload(central(app).registry, gateway))
    return PodiumConfig.model_validate(payload["podium"]) if payload["podium"] is not None else None


# ---------------------------------------------------------------- import


def test_an_import_pseudonymises_every_number_and_stores_none(app: Flask) -> None:
    before = versions(app)
    resp = call(app, "POST", CARDS, "teacher", data=GOOD_CSV.encode("gb18030"), content_type="text/csv")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["added"] == 3 and "not_pushed" in resp.get_json()  # no MQTT here: said so
    listed = call(app, "GET", CARDS, "facility").get_json()
    assert sorted((c["role"], c["label"]) for c in listed) == \
        [("cleaner", "Person 2"), ("teacher", "Person 0"), ("teacher", "Person 1")]
    assert all(len(c["card"]) == podium.PREFIX_CHARS for c in listed)
    assert versions(app) == {**before, "gw-101": before["gw-101"] + 1}  # only the room's gateway changes

    # What the gateway gets is the pseudonym its own reader makes of each card.
    secret = central(app).registry.card_secret("s1")
    em = EM4100Parser().feed(encode_frame("0009356179"))
    line = LineParser().feed(b"A1B2C3D4\r\n3735928559\r\n")
    allowed = pushed_podium(app)
    assert allowed is not None
    assert set(allowed.cards) == {card_hash(secret, uid) for uid in em + line}
    assert pushed_podium(app, "gw-102") is None  # the other room's podium stays off

    everything = text_values(app)
    assert not [raw for raw in RAW_FORMS if raw in everything]
    path = central(app).registry.db.path
    if path is not None:  # SQLite: the file's own bytes (and its WAL), free pages included
        data = b"".join(p.read_bytes() for p in Path(path).parent.glob(Path(path).name + "*")).lower()
        assert data and not [raw for raw in RAW_FORMS if raw.encode() in data]


def test_a_bad_csv_changes_nothing_and_names_its_lines_not_the_numbers(app: Flask) -> None:
    before = versions(app)
    bad = "card,role,label\nA1B2C3D4,teacher,ok\n12345,teacher,short\nDEADBEEF,janitor,x\nA1B2C3D4,cleaner,again\n"
    resp = call(app, "POST", CARDS, "admin", data=bad.encode(), content_type="text/csv")
    assert resp.status_code == 400
    errors = [(e["line"], e["column"]) for e in resp.get_json()["errors"]]
    assert errors == [(3, "card"), (4, "role"), (5, "card")]
    assert "on line 2" in resp.get_json()["errors"][2]["message"]  # the same card twice
    assert "12345" not in resp.get_data(as_text=True)  # a problem never repeats the number
    assert call(app, "GET", CARDS, "admin").get_json() == [] and versions(app) == before
    trail = json.dumps(central(app).registry.audit_trail())
    assert "podium.import" in trail and "12345" not in trail and "a1b2c3d4" not in trail.lower()
    for body, line in ((b"\xff\xfe\x00bad", 1), (b"room,card\n", 1), (b"card,role\n", 1)):
        resp = call(app, "POST", CARDS, "admin", data=body, content_type="text/csv")
        assert resp.status_code == 400 and resp.get_json()["errors"][0]["line"] == line, resp.get_json()


def test_a_teacher_manages_only_their_rooms_and_facility_only_reads(app: Flask) -> None:
    other = "/api/schools/s1/rooms/102/cards"
    csv = GOOD_CSV.encode()
    assert call(app, "POST", other, "teacher", data=csv, content_type="text/csv").status_code == 403
    assert call(app, "GET", other, "teacher").status_code == 403
    assert call(app, "POST", CARDS, "facility", data=csv, content_type="text/csv").status_code == 403
    assert call(app, "POST", CARDS, "teacher", data=b"room,card,role\n102,A1B2C3D4,teacher\n",
                content_type="text/csv").status_code == 400  # the room column cannot reach past the URL's
    assert call(app, "GET", "/api/schools/s1/rooms/nope/cards", "admin").status_code == 404
    assert call(app, "GET", other, "admin").get_json() == []
    assert call(app, "POST", CARDS, "teacher", data=csv, content_type="text/csv").status_code == 200
    prefix = next(c["card"] for c in call(app, "GET", CARDS, "teacher").get_json() if c["role"] == "cleaner")
    assert call(app, "DELETE", f"{CARDS}/{prefix}", "facility").status_code == 403
    assert call(app, "DELETE", f"{CARDS}/zz", "teacher").status_code == 400
    resp = call(app, "DELETE", f"{CARDS}/{prefix}", "teacher")
    assert resp.status_code == 200 and resp.get_json()["removed"]["role"] == "cleaner"
    assert call(app, "DELETE", f"{CARDS}/{prefix}", "teacher").status_code == 404
    assert len(call(app, "GET", CARDS, "teacher").get_json()) == 2
    assert any(r["action"] == "podium.remove" and r["user"] == "teach" for r in central(app).registry.audit_trail())
    page = call(app, "GET", "/podium/s1/101", "teacher")
    assert page.status_code == 200 and "Person 0" in page.get_data(as_text=True)


def test_removing_the_last_card_turns_the_podium_off_on_the_gateway(app: Flask) -> None:
    call(app, "POST", CARDS, "admin", data=b"card,role\nA1B2C3D4,teacher\n", content_type="text/csv")
    assert pushed_podium(app) is not None
    prefix = call(app, "GET", CARDS, "admin").get_json()[0]["card"]
    call(app, "DELETE", f"{CARDS}/{prefix}", "admin")
    payload = json.loads(podium.config_payload(central(app).registry, "gw-101"))
    assert "podium" in payload and payload["podium"] is None  # said, not left out: the gateway drops its list


# ---------------------------------------------------------------- enrol mode


def test_enrol_mode_takes_the_first_swipe_of_the_room_within_its_window(app: Flask) -> None:
    enrol = "/api/schools/s1/rooms/101/enrolment"
    assert call(app, "GET", enrol, "teacher").status_code == 404
    bad = call(app, "POST", enrol, "teacher", json={"role": "teacher", "seconds": 5})
    assert bad.status_code == 400 and bad.get_json()["field"] == "seconds"
    assert call(app, "POST", enrol, "teacher", json={"role": "boss"}).get_json()["field"] == "role"
    started = call(app, "POST", enrol, "teacher", json={"role": "teacher", "label": "Ms Li", "seconds": 60})
    assert started.status_code == 201 and started.get_json()["status"] == "waiting"
    assert call(app, "GET", enrol, "teacher").get_json()["status"] == "waiting"

    now, before = time.time(), versions(app)
    mine, theirs, old = (card_hash("x", card_uid(n)) for n in ("A1B2C3D4", "0x0009356179", "3735928559"))
    central(app).ledger.record([
        Sequenced("s1", "gw-101", "cards", 10, now - 120, event=(CARD_SWIPE_EVENT, {"card": old})),  # before
        Sequenced("s1", "gw-102", "cards", 10, now, event=(CARD_SWIPE_EVENT, {"card": theirs})),     # next door
        Sequenced("s1", "gw-101", "cards", 11, now + 0.5, event=(CARD_SWIPE_EVENT, {"card": mine})),
    ], [], [])
    state = call(app, "GET", enrol, "teacher").get_json()
    assert state["status"] == "enrolled" and mine.startswith(state["card"]) and state["role"] == "teacher"
    assert versions(app)["gw-101"] == before["gw-101"] + 1
    allowed = pushed_podium(app)
    assert allowed is not None and set(allowed.cards) == {mine} and allowed.cards[mine].label == "Ms Li"
    assert call(app, "GET", enrol, "teacher").get_json()["status"] == "enrolled"  # once: no second bump
    assert versions(app)["gw-101"] == before["gw-101"] + 1
    assert call(app, "POST", "/api/schools/s1/rooms/102/enrolment", "teacher", json={"role": "teacher"}
                ).status_code == 403


def test_the_room_page_enrols_imports_and_lists_problems(app: Flask) -> None:
    page = call(app, "POST", "/podium/s1/101/enrol", "teacher", data={"role": "cleaner", "seconds": "30"})
    assert page.status_code == 200 and 'data-status="waiting"' in page.get_data(as_text=True)
    bad = call(app, "POST", "/podium/s1/101/import", "teacher", data={"text": "card,role\nnot-a-card,teacher\n"})
    text = bad.get_data(as_text=True)
    assert bad.status_code == 400 and 'id="import-errors"' in text and "not-a-card" not in text
    good = call(app, "POST", "/podium/s1/101/import", "teacher", data={"text": "card,role,label\nA1B2C3D4,teacher,Li\n"})
    assert good.status_code == 200 and "Li" in good.get_data(as_text=True)
    rooms = call(app, "GET", "/podium", "teacher").get_data(as_text=True)
    assert "101" in rooms and "102" not in rooms  # a teacher's rooms only
    assert call(app, "POST", "/podium/s1/102/enrol", "teacher", data={"role": "teacher"}).status_code == 403
