"""`campus demo` as a user runs it: a subprocess with the embedded amqtt broker."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from campus.net import free_port
from tests.servers import wait_until


def _get(url: str, token: str) -> object:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_demo_runs_every_room_end_to_end_and_exits_0(tmp_path: Path) -> None:
    """Two schools of one classroom each (`--schools 2`: a district's demo); the one-school demo's names
    (gw-101 in demo-school) are the PostgreSQL demo test's."""
    port = free_port()
    token = "demo-test-admin-token"
    rooms = ("gw-1-101", "gw-2-101")
    proc = subprocess.Popen([sys.executable, "-m", "programs.cli", "demo", "--rooms", "1", "--schools", "2",
                             "--duration", "20",
                             "--http-port", str(port), "--data-dir", str(tmp_path / "demo"), "--admin-token", token],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(f"{base}/api/health", token) == {"status": "ok"}, 20, message="dashboard up")
        for room in rooms:
            wait_until(lambda room=room: _get(f"{base}/api/telemetry?gateway={room}&device=env&metric=co2_ppm",
                                              token)["points"], 15, message=f"telemetry from {room}")
        gateways = _get(f"{base}/api/gateways", token)
        assert {(g["id"], g["school"], g["room"]) for g in gateways} == {
            ("gw-1-101", "demo-school-1", "101"), ("gw-2-101", "demo-school-2", "101")}
        assert all(g["online"] for g in gateways)
        # Each school got a timetable whose periods start now: the usage pages have periods within minutes.
        for school in ("demo-school-1", "demo-school-2"):
            assert len(_get(f"{base}/api/schools/{school}/timetable", token)["periods"]) >= 7
        # Every classroom has one device of every kind, each reporting over its own protocol.
        kinds = {"environment", "card_reader", "projector", "display", "camera", "meter"}
        wait_until(lambda: all({d["kind"] for d in _get(f"{base}/api/devices", token) if d["gateway"] == g
                                and d["status"] == "ok" and d["latest"]} == kinds for g in rooms),
                   20, message="every kind of device reporting in both rooms")
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired as exc:  # show how far the stop got, not pytest's cut-down repr
            proc.kill()
            told = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output or ""
            pytest.fail(f"campus demo did not exit 60 s after its --duration; it printed last:\n{told[-4000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"dashboard http://127.0.0.1:{port}/" in out and "2 schools of 1 classroom each" in out
    for role in ("admin", "facility", "teacher"):
        assert f"login {role} / " in out
    assert "Traceback" not in out
    # Its passwords, token and the gateways' card secrets: for the user who ran it only, from creation on.
    secrets = [tmp_path / "demo" / "logins.txt", *sorted((tmp_path / "demo" / "gateways").glob("*.yaml"))]
    assert len(secrets) == 3 and token in secrets[0].read_text()
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in secrets} == {f.name: "0o600" for f in secrets}


def test_demo_bad_argument_is_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "programs.cli", "demo", "--rooms", "0"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert "--rooms: must be at least 1" in result.stderr and "Traceback" not in result.stderr


def test_ingest_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "programs.cli", "ingest", "--mqtt", f"mqtt://127.0.0.1:{free_port()}",
                             "--store", f"sqlite:///{tmp_path}/x.db"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("campus: error: cannot reach MQTT broker")


@pytest.mark.parametrize("store", ["victoriametrics://127.0.0.1:{port}", "influxdb://127.0.0.1:{port}?bucket=campus"])
@pytest.mark.parametrize("command", ["ingest", "demo"])
def test_unreachable_store_is_one_line(tmp_path: Path, store: str, command: str) -> None:
    store = store.format(port=free_port())
    args = (["--mqtt", f"mqtt://127.0.0.1:{free_port()}", "--db", f"sqlite:///{tmp_path}/x.db"] if command == "ingest"
            else ["--data-dir", str(tmp_path / "demo"), "--duration", "5"])
    result = subprocess.run([sys.executable, "-m", "programs.cli", command, "--store", store, *args], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("campus: error: ") and "unreachable" in lines[0], lines


def test_agent_invalid_config_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("school: s\ngateway: g\nroom: r\npoll_interval: fast\n")
    result = subprocess.run([sys.executable, "-m", "programs.cli", "agent", "--config", str(cfg)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == f"campus: error: {cfg}:4: field poll_interval: " \
                                    "Input should be a valid number, unable to parse string as a number"


@pytest.mark.parametrize("tag", ["!!float", "!!int", "!!bool", "!!timestamp"])
@pytest.mark.parametrize("command", ["agent", "sim"])
def test_empty_tagged_scalar_in_config_is_one_line(tmp_path: Path, tag: str, command: str) -> None:
    """PyYAML raises IndexError/KeyError/AttributeError for these; the user sees one line naming file and line."""
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"school: s1\ngateway: {tag} \nroom: r\n")
    result = subprocess.run([sys.executable, "-m", "programs.cli", command, "--config", str(cfg)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"campus: error: {cfg}:2: "), lines


def _post(url: str, token: str, body: dict) -> object:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=15) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_demo_on_postgresql_keeps_no_central_table_in_sqlite(tmp_path: Path, pg_url: str) -> None:
    """`campus demo --db postgresql://...`: telemetry, a command round trip and an alarm, with every central
    table in PostgreSQL (the demo makes its schema) and nothing but points in the SQLite store."""
    from central.ledger import Ledger
    from central.tables import gateways as ledger_gateways

    port, token = free_port(), "demo-test-admin-token"
    env = {**os.environ, "CAMPUS_ALARM_INTERVAL": "0.5"}
    proc = subprocess.Popen([sys.executable, "-m", "programs.cli", "demo", "--rooms", "1", "--duration", "120",
                             "--http-port", str(port), "--data-dir", str(tmp_path / "demo"), "--admin-token", token,
                             "--db", pg_url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(f"{base}/api/health", token) == {"status": "ok"}, 30, message="dashboard up")
        wait_until(lambda: _get(f"{base}/api/telemetry?gateway=gw-101&device=env&metric=co2_ppm", token)["points"],
                   20, message="telemetry from gw-101")
        wait_until(lambda: any(d["id"] == "projector" and d["status"] == "ok" for d in _get(f"{base}/api/devices",
                                                                                          token)), 20,
                   message="the projector reporting")
        done = _post(f"{base}/api/gateways/gw-101/devices/projector/commands", token, {"action": "power_on"})
        assert done["status"] == "done", done  # answered by the agent, through PostgreSQL's command ledger
        _post(f"{base}/api/demo/simulators/gw-101/env", token, {"overrides": {"co2_ppm": 2600}})
        wait_until(lambda: any(a["gateway"] == "gw-101" for a in _get(f"{base}/api/alarms", token)), 30,
                   message="a CO2 alarm raised")
        proc.send_signal(signal.SIGTERM)  # as systemd or Ctrl-C stops it: a clean exit
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    central = {t.name for t in ledger_gateways.metadata.sorted_tables}
    stores = [p for p in (tmp_path / "demo").rglob("*.db") if "agents" not in p.parts]  # not the gateways' own
    assert stores, "the demo's SQLite point store"
    for path in stores:
        with sqlite3.connect(path) as db:
            tables = {t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not tables & central, f"{path} holds central tables {sorted(tables & central)}"
    ledger = Ledger(pg_url)
    try:
        [gateway] = ledger.gateways()
        assert gateway["id"] == "gw-101" and gateway["received"] > 0 and gateway["gaps"] == 0
        assert [c["status"] for c in ledger.commands()] == ["done"]
    finally:
        ledger.close()
