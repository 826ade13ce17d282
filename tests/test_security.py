"""The web app against hostile people (issue 15, items 6 and 8): redirects, headers, sessions,
cookies, guessing, secrets in logs. Each test feeds the attack in and asserts what the product does.

The app is the real one on a real central database (tests/apps.py): the session, token and database
tests on SQLite and PostgreSQL (`central_db_url`), the rest on SQLite; driven through Flask's test
client as a browser would (login form, CSRF token, cookies); `campus web` itself runs where the
command line is the thing under test (tests at the end, marked slow).
"""

from __future__ import annotations

import logging
import re
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from campus.errors import ConfigError
from campus.net import free_port
from campus.urls import parse_mqtt_url, parse_store_url, redacted
from central.registry import check_token
from dashboards import close_app, sessions
from dashboards.auth import LOGIN_FAILURES_PER_ADDRESS_PER_MIN, RateLimiter
from dashboards.context import central, web
from dashboards.security import safe_target
from tests.apps import PEOPLE, add_people, central_db, register_rooms, sqlite_only, two_rooms, web_app
from tests.servers import CampusProcess, launch_chromium, wait_until
from tests.stores import sql

PASSWORD = {role: password for role, (name, password, rooms) in PEOPLE.items()}
NAME = {role: name for role, (name, password, rooms) in PEOPLE.items()}


@pytest.fixture
def app(tmp_path: Path, central_db_url: str):
    app = web_app(central_db(tmp_path, two_rooms, central_db_url))
    register_rooms(app)
    app.tokens = add_people(app)
    yield app
    close_app(app)


def csrf(client: FlaskClient, path: str = "/login") -> str:
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def login(client: FlaskClient, role: str, next_: str | None = None, **kw: object):
    path = "/login" + (f"?next={quote(next_, safe='')}" if next_ is not None else "")
    return client.post(path, data={"csrf": csrf(client), "username": NAME[role], "password": PASSWORD[role]}, **kw)


def session_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None, "no session cookie"
    return cookie.value


# ---------------------------------------------------------------- redirects after login


def read_by_a_browser_as_a_path_here(location: str) -> bool:
    """Whether every browser resolves `location` against this site to this site.

    The WHATWG URL parser strips leading/trailing C0 controls and spaces, removes tabs and newlines
    anywhere and, for http(s), reads "\\" as "/"; then "//x" or a scheme leave the site. A location of
    printable ASCII without spaces or backslashes, starting with one "/" not followed by another, has
    nothing to strip or remove and is a path-absolute URL: same scheme, host and port as the page."""
    return (location.startswith("/") and not location.startswith("//")
            and all(0x21 <= ord(c) <= 0x7E and c != "\\" for c in location))


HOSTILE_NEXT = [
    "/\t/evil.example/",          # issue 15: the browser drops the tab and goes to //evil.example/
    "/\n/evil.example", "/\r\n/evil.example", "\t//evil.example", " //evil.example", "\x00//evil.example",
    "//evil.example", "///evil.example", "/\\evil.example", "\\\\evil.example", "\\/evil.example",
    "https://evil.example/", "http:evil.example", "https:evil.example", "javascript:alert(1)",
    "JaVaScRiPt:alert(1)", "data:text/html,<script>alert(1)</script>", "evil.example", "@evil.example",
    "\x1f/\\evil.example", "/\t\\evil.example",
]
GOOD_NEXT = {"/health/alarms": "/health/alarms", "/panel/gw-101?x=1#top": "/panel/gw-101?x=1#top",
             "/health/rooms/gw 101": "/health/rooms/gw%20101", "/%2F%2Fevil.example": "/%2F%2Fevil.example",
             "/教室": "/%E6%95%99%E5%AE%A4",
             "/\x0b/evil.example": "/%0B/evil.example"}  # a vertical tab is not dropped: a path here

HOSTILE_PIECES = ["/", "\\", "\t", "\n", "\r", " ", "\x00", "\x0b", "\x1f", "\x7f", "%09", "%2F", "%5C", "//",
                  "evil.example", "http:", "https:", "javascript:", "@", ":", "?", "#", ".", "..", "\u3000",
                  "\uff0f", "\u2215", "\u00a0", "a"]
hostile_next = st.one_of(st.lists(st.sampled_from(HOSTILE_PIECES), max_size=12).map("".join), st.text(max_size=40))


