"""The attestation document a client receives: Evidence.decode, then evidence.verify with a key
configuration and nonce; inside it the simulation verifier, DCAP (dcap.verify_quote, with garbage and
with edited quotes and collateral of an emulated Intel platform under a test root), and the measured
configuration (EnclaveConfig.from_canonical).

Input is raw bytes, or a valid document (simulation or DCAP evidence bound to a real configuration,
key configuration and nonce) with values replaced or bytes edited by the input. Beyond "only
AttestationError (any EnclaveInferError) escapes": an unedited document appraises.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import atheris

from _harness import EnclaveInferError, dumps, main, mutate_bytes, mutate_doc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.emulation: the DCAP platform

with atheris.instrument_imports(include=["enclave_infer"]):
    from tests.emulation.dcap import NOW, EmulatedDcap

    from enclave_infer.attestation import dcap, simulation
    from enclave_infer.attestation.evidence import Evidence, UnsafeNoPolicy, Verifier, verify
    from enclave_infer.attestation.report import attestation_binding
    from enclave_infer.config import EnclaveConfig
    from enclave_infer.protocol import ohttp

CONFIG = EnclaveConfig(owner_public_key=bytes(range(32)))
KEY_CONFIG = ohttp.GatewayKey(1, bytes(range(1, 33))).config.encode()
NONCE = bytes(range(16))
RECEIPT_KEY = bytes(range(32))
BINDING = attestation_binding(KEY_CONFIG, RECEIPT_KEY, CONFIG.digest(), NONCE)
DCAP = EmulatedDcap()
VERIFIER = Verifier(intel_root_ca_der=DCAP.root_ca_der)
PRODUCTION = Verifier.production()
# Steps 1 to 3 are what is fuzzed (the constraint language has its own tests): no policy, and its
# warning, logged for every input, silenced.
ANY_CODE = UnsafeNoPolicy("fuzzing the verification of evidence")
logging.getLogger("enclave_infer.attestation.evidence").setLevel(logging.ERROR)

SIMULATION = json.loads(
    simulation.encode(
        code_hash=bytes(32), signer=bytes(32), product_id=1, security_version=1, debug=False,
        report_data=BINDING, issued_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
)  # fmt: skip
QUOTES = {"sgx": DCAP.sgx_quote(BINDING), "tdx": DCAP.tdx_quote(BINDING)}
COLLATERAL = {tee: json.loads(DCAP.collateral(tee)) for tee in QUOTES}
TEES = ["simulation", "sgx", "tdx", "sev-snp", "nitro", ""]
KEYS = ("version", "tee", "evidence", "config", "collateral", "receipt_key", "format", "code_hash",
        "report_data", "issued_at", "debug", "product_id", "owner_public_key", "enclave_size", "limits",
        "max_pixels", "sealing_policy", "tcb_info", "qe_identity", "tcbInfo", "issueDate")  # fmt: skip


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def edit_text(fdp: atheris.FuzzedDataProvider, text: str) -> str:
    return mutate_bytes(fdp, text.encode()).decode("latin-1")


def outer(tee: str, evidence: bytes, config: object, collateral: bytes) -> dict[str, object]:
    doc = {
        "version": 2,
        "tee": tee,
        "evidence": b64(evidence),
        "receipt_key": b64(RECEIPT_KEY),
        "config": b64(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()),
    }
    if collateral:
        doc["collateral"] = b64(collateral)
    return doc


PRISTINE = {
    "simulation": json.dumps(
        outer("simulation", json.dumps(SIMULATION).encode(), json.loads(CONFIG.canonical()), b"")
    ),
    **{
        tee: json.dumps(
            outer(tee, QUOTES[tee], json.loads(CONFIG.canonical()), json.dumps(COLLATERAL[tee]).encode())
        )
        for tee in QUOTES
    },
}


def document(fdp: atheris.FuzzedDataProvider) -> tuple[bytes, bool]:
    """A valid document, edited where the input says; and whether it differs from the valid one."""
    tee = fdp.PickValueInList(["simulation", "sgx", "tdx"])
    config = json.loads(CONFIG.canonical())
    if fdp.ConsumeBool():
        config = mutate_doc(fdp, config, KEYS)
    if tee == "simulation":
        evidence = dumps(fdp, mutate_doc(fdp, copy.deepcopy(SIMULATION), KEYS))
        collateral = b""
    else:
        collateral_doc = copy.deepcopy(COLLATERAL[tee])
        if fdp.ConsumeBool():  # edit one of its strings as bytes (PEM, hex, the signed JSON)
            key = fdp.PickValueInList(sorted(collateral_doc))
            collateral_doc[key] = edit_text(fdp, collateral_doc[key])
        collateral = json.dumps(mutate_doc(fdp, collateral_doc, KEYS)).encode()
        evidence = mutate_bytes(fdp, QUOTES[tee])
    doc = outer(tee, evidence, config, collateral)
    if fdp.ConsumeBool():
        doc = mutate_doc(fdp, doc, KEYS)
    text = json.dumps(doc)
    return text.encode(), text != PRISTINE[tee]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 5)
    try:
        if mode == 0:
            Evidence.decode(fdp.ConsumeBytes(fdp.remaining_bytes()))
        elif mode == 1:
            key_config = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
            nonce = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 70))
            now = datetime.fromtimestamp(fdp.ConsumeIntInRange(0, 2**33), UTC)
            raw = fdp.ConsumeBytes(fdp.remaining_bytes())
            verify(raw, ANY_CODE, verifier=PRODUCTION, key_config=key_config, nonce=nonce, now=now)
        elif mode == 2:
            doc, edited = document(fdp)
            try:
                verify(doc, ANY_CODE, verifier=VERIFIER, key_config=KEY_CONFIG, nonce=NONCE, now=NOW)
            except EnclaveInferError:
                assert edited, "an unedited document did not appraise"
                raise
        elif mode == 3:
            simulation.verify(fdp.ConsumeBytes(fdp.remaining_bytes()))
        elif mode == 4:
            EnclaveConfig.from_canonical(fdp.ConsumeBytes(fdp.remaining_bytes()))
        else:
            quote = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2048))
            collateral = fdp.ConsumeBytes(fdp.remaining_bytes())
            dcap.verify_quote(quote, collateral, now=NOW, root_ca_der=DCAP.root_ca_der)
    except EnclaveInferError:
        pass


if __name__ == "__main__":
    main(test_one_input)
