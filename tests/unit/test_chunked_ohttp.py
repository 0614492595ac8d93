"""Tests of chunked Oblivious HTTP (draft-ietf-ohai-chunked-ohttp-08): the draft's Appendix A example,
round trips split at random, tampering with chunks (reorder, drop, duplicate, truncate, extend, flip),
the finality marking, the chunk size limit and the decoders' bounded memory."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_infer.errors import DecryptionError, ProtocolError, UsageError
from enclave_infer.protocol import chunked_ohttp, ohttp
from enclave_infer.protocol.chunked_ohttp import (
    MAX_CHUNK_BYTES,
    MEDIA_TYPE_CHUNKED_REQUEST,
    MEDIA_TYPE_CHUNKED_RESPONSE,
    ChunkedRequestDecoder,
    ChunkedRequestEncoder,
    ChunkedResponseDecoder,
    ChunkedResponseEncoder,
)
from enclave_infer.protocol.ohttp import GatewayKey, KeyConfig

VECTOR = json.loads(
    (
        Path(__file__).parent.parent
        / "vectors/chunked-ohttp/draft-ietf-ohai-chunked-ohttp-08-appendix-a.json"
    ).read_text()
)


def _hex(name: str) -> bytes:
    """A vector value; the draft prints long values over several lines, kept as a list of lines."""
    return bytes.fromhex("".join(VECTOR[name]))


def _lines(name: str) -> list[bytes]:
    return [bytes.fromhex(line) for line in VECTOR[name]]


SK_R, SK_E = _hex("gateway_private_key_skR"), _hex("client_ephemeral_private_key_skE")
KEY_CONFIG = _hex("key_config")
REQUEST, RESPONSE = _hex("request_bhttp"), _hex("response_bhttp")
ENC_REQUEST, ENC_RESPONSE = _hex("encapsulated_request"), _hex("encapsulated_response")
RESPONSE_NONCE = _lines("encapsulated_response")[0]
HDR_LEN, N_ENC, N_T, N_N, RESPONSE_NONCE_LEN = 7, 32, 16, 12, 16
# What a decoder may hold: one chunk's ciphertext, the largest item it ever waits for.
MAX_BUFFERED = MAX_CHUNK_BYTES + N_T

KEY = GatewayKey.generate(key_id=9)  # for the tests with fresh keys; generating is cheap but not free


def _vector_key() -> GatewayKey:
    return GatewayKey.from_private_bytes(1, SK_R)


def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` cut into pieces of the given sizes (the last piece takes what remains)."""
    out, pos = [], 0
    for size in sizes:
        out.append(data[pos : pos + size])
        pos += size
    return [*out, data[pos:]]


def _vector_request_encoder(config: KeyConfig | None = None) -> ChunkedRequestEncoder:
    return ChunkedRequestEncoder(config or KeyConfig.decode(KEY_CONFIG), _ephemeral_private_key=SK_E)


def _decode_all(decoder: ChunkedRequestDecoder | ChunkedResponseDecoder, pieces: list[bytes]) -> list[bytes]:
    """Feed ``pieces``, then finish; return every plaintext chunk, the final one last."""
    out = []
    for piece in pieces:
        out += decoder.feed(piece)
    return [*out, decoder.finish()]


# -- draft-ietf-ohai-chunked-ohttp-08 Appendix A ---------------------------------------------------------


def test_vector_key_config_and_hpke_info() -> None:
    config = KeyConfig.decode(KEY_CONFIG)
    assert config.key_id == 1
    assert config.public_key == _vector_key().config.public_key
    assert config.encode() == KEY_CONFIG
    hdr = ENC_REQUEST[:HDR_LEN]
    assert hdr == bytes.fromhex("01 0020 0001 0001")
    # info = "message/bhttp chunked request" || 0x00 || hdr (§6.1)
    assert ohttp._request_info(chunked_ohttp._REQUEST_LABEL, hdr) == _hex("hpke_info")
    assert _vector_request_encoder().enc == _hex("client_ephemeral_public_key_pkE")


