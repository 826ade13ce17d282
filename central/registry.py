"""The registry: schools, buildings, rooms, gateways, devices, people and their rights.

SQLAlchemy 2 ORM, SQLite by default (`sqlite:///PATH`), so PostgreSQL is a
URL away. The ledger (`ledger.py`) records what gateways *say*; the
registry records what IT staff *provisioned*: which room a gateway is in,
its MQTT credentials, its device list and config version, who may log in
and which rooms a teacher may command. Alarms, schedules and the audit
trail live here too, because people act on them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, joinedload, mapped_column, relationship, selectinload
from werkzeug.security import check_password_hash, generate_password_hash

from campus import names
from campus.errors import ConfigError, PayloadError
from campus.i18n import LazyText, lazy_gettext
from central.db import Base, Database, TranslatableText, open_database

ROLES = ("admin", "facility", "teacher")
# Row ids are INTEGER: 32 bits on PostgreSQL, 64 on SQLite. A larger number typed in a URL or a form names
# no row on either engine, and must not reach PostgreSQL ("integer out of range": a 503, not a 404).
ROW_ID_MAX = 2**31 - 1


class School(Base):
    __tablename__ = "schools"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(names.SCHOOL_NAME_MAX), default="")
    # The school's default idle-off minutes (central/edge_rules.py), taken by every room without its own; None: none.
    idle_off_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)


class SchoolSecret(Base):
    """The key card readers pseudonymise UIDs with: one per school, made once, so the same
    card has the same pseudonym in every room and after a gateway's config is downloaded again."""
    __tablename__ = "school_secrets"
    school_id: Mapped[str] = mapped_column(ForeignKey("schools.id"), primary_key=True)
    card_secret: Mapped[str] = mapped_column(String(64))


