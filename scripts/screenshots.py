"""The README's three pictures, from one running `campus demo`, in one language (default zh-CN).

    python scripts/screenshots.py [--lang zh-CN|en] [--out DIR]

writes DIR/panel.png (the teacher's classroom panel, projector switched on), DIR/health.png (the facility
manager's alarms: a CO2 alarm raised in room 101 and acknowledged) and DIR/provisioning.png (IT's gateways
page, two rooms' device lists pushed and applied), each 1280x800; DIR defaults to docs/screenshots.

The pages are asked for as a browser in China asks (Accept-Language, the site's zone Asia/Shanghai), so
they show the language a school sees; `--lang en` makes the English ones. Headless Chromium is Debian's
(/usr/bin/chromium through the playwright package, tests/servers.py `launch_chromium`): Playwright never
downloads a browser. Chinese needs a CJK font (Debian's fonts-noto-cjk), else Chromium draws boxes.
The demo is started as the browser tests start it (tests/test_panel.py `start_demo`), so the script runs
in the test venv (`pip install -c constraints.txt -e '.[test]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Alarms are evaluated every second, not every default interval: the CO2 alarm shows within seconds.
os.environ.setdefault("CAMPUS_ALARM_INTERVAL", "1")
os.environ.setdefault("PYTHONUNBUFFERED", "1")

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

from tests.servers import launch_chromium, wait_until  # noqa: E402
from tests.test_panel import start_demo  # noqa: E402

VIEWPORT = {"width": 1280, "height": 800}


def api(base: str, token: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The demo's JSON API as the admin token (tests/test_health.py `_api` does the same)."""
    req = urllib.request.Request(f"{base}{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def log_in(browser: Browser, base: str, lang: str, user: str, password: str) -> Page:
    """A fresh browser (its own cookies) asking for `lang`, signed in as `user`."""
    context = browser.new_context(locale=lang, timezone_id="Asia/Shanghai", viewport=VIEWPORT)
    page = context.new_page()
    page.goto(f"{base}/login")
    expect(page.locator("html")).to_have_attribute("lang", lang)
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: not url.endswith("/login"))
    return page


def panel(browser: Browser, base: str, lang: str, password: str, out: Path) -> None:
    """The teacher's room: the projector switched on from the panel and confirmed by the device."""
    page = log_in(browser, base, lang, "teacher", password)
    page.wait_for_url(lambda url: url.endswith("/panel/gw-101"))
    projector = page.locator('.pcard[data-device="projector"]')
    power = projector.locator('[data-field="power"]')
    expect(power).to_have_attribute("data-power", "off", timeout=30_000)
    projector.locator('button[data-action="power_on"]').click()
    expect(power).to_have_attribute("data-power", "on", timeout=60_000)
    page.screenshot(path=str(out), animations="disabled")
    page.context.close()


def health(browser: Browser, base: str, lang: str, password: str, token: str, out: Path) -> None:
    """The facility manager's alarms: a CO2 alarm in room 101, acknowledged on the page."""
    def co2_alarm() -> dict[str, Any] | None:
        return next((a for a in api(base, token, "/api/alarms?state=open")
                     if a["gateway"] == "gw-101" and a["kind"] == "co2_above"), None)

    api(base, token, "/api/demo/simulators/gw-101/env", {"overrides": {"co2_ppm": 2100}})
    wait_until(co2_alarm, 60, 0.5, message="a CO2 alarm in room 101")
    page = log_in(browser, base, lang, "facility", password)
    page.goto(f"{base}/health/alarms")
    row = page.locator("#open-alarms tr[data-gateway='gw-101'][data-kind='co2_above']")
    expect(row).to_be_visible(timeout=30_000)
    row.locator("button").first.click()
    wait_until(lambda: (co2_alarm() or {}).get("acked_by") == "facility", 30, 0.5, message="the alarm acknowledged")
    page.reload()
    expect(row.locator("button")).to_have_count(0, timeout=15_000)
    page.screenshot(path=str(out), animations="disabled")
    page.context.close()


def provisioning(browser: Browser, base: str, lang: str, password: str, out: Path) -> None:
    """IT's gateways page: two rooms' device lists pushed and applied, the others not yet pushed."""
    page = log_in(browser, base, lang, "admin", password)
    for gw in ("gw-101", "gw-102"):
        page.goto(f"{base}/provisioning/gateways/{gw}")
        page.click("form[action$='/push'] button[type=submit]")
        page.wait_for_selector(".pflash")

    def applied() -> bool:
        page.goto(f"{base}/provisioning/gateways")
        return page.locator("tr[data-gateway] td:nth-child(6) .badge.ok").count() >= 2

    wait_until(applied, 60, 1, message="the pushed lists applied")
    page.screenshot(path=str(out), animations="disabled")
    page.context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lang", choices=["zh-CN", "en"], default="zh-CN")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc, base, logins, log_path = start_demo(Path(tmp), rooms=4, duration=600)
        try:
            with sync_playwright() as p:
                browser = launch_chromium(p)
                try:
                    panel(browser, base, args.lang, logins["teacher"], args.out / "panel.png")
                    health(browser, base, args.lang, logins["facility"], logins["token"], args.out / "health.png")
                    provisioning(browser, base, args.lang, logins["admin"], args.out / "provisioning.png")
                finally:
                    browser.close()
        except BaseException:
            print(log_path.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            proc.terminate()
            proc.wait(30)
    for name in ("panel.png", "health.png", "provisioning.png"):
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
