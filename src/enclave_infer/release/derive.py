"""``enclave-infer measure --image``: a release's reference measurements, from its artifacts alone.

Untrusted, client-side tooling. Reads the release manifest (``release.json``, written by ``make image``)
and the artifacts it lists, checks each against the SHA-256 the manifest states, and derives:

* vTPM: the events OVMF, systemd-stub and the kernel's EFI stub record in PCR 4, 9 and 11 when the
  UKI boots (:func:`enclave_infer.release.uki.predict_tpm`), SHA-256 bank;
* TDX: the same boot mapped onto RTMR1 and RTMR2 (:func:`enclave_infer.release.uki.predict_tdx`),
  SHA-384;
* SEV-SNP: MEASUREMENT of a measured direct boot of the UKI's kernel, initrd and command line, for
  each OVMF (built for SNP: Debian's is not) and vCPU count and type given
  (:mod:`enclave_infer.release.snp`);
* simulation: the trusted code base's files, as the image's site-packages holds them;
* SGX: what Gramine's manifest would trust in the image, hashed; MRENCLAVE stays null, because
  Gramine's signer is not part of the image (nor installable on the build machines).

The result is one canonical document (:class:`~enclave_infer.attestation.reference.ReferenceMeasurements`);
``IMAGE:<its SHA-256>`` pins it.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from enclave_infer.attestation.measurement import TRUSTED_CODE_BASE
from enclave_infer.attestation.reference import ReferenceMeasurements
from enclave_infer.errors import UsageError
from enclave_infer.release import uki

__all__ = ["SnpTarget", "derive", "load_release", "measured_boot", "snp_measurements"]

UKI_ARTIFACT = "uki/enclave-infer.efi"
ROOTFS_ARTIFACT = "rootfs.tar"
# Where the image installs the package (image/build_rootfs.py: a venv at /opt/enclave-infer).
PACKAGE_DIR = PurePosixPath("opt/enclave-infer/lib/python3.11/site-packages/enclave_infer")
# What Gramine's manifest template trusts in the image (deploy/gramine: the interpreter, its standard
# library, the venv's site-packages, the system's shared libraries).
SGX_TRUSTED_PREFIXES = (
    "usr/bin/python3.11",
    "usr/lib/python3.11/",
    "opt/enclave-infer/pyvenv.cfg",
    "opt/enclave-infer/lib/python3.11/site-packages/",
    "lib/x86_64-linux-gnu/",
    "usr/lib/x86_64-linux-gnu/",
    "etc/enclave-infer/",
)
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class SnpTarget:
    """One SEV-SNP launch to compute MEASUREMENT for: an OVMF built for SNP and the vCPUs."""

    ovmf: Path
    vcpus: int
    vcpu_type: str


def load_release(path: Path) -> tuple[Path, dict[str, Any]]:
    """The release folder and its manifest, from the manifest's path or the folder's."""
    manifest = path / "release.json" if path.is_dir() else path
    try:
        raw = manifest.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the release manifest {manifest}: {exc.strerror}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise UsageError(f"{manifest} is larger than a release manifest can be")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise UsageError(f"{manifest} is not JSON: not a release manifest") from None
    if not isinstance(doc, dict) or doc.get("release_manifest_version") != 1:
        raise UsageError(f"{manifest} is not a release manifest of a known version")
    return manifest.parent, doc


def derive(folder: Path, manifest: dict[str, Any], *, snp: Sequence[SnpTarget] = ()) -> ReferenceMeasurements:
    """The reference measurements of the release in ``folder`` whose manifest is ``manifest``
    (:func:`load_release` reads both)."""
    uki_bytes = _artifact(folder, manifest, UKI_ARTIFACT)
    parsed = uki.parse_uki(uki_bytes)
    cmdline = parsed.cmdline
    stated = manifest.get("kernel_cmdline")
    if stated is not None and stated != cmdline:
        raise UsageError(
            f"the UKI's command line is not the one the release manifest states: {cmdline!r} != {stated!r}"
        )
    rootfs = folder / ROOTFS_ARTIFACT
    _check_digest(rootfs, manifest, ROOTFS_ARTIFACT)
    trusted, sgx_files = _rootfs_files(rootfs)
    document: dict[str, Any] = {
        "release": {
            "name": manifest.get("name"),
            "version": manifest.get("version"),
            "source_commit": manifest.get("source_commit"),
            "uki_sha256": hashlib.sha256(uki_bytes).hexdigest(),
            "kernel_cmdline": cmdline,
            "verity_root_hash": _roothash(cmdline),
        },
        "simulation": {"trusted_files": [[p, d.hex()] for p, d in trusted]},
        "sgx": {
            "mrenclave": None,
            "trusted_files": len(sgx_files),
            "trusted_files_sha256": hashlib.sha256(
                "".join(f"{d.hex()}  /{p}\n" for p, d in sgx_files).encode()
            ).hexdigest(),
        },
        **measured_boot(uki_bytes),
        "sev-snp": snp_measurements(uki_bytes, snp),
    }
    return ReferenceMeasurements.build(document)


def measured_boot(uki_bytes: bytes) -> dict[str, Any]:
    """The reference measurements' ``vtpm`` and ``tdx`` sections: the events a boot of this UKI
    records in each register ``IMAGE:`` covers."""
    sections = {}
    for tee, bank, events in (
        ("vtpm", "sha256", uki.predict_tpm(uki_bytes)),
        ("tdx", "sha384", uki.predict_tdx(uki_bytes)),
    ):
        values = {str(r): v.hex() for r, v in sorted(uki.replay(events, bank).items())}
        sections[tee] = {"bank": bank, "registers": _registers(events, bank), "values": values}
    return sections


def _registers(events: Sequence[uki.PredictedEvent], bank: str) -> dict[str, list[dict[str, str]]]:
    registers: dict[str, list[dict[str, str]]] = {}
    for event in events:
        registers.setdefault(str(event.register), []).append(
            {"type": event.type_name, "digest": event.digests[bank].hex(), "what": event.what}
        )
    return registers


def snp_measurements(uki_bytes: bytes, targets: Sequence[SnpTarget]) -> dict[str, Any]:
    """The reference measurements' ``sev-snp`` section: MEASUREMENT of a measured direct boot of the
    UKI's kernel, initrd and command line, for each firmware and vCPU shape."""
    parsed = uki.parse_uki(uki_bytes)
    return {"measurements": [_snp(target, parsed) for target in targets]}


