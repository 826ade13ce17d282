"""Alarms reach people (issue 20, part 4): notification channels, mutes, the outbox of transitions, deliveries.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

Four new tables, nothing existing changed (central/notify/tables.py owns them): `notify_channels`
(e-mail, WeCom, DingTalk or a signed webhook, per school and severity, with its secret),
`notify_mutes` (a room or a school under maintenance until a time), `notify_events` (each alarm's
raised / acknowledged / cleared, written in the transaction that made it; unique per alarm and
transition) and `notify_deliveries` (one message to one channel: status, attempts, last error).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notify_channels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("school_id", sa.String(length=64), nullable=True),
        sa.Column("min_severity", sa.String(length=16), nullable=False),
        sa.Column("lang", sa.String(length=8), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["school_id"], ["schools.id"], name=op.f("fk_notify_channels_school_id_schools")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_channels")),
    )
    op.create_table(
        "notify_mutes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("school_id", sa.String(length=64), nullable=False),
        sa.Column("room_id", sa.Integer(), nullable=True),
        sa.Column("until", sa.Float(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["room_id"], ["rooms.id"], name=op.f("fk_notify_mutes_room_id_rooms")),
        sa.ForeignKeyConstraint(["school_id"], ["schools.id"], name=op.f("fk_notify_mutes_school_id_schools")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_mutes")),
    )
    op.create_table(
        "notify_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alarm_id", sa.Integer(), nullable=False),
        sa.Column("transition", sa.String(length=16), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("by", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.ForeignKeyConstraint(["alarm_id"], ["alarms.id"], name=op.f("fk_notify_events_alarm_id_alarms")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_events")),
        sa.UniqueConstraint("alarm_id", "transition", name=op.f("uq_notify_events_alarm_id")),
    )
    op.create_index("ix_notify_events_state", "notify_events", ["state", "at"])
    op.create_table(
        "notify_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("school_id", sa.String(length=64), nullable=False),
        sa.Column("transition", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.String(length=300), nullable=False),
        sa.Column("alarm_ids", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.Float(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("sent_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["channel_id"], ["notify_channels.id"],
                                name=op.f("fk_notify_deliveries_channel_id_notify_channels")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_deliveries")),
    )
    op.create_index("ix_notify_deliveries_due", "notify_deliveries", ["status", "next_at"])
    op.create_index(op.f("ix_notify_deliveries_created"), "notify_deliveries", ["created"])


def downgrade() -> None:
    op.drop_table("notify_deliveries")
    op.drop_table("notify_events")
    op.drop_table("notify_mutes")
    op.drop_table("notify_channels")
