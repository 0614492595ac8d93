"""The inference runtimes a provisioned model can be served with: ONNX Runtime, or torch (TorchScript).

Trusted code. A :class:`Runtime` runs a batch of preprocessed image tensors and returns their
scores. The loaders turn the owner's model bytes into one, refusing anything that is not a model of
the expected format with :class:`RuntimeLoadError`, whose message is one line and never quotes the model:

* :func:`load_onnx`: ONNX Runtime, the default, and the only runtime the enclave needs to ship.
* :func:`load_torch`: a TorchScript archive (``torch.jit.save``), for owners who want PyTorch's
  own kernels. torch is imported only when a torch model is loaded (here and by the TorchScript
  checks of :mod:`enclave_infer.protocol.modelcheck`), so an enclave image without torch serves
  ONNX as before (:func:`torch_available`).
* :func:`check_scores`: the trial run that shows a loaded model accepts the manifest's input and
  yields one finite score per label, for a blank and a pseudo-random image.
* :func:`takes_batches`: whether a loaded model may be given several images in one run (its input
  has no fixed batch of one, and a trial batch gives each image the scores it gets alone).

What the loaders execute (checked in torch 2.13's Python sources and, for the C++ parts the wheel
does not ship, in pytorch's repository; the refusals are exercised in tests/unit/test_runtimes.py):

* ``onnxruntime.InferenceSession(bytes)`` parses a protobuf and builds a graph of ONNX Runtime's own
  kernels. Nothing in an ONNX file is code; the one way out of the file is "external data" (tensors
  read from files named in the model), which is pointed at an empty private folder here.
* ``torch.jit.load`` (``torch/jit/_serialization.py``, ``load``) hands the bytes to C++
  (``torch._C.import_ir_module_from_buffer``). Its unpickler (``torch/csrc/jit/serialization/
  unpickler.cpp``, ``Unpickler::readGlobal``) is not Python's: it knows a fixed list of globals
  (tensor rebuilding, typed lists, ``OrderedDict``, ``torch.device``, ...) and resolves every other
  name to a TorchScript class compiled from the archive's ``code/`` folder, so no Python callable is
  ever looked up or called, and a Python pickle is refused. But an archive is not data only: its
  ``code/`` is TorchScript source that is compiled on load, a class's ``__setstate__`` *runs* during
  loading (``import.cpp``, ``obj_loader``), and ``forward`` may call any registered operator, among
  them ``aten::save`` (writes a file), ``aten::from_file`` (reads one) and ``prim::Print`` (writes to
  stdout, i.e. to the host). Hence two checks around :func:`torch.jit.load`, both in
  :mod:`enclave_infer.protocol.modelcheck` (which the owner's tooling applies too, before an
  upload): before it, the archive must be a plain TorchScript zip (one folder, stored or deflated
  entries that inflate to at most ``MAX_INFLATED_BYTES`` together, no legacy ``model.json``)
  whose code defines no ``__setstate__`` and uses no ``torch.classes`` objects (so that loading runs
  nothing of the model's); after it, every operator ``forward`` can reach (inlined, through every
  branch and loop) must come from ``aten``/``prim`` and not be one that does I/O or escapes
  inspection, and the module, frozen in eval mode (``torch.jit.freeze``: training branches gone),
  must write to none of its attributes or tensors; the frozen module is the one served.
  The C++ parsers themselves (zip reader, unpickler, TorchScript compiler), like ONNX
  Runtime's protobuf parser, still see the bytes: the owner's signature is what keeps them trusted.
* ``torch.export.load`` is NOT accepted: it can run arbitrary code from the file.
  ``torch/export/pt2_archive/_package.py`` unpickles any weight or constant whose JSON config says
  ``use_pickle`` with ``torch.load(..., weights_only=False)`` (``_load_state_dict``,
  ``_load_constants``), unpickles "opaque" constants with ``pickle.loads``, and loads any AOTInductor
  shared library the archive holds (``_load_aoti``); ``torch/_export/serde/serialize.py`` falls
  back to ``weights_only=False`` when the sample inputs do not load safely
  (``deserialize_torch_artifact``), evaluates every symbolic-shape string with ``sympy.sympify``
  (Python ``eval``, ``GraphModuleDeserializer._parse_sym_expr``) and resolves node targets by
  ``getattr`` from the ``torch`` module, so a graph can call e.g. ``torch.os.system``
  (``deserialize_operator``). A manifest names no such format (``protocol/manifest.py``), so an
  ExportedProgram never reaches a loader here; its bytes labelled as TorchScript fail the archive
  check before torch parses them.
"""

