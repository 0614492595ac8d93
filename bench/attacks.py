"""What an attacker with the public port can hold of the host, measured (issue 15), on loopback only.

    python bench/attacks.py [--model build/demo/efficientnet-lite0.onnx] [--header-mb 256]

Starts ``enclave-infer serve --max-in-flight 64`` (bench/load.py's Server), provisions the model,
then, one after the other, each bounded in bytes, connections and time:

1. one header field of ``--header-mb`` MB: how long until the host answers (431), how much it read;
2. 1,000 connections, half idle, half with a head begun: how many are open after HEAD_SECONDS + 2 s,
   and whether a health probe answered meanwhile;
3. 64 whole-request bodies sending a byte every second for 15 s: classifications served meanwhile
   by one client (before: none, every route 503);
4. 64 chunked streams trickling 4 bytes every 2 s: classifications served in the first 20 s, and
   when the streams were dropped.

Prints one JSON object. Never point it at a host that is not yours.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import PHOTOS, ROOT, Server

from enclave_infer import Client, ClientConfig, EnclaveInferError, RemoteError
from enclave_infer.host.server import HEAD_SECONDS


def where(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def huge_header(url: str, megabytes: int) -> dict[str, object]:
    started = time.monotonic()
    sent = 0
    with socket.create_connection(where(url)) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: enclave\r\nx-huge: ")
        piece = b"a" * 65536
        with contextlib.suppress(OSError):
            while sent < megabytes * 2**20 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(piece)
                sent += len(piece)
        sock.settimeout(10)
        try:
            answer = sock.recv(100)
        except OSError:
            answer = b""
    return {
        "answer": answer.split(b"\r\n")[0].decode(errors="replace"),
        "seconds_to_answer": round(time.monotonic() - started, 3),
        "bytes_sent": sent,
    }


def idle_connections(url: str, count: int) -> dict[str, object]:
    socks = []
    for i in range(count):
        sock = socket.create_connection(where(url))
        if i % 2:
            sock.sendall(b"POST /v1/ohttp HTTP/1.1\r\nhost: enclave\r\n")
        socks.append(sock)
    started = time.monotonic()
    probe = httpx.get(url + "/v2/health/live", timeout=10).status_code
    probe_seconds = time.monotonic() - started
    open_ = set(socks)
    while open_ and time.monotonic() < started + HEAD_SECONDS + 2:
        for sock in select.select(list(open_), [], [], 0.5)[0]:
            with contextlib.suppress(OSError):
                if sock.recv(65536):
                    continue
            open_.discard(sock)
    for sock in socks:
        sock.close()
    return {
        "connections": count,
        "probe_status": probe,
        "probe_seconds": round(probe_seconds, 3),
        f"open_after_{HEAD_SECONDS + 2:g}_s": len(open_),
    }


def classify_while(url: str, constraint: str, busy: threading.Thread) -> int:
    import skimage

    served = 0
    photo = (Path(skimage.data_dir) / PHOTOS[0]).read_bytes()
    with Client(url, constraint, config=ClientConfig(retries=0)) as client:
        while busy.is_alive():
            try:
                client.classify(photo)
                served += 1
            except EnclaveInferError:
                time.sleep(0.1)
    return served


def trickled_bodies(url: str, constraint: str, count: int, seconds: float) -> dict[str, object]:
    head = (
        b"POST /v1/ohttp HTTP/1.1\r\nhost: enclave\r\n"
        b"content-type: message/ohttp-req\r\ncontent-length: 100000\r\n\r\n"
    )
    socks = [socket.create_connection(where(url)) for _ in range(count)]
    for sock in socks:
        sock.sendall(head)

    def trickle() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(b"a")
            time.sleep(1)

    busy = threading.Thread(target=trickle)
    busy.start()
    served = classify_while(url, constraint, busy)
    for sock in socks:
        sock.close()
    return {"bodies": count, "seconds": seconds, "classifications_served": served}


def trickled_streams(url: str, constraint: str, count: int) -> dict[str, object]:
    outcomes: list[tuple[int, float]] = []
    started = time.monotonic()

    def body() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 4
            time.sleep(2)

    def stream() -> None:
        with Client(url, constraint, config=ClientConfig(retries=0)) as client:
            try:
                status = client._request("POST", "/v1/classify", stream=body).status
            except RemoteError as exc:
                status = exc.status
            except EnclaveInferError:
                status = 0
            outcomes.append((status, time.monotonic() - started))

    streams = [threading.Thread(target=stream) for _ in range(count)]
    for t in streams:
        t.start()
    served = classify_while(url, constraint, streams[0])
    for t in streams:
        t.join()
    return {
        "streams": count,
        "statuses": sorted({s for s, _ in outcomes}),
        "dropped_after_seconds": round(max(t for _, t in outcomes), 1),
        "classifications_served_meanwhile": served,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "build" / "demo" / "efficientnet-lite0.onnx")
    parser.add_argument("--header-mb", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp), args.model, options=("--max-in-flight", "64"))
        try:
            server.provision(args.model, ROOT / "demo" / "imagenet-classes.txt")
            cpu = server.cpu()
            figures: dict[str, object] = {"huge_header": huge_header(server.url, args.header_mb)}
            figures["huge_header"]["host_cpu_seconds"] = round(server.cpu() - cpu, 2)  # type: ignore[index]
            figures["idle_connections"] = idle_connections(server.url, 1000)
            figures["trickled_bodies"] = trickled_bodies(server.url, server.constraint, 64, 15)
            figures["trickled_streams"] = trickled_streams(server.url, server.constraint, 64)
        finally:
            server.stop()
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
