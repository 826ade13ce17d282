"""What central knows, joined: the ledger (what gateways said) with the registry (what IT registered).

The ledger and the registry are two halves of one picture: a room is
registered before its gateway is mounted ("not installed yet"), a gateway
reports devices nobody provisioned, a provisioned device may never report.
Each page and background job used to join them itself (the board, the
alarm snapshot, a schedule's targets, the provisioning list); here is the
one place they are joined, each answer a dataclass.

Rules this module keeps (tests/test_service.py checks them): it reads the
ledger only through `Ledger` methods, never its tables, and no view
(dashboards/) runs a query of its own; the views call these functions.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import select

from campus import contract
from campus.i18n import LazyText, ReportedText
from central import alarms as alarm_engine
from central import lists
from central import provisioning as prov
from central.ledger import Ledger
from central.registry import Building, Device, Gateway, Registry, Room, School

PROBLEMS = ("offline", "fault", "alarm")
# A registered gateway that has never sent a message, and its devices: not a problem, no alarms yet.
NOT_INSTALLED = "not installed yet"
NEVER_REPORTED = "never reported"


def profile_kind(profile: str) -> str:
    """The device kind of a shipped profile; "" for a profile that cannot be read (not a target, no kind)."""
    try:
        from device_profiles import load_profile

        return load_profile(profile).kind
    except Exception:  # noqa: BLE001 - an unknown profile: no kind
        return ""


# ---------------------------------------------------------------- places (registry)


@dataclass(frozen=True)
class BuildingRef:
    id: int
    school: str
    name: str


@dataclass(frozen=True)
class Places:
    """The schools and buildings the filters of the board and the schedule forms offer."""
    schools: list[str]
    buildings: list[BuildingRef]

    def building_names(self) -> dict[int, str]:
        return {b.id: b.name for b in self.buildings}


def places(registry: Registry, scope: lists.Scope = lists.EVERYTHING) -> Places:
    """The schools and buildings (of `scope.schools`, for a school-scoped account)."""
    # Sorted here, in code-point order: SQL's string order is the database's collation (PostgreSQL's is
    # the cluster's locale, SQLite's is binary), and the filters must read the same on both engines.
    schools_q, buildings_q = select(School.id), select(Building)
    if scope.schools is not None:
        schools_q = schools_q.where(School.id.in_(scope.schools))
        buildings_q = buildings_q.where(Building.school_id.in_(scope.schools))
    with registry.session() as s:
        schools = sorted(s.scalars(schools_q))
        buildings = sorted((BuildingRef(b.id, b.school_id, b.name) for b in s.scalars(buildings_q)),
                           key=lambda b: (b.school, b.name))
    return Places(schools, buildings)


# ---------------------------------------------------------------- the alarm engine's view


def alarm_snapshot(registry: Registry, ledger: Ledger) -> alarm_engine.Snapshot:
    """Everything the alarm rules look at, now: the ledger's gateways, devices and values, and when each
    registered gateway was registered (one never heard of is not installed yet, not offline)."""
    with registry.session() as s:
        registered = {gid: created for gid, created in s.execute(select(Gateway.id, Gateway.created))}
    return alarm_engine.Snapshot(gateways=ledger.gateways(), devices=ledger.gateway_devices(),
                                 latest=ledger.latest(), device_seen=ledger.latest_times(), registered=registered)


# Past this many gateways to look up, the registry's (id, created) are read whole: one statement either way.
_CREATED_BY_ID = 2000


def alarm_candidates(registry: Registry, ledger: Ledger, rules: Iterable[alarm_engine.Rule],
                     also: Collection[str] = ()) -> alarm_engine.Snapshot:
    """What the alarm rules need to reach the verdicts of `alarm_snapshot`, read with the rules' limits in
    SQL (issue 19: a round of the monitor read every gateway, device and value of the district, 1.3-1.9 s
    of CPU every 5 s at 10,000 rooms; docs/benchmarks.md 11e): the gateways that are offline, the devices
    reported offline on an online gateway (and their newest sample), the values past a rule's limit or an
    error that is not `ok`, and the gateways of `also` (those with an open alarm: whether they are offline
    or not installed decides whether it is held). A quiet room is read by none of these, so the
    statements and rows do not grow with the rooms; `conditions()` and `held_keys()` judge this snapshot
    exactly as they judge the whole one."""
    db = ledger.db
    now = time.time()  # "online" now, as the ledger's readers decide it (central/ledger.py `online_at`)
    value_kinds: dict[str, dict[str, Any]] = {r.kind: r.params for r in rules if r.enabled}
    offline, devices_off, latest = lists.alarm_reads(db, value_kinds, now)
    wanted = offline | devices_off | set(also)
    gateways = ledger.gateways(ids=wanted) if wanted else []
    devices = ([d for d in ledger.gateway_devices(ids=devices_off) if d["status"] == "offline"]
               if devices_off else [])
    device_seen = ledger.latest_times(ids=devices_off) if devices_off else {}
    need = offline | set(also)
    with registry.session() as s:
        query = select(Gateway.id, Gateway.created)
        if len(need) <= _CREATED_BY_ID:
            query = query.where(Gateway.id.in_(list(need)))
        registered = {gid: created for gid, created in s.execute(query) if gid in need}
    return alarm_engine.Snapshot(gateways=gateways, devices=devices, latest=latest, device_seen=device_seen,
                                 registered=registered)


# ---------------------------------------------------------------- a schedule's targets


@dataclass(frozen=True)
class Target:
    """A device a schedule sends its action to; `status` "never reported" for one only provisioned."""
    gateway: str
    school: str
    room: str
    device: str
    kind: str
    status: str


def schedule_targets(schedule: Any, registry: Registry, ledger: Ledger) -> list[Target]:
    """Every device the schedule applies to: registry gateways in scope, their devices of its kinds (as
    reported to the ledger, else as provisioned)."""
    kinds = {k.strip() for k in (schedule.kinds or "").split(",") if k.strip()}
    with registry.session() as s:
        q = select(Gateway.id, Gateway.school_id, Room.name, Room.building_id).outerjoin(
            Room, Gateway.room_id == Room.id)
        if schedule.school_id:
            q = q.where(Gateway.school_id == schedule.school_id)
        if schedule.building_id is not None:
            q = q.where(Room.building_id == schedule.building_id)
        gateways = {gid: (school, room or "") for gid, school, room, _b in s.execute(q)}
        provisioned = {(d.gateway_id, d.device_id): d.profile for gw in s.scalars(
            select(Gateway).where(Gateway.id.in_(list(gateways)))) for d in gw.devices}
    out: list[Target] = []
    reported = set()
    for dev in ledger.gateway_devices():
        place = gateways.get(dev["gateway"])
        if place is None:
            continue
        reported.add((dev["gateway"], dev["id"]))
        if dev.get("kind") in kinds:
            out.append(Target(dev["gateway"], place[0], place[1], dev["id"], dev["kind"], dev["status"]))
    for (gid, device), profile in sorted(provisioned.items()):
        if (gid, device) in reported:
            continue
        kind = profile_kind(profile)
        if kind in kinds:
            out.append(Target(gid, gateways[gid][0], gateways[gid][1], device, kind, NEVER_REPORTED))
    return sorted(out, key=lambda t: (t.gateway, t.device))


# ---------------------------------------------------------------- the equipment board


@dataclass
class BoardDevice:
    id: str
    kind: str
    profile: str
    status: str
    last_seen: float | None
    latest: dict[str, Any]
    # Why it is in fault or offline, as its gateway wrote it (a ReportedText: shown in the reader's language).
    detail: str | LazyText | None = None


@dataclass
class BoardAlarm:
    id: int
    device: str
    message: str
    label: str
    state: str
    acked_by: str | None
    raised_at: float


@dataclass
class BoardRoom:
    """A room (a gateway) as the board shows it."""
    gateway: str
    school: str
    building: str
    building_id: int | None
    room: str
    online: bool
    last_seen: float | None
    reported: bool
    clock_offset: float | None
    clock_wrong: bool
    installed: bool
    # Messages the gateway holds until central acknowledges them, and the oldest one's age.
    waiting: int | None
    waiting_age: float | None
    waiting_long: bool
    registered: bool
    problems: list[str] = field(default_factory=list)
    devices: list[BoardDevice] = field(default_factory=list)
    alarms: list[BoardAlarm] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Board:
    now: float
    rooms: list[BoardRoom]
    counts: dict[str, int]
    # Rooms matching the filters (all pages), and the page's slice: problems first (central/lists.py).
    total: int = 0
    limit: int = lists.DEFAULT_LIMIT
    offset: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The board as `/api/board` answers it."""
        return asdict(self)

    def room(self, gateway: str) -> BoardRoom | None:
        return next((r for r in self.rooms if r.gateway == gateway), None)


