"""Fixtures that start real servers on ephemeral loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.servers import InfluxDB, Mosquitto, ServerProcess, SmallFilesystem, VictoriaMetrics

# Property tests draw the same examples on every run, so that a red CI means a
# change broke something, not that this run happened on a new input (stop 10's
# CI failed on an input no earlier run had drawn). New inputs are a campaign's
# job: FUZZ_EXAMPLES=10 scripts/test tests/test_fuzz*.py draws fresh random
# examples, ten times as many; what it finds becomes a regression test.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("campaign", derandomize=False)
settings.load_profile("campaign" if os.environ.get("FUZZ_EXAMPLES") else "repeatable")


def _running(server: ServerProcess) -> Iterator[Any]:
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    yield from _running(Mosquitto(tmp_path / "mosquitto"))


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    yield from _running(VictoriaMetrics(tmp_path))


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxDB]:
    yield from _running(InfluxDB(tmp_path))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallFilesystem]:
    """An 8 MB filesystem of its own at tmp_path/disk (root only: skipped elsewhere), unmounted afterwards."""
    why = SmallFilesystem.available()
    if why:
        pytest.skip(why)
    disk = SmallFilesystem(tmp_path / "disk")
    try:
        disk.mount()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        yield disk
    finally:
        disk.umount()
