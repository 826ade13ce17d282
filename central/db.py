"""The central database: one SQLAlchemy engine for the registry and the ledger, on SQLite or PostgreSQL.

`Database(url)` is what every central program opens: `sqlite:///PATH` (the embedded default: `campus
demo`, a school on one machine) or `postgresql+psycopg://user:password@host/db` (a district: ingest
workers and web instances on several hosts, nothing shared but the database and the broker). The
registry's models, the ledger's tables and provisioning's tables are all on `Base.metadata`; Alembic
(central/migrations/) creates and changes every one of them.

Transactions that read and then write take the write lock first: on SQLite `BEGIN IMMEDIATE` (one
writer at a time; readers go on under WAL), on PostgreSQL row locks (`SELECT ... FOR UPDATE`) in the
statements themselves. Every database failure a user can cause or meet (unreachable, wrong password,
a disk full, the server restarting) becomes a `StoreError` naming the database, never a traceback.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Float,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    create_engine,
    event,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.dml import Insert

from campus.errors import ConfigError, StoreError
from campus.i18n import LazyText, ReportedText, text_from_dict
from campus.urls import redacted
from central.store.sqlite import enable_wal

log = logging.getLogger(__name__)

# Constraint names spelled the same on both engines, so a migration can name what it changes.
NAMING = {"ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
          "ck": "ck_%(table_name)s_%(constraint_name)s", "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
          "pk": "pk_%(table_name)s"}
ENV_VAR = "CAMPUS_DB"
CONNECT_TIMEOUT_S = 10
# Web request threads and the background loops share one pool per process; a burst beyond it waits
# (POOL_WAIT_S) and then gets a StoreError (a 503), never an unbounded number of server connections.
POOL_SIZE = 8
POOL_OVERFLOW = 24
POOL_WAIT_S = 30


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class StoredText(str):
    """What a `TranslatableText` column reads: the English text, a str for every reader that wants one (a log
    line, a notification's JSON, an f-string), which also keeps its LazyText (`lazy`) for the reader who shows
    it in a person's language (`translatable`)."""

    lazy: LazyText

    def __new__(cls, lazy: LazyText) -> StoredText:
        text = super().__new__(cls, str(lazy))
        text.lazy = lazy
        return text


def translatable(value: Any) -> Any:
    """The LazyText of a value read from a `TranslatableText` column (a plain old row: the value as it is)."""
    return value.lazy if isinstance(value, StoredText) else value


class TranslatableText(TypeDecorator[Any]):
    """A text column whose value may be a `campus.i18n.LazyText` (an alarm's message): stored as its JSON
    (`{"msgid": ..., "params": ...}`), read back as a `StoredText` (English, keeping the LazyText), so each
    reader can show it in its own language. A plain string is stored and read as it is: the rows written
    before messages were marked still read as their English text. Still TEXT in the schema: no migration.
    A gateway's text (a command's result detail, `campus.i18n.ReportedText`) keeps its English beside the
    msgid and params (`"english"` in the JSON)."""

    impl = Text
    cache_ok = True
    _MARK = '{"msgid"'

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        value = translatable(value)
        if isinstance(value, str) and value.startswith(self._MARK):
            # Plain text that looks like a stored message (a gateway's detail may say anything): kept as the
            # English it is, so it is never read back as a message of the gateway's choosing.
            value = ReportedText(value)
        if isinstance(value, LazyText):
            return json.dumps(value.as_dict(), ensure_ascii=False)
        return value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if isinstance(value, str) and value.startswith(self._MARK):
            try:
                return StoredText(text_from_dict(json.loads(value)))
            except (ValueError, KeyError, TypeError, AttributeError):
                return value
        return value


# One background job of several instances runs in one of them at a time (Database.take_lease).
leases = Table(
    "leases", Base.metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("until", Float, nullable=False),
)


def database_url(url: str, what: str = "--db") -> str:
    """`url` checked and spelled for SQLAlchemy: sqlite:///PATH, or PostgreSQL through psycopg 3."""
    url = url.strip()
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return url
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix) and len(url) > len(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ConfigError(f"{what} {redacted(url)!r}: the central database is sqlite:///PATH or "
                      "postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE")


def central_db_url(db: str | None, store: str | None = None, what: str = "--db") -> str:
    """The central database a program uses: `--db`, else $CAMPUS_DB, else the SQLite point store's file
    (the embedded default: one file for a school on one machine)."""
    import os

    if db:
        return database_url(db, what)
    if os.environ.get(ENV_VAR, "").strip():
        return database_url(os.environ[ENV_VAR], ENV_VAR)
    if store and store.strip().startswith("sqlite:///"):
        return database_url(store.strip(), "--store")
    raise ConfigError(f"no central database: give {what} sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DATABASE, "
                      f"or set {ENV_VAR}")


def url_of(path_or_url: str | Path) -> str:
    """A database named either way: a URL as it is, a bare path as its SQLite file (tests and tools)."""
    return str(path_or_url) if "://" in str(path_or_url) else f"sqlite:///{path_or_url}"


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:/// URL (None for a server database)."""
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def reason(exc: BaseException) -> str:
    """What went wrong, in one line a user can act on (the driver's message, without the statement)."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first = str(orig).strip().splitlines()
    return first[0] if first else type(orig).__name__


class Database:
    """The engine, sessions and transactions of the central database."""

    def __init__(self, url: str) -> None:
        self.url = database_url(url)
        self.name = redacted(self.url.replace("postgresql+psycopg://", "postgresql://"))
        self.path = sqlite_path(self.url)
        self.dialect = "sqlite" if self.path is not None else "postgresql"
        # hide_parameters: a database error's message (and so any traceback that logs it) never shows the
        # values of the statement, which include password hashes, token digests and session ids (issue 15).
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"{self.name}: cannot make its directory: {exc}") from None
            self.engine = create_engine(self.url, hide_parameters=True, pool_size=POOL_SIZE,
                                        max_overflow=POOL_OVERFLOW, pool_timeout=POOL_WAIT_S,
                                        connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            # pre_ping: after a server restart the pool's old connections are found dead and replaced,
            # instead of failing the first request of each. jit off: central's statements are short, and a
            # planner's estimate over the union of places (docs/benchmarks.md, the usage rate at 10,000 rooms)
            # made PostgreSQL 15 compile one for 270-310 ms to run it in 40-50 ms, on every request.
            self.engine = create_engine(self.url, hide_parameters=True, pool_pre_ping=True,
                                        pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, pool_timeout=POOL_WAIT_S,
                                        connect_args={"connect_timeout": CONNECT_TIMEOUT_S,
                                                      "application_name": "campus-iot", "options": "-c jit=off"})
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.closed = False

    # ------------------------------------------------------------ connections and transactions

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Any database failure inside becomes one StoreError: '<database>: <what>: <reason>'."""
        if self.closed:  # the program is stopping: a late thread gets a clear error, not a new pool
            raise StoreError(f"{self.name}: {what}: the database is closed")
        try:
            yield
        except IntegrityError:
            raise  # a constraint the caller expects and answers (a name just taken), not an outage
        except SQLAlchemyError as exc:
            raise StoreError(f"{self.name}: {what}: {reason(exc)}") from None

    @contextmanager
    def write(self, what: str = "write failed") -> Iterator[Connection]:
        """A transaction that holds the write lock from its start (SQLite: BEGIN IMMEDIATE), committed at
        the end, rolled back on any error."""
        with self.errors(what), self.engine.connect() as conn:
            if self.dialect == "sqlite":
                # The driver would begin a deferred transaction at the first write: a read before it
                # could see a row another writer is changing. Taking the lock first makes read-then-write
                # exact across processes (ingest workers, web instances sharing one file).
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    @contextmanager
    def read(self, what: str = "read failed") -> Iterator[Connection]:
        with self.errors(what), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def session(self) -> Iterator[Session]:
        """An ORM session in one transaction, committed at the end (the registry's way in)."""
        if self.closed:
            raise StoreError(f"{self.name}: the database is closed")
        with self.sessions() as s, s.begin():
            yield s

    def insert(self, table: Table) -> Insert:
        """An INSERT with this engine's ON CONFLICT clauses (`on_conflict_do_nothing/do_update`)."""
        return (sqlite.insert if self.dialect == "sqlite" else postgresql.insert)(table)

    def check(self) -> None:
        """Reach the database now: unreachable, refused or a wrong password is said at start-up, in one line."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot reach the central database {self.name}: {reason(exc)}") from None

    def close(self) -> None:
        self.closed = True
        self.engine.dispose()

    # ------------------------------------------------------------ leases

    def take_lease(self, name: str, holder: str, ttl: float, now: float | None = None) -> bool:
        """Hold the lease `name` for `ttl` seconds (or renew it): True if this holder has it now.

        One background job of several instances (the alarm monitor of two web hosts) runs in one of
        them at a time: the holder renews each round; when it dies its lease runs out and another
        takes over. A compare-and-set on one row: exact on both engines, no lock held between rounds.
        """
        now = time.time() if now is None else now
        with self.write(f"cannot take the {name} lease") as conn:
            conn.execute(self.insert(leases).values(name=name, holder="", until=0.0).on_conflict_do_nothing())
            taken = conn.execute(update(leases).where(leases.c.name == name).where(
                (leases.c.holder == holder) | (leases.c.until < now)).values(holder=holder, until=now + ttl))
        return taken.rowcount == 1


    def drop_lease(self, name: str, holder: str) -> None:
        """Give the lease up (this holder is stopping): the next taker need not wait for it to run out."""
        with self.write(f"cannot give up the {name} lease") as conn:
            conn.execute(update(leases).where(leases.c.name == name, leases.c.holder == holder).values(until=0.0))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    enable_wal(dbapi_conn)
    dbapi_conn.execute("PRAGMA foreign_keys=ON")


def open_database(url: str, *, upgrade: bool | None = None) -> Database:
    """The central database of a program, reachable and at this release's schema.

    SQLite is brought up to date at once (`upgrade` None or True): one machine, one release. A server
    database is upgraded only by `campus db upgrade` (`upgrade=True`), run once per release before the
    new programs start; a program finding it behind says so and stops.
    """
    from central import migrations

    db = Database(url)
    try:
        db.check()
        migrations.ensure_current(db, upgrade=db.dialect == "sqlite" if upgrade is None else upgrade)
    except BaseException:
        db.close()
        raise
    return db
