"""Schedules: when they are due (times, weekdays, midnight, missed runs) and what a run records.

Runs go through a real CommandService to a real Mosquitto: where no agent
answers, the recorded results are `pending` (or `expired` past the
deadline); a stand-in agent that answers through the ledger, as ingest
would record its results, gives `done` and `rejected`.
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from campus.contract import Command, CommandResult, State
from campus.urls import parse_mqtt_url
from central import schedules
from central.commands import CommandService
from central.db import open_database
from central.ledger import Ledger
from central.registry import Building, Registry, Schedule, ScheduleRun
from central.schedules import ScheduleError, Scheduler, due
from tests.servers import Mosquitto, wait_until

MON = datetime(2025, 3, 10)  # a Monday
SHANGHAI = ZoneInfo("Asia/Shanghai")
_seq = itertools.count(1)


def sched(at: str = "22:00", days: str = "mon,tue,wed,thu,fri", last_run: float | None = None,
          enabled: bool = True) -> SimpleNamespace:
    return SimpleNamespace(at=at, days=days, last_run=last_run, enabled=enabled)


def at(day: int, hh: int, mm: int, ss: int = 0, tz: ZoneInfo | None = None) -> datetime:
    return (MON + timedelta(days=day)).replace(hour=hh, minute=mm, second=ss, tzinfo=tz)


# ---------------------------------------------------------------- due()


@pytest.mark.parametrize("now, expected", [
    (at(0, 21, 59, 59), False),   # not yet
    (at(0, 22, 0), True),         # on time
    (at(0, 22, 29), True),        # a few minutes late (server restarting): still runs
    (at(0, 22, 31), False),       # missed by more than the grace window: skipped
    (at(5, 22, 5), False),        # Saturday is not a school day
    (at(6, 22, 0), False),        # nor Sunday
    (at(4, 22, 0), True),         # Friday is
])
def test_due_by_time_and_weekday(now: datetime, expected: bool) -> None:
    assert due(sched(), now) is expected


def test_runs_once_per_day() -> None:
    s = sched()
    assert due(s, at(0, 22, 1))
    s.last_run = at(0, 22, 1).timestamp()
    for later in (at(0, 22, 2), at(0, 22, 20), at(0, 23, 59), at(1, 8, 0), at(1, 21, 59)):
        assert not due(s, later), later
    assert due(s, at(1, 22, 0))  # the next school day


def test_missed_runs_run_once_not_repeatedly() -> None:
    """Down from Monday 21:00 to Wednesday 22:10: Wednesday's run happens, once; Monday's and Tuesday's do not."""
    s = sched(last_run=at(0, 21, 0).timestamp() - 86400)
    assert not due(s, at(2, 9, 0))   # back on Wednesday morning: nothing switched at 09:00
    assert due(s, at(2, 22, 10))
    s.last_run = at(2, 22, 10).timestamp()
    assert not due(s, at(2, 22, 11)) and not due(s, at(2, 22, 25))


def test_grace_window_crosses_midnight() -> None:
    s = sched(at="23:50", days="mon")
    assert due(s, at(1, 0, 10))        # Tuesday 00:10 is Monday's 23:50 + 20 min
    assert not due(s, at(1, 0, 25))    # beyond 30 min
    assert not due(sched(at="23:50", days="tue"), at(1, 0, 10))  # Tuesday's is tonight, not last night
    assert due(s, at(0, 23, 50))


def test_disabled_or_broken_schedules_never_run() -> None:
    assert not due(sched(enabled=False), at(0, 22, 0))
    assert not due(sched(at="25:00"), at(0, 22, 0))
    assert not due(sched(days="funday"), at(0, 22, 0))


