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
from typing import TYPE_CHECKING, Any

from flask import Flask, abort, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from campus import names
from campus.errors import StoreError
from campus.i18n import N_, LazyText, lazy_gettext

if TYPE_CHECKING:  # imported when an app is made: nothing central is loaded by `import dashboards`
    from central.city_push import CityLink
    from central.service import Central, CentralConfig
    from dashboards.oidc import OidcConfig

# Blueprints of the people-facing areas, imported when present.
AREAS = ("dashboards.panel", "dashboards.health", "dashboards.history_csv", "dashboards.provisioning",
         "dashboards.timetables", "dashboards.city", "dashboards.notifications", "dashboards.energy",
         "dashboards.podium", "dashboards.attendance")


@dataclass
class WebConfig:
    store_url: str
    # The central database (registry and ledger): sqlite:///PATH or postgresql://...; a bare path is that
    # SQLite file.
    db_url: str
    mqtt_url: str | None = None
    secret_key: str = field(default_factory=lambda: secrets.token_hex(32))
    # Demo only: a function (gateway, device, overrides) that reaches into a simulator.
    sim_control: Callable[[str, str, dict[str, Any]], None] | None = None
    # Reverse proxies in front whose X-Forwarded-For/-Proto/-Host/-Port are believed (`campus web --proxy`).
    trusted_proxies: int = 0
    # Seconds between alarm evaluations / schedule checks of the app's own Central; None: the environment
    # (CAMPUS_ALARM_INTERVAL, CAMPUS_SCHEDULE_INTERVAL), else the defaults; 0: off.
    alarm_interval: float | None = None
    schedule_interval: float | None = None
    # Where the provisioning pages write the broker's files (else $CAMPUS_BROKER_CONFIG_DIR).
    broker_config_dir: str | None = None
    # `campus web --city`: this instance is a city's; its home page is the districts (dashboards/city.py).
    city: bool = False
    # A district's instance: where it pushes its schools' rollups (`--city-url`, `--city-token`, `--district`).
    city_link: CityLink | None = None
    # Sign-in with the education platform (OpenID Connect, docs/oidc.md); None: local passwords only.
    oidc: OidcConfig | None = None
    # The site's language where neither the request nor the account names one (`campus web --lang`:
    # zh-CN; a WebConfig made in code, as `campus demo` does: English), and its time zone (dashboards/i18n.py).
    lang: str = "en"
    timezone: str = "Asia/Shanghai"
    # Yuan per kWh on the energy pages (`campus web --tariff`); None: $CAMPUS_TARIFF, else central/energy.py's.
    tariff: float | None = None
    # Central's background jobs (alarm monitor, scheduler, usage rollup, ...) in this app's process; False:
    # `campus web --no-jobs`, a district's web workers, which leave them to `campus jobs`.
    background: bool = True

    def central_config(self) -> CentralConfig:
        """The config of the Central this app opens when it is given none."""
        from central.service import CentralConfig

        return CentralConfig(store_url=self.store_url, db_url=self.db_url, mqtt_url=self.mqtt_url,
                             alarm_interval=self.alarm_interval, schedule_interval=self.schedule_interval,
                             city=self.city_link, timezone=self.timezone, background=self.background)


