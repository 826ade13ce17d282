"""Ingest throughput: messages and points per second from Mosquitto into each store, against the raw broker.

Why: central ingest acknowledges a message only after the store and the
ledger have it, so its rate, not the broker's, decides how fast a district
can catch up after an outage. This benchmark puts a number on it and on the
issue's target (one worker keeps up with at least 50% of the raw broker
rate), and proves that nothing is lost on the way.

How: N valid telemetry messages (6 metrics each, `--gateways` gateways with
their own seq 1, 2, ...) are generated into files first. For every run a
fresh Mosquitto (the tests' configuration, no queue limit) is started and
the messages are published as fast as possible, QoS 1, by one
`mosquitto_pub -l` process per gateway (C, so the publisher is not what is
measured). The clock starts just before the first publisher starts and stops

- raw: at the receive timestamp (`mosquitto_sub -F %U`) of the N-th message
  at a `mosquitto_sub -q 1` subscriber on the same broker;
- ingest: at the ledger's newest `last_seen` once the ledger counts N stored
  messages (ingest sets it after the points are written), with 1, 2, 4 real
  `campus ingest` processes (MQTT 5 shared subscription when more than one)
  into `sqlite:///`, `victoriametrics://` and `influxdb://` (InfluxDB 1.x),
  the ledger in SQLite, or with `--db postgresql` in a PostgreSQL server the
  benchmark starts (a fresh database per run, `campus db upgrade` first).

Then it checks that every gateway's count equals what was sent, with no gaps,
and that the store holds 6 points per message. Exit status 1 on any loss.

Acknowledgements (`--acks on`, the default): before the clock starts, each
gateway's retained `state` names an outbox instance and `oldest: 1`, as an
agent's does, so ingest computes every gateway's watermark after each
commit and publishes its acks (batched: central/acks.py) during the run; a
`mosquitto_sub` on `campus/v1/+/+/ack` counts them. `--acks off` sends no
state: the ingest of before acknowledgements, for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DB_KINDS,
    ENV_VALUES,
    MOSQUITTO_PUB,
    MOSQUITTO_SUB,
    CentralDatabases,
    broker,
    central_databases,
    cpu_seconds,
    db_url,
    ledger_query,
    ledger_totals,
    machine_line,
    print_table,
    start_ingests,
    stop_all,
    store_server,
    wait_until,
)
from campus import contract  # noqa: E402
from central.ledger import Ledger  # noqa: E402
from central.store.sqlite import SqlitePointStore  # noqa: E402
from tests.servers import InfluxDB, VictoriaMetrics  # noqa: E402

SCHOOL = "bench"
METRICS_PER_MESSAGE = len(ENV_VALUES)
TARGET_RATIO = 0.7  # with acknowledgements (issue 16); it was 0.5 before them
PG_TARGET_RATIO = 0.5  # with the ledger in PostgreSQL (issue 17: a district's ingest hosts share one server)


@dataclass
class Feed:
    """The pre-generated messages: one file of payload lines per gateway topic."""
    files: list[tuple[str, str, Path]]  # (gateway, topic, file)
    per_gateway: int

    @property
    def total(self) -> int:
        return self.per_gateway * len(self.files)


@dataclass
class Run:
    label: str
    workers: int
    seconds: float
    publish_seconds: float
    cpu_pct: float
    stored: int
    gaps: int
    duplicates: int
    points: int
    ok: bool
    note: str = ""
    acks: int | None = None  # ack messages published during the run (None: not counted)


def generate(tmp: Path, messages: int, gateways: int) -> Feed:
    per = max(1, messages // gateways)
    base = time.time() - 3600  # an hour ago, so every sample is in the past and inside the stores' windows
    files = []
    for g in range(gateways):
        gw = f"gw-{g:04d}"
        topic = contract.telemetry_topic(SCHOOL, gw, "env")
        path = tmp / f"{gw}.lines"
        with path.open("wb") as f:
            for seq in range(1, per + 1):
                values = {k: (v + (seq % 7) * 0.1 if isinstance(v, float) else v + seq % 11)
                          for k, v in ENV_VALUES.items()}
                f.write(contract.Telemetry(seq, round(base + seq * 0.01, 3), values).encode() + b"\n")
        files.append((gw, topic, path))
    return Feed(files, per)


def publish(port: int, feed: Feed, timeout: float) -> tuple[float, float]:
    """Publish every message (QoS 1); returns (start time, seconds until every publisher had its PUBACKs)."""
    procs: list[subprocess.Popen[bytes]] = []
    handles = []
    try:
        started = time.time()
        for _, topic, path in feed.files:
            fh = path.open("rb")
            handles.append(fh)
            procs.append(subprocess.Popen([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(port), "-V", "5", "-q", "1",
                                           "-M", "100", "-t", topic, "-l"], stdin=fh))
        for p in procs:
            if p.wait(timeout) != 0:
                raise RuntimeError(f"mosquitto_pub exited with status {p.returncode}")
        return started, time.time() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for fh in handles:
            fh.close()


def announce(port: int, feed: Feed, db: Path | str, timeout: float) -> None:
    """Each gateway's retained state, as an agent with an outbox publishes it, and wait until the ledger has
    them all: from then on ingest acknowledges what it stores."""
    now = time.time()
    for g, (gw, _, _) in enumerate(feed.files):
        state = contract.State(online=True, ts=now, since=now, agent="bench", interval=5.0, outbox={
            "pending": feed.per_gateway, "unacked": 0, "dropped": 0, "last_seq": feed.per_gateway,
            "instance": 1000 + g, "oldest": 1, "oldest_age": 0})
        subprocess.run([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(port), "-V", "5", "-q", "1", "-r",
                        "-t", contract.state_topic(SCHOOL, gw), "-s"], input=state.encode(), check=True, timeout=10)

    def recorded() -> bool:
        rows = ledger_query(db, "SELECT COUNT(*) FROM gateways WHERE outbox_oldest IS NOT NULL")
        return bool(rows) and rows[0][0] == len(feed.files)
    wait_until(recorded, timeout, interval=0.1, message="every gateway's state in the ledger")


def run_raw(tmp: Path, feed: Feed, timeout: float) -> Run:
    """mosquitto_sub -q 1 receiving the same messages: the broker's own rate on this machine."""
    tmp.mkdir()
    with broker(tmp / "mq") as mq:
        out_path = tmp / "raw.out"
        with out_path.open("wb") as out:
            sub = subprocess.Popen([MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(mq.port), "-V", "5", "-q", "1",
                                    "-t", f"{contract.ROOT}/+/+/telemetry/+", "-t", "bench/ready", "-F", "%t %U"],
                                   stdout=out)
            try:
                # Ready when it has received something on the side topic.
                def ready() -> bool:
                    subprocess.run([MOSQUITTO_PUB, "-p", str(mq.port), "-t", "bench/ready", "-m", "x"], check=True,
                                   timeout=10)
                    return out_path.stat().st_size > 0
                wait_until(ready, 20, interval=0.1, message="mosquitto_sub subscribed")
                started, pub_s = publish(mq.port, feed, timeout)
                counted = {"n": 0, "last": 0.0, "offset": 0}

                def all_received() -> bool:
                    with out_path.open("rb") as f:
                        f.seek(counted["offset"])
                        chunk = f.read()
                    end = chunk.rfind(b"\n") + 1
                    counted["offset"] += end
                    for line in chunk[:end].splitlines():
                        topic, _, stamp = line.partition(b" ")
                        if topic.startswith(contract.ROOT.encode()):
                            counted["n"] += 1
                            counted["last"] = max(counted["last"], float(stamp))
                    return counted["n"] >= feed.total
                wait_until(all_received, timeout, interval=0.05, message=f"{feed.total} messages at mosquitto_sub")
            finally:
                sub.terminate()
                sub.wait(10)
    seconds = counted["last"] - started
    return Run("raw broker (mosquitto_sub)", 0, seconds, pub_s, float("nan"), counted["n"], 0, 0, 0,
               counted["n"] == feed.total)


