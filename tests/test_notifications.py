"""Alarms reach people (issue 20, part 4), with real receivers: an SMTP server speaking STARTTLS and AUTH
(aiosmtpd, a throwaway CA from broker_config/make-ca.sh), and an HTTP receiver on an ephemeral port
standing in for WeCom's and DingTalk's robots and a generic webhook, whose payloads and signatures are
checked the way those services check them.

The notifier is driven directly (`Notifier.round(now)`) with explicit times and a short batching window:
no test waits for a real window or backoff to pass.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.header import decode_header, make_header
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from central import alarms
from central import provisioning as prov
from central.alarms import Snapshot
from central.notify import channels as chan
from central.notify.outbox import Notifier, list_deliveries
from central.notify.tables import NotifyEvent
from central.registry import Registry
from dashboards import close_app
from dashboards.context import central
from tests.apps import central_db, sqlite_only, web_app
from tests.servers import wait_until
from tests.tlsbrokers import make_ca

BUILDING = "教学楼A"


# ---------------------------------------------------------------- receivers


class Receiver:
    """An HTTP server on 127.0.0.1:<ephemeral> recording every POST; `fail` answers 500 that many times,
    `errcode` answers a robot's refusal (HTTP 200, errcode != 0)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail = 0
        self.errcode = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = urlsplit(self.path)
                receiver.requests.append({"path": parts.path, "query": parse_qs(parts.query), "raw_query": parts.query,
                                          "headers": dict(self.headers), "body": body,
                                          "failed": receiver.fail > 0})
                if receiver.fail > 0:
                    receiver.fail -= 1
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"try later")
                    return
                answer = json.dumps({"errcode": receiver.errcode, "errmsg": "ok" if not receiver.errcode else "sign not match"})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def taken(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if not r["failed"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mailbox:
    def __init__(self) -> None:
        self.mails: list[dict[str, Any]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        self.mails.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "data": envelope.content,
                           "tls": session.ssl is not None, "login": session.auth_data})
        return "250 OK"


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[tuple[Controller, Mailbox, ssl.SSLContext]]:
    """A real SMTP server requiring STARTTLS before anything and AUTH LOGIN (user `alarms`); the client
    context trusting its throwaway CA."""
    pki = make_ca(tmp_path / "pki")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki / "server.crt", pki / "server.key")
    mailbox = Mailbox()

    def authenticate(_server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.login == b"alarms" and data.password == b"smtp-password"
        return AuthResult(success=ok, handled=False, auth_data=data.login if ok else None)  # the server answers 535

    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port(), tls_context=server_ctx,
                            require_starttls=True, auth_required=True, authenticator=authenticate)
    controller.start()
    yield controller, mailbox, ssl.create_default_context(cafile=str(pki / "ca.crt"))
    controller.stop()


# ---------------------------------------------------------------- a school and its alarms


def school(reg: Registry, rooms: int, school_id: str = "s1", buildings: tuple[str, ...] = (BUILDING,)) -> list[str]:
    """`rooms` rooms of `school_id` spread over `buildings`, a gateway each; their gateway ids."""
    gws = [f"gw-{school_id}-{i:03d}" for i in range(rooms)]
    csv = "school,building,room,gateway\n" + "".join(
        f"{school_id},{buildings[i % len(buildings)]},{100 + i},{gw}\n" for i, gw in enumerate(gws))
    assert prov.import_csv(reg, csv.encode()).ok
    return gws


def offline(gws: list[str], now: float, online: bool = False) -> Snapshot:
    """What the alarm rules see: these gateways offline for an hour (or online again)."""
    return Snapshot(gateways=[{"id": gw, "online": online, "last_seen": now - 3600} for gw in gws], devices=[],
                    latest={})


@pytest.fixture
def reg(central_db_url: str) -> Iterator[Registry]:
    """The registry on a new central database, SQLite and PostgreSQL in turn: the outbox's claims and batches
    are SQL that both engines must run alike."""
    r = Registry(central_db_url)
    yield r
    r.close()


def channel(reg: Registry, **fields: Any) -> dict[str, Any]:
    return chan.save_channel(reg, chan.parse_channel(reg, {"name": fields.pop("name", "duty"), **fields}))


def run_until_quiet(notifier: Notifier, start: float, rounds: int = 10) -> float:
    """Rounds one second apart (of notifier time) until nothing is pending; the last time used."""
    now = start
    for _ in range(rounds):
        notifier.round(now)
        if not list_deliveries(notifier.registry, status="pending")[1]:
            return now
        now += 1
    return now


# ---------------------------------------------------------------- the channels, over the wire


