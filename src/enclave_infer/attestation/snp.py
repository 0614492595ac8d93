"""AMD SEV-SNP attestation reports: verification on bytes, and mapping onto security levels.

Pure logic on bytes, used by clients (and by ``enclave-infer verify-evidence``). The report is the
ATTESTATION_REPORT of the AMD SEV Secure Nested Paging Firmware ABI Specification (publication
56860, §7.3 "Attestation", Table 22 "ATTESTATION_REPORT Structure" in revision 1.55), versions 2
to 5; the certificates are those of AMD's "Versioned Chip Endorsement Key (VCEK) Certificate and
KDS Interface Specification" (publication 57230). :func:`verify_snp_report` runs, at the ``now``
the caller gives:

1. unwrap the input: a raw 1184-byte report, an Azure HCL report that wraps one, or the evidence
   container that :mod:`enclave_infer.enclave.tsm` sends (``{"report": ..., "certs": ...}``,
   :func:`encode_snp_evidence` and :func:`decode_snp_evidence`);
2. parse the report (:meth:`AttestationReport.from_bytes`): a known version, SIGNATURE_ALGO 1
   (ECDSA P-384 with SHA-384), POLICY's reserved bit 17 set and no bit this module does not know,
   SIGNING_KEY VCEK or VLEK, every reserved byte zero (the unsigned tail of the signature too);
3. an Azure HCL report: the hash of its runtime claims must equal REPORT_DATA (the rest zero);
4. the chain, out of the collateral (:func:`parse_snp_collateral`): VCEK ← ASK ← ARK, or VLEK ←
   ASVK ← ARK, where the ARK is one of AMD's roots pinned in :mod:`._amd_roots`, chosen by the
   intermediate's issuer name (an ARK in the collateral must be that one, byte for byte, and any
   other intermediate must be issued by it too); names, CA flags, every certificate inside its
   validity at ``now``, and each signature's outer and inner AlgorithmIdentifier exactly AMD's
   RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt. Checks without cryptography first,
   so that garbage costs little;
5. each link's RSASSA-PSS signature, from the ARK down;
6. when a CRL is given: AMD's CRL, signed by that ARK, current at ``now``, not revoking the ASK or
   ASVK;
7. the report's signature: ECDSA P-384 with SHA-384 over bytes 0x000..0x29F, R and S stored
   little-endian at 0x2A0 and 0x2E8, under the key of the VCEK (or VLEK);
8. the VCEK/VLEK's AMD extensions (OID arc 1.3.6.1.4.1.3704.1) against the report: product name;
   boot loader, TEE, SNP, microcode (and, on Turin, FMC) patch levels equal to REPORTED_TCB;
   hwID equal to CHIP_ID for a VCEK (a VLEK has none); CPUID family of the product (reports v3+);
9. map the findings onto a security level:

=============================================================  ===============
finding                                                        level
=============================================================  ===============
every check passed, REPORTED_TCB not below COMMITTED_TCB       SECURE
REPORTED_TCB below COMMITTED_TCB in some component: the        STALE
report is signed with an endorsement key for older firmware
than the platform has committed to, a key that this older,
maybe vulnerable, firmware can derive too (AMD publishes no
TCB status to compare with: a client sets its own floor with
the ``SNPTCB:`` constraint)
guest POLICY allows debugging (bit 19), whatever the TCB       INSECURE
any check of steps 1 to 8 failing                              AttestationError
=============================================================  ===============

Findings that do not change the level are listed in :attr:`SnpVerdict.findings`: SMT, a migration
agent or CXL allowed by the policy, a VMPL other than 0, a VLEK (and its cloud provider), a masked
CHIP_ID, REPORTED_TCB below CURRENT_TCB, no ID block, no CRL checked, an Azure HCL wrapper.

The :class:`EnclaveReport`: ``code_hash`` is MEASUREMENT (48 bytes; ``C:`` with 96 hex digits),
``report_data`` is REPORT_DATA, ``snp_tcb`` is REPORTED_TCB (what ``SNPTCB:`` checks). ``signer``
is empty and ``product_id`` and ``security_version`` are zero: GUEST_SVN and FAMILY_ID/IMAGE_ID
come from an ID block that anyone may sign, so they are reported (with ID_KEY_DIGEST and
AUTHOR_KEY_DIGEST) but not mapped onto ``REVOKE:``. ``issued_at`` (what ``EXPIRE:`` measures) is
the CRL's thisUpdate, the age of AMD's latest word on its keys; without a CRL there is none.

Azure HCL reports (what an Azure confidential VM's vTPM holds at NV index 0x1400001): a 32-byte
header, the SNP report, a 20-byte runtime-data header and JSON runtime claims; layout as in
``az-cvm-vtpm/src/hcl/mod.rs`` (kinvolk/azure-cvm-tooling). The report's REPORT_DATA then binds the
hash of those claims (vTPM keys, VM configuration, the guest's ``user-data``), not a value the
guest chose directly, and MEASUREMENT is that of Azure's paravisor, not of the guest OS (which only
the vTPM's PCRs measure; not checked here). The verdict says so; ``report_data`` stays the raw
REPORT_DATA, so it binds an enclave-infer key only through a vTPM quote this module does not check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from enclave_infer.attestation._amd_roots import ARK_PEM, ARK_SHA256
from enclave_infer.attestation._x509 import PARSE_ERRORS
from enclave_infer.attestation.report import EnclaveReport, SecurityLevel, SnpTcb
from enclave_infer.errors import AttestationError, UsageError

__all__ = [
    "MAX_COLLATERAL_BYTES",
    "MAX_COLLATERAL_CERTS",
    "MAX_CRL_BYTES",
    "MAX_REPORT_BYTES",
    "REPORT_SIZE",
    "AttestationReport",
    "HclRuntimeClaims",
    "SnpCollateral",
    "SnpVerdict",
    "SnpVerifier",
    "decode_snp_evidence",
    "encode_snp_evidence",
    "looks_like_snp_report",
    "parse_snp_collateral",
    "verify_snp_report",
]

# --- limits -----------------------------------------------------------------------------------

REPORT_SIZE = 0x4A0  # ATTESTATION_REPORT, every version
# The largest input form is the evidence container with a GHCB certificate table (base64 of four
# certificates, about 9 KB); an Azure HCL report is a 2600-byte vTPM NV index.
MAX_REPORT_BYTES = 64 * 1024
# A PEM bundle of VCEK/VLEK, ASK, ASVK and ARK is about 9 KB.
MAX_COLLATERAL_BYTES = 64 * 1024
# VCEK or VLEK, ASK, ASVK, ARK: confidential-containers/trustee's Milan bundle holds ASK and ASVK.
MAX_COLLATERAL_CERTS = 4
# AMD's CRLs list a handful of revoked ASKs/ASVKs and are about 1 KB.
MAX_CRL_BYTES = 64 * 1024
# A GHCB certificate table: the four certificates above and a few other blobs (e.g. platform info).
MAX_CERT_TABLE_ENTRIES = 8
# Parsed certificates kept (ARKs, ASKs, ASVKs and the VCEKs of the last few chips seen).
CERTIFICATE_CACHE_SIZE = 64

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

# --- AMD certificates (publication 57230) ------------------------------------------------------

AMD_OID_ARC = "1.3.6.1.4.1.3704.1"
OID_PRODUCT_NAME = AMD_OID_ARC + ".2"
OID_BL_SPL = AMD_OID_ARC + ".3.1"
OID_TEE_SPL = AMD_OID_ARC + ".3.2"
OID_SNP_SPL = AMD_OID_ARC + ".3.3"
OID_UCODE_SPL = AMD_OID_ARC + ".3.8"
OID_FMC_SPL = AMD_OID_ARC + ".3.9"  # Turin
OID_HWID = AMD_OID_ARC + ".4"  # VCEK only: CHIP_ID (Turin: its first 8 bytes)
OID_CSP_ID = AMD_OID_ARC + ".5"  # VLEK only: the cloud provider it was issued to
TURIN_HWID_SIZE = 8

# RSASSA-PSS, SHA-384, MGF1 with SHA-384, salt 48 (RFC 4055 §3.1): AMD encodes it in certificates
# with an explicit trailerField of 1, and without it (the DER form) in its CRLs.
_PSS_PARAMS = (
    "06092a864886f70d01010a"  # id-RSASSA-PSS
    "{len}"
    "a00f300d06096086480165030402020500"  # hashAlgorithm sha384
    "a11c301a06092a864886f70d010108300d06096086480165030402020500"  # maskGenAlgorithm mgf1(sha384)
    "a203020130"  # saltLength 48
)
PSS_SHA384_ALGORITHMS = frozenset(
    {
        bytes.fromhex("3046" + _PSS_PARAMS.format(len="3039") + "a303020101"),
        bytes.fromhex("3041" + _PSS_PARAMS.format(len="3034")),
    }
)
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)

# GHCB specification (AMD publication 56421) v2.03, §4.1.8.1: the certificate table of an extended
# guest request: (GUID, offset, length) entries ended by an all-zero entry; GUIDs of AMD's keys.
CERT_TABLE_ENTRY = struct.Struct("<16sII")
CERT_TABLE_GUIDS = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes: "VCEK",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1").bytes: "VLEK",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes: "ASK",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes: "ARK",
}

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

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)


class _Refused(Exception):
    """Internal: malformed DER; turned into an AttestationError naming the object."""


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


def _tcb_reserved_zero(raw: bytes, product: str) -> bool:
    return not any(raw[4:7] if product == "Turin" else raw[2:6])


def _tcb_parts(tcb: SnpTcb) -> dict[str, int]:
    parts = {"bootloader": tcb.bootloader, "tee": tcb.tee, "snp": tcb.snp, "microcode": tcb.microcode}
    return parts if tcb.fmc is None else {"fmc": tcb.fmc, **parts}


def _tcb_text(tcb: SnpTcb) -> str:
    return ", ".join(f"{k} {v}" for k, v in _tcb_parts(tcb).items())


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


def _unwrap_hcl(blob: bytes) -> tuple[bytes, HclRuntimeClaims]:
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


def _certificate_table(table: bytes) -> list[bytes]:
    """The DER certificates (VCEK, VLEK, ASK, ARK) of a GHCB certificate table; other blobs skipped."""
    ders: list[bytes] = []
    for i in range(MAX_CERT_TABLE_ENTRIES + 1):
        at = i * CERT_TABLE_ENTRY.size
        if at + CERT_TABLE_ENTRY.size > len(table):
            raise AttestationError("SEV-SNP certificate table has no terminating entry")
        guid, offset, length = CERT_TABLE_ENTRY.unpack_from(table, at)
        if not any(table[at : at + CERT_TABLE_ENTRY.size]):
            return ders
        if length == 0 or offset + length > len(table):
            raise AttestationError(f"SEV-SNP certificate table entry {i} points outside the table")
        if guid in CERT_TABLE_GUIDS:
            ders.append(table[offset : offset + length])
    raise AttestationError(f"SEV-SNP certificate table has more than {MAX_CERT_TABLE_ENTRIES} entries")


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


# --- DER framing (only what the checks below need; the parsing itself is cryptography's) ---------


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end) of the DER element at ``pos``: one-byte tags, minimal lengths."""
    if pos + 2 > len(data) or data[pos] & 0x1F == 0x1F:
        raise _Refused
    tag, first, pos = data[pos], data[pos + 1], pos + 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if not 1 <= n <= 3 or pos + n > len(data) or data[pos] == 0:
            raise _Refused
        length, pos = int.from_bytes(data[pos : pos + n], "big"), pos + n
        if length < 0x80:
            raise _Refused
    if pos + length > len(data):
        raise _Refused
    return tag, pos, pos + length


