"""How fast an agent's outbox drains after an outage, and what a 10-minute outage costs.

Pre-fills a gateway's outbox with N telemetry samples (as an outage would
leave it), then starts a real Mosquitto, a real `campus ingest` and the
agent (`campus agent`, no devices, so only the backlog moves) and times:
- drain: first publish until the agent's outbox is empty;
- stored: until central's ledger holds all N exactly once.
Repeated for several `outbox.drain_rate` settings. A full classroom (one
device of each kind, 5 s polls) produces about 48 messages a minute, so a
10-minute outage leaves ~480; the table says how long that takes to drain.

    python bench/outbox_drain.py [--messages N] [--rates 200,500,2000] [--quick]
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from campus import contract  # noqa: E402
from campus.contract import Telemetry  # noqa: E402
from edge_agent.outbox import Outbox  # noqa: E402
from tests.e2e import write_gateway_config  # noqa: E402
from tests.servers import CampusProcess, Mosquitto, wait_until  # noqa: E402

FULL_CLASSROOM_MSGS_PER_MIN = 60 / 5 * 4  # env, projector, display, camera every 5 s (+ occasional swipes)


def run_once(workdir: Path, messages: int, rate: float) -> dict[str, float]:
    broker = Mosquitto(workdir / "mosquitto")
    broker.start()
    procs: list[CampusProcess] = []
    try:
        cfg = write_gateway_config(workdir / "gw.yaml", broker.url, gateway="gwb", poll_interval=5,
                                   outbox={"drain_rate": rate, "inflight": 100, "max_messages": messages + 10})
        box = Outbox(workdir / "gwb-data" / "agent.db")
        topic = contract.telemetry_topic("s1", "gwb", "env")
        values = {"temperature_c": 21.5, "humidity_pct": 45.1, "co2_ppm": 812, "pm25_ugm3": 31,
                  "illuminance_lux": 420, "noise_dba": 48.2}
        for start in range(0, messages, 1000):
            box.add(sequenced=[(topic, lambda seq: Telemetry(seq, 1_700_000_000 + seq, values).encode())
                               for _ in range(min(1000, messages - start))])
        box.close()
        db = workdir / "central.db"
        ingest = CampusProcess(["ingest", "--mqtt", broker.url, "--store", f"sqlite:///{db}"], workdir / "ingest.log")
        procs.append(ingest.start())
        wait_until(lambda: "subscribed: ready" in ingest.output(), 30)
        agent = CampusProcess(["agent", "--config", str(cfg)], workdir / "agent.log")
        t0 = time.monotonic()
        procs.append(agent.start())

        def pending() -> int:
            con = sqlite3.connect(str(workdir / "gwb-data" / "agent.db"), timeout=10)
            try:
                return con.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            finally:
                con.close()

        wait_until(lambda: pending() == 0, 600, interval=0.05)
        drained = time.monotonic() - t0

        def stored() -> int:
            con = sqlite3.connect(str(db), timeout=10)
            try:
                row = con.execute("SELECT received, duplicates FROM gateways WHERE id='gwb'").fetchone()
                return row[0] if row else 0
            finally:
                con.close()

        wait_until(lambda: stored() == messages, 600, interval=0.05)
        done = time.monotonic() - t0
        return {"rate": rate, "drained_s": drained, "stored_s": done, "msgs_per_s": messages / done}
    finally:
        for p in procs:
            p.stop()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rates", default="200,500,2000,100000")
    parser.add_argument("--quick", action="store_true", help="a tiny run for smoke tests")
    args = parser.parse_args()
    messages = 300 if args.quick else args.messages
    rates = [500.0] if args.quick else [float(r) for r in args.rates.split(",")]
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}, "
          f"{__import__('os').cpu_count()} cores")
    print(f"{'drain_rate':>10} {'messages':>9} {'drained s':>10} {'stored s':>9} {'msgs/s':>8} "
          f"{'10-min outage of a full classroom drains in':>44}")
    for rate in rates:
        with tempfile.TemporaryDirectory() as tmp:
            r = run_once(Path(tmp), messages, rate)
        outage = FULL_CLASSROOM_MSGS_PER_MIN * 10
        print(f"{rate:>10.0f} {messages:>9} {r['drained_s']:>10.2f} {r['stored_s']:>9.2f} {r['msgs_per_s']:>8.0f} "
              f"{outage / r['msgs_per_s']:>40.2f} s")


if __name__ == "__main__":
    main()
