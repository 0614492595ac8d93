"""The real-hardware attestation paths end to end, as far as a machine without a TEE can take them:
from ``serve`` to a verified classification on SGX (Gramine), TDX and SEV-SNP (configfs-tsm).

Real: the processes (an enclave process and a host process, on TCP loopback, started from
``tests/emulation/run_enclave.py`` and ``run_host.py``, which call the product's ``serve(Enclave(…))``
and ``host.server.run``), HTTP between all of them, the product's Gramine and configfs-tsm
providers reading and writing pseudo-files, the host fetching collateral with dcap-qvl's PCCS
client or its own KDS client, caching and serving it, every signature and certificate chain
(ECDSA P-256 quotes and PCK chains, RSASSA-PSS AMD chains, ECDSA P-384 SNP reports), the quote and
report layouts, the binding of the OHTTP key and configuration into the report data, OHTTP, the
SDK, the CLI.

Emulated (tests/emulation): the roots (a test Intel SGX Root CA, a test ARK-Genoa, with everything
under them: PCK chain, TCB info, QE identity, CRLs, ASK, VCEK), the hardware that signs (quotes and
reports minted over the report data the enclave writes), the pseudo-file trees (``/dev/attestation``
and ``/sys/kernel/config/tsm/report`` as FIFOs and files served by threads in this process), a TD's
boot (the CC event log TDVF would write for a small test UKI, and the RTMRs it replays to), and
the collateral services (a PCCS and AMD's KDS, real HTTP servers on loopback).

The test roots reach the host only as a ``Verifier`` object built in its test launcher, and the
clients only through ``Client(verifier=…)``; the production verifier and the CLI refuse everything
here, and the last test checks that no option, variable or configuration key could change that.

Not shown here, because only the hardware has it: Gramine's and the kernel's own pseudo-files
(timing, errno values, the TDX Quote Generation Service behind ``outblob``), the MRENCLAVE, MRTD
or MEASUREMENT of a real build, the answers of Intel's PCS and AMD's KDS (headers, rate limits,
VCEKs for any TCB), and AMD's 4096-bit ARKs (2048 here, for speed).
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_infer import AttestationError, Client, UnavailableError
from enclave_infer.attestation import constraints, receipt
from enclave_infer.attestation.evidence import Evidence, Verifier
from enclave_infer.attestation.report import SecurityLevel
from enclave_infer.cli.main import main as cli_main
from enclave_infer.client._config import ClientConfig
from enclave_infer.client._owner import load_owner_key
from enclave_infer.config import EnclaveConfig, Limits, load_public_key_file
from enclave_infer.errors import UsageError
from enclave_infer.protocol.api import PROBLEM_MEDIA_TYPE, Problem
from tests.emulation.ccel import boot_uki
from tests.emulation.dcap import EmulatedDcap
from tests.emulation.kds import FakeKds
from tests.emulation.pccs import FakePccs
from tests.emulation.pseudofs import FakeGramine, FakeTsm
from tests.emulation.snp import EmulatedSnp
from tests.emulation.uki import uki

from .conftest import COLOUR_LABELS, free_port, run_cli, wait_until_listening

REPOSITORY = Path(__file__).resolve().parents[2]  # the launchers run as tests.emulation.* from here
SOURCE = REPOSITORY / "src" / "enclave_infer"
MRENCLAVE = hashlib.sha256(b"enclave-infer e2e: the Gramine enclave").digest()
MRSIGNER = hashlib.sha256(b"enclave-infer e2e: the enclave signer").digest()
MRTD = hashlib.sha384(b"enclave-infer e2e: the trust domain").digest()
MEASUREMENT = hashlib.sha384(b"enclave-infer e2e: the SEV-SNP guest").digest()
# dcap-qvl's HTTP client honours proxy variables; every service here is on loopback.
PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
FAKE_LIFETIME = 300.0  # seconds the fake kernels serve: longer than this module runs
START_TIMEOUT = 60.0
RETRY = 0.5  # the host's first collateral retry, in seconds (serve's is 15)
# A PCCS that comes up is found at the next retry: 0.5 to 4 s later here, unless the machine is slow.
RECOVERY_SECONDS = 10.0
COLLATERAL_UNAVAILABLE = "urn:enclave-infer:problem:collateral-unavailable"


# --- processes -----------------------------------------------------------------------------------


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""  # a host's, once it listens

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def launch(module: str, args: list[str], log: Path) -> Proc:
    """``python -m MODULE ARGS`` from the repository, its output in ``log``."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=REPOSITORY,
        )
    return Proc(process, log)


