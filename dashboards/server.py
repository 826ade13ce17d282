"""Serving the Flask app from a background thread (for `campus web` and the demo).

Werkzeug's threaded server is enough for a school's dashboards; behind a
district deployment put the app under any WSGI server instead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from campus.errors import CampusError


@dataclass
class RunningServer:
    server: BaseWSGIServer
    thread: threading.Thread
    host: str
    port: int

    def shutdown(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)


def serve(app: Flask, host: str, port: int) -> RunningServer:
    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as exc:
        raise CampusError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    thread.start()
    return RunningServer(server, thread, host, server.server_port)
