"""Text written on the gateway, shown in the reader's language (issue 20).

A driver's result detail and its refusals are marked for translation on the gateway; the command result
carries the msgid and params beside the English `detail` (campus/contract.py `text_fields`); central keeps
them (central/db.py TranslatableText) and the API and the panel show them in the reader's language
(campus.i18n.ReportedText). A gateway is not trusted: only a msgid of the catalog is translated, only with
params that fit it exactly (`campus.i18n.fill`), else its English as sent; params out of the contract's
bounds are refused at decode, naming the field.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from campus import contract
from campus.contract import Command, CommandResult
from campus.errors import DeviceError, PayloadError
from campus.i18n import LazyText, ReportedText, fill, lazy_gettext
from campus.net import free_port
from central.ledger import Ledger
from central.schedules import result_detail
from dashboards.i18n import catalog
from device_profiles.config import load_gateway_config
from edge_agent.drivers.base import action_word
from protocols import lg_serial
from tests.apps import ENV_AND_PROJECTOR, one_gateway_app
from tests.e2e import run_room, until, write_gateway_config

ZH = catalog("zh-CN").gettext


# ---------------------------------------------------------------- substitution that cannot be abused


def test_fill_substitutes_named_params_only_and_gives_up_on_any_mismatch() -> None:
    assert fill("input %(name)s (%(code)s) selected", {"name": "hdmi1", "code": "32"}) == "input hdmi1 (32) selected"
    assert fill("100%% %(x)s", {"x": 5}) == "100% 5"
    assert fill("no params", {}) == "no params"
    # A value is put in as text, never formatted again: a `%(code)s` or `{0.__class__}` in it stays as it is.
    assert fill("input %(name)s", {"name": "%(code)s {0.__class__.__mro__}"}) == "input %(code)s {0.__class__.__mro__}"
    assert fill("input %(name)s (%(code)s)", {"name": "a"}) is None            # a placeholder without its param
    assert fill("input %(name)s", {"name": "a", "extra": "b"}) is None          # a param without its placeholder
    assert fill("%(name)d", {"name": 1}) is None                               # only %(name)s
    assert fill("%(name)r", {"name": 1}) is None
    assert fill("50% off", {}) is None                                         # a lone %
    assert fill("%s", {}) is None


def test_a_reported_text_is_translated_only_from_the_catalog_with_params_that_fit() -> None:
    good = ReportedText("input hdmi1 (32) selected", "input %(name)s (%(code)s) selected", {"name": "hdmi1", "code": "32"})
    assert good.render(ZH) == "已选择信号源 hdmi1（32）"
    assert good.render() == str(good) == "input hdmi1 (32) selected"   # English (a log, an English reader)
    # Not in the catalog: the English as sent, whatever the msgid says.
    assert ReportedText("as sent", "pwned %(x)s", {"x": "1"}).render(ZH) == "as sent"
    # In the catalog, params that do not fit the msgid (missing, extra): the English as sent, no exception.
    assert ReportedText("as sent", "input %(name)s (%(code)s) selected", {"name": "a"}).render(ZH) == "as sent"
    assert ReportedText("as sent", "already on", {"x": "1"}).render(ZH) == "as sent"
    # The catalog's header (msgid "") is no message: an empty msgid is the English.
    assert ReportedText("as sent", "", {}).render(ZH) == "as sent"
    # A stored one comes back whole.
    assert ReportedText.from_dict(json.loads(json.dumps(good.as_dict()))).render(ZH) == "已选择信号源 hdmi1（32）"


# ---------------------------------------------------------------- the contract


def test_a_result_carries_the_msgid_and_params_beside_the_english_and_an_older_one_reads_as_before() -> None:
    text = lazy_gettext("input %(name)s (%(code)s) selected", name="hdmi1", code="32")
    payload = json.loads(CommandResult.of("c1", "done", text, time.time(), 3).encode())
    assert payload["detail"] == "input hdmi1 (32) selected"
    assert (payload["detail_msgid"], payload["detail_params"]) == (text.msgid, {"name": "hdmi1", "code": "32"})
    back = CommandResult.decode(json.dumps(payload))
    assert isinstance(back.text, ReportedText) and back.text.render(ZH) == "已选择信号源 hdmi1（32）"
    # Not marked (an older agent): no new fields, the detail a plain str.
    old = CommandResult("c2", "done", "already on", time.time(), 4)
    assert set(json.loads(old.encode())) == {"id", "status", "detail", "ts", "seq"}
    assert CommandResult.decode(old.encode()).text == "already on"
    assert type(CommandResult.decode(old.encode()).text) is str
    # The agent's side never sends what central refuses: a long parameter is cut, an object becomes text.
    long = CommandResult.of("c3", "failed", LazyText("%(error)s", {"error": "x" * 5000}), time.time())
    assert len(CommandResult.decode(long.encode()).detail_params["error"]) == contract.TEXT_PARAM_CHARS


def test_a_marked_parameter_goes_as_its_own_msgid_and_the_whole_sentence_reads_in_chinese() -> None:
    """An LG NG: the action and the NG code's meaning are marked texts inside the refusal (one level deep)."""
    refusal = lazy_gettext("%(device)s: set %(set)s refused %(what)s (NG %(code)s: %(meaning)s)", device="tv",
                           set="1", what=action_word("set_volume"), code="02", meaning=lg_serial.ng_meaning("02"))
    payload = json.loads(CommandResult.of("c1", "rejected", refusal, time.time(), 3).encode())
    assert payload["detail"] == "tv: set 1 refused set volume (NG 02: function not supported)"
    assert payload["detail_params"]["what"] == {"msgid": "set volume", "params": {}}
    assert payload["detail_params"]["meaning"] == {"msgid": "function not supported", "params": {}}
    text = CommandResult.decode(json.dumps(payload)).text
    assert isinstance(text, ReportedText)
    assert text.render(ZH) == "tv：编号 1 的一体机拒绝了 调节音量（NG 02：不支持该功能）"
    assert str(text) == payload["detail"]
    assert ReportedText.from_dict(json.loads(json.dumps(text.as_dict()))).render(ZH) == text.render(ZH)  # stored
    # A marked parameter with parameters of its own (a serial port that cannot be opened); a third level goes as
    # its English.
    port = lazy_gettext("%(device)s: %(error)s", device="tv", error=lazy_gettext(
        "cannot open serial port %(port)s: %(error)s", port="/dev/ttyX", error=lazy_gettext("illegal code")))
    sent = json.loads(CommandResult.of("c2", "failed", port, time.time(), 4).encode())["detail_params"]["error"]
    assert sent == {"msgid": "cannot open serial port %(port)s: %(error)s",
                    "params": {"port": "/dev/ttyX", "error": "illegal code"}}
    back = CommandResult.decode(CommandResult.of("c2", "failed", port, time.time(), 4).encode()).text
    assert back.render(ZH) == "tv：无法打开串口 /dev/ttyX：illegal code"