@pytest.mark.parametrize("use_draft_config", [True, False])
def test_vector_encapsulated_request(use_draft_config: bool) -> None:
    encoder = _vector_request_encoder(None if use_draft_config else _vector_key().config)
    sizes = VECTOR["request_chunk_plaintext_lengths"]
    assert sizes == [12, 13, 0]
    first, second, last = _split(REQUEST, sizes[:2])
    assert last == b""
    produced = [encoder.header(), encoder.chunk(first), encoder.chunk(second), encoder.final(last)]
    lines = _lines("encapsulated_request")  # hdr, enc, then one chunk a line
    assert produced == [lines[0] + lines[1], *lines[2:]]
    assert b"".join(produced) == ENC_REQUEST


@pytest.mark.parametrize("piece", [1, 7, len(ENC_REQUEST)])
def test_vector_gateway_decodes_request(piece: int) -> None:
    decoder = ChunkedRequestDecoder(_vector_key())
    pieces = [ENC_REQUEST[i : i + piece] for i in range(0, len(ENC_REQUEST), piece)]
    assert _decode_all(decoder, pieces) == [REQUEST[:12], REQUEST[12:], b""]
    assert decoder.finished
    assert decoder.enc == _hex("client_ephemeral_public_key_pkE")


def test_vector_response_key_schedule() -> None:
    _, enc, sctxt, suite = ohttp.setup_sender(
        KeyConfig.decode(KEY_CONFIG), chunked_ohttp._REQUEST_LABEL, SK_E
    )
    secret = ohttp.export_response_secret(sctxt, suite, chunked_ohttp._RESPONSE_LABEL)
    assert secret == _hex("exported_response_secret")
    assert enc + RESPONSE_NONCE == _hex("response_salt")
    assert HKDF.extract(hashes.SHA256(), enc + RESPONSE_NONCE, secret) == _hex("response_prk")
    aead_key, aead_nonce = ohttp.derive_response_key(suite, secret, enc, RESPONSE_NONCE)
    assert aead_key == _hex("response_aead_key")
    assert aead_nonce == _hex("response_aead_nonce")
    base = int.from_bytes(aead_nonce, "big")
    nonces = [chunked_ohttp._chunk_nonce(base, counter, N_N) for counter in range(3)]
    assert nonces == _lines("response_chunk_nonces")


def test_vector_encapsulated_response() -> None:
    gateway = ChunkedRequestDecoder(_vector_key())
    gateway.feed(ENC_REQUEST)
    gateway.finish()
    encoder = gateway.response_encoder(_response_nonce=RESPONSE_NONCE)
    sizes = VECTOR["response_chunk_plaintext_lengths"]
    assert sizes == [1, 2, 0]
    first, second, last = _split(RESPONSE, sizes[:2])
    produced = [encoder.header(), encoder.chunk(first), encoder.chunk(second), encoder.final(last)]
    assert produced == _lines("encapsulated_response")
    assert b"".join(produced) == ENC_RESPONSE


@pytest.mark.parametrize("piece", [1, 5, len(ENC_RESPONSE)])
def test_vector_client_decodes_response(piece: int) -> None:
    encoder = _vector_request_encoder()
    encoder.header()
    decoder = encoder.response_decoder()
    pieces = [ENC_RESPONSE[i : i + piece] for i in range(0, len(ENC_RESPONSE), piece)]
    assert _decode_all(decoder, pieces) == [RESPONSE[:1], RESPONSE[1:], b""]
    assert decoder.finished


def test_media_types_and_labels_differ_from_rfc_9458() -> None:
    assert (MEDIA_TYPE_CHUNKED_REQUEST, MEDIA_TYPE_CHUNKED_RESPONSE) == (
        "message/ohttp-chunked-req",
        "message/ohttp-chunked-res",
    )
    assert chunked_ohttp._REQUEST_LABEL == b"message/bhttp chunked request"
    assert chunked_ohttp._RESPONSE_LABEL == b"message/bhttp chunked response"


