"""What every benchmark shares: the machine line, tables, percentiles, ingest workers, the ledger's account.

The servers themselves (Mosquitto, VictoriaMetrics) and the `campus ...`
subprocesses come from `tests/servers.py`, so the benchmarks start the
system exactly the way the end-to-end tests do; this module only adds what
a benchmark needs on top: a uniform way to print figures, to start N
`campus ingest` workers and wait until they are subscribed, to read how
many messages the ledger has stored (and when), and to measure processes.

The central database (the ledger) is a SQLite file by default; with
`central_databases("postgresql")` the benchmark starts a PostgreSQL server
of its own (`tests/servers.py`, as the tests do) and gives each run a fresh
database brought to this release's schema by `campus db upgrade`, as an
operator does before starting ingest.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/X.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from tests.servers import (  # noqa: E402
    MOSQUITTO,
    CampusProcess,
    InfluxDB,
    Mosquitto,
    PostgreSQL,
    VictoriaMetrics,
    wait_until,
)

__all__ = ["ROOT", "CampusProcess", "Mosquitto", "VictoriaMetrics", "wait_until", "machine_line", "print_table",
           "percentile", "start_ingests", "stop_all", "LedgerTotals", "ledger_totals", "ENV_VALUES",
           "broker", "store_server", "InfluxDB", "cpu_seconds", "MOSQUITTO_SUB", "MOSQUITTO_PUB", "ScriptProcess",
           "DB_KINDS", "CentralDatabases", "central_databases", "db_url", "ledger_query"]

MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"

# One realistic 6-in-1 classroom sample (the env-6in1-modbus metrics).
ENV_VALUES: dict[str, float | int] = {"temperature_c": 22.4, "humidity_pct": 48.5, "co2_ppm": 812,
                                      "pm25_ugm3": 14.2, "illuminance_lux": 430, "noise_dba": 41.7}


def _mosquitto_version() -> str:
    try:
        out = subprocess.run([MOSQUITTO, "-h"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    first = out.splitlines()[0] if out else ""
    return first.replace("mosquitto version ", "") or "?"


def machine_line() -> str:
    """One line naming the machine the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return (f"machine: {os.cpu_count()} cores {cpu}, {mem:.1f} GiB RAM, {platform.system()} {platform.release()},"
            f" Python {platform.python_version()}, mosquitto {_mosquitto_version()};"
            f" load average now {os.getloadavg()[0]:.1f}")


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain-text table (also valid Markdown), so the output can be pasted into docs/benchmarks.md."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}\n", flush=True)
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |")
    print(flush=True)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@contextmanager
def broker(workdir: Path, extra_conf: str = "") -> Iterator[Mosquitto]:
    """A fresh Mosquitto (the tests' configuration: no queue limit, so nothing is dropped)."""
    mq = Mosquitto(workdir, extra_conf)
    try:
        mq.start()
        yield mq
    finally:
        mq.stop()


