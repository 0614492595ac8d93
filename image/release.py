"""The release manifest, OUT/release.json: what a rebuilder compares and a verifier pins.

    python image/release.py OUT

Reads what the build steps left in OUT: rootfs.json (image/build_rootfs.py), oci.json (image/oci.py)
and, when the confidential-VM part ran, uki.json (its artifacts, kernel command line and dm-verity
root hash; those fields stay null without it). Lists every artifact's SHA-256 and size, the lock
files' hashes, the Debian packages and Python wheels at their versions. Keys sorted, no timestamps
but SOURCE_DATE_EPOCH: two builds give the same file.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def artifact(out: Path, name: str) -> dict[str, object]:
    path = out / name
    return {"sha256": sha256(path), "size": path.stat().st_size}


def wheels() -> dict[str, dict[str, str]]:
    found = {}
    for line in (HERE / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            spec, rest = line.split(" --hash=sha256:")
            name, version = spec.split("==")
            digest, _, filename = rest.partition("  # ")
            found[name] = {"version": version, "sha256": digest.strip(), "file": filename.strip()}
    return found


def main() -> int:
    out = Path(sys.argv[1]).resolve()
    rootfs = json.loads((out / "rootfs.json").read_text())
    oci = json.loads((out / "oci.json").read_text())
    uki_path = out / "uki.json"
    uki = json.loads(uki_path.read_text()) if uki_path.exists() else {}
    artifacts = {
        name: artifact(out, name)
        for name in ("rootfs.tar", oci["archive"], f"dist/{rootfs['wheel']['name']}")
    }
    for name in uki.get("artifacts", []):
        artifacts[name] = artifact(out, name)
    release = {
        "release_manifest_version": 1,
        "name": "enclave-infer",
        "version": oci["ref"].split(":")[1],
        "source_commit": rootfs["source_commit"],
        "source_date_epoch": rootfs["source_date_epoch"],
        "artifacts": dict(sorted(artifacts.items())),
        "oci": {
            k: oci[k] for k in ("ref", "manifest_digest", "config_digest", "layer_digest", "layer_diff_id")
        },
        "entrypoint": rootfs["entrypoint"] + rootfs["cmd"],
        "locks": rootfs["locks"],
        "debian": {
            "suite": rootfs["suite"],
            "suites": rootfs["suites"],
            "packages": rootfs["debian_packages"],
        },
        "python_wheels": wheels(),
        "enclave_infer_wheel": rootfs["wheel"],
        "kernel_cmdline": uki.get("kernel_cmdline"),
        "verity_root_hash": uki.get("verity_root_hash"),
        "uki": uki.get("uki"),
    }
    (out / "release.json").write_text(json.dumps(release, indent=2, sort_keys=True) + "\n")
    for name, a in release["artifacts"].items():
        print(f"{a['sha256']}  {a['size'] / 1e6:8.1f} MB  {name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
