"""A cluster's shared storage: a folder of sealed model files, one per version.

Trusted code (the enclave seals into it and reads it; its hosts watch it for changes). A member seals
each model it is provisioned with to ``model-vN.sealed`` (:func:`model_file_name`) under the
cluster's sealing key (:data:`CLUSTER_SEALING_PURPOSE`), so that every member can load it.

The host controls everything in the folder, so a name proves nothing:

- One version, one model: an upload of a version whose file opens under the cluster's key (a whole
  sealed stream of that version: a model a member sealed) is refused, since the file is created
  exclusively. A file under that name that does not open (the host's bytes, a copy cut short,
  another cluster's file) is no model of the cluster's, and the upload replaces it by a rename
  (:meth:`enclave_infer.enclave.models.ModelStore.begin`).
- When asked, a member loads the newest file above the version it serves and at or above the
  cluster's floor (:meth:`ClusterStorage.candidates`). A file that fails is remembered by its
  :class:`FileState` (size, modification time and a hash of its first bytes) and tried again only
  once that changes (:meth:`ClusterStorage.open`): each state of a file costs a member one attempt
  and one log line, however often its host asks it to reload, and a file replaced under the same
  name is loaded without a restart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "CLUSTER_SEALING_PURPOSE",
    "ClusterStorage",
    "FileState",
    "model_file_name",
    "model_files",
    "open_regular",
    "version_of",
]

log = logging.getLogger("enclave_infer.enclave")

# The purpose the cluster's sealing key is derived with (enclave/sealing.py's Sealer).
CLUSTER_SEALING_PURPOSE = b"enclave-infer cluster storage v1"
# model-vN.sealed: N a version from 1, without leading zeros, at most 18 digits (below 2**63), so
# that one version has exactly one name.
_MODEL_FILE = re.compile(r"model-v([1-9][0-9]{0,17})\.sealed")
# How much of a file's beginning its FileState hashes: a sealed stream (enclave/sealing.py) starts with
# its header blob, whose random AES-GCM nonce lies at bytes 22 to 33, so any two sealings differ in
# their first 34 bytes; one page holds that, at the cost of one read.
HEAD_BYTES = 4096


def model_file_name(version: int) -> str:
    """The name of the file that holds ``version`` in a cluster's storage."""
    name = f"model-v{version}.sealed"
    if _MODEL_FILE.fullmatch(name) is None:
        raise ValueError(f"no model file name for version {version}")
    return name


def version_of(name: str) -> int | None:
    """The version a file of the storage holds by its name, or None: not a model file."""
    match = _MODEL_FILE.fullmatch(name)
    return int(match[1]) if match else None


def model_files(folder: Path) -> frozenset[tuple[str, int, int]]:
    """The model files in ``folder``, each as (name, size, modification time in ns) (raises
    OSError): what a host watches for changes, a file replaced under the same name included."""
    files = set()
    for path in folder.iterdir():
        if version_of(path.name) is None:
            continue
        try:
            st = path.stat()
        except FileNotFoundError:  # removed meanwhile
            continue
        files.add((path.name, st.st_size, st.st_mtime_ns))
    return frozenset(files)


@dataclass(frozen=True)
class FileState:
    """What tells one content of a file from another without reading it whole: its size, its
    modification time and the SHA-256 of its first :data:`HEAD_BYTES` (of no bytes: not a regular
    file). Not its inode, which some network and FUSE file systems do not keep stable: a member
    would read a failing file again at every reload."""

    size: int
    mtime_ns: int
    head: bytes


def open_regular(path: Path) -> BinaryIO | None:
    """``path`` open for reading, or None if it is not a regular file (a FIFO the host put there
    would block a plain open, and a read). Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


class ClusterStorage:
    """The shared folder, as one member sees it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._failed: dict[int, FileState] = {}  # the state in which each version's file failed
        self._below_floor: set[int] = set()  # versions refused for good: the floor only rises

    def path(self, version: int) -> Path:
        return self.folder / model_file_name(version)

    def versions(self) -> list[int]:
        """The versions in the folder (raises OSError)."""
        return [v for p in self.folder.iterdir() if (v := version_of(p.name)) is not None]

    def candidates(self, versions: list[int], *, current: int, floor: int) -> Iterator[int]:
        """The versions to try, newest first: those above ``current`` (the served one, 0 for none)
        and at or above ``floor``. A version below the floor (a rollback by the host?) is refused,
        with one log line, and not yielded. Forgets the failures of files no longer listed."""
        listed = set(versions)
        self._failed = {v: state for v, state in self._failed.items() if v in listed}
        self._below_floor &= listed
        for version in sorted(listed, reverse=True):
            if version <= current:
                return
            if version < floor:
                if version not in self._below_floor:
                    self._below_floor.add(version)
                    log.error(
                        "model version %d in the cluster's storage is below the floor %d (a rollback?);"
                        " it is not served",
                        version,
                        floor,
                    )
                continue
            yield version

    def open(self, version: int) -> tuple[BinaryIO, FileState] | None:
        """``version``'s file, open at its start, and its state; None if it failed in this very
        state before (or is not a regular file: one log line, then None until it changes). Raises
        OSError: a fault of the storage, or a file removed meanwhile, tried again at every reload."""
        path = self.path(version)
        file = open_regular(path)
        if file is None:
            st = os.stat(path)
            state = FileState(st.st_size, st.st_mtime_ns, b"")
            if self._failed.get(version) != state:
                self._failed[version] = state
                log.error("%s in the cluster's storage is not a regular file; it is not served", path.name)
            return None
        try:
            st = os.fstat(file.fileno())
            state = FileState(st.st_size, st.st_mtime_ns, hashlib.sha256(file.read(HEAD_BYTES)).digest())
            file.seek(0)
        except BaseException:
            file.close()
            raise
        if self._failed.get(version) == state:
            file.close()
            return None
        return file, state

    def failed(self, version: int, state: FileState) -> None:
        """``version``'s file failed to open in ``state``: not tried again until it changes."""
        self._failed[version] = state
