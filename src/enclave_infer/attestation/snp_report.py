"""AMD SEV-SNP attestation reports: the ATTESTATION_REPORT and the forms it travels in, parsed.

Pure logic on bytes, nothing verified (:mod:`enclave_infer.attestation.snp` verifies). The one
parser of the report, used by the client's verifier and by the enclave's configfs-tsm provider
(``enclave/tsm.py``), which reads its own identity with it. The report is the ATTESTATION_REPORT of
the AMD SEV Secure Nested Paging Firmware ABI Specification (publication 56860, §7.3
"Attestation", Table 22 "ATTESTATION_REPORT Structure" in revision 1.55), versions 2 to 5;
:meth:`AttestationReport.from_bytes` checks a known version, SIGNATURE_ALGO 1 (ECDSA P-384 with
SHA-384), POLICY's reserved bit 17 set and no bit this module does not know, SIGNING_KEY VCEK or
VLEK, every reserved byte zero (the unsigned tail of the signature too).

Input forms: a raw 1184-byte report; the evidence container that :mod:`enclave_infer.enclave.tsm`
sends (``{"report": ..., "certs": ...}``, :func:`encode_snp_evidence` and
:func:`decode_snp_evidence`); an Azure HCL report (what an Azure confidential VM's vTPM holds at NV
index 0x1400001): a 32-byte header, the SNP report, a 20-byte runtime-data header and JSON runtime
claims, laid out as in ``az-cvm-vtpm/src/hcl/mod.rs`` (kinvolk/azure-cvm-tooling).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enclave_infer.attestation.report import SnpTcb
from enclave_infer.errors import AttestationError

__all__ = [
    "MAX_REPORT_BYTES",
    "REPORT_SIZE",
    "AttestationReport",
    "HclRuntimeClaims",
    "carries_certificates",
    "decode_snp_evidence",
    "decode_tcb",
    "encode_snp_evidence",
    "looks_like_snp_report",
    "product_of",
    "report_of",
    "unwrap_hcl",
]

# A raw report is 1184 bytes; the largest input form is the evidence container with a GHCB
# certificate table (base64 of four certificates, about 9 KB); an Azure HCL report is a 2600-byte
# vTPM NV index.
REPORT_SIZE = 0x4A0  # ATTESTATION_REPORT, every version
MAX_REPORT_BYTES = 64 * 1024

# --- ATTESTATION_REPORT (ABI 56860, Table 22), little-endian -----------------------------------

SUPPORTED_VERSIONS = frozenset({2, 3, 4, 5})  # 3 adds CPUID fields, 5 the mitigation vectors
VERSION = 0x000  # u32
GUEST_SVN = 0x004  # u32
POLICY = 0x008  # u64, GUEST_POLICY
FAMILY_ID = slice(0x010, 0x020)
IMAGE_ID = slice(0x020, 0x030)
VMPL = 0x030  # u32
SIGNATURE_ALGO = 0x034  # u32
CURRENT_TCB = slice(0x038, 0x040)
PLATFORM_INFO = 0x040  # u64
KEY_INFO = 0x048  # u32: bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 2-4 SIGNING_KEY
REPORT_DATA = slice(0x050, 0x090)
MEASUREMENT = slice(0x090, 0x0C0)
HOST_DATA = slice(0x0C0, 0x0E0)
ID_KEY_DIGEST = slice(0x0E0, 0x110)
AUTHOR_KEY_DIGEST = slice(0x110, 0x140)
REPORT_ID = slice(0x140, 0x160)
REPORT_ID_MA = slice(0x160, 0x180)
REPORTED_TCB = slice(0x180, 0x188)
CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP = 0x188, 0x189, 0x18A  # version 3 and later
CHIP_ID = slice(0x1A0, 0x1E0)
COMMITTED_TCB = slice(0x1E0, 0x1E8)
CURRENT_BUILD = slice(0x1E8, 0x1EB)  # build, minor, major
COMMITTED_BUILD = slice(0x1EC, 0x1EF)
LAUNCH_TCB = slice(0x1F0, 0x1F8)
LAUNCH_MIT_VECTOR, CURRENT_MIT_VECTOR = 0x1F8, 0x200  # u64 each, version 5 and later
SIGNED = slice(0x000, 0x2A0)  # what the signature covers
SIGNATURE_R = slice(0x2A0, 0x2E8)  # 72 bytes, little-endian
SIGNATURE_S = slice(0x2E8, 0x330)
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
SIGNING_KEYS = {0: "VCEK", 1: "VLEK"}  # 7 = no key (an unsigned report); 2-6 reserved
SIGNING_KEY_NONE = 7

# GUEST_POLICY bits (ABI 56860, "Guest Policy" structure)
POLICY_SMT = 1 << 16
POLICY_RESERVED_MBO = 1 << 17  # must be one
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20
POLICY_CXL_ALLOW = 1 << 21
POLICY_MEM_AES_256_XTS = 1 << 22
POLICY_RAPL_DIS = 1 << 23
POLICY_CIPHERTEXT_HIDING = 1 << 24
POLICY_PAGE_SWAP_DISABLE = 1 << 25
POLICY_KNOWN_BITS = (1 << 26) - 1

# PLATFORM_INFO bits (ABI 56860, "PLATFORM_INFO" field of the ATTESTATION_REPORT)
PLATFORM_INFO_BITS = {
    0: "smt_enabled",
    1: "tsme_enabled",
    2: "ecc_enabled",
    3: "rapl_disabled",
    4: "ciphertext_hiding_enabled",
    5: "alias_check_complete",
}

# CPUID(1).EAX family of each product (AMD "Processor Programming Reference" for families 19h, 1Ah)
PRODUCT_FAMILIES = {"Milan": 0x19, "Genoa": 0x19, "Turin": 0x1A}

# --- Azure HCL report (az-cvm-vtpm src/hcl/mod.rs: AttestationHeader, IgvmRequestData) ----------

HCL_SIGNATURE = b"HCLA"
HCL_HEADER = struct.Struct("<4sIIII12s")  # signature, version, report_size, request_type, status
HCL_VERSION = 2
HCL_REPORT_OFFSET = HCL_HEADER.size  # 32
HCL_RUNTIME_HEADER = struct.Struct("<IIIII")  # data_size, version, report_type, hash_type, var size
HCL_RUNTIME_OFFSET = HCL_REPORT_OFFSET + REPORT_SIZE  # 1216
HCL_CLAIMS_OFFSET = HCL_RUNTIME_OFFSET + HCL_RUNTIME_HEADER.size  # 1236
HCL_RUNTIME_VERSION = 1
HCL_REPORT_TYPE_SNP = 2
HCL_HASHES = {1: "sha256", 2: "sha384", 3: "sha512"}
HCL_USER_DATA = re.compile(r"[0-9a-fA-F]{128}")


# --- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttestationReport:
    """An ATTESTATION_REPORT, parsed and checked for structure (not yet for its signature)."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    current_tcb: bytes
    platform_info: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: str  # "VCEK" or "VLEK"
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid: tuple[int, int, int] | None  # family, model, stepping (versions 3 and later)
    chip_id: bytes
    committed_tcb: bytes
    current_build: tuple[int, int, int]  # build, minor, major
    committed_build: tuple[int, int, int]
    launch_tcb: bytes
    launch_mit_vector: int | None  # version 5 and later
    current_mit_vector: int | None

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @classmethod
    def from_bytes(cls, data: bytes) -> AttestationReport:
        """Parse the 1184 bytes; raises :class:`AttestationError` naming what is malformed."""
        if len(data) != REPORT_SIZE:
            raise AttestationError(f"SEV-SNP report is {len(data)} bytes, expected {REPORT_SIZE}")
        (version,) = struct.unpack_from("<I", data, VERSION)
        if version not in SUPPORTED_VERSIONS:
            raise AttestationError(f"SEV-SNP report version {version} is not supported (2 to 5)")
        (algo,) = struct.unpack_from("<I", data, SIGNATURE_ALGO)
        if algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
            raise AttestationError(f"SEV-SNP report signature algorithm {algo} is not ECDSA P-384 (1)")
        (policy,) = struct.unpack_from("<Q", data, POLICY)
        if not policy & POLICY_RESERVED_MBO:
            raise AttestationError("SEV-SNP report POLICY bit 17 is zero; the ABI reserves it as one")
        if policy & ~POLICY_KNOWN_BITS:
            raise AttestationError(f"SEV-SNP report POLICY {policy:#x} sets bits this verifier does not know")
        (key_info,) = struct.unpack_from("<I", data, KEY_INFO)
        signing_key = (key_info >> 2) & 0x7
        if key_info & ~0x1F:
            raise AttestationError(f"SEV-SNP report key information {key_info:#x} sets reserved bits")
        if signing_key == SIGNING_KEY_NONE:
            raise AttestationError("SEV-SNP report is unsigned (SIGNING_KEY is 'none')")
        if signing_key not in SIGNING_KEYS:
            raise AttestationError(f"SEV-SNP report SIGNING_KEY {signing_key} is reserved")
        with_cpuid = version >= 3
        with_mit = version >= 5
        reserved = [
            (0x04C, 0x050),
            (0x18B if with_cpuid else 0x188, 0x1A0),
            (0x1EB, 0x1EC),
            (0x1EF, 0x1F0),
            (0x208 if with_mit else 0x1F8, 0x2A0),
            (SIGNATURE_S.stop, REPORT_SIZE),  # unsigned: must be zero, or anyone could change it
        ]
        for start, stop in reserved:
            if any(data[start:stop]):
                raise AttestationError(
                    f"SEV-SNP report reserved bytes {start:#x}..{stop - 1:#x} are not zero"
                )
        vmpl, platform_info = (
            struct.unpack_from("<I", data, VMPL)[0],
            struct.unpack_from("<Q", data, PLATFORM_INFO)[0],
        )
        return cls(
            raw=bytes(data),
            version=version,
            guest_svn=struct.unpack_from("<I", data, GUEST_SVN)[0],
            policy=policy,
            family_id=data[FAMILY_ID],
            image_id=data[IMAGE_ID],
            vmpl=vmpl,
            current_tcb=data[CURRENT_TCB],
            platform_info=platform_info,
            author_key_en=bool(key_info & 0x1),
            mask_chip_key=bool(key_info & 0x2),
            signing_key=SIGNING_KEYS[signing_key],
            report_data=data[REPORT_DATA],
            measurement=data[MEASUREMENT],
            host_data=data[HOST_DATA],
            id_key_digest=data[ID_KEY_DIGEST],
            author_key_digest=data[AUTHOR_KEY_DIGEST],
            report_id=data[REPORT_ID],
            report_id_ma=data[REPORT_ID_MA],
            reported_tcb=data[REPORTED_TCB],
            cpuid=(data[CPUID_FAM_ID], data[CPUID_MOD_ID], data[CPUID_STEP]) if with_cpuid else None,
            chip_id=data[CHIP_ID],
            committed_tcb=data[COMMITTED_TCB],
            current_build=_build(data[CURRENT_BUILD]),
            committed_build=_build(data[COMMITTED_BUILD]),
            launch_tcb=data[LAUNCH_TCB],
            launch_mit_vector=struct.unpack_from("<Q", data, LAUNCH_MIT_VECTOR)[0] if with_mit else None,
            current_mit_vector=struct.unpack_from("<Q", data, CURRENT_MIT_VECTOR)[0] if with_mit else None,
        )


