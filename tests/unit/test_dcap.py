"""A real SGX DCAP quote: what it must verify to, and every tampered variant that must fail."""

from __future__ import annotations

import base64
import json
import re
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from enclave_infer.attestation import constraints
from enclave_infer.attestation.dcap import verify_quote
from enclave_infer.attestation.report import SecurityLevel
from enclave_infer.errors import AttestationError, ConstraintError
from tests.shared_vectors import ATTESTATION_VECTORS, shared_vector_dir, shared_vectors_present
from tests.tamper import flipped, refused_by

VECTORS = ATTESTATION_VECTORS / "sgx-dcap"  # ../shared/vectors/attestation/sgx-dcap, read where it lies
# Read at import when the vectors are there; every test of this module needs them (the fixture below).
QUOTE = (VECTORS / "sgx_quote").read_bytes() if shared_vectors_present() else b""
COLLATERAL = (VECTORS / "sgx_quote_collateral.json").read_bytes() if shared_vectors_present() else b""


@pytest.fixture(autouse=True)
def _sgx_vectors() -> None:
    shared_vector_dir("sgx-dcap")


NOW = datetime.fromtimestamp(1750416971, UTC)  # 2025-06-20T10:56:11Z, per the vector's README
MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
MRSIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"

# SGX quote v3 layout (Intel SGX ECDSA Quote Library reference, "Quote Format"): header 48, ISV
# report body 384, then u32 signature-data length, ISV report signature 64, attestation key 64,
# QE report 384, QE report signature 64, u16 QE auth data length + data, certification data.
SIGNED_BODY = range(0, 432)
ISV_SIGNATURE = range(436, 500)
ATTESTATION_KEY = range(500, 564)
QE_REPORT = range(564, 948)
QE_SIGNATURE = range(948, 1012)


def rejected(quote: bytes, collateral: bytes = COLLATERAL, now: datetime = NOW) -> bool:
    return refused_by(verify_quote, quote, collateral, now=now)


