"""An emulated TDX trust domain that boots a UKI: the CC event log TDVF and the UKI's loaders would
write, and the RTMRs it replays to, for :meth:`tests.emulation.dcap.EmulatedDcap.tdx_quote`.

TEST-ONLY, and deliberately independent of the project's own event-log and measurement code: the
log is written here by a small writer of its own, the Authenticode hashes come from LIEF (whose
hashes of the UKI and kernel captured in ``tests/vectors/measured-boot`` are the ones Debian's OVMF
logged), and the UKI's sections are read with LIEF too.

What a TD records when TDVF (edk2 ``OvmfPkg/IntelTdx``, ``OvmfPkg/Tcg/TdTcg2Dxe``) boots the UKI
from disk, the UKI's systemd-stub (252: it knows no CC measurement protocol, so it logs nothing of
its own) loads the kernel, and the kernel's EFI stub (Linux >= 6.9 measures through the CC protocol
when there is no TCG2 one) starts. UEFI 2.10 §38.4.1 maps PCRs onto CC measurement register indexes:
PCR 1 and 7 to MR 1 (RTMR0), PCR 2 to 6 to MR 2 (RTMR1), PCR 8 to 15 to MR 3 (RTMR2); the log's
"PCR index" field holds the MR index. In log order:

====  =====================================  ===================================================
MR    event                                  digest (SHA-384) of
====  =====================================  ===================================================
1     EV_EFI_HANDOFF_TABLES2 "TdxTable"      the TD HOB list the VMM handed over (emulated bytes)
1     EV_EFI_PLATFORM_FIRMWARE_BLOB2         the configuration firmware volume (emulated bytes)
1     EV_EFI_VARIABLE_DRIVER_CONFIG x5       SecureBoot (0), PK, KEK, db, dbx (empty): the
                                             UEFI_VARIABLE_DATA (secure boot off)
1     EV_SEPARATOR                           00000000 (the PCR 7 separator)
1     EV_EFI_VARIABLE_BOOT x2                BootOrder, Boot0000: the variables' data
2     EV_EFI_ACTION                          "Calling EFI Application from Boot Option"
2     EV_SEPARATOR                           00000000 (TDVF logs one, to RTMR1, where a TPM
                                             firmware logs one per PCR 0..7)
2     EV_EFI_BOOT_SERVICES_APPLICATION       the UKI (Authenticode)
2     EV_EFI_BOOT_SERVICES_APPLICATION       the UKI's ``.linux`` (Authenticode), loaded by the stub
3     EV_EVENT_TAG "LOADED_IMAGE::Load..."   the load options: ``.cmdline`` in UTF-16LE with a NUL
3     EV_EVENT_TAG "Linux initrd"            the ``.initrd`` section
2     EV_EFI_ACTION                          "Exit Boot Services Invocation"
2     EV_EFI_ACTION                          "Exit Boot Services Returned with Success"
====  =====================================  ===================================================

RTMR3 stays zero (nothing extends it at boot). The log opens, as TDVF's does, with a Spec ID event
("Spec ID Event03", SHA-384 only) in the SHA-1 ``TCG_PCClientPCREvent`` format, whose PCR index
TDVF sets to 1; every other event is a ``TCG_PCR_EVENT2`` with one SHA-384 digest (TCG PC Client
Platform Firmware Profile, §10.2). The ACPI CCEL table's log area is that log followed by 0xFF up
to its length (TDVF fills the area with 0xFF first), which :meth:`TdBoot.log_area` gives.

Event data follow the specifications and the project's captured vTPM log (device paths included);
the firmware's own events (HOB, configuration volume, variables) are fixed: they stand for
"whatever this TDVF build records", the same for every UKI.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import lief

__all__ = [
    "LOG_AREA_SIZE",
    "CcEvent",
    "TdBoot",
    "authenticode_sha384",
    "boot_uki",
    "uki_sections",
]

lief.logging.disable()  # it warns, on stderr, about Linux's short PE optional header

# TCG PC Client PFP §10.4.1 event types
EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_EVENT_TAG = 0x00000006
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
EV_EFI_HANDOFF_TABLES2 = 0x8000000B
TPM_ALG_SHA384 = 0x000C
SHA384_SIZE = 48
RTMR0, RTMR1, RTMR2 = 1, 2, 3  # CC MR indexes (UEFI 2.10 §38.4.1)
# TDVF's log area, PcdTcgLogAreaMinLen (SecurityPkg's default, which OVMF keeps): 64 KiB
LOG_AREA_SIZE = 0x10000

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
OVMF_PKG_TOKEN_SPACE = uuid.UUID("93bb96af-b9f2-4eb8-9462-e0ba74564236")  # names the HOB list, the CFV
# The UKI's device path in the project's VM (tests/vectors/measured-boot: PciRoot(0)/Pci(0x1f,2)/
# Sata(0,0xffff,0)/\EFI\BOOT\BOOTX64.EFI), and the one systemd-stub gives the kernel it loads from memory
UKI_DEVICE_PATH = bytes.fromhex(
    "02010c00d041030a0000000001010600021f03120a000000ffff0000040430005c004500460049005c0042004f004f00"
    "54005c0042004f004f0054005800360034002e0045004600490000007fff0400"
)
KERNEL_DEVICE_PATH = bytes.fromhex("04031400f8d1c555cd04b5468a20e56cbb3052d07fff0400")
# The Linux EFI stub's tagged events (drivers/firmware/efi/libstub/efi-stub-helper.c)
LOAD_OPTIONS_TAG = (0x8F3B22ED, b"LOADED_IMAGE::LoadOptions\0")
INITRD_TAG = (0x8F3B22EC, b"Linux initrd\0")


@dataclass(frozen=True)
class CcEvent:
    """One TCG_PCR_EVENT2 of a CC event log: its MR index (1..3: RTMR0..2), type, SHA-384 and data."""

    mr_index: int
    event_type: int
    digest: bytes
    data: bytes

    def encode(self) -> bytes:
        return (
            struct.pack("<IIIH", self.mr_index, self.event_type, 1, TPM_ALG_SHA384)
            + self.digest
            + struct.pack("<I", len(self.data))
            + self.data
        )


def _spec_id_event() -> bytes:
    """The log's first event: TCG_EfiSpecIDEvent (PFP §10.4.5.1) in the TCG_PCClientPCREvent format."""
    spec_id = (
        b"Spec ID Event03\0"
        + struct.pack("<IBBBB", 0, 0, 2, 0, 2)  # platform class, version 2.0 errata 0, UINTN of 8 bytes
        + struct.pack("<IHH", 1, TPM_ALG_SHA384, SHA384_SIZE)
        + b"\0"  # vendorInfoSize
    )
    return struct.pack("<II20sI", 1, EV_NO_ACTION, bytes(20), len(spec_id)) + spec_id