def board(registry: Registry, ledger: Ledger, school: str | None = None, building: int | None = None,
          problem: str | None = None, paging: lists.Paging | None = None,
          scope: lists.Scope = lists.EVERYTHING, snapshots: lists.BoardSnapshots | None = None) -> Board:
    """A page of the rooms (gateways) with their devices, status, last seen and open alarms, those with a
    problem first, filtered by school, building and problem ("any" or one of PROBLEMS) and `paging.q`,
    within `scope`'s rights (what the caller may see; `Scope()`: all); `counts` are of every room in
    sight, before the filters. The page is chosen and counted in SQL; only its rooms' details are read: a dozen
    statements, whatever the number of rooms. With `snapshots` (the web process's), the ranking and counts
    come from its snapshot of the district (at most its `ttl` old): the request reads only its page."""
    paging = paging or lists.Paging()
    if snapshots is not None:
        page, counts = lists.board_ids_cached(snapshots, registry.db, paging, scope.narrowed(school, building),
                                              problem)
    else:
        page, counts = lists.board_ids(registry.db, paging, scope.narrowed(school, building), problem)
    ids = page.items
    gw_places = alarm_engine.gateway_places(registry, ids=ids) if ids else {}
    reported = {gw["id"]: gw for gw in ledger.gateways(ids=ids)} if ids else {}
    latest = ledger.latest(ids) if ids else {}
    seen = ledger.latest_times(ids) if ids else {}
    devices: dict[str, list[BoardDevice]] = {}
    for dev in ledger.gateway_devices(ids=ids) if ids else []:
        key = (dev["gateway"], dev["id"])
        devices.setdefault(dev["gateway"], []).append(
            BoardDevice(dev["id"], dev["kind"], dev["profile"], dev["status"], seen.get(key), latest.get(key, {}),
                        dev["detail"]))
    with registry.session() as s:
        provisioned = [(d.gateway_id, d.device_id, d.profile)
                       for d in s.scalars(select(Device).where(Device.gateway_id.in_(ids)))] if ids else []
    for gid, device_id, profile in provisioned:
        mine = devices.setdefault(gid, [])
        if not any(x.id == device_id for x in mine):
            mine.append(BoardDevice(device_id, profile_kind(profile), profile,
                                    NEVER_REPORTED if gid in reported else NOT_INSTALLED, None, {}))
    open_alarms: dict[str, list[BoardAlarm]] = {}
    for a in alarm_engine.list_alarms(registry, "open", limit=20 * len(ids), gateways=ids) if ids else []:
        open_alarms.setdefault(a["gateway"], []).append(
            BoardAlarm(a["id"], a["device"], a["message"], a["label"], a["state"], a["acked_by"], a["raised_at"]))
    rooms = []
    for gid in ids:  # in the page's order: problems first
        place, gw = gw_places.get(gid, {}), reported.get(gid)
        devs = sorted(devices.get(gid, []), key=lambda d: d.id)
        online = bool(gw and gw["online"])
        problems = []
        # A gateway that never sent a message is not installed yet: nothing there is offline (nor alarmed).
        if gw is not None and (not online or any(d.status in ("offline", NEVER_REPORTED) for d in devs)):
            problems.append("offline")
        if gw and gw["storage"].get("status", "ok") != "ok":
            problems.append("storage")  # the gateway's own disk: its devices keep their status
        if any(d.status == "fault" for d in devs):
            problems.append("fault")
        if open_alarms.get(gid):
            problems.append("alarm")
        rooms.append(BoardRoom(
            gateway=gid, school=place.get("school") or (gw or {}).get("school", ""),
            building=place.get("building", ""), building_id=place.get("building_id"),
            room=place.get("room") or (gw or {}).get("room", ""), online=online,
            last_seen=gw["last_seen"] if gw else None, reported=gw is not None,
            clock_offset=gw["clock_offset"] if gw else None, clock_wrong=bool(gw and gw["clock_wrong"]),
            installed=gw is not None, waiting=gw["waiting"] if gw else None,
            waiting_age=gw["waiting_age"] if gw else None, waiting_long=bool(gw and gw["waiting_long"]),
            registered=gid in gw_places, problems=problems, devices=devs, alarms=open_alarms.get(gid, []),
            notes=prov.storage_notes(gw) if gw else []))
    return Board(time.time(), rooms, counts, page.total, paging.limit, paging.offset)


