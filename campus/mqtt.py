"""Building MQTT clients from an `MqttUrl`, the same way for every program.

The agent uses aiomqtt (asyncio); ingest and the web app use paho-mqtt's
threaded client. Both get TLS, credentials and protocol version here.
"""

from __future__ import annotations

import ssl

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from campus.errors import ConfigError
from campus.urls import MqttUrl


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
