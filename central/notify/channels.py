"""Notification channels and mutes: checked on the way in, masked on the way out.

A channel is configured by an admin (for one school or, district-wide, for every school); a mute by a
facility manager or an admin. Everything typed is checked here, once, for the form and the JSON API
alike: a wrong value is one `ChannelError` naming the field (a 400), and nothing is written.

Secrets (an SMTP password, DingTalk's signing secret, the generic webhook's HMAC key) and the
access tokens inside robot URLs (WeCom's `key=`, DingTalk's `access_token=`) stay on the server:
`as_dict` shows that a secret is set, and a token's last four characters. An update that leaves the secret empty keeps the
stored one, so editing a channel never needs the secret again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from sqlalchemy import select

from campus.i18n import LazyText, lazy_gettext
from central.notify.tables import NotifyChannel, NotifyDelivery, NotifyMute
from central.registry import Registry, Room, School
from central.timetables import school_zone

KINDS = ("email", "wecom", "dingtalk", "webhook")
SEVERITIES = ("info", "warning", "critical")
LANGS = ("zh-CN", "en")
MSGTYPES = ("markdown", "text")
SMTP_SECURITY = ("starttls", "tls", "none")
# Which alarm rule kinds (central/alarms.py RULE_KINDS) are how serious: a channel takes its severity and up.
KIND_SEVERITY = {"offline_minutes": "critical", "projector_error": "warning", "co2_above": "warning",
                 "temperature_range": "warning", "lamp_hours_above": "info"}
NAME_MAX, URL_MAX, HOST_MAX, ADDRESS_MAX, SECRET_MAX, REASON_MAX = 100, 2000, 253, 254, 500, 200
RECIPIENTS_MAX = 50
MIN_WEBHOOK_SECRET = 16
MUTE_MAX_S = 90 * 24 * 3600
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\]")
_ADDRESS = re.compile(r"[^@\s<>,;\"]{1,64}@[A-Za-z0-9.-]{1,253}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def severity_of(kind: str) -> str:
    return KIND_SEVERITY.get(kind, "warning")


def severity_at_least(kind: str, floor: str) -> bool:
    return SEVERITIES.index(severity_of(kind)) >= SEVERITIES.index(floor if floor in SEVERITIES else "warning")


class ChannelError(ValueError):
    """A refused value: `field` names it (as the API spells it), the message says what is wanted (shown to
    people, one line, in their language: a LazyText, campus/i18n.py; str() of the error is English)."""

    def __init__(self, field: str, message: LazyText) -> None:
        super().__init__(lazy_gettext("%(field)s: %(reason)s", field=field, reason=message))
        self.field = field


# ---------------------------------------------------------------- checking what was typed


def _text(raw: Mapping[str, Any], field: str, most: int, required: bool = True, default: str = "") -> str:
    value = raw.get(field, default)
    if value is None:
        value = default
    if not isinstance(value, str):
        raise ChannelError(field, lazy_gettext("must be text"))
    value = value.strip()
    if len(value) > most:
        raise ChannelError(field, lazy_gettext("at most %(most)d characters (got %(got)d)", most=most, got=len(value)))
    if _CONTROL.search(value):
        raise ChannelError(field, lazy_gettext("must not contain control characters"))
    if required and not value:
        raise ChannelError(field, lazy_gettext("is required"))
    return value


def _choice(raw: Mapping[str, Any], field: str, choices: tuple[str, ...], default: str) -> str:
    value = raw.get(field) or default
    if value not in choices:
        raise ChannelError(field, lazy_gettext("must be one of %(choices)s", choices=", ".join(choices)))
    return str(value)


def _flag(raw: Mapping[str, Any], field: str, default: bool) -> bool:
    value = raw.get(field, default)
    if isinstance(value, bool):
        return value
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("", "off", "false", "0", "no", None):
        return False
    raise ChannelError(field, lazy_gettext("must be true or false"))


def check_url(raw: Mapping[str, Any], field: str = "url") -> str:
    """An http(s) URL with a host, at most URL_MAX characters, no spaces or control characters."""
    url = _text(raw, field, URL_MAX)
    if re.search(r"\s", url):
        raise ChannelError(field, lazy_gettext("must not contain spaces"))
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ChannelError(field, lazy_gettext("is not a valid URL")) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ChannelError(field, lazy_gettext("must be an http:// or https:// URL with a host"))
    return url


def _port(raw: Mapping[str, Any], field: str, default: int) -> int:
    value = raw.get(field, default)
    if value in ("", None):
        value = default
    if isinstance(value, bool):
        raise ChannelError(field, lazy_gettext("must be a port number (1-65535)"))
    try:
        port = int(str(value).strip())
    except ValueError:
        raise ChannelError(field, lazy_gettext("must be a port number (1-65535)")) from None
    if not 1 <= port <= 65535:
        raise ChannelError(field, lazy_gettext("must be a port number (1-65535)"))
    return port


def _recipients(raw: Mapping[str, Any]) -> list[str]:
    value = raw.get("recipients", "")
    if isinstance(value, str):
        items = [x.strip() for x in re.split(r"[,;\n]", value) if x.strip()]
    elif isinstance(value, list) and all(isinstance(x, str) for x in value):
        items = [x.strip() for x in value if x.strip()]
    else:
        raise ChannelError("recipients", lazy_gettext("must be a list of e-mail addresses"))
    if not items:
        raise ChannelError("recipients", lazy_gettext("at least one e-mail address is required"))
    if len(items) > RECIPIENTS_MAX:
        raise ChannelError("recipients", lazy_gettext("at most %(num)d addresses", num=RECIPIENTS_MAX))
    for item in items:
        if len(item) > ADDRESS_MAX or not _ADDRESS.fullmatch(item):
            raise ChannelError("recipients", lazy_gettext("%(value)r is not an e-mail address", value=item[:60]))
    return list(dict.fromkeys(items))


def _address(raw: Mapping[str, Any], field: str) -> str:
    value = _text(raw, field, ADDRESS_MAX)
    if not _ADDRESS.fullmatch(value):
        raise ChannelError(field, lazy_gettext("%(value)r is not an e-mail address", value=value[:60]))
    return value


@dataclass(frozen=True)
class ChannelInput:
    name: str
    kind: str
    school: str | None
    min_severity: str
    lang: str
    enabled: bool
    settings: dict[str, Any]
    secret: str | None  # None: keep the stored one


def parse_channel(registry: Registry, raw: Mapping[str, Any], *, kind: str | None = None) -> ChannelInput:
    """Check a channel as typed (a form or JSON object); `kind` fixed for an update. ChannelError if wrong."""
    if not isinstance(raw, Mapping):
        raise ChannelError("body", lazy_gettext("must be a JSON object"))
    name = _text(raw, "name", NAME_MAX)
    kind = kind or _choice(raw, "kind", KINDS, "")
    school = _text(raw, "school", 64, required=False) or None
    if school is not None and not school_exists(registry, school):
        raise ChannelError("school", lazy_gettext("no school %(school)r", school=school[:64]))
    severity = _choice(raw, "min_severity", SEVERITIES, "warning")
    lang = _choice(raw, "lang", LANGS, "zh-CN")
    enabled = _flag(raw, "enabled", True)
    secret = _text(raw, "secret", SECRET_MAX, required=False) or None
    if kind == "email":
        host = _text(raw, "smtp_host", HOST_MAX)
        if not _HOST.fullmatch(host):
            raise ChannelError("smtp_host", lazy_gettext("must be a host name or an IP address"))
        security = _choice(raw, "security", SMTP_SECURITY, "starttls")
        settings = {"smtp_host": host, "smtp_port": _port(raw, "smtp_port", 465 if security == "tls" else 587),
                    "security": security, "username": _text(raw, "username", ADDRESS_MAX, required=False),
                    "sender": _address(raw, "sender"), "recipients": _recipients(raw)}
    elif kind in ("wecom", "dingtalk"):
        settings = {"url": check_url(raw), "msgtype": _choice(raw, "msgtype", MSGTYPES, "markdown")}
    else:
        settings = {"url": check_url(raw)}
        if secret is not None and len(secret) < MIN_WEBHOOK_SECRET:
            raise ChannelError("secret", lazy_gettext("at least %(num)d characters", num=MIN_WEBHOOK_SECRET))
    return ChannelInput(name, kind, school, severity, lang, enabled, settings, secret)


def school_exists(registry: Registry, school: str) -> bool:
    with registry.session() as s:
        return s.get(School, school) is not None


# ---------------------------------------------------------------- channels


def mask(secret: str) -> str:
    """What is shown of a stored secret: that there is one (a password shows nothing of itself)."""
    return "••••" if secret else ""


def _tail(token: str) -> str:
    """A robot's access token: its last four characters, to tell two robots apart, if it is long enough."""
    return "…" + token[-4:] if len(token) >= 12 else "••••"