from __future__ import annotations

import importlib.util
import io
import threading
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from enclave_infer.enclave._modelfiles import LinkedFile
from enclave_infer.errors import EnclaveInferError
from enclave_infer.protocol import api
from enclave_infer.protocol.manifest import ModelFormat
from enclave_infer.protocol.modelcheck import (
    ModelRefused,
    audit_torchscript,
    check_finite,
    check_torchscript_archive,
    trial_inputs,
)

__all__ = [
    "InferenceError",
    "Runtime",
    "RuntimeLoadError",
    "check_scores",
    "load_onnx",
    "load_torch",
    "takes_batches",
    "torch_available",
]

EXTERNAL_DATA_MESSAGE = "the model keeps tensors in external data files; send one self-contained file"
NOT_ONNX_MESSAGE = "the model is not a valid ONNX model"
NOT_TORCHSCRIPT_MESSAGE = "the model is not a valid TorchScript archive"  # as modelcheck says it
_ORT_FAIL = ort.capi.onnxruntime_pybind11_state.Fail
BAD_INPUT_MESSAGE = "the model does not accept a preprocessed image of the manifest's size"

_TORCH_LOCK = threading.Lock()


class RuntimeLoadError(EnclaveInferError):
    """The model cannot be served: not a valid model of its format, or not one this enclave runs.
    The message is one line and never quotes the model."""


class InferenceError(EnclaveInferError):
    """A loaded model failed on an input. The message is fixed and never quotes the model."""


class _OutputError(InferenceError):
    """The model ran but did not return one tensor."""


class Runtime(Protocol):
    """A loaded model: ``run`` takes a preprocessed float32 image batch (images as
    :func:`~enclave_infer.enclave.preprocess.to_tensor` makes them, stacked along the first axis: one
    image unless :func:`takes_batches` said more) and returns their scores, a float array of shape
    ``(batch, classes)``. Safe to call from several threads at once. ``declared_batch``: the batch
    size the model's input declares, None when it is symbolic or not declared (TorchScript)."""

    name: api.Runtime
    declared_batch: int | None

    def run(self, tensor: NDArray[np.float32]) -> NDArray[Any]: ...


# -- ONNX Runtime ------------------------------------------------------------------------------


class _OnnxRuntime:
    name = ModelFormat.ONNX.runtime

    def __init__(self, session: ort.InferenceSession, input_name: str, declared_batch: int | None) -> None:
        self.session = session
        self.input_name = input_name
        self.declared_batch = declared_batch

    def run(self, tensor: NDArray[np.float32]) -> NDArray[Any]:
        try:
            outputs = self.session.run(None, {self.input_name: tensor})
        except Exception:  # ONNX Runtime's messages name the model's tensors
            raise InferenceError("the model failed to run on the input") from None
        return np.asarray(outputs[0])