@dataclass(frozen=True)
class TdBoot:
    """The events a TD's boot logged, what its log area holds, and the RTMRs they replay to."""

    events: tuple[CcEvent, ...]

    def log(self) -> bytes:
        """The CC event log: the Spec ID event, then every event, and nothing after."""
        return _spec_id_event() + b"".join(event.encode() for event in self.events)

    def log_area(self, size: int = LOG_AREA_SIZE) -> bytes:
        """What ``/sys/firmware/acpi/tables/data/CCEL`` shows: the log, then 0xFF up to ``size``."""
        log = self.log()
        if len(log) > size:
            raise ValueError(f"the log ({len(log)} bytes) does not fit a {size}-byte area")
        return log + b"\xff" * (size - len(log))

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        """RTMR0..3 after the boot: each starts at zero; an event extends RTMR[mr-1] to
        SHA-384(RTMR ‖ digest) (Intel TDX module, TDG.MR.RTMR.EXTEND)."""
        registers = [bytes(SHA384_SIZE)] * 4
        for event in self.events:
            i = event.mr_index - 1
            registers[i] = hashlib.sha384(registers[i] + event.digest).digest()
        return registers[0], registers[1], registers[2], registers[3]


def authenticode_sha384(image: bytes) -> bytes:
    """The Authenticode SHA-384 of a PE image, by LIEF."""
    binary = lief.PE.parse(image)
    if binary is None:
        raise ValueError("not a PE image")
    return bytes(binary.authentihash(lief.PE.ALGORITHMS.SHA_384))


def uki_sections(uki: bytes) -> dict[str, bytes]:
    """A UKI's sections by name, each its ``VirtualSize`` bytes (what the stub reads), by LIEF."""
    binary = lief.PE.parse(uki)
    if binary is None:
        raise ValueError("not a PE image")
    return {s.name: bytes(s.content)[: min(s.virtual_size, s.size)] for s in binary.sections}


def _sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


def _variable(vendor: uuid.UUID, name: str, data: bytes) -> bytes:
    """UEFI_VARIABLE_DATA (PFP §10.2.6): vendor GUID, name length (characters), data length, the
    name in UTF-16LE without its NUL, the data."""
    return vendor.bytes_le + struct.pack("<QQ", len(name), len(data)) + name.encode("utf-16-le") + data


def _image_load_event(location: int, image: bytes, device_path: bytes) -> bytes:
    """UEFI_IMAGE_LOAD_EVENT (PFP §10.2.3): where and how long the image is, its device path."""
    return struct.pack("<QQQQ", location, len(image), 0, len(device_path)) + device_path


