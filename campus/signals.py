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


def wait_for_signal(stop: threading.Event) -> None:
    """Block the main thread until SIGINT/SIGTERM (threaded programs)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
