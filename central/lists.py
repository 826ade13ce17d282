"""Paged lists: the reads that join the ledger's tables with the registry's, in SQL, a page at a time.

A district has thousands of rooms. Every list a page or an API call shows (gateways, devices, the board,
schools) used to load all of them and filter in Python: seconds per request and megabytes per answer
(issue 19). Here each list is one counted, ordered, LIMIT/OFFSET query over the central database, where
the ledger (what gateways said) and the registry (what IT registered) live side by side; the caller then
reads the details of the page's rows only. The number of statements a request runs does not grow with
the number of rooms (tests/test_paging.py counts them).

This module owns SQL over the ledger's tables besides central/ledger.py (tests/test_service.py names its
owners): the joins are here so that neither the ledger nor the registry knows the other's tables.

Strings sort in code-point order on both engines (PostgreSQL's own order is the cluster's locale: the
`C` collation is asked for), so a page holds the same rows on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import date, timedelta
from operator import attrgetter
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Float,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    case,
    cast,
    collate,
    exists,
    false,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    true,
    union_all,
)

from campus.errors import PayloadError
from campus.i18n import lazy_gettext
from central.db import Database
from central.ledger import online_at
from central.registry import Alarm, AuditRecord, Building, Device, Gateway, Room, School
from central.registry import AlarmRule as AlarmKind
from central.tables import commands as commands_t
from central.tables import device_kind_token
from central.tables import events as events_t
from central.tables import gateways as gw_t
from central.tables import latest as latest_t
from central.timetables import site_zone_of, today_in

T = TypeVar("T")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Far beyond any list (and within a 32-bit integer): a larger offset is a typo or a probe.
MAX_OFFSET = 1_000_000_000
Q_MAX = 100


@dataclass(frozen=True)
class Paging:
    """Which slice of a list to answer: `limit` rows from `offset`, those matching `q` (a substring of
    the names and ids, case-insensitive for ASCII; None: all)."""
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    q: str | None = None

    @classmethod
    def parse(cls, args: Mapping[str, str], default_limit: int = DEFAULT_LIMIT,
              max_limit: int = MAX_LIMIT) -> Paging:
        """From query parameters: a missing or empty value takes its default; anything else that is not
        one raises PayloadError naming the parameter (a 400), never reaching SQL."""
        def whole(name: str, default: int, low: int, high: int) -> int:
            raw = args.get(name)
            if raw is None or raw == "":
                return default
            if not raw.isascii() or not raw.isdigit() or len(raw) > 12 or not low <= int(raw) <= high:
                raise PayloadError(lazy_gettext("query parameter %(name)s must be a whole number from %(low)s to "
                                                "%(high)s, got %(value)s", name=repr(name), low=low, high=high,
                                                value=repr(raw[:40])))
            return int(raw)

        q = args.get("q") or None
        if q is not None:
            if len(q) > Q_MAX:
                raise PayloadError(lazy_gettext("query parameter 'q' is at most %(max)s characters, got %(count)s",
                                                max=Q_MAX, count=len(q)))
            # PostgreSQL refuses a NUL in a statement outright; no name holds a control character.
            if not q.isprintable():
                raise PayloadError(lazy_gettext("query parameter 'q' must not hold control characters"))
            q = q.strip() or None
        return cls(whole("limit", default_limit, 1, max_limit), whole("offset", 0, 0, MAX_OFFSET), q)


def name_arg(args: Mapping[str, str], name: str) -> str | None:
    """A name compared in SQL (a school, a gateway), None if absent; PayloadError naming the parameter if
    no name can be it (PostgreSQL refuses a NUL in a statement: a 503 instead of a 400)."""
    raw = args.get(name) or None
    if raw is not None and (len(raw) > Q_MAX or not raw.isprintable()):
        raise PayloadError(lazy_gettext("query parameter %(name)s must be a name of at most %(max)s printable "
                                        "characters", name=repr(name), max=Q_MAX))
    return raw


@dataclass
class Page(Generic[T]):
    """One page of a list and how many rows the whole (filtered) list has: the `X-Total-Count`."""
    items: list[T]
    total: int


def like(q: str) -> str:
    """`q` as a LIKE pattern matching it anywhere, its `%`, `_` and `\\` taken literally (ESCAPE '\\')."""
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def matches(q: str | None, *columns: Any) -> ColumnElement[bool]:
    """Any of `columns` holds `q` (case-insensitive); true when there is no `q`."""
    if not q:
        return true()
    pattern = like(q)
    return or_(*(func.lower(c).like(func.lower(literal(pattern)), escape="\\") for c in columns))


def ordered(db: Database, column: Any) -> Any:
    """`column` to sort by in code-point order on either engine."""
    return collate(column, "C") if db.dialect == "postgresql" else column


def page_of(db: Database, query: Select[Any], order: list[Any], paging: Paging, what: str) -> tuple[list[Any], int]:
    """The rows of `query` in `order` for `paging`, and the count of all of them: two statements."""
    sub = query.subquery()
    with db.read(f"cannot read the {what}") as conn:
        total = conn.execute(select(func.count()).select_from(sub)).scalar_one()
        rows = conn.execute(query.order_by(*order).limit(paging.limit).offset(paging.offset)).all()
    return list(rows), total


# ---------------------------------------------------------------- reported devices (the ledger's state JSON)


def reported_devices(db: Database) -> Any:
    """The devices of a gateway's last state (`{"devices": {id: {profile, kind, status}}}` in gateways.state),
    as a table-valued function with columns `key` (the device id) and `value`; correlated to `gateways`."""
    if db.dialect == "sqlite":
        return func.json_each(gw_t.c.state, "$.devices").table_valued("key", "value").alias("dev")
    return func.json_each(cast(gw_t.c.state, JSON)["devices"]).table_valued("key", "value").alias("dev")


def device_field(db: Database, dev: Any, name: str) -> Any:
    if db.dialect == "sqlite":
        return func.json_extract(dev.c.value, f"$.{name}")
    return dev.c.value.op("->>")(literal(name))


def _reported_status(db: Database, status: str) -> ColumnElement[bool]:
    """The gateway's last state has a device with this status (correlated to `gateways`)."""
    dev = reported_devices(db)
    return exists(select(literal(1)).select_from(dev).where(device_field(db, dev, "status") == status)
                  .correlate(gw_t))


def _never_reported(db: Database, gateway_id: Any) -> ColumnElement[bool]:
    """A device provisioned on the gateway that its last state does not list."""
    dev = reported_devices(db)
    return exists(select(literal(1)).select_from(Device).where(
        Device.gateway_id == gateway_id,
        not_(exists(select(literal(1)).select_from(dev).where(dev.c.key == Device.device_id).correlate(gw_t)))))


# ---------------------------------------------------------------- every gateway, registered or reporting


def places(db: Database, names: bool = True, kinds: bool = False) -> Any:
    """Every gateway the registry has or the ledger heard of, with its school, room and building: the
    registry's place where there is one, else what the gateway said.

    `names` False: without `room`, `building` and `building_id` (no join with the rooms and buildings): what a
    sum over every place by school reads (the usage rate's district, a third cheaper at 10,000 rooms).
    `kinds` True: with the kinds of its last state's devices (`device_kinds`: `has_kind`; NULL for a
    registered gateway never heard of); only when asked, as every row carries it (the energy pages' join
    to the places was 7% dearer with it, docs/benchmarks.md 11o)."""
    named = [func.coalesce(Room.name, gw_t.c.room, "").label("room"), func.coalesce(Building.name, "").label("building"),
             Building.id.label("building_id")] if names else []
    kinds_of = [gw_t.c.device_kinds.label("device_kinds")] if kinds else []
    registered = (select(Gateway.id.label("id"), Gateway.school_id.label("school"), *named,
                         literal(True).label("registered"), *kinds_of)
                  .select_from(Gateway))
    if names:
        registered = (registered.outerjoin(Room, Gateway.room_id == Room.id)
                      .outerjoin(Building, Room.building_id == Building.id))
    registered = registered.outerjoin(gw_t, gw_t.c.id == Gateway.id)
    reporting = (select(gw_t.c.id, gw_t.c.school, *([gw_t.c.room, literal(""), cast(null(), Integer)] if names else []),
                        literal(False), *([gw_t.c.device_kinds] if kinds else []))
                 .where(not_(exists(select(Gateway.id).where(Gateway.id == gw_t.c.id)))))
    return union_all(registered, reporting).subquery("places")


