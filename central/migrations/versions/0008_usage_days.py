"""The daily usage rollup (issue 19): what the usage rate and the CO2-over-limit hours add up; the city's two
new figures of a school.

Revision ID: 0008
Revises: 0007 (notifications)
Create Date: 2026-12-05

`usage_days` (central/usage.py `UsageDay`, kept by central/usage_rollup.py): one row per room (gateway)
and local day, so that reports, the district overview and the city push read no point store. It starts
empty: the web process's background job fills the last days from the store after the upgrade.
`city_schools.co2_over_s`: this week's seconds of CO2 over the limit in a school's rooms, as the
district pushed it (null: not measured, or a district of an older release).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_days",
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("school", sa.String(length=64), nullable=False),
        sa.Column("periods", sa.Integer(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.Column("power_devices", sa.Integer(), nullable=False),
        sa.Column("co2_over_s", sa.Float(), nullable=False),
        sa.Column("co2_devices", sa.Integer(), nullable=False),
        sa.Column("co2_limit", sa.Float(), nullable=True),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("counted_to", sa.Float(), nullable=False),
        sa.Column("computed_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("gateway", "day", name=op.f("pk_usage_days")),
    )
    op.create_index(op.f("ix_usage_days_day"), "usage_days", ["day"], unique=False)
    with op.batch_alter_table("city_schools") as batch:
        batch.add_column(sa.Column("co2_over_s", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("city_schools") as batch:
        batch.drop_column("co2_over_s")
    op.drop_index(op.f("ix_usage_days_day"), table_name="usage_days")
    op.drop_table("usage_days")
