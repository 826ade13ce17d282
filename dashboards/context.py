"""How a blueprint reaches central and the web app's own state: `central()` and `web()`.

Flask's tutorial reaches its database through one function (`get_db()`);
here `central()` returns the app's `Central` (central/service.py: registry,
ledger, point store, command service) and `web()` the state only the web
app has (its config, rate limiters, the top bar, the panel's poller). Both
are typed, so a misspelt attribute is an error a checker finds, where the
old `extensions["campus"]["..."]` dict found it at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import Flask, current_app

from central.service import Central

if TYPE_CHECKING:
    from dashboards import WebConfig
    from dashboards.auth import RateLimiter
    from dashboards.panel import RoomStates

EXTENSION = "campus"


@dataclass
class WebState:
    """What one web app holds besides central. `owns_central`: `close_app` closes central too (the app
    opened it itself); otherwise the program that built central closes it."""
    config: WebConfig
    central: Central
    login_limiter: RateLimiter
    login_address_limiter: RateLimiter
    token_limiter: RateLimiter
    command_limiter: RateLimiter
    owns_central: bool = False
    # Top-bar links: (label, endpoint, roles), added by each area's `register`.
    nav: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    panel: RoomStates | None = None
    # Run by `close_app` before central stops (open streams end before the ledger closes).
    on_close: list[Callable[[], None]] = field(default_factory=list)


def web(app: Flask | None = None) -> WebState:
    """The web state of `app` (default: the current app)."""
    state = (app or current_app).extensions.get(EXTENSION)
    if not isinstance(state, WebState):
        raise RuntimeError("this Flask app was not made by dashboards.create_app")
    return state


def central(app: Flask | None = None) -> Central:
    """The `Central` the app (default: the current app) serves."""
    return web(app).central
