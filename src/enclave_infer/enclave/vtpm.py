"""Evidence from a TPM 2.0 (a VM's vTPM, or swtpm): quotes over the PCRs the boot measured into.

Trusted code: runs inside the VM, on the enclave's side of the trust boundary. A minimal TPM 2.0
command client (TPM 2.0 Library specification, revision 1.59, Part 3 "Commands"; structures from
Part 2, marshalled with :mod:`enclave_infer.attestation.tpm`'s encoders and read with its
:class:`~enclave_infer.attestation.tpm.TpmReader`) over a byte transport, and the :class:`VtpmPlatform`
built on it. I/O is at the edge: a transport writes one command and reads one response,

* the kernel's resource manager, ``/dev/tpmrm0``: one ``write`` of the whole command, one ``read``
  of the whole response; the kernel flushes the transient objects of a file descriptor when it is
  closed, so each :func:`open_tpm` session opens the device anew;
* swtpm's TCP data socket (``swtpm socket --server type=tcp,...``), which takes the same raw
  commands (not the Microsoft simulator's framing): tests, and a vTPM reached over loopback.

The commands, each with its response code checked (a failure raises :class:`AttestationError`
naming the command and the decoded TPM_RC, Part 2 §6.6):

* TPM2_CreatePrimary (§24.1) in the endorsement hierarchy, with an empty password session
  (TPM_RS_PW): the attestation key, an ECC NIST P-256 restricted signing key, ECDSA with SHA-256.
  The template (:data:`AK_TEMPLATE`) is fixed and its ``unique`` field empty, so the same TPM
  (the same endorsement primary seed) derives the same key every time;
* TPM2_PCR_Read (§22.4) of the SHA-256 bank's :data:`~enclave_infer.attestation.tpm.QUOTED_PCRS`:
  one response carries at most 8 digests (TPML_DIGEST), so it is asked again for the rest, and
  the PCR update counter must not move in between;
* TPM2_Quote (§18.4) with the 64 bytes of report data as ``qualifyingData``, under the attestation
  key, scheme ECDSA-SHA256, over those PCRs;
* TPM2_FlushContext (§28.4) of the key, whatever happened;
* TPM2_PCR_Extend (§22.2): only tests use it, to play the firmware's part.

:class:`VtpmPlatform` (tee ``vtpm``) reads the boot's TCG event log once at start (the copy the
image's /init leaves in ``/run/enclave-infer/tpm-eventlog``, or securityfs's
``binary_bios_measurements``), quotes once to learn its code hash (the pcrDigest: see
:mod:`enclave_infer.attestation.tpm`), and then gives a fresh quote for each report data, in the
container :class:`~enclave_infer.attestation.tpm.VtpmEvidence` defines. The PCRs are read before and
after each quote; they must agree with each other and with the quote's digest (else it retries once),
and with the PCRs at start: a PCR extended since the boot would no longer match the event log. Its
evidence carries no hardware binding yet (``"hardware": null``): it is a software TPM's as far as a
verifier can tell, INSECURE. There is no sealing key.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from enclave_infer.attestation import tpm
from enclave_infer.attestation.report import Tee
from enclave_infer.attestation.tpm import (
    QUOTED_PCRS,
    REPORT_DATA_SIZE,
    ObjectAttributes,
    Quote,
    TpmAlg,
    TpmReader,
    VtpmEvidence,
    encode_pcr_selection,
    pcr_digest,
)
from enclave_infer.enclave import _pseudofs
from enclave_infer.errors import AttestationError, UsageError

__all__ = [
    "AK_ATTRIBUTES",
    "AK_TEMPLATE",
    "DEFAULT_DEVICE",
    "DEFAULT_EVENT_LOG",
    "EVENT_LOGS",
    "SECURITYFS_EVENT_LOG",
    "PcrValues",
    "TcpTpm",
    "TpmClient",
    "VtpmPlatform",
    "available",
    "describe_rc",
    "find_event_log",
    "open_tpm",
]

DEFAULT_DEVICE = Path("/dev/tpmrm0")
# Where the UKI's /init leaves the boot's event log for the service user, and where the kernel shows it
DEFAULT_EVENT_LOG = Path("/run/enclave-infer/tpm-eventlog")
SECURITYFS_EVENT_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
EVENT_LOGS = (DEFAULT_EVENT_LOG, SECURITYFS_EVENT_LOG)
# The event log travels base64'd in the attestation document, which a verifier caps at 256 KiB
# (attestation/evidence.py); a firmware's log is some KB (this project's VM: 8 KB), tens with large
# Secure Boot databases.
MAX_EVENT_LOG_BYTES = 128 * 1024
# The kernel's TPM_BUFSIZE, and the MAX_RESPONSE_SIZE of libtpms and of most TPMs: no response of
# the commands here comes near it (a quote with its signature is ~250 bytes).
MAX_RESPONSE_BYTES = 4096
TCP_TIMEOUT_SECONDS = 30.0
# TPM_RC_RETRY, _YIELDED, _TESTING are warnings that ask the caller to send the command again;
# this many times, this far apart, before giving up.
MAX_TPM_RETRIES = 5
TPM_RETRY_SECONDS = 0.05

TPM_ST_NO_SESSIONS = 0x8001
TPM_ST_SESSIONS = 0x8002
TPM_RS_PW = 0x40000009  # the password authorization session
TPM_RH_ENDORSEMENT = 0x4000000B
HEADER = struct.Struct(">HII")  # tag, size, command code / response code


class _Cc:
    """TPM_CC values (Part 2 §6.5.2) of the commands sent here."""

    CREATE_PRIMARY = 0x00000131
    QUOTE = 0x00000158
    FLUSH_CONTEXT = 0x00000165
    PCR_READ = 0x0000017E
    PCR_EXTEND = 0x00000182


# The attestation key's TPMT_PUBLIC template: ECC, nameAlg SHA-256, a restricted signing key made in
# and fixed to this TPM, used with an empty password (userWithAuth), no policy; TPMS_ECC_PARMS: no
# symmetric algorithm, scheme ECDSA with SHA-256, curve NIST P-256, no KDF; unique: an empty point.
AK_ATTRIBUTES = tpm.AK_ATTRIBUTES | ObjectAttributes.USER_WITH_AUTH
AK_TEMPLATE = (
    struct.pack(">HHI", TpmAlg.ECC, TpmAlg.SHA256, AK_ATTRIBUTES)
    + struct.pack(">H", 0)  # authPolicy
    + struct.pack(">HHHHH", TpmAlg.NULL, TpmAlg.ECDSA, TpmAlg.SHA256, tpm.TPM_ECC_NIST_P256, TpmAlg.NULL)
    + struct.pack(">HH", 0, 0)  # unique: x, y
)
# TPMS_AUTH_COMMAND: TPM_RS_PW, an empty nonce, no session attributes, an empty password.
_PASSWORD = struct.pack(">IHBH", TPM_RS_PW, 0, 0, 0)

# Response codes (Part 2 §6.6.3): format zero (TPM_RC_VER1 + n), warnings (TPM_RC_WARN + n) and
# format one (TPM_RC_FMT1 + n, which name a handle, session or parameter).
_VER1 = {
    0x000: "INITIALIZE", 0x001: "FAILURE", 0x003: "SEQUENCE", 0x00B: "PRIVATE", 0x019: "HMAC",
    0x020: "DISABLED", 0x021: "EXCLUSIVE", 0x024: "AUTH_TYPE", 0x025: "AUTH_MISSING", 0x026: "POLICY",
    0x027: "PCR", 0x028: "PCR_CHANGED", 0x02D: "UPGRADE", 0x02E: "TOO_MANY_CONTEXTS",
    0x02F: "AUTH_UNAVAILABLE", 0x030: "REBOOT", 0x031: "UNBALANCED", 0x042: "COMMAND_SIZE",
    0x043: "COMMAND_CODE", 0x044: "AUTHSIZE", 0x045: "AUTH_CONTEXT", 0x046: "NV_RANGE", 0x047: "NV_SIZE",
    0x048: "NV_LOCKED", 0x049: "NV_AUTHORIZATION", 0x04A: "NV_UNINITIALIZED", 0x04B: "NV_SPACE",
    0x04C: "NV_DEFINED", 0x050: "BAD_CONTEXT", 0x051: "CPHASH", 0x052: "PARENT", 0x053: "NEEDS_TEST",
    0x054: "NO_RESULT", 0x055: "SENSITIVE",
}  # fmt: skip
_WARN = {
    0x001: "CONTEXT_GAP", 0x002: "OBJECT_MEMORY", 0x003: "SESSION_MEMORY", 0x004: "MEMORY",
    0x005: "SESSION_HANDLES", 0x006: "OBJECT_HANDLES", 0x007: "LOCALITY", 0x008: "YIELDED",
    0x009: "CANCELED", 0x00A: "TESTING", 0x020: "NV_RATE", 0x021: "LOCKOUT", 0x022: "RETRY",
    0x023: "NV_UNAVAILABLE",
    **{0x010 + n: f"REFERENCE_H{n}" for n in range(7)},
    **{0x018 + n: f"REFERENCE_S{n}" for n in range(7)},
}  # fmt: skip
_FMT1 = {
    0x001: "ASYMMETRIC", 0x002: "ATTRIBUTES", 0x003: "HASH", 0x004: "VALUE", 0x005: "HIERARCHY",
    0x007: "KEY_SIZE", 0x008: "MGF", 0x009: "MODE", 0x00A: "TYPE", 0x00B: "HANDLE", 0x00C: "KDF",
    0x00D: "RANGE", 0x00E: "AUTH_FAIL", 0x00F: "NONCE", 0x010: "PP", 0x012: "SCHEME", 0x015: "SIZE",
    0x016: "SYMMETRIC", 0x017: "TAG", 0x018: "SELECTOR", 0x01A: "INSUFFICIENT", 0x01B: "SIGNATURE",
    0x01C: "KEY", 0x01D: "POLICY_FAIL", 0x01F: "INTEGRITY", 0x020: "TICKET", 0x021: "RESERVED_BITS",
    0x022: "BAD_AUTH", 0x023: "EXPIRED", 0x024: "POLICY_CC", 0x025: "BINDING", 0x026: "CURVE",
    0x027: "ECC_POINT",
}  # fmt: skip
_RETRY_WARNINGS = {0x908, 0x90A, 0x922}  # TPM_RC_YIELDED, TPM_RC_TESTING, TPM_RC_RETRY


def describe_rc(rc: int) -> str:
    """A TPM_RC as its name and what it points at, e.g. ``TPM_RC_VALUE (0x000001c4, parameter 1)``."""
    if rc >> 16:  # bits 16-23: a software layer's code (a TSS or resource manager), not the TPM's
        return f"response code {rc:#010x} from software layer {rc >> 16 & 0xFF}"
    if rc & 0x080:  # format one: bits 0-5 the error, bit 6 P, bits 8-11 N
        name = _FMT1.get(rc & 0x3F, f"{0x080 + (rc & 0x3F):#05x}")
        n = rc >> 8 & 0xF
        if rc & 0x040:
            where = f", parameter {n}"
        elif n:
            where = f", session {n - 8}" if n & 0x8 else f", handle {n}"
        else:
            where = ""
        return f"TPM_RC_{name} ({rc:#010x}{where})"
    if not rc & 0x100:
        return f"TPM 1.2 response code {rc:#010x}"
    if rc & 0x400:
        return f"vendor-specific response code {rc:#010x}"
    table = _WARN if rc & 0x800 else _VER1
    return f"TPM_RC_{table.get(rc & 0x7F, f'{rc:#05x}')} ({rc:#010x})"


# --- transports -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcpTpm:
    """swtpm's TCP data socket (``--server type=tcp,port=PORT``): raw TPM 2.0 commands."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"tcp:{self.host}:{self.port}"