def test_a_marked_parameter_from_a_gateway_is_translated_only_when_it_fits() -> None:
    outer = "%(device)s: set %(set)s refused %(what)s (NG %(code)s: %(meaning)s)"

    def shown(what: Any, meaning: Any) -> str:
        params = {"device": "tv", "set": "1", "what": what, "code": "02", "meaning": meaning}
        return ReportedText("as sent", outer, params).render(ZH)

    ok = {"msgid": "function not supported", "params": {}}
    assert shown({"msgid": "set volume", "params": {}}, ok) == "tv：编号 1 的一体机拒绝了 调节音量（NG 02：不支持该功能）"
    # A parameter's msgid the catalog lacks: its own English, the sentence still translated.
    assert shown({"msgid": "frobnicate %(x)s", "params": {"x": 1}}, ok) == \
        "tv：编号 1 的一体机拒绝了 frobnicate 1（NG 02：不支持该功能）"
    # Its params do not fit its msgid (missing, extra, a `%d`): the whole text as the gateway sent it.
    assert shown({"msgid": "volume %(level)s", "params": {}}, ok) == "as sent"
    assert shown({"msgid": "set volume", "params": {"x": 1}}, ok) == "as sent"
    assert shown({"msgid": "%d", "params": {}}, ok) == "as sent"
    # A value is put in as text, never formatted again.
    assert shown({"msgid": "volume %(level)s", "params": {"level": "%(device)s {0.__class__}"}}, ok) == \
        "tv：编号 1 的一体机拒绝了 音量 %(device)s {0.__class__}（NG 02：不支持该功能）"
    assert ReportedText("as sent", outer, {"device": "tv", "set": "1", "what": "set volume", "code": "02",
                                           "meaning": ok}).render() == "as sent"  # English reader


