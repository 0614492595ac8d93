"""PE/COFF images: the few header fields measured boot needs, and the Authenticode image hash.

Layout (Microsoft "PE Format", the PE/COFF specification; offsets in bytes)::

    MS-DOS stub   "MZ" ... e_lfanew (u32 at 0x3C): file offset of the PE signature
    signature     "PE\\0\\0"
    COFF header   20 bytes: Machine, NumberOfSections, ..., SizeOfOptionalHeader, Characteristics
    optional hdr  Magic (0x10B PE32, 0x20B PE32+), ..., SizeOfHeaders (+60), CheckSum (+64),
                  NumberOfRvaAndSizes (+92 PE32, +108 PE32+), data directories (+96 PE32, +112 PE32+),
                  8 bytes each (VirtualAddress, Size); entry 4 is the Certificate Table, whose
                  "VirtualAddress" is a file offset
    section table 40 bytes a section: Name[8], VirtualSize, VirtualAddress, SizeOfRawData,
                  PointerToRawData, ...

The Authenticode image hash ("Windows Authenticode Portable Executable Signature Format", "Calculating
the PE Image Hash") is what UEFI firmware extends into PCR 4 (EV_EFI_BOOT_SERVICES_APPLICATION) when it
loads an image. :func:`authenticode` follows EDK2 (``MeasurePeImageAndExtend`` in
SecurityPkg/Tcg/Tcg2Dxe/MeasureBootPeCoff.c, the code in OVMF), step by step:

1. hash the headers from offset 0 to the CheckSum field, skip CheckSum (4 bytes);
2. hash on to the Certificate Table's data directory entry, skip it (8 bytes), hash on to
   SizeOfHeaders (with fewer than 5 data directories: straight from CheckSum to SizeOfHeaders);
3. SUM_OF_BYTES_HASHED = SizeOfHeaders;
4. hash each section with a non-zero SizeOfRawData, sorted by PointerToRawData, SizeOfRawData bytes
   from PointerToRawData, adding SizeOfRawData to SUM_OF_BYTES_HASHED;
5. if the file is longer than SUM_OF_BYTES_HASHED + the Certificate Table's Size, hash the bytes from
   file offset SUM_OF_BYTES_HASHED up to file size - that Size (trailing data, e.g. the COFF symbol
   table a linker leaves after the last section).

Two details decide whether a digest matches the firmware's. EDK2 takes the trailing data from offset
SUM_OF_BYTES_HASHED, not from the end of the last section: the two agree when the sections tile the file
after the headers (every linker's and objcopy's output), and this module refuses an image where they
would not. And EDK2 hashes the file as it is, while signing tools (osslsigncode, sbsign) first pad an
unsigned file to a multiple of 8 bytes, so their digest of an unsigned file whose size is not a multiple
of 8 is the digest of the padded file; once signed, the padding is part of the file and all agree.

Pure logic on bytes. Malformed images raise :class:`~enclave_infer.errors.UsageError` with a one-line
message naming the first thing wrong.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from enclave_infer.errors import UsageError

__all__ = [
    "ALGORITHMS",
    "CERTIFICATE_TABLE",
    "MAX_PE_BYTES",
    "MAX_SECTIONS",
    "PE32_MAGIC",
    "PE32_PLUS_MAGIC",
    "DataDirectory",
    "PEImage",
    "Section",
    "authenticode",
    "loaded_section",
    "parse_pe",
]

# A UKI (kernel, initrd and all) is tens of MB; nothing measured boot loads comes near 1 GiB, and the
# whole file is held in memory.
MAX_PE_BYTES = 1 << 30
# The PE Format: "the Windows loader limits the number of sections to 96".
MAX_SECTIONS = 96
# The PE Format defines 16 data directories; EDK2 reads at most that many.
MAX_DATA_DIRECTORIES = 16
# The digests a TPM's PCR banks use (TCG algorithm registry names, as hashlib spells them).
ALGORITHMS = ("sha1", "sha256", "sha384", "sha512")

PE32_MAGIC = 0x10B
PE32_PLUS_MAGIC = 0x20B
# Index of the Certificate Table (IMAGE_DIRECTORY_ENTRY_SECURITY) among the data directories.
CERTIFICATE_TABLE = 4

_DOS_MAGIC = b"MZ"
_E_LFANEW = 0x3C
_PE_SIGNATURE = b"PE\0\0"
_COFF_HEADER = struct.Struct("<HHIIIHH")  # Machine .. Characteristics
_SECTION_HEADER = struct.Struct("<8sIIII")  # Name, VirtualSize, VirtualAddress, SizeOfRawData, Ptr
_SECTION_HEADER_SIZE = 40
_DATA_DIRECTORY = struct.Struct("<II")
# Offsets inside the optional header.
_SIZE_OF_HEADERS = 60
_CHECKSUM = 64
# (offset of NumberOfRvaAndSizes, offset of the first data directory) by Magic
_DIRECTORY_LAYOUT = {PE32_MAGIC: (92, 96), PE32_PLUS_MAGIC: (108, 112)}


@dataclass(frozen=True)
class Section:
    """One section header. ``name`` is the 8-byte field without its NUL padding."""

    name: str
    virtual_size: int
    virtual_address: int
    size_of_raw_data: int
    pointer_to_raw_data: int


@dataclass(frozen=True)
class DataDirectory:
    virtual_address: int
    size: int


@dataclass(frozen=True)
class PEImage:
    """The parsed headers of a PE/COFF image; every range they name lies inside the file."""

    size: int  # of the file, in bytes
    machine: int
    magic: int  # PE32_MAGIC or PE32_PLUS_MAGIC
    size_of_headers: int
    checksum_offset: int  # file offset of the optional header's CheckSum
    data_directory_offset: int  # file offset of the first data directory
    data_directories: tuple[DataDirectory, ...]
    sections: tuple[Section, ...]  # in section table order

    @property
    def certificate_table(self) -> DataDirectory | None:
        """The Certificate Table's data directory entry, or None when the image has fewer entries."""
        if len(self.data_directories) <= CERTIFICATE_TABLE:
            return None
        return self.data_directories[CERTIFICATE_TABLE]

    def section(self, name: str) -> Section | None:
        """The first section of that name, or None."""
        return next((s for s in self.sections if s.name == name), None)


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "little")


