"""Command round trip: dashboard API -> broker -> agent -> device -> result stored, against bare MQTT.

Why: a teacher presses "mute" on the classroom panel and waits for the
answer. This measures how long that takes through every real part of the
system, and how much of it is the system rather than MQTT itself.

How: one Mosquitto, `campus sim` with a Samsung MDC display on a pty and a
PJLink projector on TCP, `campus agent` for that classroom, `campus ingest`
and the dashboard app in its own process (built and served exactly as
`campus web` does, with the per-user command rate limit lifted). The
benchmark POSTs `/api/gateways/{G}/devices/{D}/commands` over HTTP, one
command at a time, taking turns between the two devices, and stops the
clock when it holds the confirmed result: the POST answers with the final
status when it arrives within the API's wait, otherwise
`GET /api/commands/{id}` is polled every 10 ms. Commands alternate so that
each one really changes the device (display: volume 30 <-> 70; projector:
AV mute <-> unmute); at the end the devices' reported state must equal the
last command sent. The ledger's `created` (web recorded the command) and
`finished` (the agent's result time) split each round trip into
web -> device done and device done -> result seen by the API.

Beside it: the bare MQTT round trip on the same broker (paho client
publishes QoS 1, another paho client subscribed at QoS 1 receives).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from bench.common import (  # noqa: E402
    CampusProcess,
    ScriptProcess,
    broker,
    machine_line,
    percentile,
    print_table,
    start_ingests,
    stop_all,
    wait_until,
)
from campus.net import free_port  # noqa: E402
from central.ledger import Ledger  # noqa: E402
from dashboards.context import central, web  # noqa: E402
from tests.e2e import write_gateway_config  # noqa: E402

SCHOOL = "bench"
GATEWAY = "gw-cmd"
TOKEN = "bench-admin-token"


@dataclass
class Series:
    name: str
    rtt_ms: list[float] = field(default_factory=list)
    to_device_ms: list[float] = field(default_factory=list)
    back_ms: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    via_poll: int = 0


class Api:
    """A tiny HTTP client for the JSON API (a new connection per request, as a browser's fetch may)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()


PLANS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "display": [("set_volume", {"level": 70}), ("set_volume", {"level": 30})],
    "projector": [("mute", {}), ("unmute", {})],
}


