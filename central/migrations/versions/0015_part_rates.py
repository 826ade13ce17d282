"""The projector parts' hours a week in the rollup, and an index for a room's open alarms (issue 19, 21).

Revision ID: 0015
Revises: 0014 (attendance)
Create Date: 2026-12-05

`part_rates` (central/usage.py `PartRate`): each projector part's hours a week lately, worked out by the
usage rollup's round (central/usage_rollup.py) so that the maintenance list (central/maintenance.py) reads
no point store per part per request; empty after the upgrade, filled by the next round (until then the
list reads the store, as before). `ix_alarms_gateway_cleared`: the board and the district's rollup ask
each room for its open alarms; without it every room's question scanned the alarms table.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "part_rates",
        sa.Column("gateway", sa.String(64), primary_key=True),
        sa.Column("device", sa.String(64), primary_key=True),
        sa.Column("metric", sa.String(64), primary_key=True),
        sa.Column("per_week", sa.Float(), nullable=True),
        sa.Column("as_of", sa.Float(), nullable=False),
    )
    op.create_index("ix_alarms_gateway_cleared", "alarms", ["gateway", "cleared_at"])


def downgrade() -> None:
    op.drop_index("ix_alarms_gateway_cleared", table_name="alarms")
    op.drop_table("part_rates")
