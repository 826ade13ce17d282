"""Languages and local time in the web app: Flask-Babel, the language switch, dates as schools write them.

Which language a request gets, first that applies: `?lang=zh-CN|en` (CONTRACT.md), the account's own
setting (`users.language`, set by the switch on every page), the `lang` cookie (the switch sets it
too: the login page of a browser that chose), `Accept-Language` (any `zh*` is zh-CN, any `en*` is
English, the first of them by quality), else the site's default (`campus web --lang`, zh-CN;
`campus demo`: English). English is the source language: it has no catalog.

Text marked below the web app (campus/i18n.py: `N_`, `lazy_gettext` -> `LazyText`) is translated here
where it is shown: `translate()` in Python; in templates `{{ value }}` of a LazyText translates by
itself (Jinja's finalize), and `{{ _(constant) }}` translates an `N_` constant; JSON answers translate
a LazyText anywhere in them (the app's JSON provider).

Time: a 24-hour clock, dates as `2026-12-04 周五` (English `2026-12-04 Fri`), in the page's zone
(`page_zone`): a page of one school (a URL naming a `<gateway>` or a `<school>`, or a report asked
`?school=`) is in that school's zone (its timetable's, else the site's: central/timetables.py
`school_zone`); every other page, mixing schools, is in the site's zone (`campus web --timezone`,
default Asia/Shanghai), and its footer names the schools in sight whose zone differs (`zone_note`).
Pages format on the server (`datetime`, `date_only`, `clock` filters); page JavaScript gets the zone, the
language and its messages in the page (`js_i18n`, read by static/i18n.js, which formats with Intl in
that zone with hourCycle h23): the browser's own zone and language are never used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.dates import format_datetime
from flask import Blueprint, Flask, abort, current_app, g, redirect, request, session
from flask_babel import Babel, get_locale, get_timezone, gettext

from campus import contract, names
from campus.errors import CampusError, ConfigError
from campus.i18n import ENGLISH, N_, LazyText, Translations, lazy_gettext, message_of
from central.db import translatable

# BCP 47 tag (URLs, the cookie, the account, <html lang>) -> the locale Flask-Babel is given (Babel makes
# zh_CN zh_Hans_CN, the name of its catalog folder).
LANGUAGES = {"zh-CN": "zh_CN", "en": "en"}
# How the switch names each language: in itself, so a reader finds their own.
LANGUAGE_NAMES = {"zh-CN": "中文", "en": "English"}
DEFAULT_TIMEZONE = "Asia/Shanghai"
COOKIE = "lang"
COOKIE_MAX_AGE = 365 * 24 * 3600
STATIC = Path(__file__).resolve().parent / "static"

bp = Blueprint("i18n", __name__)


def language_tag(value: object) -> str | None:
    """The supported tag `value` names (`zh`, `zh-CN`, `zh_CN`, `zh-Hans`, `en-US`…), or None."""
    if not isinstance(value, str) or not value or len(value) > 35:
        return None
    primary = value.replace("_", "-").split("-")[0].lower()
    return {"zh": "zh-CN", "en": "en"}.get(primary)


def check_language(value: object) -> str:
    """A site default or a stored setting: one of LANGUAGES, or ConfigError naming the field."""
    tag = language_tag(value)
    if tag is None:
        raise ConfigError(f"lang: {str(value)[:40]!r} is not one of {', '.join(LANGUAGES)}")
    return tag


def check_timezone(value: object) -> str:
    """An IANA zone name, or ConfigError naming the field."""
    try:
        ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"timezone: unknown time zone {str(value)[:64]!r} (e.g. Asia/Shanghai)") from None
    return str(value)


def install(app: Flask, default_language: str = "en", timezone: str = DEFAULT_TIMEZONE) -> None:
    """Flask-Babel on `app` with this module's choice of language and zone; the switch's route; the
    template helpers; JSON and Jinja output translating a LazyText."""
    from dashboards import i18n_build

    app.config["CAMPUS_LANGUAGE"] = check_language(default_language)
    app.config["CAMPUS_TIMEZONE"] = check_timezone(timezone)
    try:  # a .po edited since the last build (a developer's checkout); an installed package has them made
        i18n_build.compile_catalogs()
    except OSError:
        pass
    Babel(app, locale_selector=lambda: LANGUAGES[request_language()],
          timezone_selector=lambda: page_zone().key,
          default_locale=LANGUAGES[app.config["CAMPUS_LANGUAGE"]], default_timezone=app.config["CAMPUS_TIMEZONE"])
    app.jinja_env.policies["ext.i18n.trimmed"] = True
    app.jinja_env.finalize = _finalize
    app.jinja_env.filters.update(datetime=format_time, date_only=format_date, clock=format_clock)
    # Globals, not context: macros imported without context (school_figures.html) use them too.
    app.jinja_env.globals.update(translate=translate, term=term, terms=terms)
    app.context_processor(_template_helpers)
    previous = app.json.default  # type: ignore[attr-defined]
    app.json.default = lambda o: translate(o) if isinstance(o, LazyText) else previous(o)  # type: ignore[attr-defined]
    app.register_blueprint(bp)


@functools.cache
def catalog(tag: str) -> Translations:
    """The catalog of a language tag outside any request: what the notifier (central/notify, which must not
    import Flask) says a channel's messages with. English, the source language, has none."""
    from babel import Locale
    from babel.support import Translations as Catalog

    from dashboards.i18n_build import DOMAIN, TRANSLATIONS

    locale = LANGUAGES[language_tag(tag) or "en"]
    if locale == "en":
        return ENGLISH
    return Catalog.load(str(TRANSLATIONS), [Locale.parse(locale)], domain=DOMAIN)


