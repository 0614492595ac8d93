"""What the enclave requires of a model, written once for both sides of the boundary.

Trusted code, measured with the enclave, and imported by both the enclave's runtimes (which refuse a
model when they load it) and the owner's exporters (which refuse it before the upload, adding what to
do), since the owner's tooling may not import the enclave. Pure logic on bytes, arrays and loaded
modules: numpy only; the TorchScript functions import torch when called. Every refusal raises
:class:`ModelRefused`, whose :class:`Refusal` says why (callers decide on it, never on the text) and
whose message is one line that never quotes the model.

* :func:`trial_inputs` and :func:`check_finite`: the load trial runs a model on a blank image and on
  a fixed pseudo-random one, and its scores must be finite: a model whose weights hold a NaN (four
  flipped bytes will do) would otherwise be served and fail every classification.
* :func:`check_torchscript_archive`: before torch parses anything, an archive must be a plain
  TorchScript zip whose loading runs no code of the model's (no ``__setstate__``, no
  ``torch.classes``) and whose deflated entries inflate to at most :data:`MAX_INFLATED_BYTES`.
* :func:`audit_torchscript`: after ``torch.jit.load``, every operator ``forward`` can reach must be a
  harmless ``aten``/``prim`` one, and the module must keep no state from one image to the next. The
  module is frozen in eval mode first (``torch.jit.freeze``), which folds ``self.training`` to False
  and drops the training branches, so a scripted BatchNorm, whose training branch counts batches,
  passes while a model that writes to its attributes in eval mode does not. The frozen module is
  what is audited and what is served.
"""

from __future__ import annotations

import enum
import io
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from enclave_infer.errors import EnclaveInferError

__all__ = [
    "MAX_INFLATED_BYTES",
    "ModelRefused",
    "Refusal",
    "audit_torchscript",
    "check_finite",
    "check_torchscript_archive",
    "trial_inputs",
]

# What the deflated entries of a TorchScript archive may inflate to, together. torch deflates only
# code, its debug records and small pickles (tensors are stored as they are, and so bounded by the
# model's size): a few MB for the largest models. Without a bound on the sum, a 0.6 MB archive of
# many deflated entries inflated to 1 GB in the enclave (each entry was capped, their sum not).
MAX_INFLATED_BYTES = 64 * 2**20

# The pseudo-random trial image: fixed, so that both sides and every run try the same input.
_TRIAL_SEED = 0x5EED


class Refusal(enum.Enum):
    """Why a model is refused."""

    NOT_FINITE = "not-finite"
    NOT_TORCHSCRIPT = "not-torchscript"
    INFLATES_TOO_MUCH = "inflates-too-much"
    RUNS_ON_LOAD = "runs-on-load"  # __setstate__, torch.classes
    NO_FORWARD = "no-forward"
    HOOKS = "hooks"
    OPERATOR = "operator"  # an operator the enclave does not run
    KEEPS_STATE = "keeps-state"