# -- Round trips with fresh keys -------------------------------------------------------------------------


def _encode_request(
    config: KeyConfig, chunks: list[bytes], final: bytes
) -> tuple[bytes, ChunkedRequestEncoder]:
    encoder = ChunkedRequestEncoder(config)
    message = encoder.header() + b"".join(encoder.chunk(c) for c in chunks) + encoder.final(final)
    return message, encoder


def _random_pieces(data: bytes, rng: random.Random, max_piece: int) -> list[bytes]:
    pieces, pos = [], 0
    while pos < len(data):
        size = rng.randint(1, max_piece)
        pieces.append(data[pos : pos + size])
        pos += size
    return pieces


chunk_lists = st.lists(st.binary(min_size=1, max_size=300), max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    request_chunks=chunk_lists,
    request_final=st.binary(max_size=300),
    response_chunks=chunk_lists,
    response_final=st.binary(max_size=300),
    seed=st.integers(0, 2**32),
    max_piece=st.integers(1, 700),
)
def test_round_trip_random_splits(
    request_chunks: list[bytes],
    request_final: bytes,
    response_chunks: list[bytes],
    response_final: bytes,
    seed: int,
    max_piece: int,
) -> None:
    rng = random.Random(seed)
    message, client = _encode_request(KEY.config, request_chunks, request_final)
    gateway = ChunkedRequestDecoder(KEY)
    assert _decode_all(gateway, _random_pieces(message, rng, max_piece)) == [*request_chunks, request_final]
    assert gateway.enc == client.enc

    encoder = gateway.response_encoder()
    response = encoder.header() + b"".join(encoder.chunk(c) for c in response_chunks)
    response += encoder.final(response_final)
    decoder = client.response_decoder()
    assert _decode_all(decoder, _random_pieces(response, rng, max_piece)) == [
        *response_chunks,
        response_final,
    ]


def test_empty_body() -> None:
    message, client = _encode_request(KEY.config, [], b"")
    assert len(message) == HDR_LEN + N_ENC + 1 + N_T
    gateway = ChunkedRequestDecoder(KEY)
    assert gateway.feed(message) == []
    assert not gateway.finished
    assert gateway.finish() == b""
    assert gateway.finished
    encoder = gateway.response_encoder()
    response = encoder.header() + encoder.final()
    assert len(response) == RESPONSE_NONCE_LEN + 1 + N_T
    decoder = client.response_decoder()
    assert decoder.feed(response) == []
    assert decoder.finish() == b""


def test_single_final_chunk() -> None:
    message, client = _encode_request(KEY.config, [], b"the whole request")
    assert message[HDR_LEN + N_ENC] == 0  # the Final Chunk Indicator right after the header
    gateway = ChunkedRequestDecoder(KEY)
    assert _decode_all(gateway, [message]) == [b"the whole request"]
    encoder = gateway.response_encoder()
    response = encoder.header() + encoder.final(b"the whole response")
    assert _decode_all(client.response_decoder(), [response]) == [b"the whole response"]


def test_many_chunks() -> None:
    chunks = [i.to_bytes(2, "big") * (1 + i % 5) for i in range(2000)]
    message, client = _encode_request(KEY.config, chunks, b"end")
    gateway = ChunkedRequestDecoder(KEY)
    assert _decode_all(gateway, [message]) == [*chunks, b"end"]
    encoder = gateway.response_encoder()
    response = encoder.header() + b"".join(encoder.chunk(c) for c in chunks) + encoder.final()
    assert _decode_all(client.response_decoder(), [response]) == [*chunks, b""]


