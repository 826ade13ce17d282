"""Soak: a district's dashboard for half an hour, watched from outside for what it does not give back.

Why: `campus web` runs for months under a service manager. A SQLite
connection kept per request thread once leaked two open files per request:
1.27 GB and 4,134 open files after 40 minutes, then 503 on every page
(issue 14). This runs the system a district runs and prints, every minute,
the resident memory, open files (descriptors: files, sockets, pipes) and
threads of the web and ingest processes, so a leak shows as a column that
keeps growing.

What runs: Mosquitto; `campus ingest` into SQLite; `campus web` (with
`--mqtt`, as a district runs it, under `--open-files`, default 1,024:
systemd's default soft limit) on a central database with `--rooms` gateways
registered (default 2,000); the gateways themselves publishing contract
telemetry and `state` every 5-10 s (bench/district.py's gateway swarm);
`--boards` facility managers' boards (default 20), each asking
`/api/board` every 5 s as dashboards/static/health.js does, on a new
connection each time; `--panels` classroom panels (default 200), each an
open `/api/panel/GW/stream` event stream, reopened 2 s after it drops as
EventSource does.

Exit status 1 if a request failed, a stream broke, or a process died.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from bench.common import (  # noqa: E402
    CampusProcess,
    broker,
    ledger_totals,
    machine_line,
    percentile,
    print_table,
    start_ingests,
    stop_all,
    wait_until,
)
from bench.district import SCHOOL_COUNT, Swarm, gateway_id  # noqa: E402
from campus.net import free_port  # noqa: E402
from central.registry import Registry  # noqa: E402

BOARD_EVERY_S = 5.0  # dashboards/static/health.js
STREAM_RETRY_S = 2.0  # the `retry:` the panel stream sends


# ---------------------------------------------------------------- the browsers


@dataclass
class Counters:
    """What the simulated browsers saw since the last reading."""
    requests: int = 0
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    events: int = 0
    stream_drops: int = 0
    open_streams: int = 0


class Browsers:
    """Boards polling and panels streaming, as asyncio tasks on a thread of this process."""

    def __init__(self, port: int, token: str, boards: int, panels: list[str]) -> None:
        self.port, self.token, self.boards, self.panels = port, token, boards, panels
        self.lock = threading.Lock()
        self.now = Counters()
        self.total = Counters()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="browsers", daemon=True)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> None:
        for i in range(self.boards):
            self._tasks.append(asyncio.create_task(self._board(i * BOARD_EVERY_S / max(1, self.boards))))
        for gateway in self.panels:
            self._tasks.append(asyncio.create_task(self._panel(gateway)))

    def stop(self) -> None:
        if not self.thread.is_alive():  # never started (the run failed before): nothing to cancel
            self.loop.close()
            return

        async def cancel() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def take(self) -> Counters:
        """The counters since the last call (and the streams open now)."""
        with self.lock:
            now, self.now = self.now, Counters(open_streams=self.now.open_streams)
        return now

    def _count(self, **changes: int) -> None:
        with self.lock:
            for c in (self.now, self.total):
                for name, n in changes.items():
                    setattr(c, name, getattr(c, name) + n)

    def _error(self, what: str) -> None:
        with self.lock:
            for c in (self.now, self.total):
                c.errors += 1
                if len(c.first_errors) < 5:
                    c.first_errors.append(what)

    def _request(self, path: str) -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {self.token}\r\n"
                "Accept: application/json\r\nConnection: close\r\n\r\n").encode()

    async def _board(self, phase: float) -> None:
        await asyncio.sleep(phase)
        while True:
            started = time.monotonic()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    writer.write(self._request("/api/board"))
                    body = await reader.read()
                finally:
                    writer.close()
                status = body[9:12]
                if status != b"200":
                    self._error(f"/api/board: {body[:120]!r}")
                else:
                    with self.lock:
                        for c in (self.now, self.total):
                            c.requests += 1
                            c.latencies.append(time.monotonic() - started)
            except OSError as exc:
                self._error(f"/api/board: {exc!r}")
            # The page asks again 5 s after the last answer came (health.js `poll`).
            await asyncio.sleep(BOARD_EVERY_S)

    async def _panel(self, gateway: str) -> None:
        while True:
            opened = False
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    writer.write(self._request(f"/api/panel/{gateway}/stream"))
                    head = await reader.readuntil(b"\r\n\r\n")
                    if head[9:12] != b"200":
                        self._error(f"panel stream {gateway}: {head[:120]!r}")
                    else:
                        opened = True
                        self._count(open_streams=1)
                        tail = b""
                        while chunk := await reader.read(65536):
                            data = tail + chunk
                            self._count(events=data.count(b"event: room") - tail.count(b"event: room"))
                            tail = data[-16:]
                finally:
                    writer.close()
                    if opened:
                        self._count(open_streams=-1)
                if opened:  # the server ended a stream it had opened: that is a drop
                    self._count(stream_drops=1)
            except (OSError, asyncio.IncompleteReadError) as exc:
                if opened:
                    self._count(stream_drops=1)
                else:
                    self._error(f"panel stream {gateway}: {exc!r}")
            await asyncio.sleep(STREAM_RETRY_S)


# ---------------------------------------------------------------- the run


@dataclass
class Sample:
    minute: float
    web_rss: float
    web_fds: int
    web_threads: int
    ingest_rss: float
    ingest_fds: int
    ingest_threads: int
    requests: int
    errors: int
    board_p50_ms: float
    board_p95_ms: float
    events: int
    streams: int
    drops: int
    stored: int


def footprint(pid: int) -> tuple[float, int, int]:
    """(RSS MiB, open descriptors, threads) of a process."""
    proc = psutil.Process(pid)
    return proc.memory_info().rss / 2**20, proc.num_fds(), proc.num_threads()


def register(db: Path, rooms: int) -> None:
    """The district's gateways in the registry, as an IT department imports them (rooms 100, 101, ...)."""
    registry = Registry(f"sqlite:///{db}")
    try:
        for i in range(rooms):
            school, gateway = gateway_id(i)
            registry.register_gateway(gateway, school, str(100 + i // SCHOOL_COUNT), "A")
    finally:
        registry.close()


def run(args: argparse.Namespace, work: Path) -> tuple[list[Sample], Counters, bool]:
    db = work / "central.db"
    t0 = time.monotonic()
    register(db, args.rooms)
    print(f"registered {args.rooms} rooms in {time.monotonic() - t0:.0f} s", flush=True)
    token = secrets.token_urlsafe(24)
    seconds = args.minutes * 60
    samples: list[Sample] = []
    with broker(work / "mq") as mq:
        ingests = start_ingests(mq.url, f"sqlite:///{db}", db, 1, work)
        port = free_port()
        web = CampusProcess(["web", "--mqtt", mq.url, "--store", f"sqlite:///{db}", "--http-port", str(port),
                             f"--admin-token={token}"], work / "web.log", open_files=args.open_files)
        swarms: list[Swarm] = []
        browsers = Browsers(port, token, args.boards, [gateway_id(i)[1] for i in range(min(args.panels, args.rooms))])
        try:
            web.start()
            web.wait_listening(port, timeout=60)
            # The gateways publish for the whole run plus the start-up of the browsers.
            swarm_args = argparse.Namespace(seconds=seconds + 30, interval_min=args.interval_min,
                                            interval_max=args.interval_max)
            per = -(-args.rooms // args.swarms)
            for k in range(args.swarms):
                first, count = k * per, min(per, args.rooms - k * per)
                if count > 0:
                    swarms.append(Swarm(mq.port, first, count, swarm_args, work / f"swarm-{k}.log"))
            connected = sum(int(s.expect("READY", 120 + args.rooms / 20)) for s in swarms)
            print(f"{connected} gateways connected", flush=True)
            for s in swarms:
                s.go(time.time() + 0.5)
            wait_until(lambda: ledger_totals(db).gateways >= args.rooms, 60 + args.interval_max * 3,
                       interval=0.5, message="every gateway reported")
            browsers.start()
            started = time.monotonic()
            assert web.proc is not None and ingests[0].proc is not None
            web_pid, ingest_pid = web.proc.pid, ingests[0].proc.pid
            print(f"{args.boards} boards and {len(browsers.panels)} panels open; a line every {args.every:g} s",
                  flush=True)
            alive = True
            while (elapsed := time.monotonic() - started) < seconds and alive:
                time.sleep(min(args.every, seconds - elapsed))
                alive = web.alive() and ingests[0].alive()
                if not alive:
                    break
                c = browsers.take()
                w, i = footprint(web_pid), footprint(ingest_pid)
                ms = [x * 1000 for x in c.latencies]
                sample = Sample(round((time.monotonic() - started) / 60, 2), *w, *i, c.requests, c.errors,
                                percentile(ms, 50), percentile(ms, 95), c.events, c.open_streams, c.stream_drops,
                                ledger_totals(db).received)
                samples.append(sample)
                print(f"  min {sample.minute:5.1f}  web RSS {sample.web_rss:6.1f} MiB  fds {sample.web_fds:4d}  "
                      f"threads {sample.web_threads:4d} | ingest RSS {sample.ingest_rss:5.1f} MiB  fds "
                      f"{sample.ingest_fds:3d}  threads {sample.ingest_threads:2d} | board {c.requests} ok, "
                      f"{c.errors} errors, p95 {sample.board_p95_ms:,.0f} ms | streams {c.open_streams}, "
                      f"{c.events} events, {c.stream_drops} drops | stored {sample.stored:,}", flush=True)
                for e in c.first_errors:
                    print(f"    error: {e}", flush=True)
            if not alive:
                print(f"a process died: web {'alive' if web.alive() else 'DEAD'}, ingest "
                      f"{'alive' if ingests[0].alive() else 'DEAD'}; logs in {work}", flush=True)
        finally:
            with contextlib.suppress(Exception):
                browsers.stop()
            for s in swarms:
                s.stop()
            web_status = web.stop()
            stop_all(ingests)
    ok = alive and browsers.total.errors == 0 and browsers.total.stream_drops == 0 and web_status == 0
    return samples, browsers.total, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Prints a line every minute, then a table; exit status 1 if a request "
                                            "failed, a stream broke or a process died.")
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the browsers run (default 30)")
    parser.add_argument("--rooms", type=int, default=2000, help="gateways registered and publishing (default 2000)")
    parser.add_argument("--boards", type=int, default=20, help="open facility boards (default 20)")
    parser.add_argument("--panels", type=int, default=200, help="open classroom panel streams (default 200)")
    parser.add_argument("--interval-min", type=float, default=5.0, help="shortest gateway interval, s (default 5)")
    parser.add_argument("--interval-max", type=float, default=10.0, help="longest gateway interval, s (default 10)")
    parser.add_argument("--swarms", type=int, default=2, help="processes holding the gateways (default 2)")
    parser.add_argument("--open-files", type=int, default=1024,
                        help="soft limit of open files of campus web (default 1024, systemd's default)")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between two lines (default 60)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run for smoke tests (40 rooms, 2 boards, 5 panels, 20 s, a line every 5 s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.rooms, args.boards, args.panels, args.every = 20 / 60, 40, 2, 5, 5.0
        args.interval_min, args.interval_max = 1.0, 2.0
    if min(args.rooms, args.swarms, args.open_files) < 1 or args.minutes <= 0 or args.every <= 0 \
            or min(args.boards, args.panels) < 0 or not 0 < args.interval_min <= args.interval_max:
        parser.error("--rooms, --swarms, --open-files must be positive, --minutes and --every above 0, "
                     "0 < interval-min <= interval-max")

    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="campus-bench-soak-") as tmp:
        samples, total, ok = run(args, Path(tmp))
    rows = [[s.minute, s.web_rss, s.web_fds, s.web_threads, s.ingest_rss, s.ingest_fds, s.ingest_threads,
             s.requests, s.errors, s.board_p50_ms, s.board_p95_ms, s.events, s.streams, s.drops, s.stored]
            for s in samples]
    print_table(f"Soak: {args.rooms} rooms publishing every {args.interval_min:g}-{args.interval_max:g} s, "
                f"{args.boards} boards (/api/board every {BOARD_EVERY_S:g} s), {args.panels} panel streams, "
                f"campus web under {args.open_files} open files",
                ["minute", "web RSS MiB", "web open files", "web threads", "ingest RSS MiB", "ingest open files",
                 "ingest threads", "board requests", "errors", "board p50 ms", "board p95 ms", "stream events",
                 "open streams", "stream drops", "messages stored"], rows)
    if len(samples) >= 2:
        a, b = samples[0], samples[-1]
        print(f"from minute {a.minute:g} to {b.minute:g}: web RSS {b.web_rss - a.web_rss:+.1f} MiB, open files "
              f"{b.web_fds - a.web_fds:+d}, threads {b.web_threads - a.web_threads:+d}; ingest RSS "
              f"{b.ingest_rss - a.ingest_rss:+.1f} MiB, open files {b.ingest_fds - a.ingest_fds:+d}, threads "
              f"{b.ingest_threads - a.ingest_threads:+d}")
    print(f"total: {total.requests:,} board requests, {total.errors} errors, {total.events:,} stream events, "
          f"{total.stream_drops} stream drops" + "".join(f"\n  error: {e}" for e in total.first_errors))
    print(machine_line())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