# Marked texts a gateway may send and central refuses, each with the field its error names (tests of other texts
# rename `detail`: tests/test_gateway_events_text.py).
HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"detail_msgid": "already on", "detail_params": {"p": {"nested": 1}}}, "detail_params.p"),
    ({"detail_msgid": "already on", "detail_params": {"p": [1]}}, "detail_params.p"),
    ({"detail_msgid": "already on", "detail_params": {"p": None}}, "detail_params.p"),
    ({"detail_msgid": "already on", "detail_params": {"p": True}}, "detail_params.p"),
    ({"detail_msgid": "already on", "detail_params": {"p": "x" * 201}}, "detail_params.p"),
    ({"detail_msgid": "already on", "detail_params": {"p": "a\x00b"}}, "detail_params.p"),
    ({"detail_msgid": "already on", "detail_params": {"p": 2**60}}, "detail_params.p"),
    ({"detail_msgid": "already on", "detail_params": {f"p{i}": i for i in range(9)}}, "detail_params"),
    ({"detail_msgid": "already on", "detail_params": {"not a name": 1}}, "detail_params"),
    ({"detail_msgid": "already on", "detail_params": ["x"]}, "detail_params"),
    ({"detail_msgid": "x" * 301}, "detail_msgid"),
    ({"detail_msgid": ""}, "detail_msgid"),
    ({"detail_msgid": 5}, "detail_msgid"),
    ({"detail_params": {"p": 1}}, "detail_msgid"),   # params without their msgid
    # A parameter that is a marked text of its own: one level deep, with the same bounds, nothing else.
    ({"detail_msgid": "already on", "detail_params": {"p": {"msgid": "x", "params": {"q": {"msgid": "y"}}}}},
     "detail_params.p.params.q"),
    ({"detail_msgid": "already on", "detail_params": {"p": {"msgid": "x", "english": "y"}}}, "detail_params.p"),
    ({"detail_msgid": "already on", "detail_params": {"p": {"params": {}}}}, "detail_params.p.msgid"),
    ({"detail_msgid": "already on", "detail_params": {"p": {"msgid": ""}}}, "detail_params.p.msgid"),
    ({"detail_msgid": "already on", "detail_params": {"p": {"msgid": 5}}}, "detail_params.p.msgid"),
    ({"detail_msgid": "already on", "detail_params": {"p": {"msgid": "a\x00"}}}, "detail_params.p.msgid"),
    ({"detail_msgid": "already on", "detail_params": {"p": {"msgid": "x" * 301}}}, "detail_params.p.msgid"),
    ({"detail_msgid": "already on", "detail_params": {"p": {"msgid": "x", "params": [1]}}}, "detail_params.p.params"),
    ({"detail_msgid": "already on", "detail_params": {"p": {"msgid": "x", "params": {f"q{i}": i for i in range(9)}}}},
     "detail_params.p.params"),
    ({"detail_msgid": "already on", "detail_params": {"p": {"msgid": "x", "params": {"q": "x" * 201}}}},
     "detail_params.p.params.q"),
    ({"detail_msgid": "already on", "detail_params": {"p": {"msgid": "x", "params": {"q": None}}}},
     "detail_params.p.params.q"),
    ({"detail_msgid": "already on", "detail_params": {"p": {"msgid": "x", "params": {"bad name": 1}}}},
     "detail_params.p.params"),
]


@pytest.mark.parametrize(("extra", "field"), HOSTILE)
def test_hostile_msgid_or_params_are_refused_at_decode_naming_the_field(extra: dict[str, Any], field: str) -> None:
    payload = {"id": "c1", "status": "done", "detail": "ok", "ts": time.time(), "seq": 1, **extra}
    with pytest.raises(PayloadError, match=f"field '{field}'"):
        CommandResult.decode(json.dumps(payload))


# ---------------------------------------------------------------- central keeps it, on both engines


