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

import sqlite3
from typing import Any

from campus.contract import State

ACK_EVERY = 25             # messages: w moved this far since the last ack -> publish
ACK_MAX_DELAY_S = 240.0    # an ack at least this often while w moves (agents resend after 600 s by default)
ACK_MIN_INTERVAL_S = 0.3   # per gateway, at most one ack this often (a resend of 10,000 rows: ~3 acks/s)
REFUSED_WINDOW = 100_000_000  # a refused message's seq counts only this close above w (contract.SEQ_JUMP_MAX)


def note_state(db: sqlite3.Connection, gateway: str, state: State, stored_since: float | None) -> None:
    """A state of the gateway: the agent's oldest seq held (of the current outbox instance), and a
    prompt ack when it has reconnected (a new `since`), so a retained ack an empty broker lost heals."""
    instance, oldest = state.outbox.get("instance"), state.outbox.get("oldest")
    if instance is not None and oldest is not None:
        db.execute("UPDATE gateways SET outbox_oldest = MAX(COALESCE(outbox_oldest, 0), ?)"
                   " WHERE id = ? AND outbox_instance = ?", (oldest, gateway, instance))
    if state.online and state.since > 0 and state.since != stored_since:
        db.execute("UPDATE gateways SET ack_due = 1 WHERE id = ? AND acked_seq > 0", (gateway,))


def reset(db: sqlite3.Connection, gateway: str, now: float, new_instance: bool) -> None:
    """A new numbering (epoch): nothing acknowledged yet. The first ack comes by count or delay like
    the others, not at once (a district of new gateways would otherwise all be acked in one go)."""
    db.execute("UPDATE gateways SET acked_seq = 0, ack_sent = 0, ack_sent_at = ?, ack_due = 0,"
               " outbox_oldest = CASE WHEN ? THEN NULL ELSE outbox_oldest END WHERE id = ?",
               (now, new_instance, gateway))


def record_refused(db: sqlite3.Connection, gateway: str, seqs: set[int]) -> None:
    """Messages refused at decode whose seq could be read (a clock a year off, say): central has dealt
    with them, and sending them again changes nothing, so they count as seen for the watermark (not as
    received: they still show as gaps). Only numbers just above w: a corrupt seq must not hold `seen`."""
    acked, top = db.execute("SELECT acked_seq, COALESCE(max_seq, 0) FROM gateways WHERE id = ?",
                            (gateway,)).fetchone()
    ceiling = max(acked, top) + REFUSED_WINDOW
    db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)",
                   [(gateway, s) for s in sorted(seqs) if acked < s <= ceiling])


def advance(db: sqlite3.Connection, gateway: str, prompt: bool) -> None:
    """Move the gateway's watermark as far as `seen` allows; mark a prompt ack due."""
    row = db.execute("SELECT acked_seq, seq_floor, max_seq, outbox_oldest FROM gateways WHERE id = ?",
                     (gateway,)).fetchone()
    if row is None or row[3] is None:
        return  # unknown, or an agent without acknowledgements
    acked, floor, top, oldest = row
    w = max(acked, floor, oldest - 1)
    if top is not None and top > w:
        # Walks only the run that starts right above w: a hole stops it at its first row.
        expected = w + 1
        for (seq,) in db.execute("SELECT seq FROM seen WHERE gateway = ? AND seq > ? ORDER BY seq", (gateway, w)):
            if seq != expected:
                break
            expected += 1
        w = expected - 1
    if w != acked or prompt:
        db.execute("UPDATE gateways SET acked_seq = ?, ack_due = ack_due OR ? WHERE id = ?", (w, prompt, gateway))


def prune_floor(top: int, keep: int, acked: int, oldest: int | None) -> int:
    """Where `seen` may be pruned to: the newest `keep` numbers, but never above the watermark of a
    gateway that is acknowledged (at or below the floor counts as seen, and a hole must stay one)."""
    floor = top - keep
    return floor if oldest is None else min(floor, acked)


_DUE = ("outbox_oldest IS NOT NULL AND outbox_instance IS NOT NULL AND acked_seq > 0 AND ack_sent_at <= ?"
        " AND (ack_due OR (acked_seq > ack_sent AND (acked_seq - ack_sent >= ? OR ack_sent_at <= ?)))")


def due(db: sqlite3.Connection, now: float, max_delay: float = ACK_MAX_DELAY_S) -> list[tuple[Any, ...]]:
    """Gateways whose ack should go out now: (gateway, school, outbox instance, watermark)."""
    return db.execute(f"SELECT id, school, outbox_instance, acked_seq FROM gateways WHERE {_DUE}",
                      (now - ACK_MIN_INTERVAL_S, ACK_EVERY, now - max_delay)).fetchall()


def claim(db: sqlite3.Connection, rows: list[tuple[Any, ...]], now: float) -> None:
    db.executemany("UPDATE gateways SET ack_sent = ?, ack_sent_at = ?, ack_due = 0 WHERE id = ?",
                   [(seq, now, gateway) for gateway, _, _, seq in rows])

