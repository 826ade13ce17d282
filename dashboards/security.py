"""What every response of the web app carries, and where a redirect may go.

Headers: Flask-Talisman (the maintained fork of Google's extension; no dependencies, a before- and an
after-request hook, so it keeps working across Flask 3 releases, which the tests check on every
response kind) sets the Content-Security-Policy, X-Frame-Options, X-Content-Type-Options,
Referrer-Policy and Permissions-Policy, and HSTS on HTTPS. The policy allows scripts, styles, images
and connections from this origin only: the pages keep no inline script or style (each page's script is
a file in static/, data for it sits in `<script type="application/json">`, which is not run), so no
'unsafe-inline' and no nonce are needed. `frame-ancestors 'none'` plus `X-Frame-Options: DENY`: no
page, the teacher's panel above all, can be framed by another site to trick a click.

Talisman's own HTTPS redirect and `Secure` cookie are off: a school LAN serves plain HTTP, where both
would lock everyone out. Whether a request came over HTTPS is decided by `request.is_secure`, which
Werkzeug's ProxyFix makes true behind a reverse proxy that says so (`campus web --proxy N`, trusting
the `X-Forwarded-*` headers of N proxies and no one else's); the session cookie is `Secure` exactly
then (dashboards/sessions.py).

Redirects: `safe_target` is the one gate for a redirect target that came with a request (`?next=`
after login, a form's `back`).
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from flask import Flask
from flask_talisman import Talisman
from werkzeug.middleware.proxy_fix import ProxyFix

SELF = "'self'"
CSP = {
    "default-src": SELF,
    "script-src": SELF,
    "style-src": SELF,
    "img-src": SELF,            # the charts are inline SVG (markup, not a fetched image)
    "connect-src": SELF,        # fetch() of the API and the panel's EventSource
    "font-src": SELF,
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": SELF,
    "frame-ancestors": "'none'",
}
PERMISSIONS = {"camera": "()", "microphone": "()", "geolocation": "()", "interest-cohort": "()"}


def install(app: Flask, trusted_proxies: int = 0) -> None:
    """Security headers on every response; with `trusted_proxies`, believe that many proxies' X-Forwarded-*."""
    Talisman(app,
             force_https=False,                  # plain HTTP on a school LAN must keep working
             session_cookie_secure=False,        # decided per request by dashboards/sessions.py
             session_cookie_http_only=True,
             session_cookie_samesite="Lax",
             frame_options="DENY",
             content_security_policy=CSP,
             referrer_policy="same-origin",      # no path or query of ours goes to another site
             permissions_policy=PERMISSIONS,
             strict_transport_security=True,     # sent only on HTTPS (or behind a proxy that says so)
             strict_transport_security_include_subdomains=False,  # other hosts of a school are not ours
             x_xss_protection=False)             # obsolete; it has been used to leak page contents
    if trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=trusted_proxies, x_proto=trusted_proxies,  # type: ignore[method-assign]
                                x_host=trusted_proxies, x_port=trusted_proxies)


# What a browser drops before it parses a URL (WHATWG URL Standard, "basic URL parser"): leading and
# trailing C0 controls and spaces, then every tab and newline anywhere; and for http(s) a backslash is
# a slash. "/%09/evil.example/" arrives here as "/\t/evil.example/", which a browser reads as
# "//evil.example/": another host. So the check is made on what the browser will see.
_EDGES = "".join(chr(c) for c in range(0x21))
_TAB_NEWLINE = re.compile(r"[\t\n\r]")
# Kept as they are when the target is re-encoded: RFC 3986's reserved and unreserved characters and '%'
# (existing escapes). Everything else (controls, spaces, quotes, non-ASCII) is percent-encoded.
_URI_SAFE = "/?#[]@!$&'()*+,;=:-._~%"


def safe_target(target: object, fallback: str) -> str:
    """`target` if, as a browser reads it, it is a path on this site; else `fallback`.

    The answer is a path starting with one "/" and then not a "/" or "\\", percent-encoded so that it
    holds no control character, space, backslash or non-ASCII character: no browser can read a host
    or a scheme out of it. Absolute URLs are refused even to this host (a path is all a form needs)."""
    if not isinstance(target, str):
        return fallback
    seen = _TAB_NEWLINE.sub("", target.strip(_EDGES)).replace("\\", "/")
    if not seen.startswith("/") or seen.startswith("//"):
        return fallback
    path = quote(seen, safe=_URI_SAFE)
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or len(path) > 2000:
        return fallback
    return path