def test_chunks_come_out_as_soon_as_complete() -> None:
    encoder = ChunkedRequestEncoder(KEY.config)
    header, first, second = encoder.header(), encoder.chunk(b"first"), encoder.chunk(b"second")
    decoder = ChunkedRequestDecoder(KEY)
    assert decoder.feed(header) == []
    assert decoder.feed(first[:-1]) == []
    assert decoder.feed(first[-1:]) == [b"first"]  # without waiting for the next length
    assert decoder.feed(second) == [b"second"]
    assert decoder.buffered == 0


def test_enc_is_available_once_the_header_arrived() -> None:
    message, client = _encode_request(KEY.config, [b"x"], b"")
    decoder = ChunkedRequestDecoder(KEY)
    decoder.feed(message[: HDR_LEN + N_ENC])
    with pytest.raises(UsageError):
        _ = decoder.enc
    decoder.feed(message[HDR_LEN + N_ENC : HDR_LEN + N_ENC + N_T])
    assert decoder.enc == client.enc == message[HDR_LEN : HDR_LEN + N_ENC]


def test_lengths_in_longer_encodings_are_accepted() -> None:
    """§6: the framing is not authenticated; any encoding of a length is valid, the final 0 too."""
    encoder = ChunkedRequestEncoder(KEY.config)
    header, chunk, final = encoder.header(), encoder.chunk(b"data"), encoder.final(b"end")
    ct_len = len(chunk) - 1
    long_chunk = (0xC0 << 56 | ct_len).to_bytes(8, "big") + chunk[1:]
    message = header + long_chunk + bytes.fromhex("4000") + final[1:]
    assert _decode_all(ChunkedRequestDecoder(KEY), [message]) == [b"data", b"end"]


def test_responses_use_fresh_nonces() -> None:
    message, _ = _encode_request(KEY.config, [], b"")
    encoders = []
    for _ in range(2):
        gateway = ChunkedRequestDecoder(KEY)
        gateway.feed(message)
        gateway.finish()
        encoders.append(gateway.response_encoder())
    assert encoders[0].header() != encoders[1].header()
    assert encoders[0].final(b"same") != encoders[1].final(b"same")


# -- Tampering with chunks -------------------------------------------------------------------------------


def _framed_request() -> tuple[bytes, list[bytes], bytes, ChunkedRequestEncoder]:
    """A request as (hdr || enc, [three non-final chunks], final chunk, the client)."""
    encoder = ChunkedRequestEncoder(KEY.config)
    header = encoder.header()
    chunks = [encoder.chunk(data) for data in (b"alpha", b"bravo", b"charlie")]
    return header, chunks, encoder.final(b"delta"), encoder


def _framed_response() -> tuple[bytes, list[bytes], bytes, Callable[[], ChunkedResponseDecoder]]:
    """A response as (response nonce, [three non-final chunks], final chunk, a decoder factory)."""
    header, chunks, final, client = _framed_request()
    gateway = ChunkedRequestDecoder(KEY)
    gateway.feed(header + b"".join(chunks) + final)
    gateway.finish()
    encoder = gateway.response_encoder()
    nonce = encoder.header()
    response_chunks = [encoder.chunk(data) for data in (b"one", b"two", b"three")]
    response_final = encoder.final(b"four")
    decoders = iter([client.response_decoder()])
    return nonce, response_chunks, response_final, lambda: next(decoders)


def _request_decoder() -> ChunkedRequestDecoder:
    return ChunkedRequestDecoder(KEY)


TAMPERINGS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "reorder": lambda c: [c[1], c[0], c[2]],
    "drop": lambda c: [c[0], c[2]],
    "duplicate": lambda c: [c[0], c[0], c[1], c[2]],
    "drop-first": lambda c: c[1:],
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_reordered_dropped_or_duplicated_request_chunks(name: str) -> None:
    header, chunks, final, _ = _framed_request()
    decoder = _request_decoder()
    with pytest.raises(DecryptionError):
        _decode_all(decoder, [header, *TAMPERINGS[name](chunks), final])


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_reordered_dropped_or_duplicated_response_chunks(name: str) -> None:
    nonce, chunks, final, decoder = _framed_response()
    with pytest.raises(DecryptionError):
        _decode_all(decoder(), [nonce, *TAMPERINGS[name](chunks), final])


