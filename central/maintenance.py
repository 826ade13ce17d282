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
way, at most a refresh old.

Sorting by date needs every part's date, and working them out per request (every projector's hours and
every room's state JSON, decoded and sorted in Python) cost 172 ms of CPU at 10,000 rooms (11h). So the
same round also keeps each part's line of the list in `part_rates` (`rate_parts`), indexed in the list's
order, and a page is one ordered, paged read of those lines (`page`): the parts the rollup has not listed
(just reported, a rollup not running) are found in one more statement and computed as before, merged in
and counted (`FALLBACKS`). Three statements a page whatever the district's size (five with such parts).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, select, tuple_, update

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
LIST_MAX_AGE_S = 900.0  # a line of the list the rollup wrote longer ago than this (its rounds: a minute) is not used
FEW = 500  # at most this many parts the list computes itself read their gateways' rows alone


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
    no date last. Worked out whole from the parts' hours (what `page` does for the parts the rollup has
    not listed, and what it is compared with in tests)."""
    return _computed(db, store, scope, within_weeks, q, time.time() if now is None else now)


def _computed(db: Database, store: PointStore, scope: lists.Scope, within_weeks: float, q: str | None,
              now: float, only: set[tuple[str, str, str]] | None = None) -> list[PartDue]:
    """`parts`, of only the (gateway, device, metric) in `only` if given (their gateways' rows read alone
    when they are few enough for an IN list)."""
    gateways = tuple(sorted({gw for gw, _d, _m in only})) if only is not None and len(only) <= FEW else None
    rows, projectors = lists.projector_hours(db, tuple(PARTS.values()), scope, gateways)
    metric_part = {m: part for part, m in PARTS.items()}
    out: list[PartDue] = []
    needle = (q or "").lower()
    ratings: dict[tuple[str, str], float | None] = {}
    for gw, device, metric, raw, school, building, room, rate, as_of, _building_id in rows:
        if only is not None and (gw, device, metric) not in only:
            continue
        prof = projectors.get((gw, device))
        if prof is None:  # not a projector's hours (or not reported as one now)
            continue
        if needle and not any(needle in (v or "").lower() for v in (school, building, room, gw, device, prof)):
            continue
        value = _number(raw)
        if not _finite(value):
            continue
        part = metric_part[metric]
        rated = _rating(ratings, prof, part)
        rolled_up = as_of is not None and abs(now - as_of) <= RATE_MAX_AGE_S
        per_week = rate if rolled_up else hours_per_week(store, gw, device, metric, now)
        left = weeks_left(rated, float(value), per_week)
        out.append(PartDue(gw, device, school or "", building or "", room or "", prof, part, float(value), rated,
                           per_week, left, left is not None and left <= within_weeks))
    out.sort(key=_order)
    return out


def _order(r: PartDue) -> tuple[Any, ...]:
    """The list's order (central/lists.py `part_rows` says it in SQL)."""
    return (r.weeks_left is None, r.weeks_left or 0.0, r.school, r.gateway, r.device, r.part)


def _rating(ratings: dict[tuple[str, str], float | None], prof: str, part: str) -> float | None:
    """`rated_hours`, once per profile and part per list or round (it globs the profiles each time)."""
    if (prof, part) not in ratings:
        ratings[prof, part] = rated_hours(prof, part)
    return ratings[prof, part]


def weeks_left(rated: float | None, hours: float, per_week: float | None) -> float | None:
    """Weeks until a part with `hours` of `rated` is due at `per_week` hours a week, to 0.1 week (0: due now;
    None: no rating, or no rate to date it by)."""
    if rated is None:
        return None
    remaining = rated - hours
    return 0.0 if remaining <= 0 else round(remaining / per_week, 1) if per_week else None


@dataclass
class Fallbacks:
    """How many parts the list computed itself because the rollup had not listed them (a part that reported
    since its last round, a rollup not running, a list asked as of another time): `lists` lists that did,
    `parts` parts in all. Read by bench/ and tests; 0 and 0 in a district whose rollup keeps up."""
    lists: int = 0
    parts: int = 0


FALLBACKS = Fallbacks()