@sqlite_only
def test_an_alarm_mail_arrives_over_starttls_with_login_in_the_school_time_zone(
        reg: Registry, smtp: tuple[Controller, Mailbox, ssl.SSLContext]) -> None:
    controller, mailbox, client_ctx = smtp
    gws = school(reg, 3)
    ch = channel(reg, kind="email", lang="en", smtp_host="127.0.0.1", smtp_port=controller.port, username="alarms",
                 secret="smtp-password", sender="campus@school.example",
                 recipients="duty@school.example\nboss@school.example")
    assert ch["secret"] == "••••" and "smtp-password" not in json.dumps(chan.list_channels(reg))
    notifier = Notifier(reg, window=2.0, backoff=1.0, ssl_context=client_ctx)
    t0 = 1_796_031_200.0  # 2026-11-30 09:33:20 UTC = 17:33 in Asia/Shanghai
    alarms.evaluate(reg, None, now=t0, snap=offline(gws, t0))
    assert notifier.round(t0 + 1).deliveries == 0  # the window is still open: more may come
    result = notifier.round(t0 + 2)
    assert (result.deliveries, result.sent, result.failed) == (1, 1, 0)
    assert len(mailbox.mails) == 1
    mail = mailbox.mails[0]
    assert mail["tls"] and mail["login"] == b"alarms"
    assert mail["from"] == "campus@school.example"
    assert sorted(mail["to"]) == ["boss@school.example", "duty@school.example"]
    parsed = message_from_bytes(mail["data"])
    subject = str(make_header(decode_header(parsed["Subject"])))
    assert subject == f"3 alarms raised: Offline too long — {BUILDING}, s1"
    body = parsed.get_payload(decode=True).decode("utf-8")
    assert body.count("since 2026-11-30 17:33") == 3 and "PM" not in body
    assert [d["status"] for d in list_deliveries(reg)[0]] == ["sent"]
    # A wrong password: the delivery stays pending with the server's answer, and is tried again later.
    chan.save_channel(reg, chan.parse_channel(reg, {**ch["settings"], "name": "duty", "secret": "wrong"},
                                              kind="email"), ch["id"])
    alarms.acknowledge(reg, alarms.list_alarms(reg)[0]["id"], "fm", now=t0 + 10)
    notifier.round(t0 + 20)
    newest = list_deliveries(reg)[0][0]
    assert newest["status"] == "pending" and newest["attempts"] == 1 and newest["last_error"].startswith("SMTP 535")
    assert newest["transition"] == "acknowledged" and len(mailbox.mails) == 1


@sqlite_only
def test_a_zh_cn_channel_mail_arrives_in_chinese(reg: Registry, smtp: tuple[Controller, Mailbox, ssl.SSLContext]) -> None:
    """The recipient's language over the real wire: the web app's catalogs (dashboards.i18n.catalog, as
    dashboards/notifications.py hands them to the notifier) make a zh-CN channel's mail Chinese, subject (an
    encoded header) and body, with the time in 24 hours and no English word of ours left."""
    from dashboards.i18n import catalog

    controller, mailbox, client_ctx = smtp
    gws = school(reg, 2)
    channel(reg, kind="email", lang="zh-CN", smtp_host="127.0.0.1", smtp_port=controller.port, username="alarms",
            secret="smtp-password", sender="campus@school.example", recipients="duty@school.example")
    notifier = Notifier(reg, window=0.0, backoff=1.0, ssl_context=client_ctx)
    notifier.translations = catalog
    t0 = 1_796_031_200.0  # 2026-11-30 17:33 in Asia/Shanghai
    alarms.evaluate(reg, None, now=t0, snap=offline(gws, t0))
    assert notifier.round(t0 + 1).sent == 1 and len(mailbox.mails) == 1
    parsed = message_from_bytes(mailbox.mails[0]["data"])
    subject = str(make_header(decode_header(parsed["Subject"])))
    assert subject == f"新增 2 条告警：离线时间过长 — {BUILDING}，s1", subject
    body = parsed.get_payload(decode=True).decode("utf-8")
    assert body.count("2026-11-30 17:33") == 2 and "严重" in body, body
    assert not any(word in body for word in ("raised", "since", "Severity", "Sent by", "Offline", "PM")), body


