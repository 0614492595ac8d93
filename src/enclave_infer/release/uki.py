"""The measured-boot events a boot of a UKI records, predicted from the UKI file alone.

A unified kernel image (UKI) is systemd-stub, a PE/COFF EFI application, with the payload in extra
sections: ``.linux`` (the kernel, itself a PE image with the Linux EFI stub), ``.initrd``, ``.cmdline``
(the kernel command line, UTF-8), ``.osrel`` (os-release), optionally ``.splash``, ``.dtb``,
``.pcrsig``, ``.pcrpkey``.

What the prediction assumes (the project's VM: Debian 12's OVMF, a UKI built with Debian 12's
systemd-stub 252 around a Linux 6.12 kernel):

* the firmware boots the UKI as the first boot option's application, from the ESP's removable-media
  path (``\\EFI\\BOOT\\BOOTX64.EFI``), with no other boot application before it, and the boot disk has
  no GPT (so no EV_EFI_GPT_EVENT);
* Secure Boot is off, as in the captured log: no shim, no EV_EFI_VARIABLE_AUTHORITY events;
* systemd-stub 252 measures its sections into PCR 11 (for each of :data:`STUB_MEASURED_SECTIONS`
  present with a non-zero VirtualSize, in that order: an EV_IPL event over the section name with its
  NUL, then one over the section's VirtualSize bytes as loaded), then LoadImage()s ``.linux`` from
  memory, which the firmware measures into PCR 4 like any image (its Authenticode hash over the
  section's VirtualSize bytes);
* the stub finds no credentials or system extensions on the ESP (``*.cred``, ``*.raw``, which it would
  measure into PCRs 12, 8 and 13), and no load options reach it from the boot option (with Secure Boot
  off it would take them instead of ``.cmdline`` and measure them into PCR 12), so the kernel command
  line is ``.cmdline``: decoded from UTF-8 up to its first NUL, control characters turned into spaces,
  leading and trailing whitespace cut (systemd-stub's ``mangle_stub_cmdline``), passed as UTF-16LE with
  its terminating NUL (``strsize16``);
* the kernel's EFI stub measures into PCR 9 two EV_EVENT_TAG events: the load options it was given
  (tag 0x8f3b22ed, "LOADED_IMAGE::LoadOptions") and the initrd the stub serves it over LoadFile2 (tag
  0x8f3b22ec, "Linux initrd"), which is ``.initrd`` as loaded, unchanged because the stub appends
  nothing (a UKI with ``.pcrsig`` or ``.pcrpkey`` is refused: the stub would append them to the initrd
  as cpio archives).

Constant events, the same for every UKI: EV_EFI_ACTION "Calling EFI Application from Boot Option"
(PCR 4, digest over the ASCII string without NUL), the EV_SEPARATOR events (digest over four zero
bytes) and, on TDX, the two ExitBootServices EV_EFI_ACTION events of PCR 5. They are in the lists so that
replaying a list (:func:`replay`) gives the whole register.

TDX (:func:`predict_tdx`): OVMF's CC measurement protocol maps PCRs onto RTMRs (PCR 1 and 7 to RTMR0,
PCRs 2-6 to RTMR1, PCRs 8-15 to RTMR2) and hashes with SHA-384. RTMR1 is PCRs 2-6's events in log order,
but with one separator (TDVF, edk2's OvmfPkg/Tcg/TdTcg2Dxe, logs one per measurement register);
RTMR2 holds only the kernel EFI stub's two PCR 9 events (systemd-stub 252 knows no CC measurement
protocol, so nothing of PCR 11; Linux >= 6.9 measures into the CC protocol when there is no TPM).
This is a model, checked against the TPM log's events of those PCRs, not yet against a TDX boot.

Checked against a real boot: tests/vectors/measured-boot's TPM event log and the UKI that produced it
(tests/unit/test_release_uki.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from enclave_infer.errors import UsageError
from enclave_infer.release.pe import ALGORITHMS, authenticode, loaded_section, parse_pe

__all__ = [
    "BOOT_OPTION_ACTION",
    "EXIT_BOOT_SERVICES_INVOCATION",
    "EXIT_BOOT_SERVICES_RETURNED",
    "STUB_MEASURED_SECTIONS",
    "TDX_ALGORITHM",
    "TPM_ALGORITHMS",
    "PredictedEvent",
    "Uki",
    "parse_uki",
    "predict_tdx",
    "predict_tpm",
    "replay",
]

# systemd-stub 252's unified sections that it measures into PCR 11, in its order (its
# UnifiedSection enum without .pcrsig, which holds signatures over these measurements).
STUB_MEASURED_SECTIONS = (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey")
# Sections systemd-stub 252 turns into cpio archives appended to the initrd: the kernel would then
# measure another initrd than ``.initrd``, which this prediction does not model.
_APPENDED_TO_INITRD = (".pcrsig", ".pcrpkey")
_STUB_SECTIONS = (*STUB_MEASURED_SECTIONS, ".pcrsig")

# The banks of a TPM event log (the captured one has all four) and the one algorithm of TDX's RTMRs.
TPM_ALGORITHMS = ALGORITHMS
TDX_ALGORITHM = "sha384"

# EV_EFI_ACTION strings (TCG PC Client Platform Firmware Profile, section 10.4.4); each digest is over
# the ASCII string without a NUL.
BOOT_OPTION_ACTION = b"Calling EFI Application from Boot Option"
EXIT_BOOT_SERVICES_INVOCATION = b"Exit Boot Services Invocation"
EXIT_BOOT_SERVICES_RETURNED = b"Exit Boot Services Returned with Success"
# EV_SEPARATOR's data (and what its digest is over) on a boot without errors.
_SEPARATOR = bytes(4)

_PCR_BOOT_APPLICATIONS = 4
_PCR_BOOT_MANAGER = 5
_PCR_KERNEL_STUB = 9
_PCR_UKI_SECTIONS = 11
# UEFI CC measurement: PCRs 2-6 to RTMR1, PCRs 8-15 to RTMR2.
_RTMR_OF_PCR = {2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 9: 2}
_PCR_ITSELF = {_PCR_BOOT_APPLICATIONS: _PCR_BOOT_APPLICATIONS, _PCR_KERNEL_STUB: _PCR_KERNEL_STUB}


@dataclass(frozen=True)
class PredictedEvent:
    """One event a boot records: the register it extends (a PCR index for a TPM, an RTMR index for
    TDX), its TCG event type, its digest in each bank (keyed by hashlib name), and what it is."""

    register: int
    type_name: str
    digests: dict[str, bytes]
    what: str


@dataclass(frozen=True)
class Uki:
    """What a UKI's boot measures, taken from its sections as loaded (VirtualSize bytes each)."""

    image: bytes  # the UKI file, which the firmware measures
    kernel: bytes  # .linux, the PE image the stub LoadImage()s
    initrd: bytes  # .initrd
    cmdline: str  # the kernel command line the stub passes, from .cmdline
    measured_sections: tuple[tuple[str, bytes], ...]  # PCR 11's sections, in the stub's order

    @property
    def load_options(self) -> bytes:
        """The LoadOptions buffer the kernel gets and measures: UTF-16LE with the terminating NUL."""
        return self.cmdline.encode("utf-16-le") + b"\0\0"


