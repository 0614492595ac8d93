"""The emulated Intel DCAP platform (tests/emulation): its quotes and collateral verify under its test
root exactly as real ones verify under Intel's, with the TCB status its TCB info assigns, and Intel's
root refuses every one of them.

The real hardware path is exercised end to end: Gramine's ``/dev/attestation`` and configfs-tsm
(fake trees, real provider code) hand out minted quotes over the report data written to them, a fake
PCCS on loopback serves the collateral to dcap-qvl's own client, and ``verify_quote`` with the test
root (its one seam, ``root_ca_der``) or ``evidence.verify`` (a verifier that passes it) accepts
them. The clock is pinned to :data:`tests.emulation.dcap.NOW`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import struct
import urllib.parse
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

import dcap_qvl
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from enclave_infer.attestation import constraints, evidence
from enclave_infer.attestation.dcap import parse_sgx_quote_body, parse_tdx_quote, verify_quote
from enclave_infer.attestation.report import SecurityLevel, attestation_binding
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.gramine import GramineSgxPlatform
from enclave_infer.enclave.tsm import ConfigfsTsmPlatform
from enclave_infer.errors import AttestationError, ConstraintError
from enclave_infer.protocol import ohttp
from tests.emulation.dcap import (
    ISSUE_DATE,
    NEXT_UPDATE,
    NOW,
    ROOT_CA_NAME,
    TCB_STATUSES,
    EmulatedDcap,
    Platform,
    SignedDocument,
    Tee,
    sgx_extension,
)
from tests.emulation.pccs import FakePccs
from tests.emulation.pseudofs import FakeGramine, FakeTsm, bounded
from tests.shared_vectors import shared_vector_dir

NOW_SECS = int(NOW.timestamp())
REPORT_DATA = bytes(range(64, 128))
MRENCLAVE = bytes(range(32))
MRSIGNER = bytes(range(100, 132))
MRTD = bytes(range(48))
RTMRS = tuple(bytes([i]) * 48 for i in range(1, 5))
TEES: dict[str, Tee] = {"sgx": "sgx", "tdx4": "tdx", "tdx5": "tdx"}  # quote kind -> TEE
PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture(scope="module")
def dcap() -> EmulatedDcap:
    return EmulatedDcap()


def mint(dcap: EmulatedDcap, kind: str, report_data: bytes = REPORT_DATA, **fields: Any) -> bytes:
    """``sgx``: a v3 quote; ``tdx4``/``tdx5``: a TDX quote of that version."""
    if kind == "sgx":
        return dcap.sgx_quote(report_data, mrenclave=MRENCLAVE, mrsigner=MRSIGNER, **fields)
    version: Literal[4, 5] = 4 if kind == "tdx4" else 5
    return dcap.tdx_quote(report_data, version=version, mrtd=MRTD, rtmrs=RTMRS, **fields)


def qvl(dcap: EmulatedDcap, quote: bytes, collateral: bytes, now: int = NOW_SECS) -> dict[str, Any]:
    """dcap-qvl's verdict under the test root, as JSON."""
    parsed = dcap_qvl.QuoteCollateralV3.from_json(collateral.decode())
    doc: dict[str, Any] = json.loads(
        dcap_qvl.verify_with_root_ca(quote, parsed, dcap.root_ca_der, now).to_json()
    )
    return doc


def qvl_error(dcap: EmulatedDcap, quote: bytes, collateral: bytes, now: int = NOW_SECS) -> str:
    with pytest.raises(ValueError) as info:
        qvl(dcap, quote, collateral, now)
    return str(info.value)


# --- quotes: layout, fields, signatures --------------------------------------------------------


def test_sgx_quote_verifies_under_the_test_root_with_the_fields_it_was_minted_with(
    dcap: EmulatedDcap,
) -> None:
    quote = mint(dcap, "sgx", isv_prod_id=7, isv_svn=3)
    doc = qvl(dcap, quote, dcap.collateral("sgx"))
    assert (doc["status"], doc["advisory_ids"]) == ("UpToDate", [])
    body = doc["report"]["SgxEnclave"]
    assert (body["mr_enclave"], body["mr_signer"]) == (MRENCLAVE.hex(), MRSIGNER.hex())
    assert (body["isv_prod_id"], body["isv_svn"], body["report_data"]) == (7, 3, REPORT_DATA.hex())
    assert doc["ppid"] == dcap.platform.ppid.hex()

    verdict = verify_quote(quote, dcap.collateral("sgx"), now=NOW, root_ca_der=dcap.root_ca_der)
    report = verdict.report
    assert (report.tee, report.code_hash, report.signer, report.report_data) == (
        "sgx",
        MRENCLAVE,
        MRSIGNER,
        REPORT_DATA,
    )
    assert (report.product_id, report.security_version, report.debug) == (7, 3, False)
    assert report.security_level is SecurityLevel.SECURE
    assert report.issued_at == ISSUE_DATE
    # the enclave's own parser reads the same fields at Intel's offsets
    parsed = parse_sgx_quote_body(quote)
    assert (parsed.mrenclave, parsed.mrsigner, parsed.report_data, parsed.attributes_flags) == (
        MRENCLAVE,
        MRSIGNER,
        REPORT_DATA,
        0x05,
    )


