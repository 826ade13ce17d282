"""`campus jobs` beside `campus web --no-jobs`: the district's set-up, as real processes.

The web serves and runs none of central's background jobs (its worker holds no lease); `campus jobs` on
the same database raises the CO2 alarm that the web then serves; SIGTERM ends the jobs with status 0 and
gives their leases up (a standby takes over at its next round, not a lease later).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from campus.contract import State
from campus.net import free_port
from central.db import Database, open_database
from central.ledger import Ledger, Sequenced
from central.registry import Registry
from tests.servers import CampusProcess, Mosquitto, wait_until

TOKEN = "jobs-test-admin-token-0123456789"
ENV = {"env": {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"}}


def leases(db: Database) -> dict[str, tuple[str, float]]:
    """Every lease row: name -> (holder `host:pid:id`, until)."""
    with db.read("leases") as conn:
        return {name: (holder, until) for name, holder, until in conn.execute(
            text("SELECT name, holder, until FROM leases"))}


def open_alarms(port: int) -> list[dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/alarms?state=open",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_campus_jobs_raises_the_alarm_that_web_no_jobs_serves(tmp_path: Path, mosquitto: Mosquitto,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPUS_ALARM_INTERVAL", "0.5")
    url = f"sqlite:///{tmp_path / 'campus.db'}"
    db = open_database(url)
    registry, ledger = Registry(db), Ledger(db)
    try:
        registry.register_gateway("gw-101", "s1", "101", "A")
        now = time.time()
        ledger.record([Sequenced("s1", "gw-101", "env", 1, now, values={"co2_ppm": 3000})],
                      [("s1", "gw-101", State(online=True, ts=now, room="101", devices=ENV, interval=600))], [])
        site = ["--store", url, "--db", url, "--mqtt", mosquitto.url]
        port = free_port()
        web = CampusProcess(["web", "--no-jobs", *site, "--http-port", str(port), "--admin-token", TOKEN],
                            tmp_path / "web.log").start()
        jobs = CampusProcess(["jobs", *site], tmp_path / "jobs.log")
        try:
            web.wait_listening(port, timeout=60)
            # The worker is up and has started what its Central starts: were it running the jobs, the usage
            # rollup (first round at once) and the alarm monitor (every 0.5 s) would hold their leases by the
            # time the alarm below is open, and `campus jobs` could take neither.
            wait_until(lambda: open_alarms(port) == [], 30, interval=0.2, message="the web answering")
            jobs.start()
            wait_until(lambda: "campus jobs: alarm monitor" in jobs.output() or not jobs.alive(), 60,
                       message="campus jobs started")
            alarms = wait_until(lambda: open_alarms(port), 30, interval=0.2, message="the CO2 alarm, via the web")
            assert [(a["gateway"], a["kind"]) for a in alarms] == [("gw-101", "co2_above")]
            assert jobs.proc is not None and web.proc is not None
            held = leases(db)
            assert {"alarms", "usage-rollup"} <= held.keys(), held
            # Every lease is the jobs process's (holder host:PID:id); none is the web's or its worker's.
            assert all(holder.split(":")[1] == str(jobs.proc.pid) for holder, _until in held.values()), held
            jobs.proc.send_signal(signal.SIGTERM)
            assert jobs.proc.wait(30) == 0, jobs.output()[-3000:]
            # Given up, not left to run out: a standby `campus jobs` takes each over at its next round.
            assert all(until == 0.0 for _holder, until in leases(db).values()), leases(db)
            assert web.alive() and open_alarms(port)[0]["kind"] == "co2_above"  # the web still serves it
        finally:
            jobs.stop()
            web.stop()
    finally:
        ledger.close()
        registry.close()
        db.close()


def test_campus_jobs_refuses_a_bad_option_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "programs.cli", "jobs", "--store",
                             f"sqlite:///{tmp_path / 'c.db'}", "--timezone", "Mars/Base"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--timezone" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "c.db").exists()  # refused before anything was opened