def _snp(target: SnpTarget, parsed: uki.Uki) -> dict[str, Any]:
    from enclave_infer.release.snp import snp_measurement

    measurement = snp_measurement(
        ovmf=target.ovmf,
        kernel=parsed.kernel,
        initrd=parsed.initrd,
        cmdline=parsed.cmdline,
        vcpus=target.vcpus,
        vcpu_type=target.vcpu_type,
    )
    return {
        "measurement": measurement.hex(),
        "ovmf_sha256": hashlib.sha256(target.ovmf.read_bytes()).hexdigest(),
        "vcpus": target.vcpus,
        "vcpu_type": target.vcpu_type,
    }


def _roothash(cmdline: str) -> str | None:
    for word in cmdline.split():
        if word.startswith("roothash="):
            return word.removeprefix("roothash=")
    return None


def _artifact(folder: Path, manifest: dict[str, Any], name: str) -> bytes:
    path = folder / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the release's {name}: {exc.strerror} ({path})") from None
    _check_digest(path, manifest, name, data)
    return data


def _check_digest(path: Path, manifest: dict[str, Any], name: str, data: bytes | None = None) -> None:
    stated = manifest.get("artifacts", {}).get(name, {}).get("sha256")
    if stated is None:
        raise UsageError(f"the release manifest lists no {name}")
    if data is None:
        try:
            with path.open("rb") as f:
                actual = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as exc:
            raise UsageError(f"cannot read the release's {name}: {exc.strerror} ({path})") from None
    else:
        actual = hashlib.sha256(data).hexdigest()
    if actual != stated:
        raise UsageError(f"{path} has SHA-256 {actual}, not the {stated} the release manifest states")


def _trusted(rel: str) -> bool:
    return any(rel.startswith(e) if e.endswith("/") else rel == e for e in TRUSTED_CODE_BASE)


def _rootfs_files(rootfs: Path) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(trusted code base files relative to the package, SHA-256) and (files Gramine's manifest
    would trust, SHA-256), both sorted, from the root file system tarball."""
    trusted: list[tuple[str, bytes]] = []
    sgx: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(rootfs) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.removeprefix("./")
                in_package = PurePosixPath(name).is_relative_to(PACKAGE_DIR)
                rel = str(PurePosixPath(name).relative_to(PACKAGE_DIR)) if in_package else ""
                wanted_trusted = in_package and rel.endswith(".py") and _trusted(rel)
                wanted_sgx = any(
                    name.startswith(p) if p.endswith("/") else name == p for p in SGX_TRUSTED_PREFIXES
                )
                if not (wanted_trusted or wanted_sgx):
                    continue
                f = tar.extractfile(member)
                if f is None:
                    continue
                digest = hashlib.sha256(f.read()).digest()
                if wanted_trusted:
                    trusted.append((rel, digest))
                if wanted_sgx:
                    sgx.append((name, digest))
    except (OSError, tarfile.TarError) as exc:
        raise UsageError(f"cannot read the root file system {rootfs}: {exc}") from None
    if not trusted:
        raise UsageError(f"{rootfs} holds no enclave_infer package under /{PACKAGE_DIR}")
    return sorted(trusted), sorted(sgx)
