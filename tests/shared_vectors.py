"""Where the outside test vectors lie: ``../shared/vectors`` beside the repository.

They are data from public repositories (real SGX, TDX and SEV-SNP evidence; KubeRay's RayService CRD;
see their READMEs), read where they lie and never copied into this tree. A clone without the folder
beside it still runs every other test: those that need it skip, all from one line here, so that
pytest's summary says in one line how many skipped and which folder they need. A folder that is there
but lacks a vector the test names fails the test, saying where it looked: a broken copy is no reason to
skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
SHARED_VECTORS = REPOSITORY.parent / "shared" / "vectors"
ATTESTATION_VECTORS = SHARED_VECTORS / "attestation"
KUBERAY_VECTORS = SHARED_VECTORS / "kuberay"
MISSING = "needs the outside test vectors: ../shared/vectors beside the checkout (tests/vectors/README.md)"


def shared_vectors_present() -> bool:
    return SHARED_VECTORS.is_dir()


def need_shared_vectors() -> None:
    """Skip the calling test when ``../shared/vectors`` is not beside the checkout at all."""
    if not shared_vectors_present():
        pytest.skip(MISSING)


def shared_file(folder: Path, name: str) -> Path:
    """``folder/name`` under ``../shared/vectors``: skip when the whole folder is absent, fail when the
    file alone is missing."""
    need_shared_vectors()
    path = folder / name
    if not path.is_file():
        pytest.fail(f"outside test vector not found: {path} does not exist (see its folder's README.md)",
                    pytrace=False)  # fmt: skip
    return path


def shared_vector_dir(*parts: str) -> Path:
    """``../shared/vectors/attestation/<parts>``: skip when ``../shared/vectors`` is absent, fail the
    test saying where it looked when the folder is there but this vector is not."""
    need_shared_vectors()
    path = ATTESTATION_VECTORS.joinpath(*parts)
    if not path.is_dir():
        pytest.fail(
            f"shared attestation vectors not found: {path} does not exist. They are read from "
            "../shared/vectors/attestation beside the repository checkout (see tests/vectors/README.md).",
            pytrace=False,
        )
    return path