def _u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "little")


def parse_pe(data: bytes) -> PEImage:
    """Parse and check the headers of a PE/COFF image (the PE Format, sections 2-4).

    Raises UsageError when the image is malformed or over the named limits.
    """
    if len(data) > MAX_PE_BYTES:
        raise UsageError(f"PE image of {len(data)} bytes is over MAX_PE_BYTES ({MAX_PE_BYTES})")
    if len(data) < _E_LFANEW + 4 or data[:2] != _DOS_MAGIC:
        raise UsageError("not a PE image: no MS-DOS header with the MZ signature")
    pe_at = _u32(data, _E_LFANEW)
    coff_at = pe_at + len(_PE_SIGNATURE)
    optional_at = coff_at + _COFF_HEADER.size
    if optional_at + 2 > len(data):
        raise UsageError(f"PE image: e_lfanew {pe_at:#x} leaves no room for the PE headers in the file")
    if data[pe_at:coff_at] != _PE_SIGNATURE:
        raise UsageError(f"PE image: no PE signature at e_lfanew {pe_at:#x}")
    machine, n_sections, _, _, _, optional_size, _ = _COFF_HEADER.unpack_from(data, coff_at)
    if n_sections > MAX_SECTIONS:
        raise UsageError(f"PE image: {n_sections} sections, over MAX_SECTIONS ({MAX_SECTIONS})")
    magic = _u16(data, optional_at)
    if magic not in _DIRECTORY_LAYOUT:
        raise UsageError(f"PE image: optional header magic {magic:#x} is neither PE32 nor PE32+")
    count_at, directories_at = _DIRECTORY_LAYOUT[magic]
    if optional_size < directories_at:
        raise UsageError(f"PE image: SizeOfOptionalHeader {optional_size} is too small for its magic")
    section_table_at = optional_at + optional_size
    section_table_end = section_table_at + _SECTION_HEADER_SIZE * n_sections
    size_of_headers = _u32(data, optional_at + _SIZE_OF_HEADERS)
    if size_of_headers > len(data):
        raise UsageError(f"PE image: SizeOfHeaders {size_of_headers} is beyond the end of the file")
    if section_table_end > size_of_headers:
        raise UsageError(f"PE image: the section table ends at {section_table_end}, after SizeOfHeaders")
    n_directories = _u32(data, optional_at + count_at)
    if n_directories > MAX_DATA_DIRECTORIES:
        raise UsageError(
            f"PE image: NumberOfRvaAndSizes {n_directories} is over the {MAX_DATA_DIRECTORIES} defined"
        )
    if directories_at + _DATA_DIRECTORY.size * n_directories > optional_size:
        raise UsageError(f"PE image: {n_directories} data directories do not fit in the optional header")
    directories = tuple(
        DataDirectory(*_DATA_DIRECTORY.unpack_from(data, optional_at + directories_at + 8 * i))
        for i in range(n_directories)
    )
    sections = tuple(
        _section(data, i, section_table_at + _SECTION_HEADER_SIZE * i) for i in range(n_sections)
    )
    image = PEImage(
        size=len(data),
        machine=machine,
        magic=magic,
        size_of_headers=size_of_headers,
        checksum_offset=optional_at + _CHECKSUM,
        data_directory_offset=optional_at + directories_at,
        data_directories=directories,
        sections=sections,
    )
    _check_layout(image)
    return image


