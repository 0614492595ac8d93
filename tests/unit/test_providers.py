"""Hardware evidence providers (Gramine-SGX, configfs-tsm) against fake trees that act as the kernel.

The fake ``/dev/attestation`` and configfs-tsm trees (:mod:`tests.emulation.pseudofs`) answer with
the structural quotes and reports built here: the report data the provider wrote, at the offsets
the specifications give, and token signatures in signature data framed as the specifications
frame it (the providers read their identity with the clients' own parsers, which check that).
Offsets are spelled out as numbers here, independently of the modules' constants. (Quotes that
also verify are minted in ``test_dcap_emulation.py``.)
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from enclave_infer.attestation.dcap import parse_sgx_quote_body, parse_tdx_quote
from enclave_infer.attestation.snp_report import AttestationReport, decode_snp_evidence, encode_snp_evidence
from enclave_infer.enclave import gramine, tsm
from enclave_infer.enclave.gramine import GramineSgxPlatform
from enclave_infer.enclave.tsm import ConfigfsTsmPlatform
from enclave_infer.errors import AttestationError, UsageError
from tests.emulation.pseudofs import FakeGramine, FakeTsm, bounded

MRENCLAVE = bytes(range(32))
MRSIGNER = bytes(range(100, 132))
MRTD = bytes(range(48))
SNP_MEASUREMENT = bytes(range(50, 98))
NONCE_DATA = bytes(range(1, 65))


# --- quote and report builders, from the specifications' layouts -------------------------------


# Certification data type 5: a PEM chain (a token one: nothing verifies it here).
PCK_CHAIN = b"-----BEGIN CERTIFICATE-----\ntoken\n-----END CERTIFICATE-----\n\x00"


def signature_data(version: int) -> bytes:
    """ISV signature, attestation key, then (v3) QE report, its signature, no authentication data and
    the PCK chain, or (v4, v5) the same wrapped in certification data type 6."""
    qe = bytes(384) + b"\xcc" * 64 + struct.pack("<H", 0) + struct.pack("<HI", 5, len(PCK_CHAIN)) + PCK_CHAIN
    inner = qe if version == 3 else struct.pack("<HI", 6, len(qe)) + qe
    return b"\xaa" * 64 + b"\xbb" * 64 + inner


def sgx_quote(report_data: bytes, *, mrenclave: bytes = MRENCLAVE, flags: int = 0x05) -> bytes:
    """An SGX DCAP v3 quote: 48-byte header, 384-byte report body, signature length and data."""
    header = struct.pack("<HHIHH16s20s", 3, 2, 0, 7, 13, b"\x93\x9a\x72\x33" * 4, b"")
    body = bytearray(384)
    struct.pack_into("<QQ", body, 48, flags, 0xE7)  # ATTRIBUTES: FLAGS, XFRM
    body[64:96] = mrenclave
    body[128:160] = MRSIGNER
    struct.pack_into("<HH", body, 256, 0x1234, 5)  # ISVPRODID, ISVSVN
    body[320:384] = report_data
    signature = signature_data(3)
    return header + bytes(body) + struct.pack("<I", len(signature)) + signature


def tdx_quote(report_data: bytes, *, version: int = 4, attributes: int = 0, mrtd: bytes = MRTD) -> bytes:
    """A TDX quote: v4 (header + 584-byte TD report body) or v5 (header + type/size + 648 bytes)."""
    header = struct.pack("<HHI4s16s20s", version, 2, 0x81, b"", b"\x93\x9a\x72\x33" * 4, b"")
    body = bytearray(584 if version == 4 else 648)
    struct.pack_into("<Q", body, 120, attributes)  # TD_ATTRIBUTES
    body[136:184] = mrtd
    body[520:584] = report_data
    descriptor = b"" if version == 4 else struct.pack("<HI", 3, len(body))
    signature = signature_data(version)
    return header + descriptor + bytes(body) + struct.pack("<I", len(signature)) + signature


def snp_report(report_data: bytes, *, policy: int = 0x30000) -> bytes:
    """An SEV-SNP ATTESTATION_REPORT (0x4A0 bytes), version 2."""
    report = bytearray(0x4A0)
    struct.pack_into("<II", report, 0x00, 2, 1)  # VERSION, GUEST_SVN
    struct.pack_into("<I", report, 0x34, 1)  # SIGNATURE_ALGO: ECDSA P-384 with SHA-384
    struct.pack_into("<Q", report, 0x08, policy)  # POLICY (bit 17 is reserved, must be one)
    report[0x50:0x90] = report_data
    report[0x90:0xC0] = SNP_MEASUREMENT
    report[0x2A0:0x2A8] = b"\xcc" * 8  # a token signature
    return bytes(report)


# --- fake Gramine ----------------------------------------------------------------------------


def structural(i: int, report_data: bytes) -> bytes:
    return sgx_quote(report_data)


def test_gramine_identity_evidence_and_report_data_round_trip(
    fake_gramine: Callable[..., FakeGramine],
) -> None:
    fake = fake_gramine(make_quote=structural)
    platform = bounded(lambda: GramineSgxPlatform(fake.root))
    assert platform.tee == "sgx"
    assert platform.code_hash == MRENCLAVE
    assert platform.signer == MRSIGNER
    assert (platform.product_id, platform.security_version, platform.debug) == (0x1234, 5, False)
    quote = bounded(lambda: platform.evidence(NONCE_DATA))
    assert quote == sgx_quote(NONCE_DATA)
    assert parse_sgx_quote_body(quote).report_data == NONCE_DATA
    assert (fake.root / "user_report_data").read_bytes() == NONCE_DATA  # exactly 64 bytes written
    assert fake.served == 2  # one at construction, one for the evidence
    with pytest.raises(UsageError):
        platform.evidence(b"short")


def test_gramine_sealing_keys_follow_the_policy(fake_gramine: Callable[..., FakeGramine]) -> None:
    fake = fake_gramine(make_quote=structural)
    by_enclave = bounded(lambda: GramineSgxPlatform(fake.root))
    by_signer = bounded(lambda: GramineSgxPlatform(fake.root, sealing_policy="mrsigner"))
    key = by_enclave.sealing_key()
    assert len(key) == 32 and key == by_enclave.sealing_key()
    assert by_signer.sealing_key() != key
    assert b"E" * 16 not in key  # derived, not the raw SGX key
    with pytest.raises(UsageError, match="sealing policy"):
        GramineSgxPlatform(fake.root, sealing_policy="mrsomething")
    (fake.root / "keys" / "_sgx_mrenclave").write_bytes(b"")  # Gramine shows an unset key as empty
    with pytest.raises(AttestationError, match="16-byte sealing key"):
        by_enclave.sealing_key()
    (fake.root / "keys" / "_sgx_mrenclave").unlink()
    with pytest.raises(AttestationError, match="_sgx_mrenclave"):
        by_enclave.sealing_key()


def test_gramine_debug_enclave_is_reported(fake_gramine: Callable[..., FakeGramine]) -> None:
    fake = fake_gramine(make_quote=lambda i, rd: sgx_quote(rd, flags=0x07))
    assert bounded(lambda: GramineSgxPlatform(fake.root)).debug is True


def test_not_under_gramine(tmp_path: Path) -> None:
    assert not gramine.available(tmp_path / "attestation")
    with pytest.raises(AttestationError, match="not running under Gramine-SGX") as info:
        GramineSgxPlatform(tmp_path / "attestation")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kind", "message"),
    [("none", "not enabled in the Gramine manifest"), ("epid", "EPID"), ("maa", "unsupported")],
)
def test_gramine_attestation_type_must_be_dcap(
    fake_gramine: Callable[..., FakeGramine], kind: str, message: str
) -> None:
    fake = fake_gramine(kind=kind, make_quote=structural)
    assert gramine.available(fake.root)  # present, so that nobody silently falls back to simulation
    with pytest.raises(AttestationError, match=message):
        bounded(lambda: GramineSgxPlatform(fake.root))
    assert fake.served == 0


def test_gramine_quote_with_other_report_data_is_retried_once_then_refused(
    fake_gramine: Callable[..., FakeGramine],
) -> None:
    raced = {1, 3, 4}  # request 0 is the constructor's; 1 races and 2 (the retry) succeeds

    def make_quote(i: int, report_data: bytes) -> bytes:
        return sgx_quote(b"\xee" * 64 if i in raced else report_data)

    fake = fake_gramine(make_quote=make_quote)
    platform = bounded(lambda: GramineSgxPlatform(fake.root))
    assert parse_sgx_quote_body(bounded(lambda: platform.evidence(NONCE_DATA))).report_data == NONCE_DATA
    with pytest.raises(AttestationError, match="different report data"):
        bounded(lambda: platform.evidence(NONCE_DATA))
    assert fake.served == 5


def test_gramine_quote_naming_another_enclave_is_refused(fake_gramine: Callable[..., FakeGramine]) -> None:
    fake = fake_gramine(make_quote=lambda i, rd: sgx_quote(rd, mrenclave=MRENCLAVE if i == 0 else bytes(32)))
    platform = bounded(lambda: GramineSgxPlatform(fake.root))
    with pytest.raises(AttestationError, match="different enclave"):
        bounded(lambda: platform.evidence(NONCE_DATA))


def test_gramine_truncated_quote(fake_gramine: Callable[..., FakeGramine]) -> None:
    fake = fake_gramine(make_quote=lambda i, rd: sgx_quote(rd)[:300])
    with pytest.raises(AttestationError, match=r"SGX report body .* runs past the end"):
        bounded(lambda: GramineSgxPlatform(fake.root))


def test_gramine_empty_quote(fake_gramine: Callable[..., FakeGramine]) -> None:
    fake = fake_gramine(make_quote=lambda i, rd: b"")
    with pytest.raises(AttestationError, match="empty quote"):
        bounded(lambda: GramineSgxPlatform(fake.root))


def test_parse_sgx_quote_body_rejects_malformed_quotes() -> None:
    good = sgx_quote(NONCE_DATA)
    body = parse_sgx_quote_body(good)
    assert (body.mrenclave, body.mrsigner, body.report_data) == (MRENCLAVE, MRSIGNER, NONCE_DATA)
    assert (body.product_id, body.security_version, body.attributes_flags) == (0x1234, 5, 0x05)
    length = len(good) - 436
    cases = {
        "version 4": struct.pack("<H", 4) + good[2:],
        "key type": good[:2] + struct.pack("<H", 3) + good[4:],
        f"length {length + 1} runs past": good[:432] + struct.pack("<I", length + 1) + good[436:],
        "signature data length .* runs past": good[:435],
        "not a SGX quote": tdx_quote(NONCE_DATA),
    }
    for message, quote in cases.items():
        with pytest.raises(AttestationError, match=message):
            parse_sgx_quote_body(quote)


# --- fake configfs-tsm -----------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 5])
def test_tdx_identity_and_evidence(fake_tsm: Callable[..., FakeTsm], version: int) -> None:
    fake = fake_tsm(provider="tdx_guest", make_outblob=lambda rd: tdx_quote(rd, version=version))
    assert tsm.available(fake.root)
    platform = bounded(lambda: ConfigfsTsmPlatform(fake.root))
    assert (platform.tee, platform.code_hash, platform.signer) == ("tdx", MRTD, b"")
    assert (platform.product_id, platform.security_version, platform.debug) == (0, 0, False)
    quote = bounded(lambda: platform.evidence(NONCE_DATA))
    assert quote == tdx_quote(NONCE_DATA, version=version)  # the raw quote, nothing added
    assert parse_tdx_quote(quote).report_data == NONCE_DATA
    assert len(fake.created) == 2
    fake.assert_clean()
    with pytest.raises(AttestationError, match="no sealing key on this platform"):
        platform.sealing_key()
    with pytest.raises(UsageError):
        platform.evidence(NONCE_DATA + b"x")


def test_tdx_debug_td_is_reported(fake_tsm: Callable[..., FakeTsm]) -> None:
    fake = fake_tsm(provider="tdx_guest", make_outblob=lambda rd: tdx_quote(rd, attributes=0x1))
    assert bounded(lambda: ConfigfsTsmPlatform(fake.root)).debug is True


@pytest.mark.parametrize(
    ("auxblob", "certs"), [(b"\x01cert-table", b"\x01cert-table"), (b"", None), (None, None)]
)
def test_sev_snp_identity_and_evidence(
    fake_tsm: Callable[..., FakeTsm], auxblob: bytes | None, certs: bytes | None
) -> None:
    fake = fake_tsm(provider="sev_guest", make_outblob=snp_report, auxblob=auxblob)
    platform = bounded(lambda: ConfigfsTsmPlatform(fake.root))
    assert (platform.tee, platform.code_hash, platform.signer, platform.debug) == (
        "sev-snp",
        SNP_MEASUREMENT,
        b"",
        False,
    )
    report, got_certs = decode_snp_evidence(bounded(lambda: platform.evidence(NONCE_DATA)))
    assert report == snp_report(NONCE_DATA)
    assert AttestationReport.from_bytes(report).report_data == NONCE_DATA
    assert got_certs == certs
    fake.assert_clean()


def test_sev_snp_debug_policy_is_reported(fake_tsm: Callable[..., FakeTsm]) -> None:
    fake = fake_tsm(provider="sev_guest", make_outblob=lambda rd: snp_report(rd, policy=0x30000 | 1 << 19))
    assert bounded(lambda: ConfigfsTsmPlatform(fake.root)).debug is True


def test_unknown_tsm_provider(fake_tsm: Callable[..., FakeTsm]) -> None:
    fake = fake_tsm(provider="arm_cca_guest", make_outblob=lambda rd: b"\xd2" + rd)
    with pytest.raises(AttestationError, match="unsupported configfs-tsm provider 'arm_cca_guest'"):
        bounded(lambda: ConfigfsTsmPlatform(fake.root))
    fake.assert_clean()


def test_generation_mismatch_is_refused_and_the_entry_removed(fake_tsm: Callable[..., FakeTsm]) -> None:
    fake = fake_tsm(provider="tdx_guest", make_outblob=tdx_quote, bumps=lambda i: 1 if i == 0 else 2)
    platform = bounded(lambda: ConfigfsTsmPlatform(fake.root))
    with pytest.raises(AttestationError, match="configfs-tsm entry was changed concurrently"):
        bounded(lambda: platform.evidence(NONCE_DATA))
    assert len(fake.created) == 2
    fake.assert_clean()


def test_outblob_read_failing_with_eio(fake_tsm: Callable[..., FakeTsm]) -> None:
    fake = fake_tsm(provider="tdx_guest", make_outblob=tdx_quote, outblob="eio")
    with pytest.raises(AttestationError, match="EIO") as info:
        bounded(lambda: ConfigfsTsmPlatform(fake.root))
    assert "outblob" in str(info.value) and "\n" not in str(info.value)
    fake.assert_clean()


def test_empty_outblob(fake_tsm: Callable[..., FakeTsm]) -> None:
    fake = fake_tsm(provider="tdx_guest", make_outblob=tdx_quote, outblob="empty")
    with pytest.raises(AttestationError, match="empty report"):
        bounded(lambda: ConfigfsTsmPlatform(fake.root))
    fake.assert_clean()


def test_no_tsm_provider_registered(fake_tsm: Callable[..., FakeTsm]) -> None:
    fake = fake_tsm(provider="tdx_guest", make_outblob=tdx_quote, mkdir_errno=errno.ENXIO)
    with pytest.raises(AttestationError, match="ENXIO: no TSM provider"):
        bounded(lambda: ConfigfsTsmPlatform(fake.root))


def test_report_carrying_other_report_data_is_refused(fake_tsm: Callable[..., FakeTsm]) -> None:
    fake = fake_tsm(provider="sev_guest", make_outblob=lambda rd: snp_report(bytes(64) if any(rd) else rd))
    platform = bounded(lambda: ConfigfsTsmPlatform(fake.root))
    with pytest.raises(AttestationError, match="does not carry the report data"):
        bounded(lambda: platform.evidence(NONCE_DATA))
    fake.assert_clean()


def test_tsm_root_missing(tmp_path: Path) -> None:
    root = tmp_path / "config" / "tsm" / "report"
    assert not tsm.available(root)
    with pytest.raises(AttestationError, match=str(root)) as info:
        ConfigfsTsmPlatform(root)
    assert "\n" not in str(info.value)


def test_parse_tdx_quote_rejects_malformed_quotes() -> None:
    good = tdx_quote(NONCE_DATA, attributes=0x10000001)
    body = parse_tdx_quote(good)
    assert (body.version, body.mrtd, body.td_attributes, body.debug) == (4, MRTD, 0x10000001, True)
    cases = {
        "TEE type 0x0": good[:4] + struct.pack("<I", 0) + good[8:],
        "version 3": struct.pack("<H", 3) + good[2:],
        "key type": good[:2] + struct.pack("<H", 3) + good[4:],
        "TD report body .* runs past": good[:600],
        "after its 301-byte signature data": good[: 48 + 584] + struct.pack("<I", 301) + good[48 + 584 + 4 :],
        "not a TDX quote": sgx_quote(NONCE_DATA),
    }
    for message, quote in cases.items():
        with pytest.raises(AttestationError, match=message):
            parse_tdx_quote(quote)
    v5 = tdx_quote(NONCE_DATA, version=5)
    with pytest.raises(AttestationError, match="body type 1"):
        parse_tdx_quote(v5[:48] + struct.pack("<HI", 1, 648) + v5[54:])


def test_snp_report_and_container() -> None:
    report = snp_report(NONCE_DATA)
    parsed = AttestationReport.from_bytes(report)
    assert (parsed.version, parsed.measurement, parsed.report_data, parsed.debug) == (
        2,
        SNP_MEASUREMENT,
        NONCE_DATA,
        False,
    )
    with pytest.raises(AttestationError, match="1183 bytes"):
        AttestationReport.from_bytes(report[:-1])
    with pytest.raises(AttestationError, match="version 1"):
        AttestationReport.from_bytes(struct.pack("<I", 1) + report[4:])
    assert decode_snp_evidence(encode_snp_evidence(report, b"certs")) == (report, b"certs")
    assert decode_snp_evidence(encode_snp_evidence(report, None)) == (report, None)
    for bad in (
        b"\xff",
        b"[]",
        b'{"report": "AA=="}',
        b'{"report": 1, "certs": null}',
        b'{"report": "!", "certs": null}',
    ):
        with pytest.raises(AttestationError):
            decode_snp_evidence(bad)