def test_dropping_the_last_non_final_chunk_is_detected_by_the_final_chunk() -> None:
    header, chunks, final, _ = _framed_request()
    decoder = _request_decoder()
    assert decoder.feed(header + chunks[0] + chunks[1]) == [b"alpha", b"bravo"]
    decoder.feed(final)
    with pytest.raises(DecryptionError):  # the final chunk is opened under the wrong sequence number
        decoder.finish()


def test_truncated_before_the_final_chunk() -> None:
    header, chunks, _, _ = _framed_request()
    decoder = _request_decoder()
    assert decoder.feed(header + b"".join(chunks)) == [b"alpha", b"bravo", b"charlie"]
    assert not decoder.finished
    with pytest.raises(ProtocolError, match=r"^truncated$") as excinfo:
        decoder.finish()
    assert type(excinfo.value) is ProtocolError

    nonce, response_chunks, _, response_decoder = _framed_response()
    client = response_decoder()
    assert len(client.feed(nonce + b"".join(response_chunks))) == 3
    with pytest.raises(ProtocolError, match=r"^truncated$"):
        client.finish()


def test_every_truncation_is_detected() -> None:
    header, chunks, final, _ = _framed_request()
    message = header + b"".join(chunks) + final
    for n in range(len(message)):
        decoder = _request_decoder()
        with pytest.raises(ProtocolError) as excinfo:
            _decode_all(decoder, [message[:n]])
        # Inside the final chunk's ciphertext (past its first Nt bytes), the tag check fails;
        # anywhere before that, the stream is short of a final chunk.
        expected = DecryptionError if n >= len(message) - len(final) + 1 + N_T else ProtocolError
        assert type(excinfo.value) is expected, n
        if expected is ProtocolError:
            assert str(excinfo.value) == "truncated" or n < HDR_LEN + N_ENC + N_T


@pytest.mark.parametrize("extra", [b"\x00", b"\x01", b"more bytes after the end"])
def test_bytes_after_the_final_chunk(extra: bytes) -> None:
    """The final chunk runs to the end of the stream (§4, §5): appended bytes join it and break its tag."""
    header, chunks, final, _ = _framed_request()
    decoder = _request_decoder()
    decoder.feed(header + b"".join(chunks) + final)
    decoder.feed(extra)
    with pytest.raises(DecryptionError):
        decoder.finish()

    nonce, response_chunks, response_final, response_decoder = _framed_response()
    client = response_decoder()
    client.feed(nonce + b"".join(response_chunks) + response_final + extra)
    with pytest.raises(DecryptionError):
        client.finish()


def _flips(data: bytes) -> Iterator[bytes]:
    """Every copy of ``data`` with exactly one bit flipped."""
    for i, byte in enumerate(data):
        for bit in range(8):
            yield data[:i] + bytes([byte ^ (1 << bit)]) + data[i + 1 :]


def test_every_bit_flip_of_the_vector_request_is_detected() -> None:
    key = _vector_key()
    for tampered in _flips(ENC_REQUEST):
        with pytest.raises(ProtocolError):  # DecryptionError, or framing/header errors
            _decode_all(ChunkedRequestDecoder(key), [tampered])


def test_every_bit_flip_of_the_vector_response_is_detected() -> None:
    for tampered in _flips(ENC_RESPONSE):
        encoder = _vector_request_encoder()
        encoder.header()
        with pytest.raises(ProtocolError):
            _decode_all(encoder.response_decoder(), [tampered])


