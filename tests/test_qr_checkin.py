"""A QR check-in from the camera to central: keyed-hashed on the gateway, the printed code nowhere after it.

An agent runs in this process with its camera reading a generated classroom video in which a pupil holds
up a card with a QR code (no broker: its URL names a closed port, so everything stays in the outbox where
the test reads it). Then central's ingest, on a real SQLite ledger, takes the event the agent made and
refuses the shape an older agent sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from campus import contract
from campus.net import free_port
from campus.urls import MqttUrl
from central.ingest import Ingest
from central.ledger import Ledger
from central.store.sqlite import SqlitePointStore
from central.subscriber import Delivery
from device_profiles.config import load_gateway_config
from edge_agent.agent import Agent
from firmware_stubs.runner import SimulatorSet
from protocols.card_ids import qr_pseudonym
from tests.e2e import outbox_events, run_room, until, write_gateway_config

CODE = "STU-101-0007"  # what is printed on the pupil's card
OLD, NEW = "school-secret-old", "school-secret-new"


def camera_room(tmp_path: Path, qr_checkin: bool | None = None, **extra: Any) -> Any:
    """A gateway with one camera on a 4 s looping video; the card is held up from 0.8 s to 2.2 s of each pass."""
    camera = {"id": "cam", "profile": "camera-occupancy", "address": {"source": str(tmp_path / "cam.avi")},
              "options": {"loop": True, **({} if qr_checkin is None else {"qr_checkin": qr_checkin})}, "simulator": {"people": 2, "qr_text": CODE, "seconds": 4, "fps": 10}}
    path = write_gateway_config(tmp_path / "gw1.yaml", f"mqtt://127.0.0.1:{free_port()}", poll_interval=0.2,
                                devices=[camera], **extra)
    return load_gateway_config(path)


def check_ins(agent: Agent) -> list[dict[str, Any]]:
    return outbox_events(agent, "cam")


def everything_written(data_dir: Path) -> bytes:
    """Every byte the agent keeps on disk: the outbox database and its WAL (each commit is there), the pushed
    config."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file())


def test_the_camera_sends_the_pseudonym_only_and_a_new_secret_rekeys(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = camera_room(tmp_path, card_secret=OLD)

    async def body(agent: Agent, sims: SimulatorSet) -> None:
        await until(lambda: check_ins(agent), what="a check-in in the outbox")
        assert check_ins(agent)[0] == {"person": qr_pseudonym(OLD, CODE), "camera": "cam"}
        payload = json.dumps({"version": 2, "devices": [d.model_dump(exclude={"simulator"}) for d in config.devices],
                              "card_secret": NEW})
        assert await agent.apply_pushed_config(payload.encode())  # as central's push (central/podium.py) sends it
        await until(lambda: any(e["person"] == qr_pseudonym(NEW, CODE) for e in check_ins(agent)),
                    what="a check-in under the new secret")
        assert {e["person"] for e in check_ins(agent)} == {qr_pseudonym(OLD, CODE), qr_pseudonym(NEW, CODE)}
        seen = [agent.outbox.peek(10_000), agent.state(), agent.drivers["cam"].counters, caplog.text]
        assert CODE not in repr(seen)
        assert CODE.encode() not in everything_written(config.data_path)
        assert qr_pseudonym(NEW, CODE).encode() in everything_written(config.data_path)  # the check is not vacuous

    run_room(config, body, ready="cam", what="the camera reading")


def test_a_camera_asked_for_qr_check_in_without_the_card_secret_is_a_fault_and_sends_nothing(tmp_path: Path) -> None:
    config = camera_room(tmp_path, qr_checkin=True)  # no card_secret in the gateway config

    async def body(agent: Agent, sims: SimulatorSet) -> None:
        await until(lambda: agent.polling.status.get("cam") == "fault", what="the camera's fault")
        assert agent.state().devices["cam"]["status"] == "fault"
        assert check_ins(agent) == []

    _run_faulty(config, body)


def _run_faulty(config: Any, body: Any) -> None:
    """run_room waits for the device to read ok, which this one never does: start the agent bare."""
    async def main() -> None:
        async with SimulatorSet(config) as sims:
            agent = Agent(config)
            task = asyncio.create_task(agent.run())
            try:
                await body(agent, sims)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


@pytest.fixture
def ingest(tmp_path: Path) -> Any:
    db = tmp_path / "central.db"
    store, ledger = SqlitePointStore(db), Ledger(db)
    yield Ingest(MqttUrl("127.0.0.1", 1883), store, ledger), ledger
    store.close()
    ledger.close()


def test_ingest_stores_a_check_in_and_refuses_a_raw_code_naming_the_field(
        ingest: Any, caplog: pytest.LogCaptureFixture) -> None:
    worker, ledger = ingest
    topic = contract.event_topic("s1", "gw1", "cam")
    person, now = qr_pseudonym(OLD, CODE), time.time()
    good = contract.Event(1, now, contract.ATTENDANCE_EVENT, contract.attendance_data(person, "cam"))
    old_agent = contract.Event(2, now + 1, contract.ATTENDANCE_EVENT, {"code": CODE, "camera": "cam"})
    with caplog.at_level(logging.WARNING):
        worker.process([Delivery(1, 1, 1, topic, good.encode()), Delivery(1, 2, 1, topic, old_agent.encode())])
    stored = ledger.events(gateway="gw1", type_=contract.ATTENDANCE_EVENT)
    assert [(e["seq"], e["data"]) for e in stored] == [(1, {"person": person, "camera": "cam"})]
    assert worker.stats.rejected == 1
    assert "field 'data.code' is not allowed" in caplog.text and CODE not in caplog.text
