"""Teacher panels at district size: N live panel streams on one `campus web`, time to first event and RSS.

Why: at 8:00 every classroom's panel opens. Issue 19 measured 200 panels on
the old server at 3.4 s to the first event and 1.1 GB of web RSS; the target
is 500 panels with the first event in <= 500 ms at the median and the web
process(es) under 300 MB.

How: a central SQLite database with `--rooms` rooms, each online with an
environment sensor, a projector and a display (through `Ledger.record`, the
call ingest makes), and an admin API token; a real `campus web` on it
(`--workers`, `--threads`); then `--panels` streams
(`/api/panel/<gateway>/stream`, one room each) opened all at once by an
asyncio client, each timed from its connect to its first `event: room`.
They are then held for `--hold` seconds while a writer process records a
new CO2 value in `--live` rooms a second (as ingest would); the web process
tree's RSS (arbiter and workers together) and CPU are sampled meanwhile,
and the room events the streams received are counted. Beside them, the
CPU time and SQL statements of one API token's lookup
(`Registry.principal_for_token`, the first thing each stream's request
does), timed alone in a process of the checkout under test: a figure the
machine's load hardly moves.

`--code DIR` measures the `campus web` of another checkout (e.g. a worktree
of the previous commit: `git worktree add /tmp/old HEAD~N`), so the old
per-stream polling can be measured on the same machine and load.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from bench.common import ROOT, CampusProcess, machine_line, percentile, print_table, wait_until  # noqa: E402
from campus.contract import State  # noqa: E402
from campus.net import free_port  # noqa: E402
from central.ledger import Ledger, Sequenced  # noqa: E402
from central.registry import Registry  # noqa: E402

DEVICES = {"env": {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"},
           "projector": {"profile": "projector-pjlink", "kind": "projector", "status": "ok"},
           "display": {"profile": "display-samsung-mdc", "kind": "display", "status": "ok"}}


def gateway(i: int) -> str:
    return f"gw-{i:05d}"


def populate(db: Path, rooms: int) -> str:
    """The database of `rooms` live rooms and an admin; returns the admin's API token."""
    ledger = Ledger(str(db))
    now = time.time()
    try:
        for first in range(0, rooms, 200):
            batch = range(first, min(rooms, first + 200))
            ledger.record(
                [m for i in batch for m in (
                    Sequenced(f"s{i // 40}", gateway(i), "env", 1, now - 5,
                              values={"co2_ppm": 600 + i % 400, "temperature_c": 21.5, "humidity_pct": 45.0}),
                    Sequenced(f"s{i // 40}", gateway(i), "projector", 2, now - 4,
                              values={"power": "off", "lamp_hours": 100 + i}),
                    Sequenced(f"s{i // 40}", gateway(i), "display", 3, now - 4,
                              values={"power": "on", "input": "hdmi1", "volume": 20, "muted": "off"}))],
                # A long heartbeat interval: nothing marks a room offline during the run.
                [(f"s{i // 40}", gateway(i), State(online=True, ts=now, room=str(100 + i % 40), devices=DEVICES,
                                                   interval=3600)) for i in batch], [])
    finally:
        ledger.close()
    registry = Registry(f"sqlite:///{db}")
    try:
        registry.add_user("bench", "bench-password-1", "admin")
        return registry.issue_token("bench")
    finally:
        registry.close()


def fill_rollup(db: Path) -> None:
    """The usage rollup's backfill of every day (central/usage_rollup.py `fill`), done before `campus web`
    starts: a site that has run for a while, whose web process only refreshes today's rows."""
    from central import usage_rollup
    from central.store import open_store

    registry, ledger, store = Registry(f"sqlite:///{db}"), Ledger(str(db)), open_store(f"sqlite:///{db}")
    try:
        usage_rollup.fill(registry, ledger, store)
    finally:
        store.close()
        ledger.close()
        registry.close()


