"""Point store for a district: InfluxDB line protocol into VictoriaMetrics or InfluxDB.

Writes go through influxdb-client's WriteApi in SYNCHRONOUS mode: ingest
already batches (hundreds of messages per call), and it must know that a
batch is stored before it acknowledges the MQTT messages, which the
fire-and-forget batching mode cannot tell it. The lines are formatted here
(one line per sample, all its metrics as fields, the series part cached
per device) rather than with the client's Point builder, which cost more
than everything else ingest does per message. Measurement = device kind,
tags = school, gateway, room, device, fields = metrics, timestamp = the
sample's own `ts` (ms), so a redelivered sample lands on the same series
and timestamp instead of adding a point (run VictoriaMetrics with
`-dedup.minScrapeInterval=1ms` to collapse such twins on disk too).
InfluxDB before 1.8 has no `/api/v2/write`; the store asks the server its
version (`/ping`) and writes the same lines through the 1.x `/write`.

A write the server refuses for what it carries (HTTP 413, or 400/422 with
a reason such as a field type conflict or a line it cannot parse: see
`DATA_REFUSALS`) is not retried as a whole, which would hold up ingest for
ever: the batch is halved until the refused samples stand
alone; they are logged, counted and left out, everything else is stored
(writes are idempotent, so the halves already stored cost nothing). Any
other failure (server down, 5xx, wrong token, no such database or org) is a
`StoreError`, and ingest retries the batch without acknowledging it.

Enumerated string metrics (power, error_*, muted) are written as their
index in `contract.METRIC_ENUMS`, because VictoriaMetrics keeps numbers
only; other strings (an input name) are kept by InfluxDB and dropped by
VictoriaMetrics — their latest value lives in the ledger either way.

Queries: VictoriaMetrics through its Prometheus-compatible HTTP API (raw
samples from `/api/v1/export` for windows up to `RAW_WINDOW_S`, range
queries with a step chosen from the window beyond); InfluxDB through
InfluxQL on `/query`, which InfluxDB 1.x, 2.x (the bucket's DBRP mapping)
and 3.x all serve, where Flux runs on 2.x only.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
from urllib3.exceptions import HTTPError

from campus import contract
from campus.errors import StoreError
from campus.urls import StoreUrl
from central.store.base import Sample

log = logging.getLogger(__name__)

RAW_WINDOW_S = 6 * 3600
MAX_POINTS_PER_QUERY = 1000
# What a server says when it refuses lines for their content, so that retrying them cannot help. Any
# other 4xx (an organisation, bucket or token the server does not know) is retried: a refusal that is
# not recognised holds the batch up, loudly, rather than dropping a district's data.
DATA_REFUSALS = ("partial write", "conflict", "unable to parse", "cannot parse", "parsing failed", "retention")
_KINDS = (*contract.DEVICE_KINDS, "device")  # measurements; "device" for a kind ingest does not know yet


# Line protocol escaping (what a tag value, a measurement and a string field may not contain raw).
_TAG = str.maketrans({"\\": "\\\\", " ": "\\ ", ",": "\\,", "=": "\\=", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_MEASUREMENT = str.maketrans({"\\": "\\\\", " ": "\\ ", ",": "\\,", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_STRING_FIELD = str.maketrans({"\\": "\\\\", '"': '\\"'})


class _Refused(Exception):
    """The server refused these lines for their content (not retryable as they are)."""


def _decode_value(metric: str, value: float | str) -> float | str:
    enum = contract.metric_enum(metric)
    if enum and not isinstance(value, str) and float(value).is_integer() and 0 <= int(value) < len(enum):
        return enum[int(value)]
    return value


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _refuses_the_data(status: int, detail: str) -> bool:
    """A 413 (too large: halves will do) or a 400/422 whose reason is one of `DATA_REFUSALS`."""
    return status == 413 or (status in (400, 422) and any(r in detail.lower() for r in DATA_REFUSALS))


def _influxql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _major_minor(version: str) -> tuple[int, int] | None:
    """(1, 6) of `X-Influxdb-Version: 1.6.7~rc0` (2.x may say `v2.7.4`); None if it says nothing readable."""
    parts = version.lstrip("v").split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def _version_before_1_8(version: str) -> bool:
    """True for an InfluxDB 1.x older than 1.8, which lacks /api/v2/write."""
    known = _major_minor(version)
    return known is not None and known[0] == 1 and known[1] < 8


class InfluxPointStore:
    def __init__(self, url: StoreUrl, timeout_s: float = 10.0) -> None:
        self.url = url
        self.flavour = url.scheme  # victoriametrics | influxdb
        self.http = f"http://{url.host}:{url.port}"
        self.org = url.options.get("org", "campus")
        self.bucket = url.options.get("bucket", "campus")
        self.token = url.options.get("token", "")
        self.timeout_s = timeout_s
        self.client = InfluxDBClient(url=self.http, token=self.token or "unused", org=self.org,
                                     timeout=int(timeout_s * 1000))
        self.write_api = self.client.write_api(write_options=SYNCHRONOUS)
        self._series_cache: dict[tuple[str, str, str, str, str], str] = {}
        self._v1_write: bool | None = None  # InfluxDB before 1.8: /write; decided on first use
        self.server_version = ""  # what InfluxDB's /ping says
        self.refused = 0  # samples the server refused (see the module docstring), since start
        self._refused_logged = 0.0

    # ------------------------------------------------------------ HTTP

    def _headers(self) -> dict[str, str]:
        if not self.token:
            return {}
        if self._v1_write and ":" in self.token:  # InfluxDB 1.x before 1.8 knows users, not tokens
            return {"Authorization": "Basic " + base64.b64encode(self.token.encode()).decode()}
        return {"Authorization": f"Token {self.token}"}

    def _request(self, path: str, params: list[tuple[str, str]], body: bytes | None = None) -> tuple[bytes, Any]:
        url = f"{self.http}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, data=body, headers=self._headers(),
                                         method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                return resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace").strip()
            if body is not None and _refuses_the_data(exc.code, detail):
                raise _Refused(detail) from None
            raise StoreError(f"{self.flavour} at {self.http}{path}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise StoreError(f"{self.flavour} at {self.http} unreachable: {exc}") from None

    def _uses_v1_write(self) -> bool:
        if self._v1_write is None:
            if self.flavour != "influxdb":
                self._v1_write = False
            else:
                _, headers = self._request("/ping", [])
                self.server_version = headers.get("X-Influxdb-Version", "")
                self._v1_write = _version_before_1_8(self.server_version)
        return self._v1_write

    def check(self) -> None:
        """Raise StoreError naming the server if it cannot be reached, refuses our token or lacks the database."""
        if self.flavour == "victoriametrics":
            self._request("/health", [])
            return
        self._uses_v1_write()
        # A statement that fails for a database that does not exist: 1.x answers SHOW MEASUREMENTS
        # of a missing one with nothing, 2.x and 3.x with an error.
        one_x = (_major_minor(self.server_version) or (0, 0))[0] == 1
        self._influxql("SHOW RETENTION POLICIES" if one_x else "SHOW MEASUREMENTS LIMIT 1")

    # ------------------------------------------------------------ write

    def write(self, samples: list[Sample]) -> int:
        """Store every sample; the number the server refused for their content (logged, left out)."""
        lines = []
        kept = []
        victoria = self.flavour == "victoriametrics"
        for s in samples:
            fields = []
            for metric, value in s.values.items():
                if type(value) is str:
                    enum = contract.metric_enum(metric)
                    if enum and value in enum:
                        fields.append(f"{metric}={float(enum.index(value))!r}")
                    elif not victoria:  # VictoriaMetrics would store it as 0: keep it out (the ledger has it)
                        fields.append(f'{metric}="{value.translate(_STRING_FIELD)}"')
                else:
                    fields.append(f"{metric}={float(value)!r}")
            if fields:
                lines.append(f"{self._series(s)} {','.join(fields)} {round(s.ts * 1000)}")
                kept.append(s)
        refused = self._write_halving(kept, lines) if lines else 0
        self.refused += refused
        return refused

    def _write_halving(self, samples: list[Sample], lines: list[str]) -> int:
        try:
            self._send(lines)
            return 0
        except _Refused as exc:
            if len(lines) == 1:
                self._log_refused(samples[0], str(exc))
                return 1
        half = len(lines) // 2
        return (self._write_halving(samples[:half], lines[:half])
                + self._write_halving(samples[half:], lines[half:]))

    def _log_refused(self, sample: Sample, reason: str) -> None:
        now = time.monotonic()
        if now - self._refused_logged > 5:  # a flood of such samples must not flood the log
            self._refused_logged = now
            log.warning("%s refused the sample of %s/%s at %.3f, left out of the store (the ledger keeps its"
                        " latest values): %s (%d refused so far)", self.flavour, sample.gateway, sample.device,
                        sample.ts, reason, self.refused + 1)

    def _send(self, lines: list[str]) -> None:
        body = "\n".join(lines).encode()
        if self._uses_v1_write():
            self._request("/write", [("db", self.bucket), ("precision", "ms")], body)
            return
        try:
            self.write_api.write(bucket=self.bucket, org=self.org, record=body, write_precision=WritePrecision.MS)
        except ApiException as exc:
            detail = str(exc.body or exc.reason or "")[:300]
            if _refuses_the_data(exc.status or 0, detail):
                raise _Refused(f"HTTP {exc.status} {detail}") from None
            raise StoreError(f"{self.flavour} at {self.http} refused the write: HTTP {exc.status} {detail}") from None
        except (HTTPError, OSError) as exc:
            raise StoreError(f"{self.flavour} at {self.http} unreachable: {exc}") from None

    def _series(self, s: Sample) -> str:
        """Measurement and tags of a sample's series in line protocol (tags in key order), cached."""
        key = (s.kind, s.school, s.gateway, s.room, s.device)
        series = self._series_cache.get(key)
        if series is None:
            if len(self._series_cache) > 100_000:
                self._series_cache.clear()
            tags = [("device", s.device), ("gateway", s.gateway), ("room", s.room), ("school", s.school)]
            series = (s.kind or "device").translate(_MEASUREMENT) + "".join(
                f",{k}={v.translate(_TAG)}" for k, v in tags if v)
            self._series_cache[key] = series
        return series

    # ------------------------------------------------------------ query

    def query(self, gateway: str, device: str, metric: str, start: float, end: float,
              limit: int = 10_000) -> list[tuple[float, float | str]]:
        contract.check_segment(metric, "metric")
        if self.flavour == "influxdb":
            return self._query_influxql(gateway, device, metric, start, end, limit)
        selector = (f'{{__name__=~"({"|".join(_KINDS)})_{metric}",gateway="{_escape_label(gateway)}",'
                    f'device="{_escape_label(device)}"}}')
        if end - start <= RAW_WINDOW_S:
            body, _ = self._request("/api/v1/export", [("match[]", selector), ("start", f"{start:.3f}"),
                                                       ("end", f"{end:.3f}")])
            samples: dict[float, float] = {}
            for line in body.splitlines():
                series = json.loads(line)
                for ts_ms, value in zip(series["timestamps"], series["values"], strict=True):
                    samples[ts_ms / 1000] = value  # twins from a redelivery collapse here
            return [(ts, _decode_value(metric, v)) for ts, v in sorted(samples.items())][:limit]
        step = max(1, math.ceil((end - start) / MAX_POINTS_PER_QUERY))
        # VictoriaMetrics aligns the points to multiples of the step; asking one step
        # past `end` makes the newest samples fall inside the last window.
        body, _ = self._request("/api/v1/query_range", [("query", f"last_over_time({selector}[{step}s])"),
                                                         ("start", f"{start:.3f}"), ("end", f"{end + step:.3f}"),
                                                         ("step", f"{step}s")])
        result = json.loads(body)["data"]["result"]
        out = sorted((float(ts), float(v)) for series in result for ts, v in series["values"])
        return [(ts, _decode_value(metric, v)) for ts, v in out][:limit]

    def _influxql(self, statement: str) -> list[dict[str, Any]]:
        """Run one InfluxQL statement on the bucket (database); its series."""
        body, _ = self._request("/query", [("db", self.bucket), ("epoch", "ms"), ("q", statement)])
        try:
            result = json.loads(body)["results"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise StoreError(f"influxdb at {self.http}/query: unexpected answer {body[:200]!r}") from None
        if "error" in result:
            raise StoreError(f"influxdb at {self.http}, database {self.bucket!r}: {result['error']}")
        return result.get("series", [])

    def _query_influxql(self, gateway: str, device: str, metric: str, start: float, end: float,
                        limit: int) -> list[tuple[float, float | str]]:
        where = (f'"gateway" = {_influxql_string(gateway)} AND "device" = {_influxql_string(device)}'
                 f" AND time >= {round(start * 1000)}ms AND time <= {round(end * 1000)}ms")
        measurements = f"/^({'|'.join(_KINDS)})$/"
        if end - start <= RAW_WINDOW_S:
            statement = f'SELECT "{metric}" FROM {measurements} WHERE {where} LIMIT {int(limit)}'
        else:  # the newest sample of each step, as VictoriaMetrics' last_over_time gives
            step = max(1, math.ceil((end - start) / MAX_POINTS_PER_QUERY))
            statement = f'SELECT last("{metric}") FROM {measurements} WHERE {where} GROUP BY time({step}s) fill(none)'
        points = sorted(((row[0] / 1000, row[1]) for series in self._influxql(statement)
                         for row in series["values"] if row[1] is not None), key=lambda point: point[0])
        return [(ts, _decode_value(metric, v)) for ts, v in points][:limit]

    def release(self) -> None:
        """Nothing is held per thread: a query opens and closes its own HTTP connection, writes share
        the client's bounded connection pool."""

    def close(self) -> None:
        self.client.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.flavour, "url": self.http}
