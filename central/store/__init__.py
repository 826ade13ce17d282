"""Time-series point stores behind one small interface.

`open_store(url)` is the one place a store URL becomes a backend:
`sqlite:///PATH` (embedded, the default) or, for a district, a server that
speaks InfluxDB line protocol (VictoriaMetrics, InfluxDB).
"""

from __future__ import annotations

from campus.urls import parse_store_url
from central.store.base import PointStore, Sample


def open_store(url: str) -> PointStore:
    parsed = parse_store_url(url)
    if parsed.scheme == "sqlite":
        from central.store.sqlite import SqlitePointStore

        return SqlitePointStore(parsed.path)
    from central.store.influx import InfluxPointStore

    return InfluxPointStore(parsed)


__all__ = ["PointStore", "Sample", "open_store"]