class _Connection(Protocol):
    def transact(self, command: bytes) -> bytes: ...


class _DeviceConnection:
    """The kernel's TPM character device: one write per command, one read per response."""

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise _os_error(exc, path, "opening") from None

    def transact(self, command: bytes) -> bytes:
        try:
            written = os.write(self._fd, command)
            if written != len(command):
                raise AttestationError(f"{self._path}: short write ({written} of {len(command)} bytes)")
            return os.read(self._fd, MAX_RESPONSE_BYTES)
        except OSError as exc:
            raise _os_error(exc, self._path, "talking to") from None

    def close(self) -> None:
        os.close(self._fd)


class _TcpConnection:
    def __init__(self, address: TcpTpm) -> None:
        self._address = address
        try:
            self._socket = socket.create_connection((address.host, address.port), timeout=TCP_TIMEOUT_SECONDS)
        except OSError as exc:
            raise AttestationError(f"cannot reach the TPM at {address}: {exc.strerror or exc}") from None

    def transact(self, command: bytes) -> bytes:
        try:
            self._socket.sendall(command)
            header = self._receive(HEADER.size)
            size = HEADER.unpack(header)[1]
            if not HEADER.size <= size <= MAX_RESPONSE_BYTES:
                raise AttestationError(f"the TPM at {self._address} sent a response of {size} bytes")
            return header + self._receive(size - HEADER.size)
        except OSError as exc:
            raise AttestationError(f"talking to the TPM at {self._address}: {exc.strerror or exc}") from None

    def _receive(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._socket.recv(n - len(data))
            if not chunk:
                raise AttestationError(f"the TPM at {self._address} closed the connection mid-response")
            data += chunk
        return data

    def close(self) -> None:
        self._socket.close()


def _os_error(exc: OSError, path: Path, doing: str) -> AttestationError:
    name = _pseudofs.errno_name(exc)
    if isinstance(exc, FileNotFoundError):
        return AttestationError(f"{path} does not exist: no TPM in this machine, or its driver is not loaded")
    if isinstance(exc, PermissionError):
        return AttestationError(
            f"permission denied {doing} {path} ({name}): the service user needs read-write"
        )
    if exc.errno == errno.EBUSY:
        return AttestationError(f"{path} is busy ({name}): use the resource manager, /dev/tpmrm0")
    return AttestationError(f"TPM failed {doing} {path}: {name}: {exc.strerror or ''}")


# --- the commands ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PcrValues:
    """What TPM2_PCR_Read returned: the PCR update counter and the values by index."""

    update_counter: int
    values: Mapping[int, bytes]


class TpmClient:
    """TPM 2.0 commands over one connection. Each method sends one command (PCR_Read: as many as it
    takes) and raises :class:`AttestationError` naming it and the TPM_RC when the TPM refuses."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    def create_attestation_key(self) -> tuple[int, bytes]:
        """TPM2_CreatePrimary of :data:`AK_TEMPLATE` under TPM_RH_ENDORSEMENT: (handle, TPMT_PUBLIC)."""
        sensitive = struct.pack(">HHH", 4, 0, 0)  # TPM2B_SENSITIVE_CREATE: empty userAuth and data
        params = (
            sensitive
            + _tpm2b(AK_TEMPLATE)  # inPublic
            + _tpm2b(b"")  # outsideInfo
            + struct.pack(">I", 0)  # creationPCR: none
        )
        handles, r = self._call(
            "TPM2_CreatePrimary",
            _Cc.CREATE_PRIMARY,
            struct.pack(">I", TPM_RH_ENDORSEMENT),
            params,
            handles_out=1,
        )
        public = r.tpm2b(MAX_RESPONSE_BYTES, "outPublic")
        return handles[0], public  # creationData, creationHash, creationTicket and name follow

    def pcr_read(self, indices: tuple[int, ...] = QUOTED_PCRS) -> PcrValues:
        """TPM2_PCR_Read of the SHA-256 bank's ``indices``, as many times as it takes (at most 8
        values a response); raises if the PCRs change in between or some are not returned."""
        values: dict[int, bytes] = {}
        counter: int | None = None
        while remaining := tuple(i for i in indices if i not in values):
            _, r = self._call(
                "TPM2_PCR_Read",
                _Cc.PCR_READ,
                b"",
                encode_pcr_selection(TpmAlg.SHA256, remaining),
                sessions=False,
            )
            update_counter = r.u32()
            selection = r.pcr_selection()
            count = r.u32()
            digests = [r.tpm2b(tpm.MAX_DIGEST_BYTES, "PCR value") for _ in range(count)]
            r.done()
            returned = sorted(i for alg, pcrs in selection if alg == TpmAlg.SHA256 for i in pcrs)
            if len(selection) > 1 or len(returned) != count or not set(returned) <= set(remaining):
                raise AttestationError("TPM2_PCR_Read: the selection returned does not match the values")
            if not returned:
                raise AttestationError(
                    f"TPM2_PCR_Read returned none of SHA-256 PCRs {list(remaining)}: is the bank allocated?"
                )
            if counter is not None and update_counter != counter:
                raise AttestationError("TPM2_PCR_Read: the PCRs changed while they were being read")
            counter = update_counter
            for i, digest in zip(returned, digests, strict=True):
                if len(digest) != 32:
                    raise AttestationError(f"TPM2_PCR_Read: SHA-256 PCR {i} is {len(digest)} bytes")
                values[i] = digest
        return PcrValues(counter or 0, values)

    def quote(
        self, key: int, qualifying_data: bytes, indices: tuple[int, ...] = QUOTED_PCRS
    ) -> tuple[bytes, bytes]:
        """TPM2_Quote: (TPMS_ATTEST, TPMT_SIGNATURE) over the SHA-256 bank's ``indices``, signed with
        ECDSA-SHA256 by ``key``, carrying ``qualifying_data``."""
        params = (
            _tpm2b(qualifying_data)
            + struct.pack(">HH", TpmAlg.ECDSA, TpmAlg.SHA256)  # inScheme: TPMT_SIG_SCHEME
            + encode_pcr_selection(TpmAlg.SHA256, indices)
        )
        _, r = self._call("TPM2_Quote", _Cc.QUOTE, struct.pack(">I", key), params)
        quoted = r.tpm2b(MAX_RESPONSE_BYTES, "quoted")
        return quoted, r.rest()

    def flush_context(self, handle: int) -> None:
        """TPM2_FlushContext: unload a transient object."""
        self._call("TPM2_FlushContext", _Cc.FLUSH_CONTEXT, b"", struct.pack(">I", handle), sessions=False)

    def pcr_extend(self, index: int, digests: Mapping[TpmAlg, bytes]) -> None:
        """TPM2_PCR_Extend of PCR ``index`` with one digest per bank (TPML_DIGEST_VALUES). Tests use it
        to play the firmware's part; the enclave never extends."""
        params = struct.pack(">I", len(digests)) + b"".join(
            struct.pack(">H", alg) + digest for alg, digest in digests.items()
        )
        self._call("TPM2_PCR_Extend", _Cc.PCR_EXTEND, struct.pack(">I", index), params)

    def _call(
        self,
        name: str,
        code: int,
        handles: bytes,
        params: bytes,
        *,
        sessions: bool = True,
        handles_out: int = 0,
    ) -> tuple[list[int], TpmReader]:
        """Send one command (with the password session if ``sessions``); (response handles, a reader
        over the response parameters)."""
        if sessions:
            body = handles + struct.pack(">I", len(_PASSWORD)) + _PASSWORD + params
            tag = TPM_ST_SESSIONS
        else:
            body, tag = handles + params, TPM_ST_NO_SESSIONS
        command = HEADER.pack(tag, HEADER.size + len(body), code) + body
        for attempt in range(MAX_TPM_RETRIES + 1):
            response = self._connection.transact(command)
            if len(response) < HEADER.size:
                raise AttestationError(f"{name}: the TPM's response is {len(response)} bytes")
            rtag, size, rc = HEADER.unpack_from(response)
            if size != len(response):
                raise AttestationError(f"{name}: the TPM's response says {size} bytes but is {len(response)}")
            if rc in _RETRY_WARNINGS and attempt < MAX_TPM_RETRIES:
                time.sleep(TPM_RETRY_SECONDS)
                continue
            if rc:
                raise AttestationError(f"{name} failed: {describe_rc(rc)}")
            break
        r = TpmReader(response[HEADER.size :], f"{name} response")
        out = [r.u32() for _ in range(handles_out)]
        if rtag == TPM_ST_SESSIONS:
            parameters = r.take(r.u32())  # then the response's authorization area, not used
        elif rtag == TPM_ST_NO_SESSIONS:
            parameters = r.rest()
        else:
            raise AttestationError(f"{name}: the TPM's response tag is {rtag:#06x}")
        return out, TpmReader(parameters, f"{name} response")


