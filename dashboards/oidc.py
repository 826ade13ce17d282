"""Sign-in with the education platform: OpenID Connect, authorization code with PKCE (docs/oidc.md).

A district's education platform (its identity provider, "一人一号") signs people in; campus-iot is one
of its relying parties. Authlib's Flask client does the protocol: discovery from the issuer URL, the
authorization redirect with `state`, `nonce` and an S256 code challenge (kept in the server-side session,
dashboards/sessions.py), the code exchange with the client secret and the verifier, and the ID token's
checks (signature by the provider's published keys, `iss`, `aud`, `exp`, `iat`, `nonce`). This module
adds what Authlib leaves to its user:

- the discovery document's `issuer` must be the configured one (OpenID Connect Discovery 4.3), and an
  `iss` in the callback (RFC 9207) must be too: no mix-up with another provider;
- the userinfo answer is for the same `sub` as the ID token (OpenID Connect Core 5.3.2);
- the claims become an account (central/oidc_users.py): matched by issuer and subject, else by the
  configured claim; role, rooms and schools mapped from claims, else as an admin set them; a person
  with no role gets a page saying so and no session;
- every failed callback (no or a forged `state`, `error=` from the provider, a wrong `nonce`, a code
  used twice) is one 400 page naming what was wrong, audited, and logs nobody in; a provider that
  cannot be reached is a 502 page;
- logout ends the local session and, when the provider publishes an `end_session_endpoint`, sends the
  browser there with `id_token_hint` and `post_logout_redirect_uri` (RP-initiated logout).

The client secret comes from the environment or a file, never from the command line, and is never
logged (OidcConfig's repr leaves it out).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.flask_client import OAuth
from flask import Blueprint, Flask, current_app, redirect, render_template, request, session, url_for
from flask_babel import gettext
from joserfc.errors import JoseError

from campus import names
from campus.errors import ConfigError
from campus.i18n import lazy_gettext, message_of
from central.oidc_users import NO_ROLE, Identity, IdentityRefused, sign_in
from central.registry import ROLES
from dashboards.auth import audit, home_for
from dashboards.context import central
from dashboards.i18n import error_text
from dashboards.security import safe_target

log = logging.getLogger(__name__)

bp = Blueprint("oidc", __name__)
EXTENSION = "campus_oidc"
CLIENT = "campus_oidc"  # the name of the one Authlib client (its state keys in the session carry it)
HTTP_TIMEOUT_S = 10
# Where the ID token is kept for the logout's id_token_hint (the session is a database row, not a cookie).
ID_TOKEN_KEY = "oidc_id_token"
ENV = "CAMPUS_OIDC_"


@dataclass(frozen=True)
class OidcConfig:
    """How this site signs people in with its education platform (`campus web --oidc-*`, CAMPUS_OIDC_*)."""
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    name: str = "the education platform"  # on the button: "Sign in with <name>"
    scope: str = "openid profile"
    user_claim: str = "sub"  # the claim whose value is the campus-iot user name
    role_claim: str = "campus_role"
    # Claim value -> role; empty: values that are role names (admin, facility, teacher) mean themselves.
    role_map: Mapping[str, str] = field(default_factory=dict)
    rooms_claim: str = "campus_rooms"  # a list of "SCHOOL:ROOM"
    schools_claim: str = "campus_schools"  # a list of school ids

    def __post_init__(self) -> None:
        parts = urlsplit(self.issuer)
        if parts.scheme != "https" and not (parts.scheme == "http" and _loopback(parts.hostname or "")):
            raise ConfigError(f"--oidc-issuer {self.issuer!r}: an https:// URL "
                              "(http:// only on this machine)")
        if not self.client_id:
            raise ConfigError("--oidc-client-id: required with --oidc-issuer")
        if not self.client_secret:
            raise ConfigError(f"{ENV}CLIENT_SECRET (or --oidc-client-secret-file): required with "
                              "--oidc-issuer")
        if "openid" not in self.scope.split():
            raise ConfigError(f"--oidc-scope {self.scope!r}: must include openid")
        for value, role in self.role_map.items():
            if role not in ROLES:
                raise ConfigError(f"--oidc-role-map {value}={role}: the role is not one of "
                                  f"{', '.join(ROLES)}")

    @classmethod
    def from_options(cls, options: Mapping[str, str | None], environ: Mapping[str, str] = os.environ,
                     secret_file: str | None = None) -> OidcConfig | None:
        """The config from command-line `options` (keys: the field names; None: not given), each falling
        back to CAMPUS_OIDC_<FIELD>; None when no issuer is set (sign-in with a platform is off). The
        secret: `secret_file`'s first line, else CAMPUS_OIDC_CLIENT_SECRET."""
        values = {key: options.get(key) or environ.get(ENV + key.upper()) for key in (
            "issuer", "client_id", "name", "scope", "user_claim", "role_claim", "role_map", "rooms_claim",
            "schools_claim")}
        if not values["issuer"]:
            return None
        secret = environ.get(ENV + "CLIENT_SECRET", "")
        if secret_file:
            try:
                with open(secret_file, encoding="utf-8") as f:
                    secret = f.readline().strip()
            except OSError as exc:
                raise ConfigError(f"--oidc-client-secret-file {secret_file}: {exc.strerror}") from None
        kwargs: dict[str, Any] = {k: v for k, v in values.items() if v and k != "role_map"}
        return cls(client_secret=secret, role_map=parse_role_map(values["role_map"] or ""), **kwargs)

    @property
    def metadata_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_role_map(text: str) -> dict[str, str]:
    """`VALUE=ROLE,VALUE=ROLE` (e.g. `教师=teacher,信息中心=admin`) as a dict; ConfigError naming a bad
    pair."""
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        value, sep, role = item.rpartition("=")
        if not sep or not value.strip():
            raise ConfigError(f"--oidc-role-map {item!r}: write CLAIM-VALUE=ROLE, pairs separated by commas")
        pairs[value.strip()] = role.strip()
    return pairs


