"""Build the confidential-VM image from a root file system: root volume, initrd and UKI.

    python3 image/uki/build_uki.py --rootfs TREE_OR_TAR --out build/image [--entrypoint FILE]

Writes to OUT/uki/:
  rootfs.verity.img  the root file system as erofs (lz4hc), its dm-verity hash tree appended after its
                     last data block (veritysetup --hash-offset), so one disk carries both;
  initrd.img         a gzip'd newc cpio: busybox-static, dmsetup and its libraries, the kernel modules the
                     boot needs (decompressed, in dependency order), init.sh as /init;
  enclave-infer.efi  the UKI: systemd-stub (systemd-boot-efi) + .osrel + .cmdline + .initrd + .linux, the
                     kernel command line carrying the verity root hash, salt and size;
and OUT/uki.json, the part of the release manifest image/release.py merges: the artifacts, the kernel
command line, the verity root hash, the sections' sizes and digests, the package versions.

Inputs are pinned: the Debian packages in packages.txt (fetched with apt-get download NAME=VERSION into
CACHE/deb, which apt checks against the signed Release file), the root file system given, and fixed
timestamps, UUIDs and salt. Two builds from the same inputs give the same bytes; the tools (erofs-utils,
veritysetup, objcopy, gzip via Python's zlib) are the build machine's Debian 12 ones.
Needs root for nothing but extracting a root file system tarball with its owners.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL_VERSION = "6.12.95+deb12-cloud-amd64"
# What the boot needs and what a confidential guest uses; their dependencies come from modules.dep.
MODULES = ["virtio_blk", "dm-verity", "erofs", "virtio_net", "tsm", "sev-guest", "tdx-guest"]
# Loaded only where their hardware is: a guest of the other kind (or none) refuses them with ENODEV.
OPTIONAL_MODULES = {"sev-guest.ko", "tdx-guest.ko"}
# dmsetup's libraries (ldd /sbin/dmsetup on Debian 12) and the dynamic loader.
LIBS = [
    "libdevmapper.so.1.02.1",
    "libselinux.so.1",
    "libudev.so.1",
    "libpcre2-8.so.0",
    "libc.so.6",
    "libm.so.6",
]
# Fixed so that two builds agree; they identify nothing secret.
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "1700000000"))  # every file's timestamp in every image
EROFS_UUID = "6e636c61-7665-4000-8000-000000000001"
VERITY_UUID = "6e636c61-7665-4000-8000-000000000002"
VERITY_SALT = hashlib.sha256(b"enclave-infer root verity salt v1").hexdigest()
BLOCK = 4096
UKI, INITRD, ROOT_IMG = "enclave-infer.efi", "initrd.img", "rootfs.verity.img"


def run(*cmd: str, **kw: object) -> str:
    done = subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    return str(done.stdout)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def packages() -> dict[str, str]:
    pins = {}
    for line in (HERE / "packages.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split()
            pins[name] = version
    return pins


def fetch(debdir: Path) -> dict[str, Path]:
    """The pinned .deb files, downloaded once into debdir."""
    debdir.mkdir(parents=True, exist_ok=True)
    found = {}
    for name, version in packages().items():
        fname = f"{name}_{version.replace(':', '%3a')}_"
        hits = [p for p in debdir.glob("*.deb") if p.name.startswith(fname)]
        if not hits:
            subprocess.run(
                ["apt-get", "-o", "APT::Sandbox::User=root", "download", f"{name}={version}"],
                cwd=debdir,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            hits = [p for p in debdir.glob("*.deb") if p.name.startswith(fname)]
        if len(hits) != 1:
            sys.exit(f"build_uki: cannot find {name} {version} in {debdir}")
        found[name] = hits[0]
    return found


def stage(debs: dict[str, Path], work: Path) -> Path:
    """All pinned packages extracted into one tree."""
    tree = work / "staging"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    for deb in debs.values():
        run("dpkg-deb", "-x", str(deb), str(tree))
    return tree


# ---- the root volume --------------------------------------------------------------------------


def dev_rootfs(staging: Path, work: Path) -> Path:
    """A busybox root whose service is busybox httpd on port 8080: the pipeline without the real root."""
    tree = work / "devroot"
    if tree.exists():
        shutil.rmtree(tree)
    for d in ("bin", "dev", "proc", "sys", "run", "tmp", "www", "etc", "var/lib/enclave-infer"):
        (tree / d).mkdir(parents=True)
    shutil.copy2(staging / "bin/busybox", tree / "bin/busybox")
    for applet in ("sh", "httpd", "cat", "ls"):
        (tree / "bin" / applet).symlink_to("busybox")
    (tree / "www/index.html").write_text("ready\n")
    return tree


def rootfs_tree(rootfs: Path, work: Path) -> Path:
    if str(rootfs) == "dev":
        return dev_rootfs(work / "staging", work)
    if rootfs.is_dir():
        return rootfs
    tree = work / "rootfs"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    run("tar", "--numeric-owner", "-xpf", str(rootfs), "-C", str(tree))
    return tree


def root_volume(tree: Path, out: Path) -> dict[str, object]:
    erofs = out.with_suffix(".erofs")
    for p in (erofs, out):
        p.unlink(missing_ok=True)
    # -x-1: no extended attributes (none is needed; they would only be more to reproduce).
    run(
        "mkfs.erofs",
        "--quiet",
        "-zlz4hc,12",
        f"-T{EPOCH}",
        f"-U{EROFS_UUID}",
        "-x-1",
        str(erofs),
        str(tree),
        env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)},
    )
    size = erofs.stat().st_size
    if size % BLOCK:
        sys.exit(f"build_uki: erofs image of {size} bytes is not a whole number of {BLOCK}-byte blocks")
    erofs.rename(out)
    blocks = size // BLOCK
    text = run(
        "veritysetup",
        "format",
        str(out),
        str(out),
        f"--hash-offset={size}",
        f"--data-blocks={blocks}",
        f"--salt={VERITY_SALT}",
        f"--uuid={VERITY_UUID}",
        "--hash=sha256",
        f"--data-block-size={BLOCK}",
        f"--hash-block-size={BLOCK}",
    )
    m = re.search(r"^Root hash:\s+([0-9a-f]{64})$", text, re.M)
    if not m:
        sys.exit(f"build_uki: no root hash in veritysetup's output:\n{text}")
    return {"erofs_bytes": size, "data_blocks": blocks, "root_hash": m.group(1), "salt": VERITY_SALT}


ENTRYPOINT_JSON = "usr/local/share/enclave-infer/entrypoint.json"


def entrypoint_sh(tree: Path) -> bytes:
    """The service as the root file system describes it (its OCI entrypoint, cmd, env and user), as an
    sh fragment for /init: util-linux's setpriv (in the root) drops to the service's user, every
    capability and the right to gain privileges, then execs the service as PID 1."""
    spec = json.loads((tree / ENTRYPOINT_JSON).read_text())
    uid, gid = (int(x) for x in spec["user"].split(":"))
    argv = [
        "/usr/bin/setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
        *spec["entrypoint"],
        *spec["cmd"],
    ]
    lines = [
        "# Made by build_uki.py from the root's " + ENTRYPOINT_JSON,
        f"DATA_DIR={shlex.quote(spec['data_dir'])} SERVICE_UID={uid} SERVICE_GID={gid}",
        *(f"export {k}={shlex.quote(v)}" for k, v in sorted(spec["env"].items())),
        "set -- " + " ".join(shlex.quote(a) for a in argv),
    ]
    return ("\n".join(lines) + "\n").encode()


# ---- the initrd -------------------------------------------------------------------------------


def modules(staging: Path, work: Path) -> list[tuple[str, bytes]]:
    """(name, decompressed .ko) for MODULES and their dependencies, dependencies first."""
    kroot = work / "kroot"
    if kroot.exists():
        shutil.rmtree(kroot)
    (kroot / "lib/modules").mkdir(parents=True)
    src = staging / "lib/modules" / KERNEL_VERSION
    shutil.copytree(src, kroot / "lib/modules" / KERNEL_VERSION, symlinks=True)
    run("depmod", "-b", str(kroot), KERNEL_VERSION)
    deps: dict[str, list[str]] = {}
    for line in (kroot / "lib/modules" / KERNEL_VERSION / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {Path(p).name.split(".ko")[0].replace("_", "-"): p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        # modules.dep lists every (indirect) dependency; the last ones are the deepest.
        for d in reversed(deps[path]):
            visit(d)
        order.append(path)

    for name in MODULES:
        visit(by_name[name.replace("_", "-")])
    return [(Path(p).name.removesuffix(".xz"), lzma.decompress((src / p).read_bytes())) for p in order]


def cpio_newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc archive of (path, mode, data, rdev) in path order; owner root, fixed mtime and inodes."""
    out = bytearray()

    def add(ino: int, path: str, mode: int, data: bytes, rdev: int) -> None:
        name = path.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            EPOCH,
            len(data),
            0,
            0,
            os.major(rdev),
            os.minor(rdev),
            len(name),
            0,
        ]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + name)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (path, mode, data, rdev) in enumerate(sorted(entries), start=1):
        add(ino, path, mode, data, rdev)
    add(0, "TRAILER!!!", 0, b"", 0)
    return bytes(out)