def settle(pid: int, timeout: float) -> None:
    """Wait until the web process tree is idle (under 10% of a core over 2 s: its start-up and the usage
    rollup's first round done), at most `timeout` seconds: the burst then meets a running site."""
    deadline, t0 = time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline:
        before = cpu_s(pid)
        time.sleep(2.0)
        if cpu_s(pid) - before < 0.2:
            print(f"web idle after {time.monotonic() - t0:.0f} s", flush=True)
            return
    print(f"web still busy after {timeout:.0f} s; measuring anyway", flush=True)


def live_writer(db: str, rooms: int, per_second: int, stop: multiprocessing.synchronize.Event) -> None:
    """New CO2 values in `per_second` rooms a second, in batches of a tick (0.5 s), as ingest records them."""
    ledger = Ledger(db)
    seq, k = 10, 0
    try:
        while not stop.wait(0.5):
            now, seq = time.time(), seq + 1
            n = max(1, per_second // 2)
            batch = [(k + j) % rooms for j in range(n)]
            k += n
            ledger.record([Sequenced(f"s{i // 40}", gateway(i), "env", seq, now, values={"co2_ppm": 600 + seq % 400})
                           for i in batch], [], [])
    finally:
        ledger.close()


class Panel:
    def __init__(self) -> None:
        self.first: float | None = None  # seconds from connect to the first room event
        self.events = 0
        self.error = ""


async def open_panel(port: int, gw: str, token: str, panel: Panel) -> None:
    """One panel's stream until cancelled: its first `event: room` timed from the connect, its events counted.
    The stream is read in whole chunks, not line by line: this client shares the 2 cores with the server, and
    a task and a wait per line (six lines to the first event, 500 panels) made its own loop the queue that
    the first events waited in, which the server's figures then carried."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    except OSError as exc:
        panel.error = f"connect: {exc}"
        return
    try:
        writer.write(f"GET /api/panel/{gw}/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            panel.error = head.split(b"\r\n", 1)[0].decode()
            return
        tail = b""  # the end of the last read, shorter than the mark: a mark split between two reads counts once
        while True:
            data = await reader.read(65536)
            if not data:
                panel.error = panel.error or "the server ended the stream"
                return
            seen = tail + data
            found = seen.count(_ROOM_EVENT)
            if found:
                panel.events += found
                if panel.first is None:
                    panel.first = time.monotonic() - started
            tail = seen[-(len(_ROOM_EVENT) - 1):]
    except (OSError, asyncio.IncompleteReadError) as exc:
        panel.error = f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()


_ROOM_EVENT = b"event: room\n"


async def close_panels(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def rss_mb(pid: int) -> float:
    return sum(p.memory_info().rss for p in tree(pid)) / 2**20


def memory_mb(pid: int) -> tuple[float, float, list[float]]:
    """The web tree's RSS summed (a page the arbiter shares with the workers it forked counts in each), its
    PSS summed (each shared page divided among its sharers: the memory the tree takes), and each process's
    RSS, arbiter first."""
    procs = tree(pid)
    rss = [p.memory_info().rss / 2**20 for p in procs]
    return sum(rss), sum(p.memory_full_info().pss for p in procs) / 2**20, rss


def cpu_s(pid: int) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in tree(pid))


async def measure(port: int, token: str, args: argparse.Namespace, web_pid: int) -> dict[str, object]:
    panels = [Panel() for _ in range(args.panels)]
    gws = [gateway(i * max(1, args.rooms // args.panels) % args.rooms) for i in range(args.panels)]
    cpu0, client_cpu0 = cpu_s(web_pid), time.process_time()
    tasks = [asyncio.create_task(open_panel(port, gw, token, p)) for gw, p in zip(gws, panels, strict=True)]
    deadline = time.monotonic() + args.connect_timeout
    while time.monotonic() < deadline and not all(p.first is not None or p.error for p in panels):
        await asyncio.sleep(0.05)
    connected = time.monotonic()
    ramp_cpu, client_cpu = cpu_s(web_pid) - cpu0, time.process_time() - client_cpu0
    events_before = sum(p.events for p in panels)
    cpu1, rss_peak, pss_peak, by_process = cpu_s(web_pid), 0.0, 0.0, []
    while time.monotonic() - connected < args.hold:
        rss, pss, each = await asyncio.to_thread(memory_mb, web_pid)
        if rss > rss_peak:
            rss_peak, by_process = rss, each
        pss_peak = max(pss_peak, pss)
        await asyncio.sleep(1.0)
    cpu = (cpu_s(web_pid) - cpu1) / args.hold
    events = sum(p.events for p in panels) - events_before
    # One more panel at a time while the others stay open: a teacher opening hers at 8:05.
    probes = []
    for i in range(args.probes):
        probe = Panel()
        task = asyncio.create_task(open_panel(port, gateway((i * 7 + 3) % args.rooms), token, probe))
        while probe.first is None and not probe.error and not task.done():
            await asyncio.sleep(0.005)
        await close_panels([task])
        if probe.first is not None:
            probes.append(probe.first)
        await asyncio.sleep(0.1)
    await close_panels(tasks)
    firsts = [p.first for p in panels if p.first is not None]
    errors = sorted({p.error for p in panels if p.error and p.first is None})
    return {"opened": len(firsts), "p50": percentile(firsts, 50) if firsts else None,
            "p95": percentile(firsts, 95) if firsts else None, "max": max(firsts) if firsts else None,
            "rss": rss_peak, "pss": pss_peak, "by_process": by_process, "cpu": cpu * 100, "events": events, "errors": errors, "ramp_cpu": ramp_cpu,
            "client_cpu": client_cpu,
            "probe_p50": percentile(probes, 50) if probes else None,
            "probe_p95": percentile(probes, 95) if probes else None}


# Run by the checkout under test (its own `central`), so `--code` measures the old lookup too.
_LOOKUP = """
import sys, time
from sqlalchemy import event
from central.registry import Registry
reg = Registry(sys.argv[1])
token, n, count = sys.argv[2], int(sys.argv[3]), [0]
assert reg.principal_for_token(token) is not None
event.listen(reg.engine, "before_cursor_execute", lambda *a: count.__setitem__(0, count[0] + 1))
cpu = time.process_time()
for _ in range(n):
    reg.principal_for_token(token)
print((time.process_time() - cpu) / n * 1000, count[0] / n)
"""


def token_lookup(db: Path, token: str, code: Path | None, n: int) -> tuple[float, float]:
    """CPU ms and SQL statements of one `Registry.principal_for_token`, what every panel stream's request does
    first, in the checkout under test (one process, nothing else running in it: a figure the load barely
    moves)."""
    done = subprocess.run([sys.executable, "-c", _LOOKUP, f"sqlite:///{db}", token, str(n)], cwd=code or ROOT,
                          capture_output=True, text=True, timeout=300, check=True)
    ms, statements = done.stdout.split()
    return float(ms), float(statements)


def run(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    db = tmp / "central.db"
    t0 = time.monotonic()
    token = populate(db, args.rooms)
    print(f"populated {args.rooms} rooms in {time.monotonic() - t0:.1f} s", flush=True)
    if args.settle:
        t0 = time.monotonic()
        # In a process of its own: at 10,000 rooms the fill leaves this process a heap that its collector
        # then walks while the client times the burst (every first event seemed late by the same ~0.4 s).
        filler = multiprocessing.Process(target=fill_rollup, args=(db,))
        filler.start()
        filler.join()
        if filler.exitcode != 0:
            raise SystemExit(f"the usage rollup's fill failed (exit {filler.exitcode})")
        print(f"usage rollup filled in {time.monotonic() - t0:.1f} s", flush=True)
    lookup = token_lookup(db, token, args.code, 50 if args.quick else 1000)
    port = free_port()
    extra = ["--workers", str(args.workers)] if args.workers else []
    extra += ["--no-jobs"] if args.no_jobs else []
    extra += ["--threads", str(args.threads)] if args.threads else []
    web = CampusProcess(["web", "--store", f"sqlite:///{db}", "--db", f"sqlite:///{db}", "--http-port", str(port),
                         *extra], tmp / "web.log", cwd=args.code).start()
    stop = multiprocessing.Event()
    writer = multiprocessing.Process(target=live_writer, args=(str(db), args.rooms, args.live, stop), daemon=True)
    try:
        web.wait_listening(port, timeout=60)
        # Up when it answers (gunicorn's workers boot after the socket listens).
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5).status == 200,
                   timeout=60, message="campus web answering")
        if args.settle:
            settle(web.proc.pid, args.settle)  # type: ignore[union-attr]
        rss_idle = rss_mb(web.proc.pid)  # type: ignore[union-attr]
        if args.live:
            writer.start()
        result = asyncio.run(measure(port, token, args, web.proc.pid))  # type: ignore[union-attr]
        result["rss_idle"] = rss_idle
        result["lookup_ms"], result["lookup_statements"] = lookup
        return result
    finally:
        stop.set()
        if writer.is_alive():
            writer.join(5)
        web.stop()
        if args.verbose:
            print(web.output()[-3000:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rooms", type=int, default=2000, help="rooms in the database (default 2000)")
    parser.add_argument("--panels", type=int, default=500, help="panel streams opened at once (default 500)")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds the streams stay open (default 20)")
    parser.add_argument("--live", type=int, default=200, help="rooms with a new CO2 value a second (default 200)")
    parser.add_argument("--probes", type=int, default=30, help="panels then opened one at a time (default 30)")
    parser.add_argument("--workers", type=int, default=None, help="campus web --workers (default: its own)")
    parser.add_argument("--threads", type=int, default=None, help="campus web --threads (default: its own)")
    parser.add_argument("--no-jobs", action="store_true", help="campus web --no-jobs: central's background jobs "
                        "left to a `campus jobs` (none runs here: the burst meets a web that serves only)")
    parser.add_argument("--connect-timeout", type=float, default=60.0, help="give up on first events after S")
    parser.add_argument("--code", type=Path, default=None, help="the checkout whose `campus web` runs (default: this)")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="fill the usage rollup first and wait up to S seconds for the web to be idle "
                             "before the burst (a running site's steady state; default 0: open at once)")
    parser.add_argument("--verbose", action="store_true", help="print the end of the web log")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 panels on 50 rooms for 2 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.rooms, args.panels, args.hold, args.probes, args.live = 50, 20, 2.0, 3, 20
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-panels-") as tmp:
        r = run(args, Path(tmp))
    load = psutil.getloadavg()[0]
    print_table(f"Panels: {args.panels} streams on {args.rooms} rooms, {args.live} rooms changing a second, held "
                f"{args.hold:g} s ({args.code or 'this checkout'}; load average after {load:.1f})",
                ["opened at once", "first event p50 ms", "p95 ms", "max ms", "web CPU s to open them",
                 "client CPU s meanwhile",
                 f"one more while open: p50 ms ({args.probes})", "p95 ms", "web RSS idle MB", "web RSS peak MB",
                 "web PSS peak MB", "RSS at peak: arbiter + workers",
                 "web CPU % while open", "room events / s", "token lookup: CPU ms", "statements"],
                [[f"{r['opened']}/{args.panels}", _ms(r["p50"]), _ms(r["p95"]), _ms(r["max"]),
                  round(r["ramp_cpu"], 2), round(r["client_cpu"], 2),  # type: ignore[call-overload]
                  _ms(r["probe_p50"]), _ms(r["probe_p95"]),  # type: ignore[arg-type]
                  round(r["rss_idle"]), round(r["rss"]), round(r["pss"]),  # type: ignore[arg-type]
                  " + ".join(str(round(mb)) for mb in r["by_process"]),  # type: ignore[attr-defined]
                  round(r["cpu"]),  # type: ignore[arg-type]
                  round(r["events"] / args.hold),  # type: ignore[operator]
                  round(r["lookup_ms"], 2),  # type: ignore[call-overload]
                  round(r["lookup_statements"], 1)]])  # type: ignore[call-overload]
    if r["errors"]:
        print(f"streams that failed: {r['errors'][:5]}")
    print(machine_line())
    return 0 if r["opened"] == args.panels else 1


def _ms(value: object) -> object:
    return round(value * 1000) if isinstance(value, float) else "-"


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
