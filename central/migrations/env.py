"""Alembic's environment: migrations run on the connection `central.migrations` hands over (or, from
the `alembic` command line, on the URL of CAMPUS_DB), against the one central metadata."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

import central.attendance  # noqa: F401 - rosters, corrections, attendance settings and counts
import central.city  # noqa: F401
import central.notify.tables  # noqa: F401
import central.podium  # noqa: F401 - podium cards and enrol modes
import central.provisioning  # noqa: F401 - its models are on the metadata too
import central.registry  # noqa: F401
import central.tables  # noqa: F401
import central.timetables  # noqa: F401
import central.usage  # noqa: F401 - the usage rollup (usage_days)
from central.db import Base, database_url

target_metadata = Base.metadata


def _run(connection) -> None:  # noqa: ANN001 - Alembic's callback signature
    # render_as_batch: SQLite cannot ALTER most things; Alembic copies the table instead ("batch" mode).
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(database_url(os.environ.get("CAMPUS_DB", ""), "CAMPUS_DB"))
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
