"""The host's HTTP server (``host/server.py``) as uvicorn runs it, on loopback, with either parser:
the limits one connection meets before its request reaches the app."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from enclave_infer.host.server import ConnectionLimits, http_server
from enclave_infer.protocol.api import Problem

KiB = 1024
PARSERS = ["httptools", "h11"]


async def echo_length(scope: dict[str, object], receive: object, send: object) -> None:
    """A plain ASGI app: answers 200 with the length of the body it read."""
    if scope["type"] != "http":
        return
    total, more = 0, True
    while more:
        message = await receive()  # type: ignore[operator]
        total += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(total).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )  # type: ignore[operator]
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


class Running:
    def __init__(self, parser: str, limits: ConnectionLimits) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.address = self.sock.getsockname()
        self.server = http_server(echo_length, host="127.0.0.1", port=0, limits=limits, parser=parser)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])))
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.started

    def connect(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(parser: str) -> Iterator[Running]:
    running = Running(parser, ConnectionLimits(max_head_bytes=8 * KiB, head_seconds=0.5, linger_seconds=0.5))
    yield running
    running.stop()


def read_all(sock: socket.socket) -> bytes:
    answer = b""
    try:
        while piece := sock.recv(65536):
            answer += piece
    except (TimeoutError, ConnectionResetError):
        pass
    return answer


def one_answer(sock: socket.socket) -> bytes:
    """One whole answer on a kept-alive connection (its head, and content-length bytes of body)."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < int(
        answer.partition(b"content-length: ")[2].split(b"\r\n")[0] or b"0"
    ):
        piece = sock.recv(65536)
        assert piece, "closed before a whole answer"
        answer += piece
    return answer


def request(path: str = "/", headers: bytes = b"", body: bytes = b"", close: bool = False) -> bytes:
    connection = b"connection: close\r\n" if close else b""
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nhost: enclave\r\n" + headers + connection
        + b"content-length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip


def problem_of(answer: bytes) -> Problem | None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head
    return Problem.from_uri(json.loads(body)["type"])


def test_a_head_over_the_limit_is_431_whatever_the_parser(server: Running) -> None:
    with server.connect() as sock:
        sock.sendall(request(headers=b"x-big: " + b"a" * (9 * KiB) + b"\r\n"))
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 ") and problem_of(answer) is Problem.HEADERS_TOO_LARGE
    with server.connect() as sock:  # a long URL counts too
        sock.sendall(request(path="/" + "a" * (9 * KiB)))
        assert read_all(sock).startswith(b"HTTP/1.1 431 ")


def test_heads_under_the_limit_and_bodies_in_the_same_read_pass(server: Running) -> None:
    """Only the head is counted: not a body that arrives with it, nor earlier requests' heads."""
    body = b"b" * (200 * KiB)
    with server.connect() as sock:
        sock.sendall(request(headers=b"x-big: " + b"a" * (7 * KiB) + b"\r\n", body=body, close=True))
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"%d" % len(body))
    with server.connect() as sock:  # 40 requests of 1 KiB heads on one connection: 40 KiB in all
        for _ in range(40):
            sock.sendall(request(headers=b"x-some: " + b"a" * KiB + b"\r\n", body=b"12"))
            assert one_answer(sock).startswith(b"HTTP/1.1 200 ")


def test_a_connection_without_a_whole_head_in_time_is_closed(server: Running) -> None:
    with server.connect() as idle, server.connect() as half:
        half.sendall(b"POST / HTTP/1.1\r\nhost: enclave\r\nx-slow: ")
        assert read_all(idle) == b""  # closed, without a word: nothing was asked
        answer = read_all(half)
    assert answer.startswith(b"HTTP/1.1 408 ") and problem_of(answer) is Problem.REQUEST_TIMEOUT
    with server.connect() as sock:  # a whole head in time is answered, however slow its body
        sock.sendall(request(body=b"")[:-2])
        time.sleep(0.3)
        sock.sendall(b"\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_connections_beyond_the_open_file_limit_are_refused_with_retry_after(parser: str) -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    running = Running(parser, ConnectionLimits(fd_reserve=soft - 5))  # five connections at most
    held = [running.connect() for _ in range(5)]
    try:
        for sock in held:
            sock.sendall(b"P")  # each of them is in
        with running.connect() as sock:
            answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1\r\n" in answer
        assert problem_of(answer) is Problem.OVERLOADED
    finally:
        for sock in held:
            sock.close()
        running.stop()


CHILD = """
import asyncio, logging, resource, socket, sys
from enclave_infer.host.server import ConnectionLimits, http_server
logging.basicConfig(level=logging.WARNING)
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
async def app(scope, receive, send):
    pass
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(128)
print(sock.getsockname()[1], flush=True)
server = http_server(app, host="127.0.0.1", port=0, limits=ConnectionLimits(fd_reserve=0), parser="h11")
server.config.loop = "asyncio"
server.run(sockets=[sock])
"""


def test_running_out_of_descriptors_on_accept_is_logged_once_a_burst() -> None:
    """asyncio logs a traceback for every failed accept: tens of thousands of lines a second."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(80)]
        time.sleep(1.5)  # asyncio retries the accept every second
        for sock in held:
            sock.close()
    finally:
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=20)
    assert err.count("out of file descriptors") == 1
    assert "Traceback" not in err