def parse_uki(uki: bytes) -> Uki:
    """Read a UKI's sections. Raises UsageError for a malformed PE image or a UKI this prediction does
    not model (no .linux, .cmdline or .initrd; a section twice; .pcrsig or .pcrpkey)."""
    image = parse_pe(uki)
    found: dict[str, bytes] = {}
    for section in image.sections:
        if section.name not in _STUB_SECTIONS:
            continue
        if section.name in found:
            raise UsageError(f"UKI: the section {section.name} appears twice")
        if section.virtual_size:  # systemd-stub treats an empty section as absent
            found[section.name] = loaded_section(uki, section)
    for name in (".linux", ".cmdline", ".initrd"):
        if name not in found:
            raise UsageError(f"UKI: no {name} section (or an empty one)")
    for name in _APPENDED_TO_INITRD:
        if name in found:
            raise UsageError(
                f"UKI: systemd-stub appends the {name} section to the initrd as a cpio archive, "
                "which this prediction does not model"
            )
    return Uki(
        image=uki,
        kernel=found[".linux"],
        initrd=found[".initrd"],
        cmdline=_stub_cmdline(found[".cmdline"]),
        measured_sections=tuple((name, found[name]) for name in STUB_MEASURED_SECTIONS if name in found),
    )


def _stub_cmdline(section: bytes) -> str:
    """systemd-stub 252's command line from .cmdline: xstrn8_to_16 (UTF-8 up to the first NUL, to
    UCS-2), then mangle_stub_cmdline (control characters and DEL are whitespace; leading and trailing
    whitespace cut, inner whitespace characters each turned into one space)."""
    raw = section.split(b"\0", 1)[0]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # the stub would skip the invalid bytes; a release should not depend on that
        raise UsageError("UKI: the .cmdline section is not UTF-8") from None
    if any(ord(c) > 0xFFFF for c in text):
        raise UsageError("UKI: the .cmdline section has characters outside UCS-2, which the stub drops")
    mangled = "".join(" " if ord(c) <= 0x20 or c == "\x7f" else c for c in text).strip(" ")
    if not mangled:
        raise UsageError("UKI: the .cmdline section holds no command line")
    return mangled


def _digests(data: bytes, algs: Iterable[str]) -> dict[str, bytes]:
    return {alg: hashlib.new(alg, data).digest() for alg in algs}


def _authenticodes(pe: bytes, algs: Iterable[str]) -> dict[str, bytes]:
    return {alg: authenticode(pe, alg) for alg in algs}


def _check_algs(algs: Sequence[str]) -> None:
    unknown = [alg for alg in algs if alg not in ALGORITHMS]
    if unknown or not algs:
        raise UsageError(f"digest algorithms must be some of {', '.join(ALGORITHMS)}, not {list(algs)}")


