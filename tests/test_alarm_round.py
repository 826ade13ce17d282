"""What a round of the alarm monitor reads (issue 19, docs/benchmarks.md 11e): the district's problems,
not its rooms.

A round used to read every gateway, device and value of the district and load every open alarm as an ORM
object: 1.3-1.9 s of CPU every 5 s at 10,000 rooms, in the web process. Now the rules' limits are in SQL
(central/overview.py `alarm_candidates`), so a district of 30 quiet rooms and one of 300, each with the
same three problems, cost a round the same statements and hand the rules the same snapshot; and on a
district with problems of every kind the rules reach exactly the verdicts they reach on the whole
snapshot.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from campus.contract import State
from central import alarms, overview
from central import provisioning as prov
from central.ledger import Ledger, Sequenced
from central.registry import Alarm, Gateway, Registry
from tests.apps import ENV_AND_PROJECTOR
from tests.test_paging import district_app
from tests.test_request_cost import Counter

LATER = 3600.0  # rounds judged an hour on: the offline gateway and device are past the 10 min limit


def quiet_district(url: str, rooms: int) -> tuple[Registry, Ledger, float]:
    """`rooms` rooms all quiet but three: gw-0000 offline, gw-0001 with CO2 over the limit, gw-0002's
    projector offline. The first round (an hour later) raises their three alarms."""
    registry = Registry(url)
    places = [(f"gw-{i:04d}", f"s{i % 3}", str(100 + i)) for i in range(rooms)]
    assert prov.import_csv(registry, ("school,building,room,gateway\n" + "".join(
        f"{s},A,{r},{g}\n" for g, s, r in places)).encode()).ok
    ledger = Ledger(url)
    now = time.time()
    messages, states = [], []
    for i, (gateway, school, room) in enumerate(places):
        devices = {k: dict(v) for k, v in ENV_AND_PROJECTOR.items()}
        if i == 2:
            devices["proj"]["status"] = "offline"
        messages += [Sequenced(school, gateway, "env", 1, now - 5,
                               values={"co2_ppm": 2500 if i == 1 else 600, "temperature_c": 21.5}),
                     Sequenced(school, gateway, "proj", 2, now - 5, values={"lamp_hours": 100, "error_lamp": "ok"})]
        states.append((school, gateway, State(online=i != 0, ts=now, room=room, devices=devices, interval=5)))
    ledger.record(messages, states, [])
    later = now + LATER
    first = alarms.evaluate(registry, ledger, now=later)
    assert len(first.raised) == 3, first
    return registry, ledger, later


def one_round(registry: Registry, ledger: Ledger, now: float,
              monkeypatch: pytest.MonkeyPatch) -> tuple[int, int, alarms.Snapshot]:
    """A round's statements (on the registry's and the ledger's engines), its ORM loads of gateways and
    alarms, and the snapshot it judged."""
    seen: list[alarms.Snapshot] = []
    real = overview.alarm_candidates

    def spy(*args: Any, **kwargs: Any) -> alarms.Snapshot:
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(overview, "alarm_candidates", spy)
    loads = 0

    def loaded(*_args: object) -> None:
        nonlocal loads
        loads += 1

    event.listen(Gateway, "load", loaded)
    event.listen(Alarm, "load", loaded)
    try:
        with Counter(registry) as reg_stmts, Counter(ledger) as ledger_stmts:  # type: ignore[arg-type]
            outcome = alarms.evaluate(registry, ledger, now=now)
    finally:
        event.remove(Gateway, "load", loaded)
        event.remove(Alarm, "load", loaded)
    assert not outcome.raised and not outcome.cleared, outcome  # a quiet round changes nothing
    assert len(seen) == 1
    same_engine = registry.db.engine is ledger.db.engine
    return len(reg_stmts.all) + (0 if same_engine else len(ledger_stmts.all)), loads, seen[0]


def test_a_round_reads_the_same_for_30_and_300_quiet_rooms(tmp_path: Path, central_db_url: str,
                                                            request: pytest.FixtureRequest,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    if central_db_url.startswith("sqlite"):
        other = f"sqlite:///{tmp_path}/large.db"
    else:  # a second fresh database of the same engine (as tests/test_paging.py small_and_large)
        from central.db import open_database
        from tests.conftest import _fresh_database

        other = next(_fresh_database(request.getfixturevalue("postgres_server"), request))
        open_database(other, upgrade=True).close()
    small = quiet_district(central_db_url, 30)
    large = quiet_district(other, 300)
    few, few_loads, few_snap = one_round(*small, monkeypatch)
    many, many_loads, many_snap = one_round(*large, monkeypatch)
    assert few == many, f"{few} statements for a round of 30 rooms, {many} for 300"
    assert few_loads == many_loads == 0, "a round loads no gateway or alarm as an ORM object"
    for snap in (few_snap, many_snap):
        assert {g["id"] for g in snap.gateways} == {"gw-0000", "gw-0001", "gw-0002"}  # offline, or an alarm
        assert [(d["gateway"], d["id"]) for d in snap.devices] == [("gw-0002", "proj")]
        assert snap.latest == {("gw-0001", "env"): {"co2_ppm": 2500}}
        assert set(snap.registered) == {"gw-0000", "gw-0001", "gw-0002"}


def test_the_rules_judge_the_candidates_as_they_judge_everything(tmp_path: Path, central_db_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A district with every kind of problem (tests/test_paging.py: offline gateways, not installed ones,
    CO2, faults) and more: the same conditions, and the same open alarms held, from the candidates as
    from the whole snapshot, for every rule kind."""
    from dashboards.context import central

    app = district_app(tmp_path, central_db_url, 60, monkeypatch)
    c = central(app)
    now = time.time()
    c.ledger.record([
        Sequenced("s01", "gw-0001", "env", 2, now - 4, values={"temperature_c": 35.5, "co2_ppm": "high"}),
        Sequenced("s02", "gw-0002", "env", 2, now - 4, values={"temperature_c": 9.0}),
        Sequenced("s03", "gw-0003", "proj", 2, now - 4, values={"lamp_hours": 5000, "error_fan": "error",
                                                                 "error_lamp": "ok", "error_cover": 2}),
        Sequenced("s04", "gw-0004", "proj", 2, now - 4, values={"error_temp": 0, "lamp_hours": 1e308}),
    ], [("s05", "gw-0005", State(online=True, ts=now, room="100", interval=5,
                                devices={**ENV_AND_PROJECTOR, "proj": {"profile": "projector-pjlink",
                                                                       "kind": "projector", "status": "offline"}}))],
        [])
    rules = alarms.ensure_default_rules(c.registry)
    whole = alarms.snapshot(c.registry, c.ledger)
    open_gateways = {a["gateway"] for a in alarms.list_alarms(c.registry, limit=10_000)}
    part = overview.alarm_candidates(c.registry, c.ledger, rules, open_gateways)
    for later in (0.0, LATER):
        assert alarms.conditions(rules, part, now + later) == alarms.conditions(rules, whole, now + later)
    keys = {(r.id, g["id"], d) for r in rules for g in whole.gateways for d in ("", "env", "proj")}
    held_whole, held_part = alarms.held_keys(rules, whole), alarms.held_keys(rules, part)
    assert {k for k in keys if held_whole(k)} == {k for k in keys if held_part(k)}
    kinds = {rules_by.kind for rules_by in rules
             if any(k[0] == rules_by.id for k in alarms.conditions(rules, part, now + LATER))}
    assert kinds == set(alarms.RULE_KINDS), kinds  # every kind of rule had something to say
    assert len(part.gateways) < len(whole.gateways)
