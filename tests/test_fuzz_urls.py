"""Fuzzing the MQTT and store URL parsers: arbitrary text and URLs built from hostile parts.

Inputs: arbitrary text, and URLs assembled from schemes, userinfo, hosts
(brackets, IPv6, full-width and NFKC-decomposing characters), ports (out of
range, signs, junk) and query options. Property: `parse_mqtt_url` and
`parse_store_url` raise only `ConfigError`, and what they return is usable
(a host, a port 1-65535, the options a scheme needs, no password in `str()`).
Known bugs and `only(...)`: see `tests/test_fuzz.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campus.errors import ConfigError
from campus.urls import parse_mqtt_url, parse_store_url
from tests.test_fuzz import KnownBug, fuzz_settings, only

# ------------------------------------------------------------------ URLs

U_URLSPLIT = [KnownBug("U1 urlsplit ValueError", ValueError, f"campus/urls.py:{fn}",
                       "Invalid IPv6 URL|does not appear to be an IPv4 or IPv6 address|NFKC normalization")
              for fn in ("parse_mqtt_url", "parse_store_url")]

url_hosts = st.one_of(st.text(max_size=12), st.from_regex(r"\A[a-z0-9.-]{1,20}\Z"), st.just(""),
                      st.sampled_from(["[::1]", "[::1", "::1]", "[abc]", "[v1.x]", "[fe80::1%eth0]", "127.0.0.1",
                                       "a\uff03b", "a\u2100b", "h\u00e9te", "[", "]", "@", ":"]))
url_ports = st.one_of(st.just(""), st.integers(-5, 70000).map(lambda p: f":{p}"), st.text(":0123456789x+ -",
                                                                                          max_size=7))
url_queries = st.lists(st.tuples(st.sampled_from(["protocol", "ca", "cert", "key", "org", "bucket", "token", "x", ""]),
                                 st.sampled_from(["5", "3.1.1", "4", "", "a b", "%ff", "&"])), max_size=4).map(
    lambda kv: "&".join(f"{k}={v}" for k, v in kv))


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["mqtt", "mqtts", "sqlite", "victoriametrics", "influxdb", "http", "MQTT", ""]))
    user = draw(st.sampled_from(["", "u@", "u:p@", "u%20x:p%ff@", "@@", ":@"]) | st.text(max_size=5).map(lambda t: t + "@"))
    path = draw(st.sampled_from(["", "/", "/x.db", "//abs.db", "/a/b"]) | st.text(max_size=6))
    query = draw(url_queries)
    return f"{scheme}://{user}{draw(url_hosts)}{draw(url_ports)}{path}" + (f"?{query}" if query else "")


def check_mqtt_url(url: str) -> None:
    with only(ConfigError, U_URLSPLIT) as outcome:
        parsed = parse_mqtt_url(url)
    if outcome.ok:
        assert parsed.host and 1 <= parsed.port <= 65535 and parsed.protocol in ("5", "3.1.1")
        assert parsed.tls == url.lower().startswith("mqtts:")
        assert parsed.password is None or f":{parsed.password}@" not in str(parsed)  # never print the password


def check_store_url(url: str) -> None:
    with only(ConfigError, U_URLSPLIT) as outcome:
        parsed = parse_store_url(url)
    if outcome.ok:
        if parsed.scheme == "sqlite":
            assert parsed.path
        else:
            assert parsed.scheme in ("victoriametrics", "influxdb") and parsed.host and 1 <= parsed.port <= 65535
        if parsed.scheme == "influxdb":
            assert parsed.options.get("bucket") and set(parsed.options) <= {"org", "bucket", "token"}
        if parsed.scheme == "victoriametrics":
            assert not parsed.options


@fuzz_settings(200)
@given(st.text(max_size=60) | urls())
def test_mqtt_url_only_config_error(url: str) -> None:
    check_mqtt_url(url)


@fuzz_settings(200)
@given(st.text(max_size=60) | urls())
def test_store_url_only_config_error(url: str) -> None:
    check_store_url(url)


# ------------------------------------------------------------------ regressions for the bugs found


@pytest.mark.parametrize("parse, url", [
    (parse_mqtt_url, "mqtt://[::1"), (parse_mqtt_url, "mqtt://[abc]:1883"), (parse_mqtt_url, "mqtt://a\uff03b@h"),
    (parse_store_url, "influxdb://[x"), (parse_store_url, "sqlite://[x"),
], ids=["unclosed-bracket", "bracket-not-ip", "nfkc", "store-unclosed", "sqlite-bracket"])
def test_bug_u1_malformed_netloc(parse: Callable[[str], Any], url: str) -> None:
    with pytest.raises(ConfigError):
        parse(url)
