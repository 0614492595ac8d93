"""Evidence from Intel TDX and AMD SEV-SNP confidential VMs, through Linux configfs-tsm.

Trusted code: runs inside the confidential VM (a TDX trust domain or an SEV-SNP guest), on the
enclave's side of the trust boundary. It talks to the guest kernel's configfs-tsm report interface
(Linux ``Documentation/ABI/testing/configfs-tsm-report``, since v6.7;
``drivers/virt/coco/guest/report.c``), one fresh entry per request:

1. ``mkdir $root/$name``: a private report instance (``ENXIO`` when no TSM provider is registered,
   i.e. not a TDX/SEV-SNP guest or its driver not loaded);
2. read ``generation``: the count of writes to this entry;
3. write the 64 bytes of report data to ``inblob`` (committed when the file is closed);
4. read ``outblob``: the kernel asks the TSM for the report there and then (``EIO`` when the TSM or,
   for TDX, the host's Quote Generation Service fails; ``ENXIO`` without a provider);
5. read ``auxblob`` if the provider shows it (SEV-SNP: the certificate table of the GHCB
   specification, v2.03 §4.1.8.1; may be empty) and ``provider`` (``tdx_guest``, ``sev_guest``);
6. read ``generation`` again: it must be exactly one more than in step 2, or something else wrote
   to the entry meanwhile and the report may not carry our data (the ABI document's own advice).
   It is read after ``auxblob`` so that the check covers both blobs;
7. ``rmdir`` the entry, whatever happened.

Evidence bytes:

* TDX: the quote from ``outblob`` as it is (Intel TDX DCAP quote, v4 or v5).
* SEV-SNP: there are two blobs, so they travel in a small JSON container::

      {"certs": "<base64 of auxblob>" | null, "report": "<base64 of outblob>"}

  ``report`` is the 1184-byte ATTESTATION_REPORT; ``certs`` the GHCB certificate table (VCEK or
  VLEK, ASK, ARK), ``null`` when the host supplied none, in which case a verifier fetches the VCEK
  from AMD's key distribution service. The container has one definition, in
  :mod:`enclave_infer.attestation.snp` (:func:`~enclave_infer.attestation.snp.encode_snp_evidence`
  builds it here, :func:`~enclave_infer.attestation.snp.decode_snp_evidence` reads it).

Layouts, parsed only as far as the enclave needs to know its own identity (verification is the
client's job):

TDX quote: the format of "Intel TDX DCAP: Quote Generation Library and Quote Verification
Library", rev. 0.8, appendices 4 and 5 (the document the kernel ABI cites for ``tdx_guest``);
offsets as in Intel's own definitions of it, ``sgx_quote4_t``, ``sgx_quote5_t``,
``sgx_report2_body_t`` and ``sgx_report2_body_v1_5_t`` in
``QuoteGeneration/quote_wrapper/common/inc/sgx_quote_4.h`` and ``sgx_quote_5.h`` of
intel/SGXDataCenterAttestationPrimitives. TD_ATTRIBUTES bit 0 is DEBUG (TDX module ABI;
``TDX_TD_ATTRIBUTES_DEBUG`` in QEMU's TDX support)::

    0    header (48): version u16 (4 or 5), att_key_type u16 (2 = ECDSA P-256), tee_type u32 (0x81)
    v4:  48 TD report body (584), then signature_data_len u32 and signature data
    v5:  48 body type u16 (2 = TDX 1.0, 584 bytes; 3 = TDX 1.5, 648 bytes), 50 body size u32,
         54 TD report body, then signature_data_len u32 and signature data
    body +120 TD_ATTRIBUTES u64 LE, bit 0 = DEBUG
         +136 MRTD (48)
         +520 REPORTDATA (64)

SEV-SNP ATTESTATION_REPORT: AMD SEV Secure Nested Paging Firmware ABI Specification, publication
56860, §7.3 "Attestation", table "ATTESTATION_REPORT Structure" (Table 22 in revision 1.55, the
revision the kernel ABI cites for ``sev_guest``); offsets as in google/go-sev-guest
``abi/abi.go``, which implements that table. Report versions 3 and 5 add fields after 0x180 and
bits in existing fields (as documented by virtee's ``sev`` crate), none of which moves these::

    0x00 VERSION u32 (2 and later)
    0x08 POLICY u64 LE, bit 19 = DEBUG
    0x50 REPORT_DATA (64)
    0x90 MEASUREMENT (48)
    ...  0x4A0 bytes in all

Neither TEE has an MRSIGNER, a product id or an ISV SVN: ``signer`` is empty and the two numbers
are zero. configfs-tsm offers no sealing key either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from enclave_infer.attestation.snp import encode_snp_evidence
from enclave_infer.enclave import _intel_quote, _pseudofs
from enclave_infer.errors import AttestationError, UsageError

__all__ = [
    "DEFAULT_ROOT",
    "PROVIDER_TEES",
    "ConfigfsTsmPlatform",
    "SnpReport",
    "TdxQuoteBody",
    "TsmReport",
    "available",
    "parse_snp_report",
    "parse_tdx_quote",
]

DEFAULT_ROOT = Path("/sys/kernel/config/tsm/report")
PROVIDER_TEES = {"tdx_guest": "tdx", "sev_guest": "sev-snp"}
REPORT_DATA_SIZE = 64
MEASUREMENT_SIZE = 48  # MRTD and the SNP MEASUREMENT are both SHA-384 sized

# TDX quote header (sgx_quote4_header_t; v5 keeps it): the fields all Intel quotes share, in
# _intel_quote.
TDX_TEE_TYPE = 0x81
# v5 quote body descriptor (sgx_quote5_t): type u16, size u32, then the body.
TDX_V5_BODY_TYPE_OFFSET = 48
TDX_V5_BODY_SIZE_OFFSET = 50
TDX_V5_BODY_OFFSET = 54
TDX_BODY_SIZES = {2: 584, 3: 648}  # v5 body types: TD report for TDX 1.0, for TDX 1.5
TDX_V4_BODY_SIZE = 584
# TD report body (sgx_report2_body_t), offsets relative to the start of the body.
TDX_BODY_TD_ATTRIBUTES_OFFSET = 120
TDX_BODY_MRTD_OFFSET = 136
TDX_BODY_REPORT_DATA_OFFSET = 520
TDX_ATTR_DEBUG = 0x01  # TD_ATTRIBUTES bit 0

# SEV-SNP ATTESTATION_REPORT.
SNP_REPORT_SIZE = 0x4A0
SNP_VERSION_OFFSET = 0x00
SNP_POLICY_OFFSET = 0x08
SNP_REPORT_DATA_OFFSET = 0x50
SNP_MEASUREMENT_OFFSET = 0x90
SNP_MIN_VERSION = 2
SNP_POLICY_DEBUG = 1 << 19

# The kernel caps outblob and auxblob at TSM_REPORT_OUTBLOB_MAX (include/linux/tsm.h): 32 KiB at
# first, 16 MiB in later kernels (DICE-based TDX quotes). Read up to the larger; parsing decides.
MAX_BLOB_BYTES = 16 * 1024 * 1024
READ_CHUNK = 64 * 1024
MAX_TEXT_BYTES = 64

_ERRNO_HINTS = {
    errno.ENXIO: "no TSM provider is registered (not a TDX or SEV-SNP guest, or its driver is not loaded)",
    errno.EIO: "the TSM failed to produce the report (for TDX: is the host's Quote Generation Service "
    "reachable?)",
    errno.EFBIG: "the report is larger than configfs-tsm allows",
    errno.EBUSY: "the entry is being written too often",
}


@dataclass(frozen=True)
class TdxQuoteBody:
    """The fields of a TDX quote's TD report body that identify the trust domain."""

    version: int
    mrtd: bytes
    td_attributes: int
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes & TDX_ATTR_DEBUG)


