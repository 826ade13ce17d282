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

Enumerated string metrics (power, error_*, muted) are written as their
index in `contract.METRIC_ENUMS`, because VictoriaMetrics keeps numbers
only; other strings (an input name) are kept by InfluxDB and dropped by
VictoriaMetrics — their latest value lives in the ledger either way.

Queries against VictoriaMetrics use its Prometheus-compatible HTTP API:
raw samples (`/api/v1/export`) for windows up to `RAW_WINDOW_S`, range
queries with a step chosen from the window (`/api/v1/query_range`) beyond.
"""

from __future__ import annotations

import json
import math
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

RAW_WINDOW_S = 6 * 3600
MAX_POINTS_PER_QUERY = 1000


# Line protocol escaping (what a tag value, a measurement and a string field may not contain raw).
_TAG = str.maketrans({"\\": "\\\\", " ": "\\ ", ",": "\\,", "=": "\\=", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_MEASUREMENT = str.maketrans({"\\": "\\\\", " ": "\\ ", ",": "\\,", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_STRING_FIELD = str.maketrans({"\\": "\\\\", '"': '\\"'})


def _decode_value(metric: str, value: float) -> float | str:
    enum = contract.metric_enum(metric)
    if enum and float(value).is_integer() and 0 <= int(value) < len(enum):
        return enum[int(value)]
    return value


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class InfluxPointStore:
    def __init__(self, url: StoreUrl, timeout_s: float = 10.0) -> None:
        self.url = url
        self.flavour = url.scheme  # victoriametrics | influxdb
        self.http = f"http://{url.host}:{url.port}"
        self.org = url.options.get("org", "campus")
        self.bucket = url.options.get("bucket", "campus")
        self.timeout_s = timeout_s
        self.client = InfluxDBClient(url=self.http, token=url.options.get("token", "unused"), org=self.org,
                                     timeout=int(timeout_s * 1000))
        self.write_api = self.client.write_api(write_options=SYNCHRONOUS)
        self._series_cache: dict[tuple[str, str, str, str, str], str] = {}

    # ------------------------------------------------------------ write

    def write(self, samples: list[Sample]) -> None:
        lines = []
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
        if not lines:
            return
        try:
            self.write_api.write(bucket=self.bucket, org=self.org, record="\n".join(lines).encode(),
                                 write_precision=WritePrecision.MS)
        except ApiException as exc:
            raise StoreError(f"{self.flavour} at {self.http} refused the write: HTTP {exc.status} {exc.reason}") from None
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

    def _get(self, path: str, params: list[tuple[str, str]]) -> bytes:
        url = f"{self.http}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise StoreError(f"{self.flavour} query failed: HTTP {exc.code} {exc.read()[:200]!r}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise StoreError(f"{self.flavour} at {self.http} unreachable: {exc}") from None

    def _selector(self, gateway: str, device: str, metric: str) -> str:
        kinds = "|".join((*contract.DEVICE_KINDS, "device"))
        return (f'{{__name__=~"({kinds})_{metric}",gateway="{_escape_label(gateway)}",'
                f'device="{_escape_label(device)}"}}')

    def query(self, gateway: str, device: str, metric: str, start: float, end: float,
              limit: int = 10_000) -> list[tuple[float, float | str]]:
        if self.flavour != "victoriametrics":
            return self._query_flux(gateway, device, metric, start, end, limit)
        contract.check_segment(metric, "metric")
        selector = self._selector(gateway, device, metric)
        if end - start <= RAW_WINDOW_S:
            body = self._get("/api/v1/export", [("match[]", selector), ("start", f"{start:.3f}"), ("end", f"{end:.3f}")])
            samples: dict[float, float] = {}
            for line in body.splitlines():
                series = json.loads(line)
                for ts_ms, value in zip(series["timestamps"], series["values"], strict=True):
                    samples[ts_ms / 1000] = value  # twins from a redelivery collapse here
            return [(ts, _decode_value(metric, v)) for ts, v in sorted(samples.items())][:limit]
        step = max(1, math.ceil((end - start) / MAX_POINTS_PER_QUERY))
        # VictoriaMetrics aligns the points to multiples of the step; asking one step
        # past `end` makes the newest samples fall inside the last window.
        body = self._get("/api/v1/query_range", [("query", f"last_over_time({selector}[{step}s])"),
                                                  ("start", f"{start:.3f}"), ("end", f"{end + step:.3f}"),
                                                  ("step", f"{step}s")])
        result = json.loads(body)["data"]["result"]
        out = sorted((float(ts), float(v)) for series in result for ts, v in series["values"])
        return [(ts, _decode_value(metric, v)) for ts, v in out][:limit]

    def _query_flux(self, gateway: str, device: str, metric: str, start: float, end: float,
                    limit: int) -> list[tuple[float, float | str]]:
        """InfluxDB 2.x/3.x history through Flux (not exercised by this project's tests: no server here)."""
        for name, value in (("gateway", gateway), ("device", device), ("metric", metric)):
            contract.check_segment(value, name)
        flux = (f'from(bucket: "{self.bucket}") |> range(start: {int(start)}, stop: {int(end) + 1})'
                f' |> filter(fn: (r) => r.gateway == "{gateway}" and r.device == "{device}"'
                f' and r._field == "{metric}") |> sort(columns: ["_time"]) |> limit(n: {limit})')
        try:
            tables = self.client.query_api().query(flux, org=self.org)
        except (ApiException, HTTPError, OSError) as exc:
            raise StoreError(f"influxdb query failed: {exc}") from None
        return [(rec.get_time().timestamp(), _decode_value(metric, rec.get_value()) if not isinstance(
            rec.get_value(), str) else rec.get_value()) for table in tables for rec in table.records]

    def close(self) -> None:
        self.client.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.flavour, "url": self.http}
