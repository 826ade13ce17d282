"""District scale: N classroom gateways against one Mosquitto and central ingest, for a fixed time.

Why: a city or district platform gathers every classroom of every school.
This measures what one broker and one ingest sustain on this machine, how
late a sample is stored (end-to-end delay), and proves that nothing is lost
on the way, for a realistic publishing pattern.

Gateways: each simulated gateway is its own MQTT 5 client (aiomqtt, the
agent's library) with the agent's client settings (persistent session,
retained `state` with a Last Will); `--swarms` processes hold them all in
asyncio loops. Every gateway publishes, at its own fixed interval drawn
uniformly from [`--interval-min`, `--interval-max`] s and a random phase,
one 6-metric env telemetry sample (QoS 1, its own `seq` 1, 2, ...) and a
`state` heartbeat (QoS 1, retained), both built with `campus.contract`.
Like an agent, each gateway subscribes to its own `ack` topic, reports an
outbox instance and `oldest` (one above the last ack it received) in its
state, and counts the acks ingest sends it: central's acknowledgements are
part of the load, and their number is measured against the samples (the
budget is 5%; they are batched by count and time, central/acks.py, so a
run shorter than a few ACK_MAX_DELAY_S says little: use `--seconds 600`).
The full Agent (devices, outbox) is not run: its cost is what
`bench/agent_footprint.py` measures.

Central: `campus ingest` (`--workers`, shared subscription when more than
one) into `--store` (SQLite, or VictoriaMetrics), the ledger in SQLite or,
with `--db postgresql`, in a PostgreSQL server the benchmark starts (a fresh
database per run, `campus db upgrade` first).

Delay: a sample's own `ts` (set when it is built, just before publishing)
to the time ingest recorded it. The benchmark polls the ledger's
`gateways` table every `--poll` s; when a gateway's `received` count grows,
the new samples are taken as stored at that gateway's `last_seen`, which
ingest sets at the start of the ledger transaction that records them (the
points are already in the store by then). When a state heartbeat was
recorded after the sample within the same poll period, `last_seen` is that
later time, so the figure is an upper bound, tight to within the poll
period.

Loss: at the end, each gateway's `received` in the ledger must equal the
number of samples it published (every one PUBACKed), with 0 gaps and 0
duplicates. Exit status 1 otherwise.

`--sweep 250,500,1000,...` runs one measurement per gateway count and
writes the figures as JSON (`--json`) for `bench/plot_district.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DB_KINDS,
    ENV_VALUES,
    CentralDatabases,
    broker,
    central_databases,
    cpu_seconds,
    db_url,
    ledger_query,
    machine_line,
    percentile,
    print_table,
    start_ingests,
    stop_all,
    store_server,
)
from campus import contract  # noqa: E402
from central.ledger import Ledger  # noqa: E402
from tests.servers import ServerProcess  # noqa: E402

SCHOOL_COUNT = 20  # gateways are spread over this many schools
METRICS = len(ENV_VALUES)


def gateway_id(i: int) -> tuple[str, str]:
    return f"school-{i % SCHOOL_COUNT:02d}", f"gw-{i:05d}"


# ---------------------------------------------------------------- the gateway swarm (a child process)


async def _swarm(port: int, first: int, count: int, seconds: float, imin: float, imax: float, seed: int) -> None:
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    rng = random.Random(seed)
    sent: dict[str, list[float]] = {}
    acked: dict[str, int] = {}  # gateway -> the newest watermark central acknowledged to it
    ack_count = [0]
    lags: list[float] = []  # how late each sample was built against its schedule (the generator's own lag)
    acks: list[float] = []  # publish -> PUBACK of the telemetry, as a gateway sees it
    errors: list[str] = []
    connect_gate = asyncio.Semaphore(50)  # a connect storm, but not all at once

    async with contextlib.AsyncExitStack() as stack:
        clients: list[tuple[str, str, aiomqtt.Client, float]] = []

        async def connect(i: int) -> None:
            school, gw = gateway_id(i)
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            offline = contract.State(online=False, ts=time.time(), agent="bench", devices={}).encode()
            client = aiomqtt.Client("127.0.0.1", port, identifier=contract.agent_client_id(school, gw),
                                    protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=props,
                                    will=aiomqtt.Will(contract.state_topic(school, gw), offline, qos=1, retain=True),
                                    keepalive=60, timeout=30)
            async with connect_gate:
                await stack.enter_async_context(client)
                await client.subscribe(contract.ack_topic(school, gw), qos=1)
            acked[gw] = 0
            clients.append((school, gw, client, rng.uniform(imin, imax)))

        async def take_acks(gw: str, client: aiomqtt.Client) -> None:
            async for message in client.messages:
                ack = contract.Ack.decode(message.payload if isinstance(message.payload, bytes) else b"")
                acked[gw] = max(acked[gw], ack.seq)
                ack_count[0] += 1

        await asyncio.gather(*(connect(i) for i in range(first, first + count)))
        print(f"READY {len(clients)}", flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)
        start = float(line.split()[1])
        end = start + seconds

        async def gateway(school: str, gw: str, client: aiomqtt.Client, interval: float) -> None:
            tele, state_topic = contract.telemetry_topic(school, gw, "env"), contract.state_topic(school, gw)
            stamps = sent.setdefault(gw, [])
            boot = time.time()
            instance = int(gw.removeprefix("gw-")) + 1
            when = start + rng.uniform(0, interval)
            seq = 0
            while when < end:
                await asyncio.sleep(max(0.0, when - time.time()))
                seq += 1
                ts = time.time()
                lags.append(ts - when)
                values = {k: round(v * (1 + 0.05 * rng.random()), 1) for k, v in ENV_VALUES.items()}
                try:
                    await client.publish(tele, contract.Telemetry(seq, ts, values).encode(), qos=1, timeout=60)
                    acks.append(time.time() - ts)
                    stamps.append(ts)
                    oldest = acked[gw] + 1  # the agent holds every row central has not acknowledged
                    state = contract.State(online=True, ts=time.time(), agent="bench", boot=boot, since=boot,
                                           interval=interval,
                                           devices={"env": {"profile": "env-6in1-modbus", "kind": "environment",
                                                            "status": "ok"}},
                                           outbox={"pending": seq - acked[gw], "unacked": seq - acked[gw],
                                                   "dropped": 0, "last_seq": seq, "instance": instance,
                                                   "oldest": oldest,
                                                   "oldest_age": int(ts - stamps[oldest - 1]) if oldest <= seq else 0})
                    await client.publish(state_topic, state.encode(), qos=1, retain=True, timeout=60)
                except aiomqtt.MqttError as exc:
                    errors.append(f"{gw} seq {seq}: {exc}")
                    return
                when += interval

        readers = [asyncio.create_task(take_acks(gw, client)) for _, gw, client, _ in clients]
        await asyncio.gather(*(gateway(*c) for c in clients))
        for task in readers:
            task.cancel()
        lags.sort()
        acks.sort()
        print("RESULT " + json.dumps({"sent": sent, "errors": errors[:20], "error_count": len(errors),
                                      "acks": ack_count[0],
                                      "lag_p99": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
                                      "ack_p99": acks[int(0.99 * (len(acks) - 1))] if acks else 0.0,
                                      "ack_max": acks[-1] if acks else 0.0}), flush=True)


def swarm_main(args: argparse.Namespace) -> None:
    asyncio.run(_swarm(args.port, args.first, args.count, args.seconds, args.interval_min, args.interval_max,
                       args.seed))


class Swarm(ServerProcess):
    """One swarm child process and the lines it prints (stopped like any test process)."""

    stop_timeout = 15.0

    def __init__(self, port: int, first: int, count: int, args: argparse.Namespace, log: Path) -> None:
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--_swarm", "--port", str(port), "--first", str(first),
             "--count", str(count), "--seconds", str(args.seconds), "--interval-min", str(args.interval_min),
             "--interval-max", str(args.interval_max), "--seed", str(first + 1)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("EOF")

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"gateway swarm: no {prefix} after {timeout:.0f}s") from None
            if line.startswith(prefix):
                return line[len(prefix):].strip()
            if line == "EOF":
                raise RuntimeError(f"gateway swarm exited (status {self.proc.wait()}); see {self.log.name}")

    def go(self, start: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"GO {start}\n")
        self.proc.stdin.flush()



# ---------------------------------------------------------------- the measurement (the parent)


@dataclass
class LedgerWatch:
    """Per gateway: (count before, count after, last_seen) each time the ledger's `received` grew."""
    db: Path | str  # a SQLite file or a PostgreSQL URL
    interval: float
    steps: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    polls: int = 0

    def run(self) -> None:
        while not self.stop.is_set():
            rows = ledger_query(self.db, "SELECT id, received, last_seen FROM gateways") or []  # [] before its schema
            self.polls += 1
            for gw, received, last_seen in rows:
                before = self.received.get(gw, 0)
                if received > before:
                    self.steps.setdefault(gw, []).append((before, received, last_seen))
                    self.received[gw] = received
            self.stop.wait(self.interval)

    def total(self) -> int:
        return sum(self.received.values())


