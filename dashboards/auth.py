"""Who is calling, and what they may do.

A bearer token (scripts) or a browser session (people), both resolved
against the registry; passwords hashed with Werkzeug (scrypt), tokens
stored as SHA-256. Roles as in CONTRACT.md: `admin` (everything),
`facility` (read everything, acknowledge alarms), `teacher` (read and
command the rooms assigned to them only). Every refusal is 401/403, is
audited, and changes nothing.

An admin or facility account may be limited to some schools (`campus users add --school`): a
school's own IT person or facility manager. `sight(user)` is what the caller may see as a
`central.lists.Scope`, which every list puts in its WHERE; `may_see` and `may_command` check one
gateway. The rule for a school-scoped account: a named thing outside its schools (a gateway, a device,
a command, an alarm, a schedule, a school's timetable) is a 404 that does not repeat the name, the
same answer whether it exists or not, so the names of other schools do not leak; what is district-wide
by nature (alarm rules, the broker files, ingest workers, the audit trail, new schools) is a
403 (`login_required(district=True)`). Both are audited. Teachers keep their 403 for another room. Session-authenticated writes need the CSRF
token (form field `csrf` or header `X-CSRF-Token`); bearer calls do not,
since a browser never adds that header by itself.

Sessions live in the central database (dashboards/sessions.py): logout and a
new password end them. Guessing is rate-limited: logins per user name and
address, failed logins per address whatever the name, wrong bearer tokens
per address. Behind a reverse proxy, "address" is the client's only when the
proxy is trusted (`campus web --proxy`); otherwise it is the proxy's.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext

from campus.i18n import N_, LazyText, lazy_gettext
from central import lists
from dashboards.context import central, web
from dashboards.i18n import either
from dashboards.security import safe_target

bp = Blueprint("auth", __name__)

LOGIN_ATTEMPTS_PER_MIN = 10              # per user name and address, every attempt
LOGIN_FAILURES_PER_ADDRESS_PER_MIN = 30  # per address, whatever the user name: no spraying of names
TOKEN_FAILURES_PER_ADDRESS_PER_MIN = 20  # wrong bearer tokens per address
COMMANDS_PER_MIN = 60


class RateLimiter:
    """A sliding one-minute window per key (a user, an address, or both).

    `allow` counts every attempt (commands, logins per user and address); `blocked` and `failed` count
    failures only (wrong tokens, wrong passwords per address), so that a script or a school behind one
    address is never held up by its own successes. Keys without a recent hit are forgotten once there
    are more than `MAX_KEYS`, so names or addresses an attacker makes up cannot fill the memory."""

    MAX_KEYS = 10_000

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.hits: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        recent = [t for t in self.hits.get(key, ()) if now - t < 60]
        if recent:
            self.hits[key] = recent
        else:
            self.hits.pop(key, None)
        return recent

    def allow(self, key: str) -> bool:
        """Count an attempt; False if there were `per_minute` already in the last minute."""
        now = time.monotonic()
        with self.lock:
            if len(self._recent(key, now)) >= self.per_minute:
                return False
            self._add(key, now)
            return True

    def blocked(self, key: str) -> bool:
        """Whether `key` had `per_minute` failures in the last minute (counts nothing)."""
        with self.lock:
            return len(self._recent(key, time.monotonic())) >= self.per_minute

    def failed(self, key: str) -> None:
        with self.lock:
            self._add(key, time.monotonic())

    def _add(self, key: str, now: float) -> None:
        if key not in self.hits and len(self.hits) >= self.MAX_KEYS:
            for stale in [k for k, times in self.hits.items() if now - times[-1] >= 60]:
                del self.hits[stale]
        self.hits.setdefault(key, []).append(now)


def audit(action: str, detail: str = "", ok: bool = True, user: str | None = None) -> None:
    who = user if user is not None else (g.get("user") or {}).get("user", "")
    central().registry.audit(who, action, detail, ok, request.remote_addr or "")


def current_user(recheck: bool = False) -> dict[str, Any] | None:
    """Who is calling: by bearer token, else by browser session. `recheck`: also make sure the session
    still exists now (a long request, such as the panel's stream, outlives a logout).

    Wrong tokens are counted per address; after `TOKEN_FAILURES_PER_ADDRESS_PER_MIN` in a minute every
    bearer call from that address is a 429 for the rest of the minute, right token or not."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        limiter, address = web().token_limiter, request.remote_addr or ""
        if limiter.blocked(address):
            abort(make_response(_refuse(429, lazy_gettext("too many wrong API tokens from this address; wait a minute"))))
        principal = central().registry.principal_for_token(header[7:].strip())
        if principal:
            principal["via"] = "token"
        else:
            limiter.failed(address)
        return principal
    name = session.get("user")
    if name and recheck and not current_app.session_interface.alive(session):  # type: ignore[attr-defined]
        return None
    if name:
        principal = central().registry.principal(name)
        if principal:
            principal["via"] = "session"
        return principal
    return None


def refuse(status: int, message: str | LazyText) -> Any:
    """A refusal (401 or 403), audited: JSON under /api/, else the login or the error page."""
    return _refuse(status, message)


def _refuse(status: int, message: str | LazyText) -> Any:
    audit("refused", f"{status} {request.method} {request.path}: {message}", ok=False)
    if request.path.startswith("/api/"):
        return jsonify({"error": message}), status  # a LazyText: translated by the app's JSON provider
    if status == 401:
        return redirect(url_for("auth.login", next=request.path))
    return render_template("error.html", status=status, message=message), status


def login_required(view: Callable[..., Any] | None = None, *, roles: tuple[str, ...] = (),
                   district: bool = False) -> Any:
    """Require a login (and, if given, one of `roles`; with `district`, an account not limited to some
    schools: the route shows or changes what belongs to the whole district); checks CSRF on session
    writes."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None:
                return _refuse(401, lazy_gettext("login required"))
            g.user = user
            if not user["role"]:  # signed in with the platform, no role given yet (central/oidc_users.py)
                return _refuse(403, lazy_gettext("your account has no role yet; ask your IT staff to assign one"))
            if roles and user["role"] not in roles:
                return _refuse(403, lazy_gettext("this needs the role %(roles)s", roles=either("role", roles)))
            if district and school_scoped(user):
                return _refuse(403, lazy_gettext("this belongs to the whole district; your account is limited to "
                                                  "some schools"))
            if request.method not in ("GET", "HEAD", "OPTIONS") and user.get("via") == "session":
                if not csrf_ok(request.headers.get("X-CSRF-Token") or request.form.get("csrf", "")):
                    return _refuse(403, lazy_gettext("missing or wrong CSRF token; reload the page"))
            return fn(*args, **kwargs)
        return wrapped
    return decorate(view) if view is not None else decorate


STAFF = ("admin", "facility")


def school_scoped(user: dict[str, Any]) -> bool:
    """An admin or facility account limited to some schools."""
    return user["role"] in STAFF and bool(user.get("schools"))


def sight(user: dict[str, Any]) -> lists.Scope:
    """What `user` may see, for a list's WHERE: everything (district-wide staff), the schools of a
    school-scoped account, a teacher's gateways."""
    if user["role"] in STAFF:
        return lists.Scope(schools=tuple(user.get("schools", ()))) if school_scoped(user) else lists.EVERYTHING
    return lists.Scope(gateways=tuple(user.get("gateways", [])))


def may_see(user: dict[str, Any], gateway: str) -> bool:
    if school_scoped(user):
        return lists.in_scope(central().registry.db, gateway, sight(user))
    return user["role"] in STAFF or gateway in user.get("gateways", [])


def may_command(user: dict[str, Any], gateway: str) -> bool:
    if user["role"] == "admin":
        return may_see(user, gateway)
    return user["role"] == "teacher" and gateway in user.get("gateways", [])


def may_see_school(user: dict[str, Any], school: str) -> bool:
    """Whether `user` may see a school's own pages (its timetable, its usage report)."""
    return user["role"] in STAFF and sight(user).allows_school(school)


# What `not_found` may name, marked for the catalog.
_THINGS = {"gateway": N_("gateway"), "command": N_("command"), "school": N_("school"), "room": N_("room"),
           "device": N_("device"), "schedule": N_("schedule"), "channel": N_("notification channel"),
           "delivery": N_("notification delivery"), "mute": N_("maintenance mute")}


def not_found(what: str) -> Any:
    """The answer to a school-scoped account naming something outside its schools: a 404 without the
    name, as for one that does not exist; audited as a refusal."""
    audit("refused", f"404 {request.method} {request.path}: outside the account's schools", ok=False)
    message = lazy_gettext("no such %(what)s in your schools", what=LazyText(_THINGS.get(what, what)))
    if request.path.startswith("/api/"):
        return jsonify({"error": message}), 404
    return render_template("error.html", status=404, message=message), 404


def refuse_gateway(user: dict[str, Any], message: str | LazyText) -> Any:
    """The refusal of a gateway `user` may not see or command: 404 for a school-scoped account
    (`not_found`), else a 403 with `message`."""
    return not_found("gateway") if school_scoped(user) else _refuse(403, message)


def home_for(user: dict[str, Any]) -> str:
    """Where a user lands: teachers on their classroom panel; facility and admin on the district overview
    when there is more than one school, else on the rooms board."""
    if user["role"] == "teacher" and "panel.home" in current_app.view_functions:
        return url_for("panel.home")
    if user["role"] in STAFF and "health.district" in current_app.view_functions:
        if len(lists.school_ids(central().registry.db, sight(user))) > 1:
            return url_for("health.district")
    return "/"


def csrf_ok(sent: str) -> bool:
    """The request carries this session's CSRF token (an empty one never matches)."""
    expected = session.get("csrf", "")
    return bool(sent) and bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


def add_nav(app: Any, label: str, endpoint: str, roles: tuple[str, ...] = ("admin", "facility", "teacher")) -> None:
    """Put a link in the top bar for the given roles (each area registers its own); `label` is English, marked
    with `campus.i18n.N_`, and base.html shows it translated."""
    web(app).nav.append((label, endpoint, roles))


@bp.app_context_processor
def _inject() -> dict[str, Any]:
    user = g.get("user")
    nav = [(label, url_for(endpoint)) for label, endpoint, roles in web().nav
           if user and user["role"] in roles]
    return {"csrf_token": csrf_token, "user": user, "nav_links": nav}


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error = None
    if request.method == "POST":
        if not csrf_ok(request.form.get("csrf", "")):
            abort(400, lazy_gettext("bad CSRF token; reload the page"))
        name, address = request.form.get("username", "")[:64], request.remote_addr or ""
        by_address = web().login_address_limiter
        if by_address.blocked(address) or not web().login_limiter.allow(f"{name}|{address}"):
            audit("login", "rate limited", ok=False, user=name)
            return render_template("login.html", error=gettext("Too many attempts; wait a minute.")), 429
        principal = central().registry.check_password(name, request.form.get("password", ""))
        if principal:
            session.clear()
            session["user"] = name  # a new session id is issued with it (dashboards/sessions.py)
            audit("login", "ok", user=name)
            return redirect(safe_target(request.args.get("next"), home_for(principal)))
        by_address.failed(address)
        audit("login", "wrong user or password", ok=False, user=name)
        error = gettext("Unknown user or wrong password.")
    return render_template("login.html", error=error)


@bp.route("/logout", methods=["POST"])
def logout() -> Any:
    from dashboards import oidc

    if not csrf_ok(request.form.get("csrf", "")):
        return redirect(url_for("auth.login"))
    platform = oidc.end_session_url()  # signed in with the education platform: end its session too
    session.clear()  # the session's row is deleted: a copy of its cookie is worth nothing now
    return redirect(platform or url_for("auth.login"))
