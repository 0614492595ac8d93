"""The enclave process: a server speaking :mod:`enclave_infer.protocol.framing` to the host.

It listens on a unix socket (simulation, and any process-based TEE) or on TCP loopback (Gramine,
whose unix sockets cannot reach host processes).

Trusted code; this is the I/O edge of the enclave. One thread per host connection; each connection
carries one request frame at a time and gets one reply frame. At most
``limits.max_concurrent_requests`` requests are worked on at once; the rest wait.
"""

from __future__ import annotations

import logging
import socketserver
import threading
import time
from pathlib import Path

from enclave_infer.attestation.evidence import Evidence
from enclave_infer.attestation.report import MAX_NONCE_BYTES, MIN_NONCE_BYTES, report_data_binding
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.app import App
from enclave_infer.enclave.gateway import Gateway
from enclave_infer.enclave.models import ModelStore
from enclave_infer.enclave.platform import Platform
from enclave_infer.enclave.sealing import Sealer
from enclave_infer.errors import AttestationError, DecryptionError, ProtocolError
from enclave_infer.protocol import framing, ohttp
from enclave_infer.protocol.framing import Address, FrameType, format_address

__all__ = ["Enclave", "serve"]

log = logging.getLogger("enclave_infer.enclave")

# A chunked request may pause this long between frames, and last this long in all: 512 MiB at
# 0.5 MB/s fits in the total; a stalled or trickling stream cannot hold a slot for longer.
STREAM_IDLE_SECONDS = 60.0
MAX_STREAM_SECONDS = 1800.0


class Enclave:
    """The enclave's state and its answers to the host's three questions."""

    def __init__(self, config: EnclaveConfig, platform: Platform, storage: Path) -> None:
        self.config = config
        self.platform = platform
        self.key = ohttp.GatewayKey.generate(key_id=1)  # fresh per instance, never leaves
        self.key_config = self.key.config.encode()
        try:
            sealer: Sealer | None = Sealer(platform.sealing_key())
        except AttestationError as exc:
            log.warning("%s: provisioned models are kept in memory only, not across restarts", exc)
            sealer = None
        self.store = ModelStore(config, sealer, storage)
        self.store.restore()
        self.gateway = Gateway(
            self.key,
            App(
                self.store,
                max_top_k=config.limits.max_top_k,
                max_model_bytes=config.limits.max_model_bytes,
                max_image_bytes=config.limits.max_image_bytes,
            ),
        )
        self.slots = threading.BoundedSemaphore(config.limits.max_concurrent_requests)
        self.max_frame_bytes = config.limits.max_request_bytes

    def answer(self, kind: FrameType, payload: bytes) -> bytes:
        if kind is FrameType.GET_KEYS:
            return framing.encode_frame(FrameType.KEYS, ohttp.encode_key_configs([self.key.config]))
        if kind is FrameType.GET_EVIDENCE:
            if not MIN_NONCE_BYTES <= len(payload) <= MAX_NONCE_BYTES:
                return framing.encode_error(
                    400, f"nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes"
                )
            report_data = report_data_binding(self.key_config, self.config.digest(), payload)
            document = Evidence(
                self.platform.tee, self.platform.evidence(report_data), self.config.canonical()
            )
            return framing.encode_frame(FrameType.EVIDENCE, document.encode())
        if kind is FrameType.OHTTP_REQUEST:
            try:
                return framing.encode_frame(FrameType.OHTTP_RESPONSE, self.gateway.handle(payload))
            except DecryptionError:
                return framing.encode_error(400, "the enclave could not decrypt the request")
            except ProtocolError as exc:
                return framing.encode_error(400, f"malformed encapsulated request: {exc}")
        return framing.encode_error(400, f"unexpected frame {kind.name}")


