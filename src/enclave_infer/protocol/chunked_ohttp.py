"""Chunked Oblivious HTTP: draft-ietf-ohai-chunked-ohttp-08, "Chunked Oblivious HTTP Messages".

Implements revision -08 of the draft (18 February 2026, the revision the IESG approved as a Proposed
Standard); section numbers below are that revision's. It is RFC 9458 (``ohttp.py``) with the body
sealed in chunks, so that a large request or response is encrypted, sent, received and opened
piece by piece, in memory bounded by one chunk whatever the length of the message.

Pure protocol code on bytes, with no I/O. The four objects, one per direction and side::

    client                                               gateway (in the enclave)
    ChunkedRequestEncoder  --- message/ohttp-chunked-req -->  ChunkedRequestDecoder
    ChunkedResponseDecoder <-- message/ohttp-chunked-res ---  ChunkedResponseEncoder

Encoders return the bytes to send: ``header()`` once, then ``chunk(data)`` for each non-final chunk
and ``final(data)`` last. Decoders take bytes as they arrive, split anywhere: ``feed(data)`` returns
the plaintext of every non-final chunk completed by ``data``; ``finish()``, at the end of the
stream, opens the final chunk and returns its plaintext (often empty). The final chunk has no
length: it "extends to the end of the outer stream" (§4, §5), so only the end of the stream,
which the carrying protocol (HTTP) signals, completes it. A message is complete only once
``finish()`` has returned (§7.1): until then the peer, or a relay, may have cut it short.

Wire format (§4, §5; lengths are RFC 9000 §16 variable-length integers)::

    request  = hdr(7) || enc(Nenc) || chunk* || 0x00 || final_ct       (chunk = len(i) || ct)
    response = response_nonce(max(Nn, Nk)) || chunk* || 0x00 || final_ct

Only DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and AES-128-GCM are supported (as in ``ohttp.py``).
Peer bytes that do not parse raise ProtocolError, a message that ends early raises
``ProtocolError("truncated")``, every authentication failure raises a bare DecryptionError. A
decoder that raised is dead: using it again raises UsageError.
"""

from __future__ import annotations

import secrets
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyhpke import ContextInterface, PyHPKEError

from enclave_infer.errors import DecryptionError, ProtocolError, UsageError
from enclave_infer.protocol.ohttp import (
    REQUEST_HEADER,
    GatewayKey,
    KeyConfig,
    Suite,
    derive_response_key,
    export_response_secret,
    setup_recipient,
    setup_sender,
)

__all__ = [
    "MAX_CHUNK_BYTES",
    "MEDIA_TYPE_CHUNKED_REQUEST",
    "MEDIA_TYPE_CHUNKED_RESPONSE",
    "ChunkedRequestDecoder",
    "ChunkedRequestEncoder",
    "ChunkedResponseDecoder",
    "ChunkedResponseEncoder",
]

# §8.1, §8.2.
MEDIA_TYPE_CHUNKED_REQUEST: Final = "message/ohttp-chunked-req"
MEDIA_TYPE_CHUNKED_RESPONSE: Final = "message/ohttp-chunked-res"

# §6.1 (HPKE info) and §6.2 (HPKE exporter context): not RFC 9458's labels, so that a chunked
# message can never be taken for a non-chunked one or the other way round.
_REQUEST_LABEL: Final = b"message/bhttp chunked request"
_RESPONSE_LABEL: Final = b"message/bhttp chunked response"

# §6.1, §6.2: the AAD of the final chunk; non-final chunks have an empty AAD.
_FINAL_AAD: Final = b"final"

# The largest plaintext in one chunk, final or not, that we send or accept. §3 requires receivers to
# accept 2**14 bytes and senders to stay at or below that "unless they are aware of support for
# larger sizes", which we are: both ends are this package. 1 MiB lets a sender amortise the 17 to 24
# bytes of framing and the AEAD call of each chunk over large pieces of a model upload, yet bounds
# what a decoder holds for one stream (enclave memory is scarce and a gateway serves many streams):
# a peer announcing a longer chunk is refused before any of it is buffered.
MAX_CHUNK_BYTES: Final = 1 << 20


