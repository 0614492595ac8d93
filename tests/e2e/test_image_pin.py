"""IMAGE: through real processes: `serve --measurements` attaches a release's reference measurements,
and a client that pins only IMAGE: verifies the enclave against them (here in simulation, where the
pin covers the trusted code base; tests/e2e/test_vtpm.py and test_image.py cover measured boots)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_infer import Client
from enclave_infer.attestation.measurement import trusted_file_digests
from enclave_infer.attestation.reference import ReferenceMeasurements, image_pin
from enclave_infer.client._owner import load_owner_key
from tests.e2e.conftest import COLOUR_LABELS, Deployment, run_cli, start_server, stop_server


def measurements(files: list[tuple[str, bytes]]) -> bytes:
    return ReferenceMeasurements.build(
        {"simulation": {"trusted_files": [[p, d.hex()] for p, d in files]}}
    ).raw


@pytest.fixture(scope="module")
def pinned(workdir: Path, owner_key: Path, files: dict[str, Path]) -> Iterator[tuple[Deployment, str]]:
    path = workdir / "measurements.json"
    path.write_bytes(measurements(trusted_file_digests()))
    d = start_server(workdir, owner_key, config=files["config"], extra=("--measurements", str(path)))
    yield d, image_pin(path.read_bytes())
    stop_server(d)


def test_a_client_pinning_only_image_verifies(pinned: tuple[Deployment, str]) -> None:
    d, pin = pinned
    done = run_cli("attest", d.url, f"{pin} SEC:INSECURE")
    assert done.returncode == 0, done.stderr
    assert "holds" in done.stdout + done.stderr


def test_another_release_s_measurements_are_refused(pinned: tuple[Deployment, str], workdir: Path) -> None:
    d, _ = pinned
    files = trusted_file_digests()
    altered = [(p, bytes(32) if p == "enclave/app.py" else digest) for p, digest in files]
    other = workdir / "other.json"
    other.write_bytes(measurements(altered))
    # the host's copy against another pin: refused before anything is compared
    done = run_cli("attest", d.url, f"{image_pin(other.read_bytes())} SEC:INSECURE")
    assert done.returncode != 0
    assert "not the pinned IMAGE:" in done.stderr
    # the other release's own measurements under its own pin: the code hash is not the one they give
    done = run_cli(
        "attest", d.url, f"{image_pin(other.read_bytes())} SEC:INSECURE", "--measurements", str(other)
    )
    assert done.returncode != 0
    assert "trusted code base" in done.stderr


def test_serve_refuses_a_malformed_measurements_file(workdir: Path, owner_key: Path) -> None:
    bad = workdir / "bad-measurements.json"
    bad.write_text('{"format": "enclave-infer reference measurements v1"}\n')
    done = run_cli("serve", "--port", "0", "--data-dir", str(workdir / "bad"), "--measurements", str(bad),
                   "--owner-public-key", f"{owner_key}.pub")  # fmt: skip
    assert done.returncode == 1  # a usage error, before anything starts
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "canonical" in done.stderr


def test_receipts_under_image_verify_with_the_release_s_measurements(
    pinned: tuple[Deployment, str], files: dict[str, Path], workdir: Path
) -> None:
    """classify --receipt under IMAGE: (its receipts checked against the measurements the host
    attached), then verify-receipt offline, which needs the measurements given to it."""
    d, pin = pinned
    constraint = f"{pin} SEC:INSECURE"
    with Client(d.url, constraint) as client:
        if client.model_info() is None:
            client.provision(files["model"].read_bytes(), COLOUR_LABELS, load_owner_key(d.owner_key))
    receipts = workdir / "image-receipts"
    done = run_cli("classify", d.url, constraint, str(files["red"]), "--receipt", str(receipts))
    assert done.returncode == 0, done.stderr
    (kept,) = receipts.iterdir()
    measurements = workdir / "measurements.json"
    done = run_cli(
        "verify-receipt", str(kept), "--constraint", constraint, "--measurements", str(measurements)
    )
    assert done.returncode == 0 and "receipt verified" in done.stdout, done.stderr
    done = run_cli("verify-receipt", str(kept), "--constraint", constraint)
    assert done.returncode != 0 and "--measurements FILE" in done.stderr
