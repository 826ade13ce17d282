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

from sqlalchemy import Connection, Select, and_, or_, select, update

from campus.contract import State
from central.tables import gateways as gw_t

if TYPE_CHECKING:
    from central.ledger import GatewayRow

ACK_EVERY = 25             # messages: w moved this far since the last ack -> publish
ACK_MAX_DELAY_S = 240.0    # an ack at least this often while w moves (agents resend after 600 s by default)
ACK_MIN_INTERVAL_S = 0.3   # per gateway, at most one ack this often (a resend of 10,000 rows: ~3 acks/s)
REFUSED_WINDOW = 100_000_000  # a refused message's seq counts only this close above w (contract.SEQ_JUMP_MAX)


def note_state(row: GatewayRow, state: State, stored_since: float | None) -> None:
    """A state of the gateway: the agent's oldest seq held (of the current outbox instance), and a
    prompt ack when it has reconnected (a new `since`), so a retained ack an empty broker lost heals."""
    instance, oldest = state.outbox.get("instance"), state.outbox.get("oldest")
    if instance is not None and oldest is not None and row.outbox_instance == instance \
            and (row.outbox_oldest or 0) < oldest:
        row.outbox_oldest = oldest
    if state.online and state.since > 0 and state.since != stored_since and row.acked_seq > 0:
        row.ack_due = True


def reset(row: GatewayRow, now: float, new_instance: bool) -> None:
    """A new numbering (epoch): nothing acknowledged yet. The first ack comes by count or delay like
    the others, not at once (a district of new gateways would otherwise all be acked in one go)."""
    row.acked_seq, row.ack_sent, row.ack_sent_at, row.ack_due = 0, 0, now, False
    if new_instance:
        row.outbox_oldest = None


def refused_seen(row: GatewayRow, seqs: set[int]) -> list[int]:
    """Messages refused at decode whose seq could be read (a clock a year off, say): central has dealt
    with them, and sending them again changes nothing, so they count as seen for the watermark (not as
    received: they still show as gaps). Only numbers just above w: a corrupt seq must not hold `seen`.
    Returns the seqs to record in `seen`."""
    ceiling = max(row.acked_seq, row.max_seq or 0) + REFUSED_WINDOW
    return [s for s in sorted(seqs) if row.acked_seq < s <= ceiling]


def walk_from(row: GatewayRow) -> int | None:
    """Where the watermark's walk through `seen` starts (w + 1), or None: no walk (an agent without
    acknowledgements, or nothing above w)."""
    if row.outbox_oldest is None:
        return None
    w = max(row.acked_seq, row.seq_floor, row.outbox_oldest - 1)
    return w + 1 if row.max_seq is not None and row.max_seq > w else None


def advance(row: GatewayRow, prompt: bool, through: int | None) -> None:
    """Move the gateway's watermark: to `through` (the end of the run of seen numbers from
    `walk_from`, which the ledger found), else to where the agent's oldest and the floor put it;
    mark a prompt ack due."""
    if row.outbox_oldest is None:
        return  # an agent without acknowledgements
    w = max(row.acked_seq, row.seq_floor, row.outbox_oldest - 1) if through is None else through
    if w != row.acked_seq or prompt:
        row.acked_seq = w
        if prompt:
            row.ack_due = True


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
