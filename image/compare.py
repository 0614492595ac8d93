"""Compare two image builds: every artifact's SHA-256, and where two differ, the first differing file.

    python image/compare.py build/image-a build/image-b [--ignore rootfs]

Walks both folders (sorted), compares the regular files' SHA-256, and for each differing tar (plain
or gzip) names its first differing member, so that a difference in the 300 MB layer points at the
file inside it. Exit status 0 when every file matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
import tarfile
from pathlib import Path

from reprotar import sha256

# The unpacked trees are compared through rootfs.tar and ray-layer.tar, which carry them with their
# metadata; logs/ and run/ (image/run_oci.py's folder) are not artifacts.
DEFAULT_IGNORE = ("rootfs", "rootfs-ray", "logs", "run")


def files(root: Path, ignore: tuple[str, ...]) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in ignore or not path.is_file() or path.is_symlink():
            continue
        found[str(rel)] = path
    return found


def members(path: Path) -> dict[str, tuple[object, ...]]:
    """Name -> (type, mode, uid, gid, mtime, size, link, content digest) of a tar's members."""
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    out: dict[str, tuple[object, ...]] = {}
    with opener(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for m in tar:
            digest = ""
            if m.isfile():
                f = tar.extractfile(m)
                digest = hashlib.sha256(f.read()).hexdigest() if f else ""
            out[m.name] = (m.type, m.mode, m.uid, m.gid, m.mtime, m.size, m.linkname, digest)
    return out


def first_member_difference(a: Path, b: Path) -> str:
    try:
        ma, mb = members(a), members(b)
    except (tarfile.TarError, OSError, EOFError):
        return ""
    for name in sorted(set(ma) | set(mb)):
        if ma.get(name) != mb.get(name):
            return f"first differing member: {name}: {ma.get(name)} != {mb.get(name)}"
    if list(ma) != list(mb):
        return "same members, different order"
    return "same members and contents: the difference is in the tar headers or the compression"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument(
        "--ignore", action="append", default=list(DEFAULT_IGNORE), help="top-level name to skip"
    )
    args = parser.parse_args()
    fa, fb = files(args.a, tuple(args.ignore)), files(args.b, tuple(args.ignore))
    differing = 0
    first = ""
    for name in sorted(set(fa) | set(fb)):
        if name not in fa or name not in fb:
            print(f"only in {args.a if name in fa else args.b}: {name}")
            differing += 1
            first = first or name
            continue
        da, db = sha256(fa[name]), sha256(fb[name])
        if da == db:
            print(f"same       {da}  {name}")
            continue
        differing += 1
        first = first or name
        print(f"DIFFERENT  {da} != {db}  {name}")
        if name.endswith((".tar", ".tar.gz")) or "blobs/sha256/" in name:
            detail = first_member_difference(fa[name], fb[name])
            if detail:
                print(f"           {detail}")
    print(f"compare: {len(set(fa) | set(fb)) - differing} files identical, {differing} differ")
    if first:
        print(f"compare: first differing file: {first}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