def create_app(config: WebConfig, central: Central | None = None) -> Flask:
    """The web app on `central`; without one it opens and starts its own (and `close_app` closes it).
    A Central given is started and closed by whoever built it."""
    from central.service import Central
    from dashboards import api, auth, board, i18n, security, sessions, strict_json
    from dashboards.context import EXTENSION, WebState

    app = Flask(__name__)
    strict_json.install(app)
    security.install(app, config.trusted_proxies)
    app.config["SECRET_KEY"] = config.secret_key
    app.config["MAX_CONTENT_LENGTH"] = 2 * 1024 * 1024
    i18n.install(app, config.lang, config.timezone)
    owns = central is None
    if central is None:
        central = Central.open(config.central_config())
    try:
        state = WebState(config=config, central=central, owns_central=owns,
                         login_limiter=auth.RateLimiter(auth.LOGIN_ATTEMPTS_PER_MIN),
                         login_address_limiter=auth.RateLimiter(auth.LOGIN_FAILURES_PER_ADDRESS_PER_MIN),
                         token_limiter=auth.RateLimiter(auth.TOKEN_FAILURES_PER_ADDRESS_PER_MIN),
                         command_limiter=auth.RateLimiter(auth.COMMANDS_PER_MIN))
        app.extensions[EXTENSION] = state
        sessions.install(app, central.registry)
        app.register_error_handler(StoreError, _store_unavailable)
        app.register_error_handler(HTTPException, _http_error)
        app.url_value_preprocessor(_check_ids)
        # A request thread gives its database connections back when its request ends (Werkzeug starts a
        # thread per connection; kept per thread, one leaked per request: issue 14).
        app.teardown_appcontext(lambda _exc: release_connections(app))
        app.register_blueprint(auth.bp)
        app.register_blueprint(api.bp)
        app.register_blueprint(board.bp)
        if config.oidc is not None:
            from dashboards import oidc

            oidc.install(app, config.oidc)
        auth.add_nav(app, N_("Rooms"), "board.rooms", ("admin", "facility"))
        for name in AREAS:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:
                    raise
                continue
            module.register(app)
        if owns:
            central.start()
    except BaseException:
        if owns:
            central.close()
        raise
    release_connections(app)  # the connections the start-up used (schema checks) go back to the pools
    return app


def release_connections(app: Flask) -> None:
    """The calling thread gives back the database connections it holds (ledger and point store); the
    registry's SQLAlchemy sessions give theirs back as each one closes."""
    from dashboards.context import central

    central(app).release()


# Path parts that name a gateway, a device or a command: ids (campus.names.identifier), never anything else.
_ID_PARTS = ("gateway", "device", "cid")
_ID_NAMES = {"gateway": N_("gateway"), "device": N_("device"), "cid": N_("command")}


def _check_ids(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """A gateway, device or command id in the URL that no id can be is a 404 naming it, before any view
    looks it up: on PostgreSQL a NUL in it would fail the query itself ("text fields cannot contain NUL"),
    a 503 instead of 'no such gateway'; SQLite just finds no row."""
    for part in _ID_PARTS:
        value = (values or {}).get(part)
        if value is not None:
            try:
                names.identifier(value, part)
            except names.BadName:
                abort(404, lazy_gettext("no %(what)s %(value)s: not a valid id (letters, digits, '_', '.', '-'; "
                                        "at most 64)", what=LazyText(_ID_NAMES[part]), value=repr(value[:64])))


def _store_unavailable(exc: StoreError) -> Any:
    """What the time-series store or the central database cannot serve now: 503 with the reason (JSON under
    /api/, like every other API answer); a retry may work."""
    from flask_babel import gettext

    from dashboards.i18n import error_text

    if request.path.startswith("/api/"):
        return jsonify({"error": gettext("not available now, try again soon: %(error)s", error=error_text(exc))}), 503
    return render_template("error.html", status=503,
                           message=gettext("This cannot be read now, try again soon: %(error)s",
                                           error=error_text(exc))), 503


def _http_error(exc: HTTPException) -> Any:
    """Under /api/ a refusal is JSON naming the problem, like every other API answer; a page gets the error
    page in the reader's language (Werkzeug's own would be English): its heading says what happened, and a
    description of ours (not Werkzeug's stock one) follows."""
    if request.path.startswith("/api/"):
        return jsonify({"error": exc.description}), exc.code
    if exc.code is None or exc.code < 400:  # a redirect Werkzeug raises (a missing slash)
        return exc
    stock = exc.description == type(exc).description
    return render_template("error.html", status=exc.code, message=None if stock else exc.description), exc.code


def close_app(app: Flask) -> None:
    """End what the app runs (open streams first); close its Central if the app opened it."""
    from dashboards.context import web

    state = web(app)
    for hook in state.on_close:
        hook()
    if state.owns_central:
        state.central.close()
