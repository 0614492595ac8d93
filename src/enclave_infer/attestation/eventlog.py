"""The boot's TCG event log: parsed, written, replayed, and checked against the registers a quote signs.

Pure logic on bytes, trusted (the client's verifier and the enclave's providers share it); no I/O.

The format is the "crypto agile" log (``EFI_TCG2_EVENT_LOG_FORMAT_TCG_2``) of the TCG PC Client
Platform Firmware Profile Specification (PFP), version 1.06 revision 52, §10. Integers are
little-endian::

    TCG_PCR_EVENT (§10.2.1, the SHA-1 layout), once, first: the log's header
        u32 pcrIndex = 0 | u32 eventType = EV_NO_ACTION | u8 digest[20] = 0 | u32 eventSize
        TCG_EfiSpecIdEvent (§10.4.5.1 "Specification ID Version Event"):
            u8 signature[16] = "Spec ID Event03\\0" | u32 platformClass | u8 specVersionMinor
            u8 specVersionMajor | u8 specErrata | u8 uintnSize | u32 numberOfAlgorithms
            { u16 algorithmId | u16 digestSize } [numberOfAlgorithms] | u8 vendorInfoSize | vendorInfo
    TCG_PCR_EVENT2 (§10.2.2), one per event, to the end:
        u32 pcrIndex | u32 eventType | TPML_DIGEST_VALUES { u32 count | { u16 hashAlg | digest } [count] }
        u32 eventSize | u8 event[eventSize]

Each event carries one digest per algorithm the header lists (the banks); replaying a bank extends
the event's register from zero with each digest in log order, ``new = H(old || digest)`` (TPM 2.0
Library, Part 1, "PCR Extend"). ``EV_NO_ACTION`` events (§10.4.5) are informational and never
extended; the "StartupLocality" one (§10.4.5.3) sets the last byte of PCR 0's initial value to the
locality TPM2_Startup came from. What replay proves: a log that replays to the registers a signed
quote holds is the sequence of digests that was extended, in order. What it does not prove: that an
event's data describes what its digest is of; compare digests with values derived independently.

The same records form the confidential-computing event log (UEFI Specification 2.11, §38.1 "Virtual
Platform CC Event Log", of ``EFI_CC_MEASUREMENT_PROTOCOL``), which TDX firmware leaves in the log area
the CCEL ACPI table points at (ACPI 6.5, §5.2.34): there the index field holds the CC measurement
register index (for TDX 0 = MRTD, 1 to 4 = RTMR0 to RTMR3, see :func:`rtmr_of`), the one bank is
SHA-384, and the log area is padded with 0xFF after the last event, where :func:`parse` stops.

Not handled: the SHA-1-only log of TPM 1.2 firmware (refused), algorithms other than SHA-1 and
SHA-2 (refused: SM3 and SHA-3 banks), an H-CRTM's PCR 0 (``EV_EFI_HCRTM_EVENT``) and the DRTM PCRs
17 to 22, which do not start at zero (their replay differs from the TPM's, so a check fails closed).
"""

from __future__ import annotations

import enum
import hashlib
import struct
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from enclave_infer.errors import AttestationError, UsageError

__all__ = [
    "MAX_EVENTS",
    "MAX_EVENT_DATA_BYTES",
    "MAX_LOG_BYTES",
    "Alg",
    "Event",
    "EventLog",
    "EventLogError",
    "EventType",
    "check_replay",
    "describe",
    "encode",
    "mr_index_of",
    "parse",
    "replay",
    "rtmr_of",
    "type_name",
]

# A firmware's log holds tens to a few hundred events in well under 1 MiB (this project's VM: 36
# events, 7.8 KB; OVMF reserves 64 KiB for it, and so does TDX firmware for the CCEL log area). The
# largest single events are the Secure Boot databases (db, dbx: tens of KB) and GPT tables.
MAX_LOG_BYTES = 1024 * 1024
MAX_EVENTS = 4096
MAX_EVENT_DATA_BYTES = 256 * 1024


class EventLogError(AttestationError):
    """An event log does not parse: truncated, inconsistent with its header, over a limit, or
    followed by bytes that are not padding. The message names the event and its byte offset."""


