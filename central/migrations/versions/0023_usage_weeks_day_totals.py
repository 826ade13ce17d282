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
"""
from __future__ import annotations

from datetime import date, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


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
    )
    totals = op.create_table(
        "usage_day_totals",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("periods", sa.Integer(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
    )
    bind = op.get_bind()
    days = sa.table("usage_days", sa.column("gateway", sa.String), sa.column("day", sa.Date),
                    sa.column("periods", sa.Integer), sa.column("used", sa.Integer),
                    sa.column("power_devices", sa.Integer), sa.column("complete", sa.Boolean),
                    sa.column("counted_to", sa.Float))
    measured = days.c.power_devices > 0
    bind.execute(totals.insert().from_select(["day", "periods", "used"], sa.select(
        days.c.day, sa.func.coalesce(sa.func.sum(days.c.periods), 0), sa.func.coalesce(sa.func.sum(days.c.used), 0))
        .where(measured).group_by(days.c.day)))
    oldest, newest = bind.execute(sa.select(sa.func.min(days.c.day), sa.func.max(days.c.day))).one()
    if oldest is None:
        return
    if isinstance(oldest, str):  # SQLite without the column's type: ISO text
        oldest, newest = date.fromisoformat(oldest), date.fromisoformat(newest)
    monday = oldest - timedelta(days=oldest.weekday())
    while monday <= newest:
        following = monday + timedelta(days=7)
        sums = (sa.select(sa.literal(monday, sa.Date), days.c.gateway,
                          sa.func.sum(sa.case((measured, days.c.periods), else_=0)),
                          sa.func.sum(sa.case((measured, days.c.used), else_=0)),
                          sa.func.sum(sa.case((measured, 1), else_=0)), sa.func.count(),
                          sa.func.min(sa.case((days.c.complete.is_(False), days.c.counted_to), else_=None)))
                .where(days.c.day >= monday, days.c.day < following).group_by(days.c.gateway))
        bind.execute(weeks.insert().from_select(
            ["week", "gateway", "periods", "used", "measured", "days", "partial"], sums))
        monday = following


def downgrade() -> None:
    op.drop_table("usage_day_totals")
    op.drop_table("usage_weeks")