def test_the_real_quote_verifies_with_the_listed_findings() -> None:
    verdict = verify_quote(QUOTE, COLLATERAL, now=NOW)
    doc = verdict.to_json()
    assert doc["tee"] == "sgx"
    assert doc["status"] == "ConfigurationAndSWHardeningNeeded"
    assert doc["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert doc["mrenclave"] == MRENCLAVE
    assert doc["mrsigner"] == MRSIGNER
    assert bytes.fromhex(doc["report_data"]) == b"Hello, world!".ljust(64, b"\0")
    assert doc["debug"] is False
    assert verdict.report.security_level is SecurityLevel.STALE
    assert doc["security_level"] == "STALE"


def test_constraints_on_the_real_quote() -> None:
    report = verify_quote(QUOTE, COLLATERAL, now=NOW).report
    constraints.parse(f"C:{MRENCLAVE} SEC:STALE").check(report, now=NOW)
    constraints.parse(f"S:{MRSIGNER} PROD:0 SEC:STALE REVOKE:0").check(report, now=NOW)
    with pytest.raises(ConstraintError, match="STALE is below SEC:SECURE"):
        constraints.parse(f"C:{MRENCLAVE}").check(report, now=NOW)
    with pytest.raises(ConstraintError, match="REVOKE:1"):
        constraints.parse(f"C:{MRENCLAVE} SEC:STALE REVOKE:1").check(report, now=NOW)
    # EXPIRE measures the age of Intel's TCB assessment (the collateral's issueDate, one day before NOW)
    constraints.parse(f"C:{MRENCLAVE} SEC:STALE EXPIRE:P2D").check(report, now=NOW)
    with pytest.raises(ConstraintError, match="older than EXPIRE"):
        constraints.parse(f"C:{MRENCLAVE} SEC:STALE EXPIRE:PT12H").check(report, now=NOW)


@pytest.mark.parametrize(
    "region", [SIGNED_BODY, ISV_SIGNATURE], ids=["header+report body", "ISV report signature"]
)
def test_every_bit_of_the_signed_body_and_signature(region: range) -> None:
    survivors = [(i, b) for i in region for b in range(8) if not rejected(flipped(QUOTE, i, b))]
    assert survivors == []


@pytest.mark.parametrize(
    "region", [ATTESTATION_KEY, QE_REPORT, QE_SIGNATURE], ids=["attestation key", "QE report", "QE signature"]
)
def test_a_bit_of_every_byte_of_the_quoting_enclave_parts(region: range) -> None:
    survivors = [i for i in region if not rejected(flipped(QUOTE, i, i % 8))]
    assert survivors == []


# The signature data's framing (unsigned): its length, and the certification data's type (5, the PCK
# certificate chain) and size after the 32 bytes of QE authentication data.
SIGNATURE_DATA_LENGTH = range(432, 436)
CERTIFICATION_DATA_TYPE = range(1014 + 32, 1014 + 34)
CERTIFICATION_DATA_SIZE = range(1014 + 34, 1014 + 38)


@pytest.mark.parametrize(
    "region",
    [SIGNATURE_DATA_LENGTH, CERTIFICATION_DATA_TYPE, CERTIFICATION_DATA_SIZE],
    ids=["signature data length", "certification data type (5)", "certification data size"],
)
def test_every_bit_of_the_framing_fields(region: range) -> None:
    assert struct.unpack_from("<HI", QUOTE, CERTIFICATION_DATA_TYPE.start) == (5, len(QUOTE) - 1052)
    survivors = [(i, b) for i in region for b in range(8) if not rejected(flipped(QUOTE, i, b))]
    assert survivors == []


def test_nothing_may_follow_the_signature_data_but_zero_padding() -> None:
    assert not rejected(QUOTE + bytes(70))
    assert rejected(QUOTE + b"\x01")
    assert rejected(QUOTE + bytes(69) + b"\x80")


def test_a_bit_of_every_byte_of_the_pck_and_intermediate_certificates() -> None:
    """The chain's own Root CA copy is ignored (Intel's root is pinned), so it is not flipped."""
    text = QUOTE.decode("latin-1")
    pems = list(re.finditer(r"-----BEGIN CERTIFICATE-----\n?(.*?)-----END CERTIFICATE-----", text, re.S))
    assert len(pems) == 3
    checked = 0
    for match in pems[:2]:  # PCK certificate, PCK Platform/Processor CA
        der = base64.b64decode(re.sub(r"\s", "", match.group(1)))

        def reencoded(cert: bytes, match: re.Match[str] = match) -> bytes:
            b64 = base64.b64encode(cert).decode()
            body = "\n".join(b64[j : j + 64] for j in range(0, len(b64), 64)) + "\n"
            tampered = text[: match.start(1)] + body + text[match.end(1) :]
            # keep the certification data's declared size in step with the new PEM length
            return _resize_cert_data(tampered.encode("latin-1"), len(tampered) - len(text))

        assert not rejected(reencoded(der)), "control: re-encoding alone must still verify"
        for i in range(len(der)):
            assert rejected(reencoded(flipped(der, i, i % 8))), f"certificate byte {i} flipped and accepted"
            checked += 1
    assert checked > 1500


def _resize_cert_data(quote: bytes, delta: int) -> bytes:
    qe_auth = struct.unpack_from("<H", quote, 1012)[0]
    size_at = 1014 + qe_auth + 2
    (size,) = struct.unpack_from("<I", quote, size_at)
    (sig_len,) = struct.unpack_from("<I", quote, 432)
    out = bytearray(quote)
    struct.pack_into("<I", out, size_at, size + delta)
    struct.pack_into("<I", out, 432, sig_len + delta)
    return bytes(out)


# The vector's collateral: QE identity nextUpdate 2025-07-19T10:01:18Z comes first (the PCK CRL's
# is 10:23:18, the TCB info's 10:56:11); every TCB evaluation data number is 17.
EXPIRY = datetime(2025, 7, 19, 10, 1, 18, tzinfo=UTC)


def test_the_clock() -> None:
    with pytest.raises(AttestationError, match="in the future"):
        verify_quote(QUOTE, COLLATERAL, now=NOW - timedelta(days=2))  # before the collateral's issue date
    current = verify_quote(QUOTE, COLLATERAL, now=EXPIRY - timedelta(seconds=1)).report.dcap_collateral
    assert current is not None and current.expired is None
    assert (current.next_update, current.next_update_of) == (EXPIRY, "QE identity")
    # Later, it verifies as of one second before that instant, and says how long ago it expired;
    # the constraint then refuses, unless GRACE: allows that much.
    later = datetime(2026, 11, 22, tzinfo=UTC)
    report = verify_quote(QUOTE, COLLATERAL, now=later).report
    assert report.dcap_collateral is not None
    assert report.dcap_collateral.verified_at == EXPIRY - timedelta(seconds=1)
    assert report.dcap_collateral.expired == later - EXPIRY
    with pytest.raises(ConstraintError, match="DCAP collateral expired P490DT13H58M42S ago"):
        constraints.parse(f"C:{MRENCLAVE} SEC:STALE").check(report, now=later)
    # A grace period never covers an expired certificate: the PCK certificate's notAfter is checked at now.
    with pytest.raises(AttestationError, match="certificate 'Intel SGX PCK Certificate' expired at"):
        verify_quote(QUOTE, COLLATERAL, now=datetime(2033, 1, 1, tzinfo=UTC))


def test_stale_collateral_a_day_after_its_window() -> None:
    day_after = EXPIRY + timedelta(days=1)
    verdict = verify_quote(QUOTE, COLLATERAL, now=day_after)
    doc = verdict.to_json()
    assert doc["collateral_expired"] == {"ago": "P1D", "first_to_expire": "QE identity"}
    assert (doc["collateral_next_update"], doc["verified_as_of"]) == (
        "2025-07-19T10:01:18Z",
        "2025-07-19T10:01:17Z",
    )
    assert "the collateral expired P1D ago (the QE identity's nextUpdate" in doc["security_level_reason"]
    assert (doc["status"], doc["mrenclave"]) == ("ConfigurationAndSWHardeningNeeded", MRENCLAVE)
    base = f"C:{MRENCLAVE} SEC:STALE"
    with pytest.raises(ConstraintError, match=r"expired P1D ago .* no staleness is allowed"):
        constraints.parse(base).check(verdict.report, now=day_after)  # the default: fails closed
    constraints.parse(base + " GRACE:P1D").check(verdict.report, now=day_after)
    with pytest.raises(ConstraintError, match="longer ago than GRACE:PT23H allows"):
        constraints.parse(base + " GRACE:PT23H").check(verdict.report, now=day_after)


def test_the_tcb_evaluation_data_number() -> None:
    verdict = verify_quote(QUOTE, COLLATERAL, now=NOW)
    assert verdict.to_json()["tcb_evaluation_data_numbers"] == {"tcb_info": 17, "qe_identity": 17}
    constraints.parse(f"C:{MRENCLAVE} SEC:STALE TCBEVAL:17").check(verdict.report, now=NOW)
    with pytest.raises(
        ConstraintError, match=r"TCB evaluation data number 17 is below the floor 18 \(TCBEVAL:18\)$"
    ):
        constraints.parse(f"C:{MRENCLAVE} SEC:STALE TCBEVAL:18").check(verdict.report, now=NOW)


def test_tampered_collateral() -> None:
    doc = json.loads(COLLATERAL)
    tcb = json.loads(doc["tcb_info"])
    for level in tcb["tcbLevels"]:
        level["tcbStatus"] = "UpToDate"
    forged = dict(doc, tcb_info=json.dumps(tcb, separators=(",", ":")))
    assert rejected(QUOTE, json.dumps(forged).encode())
    sig = bytearray.fromhex(doc["tcb_info_signature"])
    sig[5] ^= 1
    assert rejected(QUOTE, json.dumps(dict(doc, tcb_info_signature=sig.hex())).encode())
    assert not rejected(QUOTE, json.dumps(doc).encode())  # control: the same round trip, untampered
    assert rejected(QUOTE, b"{}")
    assert rejected(QUOTE, b"not json")
    assert rejected(b"", COLLATERAL)
    assert rejected(QUOTE[:1000], COLLATERAL)


def test_verify_evidence_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    cli = str(Path(sys.executable).with_name("enclave-infer"))
    base = [cli, "verify-evidence", "--quote", str(VECTORS / "sgx_quote"),
            "--collateral", str(VECTORS / "sgx_quote_collateral.json")]  # fmt: skip

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *extra], capture_output=True, text=True, check=False)

    ok = run("--now", "2025-06-20T10:56:11Z", "--constraint", f"C:{MRENCLAVE} SEC:STALE")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["verified"] is True and doc["constraint"]["holds"] is True
    assert (doc["mrenclave"], doc["status"], doc["security_level"]) == (
        MRENCLAVE,
        "ConfigurationAndSWHardeningNeeded",
        "STALE",
    )
    refused = run("--now", "2025-06-20T10:56:11Z", "--constraint", f"C:{MRENCLAVE}")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["constraint"]["holds"] is False
    assert refused.stderr.strip().startswith("enclave-infer: error: security level STALE is below SEC:SECURE")
    # the real clock: the collateral has expired; without a constraint allowing it (GRACE:), refused
    expired = run()
    assert expired.returncode == 1
    doc = json.loads(expired.stdout)
    assert doc["verified"] is True and doc["collateral_expired"]["first_to_expire"] == "QE identity"
    assert doc["constraint"]["given"] is None and doc["constraint"]["holds"] is False
    assert "DCAP collateral expired" in expired.stderr and "no staleness is allowed" in expired.stderr
    tampered = tmp_path / "quote"
    tampered.write_bytes(flipped(QUOTE, 200, 3))
    bad = subprocess.run([cli, "verify-evidence", "--quote", str(tampered), "--collateral",
                          str(VECTORS / "sgx_quote_collateral.json"), "--now", "2025-06-20T10:56:11Z"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert bad.returncode == 1 and "did not verify" in bad.stderr
    assert run("--now", "yesterday").returncode == 1
