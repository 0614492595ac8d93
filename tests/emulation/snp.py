"""An emulated AMD SEV-SNP platform: a test ARK, ASK and VCEK, and attestation reports the VCEK signs.

TEST-ONLY. Everything here chains up to a test "ARK-<product>" generated in the test process.
enclave-infer's verifier pins AMD's ARKs and refuses all of it (a test asserts so); only a
``SnpVerifier({product: EmulatedSnp.ark_der})``, or an ``evidence.Verifier(snp_roots=...)`` that
builds one, accepts it.

What is emulated, and after which specification:

* the PKI of AMD's "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface
  Specification" (publication 57230): ARK-<product> (self-signed) → ASK SEV-<product> → VCEK
  SEV-VCEK, every signature RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt (the ARK and
  ASK are RSA keys, 2048 bits by default instead of AMD's 4096, for speed); the VCEK holds an
  ECDSA P-384 key and AMD's extensions (arc 1.3.6.1.4.1.3704.1): productName (IA5String), the
  blSPL, teeSPL, snpSPL, ucodeSPL (and on Turin fmcSPL) of the TCB it was derived for (INTEGERs),
  and hwID, the chip's CHIP_ID (on Turin its first 8 bytes), as raw bytes;
* the ATTESTATION_REPORT of the SEV-SNP Firmware ABI Specification (publication 56860, §7.3,
  Table 22), version 3: the fields a guest's firmware fills, CPUID family/model/stepping of the
  product, and the signature: ECDSA P-384 with SHA-384 over bytes 0x000..0x29F, R and S
  little-endian in 72 bytes each at 0x2A0 and 0x2E8;
* TCB_VERSION (ABI 56860, "TCB_VERSION"): Milan and Genoa boot loader, TEE, reserved (4),
  SNP, microcode; Turin FMC, boot loader, TEE, SNP, reserved (3), microcode.
* Azure's HCL report (what an Azure CVM's paravisor leaves in its vTPM's NV index 0x01400001): a
  header, such a report whose REPORT_DATA is the SHA-256 of the runtime claims that follow it.

:mod:`tests.emulation.kds` serves the VCEK and the ASK/ARK chain the way AMD's KDS does.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from enclave_infer.attestation.report import SnpTcb

__all__ = [
    "CERT_NOT_AFTER",
    "CERT_NOT_BEFORE",
    "CPUID",
    "DEFAULT_POLICY",
    "EmulatedSnp",
    "encode_tcb",
    "pss_sign",
]

CERT_NOT_BEFORE = datetime(2025, 1, 1, tzinfo=UTC)
CERT_NOT_AFTER = datetime(2030, 1, 1, tzinfo=UTC)
# CPUID(1).EAX family, model, stepping of each product (AMD PPR for families 19h and 1Ah).
CPUID = {"Milan": (0x19, 0x01, 0x01), "Genoa": (0x19, 0x11, 0x01), "Turin": (0x1A, 0x02, 0x00)}
# GUEST_POLICY: bit 17 must be one, bit 16 allows SMT; what QEMU's sev-snp-guest sets by default.
DEFAULT_POLICY = 0x30000
REPORT_SIZE = 0x4A0
TURIN_HWID_SIZE = 8
AMD_OID_ARC = "1.3.6.1.4.1.3704.1"
# RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48: how AMD signs its certificates and CRLs.
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def pss_sign(builder: Any, key: rsa.RSAPrivateKey) -> Any:
    """Sign a certificate or CRL builder as AMD does (RSASSA-PSS SHA-384, salt 48)."""
    return builder.sign(key, hashes.SHA384(), rsa_padding=_PSS)


def encode_tcb(tcb: SnpTcb, product: str) -> bytes:
    """A TCB_VERSION (8 bytes) in ``product``'s layout."""
    if product == "Turin":
        if tcb.fmc is None:
            raise ValueError("a Turin TCB has an FMC SPL")
        return bytes([tcb.fmc, tcb.bootloader, tcb.tee, tcb.snp, 0, 0, 0, tcb.microcode])
    if tcb.fmc is not None:
        raise ValueError(f"a {product} TCB has no FMC SPL")
    return bytes([tcb.bootloader, tcb.tee, 0, 0, 0, 0, tcb.snp, tcb.microcode])


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "enclave-infer tests (not AMD)"),
        ]
    )


def _der(tag: int, content: bytes) -> bytes:
    assert len(content) < 0x80  # AMD's extension values are short
    return bytes([tag, len(content)]) + content


