"""Real Intel TDX DCAP quotes: what they verify to at the pinned clock, and every tampered variant refused.

The vectors lie in ``../shared/vectors/attestation/tdx-dcap/`` beside the repository (each folder's
README and ``expected.json`` give the source and what a verifier must find): two v4 quotes (UpToDate,
OutOfDate) and one v5 quote (TD report 1.5), with Intel PCS collateral, all read through
:func:`enclave_infer.attestation.dcap.verify_quote` with Intel's pinned root.

Quote layout (Intel TDX DCAP Quoting Library API, "Quote Format"; v5 inserts a 6-byte body
descriptor after the header)::

    header (48) [‖ body type u16 ‖ body size u32] ‖ TD report body (584, or 648 for TD 1.5)
    ‖ u32 signature data length ‖ ISV signature (64) ‖ attestation key (64)
    ‖ u16 certification data type (6) ‖ u32 size
    ‖ QE report (384) ‖ QE report signature (64) ‖ u16 QE auth data length ‖ QE auth data
    ‖ u16 certification data type (5) ‖ u32 size ‖ PEM: PCK certificate, PCK CA, Intel SGX Root CA

The offsets are computed here from that layout, independently of the parsers in ``src``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import dcap_qvl
import pytest

from enclave_infer.attestation import constraints
from enclave_infer.attestation.dcap import verify_quote
from enclave_infer.attestation.report import SecurityLevel
from enclave_infer.errors import AttestationError, ConstraintError
from tests.shared_vectors import shared_vector_dir
from tests.tamper import flipped, refused_by

VECTORS = ["v4-uptodate-tinfoil", "v4-outofdate-trustee", "v5-uptodate-go-tdx-guest"]
PINNED = datetime(2026, 2, 1, tzinfo=UTC)  # the vectors' README: now = 1769904000
LEVELS = {"UpToDate": SecurityLevel.SECURE, "OutOfDate": SecurityLevel.STALE}
PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\n?(.*?)-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class Vector:
    name: str
    quote: bytes
    collateral: bytes
    expected: dict[str, Any]

    @property
    def signed_end(self) -> int:
        """End of header and body, which the attestation key signs."""
        return 48 + 6 + 648 if self.quote[0] == 5 else 48 + 584

    def regions(self) -> dict[str, range]:
        """The signature data's fields, by offset (see the module docstring)."""
        sig = self.signed_end + 4
        qe = sig + 64 + 64 + 6  # after ISV signature, attestation key, type 6 header
        (auth_len,) = struct.unpack_from("<H", self.quote, qe + 384 + 64)
        cert = qe + 384 + 64 + 2 + auth_len  # the inner certification data (type 5)
        return {
            "ISV signature": range(sig, sig + 64),
            "attestation key": range(sig + 64, sig + 128),
            "certification data size (type 6)": range(sig + 128 + 2, sig + 128 + 6),
            "QE report": range(qe, qe + 384),
            "QE report signature": range(qe + 384, qe + 448),
            "QE auth data and type 5": range(qe + 448, cert + 2),
        }

    def framing(self) -> dict[str, range]:
        """Length and type fields of the signature data that dcap-qvl 0.7 does not check exactly,
        and :func:`enclave_infer.attestation.dcap.parse_quote_layout` does."""
        sig = self.signed_end
        cert = self.regions()["QE auth data and type 5"].stop
        return {
            "signature data length": range(sig, sig + 4),
            "certification data type (6)": range(sig + 4 + 128, sig + 4 + 130),
            "certification data size (type 5)": range(cert, cert + 4),
        }


@cache
def load(name: str) -> Vector:
    folder = shared_vector_dir("tdx-dcap", name)
    expected = json.loads((folder / "expected.json").read_text())
    quote = (folder / expected["files"]["quote"]).read_bytes()
    assert hashlib.sha256(quote).hexdigest() == expected["quote_sha256"], f"{name}: not the recorded quote"
    assert datetime.fromtimestamp(expected["now"], UTC) == PINNED
    return Vector(name, quote, (folder / expected["files"]["collateral"]).read_bytes(), expected)


@pytest.fixture(params=VECTORS)
def vector(request: pytest.FixtureRequest) -> Vector:
    return load(request.param)


def refused(vector: Vector, quote: bytes, now: datetime = PINNED) -> bool:
    return refused_by(verify_quote, quote, vector.collateral, now=now)


