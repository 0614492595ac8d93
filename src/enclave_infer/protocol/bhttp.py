"""Binary HTTP messages (RFC 9292): the plaintext that Oblivious HTTP encapsulates.

Pure protocol code used on both sides of the trust boundary (client and enclave): it turns
requests and responses into bytes and back, does no I/O and holds no secrets. Encoding always
produces the known-length form; decoding accepts both framings, truncation and padding, and
rejects anything else with :class:`~enclave_infer.errors.ProtocolError`, never another exception.

Text choices: field names, the method, scheme, authority and path are ASCII (tokens and URI
parts are ASCII by definition). Field values are latin-1: RFC 9110 §5.5 allows obs-text
(0x80-0xFF) and tells recipients to treat it as opaque octets, and latin-1 maps every byte to
one code point and back, so decoding never fails and re-encoding is byte-exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from enclave_infer.errors import ProtocolError

__all__ = [
    "MAX_CONTENT_CHUNKS",
    "MAX_FIELDS",
    "MAX_INFORMATIONAL",
    "Fields",
    "InformationalResponse",
    "Request",
    "Response",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

Fields = tuple[tuple[str, str], ...]

# RFC 9292 §8 warns about resource exhaustion from "large numbers of fields". Our messages carry
# a handful of headers; 256 per field section is generous and bounds the work (and the Python
# objects) one message can cost a decoder. The encoder enforces the same limit, so anything we
# encode we can decode.
MAX_FIELDS = 256
# Chunks in one indeterminate-length content (§3.4). Each costs a few microseconds to parse, so
# without a cap a body of 1-byte chunks would keep the enclave busy for minutes per megabyte; 65536
# chunks still carry a 256 MB model in 4 KiB chunks.
MAX_CONTENT_CHUNKS = 65_536
# §3.5.1 allows "any number" of informational responses; without a cap MAX_FIELDS would bound
# nothing, since each informational response brings a new header section.
MAX_INFORMATIONAL = 16

_MAX_VARINT = (1 << 62) - 1
# RFC 9110 §5.6.2: tchar. Field names must also be lowercase (RFC 9292 §3.6 via RFC 9113 §8.2.1).
_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER_TCHAR = _TCHAR[:-26]
_VISIBLE_ASCII = bytes(range(0x21, 0x7F))


def _header(fields: Fields, name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in fields if key.lower() == wanted), None)


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request: control data (§3.4), header section, content and trailer section."""

    method: str
    scheme: str
    authority: str
    path: str
    headers: Fields = ()
    content: bytes = b""
    trailers: Fields = ()

    def header(self, name: str) -> str | None:
        """The value of the first header field called ``name`` (any case), or None."""
        return _header(self.headers, name)


@dataclass(frozen=True, slots=True)
class InformationalResponse:
    """An interim (1xx) response: a status code and a header section (§3.5.1)."""

    status: int
    headers: Fields = ()


@dataclass(frozen=True, slots=True)
class Response:
    """A final response (§3.5), preceded by any informational responses."""

    status: int
    headers: Fields = ()
    content: bytes = b""
    trailers: Fields = ()
    informational: tuple[InformationalResponse, ...] = ()

    def header(self, name: str) -> str | None:
        """The value of the first header field called ``name`` (any case), or None."""
        return _header(self.headers, name)


# -- Variable-length integers (RFC 9000 §16, used for every length and number, RFC 9292 §3) --


def _encode_varint(value: int) -> bytes:
    """The shortest encoding of ``value``; RFC 9000 §16 allows 6, 14, 30 or 62 bits."""
    if value < 0 or value > _MAX_VARINT:
        raise ProtocolError(f"integer {value} does not fit a variable-length integer")
    for length, prefix in ((1, 0), (2, 0x40), (4, 0x80)):
        if value < 1 << (8 * length - 2):
            return (value | prefix << (8 * length - 8)).to_bytes(length, "big")
    return (value | 0xC0 << 56).to_bytes(8, "big")