@sqlite_only
def test_wecom_dingtalk_and_webhook_payloads_and_signatures(reg: Registry, receiver: Receiver) -> None:
    gws = school(reg, 2)
    channel(reg, name="wecom", kind="wecom", lang="en", url=receiver.url("/cgi-bin/webhook/send?key=wecom-key-123456"))
    channel(reg, name="ding", kind="dingtalk", lang="en", msgtype="markdown",
            url=receiver.url("/robot/send?access_token=ding-token-123456"), secret="SECding-signing-secret")
    channel(reg, name="hook", kind="webhook", lang="en", url=receiver.url("/hook"), secret="webhook-secret-0123456789")
    channel(reg, name="ding-text", kind="dingtalk", lang="en", msgtype="text", url=receiver.url("/robot/text"))
    t0 = time.time()
    alarms.evaluate(reg, None, now=t0, snap=offline(gws, t0))
    Notifier(reg, window=0.0).round(t0 + 1)
    by_path = {r["path"]: r for r in receiver.taken()}
    assert len(receiver.requests) == 4 and set(by_path) == {"/cgi-bin/webhook/send", "/robot/send", "/hook", "/robot/text"}

    wecom = by_path["/cgi-bin/webhook/send"]
    assert wecom["query"] == {"key": ["wecom-key-123456"]}
    doc = json.loads(wecom["body"])
    assert set(doc) == {"msgtype", "markdown"} and doc["msgtype"] == "markdown"
    assert doc["markdown"]["content"].startswith(f"### 2 alarms raised: Offline too long — {BUILDING}, s1")

    ding = by_path["/robot/send"]
    ts = ding["query"]["timestamp"][0]
    assert abs(int(ts) - t0 * 1000) < 60_000  # milliseconds, now
    expected = base64.b64encode(hmac.new(b"SECding-signing-secret", f"{ts}\nSECding-signing-secret".encode(),
                                         hashlib.sha256).digest()).decode()
    sign_raw = next(p.split("=", 1)[1] for p in ding["raw_query"].split("&") if p.startswith("sign="))
    assert unquote_plus(sign_raw) == expected and ding["query"]["access_token"] == ["ding-token-123456"]
    doc = json.loads(ding["body"])
    assert doc["msgtype"] == "markdown" and set(doc["markdown"]) == {"title", "text"}
    assert doc["markdown"]["title"] == f"2 alarms raised: Offline too long — {BUILDING}, s1"
    assert json.loads(by_path["/robot/text"]["body"])["text"]["content"].startswith("2 alarms raised")
    assert "timestamp" not in by_path["/robot/text"]["query"]  # no secret: not signed

    hook = by_path["/hook"]
    stamp, signature = hook["headers"]["X-Campus-Timestamp"], hook["headers"]["X-Campus-Signature"]
    assert signature == "sha256=" + hmac.new(b"webhook-secret-0123456789", stamp.encode() + b"." + hook["body"],
                                             hashlib.sha256).hexdigest()
    doc = json.loads(hook["body"])
    assert doc["transition"] == "raised" and doc["school"] == "s1" and doc["building"] == BUILDING
    assert sorted(a["gateway"] for a in doc["alarms"]) == sorted(gws) and doc["severity"] == "critical"
    # A robot that answers 200 but refuses (errcode) is a failure, with its message kept.
    receiver.errcode = 310000
    alarms.evaluate(reg, None, now=t0 + 5, snap=offline(gws, t0 + 5, online=True))
    Notifier(reg, window=0.0).round(t0 + 6)
    ding_rows = [d for d in list_deliveries(reg)[0] if d["channel"] == "ding" and d["transition"] == "cleared"]
    assert ding_rows[0]["status"] == "pending" and "errcode 310000" in ding_rows[0]["last_error"]
    # A robot that cannot be reached: the error says so without its token (errors are shown to admins).
    channel(reg, name="gone", kind="wecom", url=f"http://127.0.0.1:{free_port()}/send?key=secret-robot-key")
    alarms.evaluate(reg, None, now=t0 + 10, snap=offline(gws, t0 + 10))
    Notifier(reg, window=0.0).round(t0 + 11)
    gone = next(d for d in list_deliveries(reg)[0] if d["channel"] == "gone")
    assert "ConnectionError" in gone["last_error"] and "secret-robot-key" not in gone["last_error"]


# ---------------------------------------------------------------- once, batched, retried, muted


def test_a_200_room_outage_is_a_handful_of_messages_and_each_transition_is_told_once(
        reg: Registry, receiver: Receiver) -> None:
    buildings = ("教学楼A", "教学楼B", "实验楼", "图书馆")
    gws = school(reg, 200, buildings=buildings)
    channel(reg, kind="webhook", url=receiver.url("/hook"), secret="webhook-secret-0123456789")
    notifier = Notifier(reg, window=5.0)
    t0 = time.time()
    alarms.evaluate(reg, None, now=t0, snap=offline(gws, t0))
    alarms.evaluate(reg, None, now=t0 + 1, snap=offline(gws, t0 + 1))  # still offline: nothing new
    run_until_quiet(notifier, t0 + 5)
    docs = [json.loads(r["body"]) for r in receiver.taken()]
    assert len(docs) == len(buildings)  # one per building, not 200
    assert sorted(len(d["alarms"]) for d in docs) == [50] * 4
    assert sorted(a["id"] for d in docs for a in d["alarms"]) == sorted(a["id"] for a in alarms.list_alarms(reg))
    alarms.evaluate(reg, None, now=t0 + 20, snap=offline(gws, t0 + 20, online=True))
    run_until_quiet(notifier, t0 + 30)
    run_until_quiet(notifier, t0 + 40)  # nothing more
    cleared = [json.loads(r["body"]) for r in receiver.taken()][len(buildings):]
    assert len(cleared) == len(buildings) and {d["transition"] for d in cleared} == {"cleared"}


def test_a_receiver_failing_twice_then_taking_it_gets_exactly_one_message(reg: Registry, receiver: Receiver) -> None:
    gws = school(reg, 1)
    channel(reg, kind="wecom", url=receiver.url("/send?key=abc"))
    receiver.fail = 2
    notifier = Notifier(reg, window=0.0, backoff=10.0)
    t0 = time.time()
    alarms.evaluate(reg, None, now=t0, snap=offline(gws, t0))
    notifier.round(t0)
    first = list_deliveries(reg)[0][0]
    assert (first["status"], first["attempts"]) == ("pending", 1) and "HTTP 500" in first["last_error"]
    assert first["next_at"] == pytest.approx(t0 + 10)
    notifier.round(t0 + 5)  # not due yet
    assert len(receiver.requests) == 1
    notifier.round(t0 + 10)  # second attempt fails: the next one is 20 s later
    assert list_deliveries(reg)[0][0]["next_at"] == pytest.approx(t0 + 30)
    notifier.round(t0 + 30)
    notifier.round(t0 + 100)
    assert [r["failed"] for r in receiver.requests] == [True, True, False]
    done = list_deliveries(reg)[0][0]
    assert (done["status"], done["attempts"], done["last_error"]) == ("sent", 3, "")


