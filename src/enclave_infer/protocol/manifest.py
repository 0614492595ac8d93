"""The model owner's signed manifest: which model, which labels, which preprocessing, which version.

Pure logic on bytes, used by the owner's tooling (to sign) and by the enclave (to verify). The
manifest is canonical JSON (sorted keys, no white space); the signature is Ed25519 (RFC 8032) over
``"enclave-infer model manifest v2" || 0x00 || manifest``. In ``PUT /v1/model`` both travel as
RFC 8941 byte-sequence header values (``manifest``, ``manifest-signature``) and the body is the model
files, back to back in the manifest's order, each named by format, SHA-256 and size. A model's
identity (``sha256`` in answers and ``--model-sha256``) is the SHA-256 of the canonical manifest:
it pins every file, the labels, the preprocessing and the version at once.
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclave_infer.errors import ProtocolError

if TYPE_CHECKING:
    from enclave_infer.protocol.api import Runtime

__all__ = ["BadSignature", "Manifest", "ModelFile", "ModelFormat", "parse_sf_binary", "sf_binary"]

MANIFEST_TYPE = "enclave-infer model manifest v2"
SIGNATURE_CONTEXT = MANIFEST_TYPE.encode() + b"\x00"
# 1000 ImageNet labels are ~21 KB; 100k labels of 64 bytes bound the manifest at a few MB.
MAX_LABELS = 100_000
MAX_LABEL_CHARS = 256
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BadSignature(ProtocolError):
    """The manifest's signature does not verify under the owner key (a malformed manifest raises
    plain :class:`ProtocolError`)."""


class ModelFormat(enum.StrEnum):
    """A model file's format, as a manifest names it, each served by one :attr:`runtime`: ONNX (by
    ONNX Runtime) and TorchScript archives (by PyTorch, where the enclave has it); never pickles,
    and never torch.export programs, whose loader runs code from the file."""

    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"

    @property
    def runtime(self) -> Runtime:
        """The :class:`~enclave_infer.protocol.api.Runtime` that serves a file of this format."""
        from enclave_infer.protocol.api import Runtime  # api imports this module: not at its top

        return Runtime.ONNX if self is ModelFormat.ONNX else Runtime.TORCH

    @classmethod
    def serving(cls, runtime: Runtime) -> ModelFormat:
        """The format of the file ``runtime`` (ONNX or TORCH) serves; ValueError for the others."""
        for fmt in cls:
            if fmt.runtime is runtime:
                return fmt
        raise ValueError(f"the {runtime} runtime serves no one format")

    @classmethod
    def parse(cls, text: str) -> ModelFormat:
        try:
            return cls(text)
        except ValueError:
            raise ProtocolError(f"manifest: a file's format must be one of {', '.join(cls)}") from None


@dataclass(frozen=True)
class ModelFile:
    format: ModelFormat
    sha256: str
    size: int

    def __post_init__(self) -> None:
        if not _HEX64.fullmatch(self.sha256):
            raise ProtocolError("manifest: a file's sha256 must be 64 lowercase hex digits")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size <= 0:
            raise ProtocolError("manifest: a file's size must be a positive integer")
        object.__setattr__(self, "format", ModelFormat.parse(self.format))


@dataclass(frozen=True)
class Manifest:
    files: tuple[ModelFile, ...]
    labels: tuple[str, ...]
    preprocessing: dict[str, Any]
    version: int

    @functools.cached_property
    def model_sha256(self) -> str:
        """The model's identity: SHA-256 of the canonical manifest, which names every file by hash,
        the labels, the preprocessing and the version. What answers report and clients pin."""
        return hashlib.sha256(self.encode()).hexdigest()

    @property
    def model_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def formats(self) -> tuple[ModelFormat, ...]:
        return tuple(f.format for f in self.files)

    def __post_init__(self) -> None:
        if not self.files or len({f.format for f in self.files}) != len(self.files):
            raise ProtocolError("manifest: files must name one file per format, at least one")
        if not self.labels or len(self.labels) > MAX_LABELS:
            raise ProtocolError(f"manifest: labels must list 1 to {MAX_LABELS} names")
        for label in self.labels:
            if (
                not isinstance(label, str)
                or not label.strip()
                or len(label) > MAX_LABEL_CHARS
                or "\n" in label
            ):
                raise ProtocolError("manifest: every label must be a non-empty single line")
        if not isinstance(self.preprocessing, dict):
            raise ProtocolError("manifest: preprocessing must be an object")
        if (
            not isinstance(self.version, int)
            or isinstance(self.version, bool)
            or not 1 <= self.version < 2**63
        ):
            raise ProtocolError("manifest: version must be a positive integer")

    def encode(self) -> bytes:
        doc = {
            "type": MANIFEST_TYPE,
            "files": [{"format": f.format, "sha256": f.sha256, "size": f.size} for f in self.files],
            "labels": list(self.labels),
            "preprocessing": self.preprocessing,
            "version": self.version,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        if len(data) > MAX_MANIFEST_BYTES:
            raise ProtocolError("manifest too large")
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("type") != MANIFEST_TYPE:
                raise ProtocolError(f"not an {MANIFEST_TYPE}")
            if set(doc) != {"type", "files", "labels", "preprocessing", "version"}:
                raise ProtocolError("manifest: unexpected or missing fields")
            files = doc["files"]
            if not isinstance(files, list) or not all(
                isinstance(f, dict) and set(f) == {"format", "sha256", "size"} for f in files
            ):
                raise ProtocolError("manifest: each file must have format, sha256 and size")
            if not isinstance(doc["labels"], list):
                raise ProtocolError("manifest: labels must be a list")
            manifest = cls(
                files=tuple(ModelFile(f["format"], f["sha256"], f["size"]) for f in files),
                labels=tuple(doc["labels"]),
                preprocessing=doc["preprocessing"],
                version=doc["version"],
            )
            # json.loads takes lone surrogates, as a \ud800 escape or as its UTF-8-like bytes (it
            # decodes with "surrogatepass"); nothing can encode them again, model_sha256 included.
            manifest.encode()
            return manifest
        except UnicodeEncodeError:
            raise ProtocolError("manifest holds a lone surrogate, which is not text") from None
        except (ValueError, UnicodeDecodeError, TypeError, RecursionError):
            raise ProtocolError("manifest is not valid JSON") from None

    def sign(self, key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
        """Return (manifest bytes, signature)."""
        data = self.encode()
        return data, key.sign(SIGNATURE_CONTEXT + data)

    @classmethod
    def verify(cls, data: bytes, signature: bytes, owner_public_key: bytes) -> Manifest:
        """Check the owner's signature (:class:`BadSignature`), then parse (:class:`ProtocolError`)."""
        try:
            Ed25519PublicKey.from_public_bytes(owner_public_key).verify(signature, SIGNATURE_CONTEXT + data)
        except (InvalidSignature, ValueError):
            raise BadSignature("manifest signature does not verify under the enclave's owner key") from None
        return cls.decode(data)


def sf_binary(data: bytes) -> str:
    """An RFC 8941 §3.3.5 Byte Sequence: ``:base64:``."""
    return ":" + base64.b64encode(data).decode() + ":"


def parse_sf_binary(value: str) -> bytes:
    if len(value) < 2 or value[0] != ":" or value[-1] != ":":
        raise ProtocolError("expected an RFC 8941 byte sequence (:base64:)")
    try:
        return base64.b64decode(value[1:-1], validate=True)
    except ValueError:
        raise ProtocolError("invalid base64 in byte sequence") from None
