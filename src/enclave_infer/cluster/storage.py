"""A cluster's shared storage: a folder of sealed model files, one per version, never overwritten.

Trusted code (the enclave seals into it and reads it; its hosts only watch which names are there).
A member seals each model it is provisioned with to ``model-vN.sealed`` (:func:`model_file_name`)
under the cluster's sealing key (:data:`CLUSTER_SEALING_PURPOSE`), so that every member can load it;
an upload of a version already there fails, since the file is created exclusively. When asked, a
member loads the newest file above the version it serves and at or above the cluster's floor
(:meth:`ClusterStorage.candidates`); a file that fails verification is never tried again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CLUSTER_SEALING_PURPOSE", "ClusterStorage", "model_file_name", "model_files", "version_of"]

log = logging.getLogger("enclave_infer.enclave")

# The purpose the cluster's sealing key is derived with (enclave/sealing.py's Sealer).
CLUSTER_SEALING_PURPOSE = b"enclave-infer cluster storage v1"
# model-vN.sealed: N a version from 1, without leading zeros, at most 18 digits (below 2**63), so
# that one version has exactly one name.
_MODEL_FILE = re.compile(r"model-v([1-9][0-9]{0,17})\.sealed")


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


def model_files(folder: Path) -> frozenset[str]:
    """The names of the model files in ``folder`` (raises OSError): what a host watches for changes."""
    return frozenset(p.name for p in folder.iterdir() if version_of(p.name) is not None)


class ClusterStorage:
    """The shared folder, as one member sees it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._refused: set[int] = set()  # versions whose file failed verification

    def path(self, version: int) -> Path:
        return self.folder / model_file_name(version)

    def versions(self) -> list[int]:
        """The versions in the folder (raises OSError)."""
        return [v for p in self.folder.iterdir() if (v := version_of(p.name)) is not None]

    def candidates(self, versions: list[int], *, current: int, floor: int) -> Iterator[int]:
        """The versions to try, newest first: those above ``current`` (the served one, 0 for none)
        and at or above ``floor``, and never refused. A version below the floor (a rollback by the
        host?) is refused and not yielded."""
        for version in sorted(versions, reverse=True):
            if version <= current:
                return
            if version in self._refused:
                continue
            if version < floor:
                log.error(
                    "model version %d in the cluster's storage is below the floor %d (a rollback?);"
                    " it is not served",
                    version,
                    floor,
                )
                self.refuse(version)
                continue
            yield version

    def refuse(self, version: int) -> None:
        """Never try ``version``'s file again: it failed verification."""
        self._refused.add(version)

    def refused(self, version: int) -> bool:
        return version in self._refused