def test_every_bit_flip_of_a_chunk_body_is_a_decryption_error() -> None:
    header, chunks, final, _ = _framed_request()
    for index in range(len(chunks)):
        for flipped in _flips(chunks[index][1:]):  # the ciphertext, not its length
            tampered = [*chunks[:index], chunks[index][:1] + flipped, *chunks[index + 1 :]]
            with pytest.raises(DecryptionError):
                _decode_all(_request_decoder(), [header, *tampered, final])
    for flipped in _flips(final[1:]):
        with pytest.raises(DecryptionError):
            _decode_all(_request_decoder(), [header, *chunks, final[:1] + flipped])


def test_a_non_final_chunk_is_not_accepted_as_final() -> None:
    """The AAD "final" (§6) marks the last chunk: relabelling a chunk in the framing fails."""
    header, chunks, final, _ = _framed_request()
    # A relay cuts the request after chunk 2 and presents chunk 2 as the final chunk.
    decoder = _request_decoder()
    assert decoder.feed(header + chunks[0] + b"\x00" + chunks[1][1:]) == [b"alpha"]
    with pytest.raises(DecryptionError):
        decoder.finish()
    # And the other way: the final chunk framed as a non-final one, then an empty final chunk.
    decoder = _request_decoder()
    relabelled = bytes([len(final) - 1]) + final[1:]
    with pytest.raises(DecryptionError):
        _decode_all(decoder, [header, *chunks, relabelled])

    nonce, response_chunks, _, response_decoder = _framed_response()
    client = response_decoder()
    client.feed(nonce + response_chunks[0] + b"\x00" + response_chunks[1][1:])
    with pytest.raises(DecryptionError):
        client.finish()


def test_an_empty_non_final_chunk_is_a_decryption_error() -> None:
    """§6: "A receiver MUST treat the receipt of a chunk that contains no data as equivalent to a
    decryption error, unless that chunk is the final chunk" -- even when it authenticates."""
    encoder = ChunkedRequestEncoder(KEY.config)
    header = encoder.header()
    empty = encoder._context.seal(b"", b"")  # what a misbehaving sender would send
    assert len(empty) == N_T
    decoder = _request_decoder()
    decoder.feed(header)
    with pytest.raises(DecryptionError):
        decoder.feed(bytes([N_T]) + empty)
    with pytest.raises(UsageError):
        encoder.chunk(b"")


def test_chunks_shorter_than_the_tag_are_malformed() -> None:
    header, chunks, _, _ = _framed_request()
    for length in range(1, N_T):
        decoder = _request_decoder()
        assert decoder.feed(header + chunks[0]) == [b"alpha"]
        with pytest.raises(ProtocolError, match="too short"):
            decoder.feed(bytes([length]))


def test_wrong_key_and_unknown_key_id() -> None:
    message, _ = _encode_request(KEY.config, [b"data"], b"")
    with pytest.raises(ProtocolError, match="unknown key id 9"):
        ChunkedRequestDecoder(GatewayKey.generate(key_id=1)).feed(message)
    with pytest.raises(DecryptionError) as excinfo:
        ChunkedRequestDecoder(GatewayKey.generate(key_id=9)).feed(message)  # same id, another key
    assert str(excinfo.value) == "decryption failed"
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


def test_unsupported_algorithms_in_the_header() -> None:
    message, _ = _encode_request(KEY.config, [], b"")
    with pytest.raises(ProtocolError, match="unsupported"):
        _request_decoder().feed(message[:1] + bytes.fromhex("0020 0001 0003") + message[HDR_LEN:])


def test_a_non_chunked_request_is_not_a_chunked_one() -> None:
    """Distinct HPKE labels (§6.1): an RFC 9458 request never opens as a chunked one."""
    enc_request, _ = ohttp.encapsulate_request(KEY.config, b"x" * 40)
    with pytest.raises(ProtocolError):
        _decode_all(_request_decoder(), [enc_request])


# -- Limits and memory -----------------------------------------------------------------------------------


