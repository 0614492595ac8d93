"""The SEV-SNP MEASUREMENT of a measured direct boot, predicted from the artifacts.

Untrusted client tooling (not in the trusted code base): ``enclave-infer measure`` computes here the
launch digest that an SEV-SNP guest's ATTESTATION_REPORT carries in MEASUREMENT, so that a verifier
can pin a value derived from the release instead of one read off a running guest.

What is measured (AMD's "SEV Secure Nested Paging Firmware ABI Specification", §8.17
SNP_LAUNCH_UPDATE and §8.17.2 the PAGE_INFO chain): the firmware image, page by page; the pages
OVMF's SEV metadata declares (zero pages, the secrets page, the CPUID page); one VMSA page per vCPU,
whose contents depend on the vCPU type (its CPUID signature), on the guest's SEV_FEATURES and on the
VMM. In a *measured direct boot* (QEMU ``-bios OVMF -kernel K -initrd I -append C`` with
``-object sev-snp-guest,...,kernel-hashes=on``) QEMU also writes a table of SHA-256 hashes of the
kernel, the initrd and the command line (with its terminating NUL) into the page OVMF reserves for it
(the SNP_KERNEL_HASHES section), which is measured with the rest; OVMF then refuses to boot a
kernel, initrd or command line whose hash is not in the table. MEASUREMENT therefore covers the
firmware, the kernel, the initrd and the command line: for this project's UKI, its ``.linux``,
``.initrd`` and ``.cmdline`` sections, handed to QEMU as three parts.

Only OVMF built from ``OvmfPkg/AmdSev/AmdSevX64.dsc`` reserves that page. Debian 12's ``ovmf``
package has no such build (its images' SEV metadata has no SNP_KERNEL_HASHES section, or they have
no SEV metadata at all); Debian's ``ovmf-amdsev`` package (in Debian 14 "forky" and unstable, not
in Debian 13) ships one as ``/usr/share/ovmf/OVMF.amdsev.fd``. The firmware is therefore an input
here, as is the guest's vCPU count and type: they are the deployment's, not the release's.

The digest itself is computed by ``sev-snp-measure`` (PyPI; IBM's reimplementation of the
firmware's and QEMU's steps), through its library; its command-line tool gives the same value for
the same inputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from enclave_infer.errors import UsageError

__all__ = [
    "DEFAULT_GUEST_FEATURES",
    "MEASUREMENT_SIZE",
    "VMM_TYPES",
    "VmmType",
    "snp_measurement",
    "vcpu_types",
]

MEASUREMENT_SIZE = 48  # SHA-384: the report's MEASUREMENT field
# SEV_FEATURES of the guest's VMSAs: bit 0 (SNPActive) alone, sev-snp-measure's default. A host whose
# KVM turns on more features (e.g. DebugSwap, bit 5, on some kernels) launches another MEASUREMENT:
# pass the value it uses.
DEFAULT_GUEST_FEATURES = 0x1
# A bound on the work, not a hardware limit: one VMSA page per vCPU enters the digest.
MAX_VCPUS = 4096
# OVMF images are 2 to 4 MiB; the firmware must fit below 4 GiB with room to spare.
MAX_OVMF_BYTES = 64 * 1024 * 1024

VmmType = Literal["QEMU", "ec2", "gce"]
"""Who launches the guest: the VMMs whose VMSA and page choices sev-snp-measure knows."""
VMM_TYPES: tuple[VmmType, ...] = ("QEMU", "ec2", "gce")


def vcpu_types() -> tuple[str, ...]:
    """The vCPU types QEMU defines (its EPYC models), by the names sev-snp-measure and ``-cpu`` use."""
    from sevsnpmeasure.vcpu_types import CPU_SIGS

    return tuple(CPU_SIGS)


def snp_measurement(
    *,
    ovmf: Path,
    kernel: bytes,
    initrd: bytes,
    cmdline: str,
    vcpus: int,
    vcpu_type: str,
    guest_features: int = DEFAULT_GUEST_FEATURES,
    vmm_type: VmmType = "QEMU",
) -> bytes:
    """The 48-byte MEASUREMENT of an SEV-SNP guest that boots ``kernel``, ``initrd`` and ``cmdline``
    directly through the firmware ``ovmf`` on ``vcpus`` vCPUs of type ``vcpu_type``.

    ``cmdline`` is the command line as QEMU's ``-append`` takes it (QEMU hashes it with a NUL
    appended); ``vcpu_type`` one of :func:`vcpu_types`. Raises :class:`UsageError` for a firmware
    without the SEV metadata a measured direct boot needs, or for inputs out of range.
    """
    # imported here: only `measure` needs it, and the enclave's image need not install it
    from sevsnpmeasure import guest
    from sevsnpmeasure.sev_mode import SevMode
    from sevsnpmeasure.vcpu_types import CPU_SIGS
    from sevsnpmeasure.vmm_types import VMMType

    if vcpu_type not in CPU_SIGS:
        raise UsageError(f"unknown vCPU type {vcpu_type!r} (known: {', '.join(CPU_SIGS)})")
    if not 1 <= vcpus <= MAX_VCPUS:
        raise UsageError(f"vCPU count {vcpus} is out of range (1 to {MAX_VCPUS})")
    if vmm_type not in VMM_TYPES:
        raise UsageError(f"unknown VMM type {vmm_type!r} (known: {', '.join(VMM_TYPES)})")
    if not kernel:
        raise UsageError("the kernel is empty")
    if "\x00" in cmdline:
        raise UsageError("the kernel command line contains a NUL character")
    _check_ovmf(ovmf)
    with tempfile.TemporaryDirectory(prefix="enclave-infer-snp-") as scratch:
        # sev-snp-measure reads the kernel and initrd from files
        kernel_file, initrd_file = Path(scratch, "kernel"), Path(scratch, "initrd")
        kernel_file.write_bytes(kernel)
        initrd_file.write_bytes(initrd)
        try:
            digest = guest.calc_launch_digest(
                SevMode.SEV_SNP,
                vcpus,
                CPU_SIGS[vcpu_type],
                str(ovmf),
                str(kernel_file),
                str(initrd_file),
                cmdline,
                guest_features,
                vmm_type=VMMType[vmm_type],
            )
        except (RuntimeError, ValueError) as exc:
            raise UsageError(f"{ovmf.name}: cannot compute the SEV-SNP launch digest: {exc}") from None
    if not isinstance(digest, bytes) or len(digest) != MEASUREMENT_SIZE:
        raise UsageError(f"{ovmf.name}: the launch digest is not {MEASUREMENT_SIZE} bytes")
    return digest


def _check_ovmf(path: Path) -> None:
    """Refuse, in one line that says what to use instead, a firmware that cannot do a measured
    direct boot: the OVMF footer table (edk2 ``OvmfPkg/ResetVector``) must point at SEV metadata
    with an SNP_KERNEL_HASHES section, and at a hashes table (SEV_HASH_TABLE_RV) with an address."""
    from sevsnpmeasure.ovmf import OVMF, SectionType

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UsageError(f"cannot read the firmware {path}: {exc.strerror}") from None
    if size > MAX_OVMF_BYTES:
        raise UsageError(f"{path.name} is {size} bytes: larger than any OVMF image ({MAX_OVMF_BYTES})")
    try:
        firmware = OVMF(str(path))
        supported = firmware.has_metadata_section(SectionType.SNP_KERNEL_HASHES) and (
            firmware.is_sev_hashes_table_supported()
        )
    except (RuntimeError, ValueError, OSError) as exc:  # a footer table or metadata that is malformed
        raise UsageError(f"{path.name} is not an OVMF image with valid SEV metadata: {exc}") from None
    if not supported:
        raise UsageError(
            f"{path.name} has no SEV metadata for a measured direct boot (no SNP_KERNEL_HASHES section): "
            "build OvmfPkg/AmdSev/AmdSevX64.dsc, or use Debian's ovmf-amdsev (OVMF.amdsev.fd)"
        )