def _build(raw: bytes) -> tuple[int, int, int]:
    return raw[0], raw[1], raw[2]


def decode_tcb(raw: bytes, product: str) -> SnpTcb:
    """A TCB_VERSION in the layout of ``product`` (ABI 56860, "TCB_VERSION")."""
    if product == "Turin":
        return SnpTcb(fmc=raw[0], bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7])
    return SnpTcb(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])


def tcb_reserved_zero(raw: bytes, product: str) -> bool:
    return not any(raw[4:7] if product == "Turin" else raw[2:6])


def tcb_parts(tcb: SnpTcb) -> dict[str, int]:
    parts = {"bootloader": tcb.bootloader, "tee": tcb.tee, "snp": tcb.snp, "microcode": tcb.microcode}
    return parts if tcb.fmc is None else {"fmc": tcb.fmc, **parts}


def tcb_text(tcb: SnpTcb) -> str:
    return ", ".join(f"{k} {v}" for k, v in tcb_parts(tcb).items())


# --- input forms --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HclRuntimeClaims:
    """The runtime claims of an Azure HCL report, whose hash the SNP report's REPORT_DATA carries."""

    claims: bytes  # the JSON text, exactly as hashed
    hash_name: str  # "sha256", "sha384" or "sha512"
    document: Mapping[str, Any]
    user_data: bytes | None  # the guest's 64 bytes ("user-data"), when the claims carry them

    @property
    def digest(self) -> bytes:
        return hashlib.new(self.hash_name, self.claims).digest()


