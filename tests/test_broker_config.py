"""`campus broker-config` against a real Mosquitto started with the generated files.

Two gateways registered in the registry, the CLI writes passwd + ACL + conf,
Mosquitto runs them on an ephemeral port, and clients log in with the
generated credentials: each gateway stays inside its own topic prefix.
Mosquitto drops a denied publish (MQTT 5 answers PUBACK 135; 2.0.11 with
max_queued_messages 0 also closes that connection, so forgeries come from
throw-away connections) and grants a subscription it then filters per
message, so non-delivery is asserted after a positive control message sent
later on the same path has arrived (MQTT keeps the order of one publisher's
messages to one subscriber).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from campus import contract
from central import broker_config
from central.registry import Registry
from tests.servers import MOSQUITTO, Mosquitto, wait_until
from tests.test_provisioning import mosquitto_hash_ok

pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="needs the mosquitto package")

MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"


def campus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "campus.cli", *args], capture_output=True, text=True, timeout=60)


class Client:
    """A paho MQTT client that records CONNACK, PUBACK reason codes and messages."""

    def __init__(self, port: int, username: str | None, password: str | None, client_id: str,
                 protocol: int = paho.MQTTv5) -> None:
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.connack: Any = None
        self.answered = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: dict[int, list[Any]] = {}
        self.pubacks: dict[int, Any] = {}
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.c.on_subscribe = lambda c, u, mid, codes, p: self.subacks.__setitem__(mid, codes)
        self.c.on_publish = lambda c, u, mid, rc, p: self.pubacks.__setitem__(mid, rc)
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        assert self.answered.wait(10), f"{client_id}: no CONNACK"

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason
        self.answered.set()
        if reason.is_failure:
            c.disconnect()  # no reconnect attempts

    @property
    def accepted(self) -> bool:
        return not self.connack.is_failure

    def subscribe(self, *filters: str) -> None:
        _, mid = self.c.subscribe([(f, 1) for f in filters])
        wait_until(lambda: mid in self.subacks, 10, message="SUBACK")

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> Any:
        """Publish QoS 1 and return the PUBACK reason code."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        wait_until(lambda: info.mid in self.pubacks, 10, message=f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def got(self, topic: str) -> list[bytes]:
        return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def registry(tmp_path: Path):
    reg = Registry(f"sqlite:///{tmp_path / 'central.db'}")
    reg.passwords = {gw: reg.register_gateway(gw, "s1", room, "A") for gw, room in (("gw-a", "101"), ("gw-b", "102"))}
    yield reg
    reg.close()


def generate(tmp_path: Path, port: int, *extra: str) -> Path:
    out = tmp_path / "broker"
    result = campus("broker-config", "--db", f"sqlite:///{tmp_path / 'central.db'}", "--out", str(out),
                    "--listen", f"127.0.0.1:{port}", "--persistence-dir", str(tmp_path / "mosquitto"), *extra)
    assert result.returncode == 0, result.stderr
    return out


def start_broker(tmp_path: Path, registry: Registry) -> tuple[Mosquitto, dict[str, str]]:
    broker = Mosquitto(tmp_path / "mosquitto")  # only for its port and process handling
    out = generate(tmp_path, broker.port)
    # The generated conf as it is, plus: run as the test's user (the default drops
    # root to `mosquitto`, which cannot read our tmp dir) and log to the test's file.
    broker.conf.write_text((out / "mosquitto.conf").read_text()
                           + f"\nuser {pwd.getpwuid(os.getuid()).pw_name}\nlog_dest stderr\n")
    broker.start()
    services = dict(line.split(" ", 1) for line in (out / "service-accounts.txt").read_text().splitlines()
                    if line and not line.startswith("#"))
    return broker, services


# ---------------------------------------------------------------- the files