def test_central_keeps_the_text_and_never_reads_a_plain_detail_as_a_message(central_db_url: str) -> None:
    ledger = Ledger(central_db_url)
    try:
        now = time.time()
        for cid in ("c-new", "c-old", "c-fake"):
            ledger.add_command(cid, "gw1", "proj", "power_on", {}, "teach", now + 60)
        marked = lazy_gettext("input %(name)s (%(code)s) selected", name="hdmi1", code="32")
        fake = '{"msgid": "input %(name)s (%(code)s) selected", "params": {"name": "x"}}'  # a device's own words
        ledger.record([], [], [CommandResult.of("c-new", "done", marked, now, 1),
                               CommandResult("c-old", "done", "already on", now, 2),
                               CommandResult("c-fake", "failed", fake, now, 3)])
        new, old, faked = (ledger.command(c)["detail"] for c in ("c-new", "c-old", "c-fake"))
        assert new == "input hdmi1 (32) selected" and isinstance(new, str)  # English for every str reader
        assert result_detail(new)["detail_text"]["msgid"] == marked.msgid
        assert old == "already on" and "detail_text" not in result_detail(old)
        assert faked == fake and "detail_text" not in result_detail(faked)  # kept as the text it is
    finally:
        ledger.close()


# ---------------------------------------------------------------- a projector's result, through to the pages


def _results(agent: Any) -> dict[str, bytes]:
    return {CommandResult.decode(r.payload).id: r.payload for r in agent.outbox.peek(10_000)
            if contract.is_cmd_result(r.topic)}