@given(hostile_next)
@settings(max_examples=500)
def test_safe_target_only_ever_gives_a_path_here(target: str) -> None:
    assert read_by_a_browser_as_a_path_here(safe_target(target, "/fallback"))


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_hostile_next_after_login_stays_on_the_site(tmp_path_factory: pytest.TempPathFactory, target: str) -> None:
    resp = login(_shared_app(tmp_path_factory).test_client(), "admin", target)
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/"  # the admin's home: the target was refused, not mended


@pytest.mark.parametrize("target, location", GOOD_NEXT.items())
def test_a_path_on_the_site_is_where_login_goes(tmp_path_factory: pytest.TempPathFactory, target: str,
                                                location: str) -> None:
    resp = login(_shared_app(tmp_path_factory).test_client(), "admin", target)
    assert resp.status_code == 302 and resp.headers["Location"] == location


@given(hostile_next)
@settings(max_examples=25, deadline=None)  # each example is a real login (scrypt: slow on purpose)
def test_the_location_header_after_login_is_always_a_path_here(tmp_path_factory: pytest.TempPathFactory,
                                                               target: str) -> None:
    app = _shared_app(tmp_path_factory)
    resp = login(app.test_client(), "admin", target)
    assert resp.status_code == 302 and read_by_a_browser_as_a_path_here(resp.headers["Location"])


_APPS: dict[str, Flask] = {}


def _shared_app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """One app for all the redirect tests: a property test's examples would rebuild a fixture each time,
    and every login costs a password hash (slow on purpose)."""
    if "app" not in _APPS:
        app = web_app(central_db(tmp_path_factory.mktemp("redirects"), two_rooms))
        add_people(app, {"admin": PEOPLE["admin"]})
        web(app).login_limiter = RateLimiter(10**9)
        _APPS["app"] = app
    return _APPS["app"]


@pytest.fixture(scope="module", autouse=True)
def _close_shared_apps():
    yield
    for app in _APPS.values():
        close_app(app)
    _APPS.clear()


# ---------------------------------------------------------------- headers on every response


def assert_security_headers(headers, what: str) -> None:
    csp = headers.get("Content-Security-Policy", "")
    directives = dict((d.strip().split(" ", 1) + [""])[:2] for d in csp.split(";") if d.strip())
    assert directives.get("frame-ancestors") == "'none'", (what, csp)
    assert directives.get("script-src") == "'self'" and directives.get("style-src") == "'self'", (what, csp)
    assert directives.get("default-src") == "'self'" and directives.get("object-src") == "'none'", (what, csp)
    assert "unsafe" not in csp, (what, csp)
    assert headers.get("X-Frame-Options") == "DENY", what
    assert headers.get("X-Content-Type-Options") == "nosniff", what
    assert headers.get("Referrer-Policy") == "same-origin", what


def test_every_kind_of_response_carries_the_security_headers(tmp_path: Path) -> None:
    app = web_app(central_db(tmp_path, two_rooms))
    app.add_url_rule("/boom", "boom", lambda: 1 / 0)  # an unexpected bug: a 500
    app.add_url_rule("/api/boom", "api_boom", lambda: 1 / 0)
    register_rooms(app)
    app.tokens = add_people(app)
    try:
        anonymous, admin, teacher = app.test_client(), app.test_client(), app.test_client()
        bearer = {"Authorization": f"Bearer {app.tokens['admin']}"}
        responses = {
            "login page": anonymous.get("/login"),
            "login without CSRF": anonymous.post("/login", data={"username": "x"}),
            "redirect to login": anonymous.get("/health/"),
            "API refusal": anonymous.get("/api/gateways"),
            "API health": anonymous.get("/api/health"),
            "static file": anonymous.get("/static/panel.js"),
            "page not found": anonymous.get("/no/such/page"),
            "API not found": anonymous.get("/api/no/such/thing"),
            "method not allowed": anonymous.delete("/api/health"),
            "page error": anonymous.get("/boom"),
            "API error": anonymous.get("/api/boom"),
            "login redirect": login(admin, "admin"),
            "rooms": admin.get("/"),
            "panel": admin.get("/panel/gw-101"),
            "provisioning": admin.get("/provisioning/gateways"),
            "health board": admin.get("/health/"),
            "CSV": admin.get("/health/rooms/gw-101/history.csv"),
            "API JSON": anonymous.get("/api/devices", headers=bearer),
            "metrics": anonymous.get("/api/metrics", headers=bearer),
        }
        login(teacher, "teacher")
        stream = teacher.get("/api/panel/gw-101/stream", buffered=False)
        responses["panel stream"] = stream
        stream.close()
        for what, resp in responses.items():
            assert_security_headers(resp.headers, f"{what} ({resp.status_code})")
            assert "Strict-Transport-Security" not in resp.headers  # plain HTTP: HSTS is meaningless here
        assert responses["page error"].status_code == 500 and "Traceback" not in responses["page error"].text
        assert responses["API error"].status_code == 500 and "error" in responses["API error"].get_json()
        assert responses["API not found"].get_json()["error"]
        https = anonymous.get("/login", base_url="https://campus.example")
        assert_security_headers(https.headers, "over HTTPS")
        assert https.headers["Strict-Transport-Security"].startswith("max-age=")
    finally:
        close_app(app)


