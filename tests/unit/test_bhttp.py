"""Tests of the RFC 9292 (Binary HTTP) codec: the RFC's own examples, round trips, and rejections."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave_infer.errors import ProtocolError
from enclave_infer.protocol import bhttp

# The RFC 9292 §5 examples, as printed in the RFC (four-byte groups, ASCII column dropped).
# Source: the RFC's own source text, draft-ietf-httpbis-binary-message.md (front matter
# "number: 9292") in github.com/httpwg/http-extensions, commit 6d77a3dc8ee4c9387443bbdf8844672f28e3b5e7.

# RFC 9292 §5.1, Figure 8: "Known-Length Binary Encoding of Request" (135 bytes).
FIGURE_8 = bytes.fromhex("""
    00034745 54056874 74707300 0a2f6865 6c6c6f2e 74787440 6c0a7573 65722d61
    67656e74 34637572 6c2f372e 31362e33 206c6962 6375726c 2f372e31 362e3320
    4f70656e 53534c2f 302e392e 376c207a 6c69622f 312e322e 3304686f 73740f77
    77772e65 78616d70 6c652e63 6f6d0f61 63636570 742d6c61 6e677561 67650665
    6e2c206d 690000
""")

# RFC 9292 §5.1, Figure 9: "Indeterminate-Length Binary Encoding of Request", with 10 bytes of
# padding (144 bytes).
FIGURE_9 = bytes.fromhex("""
    02034745 54056874 74707300 0a2f6865 6c6c6f2e 7478740a 75736572 2d616765
    6e743463 75726c2f 372e3136 2e33206c 69626375 726c2f37 2e31362e 33204f70
    656e5353 4c2f302e 392e376c 207a6c69 622f312e 322e3304 686f7374 0f777777
    2e657861 6d706c65 2e636f6d 0f616363 6570742d 6c616e67 75616765 06656e2c
    206d6900 00000000 00000000 00000000
""")

# RFC 9292 §5.2, Figure 11: "Binary Response, including Informational Responses" (368 bytes).
FIGURE_11 = bytes.fromhex("""
    03406607 72756e6e 696e670a 22736c65 65702031 35220040 67046c69 6e6b233c
    2f737479 6c652e63 73733e3b 2072656c 3d707265 6c6f6164 3b206173 3d737479
    6c65046c 696e6b24 3c2f7363 72697074 2e6a733e 3b207265 6c3d7072 656c6f61
    643b2061 733d7363 72697074 0040c804 64617465 1d4d6f6e 2c203237 204a756c
    20323030 39203132 3a32383a 35332047 4d540673 65727665 72064170 61636865
    0d6c6173 742d6d6f 64696669 65641d57 65642c20 3232204a 756c2032 30303920
    31393a31 353a3536 20474d54 04657461 67142233 34616133 38372d64 2d313536
    38656230 30220d61 63636570 742d7261 6e676573 05627974 65730e63 6f6e7465
    6e742d6c 656e6774 68023531 04766172 790f4163 63657074 2d456e63 6f64696e
    670c636f 6e74656e 742d7479 70650a74 6578742f 706c6169 6e003348 656c6c6f
    20576f72 6c642120 4d792063 6f6e7465 6e742069 6e636c75 64657320 61207472
    61696c69 6e672043 524c462e 0d0a0000
""")

# RFC 9292 §5.2, Figure 13: "Known-Length Encoding of Response" (48 bytes), the chunked
# response of Figure 12 with its trailer.
FIGURE_13 = bytes.fromhex("""
    0140c800 1d546869 7320636f 6e74656e 7420636f 6e746169 6e732043 524c462e
    0d0a0d07 74726169 6c657204 74657874
