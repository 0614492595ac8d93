"""The model being served: provisioning, sealing, restoring and inference.

Trusted code. A provision is accepted only if, in order: the manifest's signature verifies under the
owner key of the measured configuration; its version exceeds the current one; the model bytes have
the size and SHA-256 the manifest names; the preprocessing is valid; ONNX Runtime loads the model and
a trial run yields one score per label; and the model is sealed to storage. Only then does the new
model replace the old one, in one assignment. Any failure leaves the served model untouched.

Inference: each request decodes and preprocesses its image in its own thread, then waits for the
:class:`~enclave_infer.enclave.batching.Batcher` to run it in a batch with others of the same model.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import re
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave._modelfiles import ModelFiles
from enclave_infer.enclave.batching import Batcher, BatchStats
from enclave_infer.enclave.preprocess import ImageError, decode_image, to_tensor
from enclave_infer.enclave.runtimes import (
    InferenceError,
    RuntimeLoadError,
    check_scores,
    load_onnx,
    load_torch,
    takes_batches,
    torch_available,
)
from enclave_infer.enclave.runtimes import (
    Runtime as LoadedRuntime,
)
from enclave_infer.enclave.sealing import SealedStreamWriter, Sealer, iter_sealed_stream
from enclave_infer.errors import DecryptionError, EnclaveInferError, ProtocolError, UsageError
from enclave_infer.protocol.api import (
    Classification,
    EnclaveStatus,
    ModelInfo,
    Prediction,
    Preprocessing,
    Problem,
    ProblemDetails,
    ProvisionResult,
    Runtime,
)
from enclave_infer.protocol.manifest import Manifest

__all__ = ["LoadedModel", "ModelError", "ModelStore", "Upload"]

log = logging.getLogger("enclave_infer.enclave")

SEALED_MODEL = "model.sealed"
SEAL_LABEL = b"enclave-infer sealed model v2"
# A cluster's storage (enclave_infer.cluster) holds one file per version, never overwritten.
CLUSTER_MODEL = re.compile(r"model-v([1-9][0-9]{0,17})\.sealed")


def cluster_model_name(version: int) -> str:
    return f"model-v{version}.sealed"


class ModelError(EnclaveInferError):
    """A request about the model cannot be honoured; ``details`` is the problem to answer with."""

    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.details: ProblemDetails = problem.details(message)

    @property
    def problem(self) -> Problem:
        problem = self.details.problem
        assert problem is not None
        return problem


def storage_error(exc: OSError) -> ModelError:
    """What the enclave says when sealed storage fails: the cause, never a path of the enclave's."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ModelError(
            Problem.STORAGE_FULL, "could not seal the model to storage: no space left on device"
        )
    reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    return ModelError(Problem.STORAGE_FAILED, f"could not seal the model to storage: {reason.lower()}")


@dataclass(frozen=True)
class LoadedModel:
    manifest: Manifest
    signature: bytes
    preprocessing: Preprocessing
    runtimes: dict[str, LoadedRuntime]  # "onnx", "torch": the first is the default
    batched: frozenset[str]  # the runtimes that take several images per run (takes_batches)
    provisioned_at: float

    def info(self) -> ModelInfo:
        m = self.manifest
        return ModelInfo(
            sha256=m.model_sha256,
            version=m.version,
            files=m.files,
            runtimes=tuple(self.runtimes),
            labels=len(m.labels),
            preprocessing=self.preprocessing,
            provisioned_at=datetime.fromtimestamp(int(self.provisioned_at), UTC),
        )