TEMPLATES = Path(__file__).resolve().parent.parent / "dashboards" / "templates"
STATIC = TEMPLATES.parent / "static"


def test_no_inline_script_style_or_handler_that_the_policy_would_block() -> None:
    """The policy forbids inline scripts and styles: none may creep back into a template or a script's
    HTML (an inline one would silently stop working, as the browser test would then show)."""
    for path in sorted(TEMPLATES.glob("*.html")) + sorted(STATIC.glob("*.js")):
        text = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag or 'type="application/json"' in tag, f"{path.name}: inline script {tag}"
        assert not re.search(r"<style\b", text), f"{path.name}: <style> element"
        assert not re.search(r"""\sstyle\s*=\s*["'`$]""", text), f"{path.name}: style attribute"
        assert not re.search(r"""\son[a-z]+\s*=\s*["']""", text), f"{path.name}: inline event handler"
        assert "javascript:" not in text, f"{path.name}: javascript: URL"


# ---------------------------------------------------------------- sessions


def test_the_cookie_holds_nothing_but_a_random_id(app: Flask) -> None:
    client = app.test_client()
    login(client, "teacher")
    sid = session_cookie(client)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", sid), sid
    rows = sql(central(app).registry, "SELECT id_sha256, username, data FROM web_sessions").all()
    assert [(r[1]) for r in rows] == ["teach"]
    # Only its SHA-256 is kept: a copy of the database (or a dump of it) opens no session.
    assert sid not in repr(rows)
    path = central(app).registry.db.path
    if path is not None:  # SQLite: not in the file's bytes either, nor in its write-ahead log
        raw = b"".join(Path(f"{path}{suffix}").read_bytes() for suffix in ("", "-wal")
                       if Path(f"{path}{suffix}").exists())
        assert raw and sid.encode() not in raw


def test_a_cookie_copied_before_logout_is_refused_after_it(app: Flask) -> None:
    browser, thief = app.test_client(), app.test_client()
    login(browser, "facility")
    stolen = session_cookie(browser)
    thief.set_cookie("session", stolen)
    assert thief.get("/api/gateways").status_code == 200
    token = csrf(browser, "/")
    assert browser.post("/logout", data={"csrf": token}).status_code == 302
    assert thief.get("/api/gateways").status_code == 401
    assert thief.get("/health/").status_code == 302  # to the login page
    assert browser.get("/api/gateways").status_code == 401


@sqlite_only
def test_logout_without_the_csrf_token_ends_nothing(app: Flask) -> None:
    browser = app.test_client()
    login(browser, "facility")
    browser.post("/logout", data={"csrf": "forged"})
    assert browser.get("/api/gateways").status_code == 200


def test_a_new_password_ends_every_session_of_that_user_only(app: Flask) -> None:
    laptop, phone, colleague = app.test_client(), app.test_client(), app.test_client()
    login(laptop, "facility")
    login(phone, "facility")
    login(colleague, "teacher")
    central(app).registry.add_user(NAME["facility"], "a-new-password", "facility")
    assert laptop.get("/api/gateways").status_code == 401 and phone.get("/api/gateways").status_code == 401
    assert colleague.get("/api/gateways").status_code == 200