@dataclass(frozen=True)
class SnpReport:
    """The fields of an SEV-SNP attestation report that identify the guest."""

    version: int
    policy: int
    measurement: bytes
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(self.policy & SNP_POLICY_DEBUG)


@dataclass(frozen=True)
class TsmReport:
    """What one configfs-tsm request returned."""

    provider: str
    outblob: bytes
    auxblob: bytes | None


def parse_tdx_quote(quote: bytes) -> TdxQuoteBody:
    """The TD report body of a TDX DCAP quote (v4 or v5); structure only, no signature check."""
    if len(quote) < _intel_quote.HEADER_SIZE:
        raise AttestationError(f"TDX quote truncated: {len(quote)} bytes, shorter than its header")
    version, att_key_type, tee_type = _intel_quote.HEADER.unpack_from(quote)
    if tee_type != TDX_TEE_TYPE:
        raise AttestationError(f"not a TDX quote: TEE type {tee_type:#x} (expected 0x81)")
    if att_key_type != _intel_quote.ATT_KEY_TYPE_ECDSA_P256:
        raise AttestationError(f"TDX quote attestation key type {att_key_type} is not ECDSA P-256")
    if version == 4:
        body_offset, body_size = _intel_quote.HEADER_SIZE, TDX_V4_BODY_SIZE
    elif version == 5:
        if len(quote) < TDX_V5_BODY_OFFSET:
            raise AttestationError(f"TDX quote truncated: {len(quote)} bytes")
        (body_type,) = struct.unpack_from("<H", quote, TDX_V5_BODY_TYPE_OFFSET)
        (body_size,) = struct.unpack_from("<I", quote, TDX_V5_BODY_SIZE_OFFSET)
        if TDX_BODY_SIZES.get(body_type) != body_size:
            raise AttestationError(
                f"TDX quote v5 body type {body_type} of {body_size} bytes is not a TD report"
            )
        body_offset = TDX_V5_BODY_OFFSET
    else:
        raise AttestationError(f"TDX quote version {version} is not supported (expected 4 or 5)")
    body = _intel_quote.report_body(quote, body_offset, body_size, tee="TDX", body="TD report body")
    (attributes,) = struct.unpack_from("<Q", body, TDX_BODY_TD_ATTRIBUTES_OFFSET)
    return TdxQuoteBody(
        version=version,
        mrtd=body[TDX_BODY_MRTD_OFFSET : TDX_BODY_MRTD_OFFSET + MEASUREMENT_SIZE],
        td_attributes=attributes,
        report_data=body[TDX_BODY_REPORT_DATA_OFFSET : TDX_BODY_REPORT_DATA_OFFSET + REPORT_DATA_SIZE],
    )


