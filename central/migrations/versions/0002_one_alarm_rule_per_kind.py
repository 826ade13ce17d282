"""One alarm rule per kind: a unique constraint on alarm_rules.kind.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05

Two web instances starting together on an empty database could each seed the default rules, and
every alarm condition was then raised twice (once per rule). Duplicates already made are folded
into the oldest rule of their kind (its alarms keep their history), then the constraint makes
seeding an INSERT that a second instance cannot repeat.
"""
from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE alarms SET rule_id = (SELECT MIN(twin.id) FROM alarm_rules twin WHERE twin.kind ="
               " (SELECT own.kind FROM alarm_rules own WHERE own.id = alarms.rule_id))")
    op.execute("DELETE FROM alarm_rules WHERE id NOT IN (SELECT MIN(id) FROM alarm_rules GROUP BY kind)")
    # A unique index, not a constraint: SQLite adds it in place (a constraint means copying the table,
    # which its foreign keys from alarms refuse inside the migration's transaction).
    op.create_index("uq_alarm_rules_kind", "alarm_rules", ["kind"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_alarm_rules_kind", "alarm_rules")