class Alg(enum.IntEnum):
    """A bank's hash algorithm, by its TPM_ALG_ID (TCG Algorithm Registry, Table 3)."""

    SHA1 = 0x0004
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D

    @property
    def digest_size(self) -> int:
        return _DIGEST_SIZES[self]

    @property
    def hash_name(self) -> str:
        """The hashlib name, as :class:`~enclave_infer.attestation.report.Registers` spells it:
        ``"sha1"``, ``"sha256"``, ``"sha384"``, ``"sha512"``."""
        return self.name.lower()

    def hash(self, data: bytes) -> bytes:
        return hashlib.new(self.hash_name, data).digest()

    @classmethod
    def from_name(cls, name: str) -> Alg:
        """The algorithm named ``"sha256"`` etc. (any case); UsageError for any other name."""
        try:
            return cls[name.upper()]
        except KeyError:
            raise UsageError(f"unknown event log algorithm {name!r} (sha1, sha256, sha384, sha512)") from None


_DIGEST_SIZES = {Alg.SHA1: 20, Alg.SHA256: 32, Alg.SHA384: 48, Alg.SHA512: 64}


class EventType(enum.IntEnum):
    """The event types of PFP §10.4.1 ("Event Types"). A log may hold others: :class:`Event` keeps
    any 32-bit type, and :func:`type_name` prints an unknown one in hex."""

    EV_PREBOOT_CERT = 0x00000000
    EV_POST_CODE = 0x00000001
    EV_UNUSED = 0x00000002
    EV_NO_ACTION = 0x00000003
    EV_SEPARATOR = 0x00000004
    EV_ACTION = 0x00000005
    EV_EVENT_TAG = 0x00000006
    EV_S_CRTM_CONTENTS = 0x00000007
    EV_S_CRTM_VERSION = 0x00000008
    EV_CPU_MICROCODE = 0x00000009
    EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
    EV_TABLE_OF_DEVICES = 0x0000000B
    EV_COMPACT_HASH = 0x0000000C
    EV_IPL = 0x0000000D
    EV_IPL_PARTITION_DATA = 0x0000000E
    EV_NONHOST_CODE = 0x0000000F
    EV_NONHOST_CONFIG = 0x00000010
    EV_NONHOST_INFO = 0x00000011
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
    EV_POST_CODE2 = 0x00000013
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
    EV_EFI_VARIABLE_BOOT = 0x80000002
    EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
    EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
    EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
    EV_EFI_GPT_EVENT = 0x80000006
    EV_EFI_ACTION = 0x80000007
    EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
    EV_EFI_HANDOFF_TABLES = 0x80000009
    EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
    EV_EFI_HANDOFF_TABLES2 = 0x8000000B
    EV_EFI_VARIABLE_BOOT2 = 0x8000000C
    EV_EFI_GPT_EVENT2 = 0x8000000D
    EV_EFI_HCRTM_EVENT = 0x80000010
    EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
    EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
    EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2
    EV_EFI_SPDM_DEVICE_POLICY = 0x800000E3
    EV_EFI_SPDM_DEVICE_AUTHORITY = 0x800000E4


def type_name(event_type: int) -> str:
    """``"EV_IPL"`` for a known type, ``"0x0000abcd"`` for any other."""
    try:
        return EventType(event_type).name
    except ValueError:
        return f"0x{event_type:08x}"


_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Event:
    """One TCG_PCR_EVENT2 record (PFP §10.2.2).

    ``number`` is the event's place in the log, from 1: the header is event 0, as tpm2_eventlog
    counts. ``register`` is the PCR index (on a CC log, the CC measurement register index);
    ``type`` an :class:`EventType` when known, else the plain number; ``digests`` one digest per
    bank, in the record's order; ``data`` the event data, which the digests need not be of.
    """

    number: int
    register: int
    type: int
    digests: Mapping[Alg, bytes]
    data: bytes

    def __post_init__(self) -> None:
        if not (self.number >= 1 and 0 <= self.register <= _U32 and 0 <= self.type <= _U32):
            raise UsageError(f"event {self.number}: number, register or type out of range")
        if not self.digests:
            raise UsageError(f"event {self.number} has no digest")
        for alg, digest in self.digests.items():
            if not isinstance(alg, Alg) or len(digest) != alg.digest_size:
                raise UsageError(f"event {self.number}: a {alg!r} digest of {len(digest)} bytes")
        if len(self.data) > MAX_EVENT_DATA_BYTES:
            raise UsageError(f"event {self.number}: {len(self.data)} bytes of data, over the limit")
        if self.type in EventType._value2member_map_:
            object.__setattr__(self, "type", EventType(self.type))
        object.__setattr__(self, "digests", types.MappingProxyType(dict(self.digests)))
        object.__setattr__(self, "data", bytes(self.data))


