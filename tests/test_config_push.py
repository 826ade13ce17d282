"""Config push end to end: the web app publishes a gateway's device list, the agent applies it.

Real Mosquitto, `campus sim` + `campus agent` + `campus ingest` as processes
(tests/e2e.py Classroom), and the web app on the same central database. The
push adds a device (its telemetry arrives, `state.config_version` says the
version), survives an agent restart, removes a device; an invalid push is
refused (one error, a `config_rejected` event) while the devices keep
reporting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from campus import contract
from campus.contract import Command, CommandResult
from campus.errors import ConfigError
from campus.net import free_port
from dashboards import WebConfig, close_app, create_app
from dashboards.context import central
from device_profiles.config import GatewayConfig, load_gateway_config
from edge_agent.agent import Agent
from edge_agent.config_push import save_pushed, validate_pushed_config
from tests.e2e import Classroom, env_device, write_gateway_config
from tests.servers import CampusProcess, wait_until
from tests.stores import sql
from tests.test_provisioning import login, post

pytestmark = pytest.mark.slow


def gateway_state(room: Classroom) -> dict:
    row = sql(room.view.ledger, "SELECT state FROM gateways WHERE id = 'gw1'").fetchone()
    return json.loads(row[0]) if row else {}


def newest(room: Classroom, device: str) -> float:
    row = sql(room.view.ledger, "SELECT MAX(ts) FROM latest WHERE gateway = 'gw1' AND device = ?",
                                      (device,)).fetchone()
    return row[0] or 0.0


def keeps_reporting(room: Classroom, *devices: str) -> None:
    """Each device's newest reading moves past what it is now."""
    marks = {d: newest(room, d) for d in devices}
    wait_until(lambda: all(newest(room, d) > marks[d] for d in devices), 30,
               message=f"fresh telemetry from {', '.join(devices)}")


def publish_retained(url_port: int, topic: str, payload: bytes) -> None:
    done = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-central")
    c.on_publish = lambda *a: done.set()
    c.connect("127.0.0.1", url_port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=True)
        assert done.wait(10)
    finally:
        c.loop_stop()
        c.disconnect()


def test_push_adds_a_device_refuses_a_bad_list_and_survives_a_restart(tmp_path: Path, mosquitto) -> None:
    room = Classroom(tmp_path, mosquitto.url)
    # A second simulated sensor, not in the gateway's config file: the push adds it.
    port2 = free_port()
    extra = write_gateway_config(tmp_path / "extra.yaml", mosquitto.url, gateway="extra",
                                 devices=[env_device(port2, "env2", seed=3)])
    extra_sim = CampusProcess(["sim", "--config", str(extra)], tmp_path / "extra-sim.log")
    app = None
    try:
        room.start()
        extra_sim.start()
        extra_sim.wait_listening(port2)
        wait_until(lambda: room.view.latest("gw1", "env"), 30, message="first telemetry from env")
        wait_until(lambda: gateway_state(room).get("online"), 30, message="gw1 online")
        assert gateway_state(room)["config_version"] is None  # running its config file's list

        # IT staff register the room's gateway and its two devices, then push.
        app = create_app(WebConfig(store_url=f"sqlite:///{room.db}", db_url=str(room.db), mqtt_url=mosquitto.url))
        reg = central(app).registry
        reg.register_gateway("gw1", "s1", "101")
        reg.add_device("gw1", "env", "env-6in1-modbus", {"host": "127.0.0.1", "port": room.port, "unit": 1})
        reg.add_device("gw1", "env2", "env-6in1-modbus", {"host": "127.0.0.1", "port": port2, "unit": 1})
        reg.add_user("boss", "boss-password", "admin")
        wanted = reg.gateway_info("gw1")["config_version"]
        assert central(app).commands.connected.wait(10)
        admin = login(app, "boss", "boss-password")
        assert post(admin, "/provisioning/gateways/gw1/push").status_code == 302

        wait_until(lambda: gateway_state(room).get("config_version") == wanted, 30, message=f"v{wanted} applied")
        wait_until(lambda: room.view.latest("gw1", "env2").get("co2_ppm"), 30, message="telemetry from env2")
        keeps_reporting(room, "env", "env2")
        assert set(gateway_state(room)["devices"]) == {"env", "env2"}
        saved = json.loads((tmp_path / "gw1-data" / "pushed-config.json").read_text())
        assert saved["version"] == wanted
        row = re.search(r'<tr data-gateway="gw1">(.*?)</tr>', admin.get("/provisioning/gateways")
                        .get_data(as_text=True), re.S).group(1)
        assert "in sync" in row and f"v{wanted}" in row
        wait_until(lambda: room.view.ledger.events(gateway="gw1", type_="config_applied"), 30,
                   message="config_applied event")

        # An invalid list (a port no device can have) is refused; the old devices keep reporting.
        bad = {"version": wanted + 1, "devices": [
            {"id": "env", "profile": "env-6in1-modbus", "address": {"host": "127.0.0.1", "port": room.port}},
            {"id": "env3", "profile": "env-6in1-modbus", "address": {"host": "127.0.0.1", "port": 70000}}]}
        publish_retained(mosquitto.port, contract.config_topic("s1", "gw1"), json.dumps(bad).encode())
        rejected = wait_until(lambda: room.view.ledger.events(gateway="gw1", type_="config_rejected"), 30,
                              message="config_rejected event")
        assert rejected[0]["data"]["version"] == wanted + 1
        assert rejected[0]["data"]["error"] == "field devices.1.address: port must be 1-65535, got 70000"
        keeps_reporting(room, "env", "env2")
        assert gateway_state(room)["config_version"] == wanted
        assert set(gateway_state(room)["devices"]) == {"env", "env2"}
        assert room.agent.output().count(f"pushed config v{wanted + 1} refused") == 1
        page = admin.get("/provisioning/gateways/gw1").get_data(as_text=True)
        assert "in sync" in page  # the registry still wants v{wanted}, which runs

        # A restart keeps the applied list (and refuses the retained bad one again).
        room.restart_agent()
        wait_until(lambda: "using the device list v" in room.agent.output(), 30, message="agent restarted")
        keeps_reporting(room, "env", "env2")
        assert gateway_state(room)["config_version"] == wanted

        # Removing a device in the registry and pushing stops it on the gateway.
        reg.remove_device("gw1", "env")
        wanted2 = reg.gateway_info("gw1")["config_version"]
        assert post(admin, "/provisioning/gateways/gw1/push").status_code == 302
        wait_until(lambda: gateway_state(room).get("config_version") == wanted2, 30, message=f"v{wanted2} applied")
        assert set(gateway_state(room)["devices"]) == {"env2"}
        keeps_reporting(room, "env2")
        gone = newest(room, "env")
        keeps_reporting(room, "env2")
        assert newest(room, "env") == gone
    finally:
        if app is not None:
            close_app(app)
        extra_sim.stop()
        room.stop()