class ModelRefused(EnclaveInferError):
    """The model does not meet the enclave's requirements; ``reason`` says which."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_MESSAGES = {
    Refusal.NOT_FINITE: "the model's scores for a trial image are not finite (NaN or infinity)",
    Refusal.NOT_TORCHSCRIPT: "the model is not a valid TorchScript archive",
    Refusal.INFLATES_TOO_MUCH: (
        f"the TorchScript archive's compressed entries inflate to more than {MAX_INFLATED_BYTES // 2**20} MiB"
    ),
    Refusal.NO_FORWARD: "the TorchScript model has no forward method",
    Refusal.HOOKS: "the TorchScript model has forward hooks, which this enclave does not run",
    Refusal.KEEPS_STATE: "the TorchScript model writes to its own attributes or tensors, keeping state",
}


def _refuse(reason: Refusal, message: str | None = None) -> ModelRefused:
    return ModelRefused(reason, message or _MESSAGES[reason])


# -- every model ---------------------------------------------------------------------------------


def trial_inputs(shape: tuple[int, ...]) -> Iterator[NDArray[np.float32]]:
    """The load trial's inputs of ``shape`` (a batch of one preprocessed image): zeros, then a fixed
    pseudo-random standard-normal image (what normalised pixels look like)."""
    yield np.zeros(shape, dtype=np.float32)
    yield np.random.default_rng(_TRIAL_SEED).standard_normal(shape, dtype=np.float32)


def check_finite(scores: Any) -> None:
    """Refuse (:attr:`Refusal.NOT_FINITE`) scores with a NaN or an infinity."""
    if not bool(np.isfinite(np.asarray(scores, dtype=np.float64)).all()):
        raise _refuse(Refusal.NOT_FINITE)


# -- TorchScript ---------------------------------------------------------------------------------

# Operators a TorchScript forward may not use: they touch files, print (stdout and stderr go to the
# host), call Python, index memory without bounds checks, or call code the audit cannot see
# (methods of objects that are not inlined, and with-statements' __enter__/__exit__).
DENIED_OPERATORS = frozenset(
    {
        "aten::save",
        "aten::from_file",
        "aten::warn",
        "aten::_print",
        "aten::_unsafe_index",
        "aten::_unsafe_index_put",
        "aten::_unsafe_masked_index",
        "aten::_unsafe_masked_index_put_accumulate",
        "prim::Print",
        "prim::PythonOp",
        "prim::IgnoredPythonOp",
        "prim::CallMethod",
        "prim::CallFunction",
        "prim::Enter",
        "prim::Exit",
    }
)
_ALLOWED_NAMESPACES = ("aten", "prim")
_SETSTATE = re.compile(rb"\b__setstate__\b")


def check_torchscript_archive(data: bytes) -> None:
    """Refuse, before torch parses anything, what is not a plain TorchScript archive, one whose
    loading would run code of the model's (``__setstate__``) or build ``torch.classes`` objects, and
    one whose deflated entries inflate to more than :data:`MAX_INFLATED_BYTES` together."""
    if data[:4] != b"PK\x03\x04":  # torch writes a local file header first; pickles start with 0x80
        raise _refuse(Refusal.NOT_TORCHSCRIPT)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            roots = {name.partition("/")[0] for name in names}
            if len(roots) != 1 or len(set(names)) != len(names) or any("/" not in name for name in names):
                raise _refuse(Refusal.NOT_TORCHSCRIPT)
            root = roots.pop()
            required = {f"{root}/data.pkl", f"{root}/constants.pkl", f"{root}/version"}
            code = [info for info in infos if info.filename.startswith(f"{root}/code/")]
            if not required <= set(names) or not code or f"{root}/model.json" in names:
                raise _refuse(Refusal.NOT_TORCHSCRIPT)
            # torch stores tensors and deflates code: the deflated entries together may not inflate
            # past a bound. The sizes are the central directory's, which both zipfile and torch's
            # reader (miniz) allocate and hold the inflated data to.
            inflated = 0
            for info in infos:
                if info.compress_type == zipfile.ZIP_STORED:
                    continue
                if info.compress_type != zipfile.ZIP_DEFLATED:
                    raise _refuse(Refusal.NOT_TORCHSCRIPT)
                inflated += info.file_size
                if inflated > MAX_INFLATED_BYTES:
                    raise _refuse(Refusal.INFLATES_TOO_MUCH)
            for info in code:
                if not info.filename.endswith(".py"):
                    continue
                source = archive.read(info)
                if _SETSTATE.search(source):
                    raise _refuse(
                        Refusal.RUNS_ON_LOAD,
                        "the TorchScript model defines __setstate__, which would run while it loads",
                    )
                if b"torch.classes" in source:
                    raise _refuse(Refusal.RUNS_ON_LOAD, "the TorchScript model uses torch.classes objects")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError):
        raise _refuse(Refusal.NOT_TORCHSCRIPT) from None


def audit_torchscript(module: Any) -> Any:
    """The loaded TorchScript ``module``, frozen in eval mode, once audited: refuse a module with
    ``__setstate__`` or forward hooks, whose forward can reach (in any branch) an operator outside
    aten/prim, one in :data:`DENIED_OPERATORS` or a call inlining did not resolve, or whose eval-mode
    forward writes to the module's attributes or tensors. Returns the module to serve: the frozen
    one, or, where torch cannot freeze it, ``module`` itself in eval mode, whose every branch must
    then keep no state."""
    import torch

    if not hasattr(module, "_c") or not module._c._has_method("forward"):
        raise _refuse(Refusal.NO_FORWARD)
    for submodule in module.modules():
        # The archive check already refused source that defines __setstate__; this catches an
        # archive that zipfile and torch's own zip reader would read differently.
        if submodule._c._has_method("__setstate__"):
            raise _refuse(
                Refusal.RUNS_ON_LOAD,
                "the TorchScript model defines __setstate__, code that runs while it loads",
            )
        # Hooks run around forward with code the graph audit does not see (a pre-hook could save
        # every input); a served model has none.
        if submodule._c._get_forward_hooks() or submodule._c._get_forward_pre_hooks():
            raise _refuse(Refusal.HOOKS)
    # Every operator, in every branch, before freezing runs constant propagation over the graph.
    # (A graph is kept referenced while its nodes are used: they do not own it.)
    graph = _inlined_graph(module)
    for node in _nodes([graph.block()]):
        kind = node.kind()
        if kind.partition("::")[0] not in _ALLOWED_NAMESPACES or kind in DENIED_OPERATORS:
            raise _refuse(
                Refusal.OPERATOR, f"the TorchScript model uses {kind}, which this enclave does not run"
            )
        if kind == "prim::CreateObject" and "torch.classes" in node.output().type().str():
            raise _refuse(Refusal.RUNS_ON_LOAD, "the TorchScript model uses torch.classes objects")
    module.eval()  # sets the `training` attributes from Python; runs none of the model's code
    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates TorchScript; the warning says nothing about this model.
            warnings.simplefilter("ignore", DeprecationWarning)
            # optimize_numerics=False: no folding that changes results (conv + batch norm).
            served = torch.jit.freeze(module, optimize_numerics=False)
    except Exception:  # torch cannot freeze every module (interfaces, some attribute types)
        served = module
    else:
        graph = _inlined_graph(served)
    # A served model must be a pure function of its input: state kept from one request to the next
    # could hand one client's image to the next caller.
    _check_stateless(_nodes([graph.block()]), torch)
    return served


def _inlined_graph(module: Any) -> Any:
    try:
        return module.inlined_graph
    except Exception:
        raise _refuse(Refusal.NOT_TORCHSCRIPT) from None


def _nodes(blocks: list[Any]) -> Iterator[Any]:
    """Every node of ``blocks``, in order, and of the blocks and subgraphs nested in them, each
    nested block before the node that holds it is yielded."""
    for block in blocks:
        for node in block.nodes():
            nested = list(node.blocks())
            for attribute in node.attributeNames():
                kind_of = node.kindOf(attribute)
                if kind_of == "g":
                    nested.append(node.g(attribute).block())
                elif kind_of == "gs":
                    nested.extend(subgraph.block() for subgraph in node.gs(attribute))
            yield from _nodes(nested)
            yield node


def _check_stateless(nodes: Iterable[Any], torch: Any) -> None:
    """Refuse :attr:`Refusal.KEEPS_STATE`: a ``prim::SetAttr``, or an operator whose schema says it
    writes (``Tensor(a!)``) to a value that is, or may alias, one of the module's attributes or a
    constant tensor (a frozen weight). Aliasing follows the operators' schemas (``select(Tensor(a)
    self) -> Tensor(a)``); an operator without a schema, or with a wildcard output, may alias any of
    its inputs, and a node with blocks any value its blocks return."""
    state: set[int] = set()  # the values (Value.unique()) that are, or may alias, the module's state
    for node in nodes:
        kind = node.kind()
        if kind == "prim::SetAttr":
            raise _refuse(Refusal.KEEPS_STATE)
        inputs = [value.unique() for value in node.inputs()]
        outputs = [value.unique() for value in node.outputs()]
        if kind == "prim::GetAttr" or (
            kind == "prim::Constant" and isinstance(node.output().type(), torch._C.TensorType)
        ):
            state.update(outputs)
            continue
        text = node.schema()
        if text == "(no schema)":
            if any(value in state for value in inputs) or any(
                value.unique() in state for block in node.blocks() for value in block.outputs()
            ):
                state.update(outputs)
            continue
        schema = torch._C.parse_schema(text)
        sets: set[str] = set()
        for argument, value in zip(schema.arguments, inputs, strict=False):
            info = argument.alias_info
            if info is None:
                continue
            if info.is_write and value in state:
                raise _refuse(Refusal.KEEPS_STATE)
            if value in state:
                sets |= set(info.before_set)
        for ret, value in zip(schema.returns, outputs, strict=False):
            info = ret.alias_info
            if info is not None and (sets & set(info.before_set) or ("*" in info.before_set and sets)):
                state.add(value)
