"""`enclave-infer measure --image`: a release's reference measurements from its artifacts alone, on a
small release built here (a test UKI, a root file system tarball holding this package's trusted code
base, a release manifest naming both by SHA-256)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from enclave_infer.attestation.measurement import package_root, trusted_file_digests, trusted_files
from enclave_infer.attestation.reference import ReferenceMeasurements, image_pin
from enclave_infer.release.uki import parse_uki
from tests.emulation.uki import uki
from tests.unit.test_release_snp import firmware

PACKAGE = "opt/enclave-infer/lib/python3.11/site-packages/enclave_infer"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enclave_infer.cli.main", *args], capture_output=True, text=True, check=False
    )


def release(folder: Path, *, stated_pin: str | None = None) -> Path:
    """A release folder: uki/enclave-infer.efi, rootfs.tar, release.json."""
    (folder / "uki").mkdir(parents=True)
    (folder / "uki/enclave-infer.efi").write_bytes(uki())
    with tarfile.open(folder / "rootfs.tar", "w") as tar:
        for rel in trusted_files():
            data = (package_root() / rel).read_bytes()
            member = tarfile.TarInfo(f"./{PACKAGE}/{rel.as_posix()}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        python = tarfile.TarInfo("./usr/bin/python3.11")
        python.size = 4
        tar.addfile(python, io.BytesIO(b"\x7fELF"))
    artifacts = {
        name: {"sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}
        for name in ("uki/enclave-infer.efi", "rootfs.tar")
    }
    manifest = {"release_manifest_version": 1, "name": "enclave-infer", "artifacts": artifacts}
    if stated_pin is not None:
        manifest["measurements"] = {"file": "measurements.json", "image": stated_pin}
    (folder / "release.json").write_text(json.dumps(manifest))
    return folder


def test_measure_image_derives_every_value_and_one_pin(tmp_path: Path) -> None:
    folder = release(tmp_path / "release")
    ovmf = tmp_path / "OVMF.amdsev.fd"
    ovmf.write_bytes(firmware())
    done = cli("measure", "--image", str(folder / "release.json"), "--snp-ovmf", str(ovmf), "--vcpus", "2")
    assert done.returncode == 0, done.stderr
    raw = (folder / "measurements.json").read_bytes()
    assert done.stdout == image_pin(raw) + "\n"
    doc = ReferenceMeasurements.parse(raw).document
    assert sorted(doc["vtpm"]["registers"]) == ["11", "4", "9"] and sorted(doc["tdx"]["registers"]) == [
        "1",
        "2",
    ]
    assert [m["vcpus"] for m in doc["sev-snp"]["measurements"]] == [2]
    assert doc["simulation"]["trusted_files"] == [[p, d.hex()] for p, d in trusted_file_digests()]
    # Gramine would trust the package's files and the interpreter; it is not here to sign them
    assert doc["sgx"]["mrenclave"] is None and doc["sgx"]["trusted_files"] == len(trusted_files()) + 1
    assert doc["release"]["kernel_cmdline"] == parse_uki(uki()).cmdline
    # the same artifacts give the same bytes, the folder as well as the manifest
    again = cli(
        "measure",
        "--image",
        str(folder),
        "--out",
        str(tmp_path / "again.json"),
        "--snp-ovmf",
        str(ovmf),
        "--vcpus",
        "2",
    )
    assert again.stdout == done.stdout and (tmp_path / "again.json").read_bytes() == raw


def test_a_stated_pin_is_compared(tmp_path: Path) -> None:
    folder = release(tmp_path / "first")
    pin = cli("measure", "--image", str(folder)).stdout.strip()
    agreeing = release(tmp_path / "agreeing", stated_pin=pin)
    done = cli("measure", "--image", str(agreeing))
    assert done.returncode == 0 and "the same IMAGE: the release manifest states" in done.stderr
    other = release(tmp_path / "other", stated_pin="IMAGE:" + "AB" * 32)
    done = cli("measure", "--image", str(other))
    assert done.returncode == 1
    stated = f"IMAGE:{'AB' * 32}"
    assert (
        done.stderr
        == f"enclave-infer: error: the release manifest states {stated}, but its artifacts give {pin}\n"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("uki", "uki/enclave-infer.efi has SHA-256"),
        ("missing", "cannot read the release's uki/enclave-infer.efi"),
        ("manifest", "is not a release manifest of a known version"),
    ],
)
def test_an_altered_release_is_refused_in_one_line(tmp_path: Path, change: str, message: str) -> None:
    folder = release(tmp_path / "release")
    if change == "uki":
        data = bytearray((folder / "uki/enclave-infer.efi").read_bytes())
        data[-1] ^= 1
        (folder / "uki/enclave-infer.efi").write_bytes(bytes(data))
    elif change == "missing":
        (folder / "uki/enclave-infer.efi").unlink()
    else:
        (folder / "release.json").write_text("{}")
    done = cli("measure", "--image", str(folder))
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not (folder / "measurements.json").exists()


def test_image_options_do_not_mix_with_a_configuration(tmp_path: Path) -> None:
    folder = release(tmp_path / "release")
    done = cli("measure", "--image", str(folder), "--config", str(tmp_path / "enclave.toml"))
    assert done.returncode == 1 and "derives from the release alone" in done.stderr
    done = cli("measure", "--out", str(tmp_path / "x.json"))
    assert done.returncode == 1 and "--out and --snp-ovmf go with --image" in done.stderr