class Upload:
    """One model arriving in pieces: hashed, size-checked and sealed as it streams."""

    def __init__(
        self, store: ModelStore, manifest: Manifest, signature: bytes, writer: SealedStreamWriter | None
    ) -> None:
        self._store, self.manifest, self._signature = store, manifest, signature
        self._hashes = [hashlib.sha256() for _ in manifest.files]
        self._ends = list(itertools.accumulate(f.size for f in manifest.files))
        self._files = store.model_files(manifest)
        self.received = 0
        self._writer = writer
        self._done = False

    def write(self, data: bytes) -> None:
        start = self.received
        self.received += len(data)
        if self.received > self.manifest.model_size:
            raise ModelError(Problem.MODEL_INTEGRITY, "more model bytes than the manifest's size")
        view = memoryview(data)
        for i, end in enumerate(self._ends):  # the files come back to back: hash each one's part
            begin = self._ends[i - 1] if i else 0
            lo, hi = max(start, begin), min(self.received, end)
            if lo < hi:
                self._hashes[i].update(view[lo - start : hi - start])
        try:
            self._files.write(view)
        except OSError as exc:  # out of memory for the memory file
            raise ModelError(
                Problem.TOO_LARGE, f"no memory for the model: {os.strerror(exc.errno or 0)}"
            ) from None
        if self._writer is not None:
            try:
                self._writer.write(data)
            except OSError as exc:
                raise storage_error(exc) from None

    def complete(self, *, provisioned_at: float) -> LoadedModel:
        """Verify sizes and hashes, and load: the model, not yet served."""
        m = self.manifest
        hashes = (h.hexdigest() for h in self._hashes)
        if self.received != m.model_size or any(h != f.sha256 for h, f in zip(hashes, m.files, strict=True)):
            raise ModelError(
                Problem.MODEL_INTEGRITY, "model bytes do not match the sizes and SHA-256s in the manifest"
            )
        try:
            return self._store.load(m, self._signature, self._files, provisioned_at=provisioned_at)
        finally:
            self._files.close()  # the runtimes hold their own copies now

    def finish(self) -> ProvisionResult:
        """Verify size and hash, load, commit the sealed file, then swap: all or nothing."""
        loaded = self.complete(provisioned_at=time.time())
        replaced = self._store.install(loaded, commit=self._writer.commit if self._writer else None)
        self._done = True
        return ProvisionResult(loaded.info(), replaced)

    def abort(self, *, logged: bool = False) -> None:
        """Forget the upload; a no-op after finish(). The previous model keeps serving. An upload
        that ends here unfinished is logged (version and byte counts only) unless ``logged``."""
        self._files.close()
        if self._writer is not None:
            self._writer.abort()
        if not self._done:
            self._done = True
            if logged:
                return
            log.warning(
                "provision of model version %d ended after %d of %d bytes; the served model is unchanged",
                self.manifest.version,
                self.received,
                self.manifest.model_size,
            )