def test_local_time_with_a_timezone_and_custom_grace() -> None:
    paris = ZoneInfo("Europe/Paris")
    s = sched(at="07:30", days="mon,tue,wed,thu,fri,sat,sun")
    # 30 March 2025: clocks go forward at 02:00; 07:30 is still 07:30 local.
    now = datetime(2025, 3, 30, 7, 30, tzinfo=paris)
    assert due(s, now) and schedules.occurrence(s, now).utcoffset() == timedelta(hours=2)
    assert due(s, datetime(2025, 3, 30, 7, 40, tzinfo=paris), grace=timedelta(minutes=15))
    assert not due(s, datetime(2025, 3, 30, 7, 50, tzinfo=paris), grace=timedelta(minutes=15))


def test_next_run() -> None:
    assert schedules.next_run(sched(), at(0, 21, 0)) == at(0, 22, 0)
    assert schedules.next_run(sched(), at(4, 22, 0, 1)) == at(7, 22, 0)  # Friday night -> next Monday
    assert schedules.next_run(sched(enabled=False), at(0, 21, 0)) is None


# ---------------------------------------------------------------- registry + ledger


class Site:
    """Registry and ledger in one central database (each test on SQLite and on PostgreSQL): school s1 with building A (rooms 101, 102) and B (201)."""

    def __init__(self, url: str) -> None:
        self.db = open_database(url)
        self.registry, self.ledger = Registry(self.db), Ledger(self.db)
        self.rooms = {"gw-101": ("101", "A"), "gw-102": ("102", "A"), "gw-201": ("201", "B")}
        for gw, (room, building) in self.rooms.items():
            self.registry.register_gateway(gw, "s1", room, building)
            self.state(gw, online=True)
        # Provisioned in the registry, never reported by its gateway.
        self.registry.add_device("gw-102", "display2", "display-samsung-mdc", {"serial": "/dev/ttyUSB1"})
        with self.registry.session() as s:
            self.building = {b.name: b.id for b in s.query(Building)}

    def state(self, gw: str, online: bool) -> None:
        devices = {"env": {"profile": "env-6in1-modbus", "kind": "environment", "status": "ok"},
                   "proj": {"profile": "projector-pjlink", "kind": "projector", "status": "ok"},
                   "display": {"profile": "display-samsung-mdc", "kind": "display", "status": "ok"}}
        self.ledger.record([], [("s1", gw, State(online=online, ts=time.time() + next(_seq) * 1e-3,
                                                 room=self.rooms[gw][0], devices=devices))], [])

    def add(self, **fields: object) -> Schedule:
        values = {"name": "Building A off", "at": "22:00", "days": "mon,tue,wed,thu,fri", "action": "power_off",
                  "kinds": "display,projector", "school_id": "s1", "building_id": self.building["A"], **fields}
        with self.registry.session() as s:
            row = Schedule(**values)
            s.add(row)
            s.flush()
        return row

    def runs(self) -> list[ScheduleRun]:
        with self.registry.session() as s:
            return list(s.query(ScheduleRun).order_by(ScheduleRun.id))


@pytest.fixture
def site(central_db_url: str):
    s = Site(central_db_url)
    yield s
    s.ledger.close()
    s.registry.close()
    s.db.close()


def test_targets_follow_scope_and_kinds(site: Site) -> None:
    got = [(t.gateway, t.device, t.status) for t in schedules.targets(site.add(), site.registry, site.ledger)]
    assert got == [("gw-101", "display", "ok"), ("gw-101", "proj", "ok"), ("gw-102", "display", "ok"),
                   ("gw-102", "display2", "never reported"), ("gw-102", "proj", "ok")]
    only_b = site.add(building_id=site.building["B"], kinds="projector")
    assert [(t.gateway, t.device) for t in schedules.targets(only_b, site.registry, site.ledger)] == \
        [("gw-201", "proj")]
    everywhere = site.add(school_id=None, building_id=None, kinds="display")
    assert len(schedules.targets(everywhere, site.registry, site.ledger)) == 4
    elsewhere = site.add(school_id="s2", building_id=None)
    assert schedules.targets(elsewhere, site.registry, site.ledger) == []


