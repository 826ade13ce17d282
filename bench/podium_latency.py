"""Podium swipe latency: a card on the reader -> the projector told to power on, with no broker at all.

Why: a teacher at the podium (刷卡授权) waits for the projector; the gateway decides alone
(edge_agent/podium.py), so nothing but the gateway is in the path. A card reader is polled like
every device (5 s by default); a swipe wakes its poller, so the wait must not depend on that interval.

How: one `Agent` in this process (its broker URL a closed port: central unreachable) with an EM4100
reader simulator on a pty and a PJLink projector simulator on TCP (warm-up 0.2 s), polled every
`--poll-interval` s. Each round swipes an enrolled card (start or end the class, alternately) and an
unknown one, and times: swipe -> the projector's simulator receives `POWR`; swipe -> the `podium`
event is in the outbox (the whole scene: power, input, unmute, after the warm-up); unknown swipe ->
its `refused` event.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_line, percentile, print_table  # noqa: E402
from campus.net import free_port  # noqa: E402
from device_profiles.config import load_gateway_config  # noqa: E402
from edge_agent.agent import Agent  # noqa: E402
from firmware_stubs.runner import SimulatorSet  # noqa: E402
from tests.e2e import write_gateway_config  # noqa: E402
from tests.test_podium import SECRET, STRANGER, TEACHER, podium_config, podium_devices, podium_events  # noqa: E402


async def until(predicate, timeout: float = 30.0) -> float:  # noqa: ANN001 - a condition
    """Monotonic time at which `predicate()` held (polled every 2 ms)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out: the podium did not act")
        await asyncio.sleep(0.002)
    return time.monotonic()


async def measure(rounds: int, poll_interval: float, tmp: Path) -> dict[str, list[float]]:
    path = write_gateway_config(tmp / "gw1.yaml", f"mqtt://127.0.0.1:{free_port()}", poll_interval=poll_interval,
                                devices=podium_devices(tmp, free_port()), card_secret=SECRET, podium=podium_config())
    config = load_gateway_config(path)
    sims = SimulatorSet(config)
    await sims.start()
    agent = Agent(config)
    task = asyncio.create_task(agent.run())
    out: dict[str, list[float]] = {"power": [], "scene": [], "refused": []}
    try:
        await until(lambda: agent.polling.status.get("cards") == "ok")
        reader, proj = sims.by_device["cards"], sims.by_device["proj"]
        for _ in range(rounds):
            events, sent = len(podium_events(agent)), len(proj.commands)
            t0 = time.monotonic()
            await reader.swipe(TEACHER)
            t_power = await until(lambda s=sent: any(c.startswith("%1POWR ") and not c.endswith("?")
                                                     for c in proj.commands[s:]))
            t_scene = await until(lambda n=events: len(podium_events(agent)) > n)
            out["power"].append((t_power - t0) * 1000)
            out["scene"].append((t_scene - t0) * 1000)
            events = len(podium_events(agent))
            t0 = time.monotonic()
            await reader.swipe(STRANGER)
            out["refused"].append((await until(lambda n=events: len(podium_events(agent)) > n) - t0) * 1000)
            await asyncio.sleep(0.3)  # past the reader's repeat window (0.2 s in this config)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sims.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="start/end swipes (each with an unknown card)")
    parser.add_argument("--poll-interval", type=float, default=5.0, help="the gateway's poll interval, s")
    parser.add_argument("--quick", action="store_true", help="a few rounds (smoke run)")
    args = parser.parse_args()
    rounds = 4 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        out = asyncio.run(measure(rounds, args.poll_interval, Path(tmp)))
    print(machine_line())
    print_table(f"Podium, {rounds} rounds, poll interval {args.poll_interval:g} s, no broker",
                ["swipe ->", "p50 ms", "p95 ms", "max ms"],
                [[what, round(percentile(v, 50)), round(percentile(v, 95)), round(max(v))]
                 for what, v in (("projector POWR received", out["power"]),
                                 ("podium event (whole scene)", out["scene"]),
                                 ("unknown card refused", out["refused"]))])


if __name__ == "__main__":
    main()
