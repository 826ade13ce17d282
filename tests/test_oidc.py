"""Sign-in with the education platform (dashboards/oidc.py) against a real OpenID provider: the certified
`oidc-provider` under Node (tests/oidc_provider.py), with PKCE required, its own login, consent and
logout pages driven as a browser would (requests following redirects, posting the provider's forms),
and the dashboard served for real on another loopback port."""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit, urlunsplit

import pytest
import requests
from flask import Flask
from sqlalchemy import select

from campus.net import free_port
from central.registry import User
from dashboards import close_app
from dashboards.context import central
from dashboards.oidc import OidcConfig
from dashboards.server import RunningServer, serve
from tests.apps import central_db, register_rooms, two_rooms, web_app
from tests.oidc_provider import OidcProvider, csrf_of, interact, links, prompt, submit

pytestmark = pytest.mark.slow  # starts Node

SECRET = "campus-test-client-secret-0123456789"
ACCOUNTS = {  # subject (what one types as login at the provider) -> claims
    "T-1001": {"preferred_username": "t.wang", "name": "王老师", "campus_role": "教师",
               "campus_rooms": ["s1:101", "s9:999"]},
    "F-2001": {"preferred_username": "f.zhao", "campus_role": ["教师", "信息中心"], "campus_schools": ["s1"]},
    "N-3001": {"preferred_username": "n.new"},
    "N-3002": {"preferred_username": "n.nonce", "campus_role": "教师"},
    "X-4001": {"preferred_username": "admin", "campus_role": "信息中心"},
}


@dataclass
class Site:
    provider: OidcProvider
    app: Flask
    server: RunningServer
    url: str  # http://127.0.0.1:PORT

    def browser(self) -> requests.Session:
        """A new browser: no cookie of the dashboard nor of the provider."""
        return requests.Session()

    def user(self, name: str) -> User | None:
        with central(self.app).registry.session() as s:
            user = s.scalar(select(User).where(User.username == name))
            if user is not None:
                s.expunge(user)
            return user


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("oidc")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    provider = OidcProvider(tmp / "provider", {
        "client_id": "campus-web", "client_secret": SECRET, "redirect_uris": [f"{url}/login/oidc/callback"],
        "post_logout_redirect_uris": [f"{url}/login"]}, ACCOUNTS)
    provider.start()
    try:
        config = OidcConfig(issuer=provider.issuer, client_id="campus-web", client_secret=SECRET,
                            name="智慧教育平台", scope="openid profile campus",
                            user_claim="preferred_username",
                            role_map={"教师": "teacher", "信息中心": "admin"})
        mp = pytest.MonkeyPatch()
        app = web_app(central_db(tmp, two_rooms), mp, oidc=config)
        mp.undo()
        register_rooms(app)
        central(app).registry.add_user("f.zhao", "zhao-local-password", "facility")  # made before sign-in
        server = serve(app, "127.0.0.1", port)
        try:
            yield Site(provider, app, server, url)
        finally:
            server.shutdown()
            close_app(app)
    finally:
        provider.stop()


def sign_in(site: Site, browser: requests.Session, login: str) -> requests.Response:
    """Press the login page's button and answer the provider's pages as `login`; where the browser ends."""
    page = browser.get(f"{site.url}/login", timeout=30)
    button = next(link for link in links(page) if "/login/oidc" in link)
    return interact(browser, browser.get(button, timeout=30), login)


def gateways(site: Site, browser: requests.Session) -> requests.Response:
    return browser.get(f"{site.url}/api/gateways", timeout=30, allow_redirects=False)


def test_the_login_page_offers_the_platform_beside_the_local_form(site: Site) -> None:
    page = site.browser().get(f"{site.url}/login?next=/rooms", timeout=30)
    assert "Sign in with 智慧教育平台" in page.text and 'name="password"' in page.text
    assert f"{site.url}/login/oidc?next=/rooms" in links(page)


