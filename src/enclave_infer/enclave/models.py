"""The sealed model store: provisioning, sealing, restoring, and reloading from a cluster's storage.

Trusted code; the I/O around the trusted state (:mod:`enclave_infer.enclave.state`), which decides
what may be served. A provision is accepted only if, in order: the manifest's signature verifies
under the owner key of the measured configuration; the state accepts its version as newer; the
model bytes have the size and SHA-256 the manifest names; the preprocessing is valid; ONNX Runtime
loads the model and a trial run yields one score per label; and the model is sealed to storage
(alone: one file, replaced; in a cluster: one file per version in the shared folder,
:mod:`enclave_infer.cluster.storage`, in place of a file of that name only if it does not open under
the cluster's key). Only then does the state serve the new model, in one transition. Any failure
leaves the served model untouched. Classification is :mod:`enclave_infer.enclave.classifier`'s.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import logging
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np

from enclave_infer.cluster.storage import CLUSTER_SEALING_PURPOSE, ClusterStorage, open_regular
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave._modelfiles import ModelFiles
from enclave_infer.enclave.runtimes import (
    Runtime as LoadedRuntime,
)
from enclave_infer.enclave.runtimes import (
    RuntimeLoadError,
    check_scores,
    load_onnx,
    load_torch,
    takes_batches,
    torch_available,
)
from enclave_infer.enclave.sealing import SealedStreamWriter, Sealer, iter_sealed_stream
from enclave_infer.enclave.state import TrustedState, VersionNotNewer
from enclave_infer.errors import DecryptionError, EnclaveInferError, ProtocolError, UsageError
from enclave_infer.protocol.api import ModelInfo, Preprocessing, Problem, ProblemDetails, ProvisionResult
from enclave_infer.protocol.manifest import BadSignature, Manifest

__all__ = ["LoadedModel", "ModelError", "ModelStore", "Upload"]

log = logging.getLogger("enclave_infer.enclave")

# The one sealed file of an enclave that serves alone (a cluster's: cluster/storage.py).
SEALED_MODEL = "model.sealed"
SEAL_LABEL = b"enclave-infer sealed model v2"
# Where ONNX Runtime looks for "external data" while it loads a model: a fresh empty folder per load,
# removed right after it (so that no enclave start leaves a folder behind).
NO_FILES_PREFIX = "enclave-infer-no-external-data-"


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

    @property
    def version(self) -> int:
        return self.manifest.version

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


class _Digests:
    """The SHA-256 of each of a manifest's files, over the model's bytes as they arrive (the files
    come back to back), and their count."""

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._hashes = [hashlib.sha256() for _ in manifest.files]
        self._ends = list(itertools.accumulate(f.size for f in manifest.files))
        self.received = 0

    def update(self, data: bytes | memoryview) -> None:
        """Raises :class:`ModelError` past the manifest's size."""
        start = self.received
        self.received += len(data)
        if self.received > self._manifest.model_size:
            raise ModelError(Problem.MODEL_INTEGRITY, "more model bytes than the manifest's size")
        view = memoryview(data)
        for i, end in enumerate(self._ends):
            begin = self._ends[i - 1] if i else 0
            lo, hi = max(start, begin), min(self.received, end)
            if lo < hi:
                self._hashes[i].update(view[lo - start : hi - start])

    def match(self) -> bool:
        """Whether the bytes so far are the manifest's files, whole."""
        m = self._manifest
        hashes = (h.hexdigest() for h in self._hashes)
        return self.received == m.model_size and all(
            h == f.sha256 for h, f in zip(hashes, m.files, strict=True)
        )


