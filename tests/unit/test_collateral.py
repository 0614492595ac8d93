"""The host's collateral: where it comes from, when it is refreshed, and what is served meanwhile."""

from __future__ import annotations

import json
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from enclave_infer.attestation import snp
from enclave_infer.attestation.report import SecurityLevel
from enclave_infer.errors import AttestationError, TransportError, UsageError
from enclave_infer.host import collateral as hc
from enclave_infer.host.collateral import Collateral, CollateralKeeper, FileSource, KdsSource
from tests.shared_vectors import shared_vector_dir

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Source:
    """A collateral source that answers from a script: Collateral, or an exception to raise."""

    def __init__(self, *answers: Collateral | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    def fetch(self, tee: str, evidence: bytes) -> Collateral:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def good(days: int = 30) -> Collateral:
    return Collateral(b"collateral", NOW + timedelta(days=days), "test")


def test_dcap_next_update_is_the_earliest_of_its_parts() -> None:
    data = (shared_vector_dir("sgx-dcap") / "sgx_quote_collateral.json").read_bytes()
    doc = json.loads(data)
    documents = [
        datetime.strptime(json.loads(doc[k])["nextUpdate"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        for k in ("tcb_info", "qe_identity")
    ]
    earliest = hc.dcap_next_update(data)
    assert earliest <= min(documents)
    with pytest.raises(AttestationError, match="QuoteCollateralV3"):
        hc.dcap_next_update(b'{"tcb_info": "{}"}')


def test_the_keeper_fetches_caches_and_serves_from_the_cache_after_a_restart(tmp_path: Path) -> None:
    cache = tmp_path / "collateral.json"
    source = Source(good())
    keeper = CollateralKeeper(source, cache, clock=lambda: NOW)
    assert keeper.start("sev-snp", b"report")
    keeper.stop()
    assert keeper.current == good() and source.calls == 1 and not keeper.refused
    down = Source(TransportError("KDS down"))
    again = CollateralKeeper(down, cache, clock=lambda: NOW)
    assert again.start("sev-snp", b"report")  # from the cache, without asking the source
    again.stop()
    assert down.calls == 0 and again.current is not None and again.current.data == b"collateral"


def test_a_cached_dcap_collateral_is_dated_by_its_own_content(tmp_path: Path) -> None:
    """The cache file is the host's: for DCAP its nextUpdate is read from the signed documents."""
    data = (shared_vector_dir("sgx-dcap") / "sgx_quote_collateral.json").read_bytes()
    cache = tmp_path / "collateral.json"
    later = datetime(2030, 1, 1, tzinfo=UTC)
    cache.write_text(json.dumps({"data": data.hex(), "next_update": "2030-06-01T00:00:00Z", "source": "x"}))
    keeper = CollateralKeeper(Source(TransportError("PCCS down")), cache, clock=lambda: later, first_retry=60)
    assert not keeper.start("sgx", b"quote")  # the file says 2030, the TCB info expired in 2025
    keeper.stop()


def test_newer_collateral_that_refuses_the_platform_stops_the_old_one(tmp_path: Path) -> None:
    verdicts = [None, AttestationError("TCB status Revoked is not acceptable")]

    def appraise(c: Collateral) -> None:
        if (verdict := verdicts.pop(0)) is not None:
            raise verdict

    keeper = CollateralKeeper(Source(good()), tmp_path / "c.json", clock=lambda: NOW, on_ready=appraise)
    assert keeper.start("sev-snp", b"report")
    keeper.stop()
    assert not keeper._refresh()  # type: ignore[attr-defined]
    assert keeper.current is None and keeper.refused and "Revoked" in keeper.problem


def test_without_collateral_the_keeper_says_why_and_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = Source(TransportError("cannot reach https://pccs.example: timed out"), good())
    ready = threading.Event()
    keeper = CollateralKeeper(
        source, tmp_path / "c.json", clock=lambda: NOW, on_ready=lambda c: ready.set(), first_retry=0.05
    )
    assert not keeper.start("tdx", b"quote")
    assert keeper.current is None and "timed out" in keeper.problem
    assert "no collateral for the tdx evidence: cannot reach https://pccs.example: timed out" in caplog.text
    assert ready.wait(5), "the keeper did not retry"
    keeper.stop()
    assert keeper.current == good() and keeper.problem == ""


def test_expired_collateral_is_never_served(tmp_path: Path) -> None:
    clock = [NOW]
    keeper = CollateralKeeper(Source(good(days=1)), tmp_path / "c.json", clock=lambda: clock[0])
    assert keeper.start("sgx", b"quote")
    keeper.stop()
    clock[0] = NOW + timedelta(days=2)
    assert keeper.current is None
    stale = CollateralKeeper(Source(good(days=-1)), tmp_path / "d.json", clock=lambda: NOW)
    assert not stale.start("sgx", b"quote")
    stale.stop()
    assert "expired" in stale.problem


def test_collateral_the_enclave_does_not_verify_with_is_refused(tmp_path: Path) -> None:
    def refuse(c: Collateral) -> None:
        raise AttestationError("DCAP quote did not verify: bad signature")

    keeper = CollateralKeeper(Source(good()), tmp_path / "c.json", clock=lambda: NOW, on_ready=refuse)
    assert not keeper.start("sgx", b"quote")
    keeper.stop()
    assert (
        keeper.refused and keeper.current is None and "does not verify with this collateral" in keeper.problem
    )
    assert not (tmp_path / "c.json").exists()  # nothing refused is cached


def test_a_refresh_is_due_before_the_next_update() -> None:
    soon = Collateral(b"", NOW + timedelta(hours=3), "x")
    assert soon.refresh_at(NOW) == NOW + timedelta(hours=2)
    later = Collateral(b"", NOW + timedelta(days=30), "x")
    assert later.refresh_at(NOW) == NOW + timedelta(hours=24)


def test_kds_source_asks_for_the_vcek_of_the_reports_chip_and_tcb() -> None:
    genoa = shared_vector_dir("sev-snp", "genoa-vcek-azure-openpcc")
    report = (genoa / "report.bin").read_bytes()
    vcek = (genoa / "vcek.pem").read_bytes()
    chain = (genoa / "ask_ark_genoa.pem").read_bytes()
    vcek_der = ssl.PEM_cert_to_DER_cert(vcek.decode())
    parsed = snp.AttestationReport.from_bytes(report)
    tcb = snp.decode_tcb(parsed.reported_tcb, "Genoa")
    asked: list[str] = []

    crl = x509.load_pem_x509_crl((genoa / "crl_genoa.pem").read_bytes()).public_bytes(Encoding.DER)

    def kds(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        if request.url.path.endswith("/cert_chain"):
            return httpx.Response(200, content=chain)
        if request.url.path.endswith("/crl"):
            return httpx.Response(200, content=crl)
        return httpx.Response(200, content=vcek_der)

    got = KdsSource("https://kds.test", transport=httpx.MockTransport(kds)).fetch("sev-snp", report)
    assert asked == [
        f"https://kds.test/vcek/v1/Genoa/{parsed.chip_id.hex()}?blSPL={tcb.bootloader}&teeSPL={tcb.tee}"
        f"&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}",
        "https://kds.test/vcek/v1/Genoa/cert_chain",
        "https://kds.test/vcek/v1/Genoa/crl",
    ]
    bundle = snp.parse_snp_collateral(got.data)
    assert bundle is not None
    verdict = snp.verify_snp_report(report, got.data, now=datetime(2025, 7, 1, tzinfo=UTC))
    assert verdict.report.tee == "sev-snp" and verdict.crl_updates is not None  # the CRL came along
    assert verdict.report.security_level is SecurityLevel.SECURE
    assert got.next_update <= x509.load_der_x509_crl(crl).next_update_utc

    with pytest.raises(TransportError, match="answered 404"):
        KdsSource("https://kds.test", transport=httpx.MockTransport(lambda r: httpx.Response(404))).fetch(
            "sev-snp", report
        )
    with pytest.raises(UsageError, match="--kds serves SEV-SNP certificates"):
        KdsSource("https://kds.test").fetch("sgx", b"quote")
    vlek = shared_vector_dir("sev-snp", "milan-vlek-aws-trustee")
    with pytest.raises(UsageError, match="signed with a VLEK"):
        KdsSource("https://kds.test").fetch("sev-snp", (vlek / "test-vlek-report.bin").read_bytes())


def test_file_source_reads_the_file_each_time(tmp_path: Path) -> None:
    path = tmp_path / "collateral.json"
    with pytest.raises(UsageError, match="cannot read --collateral"):
        FileSource(path).fetch("sgx", b"")
    path.write_bytes((shared_vector_dir("sgx-dcap") / "sgx_quote_collateral.json").read_bytes())
    got = FileSource(path).fetch("sgx", b"")
    assert got.data == path.read_bytes() and got.source == f"file {path}"
