"""An attacker with the public port, against a real ``enclave-infer serve`` on loopback: what one
connection, or a few hundred, can hold of the host (issue 15). Each attack is bounded in bytes,
connections and time."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from .conftest import Deployment, start_server, stop_server

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
def host(tmp_path: Path, owner_key: Path) -> Iterator[Deployment]:
    d = start_server(tmp_path, owner_key, extra=("--max-in-flight", "4"))
    yield d
    stop_server(d)


def address(d: Deployment) -> tuple[str, int]:
    parts = urlsplit(d.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def read_answer(sock: socket.socket, timeout: float = 10) -> bytes:
    """What the host says before it closes the connection (at most 64 KiB, ``timeout`` seconds)."""
    sock.settimeout(timeout)
    answer = b""
    try:
        while len(answer) < 64 * KiB:
            piece = sock.recv(64 * KiB)
            if not piece:
                break
            answer += piece
    except (TimeoutError, ConnectionResetError):
        pass
    return answer


def send_huge_header(where: tuple[str, int], limit: int) -> tuple[int, bytes]:
    """A header field value that never ends, sent until the host answers or ``limit`` bytes went;
    the bytes sent and the host's answer."""
    sent = 0
    with socket.create_connection(where) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: enclave\r\nx-huge: ")
        piece = b"a" * (64 * KiB)
        try:
            while sent < limit and not select.select([sock], [], [], 0)[0]:
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return sent, read_answer(sock)


def test_an_oversized_header_block_is_refused_at_once_with_431(host: Deployment) -> None:
    """A 256 MB header was accepted: the host spent 66 s of CPU on it and health probes waited."""
    sent, answer = send_huge_header(address(host), 16 * MiB)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert b"urn:enclave-infer:problem:headers-too-large" in answer
    assert sent < 4 * MiB  # refused once past the limit, not after reading it all
    assert httpx.get(host.url + "/v2/health/live").status_code == 200