def test_chunk_size_limit() -> None:
    assert MAX_CHUNK_BYTES >= 2**14  # §3: receivers MUST accept chunks of 2^14 bytes
    big = bytes(MAX_CHUNK_BYTES)
    message, _ = _encode_request(KEY.config, [big], big)
    gateway = _request_decoder()
    assert _decode_all(gateway, [message]) == [big, big]
    encoder = ChunkedRequestEncoder(KEY.config)
    encoder.header()
    with pytest.raises(UsageError):
        encoder.chunk(big + b"!")
    with pytest.raises(UsageError):
        encoder.final(big + b"!")
    response = gateway.response_encoder()
    response.header()
    with pytest.raises(UsageError):
        response.chunk(big + b"!")


@pytest.mark.parametrize("announced", [MAX_CHUNK_BYTES + N_T + 1, 2**30 - 1, 2**62 - 1])
def test_an_oversized_chunk_is_refused_before_buffering(announced: int) -> None:
    header, chunks, _, _ = _framed_request()
    decoder = _request_decoder()
    assert decoder.feed(header + chunks[0]) == [b"alpha"]
    length = chunked_ohttp._encode_varint(announced)
    decoder.feed(length[:-1])
    assert decoder.buffered < 8
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decoder.feed(length[-1:] + b"\x00" * 1000)
    assert decoder.buffered == 0

    nonce, _, _, response_decoder = _framed_response()
    client = response_decoder()
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        client.feed(nonce + length)


def test_the_largest_allowed_chunk_is_waited_for() -> None:
    header, _, _, _ = _framed_request()
    decoder = _request_decoder()
    assert decoder.feed(header + chunked_ohttp._encode_varint(MAX_BUFFERED) + b"\x00" * 100) == []
    assert decoder.buffered == 100


def test_an_oversized_final_chunk_is_refused() -> None:
    header, _, _, _ = _framed_request()
    decoder = _request_decoder()
    decoder.feed(header + b"\x00" + bytes(MAX_BUFFERED))
    assert decoder.buffered == MAX_BUFFERED
    with pytest.raises(ProtocolError, match="final chunk too long"):
        decoder.feed(b"\x00")
    assert decoder.buffered == 0


def _stream(total: int, chunk_sizes: list[int]) -> Iterator[tuple[bytes, int]]:
    """Plaintext chunks of ``total`` bytes, cycling through ``chunk_sizes``; each with its size."""
    i, sent = 0, 0
    while sent < total:
        size = min(chunk_sizes[i % len(chunk_sizes)], total - sent)
        yield bytes([i % 251]) * size, size
        sent, i = sent + size, i + 1


def _pieces(parts: Iterator[bytes], piece: int) -> Iterator[bytes]:
    """Re-cut a stream of byte strings into pieces of ``piece`` bytes, as a socket would deliver."""
    pending = bytearray()
    for part in parts:
        pending += part
        while len(pending) >= piece:
            yield bytes(pending[:piece])
            del pending[:piece]
    if pending:
        yield bytes(pending)


@pytest.mark.parametrize("piece", [64 * 1024, 64 * 1024 + 17])
def test_memory_stays_bounded_over_a_20_mb_stream(piece: int) -> None:
    total = 20 * 1024 * 1024
    sizes = [MAX_CHUNK_BYTES, 1, 64 * 1024, MAX_CHUNK_BYTES - 1, 3 * 1024 + 5]
    encoder = ChunkedRequestEncoder(KEY.config)

    def request() -> Iterator[bytes]:
        yield encoder.header()
        for data, _ in _stream(total, sizes):
            yield encoder.chunk(data)
        yield encoder.final(bytes(MAX_CHUNK_BYTES))  # the largest final chunk, buffered whole

    gateway = ChunkedRequestDecoder(KEY)
    received, largest = 0, 0
    for part in _pieces(request(), piece):
        received += sum(map(len, gateway.feed(part)))
        largest = max(largest, gateway.buffered)
    assert largest <= MAX_BUFFERED
    assert largest > MAX_CHUNK_BYTES  # the test did reach the bound
    assert received == total
    assert len(gateway.finish()) == MAX_CHUNK_BYTES

    response_encoder = gateway.response_encoder()

    def response() -> Iterator[bytes]:
        yield response_encoder.header()
        for data, _ in _stream(total, sizes):
            yield response_encoder.chunk(data)
        yield response_encoder.final()

    client = encoder.response_decoder()
    received, largest = 0, 0
    for part in _pieces(response(), piece):
        received += sum(map(len, client.feed(part)))
        largest = max(largest, client.buffered)
    assert largest <= MAX_BUFFERED
    assert received == total
    assert client.finish() == b""


