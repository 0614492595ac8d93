"""What a verifier establishes from evidence, and how evidence binds the enclave's keys.

Pure logic on bytes, shared by the enclave (which computes the binding into its report data) and the
client (which recomputes it and compares).

Report data binding (64 bytes, the size of an SGX/TDX/SNP report-data field)::

    report_data = SHA-512( "enclave-infer attestation v2" || 0x00
                           || u16(len(key_config)) || key_config
                           || u8(len(receipt_key)) || receipt_key
                           || SHA-256(canonical enclave configuration)
                           || u8(len(nonce)) || nonce )

``key_config`` is the RFC 9458 §3.1 encoding of the enclave's single key configuration;
``receipt_key`` the raw 32-byte Ed25519 public key this enclave instance signs receipts with. The
configuration digest is bound too, so that a client that trusts only a signer (``S:``) still learns,
from the enclave itself, which owner key and limits are in force.

Key release between enclaves (:mod:`enclave_infer.cluster.keyrelease`) binds its own messages with
:func:`report_data_binding`, the same construction under labels of its own.
"""

from __future__ import annotations

import enum
import hashlib
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from enclave_infer.errors import AttestationError, UsageError

__all__ = [
    "BINDING_LABEL",
    "MAX_NONCE_BYTES",
    "MIN_NONCE_BYTES",
    "NONCE_BYTES",
    "RECEIPT_KEY_BYTES",
    "SNP_TCB_COMPONENTS",
    "DcapCollateral",
    "EnclaveReport",
    "Registers",
    "SecurityLevel",
    "SnpTcb",
    "Tee",
    "attestation_binding",
    "parse_snp_tcb_floor",
    "report_data_binding",
]

BINDING_LABEL = b"enclave-infer attestation v2\x00"
RECEIPT_KEY_BYTES = 32
# The nonce evidence binds is its freshness proof (the one definition of its length): 16 bytes are
# enough to never repeat, 64 a generous cap; every nonce in this range is accepted, from any client.
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64
# What this project's own verifiers choose (the SDK, the host at start, key release, the enclave for
# its receipts' evidence): 256 bits, inside the range above.
NONCE_BYTES = 32


class Tee(enum.StrEnum):
    """The trusted execution environments evidence can come from. The value is the name the wire
    carries (the attestation document's ``tee``, hence receipts too) and messages print."""

    SIMULATION = "simulation"
    SGX = "sgx"
    TDX = "tdx"
    SEV_SNP = "sev-snp"
    # A TPM 2.0 (a confidential VM's vTPM, or swtpm here): a quote over PCRs with the boot's event log
    VTPM = "vtpm"

    @classmethod
    def parse(cls, name: object) -> Tee:
        """The TEE a document names; raises AttestationError for anything else."""
        if isinstance(name, str):
            for tee in cls:
                if tee.value == name:
                    return tee
        known = ", ".join(tee.value for tee in cls)
        raise AttestationError(f"unknown TEE type {name!r} (this verifier knows {known})")


class SecurityLevel(enum.IntEnum):
    """Conclave's assessed security levels, ordered: a minimum of STALE accepts SECURE."""

    INSECURE = 0
    STALE = 1
    SECURE = 2


@dataclass(frozen=True)
class SnpTcb:
    """An AMD SEV-SNP TCB_VERSION, decoded: the security patch level of each firmware component.

    AMD SEV-SNP ABI specification (publication 56860), "TCB_VERSION": Milan and Genoa put the boot
    loader in byte 0, the TEE (PSP OS) in byte 1, SNP firmware in byte 6 and microcode in byte 7;
    Turin adds FMC (the PSP's first mutable code) in byte 0 and moves boot loader, TEE and SNP to
    bytes 1 to 3. ``fmc`` is None where the product has no FMC component.
    """

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None


# The components an SEV-SNP TCB floor names (a client's ``SNPTCB:``, the measured configuration's
# ``[cluster] min_snp_tcb``), to (SnpTcb field, what a refusal calls it)
SNP_TCB_COMPONENTS = {
    "bl": ("bootloader", "boot loader"),
    "tee": ("tee", "TEE (PSP OS)"),
    "snp": ("snp", "SNP firmware"),
    "ucode": ("microcode", "microcode"),
    "fmc": ("fmc", "FMC"),
}
_SNP_TCB_FLOOR = re.compile(r"[a-z]+=\d{1,3}(?:,[a-z]+=\d{1,3})*")


def parse_snp_tcb_floor(value: str, *, what: str) -> tuple[tuple[str, int], ...]:
    """``bl=3,snp=8``: (component name, minimum) pairs, in the order given. ``what`` names the
    setting in a refusal (``SNPTCB:``); raises :class:`UsageError`."""
    if not _SNP_TCB_FLOOR.fullmatch(value):
        raise UsageError(f"{what} takes name=n pairs joined by commas, e.g. snp=8,ucode=115, got {value!r}")
    floor: dict[str, int] = {}
    for pair in value.split(","):
        name, _, number = pair.partition("=")
        if name not in SNP_TCB_COMPONENTS:
            raise UsageError(f"{what} unknown component {name!r} (known: {', '.join(SNP_TCB_COMPONENTS)})")
        if name in floor:
            raise UsageError(f"{what} names {name} more than once")
        if int(number) > 0xFF:
            raise UsageError(f"{what} {name} takes 0 to 255, got {number}")
        floor[name] = int(number)
    return tuple(floor.items())