def command_series(api: Api, n: int) -> tuple[dict[str, Series], dict[str, list[str]]]:
    """`n` commands, one at a time, taking turns between the devices; each device alternates its two states."""
    series = {d: Series(d) for d in PLANS}
    ids: dict[str, list[str]] = {d: [] for d in PLANS}
    devices = list(PLANS)
    for i in range(n):
        device = devices[i % len(devices)]
        action, params = PLANS[device][(i // len(devices)) % 2]
        s = series[device]
        started = time.perf_counter()
        status, record = api.call("POST", f"/api/gateways/{GATEWAY}/devices/{device}/commands",
                                  {"action": action, "params": params})
        if status not in (200, 202):
            raise RuntimeError(f"POST command to {device}: HTTP {status} {record}")
        while record["status"] == "pending" and time.perf_counter() - started < 120:
            s.via_poll += 1
            time.sleep(0.01)
            status, record = api.call("GET", f"/api/commands/{record['id']}")
        s.rtt_ms.append((time.perf_counter() - started) * 1000)
        ids[device].append(record["id"])
        if record["status"] != "done":
            s.failed.append(f"{action}: {record['status']} {record.get('detail', '')}")
    return series, ids


def _name(proc: CampusProcess) -> str:
    return "the dashboard web app" if isinstance(proc, ScriptProcess) else f"campus {proc.args[0]}"


def split_from_ledger(db: Path, series: Series, ids: list[str]) -> None:
    ledger = Ledger(str(db))
    try:
        for cid in ids:
            rec = ledger.command(cid)
            if rec and rec["finished"]:
                series.to_device_ms.append((rec["finished"] - rec["created"]) * 1000)
    finally:
        ledger.close()
    series.back_ms = [max(0.0, r - d) for r, d in zip(series.rtt_ms, series.to_device_ms, strict=False)]


def mqtt_round_trips(port: int, n: int) -> list[float]:
    """Bare MQTT: publish QoS 1 from one paho client, receive at another subscribed at QoS 1."""
    got = threading.Event()
    ready = threading.Event()
    topic = "bench/rtt"

    def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        got.set()

    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-rtt-sub", protocol=paho.MQTTv5)
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-rtt-pub", protocol=paho.MQTTv5)
    out: list[float] = []
    try:
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        if not ready.wait(10):
            raise RuntimeError("bare MQTT subscriber did not subscribe")
        for i in range(n):
            got.clear()
            started = time.perf_counter()
            pub.publish(topic, str(i).encode(), qos=1)
            if not got.wait(10):
                raise RuntimeError(f"bare MQTT message {i} never arrived")
            out.append((time.perf_counter() - started) * 1000)
    finally:
        for c in (pub, sub):
            c.loop_stop()
            with contextlib.suppress(Exception):
                c.disconnect()
    return out


def run(n: int, poll_interval: float, tmp: Path) -> tuple[list[Series], list[float], dict[str, Any]]:
    with broker(tmp / "mq") as mq:
        pj_port = free_port()
        display_link = tmp / "display.pty"
        cfg = write_gateway_config(
            tmp / "gw.yaml", mq.url, school=SCHOOL, gateway=GATEWAY, poll_interval=poll_interval,
            devices=[{"id": "display", "profile": "display-samsung-mdc",
                      "address": {"serial": str(display_link), "display_id": 0},
                      "simulator": {"power": "on", "volume": 20}},
                     {"id": "projector", "profile": "projector-pjlink",
                      "address": {"host": "127.0.0.1", "port": pj_port},
                      "simulator": {"power": "on"}}])
        db = tmp / "central.db"
        web_port = free_port()
        procs: list[CampusProcess] = []
        try:
            procs.append(CampusProcess(["sim", "--config", str(cfg)], tmp / "sim.log").start())
            procs[0].wait_listening(pj_port, 20)
            wait_until(display_link.exists, 20, message="the display's pty")
            procs += start_ingests(mq.url, f"sqlite:///{db}", db, 1, tmp)
            procs.append(CampusProcess(["agent", "--config", str(cfg)], tmp / "agent.log").start())
            procs.append(ScriptProcess([str(Path(__file__).resolve()), "--_web", "--mqtt", mq.url, "--store",
                                        f"sqlite:///{db}", "--db", str(db), "--http-port", str(web_port)],
                                       tmp / "web.log").start())
            procs[-1].wait_listening(web_port, 30)
            api = Api(web_port)

            def devices_ok_or_dead() -> bool:
                if not all(p.alive() for p in procs):
                    return True
                status, devs = api.call("GET", "/api/devices")
                return status == 200 and sorted(d["id"] for d in devs if d["status"] == "ok") == ["display",
                                                                                                 "projector"]
            wait_until(devices_ok_or_dead, 60, interval=0.2, message="display and projector online")
            dead = [_name(p) for p in procs if not p.alive()]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited during start-up (its log is printed above)")
            series, ids = command_series(api, n)
            for device, s in series.items():
                split_from_ledger(db, s, ids[device])
            results = list(series.values())
            last = {d: PLANS[d][(len(ids[d]) - 1) % 2] for d in PLANS}
            want = {"display": {"volume": last["display"][1]["level"]},
                    "projector": {"muted": "on" if last["projector"][0] == "mute" else "off"}}

            def state_matches() -> bool:
                _, devs = api.call("GET", "/api/devices")
                latest = {d["id"]: d["latest"] for d in devs}
                return all(latest.get(dev, {}).get(k) == v for dev, kv in want.items() for k, v in kv.items())
            try:
                wait_until(state_matches, max(15, 3 * poll_interval), interval=0.2, message="devices in the last state")
                final = "devices report the last state sent"
            except AssertionError:
                final = "MISMATCH: devices do not report the last state sent"
            for p in procs:
                if not p.alive():
                    raise RuntimeError(f"{_name(p)} died")
            bare = mqtt_round_trips(mq.port, n)
        except BaseException:
            for p in procs:
                print(f"--- {_name(p)} log (last lines):\n{p.output()[-1500:]}", file=sys.stderr)
            raise
        finally:
            stop_all(list(reversed(procs)))
    return results, bare, {"final_state": final}


def web_main(args: argparse.Namespace) -> None:
    """The dashboard as `campus web` builds and serves it (create_app + dashboards.server.serve), with the
    per-user command rate limit lifted: that limit (60 a minute) is a policy against abuse, not a cost of
    the path measured, and 1000 commands would otherwise take 17 minutes."""
    from dashboards import WebConfig, close_app, create_app
    from dashboards.server import serve
    from programs.cli import wait_for_signal

    app = create_app(WebConfig(store_url=args.store, db_url=args.db, mqtt_url=args.mqtt))
    central(app).registry.ensure_admin(TOKEN)
    web(app).command_limiter.per_minute = 10**9
    server = serve(app, "127.0.0.1", args.http_port)
    print(f"bench web: http://{server.host}:{server.port}/", flush=True)
    stop = threading.Event()
    wait_for_signal(stop)
    server.shutdown()
    close_app(app)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Prints a table and a machine line; exit status 1 if a command failed.")
    parser.add_argument("--commands", type=int, default=1000, help="commands in all, taking turns between display and projector (default 1000)")
    parser.add_argument("--poll-interval", type=float, default=0.2,
                        help="the agent's device poll interval in seconds (default 0.2; see docs/benchmarks.md)")
    parser.add_argument("--quick", action="store_true", help="a tiny run for smoke tests (20 commands)")
    # The web app child process (see web_main).
    parser.add_argument("--_web", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mqtt", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--http-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._web:
        web_main(args)
        return 0
    if args.quick:
        args.commands = 20
    if args.commands < 2 or args.poll_interval <= 0:
        parser.error("--commands must be at least 2 and --poll-interval positive")

    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="campus-bench-cmd-") as tmpdir:
        results, bare, info = run(args.commands, args.poll_interval, Path(tmpdir))
    rows = []
    for s in results:
        rows.append([f"{s.name} via API (round trip)", len(s.rtt_ms), percentile(s.rtt_ms, 50),
                     percentile(s.rtt_ms, 95), percentile(s.rtt_ms, 99), max(s.rtt_ms), len(s.failed)])
        rows.append([f"  {s.name}: web -> device done", len(s.to_device_ms), percentile(s.to_device_ms, 50),
                     percentile(s.to_device_ms, 95), percentile(s.to_device_ms, 99),
                     max(s.to_device_ms, default=float("nan")), ""])
        rows.append([f"  {s.name}: device done -> API has result", len(s.back_ms), percentile(s.back_ms, 50),
                     percentile(s.back_ms, 95), percentile(s.back_ms, 99), max(s.back_ms, default=float("nan")), ""])
    rows.append(["bare MQTT publish -> receive (QoS 1)", len(bare), percentile(bare, 50), percentile(bare, 95),
                 percentile(bare, 99), max(bare), 0])
    print_table(f"Command round trip in ms (agent poll interval {args.poll_interval:g} s)",
                ["path", "n", "p50", "p95", "p99", "max", "failed"], rows)
    for s in results:
        if s.via_poll:
            print(f"{s.name}: {s.via_poll} GET polls were needed after the POST answered 'pending'")
        for f in s.failed[:5]:
            print(f"{s.name} failed: {f}")
    print(info["final_state"])
    back = percentile([b for s in results for b in s.back_ms], 50)
    if back > 500 * args.poll_interval:
        print(f"note: 'device done -> API has result' (median {back:.0f} ms) tracks the poll interval "
              f"({args.poll_interval:g} s): the agent's outbox drain is not woken when a command result is "
              "queued, only by the next poll (or its 5 s timeout)")
    print(machine_line())
    failed = sum(len(s.failed) for s in results)
    return 0 if failed == 0 and not info["final_state"].startswith("MISMATCH") else 1


if __name__ == "__main__":
    sys.exit(main())