def _check_signed_layout(der: bytes, tbs: bytes, signature: bytes, *, crl: bool) -> None:
    """``der`` is exactly SEQUENCE { tbs, AMD's RSASSA-PSS AlgorithmIdentifier, BIT STRING signature },
    and ``tbs`` names the same AlgorithmIdentifier (RFC 5280 §4.1.1.2, §5.1.1.2). Nothing outside
    ``tbs`` is signed, so nothing else may vary."""
    tag, start, end = _tlv(der, 0)
    if tag != 0x30 or end != len(der) or der[start : start + len(tbs)] != tbs:
        raise _Refused
    _, _, alg_end = _tlv(der, start + len(tbs))
    algorithm = der[start + len(tbs) : alg_end]
    tag, bits, end = _tlv(der, alg_end)
    if algorithm not in PSS_SHA384_ALGORITHMS or tag != 0x03 or end != len(der):
        raise _Refused
    if end == bits or der[bits] != 0 or der[bits + 1 : end] != signature:  # no unused bits
        raise _Refused
    # inside tbs: certificate: [0] version, serial, signature; CRL: version (optional), signature
    _, pos, _ = _tlv(tbs, 0)
    for skip in (0x02,) if crl else (0xA0, 0x02):
        tag, _, after = _tlv(tbs, pos)
        if tag == skip:
            pos = after
    _, _, inner_end = _tlv(tbs, pos)
    if tbs[pos:inner_end] != algorithm:
        raise _Refused


