"""An emulated TDX trust domain that boots a UKI (tests/emulation/ccel.py) through the real configfs-tsm
platform: its evidence carries the CC event log, the log replays to the RTMRs the quote carries, and
another kernel changes RTMR1 and the log.

Independent readers: tpm2-tools' ``tpm2_eventlog`` (Debian package tpm2-tools) parses the log and
replays it; LIEF computes the Authenticode hashes; the quotes verify under the emulated Intel root
with the project's verifier, which reads the RTMRs out of them.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import lief
import pytest
import yaml

from enclave_infer.attestation import constraints
from enclave_infer.attestation.dcap import verify_quote
from enclave_infer.attestation.evidence import Evidence, Verifier, verify
from enclave_infer.attestation.reference import ReferenceMeasurements, image_pin
from enclave_infer.attestation.report import Tee, attestation_binding
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave import tsm
from enclave_infer.enclave.tsm import ConfigfsTsmPlatform
from enclave_infer.errors import AttestationError, ConstraintError
from enclave_infer.release.derive import measured_boot
from tests.emulation.ccel import (
    EV_EFI_ACTION,
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EVENT_TAG,
    EV_SEPARATOR,
    TdBoot,
    boot_uki,
)
from tests.emulation.dcap import NOW, EmulatedDcap
from tests.emulation.pseudofs import FakeTsm, bounded
from tests.emulation.snp import EmulatedSnp
from tests.emulation.uki import DEFAULT_CMDLINE, DEFAULT_INITRD, kernel_image, uki

MRTD = hashlib.sha384(b"the emulated TDVF").digest()
NONCE_DATA = bytes(range(1, 65))


@pytest.fixture(scope="module")
def dcap() -> EmulatedDcap:
    return EmulatedDcap()


def authenticode(image: bytes) -> bytes:
    binary = lief.PE.parse(image)
    assert binary is not None
    return bytes(binary.authentihash(lief.PE.ALGORITHMS.SHA_384))


def quoted_rtmrs(dcap: EmulatedDcap, quote: bytes) -> tuple[bytes, ...]:
    """RTMR0..3 of a quote that verifies under the emulated root, as the project's verifier reads them."""
    registers = verify_quote(
        quote, dcap.collateral("tdx"), now=NOW, root_ca_der=dcap.root_ca_der
    ).report.registers
    assert registers is not None and (registers.kind, registers.alg) == ("rtmr", "sha384")
    return tuple(registers.values[i] for i in range(4))


def emulated_td(
    fake_tsm: Callable[..., FakeTsm], dcap: EmulatedDcap, boot: TdBoot, ccel: Path, **platform: object
) -> ConfigfsTsmPlatform:
    """A TD whose firmware logged ``boot`` (its log area at ``ccel``) and whose quotes carry its RTMRs."""
    ccel.write_bytes(boot.log_area())
    fake = fake_tsm(
        provider="tdx_guest", make_outblob=lambda rd: dcap.tdx_quote(rd, mrtd=MRTD, rtmrs=boot.rtmrs)
    )
    return bounded(lambda: ConfigfsTsmPlatform(fake.root, **platform))  # type: ignore[arg-type]


def tpm2_eventlog(log: bytes, tmp_path: Path) -> dict[int, bytes]:
    """The SHA-384 registers tpm2_eventlog replays ``log`` to, by MR index.

    tpm2-tools 5.4 refuses a Spec ID event whose PCR index is not 0, and TDVF writes 1 there ("PCR 0
    maps to MR index 1"): it is given the log with that one field set to 0, the rest as it is.
    """
    path = tmp_path / "ccel-for-tpm2-tools"
    path.write_bytes(bytes(4) + log[4:])
    done = subprocess.run(["tpm2_eventlog", str(path)], capture_output=True, text=True, check=True)
    banks = yaml.safe_load(done.stdout)["pcrs"]
    assert set(banks) == {"sha384"}
    # YAML reads tpm2_eventlog's 0x… values as integers
    values = {int(i): v if isinstance(v, int) else int(v, 16) for i, v in banks["sha384"].items()}
    return {i: v.to_bytes(48, "big") for i, v in values.items()}


