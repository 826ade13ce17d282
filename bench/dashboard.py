"""The district's dashboards at 2,000 (or 10,000) live rooms: server time and bytes of every page and API call.

Why: issue 19 tried the product as a district would (50 schools x 40 rooms,
all live) and found pages of 4-9 s and megabytes, every one growing with
the district. Its targets: every page and API call <= 150 ms of server time
at the median and <= 300 KB per page view, the district overview rendered
in a browser in <= 1 s, at 2,000 and at 10,000 rooms. This measures them
on the real system, beside the issue's figures for the code of that day
(hard-coded below as TODAY: that code is gone) and beside a baseline
measured in the same run on the same server (`/api/health` and a static
file: what any request costs here and now).

The district: Mosquitto, one `campus ingest` (`--ingest-workers`), one
`campus web --no-jobs` (`--mqtt`, an admin API token) and one `campus jobs` (central's
background work: alarm monitor, scheduler, usage rollup, ...), as a district runs them, on a
central SQLite database; `--jobs-in-web`: the web runs the jobs itself, the way before
`campus jobs` (and still a school's single command).
The schools, rooms, gateways and devices (an environment sensor, a
projector and a display per room) are imported as an IT department does,
by POSTing the provisioning CSV to `/provisioning/import` (in files of at
most 5,000 lines); each school gets a timetable (PUT
/api/schools/S/timetable) so the usage rate has class periods. A publisher
process (`--_publish`: a few MQTT clients speaking for every gateway, each
gateway with its own `seq`, payloads built with `campus.contract`) then
sends every gateway's env sample and `state` heartbeat every 5-10 s (its own
interval and phase), the projector and display every fourth time;
`--offline` gateways say once that they are online and then go offline
(the Last Will a broker would send), `--alarms` rooms report CO2 over the
alarm limit, `--faults` rooms a display in fault. The measurement starts
when every gateway has reported, the open alarms are raised and the usage
rollup (central/usage_rollup.py) has filled its days (every room's last
CAMPUS_USAGE_DAYS, timed and printed with its deadline: a first start's
backfill), and the publisher keeps going throughout: the pages are measured
under live load. The jobs process's CPU is reported apart from the web's:
over the fill, and as a share of a core while the pages were measured.

Server time: each page or call asked `--repeat` times one after the other
on a kept-alive connection (as a browser does): the wall time of each
(median, p95), and the web process tree's CPU time over the batch divided
by the requests (psutil; the web process's own background work, measured
idle beforehand, is subtracted). Bytes per view: the page, plus the static
files it links (a first visit; a browser caches them after), plus what its
JavaScript fetches first (read from dashboards/static/*.js: the rooms page's
/api/gateways page and those rooms' /api/devices, the board's /api/board,
every health page's /api/alarms?state=active&limit=1 for the alarm count). The
browser: headless Chromium (Debian's, driven by Playwright) logs in and
opens `/district` until its table holds the schools of its first page,
`--browser-repeats` times, then the rooms page and the board until their
cards are drawn.

Each room also reports a meter (`energy_kwh`, `power_w`: its state lists it, the import does not), so
the energy pages and the maintenance list (issue 21) are measured with kWh and lamp hours to read.

The teacher panels (the issue's SSE row) are bench/panels.py's.
Nothing here asserts a figure; exit status 1 when a request failed or a
page never filled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from bench.common import (  # noqa: E402
    CampusProcess,
    broker,
    ledger_query,
    machine_line,
    percentile,
    print_table,
    start_ingests,
    stop_all,
    wait_until,
)
from campus import contract  # noqa: E402
from campus.net import free_port  # noqa: E402
from central.provisioning import MAX_IMPORT_ROWS  # noqa: E402
from central.registry import Registry  # noqa: E402
from tests.servers import ServerProcess  # noqa: E402

ROOMS_PER_SCHOOL = 40
BROWSER_USER, BROWSER_PASSWORD = "bench-admin", "bench-admin-password-1"
HEALTH_STATIC = ["/static/campus.css", "/static/health.css", "/static/health.js"]
PROV_STATIC = ["/static/campus.css", "/static/provisioning.css", "/static/provisioning.js"]
# Every health page but the board and alarms asks it (health.js countOnly): the count alone, in X-Total-Count
# (before: every open alarm, `/api/alarms?state=open`).
ALARM_COUNT = "/api/alarms?state=active&limit=1"
OPEN_ALARMS = "/api/alarms?state=open&limit=100"  # the alarms page: a page of the open alarms
ROOMS_PAGE = 24  # dashboards/static/rooms.js PAGE

# The figures for the code of that day (issue 19, 2,000 rooms, load 3-7): server CPU per request,
# wall, size. That code is gone; these are quoted, not measured here.
TODAY: dict[str, tuple[str, str, str]] = {
    "rooms": ("-", "9.4 s in the browser", "1.5-2 MB JSON"),
    "board": ("0.93 s", "1.4 s", "all rooms"),
    "board-school": ("0.71 s", "1.1 s", ""),
    "usage": ("5.5 s", "7.6 s", ""),
    "prov": ("4.3-4.6 s", "5.9-6.7 s", ""),
    "devices": ("0.39 s", "0.6 s", "1.1 MB"),
    "new": ("(new)", "", ""),
}


# ---------------------------------------------------------------- the district's plan


@dataclass(frozen=True)
class Plan:
    rooms: int
    schools: int
    offline: frozenset[int]
    alarms: frozenset[int]
    faults: frozenset[int]

    @classmethod
    def make(cls, rooms: int, schools: int, offline: int, alarms: int, faults: int) -> Plan:
        """Which rooms are offline, alarmed or faulty: spread over the schools, disjoint."""
        rng = random.Random(19)
        picks = rng.sample(range(rooms), min(rooms, offline + alarms + faults))
        return cls(rooms, schools, frozenset(picks[:offline]), frozenset(picks[offline:offline + alarms]),
                   frozenset(picks[offline + alarms:]))

    def school(self, i: int) -> str:
        return f"s{i * self.schools // self.rooms:0{max(2, len(str(self.schools - 1)))}d}"

    def school_ids(self) -> list[str]:
        return sorted({self.school(i) for i in range(self.rooms)})

    @staticmethod
    def gateway(i: int) -> str:
        return f"gw-{i:05d}"

    def room(self, i: int) -> str:
        k = i * self.schools // self.rooms
        return str(101 + i - -(-k * self.rooms // self.schools))  # from the school's first room


def import_files(plan: Plan) -> list[str]:
    """The provisioning CSV in files of at most MAX_IMPORT_ROWS lines, whole schools each."""
    files: list[str] = []
    lines: list[str] = []
    school = ""
    school_lines = 3 * -(-plan.rooms // plan.schools)
    header = "school,building,room,gateway,device,profile,address,options\n"
    for i in range(plan.rooms):
        if len(lines) + 3 > MAX_IMPORT_ROWS or (plan.school(i) != school
                                                 and len(lines) + school_lines > MAX_IMPORT_ROWS):
            files.append(header + "".join(lines))
            lines = []
        school, gw, room = plan.school(i), plan.gateway(i), plan.room(i)
        host = f"10.{i // 250 % 250}.{i % 250}"
        lines += [f"{school},A,{room},{gw},env,env-6in1-modbus,host={host}.21; port=502; unit=1,\n",
                  f"{school},A,{room},{gw},projector,projector-pjlink,host={host}.22; port=4352,\n",
                  f"{school},A,{room},{gw},display,display-samsung-mdc,serial=/dev/ttyUSB0; display_id=0,\n"]
    if lines:
        files.append(header + "".join(lines))
    return files


def timetable(today: date) -> dict[str, object]:
    """Six class periods a weekday, a term around today: every school's (PUT /api/schools/S/timetable)."""
    times = [("08:00", "08:45"), ("08:55", "09:40"), ("10:00", "10:45"), ("10:55", "11:40"), ("14:00", "14:45"),
             ("14:55", "15:40")]
    return {"periods": [{"weekday": d, "number": n + 1, "start": s, "end": e, "name": f"Period {n + 1}"}
                        for d in range(1, 6) for n, (s, e) in enumerate(times)],
            "terms": [{"name": "term", "start": (today - timedelta(days=90)).isoformat(),
                       "end": (today + timedelta(days=60)).isoformat()}]}


