"""Dynamic batching of inference inside the enclave, as Triton's dynamic batcher does it.

Trusted code, no I/O. Each request's connection thread decodes and preprocesses its own image (in
parallel with the others, as before batching), hands the tensor to the :class:`Batcher` and waits.
The batcher's one thread takes the oldest waiting image, gathers others for the same runtime until
the batch holds ``max_batch_size`` images or the oldest has waited ``max_queue_delay_us``, whichever
comes first, runs the runtime once on the images stacked along the batch axis, and hands every
waiter its own row of scores. Meanwhile the connection threads go on decoding the next images.

One rule is added to Triton's two: a batch also closes when no request is being decoded
(:meth:`Batcher.incoming`), since then no image could join it before a new request had been
received and decoded. Under load this changes nothing; a lone request does not wait out the delay.

What a batch never mixes: runtimes. Images are grouped by the runtime object itself, and a new
provision loads new runtime objects, so every batch runs against one
:class:`~enclave_infer.enclave.models.LoadedModel`, the one its requests were accepted for.

Errors stay with their batch: a failed run fails that batch's requests with
:class:`~enclave_infer.enclave.runtimes.InferenceError` and the batcher goes on. Images that fail to
decode never reach it.

:class:`BatchQueue` is the policy (which images run next), a pure function of the queue, the time
and the number of requests on their way; :class:`Batcher` is the thread around it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from enclave_infer.enclave.runtimes import InferenceError, Runtime

__all__ = ["BatchQueue", "BatchStats", "Batcher", "Pending"]

FAILED_MESSAGE = "the model failed to run on the input"
STOPPED_MESSAGE = "inference has stopped: the enclave is shutting down"


class Pending:
    """One image waiting in the queue; :meth:`result` blocks until its batch has run."""

    def __init__(self, runtime: Runtime, tensor: NDArray[np.float32], *, limit: int, arrived: float) -> None:
        self.runtime = runtime
        self.tensor = tensor
        self.limit = limit  # the largest batch this image may run in: 1 for a model that takes no batches
        self.arrived = arrived
        self._done = threading.Event()
        self._scores: NDArray[Any] | None = None
        self._error: str | None = None

    def done(self, timeout: float | None = None) -> bool:
        """Whether its batch has run, waiting up to ``timeout`` seconds for it."""
        return self._done.wait(timeout)

    def result(self) -> NDArray[Any]:
        """This image's scores, shape ``(1, classes)``, as the runtime gives them for the image
        alone. Raises :class:`InferenceError` if its batch failed."""
        self._done.wait()
        if self._error is not None:
            raise InferenceError(self._error)
        assert self._scores is not None
        return self._scores

    def _finish(self, scores: NDArray[Any]) -> None:
        self._scores = scores
        self._done.set()

    def _fail(self, message: str) -> None:
        self._error = message
        self._done.set()


class BatchQueue:
    """The images waiting to run, and which of them run next. Pure: no threads, no clock."""

    def __init__(self, *, max_batch_size: int, max_queue_delay: float) -> None:
        """``max_queue_delay`` in seconds."""
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self._items: list[Pending] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Pending) -> None:
        self._items.append(item)

    def take(self, now: float, *, coming: int, closing: bool = False) -> list[Pending] | float | None:
        """The next batch to run, if one is due at ``now``: the oldest image and the next ones for
        the same runtime, in arrival order, up to the batch size. Due when it is full, when the
        oldest has waited ``max_queue_delay``, when no request is ``coming`` (being decoded), or
        when ``closing``. Else the seconds until the oldest's delay runs out; None when empty."""
        if not self._items:
            return None
        first = self._items[0]
        limit = min(self.max_batch_size, first.limit)
        batch = [item for item in self._items if item.runtime is first.runtime][:limit]
        if len(batch) < limit and coming > 0 and not closing:
            wait = first.arrived + self.max_queue_delay - now
            if wait > 0:
                return wait
        taken = {id(item) for item in batch}
        self._items = [item for item in self._items if id(item) not in taken]
        return batch

    def drain(self) -> list[Pending]:
        """Every waiting image, removed."""
        items, self._items = self._items, []
        return items


