"""The owner-side toolkit of the exporters (export.py): export, check and write model files.

Client side of the trust boundary: runs on the model owner's own machine (untrusted by the enclave,
which only ever receives the files written here), never in the enclave, and never imports it. torch,
onnx and onnxruntime are imported inside the functions, so this module imports without them. Every
check raises :class:`~enclave_infer.errors.UsageError` with a one-line message.

* Exporting: :func:`exporting` (what every export starts with: the model is checked, in eval mode, and
  run once by :func:`check_runs` on :func:`example_batch`), :func:`write_onnx` (one self-contained ONNX
  file, with input :data:`INPUT_NAME` and output :data:`OUTPUT_NAME`, checked against torch).
* ONNX files: :func:`check_onnx_file` and :func:`uses_external_data`, within :data:`MAX_ONNX_BYTES`
  (:data:`MAX_WEIGHT_BYTES` for the weights); a file with external data raises
  :class:`ExternalDataError`.
* Files: :func:`check_destination`, :func:`atomic_output` (written next to the destination, renamed
  into place), :func:`copy_model`.
* Torch's tools: :func:`tool_errors` and :func:`first_line` turn their errors into one line,
  :func:`quiet_exporter` hides the exporter's noise; :func:`silent` is the ``progress`` callback when
  none is given.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from enclave_infer.client._model_input import ModelInput, input_mismatch, output_mismatch, run_failure
from enclave_infer.errors import UsageError
from enclave_infer.protocol.modelcheck import ModelRefused, check_finite, trial_inputs

if TYPE_CHECKING:
    import onnx
    import torch

__all__ = [
    "INPUT_NAME",
    "MAX_ONNX_BYTES",
    "MAX_WEIGHT_BYTES",
    "OUTPUT_NAME",
    "ExternalDataError",
    "atomic_output",
    "check_destination",
    "check_onnx_file",
    "check_runs",
    "copy_model",
    "example_batch",
    "exporting",
    "finite",
    "first_line",
    "quiet_exporter",
    "silent",
    "tool_errors",
    "uses_external_data",
    "write_onnx",
]


class ExternalDataError(UsageError):
    """An ONNX file keeps tensors in external data files, which the enclave refuses; the owner's
    tooling can fold them into one file (:func:`~enclave_infer.client.export.export_formats`)."""


INPUT_NAME = "input"
OUTPUT_NAME = "logits"

# What to do about a model whose scores are not finite, which the enclave refuses.
NOT_FINITE_FIX = (
    "the enclave refuses it; a weight is NaN or infinite (a damaged file?) or the model overflows: "
    "export it again from a model whose outputs are finite"
)

# A protobuf message, and so an ONNX file with its weights inside, cannot reach 2 GiB. Leave room for
# the graph itself next to the weights.
MAX_ONNX_BYTES = 2**31 - 1
MAX_WEIGHT_BYTES = MAX_ONNX_BYTES - 64 * 2**20


def write_onnx(
    model: torch.nn.Module,
    dest: Path,
    want: ModelInput,
    *,
    classes: int | None,
    report: Callable[[str], None],
    opset: int | None = None,
) -> None:
    """Export ``model`` to ``dest`` as one self-contained ONNX file taking ``want``, checked against
    torch: :func:`~enclave_infer.client.export.export_onnx` (which documents it) with its arguments
    checked."""
    import torch

    with exporting(model, dest, want, classes) as example:
        weight_bytes = sum(
            t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers())
        )
        if weight_bytes > MAX_WEIGHT_BYTES:
            raise UsageError(
                f"the model's weights are {weight_bytes / 2**30:.2f} GiB; an ONNX model must stay under "
                "2 GiB to be one self-contained file"
            )
        with atomic_output(dest) as tmp:
            report(f"exporting {dest.name} with torch.onnx for input {want}")
            with tool_errors("the model could not be exported to ONNX"), quiet_exporter():
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
            check_onnx_file(tmp, shown=dest, want=want, exported=True)
            _compare_with_torch(tmp, model, shown=dest, want=want)


def check_destination(dest: Path) -> None:
    """Refuse a ``dest`` the model cannot be written to: a directory, or in a missing folder."""
    if dest.is_dir():
        raise UsageError(f"{dest}: is a directory, not a file name for the model")
    if not dest.parent.is_dir():
        raise UsageError(f"{dest.parent}: no such directory to write the model into")


def silent(stage: str) -> None:
    """The ``progress`` callback when none is given."""


@contextlib.contextmanager
def exporting(
    model: torch.nn.Module, dest: Path, want: ModelInput, classes: int | None
) -> Iterator[torch.Tensor]:
    """What every export starts with: check ``model`` and ``dest``, put the model in eval mode (its
    mode is restored on exit), run it once on what the enclave gives it (:func:`check_runs`), and
    yield a seeded example batch of 2 of ``want``'s shape. Batch 2, not 1: torch.export specialises
    dimensions of size 0 and 1 to constants."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"expected a torch.nn.Module to export, got {type(model).__name__}")
    check_destination(dest)
    was_training = model.training
    model.eval()
    try:
        check_runs(model, want, classes)
        yield example_batch(want, 2, seed=1)
    finally:
        model.train(was_training)


