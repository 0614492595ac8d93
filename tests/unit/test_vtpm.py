"""The vTPM platform and its verifier against a real TPM 2.0: swtpm, and tpm2-tools beside it.

Real: swtpm (libtpms) answering the product's TPM client over TCP loopback, each test on a fresh TPM;
the quotes, keys and signatures it makes; tpm2-tools as an independent client (the same attestation
key from its own TPM2_CreatePrimary, quotes it makes for our verifier) and verifier (tpm2_checkquote
of our quotes, tpm2_print's reading of our structures, tpm2_eventlog's replay of a captured boot log,
which the PCRs are extended with as the firmware did). Emulated: only the AMD chip that signs the
Azure HCL report of the hardware-binding tests (tests/emulation/snp.py, a test ARK).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import socket
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_infer.attestation import constraints, eventlog, evidence, tpm
from enclave_infer.attestation.evidence import Evidence, Verifier
from enclave_infer.attestation.report import SecurityLevel, Tee, attestation_binding
from enclave_infer.attestation.tpm import (
    QUOTED_PCRS,
    SOFTWARE_TPM_REASON,
    AttestationKey,
    HardwareBinding,
    Quote,
    TpmAlg,
    VtpmEvidence,
)
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave import vtpm
from enclave_infer.enclave.vtpm import VtpmPlatform, describe_rc
from enclave_infer.errors import AttestationError, ConstraintError, UsageError
from tests.emulation.snp import EmulatedSnp
from tests.emulation.swtpm import Swtpm, need_tpm2_tools, start_swtpm, tpm2_yaml
from tests.tamper import flipped, refused_by

REPOSITORY = Path(__file__).resolve().parents[2]
BOOT_LOG = REPOSITORY / "tests" / "vectors" / "measured-boot" / "ovmf-swtpm-uki.tpm-eventlog"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
REPORT_DATA = hashlib.sha512(b"enclave-infer vtpm test: report data").digest()
ZERO_PCRS_DIGEST = hashlib.sha256(bytes(32 * 16)).digest()  # sixteen PCRs no one has extended
ALL_PCRS = "sha256:" + ",".join(map(str, QUOTED_PCRS))
PARAVISOR = hashlib.sha384(b"enclave-infer vtpm test: the paravisor").digest()


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    tpm_process = start_swtpm(tmp_path / "swtpm")
    try:
        yield tpm_process
    finally:
        tpm_process.stop()


@pytest.fixture
def event_log(tmp_path: Path) -> Path:
    path = tmp_path / "tpm-eventlog"
    path.write_bytes(BOOT_LOG.read_bytes())
    return path


@pytest.fixture(scope="module")
def amd() -> EmulatedSnp:
    return EmulatedSnp()


def platform(swtpm: Swtpm, event_log: Path) -> VtpmPlatform:
    return VtpmPlatform(swtpm.address, event_log)


def verify(evidence_bytes: bytes, collateral: bytes = b"", **kwargs: Any) -> Any:
    return tpm.verify(evidence_bytes, collateral, now=NOW, **kwargs)


def fields(evidence_bytes: bytes) -> VtpmEvidence:
    return VtpmEvidence.decode(evidence_bytes)


def replaced(evidence_bytes: bytes, **changes: Any) -> bytes:
    return dataclasses.replace(fields(evidence_bytes), **changes).encode()


# --- evidence from the real TPM -----------------------------------------------------------------


def test_evidence_from_swtpm_verifies_as_insecure_and_carries_the_report_data(
    swtpm: Swtpm, event_log: Path
) -> None:
    p = platform(swtpm, event_log)
    assert (p.tee, p.signer, p.code_hash, p.event_log) == (
        Tee.VTPM,
        b"",
        ZERO_PCRS_DIGEST,
        BOOT_LOG.read_bytes(),
    )
    report = verify(p.evidence(REPORT_DATA))
    assert report.tee == Tee.VTPM and report.report_data == REPORT_DATA
    assert (report.security_level, report.level_reason) == (SecurityLevel.INSECURE, SOFTWARE_TPM_REASON)
    assert report.code_hash == ZERO_PCRS_DIGEST and report.signer == b""
    assert report.registers is not None and (report.registers.kind, report.registers.alg) == ("pcr", "sha256")
    assert dict(report.registers.values) == {i: bytes(32) for i in QUOTED_PCRS}
    # every quote is fresh: another report data, another quote, the same attestation key
    again = fields(p.evidence(bytes(64)))
    assert again.ak == fields(p.evidence(REPORT_DATA)).ak
    assert Quote.from_bytes(again.quote).extra_data == bytes(64)


def test_the_attestation_document_verifies_under_a_pcr_digest_pin(swtpm: Swtpm, event_log: Path) -> None:
    """Through the verifier clients use: the document, the binding of keys and nonce, the boot's log
    replayed against the quoted PCRs, a constraint."""
    boot = eventlog.parse(event_log.read_bytes())
    swtpm.extend_all(
        [
            (e.register, e.digests[eventlog.Alg.SHA256])
            for e in boot.events
            if e.type != eventlog.EventType.EV_NO_ACTION
        ]
    )  # the firmware's part: the PCRs the log replays to
    replayed = eventlog.replay(boot, eventlog.Alg.SHA256)
    booted_digest = hashlib.sha256(b"".join(replayed.get(i, bytes(32)) for i in range(16))).digest()
    p = platform(swtpm, event_log)
    config = EnclaveConfig(owner_public_key=bytes(32))
    key_config, receipt_key, nonce = b"\x01key configuration", bytes(range(32)), b"n" * 32
    bound = attestation_binding(key_config, receipt_key, config.digest(), nonce)
    document = Evidence(
        Tee.VTPM, p.evidence(bound), config.canonical(), receipt_key=receipt_key, event_log=p.event_log
    ).encode()

    def check(constraint: str, **overrides: Any) -> evidence.Attestation:
        kwargs: dict[str, Any] = {"key_config": key_config, "nonce": nonce, "now": NOW, **overrides}
        return evidence.verify(
            document, constraints.parse(constraint), verifier=Verifier.production(), **kwargs
        )

    pin = f"C:{booted_digest.hex()} SEC:INSECURE"
    attestation = check(pin)
    assert attestation.report.tee == Tee.VTPM and attestation.report.code_hash == booted_digest
    assert attestation.boot_log == boot
    with pytest.raises(ConstraintError, match="security level INSECURE is below SEC:SECURE"):
        check(f"C:{booted_digest.hex()}")
    with pytest.raises(ConstraintError, match="is not one of the accepted C: values"):
        check(f"C:{'ab' * 32} SEC:INSECURE")
    with pytest.raises(
        AttestationError, match=r"^evidence is not bound .*\(stale, replayed or substituted\)$"
    ):
        check(pin, nonce=b"m" * 32)


def test_a_quote_agrees_with_tpm2_tools(swtpm: Swtpm, event_log: Path, tmp_path: Path) -> None:
    """tpm2-tools, an independent client: its TPM2_CreatePrimary of the same template yields the same
    key; tpm2_print reads our structures as we do; tpm2_checkquote accepts our quote's signature and
    qualifying data."""
    need_tpm2_tools()
    p = platform(swtpm, event_log)
    made = fields(p.evidence(REPORT_DATA))
    quote, ak = Quote.from_bytes(made.quote), AttestationKey.from_bytes(made.ak)
    (tmp_path / "quote.msg").write_bytes(made.quote)
    (tmp_path / "quote.sig").write_bytes(made.signature)
    (tmp_path / "ak.pub").write_bytes(struct.pack(">H", len(made.ak)) + made.ak)  # TPM2B_PUBLIC
    swtpm.tpm2(
        "tpm2_createprimary", "-C", "e", "-g", "sha256", "-G", "ecc256:ecdsa-sha256:null",
        "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign", "-c", "tools.ctx",
        cwd=tmp_path,
    )  # fmt: skip
    swtpm.tpm2("tpm2_readpublic", "-c", "tools.ctx", "-o", "tools.pub", cwd=tmp_path)
    assert (tmp_path / "tools.pub").read_bytes()[2:] == made.ak

    printed = tpm2_yaml(swtpm.tpm2("tpm2_print", "-t", "TPMS_ATTEST", "quote.msg", cwd=tmp_path))
    assert (printed["magic"], printed["type"]) == ("ff544347", "8018")
    assert printed["extraData"] == REPORT_DATA.hex() == quote.extra_data.hex()
    assert printed["attested"]["quote"]["pcrDigest"] == quote.pcr_digest.hex()
    assert printed["attested"]["quote"]["pcrSelect"]["pcrSelections"]["0"]["pcrSelect"] == "ffff00"
    assert int(printed["clockInfo"]["resetCount"]) == quote.reset_count
    assert printed["qualifiedSigner"] == quote.qualified_signer.hex()
    key = tpm2_yaml(swtpm.tpm2("tpm2_print", "-t", "TPM2B_PUBLIC", "ak.pub", cwd=tmp_path))
    numbers = ak.public_key.public_numbers()
    assert isinstance(numbers, ec.EllipticCurvePublicNumbers)
    assert (int(key["x"], 16), int(key["y"], 16)) == (numbers.x, numbers.y)
    assert int(key["attributes"]["raw"], 16) == ak.attributes

    swtpm.tpm2(
        "tpm2_checkquote", "-u", "ak.pub", "-m", "quote.msg", "-s", "quote.sig", "-g", "sha256",
        "-q", REPORT_DATA.hex(), cwd=tmp_path,
    )  # fmt: skip
    with pytest.raises(AssertionError, match="tpm2_checkquote"):  # and it can refuse
        swtpm.tpm2(
            "tpm2_checkquote", "-u", "ak.pub", "-m", "quote.msg", "-s", "quote.sig", "-g", "sha256",
            "-q", bytes(64).hex(), cwd=tmp_path,
        )  # fmt: skip
    # the quote's qualifiedSigner is the key's qualified name as a primary of the endorsement
    # hierarchy (TPM 2.0 Part 1, "Qualified Name"): H(TPM_RH_ENDORSEMENT || Name)
    assert (
        quote.qualified_signer
        == b"\x00\x0b" + hashlib.sha256(struct.pack(">I", 0x4000000B) + ak.name).digest()
    )


def tpm2_tools_quote(swtpm: Swtpm, tmp_path: Path, algorithm: str) -> VtpmEvidence:
    """tpm2-tools as an independent producer: a restricted signing key of ``algorithm`` made by
    tpm2_createprimary, a tpm2_quote of PCR 0-15 over REPORT_DATA, and the values tpm2_pcrread reads."""
    need_tpm2_tools()
    swtpm.tpm2(
        "tpm2_createprimary", "-C", "e", "-g", "sha256", "-G", algorithm,
        "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign", "-c", "ak.ctx",
        cwd=tmp_path,
    )  # fmt: skip
    swtpm.tpm2("tpm2_readpublic", "-c", "ak.ctx", "-o", "ak.pub", cwd=tmp_path)
    swtpm.tpm2(
        "tpm2_quote", "-c", "ak.ctx", "-l", ALL_PCRS, "-q", REPORT_DATA.hex(), "-g", "sha256",
        "-m", "quote.msg", "-s", "quote.sig", cwd=tmp_path,
    )  # fmt: skip
    swtpm.tpm2("tpm2_pcrread", ALL_PCRS, "-o", "pcrs.bin", cwd=tmp_path)
    values = (tmp_path / "pcrs.bin").read_bytes()
    return VtpmEvidence(
        quote=(tmp_path / "quote.msg").read_bytes(),
        signature=(tmp_path / "quote.sig").read_bytes(),
        ak=(tmp_path / "ak.pub").read_bytes()[2:],
        pcrs={i: values[32 * i : 32 * i + 32] for i in QUOTED_PCRS},
    )


@pytest.mark.parametrize(
    ("algorithm", "scheme"),
    [("ecc256:ecdsa-sha256:null", TpmAlg.ECDSA), ("rsa2048:rsassa-sha256:null", TpmAlg.RSASSA)],
)
def test_a_quote_made_by_tpm2_tools_verifies(
    swtpm: Swtpm, tmp_path: Path, algorithm: str, scheme: TpmAlg
) -> None:
    """An independent producer: tpm2_quote under an ECC P-256 key and under an RSA-2048 key (the
    shape of Azure's attestation key), with the PCR values tpm2_pcrread reports."""
    swtpm.extend(4, hashlib.sha256(b"a boot application").digest())
    made = tpm2_tools_quote(swtpm, tmp_path, algorithm)
    pcrs = dict(made.pcrs)
    report = verify(made.encode())
    assert report.report_data == REPORT_DATA and report.security_level == SecurityLevel.INSECURE
    assert (
        report.registers is not None
        and report.registers.values[4]
        == hashlib.sha256(bytes(32) + hashlib.sha256(b"a boot application").digest()).digest()
    )
    assert tpm.TpmSignature.from_bytes(made.signature).scheme == scheme
    with pytest.raises(AttestationError, match="not those the quote's pcrDigest covers"):
        verify(dataclasses.replace(made, pcrs={**pcrs, 4: bytes(32)}).encode())


def test_pcrs_extended_with_a_boot_log_show_in_the_registers(
    swtpm: Swtpm, event_log: Path, tmp_path: Path
) -> None:
    """The TPM extended with the events of the VM's captured boot log, as its firmware and stub did:
    the verified registers are what tpm2_eventlog (an independent reader) computes from that log, the
    pcrDigest is over them, and the evidence's document carries the log."""
    need_tpm2_tools()
    expected = swtpm.boot(event_log, tmp_path)
    assert sorted(i for i, v in expected.items() if any(v)) == [0, 1, 2, 3, 4, 5, 6, 7, 9, 11]
    assert (
        expected[4].hex() == "1427d71490aa0289007b21fb59eb39bfe71de372cb0e675fc828e35c4b530fad"
    )  # the lead's YAML

    p = platform(swtpm, event_log)
    report = verify(p.evidence(REPORT_DATA))
    assert report.registers is not None and dict(report.registers.values) == expected
    assert (
        report.code_hash == p.code_hash == hashlib.sha256(b"".join(expected[i] for i in QUOTED_PCRS)).digest()
    )
    assert p.event_log == BOOT_LOG.read_bytes()


def test_a_pcr_extended_after_start_stops_the_evidence(swtpm: Swtpm, event_log: Path) -> None:
    p = platform(swtpm, event_log)
    swtpm.extend(10, hashlib.sha256(b"measured after the boot").digest())
    with pytest.raises(AttestationError, match=r"^PCR 10 changed since the enclave started: .*event log$"):
        p.evidence(REPORT_DATA)


def test_the_platform_refuses_what_it_cannot_do(swtpm: Swtpm, event_log: Path, tmp_path: Path) -> None:
    p = platform(swtpm, event_log)
    with pytest.raises(UsageError, match="report data must be 64 bytes"):
        p.evidence(b"short")
    with pytest.raises(AttestationError, match=r"^no sealing key on this platform: "):
        p.sealing_key()
    with pytest.raises(AttestationError, match="does not exist: no TCG event log of the boot"):
        VtpmPlatform(swtpm.address, tmp_path / "no-log")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        nobody = vtpm.TcpTpm("127.0.0.1", unused.getsockname()[1])
    with pytest.raises(AttestationError, match=r"^cannot reach the TPM at tcp:127\.0\.0\.1:\d+: "):
        VtpmPlatform(nobody, event_log)
    with pytest.raises(AttestationError, match=r"tpmrm0 does not exist: no TPM"):
        VtpmPlatform(tmp_path / "tpmrm0", event_log)


def test_tpm_errors_name_the_command_and_the_response_code(swtpm: Swtpm) -> None:
    with (
        swtpm.client() as client,
        pytest.raises(AttestationError, match=r"^TPM2_Quote failed: TPM_RC_VALUE \(0x00000184, handle 1\)$"),
    ):
        client.quote(0x80FFFFFF, REPORT_DATA)
    with (
        swtpm.client() as client,
        pytest.raises(
            AttestationError, match=r"^TPM2_FlushContext failed: TPM_RC_VALUE \(0x000001c4, parameter 1\)$"
        ),
    ):
        client.flush_context(0x80FFFF00)


@pytest.mark.parametrize(
    ("rc", "text"),
    [
        (0x1C4, "TPM_RC_VALUE (0x000001c4, parameter 1)"),
        (0x98E, "TPM_RC_AUTH_FAIL (0x0000098e, session 1)"),
        (0x18B, "TPM_RC_HANDLE (0x0000018b, handle 1)"),
        (0x0A2, "TPM_RC_BAD_AUTH (0x000000a2)"),
        (0x101, "TPM_RC_FAILURE (0x00000101)"),
        (0x902, "TPM_RC_OBJECT_MEMORY (0x00000902)"),
        (0x922, "TPM_RC_RETRY (0x00000922)"),
        (0x910, "TPM_RC_REFERENCE_H0 (0x00000910)"),
        (0x00000022, "TPM 1.2 response code 0x00000022"),
        (0x0500, "vendor-specific response code 0x00000500"),
        (0x000B0001, "response code 0x000b0001 from software layer 11"),
    ],
)
def test_response_codes_are_decoded(rc: int, text: str) -> None:
    """TPM 2.0 Part 2 §6.6: format one (error, P, N), format zero (VER1, warnings, vendor)."""
    assert describe_rc(rc) == text


# --- tampering ----------------------------------------------------------------------------------


@pytest.fixture
def made(swtpm: Swtpm, event_log: Path) -> bytes:
    swtpm.extend(4, hashlib.sha256(b"a boot application").digest())
    return platform(swtpm, event_log).evidence(REPORT_DATA)


@pytest.mark.parametrize("field", ["quote", "signature"])
def test_every_bit_flip_of_the_quote_and_signature_is_refused(made: bytes, field: str) -> None:
    raw = getattr(fields(made), field)
    survivors = [
        (i, bit)
        for i in range(len(raw))
        for bit in (0, 7)
        if not refused_by(verify, replaced(made, **{field: flipped(raw, i, bit)}))
    ]
    assert survivors == []


def test_a_flip_of_the_attestation_key_is_refused_or_changes_nothing_verified(made: bytes) -> None:
    """The key's public area is the evidence's own claim: nothing signs it. A flip of its key or of
    an attribute the verifier requires is refused; one that passes changes neither (e.g. userWithAuth,
    which the verifier does not ask for)."""
    ak = fields(made).ak
    original = AttestationKey.from_bytes(ak)
    for i in range(len(ak)):
        for bit in range(8):
            changed = flipped(ak, i, bit)
            if refused_by(verify, replaced(made, ak=changed)):
                continue
            accepted = AttestationKey.from_bytes(changed)
            assert accepted.public_key.public_numbers() == original.public_key.public_numbers(), (i, bit)
            assert accepted.attributes & tpm.AK_ATTRIBUTES == tpm.AK_ATTRIBUTES, (i, bit)


def test_a_changed_pcr_value_is_refused(made: bytes) -> None:
    pcrs = fields(made).pcrs
    for i in QUOTED_PCRS:
        with pytest.raises(AttestationError, match=r"^the PCR values in the vTPM evidence are not those"):
            verify(replaced(made, pcrs={**pcrs, i: flipped(pcrs[i], 31, 0)}))


def test_a_key_that_is_not_restricted_is_refused_even_when_its_signature_verifies(
    swtpm: Swtpm, made: bytes, tmp_path: Path
) -> None:
    """The attack restricted keys prevent: an ordinary signing key of the TPM signs a TPMS_ATTEST of
    someone's making (here: PCRs of their choosing) with TPM2_Sign. The signature verifies; the key's
    attributes give it away."""
    need_tpm2_tools()
    forged_pcrs = {i: hashlib.sha256(b"PCR %d of the attacker's choosing" % i).digest() for i in QUOTED_PCRS}
    original = Quote.from_bytes(fields(made).quote)
    forged = original.raw[: -len(original.pcr_digest)] + tpm.pcr_digest(forged_pcrs)
    (tmp_path / "forged.msg").write_bytes(forged)
    swtpm.tpm2(
        "tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256:ecdsa-sha256:null",
        "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign", "-c", "signer.ctx",
        cwd=tmp_path,
    )  # fmt: skip
    swtpm.tpm2("tpm2_readpublic", "-c", "signer.ctx", "-o", "signer.pub", cwd=tmp_path)
    swtpm.tpm2(
        "tpm2_sign", "-c", "signer.ctx", "-g", "sha256", "-o", "forged.sig", "forged.msg", cwd=tmp_path
    )
    attack = VtpmEvidence(
        quote=forged,
        signature=(tmp_path / "forged.sig").read_bytes(),
        ak=(tmp_path / "signer.pub").read_bytes()[2:],
        pcrs=forged_pcrs,
    )
    with pytest.raises(
        AttestationError, match=r"^TPM key is not a restricted signing key .*: RESTRICTED not set$"
    ):
        verify(attack.encode())
    # ... and a restricted key refuses to sign it at all
    swtpm.tpm2(
        "tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256:ecdsa-sha256:null",
        "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign", "-c", "ak.ctx",
        cwd=tmp_path,
    )  # fmt: skip
    with pytest.raises(AssertionError, match="tpm2_sign"):
        swtpm.tpm2(
            "tpm2_sign", "-c", "ak.ctx", "-g", "sha256", "-o", "refused.sig", "forged.msg", cwd=tmp_path
        )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: {**d, "format": "enclave-infer vtpm evidence v2"}, "vTPM evidence format is"),
        (lambda d: {k: v for k, v in d.items() if k != "hardware"}, "must be a JSON object with exactly"),
        (lambda d: {**d, "quote": "not base64!"}, "vTPM evidence quote is not base64"),
        (lambda d: {**d, "pcrs": {"sha1": d["pcrs"]["sha256"]}}, "must hold the sha256 bank alone"),
        (lambda d: {**d, "pcrs": {"sha256": {**d["pcrs"]["sha256"], "16": "00" * 32}}}, r"not 0 to 15"),
        (lambda d: {**d, "pcrs": {"sha256": {**d["pcrs"]["sha256"], "01": "00" * 32}}}, "decimal indices"),
        (lambda d: {**d, "pcrs": {"sha256": {**d["pcrs"]["sha256"], "1": "AB" * 32}}}, "lowercase hex"),
        (lambda d: {**d, "hardware": {"tee": "tdx", "evidence": ""}}, r"from 'tdx' is not supported"),
    ],
)
def test_a_malformed_container_is_refused_in_one_line(made: bytes, mutate: Any, message: str) -> None:
    with pytest.raises(AttestationError, match=message) as refused:
        verify(json.dumps(mutate(json.loads(made))).encode())
    assert "\n" not in str(refused.value)


