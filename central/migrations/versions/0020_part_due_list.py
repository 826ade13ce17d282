"""The maintenance list's lines kept in `part_rates`, indexed in the list's order (issue 19, 21).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05

The maintenance list (central/maintenance.py) read every projector's hours and the rooms' state JSON and
sorted every part in Python per request (172 ms of CPU at 10,000 rooms, docs/benchmarks.md 11h). The usage
rollup's round, which already visits every part, now also keeps each part's line (place, profile, hours,
rated hours, weeks left) in `part_rates` with `listed_at`, and the list pages it in SQL. Existing rows keep
NULL in the new columns until the next round writes them; until then the list computes those parts as
before.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

COLUMNS = (("listed_at", sa.Float()), ("school", sa.String(64)), ("building", sa.Text()),
           ("building_id", sa.Integer()), ("room", sa.Text()), ("profile", sa.Text()), ("part", sa.String(16)),
           ("hours", sa.Float()), ("rated", sa.Float()), ("weeks_left", sa.Float()), ("undated", sa.Boolean()))


def upgrade() -> None:
    for name, type_ in COLUMNS:
        op.add_column("part_rates", sa.Column(name, type_, nullable=True))
    op.create_index("ix_part_rates_due", "part_rates",
                    ["undated", "weeks_left", "school", "gateway", "device", "part"])


def downgrade() -> None:
    op.drop_index("ix_part_rates_due", table_name="part_rates")
    with op.batch_alter_table("part_rates") as batch:
        for name, _type in reversed(COLUMNS):
            batch.drop_column(name)