def _der_uint8(value: bytes) -> int:
    """A DER INTEGER from 0 to 255 (an SPL extension)."""
    tag, start, end = _tlv(value, 0)
    content = value[start:end]
    if tag != 0x02 or end != len(value):
        raise _Refused
    if len(content) == 1 and content[0] < 0x80:
        return content[0]
    if len(content) == 2 and content[0] == 0 and content[1] >= 0x80:
        return content[1]
    raise _Refused


def _der_ia5(value: bytes) -> str:
    """A DER IA5String (the product name and cspID extensions)."""
    tag, start, end = _tlv(value, 0)
    if tag != 0x16 or end != len(value) or not value[start:end].isascii():
        raise _Refused
    return value[start:end].decode("ascii")


# --- collateral -------------------------------------------------------------------------------


@lru_cache(maxsize=CERTIFICATE_CACHE_SIZE)
def _load_certificate(der: bytes) -> x509.Certificate:
    """Parse one DER certificate. Cached by its exact bytes: a parsed certificate is immutable, and
    the same few AMD certificates come with every report (only parsing is cached, no verdict)."""
    with warnings.catch_warnings():
        # AMD's VCEKs and VLEKs carry serial number 0, which RFC 5280 forbids: cryptography loads
        # them with a CryptographyDeprecationWarning (and announces it will refuse them one day).
        # It also warns of some malformed names (e.g. a country name of the wrong length). A
        # certificate is untrusted input here: warnings about it are not to be printed or, under
        # pytest's "error" filter, raised; the signature checks decide. (catch_warnings changes
        # process-wide state, which is why the parsing that needs it is kept this short.)
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            cert = x509.load_der_x509_certificate(der)
            # parsed lazily by cryptography: touch what the checks use, so that errors surface here
            cert.public_key(), cert.subject, cert.issuer
        except PARSE_ERRORS:
            raise AttestationError("collateral holds a certificate that does not parse") from None
    return cert


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if len(names) == 1 else None
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class SnpCollateral:
    """AMD certificates for a report, sorted by role; parsed, not yet verified."""

    endorsement_key: x509.Certificate  # the VCEK or VLEK (an EC P-384 key)
    intermediates: tuple[x509.Certificate, ...]  # ASK and/or ASVK
    ark: x509.Certificate | None  # when the bundle carries one; the pinned ARK is used either way


def _split_certificates(data: bytes) -> list[bytes]:
    if b"-----BEGIN" in data:
        ders, last = [], 0
        for match in _PEM_BLOCK.finditer(data):
            if data[last : match.start()].strip():
                raise AttestationError("collateral has text outside its PEM blocks")
            if match[1] == b"X509 CRL":  # AMD's CRL travels in the bundle too (crl_of)
                last = match.end()
                continue
            if match[1] != b"CERTIFICATE":
                raise AttestationError(f"collateral holds a PEM {match[1].decode()!r}, not a CERTIFICATE")
            try:
                ders.append(base64.b64decode(re.sub(rb"\s", b"", match[2]), validate=True))
            except binascii.Error:
                raise AttestationError("collateral holds a PEM certificate with invalid base64") from None
            last = match.end()
        if data[last:].strip():
            raise AttestationError("collateral has text outside its PEM blocks")
        return ders
    ders, pos = [], 0  # DER certificates, one after the other
    while pos < len(data):
        try:
            tag, _, end = _tlv(data, pos)
        except _Refused:
            raise AttestationError("collateral is neither PEM nor DER certificates") from None
        if tag != 0x30:
            raise AttestationError("collateral is neither PEM nor DER certificates")
        ders.append(data[pos:end])
        pos = end
    return ders