def test_cli_writes_passwd_acl_and_conf(tmp_path: Path, registry: Registry) -> None:
    out = generate(tmp_path, 18830)
    assert {p.name for p in out.iterdir()} == {"passwd", "acl", "mosquitto.conf", "service-accounts.txt"}
    assert stat.S_IMODE((out / "passwd").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "service-accounts.txt").stat().st_mode) == 0o600
    entries = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines()
                   if not line.startswith("#"))
    assert set(entries) == {"gw-s1-gw-a", "gw-s1-gw-b", "ingest", "web"}
    assert mosquitto_hash_ok(entries["gw-s1-gw-a"], registry.passwords["gw-a"])
    services = dict(line.split(" ", 1) for line in (out / "service-accounts.txt").read_text().splitlines()
                    if line and not line.startswith("#"))
    assert mosquitto_hash_ok(entries["ingest"], services["ingest"])

    acl = (out / "acl").read_text()
    block = acl.split("user gw-s1-gw-a\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert block == ["topic write campus/v1/s1/gw-a/state", "topic write campus/v1/s1/gw-a/telemetry/+",
                     "topic write campus/v1/s1/gw-a/event/+", "topic write campus/v1/s1/gw-a/cmd/+/result",
                     "topic read campus/v1/s1/gw-a/cmd/+", "topic read campus/v1/s1/gw-a/config",
                     "topic read campus/v1/s1/gw-a/ack", "topic read campus/v1/ingest/+"]
    # Nothing before the first `user` line: such rules would apply to every client.
    assert not [ln for ln in acl.split("\nuser ", 1)[0].splitlines() if ln.startswith("topic")]
    conf = (out / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and f"password_file {out}/passwd" in conf
    assert f"acl_file {out}/acl" in conf and "listener 18830 127.0.0.1" in conf

    # Again: the service passwords are kept (running services keep working); no temp files left.
    again = generate(tmp_path, 18830)
    assert dict(line.split(" ", 1) for line in (again / "service-accounts.txt").read_text().splitlines()
                if line and not line.startswith("#")) == services
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    missing = campus("broker-config", "--db", f"sqlite:///{tmp_path / 'nope.db'}", "--out", str(out))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"campus: error: no central database at {tmp_path / 'nope.db'}; give --db sqlite:///PATH (or set CAMPUS_DB)"]
    bad = campus("broker-config", "--db", f"sqlite:///{tmp_path / 'central.db'}", "--out", str(out), "--listen", "x:y")
    assert bad.returncode == 2 and "--listen" in bad.stderr


def test_district_mode_adds_a_bridge_account_and_conf_per_school(tmp_path: Path, registry: Registry) -> None:
    registry.register_gateway("gw-z", "s2", "201")
    out = generate(tmp_path, 18830, "--district", "mqtt.district.example:8883", "--district-ca", "/etc/x/ca.crt")
    bridges = out / "bridges"
    assert sorted(p.name for p in bridges.iterdir()) == ["bridge-s1.conf", "bridge-s2.conf"]
    assert stat.S_IMODE(bridges.stat().st_mode) == 0o700
    services = dict(line.split(" ", 1) for line in (out / "service-accounts.txt").read_text().splitlines()
                    if line and not line.startswith("#"))
    entries = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines()
                   if not line.startswith("#"))
    assert {"bridge-s1", "bridge-s2", "ingest", "web"} <= set(entries)
    conf = (bridges / "bridge-s1.conf").read_text()
    assert stat.S_IMODE((bridges / "bridge-s1.conf").stat().st_mode) == 0o600
    assert "{" not in conf and "address mqtt.district.example:8883" in conf and "bridge_cafile /etc/x/ca.crt" in conf
    assert "remote_username bridge-s1\n" in conf and "topic campus/v1/s1/+/cmd/+ in 1" in conf
    assert f"remote_password {services['bridge-s1']}\n" in conf
    assert mosquitto_hash_ok(entries["bridge-s1"], services["bridge-s1"])
    # What the bridge forwards, and nothing of another school (README.md: grant all of it).
    block = (out / "acl").read_text().split("user bridge-s1\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert block == ["topic write campus/v1/s1/+/state", "topic write campus/v1/s1/+/telemetry/+",
                     "topic write campus/v1/s1/+/event/+", "topic write campus/v1/s1/+/cmd/+/result",
                     "topic read campus/v1/s1/+/cmd/+", "topic read campus/v1/s1/+/config",
                     "topic read campus/v1/s1/+/ack", "topic read campus/v1/ingest/+"]
    forwarded = {ln.split()[1] for ln in conf.splitlines() if ln.startswith("topic ")}
    assert forwarded == {topic for _, topic in broker_config.bridge_rules("s1")}

    # Again: the bridges' passwords are kept (running bridges stay connected).
    generate(tmp_path, 18830, "--district", "mqtt.district.example:8883")
    assert f"remote_password {services['bridge-s1']}\n" in (bridges / "bridge-s1.conf").read_text()

    for bad, why in (("8883", "name the host"), ("host:x", "HOST:PORT"), ("host:0", "1-65535")):
        result = campus("broker-config", "--db", f"sqlite:///{tmp_path / 'central.db'}", "--out", str(out),
                        "--district", bad)
        assert result.returncode == 2 and why in result.stderr and "Traceback" not in result.stderr


