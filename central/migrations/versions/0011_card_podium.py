"""The card-authorised podium (issue 21): the cards allowed at each room's podium, and enrol modes.

Revision ID: 0011
Revises: 0010 (energy)
Create Date: 2026-12-05

`podium_cards` (central/podium.py `PodiumCard`): per room, card pseudonyms (HMAC-SHA256 of the UID with
the school's secret; never a card number) with a role and a label. `card_enrolments` (`CardEnrolment`):
"enrol the next card swiped in this room", with its window and the card it enrolled. Both start empty.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "podium_cards",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("room_id", sa.Integer(), nullable=False),
        sa.Column("card", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("added", sa.Float(), nullable=False),
        sa.Column("added_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["room_id"], ["rooms.id"], name=op.f("fk_podium_cards_room_id_rooms")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_podium_cards")),
        sa.UniqueConstraint("room_id", "card", name=op.f("uq_podium_cards_room_id")),
    )
    op.create_table(
        "card_enrolments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("room_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("by", sa.String(length=64), nullable=False),
        sa.Column("started", sa.Float(), nullable=False),
        sa.Column("until", sa.Float(), nullable=False),
        sa.Column("card", sa.String(length=64), nullable=True),
        sa.Column("finished", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["room_id"], ["rooms.id"], name=op.f("fk_card_enrolments_room_id_rooms")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_enrolments")),
    )
    op.create_index(op.f("ix_card_enrolments_room_id"), "card_enrolments", ["room_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_card_enrolments_room_id"), table_name="card_enrolments")
    op.drop_table("card_enrolments")
    op.drop_table("podium_cards")
