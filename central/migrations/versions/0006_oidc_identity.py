"""Sign-in with the education platform (issue 20, part 5): the OpenID identity a user is bound to.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

Two nullable columns on `users`, nothing existing changed: `oidc_issuer` and `oidc_subject`, the
provider's issuer URL and its never-reassigned subject (`sub`, at most 255 ASCII characters by the
OpenID Connect spec) of the person the account belongs to (central/oidc_users.py). A unique index on
the pair: one account per person and platform. NULLs are distinct on both engines, so every local
account (NULL, NULL) keeps working as before.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("oidc_issuer", sa.String(length=255), nullable=True))
    op.add_column("users", sa.Column("oidc_subject", sa.String(length=255), nullable=True))
    op.create_index("uq_users_oidc_identity", "users", ["oidc_issuer", "oidc_subject"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_users_oidc_identity", table_name="users")
    with op.batch_alter_table("users") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("oidc_subject")
        batch.drop_column("oidc_issuer")
