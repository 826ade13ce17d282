"""Sending one message through one channel: SMTP, a WeCom or DingTalk group robot, a signed webhook.

Each sender either returns (the receiver took the message) or raises `SendError` with one line a person
can act on ("SMTP 535 authentication failed", "DingTalk errcode 310000: sign not match"), which the
outbox stores as the delivery's last error and retries with backoff.

Wire formats (as their vendors document them):

* WeCom group robot: POST JSON to the robot's URL (`.../cgi-bin/webhook/send?key=...`):
  `{"msgtype": "markdown", "markdown": {"content": ...}}` or `{"msgtype": "text", "text": {"content": ...}}`;
  the answer is `{"errcode": 0, "errmsg": "ok"}`. Markdown content is at most 4096 bytes, text 2048.
* DingTalk robot with signing ("加签"): the URL gets `&timestamp=<ms>&sign=<s>` where
  s = urlencode(base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}"))); the body is
  `{"msgtype": "markdown", "markdown": {"title": ..., "text": ...}}` or `{"msgtype": "text", "text":
  {"content": ...}}`; the answer `{"errcode": 0, ...}`.
* Generic webhook: POST the JSON document with `X-Campus-Timestamp: <unix seconds>` and
  `X-Campus-Signature: sha256=<hex HMAC-SHA256(key=secret, msg=timestamp + "." + body)>`: the receiver
  recomputes it over the raw body and refuses an old timestamp (a replay).
* E-mail: SMTP with STARTTLS (or implicit TLS, or none on a trusted relay), LOGIN when a user name is set,
  a plain-text UTF-8 message to every recipient.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import quote_plus, urlsplit

import requests

from central.notify.messages import Message
from central.notify.tables import NotifyChannel

TIMEOUT_S = 10.0
WECOM_MARKDOWN_MAX, WECOM_TEXT_MAX = 4096, 2048
USER_AGENT = "campus-iot-notify/1"


class SendError(Exception):
    """The receiver did not take the message; the text says why, in one line."""


def _fit(text: str, most_bytes: int) -> str:
    data = text.encode()
    if len(data) <= most_bytes:
        return text
    return data[: most_bytes - 3].decode(errors="ignore") + "…"


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's `sign` query value (already URL-encoded) for `timestamp_ms`."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest))


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The generic webhook's `X-Campus-Signature` value."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _scrub(text: str, url: str) -> str:
    """An error's text without the URL's path and query, which hold a robot's token (WeCom's key,
    DingTalk's access_token and sign): the last error is shown to admins, the token never is."""
    parts = urlsplit(url)
    for secret in sorted(filter(None, (parts.path + ("?" + parts.query if parts.query else ""), parts.query,
                                       parts.path if len(parts.path) > 1 else "")), key=len, reverse=True):
        text = text.replace(secret, "/…")
    return text


def _post(url: str, body: bytes, headers: dict[str, str], what: str) -> requests.Response:
    try:
        resp = requests.post(url, data=body, headers={"Content-Type": "application/json; charset=utf-8",
                                                      "User-Agent": USER_AGENT, **headers},
                             timeout=TIMEOUT_S, allow_redirects=False)
    except requests.RequestException as exc:
        raise SendError(f"{what}: {type(exc).__name__}: {_scrub(str(exc), url)[:200]}") from None
    if not 200 <= resp.status_code < 300:
        raise SendError(f"{what}: HTTP {resp.status_code} {resp.text[:200]!r}")
    return resp


def _robot_answer(resp: requests.Response, what: str) -> None:
    try:
        answer = resp.json()
    except ValueError:
        raise SendError(f"{what}: the answer is not JSON: {resp.text[:200]!r}") from None
    if not isinstance(answer, dict) or answer.get("errcode") != 0:
        code = answer.get("errcode") if isinstance(answer, dict) else None
        msg = answer.get("errmsg") if isinstance(answer, dict) else answer
        raise SendError(f"{what}: errcode {code}: {str(msg)[:200]}")


