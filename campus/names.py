"""One validator for every name a person or a device gives.

Names travel far: into Mosquitto's acl, passwd and conf files (one directive
per line, no escaping of any kind), gateway YAML, log lines, audit records,
HTML pages and the MQTT `state` message. A room named
`R9\\nuser gw-s1-gw-a\\ntopic readwrite #` once became three lines of the
broker's ACL and gave gateway A every topic (issue 15). So a name is checked
once, where it comes in (forms, CSV import, registry, CLI, agent config, the
`state` decoder), by the functions below, and nowhere else:

- `identifier`: school, gateway, device and user ids. They are MQTT topic
  segments and account names, so they keep `campus.contract.check_segment`
  (ASCII letters, digits, `_ . -`, at most 64).
- `display_name`: what people read (a school's name, building, room,
  schedule name, token label): any printable text in any script (教学楼A,
  三年级2班), one line, trimmed, NFC-normalised, with a length limit.

Refused in a display name, wherever it stands:

- category Cc: C0/C1 controls, among them every ASCII line end, TAB, NUL
  (ends a C string in Mosquitto), ESC (terminal escapes in logs), U+0085 NEL;
- categories Zl and Zp: U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR,
  line ends for YAML, JavaScript and `str.splitlines`;
- category Cf: invisible format characters. Bidi overrides (U+202E) make a
  name read differently from what it is, zero-width characters (U+200B,
  U+200D, U+FEFF) make two different names look the same; Chinese names
  need none of them;
- category Cs (lone surrogates: not text, cannot be written as UTF-8) and the
  66 noncharacters (U+FDD0..U+FDEF, U+xFFFE/U+xFFFF).

Private-use characters (Co) stay allowed: GB18030 maps rare Chinese characters
there. Unassigned code points (Cn) stay allowed too: a rare character (生僻字)
added by a newer Unicode version than this Python's tables is still a name.

`check_one_line` is the second wall for the generators of line-based files:
it refuses (never trims, never escapes) anything that could end a line.
"""

from __future__ import annotations

import unicodedata

from campus.errors import ConfigError, PayloadError
from campus.i18n import N_, LazyText, lazy_gettext, message_of

# Length limits of display names, in characters; the registry's columns are this long.
SCHOOL_NAME_MAX = 200
BUILDING_MAX = 100
ROOM_MAX = 64
SCHEDULE_NAME_MAX = 100
LABEL_MAX = 100

_REFUSED = {
    "Cc": N_("a control character"),
    "Cf": N_("an invisible format character"),
    "Cs": N_("a lone surrogate"),
    "Zl": N_("a line separator"),
    "Zp": N_("a paragraph separator"),
}
_LINE_ENDS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines() splits on


class BadName(ConfigError):
    """A name was refused. `field` names the field (or CSV column); `reason` is the message without it
    (both may be a LazyText, campus/i18n.py: str() is English, the web app shows it translated)."""

    def __init__(self, field: str, reason: str | LazyText, message: str | LazyText | None = None) -> None:
        super().__init__(message or lazy_gettext("%(field)s: %(reason)s", field=field, reason=reason))
        self.field = field
        self.reason = reason


def _is_noncharacter(code: int) -> bool:
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def refused_character(text: str) -> tuple[int, str, str] | None:
    """The first character no name may hold: (index, character, what it is), or None."""
    for index, char in enumerate(text):
        what = _REFUSED.get(unicodedata.category(char))
        if what is None and _is_noncharacter(ord(char)):
            what = N_("a noncharacter")
        if what is not None:
            if char in _LINE_ENDS:
                what = N_("a line break")
            return index, char, what
    return None


def _describe(found: tuple[int, str, str], value: bool = False) -> LazyText:
    index, char, what = found
    params = {"what": LazyText(what), "code": f"U+{ord(char):04X}", "index": index + 1}
    if value:
        return lazy_gettext("%(what)s (%(code)s) at character %(index)s is not allowed: a value is one line of "
                            "visible text", **params)
    return lazy_gettext("%(what)s (%(code)s) at character %(index)s is not allowed: a name is one line of "
                        "visible text", **params)


def display_name(value: object, field: str, *, max_chars: int, required: bool = True) -> str:
    """`value` trimmed and NFC-normalised if it is a valid display name; else `BadName` naming `field`.

    Use the returned text, not `value`: that is what is stored and compared ("R9 " and "R9"
    are one room, and so are a composed and a decomposed "é")."""
    if not isinstance(value, str):
        raise BadName(field, lazy_gettext("must be text"))
    text = unicodedata.normalize("NFC", value).strip()
    found = refused_character(text)
    if found is not None:
        raise BadName(field, _describe(found))
    if len(text) > max_chars or (required and not text):
        reason = (lazy_gettext("needs 1 to %(max)s characters", max=max_chars) if required
                  else lazy_gettext("has at most %(max)s characters", max=max_chars))
        raise BadName(field, reason, lazy_gettext("%(field)s %(reason)s", field=field, reason=reason))
    return text


def identifier(value: object, field: str) -> str:
    """`value` if it is a valid id (a topic segment: `campus.contract.check_segment`); else `BadName`.

    Not trimmed: an id with a space around it is refused, not silently changed."""
    from campus import contract  # here, not at the top: contract imports this module (State.decode)

    try:
        return contract.check_segment(value, field)  # type: ignore[arg-type]
    except PayloadError as exc:
        raise BadName(field, message_of(exc), message_of(exc)) from None


def check_one_line(value: str, what: str) -> str:
    """`value` unchanged if it can stand in one directive of a line-based file; else ConfigError.

    For generators of Mosquitto's files, which have no escaping: a value holding a line end
    would add a directive, a leading or trailing blank would be cut by the parser."""
    if not isinstance(value, str):
        raise ConfigError(lazy_gettext("%(field)s: %(reason)s", field=what, reason=lazy_gettext("must be text")))
    found = refused_character(value)
    if found is not None:
        raise ConfigError(lazy_gettext("%(field)s %(value)s: %(reason)s", field=what, value=repr(value),
                                       reason=_describe(found, value=True)))
    if value != value.strip():
        raise ConfigError(lazy_gettext("%(field)s %(value)s: %(reason)s", field=what, value=repr(value),
                                       reason=lazy_gettext("starts or ends with a blank")))
    return value
