"""Sending commands to gateways: record first, publish second, wait for the result.

The web app creates a command with an id and a deadline, writes it to the
ledger as `pending` (the audit record exists before anything is sent),
publishes it QoS 1 on the device's command topic, and waits a few seconds
for ingest to record the agent's result. The ledger is the one record of a
result; the service also subscribes to results itself (QoS 0), only to know
when to look: from the moment one passes by, it reads the ledger every 5 ms
instead of every 50 ms. A command whose gateway is offline
stays `pending` at the broker (the agent's persistent session) until the
agent returns; past its deadline the agent answers `expired`.

A broker's PUBACK is not delivery: a broker restarted without its saved
state loses the commands queued for an offline agent. So while a command is
pending and before its deadline, the service publishes it again when its
gateway comes back on a new connection (its state's `since` changed since
the last publish) and every COMMAND_RETRY_S while the gateway is online and
has not answered; the agent's journal answers a repeat with the first
result instead of running it again (edge_agent/commands.py). The ledger
records each publish, so several web processes share the work.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from typing import Any

from campus import contract
from campus.contract import Command, CommandResult
from campus.errors import CampusError, PayloadError
from campus.mqtt import close_wakeup_sockets, explain_connect_error, no_delay, paho_client
from campus.urls import MqttUrl
from central.ledger import Ledger

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 60.0
LEDGER_POLL_S = 0.05     # how often a waiting send() reads the ledger
RECORDING_POLL_S = 0.005  # ... once its result has passed by on its way to ingest
MAX_TTL_S = 24 * 3600.0
COMMAND_RETRY_S = 30.0   # an online gateway that has not answered a pending command gets it again this often
REPUBLISH_CHECK_S = 1.0  # how often the ledger is read for commands to publish again


class CommandService:
    def __init__(self, mqtt: MqttUrl, ledger: Ledger, *, client_id: str | None = None) -> None:
        self.mqtt = mqtt
        self.ledger = ledger
        self.client = paho_client(mqtt, client_id or f"campus-web-{uuid.uuid4().hex[:8]}")
        self.client.reconnect_delay_set(0.2, 5)
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda c, u, f, rc, p: self.connected.clear()
        self.client.on_message = self._on_message
        self._lock = threading.Lock()
        self._started = False
        self._waiting: dict[str, threading.Event] = {}  # command id -> set when its result passes by
        self._stop = threading.Event()
        self._republisher: threading.Thread | None = None
        self.republished = 0

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            no_delay(client.socket())
            client.subscribe(contract.cmd_results_filter(), qos=0)
            self.connected.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            result = CommandResult.decode(message.payload)
        except PayloadError:
            return  # ingest logs and counts garbage; here it only means nothing to wake
        woke = self._waiting.get(result.id)
        if woke is not None:
            woke.set()

    def start(self) -> None:
        try:
            self.client.connect(self.mqtt.host, self.mqtt.port, keepalive=30)
        except ssl.SSLError as exc:  # reached it, but its certificate is wrong: say which way
            raise CampusError(f"MQTT broker {self.mqtt}: {explain_connect_error(exc)}") from None
        except OSError as exc:
            raise CampusError(f"cannot reach MQTT broker {self.mqtt}: {exc.strerror or exc}") from None
        self.client.loop_start()
        self._started = True
        self._republisher = threading.Thread(target=self._republish_loop, name="commands-again", daemon=True)
        self._republisher.start()

    def stop(self) -> None:
        """Disconnect, end the network thread (joined) and close every socket the client opened."""
        self._stop.set()
        if self._republisher is not None:
            self._republisher.join(10)
        if self._started:
            self._started = False
            self.client.disconnect()
            self.client.loop_stop()
            close_wakeup_sockets(self.client)  # paho keeps them open until garbage collection

    def _republish_loop(self) -> None:
        while not self._stop.wait(REPUBLISH_CHECK_S):
            if not self.connected.is_set():
                continue
            try:
                self.publish_again()
            except CampusError as exc:  # the ledger is busy or gone for a moment: next round
                log.warning("commands: %s", exc)

    def publish_again(self) -> int:
        """Publish the pending commands the ledger says may have been lost (see the module's docstring)."""
        commands = self.ledger.commands_to_publish_again(COMMAND_RETRY_S)
        for c in commands:
            # Its first `ts`: an agent whose journal began later (a replaced outbox) must not run it again.
            cmd = Command(id=c["id"], action=c["action"], params=c["params"], deadline=c["deadline"], by=c["by"],
                          ts=c["created"])
            log.info("command %s to %s/%s: publishing it again (not answered yet)", cmd.id, c["gateway"], c["device"])
            with self._lock:
                self.client.publish(contract.cmd_topic(c["school"], c["gateway"], c["device"]), cmd.encode(), qos=1)
        self.republished += len(commands)
        return len(commands)

    def send(self, school: str, gateway: str, device: str, action: str, params: dict[str, Any], by: str,
             ttl: float = DEFAULT_TTL_S, wait: float = 5.0) -> dict[str, Any]:
        """Create, publish and (for up to `wait` seconds) follow one command."""
        now = time.time()
        cmd = Command(id=uuid.uuid4().hex, action=action, params=params, deadline=now + ttl, by=by, ts=now)
        payload = cmd.encode()  # before the ledger row: a command that cannot be sent is never recorded as sent
        self.ledger.add_command(cmd.id, gateway, device, action, params, by, cmd.deadline)
        passed_by = self._waiting[cmd.id] = threading.Event()
        try:
            with self._lock:
                info = self.client.publish(contract.cmd_topic(school, gateway, device), payload, qos=1)
            try:
                # PUBACK from the broker: from here the broker owns delivery.
                info.wait_for_publish(timeout=min(wait, 5.0))
            except (RuntimeError, ValueError) as exc:
                log.warning("command %s not yet accepted by the broker: %s", cmd.id, exc)
            if not info.is_published():
                log.warning("command %s: broker %s has not acknowledged it yet", cmd.id, self.mqtt)
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                record = self.ledger.command(cmd.id)
                if record and record["status"] != "pending":
                    return record
                if passed_by.is_set():
                    time.sleep(min(RECORDING_POLL_S, left))
                else:
                    passed_by.wait(min(LEDGER_POLL_S, left))
        finally:
            del self._waiting[cmd.id]
        return self.ledger.command(cmd.id) or {"id": cmd.id, "status": "pending"}