@dataclass(frozen=True)
class EventLog:
    """A parsed log: the banks its header lists (``algs``, in the header's order) and its events,
    numbered 1, 2, ... Every event has a digest of each bank and of no other."""

    algs: tuple[Alg, ...]
    events: tuple[Event, ...]

    def __post_init__(self) -> None:
        algs, events = tuple(self.algs), tuple(self.events)
        if not algs or len(set(algs)) != len(algs) or not all(isinstance(a, Alg) for a in algs):
            raise UsageError(f"an event log needs distinct banks, not {algs!r}")
        if len(events) > MAX_EVENTS:
            raise UsageError(f"{len(events)} events, over the limit of {MAX_EVENTS}")
        for position, event in enumerate(events, 1):
            if event.number != position:
                raise UsageError(f"event {event.number} is at position {position} of the log")
            if len(event.digests) != len(algs) or set(event.digests) != set(algs):
                raise UsageError(f"event {event.number} has digests of other banks than the log's")
        object.__setattr__(self, "algs", algs)
        object.__setattr__(self, "events", events)


# --- Reading -----------------------------------------------------------------------------------

SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"  # PFP §10.4.5.1: the crypto-agile log
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"  # PFP §10.4.5.3
STARTUP_LOCALITIES = frozenset({0, 3, 4})  # TPM2_Startup from locality 0 or 3; 4: an H-CRTM
_SHA1_DIGEST = 20  # TCG_PCR_EVENT's digest field
_SPEC_ID_FIXED = struct.Struct("<16sIBBBBI")  # signature .. numberOfAlgorithms


class _Reader:
    """Bounded reads over the log; errors name the record being read and where it starts."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.record = "header"
        self.start = 0

    def begin(self, record: str) -> None:
        self.record, self.start = record, self.pos

    def fail(self, problem: str) -> EventLogError:
        return EventLogError(f"event log {self.record} at byte {self.start}: {problem}")

    def take(self, size: int, what: str) -> bytes:
        if size > len(self.data) - self.pos:
            raise self.fail(f"truncated in its {what} ({size} bytes, {len(self.data) - self.pos} left)")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")


def _parse_header(reader: _Reader) -> tuple[Alg, ...]:
    """The TCG_PCR_EVENT holding the TCG_EfiSpecIdEvent (PFP §10.2.1, §10.4.5.1): the banks."""
    register = reader.u32("pcrIndex")
    event_type = reader.u32("eventType")
    digest = reader.take(_SHA1_DIGEST, "digest")
    size = reader.u32("eventDataSize")
    # PCR 0 in a TPM's log; TDVF writes 1 in a CC event log (the measurement register index of PCR 0)
    if register not in (0, 1) or event_type != EventType.EV_NO_ACTION or any(digest):
        raise reader.fail("does not start with the Spec ID event (PCR 0, EV_NO_ACTION, zero digest)")
    if size > MAX_EVENT_DATA_BYTES:
        raise reader.fail(f"{size} bytes of Spec ID event data, over the limit")
    body = reader.take(size, "Spec ID event")
    if len(body) < _SPEC_ID_FIXED.size + 1:
        raise reader.fail(f"a Spec ID event of {len(body)} bytes")
    signature, _class, _minor, _major, _errata, _uintn, count = _SPEC_ID_FIXED.unpack_from(body)
    if signature != SPEC_ID_SIGNATURE:
        raise reader.fail(
            f"signature {signature.rstrip(bytes(1))!r}, not 'Spec ID Event03' (a crypto-agile log)"
        )
    if not 1 <= count <= len(Alg):
        raise reader.fail(f"the Spec ID event lists {count} algorithms (1 to {len(Alg)} are known)")
    algs: list[Alg] = []
    at = _SPEC_ID_FIXED.size
    for _ in range(count):
        if at + 4 > len(body):
            raise reader.fail("the Spec ID event is shorter than its algorithm list")
        alg_id, digest_size = struct.unpack_from("<HH", body, at)
        at += 4
        if alg_id not in Alg._value2member_map_:
            raise reader.fail(f"algorithm 0x{alg_id:04x} is not supported (SHA-1, SHA-256/384/512)")
        alg = Alg(alg_id)
        if digest_size != alg.digest_size or alg in algs:
            raise reader.fail(f"{alg.hash_name} listed twice, or with a {digest_size}-byte digest")
        algs.append(alg)
    if at + 1 > len(body) or at + 1 + body[at] != len(body):
        raise reader.fail("the Spec ID event's vendorInfoSize does not end it")
    return tuple(algs)


def _parse_event(reader: _Reader, number: int, algs: tuple[Alg, ...]) -> Event:
    """One TCG_PCR_EVENT2 (PFP §10.2.2), with a digest of each of the header's algorithms."""
    reader.begin(f"event {number}")
    register = reader.u32("pcrIndex")
    event_type = reader.u32("eventType")
    count = reader.u32("digest count")
    if count != len(algs):
        raise reader.fail(f"digest count {count}, not the header's {len(algs)}")
    digests: dict[Alg, bytes] = {}
    for _ in range(count):
        alg_id = reader.u16("hashAlg")
        alg = next((a for a in algs if a == alg_id), None)
        if alg is None or alg in digests:
            raise reader.fail(f"a digest of algorithm 0x{alg_id:04x}: not in the header, or repeated")
        digests[alg] = reader.take(alg.digest_size, f"{alg.hash_name} digest")
    size = reader.u32("eventSize")
    if size > MAX_EVENT_DATA_BYTES:
        raise reader.fail(f"{size} bytes of event data, over the limit of {MAX_EVENT_DATA_BYTES}")
    data = reader.take(size, "event data")
    return Event(number, register, event_type, digests, data)


