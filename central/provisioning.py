"""Provisioning operations IT staff need beyond `Registry`'s own methods.

Built on the registry's session and models (nothing here edits registry.py):

- places: create a school with a display name; list schools, buildings, rooms
  and the gateways in them;
- gateways: a fresh MQTT password for a gateway that lost its own; the
  ready-to-copy gateway YAML (the registry's `gateway_config`, without the
  `config_version` key the agent's config file does not accept);
- config push: publish the retained device list on the gateway's `config`
  topic, remember which version was pushed (table `config_pushes`), and read
  back from the ledger which version each agent applied (`state.config_version`)
  or refused (`config_rejected` event); a "push all" over a district's
  gateways records its outcome per gateway in `config_push_runs`, where the
  page reads it (it outgrew the session cookie it was once kept in);
- CSV import of rooms, gateways and devices: every line is checked first, each
  error names its line and column, and nothing is written unless every line is
  right; the writes happen in one transaction.

CSV format (UTF-8, or GB18030 as saved by a Chinese Excel; header row required,
columns in any order, `#` starts a comment line):

    school,building,room,gateway,device,profile,address,options

- `school`, `room` (required): the room is created if missing (and the school).
- `building`: optional; sets the room's building.
- `gateway`: optional; a new gateway id is registered in that room and gets
  MQTT credentials (shown once after the import); an existing one must be in
  that room.
- `device`, `profile`, `address`, `options`: optional; a device on the gateway,
  added or replaced, validated exactly as the agent validates its config.
  `address`/`options` are a JSON object (`{"host": "10.0.0.5", "port": 502}`) or
  `key=value` pairs separated by `;` (`host=10.0.0.5; port=502`), where values
  that look like whole numbers become numbers (use JSON for a text that looks
  like a number, such as a numeric PJLink password).
"""

from __future__ import annotations

import csv
import io
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from sqlalchemy import JSON, Float, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from campus import contract, names
from campus.errors import CampusError, ConfigError, PayloadError
from campus.i18n import N_, LazyText, lazy_gettext, message_of
from central.db import Base
from central.registry import (
    Building,
    Device,
    Gateway,
    Registry,
    Room,
    School,
    gateway_account,
    mosquitto_password_hash,
)

IMPORT_COLUMNS = ("school", "building", "room", "gateway", "device", "profile", "address", "options")
REQUIRED_COLUMNS = ("school", "room")
MAX_IMPORT_ROWS = 5000
PUSH_ACK_TIMEOUT_S = 5.0


class ConfigPush(Base):
    """The device list version last published (retained) for a gateway."""
    __tablename__ = "config_pushes"
    gateway_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    pushed_at: Mapped[float] = mapped_column(Float, default=time.time)
    pushed_by: Mapped[str] = mapped_column(String(64), default="")


class ConfigPushRun(Base):
    """One "push all": who started it, when, and what became of each gateway (pushed with its version,
    or the failure that stopped the run; gateways after a failure are left for the next run)."""
    __tablename__ = "config_push_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    by: Mapped[str] = mapped_column(String(64), default="")
    started: Mapped[float] = mapped_column(Float, default=time.time)
    finished: Mapped[float | None] = mapped_column(Float, nullable=True)
    wanted: Mapped[int] = mapped_column(Integer, default=0)
    pushed: Mapped[list[list[Any]]] = mapped_column(JSON, default=list)   # [[gateway, version], ...]
    failed: Mapped[list[list[Any]]] = mapped_column(JSON, default=list)   # [[gateway, error], ...]


def ensure_tables(registry: Registry) -> None:
    """Nothing to do: the tables are made by the central database's migrations (central/migrations)."""


# ---------------------------------------------------------------- places


def create_school(registry: Registry, school_id: str, name: str = "") -> None:
    names.identifier(school_id, "school id")
    name = names.display_name(name, "school name", max_chars=names.SCHOOL_NAME_MAX, required=False)
    with registry.session() as s:
        school = s.get(School, school_id)
        if school is None:
            s.add(School(id=school_id, name=name or school_id))
        elif name:
            school.name = name


