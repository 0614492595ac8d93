"""Frames on the unix socket between the host and the enclave process.

The boundary is narrow on purpose: the host can ask for the key configuration, ask for evidence
(with a client's nonce), hand over an encapsulated request, and ask for the enclave's public status
(:class:`~enclave_infer.protocol.api.EnclaveStatus`: what anyone may learn through ``GET /v1/model``
anyway, and counters the host could keep itself); the enclave answers each with one frame. Nothing
else crosses. Pure logic on bytes; both sides do their own socket I/O.

A frame is ``type (1 byte) || length (4 bytes, big-endian) || payload``. Error frames carry an
RFC 9457 problem document (``protocol/api.py``'s :class:`~enclave_infer.protocol.api.ProblemDetails`):
the host relays it as its plain HTTP answer, so it must never hold anything secret.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from pathlib import Path

from enclave_infer.errors import ProtocolError
from enclave_infer.protocol.api import MAX_PROBLEM_BYTES, ProblemDetails

__all__ = [
    "HEADER",
    "MAX_FRAME_BYTES",
    "Address",
    "FrameType",
    "decode_cluster_payload",
    "decode_problem",
    "encode_cluster_payload",
    "encode_frame",
    "encode_problem",
    "format_address",
    "parse_address",
    "parse_header",
]

# Where the enclave listens: a unix socket path, or a TCP (host, port) on loopback.
Address = Path | tuple[str, int]

HEADER = struct.Struct("!BI")
# Largest payload either side accepts: a model upload in one encapsulated request plus slack.
MAX_FRAME_BYTES = 1024 * 1024 * 1024


class FrameType(enum.IntEnum):
    GET_KEYS = 0x01  # → KEYS: application/ohttp-keys
    GET_EVIDENCE = 0x02  # payload: nonce → EVIDENCE: attestation document
    OHTTP_REQUEST = 0x03  # payload: message/ohttp-req → OHTTP_RESPONSE: message/ohttp-res
    # A chunked request (message/ohttp-chunked-req) streams as BEGIN, DATA*, END, each carrying the
    # next bytes as they arrive; the enclave answers once, with CHUNKED_RESPONSE or ERROR, possibly
    # before END (an early refusal), and the host then stops sending.
    CHUNKED_BEGIN = 0x04
    CHUNKED_DATA = 0x05
    CHUNKED_END = 0x06
    GET_STATUS = 0x07  # → STATUS: the enclave's public status (JSON), for the host's health and metrics
    # Clusters (enclave_infer.cluster): each payload is u32 length || the host's collateral for its
    # own enclave's evidence || the message. Key release messages are public: evidence, and secrets
    # sealed to an attested enclave.
    CLUSTER_JOIN = 0x08  # → CLUSTER_MESSAGE: a join request for a member to answer
    CLUSTER_RELEASE = 0x09  # message: a join request → CLUSTER_MESSAGE: the release
    CLUSTER_ACCEPT = 0x0A  # message: a release → STATUS, a member now
    CLUSTER_FOUND = 0x0B  # → STATUS: no member answered; found a new cluster
    CLUSTER_RELOAD = 0x0C  # → STATUS: load the newest model in the cluster's storage, if newer
    # payload: the collateral the host keeps for this enclave's evidence (public, signed by Intel or
    # AMD), which receipts carry so that they verify offline → STATUS
    SET_COLLATERAL = 0x0D
    KEYS = 0x81
    EVIDENCE = 0x82
    OHTTP_RESPONSE = 0x83
    CHUNKED_RESPONSE = 0x84
    STATUS = 0x85
    CLUSTER_MESSAGE = 0x86
    ERROR = 0xFF


def encode_frame(kind: FrameType, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME_BYTES:
        raise ProtocolError("frame too large")
    return HEADER.pack(kind, len(payload)) + payload


CLUSTER_PREFIX = struct.Struct("!I")


def encode_cluster_payload(collateral: bytes, message: bytes = b"") -> bytes:
    return CLUSTER_PREFIX.pack(len(collateral)) + collateral + message


def decode_cluster_payload(payload: bytes) -> tuple[bytes, bytes]:
    """(collateral, message) of a cluster frame's payload."""
    if len(payload) < CLUSTER_PREFIX.size:
        raise ProtocolError("cluster frame too short")
    (length,) = CLUSTER_PREFIX.unpack_from(payload)
    if length > len(payload) - CLUSTER_PREFIX.size:
        raise ProtocolError("cluster frame: collateral longer than the frame")
    end = CLUSTER_PREFIX.size + length
    return payload[CLUSTER_PREFIX.size : end], payload[end:]


def parse_header(header: bytes) -> tuple[FrameType, int]:
    kind, length = HEADER.unpack(header)
    try:
        frame_type = FrameType(kind)
    except ValueError:
        raise ProtocolError(f"unknown frame type 0x{kind:02x}") from None
    if length > MAX_FRAME_BYTES:
        raise ProtocolError("frame too large")
    return frame_type, length


def encode_problem(problem: ProblemDetails) -> bytes:
    """An ERROR frame carrying ``problem``: ``status (2 bytes) || problem document``."""
    document = problem.encode()
    if len(document) > MAX_PROBLEM_BYTES:
        raise ProtocolError("problem document too large")
    return encode_frame(FrameType.ERROR, struct.pack("!H", problem.status) + document)


def decode_problem(payload: bytes) -> ProblemDetails:
    if len(payload) < 2:
        raise ProtocolError("malformed error frame")
    (status,) = struct.unpack("!H", payload[:2])
    if not 400 <= status <= 599:
        raise ProtocolError("error frame with a status that is not an error")
    return ProblemDetails.decode(payload[2:], status=status)


def parse_address(text: str) -> Address:
    """``tcp:127.0.0.1:7001`` (loopback only: the frames are not encrypted end to end, the
    OHTTP payloads inside them are) or a unix socket path."""
    if not text.startswith("tcp:"):
        return Path(text)
    host, sep, port = text[4:].rpartition(":")
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not loopback:
        raise ValueError(
            f"enclave address must be tcp:<loopback address>:<port> or a socket path, got {text!r}"
        )
    return host.strip("[]"), int(port)


def format_address(address: Address) -> str:
    return str(address) if isinstance(address, Path) else f"tcp:{address[0]}:{address[1]}"
