"""Sealed storage: AES-256-GCM under a key derived from the platform's sealing key.

Trusted code. A sealed blob is ``"EISEAL1" || nonce (12) || ciphertext+tag``; the additional data
names what the blob is, so the host cannot pass one sealed file off as another. Files are written
to a temporary name, fsynced and renamed, so a crash never leaves a half-written blob in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave_infer.errors import DecryptionError, ProtocolError

__all__ = ["Sealer"]

MAGIC = b"EISEAL1"
GCM_NONCE_BYTES = 12  # AES-GCM's nonce (NIST SP 800-38D), not an attestation nonce


class Sealer:
    def __init__(self, platform_key: bytes, purpose: bytes = b"enclave-infer sealed storage v1") -> None:
        self._aead = AESGCM(
            HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(platform_key)
        )

    def __repr__(self) -> str:
        return "Sealer(<key hidden>)"

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM under the sealing key with a caller-built nonce (the stream construction)."""
        return self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Raises :class:`DecryptionError` (no detail) when the tag does not verify."""
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise DecryptionError() from None

    def seal(self, plaintext: bytes, label: bytes) -> bytes:
        nonce = secrets.token_bytes(GCM_NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, plaintext, label)

    def unseal(self, blob: bytes, label: bytes) -> bytes:
        if len(blob) < len(MAGIC) + GCM_NONCE_BYTES + 16 or not blob.startswith(MAGIC):
            raise ProtocolError("not a sealed blob")
        nonce = blob[len(MAGIC) : len(MAGIC) + GCM_NONCE_BYTES]
        return self.decrypt(nonce, blob[len(MAGIC) + GCM_NONCE_BYTES :], label)

    def write(self, path: Path, parts: Sequence[tuple[bytes, bytes]]) -> None:
        """Seal each (plaintext, label) part on its own, so that a large part is never copied
        into a concatenation first; the file is ``u64 length || sealed blob`` per part."""
        tmp = path.with_name(path.name + ".partial")
        try:
            with _create_private(tmp) as f:
                for plaintext, label in parts:
                    blob = self.seal(plaintext, label)
                    f.write(struct.pack("!Q", len(blob)))
                    f.write(blob)
                    del blob
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def read(self, path: Path, labels: Sequence[bytes]) -> list[bytes]:
        """Unseal the parts written by :meth:`write`, in order, each under its label."""
        out: list[bytes] = []
        with open(path, "rb") as f:
            remaining = os.fstat(f.fileno()).st_size
            for label in labels:
                header = f.read(8)
                if len(header) != 8:
                    raise ProtocolError("sealed file is truncated")
                (length,) = struct.unpack("!Q", header)
                remaining -= 8
                if length > remaining:  # the host wrote this length: never trust it for an allocation
                    raise ProtocolError("sealed file is truncated")
                remaining -= length
                blob = f.read(length)
                if len(blob) != length:
                    raise ProtocolError("sealed file is truncated")
                out.append(self.unseal(blob, label))
            if f.read(1):
                raise ProtocolError("sealed file has trailing data")
        return out


def _create_private(path: Path) -> BinaryIO:
    """A new file only its owner can read (0600): sealed data is ciphertext, but the host's other
    users have no business copying it for an offline attack or a later rollback."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


# -- streams ---------------------------------------------------------------------------------------
#
# A large blob (a model) is sealed as it arrives, in chunks, with the STREAM construction (Hoang,
# Reyhanitabar, Rogaway, Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-
# Resistance", CRYPTO 2015): each chunk is AES-GCM-sealed under nonce = prefix (7 random bytes) ||
# counter (4 bytes) || last flag (1 byte), so chunks cannot be reordered, dropped, duplicated or
# cut off at a chunk boundary without detection. File layout:
#
#     "EISTRM1" || u64 length || sealed header blob || prefix (7)
#     || { u32 length || sealed chunk }*            (the last one has the last flag set)
#
# Each chunk's additional data is the label and the SHA-256 of the sealed header blob, so the
# chunks of one file cannot be spliced behind the header of another.

STREAM_MAGIC = b"EISTRM1"
# A header is a signed manifest (at most 8 MiB, protocol/manifest.py) and its signature, sealed.
MAX_HEADER_BYTES = 16 * 1024 * 1024
STREAM_CHUNK_BYTES = 1024 * 1024
_PREFIX_BYTES = 7
_MAX_CHUNKS = 2**32 - 1