def test_each_vector_verifies_to_what_its_readme_says(vector: Vector) -> None:
    want = vector.expected["expected"]
    verdict = verify_quote(vector.quote, vector.collateral, now=PINNED)
    assert (verdict.tcb_status, list(verdict.advisory_ids)) == (want["status"], want["advisory_ids"])
    fields = vector.expected["report"]
    td = fields.get("base", fields)  # TD report 1.5 nests the 1.0 fields under "base"
    report = verdict.report
    assert (report.tee, report.code_hash.hex(), report.report_data.hex()) == (
        "tdx",
        td["mr_td"],
        td["report_data"],
    )
    assert verdict.measurements == {"mrtd": td["mr_td"], **{f"rtmr{i}": td[f"rt_mr{i}"] for i in range(4)}}
    assert (report.signer, report.product_id, report.security_version, report.debug) == (b"", 0, 0, False)
    assert report.security_level is LEVELS[want["status"]]
    (tcb_info,) = (v for k, v in vector.expected["collateral"].items() if k.startswith("tcb_info "))
    assert report.issued_at == datetime.strptime(tcb_info[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)

    # everything else expected.json records, as dcap-qvl reports it
    parsed = dcap_qvl.QuoteCollateralV3.from_json(vector.collateral.decode())
    doc = json.loads(dcap_qvl.verify(vector.quote, parsed, int(PINNED.timestamp())).to_json())
    assert (doc["qe_status"], doc["platform_status"], doc["ppid"]) == (
        want["qe_status"],
        want["platform_status"],
        want["ppid"],
    )
    assert doc["report"] == {vector.expected["report_body_type"]: fields}


# Why dcap-qvl alone refuses each vector one second before and one second after its window
# (READMEs). The window ends at the collateral's earliest nextUpdate: the TCB info's (v4-uptodate,
# v5), which dcap-qvl still accepts at that very second, or the PCK CRL's (v4-outofdate), which has
# expired *at* it (webpki: now >= nextUpdate). verify_quote applies the CRL's rule to all of them:
# the last second at which the collateral is current is the one before the README's end.
WINDOW_EDGES = {
    "v4-uptodate-tinfoil": ("QE Identity issue date is in the future", "TCBInfo expired"),
    "v4-outofdate-trustee": ("TCBInfo issue date is in the future", "certificate chain"),
    "v5-uptodate-go-tdx-guest": ("certificate chain", "TCBInfo expired"),  # PCK not valid yet
}
SECOND, DAY = timedelta(seconds=1), timedelta(days=1)


def window(vector: Vector) -> tuple[datetime, datetime]:
    first, end = (
        datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        for t in vector.expected["valid_window_inclusive"]
    )
    return first, end


def current(vector: Vector, now: datetime) -> bool:
    """Verifies, and its collateral is current: what a constraint without GRACE: accepts."""
    try:
        constraints.check_dcap_collateral(
            verify_quote(vector.quote, vector.collateral, now=now).report, now=now
        )
    except (AttestationError, ConstraintError):
        return False
    return True


def test_each_vector_is_current_exactly_within_its_window(vector: Vector) -> None:
    first, end = window(vector)
    too_early, too_late = WINDOW_EDGES[vector.name]
    assert current(vector, first)
    assert current(vector, end - SECOND)
    with pytest.raises(AttestationError, match=too_early):
        verify_quote(vector.quote, vector.collateral, now=first - SECOND)
    # From the end on it verifies as of one second before, and says the collateral has expired
    verdict = verify_quote(vector.quote, vector.collateral, now=end)
    freshness = verdict.report.dcap_collateral
    assert freshness is not None
    assert (freshness.next_update, freshness.verified_at, freshness.expired) == (
        end,
        end - SECOND,
        timedelta(0),
    )
    assert not current(vector, end)
    parsed = dcap_qvl.QuoteCollateralV3.from_json(vector.collateral.decode())
    with pytest.raises(ValueError, match=too_late):  # what dcap-qvl alone says then
        dcap_qvl.verify(vector.quote, parsed, int((end + SECOND).timestamp()))
    real_clock = datetime.now(UTC)
    assert not current(vector, real_clock), f"current at {real_clock}, after the collateral expired"


def test_a_day_after_the_window_only_grace_accepts(vector: Vector) -> None:
    _, end = window(vector)
    day_after = end + DAY
    verdict = verify_quote(vector.quote, vector.collateral, now=day_after)
    doc = verdict.to_json()
    assert doc["collateral_expired"]["ago"] == "P1D"
    assert doc["tcb_evaluation_data_numbers"] == {"tcb_info": 18, "qe_identity": 18}
    assert (doc["status"], doc["mrtd"]) == (
        vector.expected["expected"]["status"],
        verdict.report.code_hash.hex(),
    )
    base = f"C:{verdict.report.code_hash.hex()} SEC:STALE TCBEVAL:18"
    with pytest.raises(ConstraintError, match=r"^DCAP collateral expired P1D ago .*no staleness is allowed$"):
        constraints.parse(base).check(verdict.report, now=day_after)
    constraints.parse(base + " GRACE:P1D").check(verdict.report, now=day_after)
    with pytest.raises(ConstraintError, match="longer ago than GRACE:PT23H59M59S allows"):
        constraints.parse(base + " GRACE:PT23H59M59S").check(verdict.report, now=day_after)
    with pytest.raises(
        ConstraintError, match=r"TCB evaluation data number 18 is below the floor 19 \(TCBEVAL:19\)"
    ):
        constraints.parse(base.replace("TCBEVAL:18", "TCBEVAL:19") + " GRACE:P1D").check(
            verdict.report, now=day_after
        )


@pytest.mark.parametrize("name", VECTORS)
def test_every_bit_of_the_signed_header_and_body(name: str) -> None:
    vector = load(name)
    survivors = [
        (i, b)
        for i in range(vector.signed_end)
        for b in range(8)
        if not refused(vector, flipped(vector.quote, i, b))
    ]
    assert survivors == []


@pytest.mark.parametrize("name", VECTORS)
def test_a_bit_of_every_byte_of_the_signature_data(name: str) -> None:
    vector = load(name)
    survivors = {
        region: [i for i in offsets if not refused(vector, flipped(vector.quote, i, i % 8))]
        for region, offsets in vector.regions().items()
    }
    assert survivors == {region: [] for region in survivors}


@pytest.mark.parametrize("name", VECTORS)
def test_a_bit_of_every_byte_of_the_pck_and_pck_ca_certificates(name: str) -> None:
    """Flipped in the DER and re-encoded, so that the PEM stays well-formed (a flipped line break is
    still whitespace). The chain's own copy of Intel's root is not flipped: dcap-qvl pins the root."""
    vector = load(name)
    pems = list(PEM.finditer(vector.quote))
    assert len(pems) == 3
    cert_size_at = vector.framing()["certification data size (type 5)"].start
    checked = 0
    for match in pems[:2]:  # PCK certificate, PCK Platform CA
        der = base64.b64decode(re.sub(rb"\s", b"", match.group(1)))

        def reencoded(cert: bytes, match: re.Match[bytes] = match) -> bytes:
            b64 = base64.b64encode(cert)
            body = b"\n".join(b64[j : j + 64] for j in range(0, len(b64), 64)) + b"\n"
            delta = len(body) - len(match.group(1))
            return resize(
                vector,
                vector.quote[: match.start(1)] + body + vector.quote[match.end(1) :],
                delta,
                cert_size_at,
            )

        assert not refused(vector, reencoded(der)), "control: re-encoding alone must still verify"
        survivors = [i for i in range(len(der)) if not refused(vector, reencoded(flipped(der, i, i % 8)))]
        assert survivors == [], f"certificate {pems.index(match)}: bytes {survivors} flipped and accepted"
        checked += len(der)
    assert checked > 1500


def resize(vector: Vector, quote: bytes, delta: int, cert_size_at: int) -> bytes:
    """Keep the three length fields around the PEM chain in step with a change of ``delta`` bytes."""
    out = bytearray(quote)
    sig_len_at = vector.signed_end
    outer_size_at = sig_len_at + 4 + 128 + 2
    for at in (sig_len_at, outer_size_at, cert_size_at):
        (size,) = struct.unpack_from("<I", out, at)
        struct.pack_into("<I", out, at, size + delta)
    return bytes(out)


@pytest.mark.parametrize("name", VECTORS)
def test_every_bit_of_the_framing_fields(name: str) -> None:
    """dcap-qvl 0.7 does not check the type-6 certification data type, nor that the signature data
    and inner certification data lengths are exact; dcap.py's framing parser does, before dcap-qvl."""
    vector = load(name)
    survivors = {
        field: [(i, b) for i in offsets for b in range(8) if not refused(vector, flipped(vector.quote, i, b))]
        for field, offsets in vector.framing().items()
    }
    assert survivors == {field: [] for field in survivors}


def test_after_the_signature_data_only_zero_padding() -> None:
    """The v4 quotes carry 70 zero bytes after their signature data (a buffer sized for a v5 quote,
    70 bytes longer): zero padding is accepted, anything else there is refused; dcap-qvl reads
    neither."""
    for name in VECTORS:
        vector = load(name)
        end = vector.signed_end + 4 + struct.unpack_from("<I", vector.quote, vector.signed_end)[0]
        padding = 70 if vector.quote[0] == 4 else 0
        assert vector.quote[end:] == bytes(padding) and len(vector.quote) == end + padding
        assert not refused(vector, vector.quote[:end])
        assert not refused(vector, vector.quote[:end] + bytes(100))
        with pytest.raises(AttestationError, match=r"70 byte\(s\) after its 4300-byte signature data"):
            verify_quote(vector.quote[:end] + b"\xff" * 70, vector.collateral, now=PINNED)
        assert all(
            refused(vector, vector.quote[:end] + bytes(i) + b"\x01" + bytes(69 - i)) for i in range(0, 70, 7)
        )


def test_what_the_sweeps_leave_out_is_what_dcap_qvl_ignores() -> None:
    """The chain's copy of Intel's root does not change the result; a verifier that trusted the
    embedded root would be wrong, and dcap-qvl does not."""
    for name in VECTORS:  # the root copy replaced by another certificate (the PCK CA's)
        vector = load(name)
        _, ca, root = PEM.finditer(vector.quote)
        delta = len(ca.group(1)) - len(root.group(1))
        swapped = vector.quote[: root.start(1)] + ca.group(1) + vector.quote[root.end(1) :]
        cert_size_at = vector.framing()["certification data size (type 5)"].start
        assert not refused(vector, resize(vector, swapped, delta, cert_size_at))