def test_a_receiver_that_never_takes_it_ends_failed_and_an_admin_can_retry(reg: Registry, receiver: Receiver) -> None:
    gws = school(reg, 1)
    channel(reg, kind="wecom", url=receiver.url("/send?key=abc"))
    receiver.fail = 100
    notifier = Notifier(reg, window=0.0, backoff=1.0, max_attempts=3)
    t0 = time.time()
    alarms.evaluate(reg, None, now=t0, snap=offline(gws, t0))
    for i in range(10):
        notifier.round(t0 + 10 * i)
    row = list_deliveries(reg)[0][0]
    assert (row["status"], row["attempts"], len(receiver.requests)) == ("failed", 3, 3)
    receiver.fail = 0
    from central.notify.outbox import retry_delivery

    assert retry_delivery(reg, row["id"], now=t0 + 200)
    notifier.round(t0 + 200)
    assert list_deliveries(reg)[0][0]["status"] == "sent" and len(receiver.taken()) == 1


def test_a_restart_in_the_middle_sends_nothing_twice(central_db_url: str, receiver: Receiver) -> None:
    url = central_db_url
    first = Registry(url)
    gws = school(first, 30, school_id="s1", buildings=("A", "B", "C")) + school(first, 30, school_id="s2",
                                                                               buildings=("A", "B", "C"))
    channel(first, kind="webhook", url=receiver.url("/hook"), secret="webhook-secret-0123456789")
    t0 = time.time()
    alarms.evaluate(first, None, now=t0, snap=offline(gws, t0))
    before = Notifier(first, window=0.0, budget_s=0.0)  # sends one delivery a round, then its time is up
    before.round(t0)
    before.round(t0 + 1)
    assert len(receiver.taken()) == 2
    first.close()  # the web process stops; a new one opens the same database
    second = Registry(url)
    try:
        after = Notifier(second, window=0.0)
        alarms.evaluate(second, None, now=t0 + 2, snap=offline(gws, t0 + 2))  # the same alarms still hold
        for i in range(3):
            after.round(t0 + 3 + i)
        docs = [json.loads(r["body"]) for r in receiver.taken()]
        assert len(docs) == 6  # 2 schools x 3 buildings
        assert len({d["delivery"] for d in docs}) == 6
        told = sorted(a["id"] for d in docs for a in d["alarms"])
        assert told == sorted(set(told)) and len(told) == 60
        with second.session() as s:
            assert s.query(NotifyEvent).count() == 60  # one "raised" per alarm, however often evaluated
    finally:
        second.close()


def test_a_muted_school_or_room_gets_nothing_and_its_alarms_stay_on_the_board(reg: Registry, receiver: Receiver) -> None:
    s1 = school(reg, 3, school_id="s1")
    s2 = school(reg, 2, school_id="s2")
    channel(reg, kind="webhook", url=receiver.url("/hook"), secret="webhook-secret-0123456789")
    t0 = time.time()
    zone = Notifier(reg).zone
    chan.add_mute(reg, {"school": "s1", "until": t0 + 3600, "reason": "new projectors"}, "fm", zone, now=t0)
    chan.add_mute(reg, {"school": "s2", "room": "100", "until": t0 + 3600}, "fm", zone, now=t0)
    with pytest.raises(chan.ChannelError) as refused:
        chan.add_mute(reg, {"school": "s2", "room": "999", "until": t0 + 60}, "fm", zone, now=t0)
    assert refused.value.field == "room"
    notifier = Notifier(reg, window=0.0)
    alarms.evaluate(reg, None, now=t0, snap=offline(s1 + s2, t0))
    run_until_quiet(notifier, t0 + 1)
    assert len(alarms.list_alarms(reg)) == 5  # all on the board
    docs = [json.loads(r["body"]) for r in receiver.taken()]
    assert [[a["gateway"] for a in d["alarms"]] for d in docs] == [["gw-s2-001"]]  # s2's unmuted room only
    # The mute ends before the alarms clear: their clearing is not told either (their raise never was).
    alarms.evaluate(reg, None, now=t0 + 7200, snap=offline(s1 + s2, t0 + 7200, online=True))
    run_until_quiet(notifier, t0 + 7201)
    docs = [json.loads(r["body"]) for r in receiver.taken()]
    assert [(d["transition"], [a["gateway"] for a in d["alarms"]]) for d in docs][1:] == [("cleared", ["gw-s2-001"])]


def test_channels_take_their_school_and_severity(reg: Registry, receiver: Receiver) -> None:
    s1, s2 = school(reg, 1, school_id="s1"), school(reg, 1, school_id="s2")
    channel(reg, name="s2 only", kind="webhook", school="s2", url=receiver.url("/s2"), secret="webhook-secret-0123456789")
    channel(reg, name="critical only", kind="webhook", min_severity="critical", url=receiver.url("/crit"),
            secret="webhook-secret-0123456789")
    channel(reg, name="off", kind="webhook", enabled=False, url=receiver.url("/off"), secret="webhook-secret-0123456789")
    t0 = time.time()
    alarms.evaluate(reg, None, now=t0, snap=offline(s1 + s2, t0))  # offline: critical
    lamp = Snapshot(gateways=[{"id": g, "online": True, "last_seen": t0} for g in s1 + s2],
                    devices=[{"gateway": g, "id": "proj", "kind": "projector", "status": "ok"} for g in s1 + s2],
                    latest={(g, "proj"): {"lamp_hours": 99999} for g in s1 + s2})
    alarms.evaluate(reg, None, now=t0 + 1, snap=lamp)  # lamp worn: info; offline cleared: critical
    run_until_quiet(Notifier(reg, window=0.0), t0 + 2)
    got = sorted((r["path"], json.loads(r["body"])["school"], json.loads(r["body"])["kind"],
                  json.loads(r["body"])["transition"]) for r in receiver.taken())
    assert got == [("/crit", "s1", "offline_minutes", "cleared"), ("/crit", "s1", "offline_minutes", "raised"),
                   ("/crit", "s2", "offline_minutes", "cleared"), ("/crit", "s2", "offline_minutes", "raised"),
                   ("/s2", "s2", "offline_minutes", "cleared"), ("/s2", "s2", "offline_minutes", "raised")]


