"""The simulated measurement: what ``C:`` pins when no hardware measures the enclave.

Used by ``enclave-infer measure`` (offline, on any machine) and by the simulated platform when the
enclave starts, so both always agree. The code hash is

    SHA-256( "enclave-infer measurement v1" || 0x00
             || for each trusted source file, in sorted order: path || 0x00 || SHA-256(content)
             || "config" || 0x00 || SHA-256(canonical enclave configuration) )

The trusted sources are every ``.py`` file of the package except the untrusted sides (``host``,
``client``, ``cli``), which never run inside the enclave. Third-party libraries (ONNX Runtime,
NumPy, Pillow, cryptography) are not covered in simulation; under Gramine, MRENCLAVE covers them
as trusted files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from enclave_infer.config import EnclaveConfig

__all__ = ["SIMULATION_SIGNER", "UNTRUSTED_SUBPACKAGES", "code_hash", "trusted_files"]

MEASUREMENT_LABEL = b"enclave-infer measurement v1\x00"
UNTRUSTED_SUBPACKAGES = frozenset({"host", "client", "cli"})
# MRSIGNER stand-in for simulation: the hash of a published label, because simulated enclaves are
# signed by nobody. A real deployment's signer is the hash of the key given to gramine-sgx-sign.
SIMULATION_SIGNER = hashlib.sha256(b"enclave-infer simulation signer v1").digest()


def package_root() -> Path:
    return Path(__file__).resolve().parent.parent


def trusted_files(root: Path | None = None) -> list[Path]:
    """The package's trusted source files, relative to the package root, sorted."""
    root = root or package_root()
    files = [
        p.relative_to(root)
        for p in root.rglob("*.py")
        if p.relative_to(root).parts[0] not in UNTRUSTED_SUBPACKAGES
    ]
    return sorted(files, key=lambda p: p.as_posix())


def code_hash(config: EnclaveConfig, root: Path | None = None) -> bytes:
    root = root or package_root()
    h = hashlib.sha256(MEASUREMENT_LABEL)
    for rel in trusted_files(root):
        h.update(rel.as_posix().encode() + b"\x00" + hashlib.sha256((root / rel).read_bytes()).digest())
    h.update(b"config\x00" + config.digest())
    return h.digest()
