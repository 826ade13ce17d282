"""DL/T 645-2007 meters: the codec's vectors, the driver against the simulated meter over a real pty, the
Modbus power meter through the Modbus driver, and counters across a meter's reset."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from campus import contract
from campus.counters import increase, steps
from campus.errors import DeviceError
from campus.net import free_port
from device_profiles import load_profile
from device_profiles.config import GatewayConfig, load_gateway_config
from edge_agent.drivers import create_driver
from edge_agent.drivers.base import Reading
from edge_agent.drivers.dlt645 import DLT645Driver
from edge_agent.outbox import Outbox
from edge_agent.polling import Polling
from firmware_stubs.environment import simulators_for
from firmware_stubs.meter import ClassroomLoad, DLT645Meter
from protocols import check_address, dlt645
from protocols.dlt645 import DATA_ITEMS, DLT645FrameError, Frame, decode_frame, decode_value, encode_value
from protocols.serial_line import BadFrame
from tests.e2e import Classroom, SimulatorsInThread, env_device, write_gateway_config
from tests.servers import Mosquitto, wait_until

PROFILE = load_profile("meter-dlt645")
SDM120 = load_profile("meter-sdm120-modbus")
ENERGY = DATA_ITEMS["energy_kwh"]
METER = "123456789012"
OPTIONS = {"timeout": 0.4, "frame_gap": 0.05, "retries": 2}
# A pty refuses even parity (the meters' 8E1) when pyserial sets it a second time (EINVAL from tcsetattr);
# an RS-485 adapter takes it. The address overrides the profile's line settings, as on a site.
PTY_LINE = {"parity": "N"}


def wire(text: str) -> bytes:
    return bytes.fromhex(text)


def framed(body: str) -> bytes:
    """68 to the end of the data, completed with its checksum (the sum mod 256) and 16."""
    raw = wire(body)
    return raw + bytes((sum(raw) & 0xFF, 0x16))


# ------------------------------------------------------------ the codec: published frames

# Reads of 00 00 00 00 (total active energy) as they appear in meter-reading tools and vendor examples;
# the checksums were computed by their authors, not by this codec.
PUBLISHED_READS = [
    ("111111111111", "68 11 11 11 11 11 11 68 11 04 33 33 33 33 17 16"),
    ("000000000001", "68 01 00 00 00 00 00 68 11 04 33 33 33 33 B2 16"),
    ("221211182903", "68 03 29 18 11 12 22 68 11 04 33 33 33 33 3A 16"),
    ("AAAAAAAAAAAA", "68 AA AA AA AA AA AA 68 11 04 33 33 33 33 AD 16"),
]


@pytest.mark.parametrize(("address", "frame"), PUBLISHED_READS)
def test_a_read_of_total_energy_is_the_published_frame(address: str, frame: str) -> None:
    request = dlt645.read_request(address, ENERGY)
    assert request == dlt645.PREAMBLE + wire(frame)
    assert decode_frame(request) == decode_frame(wire(frame)) == Frame(address, 0x11, b"\0\0\0\0")


def test_the_published_reply_decodes_to_its_value_and_encodes_back() -> None:
    reply = wire("68 11 11 11 11 11 11 68 91 08 33 33 33 33 68 39 33 33 A2 16")  # 6.35 kWh
    frame = decode_frame(reply)
    assert (frame.address, frame.control, frame.is_reply, frame.is_error) == ("111111111111", 0x91, True, False)
    assert frame.data[:4] == ENERGY.di_bytes and decode_value(ENERGY, frame.data[4:]) == 6.35
    assert dlt645.read_reply("111111111111", ENERGY, 6.35) == dlt645.PREAMBLE + reply


def test_the_read_address_broadcast_and_its_reply() -> None:
    assert dlt645.read_address_request() == wire("FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16")
    reply = dlt645.address_reply(METER)
    frame = decode_frame(reply)
    assert frame.control == 0x93 and frame.address == METER
    assert reply[4:] == wire("68 12 90 78 56 34 12 68 93 06 45 C3 AB 89 67 45") + reply[-2:]
    assert dlt645.address_text(frame.data) == METER


def test_read_and_reply_for_address_123456789012() -> None:
    """The nameplate's lowest digit pair goes first; every data byte is sent +33H; CS sums 68 to the data."""
    request = dlt645.read_request(METER, ENERGY)
    assert request == wire("FE FE FE FE 68 12 90 78 56 34 12 68 11 04 33 33 33 33 67 16")
    reply = dlt645.read_reply(METER, ENERGY, 1234.56)
    # 1234.56 kWh = BCD 00 12 34 56, lowest byte first: 56 34 12 00, +33H: 89 67 45 33.
    assert reply == wire("FE FE FE FE 68 12 90 78 56 34 12 68 91 08 33 33 33 33 89 67 45 33 53 16")
    assert sum(reply[4:-2]) & 0xFF == reply[-2]
    assert decode_value(ENERGY, decode_frame(reply).data[4:]) == 1234.56