def test_the_test_uki_is_a_pe_image_whose_kernel_is_one_too() -> None:
    image = uki()
    binary = lief.PE.parse(image)
    assert binary is not None and binary.optional_header.magic == lief.PE.PE_TYPE.PE32_PLUS
    assert binary.optional_header.subsystem == lief.PE.OptionalHeader.SUBSYSTEM.EFI_APPLICATION
    assert [s.name for s in binary.sections] == [".text", ".osrel", ".cmdline", ".initrd", ".linux"]
    linux = binary.get_section(".linux")
    kernel = bytes(linux.content)[: linux.virtual_size]
    assert kernel == kernel_image() and lief.PE.parse(kernel) is not None
    assert len({authenticode(image), authenticode(kernel), authenticode(uki(cmdline=b"quiet"))}) == 3


def test_the_emulated_td_s_evidence_carries_its_ccel_log(
    fake_tsm: Callable[..., FakeTsm], dcap: EmulatedDcap, tmp_path: Path
) -> None:
    boot = boot_uki(uki())
    ccel = tmp_path / "sys" / "CCEL"
    ccel.parent.mkdir()
    platform = emulated_td(fake_tsm, dcap, boot, ccel, event_logs=(tmp_path / "run" / "ccel-eventlog", ccel))
    assert platform.tee == "tdx" and platform.code_hash == MRTD
    # the log area without TDVF's 0xFF fill: the log, all of it
    assert len(ccel.read_bytes()) == 0x10000 and platform.event_log == boot.log()
    quote = bounded(lambda: platform.evidence(NONCE_DATA))
    assert quoted_rtmrs(dcap, quote) == boot.rtmrs and boot.rtmrs[3] == bytes(48)


@pytest.mark.skipif(shutil.which("tpm2_eventlog") is None, reason="tpm2_eventlog (Debian: tpm2-tools) absent")
def test_an_independent_reader_replays_the_carried_log_to_the_quoted_rtmrs(
    fake_tsm: Callable[..., FakeTsm], dcap: EmulatedDcap, tmp_path: Path
) -> None:
    boot = boot_uki(uki())
    platform = emulated_td(fake_tsm, dcap, boot, tmp_path / "CCEL", event_logs=(tmp_path / "CCEL",))
    rtmrs = quoted_rtmrs(dcap, bounded(lambda: platform.evidence(NONCE_DATA)))
    assert tpm2_eventlog(platform.event_log, tmp_path) == {1: rtmrs[0], 2: rtmrs[1], 3: rtmrs[2]}


def test_the_log_holds_the_boot_s_events_in_order() -> None:
    image = uki()
    kernel = kernel_image()
    events = boot_uki(image).events
    firmware, boot = events[:-8], events[-8:]
    assert {e.mr_index for e in firmware} == {1}  # RTMR0: the firmware's own, fixed
    expected = [
        (2, EV_EFI_ACTION, hashlib.sha384(b"Calling EFI Application from Boot Option").digest()),
        (2, EV_SEPARATOR, hashlib.sha384(bytes(4)).digest()),
        (2, EV_EFI_BOOT_SERVICES_APPLICATION, authenticode(image)),
        (2, EV_EFI_BOOT_SERVICES_APPLICATION, authenticode(kernel)),
        (3, EV_EVENT_TAG, hashlib.sha384((DEFAULT_CMDLINE.decode() + "\0").encode("utf-16-le")).digest()),
        (3, EV_EVENT_TAG, hashlib.sha384(DEFAULT_INITRD).digest()),
        (2, EV_EFI_ACTION, hashlib.sha384(b"Exit Boot Services Invocation").digest()),
        (2, EV_EFI_ACTION, hashlib.sha384(b"Exit Boot Services Returned with Success").digest()),
    ]
    assert [(e.mr_index, e.event_type, e.digest) for e in boot] == expected
    assert boot[4].data.endswith(b"LOADED_IMAGE::LoadOptions\0") and boot[5].data.endswith(b"Linux initrd\0")
    # the log's last bytes are the last event's text, so cutting the 0xFF fill cuts nothing else
    assert boot_uki(image).log().endswith(b"Exit Boot Services Returned with Success")