def _tagged(tag: tuple[int, bytes]) -> bytes:
    """TCG_PCClientTaggedEvent: the tag, the size of its data, the data."""
    tag_id, description = tag
    return struct.pack("<II", tag_id, len(description)) + description


def _action(mr_index: int, text: bytes) -> CcEvent:
    return CcEvent(mr_index, EV_EFI_ACTION, _sha384(text), text)


def _separator(mr_index: int) -> CcEvent:
    return CcEvent(mr_index, EV_SEPARATOR, _sha384(bytes(4)), bytes(4))


def firmware_events() -> list[CcEvent]:
    """RTMR0's events: the same for every UKI this emulated TDVF boots."""
    hob_list = b"emulated TD HOB list: PHIT, resource descriptors"
    cfv = b"emulated TDVF configuration firmware volume"
    hob_event = (
        struct.pack("<B8sQ", 8, b"TdxTable", 1) + OVMF_PKG_TOKEN_SPACE.bytes_le + struct.pack("<Q", 0x809000)
    )
    cfv_name = b"Fv(93bb96af-b9f2-4eb8-9462-e0ba74564236)"
    cfv_event = struct.pack("<B", len(cfv_name)) + cfv_name + struct.pack("<QQ", 0xFFC00000, len(cfv))
    events = [
        CcEvent(RTMR0, EV_EFI_HANDOFF_TABLES2, _sha384(hob_list), hob_event),
        CcEvent(RTMR0, EV_EFI_PLATFORM_FIRMWARE_BLOB2, _sha384(cfv), cfv_event),
    ]
    for vendor, name, value in [
        (EFI_GLOBAL_VARIABLE, "SecureBoot", b"\0"),
        (EFI_GLOBAL_VARIABLE, "PK", b""),
        (EFI_GLOBAL_VARIABLE, "KEK", b""),
        (EFI_IMAGE_SECURITY_DATABASE, "db", b""),
        (EFI_IMAGE_SECURITY_DATABASE, "dbx", b""),
    ]:
        data = _variable(vendor, name, value)
        events.append(CcEvent(RTMR0, EV_EFI_VARIABLE_DRIVER_CONFIG, _sha384(data), data))
    events.append(_separator(RTMR0))
    description = "UEFI Misc Device".encode("utf-16-le") + b"\0\0"
    boot0000 = struct.pack("<IH", 1, len(UKI_DEVICE_PATH)) + description + UKI_DEVICE_PATH
    for name, value in [("BootOrder", struct.pack("<H", 0)), ("Boot0000", boot0000)]:
        # TdTcg2Dxe hashes a boot variable's data, not the whole UEFI_VARIABLE_DATA
        events.append(
            CcEvent(RTMR0, EV_EFI_VARIABLE_BOOT, _sha384(value), _variable(EFI_GLOBAL_VARIABLE, name, value))
        )
    return events


def boot_uki(uki: bytes, *, firmware: Sequence[CcEvent] | None = None) -> TdBoot:
    """The events of a TD that boots ``uki``, as TDVF, systemd-stub and Linux's EFI stub log them
    (the table in the module docstring); ``firmware`` replaces RTMR0's events."""
    sections = uki_sections(uki)
    kernel, initrd = sections[".linux"], sections[".initrd"]
    cmdline = sections[".cmdline"].decode()
    if any(c < " " for c in cmdline):
        raise ValueError("a command line with control characters (systemd-stub rewrites them): not modelled")
    load_options = (cmdline + "\0").encode("utf-16-le")  # systemd-stub's LoadOptions, with their NUL
    events = list(firmware_events() if firmware is None else firmware)
    events += [
        _action(RTMR1, b"Calling EFI Application from Boot Option"),
        _separator(RTMR1),
        CcEvent(
            RTMR1,
            EV_EFI_BOOT_SERVICES_APPLICATION,
            authenticode_sha384(uki),
            _image_load_event(0x7CFF4018, uki, UKI_DEVICE_PATH),
        ),
        CcEvent(
            RTMR1,
            EV_EFI_BOOT_SERVICES_APPLICATION,
            authenticode_sha384(kernel),
            _image_load_event(0x7C4E0000, kernel, KERNEL_DEVICE_PATH),
        ),
        CcEvent(RTMR2, EV_EVENT_TAG, _sha384(load_options), _tagged(LOAD_OPTIONS_TAG)),
        CcEvent(RTMR2, EV_EVENT_TAG, _sha384(initrd), _tagged(INITRD_TAG)),
        _action(RTMR1, b"Exit Boot Services Invocation"),
        _action(RTMR1, b"Exit Boot Services Returned with Success"),
    ]
    return TdBoot(tuple(events))