def test_login_issues_a_new_session_id(app: Flask) -> None:
    client = app.test_client()
    planted = (csrf(client), session_cookie(client))[1]  # the login page's anonymous session
    login(client, "admin")
    assert session_cookie(client) != planted
    attacker = app.test_client()
    attacker.set_cookie("session", planted)  # fixation: the id known before login opens nothing after it
    assert attacker.get("/api/gateways").status_code == 401


@pytest.mark.parametrize("column, age_s, logged_in", [
    ("seen", sessions.IDLE_S + 60, True), ("created", sessions.MAX_AGE_S + 60, True),
    ("seen", sessions.ANONYMOUS_S + 60, False)])
def test_sessions_expire(app: Flask, column: str, age_s: float, logged_in: bool) -> None:
    client = app.test_client()
    if logged_in:
        login(client, "facility")
        assert client.get("/api/gateways").status_code == 200
    else:
        token = csrf(client)
    with central(app).registry.engine.begin() as conn:
        conn.execute(text(f"UPDATE web_sessions SET {column} = {column} - :age"), {"age": age_s})
    if logged_in:
        assert client.get("/api/gateways").status_code == 401
    else:  # the CSRF token of an expired anonymous session no longer lets a login through
        resp = client.post("/login", data={"csrf": token, "username": NAME["facility"],
                                           "password": PASSWORD["facility"]})
        assert resp.status_code == 400


@sqlite_only
def test_the_panel_stream_ends_when_its_session_is_logged_out(app: Flask) -> None:
    app.config["PANEL_HEARTBEAT_S"] = 0.05
    client = app.test_client()
    login(client, "teacher")
    page = client.get("/panel/gw-101").get_data(as_text=True)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    stream = client.get("/api/panel/gw-101/stream", buffered=False)
    try:
        chunks = iter(stream.response)
        received = b""
        while b"event: room" not in received:
            received += next(chunks)
        client.post("/logout", data={"csrf": token})
        for chunk in chunks:
            received += chunk
        assert b"event: denied" in received  # and the stream ended (the loop above finished)
    finally:
        stream.close()


def test_cookie_is_secure_over_https_and_behind_a_trusted_proxy_only(tmp_path: Path) -> None:
    db = central_db(tmp_path, two_rooms)
    direct, proxied = web_app(db), web_app(db, trusted_proxies=1)
    try:
        def cookie_of(app: Flask, **kw: object) -> str:
            resp = app.test_client().get("/login", **kw)
            return next(h for h in resp.headers.getlist("Set-Cookie") if h.startswith("session="))

        forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
        assert "Secure" not in cookie_of(direct)
        assert "Secure" in cookie_of(direct, base_url="https://campus.example")
        # Anyone can send X-Forwarded-Proto: without --proxy it is not believed.
        assert "Secure" not in cookie_of(direct, headers=forwarded)
        assert "Secure" in cookie_of(proxied, headers=forwarded)
        for header in (cookie_of(direct), cookie_of(proxied, headers=forwarded)):
            assert "HttpOnly" in header and "SameSite=Lax" in header and "Expires" not in header
    finally:
        close_app(direct)
        close_app(proxied)


# ---------------------------------------------------------------- guessing


@sqlite_only
def test_wrong_bearer_tokens_are_limited_per_address(app: Flask) -> None:
    attacker = app.test_client()
    elsewhere = {"REMOTE_ADDR": "192.0.2.50"}
    codes = [attacker.get("/api/gateways", headers={"Authorization": f"Bearer guess-{i}"}).status_code
             for i in range(25)]
    assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
    # Even the right token from that address waits: guessing gains nothing.
    right = {"Authorization": f"Bearer {app.tokens['facility']}"}
    limited = attacker.get("/api/gateways", headers=right)
    assert limited.status_code == 429 and "wait a minute" in limited.get_json()["error"]
    assert attacker.get("/api/gateways", headers=right, environ_base=elsewhere).status_code == 200
    trail = central(app).registry.audit_trail()
    assert any(r["action"] == "refused" and r["detail"].startswith("429") for r in trail)