def test_another_kernel_changes_rtmr1_and_the_log(
    fake_tsm: Callable[..., FakeTsm], dcap: EmulatedDcap, tmp_path: Path
) -> None:
    boot = boot_uki(uki())
    other = boot_uki(uki(kernel=kernel_image(b"emulated Linux kernel, one byte changeD")))
    assert other.rtmrs[0] == boot.rtmrs[0] and other.rtmrs[2] == boot.rtmrs[2]
    assert other.rtmrs[1] != boot.rtmrs[1] and other.log() != boot.log()
    changed = [i for i, (a, b) in enumerate(zip(boot.events, other.events, strict=True)) if a != b]
    assert [boot.events[i].event_type for i in changed] == [EV_EFI_BOOT_SERVICES_APPLICATION] * 2
    # the same through the platform: another quote, another log
    (tmp_path / "other").mkdir()
    platform = emulated_td(
        fake_tsm, dcap, other, tmp_path / "other" / "CCEL", event_logs=(tmp_path / "other" / "CCEL",)
    )
    assert platform.event_log == other.log()
    assert quoted_rtmrs(dcap, bounded(lambda: platform.evidence(NONCE_DATA)))[1] == other.rtmrs[1]
    # a command line changes the UKI (RTMR1) and the load options (RTMR2); an initrd the same
    for changed_uki in (uki(cmdline=DEFAULT_CMDLINE + b" debug"), uki(initrd=DEFAULT_INITRD + b"x")):
        changed_boot = boot_uki(changed_uki)
        assert changed_boot.rtmrs[0] == boot.rtmrs[0]
        assert changed_boot.rtmrs[1] != boot.rtmrs[1] and changed_boot.rtmrs[2] != boot.rtmrs[2]


def test_where_the_platform_finds_the_log(tmp_path: Path) -> None:
    run, sysfs = tmp_path / "run-ccel-eventlog", tmp_path / "CCEL"
    assert tsm.read_ccel_event_log([run, sysfs]) == b""  # not a TD with a log: nothing to carry
    sysfs.write_bytes(b"log" + b"\xff" * 61)
    assert tsm.read_ccel_event_log([run, sysfs]) == b"log"  # the original, without its fill
    run.write_bytes(b"copy")
    assert tsm.read_ccel_event_log([run, sysfs]) == b"copy"  # the copy /init made comes first
    assert (
        Path("/run/enclave-infer/ccel-eventlog"),
        Path("/sys/firmware/acpi/tables/data/CCEL"),
    ) == tsm.CCEL_EVENT_LOGS


def test_an_unreadable_or_oversized_log_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match=f"cannot read the CC event log {tmp_path}: EISDIR") as info:
        tsm.read_ccel_event_log([tmp_path])
    assert "\n" not in str(info.value)
    big = tmp_path / "CCEL"
    big.write_bytes(bytes(tsm.MAX_EVENT_LOG_BYTES + 1))
    with pytest.raises(AttestationError, match="larger than"):
        tsm.read_ccel_event_log([big])


def test_permission_denied_says_where_the_readable_copy_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(path: Path, **_: object) -> bytes:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(tsm._pseudofs, "read_all", denied)
    with pytest.raises(AttestationError, match=r"permission denied .* copies it to /run/enclave-infer/ccel"):
        tsm.read_ccel_event_log([tmp_path / "CCEL"])


def test_an_sev_snp_guest_carries_no_ccel_log(fake_tsm: Callable[..., FakeTsm], tmp_path: Path) -> None:
    chip = EmulatedSnp("Genoa")
    ccel = tmp_path / "CCEL"
    ccel.write_bytes(boot_uki(uki()).log_area())
    fake = fake_tsm(provider="sev_guest", make_outblob=lambda rd: chip.report(rd, bytes(48)))
    platform = bounded(lambda: ConfigfsTsmPlatform(fake.root, event_logs=(ccel,)))
    assert platform.tee == "sev-snp" and platform.event_log == b""


