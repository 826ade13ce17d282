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

Queries: VictoriaMetrics through its Prometheus-compatible HTTP API;
InfluxDB through InfluxQL on `/query`, which InfluxDB 1.x, 2.x (the
bucket's DBRP mapping) and 3.x all serve, where Flux runs on 2.x only.
A window (`window`) is counted first (`count_over_time`, `count()`): raw
samples (`/api/v1/export`, a plain SELECT) if it holds few enough, else
the newest sample of each step (`last_over_time` with `tlast_over_time`
for its timestamp, `last() ... GROUP BY time(step)`), ending with the
window's newest sample. A raw page (`query`) is the newest samples:
InfluxQL's `ORDER BY time DESC LIMIT`, and for VictoriaMetrics, whose
export has no limit, slices of `RAW_WINDOW_S` exported from the end back.
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
from central.store.base import MAX_POINTS, Point, Sample, Window, downsample_step

log = logging.getLogger(__name__)

RAW_WINDOW_S = 6 * 3600  # the longest slice of raw samples VictoriaMetrics exports at once
# What a server says when it refuses lines for their content, so that retrying them cannot help. Any
# other 4xx (an organisation, bucket or token the server does not know) is retried: a refusal that is
# not recognised holds the batch up, loudly, rather than dropping a district's data.
DATA_REFUSALS = ("partial write", "conflict", "unable to parse", "cannot parse", "parsing failed", "retention")
_KINDS = (*contract.DEVICE_KINDS, "device")  # measurements; "device" for a kind ingest does not know yet
_MEASUREMENTS = f"/^({'|'.join(_KINDS)})$/"  # InfluxQL: every measurement a device's samples can be in


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


def _vm_rollup(function: str, selector: str, span: str) -> str:
    """A MetricsQL rollup over the selector's series that keeps each series' name: a device whose samples
    are under two measurements (its kind changed) gives two series, which would otherwise be one name-less
    series twice, which VictoriaMetrics refuses as duplicate output."""
    return f"{function}({selector}[{span}]) keep_metric_names"


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
              limit: int = MAX_POINTS) -> list[Point]:
        contract.check_segment(metric, "metric")
        if self.flavour == "influxdb":
            statement = (f'SELECT "{metric}" FROM {_MEASUREMENTS} WHERE {self._where(gateway, device, start, end)}'
                         f" ORDER BY time DESC LIMIT {int(limit)}")
            return [(ts, _decode_value(metric, v)) for ts, v in self._influx_points(statement)][-limit:]
        return self._vm_newest(self._selector(gateway, device, metric), metric, start, end, limit)

    def window(self, gateway: str, device: str, metric: str, start: float, end: float,
               max_points: int = MAX_POINTS) -> Window:
        contract.check_segment(metric, "metric")
        if self.flavour == "influxdb":
            return self._influx_window(gateway, device, metric, start, end, max_points)
        return self._vm_window(self._selector(gateway, device, metric), metric, start, end, max_points)

    # VictoriaMetrics: raw samples from /api/v1/export, counts and downsampling from its query API.

    @staticmethod
    def _selector(gateway: str, device: str, metric: str) -> str:
        return (f'{{__name__=~"({"|".join(_KINDS)})_{metric}",gateway="{_escape_label(gateway)}",'
                f'device="{_escape_label(device)}"}}')

    def _vm_export(self, selector: str, start: float, end: float) -> dict[float, float]:
        body, _ = self._request("/api/v1/export", [("match[]", selector), ("start", f"{start:.3f}"),
                                                   ("end", f"{end:.3f}")])
        samples: dict[float, float] = {}
        for line in body.splitlines():
            series = json.loads(line)
            for ts_ms, value in zip(series["timestamps"], series["values"], strict=True):
                samples[ts_ms / 1000] = value  # twins from a redelivery collapse here
        return samples

    def _vm_newest(self, selector: str, metric: str, start: float, end: float, limit: int) -> list[Point]:
        """The newest `limit` raw samples in [start, end]: exported a slice at a time from `end` back (the
        export has no limit of its own), each slice `RAW_WINDOW_S` or as long as the last one needed."""
        samples: dict[float, float] = {}
        top, span = end, float(RAW_WINDOW_S)
        while top >= start and len(samples) < limit:
            bottom = max(start, top - span)
            got = self._vm_export(selector, bottom, top)
            samples.update(got)
            if not got:
                span *= 4  # an empty slice: a series sampled rarely; look further back at once
            top = bottom - 0.001  # the export's bounds are whole milliseconds, both included
        newest = sorted(samples.items())[-limit:] if limit > 0 else []
        return [(ts, _decode_value(metric, v)) for ts, v in newest]

    def _vm_instant(self, query: str, at: float) -> list[dict[str, Any]]:
        body, _ = self._request("/api/v1/query", [("query", query), ("time", f"{at:.3f}")])
        return json.loads(body)["data"]["result"]

    def _vm_window(self, selector: str, metric: str, start: float, end: float, max_points: int) -> Window:
        # Look-behind windows are (t - d, t]: one millisecond more than the window takes `start` in.
        span = f"{max(1, math.ceil((end - start) * 1000)) + 1}ms"
        count = sum(float(s["value"][1]) for s in self._vm_instant(_vm_rollup("count_over_time", selector, span), end))
        if count <= max_points:
            raw = sorted(self._vm_export(selector, start, end).items())
            return Window([(ts, _decode_value(metric, v)) for ts, v in raw])
        step = downsample_step(start, end, max_points)
        # Points at multiples of the step (VictoriaMetrics aligns them), each the newest sample of the
        # step before it: its value, and its own timestamp. Asking one step past `end` makes the
        # newest samples fall inside the last window.
        step_ms = round(step * 1000)
        params = [("start", f"{start:.3f}"), ("end", f"{end + step:.3f}"), ("step", f"{step_ms}ms")]
        found: dict[tuple[str, float], list[float]] = {}
        for which, fn in ((0, "last_over_time"), (1, "tlast_over_time")):
            body, _ = self._request("/api/v1/query_range", [("query", _vm_rollup(fn, selector, f"{step_ms}ms")),
                                                             *params])
            for series in json.loads(body)["data"]["result"]:
                labels = json.dumps(series["metric"], sort_keys=True)
                for t, v in series["values"]:
                    found.setdefault((labels, float(t)), [math.nan, math.nan])[which] = float(v)
        by_ts: dict[float, float] = {}
        for value, ts in found.values():
            if start <= round(ts, 3) <= end and not math.isnan(value):
                by_ts[round(ts, 3)] = value
        points = sorted(by_ts.items())
        # The step that holds `end` may be missing (VictoriaMetrics leaves out grid points it deems too
        # recent) or hide the window's newest sample behind later ones: ask for that sample itself.
        newest = self._vm_last(selector, span, end)
        if newest and (not points or newest[0] > points[-1][0]):
            points.append(newest)
        return Window([(ts, _decode_value(metric, v)) for ts, v in points[-max_points:]], step)

    def _vm_last(self, selector: str, span: str, at: float) -> tuple[float, float] | None:
        """The newest sample of the series in (at - span, at]."""
        newest: dict[str, list[float]] = {}
        for which, fn in ((0, "tlast_over_time"), (1, "last_over_time")):
            for series in self._vm_instant(_vm_rollup(fn, selector, span), at):
                labels = json.dumps(series["metric"], sort_keys=True)
                newest.setdefault(labels, [math.nan, math.nan])[which] = float(series["value"][1])
        pairs = [(round(ts, 3), value) for ts, value in newest.values() if not math.isnan(ts + value)]
        return max(pairs) if pairs else None

    # InfluxDB: InfluxQL.

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

    def _influx_points(self, statement: str) -> list[tuple[float, Any]]:
        """(ts, first column) of every row of every series (one per measurement) the statement answers,
        oldest first."""
        return sorted(((row[0] / 1000, row[1]) for series in self._influxql(statement)
                       for row in series["values"] if row[1] is not None), key=lambda point: point[0])

    @staticmethod
    def _where(gateway: str, device: str, start: float, end: float) -> str:
        return (f'"gateway" = {_influxql_string(gateway)} AND "device" = {_influxql_string(device)}'
                f" AND time >= {round(start * 1000)}ms AND time <= {round(end * 1000)}ms")

    def _influx_window(self, gateway: str, device: str, metric: str, start: float, end: float,
                       max_points: int) -> Window:
        where = self._where(gateway, device, start, end)
        count = sum(n for _, n in self._influx_points(f'SELECT count("{metric}") FROM {_MEASUREMENTS} WHERE {where}'))
        if count <= max_points:
            raw = self._influx_points(f'SELECT "{metric}" FROM {_MEASUREMENTS} WHERE {where}')
            return Window([(ts, _decode_value(metric, v)) for ts, v in raw])
        step = downsample_step(start, end, max_points)
        # The newest sample of each step, as VictoriaMetrics' last_over_time gives, at the step's start
        # (InfluxQL dates a GROUP BY time() bucket by its start, whatever the selector).
        buckets = self._influx_points(f'SELECT last("{metric}") FROM {_MEASUREMENTS} WHERE {where}'
                                      f" GROUP BY time({round(step * 1000)}ms) fill(none)")
        points = [(max(ts, start), v) for ts, v in buckets][-max_points:]
        # Without GROUP BY time(), last() dates the newest sample by its own time: the window's last point.
        newest = self._influx_points(f'SELECT last("{metric}") FROM {_MEASUREMENTS} WHERE {where}')
        if newest and points:
            points[-1] = newest[-1]
        return Window([(ts, _decode_value(metric, v)) for ts, v in points], step)

    def release(self) -> None:
        """Nothing is held per thread: a query opens and closes its own HTTP connection, writes share
        the client's bounded connection pool."""

    def close(self) -> None:
        self.client.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.flavour, "url": self.http}
