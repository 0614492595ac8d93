"""The model owner's files for each runtime the enclave offers: ONNX and TorchScript.

Runs on the model owner's own machine, never in the enclave; torch is imported inside the functions.

* :func:`export_torchscript` writes a ``torch.nn.Module`` as a TorchScript archive (traced).
* :func:`export_program` writes it as a ``torch.export`` ExportedProgram (``.pt2``). The enclave does
  not accept this format (``torch.export.load`` can run code from the file, see
  :mod:`enclave_infer.enclave.runtimes`); it is here for the owner's own use and tests.
* :func:`detect_format` tells the owner's file kinds apart by content.
* :func:`export_formats` produces, from any of them, the files for the runtimes asked for: ``"onnx"``
  (one self-contained ONNX file; one with external data is folded into a single file here) and
  ``"torch"`` (a TorchScript archive).

Every function raises :class:`~enclave_infer.errors.UsageError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterator, Set
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclave_infer.client.convert import (
    _MAX_ONNX_BYTES,
    _MAX_WEIGHT_BYTES,
    _atomic_output,
    _check_onnx,
    _first_line,
    _quiet_exporter,
    _root_cause,
    _uses_external_data,
    export_onnx,
    load_pickled_model,
)
from enclave_infer.errors import UsageError

if TYPE_CHECKING:
    import onnx
    import torch

__all__ = [
    "RUNTIMES",
    "detect_format",
    "export_formats",
    "export_program",
    "export_torchscript",
]

RUNTIMES = ("onnx", "torch")

# What detect_format() answers.
ONNX, PICKLE, TORCHSCRIPT, EXPORTED_PROGRAM = "onnx", "pickle", "torchscript", "exported_program"

_TOLERANCE = 1e-5
_ZIP_MAGIC = b"PK\x03\x04"


def export_torchscript(model: torch.nn.Module, dest: Path, *, input_size: int = 224) -> None:
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
    ``(batch, 3, input_size, input_size)`` and must return one tensor.
    """
    import torch
    from torch.jit._trace import TracerWarning

    _check_model(model, input_size)
    dest = Path(dest)
    _check_destination(dest)
    example = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(1))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                    model, example, check_trace=False, _store_inputs=False
                )
            except Exception as exc:
                root = _root_cause(exc)
                raise UsageError(
                    "the model could not be traced to TorchScript: "
                    f"{type(root).__name__}: {_first_line(root)}"
                ) from exc
        tracer = [w for w in caught if issubclass(w.category, TracerWarning)]
        _reemit(w for w in caught if not issubclass(w.category, DeprecationWarning | TracerWarning))
        if tracer:
            raise UsageError(
                "tracing cannot capture the model faithfully (its control flow depends on tensor "
                f"values): {_first_line(Exception(tracer[0].message))}"
            )
        buffer = io.BytesIO()
        with _no_jit_deprecation():
            torch.jit.save(traced, buffer)
        with _atomic_output(dest) as tmp:
            tmp.write_bytes(_strip_debug_info(buffer.getvalue()))
            reloaded = _load_torchscript(tmp, shown=dest)
            _compare(reloaded, model, shown=dest, input_size=input_size, what="TorchScript archive")
    finally:
        model.train(was_training)


