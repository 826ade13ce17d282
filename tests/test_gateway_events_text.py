"""The gateway's words inside events and its state, shown in the reader's language (the rest of issue 20).

Why a pushed config was refused (`config_rejected`: its `error`), why a damaged outbox was replaced
(`outbox_replaced` and `state.outbox_replaced`: `reason`) and why a rule ran (`rule_run`: `reason`) are marked
on the gateway like a command's result (campus/contract.py EVENT_TEXTS, `text_fields` under the field's own
name), held to the same bounds at decode (the hostile cases of tests/test_gateway_text.py, renamed), and shown
translated where central shows them: the provisioning pages, the board's storage notes, the panel's why-lines.
Pydantic's common error types read in our words (device_profiles/config.py `validation_text`); the others keep
pydantic's English. An older agent's plain English shows as it came.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from campus import contract
from campus.contract import Event, State
from campus.errors import PayloadError
from campus.i18n import LazyText, ReportedText, lazy_gettext
from central.ledger import Sequenced
from device_profiles.config import GatewayConfig, validation_text
from edge_agent.config_push import ConfigPush
from edge_agent.outbox import Outbox
from tests.apps import one_gateway_app
from tests.test_gateway_text import HOSTILE, ZH

ENV = {"id": "e", "profile": "env-6in1-modbus", "address": {"host": "h"}}
CARD = "a" * 64


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    yield from one_gateway_app(tmp_path, monkeypatch)


def _get(app: Flask, path: str, role: str = "admin") -> Any:
    return app.test_client().get(path, headers={"Authorization": f"Bearer {app.tokens[role]}"})  # type: ignore[attr-defined]


def _page(app: Flask, path: str) -> str:
    """A page's text as a reader sees it (entities such as &#39; read back)."""
    return html.unescape(_get(app, path).get_data(as_text=True))


# ---------------------------------------------------------------- the contract: same bounds as a result's text


@pytest.mark.parametrize("etype", sorted(contract.EVENT_TEXTS))
@pytest.mark.parametrize(("extra", "field"), HOSTILE)
def test_hostile_marked_texts_in_events_are_refused_naming_the_field(etype: str, extra: dict[str, Any],
                                                                      field: str) -> None:
    key = contract.EVENT_TEXTS[etype]
    renamed = {k.replace("detail", key, 1): v for k, v in extra.items()}
    payload = {"seq": 1, "ts": time.time(), "type": etype, "data": {key: "as sent", **renamed}}
    with pytest.raises(PayloadError, match=f"field '{field.replace('detail', key, 1)}'"):
        Event.decode(json.dumps(payload))


@pytest.mark.parametrize(("extra", "field"), HOSTILE[:6])
def test_a_hostile_replacement_reason_in_a_state_is_refused_naming_the_field(extra: dict[str, Any],
                                                                              field: str) -> None:
    renamed = {k.replace("detail", "reason", 1): v for k, v in extra.items()}
    state = {"online": True, "ts": time.time(), "outbox_replaced": {"at": time.time(), "reason": "x", **renamed}}
    with pytest.raises(PayloadError, match=f"field '{field.replace('detail', 'reason', 1)}'"):
        State.decode(json.dumps(state))


def test_pydantic_errors_by_type_in_our_words_a_validators_marked_and_the_rest_in_pydantics_english() -> None:
    assert validation_text({"type": "missing", "loc": ("devices", 0, "profile"), "msg": "Field required"}).render(ZH) \
        == "字段 devices.0.profile：缺失"
    assert validation_text({"type": "int_parsing", "loc": ("x",), "msg": "Input should be a valid integer"}) \
        .render(ZH) == "字段 x：必须是整数"
    assert str(validation_text({"type": "greater_than_equal", "loc": ("t",), "msg": "…", "ctx": {"ge": 0}})) \
        == "field t: must be at least 0"
    # A type of no table of ours: pydantic's English inside our sentence.
    other = validation_text({"type": "uuid_parsing", "loc": ("u",), "msg": "Input should be a valid UUID"})
    assert other.render(ZH) == "字段 u：Input should be a valid UUID" and str(other) == "field u: Input should be a valid UUID"


# ---------------------------------------------------------------- a refused config, on the provisioning pages