def _tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


@contextlib.contextmanager
def open_tpm(device: Path | TcpTpm) -> Iterator[TpmClient]:
    """A :class:`TpmClient` on a fresh connection to ``device``, closed afterwards."""
    connection = _TcpConnection(device) if isinstance(device, TcpTpm) else _DeviceConnection(device)
    try:
        yield TpmClient(connection)
    finally:
        with contextlib.suppress(OSError):
            connection.close()


# --- the platform ---------------------------------------------------------------------------------


def available(device: Path = DEFAULT_DEVICE, event_logs: tuple[Path, ...] = EVENT_LOGS) -> bool:
    """Whether this process may use ``device`` and the boot left an event log to go with it."""
    return device.exists() and os.access(device, os.R_OK | os.W_OK) and find_event_log(event_logs) is not None


def find_event_log(candidates: tuple[Path, ...] = EVENT_LOGS) -> Path | None:
    """The first of ``candidates`` this process can read."""
    return next((p for p in candidates if p.is_file() and os.access(p, os.R_OK)), None)


class VtpmPlatform:
    """TPM 2.0 quotes over SHA-256 PCRs 0 to 15, with the boot's event log; INSECURE (software TPM)."""

    tee = Tee.VTPM

    def __init__(self, device: Path | TcpTpm = DEFAULT_DEVICE, event_log: Path = DEFAULT_EVENT_LOG) -> None:
        self._device = device
        self._lock = threading.Lock()  # one TPM session at a time: the enclave serves many threads
        self.signer: bytes = b""  # a TPM has no MRSIGNER
        self.product_id: int = 0
        self.security_version: int = 0
        self.debug: bool = False
        try:
            self.event_log: bytes = _pseudofs.read_all(event_log, limit=MAX_EVENT_LOG_BYTES)
        except FileNotFoundError:
            raise AttestationError(
                f"{event_log} does not exist: no TCG event log of the boot to send with the TPM's quotes"
            ) from None
        except OSError as exc:
            raise _os_error(exc, event_log, "reading") from None
        # One quote, with zero report data, says who we are; and that a verifier accepts its form.
        self._pcrs: Mapping[int, bytes] = {}
        evidence, pcrs = self._evidence(bytes(REPORT_DATA_SIZE))
        self._pcrs = pcrs
        self.code_hash: bytes = tpm.verify(evidence, b"", now=datetime.now(UTC)).code_hash

    def evidence(self, report_data: bytes) -> bytes:
        """A fresh quote carrying ``report_data``, in the vTPM evidence container."""
        if len(report_data) != REPORT_DATA_SIZE:
            raise UsageError(f"report data must be {REPORT_DATA_SIZE} bytes, not {len(report_data)}")
        evidence, pcrs = self._evidence(report_data)
        changed = [i for i in QUOTED_PCRS if pcrs[i] != self._pcrs[i]]
        if changed:
            raise AttestationError(
                f"PCR {', '.join(map(str, changed))} changed since the enclave started: the quote would not "
                "match the boot's event log"
            )
        return evidence

    def sealing_key(self) -> bytes:
        # A key sealed to this TPM under a PCR policy (TPM2_Create with a PolicyPCR authPolicy, then
        # TPM2_Unseal) would survive restarts of the same VM; not built yet.
        raise AttestationError(
            "no sealing key on this platform: the vTPM platform seals nothing to the TPM yet; "
            "provision one from a key broker after attestation"
        )

    def _evidence(self, report_data: bytes) -> tuple[bytes, Mapping[int, bytes]]:
        with self._lock, open_tpm(self._device) as client:
            handle, ak = client.create_attestation_key()
            try:
                for _ in range(2):  # a PCR extended during the quote: once more, then give up
                    before = client.pcr_read()
                    quoted, signature = client.quote(handle, report_data)
                    after = client.pcr_read()
                    quote = Quote.from_bytes(quoted)
                    if before == after and quote.pcr_digest == pcr_digest(after.values):
                        break
                else:
                    raise AttestationError("the PCRs changed during two quotes in a row")
            except BaseException:
                with contextlib.suppress(AttestationError):  # the first failure is the one to report
                    client.flush_context(handle)
                raise
            client.flush_context(handle)
        if quote.extra_data != report_data:
            raise AttestationError("the TPM's quote does not carry the report data it was given")
        return VtpmEvidence(quoted, signature, ak, after.values).encode(), after.values