def export_program(model: torch.nn.Module, dest: Path, *, input_size: int = 224) -> None:
    """Write ``model`` to ``dest`` as a ``torch.export`` ExportedProgram (``torch.export.save``).

    Exported in eval mode for float32 input ``(batch, 3, input_size, input_size)`` with a dynamic
    ``batch``; the file is loaded back (it is the owner's own, just written) and must reproduce the
    model's outputs (within 1e-5) for batches of 1 and 3 before it is renamed into place. The enclave
    refuses this format; use :func:`export_torchscript` or ONNX for it.
    """
    import torch

    _check_model(model, input_size)
    dest = Path(dest)
    _check_destination(dest)
    # Batch 2, not 1: torch.export specialises dimensions of size 0 and 1 to constants.
    example = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(1))
    was_training = model.training
    model.eval()
    try:
        try:
            with _quiet_exporter():
                program = torch.export.export(
                    model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)
                )
        except Exception as exc:
            root = _root_cause(exc)
            raise UsageError(
                "the model could not be exported with torch.export: "
                f"{type(root).__name__}: {_first_line(root)}"
            ) from exc
        with _atomic_output(dest) as tmp:
            with tmp.open("wb") as f:
                torch.export.save(program, f)
            reloaded = _load_program(tmp, shown=dest)
            _compare(reloaded.module(), model, shown=dest, input_size=input_size, what="ExportedProgram")
    finally:
        model.train(was_training)


def detect_format(path: Path) -> str:
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
    raise UsageError(
        f"{path}: not a model file this tool knows; expected an ONNX model, a torch.save(model) pickle, "
        "a TorchScript archive (torch.jit.save) or an ExportedProgram (torch.export.save)"
    )


def export_formats(src: Path, out_dir: Path, runtimes: Set[str], *, input_size: int = 224) -> dict[str, Path]:
    """Produce, in ``out_dir``, the files the enclave serves with each of ``runtimes``.

    ``src`` is the owner's model file, recognised by content (:func:`detect_format`): an ONNX model,
    a whole-model ``torch.save(model)`` pickle (loaded with
    :func:`~enclave_infer.client.convert.load_pickled_model`, which runs its code: the owner's own
    file, on the owner's machine), a TorchScript archive, or an ExportedProgram. ``runtimes`` is a
    subset of ``{"onnx", "torch"}``:

    * ``"onnx"`` → ``<stem>.onnx``, one self-contained file: exported with
      :func:`~enclave_infer.client.convert.export_onnx`, or an ONNX ``src`` validated and copied.
      An ONNX ``src`` with external data files is folded into one file here (if under 2 GiB).
    * ``"torch"`` → ``<stem>.torchscript.pt``, a TorchScript archive: traced with
      :func:`export_torchscript`, or a TorchScript ``src`` checked and copied. Never an
      ExportedProgram, although torch.export captures models more soundly than tracing: the enclave
      refuses that format, because loading one can run code from the file. An ONNX or ExportedProgram
      ``src`` cannot give a TorchScript archive (torch 2.13 cannot trace an exported graph).

    Returns ``{"onnx": path, "torchscript": path}`` for the runtimes asked for.
    """
    src, out_dir = Path(src), Path(out_dir)
    wanted = set(runtimes)
    unknown = sorted(str(name) for name in wanted - set(RUNTIMES))
    if not wanted or unknown:
        raise UsageError(
            f"runtimes must be some of {', '.join(RUNTIMES)}, got {', '.join(unknown) or 'none'}"
        )
    _check_input_size(input_size)
    if not src.is_file():
        raise UsageError(f"{src}: no such file")
    kind = detect_format(src)
    if "torch" in wanted and kind in (ONNX, EXPORTED_PROGRAM):
        # torch 2.13 cannot trace an ExportedProgram's graph back into TorchScript ("JIT Tracing
        # of SymInts isn't supported"), and nothing turns ONNX into torch.
        what = "an ONNX model" if kind == ONNX else "an ExportedProgram"
        raise UsageError(
            f"{src}: {what} cannot be turned into a TorchScript archive; give the torch.save(model) "
            "pickle or a TorchScript archive for the torch runtime"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out_dir}: cannot create the output directory ({exc.strerror})") from exc
    stem = src.stem.removesuffix(".torchscript")
    results: dict[str, Path] = {}
    module: torch.nn.Module | None = None

    if "onnx" in wanted:
        dest = out_dir / f"{stem}.onnx"
        if kind == ONNX:
            _fold_onnx(src, dest)
        elif kind == PICKLE:
            module = load_pickled_model(src)
            export_onnx(module, dest, input_size=input_size)
        elif kind == TORCHSCRIPT:
            _torchscript_to_onnx(src, dest, input_size=input_size)
        else:
            program = _load_program(src, shown=src)
            export_onnx(_as_module(program.module()), dest, input_size=input_size)
        results[ONNX] = dest

    if "torch" in wanted:
        dest = out_dir / f"{stem}.torchscript.pt"
        if kind == PICKLE:
            export_torchscript(module or load_pickled_model(src), dest, input_size=input_size)
        elif kind == TORCHSCRIPT:
            _copy_torchscript(src, dest, input_size=input_size)
        results[TORCHSCRIPT] = dest
    return results


