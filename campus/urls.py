"""Parsing of the MQTT and store URLs that every command takes.

One parser for each, so `campus agent`, `campus ingest`, `campus web` and
`campus demo` accept exactly the same spellings and give the same errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from campus.errors import ConfigError


@dataclass(frozen=True)
class MqttUrl:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    # MQTT protocol: "5" (default; shared subscriptions) or "3.1.1" (amqtt).
    protocol: str = "5"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __str__(self) -> str:  # never print the password
        auth = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"


# user:password@ up to the last "@": a password with an unescaped "/" or "@" is still hidden (at worst a
# little more than the password is).
_PASSWORD = re.compile(r"(://[^/?#@:]*:).*@")
_TOKEN = re.compile(r"([?&](?:token|password)=)[^&#]*", re.IGNORECASE)


def redacted(url: str) -> str:
    """`url` with its password and token replaced by `***`: what errors and logs may show of it.
    Works on text, not on a parse, so a URL too broken to parse is redacted too."""
    return _TOKEN.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))


def _split(url: str, what: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018 - parses (and may reject) the host part
    except ValueError as exc:
        raise ConfigError(f"{what} URL {redacted(url)!r}: {exc}") from None
    return parts


def _port_and_options(url: str, what: str, parts: SplitResult, default_port: int,
                      known: set[str]) -> tuple[int, dict[str, str]]:
    """The port and the query options of a server URL, refusing a missing host and options not in `known`."""
    if not parts.hostname:
        raise ConfigError(f"{what} URL {redacted(url)!r}: no host")
    try:
        port = parts.port or default_port
    except ValueError:
        raise ConfigError(f"{what} URL {redacted(url)!r}: port is not a number from 1 to 65535") from None
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(options) - known
    if unknown:
        raise ConfigError(f"{what} URL {redacted(url)!r}: unknown option(s) {', '.join(sorted(unknown))}"
                          + (f" (known: {', '.join(sorted(known))})" if known else ""))
    return port, options


def parse_mqtt_url(url: str) -> MqttUrl:
    """`mqtt://[user:pass@]host:port[?protocol=3.1.1]`, or `mqtts://…?ca=FILE`."""
    parts = _split(url, "MQTT")
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"MQTT URL {redacted(url)!r}: scheme must be mqtt:// or mqtts://")
    port, query = _port_and_options(url, "MQTT", parts, 8883 if parts.scheme == "mqtts" else 1883,
                                    {"protocol", "ca", "cert", "key"})
    protocol = query.pop("protocol", "5")
    if protocol not in ("5", "3.1.1"):
        raise ConfigError(f"MQTT URL {redacted(url)!r}: protocol must be 5 or 3.1.1")
    return MqttUrl(
        host=parts.hostname, port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "mqtts", protocol=protocol,
        ca_file=query.get("ca"), cert_file=query.get("cert"), key_file=query.get("key"))


@dataclass(frozen=True)
class StoreUrl:
    scheme: str  # sqlite | victoriametrics | influxdb
    path: str = ""
    host: str = ""
    port: int = 0
    options: dict[str, str] = field(default_factory=dict)


def parse_store_url(url: str) -> StoreUrl:
    """`sqlite:///PATH`, `victoriametrics://host:port`, `influxdb://host:port?bucket=B[&org=O][&token=T]`."""
    parts = _split(url, "store")
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path or parts.path == "/":
            raise ConfigError(f"store URL {redacted(url)!r}: write sqlite:///relative/path.db or sqlite:////abs/path.db")
        return StoreUrl("sqlite", path=parts.path[1:])
    if parts.scheme in ("victoriametrics", "influxdb"):
        # InfluxDB 2.x needs all three; 3.x a token and the database as `bucket`; 1.x the
        # database as `bucket` and, with authentication on, `token=USER:PASSWORD`.
        port, options = _port_and_options(url, "store", parts, 8428 if parts.scheme == "victoriametrics" else 8086,
                                          {"org", "bucket", "token"} if parts.scheme == "influxdb" else set())
        if parts.scheme == "influxdb" and not options.get("bucket"):
            raise ConfigError(f"store URL {redacted(url)!r}: missing bucket (the InfluxDB 2.x bucket, or 1.x/3.x database)")
        return StoreUrl(parts.scheme, host=parts.hostname, port=port, options=options)
    raise ConfigError(f"store URL {redacted(url)!r}: scheme must be sqlite://, victoriametrics:// or influxdb://")
