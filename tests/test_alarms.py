"""The alarm engine: rules raise, clear and hold alarms; acknowledgement is separate from clearing.

A real registry and ledger in SQLite under tmp_path; the ledger is filled
through `Ledger.record`, the call ingest makes, so the rules see exactly
what they would see behind a running school.
"""

from __future__ import annotations

import itertools
import time

import pytest

from campus.contract import State
from central import alarms
from central.alarms import Rule, RuleError, Snapshot
from central.db import open_database
from central.ledger import Ledger, Sequenced
from central.registry import Alarm, AlarmRule, Registry
from tests.servers import wait_until

ENV = {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"}
PROJ = {"profile": "projector-pjlink", "kind": "projector", "status": "ok"}
_seq = itertools.count(1)


class School:
    """A registry with two rooms in building A and a ledger, both real, in one central database (each test on SQLite and on PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.db = open_database(url)
        self.registry, self.ledger = Registry(self.db), Ledger(self.db)
        for gw, room in (("gw-101", "101"), ("gw-102", "102")):
            self.registry.register_gateway(gw, "s1", room, "A")
            self.state(gw, True)

    def state(self, gw: str, online: bool = True, env: str = "ok", proj: str = "ok") -> None:
        devices = {"env": {**ENV, "status": env}, "proj": {**PROJ, "status": proj}}
        self.ledger.record([], [("s1", gw, State(online=online, ts=time.time() + next(_seq) * 1e-3,
                                                 room=gw[3:], devices=devices))], [])

    def values(self, gw: str, device: str, **values: float | str) -> None:
        self.ledger.record([Sequenced("s1", gw, device, next(_seq), time.time(), values=values)], [], [])

    def evaluate(self, now: float | None = None) -> alarms.Outcome:
        return alarms.evaluate(self.registry, self.ledger, now)

    def open(self) -> list[dict]:
        return alarms.list_alarms(self.registry, "open")

    def all(self) -> list[dict]:
        return alarms.list_alarms(self.registry, "all")

    def rule(self, kind: str) -> dict:
        return next(r for r in alarms.list_rules(self.registry) if r["kind"] == kind)


@pytest.fixture
def school(central_db_url: str):
    s = School(central_db_url)
    yield s
    s.ledger.close()
    s.registry.close()
    s.db.close()


def test_default_rules_are_seeded_once_from_the_profiles(school: School) -> None:
    first = alarms.list_rules(school.registry)
    assert {r["kind"]: r["params"] for r in first} == {
        "co2_above": {"ppm": 1500}, "temperature_range": {"min": 16, "max": 30},
        "lamp_hours_above": {"hours": 3000}, "projector_error": {}, "offline_minutes": {"minutes": 10}}
    assert all(r["enabled"] for r in first)
    school.evaluate()
    assert alarms.list_rules(school.registry) == first
    with school.registry.session() as s:
        assert s.query(AlarmRule).count() == len(alarms.RULE_KINDS)


def test_co2_raises_once_clears_and_raises_again(school: School) -> None:
    school.values("gw-101", "env", co2_ppm=900)
    school.values("gw-102", "env", co2_ppm=1700)
    assert len(school.evaluate().raised) == 1
    [alarm] = school.open()
    assert (alarm["gateway"], alarm["device"], alarm["kind"]) == ("gw-102", "env", "co2_above")
    assert alarm["room"] == "102" and alarm["building"] == "A" and alarm["state"] == "active"
    assert "1700 ppm" in alarm["message"] and alarm["value"] == "1700 ppm"
    # Still too high, higher even: evaluating again never duplicates the open alarm.
    school.values("gw-102", "env", co2_ppm=2100)
    for _ in range(3):
        assert school.evaluate().raised == []
    assert [a["id"] for a in school.open()] == [alarm["id"]]
    # Back under the limit: cleared, kept in the history, not acknowledged by clearing.
    school.values("gw-102", "env", co2_ppm=800)
    assert school.evaluate().cleared == [alarm["id"]]
    assert school.open() == []
    [past] = alarms.list_alarms(school.registry, "history")
    assert past["cleared_at"] is not None and past["acked_by"] is None and past["state"] == "cleared"
    # A new episode is a new alarm.
    school.values("gw-102", "env", co2_ppm=1600)
    assert len(school.evaluate().raised) == 1
    assert len(school.all()) == 2 and len(school.open()) == 1


def test_a_huge_reading_raises_its_alarm_on_both_engines(school: School) -> None:
    """1e308 is a valid reading (finite JSON); "{v:.0f} ppm" of it has 313 characters. SQLite stored that in
    the alarm's VARCHAR(100) value; PostgreSQL refused it, and the monitor failed every round it stayed."""
    school.values("gw-101", "env", co2_ppm=1e308, temperature_c=-1e308)
    school.values("gw-101", "proj", lamp_hours=1e308)
    assert len(school.evaluate().raised) == 3
    assert {a["kind"]: len(a["value"]) <= 100 for a in school.open()} == {
        "co2_above": True, "temperature_range": True, "lamp_hours_above": True}
    assert any("1e+308 ppm" in a["message"] for a in school.open())


def test_acknowledge_is_separate_from_clearing(school: School) -> None:
    school.values("gw-101", "env", co2_ppm=2000)
    school.evaluate()
    [alarm] = school.open()
    acked, changed = alarms.acknowledge(school.registry, alarm["id"], "fm", now=1000.0)
    assert changed and acked["acked_by"] == "fm" and acked["acked_at"] == 1000.0
    assert acked["state"] == "acknowledged" and acked["cleared_at"] is None
    # Acknowledged is still open while the condition holds; evaluating keeps it, does not re-raise.
    assert school.evaluate().raised == []
    assert [a["state"] for a in school.open()] == ["acknowledged"]
    # A second acknowledgement keeps the first one.
    again, changed = alarms.acknowledge(school.registry, alarm["id"], "boss", now=2000.0)
    assert not changed and again["acked_by"] == "fm" and again["acked_at"] == 1000.0
    school.values("gw-101", "env", co2_ppm=700)
    school.evaluate()
    [past] = school.all()
    assert past["state"] == "cleared" and past["acked_by"] == "fm" and past["cleared_at"] is not None
    assert alarms.acknowledge(school.registry, 999, "fm") is None


def test_a_cleared_alarm_can_still_be_acknowledged(school: School) -> None:
    school.values("gw-101", "env", co2_ppm=2000)
    school.evaluate()
    school.values("gw-101", "env", co2_ppm=600)
    school.evaluate()
    [past] = school.all()
    assert past["acked_at"] is None
    acked, changed = alarms.acknowledge(school.registry, past["id"], "fm")
    assert changed and acked["acked_by"] == "fm" and acked["state"] == "cleared"


def test_temperature_lamp_and_projector_errors(school: School) -> None:
    school.values("gw-101", "env", temperature_c=14.5)
    school.values("gw-102", "env", temperature_c=31.2)
    school.values("gw-101", "proj", lamp_hours=3100, error_fan="ok", error_lamp="warning", error_cover="error")
    school.values("gw-102", "proj", lamp_hours=2999, error_fan="ok", error_lamp="ok")
    school.evaluate()
    got = {(a["kind"], a["gateway"]): a for a in school.open()}
    assert set(got) == {("temperature_range", "gw-101"), ("temperature_range", "gw-102"),
                        ("lamp_hours_above", "gw-101"), ("projector_error", "gw-101")}
    assert "below 16 °C" in got["temperature_range", "gw-101"]["message"]
    assert "above 30 °C" in got["temperature_range", "gw-102"]["message"]
    assert "3100 h" in got["lamp_hours_above", "gw-101"]["message"]
    assert got["projector_error", "gw-101"]["value"] == "cover error, lamp warning"
    # One error cleared, one left: the same alarm stays open; all ok: cleared.
    school.values("gw-101", "proj", error_cover="ok")
    assert school.evaluate().raised == []
    school.values("gw-101", "proj", error_lamp="ok")
    school.evaluate()
    assert ("projector_error", "gw-101") not in {(a["kind"], a["gateway"]) for a in school.open()}


def test_projector_error_from_a_store_without_strings() -> None:
    """Enumerated metrics may arrive as their index (0 = ok) from a numbers-only store."""
    rule = Rule(1, "projector_error", {}, True)
    snap = Snapshot(gateways=[{"id": "g", "online": True, "last_seen": 1.0}], devices=[],
                    latest={("g", "p"): {"error_fan": 0, "error_lamp": 2}, ("g", "q"): {"error_fan": 0}})
    [cond] = alarms.conditions([rule], snap, now=10.0).values()
    assert (cond.gateway, cond.device, cond.value) == ("g", "p", "lamp error")


def test_gateway_offline_longer_than_the_limit(school: School) -> None:
    school.state("gw-101", online=False)
    now = time.time()
    school.evaluate(now + 9 * 60)
    assert school.open() == []  # offline, but not for 10 minutes yet
    school.evaluate(now + 11 * 60)
    [alarm] = school.open()
    assert (alarm["kind"], alarm["gateway"], alarm["device"]) == ("offline_minutes", "gw-101", "")
    assert "Gateway offline" in alarm["message"]
    school.state("gw-101", online=True)
    school.evaluate(now + 12 * 60)
    assert school.open() == [] and school.all()[0]["cleared_at"] is not None


def test_a_gateway_that_never_reported_is_not_installed_yet_and_its_alarms_start_with_its_first_message(
        school: School) -> None:
    """Registered before it is mounted (a district imports whole schools): no alarm however long it waits."""
    school.registry.register_gateway("gw-103", "s1", "103", "B")
    now = time.time()
    for later in (0, 11 * 60, 7 * 86400):
        school.evaluate(now + later)
        assert school.open() == []
    assert alarms.snapshot(school.registry, school.ledger).not_installed() == {"gw-103"}
    # Installed: its first message. Alarms apply from then on.
    school.state("gw-103", online=True)
    school.values("gw-103", "env", co2_ppm=2000)
    school.evaluate()
    assert [(a["gateway"], a["kind"]) for a in school.open()] == [("gw-103", "co2_above")]
    school.values("gw-103", "env", co2_ppm=600)
    school.evaluate()
    school.state("gw-103", online=False)
    school.evaluate(time.time() + 11 * 60)
    [alarm] = school.open()
    assert (alarm["gateway"], alarm["kind"], alarm["building"]) == ("gw-103", "offline_minutes", "B")
    assert "Gateway offline" in alarm["message"]


def test_never_reported_alarms_of_an_earlier_version_are_cleared(school: School) -> None:
    """The 1,998 "never reported" alarms an import raised before this change close by themselves."""
    school.registry.register_gateway("gw-103", "s1", "103", "B")
    rule = school.rule("offline_minutes")
    with school.registry.session() as s:
        s.add(Alarm(rule_id=rule["id"], gateway="gw-103", device="", raised_at=time.time() - 3600,
                    message="Gateway has never reported (registered 1.0 h ago)"))
    assert len(school.open()) == 1
    school.evaluate()
    assert school.open() == [] and school.all()[0]["cleared_at"] is not None


def test_device_offline_on_an_online_gateway(school: School) -> None:
    school.values("gw-102", "env", co2_ppm=500)
    school.state("gw-102", env="offline")
    now = time.time()
    school.evaluate(now + 5 * 60)
    assert school.open() == []
    school.evaluate(now + 10 * 60 + 1)
    [alarm] = school.open()
    assert (alarm["gateway"], alarm["device"]) == ("gw-102", "env") and "Device offline" in alarm["message"]
    school.state("gw-102", env="ok")
    school.evaluate(now + 11 * 60)
    assert school.open() == []


def test_value_alarms_are_held_while_the_gateway_is_offline(school: School) -> None:
    """A gateway that went quiet says nothing about CO2: its CO2 alarm is neither cleared nor raised again."""
    school.values("gw-101", "env", co2_ppm=2000)
    school.evaluate()
    [co2] = school.open()
    school.state("gw-101", online=False)
    now = time.time()
    school.evaluate(now + 11 * 60)
    kinds = {a["kind"]: a for a in school.open()}
    assert set(kinds) == {"co2_above", "offline_minutes"} and kinds["co2_above"]["id"] == co2["id"]
    school.state("gw-101", online=True)
    school.values("gw-101", "env", co2_ppm=650)
    school.evaluate(now + 12 * 60)
    assert school.open() == []


def test_threshold_change_and_disabling_clear_alarms(school: School) -> None:
    school.values("gw-101", "env", co2_ppm=1600)
    school.evaluate()
    assert len(school.open()) == 1
    rule = school.rule("co2_above")
    before, after = alarms.update_rule(school.registry, rule["id"], {"ppm": "1800"}, True)
    assert before["params"] == {"ppm": 1500} and after["params"] == {"ppm": 1800}
    school.evaluate()
    assert school.open() == []
    alarms.update_rule(school.registry, rule["id"], {"ppm": 1000}, True)
    school.evaluate()
    assert len(school.open()) == 1
    alarms.update_rule(school.registry, rule["id"], {"ppm": 1000}, False)
    school.evaluate()
    assert school.open() == []
    assert school.rule("co2_above")["enabled"] is False


@pytest.mark.parametrize("kind, params, text", [
    ("co2_above", {"ppm": "abc"}, "must be a number, got 'abc'"),
    ("co2_above", {"ppm": ""}, "must be a number"),
    ("co2_above", {"ppm": "nan"}, "finite"),
    ("co2_above", {"ppm": True}, "must be a number"),
    ("co2_above", {"ppm": 50}, "between 400 and 10000"),
    ("temperature_range", {"min": 25, "max": 20}, "must be below the highest"),
    ("temperature_range", {"min": 18}, "Highest (°C) must be a number"),
    ("offline_minutes", {"minutes": 0}, "between 1 and 10080"),
    ("nonsense", {}, "unknown rule kind"),
])
def test_bad_parameters_are_refused_with_a_clear_message(kind: str, params: dict, text: str) -> None:
    with pytest.raises(RuleError, match=None) as err:
        alarms.validate_params(kind, params)
    assert text in str(err.value)


def test_refused_update_changes_nothing(school: School) -> None:
    rule = school.rule("temperature_range")
    with pytest.raises(RuleError):
        alarms.update_rule(school.registry, rule["id"], {"min": "30", "max": "10"}, False)
    assert school.rule("temperature_range") == rule
    with pytest.raises(LookupError):
        alarms.update_rule(school.registry, 999, {}, True)


def test_validated_numbers_are_normalised() -> None:
    assert alarms.validate_params("temperature_range", {"min": " 17,5 ", "max": "28"}) == {"min": 17.5, "max": 28}
    assert alarms.validate_params("projector_error", {"ignored": "x"}) == {}


def test_duplicate_open_alarms_are_collapsed(school: School) -> None:
    """Should two writers ever have raised the same alarm, the next evaluation keeps one."""
    school.values("gw-101", "env", co2_ppm=2000)
    school.evaluate()
    rule = school.rule("co2_above")
    with school.registry.session() as s:
        s.add(Alarm(rule_id=rule["id"], gateway="gw-101", device="env", message="twin", value=""))
    school.evaluate()
    assert len(school.open()) == 1


def test_monitor_evaluates_in_the_background_and_stops(school: School) -> None:
    school.values("gw-101", "env", co2_ppm=2500)
    monitor = alarms.AlarmMonitor(school.registry, school.ledger, interval=0.05).start()
    try:
        wait_until(lambda: school.open(), 10, message="alarm raised by the monitor")
        school.values("gw-101", "env", co2_ppm=500)
        wait_until(lambda: not school.open(), 10, message="alarm cleared by the monitor")
    finally:
        monitor.stop()
    assert not monitor._thread.is_alive() and monitor.runs >= 2
    with pytest.raises(ValueError):
        alarms.AlarmMonitor(school.registry, school.ledger, interval=0)


def test_of_two_monitors_on_one_database_one_evaluates_and_the_other_takes_over(school: School) -> None:
    """Two web instances: the `alarms` lease lets one evaluate; when it stops, the other goes on."""
    first = alarms.AlarmMonitor(school.registry, school.ledger, interval=0.05).start()
    wait_until(lambda: first.runs >= 3, 10, message="the first monitor holds the lease and evaluates")
    second = alarms.AlarmMonitor(Registry(school.db), Ledger(school.db), interval=0.05).start()
    try:
        runs = first.runs
        wait_until(lambda: first.runs >= runs + 10, 10, message="the first monitor goes on evaluating")
        assert second.runs == 0  # it looked at the lease each round and left the work to the holder
        first.stop()
        wait_until(lambda: second.runs >= 3, 10, message="the second monitor took the lease over")
        school.values("gw-101", "env", co2_ppm=2500)
        wait_until(lambda: school.open(), 10, message="alarm raised by the monitor that holds the lease")
        assert len(school.open()) == 1
    finally:
        first.stop()
        second.stop()
