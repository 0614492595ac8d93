"""Regression tests for what the fuzz campaign (fuzz/README.md) found, one per finding, each with the
exact input that found it: the bytes the failing parser was given (from the crash file libFuzzer
wrote, unwrapped from the target's input encoding), named after what it broke."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enclave_infer.attestation import dcap, snp, snp_report
from enclave_infer.attestation.evidence import Verifier
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.app import App
from enclave_infer.enclave.classifier import Classifier
from enclave_infer.enclave.models import ModelStore
from enclave_infer.enclave.platform import SimulationPlatform
from enclave_infer.enclave.server import Enclave
from enclave_infer.errors import AttestationError, ProtocolError, UsageError
from enclave_infer.protocol import bhttp, framing
from enclave_infer.protocol.api import Prediction, Preprocessing, Problem, ProvisionResult
from enclave_infer.protocol.framing import FrameType
from enclave_infer.protocol.manifest import Manifest
from tests.emulation.dcap import NOW, EmulatedDcap


def problem_of(response: bhttp.Response) -> Problem | None:
    return Problem.from_uri(json.loads(response.content)["type"])


# -- fuzz_frames: the enclave's API --------------------------------------------------------------------

# POST /v1/classify?top=<5000 ones>&runtime= with a date and a tiny PNG, as the enclave decrypted it.
CLASSIFY_TOP_5000_DIGITS = (
    b"\x00\x04POST\x05https\x07enclaveS\xa2/v1/classify?top="
    + b"1" * 5000
    + b"&runtime=#\x04date\x1dSun, 29 Nov 2026 07:03:30 GMT@M\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00"
    b"\x06\x00\x00\x00\x05\x08\x02\x00\x00\x00\xe9:\n\xb1\x00\x00\x00\x14IDATx\x9cc<!'\xc7\x80\n\x98\x180"
    b"\x00\xd9B\x00aX\x01\x0ed\x15\xce\x96\x00\x00\x00\x00IEND\xaeB`\x82\x00"
)


def test_classify_top_with_more_digits_than_int_converts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """int() refuses strings of over 4300 digits with ValueError: the enclave answered internal-error
    (500) and logged it, instead of invalid-parameter."""
    config = EnclaveConfig(owner_public_key=bytes(32))
    store = ModelStore(config, None, tmp_path)
    app = App(store, Classifier(config, store.state), max_top_k=20, max_image_bytes=1 << 20)
    with caplog.at_level(logging.ERROR, logger="enclave_infer"):
        response = app(bhttp.decode_request(CLASSIFY_TOP_5000_DIGITS))
    assert response.status == 400
    assert problem_of(response) is Problem.INVALID_PARAMETER
    assert not caplog.records
    # leading zeros still count for nothing, however many
    request = bhttp.Request("POST", "https", "enclave", "/v1/classify?top=" + "0" * 5000 + "3", (), b"x")
    assert problem_of(app(request)) is Problem.NO_MODEL


# SET_COLLATERAL with 26 bytes that are no collateral (the first input of `make fuzz`'s frames target).
SET_COLLATERAL_GARBAGE = (
    b"x\x9f\x19\x0e\x98\x19\x18\x9a\xf0\xc1*\xf1\xd1\xdaP\xfa\x05\xe1\xa0\xb5]\xc4\x88\xbe\x03t"
)


def test_set_collateral_is_acknowledged_with_its_own_reply_type(tmp_path: Path) -> None:
    """The enclave acknowledged SET_COLLATERAL (and three cluster frames) with STATUS, the answer to
    GET_STATUS, and the harness's oracle took STATUS for no request's reply ("unexpected reply
    STATUS"). Each request now has its reply type in framing.REQUESTS, which both sides check."""
    config = EnclaveConfig(owner_public_key=bytes(32))
    enclave = Enclave(config, SimulationPlatform(config), tmp_path, verifier=Verifier.production())
    reply = enclave.answer(FrameType.SET_COLLATERAL, SET_COLLATERAL_GARBAGE)
    kind, length = framing.parse_header(reply[: framing.HEADER.size])
    assert (kind, length) == (FrameType.COLLATERAL_SET, 0)
    framing.check_reply(FrameType.SET_COLLATERAL, kind)
    with pytest.raises(ProtocolError):
        framing.check_reply(FrameType.SET_COLLATERAL, FrameType.STATUS)


# -- fuzz_manifest: the owner's signed manifest ----------------------------------------------------------

# A label of the bytes ED A0 80: U+D800, a lone surrogate, in the "UTF-8" that json.loads accepts.
MANIFEST_LONE_SURROGATE = (
    b'{"type": "enclave-infer model manifest v2", "files": [{"format": "onnx", "sha256": '
    b'"abababababababababababababababababababababababababababababababab", "size": 1234}], '
    b'"labels": ["\xed\xa0\x80", "dog"], "preprocessing": {"resize": 256, "crop": 224, '
    b'"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channel_order": "RGB", '
    b'"layout": "NCHW"}, "version": 2}'
)


@pytest.mark.parametrize(
    "document", [MANIFEST_LONE_SURROGATE, MANIFEST_LONE_SURROGATE.replace(b"\xed\xa0\x80", b"\\ud800")]
)
def test_manifest_with_a_lone_surrogate(document: bytes) -> None:
    """Manifest.decode accepted it, and then its encode() (hence model_sha256, which the enclave
    logs, answers and pins with) raised UnicodeEncodeError."""
    with pytest.raises(ProtocolError, match="lone surrogate"):
        Manifest.decode(document)


# -- fuzz_api: the inner API's documents, as a client reads them --------------------------------------

# A ProvisionResult whose preprocessing mean starts with -10**400: a JSON integer beyond a float.
PROVISION_RESULT_MEAN_BEYOND_FLOAT = (
    b'{"model": {"sha256": "abababababababababababababababababababababababababababababababab", '
    b'"version": 3, "files": [{"format": "onnx", "sha256": '
    b'"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd", "size": 99}], "size": 99, '
    b'"formats": ["onnx"], "runtimes": ["onnx"], "labels": 2, "preprocessing": '
    b'{"resize": 256, "crop": 224, "mean": [-1'
    + b"0"
    * 400
    + b', 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channel_order": "RGB", "layout": "NCHW"}, '
    b'"provisioned_at": "2026-01-01T00:00:00Z"}, "replaced_version": 2, '
    b'"results": "0000000000000000000000000000000000000000000000000000000000000000"}'
)


def test_preprocessing_number_beyond_a_float() -> None:
    """math.isfinite() raised OverflowError for an int beyond a float's range: out of
    ProvisionResult.from_json on the client, and out of Preprocessing.from_json in the enclave,
    which reads an owner-signed manifest's preprocessing with it."""
    with pytest.raises(ProtocolError, match="model metadata is malformed"):
        ProvisionResult.from_json(json.loads(PROVISION_RESULT_MEAN_BEYOND_FLOAT))
    with pytest.raises(UsageError, match="finite numbers"):
        Preprocessing.from_json({"mean": [-(10**400), 0.456, 0.406]})
    # the same conversion reads a prediction's probability
    with pytest.raises(ProtocolError, match="probability must be a number"):
        Prediction.from_json({"label": "cat", "index": 0, "probability": 10**400})


# -- fuzz_evidence: the attestation document ---------------------------------------------------------------

# The measured configuration inside a simulation document, enclave_size "\u00b2G" (SUPERSCRIPT TWO).
CONFIG_SUPERSCRIPT_SIZE = (
    b'{"enclave_size":"\\u00b2G","limits":{"max_concurrent_requests":4,"max_image_bytes":16777216,'
    b'"max_model_bytes":536870912,"max_pixels":50000000,"max_top_k":20},"max_threads":16,'
    b'"owner_public_key":"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",'
    b'"product_id":1,"sealing_policy":"mrenclave"}'
)


@pytest.mark.parametrize(
    "config", [CONFIG_SUPERSCRIPT_SIZE, CONFIG_SUPERSCRIPT_SIZE.replace(b"\\u00b2G", b"9" * 4301 + b"G")]
)
def test_enclave_size_that_int_refuses(config: bytes) -> None:
    """str.isdigit() holds for "\u00b2" and int() refuses it (and any run of over 4300 digits) with
    ValueError, which escaped EnclaveConfig.from_canonical and so appraise() on the client."""
    with pytest.raises(UsageError, match="enclave_size"):
        EnclaveConfig.from_canonical(config)


def _with_crl_version(crl: bytes, version: int) -> bytes:
    """``crl`` (DER, v2) with the INTEGER of its TBSCertList's version set to ``version``: the only
    edit, so that lengths stay as they were."""
    at = crl.index(b"\x02\x01\x01")  # the first INTEGER in the TBSCertList, its version (1 = v2)
    return crl[:at] + bytes([0x02, 0x01, version]) + crl[at + 3 :]


@pytest.mark.parametrize("crl", ["pck_crl", "root_ca_crl"])
def test_dcap_collateral_with_a_crl_of_version_17(crl: str) -> None:
    """After ~4,400 inputs: a DCAP collateral CRL whose version byte is 17. cryptography raises
    InvalidVersion ("17 is not a valid CRL version"), which is not a ValueError, out of the parsing
    of the collateral's dates: the host chooses the collateral, so it could make a client's
    verification fail with a library's exception instead of a verification error."""
    platform = EmulatedDcap()
    collateral = json.loads(platform.collateral("sgx"))
    collateral[crl] = _with_crl_version(bytes.fromhex(collateral[crl]), 17).hex()
    with pytest.raises(AttestationError, match="is not a DER CRL"):
        dcap.verify_quote(
            platform.sgx_quote(bytes(64)),
            json.dumps(collateral).encode(),
            now=NOW,
            root_ca_der=platform.root_ca_der,
        )


# -- fuzz_snp: SEV-SNP evidence ---------------------------------------------------------------------------

# The evidence container with a U+00B2 (SUPERSCRIPT TWO, bytes C2 B2) inside the report's base64.
SNP_CONTAINER_NON_ASCII_BASE64 = (
    b'{"report": "AgAAAAAAAAAAAAM'
    + b"A" * 55
    + b"E"
    + b"A" * 238
    + b"\xc2\xb2"
    + b"A" * 946
    + b'=", "certs": null}'
)


def test_snp_container_with_non_ascii_base64() -> None:
    """base64.b64decode(str) raises a plain ValueError for non-ASCII characters, not binascii.Error:
    it escaped looks_like_snp_report and SnpVerifier.verify."""
    assert not snp.looks_like_snp_report(SNP_CONTAINER_NON_ASCII_BASE64)
    with pytest.raises(AttestationError, match="invalid base64"):
        snp.verify_snp_report(SNP_CONTAINER_NON_ASCII_BASE64, b"", now=datetime(2026, 1, 1, tzinfo=UTC))


# -- http_fuzz: the host's HTTP surface -------------------------------------------------------------------


class _NoEnclave:
    """What create_app needs of an enclave process for requests that never reach it."""

    config = EnclaveConfig(owner_public_key=bytes(32))

    def stop(self) -> None:
        pass


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "problem"),
    [
        # the first example of each kind that http_fuzz.py (seed 9458) sent
        ("PUT", "/o%1B%C3%A1%22%3F%C2%B6%C3%B0?nonce=k", {"accept": "application/json"},
         b"\n\xff\\o\xc5x\xe6\xa9\x05\xdaTQ", Problem.NOT_FOUND),
        ("DELETE", "/ohttp-keys", {"accept": "*/*"}, b"", Problem.METHOD_NOT_ALLOWED),
        ("GET", "/healthz/", {"content-type": ""}, b"+", Problem.NOT_FOUND),
        ("POST", "/healthz/", {"content-type": "message/ohttp-chunked-req"}, b"", Problem.NOT_FOUND),
    ],
)  # fmt: skip
def test_host_routing_refusals_are_problem_documents(
    method: str, path: str, headers: dict[str, str], body: bytes, problem: Problem
) -> None:
    """Starlette answered an unknown path with text/plain 404 "Not Found", a wrong method with
    text/plain 405, and a trailing slash with a 307 redirect, none of them a problem document."""
    import asyncio

    import httpx

    from enclave_infer.host.app import create_app

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(_NoEnclave()))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            return await client.request(method, path, headers=headers, content=body)

    response = asyncio.run(send())
    assert response.status_code == problem.status
    assert response.headers["content-type"] == "application/problem+json"
    assert Problem.from_uri(response.json()["type"]) is problem
    if problem is Problem.METHOD_NOT_ALLOWED:
        assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}


