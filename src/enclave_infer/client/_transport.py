"""HTTP to the (untrusted) host, bounded: the SDK's only network I/O.

Client-side, internal. Every answer is read up to :attr:`ClientConfig.max_response_bytes` and
within :attr:`ClientConfig.timeout` as a whole, not per read; refusals the host (or the enclave,
for undecryptable requests) sends as RFC 9457 problem documents become :class:`ProblemDetails`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from enclave_infer.client.config import ClientConfig
from enclave_infer.errors import ProtocolError, TransportError
from enclave_infer.protocol.api import PROBLEM_MEDIA_TYPE, ProblemDetails

__all__ = ["Reply", "Transport"]


@dataclass(frozen=True)
class Reply:
    status: int
    media_type: str
    body: bytes
    retry_after: float | None = None

    def problem(self) -> ProblemDetails | None:
        """The problem document of an error answer, if it is one."""
        if self.status < 400 or self.media_type != PROBLEM_MEDIA_TYPE:
            return None
        try:
            return ProblemDetails.decode(self.body, status=self.status)
        except ProtocolError:
            return None


class Transport:
    def __init__(self, url: str, config: ClientConfig, transport: httpx.BaseTransport | None) -> None:
        self.url = url
        self._config = config
        self._http = httpx.Client(timeout=config.timeout, transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | Iterator[bytes] = b"",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        limit, timeout = self._config.max_response_bytes, self._config.timeout
        deadline = time.monotonic() + timeout
        try:
            with self._http.stream(method, self.url + path, content=content, headers=headers) as reply:
                declared = reply.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise ProtocolError(f"the host's answer is larger than {limit} bytes")
                body = bytearray()
                for chunk in reply.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise ProtocolError(f"the host's answer is larger than {limit} bytes")
                    if time.monotonic() > deadline:
                        raise TransportError(f"{self.url} did not answer within {timeout:.0f} s")
                media_type = reply.headers.get("content-type", "").split(";")[0].strip().lower()
                retry_after = reply.headers.get("retry-after", "")
                return Reply(
                    reply.status_code,
                    media_type,
                    bytes(body),
                    float(retry_after) if retry_after.isdigit() else None,
                )
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach {self.url}: {_why(exc)}") from None


def _why(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return type(exc).__name__
