"""The web app: dashboards for IT staff, facility managers and teachers, and the JSON API.

`create_app(config)` builds it (Flask's application factory); nothing is
opened at import time. Blueprints: `auth` (login, roles, CSRF), `api`
(JSON, CONTRACT.md), `board` (rooms overview), and the areas of each kind
of user registered in `AREAS`.
"""

from __future__ import annotations

import importlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from campus.errors import StoreError

# Blueprints of the people-facing areas, imported when present.
AREAS = ("dashboards.panel", "dashboards.health", "dashboards.history_csv", "dashboards.provisioning")


@dataclass
class WebConfig:
    store_url: str
    # The central database: the ledger and the registry (SQLite path).
    db_path: str
    mqtt_url: str | None = None
    secret_key: str = field(default_factory=lambda: secrets.token_hex(32))
    # Demo only: a function (gateway, device, overrides) that reaches into a simulator.
    sim_control: Callable[[str, str, dict[str, Any]], None] | None = None
    # Reverse proxies in front whose X-Forwarded-For/-Proto/-Host/-Port are believed (`campus web --proxy`).
    trusted_proxies: int = 0


def create_app(config: WebConfig) -> Flask:
    from campus.urls import parse_mqtt_url
    from central.commands import CommandService
    from central.ledger import Ledger
    from central.registry import Registry
    from central.store import open_store
    from dashboards import api, auth, board, security, sessions, strict_json

    app = Flask(__name__)
    strict_json.install(app)
    security.install(app, config.trusted_proxies)
    app.config["SECRET_KEY"] = config.secret_key
    app.config["MAX_CONTENT_LENGTH"] = 2 * 1024 * 1024
    from central.db import open_database

    db = open_database(config.db_path if "://" in config.db_path else f"sqlite:///{config.db_path}")
    ledger = Ledger(db)
    app.extensions["campus"] = {
        "config": config,
        "store": open_store(config.store_url),
        "ledger": ledger,
        "registry": Registry(db),
        "db": db,
        "commands": None,
        "login_limiter": auth.RateLimiter(auth.LOGIN_ATTEMPTS_PER_MIN),
        "login_address_limiter": auth.RateLimiter(auth.LOGIN_FAILURES_PER_ADDRESS_PER_MIN),
        "token_limiter": auth.RateLimiter(auth.TOKEN_FAILURES_PER_ADDRESS_PER_MIN),
        "command_limiter": auth.RateLimiter(auth.COMMANDS_PER_MIN),
    }
    sessions.install(app, app.extensions["campus"]["registry"])
    if config.mqtt_url:
        service = CommandService(parse_mqtt_url(config.mqtt_url), ledger)
        service.start()
        app.extensions["campus"]["commands"] = service
    app.register_error_handler(StoreError, _store_unavailable)
    app.register_error_handler(HTTPException, _http_error)
    # A request thread gives its database connections back when its request ends (Werkzeug starts a
    # thread per connection; kept per thread, one leaked per request: issue 14).
    app.teardown_appcontext(lambda _exc: release_connections(app))
    app.register_blueprint(auth.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(board.bp)
    auth.add_nav(app, "Rooms", "board.rooms", ("admin", "facility"))
    for name in AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(app)
    release_connections(app)  # the connections the start-up used (schema checks) go back to the pools
    return app


def release_connections(app: Flask) -> None:
    """The calling thread gives back the database connections it holds (ledger and point store); the
    registry's SQLAlchemy sessions give theirs back as each one closes."""
    ext = app.extensions["campus"]
    ext["ledger"].release()
    ext["store"].release()


def _store_unavailable(exc: StoreError) -> Any:
    """A page the time-series store or the central database cannot serve now (the JSON API answers 503 itself)."""
    return render_template("error.html", status=503, message=f"This cannot be read now, try again soon: {exc}"), 503


def _http_error(exc: HTTPException) -> Any:
    """Under /api/ a refusal is JSON naming the problem, like every other API answer; pages keep Werkzeug's."""
    if request.path.startswith("/api/"):
        return jsonify({"error": exc.description}), exc.code
    return exc


def close_app(app: Flask) -> None:
    ext = app.extensions["campus"]
    for hook in ext.get("on_close", []):
        hook()
    if ext["commands"] is not None:
        ext["commands"].stop()
    ext["store"].close()
    ext["ledger"].close()
    ext["registry"].close()
    ext["db"].close()