def _decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The integer at ``data[pos:]`` and the position after it.

    RFC 9292 §3: "Integer values do not need to be encoded on the minimum number of bytes
    necessary", so a longer-than-needed encoding (0x4025 for 37) is accepted, not rejected.
    """
    if pos >= len(data):
        raise ProtocolError("truncated message: variable-length integer expected")
    end = pos + (1 << (data[pos] >> 6))
    if end > len(data):
        raise ProtocolError("truncated variable-length integer")
    return int.from_bytes(data[pos:end], "big") & ((1 << (8 * (end - pos) - 2)) - 1), end


# -- Validation, shared by both directions so that what we encode we can decode --


def _check_name(raw: bytes) -> str:
    # §3.6: field names are RFC 9110 §5.1 tokens; RFC 9113 §8.2.1 makes uppercase malformed.
    # Pseudo-fields (":foo") are not tokens, so they are rejected too.
    if not raw or raw.translate(None, _LOWER_TCHAR):
        raise ProtocolError(f"invalid field name {raw[:32]!r}")
    return raw.decode("ascii")


def _check_value(raw: bytes) -> str:
    # §3.6 via RFC 9113 §8.2.1: no NUL, CR or LF, and no leading or trailing SP/HTAB.
    if b"\0" in raw or b"\r" in raw or b"\n" in raw or (raw and (raw[0] in b" \t" or raw[-1] in b" \t")):
        raise ProtocolError("invalid field value")
    return raw.decode("latin-1")


def _check_method(raw: bytes) -> str:
    # §3.4 via RFC 9110 §9.1: method = token (case-sensitive).
    if not raw or raw.translate(None, _TCHAR):
        raise ProtocolError(f"invalid method {raw[:32]!r}")
    return raw.decode("ascii")


def _check_target(raw: bytes, what: str) -> str:
    # §3.4: scheme, authority and path. Stricter than RFC 9113 §8.3.1: visible ASCII only (URIs
    # are ASCII), so nothing here can split a message when replayed over HTTP/1.1. May be empty.
    if raw.translate(None, _VISIBLE_ASCII):
        raise ProtocolError(f"invalid {what}")
    return raw.decode("ascii")


def _to_bytes(text: str, encoding: str, what: str) -> bytes:
    try:
        return text.encode(encoding)
    except UnicodeEncodeError:
        raise ProtocolError(f"{what} is not {encoding}") from None


# -- Encoding: known-length form only (§3.1, framing indicators 0 and 1) --


def _prefixed(raw: bytes) -> bytes:
    return _encode_varint(len(raw)) + raw


def _encode_fields(fields: Fields) -> bytes:
    if len(fields) > MAX_FIELDS:
        raise ProtocolError(f"more than {MAX_FIELDS} fields in a field section")
    out = bytearray()
    for name, value in fields:
        raw_name = _to_bytes(name, "ascii", "field name")
        raw_value = _to_bytes(value, "latin-1", "field value")
        _check_name(raw_name)
        _check_value(raw_value)
        out += _prefixed(raw_name) + _prefixed(raw_value)
    return _prefixed(bytes(out))  # Known-Length Field Section (§3.1)


def _encode_tail(headers: Fields, content: bytes, trailers: Fields) -> bytes:
    # Header section, content, trailer section; never truncated, never padded.
    return _encode_fields(headers) + _prefixed(bytes(content)) + _encode_fields(trailers)


def encode_request(req: Request) -> bytes:
    """The known-length encoding (framing indicator 0) of ``req``."""
    method = _to_bytes(req.method, "ascii", "method")
    _check_method(method)
    out = _encode_varint(0) + _prefixed(method)
    for text, what in ((req.scheme, "scheme"), (req.authority, "authority"), (req.path, "path")):
        raw = _to_bytes(text, "ascii", what)
        _check_target(raw, what)
        out += _prefixed(raw)
    return out + _encode_tail(req.headers, req.content, req.trailers)


def encode_response(resp: Response) -> bytes:
    """The known-length encoding (framing indicator 1) of ``resp``."""
    if len(resp.informational) > MAX_INFORMATIONAL:
        raise ProtocolError(f"more than {MAX_INFORMATIONAL} informational responses")
    out = bytearray(_encode_varint(1))
    for info in resp.informational:  # Known-Length Informational Response (§3.5.1)
        if not 100 <= info.status <= 199:
            raise ProtocolError(f"informational status {info.status} not in 100..199")
        out += _encode_varint(info.status) + _encode_fields(info.headers)
    if not 200 <= resp.status <= 599:
        raise ProtocolError(f"final status {resp.status} not in 200..599")
    out += _encode_varint(resp.status) + _encode_tail(resp.headers, resp.content, resp.trailers)
    return bytes(out)


# -- Decoding: both framings (§3.1, §3.2), truncation and padding (§3.8) --


class _Reader:
    """A cursor over the message; every read is bounds-checked."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        value, self.pos = _decode_varint(self.data, self.pos)
        return value

    def take(self, length: int) -> bytes:
        if length > len(self.data) - self.pos:
            raise ProtocolError("length points past the end of the message")
        self.pos += length
        return self.data[self.pos - length : self.pos]

    def prefixed(self) -> bytes:
        return self.take(self.varint())