# ---------------------------------------------------------------- the web app


def _web(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    app = web_app(central_db(tmp_path, lambda ledger, points: None), monkeypatch)
    reg = central(app).registry
    school(reg, 2, school_id="s1")
    school(reg, 1, school_id="s2")
    tokens = {}
    for name, role, schools in (("boss", "admin", []), ("fm", "facility", []), ("it-s1", "admin", ["s1"])):
        reg.add_user(name, f"{name}-password", role, schools=schools)
        tokens[name] = {"Authorization": f"Bearer {reg.issue_token(name)}"}
    app.tokens = tokens  # type: ignore[attr-defined]
    return app


def test_the_api_configures_channels_refuses_bad_input_by_field_and_never_shows_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    app = _web(tmp_path, monkeypatch)
    try:
        client, boss = app.test_client(), app.tokens["boss"]  # type: ignore[attr-defined]
        good = {"name": "钉钉值班群", "kind": "dingtalk", "url": receiver.url("/robot/send?access_token=tok-0123456789"),
                "secret": "SEC-signing-secret-0123", "lang": "zh-CN", "min_severity": "warning"}
        bad = [({"kind": "dingtalk", "url": "javascript:alert(1)"}, "url"), ({"url": "ftp://x/y"}, "url"),
               ({"url": "http://"}, "url"), ({"url": "http://x/" + "a" * 2100}, "url"),
               ({"url": "http://x:99999/"}, "url"), ({"name": "x" * 101}, "name"), ({"name": ""}, "name"),
               ({"kind": "pigeon"}, "kind"), ({"lang": "fr"}, "lang"), ({"min_severity": "meh"}, "min_severity"),
               ({"school": "nowhere"}, "school"), ({"name": "a\x00b"}, "name"),
               ({"kind": "email", "smtp_host": "mail.example", "sender": "a@b.c", "recipients": "not-an-address"},
                "recipients"),
               ({"kind": "email", "smtp_host": "mail.example", "smtp_port": "70000", "sender": "a@b.c",
                 "recipients": "x@y.z"}, "smtp_port"),
               ({"kind": "webhook", "secret": "short"}, "secret"), ({"kind": "webhook", "secret": ""}, "secret")]
        for change, field in bad:
            resp = client.post("/api/notifications/channels", json={**good, **change}, headers=boss)
            assert resp.status_code == 400, (change, resp.get_data(as_text=True))
            assert resp.get_json()["field"] == field and field in resp.get_json()["error"]
        assert client.post("/api/notifications/channels", data="[1]", content_type="application/json",
                           headers=boss).status_code == 400
        # Said in the request's language, the field named as the API spells it (central/notify marks, the web
        # app translates).
        zh = client.post("/api/notifications/channels", json={**good, "url": "ftp://x/y"},
                         headers={**boss, "Accept-Language": "zh-CN"})
        assert zh.get_json() == {"error": "url：必须是带主机名的 http:// 或 https:// 网址", "field": "url"}
        scoped = client.post("/api/notifications/channels", json={**good, "school": "s2"},
                             headers={**app.tokens["it-s1"], "Accept-Language": "zh-CN"})  # type: ignore[attr-defined]
        assert scoped.status_code == 400 and scoped.get_json()["error"] == "school：您的学校中没有学校 's2'"
        assert client.get("/api/notifications/channels", headers=boss).get_json() == []  # nothing stored
        made = client.post("/api/notifications/channels", json=good, headers=boss)
        assert made.status_code == 201
        shown = json.dumps(client.get("/api/notifications/channels", headers=boss).get_json(), ensure_ascii=False)
        assert "tok-0123456789" not in shown and "SEC-signing-secret" not in shown and "…6789" in shown and "SEC" not in shown
        page = client.get("/health/notifications", headers=boss).get_data(as_text=True)
        assert "钉钉值班群" in page and "SEC-signing-secret" not in page and "tok-0123456789" not in page
        cid = made.get_json()["id"]
        # An update without a secret keeps it: the test message is still signed right.
        changed = client.put(f"/api/notifications/channels/{cid}", json={**good, "secret": "", "lang": "en"},
                             headers=boss)
        assert changed.status_code == 200 and changed.get_json()["lang"] == "en"
        sent = client.post(f"/api/notifications/channels/{cid}/test", headers=boss)
        assert sent.status_code == 200 and sent.get_json()["sent"], sent.get_data(as_text=True)
        req = receiver.taken()[-1]
        ts = req["query"]["timestamp"][0]
        assert req["query"]["sign"][0] == base64.b64encode(hmac.new(
            b"SEC-signing-secret-0123", f"{ts}\nSEC-signing-secret-0123".encode(), hashlib.sha256).digest()).decode()
        assert json.loads(req["body"])["markdown"]["title"] == "Test message from campus-iot"
        receiver.fail = 1
        failed = client.post(f"/api/notifications/channels/{cid}/test", headers=boss)
        assert failed.status_code == 200 and not failed.get_json()["sent"] and "HTTP 500" in failed.get_json()["error"]
        # Roles and scope: facility may not see channels; a school's admin not the district's channel.
        assert client.get("/api/notifications/channels", headers=app.tokens["fm"]).status_code == 403  # type: ignore[attr-defined]
        it = app.tokens["it-s1"]  # type: ignore[attr-defined]
        assert client.get("/api/notifications/channels", headers=it).get_json() == []
        assert client.get(f"/api/notifications/channels/{cid}", headers=it).status_code == 404
        assert client.post("/api/notifications/channels", json=good, headers=it).status_code == 403
        assert client.post("/api/notifications/channels", json={**good, "school": "s2"}, headers=it).status_code == 400
        assert client.post("/api/notifications/channels", json={**good, "school": "s1"}, headers=it).status_code == 201
        assert client.delete(f"/api/notifications/channels/{cid}", headers=it).status_code == 404
        assert client.delete(f"/api/notifications/channels/{cid}", headers=boss).status_code == 200
    finally:
        close_app(app)


def test_facility_mutes_and_admin_sees_deliveries_in_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            receiver: Receiver) -> None:
    app = _web(tmp_path, monkeypatch)
    try:
        client, boss, fm = app.test_client(), app.tokens["boss"], app.tokens["fm"]  # type: ignore[attr-defined]
        c = central(app)
        for change, field in (({"until": "tomorrow"}, "until"), ({"until": time.time() - 5}, "until"),
                              ({"until": time.time() + 200 * 86400}, "until"), ({"school": "nope"}, "school"),
                              ({"room": "x" * 65}, "room"), ({"reason": "r" * 201}, "reason")):
            resp = client.post("/api/notifications/mutes", json={"school": "s2", "until": time.time() + 60, **change},
                               headers=fm)
            assert resp.status_code == 400 and resp.get_json()["field"] == field, change
        local = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 8 * 3600 + 3600))  # Shanghai, in an hour
        made = client.post("/api/notifications/mutes", json={"school": "s2", "until": local, "reason": "维修"}, headers=fm)
        assert made.status_code == 201 and abs(made.get_json()["until"] - (time.time() + 3600)) < 120
        assert [m["school"] for m in client.get("/api/notifications/mutes", headers=fm).get_json()] == ["s2"]
        client.post("/api/notifications/channels", json={"name": "hook", "kind": "webhook", "url": receiver.url("/h"),
                                                          "secret": "webhook-secret-0123456789"}, headers=boss)
        receiver.fail = 1
        gws = ["gw-s1-000", "gw-s1-001", "gw-s2-000"]
        t0 = time.time()
        alarms.evaluate(c.registry, None, now=t0, snap=offline(gws, t0))
        c.notifier.window = 0.0  # type: ignore[union-attr]
        c.notifier.round(t0)  # type: ignore[union-attr]
        resp = client.get("/api/notifications/deliveries", headers=boss)
        rows = resp.get_json()
        assert resp.headers["X-Total-Count"] == "1" and rows[0]["status"] == "pending"
        assert rows[0]["attempts"] == 1 and "HTTP 500" in rows[0]["last_error"] and rows[0]["school"] == "s1"
        assert client.get("/api/notifications/deliveries?status=bogus", headers=boss).status_code == 400
        assert client.get("/api/notifications/deliveries", headers=fm).status_code == 403
        page = client.get("/health/notifications", headers=boss).get_data(as_text=True)
        assert "HTTP 500" in page and "新增 2 条告警" in page  # the summary: the channel's language, zh-CN by default
        zh = client.get("/health/notifications", headers={**boss, "Accept-Language": "zh-CN"}).get_data(as_text=True)
        assert all(f"<td>{word}</td>" in zh for word in ("Webhook", "警告", "中文", "待发送")), zh  # kind, severity…
        assert "维修" in client.get("/health/mutes", headers=fm).get_data(as_text=True)
        mute_id = made.get_json()["id"]
        assert client.delete(f"/api/notifications/mutes/{mute_id}", headers=fm).status_code == 200
        assert client.get("/api/notifications/mutes", headers=fm).get_json() == []
    finally:
        close_app(app)