@contextmanager
def store_server(kind: str, workdir: Path) -> Iterator[VictoriaMetrics | InfluxDB | None]:
    """A fresh time-series server for a store kind (`victoriametrics`, `influxdb`); None for `sqlite`."""
    server_class = {"victoriametrics": VictoriaMetrics, "influxdb": InfluxDB}.get(kind)
    if server_class is None:
        yield None
        return
    workdir.mkdir(parents=True, exist_ok=True)
    server = server_class(workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


DB_KINDS = ("sqlite", "postgresql")


def db_url(db: Path | str) -> str:
    """The central database's URL: a Path is a SQLite file."""
    return f"sqlite:///{db}" if isinstance(db, Path) else db


class CentralDatabases:
    """Where a benchmark's runs keep the central database: a SQLite file in each run's directory
    (`sqlite`), or a fresh database per run on one PostgreSQL server of the benchmark's own
    (`postgresql`), at this release's schema before any ingest starts."""

    def __init__(self, kind: str) -> None:
        if kind not in DB_KINDS:
            raise ValueError(f"central database kind {kind!r}: one of {', '.join(DB_KINDS)}")
        self.kind = kind
        self.server: PostgreSQL | None = None
        self.count = 0

    def start(self) -> None:
        if self.kind == "postgresql":
            # Its own directory in /tmp (reachable by the `postgres` user when run as root), not the run's.
            self.server = PostgreSQL()
            self.server.start()

    def fresh(self, work: Path) -> Path | str:
        """A new, empty central database for one run: a Path (SQLite file) or a PostgreSQL URL."""
        if self.server is None:
            return work / "central.db"
        self.count += 1
        url = self.server.create_database(f"bench_{self.count}")
        upgrade = CampusProcess(["db", "upgrade", "--db", url], work / "db-upgrade.log").start()
        if upgrade.proc is None or upgrade.proc.wait(120) != 0:
            raise RuntimeError(f"campus db upgrade failed: {upgrade.output()[-2000:]}")
        upgrade.stop()
        return url

    def stop(self) -> None:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        if self.server is not None:
            self.server.remove()
            self.server = None


@contextmanager
def central_databases(kind: str) -> Iterator[CentralDatabases]:
    dbs = CentralDatabases(kind)
    try:
        dbs.start()
        yield dbs
    finally:
        dbs.stop()


_engines: dict[str, object] = {}


def ledger_query(db: Path | str, query: str) -> list[tuple[object, ...]] | None:
    """A read-only query of the ledger (SQLite file or PostgreSQL URL); None before its schema exists.
    The benchmark's own look, beside the processes that write (one pooled engine per PostgreSQL URL)."""
    if isinstance(db, Path):
        if not db.exists():
            return None
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(query).fetchall()
        except sqlite3.OperationalError:  # the schema is not there yet
            return None
        finally:
            con.close()
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError

    from central.db import database_url

    engine = _engines.get(db)
    if engine is None:
        engine = _engines[db] = create_engine(database_url(db), pool_size=2, pool_pre_ping=True)
    try:
        with engine.connect() as conn:  # type: ignore[attr-defined]
            return [tuple(r) for r in conn.exec_driver_sql(query)]
    except DBAPIError:
        return None


def start_ingests(mqtt: str, store: str, ledger_db: Path | str, workers: int, logdir: Path,
                  timeout: float = 60) -> list[CampusProcess]:
    """`workers` real `campus ingest` processes (a shared subscription when more than one), subscribed;
    `ledger_db` is the central database (a SQLite file, or a URL)."""
    procs: list[CampusProcess] = []
    try:
        for i in range(workers):
            args = ["ingest", "--mqtt", mqtt, "--store", store, "--db", db_url(ledger_db), "--name",
                    f"bench-ingest-{i}"]
            if workers > 1:
                args += ["--share", "bench"]
            procs.append(CampusProcess(args, logdir / f"ingest-{i}.log").start())
        for p in procs:
            wait_until(lambda p=p: "subscribed: ready" in p.output() or not p.alive(), timeout,
                       message="ingest subscribed")
            if not p.alive():
                raise RuntimeError(f"campus ingest exited: {p.output()[-2000:]}")
    except BaseException:
        stop_all(procs)
        raise
    return procs


class ScriptProcess(CampusProcess):
    """A Python script (a benchmark's own helper mode) as a subprocess, managed like `campus ...` ones."""

    def start(self) -> ScriptProcess:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, *self.args], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, cwd=ROOT)
        return self


def stop_all(procs: Sequence[CampusProcess]) -> None:
    for p in procs:
        try:
            p.stop()
        except Exception as exc:  # noqa: BLE001 - keep stopping the others
            print(f"warning: could not stop {p.args[:1]}: {exc}", file=sys.stderr)


@dataclass
class LedgerTotals:
    gateways: int
    received: int
    duplicates: int
    gaps: int
    last_seen: float


def ledger_totals(db: Path | str) -> LedgerTotals:
    """What the ledger says it stored, read with plain SQL (read-only; the ingest process owns writes);
    `db` a SQLite file or a PostgreSQL URL.

    `last_seen` is the newest time ingest recorded a message (set at the start
    of the ledger transaction, after the points were written to the store)."""
    rows = ledger_query(db, "SELECT COUNT(*), COALESCE(SUM(received), 0), COALESCE(SUM(duplicates), 0),"
                        " COALESCE(SUM(CASE WHEN first_seq IS NULL THEN 0 ELSE max_seq - first_seq + 1 - received"
                        " END), 0), COALESCE(MAX(last_seen), 0) FROM gateways")
    if not rows:
        return LedgerTotals(0, 0, 0, 0, 0.0)
    gateways, received, duplicates, gaps, last_seen = rows[0]
    # PostgreSQL's SUM of a bigint is a numeric (Decimal here).
    return LedgerTotals(int(gateways), int(received), int(duplicates), int(gaps), float(last_seen))  # type: ignore[arg-type]


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by these processes (and their children)."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in (proc, *proc.children(recursive=True)):
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total