class ClaimsRefused(Exception):
    """The provider's claims cannot name an account (the user-name claim is missing or no valid name)."""


def identity(config: OidcConfig, claims: Mapping[str, Any]) -> Identity:
    """What the claims say: who (issuer and subject; the account name from `user_claim`) and, where the
    claims say it, the role (the highest of the mapped values: a head teacher who is also IT staff is
    admin), the rooms and the schools."""
    raw = claims.get(config.user_claim)
    if not isinstance(raw, str) or not raw:
        raise ClaimsRefused(lazy_gettext("the platform sent no %(claim)r claim to name your account by",
                                         claim=config.user_claim))
    try:
        username = names.identifier(raw, config.user_claim)
    except names.BadName as exc:
        raise ClaimsRefused(lazy_gettext("the %(claim)r claim cannot be a user name here: %(why)s",
                                         claim=config.user_claim, why=message_of(exc))) from None
    role = None
    if config.role_claim in claims:
        values = _strings(claims[config.role_claim])
        mapped = {config.role_map.get(v, v if not config.role_map else "") for v in values}
        role = next((r for r in ROLES if r in mapped), None)  # ROLES is ordered from most to least
    rooms = None
    if config.rooms_claim in claims:
        rooms = tuple((school, room) for school, sep, room in (v.partition(":") for v in
                      _strings(claims[config.rooms_claim])) if sep and school and room)
    schools = tuple(_strings(claims[config.schools_claim])) if config.schools_claim in claims else None
    return Identity(issuer=str(claims["iss"]), subject=str(claims["sub"]), username=username, role=role,
                    rooms=rooms, schools=schools)


def _strings(value: object) -> list[str]:
    """A claim as a list of strings: a string is one, a list keeps its strings; anything else is none."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def install(app: Flask, config: OidcConfig) -> None:
    """Sign-in with `config`'s platform on `app`: the routes, and the button on the login page. Nothing is
    fetched now: discovery happens at the first sign-in, so a platform that is down does not keep the
    dashboard (and its local break-glass login) from starting."""
    oauth = OAuth(app)
    oauth.register(CLIENT, client_id=config.client_id, client_secret=config.client_secret,
                   server_metadata_url=config.metadata_url,
                   client_kwargs={"scope": config.scope, "code_challenge_method": "S256",
                                  "default_timeout": HTTP_TIMEOUT_S})
    app.extensions[EXTENSION] = (config, oauth.create_client(CLIENT))
    app.register_blueprint(bp)


def _state() -> tuple[OidcConfig, Any]:
    return current_app.extensions[EXTENSION]


@bp.app_context_processor
def _inject() -> dict[str, Any]:
    return {"oidc_name": _state()[0].name}


def _metadata(config: OidcConfig, client: Any) -> dict[str, Any]:
    """The provider's discovery document (fetched once), checked to be the configured issuer's."""
    metadata = client.load_server_metadata()
    if str(metadata.get("issuer", "")).rstrip("/") != config.issuer.rstrip("/"):
        raise ProviderMismatch(f"the discovery document names the issuer {metadata.get('issuer')!r}, "
                               f"not {config.issuer!r}")
    return metadata


class ProviderMismatch(Exception):
    """The provider's answer is not from the configured issuer."""


