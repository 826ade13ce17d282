"""The outbox: seq survives restarts, bounds drop the oldest and count exactly; damaged files are set
aside, a full disk is counted, not fatal."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from campus.errors import ConfigError
from edge_agent.outbox import Outbox
from edge_agent.storage import KEEP_CORRUPT


def _msg(i: int) -> tuple[str, object]:
    return (f"t/{i}", lambda seq, i=i: json.dumps({"seq": seq, "i": i}).encode())


def test_seq_is_strictly_increasing_across_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "a.db")
    assert box.add(sequenced=[_msg(1), _msg(2)]) == [1, 2]
    box.published(r.id for r in box.peek(10))
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


def test_peek_is_in_order_and_published_rows_leave_it(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "a.db")
    box.add(sequenced=[_msg(i) for i in range(5)], plain=[("r", b"result")])
    rows = box.peek(10)
    assert [r.topic for r in rows] == ["t/0", "t/1", "t/2", "t/3", "t/4", "r"]
    box.published([rows[1].id, rows[3].id])
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


# ---------------------------------------------------------------- a damaged file (power cut on an SD card)


def _filled(path: Path, rows: int = 300) -> int:
    """An outbox at `path` holding `rows` unsent messages, closed cleanly; its instance."""
    box = Outbox(path)
    for start in range(0, rows, 10):
        box.add(sequenced=[(f"t/{i}", lambda seq: json.dumps({"seq": seq, "pad": "x" * 300}).encode())
                           for i in range(start, start + 10)])
    instance = box.instance
    box.close()
    return instance


def _overwrite(path: Path, offset: int, size: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(size))


def _as_directory(path: Path) -> None:
    for p in path.parent.glob(f"{path.name}*"):
        p.unlink()
    (path / "whatever").mkdir(parents=True)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "cut to half": lambda p: os.truncate(p, p.stat().st_size // 2),
    "header overwritten": lambda p: _overwrite(p, 0, 100),
    "pages overwritten": lambda p: _overwrite(p, 4096 * 3, 4096 * 5),
    "zero length": lambda p: os.truncate(p, 0),
    "a directory in its place": _as_directory,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_outbox_is_set_aside_and_a_new_instance_starts(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "agent.db"
    old = _filled(path)
    DAMAGE[damage](path)
    box = Outbox(path)  # no exception: the agent starts
    rep = box.replaced
    assert rep is not None and box.replaced_now == rep
    assert box.instance not in (0, old) and box.last_seq == 0 and len(box) == 0
    assert box.add(sequenced=[_msg(1)]) == [1]  # a new instance counts from 1
    kept = tmp_path / rep.kept_as
    assert kept.exists() and rep.kept_as.startswith("agent.db.corrupt-")
    assert rep.previous_instance in (None, old) and rep.lost is None  # a damaged file's rows cannot be counted
    assert rep.reason
    box.close()
    again = Outbox(path)  # a restart: the new file is sound, the replacement is still what it reports
    assert again.instance == box.instance and again.replaced == rep and again.replaced_now is None
    again.close()


def test_a_garbage_write_ahead_log_is_damage_not_an_older_state(tmp_path: Path) -> None:
    # A power cut copy: the last checkpoint in the main file, newer commits in the -wal.
    live = Outbox(tmp_path / "live.db")
    live.add(sequenced=[_msg(i) for i in range(20)])
    live.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    live.add(sequenced=[_msg(i) for i in range(20, 40)])  # seq 21..40, in the -wal only
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{live.path}{suffix}", tmp_path / f"agent.db{suffix}")
    live.close()
    path = tmp_path / "agent.db"
    _overwrite(Path(f"{path}-wal"), 0, 64)
    # Why it matters: SQLite alone silently ignores the log and would hand out seq 21..40 again.
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{path}{suffix}", probe_dir / f"agent.db{suffix}")
    plain = sqlite3.connect(probe_dir / "agent.db")
    assert plain.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0] == 21
    plain.close()

    box = Outbox(path)
    assert box.replaced is not None and "write-ahead log" in box.replaced.reason
    assert box.add(sequenced=[_msg(0)]) == [1] and box.instance != live.instance
    assert (tmp_path / f"{box.replaced.kept_as}-wal").exists()  # kept with its log, for forensics
    box.close()


def test_a_power_cut_copy_with_a_sound_log_is_not_damage(tmp_path: Path) -> None:
    # The normal power cut: commits in the -wal not yet checkpointed. Nothing is lost, nothing replaced.
    live = Outbox(tmp_path / "live.db")
    live.add(sequenced=[_msg(i) for i in range(20)])
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{live.path}{suffix}", tmp_path / f"agent.db{suffix}")
    assert Path(f"{live.path}-wal").stat().st_size > 0
    box = Outbox(tmp_path / "agent.db")
    assert box.replaced is None and box.instance == live.instance and box.last_seq == 20 and len(box) == 20
    live.close()
    box.close()


def test_a_missing_file_with_its_log_left_is_damage(tmp_path: Path) -> None:
    live = Outbox(tmp_path / "live.db")
    live.add(sequenced=[_msg(1)])
    shutil.copyfile(f"{live.path}-wal", tmp_path / "agent.db-wal")
    live.close()
    box = Outbox(tmp_path / "agent.db")
    assert box.replaced is not None and "missing" in box.replaced.reason
    box.close()


def test_a_new_outbox_file_is_not_a_replacement(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "agent.db")
    assert box.replaced is None and box.journal_since == pytest.approx(time.time(), abs=5)
    box.close()


def test_damage_found_while_running_replaces_the_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    old = _filled(path, rows=3000)
    box = Outbox(path)
    changes: list[int] = []
    box.on_change = lambda: changes.append(box.instance)
    replaced = []
    box.on_replaced.append(replaced.append)
    _overwrite(path, 4096 * 20, 4096 * 200)
    box.db.execute("PRAGMA shrink_memory")  # drop the cached pages: the next read goes to the card
    rows = box.peek(5000)
    assert box.replaced_now is not None and replaced == [box.replaced_now]
    assert box.instance != old and changes and changes[-1] == box.instance
    assert rows == []  # the damaged rows are not published
    assert box.replaced_now.previous_instance == old and box.replaced_now.previous_last_seq == 3000
    assert box.add(sequenced=[_msg(1)]) == [1]
    box.close()


def test_only_the_newest_damaged_files_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    for _ in range(KEEP_CORRUPT + 2):
        _filled(path, rows=10)
        os.truncate(path, 0)
        Outbox(path).close()  # each start sets one aside
    kept = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name and not p.name.endswith(("-wal", "-shm"))]
    assert len(kept) == KEEP_CORRUPT


# ---------------------------------------------------------------- a full disk (a real one)


def test_a_full_disk_counts_what_is_not_stored_holds_results_and_recovers(small_disk, caplog) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.storage")
    box = Outbox(small_disk.path / "agent.db")
    changes = []
    box.on_change = lambda: changes.append(box.health.status)
    assert box.add(sequenced=[_msg(i) for i in range(5)]) == [1, 2, 3, 4, 5]
    published = [r.id for r in box.peek(2)]
    small_disk.fill()

    refused = sum(1 for i in range(200) if box.add(sequenced=[_msg(i)]) == [])
    assert refused == 200  # every write refused: nothing sequenced, every one counted
    assert box.health.status == "full" and changes == ["full"]
    figures = box.figures()
    assert figures["dropped"] == figures["not_stored"] == 200 and figures["last_seq"] == 5
    storage_lines = [r for r in caplog.records if r.name == "edge_agent.storage"]
    assert len(storage_lines) == 1 and "full" in storage_lines[0].getMessage()  # one line, not one per write

    # A command result is held in memory and can still be published; a refused delete is not republished.
    box.add(plain=[("r/1", b"result")])
    box.published(published)
    rows = box.peek(10)
    assert [(r.topic, r.payload) for r in rows] == [("r/1", b"result")] and rows[0].id < 0

    small_disk.free()
    assert box.add(sequenced=[_msg(9)]) == [6]  # the refused readings never took a number: no gap
    assert box.health.status == "ok" and changes == ["full", "ok"]
    assert [json.loads(r.payload).get("seq") for r in box.peek(10) if r.topic.startswith("t/")] == [3, 4, 5, 6]
    assert [r.topic for r in box.peek(10) if not r.topic.startswith("t/")] == ["r/1"]  # written with that add
    assert "writable again" in caplog.records[-1].getMessage()
    box.close()
    again = Outbox(small_disk.path / "agent.db")  # the count reached the disk: exact across a restart
    assert again.dropped == again.not_stored == 200 and again.last_seq == 6
    again.close()


def test_an_outbox_opens_on_a_disk_already_full_and_a_new_one_is_refused_in_one_line(small_disk) -> None:
    # A gateway rebooted with its card full: its outbox (and presence, commands) must work all the same.
    box = Outbox(small_disk.path / "agent.db")
    box.add(sequenced=[_msg(1)])
    box.close()
    small_disk.fill()
    box = Outbox(small_disk.path / "agent.db")  # SQLite could not even create its -shm file here
    assert box.health.status == "full" and box.add(sequenced=[_msg(2)]) == [] and box.dropped == 1
    assert [json.loads(r.payload)["seq"] for r in box.peek(10)] == [1]
    small_disk.free()
    assert box.add(sequenced=[_msg(3)]) == [2] and box.health.status == "ok"
    box.close()
    small_disk.fill()
    with pytest.raises(ConfigError, match=f"data_dir {small_disk.path}: cannot open the outbox new.db"):
        Outbox(small_disk.path / "new.db")

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
    assert box.figures() == {"pending": 5, "unacked": 3, "dropped": 0, "not_stored": 0, "last_seq": 5,
                             "instance": box.instance, "oldest": 1, "oldest_age": 0}
    assert box.oldest_sent() == 1000.0
    assert box.acknowledge(box.instance + 1, 5) == 0  # another outbox's (an old SD card's): nothing
    assert box.acknowledge(box.instance, 2) == 2
    assert _seqs(box) == [3, 4, 5]
    assert box.acknowledge(box.instance, 4) == 2  # an unsent row central already has goes too
    now[0] += 30
    assert box.figures()["oldest"] == 5 and box.figures()["oldest_age"] == 30
    assert box.acknowledge(box.instance, 5) == 1
    assert box.figures() == {"pending": 0, "unacked": 0, "dropped": 0, "not_stored": 0, "last_seq": 5, "instance": box.instance,
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
