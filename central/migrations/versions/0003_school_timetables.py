"""School timetables (作息时间表): class periods per weekday, terms, holidays, make-up working days.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

Three new tables, nothing existing changed (central/timetables.py owns them): `timetables` (one row per
school that has one: its time zone, who saved it), `timetable_periods` (weekday, 第N节, start and end in
minutes after local midnight) and `timetable_dates` (terms, holidays and make-up working days as date
ranges). A school's timetable is replaced whole, so rows are only ever inserted and deleted.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "timetables",
        sa.Column("school_id", sa.String(length=64), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["school_id"], ["schools.id"], name=op.f("fk_timetables_school_id_schools")),
        sa.PrimaryKeyConstraint("school_id", name=op.f("pk_timetables")),
    )
    op.create_table(
        "timetable_dates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("school_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("first", sa.Date(), nullable=False),
        sa.Column("last", sa.Date(), nullable=False),
        sa.Column("follows", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["school_id"], ["timetables.school_id"],
                                name=op.f("fk_timetable_dates_school_id_timetables")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_timetable_dates")),
    )
    op.create_index(op.f("ix_timetable_dates_school_id"), "timetable_dates", ["school_id"], unique=False)
    op.create_table(
        "timetable_periods",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("school_id", sa.String(length=64), nullable=False),
        sa.Column("weekday", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("start_min", sa.Integer(), nullable=False),
        sa.Column("end_min", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["school_id"], ["timetables.school_id"],
                                name=op.f("fk_timetable_periods_school_id_timetables")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_timetable_periods")),
        # One 第N节 per weekday of a school; also the index the school's periods are read by.
        sa.UniqueConstraint("school_id", "weekday", "number", name=op.f("uq_timetable_periods_school_id")),
    )


def downgrade() -> None:
    op.drop_table("timetable_periods")
    op.drop_index(op.f("ix_timetable_dates_school_id"), table_name="timetable_dates")
    op.drop_table("timetable_dates")
    op.drop_table("timetables")