# ---------------------------------------------------------------- validation, in process


def base_config(tmp_path: Path) -> GatewayConfig:
    return GatewayConfig(school="s1", gateway="gw1", room="101", data_dir=str(tmp_path))


@pytest.mark.parametrize(("payload", "message"), [
    (b"not json", "payload is not JSON"),
    (b"[1, 2]", "payload must be a JSON object"),
    (b'{"version": 0, "devices": []}', "field version: must be a whole number >= 1, got 0"),
    (b'{"version": true, "devices": []}', "field version: must be a whole number >= 1, got True"),
    (b'{"version": 2}', "field devices: must be a list"),
    (b'{"version": 2, "devices": [{"id": "x", "profile": "nope"}]}', "field devices.0.profile: profile 'nope'"),
    (b'{"version": 2, "devices": [{"id": "a b", "profile": "env-6in1-modbus", "address": {"host": "h"}}]}',
     "field devices.0.id: device id 'a b' is not a valid id"),
    (b'{"version": 3, "devices": [{"id": "e", "profile": "env-6in1-modbus", "address": {"host": "h"}},'
     b' {"id": "e", "profile": "env-6in1-modbus", "address": {"host": "h"}}]}', "device id 'e' appears twice"),
    (b'{"version": 2, "devices": [{"id": "e", "profile": "env-6in1-modbus", "address": {"host": "h"}, "x": 1}]}',
     "field devices.0.x: not a field here"),
])
def test_invalid_pushed_lists_are_refused_with_the_field(tmp_path: Path, payload: bytes, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_pushed_config(base_config(tmp_path), payload)
    assert message in str(err.value)


def test_a_valid_list_keeps_the_file_settings(tmp_path: Path) -> None:
    base = base_config(tmp_path)
    version, config = validate_pushed_config(base, json.dumps({"version": 7, "devices": [
        {"id": "env", "profile": "env-6in1-modbus", "address": {"host": "10.0.0.5"}, "options": {}}]}))
    assert version == 7
    assert [d.id for d in config.devices] == ["env"]
    assert (config.school, config.gateway, config.mqtt, config.data_path) == (base.school, base.gateway, base.mqtt,
                                                                              base.data_path)


def test_a_restart_answers_commands_of_devices_no_longer_configured(tmp_path: Path) -> None:
    """A command journaled for a device the applied list no longer has is answered, not left waiting
    (before, `recover` would have failed on the unknown device)."""
    env = env_device(free_port(), "env")
    proj = {"id": "proj", "profile": "projector-pjlink", "address": {"host": "127.0.0.1", "port": free_port()}}
    path = write_gateway_config(tmp_path / "gw1.yaml", "mqtt://127.0.0.1:1", devices=[env, proj])
    config = load_gateway_config(path)

    async def main() -> None:
        first = Agent(config)
        first.commands.receive("proj", Command("c1", "power_on", {}, time.time() + 600).encode())
        await first.close()
        save_pushed(config, json.dumps({"version": 5, "devices": [env]}).encode())

        second = Agent(config)
        assert second.config_version == 5 and set(second.drivers) == {"env"}
        task = asyncio.create_task(second.run())
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = second.commands.state_of("c1")
                if row is None or row[0] != "queued":
                    break
                await asyncio.sleep(0.01)
            assert row == ("rejected", "the device is no longer in this gateway's config")
            results = [CommandResult.decode(r.payload) for r in second.outbox.peek(100) if r.topic.endswith("/result")]
            assert [(r.id, r.status) for r in results] == [("c1", "rejected")]
            assert second.state().config_version == 5
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())