def example_batch(want: ModelInput, batch: int, *, seed: int) -> torch.Tensor:
    """A seeded random float32 batch of ``batch`` images of ``want``'s shape."""
    import torch

    return torch.randn(want.shape(batch), generator=torch.Generator().manual_seed(seed))


def check_runs(
    model: Callable[[Any], Any], want: ModelInput, classes: int | None, *, shown: Path | None = None
) -> None:
    """Run ``model`` on a batch of 2 of what the enclave gives it, the enclave's own trial images
    (:func:`~enclave_infer.protocol.modelcheck.trial_inputs`: a blank one and a pseudo-random one):
    it must take them and return one ``(2, classes)`` tensor of finite scores. Refuses, in one line
    saying what it takes and what to pass, a model that does not, before any exporter or tracer sees
    it."""
    import torch

    prefix = f"{shown}: " if shown is not None else ""
    trials = torch.from_numpy(np.concatenate(list(trial_inputs(want.shape(1)))))
    try:
        with torch.no_grad():
            out = model(trials)
    except Exception as exc:
        error = f"{type(exc).__name__}: {first_line(exc)}"
        channels = _first_conv_channels(model)
        raise UsageError(prefix + run_failure(want, 2, error, first_channels=channels)) from exc
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"{prefix}the model must return one tensor, it returned {type(out).__name__}")
    problem = output_mismatch(tuple(out.shape), 2, classes)
    if problem is not None:
        raise UsageError(prefix + problem)
    finite(out.detach().float().numpy(), prefix=prefix)


