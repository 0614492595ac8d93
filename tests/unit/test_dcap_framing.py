"""The DCAP quote framing that dcap.py checks before dcap-qvl: header layouts, exact lengths,
certification data types, and nothing but zero padding after the signature data.

Quotes are minted by the emulated platform (tests/emulation/dcap.py) and edited here field by
field; the offsets are computed from Intel's layouts independently of ``parse_quote_layout``:

    v3 (SGX):  header 48 | SGX report body 384 | u32 signature data length | ISV signature 64
               | attestation key 64 | QE report 384 | QE report signature 64 | u16 auth size
               | auth data | u16 type 5 | u32 size | PEM chain
    v4 (TDX):  header 48 | TD report 584 | u32 length | ISV signature 64 | attestation key 64
               | u16 type 6 | u32 size | [QE report ... | u16 type 5 | u32 size | PEM chain]
    v5 (TDX):  header 48 | u16 body type | u32 body size | TD report 584 or 648 | as v4
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from enclave_infer.attestation.dcap import parse_quote_layout, verify_quote
from enclave_infer.errors import AttestationError
from tests.emulation.dcap import NOW, EmulatedDcap, Tee

REPORT_DATA = bytes(64)
SIGNED_END = {"sgx": 48 + 384, "tdx4": 48 + 584, "tdx5": 48 + 6 + 648}
AUTH_DATA = 32  # the emulated QE's, as Intel's
TEES: dict[str, Tee] = {"sgx": "sgx", "tdx4": "tdx", "tdx5": "tdx"}


@pytest.fixture(scope="module")
def dcap() -> EmulatedDcap:
    return EmulatedDcap()


def mint(dcap: EmulatedDcap, kind: str) -> bytes:
    if kind == "sgx":
        return dcap.sgx_quote(REPORT_DATA)
    return dcap.tdx_quote(REPORT_DATA, version=4 if kind == "tdx4" else 5)


def offsets(kind: str) -> dict[str, int]:
    """Where each framing field of a minted ``kind`` quote starts."""
    length = SIGNED_END[kind]
    qe = length + 4 + 128 + (0 if kind == "sgx" else 6)
    inner = qe + 384 + 64 + 2 + AUTH_DATA
    out = {"length": length, "inner type": inner, "inner size": inner + 2}
    if kind != "sgx":
        out |= {"outer type": length + 4 + 128, "outer size": length + 4 + 130}
    return out


def put(quote: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(quote)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def get(quote: bytes, at: int, fmt: str) -> Any:
    return struct.unpack_from(fmt, quote, at)[0]


@pytest.mark.parametrize("kind", ["sgx", "tdx4", "tdx5"])
def test_a_minted_quote_fills_its_framing_exactly(dcap: EmulatedDcap, kind: str) -> None:
    quote = mint(dcap, kind)
    layout = parse_quote_layout(quote)
    at = offsets(kind)
    assert (layout.version, layout.tee) == ({"sgx": 3, "tdx4": 4, "tdx5": 5}[kind], TEES[kind])
    assert layout.signed_end == SIGNED_END[kind]
    assert layout.signature_data == slice(at["length"] + 4, len(quote))
    assert layout.pck_chain == dcap.pck_chain_pem.encode() + b"\x00"
    assert layout.padding == 0
    assert quote[layout.qe_report][:16] == dcap.platform.cpu_svn  # the QE report starts with CPUSVN
    assert (get(quote, at["inner type"], "<H"), get(quote, at["inner size"], "<I")) == (
        5,
        len(layout.pck_chain),
    )
    if kind != "sgx":
        assert get(quote, at["outer type"], "<H") == 6
        assert get(quote, at["outer size"], "<I") == len(quote) - at["outer size"] - 4


@pytest.mark.parametrize("kind", ["sgx", "tdx4", "tdx5"])
def test_each_length_must_be_exact(dcap: EmulatedDcap, kind: str) -> None:
    quote, at = mint(dcap, kind), offsets(kind)
    fields = {"length": "<I", "inner size": "<I"} | ({"outer size": "<I"} if kind != "sgx" else {})
    for name, fmt in fields.items():
        value = get(quote, at[name], fmt)
        for delta in (-1, 1, 1 << 16):
            tampered = put(quote, at[name], fmt, value + delta)
            with pytest.raises(AttestationError, match="DCAP quote"):
                parse_quote_layout(tampered)
            with pytest.raises(AttestationError):
                verify_quote(tampered, dcap.collateral(TEES[kind]), now=NOW, root_ca_der=dcap.root_ca_der)
    # a longer signature data length over zero padding: the certification data no longer fills it
    padded = put(quote + bytes(8), at["length"], "<I", get(quote, at["length"], "<I") + 8)
    declared = "PCK certificate chain" if kind == "sgx" else "QE report certification data"
    with pytest.raises(AttestationError, match=rf"{declared} .* declares \d+ bytes, but \d+ remain"):
        parse_quote_layout(padded)
    with pytest.raises(AttestationError, match="runs past the quote's end"):
        parse_quote_layout(put(quote, at["length"], "<I", get(quote, at["length"], "<I") + 1))


@pytest.mark.parametrize("kind", ["sgx", "tdx4", "tdx5"])
def test_certification_data_types(dcap: EmulatedDcap, kind: str) -> None:
    quote, at = mint(dcap, kind), offsets(kind)
    for wrong in (1, 4, 6 if kind == "sgx" else 7, 0xFFFF):
        with pytest.raises(
            AttestationError, match=f"type is {wrong}, expected 5 \\(PCK certificate chain\\)"
        ):
            parse_quote_layout(put(quote, at["inner type"], "<H", wrong))
    if kind != "sgx":
        for wrong in (5, 7, 0):
            with pytest.raises(
                AttestationError, match=f"type is {wrong}, expected 6 \\(QE report certification data\\)"
            ):
                parse_quote_layout(put(quote, at["outer type"], "<H", wrong))


@pytest.mark.parametrize("kind", ["sgx", "tdx4", "tdx5"])
def test_only_zero_padding_after_the_signature_data(dcap: EmulatedDcap, kind: str) -> None:
    quote = mint(dcap, kind)
    assert parse_quote_layout(quote + bytes(70)).padding == 70
    verify_quote(quote + bytes(70), dcap.collateral(TEES[kind]), now=NOW, root_ca_der=dcap.root_ca_der)
    with pytest.raises(
        AttestationError, match=r"1 byte\(s\) after its \d+-byte signature data that are not zero padding"
    ):
        parse_quote_layout(quote + b"\x01")
    with pytest.raises(AttestationError, match=r"3 byte\(s\) after"):
        parse_quote_layout(quote + b"\x00\x00\x80")


@pytest.mark.parametrize("kind", ["sgx", "tdx4", "tdx5"])
def test_truncated_anywhere(dcap: EmulatedDcap, kind: str) -> None:
    quote = mint(dcap, kind)
    at = offsets(kind)
    cuts = [0, 47, 48, SIGNED_END[kind] - 1, SIGNED_END[kind] + 3, *at.values(), len(quote) - 1]
    for cut in cuts:
        with pytest.raises(AttestationError, match="DCAP quote"):
            parse_quote_layout(quote[:cut])


def test_header_layouts(dcap: EmulatedDcap) -> None:
    sgx, tdx4, tdx5 = mint(dcap, "sgx"), mint(dcap, "tdx4"), mint(dcap, "tdx5")
    unsupported = "is not supported"
    for quote, version, tee_type in [
        (sgx, 4, 0),  # SGX in v4: Intel's QVL reads it, dcap-qvl 0.7 does not
        (sgx, 5, 0),
        (tdx4, 3, 0x81),  # TDX in a v3 quote
        (tdx4, 4, 0),  # a TD report called SGX
        (tdx4, 6, 0x81),
        (tdx4, 4, 0x80),
    ]:
        tampered = put(put(quote, 0, "<H", version), 4, "<I", tee_type)
        with pytest.raises(
            AttestationError, match=f"version {version} with TEE type {tee_type:#x} {unsupported}"
        ):
            parse_quote_layout(tampered)
    with pytest.raises(AttestationError, match="attestation key type 3 is not ECDSA-256-with-P-256"):
        parse_quote_layout(put(sgx, 2, "<H", 3))  # ECDSA-384: other signature and key sizes
    for body_type, size in [(1, 384), (2, 648), (3, 584), (4, 648)]:  # an SGX body, or a size mismatch
        tampered = put(put(tdx5, 48, "<H", body_type), 50, "<I", size)
        with pytest.raises(
            AttestationError, match=f"v5 body type {body_type} of {size} bytes is not a TD report"
        ):
            parse_quote_layout(tampered)


def test_what_each_refusal_names(dcap: EmulatedDcap) -> None:
    """One line, naming the field and both values (STYLE: refusals name both values)."""
    quote, at = mint(dcap, "tdx4"), offsets("tdx4")
    size = get(quote, at["inner size"], "<I")
    with pytest.raises(AttestationError) as info:
        parse_quote_layout(put(quote, at["inner size"], "<I", size + 2))
    assert str(info.value) == (
        f"DCAP quote PCK certificate chain (certification data type 5) declares {size + 2} bytes, "
        f"but {size} remain in its QE report certification data (type 6)"
    )
