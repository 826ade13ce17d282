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