def test_error_reply() -> None:
    reply = dlt645.error_reply(METER, dlt645.READ_DATA, dlt645.ERR_NO_DATA)
    frame = decode_frame(reply)
    assert frame.control == 0xD1 and frame.is_error and frame.data == b"\x02"
    assert reply[-5:] == wire("D1 01 35") + reply[-2:]  # the error word, +33H
    assert "no such data" in dlt645.errors_of(frame.data[0])


@pytest.mark.parametrize(("metric", "value", "raw"), [
    ("energy_kwh", 6.35, "35 06 00 00"),
    ("energy_kwh", 999999.99, "99 99 99 99"),
    ("voltage_v", 220.1, "01 22"),
    ("current_a", 5.125, "25 51 00"),
    ("current_a", -1.234, "34 12 80"),            # the sign: top bit of the highest byte
    ("power_w", 1102.5, "25 10 01"),              # 1.1025 kW
    ("power_w", -2345.6, "56 34 82"),
    ("power_w", 0.0, "00 00 00"),
])
def test_bcd_values_and_the_sign_bit(metric: str, value: float, raw: str) -> None:
    item = DATA_ITEMS[metric]
    assert encode_value(item, value) == wire(raw)
    assert decode_value(item, wire(raw)) == value


def test_values_that_are_not_bcd_or_do_not_fit_are_refused() -> None:
    with pytest.raises(DLT645FrameError, match=r"voltage_v: value 0a 22 is not BCD"):
        decode_value(DATA_ITEMS["voltage_v"], wire("0A 22"))
    with pytest.raises(DLT645FrameError, match="2 value bytes, expected 4"):
        decode_value(ENERGY, wire("00 00"))
    assert decode_value(DATA_ITEMS["current_a"], wire("00 00 80")) == 0.0  # a "negative zero" is 0
    with pytest.raises(ValueError, match="does not fit"):
        encode_value(ENERGY, 1_000_000)
    with pytest.raises(ValueError, match="does not fit"):
        encode_value(ENERGY, -1)


GOOD = dlt645.read_reply(METER, ENERGY, 1234.56)


@pytest.mark.parametrize(("raw", "error"), [
    (GOOD[:-2] + bytes((GOOD[-2] ^ 1, 0x16)), "checksum 0x52, expected 0x53"),
    (GOOD[:-1] + b"\x17", "end byte 0x17, not 0x16"),
    (GOOD[:-3], "length byte says 8 data bytes, frame has 5"),
    (GOOD[:12], "frame too short"),
    (b"hello, meter", "no 68h at bytes 0 and 7"),
    (b"", "frame too short"),
    (framed("68 1A 90 78 56 34 12 68 91 00"), "address 1a 90 78 56 34 12 is not BCD"),
])
def test_a_bad_frame_is_one_error_naming_what_and_showing_the_frame(raw: bytes, error: str) -> None:
    with pytest.raises(DLT645FrameError) as exc:
        decode_frame(raw)
    assert error in str(exc.value) and f"in frame {raw[:40].hex(' ')}" in str(exc.value)


