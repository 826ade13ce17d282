"""The agent survives its own storage: an unusable data_dir, a damaged outbox, a full disk.

The command journal lives in the outbox's file, so the command tests run the
executor against a real projector simulator (PJLink over TCP) and count what
reached the device. The end-to-end tests run `campus agent` and `campus
ingest` as processes and count at central, seq by seq; the disk is a real
filesystem that really fills up (root only: a tmpfs mount).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from campus import contract
from campus.contract import Command, CommandResult
from campus.net import free_port
from device_profiles.config import GatewayConfig, load_gateway_config
from edge_agent.commands import CommandExecutor
from edge_agent.drivers import create_driver
from edge_agent.outbox import Outbox
from tests.e2e import Classroom, SimulatorsInThread, env_device, until, write_gateway_config
from tests.servers import Mosquitto, SmallFilesystem, wait_until
from tests.stores import sql

METRICS_PER_SAMPLE = 6


def publish_retained(broker: Mosquitto, topic: str, payload: bytes) -> None:
    """What central's config push does: a retained QoS 1 message."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-central")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def projector(port: int) -> dict[str, object]:
    return {"id": "proj", "profile": "projector-pjlink", "address": {"host": "127.0.0.1", "port": port},
            "simulator": {"warmup_s": 0.2, "cooldown_s": 0.2}}


def powered_on(sims: SimulatorsInThread) -> int:
    """How many times the projector was told to power on."""
    return sum(1 for c in sims.call(lambda: sims["proj"].commands) if c == "%1POWR 1")


def results(box: Outbox) -> dict[str, CommandResult]:
    """The command results waiting in the outbox (held in memory or stored), by command id."""
    out = {}
    for row in box.peek(1000):
        if row.topic.endswith("/result"):
            result = CommandResult.decode(row.payload)
            out[result.id] = result
    return out


def run_executor(config: GatewayConfig, box: Outbox, body: Callable[[CommandExecutor], Awaitable[None]]) -> None:
    """`body(executor)` with the projector's command worker running, on a driver of the real simulator."""
    dev = config.devices[0]

    async def main() -> None:
        driver = create_driver(dev.id, dev.profile_obj, dev.address, dict(dev.options))
        executor = CommandExecutor(box, config.school, config.gateway, {dev.id: driver}, {dev.id: asyncio.Lock()})
        worker = asyncio.create_task(executor.run_device(dev.id))
        try:
            await body(executor)
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            await driver.close()

    asyncio.run(main())



def command(cid: str, action: str = "power_on", *, ts: float | None = None) -> bytes:
    now = time.time()
    return Command(id=cid, action=action, params={}, deadline=now + 60, by="teacher", ts=now if ts is None else ts
                   ).encode()


# ---------------------------------------------------------------- the command journal


def test_a_command_issued_before_the_journal_was_lost_is_not_run_again(tmp_path: Path) -> None:
    path = write_gateway_config(tmp_path / "gw1.yaml", "mqtt://127.0.0.1:1", devices=[projector(free_port())])
    config = load_gateway_config(path)
    with SimulatorsInThread(path) as sims:
        box = Outbox(config.data_path / "agent.db")
        first = command("c-1")

        async def run_once(ex: CommandExecutor) -> None:
            ex.receive("proj", first)
            await until(lambda: "c-1" in results(box), what="the first result")

        run_executor(config, box, run_once)
        assert results(box)["c-1"].status == "done" and powered_on(sims) == 1
        box.close()

        # A power cut damages the outbox, and with it the command journal; the broker then redelivers c-1
        # (its PUBACK was lost with the power).
        os.truncate(config.data_path / "agent.db", 0)
        box = Outbox(config.data_path / "agent.db")
        assert box.replaced is not None
        executed: dict[str, int] = {}

        async def after_loss(ex: CommandExecutor) -> None:
            ex.receive("proj", first)
            ex.receive("proj", command("c-2", "power_off"))  # issued now, after the new journal began
            await until(lambda: {"c-1", "c-2"} <= set(results(box)), what="both results")
            executed.update(ex.executed)

        run_executor(config, box, after_loss)
        answered = results(box)
        assert answered["c-1"].status == "expired" and "may have run already" in answered["c-1"].detail
        assert executed == {"c-2": 1}  # the new command runs, the old one does not run again
        assert powered_on(sims) == 1
        # The new journal knows c-1 now: a further redelivery gets the same answer, not a run.
        assert box.read(lambda db: db.execute("SELECT state FROM commands WHERE id='c-1'").fetchone(), None) == \
            ("expired",)
        box.close()


