"""A school broker bridged to a district broker, with broker_config/bridge.conf.template
as `campus broker-config --district` fills it in: two real Mosquitto processes, both
running the production broker_config/mosquitto.conf with the dynamic-security.json
`campus broker-config` generates from the registry (the district's with `--district`:
the bridge's account bound to the bridge's client id; the school's: the agent's account
bound to the agent's client id); the bridge over TLS with the generated CA and its own
account. (tests/test_tls.py runs the same conf on a password file and ACL, the model before.) The agent talks to the school broker; ingest and the command service to the
district broker. Telemetry arrives at the district once, through a district outage;
commands go the other way, also while the school's link is down.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from campus.net import free_port
from campus.urls import parse_mqtt_url
from central import broker_config
from central.commands import CommandService
from central.ledger import Ledger
from central.registry import Registry
from tests.e2e import SimulatorsInThread
from tests.servers import wait_until
from tests.test_commands import projector, set_commands
from tests.test_faults import assert_exactly_once
from tests.tlsbrokers import (
    ProductionMosquitto,
    SplitClassroom,
    make_ca,
)

pytestmark = pytest.mark.slow

SCHOOL = "s1"
GATEWAY = "gw-s1-gw1"  # the MQTT account the registry gives gateway gw1 of school s1


@dataclass
class Link:
    pki: Path
    school: ProductionMosquitto
    district: ProductionMosquitto
    passwords: dict[str, str]

    def url(self, user: str) -> str:
        """mqtts:// to the broker where `user` lives, verified against the generated CA."""
        broker = self.school if user == GATEWAY else self.district
        return broker.url_for(user, self.passwords[user], self.pki / "ca.crt")

    def bridge_up(self) -> bool:
        """What the district's audit log last said about the bridge's session."""
        lines = [ln for ln in self.district.audit().splitlines() if " bridge-s1 " in ln]
        return bool(lines) and "New bridge connected" in lines[-1]


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Link]:
    pki = make_ca(tmp_path / "pki")  # one CA; the server certificate names 127.0.0.1
    certs = {"cert": pki / "server.crt", "key": pki / "server.key", "ca": pki / "ca.crt"}
    # The district's accounts and the school's bridge conf as `campus broker-config --district` writes them;
    # the school broker's accounts as `campus broker-config` writes them there.
    generated, school_files = tmp_path / "district-files", tmp_path / "school-files"
    district = ProductionMosquitto(tmp_path / "district", dynsec=generated / broker_config.DYNSEC_FILE, **certs)
    school = ProductionMosquitto(tmp_path / "school", dynsec=school_files / broker_config.DYNSEC_FILE, **certs)
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        passwords = {GATEWAY: registry.register_gateway("gw1", SCHOOL, "101")}
        files = broker_config.write(registry, generated, district=("127.0.0.1", district.tls_port),
                                    district_ca=str(pki / "ca.crt"))
        broker_config.write(registry, school_files)
    finally:
        registry.close()
    passwords.update(files.passwords)
    shutil.copy(generated / "bridges" / f"bridge-{SCHOOL}.conf", school.confd)
    district.start()
    school.start()
    result = Link(pki, school, district, passwords)
    try:
        wait_until(result.bridge_up, 30, message="the bridge to connect")
        yield result
    finally:
        school.stop()
        district.stop()


def test_telemetry_reaches_the_district_once_through_a_district_outage(tmp_path: Path, link: Link) -> None:
    room = SplitClassroom(tmp_path, link.url(GATEWAY), link.url("ingest")).start()
    try:
        room.wait_stored_at_least(20, timeout=60)
        link.district.kill()  # SIGKILL mid-stream: the bridge loses its link, the school broker queues
        stored = room.stored_count()
        outage_started = room.agent_outbox()["last_seq"]
        time.sleep(8)  # the outage itself (not synchronisation)
        during = room.agent_outbox()
        assert during["last_seq"] > outage_started + 20, "the agent stopped sampling"
        # Taken by the school broker (sent), and kept by the agent until central acknowledges them.
        assert during["pending"] - during["unacked"] < 10, \
            "the school broker should take the agent's messages while the district is away"
        assert during["unacked"] > 20, "the agent let go of rows central has not acknowledged"
        assert room.stored_count() == stored
        link.district.start()
        figures = room.quiesce_and_account(timeout=120)
        assert figures["dropped"] == 0
        assert_exactly_once(room, figures)  # every seq once, all 6 metrics of each sample
        assert room.view.gateway("gw1")["online"], "the retained state crossed the bridge"
        assert room.agent.alive() and room.ingest.alive()
    finally:
        room.stop()


def test_commands_from_the_district_reach_the_school_agent(tmp_path: Path, link: Link) -> None:
    room = SplitClassroom(tmp_path, link.url(GATEWAY), link.url("ingest"), poll_interval=0.3,
                          devices=[projector(free_port())])
    with SimulatorsInThread(room.config) as sims:
        room.start(sim=False)
        ledger = Ledger(str(room.db))
        service = CommandService(parse_mqtt_url(link.url("web")), ledger)
        service.start()
        try:
            wait_until(lambda: any(d["id"] == "proj" for d in ledger.gateway_devices()), 60,
                       message="the district knows the projector")
            done = service.send(SCHOOL, "gw1", "proj", "power_on", {}, by="district-admin", wait=20)
            assert done["status"] == "done", done
            assert set_commands(sims) == ["%1POWR 1"]

            # The school's link goes down (its broker restarts): a command sent meanwhile
            # waits in the bridge's persistent session at the district, then runs.
            link.school.stop()
            wait_until(lambda: not link.bridge_up(), 20, message="the district to see the bridge go")
            queued = service.send(SCHOOL, "gw1", "proj", "mute", {}, by="district-admin", ttl=120, wait=0.5)
            assert queued["status"] == "pending"
            link.school.start()
            wait_until(lambda: ledger.command(queued["id"])["status"] == "done", 90,
                       message="the queued command to run once the link is back")
            assert set_commands(sims) == ["%1POWR 1", "%1AVMT 31"]
            audit = ledger.command(queued["id"])
            assert audit["by"] == "district-admin" and audit["finished"] >= audit["created"]
        finally:
            service.stop()
            room.stop()
            ledger.close()


def test_the_school_broker_restarted_empty_loses_nothing(tmp_path: Path, link: Link) -> None:
    # The school broker queues the agent's messages for the bridge while the district is away; killed and
    # restarted without its saved state, it loses them, PUBACKed long ago. Central never acknowledged them:
    # the agent sends them again when central's presence comes back across the bridge.
    room = SplitClassroom(tmp_path, link.url(GATEWAY), link.url("ingest"), poll_interval=0.1).start()
    try:
        room.wait_stored_at_least(20, timeout=60)
        link.district.kill()
        before = room.agent_outbox()["last_seq"]
        wait_until(lambda: room.agent_outbox()["last_seq"] >= before + 20, 30, message="20 more samples")
        assert room.agent_outbox()["unacked"] >= 10, "the school broker should have taken them for the bridge"
        link.school.restart_empty()
        link.district.start()
        figures = room.quiesce_and_account(timeout=120)
        assert figures["dropped"] == 0
        assert_exactly_once(room, figures)
    finally:
        room.stop()
