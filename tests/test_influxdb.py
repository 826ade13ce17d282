"""The InfluxDB store against a real InfluxDB (Debian's 1.x): line protocol in, InfluxQL out.

Debian ships InfluxDB 1.6, older than the /api/v2/write endpoint, so these
tests also cover the store's choice of the 1.x write endpoint; the v2 write
itself (influxdb-client's WriteApi) is the one VictoriaMetrics receives in
tests/test_victoriametrics.py. Queries are InfluxQL on /query, the same
statement InfluxDB 2.x and 3.x answer.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from campus.errors import StoreError
from campus.net import free_port
from central.store import Sample, open_store
from central.store.influx import _refuses_the_data, _version_before_1_8
from tests.e2e import Classroom, env_device, read_simulator
from tests.servers import InfluxDB, Mosquitto, wait_until
from tests.stores import assert_newest_is_in_the_answer

pytestmark = pytest.mark.slow


def test_store_roundtrip_numbers_enums_strings_and_long_windows(influx: InfluxDB) -> None:
    store = open_store(influx.url)
    now = round(time.time(), 3)
    samples = [Sample("s1", "gw1", "env", "environment", now - 10 + i, {"co2_ppm": 400.0 + i, "noise_dba": 40}, "101")
               for i in range(5)]
    samples.append(Sample("s1", "gw1", "proj", "projector", now - 2, {"power": "warming", "input": "HDMI 1"}, "101"))
    samples.append(Sample("s1", "gw1", "proj", "projector", now - 1, {"power": "on", "input": "it's \"VGA\""}, "101"))
    assert store.write(samples) == 0
    assert store.write(samples[:3]) == 0  # a redelivered batch lands on the same points
    series = store.query("gw1", "env", "co2_ppm", now - 60, now + 1)
    assert series == [(pytest.approx(now - 10 + i), 400.0 + i) for i in range(5)]
    assert [v for _, v in store.query("gw1", "proj", "power", now - 60, now + 1)] == ["warming", "on"]
    assert [v for _, v in store.query("gw1", "proj", "input", now - 60, now + 1)] == ["HDMI 1", "it's \"VGA\""]
    assert store.query("gw1", "env", "co2_ppm", now - 60, now + 1, limit=2) == series[-2:]  # a cut keeps the newest
    assert store.query("gw1", "env", "co2_ppm", now - 3600, now - 3000) == []
    assert store.query("gw1", "nobody", "co2_ppm", now - 60, now + 1) == []
    day = store.window("gw1", "env", "co2_ppm", now - 86400, now)  # few points: raw
    assert day.points == series and not day.downsampled
    day = store.window("gw1", "env", "co2_ppm", now - 86400, now, max_points=3)  # GROUP BY time(step), last of each
    assert day.downsampled and day.points[-1] == series[-1] and len(day.points) <= 3
    assert [v for _, v in store.window("gw1", "proj", "power", now - 60, now + 1, max_points=1).points] == ["on"]
    # Exactly one point per sample in the database itself, redelivery included.
    rows = influx.influxql('SELECT count("co2_ppm") FROM "environment"')["series"][0]["values"]
    assert rows[0][1] == 5
    store.close()


def test_50000_points_in_a_window_the_newest_is_in_the_answer(influx: InfluxDB) -> None:
    store = open_store(influx.url)
    try:
        assert_newest_is_in_the_answer(store, own_timestamps=False)
    finally:
        store.close()


def test_a_sample_the_server_refuses_is_left_out_alone(influx: InfluxDB, caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(influx.url)
    store.write([Sample("s1", "gw1", "env", "environment", 1000.0, {"temperature_c": 21.5})])
    batch = [Sample("s1", "gw1", "env", "environment", 1001.0 + i, {"temperature_c": 22.0 + i}) for i in range(9)]
    # A field that was a number becomes a string: InfluxDB refuses the line (400, field type conflict).
    batch.insert(4, Sample("s1", "gw1", "env", "environment", 1000.5, {"temperature_c": "hot"}))
    with caplog.at_level(logging.WARNING, logger="central.store.influx"):
        assert store.write(batch) == 1
    assert store.refused == 1
    assert [v for _, v in store.query("gw1", "env", "temperature_c", 999, 1100)] == [21.5] + [22.0 + i for i in range(9)]
    assert "gw1/env at 1000.500" in caplog.text and "field type conflict" in caplog.text
    store.close()


def test_check_names_what_is_wrong(influx: InfluxDB) -> None:
    open_store(influx.url).check()
    with pytest.raises(StoreError, match="database 'nope'.*database not found"):
        open_store(influx.url.replace("bucket=campus", "bucket=nope")).check()
    with pytest.raises(StoreError, match="unreachable"):
        open_store(f"influxdb://127.0.0.1:{free_port()}?bucket=campus").check()
    with pytest.raises(StoreError, match="unreachable"):
        open_store(f"influxdb://127.0.0.1:{free_port()}?bucket=campus").write(
            [Sample("s", "g", "d", "environment", 1.0, {"co2_ppm": 1.0})])


@pytest.mark.parametrize("version, old", [("1.6.7~rc0", True), ("1.7.11", True), ("1.8.10", False),
                                          ("v2.7.4", False), ("2.7.4", False), ("3.0.1", False), ("", False)])
def test_versions_without_the_v2_write_endpoint(version: str, old: bool) -> None:
    assert _version_before_1_8(version) is old


@pytest.mark.parametrize("status, detail, data", [
    (400, '{"error":"partial write: field type conflict: input field \\"temperature_c\\" ... dropped=1"}', True),
    (400, "unable to parse 'environment,gateway=g co2_ppm=': missing field value", True),
    (400, "cannot parse field value for \"co2_ppm\"", True),
    (400, '{"error":"partial write: points beyond retention policy dropped=3"}', True),
    (413, "Request Entity Too Large", True),
    (400, '{"code":"invalid","message":"organization name \\"campsu\\" not found"}', False),
    (401, "unauthorized access", False), (404, 'database not found: "campus"', False), (503, "", False),
])
def test_only_a_refusal_of_the_data_itself_leaves_samples_out(status: int, detail: str, data: bool) -> None:
    assert _refuses_the_data(status, detail) is data


def test_ingest_and_web_refuse_to_start_without_their_database(tmp_path: Path, influx: InfluxDB) -> None:
    url = influx.url.replace("bucket=campus", "bucket=nope")
    for command in (["ingest"], ["web", "--http-port", str(free_port())]):
        proc = subprocess.run([sys.executable, "-m", "programs.cli", *command, "--mqtt", "mqtt://127.0.0.1:1",
                               "--store", url, "--db", f"sqlite:///{tmp_path / 'central.db'}"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("campus: error:") and "database not found" in lines[0], lines


def _influx_count(influx: InfluxDB, gateway: str) -> int:
    result = influx.influxql(f"SELECT count(\"co2_ppm\") FROM \"environment\" WHERE \"gateway\" = '{gateway}'")
    return result["series"][0]["values"][0][1] if result.get("series") else 0


def test_two_workers_one_killed_and_influxdb_down(tmp_path: Path, mosquitto: Mosquitto, influx: InfluxDB) -> None:
    """Simulator -> agent -> Mosquitto -> two ingest workers -> InfluxDB: every sample once, the values served."""
    port = free_port()
    room = Classroom(tmp_path, mosquitto.url, store=influx.url, workers=2, poll_interval=0.1,
                     devices=[env_device(port, frozen=True, seed=11)])
    room.port = port
    room.start()
    try:
        expected = read_simulator(port)
        room.wait_stored_at_least(30)
        room.ingests[1].kill()  # one worker dies mid-stream; a supervisor would restart it
        room.wait_stored_at_least(60)
        room.ingests[1] = room._ingest(1).start()
        # Back before the outage: a worker that starts while the store is down exits with one line
        # (campus ingest checks its store at start), and its supervisor would start it again.
        wait_until(lambda: room.ingests[1].output().count("subscribed: ready") == 2, 30,  # its log is appended
                   message="worker 1 back")
        influx.stop()
        wait_until(lambda: any("store write failed" in p.output() for p in room.ingests), 30,
                   message="ingest noticed the outage")
        # The outage lasts until the agent has published 30 samples that could not be stored.
        stored = room.stored_count()
        wait_until(lambda: room.agent_outbox()["last_seq"] >= stored + 30, 30, message="30 samples during the outage")
        assert room.stored_count() == stored
        influx.start()
        figures = room.quiesce_and_account(timeout=120)
        assert room.view.seqs(room.gateway) == list(range(1, figures["last_seq"] + 1))
        wait_until(lambda: _influx_count(influx, "gw1") == figures["last_seq"], 30,
                   message=f"{figures['last_seq']} samples in InfluxDB")
        store = open_store(influx.url)
        now = time.time()
        latest = {m: store.query("gw1", "env", m, now - 600, now + 1)[-1][1] for m in expected}
        assert latest == expected
    finally:
        room.stop()


def test_the_documented_retention_and_downsampling_statements_run(influx: InfluxDB) -> None:
    """docs/storage.md's InfluxDB 1.x retention policies and continuous query, on the real server."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "storage.md").read_text()
    block = text.split("**InfluxDB 1.x.**", 1)[1].split("```", 2)[1]
    statements = [line for line in block.splitlines() if line.strip()]
    assert len(statements) == 3
    for statement in statements:
        assert "error" not in influx.influxql(statement), statement
    policies = {row[0]: row[1] for row in influx.influxql('SHOW RETENTION POLICIES ON "campus"')["series"][0]["values"]}
    assert policies["raw_90d"] == "2160h0m0s" and policies["hourly_5y"] == "43800h0m0s"
    # The continuous query's body over two hours of raw data: hourly means in the long-term policy.
    store = open_store(influx.url)
    hour = (int(time.time()) // 3600 - 2) * 3600
    store.write([Sample("s1", "gw1", "env", "environment", hour + i * 600, {"co2_ppm": 400.0 + i}) for i in range(12)])
    body = statements[2].split(" BEGIN ", 1)[1].rsplit(" END", 1)[0]
    select, group = body.split(" GROUP BY ")
    assert "error" not in influx.influxql(f"{select} WHERE time >= {hour}s AND time < {hour + 7200}s GROUP BY {group}")
    rows = influx.influxql('SELECT "mean_co2_ppm" FROM "campus"."hourly_5y"."environment"')["series"][0]["values"]
    assert [row[1] for row in rows] == [402.5, 408.5]


def test_dashboard_history_from_influxdb_and_503_while_it_is_down(tmp_path: Path, influx: InfluxDB) -> None:
    from campus.contract import State
    from dashboards import close_app
    from tests.apps import ENV_AND_PROJECTOR, PEOPLE, add_people, central_db, web_app

    now = time.time()
    db = central_db(tmp_path, lambda ledger, _points: ledger.record(
        [], [("s1", "gw1", State(online=True, ts=now, room="101", devices=ENV_AND_PROJECTOR, interval=5))], []))
    open_store(influx.url).write([Sample("s1", "gw1", "env", "environment", now - 60 + i, {"co2_ppm": 700.0 + i})
                                  for i in range(3)]
                                 + [Sample("s1", "gw1", "proj", "projector", now - 3600, {"power": "on"})])
    app = web_app(db, store_url=influx.url)
    try:
        tokens = add_people(app, {"facility": PEOPLE["facility"]})
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tokens['facility']}"
        got = client.get(f"/api/telemetry?gateway=gw1&device=env&metric=co2_ppm&start={now - 600}&end={now}")
        assert got.status_code == 200
        assert [v for _, v in got.get_json()["points"]] == [700.0, 701.0, 702.0]
        assert "gw1" in client.get("/health/usage").get_data(as_text=True)
        influx.stop()
        down = client.get(f"/api/telemetry?gateway=gw1&device=env&metric=co2_ppm&start={now - 600}&end={now}")
        assert down.status_code == 503 and "unreachable" in down.get_json()["error"]
        page = client.get("/health/usage")
        assert page.status_code == 503 and "This cannot be read now" in page.get_data(as_text=True)
    finally:
        close_app(app)


def test_influxdb_1x_with_authentication(tmp_path: Path) -> None:
    """`token=USER:PASSWORD` for a 1.x before 1.8 (no tokens there): HTTP Basic on writes and queries."""
    server = InfluxDB(tmp_path, admin_password="s3cret-pw")
    server.start()
    try:
        store = open_store(f"{server.url}&token=admin:s3cret-pw")
        store.check()
        assert store.write([Sample("s1", "gw1", "env", "environment", 1000.0, {"co2_ppm": 612.0})]) == 0
        assert store.query("gw1", "env", "co2_ppm", 999, 1001) == [(1000.0, 612.0)]
        for token in ("&token=admin:wrong", ""):
            with pytest.raises(StoreError, match="HTTP 401"):
                open_store(f"{server.url}{token}").check()
            with pytest.raises(StoreError, match="HTTP 401"):
                open_store(f"{server.url}{token}").write([Sample("s1", "gw1", "env", "environment", 1001.0,
                                                                  {"co2_ppm": 1.0})])
        assert store.query("gw1", "env", "co2_ppm", 999, 1002) == [(1000.0, 612.0)]  # nothing written unauthorized
    finally:
        server.stop()