def crl_of(data: bytes) -> bytes | None:
    """AMD's CRL (DER) when a PEM collateral bundle carries one (``X509 CRL``), else None."""
    blocks = [m for m in _PEM_BLOCK.finditer(data) if m[1] == b"X509 CRL"] if b"-----BEGIN" in data else []
    if len(blocks) > 1:
        raise AttestationError("SEV-SNP collateral holds more than one CRL")
    if not blocks:
        return None
    try:
        return base64.b64decode(re.sub(rb"\s", b"", blocks[0][2]), validate=True)
    except binascii.Error:
        raise AttestationError("collateral holds a PEM CRL with invalid base64") from None


def parse_snp_collateral(data: bytes) -> SnpCollateral:
    """AMD certificates, as PEM (any order, e.g. a VCEK followed by KDS's ``cert_chain``) or as DER
    certificates one after the other: one VCEK or VLEK, one or two of ASK/ASVK, at most one ARK."""
    if len(data) > MAX_COLLATERAL_BYTES:
        raise AttestationError(f"SEV-SNP collateral is larger than {MAX_COLLATERAL_BYTES} bytes")
    return _sort_certificates(_split_certificates(data))


def _sort_certificates(ders: list[bytes]) -> SnpCollateral:
    if not 2 <= len(ders) <= MAX_COLLATERAL_CERTS:
        raise AttestationError(
            f"SEV-SNP collateral holds {len(ders)} certificates; expected a VCEK or VLEK, its ASK or "
            f"ASVK, and optionally the ARK (at most {MAX_COLLATERAL_CERTS})"
        )
    leaves, intermediates, roots = [], [], []
    for der in ders:
        cert = _load_certificate(der)
        if cert.public_bytes(Encoding.DER) != der:
            raise AttestationError("collateral holds a certificate that is not in DER form")
        if isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
            leaves.append(cert)
        elif cert.subject == cert.issuer:
            roots.append(cert)
        else:
            intermediates.append(cert)
    if len(leaves) != 1 or not intermediates or len(roots) > 1:
        raise AttestationError(
            "SEV-SNP collateral must hold exactly one VCEK or VLEK, an ASK or ASVK and at most one ARK"
        )
    return SnpCollateral(leaves[0], tuple(intermediates), roots[0] if roots else None)


def _validity(cert: x509.Certificate, what: str, now: datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AttestationError(
            f"{what} is not valid at {now:%Y-%m-%dT%H:%M:%SZ} (valid from "
            f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
            f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
        )


def _check_issued_layout(cert: x509.Certificate, issuer: x509.Certificate, what: str, by: str) -> None:
    """``cert`` names ``issuer``, which holds an RSA key, and is laid out as AMD signs (no crypto)."""
    try:
        _check_signed_layout(
            cert.public_bytes(Encoding.DER), cert.tbs_certificate_bytes, cert.signature, crl=False
        )
    except _Refused:
        raise AttestationError(f"{what} is not signed with RSASSA-PSS SHA-384 as AMD signs") from None
    if cert.issuer != issuer.subject or not isinstance(issuer.public_key(), rsa.RSAPublicKey):
        raise AttestationError(f"{what} is not issued by {by}")


def _verify_issued_signature(cert: x509.Certificate, issuer: x509.Certificate, what: str, by: str) -> None:
    """``cert``'s RSASSA-PSS SHA-384 signature (MGF1 SHA-384, salt 48) under ``issuer``'s key."""
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise AttestationError(f"{what} is not issued by {by}")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, _PSS, hashes.SHA384())
    except (InvalidSignature, ValueError):
        raise AttestationError(f"{what} signature does not verify under {by}") from None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return False
    return constraints.ca and usage.key_cert_sign


def _amd_extensions(cert: x509.Certificate, what: str) -> dict[str, bytes]:
    try:
        extensions = list(cert.extensions)
    except (x509.DuplicateExtension, x509.UnsupportedGeneralNameType, ValueError):
        raise AttestationError(f"{what} has malformed extensions") from None
    found: dict[str, bytes] = {}
    for ext in extensions:
        oid = ext.oid.dotted_string
        if oid.startswith(AMD_OID_ARC + "."):
            if not isinstance(ext.value, x509.UnrecognizedExtension):
                raise AttestationError(f"{what} extension {oid} is malformed")
            found[oid] = ext.value.value
    return found


