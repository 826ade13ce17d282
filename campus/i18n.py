"""Marking text for translation where there is no request: central/, campus/, the programs.

The web app translates (Flask-Babel, dashboards/i18n.py) only where a person sees the text, in the
language of that person's request. Code below the web app has no request and no language, and must
not import Flask: it *marks* its messages and keeps them untranslated; whoever shows one translates
it then.

- `N_("CO2 above the limit")` marks a constant: it returns its argument unchanged (English), and
  the extraction (`babel.cfg`, keyword `N_`) puts it in the catalog. Show it with the dashboards'
  `translate()` (in Python) or `{{ _(value) }}` (in a template).
- `lazy_gettext("CO2 %(value)s ppm in %(room)s", value=1780, room="101")` makes a `LazyText`: an
  English message with its named parameters, translated as a whole (the translator sees the whole
  sentence and may move the parameters). `str()` of it is English (logs, the audit trail, a CLI);
  the dashboards translate it where it is rendered: Jinja output, JSON answers (`detail`s), flashes,
  CSV cells (dashboards/i18n.py `translate`). To store one (an alarm's message in the database), keep
  `as_dict()` (msgid + params, JSON) and rebuild it with `LazyText.from_dict`.

The parameters are formatted with Python's `%(name)s`, which is what Babel marks `python-format`
and checks in the catalog.

Text rendered below the web app in a language known without a request (a notification in its channel's
language, central/notify) is rendered with a `Translations` it is handed: stdlib gettext's interface,
which the web app's catalogs (Babel's `support.Translations`) have; `ENGLISH` when none was handed.
"""

from __future__ import annotations

import gettext as _stdlib_gettext
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol


class Translations(Protocol):
    """One language's catalog as stdlib gettext has it (`gettext.NullTranslations`, Babel's
    `support.Translations`): what code that must not import Flask is handed to render text in a language."""

    def gettext(self, message: str) -> str: ...

    def ngettext(self, msgid1: str, msgid2: str, n: int) -> str: ...


# The source language: every message is its own English.
ENGLISH: Translations = _stdlib_gettext.NullTranslations()


def N_(message: str) -> str:
    """Mark `message` for the catalog; it stays as it is (English) until it is shown."""
    return message


class LazyText:
    """An English message and its parameters, translated when shown (see the module docstring)."""

    __slots__ = ("msgid", "params")

    def __init__(self, msgid: str, params: Mapping[str, Any] | None = None) -> None:
        self.msgid = msgid
        self.params = dict(params or {})

    def render(self, gettext: Callable[[str], str] | None = None) -> str:
        """The message in the language of `gettext` (none: English), its parameters put in."""
        text = gettext(self.msgid) if gettext else self.msgid
        if not self.params:
            return text
        # A parameter may itself be a LazyText (an error wrapped in another: "line 3: %(error)s"), shown in
        # the same language.
        params = {k: v.render(gettext) if isinstance(v, LazyText) else v for k, v in self.params.items()}
        try:
            return text % params
        except (KeyError, ValueError, TypeError):  # a broken translation: English rather than nothing
            return self.msgid % params

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"LazyText({self.msgid!r}, {self.params!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LazyText):
            return (self.msgid, self.params) == (other.msgid, other.params)
        return str(self) == other if isinstance(other, str) else NotImplemented

    def __hash__(self) -> int:
        return hash(str(self))

    def __contains__(self, part: str) -> bool:
        """`"overlaps" in text`: a substring of the English, as for the str an error's message once was."""
        return part in str(self)

    def as_dict(self) -> dict[str, Any]:
        """What to store (JSON) to show it translated later (a LazyText parameter stored as its own dict)."""
        return {"msgid": self.msgid,
                "params": {k: v.as_dict() if isinstance(v, LazyText) else v for k, v in self.params.items()}}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> LazyText:
        params = {k: cls.from_dict(v) if isinstance(v, Mapping) and "msgid" in v else v
                  for k, v in (stored.get("params") or {}).items()}
        return cls(str(stored["msgid"]), params)


