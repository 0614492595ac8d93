"""Tests for the enclave's runtimes: ONNX Runtime and TorchScript side by side, and what they refuse."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import torch
from onnx import TensorProto, helper
from torch import nn

from enclave_infer.client.export import ModelInput, export_onnx, export_program, export_torchscript
from enclave_infer.enclave import runtimes
from enclave_infer.enclave.preprocess import decode_image, to_tensor
from enclave_infer.enclave.runtimes import (
    InferenceError,
    RuntimeLoadError,
    check_scores,
    load_onnx,
    load_torch,
    torch_available,
)
from enclave_infer.errors import ProtocolError
from enclave_infer.protocol.api import Preprocessing, Runtime
from enclave_infer.protocol.manifest import ModelFile, ModelFormat
from enclave_infer.protocol.modelcheck import ModelRefused, Refusal, audit_torchscript
from tests.helpers import TinyCNN, TwoOutputs, png, poison_onnx, split_onnx, sqrt_onnx

SIZE = 32
CLASSES = 5
PRE = Preprocessing(resize=40, crop=SIZE)

# --- a model file's payload, made harmless ------------------------------------------------------
# A malicious pickle would name os.system; these name _set_flag, which only records that it ran.

FLAG: list[str] = []


def _set_flag(what: str) -> None:
    FLAG.append(what)


class Payload:
    def __init__(self, what: str) -> None:
        self.what = what

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_set_flag, (self.what,))


@pytest.fixture(autouse=True)
def _flag_and_threads() -> Iterator[None]:
    FLAG.clear()
    threads = torch.get_num_threads()
    yield
    FLAG.clear()
    torch.set_num_threads(threads)


# --- models -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    model = TinyCNN(CLASSES).eval()
    paths = {
        "onnx": folder / "m.onnx",
        "torchscript": folder / "m.ts.pt",
        "exported_program": folder / "m.pt2",
    }
    export_onnx(model, paths["onnx"], ModelInput(SIZE))
    export_torchscript(model, paths["torchscript"], ModelInput(SIZE))
    export_program(model, paths["exported_program"], ModelInput(SIZE))
    return paths


@pytest.fixture
def no_files(tmp_path: Path) -> str:
    folder = tmp_path / "no-files"
    folder.mkdir()
    return str(folder)


def photo() -> np.ndarray:
    """A preprocessed image, through the enclave's own decoding and preprocessing."""
    return to_tensor(decode_image(png(), max_pixels=10**6), PRE)


