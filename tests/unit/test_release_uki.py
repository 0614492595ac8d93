"""release/pe.py and release/uki.py: the Authenticode hash and the measured-boot events of a UKI.

Independent references: a hash over "the file minus the omitted ranges" computed here (the
Authenticode spec's other reading, not the implementation's section walk); osslsigncode (Debian
package ``osslsigncode``), which computes the digest a signature covers; Debian's own signature on the
kernel inside the built UKI; and the real event log OVMF, systemd-stub and the kernel recorded when the
project's VM booted that UKI (tests/vectors/measured-boot).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from enclave_infer.errors import UsageError
from enclave_infer.release import pe as pe_module
from enclave_infer.release.pe import (
    CERTIFICATE_TABLE,
    MAX_SECTIONS,
    PE32_MAGIC,
    PE32_PLUS_MAGIC,
    authenticode,
    loaded_section,
    parse_pe,
)
from enclave_infer.release.uki import (
    STUB_MEASURED_SECTIONS,
    PredictedEvent,
    parse_uki,
    predict_tdx,
    predict_tpm,
    replay,
)
from tests.certs import self_signed

REPO = Path(__file__).resolve().parents[2]
BUILT_UKI = REPO / "build" / "image" / "uki" / "enclave-infer.efi"
VECTORS = REPO / "tests" / "vectors" / "measured-boot"
LOG = VECTORS / "ovmf-swtpm-uki.tpm-eventlog"

# ---------------------------------------------------------------------------------------------------
# A PE/COFF builder: the smallest images that still have every part the hash treats specially.

FILE_ALIGNMENT = 0x200
CHECKSUM = 0xDEADBEEF  # non-zero, so that a hash that covered it would show


@dataclass
class Layout:
    """Where the builder put the fields the hash skips (file offsets)."""

    checksum: int
    cert_entry: int | None  # the Certificate Table's data directory entry
    cert_table: tuple[int, int] | None  # (offset, size)


def build_pe(
    sections: list[tuple[str, bytes]],
    *,
    magic: int = PE32_PLUS_MAGIC,
    directories: int = 16,
    trailing: bytes = b"",
    cert: bytes = b"",
    virtual_sizes: dict[str, int] | None = None,
) -> tuple[bytes, Layout]:
    """A PE image with these sections (raw data padded to FILE_ALIGNMENT), then ``trailing`` bytes,
    then ``cert`` as the certificate table."""
    virtual_sizes = virtual_sizes or {}
    directories_at = 96 if magic == PE32_MAGIC else 112
    optional_size = directories_at + 8 * directories
    e_lfanew = 0x80
    optional_at = e_lfanew + 24
    table_at = optional_at + optional_size
    size_of_headers = -(-(table_at + 40 * len(sections)) // FILE_ALIGNMENT) * FILE_ALIGNMENT
    raw = []
    at = size_of_headers
    for name, data in sections:
        padded = data + bytes(-len(data) % FILE_ALIGNMENT)
        raw.append((name, data, padded, at))
        at += len(padded)
    body_end = at + len(trailing)
    cert_at = body_end if cert else 0

    out = bytearray(size_of_headers)
    out[0:2] = b"MZ"
    struct.pack_into("<I", out, 0x3C, e_lfanew)
    out[0x40:0x80] = b"This program cannot be run in DOS mode.".ljust(0x40, b"\0")
    out[e_lfanew : e_lfanew + 4] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", out, e_lfanew + 4, 0x8664, len(sections), 0, 0, 0, optional_size, 0x206)
    struct.pack_into("<H", out, optional_at, magic)
    struct.pack_into("<I", out, optional_at + 16, 0x1000)  # AddressOfEntryPoint: any
    struct.pack_into("<I", out, optional_at + 60, size_of_headers)
    struct.pack_into("<I", out, optional_at + 64, CHECKSUM)
    struct.pack_into("<H", out, optional_at + 68, 10)  # Subsystem: EFI application
    struct.pack_into("<I", out, optional_at + directories_at - 4, directories)
    for i in range(directories):  # some non-zero entries, so that skipping the wrong one would show
        struct.pack_into("<II", out, optional_at + directories_at + 8 * i, 0x100 * (i + 1), i + 1)
    cert_entry = None
    if directories > CERTIFICATE_TABLE:
        cert_entry = optional_at + directories_at + 8 * CERTIFICATE_TABLE
        struct.pack_into("<II", out, cert_entry, cert_at, len(cert))
    va = 0x1000
    for i, (name, data, padded, offset) in enumerate(raw):
        vsize = virtual_sizes.get(name, len(data))
        struct.pack_into("<8sIIII", out, table_at + 40 * i, name.encode(), vsize, va, len(padded), offset)
        va += -(-max(vsize, 1) // 0x1000) * 0x1000
    image = bytes(out) + b"".join(p for _, _, p, _ in raw) + trailing + cert
    return image, Layout(optional_at + 64, cert_entry, (cert_at, len(cert)) if cert else None)


def omitted_ranges_hash(pe: bytes, layout: Layout, alg: str) -> bytes:
    """The Authenticode hash read as "the whole file except CheckSum, the Certificate Table entry and
    the certificate table" (how signify and others compute it): equal to the section walk for an image
    whose sections tile the file, and computed without it."""
    skip = [(layout.checksum, 4)]
    if layout.cert_entry is not None:
        skip.append((layout.cert_entry, 8))
    if layout.cert_table is not None:
        skip.append(layout.cert_table)
    digest, at = hashlib.new(alg), 0
    for start, length in sorted(skip):
        digest.update(pe[at:start])
        at = start + length
    digest.update(pe[at:])
    return digest.digest()


def three_sections() -> list[tuple[str, bytes]]:
    return [(".text", b"\xcc" * 700), (".data", bytes(range(256)) * 3), (".reloc", b"\x01\x02" * 5)]


# ---------------------------------------------------------------------------------------------------
# Authenticode


@pytest.mark.parametrize("alg", ["sha1", "sha256", "sha384", "sha512"])
@pytest.mark.parametrize("magic", [PE32_MAGIC, PE32_PLUS_MAGIC])
@pytest.mark.parametrize(
    ("trailing", "cert"),
    [(b"", b""), (b"SYMBOLS" * 9, b""), (b"", b"\x30\x82" + bytes(62)), (b"tail", b"\x30" * 24)],
    ids=["plain", "trailing-data", "signed", "trailing-and-signed"],
)
def test_authenticode_equals_the_hash_of_the_file_without_the_omitted_ranges(
    alg: str, magic: int, trailing: bytes, cert: bytes
) -> None:
    pe, layout = build_pe(three_sections(), magic=magic, trailing=trailing, cert=cert)
    assert authenticode(pe, alg) == omitted_ranges_hash(pe, layout, alg)
    assert authenticode(pe, alg) != hashlib.new(alg, pe).digest()


def test_authenticode_without_a_certificate_table_entry_hashes_straight_through_the_headers() -> None:
    pe, layout = build_pe(three_sections(), directories=3)
    assert layout.cert_entry is None and parse_pe(pe).certificate_table is None
    assert authenticode(pe, "sha256") == omitted_ranges_hash(pe, layout, "sha256")


def test_authenticode_ignores_exactly_the_checksum_the_certificate_entry_and_the_certificates() -> None:
    pe, layout = build_pe(three_sections(), trailing=b"tail", cert=b"\x30" * 24)
    want = authenticode(pe, "sha256")
    assert layout.cert_entry is not None and layout.cert_table is not None

    def changed(at: int) -> bytes:
        return pe[:at] + bytes([pe[at] ^ 0xFF]) + pe[at + 1 :]

    for at in (layout.checksum, layout.checksum + 3, layout.cert_table[0], layout.cert_table[0] + 23):
        assert authenticode(changed(at), "sha256") == want, at
    # everything else counts: a header byte, section data, the trailing data
    for at in (0x40, layout.checksum - 8, layout.checksum + 4, layout.cert_entry + 8, 0x200, 0x4FF):
        assert authenticode(changed(at), "sha256") != want, at
    assert authenticode(changed(layout.cert_table[0] - 1), "sha256") != want


def test_a_section_table_out_of_file_order_is_hashed_in_file_order() -> None:
    pe, layout = build_pe(three_sections())
    image = parse_pe(pe)
    table_at = image.data_directory_offset + 8 * len(image.data_directories)
    headers = [pe[table_at + 40 * i : table_at + 40 * (i + 1)] for i in range(3)]
    swapped = pe[:table_at] + headers[2] + headers[0] + headers[1] + pe[table_at + 120 :]
    assert [s.name for s in parse_pe(swapped).sections] == [".reloc", ".text", ".data"]
    # only the section table changed, and it is part of the headers: the hash follows the bytes
    assert authenticode(swapped, "sha256") == omitted_ranges_hash(swapped, layout, "sha256")


def test_parse_reads_the_headers() -> None:
    pe, _ = build_pe(three_sections(), virtual_sizes={".data": 5000})
    image = parse_pe(pe)
    assert (image.magic, image.machine, image.size, image.size_of_headers) == (
        PE32_PLUS_MAGIC,
        0x8664,
        len(pe),
        0x200,
    )
    assert [s.name for s in image.sections] == [".text", ".data", ".reloc"]
    data = image.section(".data")
    assert data is not None and (data.virtual_size, data.size_of_raw_data, data.pointer_to_raw_data) == (
        5000,
        0x400,
        0x600,
    )
    assert image.section(".bss") is None
    assert len(image.data_directories) == 16


def test_a_loaded_section_is_virtual_size_bytes_zero_filled_past_the_raw_data() -> None:
    pe, _ = build_pe(three_sections(), virtual_sizes={".data": 5000, ".text": 100})
    image = parse_pe(pe)
    data, text = image.section(".data"), image.section(".text")
    assert data is not None and text is not None
    assert loaded_section(pe, data) == bytes(range(256)) * 3 + bytes(0x400 - 768) + bytes(5000 - 0x400)
    assert loaded_section(pe, text) == b"\xcc" * 100


# osslsigncode: an independent implementation, and the tool that signs PE images.
needs_osslsigncode = pytest.mark.skipif(
    shutil.which("osslsigncode") is None, reason="osslsigncode (Debian package osslsigncode) is not installed"
)


def osslsigncode_digest_der(pe: Path, alg: str, out: Path) -> bytes:
    """The SpcIndirectDataContent osslsigncode would sign for ``pe``: it holds the image's digest."""
    subprocess.run(
        ["osslsigncode", "extract-data", "-h", alg, "-in", str(pe), "-out", str(out)],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


def octet_string(digest: bytes) -> bytes:
    return bytes([0x04, len(digest)]) + digest


@needs_osslsigncode
@pytest.mark.parametrize("alg", ["sha256", "sha384"])
@pytest.mark.parametrize("magic", [PE32_MAGIC, PE32_PLUS_MAGIC])
def test_authenticode_agrees_with_osslsigncode(tmp_path: Path, alg: str, magic: int) -> None:
    pe, _ = build_pe(three_sections(), magic=magic, trailing=b"symbols!")
    assert len(pe) % 8 == 0  # osslsigncode pads to 8 bytes before it hashes (below)
    (tmp_path / "a.efi").write_bytes(pe)
    der = osslsigncode_digest_der(tmp_path / "a.efi", alg, tmp_path / "a.der")
    assert octet_string(authenticode(pe, alg)) in der


@needs_osslsigncode
def test_osslsigncode_hashes_an_unsigned_file_padded_to_8_bytes_and_the_firmware_does_not(
    tmp_path: Path,
) -> None:
    pe, _ = build_pe(three_sections(), trailing=b"odd")
    assert len(pe) % 8 != 0
    (tmp_path / "a.efi").write_bytes(pe)
    der = osslsigncode_digest_der(tmp_path / "a.efi", "sha256", tmp_path / "a.der")
    padded = pe + bytes(-len(pe) % 8)
    assert octet_string(authenticode(padded, "sha256")) in der
    assert octet_string(authenticode(pe, "sha256")) not in der


@needs_osslsigncode
def test_signing_leaves_the_authenticode_hash_alone_and_the_signature_covers_it(tmp_path: Path) -> None:
    pe, _ = build_pe(three_sections(), trailing=b"symbols!")
    (tmp_path / "a.efi").write_bytes(pe)
    cert, key = self_signed(tmp_path)
    subprocess.run(
        [
            *("osslsigncode", "sign", "-certs", str(cert), "-key", str(key), "-h", "sha256"),
            *("-in", str(tmp_path / "a.efi"), "-out", str(tmp_path / "signed.efi")),
        ],
        check=True,
        capture_output=True,
    )
    signed = (tmp_path / "signed.efi").read_bytes()
    table = parse_pe(signed).certificate_table
    assert table is not None and table.size > 0 and table.virtual_address + table.size == len(signed)
    assert authenticode(signed, "sha256") == authenticode(pe, "sha256")
    assert octet_string(authenticode(pe, "sha256")) in signed[table.virtual_address :]


# ---------------------------------------------------------------------------------------------------
# Malformed images: refused with one line that names the first thing wrong.


def _patch(pe: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(pe)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def _malformed() -> dict[str, tuple[Callable[[bytes], bytes], str]]:
    _, layout = build_pe(three_sections())
    optional_at = layout.checksum - 64
    coff_at = 0x84
    table_at = optional_at + 112 + 8 * 16
    assert layout.cert_entry is not None
    cert_entry = layout.cert_entry
    return {
        "empty": (lambda b: b"", "no MS-DOS header"),
        "not-mz": (lambda b: b"ZM" + b[2:], "no MS-DOS header"),
        "e_lfanew-past-the-end": (lambda b: _patch(b, 0x3C, "<I", len(b) - 4), "leaves no room"),
        "no-pe-signature": (lambda b: _patch(b, 0x80, "<I", 0x454E), "no PE signature"),
        "rom-magic": (lambda b: _patch(b, optional_at, "<H", 0x107), "neither PE32 nor PE32+"),
        "too-many-sections": (lambda b: _patch(b, coff_at + 2, "<H", MAX_SECTIONS + 1), "MAX_SECTIONS"),
        "section-table-past-headers": (lambda b: _patch(b, coff_at + 2, "<H", 40), "after SizeOfHeaders"),
        "tiny-optional-header": (lambda b: _patch(b, coff_at + 16, "<H", 100), "SizeOfOptionalHeader"),
        "headers-past-the-end": (lambda b: _patch(b, optional_at + 60, "<I", len(b) + 1), "SizeOfHeaders"),
        "17-directories": (lambda b: _patch(b, optional_at + 108, "<I", 17), "NumberOfRvaAndSizes"),
        "directories-overflow": (
            lambda b: _patch(_patch(b, coff_at + 16, "<H", 112 + 8 * 3), optional_at + 108, "<I", 4),
            "do not fit",
        ),
        "section-past-the-end": (lambda b: _patch(b, table_at + 16, "<I", 0x10000), "past the end"),
        "section-gap": (lambda b: _patch(b, table_at + 40 + 20, "<I", 0x800), "starts at 0x800"),
        "certificates-not-at-the-end": (
            lambda b: _patch(_patch(b, cert_entry, "<I", 0x200), cert_entry + 4, "<I", 8),
            "certificate table",
        ),
        "certificates-over-the-sections": (
            lambda b: _patch(_patch(b, cert_entry, "<I", len(b) - 16), cert_entry + 4, "<I", 16),
            "certificate table",
        ),
        "section-name-not-ascii": (lambda b: _patch(b, table_at, "<B", 0xE9), "not ASCII"),
    }


MALFORMED = _malformed()


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_pe_is_refused_with_one_line(case: str) -> None:
    mutate, words = MALFORMED[case]
    pe, _ = build_pe(three_sections())
    authenticode(pe, "sha256")  # the unmutated image is fine
    with pytest.raises(UsageError) as info:
        authenticode(mutate(pe), "sha256")
    message = str(info.value)
    assert words in message and "\n" not in message, message


def test_an_unknown_algorithm_or_an_oversized_image_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    pe, _ = build_pe(three_sections())
    with pytest.raises(UsageError, match="unknown digest algorithm 'md5'"):
        authenticode(pe, "md5")
    monkeypatch.setattr(pe_module, "MAX_PE_BYTES", len(pe) - 1)
    with pytest.raises(UsageError, match=rf"PE image of {len(pe)} bytes is over MAX_PE_BYTES"):
        parse_pe(pe)


# ---------------------------------------------------------------------------------------------------
# A synthetic UKI: the prediction's structure, each digest derived here from the spec of the event.

KERNEL_SECTIONS = [(".setup", b"\x0f\x0b" * 300), (".text", b"\x90" * 1000)]
OSREL = b'ID=debian\nNAME="enclave-infer"\n'
CMDLINE = b"  console=ttyS0\troot=/dev/vda   panic=-1\n"
INITRD = b"070701" + bytes(range(256)) * 9


def build_uki(
    *, cmdline: bytes = CMDLINE, initrd: bytes = INITRD, extra: list[tuple[str, bytes]] | None = None
) -> tuple[bytes, bytes]:
    """(UKI, its kernel): a signed kernel PE inside a stub PE with the UKI sections, in ukify's
    order."""
    kernel, _ = build_pe(KERNEL_SECTIONS, cert=b"\x30\x82\x01\x00" + bytes(60))
    sections = [(".text", b"\xc3" * 600), (".osrel", OSREL), (".cmdline", cmdline)]
    sections += [(".initrd", initrd), (".linux", kernel), *(extra or [])]
    uki, _ = build_pe(sections, trailing=b"symbol table")
    return uki, kernel


def sha(alg: str, data: bytes) -> bytes:
    return hashlib.new(alg, data).digest()


def test_parse_uki_reads_the_payload_as_the_stub_passes_it() -> None:
    uki, kernel = build_uki()
    parts = parse_uki(uki)
    assert parts.kernel == kernel and parts.initrd == INITRD
    assert parts.cmdline == "console=ttyS0 root=/dev/vda   panic=-1"
    assert parts.load_options == "console=ttyS0 root=/dev/vda   panic=-1\0".encode("utf-16-le")
    assert [name for name, _ in parts.measured_sections] == [".linux", ".osrel", ".cmdline", ".initrd"]
    assert dict(parts.measured_sections)[".cmdline"] == CMDLINE  # PCR 11 has the section unmangled


@pytest.mark.parametrize(
    ("section", "cmdline"),
    [
        (b"quiet", "quiet"),
        (b"\n\r\t quiet \x7f splash\x01\n\n", "quiet   splash"),
        (b"a=1\0b=2", "a=1"),  # the stub stops at a NUL
        ("x=é€".encode(), "x=é€"),
    ],
)
def test_the_command_line_is_mangled_as_systemd_stub_252_does(section: bytes, cmdline: str) -> None:
    uki, _ = build_uki(cmdline=section)
    assert parse_uki(uki).cmdline == cmdline


def test_predict_tpm_lists_the_events_of_pcrs_4_9_11_in_log_order() -> None:
    uki, kernel = build_uki()
    events = predict_tpm(uki)
    assert [(e.register, e.type_name) for e in events] == [
        (4, "EV_EFI_ACTION"),
        (4, "EV_SEPARATOR"),
        (4, "EV_EFI_BOOT_SERVICES_APPLICATION"),
        *[(11, "EV_IPL")] * 8,
        (4, "EV_EFI_BOOT_SERVICES_APPLICATION"),
        (9, "EV_EVENT_TAG"),
        (9, "EV_EVENT_TAG"),
    ]
    assert [e.what for e in events] == [
        "boot option action",
        "separator",
        "the UKI (Authenticode)",
        "section name .linux",
        "section .linux",
        "section name .osrel",
        "section .osrel",
        "section name .cmdline",
        "section .cmdline",
        "section name .initrd",
        "section .initrd",
        "the kernel (Authenticode, loaded by the stub)",
        "the kernel command line (load options)",
        "the initrd",
    ]
    for alg in ("sha1", "sha256", "sha384", "sha512"):
        digests = [e.digests[alg] for e in events]
        load_options = "console=ttyS0 root=/dev/vda   panic=-1\0".encode("utf-16-le")
        assert digests == [
            sha(alg, b"Calling EFI Application from Boot Option"),
            sha(alg, bytes(4)),
            authenticode(uki, alg),
            sha(alg, b".linux\0"),
            sha(alg, kernel),
            sha(alg, b".osrel\0"),
            sha(alg, OSREL),
            sha(alg, b".cmdline\0"),
            sha(alg, CMDLINE),
            sha(alg, b".initrd\0"),
            sha(alg, INITRD),
            authenticode(kernel, alg),
            sha(alg, load_options),
            sha(alg, INITRD),
        ]


def extend_all(alg: str, digests: list[bytes]) -> bytes:
    value = bytes(hashlib.new(alg).digest_size)
    for digest in digests:
        value = sha(alg, value + digest)
    return value


def test_replay_extends_each_register_from_zero() -> None:
    uki, _ = build_uki()
    events = predict_tpm(uki, algs=("sha256", "sha384"))
    for alg in ("sha256", "sha384"):
        values = replay(events, alg)
        assert set(values) == {4, 9, 11}
        for pcr in (4, 9, 11):
            assert values[pcr] == extend_all(alg, [e.digests[alg] for e in events if e.register == pcr])
    with pytest.raises(UsageError, match="no sha1 digest"):
        replay(events, "sha1")


def test_predict_tdx_maps_the_events_onto_rtmr1_and_rtmr2() -> None:
    uki, kernel = build_uki()
    events = predict_tdx(uki)
    assert all(set(e.digests) == {"sha384"} for e in events)
    assert [(e.register, e.type_name, e.what) for e in events] == [
        (1, "EV_EFI_ACTION", "boot option action"),
        (1, "EV_SEPARATOR", "separator"),  # TDVF logs one per register, not one per PCR
        (1, "EV_EFI_BOOT_SERVICES_APPLICATION", "the UKI (Authenticode)"),
        (1, "EV_EFI_BOOT_SERVICES_APPLICATION", "the kernel (Authenticode, loaded by the stub)"),
        (2, "EV_EVENT_TAG", "the kernel command line (load options)"),
        (2, "EV_EVENT_TAG", "the initrd"),
        (1, "EV_EFI_ACTION", "ExitBootServices invocation"),
        (1, "EV_EFI_ACTION", "ExitBootServices returned"),
    ]
    assert events[2].digests["sha384"] == authenticode(uki, "sha384")
    assert events[3].digests["sha384"] == authenticode(kernel, "sha384")
    assert events[6].digests["sha384"] == sha("sha384", b"Exit Boot Services Invocation")
    assert events[7].digests["sha384"] == sha("sha384", b"Exit Boot Services Returned with Success")
    # RTMR2 is the TPM's PCR 9 in the SHA-384 bank: the same two events of the kernel's stub
    assert replay(events, "sha384")[2] == replay(predict_tpm(uki, algs=("sha384",)), "sha384")[9]


def test_each_part_of_the_uki_changes_the_events_that_cover_it_and_only_those() -> None:
    base = {e.what: e.digests["sha256"] for e in predict_tpm(build_uki()[0], algs=("sha256",))}

    def changed(*, cmdline: bytes = CMDLINE, initrd: bytes = INITRD) -> set[str]:
        other = predict_tpm(build_uki(cmdline=cmdline, initrd=initrd)[0], algs=("sha256",))
        return {e.what for e in other if e.digests["sha256"] != base[e.what]}

    assert changed(initrd=INITRD[:-1] + b"\x00") == {
        "the UKI (Authenticode)",
        "section .initrd",
        "the initrd",
    }
    assert changed(cmdline=b"console=ttyS1") == {
        "the UKI (Authenticode)",
        "section .cmdline",
        "the kernel command line (load options)",
    }
    # a newline the stub strips: PCR 11 sees it, the kernel's load options do not
    assert changed(cmdline=CMDLINE + b"\n") == {"the UKI (Authenticode)", "section .cmdline"}


def test_optional_stub_sections_are_measured_in_the_stubs_order() -> None:
    uki, _ = build_uki(extra=[(".dtb", b"\xd0\x0d\xfe\xed" * 8), (".splash", b"BM" + bytes(40))])
    names = [name for name, _ in parse_uki(uki).measured_sections]
    assert names == [".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb"]
    assert names == [n for n in STUB_MEASURED_SECTIONS if n in names]
    whats = [e.what for e in predict_tpm(uki, algs=("sha256",)) if e.register == 11]
    assert whats[-4:] == ["section name .splash", "section .splash", "section name .dtb", "section .dtb"]


def _without(name: str) -> bytes:
    kernel, _ = build_pe(KERNEL_SECTIONS)
    sections = [(".osrel", OSREL), (".cmdline", CMDLINE), (".initrd", INITRD), (".linux", kernel)]
    return build_pe([s for s in sections if s[0] != name])[0]


@pytest.mark.parametrize(
    ("uki", "words"),
    [
        (_without(".linux"), "no .linux section"),
        (_without(".cmdline"), "no .cmdline section"),
        (_without(".initrd"), "no .initrd section"),
        (build_uki(extra=[(".pcrpkey", b"-----BEGIN PUBLIC KEY-----")])[0], ".pcrpkey section to the initrd"),
        (build_uki(extra=[(".pcrsig", b"{}")])[0], ".pcrsig section to the initrd"),
        (build_uki(extra=[(".cmdline", b"again")])[0], "the section .cmdline appears twice"),
        (build_uki(cmdline=b"root=\xff")[0], ".cmdline section is not UTF-8"),
        (build_uki(cmdline=" \U0001f600".encode())[0], "outside UCS-2"),
        (build_uki(cmdline=b" \n\t ")[0], "holds no command line"),
        (b"MZ" + bytes(100), "no PE signature"),
    ],
    ids=[
        "no-linux",
        "no-cmdline",
        "no-initrd",
        "pcrpkey",
        "pcrsig",
        "twice",
        "not-utf8",
        "astral",
        "blank-cmdline",
        "not-a-pe",
    ],
)
def test_a_uki_outside_the_model_is_refused_with_one_line(uki: bytes, words: str) -> None:
    for predict in (predict_tpm, predict_tdx):
        with pytest.raises(UsageError) as info:
            predict(uki)
        assert words in str(info.value) and "\n" not in str(info.value), str(info.value)


# ---------------------------------------------------------------------------------------------------
# The real boot: tests/vectors/measured-boot's event log.

_ALGS = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}
_TYPES = {
    0x3: "EV_NO_ACTION",
    0x4: "EV_SEPARATOR",
    0x6: "EV_EVENT_TAG",
    0xD: "EV_IPL",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000007: "EV_EFI_ACTION",
}


@dataclass
class LogEvent:
    pcr: int
    type_name: str
    digests: dict[str, bytes]


def read_log(log: bytes) -> list[LogEvent]:
    """A TCG PC Client crypto-agile event log (TCG PC Client Platform Firmware Profile, section 10):
    a SHA-1-format Spec ID event with the digest sizes, then TCG_PCR_EVENT2 records. Only what these
    tests compare; the project's own reader is attestation/eventlog.py."""
    pcr, _, _, size = struct.unpack_from("<II20sI", log, 0)
    spec = log[32 : 32 + size]
    assert pcr == 0 and spec.startswith(b"Spec ID Event03\0")
    (count,) = struct.unpack_from("<I", spec, 24)
    sizes = dict(struct.unpack_from("<HH", spec, 28 + 4 * i) for i in range(count))
    events, at = [], 32 + size
    while at < len(log):
        pcr, kind, count = struct.unpack_from("<III", log, at)
        at += 12
        digests = {}
        for _ in range(count):
            (alg,) = struct.unpack_from("<H", log, at)
            digests[_ALGS[alg]] = log[at + 2 : at + 2 + sizes[alg]]
            at += 2 + sizes[alg]
        (size,) = struct.unpack_from("<I", log, at)
        at += 4 + size
        events.append(LogEvent(pcr, _TYPES.get(kind, hex(kind)), digests))
    return events


# tpm2_eventlog's reading of the committed log (its pcrs: section), SHA-256 and SHA-384 banks
LOG_PCRS = {
    "sha256": {
        4: "1427d71490aa0289007b21fb59eb39bfe71de372cb0e675fc828e35c4b530fad",
        9: "4f4b508174e1ecd88d2552423300d57930dcd0ade982e59219fe5eb9a13c0549",
        11: "6b0343d91efdcd17d478dfc002cbb2c7ba60451525981ad016d5e44c88a93998",
    },
    "sha384": {
        4: "f7e59dc6044415186e23ad3f36ca036a9749f9b1950ef68c4166f7f5728cbafabd27d9c84d2def20b0b0223e2cf12490",
        9: "24c2c3ef169bece7454b125964ce0a7d0791e1c95c27a090ae9e0761904b9545e6a2635b1739e723531cb7d186df49ca",
        11: "a07893b333df4e5d80a235116920f34fe640e529adbad646"
        "9c8908ad21258f3e3510481a02427f3c4fce82215b7d4cbe",
    },
}


def logged(pcrs: set[int]) -> list[LogEvent]:
    return [e for e in read_log(LOG.read_bytes()) if e.pcr in pcrs and e.type_name != "EV_NO_ACTION"]


def test_the_committed_log_replays_to_the_pcrs_tpm2_eventlog_reads() -> None:
    events = logged({4, 9, 11})
    for alg, pcrs in LOG_PCRS.items():
        for pcr, value in pcrs.items():
            assert extend_all(alg, [e.digests[alg] for e in events if e.pcr == pcr]).hex() == value


@pytest.mark.skipif(
    shutil.which("tpm2_eventlog") is None, reason="tpm2_eventlog (Debian tpm2-tools) is absent"
)
def test_tpm2_eventlog_reads_the_same_pcrs() -> None:
    text = subprocess.run(["tpm2_eventlog", str(LOG)], check=True, capture_output=True, text=True).stdout
    for alg, pcrs in LOG_PCRS.items():
        bank = text.split("pcrs:", 1)[1].split(f"  {alg}:", 1)[1]
        for pcr, value in pcrs.items():
            assert re.search(rf"^\s+{pcr}\s+: 0x{value}$", bank, re.M | re.I), (alg, pcr)


def test_the_constant_events_equal_the_logs() -> None:
    """Any UKI's constant events (the boot option action, PCR 4's separator, ExitBootServices) carry
    the digests the real boot recorded, in every bank."""
    real = logged({4, 5})
    uki, _ = build_uki()
    tpm = predict_tpm(uki)
    assert (real[0].type_name, real[1].type_name) == ("EV_EFI_ACTION", "EV_SEPARATOR")
    assert [tpm[0].digests, tpm[1].digests] == [real[0].digests, real[1].digests]
    tdx = predict_tdx(uki)
    exit_boot_services = [e for e in real if e.pcr == 5 and e.type_name == "EV_EFI_ACTION"]
    assert [e.digests["sha384"] for e in exit_boot_services] == [e.digests["sha384"] for e in tdx[-2:]]


def built_uki() -> bytes:
    if not BUILT_UKI.is_file():
        pytest.skip("no built UKI at build/image/uki/enclave-infer.efi (make image builds it)")
    return BUILT_UKI.read_bytes()


def logged_uki() -> bytes:
    """The built UKI if it is the one whose boot the committed log records (its SHA-256 is in the
    vectors' README); skip otherwise."""
    uki = built_uki()
    readme = (VECTORS / "README.md").read_text()
    recorded = re.search(r"SHA-256 ([0-9a-f]{64})", readme)
    assert recorded is not None
    if hashlib.sha256(uki).hexdigest() != recorded.group(1):
        pytest.skip(
            "build/image/uki/enclave-infer.efi is another build than the UKI the committed log "
            f"records (SHA-256 {recorded.group(1)[:16]}…)"
        )
    return uki


def test_every_predicted_tpm_event_equals_the_real_boots() -> None:
    uki = logged_uki()
    real = logged({4, 9, 11})
    predicted = predict_tpm(uki)
    assert len(predicted) == len(real) == 14
    for got, want in zip(predicted, real, strict=True):
        assert (got.register, got.type_name) == (want.pcr, want.type_name), got.what
        assert got.digests == want.digests, got.what  # all four banks
    for alg, pcrs in LOG_PCRS.items():
        assert {pcr: value.hex() for pcr, value in replay(predicted, alg).items()} == pcrs


def test_the_tdx_prediction_is_the_real_boots_events_mapped_onto_rtmrs() -> None:
    """RTMR1 is the log's PCR 2-6 events and RTMR2 its PCR 9 events, in log order, SHA-384, except
    that TDVF logs one separator for RTMR1 where the TPM firmware logged one for each of PCR 2-6."""
    uki = logged_uki()
    real = logged({2, 3, 4, 5, 6, 9})
    predicted = predict_tdx(uki)
    for rtmr, pcrs in ((1, {2, 3, 4, 5, 6}), (2, {9})):
        want = [(e.type_name, e.digests["sha384"]) for e in real if e.pcr in pcrs]
        if rtmr == 1:  # the first of the five separators stands for all
            separators = [i for i, (t, _) in enumerate(want) if t == "EV_SEPARATOR"]
            want = [w for i, w in enumerate(want) if i not in separators[1:]]
        got = [(e.type_name, e.digests["sha384"]) for e in predicted if e.register == rtmr]
        assert got == want, rtmr
    assert replay(predicted, "sha384")[2].hex() == LOG_PCRS["sha384"][9]


def test_the_built_ukis_kernel_hash_is_the_one_debian_signed() -> None:
    """The kernel in the UKI is Debian's signed one: its signature's SpcIndirectDataContent holds the
    SHA-256 Authenticode hash Debian's signer computed."""
    uki = built_uki()
    kernel = parse_uki(uki).kernel
    table = parse_pe(kernel).certificate_table
    if table is None or not table.size:
        pytest.skip("the built UKI's kernel is not signed")
    assert octet_string(authenticode(kernel, "sha256")) in kernel[table.virtual_address :]


@needs_osslsigncode
@pytest.mark.parametrize("alg", ["sha256", "sha384"])
def test_the_built_ukis_hash_agrees_with_osslsigncode(tmp_path: Path, alg: str) -> None:
    uki = built_uki()
    padded = uki + bytes(-len(uki) % 8)  # as osslsigncode hashes it (see above)
    (tmp_path / "uki.efi").write_bytes(uki)
    der = osslsigncode_digest_der(tmp_path / "uki.efi", alg, tmp_path / "uki.der")
    assert octet_string(authenticode(padded, alg)) in der


def test_predicted_events_are_plain_values() -> None:
    event = PredictedEvent(4, "EV_SEPARATOR", {"sha256": bytes(32)}, "separator")
    with pytest.raises(AttributeError):
        event.register = 5  # type: ignore[misc]
