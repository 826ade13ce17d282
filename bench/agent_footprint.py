"""Edge agent footprint: CPU and resident memory of one `campus agent` with 1, 10 and 50 Modbus sensors.

Why: the agent runs on a classroom gateway, often a small ARM box that also
does other work; a school planning hardware needs to know what one agent
costs per polled device.

How: for each device count, a gateway config with that many env-6in1-modbus
sensors (each its own Modbus TCP server on 127.0.0.1, as sensors behind
their own converters are), polled every `--poll-interval` second(s).
`campus sim` serves them from a separate process; `campus agent` publishes
to a real Mosquitto. After `--warmup` seconds, the agent process's CPU time
(user + system, from /proc via psutil) is taken over a fixed `--window`, as %
of one core, and its resident memory (RSS) is sampled every second. The
agent's own outbox (`agent.db`) says how many samples it committed in the
window (it must keep up with devices x window / interval) and how many are
still waiting; its retained `state` must report every device `ok`.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from bench.common import (  # noqa: E402
    MOSQUITTO_SUB,
    CampusProcess,
    broker,
    machine_line,
    print_table,
    stop_all,
    wait_until,
)
from campus import contract  # noqa: E402
from campus.net import free_port, wait_for_port  # noqa: E402
from tests.e2e import env_device, write_gateway_config  # noqa: E402

SCHOOL = "bench"


@dataclass
class Footprint:
    devices: int
    cpu_pct: float
    sim_cpu_pct: float
    rss_mib_mean: float
    rss_mib_max: float
    samples: int
    expected: int
    pending: int
    dropped: int
    status_ok: int
    alive: bool

    @property
    def keeps_up(self) -> bool:
        return self.samples >= 0.9 * self.expected and self.pending <= self.devices * 2


def outbox_figures(path: Path) -> tuple[int, int, int]:
    """(last seq, pending, dropped) from the agent's own database, in one snapshot."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, isolation_level=None)
    try:
        db.execute("BEGIN")
        meta = dict(db.execute("SELECT key, value FROM meta"))
        pending = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        db.execute("COMMIT")
    finally:
        db.close()
    return meta["next_seq"] - 1, pending, meta["dropped"]


def retained_state(port: int, gateway: str) -> dict[str, object]:
    out = subprocess.run([MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-t",
                          contract.state_topic(SCHOOL, gateway), "-C", "1", "-W", "10"],
                         capture_output=True, timeout=20)
    return json.loads(out.stdout or b"{}")


def measure(mq_url: str, mq_port: int, devices: int, interval: float, warmup: float, window: float,
            tmp: Path) -> Footprint:
    gateway = f"gw-{devices:03d}"
    ports = [free_port() for _ in range(devices)]
    cfg = write_gateway_config(tmp / f"{gateway}.yaml", mq_url, school=SCHOOL, gateway=gateway,
                               poll_interval=interval,
                               devices=[env_device(p, f"env-{i:02d}", seed=i + 1) for i, p in enumerate(ports)])
    agent_db = tmp / f"{gateway}-data" / "agent.db"
    sim = CampusProcess(["sim", "--config", str(cfg)], tmp / f"{gateway}-sim.log")
    agent = CampusProcess(["agent", "--config", str(cfg)], tmp / f"{gateway}-agent.log")
    try:
        sim.start()
        for p in ports:
            wait_for_port("127.0.0.1", p, 30)
        agent.start()
        assert agent.proc is not None and sim.proc is not None
        wait_until(agent_db.exists, 30, message="the agent's outbox")
        time.sleep(warmup)
        proc, sim_proc = psutil.Process(agent.proc.pid), psutil.Process(sim.proc.pid)
        seq0, _, _ = outbox_figures(agent_db)
        c0, s0, t0 = proc.cpu_times(), sim_proc.cpu_times(), time.monotonic()
        rss: list[float] = []
        while time.monotonic() - t0 < window:
            rss.append(proc.memory_info().rss / 2**20)
            time.sleep(min(1.0, max(0.0, window - (time.monotonic() - t0))))
        c1, s1, elapsed = proc.cpu_times(), sim_proc.cpu_times(), time.monotonic() - t0
        seq1, pending, dropped = outbox_figures(agent_db)
        state = retained_state(mq_port, gateway)
        ok = sum(1 for d in state.get("devices", {}).values() if isinstance(d, dict) and d.get("status") == "ok")
        return Footprint(devices, 100 * (c1.user + c1.system - c0.user - c0.system) / elapsed,
                         100 * (s1.user + s1.system - s0.user - s0.system) / elapsed,
                         sum(rss) / len(rss), max(rss), seq1 - seq0, int(devices * elapsed / interval),
                         pending, dropped, ok, agent.alive())
    finally:
        stop_all([agent, sim])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Prints a table and a machine line; exit status 1 if the agent crashed,"
                                            " dropped samples or a device was not ok.")
    parser.add_argument("--devices", default="1,10,50", help="device counts, comma-separated (default 1,10,50)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls (default 1)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring (default 10)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured (default 30)")
    parser.add_argument("--quick", action="store_true", help="a tiny run for smoke tests (1 and 5 devices, 2+3 s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.warmup, args.window = "1,5", 2.0, 3.0
    counts = [int(c) for c in args.devices.split(",")]
    if any(c < 1 for c in counts) or args.poll_interval <= 0 or args.window <= 0 or args.warmup < 0:
        parser.error("device counts must be positive, --poll-interval and --window > 0")

    print(machine_line(), flush=True)
    results: list[Footprint] = []
    with tempfile.TemporaryDirectory(prefix="campus-bench-agent-") as tmpdir:
        tmp = Path(tmpdir)
        with broker(tmp / "mq") as mq:
            for n in counts:
                f = measure(mq.url, mq.port, n, args.poll_interval, args.warmup, args.window, tmp)
                results.append(f)
                print(f"{n} devices: agent {f.cpu_pct:.1f}% CPU, {f.rss_mib_max:.0f} MiB RSS", flush=True)
    rows = [[f.devices, f.cpu_pct, f.cpu_pct / f.devices, f.rss_mib_mean, f.rss_mib_max, f.samples, f.expected,
             f.pending, f.dropped, f"{f.status_ok}/{f.devices}", "yes" if f.keeps_up else "NO", f.sim_cpu_pct]
            for f in results]
    print_table(f"One agent, Modbus TCP sensors polled every {args.poll_interval:g} s "
                f"(CPU % of one core over {args.window:g} s after {args.warmup:g} s warm-up)",
                ["devices", "agent CPU %", "CPU % per device", "RSS MiB mean", "RSS MiB max", "samples",
                 "expected", "outbox pending", "dropped", "devices ok", "keeps up", "sim CPU % (other process)"],
                rows)
    print(machine_line())
    bad = [f for f in results if not f.alive or f.dropped or f.status_ok != f.devices or f.samples == 0]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