@pytest.mark.parametrize("version", [4, 5])
def test_tdx_quote_verifies_under_the_test_root_with_the_fields_it_was_minted_with(
    dcap: EmulatedDcap, version: int
) -> None:
    quote = mint(dcap, f"tdx{version}")
    doc = qvl(dcap, quote, dcap.collateral("tdx"))
    assert (doc["status"], doc["advisory_ids"]) == ("UpToDate", [])
    kind, body = next(iter(doc["report"].items()))
    assert kind == ("TD10" if version == 4 else "TD15")
    td = body if version == 4 else body["base"]
    assert (td["mr_td"], td["report_data"], td["td_attributes"]) == (
        MRTD.hex(),
        REPORT_DATA.hex(),
        "0000001000000000",  # SEPT_VE_DISABLE, debug off
    )
    assert [td[f"rt_mr{i}"] for i in range(4)] == [r.hex() for r in RTMRS]
    assert td["tee_tcb_svn"] == dcap.platform.tee_tcb_svn.hex()

    verdict = verify_quote(quote, dcap.collateral("tdx"), now=NOW, root_ca_der=dcap.root_ca_der)
    assert (verdict.report.tee, verdict.report.code_hash, verdict.report.report_data) == (
        "tdx",
        MRTD,
        REPORT_DATA,
    )
    assert verdict.measurements == {"mrtd": MRTD.hex(), **{f"rtmr{i}": RTMRS[i].hex() for i in range(4)}}
    assert verdict.report.security_level is SecurityLevel.SECURE
    parsed = parse_tdx_quote(quote)
    assert (parsed.version, parsed.mrtd, parsed.report_data, parsed.debug) == (
        version,
        MRTD,
        REPORT_DATA,
        False,
    )


@pytest.mark.parametrize("kind", ["sgx", "tdx4", "tdx5"])
@pytest.mark.parametrize("status", TCB_STATUSES)
def test_the_tcb_status_is_the_one_the_tcb_info_assigns(dcap: EmulatedDcap, kind: str, status: str) -> None:
    quote = mint(dcap, kind)
    advisories = () if status == "UpToDate" else ("INTEL-SA-00837", "INTEL-SA-01036")
    collateral = dcap.collateral(TEES[kind], status=status, advisory_ids=advisories)
    if status == "Revoked":
        assert "TCB status is invalid: Revoked" in qvl_error(dcap, quote, collateral)
        with pytest.raises(AttestationError, match="Revoked"):
            verify_quote(quote, collateral, now=NOW, root_ca_der=dcap.root_ca_der)
        return
    doc = qvl(dcap, quote, collateral)
    assert (doc["status"], doc["advisory_ids"]) == (status, list(advisories))
    assert doc["platform_status"] == {"status": status, "advisory_ids": list(advisories)}
    assert doc["qe_status"] == {"status": "UpToDate", "advisory_ids": []}
    verdict = verify_quote(quote, collateral, now=NOW, root_ca_der=dcap.root_ca_der)
    assert verdict.tcb_status == status and verdict.advisory_ids == advisories
    assert verdict.report.security_level is (
        SecurityLevel.SECURE if status == "UpToDate" else SecurityLevel.STALE
    )


def test_a_tdx_module_below_its_identity_level_makes_the_tdx_status_worse(dcap: EmulatedDcap) -> None:
    collateral = dcap.tcb_info("tdx", module_status="OutOfDate")
    doc = json.loads(dcap.collateral("tdx"))
    doc.update(tcb_info=collateral.body, tcb_info_signature=collateral.signature.hex())
    verdict = qvl(dcap, mint(dcap, "tdx4"), json.dumps(doc).encode())
    assert verdict["status"] == "OutOfDate"  # platform UpToDate, TDX module OutOfDate: the worse wins


@pytest.mark.parametrize("kind", ["sgx", "tdx4", "tdx5"])
def test_intels_root_refuses_every_emulated_quote(dcap: EmulatedDcap, kind: str) -> None:
    quote, collateral = mint(dcap, kind), dcap.collateral(TEES[kind])
    parsed = dcap_qvl.QuoteCollateralV3.from_json(collateral.decode())
    with pytest.raises(ValueError, match="root CA CRL"):  # our root CRL is not signed by Intel's root
        dcap_qvl.verify(quote, parsed, NOW_SECS)
    with pytest.raises(AttestationError, match="did not verify"):
        verify_quote(quote, collateral, now=NOW)  # root_ca_der=None: Intel's root
    # With Intel's own (real) root CRL in place, the refusal moves to the certificate chains.
    intel_root_crl = shared_vector_dir("tdx-dcap", "intel-pcs-collateral-2026-01-12") / "root_ca.crl"
    doc = dict(json.loads(collateral), root_ca_crl=intel_root_crl.read_bytes().hex())
    with pytest.raises(ValueError, match=r"certificate chain|UnknownIssuer"):
        dcap_qvl.verify(quote, dcap_qvl.QuoteCollateralV3.from_json(json.dumps(doc)), NOW_SECS)


