"""Frames on the unix socket between the host and the enclave process.

The boundary is narrow on purpose: the host can ask for the key configuration, ask for evidence
(with a client's nonce), and hand over an encapsulated request; the enclave answers each with one
frame. Nothing else crosses. Pure logic on bytes; both sides do their own socket I/O.

A frame is ``type (1 byte) || length (4 bytes, big-endian) || payload``. Error frames carry
``status (2 bytes) || UTF-8 message``: the host turns them into plain HTTP errors, so their
messages must never hold anything secret.
"""

from __future__ import annotations

import enum
import struct

from enclave_infer.errors import ProtocolError

__all__ = [
    "HEADER",
    "MAX_FRAME_BYTES",
    "FrameType",
    "decode_error",
    "encode_error",
    "encode_frame",
    "parse_header",
]

HEADER = struct.Struct("!BI")
# Largest payload either side accepts: a model upload in one encapsulated request plus slack.
MAX_FRAME_BYTES = 1024 * 1024 * 1024


class FrameType(enum.IntEnum):
    GET_KEYS = 0x01  # → KEYS: application/ohttp-keys
    GET_EVIDENCE = 0x02  # payload: nonce → EVIDENCE: attestation document
    OHTTP_REQUEST = 0x03  # payload: message/ohttp-req → OHTTP_RESPONSE: message/ohttp-res
    KEYS = 0x81
    EVIDENCE = 0x82
    OHTTP_RESPONSE = 0x83
    ERROR = 0xFF


def encode_frame(kind: FrameType, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME_BYTES:
        raise ProtocolError("frame too large")
    return HEADER.pack(kind, len(payload)) + payload


def parse_header(header: bytes) -> tuple[FrameType, int]:
    kind, length = HEADER.unpack(header)
    try:
        frame_type = FrameType(kind)
    except ValueError:
        raise ProtocolError(f"unknown frame type 0x{kind:02x}") from None
    if length > MAX_FRAME_BYTES:
        raise ProtocolError("frame too large")
    return frame_type, length


def encode_error(status: int, message: str) -> bytes:
    return encode_frame(FrameType.ERROR, struct.pack("!H", status) + message.encode()[:1024])


def decode_error(payload: bytes) -> tuple[int, str]:
    if len(payload) < 2:
        raise ProtocolError("malformed error frame")
    (status,) = struct.unpack("!H", payload[:2])
    return status, payload[2:].decode("utf-8", "replace")
