"""What the outbox's damage check costs when an agent starts.

An agent opens its outbox once per start and checks the whole file
(`PRAGMA quick_check`, plus the write-ahead log's header) so that a file a
power cut damaged is set aside instead of crashing the agent (see
edge_agent/storage.py). The check reads every page, so it grows with what
the outbox holds: after a long outage, up to `max_messages` (200,000 by
default). This prints the open time with the check and SQLite's own bare
open (connect and read the counters) for several backlog sizes, on this
machine's disk (an SD card is slower: scale by its read speed).

    python bench/outbox_open.py [--rows 10000,50000,200000] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ENV_VALUES, machine_line, print_table  # noqa: E402
from campus import contract  # noqa: E402
from campus.contract import Telemetry  # noqa: E402
from edge_agent.outbox import Outbox  # noqa: E402


def fill(path: Path, rows: int) -> int:
    """An outbox holding `rows` telemetry samples (as an outage leaves it); its file size in bytes."""
    box = Outbox(path, max_messages=rows + 10)
    topic = contract.telemetry_topic("s1", "gw1", "env")
    for start in range(0, rows, 1000):
        box.add(sequenced=[(topic, lambda seq: Telemetry(seq, time.time(), ENV_VALUES).encode())
                           for _ in range(min(1000, rows - start))])
    box.close()
    return path.stat().st_size


def time_open(path: Path, repeat: int) -> tuple[float, float]:
    """(median ms of Outbox(path), median ms of a bare sqlite3 open reading the counters)."""
    checked, bare = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        box = Outbox(path, max_messages=10**9)
        checked.append((time.perf_counter() - started) * 1000)
        assert box.replaced is None
        box.close()
        started = time.perf_counter()
        db = sqlite3.connect(path)
        db.execute("SELECT key, value FROM meta").fetchall()
        bare.append((time.perf_counter() - started) * 1000)
        db.close()
    return statistics.median(checked), statistics.median(bare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="10000,50000,200000", help="backlog sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    args = parser.parse_args()
    sizes = [2000] if args.quick else [int(x) for x in args.rows.split(",")]
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="outbox-open-") as tmp:
        for rows in sizes:
            path = Path(tmp) / f"agent-{rows}.db"
            size = fill(path, rows)
            checked, bare = time_open(path, 1 if args.quick else args.repeat)
            rows_out.append((rows, size / 2**20, checked, bare))
    print(machine_line())
    print_table("Outbox open at agent start", ["unsent messages", "file MiB", "open with damage check ms",
                                                "bare SQLite open ms"], rows_out)
    print(machine_line())


if __name__ == "__main__":
    main()
