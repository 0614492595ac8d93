"""The enclave's socket server, in front of the batcher: it takes the host's connections as they come."""

from __future__ import annotations

import socket
import socketserver
from pathlib import Path

from enclave_infer.config import Limits
from enclave_infer.enclave import server


def test_connections_opened_at_once_all_get_in(tmp_path: Path) -> None:
    """The host opens one connection per request; many at once must wait in the backlog, not be
    reset (socketserver's default backlog of 5 reset the rest)."""
    path = tmp_path / "enclave.sock"
    listener = server._UnixServer(str(path), socketserver.StreamRequestHandler)  # never accepts
    clients: list[socket.socket] = []
    try:
        for _ in range(4 * Limits().max_concurrent_requests):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(client)
            client.settimeout(5)  # a full backlog makes a blocking connect wait: this would time out
            client.connect(str(path))
            client.sendall(b"\x00")
    finally:
        for client in clients:
            client.close()
        listener.server_close()
