"""vTPM evidence: a TPM 2.0 quote over the SHA-256 PCRs, parsed and verified on bytes.

Trusted, pure logic on bytes: used by clients (through :class:`.evidence.Verifier`) and, for its
parsers and encoders only, by the enclave's TPM client (:mod:`enclave_infer.enclave.vtpm`). The
structures are those of the TPM 2.0 Library specification (TCG, revision 1.59), Part 2 "Structures",
marshalled big-endian as Part 2 §4 and the TPM2B/TPML conventions define; the command that makes the
quote is TPM2_Quote, Part 3 "Commands" §18.4.

The evidence container (JSON, one definition: :meth:`VtpmEvidence.encode` / :meth:`VtpmEvidence.decode`)::

    {"format": "enclave-infer vtpm evidence v1",
     "quote": "<base64 TPMS_ATTEST>",          # what the TPM signed (TPM2_Quote's ``quoted``)
     "signature": "<base64 TPMT_SIGNATURE>",   # TPM2_Quote's ``signature``
     "ak": "<base64 TPMT_PUBLIC>",             # the attestation key's public area
     "pcrs": {"sha256": {"0": "<64 hex>", ..., "15": "<64 hex>"}},
     "hardware": null | {"tee": "sev-snp", "evidence": "<base64 Azure HCL report>"}}

The enclave quotes exactly :data:`QUOTED_PCRS` (0 to 15) of the SHA-256 bank, with the 64 bytes of
report data as ``qualifyingData``, under an ECDSA P-256 (or, as Azure's, RSA-2048) restricted signing
key. :func:`verify` runs, at the ``now`` the caller gives:

1. decode the container: exactly these keys, this format, strict base64, PCR indices in decimal, one
   value of 32 bytes for each of :data:`QUOTED_PCRS` and nothing else;
2. parse the attestation key (TPMT_PUBLIC): an ECC NIST P-256 or RSA-2048 key whose objectAttributes
   (TPMA_OBJECT) set ``sign``, ``restricted``, ``fixedTPM``, ``fixedParent`` and
   ``sensitiveDataOrigin`` and not ``decrypt``, with no symmetric algorithm and a scheme that is NULL
   or ECDSA / RSASSA with SHA-256. A *restricted* signing key signs only digests the TPM computed
   itself over data it generated (TPMS_ATTEST starts with TPM_GENERATED_VALUE, which TPM2_Sign refuses
   to sign for such a key without a ticket proving the data did not start with it): so what it signs
   with that magic is the TPM's own statement. Nothing signs the public area itself: its attributes
   are the evidence's own claim, which a genuine TPM lives up to and a software one need not (hence
   INSECURE without a binding; a binding vouches for the key, n/e or x/y, and leaves the attributes
   to the word of whoever made the key, Azure's paravisor);
3. parse the signature (TPMT_SIGNATURE, Part 2 §11.3.4): ECDSA with SHA-256 (r, s) for an ECC key,
   RSASSA-PKCS1-v1_5 with SHA-256 for an RSA key, matching the key's scheme when it names one;
4. parse the quote (TPMS_ATTEST): magic TPM_GENERATED_VALUE (0xff544347), type TPM_ST_ATTEST_QUOTE
   (0x8018), qualifiedSigner (a TPM2B_NAME, reported, not compared: it depends on the key's hierarchy
   and parents, which the evidence does not carry), extraData (64 bytes: the report data),
   clockInfo, firmwareVersion, and TPMS_QUOTE_INFO: a TPML_PCR_SELECTION of exactly the SHA-256 bank's
   :data:`QUOTED_PCRS` and the pcrDigest, all bytes consumed;
5. the PCR values: pcrDigest must equal SHA-256 of the selected PCRs' values concatenated in
   selection order (ascending index), as TPM2_Quote computes it with the signing scheme's hash;
6. a hardware binding, when present (see below): the cheap checks (an Azure HCL report whose runtime
   claims name this attestation key as ``HCLAkPub``);
7. the signature over the TPMS_ATTEST bytes under the attestation key, with pyca/cryptography;
8. the hardware binding's SEV-SNP report, with the caller's :class:`~.snp.SnpVerifier`: its chain,
   signature and TCB; REPORT_DATA must bind the HCL runtime claims, and VMPL must be 0;
9. map onto a security level:

=================================================================  ===================================
finding                                                            level
=================================================================  ===================================
no hardware binding (swtpm, or a vTPM whose key nothing vouches    INSECURE: "software TPM: nothing
for): anyone can run a TPM simulator with PCRs of their choosing   binds its attestation key to
                                                                   hardware"
an SEV-SNP report (Azure HCL) binds the attestation key            the SNP report's level and reason
any check of steps 1 to 8 failing                                  AttestationError
=================================================================  ===================================

The :class:`~.report.EnclaveReport`: ``code_hash`` is the quote's pcrDigest, SHA-256 over PCRs 0 to
15 (``C:`` with 64 hex digits): on a vTPM ``C:`` pins every quoted PCR, the firmware's (PCRs 0 to 3,
7) included, so it changes with the firmware build and its configuration; ``IMAGE:``, which checks
the boot's event log against the release's reference measurements for PCRs 4, 9 and 11 only, is the
usual pin. The selection is fixed so that a pcrDigest names one set of registers (a digest over
other PCRs with the same values would be the same digest). ``registers`` holds the verified PCR
values (:class:`~.report.Registers` ``("pcr", "sha256", ...)``), which the event log must replay to;
``report_data`` is extraData; ``signer`` is empty and ``product_id``, ``security_version`` zero (a
TPM has none of them); ``debug`` is False, or the SNP guest policy's; ``issued_at`` None, or the SNP
verdict's (the AMD CRL's thisUpdate); ``snp_tcb`` the SNP report's REPORTED_TCB when bound;
``platform_settings`` the quote's TPML_PCR_SELECTION, followed, when bound, by the SNP report's
MEASUREMENT (the paravisor's) and its own platform settings (guest POLICY, VMPL), which key release
compares exactly.

The hardware binding, after Azure's vTPM-based confidential VMs: Azure's paravisor (HCL) runs the
vTPM at VMPL 0, and at boot asks the SEV-SNP firmware for a report whose REPORT_DATA is the SHA-256
(or -384, -512) of its *runtime claims*, a JSON document whose ``keys`` hold the vTPM's keys as JWKs:
``HCLAkPub`` (the attestation key, ``kty`` RSA with ``n``/``e``, or EC with ``crv``/``x``/``y``,
base64url) and ``HCLEkPub``. A quote signed by that key is then a statement of the vTPM that the
hardware report vouches for. :mod:`.snp` already parses and verifies the HCL report
(:func:`~.snp_report.unwrap_hcl`); this module requires that the claims name the quote's key, and
that the SNP report was made at VMPL 0 (by the paravisor: a report the guest asked for at its own,
less privileged VMPL carries whatever REPORT_DATA the guest chose).

What would still differ on a real Azure CVM (only emulated evidence is tested here):

* Azure's attestation key is an RSA-2048 restricted signing key persisted at handle 0x81000003,
  with an X.509 certificate (issued under Azure's "Virtual TPM" CAs) in NV index 0x01C101D0; the
  enclave would quote with that key (TPM2_ReadPublic, no TPM2_CreatePrimary) rather than derive its
  own, and the HCL report would be read from NV index 0x01400001 (and refreshed through 0x01400002)
  with TPM2_NV_Read: :mod:`enclave_infer.enclave.vtpm` does neither yet, so its evidence has
  ``"hardware": null``;
* the SNP report's MEASUREMENT is the paravisor's (Azure's HCL firmware), not the guest's: the guest
  OS is measured only by the vTPM's PCRs. A client here cannot yet pin the paravisor's MEASUREMENT
  (only key release compares it, through ``platform_settings``);
* the VCEK chain comes from Azure's THIM/IMDS endpoint or AMD's KDS, not from a GHCB certificate
  table: the verifier needs it as collateral (the document's ``collateral``, a PEM bundle as for
  SEV-SNP), and the host does not fetch it for vTPM evidence;
* the HCL report is made once at boot, not per quote: freshness comes from the quote's extraData;
* a TPM that implements no SHA-512 limits TPM2B_DATA to 50 bytes or fewer (sizeof(TPMT_HA)) and
  refuses 64 bytes of qualifyingData with TPM_RC_SIZE; swtpm implements SHA-512, and whether another
  (v)TPM does, TPM2_GetCapability(TPM_CAP_ALGS) says. Such a TPM would need the report data hashed
  into the quote, a change of this format.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from enclave_infer.attestation.report import EnclaveReport, Registers, SecurityLevel, Tee
from enclave_infer.attestation.snp import SnpVerifier
from enclave_infer.attestation.snp_report import HCL_SIGNATURE, HclRuntimeClaims, unwrap_hcl
from enclave_infer.errors import AttestationError, UsageError
from enclave_infer.protocol import b64

__all__ = [
    "AK_ATTRIBUTES",
    "FORMAT",
    "MAX_DIGEST_BYTES",
    "MAX_EVIDENCE_BYTES",
    "PCR_BANK",
    "QUOTED_PCRS",
    "REPORT_DATA_SIZE",
    "SOFTWARE_TPM_REASON",
    "TPM_ECC_NIST_P256",
    "TPM_GENERATED_VALUE",
    "TPM_ST_ATTEST_QUOTE",
    "AttestationKey",
    "HardwareBinding",
    "ObjectAttributes",
    "Quote",
    "TpmAlg",
    "TpmReader",
    "TpmSignature",
    "VtpmEvidence",
    "encode_pcr_selection",
    "pcr_digest",
    "verify",
]

FORMAT = "enclave-infer vtpm evidence v1"
SOFTWARE_TPM_REASON = "software TPM: nothing binds its attestation key to hardware"
# The PCRs the enclave quotes and a verifier requires, of the SHA-256 bank: 0-7 (firmware, boot
# manager, boot loader), 8-15 (the OS's: systemd-stub's 11, the kernel's 9). 16 (debug) and 17-23
# (DRTM, application) are left out: nothing of the boot chain measures into them.
QUOTED_PCRS: tuple[int, ...] = tuple(range(16))
PCR_BANK = "sha256"
PCR_DIGEST_SIZE = 32
REPORT_DATA_SIZE = 64
# The whole container: a quote (~180 bytes), a key (~90; RSA-2048 ~280), a signature (~70; ~260), 16
# PCRs and an Azure HCL report (~2.6 KB), in base64, are a few KB; the attestation document around it
# is capped at 256 KB.
MAX_EVIDENCE_BYTES = 64 * 1024

TPM_GENERATED_VALUE = 0xFF544347  # TPM_GENERATED: 0xff "TCG" (Part 2, TPM_GENERATED)
TPM_ST_ATTEST_QUOTE = 0x8018  # TPM_ST (Part 2): a TPMS_ATTEST holding a TPMS_QUOTE_INFO


class TpmAlg(enum.IntEnum):
    """TPM_ALG_ID values this module reads or writes (Part 2, TPM_ALG_ID; TCG Algorithm Registry)."""

    RSA = 0x0001
    SHA1 = 0x0004
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    RSASSA = 0x0014
    ECDSA = 0x0018
    ECC = 0x0023


class ObjectAttributes(enum.IntFlag):
    """TPMA_OBJECT bits (Part 2, TPMA_OBJECT)."""

    FIXED_TPM = 1 << 1
    ST_CLEAR = 1 << 2
    FIXED_PARENT = 1 << 4
    SENSITIVE_DATA_ORIGIN = 1 << 5
    USER_WITH_AUTH = 1 << 6
    ADMIN_WITH_POLICY = 1 << 7
    NO_DA = 1 << 10
    ENCRYPTED_DUPLICATION = 1 << 11
    RESTRICTED = 1 << 16
    DECRYPT = 1 << 17
    SIGN = 1 << 18


# What makes a key an attestation key: it signs only what the TPM generated (restricted, sign),
# cannot leave this TPM (fixedTPM, fixedParent) and was made inside it (sensitiveDataOrigin).
AK_ATTRIBUTES = (
    ObjectAttributes.SIGN
    | ObjectAttributes.RESTRICTED
    | ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
)
TPM_ECC_NIST_P256 = 0x0003  # TPM_ECC_CURVE (Part 2)
P256_BYTES = 32
RSA_KEY_BITS = 2048
RSA_DEFAULT_EXPONENT = 65537  # TPMS_RSA_PARMS.exponent 0 means this
# Size limits of the TPM2B buffers read here (Part 2: the union each one holds, for a TPM with
# SHA-512 and keys up to RSA-4096 / P-521): longer ones are malformed.
MAX_DIGEST_BYTES = 64  # TPM2B_DIGEST: sizeof(TPMU_HA)
MAX_NAME_BYTES = 2 + 64  # TPM2B_NAME: sizeof(TPMU_NAME), a TPMT_HA
MAX_DATA_BYTES = 2 + 64  # TPM2B_DATA: sizeof(TPMT_HA)
MAX_ECC_PARAMETER_BYTES = 66  # TPM2B_ECC_PARAMETER: MAX_ECC_KEY_BYTES (P-521)
MAX_RSA_KEY_BYTES = 512  # TPM2B_PUBLIC_KEY_RSA: MAX_RSA_KEY_BYTES (RSA-4096)
# TPML_PCR_SELECTION: one TPMS_PCR_SELECTION per bank (HASH_COUNT); a selection bitmap of at most
# PCR_SELECT_MAX bytes, 3 for the 24 PCRs of the PC Client profile.
MAX_PCR_BANKS = 16
MAX_PCR_SELECT_BYTES = 3
_PCR_INDEX = re.compile(r"0|[1-9][0-9]?")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


# --- reading TPM structures ----------------------------------------------------------------------


class TpmReader:
    """Big-endian reads over one marshalled TPM structure (or a command's response parameters);
    every overrun or malformed field raises :class:`AttestationError` naming ``what``."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data, self._at, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n > len(self._data) - self._at:
            raise AttestationError(f"{self.what} is truncated")
        out = self._data[self._at : self._at + n]
        self._at += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def tpm2b(self, limit: int, field: str) -> bytes:
        size = self.u16()
        if size > limit:
            raise AttestationError(f"{self.what}: {field} is {size} bytes, more than {limit}")
        return self.take(size)

    def pcr_selection(self) -> tuple[tuple[int, frozenset[int]], ...]:
        """TPML_PCR_SELECTION: count, then per bank a TPMS_PCR_SELECTION (hash, sizeofSelect, the
        pcrSelect bitmap: bit i of byte j selects PCR 8j + i); (TPM_ALG_ID, PCR indices) per bank."""
        count = self.u32()
        if count > MAX_PCR_BANKS:
            raise AttestationError(f"{self.what}: PCR selection names {count} banks")
        banks: list[tuple[int, frozenset[int]]] = []
        for _ in range(count):
            alg, size = self.u16(), self.u8()
            if size > MAX_PCR_SELECT_BYTES:
                raise AttestationError(f"{self.what}: PCR selection bitmap of {size} bytes")
            bitmap = self.take(size)
            selected = frozenset(
                8 * j + i for j, byte in enumerate(bitmap) for i in range(8) if byte >> i & 1
            )
            banks.append((alg, selected))
        return tuple(banks)

    def rest(self) -> bytes:
        """Every byte not read yet."""
        return self.take(len(self._data) - self._at)

    def done(self) -> None:
        if self._at != len(self._data):
            raise AttestationError(f"{self.what} has {len(self._data) - self._at} bytes after its end")


def _alg(value: int) -> str:
    try:
        return TpmAlg(value).name
    except ValueError:
        return f"{value:#06x}"


def encode_pcr_selection(alg: TpmAlg, indices: tuple[int, ...]) -> bytes:
    """A TPML_PCR_SELECTION of one bank (``sizeofSelect`` 3, as the PC Client profile's 24 PCRs)."""
    bitmap = bytearray(MAX_PCR_SELECT_BYTES)
    for i in indices:
        if not 0 <= i < 8 * MAX_PCR_SELECT_BYTES:
            raise UsageError(f"PCR {i} is not one of 0 to {8 * MAX_PCR_SELECT_BYTES - 1}")
        bitmap[i // 8] |= 1 << (i % 8)
    return struct.pack(">IHB", 1, alg, len(bitmap)) + bytes(bitmap)


# --- TPMS_ATTEST ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quote:
    """A TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE, parsed (its signature not yet verified)."""

    raw: bytes
    qualified_signer: bytes  # TPM2B_NAME's contents
    extra_data: bytes  # the qualifyingData given to TPM2_Quote
    clock: int  # TPMS_CLOCK_INFO: milliseconds the TPM has run, ...
    reset_count: int  # ... TPM resets (reboots) ...
    restart_count: int  # ... restarts and resumes since the last reset ...
    safe: bool  # ... and whether clock has never gone backwards
    firmware_version: int
    pcr_selection: tuple[tuple[int, frozenset[int]], ...]  # (TPM_ALG_ID, PCR indices) per bank
    pcr_digest: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> Quote:
        r = TpmReader(data, "TPM quote (TPMS_ATTEST)")
        magic, kind = r.u32(), r.u16()
        if magic != TPM_GENERATED_VALUE:
            raise AttestationError(f"TPM quote magic is {magic:#010x}, not TPM_GENERATED_VALUE (0xff544347)")
        if kind != TPM_ST_ATTEST_QUOTE:
            raise AttestationError(f"TPM attestation type is {kind:#06x}, not TPM_ST_ATTEST_QUOTE (0x8018)")
        qualified_signer = r.tpm2b(MAX_NAME_BYTES, "qualifiedSigner")
        extra_data = r.tpm2b(MAX_DATA_BYTES, "extraData")
        clock, reset_count, restart_count, safe = r.u64(), r.u32(), r.u32(), r.u8()
        if safe > 1:
            raise AttestationError(f"TPM quote clockInfo.safe is {safe}, not a TPMI_YES_NO")
        firmware_version = r.u64()
        selection = r.pcr_selection()
        digest = r.tpm2b(MAX_DIGEST_BYTES, "pcrDigest")
        r.done()
        return cls(
            raw=bytes(data),
            qualified_signer=qualified_signer,
            extra_data=extra_data,
            clock=clock,
            reset_count=reset_count,
            restart_count=restart_count,
            safe=bool(safe),
            firmware_version=firmware_version,
            pcr_selection=selection,
            pcr_digest=digest,
        )


# --- TPMT_PUBLIC ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttestationKey:
    """A TPMT_PUBLIC that is an attestation key: an ECC P-256 or RSA-2048 restricted signing key."""

    raw: bytes
    type: TpmAlg  # ECC or RSA
    name_alg: int
    attributes: int  # TPMA_OBJECT
    scheme: TpmAlg  # ECDSA, RSASSA, or NULL (the signature names its own)
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey

    @property
    def name(self) -> bytes:
        """The key's Name: nameAlg || H_nameAlg(TPMT_PUBLIC) (Part 1, "Names")."""
        return struct.pack(">H", self.name_alg) + hashlib.new(_NAME_HASHES[self.name_alg], self.raw).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> AttestationKey:
        r = TpmReader(data, "TPM attestation key (TPMT_PUBLIC)")
        kind, name_alg, attributes = r.u16(), r.u16(), r.u32()
        if kind not in (TpmAlg.ECC, TpmAlg.RSA):
            raise AttestationError(f"TPM attestation key type {_alg(kind)} is not ECC or RSA")
        if name_alg not in _NAME_HASHES:
            raise AttestationError(
                f"TPM attestation key nameAlg {_alg(name_alg)} is not SHA-256, -384 or -512"
            )
        missing = [str(a.name) for a in ObjectAttributes if a & AK_ATTRIBUTES and not attributes & a]
        if missing:
            raise AttestationError(
                f"TPM key is not a restricted signing key made in its TPM: {', '.join(missing)} not set"
            )
        if attributes & ObjectAttributes.DECRYPT:
            raise AttestationError("TPM attestation key is a decryption key too")
        r.tpm2b(MAX_DIGEST_BYTES, "authPolicy")
        symmetric = r.u16()  # TPMT_SYM_DEF_OBJECT: a signing key has none
        if symmetric != TpmAlg.NULL:
            raise AttestationError(f"TPM attestation key has a symmetric algorithm ({_alg(symmetric)})")
        scheme = r.u16()
        if scheme not in (TpmAlg.NULL, TpmAlg.ECDSA if kind == TpmAlg.ECC else TpmAlg.RSASSA):
            raise AttestationError(f"TPM attestation key scheme {_alg(scheme)} is not supported")
        if scheme != TpmAlg.NULL and (scheme_hash := r.u16()) != TpmAlg.SHA256:
            raise AttestationError(f"TPM attestation key scheme hash {_alg(scheme_hash)} is not SHA-256")
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
        if kind == TpmAlg.ECC:  # TPMS_ECC_PARMS, then TPMS_ECC_POINT
            curve, kdf = r.u16(), r.u16()
            if curve != TPM_ECC_NIST_P256:
                raise AttestationError(f"TPM attestation key curve {curve:#06x} is not NIST P-256")
            if kdf != TpmAlg.NULL:
                raise AttestationError(f"TPM attestation key has a KDF ({_alg(kdf)})")
            x, y = r.tpm2b(P256_BYTES, "x"), r.tpm2b(P256_BYTES, "y")
            r.done()
            try:
                public_key = ec.EllipticCurvePublicNumbers(
                    int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
                ).public_key()
            except ValueError:
                raise AttestationError("TPM attestation key's point is not on P-256") from None
        else:  # RSA, as checked first: TPMS_RSA_PARMS, then TPM2B_PUBLIC_KEY_RSA
            bits, exponent = r.u16(), r.u32()
            if bits != RSA_KEY_BITS:
                raise AttestationError(f"TPM attestation key is RSA-{bits}, not RSA-{RSA_KEY_BITS}")
            n = r.tpm2b(MAX_RSA_KEY_BYTES, "modulus")
            r.done()
            if len(n) != RSA_KEY_BITS // 8 or not n[0] & 0x80:
                raise AttestationError(f"TPM attestation key's modulus is not {RSA_KEY_BITS} bits")
            try:
                public_key = rsa.RSAPublicNumbers(
                    exponent or RSA_DEFAULT_EXPONENT, int.from_bytes(n, "big")
                ).public_key()
            except ValueError:
                raise AttestationError("TPM attestation key's RSA key is invalid") from None
        return cls(bytes(data), TpmAlg(kind), name_alg, attributes, TpmAlg(scheme), public_key)


_NAME_HASHES: dict[int, str] = {TpmAlg.SHA256: "sha256", TpmAlg.SHA384: "sha384", TpmAlg.SHA512: "sha512"}


# --- TPMT_SIGNATURE -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TpmSignature:
    """A TPMT_SIGNATURE (Part 2 §11.3.4): ECDSA (r, s) or RSASSA, with SHA-256."""

    raw: bytes
    scheme: TpmAlg  # ECDSA or RSASSA
    signature: bytes  # DER (r, s) for ECDSA, as pyca/cryptography verifies; the raw block for RSASSA

    @classmethod
    def from_bytes(cls, data: bytes) -> TpmSignature:
        r = TpmReader(data, "TPM signature (TPMT_SIGNATURE)")
        scheme, hash_alg = r.u16(), r.u16()
        if scheme not in (TpmAlg.ECDSA, TpmAlg.RSASSA):
            raise AttestationError(f"TPM signature scheme {_alg(scheme)} is not ECDSA or RSASSA")
        if hash_alg != TpmAlg.SHA256:
            raise AttestationError(f"TPM signature hash {_alg(hash_alg)} is not SHA-256")
        if scheme == TpmAlg.ECDSA:
            sig_r = r.tpm2b(MAX_ECC_PARAMETER_BYTES, "signatureR")
            sig_s = r.tpm2b(MAX_ECC_PARAMETER_BYTES, "signatureS")
            signature = encode_dss_signature(int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big"))
        else:
            signature = r.tpm2b(MAX_RSA_KEY_BYTES, "sig")
        r.done()
        return cls(bytes(data), TpmAlg(scheme), signature)

    def verify(self, key: AttestationKey, message: bytes) -> None:
        """Raise unless this signs ``message`` under ``key`` (opaque: "does not verify")."""
        expected = TpmAlg.ECDSA if key.type == TpmAlg.ECC else TpmAlg.RSASSA
        if self.scheme != expected or key.scheme not in (TpmAlg.NULL, self.scheme):
            raise AttestationError(
                f"TPM signature scheme {self.scheme.name} does not fit the {key.type.name} key"
            )
        try:
            if isinstance(key.public_key, ec.EllipticCurvePublicKey):
                key.public_key.verify(self.signature, message, ec.ECDSA(hashes.SHA256()))
            else:
                key.public_key.verify(self.signature, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise AttestationError("TPM quote signature does not verify under its attestation key") from None


# --- the container --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HardwareBinding:
    """Hardware evidence that vouches for the attestation key: an Azure HCL report (SEV-SNP)."""

    tee: Tee  # SEV_SNP
    evidence: bytes  # the HCL report, as read from the vTPM's NV index 0x01400001


@dataclass(frozen=True)
class VtpmEvidence:
    """The container of the module docstring, its fields decoded (nothing verified yet)."""

    quote: bytes
    signature: bytes
    ak: bytes
    pcrs: Mapping[int, bytes]  # SHA-256 bank, by index: exactly QUOTED_PCRS
    hardware: HardwareBinding | None = None

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "quote": b64.encode(self.quote),
            "signature": b64.encode(self.signature),
            "ak": b64.encode(self.ak),
            "pcrs": {PCR_BANK: {str(i): self.pcrs[i].hex() for i in sorted(self.pcrs)}},
            "hardware": None
            if self.hardware is None
            else {
                "tee": self.hardware.tee.value,
                "evidence": b64.encode(self.hardware.evidence),
            },
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> VtpmEvidence:
        """Step 1 of the module docstring."""
        if len(data) > MAX_EVIDENCE_BYTES:
            raise AttestationError(f"vTPM evidence is larger than {MAX_EVIDENCE_BYTES} bytes")
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, a huge number
            raise AttestationError("vTPM evidence is not JSON") from None
        keys = {"format", "quote", "signature", "ak", "pcrs", "hardware"}
        if not isinstance(doc, dict) or set(doc) != keys:
            raise AttestationError(
                f"vTPM evidence must be a JSON object with exactly {', '.join(sorted(keys))}"
            )
        if doc["format"] != FORMAT:
            raise AttestationError(f"vTPM evidence format is {doc['format']!r}, not {FORMAT!r}")
        banks = doc["pcrs"]
        if not isinstance(banks, dict) or set(banks) != {PCR_BANK} or not isinstance(banks[PCR_BANK], dict):
            raise AttestationError(f'vTPM evidence "pcrs" must hold the {PCR_BANK} bank alone')
        pcrs: dict[int, bytes] = {}
        for index, value in banks[PCR_BANK].items():
            if (
                not _PCR_INDEX.fullmatch(index)
                or not isinstance(value, str)
                or not _HEX_DIGEST.fullmatch(value)
            ):
                raise AttestationError(
                    "vTPM evidence PCRs must be decimal indices with 64 lowercase hex digits"
                )
            pcrs[int(index)] = bytes.fromhex(value)
        if sorted(pcrs) != list(QUOTED_PCRS):
            raise AttestationError(
                f"vTPM evidence PCRs are {sorted(pcrs)}, not {QUOTED_PCRS[0]} to {QUOTED_PCRS[-1]}"
            )
        hardware = doc["hardware"]
        binding = None
        if hardware is not None:
            if not isinstance(hardware, dict) or set(hardware) != {"tee", "evidence"}:
                raise AttestationError(
                    'vTPM evidence "hardware" must be null or {"tee": ..., "evidence": ...}'
                )
            if hardware["tee"] != Tee.SEV_SNP.value:
                raise AttestationError(
                    f"vTPM hardware binding from {hardware['tee']!r} is not supported (sev-snp)"
                )
            binding = HardwareBinding(Tee.SEV_SNP, _b64(hardware["evidence"], "hardware evidence"))
        return cls(
            quote=_b64(doc["quote"], "quote"),
            signature=_b64(doc["signature"], "signature"),
            ak=_b64(doc["ak"], "ak"),
            pcrs=pcrs,
            hardware=binding,
        )


def _b64(value: object, field: str) -> bytes:
    try:
        return b64.decode(value)
    except ValueError:  # binascii.Error is one
        raise AttestationError(f"vTPM evidence {field} is not base64") from None


def pcr_digest(values: Mapping[int, bytes], indices: tuple[int, ...] = QUOTED_PCRS) -> bytes:
    """TPM2_Quote's pcrDigest (Part 3 §18.4): SHA-256 of the selected PCRs' values, concatenated in
    selection order (ascending index within the bank)."""
    return hashlib.sha256(b"".join(values[i] for i in sorted(indices))).digest()


# --- verification ---------------------------------------------------------------------------------


def verify(
    evidence: bytes, collateral: bytes, *, now: datetime, snp_verifier: SnpVerifier | None = None
) -> EnclaveReport:
    """Steps 1 to 9 of the module docstring; raises :class:`AttestationError` with one line.

    ``collateral`` is the SEV-SNP collateral (a PEM bundle of VCEK, ASK, ARK) for a hardware binding,
    else unused. ``snp_verifier`` holds the AMD roots that binding is verified with: without one,
    evidence that carries a binding is refused (there is no default root here)."""
    if now.tzinfo is None:
        raise UsageError("now must be a timezone-aware datetime")
    # 1. the container
    container = VtpmEvidence.decode(evidence)
    # 2. the key, 3. the signature, 4. the quote: structure only
    ak = AttestationKey.from_bytes(container.ak)
    signature = TpmSignature.from_bytes(container.signature)
    quote = Quote.from_bytes(container.quote)
    if quote.pcr_selection != ((TpmAlg.SHA256, frozenset(QUOTED_PCRS)),):
        raise AttestationError(
            f"TPM quote selects {_selection_text(quote.pcr_selection)}, not {PCR_BANK} PCRs "
            f"{QUOTED_PCRS[0]} to {QUOTED_PCRS[-1]}"
        )
    if len(quote.extra_data) != REPORT_DATA_SIZE:
        raise AttestationError(
            f"TPM quote extraData is {len(quote.extra_data)} bytes, not the {REPORT_DATA_SIZE} of report data"
        )
    # 5. the PCR values the container gives are the ones the TPM digested
    if len(quote.pcr_digest) != PCR_DIGEST_SIZE or not hmac.compare_digest(
        pcr_digest(container.pcrs), quote.pcr_digest
    ):
        raise AttestationError(
            "the PCR values in the vTPM evidence are not those the quote's pcrDigest covers"
        )
    # 6. the hardware binding's cheap part: the HCL runtime claims name this key
    binding = None if container.hardware is None else _HclBinding.check(container.hardware, ak, snp_verifier)
    # 7. the TPM's signature
    signature.verify(ak, quote.raw)
    registers = Registers("pcr", PCR_BANK, dict(sorted(container.pcrs.items())))
    settings = encode_pcr_selection(TpmAlg.SHA256, QUOTED_PCRS)
    # 8. the SEV-SNP report that vouches for the key, if any, 9. its level (else a software TPM's)
    snp = None if binding is None else binding.verify(collateral, now)
    return EnclaveReport(
        tee=Tee.VTPM,
        code_hash=quote.pcr_digest,
        signer=b"",
        product_id=0,
        security_version=0,
        debug=snp.debug if snp is not None else False,
        report_data=quote.extra_data,
        security_level=snp.security_level if snp is not None else SecurityLevel.INSECURE,
        level_reason=(
            f"vTPM attestation key bound by an Azure HCL SEV-SNP report: {snp.level_reason}"
            if snp is not None
            else SOFTWARE_TPM_REASON
        ),
        issued_at=snp.issued_at if snp is not None else None,
        snp_tcb=snp.snp_tcb if snp is not None else None,
        platform_settings=settings + (snp.code_hash + snp.platform_settings if snp is not None else b""),
        registers=registers,
    )


@dataclass(frozen=True)
class _HclBinding:
    """An Azure HCL report whose runtime claims name the attestation key, to be verified."""

    report: bytes
    claims: HclRuntimeClaims
    verifier: SnpVerifier

    @classmethod
    def check(
        cls, hardware: HardwareBinding, ak: AttestationKey, verifier: SnpVerifier | None
    ) -> _HclBinding:
        """Step 6: without cryptography."""
        if verifier is None:
            raise AttestationError("vTPM evidence carries an SEV-SNP binding but no SEV-SNP roots were given")
        if not hardware.evidence.startswith(HCL_SIGNATURE):
            raise AttestationError(
                "vTPM hardware binding is not an Azure HCL report (whose runtime claims name the key)"
            )
        _, claims = unwrap_hcl(hardware.evidence)
        _check_hcl_ak(claims, ak)
        return cls(hardware.evidence, claims, verifier)

    def verify(self, collateral: bytes, now: datetime) -> EnclaveReport:
        """Step 8: the SEV-SNP report under the verifier's roots, made by the paravisor (VMPL 0)."""
        verdict = self.verifier.verify(self.report, collateral, now=now)
        if verdict.hcl is None or verdict.hcl.claims != self.claims.claims:
            raise AttestationError(
                "the verified SEV-SNP report does not carry the HCL runtime claims checked"
            )
        vmpl = verdict.attestation_report.vmpl
        if vmpl != 0:
            raise AttestationError(
                f"the HCL report's SEV-SNP report was made at VMPL {vmpl}, not by the paravisor at VMPL 0: "
                "the guest could have chosen its REPORT_DATA"
            )
        return verdict.report


def _selection_text(selection: tuple[tuple[int, frozenset[int]], ...]) -> str:
    return "; ".join(f"{_alg(alg)} PCRs {sorted(pcrs)}" for alg, pcrs in selection) or "no PCRs"


def _check_hcl_ak(claims: HclRuntimeClaims, ak: AttestationKey) -> None:
    """The runtime claims' ``HCLAkPub`` JWK is the quote's attestation key (RFC 7518 §6.2, §6.3)."""
    keys = claims.document.get("keys")
    found = (
        [k for k in keys if isinstance(k, dict) and k.get("kid") == "HCLAkPub"]
        if isinstance(keys, list)
        else []
    )
    if len(found) != 1:
        raise AttestationError("the HCL runtime claims hold no single HCLAkPub key")
    jwk = found[0]
    key = ak.public_key
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        same = jwk.get("kty") == "RSA" and (_jwk_int(jwk, "n"), _jwk_int(jwk, "e")) == (numbers.n, numbers.e)
    else:
        point = key.public_numbers()
        same = (
            jwk.get("kty") == "EC"
            and jwk.get("crv") == "P-256"
            and (_jwk_int(jwk, "x"), _jwk_int(jwk, "y")) == (point.x, point.y)
        )
    if not same:
        raise AttestationError("the HCL runtime claims' HCLAkPub is not the key that signed the TPM quote")


def _jwk_int(jwk: Mapping[str, Any], member: str) -> int:
    """A JWK's base64url unsigned integer (RFC 7518 §6.2.1, §6.3.1), -1 where it is not one."""
    value = jwk.get(member)
    if not isinstance(value, str) or not value or not _BASE64URL.fullmatch(value):
        return -1
    try:
        return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")
    except (binascii.Error, ValueError):
        return -1