def find_lib(staging: Path, name: str) -> Path:
    for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"):
        p = staging / d / name
        if p.exists():
            return p.resolve()
    sys.exit(f"build_uki: {name} is in none of the pinned packages")


def initrd(staging: Path, work: Path, entrypoint: bytes) -> bytes:
    d, f, x = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFREG | 0o755
    entries: list[tuple[str, int, bytes, int]] = [
        (p, d, b"", 0)
        for p in (
            "bin",
            "dev",
            "etc",
            "lib",
            "lib64",
            "lib/modules",
            "lib/x86_64-linux-gnu",
            "newroot",
            "proc",
            "run",
            "sys",
            "tmp",
        )
    ]
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", os.makedev(5, 1)))
    busybox = staging / "bin/busybox"
    entries.append(("bin/busybox", x, busybox.read_bytes(), 0))
    for applet in sorted(set(run(str(busybox), "--list").split()) - {"busybox"}):
        entries.append((f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox", 0))
    entries.append(("bin/dmsetup", x, (staging / "sbin/dmsetup").read_bytes(), 0))
    for lib in LIBS:
        entries.append((f"lib/x86_64-linux-gnu/{lib}", f, find_lib(staging, lib).read_bytes(), 0))
    loader = (staging / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").resolve().read_bytes()
    entries.append(("lib64/ld-linux-x86-64.so.2", x, loader, 0))
    mods = modules(staging, work)
    for name, data in mods:
        entries.append((f"lib/modules/{name}", f, data, 0))
    listing = "".join(f"{n}{' optional' if n in OPTIONAL_MODULES else ''}\n" for n, _ in mods)
    entries.append(("etc/modules", f, listing.encode(), 0))
    entries.append(("etc/entrypoint", f, entrypoint, 0))
    entries.append(("etc/udhcpc.sh", x, (HERE / "udhcpc.sh").read_bytes(), 0))
    entries.append(("init", x, (HERE / "init.sh").read_bytes(), 0))
    return gzip.compress(cpio_newc(entries), compresslevel=9, mtime=0)


# ---- the UKI ----------------------------------------------------------------------------------


def uki(stub: Path, sections: list[tuple[str, Path]], out: Path) -> None:
    """objcopy's way (systemd's documentation): each section after the stub's last, page-aligned.
    .linux goes last."""
    end = 0
    for line in run("objdump", "-h", str(stub)).splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[0].isdigit():
            end = max(end, int(cols[3], 16) + int(cols[2], 16))
    args = []
    for name, path in sections:
        vma = (end + 0xFFF) & ~0xFFF
        args += ["--add-section", f"{name}={path}", "--change-section-vma", f"{name}={vma:#x}"]
        end = vma + path.stat().st_size
    out.unlink(missing_ok=True)
    run("objcopy", *args, str(stub), str(out))
    out.write_bytes(pe_deterministic(out.read_bytes()))


def pe_deterministic(image: bytes) -> bytes:
    """objcopy stamps the PE header with the time of the build: put the stub's 0 back and recompute the
    header checksum (the PE algorithm: 16-bit one's-complement sum of the file, plus its length)."""
    data = bytearray(image)
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe : pe + 4] != b"PE\0\0":
        sys.exit("build_uki: objcopy did not write a PE image")
    struct.pack_into("<I", data, pe + 8, 0)  # COFF TimeDateStamp
    checksum_at = pe + 24 + 64  # OptionalHeader.CheckSum (same offset in PE32 and PE32+)
    struct.pack_into("<I", data, checksum_at, 0)
    padded = bytes(data) + b"\0" * (len(data) % 2)
    total = 0
    for (word,) in struct.iter_unpack("<H", padded):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("<I", data, checksum_at, (total & 0xFFFF) + len(data))
    return bytes(data)


def project_version() -> str:
    m = re.search(r'^version\s*=\s*"([^"]+)"', (HERE.parent.parent / "pyproject.toml").read_text(), re.M)
    return m.group(1) if m else "0"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--rootfs",
        type=Path,
        required=True,
        help="the root file system: a folder, a tarball, or `dev` (busybox httpd only)",
    )
    ap.add_argument("--out", type=Path, default=Path("build/image"), help="the release folder (OUT)")
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path("build/uki-cache"),
        help="the pinned .deb files and the scratch folder (not part of the release)",
    )
    ap.add_argument(
        "--entrypoint",
        type=Path,
        help="sh fragment the initrd sources before switch_root (`set -- COMMAND...`, DATA_DIR, "
        "SERVICE_UID, SERVICE_GID, exports); default: made from the root's " + ENTRYPOINT_JSON,
    )
    ap.add_argument("--cmdline-extra", default="", help="appended to the kernel command line")
    args = ap.parse_args()
    out: Path = args.out / "uki"
    out.mkdir(parents=True, exist_ok=True)
    work: Path = args.cache / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    debs = fetch(args.cache / "deb")
    staging = stage(debs, work)
    tree = rootfs_tree(args.rootfs, work)
    print(f"build_uki: root volume from {args.rootfs}", file=sys.stderr)
    verity = root_volume(tree, out / ROOT_IMG)

    print("build_uki: initrd", file=sys.stderr)
    fragment = args.entrypoint.read_bytes() if args.entrypoint else entrypoint_sh(tree)
    (out / INITRD).write_bytes(initrd(staging, work, fragment))

    cmdline = (
        f"console=ttyS0 roothash={verity['root_hash']} verity.salt={verity['salt']} "
        f"verity.blocks={verity['data_blocks']} panic=-1 {args.cmdline_extra}"
    ).strip()
    (work / "cmdline").write_text(cmdline)
    version = project_version()
    (work / "osrel").write_text(
        f'NAME="enclave-infer"\nID=enclave-infer\nVERSION_ID={version}\n'
        f'PRETTY_NAME="enclave-infer {version} (Debian 12, Linux {KERNEL_VERSION})"\n'
    )
    shutil.copyfile(staging / "boot" / f"vmlinuz-{KERNEL_VERSION}", work / "linux")
    stub = staging / "usr/lib/systemd/boot/efi/linuxx64.efi.stub"
    print("build_uki: UKI", file=sys.stderr)
    sections = [
        (".osrel", work / "osrel"),
        (".cmdline", work / "cmdline"),
        (".initrd", out / INITRD),
        (".linux", work / "linux"),
    ]
    uki(stub, sections, out / UKI)

    sizes = {name: path.stat().st_size for name, path in sections}
    fragment_json = {
        # What image/release.py hashes and copies into release.json (paths relative to OUT).
        "artifacts": [f"uki/{UKI}", f"uki/{ROOT_IMG}", f"uki/{INITRD}"],
        "kernel_cmdline": cmdline,
        "verity_root_hash": verity["root_hash"],
        "uki": {
            "verity": verity,
            "section_bytes": sizes,
            "section_sha256": {name: sha256(path) for name, path in sections},
            "kernel": KERNEL_VERSION,
            "stub": f"systemd-boot-efi {packages()['systemd-boot-efi']}",
            "packages": packages(),
            "package_sha256": {n: sha256(p) for n, p in sorted(debs.items())},
        },
    }
    (args.out / "uki.json").write_text(json.dumps(fragment_json, indent=2, sort_keys=True) + "\n")
    for name in (UKI, INITRD, ROOT_IMG):
        print(
            f"build_uki: {out / name}: {(out / name).stat().st_size} bytes, sha256 {sha256(out / name)}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
