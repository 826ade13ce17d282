"""The web app: dashboards for IT staff, facility managers and teachers, and the JSON API.

`create_app(config)` builds it (Flask's application factory); nothing is
opened at import time. Blueprints: `api` (JSON, CONTRACT.md), `board`
(the rooms page), `auth` (login and logout).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from flask import Flask

from campus.urls import parse_store_url


@dataclass
class WebConfig:
    store_url: str
    ledger_path: str = ""
    mqtt_url: str | None = None
    # token -> {"user": name, "role": role, "rooms": [...]}
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    # user -> {"password_hash": ..., "role": ..., "rooms": [...]}
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    secret_key: str = field(default_factory=lambda: secrets.token_hex(32))

    def resolved_ledger_path(self) -> str:
        if self.ledger_path:
            return self.ledger_path
        parsed = parse_store_url(self.store_url)
        if parsed.scheme != "sqlite":
            raise ValueError("a non-SQLite store needs --db for the ledger")
        return parsed.path


def create_app(config: WebConfig) -> Flask:
    from campus.urls import parse_mqtt_url
    from central.commands import CommandService
    from central.ledger import Ledger
    from central.store import open_store
    from dashboards import api, auth, board

    app = Flask(__name__)
    app.config["SECRET_KEY"] = config.secret_key
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.extensions["campus"] = {
        "config": config,
        "store": open_store(config.store_url),
        "ledger": Ledger(config.resolved_ledger_path()),
        "commands": None,
    }
    if config.mqtt_url:
        service = CommandService(parse_mqtt_url(config.mqtt_url), app.extensions["campus"]["ledger"])
        service.start()
        app.extensions["campus"]["commands"] = service
    app.register_blueprint(auth.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(board.bp)
    return app