def board_room(registry: Registry, ledger: Ledger, gateway: str) -> BoardRoom | None:
    """One room as the board shows it (its history page), without reading the others."""
    return board(registry, ledger, paging=lists.Paging(limit=1), scope=lists.Scope((gateway,))).room(gateway)


# ---------------------------------------------------------------- rooms a person may pick (panel)


@dataclass(frozen=True)
class RoomPresence:
    """A room registered or reporting, and whether its gateway is online (the panel's room picker)."""
    gateway: str
    room: str
    school: str
    building: str
    online: bool
    reported: bool


def room_presence(registry: Registry, ledger: Ledger, paging: lists.Paging | None = None,
                  scope: lists.Scope = lists.EVERYTHING) -> lists.Page[RoomPresence]:
    """A page of the registered or reporting rooms (within `scope`), by school and gateway."""
    page = lists.gateway_ids(registry.db, paging or lists.Paging(), scope)
    if not page.items:
        return lists.Page([], page.total)
    places = alarm_engine.gateway_places(registry, ids=page.items)
    reported = {gw["id"]: gw for gw in ledger.gateways(ids=page.items)}
    rows = []
    for gid in page.items:
        place, gw = places.get(gid), reported.get(gid)
        room = (place or {}).get("room") or (gw or {}).get("room") or gid
        rows.append(RoomPresence(gateway=gid, room=room, school=(place or gw or {}).get("school", ""),
                                 building=(place or {}).get("building", ""), online=bool(gw and gw["online"]),
                                 reported=gw is not None))
    return lists.Page(rows, page.total)