def page(db: Database, store: PointStore, paging: lists.Paging, scope: lists.Scope = lists.EVERYTHING,
         within_weeks: float = DEFAULT_WITHIN_WEEKS, due_only: bool = False,
         now: float | None = None) -> lists.Page[PartDue]:
    """A page of `parts` (only those due within `within_weeks`, if `due_only`) and their total.

    The usage rollup's round keeps each part's line in `part_rates` (`rate_parts`), so a page is one ordered,
    paged read of it, the same rows in the same order as `parts` (tests/test_maintenance_list.py). A part
    with no line written within LIST_MAX_AGE_S of `now` (or rated more than RATE_MAX_AGE_S from it) is found
    by one more statement and computed as `parts` does, then merged in (counted in FALLBACKS): the page is
    right either way, and as cheap as the rollup is current. A line's hours and place are as of the round
    that wrote it (a minute old when the rollup keeps up), as its rate already was."""
    now = time.time() if now is None else now
    metrics = tuple(PARTS.values())
    missing = lists.unlisted_parts(db, metrics, scope, now, LIST_MAX_AGE_S, RATE_MAX_AGE_S)
    extra: list[PartDue] = []
    if missing:
        extra = [r for r in _computed(db, store, scope, within_weeks, paging.q, now, missing)
                 if r.due or not due_only]
        if extra:
            FALLBACKS.lists += 1
            FALLBACKS.parts += len(extra)
    # With parts of its own to merge, the page's rows are among the first offset + limit of the lines.
    limit, offset = (paging.limit, paging.offset) if not extra else (paging.offset + paging.limit, 0)
    rows, total = lists.part_rows(db, scope, paging.q, now, LIST_MAX_AGE_S, RATE_MAX_AGE_S,
                                  within_weeks if due_only else None, limit, offset)
    listed = [PartDue(gw, device, school or "", building or "", room or "", prof or "", part or "", hours, rated,
                      per_week, left, left is not None and left <= within_weeks)
              for gw, device, school, building, room, prof, part, hours, rated, per_week, left in rows]
    if not extra:
        return lists.Page(listed, total)
    keys = {(r.gateway, r.device, r.part) for r in listed}  # a round may have listed one in between
    merged = sorted(listed + [r for r in extra if (r.gateway, r.device, r.part) not in keys], key=_order)
    return lists.Page(merged[paging.offset:paging.offset + paging.limit], total + len(extra))


def rate_parts(db: Database, store: PointStore, now: float | None = None, only_new: bool = False) -> int:
    """Work out every projector part's `hours_per_week` as of `now` into `part_rates` (the usage rollup's
    round): a read of the store per part, here once per refresh instead of in every request; `only_new`:
    only the parts without a rate yet (a projector that just reported). Returns the parts rated.

    Every round also writes each part's line of the list (place, profile, hours, rated hours, weeks left)
    where it changed, deletes the lines of parts no longer reported as a projector's, and stamps every line
    `listed_at = now` (one statement): the list pages those lines in SQL (`page`)."""
    from central.usage import PartRate

    now = time.time() if now is None else now
    t = PartRate.__table__
    rows, projectors = lists.projector_hours(db, tuple(PARTS.values()))
    line_cols = ("school", "building", "building_id", "room", "profile", "part", "hours", "rated", "weeks_left",
                 "undated")
    with db.read("cannot read the projector parts' rates") as conn:
        stored = {(gw, device, metric): tuple(line) for gw, device, metric, *line in conn.execute(
            select(t.c.gateway, t.c.device, t.c.metric, *(t.c[c] for c in line_cols)))}
    metric_part = {m: part for part, m in PARTS.items()}
    ratings: dict[tuple[str, str], float | None] = {}
    writes: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    rated_n = 0
    for gw, device, metric, raw, school, building, room, rate, as_of, building_id in rows:
        prof = projectors.get((gw, device))
        if prof is None:
            continue
        key = (gw, device, metric)
        seen.add(key)
        if only_new and as_of is not None:
            per_week, rated_at = rate, as_of
        else:
            per_week, rated_at = hours_per_week(store, gw, device, metric, now), now
            rated_n += 1
        part = metric_part[metric]
        rated = _rating(ratings, prof, part)
        value = _number(raw)
        hours = float(value) if _finite(value) else None
        left = weeks_left(rated, hours, per_week) if hours is not None else None
        line = (school or "", building or "", building_id, room or "", prof, part, hours, rated, left, left is None)
        if rated_at == now or stored.get(key) != line:  # a new rate, a new part, or its line changed
            writes.append({"gateway": gw, "device": device, "metric": metric, "per_week": per_week,
                           "as_of": rated_at, "listed_at": now, **dict(zip(line_cols, line, strict=True))})
    gone = [k for k in stored if k not in seen]
    keep = ("per_week", "as_of", "listed_at", *line_cols)
    for i in range(0, len(writes), WRITE_BATCH):
        stmt = db.insert(t)
        with db.write("cannot write the projector parts' rates") as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["gateway", "device", "metric"],
                                                    set_={k: stmt.excluded[k] for k in keep}),
                         writes[i:i + WRITE_BATCH])
    with db.write("cannot write the projector parts' rates") as conn:
        for i in range(0, len(gone), WRITE_BATCH):
            conn.execute(delete(t).where(tuple_(t.c.gateway, t.c.device, t.c.metric).in_(gone[i:i + WRITE_BATCH])))
        conn.execute(update(t).values(listed_at=now))
    return rated_n
