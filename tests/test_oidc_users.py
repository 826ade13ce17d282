"""Who a platform sign-in is (central/oidc_users.py) and what its claims say (dashboards/oidc.py's config
and claim mapping), without the provider: the rules that decide accounts, on a real registry."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from campus.errors import ConfigError
from campus.net import free_port
from central.oidc_users import NO_ROLE, Identity, IdentityRefused, sign_in
from central.registry import Registry
from dashboards import close_app
from dashboards.context import central
from dashboards.oidc import ClaimsRefused, OidcConfig, identity, parse_role_map
from tests.apps import central_db, register_rooms, two_rooms, web_app

ISSUER = "https://idp.edu.example"
SECRET = "a-client-secret-nobody-may-see"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(f"sqlite:///{tmp_path / 'campus.db'}")
    for gateway, room in (("gw-101", "101"), ("gw-102", "102")):
        reg.register_gateway(gateway, "s1", room)
    try:
        yield reg
    finally:
        reg.close()


def config(**kw: object) -> OidcConfig:
    return OidcConfig(**{"issuer": ISSUER, "client_id": "campus", "client_secret": SECRET, **kw})  # type: ignore[arg-type]


def test_the_claims_give_the_account_name_the_highest_mapped_role_rooms_and_schools() -> None:
    c = config(user_claim="staff_no", role_map={"教师": "teacher", "信息中心": "admin", "后勤": "facility"})
    who = identity(c, {"iss": ISSUER, "sub": "u1", "staff_no": "T1001",
                       "campus_role": ["后勤", "教师", "学生"],
                       "campus_rooms": ["s1:101", "bad", "s1:"], "campus_schools": "s1"})
    assert (who.username, who.subject, who.role) == ("T1001", "u1", "facility")
    assert who.rooms == (("s1", "101"),) and who.schools == ("s1",)
    # Without a map, the role names mean themselves, and nothing else is a role.
    assert identity(config(), {"iss": ISSUER, "sub": "u2", "campus_role": "teacher"}).role == "teacher"
    assert identity(config(), {"iss": ISSUER, "sub": "u2", "campus_role": "教师"}).role is None
    absent = identity(config(), {"iss": ISSUER, "sub": "u3"})
    assert (absent.role, absent.rooms, absent.schools) == (None, None, None)  # what an admin set stays
    with pytest.raises(ClaimsRefused, match="no 'staff_no' claim"):
        identity(c, {"iss": ISSUER, "sub": "u1"})
    with pytest.raises(ClaimsRefused, match="cannot be a user name"):
        identity(c, {"iss": ISSUER, "sub": "u1", "staff_no": "王 老师"})


def test_the_config_refuses_what_would_be_unsafe_and_never_shows_the_secret(tmp_path: Path) -> None:
    assert SECRET not in repr(config()) and "client_secret" not in repr(config())
    for bad, says in (({"issuer": "http://idp.edu.example"}, "https://"),
                      ({"client_secret": ""}, "CLIENT_SECRET"),
                      ({"scope": "profile"}, "openid"), ({"role_map": {"x": "root"}}, "x=root")):
        with pytest.raises(ConfigError, match=says):
            config(**bad)
    assert config(issuer="http://127.0.0.1:8080").metadata_url == "http://127.0.0.1:8080/.well-known/openid-configuration"
    with pytest.raises(ConfigError, match="'teacher'"):
        parse_role_map("teacher")
    assert parse_role_map("教师=teacher, a=b=admin") == {"教师": "teacher", "a=b": "admin"}

    env = {"CAMPUS_OIDC_ISSUER": ISSUER, "CAMPUS_OIDC_CLIENT_ID": "from-env",
           "CAMPUS_OIDC_CLIENT_SECRET": SECRET,
           "CAMPUS_OIDC_ROLE_MAP": "教师=teacher"}
    made = OidcConfig.from_options({"client_id": "from-option"}, env)
    assert made is not None and (made.client_id, made.client_secret, dict(made.role_map)) == (
        "from-option", SECRET, {"教师": "teacher"})
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    assert OidcConfig.from_options({}, env, secret_file=str(secret_file)).client_secret == "from-a-file"
    assert OidcConfig.from_options({}, {}) is None  # no issuer: local passwords only


def test_accounts_are_matched_bound_or_made_and_never_taken_over(registry: Registry) -> None:
    teacher = Identity(ISSUER, "sub-1", "t.wang", role="teacher", rooms=(("s1", "101"), ("s1", "999")),
                       schools=("s1",))
    first = sign_in(registry, teacher)
    # A teacher has rooms, not schools; the unknown room is left out.
    assert (first["role"], first["rooms"], first["schools"]) == ("teacher", ["101"], [])
    # The platform renamed the person: still the same account (issuer and subject decide).
    assert sign_in(registry, Identity(ISSUER, "sub-1", "wang.t"))["user"] == "t.wang"
    # Claims without a role or rooms leave what is there (an admin's assignment).
    registry.add_user("t.wang", None, "facility")
    assert sign_in(registry, Identity(ISSUER, "sub-1", "t.wang"))["role"] == "facility"

    with pytest.raises(IdentityRefused, match="another person"):
        sign_in(registry, Identity(ISSUER, "sub-2", "t.wang", role="admin"))  # another person, same name
    with pytest.raises(IdentityRefused, match="break-glass"):
        sign_in(registry, Identity(ISSUER, "sub-3", "admin", role="admin"))
    assert registry.principal("admin") is None and registry.principal("t.wang")["role"] == "facility"

    newcomer = sign_in(registry, Identity(ISSUER, "sub-4", "n.new"))
    assert newcomer["role"] == NO_ROLE and registry.check_password("n.new", "") is None


def test_an_admin_gives_a_platform_account_a_role_without_a_password(registry: Registry) -> None:
    sign_in(registry, Identity(ISSUER, "sub-4", "n.new"))
    registry.add_user("f.local", "local-password", "facility")
    result = subprocess.run([sys.executable, "-m", "programs.cli", "users", "add", "n.new", "--role",
                             "teacher", "--room", "s1:102", "--no-password", "--db", registry.url],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert registry.principal("n.new")["rooms"] == ["102"]
    registry.add_user("f.local", None, "teacher", rooms=[("s1", "102")])  # what --no-password does
    assert registry.check_password("f.local", "local-password")["role"] == "teacher"  # its password kept


def test_campus_web_with_a_wrong_platform_config_stops_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "CAMPUS_OIDC_CLIENT_SECRET": SECRET}
    result = subprocess.run([sys.executable, "-m", "programs.cli", "web", "--store", f"sqlite:///{tmp_path}/p.db",
                             "--oidc-issuer", "http://idp.edu.example", "--oidc-client-id", "campus"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0 and "https://" in result.stderr and len(result.stderr.splitlines()) == 1
    assert SECRET not in result.stderr + result.stdout


def test_an_account_without_a_role_is_refused_everywhere_even_with_an_api_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = web_app(central_db(tmp_path, two_rooms), monkeypatch)
    try:
        register_rooms(app)
        reg = central(app).registry
        sign_in(reg, Identity(ISSUER, "sub-9", "n.none"))
        token = reg.issue_token("n.none")  # an admin's slip: the account still has no rights
        client = app.test_client()
        for path in ("/api/gateways", "/api/devices", "/api/schools"):
            answer = client.get(path, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 403 and "no role" in answer.get_json()["error"], path
    finally:
        close_app(app)


def test_a_platform_that_cannot_be_reached_is_a_502_page_and_the_local_login_still_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = web_app(central_db(tmp_path, two_rooms), monkeypatch,
                  oidc=config(issuer=f"http://127.0.0.1:{free_port()}", name="平台"))  # nothing listens there
    try:
        central(app).registry.add_user("it", "it-password", "admin")
        client = app.test_client()
        page = client.get("/login")
        assert "Sign in with 平台" in page.get_data(as_text=True)
        answer = client.get("/login/oidc")
        assert answer.status_code == 502 and "cannot be reached" in answer.get_data(as_text=True)
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
        login = client.post("/login", data={"csrf": csrf, "username": "it", "password": "it-password"})
        assert login.status_code == 302 and client.get("/api/gateways").status_code == 200
    finally:
        close_app(app)
