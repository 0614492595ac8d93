"""The OCI image of the root file system, written to the OCI image spec without a container engine.

    python image/oci.py OUT      # reads OUT/rootfs.tar and OUT/rootfs.json (image/build_rootfs.py)

Writes OUT/oci/ (an OCI image layout: oci-layout, index.json, blobs/sha256/...) and
OUT/enclave-infer.oci.tar (the same layout as one tar, what `skopeo copy oci-archive:...` and
`podman load` read). One layer: rootfs.tar gzipped (image/reprotar.py). Every timestamp is
SOURCE_DATE_EPOCH, JSON is written with sorted keys, so two builds give the same digests.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
import sys
from pathlib import Path

import reprotar
from reprotar import sha256

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
NAME = "enclave-infer"


def canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def put_blob(blobs: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def rfc3339(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_image(
    out: Path, name: str, layers: list[Path], config: dict[str, object], history: list[str]
) -> dict[str, object]:
    """An OCI layout OUT/oci[-SUFFIX]/ and archive OUT/NAME.oci.tar of LAYERS (uncompressed tars, the
    base first, each gzipped here) with CONFIG as the image's run configuration."""
    info = json.loads((out / "rootfs.json").read_text())
    epoch: int = info["source_date_epoch"]
    version = info["wheel"]["name"].split("-")[1]
    layout = out / ("oci" + name.removeprefix(NAME))
    shutil.rmtree(layout, ignore_errors=True)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descriptors, diff_ids = [], []
    for tar in layers:
        staged = out / "layer.tar.gz"
        reprotar.gzip_file(tar, staged)
        layer_digest = sha256(staged)
        descriptors.append(
            {"mediaType": LAYER, "digest": f"sha256:{layer_digest}", "size": staged.stat().st_size}
        )
        staged.rename(blobs / layer_digest)
        diff_ids.append(f"sha256:{sha256(tar)}")
    created = rfc3339(epoch)
    image_config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {**config, "Labels": {"org.opencontainers.image.version": version}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": line + version} for line in history],
    }
    config_desc = {"mediaType": CONFIG, **put_blob(blobs, canonical(image_config))}
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config_desc,
        "layers": descriptors,
        "annotations": {
            "org.opencontainers.image.created": created,
            "org.opencontainers.image.version": version,
        },
    }
    manifest_desc = {"mediaType": MANIFEST, **put_blob(blobs, canonical(manifest))}
    ref = f"{name}:{version}"
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [{**manifest_desc, "annotations": {"org.opencontainers.image.ref.name": ref}}],
    }
    (layout / "index.json").write_bytes(canonical(index))
    (layout / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    reprotar.clamp_mtimes(layout, epoch)
    archive = out / f"{name}.oci.tar"
    reprotar.write_tar_file(layout, archive, epoch)
    return {
        "ref": ref,
        "manifest_digest": str(manifest_desc["digest"]),
        "config_digest": str(config_desc["digest"]),
        "layer_digest": descriptors[-1]["digest"],
        "layer_diff_id": diff_ids[-1],
        "layer_digests": [d["digest"] for d in descriptors],
        "layer_diff_ids": diff_ids,
        "layout": layout.name,
        "archive": archive.name,
    }


def write_layout(out: Path) -> dict[str, object]:
    """The plain image: the root file system as its one layer, `enclave-infer serve` its entrypoint."""
    info = json.loads((out / "rootfs.json").read_text())
    config = {
        "User": info["user"],
        "Env": [f"{k}={v}" for k, v in info["env"].items()],
        "Entrypoint": info["entrypoint"],
        "Cmd": info["cmd"],
        "WorkingDir": "/",
        "ExposedPorts": {f"{info['port']}/tcp": {}},
        "StopSignal": "SIGTERM",
    }
    history = [
        "image/build_rootfs.py: Debian bookworm (debian.lock), wheels (requirements.lock), enclave-infer "
    ]
    return write_image(out, NAME, [out / "rootfs.tar"], config, history)


def main() -> int:
    out = Path(sys.argv[1]).resolve()
    oci = write_layout(out)
    (out / "oci.json").write_text(json.dumps(oci, indent=2, sort_keys=True) + "\n")
    print(f"oci: {oci['ref']} {oci['manifest_digest']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
