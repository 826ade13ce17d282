"""Smoke runs of every benchmark (`--quick`, as a user runs them), so the benchmarks cannot rot.

They start real servers and processes, so they are marked slow. Nothing
here looks at the figures' values: a benchmark must finish, exit 0 (it exits
1 only when a message was lost or a process crashed) and print its table
and machine line. No timing is asserted; the timeouts are only generous
bounds against a hang.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = {
    "ingest.py": ["| raw broker (mosquitto_sub)", "| sqlite:///", "| victoriametrics://", "| influxdb://",
                  "target (one worker"],
    "command_latency.py": ["| display via API (round trip)", "| projector via API (round trip)",
                           "| bare MQTT publish -> receive (QoS 1)", "devices report the last state sent"],
    "agent_footprint.py": ["| devices", "agent CPU %", "RSS MiB max"],
    "district.py": ["| gateways", "delay p99 ms", "stored pts/s"],
    "outbox_open.py": ["| unsent messages", "open with damage check ms"],
    "telemetry_window.py": ["| sqlite ", "| victoriametrics ", "| influxdb ", "1,200 pts ms", "raw page ms"],
    "soak.py": ["| minute", "web open files", "ingest threads", "total: "],
    "panels.py": ["| 20/20 ", "first event p50 ms", "web RSS peak MB"],
    "district_lists.py": ["school rollup in SQL, first page: CPU median", "GET /district (snapshot): CPU median"],
    "attendance.py": ["| one room's register of a day", "| school summary", "| retention"],
    "podium_latency.py": ["| projector POWR received", "| unknown card refused", "p95 ms"],
    "school_week.py": ["| rules off ", "| idle-off 15 min ", "runs during a class"],
    "dashboard.py": ["| district overview `/district` ", "| `GET /api/schools`", "wall median ms",
                     "per page view", "(table filled)", "campus jobs (its own process)"],
    "rollup_fill.py": ["fill of 62 days x 100 rooms", "before the first point", "ms CPU a row"],
}


def _run(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("script", sorted(BENCHMARKS))
def test_help(script: str) -> None:
    done = _run(script, "--help", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(BENCHMARKS))
def test_quick_run(script: str) -> None:
    done = _run(script, "--quick", timeout=180)
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out[-3000:]}\n{done.stderr[-3000:]}"
    for expected in BENCHMARKS[script]:
        assert expected in out, f"{expected!r} missing from the output:\n{out[-3000:]}"
    assert out.count("machine: ") >= 1 and "cores" in out


@pytest.mark.slow
@pytest.mark.parametrize("script", ["ingest.py", "district.py"])
def test_quick_run_with_the_ledger_in_postgresql(script: str) -> None:
    """`--db postgresql`: the benchmark starts its own PostgreSQL, upgrades a database per run, and its
    ingest workers record into it; nothing lost."""
    done = _run(script, "--quick", "--db", "postgresql", *(["--stores", "sqlite"] if script == "ingest.py" else []),
                timeout=180)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "ledger in PostgreSQL" in done.stdout, done.stdout[-3000:]


@pytest.mark.slow
def test_quick_run_of_the_maintenance_list() -> None:
    """`district_lists.py --maintenance`: the rating round, the list and its requests; every page from the
    rollup's lines (no part computed by the list itself)."""
    done = _run("district_lists.py", "--quick", "--maintenance", timeout=180)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for expected in ("rating round, only new parts (every other round): CPU median",
                     "GET /api/maintenance?limit=100 (lines): CPU median",
                     "parts the list computed itself: 0 in 0 lists"):
        assert expected in done.stdout, done.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("served", [False, True])
def test_quick_run_of_the_district_downloads(served: bool) -> None:
    """`district_lists.py --energy --exports [--served]`: every district-wide download answered (200) and read
    to its end, in-process or from a real `campus web`, with its CPU and the RSS before and after."""
    done = _run("district_lists.py", "--quick", "--energy", "--exports", *(["--served"] if served else []),
                timeout=180)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for path in ("energy.xlsx", "energy.csv", "usage-rate.xlsx", "usage-rate.csv", "maintenance.xlsx",
                 "maintenance.csv"):
        line = next((x for x in done.stdout.splitlines() if x.startswith(f"GET /health/{path}")), "")
        assert "CPU median" in line and "RSS" in line and " after the first" in line, done.stdout[-3000:]
