"""Accounts scoped to schools: an admin or facility account limited to some schools (issue 19, part 5).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

One new table, nothing existing changed: `user_schools` pairs a user with a school it is limited to,
as `user_rooms` pairs a teacher with a room. A user without a row is district-wide, so every account
that exists keeps the rights it had.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_schools",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("school_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["school_id"], ["schools.id"], name=op.f("fk_user_schools_school_id_schools")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_user_schools_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", "school_id", name=op.f("pk_user_schools")),
    )


def downgrade() -> None:
    op.drop_table("user_schools")