class ModelStore:
    def __init__(self, config: EnclaveConfig, sealer: Sealer | None, storage: Path) -> None:
        """``sealer`` None: the platform has no sealing key; models live in memory only."""
        self._config = config
        self._sealer = sealer
        self._storage = storage
        self._provision_lock = threading.Lock()
        self._no_files = tempfile.mkdtemp(prefix="enclave-infer-no-external-data-")
        self.current: LoadedModel | None = None
        limits, batching = config.limits, config.batching
        # A batch never holds more images than there are requests in the enclave.
        self._batcher = Batcher(
            max_batch_size=min(batching.max_batch_size, limits.max_concurrent_requests),
            max_queue_delay_us=batching.max_queue_delay_us,
        )
        self._decodes = threading.BoundedSemaphore(limits.max_concurrent_decodes)
        self._stats_lock = threading.Lock()
        self._classifications = 0
        # A cluster member's shared storage, and the lowest version it may serve (use_cluster).
        self._shared: Path | None = None
        self.cluster_id: str | None = None
        self.floor = 0
        self._reload_lock = threading.Lock()
        self._refused: set[str] = set()  # files of the shared storage that failed verification

    def status(self) -> EnclaveStatus:
        """What the host may know: the served model's public identity, how many answers, and the
        sizes of the batches inference ran."""
        loaded = self.current
        batches = self._batcher.stats()
        return EnclaveStatus(
            model_sha256=loaded.manifest.model_sha256 if loaded else None,
            model_version=loaded.manifest.version if loaded else None,
            classifications=self._classifications,
            batches=batches.batches,
            batch_sizes={n: count for n, count in enumerate(batches.sizes, start=1) if count},
            cluster_id=self.cluster_id,
            version_floor=self.floor if self.cluster_id is not None else None,
        )

    # -- provisioning --------------------------------------------------------------------------

    def begin(self, manifest_bytes: bytes, signature: bytes) -> Upload:
        """Start an upload: the owner's signature and the version are checked before any model byte
        is accepted. The model becomes live only in :meth:`Upload.finish`."""
        try:
            manifest = Manifest.verify(manifest_bytes, signature, self._config.owner_public_key)
        except ProtocolError as exc:
            problem = Problem.INVALID_SIGNATURE if "signature" in str(exc) else Problem.INVALID_MANIFEST
            log.warning("provision refused: %s", problem.uri.rpartition(":")[2])
            raise ModelError(problem, str(exc)) from None
        try:
            self._check_newer(manifest)
            if manifest.model_size > self._config.limits.max_model_bytes:
                raise ModelError(
                    Problem.TOO_LARGE, f"model is larger than {self._config.limits.max_model_bytes} bytes"
                )
            _preprocessing(manifest)
        except ModelError as exc:
            log.warning("provision of model version %d refused: %s", manifest.version, _slug(exc.problem))
            raise
        writer = None
        if self._sealer is not None:
            try:
                header = _pack(manifest_bytes, signature)
                if self._shared is not None:  # a cluster member: a new file for each version
                    path = self._shared / cluster_model_name(manifest.version)
                    writer = SealedStreamWriter(self._sealer, path, header, SEAL_LABEL, exclusive=True)
                else:
                    self._storage.mkdir(parents=True, exist_ok=True)
                    writer = SealedStreamWriter(
                        self._sealer, self._storage / SEALED_MODEL, header, SEAL_LABEL
                    )
            except OSError as exc:
                error = storage_error(exc)
                log.warning("provision of model version %d refused: %s", manifest.version, error)
                raise error from None
        return Upload(self, manifest, signature, writer)

    def install(self, loaded: LoadedModel, *, commit: Callable[[], None] | None) -> int | None:
        """Make ``loaded`` the served model: check again that it is newer (another upload may have
        finished meanwhile), run ``commit`` (the sealed file goes into place), swap. Returns the
        version it replaced."""
        with self._provision_lock:
            self._check_newer(loaded.manifest, upload=commit is not None)
            if commit is not None:
                try:
                    commit()
                except FileExistsError:  # another member took this version meanwhile
                    raise ModelError(
                        Problem.VERSION_NOT_NEWER,
                        f"model version {loaded.manifest.version} is already in the cluster's storage",
                    ) from None
                except OSError as exc:
                    raise storage_error(exc) from None
            previous, self.current = self.current, loaded
            self.floor = max(self.floor, loaded.manifest.version)
        m = loaded.manifest
        log.info("serving model version %d sha256 %s", m.version, m.model_sha256)
        return previous.manifest.version if previous is not None else None

    def _check_newer(self, manifest: Manifest, *, upload: bool = True) -> None:
        """``upload``: a new version (above the floor); else one from the cluster's storage (at or
        above it)."""
        current = self.current
        if current is not None and manifest.version <= current.manifest.version:
            raise ModelError(
                Problem.VERSION_NOT_NEWER,
                f"model version {manifest.version} is not newer than the served version"
                f" {current.manifest.version}",
            )
        if self._shared is not None and manifest.version < self.floor + upload:
            raise ModelError(
                Problem.VERSION_NOT_NEWER,
                f"model version {manifest.version} is not newer than version {self.floor},"
                " which a member of the cluster holds",
            )

    def model_files(self, manifest: Manifest) -> ModelFiles:
        """Where the plaintext of ``manifest``'s files goes while they arrive (memory only)."""
        return ModelFiles([f.size for f in manifest.files])

    def load(
        self, manifest: Manifest, signature: bytes, files: ModelFiles, *, provisioned_at: float
    ) -> LoadedModel:
        """Load every file of ``files`` into its runtime. The caller has checked the bytes against
        the manifest's hashes as they arrived (:class:`Upload`, for an upload and a restore)."""
        pre = _preprocessing(manifest)
        # ONNX Runtime would start a thread per core; under Gramine every thread counts against
        # sgx.max_threads, so a quarter of them go to one model's intra-op pool. The whole budget:
        # the main thread, Gramine's own helpers, one thread per host connection (the host opens
        # one per request in flight, so max_concurrent_requests of them under load), the batcher's
        # one thread, and this pool (threads - 1 workers: the batcher's thread, the only one that
        # runs inference, is the pool's first). Before batching, up to max_concurrent_requests
        # connection threads shared this pool; now one batch at a time uses it whole.
        # The cores this process may run on (taskset, cgroups' cpusets), not the machine's: a pool
        # larger than that only spins against itself.
        threads = max(1, min(len(os.sched_getaffinity(0)), self._config.max_threads // 4))
        example = np.zeros(pre.input_shape(), dtype=np.float32)
        runtimes: dict[str, LoadedRuntime] = {}
        batched: set[str] = set()
        for index, f in enumerate(manifest.files):
            part = files.source(index)
            try:
                if f.format == "onnx":
                    runtime = load_onnx(part, threads=threads, no_files_dir=self._no_files)
                elif torch_available():
                    runtime = load_torch(part, fmt=f.format, threads=threads)
                else:
                    raise ModelError(
                        Problem.INVALID_MODEL,
                        "this enclave has no PyTorch runtime: provision with --runtime onnx",
                    )
                check_scores(runtime, example, len(manifest.labels))
            except RuntimeLoadError as exc:
                raise ModelError(Problem.INVALID_MODEL, str(exc)) from None
            runtimes[runtime.name] = runtime
            size = self._batcher.max_batch_size
            if size > 1:
                if takes_batches(runtime, example, size):
                    batched.add(runtime.name)
                else:
                    log.info(
                        "model version %d: %s runs one image at a time (no batches of %d)",
                        manifest.version,
                        runtime.name,
                        size,
                    )
        return LoadedModel(manifest, signature, pre, runtimes, frozenset(batched), provisioned_at)

    def restore(self) -> None:
        """Serve the sealed model again after a restart, or nothing if it fails to verify."""
        path = self._storage / SEALED_MODEL
        # An upload cut by the enclave's own death leaves its partial file: never a model, remove it.
        for partial in self._storage.glob(f"{SEALED_MODEL}.*.partial") if self._storage.is_dir() else ():
            partial.unlink(missing_ok=True)
            log.warning("removed an unfinished upload left by a previous run")
        if self._sealer is None or not path.exists():
            return
        loaded = self._read_sealed(path, self._sealer)
        if loaded is not None:
            self.current = loaded

    def _read_sealed(self, path: Path, sealer: Sealer, version: int | None = None) -> LoadedModel | None:
        """The model of a sealed file, verified and loaded; None (and one log line) if it fails.
        ``version``: the version the file must hold (a cluster's files are named by version)."""
        try:
            pieces = iter_sealed_stream(
                sealer, path, SEAL_LABEL, max_bytes=self._config.limits.max_model_bytes
            )
            manifest_bytes, signature = _unpack(next(pieces))
            manifest = Manifest.verify(manifest_bytes, signature, self._config.owner_public_key)
            if version is not None and manifest.version != version:
                raise ModelError(
                    Problem.INVALID_MANIFEST, "the file's name and its manifest's version differ"
                )
            # the same path as an upload: hashed as it streams, into memory files, then loaded
            restored = Upload(self, manifest, signature, writer=None)
            try:
                for piece in pieces:
                    restored.write(piece)
                loaded = restored.complete(provisioned_at=path.stat().st_mtime)
            finally:
                restored.abort(logged=True)
        except DecryptionError:
            log.error(
                "the sealed model %s cannot be read: it was sealed under a different measurement (code,"
                " configuration or platform key) or cluster, or altered; serving no model from it:"
                " re-provision it",
                path.name,
            )
            return None
        except OSError as exc:
            if version is not None:  # a cluster's file: perhaps a passing fault of shared storage
                raise
            log.error("sealed model %s cannot be read (%s); it is not served", path.name, type(exc).__name__)
            return None
        except (EnclaveInferError, MemoryError) as exc:
            # the type only: a runtime's refusal may name the model's operators
            reason = _slug(exc.problem) if isinstance(exc, ModelError) else type(exc).__name__
            log.error("sealed model %s failed verification (%s); it is not served", path.name, reason)
            return None
        log.info("restored sealed model version %d sha256 %s", manifest.version, manifest.model_sha256)
        return loaded

    # -- clusters ------------------------------------------------------------------------------

    def use_cluster(self, sealer: Sealer, shared: Path, cluster_id: str, floor: int) -> None:
        """Become a cluster member: models are sealed under the cluster's key into ``shared``, one
        file per version, and none below ``floor`` (the highest version a live member holds) is
        served. Then :meth:`reload` loads the newest model there."""
        with self._provision_lock:
            self._sealer, self._shared, self.cluster_id = sealer, shared, cluster_id
            self.floor = max(self.floor, floor)

    def raise_floor(self, floor: int) -> None:
        """A member told of a higher floor (key release) serves nothing below it: a version another
        member holds is newer than the one served here (its host may have kept it from loading)."""
        with self._provision_lock:
            if floor <= self.floor:
                return
            self.floor = floor
            current = self.current
            if current is not None and current.manifest.version < floor:
                log.error(
                    "a member of the cluster holds model version %d: version %d is no longer served",
                    floor,
                    current.manifest.version,
                )
                self.current = None

    def reload(self) -> None:
        """Serve the newest model in the cluster's storage if it is newer than the served one and
        at or above the floor. A file that fails verification is skipped, and never read again."""
        shared, sealer = self._shared, self._sealer
        if shared is None or sealer is None:
            return
        with self._reload_lock:
            try:
                names = [
                    (int(m[1]), m[0]) for p in shared.iterdir() if (m := CLUSTER_MODEL.fullmatch(p.name))
                ]
            except OSError as exc:
                log.error("cannot list the cluster's storage: %s", os.strerror(exc.errno or 0))
                return
            current = self.current.manifest.version if self.current else 0
            for version, name in sorted(names, reverse=True):
                if version <= current:
                    break
                if name in self._refused:
                    continue
                if version < self.floor:
                    log.error(
                        "model version %d in the cluster's storage is below the floor %d (a rollback?);"
                        " it is not served",
                        version,
                        self.floor,
                    )
                    self._refused.add(name)
                    continue
                try:
                    loaded = self._read_sealed(shared / name, sealer, version)
                except OSError as exc:  # tried again at the next reload
                    log.warning("cannot read %s from the cluster's storage: %s", name, type(exc).__name__)
                    continue
                if loaded is None:
                    self._refused.add(name)
                    continue
                with contextlib.suppress(ModelError):  # a newer one arrived meanwhile
                    self.install(loaded, commit=None)
                return
            if self.current is None and self.floor > 0:
                log.error(
                    "no model at or above version %d (the cluster's floor) in the cluster's storage;"
                    " serving none",
                    self.floor,
                )

    # -- inference -----------------------------------------------------------------------------

    def classify(
        self, image: bytes, top: int, runtime: Runtime = Runtime.DEFAULT, *, pinned: str | None = None
    ) -> Classification:
        """``runtime``: the first the owner provisioned, one by name, or every runtime side by side
        (:attr:`Runtime.BOTH`), as the Mystikos sample does."""
        with self._stats_lock:  # every request, whatever its outcome: the count says nothing of it
            self._classifications += 1
        loaded = self.current
        if loaded is None:
            raise ModelError(Problem.NO_MODEL, "no model has been provisioned yet")
        if pinned is not None and pinned.lower() != loaded.manifest.model_sha256:
            # before the image is even decoded: a pinned client's image meets no other model
            raise ModelError(
                Problem.MODEL_PIN_MISMATCH,
                f"the enclave serves model {loaded.manifest.model_sha256}, not the pinned {pinned}",
            )
        if runtime is Runtime.DEFAULT:
            names = [next(iter(loaded.runtimes))]
        elif runtime is Runtime.BOTH:
            names = list(loaded.runtimes)
        elif runtime.value in loaded.runtimes:
            names = [runtime.value]
        else:
            have = ", ".join(loaded.runtimes)
            raise ModelError(
                Problem.RUNTIME_NOT_PROVISIONED,
                f"runtime {runtime.value!r} is not provisioned; this model has {have}",
            )
        if len(image) > self._config.limits.max_image_bytes:
            raise ModelError(
                Problem.TOO_LARGE, f"image is larger than {self._config.limits.max_image_bytes} bytes"
            )
        # The image is decoded here, in the request's own thread, alongside the others; a bad one
        # fails this request only and never reaches a batch. The image runs against `loaded`, the
        # model its pin was checked against, even if a provision swaps in another meanwhile.
        with self._batcher.incoming():
            try:
                with self._decodes:
                    pixels = decode_image(image, max_pixels=self._config.limits.max_pixels)
                    tensor = to_tensor(pixels, loaded.preprocessing)
                    del pixels  # freed before the next decode may start
            except ImageError as exc:
                raise ModelError(Problem.INVALID_IMAGE, str(exc)) from None
            waiting = [
                self._batcher.submit(loaded.runtimes[name], tensor, batched=name in loaded.batched)
                for name in names
            ]
        by_runtime: dict[str, tuple[Prediction, ...]] = {}
        labels = loaded.manifest.labels
        for name, pending in zip(names, waiting, strict=True):
            try:
                scores = np.asarray(pending.result()[0], dtype=np.float64)
            except InferenceError as exc:
                raise ModelError(Problem.INFERENCE_FAILED, str(exc)) from None
            probabilities = _as_probabilities(scores)
            order = np.argsort(-probabilities, kind="stable")[:top]
            by_runtime[name] = tuple(Prediction(labels[i], int(i), float(probabilities[i])) for i in order)
        return Classification(
            model_sha256=loaded.manifest.model_sha256,
            model_version=loaded.manifest.version,
            results=by_runtime[names[0]],
            by_runtime=by_runtime if runtime is Runtime.BOTH else {},
        )

    def batch_stats(self) -> BatchStats:
        """How many batches of each size inference has run, for metrics."""
        return self._batcher.stats()

    def close(self) -> None:
        """Run the images already queued and stop the batcher's thread; classify then fails."""
        self._batcher.close()


def _preprocessing(manifest: Manifest) -> Preprocessing:
    try:
        return Preprocessing.from_json(manifest.preprocessing)
    except UsageError as exc:
        raise ModelError(Problem.INVALID_MANIFEST, f"manifest preprocessing: {exc}") from None


def _slug(problem: Problem) -> str:
    """The problem type's last segment, for one-line logs: ``version-not-newer``."""
    return problem.slug


def _as_probabilities(scores: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
    # A model that already ends in softmax gives a distribution; anything else is logits.
    if scores.min() >= 0.0 and abs(float(scores.sum()) - 1.0) < 1e-3:
        return scores
    exp = np.exp(scores - scores.max())
    return np.asarray(exp / exp.sum(), dtype=np.float64)


def _pack(manifest: bytes, signature: bytes) -> bytes:
    return struct.pack("!I", len(manifest)) + manifest + signature


def _unpack(blob: bytes) -> tuple[bytes, bytes]:
    if len(blob) < 4:
        raise ProtocolError("sealed manifest is truncated")
    (m,) = struct.unpack("!I", blob[:4])
    if len(blob) < 4 + m:
        raise ProtocolError("sealed manifest is truncated")
    return blob[4 : 4 + m], blob[4 + m :]