def is_place(gateway_id: Any) -> ColumnElement[bool]:
    """`gateway_id` (a column of another table) is the id of a row of `places`: a gateway the registry has or
    the ledger heard of. Two primary-key lookups, without building `places`: the usage rate's district days,
    54,000 room-days at 10,000 rooms, 19 ms instead of 25 ms as an IN `places`."""
    return or_(exists(select(literal(1)).where(Gateway.id == gateway_id)),
               exists(select(literal(1)).where(gw_t.c.id == gateway_id)))


def has_kind(db: Database, kinds_column: Any, kinds: tuple[str, ...]) -> ColumnElement[bool]:
    """`kinds_column` (a gateway's `device_kinds`, e.g. `places(db, kinds=True).c.device_kinds`) holds one of `kinds`: the
    gateway's last state has a device of such a kind. A substring test on a short text, case-sensitive on both
    engines as the state's JSON compared, without reading it (central/tables.py `device_kind_token`)."""
    position = func.instr if db.dialect == "sqlite" else func.strpos
    return or_(false(), *(position(kinds_column, device_kind_token(k)) > 0 for k in kinds))


@dataclass(frozen=True)
class Scope:
    """What a list is narrowed to. The caller's rights: the gateways of a teacher's rooms (`gateways`) or
    the schools of a school-scoped admin or facility account (`schools`); None: no such limit, so
    `Scope()` is the whole district. Then the filters a page asks for: a school, a building.

    Every list of this module takes one and makes it part of its WHERE: the rows outside it are never
    read, counted or paged (dashboards/auth.py `sight` builds it from the caller)."""
    gateways: tuple[str, ...] | None = None
    school: str | None = None
    building: int | None = None
    schools: tuple[str, ...] | None = None

    def rights(self) -> Scope:
        """The caller's limits alone, without the page's filters."""
        return Scope(gateways=self.gateways, schools=self.schools)

    def narrowed(self, school: str | None = None, building: int | None = None) -> Scope:
        """The same rights, filtered to a school and a building."""
        return replace(self, school=school, building=building)

    def allows_school(self, school: str) -> bool:
        """Whether a school-scoped caller may see `school` (a teacher's limit is rooms, checked per gateway)."""
        return self.schools is None or school in self.schools


EVERYTHING = Scope()  # the whole district: a district-wide account's rights, and every list's default


def _scoped(p: Any, scope: Scope) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if scope.gateways is not None:
        where.append(p.c.id.in_(scope.gateways) if scope.gateways else false())
    if scope.schools is not None:
        where.append(p.c.school.in_(scope.schools) if scope.schools else false())
    if scope.school:
        where.append(p.c.school == scope.school)
    if scope.building is not None:
        where.append(p.c.building_id == scope.building)
    return where


def place_filter(p: Any, scope: Scope) -> list[ColumnElement[bool]]:
    """Conditions keeping the rows of `places` (`p`) within `scope`: for a read that joins them (the usage
    rollup, central/usage.py)."""
    return _scoped(p, scope)


def gateway_in(db: Database, column: Any, scope: Scope) -> list[ColumnElement[bool]]:
    """Conditions keeping `column` (a gateway id: of an event, a command, an alarm) within the caller's
    rights: a teacher's gateways, or the gateways whose place (`places`) is in the caller's schools."""
    where: list[ColumnElement[bool]] = []
    if scope.gateways is not None:
        where.append(column.in_(scope.gateways) if scope.gateways else false())
    if scope.schools is not None:
        p = places(db)
        where.append(column.in_(select(p.c.id).where(p.c.school.in_(scope.schools))) if scope.schools else false())
    return where


def in_scope(db: Database, gateway: str, scope: Scope) -> bool:
    """Whether `gateway` is a gateway (registered or reporting) within `scope`: one statement."""
    if len(gateway) > Q_MAX or not gateway.isprintable():  # no gateway's name; PostgreSQL refuses a NUL (503)
        return False
    p = places(db)
    with db.read("cannot read the gateway's place") as conn:
        return conn.execute(select(exists(select(p.c.id).where(p.c.id == gateway, *_scoped(p, scope))))).scalar_one()


def gateway_ids(db: Database, paging: Paging, scope: Scope = Scope()) -> Page[str]:
    """The ids of a page of gateways (registered or reporting), by school then id, matching `q` in the id,
    school, room or building."""
    # The places' rooms and buildings only when a `q` or a building asks them: their joins were a third of the
    # page's and its count's time at 10,000 rooms (`/health/usage`).
    named = bool(paging.q) or scope.building is not None
    p = places(db, names=named)
    searched = matches(paging.q, p.c.id, p.c.school, p.c.room, p.c.building) if named else true()
    query = select(p.c.id, p.c.school).where(*_scoped(p, scope), searched)
    rows, total = page_of(db, query, [ordered(db, p.c.school), ordered(db, p.c.id)], paging, "gateways")
    return Page([r.id for r in rows], total)


def all_gateway_ids(db: Database, scope: Scope) -> list[str]:
    """Every gateway (registered or reporting) within `scope`, unpaged: for the reports that read every
    room of what the caller may see (the usage rate)."""
    p = places(db)
    with db.read("cannot read the gateways") as conn:
        return sorted(conn.execute(select(p.c.id).where(*_scoped(p, scope))).scalars())


def registered_ids(db: Database, paging: Paging, scope: Scope = Scope()) -> Page[str]:
    """The ids of a page of registered gateways (of `scope.schools`, if given), by school then id, matching
    `q` in the id, school, room, building or MQTT user name."""
    query = (select(Gateway.id, Gateway.school_id).outerjoin(Room, Gateway.room_id == Room.id)
             .outerjoin(Building, Room.building_id == Building.id)
             .where(matches(paging.q, Gateway.id, Gateway.school_id, Room.name, Building.name, Gateway.mqtt_username),
                    *_registered_in(scope)))
    rows, total = page_of(db, query, [ordered(db, Gateway.school_id), ordered(db, Gateway.id)], paging, "gateways")
    return Page([r.id for r in rows], total)


def _registered_in(scope: Scope) -> list[ColumnElement[bool]]:
    """Registered gateways within the caller's schools (provisioning is for admins, never teachers)."""
    if scope.schools is None:
        return []
    return [Gateway.school_id.in_(scope.schools) if scope.schools else false()]


def unpushed_count(db: Database, scope: Scope = Scope()) -> int:
    """Registered gateways (of `scope.schools`) whose device list version is neither pushed nor applied
    (what "Push all changed" would push): one statement."""
    from central.provisioning import ConfigPush

    if db.dialect == "sqlite":
        applied = func.json_extract(gw_t.c.state, "$.config_version") == Gateway.config_version
    else:
        applied = cast(gw_t.c.state, JSON).op("->>")(literal("config_version")) == cast(Gateway.config_version,
                                                                                           String)
    query = (select(func.count()).select_from(Gateway)
             .outerjoin(ConfigPush, ConfigPush.gateway_id == Gateway.id).outerjoin(gw_t, gw_t.c.id == Gateway.id)
             .where(or_(ConfigPush.version.is_(None), ConfigPush.version != Gateway.config_version),
                    not_(func.coalesce(applied, False)), *_registered_in(scope)))
    with db.read("cannot count the gateways to push") as conn:
        return conn.execute(query).scalar_one()