@pytest.fixture(scope="module")
def gateway_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The results a real agent sends for commands to a PJLink projector simulator: power on (done), an input
    (done), an input the profile does not list (refused by the agent); and to an LG display simulator in standby:
    a volume, which the set refuses (NG 02); as the MQTT payloads (`results`). And the gateway's state (`state`)
    once an LG set refusing every command (NG 01) and a DL/T 645 meter whose every reply has a bad checksum are in
    fault."""
    tmp = tmp_path_factory.mktemp("gwtext")
    path = write_gateway_config(tmp / "gw1.yaml", f"mqtt://127.0.0.1:{free_port()}", poll_interval=0.3,
                                devices=[{"id": "proj", "profile": "projector-pjlink",
                                          "address": {"host": "127.0.0.1", "port": free_port()},
                                          "simulator": {"warmup_s": 0.2, "cooldown_s": 0.2, "power": "off"}},
                                         {"id": "tv", "profile": "display-lg-serial",
                                          "address": {"serial": str(tmp / "tv-pty"), "set_id": 1},
                                          "simulator": {"power": "off"}},
                                         {"id": "tv2", "profile": "display-lg-serial",
                                          "address": {"serial": str(tmp / "tv2-pty"), "set_id": 1},
                                          "options": {"timeout": 0.4, "retries": 0}, "simulator": {"nak_all": True}},
                                         {"id": "meter", "profile": "meter-dlt645",
                                          "address": {"serial": str(tmp / "meter-pty"), "meter_address": "123456789012",
                                                      "parity": "N"},
                                          "options": {"timeout": 0.4, "frame_gap": 0.05, "retries": 2},
                                          "simulator": {"frozen": True, "corrupt_checksum": True}}])
    out: dict[str, bytes] = {}
    state: dict[str, bytes] = {}

    async def body(agent: Any, sims: Any) -> None:
        deadline = time.time() + 30
        await until(lambda: agent.polling.status.get("tv") == "ok", what="the display read")
        for device, cid, action, params in (("proj", "c-on", "power_on", {}),
                                            ("proj", "c-in", "select_input", {"input": "hdmi1"}),
                                            ("proj", "c-bad", "select_input", {"input": "dvd"}),
                                            ("tv", "c-ng", "set_volume", {"level": 30})):
            agent.commands.receive(device, Command(cid, action, params, deadline, "teach", time.time()).encode())
        await until(lambda: len(_results(agent)) == 4, what="four results")
        out.update(_results(agent))
        await until(lambda: agent.polling.status.get("tv2") == agent.polling.status.get("meter") == "fault",
                    what="the refusing set and the meter with bad checksums in fault")
        state["payload"] = agent.presence.state().encode()

    run_room(load_gateway_config(path), body, ready="proj", what="the projector read")
    return {"results": out, "state": state["payload"]}


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    yield from one_gateway_app(tmp_path, monkeypatch)


def _ingest(app: Flask, results: dict[str, bytes]) -> None:
    """What ingest does with the payloads: decode (the contract), record in the ledger."""
    from campus.contract import State
    from dashboards.context import central

    ledger = central(app).ledger
    now = time.time()
    ledger.record([], [("s1", "gw1", State(online=True, ts=now, room="101", devices=dict(ENV_AND_PROJECTOR),
                                           interval=60))], [])
    for cid in results:
        ledger.add_command(cid, "gw1", "proj", "power_on", {}, "teach", now + 60)
    ledger.record([], [], [CommandResult.decode(p) for p in results.values()])


@pytest.mark.slow
def test_a_projector_result_reads_in_chinese_for_a_chinese_teacher_and_in_english_for_an_english_one(
        app: Flask, gateway_run: dict[str, Any]) -> None:
    projector_results = gateway_run["results"]
    sent = {cid: json.loads(p) for cid, p in projector_results.items()}
    assert (sent["c-on"]["status"], sent["c-on"]["detail"]) == ("done", "power on accepted (warming up)")
    assert sent["c-on"]["detail_msgid"] == "power on accepted (warming up)"
    assert (sent["c-in"]["detail_msgid"], sent["c-in"]["detail_params"]) == (
        "input %(name)s (%(code)s) selected", {"name": "hdmi1", "code": "32"})
    assert sent["c-bad"]["status"] == "rejected" and "detail_msgid" in sent["c-bad"]
    _ingest(app, projector_results)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {app.tokens['teacher']}"}  # type: ignore[attr-defined]

    def detail(cid: str, lang: str) -> str:
        resp = client.get(f"/api/commands/{cid}?lang={lang}", headers=auth)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_json()["detail"]

    assert detail("c-on", "zh-CN") == "已接受开机（预热中）"
    assert detail("c-on", "en") == "power on accepted (warming up)"
    assert detail("c-in", "zh-CN") == "已选择信号源 hdmi1（32）"
    assert detail("c-in", "en") == "input hdmi1 (32) selected"
    refused_zh, refused_en = detail("c-bad", "zh-CN"), detail("c-bad", "en")
    assert refused_en == sent["c-bad"]["detail"] and "is not one of" in refused_en
    assert "is not one of" not in refused_zh and "params.input" in refused_zh  # the field's name stays as the API spells it
    # The list, in the reader's language too.
    listed = client.get("/api/commands?gateway=gw1&lang=zh-CN", headers=auth).get_json()
    assert {c["id"]: c["detail"] for c in listed}["c-on"] == "已接受开机（预热中）"
    # The teacher's panel: the room's JSON carries the detail in each language; the page picks its own.
    page = client.get("/panel/gw1?lang=zh-CN", headers=auth).get_data(as_text=True)
    room = json.loads(page.split('id="panel-initial">')[1].split("</script>")[0])
    shown = {c["id"]: c for c in room["commands"]}
    assert shown["c-on"]["details"] == {"zh-CN": "已接受开机（预热中）", "en": "power on accepted (warming up)"}
    assert shown["c-on"]["detail"] == "power on accepted (warming up)"   # for a page from before
    assert shown["c-bad"]["details"]["zh-CN"] == refused_zh
    # The LG set's NG: the action and the NG code's meaning were marked on the gateway inside the refusal, and
    # the whole sentence reads in Chinese; in English as the gateway wrote it.
    assert sent["c-ng"]["status"] == "rejected"
    assert sent["c-ng"]["detail"] == "tv: set 1 refused set volume (NG 02: function not supported)"
    assert sent["c-ng"]["detail_params"]["meaning"] == {"msgid": "function not supported", "params": {}}
    assert detail("c-ng", "zh-CN") == "tv：编号 1 的一体机拒绝了 调节音量（NG 02：不支持该功能）"
    assert detail("c-ng", "en") == sent["c-ng"]["detail"]
    assert shown["c-ng"]["details"] == {"zh-CN": "tv：编号 1 的一体机拒绝了 调节音量（NG 02：不支持该功能）",
                                        "en": sent["c-ng"]["detail"]}


def test_an_older_agents_result_and_hostile_ones_show_their_english(app: Flask) -> None:
    now = time.time()
    payloads = {
        "c-old": CommandResult("c-old", "done", "power on accepted (warming up)", now, 1).encode(),
        "c-unknown": json.dumps({"id": "c-unknown", "status": "done", "detail": "as sent 1", "ts": now,
                                 "detail_msgid": "you have been pwned %(x)s", "detail_params": {"x": "1"}}).encode(),
        "c-missing": json.dumps({"id": "c-missing", "status": "done", "detail": "as sent 2", "ts": now,
                                 "detail_msgid": "input %(name)s (%(code)s) selected",
                                 "detail_params": {"name": "a"}}).encode(),
        "c-extra": json.dumps({"id": "c-extra", "status": "done", "detail": "as sent 3", "ts": now,
                               "detail_msgid": "already on", "detail_params": {"x": "{0.__class__}"}}).encode(),
        "c-format": json.dumps({"id": "c-format", "status": "done", "detail": "as sent 4", "ts": now,
                                "detail_msgid": "input %(name)s (%(code)s) selected",
                                "detail_params": {"name": "{0.__globals__}", "code": "%(name)s"}}).encode(),
    }
    _ingest(app, payloads)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {app.tokens['teacher']}"}  # type: ignore[attr-defined]
    got = {c["id"]: c["detail"] for c in client.get("/api/commands?gateway=gw1&lang=zh-CN", headers=auth).get_json()}
    assert got["c-old"] == "power on accepted (warming up)"  # no msgid: its English, as before
    assert (got["c-unknown"], got["c-missing"], got["c-extra"]) == ("as sent 1", "as sent 2", "as sent 3")
    # Params that fit: translated, the values put in as text and nothing more.
    assert got["c-format"] == "已选择信号源 {0.__globals__}（%(name)s）"
    page = client.get("/panel/gw1?lang=zh-CN", headers=auth)
    assert page.status_code == 200


def test_a_schedule_runs_step_keeps_a_valid_marked_text_and_only_the_english_of_a_hostile_one() -> None:
    from central.edge_schedules import _step_detail

    good = {"device": "proj", "action": "power_on", "status": "done",
            **contract.text_fields(lazy_gettext("power on accepted (warming up)"), contract.STEP_DETAIL_CHARS)}
    kept = _step_detail(good)
    assert kept["detail"] == "power on accepted (warming up)"
    assert ReportedText.from_dict(kept["detail_text"]).render(ZH) == "已接受开机（预热中）"
    hostile = {**good, "detail_params": {"x": {"y": 1}}}
    assert _step_detail(hostile) == {"detail": "power on accepted (warming up)"}


# ---------------------------------------------------------------- a device's fault reason, on the board


@pytest.mark.slow
def test_a_devices_fault_reason_reads_in_the_readers_language_on_the_board_and_the_provisioning_page(
        app: Flask, gateway_run: dict[str, Any]) -> None:
    from campus.contract import State
    from dashboards.context import central

    sent = json.loads(gateway_run["state"])
    details = sent["device_details"]
    assert set(details) == {"tv2", "meter"}  # only the devices in fault; an ok one says nothing
    assert details["tv2"]["detail"] == "tv2: set 1 refused power query (NG 01: illegal code)"
    assert details["tv2"]["detail_params"]["meaning"] == {"msgid": "illegal code", "params": {}}
    meter_en = details["meter"]["detail"]
    assert "no valid reply to the read of" in meter_en and "checksum" in meter_en
    # The checksum fault, every attempt the same: its own marked text, translated.
    assert details["meter"]["detail_params"]["reasons"]["msgid"] == \
        "checksum %(got)s, expected %(expected)s in frame %(frame)s"
    state = State.decode(gateway_run["state"])
    ledger = central(app).ledger
    ledger.record([], [("s1", "gw1", state)], [])
    client = app.test_client()
    auth = {"Authorization": f"Bearer {app.tokens['facility']}"}  # type: ignore[attr-defined]

    def board(lang: str) -> dict[str, Any]:
        resp = client.get(f"/api/board?lang={lang}", headers=auth)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        (room,) = resp.get_json()["rooms"]
        return {d["id"]: d for d in room["devices"]}

    zh, en = board("zh-CN"), board("en")
    assert zh["tv2"]["status"] == "fault" and zh["tv2"]["detail"] == "tv2：编号 1 的一体机拒绝了 电源状态查询（NG 01：非法代码）"
    assert en["tv2"]["detail"] == details["tv2"]["detail"]
    assert zh["meter"]["detail"].startswith("meter：") and "没有有效应答" in zh["meter"]["detail"]
    assert "校验和为 0x" in zh["meter"]["detail"] and "checksum" not in zh["meter"]["detail"]
    assert "读取" in zh["meter"]["detail"] and "the read of" not in zh["meter"]["detail"]
    assert en["meter"]["detail"] == meter_en
    assert zh["proj"]["detail"] is None  # ok: no reason
    # The provisioning page of the gateway (IT staff), in Chinese.
    admin = app.test_client()
    page = admin.get("/login").get_data(as_text=True)
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    assert admin.post("/login", data={"csrf": csrf, "username": "boss", "password": "boss-password"}).status_code == 302
    shown = admin.get("/provisioning/gateways/gw1?lang=zh-CN").get_data(as_text=True)
    assert "tv2：编号 1 的一体机拒绝了 电源状态查询（NG 01：非法代码）" in shown
    assert "refused power query" not in shown
    # The gateway offline: its devices are offline for its sake, with no reason of their own.
    ledger.record([], [("s1", "gw1", State(**{**vars(state), "online": False, "ts": time.time()}))], [])
    assert board("zh-CN")["tv2"]["detail"] is None


def test_device_details_are_bounded_and_refused_naming_the_field() -> None:
    base = {"online": True, "ts": time.time(), "devices": {"tv": {"status": "fault", "kind": "display"}}}
    good = {**base, "device_details": {"tv": contract.text_fields(lazy_gettext(
        "%(device)s: set %(set)s refused %(what)s (NG %(code)s: %(meaning)s)", device="tv", set="1",
        what=action_word("power_on"), code="01", meaning=lg_serial.ng_meaning("01")))}}
    state = contract.State.decode(json.dumps(good))
    assert contract.device_detail(state.device_details["tv"]).render(ZH) == "tv：编号 1 的一体机拒绝了 开机（NG 01：非法代码）"
    # A state without reasons (an agent from before, or nothing in fault) is what it was: no new key on the wire.
    assert "device_details" not in json.loads(contract.State.decode(json.dumps(base)).encode())
    # The English alone (an agent that does not mark it) is kept; a long one is cut.
    plain = contract.State.decode(json.dumps({**base, "device_details": {"tv": {"detail": "x" * 5000}}}))
    assert contract.device_detail(plain.device_details["tv"]) == "x" * contract.DEVICE_DETAIL_CHARS
    for details, field in (({"ghost": {"detail": "x"}}, "device_details.ghost"),
                           ({"tv": "down"}, "device_details.tv"),
                           ({"tv": {"detail": 5}}, "'detail'"),
                           ({"tv": {"detail": "x", "detail_msgid": ""}}, "'detail_msgid'"),
                           ({"tv": {"detail": "x", "detail_msgid": "a", "detail_params": {"p": {"q": 1}}}},
                            "'detail_params.p'"),
                           ([], "'device_details'")):
        with pytest.raises(PayloadError, match=field):
            contract.State.decode(json.dumps({**base, "device_details": details}))


def test_the_agent_sends_fault_reasons_within_a_budget_central_always_takes() -> None:
    """Many devices in fault with long reasons: the state stays far below the payload limit, the marked text
    going before the English and the English before the device; offline, the gateway sends none."""
    from types import SimpleNamespace

    from edge_agent.polling import Polling

    devices = [f"d{i:02d}" for i in range(60)]
    polling = Polling(SimpleNamespace(school="s1", gateway="gw1"), None, {d: object() for d in devices}, {},  # type: ignore[arg-type]
                      wake_drain=lambda: None, status_changed=lambda: None)
    long = lazy_gettext("%(device)s: %(error)s", device="x" * 300, error=lazy_gettext(
        "cannot open serial port %(port)s: %(error)s", port="p" * 300, error="e" * 300))
    for d in devices:
        polling._set_status(d, "fault", DeviceError(long))
    polling._set_status("d00", "ok")  # back: no reason
    details = polling.details(True)
    assert "d00" not in details and "d01" in details
    assert details["d01"]["detail_params"]["error"]["msgid"] == "cannot open serial port %(port)s: %(error)s"
    assert len(json.dumps(details, ensure_ascii=False).encode()) <= contract.DEVICE_DETAILS_BYTES
    assert any("detail_msgid" not in part for part in details.values())  # the budget cut some to their English
    state = contract.State(online=True, ts=time.time(), devices={d: {"status": "fault"} for d in devices},
                           device_details=details)
    assert len(state.encode()) < contract.MAX_PAYLOAD_BYTES and contract.State.decode(state.encode()).device_details
    assert polling.details(False) == {}
