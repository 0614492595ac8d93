"""Where the shared attestation vectors lie: ``../shared/vectors/attestation`` beside the repository.

They are data from public repositories (see their READMEs), read where they lie and never copied into
this tree. A missing folder fails the test that needs it, with the path it looked in: it is never a
reason to skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
ATTESTATION_VECTORS = REPOSITORY.parent / "shared" / "vectors" / "attestation"


def shared_vector_dir(*parts: str) -> Path:
    """``../shared/vectors/attestation/<parts>``, or fail the test saying where it looked."""
    path = ATTESTATION_VECTORS.joinpath(*parts)
    if not path.is_dir():
        pytest.fail(
            f"shared attestation vectors not found: {path} does not exist. They are read from "
            "../shared/vectors/attestation beside the repository checkout (see tests/vectors/README.md).",
            pytrace=False,
        )
    return path