def test_two_web_instances_running_their_alarm_monitors_send_each_message_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    """The notifier runs in the alarm monitor's thread under its lease: two instances on one database
    tell each transition once."""
    from central.alarms import AlarmMonitor
    from central.ledger import Ledger

    url = f"sqlite:///{tmp_path}/central.db"
    regs = [Registry(url), Registry(url)]
    gws = school(regs[0], 4)
    channel(regs[0], kind="webhook", url=receiver.url("/hook"), secret="webhook-secret-0123456789")
    t0 = time.time()
    alarms.evaluate(regs[0], None, now=t0, snap=offline(gws, t0))
    ledgers = [Ledger(r.db) for r in regs]
    monitors = [AlarmMonitor(r, led, 0.05, Notifier(r, window=0.0)) for r, led in zip(regs, ledgers, strict=True)]
    try:
        for m in monitors:
            m.start()
        wait_until(lambda: len(receiver.taken()) >= 2, timeout=20, message="the raised and cleared alarms told")
        wait_until(lambda: sum(m.runs for m in monitors) > 20, timeout=20, message="more rounds")
    finally:
        for m in monitors:
            m.stop()
        for r in regs:
            r.close()
    # Raised (by the test), then cleared by the monitors (the ledger has never heard of these gateways: not
    # installed yet): each told once, with its four rooms.
    docs = [json.loads(r["body"]) for r in receiver.requests]
    assert sorted(d["transition"] for d in docs) == ["cleared", "raised"]
    assert all(len(d["alarms"]) == 4 for d in docs)