def parse_snp_report(report: bytes) -> SnpReport:
    """The identity fields of an SEV-SNP ATTESTATION_REPORT; structure only, no signature check."""
    if len(report) != SNP_REPORT_SIZE:
        raise AttestationError(
            f"SEV-SNP attestation report is {len(report)} bytes, expected {SNP_REPORT_SIZE}"
        )
    (version,) = struct.unpack_from("<I", report, SNP_VERSION_OFFSET)
    if version < SNP_MIN_VERSION:
        raise AttestationError(f"SEV-SNP attestation report version {version} is not supported")
    (policy,) = struct.unpack_from("<Q", report, SNP_POLICY_OFFSET)
    return SnpReport(
        version=version,
        policy=policy,
        measurement=report[SNP_MEASUREMENT_OFFSET : SNP_MEASUREMENT_OFFSET + MEASUREMENT_SIZE],
        report_data=report[SNP_REPORT_DATA_OFFSET : SNP_REPORT_DATA_OFFSET + REPORT_DATA_SIZE],
    )


def available(root: Path = DEFAULT_ROOT) -> bool:
    """Whether the kernel exposes configfs-tsm reports at ``root``.

    This says nothing of whether a TSM provider is registered; constructing
    :class:`ConfigfsTsmPlatform` finds out, and says so in one line if not.
    """
    return root.is_dir()