def finite(scores: Any, *, prefix: str) -> None:
    """Refuse, before the upload, scores the enclave's load trial would refuse: NaN or infinite."""
    try:
        check_finite(scores)
    except ModelRefused as exc:
        raise UsageError(f"{prefix}{exc}: {NOT_FINITE_FIX}") from None


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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (the last, for TorchScript's traceback), without
    terminal colours, at most 300 characters."""
    lines = [line.strip() for line in _ANSI_ESCAPE.sub("", str(exc)).strip().splitlines() if line.strip()]
    if lines and lines[0] == _TORCHSCRIPT_TRACEBACK:
        lines = [_ERROR_TYPE.sub("", lines[-1])]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def tool_errors(failure: str, *, hint: str = "") -> Iterator[None]:
    """Raise whatever torch's exporters, tracer or converter raise in the block as one line:
    ``{failure}: {type}: {first line}{hint}``, of the innermost cause (the exporters wrap errors)."""
    try:
        yield
    except Exception as exc:
        root = _root_cause(exc)
        raise UsageError(f"{failure}: {type(root).__name__}: {first_line(root)}{hint}") from exc


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception in an explicit ``raise ... from`` chain (the exporter wraps its errors)."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


@contextlib.contextmanager
def atomic_output(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it to ``dest`` if the block succeeds."""
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def copy_model(src: Path, dest: Path, *, report: Callable[[str], None]) -> None:
    """Copy the checked model file ``src`` to ``dest`` (written next to it, renamed into place once
    complete); nothing to do when ``dest`` is ``src``."""
    if dest.exists() and dest.resolve() == src.resolve():
        return
    check_destination(dest)
    report(f"writing {dest.name}")
    with atomic_output(dest) as tmp:
        shutil.copyfile(src, tmp)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
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


def check_onnx_file(
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
    ``exported``, also check what :func:`write_onnx` promises: the names ``input``/``logits`` and a
    symbolic batch. Without onnx installed only the size is checked (ONNX Runtime validates the model
    again when the enclave loads it).
    """
    size = path.stat().st_size
    if size == 0:
        raise UsageError(f"{shown}: the ONNX file is empty")
    if size > MAX_ONNX_BYTES:
        raise UsageError(f"{shown}: the ONNX file is over 2 GiB; it must be one self-contained file")
    try:
        import onnx
    except ImportError:
        return
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UsageError(f"{shown}: not an ONNX model ({type(exc).__name__}: {first_line(exc)})") from exc
    if uses_external_data(model.graph):
        raise ExternalDataError(
            f"{shown}: the ONNX model keeps weights in external data files; it must be one "
            "self-contained file (re-save it with onnx.save(model, path, save_as_external_data=False))"
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise UsageError(f"{shown}: invalid ONNX model ({type(exc).__name__}: {first_line(exc)})") from exc

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
    scores = _dims(outputs[0].type.tensor_type)
    if want is not None:  # the enclave's load trial, here: its shape where undeclared, finite scores
        ran = _onnx_trial(path, shown=shown, want=want)
        if scores is None or None in scores[1:]:
            scores = ran
    if classes is not None:
        problem = output_mismatch(scores or [None, None], 1, classes)
        if problem is not None:
            raise UsageError(f"{shown}: {problem}")


def _dims(tensor_type: onnx.TypeProto.Tensor) -> list[int | None] | None:
    """A tensor's declared dimensions (None for a symbolic one), or None if its rank is not declared."""
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]


def _onnx_trial(path: Path, *, shown: Path, want: ModelInput) -> list[int | None]:
    """Run the ONNX model ``path`` with ONNX Runtime on the enclave's trial images of ``want``'s
    shape (:func:`~enclave_infer.protocol.modelcheck.trial_inputs`); refuse non-finite scores, and
    return the output's shape for one image."""
    try:
        import onnxruntime
    except ImportError:
        return [None, None]  # cannot tell here; the enclave checks it when it loads the model
    shape: list[int | None] = [None, None]
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        runs = [session.run(None, {name: trial})[0] for trial in trial_inputs(want.shape(1))]
    except Exception as exc:
        error = f"{type(exc).__name__}: {first_line(exc)}"
        raise UsageError(f"{shown}: {run_failure(want, 1, error)}") from exc
    for scores in runs:
        shape = list(np.shape(scores))
        finite(scores, prefix=f"{shown}: ")
    return shape


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
            f"{shown}: ONNX Runtime cannot load the exported model ({type(exc).__name__}: {first_line(exc)})"
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
                f"({type(exc).__name__}: {first_line(exc)})"
            ) from exc
        scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
        if got.shape != reference.shape or not np.allclose(got, reference, rtol=1e-3, atol=1e-4 * scale):
            raise UsageError(
                f"{shown}: the exported model's output differs from torch's on a batch of {batch}"
            )


def uses_external_data(graph: onnx.GraphProto) -> bool:
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
            if attr.HasField("g") and uses_external_data(attr.g):
                return True
            if any(uses_external_data(g) for g in attr.graphs):
                return True
    return False
