"""Browser sessions kept in the central database; the cookie holds nothing but a random id.

Flask's default session is a signed cookie holding the session itself: it cannot be revoked (a copy
taken before logout kept working after it) and everything put in it travels with every request (the
"push all" results of 2,000 gateways made a 6 kB cookie, which browsers drop). Here the cookie carries
a 256-bit random id; the data (who is logged in, the CSRF token, messages for the next page) is a
row of the registry's `web_sessions` table, keyed by the id's SHA-256.

- Logout deletes the row: the id is worth nothing afterwards, wherever it was copied to.
- Setting a user's password (`Registry.add_user`) deletes every row of that user.
- Logging in issues a new id (no session fixation: an id planted before login is not the one after).
- A session ends after `IDLE_S` without a request, `MAX_AGE_S` after its login at most, and within
  `ANONYMOUS_S` if nobody logged in with it (the login page makes one for its CSRF token).
- The cookie is HttpOnly, SameSite=Lax, and Secure whenever the request came over HTTPS (directly,
  or through a proxy trusted with `campus web --proxy`); it has no expiry date, so closing the
  browser ends it on that side too.

Flask-Session was considered: its SQLAlchemy backend needs Flask-SQLAlchemy (the registry uses plain
SQLAlchemy 2) and stores no user per row, so it cannot end all of a user's sessions at once.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from flask import Flask, Request, Response, render_template, request, session
from flask.sessions import SecureCookieSession, SessionInterface

from campus.errors import StoreError
from central.registry import Registry

log = logging.getLogger(__name__)

IDLE_S = 12 * 3600          # a school day with the panel open: its stream keeps the session alive
MAX_AGE_S = 7 * 24 * 3600   # log in again once a week, whatever
ANONYMOUS_S = 3600          # the login page's session, for its CSRF token
TOUCH_S = 60                # record activity at most once a minute per session
PURGE_S = 600               # delete ended sessions at most this often
MAX_ID_CHARS = 128


class ServerSession(SecureCookieSession):
    """The session as Flask sees it (a dict that notes changes), plus its id and times."""

    def __init__(self, initial: dict[str, Any] | None = None, sid: str | None = None,
                 created: float = 0.0, seen: float = 0.0) -> None:
        super().__init__(initial)
        self.sid = sid
        self.created = created
        self.seen = seen
        self.loaded_user = (initial or {}).get("user")
        self.unavailable: StoreError | None = None  # the database could not be read for it


def expired(created: float, seen: float, user: str | None, now: float) -> bool:
    return now - seen > (IDLE_S if user else ANONYMOUS_S) or now - created > MAX_AGE_S


class ServerSessionInterface(SessionInterface):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.purged = 0.0

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        sid = request.cookies.get(self.get_cookie_name(app), "")
        try:
            if sid and len(sid) <= MAX_ID_CHARS:
                row = self.registry.web_session(sid)
                if row is not None:
                    if not expired(row["created"], row["seen"], row["username"], time.time()):
                        return ServerSession(row["data"], sid, row["created"], row["seen"])
                    self.registry.delete_web_session(sid)
        except StoreError as exc:
            # Flask opens the session before any error handler can answer: the request's first step
            # (`refuse_without_database`) raises it again, and the app's StoreError handler says 503.
            unavailable = ServerSession()
            unavailable.unavailable = exc
            return unavailable
        return ServerSession()

    def save_session(self, app: Flask, session: ServerSession, response: Response) -> None:  # type: ignore[override]
        try:
            self._save(app, session, response)
        except StoreError as exc:
            log.warning("session not saved: %s", exc)
            from flask_babel import gettext

            from dashboards.i18n import error_text

            if session.modified:
                # The answer relies on the session (the login page's CSRF token, a login): it must not
                # pass for done. A page that only read it stands.
                response.status_code = 503
                response.headers.pop("Location", None)
                response.set_data(render_template("error.html", status=503,
                                                  message=gettext("This cannot be saved now, try again soon: "
                                                                  "%(error)s", error=error_text(exc))))
                response.mimetype = "text/html"

    def _save(self, app: Flask, session: ServerSession, response: Response) -> None:
        if session.unavailable is not None:
            return
        name, domain, path = self.get_cookie_name(app), self.get_cookie_domain(app), self.get_cookie_path(app)
        if session.accessed:
            response.vary.add("Cookie")
        if not session:
            if session.sid is not None and session.modified:  # cleared: logout
                self.registry.delete_web_session(session.sid)
                response.delete_cookie(name, domain=domain, path=path, secure=self._secure(app),
                                       httponly=self.get_cookie_httponly(app),
                                       samesite=self.get_cookie_samesite(app))
            return
        now = time.time()
        if session.sid is None or session.get("user") != session.loaded_user:
            # A new session, or a login (or a change of user) in this one: a new id, the old one deleted.
            if session.sid is not None:
                self.registry.delete_web_session(session.sid)
            session.sid, session.created = secrets.token_urlsafe(32), now
            self.registry.create_web_session(session.sid, dict(session), now)
            response.set_cookie(name, session.sid, domain=domain, path=path, secure=self._secure(app),
                                httponly=self.get_cookie_httponly(app), samesite=self.get_cookie_samesite(app))
            self._purge(now)
        elif session.modified:
            self.registry.update_web_session(session.sid, dict(session), now)
        elif now - session.seen > TOUCH_S:
            self.registry.touch_web_session(session.sid, now)

    def alive(self, session: ServerSession) -> bool:
        """Whether the session still exists and has not expired, recording activity: for requests that
        last (the panel's event stream), which must notice a logout that happened meanwhile."""
        if session.sid is None:
            return False
        row = self.registry.web_session(session.sid)
        now = time.time()
        if row is None or expired(row["created"], row["seen"], row["username"], now):
            return False
        return self.registry.touch_web_session(session.sid, now)

    @staticmethod
    def _secure(app: Flask) -> bool:
        return request.is_secure  # HTTPS, or a trusted proxy says so (ProxyFix, dashboards/security.py)

    def _purge(self, now: float) -> None:
        if now - self.purged >= PURGE_S:
            self.purged = now
            self.registry.purge_web_sessions(now - IDLE_S, now - ANONYMOUS_S, now - MAX_AGE_S)


def refuse_without_database() -> None:
    """The first step of every request: a session the database could not read is a 503 with the reason."""
    exc = getattr(session, "unavailable", None)
    if exc is not None:
        raise exc


def install(app: Flask, registry: Registry) -> None:
    app.session_interface = ServerSessionInterface(registry)
    app.before_request_funcs.setdefault(None, []).insert(0, refuse_without_database)
