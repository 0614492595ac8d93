"""The Oblivious Gateway (RFC 9458 §2) in front of the enclave's own API.

Trusted code, no I/O: an encapsulated request in, an encapsulated response out. Requests that cannot
be decrypted raise (the host answers them with a plain 400, RFC 9458 §5.2); everything that can be
decrypted is answered encrypted, errors included.

Replay protection follows RFC 9458 §6.5.1: each inner request carries a ``date`` header; requests
dated outside ``REPLAY_WINDOW`` of the enclave's clock are refused with RFC 9458 §6.5.2's ``date``
problem and the enclave's own ``date`` header, so that the client can correct its clock and retry;
within the window the encapsulated KEM share (``enc``) of every accepted request is remembered, so a
replayed ciphertext is refused.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from email.utils import formatdate, parsedate_to_datetime
from typing import Protocol

from enclave_infer.errors import ProtocolError
from enclave_infer.protocol import bhttp, chunked_ohttp, ohttp, padding
from enclave_infer.protocol.api import Header, Problem

__all__ = ["MAX_REPLAY_ENTRIES", "REPLAY_WINDOW", "ChunkedExchange", "Gateway", "StreamSink", "StreamingApp"]

# How far a request's date may be from the enclave's clock, in seconds, either way.
REPLAY_WINDOW = 120.0
# Bound on remembered requests: 200k × ~100 bytes = 20 MB; at that rate (over 800 requests/s for two
# minutes) the gateway refuses new requests with 503 rather than forget and admit replays.
MAX_REPLAY_ENTRIES = 200_000


class Gateway:
    """``key``: the key the gateway answers with now (an enclave's own, until it joins a cluster)."""

    def __init__(
        self,
        key: Callable[[], ohttp.GatewayKey],
        app: StreamingApp,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key = key
        self._app = app
        self._clock = clock  # compared with request dates
        self._monotonic = monotonic  # ages replay-cache entries: stepping the wall clock cannot flush it
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def key(self) -> ohttp.GatewayKey:
        return self._key()

    def begin_chunked(self) -> ChunkedExchange:
        return ChunkedExchange(self)

    def handle(self, encapsulated_request: bytes) -> bytes:
        """Raises DecryptionError / ProtocolError when the request cannot be decapsulated."""
        plaintext, context = ohttp.decapsulate_request(self.key, encapsulated_request)
        try:
            request: bhttp.Request | None = bhttp.decode_request(plaintext)
        except ProtocolError as exc:
            request = None
            response = Problem.MALFORMED_REQUEST.details(f"malformed binary HTTP request: {exc}").response()
        if request is not None:
            response = self.admit(request, context.enc) or self._app(request)
        encoded = bhttp.encode_response(response)
        target = self._app.padded_length(request, len(encoded)) if request is not None else None
        if target is not None:
            encoded = padding.pad(encoded, target)  # RFC 9292 §3.8: zeros after the message
        return context.encapsulate_response(encoded)

    def open_stream(self, head: bhttp.Request) -> StreamSink:
        """The application's sink for the content of an admitted streamed request."""
        return self._app.open_stream(head)

    def admit(self, request: bhttp.Request, enc: bytes) -> bhttp.Response | None:
        """None if the request is fresh and not a replay (RFC 9458 §6.5), else the refusal."""
        now = self._clock()
        date = request.header(Header.DATE)
        try:
            sent = parsedate_to_datetime(date).timestamp() if date else None
        except (TypeError, ValueError):
            sent = None
        if sent is None or abs(now - sent) > REPLAY_WINDOW:
            # RFC 9458 §6.5.2: the date problem, with the gateway's own date to correct a clock by
            problem = Problem.DATE.details("request date missing or outside the enclave's acceptance window")
            return problem.response((Header.DATE.value, formatdate(now, usegmt=True)))
        with self._lock:
            # An entry must outlive every request date the window still admits: 2 × window.
            added = self._monotonic()
            while self._seen and next(iter(self._seen.values())) < added - 2 * REPLAY_WINDOW:
                self._seen.popitem(last=False)
            if enc in self._seen:
                return Problem.REPLAYED.details("replayed request refused").response()
            if len(self._seen) >= MAX_REPLAY_ENTRIES:
                return Problem.OVERLOADED.details(
                    "enclave is too busy to track more requests; retry shortly"
                ).response()
            self._seen[enc] = added
        return None


class ChunkedExchange:
    """One chunked request (draft-ietf-ohai-chunked-ohttp): decrypted, parsed and handed on as it
    arrives, answered once. An answer may come early (a refusal as soon as the head is known);
    after that, further input is ignored. Undecryptable input raises, as in :meth:`Gateway.handle`.
    """

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._decoder = chunked_ohttp.ChunkedRequestDecoder(gateway.key)
        self._stream = bhttp.RequestStream()
        self._sink: StreamSink | None = None
        self.response: bytes | None = None

    def feed(self, data: bytes) -> bytes | None:
        """Take the next bytes; return the encapsulated response if it is decided now."""
        if self.response is None:
            for plaintext in self._decoder.feed(data):
                self._parse(plaintext, last=False)
                if self.response is not None:
                    break
        return self.response

    def finish(self) -> bytes:
        """The request is complete: the encapsulated response."""
        if self.response is None:
            self._parse(self._decoder.finish(), last=True)
        if self.response is None:
            assert self._sink is not None
            self._respond(self._sink.finish())
        assert self.response is not None
        return self.response

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()

    def _parse(self, plaintext: bytes, *, last: bool) -> None:
        try:
            pieces = self._stream.feed(plaintext)
            if last:
                pieces += self._stream.finish()
        except ProtocolError as exc:
            self._respond(
                Problem.MALFORMED_REQUEST.details(f"malformed binary HTTP request: {exc}").response()
            )
            return
        if self._sink is None and self._stream.head is not None:
            head = self._stream.head
            refusal = self._gateway.admit(head, self._decoder.enc)
            if refusal is not None:
                self._respond(refusal)
                return
            self._sink = self._gateway.open_stream(head)
        for piece in pieces:
            assert self._sink is not None
            early = self._sink.write(piece)
            if early is not None:
                self._sink.abort()
                self._respond(early)
                return

    def _respond(self, response: bhttp.Response) -> None:
        encoder = self._decoder.response_encoder()
        self.response = encoder.header() + encoder.final(bhttp.encode_response(response))


class StreamSink(Protocol):
    """Where the content of a streamed request goes, piece by piece."""

    def write(self, piece: bytes) -> bhttp.Response | None:
        """Take a piece; return a response to end the exchange early (an error)."""
        ...

    def finish(self) -> bhttp.Response: ...

    def abort(self) -> None: ...


class StreamingApp(Protocol):
    def __call__(self, request: bhttp.Request) -> bhttp.Response: ...

    def padded_length(self, request: bhttp.Request, length: int) -> int | None:
        """The length to pad the encoded answer (``length`` bytes) to ``request`` to, or None."""
        ...

    def open_stream(self, head: bhttp.Request) -> StreamSink: ...
