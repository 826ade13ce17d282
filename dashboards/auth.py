"""Who is calling: a bearer token (scripts) or a browser session (people).

Passwords are hashed with Werkzeug's `generate_password_hash` (scrypt);
tokens are compared in constant time. Roles: admin, facility, teacher.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Callable
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.security import check_password_hash

bp = Blueprint("auth", __name__)
ROLES = ("admin", "facility", "teacher")


def _config() -> Any:
    return current_app.extensions["campus"]["config"]


def current_user() -> dict[str, Any] | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        token = header[7:].strip()
        for known, user in _config().tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return user
        return None
    name = session.get("user")
    if name and name in _config().users:
        info = _config().users[name]
        return {"user": name, "role": info["role"], "rooms": info.get("rooms", [])}
    return None


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        user = current_user()
        if user is None:
            if request.path.startswith("/api/"):
                return jsonify({"error": "login required"}), 401
            return redirect(url_for("auth.login", next=request.path))
        g.user = user
        return view(*args, **kwargs)
    return wrapped


def _csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


@bp.app_context_processor
def _inject() -> dict[str, Any]:
    return {"csrf_token": _csrf_token}


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error = None
    if request.method == "POST":
        if not hmac.compare_digest(request.form.get("csrf", ""), session.get("csrf", "")):
            abort(400, "bad CSRF token; reload the page")
        name = request.form.get("username", "")
        info = _config().users.get(name)
        if info and check_password_hash(info["password_hash"], request.form.get("password", "")):
            session.clear()
            session["user"] = name
            target = request.args.get("next", "/")
            return redirect(target if target.startswith("/") and not target.startswith("//") else "/")
        error = "Unknown user or wrong password."
    return render_template("login.html", error=error)


@bp.route("/logout", methods=["POST"])
def logout() -> Any:
    session.clear()
    return redirect(url_for("auth.login"))
