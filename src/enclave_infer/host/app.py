"""The host's HTTP API: an ASGI app that relays opaque bytes to the enclave.

Untrusted code. It sees ciphertext and lengths only.

=========================  ====================================================================
``GET /ohttp-keys``        the enclave's key configuration (``application/ohttp-keys``, RFC 9458 §3)
``GET /v1/attestation``    evidence bound to the key configuration and ``?nonce=<hex>``
``POST /v1/ohttp``         ``message/ohttp-req`` in, ``message/ohttp-res`` out (RFC 9458 §4), or
                           the chunked forms, streamed (draft-ietf-ohai-chunked-ohttp)
``GET /healthz``           whether the enclave process is up
=========================  ====================================================================

Errors here are plain HTTP with a JSON ``{"error": ...}`` body: they can say only what the host
knows, which is nothing secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from enclave_infer.attestation.report import MAX_NONCE_BYTES, MIN_NONCE_BYTES
from enclave_infer.errors import ProtocolError, TransportError
from enclave_infer.host.enclave_process import EnclaveProcess, read_frame
from enclave_infer.protocol import framing
from enclave_infer.protocol.framing import FrameType

__all__ = ["create_app"]

log = logging.getLogger("enclave_infer.host")

OHTTP_KEYS = "application/ohttp-keys"
OHTTP_REQ = "message/ohttp-req"
OHTTP_RES = "message/ohttp-res"
OHTTP_CHUNKED_REQ = "message/ohttp-chunked-req"  # draft-ietf-ohai-chunked-ohttp
# How long a streaming client may pause before the host gives up on it (and frees its slot).
CLIENT_IDLE_SECONDS = 30.0
OHTTP_CHUNKED_RES = "message/ohttp-chunked-res"


def create_app(enclave: EnclaveProcess) -> Starlette:
    max_request_bytes = enclave.config.limits.max_request_bytes

    async def relay(
        kind: FrameType, payload: bytes | bytearray, expect: FrameType, media_type: str
    ) -> Response:
        try:
            reply, data = await enclave.call(kind, payload)
        except (TransportError, ProtocolError) as exc:
            return _error(503, str(exc))
        if reply is FrameType.ERROR:
            status, message = framing.decode_error(data)
            return _error(status, message)
        if reply is not expect:
            return _error(502, "unexpected answer from the enclave")
        return Response(data, media_type=media_type, headers={"cache-control": "no-store"})

    async def keys(request: Request) -> Response:
        return await relay(FrameType.GET_KEYS, b"", FrameType.KEYS, OHTTP_KEYS)

    async def attestation(request: Request) -> Response:
        nonce_hex = request.query_params.get("nonce", "")
        try:
            nonce = bytes.fromhex(nonce_hex)
        except ValueError:
            nonce = b""
        if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
            return _error(400, f"nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes of hex")
        return await relay(FrameType.GET_EVIDENCE, nonce, FrameType.EVIDENCE, "application/json")

    async def ohttp(request: Request) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == OHTTP_CHUNKED_REQ:
            return await relay_chunked(request)
        if media_type != OHTTP_REQ:
            return _error(415, f"content-type must be {OHTTP_REQ} or {OHTTP_CHUNKED_REQ}")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_request_bytes:
            return _error(413, f"request larger than {max_request_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_request_bytes:
                return _error(413, f"request larger than {max_request_bytes} bytes")
        return await relay(FrameType.OHTTP_REQUEST, body, FrameType.OHTTP_RESPONSE, OHTTP_RES)

    async def relay_chunked(request: Request) -> Response:
        """Forward a chunked request as it arrives, never holding more than one piece; stop as
        soon as the enclave answers (it may refuse at the head, before the body)."""
        try:
            reader, writer = await enclave.connect()
        except TransportError as exc:
            return _error(503, str(exc))
        answer = asyncio.ensure_future(read_frame(reader))
        total = 0
        try:
            kind = FrameType.CHUNKED_BEGIN
            pieces = request.stream().__aiter__()
            while True:
                try:  # a client that stalls gives its enclave slot back
                    piece = await asyncio.wait_for(pieces.__anext__(), CLIENT_IDLE_SECONDS)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    return _error(408, f"no request data for {CLIENT_IDLE_SECONDS:.0f} s")
                if answer.done():
                    break
                total += len(piece)
                if total > max_request_bytes:
                    return _error(413, f"request larger than {max_request_bytes} bytes")
                writer.write(framing.HEADER.pack(kind, len(piece)))
                writer.write(piece)
                await writer.drain()
                kind = FrameType.CHUNKED_DATA
            if not answer.done():
                if kind is FrameType.CHUNKED_BEGIN:  # an empty body still opens and closes a stream
                    writer.write(framing.HEADER.pack(kind, 0))
                writer.write(framing.HEADER.pack(FrameType.CHUNKED_END, 0))
                await writer.drain()
            reply, data = await answer
        except (OSError, asyncio.IncompleteReadError, ProtocolError):
            return _error(503, "the enclave closed the connection")
        except ClientDisconnect:
            return _error(400, "the client went away")  # nobody reads it; the enclave aborts the upload
        finally:
            if not answer.done():
                answer.cancel()
            writer.close()
        if reply is FrameType.ERROR:
            status, message = framing.decode_error(data)
            return _error(status, message)
        if reply is not FrameType.CHUNKED_RESPONSE:
            return _error(502, "unexpected answer from the enclave")
        return Response(data, media_type=OHTTP_CHUNKED_RES, headers={"cache-control": "no-store"})

    async def healthz(request: Request) -> Response:
        running = enclave.running
        return JSONResponse({"status": "ok" if running else "starting", "restarts": enclave.restarts})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        enclave.stop()

    return Starlette(
        routes=[
            Route("/ohttp-keys", keys, methods=["GET"]),
            Route("/v1/attestation", attestation, methods=["GET"]),
            Route("/v1/ohttp", ohttp, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