def test_our_hash_has_the_format_of_mosquitto_passwd(tmp_path: Path) -> None:
    if not Path(MOSQUITTO_PASSWD).exists():
        pytest.skip("needs mosquitto_passwd")
    from central.registry import mosquitto_password_hash

    path = tmp_path / "pw"
    path.write_text("")
    subprocess.run([MOSQUITTO_PASSWD, "-b", str(path), "alice", "s3cret-pass"], check=True, timeout=10)
    theirs = path.read_text().strip().split(":", 1)[1]
    ours = mosquitto_password_hash("s3cret-pass")
    shape = re.compile(r"^\$7\$(\d+)\$([A-Za-z0-9+/]{16})\$([A-Za-z0-9+/]{86}==)$")
    assert shape.match(theirs) and shape.match(ours)
    assert shape.match(theirs).group(1) == shape.match(ours).group(1)  # same iteration count
    assert mosquitto_hash_ok(theirs, "s3cret-pass")  # our reading of the format verifies theirs


# ---------------------------------------------------------------- the real broker


def test_gateways_stay_inside_their_own_prefix(tmp_path: Path, registry: Registry) -> None:
    broker, services = start_broker(tmp_path, registry)
    clients: list[Client] = []

    def client(user: str | None, password: str | None, cid: str, protocol: int = paho.MQTTv5) -> Client:
        c = Client(broker.port, user, password, cid, protocol)
        clients.append(c)
        return c

    try:
        a = client("gw-s1-gw-a", registry.passwords["gw-a"], "agent-s1-gw-a")
        b = client("gw-s1-gw-b", registry.passwords["gw-b"], "agent-s1-gw-b")
        ingest = client("ingest", services["ingest"], "campus-ingest-0")
        web = client("web", services["web"], "campus-web")
        assert a.accepted and b.accepted and ingest.accepted and web.accepted

        # Refused at CONNECT: wrong password, another gateway's user name, anonymous (MQTT 5 and 3.1.1).
        assert not client("gw-s1-gw-a", "wrong-password", "x1").accepted
        assert not client("gw-s1-gw-b", registry.passwords["gw-a"], "x2").accepted
        assert not client(None, None, "x3").accepted
        assert not client(None, None, "x4", paho.MQTTv311).accepted
        assert not client("nobody", "whatever-password", "x5", paho.MQTTv311).accepted

        # Ingest reads through a shared subscription, as several ingest workers do.
        ingest.subscribe(*(contract.share(f, "ingest") for f in contract.ingest_filters()))
        a_tel, b_tel = contract.telemetry_topic("s1", "gw-a", "env"), contract.telemetry_topic("s1", "gw-b", "env")

        # A publishes its own telemetry: delivered.
        assert not a.publish(a_tel, b'{"n": 1}').is_failure
        wait_until(lambda: ingest.got(a_tel), 10, message="A's telemetry at ingest")

        # A under B's prefix: refused (PUBACK 135 "Not authorized") and never delivered. (Mosquitto
        # 2.0.11 with max_queued_messages 0 also closes a client's connection after a denied QoS 1
        # publish, so the forgeries come from separate connections with A's credentials.)
        forger = client("gw-s1-gw-a", registry.passwords["gw-a"], "forger-1")
        rc = forger.publish(b_tel, b'{"forged": true}')
        assert rc.is_failure and rc.value == 135
        forger = client("gw-s1-gw-a", registry.passwords["gw-a"], "forger-2")
        assert forger.publish(contract.state_topic("s1", "gw-b"), b'{"online": false}', retain=True).is_failure
        assert not a.publish(a_tel, b'{"n": 2}').is_failure  # positive control, after the forgery
        wait_until(lambda: len(ingest.got(a_tel)) == 2, 10, message="control message at ingest")
        assert ingest.got(b_tel) == []
        assert ingest.got(contract.state_topic("s1", "gw-b")) == []
        # B itself may publish there.
        assert not b.publish(b_tel, b'{"n": 1}').is_failure
        wait_until(lambda: ingest.got(b_tel), 10, message="B's telemetry at ingest")

        # Commands: each gateway reads its own only, even when it subscribes to everything.
        a.subscribe(contract.agent_cmd_filter("s1", "gw-a"), contract.agent_cmd_filter("s1", "gw-b"), "campus/v1/#")
        b.subscribe(contract.agent_cmd_filter("s1", "gw-b"))
        a_cmd, b_cmd = contract.cmd_topic("s1", "gw-a", "proj"), contract.cmd_topic("s1", "gw-b", "proj")
        assert not web.publish(b_cmd, b'{"id": "for-b"}').is_failure
        assert not web.publish(a_cmd, b'{"id": "for-a"}').is_failure  # control
        wait_until(lambda: b.got(b_cmd), 10, message="B's command at B")
        wait_until(lambda: a.got(a_cmd), 10, message="A's command at A")
        assert a.got(b_cmd) == []
        assert [t for t, _ in a.messages if "/gw-b/" in t] == []

        # Retained config: each gateway reads its own only.
        for gw in ("gw-b", "gw-a"):
            assert not web.publish(contract.config_topic("s1", gw), json.dumps({"version": 2, "devices": []}),
                                   retain=True).is_failure
        a2 = client("gw-s1-gw-a", registry.passwords["gw-a"], "agent-s1-gw-a-2")
        a2.subscribe(contract.config_topic("s1", "gw-b"), contract.config_topic("s1", "gw-a"))
        wait_until(lambda: a2.got(contract.config_topic("s1", "gw-a")), 10, message="A's retained config")
        assert a2.got(contract.config_topic("s1", "gw-b")) == []

        # Services are limited too: ingest cannot command, web cannot forge telemetry.
        assert client("ingest", services["ingest"], "forger-3").publish(a_cmd, b'{"id": "from-ingest"}').is_failure
        assert client("web", services["web"], "forger-4").publish(a_tel, b'{"forged": "web"}').is_failure
        assert not web.publish(a_cmd, b'{"id": "control-2"}').is_failure
        wait_until(lambda: b'{"id": "control-2"}' in a.got(a_cmd), 10, message="second command at A")
        assert b'{"id": "from-ingest"}' not in a.got(a_cmd)
        # Results flow from the gateway to ingest (and the web app may read them).
        web.subscribe(*(topic for access, topic in broker_config.service_rules("web") if access == "read"))
        a_res = contract.cmd_result_topic("s1", "gw-a", "proj")
        assert not a.publish(a_res, b'{"id": "for-a", "status": "done"}').is_failure
        wait_until(lambda: ingest.got(a_res) and web.got(a_res), 10, message="result at ingest and web")
        assert len(ingest.got(a_tel)) == 2  # web's forged telemetry never arrived

        # Central's acknowledgements and presence: ingest writes them, each gateway reads its own ack
        # and every worker's presence; no gateway can forge either (a forged ack would delete its rows).
        a_ack, b_ack = contract.ack_topic("s1", "gw-a"), contract.ack_topic("s1", "gw-b")
        presence = contract.ingest_state_topic("ingest-0")
        a3 = client("gw-s1-gw-a", registry.passwords["gw-a"], "agent-s1-gw-a-3")
        a3.subscribe(a_ack, b_ack, contract.ingest_states_filter())
        assert not ingest.publish(presence, b'{"online": true}', retain=True).is_failure
        assert not ingest.publish(b_ack, b'{"seq": 7}', retain=True).is_failure
        assert not ingest.publish(a_ack, b'{"seq": 5}', retain=True).is_failure
        wait_until(lambda: a3.got(a_ack) and a3.got(presence), 10, message="A's ack and central's presence at A")
        assert a3.got(b_ack) == []
        assert client("gw-s1-gw-b", registry.passwords["gw-b"], "forger-5").publish(a_ack, b'{"seq": 99}').is_failure
        assert client("gw-s1-gw-b", registry.passwords["gw-b"], "forger-6").publish(
            presence, b'{"online": false}', retain=True).is_failure
        assert client("web", services["web"], "forger-7").publish(a_ack, b'{"seq": 98}').is_failure
    finally:
        for c in clients:
            c.close()
        broker.stop()


def test_a_new_gateway_gets_in_after_regenerating_and_reload(tmp_path: Path, registry: Registry) -> None:
    broker, _ = start_broker(tmp_path, registry)
    clients: list[Client] = []
    try:
        password = registry.register_gateway("gw-c", "s1", "103")
        first = Client(broker.port, "gw-s1-gw-c", password, "agent-s1-gw-c")
        clients.append(first)
        assert not first.accepted
        generate(tmp_path, broker.port)
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)  # Mosquitto rereads passwd and acl

        def connects() -> bool:
            c = Client(broker.port, "gw-s1-gw-c", password, "agent-s1-gw-c")
            clients.append(c)
            return c.accepted

        wait_until(connects, 10, interval=0.2, message="gw-c accepted after the reload")
        c = clients[-1]
        c.subscribe(contract.agent_cmd_filter("s1", "gw-c"))
        assert not c.publish(contract.state_topic("s1", "gw-c"), b'{"online": true}', retain=True).is_failure
        assert c.publish(contract.state_topic("s1", "gw-a"), b'{"online": true}').is_failure
    finally:
        for c in clients:
            c.close()
        broker.stop()
