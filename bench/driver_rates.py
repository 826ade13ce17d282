"""Reads per second per driver, and one agent's cost with a full classroom.

Part 1: each driver polls its simulator back to back over the real
transport (Modbus TCP and RTU-on-pty, PJLink TCP, Samsung MDC and LG on
ptys, a DL/T 645 meter on a pty (four items a read), an SDM120 meter on Modbus TCP, EM4100 on a pty,
the camera on a generated video) for a fixed time;
reads/s is what one gateway sustains for that device alone.

Part 2: `campus sim` and `campus agent` for a full classroom (one device of
every kind, as `campus demo` builds it) polled every second; the agent
process's CPU (% of one core) and resident memory over a window after
warm-up, read from /proc through psutil.

    python bench/driver_rates.py [--seconds S] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from campus import contract  # noqa: E402
from campus.net import free_port, wait_for_port  # noqa: E402
from device_profiles.config import load_gateway_config  # noqa: E402
from edge_agent.drivers import create_driver  # noqa: E402
from firmware_stubs.runner import SimulatorSet  # noqa: E402
from programs.demo import classroom_config  # noqa: E402
from tests.servers import CampusProcess, Mosquitto, wait_until  # noqa: E402


def device_set(tmp: Path) -> list[dict[str, Any]]:
    env_port = free_port()
    return [
        {"id": "modbus-tcp", "profile": "env-6in1-modbus", "address": {"host": "127.0.0.1", "port": env_port, "unit": 1}},
        {"id": "modbus-rtu", "profile": "env-6in1-modbus", "address": {"serial": str(tmp / "ttyRS485"), "unit": 1}},
        {"id": "pjlink", "profile": "projector-pjlink2", "address": {"host": "127.0.0.1", "port": free_port()}},
        {"id": "mdc", "profile": "display-samsung-mdc", "address": {"serial": str(tmp / "ttyMDC"), "display_id": 0}},
        {"id": "lg", "profile": "display-lg-serial", "address": {"serial": str(tmp / "ttyLG"), "set_id": 1}},
        {"id": "dlt645", "profile": "meter-dlt645",
         "address": {"serial": str(tmp / "ttyMETER"), "meter_address": "000012345678", "parity": "N"}},
        {"id": "sdm120-tcp", "profile": "meter-sdm120-modbus",
         "address": {"host": "127.0.0.1", "port": free_port(), "unit": 1}},
        {"id": "em4100", "profile": "card-em4100", "address": {"serial": str(tmp / "ttyCARD")},
         "simulator": {"swipe_every_s": 0.5}},
        {"id": "camera", "profile": "camera-occupancy", "address": {"source": str(tmp / "cam.avi")},
         "options": {"loop": True, "realtime": False}, "simulator": {"people": 3, "seconds": 6}},
    ]


async def measure_drivers(tmp: Path, seconds: float) -> list[tuple[str, int, float]]:
    cfg_path = tmp / "bench.yaml"
    cfg_path.write_text(yaml.safe_dump({"school": "s", "gateway": "g", "room": "r", "card_secret": "x" * 32,
                                        "devices": device_set(tmp)}))
    config = load_gateway_config(cfg_path)
    out = []
    async with SimulatorSet(config):
        for dev in config.devices:
            options = dict(dev.options)
            if dev.profile_obj.kind in contract.CARD_SECRET_KINDS:  # as the agent does (agent.py)
                options["secret"] = config.card_secret
            driver = create_driver(dev.id, dev.profile_obj, dev.address, options)
            await driver.open()
            n, errors, t0 = 0, 0, time.monotonic()
            while time.monotonic() - t0 < seconds:
                try:
                    await driver.read()
                    n += 1
                except Exception:  # noqa: BLE001 - a warm-up miss is counted, not fatal
                    errors += 1
                    await asyncio.sleep(0.01)
            await driver.close()
            out.append((dev.id, n, n / (time.monotonic() - t0)))
            if errors:
                print(f"  ({dev.id}: {errors} reads failed, e.g. while warming up)")
    return out


def measure_agent(tmp: Path, window: float) -> tuple[float, float]:
    broker = Mosquitto(tmp / "mosquitto")
    broker.start()
    cfg = classroom_config(1, broker.url, tmp, poll_interval=1.0)
    cfg["data_dir"] = str(tmp / "agent-data")
    path = tmp / "room.yaml"
    path.write_text(yaml.safe_dump(cfg))
    sim = CampusProcess(["sim", "--config", str(path)], tmp / "sim.log").start()
    agent = None
    try:
        wait_for_port("127.0.0.1", cfg["devices"][0]["address"]["port"])
        wait_until(lambda: Path(cfg["devices"][4]["address"]["source"]).exists(), 60)
        agent = CampusProcess(["agent", "--config", str(path)], tmp / "agent.log").start()
        proc = psutil.Process(agent.proc.pid)
        time.sleep(10)  # warm-up (imports, camera background model) is not the steady state
        cpu0 = proc.cpu_times()
        t0 = time.monotonic()
        time.sleep(window)
        cpu1 = proc.cpu_times()
        busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        return 100 * busy / (time.monotonic() - t0), proc.memory_info().rss / 2**20
    finally:
        if agent:
            agent.stop()
        sim.stop()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="polling time per driver")
    parser.add_argument("--window", type=float, default=30.0, help="agent measurement window")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seconds, window = (0.5, 3.0) if args.quick else (args.seconds, args.window)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        rates = asyncio.run(measure_drivers(Path(tmp), seconds))
    print(f"{'driver':<12} {'reads':>7} {'reads/s':>9}")
    for name, n, rate in rates:
        note = ""
        if name in ("em4100", "camera"):
            note = "  (event-driven: read() drains what a background reader collected)"
        elif name in ("modbus-rtu", "mdc", "lg", "em4100", "dlt645"):
            note = "  (a pty has no baud rate: a 9600-baud line allows far fewer)"
        print(f"{name:<12} {n:>7} {rate:>9.1f}{note}")
    with tempfile.TemporaryDirectory() as tmp:
        cpu, rss = measure_agent(Path(tmp), window)
    devices = len(classroom_config(1, "mqtt://127.0.0.1:1", Path("."))["devices"])
    print(f"agent, full classroom ({devices} devices) polled every 1 s: CPU {cpu:.1f}% of one core, RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