def test_commands_run_on_a_full_disk_once_and_never_unrecorded(tmp_path: Path, small_disk: SmallFilesystem) -> None:
    path = write_gateway_config(tmp_path / "gw1.yaml", "mqtt://127.0.0.1:1", devices=[projector(free_port())],
                                data_dir=str(small_disk.path))
    config = load_gateway_config(path)
    with SimulatorsInThread(path) as sims:
        box = Outbox(config.data_path / "agent.db")
        # Journaled (queued) on disk before the disk filled, run after it: its `running` mark cannot be
        # written, so it must not run (a restart would find it queued and run it again).
        before = command("c-before")

        async def scenario(ex: CommandExecutor) -> None:
            ex.receive("proj", before)
            small_disk.fill()
            await until(lambda: "c-before" in results(box), what="c-before answered")
            ex.receive("proj", command("c-during"))  # journaled in memory: it runs
            await until(lambda: "c-during" in results(box), what="c-during answered")
            ex.receive("proj", command("c-during"))  # redelivered: answered again, not run again
            await until(lambda: len([r for r in box.peek(100) if r.topic.endswith("/result")]) == 3,
                        what="the second answer")

        run_executor(config, box, scenario)
        answered = results(box)
        assert answered["c-before"].status == "failed" and "not run" in answered["c-before"].detail
        assert answered["c-during"].status == "done" and powered_on(sims) == 1
        assert all(r.id < 0 for r in box.peek(100))  # every result held in memory, ready to publish
        assert box.health.status == "full"

        small_disk.free()
        assert box.write()  # the next write that works puts the held results and the journal on disk
        states = dict(box.read(lambda db: db.execute("SELECT id, state FROM commands").fetchall(), []))
        assert states == {"c-before": "failed", "c-during": "done"}
        assert len([r for r in box.peek(100) if r.id > 0]) == 3
        box.close()


# ---------------------------------------------------------------- an unusable data_dir


def _agent_once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "programs.cli", "agent", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("campus: error: data_dir "), lines
    return lines[0]


def test_a_file_where_the_data_dir_should_be_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    cfg = write_gateway_config(tmp_path / "gw1.yaml", "mqtt://127.0.0.1:1", data_dir=str(tmp_path / "data"))
    assert _one_error_line(_agent_once(cfg)).endswith(f"{tmp_path / 'data'}: exists and is not a directory")
    cfg = write_gateway_config(tmp_path / "gw1.yaml", "mqtt://127.0.0.1:1", data_dir=str(tmp_path / "data" / "x"))
    assert str(tmp_path / "data" / "x") in _one_error_line(_agent_once(cfg))


def test_a_read_only_data_dir_is_one_line_and_exit_2(tmp_path: Path) -> None:
    why = SmallFilesystem.available()
    if why:
        pytest.skip(why)
    disk = SmallFilesystem(tmp_path / "ro", read_only=True)
    disk.mount()
    try:
        cfg = write_gateway_config(tmp_path / "gw1.yaml", "mqtt://127.0.0.1:1", data_dir=str(disk.path))
        line = _one_error_line(_agent_once(cfg))
        assert str(disk.path) in line and "Read-only file system" in line
    finally:
        disk.umount()


