"""Small, valid PE32+ images, and a unified kernel image (UKI) made of them, for tests.

TEST-ONLY. Tests cannot rely on a built image (``make image-uki`` takes minutes and Debian's
packages), so they boot this instead: a PE32+ EFI application laid out as the PE/COFF specification
("PE Format", Microsoft) says and as systemd's ``ukify`` lays out a UKI: an MS-DOS stub whose
``e_lfanew`` points at the ``PE\\0\\0`` signature; the COFF file header (machine x86-64); the PE32+
optional header with its 16 data directories (all empty: no relocations, no certificate table);
the section table; the sections' raw data at file offsets aligned to ``FileAlignment`` (0x200) and
loaded at addresses aligned to ``SectionAlignment`` (0x1000), each ``SizeOfRawData`` bytes long
(zero-padded) with ``VirtualSize`` its true length.

A UKI is such an application (here a ``.text`` of a few bytes stands for systemd-stub's code) with
the sections systemd-stub reads: ``.osrel`` (os-release), ``.cmdline`` (the kernel command line),
``.initrd`` and ``.linux``, the kernel, itself a PE image (Linux's EFI stub makes a bzImage one).
Only the layout is real: no code here runs.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["DEFAULT_CMDLINE", "DEFAULT_INITRD", "DEFAULT_OSREL", "kernel_image", "pe_image", "uki"]

FILE_ALIGNMENT = 0x200
SECTION_ALIGNMENT = 0x1000
PE_OFFSET = 0x80  # e_lfanew: the MS-DOS header and a short stub come first
MACHINE_AMD64 = 0x8664
OPTIONAL_HEADER_SIZE = 0xF0  # PE32+: 112 bytes of fields and 16 data directories of 8
IMAGE_FILE_EXECUTABLE_IMAGE = 0x0002
IMAGE_FILE_LARGE_ADDRESS_AWARE = 0x0020
PE32_PLUS = 0x20B
SUBSYSTEM_EFI_APPLICATION = 10
IMAGE_BASE = 0x140000000
# section characteristics
CODE = 0x60000020  # IMAGE_SCN_CNT_CODE | MEM_EXECUTE | MEM_READ
DATA = 0x40000040  # IMAGE_SCN_CNT_INITIALIZED_DATA | MEM_READ

DEFAULT_OSREL = b'NAME="enclave-infer"\nID=debian\nVERSION_ID="12"\n'
DEFAULT_CMDLINE = b"console=ttyS0 ro roothash=5f2c6d0e1b3a49875f2c6d0e1b3a4987 panic=-1"
DEFAULT_INITRD = b"070701" + bytes(range(256)) * 24  # stands for a cpio archive


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def pe_image(sections: Sequence[tuple[str, bytes, int]], *, entry_section: int = 0) -> bytes:
    """A PE32+ EFI application with ``sections`` (name, contents, characteristics), in that order;
    its entry point is the start of section ``entry_section``."""
    count = len(sections)
    headers_size = _align(PE_OFFSET + 4 + 20 + OPTIONAL_HEADER_SIZE + 40 * count, FILE_ALIGNMENT)
    table, body = b"", b""
    rva, offset = SECTION_ALIGNMENT, headers_size
    layout = []
    for name, contents, characteristics in sections:
        if len(name.encode()) > 8 or not contents:
            raise ValueError(f"section {name!r}: names have at most 8 bytes, and contents at least one")
        raw_size = _align(len(contents), FILE_ALIGNMENT)
        table += struct.pack(
            "<8sIIIIIIHHI", name.encode(), len(contents), rva, raw_size, offset, 0, 0, 0, 0, characteristics
        )
        body += contents + bytes(raw_size - len(contents))
        layout.append((rva, len(contents), characteristics))
        rva = _align(rva + len(contents), SECTION_ALIGNMENT)
        offset += raw_size
    code_size = sum(_align(size, FILE_ALIGNMENT) for _, size, c in layout if c & 0x20)
    data_size = sum(_align(size, FILE_ALIGNMENT) for _, size, c in layout if c & 0x40)
    code_base = next((r for r, _, c in layout if c & 0x20), 0)
    optional = struct.pack(
        "<HBBIIIIIQIIHHHHHHIIIIHHQQQQII",
        PE32_PLUS,
        2,  # linker version
        40,
        code_size,
        data_size,
        0,  # SizeOfUninitializedData
        layout[entry_section][0],  # AddressOfEntryPoint
        code_base,
        IMAGE_BASE,
        SECTION_ALIGNMENT,
        FILE_ALIGNMENT,
        0,  # operating system version
        0,
        0,  # image version
        0,
        0,  # subsystem version
        0,
        0,  # Win32VersionValue
        rva,  # SizeOfImage: the end of the last section, aligned
        headers_size,
        0,  # CheckSum: not checked for EFI images (and not part of the Authenticode hash)
        SUBSYSTEM_EFI_APPLICATION,
        0,  # DllCharacteristics
        0x100000,  # stack reserve, commit, heap reserve, commit
        0x1000,
        0x100000,
        0x1000,
        0,  # LoaderFlags
        16,  # NumberOfRvaAndSizes
    )
    optional += bytes(16 * 8)  # the data directories: none used
    assert len(optional) == OPTIONAL_HEADER_SIZE
    coff = struct.pack(
        "<HHIIIHH",
        MACHINE_AMD64,
        count,
        0,  # TimeDateStamp: 0, as reproducible builds write it
        0,
        0,
        OPTIONAL_HEADER_SIZE,
        IMAGE_FILE_EXECUTABLE_IMAGE | IMAGE_FILE_LARGE_ADDRESS_AWARE,
    )
    dos = bytearray(PE_OFFSET)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, PE_OFFSET)
    dos[0x40 : 0x40 + 39] = b"This program cannot be run in DOS mode."
    headers = bytes(dos) + b"PE\0\0" + coff + optional + table
    return headers + bytes(headers_size - len(headers)) + body


def kernel_image(payload: bytes = b"emulated Linux kernel") -> bytes:
    """A kernel as a PE image: ``payload`` stands for its code (one byte of it changes the image)."""
    return pe_image([(".text", b"\xc3" + payload, CODE)])  # ret: the entry returns at once


def uki(
    *,
    kernel: bytes | None = None,
    initrd: bytes = DEFAULT_INITRD,
    cmdline: bytes = DEFAULT_CMDLINE,
    osrel: bytes = DEFAULT_OSREL,
) -> bytes:
    """A UKI: a stub's ``.text``, then ``.osrel``, ``.cmdline``, ``.initrd`` and ``.linux``
    (``kernel``, by default :func:`kernel_image`), in ukify's order."""
    return pe_image(
        [
            (".text", b"\xc3emulated systemd-stub", CODE),
            (".osrel", osrel, DATA),
            (".cmdline", cmdline, DATA),
            (".initrd", initrd, DATA),
            (".linux", kernel_image() if kernel is None else kernel, DATA),
        ]
    )
