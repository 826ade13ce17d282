"""How ingest's writer cuts what the subscriber hands it into batches (no broker needed)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from campus.urls import MqttUrl
from central.ingest import Ingest
from central.ledger import Ledger
from central.store.sqlite import SqlitePointStore
from central.subscriber import Delivery
from tests.servers import wait_until


def chunk(start: int, n: int) -> list[Delivery]:
    return [Delivery(1, i, 1, "campus/v1/s/g/telemetry/d", b"{}") for i in range(start, start + n)]


def ingest(tmp_path: Path, **kwargs: Any) -> Ingest:
    db = tmp_path / "c.db"
    return Ingest(MqttUrl("127.0.0.1", 1883), SqlitePointStore(db), Ledger(db), batch_size=500, **kwargs)


def test_chunks_are_joined_and_cut_at_batch_size_in_order(tmp_path: Path) -> None:
    ing = ingest(tmp_path, linger_s=0.0)
    for start in (1, 201, 401):
        ing.inbox.put(chunk(start, 200))
    first, second = ing._take(timeout=1), ing._take(timeout=1)
    assert [d.packet_id for d in first] == list(range(1, 501))
    assert [d.packet_id for d in second] == list(range(501, 601))  # the rest of the cut chunk
    assert ing._take(timeout=0.01) == []


def test_a_batch_that_is_not_full_waits_for_more_within_the_linger(tmp_path: Path) -> None:
    ing = ingest(tmp_path, linger_s=30.0)  # long, so only a full batch can end the wait early
    ing.inbox.put(chunk(1, 10))

    def after_the_writer_took_the_first() -> None:
        wait_until(ing.inbox.empty, 10, message="the writer took the first chunk")
        ing.inbox.put(chunk(11, 490))
    later = threading.Thread(target=after_the_writer_took_the_first)
    later.start()
    batch = ing._take(timeout=1)
    later.join()
    assert [d.packet_id for d in batch] == list(range(1, 501))


def test_a_batch_with_a_command_result_does_not_wait(tmp_path: Path) -> None:
    ing = ingest(tmp_path, linger_s=600.0)  # a linger no test would sit out
    result = Delivery(1, 99, 1, "campus/v1/s/g/cmd/proj/result", b"{}")
    ing.inbox.put(chunk(1, 3) + [result])
    assert [d.packet_id for d in ing._take(timeout=1)] == [1, 2, 3, 99]
    # A result arriving while a batch lingers ends the wait too.
    ing.inbox.put(chunk(1, 3))
    later = threading.Thread(target=lambda: (wait_until(ing.inbox.empty, 10), ing.inbox.put([result])))
    later.start()
    assert [d.packet_id for d in ing._take(timeout=1)] == [1, 2, 3, 99]
    later.join()


def test_a_shared_worker_keeps_its_session_a_minute_a_lone_one_a_day(tmp_path: Path) -> None:
    """While an away worker's session lives, Mosquitto queues the group's messages for it: a shared worker
    must not hold half the district's stream for a day (central/ingest.py SHARED_SESSION_EXPIRY_S)."""
    from central.ingest import SESSION_EXPIRY_S, SHARED_SESSION_EXPIRY_S

    assert SHARED_SESSION_EXPIRY_S <= 120 < SESSION_EXPIRY_S
    assert ingest(tmp_path).subscriber.session_expiry == SESSION_EXPIRY_S
    assert ingest(tmp_path, share_group="district").subscriber.session_expiry == SHARED_SESSION_EXPIRY_S
    assert ingest(tmp_path, share_group="district", session_expiry=600).subscriber.session_expiry == 600