def load_onnx(model: bytes | Path | LinkedFile, *, threads: int, no_files_dir: str) -> Runtime:
    """Load an ONNX model (its bytes, or a file holding them) into ONNX Runtime.

    ``threads``: the intra-op thread pool's size. ``no_files_dir``: an empty folder that only this
    process can write to; "external data" tensors are looked up there, so a model that needs any
    fails to load (a model given as bytes would otherwise read them from files in the working
    directory, which the host controls, outside the signed hash). A
    :class:`~enclave_infer.enclave._modelfiles.LinkedFile` (a link to a memory file, alone in a
    private folder) is loaded by its path, which takes half the memory of bytes; a plain path is
    read into memory first, so that files next to it are never consulted.
    Raises :class:`RuntimeLoadError` if it is not a valid, self-contained ONNX model with one input.
    """
    data: bytes | str = str(model.path) if isinstance(model, LinkedFile) else _read(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = _positive(threads)
    # Idle pool threads sleep instead of spinning: between batches a server has nothing to do, and
    # spinning workers would take the core from the threads decoding the next requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 4  # fatal only: ONNX Runtime's messages name the model's tensors
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", no_files_dir)
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own types, several of them, for bad models
        # The one decision on message text here, because ONNX Runtime allows no other: a tensor in
        # external data fails with its generic status type (Fail, as do many other failures), and
        # the model cannot be parsed without ONNX Runtime (the enclave has no onnx package). Either
        # way the model is refused; the text only chooses which of two messages the owner reads.
        if isinstance(exc, _ORT_FAIL) and "external data" in str(exc).lower():
            raise RuntimeLoadError(EXTERNAL_DATA_MESSAGE) from None
        raise RuntimeLoadError(NOT_ONNX_MESSAGE) from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise RuntimeLoadError(f"the model must take one input tensor, it takes {len(inputs)}")
    shape = inputs[0].shape  # ONNX Runtime gives a symbolic dimension as a str (or None)
    batch = shape[0] if shape and isinstance(shape[0], int) else None
    return _OnnxRuntime(session, inputs[0].name, batch)


# -- torch -------------------------------------------------------------------------------------


def torch_available() -> bool:
    """Whether torch is installed, so that :func:`load_torch` can work. Does not import it."""
    return importlib.util.find_spec("torch") is not None


class _TorchRuntime:
    name = ModelFormat.TORCHSCRIPT.runtime
    declared_batch: int | None = None  # a TorchScript module declares no input shape: takes_batches tries one

    def __init__(self, module: Any, torch: Any) -> None:
        self.module = module
        self._torch = torch

    def run(self, tensor: NDArray[np.float32]) -> NDArray[Any]:
        torch = self._torch
        array = np.asarray(tensor)
        if array.dtype != np.float32 or not array.flags.writeable:
            # torch.from_numpy shares memory, and so wants a writable array of the model's dtype.
            array = np.array(array, dtype=np.float32)
        try:
            with torch.inference_mode():
                # forward() itself, not __call__: hooks would run code the audit did not see
                output = self.module.forward(torch.from_numpy(array))
        except Exception:  # TorchScript's messages quote the model's code
            raise InferenceError("the model failed to run on the input") from None
        if not isinstance(output, torch.Tensor):
            raise _OutputError(f"the model must return one tensor, it returned {type(output).__name__}")
        return np.asarray(output.detach().cpu().numpy())


def load_torch(model: bytes | Path | LinkedFile, *, fmt: str, threads: int) -> Runtime:
    """Load a torch model (its bytes, or a file holding them) of format ``fmt``, which must be
    ``"torchscript"`` (a ``torch.jit.save`` archive), after the checks the module docstring
    describes. No other torch format reaches here: a manifest names only ONNX and TorchScript files
    (an ExportedProgram, whose loader runs code from the file, is refused there, and its bytes
    labelled as TorchScript fail the archive check). ``threads``: torch's intra-op thread count
    (process-wide; set when a model is loaded, never per inference). Raises
    :class:`RuntimeLoadError`; no torch exception escapes.
    """
    if fmt != ModelFormat.TORCHSCRIPT:
        raise RuntimeLoadError(f"the torch runtime loads TorchScript archives, not {fmt!r}")
    threads = _positive(threads)
    data = _read(model)
    try:
        check_torchscript_archive(data)
    except ModelRefused as exc:
        raise RuntimeLoadError(str(exc)) from None
    try:
        import torch
    except ImportError:
        raise RuntimeLoadError("torch is not installed in this enclave; send the model as ONNX") from None
    with _TORCH_LOCK:
        try:
            with warnings.catch_warnings():
                # torch 2.13 deprecates TorchScript; the warning says nothing about this model.
                warnings.filterwarnings(
                    "ignore", message=r".*torch\.jit\.load.*", category=DeprecationWarning
                )
                module = torch.jit.load(io.BytesIO(data), map_location="cpu")  # type: ignore[no-untyped-call]
        except Exception:  # RuntimeError from C++ for most problems, a few other types for the rest
            raise RuntimeLoadError(NOT_TORCHSCRIPT_MESSAGE) from None
        try:
            module = audit_torchscript(module)  # frozen in eval mode: what was audited is served
        except ModelRefused as exc:
            raise RuntimeLoadError(str(exc)) from None
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return _TorchRuntime(module, torch)


# -- both --------------------------------------------------------------------------------------


def check_scores(runtime: Runtime, example: NDArray[np.float32], classes: int) -> None:
    """The load trial: run ``runtime`` on inputs of ``example``'s shape (a preprocessed image of the
    manifest's size; its values are not used), a blank image and a fixed pseudo-random one
    (:func:`~enclave_infer.protocol.modelcheck.trial_inputs`), and check that each yields ``(1,
    classes)`` finite float scores; else :class:`RuntimeLoadError`. A model whose scores are NaN or
    infinite (a damaged weight will do) would fail every classification."""
    for trial in trial_inputs(np.shape(example)):
        try:
            scores = runtime.run(trial)
        except _OutputError as exc:
            raise RuntimeLoadError(str(exc)) from None
        except Exception:
            raise RuntimeLoadError(BAD_INPUT_MESSAGE) from None
        if np.shape(scores) != (1, classes):
            raise RuntimeLoadError(
                f"model output shape {np.shape(scores)}, expected (1, {classes}) for its labels"
            )
        if not np.issubdtype(np.asarray(scores).dtype, np.floating):
            raise RuntimeLoadError(
                f"model output is {np.asarray(scores).dtype}, expected floating-point scores"
            )
        try:
            check_finite(scores)
        except ModelRefused as exc:
            raise RuntimeLoadError(str(exc)) from None


# A model that mixes the images of a batch (statistics over the batch axis) gives them scores that differ
# from their own by far more than this; batched and single runs of one model differ by rounding only.
_BATCH_RTOL, _BATCH_ATOL = 1e-4, 1e-5


def takes_batches(runtime: Runtime, example: NDArray[np.float32], size: int) -> bool:
    """Whether ``runtime`` may be given ``size`` (at least 2) images in one run, after
    :func:`check_scores` passed on ``example`` (a batch of one image, zeros will do).

    Not if the model's input declares a fixed batch (of one: :func:`check_scores` ran one). Else a
    trial batch of ``size`` images, two different ones taking turns, must run and give every image
    the scores it gets alone. A model that fails on it (a TorchScript module traced for a batch of
    one, an ONNX graph with a batch of one folded into a reshape) or that mixes the images of a batch
    (a statistic over the batch axis, which would let one request's image change another's answer)
    runs one image at a time. A trial on two images catches a model that always mixes them, not one
    built to hide it (README, Known limitations).
    """
    if size < 2:
        raise ValueError(f"a trial batch needs at least 2 images, got {size}")
    if runtime.declared_batch is not None:
        return False
    other = np.linspace(-2.0, 2.0, example.size, dtype=np.float32).reshape(example.shape)
    images = (other, np.asarray(example, dtype=np.float32))
    try:
        alone = [np.asarray(runtime.run(image)) for image in images]
        together = np.asarray(runtime.run(np.concatenate([images[i % 2] for i in range(size)])))
    except InferenceError:  # the model's own failure on a batch: it serves one image at a time
        return False
    expected = np.concatenate([alone[i % 2] for i in range(size)])
    return together.shape == expected.shape and bool(
        np.allclose(together, expected, rtol=_BATCH_RTOL, atol=_BATCH_ATOL)
    )


def _read(model: bytes | Path | LinkedFile) -> bytes:
    if isinstance(model, LinkedFile):
        model = model.path
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model)
    if isinstance(model, Path):
        try:
            return model.read_bytes()
        except OSError as exc:
            raise RuntimeLoadError(f"cannot read the model file: {exc.strerror}") from None
    raise TypeError(f"model must be bytes or a Path, not {type(model).__name__}")


def _positive(threads: int) -> int:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return threads