def _encode_varint(value: int) -> bytes:
    """The shortest RFC 9000 §16 encoding of ``value`` (6, 14, 30 or 62 bits)."""
    for length, prefix in ((1, 0x00), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * length - 2):
            return (value | prefix << (8 * length - 8)).to_bytes(length, "big")
    raise UsageError("length does not fit a variable-length integer")


def _chunk_nonce(aead_nonce: int, counter: int, n_n: int) -> bytes:
    """§6.2: ``chunk_nonce = aead_nonce XOR encode(Nn, counter)``."""
    return (aead_nonce ^ counter).to_bytes(n_n, "big")


def _check_size(data: bytes) -> None:
    if len(data) > MAX_CHUNK_BYTES:
        raise UsageError(f"a chunk holds at most {MAX_CHUNK_BYTES} bytes")


# -- Decoding: one state machine for both directions ---------------------------------------------------

_HEADER, _LENGTH, _BODY, _FINAL, _DONE, _FAILED = range(6)


class _ChunkDecoder:
    """Splits ``header || (len(i) || ct)* || 0 || final_ct`` (§4, §5) fed in arbitrary pieces.

    Holds at most one item at a time in ``_buf``: the header, one varint, one non-final chunk, or
    the final chunk so far; a chunk's length is checked against the limit before it is buffered.
    Subclasses open the header and the chunks.
    """

    def __init__(self, header_len: int, n_t: int) -> None:
        self._buf = bytearray()
        self._state = _HEADER
        self._need = header_len  # bytes of the current item (header, varint or chunk)
        self._n_t = n_t  # RFC 9180 Nt: the AEAD tag, present in every chunk
        self._max_ct = MAX_CHUNK_BYTES + n_t

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of an item: at most ``MAX_CHUNK_BYTES + Nt``."""
        return len(self._buf)

    @property
    def finished(self) -> bool:
        """Whether ``finish()`` authenticated the final chunk: the message is complete (§7.1)."""
        return self._state == _DONE

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next bytes of the stream; return the plaintext of each chunk they complete."""
        self._check_live()
        out: list[bytes] = []
        try:
            self._feed(memoryview(data), out)
        except ProtocolError:
            self._fail()
            raise
        return out

    def finish(self) -> bytes:
        """The stream has ended: open the final chunk (AAD "final", §6) and return its plaintext.

        ``ProtocolError("truncated")`` if the stream ended before the final chunk or inside its tag;
        DecryptionError if the final chunk does not authenticate, which includes bytes appended
        after it: the final chunk runs to the end of the stream, so they are part of it (§4, §5).
        """
        self._check_live()
        if self._state != _FINAL or len(self._buf) < self._n_t:
            self._fail()
            raise ProtocolError("truncated")
        ct, self._buf = bytes(self._buf), bytearray()
        try:
            plaintext = self._open(ct, final=True)
        except ProtocolError:
            self._fail()
            raise
        self._state = _DONE
        return plaintext

    def _check_live(self) -> None:
        if self._state == _DONE:
            raise UsageError("the message is already finished")
        if self._state == _FAILED:
            raise UsageError("the message already failed to decode")

    def _fail(self) -> None:
        self._state, self._buf = _FAILED, bytearray()

    def _feed(self, data: memoryview, out: list[bytes]) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._state == _FINAL:  # the final chunk: everything up to the end of the stream
                if len(self._buf) + end - pos > self._max_ct:
                    raise ProtocolError("final chunk too long")
                self._buf += data[pos:]
                return
            if self._state == _LENGTH and not self._buf:
                self._need = 1 << (data[pos] >> 6)  # RFC 9000 §16: the 2-bit prefix gives the size
            if not self._buf and end - pos >= self._need:  # the whole item is here: no copy to _buf
                item: bytes | bytearray | memoryview = data[pos : pos + self._need]
                pos += self._need
            else:
                take = min(self._need - len(self._buf), end - pos)
                self._buf += data[pos : pos + take]
                pos += take
                if len(self._buf) < self._need:
                    return
                item, self._buf = self._buf, bytearray()
            rest = self._item(item, out)
            if rest:  # the request header waited for bytes beyond itself: they start the chunks
                self._feed(memoryview(rest), out)

    def _item(self, item: bytes | bytearray | memoryview, out: list[bytes]) -> bytes:
        """Process one complete item; return any bytes of it that belong to the items after it."""
        if self._state == _HEADER:
            return self._header(bytes(item))
        if self._state == _LENGTH:
            # Any encoding of a length is valid, not only the shortest: the framing is not
            # authenticated and "the choice between equivalent encodings" is free (§6).
            length = int.from_bytes(item, "big") & ((1 << (8 * len(item) - 2)) - 1)
            if length == 0:  # Final Chunk Indicator (§4, §5)
                self._state = _FINAL
            elif length > self._max_ct:  # refused before buffering any of it
                raise ProtocolError(f"chunk of {length} bytes exceeds the limit of {self._max_ct}")
            elif length <= self._n_t:
                # Shorter than the tag cannot be AEAD output; exactly the tag is an empty
                # non-final chunk, which §6 says to treat "as equivalent to a decryption error".
                raise DecryptionError() if length == self._n_t else ProtocolError("chunk too short")
            else:
                self._state, self._need = _BODY, length
        else:  # _BODY: a non-final chunk, AAD empty (§6.1, §6.2)
            plaintext = self._open(bytes(item), final=False)
            if not plaintext:  # unreachable: the length check above rules it out
                raise DecryptionError()
            out.append(plaintext)
            self._state, self._need = _LENGTH, 1
        return b""

    def _header(self, header: bytes) -> bytes:
        raise NotImplementedError

    def _open(self, ct: bytes, *, final: bool) -> bytes:
        raise NotImplementedError


