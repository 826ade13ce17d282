"""What a notification says, in the channel's language (zh-CN or en), at the school's local time.

One `Batch` (transitions of one kind, in one building of one school) becomes one `Message`: a title
("30 alarms raised: Offline too long — 教学楼A, s1"), a plain text for e-mail and robots' text type,
and Markdown for the robots' markdown type. Every string is marked for Flask-Babel and rendered under
`force_locale(lang)` in an app context: the web app's once it is attached (`Locale.attach`: its
catalogs and Babel settings), else a small app of our own (English until a catalog is configured).
Times are 24-hour `YYYY-MM-DD HH:MM` in the school's time zone (Asia/Shanghai by default).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from flask import Flask
from flask_babel import Babel, force_locale, gettext, lazy_gettext, ngettext

# Rule labels as they appear in messages (the same words as central/alarms.py RULE_KINDS, marked here
# for the catalog; a kind not listed shows its label from there).
KIND_LABELS = {
    "offline_minutes": lazy_gettext("Offline too long"),
    "co2_above": lazy_gettext("CO2 too high"),
    "temperature_range": lazy_gettext("Temperature out of range"),
    "lamp_hours_above": lazy_gettext("Projector lamp worn"),
    "projector_error": lazy_gettext("Projector error"),
}
SEVERITY_LABELS = {"info": lazy_gettext("info"), "warning": lazy_gettext("warning"),
                   "critical": lazy_gettext("critical")}
LINES_MAX = 30  # alarms listed in one message; the rest are counted ("and 170 more")


@dataclass(frozen=True)
class AlarmLine:
    """One alarm of a batch, as the message needs it."""
    id: int
    gateway: str
    device: str
    room: str
    message: str
    value: str
    raised_at: float
    acked_at: float | None = None
    acked_by: str = ""
    cleared_at: float | None = None


@dataclass
class Batch:
    transition: str          # raised, acknowledged, cleared
    school: str
    school_name: str
    building: str
    kind: str
    label: str               # the rule's English label (RULE_KINDS), for a kind without a marked one
    severity: str
    zone: ZoneInfo
    alarms: list[AlarmLine] = field(default_factory=list)


@dataclass(frozen=True)
class Message:
    lang: str
    title: str
    text: str
    markdown: str


def local_time(ts: float | None, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, zone).strftime("%Y-%m-%d %H:%M") if ts else ""


class Locale:
    """The app context and locale messages are rendered in (see the module docstring)."""

    def __init__(self) -> None:
        self.app: Flask | None = None
        self._own: Flask | None = None
        self._lock = threading.Lock()

    def attach(self, app: Flask) -> None:
        """Render in `app` (the web app, with its Babel and catalogs) from now on."""
        self.app = app

    def _fallback(self) -> Flask:
        with self._lock:
            if self._own is None:
                own = Flask("central.notify")
                Babel(own)
                self._own = own
            return self._own

    @contextmanager
    def __call__(self, lang: str) -> Iterator[None]:
        app = self.app if self.app is not None and "babel" in self.app.extensions else self._fallback()
        with app.app_context(), force_locale(lang.replace("-", "_")):
            yield


def _place(batch: Batch) -> str:
    school = batch.school_name or batch.school
    if batch.building:
        return gettext("%(building)s, %(school)s", building=batch.building, school=school)
    return school


def _title(batch: Batch, label: str) -> str:
    n, place = len(batch.alarms), _place(batch)
    if batch.transition == "raised":
        return ngettext("Alarm raised: %(label)s — %(place)s", "%(num)d alarms raised: %(label)s — %(place)s", n,
                        label=label, place=place)
    if batch.transition == "acknowledged":
        return ngettext("Alarm acknowledged: %(label)s — %(place)s",
                        "%(num)d alarms acknowledged: %(label)s — %(place)s", n, label=label, place=place)
    return ngettext("Alarm cleared: %(label)s — %(place)s", "%(num)d alarms cleared: %(label)s — %(place)s", n,
                    label=label, place=place)


def _line(batch: Batch, a: AlarmLine) -> str:
    where = f"{a.room or a.gateway}" + (f" / {a.device}" if a.device else "")
    what = a.value or a.message
    if batch.transition == "acknowledged":
        return gettext("%(where)s: %(what)s, acknowledged by %(who)s at %(time)s", where=where, what=what,
                       who=a.acked_by or "?", time=local_time(a.acked_at, batch.zone))
    if batch.transition == "cleared":
        return gettext("%(where)s: %(what)s, cleared at %(time)s", where=where, what=what,
                       time=local_time(a.cleared_at, batch.zone))
    return gettext("%(where)s: %(what)s, since %(time)s", where=where, what=what,
                   time=local_time(a.raised_at, batch.zone))


def render(batch: Batch, lang: str, locale: Locale) -> Message:
    """The message of `batch` in `lang` (zh-CN or en)."""
    with locale(lang):
        label = str(KIND_LABELS[batch.kind]) if batch.kind in KIND_LABELS else gettext(batch.label)
        title = _title(batch, label)
        shown = sorted(batch.alarms, key=lambda a: (a.room or a.gateway, a.device))[:LINES_MAX]
        lines = [_line(batch, a) for a in shown]
        more = len(batch.alarms) - len(shown)
        if more > 0:
            lines.append(ngettext("and %(num)d more", "and %(num)d more", more))
        severity = gettext("Severity: %(severity)s", severity=str(SEVERITY_LABELS.get(batch.severity,
                                                                                       batch.severity)))
        footer = gettext("Sent by campus-iot; see the alarms page for details.")
    text = "\n".join([title, severity, "", *(f"- {line}" for line in lines), "", footer])
    markdown = "\n".join([f"### {title}", f"**{severity}**", "", *(f"- {line}" for line in lines), "",
                          f"> {footer}"])
    return Message(lang, title, text, markdown)


def render_test(lang: str, channel_name: str, locale: Locale) -> Message:
    """The "send a test message" text: says which channel it came through."""
    with locale(lang):
        title = gettext("Test message from campus-iot")
        text = gettext("This is a test of the notification channel %(name)s. If you can read it, alarms will "
                       "reach you here.", name=channel_name)
    return Message(lang, title, f"{title}\n\n{text}", f"### {title}\n\n{text}")