def _field_line(r: _Reader, name_length: int) -> tuple[str, str]:
    # Field Line (§3.6): Name Length (i) = 1.., Name, Value Length (i), Value.
    name = _check_name(r.take(name_length))
    return name, _check_value(r.prefixed())


def _read_fields(r: _Reader, indeterminate: bool) -> Fields:
    # Known-Length Field Section (§3.1): a length, then field lines filling exactly that length.
    # Indeterminate-Length Field Section (§3.2): field lines, then a zero where a Name Length goes.
    section = r if indeterminate else _Reader(r.prefixed())
    fields: list[tuple[str, str]] = []
    while indeterminate or not section.at_end():
        name_length = section.varint()
        if name_length == 0:
            if indeterminate:
                break
            raise ProtocolError("empty field name")
        if len(fields) == MAX_FIELDS:
            raise ProtocolError(f"more than {MAX_FIELDS} fields in a field section")
        fields.append(_field_line(section, name_length))
    return tuple(fields)


def _read_content(r: _Reader, indeterminate: bool) -> bytes:
    if not indeterminate:  # Known-Length Content
        return r.prefixed()
    # Indeterminate-Length Content: non-empty chunks up to a zero terminator. The chunks are
    # appended to one buffer as they are read: a list of a million 1-byte chunks would cost ~40×
    # the message in object overhead, which a peer could use to exhaust the enclave's memory.
    content = bytearray()
    view = memoryview(r.data)
    chunks = 0
    while (length := r.varint()) != 0:
        chunks += 1
        if chunks > MAX_CONTENT_CHUNKS:
            raise ProtocolError(f"more than {MAX_CONTENT_CHUNKS} content chunks")
        if length > len(r.data) - r.pos:
            raise ProtocolError("length points past the end of the message")
        content += view[r.pos : r.pos + length]
        r.pos += length
    return bytes(content)


def _read_tail(r: _Reader, indeterminate: bool) -> tuple[Fields, bytes, Fields]:
    headers = _read_fields(r, indeterminate)
    # §3.8: trailers, and then content, may be truncated when empty; missing means empty.
    content = b"" if r.at_end() else _read_content(r, indeterminate)
    trailers = () if r.at_end() else _read_fields(r, indeterminate)
    # §3.8: padding is any number of zero bytes; a non-zero byte makes the message invalid.
    if r.data[r.pos :].strip(b"\0"):
        raise ProtocolError("non-zero byte after the end of the message")
    return headers, content, trailers


def _start(data: bytes, is_response: bool) -> tuple[_Reader, bool]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError("a binary HTTP message must be bytes")
    r = _Reader(bytes(data))
    indicator = r.varint()  # Framing indicator (§3.3): 0/1 known-length, 2/3 indeterminate
    if indicator > 3:
        raise ProtocolError(f"unknown framing indicator {indicator}")
    if indicator & 1 != is_response:
        raise ProtocolError("expected a " + ("response" if is_response else "request"))
    return r, indicator >= 2


