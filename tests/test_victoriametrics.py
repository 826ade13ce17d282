"""The production path: agents -> Mosquitto -> two ingest workers (shared subscription) -> VictoriaMetrics."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from central.store import Sample, open_store
from tests.e2e import Classroom, read_simulator
from tests.servers import Mosquitto, VictoriaMetrics, wait_until
from tests.stores import assert_newest_is_in_the_answer

pytestmark = pytest.mark.slow


def test_store_roundtrip_enums_and_long_windows(victoria: VictoriaMetrics) -> None:
    store = open_store(victoria.url)
    now = round(time.time(), 3)
    points = [Sample("s1", "gw1", "env", "environment", now - 10 + i, {"co2_ppm": 400.0 + i}, "101") for i in range(5)]
    points.append(Sample("s1", "gw1", "proj", "projector", now - 2, {"power": "warming"}, "101"))
    store.write(points)
    store.write(points[:3])  # a redelivered batch
    series = wait_until(lambda: (r := store.query("gw1", "env", "co2_ppm", now - 60, now + 1)) and len(r) == 5 and r,
                        20, message="5 raw samples")
    assert [v for _, v in series] == [400, 401, 402, 403, 404]
    assert [round(ts, 3) for ts, _ in series] == [round(now - 10 + i, 3) for i in range(5)]
    series_power = store.query("gw1", "proj", "power", now - 60, now + 1)
    assert series_power == [(pytest.approx(now - 2), "warming")]
    assert store.query("gw1", "env", "co2_ppm", now - 60, now + 1, limit=2) == series[-2:]  # a cut keeps the newest
    day = store.window("gw1", "env", "co2_ppm", now - 86400, now)  # few points: raw
    assert day.points == series and not day.downsampled
    day = store.window("gw1", "env", "co2_ppm", now - 86400, now, max_points=3)  # a range query with a step
    assert day.downsampled and day.points[-1] == series[-1] and len(day.points) <= 3
    assert store.window("gw1", "proj", "power", now - 60, now + 1, max_points=1).points == [series_power[0]]


def test_50000_points_in_a_window_the_newest_is_in_the_answer(victoria: VictoriaMetrics) -> None:
    store = open_store(victoria.url)
    try:
        assert_newest_is_in_the_answer(store)
    finally:
        store.close()


def test_victoriametrics_down_is_a_store_error(tmp_path: Path) -> None:
    from campus.errors import StoreError
    from campus.net import free_port

    store = open_store(f"victoriametrics://127.0.0.1:{free_port()}")
    with pytest.raises(StoreError, match="unreachable"):
        store.write([Sample("s", "g", "d", "environment", 1.0, {"co2_ppm": 1.0})])


def _vm_sample_count(room: Classroom, metric: str = "co2_ppm") -> int:
    store = open_store(room.store)
    now = time.time()
    return len(store.query(room.gateway, "env", metric, now - 3600, now + 10, limit=10**9))  # raw samples


def test_two_workers_one_killed_and_vm_down_for_20s(tmp_path: Path, mosquitto: Mosquitto,
                                                     victoria: VictoriaMetrics) -> None:
    room = Classroom(tmp_path, mosquitto.url, store=victoria.url, workers=2, poll_interval=0.1).start()
    try:
        room.wait_stored_at_least(30)
        room.ingests[1].kill()  # one worker dies mid-stream; its supervisor restarts it
        room.wait_stored_at_least(60)
        room.ingests[1] = room._ingest(1).start()
        # Back before the outage: a worker that starts while the store is down exits with one line
        # (campus ingest checks its store at start), and its supervisor would start it again.
        wait_until(lambda: room.ingests[1].output().count("subscribed: ready") == 2, 30,  # its log is appended
                   message="worker 1 back")
        # Stopped, not SIGKILLed: VictoriaMetrics acknowledges a write before its
        # in-memory buffer reaches disk (about a second), so a SIGKILL of the
        # database itself can lose that second; that is its documented trade-off.
        victoria.stop()
        time.sleep(20)  # the outage itself: ingest retries, acks nothing, the broker keeps the messages
        victoria.start()
        figures = room.quiesce_and_account(timeout=120)
        seqs = room.view.seqs(room.gateway)
        assert seqs == list(range(1, figures["last_seq"] + 1))
        # Every sample is in VictoriaMetrics exactly once (one timestamp per sample).
        counts: list[int] = []
        wait_until(lambda: counts.append(_vm_sample_count(room)) or counts[-1] == figures["last_seq"], 30,
                   message=f"{figures['last_seq']} samples in VictoriaMetrics (last count {counts[-1:]})")
        both = [p.output() for p in room.ingests]
        assert any("store write failed" in out for out in both), "the VM outage was not noticed"
    finally:
        room.stop()


def test_values_read_back_equal_what_the_simulator_served(tmp_path: Path, mosquitto: Mosquitto,
                                                          victoria: VictoriaMetrics) -> None:
    from campus.net import free_port
    from tests.e2e import env_device

    port = free_port()
    room = Classroom(tmp_path, mosquitto.url, store=victoria.url, workers=2,
                     devices=[env_device(port, frozen=True, seed=11)])
    room.port = port
    room.start()
    try:
        expected = read_simulator(port)
        store = open_store(victoria.url)

        def latest_from_vm() -> dict[str, float]:
            now = time.time()
            return {m: series[-1][1] for m in expected
                    if (series := store.query("gw1", "env", m, now - 600, now + 1))}

        wait_until(lambda: latest_from_vm() == expected, 30, message=f"VictoriaMetrics values equal {expected}")
    finally:
        room.stop()
