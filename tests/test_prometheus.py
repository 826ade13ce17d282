"""GET /api/metrics: the ledger in the Prometheus text format, read back by a real VictoriaMetrics."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from campus.contract import State
from dashboards import close_app
from tests.apps import ENV_AND_PROJECTOR, add_people, central_db, register_rooms, two_rooms, web_app
from tests.servers import VictoriaMetrics, wait_until


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def fill(ledger, points) -> None:
        two_rooms(ledger, points)
        # gw-102's projector is in fault; a room name that needs escaping in a label.
        devices = {**ENV_AND_PROJECTOR, "proj": {**ENV_AND_PROJECTOR["proj"], "status": "fault"}}
        ledger.record([], [("s1", "gw-102", State(online=True, ts=time.time(), room='Lab "B"\\2', devices=devices,
                                                  interval=5))], [])
        ledger.record_worker("ingest-0", "central", 4242, time.time() - 60,
                             {"messages": 10, "stored": 9, "duplicates": 1, "rejected": 2, "refused_by_store": 0,
                              "store_errors": 3, "last_error": "x"})

    app = web_app(central_db(tmp_path, fill), monkeypatch)
    register_rooms(app)
    app.tokens = add_people(app)
    yield app
    close_app(app)


def scrape(app, role: str = "facility"):
    return app.test_client().get("/api/metrics", headers={"Authorization": f"Bearer {app.tokens[role]}"})


def test_exposition_lines(app) -> None:
    resp = scrape(app)
    assert resp.status_code == 200 and resp.content_type == "text/plain; version=0.0.4; charset=utf-8"
    lines = resp.get_data(as_text=True).splitlines()
    assert 'campus_gateway_online{school="s1",gateway="gw-101",room="101"} 1.0' in lines
    assert 'campus_gateway_received_total{school="s1",gateway="gw-101",room="101"} 2.0' in lines
    assert 'campus_gateway_gaps{school="s1",gateway="gw-102",room="Lab \\"B\\"\\\\2"} 0.0' in lines
    assert 'campus_device_ok{gateway="gw-101",device="proj",kind="projector",status="ok"} 1.0' in lines
    assert 'campus_device_ok{gateway="gw-102",device="proj",kind="projector",status="fault"} 0.0' in lines
    assert 'campus_ingest_running{worker="ingest-0",host="central"} 1.0' in lines
    assert 'campus_ingest_store_errors_total{worker="ingest-0",host="central"} 3.0' in lines
    assert "# TYPE campus_ingest_rejected_total counter" in lines
    assert scrape(app, "teacher").status_code == 403
    assert app.test_client().get("/api/metrics").status_code == 401


def test_victoriametrics_reads_what_we_expose(app, victoria: VictoriaMetrics) -> None:
    http = f"http://127.0.0.1:{victoria.port}"
    body = scrape(app, "admin").get_data()
    with urllib.request.urlopen(urllib.request.Request(f"{http}/api/v1/import/prometheus", data=body), timeout=10):
        pass

    def series(name: str) -> dict[str, float]:
        params = urllib.parse.urlencode({"match[]": name})
        with urllib.request.urlopen(f"{http}/api/v1/export?{params}", timeout=10) as resp:
            rows = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
        return {row["metric"].get("gateway") or row["metric"].get("worker"): row["values"][-1] for row in rows}

    wait_until(lambda: series("campus_gateway_received_total") == {"gw-101": 2, "gw-102": 2}, 20,
               message="the gateways' counters in VictoriaMetrics")
    assert series("campus_ingest_rejected_total") == {"ingest-0": 2}
    rooms = {r["metric"]["room"] for r in map(json.loads, urllib.request.urlopen(
        f"{http}/api/v1/export?match[]=campus_gateway_online", timeout=10).read().splitlines())}
    assert rooms == {"101", 'Lab "B"\\2'}
