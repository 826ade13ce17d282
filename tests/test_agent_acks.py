"""Central as the agent sees it (edge_agent/acks.py): when to publish, and when to send everything again."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from campus.contract import Ack, IngestState
from edge_agent.acks import Central
from edge_agent.outbox import Outbox


class Calls:
    def __init__(self) -> None:
        self.woke = 0
        self.came_back = 0


@pytest.fixture
def setup(tmp_path: Path):
    box = Outbox(tmp_path / "a.db")
    calls = Calls()

    def wake() -> None:
        calls.woke += 1

    def back() -> None:
        calls.came_back += 1

    central = Central(box, 0.2, wake_drain=wake, came_back=back)
    yield box, central, calls
    box.close()


def send(box: Outbox, n: int) -> None:
    box.add(sequenced=[("t", lambda seq: json.dumps({"seq": seq}).encode()) for _ in range(n)])
    box.published(r.id for r in box.peek(n))


def presence(online: bool, instance: int = 1) -> bytes:
    return IngestState(online, instance, 1.0).encode()


def test_central_online_while_any_worker_is_and_everything_goes_again_when_it_returns(setup) -> None:
    box, central, calls = setup
    send(box, 3)
    central.connected()  # a new connection: sent again at once, but central is offline until it says otherwise
    assert box.figures()["unacked"] == 0 and not central.online.is_set()
    box.published(r.id for r in box.peek(10))  # (as if drained meanwhile)
    central.presence("ingest-0", presence(True))
    assert central.online.is_set() and calls.came_back == 1
    assert box.figures()["unacked"] == 0  # central came back: everything not acknowledged goes again
    box.published(r.id for r in box.peek(10))
    central.presence("ingest-1", presence(True, 2))  # another worker joins: nothing to send again
    assert box.figures()["unacked"] == 3 and calls.came_back == 1
    central.presence("ingest-0", presence(False))  # its Will; ingest-1 is still online
    assert central.online.is_set()
    central.presence("ingest-0", presence(True, 7))  # back with a new instance: its session is gone
    assert box.figures()["unacked"] == 0 and calls.came_back == 2
    box.published(r.id for r in box.peek(10))
    central.presence("ingest-0", presence(False, 7))
    central.presence("ingest-1", b"")  # its retained presence cleared: that worker is gone
    assert not central.online.is_set()
    central.presence("ingest-1", b"not json")  # garbage changes nothing
    assert not central.online.is_set() and box.figures()["unacked"] == 3


def test_an_ack_deletes_what_it_covers_and_only_for_this_outbox(setup) -> None:
    box, central, _ = setup
    send(box, 5)
    central.acknowledged(Ack(box.instance + 1, 5, 1.0).encode())
    assert len(box) == 5 and central.acked_seq == 0
    central.acknowledged(Ack(box.instance, 3, 1.0).encode())
    assert len(box) == 2 and central.acked_seq == 3


def test_a_stalled_watermark_sends_everything_again_but_only_while_central_is_online(setup) -> None:
    box, central, _ = setup

    async def main() -> None:
        watcher = asyncio.create_task(central.watch())
        try:
            send(box, 4)
            await asyncio.sleep(0.6)  # three timeouts pass (the time is the test's input): central is offline
            assert box.figures()["unacked"] == 4
            central.presence("ingest-0", presence(True))
            box.published(r.id for r in box.peek(10))
            for _ in range(100):
                await asyncio.sleep(0.05)
                if box.figures()["unacked"] == 0:
                    break
            assert box.figures()["unacked"] == 0 and central.resends >= 8
        finally:
            watcher.cancel()

    asyncio.run(main())