def request_language() -> str:
    """The language tag of this request (the module docstring's order); once per request."""
    if "campus_lang" in g:
        return g.campus_lang
    tag = (language_tag(request.args.get("lang")) or _account_language()
           or language_tag(request.cookies.get(COOKIE)) or _accepted()
           or current_app.config.get("CAMPUS_LANGUAGE", "en"))
    g.campus_lang = tag
    return tag


def _account_language() -> str | None:
    user = g.get("user")
    if user is None and session.get("user"):
        from dashboards.context import central

        user = central().registry.principal(session["user"])
    return language_tag((user or {}).get("language"))


def _accepted() -> str | None:
    for value, _quality in request.accept_languages:
        tag = language_tag(value)
        if tag:
            return tag
    return None


# Words the code keeps as identifiers (CONTRACT.md names, central's statuses) and pages show: one table, so a
# page says `term("action", a)` and never spells a translation itself.
TERMS: dict[str, dict[str, str]] = {
    "action": dict(contract.ACTION_WORDS),
    "kind": {"environment": N_("environment sensor"), "card_reader": N_("card reader"), "projector": N_("projector"),
             "display": N_("display"), "camera": N_("camera"), "meter": N_("electricity meter")},
    "kinds": {"environment": N_("environment sensors"), "card_reader": N_("card readers"),
              "projector": N_("projectors"), "display": N_("displays"), "camera": N_("cameras"),
              "meter": N_("electricity meters")},
    "day": {"mon": N_("Mon"), "tue": N_("Tue"), "wed": N_("Wed"), "thu": N_("Thu"), "fri": N_("Fri"),
            "sat": N_("Sat"), "sun": N_("Sun")},
    "status": {"done": N_("done"), "failed": N_("failed"), "rejected": N_("refused"), "expired": N_("expired"),
               "pending": N_("waiting"), "skipped": N_("skipped"), "ok": N_("ok"), "offline": N_("offline"),
               "fault": N_("fault"), "unknown": N_("unknown"), "online": N_("online"), "on": N_("on"),
               "off": N_("off"), "warming": N_("warming up"), "cooling": N_("cooling down"),
               "never reported": N_("never reported"), "not installed yet": N_("not installed yet")},
    # Notifications (central/notify): a channel's kind, an alarm's severity, a robot's message type, a
    # delivery's status.
    "channel": {"email": N_("e-mail"), "wecom": N_("WeCom"), "dingtalk": N_("DingTalk"), "webhook": N_("webhook")},
    "severity": {"info": N_("info"), "warning": N_("warning"), "critical": N_("critical")},
    "msgtype": {"markdown": N_("Markdown"), "text": N_("plain text")},
    "delivery": {"pending": N_("pending"), "sent": N_("sent"), "failed": N_("failed")},
    # Accounts' roles, and the podium cards' (contract.PODIUM_ROLES: a cleaner's card opens nothing).
    "role": {"admin": N_("admin"), "facility": N_("facility"), "teacher": N_("teacher"), "cleaner": N_("cleaner")},
    "unit": {"min": N_("min")},
    "created": {"schools": N_("schools"), "rooms": N_("rooms"), "gateways": N_("gateways"),
                "devices added": N_("devices added"), "devices replaced": N_("devices replaced")},
}


def term(group: str, value: Any) -> str:
    """`value` (an identifier of `group` in TERMS) as a person reads it in this request's language; an
    identifier the table does not know is shown as it is."""
    if group == "alarm":  # a rule kind (central/alarms.py): its label
        from central.alarms import RULE_KINDS

        kind = RULE_KINDS.get(str(value))
        return gettext(kind.label) if kind else str(value)
    text = TERMS.get(group, {}).get(str(value))
    return gettext(text) if text else str(value)


