"""A real OpenID provider for the sign-in tests: the certified `oidc-provider` package under Node
(tests/oidc/provider.mjs, its version pinned by tests/oidc/package-lock.json), and a small browser
(requests, following redirects and posting the provider's forms) to drive its login, consent and
logout pages.

The pinned release is 8.8.1, the newest of the 8 line: 9.x wants Node 22 (it warns on 20 and fails on
Debian 12's Node 18 with "URL.parse is not a function"), while 8.8.1 runs on 18 and 20 alike, so the
test runs on this machine's Node and on one scripts/test installs from Debian.

Node's packages are installed with `npm ci` into a cache directory named after the lock file's hash
(~/.cache/campus-iot/oidc-provider-HASH, or under $XDG_CACHE_HOME), once per machine and lock: the
work tree stays clean and a second run starts the provider in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

from campus.net import free_port, wait_for_port
from tests.servers import ServerProcess

HERE = Path(__file__).parent / "oidc"
NODE = shutil.which("node")
NPM = shutil.which("npm")
NO_NODE = "node and npm are not installed (scripts/test installs Debian's nodejs and npm)"


def provider_dir() -> Path:
    """The cache directory holding the provider script and its node_modules, installed if missing."""
    if NODE is None or NPM is None:
        pytest.skip(NO_NODE)
    lock = (HERE / "package-lock.json").read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "campus-iot"
    where = cache / f"oidc-provider-{hashlib.sha256(lock).hexdigest()[:16]}"
    if not (where / "node_modules" / "oidc-provider").is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix="oidc-provider-", dir=cache))
        for name in ("package.json", "package-lock.json"):
            shutil.copy(HERE / name, building / name)
        result = subprocess.run([NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=building,
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            raise RuntimeError(f"npm ci for the test OpenID provider failed:\n{result.stderr[-3000:]}")
        try:
            building.rename(where)  # whole or not at all; another run may have won the race
        except OSError:
            shutil.rmtree(building, ignore_errors=True)
    shutil.copy(HERE / "provider.mjs", where / "provider.mjs")  # imports resolve beside node_modules
    return where


class OidcProvider(ServerProcess):
    """`oidc-provider` on 127.0.0.1:port with one confidential client (PKCE required) and `accounts`
    (subject -> claims). Log in at its pages with the subject as login and any password."""

    def __init__(self, workdir: Path, client: dict[str, Any], accounts: dict[str, dict[str, Any]]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = {"port": self.port, "client": client, "accounts": accounts}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        where = provider_dir()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.workdir / "oidc-provider.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([NODE or "node", str(where / "provider.mjs"), json.dumps(self.config)],
                                     stdout=self.log, stderr=self.log, cwd=where)
        deadline = time.monotonic() + 30
        while self.alive() and time.monotonic() < deadline:  # a provider that dies is reported at once
            try:
                wait_for_port("127.0.0.1", self.port, timeout=0.5)
                return
            except TimeoutError:
                continue
        self.stop()
        raise RuntimeError("the OpenID provider did not start: "
                           + (self.workdir / "oidc-provider.log").read_text(errors="replace")[-3000:])


class _Forms(HTMLParser):
    """The forms of a page: action, id and the named inputs' values."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action") or "", "id": a.get("id"), "fields": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value") or ""
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")


def forms(page: requests.Response) -> list[dict[str, Any]]:
    """The forms of `page`, actions made absolute."""
    parser = _Forms()
    parser.feed(page.text)
    for form in parser.forms:
        form["action"] = urljoin(page.url, form["action"])
    return parser.forms


def links(page: requests.Response) -> list[str]:
    parser = _Forms()
    parser.feed(page.text)
    return [urljoin(page.url, href) for href in parser.links]


def prompt(page: requests.Response) -> str | None:
    """Which of the provider's interaction pages this is: 'login', 'consent', or None."""
    for form in forms(page):
        if form["fields"].get("prompt") in ("login", "consent"):
            return form["fields"]["prompt"]
    return None


def submit(browser: requests.Session, page: requests.Response, extra: dict[str, str] | None = None,
           form_id: str | None = None) -> requests.Response:
    """Post the page's (first, or `form_id`) form with its own fields and `extra`, following redirects."""
    form = next(f for f in forms(page) if form_id is None or f["id"] == form_id)
    return browser.post(form["action"], data={**form["fields"], **(extra or {})}, timeout=30)


def interact(browser: requests.Session, page: requests.Response, login: str) -> requests.Response:
    """Answer the provider's login and consent pages (as a person would) until it sends the browser back."""
    for _ in range(4):
        step = prompt(page)
        if step == "login":
            page = submit(browser, page, {"login": login, "password": "any password"})
        elif step == "consent":
            page = submit(browser, page)
        else:
            return page
    raise AssertionError(f"the provider kept asking: {page.url}")


def csrf_of(page: requests.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, f"no CSRF token on {page.url}"
    return found.group(1)
