"""The model being served: provisioning, sealing, restoring and inference.

Trusted code. A provision is accepted only if, in order: the manifest's signature verifies under the
owner key of the measured configuration; its version exceeds the current one; the model bytes have
the size and SHA-256 the manifest names; the preprocessing is valid; ONNX Runtime loads the model and
a trial run yields one score per label; and the model is sealed to storage. Only then does the new
model replace the old one, in one assignment. Any failure leaves the served model untouched.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.preprocess import ImageError, Preprocessing, decode_image, to_tensor
from enclave_infer.enclave.runtimes import (
    InferenceError,
    Runtime,
    RuntimeLoadError,
    check_scores,
    load_onnx,
    load_torch,
    torch_available,
)
from enclave_infer.enclave.sealing import SealedStreamWriter, Sealer, read_sealed_stream
from enclave_infer.errors import EnclaveInferError, ProtocolError, UsageError
from enclave_infer.protocol.manifest import Manifest

__all__ = ["LoadedModel", "ModelError", "ModelStore"]

log = logging.getLogger("enclave_infer.enclave")

SEALED_MODEL = "model.sealed"
SEAL_LABEL = b"enclave-infer sealed model v2"


class ModelError(EnclaveInferError):
    """A request about the model cannot be honoured; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class LoadedModel:
    manifest: Manifest
    signature: bytes
    preprocessing: Preprocessing
    runtimes: dict[str, Runtime]  # "onnx", "torch": the first is the default
    provisioned_at: float

    def metadata(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "sha256": m.model_sha256,
            "files": [{"format": f.format, "sha256": f.sha256, "size": f.size} for f in m.files],
            "version": m.version,
            "size": m.model_size,
            "formats": list(m.formats),
            "runtimes": list(self.runtimes),
            "labels": len(m.labels),
            "preprocessing": self.preprocessing.to_json(),
            "provisioned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.provisioned_at)),
        }


class Upload:
    """One model arriving in pieces: hashed, size-checked and sealed as it streams."""

    def __init__(
        self, store: ModelStore, manifest: Manifest, manifest_bytes: bytes, signature: bytes
    ) -> None:
        self._store, self.manifest, self._signature = store, manifest, signature
        self._hashes = [hashlib.sha256() for _ in manifest.files]
        self._ends = list(itertools.accumulate(f.size for f in manifest.files))
        self._chunks: list[bytes] = []
        self.received = 0
        self._writer: SealedStreamWriter | None = None
        if store._sealer is not None:
            store._storage.mkdir(parents=True, exist_ok=True)
            self._writer = SealedStreamWriter(
                store._sealer, store._storage / SEALED_MODEL, _pack(manifest_bytes, signature), SEAL_LABEL
            )

    def write(self, data: bytes) -> None:
        start = self.received
        self.received += len(data)
        if self.received > self.manifest.model_size:
            raise ModelError(400, "more model bytes than the manifest's size")
        view = memoryview(data)
        for i, end in enumerate(self._ends):  # the files come back to back: hash each one's part
            begin = self._ends[i - 1] if i else 0
            lo, hi = max(start, begin), min(self.received, end)
            if lo < hi:
                self._hashes[i].update(view[lo - start : hi - start])
        self._chunks.append(data)
        if self._writer is not None:
            self._writer.write(data)

    def finish(self) -> LoadedModel:
        """Verify size and hash, load, commit the sealed file, then swap: all or nothing."""
        m = self.manifest
        hashes = (h.hexdigest() for h in self._hashes)
        if self.received != m.model_size or any(h != f.sha256 for h, f in zip(hashes, m.files, strict=True)):
            raise ModelError(400, "model bytes do not match the sizes and SHA-256s in the manifest")
        model = b"".join(self._chunks)
        self._chunks.clear()
        store = self._store
        loaded = store._load(m, self._signature, model, provisioned_at=time.time())
        del model
        with store._provision_lock:
            store._check_newer(m)  # again: another upload may have finished meanwhile
            if self._writer is not None:
                try:
                    self._writer.commit()
                except OSError as exc:
                    raise ModelError(500, f"could not seal the model to storage: {exc.strerror}") from None
            store.current = loaded
        log.info("serving model version %d sha256 %s", m.version, m.model_sha256)
        return loaded

    def abort(self) -> None:
        """Forget the upload; a no-op after finish(). The previous model keeps serving."""
        self._chunks.clear()
        if self._writer is not None:
            self._writer.abort()