def _stored_points(server: VictoriaMetrics | InfluxDB) -> int:
    """Points (metric values) the time-series server holds, asked over its own HTTP API."""
    if isinstance(server, InfluxDB):
        series = server.influxql('SELECT count(*) FROM /.*/').get("series", [])
        return sum(sum(v for v in s["values"][0][1:] if v) for s in series)
    params = urllib.parse.urlencode([("match[]", '{__name__=~"(device|environment)_.+"}'),
                                     ("start", f"{time.time() - 7200:.0f}"), ("end", f"{time.time() + 60:.0f}")])
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/v1/export?{params}", timeout=60) as resp:
        return sum(len(json.loads(line)["values"]) for line in resp.read().splitlines() if line.strip())


def run_ingest(tmp: Path, feed: Feed, store_kind: str, workers: int, timeout: float, acks: bool = True,
               dbs: CentralDatabases | None = None) -> Run:
    work = tmp / f"{store_kind}-{workers}-{'acks' if acks else 'no-acks'}"
    work.mkdir()
    points_db = work / "central.db"  # the SQLite point store's file (and the ledger's, by default)
    db = dbs.fresh(work) if dbs is not None else points_db
    label = {"sqlite": "sqlite:///", "victoriametrics": "victoriametrics://", "influxdb": "influxdb://"}[store_kind]
    if not isinstance(db, Path):
        label += ", ledger in PostgreSQL"
    with contextlib.ExitStack() as stack:
        mq = stack.enter_context(broker(work / "mq"))
        server = stack.enter_context(store_server(store_kind, work / store_kind))
        procs = start_ingests(mq.url, server.url if server else f"sqlite:///{points_db}", db, workers, work)
        ack_log = work / "acks.out"
        counter = None
        try:
            if acks:
                counter = subprocess.Popen([MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(mq.port), "-V", "5", "-q", "1",
                                            "-t", contract.acks_filter()],
                                           stdout=ack_log.open("wb"))
                announce(mq.port, feed, db, timeout)
            pids = [p.proc.pid for p in procs if p.proc]
            cpu0 = cpu_seconds(pids)
            started, pub_s = publish(mq.port, feed, timeout)

            def stored_or_dead() -> bool:
                return not all(p.alive() for p in procs) or ledger_totals(db).received >= feed.total
            wait_until(stored_or_dead, timeout, interval=0.05, message=f"{feed.total} messages in the ledger")
            dead = [p for p in procs if not p.alive()]
            if dead:
                raise RuntimeError(f"campus ingest died: {dead[0].output()[-2000:]}")
            totals = ledger_totals(db)
            seconds = totals.last_seen - started
            cpu = cpu_seconds(pids) - cpu0
            time.sleep(0.5)  # a duplicate, if any, would be counted by now
            ledger = Ledger(db_url(db))
            per_gw = {g["id"]: g for g in ledger.gateways()}
            ledger.close()
            totals = ledger_totals(db)
        finally:
            stop_all(procs)
            if counter is not None:
                counter.terminate()
                counter.wait(10)
        expected_points = feed.total * METRICS_PER_MESSAGE
        if server is not None:
            points = 0

            def server_has_all() -> bool:
                nonlocal points
                points = _stored_points(server)
                return points >= expected_points
            try:
                wait_until(server_has_all, 60, interval=0.5, message=f"{expected_points} points in {store_kind}")
            except AssertionError:
                pass  # reported below as missing points
        else:
            sq = SqlitePointStore(points_db)
            points = sq.count()
            sq.close()
    complete = all(per_gw.get(gw, {}).get("received") == feed.per_gateway and per_gw[gw]["gaps"] == 0
                   for gw, _, _ in feed.files)
    ok = complete and totals.received == feed.total and totals.gaps == 0 and points == expected_points
    note = "" if ok else f"expected {feed.total} messages / {expected_points} points per the feed"
    sent_acks = len(ack_log.read_bytes().splitlines()) if acks else None
    return Run(label + ("" if acks else " (no acks)"), workers, seconds, pub_s,
               100 * cpu / seconds if seconds > 0 else float("nan"), totals.received, totals.gaps, totals.duplicates,
               points, ok, note, sent_acks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Prints a table and a machine line; exit status 1 if a message was lost.")
    parser.add_argument("--messages", type=int, default=60_000, help="messages per run (default 60000)")
    parser.add_argument("--gateways", type=int, default=4,
                        help="distinct gateways, one publisher process each (default 4)")
    parser.add_argument("--workers", default="1,2,4", help="ingest worker counts, comma-separated (default 1,2,4)")
    parser.add_argument("--stores", default="sqlite,victoriametrics,influxdb",
                        help="stores to measure, comma-separated (default sqlite,victoriametrics,influxdb)")
    parser.add_argument("--raw-repeats", type=int, default=3,
                        help="raw broker runs; the median counts (default 3; they take a few seconds each)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one run may take at most (default 300)")
    parser.add_argument("--acks", choices=["on", "off", "both"], default="on",
                        help="gateways that take acknowledgements (on, the default), none (off, as before them), "
                             "or one run of each per store and worker count (both)")
    parser.add_argument("--db", choices=DB_KINDS, default="sqlite",
                        help="the central database (the ledger): a SQLite file (default), or a PostgreSQL server "
                             "the benchmark starts, a fresh database per run")
    parser.add_argument("--quick", action="store_true", help="a tiny run for smoke tests (2000 messages, 1 and 2 workers)")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.workers, args.raw_repeats = 2000, "1,2", 1
    workers = [int(w) for w in args.workers.split(",")]
    stores = [s.strip() for s in args.stores.split(",")]
    if any(s not in ("sqlite", "victoriametrics", "influxdb") for s in stores) or any(w < 1 for w in workers) \
            or args.raw_repeats < 1:
        parser.error("--stores takes sqlite, victoriametrics and/or influxdb; --workers and --raw-repeats positive numbers")

    print(machine_line(), flush=True)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="campus-bench-ingest-") as tmpdir, central_databases(args.db) as dbs:
        tmp = Path(tmpdir)
        feed = generate(tmp, args.messages, args.gateways)
        print(f"{feed.total} telemetry messages ({METRICS_PER_MESSAGE} metrics each) from {len(feed.files)} gateways,"
              " QoS 1, published by mosquitto_pub -l (one per gateway)", flush=True)
        raws = []
        for i in range(args.raw_repeats):
            raws.append(run_raw(tmp / f"raw-{i}", feed, args.timeout))
            print(f"raw: {feed.total / raws[-1].seconds:,.0f} msg/s", flush=True)
        raw = sorted(raws, key=lambda r: r.seconds)[len(raws) // 2]  # the median run
        raw.label = f"raw broker (mosquitto_sub){', median of ' + str(len(raws)) if len(raws) > 1 else ''}"
        runs.append(raw)
        modes = {"on": [True], "off": [False], "both": [True, False]}[args.acks]
        for store in stores:
            for w in workers:
                for acks in modes:
                    r = run_ingest(tmp, feed, store, w, args.timeout, acks, dbs)
                    runs.append(r)
                    print(f"{r.label} x{w}: {feed.total / r.seconds:,.0f} msg/s"
                          f"{f', {r.acks} acks' if r.acks is not None else ''}"
                          f"{'' if r.ok else '  LOST: ' + r.note}", flush=True)

    raw_rate = feed.total / raw.seconds
    rows = []
    for r in runs:
        rate = feed.total / r.seconds
        rows.append([r.label, r.workers or "-", feed.total, round(r.publish_seconds, 2), round(r.seconds, 2), rate,
                     rate * METRICS_PER_MESSAGE,
                     f"{rate / raw_rate:.0%}", r.cpu_pct, r.stored, r.gaps, r.duplicates,
                     "-" if r.acks is None else r.acks, "yes" if r.ok else "NO"])
    print_table(f"Ingest throughput ({feed.total} messages x {METRICS_PER_MESSAGE} metrics, QoS 1)",
                ["path", "workers", "messages", "published in s", "all stored in s", "msg/s", "points/s", "of raw", "ingest CPU %",
                 "stored", "gaps", "dups", "acks sent", "complete"], rows)
    for store in stores:
        one = next((r for r in runs if r.workers == 1 and r.label.startswith(store) and r.acks is not None), None)
        if one:
            ratio = raw.seconds / one.seconds
            target = PG_TARGET_RATIO if args.db == "postgresql" else TARGET_RATIO
            print(f"target (one worker >= {target:.0%} of raw broker throughput), {one.label}: "
                  f"{ratio:.0%} -> {'met' if ratio >= target else 'NOT met'}")
    print(machine_line())
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
