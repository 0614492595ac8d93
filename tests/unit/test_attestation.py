"""Simulation evidence, the report-data binding, and the order of verification steps."""

import dataclasses
import hashlib
import json
import logging
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_infer.attestation import constraints, evidence, receipt, simulation
from enclave_infer.attestation.measurement import code_hash, trusted_files
from enclave_infer.attestation.report import SecurityLevel, Tee, attestation_binding
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.platform import SimulationPlatform
from enclave_infer.enclave.receipts import Receipts
from enclave_infer.errors import AttestationError, ConstraintError
from enclave_infer.protocol import bhttp, ohttp
from enclave_infer.protocol.manifest import parse_sf_binary

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CONFIG = EnclaveConfig(owner_public_key=bytes(range(32)))
RECEIPT_KEY = b"r" * 32
PRODUCTION = evidence.Verifier.production()


def make_document(key_config: bytes, nonce: bytes, config: EnclaveConfig = CONFIG) -> bytes:
    report_data = attestation_binding(key_config, RECEIPT_KEY, config.digest(), nonce)
    sim = simulation.encode(
        code_hash=code_hash(config), signer=b"\x01" * 32, product_id=config.product_id,
        security_version=config.security_version, debug=False, report_data=report_data, issued_at=NOW,
    )  # fmt: skip
    return evidence.Evidence(Tee.SIMULATION, sim, config.canonical(), receipt_key=RECEIPT_KEY).encode()


@pytest.fixture
def key_config() -> bytes:
    return ohttp.GatewayKey.generate().config.encode()


def test_binding_is_sha512_of_label_key_config_digest_nonce(key_config: bytes) -> None:
    nonce = b"n" * 32
    expected = hashlib.sha512(
        b"enclave-infer attestation v2\x00"
        + len(key_config).to_bytes(2, "big") + key_config
        + bytes([32]) + RECEIPT_KEY
        + CONFIG.digest()
        + bytes([32]) + nonce
    ).digest()  # fmt: skip
    assert attestation_binding(key_config, RECEIPT_KEY, CONFIG.digest(), nonce) == expected
    assert len(expected) == 64


def test_verify_accepts_bound_simulation_evidence(key_config: bytes) -> None:
    nonce = b"x" * 32
    c = constraints.parse(f"C:{code_hash(CONFIG).hex()} SEC:INSECURE")
    att = evidence.verify(
        make_document(key_config, nonce), c, verifier=PRODUCTION, key_config=key_config, nonce=nonce, now=NOW
    )
    assert att.report.security_level is SecurityLevel.INSECURE
    assert att.config == CONFIG
    assert att.report.owner_key_id == hashlib.sha256(bytes(range(32))).digest()
    assert "Assessed security level" in att.summary(now=NOW)


def test_simulation_is_never_secure(key_config: bytes) -> None:
    nonce = b"x" * 32
    c = constraints.parse(f"C:{code_hash(CONFIG).hex()}")
    with pytest.raises(ConstraintError, match="INSECURE is below SEC:SECURE"):
        evidence.verify(
            make_document(key_config, nonce),
            c,
            verifier=PRODUCTION,
            key_config=key_config,
            nonce=nonce,
            now=NOW,
        )


def test_replayed_evidence_with_other_nonce_is_refused(key_config: bytes) -> None:
    c = constraints.parse(f"C:{code_hash(CONFIG).hex()} SEC:INSECURE")
    old = make_document(key_config, b"a" * 32)
    with pytest.raises(AttestationError, match="not bound"):
        evidence.verify(old, c, verifier=PRODUCTION, key_config=key_config, nonce=b"b" * 32, now=NOW)


def test_substituted_key_config_is_refused(key_config: bytes) -> None:
    nonce = b"x" * 32
    c = constraints.parse(f"C:{code_hash(CONFIG).hex()} SEC:INSECURE")
    other = ohttp.GatewayKey.generate().config.encode()
    with pytest.raises(AttestationError, match="not bound"):
        evidence.verify(
            make_document(key_config, nonce), c, verifier=PRODUCTION, key_config=other, nonce=nonce, now=NOW
        )


