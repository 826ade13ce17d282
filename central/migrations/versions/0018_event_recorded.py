"""Events carry when central recorded them: a reader asks for what is new since its last look.

Revision ID: 0018
Revises: 0017 (attendance day counts)
Create Date: 2026-12-05

`events.recorded` (central/tables.py): central's clock when the ledger wrote the row, with an index on
(type, recorded). The schedule runs gateways report (central/edge_schedules.py `EdgeRunCollector`) were read
back seven days by the gateway's `ts` every 20 s, because a run may arrive days after it happened; by
`recorded` a round reads only what came since the round before. Rows written before this migration keep
NULL: the collector's first round still reads them by `ts`.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("recorded", sa.Float(), nullable=True))
    op.create_index("events_type_recorded", "events", ["type", "recorded"])


def downgrade() -> None:
    op.drop_index("events_type_recorded", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("recorded")