def decode_request(data: bytes) -> Request:
    """Parse a binary HTTP request in either framing; raise ProtocolError if it is invalid."""
    r, indeterminate = _start(data, is_response=False)
    method = _check_method(r.prefixed())  # Request Control Data (§3.4)
    scheme, authority, path = (_check_target(r.prefixed(), what) for what in ("scheme", "authority", "path"))
    headers, content, trailers = _read_tail(r, indeterminate)
    return Request(method, scheme, authority, path, headers, content, trailers)


def decode_response(data: bytes) -> Response:
    """Parse a binary HTTP response in either framing; raise ProtocolError if it is invalid."""
    r, indeterminate = _start(data, is_response=True)
    informational: list[InformationalResponse] = []
    while 100 <= (status := r.varint()) <= 199:  # Informational Response Control Data (§3.5.1)
        if len(informational) == MAX_INFORMATIONAL:
            raise ProtocolError(f"more than {MAX_INFORMATIONAL} informational responses")
        informational.append(InformationalResponse(status, _read_fields(r, indeterminate)))
    if not 200 <= status <= 599:  # Final Response Control Data (§3.5)
        raise ProtocolError(f"status code {status} not in 100..599")
    headers, content, trailers = _read_tail(r, indeterminate)
    return Response(status, headers, content, trailers, tuple(informational))


# -- streaming: the indeterminate-length request form, produced and consumed piece by piece ------
#
# A large upload is one request whose content never exists in memory at once: the client sends
# encode_request_head(), then encode_content_chunk() per piece, then encode_request_end(); the
# gateway feeds what it decrypts into a RequestStream, which hands content on as it arrives.

# The head (control data and header fields) of a streamed request must arrive within this many
# bytes: a model manifest with 100,000 labels fits, and a peer cannot make us buffer without end.
MAX_STREAM_HEAD_BYTES = 16 * 1024 * 1024


def encode_request_head(req: Request) -> bytes:
    """Framing indicator 2, control data and the indeterminate-length header section (§3.2)."""
    method = _to_bytes(req.method, "ascii", "method")
    _check_method(method)
    out = bytearray(_encode_varint(2) + _prefixed(method))
    for text, what in ((req.scheme, "scheme"), (req.authority, "authority"), (req.path, "path")):
        raw = _to_bytes(text, "ascii", what)
        _check_target(raw, what)
        out += _prefixed(raw)
    if len(req.headers) > MAX_FIELDS:
        raise ProtocolError(f"more than {MAX_FIELDS} fields in a field section")
    for name, value in req.headers:
        raw_name, raw_value = (
            _to_bytes(name, "ascii", "field name"),
            _to_bytes(value, "latin-1", "field value"),
        )
        _check_name(raw_name)
        _check_value(raw_value)
        out += _prefixed(raw_name) + _prefixed(raw_value)
    return bytes(out + _encode_varint(0))  # Content Terminator of the field section


def encode_content_chunk(data: bytes) -> bytes:
    """One Indeterminate-Length Content chunk (§3.2); empty data encodes to nothing (a zero-length
    chunk would end the content)."""
    return _encode_varint(len(data)) + bytes(data) if data else b""


def encode_request_end() -> bytes:
    """The content terminator and an empty trailer section."""
    return _encode_varint(0) + _encode_varint(0)


# Trailers are not used by this API; a few fields are tolerated, a large section is not.
_MAX_TRAILER_BYTES = 64 * 1024


class _NeedMore(Exception):
    pass