class _ChunkEncoder:
    """What both encoders share: a header, then non-final chunks ``len(i) || ct``, then the final
    chunk ``0 || ct`` sealed with the "final" AAD (§6); subclasses say how a chunk is sealed."""

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = _HEADER

    def header(self) -> bytes:
        """The message's header, to send first."""
        if self._state != _HEADER:
            raise UsageError("header() comes once, first")
        self._state = _LENGTH
        return self._header_bytes()

    def chunk(self, data: bytes) -> bytes:
        """One non-final chunk: ``len(i) || Seal("", data)`` (§6)."""
        if not data:
            raise UsageError("a non-final chunk must not be empty (§6)")
        ct = self._seal(data, b"")
        return _encode_varint(len(ct)) + ct

    def final(self, data: bytes = b"") -> bytes:
        """The final chunk: ``0 || Seal("final", data)`` (§6). Ends the message."""
        ct = self._seal(data, _FINAL_AAD)
        self._state = _DONE
        return b"\x00" + ct

    def _seal(self, data: bytes, aad: bytes) -> bytes:
        if self._state != _LENGTH:
            raise UsageError("header() first, and nothing after final()")
        _check_size(data)
        return self._seal_chunk(data, aad)

    def _header_bytes(self) -> bytes:
        raise NotImplementedError

    def _seal_chunk(self, data: bytes, aad: bytes) -> bytes:
        raise NotImplementedError


# -- Responses (§5, §6.2) ------------------------------------------------------------------------------