KEY_CONFIG = b"\x01 an emulated key configuration"
RECEIPT_KEY = bytes(range(32))
NONCE = bytes(range(32))


def measurements(image: bytes) -> bytes:
    """The reference measurements `measure --image` would derive for a release whose UKI is ``image``."""
    return ReferenceMeasurements.build(measured_boot(image)).raw


def attest(platform: ConfigfsTsmPlatform, dcap: EmulatedDcap, constraint: str, reference: bytes) -> None:
    """The TD's evidence document, verified as a client verifies it, under ``constraint``."""
    config = EnclaveConfig(owner_public_key=bytes(range(32)))
    report_data = attestation_binding(KEY_CONFIG, RECEIPT_KEY, config.digest(), NONCE)
    document = Evidence(
        Tee.TDX,
        bounded(lambda: platform.evidence(report_data)),
        config.canonical(),
        dcap.collateral("tdx"),
        RECEIPT_KEY,
        event_log=platform.event_log,
    ).encode()
    verify(
        document,
        constraints.parse(constraint),
        verifier=Verifier(intel_root_ca_der=dcap.root_ca_der),
        key_config=KEY_CONFIG,
        nonce=NONCE,
        now=NOW,
        measurements=reference,
    )


def test_image_holds_for_a_td_that_booted_the_release(
    fake_tsm: Callable[..., FakeTsm], dcap: EmulatedDcap, tmp_path: Path
) -> None:
    """The release's IMAGE: (predicted from the UKI file by the project) holds for a TD that booted it,
    whose log the emulation writes independently."""
    image = uki()
    reference = measurements(image)
    platform = emulated_td(
        fake_tsm, dcap, boot_uki(image), tmp_path / "CCEL", event_logs=(tmp_path / "CCEL",)
    )
    attest(platform, dcap, f"{image_pin(reference)} C:{MRTD.hex()}", reference)


def test_image_refuses_a_td_that_booted_another_kernel(
    fake_tsm: Callable[..., FakeTsm], dcap: EmulatedDcap, tmp_path: Path
) -> None:
    """Another kernel: the log replays to the TD's RTMRs, but names another UKI; the first differing
    event is named. That TD's own release would pass: the pin, not the log, tells them apart."""
    reference = measurements(uki())
    other_kernel = uki(kernel=kernel_image(b"emulated Linux kernel, one byte changeD"))
    other = emulated_td(
        fake_tsm, dcap, boot_uki(other_kernel), tmp_path / "CCEL", event_logs=(tmp_path / "CCEL",)
    )
    first = r"RTMR1 event \d+ EV_EFI_BOOT_SERVICES_APPLICATION .* the UKI \(Authenticode\)"
    with pytest.raises(ConstraintError, match=first + r".*; also differing: the kernel \(Authenticode"):
        attest(other, dcap, f"{image_pin(reference)} C:{MRTD.hex()}", reference)
    attest(other, dcap, f"{image_pin(measurements(other_kernel))} C:{MRTD.hex()}", measurements(other_kernel))


def test_a_tampered_ccel_log_is_refused_before_any_pin(
    fake_tsm: Callable[..., FakeTsm], dcap: EmulatedDcap, tmp_path: Path
) -> None:
    boot = boot_uki(uki())
    log = bytearray(boot.log())
    log[-60] ^= 1  # inside the last event's digest or data
    ccel = tmp_path / "CCEL"
    platform = emulated_td(fake_tsm, dcap, boot, ccel, event_logs=(ccel,))
    ccel.write_bytes(bytes(log))
    tampered = ConfigfsTsmPlatform(platform._root, event_logs=(ccel,))  # reads the altered log at start
    with pytest.raises(AttestationError, match=r"RTMR1 .* tampered, truncated or reordered"):
        attest(tampered, dcap, f"C:{MRTD.hex()}", b"")
