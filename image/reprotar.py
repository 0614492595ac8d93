"""Deterministic tar and gzip for the image: the same tree gives the same bytes, on any machine.

Entries sorted by name (bytes), paths relative without "./", numeric owners only (no user or group
names), modification times clamped to SOURCE_DATE_EPOCH, hard links kept as links, PAX format.
Device nodes, sockets and FIFOs are refused: the runtime makes /dev, the image carries none.
gzip: no file name, mtime 0, level 6 (zlib's output for a level is stable across zlib 1.2/1.3 builds
of Debian and CPython; a different zlib could in principle compress differently, which changes the
layer's digest but not its diff_id, the digest of the uncompressed tar).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import BinaryIO

GZIP_LEVEL = 6


def walk(root: Path) -> Iterator[tuple[str, Path]]:
    """(archive name, path) for every entry under ROOT, parents before children, sorted by bytes."""

    def visit(folder: Path, prefix: str) -> Iterator[tuple[str, Path]]:
        for name in sorted(os.listdir(folder), key=os.fsencode):
            path = folder / name
            arcname = prefix + name
            yield arcname, path
            if path.is_dir() and not path.is_symlink():
                yield from visit(path, arcname + "/")

    yield from visit(root, "")


def clamp_mtimes(root: Path, epoch: int) -> None:
    """Set every mtime (and atime) under ROOT, ROOT included, to at most EPOCH; children first so
    that a directory's own time is not moved again by the change of a child."""
    entries = [path for _, path in walk(root)]
    for path in [*reversed(entries), root]:
        st = path.lstat()
        mtime = min(int(st.st_mtime), epoch)
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def write_tar(root: Path, out: BinaryIO, epoch: int, only: AbstractSet[str] | None = None) -> None:
    """The tree under ROOT as a tar stream on OUT; with ONLY, just the entries it names (a layer)."""
    seen: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for arcname, path in walk(root):
            if only is not None and arcname not in only:
                continue
            st = path.lstat()
            info = tarfile.TarInfo(arcname)
            info.uid, info.gid, info.uname, info.gname = st.st_uid, st.st_gid, "", ""
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = min(int(st.st_mtime), epoch)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    info.type, info.linkname = tarfile.LNKTYPE, seen[key]
                    tar.addfile(info)
                    continue
                seen[key] = arcname
                info.size = st.st_size
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                raise ValueError(f"{path}: not a file, folder or symbolic link (mode {st.st_mode:o})")


def write_tar_file(root: Path, target: Path, epoch: int, only: AbstractSet[str] | None = None) -> None:
    with target.open("wb") as out:
        write_tar(root, out, epoch, only)


def gzip_file(source: Path, target: Path) -> None:
    """SOURCE gzipped to TARGET with no name and mtime 0 in the header."""
    with (
        source.open("rb") as src,
        target.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL) as gz,
    ):
        while chunk := src.read(1 << 20):
            gz.write(chunk)


def sha256(path: Path) -> str:
    """The SHA-256 of a file, hex: how every script here names an artifact."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