@dataclass(frozen=True)
class DcapCollateral:
    """How current the Intel DCAP collateral was that a quote verified against.

    ``next_update`` is the earliest ``nextUpdate`` of the TCB info, the QE identity and the two CRLs
    (PCK CRL, root CA CRL): from that instant on the collateral as a whole is out of date.
    ``verified_at`` is the instant the quote was verified as of: the caller's ``now`` while the
    collateral is current, else one second before ``next_update``. ``expired`` is how long before
    the caller's ``now`` the collateral expired (None while it was current then); the ``GRACE:``
    constraint measures it again at its own ``now``, with :meth:`expired_for`.
    """

    tcb_info_evaluation_data_number: int  # the TCB info's tcbEvaluationDataNumber
    qe_identity_evaluation_data_number: int  # the QE identity's
    next_update: datetime
    next_update_of: str  # which document expires first: "TCB info", "QE identity", "PCK CRL", ...
    verified_at: datetime
    expired: timedelta | None = None

    def expired_for(self, now: datetime) -> timedelta | None:
        """How long the collateral has been out of date at ``now`` (zero at ``next_update``
        itself, when a CRL has already expired), or None while it is current."""
        return now - self.next_update if now >= self.next_update else None


@dataclass(frozen=True)
class Registers:
    """The measurement registers a verified quote carries, which a boot event log replays to.

    ``kind`` is ``"pcr"`` (a TPM's PCRs, ``values`` by PCR index, of the ``alg`` bank) or ``"rtmr"``
    (TDX's RTMR0-3, by RTMR index, SHA-384). Only verifiers construct these, from signed evidence.
    """

    kind: str  # "pcr" or "rtmr"
    alg: str  # "sha256" or "sha384": the bank the values are of
    values: Mapping[int, bytes]


@dataclass(frozen=True)
class EnclaveReport:
    """The verified facts about an enclave instance. Only verifiers construct these."""

    tee: Tee
    code_hash: (
        bytes  # MRENCLAVE, MRTD, the SEV-SNP MEASUREMENT, a vTPM quote's PCR digest or the simulated one
    )
    signer: bytes  # MRSIGNER or the simulated signer
    product_id: int
    security_version: int
    debug: bool
    report_data: bytes
    security_level: SecurityLevel
    level_reason: str
    issued_at: datetime | None
    owner_key_id: bytes = b""  # SHA-256 of the owner's public key, from the bound configuration
    snp_tcb: SnpTcb | None = None  # SEV-SNP only: REPORTED_TCB, the level the VCEK/VLEK certifies
    # SGX and TDX only: the collateral's TCB evaluation data numbers and how current it was
    dcap_collateral: DcapCollateral | None = None
    # What the platform enforces besides the code hash, which key release compares exactly: SGX's
    # ATTRIBUTES (flags, XFRM), MISCSELECT and the KSS fields (CONFIGID, ISVEXTPRODID, ISVFAMILYID,
    # in the report body's reserved areas); SEV-SNP's guest POLICY and VMPL; TDX's RTMR0-3, TD
    # attributes, XFAM and MRCONFIGID/MROWNER/MROWNERCONFIG; a vTPM's PCR selection (and, when a
    # hardware report binds its key, that report's measurement and settings). Empty for simulation.
    platform_settings: bytes = b""
    # TDX's RTMRs or a vTPM's quoted PCRs: what an event log must replay to (None for SGX, SEV-SNP
    # and simulation, whose evidence measures no boot)
    registers: Registers | None = None


def attestation_binding(key_config: bytes, receipt_key: bytes, config_digest: bytes, nonce: bytes) -> bytes:
    """The 64 bytes an honest enclave puts in the report data of the evidence clients ask for: its
    key configuration, its receipt key, its configuration and the client's nonce."""
    if len(receipt_key) != RECEIPT_KEY_BYTES:
        raise AttestationError(f"receipt key must be {RECEIPT_KEY_BYTES} bytes")
    if len(key_config) > 0xFFFF:
        raise AttestationError("key configuration too long")
    return _binding(
        BINDING_LABEL,
        struct.pack("!H", len(key_config)) + key_config + struct.pack("!B", len(receipt_key)) + receipt_key,
        config_digest,
        nonce,
    )


def report_data_binding(bound: bytes, config_digest: bytes, nonce: bytes, *, label: bytes) -> bytes:
    """``SHA-512(label || u16 len || bound || SHA-256(config) || u8 len || nonce)``: evidence made for
    the purpose ``label`` names (key release), binding ``bound``."""
    if len(bound) > 0xFFFF:
        raise AttestationError("bound value too long")
    return _binding(label, struct.pack("!H", len(bound)) + bound, config_digest, nonce)


def _binding(label: bytes, bound: bytes, config_digest: bytes, nonce: bytes) -> bytes:
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise AttestationError(f"nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes")
    if len(config_digest) != 32:
        raise AttestationError("configuration digest must be 32 bytes")
    return hashlib.sha512(label + bound + config_digest + struct.pack("!B", len(nonce)) + nonce).digest()