def _refusal(tmp_path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """The `config_rejected` event's data the agent's ConfigPush reports for a pushed `doc` (the real code)."""
    base = GatewayConfig(school="s1", gateway="gw1", room="101", data_dir=str(tmp_path))
    events: list[tuple[str, dict[str, Any]]] = []
    push = ConfigPush(base, base, None, drivers={}, locks={}, polling=None, commands=None,  # type: ignore[arg-type]
                      new_driver=None, spawn=None, agent_event=lambda t, d: events.append((t, d)),  # type: ignore[arg-type]
                      changed=lambda: None)
    assert asyncio.run(push.apply(json.dumps(doc).encode())) is False
    [(etype, data)] = events
    assert etype == contract.CONFIG_REJECTED_EVENT
    # Through the contract, as ingest takes it.
    return Event.decode(Event(1, time.time(), etype, data).encode()).data


@pytest.mark.parametrize(("devices", "extra", "english", "chinese"), [
    ([{**ENV, "poll_interval": "ten"}], {}, "field devices.0.poll_interval: must be a number",
     "字段 devices.0.poll_interval：必须是数字"),
    ([{"id": "e"}], {}, "field devices.0.profile: missing", "字段 devices.0.profile：缺失"),
    ([{**ENV, "x": 1}], {}, "field devices.0.x: not a field here", "字段 devices.0.x：此处没有这个字段"),
    ([ENV], {"podium": {"timeout_s": -1}}, "field podium.timeout_s: must be at least 0",
     "字段 podium.timeout_s：不得小于 0"),
    ([ENV], {"podium": {"cards": {CARD: {"role": "teacher", "label": "x" * 101}}}},
     f"field podium.cards.{CARD}.label: must have at most 100 characters",
     f"字段 podium.cards.{CARD}.label：最多 100 个字符"),
    ([ENV, ENV], {}, "device id 'e' appears twice", "设备编号 'e' 出现了两次"),
    ([ENV], {"podium": {"cards": {CARD: {"role": "pope"}}}},
     f"field podium.cards.{CARD}.role: must be one of teacher, facility, cleaner, got 'pope'",
     f"字段 podium.cards.{CARD}.role：必须是 teacher, facility, cleaner 之一，收到的是 'pope'"),
])
def test_a_refused_configs_error_reads_in_the_readers_language(app: Flask, tmp_path: Path, devices: list[Any],
                                                               extra: dict[str, Any], english: str,
                                                               chinese: str) -> None:
    from central.provisioning import ConfigPush as PushRow
    from dashboards.context import central

    data = _refusal(tmp_path, {"version": 7, "devices": devices, **extra})
    assert data["error"] == english and data["error_msgid"]  # the English every central before reads, and marked
    reg = central(app).registry
    wanted = reg.gateway_info("gw1")["config_version"]  # type: ignore[index]
    with reg.session() as s:
        s.merge(PushRow(gateway_id="gw1", version=wanted))
    central(app).ledger.record([Sequenced("s1", "gw1", contract.AGENT_DEVICE, 1, time.time(), event=(
        contract.CONFIG_REJECTED_EVENT, {**data, "version": wanted}))],
        [("s1", "gw1", State(online=True, ts=time.time(), interval=5))], [])
    for path in ("/provisioning/gateways/gw1", "/provisioning/gateways"):
        zh = _page(app, f"{path}?lang=zh-CN")
        assert chinese in zh and english not in zh, path
        assert english in _page(app, f"{path}?lang=en"), path


def test_an_older_agents_refusal_and_a_hostile_one_show_their_english(app: Flask) -> None:
    from central.provisioning import ConfigPush as PushRow
    from dashboards.context import central

    reg = central(app).registry
    wanted = reg.gateway_info("gw1")["config_version"]  # type: ignore[index]
    with reg.session() as s:
        s.merge(PushRow(gateway_id="gw1", version=wanted))
    old = "field devices.0.x: Extra inputs are not permitted"
    central(app).ledger.record([Sequenced("s1", "gw1", contract.AGENT_DEVICE, 1, time.time(), event=(
        contract.CONFIG_REJECTED_EVENT, {"version": wanted, "error": old}))],
        [("s1", "gw1", State(online=True, ts=time.time(), interval=5))], [])
    assert old in _page(app, "/provisioning/gateways/gw1?lang=zh-CN")
    # Params that do not fit the msgid: the English as sent, never a formatted gateway value.
    fake = {"version": wanted, "error": "as sent", "error_msgid": "field %(field)s: missing",
            "error_params": {"field": "{0.__class__}", "extra": "%(field)s"}}
    central(app).ledger.record([Sequenced("s1", "gw1", contract.AGENT_DEVICE, 2, time.time() + 1, event=(
        contract.CONFIG_REJECTED_EVENT, Event.decode(Event(2, time.time(), contract.CONFIG_REJECTED_EVENT,
                                                           fake).encode()).data))], [], [])
    page = _page(app, "/provisioning/gateways/gw1?lang=zh-CN")
    assert "as sent" in page and "缺失" not in page


# ---------------------------------------------------------------- a replaced outbox and a full disk, on the board


def test_a_replaced_outbox_and_a_full_disk_read_in_the_readers_language(app: Flask, tmp_path: Path) -> None:
    from dashboards.context import central

    path = tmp_path / "agent.db"
    path.write_bytes(b"")  # cut short to nothing: the agent sets it aside and starts a new one
    box = Outbox(path)
    try:
        rep = box.replaced
        assert rep is not None and isinstance(rep.reason, LazyText)
        sent = rep.as_dict()
        assert sent["reason"] == "the outbox file is empty (cut short)"
        assert sent["reason_msgid"] == "the outbox file is empty (cut short)" and sent["reason_params"] == {}
    finally:
        box.close()
    again = Outbox(path)  # restarted: the replacement is still reported, in the same (marked) words
    try:
        assert again.replaced is not None and again.replaced.as_dict() == sent
    finally:
        again.close()
    now = time.time()
    state = State.decode(State(online=True, ts=now, room="101", interval=5, outbox_replaced=sent,
                               outbox={"not_stored": 41}, storage={"status": "full", "since": now - 60,
                                                                   "error": "database or disk is full"}).encode())
    central(app).ledger.record([Sequenced("s1", "gw1", contract.AGENT_DEVICE, 1, now, event=(
        contract.OUTBOX_REPLACED_EVENT, sent))], [("s1", "gw1", state)], [])

    def notes(lang: str) -> list[str]:
        (room,) = _get(app, f"/api/board?lang={lang}", "facility").get_json()["rooms"]
        return [n["text"] for n in room["notes"]]

    full, replaced = notes("zh-CN")
    assert full.startswith("网关存储自 ") and "至今 41 条未保存" in full
    assert replaced.startswith("发件箱于 ") and "：发件箱文件为空（被截断）；丢失的未发送消息数量未知" in replaced
    full, replaced = notes("en")
    assert full.startswith("Gateway storage full since ") and "41 not stored" in full
    assert "Outbox replaced after damage at " in replaced and ": the outbox file is empty (cut short);" in replaced
    page = _page(app, "/provisioning/gateways/gw1?lang=zh-CN")
    assert "发件箱文件为空（被截断）" in page and "cut short" not in page
    # An older agent's reason (plain English): shown as it came, inside the reader's sentence.
    old = State(online=True, ts=now + 1, room="101", interval=5,
                outbox_replaced={"at": now, "reason": "the outbox file is damaged (file is not a database)",
                                 "kept_as": "agent.db.corrupt-x", "lost": 1})
    central(app).ledger.record([], [("s1", "gw1", State.decode(old.encode()))], [])
    (only,) = notes("zh-CN")
    assert "：the outbox file is damaged (file is not a database)；丢失 1 条未发送的消息" in only


# ---------------------------------------------------------------- a rule's reason, in the panel's why-line


def test_a_rule_runs_reason_reads_in_the_readers_language_on_the_panel(app: Flask) -> None:
    from central import room_actions
    from dashboards.panel import room_snapshot, why_text

    reason = lazy_gettext("nobody in the room for %(minutes)s minutes and no command", minutes="2")
    data = {"rule": "later_rule", "at": time.time(), "steps": [{"device": "proj", "action": "power_off",
                                                               "status": "done"}],
            **contract.text_fields(reason, key="reason"), "outcome": "ran"}
    event = Event.decode(Event(1, time.time(), contract.RULE_RUN_EVENT, data).encode())
    [item] = room_actions.actions([{"type": event.type, "ts": event.ts, "data": event.data}], [])
    old = {**item, "reason_marked": None, "reason": "nobody in the room for 2 minutes and no command"}
    with app.test_request_context("/?lang=zh-CN"):
        assert "（教室已 2 分钟无人且无命令）" in why_text(item, {"proj": "projector"})
        assert why_text(old, {"proj": "projector"}).endswith("（nobody in the room for 2 minutes and no command）")
    with app.test_request_context("/?lang=en"):
        assert "(nobody in the room for 2 minutes and no command)" in why_text(item, {"proj": "projector"})
    assert isinstance(contract.marked_text(event.data, "reason"), ReportedText)
    # The stream's snapshot carries it in every language (the script redraws the line in the page's own),
    # and an older agent's English only as it came.
    ev = {"type": event.type, "ts": event.ts, "data": event.data}
    with app.app_context():
        [shown] = room_snapshot("gw1", None, [ev])["automatic"]
        [plain] = room_snapshot("gw1", None, [{**ev, "data": {k: v for k, v in event.data.items()
                                                              if not k.startswith("reason_")}}])["automatic"]
    assert shown["reasons"] == {"zh-CN": "教室已 2 分钟无人且无命令",
                                "en": "nobody in the room for 2 minutes and no command"}
    assert "reasons" not in plain and plain["reason"] == "nobody in the room for 2 minutes and no command"