def predict_tpm(uki: bytes, algs: Sequence[str] = TPM_ALGORITHMS) -> list[PredictedEvent]:
    """The events a TPM boot of this UKI records in PCRs 4, 9 and 11, in the event log's order, with
    their digests in each of ``algs`` (default: the four banks of the TPM event log).

    Replayed (:func:`replay`), they give the PCRs' values. Raises UsageError (see :func:`parse_uki`).
    """
    _check_algs(algs)
    parts = parse_uki(uki)
    events = [
        PredictedEvent(
            _PCR_BOOT_APPLICATIONS, "EV_EFI_ACTION", _digests(BOOT_OPTION_ACTION, algs), "boot option action"
        ),
        PredictedEvent(_PCR_BOOT_APPLICATIONS, "EV_SEPARATOR", _digests(_SEPARATOR, algs), "separator"),
        PredictedEvent(
            _PCR_BOOT_APPLICATIONS,
            "EV_EFI_BOOT_SERVICES_APPLICATION",
            _authenticodes(parts.image, algs),
            "the UKI (Authenticode)",
        ),
    ]
    for name, contents in parts.measured_sections:
        events.append(
            PredictedEvent(
                _PCR_UKI_SECTIONS, "EV_IPL", _digests(name.encode() + b"\0", algs), f"section name {name}"
            )
        )
        events.append(
            PredictedEvent(_PCR_UKI_SECTIONS, "EV_IPL", _digests(contents, algs), f"section {name}")
        )
    events += _kernel_events(parts, algs, _PCR_ITSELF)
    return events


def _kernel_events(parts: Uki, algs: Sequence[str], register: Mapping[int, int]) -> list[PredictedEvent]:
    """The kernel's Authenticode (PCR 4) and the kernel EFI stub's PCR 9 events, each in the register
    ``register`` maps its PCR to."""
    return [
        PredictedEvent(
            register[_PCR_BOOT_APPLICATIONS],
            "EV_EFI_BOOT_SERVICES_APPLICATION",
            _authenticodes(parts.kernel, algs),
            "the kernel (Authenticode, loaded by the stub)",
        ),
        PredictedEvent(
            register[_PCR_KERNEL_STUB],
            "EV_EVENT_TAG",
            _digests(parts.load_options, algs),
            "the kernel command line (load options)",
        ),
        PredictedEvent(
            register[_PCR_KERNEL_STUB], "EV_EVENT_TAG", _digests(parts.initrd, algs), "the initrd"
        ),
    ]


def predict_tdx(uki: bytes) -> list[PredictedEvent]:
    """The events a TDX boot of this UKI records in RTMR1 and RTMR2 (SHA-384), in the CC event log's
    order: RTMR1 the firmware's PCR 2-6 events, RTMR2 the kernel EFI stub's.

    Replayed (:func:`replay`), they give RTMR1 and RTMR2. Raises UsageError (see :func:`parse_uki`).
    """
    algs = (TDX_ALGORITHM,)
    parts = parse_uki(uki)
    rtmr1 = _RTMR_OF_PCR[_PCR_BOOT_APPLICATIONS]
    events = [
        PredictedEvent(rtmr1, "EV_EFI_ACTION", _digests(BOOT_OPTION_ACTION, algs), "boot option action")
    ]
    # TDVF's ReadyToBoot separators (edk2 OvmfPkg/Tcg/TdTcg2Dxe): one per CC measurement register,
    # where a TPM firmware logs one per PCR 0-7; the PCR 7 one (Secure Boot's) lands in RTMR0
    events.append(PredictedEvent(rtmr1, "EV_SEPARATOR", _digests(_SEPARATOR, algs), "separator"))
    events.append(
        PredictedEvent(
            rtmr1,
            "EV_EFI_BOOT_SERVICES_APPLICATION",
            _authenticodes(parts.image, algs),
            "the UKI (Authenticode)",
        )
    )
    events += _kernel_events(parts, algs, _RTMR_OF_PCR)
    rtmr_boot_manager = _RTMR_OF_PCR[_PCR_BOOT_MANAGER]
    events += [
        PredictedEvent(
            rtmr_boot_manager,
            "EV_EFI_ACTION",
            _digests(EXIT_BOOT_SERVICES_INVOCATION, algs),
            "ExitBootServices invocation",
        ),
        PredictedEvent(
            rtmr_boot_manager,
            "EV_EFI_ACTION",
            _digests(EXIT_BOOT_SERVICES_RETURNED, algs),
            "ExitBootServices returned",
        ),
    ]
    return events


def replay(events: Iterable[PredictedEvent], alg: str) -> dict[int, bytes]:
    """Each register's value after extending it, from all zeros, with the events' ``alg`` digests in
    order: new = H(old || digest) (TPM 2.0 Part 1, section 17.2, TPM2_PCR_Extend; TDX's RTMR extend is
    the same with SHA-384)."""
    values: dict[int, bytes] = {}
    for event in events:
        if alg not in event.digests:
            raise UsageError(f"no {alg} digest in the event {event.what!r}")
        digest = event.digests[alg]
        old = values.get(event.register, bytes(len(digest)))
        values[event.register] = hashlib.new(alg, old + digest).digest()
    return values