class ModelStore:
    def __init__(self, config: EnclaveConfig, sealer: Sealer | None, storage: Path) -> None:
        """``sealer`` None: the platform has no sealing key; models live in memory only."""
        self._config = config
        self._sealer = sealer
        self._storage = storage
        self._provision_lock = threading.Lock()
        self._no_files = tempfile.mkdtemp(prefix="enclave-infer-no-external-data-")
        self.current: LoadedModel | None = None

    # -- provisioning --------------------------------------------------------------------------

    def provision(self, manifest_bytes: bytes, signature: bytes, model: bytes) -> LoadedModel:
        """A whole model at once: :meth:`begin` + one :meth:`Upload.write` + :meth:`Upload.finish`."""
        upload = self.begin(manifest_bytes, signature)
        try:
            upload.write(model)
            return upload.finish()
        finally:
            upload.abort()

    def begin(self, manifest_bytes: bytes, signature: bytes) -> Upload:
        """Start an upload: the owner's signature and the version are checked before any model byte
        is accepted. The model becomes live only in :meth:`Upload.finish`."""
        try:
            manifest = Manifest.verify(manifest_bytes, signature, self._config.owner_public_key)
        except ProtocolError as exc:
            raise ModelError(403, str(exc)) from None
        self._check_newer(manifest)
        if manifest.model_size > self._config.limits.max_model_bytes:
            raise ModelError(413, f"model is larger than {self._config.limits.max_model_bytes} bytes")
        try:
            Preprocessing.from_json(manifest.preprocessing)
        except UsageError as exc:
            raise ModelError(400, f"manifest preprocessing: {exc}") from None
        return Upload(self, manifest, manifest_bytes, signature)

    def _check_newer(self, manifest: Manifest) -> None:
        current = self.current
        if current is not None and manifest.version <= current.manifest.version:
            raise ModelError(
                409,
                f"model version {manifest.version} is not newer than the served version"
                f" {current.manifest.version}",
            )

    def _load(
        self, manifest: Manifest, signature: bytes, model: bytes, *, provisioned_at: float
    ) -> LoadedModel:
        """Load every file of ``model`` (the manifest's files back to back) into its runtime. The
        caller has checked the bytes against the manifest's hashes (an upload as it streamed,
        :meth:`restore` with :func:`_check_files`)."""
        if len(model) != manifest.model_size:
            raise ModelError(400, "model bytes do not match the sizes and SHA-256s in the manifest")
        try:
            pre = Preprocessing.from_json(manifest.preprocessing)
        except UsageError as exc:
            raise ModelError(400, f"manifest preprocessing: {exc}") from None
        # ONNX Runtime would start a thread per core; under Gramine every thread counts against
        # sgx.max_threads, so a quarter of them go to one model's intra-op pool.
        threads = max(1, min(os.cpu_count() or 1, self._config.max_threads // 4))
        shape = pre.input_shape()
        runtimes: dict[str, Runtime] = {}
        offset = 0
        for f in manifest.files:
            part = model[offset : offset + f.size] if len(manifest.files) > 1 else model
            offset += f.size
            try:
                if f.format == "onnx":
                    runtime = load_onnx(part, threads=threads, no_files_dir=self._no_files)
                elif torch_available():
                    runtime = load_torch(part, fmt=f.format, threads=threads)
                else:
                    raise ModelError(
                        400, "this enclave has no PyTorch runtime: provision with --runtime onnx"
                    )
                check_scores(runtime, np.zeros(shape, dtype=np.float32), len(manifest.labels))
            except RuntimeLoadError as exc:
                raise ModelError(400, str(exc)) from None
            runtimes[runtime.name] = runtime
        return LoadedModel(manifest, signature, pre, runtimes, provisioned_at)

    def restore(self) -> None:
        """Serve the sealed model again after a restart, or nothing if it fails to verify."""
        path = self._storage / SEALED_MODEL
        # An upload cut by the enclave's own death leaves its partial file: never a model, remove it.
        for partial in self._storage.glob(f"{SEALED_MODEL}.*.partial") if self._storage.is_dir() else ():
            partial.unlink(missing_ok=True)
            log.warning("removed an unfinished upload left by a previous run")
        if self._sealer is None or not path.exists():
            return
        try:
            header, model = read_sealed_stream(
                self._sealer, path, SEAL_LABEL, max_bytes=self._config.limits.max_model_bytes
            )
            manifest_bytes, signature = _unpack(header)
            manifest = Manifest.verify(manifest_bytes, signature, self._config.owner_public_key)
            _check_files(manifest, model)
            self.current = self._load(manifest, signature, model, provisioned_at=path.stat().st_mtime)
        except (EnclaveInferError, OSError) as exc:
            log.error("sealed model in storage failed verification (%s); serving no model", exc)
            return
        log.info("restored sealed model version %d sha256 %s", manifest.version, manifest.model_sha256)

    # -- inference -----------------------------------------------------------------------------

    def classify(
        self, image: bytes, top: int, runtime: str = "default", *, pinned: str | None = None
    ) -> dict[str, Any]:
        """``runtime``: "default" (the first the owner provisioned), "onnx", "torch", or "both",
        which answers with every runtime's results side by side, as the Mystikos sample does."""
        loaded = self.current
        if loaded is None:
            raise ModelError(503, "no model has been provisioned yet")
        if pinned is not None and pinned.lower() != loaded.manifest.model_sha256:
            # before the image is even decoded: a pinned client's image meets no other model
            raise ModelError(
                409, f"the enclave serves model {loaded.manifest.model_sha256}, not the pinned {pinned}"
            )
        if runtime == "default":
            names = [next(iter(loaded.runtimes))]
        elif runtime == "both":
            names = list(loaded.runtimes)
        elif runtime in loaded.runtimes:
            names = [runtime]
        else:
            have = ", ".join(loaded.runtimes)
            raise ModelError(400, f"runtime {runtime!r} is not provisioned; this model has {have}")
        if len(image) > self._config.limits.max_image_bytes:
            raise ModelError(413, f"image is larger than {self._config.limits.max_image_bytes} bytes")
        try:
            tensor = to_tensor(
                decode_image(image, max_pixels=self._config.limits.max_pixels), loaded.preprocessing
            )
        except ImageError as exc:
            raise ModelError(400, str(exc)) from None
        by_runtime: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            try:
                scores = np.asarray(loaded.runtimes[name].run(tensor)[0], dtype=np.float64)
            except InferenceError as exc:
                raise ModelError(500, str(exc)) from None
            probabilities = _as_probabilities(scores)
            order = np.argsort(-probabilities, kind="stable")[:top]
            by_runtime[name] = [
                {"label": loaded.manifest.labels[i], "index": int(i), "probability": float(probabilities[i])}
                for i in order
            ]
        answer: dict[str, Any] = {
            "model": {"sha256": loaded.manifest.model_sha256, "version": loaded.manifest.version},
            "results": by_runtime[names[0]],
        }
        if runtime == "both":
            answer["runtimes"] = by_runtime
        return answer


def _as_probabilities(scores: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
    # A model that already ends in softmax gives a distribution; anything else is logits.
    if scores.min() >= 0.0 and abs(float(scores.sum()) - 1.0) < 1e-3:
        return scores
    exp = np.exp(scores - scores.max())
    return np.asarray(exp / exp.sum(), dtype=np.float64)


def _check_files(manifest: Manifest, model: bytes) -> None:
    """The files back to back in ``model`` have the sizes and SHA-256s the manifest names."""
    view, offset = memoryview(model), 0
    for f in manifest.files:
        if hashlib.sha256(view[offset : offset + f.size]).hexdigest() != f.sha256:
            raise ModelError(400, "model bytes do not match the sizes and SHA-256s in the manifest")
        offset += f.size
    if offset != len(model):
        raise ModelError(400, "model bytes do not match the sizes and SHA-256s in the manifest")


def _pack(manifest: bytes, signature: bytes) -> bytes:
    return struct.pack("!I", len(manifest)) + manifest + signature


def _unpack(blob: bytes) -> tuple[bytes, bytes]:
    if len(blob) < 4:
        raise ProtocolError("sealed manifest is truncated")
    (m,) = struct.unpack("!I", blob[:4])
    if len(blob) < 4 + m:
        raise ProtocolError("sealed manifest is truncated")
    return blob[4 : 4 + m], blob[4 + m :]