def parse(data: bytes) -> EventLog:
    """Parse a crypto-agile TCG event log (a TPM's, or a CC event log such as TDX's CCEL area).

    Reading stops at the end of ``data`` or where only padding is left (all 0xFF bytes, as a CCEL
    log area is filled, or all zero bytes): no valid record is all 0xFF or all zero, because its
    digest count equals the number of banks. Raises :class:`EventLogError` on anything else:
    truncation, a digest count or algorithm the header does not list, a size over
    :data:`MAX_LOG_BYTES`, :data:`MAX_EVENTS` or :data:`MAX_EVENT_DATA_BYTES`, trailing bytes that
    are not padding, a StartupLocality event that is malformed or comes after PCR 0 was extended.
    """
    data = bytes(data)
    if len(data) > MAX_LOG_BYTES:
        raise EventLogError(f"the event log is {len(data)} bytes, over the limit of {MAX_LOG_BYTES}")
    reader = _Reader(data)
    algs = _parse_header(reader)
    # Where the trailing runs of 0xFF and of zero bytes begin: at or past either, only padding is left.
    padding = min(len(data.rstrip(b"\xff")), len(data.rstrip(b"\x00")))
    events: list[Event] = []
    while reader.pos < padding:
        if len(events) == MAX_EVENTS:
            raise EventLogError(f"the event log has more than {MAX_EVENTS} events")
        events.append(_parse_event(reader, len(events) + 1, algs))
    _startup_locality(events)
    return EventLog(algs, tuple(events))


def _startup_locality(events: tuple[Event, ...] | list[Event]) -> int | None:
    """The locality of the log's StartupLocality event (PFP §10.4.5.3), None without one. It must be
    17 bytes, name locality 0, 3 or 4, be the only one, and come before any event extends PCR 0."""
    found: int | None = None
    pcr0_extended = False
    for event in events:
        if event.register != 0:
            continue
        if event.type != EventType.EV_NO_ACTION:
            pcr0_extended = True
        elif event.data.startswith(STARTUP_LOCALITY_SIGNATURE):
            where = f"event log event {event.number}"
            if len(event.data) != len(STARTUP_LOCALITY_SIGNATURE) + 1:
                raise EventLogError(f"{where}: a StartupLocality event of {len(event.data)} bytes")
            locality = event.data[-1]
            if locality not in STARTUP_LOCALITIES or found is not None or pcr0_extended:
                raise EventLogError(
                    f"{where}: StartupLocality {locality} (0, 3 or 4, once, before PCR 0 is extended)"
                )
            found = locality
    return found


# --- Writing -----------------------------------------------------------------------------------


