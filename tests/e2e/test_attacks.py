"""An attacker with the public port, against a real ``enclave-infer serve`` on loopback: what one
connection, or a few hundred, can hold of the host (issue 15). Each attack is bounded in bytes,
connections and time."""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import time
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


def closed_within(socks: list[socket.socket], seconds: float) -> int:
    """How many of ``socks`` the host closed within ``seconds`` (all of them read to their end)."""
    open_ = set(socks)
    deadline = time.monotonic() + seconds
    while open_ and time.monotonic() < deadline:
        readable, _, _ = select.select(list(open_), [], [], 0.5)
        for sock in readable:
            try:
                if not sock.recv(65536):
                    open_.discard(sock)
            except ConnectionResetError:
                open_.discard(sock)
    return len(socks) - len(open_)


def test_idle_and_half_sent_connections_are_closed(host: Deployment) -> None:
    """They were held for ever: about 1,000 of them took every descriptor the service had."""
    where = address(host)
    idle = [socket.create_connection(where) for _ in range(100)]
    half = [socket.create_connection(where) for _ in range(100)]
    try:
        for sock in half:
            sock.sendall(b"POST /v1/ohttp HTTP/1.1\r\nhost: enclave\r\n")
        assert closed_within(idle + half, 20) == 200  # HEAD_SECONDS, 10 s
    finally:
        for sock in idle + half:
            sock.close()
    assert httpx.get(host.url + "/v2/health/live").status_code == 200


def test_running_out_of_descriptors_is_refused_aloud_and_logged_once(host: Deployment) -> None:
    """Past the open-file limit the service answered nothing, and said nothing in its log."""
    resource.prlimit(host.process.pid, resource.RLIMIT_NOFILE, (300, 300))  # 172 connections at most
    where = address(host)
    held = [socket.create_connection(where) for _ in range(400)]
    try:
        for sock in held:
            with contextlib.suppress(OSError):
                sock.sendall(b"G")  # a head begun
        probe = httpx.get(host.url + "/v2/health/live", timeout=10)
        assert probe.status_code == 503 and probe.headers["retry-after"] == "1"
        assert closed_within(held, 20) == 400  # refused at once, or closed after HEAD_SECONDS
    finally:
        for sock in held:
            sock.close()
    assert httpx.get(host.url + "/v2/health/live").status_code == 200
    assert host.log_text().count("connections open") == 1
