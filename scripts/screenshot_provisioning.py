"""Screenshot of the provisioning gateways page (docs/screenshots/provisioning.png, 1280x800).

Starts `campus demo` as a subprocess, logs in as admin (password from
DIR/logins.txt), pushes one gateway's device list so the page shows both
states, and photographs /provisioning/gateways in headless Chromium
(/usr/bin/chromium through the playwright package; no browser download).

    python scripts/screenshot_provisioning.py [OUT.png]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from campus.net import free_port  # noqa: E402


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "screenshots" / "provisioning.png")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo"
        port = free_port()
        log = open(Path(tmp) / "demo.log", "wb")  # noqa: SIM115
        demo = subprocess.Popen([sys.executable, "-m", "programs.cli", "demo", "--rooms", "4", "--http-port", str(port),
                                 "--data-dir", str(data), "--duration", "300"], stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT)
        try:
            def started() -> str:
                if demo.poll() is not None:
                    raise SystemExit(f"campus demo exited with {demo.returncode}; see its output:\n"
                                     + (Path(tmp) / "demo.log").read_text()[-3000:])
                path = data / "logins.txt"
                return path.read_text() if path.exists() else ""

            logins = wait_for(started, 120, "the demo's logins")
            password = next(line.split()[1] for line in logins.splitlines() if line.startswith("admin "))
            base = f"http://127.0.0.1:{port}"
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                            args=["--headless", "--no-sandbox", "--disable-gpu",
                                                  "--disable-background-networking"])
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(f"{base}/login")
                page.fill("input[name=username]", "admin")
                page.fill("input[name=password]", password)
                page.click("button[type=submit]")
                page.wait_for_url(f"{base}/")
                # Push two rooms' lists and wait until their agents report them applied.
                for gw in ("gw-101", "gw-102"):
                    page.goto(f"{base}/provisioning/gateways/{gw}")
                    page.click("text=Push device list")
                    page.wait_for_selector(".pflash")

                def applied() -> bool:
                    page.goto(f"{base}/provisioning/gateways")
                    return page.locator("tr[data-gateway] .badge.ok:text('in sync')").count() >= 2

                wait_for(applied, 60, "the pushed lists applied")
                page.screenshot(path=str(out))
                browser.close()
        finally:
            demo.terminate()
            try:
                demo.wait(30)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
            log.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