# --- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnpVerdict:
    """What a verified SEV-SNP report says, in the form ``verify-evidence`` prints."""

    report: EnclaveReport
    attestation_report: AttestationReport
    product: str  # "Milan", "Genoa" or "Turin": the pinned ARK the chain ends in
    product_name: str  # the VCEK/VLEK's productName extension, e.g. "Milan-B0"
    endorsement_key_validity: tuple[datetime, datetime]
    csp_id: str | None  # a VLEK's cloud provider
    tcb: Mapping[str, SnpTcb]  # reported, current, committed, launch
    findings: tuple[str, ...]
    source: str  # "report", "azure-hcl" or "evidence"
    crl_updates: tuple[datetime, datetime] | None  # thisUpdate, nextUpdate of the CRL checked
    hcl: HclRuntimeClaims | None

    def to_json(self) -> dict[str, Any]:
        r, a = self.report, self.attestation_report

        def when(t: datetime) -> str:
            return t.strftime("%Y-%m-%dT%H:%M:%SZ")

        return {
            "tee": r.tee,
            "source": self.source,
            "product": self.product,
            "product_name": self.product_name,
            "signing_key": a.signing_key,
            "csp_id": self.csp_id,
            "version": a.version,
            "measurement": a.measurement.hex(),
            "report_data": r.report_data.hex(),
            "host_data": a.host_data.hex(),
            "id_key_digest": a.id_key_digest.hex(),
            "author_key_digest": a.author_key_digest.hex(),
            "family_id": a.family_id.hex(),
            "image_id": a.image_id.hex(),
            "guest_svn": a.guest_svn,
            "vmpl": a.vmpl,
            "policy": f"{a.policy:#x}",
            "policy_decoded": _policy_json(a.policy),
            "platform_info": f"{a.platform_info:#x}",
            "platform_info_decoded": {
                n: bool(a.platform_info >> b & 1) for b, n in PLATFORM_INFO_BITS.items()
            },
            "chip_id": a.chip_id.hex(),
            "mask_chip_key": a.mask_chip_key,
            "author_key_en": a.author_key_en,
            "report_id": a.report_id.hex(),
            "report_id_ma": a.report_id_ma.hex(),
            "cpuid": None
            if a.cpuid is None
            else dict(zip(("family", "model", "stepping"), a.cpuid, strict=True)),
            **{f"{name}_tcb": _tcb_parts(tcb) for name, tcb in self.tcb.items()},
            "current_firmware": _firmware(a.current_build),
            "committed_firmware": _firmware(a.committed_build),
            "launch_mit_vector": a.launch_mit_vector,
            "current_mit_vector": a.current_mit_vector,
            "endorsement_key_validity": [when(t) for t in self.endorsement_key_validity],
            "crl": None
            if self.crl_updates is None
            else dict(zip(("this_update", "next_update"), map(when, self.crl_updates), strict=True)),
            "azure_hcl": None
            if self.hcl is None
            else {
                "runtime_claims_hash": self.hcl.hash_name,
                "runtime_claims_digest": self.hcl.digest.hex(),
                "user_data": None if self.hcl.user_data is None else self.hcl.user_data.hex(),
                "runtime_claims": dict(self.hcl.document),
            },
            "debug": r.debug,
            "findings": list(self.findings),
            "security_level": r.security_level.name,
            "security_level_reason": r.level_reason,
            "collateral_issued_at": when(r.issued_at) if r.issued_at else None,
        }


def _firmware(build: tuple[int, int, int]) -> str:
    return f"{build[2]}.{build[1]} build {build[0]}"


def _policy_json(policy: int) -> dict[str, Any]:
    return {
        "abi_minor": policy & 0xFF,
        "abi_major": policy >> 8 & 0xFF,
        "smt_allowed": bool(policy & POLICY_SMT),
        "migrate_ma": bool(policy & POLICY_MIGRATE_MA),
        "debug_allowed": bool(policy & POLICY_DEBUG),
        "single_socket": bool(policy & POLICY_SINGLE_SOCKET),
        "cxl_allowed": bool(policy & POLICY_CXL_ALLOW),
        "mem_aes_256_xts": bool(policy & POLICY_MEM_AES_256_XTS),
        "rapl_disabled": bool(policy & POLICY_RAPL_DIS),
        "ciphertext_hiding": bool(policy & POLICY_CIPHERTEXT_HIDING),
        "page_swap_disabled": bool(policy & POLICY_PAGE_SWAP_DISABLE),
    }