def test_another_test_root_refuses_this_platforms_quotes(dcap: EmulatedDcap) -> None:
    other = EmulatedDcap()
    quote = mint(dcap, "sgx")
    assert "root CA CRL" in qvl_error(other, quote, dcap.collateral("sgx"))
    assert qvl_error(other, quote, other.collateral("sgx"))  # their collateral, our PCK chain
    assert qvl_error(dcap, mint(other, "sgx"), dcap.collateral("sgx"))


def test_one_flipped_bit_in_an_emulated_quote_is_refused(dcap: EmulatedDcap) -> None:
    for kind, signed in (("sgx", 48 + 384), ("tdx4", 48 + 584), ("tdx5", 48 + 6 + 648)):
        quote, collateral = mint(dcap, kind), dcap.collateral(TEES[kind])
        # one bit of each 8th byte of header and body, the ISV signature, the attestation key, the QE report
        for i in [*range(0, signed, 8), *range(signed + 4, signed + 4 + 128, 5), signed + 4 + 128 + 200]:
            tampered = bytearray(quote)
            tampered[i] ^= 1 << (i % 8)
            assert qvl_error(dcap, bytes(tampered), collateral), f"{kind}: byte {i} flipped and accepted"


def test_debug_enclaves_are_refused_outright_by_dcap_qvl(dcap: EmulatedDcap) -> None:
    """dcap-qvl 0.7 refuses a debug SGX enclave or TD before dcap.py could rate it INSECURE."""
    for kind in ("sgx", "tdx4", "tdx5"):
        quote = mint(dcap, kind, debug=True)
        assert "Debug mode is enabled" in qvl_error(dcap, quote, dcap.collateral(TEES[kind]))
    assert parse_sgx_quote_body(mint(dcap, "sgx", debug=True)).debug
    assert parse_tdx_quote(mint(dcap, "tdx5", debug=True)).debug


def test_collateral_dates_and_revocations(dcap: EmulatedDcap) -> None:
    quote = mint(dcap, "sgx")
    last = int(NEXT_UPDATE.timestamp())  # a CRL has expired at its nextUpdate (webpki: now >= nextUpdate)
    assert qvl(dcap, quote, dcap.collateral("sgx"), last - 1)["status"] == "UpToDate"
    assert "CrlExpired" in qvl_error(dcap, quote, dcap.collateral("sgx"), last)
    assert "in the future" in qvl_error(dcap, quote, dcap.collateral("sgx"), int(ISSUE_DATE.timestamp()) - 1)
    later = ISSUE_DATE + timedelta(days=400)
    moved = dcap.collateral("sgx", issue_date=later, next_update=later + timedelta(days=30))
    assert qvl(dcap, quote, moved, int(later.timestamp()) + 60)["status"] == "UpToDate"
    assert "CertRevoked" in qvl_error(dcap, quote, dcap.collateral("sgx", revoke_pck=True))
    doc = json.loads(dcap.collateral("sgx"))
    for root_crl in (dcap.root_ca_crl(revoke_pck_ca=True), dcap.root_ca_crl(revoke_tcb_signing=True)):
        doc["root_ca_crl"] = root_crl.hex()
        assert "CertRevoked" in qvl_error(dcap, quote, json.dumps(doc).encode())
    assert "Unsupported QE Identity" in qvl_error(dcap, quote, dcap.collateral("tdx"))  # TD_QE for SGX
    info = json.loads(dcap.collateral("sgx", evaluation_data_number=19))["tcb_info"]
    assert json.loads(info)["tcbEvaluationDataNumber"] == 19


def test_a_platform_certified_by_the_processor_ca(dcap: EmulatedDcap) -> None:
    processor = EmulatedDcap(Platform(ca="processor", sgx_type=0, fmspc=bytes.fromhex("00a067110000")))
    quote = mint(processor, "sgx")
    assert qvl(processor, quote, processor.collateral("sgx"))["status"] == "UpToDate"
    parsed = dcap_qvl.parse_quote(quote)
    assert (parsed.ca(), parsed.fmspc()) == ("processor", "00A067110000")
    assert dcap_qvl.parse_quote(mint(dcap, "tdx4")).ca() == "platform"


# --- collateral: as Intel signs and serves it --------------------------------------------------


def test_pck_certificate_carries_the_sgx_extensions(dcap: EmulatedDcap) -> None:
    ext = dcap_qvl.parse_pck_extension_from_pem(dcap.pck_chain_pem.encode())
    p = dcap.platform
    assert (ext.fmspc, ext.pce_id, ext.cpu_svn, ext.pce_svn, ext.sgx_type, ext.ppid) == (
        p.fmspc,
        p.pce_id,
        p.cpu_svn,
        p.pce_svn,
        p.sgx_type,
        p.ppid,
    )
    assert ext.platform_instance_id == p.platform_instance_id
    for i, svn in enumerate(p.cpu_svn):  # each TCB component SVN, as an INTEGER
        assert ext.get_value(f"1.2.840.113741.1.13.1.2.{i + 1}") == svn.to_bytes(
            svn.bit_length() // 8 + 1, "big"
        )
    root = x509.load_der_x509_certificate(dcap.root_ca_der)
    common_name = root.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert (common_name, root.issuer) == (ROOT_CA_NAME, root.subject)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert dcap.pck_ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert not dcap.pck_certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def _signed_by(cert: x509.Certificate, body: str, signature: bytes) -> bool:
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        public.verify(der, body.encode(), ec.ECDSA(hashes.SHA256()))
    except Exception:
        return False
    return True


