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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


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


def lazy_gettext(msgid: str, **params: Any) -> LazyText:
    """Mark `msgid` (with its `%(name)s` parameters) to be translated where it is shown."""
    return LazyText(msgid, params)


def message_of(exc: BaseException) -> str | LazyText:
    """What an error says, kept translatable: the LazyText it was raised with (`ConfigError(lazy_gettext(…))`,
    whose str() is English), else its English text."""
    if len(exc.args) == 1 and isinstance(exc.args[0], LazyText):
        return exc.args[0]
    return str(exc)
