"""The usage rate's district sums without a pass over every state's JSON, from one index (issue 19).

Revision ID: 0021
Revises: 0020 (the maintenance list's lines)
Create Date: 2026-12-05

At 10,000 rooms `/health/usage-rate` and `/api/usage` took 182-184 ms of CPU (docs/benchmarks.md 11i, 11l),
against 150: the schools' sums read every gateway's state JSON to know which rooms have a display or
projector, and read each room-day of the span through `ix_usage_days_day` and a table lookup.

- `gateways.device_kinds`: the kinds of the stored state's devices, written by the ledger with the state
  (central/tables.py `device_kinds_text`: each kind percent-encoded, between spaces, " display projector "),
  filled here for the states already stored (with the same encoding, a copy: a migration does not follow
  the code's later changes).
- `usage_days_rate` on (day, gateway, power_devices, periods, used, complete, counted_to): everything the
  usage rate's sums read of a row (central/usage.py `usage_rate`), so a span's rows come from the index
  alone, as `usage_days_energy` (0019) does for the energy pages.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

RATE_COLUMNS = ["day", "gateway", "power_devices", "periods", "used", "complete", "counted_to"]
_FILL_BATCH = 1000


def _kinds_text(state: str | None) -> str:
    """central/tables.py `device_kinds_text` of a stored state's JSON ("" if it is not a state with devices)."""
    try:
        doc: Any = json.loads(state or "{}")
    except ValueError:
        return ""
    devices = doc.get("devices") if isinstance(doc, Mapping) else None
    if not isinstance(devices, Mapping):
        return ""
    kinds = sorted({quote(str(d["kind"]), safe="") for d in devices.values()
                    if isinstance(d, Mapping) and d.get("kind")})
    return f" {' '.join(kinds)} " if kinds else ""


def upgrade() -> None:
    op.add_column("gateways", sa.Column("device_kinds", sa.Text(), nullable=False, server_default=""))
    bind = op.get_bind()
    gateways = sa.table("gateways", sa.column("id", sa.String), sa.column("state", sa.Text),
                        sa.column("device_kinds", sa.Text))
    rows = [{"b_id": gid, "kinds": kinds} for gid, state in bind.execute(sa.select(gateways.c.id, gateways.c.state))
            if (kinds := _kinds_text(state))]
    fill = (gateways.update().where(gateways.c.id == sa.bindparam("b_id"))
            .values(device_kinds=sa.bindparam("kinds")))
    for i in range(0, len(rows), _FILL_BATCH):
        bind.execute(fill, rows[i:i + _FILL_BATCH])
    op.create_index("usage_days_rate", "usage_days", RATE_COLUMNS)


def downgrade() -> None:
    op.drop_index("usage_days_rate", table_name="usage_days")
    with op.batch_alter_table("gateways") as batch:
        batch.drop_column("device_kinds")
