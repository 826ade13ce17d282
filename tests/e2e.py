"""Building blocks for end-to-end tests: gateway configs, reading back the store."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import ModbusTcpClient

from campus import contract
from campus.net import free_port
from central.ledger import Ledger
from central.store.sqlite import SqlitePointStore
from device_profiles import load_profile
from protocols import modbus
from tests.servers import CampusProcess, wait_until
from tests.stores import sql


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
    return {m.name: modbus.decode(m, regs[m.register:m.register + m.register_count])
            for m in profile.metrics.values()}


class StoreView:
    """Read-only view of what central stored (points and ledger) in a SQLite file."""

    def __init__(self, db_path: Path) -> None:
        self.points = SqlitePointStore(db_path)
        self.ledger = Ledger(str(db_path))

    def latest(self, gateway: str, device: str) -> dict[str, float | str]:
        return self.ledger.latest().get((gateway, device), {})

    def gateway(self, gateway: str) -> dict[str, Any] | None:
        return next((g for g in self.ledger.gateways() if g["id"] == gateway), None)

    def seqs(self, gateway: str) -> list[int]:
        return [r[0] for r in sql(self.ledger, "SELECT seq FROM seen WHERE gateway=? ORDER BY seq", (gateway,))]

    def close(self) -> None:
        self.points.close()
        self.ledger.close()


@contextmanager
def ingest_with_publisher(tmp_path: Path, mqtt_port: int, mqtt_url: str, client_id: str, topic: str,
                          first: bytes) -> Iterator[tuple[CampusProcess, paho.Client, StoreView]]:
    """`campus ingest` into a new SQLite file and a paho publisher, once `first` (a telemetry message
    on `topic`) is stored: MQTT keeps nothing published before ingest subscribed, so it is sent until it lands."""
    db = tmp_path / "central.db"
    ingest = CampusProcess(["ingest", "--mqtt", mqtt_url, "--store", f"sqlite:///{db}"],
                           tmp_path / "ingest.log").start()
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    pub.connect("127.0.0.1", mqtt_port)
    pub.loop_start()
    view = None
    try:
        wait_until(db.exists, 20, message="ingest created its database")
        view = StoreView(db)
        gateway = contract.parse_topic(topic).gateway
        wait_until(lambda: pub.publish(topic, first, qos=1) and view.gateway(gateway), 20, interval=0.5,
                   message="ingest subscribed")
        yield ingest, pub, view
    finally:
        if view is not None:
            view.close()
        pub.loop_stop()
        pub.disconnect()
        ingest.stop()


class Classroom:
    """A simulated classroom (`campus sim`), its agent and a central ingest, as real processes."""

    def __init__(self, tmp: Path, mqtt: str, *, gateway: str = "gw1", poll_interval: float = 0.2,
                 outbox: dict[str, Any] | None = None, devices: list[dict[str, Any]] | None = None,
                 store: str | None = None, workers: int = 1, data_dir: Path | None = None,
                 db_url: str | None = None) -> None:
        self.tmp = tmp
        self.mqtt = mqtt
        self.gateway = gateway
        self.port = free_port()
        self.data_dir = data_dir or tmp / f"{gateway}-data"
        self.config = write_gateway_config(tmp / f"{gateway}.yaml", mqtt, gateway=gateway, poll_interval=poll_interval,
                                           devices=devices or [env_device(self.port, seed=7)],
                                           data_dir=str(self.data_dir), **({"outbox": outbox} if outbox else {}))
        self.db = tmp / "central.db"  # the ledger (and the points, with the default SQLite store)
        self.store = store or f"sqlite:///{self.db}"
        # The central database ingest records in (`--db`): that file unless a URL is given (either engine).
        self.db_url = db_url or f"sqlite:///{self.db}"
        self.workers = workers
        self.sim = CampusProcess(["sim", "--config", str(self.config)], tmp / f"{gateway}-sim.log")
        self.agent = self._agent()
        self.ingests = [self._ingest(i) for i in range(workers)]
        self._view: StoreView | None = None

    @property
    def ingest(self) -> CampusProcess:
        return self.ingests[0]

    @ingest.setter
    def ingest(self, proc: CampusProcess) -> None:
        self.ingests[0] = proc

    def _agent(self) -> CampusProcess:
        return CampusProcess(["agent", "--config", str(self.config)], self.tmp / f"{self.gateway}-agent.log")

    def _ingest(self, index: int = 0) -> CampusProcess:
        # Acknowledgements within a second (the product batches them for minutes): a test waits for the
        # agent's outbox to empty.
        args = ["ingest", "--mqtt", self.mqtt, "--store", self.store, "--db", self.db_url,
                "--name", f"ingest-{index}", "--ack-max-delay", "1"]
        if self.workers > 1:
            args += ["--share", "ingest"]
        return CampusProcess(args, self.tmp / f"ingest-{index}.log")

    def restart_agent(self) -> None:
        self.agent.stop()
        self.agent = self._agent().start()

    def restart_ingest(self, index: int = 0) -> None:
        self.ingests[index].stop()
        self.ingests[index] = self._ingest(index).start()

    def start(self, *, sim: bool = True, agent: bool = True, ingest: bool = True) -> Classroom:
        if sim:
            self.sim.start()
            self.sim.wait_listening(self.port)
        if ingest:
            for proc in self.ingests:
                proc.start()
            # Messages published before anyone subscribed are not kept by MQTT:
            # start the agent only once every worker's subscription is in place.
            for proc in self.ingests:
                wait_until(lambda proc=proc: "subscribed: ready" in proc.output() or not proc.alive(), 30,
                           message="ingest subscribed")
                assert proc.alive(), f"campus ingest exited at start:\n{proc.output()[-3000:]}"
        if agent:
            self.agent.start()
        return self

    @property
    def view(self) -> StoreView:
        if self._view is None:
            wait_until(self.db.exists, 20, message="the central store file")
            self._view = StoreView(self.db)
        return self._view

    def agent_outbox(self) -> dict[str, int]:
        """The agent's own account: seq numbers allocated, messages waiting (of which `unacked` the broker
        accepted and central has not acknowledged yet), dropped."""
        path = self.data_dir / "agent.db"
        # Never create it: an empty file where the agent is about to open its outbox is, to the agent, a
        # damaged outbox (a test that looked too early once made the agent replace its new outbox).
        db = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=10, isolation_level=None)
        try:
            db.execute("BEGIN")  # one snapshot for both reads
            meta = dict(db.execute("SELECT key, value FROM meta"))
            pending, unacked = db.execute("SELECT COUNT(*), COALESCE(SUM(sent > 0), 0) FROM outbox").fetchone()
            db.execute("COMMIT")
        finally:
            db.close()
        return {"last_seq": meta["next_seq"] - 1, "dropped": meta["dropped"], "pending": pending, "unacked": unacked}

    def stored_count(self) -> int:
        gw = self.view.gateway(self.gateway)
        return gw["received"] if gw else 0

    def wait_stored_at_least(self, n: int, timeout: float = 30) -> None:
        wait_until(lambda: self.stored_count() >= n, timeout, message=f"{n} messages stored")

    def restart_with_a_new_outbox(self, old: dict[str, int]) -> dict[str, int]:
        """Start the agent again (its outbox just lost or damaged), let the new outbox reach seq 30, and wait
        until it drained and central stored everything: `old` (the first outbox's figures) plus the new
        numbers. Returns the new outbox's figures; central must count them afresh, not as redeliveries."""
        self.sim.start()
        self.agent = self._agent().start()
        wait_until(lambda: self.agent_outbox()["last_seq"] >= 30, 30, message="the new outbox to sequence 30")
        self.sim.stop()
        wait_until(lambda: self.agent_outbox()["pending"] == 0
                   and self.stored_count() == old["last_seq"] + self.agent_outbox()["last_seq"], 60, interval=0.2,
                   message="the new outbox drained and everything stored")
        new = self.agent_outbox()
        gw = self.view.gateway(self.gateway)
        assert (gw["received"], gw["gaps"], gw["duplicates"]) == (old["last_seq"] + new["last_seq"], 0, 0)
        assert self.view.seqs(self.gateway) == list(range(1, new["last_seq"] + 1))
        return new

    def quiesce_and_account(self, timeout: float = 60) -> dict[str, int]:
        """Stop producing (simulator off), let the outbox drain, and return the agent's figures."""
        self.sim.stop()
        wait_until(lambda: self.agent_outbox()["pending"] == 0 and
                   self.stored_count() == self.agent_outbox()["last_seq"] - self.agent_outbox()["dropped"],
                   timeout, interval=0.2, message="outbox drained and everything stored")
        return self.agent_outbox()

    def stop(self) -> None:
        for proc in (self.agent, *self.ingests, self.sim):
            proc.stop()
        if self._view is not None:
            self._view.close()


class SimulatorsInThread:
    """A gateway config's simulators in this test process (own event loop, own thread),
    so a test can look inside them (the projector's command log, a display's state)."""

    def __init__(self, config_path: Path) -> None:
        from device_profiles.config import load_gateway_config
        from firmware_stubs.runner import SimulatorSet

        self.sims = SimulatorSet(load_gateway_config(config_path))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sims", daemon=True)

    def __enter__(self) -> SimulatorsInThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.sims.start(), self.loop).result(20)
        return self

    def __getitem__(self, device_id: str) -> Any:
        return self.sims.by_device[device_id]

    def call(self, fn: Any) -> Any:
        """Run `fn()` on the simulators' loop (their state is not thread-safe)."""
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def power_commands(self, device: str = "proj") -> list[str]:
        """`power_commands` of the projector simulator `device`, read on the simulators' loop."""
        return self.call(lambda: power_commands(self.sims, device))  # type: ignore[no-any-return]

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.sims.stop(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# ---------------------------------------------------------------- an agent in-process with its room's simulators


async def until(predicate: Callable[[], object], timeout: float = 20, what: str = "condition") -> None:
    """Wait in an event loop for `predicate()` with a deadline: the async twin of `wait_until`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def run_room(config: Any, body: Callable[[Any, Any], Awaitable[None]], ready: str, what: str) -> None:
    """An Agent on `config` with its devices' simulators (no broker needed), once device `ready` reads ok:
    `body(agent, sims)`, then both stopped."""
    from edge_agent.agent import Agent
    from firmware_stubs.runner import SimulatorSet

    async def main() -> None:
        sims = SimulatorSet(config)
        await sims.start()
        agent = Agent(config)
        task = asyncio.create_task(agent.run())
        try:
            await until(lambda: agent.polling.status.get(ready) == "ok", what=what)
            await body(agent, sims)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sims.stop()

    asyncio.run(main())


def outbox_events(agent: Any, device: str) -> list[dict[str, Any]]:
    """The events of `device` (a contract device such as the podium's) in the agent's outbox, oldest first."""
    return [contract.Event.decode(r.payload).data for r in agent.outbox.peek(10_000)
            if r.topic.endswith(f"/event/{device}")]


def power_commands(sims: Any, device: str = "proj") -> list[str]:
    """The PJLink power commands (not queries) the projector simulator `device` received."""
    return [c for c in sims.by_device[device].commands if c.startswith("%1POWR ") and not c.endswith("?")]