class RequestStream:
    """Incremental decoder of an indeterminate-length request: :attr:`head` is set once the
    control data and headers have arrived; :meth:`feed` returns content pieces as they arrive;
    :attr:`done` turns true after the trailer section; :meth:`finish` raises if it has not."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.head: Request | None = None
        self._chunk_left = 0  # bytes still to come of the current content chunk
        self._in_content = False
        self.done = False
        self._chunks = 0
        # The head is parsed from the start of the buffer, so a failed attempt is retried only once
        # the buffer has doubled: a peer trickling a large head costs O(n log n), not O(n²).
        self._next_try = 0

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        self._buf += data
        if self.head is None and len(self._buf) > MAX_STREAM_HEAD_BYTES:
            raise ProtocolError(f"request head larger than {MAX_STREAM_HEAD_BYTES} bytes")
        if self.head is None and len(self._buf) < self._next_try:
            return out
        try:
            self._advance(out)
        except _NeedMore:
            if self.head is None:
                self._next_try = 2 * len(self._buf)
        if self.head is None and len(self._buf) > MAX_STREAM_HEAD_BYTES:
            raise ProtocolError(f"request head larger than {MAX_STREAM_HEAD_BYTES} bytes")
        if (
            self.head is not None
            and not self._in_content
            and not self.done
            and len(self._buf) > _MAX_TRAILER_BYTES
        ):
            raise ProtocolError("trailer section too large")
        return out

    def finish(self) -> list[bytes]:
        """Parse whatever is still buffered; raise unless the request is complete."""
        self._next_try = 0
        out = self.feed(b"")
        if not self.done:
            raise ProtocolError("truncated binary HTTP request")
        return out

    def _advance(self, out: list[bytes]) -> None:
        if self.head is None:
            self._parse_head()
        while not self.done:
            if self._chunk_left:
                take = min(self._chunk_left, len(self._buf))
                if take == 0:
                    raise _NeedMore
                out.append(bytes(self._buf[:take]))
                del self._buf[:take]
                self._chunk_left -= take
                continue
            if self._in_content:
                length, used = self._varint(self._buf, 0)
                del self._buf[:used]
                if length == 0:
                    self._in_content = False
                    continue
                self._chunks += 1
                if self._chunks > MAX_CONTENT_CHUNKS:
                    raise ProtocolError(f"more than {MAX_CONTENT_CHUNKS} content chunks")
                self._chunk_left = length
                continue
            # The trailer section must be empty: re-parsing a growing one on every feed would cost
            # quadratic time, and nothing here uses trailers. Then only padding may follow.
            if not self._buf:
                raise _NeedMore
            if self._buf[0] != 0:
                raise ProtocolError("a streamed request may not carry trailer fields")
            if self._buf[1:].strip(b"\0"):
                raise ProtocolError("non-zero byte after the end of the message")
            self._buf.clear()
            self.done = True
        if self._buf.strip(b"\0"):
            raise ProtocolError("non-zero byte after the end of the message")
        self._buf.clear()

    def _parse_head(self) -> None:
        r = _StreamReader(bytes(self._buf))
        if r.varint() != 2:
            raise ProtocolError(
                "a streamed request must use the indeterminate-length form (framing indicator 2)"
            )
        method = _check_method(r.prefixed())
        scheme, authority, path = (
            _check_target(r.prefixed(), what) for what in ("scheme", "authority", "path")
        )
        fields: list[tuple[str, str]] = []
        while (name_length := r.varint()) != 0:
            if len(fields) == MAX_FIELDS:
                raise ProtocolError(f"more than {MAX_FIELDS} fields in a field section")
            fields.append(_field_line(r, name_length))
        self.head = Request(method, scheme, authority, path, tuple(fields))
        del self._buf[: r.pos]
        self._in_content = True

    @staticmethod
    def _varint(buf: bytearray, pos: int) -> tuple[int, int]:
        if pos >= len(buf) or pos + (1 << (buf[pos] >> 6)) > len(buf):
            raise _NeedMore
        value, end = _decode_varint(bytes(buf[pos : pos + 8]), 0)
        return value, end


class _StreamReader(_Reader):
    """A reader that says "need more" instead of "truncated"."""

    def varint(self) -> int:
        if self.pos >= len(self.data) or self.pos + (1 << (self.data[self.pos] >> 6)) > len(self.data):
            raise _NeedMore
        return super().varint()

    def take(self, length: int) -> bytes:
        if length > len(self.data) - self.pos:
            raise _NeedMore
        return super().take(length)