def _der_integer(n: int) -> bytes:
    return _der(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big"))  # non-negative, minimal


@dataclass
class EmulatedSnp:
    """One test AMD chip of ``product``, its ARK/ASK, and the VCEK for ``reported_tcb``.

    Keys are generated at construction (RSA: about a second for both); build one per test module.
    """

    product: str = "Genoa"
    chip_id: bytes = hashlib.sha512(b"emulated AMD chip").digest()
    reported_tcb: SnpTcb = field(default_factory=lambda: SnpTcb(bootloader=10, tee=0, snp=23, microcode=84))
    product_name: str | None = None  # the VCEK's productName; default "<product>-B0"
    rsa_bits: int = 2048
    cert_not_before: datetime = CERT_NOT_BEFORE
    cert_not_after: datetime = CERT_NOT_AFTER

    def __post_init__(self) -> None:
        if self.product not in CPUID:
            raise ValueError(f"unknown product {self.product!r}: {', '.join(CPUID)}")
        if len(self.chip_id) != 64:
            raise ValueError("CHIP_ID is 64 bytes")
        if self.product == "Turin" and any(self.chip_id[TURIN_HWID_SIZE:]):
            raise ValueError("a Turin CHIP_ID is 8 bytes followed by zeros")
        encode_tcb(self.reported_tcb, self.product)  # the TCB fits the product's layout
        self.ark_key = rsa.generate_private_key(65537, self.rsa_bits)
        self.ask_key = rsa.generate_private_key(65537, self.rsa_bits)
        self.vcek_key = ec.generate_private_key(ec.SECP384R1())
        ark_name, ask_name = f"ARK-{self.product}", f"SEV-{self.product}"
        self.ark = self._ca(ark_name, ark_name, self.ark_key, self.ark_key, 0x30000)
        self.ask = self._ca(ask_name, ark_name, self.ask_key, self.ark_key, 0x30001)
        tcb = self.reported_tcb
        spls = [("3.1", tcb.bootloader), ("3.2", tcb.tee), ("3.3", tcb.snp), ("3.8", tcb.microcode)]
        if tcb.fmc is not None:
            spls.append(("3.9", tcb.fmc))
        name = (self.product_name or f"{self.product}-B0").encode("ascii")
        extensions = [("2", _der(0x16, name)), *((oid, _der_integer(v)) for oid, v in spls), ("4", self.hwid)]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("SEV-VCEK"))
            .issuer_name(self.ask.subject)
            .public_key(self.vcek_key.public_key())
            .serial_number(1)
            .not_valid_before(self.cert_not_before)
            .not_valid_after(self.cert_not_after)
        )
        for oid, value in extensions:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{AMD_OID_ARC}.{oid}"), value),
                critical=False,
            )
        self.vcek: x509.Certificate = pss_sign(builder, self.ask_key)

    def _ca(
        self, subject: str, issuer: str, key: rsa.RSAPrivateKey, signer: rsa.RSAPrivateKey, serial: int
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(_name(issuer))
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(self.cert_not_before)
            .not_valid_after(self.cert_not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        )
        cert: x509.Certificate = pss_sign(builder, signer)
        return cert

    # --- what AMD's KDS hands out -----------------------------------------------------------------

    @property
    def hwid(self) -> bytes:
        """The VCEK's hwID and the KDS path's: CHIP_ID, on Turin its first 8 bytes."""
        return self.chip_id[:TURIN_HWID_SIZE] if self.product == "Turin" else self.chip_id

    @property
    def ark_der(self) -> bytes:
        return self.ark.public_bytes(Encoding.DER)

    @property
    def vcek_der(self) -> bytes:
        return self.vcek.public_bytes(Encoding.DER)

    @property
    def cert_chain_pem(self) -> bytes:
        """``/vcek/v1/{product}/cert_chain``: the ASK, then the ARK."""
        return self.ask.public_bytes(Encoding.PEM) + self.ark.public_bytes(Encoding.PEM)

    @property
    def collateral(self) -> bytes:
        """The PEM bundle a verifier takes: VCEK, ASK, ARK."""
        return self.vcek.public_bytes(Encoding.PEM) + self.cert_chain_pem

    def crl(self, *revoked_serials: int, this_update: datetime, next_update: datetime) -> bytes:
        """AMD's CRL for this ARK (PEM), revoking ``revoked_serials``."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ark.subject)
            .last_update(this_update)
            .next_update(next_update)
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this_update).build()
            )
        crl: x509.CertificateRevocationList = pss_sign(builder, self.ark_key)
        return crl.public_bytes(Encoding.PEM)

    # --- the firmware's part ------------------------------------------------------------------------

    def report(
        self,
        report_data: bytes,
        measurement: bytes,
        *,
        policy: int = DEFAULT_POLICY,
        vmpl: int = 0,
        guest_svn: int = 0,
        host_data: bytes = bytes(32),
        reported_tcb: SnpTcb | None = None,
        committed_tcb: SnpTcb | None = None,
        current_tcb: SnpTcb | None = None,
        cpuid: tuple[int, int, int] | None = None,
        platform_info: int = 0,
        build: tuple[int, int, int] = (21, 55, 1),  # build, minor, major of the SNP firmware
    ) -> bytes:
        """A version-3 ATTESTATION_REPORT, signed by the VCEK (VMPL ``vmpl``; SIGNING_KEY VCEK).

        The TCBs default to the VCEK's; ``cpuid`` (family, model, stepping) to the product's."""
        if len(report_data) != 64 or len(measurement) != 48 or len(host_data) != 32:
            raise ValueError("REPORT_DATA is 64 bytes, MEASUREMENT 48, HOST_DATA 32")
        reported = encode_tcb(reported_tcb or self.reported_tcb, self.product)
        committed = encode_tcb(committed_tcb or self.reported_tcb, self.product)
        current = encode_tcb(current_tcb or self.reported_tcb, self.product)
        body = bytearray(REPORT_SIZE)
        struct.pack_into("<IIQ", body, 0x000, 3, guest_svn, policy)  # VERSION, GUEST_SVN, POLICY
        struct.pack_into("<II", body, 0x030, vmpl, 1)  # VMPL, SIGNATURE_ALGO 1: ECDSA P-384/SHA-384
        body[0x038:0x040] = current  # CURRENT_TCB
        struct.pack_into("<QI", body, 0x040, platform_info, 0)  # PLATFORM_INFO, KEY_INFO (VCEK)
        body[0x050:0x090] = report_data
        body[0x090:0x0C0] = measurement
        body[0x0C0:0x0E0] = host_data
        body[0x140:0x160] = hashlib.sha256(b"report id" + measurement).digest()  # REPORT_ID
        body[0x180:0x188] = reported  # REPORTED_TCB
        body[0x188:0x18B] = bytes(cpuid or CPUID[self.product])  # CPUID_FAM_ID, _MOD_ID, _STEP
        body[0x1A0:0x1E0] = self.chip_id
        body[0x1E0:0x1E8] = committed  # COMMITTED_TCB
        body[0x1E8:0x1EB] = bytes(build)  # CURRENT_BUILD, _MINOR, _MAJOR
        body[0x1EC:0x1EF] = bytes(build)  # COMMITTED_BUILD, _MINOR, _MAJOR
        body[0x1F0:0x1F8] = committed  # LAUNCH_TCB
        r, s = decode_dss_signature(self.vcek_key.sign(bytes(body[:0x2A0]), ec.ECDSA(hashes.SHA384())))
        body[0x2A0:0x2E8] = r.to_bytes(72, "little")
        body[0x2E8:0x330] = s.to_bytes(72, "little")
        return bytes(body)

    # --- Azure's paravisor ------------------------------------------------------------------------

    def hcl_report(self, runtime_claims: bytes, measurement: bytes, **report: Any) -> bytes:
        """An Azure HCL report (what an Azure CVM's vTPM holds at NV index 0x01400001): a 32-byte
        header ("HCLA", version 2, the total size, request type 2, status 0), the SNP report whose
        REPORT_DATA is SHA-256(``runtime_claims``) followed by 32 zero bytes, a 20-byte runtime-data
        header (data size, version 1, report type 2: SNP, hash type 1: SHA-256, claims size) and the
        claims. Layout after az-cvm-vtpm's ``src/hcl/mod.rs``; ``report`` goes to :meth:`report`
        (``vmpl``: the paravisor asks at VMPL 0)."""
        report_data = hashlib.sha256(runtime_claims).digest() + bytes(32)
        snp_report = self.report(report_data, measurement, **report)
        runtime = struct.pack("<IIIII", 20 + len(runtime_claims), 1, 2, 1, len(runtime_claims))
        total = 32 + len(snp_report) + len(runtime) + len(runtime_claims)
        header = struct.pack("<4sIIII12s", b"HCLA", 2, total, 2, 0, bytes(12))
        return header + snp_report + runtime + runtime_claims