def test_a_quote_of_other_pcrs_is_refused(swtpm: Swtpm, made: bytes) -> None:
    """A pcrDigest pins one selection: the same values under other indices would give the same digest."""
    with swtpm.client() as client:
        handle, ak = client.create_attestation_key()
        quoted, signature = client.quote(handle, REPORT_DATA, tuple(range(8)))
        client.flush_context(handle)
    assert ak == fields(made).ak
    with pytest.raises(
        AttestationError, match=r"^TPM quote selects SHA256 PCRs \[0, .*, 7\], not sha256 PCRs 0 to 15$"
    ):
        verify(replaced(made, quote=quoted, signature=signature))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_the_parsers_refuse_any_bytes_with_an_attestation_error(data: bytes) -> None:
    """Any bytes: a parse or an AttestationError, never another exception (refused_by lets those out)."""
    for parse in (
        Quote.from_bytes,
        AttestationKey.from_bytes,
        tpm.TpmSignature.from_bytes,
        VtpmEvidence.decode,
    ):
        refused_by(parse, data)
    refused_by(verify, data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["format", "quote", "signature", "ak", "pcrs", "hardware"]), JSON)
def test_any_json_in_a_field_is_refused_with_an_attestation_error(field: str, value: Any) -> None:
    document = {"format": tpm.FORMAT, "quote": "", "signature": "", "ak": "", "hardware": None,
                "pcrs": {"sha256": {str(i): "00" * 32 for i in QUOTED_PCRS}}}  # fmt: skip
    assert refused_by(verify, json.dumps({**document, field: value}).encode())


