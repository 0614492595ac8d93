"""The page's modules in real Chromium, against the Python implementation they mirror: constraint
parsing and checks (same semantics, same messages), binary HTTP with Padmé padding, Oblivious HTTP
against RFC 9458's example, the attestation binding and document, and dcap-qvl's WebAssembly on the
real SGX and TDX quotes of ../shared/vectors, offline with their collateral."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from enclave_infer.attestation import constraints
from enclave_infer.attestation.report import DcapCollateral, EnclaveReport, SecurityLevel, attestation_binding
from enclave_infer.config import EnclaveConfig
from enclave_infer.errors import ConstraintError, UsageError
from enclave_infer.protocol import bhttp, ohttp
from tests.shared_vectors import REPOSITORY, shared_vector_dir

from .conftest import PAGE, padme

CODE = "2a" * 32
SIGNER = "5b" * 32
OWNER = "6c" * 32
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def page(browser: WebDriver) -> WebDriver:
    browser.get("about:blank")
    browser.get(PAGE.as_uri())
    return browser


def js(browser: WebDriver, code: str, *args: Any) -> Any:
    """Run ``code`` (an async function body; ``I`` is the page's modules, ``args`` the arguments) and
    return its value; a thrown error comes back as {"error": message}."""
    script = f"""
    const done = arguments[arguments.length - 1];
    const args = Array.from(arguments).slice(0, -1);
    const I = window.enclaveInferInternals;
    const bytes = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));
    const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    (async () => {{ {code} }})().then(
      (value) => done({{ value }}), (e) => done({{ error: String(e?.message ?? e) }}));
    """
    out = browser.execute_async_script(script, *args)
    return out.get("value") if "error" not in out else {"error": out["error"]}


def python_parse(text: str) -> Any:
    try:
        c = constraints.parse(text)
    except UsageError as exc:
        return {"error": str(exc)}
    return {
        "minLevel": c.min_level.name,
        "productId": c.product_id,
        "minSecurityVersion": c.min_security_version,
        "maxAgeMs": c.max_age / timedelta(milliseconds=1) if c.max_age is not None else None,
        "graceMs": c.collateral_grace / timedelta(milliseconds=1) if c.collateral_grace is not None else None,
        "minTcbEvaluation": c.min_tcb_evaluation,
        "snp": [list(pair) for pair in c.snp_tcb_floor],
        "codes": sorted(h.hex() for h in c.code_hashes),
    }


PARSE_CASES = [
    "", "   ", f"C:{CODE}", f"c:{CODE.upper()} sec:insecure", f"C:{'ab' * 48}", "C:zz", f"C:{CODE}:x",
    "C", "C:",
    f"S:{SIGNER}", f"S:{SIGNER} PROD:1", "PROD:1", f"C:{CODE} FOO:1", f"C:{CODE} SEC:MEDIUM",
    f"C:{CODE} SEC:STALE SEC:STALE", f"C:{CODE} PROD:65536", f"C:{CODE} PROD:-1", f"C:{CODE} PROD:1.0",
    f"C:{CODE} REVOKE:00001", f"C:{CODE} REVOKE:000001", f"C:{CODE} EXPIRE:PT1H", f"C:{CODE} EXPIRE:P",
    f"C:{CODE} EXPIRE:PT", f"C:{CODE} EXPIRE:P1DT", f"C:{CODE} EXPIRE:P1W", f"C:{CODE} EXPIRE:pt1.5s",
    f"C:{CODE} EXPIRE:P2DT3H4M5S", f"C:{CODE} OWNER:zz", f"C:{CODE} OWNER:{OWNER}",
    f"C:{CODE} SNPTCB:bl=3,tee=0,snp=8,ucode=115", f"C:{CODE} SNPTCB:bl=256", f"C:{CODE} SNPTCB:xx=1",
    f"C:{CODE} SNPTCB:bl=1,bl=2", f"C:{CODE} SNPTCB:BL=1", f"C:{CODE} SNPTCB:bl", f"C:{CODE} TCBEVAL:18",
    f"C:{CODE} TCBEVAL:4294967296", f"C:{CODE} GRACE:PT24H", f"C:{CODE} GRACE:1d", f"C:{CODE} it's",
]  # fmt: skip


def test_the_page_refuses_the_pins_it_does_not_check_saying_which_it_does(page: WebDriver) -> None:
    cases = [f"IMAGE:{'ab' * 32}", f"C:{CODE} PCR4:{'00' * 32}", f"C:{CODE} RTMR1:{'00' * 48}"]
    found = js(
        page,
        "return args[0].map((t) => { try { I.parse(t); return null; } catch (e) { return e.message; } });",
        cases,
    )
    for text, message in zip(cases, found, strict=True):
        key = text.split()[-1].split(":")[0]
        assert message is not None and message.startswith(f"{key}: is not checked in this page: "), text
        assert "this page checks C:, S:, PROD:" in message and "--measurements FILE" in message


def test_constraints_parse_as_python_parses_them(page: WebDriver) -> None:
    found = js(
        page,
        """
        return args[0].map((text) => {
          try {
            const c = I.parse(text);
            return { minLevel: c.minLevel, productId: c.productId, minSecurityVersion: c.minSecurityVersion,
                     maxAgeMs: c.maxAgeMs, graceMs: c.collateralGraceMs, minTcbEvaluation: c.minTcbEvaluation,
                     snp: c.snpTcbFloor, codes: [...c.codeHashes].sort() };
          } catch (e) { return { error: e.message }; }
        });
        """,
        PARSE_CASES,
    )
    assert dict(zip(PARSE_CASES, found, strict=True)) == {text: python_parse(text) for text in PARSE_CASES}


def reports() -> dict[str, EnclaveReport]:
    base = EnclaveReport(
        tee="simulation", code_hash=bytes.fromhex(CODE), signer=bytes.fromhex(SIGNER), product_id=2,
        security_version=3, debug=False, report_data=bytes(64), security_level=SecurityLevel.INSECURE,
        level_reason="simulation mode: no hardware root of trust, the evidence is unsigned",
        issued_at=NOW - timedelta(hours=2), owner_key_id=bytes.fromhex(OWNER),
    )  # fmt: skip
    collateral = DcapCollateral(
        17, 18, NOW - timedelta(hours=2), "PCK CRL", NOW - timedelta(hours=2, seconds=1)
    )
    dcap = dataclasses.replace(
        base, tee="sgx", security_level=SecurityLevel.STALE, level_reason="TCB status OutOfDate",
        dcap_collateral=collateral,
    )  # fmt: skip
    return {"simulation": base, "sgx": dcap}


def as_js(report: EnclaveReport) -> dict[str, Any]:
    c = report.dcap_collateral
    return {
        "tee": report.tee, "codeHash": report.code_hash.hex(), "signer": report.signer.hex(),
        "productId": report.product_id, "securityVersion": report.security_version,
        "level": report.security_level.name, "levelReason": report.level_reason,
        "issuedAt": report.issued_at.isoformat() if report.issued_at else None,
        "ownerKeyId": report.owner_key_id.hex(), "snpTcb": None,
        "dcapCollateral": c and {
            "tcbInfoEvaluationDataNumber": c.tcb_info_evaluation_data_number,
            "qeIdentityEvaluationDataNumber": c.qe_identity_evaluation_data_number,
            "nextUpdate": c.next_update.isoformat(), "nextUpdateOf": c.next_update_of,
        },
    }  # fmt: skip


CHECK_CASES = [
    ("simulation", f"C:{CODE}"),
    ("simulation", f"C:{CODE} SEC:INSECURE"),
    ("simulation", f"C:{'00' * 32} SEC:INSECURE"),
    ("simulation", f"S:{SIGNER} PROD:2 SEC:INSECURE"),
    ("simulation", f"S:{'00' * 32} PROD:2 SEC:INSECURE"),
    ("simulation", f"S:{SIGNER} PROD:1 SEC:INSECURE"),
    ("simulation", f"C:{'00' * 32} S:{SIGNER} PROD:1"),
    ("simulation", f"C:{'00' * 32} S:{'00' * 32} PROD:2"),
    ("simulation", f"C:{CODE} PROD:1 SEC:INSECURE"),
    ("simulation", f"C:{CODE} REVOKE:4 SEC:INSECURE"),
    ("simulation", f"C:{CODE} REVOKE:3 SEC:INSECURE"),
    ("simulation", f"C:{CODE} SEC:INSECURE OWNER:{'00' * 32}"),
    ("simulation", f"C:{CODE} SEC:INSECURE OWNER:{OWNER}"),
    ("simulation", f"C:{CODE} SEC:INSECURE TCBEVAL:1"),
    ("simulation", f"C:{CODE} SEC:INSECURE SNPTCB:snp=1"),
    ("simulation", f"C:{CODE} SEC:INSECURE EXPIRE:PT3H"),
    ("simulation", f"C:{CODE} SEC:INSECURE EXPIRE:PT1H"),
    ("simulation", f"C:{CODE} SEC:INSECURE EXPIRE:PT1H59M59.5S"),
    ("sgx", f"C:{CODE} SEC:STALE"),
    ("sgx", f"C:{CODE}"),
    ("sgx", f"C:{CODE} SEC:STALE GRACE:PT1H"),
    ("sgx", f"C:{CODE} SEC:STALE GRACE:PT3H"),
    ("sgx", f"C:{CODE} SEC:STALE GRACE:PT3H TCBEVAL:18"),
    ("sgx", f"C:{CODE} SEC:STALE GRACE:PT3H TCBEVAL:17"),
]  # fmt: skip


def test_constraints_check_as_python_checks_them(page: WebDriver) -> None:
    expected = []
    for kind, text in CHECK_CASES:
        try:
            constraints.parse(text).check(reports()[kind], now=NOW)
            expected.append(None)
        except ConstraintError as exc:
            expected.append(str(exc))
    found = js(
        page,
        """
        const [cases, reports, now] = args;
        return cases.map(([kind, text]) => {
          const r = structuredClone(reports[kind]);
          r.issuedAt = r.issuedAt && new Date(r.issuedAt);
          if (r.dcapCollateral) r.dcapCollateral.nextUpdate = new Date(r.dcapCollateral.nextUpdate);
          try { I.check(I.parse(text), r, new Date(now)); return null; } catch (e) { return e.message; }
        });
        """,
        CHECK_CASES,
        {kind: as_js(r) for kind, r in reports().items()},
        NOW.isoformat(),
    )
    assert found == expected
    assert expected.count(None) == 7  # the rest are refusals, each with its reason


def test_binary_http_is_what_the_python_sdk_sends_and_padding_is_zeros(page: WebDriver) -> None:
    image = secrets.token_bytes(3000)
    headers = (("content-type", "application/octet-stream"), ("date", "Sun, 01 Nov 2026 12:00:00 GMT"))
    request = bhttp.Request("POST", "https", "enclave", "/v1/classify?top=5&runtime=default", headers, image)
    lengths = [0, 1, 2, 3, 7, 8, 9, 100, 255, 256, 1000, 4097, 65_537, 1_000_000, 16_777_217, 2**31 + 5]
    found = js(
        page,
        """
        const [image, date, lengths] = args;
        const message = I.encodeRequest({ method: "POST", scheme: "https", authority: "enclave",
          path: "/v1/classify?top=5&runtime=default",
          headers: [["content-type", "application/octet-stream"], ["date", date]], content: bytes(image) });
        return { message: hex(message), padded: hex(I.pad(message)), lengths: lengths.map(I.padmeLength) };
        """,
        image.hex(),
        headers[1][1],
        lengths,
    )
    assert bytes.fromhex(found["message"]) == bhttp.encode_request(request)
    assert found["lengths"] == [padme(n) for n in lengths]
    assert padme(100) == 104 and padme(4097) == 4352
    padded = bytes.fromhex(found["padded"])
    assert len(padded) == padme(len(found["message"]) // 2) > len(found["message"]) // 2
    assert bhttp.decode_request(padded) == request  # RFC 9292 §3.8: zeros after the message


def test_binary_http_responses_decode_with_zero_padding_only(page: WebDriver) -> None:
    response = bhttp.Response(200, (("content-type", "application/json"),), b'{"ok": true}')
    encoded = bhttp.encode_response(response)
    found = js(
        page,
        """
        return args.map((message) => {
          try {
            const r = I.decodeResponse(bytes(message));
            return { status: r.status, headers: r.headers, content: new TextDecoder().decode(r.content) };
          } catch (e) { return { error: e.message }; }
        });
        """,
        encoded.hex(),
        (encoded + bytes(40)).hex(),
        (encoded + b"\0\x01").hex(),
        encoded[:5].hex(),
    )
    ok = {"status": 200, "headers": [["content-type", "application/json"]], "content": '{"ok": true}'}
    assert found[:2] == [ok, ok]
    assert found[2] == {"error": "non-zero byte after the end of the message"}
    assert "error" in found[3]


def test_oblivious_http_reproduces_rfc9458_appendix_a(page: WebDriver) -> None:
    vector = json.loads((REPOSITORY / "tests" / "vectors" / "ohttp" / "rfc9458-appendix-a.json").read_text())
    gateway = ohttp.GatewayKey.from_private_bytes(1, bytes.fromhex(vector["gateway_private_key_skR"]))
    keys = ohttp.encode_key_configs([gateway.config])
    enc = bytes.fromhex(vector["encapsulated_request"])[7:39]
    found = js(
        page,
        """
        const [keys, request, skE, pkE, response] = args;
        const [config] = I.decodeKeyConfigs(bytes(keys));
        const { encapsulated, context } = await I.encapsulateRequest(config, bytes(request),
          { ephemeral: { privateKey: bytes(skE), publicKey: bytes(pkE) } });
        return { config: hex(I.encodeKeyConfig(config)), encapsulated: hex(encapsulated),
                 response: hex(await context.decapsulateResponse(bytes(response))) };
        """,
        keys.hex(),
        vector["request_bhttp"],
        vector["client_ephemeral_private_key_skE"],
        enc.hex(),
        vector["encapsulated_response"],
    )
    assert found["config"] == gateway.config.encode().hex()
    assert found["encapsulated"] == vector["encapsulated_request"]
    assert found["response"] == vector["response_bhttp"]
    # and what the page encrypts with a fresh key, the Python gateway opens
    found = js(
        page,
        """
        const [config] = I.decodeKeyConfigs(bytes(args[0]));
        return hex((await I.encapsulateRequest(config, bytes(args[1]))).encapsulated);
        """,
        keys.hex(),
        vector["request_bhttp"],
    )
    request, _ = ohttp.decapsulate_request(gateway, bytes.fromhex(found))
    assert request.hex() == vector["request_bhttp"]


def test_attestation_binding_and_configuration_as_python_computes_them(page: WebDriver) -> None:
    key_config, receipt_key, nonce = secrets.token_bytes(41), secrets.token_bytes(32), secrets.token_bytes(32)
    config = EnclaveConfig(owner_public_key=secrets.token_bytes(32))
    measured = {k: v for k, v in json.loads(config.canonical()).items() if k != "padding"}
    variants = [
        measured,
        measured | {"padding": {"enabled": False}},
        measured | {"padding": {"enabled": True}},
    ]
    canonical = [json.dumps(v, sort_keys=True, separators=(",", ":")).encode() for v in variants]
    found = js(
        page,
        """
        const [keyConfig, receiptKey, nonce, canonical] = args;
        const configs = await Promise.all(canonical.map((c) => I.parseConfig(bytes(c))));
        const loose = await I.parseConfig(new TextEncoder().encode(JSON.stringify(JSON.parse(
          new TextDecoder().decode(bytes(canonical[0]))), null, 1))).catch((e) => e.message);
        return { bindings: await Promise.all(configs.map(async (config) => hex(await I.attestationBinding(
                   bytes(keyConfig), bytes(receiptKey), config.digest, bytes(nonce))))),
                 owner: configs[0].ownerKeyId, padding: configs.map((c) => c.padding), loose };
        """,
        key_config.hex(),
        receipt_key.hex(),
        nonce.hex(),
        [c.hex() for c in canonical],
    )
    assert found["bindings"] == [
        attestation_binding(key_config, receipt_key, hashlib.sha256(c).digest(), nonce).hex()
        for c in canonical
    ]
    assert found["owner"] == config.owner_key_id
    assert found["padding"] == [False, False, True]  # padding: absent (an older enclave), off, on
    assert found["loose"] == (
        "enclave configuration in the evidence is invalid: enclave configuration is not in canonical form"
    )


def document(tee: str, evidence: bytes = b"{}", collateral: bytes = b"") -> str:
    config = EnclaveConfig(owner_public_key=bytes(32)).canonical()
    doc = {"version": 2, "tee": tee, "evidence": base64.b64encode(evidence).decode()}
    doc |= {"config": base64.b64encode(config).decode(), "receipt_key": base64.b64encode(bytes(32)).decode()}
    if collateral:
        doc["collateral"] = base64.b64encode(collateral).decode()
    return json.dumps(doc)


def test_evidence_the_page_cannot_verify_is_refused_in_one_sentence(page: WebDriver) -> None:
    found = js(
        page,
        """
        return Promise.all(args.map((doc) => I.verify(new TextEncoder().encode(doc), {
          keyConfig: new Uint8Array(41), nonce: new Uint8Array(32),
          constraint: I.parse("C:" + "00".repeat(32)),
          now: new Date() }).then(() => null, (e) => e.message)));
        """,
        document("sev-snp"),
        document("sgx"),
        document("vtpm"),
        document("tpm"),
        json.dumps({"version": 1}),
        document("simulation", b"not json"),
    )
    assert found == [
        "SEV-SNP evidence is not verified in this page: verify the service with the command line "
        "(enclave-infer attest URL CONSTRAINT, or enclave-infer verify-evidence)",
        "DCAP evidence without collateral: the host attached none; verify it with the command line "
        "(enclave-infer attest URL CONSTRAINT --collateral FILE or --pccs URL)",
        "vTPM evidence (a TPM quote and its boot's event log) is not verified in this page: verify the "
        "service with the command line (enclave-infer attest URL CONSTRAINT)",
        "unsupported TEE type 'tpm'",
        "malformed attestation document",
        "simulation evidence is not JSON",
    ]


VERIFY_QUOTE = """
const [quote, collateral, now] = args;
const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
try {
  const v = await I.verifyQuote(b64(quote), b64(collateral), new Date(now * 1000));
  return { status: v.tcbStatus, advisories: v.advisoryIds, measurements: v.measurements,
           level: v.report.level,
           reason: v.report.levelReason, reportData: hex(v.report.reportData), debug: v.report.debug,
           product: v.report.productId, svn: v.report.securityVersion,
           tcbEval: [v.report.dcapCollateral.tcbInfoEvaluationDataNumber,
                     v.report.dcapCollateral.qeIdentityEvaluationDataNumber] };
} catch (e) { return { refused: e.message }; }
"""


def verify_in_page(page: WebDriver, quote: bytes, collateral: bytes, now: float) -> dict[str, Any]:
    b64 = base64.b64encode
    return dict(js(page, VERIFY_QUOTE, b64(quote).decode(), b64(collateral).decode(), now))


def test_dcap_qvl_webassembly_verifies_the_real_sgx_quote_offline(page: WebDriver) -> None:
    vector = shared_vector_dir("sgx-dcap")
    quote, collateral = (
        (vector / "sgx_quote").read_bytes(),
        (vector / "sgx_quote_collateral.json").read_bytes(),
    )
    found = verify_in_page(page, quote, collateral, 1750416971)  # the README's clock, 2025-06-20T10:56:11Z
    assert found == {
        "status": "ConfigurationAndSWHardeningNeeded",
        "advisories": ["INTEL-SA-00289", "INTEL-SA-00615"],
        "measurements": {
            "mrenclave": "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb",
            "mrsigner": "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6",
        },
        "level": "STALE",
        "reason": "TCB status ConfigurationAndSWHardeningNeeded (advisories INTEL-SA-00289, INTEL-SA-00615)",
        "reportData": (b"Hello, world!" + bytes(51)).hex(),
        "debug": False,
        "product": 0,
        "svn": 0,
        "tcbEval": [17, 17],
    }
    # past its nextUpdate the collateral is verified as of just before it, and says so
    stale = verify_in_page(page, quote, collateral, datetime(2025, 8, 1, tzinfo=UTC).timestamp())
    assert stale["level"] == "STALE" and stale["reason"].endswith(
        "; the collateral expired P12DT13H58M42S ago (the QE identity's nextUpdate 2025-07-19T10:01:18Z)"
        " and was verified as of 2025-07-19T10:01:17Z"
    )
    # a flipped bit in the signed body, or a clock before the collateral was issued, is refused
    tampered = bytearray(quote)
    tampered[48 + 64] ^= 1  # MRENCLAVE
    assert verify_in_page(page, bytes(tampered), collateral, 1750416971)["refused"].startswith(
        "DCAP quote did not verify: "
    )
    assert "refused" in verify_in_page(page, quote, collateral, datetime(2025, 1, 1, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("folder", "quote", "expected"),
    [
        ("v4-uptodate-tinfoil", "tdx_quote.bin", ("UpToDate", "SECURE")),
        ("v4-outofdate-trustee", "tdx_quote_6.dat", ("OutOfDate", "STALE")),
        ("v5-uptodate-go-tdx-guest", "quote_v5_sample.dat", None),
    ],
)
def test_dcap_qvl_webassembly_verifies_the_real_tdx_quotes(
    page: WebDriver, folder: str, quote: str, expected: tuple[str, str] | None
) -> None:
    vector = shared_vector_dir("tdx-dcap", folder)
    now = json.loads((vector / "expected.json").read_text())["now"]
    found = verify_in_page(
        page, (vector / quote).read_bytes(), (vector / "collateral.json").read_bytes(), now
    )
    if expected is None:  # dcap-qvl-web reads quotes up to version 4: the page says so
        assert found["refused"].startswith("DCAP quote version 5 (TDX) cannot be verified in this page")
    else:
        assert (found["status"], found["level"]) == expected
        assert (
            found["measurements"]["mrtd"]
            == json.loads((vector / "expected.json").read_text())["report"]["mr_td"]
        )
