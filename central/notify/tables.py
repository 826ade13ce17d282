"""The notification tables (migration 0007): channels, mutes, the transitions to tell, the deliveries.

* `notify_channels`: where alarms go (e-mail, WeCom, DingTalk, a generic webhook), for one school or
  every school, from a severity up, in one language. `settings` holds what may be shown (host, port,
  recipients, the URL); `secret` what may not (an SMTP password, a signing secret) and never leaves
  the server whole (central/notify/channels.py masks it).
* `notify_mutes`: a room or a whole school under maintenance until a time: its alarms stay on the
  board but nobody is told.
* `notify_events`: the transactional outbox of alarm transitions. central/alarms.py writes a row in
  the same transaction that raises, acknowledges or clears an alarm, so a transition is recorded
  exactly when it happens, once (unique alarm + transition), and survives any restart.
* `notify_deliveries`: one message to one channel, covering one batch of transitions (one school,
  building, kind and transition): pending, sent or failed, with its attempts and last error.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from central.db import Base

TRANSITIONS = ("raised", "acknowledged", "cleared")
# An event's state: waiting to be batched, or done (put into deliveries, muted, or no channel wanted it).
EVENT_NEW, EVENT_DONE, EVENT_MUTED = "new", "done", "muted"
PENDING, SENT, FAILED = "pending", "sent", "failed"


class NotifyChannel(Base):
    __tablename__ = "notify_channels"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))              # email, wecom, dingtalk, webhook
    school_id: Mapped[str | None] = mapped_column(ForeignKey("schools.id"), nullable=True)  # None: every school
    min_severity: Mapped[str] = mapped_column(String(16))      # info, warning, critical
    lang: Mapped[str] = mapped_column(String(8))               # zh-CN, en
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    secret: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)


class NotifyMute(Base):
    __tablename__ = "notify_mutes"
    id: Mapped[int] = mapped_column(primary_key=True)
    school_id: Mapped[str] = mapped_column(ForeignKey("schools.id"))
    room_id: Mapped[int | None] = mapped_column(ForeignKey("rooms.id"), nullable=True)  # None: the whole school
    until: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(200), default="")
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created: Mapped[float] = mapped_column(Float)


class NotifyEvent(Base):
    __tablename__ = "notify_events"
    __table_args__ = (UniqueConstraint("alarm_id", "transition"), Index("ix_notify_events_state", "state", "at"))
    id: Mapped[int] = mapped_column(primary_key=True)
    alarm_id: Mapped[int] = mapped_column(ForeignKey("alarms.id"))
    transition: Mapped[str] = mapped_column(String(16))        # raised, acknowledged, cleared
    at: Mapped[float] = mapped_column(Float)
    by: Mapped[str] = mapped_column(String(64), default="")    # who acknowledged
    state: Mapped[str] = mapped_column(String(8), default=EVENT_NEW)


class NotifyDelivery(Base):
    __tablename__ = "notify_deliveries"
    __table_args__ = (Index("ix_notify_deliveries_due", "status", "next_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("notify_channels.id"))
    school_id: Mapped[str] = mapped_column(String(64))
    transition: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(String(300))          # the message's title, in the channel's language
    alarm_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(8), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[float] = mapped_column(Float)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created: Mapped[float] = mapped_column(Float, index=True)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
