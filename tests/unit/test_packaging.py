"""What pip and the build backend read: the project's metadata, one version, no deprecated forms."""

from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_license_is_an_spdx_expression_that_setuptools_reads_without_a_warning() -> None:
    """A ``{text = ...}`` table makes setuptools 77+ warn on every build (and fail from 2027-02-18)."""
    project = tomllib.loads(PYPROJECT.read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"]