def test_a_data_dir_the_agent_may_not_write_is_one_line_and_exit_2(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere: the read-only mount test covers this as root")
    (tmp_path / "locked").mkdir(mode=0o500)
    cfg = write_gateway_config(tmp_path / "gw1.yaml", "mqtt://127.0.0.1:1", data_dir=str(tmp_path / "locked"))
    assert "Permission denied" in _one_error_line(_agent_once(cfg))


# ---------------------------------------------------------------- the whole path


@pytest.mark.slow
def test_a_damaged_outbox_at_start_is_replaced_and_counted_afresh_at_central(tmp_path: Path,
                                                                             mosquitto: Mosquitto) -> None:
    room = Classroom(tmp_path, mosquitto.url, poll_interval=0.05).start()
    try:
        room.wait_stored_at_least(30)
        old = room.quiesce_and_account()
        room.agent.stop()
        db = tmp_path / f"{room.gateway}-data" / "agent.db"
        with open(db, "r+b") as f:  # a power cut on the SD card: garbage over the file's first pages
            f.write(os.urandom(8192))
        room.restart_with_a_new_outbox(old)  # seq 1 of the new instance is its `outbox_replaced` event
        gw = room.view.gateway(room.gateway)
        assert gw["outbox_replaced"]["kept_as"].startswith("agent.db.corrupt-")
        assert gw["outbox_replaced"]["reason"].startswith("the outbox file is damaged")
        events = room.view.ledger.events(gateway=room.gateway, type_="outbox_replaced")
        assert len(events) == 1 and events[0]["seq"] == 1
        assert (db.parent / gw["outbox_replaced"]["kept_as"]).exists()
        assert room.agent.alive() and "Traceback" not in room.agent.output()
    finally:
        room.stop()


@pytest.mark.slow
def test_a_full_disk_keeps_devices_ok_counts_every_reading_and_recovers(tmp_path: Path, mosquitto: Mosquitto,
                                                                        small_disk: SmallFilesystem) -> None:
    port = free_port()
    room = Classroom(tmp_path, mosquitto.url, poll_interval=0.05, devices=[env_device(port, seed=7)],
                     data_dir=small_disk.path)
    with SimulatorsInThread(room.config) as sims:
        room.start(sim=False)
        try:
            room.wait_stored_at_least(20)
            small_disk.fill()

            def central_says() -> dict:
                gw = room.view.gateway(room.gateway) or {}
                state = sql(room.view.ledger, "SELECT state FROM gateways WHERE id=?", (room.gateway,)).fetchone()
                return {**gw, "config_version": json.loads(state[0]).get("config_version") if state else None}

            wait_until(lambda: central_says().get("storage", {}).get("status") == "full"
                       and central_says()["outbox"].get("not_stored", 0) >= 20, 60,
                       message="central told of the full disk, 20 readings not stored")
            state = room.view.ledger.gateway_devices(room.gateway)
            assert [d["status"] for d in state] == ["ok"]  # the sensor is fine: the disk is the problem
            # A config push still applies (it cannot be saved; the broker keeps it for the next connect).
            publish_retained(mosquitto, contract.config_topic("s1", room.gateway),
                             json.dumps({"version": 1, "devices": [env_device(port, seed=7)]}).encode())
            wait_until(lambda: central_says().get("config_version") == 1, 30, message="config v1 applied")
            assert not (small_disk.path / "pushed-config.json").exists()
            small_disk.free()
            wait_until(lambda: central_says()["storage"]["status"] == "ok", 60, message="storage ok again")
            resumed = central_says()["outbox"]["last_seq"]
            wait_until(lambda: room.stored_count() >= resumed + 20, 60, message="20 more readings stored")

            # Freeze the count: the sensor stops answering with data; every answer it gave before is in
            # the agent's books once the agent has reported the fault.
            server = sims["env"][0]  # (the Modbus server, unit)
            sims.call(lambda: server.faults.__setitem__(1, "exception"))
            wait_until(lambda: [d["status"] for d in room.view.ledger.gateway_devices(room.gateway)] == ["fault"],
                       30, message="the sensor's fault reported")
            served = sims.call(lambda: server.served)
            wait_until(lambda: central_says()["outbox"]["pending"] == 0
                       and room.stored_count() == central_says()["outbox"]["last_seq"], 60, interval=0.2,
                       message="everything stored")
            figures = central_says()["outbox"]
            assert room.view.seqs(room.gateway) == list(range(1, figures["last_seq"] + 1))  # no gap, no double
            assert room.view.points.count(room.gateway) == METRICS_PER_SAMPLE * figures["last_seq"]
            assert figures["dropped"] == figures["not_stored"] > 0
            # Every message the agent made is stored or counted: the sensor's readings, and the config_applied
            # event of the push, which the full disk kept out too.
            assert served + 1 == figures["last_seq"] + figures["not_stored"]
            log = room.agent.output()
            assert log.count("storage full in") == 1 and "writable again" in log and "Traceback" not in log
        finally:
            room.stop()