@dataclass(frozen=True)
class BatchStats:
    """What the batcher has run since it started. ``sizes[n - 1]``: how many batches held ``n``
    images (failed ones included); ``failed``: batches whose run failed; ``waiting``: images in the
    queue now."""

    sizes: tuple[int, ...]
    failed: int
    waiting: int

    @property
    def batches(self) -> int:
        return sum(self.sizes)

    @property
    def images(self) -> int:
        return sum(n * count for n, count in enumerate(self.sizes, start=1))


class Batcher:
    """Gathers preprocessed images into batches and runs them on one thread of its own, started
    with the first image. ``clock``: seconds, monotonic (injected for tests)."""

    def __init__(
        self,
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1 or max_queue_delay_us < 0:
            raise ValueError("max_batch_size must be at least 1 and max_queue_delay_us at least 0")
        self.max_batch_size = max_batch_size
        self._queue = BatchQueue(max_batch_size=max_batch_size, max_queue_delay=max_queue_delay_us / 1e6)
        self._clock = clock
        self._cond = threading.Condition()
        self._coming = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._sizes = [0] * max_batch_size
        self._failed = 0

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Around a request's decoding and its :meth:`submit`: while it lasts, a batch waits (up to
        the delay) for this request's image rather than run without it."""
        with self._cond:
            self._coming += 1
        try:
            yield
        finally:
            with self._cond:
                self._coming -= 1
                self._cond.notify()

    def submit(self, runtime: Runtime, tensor: NDArray[np.float32], *, batched: bool) -> Pending:
        """Queue one preprocessed image (shape ``(1, ...)``) for ``runtime``; ``batched``: whether
        the runtime takes batches of more than one (:func:`~enclave_infer.enclave.runtimes.takes_batches`).
        Raises :class:`InferenceError` once the batcher is closed."""
        limit = self.max_batch_size if batched else 1
        with self._cond:
            if self._closed:
                raise InferenceError(STOPPED_MESSAGE)
            item = Pending(runtime, tensor, limit=limit, arrived=self._clock())
            self._queue.add(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="enclave-infer-batcher", daemon=True)
                self._thread.start()
            self._cond.notify()
        return item

    def stats(self) -> BatchStats:
        with self._cond:
            return BatchStats(tuple(self._sizes), self._failed, len(self._queue))

    def close(self, timeout: float | None = None) -> None:
        """Refuse new images, run the queued ones without waiting, and end the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- the batcher's thread ------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while True:
                with self._cond:
                    while True:
                        step = self._queue.take(self._clock(), coming=self._coming, closing=self._closed)
                        if isinstance(step, list):
                            batch = step
                            break
                        if step is None and self._closed:
                            return
                        self._cond.wait(step)  # None: until an image arrives, a decode ends, or close
                self._run(batch)
        finally:
            # Reached on close, or if something escaped _run: no request may wait for ever.
            with self._cond:
                self._closed = True
                left = self._queue.drain()
            for item in left:
                item._fail(STOPPED_MESSAGE)

    def _run(self, batch: list[Pending]) -> None:
        """One run of the runtime on ``batch``; every image gets its row of scores or the error."""
        try:
            tensor = batch[0].tensor if len(batch) == 1 else np.concatenate([i.tensor for i in batch])
            scores = np.asarray(batch[0].runtime.run(tensor))
            if scores.ndim < 1 or scores.shape[0] != len(batch):
                raise InferenceError(
                    f"the model gave {scores.shape[0] if scores.ndim else 0} rows of scores"
                    f" for a batch of {len(batch)}"
                )
        except InferenceError as exc:
            self._record(len(batch), failed=True)
            for item in batch:
                item._fail(str(exc))
            return
        except Exception:  # a runtime's bug, or tensors that do not stack: this batch fails, not the batcher
            self._record(len(batch), failed=True)
            for item in batch:
                item._fail(FAILED_MESSAGE)
            return
        self._record(len(batch), failed=False)
        for row, item in enumerate(batch):
            item._finish(np.array(scores[row : row + 1]))

    def _record(self, size: int, *, failed: bool) -> None:
        with self._cond:
            self._sizes[size - 1] += 1
            self._failed += failed