# ---------------------------------------------------------------- the board: problems first


BOARD_PROBLEMS = ("offline", "fault", "alarm")


def _problem_columns(db: Database, p: Any) -> dict[str, Any]:
    """Per gateway of `places`: whether it is offline, has a faulty device, has open alarms (the rules
    of central/overview.py `board`, in SQL)."""
    installed = gw_t.c.id.is_not(None)
    online = online_at(time.time())  # derived at read time: a GET never writes (central/ledger.py)
    offline = and_(installed, or_(not_(online), _reported_status(db, "offline"),
                                  _never_reported(db, p.c.id)))
    fault = and_(installed, online, _reported_status(db, "fault"))
    alarm = exists(select(Alarm.id).where(Alarm.gateway == p.c.id, Alarm.cleared_at.is_(None)))
    return {"offline": offline, "fault": fault, "alarm": alarm}


def _state_field(db: Database, *path: str) -> Any:
    """A field of the gateway's last state (gateways.state, JSON text)."""
    if db.dialect == "sqlite":
        return func.json_extract(gw_t.c.state, "$." + ".".join(path))
    doc: Any = cast(gw_t.c.state, JSON)
    for part in path[:-1]:
        doc = doc.op("->")(literal(part))
    return doc.op("->>")(literal(path[-1]))


def board_ids(db: Database, paging: Paging, scope: Scope = Scope(),
              problem: str | None = None) -> tuple[Page[str], dict[str, int]]:
    """A page of the board's rooms, those with a problem first (then by school, building and room), and
    the counts of every room in sight (`scope.rights()`) before the filters: rooms, not installed, per
    problem, and unacknowledged open alarms. Three statements."""
    p = places(db)
    cols = _problem_columns(db, p)
    flags = {name: case((expr, 1), else_=0) for name, expr in cols.items()}
    # The gateway's own disk full or failing: a problem to show first, not one the board counts.
    storage = func.coalesce(_state_field(db, "storage", "status"), "ok") != "ok"
    base = (select(p.c.id, p.c.school, p.c.building, p.c.room, *(v.label(k) for k, v in flags.items()),
                   case((gw_t.c.id.is_(None), 1), else_=0).label("uninstalled"))
            .select_from(p).outerjoin(gw_t, gw_t.c.id == p.c.id))
    counted = base.where(*_scoped(p, scope.rights())).subquery("counted")
    unacked = select(func.count()).select_from(Alarm).where(Alarm.cleared_at.is_(None), Alarm.acked_at.is_(None),
                                                            *gateway_in(db, Alarm.gateway, scope.rights()))
    with db.read("cannot count the board's rooms") as conn:
        row = conn.execute(select(func.count(), *(func.coalesce(func.sum(counted.c[k]), 0) for k in flags),
                                  func.coalesce(func.sum(counted.c.uninstalled), 0),
                                  unacked.scalar_subquery()).select_from(counted)).one()
    counts = {**{k: int(v) for k, v in zip(flags, row[1:-2], strict=True)}, "rooms": row[0],
              "unacked": int(row[-1]), "not_installed": int(row[-2])}
    base = base.where(*_scoped(p, scope))
    query = base.where(matches(paging.q, p.c.id, p.c.school, p.c.room, p.c.building))
    if problem == "any":
        query = query.where(or_(storage, *cols.values()))
    elif problem:
        query = query.where(cols[problem])
    order = _board_order(db, p)
    rows, total = page_of(db, query, order, paging, "board")
    return Page([r.id for r in rows], total), counts


def _board_order(db: Database, p: Any) -> list[Any]:
    """The board's order: problems first, then school, building, room (by its number if it is one), id."""
    cols = _problem_columns(db, p)
    storage = func.coalesce(_state_field(db, "storage", "status"), "ok") != "ok"
    return [case((or_(storage, *cols.values()), 0), else_=1), *_place_order(db, p.c.school, p.c.building,
                                                                             p.c.room, p.c.id)]


def _place_order(db: Database, school: Any, building: Any, room: Any, gateway: Any) -> list[Any]:
    """School, building, room (by its number if it is one), gateway id."""
    # Rooms whose name is a number sort by its value ("9" before "10"), as the board always did.
    if db.dialect == "postgresql":
        numeric = room.regexp_match("^[0-9]{1,12}$")
    else:
        numeric = and_(room != "", not_(room.op("GLOB", is_comparison=True)("*[^0-9]*")), func.length(room) <= 12)
    number = case((numeric, cast(room, BigInteger)), else_=0)
    return [ordered(db, school), ordered(db, building), case((numeric, 0), else_=1), number, ordered(db, room),
            ordered(db, gateway)]


# ---------------------------------------------------------------- the board's snapshot (a short-lived cache)


BOARD_CACHE_ENV = "CAMPUS_BOARD_CACHE_S"
DEFAULT_BOARD_CACHE_S = 2.0


@dataclass(frozen=True)
class BoardRow:
    """One room of the district as `board_ids` ranks and counts it (its problem flags, in board order)."""
    id: str
    school: str | None
    building_id: int | None
    offline: bool
    fault: bool
    alarm: bool
    storage: bool
    uninstalled: bool
    unacked: int  # open alarms of this gateway nobody acknowledged

    @property
    def problem(self) -> bool:
        return self.offline or self.fault or self.alarm or self.storage


@dataclass(frozen=True)
class BoardSnapshot:
    """Every room's flags in board order (`rows`), read in one statement at `taken` (monotonic), with the
    district's unacknowledged open alarms (`unacked`: those of gateways no place has too)."""
    taken: float
    rows: tuple[BoardRow, ...]
    unacked: int


def board_snapshot(db: Database) -> BoardSnapshot:
    """The whole district's board flags, in board order: two statements, each one pass over the rooms."""
    p = places(db)
    cols = _problem_columns(db, p)
    storage = func.coalesce(_state_field(db, "storage", "status"), "ok") != "ok"
    # The open alarms per gateway in one grouped pass, joined (a correlated EXISTS per room probed the
    # alarms 10,000 times: 190 of the 300 ms this took at 10,000 rooms).
    opened = (select(Alarm.gateway.label("gateway"), func.count().label("n"),
                     func.sum(case((Alarm.acked_at.is_(None), 1), else_=0)).label("unacked"))
              .where(Alarm.cleared_at.is_(None)).group_by(Alarm.gateway).subquery("opened"))
    alarm = func.coalesce(opened.c.n, 0) > 0
    query = (select(p.c.id, p.c.school, p.c.building_id, case((cols["offline"], 1), else_=0),
                    case((cols["fault"], 1), else_=0), case((alarm, 1), else_=0), case((storage, 1), else_=0),
                    case((gw_t.c.id.is_(None), 1), else_=0), func.coalesce(opened.c.unacked, 0))
             .select_from(p).outerjoin(gw_t, gw_t.c.id == p.c.id).outerjoin(opened, opened.c.gateway == p.c.id)
             .order_by(case((or_(storage, alarm, cols["offline"], cols["fault"]), 0), else_=1),
                       *_place_order(db, p.c.school, p.c.building, p.c.room, p.c.id)))
    every = select(func.count()).select_from(Alarm).where(Alarm.cleared_at.is_(None), Alarm.acked_at.is_(None))
    taken = time.monotonic()
    with db.read("cannot count the board's rooms") as conn:
        rows = tuple(BoardRow(r[0], r[1], r[2], bool(r[3]), bool(r[4]), bool(r[5]), bool(r[6]), bool(r[7]),
                              int(r[8])) for r in conn.execute(query))
        total_unacked = int(conn.execute(every).scalar_one())
    return BoardSnapshot(taken, rows, total_unacked)


