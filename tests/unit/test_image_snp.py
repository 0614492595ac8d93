"""IMAGE: on SEV-SNP, through the emulated chip: a guest launched by measured direct boot of the
release's UKI (its kernel, initrd and command line through an SNP OVMF) reports the MEASUREMENT
`measure --image --snp-ovmf` lists, and verifies under IMAGE:; a guest that booted another kernel
reports another one and is refused.

The emulated chip signs the launch digest sev-snp-measure computes for the boot (what AMD's PSP
computes on hardware); the firmware is an OVMF-shaped image built here (tests/unit/test_release_snp.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from enclave_infer.attestation import constraints
from enclave_infer.attestation.evidence import Evidence, Verifier, verify
from enclave_infer.attestation.reference import ReferenceMeasurements, image_pin
from enclave_infer.attestation.report import Tee, attestation_binding
from enclave_infer.attestation.snp_report import encode_snp_evidence
from enclave_infer.config import EnclaveConfig
from enclave_infer.errors import ConstraintError
from enclave_infer.release.derive import SnpTarget, snp_measurements
from enclave_infer.release.snp import snp_measurement
from enclave_infer.release.uki import parse_uki
from tests.emulation.snp import EmulatedSnp
from tests.emulation.uki import kernel_image, uki
from tests.unit.test_release_snp import firmware

NOW = datetime(2026, 6, 1, tzinfo=UTC)
KEY_CONFIG = b"\x01 an emulated key configuration"
RECEIPT_KEY = bytes(range(32))
NONCE = bytes(range(32))
VCPUS, VCPU_TYPE = 2, "EPYC-v4"


@pytest.fixture(scope="module")
def chip() -> EmulatedSnp:
    return EmulatedSnp("Genoa")


@pytest.fixture
def ovmf(tmp_path: Path) -> Path:
    path = tmp_path / "OVMF.amdsev.fd"
    path.write_bytes(firmware())
    return path


def launched(image: bytes, ovmf: Path) -> bytes:
    """The MEASUREMENT of a guest launched by measured direct boot of ``image``'s parts."""
    parts = parse_uki(image)
    return snp_measurement(
        ovmf=ovmf,
        kernel=parts.kernel,
        initrd=parts.initrd,
        cmdline=parts.cmdline,
        vcpus=VCPUS,
        vcpu_type=VCPU_TYPE,
    )


def attest(chip: EmulatedSnp, measurement: bytes, constraint: str, reference: bytes) -> None:
    config = EnclaveConfig(owner_public_key=bytes(range(32)))
    report_data = attestation_binding(KEY_CONFIG, RECEIPT_KEY, config.digest(), NONCE)
    document = Evidence(
        Tee.SEV_SNP,
        encode_snp_evidence(chip.report(report_data, measurement), None),
        config.canonical(),
        chip.collateral,
        RECEIPT_KEY,
    ).encode()
    verify(
        document,
        constraints.parse(constraint),
        verifier=Verifier(snp_roots={chip.product: chip.ark_der}),
        key_config=KEY_CONFIG,
        nonce=NONCE,
        now=NOW,
        measurements=reference,
    )


def test_image_holds_for_the_release_s_launch_and_refuses_another_kernel(
    chip: EmulatedSnp, ovmf: Path
) -> None:
    image = uki()
    reference = ReferenceMeasurements.build(
        {"sev-snp": snp_measurements(image, [SnpTarget(ovmf, VCPUS, VCPU_TYPE)])}
    )
    pin = f"{image_pin(reference.raw)} SEC:STALE"  # no AMD CRL here: at most STALE
    attest(chip, launched(image, ovmf), pin, reference.raw)
    other = launched(uki(kernel=kernel_image(b"emulated Linux kernel, one byte changeD")), ovmf)
    with pytest.raises(ConstraintError, match=f"SEV-SNP MEASUREMENT {other.hex().upper()} is none of the 1"):
        attest(chip, other, pin, reference.raw)
    # another vCPU count is another launch: list each shape the service runs as
    parts = parse_uki(image)
    wider = snp_measurement(
        ovmf=ovmf,
        kernel=parts.kernel,
        initrd=parts.initrd,
        cmdline=parts.cmdline,
        vcpus=4,
        vcpu_type=VCPU_TYPE,
    )
    with pytest.raises(ConstraintError, match="is none of the 1 the release lists"):
        attest(chip, wider, pin, reference.raw)
