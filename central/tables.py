"""The ledger's tables (SQLAlchemy Core), on the one central metadata (`central.db.Base.metadata`).

Only the ledger (central/ledger.py, with central/acks.py for the acknowledgement columns) reads and
writes them; everything else asks the ledger. The registry's tables are its ORM models
(central/registry.py), provisioning's in central/provisioning.py; Alembic (central/migrations/)
creates and changes all of them.

Types hold on both engines: seq numbers are 64-bit (`BigInteger`), times are seconds since the epoch
as double precision (`Float`, which PostgreSQL makes `double precision`), JSON documents are text as
the agents sent them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, String, Table, Text, false, text

from central.db import Base, TranslatableText

meta = Base.metadata
_ID = 200  # gateway, device and metric names are far shorter (campus/names.py); a bound, not a format

gateways = Table(
    "gateways", meta,
    Column("id", String(_ID), primary_key=True),
    Column("school", String(_ID), nullable=False),
    Column("room", String(_ID), nullable=False, server_default=""),
    Column("online", Boolean, nullable=False, server_default=false()),
    Column("state", Text, nullable=False, server_default="{}"),
    Column("interval", Float, nullable=False, server_default="0"),
    Column("last_seen", Float),
    Column("first_seq", BigInteger),
    Column("max_seq", BigInteger),
    Column("received", BigInteger, nullable=False, server_default="0"),
    Column("duplicates", BigInteger, nullable=False, server_default="0"),
    # Everything at or below it counts as seen (`seen` keeps only the newest numbers).
    Column("seq_floor", BigInteger, nullable=False, server_default="0"),
    # A gateway's seq numbers belong to one outbox instance (edge_agent/outbox.py). When a newer
    # state names another one, the old one's gaps and received count are set aside and the new one's
    # numbers, which start again at 1, are counted afresh.
    Column("outbox_instance", BigInteger),
    Column("gaps_before", BigInteger, nullable=False, server_default="0"),
    Column("received_before", BigInteger, nullable=False, server_default="0"),
    # Numbering epochs: a new outbox instance or a seq jump beyond SEQ_JUMP_MAX starts one. Values are
    # ordered by (epoch, seq): the gateway's own order, whatever its clock says.
    Column("epoch", Integer, nullable=False, server_default="0"),
    Column("seq_jumps", Integer, nullable=False, server_default="0"),
    # Messages whose ts was more than contract.CLOCK_AHEAD_S ahead of receipt (stored, never latest),
    # and the smoothed receipt time - ts of the gateway's live heartbeats.
    Column("clock_ahead", BigInteger, nullable=False, server_default="0"),
    Column("clock_offset", Float),
    # Central's acknowledgement (central/acks.py): the watermark, the agent's lowest seq held (NULL: an
    # agent without acknowledgements), the watermark last published and when, and a prompt ack due.
    Column("acked_seq", BigInteger, nullable=False, server_default="0"),
    Column("outbox_oldest", BigInteger),
    Column("ack_sent", BigInteger, nullable=False, server_default="0"),
    Column("ack_sent_at", Float, nullable=False, server_default="0"),
    Column("ack_due", Boolean, nullable=False, server_default=false()),
    # The stored state's ts, since and online, beside its JSON: which state is newer is decided in SQL
    # on both engines (SQLite's json_extract is not PostgreSQL's).
    Column("state_ts", Float, nullable=False, server_default="0"),
    Column("state_since", Float),
    Column("state_online", Boolean),
    # The kinds of the stored state's devices (`device_kinds_text`), written with it (migration 0021): which
    # rooms have a display or projector is a substring test on a short text, not a pass over every state's
    # JSON (the usage rate's district sums at 10,000 rooms, central/lists.py `has_kind`).
    Column("device_kinds", Text, nullable=False, server_default=""),
)


def device_kind_token(kind: str) -> str:
    """How `kind` stands in `gateways.device_kinds`: percent-encoded (no space, whatever a gateway sent) between
    spaces, so that "holds a projector" is a case-sensitive substring test (central/lists.py `has_kind`)."""
    return f" {quote(kind, safe='')} "


def device_kinds_text(devices: Mapping[str, Any]) -> str:
    """`gateways.device_kinds` of a state's `devices` ({id: {"kind": ...}}): its distinct kinds, sorted, as
    `device_kind_token`s sharing their spaces (" display projector "); "" when no device has a kind."""
    kinds = sorted({quote(str(d["kind"]), safe="") for d in devices.values()
                    if isinstance(d, Mapping) and d.get("kind")})
    return f" {' '.join(kinds)} " if kinds else ""


# Which seq numbers of a gateway were recorded: the primary key makes "new or a redelivery" one
# INSERT ... ON CONFLICT DO NOTHING, exact with several ingest workers on several hosts.
seen = Table(
    "seen", meta,
    Column("gateway", String(_ID), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    sqlite_with_rowid=False,
)

# A redelivered event has its seq and its ts; a replaced outbox (new SD card) starts again at seq 1
# with new timestamps, and its events must not be taken for redeliveries of the old ones.
# `recorded`: central's clock when the row was written (NULL: before migration 0018). `ts` is the gateway's
# word and an event may come days after it (a gateway offline): a reader that wants what is new since its
# last look asks `recorded` (central/edge_schedules.py `EdgeRunCollector`).
events = Table(
    "events", meta,
    Column("gateway", String(_ID), primary_key=True),
    Column("device", String(_ID), nullable=False),
    Column("seq", BigInteger, primary_key=True),
    Column("ts", Float, primary_key=True),
    Column("type", String(_ID), nullable=False),
    Column("data", Text, nullable=False),
    Column("recorded", Float),
    Index("events_ts", "ts"),
    Index("events_type_recorded", "type", "recorded"),
)

# Events that arrived late (recorded `attendance_model.LATE_EVENT_S` or more after their time: a gateway
# offline for days delivering its outbox; noted by central/attendance_summary.py's `ledger.after_record`
# observer), per gateway: the oldest such time not yet taken, and how many late batches
# came. A reader that keeps something worked out per day from events (the attendance day counts,
# central/attendance.py) redoes the days from `since` on, then deletes the row only if `arrivals` did not
# change meanwhile. One row a gateway at most; written only by a batch with a late event.
late_events = Table(
    "late_events", meta,
    Column("gateway", String(_ID), primary_key=True),
    Column("since", Float, nullable=False),
    Column("arrivals", BigInteger, nullable=False),
)

commands = Table(
    "commands", meta,
    Column("id", String(64), primary_key=True),
    Column("gateway", String(_ID), nullable=False),
    Column("device", String(_ID), nullable=False),
    Column("action", String(_ID), nullable=False),
    Column("params", Text, nullable=False),
    Column("by", String(_ID), nullable=False),
    Column("created", Float, nullable=False),
    Column("deadline", Float, nullable=False),
    Column("status", String(32), nullable=False),
    # The result's detail: English text (an older agent's), or the JSON of a campus.i18n.ReportedText
    # (central/db.py TranslatableText: still TEXT, no migration), shown in each reader's language.
    Column("detail", TranslatableText, nullable=False, server_default=""),
    Column("finished", Float),
    # When a pending command was last published, and the `since` of its gateway's connection then
    # (central/commands.py publishes it again when the gateway reconnects, or after COMMAND_RETRY_S).
    Column("published", Float),
    Column("published_since", Float),
    Index("commands_created", "created"),
    Index("commands_pending", "deadline", sqlite_where=text("status = 'pending'"),
          postgresql_where=text("status = 'pending'")),
)

ingest_workers = Table(
    "ingest_workers", meta,
    Column("name", String(_ID), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("stats", Text, nullable=False),
)

latest = Table(
    "latest", meta,
    Column("gateway", String(_ID), primary_key=True),
    Column("device", String(_ID), primary_key=True),
    Column("metric", String(_ID), primary_key=True),
    Column("ts", Float, nullable=False),
    Column("value", Text, nullable=False),
    Column("epoch", Integer, nullable=False, server_default="0"),
    Column("seq", BigInteger, nullable=False, server_default="0"),
    sqlite_with_rowid=False,
)