def unwrap_hcl(blob: bytes) -> tuple[bytes, HclRuntimeClaims]:
    """(SNP report, runtime claims) from an Azure HCL report; the binding is checked later."""
    if len(blob) < HCL_CLAIMS_OFFSET:
        raise AttestationError(f"Azure HCL report truncated: {len(blob)} bytes")
    magic, version, report_size, _request_type, status, reserved = HCL_HEADER.unpack_from(blob, 0)
    # request_type is not checked: nothing here depends on it, and the header is unsigned anyway.
    if magic != HCL_SIGNATURE or version != HCL_VERSION or status != 0 or any(reserved):
        raise AttestationError(f"Azure HCL report header is not version {HCL_VERSION} with status 0")
    data_size, runtime_version, report_type, hash_type, claims_size = HCL_RUNTIME_HEADER.unpack_from(
        blob, HCL_RUNTIME_OFFSET
    )
    if runtime_version != HCL_RUNTIME_VERSION:
        raise AttestationError(
            f"Azure HCL runtime data version {runtime_version} is not {HCL_RUNTIME_VERSION}"
        )
    if report_type != HCL_REPORT_TYPE_SNP:
        raise AttestationError(f"Azure HCL report holds report type {report_type}, not SEV-SNP (2)")
    if hash_type not in HCL_HASHES:
        raise AttestationError(f"Azure HCL runtime claims hash type {hash_type} is unknown")
    if data_size != HCL_RUNTIME_HEADER.size + claims_size or report_size != HCL_RUNTIME_OFFSET + data_size:
        raise AttestationError("Azure HCL report sizes are inconsistent")
    if report_size > len(blob) or any(blob[report_size:]):
        raise AttestationError("Azure HCL report is truncated or has data after its runtime claims")
    claims = blob[HCL_CLAIMS_OFFSET:report_size]
    try:
        document = json.loads(claims)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, a number int() refuses
        raise AttestationError("Azure HCL runtime claims are not JSON") from None
    if not isinstance(document, dict):
        raise AttestationError("Azure HCL runtime claims are not a JSON object")
    user_data = document.get("user-data")
    return blob[HCL_REPORT_OFFSET:HCL_RUNTIME_OFFSET], HclRuntimeClaims(
        claims=claims,
        hash_name=HCL_HASHES[hash_type],
        document=document,
        user_data=bytes.fromhex(user_data)
        if isinstance(user_data, str) and HCL_USER_DATA.fullmatch(user_data)
        else None,
    )


