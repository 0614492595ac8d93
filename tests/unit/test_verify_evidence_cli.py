"""``enclave-infer verify-evidence`` end to end, as a subprocess, with the real vectors.

SGX, TDX and SEV-SNP evidence are told apart by content; an SEV-SNP report takes a PEM bundle of
VCEK or VLEK, ASK or ASVK, and ARK as ``--collateral`` and AMD's CRL as ``--crl``. Every run pins
``--now`` to the vectors' README clock, except where the real clock is the point. The SGX quote's
own CLI test is in test_dcap.py.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.shared_vectors import shared_vector_dir

CLI = str(Path(sys.executable).with_name("enclave-infer"))
SNP_NOW = "2025-07-01T00:00:00Z"  # the SEV-SNP vectors' README
TDX_NOW = "2026-02-01T00:00:00Z"  # the TDX vectors' README
GENOA_MEASUREMENT = (
    "572db4d3f521386bec1c76346f9c913431f2f257c9c09d604c1259b108a686ae0d277f31899a73098b41b556dc70a5fb"
)


def snp(relative: str) -> Path:
    return shared_vector_dir("sev-snp") / relative


def tdx(name: str) -> tuple[Path, Path, dict[str, Any]]:
    """(quote, collateral, expected.json) of a TDX vector."""
    folder = shared_vector_dir("tdx-dcap", name)
    expected = json.loads((folder / "expected.json").read_text())
    return folder / expected["files"]["quote"], folder / expected["files"]["collateral"], expected


def pem(der: bytes) -> bytes:
    b64 = base64.b64encode(der).decode()
    body = "".join(b64[i : i + 64] + "\n" for i in range(0, len(b64), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode()


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "verify-evidence", *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("enclave-infer: error: ")
    return lines[0].removeprefix("enclave-infer: error: ")


@pytest.fixture(scope="module")
def genoa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VCEK, ASK, ARK of the Genoa vector as one PEM bundle."""
    path = tmp_path_factory.mktemp("snp") / "genoa.pem"
    path.write_bytes(
        snp("genoa-vcek-azure-openpcc/vcek.pem").read_bytes()
        + snp("genoa-vcek-azure-openpcc/ask_ark_genoa.pem").read_bytes()
    )
    return path


