"""Central's acknowledgement to the agents: the watermark, and when to publish it.

A broker's PUBACK only says the broker took a message; a broker restarted
without its saved state, a queue limit or an expired session can still drop
it. So the agent keeps every outbox row until central says it has it: per
gateway, the *watermark* w is the highest seq such that every seq of the
gateway's current outbox instance (and numbering epoch) up to w is recorded
in the ledger, after the points were stored. Ingest publishes it on
`contract.ack_topic` (QoS 1, retained) and the agent deletes its rows up to it.

    w = max(previous w, agent's oldest - 1), then up through every seq in `seen`

The agent's `oldest` (state.outbox, the lowest seq it still holds) lets w
pass numbers the agent itself dropped by its bounds, which will never come.
Everything at or below the gateway's `seq_floor` counts as seen, so the
ledger never prunes `seen` above w (`prune_floor`): a late hole could
otherwise be passed without ever being filled.

Only gateways whose agent reports `oldest` take part (`outbox_oldest` not
NULL): an agent from before acknowledgements ignores them, and its holes
would hold `seen` for ever.

Publishing is batched per gateway, so the acks stay a small part of the
traffic: when w moved by ACK_EVERY messages since the last ack, or
ACK_MAX_DELAY_S after it, and promptly (`ack_due`) when a resend is seen
(duplicates) or the agent reconnected (a state with a new `since`: a
retained ack lost with an empty broker heals); never more often than every
ACK_MIN_INTERVAL_S. One row per gateway holds what was published
(`ack_sent`, `ack_sent_at`): claiming an ack is one transaction, so of
several ingest workers exactly one publishes it.

Ack traffic: a gateway sending r messages/s gets max(1/ACK_EVERY, 1/(r *
ACK_MAX_DELAY_S)) acks per message: at one message every 5-10 s that is
1/25 = 4% (1/24 at 10 s), measured in docs/benchmarks.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Select, and_, func, or_, select, update

from campus.contract import State
from central.tables import gateways as gw_t
from central.tables import seen

if TYPE_CHECKING:
    from central.db import Database

ACK_EVERY = 25             # messages: w moved this far since the last ack -> publish
ACK_MAX_DELAY_S = 240.0    # an ack at least this often while w moves (agents resend after 600 s by default)
ACK_MIN_INTERVAL_S = 0.3   # per gateway, at most one ack this often (a resend of 10,000 rows: ~3 acks/s)
REFUSED_WINDOW = 100_000_000  # a refused message's seq counts only this close above w (contract.SEQ_JUMP_MAX)


def note_state(conn: Connection, gateway: str, state: State, stored_since: float | None) -> None:
    """A state of the gateway: the agent's oldest seq held (of the current outbox instance), and a
    prompt ack when it has reconnected (a new `since`), so a retained ack an empty broker lost heals."""
    instance, oldest = state.outbox.get("instance"), state.outbox.get("oldest")
    if instance is not None and oldest is not None:
        held = func.coalesce(gw_t.c.outbox_oldest, 0)
        conn.execute(update(gw_t).where(gw_t.c.id == gateway, gw_t.c.outbox_instance == instance, held < oldest)
                     .values(outbox_oldest=oldest))
    if state.online and state.since > 0 and state.since != stored_since:
        conn.execute(update(gw_t).where(gw_t.c.id == gateway, gw_t.c.acked_seq > 0).values(ack_due=True))


def reset(conn: Connection, gateway: str, now: float, new_instance: bool) -> None:
    """A new numbering (epoch): nothing acknowledged yet. The first ack comes by count or delay like
    the others, not at once (a district of new gateways would otherwise all be acked in one go)."""
    values: dict[str, Any] = {"acked_seq": 0, "ack_sent": 0, "ack_sent_at": now, "ack_due": False}
    if new_instance:
        values["outbox_oldest"] = None
    conn.execute(update(gw_t).where(gw_t.c.id == gateway).values(**values))


def record_refused(db: Database, conn: Connection, gateway: str, seqs: set[int]) -> None:
    """Messages refused at decode whose seq could be read (a clock a year off, say): central has dealt
    with them, and sending them again changes nothing, so they count as seen for the watermark (not as
    received: they still show as gaps). Only numbers just above w: a corrupt seq must not hold `seen`."""
    acked, top = conn.execute(select(gw_t.c.acked_seq, func.coalesce(gw_t.c.max_seq, 0))
                              .where(gw_t.c.id == gateway)).one()
    ceiling = max(acked, top) + REFUSED_WINDOW
    rows = [{"gateway": gateway, "seq": s} for s in sorted(seqs) if acked < s <= ceiling]
    if rows:
        conn.execute(db.insert(seen).on_conflict_do_nothing(), rows)


def advance(conn: Connection, gateway: str, prompt: bool) -> None:
    """Move the gateway's watermark as far as `seen` allows; mark a prompt ack due."""
    row = conn.execute(select(gw_t.c.acked_seq, gw_t.c.seq_floor, gw_t.c.max_seq, gw_t.c.outbox_oldest)
                       .where(gw_t.c.id == gateway)).first()
    if row is None or row[3] is None:
        return  # unknown, or an agent without acknowledgements
    acked, floor, top, oldest = row
    w = max(acked, floor, oldest - 1)
    if top is not None and top > w:
        # Walks only the run that starts right above w: a hole stops it at its first row.
        expected = w + 1
        for seq in conn.execute(select(seen.c.seq).where(seen.c.gateway == gateway, seen.c.seq > w)
                                .order_by(seen.c.seq)).scalars():
            if seq != expected:
                break
            expected += 1
        w = expected - 1
    if w != acked or prompt:
        values: dict[str, Any] = {"acked_seq": w}
        if prompt:
            values["ack_due"] = True
        conn.execute(update(gw_t).where(gw_t.c.id == gateway).values(**values))


def prune_floor(top: int, keep: int, acked: int, oldest: int | None) -> int:
    """Where `seen` may be pruned to: the newest `keep` numbers, but never above the watermark of a
    gateway that is acknowledged (at or below the floor counts as seen, and a hole must stay one)."""
    floor = top - keep
    return floor if oldest is None else min(floor, acked)


def due(now: float, max_delay: float = ACK_MAX_DELAY_S) -> Select[Any]:
    """Gateways whose ack should go out now: (gateway, school, outbox instance, watermark)."""
    c = gw_t.c
    return select(c.id, c.school, c.outbox_instance, c.acked_seq).where(
        c.outbox_oldest.is_not(None), c.outbox_instance.is_not(None), c.acked_seq > 0,
        c.ack_sent_at <= now - ACK_MIN_INTERVAL_S,
        or_(c.ack_due.is_(True), and_(c.acked_seq > c.ack_sent, or_(c.acked_seq - c.ack_sent >= ACK_EVERY,
                                                                     c.ack_sent_at <= now - max_delay))))


def claim(conn: Connection, rows: list[Any], now: float) -> None:
    for gateway, _, _, seq in rows:
        conn.execute(update(gw_t).where(gw_t.c.id == gateway).values(ack_sent=seq, ack_sent_at=now, ack_due=False))
