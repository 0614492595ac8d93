"""The simulated measurement: what ``C:`` pins when no hardware measures the enclave.

Used by ``enclave-infer measure`` (offline, on any machine) and by the simulated platform when the
enclave starts, so both always agree. The code hash is

    SHA-256( "enclave-infer measurement v1" || 0x00
             || for each trusted source file, in sorted order: path || 0x00 || SHA-256(content)
             || "config" || 0x00 || SHA-256(canonical enclave configuration) )

The trusted sources are the ``.py`` files of :data:`TRUSTED_CODE_BASE`, the one list of the package's
parts that run inside the enclave. It drives this hash, the package files Gramine's manifest lets the
enclave open (``enclave-infer gramine-manifest``), and the README's account of what is trusted (a test
holds both to it); another test holds every trusted module to importing trusted modules only. Anything
else in the package (``host``, ``client``, ``cli``, the Ray deployment) is untrusted and never runs in
the enclave. Third-party libraries (ONNX Runtime, NumPy, Pillow, cryptography) are not covered in
simulation; under Gramine, MRENCLAVE covers them as trusted files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from enclave_infer.config import EnclaveConfig

__all__ = [
    "SIMULATION_SIGNER",
    "TRUSTED_CODE_BASE",
    "code_hash",
    "code_hash_from",
    "trusted_file_digests",
    "trusted_files",
]

MEASUREMENT_LABEL = b"enclave-infer measurement v1\x00"
# The trusted code base, relative to the package root: a folder (trailing /) with everything under it,
# or one module. An allow-list, so that a new module is untrusted until it is named here.
TRUSTED_CODE_BASE: tuple[str, ...] = (
    "__init__.py",
    "config.py",
    "errors.py",
    "logs.py",
    "attestation/",
    "cluster/",
    "enclave/",
    "protocol/",
)
# MRSIGNER stand-in for simulation: the hash of a published label, because simulated enclaves are
# signed by nobody. A real deployment's signer is the hash of the key given to gramine-sgx-sign.
SIMULATION_SIGNER = hashlib.sha256(b"enclave-infer simulation signer v1").digest()


def package_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _trusted(rel: Path) -> bool:
    path = rel.as_posix()
    return any(
        path.startswith(entry) if entry.endswith("/") else path == entry for entry in TRUSTED_CODE_BASE
    )


def trusted_files(root: Path | None = None) -> list[Path]:
    """The package's trusted source files (:data:`TRUSTED_CODE_BASE`), relative to the package root,
    sorted."""
    root = root or package_root()
    files = [p.relative_to(root) for p in root.rglob("*.py") if _trusted(p.relative_to(root))]
    return sorted(files, key=lambda p: p.as_posix())


def trusted_file_digests(root: Path | None = None) -> list[tuple[str, bytes]]:
    """(path, SHA-256 of its content) of each trusted source file under ``root``, sorted by path:
    what the code hash covers, and what a release's reference measurements list."""
    root = root or package_root()
    return [
        (rel.as_posix(), hashlib.sha256((root / rel).read_bytes()).digest()) for rel in trusted_files(root)
    ]


def code_hash_from(files: Iterable[tuple[str, bytes]], config_digest: bytes) -> bytes:
    """The code hash of the module docstring, from (path, SHA-256) pairs and a configuration digest."""
    h = hashlib.sha256(MEASUREMENT_LABEL)
    for path, digest in sorted(files):
        h.update(path.encode() + b"\x00" + digest)
    h.update(b"config\x00" + config_digest)
    return h.digest()


def code_hash(config: EnclaveConfig, root: Path | None = None) -> bytes:
    return code_hash_from(trusted_file_digests(root), config.digest())
