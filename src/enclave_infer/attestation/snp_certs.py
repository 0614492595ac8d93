"""AMD's certificates for SEV-SNP reports: collateral bundles, GHCB certificate tables, CRLs, DER.

Pure logic on bytes, client side (:mod:`enclave_infer.attestation.snp` verifies with them). The
certificates are those of AMD's "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
Interface Specification" (publication 57230): a VCEK or VLEK, its ASK or ASVK, the ARK, and AMD's
CRL. This module parses and sorts them, checks that their signatures are laid out exactly as AMD
signs (RSASSA-PSS with SHA-384, MGF1-SHA-384, a 48-byte salt, outer and inner AlgorithmIdentifier
alike), verifies a link's signature and a CRL, and reads AMD's extensions; which chain to trust is
the verifier's decision. Every parse error of ``cryptography`` is an AttestationError here: the host
chooses what it sends.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from enclave_infer.attestation._x509 import PARSE_ERRORS
from enclave_infer.errors import AttestationError

__all__ = [
    "MAX_COLLATERAL_BYTES",
    "MAX_COLLATERAL_CERTS",
    "MAX_CRL_BYTES",
    "SnpCollateral",
    "crl_of",
    "parse_snp_collateral",
]

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
PSS_PARAMS = (
    "06092a864886f70d01010a"  # id-RSASSA-PSS
    "{len}"
    "a00f300d06096086480165030402020500"  # hashAlgorithm sha384
    "a11c301a06092a864886f70d010108300d06096086480165030402020500"  # maskGenAlgorithm mgf1(sha384)
    "a203020130"  # saltLength 48
)
PSS_SHA384_ALGORITHMS = frozenset(
    {
        bytes.fromhex("3046" + PSS_PARAMS.format(len="3039") + "a303020101"),
        bytes.fromhex("3041" + PSS_PARAMS.format(len="3034")),
    }
)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)

# GHCB specification (AMD publication 56421) v2.03, §4.1.8.1: the certificate table of an extended
# guest request: (GUID, offset, length) entries ended by an all-zero entry; GUIDs of AMD's keys.
CERT_TABLE_ENTRY = struct.Struct("<16sII")
CERT_TABLE_GUIDS = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes: "VCEK",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1").bytes: "VLEK",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes: "ASK",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes: "ARK",
}

PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)


class Refused(Exception):
    """Internal: malformed DER; turned into an AttestationError naming the object."""


def certificate_table(table: bytes) -> list[bytes]:
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


# --- DER framing (only what the checks below need; the parsing itself is cryptography's) ---------


def tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end) of the DER element at ``pos``: one-byte tags, minimal lengths."""
    if pos + 2 > len(data) or data[pos] & 0x1F == 0x1F:
        raise Refused
    tag, first, pos = data[pos], data[pos + 1], pos + 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if not 1 <= n <= 3 or pos + n > len(data) or data[pos] == 0:
            raise Refused
        length, pos = int.from_bytes(data[pos : pos + n], "big"), pos + n
        if length < 0x80:
            raise Refused
    if pos + length > len(data):
        raise Refused
    return tag, pos, pos + length


def check_signed_layout(der: bytes, tbs: bytes, signature: bytes, *, crl: bool) -> None:
    """``der`` is exactly SEQUENCE { tbs, AMD's RSASSA-PSS AlgorithmIdentifier, BIT STRING signature },
    and ``tbs`` names the same AlgorithmIdentifier (RFC 5280 §4.1.1.2, §5.1.1.2). Nothing outside
    ``tbs`` is signed, so nothing else may vary."""
    tag, start, end = tlv(der, 0)
    if tag != 0x30 or end != len(der) or der[start : start + len(tbs)] != tbs:
        raise Refused
    _, _, alg_end = tlv(der, start + len(tbs))
    algorithm = der[start + len(tbs) : alg_end]
    tag, bits, end = tlv(der, alg_end)
    if algorithm not in PSS_SHA384_ALGORITHMS or tag != 0x03 or end != len(der):
        raise Refused
    if end == bits or der[bits] != 0 or der[bits + 1 : end] != signature:  # no unused bits
        raise Refused
    # inside tbs: certificate: [0] version, serial, signature; CRL: version (optional), signature
    _, pos, _ = tlv(tbs, 0)
    for skip in (0x02,) if crl else (0xA0, 0x02):
        tag, _, after = tlv(tbs, pos)
        if tag == skip:
            pos = after
    _, _, inner_end = tlv(tbs, pos)
    if tbs[pos:inner_end] != algorithm:
        raise Refused


def der_uint8(value: bytes) -> int:
    """A DER INTEGER from 0 to 255 (an SPL extension)."""
    tag, start, end = tlv(value, 0)
    content = value[start:end]
    if tag != 0x02 or end != len(value):
        raise Refused
    if len(content) == 1 and content[0] < 0x80:
        return content[0]
    if len(content) == 2 and content[0] == 0 and content[1] >= 0x80:
        return content[1]
    raise Refused