def encode(log: EventLog) -> bytes:
    """The log's bytes: the Spec ID header (PFP §10.4.5.1: platform class 0, PFP version 2.0,
    errata 0, UINTN of 8 bytes, no vendor data), then each event; ``parse(encode(log)) == log``.
    For emulations and tests. UsageError when the result would be over :data:`MAX_LOG_BYTES`."""
    spec_id = _SPEC_ID_FIXED.pack(SPEC_ID_SIGNATURE, 0, 0, 2, 0, 2, len(log.algs))
    spec_id += b"".join(struct.pack("<HH", alg, alg.digest_size) for alg in log.algs) + b"\x00"
    parts = [struct.pack("<II", 0, EventType.EV_NO_ACTION), bytes(_SHA1_DIGEST)]
    parts += [struct.pack("<I", len(spec_id)), spec_id]
    for event in log.events:
        parts.append(struct.pack("<III", event.register, event.type, len(event.digests)))
        parts += [struct.pack("<H", alg) + digest for alg, digest in event.digests.items()]
        parts += [struct.pack("<I", len(event.data)), event.data]
    out = b"".join(parts)
    if len(out) > MAX_LOG_BYTES:
        raise UsageError(f"the event log would be {len(out)} bytes, over the limit of {MAX_LOG_BYTES}")
    try:
        _startup_locality(log.events)
    except EventLogError as error:
        raise UsageError(str(error)) from None
    return out


# --- Replay ------------------------------------------------------------------------------------


def replay(log: EventLog, alg: Alg) -> dict[int, bytes]:
    """The registers the log's ``alg`` bank extends, by index: each starts at zero (PCR 0 at the
    StartupLocality event's locality in its last byte) and becomes ``H(old || digest)`` for each of
    its events in log order, ``EV_NO_ACTION`` events excepted. A register no event extends is absent
    (PCR 0 after a StartupLocality event excepted). EventLogError when the log has no such bank."""
    if alg not in log.algs:
        banks = ", ".join(a.hash_name for a in log.algs)
        raise EventLogError(f"the event log has no {alg.hash_name} digests (its banks: {banks})")
    zero = bytes(alg.digest_size)
    values: dict[int, bytes] = {}
    locality = _startup_locality(log.events)
    if locality is not None:
        values[0] = zero[:-1] + bytes([locality])
    for event in log.events:
        if event.type != EventType.EV_NO_ACTION:
            values[event.register] = alg.hash(values.get(event.register, zero) + event.digests[alg])
    return values


def _pcr(index: int) -> str:
    return f"PCR {index}"


def _short(value: bytes) -> str:
    text = value.hex()
    return text if len(text) <= 16 else f"{text[:12]}…{text[-4:]}"


def check_replay(
    log: EventLog, alg: Alg, quoted: Mapping[int, bytes], *, name: Callable[[int], str] = _pcr
) -> None:
    """Check that the log's ``alg`` bank replays (:func:`replay`) to every quoted register, in
    ascending order; a register no event extends replays to zeros. Raises AttestationError naming
    the first register that differs (by ``name``, e.g. ``lambda mr: f"RTMR{rtmr_of(mr)}"``) with
    both values; EventLogError when the log has no ``alg`` bank."""
    replayed = replay(log, alg)
    zero = bytes(alg.digest_size)
    for index in sorted(quoted):
        want, got = bytes(quoted[index]), replayed.get(index, zero)
        if got != want:
            count = sum(1 for e in log.events if e.register == index and e.type != EventType.EV_NO_ACTION)
            raise AttestationError(
                f"{name(index)} is {_short(want)} in the quote, but the event log replays it to {_short(got)}"
                f" ({count} event{'s' * (count != 1)}, {alg.hash_name}): the log is tampered, truncated"
                " or reordered"
            )


# --- Confidential-computing logs ---------------------------------------------------------------

# TDX: CC measurement register index 0 is MRTD (no log event extends it), 1 to 4 are RTMR0 to RTMR3
# (UEFI 2.11 chapter 38, EFI_CC_MEASUREMENT_PROTOCOL.MapPcrToMrIndex; Intel TDX GHCI 1.0, §4.3). TDX
# firmware maps PCR 1 and 7 to index 1, PCR 2 to 6 to index 2, PCR 8 to 15 to index 3.
_RTMRS = 4


def rtmr_of(mr_index: int) -> int:
    """The RTMR a TDX CC event log's index names: 1 to 4 are RTMR0 to RTMR3; EventLogError for any
    other (0 is MRTD, which no event extends)."""
    if not 1 <= mr_index <= _RTMRS:
        raise EventLogError(f"CC measurement register index {mr_index} is not an RTMR (1 to {_RTMRS})")
    return mr_index - 1