def test_config_swapped_in_document_is_refused(key_config: bytes) -> None:
    nonce = b"x" * 32
    doc = evidence.Evidence.decode(make_document(key_config, nonce))
    other = EnclaveConfig(owner_public_key=b"\xff" * 32)
    forged = evidence.Evidence(doc.tee, doc.evidence, other.canonical(), receipt_key=RECEIPT_KEY).encode()
    c = constraints.parse(f"C:{code_hash(CONFIG).hex()} SEC:INSECURE")
    with pytest.raises(AttestationError, match="not bound"):
        evidence.verify(forged, c, verifier=PRODUCTION, key_config=key_config, nonce=nonce, now=NOW)


@pytest.mark.parametrize(
    "document", [b"", b"{}", b"[1]", b'{"version": 1, "tee": "sgx", "evidence": "", "config": ""}']
)
def test_malformed_documents(document: bytes, key_config: bytes) -> None:
    c = constraints.parse(f"C:{'00' * 32} SEC:INSECURE")
    with pytest.raises(AttestationError):
        evidence.verify(document, c, verifier=PRODUCTION, key_config=key_config, nonce=b"x" * 32, now=NOW)


@pytest.mark.parametrize("tee", list(Tee))
def test_each_tee_round_trips_through_the_document_with_its_wire_name(tee: Tee) -> None:
    """The enum is the wire's string: the document carries exactly the name it carried as a plain
    string, and decoding gives back the member, not a string."""
    document = evidence.Evidence(tee, b"evidence", b"config", b"collateral", RECEIPT_KEY).encode()
    assert json.loads(document)["tee"] == tee.value
    assert document == json.dumps(
        {"version": 2, "tee": tee.value, "evidence": "ZXZpZGVuY2U=", "config": "Y29uZmln",
         "receipt_key": "cnJycnJycnJycnJycnJycnJycnJycnJycnJycnJycnI=", "collateral": "Y29sbGF0ZXJhbA=="}
    ).encode()  # fmt: skip
    decoded = evidence.Evidence.decode(document)
    assert decoded.tee is tee
    assert decoded == evidence.Evidence(tee, b"evidence", b"config", b"collateral", RECEIPT_KEY)
    assert Tee.parse(tee.value) is tee


@pytest.mark.parametrize("name", ["sev", "SGX", "sev_snp", "", 3, None, ["sgx"]])
def test_an_unknown_tee_is_refused_as_an_attestation_error(name: object, key_config: bytes) -> None:
    """A TEE name this verifier does not know, from the wire: AttestationError naming it, from
    decoding already (never a ValueError from the enum)."""
    document = json.dumps({"version": 2, "tee": name, "evidence": "", "config": ""}).encode()
    with pytest.raises(AttestationError, match="unknown TEE type") as refused:
        evidence.Evidence.decode(document)
    assert type(refused.value) is AttestationError
    c = constraints.parse(f"C:{'00' * 32} SEC:INSECURE")
    with pytest.raises(AttestationError, match="unknown TEE type"):
        evidence.verify(document, c, verifier=PRODUCTION, key_config=key_config, nonce=b"x" * 32, now=NOW)
    with pytest.raises(AttestationError, match="unknown TEE type"):
        Tee.parse(name)


