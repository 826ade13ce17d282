"""The language each user chose (issue 20): `users.language`, a BCP 47 tag (zh-CN, en) or NULL.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

One nullable column: NULL is "not chosen", and the page follows the browser and the site
(dashboards/i18n.py). SQLite adds a nullable column without copying the table.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("language", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("language")
