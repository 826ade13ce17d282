"""Card-authorised podiums, central's side: which cards may start a class in which room (刷卡授权).

The gateway decides each swipe itself (edge_agent/podium.py); central keeps the allow-list and sends
it. Per room, `podium_cards` holds card pseudonyms (HMAC-SHA256 of the UID with the school's secret,
`Registry.card_secret`, protocols/card_ids.py), each with a role and a label. A card's number is never
stored: a card is enrolled either

- by a swipe: "enrol mode" (`card_enrolments`) takes the first `card_swipe` event a gateway of the
  room reports within the window. The gateway already sends every swipe's pseudonym to the ledger, so
  central only has to look for it: no new command, no state on the gateway, nothing to journal. The
  enrolment is completed when someone next looks (its page polls, `enrolment`), from the ledger's
  events, with the swipe's own time, so nothing has to listen in the background;
- or from a CSV of 一卡通 numbers (`import_cards`), pseudonymised line by line as it is read, all or
  nothing, each error naming its line and column (provisioning's CsvRecords and problems).

Every change raises the config version of the room's gateways; `config_payload` is what the push
sends them: the device list with the school's card secret and the room's `podium` (null: no
enrolled card, the podium is off), validated by the gateway like its config file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Float, ForeignKey, String, UniqueConstraint, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from campus import contract, names
from campus.errors import ConfigError, PayloadError
from campus.i18n import LazyText, lazy_gettext, message_of
from central.db import Base
from central.edge_rules import room_rules
from central.edge_schedules import compile_runs
from central.provisioning import CsvRecords, Header, ImportProblem, decode_csv
from central.registry import Gateway, Registry, Room
from protocols.card_ids import CARD_NUMBER_FORMS, card_hash, card_uid

PREFIX_CHARS = 12           # how much of a pseudonym lists show, and how a card is named to remove it
LABEL_MAX = 100
ENROL_WINDOW_S = (10.0, 600.0)   # the shortest and longest enrol mode
ENROL_DEFAULT_S = 60.0
PLAN_DAYS = (14, 7, 4, 2)   # how far ahead a gateway's schedules are planned, the longest that fits
MAX_CARDS_PER_ROOM = 300    # the room's list rides in one config message (contract.MAX_PAYLOAD_BYTES)
CARD_COLUMNS = ("room", "card", "role", "label")
# The import's columns in English and Chinese, and what else a school office's spreadsheet may call them
# (`room` is required only where the page or URL names no room).
CARD_HEADER = Header(CARD_COLUMNS, {"room": "教室", "card": "卡号", "role": "角色", "label": "姓名"}, ("card", "role"),
                     {"房间": "room", "一卡通": "card", "一卡通号": "card", "卡片号": "card", "备注": "label",
                      "name": "label"})
ROLE_ALIASES = {"教师": "teacher", "老师": "teacher", "后勤": "facility", "设备": "facility", "设施管理员": "facility",
                "保洁": "cleaner", "清洁": "cleaner"}


class PodiumCard(Base):
    """A card allowed at a room's podium: its pseudonym (never its number), role and label."""
    __tablename__ = "podium_cards"
    __table_args__ = (UniqueConstraint("room_id", "card"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    room_id: Mapped[int] = mapped_column(ForeignKey("rooms.id"))
    card: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(LABEL_MAX), default="")
    added: Mapped[float] = mapped_column(Float, default=time.time)
    added_by: Mapped[str] = mapped_column(String(64), default="")


class CardEnrolment(Base):
    """An enrol mode: the first swipe at the room's readers between `started` and `until` is enrolled."""
    __tablename__ = "card_enrolments"
    id: Mapped[int] = mapped_column(primary_key=True)
    room_id: Mapped[int] = mapped_column(ForeignKey("rooms.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(LABEL_MAX), default="")
    by: Mapped[str] = mapped_column(String(64), default="")
    started: Mapped[float] = mapped_column(Float)
    until: Mapped[float] = mapped_column(Float)
    card: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the pseudonym enrolled, once one was
    finished: Mapped[float | None] = mapped_column(Float, nullable=True)


# ---------------------------------------------------------------- checks


def check_role(role: str) -> str:
    role = ROLE_ALIASES.get(role.strip(), role.strip().lower())
    if role not in contract.PODIUM_ROLES:
        raise ConfigError(lazy_gettext("role must be one of %(roles)s", roles=", ".join(contract.PODIUM_ROLES)))
    return role


def check_label(label: str) -> str:
    try:
        return names.display_name(label, "label", max_chars=LABEL_MAX, required=False)
    except names.BadName as exc:
        raise ConfigError(exc.reason) from None


def find_room(registry: Registry, school: str, room: str) -> int | None:
    """The id of `room` of `school`, if there is one."""
    with registry.session() as s:
        return s.scalar(select(Room.id).where(Room.school_id == school, Room.name == room))


def room_gateways(s: Session, room_id: int) -> list[str]:
    return sorted(s.scalars(select(Gateway.id).where(Gateway.room_id == room_id)))


def _changed(s: Session, room_ids: set[int]) -> list[str]:
    """A room's allow-list changed: its gateways get a new config version (to push); their ids."""
    if not room_ids:
        return []
    s.execute(update(Gateway).where(Gateway.room_id.in_(room_ids)).values(config_version=Gateway.config_version + 1))
    return sorted(s.scalars(select(Gateway.id).where(Gateway.room_id.in_(room_ids))))


def _put(s: Session, room_id: int, card: str, role: str, label: str, by: str) -> bool:
    """Enrol `card` in the room, or change its role and label; True if it was new."""
    row = s.scalar(select(PodiumCard).where(PodiumCard.room_id == room_id, PodiumCard.card == card))
    if row is not None:
        row.role, row.label = role, label
        return False
    s.add(PodiumCard(room_id=room_id, card=card, role=role, label=label, added=time.time(), added_by=by[:64]))
    return True


def _room_full(s: Session, room_id: int, adding: int) -> bool:
    count = len(s.scalars(select(PodiumCard.id).where(PodiumCard.room_id == room_id)).all())
    return count + adding > MAX_CARDS_PER_ROOM


# ---------------------------------------------------------------- the list


def cards(registry: Registry, room_id: int) -> list[dict[str, Any]]:
    """The room's enrolled cards, by pseudonym prefix (the whole pseudonym stays in the database)."""
    with registry.session() as s:
        rows = s.scalars(select(PodiumCard).where(PodiumCard.room_id == room_id)).all()
        return [{"card": r.card[:PREFIX_CHARS], "role": r.role, "label": r.label, "added": r.added,
                 "by": r.added_by} for r in sorted(rows, key=lambda r: (r.role, r.label, r.card))]


def remove_card(registry: Registry, room_id: int, prefix: str) -> tuple[dict[str, Any], list[str]]:
    """Remove the one card of the room whose pseudonym starts with `prefix`: (the card, gateways to push)."""
    prefix = prefix.strip().lower()
    if not (4 <= len(prefix) <= 64) or any(c not in "0123456789abcdef" for c in prefix):
        raise ConfigError(lazy_gettext("a card is named by the start of its pseudonym (hex digits, as the list "
                                       "shows)"))
    with registry.session() as s:
        rows = [r for r in s.scalars(select(PodiumCard).where(PodiumCard.room_id == room_id)).all()
                if r.card.startswith(prefix)]
        if not rows:
            raise LookupError(lazy_gettext("no enrolled card %(card)s in this room", card=prefix))
        if len(rows) > 1:
            raise ConfigError(lazy_gettext("%(n)s cards start with %(card)s: give more of it", n=len(rows),
                                           card=prefix))
        gone = {"card": rows[0].card[:PREFIX_CHARS], "role": rows[0].role, "label": rows[0].label}
        s.execute(delete(PodiumCard).where(PodiumCard.id == rows[0].id))
        return gone, _changed(s, {room_id})


# ---------------------------------------------------------------- what the gateways get


def podium_config(registry: Registry, room_id: int | None) -> dict[str, Any] | None:
    """The room's `podium` for a gateway config (device_profiles.config.PodiumConfig); None: no card."""
    if room_id is None:
        return None
    with registry.session() as s:
        rows = s.scalars(select(PodiumCard).where(PodiumCard.room_id == room_id)).all()
        if not rows:
            return None
        return {"cards": {r.card: {"role": r.role, **({"label": r.label} if r.label else {})} for r in rows}}


def config_payload(registry: Registry, gateway: str, site_zone: ZoneInfo | None = None) -> bytes:
    """The retained `config` message of a gateway: its device list, its school's card secret, its
    room's podium (null when the room has no card: a card removed last must stop working too) and its
    room's rules (idle-off, central/edge_rules.py); its schedules' runs planned in its school's zone
    (`site_zone` for a school without a timetable: `compile_runs`)."""
    info = registry.gateway_info(gateway)
    if info is None:
        raise PayloadError(f"no gateway {gateway!r}")
    with registry.session() as s:
        room_id = s.scalar(select(Gateway.room_id).where(Gateway.id == gateway))
    doc = {"version": info["config_version"], "devices": info["devices"],
           "card_secret": registry.card_secret(info["school"]), "podium": podium_config(registry, room_id),
           "rules": room_rules(registry, room_id)}  # null clears the gateway's: a setting removed stops too
    # The runs of its schedules, planned by central: the gateway keeps time (offline too). A room with many
    # schedules gets a shorter plan rather than no push at all (the message has a size limit); the daily
    # re-plan keeps even a 2-day plan from running out.
    for days in PLAN_DAYS:
        payload = json.dumps({**doc, "schedules": compile_runs(registry, gateway, days=days, site_zone=site_zone)},
                             separators=(",", ":")).encode()
        if len(payload) <= contract.MAX_PAYLOAD_BYTES:
            break
    return payload


# ---------------------------------------------------------------- enrol mode


def start_enrolment(registry: Registry, room_id: int, role: str, label: str, by: str,
                    within_s: float = ENROL_DEFAULT_S, now: float | None = None) -> dict[str, Any]:
    """Enrol the next card swiped at the room's readers within `within_s`; a new one ends any before it."""
    role, label = check_role(role), check_label(label)
    low, high = ENROL_WINDOW_S
    if not low <= within_s <= high:
        raise ConfigError(lazy_gettext("seconds must be between %(low)s and %(high)s", low=int(low), high=int(high)))
    now = time.time() if now is None else now
    with registry.session() as s:
        if not room_gateways(s, room_id):
            raise ConfigError(lazy_gettext("this room has no gateway: no reader can see the card"))
        s.execute(update(CardEnrolment).where(CardEnrolment.room_id == room_id, CardEnrolment.finished.is_(None))
                  .values(finished=now))
        s.add(CardEnrolment(room_id=room_id, role=role, label=label, by=by[:64], started=now, until=now + within_s))
    return {"status": "waiting", "role": role, "label": label, "until": now + within_s}


def enrolment(registry: Registry, ledger: Any, room_id: int, by: str = "",
              now: float | None = None) -> tuple[dict[str, Any] | None, list[str]]:
    """The room's latest enrol mode, completed from the ledger's swipes if one came: (its status, the
    gateways to push when it enrolled a card just now). Status: waiting, enrolled, expired."""
    now = time.time() if now is None else now
    with registry.session() as s:
        row = s.scalar(select(CardEnrolment).where(CardEnrolment.room_id == room_id)
                       .order_by(CardEnrolment.id.desc()).limit(1))
        if row is None:
            return None, []
        changed: list[str] = []
        if row.finished is None:
            swipe = _first_swipe(ledger, room_gateways(s, room_id), row.started, row.until)
            if swipe is not None:
                if _room_full(s, room_id, 1):
                    raise ConfigError(lazy_gettext("this room has %(n)s cards already; remove some first",
                                                   n=MAX_CARDS_PER_ROOM))
                _put(s, room_id, swipe, row.role, row.label, row.by or by)
                row.card, row.finished = swipe, now
                changed = _changed(s, {room_id})
            elif now > row.until:
                row.finished = now
        status = "enrolled" if row.card else ("waiting" if row.finished is None else "expired")
        return ({"status": status, "role": row.role, "label": row.label, "until": row.until,
                 "card": row.card[:PREFIX_CHARS] if row.card else None}, changed)


def _first_swipe(ledger: Any, gateways: list[str], start: float, until: float) -> str | None:
    """The pseudonym of the earliest swipe at these gateways' readers between `start` and `until`."""
    found: list[tuple[float, str]] = []
    for gateway in gateways:
        for ev in ledger.events(gateway=gateway, type_=contract.CARD_SWIPE_EVENT, since=start, limit=50):
            card = ev["data"].get("card")
            if start <= ev["ts"] <= until and isinstance(card, str) and len(card) == 64:
                found.append((ev["ts"], card))
    return min(found)[1] if found else None


# ---------------------------------------------------------------- CSV import


@dataclass
class CardImport:
    ok: bool = False
    added: int = 0
    changed: int = 0
    errors: list[ImportProblem] = field(default_factory=list)
    gateways: list[str] = field(default_factory=list)  # to push
    outside: bool = False  # a line names a room the account may not manage (a refusal, not a typo)


def import_cards(registry: Registry, school: str, data: bytes, by: str, *, room: str | None = None,
                 rooms_allowed: set[str] | None = None) -> CardImport:
    """Enrol the cards of a CSV (`room,card,role,label`; `room` may be left out with `room` given: the page's
    room) in the school's rooms, all or nothing. Each number is pseudonymised with the school's secret as
    it is read and then forgotten: no error message, log line or row repeats it. `rooms_allowed`: the
    rooms the caller may manage (a teacher's)."""
    report = CardImport()
    try:
        text = decode_csv(data)
    except ConfigError as exc:
        report.errors.append(ImportProblem(1, "", message_of(exc)))
        return report
    secret = registry.card_secret(school)
    with registry.session() as s:
        room_ids = {name: rid for rid, name in s.execute(select(Room.id, Room.name).where(Room.school_id == school))}
    wanted: list[tuple[int, int, str, str, str]] = []  # (line, room id, pseudonym, role, label)
    seen: dict[tuple[int, str], int] = {}
    records = CsvRecords(text, report.errors)
    header: list[str] | None = None
    for line, cells in records:
        if header is None:
            header, labels, problems = CARD_HEADER.read(cells, line)
            report.errors += problems
            if room is None and "room" not in labels:
                report.errors.append(ImportProblem(line, "room", lazy_gettext(
                    "required column is missing from the header (%(column)s or %(chinese)s)",
                    column="room", chinese=CARD_HEADER.chinese["room"])))
            if report.errors:
                return report
            continue
        values = CsvRecords.values(line, cells, header)
        if isinstance(values, ImportProblem):
            report.errors.append(values)
            continue
        row = _card_row(line, values, room, room_ids, rooms_allowed, secret, report)
        if row is None:
            continue
        first = seen.setdefault((row[1], row[2]), line)
        if first != line:
            report.errors.append(ImportProblem(line, "card", lazy_gettext("the same card is on line %(line)s",
                                                                          line=first)))
            continue
        wanted.append(row)
    records.finish(CARD_HEADER, lazy_gettext("no cards after the header"))
    if report.errors:
        return report
    with registry.session() as s:
        for rid in {r[1] for r in wanted}:
            if _room_full(s, rid, sum(1 for r in wanted if r[1] == rid)):
                report.errors.append(ImportProblem(0, "", lazy_gettext(
                    "a room can hold %(n)s cards; this file would take one over: nothing imported",
                    n=MAX_CARDS_PER_ROOM)))
                return report
        for _line, rid, card, role, label in wanted:
            if _put(s, rid, card, role, label, by):
                report.added += 1
            else:
                report.changed += 1
        report.gateways = _changed(s, {r[1] for r in wanted})
    report.ok = True
    return report


def _card_row(line: int, v: dict[str, str], default_room: str | None, room_ids: dict[str, int],
              allowed: set[str] | None, secret: str,
              report: CardImport) -> tuple[int, int, str, str, str] | None:
    before = len(report.errors)

    def bad(column: str, message: str | LazyText) -> None:
        report.errors.append(ImportProblem(line, column, message))

    room = v.get("room") or default_room or ""
    rid = room_ids.get(room)
    if not room:
        bad("room", lazy_gettext("required"))
    elif default_room is not None and room != default_room:
        bad("room", lazy_gettext("this import is for room %(room)s only", room=default_room))
    elif rid is None:
        bad("room", lazy_gettext("no such room in this school"))
    elif allowed is not None and room not in allowed:
        report.outside = True
        bad("room", lazy_gettext("not one of your rooms"))
    card = ""
    try:
        card = card_hash(secret, card_uid(v.get("card", "")))  # the number goes no further than this line
    except ValueError:  # its message names no number; the one marked here is the page's
        bad("card", lazy_gettext("not a card number: write %(forms)s", forms=CARD_NUMBER_FORMS))
    role = label = ""
    try:
        role = check_role(v.get("role", ""))
    except ConfigError as exc:
        bad("role", message_of(exc))
    try:
        label = check_label(v.get("label", ""))
    except ConfigError as exc:
        bad("label", message_of(exc))
    if len(report.errors) != before or rid is None:
        return None
    return line, rid, card, role, label


def rooms(registry: Registry, schools: tuple[str, ...] | None = None,
          room_ids: list[int] | None = None) -> list[dict[str, Any]]:
    """The rooms of `schools` (None: all) or with these ids (a teacher's), each with its card count,
    in (school, room) code-point order."""
    query = select(Room.id, Room.school_id, Room.name)
    if schools is not None:
        query = query.where(Room.school_id.in_(schools))
    if room_ids is not None:
        query = query.where(Room.id.in_(room_ids))
    with registry.session() as s:
        found = s.execute(query).all()
        counts: dict[int, int] = {}
        for rid in s.scalars(select(PodiumCard.room_id).where(PodiumCard.room_id.in_([r[0] for r in found]))):
            counts[rid] = counts.get(rid, 0) + 1
    return [{"school": school, "room": name, "cards": counts.get(rid, 0)}
            for rid, school, name in sorted(found, key=lambda r: (r[1], r[2]))]


EXAMPLE_CSV = """\
# campus-iot podium cards: one line per card; card numbers are pseudonymised at import, never stored.
card,role,label
0x0009356179,teacher,Ms Li
A1B2C3D4,teacher,Mr Wang
3735928559,cleaner,
"""