class SnpVerifier:
    """Verifies SEV-SNP reports against AMD root keys it owns: :meth:`production` pins AMD's."""

    def __init__(self, roots: Mapping[str, bytes]) -> None:
        """``roots``: product name ("Milan", ...) to the DER of its self-signed ARK."""
        self._roots: dict[str, tuple[bytes, x509.Certificate]] = {}
        for product, der in roots.items():
            ark = _load_certificate(der)
            _check_issued_layout(ark, ark, f"ARK-{product}", f"ARK-{product} itself")
            _verify_issued_signature(ark, ark, f"ARK-{product}", f"ARK-{product} itself")
            if _common_name(ark) != f"ARK-{product}" or not _is_ca(ark):
                raise UsageError(f"root for {product} is not a CA certificate named ARK-{product}")
            self._roots[product] = (der, ark)

    @classmethod
    def production(cls) -> SnpVerifier:
        """AMD's ARKs for Milan, Genoa and Turin, pinned in :mod:`._amd_roots` (built once)."""
        return _production()

    def verify(
        self, report: bytes, collateral: bytes, *, now: datetime, crl: bytes | None = None
    ) -> SnpVerdict:
        """Steps 1 to 9 of the module docstring; raises :class:`AttestationError` with one line."""
        if now.tzinfo is None:
            raise UsageError("now must be a timezone-aware datetime")
        # 1. input form
        if not report or len(report) > MAX_REPORT_BYTES:
            raise AttestationError("SEV-SNP report is empty or too large")
        hcl: HclRuntimeClaims | None = None
        table: bytes | None = None
        if report.startswith(HCL_SIGNATURE):
            source, (raw, hcl) = "azure-hcl", _unwrap_hcl(report)
        elif report[:1] == b"{":
            source, (raw, table) = "evidence", decode_snp_evidence(report)
        else:
            source, raw = "report", report
        # 2. structure
        parsed = AttestationReport.from_bytes(raw)
        key_name = parsed.signing_key
        # 3. Azure's binding of its runtime claims (cheap, so before any signature)
        if hcl is not None:
            digest = hcl.digest
            if parsed.report_data[: len(digest)] != digest or any(parsed.report_data[len(digest) :]):
                raise AttestationError(
                    "Azure HCL runtime claims are not the ones the report's REPORT_DATA binds"
                )
        # 4. the chain in the collateral, without its signatures
        if collateral:
            bundle = parse_snp_collateral(collateral)
        elif table is not None:
            bundle = _sort_certificates(_certificate_table(table))
        else:
            raise AttestationError(
                "SEV-SNP report without collateral: give the VCEK or VLEK, ASK or ASVK, and ARK"
            )
        vek = bundle.endorsement_key
        chain = self._chain(bundle, key_name, now)
        product = chain.product
        # 5. the chain's signatures, 6. revocation, 7. the report's signature
        chain.verify_signatures()
        if crl is None and collateral:
            crl = crl_of(collateral)
        crl_updates = None if crl is None else _check_crl(crl, chain.ark, chain.intermediate, product, now)
        _verify_report_signature(parsed, vek)
        # 8. what the VCEK/VLEK certifies against what the report says
        product_name, csp_id = _check_endorsement(parsed, vek, product)
        # 9. security level
        tcb = {
            name: decode_tcb(value, product)
            for name, value in (
                ("reported", parsed.reported_tcb),
                ("current", parsed.current_tcb),
                ("committed", parsed.committed_tcb),
                ("launch", parsed.launch_tcb),
            )
        }
        findings = _findings(parsed, tcb, csp_id, crl_updates is not None, hcl)
        level, reason = _level(parsed, tcb, key_name, crl_updates is not None)
        enclave_report = EnclaveReport(
            tee="sev-snp",
            code_hash=parsed.measurement,
            signer=b"",  # no MRSIGNER: pin by MEASUREMENT (C:)
            product_id=0,
            security_version=0,
            debug=parsed.debug,
            report_data=parsed.report_data,
            security_level=level,
            level_reason=reason,
            issued_at=crl_updates[0] if crl_updates else None,
            snp_tcb=tcb["reported"],
            platform_settings=struct.pack("<QI", parsed.policy, parsed.vmpl),
        )
        return SnpVerdict(
            report=enclave_report,
            attestation_report=parsed,
            product=product,
            product_name=product_name,
            endorsement_key_validity=(vek.not_valid_before_utc, vek.not_valid_after_utc),
            csp_id=csp_id,
            tcb=tcb,
            findings=findings,
            source=source,
            crl_updates=crl_updates,
            hcl=hcl,
        )

    def _chain(self, bundle: SnpCollateral, key_name: str, now: datetime) -> _Chain:
        """Step 4: VCEK/VLEK ← ASK/ASVK ← pinned ARK picked out of the collateral, with names, CA
        flags, validity at ``now`` and signature layouts checked; no signature verified yet."""
        vek = bundle.endorsement_key
        if _common_name(vek) != f"SEV-{key_name}":
            raise AttestationError(
                f"the report is signed by a {key_name}, but the collateral's key is not one"
            )
        issuers = [c for c in bundle.intermediates if c.subject == vek.issuer]
        if len(issuers) != 1:
            raise AttestationError(f"no single certificate in the collateral issued the {key_name}")
        intermediate = issuers[0]
        roots = [(p, der, ark) for p, (der, ark) in self._roots.items() if ark.subject == intermediate.issuer]
        if len(roots) != 1:
            raise AttestationError(
                f"the {key_name}'s issuer is not signed by a pinned AMD root "
                f"({', '.join(f'ARK-{p}' for p in self._roots)})"
            )
        ((product, ark_der, ark),) = roots
        if bundle.ark is not None and bundle.ark.public_bytes(Encoding.DER) != ark_der:
            raise AttestationError(f"the collateral's ARK is not AMD's ARK-{product}, which issued its chain")
        ask_name = f"SEV-{product}" if key_name == "VCEK" else f"SEV-VLEK-{product}"
        role = "ASK" if key_name == "VCEK" else "ASVK"
        if _common_name(intermediate) != ask_name:
            raise AttestationError(f"the {key_name}'s issuer is not the {role} {ask_name}")
        links = [(vek, intermediate, f"the {key_name}", f"the {role}")]
        # every other intermediate (trustee's bundle carries the ASK beside the ASVK) must be AMD's too
        links += [(c, ark, f"the collateral's {_common_name(c) or 'certificate'}", f"ARK-{product}")
                  for c in bundle.intermediates]  # fmt: skip
        _validity(ark, f"ARK-{product}", now)
        for cert, issuer, what, by in reversed(links):  # from the root down
            _check_issued_layout(cert, issuer, what, by)
            if cert is not vek and not _is_ca(cert):
                raise AttestationError(f"{what} is not a CA certificate")
            _validity(cert, what, now)
        return _Chain(product, ark, intermediate, tuple(reversed(links)))