# ---------------------------------------------------------------- the publisher (a child process)


async def _publish(args: argparse.Namespace) -> None:
    import aiomqtt

    plan = Plan.make(args.rooms, args.schools, args.offline, args.alarms, args.faults)
    rng = random.Random(args.seed)
    per_client = 500
    devices = {"env": {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"},
               "projector": {"profile": "projector-pjlink", "kind": "projector", "status": "ok"},
               "display": {"profile": "display-samsung-mdc", "kind": "display", "status": "ok"},
               "meter": {"profile": "meter-sdm120-modbus", "kind": "meter", "status": "ok"}}
    faulty = {**devices, "display": {**devices["display"], "status": "fault"}}
    boot = time.time()
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for k in range(-(-plan.rooms // per_client)):
            client = aiomqtt.Client("127.0.0.1", args.port, identifier=f"bench-dashboard-{k}",
                                    protocol=aiomqtt.ProtocolVersion.V5, keepalive=60, timeout=60,
                                    max_queued_outgoing_messages=0)
            await stack.enter_async_context(client)
            clients.append(client)
        print("READY", flush=True)

        async def gateway(i: int) -> None:
            client = clients[i // per_client]
            school, gw = plan.school(i), plan.gateway(i)
            interval = rng.uniform(args.interval_min, args.interval_max)
            await asyncio.sleep(rng.uniform(0, min(interval, 2.0)))  # the first round within 2 s
            seq, tick = 0, 0
            while True:
                now = time.time()
                co2 = 1900 + i % 300 if i in plan.alarms else 550 + i % 400
                sends = [("env", {"co2_ppm": co2, "temperature_c": 21.5 + i % 5 / 2, "humidity_pct": 45.0,
                                  "pm25_ugm3": 12.0, "illuminance_lux": 420, "noise_dba": 40.5})]
                if tick % 4 == 0:
                    sends += [("projector", {"power": "on" if i % 5 == 0 else "off", "lamp_hours": 200 + i % 2000}),
                              ("display", {"power": "on" if i % 3 == 0 else "off", "input": "hdmi1", "volume": 20}),
                              # A classroom's 0.5-2 kW: the energy pages (issue 21) have kWh to add up.
                              ("meter", {"energy_kwh": round(1000 + i + (now - boot) * (0.5 + i % 4 / 2) / 3600, 3),
                                         "power_w": 500 + i % 4 * 500})]
                for device, values in sends:
                    seq += 1
                    await client.publish(contract.telemetry_topic(school, gw, device),
                                         contract.Telemetry(seq, now, values).encode(), qos=1, timeout=60)
                online = not (i in plan.offline and tick > 0)
                state = contract.State(online=online, ts=time.time(), agent="bench", boot=boot, since=boot,
                                       interval=interval, room=plan.room(i), building="A",
                                       devices=faulty if i in plan.faults else devices)
                await client.publish(contract.state_topic(school, gw), state.encode(), qos=1, retain=True,
                                     timeout=60)
                if not online:
                    return  # its Last Will was sent: it stays offline
                tick += 1
                await asyncio.sleep(interval if tick > 1 or i not in plan.offline else 1.0)

        await asyncio.gather(*(gateway(i) for i in range(plan.rooms)))
        await asyncio.Event().wait()  # the offline ones are done; the others never are


class Publisher(ServerProcess):
    """The publisher child process (stopped like any test process)."""

    def __init__(self, port: int, args: argparse.Namespace, log: Path) -> None:
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--_publish", "--port", str(port),
             "--rooms", str(args.rooms), "--schools", str(args.schools), "--offline", str(args.offline),
             "--alarms", str(args.alarms), "--faults", str(args.faults), "--interval-min", str(args.interval_min),
             "--interval-max", str(args.interval_max)],
            stdout=self.log, stderr=subprocess.STDOUT,
            # `--publisher-nice`: the simulated gateways yield the cores to the server's processes (on a site
            # their CPU is the gateways' own); whether they still keep up shows in the online count.
            preexec_fn=(lambda: os.nice(args.publisher_nice)) if args.publisher_nice else None)
        self.log_path = log

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


# ---------------------------------------------------------------- HTTP


class Client:
    """One kept-alive HTTP connection to `campus web`, bearer token, as a browser's would be."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "") -> tuple[int, bytes, dict[str, str]]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "text/html,application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}
            except (http.client.HTTPException, OSError):
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        return self.request("GET", path)


def tree_cpu(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        return sum(sum(p.cpu_times()[:2]) for p in (root, *root.children(recursive=True)))
    except psutil.NoSuchProcess:
        return 0.0


@dataclass
class Target:
    label: str
    path: str
    today: str  # a key of TODAY
    static: list[str] = field(default_factory=list)
    # What the page's script fetches first: paths, or a function of the page's answer giving them.
    fetches: Callable[[Client, bytes], list[str]] | list[str] = field(default_factory=list)
    page: bool = True  # a page view (<= 300 KB), or an API call (its own size)


def rooms_fetches(client: Client, _page: bytes) -> list[str]:
    """rooms.js: a page of /api/gateways, then those rooms' /api/devices."""
    first = f"/api/gateways?{urllib.parse.urlencode({'limit': ROOMS_PAGE, 'offset': 0, 'q': ''})}"
    _status, body, _h = client.get(first)
    ids = [g["id"] for g in json.loads(body)]
    return [first, f"/api/devices?{urllib.parse.urlencode({'gateway': ','.join(ids), 'limit': 1000})}"]


def targets(plan: Plan, gateway: str) -> list[Target]:
    school7 = plan.school_ids()[min(7, len(plan.school_ids()) - 1)]
    return [
        Target("baseline: GET /api/health", "/api/health", "new", page=False),
        Target("baseline: a static file (campus.css)", "/static/campus.css", "new", page=False),
        Target("rooms page `/`", "/", "rooms", ["/static/campus.css", "/static/rooms.js"], rooms_fetches),
        Target("equipment board `/health/`", "/health/", "board", HEALTH_STATIC, ["/api/board?"]),
        Target("`/api/board`", "/api/board", "board", page=False),
        Target(f"`/api/board?school={school7}`", f"/api/board?school={school7}", "board-school", page=False),
        Target("`/api/board?offset=100` (a later page)", "/api/board?offset=100", "new", page=False),
        Target("district overview `/district`", "/district", "new", HEALTH_STATIC, [ALARM_COUNT]),
        Target("`GET /api/schools`", "/api/schools", "new", page=False),
        Target("`/health/usage`", "/health/usage", "usage", HEALTH_STATIC, [ALARM_COUNT]),
        Target("`/health/usage-rate`", "/health/usage-rate", "new",
               [*HEALTH_STATIC, "/static/timetables.css"], [ALARM_COUNT]),
        Target("`/api/usage`", "/api/usage", "new", page=False),
        Target("`/health/energy` (issue 21)", "/health/energy", "new", [*HEALTH_STATIC, "/static/timetables.css"],
               [ALARM_COUNT]),
        Target("`/api/energy`", "/api/energy", "new", page=False),
        Target("`/api/energy/left-on?limit=20`", "/api/energy/left-on?limit=20", "new", page=False),
        Target("`/health/energy.xlsx`", "/health/energy.xlsx", "new", page=False),
        Target("`/health/maintenance` (issue 21)", "/health/maintenance", "new", HEALTH_STATIC, [ALARM_COUNT]),
        Target("`/api/maintenance?limit=100`", "/api/maintenance?limit=100", "new", page=False),
        Target("`/provisioning/gateways`", "/provisioning/gateways", "prov", PROV_STATIC),
        Target("a gateway's page `/provisioning/gateways/GW`", f"/provisioning/gateways/{gateway}", "prov",
               PROV_STATIC),
        Target("`/panel` (room picker)", "/panel", "prov", ["/static/campus.css", "/static/panel.css"]),
        Target("`/provisioning/broker`", "/provisioning/broker", "prov", PROV_STATIC),
        Target("`/api/devices`", "/api/devices", "devices", page=False),
        Target("`/api/devices?limit=100`", "/api/devices?limit=100", "new", page=False),
        Target("`/api/gateways?limit=100`", "/api/gateways?limit=100", "new", page=False),
        Target("`/api/alarms?state=active&limit=1` (alarm count)", ALARM_COUNT, "new", page=False),
        Target("`/api/alarms?state=open&limit=100` (alarms page)", OPEN_ALARMS, "new", page=False),
    ]


@dataclass
class Measured:
    target: Target
    status: int
    walls: list[float]
    cpu_per_request: float
    size: int
    view: int  # the page + its static files + its first fetches (bytes)
    view_data: int  # the page + its first fetches (what a browser with a warm cache loads)


def measure(client: Client, target: Target, repeat: int, web_pid: int, idle_cpu_rate: float,
            budget: float = 60.0) -> Measured:
    """`repeat` requests, or as many as fit in `budget` seconds (at least 3): a page of 10 s is slow enough."""
    status, body, _h = client.get(target.path)  # warm-up: caches, templates
    walls: list[float] = []
    cpu0, t0 = tree_cpu(web_pid), time.monotonic()
    for k in range(repeat):
        if k >= 3 and time.monotonic() - t0 > budget:
            break
        started = time.perf_counter()
        status_n, body, _h = client.get(target.path)
        walls.append(time.perf_counter() - started)
        status = status if status != 200 else status_n
    elapsed = time.monotonic() - t0
    cpu = max(0.0, (tree_cpu(web_pid) - cpu0 - idle_cpu_rate * elapsed) / len(walls))
    statics = sum(len(client.get(s)[1]) for s in target.static)
    fetch_paths = target.fetches(client, body) if callable(target.fetches) else target.fetches
    fetched = 0
    for path in fetch_paths:
        fstatus, fbody, _h = client.get(path)
        status = status if fstatus == 200 else fstatus
        fetched += len(fbody)
    return Measured(target, status, walls, cpu, len(body), len(body) + statics + fetched, len(body) + fetched)


# ---------------------------------------------------------------- the browser


def browser_times(port: int, plan: Plan, repeats: int) -> dict[str, object]:
    """Headless Chromium: log in, open /district until its table is filled (and the rooms page, the board)."""
    from playwright.sync_api import sync_playwright

    from tests.servers import launch_chromium

    base = f"http://127.0.0.1:{port}"
    expected = min(len(plan.school_ids()), 100)  # the district's first page (central/lists.py DEFAULT_LIMIT)
    out: dict[str, object] = {}
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/login")
            page.fill("input[name=username]", BROWSER_USER)
            page.fill("input[name=password]", BROWSER_PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state()

            def timed(path: str, ready: str, arg: object = None) -> float:
                started = time.perf_counter()
                page.goto(f"{base}{path}", wait_until="commit")
                page.wait_for_function(ready, arg=arg, timeout=120_000)
                return time.perf_counter() - started

            district = "n => document.querySelectorAll('#schools tbody tr[data-school]').length >= n"
            first = timed("/district", district, expected)
            runs = [timed("/district", district, expected) for _ in range(repeats)]
            out["district_first"], out["district"] = first, runs
            out["district_nodes"] = page.evaluate("document.getElementsByTagName('*').length")
            rooms = "n => document.querySelectorAll('section.room.card').length >= n"
            out["rooms"] = [timed("/", rooms, min(ROOMS_PAGE, plan.rooms)) for _ in range(max(1, repeats // 2))]
            out["rooms_nodes"] = page.evaluate("document.getElementsByTagName('*').length")
            board = "n => document.querySelectorAll('#rooms section.hroom').length >= n"
            out["board"] = [timed("/health/", board, min(10, plan.rooms)) for _ in range(max(1, repeats // 2))]
            out["board_nodes"] = page.evaluate("document.getElementsByTagName('*').length")
        finally:
            browser.close()
    return out


# ---------------------------------------------------------------- the run


def setup_district(client: Client, plan: Plan) -> float:
    """The provisioning CSV imported, a timetable per school; returns the seconds the import took."""
    started = time.monotonic()
    for k, text in enumerate(import_files(plan)):
        status, body, _h = client.request("POST", "/provisioning/import",
                                          urllib.parse.urlencode({"text": text}).encode(),
                                          "application/x-www-form-urlencoded")
        if status != 200:
            raise RuntimeError(f"import file {k + 1} refused ({status}): {body[-2000:]!r}")
    took = time.monotonic() - started
    doc = json.dumps(timetable(date.today())).encode()
    for school in plan.school_ids():
        status, body, _h = client.request("PUT", f"/api/schools/{school}/timetable", doc, "application/json")
        if status != 200:
            raise RuntimeError(f"timetable of {school} refused ({status}): {body[:500]!r}")
    return took


def open_alarms(client: Client) -> list[dict[str, object]]:
    """Every open alarm (the pages' ALARM_COUNT answers one row and the count)."""
    status, body, _h = client.get("/api/alarms?state=open&limit=2000")
    return json.loads(body) if status == 200 else []


def online_count(db: Path) -> int:
    """Gateways the ledger holds online: fewer than planned when ingest falls behind (their heartbeats look
    late, so central calls them silent)."""
    rows = ledger_query(db, "SELECT COUNT(*) FROM gateways WHERE online")
    return int(rows[0][0]) if rows else 0  # type: ignore[arg-type]


def run(args: argparse.Namespace, work: Path) -> tuple[list[Measured], dict[str, object], dict[str, object]]:
    plan = Plan.make(args.rooms, args.schools, args.offline, args.alarms, args.faults)
    db = work / "central.db"
    url = f"sqlite:///{db}"
    registry = Registry(url)
    try:
        registry.add_user(BROWSER_USER, BROWSER_PASSWORD, "admin")
    finally:
        registry.close()
    token = secrets.token_urlsafe(24)
    info: dict[str, object] = {}
    with broker(work / "mq") as mq:
        ingests = start_ingests(mq.url, url, db, args.ingest_workers, work)
        port = free_port()
        web = CampusProcess(["web", "--mqtt", mq.url, "--store", url, "--db", url, "--http-port", str(port),
                             f"--admin-token={token}", *([] if args.jobs_in_web else ["--no-jobs"])], work / "web.log")
        jobs = None if args.jobs_in_web else CampusProcess(["jobs", "--mqtt", mq.url, "--store", url, "--db", url],
                                                           work / "jobs.log")
        publisher: Publisher | None = None
        try:
            web.start()
            web.wait_listening(port, timeout=60)
            if jobs is not None:
                jobs.start()
                wait_until(lambda: "campus jobs:" in jobs.output() or not jobs.alive(), 60,
                           message="campus jobs started")
                if not jobs.alive():
                    raise RuntimeError(f"campus jobs did not start: {jobs.output()[-2000:]}")
            client = Client(port, token)
            wait_until(lambda: client.get("/api/health")[0] == 200, 60, message="campus web answering")
            info["import_s"] = setup_district(client, plan)
            print(f"imported {plan.rooms} rooms in {len(plan.school_ids())} schools in {info['import_s']:.1f} s",
                  flush=True)
            publisher = Publisher(mq.port, args, work / "publisher.log")
            wait_until(lambda: "READY" in publisher.output() or not publisher.alive(), 60,
                       message="publisher connected")
            started = time.monotonic()

            def reported() -> bool:
                if not publisher.alive() or not all(p.alive() for p in ingests):
                    raise RuntimeError(f"a process died; logs in {work}")
                rows = ledger_query(db, "SELECT COUNT(*) FROM gateways WHERE last_seen IS NOT NULL")
                return bool(rows) and int(rows[0][0]) >= plan.rooms  # type: ignore[arg-type]

            wait_until(reported, 120 + plan.rooms / 20, interval=0.5, message="every gateway reported")
            info["reported_s"] = time.monotonic() - started
            # The alarm monitor raises the CO2 ones within a few of its rounds (an offline gateway's
            # alarm waits for its 10 minutes: not in this run).
            with contextlib.suppress(AssertionError):
                wait_until(lambda: len(open_alarms(client)) >= len(plan.alarms), 60 + plan.rooms / 100, interval=1.0)
            alarms = open_alarms(client)
            info["alarms"] = len(alarms)
            info["alarm_kinds"] = sorted({str(a.get("kind")) for a in alarms})
            print(f"every gateway reported in {info['reported_s']:.1f} s; {len(alarms)} open alarms "
                  f"({', '.join(info['alarm_kinds'])})", flush=True)  # type: ignore[arg-type]
            # The web's usage rollup fills every room's last days from the store at a first start (here: all
            # but today from an empty store); the usage pages read it, and its work is not a request's.
            from central.usage_rollup import DAYS_ENV, DEFAULT_DAYS, setting

            days = int(setting(DAYS_ENV, DEFAULT_DAYS))
            started = time.monotonic()
            assert web.proc is not None
            jobs_pid = jobs.proc.pid if jobs is not None and jobs.proc is not None else None
            jobs_cpu0 = tree_cpu(jobs_pid) if jobs_pid else 0.0
            print(f"waiting for the usage rollup to fill {days} days of {plan.rooms} rooms (at most "
                  f"{args.fill_deadline:.0f} s)", flush=True)

            def rolled_up() -> bool:
                rows = ledger_query(db, "SELECT COUNT(*) FROM usage_days")
                return bool(rows) and int(rows[0][0]) >= plan.rooms * days  # type: ignore[arg-type]

            wait_until(rolled_up, args.fill_deadline, interval=1.0, message="the usage rollup filled")
            span = ledger_query(db, "SELECT MAX(computed_at) - MIN(computed_at) FROM usage_days")
            info["rollup_s"] = float(span[0][0]) if span else 0.0  # type: ignore[arg-type]
            info["jobs_fill_cpu_s"] = tree_cpu(jobs_pid) - jobs_cpu0 if jobs_pid else None
            print(f"the usage rollup filled {days} days of {plan.rooms} rooms in {info['rollup_s']:.0f} s (its first "
                  f"row to its last; {time.monotonic() - started:.0f} s more after every gateway reported)"
                  + (f"; campus jobs used {info['jobs_fill_cpu_s']:.1f} s of CPU meanwhile" if jobs_pid else ""),
                  flush=True)
            web_pid = web.proc.pid
            cpu0, t0 = tree_cpu(web_pid), time.monotonic()
            time.sleep(args.idle)
            idle_rate = (tree_cpu(web_pid) - cpu0) / (time.monotonic() - t0)
            info["idle_cpu_pct"] = 100 * idle_rate
            info["load_before"] = psutil.getloadavg()[0]
            online_before = online_count(db)
            jobs_cpu0, jobs_t0 = (tree_cpu(jobs_pid), time.monotonic()) if jobs_pid else (0.0, 0.0)
            # Who used the 2 cores while the pages were measured: the walls wait behind all of it, and the
            # publisher stands in for the district's gateways, whose CPU is theirs, not the server's.
            parts = {"web": [web_pid], "campus jobs": [jobs_pid] if jobs_pid else [],
                     "ingest": [p.proc.pid for p in ingests if p.proc is not None],
                     "Mosquitto": [mq.proc.pid] if mq.proc is not None else [],
                     "publisher (the simulated gateways)": [publisher.proc.pid]}
            parts_cpu0 = {name: sum(tree_cpu(pid) for pid in pids) for name, pids in parts.items()}
            measured_t0 = time.monotonic()
            results = []
            for target in targets(plan, plan.gateway(plan.rooms // 2)):
                m = measure(client, target, args.repeat, web_pid, idle_rate, args.budget)
                results.append(m)
                print(f"  {target.label}: median {1000 * statistics.median(m.walls):,.0f} ms, "
                      f"{m.cpu_per_request * 1000:,.0f} ms CPU, "
                      + (f"{m.view / 1024:,.0f} KB per view" if target.page else f"{m.size / 1024:,.1f} KB")
                      + ("" if m.status == 200 else f"  STATUS {m.status}"), flush=True)
            info["load_after"] = psutil.getloadavg()[0]
            elapsed = time.monotonic() - measured_t0
            info["cpu_shares"] = {name: 100 * (sum(tree_cpu(pid) for pid in pids) - parts_cpu0[name]) / elapsed
                                  for name, pids in parts.items() if pids}
            if jobs_pid:
                info["jobs_cpu_pct"] = 100 * (tree_cpu(jobs_pid) - jobs_cpu0) / (time.monotonic() - jobs_t0)
                info["jobs_rss_mb"] = psutil.Process(jobs_pid).memory_info().rss / 2**20
            info["online_before"], info["online_after"] = online_before, online_count(db)
            info["web_rss_mb"] = sum(p.memory_info().rss for p in (psutil.Process(web_pid),
                                                                   *psutil.Process(web_pid).children(True))) / 2**20
            browser: dict[str, object] = {}
            if not args.no_browser:
                browser = browser_times(port, plan, args.browser_repeats)
            if not web.alive():
                raise RuntimeError(f"campus web died; see {work / 'web.log'}")
            if jobs is not None and not jobs.alive():
                raise RuntimeError(f"campus jobs died; see {work / 'jobs.log'}")
        finally:
            if publisher is not None:
                publisher.stop()
            web.stop()
            if jobs is not None:
                jobs.stop()
            stop_all(ingests)
    return results, browser, info


def _ms(seconds: float) -> float:
    return seconds * 1000


def _kb(n: int) -> str:
    return f"{n / 1024:,.1f} KB" if n < 10 * 1024 else f"{n / 1024:,.0f} KB"


def report(results: list[Measured], browser: dict[str, object], info: dict[str, object],
           args: argparse.Namespace) -> bool:
    rows = []
    for m in results:
        today = TODAY[m.target.today]
        median = statistics.median(m.walls)
        met = median <= 0.150 and (m.view <= 300 * 1024 if m.target.page else m.size <= 300 * 1024)
        rows.append([m.target.label, today[0], today[1], today[2], _ms(m.cpu_per_request), len(m.walls),
                     _ms(median),
                     _ms(percentile(m.walls, 95)), _kb(m.size),
                     f"{_kb(m.view)} ({_kb(m.view_data)} cached)" if m.target.page else "",
                     ("yes" if met else "NO") if m.status == 200 else f"HTTP {m.status}"])
    print_table(f"Dashboard at {args.rooms:,} rooms in {args.schools} schools, all live (every "
                f"{args.interval_min:g}-{args.interval_max:g} s), {len(Plan.make(args.rooms, args.schools, args.offline, args.alarms, args.faults).offline)} "
                f"offline, {info.get('alarms', '?')} open alarms; {args.repeat} requests each (at most "
                f"{args.budget:g} s of them), one after the other "
                f"(load average {info.get('load_before', 0):.1f} -> {info.get('load_after', 0):.1f}; web idle CPU "
                f"{info.get('idle_cpu_pct', 0):.1f}%, subtracted)",
                ["page / call", "today: server CPU", "today: wall", "today: size", "now: web CPU ms/request",
                 "requests", "wall median ms", "wall p95 ms", "response", "per page view (+static, first fetches)",
                 "<= 150 ms, <= 300 KB"], rows)
    if browser:
        district = browser["district"]  # type: ignore[assignment]
        brows = [["district overview `/district` (table filled)", "(new)", _ms(browser["district_first"]),  # type: ignore[arg-type]
                  _ms(statistics.median(district)), _ms(max(district)), browser["district_nodes"],  # type: ignore[arg-type]
                  "yes" if statistics.median(district) <= 1.0 else "NO"],  # type: ignore[arg-type]
                 ["rooms page `/` (first page of cards drawn)", "9.4 s, 93,000 DOM nodes", "-",
                  _ms(statistics.median(browser["rooms"])), _ms(max(browser["rooms"])),  # type: ignore[arg-type]
                  browser["rooms_nodes"], ""],
                 ["equipment board `/health/` (cards drawn)", "-", "-", _ms(statistics.median(browser["board"])),  # type: ignore[arg-type]
                  _ms(max(browser["board"])), browser["board_nodes"], ""]]  # type: ignore[arg-type]
        print_table("In headless Chromium (logged in; first visit, then the median of the visits after, static "
                    "files cached)", ["page", "today", "first visit ms", "median ms", "max ms", "DOM nodes",
                                      "<= 1 s"], brows)
    planned = args.rooms - args.offline
    if info.get("jobs_cpu_pct") is not None:
        print(f"campus jobs (its own process): {info['jobs_cpu_pct']:.1f}% of a core while the pages were measured, "
              f"{info['jobs_fill_cpu_s']:.1f} s of CPU during the rollup's fill, RSS {info['jobs_rss_mb']:.0f} MB; "
              f"web RSS {info.get('web_rss_mb', 0):.0f} MB")
    else:
        print(f"central's background jobs ran inside the web (--jobs-in-web); web RSS {info.get('web_rss_mb', 0):.0f} MB")
    shares = info.get("cpu_shares") or {}
    if shares:
        print("CPU while the pages were measured, % of one core (the machine has "
              f"{psutil.cpu_count()}): " + ", ".join(f"{name} {pct:.0f}%" for name, pct in shares.items()))  # type: ignore[union-attr]
    print(f"gateways online in the ledger: {info.get('online_before')} before the requests, "
          f"{info.get('online_after')} after (of {planned} publishing: fewer means ingest fell behind); "
          f"open alarms {info.get('alarms')} (of {args.alarms} planned)")
    print("The issue's 'today' columns are its figures for the code of that day (2,000 rooms, load 3-7), quoted; "
          "the teacher panels' row is bench/panels.py's.")
    return all(m.status == 200 for m in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rooms", type=int, default=2000, help="rooms (gateways), default 2000")
    parser.add_argument("--schools", type=int, default=None, help=f"schools (default rooms / {ROOMS_PER_SCHOOL})")
    parser.add_argument("--offline", type=int, default=None, help="gateways gone offline (default 1%%)")
    parser.add_argument("--alarms", type=int, default=None, help="rooms with CO2 over the limit (default 2%%)")
    parser.add_argument("--faults", type=int, default=None, help="rooms with a display in fault (default 1%%)")
    parser.add_argument("--interval-min", type=float, default=5.0, help="shortest gateway interval, s (default 5)")
    parser.add_argument("--interval-max", type=float, default=10.0, help="longest gateway interval, s (default 10)")
    parser.add_argument("--ingest-workers", type=int, default=1, help="campus ingest workers (default 1)")
    parser.add_argument("--publisher-nice", type=int, default=0, metavar="N",
                        help="run the publisher of the simulated gateways at this niceness (e.g. 19: it yields the "
                        "cores to the server's processes, as real gateways' CPU is their own; default 0)")
    parser.add_argument("--repeat", type=int, default=20, help="requests per page or call (default 20)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds of requests per page or call at most (at least 3 requests; default 60)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds to measure the web's idle CPU (default 5)")
    parser.add_argument("--browser-repeats", type=int, default=5, help="visits of /district (default 5)")
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium part")
    parser.add_argument("--jobs-in-web", action="store_true", help="no `campus jobs`: the web runs central's "
                        "background jobs itself (the way before it; a school's single command)")
    parser.add_argument("--fill-deadline", type=float, default=1800.0, metavar="S",
                        help="the longest to wait for the usage rollup's first fill (default 1800)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="work in DIR (new or empty) and keep it: the database, for profiling a page after")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 60 rooms in 3 schools, 1-2 s intervals, 3 requests each")
    parser.add_argument("--_publish", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rooms, args.schools, args.repeat, args.idle, args.browser_repeats = 60, 3, 3, 1.0, 2
        args.interval_min, args.interval_max = 1.0, 2.0
    args.schools = args.schools or max(1, args.rooms // ROOMS_PER_SCHOOL)
    args.offline = args.offline if args.offline is not None else max(1, args.rooms // 100)
    args.alarms = args.alarms if args.alarms is not None else max(1, args.rooms // 50)
    args.faults = args.faults if args.faults is not None else max(1, args.rooms // 100)
    if args._publish:
        asyncio.run(_publish(args))
        return 0
    if args.rooms < 1 or not 1 <= args.schools <= args.rooms or args.repeat < 1 \
            or not 0 < args.interval_min <= args.interval_max:
        parser.error("--rooms, --repeat positive, 1 <= --schools <= --rooms, 0 < interval-min <= interval-max")
    print(machine_line(), flush=True)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        if any(args.keep.iterdir()):
            parser.error(f"--keep {args.keep}: not empty")
        results, browser, info = run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="campus-bench-dashboard-") as tmp:
            results, browser, info = run(args, Path(tmp))
    ok = report(results, browser, info, args)
    print(machine_line())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