# --- the hardware binding (emulated AMD, real TPM) --------------------------------------------------


def jwk(key: AttestationKey, kid: str = "HCLAkPub") -> dict[str, Any]:
    """The attestation key as Azure's runtime claims hold it (RFC 7517 / 7518 §6)."""

    def b64url(n: int, size: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(size, "big")).rstrip(b"=").decode()

    numbers = key.public_key.public_numbers()
    if isinstance(numbers, ec.EllipticCurvePublicNumbers):
        return {"kid": kid, "key_ops": ["sign"], "kty": "EC", "crv": "P-256", "x": b64url(numbers.x, 32),
                "y": b64url(numbers.y, 32)}  # fmt: skip
    return {
        "kid": kid,
        "key_ops": ["sign"],
        "kty": "RSA",
        "e": b64url(numbers.e, 3),
        "n": b64url(numbers.n, 256),
    }


def runtime_claims(*keys: dict[str, Any]) -> bytes:
    """Runtime claims shaped as an Azure CVM's (keys, vm-configuration, user-data)."""
    document = {
        "keys": list(keys),
        "vm-configuration": {"console-enabled": False, "secure-boot": True, "tpm-enabled": True},
        "user-data": "00" * 64,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def bound(made: bytes, amd: EmulatedSnp, claims: bytes, **report: Any) -> bytes:
    return replaced(made, hardware=HardwareBinding(Tee.SEV_SNP, amd.hcl_report(claims, PARAVISOR, **report)))


def collateral_with_crl(amd: EmulatedSnp) -> bytes:
    return amd.collateral + amd.crl(this_update=NOW - timedelta(days=1), next_update=NOW + timedelta(days=7))


def test_an_hcl_report_that_names_the_attestation_key_lends_its_level(made: bytes, amd: EmulatedSnp) -> None:
    ak = AttestationKey.from_bytes(fields(made).ak)
    claims = runtime_claims(jwk(ak), {"kid": "HCLEkPub", "kty": "RSA", "e": "AQAB", "n": "AAAA"})
    document = bound(made, amd, claims)
    roots = Verifier(snp_roots={"Genoa": amd.ark_der})
    report = roots.platform_report(Tee.VTPM, document, collateral_with_crl(amd), NOW)
    assert report.tee == Tee.VTPM and report.security_level == SecurityLevel.SECURE
    assert report.level_reason.startswith("vTPM attestation key bound by an Azure HCL SEV-SNP report: ")
    assert report.snp_tcb == amd.reported_tcb and report.report_data == REPORT_DATA
    assert report.code_hash == Quote.from_bytes(fields(made).quote).pcr_digest  # still the PCRs'
    assert PARAVISOR in report.platform_settings
    # without AMD's CRL it is at most STALE, as SEV-SNP evidence is
    stale = roots.platform_report(Tee.VTPM, document, amd.collateral, NOW)
    assert stale.security_level == SecurityLevel.STALE and "no AMD CRL given" in stale.level_reason
    # the production verifier trusts AMD's roots, not the emulation's
    with pytest.raises(AttestationError, match="not signed by a pinned AMD root"):
        Verifier.production().platform_report(Tee.VTPM, document, amd.collateral, NOW)
    with pytest.raises(AttestationError, match="SEV-SNP roots were given"):
        verify(document, amd.collateral)
    with pytest.raises(AttestationError, match="without collateral"):
        roots.platform_report(Tee.VTPM, document, b"", NOW)


def test_an_rsa_attestation_key_binds_as_azures_does(swtpm: Swtpm, amd: EmulatedSnp, tmp_path: Path) -> None:
    """Azure's attestation key is RSA-2048: its HCLAkPub JWK holds n and e."""
    evidence = tpm2_tools_quote(swtpm, tmp_path, "rsa2048:rsassa-sha256:null")
    ak = evidence.ak
    made = dataclasses.replace(evidence, pcrs={i: bytes(32) for i in QUOTED_PCRS}).encode()
    roots = Verifier(snp_roots={"Genoa": amd.ark_der})
    report = roots.platform_report(
        Tee.VTPM,
        bound(made, amd, runtime_claims(jwk(AttestationKey.from_bytes(ak)))),
        collateral_with_crl(amd),
        NOW,
    )
    assert report.security_level == SecurityLevel.SECURE
    other = jwk(AttestationKey.from_bytes(fields(bound_ecc_key()).ak))
    with pytest.raises(AttestationError, match="HCLAkPub is not the key that signed the TPM quote"):
        roots.platform_report(
            Tee.VTPM, bound(made, amd, runtime_claims(other)), collateral_with_crl(amd), NOW
        )


def bound_ecc_key() -> bytes:
    """Evidence fields holding some other P-256 key (for a JWK that names another key)."""
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    ak = (
        struct.pack(">HHI", TpmAlg.ECC, TpmAlg.SHA256, vtpm.AK_ATTRIBUTES)
        + struct.pack(">HHHHHH", 0, TpmAlg.NULL, TpmAlg.ECDSA, TpmAlg.SHA256, 3, TpmAlg.NULL)
        + struct.pack(">H", 32) + numbers.x.to_bytes(32, "big")
        + struct.pack(">H", 32) + numbers.y.to_bytes(32, "big")
    )  # fmt: skip
    return VtpmEvidence(b"", b"", ak, {i: bytes(32) for i in QUOTED_PCRS}).encode()


def test_an_hcl_report_that_names_another_key_is_refused(made: bytes, amd: EmulatedSnp) -> None:
    roots = Verifier(snp_roots={"Genoa": amd.ark_der})
    other = jwk(AttestationKey.from_bytes(fields(bound_ecc_key()).ak))
    ours = jwk(AttestationKey.from_bytes(fields(made).ak))
    for claims, message in [
        (runtime_claims(other), "HCLAkPub is not the key that signed the TPM quote"),
        (runtime_claims({**ours, "kid": "HCLEkPub"}), "hold no single HCLAkPub key"),
        (runtime_claims(ours, ours), "hold no single HCLAkPub key"),
        (runtime_claims({**ours, "crv": "P-384"}), "HCLAkPub is not the key"),
        (runtime_claims({**ours, "x": ours["x"] + "="}), "HCLAkPub is not the key"),
    ]:
        with pytest.raises(AttestationError, match=message):
            roots.platform_report(Tee.VTPM, bound(made, amd, claims), amd.collateral, NOW)


def test_an_hcl_report_the_guest_asked_for_is_refused(made: bytes, amd: EmulatedSnp) -> None:
    """Only the paravisor, at VMPL 0, speaks for the vTPM: a guest at VMPL 1 to 3 may ask the firmware
    for a report with any REPORT_DATA, the hash of claims naming a key of its own."""
    claims = runtime_claims(jwk(AttestationKey.from_bytes(fields(made).ak)))
    roots = Verifier(snp_roots={"Genoa": amd.ark_der})
    with pytest.raises(AttestationError, match=r"made at VMPL 2, not by the paravisor at VMPL 0"):
        roots.platform_report(Tee.VTPM, bound(made, amd, claims, vmpl=2), amd.collateral, NOW)


def test_a_binding_that_is_not_an_hcl_report_or_binds_other_claims_is_refused(
    made: bytes, amd: EmulatedSnp
) -> None:
    claims = runtime_claims(jwk(AttestationKey.from_bytes(fields(made).ak)))
    roots = Verifier(snp_roots={"Genoa": amd.ark_der})
    raw_report = amd.report(hashlib.sha256(claims).digest() + bytes(32), PARAVISOR)
    with pytest.raises(AttestationError, match="not an Azure HCL report"):
        roots.platform_report(
            Tee.VTPM, replaced(made, hardware=HardwareBinding(Tee.SEV_SNP, raw_report)), amd.collateral, NOW
        )
    hcl = amd.hcl_report(claims, PARAVISOR)
    swapped = hcl[: -len(claims)] + claims.replace(
        b'"user-data":"' + b"00" * 64, b'"user-data":"' + b"11" * 64
    )
    with pytest.raises(
        AttestationError, match="runtime claims are not the ones the report's REPORT_DATA binds"
    ):
        roots.platform_report(
            Tee.VTPM, replaced(made, hardware=HardwareBinding(Tee.SEV_SNP, swapped)), amd.collateral, NOW
        )