@dataclass(frozen=True)
class _Chain:
    product: str
    ark: x509.Certificate
    intermediate: x509.Certificate  # the ASK or ASVK that issued the VCEK/VLEK
    links: tuple[tuple[x509.Certificate, x509.Certificate, str, str], ...]  # cert, issuer, names

    def verify_signatures(self) -> None:
        """Step 5: each link's RSASSA-PSS signature, from the ARK down."""
        for cert, issuer, what, by in self.links:
            _verify_issued_signature(cert, issuer, what, by)


def _verify_report_signature(parsed: AttestationReport, vek: x509.Certificate) -> None:
    """ECDSA P-384 with SHA-384 over bytes 0x000..0x29F; R and S little-endian, 72 bytes each (ABI
    56860, "ECDSA P-384 with SHA-384 Signature" format)."""
    key_name, key = parsed.signing_key, vek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationError(f"the {key_name} does not hold an ECDSA P-384 key")
    raw = parsed.raw
    signature = encode_dss_signature(
        int.from_bytes(raw[SIGNATURE_R], "little"), int.from_bytes(raw[SIGNATURE_S], "little")
    )
    try:
        key.verify(signature, raw[SIGNED], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise AttestationError(f"report signature does not verify under the {key_name}") from None


def _check_crl(
    data: bytes, ark: x509.Certificate, intermediate: x509.Certificate, product: str, now: datetime
) -> tuple[datetime, datetime]:
    """AMD's CRL for ``ark``: signed by it, current at ``now``, not revoking ``intermediate``."""
    if len(data) > MAX_CRL_BYTES:
        raise AttestationError(f"CRL is larger than {MAX_CRL_BYTES} bytes")
    try:
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_crl(data)
        )
        this_update, next_update, issuer = crl.last_update_utc, crl.next_update_utc, crl.issuer
        _check_signed_layout(crl.public_bytes(Encoding.DER), crl.tbs_certlist_bytes, crl.signature, crl=True)
    except PARSE_ERRORS:
        raise AttestationError("CRL does not parse") from None
    except _Refused:
        raise AttestationError("CRL is not signed with RSASSA-PSS SHA-384 as AMD signs") from None
    key = ark.public_key()
    if issuer != ark.subject or not isinstance(key, rsa.RSAPublicKey):
        raise AttestationError(f"CRL is not issued by ARK-{product}")
    try:
        key.verify(crl.signature, crl.tbs_certlist_bytes, _PSS, hashes.SHA384())
    except (InvalidSignature, ValueError):
        raise AttestationError(f"CRL signature does not verify under ARK-{product}") from None
    if next_update is None:
        raise AttestationError("CRL has no next update")
    if not this_update <= now <= next_update:
        raise AttestationError(
            f"CRL is not current at {now:%Y-%m-%dT%H:%M:%SZ} (this update {this_update:%Y-%m-%dT%H:%M:%SZ}, "
            f"next update {next_update:%Y-%m-%dT%H:%M:%SZ})"
        )
    try:
        revoked = crl.get_revoked_certificate_by_serial_number(intermediate.serial_number)
    except PARSE_ERRORS:
        raise AttestationError("CRL does not parse") from None
    if revoked is not None:
        raise AttestationError(
            f"{_common_name(intermediate)} (serial {intermediate.serial_number:#x}) is revoked by AMD's CRL"
        )
    return this_update, next_update


def _check_endorsement(
    parsed: AttestationReport, vek: x509.Certificate, product: str
) -> tuple[str, str | None]:
    """(productName, cspID): the VCEK/VLEK's AMD extensions agree with the report."""
    key_name = parsed.signing_key
    ext = _amd_extensions(vek, f"the {key_name}")
    try:
        product_name = _der_ia5(ext[OID_PRODUCT_NAME])
        oids = {"bootloader": OID_BL_SPL, "tee": OID_TEE_SPL, "snp": OID_SNP_SPL, "microcode": OID_UCODE_SPL}
        if product == "Turin":
            oids["fmc"] = OID_FMC_SPL
        spl = {name: _der_uint8(ext[oid]) for name, oid in oids.items()}
        csp_id = _der_ia5(ext[OID_CSP_ID]) if OID_CSP_ID in ext else None
    except KeyError as missing:
        raise AttestationError(f"the {key_name} lacks AMD extension {missing.args[0]}") from None
    except _Refused:
        raise AttestationError(f"the {key_name} has a malformed AMD extension") from None
    if product_name != product and not product_name.startswith(product + "-"):
        raise AttestationError(f"the {key_name} is for product {product_name!r}, its chain for {product}")
    reported = decode_tcb(parsed.reported_tcb, product)
    if _tcb_parts(reported) != spl or not _tcb_reserved_zero(parsed.reported_tcb, product):
        raise AttestationError(
            f"REPORTED_TCB ({_tcb_text(reported)}) is not the TCB the {key_name} certifies "
            f"({', '.join(f'{k} {v}' for k, v in spl.items())})"
        )
    if parsed.cpuid is not None and parsed.cpuid[0] != PRODUCT_FAMILIES[product]:
        raise AttestationError(f"report's CPUID family {parsed.cpuid[0]:#x} is not that of {product}")
    if key_name == "VCEK":
        if parsed.mask_chip_key or not any(parsed.chip_id):
            raise AttestationError("CHIP_ID is masked: a VCEK-signed report cannot be tied to its chip")
        hwid = ext.get(OID_HWID)
        turin_short = (
            product == "Turin"
            and hwid is not None
            and len(hwid) == TURIN_HWID_SIZE
            and parsed.chip_id[:TURIN_HWID_SIZE] == hwid
            and not any(parsed.chip_id[TURIN_HWID_SIZE:])
        )
        if hwid != parsed.chip_id and not turin_short:
            raise AttestationError("the VCEK's hwID is not the report's CHIP_ID")
    elif OID_HWID in ext:
        raise AttestationError("the VLEK carries a hwID; VLEKs are not bound to a chip")
    return product_name, csp_id


