"""Waiting with a deadline in an event loop without losing a stop.

Not `asyncio.wait_for`: on Python 3.11 (our floor) it returns the awaited
result when that result and a cancellation arrive in the same turn of the
loop, and the cancellation is lost (CPython gh-86296; 3.12 rebuilt wait_for on
`asyncio.timeout`). A loop around such a wait never stops, and the TaskGroup
that cancelled it waits for it forever: `campus demo` hung on Ctrl-C that way
(tests/test_agent_stop.py). `asyncio.timeout` has no such race; use it for a
deadline on one await, and these helpers for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set, at most `timeout` seconds; True if it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
    return event.is_set()


def raise_if_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop and a wait it called swallowed that.

    For loops around third-party calls that still use wait_for (aiomqtt waits
    for a PUBACK that way, so a publish acknowledged in the same turn as the
    agent's stop returns as if nothing happened)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