def torchscript_bytes(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    with warnings_ignored():
        torch.jit.save(module, buffer)
    return buffer.getvalue()


@contextlib.contextmanager
def warnings_ignored() -> Iterator[None]:
    """torch 2.13 deprecates torch.jit.script/trace/save/load with a DeprecationWarning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


# --- serving ------------------------------------------------------------------------------------


def test_onnx_and_torchscript_agree_on_a_preprocessed_image(models: dict[str, Path], no_files: str) -> None:
    tensor = photo()
    onnx_runtime = load_onnx(models["onnx"].read_bytes(), threads=1, no_files_dir=no_files)
    torch_runtime = load_torch(models["torchscript"].read_bytes(), fmt="torchscript", threads=1)
    assert (onnx_runtime.name, torch_runtime.name) == ("onnx", "torch")
    for runtime in (onnx_runtime, torch_runtime):
        check_scores(runtime, np.zeros_like(tensor), CLASSES)
    from_onnx, from_torch = onnx_runtime.run(tensor), torch_runtime.run(tensor)
    assert from_onnx.shape == from_torch.shape == (1, CLASSES)
    assert from_torch.dtype == np.float32
    np.testing.assert_allclose(from_onnx, from_torch, atol=1e-4, rtol=0)
    assert np.abs(from_torch).max() > 1e-3  # not trivially zero


def test_loaders_take_paths_too(models: dict[str, Path], no_files: str) -> None:
    tensor = photo()
    a = load_onnx(models["onnx"], threads=1, no_files_dir=no_files).run(tensor)
    b = load_torch(models["torchscript"], fmt="torchscript", threads=1).run(tensor)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    with pytest.raises(RuntimeLoadError, match="cannot read the model file"):
        load_torch(models["onnx"].parent / "missing.pt", fmt="torchscript", threads=1)


def test_torch_runtime_sets_threads_and_takes_read_only_input(models: dict[str, Path]) -> None:
    runtime = load_torch(models["torchscript"], fmt="torchscript", threads=1)
    assert torch.get_num_threads() == 1
    tensor = photo()
    tensor.setflags(write=False)  # torch.from_numpy would warn about a read-only array
    assert runtime.run(tensor).shape == (1, CLASSES)
    assert runtime.run(tensor.astype(np.float64)).shape == (1, CLASSES)


def test_torch_available() -> None:
    assert torch_available()


def test_check_scores_messages(models: dict[str, Path], no_files: str) -> None:
    runtime = load_onnx(models["onnx"], threads=1, no_files_dir=no_files)
    example = np.zeros((1, 3, SIZE, SIZE), dtype=np.float32)
    with pytest.raises(
        RuntimeLoadError, match=re.escape("model output shape (1, 5), expected (1, 7) for its labels")
    ):
        check_scores(runtime, example, 7)
    for loaded in (runtime, load_torch(models["torchscript"], fmt="torchscript", threads=1)):
        with pytest.raises(
            RuntimeLoadError, match="does not accept a preprocessed image of the manifest's size"
        ):
            check_scores(loaded, np.zeros((1, 4, SIZE, SIZE), dtype=np.float32), CLASSES)
    with pytest.raises(InferenceError, match="the model failed to run on the input"):
        runtime.run(np.zeros((1, 4, SIZE, SIZE), dtype=np.float32))


def test_torch_model_must_return_one_tensor() -> None:
    with warnings_ignored():
        traced = torch.jit.trace(TwoOutputs(), torch.zeros(1, 3, SIZE, SIZE))  # type: ignore[no-untyped-call]
    runtime = load_torch(torchscript_bytes(traced), fmt="torchscript", threads=1)
    with pytest.raises(RuntimeLoadError, match="must return one tensor, it returned tuple"):
        check_scores(runtime, np.zeros((1, 3, SIZE, SIZE), dtype=np.float32), 3)


# --- ONNX refusals ------------------------------------------------------------------------------


def test_load_onnx_refuses_what_is_not_onnx(no_files: str) -> None:
    for data in (b"", b"not a model", b"\x08\x07" + bytes(100)):
        with pytest.raises(RuntimeLoadError, match=r"^the model is not a valid ONNX model$"):
            load_onnx(data, threads=1, no_files_dir=no_files)


def test_load_onnx_refuses_two_inputs(no_files: str) -> None:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["out"])], "add", [a, b], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(RuntimeLoadError, match="must take one input tensor, it takes 2"):
        load_onnx(model.SerializeToString(), threads=1, no_files_dir=no_files)


def test_load_onnx_refuses_external_data(
    models: dict[str, Path], no_files: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    split = tmp_path / "split.onnx"
    split_onnx(models["onnx"], split)
    # The data file sits both next to the model and in the working directory (the host's choice).
    monkeypatch.chdir(tmp_path)
    for model in (split, split.read_bytes()):
        with pytest.raises(
            RuntimeLoadError,
            match=r"^the model keeps tensors in external data files; send one self-contained file$",
        ):
            load_onnx(model, threads=1, no_files_dir=no_files)


# --- torch refusals -----------------------------------------------------------------------------


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"PK\x03\x04garbage", _zip({"a/b.txt": b"x"}), _zip({"x/data.pkl": b"\x80\x02N."})],
    ids=["empty", "garbage", "zip-magic", "other-zip", "no-code"],
)
def test_load_torch_refuses_what_is_not_torchscript(data: bytes) -> None:
    with pytest.raises(RuntimeLoadError, match=r"^the model is not a valid TorchScript archive$"):
        load_torch(data, fmt="torchscript", threads=1)


def test_load_torch_never_runs_a_pickle(tmp_path: Path) -> None:
    plain = pickle.dumps(Payload("pickle"), protocol=2)
    buffer = io.BytesIO()
    torch.save(Payload("torch.save"), buffer)  # a zip archive whose data.pkl calls _set_flag
    for data in (plain, pickle.dumps(Payload("pickle 5"), protocol=5), buffer.getvalue()):
        with pytest.raises(RuntimeLoadError, match="not a valid TorchScript archive"):
            load_torch(data, fmt="torchscript", threads=1)
    assert FLAG == []
    # torch.load itself would have run them: the payloads are live.
    pickle.loads(plain)
    assert FLAG == ["pickle"]


def test_torchscript_unpickler_refuses_python_globals(models: dict[str, Path]) -> None:
    """A TorchScript archive whose data.pkl is a Python pickle that calls a function passes the
    archive check; torch's C++ unpickler must refuse it without calling anything."""
    with zipfile.ZipFile(models["torchscript"]) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    data_pkl = next(name for name in entries if name.endswith("/data.pkl"))
    entries[data_pkl] = pickle.dumps(Payload("data.pkl"), protocol=2)  # the C++ unpickler's protocol
    evil = _zip(entries)
    with pytest.raises(RuntimeLoadError, match=r"^the model is not a valid TorchScript archive$"):
        load_torch(evil, fmt="torchscript", threads=1)
    with warnings_ignored(), pytest.raises(RuntimeError, match="_set_flag"):
        torch.jit.load(io.BytesIO(evil))  # type: ignore[no-untyped-call]  # torch alone refuses it
    assert FLAG == []


def _evil_program(program: Path, how: str) -> bytes:
    """The ExportedProgram ``program``, changed so that loading it calls _set_flag."""
    with zipfile.ZipFile(program) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    for name in list(entries):
        if how == "pickle" and name.endswith("model_weights_config.json"):
            config = json.loads(entries[name])
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            entries[name] = json.dumps(config).encode()
            weight = next(n for n in entries if n.endswith("/weights/" + first["path_name"]))
            entries[weight] = pickle.dumps(Payload("export pickle"), protocol=2)
        if how == "sympify" and name.endswith("models/model.json"):
            text = entries[name].decode()
            symbol = re.search(r"Symbol\('s\d+', positive=True, integer=True\)", text)
            assert symbol is not None
            call = f"__import__('sys').modules['{__name__}']._set_flag('export sympify')"
            entries[name] = text.replace(symbol.group(0), call, 1).encode()
    return _zip(entries)


@pytest.mark.parametrize("how", ["pickle", "sympify"])
def test_exported_programs_are_refused_unread(models: dict[str, Path], how: str) -> None:
    for data in (models["exported_program"].read_bytes(), _evil_program(models["exported_program"], how)):
        with pytest.raises(RuntimeLoadError, match="loads TorchScript archives, not 'exported_program'"):
            load_torch(data, fmt="exported_program", threads=1)
        with pytest.raises(RuntimeLoadError, match="not a valid TorchScript archive"):
            load_torch(data, fmt="torchscript", threads=1)
    assert FLAG == []


@pytest.mark.parametrize("how", ["pickle", "sympify"])
def test_why_torch_export_load_is_refused(models: dict[str, Path], how: str) -> None:
    """torch 2.13's torch.export.load runs code from the file: a pickled weight (weights_only=False)
    and a symbolic-shape string (sympy.sympify, i.e. eval) each call _set_flag. If torch stops
    doing so, this test fails, and the refusal in load_torch can be reconsidered."""
    with contextlib.suppress(Exception):
        torch.export.load(io.BytesIO(_evil_program(models["exported_program"], how)))
    assert [f"export {how}"] == FLAG


def test_load_torch_unknown_format(models: dict[str, Path]) -> None:
    with pytest.raises(RuntimeLoadError, match="loads TorchScript archives, not 'pickle'"):
        load_torch(models["torchscript"], fmt="pickle", threads=1)
    with pytest.raises(ValueError, match="threads"):
        load_torch(models["torchscript"], fmt="torchscript", threads=0)


# --- TorchScript code the enclave does not run --------------------------------------------------


class Printing(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 0):
            print("LEAKED", x)  # stdout goes to the host
        return x.mean((2, 3))


class Saving(nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.path)
        return x.mean((2, 3))


class Reading(nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        secret = torch.from_file(self.path, size=4, dtype=torch.uint8)
        return x.mean((2, 3)) + secret[0].float()


class OnLoad(nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        print("SETSTATE RAN")
        torch.save(torch.zeros(1), state[0])
        self.path = state[0]
        self.training = state[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda path: Printing(), "uses prim::Print"),
        (Saving, "uses aten::save"),
        (Reading, "uses aten::from_file"),
        (OnLoad, "defines __setstate__"),
    ],
    ids=["print", "save", "from_file", "setstate"],
)
def test_torchscript_with_side_effects_is_refused(
    make: type[nn.Module], fragment: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "written"
    (tmp_path / "secret").write_bytes(b"secret")
    path = str(tmp_path / "secret") if make is Reading else str(target)
    with warnings_ignored():
        scripted = torch.jit.script(make(path))
    data = torchscript_bytes(scripted)
    capfd.readouterr()
    with pytest.raises(RuntimeLoadError, match=fragment):
        load_torch(data, fmt="torchscript", threads=1)
    assert not target.exists()
    assert capfd.readouterr().out == ""
    if make is OnLoad:
        with warnings_ignored():
            torch.jit.load(io.BytesIO(data))  # type: ignore[no-untyped-call]  # runs __setstate__
        assert target.exists() and "SETSTATE RAN" in capfd.readouterr().out


def test_audit_reaches_into_branches() -> None:
    with warnings_ignored():
        scripted = torch.jit.script(Printing())
    graph = scripted.inlined_graph
    assert all(node.kind() != "prim::Print" for node in graph.nodes())  # only inside the prim::If
    with pytest.raises(ModelRefused, match="prim::Print") as info:
        audit_torchscript(scripted)
    assert info.value.reason is Refusal.OPERATOR


def _scripted(module: torch.nn.Module) -> bytes:
    with warnings_ignored():
        return torchscript_bytes(torch.jit.script(module))


class _Stateful(torch.nn.Module):
    """Keeps a caller's pixels and answers the next caller with them (security review)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("prev", torch.full((1, 4), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.prev.clone()
        v = x.flatten(1)[:, :4].abs() + 1e-6
        self.prev.copy_(v / v.sum())
        return out


class _Hooked(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :4]


def _leak(module: torch.nn.Module, inputs: tuple[torch.Tensor]) -> None:
    print(inputs[0].sum())  # stands for torch.save(inputs[0], <a host-visible path>)


def test_stateful_torchscript_is_refused() -> None:
    with pytest.raises(runtimes.RuntimeLoadError, match="keeping state"):
        runtimes.load_torch(_scripted(_Stateful()), fmt="torchscript", threads=1)


def test_torchscript_with_forward_hooks_is_refused() -> None:
    hooked = _Hooked()
    hooked.register_forward_pre_hook(_leak)
    with pytest.raises(runtimes.RuntimeLoadError, match="forward hooks"):
        runtimes.load_torch(_scripted(hooked), fmt="torchscript", threads=1)


def test_a_deflate_bomb_is_refused_before_anything_inflates(models: dict[str, Path]) -> None:
    """Each deflated entry below the bound, their sum above it: refused from the central directory,
    before the archive check reads (inflates) any code."""
    with zipfile.ZipFile(models["torchscript"]) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    root = next(iter(entries)).partition("/")[0]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bomb:
        for name, data in entries.items():
            bomb.writestr(name, data)
        for i in range(3):  # 3 x 30 MiB of blanks, about 90 kB deflated
            bomb.writestr(f"{root}/code/__torch__/pad{i}.py", b" " * (30 * 2**20))
    data = buffer.getvalue()
    assert len(data) < 2**20
    with pytest.raises(
        RuntimeLoadError, match=r"^the TorchScript archive's compressed entries inflate to more than 64 MiB$"
    ):
        load_torch(data, fmt="torchscript", threads=1)


# --- the load trial: finite scores ---------------------------------------------------------------

NOT_FINITE = r"^the model's scores for a trial image are not finite \(NaN or infinity\)$"


def test_a_model_with_a_nan_weight_is_refused(models: dict[str, Path], no_files: str, tmp_path: Path) -> None:
    poisoned = tmp_path / "nan.onnx"
    poison_onnx(models["onnx"], poisoned)
    runtime = load_onnx(poisoned, threads=1, no_files_dir=no_files)  # it loads: ONNX Runtime cannot tell
    example = np.zeros((1, 3, SIZE, SIZE), dtype=np.float32)
    assert np.isnan(runtime.run(photo())).all()  # and would fail every classification
    with pytest.raises(RuntimeLoadError, match=NOT_FINITE):
        check_scores(runtime, example, CLASSES)
    model = TinyCNN(CLASSES).eval()
    with torch.no_grad():
        model.fc.weight[0, 0] = float("inf")
    with warnings_ignored():
        traced = torch.jit.trace(model, torch.zeros(1, 3, SIZE, SIZE))  # type: ignore[no-untyped-call]
    runtime = load_torch(torchscript_bytes(traced), fmt="torchscript", threads=1)
    with pytest.raises(RuntimeLoadError, match=NOT_FINITE):
        check_scores(runtime, example, CLASSES)


def test_the_trial_is_not_only_a_blank_image(no_files: str, tmp_path: Path) -> None:
    path = tmp_path / "sqrt.onnx"
    sqrt_onnx(path)
    runtime = load_onnx(path, threads=1, no_files_dir=no_files)
    example = np.zeros((1, 3, SIZE, SIZE), dtype=np.float32)
    assert np.isfinite(runtime.run(example)).all()  # a blank image alone would pass it
    with pytest.raises(RuntimeLoadError, match=NOT_FINITE):
        check_scores(runtime, example, 3)


# --- scripted models: eval mode is what is checked ---------------------------------------------


def test_scripted_batch_norm_in_eval_mode_is_served(models: dict[str, Path]) -> None:
    """torch.jit.script keeps BatchNorm's training branch (num_batches_tracked.add_(1)); frozen in
    eval mode, that branch is gone and the model keeps no state. Same scores as the traced one."""
    model = TinyCNN(CLASSES).eval()
    with warnings_ignored():
        scripted = torch.jit.script(model)
    runtime = load_torch(torchscript_bytes(scripted), fmt="torchscript", threads=1)
    check_scores(runtime, np.zeros((1, 3, SIZE, SIZE), dtype=np.float32), CLASSES)
    tensor = photo()
    with torch.no_grad():
        expected = model(torch.from_numpy(tensor)).numpy()
    np.testing.assert_allclose(runtime.run(tensor), expected, atol=1e-5, rtol=0)


class _Counting(torch.nn.Module):
    """Counts its calls in an attribute, in eval mode too."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.flatten(1)[:, :4] * self.calls


class _WritesThroughAView(torch.nn.Module):
    """Keeps the last image's pixels in a row of a buffer: the write goes through a view of it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("prev", torch.zeros(2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.flatten(1)[:, :4]
        out = y + self.prev[0]
        self.prev[0] = y[0]
        return out


class _StateInEvalOnly(torch.nn.Module):
    """Writes a buffer only when not training: freezing keeps that branch."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seen", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.seen.add_(1)
        return x.flatten(1)[:, :4] + self.seen


@pytest.mark.parametrize("make", [_Stateful, _Counting, _WritesThroughAView, _StateInEvalOnly])
def test_a_model_that_writes_state_in_eval_mode_is_still_refused(make: type[torch.nn.Module]) -> None:
    with pytest.raises(RuntimeLoadError, match="keeping state"):
        load_torch(_scripted(make().eval()), fmt="torchscript", threads=1)


def test_each_model_format_is_served_by_one_runtime(models: dict[str, Path], no_files: str) -> None:
    assert [fmt.runtime for fmt in ModelFormat] == [Runtime.ONNX, Runtime.TORCH]
    assert ModelFormat.serving(Runtime.TORCH) is ModelFormat.TORCHSCRIPT
    with pytest.raises(ValueError, match="serves no one format"):
        ModelFormat.serving(Runtime.BOTH)
    onnx_runtime = load_onnx(models["onnx"], threads=1, no_files_dir=no_files)
    torch_runtime = load_torch(models["torchscript"], fmt=ModelFormat.TORCHSCRIPT, threads=1)
    assert (onnx_runtime.name, torch_runtime.name) == (Runtime.ONNX, Runtime.TORCH)
    with pytest.raises(ProtocolError, match="format must be one of onnx, torchscript"):
        ModelFile("exported_program", "0" * 64, 1)  # type: ignore[arg-type]
    assert ModelFile("onnx", "0" * 64, 1).format is ModelFormat.ONNX  # type: ignore[arg-type]
