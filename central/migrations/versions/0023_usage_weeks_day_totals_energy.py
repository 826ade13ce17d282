"""The usage rate of an ISO week from one row a room-week, the district's days from one row a day (issue 19).

Revision ID: 0023
Revises: 0022 (the room-months)
Create Date: 2026-12-05

`/health/usage-rate` and `/api/usage` (this week by default) grouped every room's week of `usage_days` per
request (~60,000 room-days at 10,000 rooms: 62 of the page's ~110 ms of CPU). `usage_weeks` holds each room's
sums of an ISO week (Monday to Sunday) as `usage_months` does of a month (central/usage.py `UsageWeek`),
recounted by the rollup in the transaction that writes the day rows (`recount_months`). Filled here from the
day rows already kept, one week at a time (the weeks' bounds worked out here, the same on both engines).
`usage_day_totals` holds each day's measured periods and those used over every room's rows (`UsageDayTotal`),
recounted with them, so that the district's per-day line of a week or month reads a row a day, not 300,000
room-days for a month (50 of its ~100 ms); filled here from the day rows in one statement.
Both `usage_weeks` and `usage_months` (its columns added here, its rows recounted) also keep each room's energy of
the span as central/energy.py sums it (`metered`, `kwh`, `off_kwh`, `left_kwh`): the energy pages of a week or a
month read a row a room instead of grouping its days (~25 ms of each of their two big statements).
"""
from __future__ import annotations

from datetime import date, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


ENERGY = ("metered", "kwh", "off_kwh", "left_kwh")  # the energy pages' per-room sums, on the weeks and the months


def upgrade() -> None:
    weeks = op.create_table(
        "usage_weeks",
        sa.Column("week", sa.Date(), primary_key=True),
        sa.Column("gateway", sa.String(64), primary_key=True),
        sa.Column("periods", sa.Integer(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.Column("measured", sa.Integer(), nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("partial", sa.Float(), nullable=True),
        sa.Column("metered", sa.Integer(), nullable=True),
        sa.Column("kwh", sa.Float(), nullable=True),
        sa.Column("off_kwh", sa.Float(), nullable=True),
        sa.Column("left_kwh", sa.Float(), nullable=True),
    )
    totals = op.create_table(
        "usage_day_totals",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("periods", sa.Integer(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
    )
    op.add_column("usage_months", sa.Column("metered", sa.Integer(), nullable=True))
    for name in ENERGY[1:]:
        op.add_column("usage_months", sa.Column(name, sa.Float(), nullable=True))
    months = sa.table("usage_months", *(sa.column(c) for c in ("month", "gateway", "periods", "used", "measured",
                                                                "days", "partial", *ENERGY)))
    bind = op.get_bind()
    days = sa.table("usage_days", sa.column("gateway", sa.String), sa.column("day", sa.Date),
                    sa.column("periods", sa.Integer), sa.column("used", sa.Integer),
                    sa.column("power_devices", sa.Integer), sa.column("complete", sa.Boolean),
                    sa.column("counted_to", sa.Float), sa.column("meter_devices", sa.Integer),
                    sa.column("energy_kwh", sa.Float), sa.column("energy_off_kwh", sa.Float))
    measured = days.c.power_devices > 0
    bind.execute(totals.insert().from_select(["day", "periods", "used"], sa.select(
        days.c.day, sa.func.coalesce(sa.func.sum(days.c.periods), 0), sa.func.coalesce(sa.func.sum(days.c.used), 0))
        .where(measured).group_by(days.c.day)))
    oldest, newest = bind.execute(sa.select(sa.func.min(days.c.day), sa.func.max(days.c.day))).one()
    if oldest is None:
        return
    if isinstance(oldest, str):  # SQLite without the column's type: ISO text
        oldest, newest = date.fromisoformat(oldest), date.fromisoformat(newest)
    metered = days.c.meter_devices > 0

    def fill(table: sa.Table, key: str, first: date, following: date) -> None:
        """`table`'s rows of the span from `first` to the day before `following`, as `recount_months` makes them."""
        sums = (sa.select(sa.literal(first, sa.Date), days.c.gateway,
                          sa.func.sum(sa.case((measured, days.c.periods), else_=0)),
                          sa.func.sum(sa.case((measured, days.c.used), else_=0)),
                          sa.func.sum(sa.case((measured, 1), else_=0)), sa.func.count(),
                          sa.func.min(sa.case((days.c.complete.is_(False), days.c.counted_to), else_=None)),
                          sa.func.sum(sa.case((metered, 1), else_=0)),
                          sa.func.sum(sa.case((metered, days.c.energy_kwh), else_=None)),
                          sa.func.sum(sa.case((metered, days.c.energy_off_kwh), else_=None)),
                          sa.func.sum(sa.case((sa.and_(metered, days.c.energy_off_kwh.is_not(None)),
                                               days.c.energy_kwh), else_=None)))
                .where(days.c.day >= first, days.c.day < following).group_by(days.c.gateway))
        bind.execute(table.insert().from_select(
            [key, "gateway", "periods", "used", "measured", "days", "partial", *ENERGY], sums))

    monday = oldest - timedelta(days=oldest.weekday())
    while monday <= newest:
        fill(weeks, "week", monday, monday + timedelta(days=7))
        monday += timedelta(days=7)
    bind.execute(months.delete())  # recounted whole, with their energy
    first = oldest.replace(day=1)
    while first <= newest:
        following = (first + timedelta(days=31)).replace(day=1)
        fill(months, "month", first, following)
        first = following


def downgrade() -> None:
    for name in ENERGY:
        op.drop_column("usage_months", name)
    op.drop_table("usage_day_totals")
    op.drop_table("usage_weeks")