""")

# RFC 9292 §5.1, Figure 7: the request all of Figures 8 and 9 encode.
RFC_REQUEST = bhttp.Request(
    method="GET",
    scheme="https",
    authority="",
    path="/hello.txt",
    headers=(
        ("user-agent", "curl/7.16.3 libcurl/7.16.3 OpenSSL/0.9.7l zlib/1.2.3"),
        ("host", "www.example.com"),
        ("accept-language", "en, mi"),
    ),
)

# RFC 9292 §5.2, Figure 10: the response Figure 11 encodes (reason phrases are not kept).
RFC_RESPONSE = bhttp.Response(
    status=200,
    informational=(
        bhttp.InformationalResponse(102, (("running", '"sleep 15"'),)),
        bhttp.InformationalResponse(
            103,
            (
                ("link", "</style.css>; rel=preload; as=style"),
                ("link", "</script.js>; rel=preload; as=script"),
            ),
        ),
    ),
    headers=(
        ("date", "Mon, 27 Jul 2009 12:28:53 GMT"),
        ("server", "Apache"),
        ("last-modified", "Wed, 22 Jul 2009 19:15:56 GMT"),
        ("etag", '"34aa387-d-1568eb00"'),
        ("accept-ranges", "bytes"),
        ("content-length", "51"),
        ("vary", "Accept-Encoding"),
        ("content-type", "text/plain"),
    ),
    content=b"Hello World! My content includes a trailing CRLF.\r\n",
)

# RFC 9292 §5.2, Figure 12: the chunked response Figure 13 encodes.
RFC_CHUNKED_RESPONSE = bhttp.Response(
    status=200, content=b"This content contains CRLF.\r\n", trailers=(("trailer", "text"),)
)


# -- RFC 9292 §5 examples --


def test_vectors_have_the_rfc_lengths() -> None:
    assert [len(v) for v in (FIGURE_8, FIGURE_9, FIGURE_11, FIGURE_13)] == [135, 144, 368, 48]


def test_figure_8_known_length_request() -> None:
    req = bhttp.decode_request(FIGURE_8)
    assert req == RFC_REQUEST
    assert req.header("Host") == "www.example.com"
    assert req.header("ACCEPT-LANGUAGE") == "en, mi"
    assert req.header("cookie") is None
    assert bhttp.encode_request(req) == FIGURE_8


def test_figure_9_indeterminate_length_request_with_padding() -> None:
    assert bhttp.decode_request(FIGURE_9) == RFC_REQUEST
    assert bhttp.encode_request(bhttp.decode_request(FIGURE_9)) == FIGURE_8


def test_figure_11_indeterminate_length_response_with_informational() -> None:
    resp = bhttp.decode_response(FIGURE_11)
    assert resp == RFC_RESPONSE
    assert [info.status for info in resp.informational] == [102, 103]
    assert resp.header("Content-Length") == "51"
    # The RFC gives no known-length form of this response; ours must at least read back.
    assert bhttp.decode_response(bhttp.encode_response(resp)) == resp


def test_figure_13_known_length_response() -> None:
    resp = bhttp.decode_response(FIGURE_13)
    assert resp == RFC_CHUNKED_RESPONSE
    assert bhttp.encode_response(resp) == FIGURE_13


# -- Truncation and padding (RFC 9292 §3.8) --


@pytest.mark.parametrize("cut", [1, 2])
def test_known_length_request_truncated_as_the_rfc_says(cut: int) -> None:
    # §5.1: "the last two bytes ... can each be removed without altering the semantics".
    assert bhttp.decode_request(FIGURE_8[:-cut]) == RFC_REQUEST


@pytest.mark.parametrize("cut", range(13))
def test_indeterminate_request_truncated_as_the_rfc_says(cut: int) -> None:
    # §5.1: "anything up to 12 bytes can be removed from this message without affecting its meaning".
    assert bhttp.decode_request(FIGURE_9[: len(FIGURE_9) - cut]) == RFC_REQUEST


def test_truncating_into_the_header_section_is_invalid() -> None:
    # 13 bytes cut from Figure 9 removes the header section's terminator; 3 from Figure 8
    # cuts a field value short.
    with pytest.raises(ProtocolError):
        bhttp.decode_request(FIGURE_9[:-13])
    with pytest.raises(ProtocolError):
        bhttp.decode_request(FIGURE_8[:-3])


def test_missing_header_section_is_invalid() -> None:
    # §3.8 permits omitting only the trailer section and then the content.
    with pytest.raises(ProtocolError):
        bhttp.decode_request(b"\x00\x03GET\x05https\x01a\x01/")
    with pytest.raises(ProtocolError):
        bhttp.decode_response(b"\x01\x40\xc8")


def test_truncated_response_trailers_and_content() -> None:
    assert bhttp.decode_response(b"\x01\x40\xc8\x00") == bhttp.Response(200)
    assert bhttp.decode_response(b"\x01\x40\xc8\x00\x02hi") == bhttp.Response(200, content=b"hi")
    assert bhttp.decode_response(b"\x03\x40\xc8\x00\x02hi\x00") == bhttp.Response(200, content=b"hi")


@pytest.mark.parametrize("padding", [1, 7, 1000])
def test_zero_padding_is_ignored(padding: int) -> None:
    assert bhttp.decode_request(FIGURE_8 + bytes(padding)) == RFC_REQUEST
    assert bhttp.decode_response(FIGURE_11 + bytes(padding)) == RFC_RESPONSE
    assert bhttp.decode_response(FIGURE_13 + bytes(padding)) == RFC_CHUNKED_RESPONSE


@pytest.mark.parametrize("tail", [b"\x01", b"\x00\x00\x80", b"\x00" * 5 + b"\xff"])
def test_non_zero_padding_is_invalid(tail: bytes) -> None:
    with pytest.raises(ProtocolError, match="non-zero"):
        bhttp.decode_request(FIGURE_8 + tail)
    with pytest.raises(ProtocolError, match="non-zero"):
        bhttp.decode_request(FIGURE_9 + tail)


def test_non_minimal_integers_are_accepted() -> None:
    # RFC 9292 §3: integers "do not need to be encoded on the minimum number of bytes".
    assert bhttp.decode_request(b"\x40\x00" + FIGURE_8[1:]) == RFC_REQUEST
    assert bhttp.decode_response(b"\x01\x80\x00\x00\xc8" + FIGURE_13[3:]) == RFC_CHUNKED_RESPONSE


# -- Variable-length integers (RFC 9000 §16; examples from RFC 9000 Appendix A.1) --


@pytest.mark.parametrize(
    ("encoded", "value"),
    [("c2197c5eff14e88c", 151288809941952652), ("9d7f3e7d", 494878333), ("7bbd", 15293), ("25", 37)],
)
def test_varint_rfc_9000_examples(encoded: str, value: int) -> None:
    assert bhttp._encode_varint(value) == bytes.fromhex(encoded)
    assert bhttp._decode_varint(bytes.fromhex(encoded), 0) == (value, len(encoded) // 2)


def test_varint_non_minimal_and_bounds() -> None:
    assert bhttp._decode_varint(bytes.fromhex("4025"), 0) == (37, 2)  # RFC 9000 Appendix A.1
    for value in (0, 63, 64, 16383, 16384, 2**30 - 1, 2**30, 2**62 - 1):
        encoded = bhttp._encode_varint(value)
        assert bhttp._decode_varint(b"xx" + encoded, 2) == (value, 2 + len(encoded))
    for bad in (-1, 2**62):
        with pytest.raises(ProtocolError):
            bhttp._encode_varint(bad)


# -- Malformed input --


def _request_with_header_line(name: bytes, value: bytes) -> bytes:
    line = bhttp._encode_varint(len(name)) + name + bhttp._encode_varint(len(value)) + value
    return b"\x00\x03GET\x05https\x00\x01/" + bhttp._encode_varint(len(line)) + line


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated"),
        (b"\x40", "truncated"),  # two-byte framing indicator, one byte present
        (b"\x00\x03GET\x05https\x00\x01/\x80\x00", "truncated"),  # four-byte section length cut short
        (b"\x00\x03GET\x05https\x00\x09/", "past the end"),  # path length > remaining bytes
        (b"\x00\x03GET\x05https\x00\x01/\x05\x01a", "past the end"),  # header section too long
        (b"\x00\x03GET\x05https\x00\x01/\x00\x3f\x00", "past the end"),  # content too long
        (b"\x02\x03GET\x05https\x00\x01/\x00\x05ab", "past the end"),  # content chunk too long
        (b"\x02\x03GET\x05https\x00\x01/\x00\x02ab", "truncated"),  # no content terminator
        (b"\x04", "framing indicator"),
        (b"\x01\x40\xc8\x00\x00\x00", "expected a request"),
        (b"\x03G\x05https\x00\x01/\x00", "expected a request"),
        (b"\x00\x00\x05https\x00\x01/\x00", "method"),  # empty method
        (b"\x00\x04GE T\x05https\x00\x01/\x00", "method"),
        (b"\x00\x03GET\x05https\x00\x02/\n\x00", "path"),
        (b"\x00\x03GET\x05ht\xfftp\x00\x01/\x00", "scheme"),
        (_request_with_header_line(b"Host", b"x"), "field name"),
        (_request_with_header_line(b":path", b"/"), "field name"),  # §3.6: pseudo-field
        (_request_with_header_line(b"a b", b"x"), "field name"),
        (_request_with_header_line(b"host", b"a\r\nb: c"), "field value"),
        (_request_with_header_line(b"host", b"a\x00"), "field value"),
        (_request_with_header_line(b"host", b" a"), "field value"),
        (b"\x00\x03GET\x05https\x00\x01/\x02\x00\x00", "empty field name"),
    ],
)
def test_malformed_request(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        bhttp.decode_request(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x40\x63\x00",  # 99
        b"\x01\x42\x58\x00",  # 600
        b"\x01\x00\x00",  # 0
        b"\x01\x40\x66\x00\x40\x63\x00",  # informational 102, then 99
        b"\x01\x40\x66\x00",  # informational response, then nothing
        b"\x01\x40\x66",  # informational response without its header section
    ],
)
def test_bad_status_or_structure(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        bhttp.decode_response(data)


def test_field_limits() -> None:
    many = tuple((f"x-{i}", "v") for i in range(bhttp.MAX_FIELDS + 1))
    with pytest.raises(ProtocolError, match="more than"):
        bhttp.encode_request(bhttp.Request("GET", "https", "a", "/", headers=many))
    ok = bhttp.encode_request(bhttp.Request("GET", "https", "a", "/", headers=many[:-1]))
    assert len(bhttp.decode_request(ok).headers) == bhttp.MAX_FIELDS
    indeterminate = b"\x02\x03GET\x05https\x01a\x01/" + b"\x01x\x00" * (bhttp.MAX_FIELDS + 1) + b"\x00"
    with pytest.raises(ProtocolError, match="more than"):
        bhttp.decode_request(indeterminate)
    known = b"\x01" + b"\x40\x64\x00" * (bhttp.MAX_INFORMATIONAL + 1) + b"\x40\xc8\x00"
    with pytest.raises(ProtocolError, match="informational"):
        bhttp.decode_response(known)


@pytest.mark.parametrize(
    "req",
    [
        bhttp.Request("GET", "https", "a", "/", headers=(("Host", "a"),)),
        bhttp.Request("GET", "https", "a", "/", headers=(("host", "a\nb"),)),
        bhttp.Request("GET", "https", "a", "/", headers=(("host", "€"),)),
        bhttp.Request("GET", "https", "a", "/", trailers=(("", "a"),)),
        bhttp.Request("G T", "https", "a", "/"),
        bhttp.Request("GET", "https", "ä", "/"),
    ],
)
def test_encoder_refuses_invalid_request(req: bhttp.Request) -> None:
    with pytest.raises(ProtocolError):
        bhttp.encode_request(req)


@pytest.mark.parametrize(
    "resp",
    [
        bhttp.Response(199),
        bhttp.Response(600),
        bhttp.Response(200, informational=(bhttp.InformationalResponse(200),)),
        bhttp.Response(200, informational=(bhttp.InformationalResponse(99),)),
        bhttp.Response(200, trailers=(("x", "a\r"),)),
    ],
)
def test_encoder_refuses_invalid_response(resp: bhttp.Response) -> None:
    with pytest.raises(ProtocolError):
        bhttp.encode_response(resp)


# -- Properties --

_NAMES = st.text("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12)
_VALUES = st.text(
    st.characters(min_codepoint=1, max_codepoint=255, exclude_characters="\r\n"), max_size=20
).map(lambda s: s.strip(" \t"))
_FIELDS = st.lists(st.tuples(_NAMES, _VALUES), max_size=6).map(tuple)
_VISIBLE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)

requests = st.builds(
    bhttp.Request,
    method=st.text("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij", min_size=1, max_size=8),
    scheme=_VISIBLE,
    authority=_VISIBLE,
    path=_VISIBLE,
    headers=_FIELDS,
    content=st.binary(max_size=300),
    trailers=_FIELDS,
)
responses = st.builds(
    bhttp.Response,
    status=st.integers(200, 599),
    headers=_FIELDS,
    content=st.binary(max_size=300),
    trailers=_FIELDS,
    informational=st.lists(
        st.builds(bhttp.InformationalResponse, st.integers(100, 199), _FIELDS), max_size=3
    ).map(tuple),
)


def _indeterminate_fields(fields: bhttp.Fields) -> bytes:
    out = b""
    for name, value in fields:
        raw_name, raw_value = name.encode("ascii"), value.encode("latin-1")
        out += bhttp._encode_varint(len(raw_name)) + raw_name
        out += bhttp._encode_varint(len(raw_value)) + raw_value
    return out + b"\x00"


def _indeterminate_tail(msg: bhttp.Request | bhttp.Response, chunk: int, padding: int) -> bytes:
    out = _indeterminate_fields(msg.headers)
    for i in range(0, len(msg.content), chunk):
        piece = msg.content[i : i + chunk]
        out += bhttp._encode_varint(len(piece)) + piece
    return out + b"\x00" + _indeterminate_fields(msg.trailers) + bytes(padding)


@given(requests, st.integers(1, 50), st.integers(0, 20))
def test_request_round_trip(req: bhttp.Request, chunk: int, padding: int) -> None:
    encoded = bhttp.encode_request(req)
    assert bhttp.decode_request(encoded) == req
    assert bhttp.decode_request(encoded + bytes(padding)) == req
    control = b"".join(
        bhttp._encode_varint(len(part)) + part.encode("ascii")
        for part in (req.method, req.scheme, req.authority, req.path)
    )
    indeterminate = b"\x02" + control + _indeterminate_tail(req, chunk, padding)
    assert bhttp.decode_request(indeterminate) == req


@given(responses, st.integers(1, 50), st.integers(0, 20))
def test_response_round_trip(resp: bhttp.Response, chunk: int, padding: int) -> None:
    encoded = bhttp.encode_response(resp)
    assert bhttp.decode_response(encoded) == resp
    assert bhttp.decode_response(encoded + bytes(padding)) == resp
    head = b"".join(
        bhttp._encode_varint(info.status) + _indeterminate_fields(info.headers) for info in resp.informational
    )
    indeterminate = (
        b"\x03" + head + bhttp._encode_varint(resp.status) + _indeterminate_tail(resp, chunk, padding)
    )
    assert bhttp.decode_response(indeterminate) == resp


def _decodes_or_protocol_error(data: bytes) -> None:
    for decode in (bhttp.decode_request, bhttp.decode_response):
        with contextlib.suppress(ProtocolError):
            decode(data)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    _decodes_or_protocol_error(data)


@given(st.sampled_from([FIGURE_8, FIGURE_9, FIGURE_11, FIGURE_13]), st.data())
def test_mutated_rfc_vectors_raise_only_protocol_error(vector: bytes, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(vector) - 1))
    mutated = bytearray(vector)
    mutated[index] = data.draw(st.integers(0, 255))
    _decodes_or_protocol_error(bytes(mutated))
    _decodes_or_protocol_error(vector[: data.draw(st.integers(0, len(vector)))])


def test_every_prefix_of_the_rfc_vectors() -> None:
    for vector in (FIGURE_8, FIGURE_9, FIGURE_11, FIGURE_13):
        for end in range(len(vector) + 1):
            _decodes_or_protocol_error(vector[:end])


def test_many_tiny_content_chunks_are_refused_quickly() -> None:
    """A peer must not make the enclave spend minutes on a body of 1-byte chunks (security review)."""
    head = bytes([2]) + b"\x04POST\x05https\x07enclave\x0c/v1/classify" + b"\x00"
    allowed = head + b"\x01x" * bhttp.MAX_CONTENT_CHUNKS + b"\x00"
    assert bhttp.decode_request(allowed).content == b"x" * bhttp.MAX_CONTENT_CHUNKS
    with pytest.raises(ProtocolError, match="content chunks"):
        bhttp.decode_request(head + b"\x01x" * (bhttp.MAX_CONTENT_CHUNKS + 1) + b"\x00")


def test_streamed_request_round_trip_in_any_pieces() -> None:
    import random

    head = bhttp.Request("PUT", "https", "enclave", "/v1/model", (("manifest", ":abc:"), ("date", "x")))
    body = bytes(random.Random(1).randbytes(300_000))
    wire = bhttp.encode_request_head(head)
    for i in range(0, len(body), 65_536):
        wire += bhttp.encode_content_chunk(body[i : i + 65_536])
    wire += bhttp.encode_request_end() + b"\0\0"  # padding
    assert bhttp.decode_request(wire) == bhttp.Request(head.method, head.scheme, head.authority, head.path,
                                                        head.headers, body)  # fmt: skip
    rng = random.Random(2)
    for _ in range(20):
        stream, got, pos = bhttp.RequestStream(), bytearray(), 0
        while pos < len(wire):
            step = rng.choice([1, 7, 100, 4096, 70_000])
            got += b"".join(stream.feed(wire[pos : pos + step]))
            pos += step
        got += b"".join(stream.finish())
        assert stream.head == head and bytes(got) == body and stream.done


def test_streamed_request_errors() -> None:
    head = bhttp.encode_request_head(bhttp.Request("PUT", "https", "e", "/m"))
    stream = bhttp.RequestStream()
    stream.feed(head + bhttp.encode_content_chunk(b"abc"))
    with pytest.raises(ProtocolError, match="truncated"):
        stream.finish()  # no content terminator
    with pytest.raises(ProtocolError, match="indeterminate-length"):
        bhttp.RequestStream().feed(bhttp.encode_request(bhttp.Request("GET", "https", "e", "/")))
    with pytest.raises(ProtocolError, match="non-zero byte"):
        bhttp.RequestStream().feed(head + bhttp.encode_request_end() + b"\x01")
    s = bhttp.RequestStream()
    # one field whose value claims 32 MiB: the head can never complete within the limit
    s.feed(bytes([2, 3]) + b"PUT" + bytes([5]) + b"https" + b"\x01e\x01/" + b"\x04name\x82\x00\x00\x00")
    chunk = b"x" * 65_536

    def flood() -> None:
        for _ in range(300):
            s.feed(chunk)

    with pytest.raises(ProtocolError, match="head larger"):
        flood()


def test_streamed_request_with_trailers_is_refused() -> None:
    """Re-parsing a growing trailer section on every feed would cost quadratic time (security review)."""
    head = bhttp.encode_request_head(bhttp.Request("POST", "https", "e", "/v1/classify"))
    trailer = b"\x01x\x01y" + b"\x00"  # one field, then the section's terminator
    with pytest.raises(ProtocolError, match="trailer fields"):
        bhttp.RequestStream().feed(head + b"\x00" + trailer)
