"""An attacker with the public port, against a real ``enclave-infer serve`` on loopback: what one
connection, or a few hundred, can hold of the host (issue 15). Each attack is bounded in bytes,
connections and time."""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from enclave_infer import Client, ClientConfig, RemoteError
from enclave_infer.client._owner import load_owner_key

from .conftest import COLOUR_LABELS, Deployment, png, start_server, stop_server

KiB = 1024
MiB = 1024 * KiB
RED = png((230, 20, 20))


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


def provision(d: Deployment, files: dict[str, Path]) -> None:
    with Client(d.url, d.constraint) as c:
        c.provision(files["model"].read_bytes(), COLOUR_LABELS, load_owner_key(d.owner_key))


def trickle(socks: list[socket.socket], seconds: float, every: float = 1.0) -> threading.Thread:
    """Send each of ``socks`` one byte every ``every`` seconds, for ``seconds``, in a thread."""

    def run() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(b"a")
            time.sleep(every)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_trickled_bodies_do_not_hold_the_hosts_places(host: Deployment, files: dict[str, Path]) -> None:
    """64 bodies sent a byte every 10 s made every route answer 503 for as long as they went on."""
    provision(host, files)
    head = (
        b"POST /v1/ohttp HTTP/1.1\r\nhost: enclave\r\n"
        b"content-type: message/ohttp-req\r\ncontent-length: 9000\r\n\r\n"
    )
    slow = [socket.create_connection(address(host)) for _ in range(16)]  # four times --max-in-flight
    try:
        for sock in slow:
            sock.sendall(head)
        sender = trickle(slow, 4)
        time.sleep(1)
        served = 0
        with Client(host.url, host.constraint, config=ClientConfig(retries=0)) as c:
            while sender.is_alive():
                assert c.classify(RED).results[0].label == "red"
                served += 1
        assert served >= 3
    finally:
        for sock in slow:
            sock.close()


def test_a_stream_that_trickles_is_dropped(host: Deployment, files: dict[str, Path]) -> None:
    """A chunked request that sends a few bytes every two seconds kept its place for ever, and as
    many of them as the host has places stopped every classification."""
    provision(host, files)
    outcomes: list[int] = []

    def body() -> Iterator[bytes]:
        for _ in range(15):  # 30 s: never idle, and longer than two graces one after the other
            yield b"x" * 4
            time.sleep(2)

    def send() -> None:
        with Client(host.url, host.constraint, config=ClientConfig(retries=0)) as c:
            try:
                outcomes.append(c._request("POST", "/v1/classify?top=1", stream=body).status)
            except RemoteError as exc:
                outcomes.append(exc.status)

    streams = [threading.Thread(target=send) for _ in range(4)]  # as many as the host's places
    for t in streams:
        t.start()
    time.sleep(1)
    served = 0
    with Client(host.url, host.constraint, config=ClientConfig(retries=0)) as c:
        while any(t.is_alive() for t in streams):
            assert c.classify(RED).results[0].label == "red"  # streams hold no place of theirs
            served += 1
    for t in streams:
        t.join(45)  # two streams at once (STREAM_SLOTS), each dropped after BODY_GRACE_SECONDS
    assert outcomes == [408] * 4
    assert served >= 3
