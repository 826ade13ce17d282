"""Electricity in the daily rollup (issue 21): kWh per room and day, those outside the timetable; the
city's kWh-this-week figure of a school.

Revision ID: 0010
Revises: 0009 (the users' language)
Create Date: 2026-12-05

`usage_days.energy_kwh`, `energy_off_kwh`, `meter_devices` (central/usage.py `UsageDay`, central/energy.py):
null on the rows already there, which the rollup (central/usage_rollup.py) therefore computes again, energy
included, after the upgrade. `city_schools.energy_kwh`: this week's kWh of a school's metered rooms, as
the district pushed it (null: no meter, or a district of an older release).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_days") as batch:
        batch.add_column(sa.Column("energy_kwh", sa.Float(), nullable=True))
        batch.add_column(sa.Column("energy_off_kwh", sa.Float(), nullable=True))
        batch.add_column(sa.Column("meter_devices", sa.Integer(), nullable=True))
    with op.batch_alter_table("city_schools") as batch:
        batch.add_column(sa.Column("energy_kwh", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("city_schools") as batch:
        batch.drop_column("energy_kwh")
    with op.batch_alter_table("usage_days") as batch:
        batch.drop_column("meter_devices")
        batch.drop_column("energy_off_kwh")
        batch.drop_column("energy_kwh")