@pytest.fixture(scope="module")
def milan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Milan VCEK (DER in the vector) and its ASK and ARK, as one PEM bundle."""
    path = tmp_path_factory.mktemp("snp") / "milan.pem"
    vcek = pem(snp("milan-vcek-go-sev-guest/vcek.der").read_bytes())
    path.write_bytes(vcek + snp("milan-vcek-go-sev-guest/ask_ark_milan.pem").read_bytes())
    return path


# --- SEV-SNP ----------------------------------------------------------------------------------


def test_an_snp_report_verifies_and_prints_the_verdict(genoa: Path) -> None:
    folder = "genoa-vcek-azure-openpcc"
    constraint = f"C:{GENOA_MEASUREMENT} SNPTCB:bl=10,snp=23,ucode=84"
    report, crl = snp(f"{folder}/report.bin"), snp(f"{folder}/crl_genoa.pem")
    ok = run(
        "--quote", report, "--collateral", genoa, "--crl", crl, "--now", SNP_NOW, "--constraint", constraint
    )
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["verified"] is True and doc["constraint"] == {"given": constraint, "holds": True}
    assert (doc["tee"], doc["measurement"], doc["security_level"]) == ("sev-snp", GENOA_MEASUREMENT, "SECURE")
    assert doc["report_data"].startswith("b2754e9b7b4076a3")
    assert doc["reported_tcb"] == {"bootloader": 10, "tee": 0, "snp": 23, "microcode": 84}
    assert doc["security_level_reason"] and isinstance(doc["findings"], list)
    assert doc["crl"]["next_update"].startswith("2025-11-03")  # AMD's Genoa CRL, checked
    # the floor one above the reported SNP firmware: verified, but the constraint does not hold
    refused = run("--quote", snp(f"{folder}/report.bin"), "--collateral", genoa, "--now", SNP_NOW,
                  "--constraint", f"C:{GENOA_MEASUREMENT} SNPTCB:snp=24")  # fmt: skip
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["constraint"]["holds"] is False
    assert error_line(refused) == "reported SNP firmware 23 is below the floor 24 (SNPTCB:snp=24)"


def test_the_azure_hcl_wrapper_and_a_tampered_report(genoa: Path, tmp_path: Path) -> None:
    folder = "genoa-vcek-azure-openpcc"
    hcl = run("--quote", snp(f"{folder}/hcl_report.bin"), "--collateral", genoa, "--now", SNP_NOW)
    assert hcl.returncode == 0, hcl.stderr
    assert json.loads(hcl.stdout)["source"] == "azure-hcl"
    tampered = tmp_path / "report.bin"
    raw = bytearray(snp(f"{folder}/report.bin").read_bytes())
    raw[0x90] ^= 1  # MEASUREMENT
    tampered.write_bytes(bytes(raw))
    bad = run("--quote", tampered, "--collateral", genoa, "--now", SNP_NOW)
    assert bad.returncode == 1
    assert json.loads(bad.stdout) == {"verified": False, "error": error_line(bad)}
    assert error_line(bad) == "report signature does not verify under the VCEK"


def test_a_debug_guest_is_insecure_and_refused_unless_the_constraint_accepts_it(milan: Path) -> None:
    report = snp("milan-vcek-go-sev-guest/attestation.bin")
    measurement = json.loads(snp("milan-vcek-go-sev-guest/expected.json").read_text())["report"][
        "measurement"
    ]
    refused = run(
        "--quote", report, "--collateral", milan, "--now", SNP_NOW, "--constraint", f"C:{measurement}"
    )
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["security_level"] == "INSECURE"
    assert error_line(refused).startswith("security level INSECURE is below SEC:SECURE (guest policy allows")
    accepted = run("--quote", report, "--collateral", milan, "--now", SNP_NOW,
                   "--constraint", f"C:{measurement} SEC:INSECURE")  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    # DCAP-only tokens fail closed on an SEV-SNP report
    tcbeval = run("--quote", report, "--collateral", milan, "--now", SNP_NOW,
                  "--constraint", f"C:{measurement} SEC:INSECURE TCBEVAL:1")  # fmt: skip
    assert tcbeval.returncode == 1
    assert (
        error_line(tcbeval)
        == "TCBEVAL: given but the evidence (sev-snp) is not a DCAP quote verified with collateral"
    )


def test_an_expired_vlek_at_the_real_clock(tmp_path: Path) -> None:
    folder = "milan-vlek-aws-trustee"
    bundle = tmp_path / "vlek.pem"
    bundle.write_bytes(
        pem(snp(f"{folder}/test-vlek.der").read_bytes())
        + snp(f"{folder}/milan_ask_ark_asvk.pem").read_bytes()
    )
    at_readme = run(
        "--quote", snp(f"{folder}/test-vlek-report.bin"), "--collateral", bundle, "--now", SNP_NOW
    )
    assert at_readme.returncode == 0, at_readme.stderr
    assert json.loads(at_readme.stdout)["signing_key"] == "VLEK"
    now = run("--quote", snp(f"{folder}/test-vlek-report.bin"), "--collateral", bundle)
    assert now.returncode == 1 and json.loads(now.stdout)["verified"] is False
    assert "the VLEK is not valid at" in error_line(now)


def test_usage_errors_are_one_line(genoa: Path) -> None:
    report = snp("genoa-vcek-azure-openpcc/report.bin")
    pccs = run("--quote", report, "--pccs", "https://pccs.invalid", "--now", SNP_NOW)
    assert pccs.returncode == 1 and pccs.stdout == ""
    assert error_line(pccs).startswith(
        "--pccs fetches Intel DCAP collateral; an SEV-SNP report takes --collateral"
    )
    quote, collateral, _ = tdx("v4-uptodate-tinfoil")
    crl = run(
        "--quote", quote, "--collateral", collateral, "--crl", snp("genoa-vcek-azure-openpcc/crl_genoa.pem")
    )
    assert crl.returncode == 1 and crl.stdout == ""
    assert error_line(crl).startswith("--crl is AMD's CRL for an SEV-SNP report")
    no_chain = run("--quote", report, "--now", SNP_NOW)  # a raw report carries no certificates
    assert no_chain.returncode == 1
    assert "SEV-SNP report without collateral" in error_line(no_chain)


def test_neither_snp_nor_dcap(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x07\x00\x02\x00" + bytes(2000))
    result = run("--quote", junk, "--collateral", junk)
    assert result.returncode == 1
    assert error_line(result) == (
        f"{junk} is neither an SEV-SNP report nor an SGX or TDX DCAP quote: DCAP quote version 7 with TEE "
        "type 0x0 is not supported (SGX: version 3, TEE type 0x0; TDX: version 4 or 5, TEE type 0x81)"
    )
    assert json.loads(result.stdout)["verified"] is False


# --- TDX --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v4-uptodate-tinfoil", "v4-outofdate-trustee", "v5-uptodate-go-tdx-guest"])
def test_a_tdx_quote_verifies_and_prints_the_verdict(name: str) -> None:
    quote, collateral, expected = tdx(name)
    td = expected["report"].get("base", expected["report"])
    status = expected["expected"]["status"]
    level = "SEC:STALE" if status == "OutOfDate" else "SEC:SECURE"
    constraint = f"C:{td['mr_td']} {level} TCBEVAL:18"
    ok = run("--quote", quote, "--collateral", collateral, "--now", TDX_NOW, "--constraint", constraint)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert (doc["tee"], doc["mrtd"], doc["report_data"], doc["status"]) == (
        "tdx",
        td["mr_td"],
        td["report_data"],
        status,
    )
    assert doc["tcb_evaluation_data_numbers"] == {"tcb_info": 18, "qe_identity": 18}
    assert (doc["collateral_expired"], doc["verified_as_of"]) == (None, TDX_NOW)
    assert doc["constraint"] == {"given": constraint, "holds": True}
    if status == "OutOfDate":
        refused = run(
            "--quote", quote, "--collateral", collateral, "--now", TDX_NOW, "--constraint", f"C:{td['mr_td']}"
        )
        assert refused.returncode == 1
        assert error_line(refused).startswith(
            "security level STALE is below SEC:SECURE (TCB status OutOfDate"
        )
    floor = run("--quote", quote, "--collateral", collateral, "--now", TDX_NOW,
                "--constraint", f"C:{td['mr_td']} SEC:STALE TCBEVAL:19")  # fmt: skip
    assert floor.returncode == 1
    assert (
        error_line(floor) == "the TCB info's TCB evaluation data number 18 is below the floor 19 (TCBEVAL:19)"
    )


def test_a_tdx_quote_a_day_after_its_collateral_expired() -> None:
    quote, collateral, expected = tdx("v5-uptodate-go-tdx-guest")
    end = datetime.strptime(expected["valid_window_inclusive"][1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    day_after = (end + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    mrtd = expected["report"]["base"]["mr_td"]
    stale = run(
        "--quote", quote, "--collateral", collateral, "--now", day_after
    )  # no constraint: still refused
    assert stale.returncode == 1
    doc = json.loads(stale.stdout)
    assert doc["verified"] is True and doc["collateral_expired"] == {
        "ago": "P1D",
        "first_to_expire": "TCB info",
    }
    assert doc["verified_as_of"] == (end - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert error_line(stale) == (
        "DCAP collateral expired P1D ago (the TCB info's nextUpdate 2026-02-11T15:46:45Z); "
        "without GRACE:<duration> no staleness is allowed"
    )
    graced = run(
        "--quote",
        quote,
        "--collateral",
        collateral,
        "--now",
        day_after,
        "--constraint",
        f"C:{mrtd} GRACE:P1D",
    )
    assert graced.returncode == 0, graced.stderr
    short = run(
        "--quote",
        quote,
        "--collateral",
        collateral,
        "--now",
        day_after,
        "--constraint",
        f"C:{mrtd} GRACE:PT12H",
    )
    assert short.returncode == 1
    assert error_line(short).endswith("longer ago than GRACE:PT12H allows")