def test_run_without_a_broker_records_a_failure_per_device(site: Site) -> None:
    row = site.add()
    result = schedules.run(row, site.registry, site.ledger, None, now=1234.0)
    statuses = {(r["gateway"], r["device"]): r["status"] for r in result["results"]}
    assert statuses == {("gw-101", "display"): "failed", ("gw-101", "proj"): "failed",
                        ("gw-102", "display"): "failed", ("gw-102", "proj"): "failed",
                        ("gw-102", "display2"): "skipped"}
    assert "without --mqtt" in result["results"][0]["detail"]
    [stored] = site.runs()
    assert stored.schedule_id == row.id and stored.ran_at == 1234.0 and stored.results == result["results"]
    trail = site.registry.audit_trail()
    assert trail[0]["user"] == "scheduler" and "4 failed, 1 skipped" in trail[0]["detail"]


@pytest.fixture
def service(site: Site, mosquitto: Mosquitto):
    svc = CommandService(parse_mqtt_url(mosquitto.url), site.ledger)
    svc.start()
    wait_until(svc.connected.is_set, 10, message="command service connected")
    yield svc
    svc.stop()


def test_run_where_no_agent_answers_records_pending_and_offline(site: Site, service: CommandService) -> None:
    site.state("gw-102", online=False)
    result = schedules.run(site.add(), site.registry, site.ledger, service, wait=0.3, publish_wait=0.2)
    by_dev = {(r["gateway"], r["device"]): r for r in result["results"]}
    assert {k: r["status"] for k, r in by_dev.items()} == {
        ("gw-101", "display"): "pending", ("gw-101", "proj"): "pending", ("gw-102", "display"): "pending",
        ("gw-102", "proj"): "pending", ("gw-102", "display2"): "skipped"}
    assert by_dev["gw-101", "proj"]["detail"].startswith("no answer yet")
    assert by_dev["gw-102", "proj"]["detail"].startswith("gateway offline")
    # Every sent command is in the ledger's audit trail, from the schedule, with a short deadline.
    commands = {c["id"]: c for c in site.ledger.commands()}
    for r in result["results"]:
        if r["command"]:
            c = commands[r["command"]]
            assert c["by"] == "schedule:Building A off" and c["action"] == "power_off"
            assert c["deadline"] - c["created"] == pytest.approx(schedules.COMMAND_TTL_S, abs=1)
    assert site.runs()[0].results == result["results"]


def test_a_command_past_its_deadline_is_recorded_expired(site: Site, service: CommandService) -> None:
    result = schedules.run(site.add(building_id=site.building["B"]), site.registry, site.ledger, service,
                           wait=0.2, publish_wait=0.1, ttl=-10)
    assert [(r["device"], r["status"]) for r in result["results"]] == [("display", "expired"), ("proj", "expired")]
    assert "deadline" in result["results"][0]["detail"]


