"""The host's routes (``host/app.py``) through ASGI, with an enclave process that is down: what the
host says for itself when it cannot reach its enclave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from enclave_infer.config import EnclaveConfig
from enclave_infer.errors import TransportError
from enclave_infer.host.app import create_app
from enclave_infer.protocol.api import EnclaveStatus, Problem
from enclave_infer.protocol.framing import FrameType


class DownEnclave:
    """An enclave process that has exited and cannot be restarted: every call fails as
    ``EnclaveProcess.call`` does then."""

    config = EnclaveConfig(owner_public_key=bytes(32))
    running = False
    restarts = 3

    async def call(
        self, kind: FrameType, payload: bytes = b"", *, pooled: bool = False
    ) -> tuple[FrameType, bytes]:
        raise TransportError("the enclave process has exited; this replica is being replaced")

    async def call_streaming(self, pieces: AsyncIterator[bytes]) -> tuple[FrameType, bytes]:
        raise TransportError("the enclave process has exited; this replica is being replaced")

    async def status(self) -> EnclaveStatus | None:
        return None

    def stop(self) -> None:
        pass


def send(method: str, path: str, **kwargs: object) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(DownEnclave()))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            return await client.request(method, path, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/ohttp-keys", {}),
        ("GET", "/v1/attestation?nonce=" + "00" * 32, {}),
        ("POST", "/v1/ohttp", {"content-type": "message/ohttp-req"}),
        ("POST", "/v1/ohttp", {"content-type": "message/ohttp-chunked-req"}),
    ],
)
def test_enclave_unavailable_carries_retry_after(method: str, path: str, headers: dict[str, str]) -> None:
    """The README promised Retry-After on enclave-unavailable; the host did not send it."""
    answer = send(method, path, headers=headers, content=b"x" * 100 if method == "POST" else b"")
    assert answer.status_code == 503
    assert Problem.from_uri(answer.json()["type"]) is Problem.ENCLAVE_UNAVAILABLE
    assert answer.headers["retry-after"] == "1"


def test_readiness_says_why_it_is_not_ready() -> None:
    """Readiness answered 400 and ``{"ready": false}``, however different the causes."""
    answer = send("GET", "/v2/health/ready")
    assert answer.status_code == 400
    assert answer.json() == {
        "ready": False,
        "reason": "the enclave process is down (the next request starts it again)",
    }
    answer = send("GET", "/v2/models/default/ready")
    assert answer.status_code == 400 and answer.json()["reason"].startswith("the enclave process is down")
