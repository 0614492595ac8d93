"""Frames on the socket between the host and the enclave process: the whole of that boundary.

Every frame that may cross is in :data:`REQUESTS` (what the host may ask, one row per question) or
is the reply a row names; nothing else crosses. A row says how large the request's payload may be,
whether it takes one of the enclave's work slots (keys, evidence and status never do: a health
check must not wait behind inferences), whether the enclave must have joined its cluster to answer
it, and which frame type answers it. Any request may instead be answered with ERROR. Pure logic
on bytes; both sides do their own socket I/O.

=================  ========  ======  ======  ==============  ========================================
request            payload   slot    joined  reply           meaning
=================  ========  ======  ======  ==============  ========================================
GET_KEYS           empty     none    no      KEYS            ``application/ohttp-keys``
GET_EVIDENCE       nonce     none    no      EVIDENCE        the attestation document for a nonce
GET_STATUS         empty     none    no      STATUS          :class:`~.api.EnclaveStatus`, JSON
SET_COLLATERAL     document  none    no      COLLATERAL_SET  the collateral receipts carry
OHTTP_REQUEST      request   work    yes     OHTTP_RESPONSE  ``message/ohttp-req`` → ``-res``
CHUNKED_BEGIN      request   stream  yes     CHUNKED_RESP…   a streamed request: BEGIN, DATA*, END
CLUSTER_JOIN       cluster   work    no      CLUSTER_MESSAGE a join request for a member to answer
CLUSTER_RELEASE    cluster   work    yes     CLUSTER_MESSAGE message: a join request → the release
CLUSTER_ACCEPT     cluster   work    no      CLUSTER_JOINED  message: a release; a member now
CLUSTER_FOUND      cluster   work    no      CLUSTER_FOUNDED no member answered: found a cluster
CLUSTER_RELOAD     cluster   work    yes     CLUSTER_CHECKED message: a :class:`ClusterAction`
=================  ========  ======  ======  ==============  ========================================

"joined": an enclave started as a cluster member refuses the request with ``enclave-unavailable``
until it has joined its cluster (an enclave that serves alone is always "joined"). The CLUSTER_*
frames reach only an enclave started as a cluster member, and their payload is
``u32 length || the host's collateral for its own enclave's evidence || the message``. Key release
messages are public: evidence, and secrets sealed to an attested enclave. A chunked request streams
as CHUNKED_BEGIN, CHUNKED_DATA*, CHUNKED_END, each carrying the next bytes as they arrive; the
enclave answers once, possibly before END (an early refusal), and the host then stops sending.

A frame is ``type (1 byte) || length (4 bytes, big-endian) || payload``. Error frames carry an
RFC 9457 problem document (``protocol/api.py``'s :class:`~enclave_infer.protocol.api.ProblemDetails`):
the host relays it as its plain HTTP answer, so it must never hold anything secret. The acknowledgements
(COLLATERAL_SET, CLUSTER_JOINED, CLUSTER_FOUNDED, CLUSTER_CHECKED) carry no payload.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from enclave_infer.errors import ProtocolError
from enclave_infer.protocol.api import MAX_PROBLEM_BYTES, ProblemDetails

__all__ = [
    "HEADER",
    "MAX_FRAME_BYTES",
    "REQUESTS",
    "STREAM_FRAMES",
    "STREAM_SLOTS",
    "Address",
    "Cap",
    "ClusterAction",
    "FrameType",
    "Slot",
    "Spec",
    "check_reply",
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
    # requests (the host's): see REQUESTS
    GET_KEYS = 0x01
    GET_EVIDENCE = 0x02
    OHTTP_REQUEST = 0x03
    CHUNKED_BEGIN = 0x04
    CHUNKED_DATA = 0x05  # only inside a chunked request
    CHUNKED_END = 0x06  # only inside a chunked request
    GET_STATUS = 0x07
    CLUSTER_JOIN = 0x08
    CLUSTER_RELEASE = 0x09
    CLUSTER_ACCEPT = 0x0A
    CLUSTER_FOUND = 0x0B
    CLUSTER_RELOAD = 0x0C
    SET_COLLATERAL = 0x0D
    # replies (the enclave's): one type per answer
    KEYS = 0x81
    EVIDENCE = 0x82
    OHTTP_RESPONSE = 0x83
    CHUNKED_RESPONSE = 0x84
    STATUS = 0x85
    CLUSTER_MESSAGE = 0x86
    CLUSTER_JOINED = 0x87
    CLUSTER_FOUNDED = 0x88
    CLUSTER_CHECKED = 0x89
    COLLATERAL_SET = 0x8A
    ERROR = 0xFF


class Slot(enum.Enum):
    """What a request holds in the enclave while it is read and answered."""

    NONE = "none"  # nothing: small, answered at once (a health check never waits behind inferences)
    WORK = "work"  # one of limits.max_concurrent_requests work slots
    STREAM = "stream"  # one of STREAM_SLOTS, never a work slot: a stream cannot stall classifications


# Chunked requests (model uploads, and an image a client chose to stream) the enclave reads at once;
# the host relays no more than this many either. A stream keeps its slot only while it keeps a
# minimum rate (enclave/limits.py); an upload whose manifest signature fails is dropped at its head.
STREAM_SLOTS = 2


class Cap(enum.Enum):
    """How large a request's payload may be; the enclave holds the numbers (they come from the
    attestation formats and from the measured configuration, which this module does not know)."""

    EMPTY = "empty"  # nothing
    NONCE = "nonce"  # a client's nonce: attestation.report.MAX_NONCE_BYTES
    DOCUMENT = "document"  # collateral: attestation.evidence.MAX_DOCUMENT_BYTES
    CLUSTER = "cluster"  # collateral and a key release message: two documents and the prefix
    REQUEST = "request"  # an encapsulated request: the configuration's limits.max_request_bytes


@dataclass(frozen=True)
class Spec:
    """One row of :data:`REQUESTS`."""

    cap: Cap
    slot: Slot  # what it holds while it is read and answered
    joined: bool  # a cluster member answers it only once it has joined its cluster
    cluster: bool  # only for an enclave started as a cluster member (the payload is a cluster payload)
    reply: FrameType


_S = Spec
REQUESTS: Mapping[FrameType, Spec] = MappingProxyType(
    {
        FrameType.GET_KEYS: _S(Cap.EMPTY, slot=Slot.NONE, joined=False, cluster=False, reply=FrameType.KEYS),
        FrameType.GET_EVIDENCE: _S(
            Cap.NONCE, slot=Slot.NONE, joined=False, cluster=False, reply=FrameType.EVIDENCE
        ),
        FrameType.GET_STATUS: _S(
            Cap.EMPTY, slot=Slot.NONE, joined=False, cluster=False, reply=FrameType.STATUS
        ),
        FrameType.SET_COLLATERAL: _S(
            Cap.DOCUMENT, slot=Slot.NONE, joined=False, cluster=False, reply=FrameType.COLLATERAL_SET
        ),
        FrameType.OHTTP_REQUEST: _S(
            Cap.REQUEST, slot=Slot.WORK, joined=True, cluster=False, reply=FrameType.OHTTP_RESPONSE
        ),
        FrameType.CHUNKED_BEGIN: _S(
            Cap.REQUEST, slot=Slot.STREAM, joined=True, cluster=False, reply=FrameType.CHUNKED_RESPONSE
        ),
        FrameType.CLUSTER_JOIN: _S(
            Cap.CLUSTER, slot=Slot.WORK, joined=False, cluster=True, reply=FrameType.CLUSTER_MESSAGE
        ),
        FrameType.CLUSTER_RELEASE: _S(
            Cap.CLUSTER, slot=Slot.WORK, joined=True, cluster=True, reply=FrameType.CLUSTER_MESSAGE
        ),
        FrameType.CLUSTER_ACCEPT: _S(
            Cap.CLUSTER, slot=Slot.WORK, joined=False, cluster=True, reply=FrameType.CLUSTER_JOINED
        ),
        FrameType.CLUSTER_FOUND: _S(
            Cap.CLUSTER, slot=Slot.WORK, joined=False, cluster=True, reply=FrameType.CLUSTER_FOUNDED
        ),
        FrameType.CLUSTER_RELOAD: _S(
            Cap.CLUSTER, slot=Slot.WORK, joined=True, cluster=True, reply=FrameType.CLUSTER_CHECKED
        ),
    }
)
# The frames that continue a CHUNKED_BEGIN; each carries at most a REQUEST cap, all together too.
STREAM_FRAMES = frozenset({FrameType.CHUNKED_DATA, FrameType.CHUNKED_END})


class ClusterAction(enum.Enum):
    """The message of a CLUSTER_RELOAD frame: what the enclave is asked to do with the cluster's
    storage. One byte, so that an empty or unknown message is refused, never taken to mean one."""

    RELOAD = b"\x01"  # load the newest model in the cluster's storage if it is newer


def check_reply(request: FrameType, reply: FrameType) -> None:
    """Raises :class:`ProtocolError` unless ``reply`` answers ``request`` (its row's reply, or ERROR)."""
    spec = REQUESTS.get(request)
    if spec is None:
        raise ProtocolError(f"{request.name} is not a request")
    if reply is not spec.reply and reply is not FrameType.ERROR:
        raise ProtocolError(f"the enclave answered {request.name} with {reply.name}")


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