def test_the_splitter_skips_wakeup_bytes_resyncs_and_waits_for_the_rest() -> None:
    a = dlt645.read_reply(METER, ENERGY, 1.0)
    b = dlt645.read_reply(METER, DATA_ITEMS["voltage_v"], 220.0, follows=True)
    bad = a[:-2] + bytes((a[-2] ^ 0xFF, 0x16))
    items, rest = dlt645.split_frames(b"\x00\x68\x01" + bad + a + b[:9])
    assert [type(i) for i in items] == [BadFrame, Frame]
    assert "noise" in items[0].reason and "checksum" in items[0].reason
    assert rest == b[:9].lstrip(b"\xfe")  # an incomplete header: kept for the next read
    items, rest = dlt645.split_frames(rest + b[9:])
    assert rest == b"" and len(items) == 1 and items[0].control == 0xB1 and items[0].data[4:] == wire("00 22")
    # A reply cut short by the next one: the next one still counts.
    items, rest = dlt645.split_frames(a[:14] + b)
    assert [type(i) for i in items] == [BadFrame, Frame] and "truncated" in items[0].reason and rest == b""
    # A data byte that is 68h on the wire (35h + 33h) is data, not a frame start.
    c = dlt645.read_reply(METER, ENERGY, 35.35)
    assert 0x68 in c[14:-2]
    assert dlt645.split_frames(c) == ([decode_frame(c)], b"")


def test_the_address_field_is_twelve_digits() -> None:
    check_address("dlt645", {"serial": "/dev/ttyUSB0", "meter_address": "000012345678", "baudrate": 2400})
    for bad, message in [({"serial": "/dev/ttyUSB0"}, "meter_address is required"),
                         ({"serial": "/dev/ttyUSB0", "meter_address": 123456789012}, "quoted in YAML"),
                         ({"serial": "/dev/ttyUSB0", "meter_address": "12345678901"}, "12 digits"),
                         ({"serial": "/dev/ttyUSB0", "meter_address": "AAAAAAAAAAAA"}, "12 digits")]:
        with pytest.raises(ValueError, match=message):
            check_address("dlt645", bad)


# ------------------------------------------------------------ the driver against the simulated meter


@asynccontextmanager
async def rig(address: str = METER, driver_address: str | None = None,
              **options: Any) -> AsyncIterator[tuple[DLT645Meter, DLT645Driver]]:
    async with DLT645Meter(address=address, load=ClassroomLoad(seed=4, energy_kwh=1234.5)) as sim:
        sim.frozen = True
        drv = DLT645Driver("meter", PROFILE, {"serial": sim.path, "meter_address": driver_address or address,
                                              **PTY_LINE},
                           {**OPTIONS, **options})
        try:
            yield sim, drv
        finally:
            await drv.close()


def test_a_poll_reads_what_the_meter_shows() -> None:
    async def main() -> None:
        async with rig() as (sim, drv):
            shown = sim.load.values()
            assert (await drv.read()).values == shown
            assert set(shown) == set(PROFILE.metrics) and shown["energy_kwh"] == 1234.5
            assert sim.reads == 4 and drv.counters.get("bad_frames", 0) == 0
            # An hour of load later the counter has grown by what the load drew (to the register's 0.01 kWh).
            sim.load.step(3600)
            later = (await drv.read()).values
            assert later == sim.load.values()
            assert later["energy_kwh"] == pytest.approx(1234.5 + sim.load.power_w / 1000, abs=0.011)
            assert await drv.read_address() == METER
    asyncio.run(main())


def test_a_damaged_reply_is_asked_again_and_a_damaged_line_is_a_clear_fault() -> None:
    async def main() -> None:
        async with rig() as (sim, drv):
            sim.corrupt_checksum = 1
            sim.noise = 2
            assert (await drv.read()).values == sim.load.values()
            assert drv.counters["bad_frames"] >= 1
            sim.corrupt_checksum = True
            with pytest.raises(DeviceError) as exc:
                await drv.read()
            text = str(exc.value)
            assert text.startswith("meter: no valid reply to the read of energy_kwh (DI 00 00 00 00) from meter "
                                   "123456789012") and "3 attempt(s)" in text
            assert "checksum" in text and "in frame fe fe fe fe 68 12 90 78" not in text  # FE is not the frame
            assert "in frame 68 12 90 78 56 34 12 68 91 08" in text
            sim.corrupt_checksum = False
            sim.truncate = True
            with pytest.raises(DeviceError, match="truncated frame"):
                await drv.read()
            sim.truncate = False
            assert (await drv.read()).values == sim.load.values()  # and it recovers
    asyncio.run(main())