@dataclass
class DistrictResult:
    gateways: int
    seconds: float
    store: str
    workers: int
    sent: int
    stored: int
    offered_points_s: float
    sustained_points_s: float
    msgs_s: float
    delay_p50_ms: float
    delay_p95_ms: float
    delay_p99_ms: float
    delay_max_ms: float
    catch_up_s: float
    ingest_cpu_pct: float
    broker_cpu_pct: float
    generator_cpu_pct: float
    generator_lag_p99_ms: float
    gaps: int
    duplicates: int
    mismatched_gateways: int
    publish_errors: int
    ok: bool
    acks: int = 0        # acknowledgements the gateways received during the run
    acks_pct: float = 0.0  # ... per 100 samples sent (the budget: 5)


def run_district(gateways: int, args: argparse.Namespace, tmp: Path, dbs: CentralDatabases) -> DistrictResult:
    work = tmp / f"district-{gateways}"
    work.mkdir()
    points_db = work / "central.db"  # the SQLite point store's file (and the ledger's, by default)
    db = dbs.fresh(work)
    swarms: list[Swarm] = []
    watch = LedgerWatch(db, args.poll)
    with contextlib.ExitStack() as stack:
        mq = stack.enter_context(broker(work / "mq", f"autosave_interval {args.autosave}\n"))
        server = stack.enter_context(store_server(args.store, work / args.store))
        ingests = start_ingests(mq.url, server.url if server else f"sqlite:///{points_db}", db, args.workers, work)
        try:
            per = -(-gateways // args.swarms)
            for k in range(args.swarms):
                first, count = k * per, min(per, gateways - k * per)
                if count > 0:
                    swarms.append(Swarm(mq.port, first, count, args, work / f"swarm-{k}.log"))
            connected = sum(int(s.expect("READY", 120 + gateways / 20)) for s in swarms)
            if connected != gateways:
                raise RuntimeError(f"only {connected} of {gateways} gateways connected")
            watcher = threading.Thread(target=watch.run, daemon=True)
            watcher.start()
            ing_pids = [p.proc.pid for p in ingests if p.proc]
            mq_pids = [mq.proc.pid] if mq.proc else []
            gen_pids = [s.proc.pid for s in swarms]
            cpu_i0, cpu_b0, cpu_g0 = cpu_seconds(ing_pids), cpu_seconds(mq_pids), cpu_seconds(gen_pids)
            start = time.time() + 0.5
            for s in swarms:
                s.go(start)
            results = [json.loads(s.expect("RESULT", args.seconds + 120)) for s in swarms]
            print(f"  gateways: PUBACK p99 {max(r['ack_p99'] for r in results) * 1000:,.0f} ms, max "
                  f"{max(r['ack_max'] for r in results) * 1000:,.0f} ms", flush=True)
            cpu_g = (cpu_seconds(gen_pids) - cpu_g0) / args.seconds
            sent: dict[str, list[float]] = {}
            for r in results:
                sent.update(r["sent"])
            total = sum(len(v) for v in sent.values())
            # Drain: everything PUBACKed must reach the ledger.
            deadline = time.monotonic() + args.drain_timeout
            while watch.total() < total and time.monotonic() < deadline:
                if not all(p.alive() for p in ingests):
                    raise RuntimeError("campus ingest died; see its log in " + str(work))
                time.sleep(0.1)
            time.sleep(max(0.5, 2 * args.poll))  # a late duplicate would show now
            elapsed = time.time() - start
            cpu_i, cpu_b = cpu_seconds(ing_pids) - cpu_i0, cpu_seconds(mq_pids) - cpu_b0
            watch.stop.set()
            watcher.join(10)
            ledger = Ledger(db_url(db))
            final = {g["id"]: g for g in ledger.gateways()}
            ledger.close()
        finally:
            watch.stop.set()
            for s in swarms:
                s.stop()
            stop_all(ingests)

    delays: list[float] = []
    last_store = start
    for gw, stamps in sent.items():
        for before, after, stored_at in watch.steps.get(gw, []):
            last_store = max(last_store, stored_at)
            for seq in range(before + 1, min(after, len(stamps)) + 1):
                delays.append((stored_at - stamps[seq - 1]) * 1000)
    mismatched = [gw for gw, stamps in sent.items()
                  if final.get(gw, {}).get("received") != len(stamps) or final[gw]["gaps"] != 0]
    stored = sum(final.get(gw, {}).get("received", 0) for gw in sent)
    gaps = sum(g["gaps"] for g in final.values())
    dups = sum(g["duplicates"] for g in final.values())
    errors = sum(r["error_count"] for r in results)
    for r in results:
        for e in r["errors"]:
            print(f"publish error: {e}", file=sys.stderr)
    span = max(args.seconds, last_store - start)
    ok = not mismatched and gaps == 0 and dups == 0 and errors == 0 and stored == total
    return DistrictResult(
        gateways=gateways, seconds=args.seconds, store=args.store, workers=args.workers, sent=total, stored=stored,
        offered_points_s=total * METRICS / args.seconds, sustained_points_s=stored * METRICS / span,
        msgs_s=2 * total / span, delay_p50_ms=percentile(delays, 50), delay_p95_ms=percentile(delays, 95),
        delay_p99_ms=percentile(delays, 99), delay_max_ms=max(delays, default=float("nan")),
        catch_up_s=max(0.0, last_store - (start + args.seconds)), ingest_cpu_pct=100 * cpu_i / elapsed,
        broker_cpu_pct=100 * cpu_b / elapsed, generator_cpu_pct=100 * cpu_g,
        generator_lag_p99_ms=1000 * max(r["lag_p99"] for r in results), gaps=gaps, duplicates=dups, mismatched_gateways=len(mismatched),
        publish_errors=errors, ok=ok, acks=sum(r["acks"] for r in results),
        acks_pct=100 * sum(r["acks"] for r in results) / total if total else 0.0)


def print_results(results: list[DistrictResult], args: argparse.Namespace) -> None:
    rows = [[r.gateways, r.sent, r.stored, r.offered_points_s, r.sustained_points_s, r.msgs_s, r.delay_p50_ms,
             r.delay_p99_ms, r.delay_max_ms, r.catch_up_s, r.ingest_cpu_pct, r.broker_cpu_pct,
             r.generator_cpu_pct, r.generator_lag_p99_ms,
             f"{r.gaps}/{r.duplicates}/{r.mismatched_gateways}", r.acks, f"{r.acks_pct:.1f}%",
             "yes" if r.ok else "NO"] for r in results]
    print_table(f"District: {args.seconds:g} s, one sample + one heartbeat per gateway every "
                f"{args.interval_min:g}-{args.interval_max:g} s, {args.workers} ingest worker(s) into {args.store}, "
                f"ledger in {'PostgreSQL' if args.db == 'postgresql' else 'SQLite'}",
                ["gateways", "samples sent", "stored", "offered pts/s", "stored pts/s", "msgs/s (incl. state)",
                 "delay p50 ms", "delay p99 ms", "delay max ms", "catch-up s", "ingest CPU %", "broker CPU %",
                 "gateways' CPU %", "gateways' lag p99 ms",
                 "gaps/dups/bad gw", "acks", "acks per sample", "nothing lost"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Prints a table and a machine line; exit status 1 if a sample was lost.")
    parser.add_argument("--gateways", type=int, default=1000, help="simulated gateways (default 1000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="publishing time per run (default 60)")
    parser.add_argument("--interval-min", type=float, default=5.0, help="shortest sample interval, s (default 5)")
    parser.add_argument("--interval-max", type=float, default=10.0, help="longest sample interval, s (default 10)")
    parser.add_argument("--store", choices=["sqlite", "victoriametrics", "influxdb"], default="sqlite",
                        help="point store (default sqlite)")
    parser.add_argument("--db", choices=DB_KINDS, default="sqlite",
                        help="the central database (the ledger): a SQLite file (default), or a PostgreSQL server "
                             "the benchmark starts, a fresh database per run")
    parser.add_argument("--workers", type=int, default=1, help="campus ingest workers (default 1)")
    parser.add_argument("--swarms", type=int, default=2, help="processes holding the gateways (default 2)")
    parser.add_argument("--autosave", type=int, default=30,
                        help="Mosquitto autosave_interval, s (default 30, as broker_config/mosquitto.conf)")
    parser.add_argument("--poll", type=float, default=0.1, help="ledger poll period for the delay, s (default 0.1)")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="seconds to wait after publishing for everything to be stored (default 120)")
    parser.add_argument("--sweep", default=None, metavar="N,N,...",
                        help="run once per gateway count (e.g. 250,500,1000,2000,4000) instead of --gateways")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="a tiny run for smoke tests (20 gateways, 6 s, 1-2 s)")
    # The gateway swarm child process.
    parser.add_argument("--_swarm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._swarm:
        swarm_main(args)
        return 0
    if args.quick:
        args.gateways, args.seconds, args.interval_min, args.interval_max = 20, 6.0, 1.0, 2.0
        if args.sweep:
            args.sweep = "10,20"
    counts = [int(n) for n in args.sweep.split(",")] if args.sweep else [args.gateways]
    if any(n < 1 for n in counts) or args.seconds <= 0 or not 0 < args.interval_min <= args.interval_max \
            or args.workers < 1 or args.swarms < 1:
        parser.error("gateway counts, --seconds, --workers, --swarms must be positive; 0 < interval-min <= max")

    print(machine_line(), flush=True)
    results: list[DistrictResult] = []
    with tempfile.TemporaryDirectory(prefix="campus-bench-district-") as tmpdir, central_databases(args.db) as dbs:
        for n in counts:
            r = run_district(n, args, Path(tmpdir), dbs)
            results.append(r)
            print(f"{n} gateways: {r.sustained_points_s:,.0f} points/s stored, delay p99 {r.delay_p99_ms:,.0f} ms,"
                  f" {'nothing lost' if r.ok else 'LOST MESSAGES'}", flush=True)
    print_results(results, args)
    for r in results:
        if r.generator_lag_p99_ms > 1000:
            print(f"note: at {r.gateways} gateways the simulated gateways themselves fell behind their schedule "
                  f"(lag p99 {r.generator_lag_p99_ms:,.0f} ms, {r.generator_cpu_pct:.0f}% CPU): the figures there "
                  "are bounded by this machine's cores, not only by broker and ingest")
    print(machine_line())
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(), "args": {k: v for k, v in vars(args).items()
                                                                             if not k.startswith("_") and k not in
                                                                             ("port", "first", "count", "json")},
                                         "results": [asdict(r) for r in results]}, indent=1, default=str))
        print(f"figures written to {args.json}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
