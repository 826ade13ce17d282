"""Schedules anchored to the school's day: "off 15 minutes after the last period" (issue 21).

Revision ID: 0013
Revises: 0012 (room idle-off)
Create Date: 2026-12-05

`schedules.anchor` (NULL: the fixed time `at`, as before; "last_period": the end of the day's last class
period in the school's timetable) and `schedules.offset_min` (minutes after the anchor, 0 for every
existing schedule). `schedule_claims` (central/registry.py `ScheduleClaim`): the occurrence of an anchored
schedule central ran last, per school, since its time differs per school. Both start empty.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("anchor", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("offset_min", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "schedule_claims",
        sa.Column("schedule_id", sa.Integer(), nullable=False),
        sa.Column("school_id", sa.String(length=64), nullable=False),
        sa.Column("last_run", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["schedule_id"], ["schedules.id"],
                                name=op.f("fk_schedule_claims_schedule_id_schedules")),
        sa.PrimaryKeyConstraint("schedule_id", "school_id", name=op.f("pk_schedule_claims")),
    )


def downgrade() -> None:
    op.drop_table("schedule_claims")
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("offset_min")
        batch.drop_column("anchor")
