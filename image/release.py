"""The release manifest, OUT/release.json: what a rebuilder compares and a verifier pins.

    python image/release.py OUT

Reads what the build steps left in OUT: rootfs.json (image/build_rootfs.py), oci.json (image/oci.py),
oci-ray.json (image/ray_image.py) and, when the confidential-VM part ran, uki.json (its artifacts, kernel
command line and dm-verity root hash; those fields stay null without it). Lists every artifact's
SHA-256 and size, the lock files' hashes, the Debian packages and Python wheels at their versions.
Keys sorted, no timestamps but SOURCE_DATE_EPOCH: two builds give the same file. With --measurements
(the second run `make image` makes, after `enclave-infer measure --image`), it also lists the reference
measurements and the IMAGE: pin clients use.

Also renders deploy/ray/rayservice.yaml into OUT/deploy/rayservice.yaml: the committed manifest names
the Ray image by a placeholder (an image's digest depends on the commit it is built from, so a
commit cannot hold the digest of its own image); the rendered one names REGISTRY/enclave-infer-ray
by the digest of the manifest built here, and is listed among the artifacts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reprotar import sha256

HERE = Path(__file__).resolve().parent
RAYSERVICE = HERE.parent / "deploy" / "ray" / "rayservice.yaml"
# What the committed manifest says where the digest goes; every occurrence is replaced.
PLACEHOLDER = "registry.example.com/enclave-infer-ray@sha256:DIGEST-WRITTEN-BY-MAKE-IMAGE"
DEFAULT_REGISTRY = "registry.example.com"


def artifact(out: Path, name: str) -> dict[str, object]:
    path = out / name
    return {"sha256": sha256(path), "size": path.stat().st_size}


def render_rayservice(out: Path, registry: str, name: str, manifest_digest: str) -> str:
    """OUT/deploy/rayservice.yaml: the committed manifest with the Ray image named by digest."""
    text = RAYSERVICE.read_text()
    if PLACEHOLDER not in text:
        sys.exit(f"release: {RAYSERVICE} does not name the Ray image by the placeholder {PLACEHOLDER}")
    target = out / "deploy" / "rayservice.yaml"
    target.parent.mkdir(exist_ok=True)
    target.write_text(text.replace(PLACEHOLDER, f"{registry}/{name}@{manifest_digest}"))
    return "deploy/rayservice.yaml"


def wheels(lock: str = "requirements.lock") -> dict[str, dict[str, str]]:
    found = {}
    for line in (HERE / lock).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            spec, rest = line.split(" --hash=sha256:")
            name, version = spec.split("==")
            digest, _, filename = rest.partition("  # ")
            found[name] = {"version": version, "sha256": digest.strip(), "file": filename.strip()}
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--registry", default=DEFAULT_REGISTRY, help="where the Ray image is pushed")
    parser.add_argument(
        "--measurements",
        type=Path,
        help="the reference measurements `enclave-infer measure --image` derived from this release: "
        "listed as an artifact, with the IMAGE: pin that is their SHA-256",
    )
    args = parser.parse_args()
    out = args.out.resolve()
    rootfs = json.loads((out / "rootfs.json").read_text())
    oci = json.loads((out / "oci.json").read_text())
    ray = json.loads((out / "oci-ray.json").read_text())
    rendered = render_rayservice(out, args.registry, ray["ref"].split(":")[0], ray["manifest_digest"])
    uki_path = out / "uki.json"
    uki = json.loads(uki_path.read_text()) if uki_path.exists() else {}
    artifacts = {
        name: artifact(out, name)
        for name in (
            "rootfs.tar",
            oci["archive"],
            ray["archive"],
            rendered,
            f"dist/{rootfs['wheel']['name']}",
        )
    }
    for name in uki.get("artifacts", []):
        artifacts[name] = artifact(out, name)
    measurements = None
    if args.measurements is not None:
        name = args.measurements.resolve().relative_to(out).as_posix()
        artifacts[name] = artifact(out, name)
        measurements = {"file": name, "image": "IMAGE:" + str(artifacts[name]["sha256"]).upper()}
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
        "oci_ray": {
            k: ray[k]
            for k in ("ref", "manifest_digest", "config_digest", "layer_digests", "layer_diff_ids", "cmd")
        },
        "entrypoint": rootfs["entrypoint"] + rootfs["cmd"],
        "locks": {**rootfs["locks"], "requirements-ray.lock": ray["lock_sha256"]},
        "debian": {
            "suite": rootfs["suite"],
            "suites": rootfs["suites"],
            "packages": rootfs["debian_packages"],
        },
        "python_wheels": wheels(),
        "python_wheels_ray": wheels("requirements-ray.lock"),
        "enclave_infer_wheel": rootfs["wheel"],
        "kernel_cmdline": uki.get("kernel_cmdline"),
        "verity_root_hash": uki.get("verity_root_hash"),
        "uki": uki.get("uki"),
        # what clients pin: IMAGE: is the SHA-256 of the reference measurements (measure --image)
        "measurements": measurements,
    }
    (out / "release.json").write_text(json.dumps(release, indent=2, sort_keys=True) + "\n")
    for name, a in release["artifacts"].items():
        print(f"{a['sha256']}  {a['size'] / 1e6:8.1f} MB  {name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