# -- formats -----------------------------------------------------------------------------------


def _zip_format(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            root = names[0].partition("/")[0] if names else ""
            entries = {name[len(root) + 1 :] for name in names if name.startswith(f"{root}/")}
            pt2 = "archive_format" in entries and archive.read(f"{root}/archive_format").strip() == b"pt2"
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, NotImplementedError) as exc:
        raise UsageError(f"{path}: a damaged zip archive, not a model file ({_first_line(exc)})") from exc
    if pt2 or any(entry.startswith("models/") and entry.endswith(".json") for entry in entries):
        return EXPORTED_PROGRAM
    if {"data.pkl", "constants.pkl"} <= entries and any(entry.startswith("code/") for entry in entries):
        return TORCHSCRIPT
    if "data.pkl" in entries:
        return PICKLE
    raise UsageError(f"{path}: a zip archive, but not a torch.save, TorchScript or ExportedProgram file")


def _fold_onnx(src: Path, dest: Path) -> None:
    """Validate the ONNX file ``src`` and write it to ``dest`` as one self-contained file, reading
    any external data files (which must lie in ``src``'s folder) into it."""
    try:
        import onnx
    except ImportError:  # without onnx, external data cannot be seen here; the enclave refuses it
        external = []
    else:
        external = _external_tensors(onnx, src)
    if not external:
        _check_onnx(src, shown=src, input_size=None)
        if dest.exists() and dest.resolve() == src.resolve():
            return
        _check_destination(dest)
        with _atomic_output(dest) as tmp:
            shutil.copyfile(src, tmp)
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
    if total > _MAX_WEIGHT_BYTES:
        raise UsageError(
            f"{src}: its external data is {total / 2**30:.2f} GiB; folded into one file it would not "
            "fit the 2 GiB an ONNX file can hold"
        )
    try:
        model = onnx.load(str(src), load_external_data=True)
    except Exception as exc:
        raise UsageError(
            f"{src}: cannot read its external data ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if _uses_external_data(model.graph) or model.ByteSize() > _MAX_ONNX_BYTES:
        raise UsageError(f"{src}: the model does not fit in one ONNX file (2 GiB)")
    _check_destination(dest)
    with _atomic_output(dest) as tmp:
        onnx.save(model, str(tmp), save_as_external_data=False)
        _check_onnx(tmp, shown=dest, input_size=None)


def _external_tensors(onnx: Any, src: Path) -> list[onnx.TensorProto]:
    """The tensors of the ONNX file ``src`` (read without its external data) that live outside it."""
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as exc:
        raise UsageError(f"{src}: not an ONNX model ({type(exc).__name__}: {_first_line(exc)})") from exc
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


def _torchscript_to_onnx(src: Path, dest: Path, *, input_size: int) -> None:
    """ONNX from a TorchScript archive: torch's ONNX exporter takes no ScriptModule, so the archive
    is converted to an ExportedProgram first (torch's TS2EPConverter), checked against the archive,
    and exported from that."""
    import torch

    module = _load_torchscript(src, shown=src)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    example = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(1))
    try:
        from torch._export.converter import TS2EPConverter

        with _quiet_exporter(), torch.no_grad(), warnings.catch_warnings():
            # The converter warns about buffers it copies but the graph never reads (batch norm's
            # num_batches_tracked); the converted program is compared with the archive below.
            warnings.simplefilter("ignore", UserWarning)
            program = TS2EPConverter(module, (example,)).convert()
    except Exception as exc:
        root = _root_cause(exc)
        raise UsageError(
            f"{src}: the TorchScript archive could not be converted for ONNX export "
            f"({type(root).__name__}: {_first_line(root)}); export ONNX from the torch model instead"
        ) from exc
    converted = _as_module(program.module())
    _compare(converted, module, shown=src, input_size=input_size, what="converted program")
    export_onnx(converted, dest, input_size=input_size)