def test_a_teacher_signed_in_by_the_platform_has_the_mapped_role_and_sees_only_their_rooms(
        site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger of this process, the server's thread and Authlib's too
    browser = site.browser()
    start = browser.get(f"{site.url}/login/oidc", timeout=30, allow_redirects=False)
    query = parse_qs(urlsplit(start.headers["Location"]).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["state"] and query["nonce"] and query["client_id"] == ["campus-web"]
    assert "code_verifier" not in query  # the verifier stays on the server
    # The provider is set to require PKCE: the same request without the challenge is refused there.
    parts = urlsplit(start.headers["Location"])
    bare = {k: v[0] for k, v in query.items() if not k.startswith("code_challenge")}
    refused = browser.get(urlunsplit(parts._replace(query=urlencode(bare))), timeout=30,
                          allow_redirects=False).headers["Location"]
    assert "error=invalid_request" in refused and "PKCE" in unquote_plus(refused)
    landed = interact(browser, browser.get(start.headers["Location"], timeout=30), "T-1001")
    assert landed.status_code == 200 and landed.url.startswith(f"{site.url}/"), landed.text[:500]
    user = site.user("t.wang")
    assert user is not None and user.role == "teacher"
    assert (user.oidc_issuer, user.oidc_subject) == (site.provider.issuer, "T-1001")
    assert user.password_hash == ""  # no local password
    principal = central(site.app).registry.principal("t.wang")
    assert principal["rooms"] == ["101"]  # s9:999 is not in the registry: left out, the rest kept
    answer = gateways(site, browser)
    assert answer.status_code == 200 and [g["id"] for g in answer.json()] == ["gw-101"]
    assert browser.get(f"{site.url}/panel/gw-102", timeout=30, allow_redirects=False).status_code == 403

    assert "code_verifier" in caplog.text and SECRET not in caplog.text  # Authlib logged; the secret never

    # Again in another browser: the same account (matched by issuer and subject), not a second one.
    assert sign_in(site, site.browser(), "T-1001").status_code == 200
    with central(site.app).registry.session() as s:
        assert s.scalars(select(User.username).where(User.oidc_subject == "T-1001")).all() == ["t.wang"]


def test_an_account_made_before_is_bound_at_first_sign_in_and_keeps_its_local_password(site: Site) -> None:
    browser = site.browser()
    assert sign_in(site, browser, "F-2001").status_code == 200
    principal = central(site.app).registry.principal("f.zhao")
    # ["教师", "信息中心"]: the highest mapped role wins; the schools claim scopes the staff account.
    assert principal["role"] == "admin" and principal["schools"] == ["s1"]
    assert site.user("f.zhao").oidc_subject == "F-2001"
    assert central(site.app).registry.check_password("f.zhao", "zhao-local-password") is not None


def test_a_person_the_platform_gives_no_role_gets_a_clear_page_and_no_access_until_an_admin_assigns_one(
        site: Site) -> None:
    browser = site.browser()
    page = sign_in(site, browser, "N-3001")
    assert page.status_code == 403 and "n.new has no role in campus-iot yet" in html.unescape(page.text)
    assert gateways(site, browser).status_code == 401  # not logged in
    assert site.user("n.new").role == ""
    central(site.app).registry.add_user("n.new", None, "teacher", rooms=[("s1", "102")])  # what the CLI does
    assert sign_in(site, browser, "N-3001").status_code == 200  # the provider remembers the person: no prompt
    assert [g["id"] for g in gateways(site, browser).json()] == ["gw-102"]


def test_the_break_glass_admin_cannot_be_taken_by_a_platform_account(site: Site) -> None:
    page = sign_in(site, site.browser(), "X-4001")
    assert page.status_code == 403 and "break-glass" in page.text
    chinese = site.browser()
    chinese.headers["Accept-Language"] = "zh-CN"  # the refusal, its reason from central included, in Chinese
    page = sign_in(site, chinese, "X-4001")
    assert page.status_code == 403 and "登录被拒绝：账号 'admin' 是本地应急账号" in html.unescape(page.text)
    assert site.user("admin") is None or site.user("admin").oidc_subject is None


def test_hostile_callbacks_get_one_clear_400_and_change_nothing(site: Site) -> None:
    browser = site.browser()
    callback = f"{site.url}/login/oidc/callback"
    start = browser.get(f"{site.url}/login/oidc", timeout=30, allow_redirects=False)  # a real state pending
    state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
    for query, says in ((f"code=abc&state=forged-{state}", "mismatching_state"),
                        ("code=abc", "mismatching_state"),
                        (f"error=access_denied&error_description=End-User+aborted&state={state}",
                         "access_denied"),
                        (f"code=abc&state={state}&iss=https://evil.example", "another issuer")):
        page = browser.get(f"{callback}?{query}", timeout=30, allow_redirects=False)
        assert page.status_code == 400 and says in html.unescape(page.text), (query, page.text[:300])
        assert gateways(site, browser).status_code == 401

    # The person cancels at the provider: it sends error=access_denied back; still one 400.
    page = browser.get(f"{site.url}/login/oidc", timeout=30)
    abort = next(link for link in links(page) if link.endswith("/abort"))
    page = browser.get(abort, timeout=30)
    assert page.status_code == 400 and "access_denied" in page.text

    # A code issued for another nonce (an attacker's authorization request spliced into the victim's flow):
    # the ID token's nonce is not the session's, so nobody is signed in and no account is made.
    start = browser.get(f"{site.url}/login/oidc", timeout=30, allow_redirects=False)
    parts = urlsplit(start.headers["Location"])
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["nonce"] = "the-attackers-nonce"
    spliced = urlunsplit(parts._replace(query=urlencode(query)))
    page = interact(browser, browser.get(spliced, timeout=30), "N-3002")
    assert page.status_code == 400 and "nonce" in page.text, page.text[:500]
    assert site.user("n.nonce") is None and gateways(site, browser).status_code == 401


def test_logout_ends_the_local_session_and_the_platforms(site: Site) -> None:
    browser = site.browser()
    sign_in(site, browser, "T-1001")
    # While the platform's session lives, another sign-in goes through without its login page.
    home = browser.get(f"{site.url}/login/oidc", timeout=30)
    assert prompt(home) is None and home.url.startswith(f"{site.url}/panel/")
    out = browser.post(f"{site.url}/logout", data={"csrf": csrf_of(home)}, timeout=30, allow_redirects=False)
    end = urlsplit(out.headers["Location"])
    assert f"{end.scheme}://{end.netloc}" == site.provider.issuer
    hint = parse_qs(end.query)
    assert hint["post_logout_redirect_uri"] == [f"{site.url}/login"]
    assert hint["id_token_hint"][0].count(".") == 2  # the ID token this session was signed in with
    assert gateways(site, browser).status_code == 401  # the local session ended already
    confirm = browser.get(out.headers["Location"], timeout=30)
    back = submit(browser, confirm, {"logout": "yes"}, form_id="op.logoutForm")  # "Yes, sign me out"
    assert back.url.startswith(f"{site.url}/login?") and back.status_code == 200  # Authlib adds a state
    assert prompt(browser.get(f"{site.url}/login/oidc", timeout=30)) == "login"  # the platform asks again