class SealedStreamWriter:
    """Seal ``header`` and then every ``write()`` into ``path``; nothing is in place until
    :meth:`commit`, and :meth:`abort` (or an exception inside ``with``) leaves no file behind.
    ``exclusive``: commit never replaces a file already at ``path`` (FileExistsError instead; then
    :meth:`replace` may)."""

    def __init__(
        self, sealer: Sealer, path: Path, header: bytes, label: bytes, *, exclusive: bool = False
    ) -> None:
        self._sealer, self._path = sealer, path
        self._exclusive = exclusive
        # unique, so that two uploads racing each other never write one file
        self._tmp = path.with_name(f"{path.name}.{secrets.token_hex(8)}.partial")
        self._file = _create_private(self._tmp)  # closed by commit/abort
        self._prefix = secrets.token_bytes(_PREFIX_BYTES)
        self._counter = 0
        self._whole = False
        self._pending = bytearray()
        blob = sealer.seal(header, label + b" header")
        # chunks are bound to this header: another file's chunks cannot be spliced behind it
        self._aad = label + hashlib.sha256(blob).digest()
        self._file.write(STREAM_MAGIC + struct.pack("!Q", len(blob)) + blob + self._prefix)

    @property
    def path(self) -> Path:
        return self._path

    def __enter__(self) -> SealedStreamWriter:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is not None:
            self.abort()

    def write(self, data: bytes | memoryview) -> None:
        self._pending += data
        while len(self._pending) > STREAM_CHUNK_BYTES:  # keep the last bytes: they may be final
            self._emit(bytes(self._pending[:STREAM_CHUNK_BYTES]), last=False)
            del self._pending[:STREAM_CHUNK_BYTES]

    def commit(self) -> None:
        self._emit(bytes(self._pending), last=True)
        self._pending.clear()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._whole = True  # the last chunk is written: the file is complete
        if self._exclusive:
            os.link(self._tmp, self._path)  # atomic, and refuses to replace
            self._tmp.unlink()
        else:
            os.replace(self._tmp, self._path)

    def replace(self) -> None:
        """After an exclusive :meth:`commit` raised FileExistsError: put the file in place of the
        one at ``path``, in one rename (readers see the old file or the new one, never a part)."""
        if not self._whole:
            raise ValueError("replace() follows a commit() that found a file in place")
        os.replace(self._tmp, self._path)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def _emit(self, chunk: bytes, *, last: bool) -> None:
        if self._counter >= _MAX_CHUNKS:
            raise ProtocolError("stream too long to seal")
        nonce = self._prefix + struct.pack("!IB", self._counter, 1 if last else 0)
        sealed = self._sealer.encrypt(nonce, chunk, self._aad)
        self._file.write(struct.pack("!I", len(sealed)) + sealed)
        self._counter += 1


def iter_sealed_stream(
    sealer: Sealer, source: Path | BinaryIO, label: bytes, *, max_bytes: int
) -> Iterator[bytes]:
    """The header, then the body's chunks, of a file :class:`SealedStreamWriter` committed, each
    authenticated before it is yielded. Raises on any tampering, truncation or extension, and refuses
    bodies over ``max_bytes`` before holding them; a body is complete only once the iteration ends
    without raising (the last chunk carries the last flag). ``source``: a path, or a file open at its
    start (the caller's to close)."""
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(source, "rb")) if isinstance(source, Path) else source
        size = os.fstat(f.fileno()).st_size
        start = f.read(len(STREAM_MAGIC) + 8)
        if len(start) != len(STREAM_MAGIC) + 8 or not start.startswith(STREAM_MAGIC):
            raise ProtocolError("not a sealed stream")
        (header_len,) = struct.unpack("!Q", start[len(STREAM_MAGIC) :])
        if header_len > MAX_HEADER_BYTES:  # read before it is authenticated: bounded first
            raise ProtocolError("sealed stream header too large")
        if header_len > size:
            raise ProtocolError("sealed stream is truncated")
        header_blob = f.read(header_len)
        header = sealer.unseal(header_blob, label + b" header")
        aad = label + hashlib.sha256(header_blob).digest()
        prefix = f.read(_PREFIX_BYTES)
        if len(prefix) != _PREFIX_BYTES:
            raise ProtocolError("sealed stream is truncated")
        yield header
        total, counter = 0, 0
        while True:
            length_bytes = f.read(4)
            if len(length_bytes) != 4:
                raise ProtocolError("sealed stream is truncated")  # no chunk carried the last flag
            (length,) = struct.unpack("!I", length_bytes)
            if length > STREAM_CHUNK_BYTES + 16:
                raise ProtocolError("sealed stream chunk too large")
            sealed = f.read(length)
            last = f.tell() == size
            nonce = prefix + struct.pack("!IB", counter, 1 if last else 0)
            chunk = sealer.decrypt(nonce, sealed, aad)
            total += len(chunk)
            if total > max_bytes:
                raise ProtocolError(f"sealed stream larger than {max_bytes} bytes")
            yield chunk
            counter += 1
            if last:
                return
