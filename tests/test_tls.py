"""Encrypted, authenticated transport end to end: the production broker config with
certificates from broker_config/make-ca.sh, real agent and ingest processes over
mqtts://, and the ways it goes wrong (wrong CA, expired certificate, wrong password):
each is one clear log line, the agent keeps its outbox, and once the broker is fixed
everything arrives exactly once.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from campus.errors import CampusError
from campus.mqtt import explain_connect_error, tls_context
from campus.urls import parse_mqtt_url
from central import broker_config
from dashboards import WebConfig, close_app, create_app
from dashboards.context import central
from tests.servers import wait_until
from tests.test_faults import assert_exactly_once
from tests.tlsbrokers import ProductionMosquitto, SplitClassroom, make_ca, password, write_passwd

pytestmark = pytest.mark.slow

# The product's own rules (central/broker_config.py): ingest reads every school and writes acknowledgements
# and its presence; the gateway stays under its own prefix and reads central's presence.
ACL = "".join(f"user {user}\n" + "".join(f"topic {access} {topic}\n" for access, topic in rules) + "\n"
              for user, rules in (("ingest", broker_config.service_rules("ingest")),
                                  ("gw1", broker_config.gateway_rules("s1", "gw1"))))


@dataclass
class Pki:
    good: Path   # our CA: ca.crt, server.crt (127.0.0.1), expired.crt, client-gw1.crt
    other: Path  # somebody else's CA with its own server certificate


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    good = make_ca(root / "good", "--client", "gw1")
    make_ca(good, "--no-server", "--client", "someone")
    make_ca(good, "--server", "expired", "--expired")
    other = make_ca(root / "other", "--ca-cn", "not our CA")
    return Pki(good, other)


@dataclass
class Site:
    broker: ProductionMosquitto
    passwords: dict[str, str]
    passwd: Path
    acl: Path


def site(tmp: Path, pki: Pki, *, cert: str = "server", ca_dir: Path | None = None, extra_conf: str = "") -> Site:
    passwords = {"gw1": password(), "ingest": password()}
    passwd = write_passwd(tmp / "passwd", passwords)
    acl = tmp / "acl"
    acl.write_text(ACL)
    certs = ca_dir or pki.good
    broker = ProductionMosquitto(tmp / "broker", cert=certs / f"{cert}.crt", key=certs / f"{cert}.key",
                                 ca=pki.good / "ca.crt", passwd=passwd, acl=acl, extra_conf=extra_conf)
    return Site(broker, passwords, passwd, acl)


async def _connect(url: str) -> str:
    """Connect once in this process; 'ok' or the one-line explanation of the failure."""
    u = parse_mqtt_url(url)
    try:
        async with aiomqtt.Client(u.host, u.port, username=u.username, password=u.password,
                                  tls_context=tls_context(u), timeout=5):
            return "ok"
    except aiomqtt.MqttError as exc:
        return explain_connect_error(exc)


def connect_once(url: str) -> str:
    return asyncio.run(_connect(url))


# ---------------------------------------------------------------- certificates


def test_make_ca_issues_what_the_broker_and_clients_need(pki: Pki) -> None:
    ca = pki.good / "ca.crt"

    def verify(cert: str, ca_file: Path = ca) -> str:
        return subprocess.run(["openssl", "verify", "-CAfile", str(ca_file), str(pki.good / cert)],
                              capture_output=True, text=True).stdout + ""

    assert verify("server.crt").strip().endswith("OK")
    assert verify("client-gw1.crt").strip().endswith("OK")
    assert "OK" not in verify("server.crt", pki.other / "ca.crt")
    text = subprocess.run(["openssl", "x509", "-in", str(pki.good / "server.crt"), "-noout", "-ext",
                           "subjectAltName,extendedKeyUsage"], capture_output=True, text=True, check=True).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text and "TLS Web Server Authentication" in text
    expired = subprocess.run(["openssl", "x509", "-in", str(pki.good / "expired.crt"), "-noout", "-checkend", "0"],
                             capture_output=True, text=True)
    assert expired.returncode == 1 and "will expire" in expired.stdout
    assert (pki.good / "server.key").stat().st_mode & 0o077 == 0, "private keys must be private"
    # The CA keeps a record of everything it issued (server, 2 clients, expired).
    assert len((pki.good / "index.txt").read_text().splitlines()) == 4
    # Python's own verification (what the agent and ingest use) accepts the chain.
    ctx = ssl.create_default_context(cafile=str(ca))
    assert ctx.get_ca_certs()[0]["subject"] == ((("commonName", "campus-iot private CA"),),)


def test_make_ca_refuses_bad_options(tmp_path: Path) -> None:
    for args in (["--days", "0"], ["--no-loopback"], ["--bogus"], ["--client", "a/b"]):
        result = subprocess.run(["bash", "broker_config/make-ca.sh", "-o", str(tmp_path / "x"), *args],
                                capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        assert result.returncode == 2 and result.stderr.startswith("make-ca.sh: "), (args, result.stderr)


# ---------------------------------------------------------------- the good path


@pytest.mark.parametrize("login", ["password", "client_certificate"])
def test_telemetry_over_tls_arrives_exactly_once(tmp_path: Path, pki: Pki, login: str) -> None:
    client_cert = login == "client_certificate"
    # The TLS listener is the last one in mosquitto.conf: a later line overrides its setting.
    s = site(tmp_path, pki, extra_conf="require_certificate true\n" if client_cert else "")
    ca = pki.good / "ca.crt"
    cert = {"cert": pki.good / "client-gw1.crt", "key": pki.good / "client-gw1.key"} if client_cert else {}
    agent_url = s.broker.url_for("gw1", s.passwords["gw1"], ca, **cert)
    ingest_url = s.broker.url_for("ingest", s.passwords["ingest"], ca, **cert)
    s.broker.start()
    room: SplitClassroom | None = None
    try:
        # Who may not get in: no account, a wrong account, plain MQTT from the network side.
        assert connect_once(f"mqtts://127.0.0.1:{s.broker.tls_port}?ca={ca}") != "ok"
        assert connect_once(s.broker.url_for("gw1", "guess", ca, **cert)).startswith(
            "broker refused: bad user name or password")
        if client_cert:
            assert connect_once(s.broker.url_for("gw1", s.passwords["gw1"], ca)) != "ok"
        room = SplitClassroom(tmp_path, agent_url, ingest_url).start()
        room.wait_stored_at_least(20)
        figures = room.quiesce_and_account()
        assert figures["dropped"] == 0
        assert_exactly_once(room, figures)
        # The audit log names the account of every session.
        assert "u'gw1'" in s.broker.audit() and "u'ingest'" in s.broker.audit()
        assert "Traceback" not in room.agent.output() + room.ingest.output()
    finally:
        if room is not None:
            room.stop()
        s.broker.stop()


def test_web_sends_commands_over_tls_and_refuses_an_untrusted_broker(tmp_path: Path, pki: Pki) -> None:
    s = site(tmp_path, pki)
    write_passwd(s.passwd, {**s.passwords, "web": "web-secret"})
    s.broker.start()
    db = str(tmp_path / "central.db")
    try:
        app = create_app(WebConfig(store_url=f"sqlite:///{db}", db_url=db,
                                   mqtt_url=s.broker.url_for("web", "web-secret", pki.good / "ca.crt")))
        try:
            assert central(app).commands.connected.wait(10), "web did not connect over TLS"
        finally:
            close_app(app)
        with pytest.raises(CampusError, match=r"TLS: server certificate not trusted \(check \?ca=\)"):
            create_app(WebConfig(store_url=f"sqlite:///{db}", db_url=db,
                                 mqtt_url=s.broker.url_for("web", "web-secret", pki.other / "ca.crt")))
    finally:
        s.broker.stop()


# ---------------------------------------------------------------- failures

FAILURES = {
    "wrong_ca": "TLS: server certificate not trusted (check ?ca=)",
    "expired": "TLS: the broker's certificate has expired",
    "wrong_password": "broker refused: bad user name or password",
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_agent_names_the_failure_keeps_its_outbox_and_recovers(tmp_path: Path, pki: Pki, failure: str) -> None:
    if failure == "wrong_ca":
        s = site(tmp_path, pki, ca_dir=pki.other)       # the broker shows another CA's certificate
    elif failure == "expired":
        s = site(tmp_path, pki, cert="expired")
    else:
        s = site(tmp_path, pki)
        write_passwd(s.passwd, {**s.passwords, "gw1": "not-" + s.passwords["gw1"]})
    ca = pki.good / "ca.crt"
    # Ingest sits on the broker's host and uses the loopback listener, so it is
    # subscribed throughout; only the agent's TLS link is broken.
    room = SplitClassroom(tmp_path, s.broker.url_for("gw1", s.passwords["gw1"], ca),
                          s.broker.url_for("ingest", s.passwords["ingest"]))
    s.broker.start()
    try:
        room.start()
        expected = FAILURES[failure]
        wait_until(lambda: expected in room.agent.output(), 30, message=f"the agent to log {expected!r}")
        line = next(ln for ln in room.agent.output().splitlines() if expected in ln)
        assert "MQTT link to mqtts://gw1@127.0.0.1" in line and "retrying in" in line, line
        assert s.passwords["gw1"] not in room.agent.output(), "the password must never be logged"
        # The agent goes on sampling into its outbox; nothing reaches central.
        before = room.agent_outbox()["pending"]
        wait_until(lambda: room.agent_outbox()["pending"] >= before + 15, 30, message="the outbox to grow")
        assert room.stored_count() == 0 and room.agent.alive()

        # Fix the broker (right certificate, right password) and restart it.
        s.broker.stop()
        write_passwd(s.passwd, s.passwords)
        s.broker.configure(cert=pki.good / "server.crt", key=pki.good / "server.key", ca=ca, passwd=s.passwd,
                           acl=s.acl)
        s.broker.start()
        figures = room.quiesce_and_account(timeout=90)
        assert figures["dropped"] == 0 and figures["last_seq"] >= before + 15
        assert_exactly_once(room, figures)
        assert "Traceback" not in room.agent.output()
    finally:
        room.stop()
        s.broker.stop()


@pytest.mark.parametrize("failure", ["wrong_ca", "expired"])
def test_ingest_with_a_bad_certificate_exits_with_one_line(tmp_path: Path, pki: Pki, failure: str) -> None:
    s = site(tmp_path, pki, ca_dir=pki.other) if failure == "wrong_ca" else site(tmp_path, pki, cert="expired")
    s.broker.start()
    try:
        url = s.broker.url_for("ingest", s.passwords["ingest"], pki.good / "ca.crt")
        result = subprocess.run([sys.executable, "-m", "programs.cli", "ingest", "--mqtt", url, "--store",
                                 f"sqlite:///{tmp_path}/central.db"], capture_output=True, text=True, timeout=60)
    finally:
        s.broker.stop()
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("campus: error: MQTT broker mqtts://ingest@127.0.0.1:"), last
    assert FAILURES[failure] in last
    assert "Traceback" not in result.stderr and s.passwords["ingest"] not in result.stderr
