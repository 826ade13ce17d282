"""Schema migrations of the central database (Alembic): every table is created and changed here.

`campus db upgrade` runs them (`upgrade()` below); programs on SQLite run them at start, programs on
PostgreSQL check that the database is current and otherwise stop with the command to run. Two
processes starting at once on a new database: the first takes a lock (SQLite's write lock, a
PostgreSQL advisory lock) and migrates, the second waits and then finds nothing to do.

A new migration: `alembic -c central/migrations/alembic.ini revision --autogenerate -m "what"` against
a database at head, then read and edit what it wrote (a migration is code that runs on users' data).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from campus.errors import StoreError

if TYPE_CHECKING:
    from central.db import Database

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
_PG_LOCK = 0x63616D707573  # "campus": the advisory lock key of migrations


def config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def script() -> ScriptDirectory:
    """This release's migrations (the revisions it knows)."""
    return ScriptDirectory.from_config(config())


def head() -> str:
    return script().get_current_head() or ""


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def known(revision: str) -> bool:
    """Whether `revision` is one of this release's migrations (False: a newer release's, or garbage)."""
    try:
        return script().get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown or malformed id
        return False


def ensure_current(db: Database, *, upgrade: bool) -> str | None:
    """Bring the database to this release's schema (`upgrade`) or check that it is there.
    Returns the revision it was at before (None: new, or made before migrations)."""
    want = head()
    with db.errors("cannot read the schema version"), db.engine.connect() as conn:
        before = current(conn)
        conn.rollback()
        if before == want:
            return before
        if before is not None and not known(before):  # Alembic could only fail with a traceback
            raise StoreError(f"the central database {db.name} is at schema {before}, which a newer release made "
                             f"(this release's is {want}): run that release here")
        if not upgrade:
            raise StoreError(f"the central database {db.name} is at schema {before or 'none'}, this release needs "
                             f"{want}: run `campus db upgrade --db URL` once (see docs/deployment.md), then start again")
        _lock(conn, db.dialect)
        before = current(conn)  # another process may have migrated while this one waited for the lock
        if before != want:
            command.upgrade(config(conn), "head")
            log.info("central database %s: schema %s -> %s", db.name, before or "none", want)
        conn.commit()
    return before


def _lock(conn: Connection, dialect: str) -> None:
    if dialect == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
