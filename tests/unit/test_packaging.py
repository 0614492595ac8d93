"""What pip and the build backend read: the project's metadata, one version, no deprecated forms."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_license_is_an_spdx_expression_that_setuptools_reads_without_a_warning() -> None:
    """A ``{text = ...}`` table makes setuptools 77+ warn on every build (and fail from 2027-02-18)."""
    project = tomllib.loads(PYPROJECT.read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"]


def test_one_version_number_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    import enclave_infer
    from enclave_infer.cli.main import main

    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert importlib.metadata.version("enclave-infer") == declared  # the editable install is current
    assert enclave_infer.__version__ == declared
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"enclave-infer {declared}\n"