# ---------------------------------------------------------------- gateways as IT staff provision them


@dataclass
class ProvisionedGateway:
    """A registered gateway beside what its agent last said: config versions wanted (registry), pushed and
    applied (ledger), whether they agree (`sync`), and its storage notes."""
    id: str
    school: str
    room: str
    building: str
    mqtt_username: str
    config_version: int
    devices: list[dict[str, Any]]        # provisioned (registry)
    online: bool
    seen: float | None
    reported: dict[str, Any]             # reported by the agent (ledger), by device id
    applied: int | None
    pushed: int | None
    pushed_at: float | None
    sync_class: str
    sync: str
    rejected: dict[str, Any] | None      # the newest config_rejected event
    # Its error as the gateway marked it (campus/contract.py EVENT_TEXTS): shown in the reader's language.
    rejected_text: str | ReportedText | None
    applied_event: dict[str, Any] | None
    storage_notes: list[dict[str, str]]


def provisioned_gateways(registry: Registry, ledger: Ledger, paging: lists.Paging | None = None,
                         only: str | None = None, scope: lists.Scope = lists.EVERYTHING) -> lists.Page[ProvisionedGateway]:
    """A page of the registered gateways of `scope.schools` (or just `only`, if it is one of them), as the
    provisioning pages list them: a few statements for the page, whatever its length or the district's."""
    if only is not None:
        info = registry.gateway_info(only)
        found = info is not None and scope.allows_school(info["school"])
        page: lists.Page[str] = lists.Page([only] if found else [], 1 if found else 0)
    else:
        page = lists.registered_ids(registry.db, paging or lists.Paging(), scope)
    ids = page.items
    states = prov.gateway_states(ledger, ids) if ids else {}
    pushed = prov.pushed_versions(registry, ids) if ids else {}
    infos = registry.gateway_infos(ids) if ids else {}
    config_events = prov.config_events(ledger, ids) if ids else {}
    rows = []
    for info in (infos[gid] for gid in ids if gid in infos):
        st = states.get(info["id"], {})
        applied = st.get("config_version")
        push = pushed.get(info["id"])
        events = config_events[info["id"]]
        css, words = prov.sync_status(info["config_version"], push["version"] if push else None, applied,
                                      bool(st.get("online")), events["rejected"])
        rows.append(ProvisionedGateway(
            id=info["id"], school=info["school"], room=info["room"], building=info["building"],
            mqtt_username=info["mqtt_username"], config_version=info["config_version"], devices=info["devices"],
            online=bool(st.get("online")), seen=st.get("last_seen"), reported=_with_details(st),
            applied=applied, pushed=push["version"] if push else None, pushed_at=push["at"] if push else None,
            sync_class=css, sync=words, rejected=events["rejected"], applied_event=events["applied"],
            rejected_text=contract.marked_text((events["rejected"] or {}).get("data"), "error"),
            # IT staff see a replaced outbox however old it is (the board: a week).
            storage_notes=prov.storage_notes(st, replaced_within=None) if st else []))
    return lists.Page(rows, page.total)


