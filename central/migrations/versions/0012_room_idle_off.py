"""Idle-off per room (issue 21): switch the room off after M minutes with nobody counted and no command.

Revision ID: 0012
Revises: 0011 (card podium)
Create Date: 2026-12-05

`rooms.idle_off_minutes` (central/registry.py `Room`, central/edge_rules.py): the minutes a room's
cameras must count nobody, with no command, before its gateway switches the projectors and displays off;
NULL (every room at first): never. Pushed to the room's gateways in their config (`rules`).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rooms") as batch:
        batch.add_column(sa.Column("idle_off_minutes", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rooms") as batch:
        batch.drop_column("idle_off_minutes")
