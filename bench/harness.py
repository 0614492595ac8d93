"""What the benchmarks share: a free loopback port, and waiting for `enclave-infer serve`."""

from __future__ import annotations

import socket
import time

import httpx

# How long a freshly started server may take to answer /healthz (it starts the enclave first).
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("server did not start")