def _copy_torchscript(src: Path, dest: Path, *, input_size: int) -> None:
    """Check that the TorchScript archive ``src`` loads and classifies a batch, and copy it."""
    import torch

    module = _load_torchscript(src, shown=src)
    for batch in (1, 3):
        x = torch.randn(batch, 3, input_size, input_size)
        try:
            with torch.no_grad():
                out = module(x)
        except Exception as exc:
            raise UsageError(
                f"{src}: the TorchScript model fails on a batch of {batch} of size {input_size} "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from exc
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != batch:
            raise UsageError(f"{src}: the TorchScript model must return one (batch, classes) tensor")
    if dest.exists() and dest.resolve() == src.resolve():
        return
    _check_destination(dest)
    with _atomic_output(dest) as tmp:
        shutil.copyfile(src, tmp)


# -- helpers -----------------------------------------------------------------------------------


def _load_torchscript(path: Path, *, shown: Path) -> Any:
    import torch

    try:
        with _no_jit_deprecation():
            return torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise UsageError(
            f"{shown}: not a loadable TorchScript archive ({type(exc).__name__}: {_first_line(exc)})"
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
            f"{shown}: not a loadable ExportedProgram ({type(exc).__name__}: {_first_line(exc)})"
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
    run: Callable[[Any], Any], model: Callable[[Any], Any], *, shown: Path, input_size: int, what: str
) -> None:
    """``run`` must give ``model``'s output, within 1e-5, on random batches of 1 and 3."""
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        x = torch.randn(batch, 3, input_size, input_size, generator=generator)
        try:
            with torch.no_grad():
                expected = model(x)
        except Exception as exc:
            raise UsageError(
                f"the model itself fails on a batch of {batch} ({type(exc).__name__}: {_first_line(exc)}); "
                "the enclave classifies one image at a time (use x.flatten(1), not x.view(2, -1))"
            ) from exc
        if not isinstance(expected, torch.Tensor):
            raise UsageError(f"the model must return one tensor, it returned {type(expected).__name__}")
        try:
            with torch.no_grad():
                got = run(x)
        except Exception as exc:
            raise UsageError(
                f"{shown}: the {what} fails on a batch of {batch} ({type(exc).__name__}: {_first_line(exc)})"
            ) from exc
        want = expected.detach().float().numpy()
        if (
            not isinstance(got, torch.Tensor)
            or tuple(got.shape) != want.shape
            or not np.allclose(got.detach().float().numpy(), want, rtol=_TOLERANCE, atol=_TOLERANCE)
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


def _check_model(model: object, input_size: int) -> None:
    import torch

    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"expected a torch.nn.Module to export, got {type(model).__name__}")
    _check_input_size(input_size)


def _check_input_size(input_size: object) -> None:
    if not isinstance(input_size, int) or isinstance(input_size, bool) or not 0 < input_size <= 4096:
        raise UsageError(f"input_size must be an integer from 1 to 4096, got {input_size!r}")


def _check_destination(dest: Path) -> None:
    if dest.is_dir():
        raise UsageError(f"{dest}: is a directory, not a file name for the model")
    if not dest.parent.is_dir():
        raise UsageError(f"{dest.parent}: no such directory to write the model into")