def _below(a: SnpTcb, b: SnpTcb) -> list[str]:
    """The components in which ``a`` is lower than ``b``."""
    pa, pb = _tcb_parts(a), _tcb_parts(b)
    return [name for name in pa if pa[name] < pb.get(name, 0)]


def _level(
    parsed: AttestationReport, tcb: Mapping[str, SnpTcb], key_name: str, crl_checked: bool
) -> tuple[SecurityLevel, str]:
    if parsed.debug:
        return (
            SecurityLevel.INSECURE,
            "guest policy allows debugging: the hypervisor can read and write its memory",
        )
    lower = _below(tcb["reported"], tcb["committed"])
    if lower:
        return SecurityLevel.STALE, (
            f"REPORTED_TCB ({_tcb_text(tcb['reported'])}) is below COMMITTED_TCB "
            f"({_tcb_text(tcb['committed'])}) in {', '.join(lower)}: signed with a {key_name} for older "
            "firmware than the platform has committed to"
        )
    if not crl_checked:
        return SecurityLevel.STALE, (
            "no AMD CRL given: a revoked ASK or ASVK would pass, so the evidence is at most STALE"
            " (the host serves KDS's CRL with the certificates; a client may give one with --crl)"
        )
    return SecurityLevel.SECURE, (
        f"signature and AMD certificate chain verify, AMD's CRL revokes neither; REPORTED_TCB"
        f" ({_tcb_text(tcb['reported'])}) is the {key_name}'s and not below COMMITTED_TCB"
    )


def _findings(
    parsed: AttestationReport,
    tcb: Mapping[str, SnpTcb],
    csp_id: str | None,
    crl_checked: bool,
    hcl: HclRuntimeClaims | None,
) -> tuple[str, ...]:
    policy, out = parsed.policy, []
    if policy & POLICY_DEBUG:
        out.append("POLICY allows debugging (bit 19): the hypervisor can read and write guest memory")
    if policy & POLICY_MIGRATE_MA:
        out.append("POLICY allows a migration agent (bit 18), which can export the guest's memory")
    if policy & POLICY_SMT:
        out.append("POLICY allows SMT (bit 16): a sibling hyperthread may run another guest")
    if policy & POLICY_CXL_ALLOW:
        out.append("POLICY allows CXL-attached memory (bit 21)")
    if parsed.vmpl != 0:
        out.append(
            f"requested from VMPL {parsed.vmpl}: software at a more privileged VMPL (an SVSM or "
            "paravisor) controls the guest"
        )
    if parsed.signing_key == "VLEK":
        out.append(
            f"signed by a VLEK issued to cloud provider {csp_id or '(not named)'}, not bound to a chip"
        )
    if parsed.mask_chip_key:
        out.append("CHIP_ID is masked by the host (MASK_CHIP_KEY)")
    lower = _below(tcb["reported"], tcb["current"])
    if lower:
        out.append(
            f"REPORTED_TCB is below CURRENT_TCB in {', '.join(lower)}: the platform runs newer firmware"
        )
    if not any(parsed.id_key_digest):
        out.append("launched without an ID block: FAMILY_ID, IMAGE_ID and GUEST_SVN are not vouched for")
    if not crl_checked:
        out.append("no AMD CRL given: revocation of the ASK/ASVK was not checked")
    if hcl is not None:
        out.append(
            f"Azure HCL report: REPORT_DATA binds the {hcl.hash_name} of Azure's runtime claims (checked), "
            "not data of the guest's choosing; MEASUREMENT is Azure's paravisor, not the guest OS, which "
            "only the vTPM's PCRs measure (not checked)"
        )
    return tuple(out)


@cache
def _production() -> SnpVerifier:
    roots = {}
    for product, pem in ARK_PEM.items():
        der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
        if hashlib.sha256(der).hexdigest() != ARK_SHA256[product]:
            raise AssertionError(f"pinned ARK-{product} does not match its recorded SHA-256")
        roots[product] = der
    return SnpVerifier(roots)


def verify_snp_report(
    report: bytes, collateral: bytes, *, now: datetime, crl: bytes | None = None
) -> SnpVerdict:
    """Verify an SEV-SNP report (raw, Azure HCL, or the evidence container) with AMD's pinned roots.

    ``collateral`` is the VCEK or VLEK with its ASK or ASVK and optionally the ARK
    (:func:`parse_snp_collateral`); it may be empty when the evidence container carries a
    certificate table. ``crl``, when given, is AMD's CRL for the product (PEM or DER). Raises
    :class:`AttestationError` with a one-line reason when anything fails to verify."""
    return SnpVerifier.production().verify(report, collateral, now=now, crl=crl)


def report_of(evidence: bytes) -> bytes:
    """The raw ATTESTATION_REPORT in any input form :func:`verify_snp_report` takes (raw, the
    evidence container, an Azure HCL report), unverified: for a host that fetches its collateral."""
    if evidence[:1] == b"{":
        evidence = decode_snp_evidence(evidence)[0]
    if evidence.startswith(HCL_SIGNATURE):
        evidence = _unwrap_hcl(evidence)[0]
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
