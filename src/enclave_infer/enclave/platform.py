"""Evidence providers and sealing keys: what the enclave asks of the platform it runs on.

Trusted code. :class:`Platform` is what the enclave needs of one; the implementations are the
simulated platform here (it measures the enclave the way ``enclave-infer measure`` does and signs
nothing, so its evidence is always assessed INSECURE), Gramine-SGX (``enclave/gramine.py``:
``/dev/attestation``), confidential VMs through the kernel's configfs-tsm (``enclave/tsm.py``: TDX
and SEV-SNP) and a TPM 2.0 with the boot's event log (``enclave/vtpm.py``: a confidential VM's vTPM, or
swtpm).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave_infer.attestation import simulation
from enclave_infer.attestation.measurement import SIMULATION_SIGNER, code_hash
from enclave_infer.attestation.report import Tee
from enclave_infer.config import EnclaveConfig

__all__ = ["Platform", "SimulationPlatform"]


class Platform(Protocol):
    tee: Tee
    code_hash: bytes
    signer: bytes
    # The boot's TCG event log where the evidence quotes measurement registers (a vTPM, TDX), else
    # empty; it travels in the attestation document and is replayed by the verifier.
    event_log: bytes

    def evidence(self, report_data: bytes) -> bytes:
        """Platform evidence carrying ``report_data`` (64 bytes)."""
        ...

    def sealing_key(self) -> bytes:
        """A 32-byte key only this enclave (same measurement, same platform) can derive."""
        ...


class SimulationPlatform:
    """INSECURE: a plain process pretending to be a TEE. Logged loudly by whoever starts it."""

    tee = Tee.SIMULATION
    event_log = b""

    def __init__(self, config: EnclaveConfig, *, now: Callable[[], datetime] | None = None) -> None:
        self._config = config
        self._now = now or (lambda: datetime.now(UTC))
        self.code_hash = code_hash(config)
        self.signer = SIMULATION_SIGNER

    def evidence(self, report_data: bytes) -> bytes:
        return simulation.encode(
            code_hash=self.code_hash,
            signer=self.signer,
            product_id=self._config.product_id,
            security_version=self._config.security_version,
            debug=self._config.debug,
            report_data=report_data,
            issued_at=self._now(),
        )

    def sealing_key(self) -> bytes:
        # Simulation has no hardware secret: the key is derived from public values only, like
        # Conclave's simulation mode. Anyone with the code can unseal; that is what INSECURE means.
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"enclave-infer simulation sealing v1",
            info=self.code_hash,
        ).derive(b"no hardware secret in simulation")
