"""Which projector lamps and filters are due, and when the rest will be (issue 21, part 4).

A projector reports `lamp_hours` and (PJLink class 2) `filter_hours`; its profile rates the lamp's life
and the filter's interval (`rated_lamp_hours`, `rated_filter_hours`; without them the profile's health
limit, the hours the alarm fires at). What is left of a part's life, divided by how many hours a week the
projector has been running lately, is how many weeks until it is due: a facility manager orders lamps
and plans the filter round from that, before a lesson goes dark.

The hours a week are the increase of the hour counter over the last `RATE_WEEKS` weeks (campus/counters.py:
a new lamp resets its counter, which is a restart, not negative hours), over the time those readings span.
They are read from the point store as at most one point a day per part (`PointStore.window`) by the usage
rollup's round (central/usage_rollup.py, every CAMPUS_USAGE_INTERVAL) into `part_rates` (`rate_parts`), and
the list reads them from there with the parts' hours: a request reads no point store (it used to read it
twice per projector: 175 ms of CPU at 2,000 rooms, docs/benchmarks.md 11d and 11f). A part the rollup has
not rated within RATE_MAX_AGE_S of the list's `now` (just installed, a rollup not running, a list asked
as of another time) is read from the store as before, so the figures are those of `hours_per_week` either
way, at most a refresh old. The list has to know every projector's date to sort them, so it is computed
whole and paged here. The database is read in two statements whatever the number of projectors.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from campus import counters
from central import lists
from central.db import Database
from central.store.base import PointStore

PARTS = {"lamp": "lamp_hours", "filter": "filter_hours"}
RATE_WEEKS = 4
MIN_SPAN_S = 86400.0   # readings spanning less than a day give no rate (a projector just installed)
DEFAULT_WITHIN_WEEKS = 4
MAX_WITHIN_WEEKS = 104
MAX_ROWS = 1_000_000  # a file of the whole list: every projector part there is
RATE_MAX_AGE_S = 86400.0  # a rollup's rate older (or newer) than this, against the list's `now`, is not used
WRITE_BATCH = 500


@dataclass(frozen=True)
class PartDue:
    """One part of one projector: its hours now, its rated hours (None: the profile rates none), hours a
    week lately (None: not enough readings), and the weeks until it is due (0: due now; None: never at this
    rate, or unknown); `due`: within the weeks asked for."""
    gateway: str
    device: str
    school: str
    building: str
    room: str
    profile: str
    part: str
    hours: float
    rated: float | None
    per_week: float | None
    weeks_left: float | None
    due: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rated_hours(profile: str, part: str) -> float | None:
    """The profile's rated hours of a part (`rated_<part>_hours`), else its health limit of the metric."""
    from device_profiles import shipped_profile

    prof = shipped_profile(profile)
    if prof is None:
        return None
    rated = prof.rated_lamp_hours if part == "lamp" else prof.rated_filter_hours
    if rated is None:
        rated = prof.health.get(PARTS[part], {}).get("max")
    return float(rated) if rated is not None else None


def hours_per_week(store: PointStore, gateway: str, device: str, metric: str, now: float,
                   weeks: int = RATE_WEEKS) -> float | None:
    """How many hours a week the counter grew over the last `weeks` (None: readings spanning under a day)."""
    start = now - weeks * 7 * 86400
    pts = [(ts, float(v)) for ts, v in store.window(gateway, device, metric, start, now, weeks * 7 + 1).points
           if _finite(v)]
    if len(pts) < 2 or pts[-1][0] - pts[0][0] < MIN_SPAN_S:
        return None
    return round(counters.increase(v for _ts, v in pts) / ((pts[-1][0] - pts[0][0]) / (7 * 86400)), 3)