class BoardSnapshots:
    """The board's snapshot of the district, read at most once per `ttl` seconds per process (and the
    district's rollup of its schools, `schools`, the same way).

    Every open equipment board asks `/api/board` every 5 s, and ranking the rooms (problems first) and
    counting them means judging every room of the district: three passes over 10,000 rooms' state JSON
    per request (docs/benchmarks.md 11f). Here one pass serves every board, school and page for `ttl`
    seconds (CAMPUS_BOARD_CACHE_S, default 2; 0: no cache), so a request's own work is the page's rooms.
    A board is at most `ttl` seconds older than the ledger; the page's rooms' details are read fresh."""

    def __init__(self, ttl: float | None = None) -> None:
        if ttl is None:
            import os

            raw = os.environ.get(BOARD_CACHE_ENV, "").strip()
            try:
                ttl = max(0.0, float(raw)) if raw else DEFAULT_BOARD_CACHE_S
            except ValueError:
                ttl = DEFAULT_BOARD_CACHE_S
        self.ttl = ttl
        self.reads = 0  # snapshots read so far (the tests and the benchmark count them)
        self.school_reads = 0  # the same, of the district's rollup (`schools`)
        self._lock = threading.Lock()
        self._snap: dict[int, BoardSnapshot] = {}
        self._school_lock = threading.Lock()
        self._schools: dict[int, SchoolSnapshot] = {}

    def get(self, db: Database) -> BoardSnapshot:
        """The snapshot of `db`, read again once older than `ttl` (one reader at a time: the others wait
        for its result rather than all reading the district at once)."""
        with self._lock:
            snap = self._snap.get(id(db))
            if snap is None or time.monotonic() - snap.taken >= self.ttl:
                snap = board_snapshot(db)
                self.reads += 1
                self._snap[id(db)] = snap
            return snap

    def schools(self, db: Database, week_of: date | None = None) -> SchoolSnapshot:
        """The district's rollup of `db` (`school_snapshot`, the `/district` page and `GET /api/schools`),
        read again once older than `ttl` or of another week; its own lock, so that a board waits for
        none of its reads."""
        monday = week_monday(week_of)
        with self._school_lock:
            snap = self._schools.get(id(db))
            if snap is None or snap.monday != monday or time.monotonic() - snap.taken >= self.ttl:
                snap = school_snapshot(db, week_of)
                self.school_reads += 1
                self._schools[id(db)] = snap
            return snap


def _in_scope(row: BoardRow, scope: Scope) -> bool:
    """`_scoped`, on a snapshot's row."""
    return ((scope.gateways is None or row.id in scope.gateways)
            and (scope.schools is None or row.school in scope.schools)
            and (not scope.school or row.school == scope.school)
            and (scope.building is None or row.building_id == scope.building))


def board_ids_cached(snapshots: BoardSnapshots, db: Database, paging: Paging, scope: Scope = Scope(),
                     problem: str | None = None) -> tuple[Page[str], dict[str, int]]:
    """`board_ids` from the process's snapshot (`BoardSnapshots`): the same page and counts, as of the
    snapshot. A search (`paging.q`) asks the database (`board_ids`): its case-folding is the engine's."""
    if paging.q:
        return board_ids(db, paging, scope, problem)
    snap = snapshots.get(db)
    rights = scope.rights()
    whole = rights == Scope()
    sight = snap.rows if whole else [r for r in snap.rows if _in_scope(r, rights)]
    counts = {"offline": sum(r.offline for r in sight), "fault": sum(r.fault for r in sight),
              "alarm": sum(r.alarm for r in sight), "rooms": len(sight),
              "unacked": snap.unacked if whole else sum(r.unacked for r in sight),
              "not_installed": sum(r.uninstalled for r in sight)}
    rows = sight if scope == rights else [r for r in sight if _in_scope(r, scope)]
    if problem == "any":
        rows = [r for r in rows if r.problem]
    elif problem:
        rows = [r for r in rows if getattr(r, problem)]
    return Page([r.id for r in rows[paging.offset:paging.offset + paging.limit]], len(rows)), counts


# ---------------------------------------------------------------- devices (reported, as /api/devices lists them)


def reported_device_keys(db: Database, paging: Paging, scope: Scope = Scope()) -> Page[tuple[str, str]]:
    """A page of (gateway, device) of the devices the agents reported, by gateway then device, matching `q`
    in the gateway, device, profile, kind or school."""
    dev = reported_devices(db)
    profile, kind = device_field(db, dev, "profile"), device_field(db, dev, "kind")
    query = select(gw_t.c.id, dev.c.key).select_from(gw_t.join(dev, true())).where(*gateway_in(db, gw_t.c.id, scope))
    query = query.where(matches(paging.q, gw_t.c.id, dev.c.key, profile, kind, gw_t.c.school))
    rows, total = page_of(db, query, [ordered(db, gw_t.c.school), ordered(db, gw_t.c.id),
                                      ordered(db, dev.c.key)], paging, "devices")
    return Page([(r[0], r[1]) for r in rows], total)