@sqlite_only
def test_failed_logins_are_limited_per_address_whatever_the_name(app: Flask) -> None:
    """Spraying one password over many user names: the per-name limit alone never triggers."""
    assert web(app).login_address_limiter.per_minute == LOGIN_FAILURES_PER_ADDRESS_PER_MIN == 30
    web(app).login_address_limiter = RateLimiter(5)  # the same mechanism, fewer slow hashes
    attacker = app.test_client()
    token = csrf(attacker)
    codes = [attacker.post("/login", data={"csrf": token, "username": f"user{i}", "password": "Summer2025"}).status_code
             for i in range(7)]
    assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}
    right = attacker.post("/login", data={"csrf": token, "username": "fm", "password": PASSWORD["facility"]})
    assert right.status_code == 429
    elsewhere = app.test_client()
    assert login(elsewhere, "facility", environ_base={"REMOTE_ADDR": "192.0.2.60"}).status_code == 302


def test_rate_limiter_forgets_idle_keys_rather_than_grow() -> None:
    limiter = RateLimiter(3)
    limiter.MAX_KEYS = 100
    for i in range(100):
        limiter.failed(f"name{i}")
    for times in limiter.hits.values():
        times[-1] -= 61  # a minute later
    limiter.failed("one more")
    assert list(limiter.hits) == ["one more"]


@pytest.mark.parametrize("token", ["", "x", "fifteen-chars!!", " sixteen-chars-x ", "sixteen\tchars-xx"])
def test_short_or_odd_admin_tokens_are_refused(token: str) -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        check_token(token, "--admin-token")
    assert check_token("sixteen-chars-xx") == "sixteen-chars-xx"


# ---------------------------------------------------------------- secrets never in a log line


