"""A room's history as a CSV file, for facility managers' reports and spreadsheets.

`GET /health/rooms/<gateway>/history.csv?window=1h|24h|7d` holds the series
the room's history page charts (environment, occupancy, equipment power)
over the same window, one row per device and sample time, one column per
metric: a telemetry message carries all of a device's metrics at one
instant, so the row is that message. Times are the site's (dashboards/i18n.py:
`2026-12-04 周五 14:03:05`, 24-hour, the site's zone) as everywhere on the dashboard, beside the unix
timestamp. The file starts
with a UTF-8 byte-order mark, without which Excel reads UTF-8 as the
system's code page (GBK on a Chinese Windows) and garbles Chinese room and
building names.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Flask, Response
from flask_babel import gettext

from dashboards.auth import login_required
from dashboards.context import central
from dashboards.exports import CSV, csv_text, download
from dashboards.health import STAFF, WINDOWS, iter_points, power_state, requested_room, room_series
from dashboards.i18n import format_time, site_stamp

bp = Blueprint("history_csv", __name__)


def register(app: Flask) -> None:
    app.register_blueprint(bp)


def history_rows(store: Any, gateway: str, series: list[dict[str, Any]], start: float,
                 end: float) -> tuple[list[str], list[list[Any]]]:
    """Header and rows (oldest first) of the `series` of one gateway in [start, end]; the header's own
    columns in the request's language, the metrics by their names (CONTRACT.md), which carry their unit."""
    metrics = list(dict.fromkeys(s["metric"] for s in series))
    samples: dict[tuple[float, str], dict[str, Any]] = {}
    for s in series:
        for ts, value in iter_points(store, gateway, s["device"], s["metric"], start, end):
            samples.setdefault((ts, s["device"]), {})[s["metric"]] = (
                power_state(value) if s["type"] == "state" else _number(value))
    header = [gettext("time"), gettext("unix_ts"), gettext("device"), *metrics]
    rows = [[format_time(ts, seconds=True), f"{ts:.3f}", device,
             *(values.get(m, "") for m in metrics)]
            for (ts, device), values in sorted(samples.items())]
    return header, rows


def _number(value: float | str) -> float | int | str:
    """A whole number without its ".0" (a people count, 800 ppm): stores hand every number back as a float."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


@bp.get("/health/rooms/<gateway>/history.csv")
@login_required(roles=STAFF)
def room_history_csv(gateway: str) -> Response:
    info, window = requested_room(gateway)
    end = time.time()
    header, rows = history_rows(central().store, gateway, room_series(info), end - WINDOWS[window], end)
    return download(csv_text([header, *rows], cell=lambda v: v), f"campus-{gateway}-{window}-{site_stamp(end)}.csv", CSV)