def der_ia5(value: bytes) -> str:
    """A DER IA5String (the product name and cspID extensions)."""
    tag, start, end = tlv(value, 0)
    if tag != 0x16 or end != len(value) or not value[start:end].isascii():
        raise Refused
    return value[start:end].decode("ascii")


# --- collateral -------------------------------------------------------------------------------


@lru_cache(maxsize=CERTIFICATE_CACHE_SIZE)
def load_certificate(der: bytes) -> x509.Certificate:
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


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if len(names) == 1 else None
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class SnpCollateral:
    """AMD certificates for a report, sorted by role; parsed, not yet verified."""

    endorsement_key: x509.Certificate  # the VCEK or VLEK (an EC P-384 key)
    intermediates: tuple[x509.Certificate, ...]  # ASK and/or ASVK
    ark: x509.Certificate | None  # when the bundle carries one; the pinned ARK is used either way


def split_certificates(data: bytes) -> list[bytes]:
    if b"-----BEGIN" in data:
        ders, last = [], 0
        for match in PEM_BLOCK.finditer(data):
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
            tag, _, end = tlv(data, pos)
        except Refused:
            raise AttestationError("collateral is neither PEM nor DER certificates") from None
        if tag != 0x30:
            raise AttestationError("collateral is neither PEM nor DER certificates")
        ders.append(data[pos:end])
        pos = end
    return ders


def crl_of(data: bytes) -> bytes | None:
    """AMD's CRL (DER) when a PEM collateral bundle carries one (``X509 CRL``), else None."""
    blocks = [m for m in PEM_BLOCK.finditer(data) if m[1] == b"X509 CRL"] if b"-----BEGIN" in data else []
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
    return sort_certificates(split_certificates(data))


def sort_certificates(ders: list[bytes]) -> SnpCollateral:
    if not 2 <= len(ders) <= MAX_COLLATERAL_CERTS:
        raise AttestationError(
            f"SEV-SNP collateral holds {len(ders)} certificates; expected a VCEK or VLEK, its ASK or "
            f"ASVK, and optionally the ARK (at most {MAX_COLLATERAL_CERTS})"
        )
    leaves, intermediates, roots = [], [], []
    for der in ders:
        cert = load_certificate(der)
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


def validity(cert: x509.Certificate, what: str, now: datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AttestationError(
            f"{what} is not valid at {now:%Y-%m-%dT%H:%M:%SZ} (valid from "
            f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
            f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
        )


def check_issued_layout(cert: x509.Certificate, issuer: x509.Certificate, what: str, by: str) -> None:
    """``cert`` names ``issuer``, which holds an RSA key, and is laid out as AMD signs (no crypto)."""
    try:
        check_signed_layout(
            cert.public_bytes(Encoding.DER), cert.tbs_certificate_bytes, cert.signature, crl=False
        )
    except Refused:
        raise AttestationError(f"{what} is not signed with RSASSA-PSS SHA-384 as AMD signs") from None
    if cert.issuer != issuer.subject or not isinstance(issuer.public_key(), rsa.RSAPublicKey):
        raise AttestationError(f"{what} is not issued by {by}")


def verify_issued_signature(cert: x509.Certificate, issuer: x509.Certificate, what: str, by: str) -> None:
    """``cert``'s RSASSA-PSS SHA-384 signature (MGF1 SHA-384, salt 48) under ``issuer``'s key."""
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise AttestationError(f"{what} is not issued by {by}")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, PSS, hashes.SHA384())
    except (InvalidSignature, ValueError):
        raise AttestationError(f"{what} signature does not verify under {by}") from None


def is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return False
    return constraints.ca and usage.key_cert_sign


def amd_extensions(cert: x509.Certificate, what: str) -> dict[str, bytes]:
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


def check_crl(
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
        check_signed_layout(crl.public_bytes(Encoding.DER), crl.tbs_certlist_bytes, crl.signature, crl=True)
    except PARSE_ERRORS:
        raise AttestationError("CRL does not parse") from None
    except Refused:
        raise AttestationError("CRL is not signed with RSASSA-PSS SHA-384 as AMD signs") from None
    key = ark.public_key()
    if issuer != ark.subject or not isinstance(key, rsa.RSAPublicKey):
        raise AttestationError(f"CRL is not issued by ARK-{product}")
    try:
        key.verify(crl.signature, crl.tbs_certlist_bytes, PSS, hashes.SHA384())
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
            f"{common_name(intermediate)} (serial {intermediate.serial_number:#x}) is revoked by AMD's CRL"
        )
    return this_update, next_update
