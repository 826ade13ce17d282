"""Building blocks for end-to-end tests: gateway configs, reading back the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pymodbus.client import ModbusTcpClient

from central.ledger import Ledger
from central.store.sqlite import SqlitePointStore
from device_profiles import load_profile, registers


def write_gateway_config(path: Path, mqtt: str, *, school: str = "s1", gateway: str = "gw1", room: str = "101",
                         poll_interval: float = 0.5, devices: list[dict[str, Any]] | None = None,
                         **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({"school": school, "gateway": gateway, "room": room, "mqtt": mqtt,
                                    "poll_interval": poll_interval, "data_dir": str(path.parent / f"{gateway}-data"),
                                    "devices": devices or [], **extra}, sort_keys=False))
    return path


def env_device(port: int, device_id: str = "env", unit: int = 1, **simulator: Any) -> dict[str, Any]:
    return {"id": device_id, "profile": "env-6in1-modbus", "address": {"host": "127.0.0.1", "port": port, "unit": unit},
            "simulator": simulator}


def read_simulator(port: int, unit: int = 1) -> dict[str, float]:
    """What the simulator serves, read over Modbus by a plain pymodbus client."""
    profile = load_profile("env-6in1-modbus")
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
    assert client.connect()
    try:
        result = client.read_holding_registers(0, count=7, device_id=unit)
        assert not result.isError(), result
        regs = result.registers
    finally:
        client.close()
    return {m.name: registers.decode(m, regs[m.register:m.register + m.register_count])
            for m in profile.metrics.values()}


class StoreView:
    """Read-only view of what central stored (points and ledger) in a SQLite file."""

    def __init__(self, db_path: Path) -> None:
        self.points = SqlitePointStore(db_path)
        self.ledger = Ledger(str(db_path))

    def latest(self, gateway: str, device: str) -> dict[str, float | str]:
        return self.points.latest().get((gateway, device), {})

    def gateway(self, gateway: str) -> dict[str, Any] | None:
        return next((g for g in self.ledger.gateways() if g["id"] == gateway), None)

    def seqs(self, gateway: str) -> list[int]:
        return [r[0] for r in self.ledger.db.execute("SELECT seq FROM seen WHERE gateway=? ORDER BY seq", (gateway,))]

    def close(self) -> None:
        self.points.close()
        self.ledger.close()
