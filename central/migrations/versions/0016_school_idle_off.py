"""A school's default idle-off (issue 21): the minutes every room of the school takes unless it sets its own.

Revision ID: 0016
Revises: 0015 (part rates)
Create Date: 2026-12-05

`schools.idle_off_minutes` (central/registry.py `School`, central/edge_rules.py): NULL (every school at first):
no default, a room without its own setting never switches off by itself, as before. A room's own
`rooms.idle_off_minutes` wins; the result is pushed to the room's gateways in their config (`rules`).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schools") as batch:
        batch.add_column(sa.Column("idle_off_minutes", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("schools") as batch:
        batch.drop_column("idle_off_minutes")
