"""Dynamic batching in the enclave: the queue's policy, the batcher's thread, real models through it,
the model store around it, and the measured [batching] configuration."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper

from enclave_infer.attestation.measurement import code_hash
from enclave_infer.client._owner import public_key_bytes
from enclave_infer.config import MAX_BATCH_SIZE, MAX_QUEUE_DELAY_US, Batching, EnclaveConfig, Limits
from enclave_infer.enclave.batching import FAILED_MESSAGE, Batcher, BatchQueue, BatchStats, Pending
from enclave_infer.enclave.classifier import Classifier
from enclave_infer.enclave.models import LoadedModel, ModelError, ModelStore
from enclave_infer.enclave.platform import SimulationPlatform
from enclave_infer.enclave.preprocess import decode_image, to_tensor
from enclave_infer.enclave.runtimes import InferenceError, load_onnx, load_torch, takes_batches
from enclave_infer.enclave.sealing import Sealer
from enclave_infer.errors import UsageError
from enclave_infer.protocol.api import Classification, Preprocessing, Problem, Runtime
from enclave_infer.protocol.manifest import Manifest, ModelFile
from tests.e2e.conftest import COLOUR_LABELS, colour_model, png

OWNER = Ed25519PrivateKey.generate()
COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (128, 128, 128), (200, 200, 20), (20, 200, 200)]
FOREVER_US = 60_000_000  # a delay no test waits out: a batch that closes did so for another reason


# --- a fake runtime: the interface, not ONNX Runtime ---------------------------------------------


def image(value: float) -> np.ndarray:
    """A tiny preprocessed image filled with ``value``, which the fake runtime scores by."""
    return np.full((1, 3, 2, 2), value, dtype=np.float32)


class FakeRuntime:
    """Scores an image filled with v as (v, -v), so every waiter can tell its own row. Records each
    batch's values; holds each run at ``gate`` if given; fails a batch that holds ``fail_on`` (as a
    runtime does) or ``crash_on`` (as a bug would); with ``drop_a_row``, answers a batch one row short."""

    name = "onnx"
    declared_batch: int | None = None

    def __init__(
        self,
        *,
        gate: threading.Event | None = None,
        fail_on: float | None = None,
        crash_on: float | None = None,
    ) -> None:
        self.gate, self.fail_on, self.crash_on = gate, fail_on, crash_on
        self.batches: list[list[float]] = []
        self.running = threading.Event()
        self.drop_a_row = False

    def run(self, tensor: np.ndarray) -> np.ndarray:
        values = [float(one.flat[0]) for one in tensor]
        self.batches.append(values)
        self.running.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.fail_on in values:
            raise InferenceError("the model failed to run on the input")
        if self.crash_on in values:
            raise ValueError("a bug in a runtime, with a message that quotes its input")
        rows = values[:-1] if self.drop_a_row and len(values) > 1 else values
        return np.array([[v, -v] for v in rows], dtype=np.float32)


def item(runtime: FakeRuntime, arrived: float, *, limit: int = 8) -> Pending:
    return Pending(runtime, image(0), limit=limit, arrived=arrived)


@pytest.fixture
def make_batcher() -> Iterator[Callable[..., Batcher]]:
    made: list[Batcher] = []

    def make(**kwargs: Any) -> Batcher:
        batcher = Batcher(**kwargs)
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close(timeout=30)


def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Wait for another thread to get somewhere (no timing is measured)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# --- the queue's policy, with times given ---------------------------------------------------------


def test_a_full_batch_is_taken_at_once_in_arrival_order() -> None:
    runtime = FakeRuntime()
    queue = BatchQueue(max_batch_size=4, max_queue_delay=0.002)
    items = [item(runtime, 0.0) for _ in range(10)]
    for one in items:
        queue.add(one)
    assert queue.take(0.0, coming=5) == items[:4]
    assert queue.take(0.0, coming=5) == items[4:8]
    assert queue.take(0.0, coming=5) == pytest.approx(0.002)  # two left, more coming: wait
    assert queue.take(0.002, coming=5) == items[8:]  # the delay is up
    assert queue.take(0.002, coming=5) is None
    assert len(queue) == 0


def test_a_partial_batch_waits_out_the_oldest_images_delay_only_while_requests_are_coming() -> None:
    runtime = FakeRuntime()
    queue = BatchQueue(max_batch_size=8, max_queue_delay=0.002)
    first, second = item(runtime, 1.0), item(runtime, 1.0015)
    queue.add(first)
    assert queue.take(1.0005, coming=1) == pytest.approx(0.0015)
    queue.add(second)
    assert queue.take(1.0015, coming=1) == pytest.approx(0.0005)  # the oldest's delay counts
    assert queue.take(1.0015, coming=0) == [first, second]  # none on its way: no reason to wait
    third = item(runtime, 2.0)
    queue.add(third)
    assert queue.take(2.0019, coming=3) == pytest.approx(0.0001)
    assert queue.take(2.002, coming=3) == [third]
    no_delay = BatchQueue(max_batch_size=8, max_queue_delay=0.0)
    no_delay.add(fourth := item(runtime, 3.0))
    assert no_delay.take(3.0, coming=3) == [fourth]


def test_a_model_without_batches_runs_one_image_at_a_time() -> None:
    runtime = FakeRuntime()
    queue = BatchQueue(max_batch_size=8, max_queue_delay=1.0)
    items = [item(runtime, 0.0, limit=1) for _ in range(3)]
    for one in items:
        queue.add(one)
    assert [queue.take(0.0, coming=9) for _ in items] == [[one] for one in items]


def test_a_batch_never_mixes_runtimes_and_the_oldest_image_goes_first() -> None:
    a, b = FakeRuntime(), FakeRuntime()
    queue = BatchQueue(max_batch_size=2, max_queue_delay=0.0)
    a1, b1, a2, b2, a3 = item(a, 0), item(b, 1), item(a, 2), item(b, 3), item(a, 4)
    for one in (a1, b1, a2, b2, a3):
        queue.add(one)
    assert queue.take(9, coming=0) == [a1, a2]
    assert queue.take(9, coming=0) == [b1, b2]  # b1 came before a3
    assert queue.take(9, coming=0) == [a3]


def test_closing_takes_partial_batches_at_once() -> None:
    queue = BatchQueue(max_batch_size=8, max_queue_delay=60.0)
    queue.add(one := item(FakeRuntime(), 0.0))
    assert queue.take(0.0, coming=3, closing=True) == [one]


# --- the batcher's thread, with a fake runtime -----------------------------------------------------


def test_a_full_batch_runs_without_waiting_out_the_delay(make_batcher: Callable[..., Batcher]) -> None:
    runtime = FakeRuntime()
    batcher = make_batcher(max_batch_size=4, max_queue_delay_us=FOREVER_US)
    with batcher.incoming():  # another request is being decoded: only the size can close the batch
        waiting = [batcher.submit(runtime, image(v), batched=True) for v in (1, 2, 3, 4)]
        assert all(p.done(timeout=30) for p in waiting)
    assert runtime.batches == [[1, 2, 3, 4]]
    for v, pending in zip((1, 2, 3, 4), waiting, strict=True):
        np.testing.assert_array_equal(pending.result(), [[v, -v]])  # its own row, shape (1, classes)
    assert batcher.stats() == BatchStats(sizes=(0, 0, 0, 1), failed=0, waiting=0)


def test_a_partial_batch_waits_for_the_delay_while_a_request_is_decoding(
    make_batcher: Callable[..., Batcher],
) -> None:
    runtime = FakeRuntime()
    batcher = make_batcher(max_batch_size=8, max_queue_delay_us=50_000)
    with batcher.incoming():
        start = time.monotonic()
        pending = batcher.submit(runtime, image(1), batched=True)
        assert pending.done(timeout=30)
        assert time.monotonic() - start >= 0.05
    assert runtime.batches == [[1]]


def test_a_batch_runs_once_no_request_is_being_decoded(make_batcher: Callable[..., Batcher]) -> None:
    runtime = FakeRuntime()
    batcher = make_batcher(max_batch_size=8, max_queue_delay_us=FOREVER_US)
    with batcher.incoming():
        first = batcher.submit(runtime, image(1), batched=True)
        second = batcher.submit(runtime, image(2), batched=True)
        assert not first.done(timeout=0.05)  # waiting for the image being decoded
    assert first.done(timeout=30) and second.done(timeout=30)
    assert runtime.batches == [[1, 2]]
    alone = batcher.submit(runtime, image(3), batched=True)
    assert alone.done(timeout=30)  # a lone request does not wait out the delay
    assert runtime.batches == [[1, 2], [3]]


def test_a_model_without_batches_is_run_image_by_image(make_batcher: Callable[..., Batcher]) -> None:
    runtime = FakeRuntime()
    batcher = make_batcher(max_batch_size=4, max_queue_delay_us=FOREVER_US)
    with batcher.incoming():
        waiting = [batcher.submit(runtime, image(v), batched=False) for v in (1, 2, 3)]
        assert all(p.done(timeout=30) for p in waiting)
    assert runtime.batches == [[1], [2], [3]]
    assert batcher.stats().sizes == (3, 0, 0, 0)


def test_images_queue_while_a_batch_runs_and_keep_their_order(make_batcher: Callable[..., Batcher]) -> None:
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)
    batcher = make_batcher(max_batch_size=4, max_queue_delay_us=0)
    first = batcher.submit(runtime, image(1), batched=True)
    assert runtime.running.wait(30)
    # the connection threads go on decoding and queueing while the batcher infers
    later = [batcher.submit(runtime, image(v), batched=True) for v in (2, 3, 4)]
    assert batcher.stats().waiting == 3 and not first.done(timeout=0)
    gate.set()
    assert all(p.done(timeout=30) for p in [first, *later])
    assert runtime.batches == [[1], [2, 3, 4]]
    for v, pending in zip((1, 2, 3, 4), [first, *later], strict=True):
        np.testing.assert_array_equal(pending.result(), [[v, -v]])
    stats = batcher.stats()
    assert (stats.batches, stats.images, stats.sizes) == (2, 4, (1, 0, 1, 0))


def test_a_failed_batch_fails_its_requests_only_and_the_batcher_goes_on(
    make_batcher: Callable[..., Batcher],
) -> None:
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate, fail_on=13, crash_on=66)
    batcher = make_batcher(max_batch_size=4, max_queue_delay_us=0)

    def batch_after_the_first(*values: float) -> list[Pending]:
        """``values`` queued together while the gate holds a first image, then released."""
        gate.clear()
        runtime.running.clear()
        first = batcher.submit(runtime, image(0), batched=True)
        assert runtime.running.wait(30)
        queued = [batcher.submit(runtime, image(v), batched=True) for v in values]
        gate.set()
        assert all(p.done(timeout=30) for p in [first, *queued])
        return queued

    for pending in batch_after_the_first(13, 2):
        with pytest.raises(InferenceError, match=r"^the model failed to run on the input$"):
            pending.result()
    for pending in batch_after_the_first(66, 3):  # not an InferenceError: nothing of it is quoted
        with pytest.raises(InferenceError, match=f"^{FAILED_MESSAGE}$"):
            pending.result()
    runtime.drop_a_row = True
    for pending in batch_after_the_first(4, 5):
        with pytest.raises(InferenceError, match=r"^the model gave 1 rows of scores for a batch of 2$"):
            pending.result()
    runtime.drop_a_row = False
    [fine] = batch_after_the_first(7)
    np.testing.assert_array_equal(fine.result(), [[7, -7]])
    assert batcher.stats().failed == 3


def test_close_runs_the_queued_images_then_refuses_new_ones(make_batcher: Callable[..., Batcher]) -> None:
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)
    batcher = make_batcher(max_batch_size=4, max_queue_delay_us=FOREVER_US)
    with batcher.incoming():  # without close, the queued images would wait for this one
        first = batcher.submit(runtime, image(1), batched=False)
        assert runtime.running.wait(30)
        queued = [batcher.submit(runtime, image(v), batched=True) for v in (2, 3)]
        closer = threading.Thread(target=batcher.close)
        closer.start()
        gate.set()
        closer.join(30)
        assert not closer.is_alive()
        assert all(p.done(timeout=0) for p in [first, *queued])
        with pytest.raises(InferenceError, match="shutting down"):
            batcher.submit(runtime, image(4), batched=True)
    assert runtime.batches == [[1], [2, 3]]
    make_batcher(max_batch_size=1, max_queue_delay_us=0).close()  # never started: nothing to stop


# --- real models -------------------------------------------------------------------------------------


@pytest.fixture
def no_files(tmp_path: Path) -> str:
    folder = tmp_path / "no-files"
    folder.mkdir()
    return str(folder)


def colour_tensors(pre: Preprocessing) -> list[np.ndarray]:
    return [to_tensor(decode_image(png(c), max_pixels=10**6), pre) for c in COLOURS]


def test_a_real_onnx_batch_gives_each_image_what_it_gets_alone(
    make_batcher: Callable[..., Batcher], no_files: str
) -> None:
    runtime = load_onnx(colour_model(), threads=1, no_files_dir=no_files)
    tensors = colour_tensors(Preprocessing())
    alone = [runtime.run(t) for t in tensors]
    batcher = make_batcher(max_batch_size=len(tensors), max_queue_delay_us=FOREVER_US)
    with batcher.incoming():
        waiting = [batcher.submit(runtime, t, batched=True) for t in tensors]
    for pending, expected in zip(waiting, alone, strict=True):
        np.testing.assert_allclose(pending.result(), expected, rtol=0, atol=1e-5)
    assert batcher.stats().sizes[-1] == 1  # all of them in one batch


def mixing_model() -> bytes:
    """Symbolic batch, but each image's scores depend on the others': logits + their batch mean."""
    weights = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "W"], ["mm"]),
            helper.make_node("ReduceMean", ["mm", "batch_axis"], ["mean"], keepdims=1),
            helper.make_node("Add", ["mm", "mean"], ["logits"]),
        ],
        "mixing",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "batch_axis"),
            numpy_helper.from_array(weights, "W"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


def test_takes_batches_for_onnx(no_files: str) -> None:
    example = np.zeros(Preprocessing().input_shape(), dtype=np.float32)
    dynamic = load_onnx(colour_model(), threads=1, no_files_dir=no_files)
    fixed = load_onnx(colour_model(batch=1), threads=1, no_files_dir=no_files)
    mixing = load_onnx(mixing_model(), threads=1, no_files_dir=no_files)
    assert (dynamic.declared_batch, fixed.declared_batch, mixing.declared_batch) == (None, 1, None)
    assert takes_batches(dynamic, example, 2) and takes_batches(dynamic, example, 8)
    assert not takes_batches(fixed, example, 2)  # known from its input, without a run
    assert not takes_batches(mixing, example, 2)  # one request's image would change another's answer
    with pytest.raises(ValueError, match="at least 2"):
        takes_batches(dynamic, example, 1)


def torchscript(module: Any, size: int) -> bytes:
    import io
    import warnings

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates TorchScript; tracing warns of view(1, -1)
        traced = torch.jit.trace(module.eval(), torch.zeros(1, 3, size, size))
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def test_takes_batches_for_torchscript_tries_a_batch() -> None:
    pytest.importorskip("torch")
    from tests.helpers import TinyCNN

    class BatchOfOne(TinyCNN):
        """Hard-codes a batch of one, as a model traced with view(1, -1) does."""

        def forward(self, x: Any) -> Any:
            return self.fc(self.pooled(x).view(1, -1))

    example = np.zeros((1, 3, 32, 32), dtype=np.float32)
    dynamic = load_torch(torchscript(TinyCNN(4), 32), fmt="torchscript", threads=1)
    single = load_torch(torchscript(BatchOfOne(4), 32), fmt="torchscript", threads=1)
    assert dynamic.declared_batch is None and single.declared_batch is None
    assert takes_batches(dynamic, example, 4)
    assert single.run(example).shape == (1, 4)  # it serves, one image at a time
    assert not takes_batches(single, example, 2)


# --- the model store: decoding in parallel, inference in batches ----------------------------------------


def config(**batching: int) -> EnclaveConfig:
    # One decode at a time: the other requests count as on their way, so a batch waits for them.
    return EnclaveConfig(
        owner_public_key=public_key_bytes(OWNER),
        limits=Limits(max_concurrent_decodes=1),
        batching=Batching(
            **{"max_batch_size": len(COLOURS), "max_queue_delay_us": MAX_QUEUE_DELAY_US, **batching}
        ),
    )


class Served:
    """A sealed store and the classifier that serves what its state holds, as the enclave has them."""

    def __init__(self, store: ModelStore, classifier: Classifier) -> None:
        self.store, self.classifier = store, classifier
        self.begin, self.install = store.begin, store.install
        self.classify, self.batch_stats = classifier.classify, classifier.batch_stats

    @property
    def current(self) -> LoadedModel | None:
        return self.store.current


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    made: list[Served] = []

    def make(cfg: EnclaveConfig | None = None) -> Served:
        cfg = cfg or config()
        store = ModelStore(
            cfg, Sealer(SimulationPlatform(cfg).sealing_key()), tmp_path / f"sealed{len(made)}"
        )
        made.append(Served(store, Classifier(cfg, store.state)))
        return made[-1]

    yield make
    for served in made:
        served.classifier.close()


def provision(store: Served, files: list[tuple[str, bytes]], labels: list[str], version: int = 1) -> None:
    model = b"".join(data for _, data in files)
    described = tuple(ModelFile(fmt, hashlib.sha256(data).hexdigest(), len(data)) for fmt, data in files)
    pending = store.begin(*Manifest(described, tuple(labels), {}, version).sign(OWNER))
    try:
        pending.write(model)
        pending.finish()
    finally:
        pending.abort()


def concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` in threads of their own, started together; each result or the exception raised."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait(30)
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    return results


def probabilities(result: Classification) -> dict[str, dict[int, float]]:
    runs = result.by_runtime or {"": result.results}
    return {name: {p.index: p.probability for p in predictions} for name, predictions in runs.items()}


def assert_same(batched: Classification, alone: Classification) -> None:
    assert batched.model_sha256 == alone.model_sha256
    a, b = probabilities(batched), probabilities(alone)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys()
        for index, probability in a[name].items():
            assert abs(probability - b[name][index]) < 1e-5


def test_concurrent_requests_are_batched_and_get_what_they_get_alone(
    stores: Callable[..., Served],
) -> None:
    store = stores()
    provision(store, [("onnx", colour_model())], COLOUR_LABELS)
    assert store.current is not None and store.current.batched == {"onnx"}
    images = [png(c) for c in COLOURS]
    alone = [store.classify(i, 4) for i in images]  # one at a time: batches of one
    assert store.batch_stats().sizes[0] == len(images)
    calls = [lambda i=i: store.classify(i, 4) for i in images] + [lambda: store.classify(b"not an image", 4)]
    *batched, bad = concurrently(calls)
    for result, expected in zip(batched, alone, strict=True):
        assert_same(result, expected)
    assert [r.results[0].label for r in batched[:3]] == ["red", "green", "blue"]
    assert isinstance(bad, ModelError) and bad.problem is Problem.INVALID_IMAGE  # it alone fails
    stats = store.batch_stats()
    assert stats.images == 2 * len(images)  # the bad image never reached a batch
    assert max(n for n, count in enumerate(stats.sizes, start=1) if count) > 1  # batches were used


@pytest.mark.parametrize(
    ("model", "settings"),
    [(colour_model(batch=1), {}), (colour_model(), {"max_batch_size": 1})],
    ids=["fixed-batch-of-one", "batching-off"],
)
def test_one_image_at_a_time_for_a_fixed_batch_model_or_with_batching_off(
    stores: Callable[..., Served], model: bytes, settings: dict[str, int]
) -> None:
    store = stores(config(**settings))
    provision(store, [("onnx", model)], COLOUR_LABELS)
    assert store.current is not None and store.current.batched == frozenset()
    results = concurrently([lambda c=c: store.classify(png(c), 1) for c in COLOURS[:4]])
    assert [r.results[0].label for r in results][:3] == ["red", "green", "blue"]
    assert store.batch_stats().sizes[0] == 4 and sum(store.batch_stats().sizes[1:]) == 0


def test_both_runtimes_batch_and_agree_with_one_by_one(stores: Callable[..., Served], tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    from enclave_infer.client.export import export_onnx
    from tests.helpers import TinyCNN

    torch.manual_seed(0)
    model = TinyCNN(4).eval()
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(model, onnx_path)
    store = stores()
    provision(
        store, [("onnx", onnx_path.read_bytes()), ("torchscript", torchscript(model, 224))], list("abcd")
    )
    assert store.current is not None and store.current.batched == {"onnx", "torch"}
    images = [png(c) for c in COLOURS]
    alone = [store.classify(i, 4, Runtime.BOTH) for i in images]
    batched = concurrently([lambda i=i: store.classify(i, 4, Runtime.BOTH) for i in images])
    for result, expected in zip(batched, alone, strict=True):
        assert result.by_runtime.keys() == {"onnx", "torch"}
        assert_same(result, expected)
    assert max(n for n, count in enumerate(store.batch_stats().sizes, start=1) if count) > 1


def fake_model(runtime: FakeRuntime, version: int) -> LoadedModel:
    manifest = Manifest((ModelFile("onnx", f"{version:064x}", 1),), ("plus", "minus"), {}, version)
    return LoadedModel(manifest, b"", Preprocessing(), {"onnx": runtime}, frozenset({"onnx"}), 0.0)


def test_a_provision_while_images_wait_never_mixes_models(stores: Callable[..., Served]) -> None:
    gate = threading.Event()
    old_runtime, new_runtime = FakeRuntime(gate=gate), FakeRuntime()
    store = stores(config(max_queue_delay_us=0))
    old = fake_model(old_runtime, 1)
    store.install(old, commit=None)
    sha = old.manifest.model_sha256
    results: dict[str, Any] = {}

    def classify(name: str, pinned: str | None) -> threading.Thread:
        thread = threading.Thread(
            target=lambda: results.update({name: store.classify(png((9, 9, 9)), 1, pinned=pinned)})
        )
        thread.start()
        return thread

    threads = [classify("running", None)]
    assert old_runtime.running.wait(30)  # the old model's first batch is running, held at the gate
    threads.append(classify("queued", sha))
    until(lambda: store.batch_stats().waiting == 1)
    store.install(fake_model(new_runtime, 2), commit=None)  # a provision swaps the model meanwhile
    with pytest.raises(ModelError) as refused:
        store.classify(png((9, 9, 9)), 1, pinned=sha)  # a pin to the old model, arriving after the swap
    assert refused.value.problem is Problem.MODEL_PIN_MISMATCH
    threads.append(classify("after", None))
    until(lambda: store.batch_stats().waiting == 2)  # both wait behind the running batch
    gate.set()
    for thread in threads:
        thread.join(30)
    assert results["running"].model_sha256 == results["queued"].model_sha256 == sha
    assert store.current is not None
    assert results["after"].model_sha256 == store.current.manifest.model_sha256 != sha
    assert len(old_runtime.batches) == 2 and len(new_runtime.batches) == 1  # no batch held both models
    assert [len(b) for b in old_runtime.batches + new_runtime.batches] == [1, 1, 1]


# --- the measured configuration --------------------------------------------------------------------


def test_batching_is_measured_with_named_defaults() -> None:
    key = public_key_bytes(OWNER)
    default = EnclaveConfig(owner_public_key=key)
    assert default.batching == Batching(max_batch_size=8, max_queue_delay_us=2000)
    assert (default.limits.max_concurrent_requests, default.limits.max_concurrent_decodes) == (16, 4)
    assert b'"batching":{"max_batch_size":8,"max_queue_delay_us":2000}' in default.canonical()
    assert EnclaveConfig.from_canonical(default.canonical()) == default
    other = EnclaveConfig(owner_public_key=key, batching=Batching(max_queue_delay_us=0))
    assert code_hash(other) != code_hash(default)


def test_batching_from_toml(tmp_path: Path) -> None:
    toml = tmp_path / "enclave.toml"
    toml.write_text("[batching]\nmax_batch_size = 4\nmax_queue_delay_us = 500\n")
    loaded = EnclaveConfig.load(toml, owner_public_key=public_key_bytes(OWNER))
    assert loaded.batching == Batching(max_batch_size=4, max_queue_delay_us=500)
    for text, message in (
        ("[batching]\nmax_batch_sise = 4\n", r"unknown key\(s\) in \[batching\]: max_batch_sise"),
        ("batching = 4\n", r"\[batching\] must be a table"),
    ):
        toml.write_text(text)
        with pytest.raises(UsageError, match=message):
            EnclaveConfig.load(toml, owner_public_key=public_key_bytes(OWNER))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_batch_size", 0),
        ("max_batch_size", MAX_BATCH_SIZE + 1),
        ("max_batch_size", True),
        ("max_batch_size", "8"),
        ("max_queue_delay_us", -1),
        ("max_queue_delay_us", MAX_QUEUE_DELAY_US + 1),
        ("max_queue_delay_us", 2.5),
    ],
)
def test_batching_settings_are_validated(field: str, value: object) -> None:
    with pytest.raises(UsageError, match=rf"^batching\.{field} must be an integer from \d+ to \d+, got "):
        Batching(**{field: value})


def test_max_concurrent_decodes_is_a_validated_limit() -> None:
    with pytest.raises(UsageError, match=r"limits\.max_concurrent_decodes must be a positive integer"):
        Limits(max_concurrent_decodes=0)