class _Handler(socketserver.StreamRequestHandler):
    server: _UnixServer | _TcpServer

    def handle(self) -> None:
        enclave = self.server.enclave
        while True:
            frame = self._read_frame()
            if frame is None:
                return
            kind, length = frame
            # The slot is taken before the payload is read, so at most max_concurrent_requests
            # payloads are in the enclave's memory at once, however many connections the host opens.
            with enclave.slots:
                payload = self.rfile.read(length)
                if len(payload) < length:
                    return
                if kind is FrameType.CHUNKED_BEGIN:
                    if not self._chunked(payload):
                        return
                    continue
                try:
                    reply = enclave.answer(kind, payload)
                except Exception as exc:  # never let one request take the enclave down
                    log.error("internal error while answering %s: %s", kind.name, type(exc).__name__)
                    reply = framing.encode_error(500, "internal enclave error")
                del payload
            self._send(reply)

    def _read_frame(self) -> tuple[FrameType, int] | None:
        header = self.rfile.read(framing.HEADER.size)
        if len(header) < framing.HEADER.size:
            return None
        enclave = self.server.enclave
        try:
            kind, length = framing.parse_header(header)
        except ProtocolError as exc:
            self._send(framing.encode_error(400, str(exc)))
            return None
        if length > enclave.max_frame_bytes:
            self._send(framing.encode_error(413, f"frame larger than {enclave.max_frame_bytes} bytes"))
            return None
        return kind, length

    def _chunked(self, first: bytes) -> bool:
        """A chunked request, BEGIN already read: feed DATA frames through until END, answer once
        (early if the answer is known early). Returns False when the connection is finished."""
        enclave = self.server.enclave
        exchange = enclave.gateway.begin_chunked()
        answered, total, payload = False, len(first), first
        started = time.monotonic()
        # A stream holds a slot: one that stalls, or trickles past the deadline, gives it back
        # (and a held-back final chunk can no longer make an old upload go live days later).
        self.connection.settimeout(STREAM_IDLE_SECONDS)
        try:
            while True:
                if not answered:
                    early = exchange.feed(payload)
                    if early is not None:
                        self._send(framing.encode_frame(FrameType.CHUNKED_RESPONSE, early))
                        answered = True
                frame = self._read_frame()
                if frame is None:
                    return False  # the host went away mid-stream: the upload is abandoned
                kind, length = frame
                payload = self.rfile.read(length)
                if len(payload) < length:
                    return False
                total += length
                if time.monotonic() - started > MAX_STREAM_SECONDS:
                    if not answered:
                        self._send(
                            framing.encode_error(408, f"request took longer than {MAX_STREAM_SECONDS} s")
                        )
                    return False
                if kind is FrameType.CHUNKED_END:
                    if not answered:
                        self._send(framing.encode_frame(FrameType.CHUNKED_RESPONSE, exchange.finish()))
                    return True
                if kind is not FrameType.CHUNKED_DATA:
                    self._send(
                        framing.encode_error(400, f"unexpected frame {kind.name} in a chunked request")
                    )
                    return False
                if total > enclave.max_frame_bytes and not answered:
                    self._send(
                        framing.encode_error(413, f"request larger than {enclave.max_frame_bytes} bytes")
                    )
                    return False
        except TimeoutError:
            return False  # stalled: the upload is abandoned, the slot freed
        except DecryptionError:
            self._send(framing.encode_error(400, "the enclave could not decrypt the request"))
            return False
        except ProtocolError as exc:
            self._send(framing.encode_error(400, f"malformed chunked request: {exc}"))
            return False
        except Exception as exc:  # never let one request take the enclave down
            log.error("internal error in a chunked request: %s", type(exc).__name__)
            self._send(framing.encode_error(500, "internal enclave error"))
            return False
        finally:
            self.connection.settimeout(None)
            exchange.abort()  # a no-op once the upload has finished

    def _send(self, frame: bytes) -> None:
        try:
            self.wfile.write(frame)
            self.wfile.flush()
        except OSError:
            pass  # the host went away; nothing to tell it


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    enclave: Enclave


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    enclave: Enclave


_Server = _UnixServer | _TcpServer


def serve(enclave: Enclave, listen: Address) -> None:
    server: _Server
    if isinstance(listen, Path):
        listen.unlink(missing_ok=True)
        server = _UnixServer(str(listen), _Handler)
        listen.chmod(0o600)
    else:
        server = _TcpServer(listen, _Handler)
    server.enclave = enclave
    with server:
        log.info("enclave listening on %s", format_address(listen))
        server.serve_forever()