# The evidence container with a report that is a JSON number of 4301 digits.
SNP_CONTAINER_4301_DIGITS = b'{"certs": null, "report": ' + b"9" * 4301 + b"}"
# Azure HCL runtime claims with such a number; the HCL wrapper around them as fuzz_snp made it (the
# report inside is not read before the claims are).
HCL_CLAIMS_4301_DIGITS = b'{"user-data": "' + b"0" * 128 + b'", "keys": [' + b"9" * 4301 + b", null]}"


def hcl_report(claims: bytes) -> bytes:
    size = snp_report.HCL_RUNTIME_HEADER.size + len(claims)
    header = snp_report.HCL_HEADER.pack(b"HCLA", 2, snp_report.HCL_RUNTIME_OFFSET + size, 2, 0, bytes(12))
    return (
        header
        + bytes(snp.REPORT_SIZE)
        + snp_report.HCL_RUNTIME_HEADER.pack(size, 1, 2, 1, len(claims))
        + claims
    )


@pytest.mark.parametrize("evidence", [SNP_CONTAINER_4301_DIGITS, hcl_report(HCL_CLAIMS_4301_DIGITS)])
def test_snp_json_with_a_number_int_refuses(evidence: bytes) -> None:
    """json.loads raises a plain ValueError (not JSONDecodeError) for a number of over 4300 digits:
    it escaped the container's and the Azure HCL claims' parsers."""
    with pytest.raises(AttestationError, match="not JSON"):
        snp.verify_snp_report(evidence, b"", now=datetime(2026, 1, 1, tzinfo=UTC))
    if evidence.startswith(b"{"):
        with pytest.raises(AttestationError, match="not JSON"):
            snp.carries_certificates(evidence)
        assert not snp.looks_like_snp_report(evidence)