# ---------------------------------------------------------------- languages


def test_messages_render_in_english_with_a_24_hour_local_clock() -> None:
    from zoneinfo import ZoneInfo

    from central.notify.messages import AlarmLine, Batch, render

    batch = Batch("acknowledged", "s1", "第一中学", BUILDING, "co2_above", "CO2 too high", "warning",
                  ZoneInfo("Asia/Shanghai"), [AlarmLine(i, f"gw-{i}", "env", str(100 + i), "CO2 2500 ppm is above",
                                                        "2500 ppm", 1_796_031_200.0, 1_796_071_200.0, "fm")
                                              for i in range(40)])
    msg = render(batch, "en")  # English until the web app hands its catalogs over
    assert msg.title == f"40 alarms acknowledged: CO2 too high — {BUILDING}, 第一中学"
    assert "acknowledged by fm at 2026-12-01 04:40" in msg.text  # 20:40 UTC is 04:40 the next day in Shanghai
    assert "and 10 more" in msg.text and msg.text.count("\n- ") == 31




def test_names_are_literal_text_in_the_robots_markdown_and_as_typed_in_plain_text() -> None:
    from zoneinfo import ZoneInfo

    from central.notify.messages import AlarmLine, Batch, render, render_test

    school, room = "[点此领奖](http://evil.example)", '<font color="warning">*101*</font>'
    batch = Batch("raised", "s1", school, "A_楼", "co2_above", "CO2 too high", "warning", ZoneInfo("Asia/Shanghai"),
                  [AlarmLine(1, "gw-1", "env`x`", room, "CO2 2500 ppm is above", "2500 ppm", 1_796_031_200.0)])
    msg = render(batch, "en")
    assert school in msg.title and room in msg.text  # mail and text robots: the names as typed
    assert "[点此领奖](" not in msg.markdown and "<font" not in msg.markdown and " *101*" not in msg.markdown
    assert r"\[点此领奖\](http://evil.example)" in msg.markdown and r"A\_楼" in msg.markdown
    assert r'&lt;font color="warning">\*101\*&lt;/font>' in msg.markdown and r"env\`x\`" in msg.markdown
    assert msg.markdown.startswith("### 1 alarm raised")  # the markup of our own is left alone
    test = render_test("en", "*组*[x](y)")
    assert "*组*[x](y)" in test.text and r"\*组\*\[x\](y)" in test.markdown
def test_messages_render_in_chinese_for_a_zh_cn_channel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The web app hands the notifier its catalogs: a zh-CN channel's message is Chinese throughout, the
    alarm's own message (a LazyText, as central/alarms.py stores it) included; an English one stays English."""
    from zoneinfo import ZoneInfo

    from campus.i18n import lazy_gettext
    from central.notify.messages import AlarmLine, Batch, render, render_test

    app = _web(tmp_path, monkeypatch)
    try:
        translations = central(app).notifier.translations  # type: ignore[union-attr]
        why = lazy_gettext("Gateway offline for more than %(minutes)s min (%(ago)s)", minutes="10",
                           ago=lazy_gettext("last seen %(ago)s ago", ago="45 min"))
        batch = Batch("raised", "s1", "第一中学", BUILDING, "offline_minutes", "Offline too long", "critical",
                      ZoneInfo("Asia/Shanghai"), [AlarmLine(i, f"gw-{i}", "", str(100 + i), why, "45 min",
                                                            1_796_031_200.0) for i in range(1, 3)])
        msg = render(batch, "zh-CN", translations)
        assert msg.title == f"新增 2 条告警：离线时间过长 — {BUILDING}，第一中学", msg.title
        assert "2026-11-30 17:33" in msg.text and "严重" in msg.text and "网关离线超过 10 分钟" in msg.text
        assert not any(word in msg.text for word in ("raised", "since", "Severity", "Sent by", "Gateway", "last seen"))
        one = render(Batch(**{**batch.__dict__, "alarms": batch.alarms[:1]}), "zh-CN", translations)
        assert one.title == f"新增 1 条告警：离线时间过长 — {BUILDING}，第一中学", one.title
        en = render(batch, "en", translations)
        assert en.title == f"2 alarms raised: Offline too long — {BUILDING}, 第一中学"
        assert render(Batch(**{**batch.__dict__, "alarms": batch.alarms[:1]}), "en").title.startswith(
            "1 alarm raised: Offline too long")
        assert "Gateway offline for more than 10 min (last seen 45 min ago)" in en.text
        test = render_test("zh-CN", "钉钉值班群", translations)
        assert "钉钉值班群" in test.text and "campus-iot" in test.title and "Test message" not in test.title
    finally:
        close_app(app)