def places(registry: Registry, schools_in: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Every school (of `schools_in`, if given) with its rooms (building, gateways) in name order:
    code-point order, sorted here, not in SQL, whose string order is the database's collation
    (PostgreSQL's is the cluster's locale, SQLite's is binary), so that both engines list them alike."""
    school_q, room_q, building_q = select(School), select(Room), select(Building)
    gateway_q = select(Gateway.id, Gateway.room_id)
    if schools_in is not None:
        school_q = school_q.where(School.id.in_(schools_in))
        room_q = room_q.where(Room.school_id.in_(schools_in))
        building_q = building_q.where(Building.school_id.in_(schools_in))
        gateway_q = gateway_q.where(Gateway.school_id.in_(schools_in))
    with registry.session() as s:
        schools = sorted(s.scalars(school_q).all(), key=lambda x: x.id)
        rooms = sorted(s.scalars(room_q).all(), key=lambda r: (r.school_id, r.name))
        buildings = sorted(s.scalars(building_q).all(), key=lambda b: b.name)
        gateways = s.execute(gateway_q).all()
        by_room: dict[int, list[str]] = {}
        for gid, room_id in gateways:
            if room_id is not None:
                by_room.setdefault(room_id, []).append(gid)
        out = []
        for school in schools:
            out.append({
                "id": school.id, "name": school.name,
                "buildings": [b.name for b in buildings if b.school_id == school.id],
                "rooms": [{"id": r.id, "name": r.name, "building": r.building.name if r.building else "",
                           "gateways": sorted(by_room.get(r.id, []))}
                          for r in rooms if r.school_id == school.id],
            })
        return out


# ---------------------------------------------------------------- gateways


def new_gateway_password(registry: Registry, gateway: str) -> str:
    """Replace a gateway's MQTT password; returns the new plain password (shown once)."""
    password = secrets.token_urlsafe(18)
    with registry.session() as s:
        gw = s.get(Gateway, gateway)
        if gw is None:
            raise ConfigError(f"no gateway {gateway!r}")
        gw.mqtt_password_hash = mosquitto_password_hash(password)
    return password


def check_record(info: dict[str, Any], *, display_names: bool = True) -> dict[str, Any]:
    """A gateway's registry record (`Registry.gateway_info`) checked again before it leaves central.

    The second wall: a name written straight into the database (not through the forms, the
    import or the registry's methods) must not reach a gateway's YAML or its config message.
    `display_names=False`: the ids only, for a message that carries no room or building."""
    try:
        names.identifier(info["id"], "gateway")
        names.identifier(info["school"], "school")
        if display_names:
            names.display_name(info["room"], "room", max_chars=names.ROOM_MAX, required=False)
            names.display_name(info["building"], "building", max_chars=names.BUILDING_MAX, required=False)
        for device in info.get("devices", []):
            names.identifier(device["id"], "device")
    except ConfigError as exc:
        raise ConfigError(f"gateway {info['id']!r} in the registry: {exc}; correct the record") from None
    return info


def gateway_yaml(registry: Registry, gateway: str, mqtt_url: str | None, password: str = "CHANGE-ME") -> str:
    """The gateway config file to copy onto the gateway, as YAML text with a short header.

    The header names ids only: a comment is a line too, and YAML escapes values, not comments."""
    info = registry.gateway_info(gateway)
    if info is None:
        raise ConfigError(f"no gateway {gateway!r}")
    check_record(info)
    config = registry.gateway_config(gateway, mqtt_url or "mqtt://broker-host:1883", password)
    version = config.pop("config_version", None)
    header = (f"# campus-iot gateway {gateway} of school {config['school']}, from the registry "
              f"(device list v{version}).\n"
              f"# Run it with: campus agent --config {gateway}.yaml\n"
              "# Keep this file secret: it holds the gateway's MQTT password and the school's card secret.\n")
    return header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def pushed_versions(registry: Registry, ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The device list version last pushed to each gateway (of `ids`, a page, if given)."""
    ensure_tables(registry)
    query = select(ConfigPush) if ids is None else select(ConfigPush).where(ConfigPush.gateway_id.in_(ids))
    with registry.session() as s:
        return {p.gateway_id: {"version": p.version, "at": p.pushed_at, "by": p.pushed_by}
                for p in s.scalars(query).all()}


def push_config(registry: Registry, client: Any, gateway: str, by: str = "", site_zone: ZoneInfo | None = None) -> int:
    """Publish the gateway's device list retained on its `config` topic; returns the version pushed.

    `client` is a connected paho client (the web app's). Waits for the broker's PUBACK. `site_zone`: the
    zone its schedules are planned in when its school has no timetable (`campus web --timezone`).
    """
    info = registry.gateway_info(gateway)
    if info is None:
        raise ConfigError(f"no gateway {gateway!r}")
    check_record(info, display_names=False)  # the device list names no room: a legacy room name does not block it
    from central import podium  # the device list with the school's card secret and the room's podium

    payload = podium.config_payload(registry, gateway, site_zone=site_zone)
    if len(payload) > contract.MAX_PAYLOAD_BYTES:
        raise ConfigError(f"the device list of {gateway} is {len(payload)} bytes, over {contract.MAX_PAYLOAD_BYTES}")
    try:
        msg = client.publish(contract.config_topic(info["school"], gateway), payload, qos=1, retain=True)
        msg.wait_for_publish(timeout=PUSH_ACK_TIMEOUT_S)
    except (RuntimeError, ValueError) as exc:
        raise CampusError(f"cannot publish to the broker: {exc}") from None
    if not msg.is_published():
        raise CampusError(f"the broker did not acknowledge the config of {gateway} within {PUSH_ACK_TIMEOUT_S:g} s")
    ensure_tables(registry)
    with registry.session() as s:
        row = s.get(ConfigPush, gateway) or ConfigPush(gateway_id=gateway)
        row.version, row.pushed_at, row.pushed_by = info["config_version"], time.time(), by[:64]
        s.add(row)
    return int(info["config_version"])


def push_all(registry: Registry, client: Any, gateways: list[str], by: str = "",
             site_zone: ZoneInfo | None = None) -> dict[str, Any]:
    """Push each gateway's device list in turn, recorded as one run in `config_push_runs`; the run.

    Stops at the first failure: the broker is then most likely down, and 2,000 timeouts would help
    nobody. The run is written before the first push, so a run cut short (the process stopped) still
    shows as started and not finished.
    """
    ensure_tables(registry)
    with registry.session() as s:
        run = ConfigPushRun(by=by[:64], started=time.time(), wanted=len(gateways))
        s.add(run)
        s.flush()
        run_id = run.id
    pushed: list[list[Any]] = []
    failed: list[list[Any]] = []
    for gateway in gateways:
        try:
            pushed.append([gateway, push_config(registry, client, gateway, by, site_zone=site_zone)])
        except CampusError as exc:
            failed.append([gateway, str(exc)[:500]])
            break
    with registry.session() as s:
        row = s.get(ConfigPushRun, run_id)
        row.pushed, row.failed, row.finished = pushed, failed, time.time()
    return push_runs(registry, run_id=run_id)[0]


def push_runs(registry: Registry, limit: int = 10, run_id: int | None = None) -> list[dict[str, Any]]:
    """The newest "push all" runs (or the one `run_id`), newest first."""
    ensure_tables(registry)
    q = select(ConfigPushRun).order_by(ConfigPushRun.id.desc()).limit(limit)
    if run_id is not None:
        q = q.where(ConfigPushRun.id == run_id)
    with registry.session() as s:
        return [{"id": r.id, "by": r.by, "started": r.started, "finished": r.finished, "wanted": r.wanted,
                 "pushed": [tuple(p) for p in r.pushed or []], "failed": [tuple(f) for f in r.failed or []],
                 "left": r.wanted - len(r.pushed or []) - len(r.failed or [])} for r in s.scalars(q)]


def gateway_states(ledger: Any, ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """What the agents last said (ledger): online, last_seen, applied config version, devices; of the
    gateways of `ids` (a page) if given."""
    out = {g["id"]: dict(g) for g in ledger.gateways(ids=ids)}
    for gid, st in ledger.states(ids).items():
        if gid in out:
            out[gid]["config_version"] = st.get("config_version")
            out[gid]["devices"] = st.get("devices", {})
            out[gid]["device_details"] = st.get("device_details", {})  # why a device is in fault (overview)
    return out


# A replaced outbox is a past event: the board shows it this long, the gateway page always.
REPLACED_NOTICE_S = 7 * 24 * 3600


def storage_notes(gw: dict[str, Any], now: float | None = None, *,
                  replaced_within: float | None = REPLACED_NOTICE_S) -> list[dict[str, str]]:
    """What a gateway's own storage needs people to know, as `{"level", "text"}` notes:
    its disk full (or failing) now, and an outbox replaced after damage (the messages lost with it).

    `gw` is a ledger gateway row (`Ledger.gateways()`); `replaced_within=None` shows a replacement however old."""
    def when(ts: Any) -> str:
        return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if isinstance(ts, (int, float)) else "?"

    now = time.time() if now is None else now
    notes: list[dict[str, Any]] = []
    storage = gw.get("storage") or {}
    not_stored = (gw.get("outbox") or {}).get("not_stored", 0)
    # Marked (campus.i18n): the pages translate `text` where they show it. SQLite's own words (`error`) stay
    # its English; the reason a gateway gave for replacing its outbox is its marked text (`marked_text`).
    if storage.get("status") == "full":
        notes.append({"level": "bad", "text": lazy_gettext(
            "Gateway storage full since %(since)s: readings are not being stored (%(count)s not stored so far); "
            "devices are fine", since=when(storage.get("since")), count=not_stored)})
    elif storage.get("status") == "error":
        notes.append({"level": "bad", "text": lazy_gettext(
            "Gateway storage failing since %(since)s (%(error)s): readings are not being stored (%(count)s not "
            "stored so far)", since=when(storage.get("since")), error=storage.get("error") or lazy_gettext("write refused"),
            count=not_stored)})
    rep = gw.get("outbox_replaced")
    if rep and (replaced_within is None or now - (rep.get("at") or 0) <= replaced_within):
        lost = rep.get("lost")
        reason = contract.marked_text(rep, "reason") or lazy_gettext("damaged")
        kept_as = rep.get("kept_as") or "?"
        if lost == 1:
            text = lazy_gettext("Outbox replaced after damage at %(at)s: %(reason)s; 1 unsent message lost (kept as "
                                "%(file)s)", at=when(rep.get("at")), reason=reason, file=kept_as)
        elif isinstance(lost, int):
            text = lazy_gettext("Outbox replaced after damage at %(at)s: %(reason)s; %(count)s unsent messages lost "
                                "(kept as %(file)s)", at=when(rep.get("at")), reason=reason, count=lost, file=kept_as)
        else:
            text = lazy_gettext("Outbox replaced after damage at %(at)s: %(reason)s; an unknown number of unsent "
                                "messages lost (kept as %(file)s)", at=when(rep.get("at")), reason=reason,
                                file=kept_as)
        notes.append({"level": "warn", "text": text})
    return notes


def config_events(ledger: Any, gateways: list[str]) -> dict[str, dict[str, dict[str, Any] | None]]:
    """The newest `config_applied` and `config_rejected` events of each of `gateways` (a page), by gateway
    then "applied" / "rejected": one ledger read for the page."""
    newest = ledger.newest_events(gateways, [f"config_{kind}" for kind in ("applied", "rejected")])
    return {gateway: {kind: newest.get((gateway, f"config_{kind}")) for kind in ("applied", "rejected")}
            for gateway in gateways}


def sync_status(wanted: int, pushed: int | None, applied: int | None, online: bool,
                rejected: dict[str, Any] | None) -> tuple[str, str]:
    """(css class, words) of a gateway's config: in sync, not pushed, waiting, refused."""
    # The words are English, marked (campus.i18n.N_): the pages show the part before a ':' translated.
    if applied is not None and applied >= wanted:
        return "ok", N_("in sync")
    if pushed is None or pushed < wanted:
        return "warning", N_("changes not pushed") if pushed is not None or applied is not None else N_("not pushed yet")
    if rejected and (rejected["data"].get("version") or 0) >= wanted:
        return "error", N_("refused by the gateway") + f": {rejected['data'].get('error', '')}"
    if not online:
        return "offline", N_("pushed; gateway offline, applies when back")
    return "starting", N_("pushed; waiting for the gateway")


# ---------------------------------------------------------------- CSV import


@dataclass
class ImportProblem:
    """One problem of an imported file: its line, the column as the file's header spells it, and the message
    (a LazyText where marked: English in str(), translated where the import's page shows it)."""
    line: int
    column: str
    message: str | LazyText

    def __str__(self) -> str:
        return f"line {self.line}: {self.column}: {self.message}" if self.column else f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Header:
    """The header of one import: its columns (the English names the code and the English file use), their
    Chinese names (the Chinese file, and an export in Chinese), and every other spelling accepted. Each
    import has one (IMPORT_HEADER below, central/timetable_csv.py's TIMETABLE_HEADER); a file may spell each
    column in either language, case and a byte-order mark aside."""
    columns: tuple[str, ...]
    chinese: Mapping[str, str]
    required: tuple[str, ...]
    more: Mapping[str, str] = field(default_factory=dict)  # another spelling -> column

    def column(self, cell: str) -> str | None:
        """The column a header cell names, or None."""
        text = cell.strip().lstrip("\ufeff").strip().lower()
        if text in self.columns:
            return text
        return self._chinese_names.get(text) or self.more.get(text)

    @property
    def _chinese_names(self) -> dict[str, str]:
        return {v: k for k, v in self.chinese.items()}

    def names(self, chinese: bool) -> list[str]:
        """The header row of a file in that language."""
        return [self.chinese[c] for c in self.columns] if chinese else list(self.columns)

    def read(self, cells: list[str], line: int) -> tuple[list[str], dict[str, str], list[ImportProblem]]:
        """The file's header row: the column of each cell ("" for an unknown one), each column's label as
        the file spells it (problems name it so), and the problems: an unknown cell, a column named twice
        (in one language or two), a required column missing."""
        header: list[str] = []
        labels: dict[str, str] = {}
        problems: list[ImportProblem] = []
        for cell in cells:
            label = cell.strip().lstrip("\ufeff").strip()
            name = self.column(cell)
            if name is None:
                problems.append(ImportProblem(line, label or "(empty)", lazy_gettext(
                    "unknown column; the columns are %(columns)s or %(chinese)s",
                    columns=",".join(self.columns), chinese=",".join(self.names(chinese=True)))))
            elif name in labels:
                problems.append(ImportProblem(line, label, lazy_gettext(
                    "column appears twice in the header (also as %(other)s)", other=labels[name])))
            else:
                labels[name] = label
            header.append(name or "")
        for name in self.required:
            if name not in labels:
                problems.append(ImportProblem(line, name, lazy_gettext(
                    "required column is missing from the header (%(column)s or %(chinese)s)",
                    column=name, chinese=self.chinese[name])))
        return header, labels, problems


# The provisioning import's columns, in English and in Chinese (docs/glossary.md), and other spellings
# a school's spreadsheet may have.
IMPORT_HEADER = Header(
    IMPORT_COLUMNS,
    dict(zip(IMPORT_COLUMNS, ("学校", "教学楼", "教室", "网关", "设备", "设备型号", "地址", "选项"), strict=True)),
    REQUIRED_COLUMNS,
    {"学校编号": "school", "楼栋": "building", "楼宇": "building", "房间": "room", "网关编号": "gateway",
     "设备编号": "device", "型号": "profile", "设备配置": "profile", "通信地址": "address", "参数": "options",
     "设置": "options"})


class CsvRecords:
    """The records of a CSV text, each with the line it starts on (a quoted value may span lines),
    skipping blank lines and `#` comments: the one reading of an imported file (devices, timetables,
    rosters, podium cards), with the one refusal of a text that stops being CSV (`invalid`) and of a file
    that holds nothing to import (`ending`), both added to the import's `errors` by the reading and `finish`,
    so that no import spells them again."""

    def __init__(self, text: str, errors: list[ImportProblem]) -> None:
        self._reader = csv.reader(io.StringIO(text, newline=""))
        self.errors = errors  # the import's problems: the reading's own are added to them
        self.end = 0  # the last line read
        self.records = 0  # records given out, the header among them
        self.broken = False  # the text stopped being CSV: the records read are not the file

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        """The records, up to the first that is not CSV (a value over the csv module's field limit): the
        iteration stops there with that one problem added to `errors`, rather than a traceback."""
        try:
            for cells in self._reader:
                start, self.end = self.end + 1, self._reader.line_num
                if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                    continue
                self.records += 1
                yield start, cells
        except csv.Error as exc:
            self.broken = True
            self.errors.append(self.invalid(exc))

    def finish(self, expected: Header, nothing: LazyText) -> bool:
        """After the reading: add `ending`'s refusal to a file read without another problem. True when
        the file is refused whole (not CSV, or nothing to import): there is nothing more to check in it."""
        if not self.errors and (end := self.ending(expected, nothing)):
            self.errors.append(end)
            return True
        return self.broken

    def ending(self, expected: Header, nothing: LazyText) -> ImportProblem | None:
        """The refusal of a file read to its end that holds nothing to import, or None: no header at all
        (the problem spells the header `expected` in both languages, as either is accepted), or no record
        after it (`nothing`: the import's own words, "no people after the header"). Asked only of a file
        read without another problem, so that an empty file is refused alike by every import."""
        if self.records == 0:
            return ImportProblem(1, "", lazy_gettext(
                "the file is empty; the first line must be the header %(columns)s or %(chinese)s",
                columns=",".join(expected.columns), chinese=",".join(expected.names(chinese=True))))
        if self.records == 1:
            return ImportProblem(1, "", nothing)
        return None

    def invalid(self, exc: csv.Error) -> ImportProblem:
        """Where and why the text stopped being CSV."""
        return ImportProblem(self.end + 1, "", lazy_gettext("not valid CSV: %(error)s", error=str(exc)))

    @staticmethod
    def values(line: int, cells: list[str], header: list[str]) -> dict[str, str] | ImportProblem:
        """A record's cells by column (missing ones empty), or the problem of a record wider than the header."""
        if len(cells) > len(header):
            return ImportProblem(line, "", lazy_gettext('%(cells)s cells but %(columns)s columns (a value with a '
                                                        'comma needs "quotes")', cells=len(cells),
                                                        columns=len(header)))
        return {name: (cells[i].strip() if i < len(cells) else "") for i, name in enumerate(header)}


@dataclass
class ImportReport:
    ok: bool = False
    rows: int = 0
    errors: list[ImportProblem] = field(default_factory=list)
    created: dict[str, int] = field(default_factory=lambda: {"schools": 0, "rooms": 0, "gateways": 0,
                                                             "devices added": 0, "devices replaced": 0})
    # New gateways: (gateway, mqtt username, plain password), shown once.
    credentials: list[tuple[str, str, str]] = field(default_factory=list)
    # Some line names a school outside the importing account's schools (a refusal: 403, not a typo).
    outside: bool = False
    # Each column's header cell as the file spells it (学校 or school): a problem names the column so.
    labels: dict[str, str] = field(default_factory=dict)

    def problem(self, line: int, column: str, message: str | LazyText) -> None:
        """Record a problem of `column` (its English name), named as the file's header spells it; a column the
        file lacks, in the language of its header."""
        chinese = any(not label.isascii() for label in self.labels.values())
        named = self.labels.get(column) or (IMPORT_HEADER.chinese.get(column, column) if chinese else column)
        self.errors.append(ImportProblem(line, named, message))


@dataclass
class _Row:
    line: int
    school: str
    building: str
    room: str
    gateway: str
    device: str
    profile: str
    address: dict[str, Any]
    options: dict[str, Any]


def decode_csv(data: bytes) -> str:
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ConfigError(lazy_gettext("the file is neither UTF-8 nor GB18030 text"))


def parse_mapping(text: str, column: str) -> dict[str, Any]:
    """A JSON object, or `key=value; key=value` (whole numbers become numbers)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        # Strict JSON (contract.loads_strict): NaN, Infinity and 1e999 are refused here. The JSON column
        # stored them on SQLite, for a gateway whose config parser then refused its whole device list;
        # PostgreSQL's json type refuses them outright (a 503 instead of this 400).
        try:
            value = contract.loads_strict(text, N_("the value"))
        except PayloadError as exc:
            raise ConfigError(message_of(exc)) from None
        if not isinstance(value, dict):
            raise ConfigError(lazy_gettext("must be a JSON object"))
        return value
    out: dict[str, Any] = {}
    for part in text.replace("\n", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ConfigError(lazy_gettext("%(part)s: write key=value pairs separated by ';', or a JSON object",
                                           part=repr(part)))
        if key in out:
            raise ConfigError(lazy_gettext("%(key)s is given twice", key=key))
        out[key] = int(raw) if raw.lstrip("-").isdigit() and len(raw) < 12 else raw
    return out


def validate_device(device_id: str, profile: str, address: dict[str, Any], options: dict[str, Any]) -> None:
    """Validate as the agent will (DeviceConfig); ConfigError names the column/field."""
    from pydantic import ValidationError

    from device_profiles.config import DeviceConfig

    try:
        DeviceConfig(id=device_id, profile=profile, address=address, options=options)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(x) for x in err["loc"]]
        column = {"id": "device"}.get(loc[0], loc[0]) if loc else ""
        detail = ".".join(loc[1:])
        msg = err["msg"].removeprefix("Value error, ")
        raise _FieldError(column, f"{detail + ': ' if detail else ''}{msg}") from None


class _FieldError(ConfigError):
    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column


def _parse_rows(text: str, report: ImportReport) -> list[_Row]:
    """The file's rows, checked one by one; `report.labels` gets each column's header cell as spelled."""
    records = CsvRecords(text, report.errors)
    header: list[str] | None = None
    rows: list[_Row] = []
    for start, cells in records:
        if header is None:
            header, found, problems = IMPORT_HEADER.read(cells, start)
            report.labels.update(found)
            if problems:
                report.errors.extend(problems)
                return []
            continue
        if len(rows) >= MAX_IMPORT_ROWS:
            report.errors.append(ImportProblem(start, "", lazy_gettext("more than %(max)s rows; split the file",
                                                                       max=MAX_IMPORT_ROWS)))
            return []
        values = CsvRecords.values(start, cells, header)
        if isinstance(values, ImportProblem):
            report.errors.append(values)
            continue
        row = _check_row(start, values, report)
        if row is not None:
            rows.append(row)
    records.finish(IMPORT_HEADER, lazy_gettext("no rows after the header"))
    return rows


def _check_row(line: int, v: dict[str, str], report: ImportReport) -> _Row | None:
    errors_before = len(report.errors)

    def bad(column: str, message: str | LazyText) -> None:
        report.problem(line, column, message)

    for column in ("school", "gateway"):
        if v.get(column):
            try:
                names.identifier(v[column], column)
            except names.BadName as exc:
                bad(column, exc.reason)
    if not v.get("school"):
        bad("school", lazy_gettext("required"))
    room = building = ""
    if not v.get("room"):
        bad("room", lazy_gettext("required"))
    else:
        try:
            room = names.display_name(v["room"], "room", max_chars=names.ROOM_MAX)
        except names.BadName as exc:
            bad("room", exc.reason)
    try:
        building = names.display_name(v.get("building", ""), "building", max_chars=names.BUILDING_MAX,
                                      required=False)
    except names.BadName as exc:
        bad("building", exc.reason)
    device = v.get("device", "")
    address: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if device:
        if not v.get("gateway"):
            bad("gateway", lazy_gettext("a device needs the gateway it is connected to"))
        if not v.get("profile"):
            bad("profile", lazy_gettext("required for a device"))
        for column in ("address", "options"):
            try:
                parsed = parse_mapping(v.get(column, ""), column)
            except ConfigError as exc:
                bad(column, message_of(exc))
                continue
            if column == "address":
                address = parsed
            else:
                options = parsed
        if len(report.errors) == errors_before:
            try:
                validate_device(device, v["profile"], address, options)
            except _FieldError as exc:
                bad(exc.column, message_of(exc))
    else:
        for column in ("profile", "address", "options"):
            if v.get(column):
                bad(column, lazy_gettext("only with a device (the device column is empty)"))
    if len(report.errors) != errors_before:
        return None
    return _Row(line, v["school"], building, room, v.get("gateway", ""), device, v.get("profile", ""),
                address, options)


def import_csv(registry: Registry, data: bytes, schools: tuple[str, ...] | None = None) -> ImportReport:
    """Check every line, then write everything in one transaction, or nothing at all. With `schools` (a
    school-scoped account's), a line of any other school is an error of its own (`outside`)."""
    report = ImportReport()
    try:
        text = decode_csv(data)
    except ConfigError as exc:
        report.errors.append(ImportProblem(1, "", message_of(exc)))
        return report
    rows = _parse_rows(text, report)
    report.rows = len(rows)
    for row in rows if schools is not None else ():
        if row.school not in schools:
            report.outside = True
            report.problem(row.line, "school", lazy_gettext(
                "not one of your schools (your account is limited to %(schools)s)", schools=", ".join(schools)))
    try:
        with registry.session() as s:
            _cross_check(s, rows, report)  # also on the good lines of a bad file: report everything at once
            if report.errors:
                raise _Abort
            _write(s, rows, report)
    except _Abort:
        report.errors.sort(key=lambda e: e.line)
        return report
    except Exception as exc:  # a database error: the transaction was rolled back
        # The driver's own message only: SQLAlchemy's would carry the statement (and, without the
        # registry's hide_parameters, a new gateway's password hash).
        reason = getattr(exc, "orig", None) or type(exc).__name__
        report.errors.append(ImportProblem(0, "", lazy_gettext("database error, nothing imported: %(reason)s",
                                                               reason=str(reason))))
        report.credentials.clear()
        return report
    report.ok = True
    return report


class _Abort(Exception):
    """Leaves the session's transaction without committing."""


def _cross_check(s: Session, rows: list[_Row], report: ImportReport) -> None:
    """Checks between lines and against the registry: a gateway in one room, a device once."""
    gateway_home: dict[str, tuple[str, str, int]] = {}
    room_building: dict[tuple[str, str], tuple[str, int]] = {}
    devices_seen: dict[tuple[str, str], int] = {}
    accounts: dict[str, tuple[str, int]] = {}  # MQTT user name of a new gateway -> (gateway, line)
    for row in rows:
        key = (row.school, row.room)
        if row.building:
            earlier = room_building.setdefault(key, (row.building, row.line))
            if earlier[0] != row.building:
                report.problem(row.line, "building", lazy_gettext(
                    "room %(room)s of %(school)s is in building %(building)s on line %(line)s", room=row.room,
                    school=row.school, building=repr(earlier[0]), line=earlier[1]))
        if not row.gateway:
            continue
        home = gateway_home.get(row.gateway)
        if home is None:
            existing = s.get(Gateway, row.gateway)
            if existing is not None:
                room = existing.room.name if existing.room else ""
                if existing.school_id != row.school or room != row.room:
                    report.problem(row.line, "gateway", lazy_gettext(
                        "gateway %(gateway)s is registered in %(school)s room %(room)s, not %(new_school)s room "
                        "%(new_room)s", gateway=row.gateway, school=existing.school_id, room=room,
                        new_school=row.school, new_room=row.room))
            else:
                _check_account(s, row, accounts, report)
            gateway_home[row.gateway] = (row.school, row.room, row.line)
        elif home[:2] != (row.school, row.room):
            report.problem(row.line, "gateway", lazy_gettext(
                "gateway %(gateway)s is in %(school)s room %(room)s on line %(line)s", gateway=row.gateway,
                school=home[0], room=home[1], line=home[2]))
        if row.device:
            first = devices_seen.setdefault((row.gateway, row.device), row.line)
            if first != row.line:
                report.problem(row.line, "device", lazy_gettext(
                    "device %(device)s of gateway %(gateway)s is already on line %(line)s", device=row.device,
                    gateway=row.gateway, line=first))


def _check_account(s: Session, row: _Row, accounts: dict[str, tuple[str, int]], report: ImportReport) -> None:
    """A new gateway's MQTT user name must be free, in the registry and in the file (`gateway_account`)."""
    username = gateway_account(row.school, row.gateway)
    other = s.scalar(select(Gateway).where(Gateway.mqtt_username == username))
    if other is not None:
        report.problem(row.line, "gateway", lazy_gettext(
            "its MQTT user name %(username)s is already the account of gateway %(gateway)s of school %(school)s; "
            "choose another gateway id", username=username, gateway=other.id, school=other.school_id))
    elif username in accounts:
        first = accounts[username]
        report.problem(row.line, "gateway", lazy_gettext(
            "its MQTT user name %(username)s is also the one of gateway %(gateway)s on line %(line)s; choose "
            "another gateway id", username=username, gateway=first[0], line=first[1]))
    else:
        accounts[username] = (row.gateway, row.line)


def _write(s: Session, rows: list[_Row], report: ImportReport) -> None:
    touched: set[str] = set()
    for row in rows:
        if s.get(School, row.school) is None:
            s.add(School(id=row.school, name=row.school))
            s.flush()
            report.created["schools"] += 1
        building = None
        if row.building:
            building = s.scalar(select(Building).where(Building.school_id == row.school,
                                                       Building.name == row.building))
            if building is None:
                building = Building(school_id=row.school, name=row.building)
                s.add(building)
                s.flush()
        room = s.scalar(select(Room).where(Room.school_id == row.school, Room.name == row.room))
        if room is None:
            room = Room(school_id=row.school, name=row.room, building_id=building.id if building else None)
            s.add(room)
            s.flush()
            report.created["rooms"] += 1
        elif building is not None:
            room.building_id = building.id
        if not row.gateway:
            continue
        gw = s.get(Gateway, row.gateway)
        if gw is None:
            password = secrets.token_urlsafe(18)
            username = gateway_account(row.school, row.gateway)
            gw = Gateway(id=row.gateway, school_id=row.school, room_id=room.id, mqtt_username=username,
                         mqtt_password_hash=mosquitto_password_hash(password))
            s.add(gw)
            s.flush()
            report.created["gateways"] += 1
            report.credentials.append((row.gateway, username, password))
        if not row.device:
            continue
        existing = next((d for d in gw.devices if d.device_id == row.device), None)
        if existing is None:
            gw.devices.append(Device(device_id=row.device, profile=row.profile, address=row.address,
                                     options=row.options))
            report.created["devices added"] += 1
        else:
            existing.profile, existing.address, existing.options = row.profile, row.address, row.options
            report.created["devices replaced"] += 1
        if row.gateway not in touched:
            touched.add(row.gateway)
            gw.config_version += 1
    s.flush()


EXAMPLE_CSV = """\
# campus-iot provisioning import: one line per room, gateway or device.
# address/options: a JSON object, or key=value pairs separated by ';'.
school,building,room,gateway,device,profile,address,options
s1,A,A-101,gw-a101,env,env-6in1-modbus,host=10.1.1.21; port=502; unit=1,
s1,A,A-101,gw-a101,projector,projector-pjlink2,"{""host"": ""10.1.1.22"", ""port"": 4352}",
s1,A,A-101,gw-a101,display,display-samsung-mdc,serial=/dev/ttyUSB0; display_id=0,
s1,A,A-101,gw-a101,cards,card-em4100,serial=/dev/ttyUSB1,
s1,A,A-102,,,,,
"""

# The same example for a Chinese page: the header in Chinese (IMPORT_HEADER), which the import reads as well.
EXAMPLE_CSV_ZH = """\
# campus-iot 批量导入：每行一个教室、网关或设备。
# 地址/选项：JSON 对象，或用 ';' 分隔的 key=value。
""" + ",".join(IMPORT_HEADER.names(chinese=True)) + "\n" + EXAMPLE_CSV.split("options\n", 1)[1]
