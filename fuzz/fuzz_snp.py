"""AMD SEV-SNP: AttestationReport.from_bytes, parse_snp_collateral, the input forms (raw report, the
evidence container with a GHCB certificate table, an Azure HCL report) and SnpVerifier.verify, with
AMD's pinned roots (garbage) and with a test chain made here (ARK-Milan, ASK, VCEK; RSA-2048 instead
of AMD's 4096, for speed) whose signed report the input edits, field by field or byte by byte, then
re-signs or not.

Beyond "only AttestationError escapes": the unedited report verifies in each form.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import uuid
from datetime import UTC, datetime

import atheris

from _harness import EnclaveInferError, dumps, main, mutate_bytes, mutate_doc

with atheris.instrument_imports(include=["enclave_infer"]):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    from enclave_infer.attestation import snp, snp_certs, snp_report

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CHIP = bytes(range(1, 65))
TCB = bytes([3, 0, 0, 0, 0, 0, 8, 115])  # Milan layout: boot loader 3, TEE 0, SNP 8, microcode 115


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pss(builder: x509.CertificateBuilder | x509.CertificateRevocationListBuilder, key: rsa.RSAPrivateKey):  # type: ignore[no-untyped-def]
    return builder.sign(key, hashes.SHA384(), rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 48))


def _chain() -> tuple[bytes, list[bytes], ec.EllipticCurvePrivateKey, bytes]:
    """(ARK DER, [VCEK, ASK, ARK] DER, VCEK key, CRL DER) of a test ARK-Milan."""
    ark_key = rsa.generate_private_key(65537, 2048)
    ask_key = rsa.generate_private_key(65537, 2048)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    start, end = datetime(2025, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)

    def ca(subject: str, key: rsa.RSAPrivateKey, serial: int) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name("ARK-Milan"))
            .public_key(key.public_key()).serial_number(serial).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
        )  # fmt: skip
        return _pss(builder, ark_key)  # type: ignore[no-any-return]

    ark, ask = ca("ARK-Milan", ark_key, 0x100), ca("SEV-Milan", ask_key, 0x101)
    builder = (
        x509.CertificateBuilder().subject_name(_name("SEV-VCEK")).issuer_name(_name("SEV-Milan"))
        .public_key(vcek_key.public_key()).serial_number(1).not_valid_before(start).not_valid_after(end)
    )  # fmt: skip
    for oid, value in [("2", b"\x16\x08Milan-B0"), ("3.1", b"\x02\x01\x03"), ("3.2", b"\x02\x01\x00"),
                       ("3.3", b"\x02\x01\x08"), ("3.8", b"\x02\x01\x73"), ("4", CHIP)]:  # fmt: skip
        ext = x509.UnrecognizedExtension(x509.ObjectIdentifier(snp_certs.AMD_OID_ARC + "." + oid), value)
        builder = builder.add_extension(ext, critical=False)
    vcek = _pss(builder, ask_key)
    crl = _pss(
        x509.CertificateRevocationListBuilder().issuer_name(_name("ARK-Milan"))
        .last_update(NOW.replace(month=5)).next_update(NOW.replace(month=7)),
        ark_key,
    ).public_bytes(Encoding.DER)  # fmt: skip
    certs = [c.public_bytes(Encoding.DER) for c in (vcek, ask, ark)]
    return certs[2], certs, vcek_key, crl


ARK, CERTS, VCEK_KEY, CRL = _chain()
VERIFIER = snp.SnpVerifier({"Milan": ARK})

# (offset, size) of the report's fields, for edits that keep the rest intact
FIELDS = [(0x000, 4), (0x004, 4), (0x008, 8), (0x030, 4), (0x034, 4), (0x038, 8), (0x040, 8),
          (0x048, 4), (0x04C, 4), (0x050, 64), (0x180, 8), (0x188, 3), (0x18B, 1), (0x1A0, 64),
          (0x1E0, 8), (0x1E8, 4), (0x1EC, 4), (0x1F0, 8), (0x1F8, 8), (0x200, 8), (0x208, 8),
          (0x2A0, 72), (0x2E8, 72), (0x330, 8), (0x498, 8)]  # fmt: skip


def sign(body: bytearray) -> bytes:
    r, s = decode_dss_signature(VCEK_KEY.sign(bytes(body[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    body[0x2A0:0x2E8] = r.to_bytes(72, "little")
    body[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(body)


def report(report_data: bytes = bytes(range(64))) -> bytearray:
    body = bytearray(snp.REPORT_SIZE)
    struct.pack_into("<IIQ", body, 0, 3, 0, 0x30000)  # VERSION 3, GUEST_SVN, POLICY
    struct.pack_into("<I", body, 0x34, 1)  # ECDSA P-384
    body[0x38:0x40] = body[0x180:0x188] = body[0x1E0:0x1E8] = body[0x1F0:0x1F8] = TCB
    body[0x50:0x90] = report_data
    body[0x90:0xC0] = b"\x42" * 48
    body[0x188:0x18B] = bytes([0x19, 0x01, 0x01])  # CPUID family 19h model 01h: Milan
    body[0x1A0:0x1E0] = CHIP
    return body


def pem(ders: list[bytes]) -> bytes:
    return b"".join(
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(d) + b"-----END CERTIFICATE-----\n"
        for d in ders
    )


GUIDS = {
    "VCEK": "63da758d-e664-4564-adc5-f4b93be8accd",
    "ASK": "4ab7b379-bbac-4fe4-a02f-05aef327c782",
    "ARK": "c0b406a4-a803-4952-9743-3fb6014cd0ae",
    "other": "ecae0c0f-9502-43b1-afa2-0ae2e0d565b6",
}


def cert_table(entries: list[tuple[str, bytes]]) -> bytes:
    header_size = 24 * (len(entries) + 1)
    header, blobs = b"", b""
    for name, blob in entries:
        header += uuid.UUID(GUIDS[name]).bytes + struct.pack("<II", header_size + len(blobs), len(blob))
        blobs += blob
    return header + bytes(24) + blobs


def container(raw: bytes, certs: bytes | None) -> bytes:
    doc = {"certs": base64.b64encode(certs).decode() if certs is not None else None,
           "report": base64.b64encode(raw).decode()}  # fmt: skip
    return json.dumps(doc).encode()


def hcl(claims: bytes, hash_type: int = 1) -> bytes:
    digest = hashlib.new(snp_report.HCL_HASHES.get(hash_type, "sha256"), claims).digest()
    raw = sign(report(digest + bytes(64 - len(digest))))
    data_size = snp_report.HCL_RUNTIME_HEADER.size + len(claims)
    header = snp_report.HCL_HEADER.pack(
        b"HCLA", 2, snp_report.HCL_RUNTIME_OFFSET + data_size, 2, 0, bytes(12)
    )
    return header + raw + snp_report.HCL_RUNTIME_HEADER.pack(data_size, 1, 2, hash_type, len(claims)) + claims


def form(fdp: atheris.FuzzedDataProvider) -> tuple[bytes, bytes, bytes | None, bool]:
    """(evidence, collateral, CRL, pristine) made from the test chain, then edited by the input."""
    body, edited = report(), False
    for _ in range(fdp.ConsumeIntInRange(0, 3)):  # field edits, then maybe re-signed
        at, size = fdp.PickValueInList(FIELDS)
        body[at : at + size] = fdp.ConsumeBytes(size).ljust(size, b"\0")
        edited = True
    raw = sign(body)
    if fdp.ConsumeBool() and edited:
        raw = bytes(body)  # edited after signing: the old (zero) signature
    raw2 = mutate_bytes(fdp, raw) if fdp.ConsumeIntInRange(0, 3) == 0 else raw
    edited |= raw2 != raw
    order = [CERTS[i] for i in fdp.PickValueInList([(0, 1, 2), (0, 1), (2, 0, 1), (1, 0), (0,), (0, 0, 1)])]
    edited |= len(order) < 2 or order[0] != CERTS[0] or len(set(order)) != len(order)
    collateral = pem(order) if fdp.ConsumeBool() else b"".join(order)
    if fdp.ConsumeIntInRange(0, 3) == 0:
        edited_collateral = mutate_bytes(fdp, collateral)
        edited |= edited_collateral != collateral
        collateral = edited_collateral
    crl = fdp.PickValueInList([None, CRL, b"junk"])
    edited |= crl == b"junk"
    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 0:
        return raw2, collateral, crl, not edited
    if kind == 1:
        document = container(raw2, None)
        if fdp.ConsumeBool():  # the container's JSON, with values replaced by the input
            document = dumps(fdp, mutate_doc(fdp, json.loads(document), ("report", "certs")))
            edited = True
        return document, collateral, crl, not edited
    if kind == 2:  # the certificates in the container's GHCB table, no separate collateral
        entries = [("VCEK", CERTS[0]), ("ASK", CERTS[1]), ("ARK", CERTS[2]), ("other", b"\x08" * 8)]
        table = cert_table(entries)
        table2 = mutate_bytes(fdp, table) if fdp.ConsumeBool() else table
        return container(raw2, table2), b"", crl, not edited and table2 == table
    claims_doc = {"user-data": fdp.PickValueInList(["00" * 64, "xyz", 1]), "keys": []}
    plain = json.dumps(claims_doc).encode()
    claims = dumps(fdp, mutate_doc(fdp, claims_doc, ("user-data", "keys")))
    hash_type = fdp.PickValueInList([1, 2, 3, 4])
    wrapped = hcl(claims, hash_type)
    wrapped2 = mutate_bytes(fdp, wrapped) if fdp.ConsumeBool() else wrapped
    pristine = hash_type != 4 and claims == plain and wrapped2 == wrapped and not edited
    return wrapped2, collateral, crl, pristine


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 4)
    try:
        if mode == 0:
            raw = fdp.ConsumeBytes(fdp.remaining_bytes())
            snp.looks_like_snp_report(raw)
            snp.AttestationReport.from_bytes(snp.report_of(raw))
        elif mode == 1:
            snp.parse_snp_collateral(fdp.ConsumeBytes(fdp.remaining_bytes()))
        elif mode == 2:  # AMD's roots, a bad report: refused before any signature
            evidence = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, fdp.remaining_bytes()))
            collateral = fdp.ConsumeBytes(fdp.remaining_bytes()) or pem(CERTS)
            snp.verify_snp_report(evidence, collateral, now=NOW)
        else:
            evidence, collateral, crl, pristine = form(fdp)
            try:
                snp.carries_certificates(evidence)
                VERIFIER.verify(evidence, collateral, now=NOW, crl=crl)
            except EnclaveInferError:
                assert not pristine, "the unedited report did not verify"
                raise
    except EnclaveInferError:
        pass


if __name__ == "__main__":
    main(test_one_input)
