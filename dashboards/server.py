"""Serving the Flask app from a background thread (for `campus web` and the demo).

Werkzeug's threaded server is enough for a school's dashboards; behind a
district deployment put the app under any WSGI server instead.
"""

from __future__ import annotations

import socket
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
    # Bind the socket ourselves: Werkzeug prints to stderr and exits the whole
    # process when its own bind fails; we want one clear line instead.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CampusError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server = make_server(host, sock.getsockname()[1], app, threaded=True, fd=sock.fileno())
    thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    thread.start()
    return RunningServer(server, thread, host, sock.getsockname()[1])
