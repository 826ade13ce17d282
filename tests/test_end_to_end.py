"""Simulator -> agent -> Mosquitto -> ingest -> SQLite store -> API, all real processes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from campus import contract
from campus.contract import Telemetry
from campus.errors import PayloadError
from campus.net import free_port
from dashboards import WebConfig, create_app
from dashboards.context import central
from tests.e2e import StoreView, env_device, ingest_with_publisher, read_simulator, write_gateway_config
from tests.servers import CampusProcess, Mosquitto, wait_until


def test_stored_values_equal_what_the_simulator_served(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    cfg = write_gateway_config(tmp_path / "gw.yaml", mosquitto.url,
                               devices=[env_device(port, frozen=True, seed=3)])
    db = tmp_path / "central.db"
    procs = [CampusProcess(["sim", "--config", str(cfg)], tmp_path / "sim.log").start()]
    try:
        procs[0].wait_listening(port)
        procs.append(CampusProcess(["ingest", "--mqtt", mosquitto.url, "--store", f"sqlite:///{db}"],
                                   tmp_path / "ingest.log").start())
        procs.append(CampusProcess(["agent", "--config", str(cfg)], tmp_path / "agent.log").start())
        expected = read_simulator(port)
        wait_until(lambda: db.exists(), 20, message="the store file")
        view = StoreView(db)
        wait_until(lambda: view.latest("gw1", "env") == expected, 30,
                   message=f"stored values equal to {expected}")
        gw = wait_until(lambda: view.gateway("gw1"), 10)
        assert gw["online"] and gw["room"] == "101" and gw["school"] == "s1"
        assert gw["gaps"] == 0 and gw["duplicates"] == 0

        app = create_app(WebConfig(store_url=f"sqlite:///{db}", db_url=str(db)))
        central(app).registry.ensure_admin("end-to-end-admin-token")
        client = app.test_client()
        auth = {"Authorization": "Bearer end-to-end-admin-token"}
        devices = client.get("/api/devices", headers=auth).get_json()
        assert devices[0]["latest"] == expected and devices[0]["kind"] == "environment"
        assert devices[0]["status"] == "ok"
        points = client.get("/api/telemetry?gateway=gw1&device=env&metric=co2_ppm", headers=auth).get_json()["points"]
        assert points and all(v == expected["co2_ppm"] for _, v in points)
        assert client.get("/api/gateways").status_code == 401
        view.close()
    finally:
        for p in reversed(procs):
            p.stop()


def test_garbage_does_not_stop_ingest_and_every_valid_message_is_stored(tmp_path: Path,
                                                                         mosquitto: Mosquitto) -> None:
    topic = contract.telemetry_topic("s1", "gwx", "env")
    first = Telemetry(seq=1, ts=time.time(), values={"co2_ppm": 400}).encode()
    with ingest_with_publisher(tmp_path, mosquitto.port, mosquitto.url, "garbage-test", topic, first) as (
            ingest, pub, view):
        garbage = [b"", b"not json", b"\xff\x00\xfe", b"[]", b"{}", b'{"seq": "1", "ts": 1, "values": {}}',
                   b'{"seq": 1, "ts": 1, "values": {"x": {"nested": 1}}}', json.dumps({"seq": 5, "ts": 1,
                   "values": {"co2_ppm": 1}, "pad": "x" * 70000}).encode(), b'{"seq": -3, "ts": 1, "values": {}}',
                   b"1e999", b'{"seq": 1e400, "ts": 1, "values": {}}']
        sent = 1
        t0 = time.time() - 5000  # well before the first message, sent at the start
        for i in range(2, 202):
            pub.publish(topic, garbage[i % len(garbage)], qos=1)
            pub.publish(contract.ROOT + "/s1/gwx/nonsense/env", b"{}", qos=1)
            pub.publish(topic, Telemetry(seq=i, ts=t0 + i, values={"co2_ppm": i}).encode(), qos=1).wait_for_publish(5)
            sent += 1
        wait_until(lambda: view.gateway("gwx")["received"] == sent, 30, message=f"{sent} messages stored")
        assert ingest.alive()
        gw = view.gateway("gwx")
        assert gw["gaps"] == 0 and gw["duplicates"] >= 0
        assert view.seqs("gwx") == list(range(1, sent + 1))
        stored = view.points.query("gwx", "env", "co2_ppm", t0, t0 + 999)
        assert [v for _, v in stored] == list(range(2, 202))
        assert "rejected message" in ingest.output()
        # The worker's own counters reach the ledger (GET /api/ingest) from its process. The
        # "nonsense" topic is outside ingest's subscriptions: the broker never hands it over.
        rejected = 0
        for i in range(2, 202):
            try:
                Telemetry.decode(garbage[i % len(garbage)])
            except PayloadError:
                rejected += 1
        assert rejected > 150
        worker = wait_until(lambda: next((w for w in view.ledger.workers() if w["stored"] == sent), None), 30,
                            message=f"the worker's report of {sent} stored")
        assert worker["running"] and worker["rejected"] == rejected and worker["store_errors"] == 0
        assert worker["pid"] == ingest.proc.pid
