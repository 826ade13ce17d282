"""`campus web` on gunicorn (dashboards/server.py): several workers serve pages, the API and panel
streams; SIGTERM with streams open ends them and the process cleanly; a port in use is one line.

Real processes: `campus web` started as a user starts it (tests/servers.py CampusProcess), streams read
over plain sockets (EventStream), the database filled through `Ledger.record` as ingest fills it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from campus.contract import State
from campus.net import free_port
from central.ledger import Ledger, Sequenced
from tests.servers import CampusProcess, EventStream, wait_until

TOKEN = "test-admin-token-0123456789"
DEVICES = {"env": {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"},
           "projector": {"profile": "projector-pjlink", "kind": "projector", "status": "ok"}}
ROOMS = [f"gw-{i}" for i in range(6)]


def _fill(db: Path) -> None:
    ledger = Ledger(str(db))
    now = time.time()
    try:
        ledger.record([Sequenced("s1", gw, "env", 1, now, values={"co2_ppm": 700 + i}) for i, gw in enumerate(ROOMS)],
                      [("s1", gw, State(online=True, ts=now, room=str(100 + i), devices=DEVICES, interval=3600))
                       for i, gw in enumerate(ROOMS)], [])
    finally:
        ledger.close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read()


@pytest.mark.slow
def test_two_workers_serve_pages_and_streams_and_stop_cleanly_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "central.db"
    _fill(db)
    port = free_port()
    web = CampusProcess(["web", "--store", f"sqlite:///{db}", "--http-port", str(port), "--admin-token", TOKEN,
                         "--workers", "2", "--threads", "16"], tmp_path / "web.log").start()
    streams: list[EventStream] = []
    try:
        web.wait_listening(port)
        assert _get(port, "/api/health")[0] == 200
        status, body = _get(port, "/api/gateways")
        assert status == 200 and sorted(g["id"] for g in json.loads(body)) == ROOMS
        status, page = _get(port, "/panel/gw-3")
        assert status == 200 and b"103" in page
        # Security headers come through gunicorn as through any server; without --proxy, nobody's
        # X-Forwarded-Proto is believed (gunicorn's own default believes 127.0.0.1's).
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/login", headers={
                "X-Forwarded-Proto": "https"}), timeout=30) as resp:
            assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
            assert "Secure" not in resp.headers["Set-Cookie"]
        # Both workers booted (each with its own Central) and every stream, whichever worker took it,
        # gets its own room.
        wait_until(lambda: web.output().count("Booting worker") == 2, message="two workers")
        # Each worker starts its pool's 16 threads before its first request, not one per request that finds
        # none idle (dashboards/server.py `_start_threads`): the main thread and the 16 at least, in both.
        workers = psutil.Process(web.proc.pid).children()  # type: ignore[union-attr]
        wait_until(lambda: len(workers) == 2 and all(w.num_threads() > 16 for w in workers),
                   message="both workers' 16 threads started")
        # Each worker on one CPU of those the web may use, the first two on different ones (`_pin_to_cpu`):
        # every thread of it, the pool's started before too.
        allowed = sorted(os.sched_getaffinity(0))
        pinned = [{t.id: tuple(os.sched_getaffinity(t.id)) for t in w.threads()} for w in workers]
        assert all(len(set(threads.values())) == 1 and len(next(iter(threads.values()))) == 1 for threads in pinned)
        cpus = sorted(next(iter(threads.values()))[0] for threads in pinned)
        assert cpus == (allowed[:2] if len(allowed) > 1 else allowed * 2)
        streams = [EventStream(port, f"/api/panel/{gw}/stream", TOKEN) for gw in ROOMS]
        for i, (gw, stream) in enumerate(zip(ROOMS, streams, strict=True)):
            assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
            name, room = stream.event()
            assert name == "room" and room["gateway"] == gw and room["environment"] == {"co2_ppm": 700 + i}

        # A change recorded by ingest (another process's connection) reaches its room's stream.
        ledger = Ledger(str(db))
        ledger.record([Sequenced("s1", "gw-2", "env", 2, time.time(), values={"co2_ppm": 1500})], [], [])
        ledger.close()
        assert streams[2].event()[1]["environment"] == {"co2_ppm": 1500}

        # SIGTERM with six streams open: every stream ends (the worker ends them, not the grace period's
        # end), and the whole process exits 0 having closed each worker's Central.
        web.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for stream in streams:
            with pytest.raises(EOFError):
                while True:
                    stream.block(timeout=15)
        assert web.proc.wait(15) == 0  # type: ignore[union-attr]
        log = web.output()
        assert "Traceback" not in log, log
        assert log.count("Worker exiting") == 2 and "Shutting down: Master" in log
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        for stream in streams:
            stream.close()
        web.stop()


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "programs.cli", "web", "--store",
                               f"sqlite:///{tmp_path / 'c.db'}", "--http-port", str(port), "--workers", "2"],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (f"campus: error: cannot listen on 127.0.0.1:{port}: "
                                                    "Address already in use"), done.stderr
    assert "Traceback" not in done.stderr and "gunicorn" not in done.stderr.lower()


def test_workers_and_threads_are_checked(tmp_path: Path) -> None:
    for bad in (["--workers", "0"], ["--threads", "lots"]):
        done = subprocess.run([sys.executable, "-m", "programs.cli", "web", "--store",
                               f"sqlite:///{tmp_path / 'c.db'}", *bad], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and bad[0] in done.stderr and "Traceback" not in done.stderr


def test_no_pin_leaves_the_worker_on_every_cpu(tmp_path: Path) -> None:
    db = tmp_path / "central.db"
    _fill(db)
    port = free_port()
    web = CampusProcess(["web", "--store", f"sqlite:///{db}", "--http-port", str(port), "--threads", "4",
                         "--no-pin"], tmp_path / "web.log").start()
    try:
        web.wait_listening(port)
        wait_until(lambda: _get(port, "/api/health")[0] == 200, message="campus web answering")
        [worker] = psutil.Process(web.proc.pid).children()  # type: ignore[union-attr]
        assert {tuple(sorted(os.sched_getaffinity(t.id))) for t in worker.threads()} == {
            tuple(sorted(os.sched_getaffinity(0)))}
        assert "runs on CPU" not in web.output()
    finally:
        web.stop()
