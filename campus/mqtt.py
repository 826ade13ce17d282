"""Building MQTT clients from an `MqttUrl`, the same way for every program.

The agent uses aiomqtt (asyncio); the web app paho-mqtt's threaded client;
ingest its own subscriber (central/subscriber.py). All get TLS, credentials,
protocol version and `no_delay` here. It is also the one adapter that touches the libraries'
private attributes (at the end, marked), so an upgrade of aiomqtt or paho-mqtt has one place to check.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import TYPE_CHECKING

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from campus.errors import ConfigError
from campus.urls import MqttUrl

if TYPE_CHECKING:  # the agent's library; the threaded programs need not import it
    import aiomqtt

# X.509 verify codes (OpenSSL's X509_V_ERR_*) that mean "not signed by a CA we trust".
_UNTRUSTED = {2, 18, 19, 20, 21}
_EXPIRED = 10
_NOT_YET_VALID = 9
_WRONG_HOST = {62, 64}  # hostname mismatch, IP address mismatch
# CONNACK reasons for a refused login: 134 bad user name or password, 135 not
# authorized (what Mosquitto 2 answers for a wrong password, and with the
# dynamic-security plugin for a client id the account is not bound to); paho
# maps the MQTT 3.1.1 return codes 4 and 5 to these.
_BAD_LOGIN = {134, 135}


def tls_context(url: MqttUrl) -> ssl.SSLContext | None:
    if not url.tls:
        return None
    try:
        ctx = ssl.create_default_context(cafile=url.ca_file)
        if url.cert_file:
            ctx.load_cert_chain(url.cert_file, url.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{url}: cannot load TLS files ({exc})") from None
    return ctx


def explain_connect_error(exc: BaseException) -> str:
    """One line saying why connecting to the broker failed: a bad TLS certificate
    or a refused login named as such, anything else as it was raised.

    Takes the exception paho raised, or aiomqtt's `MqttError` (which keeps paho's
    exception as its context and the CONNACK reason as `rc`).
    """
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in chain:
        if isinstance(err, ssl.SSLCertVerificationError):
            code = err.verify_code
            if code == _EXPIRED:
                return "TLS: the broker's certificate has expired (renew it)"
            if code == _NOT_YET_VALID:
                return "TLS: the broker's certificate is not valid yet (check the clocks)"
            if code in _UNTRUSTED:
                return "TLS: server certificate not trusted (check ?ca=)"
            if code in _WRONG_HOST:
                return f"TLS: server certificate does not name this host ({err.verify_message})"
            return f"TLS: server certificate rejected: {err.verify_message}"
        if isinstance(err, ssl.SSLError):
            return f"TLS handshake failed: {err.reason or err}"
    rc = getattr(exc, "rc", None)
    if isinstance(rc, ReasonCode) and rc.packetType == PacketTypes.CONNACK and rc.value in _BAD_LOGIN:
        return (f"broker refused: bad user name or password, or a client id this account may not use "
                f"(broker said: {rc})")
    return str(exc)


def no_delay(sock: socket.socket | None) -> None:
    """Send small packets at once (TCP_NODELAY). An agent acks a command and publishes its result
    right after; with Nagle's algorithm the result waited for the broker's delayed ACK of the
    first packet, 40 ms on Linux, in every command's round trip (bench/command_latency.py)."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def paho_protocol(url: MqttUrl) -> paho.MQTTProtocolVersion:
    return paho.MQTTv5 if url.protocol == "5" else paho.MQTTv311


def paho_client(url: MqttUrl, client_id: str, *, manual_ack: bool = False) -> paho.Client:
    """A paho client configured (not yet connected) for `url`."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho_protocol(url),
                         clean_session=None if url.protocol == "5" else False, manual_ack=manual_ack)
    if url.username:
        client.username_pw_set(url.username, url.password)
    ctx = tls_context(url)
    if ctx is not None:
        client.tls_set_context(ctx)
    return client


# ---------------------------------------------------------------- the one adapter to private parts
# Everything below reaches into attributes the MQTT libraries keep private, because they offer no public
# way to do it; nothing else in the project may (tests/test_layers.py checks). Checked against aiomqtt
# 2.5.1 and paho-mqtt 2.2.0 (constraints.txt); an upgrade of either re-reads these four functions first.
# aiomqtt keeps the paho client it drives as `Client._client` and exposes neither paho's manual-ack switch,
# its `ack()`, nor its socket.


def _paho_of(client: aiomqtt.Client) -> paho.Client:
    return client._client  # aiomqtt 2.x: the paho client it wraps


def manual_acks(client: aiomqtt.Client) -> None:
    """Acknowledge received messages only when `ack` is called (the agent acks a command once it is
    journaled), and send small packets at once (`no_delay`). Call right after connecting."""
    paho_client = _paho_of(client)
    paho_client.manual_ack_set(True)
    no_delay(paho_client.socket())


def ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    """Acknowledge one received QoS 1/2 message (after `manual_acks`); nothing for QoS 0."""
    if message.qos > 0:
        _paho_of(client).ack(message.mid, message.qos)


def close_wakeup_sockets(client: paho.Client) -> None:
    """Close the socket pair paho 2.x opens to wake its loop thread: it closes them only when the
    client is garbage-collected (Client.__del__), so a stopped service would keep two sockets open."""
    client._reset_sockets()