class ChunkedResponseEncoder(_ChunkEncoder):
    """The gateway's side of a chunked response (§5, §6.2); from ``ChunkedRequestDecoder``."""

    __slots__ = ("_aead", "_counter", "_nonce", "_response_nonce", "_suite")

    def __init__(
        self, suite: Suite, context: ContextInterface, enc: bytes, response_nonce: bytes | None
    ) -> None:
        n = suite.response_nonce_len  # entropy_len = max(Nn, Nk) (§6.2)
        nonce = secrets.token_bytes(n) if response_nonce is None else response_nonce
        if len(nonce) != n:
            raise UsageError(f"response nonce must be {n} bytes")
        # secret = context.Export("message/bhttp chunked response", entropy_len), then RFC 9458
        # §4.4's salt = enc || response_nonce, prk, aead_key and aead_nonce (§6.2).
        secret = export_response_secret(context, suite, _RESPONSE_LABEL)
        aead_key, aead_nonce = derive_response_key(suite, secret, enc, nonce)
        self._suite, self._response_nonce = suite, nonce
        self._aead, self._nonce = suite.aead(aead_key), int.from_bytes(aead_nonce, "big")
        self._counter = 0  # §6.2: 0 for the first chunk, plus 1 after each
        super().__init__()

    def _header_bytes(self) -> bytes:
        return self._response_nonce  # the Response Nonce (§5)

    def _seal_chunk(self, data: bytes, aad: bytes) -> bytes:
        # Seal(aead_key, chunk_nonce, aad, data) (§6.2)
        n_n = self._suite.n_n
        if self._counter >= 1 << (8 * n_n):  # §6.2: "MUST NOT use 256^Nn or more chunks"
            raise UsageError("too many chunks")
        nonce = _chunk_nonce(self._nonce, self._counter, n_n)
        self._counter += 1
        return self._aead.encrypt(nonce, data, aad)


class ChunkedResponseDecoder(_ChunkDecoder):
    """The client's side of a chunked response (§5, §6.2); from ``ChunkedRequestEncoder``."""

    def __init__(self, suite: Suite, context: ContextInterface, enc: bytes) -> None:
        super().__init__(suite.response_nonce_len, suite.n_t)
        self._suite, self._context, self._enc = suite, context, enc
        self._aead: AESGCM | None = None  # set once the response nonce has arrived
        self._nonce = 0
        self._counter = 0

    def _header(self, response_nonce: bytes) -> bytes:
        secret = export_response_secret(self._context, self._suite, _RESPONSE_LABEL)
        aead_key, aead_nonce = derive_response_key(self._suite, secret, self._enc, response_nonce)
        self._aead, self._nonce = self._suite.aead(aead_key), int.from_bytes(aead_nonce, "big")
        self._state, self._need = _LENGTH, 1
        return b""

    def _open(self, ct: bytes, *, final: bool) -> bytes:
        assert self._aead is not None
        n_n = self._suite.n_n
        if self._counter >= 1 << (8 * n_n):  # §6.2; unreachable with Nn = 12
            raise ProtocolError("too many chunks")
        nonce = _chunk_nonce(self._nonce, self._counter, n_n)
        self._counter += 1
        try:
            return self._aead.decrypt(nonce, ct, _FINAL_AAD if final else b"")
        except InvalidTag:
            raise DecryptionError() from None


# -- Requests (§4, §6.1) -------------------------------------------------------------------------------


class ChunkedRequestEncoder(_ChunkEncoder):
    """The client's side of a chunked request (§4, §6.1) to the gateway of ``config``.

    ``_ephemeral_private_key`` (RFC 9180 skE) is for test vectors only.
    """

    __slots__ = ("_context", "_enc", "_hdr", "_response_decoder_made", "_suite")

    def __init__(self, config: KeyConfig, *, _ephemeral_private_key: bytes | None = None) -> None:
        # enc, sctxt = SetupBaseS(pkR, info), info = "message/bhttp chunked request" || 0 || hdr
        # (§6.1), as RFC 9458 §4.3 but for the label.
        hdr, enc, sctxt, suite = setup_sender(config, _REQUEST_LABEL, _ephemeral_private_key)
        self._hdr, self._enc, self._context, self._suite = hdr, enc, sctxt, suite
        self._response_decoder_made = False
        super().__init__()

    @property
    def enc(self) -> bytes:
        """RFC 9180 ``enc``, the encapsulated KEM share."""
        return self._enc

    def _header_bytes(self) -> bytes:
        return self._hdr + self._enc  # the Chunked Request Header (§4)

    def _seal_chunk(self, data: bytes, aad: bytes) -> bytes:
        # sctxt.Seal(aad, data) (§6.1)
        try:
            # ContextS.Seal uses and increments HPKE's seq (RFC 9180 §5.2): that orders the chunks.
            return self._context.seal(data, aad)
        except PyHPKEError:  # seq exhausted (RFC 9180 §5.2 MessageLimitReachedError)
            raise UsageError("too many chunks") from None

    def response_decoder(self) -> ChunkedResponseDecoder:
        """The decoder of the response to this request; once, after ``header()``.

        Normally used once the request is finished. Reading the response earlier is allowed (an
        early error response, say), but letting it shape the rest of the request makes the
        exchange interactive, with the privacy costs of §7.2.
        """
        if self._state == _HEADER:
            raise UsageError("header() first")
        if self._response_decoder_made:
            raise UsageError("one response decoder per request")
        self._response_decoder_made = True
        return ChunkedResponseDecoder(self._suite, self._context, self._enc)


