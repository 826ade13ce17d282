"""From alarm transitions to delivered messages: once each, batched, retried, visible.

```
 alarms.evaluate / acknowledge ──(same transaction)──► notify_events (alarm, transition)  unique
 Notifier.round(), in the alarm monitor's thread, under its lease:
   1. batch: new events grouped by (school, building, kind, transition); a group whose oldest event has
      waited `window` seconds becomes one delivery per channel that wants it (school, severity);
      events of a muted room or school (or of an alarm whose raise was muted) are marked muted instead
   2. deliver: each due delivery is claimed (attempts + 1, next attempt pushed back: a compare-and-set,
      so two instances never send one delivery at once), sent, and marked sent; a failure keeps it
      pending with `backoff * 2**(attempts-1)` until `max_attempts`, then failed
```

Exactly once, as far as a receiver can tell: a transition is one event row whatever restarts; the event
becomes deliveries in the transaction that marks it done; a delivery is sent again only after a failed
attempt. The one window left is a process killed between the receiver's "ok" and the row marked sent:
that delivery is sent again after its backoff (at least once, never lost).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from campus.i18n import lazy_gettext
from central.db import translatable
from central.notify import channels as chan
from central.notify.messages import AlarmLine, Batch, Message, TranslationsFor, english, render, render_test
from central.notify.senders import SendError, send
from central.notify.tables import (
    EVENT_DONE,
    EVENT_MUTED,
    EVENT_NEW,
    FAILED,
    PENDING,
    SENT,
    NotifyChannel,
    NotifyDelivery,
    NotifyEvent,
    NotifyMute,
)
from central.registry import Alarm, AlarmRule, Registry, School

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 30.0
DEFAULT_BACKOFF_S = 30.0
BACKOFF_MAX_S = 3600.0
DEFAULT_MAX_ATTEMPTS = 8
EVENTS_PER_ROUND = 5000
DELIVERIES_PER_ROUND = 100
KEEP_S = 30 * 24 * 3600     # sent and failed deliveries, and done events, are kept this long
PRUNE_EVERY_S = 3600.0


def record(s: Session, alarm_id: int, transition: str, at: float, by: str = "") -> None:
    """Note a transition in the caller's transaction (central/alarms.py), so it is told exactly when it
    happened, once."""
    s.add(NotifyEvent(alarm_id=alarm_id, transition=transition, at=at, by=(by or "")[:64], state=EVENT_NEW))


@dataclass
class RoundResult:
    deliveries: int = 0   # made from batches this round
    muted: int = 0        # events not told (muted)
    sent: int = 0
    failed: int = 0       # attempts that failed this round


def _places(registry: Registry, s: Session, gateways: set[str]) -> dict[str, dict[str, Any]]:
    from central.alarms import gateway_places  # alarms imports this module: late, to keep the import one-way

    return gateway_places(registry, s, ids=gateways)


class Notifier:
    """Turns events into deliveries and sends them; `round()` is run by the alarm monitor (under its lease).

    `window`: how long the first transition of a group waits for others to join it; `backoff`: the first
    retry's delay (doubling, at most an hour); `timezone`: the site's, for schools without their own
    (a school's timetable zone wins); `ssl_context`: to trust an SMTP server's private CA."""

    def __init__(self, registry: Registry, *, window: float = DEFAULT_WINDOW_S, backoff: float = DEFAULT_BACKOFF_S,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, timezone: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, budget_s: float = 5.0) -> None:
        from central.timetables import DEFAULT_TIMEZONE

        self.registry, self.window, self.backoff, self.max_attempts = registry, window, backoff, max_attempts
        self.zone = ZoneInfo(timezone or DEFAULT_TIMEZONE)
        self.ssl_context, self.budget_s = ssl_context, budget_s
        # The catalogs the messages are said in: the web app's, handed over by dashboards/notifications.py.
        self.translations: TranslationsFor = english
        self._pruned = 0.0
        self._zones: tuple[float, dict[str, ZoneInfo]] | None = None

    # ------------------------------------------------------------ the round

    def round(self, now: float | None = None) -> RoundResult:
        now = time.time() if now is None else now
        result = RoundResult()
        if now - self._pruned >= PRUNE_EVERY_S:
            self.prune(now)
            self._pruned = now
        self.batch(now, result)
        self.deliver(now, result)
        return result

    def zones(self) -> dict[str, ZoneInfo]:
        """Each school's time zone: its timetable's, where it has one (read again at most once a minute)."""
        from central.timetables import zones

        now = time.monotonic()
        if self._zones is None or now - self._zones[0] > 60:
            self._zones = (now, zones(self.registry))
        return self._zones[1]

    def batch(self, now: float, result: RoundResult | None = None) -> RoundResult:
        """Make the deliveries of every group of new events whose oldest has waited `window` seconds."""
        result = result or RoundResult()
        with self.registry.session() as s:
            rows = s.execute(select(NotifyEvent, Alarm, AlarmRule.kind).join(Alarm, NotifyEvent.alarm_id == Alarm.id)
                             .join(AlarmRule, Alarm.rule_id == AlarmRule.id).where(NotifyEvent.state == EVENT_NEW)
                             .order_by(NotifyEvent.id).limit(EVENTS_PER_ROUND)).all()
            if not rows:
                return result
            places = _places(self.registry, s, {a.gateway for _e, a, _k in rows})
            groups: dict[tuple[str, str, str, str], list[tuple[NotifyEvent, Alarm]]] = defaultdict(list)
            for ev, alarm, kind in rows:
                place = places.get(alarm.gateway, {})
                groups[(place.get("school") or "", place.get("building") or "", kind, ev.transition)].append((ev, alarm))
            ready = {k: v for k, v in groups.items() if min(ev.at for ev, _a in v) <= now - self.window}
            if not ready:
                return result
            ids = [a.id for v in ready.values() for _e, a in v]
            muted_raises = set(s.scalars(select(NotifyEvent.alarm_id).where(
                NotifyEvent.transition == "raised", NotifyEvent.state == EVENT_MUTED, NotifyEvent.alarm_id.in_(ids))))
            mutes = s.scalars(select(NotifyMute).where(NotifyMute.until > min(ev.at for v in ready.values()
                                                                               for ev, _a in v))).all()
            channels = s.scalars(select(NotifyChannel).where(NotifyChannel.enabled.is_(True))
                                 .order_by(NotifyChannel.id)).all()
            names = dict(s.execute(select(School.id, School.name)).all())
            zones = self.zones()
            done: list[int] = []
            muted: list[int] = []
            # In the order the transitions happened: a raise and its clearing in one window go out in that order.
            for (school, building, kind, transition), items in sorted(ready.items(),
                                                                      key=lambda kv: min(ev.id for ev, _a in kv[1])):
                told: list[tuple[NotifyEvent, Alarm]] = []
                for ev, alarm in items:
                    place = places.get(alarm.gateway, {})
                    if alarm.id in muted_raises or any(
                            m.school_id == school and m.until > ev.at and m.room_id in (None, place.get("room_id"))
                            for m in mutes):
                        muted.append(ev.id)
                    else:
                        done.append(ev.id)
                        told.append((ev, alarm))
                wanted = [c for c in channels if c.school_id in (None, school)
                          and chan.severity_at_least(kind, c.min_severity)]
                if not told or not wanted:
                    continue
                batch = self._batch(school, names.get(school, ""), building, kind, transition,
                                    [a for _e, a in told], places, zones.get(school, self.zone))
                for c in wanted:
                    title = render(batch, c.lang, self.translations).title
                    s.add(NotifyDelivery(channel_id=c.id, school_id=school, transition=transition, summary=title[:300],
                                         alarm_ids=[a.id for a in batch.alarms], status=PENDING, attempts=0,
                                         next_at=now, last_error="", created=now))
                    result.deliveries += 1
            # Claimed with the state they were read in: another instance that got here first makes this
            # transaction roll back, not a second set of deliveries.
            for state, which in ((EVENT_DONE, done), (EVENT_MUTED, muted)):
                for i in range(0, len(which), 500):
                    chunk = which[i:i + 500]
                    taken = s.execute(update(NotifyEvent).where(NotifyEvent.id.in_(chunk), NotifyEvent.state == EVENT_NEW)
                                      .values(state=state).execution_options(synchronize_session=False))
                    if taken.rowcount != len(chunk):
                        raise RuntimeError("notification events were batched by another instance at the same time")
            result.muted += len(muted)
        return result

    def _batch(self, school: str, school_name: str, building: str, kind: str, transition: str, alarms: list[Alarm],
               places: dict[str, dict[str, Any]], zone: ZoneInfo) -> Batch:
        from central.alarms import RULE_KINDS

        label = RULE_KINDS[kind].label if kind in RULE_KINDS else kind
        lines = [AlarmLine(a.id, a.gateway, a.device, places.get(a.gateway, {}).get("room") or "",
                           translatable(a.message), a.value,
                           a.raised_at, a.acked_at, a.acked_by or "", a.cleared_at) for a in alarms]
        return Batch(transition, school, school_name, building, kind, str(label), chan.severity_of(kind), zone, lines)

    # ------------------------------------------------------------ sending

    def delay(self, attempts: int) -> float:
        """How long after attempt number `attempts` (1, 2, ...) the next one is made."""
        return min(BACKOFF_MAX_S, self.backoff * 2 ** max(0, attempts - 1))

    def deliver(self, now: float, result: RoundResult | None = None) -> RoundResult:
        """Send the due deliveries, oldest first, until the round's time budget is spent."""
        result = result or RoundResult()
        started = time.monotonic()
        with self.registry.session() as s:
            due = s.execute(select(NotifyDelivery.id, NotifyDelivery.attempts).where(
                NotifyDelivery.status == PENDING, NotifyDelivery.next_at <= now)
                .order_by(NotifyDelivery.id).limit(DELIVERIES_PER_ROUND)).all()
        for n, (delivery_id, attempts) in enumerate(due):
            if n and time.monotonic() - started > self.budget_s:
                break  # at least one a round; the rest wait for the next round (the lease is renewed between)
            with self.registry.session() as s:
                claimed = s.execute(update(NotifyDelivery).where(
                    NotifyDelivery.id == delivery_id, NotifyDelivery.status == PENDING,
                    NotifyDelivery.attempts == attempts).values(attempts=attempts + 1,
                                                                next_at=now + self.delay(attempts + 1)))
            if claimed.rowcount != 1:
                continue  # another instance has it
            error = ""
            try:
                channel, message, document = self._message(delivery_id)
                send(channel, message, document, self.ssl_context)
            except SendError as exc:
                error = str(exc)
            except Exception as exc:  # noqa: BLE001 - one bad delivery must not stop the others
                log.exception("notification %s could not be sent", delivery_id)
                error = f"{type(exc).__name__}: {exc}"
            with self.registry.session() as s:
                row = s.get(NotifyDelivery, delivery_id)
                if row is None:
                    continue  # its channel was deleted meanwhile
                if error:
                    row.last_error = error[:500]
                    row.status = FAILED if attempts + 1 >= self.max_attempts else PENDING
                    result.failed += 1
                    log.warning("notification %s attempt %d failed: %s", delivery_id, attempts + 1, error)
                else:
                    row.status, row.sent_at, row.last_error = SENT, time.time(), ""
                    result.sent += 1
        return result

    def _message(self, delivery_id: int) -> tuple[NotifyChannel, Message, dict[str, Any]]:
        """The delivery's channel, its message in the channel's language, and the webhook's document."""
        with self.registry.session() as s:
            d = s.get(NotifyDelivery, delivery_id)
            if d is None:
                raise SendError("the delivery is gone")
            ch = s.get(NotifyChannel, d.channel_id)
            if ch is None:
                raise SendError("the channel is gone")
            rows = s.execute(select(Alarm, AlarmRule.kind).join(AlarmRule, Alarm.rule_id == AlarmRule.id)
                             .where(Alarm.id.in_(list(d.alarm_ids))).order_by(Alarm.id)).all()
            if not rows:
                raise SendError("its alarms are gone")
            places = _places(self.registry, s, {a.gateway for a, _k in rows})
            kind = rows[0][1]
            building = places.get(rows[0][0].gateway, {}).get("building") or ""
            school = s.get(School, d.school_id)
            batch = self._batch(d.school_id, school.name if school else "", building, kind, d.transition,
                                [a for a, _k in rows], places, self.zones().get(d.school_id, self.zone))
            s.expunge(ch)
        message = render(batch, ch.lang, self.translations)
        document = {"type": "alarms", "delivery": delivery_id, "transition": batch.transition, "school": batch.school,
                    "building": batch.building, "kind": batch.kind, "severity": batch.severity,
                    "alarms": [{"id": a.id, "gateway": a.gateway, "device": a.device, "room": a.room,
                                "message": str(a.message), "value": a.value, "raised_at": a.raised_at,
                                "acked_at": a.acked_at, "acked_by": a.acked_by, "cleared_at": a.cleared_at}
                               for a in batch.alarms]}
        return ch, message, document

    def send_test(self, channel_id: int) -> None:
        """Send a test message through a channel now (the admin's button); SendError if it was not taken."""
        ch = chan.channel_row(self.registry, channel_id)
        if ch is None:
            raise LookupError(f"no channel {channel_id}")
        message = render_test(ch.lang, ch.name, self.translations)
        send(ch, message, {"type": "test", "channel": ch.id}, self.ssl_context)

    # ------------------------------------------------------------ housekeeping

    def prune(self, now: float) -> None:
        """Forget done events and finished deliveries older than KEEP_S."""
        with self.registry.session() as s:
            s.execute(delete(NotifyEvent).where(NotifyEvent.state != EVENT_NEW, NotifyEvent.at < now - KEEP_S))
            s.execute(delete(NotifyDelivery).where(NotifyDelivery.status != PENDING,
                                                   NotifyDelivery.created < now - KEEP_S))


# ---------------------------------------------------------------- what admins see


def delivery_dict(d: NotifyDelivery, channel: NotifyChannel | None) -> dict[str, Any]:
    return {"id": d.id, "channel_id": d.channel_id, "channel": channel.name if channel else "",
            "kind": channel.kind if channel else "", "school": d.school_id, "transition": d.transition,
            "summary": d.summary, "alarms": len(d.alarm_ids or []), "alarm_ids": list(d.alarm_ids or []),
            "status": d.status, "attempts": d.attempts, "next_at": d.next_at if d.status == PENDING else None,
            "last_error": d.last_error, "created": d.created, "sent_at": d.sent_at}


def list_deliveries(registry: Registry, limit: int = 100, offset: int = 0, status: str | None = None,
                    schools: tuple[str, ...] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Deliveries newest first (of `schools` only, for an account limited to them), and their total."""
    if status is not None and status not in (PENDING, SENT, FAILED):
        raise ValueError(lazy_gettext("status must be pending, sent or failed"))
    q = select(NotifyDelivery, NotifyChannel).outerjoin(NotifyChannel, NotifyDelivery.channel_id == NotifyChannel.id)
    count = select(func.count(NotifyDelivery.id))
    if status is not None:
        q, count = q.where(NotifyDelivery.status == status), count.where(NotifyDelivery.status == status)
    if schools is not None:
        q = q.where(NotifyDelivery.school_id.in_(schools))
        count = count.where(NotifyDelivery.school_id.in_(schools))
    with registry.session() as s:
        total = s.scalar(count) or 0
        rows = s.execute(q.order_by(NotifyDelivery.id.desc()).limit(limit).offset(offset)).all()
        return [delivery_dict(d, c) for d, c in rows], total


def retry_delivery(registry: Registry, delivery_id: int, schools: tuple[str, ...] | None = None,
                   now: float | None = None) -> bool:
    """A failed delivery goes back in the queue (its attempts start again); False if there is none (in scope)."""
    now = time.time() if now is None else now
    with registry.session() as s:
        d = s.get(NotifyDelivery, delivery_id)
        if d is None or (schools is not None and d.school_id not in schools):
            return False
        if d.status == FAILED:
            d.status, d.attempts, d.next_at = PENDING, 0, now
        return True