def test_one_large_feed_is_not_buffered() -> None:
    """Chunks wholly inside one ``feed`` are opened in place: nothing is copied to the buffer."""
    chunks = [bytes([i]) * 100_000 for i in range(50)]
    message, _ = _encode_request(KEY.config, chunks, b"")
    decoder = _request_decoder()
    assert decoder.feed(message) == chunks
    assert decoder.buffered == N_T  # the final chunk so far: only the end of the stream completes it
    assert decoder.finish() == b""


# -- Misuse of the API -----------------------------------------------------------------------------------


def test_encoder_call_order() -> None:
    encoder = ChunkedRequestEncoder(KEY.config)
    with pytest.raises(UsageError):
        encoder.chunk(b"x")
    with pytest.raises(UsageError):
        encoder.final()
    with pytest.raises(UsageError):
        encoder.response_decoder()
    encoder.header()
    with pytest.raises(UsageError):
        encoder.header()
    encoder.final()
    with pytest.raises(UsageError):
        encoder.chunk(b"x")
    with pytest.raises(UsageError):
        encoder.final()
    encoder.response_decoder()
    with pytest.raises(UsageError):
        encoder.response_decoder()


def test_response_encoder_call_order() -> None:
    message, _ = _encode_request(KEY.config, [], b"")
    gateway = _request_decoder()
    with pytest.raises(UsageError):
        gateway.response_encoder()
    gateway.feed(message)
    encoder = gateway.response_encoder()
    with pytest.raises(UsageError):
        gateway.response_encoder()
    with pytest.raises(UsageError):
        encoder.chunk(b"x")
    encoder.header()
    with pytest.raises(UsageError):
        encoder.header()
    with pytest.raises(UsageError):
        encoder.chunk(b"")
    encoder.final()
    with pytest.raises(UsageError):
        encoder.final()
    with pytest.raises(UsageError):
        gateway.response_encoder(_response_nonce=b"short")  # made once already, whatever the nonce
    other = _request_decoder()
    other.feed(message)
    with pytest.raises(UsageError):
        other.response_encoder(_response_nonce=b"short")


def test_decoders_are_dead_after_finish_or_failure() -> None:
    message, _ = _encode_request(KEY.config, [b"x"], b"")
    decoder = _request_decoder()
    decoder.feed(message)
    decoder.finish()
    with pytest.raises(UsageError):
        decoder.feed(b"")
    with pytest.raises(UsageError):
        decoder.finish()

    failed = _request_decoder()
    at = HDR_LEN + N_ENC + 1  # the first byte of the first chunk's ciphertext
    with pytest.raises(DecryptionError):
        failed.feed(message[:at] + bytes([message[at] ^ 1]) + message[at + 1 :])
    assert not failed.finished
    with pytest.raises(UsageError):
        failed.feed(b"")
    with pytest.raises(UsageError):
        failed.finish()


def test_response_encoder_type() -> None:
    message, _ = _encode_request(KEY.config, [], b"")
    gateway = _request_decoder()
    gateway.feed(message)
    assert isinstance(gateway.response_encoder(), ChunkedResponseEncoder)
