"""Sealed storage: AES-256-GCM under a key derived from the platform's sealing key.

Trusted code. A sealed blob is ``"EISEAL1" || nonce (12) || ciphertext+tag``; the additional data
names what the blob is, so the host cannot pass one sealed file off as another. Files are written
to a temporary name, fsynced and renamed, so a crash never leaves a half-written blob in place.
"""

from __future__ import annotations

import os
import secrets
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

    def write(self, path: Path, plaintext: bytes, label: bytes) -> None:
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "wb") as f:
            f.write(self.seal(plaintext, label))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def read(self, path: Path, label: bytes) -> bytes:
        return self.unseal(path.read_bytes(), label)