def either(group: str, values: Iterable[str]) -> LazyText | str:
    """"admin or facility": identifiers of `group` (TERMS) joined by a translated "or", rendered in the
    language of whatever shows it (an error's LazyText renders its parameters in its reader's)."""
    names: list[LazyText | str] = [lazy_gettext(TERMS[group][v]) if v in TERMS.get(group, {}) else v
                                   for v in values]
    if not names:
        return ""
    text = names[0]
    for name in names[1:]:
        text = lazy_gettext("%(one)s or %(other)s", one=text, other=name)
    return text


def terms(group: str, values: str, sep: str = ", ") -> str:
    """A comma-separated list of identifiers (a schedule's `mon,tue`), each as `term` shows it."""
    return sep.join(term(group, v.strip()) for v in str(values).split(",") if v.strip())


def translate(value: Any) -> Any:
    """`value` in the request's language: a LazyText rendered (also one a database column keeps:
    central/db.py StoredText), a str looked up in the catalog (an `N_` constant), anything else as it is."""
    value = translatable(value)
    if isinstance(value, LazyText):
        return value.render(gettext)
    if isinstance(value, str) and value:
        return gettext(value)
    return value


def gateway_text(value: Any, gettext_: Callable[[str], str] | None = None) -> Any:
    """A text a gateway wrote (a command's result detail, as the ledger reads it) in this request's language
    (or `gettext_`'s), when the gateway marked it for translation (campus.i18n.ReportedText: only a msgid of the
    catalog, only with parameters that fit); an older agent's English as it is, never looked up."""
    value = translatable(value)
    return value.render(gettext_ or gettext) if isinstance(value, LazyText) else value


def gateway_texts(value: Any) -> dict[str, Any]:
    """`gateway_text` in every language of the site, by tag: for what is built once for readers of any language
    (the panel's room stream, dashboards/panel.py), from which each page picks its own."""
    return {tag: gateway_text(value, catalog(tag).gettext) for tag in LANGUAGES}


def shown_command(record: dict[str, Any]) -> dict[str, Any]:
    """A command as the API answers it (ledger.command): its detail in the request's language."""
    return {**record, "detail": gateway_text(record.get("detail", ""))}


def _finalize(value: Any) -> Any:
    return value.render(gettext) if isinstance(value, LazyText) else value


# ---------------------------------------------------------------- time


def _when(value: float | datetime | date) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, 12, tzinfo=get_timezone())
    return datetime.fromtimestamp(float(value), get_timezone())


def format_time(value: float | datetime | None, seconds: bool = False, empty: str = "—") -> str:
    """`2026-12-04 周五 14:03` (English `2026-12-04 Fri 14:03`) in the page's zone; None: `empty`."""
    if value is None or value == "":
        return empty
    pattern = "yyyy-MM-dd EEE HH:mm:ss" if seconds else "yyyy-MM-dd EEE HH:mm"
    return format_datetime(_when(value), pattern, tzinfo=get_timezone(), locale=get_locale())


def format_date(value: float | datetime | date | None, empty: str = "—") -> str:
    """`2026-12-04 周五`: a day, in the page's zone."""
    if value is None or value == "":
        return empty
    if isinstance(value, date) and not isinstance(value, datetime):
        return format_datetime(_when(value), "yyyy-MM-dd EEE", locale=get_locale())
    return format_datetime(_when(value), "yyyy-MM-dd EEE", tzinfo=get_timezone(), locale=get_locale())


def format_clock(value: float | datetime | None, seconds: bool = True, empty: str = "—") -> str:
    """`14:03:05`: the time of day alone, 24-hour, in the page's zone."""
    if value is None or value == "":
        return empty
    return format_datetime(_when(value), "HH:mm:ss" if seconds else "HH:mm", tzinfo=get_timezone(),
                           locale=get_locale())


def site_zone(app: Flask | None = None) -> ZoneInfo:
    """The site's zone (of `app`, else of this request's) as a ZoneInfo, to compute with local times (a
    week's midnights): Flask-Babel's own is a pytz zone, which gives a datetime built with it the zone's
    first offset (Shanghai's +08:06)."""
    return ZoneInfo((app or current_app).config.get("CAMPUS_TIMEZONE", DEFAULT_TIMEZONE))


def _an_id(value: Any, field: str) -> str | None:
    """`value` if it is a valid id (campus/names.py, the one validator), else None: the zone lookup is asked
    with whatever a URL holds, NUL bytes included, before (or instead of) the view that refuses it."""
    if not isinstance(value, str):
        return None
    try:
        return names.identifier(value, field)
    except names.BadName:
        return None