def _inner(response: str, key: str) -> tuple[str, bytes]:
    """Cut the signed inner object's text out of a PCS response, as a verifier must (no re-serialising)."""
    prefix = f'{{"{key}":'
    assert response.startswith(prefix)
    head, _, signature = response[len(prefix) :].rpartition(',"signature":"')
    return head, bytes.fromhex(signature.removesuffix('"}').strip())


def test_tcb_info_and_qe_identity_are_signed_and_shaped_as_intel_serves_them(dcap: EmulatedDcap) -> None:
    intel = shared_vector_dir("tdx-dcap", "intel-pcs-collateral-2026-01-12")
    intel_chain = x509.load_pem_x509_certificates(
        urllib.parse.unquote((intel / "tcb_info_90c06f000000_chain.txt").read_text()).encode()
    )
    intel_sgx = json.loads((shared_vector_dir("sgx-dcap") / "sgx_quote_collateral.json").read_text())
    intel_docs: dict[str, dict[str, Any]] = {"sgx": json.loads(intel_sgx["tcb_info"])}
    for name, key in (("tcb_info_90c06f000000.json", "tcbInfo"), ("qe_identity.json", "enclaveIdentity")):
        body, signature = _inner((intel / name).read_text().strip(), key)
        assert _signed_by(intel_chain[0], body, signature), f"the procedure must hold for Intel's {name}"
        intel_docs["tdx" if key == "tcbInfo" else "td_qe"] = json.loads(body)
    intel_docs["qe"] = json.loads(intel_sgx["qe_identity"])

    ours: dict[str, SignedDocument] = {
        "sgx": dcap.tcb_info("sgx"),
        "tdx": dcap.tcb_info("tdx"),
        "qe": dcap.qe_identity("sgx"),
        "td_qe": dcap.qe_identity("tdx"),
    }
    for name, signed in ours.items():
        body, signature = _inner(signed.response(), signed.key)
        assert (body, signature) == (signed.body, signed.signature)
        assert _signed_by(dcap.tcb_signing, body, signature)
        assert not _signed_by(dcap.tcb_signing, json.dumps(json.loads(body)), signature)  # re-serialised
        mine, theirs = signed.document, intel_docs[name]
        assert list(mine) == list(theirs), f"{name}: fields and their order as Intel's"
        levels, intel_levels = mine["tcbLevels"], theirs["tcbLevels"]
        assert isinstance(levels, list)
        assert set(levels[0]["tcb"]) == set(intel_levels[0]["tcb"]), name
    assert ours["tdx"].document["id"] == "TDX" and ours["td_qe"].document["id"] == "TD_QE"

    # dcap-qvl checks that exact text: a re-serialised TCB info no longer verifies
    doc = json.loads(dcap.collateral("sgx"))
    doc["tcb_info"] = json.dumps(json.loads(doc["tcb_info"]), indent=1)
    assert "Signature is invalid for tcb_info" in qvl_error(dcap, mint(dcap, "sgx"), json.dumps(doc).encode())