def test_run_records_what_the_agent_answered(site: Site, service: CommandService, mosquitto: Mosquitto) -> None:
    """A stand-in agent: displays switch off, projectors refuse; ingest's part is Ledger.record."""
    answered = []

    def on_message(client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        cmd = Command.decode(msg.payload)
        status = "rejected" if msg.topic.endswith("/proj") else "done"
        site.ledger.record([], [], [CommandResult(cmd.id, status, "not in this profile" if status == "rejected"
                                                  else "", time.time())])
        answered.append(cmd.id)

    agent = paho.Client(CallbackAPIVersion.VERSION2, client_id="fake-agent")
    agent.on_message = on_message
    agent.on_connect = lambda c, u, f, rc, p: c.subscribe("campus/v1/s1/+/cmd/+", qos=1)
    agent.connect("127.0.0.1", mosquitto.port)
    agent.loop_start()
    try:
        wait_until(agent.is_connected, 10, message="stand-in agent connected")
        result = schedules.run(site.add(), site.registry, site.ledger, service, wait=5.0, publish_wait=0.2)
    finally:
        agent.loop_stop()
        agent.disconnect()
    by_dev = {(r["gateway"], r["device"]): r for r in result["results"]}
    assert by_dev["gw-101", "display"]["status"] == "done"
    assert by_dev["gw-101", "proj"]["status"] == "rejected"
    assert by_dev["gw-101", "proj"]["detail"] == "not in this profile"
    assert by_dev["gw-102", "display"]["status"] == "done" and by_dev["gw-102", "display2"]["status"] == "skipped"
    assert len(answered) == 4


def test_scheduler_runs_a_due_schedule_once(site: Site) -> None:
    row = site.add(days="mon,tue,wed,thu,fri,sat,sun", at="22:00")
    # School s1 has no timetable: `at` is the site's wall clock (Asia/Shanghai by default), not the host's.
    night = datetime.now(SHANGHAI).replace(hour=22, minute=5, second=0, microsecond=0)
    first, second = Scheduler(site.registry, site.ledger, None), Scheduler(site.registry, site.ledger, None)
    assert first.tick(night.replace(hour=21)) == []
    made = first.tick(night)
    assert [r["schedule_id"] for r in made] == [row.id]
    # The occurrence is claimed in the database: neither this scheduler nor another one runs it again.
    assert first.tick(night + timedelta(minutes=1)) == [] and second.tick(night + timedelta(minutes=2)) == []
    assert len(site.runs()) == 1
    with site.registry.session() as s:
        assert s.get(Schedule, row.id).last_run == pytest.approx(night.timestamp())
    assert [r["schedule_id"] for r in second.tick(night + timedelta(days=1))] == [row.id]


def test_disabled_schedules_are_not_run(site: Site) -> None:
    site.add(enabled=False, days="mon,tue,wed,thu,fri,sat,sun")
    night = datetime.now(SHANGHAI).replace(hour=22, minute=1)
    assert Scheduler(site.registry, site.ledger, None).tick(night) == []


def test_scheduler_thread_stops(site: Site) -> None:
    scheduler = Scheduler(site.registry, site.ledger, lambda: None, interval=0.05).start()
    scheduler.stop()
    assert not scheduler._thread.is_alive()


# ---------------------------------------------------------------- validation


def test_validate_normalises_a_form(site: Site) -> None:
    fields = schedules.validate({"name": " Night ", "at": "22:00", "days": ["fri", "mon"], "action": "power_off",
                                 "kinds": ["projector", "display"], "building_id": str(site.building["A"]),
                                 "enabled": "on"}, site.registry)
    assert fields == {"name": "Night", "at": "22:00", "days": "mon,fri", "action": "power_off",
                      "kinds": "display,projector", "school_id": "s1", "building_id": site.building["A"],
                      "enabled": True, "anchor": None, "offset_min": 0}


@pytest.mark.parametrize("change, text", [
    ({"name": ""}, "name needs"),
    ({"at": "25:00"}, "HH:MM"),
    ({"at": "9pm"}, "HH:MM"),
    ({"days": ""}, "days must be"),
    ({"days": "mon,xyz"}, "'xyz'"),
    ({"action": "set_volume"}, "action must be one of"),
    ({"kinds": "camera"}, "devices must be"),
    ({"kinds": ""}, "devices must be"),
    ({"school_id": "nowhere"}, "no school"),
    ({"building_id": "999"}, "no building"),
    ({"building_id": "A"}, "listed buildings"),
])
def test_validate_refuses_with_a_clear_message(site: Site, change: dict, text: str) -> None:
    form = {"name": "Night", "at": "22:00", "days": "mon", "action": "power_off", "kinds": "display", **change}
    with pytest.raises(ScheduleError) as err:
        schedules.validate(form, site.registry)
    assert text in str(err.value)


def test_building_must_be_in_the_school(site: Site) -> None:
    site.registry.ensure_room("s2", "1", "A")
    with pytest.raises(ScheduleError, match="not in school 's2'"):
        schedules.validate({"name": "x", "at": "22:00", "days": "mon", "action": "power_off", "kinds": "display",
                            "school_id": "s2", "building_id": str(site.building["A"])}, site.registry)