def _section(data: bytes, index: int, at: int) -> Section:
    raw_name, virtual_size, virtual_address, raw_size, raw_at = _SECTION_HEADER.unpack_from(data, at)
    try:
        name = raw_name.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"PE image: the name of section {index} is not ASCII") from None
    if raw_size and raw_at + raw_size > len(data):
        raise UsageError(f"PE image: section {name!r}'s raw data runs past the end of the file")
    return Section(name, virtual_size, virtual_address, raw_size, raw_at)


def _check_layout(image: PEImage) -> None:
    """Refuse what would make the firmware's hash (step 5's trailing data) differ from the spec's, or
    the firmware refuse the image: sections that overlap the headers or each other, or leave gaps, and
    a Certificate Table that is not at the end of the file."""
    end = image.size_of_headers
    for section in sorted(image.sections, key=lambda s: s.pointer_to_raw_data):
        if not section.size_of_raw_data:
            continue
        if section.pointer_to_raw_data != end:
            raise UsageError(
                f"PE image: section {section.name!r} starts at {section.pointer_to_raw_data:#x}, "
                f"not at {end:#x} where the headers or the previous section end"
            )
        end += section.size_of_raw_data
    table = image.certificate_table
    if table is None or not table.size:
        return
    if table.virtual_address + table.size != image.size or table.virtual_address < end:
        raise UsageError(
            f"PE image: the certificate table ({table.size} bytes at {table.virtual_address:#x}) "
            "is not at the end of the file"
        )


def _ranges(image: PEImage) -> list[tuple[int, int]]:
    """The (offset, length) file ranges the Authenticode hash covers, in order (EDK2's steps 1-5)."""
    ranges = [(0, image.checksum_offset)]
    after_checksum = image.checksum_offset + 4
    table = image.certificate_table
    if table is None:
        ranges.append((after_checksum, image.size_of_headers - after_checksum))
        cert_size = 0
    else:
        entry = image.data_directory_offset + 8 * CERTIFICATE_TABLE
        ranges.append((after_checksum, entry - after_checksum))
        ranges.append((entry + 8, image.size_of_headers - entry - 8))
        cert_size = table.size
    hashed = image.size_of_headers
    for section in sorted(image.sections, key=lambda s: s.pointer_to_raw_data):
        if section.size_of_raw_data:
            ranges.append((section.pointer_to_raw_data, section.size_of_raw_data))
            hashed += section.size_of_raw_data
    if image.size > hashed + cert_size:
        ranges.append((hashed, image.size - cert_size - hashed))
    elif image.size < hashed + cert_size:
        raise UsageError("PE image: the sections and the certificate table add up to more than the file")
    return ranges


def authenticode(pe: bytes, alg_name: str) -> bytes:
    """The Authenticode image hash of a PE/COFF file, as UEFI firmware (EDK2) measures it.

    ``alg_name`` is one of :data:`ALGORITHMS`. Raises UsageError for another algorithm or a malformed
    image.
    """
    if alg_name not in ALGORITHMS:
        raise UsageError(f"unknown digest algorithm {alg_name!r}: expected one of {', '.join(ALGORITHMS)}")
    image = parse_pe(pe)
    digest = hashlib.new(alg_name)
    view = memoryview(pe)
    for at, length in _ranges(image):
        digest.update(view[at : at + length])
    return digest.digest()


def loaded_section(pe: bytes, section: Section) -> bytes:
    """A section's contents as a loader maps them into memory: VirtualSize bytes, of which the first
    min(VirtualSize, SizeOfRawData) come from the file and the rest are zero (the PE Format, section
    table; EDK2's PeCoffLoaderLoadImage). ``section`` must come from ``parse_pe(pe)``."""
    from_file = min(section.virtual_size, section.size_of_raw_data)
    start = section.pointer_to_raw_data
    return pe[start : start + from_file] + bytes(section.virtual_size - from_file)
