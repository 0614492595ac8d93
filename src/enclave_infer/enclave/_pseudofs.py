"""Small, careful I/O on kernel and Gramine pseudo-files, shared by :mod:`.gramine` and :mod:`.tsm`.

Trusted code: runs on the enclave's side of the trust boundary. Gramine's ``/dev/attestation`` and
the kernel's configfs-tsm attributes are not ordinary files: a write is committed only when the
file is closed (so a failing ``close()`` is a failed write), and reads are bounded because the
other side decides how much there is. Errors must become one-line AttestationErrors naming the
path and the errno; the wording is each caller's, so the callers keep their own OSError mappers
and phrases:

* :func:`write_exact` maps OSErrors itself, through the caller's mapper, because the phrase
  depends on whether opening, writing or committing failed;
* the readers raise OSError as it is, for the caller to say what a missing or unreadable file
  means there, and :class:`AttestationError` only when there is too much to read.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path

from enclave_infer.errors import AttestationError

__all__ = ["OsErrorMapper", "errno_name", "read_all", "read_once", "read_text", "write_exact"]

OsErrorMapper = Callable[[OSError, Path, str], AttestationError]
"""A caller's wording of an OSError: ``(exc, path, doing)``, e.g. doing = ``"writing"``."""


def errno_name(exc: OSError) -> str:
    """The symbolic errno of ``exc`` (``"EIO"``), or ``"error"`` when it has none."""
    return errno.errorcode.get(exc.errno or 0, "error")


def write_exact(
    path: Path,
    data: bytes,
    *,
    os_error: OsErrorMapper,
    opening: str,
    writing: str,
    committing: str,
    missing: str | None = None,
) -> None:
    """Write all of ``data`` to an existing pseudo-file, and commit it by closing the file.

    ``opening``, ``writing`` and ``committing`` are the phrases handed to ``os_error`` for a
    failure at each step; ``missing``, if given, is the whole message when the file does not exist
    (otherwise that too goes to ``os_error``).
    """
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError as exc:
        if missing is not None:
            raise AttestationError(missing) from None
        raise os_error(exc, path, opening) from None
    except OSError as exc:
        raise os_error(exc, path, opening) from None
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            if n <= 0:
                raise AttestationError(f"{path}: short write ({len(data) - len(view)} of {len(data)} bytes)")
            view = view[n:]
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.close(fd)
        if isinstance(exc, OSError):
            raise os_error(exc, path, writing) from None
        raise
    try:
        os.close(fd)  # the close is what commits the data
    except OSError as exc:
        raise os_error(exc, path, committing) from None


def read_once(path: Path, limit: int) -> bytes:
    """One unbuffered read of at most ``limit`` bytes: what a small attribute or key holds.

    Raises OSError as it is.
    """
    with path.open("rb", buffering=0) as f:
        return f.read(limit)


def read_text(path: Path, limit: int) -> str:
    """A small text attribute (:func:`read_once`), as ASCII without surrounding whitespace.

    Raises OSError as it is.
    """
    return read_once(path, limit).decode("ascii", errors="replace").strip()


def read_all(path: Path, *, limit: int, chunk: int | None = None, too_large: str = "larger than") -> bytes:
    """Everything in a binary pseudo-file, read in chunks of at most ``chunk`` bytes (default: as
    much as ``limit`` still allows); :class:`AttestationError` ``"{path}: {too_large} {limit}
    bytes"`` if there is more than ``limit``.

    Raises OSError as it is.
    """
    step = limit + 1 if chunk is None else chunk
    with path.open("rb", buffering=0) as f:
        chunks: list[bytes] = []
        size = 0
        while data := f.read(min(step, limit + 1 - size)):
            chunks.append(data)
            size += len(data)
            if size > limit:
                raise AttestationError(f"{path}: {too_large} {limit} bytes")
    return b"".join(chunks)
