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
        """Stop accepting, end the serving thread and close the listening socket; then close the app."""
        self.server.shutdown()
        self.thread.join(timeout=5)
        self.server.server_close()


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
    port = sock.getsockname()[1]
    try:
        server = make_server(host, port, app, threaded=True, fd=sock.fileno())
    finally:
        sock.close()  # Werkzeug listens on its own duplicate of the descriptor
    # Closing the server does not wait for request threads: a panel's event stream lasts until the app
    # closes (close_app ends every stream), any other request ends by itself, each giving its database
    # connections back (dashboards.release_connections, or the thread's end).
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    thread.start()
    return RunningServer(server, thread, host, port)