class Upload:
    """One model arriving in pieces: hashed, size-checked and sealed as it streams. ``commit`` puts
    the sealed file in place (the writer's own commit by default)."""

    def __init__(
        self,
        store: ModelStore,
        manifest: Manifest,
        signature: bytes,
        writer: SealedStreamWriter | None,
        commit: Callable[[], None] | None = None,
    ) -> None:
        self._store, self.manifest, self._signature = store, manifest, signature
        self._digests = _Digests(manifest)
        self._files = store.model_files(manifest)
        self._writer = writer
        self._commit = commit if commit is not None else writer.commit if writer is not None else None
        self._done = False

    @property
    def received(self) -> int:
        return self._digests.received

    def write(self, data: bytes) -> None:
        self._digests.update(data)
        view = memoryview(data)
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
        if not self._digests.match():
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
        replaced = self._store.install(loaded, commit=self._commit)
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
    """Provisions, restores and reloads models; what is served is ``state``'s to decide."""

    def __init__(
        self,
        config: EnclaveConfig,
        sealer: Sealer | None,
        storage: Path,
        *,
        state: TrustedState[LoadedModel] | None = None,
        shared: Path | None = None,
    ) -> None:
        """``sealer`` None: the platform has no sealing key; models live in memory only.
        ``shared``: the storage of the cluster the enclave joins (through ``state``)."""
        self._config = config
        self._sealer = sealer
        self._storage = storage
        self.state: TrustedState[LoadedModel] = state if state is not None else TrustedState()
        self._cluster = ClusterStorage(shared) if shared is not None else None
        self._cluster_sealer: tuple[bytes, Sealer] | None = None  # (the cluster's sealing key, its Sealer)
        self._provision_lock = threading.Lock()
        self._reload_lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        """The served model."""
        return self.state.model

    # -- provisioning --------------------------------------------------------------------------

    def begin(self, manifest_bytes: bytes, signature: bytes) -> Upload:
        """Start an upload: the owner's signature and the version are checked before any model byte
        is accepted. The model becomes live only in :meth:`Upload.finish`."""
        try:
            manifest = Manifest.verify(manifest_bytes, signature, self._config.owner_public_key)
        except BadSignature as exc:
            log.warning("provision refused: %s", Problem.INVALID_SIGNATURE.slug)
            raise ModelError(Problem.INVALID_SIGNATURE, str(exc)) from None
        except ProtocolError as exc:
            log.warning("provision refused: %s", Problem.INVALID_MANIFEST.slug)
            raise ModelError(Problem.INVALID_MANIFEST, str(exc)) from None
        try:
            self._check_newer(manifest.version, upload=True)
            if manifest.model_size > self._config.limits.max_model_bytes:
                raise ModelError(
                    Problem.TOO_LARGE, f"model is larger than {self._config.limits.max_model_bytes} bytes"
                )
            _preprocessing(manifest)
        except ModelError as exc:
            log.warning("provision of model version %d refused: %s", manifest.version, exc.problem.slug)
            raise
        writer, commit = None, None
        sealer = self._sealer_now()
        if sealer is not None:
            try:
                header = _pack(manifest_bytes, signature)
                if self._cluster is not None:  # a cluster member: a new file for each version
                    path = self._cluster.path(manifest.version)
                    writer = SealedStreamWriter(sealer, path, header, SEAL_LABEL, exclusive=True)
                    commit = functools.partial(self._commit_to_cluster, writer, sealer, manifest.version)
                else:
                    self._storage.mkdir(parents=True, exist_ok=True)
                    writer = SealedStreamWriter(sealer, self._storage / SEALED_MODEL, header, SEAL_LABEL)
            except OSError as exc:
                error = storage_error(exc)
                log.warning("provision of model version %d refused: %s", manifest.version, error)
                raise error from None
        return Upload(self, manifest, signature, writer, commit)

    def _commit_to_cluster(self, writer: SealedStreamWriter, sealer: Sealer, version: int) -> None:
        """Put an upload's sealed file in the cluster's storage under its version's name: a new
        name; or, in one rename, in place of a file there that is no model of the cluster's (the
        host's bytes, a copy cut short, another cluster's file). Raises FileExistsError if the file
        there opens under the cluster's key (:meth:`_holds_model`): one version, one model.

        Two uploads of one version, on two members at once, over such a file: the rename of the
        later one wins, and the earlier member serves a model no file holds. Both are the owner's,
        signed for that version."""
        try:
            writer.commit()
            return
        except FileExistsError:
            if self._holds_model(writer.path, sealer, version):
                raise
        log.warning(
            "%s in the cluster's storage does not open under the cluster's key: the upload replaces it",
            writer.path.name,
        )
        writer.replace()

    def _holds_model(self, path: Path, sealer: Sealer, version: int) -> bool:
        """Whether ``path`` holds a model of the cluster's, of ``version``: a whole sealed stream
        under ``sealer``, with the owner's manifest of that version and the model bytes it names.
        Raises OSError: the file cannot be read, so it cannot be told apart from a model."""
        try:
            file = open_regular(path)
        except FileNotFoundError:  # removed meanwhile: nothing to keep
            return False
        if file is None:
            return False
        with file:
            try:
                pieces = iter_sealed_stream(
                    sealer, file, SEAL_LABEL, max_bytes=self._config.limits.max_model_bytes
                )
                manifest = Manifest.verify(*_unpack(next(pieces)), self._config.owner_public_key)
                if manifest.version != version:
                    return False
                digests = _Digests(manifest)
                for piece in pieces:
                    digests.update(piece)
                return digests.match()
            except EnclaveInferError:  # not sealed under this key, altered, cut short, too large
                return False

    def install(self, loaded: LoadedModel, *, commit: Callable[[], None] | None) -> int | None:
        """Make ``loaded`` the served model: the state checks that it is newer (another upload may
        have finished meanwhile), ``commit`` puts the sealed file in place, the state serves it.
        Returns the version it replaced."""
        upload = commit is not None
        with self._provision_lock:
            self._check_newer(loaded.version, upload=upload)
            if commit is not None:
                try:
                    commit()
                except FileExistsError:  # another member took this version meanwhile
                    raise ModelError(
                        Problem.VERSION_NOT_NEWER,
                        f"model version {loaded.version} is already in the cluster's storage",
                    ) from None
                except OSError as exc:
                    raise storage_error(exc) from None
            try:
                previous = self.state.install(loaded, upload=upload)
            except VersionNotNewer as exc:  # a release raised the floor meanwhile
                raise ModelError(Problem.VERSION_NOT_NEWER, str(exc)) from None
        m = loaded.manifest
        log.info("serving model version %d sha256 %s", m.version, m.model_sha256)
        return previous.version if previous is not None else None

    def _check_newer(self, version: int, *, upload: bool) -> None:
        try:
            self.state.check_newer(version, upload=upload)
        except VersionNotNewer as exc:
            raise ModelError(Problem.VERSION_NOT_NEWER, str(exc)) from None

    def _sealer_now(self) -> Sealer | None:
        """What seals models now: the cluster's key once the enclave has joined its cluster, else
        the platform's (None: no sealing key)."""
        if self._cluster is None:
            return self._sealer
        cluster = self.state.cluster
        if cluster is None:
            return None
        if self._cluster_sealer is None or self._cluster_sealer[0] != cluster.sealing_key:
            self._cluster_sealer = (
                cluster.sealing_key,
                Sealer(cluster.sealing_key, purpose=CLUSTER_SEALING_PURPOSE),
            )
        return self._cluster_sealer[1]

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
                    with tempfile.TemporaryDirectory(prefix=NO_FILES_PREFIX) as no_files:
                        runtime = load_onnx(part, threads=threads, no_files_dir=no_files)
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
            size = self._config.batch_size
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
        loaded = self._read_sealed(path.name, path, self._sealer)
        if loaded is not None:
            self.state.install(loaded, upload=False)

    def _read_sealed(
        self, name: str, source: Path | BinaryIO, sealer: Sealer, version: int | None = None
    ) -> LoadedModel | None:
        """The model of the sealed file ``name`` (at ``source``: its path, or the file open at its
        start), verified and loaded; None (and one log line) if it fails. ``version``: the version
        the file must hold (a cluster's files are named by version)."""
        try:
            pieces = iter_sealed_stream(
                sealer, source, SEAL_LABEL, max_bytes=self._config.limits.max_model_bytes
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
                modified = source.stat() if isinstance(source, Path) else os.fstat(source.fileno())
                loaded = restored.complete(provisioned_at=modified.st_mtime)
            finally:
                restored.abort(logged=True)
        except DecryptionError:
            log.error(
                "the sealed model %s cannot be read: it was sealed under a different measurement (code,"
                " configuration or platform key) or cluster, or altered; serving no model from it:"
                " re-provision it",
                name,
            )
            return None
        except OSError as exc:
            if version is not None:  # a cluster's file: perhaps a passing fault of shared storage
                raise
            log.error("sealed model %s cannot be read (%s); it is not served", name, type(exc).__name__)
            return None
        except (EnclaveInferError, MemoryError) as exc:
            # the type only: a runtime's refusal may name the model's operators
            reason = exc.problem.slug if isinstance(exc, ModelError) else type(exc).__name__
            log.error("sealed model %s failed verification (%s); it is not served", name, reason)
            return None
        log.info("restored sealed model version %d sha256 %s", manifest.version, manifest.model_sha256)
        return loaded

    # -- clusters ------------------------------------------------------------------------------

    def reload(self) -> None:
        """Serve the newest model in the cluster's storage if the state takes it (newer than the
        served one, at or above the floor). A file that fails verification is read again only once
        it has changed (:meth:`ClusterStorage.open`)."""
        storage, sealer = self._cluster, self._sealer_now()
        if storage is None or sealer is None:
            return
        with self._reload_lock:
            try:
                versions = storage.versions()
            except OSError as exc:
                log.error("cannot list the cluster's storage: %s", os.strerror(exc.errno or 0))
                return
            current = self.current.version if self.current else 0
            for version in storage.candidates(versions, current=current, floor=self.state.floor):
                name = storage.path(version).name
                try:
                    opened = storage.open(version)
                    if opened is None:  # failed before, and unchanged since
                        continue
                    file, state = opened
                    with file:
                        loaded = self._read_sealed(name, file, sealer, version)
                except OSError as exc:  # tried again at the next reload
                    log.warning("cannot read %s from the cluster's storage: %s", name, type(exc).__name__)
                    continue
                if loaded is None:
                    storage.failed(version, state)
                    continue
                with contextlib.suppress(ModelError):  # a newer one arrived meanwhile
                    self.install(loaded, commit=None)
                return
            if self.current is None and self.state.floor > 0:
                log.error(
                    "no model at or above version %d (the cluster's floor) in the cluster's storage;"
                    " serving none",
                    self.state.floor,
                )


def _preprocessing(manifest: Manifest) -> Preprocessing:
    try:
        return Preprocessing.from_json(manifest.preprocessing)
    except UsageError as exc:
        raise ModelError(Problem.INVALID_MANIFEST, f"manifest preprocessing: {exc}") from None


def _pack(manifest: bytes, signature: bytes) -> bytes:
    return struct.pack("!I", len(manifest)) + manifest + signature


def _unpack(blob: bytes) -> tuple[bytes, bytes]:
    if len(blob) < 4:
        raise ProtocolError("sealed manifest is truncated")
    (m,) = struct.unpack("!I", blob[:4])
    if len(blob) < 4 + m:
        raise ProtocolError("sealed manifest is truncated")
    return blob[4 : 4 + m], blob[4 + m :]
