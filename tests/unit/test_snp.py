"""Real AMD SEV-SNP reports: what each must verify to, and every tampered variant that must fail.

The vectors are read where they lie, in ``shared/vectors`` beside the repository (see its README);
they are never copied here. Every test pins the clock the vectors' README gives.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import random
import re
import struct
import time
import uuid
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from enclave_infer.attestation import constraints, evidence, snp
from enclave_infer.attestation._amd_roots import ARK_PEM, ARK_SHA256
from enclave_infer.attestation.report import EnclaveReport, SecurityLevel, SnpTcb
from enclave_infer.attestation.snp import (
    SnpVerifier,
    looks_like_snp_report,
    parse_snp_collateral,
    verify_snp_report,
)
from enclave_infer.errors import AttestationError, ConstraintError, UsageError
from tests.emulation.snp import EmulatedSnp
from tests.shared_vectors import ATTESTATION_VECTORS, shared_vector_dir
from tests.tamper import flipped, refused_by

VECTORS = ATTESTATION_VECTORS / "sev-snp"
NOW = datetime.fromtimestamp(1751328000, UTC)  # 2025-07-01T00:00:00Z, per the vectors' README

MILAN, VLEK, GENOA = "milan-vcek-go-sev-guest", "milan-vlek-aws-trustee", "genoa-vcek-azure-openpcc"
# folder: (report, endorsement key, AMD chain, CRL or None)
FILES = {
    MILAN: ("attestation.bin", "vcek.der", "ask_ark_milan.pem", f"../{GENOA}/crl_milan.pem"),
    VLEK: ("test-vlek-report.bin", "test-vlek.der", "milan_ask_ark_asvk.pem", None),
    GENOA: ("report.bin", "vcek.pem", "ask_ark_genoa.pem", "crl_genoa.pem"),
}
LEVELS = {MILAN: SecurityLevel.INSECURE, VLEK: SecurityLevel.STALE, GENOA: SecurityLevel.SECURE}


@functools.cache
def read(relative: str) -> bytes:
    path = shared_vector_dir("sev-snp") / relative
    if not path.is_file():
        pytest.fail(f"SEV-SNP test vector {relative} not found under {VECTORS}", pytrace=False)
    return path.read_bytes()


def pem(der: bytes) -> bytes:
    b64 = base64.b64encode(der).decode()
    body = "".join(b64[i : i + 64] + "\n" for i in range(0, len(b64), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode()


def ders(pem_text: bytes) -> list[bytes]:
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem_text, re.S)
    return [base64.b64decode(re.sub(rb"\s", b"", b)) for b in blocks]


def as_der(data: bytes) -> bytes:
    return ders(data)[0] if data.startswith(b"-----") else data


def vector(folder: str) -> tuple[bytes, list[bytes], bytes | None]:
    """(report, [endorsement key DER, chain DERs...], CRL or None)."""
    report, key, chain, crl = FILES[folder]
    return (
        read(f"{folder}/{report}"),
        [as_der(read(f"{folder}/{key}")), *ders(read(f"{folder}/{chain}"))],
        read(f"{folder}/{crl}") if crl else None,
    )


def bundle(certs: list[bytes]) -> bytes:
    return b"".join(pem(c) for c in certs)


def cn(der: bytes) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AMD's VCEK/VLEK serial number 0
        value = (
            x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        )
    return str(value)


def rejected(report: bytes, collateral: bytes, *, now: datetime = NOW, crl: bytes | None = None) -> bool:
    return refused_by(verify_snp_report, report, collateral, now=now, crl=crl)


# --- what each vector verifies to ---------------------------------------------------------------


def tcb(doc: dict[str, Any]) -> dict[str, int]:
    return {k: doc[k] for k in ("bootloader", "tee", "snp", "microcode")}


@pytest.mark.parametrize("folder", [MILAN, VLEK, GENOA])
def test_each_vector_verifies_to_what_its_readme_says(folder: str) -> None:
    expected = json.loads(read(f"{folder}/expected.json"))
    assert expected["now"] == NOW.timestamp()
    report, certs, crl = vector(folder)
    verdict = verify_snp_report(report, bundle(certs), now=NOW, crl=crl)
    doc, want = verdict.to_json(), expected["report"]
    for key in ("version", "guest_svn", "policy", "vmpl", "signing_key", "report_data", "measurement",
                "host_data", "id_key_digest", "author_key_digest", "report_id", "report_id_ma", "chip_id",
                "family_id", "image_id", "platform_info"):  # fmt: skip
        assert doc[key] == want[key], key
    for name in ("reported", "current", "committed", "launch"):
        assert doc[f"{name}_tcb"] == tcb(want[f"{name}_tcb"]), name
    decoded = {k: v for k, v in want["policy_decoded"].items() if k != "reserved_bit17"}
    assert {k: doc["policy_decoded"][k] for k in decoded} == decoded
    assert doc["cpuid"] == (
        None
        if want["cpuid_fam_id"] is None
        else {"family": want["cpuid_fam_id"], "model": want["cpuid_mod_id"], "stepping": want["cpuid_step"]}
    )
    build, minor, major = want["current_build_minor_major"]
    assert doc["current_firmware"] == f"{major}.{minor} build {build}"
    assert (doc["author_key_en"], doc["mask_chip_key"]) == (
        bool(want["author_key_en"]),
        bool(want["mask_chip_key"]),
    )
    ek = expected["endorsement_key"]
    assert doc["endorsement_key_validity"] == [t.replace("+00:00", "Z") for t in ek["validity"]]
    assert doc["product"] == expected["product"]
    assert doc["product_name"] == ek["amd_extensions"]["productName"]
    assert doc["csp_id"] == ek["amd_extensions"].get("cspID")
    # the VCEK/VLEK's SPLs equal REPORTED_TCB (not CURRENT_TCB, which is newer on the VLEK vector)
    ext = ek["amd_extensions"]
    assert doc["reported_tcb"] == {
        "bootloader": ext["blSPL"], "tee": ext["teeSPL"], "snp": ext["snpSPL"], "microcode": ext["ucodeSPL"]
    }  # fmt: skip
    if "crl" in expected:
        assert doc["crl"] == {
            "this_update": expected["crl"]["this_update"].replace("+00:00", "Z"),
            "next_update": expected["crl"]["next_update"].replace("+00:00", "Z"),
        }
    r = verdict.report
    assert (r.tee, r.code_hash.hex(), r.report_data.hex()) == (
        "sev-snp",
        want["measurement"],
        want["report_data"],
    )
    assert (r.signer, r.product_id, r.security_version) == (b"", 0, 0)
    assert r.debug is want["policy_decoded"]["debug_allowed"]
    assert r.snp_tcb == SnpTcb(**tcb(want["reported_tcb"]))
    assert r.security_level is LEVELS[folder], r.level_reason
    assert doc["security_level"] == LEVELS[folder].name
    assert r.issued_at == (verdict.crl_updates[0] if verdict.crl_updates else None)
    assert doc["source"] == "report" and doc["azure_hcl"] is None


def test_the_three_levels_say_why() -> None:
    milan = verify_snp_report(vector(MILAN)[0], bundle(vector(MILAN)[1]), now=NOW)
    assert (
        milan.report.level_reason
        == "guest policy allows debugging: the hypervisor can read and write its memory"
    )
    assert any("debugging (bit 19)" in f for f in milan.findings)
    vlek = verify_snp_report(vector(VLEK)[0], bundle(vector(VLEK)[1]), now=NOW)
    assert (
        "below COMMITTED_TCB (bootloader 4, tee 0, snp 24, microcode 219) in microcode"
        in vlek.report.level_reason
    )
    assert any("VMPL 1" in f for f in vlek.findings)
    assert any("VLEK issued to cloud provider CN=cc-us-east-2.amazonaws.com" in f for f in vlek.findings)
    assert any("below CURRENT_TCB in microcode" in f for f in vlek.findings)
    genoa = verify_snp_report(vector(GENOA)[0], bundle(vector(GENOA)[1]), now=NOW, crl=vector(GENOA)[2])
    assert genoa.report.security_level is SecurityLevel.SECURE
    assert not any("ID block" in f or "CRL" in f for f in genoa.findings)  # it has an ID block; CRL checked
    assert any("no AMD CRL given" in f for f in vlek.findings)


def test_the_azure_hcl_report() -> None:
    expected = json.loads(read(f"{GENOA}/expected.json"))
    hcl = read(f"{GENOA}/hcl_report.bin")
    _, certs, crl = vector(GENOA)
    wrapped = verify_snp_report(hcl, bundle(certs), now=NOW, crl=crl)
    plain = verify_snp_report(read(f"{GENOA}/report.bin"), bundle(certs), now=NOW, crl=crl)
    assert wrapped.attestation_report == plain.attestation_report
    assert wrapped.report == plain.report  # the same facts; REPORT_DATA is the raw field
    doc = wrapped.to_json()
    binding = expected["azure_hcl_binding"]
    assert doc["source"] == "azure-hcl"
    assert doc["azure_hcl"]["runtime_claims_digest"] == binding["sha256_runtime_claims"]
    assert doc["report_data"] == binding["sha256_runtime_claims"] + "00" * 32
    assert doc["azure_hcl"]["user_data"] == "00" * 64
    assert [k["kid"] for k in doc["azure_hcl"]["runtime_claims"]["keys"]] == ["HCLAkPub", "HCLEkPub"]
    assert any("Azure HCL report" in f and "not the guest OS" in f for f in wrapped.findings)
    start = binding["runtime_claims_offset"]
    assert (
        wrapped.hcl is not None and wrapped.hcl.claims == hcl[start : start + binding["runtime_claims_len"]]
    )


def test_looks_like_snp_report() -> None:
    report, certs, _ = vector(GENOA)
    assert looks_like_snp_report(report)
    assert looks_like_snp_report(read(f"{GENOA}/hcl_report.bin"))
    assert looks_like_snp_report(container(report, None))
    sgx_quote = (shared_vector_dir("sgx-dcap") / "sgx_quote").read_bytes()
    assert not looks_like_snp_report(sgx_quote)
    assert not looks_like_snp_report(sgx_quote[: snp.REPORT_SIZE])  # even cut to the same size
    assert not looks_like_snp_report(b"")
    assert not looks_like_snp_report(b'{"tcb_info": "..."}')
    assert not looks_like_snp_report(bundle(certs))


# --- tamper twins -------------------------------------------------------------------------------

# The signed header fields: VERSION .. KEY_INFO and the reserved word after it.
HEADER = range(0x000, 0x050)
SIGNED_AND_SIGNATURE = range(0x000, 0x330)  # bytes 0x000..0x29F, R and S


@pytest.mark.parametrize("folder", [GENOA, MILAN, VLEK])
def test_bit_flips_in_the_report(folder: str) -> None:
    """Genoa: every bit of the signed part and of R and S (6528 flips). Milan and VLEK: every bit of
    the header fields, one bit of every other byte. All three: one bit of every byte of the unsigned
    tail 0x330..0x49F, which must be zero. A full sweep of one report takes about 4 to 5 s here
    (one ECDSA P-384 verification is about 1 ms), so only one gets it."""
    report, certs, _ = vector(folder)
    collateral = bundle(certs)
    every_bit = [*(SIGNED_AND_SIGNATURE if folder == GENOA else HEADER)]
    flips = [(i, b) for i in every_bit for b in range(8)]
    flips += [(i, i % 8) for i in range(snp.REPORT_SIZE) if i not in every_bit]
    started = time.perf_counter()
    survivors = [(i, b) for i, b in flips if not rejected(flipped(report, i, b), collateral)]
    elapsed = time.perf_counter() - started
    assert survivors == []
    assert len(flips) == len(set(flips)) == (6896 if folder == GENOA else 1744)
    print(f"{folder}: {len(flips)} report bit flips refused in {elapsed:.1f} s")


def test_bit_flips_in_the_certificates() -> None:
    """One bit of every byte of each certificate's DER (re-encoded as PEM): VCEK, ASK and ARK of
    the Genoa vector, and the VLEK of the VLEK vector. Not swept, for time: the Milan VCEK, ASK
    and ARK and the ASVK, which take the same paths as their Genoa counterparts (about 6000 more
    flips, 3 to 4 s)."""
    checked, started = 0, time.perf_counter()
    for folder in (GENOA, VLEK):
        report, certs, _ = vector(folder)
        assert not rejected(report, bundle(certs)), "control: re-encoding alone must still verify"
        wanted = {GENOA: {"SEV-VCEK", "SEV-Genoa", "ARK-Genoa"}, VLEK: {"SEV-VLEK"}}[folder]
        for n, der in enumerate(certs):
            if cn(der) not in wanted:
                continue
            for i in range(len(der)):
                tampered = [*certs[:n], flipped(der, i, i % 8), *certs[n + 1 :]]
                assert rejected(report, bundle(tampered)), f"{cn(der)} byte {i} flipped and accepted"
                checked += 1
    print(f"{checked} certificate bit flips refused in {time.perf_counter() - started:.1f} s")
    assert checked > 5500


def test_bit_flips_in_the_azure_hcl_wrapper() -> None:
    """One bit of every byte of the HCL header, runtime header, claims and padding. The header's
    request type (bytes 12..15) is unsigned and read by nothing: flipping it is accepted, and only it."""
    hcl = read(f"{GENOA}/hcl_report.bin")
    collateral = bundle(vector(GENOA)[1])
    outside = [*range(0, 32), *range(32 + snp.REPORT_SIZE, len(hcl))]
    survivors = [i for i in outside if not rejected(flipped(hcl, i, i % 8), collateral)]
    assert survivors == [12, 13, 14, 15]


def test_the_wrong_ark_or_chip() -> None:
    report, genoa_certs, _ = vector(GENOA)
    genoa_vcek, genoa_ask, _ = genoa_certs
    milan_ask, milan_ark = ders(read(f"{MILAN}/ask_ark_milan.pem"))
    with pytest.raises(AttestationError, match="no single certificate in the collateral issued the VCEK"):
        verify_snp_report(report, bundle([genoa_vcek, milan_ask, milan_ark]), now=NOW)
    with pytest.raises(AttestationError, match="the collateral's ARK is not AMD's ARK-Genoa"):
        verify_snp_report(report, bundle([genoa_vcek, genoa_ask, milan_ark]), now=NOW)
    # the Milan report under Genoa's chain, and under the Genoa chip's VCEK with Milan's chain
    milan_report = vector(MILAN)[0]
    with pytest.raises(AttestationError, match=r"^report signature does not verify under the VCEK$"):
        verify_snp_report(milan_report, bundle(genoa_certs), now=NOW)
    with pytest.raises(AttestationError):
        verify_snp_report(milan_report, bundle([genoa_vcek, milan_ask, milan_ark]), now=NOW)
    # a VLEK report with a VCEK, and the other way round
    vlek_report, vlek_certs, _ = vector(VLEK)
    with pytest.raises(AttestationError, match="signed by a VLEK, but the collateral's key is not one"):
        verify_snp_report(vlek_report, bundle([vector(MILAN)[1][0], *vlek_certs[1:]]), now=NOW)
    with pytest.raises(AttestationError, match="signed by a VCEK, but the collateral's key is not one"):
        verify_snp_report(milan_report, bundle(vlek_certs), now=NOW)
    # without the ARK in the bundle, the pinned one is used
    verify_snp_report(report, bundle([genoa_vcek, genoa_ask]), now=NOW)


def test_the_clock() -> None:
    report, certs, crl = vector(GENOA)
    with pytest.raises(AttestationError, match="the VCEK is not valid at 2025-06-01T00:00:00Z"):
        verify_snp_report(report, bundle(certs), now=datetime(2025, 6, 1, tzinfo=UTC))
    with pytest.raises(
        AttestationError, match=r"CRL is not current at 2025-12-01T00:00:00Z .*next update 2025-11-03"
    ):
        verify_snp_report(report, bundle(certs), now=datetime(2025, 12, 1, tzinfo=UTC), crl=crl)
    vlek_report, vlek_certs, _ = vector(VLEK)
    verify_snp_report(vlek_report, bundle(vlek_certs), now=datetime(2025, 12, 10, 22, 14, 21, tzinfo=UTC))
    with pytest.raises(
        AttestationError, match=r"the VLEK is not valid at 2025-12-10T22:14:22Z .* to 2025-12-10"
    ):
        verify_snp_report(vlek_report, bundle(vlek_certs), now=datetime(2025, 12, 10, 22, 14, 22, tzinfo=UTC))
    with pytest.raises(AttestationError, match="ARK-Milan is not valid"):
        verify_snp_report(vlek_report, bundle(vlek_certs), now=datetime(2020, 1, 1, tzinfo=UTC))


def test_the_crls() -> None:
    report, certs, crl_genoa = vector(GENOA)
    crl_milan = read(f"{GENOA}/crl_milan.pem")
    assert crl_genoa is not None
    verdict = verify_snp_report(report, bundle(certs), now=NOW, crl=crl_genoa)  # revokes 0x20001, not 0x20002
    assert verdict.report.issued_at == datetime(2024, 10, 23, 4, 36, 24, tzinfo=UTC)
    with pytest.raises(AttestationError, match="CRL is not issued by ARK-Genoa"):
        verify_snp_report(report, bundle(certs), now=NOW, crl=crl_milan)
    der = x509.load_pem_x509_crl(crl_genoa).public_bytes(Encoding.DER)
    verify_snp_report(report, bundle(certs), now=NOW, crl=der)
    survivors = [
        i for i in range(len(der)) if not rejected(report, bundle(certs), crl=flipped(der, i, i % 8))
    ]
    assert survivors == []
    with pytest.raises(AttestationError, match="CRL does not parse"):
        verify_snp_report(report, bundle(certs), now=NOW, crl=b"not a CRL")


def test_debug_policy_is_insecure_and_constraints_say_so() -> None:
    report, certs, crl = vector(MILAN)
    verdict = verify_snp_report(report, bundle(certs), now=NOW, crl=crl)
    measurement = verdict.report.code_hash.hex()
    assert len(measurement) == 96
    constraints.parse(f"C:{measurement} SEC:INSECURE").check(verdict.report, now=NOW)
    with pytest.raises(
        ConstraintError, match=r"security level INSECURE is below SEC:STALE \(guest policy allows debug"
    ):
        constraints.parse(f"C:{measurement} SEC:STALE").check(verdict.report, now=NOW)


def test_the_snp_tcb_floor() -> None:
    genoa = verify_snp_report(
        vector(GENOA)[0], bundle(vector(GENOA)[1]), now=NOW, crl=vector(GENOA)[2]
    ).report
    milan = verify_snp_report(vector(MILAN)[0], bundle(vector(MILAN)[1]), now=NOW).report
    vlek = verify_snp_report(vector(VLEK)[0], bundle(vector(VLEK)[1]), now=NOW).report
    floor = "SNPTCB:bl=2,tee=0,snp=8,ucode=68"
    constraints.parse(f"C:{genoa.code_hash.hex()} {floor}").check(genoa, now=NOW)
    constraints.parse(f"C:{vlek.code_hash.hex()} SEC:STALE {floor}").check(vlek, now=NOW)
    with pytest.raises(
        ConstraintError, match=r"^reported SNP firmware 5 is below the floor 8 \(SNPTCB:snp=8\)$"
    ):
        constraints.parse(f"C:{milan.code_hash.hex()} SEC:INSECURE {floor}").check(milan, now=NOW)
    with pytest.raises(ConstraintError, match="reported microcode 84 is below the floor 85"):
        constraints.parse(f"C:{genoa.code_hash.hex()} SNPTCB:ucode=85").check(genoa, now=NOW)
    with pytest.raises(ConstraintError, match="reported boot loader 10 is below the floor 11"):
        constraints.parse(f"C:{genoa.code_hash.hex()} snptcb:SNP=23,BL=11").check(genoa, now=NOW)
    with pytest.raises(ConstraintError, match="SNPTCB:fmc given but this platform's TCB has no FMC"):
        constraints.parse(f"C:{genoa.code_hash.hex()} SNPTCB:fmc=0").check(genoa, now=NOW)


def test_evidence_verifier_for_sev_snp() -> None:
    report, certs, _ = vector(GENOA)
    production = evidence.Verifier.production()

    def platform_report(evidence_bytes: bytes, collateral: bytes, now: datetime) -> EnclaveReport:
        return production.platform_report("sev-snp", evidence_bytes, collateral, now)

    verified = platform_report(report, bundle(certs), NOW)
    assert verified == verify_snp_report(report, bundle(certs), now=NOW).report
    with pytest.raises(AttestationError, match="without collateral"):
        platform_report(report, b"", NOW)
    # the container configfs-tsm evidence travels in, with the host's GHCB certificate table
    table = cert_table([("VCEK", certs[0]), ("ASK", certs[1]), ("ARK", certs[2])])
    assert platform_report(container(report, table), b"", NOW) == verified
    assert platform_report(container(report, None), bundle(certs), NOW) == verified
    with pytest.raises(AttestationError):
        platform_report(container(report, table[:-1]), b"", NOW)
    # a real report does not bind this project's key configuration and nonce: step 3 refuses it
    document = evidence.Evidence("sev-snp", report, b"{}", bundle(certs)).encode()
    with pytest.raises(AttestationError, match="enclave configuration in the evidence is invalid"):
        evidence.verify(
            document,
            evidence.UnsafeNoPolicy("a test"),
            verifier=production,
            key_config=b"k",
            nonce=bytes(16),
            now=NOW,
        )


def container(report: bytes, certs: bytes | None) -> bytes:
    """The evidence container of snp.encode_snp_evidence, written out independently here."""
    doc = {
        "certs": base64.b64encode(certs).decode() if certs else None,
        "report": base64.b64encode(report).decode(),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


GUIDS = {
    "VCEK": "63da758d-e664-4564-adc5-f4b93be8accd",
    "ASK": "4ab7b379-bbac-4fe4-a02f-05aef327c782",
    "ARK": "c0b406a4-a803-4952-9743-3fb6014cd0ae",
    "other": "ecae0c0f-9502-43b1-afa2-0ae2e0d565b6",
}


def cert_table(entries: list[tuple[str, bytes]]) -> bytes:
    """A GHCB certificate table (GHCB spec v2.03 §4.1.8.1), with a non-certificate blob too."""
    entries = [*entries, ("other", struct.pack("<II", 8, 0x00B00F20))]
    header_size = 24 * (len(entries) + 1)
    header, blobs = b"", b""
    for name, blob in entries:
        header += uuid.UUID(GUIDS[name]).bytes + struct.pack("<II", header_size + len(blobs), len(blob))
        blobs += blob
    return header + bytes(24) + blobs


# --- collateral ---------------------------------------------------------------------------------


def test_collateral_in_any_order_pem_or_der() -> None:
    report, certs, _ = vector(VLEK)  # VLEK, then trustee's ASK, ARK, ASVK
    for seed in range(4):
        shuffled = certs[:]
        random.Random(seed).shuffle(shuffled)
        verify_snp_report(report, bundle(shuffled), now=NOW)
    verify_snp_report(report, b"".join(certs), now=NOW)  # DER, one after the other
    verify_snp_report(report, b"\n\n" + bundle(certs).replace(b"\n", b"\r\n") + b"\n", now=NOW)
    parsed = parse_snp_collateral(bundle(certs))
    assert cn(parsed.endorsement_key.public_bytes(Encoding.DER)) == "SEV-VLEK"
    assert {cn(c.public_bytes(Encoding.DER)) for c in parsed.intermediates} == {"SEV-Milan", "SEV-VLEK-Milan"}
    assert parsed.ark is not None and cn(parsed.ark.public_bytes(Encoding.DER)) == "ARK-Milan"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda c: b"# my certs\n" + bundle(c), "text outside its PEM blocks"),
        (
            lambda c: bundle(c) + b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "PRIVATE KEY",
        ),
        (lambda c: bundle(c).replace(b"MII", b"MI*", 1), "invalid base64"),
        (lambda c: bundle(c[:1]), "holds 1 certificates"),
        (lambda c: bundle([*c, c[1]]), "holds 5 certificates"),
        (lambda c: bundle([c[0], c[0], c[1]]), "exactly one VCEK or VLEK"),
        (lambda c: b"x" * (snp.MAX_COLLATERAL_BYTES + 1), "larger than"),
        (lambda c: b"\x30\x82\xff", "neither PEM nor DER"),
        (lambda c: bundle(c[:3]), "no single certificate in the collateral issued the VLEK"),
    ],
)
def test_malformed_collateral(mutate: Callable[[list[bytes]], bytes], reason: str) -> None:
    report, certs, _ = vector(VLEK)
    with pytest.raises(AttestationError, match=reason):
        verify_snp_report(report, mutate(certs), now=NOW)


def test_malformed_inputs() -> None:
    report, certs, _ = vector(GENOA)
    collateral = bundle(certs)
    for bad, reason in [
        (b"", "empty or too large"),
        (b"\0" * (snp.MAX_REPORT_BYTES + 1), "empty or too large"),
        (report[:-1], "1183 bytes, expected 1184"),
        (struct.pack("<I", 1) + report[4:], "version 1 is not supported"),
        (struct.pack("<I", 6) + report[4:], "version 6 is not supported"),
        (report[:0x4A0 - 1] + b"\x01", r"reserved bytes 0x330..0x49f are not zero"),
        (container(report, None)[:-1], "not JSON"),
    ]:  # fmt: skip
        with pytest.raises(AttestationError, match=reason):
            verify_snp_report(bad, collateral, now=NOW)
    with pytest.raises(UsageError, match="timezone-aware"):
        verify_snp_report(report, collateral, now=datetime(2025, 7, 1))


# --- pinned roots -------------------------------------------------------------------------------


def test_pinned_roots() -> None:
    import hashlib

    for product, text in ARK_PEM.items():
        der = ders(text.encode())[0]
        assert hashlib.sha256(der).hexdigest() == ARK_SHA256[product]
        assert cn(der) == f"ARK-{product}"
    # Milan's and Genoa's are the ARKs the vectors carry (their README pins these digests)
    assert ders(read(f"{MILAN}/ask_ark_milan.pem"))[1] == ders(ARK_PEM["Milan"].encode())[0]
    assert ders(read(f"{GENOA}/ask_ark_genoa.pem"))[1] == ders(ARK_PEM["Genoa"].encode())[0]
    SnpVerifier.production()  # checks each is self-signed with AMD's RSASSA-PSS parameters


# --- a synthetic Turin chain: FMC, the 8-byte hwID, and revocation --------------------------------

TURIN_CHIP = bytes(range(1, 9)) + bytes(56)
TURIN_TCB = SnpTcb(fmc=1, bootloader=2, tee=0, snp=5, microcode=200)


@functools.cache
def turin() -> EmulatedSnp:
    """A test ARK-Turin, ASK SEV-Turin and VCEK (tests/emulation/snp.py)."""
    return EmulatedSnp("Turin", chip_id=TURIN_CHIP, reported_tcb=TURIN_TCB, product_name="Turin-B0")


def turin_report(*, reported: SnpTcb | None = None, family: int = 0x1A) -> bytes:
    return turin().report(bytes(range(64)), b"\x42" * 48, reported_tcb=reported, cpuid=(family, 0x02, 0x00))


def test_a_turin_report_with_fmc_and_a_short_hwid() -> None:
    collateral = turin().collateral
    verifier = SnpVerifier({"Turin": turin().ark_der})
    current = turin().crl(this_update=NOW - timedelta(days=1), next_update=NOW + timedelta(days=1))
    verdict = verifier.verify(turin_report(), collateral, now=NOW, crl=current)
    assert verdict.product == "Turin" and verdict.product_name == "Turin-B0"
    # without AMD's CRL, a revoked ASK would pass: at most STALE, and it says why
    unchecked = verifier.verify(turin_report(), collateral, now=NOW).report
    assert unchecked.security_level is SecurityLevel.STALE and "no AMD CRL" in unchecked.level_reason
    assert verdict.report.snp_tcb == SnpTcb(fmc=1, bootloader=2, tee=0, snp=5, microcode=200)
    assert verdict.report.security_level is SecurityLevel.SECURE
    constraints.parse(f"C:{'42' * 48} SNPTCB:fmc=1,snp=5").check(verdict.report, now=NOW)
    with pytest.raises(ConstraintError, match=r"reported FMC 1 is below the floor 2 \(SNPTCB:fmc=2\)"):
        constraints.parse(f"C:{'42' * 48} SNPTCB:fmc=2").check(verdict.report, now=NOW)
    # read in the Milan/Genoa layout the TCB would not match the VCEK; FMC is compared too
    with pytest.raises(
        AttestationError, match=r"REPORTED_TCB \(fmc 2, .*\) is not the TCB the VCEK certifies"
    ):
        verifier.verify(turin_report(reported=dataclasses.replace(TURIN_TCB, fmc=2)), collateral, now=NOW)
    with pytest.raises(AttestationError, match="CPUID family 0x19 is not that of Turin"):
        verifier.verify(turin_report(family=0x19), collateral, now=NOW)
    # AMD's production roots do not know this test ARK
    with pytest.raises(AttestationError, match="not signed by a pinned AMD root"):
        verify_snp_report(turin_report(), collateral, now=NOW)


def test_a_revoked_ask_is_refused() -> None:
    verifier = SnpVerifier({"Turin": turin().ark_der})

    def crl(*serials: int) -> bytes:
        return turin().crl(
            *serials, this_update=NOW - timedelta(days=1), next_update=NOW + timedelta(days=30)
        )

    report, collateral = turin_report(), turin().collateral
    assert turin().ask.serial_number == 0x30001
    assert verifier.verify(report, collateral, now=NOW, crl=crl(0x30005)).crl_updates is not None
    with pytest.raises(AttestationError, match=r"^SEV-Turin \(serial 0x30001\) is revoked by AMD's CRL$"):
        verifier.verify(report, collateral, now=NOW, crl=crl(0x30005, 0x30001))
