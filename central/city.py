"""The city above the districts (issue 19, part 6): the rollups a city keeps, and the one wire format.

A city (or a prefecture's) education bureau watches its districts the way a district watches its
schools: one row per school, rolled up, never the rooms' own data. Each district's central sends its
per-school rollup (`GET /api/schools`: rooms, gateways online, open alarms, faults, lamps and filters
due, this week's usage periods and CO2-over-limit seconds) to the city on a schedule (central/city_push.py); the city runs the
same `campus web --city` and shows districts, then a district's schools, read-only.

Why an authenticated HTTP push and not a Mosquitto bridge, as schools reach their district: a
bridge carries the gateways' own topics to the place that ingests them, and a city ingests nothing.
A bridge would need a city broker, a city ingest, new topics and ACLs per district, all to move one
small document a minute. The push is one HTTPS request out of the district (no port opened into it),
authenticated by a per-district token the city issues (`campus city add-district NAME`), and the city
stays a web app on a database. What crosses is only the rollup: no card events, no per-room or camera
data, no names of people (`parse_rollup` accepts nothing else: an unknown field is refused).

Every push carries the district, when it was made and a sequence number; the city keeps the newest
per district (a higher seq replaces the district's rows in one transaction, the same seq again is a
replay and changes nothing, a lower one is refused with the seq the city holds, so a district whose
database started over catches up). A district's token writes that district's rows only.

Tables: `city_districts` and `city_schools` (city side), `city_push` (district side: the last seq
used); migration 0005.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    String,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from campus import names
from campus.contract import CLOCK_AHEAD_S
from campus.errors import ConfigError, PayloadError
from central import lists
from central.db import Base, Database
from central.registry import token_digest

# One district's push: far more schools than a district has (a large one: a few hundred), and bounded
# so that a hostile body cannot make the city write without end (the web app caps bodies at 2 MB too).
MAX_SCHOOLS = 2000
MAX_COUNT = 10_000_000     # any count of rooms, alarms or periods in one school
MAX_KINDS = 64             # alarm rule kinds in one school's `alarms_by_kind`
MAX_SEQ = 2**62
OLDEST_TS = 1.5e9          # 2017: a generated-at time before it is a clock that was never set
COUNTS = ("rooms", "gateways", "online", "offline", "alarms", "alarms_active", "faults", "lamps_due",
          "filters_due")
# CO2 seconds over the limit this week: up to every second of a week in each room.
MAX_CO2_S = MAX_COUNT * 7 * 86400
# kWh this week of a school's metered rooms (0010): a classroom draws a few kW at most.
MAX_KWH_PER_ROOM_WEEK = 100.0 * 7 * 24
SCHOOL_FIELDS = ("school", "name", *COUNTS, "alarms_by_kind", "usage_periods", "usage_used", "co2_over_s",
                 "energy_kwh")
# Fields a district of an older release does not send (taken as null): a city upgraded first still takes them.
OPTIONAL_FIELDS = ("co2_over_s", "energy_kwh")
FIELDS = ("district", "seq", "generated_at", "schools")


# ---------------------------------------------------------------- tables


class CityDistrict(Base):
    """A district the city takes rollups from: its token (SHA-256, as API tokens) and the newest push."""
    __tablename__ = "city_districts"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[float] = mapped_column(Float)
    seq: Mapped[int] = mapped_column(BigInteger)                       # 0: nothing received yet
    generated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    received_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class CitySchool(Base):
    """One school of a district as its newest push said."""
    __tablename__ = "city_schools"
    district: Mapped[str] = mapped_column(ForeignKey("city_districts.name"), primary_key=True)
    school: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(names.SCHOOL_NAME_MAX))
    rooms: Mapped[int] = mapped_column(Integer)
    gateways: Mapped[int] = mapped_column(Integer)
    online: Mapped[int] = mapped_column(Integer)
    offline: Mapped[int] = mapped_column(Integer)
    alarms: Mapped[int] = mapped_column(Integer)
    alarms_active: Mapped[int] = mapped_column(Integer)
    faults: Mapped[int] = mapped_column(Integer)
    lamps_due: Mapped[int] = mapped_column(Integer)
    filters_due: Mapped[int] = mapped_column(Integer)
    alarms_by_kind: Mapped[dict[str, int]] = mapped_column(JSON)
    # This week's class periods and those a display or projector was on (None: not measured).
    usage_periods: Mapped[int | None] = mapped_column(Integer, nullable=True)
    usage_used: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # This week's seconds of CO2 over the alarm limit in the school's rooms (None: not measured; 0008).
    co2_over_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # This week's kWh of the school's metered rooms (None: no meter; 0010).
    energy_kwh: Mapped[float | None] = mapped_column(Float, nullable=True)


class CityPush(Base):
    """District side: the last sequence number this district used towards its city (one row per name)."""
    __tablename__ = "city_push"
    district: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    pushed_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # the city's last acceptance


# ---------------------------------------------------------------- the wire format, checked


class RollupError(PayloadError):
    """One thing wrong with a pushed rollup; `field` is its JSON path (`schools[3].online`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class Rollup:
    district: str
    seq: int
    generated_at: float
    schools: tuple[dict[str, Any], ...]  # each with SCHOOL_FIELDS, checked


def _count(value: object, where: str, most: int = MAX_COUNT) -> int:
    # bool is an int to Python, not a count to anyone; 3.0 is a count JSON may carry.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RollupError(where, "must be a whole number")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise RollupError(where, "must be a whole number")
    if not 0 <= value <= most:
        raise RollupError(where, f"must be 0 to {most}")
    return int(value)


def _only(obj: dict[str, Any], allowed: tuple[str, ...], where: str, optional: tuple[str, ...] = ()) -> None:
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise RollupError(f"{where}{extra[0][:64]}", "unknown field (a rollup holds only: " + ", ".join(allowed) + ")")
    missing = [k for k in allowed if k not in obj and k not in optional]
    if missing:
        raise RollupError(f"{where}{missing[0]}", "missing")


def _school(raw: object, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RollupError(where, "must be an object")
    _only(raw, SCHOOL_FIELDS, f"{where}.", OPTIONAL_FIELDS)
    try:
        school = names.identifier(raw["school"], f"{where}.school")
        name = names.display_name(raw["name"], f"{where}.name", max_chars=names.SCHOOL_NAME_MAX)
    except names.BadName as exc:
        raise RollupError(exc.field, exc.reason) from None
    row: dict[str, Any] = {"school": school, "name": name}
    for key in COUNTS:
        row[key] = _count(raw[key], f"{where}.{key}")
    kinds = raw["alarms_by_kind"]
    if not isinstance(kinds, dict) or len(kinds) > MAX_KINDS:
        raise RollupError(f"{where}.alarms_by_kind", f"must be an object of at most {MAX_KINDS} rule kinds")
    row["alarms_by_kind"] = {}
    for kind, n in sorted(kinds.items()):
        try:
            names.identifier(kind, "kind")
        except names.BadName:
            raise RollupError(f"{where}.alarms_by_kind", f"{kind[:64]!r} is not a rule kind") from None
        row["alarms_by_kind"][kind] = _count(n, f"{where}.alarms_by_kind.{kind}")
    periods, used = raw["usage_periods"], raw["usage_used"]
    if (periods is None) != (used is None):
        raise RollupError(f"{where}.usage_used", "usage_periods and usage_used are both null or both numbers")
    row["usage_periods"] = None if periods is None else _count(periods, f"{where}.usage_periods")
    row["usage_used"] = None if used is None else _count(used, f"{where}.usage_used")
    co2 = raw.get("co2_over_s")
    row["co2_over_s"] = None if co2 is None else _count(co2, f"{where}.co2_over_s", MAX_CO2_S)
    if row["co2_over_s"] is not None and row["co2_over_s"] > row["rooms"] * 7 * 86400:
        raise RollupError(f"{where}.co2_over_s", f"is more than a week in each of its {row['rooms']} rooms")
    kwh = raw.get("energy_kwh")
    if kwh is not None and (isinstance(kwh, bool) or not isinstance(kwh, (int, float)) or not math.isfinite(kwh)
                            or not 0 <= kwh <= max(1, row["rooms"]) * MAX_KWH_PER_ROOM_WEEK):
        raise RollupError(f"{where}.energy_kwh", f"must be a number of kWh from 0 to {MAX_KWH_PER_ROOM_WEEK:g} "
                                                 "per room")
    row["energy_kwh"] = None if kwh is None else round(float(kwh), 3)
    # Figures that contradict each other are a broken sender: refused, not stored as nonsense.
    for part, whole in (("online", "gateways"), ("offline", "gateways"), ("alarms_active", "alarms"),
                        ("usage_used", "usage_periods")):
        if row[part] is not None and row[part] > row[whole]:
            raise RollupError(f"{where}.{part}", f"is more than {whole} ({row[whole]})")
    if row["online"] + row["offline"] > row["gateways"]:
        raise RollupError(f"{where}.offline", "online + offline is more than gateways")
    if sum(row["alarms_by_kind"].values()) > row["alarms"]:
        raise RollupError(f"{where}.alarms_by_kind", f"adds up to more than alarms ({row['alarms']})")
    return row


def parse_rollup(body: object, now: float | None = None) -> Rollup:
    """A pushed body checked whole (RollupError naming the first field wrong): the district's id, seq,
    when it was made (not before 2017, not more than CLOCK_AHEAD_S ahead of this clock) and its schools."""
    now = time.time() if now is None else now
    if not isinstance(body, dict):
        raise RollupError("body", "must be a JSON object")
    _only(body, FIELDS, "")
    try:
        district = names.identifier(body["district"], "district")
    except names.BadName as exc:
        raise RollupError("district", exc.reason) from None
    seq = body["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        raise RollupError("seq", f"must be a whole number from 1 to {MAX_SEQ}")
    ts = body["generated_at"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise RollupError("generated_at", "must be a unix time in seconds")
    if ts < OLDEST_TS:
        raise RollupError("generated_at", "is before 2017: the district's clock is not set")
    if ts > now + CLOCK_AHEAD_S:
        raise RollupError("generated_at", f"is {ts - now:.0f} s ahead of the city's clock (at most {CLOCK_AHEAD_S:.0f})")
    raw = body["schools"]
    if not isinstance(raw, list) or len(raw) > MAX_SCHOOLS:
        raise RollupError("schools", f"must be an array of at most {MAX_SCHOOLS} schools")
    schools, seen = [], set()
    for i, item in enumerate(raw):
        row = _school(item, f"schools[{i}]")
        if row["school"] in seen:
            raise RollupError(f"schools[{i}].school", f"{row['school']!r} is given twice")
        seen.add(row["school"])
        schools.append(row)
    return Rollup(district, seq, float(ts), tuple(schools))


# ---------------------------------------------------------------- city side: districts and their tokens


def add_district(db: Database, name: str, now: float | None = None) -> str:
    """Admit a district (or give an admitted one a new token: the old one stops working, its rows stay);
    returns the token, shown once. ConfigError for a name no district id can be."""
    try:
        name = names.identifier(name, "district")
    except names.BadName as exc:
        raise ConfigError(str(exc)) from None
    token = secrets.token_urlsafe(32)
    t = CityDistrict.__table__
    with db.write(f"cannot save district {name}") as conn:
        if conn.execute(update(t).where(t.c.name == name).values(token_sha256=token_digest(token))).rowcount == 0:
            conn.execute(insert(t).values(name=name, token_sha256=token_digest(token),
                                          created=time.time() if now is None else now, seq=0))
    return token


def district_for_token(db: Database, token: str) -> str | None:
    """The district a push token belongs to, or None."""
    t = CityDistrict.__table__
    with db.read("cannot read the districts") as conn:
        return conn.execute(select(t.c.name).where(t.c.token_sha256 == token_digest(token))).scalar_one_or_none()


def store_rollup(db: Database, rollup: Rollup, now: float | None = None) -> tuple[bool, int]:
    """Keep `rollup` if it is newer than what the city holds of its district: (stored, the seq held now).

    One transaction: the seq is advanced only if lower (a compare-and-set, exact when two pushes of one
    district race), and then the district's schools are replaced whole, so a school the district no
    longer has leaves the city too."""
    d, s = CityDistrict.__table__, CitySchool.__table__
    with db.write(f"cannot store the rollup of {rollup.district}") as conn:
        newer = conn.execute(update(d).where(d.c.name == rollup.district, d.c.seq < rollup.seq).values(
            seq=rollup.seq, generated_at=rollup.generated_at, received_at=time.time() if now is None else now))
        if newer.rowcount != 1:
            held = conn.execute(select(d.c.seq).where(d.c.name == rollup.district)).scalar_one_or_none()
            return False, int(held or 0)
        conn.execute(delete(s).where(s.c.district == rollup.district))
        if rollup.schools:
            conn.execute(insert(s), [{**row, "district": rollup.district} for row in rollup.schools])
    return True, rollup.seq


# ---------------------------------------------------------------- city side: what it shows


def _rate(periods: int | None, used: int | None) -> float | None:
    return round(used / periods, 4) if periods and used is not None else None


def districts(db: Database, paging: lists.Paging, only: str | None = None) -> lists.Page[dict[str, Any]]:
    """A page of the districts by name (or just `only`), each with its newest push and its schools'
    totals: two statements whatever the number of districts and schools."""
    d, s = CityDistrict.__table__, CitySchool.__table__
    sums = [func.coalesce(func.sum(s.c[k]), 0).label(k) for k in COUNTS]
    totals = (select(s.c.district, func.count().label("schools"), *sums,
                     func.sum(s.c.usage_periods).label("usage_periods"), func.sum(s.c.usage_used).label("usage_used"),
                     func.sum(s.c.co2_over_s).label("co2_over_s"), func.sum(s.c.energy_kwh).label("energy_kwh"))
              .group_by(s.c.district).subquery("totals"))
    query = (select(d.c.name, d.c.seq, d.c.generated_at, d.c.received_at,
                    func.coalesce(totals.c.schools, 0).label("schools"),
                    *(func.coalesce(totals.c[k], 0).label(k) for k in COUNTS),
                    totals.c.usage_periods, totals.c.usage_used, totals.c.co2_over_s, totals.c.energy_kwh)
             .select_from(d).outerjoin(totals, totals.c.district == d.c.name).where(lists.matches(paging.q, d.c.name)))
    if only is not None:
        query = query.where(d.c.name == only)
    rows, total = lists.page_of(db, query, [lists.ordered(db, d.c.name)], paging, "districts")
    return lists.Page([{"district": r.name, "seq": r.seq, "generated_at": r.generated_at,
                        "received_at": r.received_at, "schools": int(r.schools),
                        **{k: int(getattr(r, k)) for k in COUNTS},
                        "usage_periods": None if r.usage_periods is None else int(r.usage_periods),
                        "usage_used": None if r.usage_used is None else int(r.usage_used),
                        "usage_rate": _rate(r.usage_periods, r.usage_used),
                        "co2_over_s": None if r.co2_over_s is None else int(r.co2_over_s),
                        "co2_hours": _hours(r.co2_over_s),
                        "energy_kwh": None if r.energy_kwh is None else round(float(r.energy_kwh), 3)}
                       for r in rows], total)


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(float(seconds) / 3600, 2)


def district_exists(db: Database, name: str) -> bool:
    t = CityDistrict.__table__
    with db.read("cannot read the districts") as conn:
        return conn.execute(select(t.c.name).where(t.c.name == name)).first() is not None


def district_schools(db: Database, district: str, paging: lists.Paging) -> lists.Page[dict[str, Any]]:
    """A page of one district's schools as its newest push said, by school id."""
    s = CitySchool.__table__
    query = select(s).where(s.c.district == district, lists.matches(paging.q, s.c.school, s.c.name))
    rows, total = lists.page_of(db, query, [lists.ordered(db, s.c.school)], paging, "schools")
    return lists.Page([{**{k: getattr(r, k) for k in ("district", *SCHOOL_FIELDS)},
                        "usage_rate": _rate(r.usage_periods, r.usage_used), "co2_hours": _hours(r.co2_over_s)}
                       for r in rows], total)
