"""The outbox: seq survives restarts, bounds drop the oldest and count exactly."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.outbox import Outbox


def _msg(i: int) -> tuple[str, object]:
    return (f"t/{i}", lambda seq, i=i: json.dumps({"seq": seq, "i": i}).encode())


def test_seq_is_strictly_increasing_across_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "a.db")
    assert box.add(sequenced=[_msg(1), _msg(2)]) == [1, 2]
    box.remove(r.id for r in box.peek(10))
    box.close()
    box = Outbox(tmp_path / "a.db")  # a restart: the counter lives on disk
    assert box.add(sequenced=[_msg(3)]) == [3]
    assert json.loads(box.peek(1)[0].payload)["seq"] == 3
    assert box.last_seq == 3


def test_each_outbox_file_has_its_own_instance_kept_across_reopen(tmp_path: Path) -> None:
    first = Outbox(tmp_path / "a.db")
    instance = first.instance
    first.close()
    again, other = Outbox(tmp_path / "a.db"), Outbox(tmp_path / "b.db")  # a restart; a new SD card
    assert again.instance == instance and other.instance != instance
    assert 0 < instance < 2**53 and 0 < other.instance < 2**53


def test_peek_is_in_order_and_remove_is_selective(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "a.db")
    box.add(sequenced=[_msg(i) for i in range(5)], plain=[("r", b"result")])
    rows = box.peek(10)
    assert [r.topic for r in rows] == ["t/0", "t/1", "t/2", "t/3", "t/4", "r"]
    box.remove([rows[1].id, rows[3].id])
    assert [r.topic for r in box.peek(10)] == ["t/0", "t/2", "t/4", "r"]


def test_count_bound_drops_oldest_and_counts_exactly(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "a.db", max_messages=100)
    for start in range(0, 250, 10):
        box.add(sequenced=[_msg(i) for i in range(start, start + 10)])
    assert len(box) == 100
    assert box.dropped == 150
    seqs = [json.loads(r.payload)["seq"] for r in box.peek(1000)]
    assert seqs == list(range(151, 251))  # the newest 100, in order


def test_age_bound(tmp_path: Path) -> None:
    now = [1000.0]
    box = Outbox(tmp_path / "a.db", max_age_s=60, clock=lambda: now[0])
    box.add(sequenced=[_msg(i) for i in range(3)])
    now[0] += 30
    box.add(sequenced=[_msg(3)])
    now[0] += 31  # the first three are now 61 s old
    box.expire()
    assert [json.loads(r.payload)["seq"] for r in box.peek(10)] == [4]
    assert box.dropped == 3


# ---------------------------------------------------------------- central's acknowledgement


def _seqs(box: Outbox) -> list[int]:
    return [r[0] for r in box.db.execute("SELECT seq FROM outbox ORDER BY id")]


def test_a_puback_only_marks_a_row_sent_central_s_ack_deletes_it(tmp_path: Path) -> None:
    now = [1000.0]
    box = Outbox(tmp_path / "a.db", clock=lambda: now[0])
    box.add(sequenced=[_msg(i) for i in range(5)])
    rows = box.peek(3)
    assert [r.seq for r in rows] == [1, 2, 3]
    box.published(r.id for r in rows)
    assert [r.seq for r in box.peek(10)] == [4, 5]  # the drain takes the unsent rows only
    assert _seqs(box) == [1, 2, 3, 4, 5]  # ... and the sent ones stay
    assert box.figures() == {"pending": 5, "unacked": 3, "dropped": 0, "last_seq": 5, "instance": box.instance,
                             "oldest": 1, "oldest_age": 0}
    assert box.oldest_sent() == 1000.0
    assert box.acknowledge(box.instance + 1, 5) == 0  # another outbox's (an old SD card's): nothing
    assert box.acknowledge(box.instance, 2) == 2
    assert _seqs(box) == [3, 4, 5]
    assert box.acknowledge(box.instance, 4) == 2  # an unsent row central already has goes too
    now[0] += 30
    assert box.figures()["oldest"] == 5 and box.figures()["oldest_age"] == 30
    assert box.acknowledge(box.instance, 5) == 1
    assert box.figures() == {"pending": 0, "unacked": 0, "dropped": 0, "last_seq": 5, "instance": box.instance,
                             "oldest": 6, "oldest_age": 0}  # nothing held: central may pass every seq up to 5
    assert box.oldest_sent() is None


def test_resend_marks_every_sent_row_unsent_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "a.db")
    box.add(sequenced=[_msg(i) for i in range(4)])
    box.published(r.id for r in box.peek(3))
    assert box.resend() == 3
    assert [r.seq for r in box.peek(10)] == [1, 2, 3, 4]
    assert box.resend() == 0


def test_bounds_drop_unacknowledged_rows_too_and_count_them(tmp_path: Path) -> None:
    now = [1000.0]
    box = Outbox(tmp_path / "a.db", max_messages=10, max_age_s=60, clock=lambda: now[0])
    box.add(sequenced=[_msg(i) for i in range(8)])
    box.published(r.id for r in box.peek(8))  # all sent, none acknowledged
    box.add(sequenced=[_msg(i) for i in range(8, 12)])
    assert box.dropped == 2 and _seqs(box) == list(range(3, 13))
    assert box.figures()["oldest"] == 3 and box.figures()["unacked"] == 6
    now[0] += 61
    box.expire()
    assert len(box) == 0 and box.dropped == 12  # exact: every seq is held, acknowledged or counted here


def test_a_row_without_a_seq_still_leaves_on_puback(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "a.db")
    box.add(sequenced=[_msg(1)], plain=[("r", b"no seq")])
    box.published(r.id for r in box.peek(10))
    assert [r[0] for r in box.db.execute("SELECT topic FROM outbox")] == ["t/1"]


def test_a_file_from_before_acknowledgements_gains_the_columns_and_its_rows_seqs(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
                             retain INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta VALUES ('next_seq', 3), ('dropped', 0), ('instance', 42);
        INSERT INTO outbox (topic, payload, created) VALUES
            ('t/1', CAST('{"seq":1,"ts":1}' AS BLOB), 1), ('t/2', CAST('{"seq":2}' AS BLOB), 1),
            ('r', CAST('{"id":"c1","status":"done"}' AS BLOB), 1), ('x', X'ff00', 1);
    """)
    db.commit()
    db.close()
    box = Outbox(path)
    assert [(r.topic, r.seq) for r in box.peek(10)] == [("t/1", 1), ("t/2", 2), ("r", None), ("x", None)]
    box.published(r.id for r in box.peek(10))
    assert _seqs(box) == [1, 2]  # the rows without a seq left on PUBACK, as they did before
    assert box.acknowledge(42, 2) == 2 and box.add(sequenced=[_msg(3)]) == [3]