def test_a_database_error_logs_no_password_hash(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    """Two registrations whose broker user names collide ("a-b"/"c" and "a"/"b-c" both give gw-a-b-c)
    failed inside the database; the traceback in the log held the new gateway's password hash."""
    client = app.test_client()
    login(client, "admin")
    token = csrf(client, "/provisioning/gateways")
    caplog.set_level(logging.DEBUG)
    for school, gateway in (("a-b", "c"), ("a", "b-c")):
        client.post("/provisioning/gateways", data={"csrf": token, "school": school, "room": "1", "gateway": gateway})
    logged = "\n".join(caplog.text.splitlines() + [r.exc_text or "" for r in caplog.records])
    assert "$7$" not in logged
    hashes = [h for (h,) in sql(central(app).registry, "SELECT mqtt_password_hash FROM registered_gateways")]
    assert hashes and not any(h.split("$")[-1] in logged for h in hashes)


@pytest.mark.parametrize("parse, url, secret", [
    (parse_mqtt_url, "mqtt://gw-1:S3cret-pass@broker:99999", "S3cret-pass"),
    (parse_mqtt_url, "mqtt://gw-1:S3cret/pass@broker", "S3cret"),
    (parse_mqtt_url, "http://gw-1:S3cret-pass@broker", "S3cret-pass"),
    (parse_store_url, "influxdb://tsdb:8086?org=o&token=T0ken-abc", "T0ken-abc"),
    (parse_store_url, "influxdb://tsdb:8086?token=T0ken-abc&bucket=b&oops=1", "T0ken-abc"),
])
def test_url_errors_never_show_a_password_or_token(parse, url: str, secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(url)
    assert secret not in str(info.value) and "***" in str(info.value)
    assert secret not in redacted(url)


# ---------------------------------------------------------------- the command line


@pytest.mark.slow
@pytest.mark.parametrize("command", ["web", "demo"])
def test_a_short_admin_token_is_one_line_and_exit_2(tmp_path: Path, command: str) -> None:
    args = ["--store", f"sqlite:///{tmp_path}/c.db"] if command == "web" else ["--data-dir", str(tmp_path / "d")]
    result = subprocess.run([sys.executable, "-m", "programs.cli", command, *args, "--admin-token", "x",
                             "--http-port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "campus: error: --admin-token needs at least 16 characters, no spaces at either end and no control "
        "characters (got 1 characters)"]
    assert not (tmp_path / "d").exists()  # refused before anything started


@pytest.mark.slow
def test_campus_web_behind_a_proxy(tmp_path: Path) -> None:
    """A real `campus web --proxy 1`: headers on the wire, Secure cookie when the proxy says HTTPS,
    and the admin's first password in a 0600 file, not in the log."""
    port = free_port()
    web = CampusProcess(["web", "--store", f"sqlite:///{tmp_path}/central.db", "--http-port", str(port),
                         "--proxy", "1", "--admin-token", "a-long-enough-admin-token"], tmp_path / "web.log").start()
    try:
        base = f"http://127.0.0.1:{port}"

        def get(path: str, **headers: str):
            with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=5) as resp:
                return resp.headers
        wait_until(lambda: "campus web: http://" in web.output(), 30, message="campus web up")
        plain = get("/login")
        assert_security_headers(plain, "campus web")
        assert "Secure" not in plain["Set-Cookie"]
        tls = get("/login", **{"X-Forwarded-Proto": "https"})
        assert "Secure" in tls["Set-Cookie"] and "Strict-Transport-Security" in tls
    finally:
        web.stop()
    secret_file = tmp_path / "admin-password.txt"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    password = secret_file.read_text().split()[1]
    log = web.output()
    assert password not in log and "a-long-enough-admin-token" not in log and str(secret_file) in log


# ---------------------------------------------------------------- in a browser: the policy and the pages


@pytest.mark.slow
def test_pages_work_under_the_policy_in_chromium(tmp_path: Path) -> None:
    """Every page of every area in headless Chromium, served by the real server: each page's script
    runs (the board and alarm lists fill in, the panel goes live, the history draws its charts) and
    the browser reports no Content-Security-Policy violation and no script error. The panel cannot be
    framed; and Chromium itself agrees that no Location the login gives leaves the site."""
    from playwright.sync_api import expect, sync_playwright

    from dashboards.server import serve

    app = web_app(central_db(tmp_path, two_rooms))
    register_rooms(app)
    add_people(app)
    server = serve(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            try:
                page = browser.new_page()
                violations: list[str] = []
                errors: list[str] = []
                page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text
                        else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                # Violations are also events in the page: collect them there too (not every one is logged).
                page.add_init_script("""document.addEventListener("securitypolicyviolation", e =>
                    (window.cspViolations = window.cspViolations || []).push(e.violatedDirective + " " + e.blockedURI));""")

                def visit(path: str) -> None:
                    page.goto(base + path)
                    page.wait_for_load_state("load")

                def clean(path: str) -> None:
                    assert page.evaluate("window.cspViolations || []") == [], path
                    assert violations == [] and errors == [], (path, violations, errors)

                visit("/login")
                page.fill("input[name=username]", NAME["admin"])
                page.fill("input[name=password]", PASSWORD["admin"])
                page.click("button[type=submit]")
                page.wait_for_url(base + "/")
                expect(page.locator("#updated")).to_contain_text("Updated")      # rooms.js ran
                expect(page.locator("#rooms section.room")).to_have_count(2)
                clean("/")
                visit("/panel/gw-101")
                expect(page.locator("#live")).to_have_text("Live", timeout=15_000)  # panel.js + its event stream
                clean("/panel/gw-101")
                for path in ("/health/", "/health/alarms"):
                    visit(path)
                    expect(page.locator("#updated")).to_contain_text("Updated")   # health.js ran and fetched
                    clean(path)
                visit("/health/rooms/gw-101")
                expect(page.locator("#charts svg").first).to_be_visible(timeout=15_000)
                clean("/health/rooms/gw-101")
                for path in ("/health/usage", "/health/thresholds", "/health/schedules", "/provisioning/gateways",
                             "/provisioning/gateways/gw-101", "/provisioning/import", "/provisioning/places"):
                    visit(path)
                    clean(path)

                # Framed by another page: Chromium refuses to show the panel inside it.
                page.set_content(f'<iframe id="f" src="{base}/panel/gw-101"></iframe>')
                frame = page.frame_locator("#f")
                wait_until(lambda: len(page.frames) == 2 and page.frames[1].url != "about:blank", 15,
                           message="the iframe to load or be refused")
                assert not page.frames[1].url.startswith(base), page.frames[1].url  # an error page instead
                expect(frame.locator("#panel")).to_have_count(0)

                # The oracle: Chromium's own URL parser, on what the login answers and on the raw attacks.
                page.goto(base + "/login")
                locations = [safe_target(t, "/") for t in HOSTILE_NEXT + list(GOOD_NEXT)]
                origins = page.evaluate("(locs) => locs.map(l => new URL(l, location.href).origin)", locations)
                assert set(origins) == {base}
                raw = page.evaluate("(locs) => locs.map(l => new URL(l, location.href).host)", HOSTILE_NEXT[:6])
                assert all(host == "evil.example" for host in raw)  # the attacks are real
            finally:
                browser.close()
    finally:
        server.shutdown()
        close_app(app)