def reported_kinds(db: Database, kinds: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(gateway, device, kind) of every device of these kinds the agents reported in their last state:
    one statement, the JSON read by the database (the usage rollup and reports, central/usage.py)."""
    dev = reported_devices(db)
    kind = device_field(db, dev, "kind")
    query = select(gw_t.c.id, dev.c.key, kind).select_from(gw_t.join(dev, true())).where(kind.in_(kinds))
    with db.read("cannot read the reported devices") as conn:
        return [(g, d, k) for g, d, k in conn.execute(query)]


def reported_kinds_of(db: Database, kinds: tuple[str, ...], gateways: list[str]) -> list[tuple[str, str, str]]:
    """`reported_kinds` of these gateways only (a page of the usage report's rooms): one statement."""
    if not gateways:
        return []
    dev = reported_devices(db)
    kind = device_field(db, dev, "kind")
    query = (select(gw_t.c.id, dev.c.key, kind).select_from(gw_t.join(dev, true()))
             .where(gw_t.c.id.in_(gateways), kind.in_(kinds)))
    with db.read("cannot read the reported devices") as conn:
        return [(g, d, k) for g, d, k in conn.execute(query)]


def equipped(db: Database, p: Any, kinds: tuple[str, ...], profiles: list[str]) -> ColumnElement[bool]:
    """The place (a row of `places(db, kinds=True)`, `p`) has a device of these `kinds` in its last state or one provisioned
    with one of `profiles`: a usage report's rooms with something to measure, decided in SQL rather than
    every room's devices read into Python (1.0 s of a 1.5 s report at 10,000 rooms, 11h), and from the
    states' `device_kinds` rather than their JSON (~30 ms of a 180 ms report, 11i)."""
    # Correlated (one lookup of the place's devices, when its state has none of the kinds), not `IN` a list
    # of every provisioned one: the list was built once for each use of this condition.
    provisioned = exists(select(literal(1)).where(Device.gateway_id == p.c.id, Device.profile.in_(profiles))) \
        if profiles else false()
    return or_(has_kind(db, p.c.device_kinds, kinds), provisioned)


def place_order(db: Database, p: Any) -> list[Any]:
    """School, building, room, gateway id in code-point order on either engine (None as ""): the usage
    report's order of its rooms."""
    return [ordered(db, func.coalesce(c, "")) for c in (p.c.school, p.c.building, p.c.room, p.c.id)]


def place_rows(db: Database, scope: Scope = Scope()) -> list[tuple[str, str, str, str]]:
    """(gateway, school, building, room) of every gateway (registered or reporting) in `scope`, unpaged:
    one statement (the reports that list every room in sight: the usage rate)."""
    p = places(db)
    with db.read("cannot read the gateways' places") as conn:
        return [(i, s or "", b or "", r or "") for i, s, b, r in conn.execute(
            select(p.c.id, p.c.school, p.c.building, p.c.room).where(*_scoped(p, scope)))]


# ---------------------------------------------------------------- events, commands, audit, alarms


def events(db: Database, paging: Paging, gateway: str | None = None, type_: str | None = None,
           since: float | None = None, scope: Scope = Scope()) -> Page[dict[str, Any]]:
    """Events newest first, matching `q` in the gateway, device or type."""
    import json

    e = events_t.c
    query = select(e.gateway, e.device, e.seq, e.ts, e.type, e.data)
    if gateway is not None:
        query = query.where(e.gateway == gateway)
    query = query.where(*gateway_in(db, e.gateway, scope))
    if type_ is not None:
        query = query.where(e.type == type_)
    if since is not None:
        query = query.where(e.ts >= since)
    query = query.where(matches(paging.q, e.gateway, e.device, e.type))
    rows, total = page_of(db, query, [e.ts.desc(), e.gateway, e.seq.desc()], paging, "events")
    return Page([{"gateway": g, "device": d, "seq": s, "ts": ts, "type": t, "data": json.loads(data)}
                 for g, d, s, ts, t, data in rows], total)


def command_ids(db: Database, paging: Paging, gateway: str | None = None,
                scope: Scope = Scope()) -> Page[str]:
    """Command ids newest first, matching `q` in the id, gateway, device, action, status or who sent it."""
    c = commands_t.c
    query = select(c.id, c.created)
    if gateway:
        query = query.where(c.gateway == gateway)
    query = query.where(*gateway_in(db, c.gateway, scope))
    query = query.where(matches(paging.q, c.id, c.gateway, c.device, c.action, c.status, c.by))
    rows, total = page_of(db, query, [c.created.desc(), c.id], paging, "commands")
    return Page([r.id for r in rows], total)


def audit(db: Database, paging: Paging) -> Page[dict[str, Any]]:
    """The audit trail newest first, matching `q` in the user, action, detail or address."""
    a = AuditRecord
    query = select(a.ts, a.user, a.action, a.detail, a.ok, a.remote).where(
        matches(paging.q, a.user, a.action, a.detail, a.remote))
    rows, total = page_of(db, query, [a.id.desc()], paging, "audit trail")
    return Page([{"ts": ts, "user": user, "action": action, "detail": detail, "ok": ok, "remote": remote}
                 for ts, user, action, detail, ok, remote in rows], total)


def alarm_ids(db: Database, paging: Paging, state: str = "open", gateway: str | None = None,
              scope: Scope = Scope()) -> Page[int]:
    """Alarm ids newest first, `open` (not cleared), `active` (open, not acknowledged: what needs someone;
    the pages count them with `limit=1` and the total), `history` (cleared) or `all`, matching `q` in the
    gateway, device or message."""
    query = select(Alarm.id, Alarm.raised_at)
    if state in ("open", "active"):
        query = query.where(Alarm.cleared_at.is_(None))
        if state == "active":
            query = query.where(Alarm.acked_at.is_(None))
    elif state == "history":
        query = query.where(Alarm.cleared_at.is_not(None))
    elif state != "all":
        raise PayloadError(lazy_gettext("state must be open, active, history or all, got %(value)s", value=repr(state[:20])))
    if gateway:
        query = query.where(Alarm.gateway == gateway)
    query = query.where(*gateway_in(db, Alarm.gateway, scope))
    query = query.where(matches(paging.q, Alarm.gateway, Alarm.device, Alarm.message))
    rows, total = page_of(db, query, [Alarm.raised_at.desc(), Alarm.id.desc()], paging, "alarms")
    return Page([r.id for r in rows], total)


def gateway_count(db: Database, scope: Scope = Scope()) -> int:
    """How many gateways are registered (in `scope.schools`)."""
    with db.read("cannot count the gateways") as conn:
        return conn.execute(select(func.count()).select_from(Gateway).where(*_registered_in(scope))).scalar_one()


def school_ids(db: Database, scope: Scope = Scope()) -> list[str]:
    """The schools (those of `scope.schools`), in code-point order."""
    query = select(School.id)
    if scope.schools is not None:
        query = query.where(School.id.in_(scope.schools) if scope.schools else false())
    with db.read("cannot read the schools") as conn:
        return sorted(conn.execute(query).scalars())


# ---------------------------------------------------------------- the district: one row per school


SCHOOL_SORTS = ("school", "rooms", "online", "offline", "alarms", "faults", "lamps_due", "filters_due", "usage_rate",
                "co2_hours", "energy_kwh")


@dataclass(frozen=True)
class SchoolRow:
    """A school rolled up: its rooms (gateways registered or reporting), how many gateways are online,
    open alarms (active: not yet acknowledged; by rule kind), devices in fault, projector lamps past the
    limit (open lamp alarms) and filters reported due (`error_filter` warning or error); this week's class
    periods and those a display or projector was on (the usage rate; None: nothing measured), and the
    seconds its rooms' CO2 was over the alarm limit (None: no sensor measured), from the daily usage
    rollup (central/usage.py `UsageDay`); and this week's kWh of its metered rooms (None: no meter;
    central/energy.py)."""
    school: str
    name: str
    rooms: int
    gateways: int
    online: int
    offline: int
    alarms: int
    alarms_active: int
    alarms_acknowledged: int
    alarms_by_kind: dict[str, int]
    faults: int
    lamps_due: int
    filters_due: int
    usage_periods: int | None = None
    usage_used: int | None = None
    co2_over_s: int | None = None
    energy_kwh: float | None = None

    @property
    def usage_rate(self) -> float | None:
        return round(self.usage_used / self.usage_periods, 4) if self.usage_periods and self.usage_used is not None \
            else None

    @property
    def co2_hours(self) -> float | None:
        return None if self.co2_over_s is None else round(self.co2_over_s / 3600, 2)

    def as_dict(self) -> dict[str, Any]:
        """As `GET /api/schools` answers it: the fields, the usage rate (0-1) and the CO2 hours."""
        return {**asdict(self), "usage_rate": self.usage_rate, "co2_hours": self.co2_hours}


def week_monday(today: date | None = None) -> date:
    """The Monday of `today`'s ISO week: the overview's "this week". The web and the city push pass the
    site's today; None: today in Asia/Shanghai, never the host's date (a day behind from 16:00 UTC)."""
    if today is None:
        today = today_in(site_zone_of(None))
    return today - timedelta(days=today.weekday())


def _school_query(db: Database, week_of: date | None) -> tuple[Select[Any], Any, dict[str, Any], dict[str, Any]]:
    """The rollup's query, one row per school with `total` (a window count), unfiltered and unordered;
    the `every` subquery (`.c.school`, `.c.name`), the named columns and the sort keys of the figures
    that may be unmeasured (nothing measured below every figure: -1)."""
    from central.usage import UsageDay
    p = places(db)
    dev = reported_devices(db)
    faults = (select(func.count()).select_from(dev).where(device_field(db, dev, "status") == "fault")
              .correlate(gw_t).scalar_subquery())
    online = online_at(time.time())
    per_gateway = (select(p.c.id, p.c.school,
                          case((online, 1), else_=0).label("online"),
                          case((and_(gw_t.c.id.is_not(None), not_(online)), 1), else_=0).label("offline"),
                          case((online, faults), else_=0).label("faults"))
                   .select_from(p).outerjoin(gw_t, gw_t.c.id == p.c.id).subquery("per_gateway"))
    open_alarms = (select(p.c.school, func.count().label("alarms"),
                          func.sum(case((Alarm.acked_at.is_(None), 1), else_=0)).label("active"),
                          func.sum(case((AlarmKind.kind == "lamp_hours_above", 1), else_=0)).label("lamps"))
                   .select_from(Alarm).join(p, p.c.id == Alarm.gateway).join(AlarmKind, AlarmKind.id == Alarm.rule_id)
                   .where(Alarm.cleared_at.is_(None)).group_by(p.c.school).subquery("open_alarms"))
    filters = (select(p.c.school, func.count(func.distinct(latest_t.c.gateway + "/" + latest_t.c.device))
                      .label("filters"))
               .select_from(latest_t).join(p, p.c.id == latest_t.c.gateway)
               .where(latest_t.c.metric == "error_filter", latest_t.c.value.in_(['"warning"', '"error"']))
               .group_by(p.c.school).subquery("filters"))
    monday = week_monday(week_of)
    u = UsageDay.__table__.c
    measured = u.power_devices > 0
    week = (select(p.c.school,
                   func.sum(case((measured, u.periods), else_=0)).label("periods"),
                   func.sum(case((measured, u.used), else_=0)).label("used"),
                   func.sum(case((measured, 1), else_=0)).label("measured"),
                   func.sum(case((u.co2_devices > 0, u.co2_over_s), else_=0)).label("co2"),
                   func.sum(case((u.co2_devices > 0, 1), else_=0)).label("sensed"),
                   func.sum(case((u.meter_devices > 0, u.energy_kwh), else_=0.0)).label("kwh"),
                   func.sum(case((u.meter_devices > 0, 1), else_=0)).label("metered"))
            .select_from(UsageDay.__table__).join(p, p.c.id == u.gateway)
            .where(u.day >= monday, u.day <= monday + timedelta(days=6)).group_by(p.c.school).subquery("week"))
    rooms = (select(per_gateway.c.school, func.count().label("rooms"), func.sum(per_gateway.c.online).label("online"),
                    func.sum(per_gateway.c.offline).label("offline"), func.sum(per_gateway.c.faults).label("faults"))
             .group_by(per_gateway.c.school).subquery("rooms"))
    names = select(School.id.label("school"), School.name.label("name"))
    unknown = select(rooms.c.school, rooms.c.school).where(not_(exists(select(School.id).where(
        School.id == rooms.c.school))))
    every = union_all(names, unknown).subquery("every")
    columns = {
        "school": every.c.school, "name": every.c.name,
        "rooms": func.coalesce(rooms.c.rooms, 0), "online": func.coalesce(rooms.c.online, 0),
        "offline": func.coalesce(rooms.c.offline, 0), "faults": func.coalesce(rooms.c.faults, 0),
        "alarms": func.coalesce(open_alarms.c.alarms, 0), "active": func.coalesce(open_alarms.c.active, 0),
        "lamps_due": func.coalesce(open_alarms.c.lamps, 0), "filters_due": func.coalesce(filters.c.filters, 0),
        "usage_periods": case((week.c.measured > 0, week.c.periods), else_=None),
        "usage_used": case((week.c.measured > 0, week.c.used), else_=None),
        "co2_over_s": case((week.c.sensed > 0, week.c.co2), else_=None),
        "energy_kwh": case((week.c.metered > 0, week.c.kwh), else_=None)}
    # Sorted with nothing measured below every figure (-1), the same on both engines (they order NULL apart).
    sorts = {"usage_rate": case((and_(week.c.measured > 0, week.c.periods > 0),
                                 cast(week.c.used, Float) / week.c.periods), else_=-1.0),
             "co2_hours": case((week.c.sensed > 0, week.c.co2), else_=-1.0),
             "energy_kwh": case((week.c.metered > 0, week.c.kwh), else_=-1.0)}
    query = (select(*(v.label(k) for k, v in columns.items()), func.count().over().label("total"))
             .select_from(every).outerjoin(rooms, rooms.c.school == every.c.school)
             .outerjoin(open_alarms, open_alarms.c.school == every.c.school)
             .outerjoin(filters, filters.c.school == every.c.school)
             .outerjoin(week, week.c.school == every.c.school))
    return query, every, columns, sorts


def _school_rows(rows: list[Any], by_kind: dict[str, dict[str, int]]) -> list[SchoolRow]:
    return [SchoolRow(school=r.school, name=r.name or r.school, rooms=r.rooms, gateways=r.rooms,
                      online=int(r.online), offline=int(r.offline), alarms=int(r.alarms),
                      alarms_active=int(r.active), alarms_acknowledged=int(r.alarms) - int(r.active),
                      alarms_by_kind=by_kind.get(r.school, {}), faults=int(r.faults), lamps_due=int(r.lamps_due),
                      filters_due=int(r.filters_due), usage_periods=_whole(r.usage_periods),
                      usage_used=_whole(r.usage_used), co2_over_s=_whole(r.co2_over_s),
                      energy_kwh=None if r.energy_kwh is None else round(float(r.energy_kwh), 3))
            for r in rows]


def _alarms_by_kind(db: Database, ids: list[str] | None) -> dict[str, dict[str, int]]:
    """Open alarms per school and rule kind (of the schools `ids`; None: every school's): one statement."""
    p = places(db)
    query = (select(p.c.school, AlarmKind.kind, func.count()).select_from(Alarm)
             .join(p, p.c.id == Alarm.gateway).join(AlarmKind, AlarmKind.id == Alarm.rule_id)
             .where(Alarm.cleared_at.is_(None)).group_by(p.c.school, AlarmKind.kind))
    if ids is not None:
        query = query.where(p.c.school.in_(ids))
    by_kind: dict[str, dict[str, int]] = {s: {} for s in ids or ()}
    with db.read("cannot read the schools' alarms") as conn:
        for school, kind, count in conn.execute(query):
            by_kind.setdefault(school, {})[kind] = count
    return by_kind


def _check_sort(sort: str) -> None:
    if sort not in SCHOOL_SORTS:
        raise PayloadError(lazy_gettext("query parameter 'sort' must be one of %(sorts)s, got %(value)s",
                                        sorts=", ".join(SCHOOL_SORTS), value=repr(sort[:40])))


def schools(db: Database, paging: Paging, sort: str = "school", descending: bool = False,
            problems_only: bool = False, schools_in: tuple[str, ...] | None = None,
            week_of: date | None = None) -> Page[SchoolRow]:
    """One row per school (those matching `q` in the id or name), sorted by `sort` (one of SCHOOL_SORTS),
    paged, with the usage of the ISO week of `week_of` (default: today). The rollup is aggregated once:
    the total rides on the page's rows (a window count): two statements whatever the number of schools
    and rooms (the page and its schools' alarms by kind; past the end: the page, then a count). Each
    judges every room, though: the web process answers from `SchoolSnapshots` (`schools_cached`)."""
    _check_sort(sort)
    query, every, columns, sorts = _school_query(db, week_of)
    query = query.where(matches(paging.q, every.c.school, every.c.name))
    if schools_in is not None:
        query = query.where(every.c.school.in_(schools_in) if schools_in else false())
    if problems_only:
        query = query.where(or_(columns["offline"] > 0, columns["alarms"] > 0, columns["faults"] > 0))
    key = ordered(db, every.c.school) if sort == "school" else sorts.get(sort, columns.get(sort))
    order = [key.desc() if descending else key.asc(), ordered(db, every.c.school)]
    with db.read("cannot read the schools") as conn:
        rows = conn.execute(query.order_by(*order).limit(paging.limit).offset(paging.offset)).all()
        if rows:
            total = int(rows[0].total)
        else:  # a page past the end (or nothing matches): count alone
            total = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    ids = [r.school for r in rows]
    by_kind = _alarms_by_kind(db, ids) if ids else {}
    return Page(_school_rows(rows, by_kind), total)


# ---------------------------------------------------------------- the district's snapshot (a short-lived cache)


_FIGURE_SORTS = ("usage_rate", "co2_hours", "energy_kwh")  # sorted by `SchoolSnapshot.keys`, the rest by a field


@dataclass(frozen=True)
class SchoolSnapshot:
    """Every school's row of the rollup (`schools`) in code-point order of its id, read at `taken`
    (monotonic) for the ISO week of `monday`, with the unrounded keys the figures sort by (`keys`: the
    usage rate, the CO2 seconds and the kWh, -1 where nothing was measured, as the SQL sorts them)."""
    taken: float
    monday: date
    rows: tuple[SchoolRow, ...]
    keys: dict[str, dict[str, float]]


def school_snapshot(db: Database, week_of: date | None = None) -> SchoolSnapshot:
    """The whole district's rollup, every school: two statements, each one pass over the rooms."""
    query, every, _columns, sorts = _school_query(db, week_of)
    query = query.add_columns(*(v.label(f"key_{k}") for k, v in sorts.items())).order_by(
        ordered(db, every.c.school))
    taken = time.monotonic()
    with db.read("cannot read the schools") as conn:
        rows = conn.execute(query).all()
    by_kind = _alarms_by_kind(db, None)
    keys = {r.school: {k: float(getattr(r, f"key_{k}")) for k in sorts} for r in rows}
    return SchoolSnapshot(taken, week_monday(week_of), tuple(_school_rows(rows, by_kind)), keys)


def schools_cached(snapshots: BoardSnapshots, db: Database, paging: Paging, sort: str = "school",
                   descending: bool = False, problems_only: bool = False,
                   schools_in: tuple[str, ...] | None = None, week_of: date | None = None) -> Page[SchoolRow]:
    """`schools` from the process's snapshot of the district (`BoardSnapshots.schools`): the same rows,
    order and total, as of the snapshot, without judging a room per request. A search (`paging.q`) asks
    the database (`schools`): its case-folding is the engine's."""
    _check_sort(sort)
    if paging.q:
        return schools(db, paging, sort, descending, problems_only, schools_in, week_of)
    snap = snapshots.schools(db, week_of)
    rows: list[SchoolRow] = list(snap.rows)  # in code-point order: the tie-break of every sort
    if schools_in is not None:
        wanted = set(schools_in)
        rows = [r for r in rows if r.school in wanted]
    if problems_only:
        rows = [r for r in rows if r.offline > 0 or r.alarms > 0 or r.faults > 0]
    if sort == "school":
        if descending:
            rows.reverse()
    else:
        # A stable sort keeps the schools' order among equal keys, descending too (as SQL's second key).
        key: Callable[[SchoolRow], Any] = ((lambda r: snap.keys[r.school][sort]) if sort in _FIGURE_SORTS
                                           else attrgetter(sort))
        rows.sort(key=key, reverse=descending)
    return Page(rows[paging.offset:paging.offset + paging.limit], len(rows))


def _whole(value: Any) -> int | None:
    return None if value is None else int(round(float(value)))



def projector_hours(db: Database, metrics: tuple[str, ...], scope: Scope = EVERYTHING,
                    gateways: tuple[str, ...] | None = None
                    ) -> tuple[list[tuple[Any, ...]], dict[tuple[str, str], str]]:
    """The newest value of each of `metrics` (a projector part's hour counter) per gateway and device in
    `scope`, with its place and the usage rollup's rate of it (central/usage.py `PartRate`, None where it has
    none): (gateway, device, metric, value JSON, school, building, room, per_week, as_of, building_id); and
    the profile of every device the gateways report as a projector, by (gateway, device). `gateways`: only
    those gateways' (a few parts the maintenance list computes itself). Two statements whatever the
    district's size; central/maintenance.py turns them into the due list."""
    from central.usage import PartRate

    p = places(db)
    dev = reported_devices(db)
    profile = device_field(db, dev, "profile")
    kind = device_field(db, dev, "kind")
    rate = PartRate.__table__.c
    only = [latest_t.c.gateway.in_(gateways)] if gateways is not None else []
    hours = (select(latest_t.c.gateway, latest_t.c.device, latest_t.c.metric, latest_t.c.value, p.c.school,
                    p.c.building, p.c.room, rate.per_week, rate.as_of, p.c.building_id)
             .select_from(latest_t).join(p, p.c.id == latest_t.c.gateway)
             .outerjoin(PartRate.__table__, and_(rate.gateway == latest_t.c.gateway, rate.device == latest_t.c.device,
                                                 rate.metric == latest_t.c.metric))
             .where(latest_t.c.metric.in_(metrics), *place_filter(p, scope), *only))
    profiles = (select(gw_t.c.id, dev.c.key, profile).select_from(gw_t.join(dev, true()))
                .where(kind == "projector", *([gw_t.c.id.in_(gateways)] if gateways is not None else [])))
    with db.read("cannot read the projectors' hours") as conn:
        rows = [tuple(r) for r in conn.execute(hours)]
        projectors = {(gw, d): prof for gw, d, prof in conn.execute(profiles)}
    return rows, projectors


def _listed(now: float, max_age_s: float, rate_max_age_s: float) -> ColumnElement[bool]:
    """A `part_rates` row whose line the rollup wrote within `max_age_s` of `now`, rated within
    `rate_max_age_s` (the maintenance list's `abs(now - as_of) <= RATE_MAX_AGE_S`)."""
    from central.usage import PartRate

    r = PartRate.__table__.c
    return and_(r.listed_at.between(now - max_age_s, now + max_age_s),
                r.as_of.between(now - rate_max_age_s, now + rate_max_age_s))


def unlisted_parts(db: Database, metrics: tuple[str, ...], scope: Scope, now: float, max_age_s: float,
                   rate_max_age_s: float) -> set[tuple[str, str, str]]:
    """The (gateway, device, metric) of every newest part-hours value (`metrics`) that has no `part_rates`
    line as of `now` (a part that reported since the rollup's last round, a rollup not running, a list asked
    as of another time): those the maintenance list computes itself. One statement; usually none."""
    from central.usage import PartRate

    r = PartRate.__table__.c
    line = (select(literal(1)).select_from(PartRate.__table__)
            .where(r.gateway == latest_t.c.gateway, r.device == latest_t.c.device, r.metric == latest_t.c.metric,
                   _listed(now, max_age_s, rate_max_age_s)))
    where = [latest_t.c.metric.in_(metrics), not_(exists(line))]
    if scope.gateways is not None:
        where.append(latest_t.c.gateway.in_(scope.gateways) if scope.gateways else false())
    with db.read("cannot read the projectors' hours") as conn:
        return {(gw, d, m) for gw, d, m in conn.execute(
            select(latest_t.c.gateway, latest_t.c.device, latest_t.c.metric).where(*where))}


def part_rows(db: Database, scope: Scope, q: str | None, now: float, max_age_s: float, rate_max_age_s: float,
              within_weeks: float | None, limit: int, offset: int) -> tuple[list[Any], int]:
    """The maintenance list's lines the usage rollup keeps (`part_rates` as of `now`), in its order (due now,
    then by weeks left, undated last; then school, gateway, device and part in code-point order), within
    `scope` by the place the line was written with, matching `q` like every list, only those due within
    `within_weeks` if given: a page, and the count of all. Two statements whatever the district's size."""
    from central.usage import PartRate

    t = PartRate.__table__
    r = t.c
    where: list[ColumnElement[bool]] = [_listed(now, max_age_s, rate_max_age_s), r.hours.is_not(None)]
    if scope.gateways is not None:
        where.append(r.gateway.in_(scope.gateways) if scope.gateways else false())
    if scope.schools is not None:
        where.append(r.school.in_(scope.schools) if scope.schools else false())
    if scope.school:
        where.append(r.school == scope.school)
    if scope.building is not None:
        where.append(r.building_id == scope.building)
    if within_weeks is not None:
        where.append(r.weeks_left <= within_weeks)
    where.append(matches(q, r.school, r.building, r.room, r.gateway, r.device, r.profile))
    query = select(r.gateway, r.device, r.school, r.building, r.room, r.profile, r.part, r.hours, r.rated,
                   r.per_week, r.weeks_left).where(*where)
    order = [r.undated, r.weeks_left, *(ordered(db, c) for c in (r.school, r.gateway, r.device, r.part))]
    return page_of(db, query, order, Paging(limit=limit, offset=offset, q=q), "projectors' parts")


def _json_number(db: Any, value: Any) -> Any:
    """A `latest.value` (JSON text) as a number in SQL, for filtering only: a superset of what
    central/alarms.py `_num` accepts passes the same comparison (SQLite reads text that is not a number
    as 0; PostgreSQL casts only what looks like a number, NULL otherwise). The rules decide on the decoded
    value afterwards."""
    if db.dialect == "sqlite":
        return cast(value, Float)
    number = and_(value.op("~")(literal(r"^-?[0-9][0-9.eE+-]*$")), func.length(value) <= 308)
    return case((number, cast(value, Float)), else_=None)


def alarm_reads(db: Database, value_kinds: dict[str, dict[str, Any]], now: float
                ) -> tuple[set[str], set[str], dict[tuple[str, str], dict[str, Any]]]:
    """The ledger's part of an alarm round (central/overview.py `alarm_candidates`): the gateways offline at
    `now`, the online gateways with a device reported offline, and the newest values past a limit of the
    enabled rules' `value_kinds` (kind -> params) or an error that is not `ok`, by (gateway, device). Three
    statements whatever the district's size: a quiet room is read by none."""
    online = online_at(now)
    over: list[Any] = []
    num = _json_number(db, latest_t.c.value)
    metric = latest_t.c.metric
    if "co2_above" in value_kinds:
        over.append(and_(metric == "co2_ppm", num > float(value_kinds["co2_above"].get("ppm", 1500))))
    if "temperature_range" in value_kinds:
        p = value_kinds["temperature_range"]
        over.append(and_(metric == "temperature_c", or_(num < float(p.get("min", 16)), num > float(p.get("max", 30)))))
    if "lamp_hours_above" in value_kinds:
        over.append(and_(metric == "lamp_hours", num > float(value_kinds["lamp_hours_above"].get("hours", 3000))))
    if "projector_error" in value_kinds:
        # Index 0 of an error enum is "ok" (campus/contract.py metric_enum), as is the text "ok".
        over.append(and_(metric.like("error\\_%", escape="\\"),
                         latest_t.c.value.not_in(['"ok"', "0", "0.0", "-0.0"])))
    with db.read("cannot read the gateways") as conn:
        offline = set(conn.scalars(select(gw_t.c.id).where(not_(online))))
        devices_off = set(conn.scalars(select(gw_t.c.id).where(online, _reported_status(db, "offline"))))
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        if over:
            rows = conn.execute(select(latest_t.c.gateway, latest_t.c.device, metric, latest_t.c.value)
                                .where(or_(*over)))
            for gw, dev, name, value in rows:
                latest.setdefault((gw, dev), {})[name] = json.loads(value)
    return offline, devices_off, latest


# ---------------------------------------------------------------- the panel's "why"


def _room_events() -> Select[Any]:
    """`room_events`' statement, built once with bind parameters (`ids`, `types`, `since`, `per_room`): the
    panel's poller runs it several times a second, often for a few rooms, where building it cost more than
    running it (central/ledger.py `_room_reads`)."""
    e = events_t.c
    rank = func.row_number().over(partition_by=e.gateway, order_by=(e.ts.desc(), e.seq.desc())).label("rank")
    ranked = (select(e.gateway, e.device, e.seq, e.ts, e.type, e.data, rank)
              .where(e.gateway.in_(bindparam("ids", expanding=True)), e.type.in_(bindparam("types", expanding=True)),
                     e.ts >= bindparam("since")).subquery())
    r = ranked.c
    return (select(r.gateway, r.device, r.seq, r.ts, r.type, r.data).where(r.rank <= bindparam("per_room"))
            .order_by(r.ts.desc(), r.seq.desc()))


_ROOM_EVENTS = _room_events()


def room_events(db: Database, gateways: list[str], types: tuple[str, ...], per_room: int,
                since: float) -> dict[str, list[dict[str, Any]]]:
    """The newest `per_room` events of `types` of each of `gateways` since `since`, newest first, in one
    statement whatever the number of gateways (a window function over the events' gateway-first key): what
    the classroom panel's poller reads each tick for every room with an open stream (central/room_actions.py)."""
    ids = sorted(set(gateways))
    if not ids or not types or per_room <= 0:
        return {}
    with db.read("cannot read the rooms' events") as conn:
        rows = conn.execute(_ROOM_EVENTS, {"ids": ids, "types": sorted(set(types)), "since": since,
                                           "per_room": per_room}).all()
    out: dict[str, list[dict[str, Any]]] = {}
    for g, d, seq, ts, t, data in rows:
        try:
            body = json.loads(data)
        except ValueError:
            continue
        out.setdefault(g, []).append({"gateway": g, "device": d, "seq": seq, "ts": ts, "type": t,
                                      "data": body if isinstance(body, dict) else {}})
    return out


# ---------------------------------------------------------------- attendance (central/attendance.py)


def attendance_events(db: Database, gateways: list[str], start: float, end: float,
                      types: tuple[str, ...]) -> list[tuple[str, float, str, Any]]:
    """The swipes and check-ins (`types`) of `gateways` from `start` to `end` (excluded), oldest first, as
    (gateway, ts, type, data): one statement for a room's day, or a school's week."""
    if not gateways:
        return []
    e = events_t.c
    query = (select(e.gateway, e.ts, e.type, e.data)
             .where(e.gateway.in_(gateways), e.type.in_(types), e.ts >= start, e.ts < end).order_by(e.ts))
    with db.read("cannot read the attendance events") as conn:
        rows = conn.execute(query).all()
    out = []
    for gateway, ts, type_, data in rows:
        try:
            out.append((gateway, ts, type_, json.loads(data)))
        except ValueError:  # a row the ledger wrote is JSON; one that is not is no swipe
            continue
    return out


def oldest_attendance_event(db: Database, gateways: list[str], types: tuple[str, ...]) -> float | None:
    """The time of the oldest swipe or check-in of `gateways` (the retention's first day to reduce)."""
    e = events_t.c
    with db.read("cannot read the attendance events") as conn:
        return conn.execute(select(func.min(e.ts)).where(e.gateway.in_(gateways), e.type.in_(types))).scalar()
