"""What a notification says, in the channel's language (zh-CN or en), at the school's local time.

One `Batch` (transitions of one kind, in one building of one school) becomes one `Message`: a title
("30 alarms raised: Offline too long — 教学楼A, s1"), a plain text for e-mail and robots' text type,
and Markdown for the robots' markdown type. Every string is marked for the catalog and rendered with the
`Translations` of the channel's language (campus/i18n.py): central has no catalogs and must not import
Flask, so the web app hands the notifier its own (`Notifier.translations`, set by
dashboards/notifications.py); until it does, messages are English. An alarm's own message (a LazyText,
central/db.py `translatable`) is rendered in that language too. Times are 24-hour `YYYY-MM-DD HH:MM` in the
school's time zone (Asia/Shanghai by default).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from campus.i18n import ENGLISH, N_, LazyText, Translations

# A language tag (zh-CN, en) -> its translations: what the web app hands the notifier.
TranslationsFor = Callable[[str], Translations]

# Rule labels as they appear in messages (the same words as central/alarms.py RULE_KINDS, marked there too;
# a kind not listed shows its label from there).
KIND_LABELS = {
    "offline_minutes": N_("Offline too long"),
    "co2_above": N_("CO2 too high"),
    "temperature_range": N_("Temperature out of range"),
    "lamp_hours_above": N_("Projector lamp worn"),
    "projector_error": N_("Projector error"),
}
SEVERITY_LABELS = {"info": N_("info"), "warning": N_("warning"), "critical": N_("critical")}
LINES_MAX = 30  # alarms listed in one message; the rest are counted ("and 170 more")

# Characters a robot's Markdown (WeCom, DingTalk: CommonMark subsets plus WeCom's <font> tag) reads as
# markup. A school, building, room or device name is typed by people; "[点此](http://…)" or "<font …>" in
# one must show as those characters, not become a link or a colour in every alarm sent to the group.
# Only the inline markup is escaped: a name never starts a line here (lines start "- ", "### ", "> "), so
# "#", "-", "+", "." and ">" do nothing inside one, and escaping them would show as "3\\-1" on a robot
# that does not read escapes.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]~])")


def markdown_escape(value: str) -> str:
    """`value` as literal text in Markdown: its markup characters backslash-escaped and `<`, `&` as
    entities (the robots render HTML entities; a backslash before `<` is not standard)."""
    value = value.replace("&", "&amp;").replace("<", "&lt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", value)


@dataclass(frozen=True)
class AlarmLine:
    """One alarm of a batch, as the message needs it."""
    id: int
    gateway: str
    device: str
    room: str
    message: str | LazyText  # a LazyText (central/db.py `translatable`): shown in the channel's language
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


def english(_lang: str) -> Translations:
    """The notifier's translations until the web app hands it its catalogs: English for every channel."""
    return ENGLISH


class _Say:
    """One language's gettext and ngettext, with Flask-Babel's `%(name)s` parameters (`num` for a plural):
    the catalog's keywords, so the extraction finds the calls below. A broken translation shows English
    rather than nothing."""

    def __init__(self, translations: Translations, escape: Callable[[str], str] | None = None) -> None:
        self.translations = translations
        self.escape = escape  # the Markdown rendering's: applied to what people typed (`literal`)

    def literal(self, value: str) -> str:
        """A name or other text from outside, as it must stand in this rendering."""
        return self.escape(value) if self.escape else value

    def gettext(self, msgid: str, **params: Any) -> str:
        return self._fill(self.translations.gettext(msgid), msgid, params)

    def ngettext(self, singular: str, plural: str, num: int, **params: Any) -> str:
        text = self.translations.ngettext(singular, plural, num)
        return self._fill(text, singular if num == 1 else plural, {"num": num, **params})

    def text(self, value: str | LazyText) -> str:
        """An alarm's message: a LazyText rendered in this language, a plain (older) one as it is."""
        return value.render(self.translations.gettext) if isinstance(value, LazyText) else str(value)

    def _fill(self, text: str, msgid: str, params: dict[str, Any]) -> str:
        if not params:
            return text
        try:
            return text % params
        except (KeyError, ValueError, TypeError):
            return msgid % params


