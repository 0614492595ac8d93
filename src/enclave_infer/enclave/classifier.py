"""Classification: an image in, the served model's answer out.

Trusted code. Each request decodes and preprocesses its image in its own thread, then waits for the
:class:`~enclave_infer.enclave.batching.Batcher` to run it in a batch with others of the same model.
The model is whatever the trusted state (:mod:`enclave_infer.enclave.state`) serves when the request
arrives; a provision meanwhile never changes the model a request's image meets.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.batching import Batcher, BatchStats
from enclave_infer.enclave.models import LoadedModel, ModelError
from enclave_infer.enclave.preprocess import ImageError, decode_image, to_tensor
from enclave_infer.enclave.runtimes import InferenceError
from enclave_infer.enclave.state import TrustedState
from enclave_infer.protocol.api import Classification, Prediction, Problem, Runtime

__all__ = ["Classifier"]


class Classifier:
    def __init__(self, config: EnclaveConfig, state: TrustedState[LoadedModel]) -> None:
        self._config = config
        self._state = state
        self._batcher = Batcher(
            max_batch_size=config.batch_size, max_queue_delay_us=config.batching.max_queue_delay_us
        )
        self._decodes = threading.BoundedSemaphore(config.limits.max_concurrent_decodes)
        self._count_lock = threading.Lock()
        self._classifications = 0

    @property
    def classifications(self) -> int:
        """Requests to classify so far, whatever their outcome."""
        return self._classifications

    def batch_stats(self) -> BatchStats:
        """How many batches of each size inference has run, for the enclave's public status."""
        return self._batcher.stats()

    def classify(
        self, image: bytes, top: int, runtime: Runtime = Runtime.DEFAULT, *, pinned: str | None = None
    ) -> Classification:
        """``runtime``: the first the owner provisioned, one by name, or every runtime side by side
        (:attr:`Runtime.BOTH`), as the Mystikos sample does."""
        with self._count_lock:  # every request, whatever its outcome: the count says nothing of it
            self._classifications += 1
        loaded = self._state.model
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

    def close(self) -> None:
        """Run the images already queued and stop the batcher's thread; classify then fails."""
        self._batcher.close()


def _as_probabilities(scores: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
    # A model that already ends in softmax gives a distribution; anything else is logits.
    if scores.min() >= 0.0 and abs(float(scores.sum()) - 1.0) < 1e-3:
        return scores
    exp = np.exp(scores - scores.max())
    return np.asarray(exp / exp.sum(), dtype=np.float64)
