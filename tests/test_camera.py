"""Camera driver over the real OpenCV VideoCapture path, on synthetic classroom videos with a known answer.

Most tests play the file as fast as it decodes (`realtime: false`): the
driver works on the video's own clock, so what it sees is the same on any
machine, only sooner. Conditions are waited for with a deadline, never a
bare sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import pytest

from campus.errors import ConfigError, DeviceError
from device_profiles import load_profile
from device_profiles.config import DeviceConfig
from edge_agent.drivers.base import CardSecretMissing, DeviceEvent, DeviceUnreachable, Reading
from edge_agent.drivers.camera import CameraDriver
from firmware_stubs.camera import CameraSimulator, VideoInfo, make_classroom_video, simulator_for
from protocols.camera import describe_source
from protocols.card_ids import qr_pseudonym

PROFILE = load_profile("camera-occupancy")
SECRET = "school-secret-1"  # the school's card secret, which the agent gives every camera (agent.py)
FAST = {"loop": True, "realtime": False, "secret": SECRET}
DEADLINE_S = 10.0


def _video(tmp_path: Path, people: int, qr_text: str | None = None, seed: int = 1, seconds: float = 6.0) -> VideoInfo:
    return make_classroom_video(tmp_path / f"room-{people}-{seed}.avi", people, qr_text, seconds=seconds, fps=10,
                                size=(320, 240), seed=seed)


async def _poll(drv: CameraDriver, until: Callable[[], bool], counts: list[int | None] | None = None,
                events: list[DeviceEvent] | None = None) -> None:
    """Read until `until()` holds, keeping what the reads returned; fail at the deadline."""
    end = time.monotonic() + DEADLINE_S
    while not until():
        assert time.monotonic() < end, f"timed out; counts {counts}, counters {drv.counters}"
        reading = await drv.read()
        if counts is not None:
            counts.append(reading.values.get("people_count"))
        if events is not None:
            events.extend(reading.events)
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(("people", "code"), [(3, "STU-2024-0417"), (5, "T-20240901-0032")])
def test_counts_people_and_reports_one_check_in(tmp_path: Path, people: int, code: str) -> None:
    info = _video(tmp_path, people, code, seed=people)

    async def main() -> None:
        counts: list[int | None] = []
        events: list[DeviceEvent] = []
        async with CameraDriver("cam1", PROFILE, {"source": str(info.path)}, FAST) as drv:
            # Two whole passes of the looping video: the card is shown twice, 4 s apart (< dedup_s).
            await _poll(drv, lambda: drv.media_s > 2 * info.frames / info.fps, counts, events)
            reading = await drv.read()
        counted = [c for c in counts if c is not None]
        assert len(counted) >= 3, counts
        assert set(counted) == {people}  # every count after the warm-up is right, not just the last
        assert reading.values == {"people_count": people}
        assert [e.type for e in events] == ["attendance"]
        assert events[0].data == {"person": qr_pseudonym(SECRET, code), "camera": "cam1"}
        assert isinstance(events[0].ts, float)
    asyncio.run(main())


def test_video_without_a_code_gives_no_attendance(tmp_path: Path) -> None:
    info = _video(tmp_path, 4, None, seed=2)

    async def main() -> None:
        events: list[DeviceEvent] = []
        async with CameraDriver("cam1", PROFILE, {"source": str(info.path)}, FAST) as drv:
            await _poll(drv, lambda: drv.media_s > info.frames / info.fps + 1, events=events)
            assert (await drv.read()).values == {"people_count": 4}
            assert drv.counters["qr_scans"] > 10
        assert events == []
    asyncio.run(main())


def test_a_code_shown_again_after_the_dedup_window_is_a_new_check_in(tmp_path: Path) -> None:
    info = _video(tmp_path, 2, "STU-7", seed=3)

    async def main() -> None:
        events: list[DeviceEvent] = []
        async with CameraDriver("cam1", PROFILE, {"source": str(info.path)}, {**FAST, "dedup_s": 1.0}) as drv:
            await _poll(drv, lambda: drv.counters.get("loops", 0) >= 2, events=events)
            events.extend((await drv.read()).events)
            passes = drv.counters["loops"] + 1
        # The card is up for 2 s of every 6 s pass: one check-in per pass, never two in one pass.
        assert 2 <= len(events) <= passes
        assert {e.data["person"] for e in events} == {qr_pseudonym(SECRET, "STU-7")}
    asyncio.run(main())


def test_qr_checkin_without_the_card_secret_is_a_device_fault_not_a_raw_send(tmp_path: Path) -> None:
    """As a card reader: QR check-in asked for without the secret, no start (each poll says why); without
    the secret and not asked for, or `qr_checkin: false`, the camera counts people and decodes no code."""
    info = _video(tmp_path, 3, "STU-101-0001", seed=3)
    no_secret = {"loop": True, "realtime": False}

    async def main() -> None:
        drv = CameraDriver("cam1", PROFILE, {"source": str(info.path)}, {**no_secret, "qr_checkin": True})
        for _ in range(2):
            with pytest.raises(CardSecretMissing, match="card_secret") as err:
                await drv.read()
            assert isinstance(err.value, DeviceError) and isinstance(err.value, ConfigError)
        assert drv.counters == {} and drv._thread is None  # nothing was read, so nothing could be sent
        await drv.close()
        events: list[DeviceEvent] = []
        counts: list[int | None] = []
        for options in (no_secret, {**no_secret, "qr_checkin": False}):
            counts.clear()
            async with CameraDriver("cam1", PROFILE, {"source": str(info.path)}, options) as drv:
                await _poll(drv, lambda: drv.media_s > info.frames / info.fps + 1 and counts[-1:] == [3], counts,
                            events)
                assert "qr_scans" not in drv.counters, options  # the code is never even decoded
        assert events == []
    asyncio.run(main())


def test_missing_file_is_unreachable(tmp_path: Path) -> None:
    async def main() -> None:
        drv = CameraDriver("cam1", PROFILE, {"source": str(tmp_path / "nope.avi")}, FAST)
        with pytest.raises(DeviceUnreachable, match="cannot open"):
            await drv.read()
        with pytest.raises(DeviceUnreachable):  # each poll tries again
            await drv.read()
        await drv.close()
        await drv.close()
    asyncio.run(main())


async def _wait(until: Callable[[], bool]) -> None:
    end = time.monotonic() + DEADLINE_S
    while not until():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


async def _read_until(drv: CameraDriver, check: Callable[[Reading | DeviceError], bool]) -> None:
    """Poll like the agent does (errors are statuses, not failures) until `check` accepts a result."""
    end = time.monotonic() + DEADLINE_S
    while True:
        try:
            result: Reading | DeviceError = await drv.read()
        except DeviceError as exc:
            result = exc
        if check(result):
            return
        assert time.monotonic() < end, f"timed out; last result {result!r}"
        await asyncio.sleep(0.01)


def test_stream_end_is_a_fault_then_reopened(tmp_path: Path) -> None:
    info = _video(tmp_path, 3, None, seed=4, seconds=20.0)
    moved = info.path.with_suffix(".away")
    opts = {"realtime": False, "reopen_backoff_s": 1.0, "reopen_backoff_max_s": 1.0, "secret": SECRET}

    async def main() -> None:
        async with CameraDriver("cam1", PROFILE, {"source": str(info.path)}, opts) as drv:
            await _read_until(drv, lambda r: isinstance(r, Reading) and r.values.get("people_count") == 3)
            info.path.rename(moved)  # the open stream plays on to its end; then the source is gone
            # Without `loop` the end of the file is the end of the stream: a fault while it is reopened,
            await _read_until(drv, lambda r: isinstance(r, DeviceError)
                              and ("ended; reopening" in str(r) or "cannot reopen" in str(r)))
            # then offline once the reopen attempt finds nothing.
            await _read_until(drv, lambda r: isinstance(r, DeviceUnreachable) and "cannot reopen" in str(r))
            moved.rename(info.path)
            await _read_until(drv, lambda r: isinstance(r, Reading) and r.values.get("people_count") == 3)
            assert drv.counters["reopens"] >= 1
    asyncio.run(main())


def test_realtime_playback_counts_too(tmp_path: Path) -> None:
    """The default mode: a file plays at its own frame rate, as a camera delivers frames."""
    info = _video(tmp_path, 3, None, seed=5, seconds=5.0)

    async def main() -> None:
        counts: list[int | None] = []
        options = {"loop": True, "warmup_s": 2.0, "secret": SECRET}
        async with CameraDriver("cam1", PROFILE, {"source": str(info.path)}, options) as drv:
            await _poll(drv, lambda: counts[-3:] == [3, 3, 3], counts)
            assert drv.media_s < DEADLINE_S  # paced: far from the instant playback of the other tests
    asyncio.run(main())


def test_readings_carry_numbers_and_pseudonyms_only(tmp_path: Path) -> None:
    info = _video(tmp_path, 2, "STU-1", seed=6)

    async def main() -> None:
        events: list[DeviceEvent] = []
        async with CameraDriver("cam1", PROFILE, {"source": str(info.path)}, FAST) as drv:
            await _poll(drv, lambda: bool(events), events=events)
            reading = await drv.read()
        assert set(reading.values) <= {"people_count"}
        assert all(isinstance(v, int) for v in reading.values.values())
        for ev in events:
            assert all(isinstance(v, str) and len(v) < 100 for v in ev.data.values())
    asyncio.run(main())


@pytest.mark.parametrize(("address", "field"), [
    ({}, "source is required"),
    ({"source": ""}, "source must not be empty"),
    ({"source": -1}, "source: a camera index"),
    ({"source": True}, "source must be"),
    ({"source": 1.5}, "source must be"),
    ({"source": "ftp://cam/x"}, "source: URL scheme 'ftp'"),
    ({"source": "rtsp://"}, "source: .* has no host"),
])
def test_bad_address_names_the_field(address: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CameraDriver.check_address(address)


def test_good_addresses_and_options() -> None:
    for source in ("rtsp://user:secret@10.0.0.5:554/stream1", "/var/lib/cam.avi", 0, "/dev/video0"):
        CameraDriver.check_address({"source": source})
    assert describe_source("rtsp://user:secret@10.0.0.5:554/s?token=x") == "rtsp://10.0.0.5:554/s"
    drv = CameraDriver("cam1", PROFILE, {"source": "rtsp://cam.local/s"}, {"fps": 2})
    assert drv.settings["fps"] == 2 and drv.settings["dedup_s"] == PROFILE.timings["dedup_s"]
    with pytest.raises(ConfigError, match="option fps"):
        CameraDriver("cam1", PROFILE, {"source": "x.avi"}, {"fps": 0})
    with pytest.raises(ConfigError, match="option loop"):
        CameraDriver("cam1", PROFILE, {"source": "x.avi"}, {"loop": "yes"})
    with pytest.raises(ConfigError, match="option qr_checkin"):
        CameraDriver("cam1", PROFILE, {"source": "x.avi"}, {"qr_checkin": "no"})


def test_generator_is_deterministic_and_reads_back(tmp_path: Path) -> None:
    a = make_classroom_video(tmp_path / "a.avi", 3, "STU-1", seconds=2, fps=10, seed=9)
    b = make_classroom_video(tmp_path / "b.avi", 3, "STU-1", seconds=2, fps=10, seed=9)
    c = make_classroom_video(tmp_path / "c.avi", 3, "STU-1", seconds=2, fps=10, seed=10)
    assert a.path.read_bytes() == b.path.read_bytes() != c.path.read_bytes()
    cap = cv2.VideoCapture(str(a.path))
    frames = 0
    while cap.grab():
        frames += 1
    cap.release()
    assert frames == a.frames == 20
    assert a.qr_from_s is not None and a.qr_to_s is not None and a.qr_from_s < a.qr_to_s
    with pytest.raises(ValueError, match="do not fit"):
        make_classroom_video(tmp_path / "d.avi", 40, "STU-1", seconds=2, fps=10, seed=1)


def test_simulator_writes_the_configured_source(tmp_path: Path) -> None:
    path = tmp_path / "sim" / "cam.avi"
    dev = DeviceConfig.model_construct(id="cam1", profile="camera-occupancy", address={"source": str(path)},
                                       simulator={"people": 2, "qr_text": "STU-2", "seconds": 2, "fps": 5, "seed": 4},
                                       options={}, poll_interval=None)
    sim = simulator_for(dev, 0)
    assert isinstance(sim, CameraSimulator) and not path.exists()  # configured, not started

    async def main() -> None:
        async with sim:
            assert path.exists()
        assert sim.info is not None and sim.info.people == 2 and sim.info.frames == 10
    asyncio.run(main())
    bad = DeviceConfig.model_construct(id="cam2", profile="camera-occupancy", address={"source": "rtsp://x/y"},
                                       simulator={}, options={}, poll_interval=None)
    with pytest.raises(ConfigError, match="file path"):
        simulator_for(bad, 1)


def test_gateway_config_sim_and_agent_driver_agree(tmp_path: Path) -> None:
    """What `campus sim` and `campus agent` do with a camera in a gateway config: both find it in the protocol table."""
    from device_profiles.config import load_gateway_config
    from edge_agent import drivers
    from firmware_stubs import runner

    video = tmp_path / "cam1.avi"
    path = tmp_path / "gw.yaml"
    path.write_text(f"""\
school: s1
gateway: gw1
room: "101"
devices:
  - id: cam1
    profile: camera-occupancy
    address: {{source: "{video}"}}
    options: {{loop: true, realtime: false}}
    simulator: {{people: 3, qr_text: STU-9, seconds: 6, fps: 10, seed: 2}}
""")
    config = load_gateway_config(path)
    dev = config.devices[0]

    async def main() -> None:
        events: list[DeviceEvent] = []
        async with runner.SimulatorSet(config):
            options = {**dev.options, "secret": SECRET}  # what the agent adds (agent.py)
            async with drivers.create_driver(dev.id, dev.profile_obj, dev.address, options) as drv:
                assert isinstance(drv, CameraDriver)
                counts: list[int | None] = []
                await _poll(drv, lambda: drv.media_s > 7 and counts[-1:] == [3], counts, events)
        assert [e.data for e in events] == [{"person": qr_pseudonym(SECRET, "STU-9"), "camera": "cam1"}]
    asyncio.run(main())

    path.write_text(path.read_text().replace(f'"{video}"', "-2"))
    with pytest.raises(ConfigError, match="source: a camera index"):
        load_gateway_config(path)