class ChunkedRequestDecoder(_ChunkDecoder):
    """The gateway's side of a chunked request (§4, §6.1) under ``key``.

    The header is processed once the header and the first ``Nt`` bytes after it have arrived (every
    request holds at least a final chunk of ``Nt`` bytes), which is when ``enc`` becomes available.
    """

    def __init__(self, key: GatewayKey) -> None:
        super().__init__(REQUEST_HEADER.size, 0)
        self._key = key
        self._suite: Suite | None = None
        self._context: ContextInterface | None = None
        self._enc: bytes | None = None
        self._response_encoder_made = False

    @property
    def enc(self) -> bytes:
        """RFC 9180 ``enc``, the client's KEM share: unique per request, a replay cache key."""
        if self._enc is None:
            raise UsageError("the request header has not arrived yet")
        return self._enc

    def _header(self, header: bytes) -> bytes:
        if self._suite is None:
            # hdr is here: learn Nenc and Nt, then wait for enc and Nt more bytes, as much as
            # ohttp.setup_recipient requires after enc (it checks key id and algorithms itself).
            _key_id, kem_id, kdf_id, aead_id = REQUEST_HEADER.unpack(header)
            suite = Suite.of(kem_id, kdf_id, aead_id)
            self._suite, self._n_t = suite, suite.n_t
            self._max_ct = MAX_CHUNK_BYTES + suite.n_t
            self._need, self._buf = REQUEST_HEADER.size + suite.n_enc + suite.n_t, bytearray(header)
            return b""
        # SetupBaseR(enc, skR, info) (RFC 9180 §5.1.1), info as in §6.1; checks hdr (RFC 9458 §4.3).
        enc, rctxt, suite, rest = setup_recipient(self._key, header, _REQUEST_LABEL)
        self._enc, self._context, self._suite = enc, rctxt, suite
        self._state, self._need = _LENGTH, 1
        return rest  # the first Nt bytes after enc

    def _open(self, ct: bytes, *, final: bool) -> bytes:
        assert self._context is not None
        try:
            # ContextR.Open with HPKE's seq (RFC 9180 §5.2): a reordered, dropped or repeated chunk
            # is opened under the wrong nonce and fails.
            return self._context.open(ct, _FINAL_AAD if final else b"")
        except PyHPKEError:
            raise DecryptionError() from None

    def response_encoder(self, *, _response_nonce: bytes | None = None) -> ChunkedResponseEncoder:
        """The encoder of the response to this request; once, after the header has arrived.

        Normally used once ``finish()`` returned: an endpoint that acts on an unfinished request
        accepts the risks of §7.1 (truncation, replay of a prefix). ``_response_nonce`` is for test
        vectors only.
        """
        if self._context is None or self._suite is None or self._enc is None:
            raise UsageError("the request header has not arrived yet")
        if self._response_encoder_made:
            raise UsageError("one response encoder per request")
        encoder = ChunkedResponseEncoder(self._suite, self._context, self._enc, _response_nonce)
        self._response_encoder_made = True
        return encoder