# ---------------------------------------------------------------- gateways as the API lists them


def api_gateways(registry: Registry, ledger: Ledger, paging: lists.Paging | None = None,
                 scope: lists.Scope = lists.EVERYTHING) -> lists.Page[dict[str, Any]]:
    """A page of the gateways the ledger knows (it sent something: `installed`) and those only registered so
    far (`installed: false`, "not installed yet": they raise no alarm until their first message), by school,
    within `scope`. Plain dicts: their keys are the JSON API's (CONTRACT.md `GET /api/gateways`)."""
    page = lists.gateway_ids(registry.db, paging or lists.Paging(), scope)
    if not page.items:
        return lists.Page([], page.total)
    reported = {gw["id"]: {**gw, "installed": True} for gw in ledger.gateways(ids=page.items)}
    places = alarm_engine.gateway_places(registry, ids=[gid for gid in page.items if gid not in reported])
    rows = [reported.get(gid) or {
        "id": gid, "school": places.get(gid, {}).get("school", ""), "room": places.get(gid, {}).get("room", ""),
        "online": False, "last_seen": None, "received": 0, "gaps": 0, "duplicates": 0, "outbox": {}, "agent": "",
        "installed": False} for gid in page.items]
    return lists.Page(rows, page.total)


def api_devices(ledger: Ledger, paging: lists.Paging | None = None,
                scope: lists.Scope = lists.EVERYTHING) -> lists.Page[dict[str, Any]]:
    """A page of the devices the agents reported (within `scope`), with their latest values (CONTRACT.md
    `GET /api/devices`)."""
    page = lists.reported_device_keys(ledger.db, paging or lists.Paging(), scope)
    ids = sorted({gw for gw, _ in page.items})
    if not ids:
        return lists.Page([], page.total)
    latest = ledger.latest(ids)
    devices = {(d["gateway"], d["id"]): d for d in ledger.gateway_devices(ids=ids)}
    return lists.Page([{**devices[key], "latest": latest.get(key, {})} for key in page.items if key in devices],
                      page.total)


def api_commands(ledger: Ledger, paging: lists.Paging | None = None, gateway: str | None = None,
                 scope: lists.Scope = lists.EVERYTHING) -> lists.Page[dict[str, Any]]:
    """A page of the command audit trail (within `scope`), newest first (CONTRACT.md `GET /api/commands`)."""
    page = lists.command_ids(ledger.db, paging or lists.Paging(), gateway, scope)
    found = {c["id"]: c for c in ledger.commands_of(page.items)} if page.items else {}
    return lists.Page([found[cid] for cid in page.items if cid in found], page.total)


def school_rollup(registry: Registry, paging: lists.Paging | None = None, sort: str = "school",
                  descending: bool = False, problems_only: bool = False,
                  scope: lists.Scope = lists.EVERYTHING,
                  snapshots: lists.BoardSnapshots | None = None,
                  week_of: date | None = None) -> lists.Page[lists.SchoolRow]:
    """The district: one row per school (of `scope.schools`; central/lists.py `schools`). With `snapshots`
    (the web process's), from its snapshot of the district, at most its `ttl` old: rolling the schools up
    judges every room (415 ms of CPU at 10,000 rooms, docs/benchmarks.md 11g), once per `ttl` for every
    request instead of per request. The usage and CO2 figures are of `week_of`'s week (the site's today;
    None: `lists.week_monday`'s)."""
    if snapshots is not None:
        return lists.schools_cached(snapshots, registry.db, paging or lists.Paging(), sort, descending,
                                    problems_only, scope.schools, week_of)
    return lists.schools(registry.db, paging or lists.Paging(), sort, descending, problems_only, scope.schools,
                         week_of)


def _with_details(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The devices a gateway's last state reported, each with its `detail` (why it is in fault or offline, as the
    gateway wrote it: `contract.device_detail`), none while the gateway is offline."""
    details = state.get("device_details") or {} if state.get("online") else {}
    return {dev: {**info, "detail": contract.device_detail(details.get(dev))}
            for dev, info in (state.get("devices") or {}).items()}