class Building(Base):
    __tablename__ = "buildings"
    __table_args__ = (UniqueConstraint("school_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    school_id: Mapped[str] = mapped_column(ForeignKey("schools.id"))
    name: Mapped[str] = mapped_column(String(names.BUILDING_MAX))


class Room(Base):
    __tablename__ = "rooms"
    __table_args__ = (UniqueConstraint("school_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    school_id: Mapped[str] = mapped_column(ForeignKey("schools.id"))
    building_id: Mapped[int | None] = mapped_column(ForeignKey("buildings.id"), nullable=True)
    name: Mapped[str] = mapped_column(String(names.ROOM_MAX))
    # Idle-off (central/edge_rules.py): minutes with nobody counted and no command before the room's gateway
    # switches its equipment off; None: the school's default (School.idle_off_minutes), never if it has none.
    idle_off_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    building: Mapped[Building | None] = relationship()


class Gateway(Base):
    __tablename__ = "registered_gateways"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    school_id: Mapped[str] = mapped_column(ForeignKey("schools.id"))
    room_id: Mapped[int | None] = mapped_column(ForeignKey("rooms.id"), nullable=True)
    mqtt_username: Mapped[str] = mapped_column(String(100), unique=True)
    # Mosquitto's own PBKDF2-SHA512 format ($7$...), ready for its password_file.
    mqtt_password_hash: Mapped[str] = mapped_column(String(300))
    config_version: Mapped[int] = mapped_column(Integer, default=1)
    created: Mapped[float] = mapped_column(Float, default=time.time)
    room: Mapped[Room | None] = relationship()
    devices: Mapped[list[Device]] = relationship(back_populates="gateway", cascade="all, delete-orphan",
                                                 order_by="Device.device_id")


class Device(Base):
    __tablename__ = "registered_devices"
    __table_args__ = (UniqueConstraint("gateway_id", "device_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    gateway_id: Mapped[str] = mapped_column(ForeignKey("registered_gateways.id"))
    device_id: Mapped[str] = mapped_column(String(64))
    profile: Mapped[str] = mapped_column(String(64))
    address: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    gateway: Mapped[Gateway] = relationship(back_populates="devices")


class User(Base):
    __tablename__ = "users"
    # One account per person of an OpenID provider (central/oidc_users.py); migration 0006.
    __table_args__ = (Index("uq_users_oidc_identity", "oidc_issuer", "oidc_subject", unique=True),)
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    # "" for an account without a local password (it signs in with the education platform only).
    password_hash: Mapped[str] = mapped_column(String(300))
    # "" (NO_ROLE): signed in with the platform, which named no role; no access until an admin gives one.
    role: Mapped[str] = mapped_column(String(16))
    # The OpenID provider's issuer and subject (`sub`) of the person, once signed in with it; else NULL.
    oidc_issuer: Mapped[str | None] = mapped_column(String(255), nullable=True)
    oidc_subject: Mapped[str | None] = mapped_column(String(255), nullable=True)
    rooms: Mapped[list[Room]] = relationship(secondary="user_rooms")
    # An admin or facility account limited to these schools (a school's own IT person or facility
    # manager); none: district-wide. Migration 0004.
    schools: Mapped[list[School]] = relationship(secondary="user_schools", order_by="School.id")
    # The language the user chose with the pages' switch (a BCP 47 tag, dashboards/i18n.py); none: the
    # browser's and the site's. Migration 0007.
    language: Mapped[str | None] = mapped_column(String(16), nullable=True)


class UserRoom(Base):
    __tablename__ = "user_rooms"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    room_id: Mapped[int] = mapped_column(ForeignKey("rooms.id"), primary_key=True)


class UserSchool(Base):
    __tablename__ = "user_schools"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    school_id: Mapped[str] = mapped_column(ForeignKey("schools.id"), primary_key=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(names.LABEL_MAX), default="")
    # SHA-256 of the token: a token is 32 random bytes, so a fast hash is enough
    # (unlike a password, it cannot be guessed from a dictionary).
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[float] = mapped_column(Float, default=time.time)
    user: Mapped[User] = relationship()


class WebSession(Base):
    """A browser's session with the web app (dashboards/sessions.py). The cookie carries only the session
    id; the row holds the rest (who is logged in, the CSRF token, messages for the next page), keyed by
    the id's SHA-256 so that a copy of the database hands out no live session. Deleted at logout and,
    for all of a user's, when the user's password is set."""
    __tablename__ = "web_sessions"
    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created: Mapped[float] = mapped_column(Float)
    seen: Mapped[float] = mapped_column(Float, index=True)


class AlarmRule(Base):
    __tablename__ = "alarm_rules"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # see central/alarms.py RULE_KINDS
    # One rule per kind (migration 0002): an index, which SQLite adds without copying the table.
    __table_args__ = (Index("uq_alarm_rules_kind", "kind", unique=True),)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class Alarm(Base):
    __tablename__ = "alarms"
    # A room's open alarms, found per room by the board and the district's rollup (migration 0012).
    __table_args__ = (Index("ix_alarms_gateway_cleared", "gateway", "cleared_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("alarm_rules.id"))
    gateway: Mapped[str] = mapped_column(String(64))
    device: Mapped[str] = mapped_column(String(64), default="")
    # Written as a LazyText since issue 20, read as a StoredText (English str, keeping it): central/db.py.
    message: Mapped[str | LazyText] = mapped_column(TranslatableText)
    value: Mapped[str] = mapped_column(String(100), default="")
    raised_at: Mapped[float] = mapped_column(Float, default=time.time)
    acked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    acked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cleared_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    rule: Mapped[AlarmRule] = relationship()


class Schedule(Base):
    __tablename__ = "schedules"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(names.SCHEDULE_NAME_MAX))
    school_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    building_id: Mapped[int | None] = mapped_column(ForeignKey("buildings.id"), nullable=True)
    at: Mapped[str] = mapped_column(String(5))            # "22:00" on the school's wall clock (its zone)
    days: Mapped[str] = mapped_column(String(32), default="mon,tue,wed,thu,fri")
    action: Mapped[str] = mapped_column(String(32))       # a contract action, e.g. power_off
    kinds: Mapped[str] = mapped_column(String(64), default="display,projector")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_run: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Migration 0012: a schedule anchored to the school's day instead of `at` (central/schedules.py
    # ANCHORS: "last_period", the end of the day's last class period), `offset_min` minutes after it.
    anchor: Mapped[str | None] = mapped_column(String(16), nullable=True)
    offset_min: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ScheduleClaim(Base):
    """The occurrence of an anchored schedule central last ran for one school (migration 0012): its time
    differs per school (each its own last period), so one `last_run` per schedule cannot claim it. Also one
    zone's occurrence of a fixed-time schedule for every school (`school_id` "zone:<IANA name>",
    central/schedules.py ZONE_CLAIM): `at` is each school's wall clock, so each zone's differs too."""
    __tablename__ = "schedule_claims"
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id"), primary_key=True)
    school_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_run: Mapped[float] = mapped_column(Float)


class ScheduleRun(Base):
    __tablename__ = "schedule_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id"))
    ran_at: Mapped[float] = mapped_column(Float, default=time.time)
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class AuditRecord(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    ts: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    user: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    ok: Mapped[bool] = mapped_column(Boolean, default=True)
    remote: Mapped[str] = mapped_column(String(64), default="")


# ---------------------------------------------------------------- helpers


def mosquitto_password_hash(password: str, iterations: int = 101) -> str:
    """A password_file entry in Mosquitto 2's PBKDF2-SHA512 format (`$7$`)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def gateway_account(school: str, gateway: str) -> str:
    """The MQTT user name of a gateway. Not unique by construction (`a-b`/`c` and `a`/`b-c` both
    give `gw-a-b-c`): registration refuses a second gateway whose name is taken."""
    return f"gw-{school}-{gateway}"[:100]


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def row_id(raw: object) -> int | None:
    """A row id typed in a URL or a form: plain ASCII digits, at most ROW_ID_MAX; None if it is not one."""
    if not isinstance(raw, str) or not re.fullmatch(r"[0-9]{1,10}", raw):
        return None
    value = int(raw)
    return value if value <= ROW_ID_MAX else None


# An API token is checked with one fast hash, not a slow one like a password: it must be long enough
# that guessing is hopeless (the tokens we issue have 43 characters; a chosen one needs at least this).
MIN_TOKEN_CHARS = 16


def check_token(token: str, what: str = "an API token") -> str:
    """`token` if it is long enough to be a secret; ConfigError (one line at the command line) if not."""
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or token != token.strip():
        raise ConfigError(f"{what} needs at least {MIN_TOKEN_CHARS} characters, no spaces at either end and no "
                          f"control characters (got {len(token)} characters)")
    return token


# Who is calling, for every request (`Registry.principal`, `principal_for_token`): the user, its rooms, their
# gateways and its schools, outer-joined in one statement (a teacher has rooms and no schools, a scoped
# account schools and no rooms, so the rows stay few). The ORM's lazy loads took four or five statements;
# and the statements are built once, here: building the select per request cost ten times its execution
# (0.5 ms against 0.05 ms of CPU), on the path of every one of the 500 panel streams opened at 8:00
# (docs/benchmarks.md section 10).
_PRINCIPAL = (select(User.username, User.role, User.language, Room.id, Room.name, Gateway.id, UserSchool.school_id)
              .select_from(User)
              .outerjoin(UserRoom, UserRoom.user_id == User.id).outerjoin(Room, Room.id == UserRoom.room_id)
              .outerjoin(Gateway, Gateway.room_id == Room.id)
              .outerjoin(UserSchool, UserSchool.user_id == User.id)
              .order_by(Room.id, Gateway.id))
_PRINCIPAL_BY_NAME = _PRINCIPAL.where(User.username == bindparam("username"))
_PRINCIPAL_BY_TOKEN = _PRINCIPAL.where(User.id == select(ApiToken.user_id).where(
    ApiToken.token_sha256 == bindparam("digest")).scalar_subquery())


class Registry:
    """The registry's operations the web app and CLI perform, on the central database."""

    def __init__(self, db: Database | str) -> None:
        # A URL: a database of its own (tests, one-off tools), closed with the registry.
        self._owns_db = isinstance(db, str)
        self.db = open_database(db) if isinstance(db, str) else db
        self.url = self.db.url
        self.engine = self.db.engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.db.errors("registry"), self.db.session() as s:
            yield s

    def close(self) -> None:
        if self._owns_db:
            self.db.close()

    # ------------------------------------------------------------ people

    def add_user(self, username: str, password: str | None, role: str, rooms: list[tuple[str, str]] = (),
                 schools: list[str] = ()) -> None:
        """Create or update a user; `rooms` are (school, room name) pairs (teachers); `schools` limit an
        admin or facility account to those schools (none: district-wide). Every one must exist: a typo
        would otherwise make an account that sees nothing, or (worse, if dropped) everything.

        `password` None: the account's password stays as it is, and a new account gets none: it signs in
        with the education platform only (docs/oidc.md), which is also how an admin gives a role to a
        person the platform signed in without one."""
        if role not in ROLES:
            raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
        names.identifier(username, "username")
        if password is not None and len(password) < 8:
            raise ConfigError("a password needs at least 8 characters")
        rooms = [(names.identifier(school, "school"), names.display_name(name, "room", max_chars=names.ROOM_MAX))
                 for school, name in rooms]
        schools = list(dict.fromkeys(names.identifier(school, "school") for school in schools))
        if schools and role == "teacher":
            raise ConfigError("--school limits an admin or facility account; a teacher has rooms (--room)")
        with self.session() as s:
            user = s.scalar(select(User).where(User.username == username)) or User(username=username)
            if user.id is not None:  # a new password (or role, or rooms): every open login of the user ends
                s.execute(delete(WebSession).where(WebSession.username == username))
            if password is not None:
                user.password_hash = generate_password_hash(password)
            elif user.id is None:
                user.password_hash = ""  # no local password: check_password_hash never matches it
            user.role = role
            user.rooms = [self._room(s, school, name) for school, name in rooms]
            user.schools = [self._school(s, school) for school in schools]
            s.add(user)

    def check_password(self, username: str, password: str) -> dict[str, Any] | None:
        with self.session() as s:
            user = s.scalar(select(User).where(User.username == username))
            if user is None:
                check_password_hash(generate_password_hash("x"), password)  # same time either way
                return None
            ok = check_password_hash(user.password_hash, password)
        return self.principal(username) if ok else None

    def principal(self, username: str) -> dict[str, Any] | None:
        """Who `username` is and what they may reach (`_principal`), or None: one statement."""
        return self._principal(_PRINCIPAL_BY_NAME, {"username": username})

    def _principal(self, query: Any, params: dict[str, str]) -> dict[str, Any] | None:
        """The account `query` (`_PRINCIPAL_BY_NAME` or `_BY_TOKEN`) finds, as the web app checks rights
        with it: user, role, rooms (names and ids, in id order), the gateways of those rooms, and `schools`
        (those an admin or facility account is limited to, in code-point order; empty: the whole district).
        None if there is no such account."""
        with self.db.read("cannot read the account") as conn:
            rows = conn.execute(query, params).all()
        if not rows:
            return None
        rooms: dict[int, str] = {}
        gateways: dict[str, None] = {}
        schools: set[str] = set()
        for _user, _role, _language, room_id, room_name, gateway, school in rows:
            if room_id is not None:
                rooms[room_id] = room_name
            if gateway is not None:
                gateways[gateway] = None
            if school is not None:
                schools.add(school)
        return {"user": rows[0][0], "role": rows[0][1], "rooms": list(rooms.values()),
                "room_ids": list(rooms), "gateways": list(gateways), "schools": sorted(schools),
                "language": rows[0][2]}

    def set_language(self, username: str, language: str | None) -> None:
        """Keep the language `username` chose (a tag the web app checked), or forget it (None)."""
        with self.session() as s:
            s.execute(update(User).where(User.username == username).values(language=language))

    def ensure_admin(self, token: str | None = None) -> str | None:
        """Make sure an `admin` user exists (returns its new password if created) and owns `token`.

        Web instances of a district start at once on one database: the one that loses the race to create
        the user (or the token) finds it made by the other, which is what it wanted, not a failed start."""
        password = None
        if self.principal("admin") is None:
            password = secrets.token_urlsafe(12)
            try:
                self.add_user("admin", password, "admin")
            except IntegrityError:  # created a moment ago by another instance, which wrote its password file
                password = None
        if token and self.principal_for_token(token) is None:
            try:
                self.add_token("admin", token, "command line")
            except IntegrityError:
                if self.principal_for_token(token) is None:
                    raise
        return password

    def issue_token(self, username: str, name: str = "") -> str:
        token = secrets.token_urlsafe(32)
        self.add_token(username, token, name)
        return token

    def add_token(self, username: str, token: str, name: str = "") -> None:
        name = names.display_name(name, "label", max_chars=names.LABEL_MAX, required=False)
        check_token(token)
        with self.session() as s:
            user = s.scalar(select(User).where(User.username == username))
            if user is None:
                raise ConfigError(f"no user {username!r}")
            s.add(ApiToken(user_id=user.id, name=name, token_sha256=token_digest(token)))

    def principal_for_token(self, token: str) -> dict[str, Any] | None:
        """The account an API token belongs to (`_principal`), or None: one statement."""
        return self._principal(_PRINCIPAL_BY_TOKEN, {"digest": token_digest(token)})

    # ------------------------------------------------------------ browser sessions (dashboards/sessions.py)

    def web_session(self, sid: str) -> dict[str, Any] | None:
        """The session with this id: data, username, created, seen; None if there is none."""
        with self.session() as s:
            row = s.get(WebSession, token_digest(sid))
            if row is None:
                return None
            return {"data": dict(row.data or {}), "username": row.username, "created": row.created,
                    "seen": row.seen}

    def create_web_session(self, sid: str, data: dict[str, Any], now: float) -> None:
        with self.session() as s:
            s.add(WebSession(id_sha256=token_digest(sid), username=data.get("user"), data=data, created=now,
                             seen=now))

    def update_web_session(self, sid: str, data: dict[str, Any], seen: float) -> bool:
        """Store the session's new data; False (and nothing stored) if it ended meanwhile: a request
        still running when its user logged out must not bring the session back."""
        with self.session() as s:
            return s.execute(update(WebSession).where(WebSession.id_sha256 == token_digest(sid)).values(
                data=data, username=data.get("user"), seen=seen)).rowcount == 1

    def touch_web_session(self, sid: str, seen: float) -> bool:
        """Record activity; False if the session is gone (logged out, or its user's password changed)."""
        with self.session() as s:
            return s.execute(update(WebSession).where(WebSession.id_sha256 == token_digest(sid)).values(
                seen=seen)).rowcount == 1

    def delete_web_session(self, sid: str) -> None:
        with self.session() as s:
            s.execute(delete(WebSession).where(WebSession.id_sha256 == token_digest(sid)))

    def delete_user_sessions(self, username: str) -> int:
        """End every browser login of `username`; how many there were."""
        with self.session() as s:
            return s.execute(delete(WebSession).where(WebSession.username == username)).rowcount

    def purge_web_sessions(self, seen_before: float, anonymous_seen_before: float, created_before: float) -> int:
        """Delete sessions idle since `seen_before` (without a login: since `anonymous_seen_before`) or
        begun before `created_before`; how many."""
        with self.session() as s:
            return s.execute(delete(WebSession).where(
                (WebSession.seen < seen_before) | (WebSession.created < created_before)
                | (WebSession.username.is_(None) & (WebSession.seen < anonymous_seen_before)))).rowcount

    # ------------------------------------------------------------ places

    @staticmethod
    def _school(s: Session, school: str) -> School:
        row = s.get(School, school)
        if row is None:
            raise ConfigError(lazy_gettext("no school %(school)s (create it first: the provisioning pages or a CSV "
                                           "import)", school=repr(school)))
        return row

    def _room(self, s: Session, school: str, name: str) -> Room:
        room = s.scalar(select(Room).where(Room.school_id == school, Room.name == name))
        if room is None:
            raise ConfigError(lazy_gettext("no room %(room)s in school %(school)s", room=repr(name), school=repr(school)))
        return room

    def ensure_room(self, school: str, room: str, building: str = "") -> int:
        """The id of a room, created (with its school and building) if missing. Every name is checked
        by `campus.names`: this is the path of the forms, the CLI and the demo."""
        names.identifier(school, "school")
        room = names.display_name(room, "room", max_chars=names.ROOM_MAX)
        building = names.display_name(building, "building", max_chars=names.BUILDING_MAX, required=False)
        with self.session() as s:
            if s.get(School, school) is None:
                s.add(School(id=school, name=school))
                s.flush()
            b = None
            if building:
                b = s.scalar(select(Building).where(Building.school_id == school, Building.name == building))
                if b is None:
                    b = Building(school_id=school, name=building)
                    s.add(b)
                    s.flush()
            r = s.scalar(select(Room).where(Room.school_id == school, Room.name == room))
            if r is None:
                r = Room(school_id=school, name=room, building_id=b.id if b else None)
                s.add(r)
                s.flush()
            elif b is not None:
                r.building_id = b.id
            return r.id

    def register_gateway(self, gateway: str, school: str, room: str, building: str = "") -> str:
        """Create a gateway with fresh MQTT credentials; returns the plain password (shown once)."""
        names.identifier(gateway, "gateway")
        names.identifier(school, "school")
        username = gateway_account(school, gateway)
        with self.session() as s:  # refuse before ensure_room creates anything
            self._check_new_gateway(s, gateway, username)
        room_id = self.ensure_room(school, room, building)
        password = secrets.token_urlsafe(18)
        try:
            with self.session() as s:
                self._check_new_gateway(s, gateway, username)
                s.add(Gateway(id=gateway, school_id=school, room_id=room_id, mqtt_username=username,
                              mqtt_password_hash=mosquitto_password_hash(password)))
        except IntegrityError:
            # Registered at the same moment by another request: the same refusal, and no row values
            # (the new hash) in any message.
            raise ConfigError(lazy_gettext("gateway %(gateway)s: the id or its MQTT user name %(username)s was just "
                                           "registered by someone else; reload and choose another id",
                                           gateway=repr(gateway), username=repr(username))) from None
        return password

    @staticmethod
    def _check_new_gateway(s: Session, gateway: str, username: str) -> None:
        if s.get(Gateway, gateway) is not None:
            raise ConfigError(lazy_gettext("gateway %(gateway)s is already registered", gateway=repr(gateway)))
        other = s.scalar(select(Gateway).where(Gateway.mqtt_username == username))
        if other is not None:
            raise ConfigError(lazy_gettext("gateway %(gateway)s: its MQTT user name %(username)s is already the account "
                                           "of gateway %(other)s of school %(school)s; choose another gateway id",
                                           gateway=repr(gateway), username=repr(username), other=repr(other.id),
                                           school=repr(other.school_id)))

    def add_device(self, gateway: str, device_id: str, profile: str, address: dict[str, Any],
                   options: dict[str, Any] | None = None) -> None:
        """Add (or replace) a device after validating it exactly as the agent will."""
        from pydantic import ValidationError

        from device_profiles.config import DeviceConfig  # one validator for the agent and the registry

        try:
            DeviceConfig(id=device_id, profile=profile, address=address, options=options or {})
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(lazy_gettext("device %(device)s: field %(field)s: %(reason)s", device=repr(device_id),
                                           field=".".join(map(str, err["loc"])),
                                           reason=err["msg"].removeprefix("Value error, "))) from None
        with self.session() as s:
            gw = s.get(Gateway, gateway)
            if gw is None:
                raise ConfigError(lazy_gettext("no gateway %(gateway)s", gateway=repr(gateway)))
            existing = next((d for d in gw.devices if d.device_id == device_id), None)
            if existing is None:
                gw.devices.append(Device(device_id=device_id, profile=profile, address=address, options=options or {}))
            else:
                existing.profile, existing.address, existing.options = profile, address, options or {}
            gw.config_version += 1

    def remove_device(self, gateway: str, device_id: str) -> None:
        with self.session() as s:
            gw = s.get(Gateway, gateway)
            dev = next((d for d in gw.devices if d.device_id == device_id), None) if gw else None
            if dev is None:
                raise ConfigError(lazy_gettext("no device %(device)s on gateway %(gateway)s", device=repr(device_id),
                                               gateway=repr(gateway)))
            gw.devices.remove(dev)
            gw.config_version += 1

    def gateway_info(self, gateway: str) -> dict[str, Any] | None:
        """A registered gateway: place, MQTT user name, config version, devices; None if there is none."""
        return self.gateway_infos([gateway]).get(gateway)

    def gateway_infos(self, ids: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
        """`gateway_info` of each of `ids` (a page; None: every gateway), by id: two statements (the gateways
        with their rooms and buildings joined, then their devices), where lazy loads took four per gateway
        (a page of 50 gateways ran 200, a panel page four: bench/dashboard.py)."""
        query = select(Gateway).options(selectinload(Gateway.devices),
                                        joinedload(Gateway.room).joinedload(Room.building))
        if ids is not None:
            query = query.where(Gateway.id.in_(list(ids)))
        with self.session() as s:
            return {gw.id: {"id": gw.id, "school": gw.school_id, "room": gw.room.name if gw.room else "",
                            "building": gw.room.building.name if gw.room and gw.room.building else "",
                            "mqtt_username": gw.mqtt_username, "config_version": gw.config_version,
                            "devices": [{"id": d.device_id, "profile": d.profile, "address": d.address,
                                         "options": d.options} for d in gw.devices]}
                    for gw in s.scalars(query).unique()}

    def gateways(self) -> list[dict[str, Any]]:
        """Every registered gateway (`gateway_info`), by school then id in code-point order: sorted here, as
        SQL's string order is the collation (PostgreSQL: the cluster's locale, where "gw_b" < "gw-a" <
        "GW-A"; SQLite: binary), and the broker files and pages made from this list must not change with
        the engine."""
        infos = self.gateway_infos()
        return [infos[gid] for _school, gid in sorted((info["school"], gid) for gid, info in infos.items())]

    def card_secret(self, school: str) -> str:
        """The school's card secret (SchoolSecret), made on first use."""
        with self.session() as s:
            row = s.get(SchoolSecret, school)
            if row is not None:
                return row.card_secret
        try:
            with self.session() as s:
                s.add(SchoolSecret(school_id=school, card_secret=secrets.token_hex(16)))
        except IntegrityError:
            pass  # another request or process made it first: use theirs
        with self.session() as s:
            row = s.get(SchoolSecret, school)
            if row is None:
                raise ConfigError(f"no school {school!r}")
            return row.card_secret

    def gateway_config(self, gateway: str, mqtt_url: str, password: str = "CHANGE-ME") -> dict[str, Any]:
        """A ready-to-copy gateway config (YAML-able) for a registered gateway."""
        info = self.gateway_info(gateway)
        if info is None:
            raise ConfigError(lazy_gettext("no gateway %(gateway)s", gateway=repr(gateway)))
        from urllib.parse import quote, urlsplit, urlunsplit

        parts = urlsplit(mqtt_url)
        netloc = f"{quote(info['mqtt_username'])}:{quote(password)}@{parts.hostname}:{parts.port or 1883}"
        return {"school": info["school"], "gateway": gateway, "room": info["room"], "building": info["building"],
                "mqtt": urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")),
                "poll_interval": 5, "card_secret": self.card_secret(info["school"]),
                "config_version": info["config_version"],
                "devices": [{"id": d["id"], "profile": d["profile"], "address": d["address"],
                             **({"options": d["options"]} if d["options"] else {})} for d in info["devices"]]}

    def device_list_payload(self, gateway: str) -> bytes:
        """The retained `config` message: the device list a gateway should run."""
        info = self.gateway_info(gateway)
        if info is None:
            raise PayloadError(f"no gateway {gateway!r}")
        return json.dumps({"version": info["config_version"], "devices": info["devices"]},
                          separators=(",", ":")).encode()

    # ------------------------------------------------------------ audit

    def audit(self, user: str, action: str, detail: str = "", ok: bool = True, remote: str = "") -> None:
        """Record what someone did or was refused. The refusal of a hostile request is recorded with what
        was sent, which may hold a NUL: SQLite stores it, PostgreSQL refuses the whole INSERT (a 503
        instead of the 4xx). So a NUL is written as the four characters \\x00, and each value is cut to
        its column (PostgreSQL enforces VARCHAR lengths, SQLite does not)."""
        def fit(text: str, chars: int) -> str:
            return text.replace("\x00", "\\x00")[:chars]

        with self.session() as s:
            s.add(AuditRecord(user=fit(user, 64), action=fit(action, 64), detail=fit(detail, 2000), ok=ok,
                              remote=fit(remote, 64)))

    def audit_trail(self, limit: int = 200) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)).all()
            return [{"ts": r.ts, "user": r.user, "action": r.action, "detail": r.detail, "ok": r.ok,
                     "remote": r.remote} for r in rows]
