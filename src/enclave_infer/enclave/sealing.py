"""Sealed storage: AES-256-GCM under a key derived from the platform's sealing key.

Trusted code. A sealed blob is ``"EISEAL1" || nonce (12) || ciphertext+tag``; the additional data
names what the blob is, so the host cannot pass one sealed file off as another. Files are written
to a temporary name, fsynced and renamed, so a crash never leaves a half-written blob in place.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave_infer.errors import DecryptionError, ProtocolError

__all__ = ["Sealer"]

MAGIC = b"EISEAL1"
NONCE_BYTES = 12


class Sealer:
    def __init__(self, platform_key: bytes, purpose: bytes = b"enclave-infer sealed storage v1") -> None:
        self._aead = AESGCM(
            HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(platform_key)
        )

    def __repr__(self) -> str:
        return "Sealer(<key hidden>)"

    def seal(self, plaintext: bytes, label: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, plaintext, label)

    def unseal(self, blob: bytes, label: bytes) -> bytes:
        if len(blob) < len(MAGIC) + NONCE_BYTES + 16 or not blob.startswith(MAGIC):
            raise ProtocolError("not a sealed blob")
        nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], label)
        except InvalidTag:
            raise DecryptionError() from None

    def write(self, path: Path, parts: Sequence[tuple[bytes, bytes]]) -> None:
        """Seal each (plaintext, label) part on its own, so that a large part is never copied
        into a concatenation first; the file is ``u64 length || sealed blob`` per part."""
        tmp = path.with_name(path.name + ".partial")
        try:
            with open(tmp, "wb") as f:
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