class ConfigfsTsmPlatform:
    """TDX quotes or SEV-SNP reports through the guest kernel's configfs-tsm."""

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self._root = root
        if not root.is_dir():
            raise AttestationError(
                f"{root} does not exist: the kernel has no configfs-tsm (Linux 6.7+, CONFIG_TSM_REPORTS), "
                "configfs is not mounted, or this is not a confidential VM"
            )
        # One report, with zero report data, tells us what we are and who we are.
        tee, _, measurement, debug = self._evidence(bytes(REPORT_DATA_SIZE))
        self.tee: str = tee
        self.code_hash: bytes = measurement
        self.signer: bytes = b""  # neither TDX nor SEV-SNP has an MRSIGNER
        self.product_id: int = 0
        self.security_version: int = 0
        self.debug: bool = debug

    def evidence(self, report_data: bytes) -> bytes:
        """A TDX quote, or the SEV-SNP container, whose report data is ``report_data``."""
        if len(report_data) != REPORT_DATA_SIZE:
            raise UsageError(f"report data must be {REPORT_DATA_SIZE} bytes, not {len(report_data)}")
        tee, evidence, measurement, _ = self._evidence(report_data)
        if (tee, measurement) != (self.tee, self.code_hash):
            raise AttestationError("configfs-tsm report names a different TEE or measurement than at start")
        return evidence

    def sealing_key(self) -> bytes:
        raise AttestationError(
            f"no sealing key on this platform: configfs-tsm ({self.tee}) offers none; "
            "provision one from a key broker after attestation"
        )

    def request(self, report_data: bytes) -> TsmReport:
        """One configfs-tsm round trip in a fresh entry, removed afterwards."""
        entry = self._root / f"enclave-infer-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            _mkdir(entry)
        except FileNotFoundError:
            raise AttestationError(f"{self._root} does not exist: the kernel has no configfs-tsm") from None
        except OSError as exc:
            raise _os_error(exc, entry, "creating a configfs-tsm entry") from None
        try:
            report = _fill(entry, report_data)
        except BaseException:
            with contextlib.suppress(OSError):
                _rmdir(entry)
            raise
        try:
            _rmdir(entry)
        except OSError as exc:
            raise _os_error(exc, entry, "removing the configfs-tsm entry") from None
        return report

    def _evidence(self, report_data: bytes) -> tuple[str, bytes, bytes, bool]:
        report = self.request(report_data)
        tee = PROVIDER_TEES.get(report.provider)
        if tee == "tdx":
            quote = parse_tdx_quote(report.outblob)
            evidence, measurement, debug, carried = report.outblob, quote.mrtd, quote.debug, quote.report_data
        elif tee == "sev-snp":
            snp = parse_snp_report(report.outblob)
            evidence = encode_snp_evidence(report.outblob, report.auxblob)
            measurement, debug, carried = snp.measurement, snp.debug, snp.report_data
        else:
            raise AttestationError(
                f"unsupported configfs-tsm provider {report.provider!r} "
                f"(supported: {', '.join(sorted(PROVIDER_TEES))})"
            )
        if carried != report_data:
            raise AttestationError("configfs-tsm report does not carry the report data that was written")
        return tee, evidence, measurement, debug


# Indirections, so that tests can play the kernel's part in populating and removing an entry.
def _mkdir(path: Path) -> None:
    os.mkdir(path)


def _rmdir(path: Path) -> None:
    os.rmdir(path)


def _fill(entry: Path, report_data: bytes) -> TsmReport:
    before = _read_generation(entry)
    _write_inblob(entry / "inblob", report_data)
    outblob = _read_blob(entry / "outblob")
    if not outblob:
        raise AttestationError(f"{entry / 'outblob'}: the TSM returned an empty report")
    auxblob = _read_blob(entry / "auxblob", missing_ok=True)  # TDX shows no auxblob
    provider = _read_text(entry / "provider")
    after = _read_generation(entry)
    if after != before + 1:
        raise AttestationError(
            f"configfs-tsm entry was changed concurrently (generation {before} -> {after}, expected "
            f"{before + 1}): {entry}"
        )
    return TsmReport(provider=provider, outblob=outblob, auxblob=auxblob or None)


def _read_generation(entry: Path) -> int:
    text = _read_text(entry / "generation")
    try:
        return int(text)
    except ValueError:
        raise AttestationError(f"{entry / 'generation'}: not a number: {text!r}") from None


def _read_text(path: Path) -> str:
    try:
        return _pseudofs.read_text(path, MAX_TEXT_BYTES)
    except OSError as exc:
        raise _os_error(exc, path, "reading") from None


@overload
def _read_blob(path: Path) -> bytes: ...
@overload
def _read_blob(path: Path, *, missing_ok: bool) -> bytes | None: ...
def _read_blob(path: Path, *, missing_ok: bool = False) -> bytes | None:
    """Everything in a configfs binary attribute (None if absent and ``missing_ok``)."""
    try:
        return _pseudofs.read_all(path, limit=MAX_BLOB_BYTES, chunk=READ_CHUNK)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise AttestationError(f"{path} does not exist: not a configfs-tsm report entry") from None
    except OSError as exc:
        raise _os_error(exc, path, "reading") from None


def _write_inblob(path: Path, data: bytes) -> None:
    # configfs commits a binary attribute when it is closed
    _pseudofs.write_exact(
        path, data, os_error=_os_error, opening="opening", writing="writing", committing="committing"
    )


def _os_error(exc: OSError, path: Path, doing: str) -> AttestationError:
    name = _pseudofs.errno_name(exc)
    if isinstance(exc, PermissionError):
        return AttestationError(f"permission denied {doing} {path} ({name}): configfs-tsm needs root")
    hint = _ERRNO_HINTS.get(exc.errno or 0, exc.strerror or "")
    return AttestationError(f"configfs-tsm failed {doing} {path}: {name}: {hint}")