@dataclass
class Deployments:
    """Starts enclave and host processes of one test module, all with the same configuration."""

    workdir: Path
    config: Path  # the canonical configuration both processes load

    def enclave(self, name: str, platform: str, root: Path, *, ccel: Path | None = None) -> tuple[Proc, str]:
        """The enclave process on a fake tree, on TCP loopback (a TD's CC event log at ``ccel``); its
        address for the host."""
        address = f"tcp:127.0.0.1:{free_port()}"
        args = [
            "--platform",
            platform,
            "--root",
            str(root),
            "--listen",
            address,
            "--config",
            str(self.config),
        ]
        args += ["--storage", str(self.workdir / f"{name}-sealed")]
        if ccel is not None:
            args += ["--ccel", str(ccel)]
        proc = launch("tests.emulation.run_enclave", args, self.workdir / f"{name}.log")
        deadline = time.monotonic() + START_TIMEOUT
        while "enclave listening on" not in proc.log_text():
            if proc.process.poll() is not None or time.monotonic() > deadline:
                proc.stop()
                raise AssertionError("the enclave did not start:\n" + proc.log_text())
            time.sleep(0.05)
        return proc, address

    def host(self, name: str, enclave: str, verifier: Verifier, *, pccs: str = "", kds: str = "") -> Proc:
        """The host attached to ``enclave``, appraising it with ``verifier``'s roots, its data in
        ``workdir/name``; returns once it listens."""
        spec = {
            "config": str(self.config),
            "data_dir": str(self.workdir / name),
            "enclave": enclave,
            "pccs": pccs or None,
            "kds": kds or None,
            "intel_root_ca_der": verifier.intel_root_ca_der.hex() if verifier.intel_root_ca_der else None,
            "snp_roots": {p: der.hex() for p, der in verifier.snp_roots.items()}
            if verifier.snp_roots
            else None,
            "collateral_first_retry": RETRY,
        }
        spec_path = self.workdir / f"{name}.json"
        spec_path.write_text(json.dumps(spec))
        proc = launch("tests.emulation.run_host", [str(spec_path)], self.workdir / f"{name}.log")
        try:
            proc.url = wait_until_listening(proc.process, proc.log, timeout=START_TIMEOUT)
        except AssertionError:
            proc.stop()
            raise
        return proc