# --- the fake PCCS -----------------------------------------------------------------------------


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """dcap-qvl's HTTP client honours proxy variables; the fake PCCS is on loopback."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def fetch_collateral(url: str, quote: bytes) -> dcap_qvl.QuoteCollateralV3:
    async def fetch() -> dcap_qvl.QuoteCollateralV3:
        return await dcap_qvl.get_collateral(url, quote)

    return asyncio.run(fetch())


@pytest.mark.usefixtures("no_proxy")
@pytest.mark.parametrize("kind", ["sgx", "tdx4", "tdx5"])
def test_dcap_qvl_fetches_collateral_from_the_fake_pccs_and_it_verifies(
    dcap: EmulatedDcap, kind: str
) -> None:
    quote, tee = mint(dcap, kind), TEES[kind]
    with FakePccs(dcap, status="SWHardeningNeeded", advisory_ids=["INTEL-SA-00615"]) as pccs:
        collateral = fetch_collateral(pccs.url, quote)
        fmspc = dcap.platform.fmspc.hex().upper()
        assert pccs.log == [
            f"/sgx/certification/v4/pckcrl?ca={dcap.platform.ca}&encoding=der",
            f"/{tee}/certification/v4/tcb?fmspc={fmspc}&update=standard",
            f"/{tee}/certification/v4/qe/identity?update=standard",
            "/sgx/certification/v4/rootcacrl",
        ]
        assert set(pccs.requests.values()) == {1}
    assert collateral.tcb_info == pccs.collateral[tee].tcb_info.body
    assert collateral.qe_identity == pccs.collateral[tee].qe_identity.body
    assert (collateral.pck_crl, collateral.root_ca_crl) == (pccs.pck_crl, pccs.root_ca_crl)
    report = dcap_qvl.verify_with_root_ca(quote, collateral, dcap.root_ca_der, NOW_SECS)
    assert (report.status, list(report.advisory_ids)) == ("SWHardeningNeeded", ["INTEL-SA-00615"])
    verdict = verify_quote(quote, collateral.to_json().encode(), now=NOW, root_ca_der=dcap.root_ca_der)
    assert verdict.report.security_level is SecurityLevel.STALE
    with pytest.raises(AttestationError):
        verify_quote(quote, collateral.to_json().encode(), now=NOW)


def test_the_fake_pccs_answers_as_pcs_does(dcap: EmulatedDcap) -> None:
    v4 = "/sgx/certification/v4"
    fmspc = dcap.platform.fmspc.hex()
    with (
        FakePccs(dcap, evaluation_data_number=17) as pccs,
        httpx.Client(base_url=pccs.url, trust_env=False) as http,
    ):
        pem = http.get(f"{v4}/pckcrl", params={"ca": dcap.platform.ca})
        assert pem.status_code == 200 and pem.headers["content-type"] == "application/x-pem-file"
        assert x509.load_pem_x509_crl(pem.content).public_bytes(serialization.Encoding.DER) == pccs.pck_crl
        assert urllib.parse.unquote(pem.headers["SGX-PCK-CRL-Issuer-Chain"]) == dcap.pck_crl_issuer_chain
        tcb = http.get("/tdx/certification/v4/tcb", params={"fmspc": fmspc.upper()})
        assert tcb.text == pccs.collateral["tdx"].tcb_info.response()
        assert urllib.parse.unquote(tcb.headers["TCB-Info-Issuer-Chain"]) == dcap.tcb_info_issuer_chain
        qe = http.get(f"{v4}/qe/identity", params={"tcbEvaluationDataNumber": "17"})
        assert json.loads(qe.text)["enclaveIdentity"]["id"] == "QE"
        assert (
            urllib.parse.unquote(qe.headers["SGX-Enclave-Identity-Issuer-Chain"])
            == dcap.tcb_info_issuer_chain
        )
        assert bytes.fromhex(http.get(f"{v4}/rootcacrl").text) == pccs.root_ca_crl
        refused = {
            f"{v4}/tcb?fmspc=00ffffff0000": 404,  # an FMSPC nobody has
            f"{v4}/tcb?fmspc=xyz": 400,
            f"{v4}/tcb": 400,
            f"{v4}/qe/identity?update=early&tcbEvaluationDataNumber=17": 400,  # not both (PCS)
            f"{v4}/qe/identity?tcbEvaluationDataNumber=16": 404,
            f"{v4}/pckcrl?ca=processor": 404,  # this platform's PCK CA is the Platform CA
            f"{v4}/pckcrl?ca=other": 400,
            f"{v4}/pckcert": 404,
            "/sgx/certification/v3/qe/identity": 404,
        }
        assert {path: http.get(path).status_code for path in refused} == refused
        assert pccs.requests[f"{v4}/tcb"] == 3 and pccs.requests[f"{v4}/qe/identity"] == 3


# --- the enclave's own providers, served minted quotes -----------------------------------------


def test_gramine_platform_produces_quotes_that_verify_under_the_test_root(
    dcap: EmulatedDcap, fake_gramine: Callable[..., FakeGramine]
) -> None:
    fake = fake_gramine(make_quote=lambda i, rd: mint(dcap, "sgx", rd, isv_prod_id=2, isv_svn=9))
    platform = bounded(lambda: GramineSgxPlatform(fake.root))
    assert (platform.code_hash, platform.signer, platform.product_id, platform.security_version) == (
        MRENCLAVE,
        MRSIGNER,
        2,
        9,
    )
    quote = bounded(lambda: platform.evidence(REPORT_DATA))
    verdict = verify_quote(quote, dcap.collateral("sgx"), now=NOW, root_ca_der=dcap.root_ca_der)
    assert (verdict.report.report_data, verdict.report.code_hash) == (REPORT_DATA, MRENCLAVE)
    assert verdict.tcb_status == "UpToDate" and fake.served == 2


@pytest.mark.parametrize("version", [4, 5])
def test_configfs_tsm_platform_produces_tdx_quotes_that_verify_under_the_test_root(
    dcap: EmulatedDcap, fake_tsm: Callable[..., FakeTsm], version: int
) -> None:
    fake = fake_tsm(provider="tdx_guest", make_outblob=lambda rd: mint(dcap, f"tdx{version}", rd))
    platform = bounded(lambda: ConfigfsTsmPlatform(fake.root))
    assert (platform.tee, platform.code_hash, platform.debug) == ("tdx", MRTD, False)
    quote = bounded(lambda: platform.evidence(REPORT_DATA))
    verdict = verify_quote(quote, dcap.collateral("tdx"), now=NOW, root_ca_der=dcap.root_ca_der)
    assert (verdict.report.report_data, verdict.report.code_hash) == (REPORT_DATA, MRTD)
    fake.assert_clean()


def test_evidence_from_the_emulated_platform_appraised_through_a_verifier_that_owns_the_root(
    dcap: EmulatedDcap, fake_gramine: Callable[..., FakeGramine]
) -> None:
    """The client's path: the enclave binds its key and configuration into the quote; the client's
    verifier (here a Verifier that passes the test root) checks quote, binding and constraint."""
    config = EnclaveConfig(owner_public_key=bytes(range(32)))
    key_config = ohttp.GatewayKey.generate().config.encode()
    nonce = b"n" * 32
    fake = fake_gramine(make_quote=lambda i, rd: mint(dcap, "sgx", rd))
    platform = bounded(lambda: GramineSgxPlatform(fake.root))
    receipt_key = b"r" * 32
    report_data = attestation_binding(key_config, receipt_key, config.digest(), nonce)
    quote = bounded(lambda: platform.evidence(report_data))
    document = evidence.Evidence(
        "sgx", quote, config.canonical(), dcap.collateral("sgx"), receipt_key
    ).encode()

    test_root = evidence.Verifier(intel_root_ca_der=dcap.root_ca_der)
    constraint = constraints.parse(f"C:{MRENCLAVE.hex()} S:{MRSIGNER.hex()} PROD:0")
    attestation = evidence.verify(
        document, constraint, verifier=test_root, key_config=key_config, nonce=nonce, now=NOW
    )
    assert attestation.config == config and attestation.report.security_level is SecurityLevel.SECURE
    with pytest.raises(AttestationError, match="not bound"):
        evidence.verify(
            document, constraint, verifier=test_root, key_config=key_config, nonce=b"m" * 32, now=NOW
        )
    with pytest.raises(AttestationError, match="did not verify"):  # the production verifier: Intel's root
        evidence.verify(
            document,
            constraint,
            verifier=evidence.Verifier.production(),
            key_config=key_config,
            nonce=nonce,
            now=NOW,
        )


# --- collateral freshness: TCB evaluation data numbers, nextUpdate and GRACE: -------------------

DAY = timedelta(days=1)


def stale(dcap: EmulatedDcap, tee: Tee, *, expired: timedelta = DAY) -> bytes:
    """Collateral valid for 30 days up to ``expired`` before NOW."""
    return dcap.collateral(tee, issue_date=NOW - expired - timedelta(days=30), next_update=NOW - expired)


@pytest.mark.parametrize("kind", ["sgx", "tdx4", "tdx5"])
def test_collateral_past_its_next_update_is_refused_unless_grace_allows_it(
    dcap: EmulatedDcap, kind: str
) -> None:
    quote, tee = mint(dcap, kind), TEES[kind]
    verdict = verify_quote(quote, stale(dcap, tee), now=NOW, root_ca_der=dcap.root_ca_der)
    collateral = verdict.report.dcap_collateral
    assert collateral is not None
    assert (collateral.expired, collateral.next_update, collateral.verified_at) == (
        DAY,
        NOW - DAY,
        NOW - DAY - timedelta(seconds=1),
    )
    assert collateral.next_update_of == "TCB info"  # all four expire together: the first named
    assert verdict.to_json()["collateral_expired"] == {"ago": "P1D", "first_to_expire": "TCB info"}
    assert "collateral expired P1D ago" in verdict.report.level_reason
    assert verdict.report.security_level is SecurityLevel.SECURE  # the level is the TCB's; GRACE: decides
    base = f"C:{verdict.report.code_hash.hex()}"
    with pytest.raises(ConstraintError, match=r"DCAP collateral expired P1D ago .* no staleness is allowed"):
        constraints.parse(base).check(verdict.report, now=NOW)
    constraints.parse(base + " GRACE:PT24H").check(verdict.report, now=NOW)
    with pytest.raises(ConstraintError, match="longer ago than GRACE:PT12H allows"):
        constraints.parse(base + " GRACE:PT12H").check(verdict.report, now=NOW)
    # the same platform verified through the evidence path, with a verifier owning the test root
    current = verify_quote(quote, dcap.collateral(tee), now=NOW, root_ca_der=dcap.root_ca_der)
    assert current.report.dcap_collateral is not None and current.report.dcap_collateral.expired is None
    constraints.parse(base).check(current.report, now=NOW)


def test_stale_collateral_is_still_verified_in_full(dcap: EmulatedDcap) -> None:
    """Verified as of its last current second: a revoked PCK, a TCB status, a forged signature or
    another root are refused or rated exactly as with current collateral."""
    quote = mint(dcap, "sgx")
    window = {"issue_date": NOW - DAY - timedelta(days=30), "next_update": NOW - DAY}
    revoked = dcap.collateral("sgx", revoke_pck=True, **window)
    with pytest.raises(AttestationError, match="did not verify: Failed to verify certificate chain"):
        verify_quote(quote, revoked, now=NOW, root_ca_der=dcap.root_ca_der)
    assert "CertRevoked" in qvl_error(dcap, quote, revoked, int((NOW - DAY).timestamp()) - 1)
    out_of_date = dcap.collateral("sgx", status="OutOfDate", **window)
    verdict = verify_quote(quote, out_of_date, now=NOW, root_ca_der=dcap.root_ca_der)
    assert verdict.report.security_level is SecurityLevel.STALE and verdict.tcb_status == "OutOfDate"
    doc = json.loads(stale(dcap, "sgx"))
    doc["tcb_info_signature"] = ("00" if doc["tcb_info_signature"][:2] != "00" else "01") + doc[
        "tcb_info_signature"
    ][2:]
    with pytest.raises(AttestationError, match="did not verify"):
        verify_quote(quote, json.dumps(doc).encode(), now=NOW, root_ca_der=dcap.root_ca_der)
    with pytest.raises(AttestationError, match="did not verify"):
        verify_quote(quote, stale(dcap, "sgx"), now=NOW)  # Intel's root


def test_the_earliest_next_update_counts(dcap: EmulatedDcap) -> None:
    """TCB info and QE identity current, the PCK CRL a day out of date: the whole is a day stale."""
    parts = dcap.collateral_parts("sgx", issue_date=NOW - timedelta(days=30), next_update=NOW + DAY)
    crl = dcap.pck_crl(this_update=NOW - timedelta(days=31), next_update=NOW - DAY)
    collateral = dataclasses.replace(parts, pck_crl=crl).to_json()
    verdict = verify_quote(mint(dcap, "sgx"), collateral, now=NOW, root_ca_der=dcap.root_ca_der)
    assert verdict.report.dcap_collateral is not None
    assert (verdict.report.dcap_collateral.next_update_of, verdict.report.dcap_collateral.expired) == (
        "PCK CRL",
        DAY,
    )
    with pytest.raises(ConstraintError, match=r"expired P1D ago \(the PCK CRL's nextUpdate"):
        constraints.parse(f"C:{MRENCLAVE.hex()}").check(verdict.report, now=NOW)
    # a CRL has expired at its nextUpdate: at that very second the collateral is zero seconds stale
    at_crl = verify_quote(mint(dcap, "sgx"), collateral, now=NOW - DAY, root_ca_der=dcap.root_ca_der)
    assert at_crl.report.dcap_collateral is not None and at_crl.report.dcap_collateral.expired == timedelta(0)


def test_collateral_never_current_as_a_whole_or_not_yet_valid_is_refused(dcap: EmulatedDcap) -> None:
    quote = mint(dcap, "sgx")
    # TCB info issued after the PCK CRL expired: no instant at which all of it was current
    parts = dcap.collateral_parts("sgx", issue_date=NOW - 12 * timedelta(hours=1), next_update=NOW + DAY)
    crl = dcap.pck_crl(this_update=NOW - timedelta(days=31), next_update=NOW - DAY)
    collateral = dataclasses.replace(parts, pck_crl=crl).to_json()
    with pytest.raises(
        AttestationError, match=r"never current as a whole: the (TCB info|QE identity) was issued"
    ):
        verify_quote(quote, collateral, now=NOW, root_ca_der=dcap.root_ca_der)
    # issued in the future: refused, stale or not
    future = dcap.collateral("sgx", issue_date=NOW + DAY, next_update=NOW + 31 * DAY)
    with pytest.raises(AttestationError, match="in the future"):
        verify_quote(quote, future, now=NOW, root_ca_der=dcap.root_ca_der)
    parts = dcap.collateral_parts("sgx", issue_date=NOW + DAY, next_update=NOW + 31 * DAY)
    stale_crl = dataclasses.replace(parts, pck_crl=crl).to_json()
    with pytest.raises(AttestationError, match=r"was issued at .*, in the future, and the PCK CRL expired"):
        verify_quote(quote, stale_crl, now=NOW, root_ca_der=dcap.root_ca_der)


def test_a_certificate_expired_since_is_refused_whatever_the_grace() -> None:
    """Stale collateral is verified as of its expiry; the certificates must still be valid now."""
    expiring = EmulatedDcap(cert_not_after=NOW - 12 * timedelta(hours=1))
    quote = mint(expiring, "tdx4")
    with pytest.raises(
        AttestationError,
        match="certificate 'Emulated SGX PCK Certificate' expired at 2026-01-01T12:00:00Z, before 2026-01-02",
    ):
        verify_quote(quote, stale(expiring, "tdx"), now=NOW, root_ca_der=expiring.root_ca_der)
    # as of an instant before the certificates expired, the same quote and collateral verify
    earlier = NOW - 18 * timedelta(hours=1)
    verdict = verify_quote(quote, stale(expiring, "tdx"), now=earlier, root_ca_der=expiring.root_ca_der)
    assert verdict.report.dcap_collateral is not None
    assert verdict.report.dcap_collateral.expired == 6 * timedelta(hours=1)


def test_tcb_evaluation_data_numbers_are_reported_and_floored(dcap: EmulatedDcap) -> None:
    quote = mint(dcap, "tdx5")
    doc = json.loads(dcap.collateral("tdx", evaluation_data_number=17))
    qe = dcap.qe_identity("tdx", evaluation_data_number=19)  # a QE identity of another number
    doc.update(qe_identity=qe.body, qe_identity_signature=qe.signature.hex())
    verdict = verify_quote(quote, json.dumps(doc).encode(), now=NOW, root_ca_der=dcap.root_ca_der)
    collateral = verdict.report.dcap_collateral
    assert collateral is not None
    assert (collateral.tcb_info_evaluation_data_number, collateral.qe_identity_evaluation_data_number) == (
        17,
        19,
    )
    assert verdict.to_json()["tcb_evaluation_data_numbers"] == {"tcb_info": 17, "qe_identity": 19}
    base = f"C:{MRTD.hex()}"
    constraints.parse(base + " TCBEVAL:17").check(verdict.report, now=NOW)
    with pytest.raises(
        ConstraintError,
        match=r"^the TCB info's TCB evaluation data number 17 is below the floor 18 \(TCBEVAL:18\)$",
    ):
        constraints.parse(base + " TCBEVAL:18").check(verdict.report, now=NOW)
    doc = json.loads(dcap.collateral("tdx", evaluation_data_number=19))
    qe = dcap.qe_identity("tdx", evaluation_data_number=17)
    doc.update(qe_identity=qe.body, qe_identity_signature=qe.signature.hex())
    verdict = verify_quote(quote, json.dumps(doc).encode(), now=NOW, root_ca_der=dcap.root_ca_der)
    with pytest.raises(ConstraintError, match="the QE identity's TCB evaluation data number 17 is below"):
        constraints.parse(base + " TCBEVAL:18").check(verdict.report, now=NOW)


def test_collateral_dates_must_be_readable(dcap: EmulatedDcap) -> None:
    quote = mint(dcap, "sgx")
    doc = json.loads(dcap.collateral("sgx"))
    broken = {  # what the refusal says: the collateral and its part
        "PCK CRL is not a DER CRL (hex)": dict(doc, pck_crl="zz"),
        "root CA CRL is not a DER CRL (hex)": dict(doc, root_ca_crl=doc["root_ca_crl"][:-4]),
        "lacks an issuer chain": {k: v for k, v in doc.items() if k != "tcb_info_issuer_chain"},
        "TCB info nextUpdate is not an RFC 3339 time": dict(
            doc, tcb_info=doc["tcb_info"].replace('"nextUpdate":"', '"nextUpdate":"x')
        ),
        "TCB info is not JSON with each key once": dict(
            doc, tcb_info=doc["tcb_info"][:-1] + ',"tcbEvaluationDataNumber":99}'
        ),
        "QE identity has no tcbEvaluationDataNumber": dict(
            doc,
            qe_identity=doc["qe_identity"].replace(
                '"tcbEvaluationDataNumber":18', '"tcbEvaluationDataNumber":true'
            ),
        ),
    }
    for reason, bad in broken.items():
        with pytest.raises(AttestationError, match=re.escape(reason)):
            verify_quote(quote, json.dumps(bad).encode(), now=NOW, root_ca_der=dcap.root_ca_der)


def test_stale_collateral_checks_the_pck_chain_dcap_qvl_verifies() -> None:
    """``dcap_qvl.get_collateral`` copies the quote's PCK chain into the collateral, and dcap-qvl
    verifies that copy, not the quote's (unsigned) certification data: with stale collateral, its
    expiry must be checked, or a quote with another chain spliced in would hide an expired PCK."""
    from cryptography.hazmat.primitives import serialization as pem_encoding

    from enclave_infer.attestation.dcap import parse_quote_layout

    expiring = EmulatedDcap()
    expiring.cert_not_after = NOW - 12 * timedelta(hours=1)  # only the PCK certificate expires
    expiring.pck_certificate = expiring._certificate(
        "Emulated SGX PCK Certificate",
        expiring.pck_key,
        (expiring.pck_ca, expiring.pck_ca_key),
        crl_url="https://emulated-pcs.invalid/pckcrl",
        sgx=sgx_extension(expiring.platform),
    )
    quote = mint(expiring, "sgx")
    doc = json.loads(stale(expiring, "sgx"))
    doc["pck_certificate_chain"] = expiring.pck_chain_pem + "\0"  # as get_collateral copies it
    collateral = json.dumps(doc).encode()
    # the quote's own chain swapped for one that is still valid (PCK CA and root: not expired)
    spliced_pem = (
        b"".join(c.public_bytes(pem_encoding.Encoding.PEM) for c in (expiring.pck_ca, expiring.root_ca))
        + b"\0"
    )
    layout = parse_quote_layout(quote)
    start = layout.signature_data.start
    head = quote[: quote.index(b"-----BEGIN CERTIFICATE-----") - 6]  # up to certification data type, size
    body = head + struct.pack("<HI", 5, len(spliced_pem)) + spliced_pem
    spliced = body[: start - 4] + struct.pack("<I", len(body) - start) + body[start:]
    for candidate in (quote, spliced):
        with pytest.raises(AttestationError, match="'Emulated SGX PCK Certificate' expired"):
            verify_quote(candidate, collateral, now=NOW, root_ca_der=expiring.root_ca_der)
