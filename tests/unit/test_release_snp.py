"""release/snp.py: the SEV-SNP MEASUREMENT of a measured direct boot, against sev-snp-measure's own
command-line tool, on a firmware image built here after edk2's layout and, when installed, on Debian's
AmdSev OVMF (package ``ovmf-amdsev``) and refused on Debian 12's OVMF (package ``ovmf``).

The command-line tool shares its digest code with the library release/snp.py calls, so agreeing with
it checks what release/snp.py adds: the kernel and initrd written out whole, the command line passed
as QEMU's ``-append`` takes it, the vCPU type's signature, the defaults. That the digest is AMD's is
sev-snp-measure's claim, checked by its authors against hardware.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from enclave_infer.errors import UsageError
from enclave_infer.release.snp import MEASUREMENT_SIZE, snp_measurement, vcpu_types

# Debian's AmdSev build: package ovmf-amdsev (Debian 14 and unstable); Debian 12's generic build: ovmf.
DEBIAN_AMDSEV_OVMF = Path("/usr/share/ovmf/OVMF.amdsev.fd")
DEBIAN_OVMF = Path("/usr/share/ovmf/OVMF.fd")

KERNEL = b"MZ" + bytes(range(256)) * 64  # stands for a bzImage: only its bytes' hash is measured
INITRD = b"070701" + b"initrd " * 500
CMDLINE = "console=ttyS0 root=/dev/mapper/root roothash=1234abcd panic=-1"

# --- a firmware image with edk2's footer table (OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm) --------

FOOTER_GUID = "96b582de-1fb2-45f7-baea-a366c55a082d"  # OVMF_TABLE_FOOTER_GUID
SEV_ES_RESET_BLOCK_GUID = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
SEV_HASH_TABLE_RV_GUID = "7255371f-3a3b-4b04-927b-1da6efa8d454"
SEV_METADATA_GUID = "dc886566-984a-4798-a75e-5585a7bf67cc"
# OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm's section types
SNP_SEC_MEM, SNP_SECRETS, CPUID, SNP_KERNEL_HASHES = 1, 2, 3, 0x10


def footer_entry(guid: str, data: bytes) -> bytes:
    """One table entry as the reset vector lays it out: data, then its size and GUID at its end."""
    return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le


def firmware(*, kernel_hashes: bool = True, size: int = 128 * 1024) -> bytes:
    """An OVMF-shaped image: SEV metadata (``ASEV``) with SNP sections, the SEV-ES reset block and
    the hashes-table pointer in a GUIDed footer table that ends 32 bytes before the image's end."""
    sections = [(0x800000, 0x1000, SNP_SEC_MEM), (0x801000, 0x1000, SNP_SECRETS), (0x802000, 0x1000, CPUID)]
    if kernel_hashes:
        sections.append((0x803000, 0x1000, SNP_KERNEL_HASHES))
    metadata = b"ASEV" + struct.pack("<III", 16 + 12 * len(sections), 1, len(sections))
    metadata += b"".join(struct.pack("<III", *section) for section in sections)
    metadata_offset = 0x1000  # from the end of the image
    entries = (
        footer_entry(SEV_METADATA_GUID, struct.pack("<I", metadata_offset))
        + footer_entry(SEV_HASH_TABLE_RV_GUID, struct.pack("<II", 0x803C00 if kernel_hashes else 0, 0x400))
        + footer_entry(SEV_ES_RESET_BLOCK_GUID, struct.pack("<I", 0x0080B004))
    )
    table = entries + struct.pack("<H", len(entries) + 18) + uuid.UUID(FOOTER_GUID).bytes_le
    image = bytearray(bytes(range(256)) * (size // 256))
    image[size - metadata_offset : size - metadata_offset + len(metadata)] = metadata
    image[size - 32 - len(table) : size - 32] = table
    return bytes(image)


@pytest.fixture
def ovmf(tmp_path: Path) -> Path:
    path = tmp_path / "OVMF.amdsev.fd"
    path.write_bytes(firmware())
    return path


def cli(ovmf: Path, tmp_path: Path, *, vcpus: int, vcpu_type: str, append: str, extra: list[str]) -> bytes:
    """sev-snp-measure's command-line tool on the same inputs, given as files."""
    (tmp_path / "k").write_bytes(KERNEL)
    (tmp_path / "i").write_bytes(INITRD)
    tool = shutil.which("sev-snp-measure", path=str(Path(sys.executable).parent))
    assert tool is not None, "sev-snp-measure's command-line tool is not installed"
    args = ["--mode", "snp", "--vcpus", str(vcpus), "--vcpu-type", vcpu_type, "--ovmf", str(ovmf)]
    args += ["--kernel", str(tmp_path / "k"), "--initrd", str(tmp_path / "i"), "--append", append]
    done = subprocess.run(
        [tool, *args, "--output-format", "hex", *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    return bytes.fromhex(done.stdout.strip())


def measure(ovmf: Path, **changes: object) -> bytes:
    args: dict[str, object] = {
        "ovmf": ovmf,
        "kernel": KERNEL,
        "initrd": INITRD,
        "cmdline": CMDLINE,
        "vcpus": 2,
        "vcpu_type": "EPYC-Milan",
    }
    args.update(changes)
    return snp_measurement(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("vcpus", "vcpu_type", "features"),
    [(1, "EPYC-v4", None), (2, "EPYC-Milan", None), (4, "EPYC-Genoa", 0x21)],
)
def test_agrees_with_sev_snp_measure_s_command_line_tool(
    ovmf: Path, tmp_path: Path, vcpus: int, vcpu_type: str, features: int | None
) -> None:
    extra = [] if features is None else ["--guest-features", hex(features)]
    expected = cli(ovmf, tmp_path, vcpus=vcpus, vcpu_type=vcpu_type, append=CMDLINE, extra=extra)
    options = {} if features is None else {"guest_features": features}
    got = measure(ovmf, vcpus=vcpus, vcpu_type=vcpu_type, **options)
    assert len(got) == MEASUREMENT_SIZE and got == expected


def test_one_byte_of_kernel_initrd_or_command_line_changes_the_measurement(ovmf: Path) -> None:
    base = measure(ovmf)
    assert measure(ovmf) == base  # deterministic
    variants = {
        "kernel": measure(ovmf, kernel=KERNEL[:100] + bytes([KERNEL[100] ^ 1]) + KERNEL[101:]),
        "initrd": measure(ovmf, initrd=INITRD[:-1] + b"X"),
        "cmdline": measure(ovmf, cmdline=CMDLINE.replace("panic=-1", "panic=-2")),
        "empty initrd": measure(ovmf, initrd=b""),
        "vcpus": measure(ovmf, vcpus=3),
        "vcpu type": measure(ovmf, vcpu_type="EPYC-Genoa"),
        "guest features": measure(ovmf, guest_features=0x21),
        "firmware": measure(_rewritten(ovmf, firmware(size=256 * 1024))),
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants)


def _rewritten(path: Path, data: bytes) -> Path:
    other = path.with_name("other-" + path.name)
    other.write_bytes(data)
    return other


def test_a_firmware_without_the_kernel_hashes_page_is_refused_in_one_line(tmp_path: Path) -> None:
    for name, data in {
        "OVMF.fd": firmware(kernel_hashes=False),
        "random.fd": bytes(range(256)) * 512,
        "tiny.fd": b"\x00" * 8,
    }.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UsageError) as refused:
            measure(path)
        message = str(refused.value)
        assert "\n" not in message and message.startswith(name)
        if name != "tiny.fd":
            assert "has no SEV metadata" in message and "OvmfPkg/AmdSev/AmdSevX64.dsc" in message
    with pytest.raises(UsageError, match="cannot read the firmware"):
        measure(tmp_path / "missing.fd")


def test_inputs_out_of_range_are_refused(ovmf: Path) -> None:
    assert "EPYC-Milan" in vcpu_types()
    for changes, message in [
        ({"vcpu_type": "Skylake"}, "unknown vCPU type 'Skylake'"),
        ({"vcpus": 0}, "vCPU count 0"),
        ({"vmm_type": "xen"}, "unknown VMM type"),
        ({"kernel": b""}, "kernel is empty"),
        ({"cmdline": "a\x00b"}, "NUL"),
    ]:
        with pytest.raises(UsageError, match=message):
            measure(ovmf, **changes)


@pytest.mark.skipif(
    not DEBIAN_AMDSEV_OVMF.is_file(), reason=f"{DEBIAN_AMDSEV_OVMF} (Debian: ovmf-amdsev) absent"
)
def test_debian_s_amdsev_firmware_agrees_with_the_command_line_tool(tmp_path: Path) -> None:
    expected = cli(DEBIAN_AMDSEV_OVMF, tmp_path, vcpus=4, vcpu_type="EPYC-Genoa", append=CMDLINE, extra=[])
    assert measure(DEBIAN_AMDSEV_OVMF, vcpus=4, vcpu_type="EPYC-Genoa") == expected
    assert measure(DEBIAN_AMDSEV_OVMF, vcpus=4, vcpu_type="EPYC-Genoa", cmdline=CMDLINE + " x") != expected


@pytest.mark.skipif(not DEBIAN_OVMF.is_file(), reason=f"{DEBIAN_OVMF} (Debian: ovmf) absent")
def test_debian_12_s_generic_firmware_is_refused() -> None:
    with pytest.raises(UsageError, match=r"^OVMF\.fd has no SEV metadata for a measured direct boot"):
        measure(DEBIAN_OVMF)
