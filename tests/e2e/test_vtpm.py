"""The vTPM platform end to end: an enclave process quoting with a real swtpm, ``enclave-infer serve``
attached to it, and clients that pin the PCR digest.

Real: swtpm (a TPM 2.0, libtpms) on TCP loopback, its PCRs extended with the events of the VM's
captured boot log (tests/vectors/measured-boot, as tpm2_eventlog reads it) as the firmware did; the
enclave process running the product's ``serve(Enclave(VtpmPlatform(...)))`` (launched by
``tests/emulation/run_enclave.py``, which points the platform at swtpm's socket instead of
``/dev/tpmrm0``: the product has no switch for it); the ``enclave-infer serve --enclave`` host and
``enclave-infer attest`` CLIs; the SDK provisioning and classifying; every quote and signature.
Nothing is emulated; nothing binds the TPM's key to hardware, so everything is INSECURE, and a client
must say ``SEC:INSECURE``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from enclave_infer import Client
from enclave_infer.attestation import constraints, receipt
from enclave_infer.attestation.evidence import Verifier
from enclave_infer.attestation.report import SecurityLevel, Tee
from enclave_infer.attestation.tpm import QUOTED_PCRS, SOFTWARE_TPM_REASON
from enclave_infer.client._owner import load_owner_key
from enclave_infer.config import EnclaveConfig, load_public_key_file
from tests.emulation.swtpm import Swtpm, need_tpm2_tools, start_swtpm

from .conftest import COLOUR_LABELS, Deployment, free_port, run_cli, start_server, stop_server

REPOSITORY = Path(__file__).resolve().parents[2]
BOOT_LOG = REPOSITORY / "tests" / "vectors" / "measured-boot" / "ovmf-swtpm-uki.tpm-eventlog"
START_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def booted(workdir: Path) -> Iterator[tuple[Swtpm, bytes, Path]]:
    """A swtpm whose PCRs hold what the VM's boot measured; its pcrDigest over PCRs 0-15; the log."""
    need_tpm2_tools()
    swtpm = start_swtpm(workdir / "swtpm")
    try:
        log = workdir / "tpm-eventlog"
        log.write_bytes(BOOT_LOG.read_bytes())
        pcrs = swtpm.boot(log, workdir)
        yield swtpm, hashlib.sha256(b"".join(pcrs[i] for i in QUOTED_PCRS)).digest(), log
    finally:
        swtpm.stop()


@pytest.fixture(scope="module")
def host(workdir: Path, owner_key: Path, booted: tuple[Swtpm, bytes, Path]) -> Iterator[Deployment]:
    """The enclave process on swtpm, and ``enclave-infer serve --enclave`` attached to it."""
    swtpm, _, log = booted
    config = workdir / "vtpm-enclave.json"
    config.write_bytes(
        EnclaveConfig(owner_public_key=load_public_key_file(Path(f"{owner_key}.pub"))).canonical()
    )
    address = f"tcp:127.0.0.1:{free_port()}"
    enclave_log = workdir / "vtpm-enclave.log"
    with enclave_log.open("wb") as out:
        enclave = subprocess.Popen(
            [sys.executable, "-m", "tests.emulation.run_enclave", "--platform", "vtpm",
             "--tpm", str(swtpm.address), "--event-log", str(log), "--listen", address,
             "--config", str(config), "--storage", str(workdir / "vtpm-sealed")],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPOSITORY, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "enclave listening on" not in enclave_log.read_text(errors="replace"):
            if enclave.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the enclave did not start:\n" + enclave_log.read_text(errors="replace"))
            time.sleep(0.05)
        deployment = start_server(
            workdir, owner_key, data_dir=workdir / "vtpm-host", extra=("--enclave", address)
        )
        try:
            yield deployment
        finally:
            stop_server(deployment)
    finally:
        enclave.terminate()
        enclave.wait(timeout=20)


def test_a_client_pinning_the_pcr_digest_attests_and_classifies(
    host: Deployment, booted: tuple[Swtpm, bytes, Path], owner_key: Path, files: dict[str, Path]
) -> None:
    _, digest, log = booted
    constraint = f"C:{digest.hex()} SEC:INSECURE"
    attest = run_cli("attest", host.url, constraint)
    assert attest.returncode == 0, attest.stderr
    assert f"Remote attestation for enclave {digest.hex().upper()}:" in attest.stdout
    assert "Mode: RELEASE (vtpm)" in attest.stdout and SOFTWARE_TPM_REASON in attest.stdout
    with Client(host.url, constraint) as client:
        report = client.attest().report
        assert (report.tee, report.code_hash, report.security_level) == (
            Tee.VTPM,
            digest,
            SecurityLevel.INSECURE,
        )
        assert report.registers is not None and report.registers.values[4].hex() == (
            "1427d71490aa0289007b21fb59eb39bfe71de372cb0e675fc828e35c4b530fad"  # PCR 4 of the VM's boot
        )
        if client.model_info() is None:
            client.provision(files["model"].read_bytes(), COLOUR_LABELS, load_owner_key(owner_key))
        answer = client.classify(files["red"].read_bytes(), receipt=True)
    assert answer.results[0].label == "red" and answer.receipt is not None
    _, attestation = receipt.verify(
        receipt.Receipt.decode(answer.receipt),
        constraints.parse(constraint),
        verifier=Verifier.production(),
        image=files["red"].read_bytes(),
    )
    assert attestation.report.code_hash == digest
    # the host appraised its enclave at start, as serve does
    assert f"Remote attestation for enclave {digest.hex().upper()}:" in host.log_text()
    # the document carries the boot's event log for clients to replay
    document = httpx.get(f"{host.url}/v1/attestation", params={"nonce": secrets.token_hex(32)}).json()
    assert document["tee"] == "vtpm" and base64.b64decode(document["event_log"]) == log.read_bytes()


def test_the_level_and_another_digest_are_refused(
    host: Deployment, booted: tuple[Swtpm, bytes, Path]
) -> None:
    _, digest, _ = booted
    secure = run_cli("attest", host.url, f"C:{digest.hex()}")
    assert secure.returncode == 1 and secure.stdout == ""
    assert "security level INSECURE is below SEC:SECURE" in secure.stderr
    unbooted = hashlib.sha256(bytes(32 * 16)).hexdigest()  # a TPM no firmware measured into
    other = run_cli("attest", host.url, f"C:{unbooted} SEC:INSECURE")
    assert other.returncode == 1 and "is not one of the accepted C: values" in other.stderr