def test_a_wrong_address_goes_unanswered_and_times_out() -> None:
    async def main() -> None:
        async with rig(driver_address="999999999999") as (sim, drv):
            with pytest.raises(DeviceError, match=r"no reply to the read of energy_kwh .* within 0.4s \(is the meter "
                                                  r"connected, and is its meter_address 999999999999\?\)"):
                await drv.read()
            assert sim.frames_received == 1 and sim.replies_sent == 0  # heard, not for it, one attempt
            assert await drv.read_address() == METER  # the broadcast finds the meter that is there
    asyncio.run(main())


def test_a_silent_meter_and_an_unknown_identifier() -> None:
    async def main() -> None:
        async with rig() as (sim, drv):
            unknown = dlt645.DataItem("phase_b_voltage", 0x02010200, 2, 1, False)
            with pytest.raises(DeviceError, match=r"meter 123456789012 refused the read of phase_b_voltage "
                                                  r"\(DI 02 01 02 00\): no such data .* \(error word 0x02\)"):
                await drv.read_item(unknown)
            assert sim.errors_sent == 1
            sim.silent = True
            with pytest.raises(DeviceError, match="no reply"):
                await drv.read()
    asyncio.run(main())


class CrowdedLine(DLT645Meter):
    """A meter whose reply follows a late reply of another meter and a reply to another read."""

    def _handle(self, frame: Frame) -> bytes | None:
        reply = super()._handle(frame)
        if reply is None:
            return None
        return (dlt645.read_reply("000000000007", ENERGY, 99.0) + dlt645.read_reply(self.address, DATA_ITEMS["voltage_v"], 1)
                + dlt645.encode_frame(self.address, dlt645.READ_DATA, ENERGY.di_bytes) + reply)  # and an echo


def test_a_reply_for_another_identifier_or_meter_is_not_a_reading() -> None:
    async def main() -> None:
        async with CrowdedLine(address=METER, load=ClassroomLoad(seed=4, energy_kwh=1234.5)) as sim:
            sim.frozen = True
            drv = DLT645Driver("meter", PROFILE, {"serial": sim.path, "meter_address": METER, **PTY_LINE}, OPTIONS)
            try:
                assert await drv.read_item(ENERGY) == 1234.5
                assert drv.counters["bad_frames"] == 3
            finally:
                await drv.close()
    asyncio.run(main())


# ------------------------------------------------------------ the Modbus power meter


def modbus_gateway(tmp_path: Path, port: int | None = None, serial: str | None = None) -> GatewayConfig:
    link: dict[str, Any] = {"host": "127.0.0.1", "port": port} if port else {"serial": serial}
    return load_gateway_config(write_gateway_config(tmp_path / "gw1.yaml", "mqtt://127.0.0.1:1", devices=[
        {"id": "env", "profile": "env-6in1-modbus", "address": {**link, "unit": 1}, "simulator": {"frozen": True}},
        {"id": "pm", "profile": "meter-sdm120-modbus", "address": {**link, "unit": 2},
         "simulator": {"energy_kwh": 4321.25, "seed": 2}}]))


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
def test_a_modbus_power_meter_shares_the_bus_with_a_sensor(tmp_path: Path, transport: str) -> None:
    async def main() -> None:
        port = free_port() if transport == "tcp" else None
        config = modbus_gateway(tmp_path, port=port, serial=str(tmp_path / "ttyBUS") if not port else None)
        [(server, handles)] = simulators_for(list(enumerate(config.devices)))
        assert set(handles) == {"env", "pm"}
        async with server:
            drivers = [create_driver(d.id, d.profile_obj, d.address, {"timeout": 1.0}) for d in config.devices]
            try:
                env, pm = [(await d.read()).values for d in drivers]
                assert env == server.served_values(1)
                assert pm == server.served_values(2) and set(pm) == set(SDM120.metrics)
                assert pm["energy_kwh"] == 4321.25 and 215 < pm["voltage_v"] < 225
                assert pm["current_a"] == pytest.approx(pm["power_w"] / pm["voltage_v"] / 0.92, abs=0.02)
                # Input registers answer function 4 only: read as holding registers they are not the meter's.
                assert server.registers_of(2, "holding") == [0] * len(server.registers_of(2))
            finally:
                for d in drivers:
                    await d.close()
    asyncio.run(main())