@dataclass
class Colours:
    """The colour model of conftest.py, its owner's key, and a red image."""

    model: bytes
    owner_key: Ed25519PrivateKey
    red: bytes

    def classify_verified(
        self, url: str, constraint: str, verifier: Verifier, tee: str, code_hash: bytes
    ) -> None:
        """Attest with ``verifier``; provision the model unless it is served; classify red."""
        with Client(url, constraint, verifier=verifier) as client:
            report = client.attest().report
            assert (report.tee, report.code_hash, report.security_level) == (
                tee,
                code_hash,
                SecurityLevel.SECURE,
            )
            if client.model_info() is None:
                client.provision(self.model, COLOUR_LABELS, self.owner_key)
            assert client.classify(self.red).results[0].label == "red"
            # a receipt over hardware evidence: the SDK verified it; every byte of the report, and of
            # a quote up to its PCK chain, is signed, so no change to it goes unnoticed (the PEM
            # chain a quote embeds is not read when the collateral carries the PCK chain, as the
            # host's here does: dcap-qvl verifies the one from the collateral)
            signed = client.classify(self.red, receipt=True).receipt
            assert signed is not None
            kept = receipt.Receipt.decode(signed)
            _, attestation = receipt.verify(
                kept, constraints.parse(constraint), verifier=verifier, image=self.red
            )
            assert (attestation.report.code_hash, attestation.report.security_level) == (
                code_hash,
                SecurityLevel.SECURE,
            )
            document, policy = Evidence.decode(kept.evidence), constraints.parse(constraint)
            assert document.collateral or tee == "sev-snp"  # the host handed its enclave the collateral
            platform = document.evidence
            signed_part = platform.split(b"-----BEGIN CERTIFICATE-----")[0]
            for i in range(0, len(signed_part), max(1, len(signed_part) // 48)):
                flipped = bytearray(platform)
                flipped[i] ^= 0x01
                forged = dataclasses.replace(document, evidence=bytes(flipped)).encode()
                with pytest.raises(AttestationError):
                    receipt.verify(dataclasses.replace(kept, evidence=forged), policy, verifier=verifier)


def refused_in_production(url: str, constraint: str, reason: str) -> None:
    """The production verifier (Intel's and AMD's roots), in the SDK and in the CLI, refuses."""
    with Client(url, constraint) as client, pytest.raises(AttestationError, match=reason):
        client.attest()
    attest = run_cli("attest", url, constraint)
    assert attest.returncode == 1 and attest.stdout == ""
    assert re.fullmatch(rf"enclave-infer: error: .*{reason}.*\n", attest.stderr), attest.stderr


def served_document(url: str) -> dict[str, str]:
    """The evidence document the host serves, for a fresh nonce."""
    answer = httpx.get(f"{url}/v1/attestation", params={"nonce": secrets.token_hex(32)})
    document: dict[str, str] = answer.json()
    return document


def served_collateral(url: str) -> tuple[str, bytes]:
    """The TEE and the collateral of the evidence document the host serves."""
    document = served_document(url)
    return document["tee"], base64.b64decode(document.get("collateral", ""))


def assert_logged_report(host: Proc, code_hash: bytes, tee: str) -> None:
    """The host appraised its own enclave and logged the report, as ``serve`` does."""
    log = host.log_text()
    assert f"Remote attestation for enclave {code_hash.hex().upper()}:" in log, log
    assert f"Mode: RELEASE ({tee})" in log and re.search(r"Assessed security level at \S+ is SECURE", log)


def current_pccs(dcap: EmulatedDcap, port: int = 0) -> FakePccs:
    """A PCCS whose collateral is valid now (the emulation's default dates are fixed ones)."""
    today = datetime.now(UTC).replace(microsecond=0)
    issued, expires = today - timedelta(days=1), today + timedelta(days=30)
    return FakePccs(dcap, issue_date=issued, next_update=expires, port=port)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployments(workdir: Path, owner_key: Path) -> Deployments:
    config = EnclaveConfig(owner_public_key=load_public_key_file(Path(f"{owner_key}.pub")))
    path = workdir / "enclave.json"  # what serve writes to DATA_DIR/enclave.json
    path.write_bytes(config.canonical())
    return Deployments(workdir, path)


@pytest.fixture(scope="module")
def colours(owner_key: Path, files: dict[str, Path]) -> Colours:
    return Colours(files["model"].read_bytes(), load_owner_key(owner_key), files["red"].read_bytes())


@pytest.fixture(scope="module")
def dcap() -> EmulatedDcap:
    return EmulatedDcap()


@pytest.fixture(scope="module")
def intel_test_root(dcap: EmulatedDcap) -> Verifier:
    return Verifier(intel_root_ca_der=dcap.root_ca_der)


@pytest.fixture(scope="module")
def pccs(dcap: EmulatedDcap) -> Iterator[FakePccs]:
    with current_pccs(dcap) as pccs:
        yield pccs


@pytest.fixture(scope="module")
def sgx_enclave(workdir: Path, dcap: EmulatedDcap, deployments: Deployments) -> Iterator[str]:
    """An enclave process under "Gramine": a fake /dev/attestation minting SGX v3 quotes."""

    def quote(_: int, report_data: bytes) -> bytes:
        return dcap.sgx_quote(report_data, mrenclave=MRENCLAVE, mrsigner=MRSIGNER, isv_prod_id=1, isv_svn=1)

    gramine = FakeGramine(workdir / "attestation", make_quote=quote, lifetime=FAKE_LIFETIME)
    try:
        enclave, address = deployments.enclave("sgx-enclave", "gramine-sgx", gramine.root)
        yield address
        enclave.stop()
    finally:
        gramine.close()


@pytest.fixture
def tsm_root(tmp_path: Path) -> Path:
    return tmp_path / "tsm" / "report"


# --- the three platforms -------------------------------------------------------------------------

SGX_CONSTRAINT = f"C:{MRENCLAVE.hex()} SEC:SECURE"


def test_sgx_via_gramine_with_collateral_from_the_pccs(
    deployments: Deployments, sgx_enclave: str, intel_test_root: Verifier, pccs: FakePccs, colours: Colours
) -> None:
    tcb_path = "/sgx/certification/v4/tcb"
    fetched = pccs.requests[tcb_path]
    host = deployments.host("sgx-host", sgx_enclave, intel_test_root, pccs=pccs.url)
    try:
        assert pccs.requests[tcb_path] == fetched + 1  # the host fetched the collateral itself
        assert f"collateral from PCCS {pccs.url}, valid until" in host.log_text()
        assert_logged_report(host, MRENCLAVE, "sgx")
        tee, collateral = served_collateral(host.url)
        assert tee == "sgx"
        assert json.loads(collateral)["tcb_info"] == pccs.collateral["sgx"].tcb_info.body
        colours.classify_verified(host.url, SGX_CONSTRAINT, intel_test_root, "sgx", MRENCLAVE)
        refused_in_production(host.url, SGX_CONSTRAINT, "DCAP quote did not verify")
        assert pccs.requests[tcb_path] == fetched + 1  # clients used what the host served
    finally:
        host.stop()


def test_tdx_via_configfs_tsm(
    deployments: Deployments, tsm_root: Path, dcap: EmulatedDcap, intel_test_root: Verifier,
    pccs: FakePccs, colours: Colours, tmp_path: Path,
) -> None:  # fmt: skip
    """A TD that booted a UKI: its quotes carry the RTMRs its CC event log replays to, and its
    attestation document carries that log."""
    tcb_path = "/tdx/certification/v4/tcb"
    fetched = pccs.requests[tcb_path]
    boot = boot_uki(uki())
    ccel = tmp_path / "CCEL"
    ccel.write_bytes(boot.log_area())

    def quote(report_data: bytes) -> bytes:
        return dcap.tdx_quote(report_data, mrtd=MRTD, rtmrs=boot.rtmrs)

    fake = FakeTsm(tsm_root, None, provider="tdx_guest", make_outblob=quote, lifetime=FAKE_LIFETIME)
    try:
        enclave, address = deployments.enclave("tdx-enclave", "tsm", tsm_root, ccel=ccel)
        host = deployments.host("tdx-host", address, intel_test_root, pccs=pccs.url)
        try:
            assert pccs.requests[tcb_path] == fetched + 1
            assert_logged_report(host, MRTD, "tdx")
            assert served_collateral(host.url)[0] == "tdx"
            constraint = f"C:{MRTD.hex()} SEC:SECURE"
            colours.classify_verified(host.url, constraint, intel_test_root, "tdx", MRTD)
            with Client(host.url, constraint, verifier=intel_test_root) as client:
                registers = client.attest().report.registers
            assert registers is not None and registers.values == dict(enumerate(boot.rtmrs))
            assert base64.b64decode(served_document(host.url)["event_log"]) == boot.log()
            refused_in_production(host.url, constraint, "DCAP quote did not verify")
        finally:
            host.stop()
            enclave.stop()
    finally:
        fake.close()
    assert fake.created and not list(tsm_root.iterdir())  # every entry the enclave made, it removed


def test_sev_snp_via_configfs_tsm_with_certificates_from_the_kds(
    deployments: Deployments, tsm_root: Path, colours: Colours
) -> None:
    chip = EmulatedSnp("Genoa")
    amd_test_root = Verifier(snp_roots={"Genoa": chip.ark_der})

    def report(report_data: bytes) -> bytes:
        return chip.report(report_data, MEASUREMENT)

    fake = FakeTsm(tsm_root, None, provider="sev_guest", make_outblob=report, lifetime=FAKE_LIFETIME)
    try:
        enclave, address = deployments.enclave("snp-enclave", "tsm", tsm_root)
        with FakeKds(chip) as kds:
            host = deployments.host("snp-host", address, amd_test_root, kds=kds.url)
            try:
                crl_path = f"/vcek/v1/{chip.product}/crl"
                assert kds.requests == {kds.vcek_path: 1, kds.chain_path: 1, crl_path: 1}
                tcb = chip.reported_tcb
                query = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
                assert kds.log[0] == f"{kds.vcek_path}?{query}"
                assert_logged_report(host, MEASUREMENT, "sev-snp")
                tee, served = served_collateral(host.url)  # VCEK, ASK, ARK, and AMD's CRL
                assert tee == "sev-snp" and served.startswith(chip.collateral)
                assert served.endswith(b"-----END X509 CRL-----\n")
                constraint = f"C:{MEASUREMENT.hex()} SEC:SECURE"
                colours.classify_verified(host.url, constraint, amd_test_root, "sev-snp", MEASUREMENT)
                refused_in_production(host.url, constraint, "not signed by a pinned AMD root")
                crl_path = f"/vcek/v1/{chip.product}/crl"
                assert kds.requests == {kds.vcek_path: 1, kds.chain_path: 1, crl_path: 1}
            finally:
                host.stop()
                enclave.stop()
    finally:
        fake.close()
    assert fake.created and not list(tsm_root.iterdir())


# --- collateral: unavailable at start, then cached -----------------------------------------------


def test_collateral_unavailable_at_start_then_the_pccs_comes_up(
    deployments: Deployments, sgx_enclave: str, dcap: EmulatedDcap, intel_test_root: Verifier,
    colours: Colours,
) -> None:  # fmt: skip
    port = free_port()  # nothing listens there yet: connection refused
    down = f"http://127.0.0.1:{port}"
    host = deployments.host("late-host", sgx_enclave, intel_test_root, pccs=down)
    try:
        why = [line for line in host.log_text().splitlines() if "no collateral for the sgx evidence" in line]
        assert len(why) == 1 and f"cannot fetch DCAP collateral from {down}" in why[0], host.log_text()
        assert "Remote attestation" not in host.log_text()
        answer = httpx.get(f"{host.url}/v1/attestation", params={"nonce": secrets.token_hex(32)})
        assert (answer.status_code, answer.headers["content-type"]) == (503, PROBLEM_MEDIA_TYPE)
        problem = answer.json()
        assert problem["type"] == Problem.COLLATERAL_UNAVAILABLE.uri == COLLATERAL_UNAVAILABLE
        assert down in problem["detail"]
        with Client(host.url, SGX_CONSTRAINT, verifier=intel_test_root) as client:
            with pytest.raises(UnavailableError) as refused:
                client.attest()
            assert refused.value.problem == COLLATERAL_UNAVAILABLE
        with current_pccs(dcap, port=port) as pccs:
            up = time.monotonic()
            while True:  # the keeper retries 0.5, 1.5, 3.5, 7.5 s after its first failure
                try:
                    colours.classify_verified(host.url, SGX_CONSTRAINT, intel_test_root, "sgx", MRENCLAVE)
                    break
                except UnavailableError:
                    assert time.monotonic() - up < RECOVERY_SECONDS, host.log_text()
                    time.sleep(0.1)
            assert pccs.requests["/sgx/certification/v4/tcb"] == 1
        assert_logged_report(host, MRENCLAVE, "sgx")
    finally:
        host.stop()


def test_a_second_start_with_the_pccs_down_serves_the_cached_collateral(
    deployments: Deployments, sgx_enclave: str, intel_test_root: Verifier, pccs: FakePccs
) -> None:
    deployments.host("cached-host", sgx_enclave, intel_test_root, pccs=pccs.url).stop()
    cached = json.loads((deployments.workdir / "cached-host" / "collateral.json").read_text())
    assert cached["source"] == f"PCCS {pccs.url}"
    requests = sum(pccs.requests.values())
    down = f"http://127.0.0.1:{free_port()}"
    again = deployments.host("cached-host", sgx_enclave, intel_test_root, pccs=down)
    try:
        log = again.log_text()
        assert f"collateral from cache (PCCS {pccs.url}), valid until" in log
        assert "no collateral" not in log and "cannot fetch" not in log  # it did not even try
        assert_logged_report(again, MRENCLAVE, "sgx")
        assert served_collateral(again.url) == ("sgx", bytes.fromhex(cached["data"]))
        with Client(again.url, SGX_CONSTRAINT, verifier=intel_test_root) as client:
            assert client.attest().report.security_level is SecurityLevel.SECURE
    finally:
        again.stop()
    assert sum(pccs.requests.values()) == requests


# --- the test roots stay in tests -----------------------------------------------------------------

# Words an option or configuration key that set trust roots would have in its name.
ROOT_WORDS = re.compile(r"root|(^|[-_])ca($|[-_])|cert|trust|anchor|ark|verifier|intel|amd", re.IGNORECASE)
# serve's own HTTPS identity (the certificate it presents, not one it trusts), and the certificate a
# client trusts for an https:// host's TLS (the transport only; evidence is verified with the roots in
# code whatever TLS trusts): not attestation roots
NOT_ROOTS = {"tls-cert", "tls-key", "cacert"}
NOT_ROOT_FIELDS = {"ca_file"}  # ClientConfig's --cacert
# The only reads of the environment in the package: the CLI's traceback switch, and the names the
# host passes on to the enclave process (host/enclave_process.py).
KNOWN_ENVIRONMENT = {
    ("cli/main.py", "ENCLAVE_INFER_DEBUG"),
    ("host/enclave_process.py", "_PASSED_ENVIRONMENT"),
}
PASSED_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "HOME")


def help_text(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """What ``enclave-infer ARGS --help`` prints (the console script's own entry point)."""
    with pytest.raises(SystemExit) as done:
        cli_main([*args, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def environment_reads(path: Path) -> set[tuple[str, str]]:
    """(module, what it reads) for each use of ``os.environ``/``getenv``: the string constants and
    CONSTANT names of the expression around it."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    reads = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "environb", "getenv", "putenv"):
            top: ast.AST = node
            while isinstance(parents.get(top), ast.expr | ast.comprehension):
                top = parents[top]
            for part in ast.walk(top):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    reads.add((path.relative_to(SOURCE).as_posix(), part.value))
                elif isinstance(part, ast.Name) and re.fullmatch(r"_?[A-Z][A-Z_]+", part.id):
                    reads.add((path.relative_to(SOURCE).as_posix(), part.id))
    return reads


def test_no_option_variable_or_key_accepts_another_root(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # every command's options
    commands = re.findall(r"^ {4}([a-z][a-z-]+)(?: {2,}|$)", help_text(capsys), re.MULTILINE)
    assert {"serve", "attest", "classify", "provision", "model", "verify-evidence"} <= set(commands)
    for command in commands:
        options = re.findall(r"(?<![\w-])--?([a-z][\w-]*)", help_text(capsys, command))
        rootish = [o for o in options if ROOT_WORDS.search(o) and o not in NOT_ROOTS]
        assert "help" in options and not rootish, (command, options)
    # the measured configuration and the client's: no such field, and an unknown key is an error
    fields = {f.name for cls in (EnclaveConfig, Limits, ClientConfig) for f in dataclasses.fields(cls)}
    assert fields and not [name for name in fields - NOT_ROOT_FIELDS if ROOT_WORDS.search(name)], fields
    toml = tmp_path / "enclave.toml"
    for text, refusal in [
        ('intel_root_ca_der = "00"\n', "unknown enclave configuration key"),
        ('[limits]\nsnp_roots = "00"\n', "unknown key.* in \\[limits\\]"),
    ]:
        toml.write_text(text)
        with pytest.raises(UsageError, match=refusal):
            EnclaveConfig.load(toml, owner_public_key=bytes(32))
    # the environment: only the known reads
    reads = set().union(*(environment_reads(path) for path in SOURCE.rglob("*.py")))
    assert reads == KNOWN_ENVIRONMENT
    process = ast.parse((SOURCE / "host" / "enclave_process.py").read_text())
    passed = [
        ast.literal_eval(node.value)
        for node in ast.walk(process)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_PASSED_ENVIRONMENT"
    ]
    assert passed == [PASSED_ENVIRONMENT]
    # nothing in the package builds a Verifier with roots: only Verifier() / Verifier.production()
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Verifier":
                assert not node.args and not node.keywords, f"{path.name}:{node.lineno} builds a Verifier"
