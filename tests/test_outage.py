"""PostgreSQL away while central runs: the dashboard and the API answer 503 with the reason (never a 500,
never a traceback), and serve again once it is back, without a restart of the web app."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from central.db import open_database
from tests.apps import add_people, register_rooms, web_app
from tests.servers import PostgreSQL


def _login(client: FlaskClient, name: str, password: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert client.post("/login", data={"csrf": token, "username": name, "password": password}).status_code == 302


def test_the_dashboard_says_503_while_postgresql_is_down_and_serves_again_after(
        postgres_server: PostgreSQL, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    open_database(pg_url, upgrade=True).close()
    app = web_app(pg_url, monkeypatch, store_url=f"sqlite:///{tmp_path / 'points.db'}")
    register_rooms(app)
    tokens = add_people(app)
    browser = app.test_client()
    _login(browser, "fm", "fm-password")
    bearer = {"Authorization": f"Bearer {tokens['admin']}"}
    assert app.test_client().get("/api/gateways", headers=bearer).status_code == 200
    assert browser.get("/health/").status_code == 200

    postgres_server.stop()
    try:
        api = app.test_client().get("/api/gateways", headers=bearer)
        assert api.status_code == 503 and api.is_json
        assert "postgresql://postgres:***@127.0.0.1" in api.json["error"] and "Connection refused" in api.json["error"]
        page = browser.get("/health/")  # the session itself cannot be read: still a 503 page, with the reason
        assert page.status_code == 503
        text = page.get_data(as_text=True)
        assert "try again soon" in text and "Traceback" not in text
        assert postgres_server.password not in text and postgres_server.password not in api.json["error"]
        assert app.test_client().get("/login").status_code == 503  # the login page makes a session row
    finally:
        postgres_server.start()

    # Back: the same app, its pool's dead connections replaced (pre-ping), the same browser session.
    assert app.test_client().get("/api/gateways", headers=bearer).status_code == 200
    assert browser.get("/health/").status_code == 200
    board = browser.get("/api/board")  # the page's data, by the same session cookie
    assert board.status_code == 200 and "gw-101" in board.get_data(as_text=True)