def mr_index_of(rtmr: int) -> int:
    """The CC event log index of RTMR ``rtmr`` (0 to 3): ``rtmr + 1``."""
    if not 0 <= rtmr < _RTMRS:
        raise UsageError(f"there is no RTMR{rtmr} (RTMR0 to RTMR{_RTMRS - 1})")
    return rtmr + 1


# --- Descriptions ------------------------------------------------------------------------------

_HINT_CHARS = 64  # an error message quotes at most this much of an event's text


def describe(event: Event, *, name: Callable[[int], str] = _pcr) -> str:
    """A short phrase for messages: ``PCR 4 event 22 EV_EFI_BOOT_SERVICES_APPLICATION
    "\\EFI\\BOOT\\BOOTX64.EFI"``, with a hint decoded from the data where it holds text (actions,
    EV_IPL's section names, EV_EVENT_TAG descriptions, UEFI variable names and file paths). Any data
    is safe here: the hint keeps printable characters only, and malformed data gives no hint."""
    phrase = f"{name(event.register)} event {event.number} {type_name(event.type)}"
    try:
        hint = _hint(event.type, event.data)
    except (ValueError, IndexError, struct.error):
        hint = ""
    hint = "".join(c for c in hint if c.isprintable())
    if len(hint) > _HINT_CHARS:
        hint = hint[: _HINT_CHARS - 1] + "…"
    return f'{phrase} "{hint}"' if hint else phrase


def _ascii(data: bytes) -> str:
    return data.split(b"\x00", 1)[0].decode("ascii")


def _utf16(data: bytes) -> str:
    return data.decode("utf-16-le").split("\x00", 1)[0]


def _hint(event_type: int, data: bytes) -> str:
    """The text an event's data holds, per its type's layout (PFP §10.4 and §10.2.x tables)."""
    if event_type in (EventType.EV_EFI_ACTION, EventType.EV_ACTION, EventType.EV_EFI_HCRTM_EVENT):
        return _ascii(data)
    if event_type == EventType.EV_NO_ACTION:
        return _ascii(data[:16])  # the structure's signature
    if event_type in (EventType.EV_IPL, EventType.EV_S_CRTM_VERSION):
        # systemd-stub writes UTF-16 section names; GRUB and others ASCII commands
        if len(data) % 2 == 0 and len(data) >= 4 and data[1] == 0:
            return _utf16(data)
        return _ascii(data)
    if event_type == EventType.EV_EVENT_TAG:  # TCG_PCClientTaggedEvent: id, size, data
        _tag, size = struct.unpack_from("<II", data)
        return _ascii(data[8 : 8 + size])
    if event_type in (
        EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,
        EventType.EV_EFI_VARIABLE_BOOT,
        EventType.EV_EFI_VARIABLE_BOOT2,
        EventType.EV_EFI_VARIABLE_AUTHORITY,
    ):  # UEFI_VARIABLE_DATA: VariableName GUID, u64 UnicodeNameLength (characters), u64 data length, name
        (chars,) = struct.unpack_from("<Q", data, 16)
        return _utf16(data[32 : 32 + 2 * min(chars, _HINT_CHARS + 1)])
    if event_type in (
        EventType.EV_EFI_BOOT_SERVICES_APPLICATION,
        EventType.EV_EFI_BOOT_SERVICES_DRIVER,
        EventType.EV_EFI_RUNTIME_SERVICES_DRIVER,
    ):  # UEFI_IMAGE_LOAD_EVENT: location, length, link-time address, device path length, path
        (path_size,) = struct.unpack_from("<Q", data, 24)
        return _file_path(data[32 : 32 + min(path_size, len(data))])
    if event_type in (EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2, EventType.EV_EFI_HANDOFF_TABLES2):
        return _ascii(data[1 : 1 + data[0]])  # u8 description size, description
    return ""


def _file_path(path: bytes) -> str:
    """The File Path media nodes (type 4, subtype 4, UTF-16) of a UEFI device path, joined."""
    names: list[str] = []
    at = 0
    while at + 4 <= len(path) and len(names) < 8:
        node_type, subtype, length = struct.unpack_from("<BBH", path, at)
        if node_type == 0x7F or length < 4:
            break
        if (node_type, subtype) == (4, 4):
            names.append(_utf16(path[at + 4 : at + length]))
        at += length
    return "".join(names)
