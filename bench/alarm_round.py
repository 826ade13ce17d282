"""What one round of the alarm monitor costs at district size (issue 19, docs/benchmarks.md 11e).

Builds the district bench/dashboard.py builds (its `Plan` and provisioning CSV: rooms with an environment
sensor, projector, display and meter, 1% offline, 2% with CO2 over the limit, 1% with a display in fault)
straight into a central SQLite database in a temp dir (the registry by the CSV import, the ledger by one
`Ledger.record` of every gateway's samples and state, no broker), runs the first `alarms.evaluate` (it
raises the alarms), then times `--rounds` more rounds: CPU (process time) and wall per round, and the
statements each runs. `--profile` prints the top of a cProfile of one round.

    python bench/alarm_round.py --rooms 2000
    python bench/alarm_round.py --rooms 10000 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import event  # noqa: E402

from bench.common import machine_line  # noqa: E402
from bench.dashboard import ROOMS_PER_SCHOOL, Plan, import_files  # noqa: E402
from campus.contract import State  # noqa: E402
from central import alarms  # noqa: E402
from central import provisioning as prov  # noqa: E402
from central.ledger import Ledger, Sequenced  # noqa: E402
from central.registry import Registry  # noqa: E402

DEVICES = {"env": {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"},
           "projector": {"profile": "projector-pjlink", "kind": "projector", "status": "ok"},
           "display": {"profile": "display-samsung-mdc", "kind": "display", "status": "ok"},
           "meter": {"profile": "meter-sdm120-modbus", "kind": "meter", "status": "ok"}}


def build(url: str, plan: Plan) -> tuple[Registry, Ledger]:
    """The district's registry and ledger, every gateway having reported once (as bench/dashboard.py's
    publisher does on its first round)."""
    registry = Registry(url)
    for text in import_files(plan):
        report = prov.import_csv(registry, text.encode())
        assert report.ok, report
    ledger = Ledger(url)
    now = time.time()
    faulty = {**DEVICES, "display": {**DEVICES["display"], "status": "fault"}}
    batch_m: list[Sequenced] = []
    batch_s: list[tuple[str, str, State]] = []
    for i in range(plan.rooms):
        school, gw = plan.school(i), plan.gateway(i)
        co2 = 1900 + i % 300 if i in plan.alarms else 550 + i % 400
        batch_m += [
            Sequenced(school, gw, "env", 1, now - 5, values={
                "co2_ppm": co2, "temperature_c": 21.5 + i % 5 / 2, "humidity_pct": 45.0, "pm25_ugm3": 12.0,
                "illuminance_lux": 420, "noise_dba": 40.5}),
            Sequenced(school, gw, "projector", 2, now - 5, values={"power": "off", "lamp_hours": 200 + i % 2000}),
            Sequenced(school, gw, "display", 3, now - 5, values={"power": "off", "input": "hdmi1", "volume": 20}),
            Sequenced(school, gw, "meter", 4, now - 5, values={"energy_kwh": 1000.0 + i, "power_w": 500})]
        batch_s.append((school, gw, State(online=i not in plan.offline, ts=now, room=plan.room(i), building="A",
                                          devices=faulty if i in plan.faults else DEVICES, interval=5)))
        if len(batch_s) >= 500:
            ledger.record(batch_m, batch_s, [])
            batch_m, batch_s = [], []
    if batch_s:
        ledger.record(batch_m, batch_s, [])
    return registry, ledger


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one round")
    args = parser.parse_args(argv)
    schools = max(1, args.rooms // ROOMS_PER_SCHOOL)
    plan = Plan.make(args.rooms, schools, args.rooms // 100, args.rooms // 50, args.rooms // 100)
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="bench-alarms-") as tmp:
        url = f"sqlite:///{tmp}/central.db"
        t0 = time.perf_counter()
        registry, ledger = build(url, plan)
        print(f"built {args.rooms} rooms in {schools} schools in {time.perf_counter() - t0:.1f} s")
        t0, c0 = time.perf_counter(), time.process_time()
        first = alarms.evaluate(registry, ledger)
        print(f"first round: {len(first.raised)} raised, {(time.process_time() - c0) * 1000:.0f} ms CPU, "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms wall")
        statements = 0

        def count(*_a: object) -> None:
            nonlocal statements
            statements += 1

        cpu, wall = [], []
        engines = {id(e): e for e in (registry.db.engine, ledger.db.engine)}.values()
        for engine in engines:
            event.listen(engine, "before_cursor_execute", count)
        for _ in range(args.rounds):
            t0, c0 = time.perf_counter(), time.process_time()
            out = alarms.evaluate(registry, ledger)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - t0)
            assert not out.raised and not out.cleared, out
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)
        cpu.sort()
        wall.sort()
        print(f"quiet round ({args.rounds}): CPU median {cpu[len(cpu) // 2] * 1000:.0f} ms "
              f"(min {cpu[0] * 1000:.0f}, max {cpu[-1] * 1000:.0f}), wall median {wall[len(wall) // 2] * 1000:.0f} ms, "
              f"{statements / args.rounds:.0f} statements per round")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            alarms.evaluate(registry, ledger)
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        ledger.close()
        registry.db.engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