def encode_snp_evidence(report: bytes, certs: bytes | None) -> bytes:
    """The SEV-SNP evidence container: ``{"certs": base64 | null, "report": base64}``.

    What :mod:`enclave_infer.enclave.tsm` sends for a configfs-tsm report: ``report`` is the
    ATTESTATION_REPORT (the kernel's ``outblob``), ``certs`` the host's GHCB certificate table (its
    ``auxblob``), ``null`` when there is none (an empty table too). The enclave builds it with this
    function (this package never imports the enclave); :func:`decode_snp_evidence` reads it back.
    """
    doc = {
        "certs": base64.b64encode(certs).decode() if certs else None,
        "report": base64.b64encode(report).decode(),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_snp_evidence(data: bytes) -> tuple[bytes, bytes | None]:
    """(report, GHCB certificate table or None) from :func:`encode_snp_evidence`'s container."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, a number int() refuses
        raise AttestationError("SEV-SNP evidence is not JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"report", "certs"}:
        raise AttestationError('SEV-SNP evidence must be {"report": ..., "certs": ...}')
    report, certs = doc["report"], doc["certs"]
    if not isinstance(report, str) or not (certs is None or isinstance(certs, str)):
        raise AttestationError("SEV-SNP evidence fields must be base64 strings (certs may be null)")
    try:
        return (
            base64.b64decode(report, validate=True),
            None if certs is None else base64.b64decode(certs, validate=True),
        )
    except ValueError:  # binascii.Error, or base64's own for a str with non-ASCII characters
        raise AttestationError("SEV-SNP evidence holds invalid base64") from None


def looks_like_snp_report(data: bytes) -> bool:
    """Whether ``data`` is (by content, not verified) an SEV-SNP report in a form this module reads.

    A raw report is 1184 bytes starting with a u32 version 2..5 (a DCAP quote starts with a u16
    version and a u16 attestation key type of 2, so its second u16 is never zero) and SIGNATURE_ALGO
    1; an Azure HCL report starts with ``HCLA`` and holds SNP report type 2; the evidence container
    is a JSON object with exactly ``report`` and ``certs``."""
    if len(data) == REPORT_SIZE:
        version, algo = (
            struct.unpack_from("<I", data, VERSION)[0],
            struct.unpack_from("<I", data, SIGNATURE_ALGO)[0],
        )
        return version in SUPPORTED_VERSIONS and algo == SIGNATURE_ALGO_ECDSA_P384_SHA384
    if data.startswith(HCL_SIGNATURE) and len(data) >= HCL_CLAIMS_OFFSET:
        return bool(HCL_RUNTIME_HEADER.unpack_from(data, HCL_RUNTIME_OFFSET)[2] == HCL_REPORT_TYPE_SNP)
    if data[:1] == b"{" and len(data) <= MAX_REPORT_BYTES:
        try:
            decode_snp_evidence(data)
        except AttestationError:
            return False
        return True
    return False


def report_of(evidence: bytes) -> bytes:
    """The raw ATTESTATION_REPORT in any input form :func:`verify_snp_report` takes (raw, the
    evidence container, an Azure HCL report), unverified: for a host that fetches its collateral."""
    if evidence[:1] == b"{":
        evidence = decode_snp_evidence(evidence)[0]
    if evidence.startswith(HCL_SIGNATURE):
        evidence = unwrap_hcl(evidence)[0]
    if len(evidence) != REPORT_SIZE:
        raise AttestationError(f"an SEV-SNP report is {REPORT_SIZE} bytes, got {len(evidence)}")
    return evidence


def product_of(report: AttestationReport) -> str:
    """The product (``Milan``, ``Genoa``, ``Turin``) of the CPU that signed ``report``, from its CPUID
    family and model (reports v3 and later; AMD PPR for families 19h and 1Ah): what AMD's KDS needs."""
    if report.cpuid is None:
        raise AttestationError(
            "a version 2 SEV-SNP report does not name its CPU: give the certificates in a file"
        )
    family, model, _ = report.cpuid
    if family == PRODUCT_FAMILIES["Turin"]:
        return "Turin"
    if family == 0x19 and model <= 0x0F:
        return "Milan"
    if (family == 0x19 and 0x10 <= model <= 0x1F) or (family == 0x19 and 0xA0 <= model <= 0xAF):
        return "Genoa"
    raise AttestationError(f"unknown SEV-SNP product: CPU family {family:#x} model {model:#x}")


def carries_certificates(evidence: bytes) -> bool:
    """Whether ``evidence`` is the evidence container with a certificate table (unverified)."""
    return evidence[:1] == b"{" and decode_snp_evidence(evidence)[1] is not None