def _number(raw: str) -> Any:
    """A stored value (JSON text) as `json.loads` reads it, as far as the list looks at it (its float):
    a number's text straight through `float`, which is what `json.loads` gives for it, at a fraction of
    the cost (json.loads was half the list's CPU at 10,000 projectors); anything else through JSON."""
    try:
        return float(raw)
    except ValueError:
        return json.loads(raw)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def parts(db: Database, store: PointStore, scope: lists.Scope = lists.EVERYTHING, within_weeks: float = 4,
          q: str | None = None, now: float | None = None) -> list[PartDue]:
    """Every projector part in `scope` (matching `q` in the school, building, room, gateway, device or
    profile) that reports its hours, soonest due first: those due now, then by weeks left, the ones with
    no date last."""
    now = time.time() if now is None else now
    rows, projectors = lists.projector_hours(db, tuple(PARTS.values()), scope)
    metric_part = {m: part for part, m in PARTS.items()}
    out: list[PartDue] = []
    needle = (q or "").lower()
    ratings: dict[tuple[str, str], float | None] = {}
    for gw, device, metric, raw, school, building, room, rate, as_of in rows:
        prof = projectors.get((gw, device))
        if prof is None:  # not a projector's hours (or not reported as one now)
            continue
        if needle and not any(needle in (v or "").lower() for v in (school, building, room, gw, device, prof)):
            continue
        value = _number(raw)
        if not _finite(value):
            continue
        part = metric_part[metric]
        if (prof, part) not in ratings:  # a profile's rating once per list (it globs the profiles each time)
            ratings[prof, part] = rated_hours(prof, part)
        rated = ratings[prof, part]
        rolled_up = as_of is not None and abs(now - as_of) <= RATE_MAX_AGE_S
        per_week = rate if rolled_up else hours_per_week(store, gw, device, metric, now)
        left = None
        if rated is not None:
            remaining = rated - float(value)
            left = 0.0 if remaining <= 0 else round(remaining / per_week, 1) if per_week else None
        out.append(PartDue(gw, device, school or "", building or "", room or "", prof, part, float(value), rated,
                           per_week, left, left is not None and left <= within_weeks))
    out.sort(key=lambda r: (r.weeks_left is None, r.weeks_left or 0.0, r.school, r.gateway, r.device, r.part))
    return out


def page(db: Database, store: PointStore, paging: lists.Paging, scope: lists.Scope = lists.EVERYTHING,
         within_weeks: float = DEFAULT_WITHIN_WEEKS, due_only: bool = False,
         now: float | None = None) -> lists.Page[PartDue]:
    """A page of `parts` (only those due within `within_weeks`, if `due_only`) and their total."""
    every = parts(db, store, scope, within_weeks, paging.q, now)
    if due_only:
        every = [r for r in every if r.due]
    return lists.Page(every[paging.offset:paging.offset + paging.limit], len(every))


def rate_parts(db: Database, store: PointStore, now: float | None = None, only_new: bool = False) -> int:
    """Work out every projector part's `hours_per_week` as of `now` into `part_rates` (the usage rollup's
    round): a read of the store per part, here once per refresh instead of in every request; `only_new`:
    only the parts without a rate yet (a projector that just reported). Returns the parts rated."""
    from central.usage import PartRate

    now = time.time() if now is None else now
    rows, projectors = lists.projector_hours(db, tuple(PARTS.values()))
    rates = [{"gateway": gw, "device": device, "metric": metric, "as_of": now,
              "per_week": hours_per_week(store, gw, device, metric, now)}
             for gw, device, metric, *_rest, as_of in rows
             if (gw, device) in projectors and not (only_new and as_of is not None)]
    t = PartRate.__table__
    for i in range(0, len(rates), WRITE_BATCH):
        stmt = db.insert(t)
        with db.write("cannot write the projector parts' rates") as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["gateway", "device", "metric"],
                                                    set_={"per_week": stmt.excluded.per_week,
                                                          "as_of": stmt.excluded.as_of}), rates[i:i + WRITE_BATCH])
    return len(rates)