def page_zone() -> ZoneInfo:
    """This request's zone, once per request: the school's, when the page is one school's (the URL names a
    `<gateway>` or a `<school>`, else the query a `school=`, in the caller's sight; an unknown one has the
    site's), else the site's. Pages mixing schools keep
    the site's: one clock per page, said in its footer (`zone_note`)."""
    if "campus_zone" in g:
        return g.campus_zone
    zone = site_zone()
    args = request.view_args or {}
    gateway = _an_id(args.get("gateway"), "gateway")
    school = _an_id(args.get("school") or request.args.get("school"), "school")
    user = g.get("user")
    if user and (gateway or school):
        from central.timetables import school_zone
        from dashboards.auth import may_see, may_see_school
        from dashboards.context import central

        # Only a school in the caller's sight: its zone in the footer must not tell that it exists.
        try:
            if gateway and may_see(user, gateway):
                zone = school_zone(central().registry, zone, gateway=gateway)
            elif not gateway and school and may_see_school(user, school):
                zone = school_zone(central().registry, zone, school=school)
        except CampusError:  # the database away: the page (an error page, perhaps) still renders, in the site's
            pass
    g.campus_zone = zone
    return zone


def _offset(zone: ZoneInfo) -> str:
    """`UTC+06:00`: how far the zone is from UTC now (what a reader compares)."""
    minutes = round((datetime.now(zone).utcoffset() or timedelta()).total_seconds() / 60)
    return f"UTC{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def zone_note() -> dict[str, Any]:
    """What the page footer says of time: the page's zone and, on a page mixing schools, the schools in the
    caller's sight whose own zone differs (their times here are the site's; their own pages use theirs)."""
    zone = page_zone()
    note: dict[str, Any] = {"zone": zone.key, "offset": _offset(zone), "others": []}
    user = g.get("user")
    if zone != site_zone() or not user:
        return note
    from central.timetables import zones
    from dashboards.auth import sight
    from dashboards.context import central

    scope = sight(user)
    found = zones(central().registry, scope.schools, scope.gateways)
    note["others"] = sorted(f"{school} {z.key} ({_offset(z)})" for school, z in found.items()
                            if _offset(z) != note["offset"])
    return note


def site_stamp(ts: float) -> str:
    """`20261204-1403`: a time in a file name, in the page's zone."""
    return datetime.fromtimestamp(ts, get_timezone()).strftime("%Y%m%d-%H%M")


# ---------------------------------------------------------------- page JavaScript


@functools.cache
def js_messages(files: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The messages the page scripts mark (`_("…")`), read from the scripts themselves, so the catalog a
    page carries is exactly theirs."""
    from dashboards.i18n_build import extract_js

    found: dict[str, None] = {}
    for path in sorted(STATIC.glob("*.js")) if files is None else map(Path, files):
        with open(path, "rb") as f:
            found.update((message, None) for _line, _func, message, _comments in extract_js(f, None, None, None))
    return tuple(found)


def js_i18n() -> dict[str, Any]:
    """What static/i18n.js reads from the page: language, zone, and the scripts' messages translated (none
    in English, the source language: `_` shows the message itself)."""
    lang = request_language()
    return {"lang": lang, "timeZone": str(get_timezone()),
            "messages": {} if lang == "en" else {m: gettext(m) for m in js_messages()}}


def _template_helpers() -> dict[str, Any]:
    return {"page_lang": request_language(), "languages": list(LANGUAGE_NAMES.items()), "js_i18n": js_i18n,
            "zone_note": zone_note}


# ---------------------------------------------------------------- the switch


def _without_lang(target: str) -> str:
    """`target` without a `lang=` in its query (it would override the choice just made)."""
    parts = urlsplit(target)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "lang"]
    return urlunsplit(parts._replace(query=urlencode(query)))


@bp.route("/language", methods=["POST"])
def choose() -> Any:
    """The language switch: kept on the account (every later login has it) and in a cookie (the login
    page, a browser not logged in); then back to the page it was chosen on."""
    from dashboards import auth
    from dashboards.security import safe_target

    if not auth.csrf_ok(request.form.get("csrf", "")):
        abort(400, "bad CSRF token; reload the page")
    tag = language_tag(request.form.get("lang"))
    if tag is None:
        abort(400, f"lang: must be one of {', '.join(LANGUAGES)}")
    user = auth.current_user()
    if user is not None and user.get("via") == "session":
        from dashboards.context import central

        central().registry.set_language(user["user"], tag)
    resp = redirect(_without_lang(safe_target(request.form.get("next"), "/")))
    resp.set_cookie(COOKIE, tag, max_age=COOKIE_MAX_AGE, samesite="Lax", httponly=True, secure=request.is_secure)
    return resp



# ---------------------------------------------------------------- errors shown to a person


def error_text(exc: BaseException) -> str:
    """What `exc` says, in this request's language: the LazyText it was raised with translated (central's
    and campus's errors mark theirs, campus/i18n.py), an HTTP error's description, else its English text."""
    description = getattr(exc, "description", None)  # werkzeug's HTTPException: abort(400, text)
    return str(translate(description if description is not None else message_of(exc)))
