"""The city above the districts (issue 19, part 6): the rollups a city keeps, the seq a district sends.

Revision ID: 0005
Revises: 0004 (user_schools)
Create Date: 2026-12-06

Three new tables, nothing existing changed (central/city.py owns them). City side: `city_districts`
(each district admitted by `campus city add-district`: its token's SHA-256 and its newest push's seq
and times) and `city_schools` (the newest push's schools of each district, replaced whole). District
side: `city_push` (the last seq it used, so a restarted or another web instance goes on counting).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "city_districts",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("generated_at", sa.Float(), nullable=True),
        sa.Column("received_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_city_districts")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_city_districts_token_sha256")),
    )
    op.create_table(
        "city_schools",
        sa.Column("district", sa.String(length=64), nullable=False),
        sa.Column("school", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in (
            "rooms", "gateways", "online", "offline", "alarms", "alarms_active", "faults", "lamps_due",
            "filters_due")),
        sa.Column("alarms_by_kind", sa.JSON(), nullable=False),
        sa.Column("usage_periods", sa.Integer(), nullable=True),
        sa.Column("usage_used", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["district"], ["city_districts.name"],
                                name=op.f("fk_city_schools_district_city_districts")),
        sa.PrimaryKeyConstraint("district", "school", name=op.f("pk_city_schools")),
    )
    op.create_table(
        "city_push",
        sa.Column("district", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("pushed_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("district", name=op.f("pk_city_push")),
    )


def downgrade() -> None:
    op.drop_table("city_push")
    op.drop_table("city_schools")
    op.drop_table("city_districts")