def test_a_policy_free_verification_is_explicit_and_logged(
    key_config: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """verify() takes a policy, always: where none applies, the caller names UnsafeNoPolicy and why,
    and every enclave it lets through is logged as a warning."""
    nonce = b"x" * 32
    policy = evidence.UnsafeNoPolicy("a test without a client")
    with caplog.at_level(logging.WARNING, logger="enclave_infer.attestation.evidence"):
        att = evidence.verify(
            make_document(key_config, nonce),
            policy,
            verifier=PRODUCTION,
            key_config=key_config,
            nonce=nonce,
            now=NOW,
        )
    assert att.config == CONFIG
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert code_hash(CONFIG).hex().upper() in record.getMessage()
    assert "no policy checked" in record.getMessage() and "a test without a client" in record.getMessage()
    # the evidence is still verified in full: a wrong nonce is refused, and nothing is logged
    caplog.clear()
    with pytest.raises(AttestationError, match="not bound"):
        evidence.verify(
            make_document(key_config, nonce),
            policy,
            verifier=PRODUCTION,
            key_config=key_config,
            nonce=b"y" * 32,
            now=NOW,
        )
    assert not caplog.records


def test_measurement_covers_code_and_config() -> None:
    files = {p.as_posix() for p in trusted_files()}
    assert "enclave/gateway.py" in files and "protocol/ohttp.py" in files
    assert not any(f.startswith(("host/", "client/", "cli/")) for f in files)
    assert code_hash(CONFIG) == code_hash(EnclaveConfig(owner_public_key=bytes(range(32))))
    assert code_hash(CONFIG) != code_hash(EnclaveConfig(owner_public_key=bytes(range(32)), product_id=2))
    assert code_hash(CONFIG) != code_hash(EnclaveConfig(owner_public_key=b"\x07" * 32))


def test_measurement_changes_with_code(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from enclave_infer.attestation.measurement import package_root

    copy = tmp_path / "pkg"
    shutil.copytree(package_root(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_hash(CONFIG, copy) == code_hash(CONFIG)
    (copy / "host" / "app.py").write_text("# untrusted side: not measured\n")
    assert code_hash(CONFIG, copy) == code_hash(CONFIG)
    gateway = copy / "enclave" / "gateway.py"
    gateway.write_text(gateway.read_text() + "\n# one more line\n")
    assert code_hash(CONFIG, copy) != code_hash(CONFIG)


# -- receipts, through the CLI ---------------------------------------------------------------------------


def signed_receipt(image: bytes, answer: bytes, config: EnclaveConfig = CONFIG) -> receipt.Receipt:
    """What a client keeps: the enclave's signed receipt (a simulation enclave's, signed in this
    process as the enclave signs it) with the answer it covers added."""
    key = ohttp.GatewayKey.generate()
    signer = Receipts(Ed25519PrivateKey.generate(), SimulationPlatform(config), config, key.config.encode)
    request = bhttp.Request("POST", "https", "enclave", "/v1/classify", (), image)
    _, header = signer.header(request, answer, "ab" * 32, 1)
    return dataclasses.replace(receipt.Receipt.decode(parse_sf_binary(header)), response=answer.decode())


def verify_receipt_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cli = str(Path(sys.executable).with_name("enclave-infer"))
    return subprocess.run(
        [cli, "verify-receipt", *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )


def test_verify_receipt_refuses_a_receipt_whose_answer_was_removed(tmp_path: Path) -> None:
    """The answer is what a receipt is proof of: without it, anyone could put another answer beside
    the signed statement. verify-receipt passed such a receipt (and printed no answer)."""
    image, answer = b"an image", b'{"results": [{"label": "cat", "index": 0, "probability": 0.75}]}'
    kept = signed_receipt(image, answer)
    (tmp_path / "image").write_bytes(image)
    whole, stripped = tmp_path / "whole.json", tmp_path / "stripped.json"
    whole.write_bytes(kept.encode())
    document = json.loads(kept.encode())
    del document["response"]
    stripped.write_text(json.dumps(document))
    constraint = f"C:{code_hash(CONFIG).hex()} SEC:INSECURE"
    ok = verify_receipt_cli(whole, "--image", tmp_path / "image", "--constraint", constraint)
    assert ok.returncode == 0, ok.stderr
    assert "answer: cat (75.0%)" in ok.stdout
    refused = verify_receipt_cli(stripped, "--image", tmp_path / "image", "--constraint", constraint)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "enclave-infer: error: receipt refused: it carries no answer (the answer it covers was removed)"
    )
    with pytest.raises(receipt.ReceiptError, match="carries no answer"):
        receipt.verify(
            dataclasses.replace(kept, response=None),
            constraints.parse(constraint),
            verifier=PRODUCTION,
            image=image,
        )


def test_a_receipt_whose_evidence_names_an_unknown_tee_is_refused() -> None:
    kept = signed_receipt(b"an image", b'{"results": []}')
    document = json.loads(kept.evidence)
    assert document["tee"] == "simulation"
    document["tee"] = "sev"
    forged = dataclasses.replace(kept, evidence=json.dumps(document).encode())
    policy = constraints.parse(f"C:{code_hash(CONFIG).hex()} SEC:INSECURE")
    with pytest.raises(receipt.ReceiptError, match="its evidence: unknown TEE type 'sev'"):
        receipt.verify(forged, policy, verifier=PRODUCTION, image=b"an image")


def test_a_receipt_without_a_constraint_is_refused_unless_told_it_proves_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A receipt minted by an enclave of another measurement (another configuration, so another code
    hash) verified without a constraint: "receipt verified", exit 0. Both verify-receipt and the
    SDK now ask for a constraint, or for an explicit statement that the check proves nothing."""
    import enclave_infer

    other = EnclaveConfig(owner_public_key=b"\x07" * 32)
    assert code_hash(other) != code_hash(CONFIG)
    image, answer = b"an image", b'{"results": [{"label": "cat", "index": 0, "probability": 0.75}]}'
    kept = signed_receipt(image, answer, other)
    path = tmp_path / "theirs.json"
    path.write_bytes(kept.encode())
    ours = f"C:{code_hash(CONFIG).hex()} SEC:INSECURE"
    # the CLI
    assert verify_receipt_cli(path, "--constraint", ours).returncode == 1
    bare = verify_receipt_cli(path)
    assert bare.returncode == 1 and "receipt verified" not in bare.stdout
    assert bare.stderr.strip() == (
        "enclave-infer: error: a receipt verified without a constraint proves nothing about which enclave"
        ' minted it: give the enclave\'s, e.g. --constraint "C:<code hash> SEC:SECURE" (or IMAGE:<pin>), or'
        " --unsafe-no-constraint to check its signature and answer only"
    )
    unsafe = verify_receipt_cli(path, "--unsafe-no-constraint")
    assert unsafe.returncode == 0, unsafe.stderr
    assert code_hash(other).hex().upper() in unsafe.stdout and "constraint: none" in unsafe.stdout
    assert "proves nothing about which enclave minted the receipt" in unsafe.stderr
    theirs = verify_receipt_cli(path, "--constraint", f"C:{code_hash(other).hex()} SEC:INSECURE")
    assert theirs.returncode == 0 and "constraint: C:" in theirs.stdout
    assert "warning: no constraint" not in theirs.stderr
    # the SDK
    document = kept.encode()
    with pytest.raises(enclave_infer.UsageError, match="without a constraint proves nothing"):
        enclave_infer.verify_receipt(document, None, image=image)
    with pytest.raises(ConstraintError):
        enclave_infer.verify_receipt(document, ours, image=image)
    with caplog.at_level(logging.WARNING, logger="enclave_infer.attestation.evidence"):
        statement, att = enclave_infer.verify_receipt(
            document, enclave_infer.UnsafeNoPolicy("a test: which enclave does not matter"), image=image
        )
    assert att.report.code_hash == code_hash(other) and statement.model_version == 1
    (record,) = caplog.records
    assert "no policy checked" in record.getMessage()
    assert code_hash(other).hex().upper() in record.getMessage()
    with pytest.raises(receipt.ReceiptError, match="not the one the receipt covers"):
        enclave_infer.verify_receipt(document, enclave_infer.UnsafeNoPolicy("a test"), image=b"another")