def send_wecom(ch: NotifyChannel, msg: Message) -> None:
    if ch.settings.get("msgtype") == "text":
        doc: dict[str, Any] = {"msgtype": "text", "text": {"content": _fit(msg.text, WECOM_TEXT_MAX)}}
    else:
        doc = {"msgtype": "markdown", "markdown": {"content": _fit(msg.markdown, WECOM_MARKDOWN_MAX)}}
    resp = _post(ch.settings["url"], json.dumps(doc, ensure_ascii=False).encode(), {}, "WeCom")
    _robot_answer(resp, "WeCom")


def send_dingtalk(ch: NotifyChannel, msg: Message, now: float | None = None) -> None:
    url = ch.settings["url"]
    if ch.secret:
        ts = int((time.time() if now is None else now) * 1000)
        url += ("&" if "?" in url else "?") + f"timestamp={ts}&sign={dingtalk_sign(ch.secret, ts)}"
    if ch.settings.get("msgtype") == "text":
        doc: dict[str, Any] = {"msgtype": "text", "text": {"content": msg.text}}
    else:
        doc = {"msgtype": "markdown", "markdown": {"title": msg.title, "text": msg.markdown}}
    resp = _post(url, json.dumps(doc, ensure_ascii=False).encode(), {}, "DingTalk")
    _robot_answer(resp, "DingTalk")


def send_webhook(ch: NotifyChannel, msg: Message, document: dict[str, Any], now: float | None = None) -> None:
    body = json.dumps({**document, "title": msg.title, "text": msg.text, "lang": msg.lang},
                      ensure_ascii=False, sort_keys=True).encode()
    ts = str(int(time.time() if now is None else now))
    _post(ch.settings["url"], body, {"X-Campus-Timestamp": ts,
                                     "X-Campus-Signature": webhook_signature(ch.secret, ts, body)}, "webhook")


def send_email(ch: NotifyChannel, msg: Message, ssl_context: ssl.SSLContext | None = None) -> None:
    s = ch.settings
    mail = EmailMessage()
    mail["Subject"] = msg.title
    mail["From"] = s["sender"]
    mail["To"] = ", ".join(s["recipients"])
    mail["Date"] = formatdate(localtime=False)
    mail["Message-ID"] = make_msgid(domain="campus-iot")
    mail["Content-Language"] = msg.lang
    mail.set_content(msg.text, charset="utf-8")
    context = ssl_context or ssl.create_default_context()
    host, port, security = s["smtp_host"], int(s["smtp_port"]), s.get("security", "starttls")
    try:
        if security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=TIMEOUT_S, context=context)
        else:
            client = smtplib.SMTP(host, port, timeout=TIMEOUT_S)
        with client:
            client.ehlo()
            if security == "starttls":
                client.starttls(context=context)
                client.ehlo()
            if s.get("username"):
                client.login(s["username"], ch.secret)
            client.send_message(mail)
    except smtplib.SMTPResponseException as exc:
        raise SendError(f"SMTP {exc.smtp_code} {exc.smtp_error.decode(errors='replace')[:200]}") from None
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise SendError(f"SMTP {host}:{port}: {type(exc).__name__}: {str(exc)[:200]}") from None


def send(ch: NotifyChannel, msg: Message, document: dict[str, Any], ssl_context: ssl.SSLContext | None = None) -> None:
    """Send `msg` (and, for a webhook, `document`) through `ch`; SendError if it was not taken."""
    if ch.kind == "email":
        send_email(ch, msg, ssl_context)
    elif ch.kind == "wecom":
        send_wecom(ch, msg)
    elif ch.kind == "dingtalk":
        send_dingtalk(ch, msg)
    elif ch.kind == "webhook":
        send_webhook(ch, msg, document)
    else:
        raise SendError(f"unknown channel kind {ch.kind!r}")