def masked_url(url: str) -> str:
    """A robot URL with its query values (WeCom's key, DingTalk's access_token) masked."""
    parts = urlsplit(url)
    query = "&".join(f"{quote_plus(k)}={_tail(v)}" for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def as_dict(ch: NotifyChannel) -> dict[str, Any]:
    """A channel as pages and the API show it: nothing secret in full."""
    settings = dict(ch.settings or {})
    if "url" in settings:
        settings["url"] = masked_url(settings["url"])
    return {"id": ch.id, "name": ch.name, "kind": ch.kind, "school": ch.school_id or "",
            "min_severity": ch.min_severity, "lang": ch.lang, "enabled": ch.enabled, "settings": settings,
            "secret": mask(ch.secret), "created": ch.created, "updated": ch.updated}


def _in(schools: tuple[str, ...] | None, school: str | None) -> bool:
    """Whether a channel of `school` (None: district-wide) is within `schools` (None: everything)."""
    return schools is None or (school is not None and school in schools)


def list_channels(registry: Registry, schools: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Every channel (of `schools` only, for an account limited to them: district-wide ones are not theirs)."""
    with registry.session() as s:
        rows = s.scalars(select(NotifyChannel).order_by(NotifyChannel.id)).all()
        return [as_dict(r) for r in rows if _in(schools, r.school_id)]


def get_channel(registry: Registry, channel_id: int, schools: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    with registry.session() as s:
        row = s.get(NotifyChannel, channel_id)
        return as_dict(row) if row is not None and _in(schools, row.school_id) else None


def save_channel(registry: Registry, data: ChannelInput, channel_id: int | None = None,
                 now: float | None = None) -> dict[str, Any]:
    """Create (no `channel_id`) or update a channel. A new secret-bearing channel without a secret is refused
    where the channel needs one (a generic webhook is always signed)."""
    now = time.time() if now is None else now
    with registry.session() as s:
        row = s.get(NotifyChannel, channel_id) if channel_id is not None else None
        if channel_id is not None and row is None:
            raise LookupError(f"no channel {channel_id}")
        if row is None:
            if data.kind == "webhook" and not data.secret:
                raise ChannelError("secret", lazy_gettext("a webhook is signed: give a secret of at least %(num)d characters",
                                               num=MIN_WEBHOOK_SECRET))
            row = NotifyChannel(kind=data.kind, created=now, secret="")
            s.add(row)
        row.name, row.school_id, row.min_severity = data.name, data.school, data.min_severity
        row.lang, row.enabled, row.settings, row.updated = data.lang, data.enabled, data.settings, now
        if data.secret is not None:
            row.secret = data.secret
        s.flush()
        return as_dict(row)


def channel_row(registry: Registry, channel_id: int) -> NotifyChannel | None:
    """The stored channel with its secret (for sending only; never shown)."""
    with registry.session() as s:
        row = s.get(NotifyChannel, channel_id)
        if row is not None:
            s.expunge(row)
        return row


def delete_channel(registry: Registry, channel_id: int) -> bool:
    """Remove a channel and its deliveries (their history goes with it)."""
    with registry.session() as s:
        row = s.get(NotifyChannel, channel_id)
        if row is None:
            return False
        for d in s.scalars(select(NotifyDelivery).where(NotifyDelivery.channel_id == channel_id)):
            s.delete(d)
        s.flush()
        s.delete(row)
        return True


# ---------------------------------------------------------------- mutes


def parse_until(raw: object, zone: ZoneInfo, now: float) -> float:
    """When a mute ends: unix seconds, or a local date and time (`2026-12-05T18:00`, `2026-12-05 18:00`)."""
    if isinstance(raw, bool) or raw in (None, ""):
        raise ChannelError("until", lazy_gettext("is required: when the maintenance ends"))
    if isinstance(raw, (int, float)):
        until = float(raw)
    elif isinstance(raw, str) and len(raw) <= 40:
        try:
            until = datetime.fromisoformat(raw.strip()).replace(tzinfo=zone).timestamp()
        except ValueError:
            raise ChannelError("until", lazy_gettext("must be a date and time such as 2026-12-05 18:00")) from None
    else:
        raise ChannelError("until", lazy_gettext("must be a date and time such as 2026-12-05 18:00"))
    if not now < until <= now + MUTE_MAX_S:
        raise ChannelError("until", lazy_gettext("must be in the future, at most 90 days ahead"))
    return until


def add_mute(registry: Registry, raw: Mapping[str, Any], by: str, zone: ZoneInfo,
             schools: tuple[str, ...] | None = None, now: float | None = None) -> dict[str, Any]:
    """Mute a school, or one room of it (`room`: its name), until a time (a local one in the school's zone:
    `zone`, the site's, for a school without its own). ChannelError names a bad field; a school outside
    `schools` is one that does not exist."""
    now = time.time() if now is None else now
    if not isinstance(raw, Mapping):
        raise ChannelError("body", lazy_gettext("must be a JSON object"))
    school = _text(raw, "school", 64)
    room_name = _text(raw, "room", 64, required=False)
    known = schools is None or school in schools  # another's zone would tell that school exists
    until = parse_until(raw.get("until"), school_zone(registry, zone, school=school) if known else zone, now)
    reason = _text(raw, "reason", REASON_MAX, required=False)
    if (schools is not None and school not in schools) or not school_exists(registry, school):
        raise ChannelError("school", lazy_gettext("no school %(school)r", school=school[:64]))
    with registry.session() as s:
        room_id = None
        if room_name:
            room_id = s.scalar(select(Room.id).where(Room.school_id == school, Room.name == room_name))
            if room_id is None:
                raise ChannelError("room", lazy_gettext("no room %(room)r in %(school)s", room=room_name, school=school))
        row = NotifyMute(school_id=school, room_id=room_id, until=until, reason=reason, created_by=by, created=now)
        s.add(row)
        s.flush()
        return _mute_dict(row, room_name)


def _mute_dict(m: NotifyMute, room: str) -> dict[str, Any]:
    return {"id": m.id, "school": m.school_id, "room": room, "until": m.until, "reason": m.reason,
            "by": m.created_by, "created": m.created}


def list_mutes(registry: Registry, schools: tuple[str, ...] | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """The mutes still in force, soonest to end first."""
    now = time.time() if now is None else now
    with registry.session() as s:
        q = (select(NotifyMute, Room.name).outerjoin(Room, NotifyMute.room_id == Room.id)
             .where(NotifyMute.until > now).order_by(NotifyMute.until, NotifyMute.id))
        if schools is not None:
            q = q.where(NotifyMute.school_id.in_(schools))
        return [_mute_dict(m, room or "") for m, room in s.execute(q)]


def end_mute(registry: Registry, mute_id: int, schools: tuple[str, ...] | None = None,
             now: float | None = None) -> bool:
    """End a mute now (its row stays, with `until` now); False if there is none (in `schools`)."""
    now = time.time() if now is None else now
    with registry.session() as s:
        row = s.get(NotifyMute, mute_id)
        if row is None or (schools is not None and row.school_id not in schools):
            return False
        row.until = min(row.until, now)
        return True
