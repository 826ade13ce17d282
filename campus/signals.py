"""Running a program until it is told to stop (SIGINT, SIGTERM): the kernel's, for every program."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import Any


def run_until_signal(main: Callable[[asyncio.Event], Any]) -> None:
    """Run an async main(stop) until SIGINT/SIGTERM sets `stop`."""
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)
    asyncio.run(runner())


def wait_for_signal(stop: threading.Event, tick: Callable[[], None] | None = None) -> None:
    """Block the main thread until SIGINT/SIGTERM or `stop` (threaded programs). `tick`, if given, runs
    every half second meanwhile: a program's periodic check (central/schema_watch.py), whose exception
    ends the wait as a signal would, so the caller stops the same way and then reports it."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        if tick is not None:
            tick()