def _refused(status: int, message: str, user: str = "") -> Any:
    audit("login", f"platform sign-in refused: {message}", ok=False, user=user)
    return render_template("error.html", status=status, message=message), status


def _unreachable(exc: Exception) -> Any:
    log.warning("sign-in with the platform: %s", exc)
    return _refused(502, gettext("The education platform cannot be reached now; try again soon, or log in "
                                 "with a local password."))


@bp.route("/login/oidc")
def login() -> Any:
    """Off to the platform's sign-in page; back at `callback`."""
    config, client = _state()
    try:
        _metadata(config, client)
        session["oidc_next"] = safe_target(request.args.get("next"), "")
        return client.authorize_redirect(url_for("oidc.callback", _external=True))
    except (requests.RequestException, ValueError, ProviderMismatch, RuntimeError) as exc:
        return _unreachable(exc)  # RuntimeError: Authlib's word for metadata without an endpoint it needs


@bp.route("/login/oidc/callback")
def callback() -> Any:
    config, client = _state()
    try:
        metadata = _metadata(config, client)
        iss = request.args.get("iss")
        if iss is not None and iss.rstrip("/") != config.issuer.rstrip("/"):
            return _refused(400, gettext("Sign-in refused: the answer names another issuer (%(iss)s).",
                                         iss=iss[:200]))
        # State, PKCE verifier and nonce come back out of the session; the ID token is checked here.
        token = client.authorize_access_token(
            claims_options={"iss": {"essential": True, "values": [metadata["issuer"]]}})
        claims = dict(token.get("userinfo") or {})
        if not claims or "id_token" not in token:
            return _refused(400, gettext("Sign-in refused: the platform sent no ID token."))
        if metadata.get("userinfo_endpoint"):
            more = client.userinfo(token=token)
            if more.get("sub") != claims["sub"]:
                return _refused(400, gettext("Sign-in refused: the platform's user information is for "
                                             "another person than its ID token."))
            claims = {**more, **claims}
    except (requests.RequestException, ProviderMismatch, RuntimeError) as exc:
        return _unreachable(exc)
    except (AuthlibBaseError, JoseError, ValueError, KeyError) as exc:
        return _refused(400, gettext("Sign-in with %(name)s failed: %(why)s. Nothing was changed; start "
                                     "again from the login page.", name=config.name, why=_why(exc)))
    try:
        who = identity(config, claims)
        principal = sign_in(central().registry, who)
    except (ClaimsRefused, IdentityRefused) as exc:
        return _refused(403, gettext("Sign-in refused: %(why)s.", why=error_text(exc)), str(claims.get("sub", "")))
    if principal["role"] == NO_ROLE:
        return _refused(403, gettext("Your account %(user)s has no role in campus-iot yet, so it has no "
                                     "access. Ask your IT staff to assign you one; then sign in again.",
                                     user=principal["user"]), principal["user"])
    target = safe_target(session.get("oidc_next"), home_for(principal))
    session.clear()
    session["user"] = principal["user"]  # a new session id is issued with it (dashboards/sessions.py)
    session[ID_TOKEN_KEY] = token["id_token"]
    audit("login", f"ok, signed in with {config.name}", user=principal["user"])
    return redirect(target)


def _why(exc: Exception) -> str:
    """What went wrong, for the page: the provider's error code and description, or the check that failed."""
    error, description = getattr(exc, "error", ""), getattr(exc, "description", "") or ""
    text = f"{error}: {description}" if error and description else (error or description or str(exc) or
                                                                       type(exc).__name__)
    return text[:300]


def end_session_url() -> str | None:
    """Where logout sends the browser after the local session ends: the platform's end-session endpoint
    with this session's ID token and the login page to come back to, when the session came from the
    platform and the platform supports RP-initiated logout; else None (the login page). Read before the
    session is cleared."""
    if EXTENSION not in current_app.extensions or not session.get(ID_TOKEN_KEY):
        return None
    config, client = _state()
    try:
        if not _metadata(config, client).get("end_session_endpoint"):
            return None
        return client.create_logout_url(post_logout_redirect_uri=url_for("auth.login", _external=True),
                                        id_token_hint=session[ID_TOKEN_KEY],
                                        client_id=config.client_id)["url"]
    except (requests.RequestException, ValueError, ProviderMismatch, RuntimeError) as exc:
        log.warning("logout: the platform's session is not ended (%s)", exc)
        return None