def _place(say: _Say, batch: Batch) -> str:
    school = say.literal(batch.school_name or batch.school)
    if batch.building:
        return say.gettext("%(building)s, %(school)s", building=say.literal(batch.building), school=school)
    return school


def _title(say: _Say, batch: Batch, label: str) -> str:
    # The count in both English forms: a language of one plural form (Chinese) says it in that one form,
    # and Babel's check wants the singular's parameters to hold every one the translation uses.
    n, place = len(batch.alarms), _place(say, batch)
    if batch.transition == "raised":
        return say.ngettext("%(num)d alarm raised: %(label)s — %(place)s", "%(num)d alarms raised: %(label)s — %(place)s",
                            n, label=label, place=place)
    if batch.transition == "acknowledged":
        return say.ngettext("%(num)d alarm acknowledged: %(label)s — %(place)s",
                            "%(num)d alarms acknowledged: %(label)s — %(place)s", n, label=label, place=place)
    return say.ngettext("%(num)d alarm cleared: %(label)s — %(place)s", "%(num)d alarms cleared: %(label)s — %(place)s",
                        n, label=label, place=place)


def _line(say: _Say, batch: Batch, a: AlarmLine) -> str:
    where = say.literal(f"{a.room or a.gateway}" + (f" / {a.device}" if a.device else ""))
    # The alarm's own sentence where it can be said in the channel's language; an older, English-only one
    # gives way to its value (a number and a unit read the same in both).
    what = say.literal(say.text(a.message) if isinstance(a.message, LazyText) else (a.value or a.message))
    if batch.transition == "acknowledged":
        return say.gettext("%(where)s: %(what)s, acknowledged by %(who)s at %(time)s", where=where, what=what,
                           who=say.literal(a.acked_by or "?"), time=local_time(a.acked_at, batch.zone))
    if batch.transition == "cleared":
        return say.gettext("%(where)s: %(what)s, cleared at %(time)s", where=where, what=what,
                           time=local_time(a.cleared_at, batch.zone))
    return say.gettext("%(where)s: %(what)s, since %(time)s", where=where, what=what,
                       time=local_time(a.raised_at, batch.zone))


def render(batch: Batch, lang: str, translations: TranslationsFor = english) -> Message:
    """The message of `batch` in `lang` (zh-CN or en), with `translations` of that language."""
    title, text = _compose(batch, _Say(translations(lang)), markdown=False)
    md_title, markdown = _compose(batch, _Say(translations(lang), escape=markdown_escape), markdown=True)
    return Message(lang, title, text, markdown)


def _compose(batch: Batch, say: _Say, markdown: bool) -> tuple[str, str]:
    """The title and body of `batch`: plain text, or Markdown with every name escaped by `say`."""
    label = say.gettext(KIND_LABELS.get(batch.kind, batch.label))
    title = _title(say, batch, label)
    shown = sorted(batch.alarms, key=lambda a: (a.room or a.gateway, a.device))[:LINES_MAX]
    lines = [_line(say, batch, a) for a in shown]
    more = len(batch.alarms) - len(shown)
    if more > 0:
        lines.append(say.ngettext("and %(num)d more", "and %(num)d more", more))
    severity = say.gettext("Severity: %(severity)s",
                           severity=say.gettext(SEVERITY_LABELS.get(batch.severity, batch.severity)))
    footer = say.gettext("Sent by campus-iot; see the alarms page for details.")
    if not markdown:
        return title, "\n".join([title, severity, "", *(f"- {line}" for line in lines), "", footer])
    return title, "\n".join([f"### {title}", f"**{severity}**", "", *(f"- {line}" for line in lines), "",
                             f"> {footer}"])


def render_test(lang: str, channel_name: str, translations: TranslationsFor = english) -> Message:
    """The "send a test message" text: says which channel it came through."""
    say = _Say(translations(lang))
    title = say.gettext("Test message from campus-iot")
    message = ("This is a test of the notification channel %(name)s. If you can read it, alarms will "
               "reach you here.")
    text = say.gettext(message, name=channel_name)
    md_text = say.gettext(message, name=markdown_escape(channel_name))
    return Message(lang, title, f"{title}\n\n{text}", f"### {title}\n\n{md_text}")