# A message's placeholders as `fill` accepts them: `%(name)s`, and `%%` for a percent sign; nothing else.
_PLACEHOLDER = re.compile(r"%(?:\((?P<name>[A-Za-z_][A-Za-z0-9_]{0,31})\)s|(?P<percent>%))")


def fill(template: str, params: Mapping[str, Any]) -> str | None:
    """`template % params` for a template and params that may come from anywhere (a gateway), or None.

    Only `%(name)s` and `%%`: a template with any other `%`, a placeholder without its parameter or a
    parameter without its placeholder gives None (the caller shows its fallback), never an exception.
    Substituted by hand: no `%` formatting of an object's own methods, no str.format attribute lookups."""
    names: set[str] = set()
    for match in _PLACEHOLDER.finditer(template):
        if match.group("name"):
            names.add(match.group("name"))
    if template.count("%") != sum(1 if m.group("name") else 2 for m in _PLACEHOLDER.finditer(template)):
        return None  # a `%` that is no placeholder of ours (`%d`, `%(x)r`, a lone `%`)
    if names != set(params):
        return None
    return _PLACEHOLDER.sub(lambda m: str(params[m.group("name")]) if m.group("name") else "%", template)


class ReportedText(LazyText):
    """A text a gateway reported (a command's result detail): its English as the gateway wrote it (`english`),
    and the msgid and parameters it marked it with, for a reader of another language.

    The gateway is not trusted: the text is shown translated only when the catalog has the msgid and its
    parameters fit both the msgid and the translation exactly (`fill`); otherwise, and for an English reader,
    the English as sent. An older agent sends no msgid: its English is all there is."""

    __slots__ = ("english",)

    def __init__(self, english: str, msgid: str = "", params: Mapping[str, Any] | None = None) -> None:
        super().__init__(msgid, params)
        self.english = english

    def render(self, gettext: Callable[[str], str] | None = None) -> str:
        if not self.msgid or gettext is None:
            return self.english
        translated = gettext(self.msgid)
        if translated == self.msgid:
            return self.english  # not in the catalog (or the reader's language is English)
        # A parameter that is a marked text of its own ({"msgid", "params"}, one level: campus/contract.py) is
        # shown translated when it can be, else in its English; one whose English does not fit: all as sent.
        english: dict[str, Any] = {}
        shown: dict[str, Any] = {}
        for name, value in self.params.items():
            if isinstance(value, Mapping):
                inner = value.get("params")
                inner = inner if isinstance(inner, Mapping) else {}
                msgid = str(value.get("msgid") or "")
                english[name] = fill(msgid, inner)
                if english[name] is None:
                    return self.english
                shown[name] = fill(gettext(msgid), inner) or english[name]
            else:
                english[name] = shown[name] = value
        if fill(self.msgid, english) is None:
            return self.english  # params that do not fit the msgid
        return fill(translated, shown) or self.english

    def __repr__(self) -> str:
        return f"ReportedText({self.english!r}, {self.msgid!r}, {self.params!r})"

    def as_dict(self) -> dict[str, Any]:
        # Nested marked texts stay the {"msgid", "params"} dicts they came as.
        return {"msgid": self.msgid, "params": dict(self.params), "english": self.english}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> ReportedText:
        params = stored.get("params")
        return cls(str(stored.get("english", "")), str(stored.get("msgid") or ""),
                   params if isinstance(params, Mapping) else None)


def text_from_dict(stored: Mapping[str, Any]) -> LazyText:
    """A stored LazyText (`as_dict`) back: a ReportedText when it keeps the gateway's English."""
    return ReportedText.from_dict(stored) if "english" in stored else LazyText.from_dict(stored)


def lazy_gettext(msgid: str, **params: Any) -> LazyText:
    """Mark `msgid` (with its `%(name)s` parameters) to be translated where it is shown."""
    return LazyText(msgid, params)


def message_of(exc: BaseException) -> str | LazyText:
    """What an error says, kept translatable: the LazyText it was raised with (`ConfigError(lazy_gettext(…))`,
    whose str() is English), else its English text."""
    if len(exc.args) == 1 and isinstance(exc.args[0], LazyText):
        return exc.args[0]
    return str(exc)