def test_the_pages_add_a_channel_refuse_a_bad_one_by_field_and_mute_a_room(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    app = _web(tmp_path, monkeypatch)
    try:
        client, boss, fm = app.test_client(), app.tokens["boss"], app.tokens["fm"]  # type: ignore[attr-defined]
        form = {"name": "IT mail", "kind": "email", "smtp_host": "mail.school.example", "smtp_port": "587",
                "security": "starttls", "sender": "campus@school.example", "recipients": "a@b.example\nc@d.example",
                "lang": "en", "min_severity": "warning", "enabled": "on", "school": "s1"}
        bad = client.post("/health/notifications/channels", data={**form, "sender": "nobody"}, headers=boss)
        assert bad.status_code == 400 and "sender" in bad.get_data(as_text=True)
        assert chan.list_channels(central(app).registry) == []
        good = client.post("/health/notifications/channels", data=form, headers=boss)
        assert good.status_code == 302
        assert [c["settings"]["recipients"] for c in chan.list_channels(central(app).registry)] == [
            ["a@b.example", "c@d.example"]]
        assert client.get("/health/notifications", headers=fm).status_code == 403
        muted = client.post("/health/mutes", data={"school": "s1", "room": "101", "until": "2099-01-01T08:00"},
                            headers=fm)
        assert muted.status_code == 400 and "until" in muted.get_data(as_text=True)  # more than 90 days ahead
        soon = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 8 * 3600 + 7200))
        assert client.post("/health/mutes", data={"school": "s1", "room": "101", "until": soon},
                           headers=fm).status_code == 302
        assert [(m["school"], m["room"]) for m in chan.list_mutes(central(app).registry)] == [("s1", "101")]
    finally:
        close_app(app)


def test_the_web_apps_alarm_monitor_sends_through_central_with_the_window_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    """The wiring a site runs: `create_app` starts Central's alarm monitor, whose notifier (window from
    CAMPUS_NOTIFY_WINDOW) tells what the monitor and people do."""
    monkeypatch.setenv("CAMPUS_NOTIFY_WINDOW", "0")
    monkeypatch.setenv("CAMPUS_SCHEDULE_INTERVAL", "0")
    app = web_app(central_db(tmp_path, lambda ledger, points: None), alarm_interval=0.1)
    try:
        reg = central(app).registry
        assert central(app).notifier.window == 0  # type: ignore[union-attr]
        gws = school(reg, 2)
        channel(reg, kind="webhook", lang="en", url=receiver.url("/hook"), secret="webhook-secret-0123456789")
        t0 = time.time()
        alarms.evaluate(reg, None, now=t0, snap=offline(gws, t0))
        # The monitor clears them (the ledger never heard of these gateways: not installed yet).
        wait_until(lambda: len(receiver.taken()) >= 2, timeout=30, message="raised and cleared told")
        docs = [json.loads(r["body"]) for r in receiver.taken()]
        assert [d["transition"] for d in docs] == ["raised", "cleared"] and docs[0]["title"].startswith("2 alarms")
    finally:
        close_app(app)


@sqlite_only
def test_a_raise_and_its_clearing_in_one_window_are_told_in_that_order(reg: Registry, receiver: Receiver) -> None:
    gws = school(reg, 2)
    channel(reg, kind="webhook", url=receiver.url("/hook"), secret="webhook-secret-0123456789")
    t0 = time.time()
    alarms.evaluate(reg, None, now=t0, snap=offline(gws, t0))
    alarms.evaluate(reg, None, now=t0 + 1, snap=offline(gws, t0 + 1, online=True))
    Notifier(reg, window=5.0).round(t0 + 6)  # both groups ready in one round
    assert [json.loads(r["body"])["transition"] for r in receiver.taken()] == ["raised", "cleared"]


def test_a_school_with_its_own_zone_is_told_and_muted_in_it(reg: Registry, receiver: Receiver) -> None:
    """s2's timetable is in Asia/Urumqi (UTC+6): its message says its own clock, its mute's `until` is read on
    it; s1 (no timetable) keeps the site's Asia/Shanghai (UTC+8)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from central import timetables as tts

    s1, s2 = school(reg, 1, school_id="s1"), school(reg, 1, school_id="s2")
    tts.save(reg, tts.Timetable("s2", "Asia/Urumqi"))
    channel(reg, kind="dingtalk", lang="en", msgtype="text", url=receiver.url("/robot/text"))
    t0 = 1_796_031_200.0  # 2026-11-30 09:33:20 UTC: 17:33 in Shanghai, 15:33 in Urumqi
    alarms.evaluate(reg, None, now=t0, snap=offline(s1 + s2, t0))
    Notifier(reg, window=0.0).round(t0 + 1)
    texts = {("s2" if ", s2" in t.split("\n")[0] else "s1"): t
             for t in (json.loads(r["body"])["text"]["content"] for r in receiver.taken())}
    assert "since 2026-11-30 17:33" in texts["s1"] and "since 2026-11-30 15:33" in texts["s2"], texts
    shanghai = ZoneInfo("Asia/Shanghai")
    mute = chan.add_mute(reg, {"school": "s2", "until": "2026-11-30 18:00"}, "fm", shanghai, now=t0)
    assert mute["until"] == datetime(2026, 11, 30, 18, tzinfo=ZoneInfo("Asia/Urumqi")).timestamp()
    mute = chan.add_mute(reg, {"school": "s1", "until": "2026-11-30 18:00"}, "fm", shanghai, now=t0)
    assert mute["until"] == datetime(2026, 11, 30, 18, tzinfo=shanghai).timestamp()
