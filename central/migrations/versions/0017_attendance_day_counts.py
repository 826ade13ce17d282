"""Finished days' attendance counts kept for the school summary; late events flagged; retention by term.

Revision ID: 0017
Revises: 0016 (school idle-off)
Create Date: 2026-12-05

`attendance_day_counts` (central/attendance.py `DayCounts`): a finished day's counts per class, so that a
school's weekly summary reads a row a day instead of computing every room's registers from every swipe;
`attendance_cache_gens`: bumped whenever such rows are deleted (a correction, a late swipe). `late_events`
(central/tables.py): per gateway, the oldest event that arrived late and not yet taken by a reader (a gateway
offline for days delivering its outbox), so the days it belongs to are computed again. All start empty: the
first summary fills them.

`attendance_settings.retention_days` may be NULL: the default, which is now "until the end of the next term"
of the school's timetable (150 days without terms). A school's 150 days were that default (saving the grace
saved it too), so they become NULL; any other number stays the school's choice.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_FORMER_DEFAULT = 150


def upgrade() -> None:
    op.create_table(
        "attendance_day_counts",
        sa.Column("school_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("stamp", sa.String(length=64), nullable=False),
        sa.Column("counts", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["school_id"], ["schools.id"],
                                name=op.f("fk_attendance_day_counts_school_id_schools")),
        sa.PrimaryKeyConstraint("school_id", "day", name=op.f("pk_attendance_day_counts")),
    )
    op.create_table(
        "attendance_cache_gens",
        sa.Column("school_id", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["school_id"], ["schools.id"],
                                name=op.f("fk_attendance_cache_gens_school_id_schools")),
        sa.PrimaryKeyConstraint("school_id", name=op.f("pk_attendance_cache_gens")),
    )
    op.create_table(
        "late_events",
        sa.Column("gateway", sa.String(length=200), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("arrivals", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("gateway", name=op.f("pk_late_events")),
    )
    with op.batch_alter_table("attendance_settings") as batch:
        batch.alter_column("retention_days", existing_type=sa.Integer(), nullable=True)
    settings = sa.table("attendance_settings", sa.column("retention_days", sa.Integer))
    op.execute(settings.update().where(settings.c.retention_days == _FORMER_DEFAULT).values(retention_days=None))


def downgrade() -> None:
    settings = sa.table("attendance_settings", sa.column("retention_days", sa.Integer))
    op.execute(settings.update().where(settings.c.retention_days.is_(None)).values(retention_days=_FORMER_DEFAULT))
    with op.batch_alter_table("attendance_settings") as batch:
        batch.alter_column("retention_days", existing_type=sa.Integer(), nullable=False)
    op.drop_table("late_events")
    op.drop_table("attendance_cache_gens")
    op.drop_table("attendance_day_counts")