# ------------------------------------------------------------ counters across a reset


def test_a_counters_increase_never_steps_back() -> None:
    assert steps([10.0, 10.5, 12.0, 0.25, 1.0]) == [0.5, 1.5, 0.25, 0.75]
    assert increase([10.0, 10.5, 12.0, 0.25, 1.0]) == pytest.approx(3.0)
    assert increase([5.0]) == 0 and increase([]) == 0
    assert contract.COUNTER_METRICS <= contract.NUMERIC_METRICS


def test_the_agent_reports_a_meter_reset_once(tmp_path: Path) -> None:
    config = load_gateway_config(write_gateway_config(tmp_path / "gw1.yaml", "mqtt://127.0.0.1:1"))
    box = Outbox(tmp_path / "agent.db")
    try:
        polling = Polling(config, box, {}, {}, wake_drain=lambda: None, status_changed=lambda: None)
        for energy in (100.0, 100.5, 0.25, 0.5):
            polling.record("meter", Reading(values={"energy_kwh": energy, "power_w": 300.0}))
        events = [contract.Event.decode(row.payload) for row in box.peek(100)
                  if row.topic == contract.event_topic("s1", "gw1", "meter")]
        assert [(e.type, e.data) for e in events] == [
            (contract.COUNTER_RESET, {"metric": "energy_kwh", "before": 100.5, "after": 0.25})]
        assert time.time() - events[0].ts < 60
    finally:
        box.close()


# ------------------------------------------------------------ end to end: simulators, agent, broker, ingest, store


@pytest.mark.slow
def test_meters_reach_the_store_a_replaced_meter_is_an_event_and_a_silent_one_a_fault(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    devices = [env_device(port, frozen=True, seed=7),
               {"id": "pm", "profile": "meter-sdm120-modbus", "address": {"host": "127.0.0.1", "port": port, "unit": 2},
                "simulator": {"energy_kwh": 321.5}},
               {"id": "meter", "profile": "meter-dlt645", "simulator": {"frozen": True, "energy_kwh": 1234.5, "seed": 4},
                "address": {"serial": str(tmp_path / "ttyMETER"), "meter_address": METER, **PTY_LINE}}]
    room = Classroom(tmp_path, mosquitto.url, devices=devices)
    with SimulatorsInThread(room.config) as sims:
        room.start(sim=False)
        try:
            meter, (server, _) = sims["meter"], sims["pm"]
            shown, served = sims.call(meter.load.values), sims.call(lambda: server.served_values(2))
            wait_until(lambda: room.view.latest("gw1", "meter") == shown, 30, message=f"the meter's {shown} stored")
            wait_until(lambda: room.view.latest("gw1", "pm") == served, 30, message=f"the SDM120's {served} stored")
            assert served["energy_kwh"] == 321.5

            sims.call(lambda: meter.load.replace(0.5))  # a new meter, its register near zero
            wait_until(lambda: room.view.latest("gw1", "meter")["energy_kwh"] == 0.5, 30, message="the new meter")
            resets = wait_until(lambda: room.view.ledger.events("gw1", type_=contract.COUNTER_RESET), 30,
                                message="the reset event")
            assert [(e["device"], e["data"]) for e in resets] == [  # type: ignore[union-attr]
                ("meter", {"metric": "energy_kwh", "before": 1234.5, "after": 0.5})]
            stored = [v for _, v in room.view.points.query("gw1", "meter", "energy_kwh", 0, time.time() + 60)]
            assert stored[0] == 1234.5 and stored[-1] == 0.5  # last minus first: -1234 kWh
            assert increase(stored) == 0.5  # nothing drawn while frozen; the new meter's 0.5 kWh counts

            sims.call(lambda: setattr(meter, "silent", True))
            wait_until(lambda: {d["id"]: d["status"] for d in room.view.ledger.gateway_devices("gw1")}.get("meter")
                       == "fault", 30, message="the silent meter shown as a fault")
            assert {d["id"]: d["status"] for d in room.view.ledger.gateway_devices("gw1")}["pm"] == "ok"
        finally:
            room.stop()
