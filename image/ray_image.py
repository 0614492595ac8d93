"""The Ray image: the plain image's root file system plus one layer, Ray Serve for KubeRay.

    python image/ray_image.py OUT   # after build_rootfs.py and oci.py: reads OUT/rootfs.tar, OUT/rootfs.json

The second layer holds the wheels of requirements-ray.lock (pyproject.toml's `ray` extra and what it
pulls in, resolved with the base pins held: image/lock_python.py), installed into the image's venv
by the pip of tools.lock with `--require-hashes --only-binary=:all: --no-deps --no-compile`, as the
base wheels are, and /etc/profile.d/enclave-infer.sh, which puts the venv on a login shell's PATH:
KubeRay starts every Ray container as `/bin/bash -lc -- "ulimit ...; ray start ..."`, and Debian's
/etc/profile sets PATH anew. The layer is the difference of the two trees: every entry new or
changed (with its parent folders), none removed (the build stops if one is: no whiteouts needed).

Writes OUT/oci-ray/, OUT/enclave-infer-ray.oci.tar and OUT/oci-ray.json (as oci.py, plus the lock's
hash and the layer's size). OUT/rootfs-ray/ (the merged tree) and OUT/ray-layer.tar are build
products, not artifacts. No entrypoint: KubeRay gives the command; alone the image runs a Ray head.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import locks
import oci
import reprotar
from locks import lock_lines, wheel_for

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NAME = "enclave-infer-ray"
VENV = "/opt/enclave-infer"
PROFILE = "etc/profile.d/enclave-infer.sh"
# Ray's ports: GCS, dashboard, client server, Serve's HTTP proxy (deploy/ray/rayservice.yaml).
PORTS = [6379, 8265, 10001, 8000]
CMD = [VENV + "/bin/ray", "start", "--head", "--block", "--disable-usage-stats"]

Meta = tuple[object, ...]


def say(text: str) -> None:
    print(f"ray: {text}", file=sys.stderr, flush=True)


def base_entries(tar_path: Path) -> dict[str, Meta]:
    """name -> (type, mode, uid, gid, mtime, link target, content SHA-256) of each member of the base tar."""
    entries: dict[str, Meta] = {}
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            digest = ""
            if member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            kind = "file" if member.isfile() or member.islnk() else "dir" if member.isdir() else "link"
            if member.islnk():  # a hard link: compare its target's content
                digest = entries[member.linkname][6]  # type: ignore[assignment]
            link = member.linkname if member.issym() else ""
            entries[member.name] = (kind, member.mode, member.uid, member.gid, member.mtime, link, digest)
    return entries


def tree_entry(path: Path, epoch: int, with_digest: bool) -> Meta:
    st = path.lstat()
    mode = stat.S_IMODE(st.st_mode)
    mtime = min(int(st.st_mtime), epoch)
    if stat.S_ISDIR(st.st_mode):
        return ("dir", mode, st.st_uid, st.st_gid, mtime, "", "")
    if stat.S_ISLNK(st.st_mode):
        return ("link", mode, st.st_uid, st.st_gid, mtime, os.readlink(path), "")
    digest = ""
    if with_digest:
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    return ("file", mode, st.st_uid, st.st_gid, mtime, "", digest)


def layer_names(tree: Path, base: dict[str, Meta], epoch: int) -> set[str]:
    """Names under TREE new or changed against BASE, and their parent folders."""
    changed: set[str] = set()
    seen: set[str] = set()
    for name, path in reprotar.walk(tree):
        seen.add(name)
        old = base.get(name)
        if old is None or tree_entry(path, epoch, old[0] == "file") != old:
            changed.add(name)
    removed = sorted(set(base) - seen)
    if removed:
        sys.exit(f"ray: the Ray layer would remove {len(removed)} entries of the base, e.g. {removed[:5]}")
    for name in list(changed):
        parts = name.split("/")
        changed.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return changed


def install(tree: Path, cache: Path) -> None:
    """The Ray wheels into the image's venv, by the locked pip from its wheel, inside the tree."""
    staging = tree / "tmp" / "wheels"
    staging.mkdir()
    requirements = lock_lines("requirements-ray.lock")
    for req in requirements:
        shutil.copy(wheel_for(cache, req), staging)
    pip_wheel = wheel_for(cache, next(r for r in lock_lines("tools.lock") if r.startswith("pip==")))
    shutil.copy(pip_wheel, staging)
    (staging / "requirements.txt").write_text("\n".join(requirements) + "\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
           "PIP_CONFIG_FILE": "/dev/null", "LANG": "C.UTF-8"}  # fmt: skip
    subprocess.run(
        ["/usr/sbin/chroot", str(tree), f"{VENV}/bin/python", f"/tmp/wheels/{pip_wheel.name}/pip",
         "install", "--quiet", "--disable-pip-version-check", "--no-index", "--find-links", "/tmp/wheels",
         "--require-hashes", "--only-binary=:all:", "--no-deps", "--no-compile", "--no-cache-dir",
         "-r", "/tmp/wheels/requirements.txt"],
        check=True, env=env,
    )  # fmt: skip
    shutil.rmtree(staging)
    profile = tree / PROFILE
    profile.write_text(
        "# enclave-infer's venv first on a login shell's PATH (KubeRay runs `bash -lc`): ray, serve.\n"
        f'PATH="{VENV}/bin:$PATH"\n'
    )
    os.chmod(profile, 0o644)
    pycache = [p for p in tree.rglob("__pycache__") if p.is_dir()]
    for p in pycache:
        shutil.rmtree(p)


def main() -> int:
    out = Path(sys.argv[1]).resolve()
    cache = ROOT / "build" / "image-cache" / "wheels"
    started = time.monotonic()
    info = json.loads((out / "rootfs.json").read_text())
    epoch: int = info["source_date_epoch"]
    locks.download(cache, "requirements-ray.lock")
    tree = out / "rootfs-ray"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    # From the tarball, not OUT/rootfs: the tree the plain image's layer is, whatever touched rootfs/.
    subprocess.run(
        ["tar", "-x", "-p", "--numeric-owner", "-f", str(out / "rootfs.tar"), "-C", str(tree)], check=True
    )
    install(tree, cache)
    reprotar.clamp_mtimes(tree, epoch)
    names = layer_names(tree, base_entries(out / "rootfs.tar"), epoch)
    layer = out / "ray-layer.tar"
    reprotar.write_tar_file(tree, layer, epoch, only=names)
    config = {
        "User": info["user"],
        "Env": [f"{k}={v}" for k, v in info["env"].items()],
        "Cmd": CMD,
        "WorkingDir": "/",
        "ExposedPorts": {f"{port}/tcp": {} for port in PORTS},
        "StopSignal": "SIGTERM",
    }
    history = [
        "image/build_rootfs.py: Debian bookworm (debian.lock), wheels (requirements.lock), enclave-infer ",
        "image/ray_image.py: Ray Serve (requirements-ray.lock) for enclave-infer ",
    ]
    result = oci.write_image(out, NAME, [out / "rootfs.tar", layer], config, history)
    result["lock_sha256"] = oci.sha256(HERE / "requirements-ray.lock")
    result["layer_tar_size"] = layer.stat().st_size
    result["cmd"] = CMD
    (out / "oci-ray.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    say(
        f"{result['ref']} {result['manifest_digest']}: layer {layer.stat().st_size / 1e6:.0f} MB "
        f"({len(names)} entries) in {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
